//! StateStore-level tests of what fails: a disk that stops taking writes (a storage backend that
//! fails on demand under a real file), the journal's byte cap, and the format migration.

use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use shift_config::BackendName::{New, Old};

use crate::tests::{append, commit, entry, payloads, seqs};
use crate::*;

/// A real file whose writes, resizes and syncs fail with "no space left" while `full` is set:
/// a full disk on demand. Each (re)open wraps the same path, so what was committed persists.
#[derive(Debug)]
struct FullDiskFile {
    inner: redb::backends::FileBackend,
    full: Arc<std::sync::atomic::AtomicBool>,
}

impl FullDiskFile {
    fn check(&self) -> Result<(), std::io::Error> {
        if self.full.load(Ordering::SeqCst) {
            Err(std::io::Error::from(std::io::ErrorKind::StorageFull))
        } else {
            Ok(())
        }
    }
}

/// Range-lock methods of [`redb::StorageBackend`] that pass straight through to `self.inner`:
/// the full disk only fails writes.
macro_rules! delegate_range_locks {
    ($($name:ident -> $out:ty),* $(,)?) => {
        $(
            fn $name(
                &self,
                start: std::ops::Bound<u64>,
                end: std::ops::Bound<u64>,
            ) -> Result<$out, redb::BackendError> {
                self.inner.$name(start, end)
            }
        )*
    };
}

impl redb::StorageBackend for FullDiskFile {
    fn len(&self) -> Result<u64, std::io::Error> {
        self.inner.len()
    }
    fn read(&self, offset: u64, out: &mut [u8]) -> Result<(), std::io::Error> {
        self.inner.read(offset, out)
    }
    fn set_len(&self, len: u64) -> Result<(), std::io::Error> {
        self.check()?;
        self.inner.set_len(len)
    }
    fn sync_data(&self) -> Result<(), std::io::Error> {
        self.check()?;
        self.inner.sync_data()
    }
    fn write(&self, offset: u64, data: &[u8]) -> Result<(), std::io::Error> {
        self.check()?;
        self.inner.write(offset, data)
    }
    fn close(&self) -> Result<(), std::io::Error> {
        self.inner.close()
    }
    delegate_range_locks!(
        try_lock_range -> bool,
        try_lock_shared_range -> bool,
        lock_range -> (),
        lock_shared_range -> (),
        unlock_range -> (),
        query_lock_range -> bool,
    );
}

async fn open_on_full_disk(
    dir: &Path,
    options: StoreOptions,
) -> (StateStore, Arc<std::sync::atomic::AtomicBool>) {
    let full = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flag = full.clone();
    let opener: open::Opener = Arc::new(move |path: &Path| {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
            .map_err(|e| redb::DatabaseError::Storage(redb::StorageError::Io(e)))?;
        redb::Builder::new().create_with_backend(FullDiskFile {
            inner: redb::backends::FileBackend::new(file)?,
            full: flag.clone(),
        })
    });
    let store = StateStore::open_inner(dir, options, opener).await.unwrap();
    (store, full)
}

/// Waits (bounded, so a hang fails) until the store says it can write again.
async fn until_writable(store: &StateStore) {
    let mut health = store.watch_unwritable();
    tokio::time::timeout(
        std::time::Duration::from_secs(60),
        health.wait_for(Option::is_none),
    )
    .await
    .expect("the store did not recover within 60 s")
    .unwrap();
    assert!(store.writable().is_ok());
}

