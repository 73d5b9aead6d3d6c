//! StateStore-level tests over real files in temporary directories.

use std::sync::Arc;

use shift_config::BackendName::{New, Old};

use super::*;

/// A store in a new temporary directory (kept alive by the returned guard).
pub(crate) async fn fresh_store() -> (tempfile::TempDir, StateStore) {
    let dir = tempfile::tempdir().unwrap();
    let store = StateStore::open(dir.path()).await.unwrap();
    (dir, store)
}

pub(crate) fn entry(target: BackendName, collection: &str, payload: &str) -> NewEntry {
    NewEntry {
        target,
        collection: collection.into(),
        payload: payload.as_bytes().to_vec(),
    }
}

/// Appends `entries`; their seqs.
pub(crate) async fn append(store: &StateStore, entries: Vec<NewEntry>) -> Vec<Seq> {
    store.append(entries).await.unwrap()
}

/// Commits `intent` as `entries`; their seqs.
pub(crate) async fn commit(
    store: &StateStore,
    intent: IntentId,
    entries: Vec<NewEntry>,
) -> Vec<Seq> {
    store.commit_intent(intent, entries).await.unwrap()
}

pub(crate) fn payloads(entries: &[JournalEntry]) -> Vec<String> {
    entries
        .iter()
        .map(|e| String::from_utf8(e.payload.clone()).unwrap())
        .collect()
}

pub(crate) fn seqs(entries: &[JournalEntry]) -> Vec<Seq> {
    entries.iter().map(|e| e.seq).collect()
}

#[tokio::test]
async fn seqs_keep_increasing_across_reopen_even_when_the_journal_was_emptied() {
    let (dir, store) = fresh_store().await;
    let first = append(
        &store,
        vec![
            entry(New, "a", "1"),
            entry(Old, "a", "2"),
            entry(New, "b", "3"),
        ],
    )
    .await;
    assert_eq!(first, vec![Seq(1), Seq(2), Seq(3)]);
    let second = append(&store, vec![entry(New, "a", "4")]).await;
    assert_eq!(second, vec![Seq(4)]);
    assert_eq!(
        payloads(&store.read(New, None, 10).unwrap()),
        ["1", "3", "4"]
    );
    assert_eq!(payloads(&store.read(Old, None, 10).unwrap()), ["2"]);

    // Empty both journals, so the next seq cannot come from the largest key.
    store.remove(New, &[Seq(1), Seq(3), Seq(4)]).await.unwrap();
    store.remove(Old, &[Seq(2)]).await.unwrap();
    drop(store);

    let store = StateStore::open(dir.path()).await.unwrap();
    assert!(store.read(New, None, 10).unwrap().is_empty());
    let third = append(&store, vec![entry(New, "a", "5"), entry(New, "a", "6")]).await;
    assert_eq!(third, vec![Seq(5), Seq(6)]);
    drop(store);

    let store = StateStore::open(dir.path()).await.unwrap();
    let read = store.read(New, None, 10).unwrap();
    assert_eq!(seqs(&read), [Seq(5), Seq(6)]);
    assert_eq!(payloads(&read), ["5", "6"]);
    assert!(read.iter().all(|e| e.target == New && e.collection == "a"));
    assert!(read[0].created_ms > 0);
}

#[tokio::test]
async fn commit_intent_swaps_the_intent_for_entries_atomically() {
    let (dir, store) = fresh_store().await;
    let id = store
        .record_intent(b"upsert c1 ids=[x]".to_vec())
        .await
        .unwrap();
    assert_eq!(
        store.pending_intents().unwrap(),
        vec![(id, b"upsert c1 ids=[x]".to_vec())]
    );
    assert!(store.read(New, None, 10).unwrap().is_empty());

    let appended = commit(&store, id, vec![entry(New, "c1", "upsert x")]).await;
    assert_eq!(appended.len(), 1);
    drop(store);

    let store = StateStore::open(dir.path()).await.unwrap();
    assert!(store.pending_intents().unwrap().is_empty());
    let read = store.read(New, None, 10).unwrap();
    assert_eq!(seqs(&read), appended);
    assert_eq!(payloads(&read), ["upsert x"]);
    assert_eq!(store.lag(New).entries, 1);

    // Committing again is refused and appends nothing.
    let again = store
        .commit_intent(id, vec![entry(New, "c1", "twice")])
        .await;
    assert!(matches!(again, Err(StoreError::UnknownIntent(i)) if i == id));
    assert_eq!(store.read(New, None, 10).unwrap().len(), 1);
    assert_eq!(store.lag(New).entries, 1);
}

