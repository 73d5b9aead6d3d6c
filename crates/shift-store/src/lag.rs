//! In-memory lag accounting, kept in step with the journal tables.
//!
//! Counting the journal on every metrics scrape or cutover check would read the whole table;
//! instead the writer applies each committed change here, and open rebuilds it with one scan.

use std::collections::{BTreeMap, HashMap};

use shift_config::BackendName;

use crate::Seq;

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

/// One committed change to a journal, as the lag book needs it.
#[derive(Debug)]
pub(crate) enum LagChange {
    Added {
        target: BackendName,
        collection: String,
        seq: Seq,
        created_ms: u64,
    },
    Removed {
        target: BackendName,
        collection: String,
        seq: Seq,
    },
}

/// Both targets' books.
#[derive(Debug, Default)]
pub(crate) struct LagBook {
    old: TargetBook,
    new: TargetBook,
}

/// One target's entries by collection, each ordered by seq so the oldest is the first even
/// when entries leave out of order (a park in the middle).
#[derive(Debug, Default)]
struct TargetBook {
    entries: u64,
    collections: HashMap<String, BTreeMap<Seq, u64>>,
}

impl LagBook {
    fn book(&mut self, target: BackendName) -> &mut TargetBook {
        match target {
            BackendName::Old => &mut self.old,
            BackendName::New => &mut self.new,
        }
    }

    pub(crate) fn apply(&mut self, change: LagChange) {
        match change {
            LagChange::Added {
                target,
                collection,
                seq,
                created_ms,
            } => {
                let book = self.book(target);
                if book
                    .collections
                    .entry(collection)
                    .or_default()
                    .insert(seq, created_ms)
                    .is_none()
                {
                    book.entries += 1;
                }
            }
            LagChange::Removed {
                target,
                collection,
                seq,
            } => {
                let book = self.book(target);
                if let Some(seqs) = book.collections.get_mut(&collection) {
                    if seqs.remove(&seq).is_some() {
                        book.entries -= 1;
                    }
                    if seqs.is_empty() {
                        book.collections.remove(&collection);
                    }
                }
            }
        }
    }

    pub(crate) fn snapshot(&self, target: BackendName) -> Lag {
        let book = match target {
            BackendName::Old => &self.old,
            BackendName::New => &self.new,
        };
        let collections: BTreeMap<String, CollectionLag> = book
            .collections
            .iter()
            .filter_map(|(name, seqs)| {
                let (_, &oldest) = seqs.first_key_value()?;
                Some((
                    name.clone(),
                    CollectionLag {
                        entries: seqs.len() as u64,
                        oldest_created_ms: oldest,
                    },
                ))
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

    fn added(collection: &str, seq: u64, created_ms: u64) -> LagChange {
        LagChange::Added {
            target: BackendName::New,
            collection: collection.into(),
            seq: Seq(seq),
            created_ms,
        }
    }

    fn removed(collection: &str, seq: u64) -> LagChange {
        LagChange::Removed {
            target: BackendName::New,
            collection: collection.into(),
            seq: Seq(seq),
        }
    }

    #[test]
    fn oldest_follows_out_of_order_removal() {
        let mut book = LagBook::default();
        for (seq, ms) in [(1, 10), (2, 20), (3, 30)] {
            book.apply(added("a", seq, ms));
        }
        book.apply(added("b", 4, 40));
        book.apply(removed("a", 2));
        let lag = book.snapshot(BackendName::New);
        assert_eq!(lag.entries, 3);
        assert_eq!(lag.oldest_created_ms, Some(10));
        assert_eq!(lag.collections["a"].entries, 2);

        book.apply(removed("a", 1));
        book.apply(removed("a", 1)); // twice: counted once
        let lag = book.snapshot(BackendName::New);
        assert_eq!(lag.entries, 2);
        assert_eq!(lag.collections["a"].oldest_created_ms, 30);

        book.apply(removed("a", 3));
        book.apply(removed("b", 4));
        assert_eq!(book.snapshot(BackendName::New), Lag::default());
        assert_eq!(book.snapshot(BackendName::Old), Lag::default());
    }
}