#[tokio::test]
async fn an_io_error_refuses_writes_until_the_store_reopens_by_itself() {
    let dir = tempfile::tempdir().unwrap();
    let (store, full) = open_on_full_disk(dir.path(), StoreOptions::default()).await;
    let before = append(
        &store,
        vec![entry(New, "a", "kept 1"), entry(New, "b", "kept 2")],
    )
    .await;
    let intent = store.record_intent(b"in flight".to_vec()).await.unwrap();
    let lag_before = store.lag(New);
    let bytes_before = store.journal_bytes();
    assert!(store.writable().is_ok());

    full.store(true, Ordering::SeqCst);
    let err = store
        .append(vec![entry(New, "a", "refused")])
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Unwritable { .. }), "{err:?}");
    assert!(err.is_retryable_unavailable());
    let text = err.to_string();
    assert!(text.contains("state disk cannot be written"), "{text}");
    assert!(text.contains("not committed"), "{text}");
    // Every later change is refused at once, a move of entries included (nothing moves).
    let health = store.health();
    assert!(health.unwritable.is_some(), "{health:?}");
    assert!(matches!(
        store.writable(),
        Err(StoreError::Unwritable { .. })
    ));
    let refused = store
        .retarget(New, vec![(before[0], b"moved".to_vec())], Old)
        .await;
    assert!(
        matches!(refused, Err(StoreError::Unwritable { .. })),
        "{refused:?}"
    );
    let refused = store
        .commit_intent(intent, vec![entry(New, "a", "x")])
        .await;
    assert!(
        matches!(refused, Err(StoreError::Unwritable { .. })),
        "{refused:?}"
    );
    // A failed commit changed no counter.
    assert_eq!(store.lag(New), lag_before);
    assert_eq!(store.journal_bytes(), bytes_before);
    assert_eq!(store.pending_intent_count(), 1);
    // Reads fail as unavailable, or succeed; never with a misleading error.
    match store.read(New, None, 10) {
        Ok(read) => assert_eq!(seqs(&read), before),
        Err(err) => assert!(err.is_retryable_unavailable(), "{err:?}"),
    }

    // Space is back: the store recovers without being reopened by its owner.
    full.store(false, Ordering::SeqCst);
    until_writable(&store).await;
    let after = append(&store, vec![entry(New, "a", "after")]).await;
    let read = store.read(New, None, 10).unwrap();
    assert_eq!(payloads(&read), ["kept 1", "kept 2", "after"]);
    assert_eq!(seqs(&read)[..2], before[..]);
    assert_eq!(read[2].seq, after[0]);
    assert_eq!(store.lag(New).entries, 3);
    assert_eq!(store.journal_bytes(), bytes_before + 5);
    // The intent survived, and still commits.
    assert_eq!(store.pending_intent_count(), 1);
    commit(&store, intent, vec![entry(Old, "a", "committed")]).await;
    assert_eq!(store.pending_intent_count(), 0);
    drop(store);

    // What the counters said is what is on disk.
    let store = StateStore::open(dir.path()).await.unwrap();
    assert_eq!(
        payloads(&store.read(New, None, 10).unwrap()),
        ["kept 1", "kept 2", "after"]
    );
    assert_eq!(payloads(&store.read(Old, None, 10).unwrap()), ["committed"]);
    assert_eq!(store.lag(New).entries, 3);
    assert_eq!(store.journal_bytes(), bytes_before + 5 + 9);
    assert!(store.pending_intents().unwrap().is_empty());
}

/// A deferred settlement lost with the database (here to an I/O error; a crash likewise)
/// leaves its intent pending, as if the write had never been settled, and the seqs its
/// entries had are never handed out again (a replay worker may have read them).
#[tokio::test]
async fn a_lost_deferred_settlement_leaves_its_intent_and_no_seq_is_reused() {
    let dir = tempfile::tempdir().unwrap();
    let (store, full) = open_on_full_disk(dir.path(), StoreOptions::default()).await;
    let kept = append(&store, vec![entry(New, "a", "kept")]).await;
    let intent = store.record_intent(b"the write".to_vec()).await.unwrap();
    let settled = store
        .settle_intent(intent, vec![entry(New, "a", "settled")])
        .await
        .unwrap();
    assert_eq!(store.pending_intent_count(), 0);
    assert_eq!(
        payloads(&store.read(New, None, 10).unwrap()),
        ["kept", "settled"]
    );

    // The next durable commit fails: the deferred one was never on disk.
    full.store(true, Ordering::SeqCst);
    let err = store.append(vec![entry(Old, "b", "x")]).await.unwrap_err();
    assert!(matches!(err, StoreError::Unwritable { .. }), "{err:?}");
    full.store(false, Ordering::SeqCst);
    until_writable(&store).await;

    let pending = store.pending_intents().unwrap();
    assert_eq!(pending, vec![(intent, b"the write".to_vec())]);
    assert_eq!(store.pending_intent_count(), 1);
    assert_eq!(seqs(&store.read(New, None, 10).unwrap()), kept);
    assert_eq!(store.lag(New).entries, 1);
    let next = append(&store, vec![entry(New, "a", "after")]).await;
    assert!(next[0] > settled[0], "{next:?} reuses {settled:?}");
    // Settled again (the recovery would queue a reconciliation), it stays settled.
    commit(&store, intent, vec![entry(New, "a", "reconcile")]).await;
    drop(store);
    let store = StateStore::open(dir.path()).await.unwrap();
    assert!(store.pending_intents().unwrap().is_empty());
    assert_eq!(
        payloads(&store.read(New, None, 10).unwrap()),
        ["kept", "after", "reconcile"]
    );
}