#[tokio::test]
async fn pending_intents_survive_reopen_in_order_and_discard_drops_them() {
    let (dir, store) = fresh_store().await;
    let a = store.record_intent(b"a".to_vec()).await.unwrap();
    let b = store.record_intent(b"b".to_vec()).await.unwrap();
    let c = store.record_intent(b"c".to_vec()).await.unwrap();
    assert!(a < b && b < c);
    drop(store);

    let store = StateStore::open(dir.path()).await.unwrap();
    assert_eq!(
        store.pending_intents().unwrap(),
        vec![(a, b"a".to_vec()), (b, b"b".to_vec()), (c, b"c".to_vec())]
    );
    store.discard_intent(b).await.unwrap();
    store.discard_intent(b).await.unwrap(); // idempotent
    let d = store.record_intent(b"d".to_vec()).await.unwrap();
    assert!(d > c, "intent ids are not reused");
    drop(store);

    let store = StateStore::open(dir.path()).await.unwrap();
    let ids: Vec<IntentId> = store
        .pending_intents()
        .unwrap()
        .into_iter()
        .map(|(id, _)| id)
        .collect();
    assert_eq!(ids, [a, c, d]);
}

#[tokio::test]
async fn read_pages_with_after_and_limit() {
    let (_dir, store) = fresh_store().await;
    let mut written = Vec::new();
    for i in 0..10 {
        // Interleave the other target, so seqs of one journal have gaps.
        written.extend(append(&store, vec![entry(New, "c", &i.to_string())]).await);
        append(&store, vec![entry(Old, "c", "other")]).await;
    }

    let mut cursor = None;
    let mut pages = Vec::new();
    loop {
        let page = store.read(New, cursor, 3).unwrap();
        if page.is_empty() {
            break;
        }
        assert!(page.len() <= 3);
        cursor = page.last().map(|e| e.seq);
        pages.push(page);
    }
    assert_eq!(pages.iter().map(Vec::len).collect::<Vec<_>>(), [3, 3, 3, 1]);
    let all: Vec<JournalEntry> = pages.into_iter().flatten().collect();
    assert_eq!(seqs(&all), written);
    assert_eq!(
        payloads(&all),
        (0..10).map(|i| i.to_string()).collect::<Vec<_>>()
    );
    assert!(store.read(New, Some(Seq(u64::MAX)), 10).unwrap().is_empty());
    assert!(store.read(New, None, 0).unwrap().is_empty());
}

#[tokio::test]
async fn remove_and_park_update_lag_and_dead_letters() {
    let (dir, store) = fresh_store().await;
    let s = append(
        &store,
        vec![
            entry(New, "a", "1"),
            entry(New, "a", "2"),
            entry(New, "b", "3"),
            entry(New, "b", "4"),
        ],
    )
    .await;
    assert_eq!(store.lag(New).entries, 4);

    store.remove(New, &[s[0]]).await.unwrap();
    store
        .park(New, s[2], "400: dimension mismatch".into())
        .await
        .unwrap();

    let lag = store.lag(New);
    assert_eq!(lag.entries, 2);
    assert_eq!(lag.collections["a"].entries, 1);
    assert_eq!(lag.collections["b"].entries, 1);
    assert_eq!(store.dead_letter_count(), 1);
    assert_eq!(seqs(&store.read(New, None, 10).unwrap()), [s[1], s[3]]);

    let letters = store.dead_letters(None, 10).unwrap();
    assert_eq!(letters.len(), 1);
    let letter = &letters[0];
    assert_eq!(letter.seq, s[2]);
    assert_eq!(letter.target, New);
    assert_eq!(letter.collection, "b");
    assert_eq!(letter.payload, b"3");
    assert_eq!(letter.reason, "400: dimension mismatch");
    assert!(letter.parked_ms >= letter.created_ms && letter.created_ms > 0);

    // Parking what is not in the journal is refused; removing it again is not an error.
    let twice = store.park(New, s[2], "again".into()).await;
    assert!(matches!(twice, Err(StoreError::UnknownEntry { seq, .. }) if seq == s[2]));
    store.remove(New, &[s[0], s[2]]).await.unwrap();
    assert_eq!(store.lag(New).entries, 2);
    drop(store);

    // The counters are rebuilt from the tables.
    let store = StateStore::open(dir.path()).await.unwrap();
    assert_eq!(store.dead_letter_count(), 1);
    let lag = store.lag(New);
    assert_eq!(lag.entries, 2);
    assert_eq!(lag.collections.len(), 2);
    assert_eq!(store.dead_letters(Some(s[2]), 10).unwrap(), vec![]);
    assert_eq!(store.lag(Old), Lag::default());
}

