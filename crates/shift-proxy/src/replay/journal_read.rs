//! How the worker reads the journal into its lanes within its memory budget, and notices
//! entries moved out of the journal under it.

use shift_state::{Seq, StoreError};

use super::lanes::is_barrier;
use super::{ApplyTarget, Run, MAX_CHECKED, READ_AHEAD};

impl<A: ApplyTarget> Run<'_, A> {
    /// Reads what the budget has room for into the lanes, and refills lanes that emptied
    /// while entries of theirs were left in the journal.
    pub(super) fn fill(&mut self) -> Result<(), StoreError> {
        let full: Vec<String> = self
            .lanes
            .iter()
            .filter(|(_, l)| l.queue.is_empty() && l.unread_from.is_some())
            .map(|(k, _)| k.clone())
            .collect();
        for key in full {
            self.refill(&key)?;
        }
        // A lane whose left entries were gone (parked or removed by an operator) is done.
        self.lanes.retain(|_, l| !l.idle());
        if self.barrier {
            if !self.idle() {
                return Ok(());
            }
            self.barrier = false;
        }
        let room = self.worker.settings.max_bytes.saturating_sub(self.held);
        if room == 0 {
            return Ok(());
        }
        let entries =
            self.worker
                .store
                .read_bounded(self.target(), self.cursor, READ_AHEAD, room)?;
        if entries.is_empty() && self.rewinds() {
            return self.fill();
        }
        let cap = self.worker.lane_cap();
        for entry in entries {
            if is_barrier(&entry) {
                // A barrier: applied alone, once everything before it is done.
                self.barrier = true;
                if self.idle() {
                    self.cursor = Some(entry.seq);
                    self.held += entry.payload.len();
                    self.lanes.entry(String::new()).or_default().push(entry);
                }
                break;
            }
            self.cursor = Some(entry.seq);
            let size = entry.payload.len();
            let lane = self.lanes.entry(entry.collection.clone()).or_default();
            if lane.unread_from.is_some() {
                continue;
            }
            if !lane.queue.is_empty() && lane.bytes + size > cap {
                lane.unread_from = Some(entry.seq);
                continue;
            }
            lane.push(entry);
            self.held += size;
        }
        Ok(())
    }

    /// Whether entries wait behind the cursor while the worker holds none: applied entries
    /// whose deferred removal was lost when the state reopened its file after a disk error
    /// (`replay/lanes.rs`'s `removal_may_wait`). The journal is then read again from its
    /// start (once: the cursor is `None` after this).
    fn rewinds(&mut self) -> bool {
        let behind = self.lanes.is_empty()
            && self.cursor.is_some()
            && self.worker.store.lag(self.target()).entries > 0;
        if behind {
            tracing::info!(
                target = self.target().as_str(),
                "entries wait behind the replay's cursor: reading the journal again from its start"
            );
            self.cursor = None;
        }
        behind
    }

    /// Reads `key`'s entries left in the journal (from its `unread_from` up to the cursor)
    /// into its empty queue, as many as fit.
    fn refill(&mut self, key: &str) -> Result<(), StoreError> {
        let worker = self.worker;
        let cap = worker.lane_cap();
        let cursor = self.cursor;
        let Some(lane) = self.lanes.get_mut(key) else {
            return Ok(());
        };
        let Some(from) = lane.unread_from.take() else {
            return Ok(());
        };
        let mut added = 0;
        let mut after = Some(Seq(from.0.saturating_sub(1)));
        let result = 'pages: loop {
            let page = match worker
                .store
                .read_bounded(worker.target, after, READ_AHEAD, cap)
            {
                Ok(page) => page,
                Err(error) => {
                    // Read again from here next time.
                    lane.unread_from = after.map(|s| Seq(s.0 + 1));
                    break Err(error);
                }
            };
            if page.is_empty() {
                break Ok(());
            }
            for entry in page {
                if Some(entry.seq) > cursor {
                    break 'pages Ok(());
                }
                after = Some(entry.seq);
                if entry.collection != key {
                    continue;
                }
                if !lane.queue.is_empty() && lane.bytes + entry.payload.len() > cap {
                    lane.unread_from = Some(entry.seq);
                    break 'pages Ok(());
                }
                added += entry.payload.len();
                lane.push(entry);
            }
        };
        self.held += added;
        result
    }

    /// Drops the lane's held entries that are no longer in the journal; true when it dropped
    /// any. Snapshot reads from the store's cache, one per held entry of the next batch.
    pub(super) fn drop_removed(&mut self, key: &str) -> Result<bool, StoreError> {
        let target = self.target();
        let Some(lane) = self.lanes.get(key) else {
            return Ok(false);
        };
        let mut gone = Vec::new();
        for held in lane.queue.iter().take(MAX_CHECKED) {
            let after = held.seq.0.checked_sub(1).map(Seq);
            let found = self.worker.store.read(target, after, 1)?;
            if found.first().map(|e| e.seq) != Some(held.seq) {
                gone.push(held.seq);
            }
        }
        if gone.is_empty() {
            return Ok(false);
        }
        tracing::info!(
            target = target.as_str(),
            entries = gone.len(),
            "entries moved out of the journal are not applied here"
        );
        let lane = self.lanes.get_mut(key).expect("the lane checked");
        let mut freed = 0;
        lane.queue.retain(|held| {
            let keep = !gone.contains(&held.seq);
            if !keep {
                freed += held.payload.len();
            }
            keep
        });
        lane.bytes -= freed;
        self.held -= freed;
        lane.singles = 0;
        if lane.idle() {
            self.lanes.remove(key);
        }
        Ok(true)
    }
}
