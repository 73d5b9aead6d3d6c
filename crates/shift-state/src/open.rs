//! Opening the file: the format check (and the one-time migration of an older format), the
//! tables, and the in-memory counters read back from it. Used at [`crate::StateStore::open`] and
//! again by the writer when it reopens the file after an I/O error.
//!
//! Nothing here scans a journal in the current format: the lag book comes from `lag.summary`
//! plus one `lag.index` lookup per collection, the counts from the tables' lengths, and the
//! last seqs from each table's last key. Only the migration from format 1 reads every entry,
//! once.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use redb::{
    Builder, Database, DatabaseError, ReadableDatabase, ReadableTable, ReadableTableMetadata,
    WriteTransaction,
};

use crate::lag::{CollectionState, LagBook};
use crate::writer::{self, Counters};
use crate::{schema, Seq, StoreError};

/// redb's page cache. Its default (1 GiB) is sized for a database server; the journal's hot
/// part is its tail, and the maps are small.
const CACHE_BYTES: usize = 64 * 1024 * 1024;

/// Opens the database file; the writer calls it again to reopen after an I/O error. A
/// function rather than a path so tests can put a failing storage backend under the store.
pub(crate) type Opener = Arc<dyn Fn(&Path) -> Result<Database, DatabaseError> + Send + Sync>;

/// The opener of a real file.
pub(crate) fn file_opener() -> Opener {
    Arc::new(|path: &Path| Builder::new().set_cache_size(CACHE_BYTES).create(path))
}

/// Opens `path` with `opener`, naming a held lock as such.
pub(crate) fn open_db(opener: &Opener, path: &Path) -> Result<Database, StoreError> {
    opener(path).map_err(|err| match err {
        DatabaseError::DatabaseAlreadyOpen => StoreError::Locked {
            path: path.to_owned(),
        },
        other => other.into(),
    })
}

/// What the file says the in-memory counters are.
pub(crate) struct Loaded {
    pub counters: Counters,
    pub book: LagBook,
    pub dead_letters: u64,
    pub pending_intents: u64,
    /// The last seq in each target's journal.
    pub last: [Option<Seq>; 2],
}

/// Checks or migrates the format, creates missing tables, and reads the counters.
pub(crate) fn load(db: &Database) -> Result<Loaded, StoreError> {
    let stored = prepare(db)?;
    let txn = db.begin_read()?;
    let mut book = LagBook::default();
    {
        let summary = txn.open_table(schema::LAG_SUMMARY)?;
        let index = txn.open_table(schema::LAG_INDEX)?;
        for row in summary.iter()? {
            let (key, value) = row?;
            let (slot, collection) = key.value();
            let (entries, bytes) = value.value();
            let Some(&target) = schema::TARGETS.get(usize::from(slot)) else {
                return Err(StoreError::Corrupt {
                    table: "lag.summary",
                    key: format!("({slot}, {collection})"),
                    reason: "unknown target slot",
                });
            };
            let oldest = index
                .range((slot, collection, 0)..=(slot, collection, u64::MAX))?
                .next()
                .transpose()?
                .map(|(_, created)| created.value());
            let Some(oldest_created_ms) = oldest else {
                return Err(StoreError::Corrupt {
                    table: "lag.summary",
                    key: format!("({slot}, {collection})"),
                    reason: "counts entries the lag index does not hold",
                });
            };
            book.set(
                target,
                collection.to_owned(),
                Some(CollectionState {
                    entries,
                    bytes,
                    oldest_created_ms,
                }),
            );
        }
    }
    let mut last = [None; 2];
    for target in schema::TARGETS {
        let table = txn.open_table(schema::journal(target))?;
        last[schema::slot(target)] = table.last()?.map(|(key, _)| Seq(key.value()));
    }
    let dead = txn.open_table(schema::DEAD_LETTERS)?;
    let dead_letters = dead.len()?;
    let last_dead = dead.last()?.map(|(key, _)| key.value());
    let intents = txn.open_table(schema::INTENTS)?;
    let pending_intents = intents.len()?;
    let last_intent = intents.last()?.map(|(key, _)| key.value());

    // The persisted counters are the truth; the keys only guard against them lagging.
    let largest_seq = last
        .iter()
        .flatten()
        .map(|seq| seq.0)
        .chain(last_dead)
        .max();
    let counters = Counters {
        next_seq: stored.next_seq.max(largest_seq.map_or(1, |seq| seq + 1)),
        next_intent: stored.next_intent.max(last_intent.map_or(1, |id| id + 1)),
        unsynced: false,
    };
    Ok(Loaded {
        counters,
        book,
        dead_letters,
        pending_intents,
        last,
    })
}