#[tokio::test]
async fn lag_counts_per_collection_with_the_oldest_creation_time() {
    let (dir, store) = fresh_store().await;
    let first = append(
        &store,
        vec![entry(New, "a", "1"), entry(New, "", "no collection")],
    )
    .await;
    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    let later = append(
        &store,
        vec![
            entry(New, "a", "2"),
            entry(New, "b", "3"),
            entry(Old, "a", "x"),
        ],
    )
    .await;
    let created = |seq: Seq| {
        store
            .read(New, None, 10)
            .unwrap()
            .into_iter()
            .find(|e| e.seq == seq)
            .unwrap()
            .created_ms
    };
    let (t1, t2) = (created(first[0]), created(later[0]));
    assert!(t2 > t1);

    let lag = store.lag(New);
    assert_eq!(lag.entries, 4);
    assert_eq!(lag.oldest_created_ms, Some(t1));
    assert_eq!(
        lag.collections["a"],
        CollectionLag {
            entries: 2,
            oldest_created_ms: t1
        }
    );
    assert_eq!(lag.collections[""].entries, 1);
    assert_eq!(
        lag.collections["b"],
        CollectionLag {
            entries: 1,
            oldest_created_ms: t2
        }
    );
    assert_eq!(store.lag(Old).entries, 1);

    // Applying the oldest of "a" moves its oldest time forward.
    store.remove(New, &[first[0]]).await.unwrap();
    let lag = store.lag(New);
    assert_eq!(lag.collections["a"].oldest_created_ms, t2);
    assert_eq!(lag.collections["a"].entries, 1);
    assert_eq!(
        lag.oldest_created_ms,
        Some(t1),
        "the empty key is still oldest"
    );
    drop(store);

    let store = StateStore::open(dir.path()).await.unwrap();
    assert_eq!(store.lag(New), lag, "the same after a rebuild at open");
}

