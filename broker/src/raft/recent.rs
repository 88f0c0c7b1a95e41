//! The newest entries of a group's log, kept in memory until they are applied, so that
//! applying them and replicating them to followers does not read them back from the
//! segments (walking the mapping and checking every frame's CRC again).
//!
//! Every broker reads each entry back to apply it, and a leader reads it once more per
//! follower to send it: with three replicas that was four CRC passes over every batch
//! on the leader. The entries appended are already in memory (the producer's request,
//! or a slice of the leader's append), so [`RecentEntries`] keeps those `Bytes` until
//! the state machine has applied them. A follower that lags past that reads the log as
//! before.
//!
//! Owns: a contiguous run of entries that always ends at the log's last entry, or
//! nothing; and its share of the broker-wide [`EntryBudget`]. It must never hold an
//! entry the log no longer has at that index: the log store mirrors every append,
//! truncation and purge here, and the state machine clears it when a snapshot resets
//! the log. When the budget is spent it holds nothing and reads go to the log.
//!
//! Entries served from here are as they were appended: a batch carries the producer's
//! base offset and epoch, not the ones the log stamped into its stored copy. Nothing
//! that reads entries through openraft needs the stamps: the state machine counts
//! offsets itself and a follower's log stamps its own copy.

use std::collections::VecDeque;
use std::ops::Range;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};

use openraft::EntryPayload;

use super::types::Entry;

/// The broker's default budget for entries kept in memory, across all groups.
pub const DEFAULT_ENTRY_BUDGET_BYTES: usize = 64 << 20;

/// Counted per entry besides its batch: the entry itself and its place in the queue.
const ENTRY_OVERHEAD: usize = 64;

/// Bytes of recent entries all groups of a broker may hold together.
#[derive(Debug)]
pub struct EntryBudget {
    limit: usize,
    held: AtomicUsize,
}

impl EntryBudget {
    pub fn new(limit: usize) -> Self {
        Self {
            limit,
            held: AtomicUsize::new(0),
        }
    }

    /// The broker's budget, [`DEFAULT_ENTRY_BUDGET_BYTES`].
    pub fn shared() -> Arc<Self> {
        static SHARED: OnceLock<Arc<EntryBudget>> = OnceLock::new();
        SHARED
            .get_or_init(|| Arc::new(Self::new(DEFAULT_ENTRY_BUDGET_BYTES)))
            .clone()
    }

    /// Bytes held now, by every group.
    pub fn held(&self) -> usize {
        self.held.load(Ordering::Acquire)
    }

    fn try_take(&self, bytes: usize) -> bool {
        self.held
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |held| {
                held.checked_add(bytes).filter(|&total| total <= self.limit)
            })
            .is_ok()
    }

    fn give_back(&self, bytes: usize) {
        self.held.fetch_sub(bytes, Ordering::AcqRel);
    }
}

fn payload_len(entry: &Entry) -> usize {
    match &entry.payload {
        EntryPayload::Normal(batch) => batch.0.len(),
        _ => 0,
    }
}

/// What an entry counts against the budget.
fn weight(entry: &Entry) -> usize {
    ENTRY_OVERHEAD + payload_len(entry)
}

#[derive(Default)]
struct Held {
    entries: VecDeque<Entry>,
    /// What `entries` weighs, taken from the budget.
    bytes: usize,
}

impl Held {
    fn first_index(&self) -> Option<u64> {
        self.entries.front().map(|e| e.log_id.index)
    }

    fn last_index(&self) -> Option<u64> {
        self.entries.back().map(|e| e.log_id.index)
    }
}

/// One group's newest entries; see the module doc.
pub struct RecentEntries {
    budget: Arc<EntryBudget>,
    held: Mutex<Held>,
}

