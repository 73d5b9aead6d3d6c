//! The redb tables and the bookkeeping keys: everything that fixes the file's layout.

use redb::TableDefinition;
use shift_config::BackendName;

use crate::MapTable;

/// The database file inside the state directory.
pub(crate) const FILE_NAME: &str = "chroma-shift.redb";

/// The layout this build reads and writes, recorded in [`META`] under [`FORMAT_KEY`]. Bump it
/// when a table or a value layout changes incompatibly, so an old build refuses a new file.
/// Format 2 added [`LAG_INDEX`] and [`LAG_SUMMARY`]; open migrates a format-1 file once.
pub(crate) const FORMAT: u64 = 2;
/// The format before the lag tables.
pub(crate) const FORMAT_V1: u64 = 1;

/// Bookkeeping numbers: the layout version and the next ids to hand out.
pub(crate) const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
pub(crate) const FORMAT_KEY: &str = "format";
/// Persisted rather than derived from the largest key, because the journal may be empty (all
/// applied) at a restart and seqs must still never repeat.
pub(crate) const NEXT_SEQ_KEY: &str = "next_seq";
pub(crate) const NEXT_INTENT_KEY: &str = "next_intent";

/// One journal per target, keyed by seq so a read is a range scan.
pub(crate) const JOURNAL_OLD: TableDefinition<u64, &[u8]> = TableDefinition::new("journal.old");
pub(crate) const JOURNAL_NEW: TableDefinition<u64, &[u8]> = TableDefinition::new("journal.new");
/// Write intents, keyed by intent id; the value is the caller's payload as given.
pub(crate) const INTENTS: TableDefinition<u64, &[u8]> = TableDefinition::new("intents");
/// Parked entries, keyed by the seq they had in the journal (seqs are global, so no clash).
pub(crate) const DEAD_LETTERS: TableDefinition<u64, &[u8]> = TableDefinition::new("dead_letters");

/// One row per journal entry, keyed by (target slot, collection key, seq), valued by its
/// creation time: a collection's oldest entry is the first row of its range, so removing it
/// finds the next oldest with one lookup instead of a journal scan.
pub(crate) const LAG_INDEX: TableDefinition<(u8, &str, u64), u64> =
    TableDefinition::new("lag.index");
/// One row per (target slot, collection key) with entries in the journal: (entries, payload
/// bytes). Open reads the lag book from here, in time that grows with collections, not entries.
pub(crate) const LAG_SUMMARY: TableDefinition<(u8, &str), (u64, u64)> =
    TableDefinition::new("lag.summary");
/// Written and emptied again by the recovery probe that tests whether the disk takes writes.
pub(crate) const PROBE: TableDefinition<u64, &[u8]> = TableDefinition::new("probe");

const MAP_COLLECTIONS: TableDefinition<&str, &[u8]> = TableDefinition::new("map.collections");
const MAP_TOPOLOGY: TableDefinition<&str, &[u8]> = TableDefinition::new("map.topology");
const MAP_CHECKPOINTS: TableDefinition<&str, &[u8]> = TableDefinition::new("map.checkpoints");
const MAP_AUDIT: TableDefinition<&str, &[u8]> = TableDefinition::new("map.audit");

/// Every key-value table, so open can create them all (a read of a missing table is an error).
pub(crate) const MAP_TABLES: [MapTable; 4] = [
    MapTable::Collections,
    MapTable::Topology,
    MapTable::Checkpoints,
    MapTable::Audit,
];

pub(crate) fn journal(target: BackendName) -> TableDefinition<'static, u64, &'static [u8]> {
    match target {
        BackendName::Old => JOURNAL_OLD,
        BackendName::New => JOURNAL_NEW,
    }
}

pub(crate) fn map(table: MapTable) -> TableDefinition<'static, &'static str, &'static [u8]> {
    match table {
        MapTable::Collections => MAP_COLLECTIONS,
        MapTable::Topology => MAP_TOPOLOGY,
        MapTable::Checkpoints => MAP_CHECKPOINTS,
        MapTable::Audit => MAP_AUDIT,
    }
}

/// Index of a target in the per-target arrays of the store.
pub(crate) fn slot(target: BackendName) -> usize {
    match target {
        BackendName::Old => 0,
        BackendName::New => 1,
    }
}

/// A target's slot as the first field of the lag tables' keys.
pub(crate) fn slot_key(target: BackendName) -> u8 {
    slot(target) as u8
}

/// Both targets, in [`slot`] order.
pub(crate) const TARGETS: [BackendName; 2] = [BackendName::Old, BackendName::New];