#[tokio::test]
async fn a_second_open_fails_while_the_first_is_open() {
    let (dir, store) = fresh_store().await;
    let err = StateStore::open(dir.path()).await.unwrap_err();
    assert!(matches!(err, StoreError::Locked { .. }), "{err:?}");
    assert!(err
        .to_string()
        .contains("in use by another chroma-shift process"));

    // A clone is the same owner; dropping the last handle releases the file at once.
    let clone = store.clone();
    drop(store);
    assert!(matches!(
        StateStore::open(dir.path()).await,
        Err(StoreError::Locked { .. })
    ));
    drop(clone);
    StateStore::open(dir.path()).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_appends_each_get_their_own_seq() {
    const WRITERS: usize = 200;
    let (_dir, store) = fresh_store().await;
    // Released together, as concurrent client writes would arrive.
    let start = Arc::new(tokio::sync::Barrier::new(WRITERS));
    let tasks: Vec<_> = (0..WRITERS)
        .map(|i| {
            let store = store.clone();
            let start = start.clone();
            tokio::spawn(async move {
                start.wait().await;
                append(
                    &store,
                    vec![entry(New, &format!("c{}", i % 7), &i.to_string())],
                )
                .await
            })
        })
        .collect();
    let mut all = Vec::new();
    for task in tasks {
        let seqs = task.await.unwrap();
        assert_eq!(seqs.len(), 1);
        all.extend(seqs);
    }
    all.sort();
    all.dedup();
    assert_eq!(all.len(), WRITERS, "every append got its own seq");

    // How many commits they shared depends on scheduling: only the totals are certain here.
    // `appends_queued_while_the_writer_is_busy_share_one_commit` proves the sharing.
    let stats = store.commit_stats();
    assert_eq!(stats.requests, WRITERS as u64);
    assert_eq!(stats.entries_appended, WRITERS as u64);
    assert!(
        stats.commits >= 1 && stats.commits <= stats.requests,
        "{stats:?}"
    );
    assert_eq!(store.lag(New).entries, WRITERS as u64);
    assert_eq!(store.read(New, None, 1000).unwrap().len(), WRITERS);
}

/// Polls a future once: whether it is still pending.
async fn still_pending<F: std::future::Future>(mut future: std::pin::Pin<&mut F>) -> bool {
    std::future::poll_fn(|cx| std::task::Poll::Ready(future.as_mut().poll(cx).is_pending())).await
}

/// Waits (bounded) until `done` holds, yielding to the runtime in between.
async fn until(what: &str, mut done: impl FnMut() -> bool) {
    let started = std::time::Instant::now();
    while !done() {
        assert!(
            started.elapsed() < std::time::Duration::from_secs(60),
            "{what}: not within 60 s"
        );
        tokio::time::sleep(std::time::Duration::from_millis(1)).await;
    }
}

/// Group commit, deterministically: the writer is held busy (it takes the lag book's lock
/// after each commit, and the test holds that lock), requests queue meanwhile, and once the
/// writer is free it commits every queued request in one transaction.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn appends_queued_while_the_writer_is_busy_share_one_commit() {
    const WRITERS: usize = 200;
    let (_dir, store) = fresh_store().await;
    let before = store.commit_stats();

    let shared = store.inner.shared.clone();
    let (locked_tx, locked_rx) = std::sync::mpsc::channel::<()>();
    let (release_tx, release_rx) = std::sync::mpsc::channel::<()>();
    let holder = std::thread::spawn(move || {
        let book = shared.lag();
        locked_tx.send(()).unwrap();
        let _ = release_rx.recv();
        drop(book);
    });
    locked_rx.recv().unwrap();

    // The first append: polled once, it is in the queue; the writer takes it off, commits it,
    // and then waits for the lock the test holds.
    let mut first = Box::pin(store.append(vec![entry(New, "c", "first")]));
    assert!(
        still_pending(first.as_mut()).await,
        "answered before its commit"
    );
    let queue = store.inner.queue.clone();
    until("the writer to take the first append", || {
        queue.capacity() == queue.max_capacity()
    })
    .await;
    // Meanwhile the others queue up.
    let tasks: Vec<_> = (0..WRITERS)
        .map(|i| {
            let store = store.clone();
            tokio::spawn(async move {
                store
                    .append(vec![entry(New, &format!("c{}", i % 7), &i.to_string())])
                    .await
            })
        })
        .collect();
    until("every append to be queued", || {
        queue.max_capacity() - queue.capacity() == WRITERS
    })
    .await;
    assert!(
        still_pending(first.as_mut()).await,
        "the first append was answered while its commit was held"
    );
    drop(queue);
    release_tx.send(()).unwrap();
    holder.join().unwrap();

    assert_eq!(first.await.unwrap().len(), 1);
    for task in tasks {
        assert_eq!(task.await.unwrap().unwrap().len(), 1);
    }
    let after = store.commit_stats();
    assert_eq!(after.requests - before.requests, WRITERS as u64 + 1);
    assert_eq!(
        after.commits - before.commits,
        2,
        "the queued appends did not share one commit: {after:?}"
    );
    assert_eq!(store.lag(New).entries, WRITERS as u64 + 1);
}

#[tokio::test]
async fn a_refused_request_does_not_fail_its_batch() {
    let (_dir, store) = fresh_store().await;
    // Queued together, so they likely share a batch; correct either way.
    let (bad, good) = tokio::join!(
        store.commit_intent(IntentId(999), vec![entry(New, "c", "x")]),
        store.append(vec![entry(New, "c", "y")]),
    );
    assert!(matches!(bad, Err(StoreError::UnknownIntent(IntentId(999)))));
    let good = good.unwrap();
    assert_eq!(seqs(&store.read(New, None, 10).unwrap()), good);
}