impl RecentEntries {
    pub fn new(budget: Arc<EntryBudget>) -> Self {
        Self {
            budget,
            held: Mutex::new(Held::default()),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Held> {
        // Every update leaves `Held` consistent before anything that could panic.
        self.held.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The log has just appended `entries`, in order, after its previous last entry.
    pub fn appended(&self, entries: Vec<Entry>) {
        let Some(first) = entries.first() else {
            return;
        };
        let mut held = self.lock();
        if held
            .last_index()
            .is_some_and(|last| last + 1 != first.log_id.index)
        {
            // Not a continuation of what is held (a truncation this did not see would
            // be a bug; a skipped append is not): start again from these.
            self.drop_all(&mut held);
        }
        let bytes: usize = entries.iter().map(weight).sum();
        if !self.budget.try_take(bytes) {
            // Holding nothing keeps the run contiguous up to the log's end.
            self.drop_all(&mut held);
            return;
        }
        held.bytes += bytes;
        held.entries.extend(entries);
    }

    /// The entries with indexes in `range`, at most `max_bytes` of payload (at least
    /// one), if the first of them is held; `None` sends the caller to the log.
    pub fn read(&self, range: Range<u64>, max_bytes: usize) -> Option<Vec<Entry>> {
        let held = self.lock();
        let first = held.first_index()?;
        let last = held.last_index()?;
        if range.start < first || range.start > last || range.is_empty() {
            return None;
        }
        let skip = usize::try_from(range.start - first).ok()?;
        let mut out = Vec::new();
        let mut bytes = 0usize;
        for e in held.entries.range(skip..) {
            if e.log_id.index >= range.end {
                break;
            }
            let len = payload_len(e);
            if !out.is_empty() && bytes.saturating_add(len) > max_bytes {
                break;
            }
            bytes += len;
            out.push(e.clone());
        }
        Some(out)
    }

    /// Drops every entry at or below `index`: applied, or purged from the log.
    pub fn release_through(&self, index: u64) {
        let mut held = self.lock();
        let mut freed = 0;
        while let Some(e) = held.entries.front() {
            if e.log_id.index > index {
                break;
            }
            freed += weight(e);
            held.entries.pop_front();
        }
        held.bytes -= freed;
        self.budget.give_back(freed);
    }

    /// Drops every entry above `keep_through` (`None`: all), as the log truncates.
    pub fn truncate_after(&self, keep_through: Option<u64>) {
        let mut held = self.lock();
        let mut freed = 0;
        while let Some(e) = held.entries.back() {
            if keep_through.is_some_and(|k| e.log_id.index <= k) {
                break;
            }
            freed += weight(e);
            held.entries.pop_back();
        }
        held.bytes -= freed;
        self.budget.give_back(freed);
    }

    /// Drops everything, as when the log is reset.
    pub fn clear(&self) {
        let mut held = self.lock();
        self.drop_all(&mut held);
    }

    fn drop_all(&self, held: &mut Held) {
        held.entries.clear();
        self.budget.give_back(std::mem::take(&mut held.bytes));
    }
}

impl Drop for RecentEntries {
    fn drop(&mut self) {
        self.clear();
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use openraft::EntryPayload;

    use super::*;
    use crate::raft::types::{RecordBatch, log_id};

    fn entry(index: u64, len: usize) -> Entry {
        Entry {
            log_id: log_id(1, index),
            payload: EntryPayload::Normal(RecordBatch(Bytes::from(vec![index as u8; len]))),
        }
    }

    fn entries(range: Range<u64>, len: usize) -> Vec<Entry> {
        range.map(|i| entry(i, len)).collect()
    }

    fn indexes(read: Option<Vec<Entry>>) -> Option<Vec<u64>> {
        read.map(|es| es.iter().map(|e| e.log_id.index).collect())
    }

    fn recent(limit: usize) -> (RecentEntries, Arc<EntryBudget>) {
        let budget = Arc::new(EntryBudget::new(limit));
        (RecentEntries::new(budget.clone()), budget)
    }

    #[test]
    fn reads_of_held_entries_stop_at_the_range_end_and_the_byte_limit() {
        let (r, _) = recent(1 << 20);
        r.appended(entries(1..6, 100));
        assert_eq!(indexes(r.read(2..4, usize::MAX)), Some(vec![2, 3]));
        assert_eq!(indexes(r.read(2..100, 250)), Some(vec![2, 3]));
        assert_eq!(indexes(r.read(5..100, 1)), Some(vec![5]), "at least one");
        assert_eq!(r.read(2..4, usize::MAX).expect("held")[0], entry(2, 100));
    }

    #[test]
    fn a_read_from_before_or_after_what_is_held_goes_to_the_log() {
        let (r, _) = recent(1 << 20);
        assert_eq!(indexes(r.read(0..10, usize::MAX)), None, "nothing held");
        r.appended(entries(5..8, 10));
        assert_eq!(indexes(r.read(4..10, usize::MAX)), None);
        assert_eq!(indexes(r.read(8..10, usize::MAX)), None);
    }

    #[test]
    fn applied_entries_are_released_to_the_budget() {
        let (r, budget) = recent(1 << 20);
        r.appended(entries(1..5, 100));
        assert_eq!(budget.held(), 4 * (100 + ENTRY_OVERHEAD));
        r.release_through(2);
        assert_eq!(budget.held(), 2 * (100 + ENTRY_OVERHEAD));
        assert_eq!(indexes(r.read(2..5, usize::MAX)), None);
        assert_eq!(indexes(r.read(3..5, usize::MAX)), Some(vec![3, 4]));
        drop(r);
        assert_eq!(budget.held(), 0, "a dropped group gives everything back");
    }

    #[test]
    fn truncated_entries_are_never_served_again() {
        let (r, budget) = recent(1 << 20);
        r.appended(entries(1..6, 10));
        r.truncate_after(Some(3));
        assert_eq!(indexes(r.read(1..10, usize::MAX)), Some(vec![1, 2, 3]));
        assert_eq!(indexes(r.read(4..10, usize::MAX)), None);
        let replacement = Entry {
            log_id: log_id(2, 4),
            payload: EntryPayload::Blank,
        };
        r.appended(vec![replacement.clone()]);
        assert_eq!(r.read(4..5, usize::MAX), Some(vec![replacement]));
        r.truncate_after(None);
        assert_eq!(indexes(r.read(1..10, usize::MAX)), None);
        assert_eq!(budget.held(), 0);
    }

    #[test]
    fn an_append_that_does_not_follow_what_is_held_starts_a_new_run() {
        let (r, budget) = recent(1 << 20);
        r.appended(entries(1..4, 10));
        r.appended(entries(10..12, 10));
        assert_eq!(indexes(r.read(1..20, usize::MAX)), None);
        assert_eq!(indexes(r.read(10..20, usize::MAX)), Some(vec![10, 11]));
        assert_eq!(budget.held(), 2 * (10 + ENTRY_OVERHEAD));
    }

    #[test]
    fn a_spent_budget_leaves_the_group_holding_nothing() {
        let per_entry = 100 + ENTRY_OVERHEAD;
        let budget = Arc::new(EntryBudget::new(3 * per_entry));
        let a = RecentEntries::new(budget.clone());
        let b = RecentEntries::new(budget.clone());
        a.appended(entries(1..3, 100));
        b.appended(entries(1..2, 100));
        assert_eq!(budget.held(), 3 * per_entry);
        a.appended(entries(3..4, 100));
        assert_eq!(
            indexes(a.read(1..10, usize::MAX)),
            None,
            "a gap would follow, so a holds nothing"
        );
        assert_eq!(indexes(b.read(1..10, usize::MAX)), Some(vec![1]));
        assert_eq!(budget.held(), per_entry);
        a.appended(entries(4..5, 100));
        assert_eq!(indexes(a.read(4..10, usize::MAX)), Some(vec![4]));
    }

    #[test]
    fn clearing_gives_the_budget_back() {
        let (r, budget) = recent(1 << 20);
        r.appended(entries(1..4, 10));
        r.clear();
        assert_eq!(budget.held(), 0);
        assert_eq!(indexes(r.read(1..4, usize::MAX)), None);
    }
}