/// A deferred remove is gone from reads and from the lag at once, costs no fsync, and is
/// durable with the next durable commit; lost with the database before that (an I/O error
/// here, a crash likewise), its entries are back in the journal, with the lag counting them.
#[tokio::test]
async fn a_lost_deferred_remove_brings_its_entries_back() {
    let dir = tempfile::tempdir().unwrap();
    let (store, full) = open_on_full_disk(dir.path(), StoreOptions::default()).await;
    let s = append(&store, vec![entry(New, "a", "one"), entry(New, "a", "two")]).await;
    let before = store.commit_stats();
    store.remove_deferred(New, &s[..1]).await.unwrap();
    assert_eq!(store.commit_stats().durable_commits, before.durable_commits);
    assert_eq!(payloads(&store.read(New, None, 10).unwrap()), ["two"]);
    assert_eq!(store.lag(New).entries, 1);

    // The next durable commit fails: the deferred remove was never on disk.
    full.store(true, Ordering::SeqCst);
    let err = store.append(vec![entry(Old, "b", "x")]).await.unwrap_err();
    assert!(matches!(err, StoreError::Unwritable { .. }), "{err:?}");
    full.store(false, Ordering::SeqCst);
    until_writable(&store).await;
    assert_eq!(
        payloads(&store.read(New, None, 10).unwrap()),
        ["one", "two"]
    );
    assert_eq!(store.lag(New).entries, 2);

    // Removed again, and made durable by the next durable commit (an append here).
    store.remove_deferred(New, &s).await.unwrap();
    append(&store, vec![entry(Old, "b", "y")]).await;
    full.store(true, Ordering::SeqCst);
    assert!(store.append(vec![entry(Old, "b", "z")]).await.is_err());
    full.store(false, Ordering::SeqCst);
    until_writable(&store).await;
    assert!(store.read(New, None, 10).unwrap().is_empty());
    assert_eq!(store.lag(New).entries, 0);
    drop(store);
    let store = StateStore::open(dir.path()).await.unwrap();
    assert!(store.read(New, None, 10).unwrap().is_empty());
    assert_eq!(payloads(&store.read(Old, None, 10).unwrap()), ["y"]);
}