#[tokio::test]
async fn watch_appends_wakes_a_waiting_worker() {
    let (dir, store) = fresh_store().await;
    let mut appended = store.watch_appends(New);
    assert_eq!(*appended.borrow_and_update(), None);

    let worker = tokio::spawn(async move {
        appended.changed().await.unwrap();
        *appended.borrow_and_update()
    });
    append(&store, vec![entry(Old, "c", "other target")]).await;
    let seqs = append(&store, vec![entry(New, "c", "x")]).await;
    assert_eq!(worker.await.unwrap(), Some(seqs[0]));
    drop(store);

    // After a restart the watch starts from the journal's last entry.
    let store = StateStore::open(dir.path()).await.unwrap();
    assert_eq!(*store.watch_appends(New).borrow(), Some(seqs[0]));
}

#[tokio::test]
async fn map_put_get_delete_scan_survive_reopen() {
    let (dir, store) = fresh_store().await;
    store
        .put(MapTable::Collections, "client-1", b"old-1,new-1".to_vec())
        .await
        .unwrap();
    store
        .put(MapTable::Collections, "client-2", b"old-2".to_vec())
        .await
        .unwrap();
    store
        .put(MapTable::Collections, "client-2", b"old-2,new-2".to_vec())
        .await
        .unwrap();
    store
        .put(MapTable::Collections, "client-3", b"gone".to_vec())
        .await
        .unwrap();
    store
        .delete(MapTable::Collections, "client-3")
        .await
        .unwrap();
    store.delete(MapTable::Collections, "never").await.unwrap();
    store
        .put(MapTable::Topology, "current", b"epoch=7".to_vec())
        .await
        .unwrap();
    drop(store);

    let store = StateStore::open(dir.path()).await.unwrap();
    assert_eq!(
        store.get(MapTable::Collections, "client-2").unwrap(),
        Some(b"old-2,new-2".to_vec())
    );
    assert_eq!(store.get(MapTable::Collections, "client-3").unwrap(), None);
    assert_eq!(store.get(MapTable::Topology, "client-1").unwrap(), None);
    assert_eq!(
        store.scan(MapTable::Collections).unwrap(),
        vec![
            ("client-1".to_owned(), b"old-1,new-1".to_vec()),
            ("client-2".to_owned(), b"old-2,new-2".to_vec()),
        ]
    );
    assert_eq!(
        store.scan(MapTable::Topology).unwrap(),
        vec![("current".to_owned(), b"epoch=7".to_vec())]
    );
    assert!(store.scan(MapTable::Checkpoints).unwrap().is_empty());
}

#[tokio::test]
async fn a_newer_file_format_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    drop(StateStore::open(dir.path()).await.unwrap());
    {
        let db = Database::create(dir.path().join(schema::FILE_NAME)).unwrap();
        let txn = db.begin_write().unwrap();
        txn.open_table(schema::META)
            .unwrap()
            .insert(schema::FORMAT_KEY, schema::FORMAT + 1)
            .unwrap();
        txn.commit().unwrap();
    }
    let err = StateStore::open(dir.path()).await.unwrap_err();
    assert!(
        matches!(err, StoreError::UnsupportedFormat { found, .. } if found == schema::FORMAT + 1),
        "{err:?}"
    );
}

#[tokio::test]
async fn pending_intent_count_follows_record_commit_discard_and_reopen() {
    let (dir, store) = fresh_store().await;
    assert_eq!(store.pending_intent_count(), 0);
    let a = store.record_intent(b"a".to_vec()).await.unwrap();
    let b = store.record_intent(b"b".to_vec()).await.unwrap();
    let c = store.record_intent(b"c".to_vec()).await.unwrap();
    assert_eq!(store.pending_intent_count(), 3);
    commit(&store, a, vec![entry(New, "x", "a")]).await;
    store.discard_intent(b).await.unwrap();
    store.discard_intent(b).await.unwrap(); // twice: counted once
    assert!(store.commit_intent(a, vec![]).await.is_err()); // refused: no change
    assert_eq!(store.pending_intent_count(), 1);
    drop(store);

    let store = StateStore::open(dir.path()).await.unwrap();
    assert_eq!(store.pending_intent_count(), 1);
    store.discard_intent(c).await.unwrap();
    assert_eq!(store.pending_intent_count(), 0);
}