/// In one write transaction: checks, records or migrates the format, creates every table (a
/// read transaction cannot open a table never created), and reads the persisted counters.
fn prepare(db: &Database) -> Result<Counters, StoreError> {
    let txn = db.begin_write()?;
    let counters = {
        let mut meta = txn.open_table(schema::META)?;
        let format = meta.get(schema::FORMAT_KEY)?.map(|v| v.value());
        match format {
            None => {
                meta.insert(schema::FORMAT_KEY, schema::FORMAT)?;
            }
            Some(found) if found == schema::FORMAT => {}
            Some(found) if found == schema::FORMAT_V1 => {
                let entries = migrate_v1(&txn)?;
                meta.insert(schema::FORMAT_KEY, schema::FORMAT)?;
                tracing::info!(
                    from = found,
                    to = schema::FORMAT,
                    entries,
                    "state database format migrated: journal entries indexed for lag bookkeeping"
                );
            }
            Some(found) => {
                return Err(StoreError::UnsupportedFormat {
                    found,
                    supported: schema::FORMAT,
                })
            }
        }
        for table in [
            schema::JOURNAL_OLD,
            schema::JOURNAL_NEW,
            schema::INTENTS,
            schema::DEAD_LETTERS,
            schema::PROBE,
        ] {
            txn.open_table(table)?;
        }
        txn.open_table(schema::LAG_INDEX)?;
        txn.open_table(schema::LAG_SUMMARY)?;
        for table in schema::MAP_TABLES {
            txn.open_table(schema::map(table))?;
        }
        let next_seq = meta.get(schema::NEXT_SEQ_KEY)?.map_or(1, |v| v.value());
        let next_intent = meta.get(schema::NEXT_INTENT_KEY)?.map_or(1, |v| v.value());
        Counters {
            next_seq,
            next_intent,
            unsynced: false,
        }
    };
    txn.commit()?;
    Ok(counters)
}

/// Format 1 to 2: builds the lag index and summary from the journals, in the transaction that
/// records the new format, so a crash leaves format 1 whole. Returns the entries indexed.
fn migrate_v1(txn: &WriteTransaction) -> Result<u64, StoreError> {
    let mut index = txn.open_table(schema::LAG_INDEX)?;
    let mut summary = txn.open_table(schema::LAG_SUMMARY)?;
    let mut totals: HashMap<(u8, String), (u64, u64)> = HashMap::new();
    let mut indexed = 0;
    for target in schema::TARGETS {
        let slot = schema::slot_key(target);
        let journal = txn.open_table(schema::journal(target))?;
        for row in journal.iter()? {
            let (key, value) = row?;
            let seq = Seq(key.value());
            let entry = writer::decode_journal(target, seq, value.value())?;
            index.insert((slot, entry.collection, seq.0), entry.created_ms)?;
            let total = totals
                .entry((slot, entry.collection.to_owned()))
                .or_default();
            total.0 += 1;
            total.1 += entry.payload.len() as u64;
            indexed += 1;
        }
    }
    for ((slot, collection), counts) in totals {
        summary.insert((slot, collection.as_str()), counts)?;
    }
    Ok(indexed)
}
