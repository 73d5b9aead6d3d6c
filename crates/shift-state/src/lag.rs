//! In-memory lag accounting, kept in step with the journal tables.
//!
//! Counting the journal on every metrics scrape or cutover check would read the whole table;
//! instead the book keeps, per target and collection key, the entry count, the payload bytes
//! and the oldest entry's creation time. Its memory grows with the number of collections, not
//! with the journal: the per-entry facts live on disk, in the `lag.index` and `lag.summary`
//! tables the writer updates in the same transaction as the journal (see `writer.rs`). After
//! each commit the writer sets the new totals of each collection it touched; at open the book
//! is read from `lag.summary` plus one index lookup per collection, never from the journal.

use std::collections::{BTreeMap, HashMap};

use shift_config::BackendName;

use crate::schema;

/// How far one target's journal is behind: what the replay worker still has to apply.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Lag {
    /// Entries in the journal.
    pub entries: u64,
    /// Creation time (Unix milliseconds) of the oldest entry, `None` when the journal is empty.
    /// Its age is the replication delay a cutover would have to drain.
    pub oldest_created_ms: Option<u64>,
    /// The same per collection key (the `collection` of each [`crate::NewEntry`]), so a slow
    /// collection can be named.
    pub collections: BTreeMap<String, CollectionLag>,
}

/// Lag of one collection key within one target's journal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CollectionLag {
    /// Entries of this collection in the journal.
    pub entries: u64,
    /// Creation time (Unix milliseconds) of its oldest entry.
    pub oldest_created_ms: u64,
}

/// What the book knows of one collection key in one target's journal; absent when it has no
/// entry there.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct CollectionState {
    /// Entries in the journal.
    pub entries: u64,
    /// Their payload bytes, for the journal's size cap.
    pub bytes: u64,
    /// Creation time of its entry with the smallest seq (seqs and commit times grow together).
    pub oldest_created_ms: u64,
}

/// One target's collections and their totals.
#[derive(Debug, Default)]
struct TargetBook {
    /// Sum of `entries` over `collections`.
    entries: u64,
    /// Sum of `bytes` over `collections`.
    bytes: u64,
    collections: HashMap<String, CollectionState>,
}

/// Both targets' books.
#[derive(Debug, Default)]
pub(crate) struct LagBook {
    targets: [TargetBook; 2],
}

impl LagBook {
    /// Sets what the journal of `target` now holds of `collection` (`None`: nothing).
    pub(crate) fn set(
        &mut self,
        target: BackendName,
        collection: String,
        state: Option<CollectionState>,
    ) {
        let book = &mut self.targets[schema::slot(target)];
        let before = match state {
            Some(state) => {
                book.entries += state.entries;
                book.bytes += state.bytes;
                book.collections.insert(collection, state)
            }
            None => book.collections.remove(&collection),
        };
        if let Some(before) = before {
            book.entries -= before.entries;
            book.bytes -= before.bytes;
        }
    }

    /// Payload bytes in both journals.
    pub(crate) fn bytes(&self) -> u64 {
        self.targets.iter().map(|book| book.bytes).sum()
    }

    /// Entries in `target`'s journal.
    pub(crate) fn entries(&self, target: BackendName) -> u64 {
        self.targets[schema::slot(target)].entries
    }

    pub(crate) fn snapshot(&self, target: BackendName) -> Lag {
        let book = &self.targets[schema::slot(target)];
        let collections: BTreeMap<String, CollectionLag> = book
            .collections
            .iter()
            .map(|(name, state)| {
                (
                    name.clone(),
                    CollectionLag {
                        entries: state.entries,
                        oldest_created_ms: state.oldest_created_ms,
                    },
                )
            })
            .collect();
        Lag {
            entries: book.entries,
            oldest_created_ms: collections.values().map(|c| c.oldest_created_ms).min(),
            collections,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(entries: u64, bytes: u64, oldest_created_ms: u64) -> Option<CollectionState> {
        Some(CollectionState {
            entries,
            bytes,
            oldest_created_ms,
        })
    }

    #[test]
    fn totals_follow_each_collection_set() {
        let mut book = LagBook::default();
        book.set(BackendName::New, "a".into(), state(3, 30, 10));
        book.set(BackendName::New, "b".into(), state(1, 5, 40));
        book.set(BackendName::Old, "a".into(), state(2, 7, 50));
        assert_eq!(book.bytes(), 42);
        let lag = book.snapshot(BackendName::New);
        assert_eq!(lag.entries, 4);
        assert_eq!(lag.oldest_created_ms, Some(10));
        assert_eq!(lag.collections["a"].entries, 3);

        book.set(BackendName::New, "a".into(), state(1, 9, 30));
        let lag = book.snapshot(BackendName::New);
        assert_eq!(lag.entries, 2);
        assert_eq!(lag.collections["a"].oldest_created_ms, 30);
        assert_eq!(book.bytes(), 21);

        book.set(BackendName::New, "a".into(), None);
        book.set(BackendName::New, "a".into(), None); // twice: no change
        book.set(BackendName::New, "b".into(), None);
        book.set(BackendName::Old, "a".into(), None);
        assert_eq!(book.snapshot(BackendName::New), Lag::default());
        assert_eq!(book.snapshot(BackendName::Old), Lag::default());
        assert_eq!(book.bytes(), 0);
        assert_eq!(book.entries(BackendName::New), 0);
    }
}