#[tokio::test]
async fn read_bounded_stops_at_the_byte_bound_but_returns_at_least_one() {
    let (_dir, store) = fresh_store().await;
    let sizes = [10usize, 30, 5, 100, 1];
    let mut written = Vec::new();
    for (i, size) in sizes.iter().enumerate() {
        written.extend(
            append(
                &store,
                vec![
                    entry(New, "c", &"x".repeat(*size)),
                    entry(Old, "c", &i.to_string()),
                ],
            )
            .await
            .into_iter()
            .step_by(2),
        );
    }
    let lens = |page: &[JournalEntry]| page.iter().map(|e| e.payload.len()).collect::<Vec<_>>();
    // 10 + 30 reaches 40: stop there.
    let page = store.read_bounded(New, None, 100, 40).unwrap();
    assert_eq!(lens(&page), [10, 30]);
    assert_eq!(seqs(&page), written[..2]);
    // 10 + 30 is under 41: one more, which brings it to 45.
    assert_eq!(
        lens(&store.read_bounded(New, None, 100, 41).unwrap()),
        [10, 30, 5]
    );
    // An entry larger than the bound still comes back alone.
    let page = store.read_bounded(New, Some(written[2]), 100, 1).unwrap();
    assert_eq!(lens(&page), [100]);
    assert_eq!(
        lens(&store.read_bounded(New, None, 0, 1000).unwrap()),
        [0usize; 0]
    );
    // The entry bound still holds.
    assert_eq!(
        lens(&store.read_bounded(New, None, 2, usize::MAX).unwrap()),
        [10, 30]
    );
    // Paging by the last seq covers everything once.
    let mut cursor = None;
    let mut all = Vec::new();
    loop {
        let page = store.read_bounded(New, cursor, 100, 32).unwrap();
        let Some(last) = page.last() else { break };
        cursor = Some(last.seq);
        all.extend(page);
    }
    assert_eq!(seqs(&all), written);
    assert!(store
        .read_bounded(New, Some(Seq(u64::MAX)), 10, 10)
        .unwrap()
        .is_empty());
}

#[tokio::test]
async fn retarget_moves_entries_in_one_transaction_and_skips_missing_ones() {
    let (dir, store) = fresh_store().await;
    let s = append(
        &store,
        vec![
            entry(New, "a", "1"),
            entry(New, "b", "2"),
            entry(New, "a", "3"),
        ],
    )
    .await;
    store.remove(New, &[s[1]]).await.unwrap();
    let mut appended = store.watch_appends(Old);
    appended.borrow_and_update();

    let moved = store
        .retarget(
            New,
            vec![
                (s[2], b"3 for old".to_vec()),
                (s[1], b"gone".to_vec()),
                (s[0], b"1 for old".to_vec()),
            ],
            Old,
        )
        .await
        .unwrap();
    assert_eq!(moved.len(), 2, "the missing seq is skipped");
    assert!(
        moved[0] > s[2] && moved[1] > moved[0],
        "new seqs, in the order given"
    );
    assert!(store.read(New, None, 10).unwrap().is_empty());
    let old = store.read(Old, None, 10).unwrap();
    assert_eq!(seqs(&old), moved);
    assert_eq!(payloads(&old), ["3 for old", "1 for old"]);
    assert!(old.iter().all(|e| e.collection == "a" && e.target == Old));
    assert!(appended.has_changed().unwrap());
    assert_eq!(*appended.borrow(), Some(moved[1]));
    assert_eq!(store.lag(New), Lag::default());
    assert_eq!(store.lag(Old).entries, 2);
    assert_eq!(store.lag(Old).collections["a"].entries, 2);

    // Moving again finds nothing to move.
    let again = store
        .retarget(New, vec![(s[0], b"twice".to_vec())], Old)
        .await
        .unwrap();
    assert!(again.is_empty());
    drop(store);

    let store = StateStore::open(dir.path()).await.unwrap();
    assert_eq!(
        payloads(&store.read(Old, None, 10).unwrap()),
        ["3 for old", "1 for old"]
    );
    assert_eq!(store.lag(Old).entries, 2);
    assert_eq!(store.lag(New).entries, 0);
}