#[tokio::test]
async fn the_journal_cap_refuses_new_writes_until_it_drains() {
    let dir = tempfile::tempdir().unwrap();
    let options = StoreOptions {
        max_journal_bytes: 100,
    };
    let store = StateStore::open_with(dir.path(), options).await.unwrap();
    let admitted = store.record_intent(b"admitted".to_vec()).await.unwrap();
    let s = append(&store, vec![entry(New, "a", &"x".repeat(60))]).await;
    append(&store, vec![entry(Old, "a", &"y".repeat(50))]).await;
    assert_eq!(store.journal_bytes(), 110);
    assert!(store.health().journal_full());

    let err = store
        .append(vec![entry(New, "a", "refused")])
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            StoreError::JournalFull {
                bytes: 110,
                cap: 100
            }
        ),
        "{err:?}"
    );
    assert!(err.is_retryable_unavailable());
    assert!(err.to_string().contains("110 bytes"), "{err}");
    assert!(matches!(
        store.record_intent(b"refused".to_vec()).await,
        Err(StoreError::JournalFull { .. })
    ));
    assert!(matches!(
        store.writable(),
        Err(StoreError::JournalFull { .. })
    ));
    assert_eq!(store.pending_intent_count(), 1);
    // An intent admitted before the cap was reached still commits: its write may be on the
    // primary already.
    commit(&store, admitted, vec![entry(New, "a", "admitted")]).await;
    assert_eq!(store.journal_bytes(), 118);
    drop(store);

    // The byte count is rebuilt at open.
    let store = StateStore::open_with(dir.path(), options).await.unwrap();
    assert_eq!(store.journal_bytes(), 118);
    assert!(store.writable().is_err());
    store.remove(New, &[s[0]]).await.unwrap();
    assert_eq!(store.journal_bytes(), 58);
    assert!(store.writable().is_ok());
    append(&store, vec![entry(New, "a", "accepted again")]).await;
}

#[tokio::test]
async fn a_format_1_file_is_migrated_once_with_its_lag() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(schema::FILE_NAME);
    {
        // A file as format 1 wrote it: journals and counters, no lag tables.
        let db = Database::create(&path).unwrap();
        let txn = db.begin_write().unwrap();
        {
            let mut meta = txn.open_table(schema::META).unwrap();
            meta.insert(schema::FORMAT_KEY, schema::FORMAT_V1).unwrap();
            meta.insert(schema::NEXT_SEQ_KEY, 10).unwrap();
            let mut new = txn.open_table(schema::JOURNAL_NEW).unwrap();
            for (seq, collection, payload, created) in [
                (3, "a", "one", 300),
                (5, "b", "three", 500),
                (7, "a", "seven", 700),
            ] {
                let mut bytes = codec::encode_entry(New, collection, payload.as_bytes()).unwrap();
                codec::stamp_created_ms(&mut bytes, created);
                new.insert(seq, bytes.as_slice()).unwrap();
            }
            let mut old = txn.open_table(schema::JOURNAL_OLD).unwrap();
            let mut bytes = codec::encode_entry(Old, "a", b"x").unwrap();
            codec::stamp_created_ms(&mut bytes, 400);
            old.insert(4, bytes.as_slice()).unwrap();
        }
        txn.commit().unwrap();
    }

    let store = StateStore::open(dir.path()).await.unwrap();
    let lag = store.lag(New);
    assert_eq!(lag.entries, 3);
    assert_eq!(lag.oldest_created_ms, Some(300));
    assert_eq!(
        lag.collections["a"],
        CollectionLag {
            entries: 2,
            oldest_created_ms: 300
        }
    );
    assert_eq!(lag.collections["b"].oldest_created_ms, 500);
    assert_eq!(store.lag(Old).entries, 1);
    assert_eq!(store.journal_bytes(), 3 + 5 + 5 + 1);
    // The index follows later changes: removing the oldest of "a" finds the next.
    store.remove(New, &[Seq(3)]).await.unwrap();
    assert_eq!(store.lag(New).collections["a"].oldest_created_ms, 700);
    let next = append(&store, vec![entry(New, "a", "n")]).await;
    assert_eq!(next, [Seq(10)]);
    drop(store);

    let store = StateStore::open(dir.path()).await.unwrap();
    assert_eq!(store.lag(New).collections["a"].entries, 2);
    assert_eq!(store.lag(New).collections["a"].oldest_created_ms, 700);
    let db_format = {
        drop(store);
        let db = Database::create(&path).unwrap();
        let txn = db.begin_read().unwrap();
        let meta = txn.open_table(schema::META).unwrap();
        let format = meta.get(schema::FORMAT_KEY).unwrap().unwrap().value();
        format
    };
    assert_eq!(db_format, schema::FORMAT);
}