#[tokio::test]
async fn dead_letters_are_redriven_to_the_end_of_the_journal_or_dropped() {
    let (dir, store) = fresh_store().await;
    let s = append(
        &store,
        vec![
            entry(New, "a", "parked 1"),
            entry(New, "b", "parked 2"),
            entry(New, "a", "waiting"),
        ],
    )
    .await;
    store.park(New, s[0], "400: bad".into()).await.unwrap();
    store.park(New, s[1], "400: worse".into()).await.unwrap();
    assert_eq!(store.dead_letter_count(), 2);
    assert_eq!(store.lag(New).entries, 1);

    let redriven = store.redrive_dead_letter(s[0]).await.unwrap();
    assert!(redriven > s[2], "at the end of the journal");
    let journal = store.read(New, None, 10).unwrap();
    assert_eq!(seqs(&journal), [s[2], redriven]);
    assert_eq!(payloads(&journal), ["waiting", "parked 1"]);
    assert_eq!(journal[1].collection, "a");
    assert_eq!(store.dead_letter_count(), 1);
    assert_eq!(store.lag(New).collections["a"].entries, 2);
    assert!(matches!(
        store.redrive_dead_letter(s[0]).await,
        Err(StoreError::UnknownDeadLetter(seq)) if seq == s[0]
    ));

    let dropped = store.drop_dead_letter(s[1]).await.unwrap();
    assert_eq!(dropped.seq, s[1]);
    assert_eq!(dropped.collection, "b");
    assert_eq!(dropped.reason, "400: worse");
    assert_eq!(dropped.payload, b"parked 2");
    assert_eq!(store.dead_letter_count(), 0);
    assert!(store.dead_letters(None, 10).unwrap().is_empty());
    assert!(matches!(
        store.drop_dead_letter(s[1]).await,
        Err(StoreError::UnknownDeadLetter(_))
    ));
    drop(store);

    let store = StateStore::open(dir.path()).await.unwrap();
    assert_eq!(store.dead_letter_count(), 0);
    assert_eq!(seqs(&store.read(New, None, 10).unwrap()), [s[2], redriven]);
    // Seqs stay unique: the next append comes after the re-driven entry.
    let next = append(&store, vec![entry(New, "a", "n")]).await;
    assert!(next[0] > redriven);
}

/// A write's intent and its deferred settlement cost one fsync between them, and a clean close
/// makes the last settlements durable: nothing is pending at the next open.
#[tokio::test]
async fn a_deferred_settlement_costs_no_fsync_and_a_close_keeps_it() {
    const WRITES: u64 = 20;
    let (dir, store) = fresh_store().await;
    let before = store.commit_stats();
    for i in 0..WRITES {
        let intent = store.record_intent(b"op".to_vec()).await.unwrap();
        let payload = format!("w{i}");
        let settled = store.settle_intent(intent, vec![entry(New, "c", &payload)]);
        assert_eq!(settled.await.unwrap().len(), 1);
    }
    let discarded = store.record_intent(b"refused".to_vec()).await.unwrap();
    store.discard_intent_deferred(discarded).await.unwrap();
    let after = store.commit_stats();
    assert_eq!(after.commits - before.commits, 2 * (WRITES + 1));
    assert_eq!(after.durable_commits - before.durable_commits, WRITES + 1);
    assert_eq!(store.pending_intent_count(), 0);
    assert_eq!(store.lag(New).entries, WRITES);
    drop(store);

    let store = StateStore::open(dir.path()).await.unwrap();
    assert!(store.pending_intents().unwrap().is_empty());
    let read = store.read(New, None, 100).unwrap();
    assert_eq!(read.len() as u64, WRITES);
    assert_eq!(
        payloads(&read)[WRITES as usize - 1],
        format!("w{}", WRITES - 1)
    );
}
