//! Idempotent produce: what a partition knows of each producer, and the rules that
//! decide whether a stamped batch is next in line, a retry of one already in the log,
//! or out of order.
//!
//! A producer stamps every batch with its producer id, epoch and the sequence number
//! of its first record (Kafka's RecordBatch fields); sequences count records per
//! partition from 0. The state machine applies every committed stamped batch to the
//! partition's [`ProducerTable`], which travels in snapshots and checkpoints, so any
//! replica that becomes leader knows it. The leader checks each incoming batch with
//! [`LeaderSequences`]: the table plus the batches it submitted in its term that are
//! not applied yet.
//!
//! Must never depend on time or on anything a replica does not share: replicas apply
//! the table identically from the log.
//!
//! Skipped sequences: the leader chains a batch onto the ones it submitted before, but
//! openraft may still refuse one of those after the check (a leader whose lease lapsed
//! under load refuses writes for a moment without losing its term), and the next one
//! then lands without it. The table records such gaps, so a retry of the missing batch
//! is never mistaken for one already stored (which the producer would count as
//! delivered); it is refused as out of order instead.

use std::collections::{BTreeMap, HashMap, VecDeque};

use serde::{Deserialize, Serialize};
use sluice_proto::batch::BatchHeader;
use thiserror::Error;

/// Retries of a producer's last this-many batches are answered with their original
/// offsets. Clients keep at most 5 batches in flight per partition (as Kafka's do).
pub const BATCHES_KEPT: usize = 8;

/// Producers remembered per partition; beyond it, the one that wrote least recently
/// is forgotten (a later batch of it gets `UNKNOWN_PRODUCER`, and so does any unknown
/// producer's batch past sequence 0 while the table is full).
pub const MAX_PRODUCERS: usize = 10_000;

/// A batch's producer stamp and the sequence range it covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stamp {
    pub producer_id: i64,
    pub epoch: i16,
    pub first_seq: i32,
    pub last_seq: i32,
}

impl Stamp {
    /// The stamp of a batch from an idempotent producer; `None` for an unstamped one
    /// (producer id -1), which is appended without checks.
    pub fn of(header: &BatchHeader) -> Option<Self> {
        if header.producer_id < 0 {
            return None;
        }
        Some(Self {
            producer_id: header.producer_id,
            epoch: header.producer_epoch,
            first_seq: header.base_sequence,
            last_seq: header
                .base_sequence
                .saturating_add(header.last_offset_delta),
        })
    }
}

/// Why a stamped batch is refused. Nothing is appended.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum SequenceError {
    #[error(
        "producer {producer_id} epoch {epoch} is fenced: the partition has seen epoch {current}"
    )]
    Fenced {
        producer_id: i64,
        epoch: i16,
        current: i16,
    },
    #[error(
        "out-of-order sequence from producer {producer_id}: expected {expected}, got {got} (an earlier batch is missing; resend it first)"
    )]
    OutOfOrder {
        producer_id: i64,
        expected: i32,
        got: i32,
    },
    #[error(
        "producer {producer_id} is unknown to this partition and its batch starts at sequence {got}, not 0"
    )]
    UnknownProducer { producer_id: i64, got: i32 },
    /// The producer must not count it as stored: it is not, and it cannot be stored in
    /// order any more.
    #[error(
        "batch {first_seq}..={last_seq} of producer {producer_id} was not stored and the partition has moved past it; it cannot be stored in order"
    )]
    Skipped {
        producer_id: i64,
        first_seq: i32,
        last_seq: i32,
    },
    #[error(
        "batch {first_seq}..={last_seq} of producer {producer_id} was appended long ago; its offset is no longer known"
    )]
    OldDuplicate {
        producer_id: i64,
        first_seq: i32,
        last_seq: i32,
    },
}

impl SequenceError {
    /// `stamp` was skipped by the log (see [`ProducerTable::skipped`]).
    pub fn skipped(stamp: &Stamp) -> Self {
        Self::Skipped {
            producer_id: stamp.producer_id,
            first_seq: stamp.first_seq,
            last_seq: stamp.last_seq,
        }
    }

    pub fn old_duplicate(stamp: &Stamp) -> Self {
        Self::OldDuplicate {
            producer_id: stamp.producer_id,
            first_seq: stamp.first_seq,
            last_seq: stamp.last_seq,
        }
    }
}

/// What to do with a stamped batch that passed the checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Next in line: append it.
    Append,
    /// A retry of a batch in the log: answer with the original's base offset, which is
    /// `None` while the original is submitted but not applied yet.
    Duplicate(Option<u64>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
struct SeqBatch {
    first_seq: i32,
    last_seq: i32,
    base_offset: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct ProducerEntry {
    epoch: i16,
    /// The last [`BATCHES_KEPT`] batches of `epoch`, oldest first.
    batches: VecDeque<SeqBatch>,
    /// The offset of its last record, for evicting the least recent producer.
    last_offset: u64,
    /// The last [`BATCHES_KEPT`] sequence ranges of `epoch` the log skipped, oldest
    /// first (see the module docs).
    #[serde(default)]
    gaps: VecDeque<(i32, i32)>,
}

/// Every producer a partition has applied a stamped batch from (see the module docs).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProducerTable {
    producers: BTreeMap<i64, ProducerEntry>,
}

impl ProducerTable {
    /// Records a committed batch that landed at `base_offset`.
    pub fn apply(&mut self, stamp: &Stamp, base_offset: u64) {
        let records = u64::try_from(stamp.last_seq - stamp.first_seq).unwrap_or(0) + 1;
        let entry = self
            .producers
            .entry(stamp.producer_id)
            .or_insert_with(|| ProducerEntry {
                epoch: stamp.epoch,
                batches: VecDeque::new(),
                last_offset: 0,
                gaps: VecDeque::new(),
            });
        if entry.epoch != stamp.epoch {
            entry.epoch = stamp.epoch;
            entry.batches.clear();
            entry.gaps.clear();
        }
        let last = entry.batches.back().map_or(-1, |b| b.last_seq);
        if stamp.first_seq > last.saturating_add(1) {
            entry.gaps.push_back((last + 1, stamp.first_seq - 1));
            if entry.gaps.len() > BATCHES_KEPT {
                entry.gaps.pop_front();
            }
        }
        entry.batches.push_back(SeqBatch {
            first_seq: stamp.first_seq,
            last_seq: stamp.last_seq,
            base_offset,
        });
        if entry.batches.len() > BATCHES_KEPT {
            entry.batches.pop_front();
        }
        entry.last_offset = base_offset + records - 1;
        if self.producers.len() > MAX_PRODUCERS
            && let Some(oldest) = self
                .producers
                .iter()
                .min_by_key(|(_, e)| e.last_offset)
                .map(|(id, _)| *id)
        {
            self.producers.remove(&oldest);
        }
    }

    /// The base offset of the applied batch with exactly this stamp, if remembered.
    pub fn offset_of(&self, stamp: &Stamp) -> Option<u64> {
        let entry = self.producers.get(&stamp.producer_id)?;
        if entry.epoch != stamp.epoch {
            return None;
        }
        entry
            .batches
            .iter()
            .find(|b| b.first_seq == stamp.first_seq && b.last_seq == stamp.last_seq)
            .map(|b| b.base_offset)
    }

    /// Whether `stamp`'s records are applied, remembered as a batch or not.
    pub fn covers(&self, stamp: &Stamp) -> bool {
        self.last(stamp.producer_id)
            .is_some_and(|(epoch, last)| epoch == stamp.epoch && last >= stamp.last_seq)
            && !self.skipped(stamp)
    }

    /// Whether the log went past `stamp`'s sequences without them: the batch was never
    /// stored, and cannot be in order any more.
    pub fn skipped(&self, stamp: &Stamp) -> bool {
        self.producers.get(&stamp.producer_id).is_some_and(|e| {
            e.epoch == stamp.epoch
                && e.gaps
                    .iter()
                    .any(|&(from, to)| stamp.first_seq <= to && stamp.last_seq >= from)
        })
    }

    /// The producer's epoch and last applied sequence.
    fn last(&self, producer_id: i64) -> Option<(i16, i32)> {
        let entry = self.producers.get(&producer_id)?;
        let last = entry.batches.back().map_or(-1, |b| b.last_seq);
        Some((entry.epoch, last))
    }

    pub fn len(&self) -> usize {
        self.producers.len()
    }

    pub fn is_empty(&self) -> bool {
        self.producers.is_empty()
    }
}

/// The leader's view for checking incoming batches: which stamped batches it has
/// submitted in its current term and not yet seen applied. A new term starts empty;
/// the leader checks nothing until every entry of earlier terms is applied, so the
/// table then covers them.
#[derive(Debug, Default)]
pub struct LeaderSequences {
    term: u64,
    /// Per producer, submitted batches as (epoch, first_seq, last_seq), oldest first.
    pending: HashMap<i64, VecDeque<(i16, i32, i32)>>,
}

impl LeaderSequences {
    /// Decides what to do with `stamp` given the applied `table`, as leader in `term`.
    pub fn check(
        &mut self,
        term: u64,
        table: &ProducerTable,
        stamp: &Stamp,
    ) -> Result<Verdict, SequenceError> {
        if term != self.term {
            self.term = term;
            self.pending.clear();
        }
        let pid = stamp.producer_id;
        let applied = table.last(pid);
        if let Some(queue) = self.pending.get_mut(&pid) {
            // Drop what the table now covers.
            while let Some(&(epoch, _, last)) = queue.front() {
                let covered = applied.is_some_and(|(e, l)| e > epoch || (e == epoch && l >= last));
                if !covered {
                    break;
                }
                queue.pop_front();
            }
            if queue.is_empty() {
                self.pending.remove(&pid);
            }
        }
        if let Some(offset) = table.offset_of(stamp) {
            return Ok(Verdict::Duplicate(Some(offset)));
        }
        let pending = self.pending.get(&pid);
        if pending.is_some_and(|q| q.contains(&(stamp.epoch, stamp.first_seq, stamp.last_seq))) {
            return Ok(Verdict::Duplicate(None));
        }
        let last = pending
            .and_then(|q| q.back())
            .map(|&(e, _, l)| (e, l))
            .or(applied);
        let Some((epoch, last_seq)) = last else {
            return if stamp.first_seq == 0 {
                Ok(Verdict::Append)
            } else if table.len() >= MAX_PRODUCERS {
                // The table may have forgotten it: the producer starts a new epoch.
                Err(SequenceError::UnknownProducer {
                    producer_id: pid,
                    got: stamp.first_seq,
                })
            } else {
                // Its first batches were refused or lost with a leader's term and are
                // being resent: this one waits for them, as a new epoch would reorder.
                Err(SequenceError::OutOfOrder {
                    producer_id: pid,
                    expected: 0,
                    got: stamp.first_seq,
                })
            };
        };
        if stamp.epoch < epoch {
            return Err(SequenceError::Fenced {
                producer_id: pid,
                epoch: stamp.epoch,
                current: epoch,
            });
        }
        let expected = if stamp.epoch > epoch {
            0
        } else {
            last_seq.saturating_add(1)
        };
        if stamp.first_seq == expected {
            Ok(Verdict::Append)
        } else if stamp.epoch == epoch && table.covers(stamp) {
            Err(SequenceError::old_duplicate(stamp))
        } else if table.skipped(stamp) {
            Err(SequenceError::skipped(stamp))
        } else {
            Err(SequenceError::OutOfOrder {
                producer_id: pid,
                expected,
                got: stamp.first_seq,
            })
        }
    }

    /// Notes that `stamp` was submitted (after [`LeaderSequences::check`] said append).
    pub fn submitted(&mut self, stamp: &Stamp) {
        self.pending
            .entry(stamp.producer_id)
            .or_default()
            .push_back((stamp.epoch, stamp.first_seq, stamp.last_seq));
    }

    /// Notes that openraft refused the submitted `stamp` without appending it. If a
    /// later batch chained onto it lands anyway, the table records the gap.
    pub fn refused(&mut self, stamp: &Stamp) {
        let key = (stamp.epoch, stamp.first_seq, stamp.last_seq);
        if let Some(queue) = self.pending.get_mut(&stamp.producer_id) {
            queue.retain(|p| *p != key);
            if queue.is_empty() {
                self.pending.remove(&stamp.producer_id);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stamp(pid: i64, epoch: i16, first: i32, n: i32) -> Stamp {
        Stamp {
            producer_id: pid,
            epoch,
            first_seq: first,
            last_seq: first + n - 1,
        }
    }

    #[test]
    fn a_new_producer_must_start_at_sequence_zero() {
        let mut l = LeaderSequences::default();
        let t = ProducerTable::default();
        assert_eq!(l.check(1, &t, &stamp(7, 0, 0, 3)), Ok(Verdict::Append));
        // Its first batches are being resent (refused, or lost with a term): wait.
        assert!(matches!(
            l.check(1, &t, &stamp(8, 0, 5, 3)),
            Err(SequenceError::OutOfOrder {
                expected: 0,
                got: 5,
                ..
            })
        ));
    }

    #[test]
    fn a_table_that_forgets_producers_answers_unknown_producer() {
        let mut l = LeaderSequences::default();
        let mut t = ProducerTable::default();
        for pid in 0..=(MAX_PRODUCERS as i64) {
            t.apply(&stamp(pid, 0, 0, 1), pid as u64);
        }
        // Producer 0 was evicted; its next batch cannot be placed.
        assert!(matches!(
            l.check(1, &t, &stamp(0, 0, 1, 1)),
            Err(SequenceError::UnknownProducer { got: 1, .. })
        ));
    }

    #[test]
    fn batches_in_flight_chain_their_sequences() {
        let mut l = LeaderSequences::default();
        let t = ProducerTable::default();
        for (first, n) in [(0, 3), (3, 2), (5, 10)] {
            let s = stamp(1, 0, first, n);
            assert_eq!(l.check(1, &t, &s), Ok(Verdict::Append));
            l.submitted(&s);
        }
        assert_eq!(
            l.check(1, &t, &stamp(1, 0, 3, 2)),
            Ok(Verdict::Duplicate(None)),
            "a retry of an unapplied batch waits for the original"
        );
        assert!(matches!(
            l.check(1, &t, &stamp(1, 0, 16, 1)),
            Err(SequenceError::OutOfOrder {
                expected: 15,
                got: 16,
                ..
            })
        ));
    }

    #[test]
    fn retries_of_applied_batches_get_their_original_offsets() {
        let mut l = LeaderSequences::default();
        let mut t = ProducerTable::default();
        let a = stamp(1, 0, 0, 3);
        let b = stamp(1, 0, 3, 2);
        for s in [a, b] {
            assert_eq!(l.check(1, &t, &s), Ok(Verdict::Append));
            l.submitted(&s);
        }
        t.apply(&a, 100);
        t.apply(&b, 103);
        assert_eq!(l.check(1, &t, &a), Ok(Verdict::Duplicate(Some(100))));
        assert_eq!(l.check(1, &t, &b), Ok(Verdict::Duplicate(Some(103))));
        assert_eq!(l.check(1, &t, &stamp(1, 0, 5, 1)), Ok(Verdict::Append));
    }

    #[test]
    fn a_new_term_checks_against_the_applied_table_only() {
        let mut l = LeaderSequences::default();
        let mut t = ProducerTable::default();
        let a = stamp(1, 0, 0, 3);
        l.check(1, &t, &a).expect("append");
        l.submitted(&a);
        // The entry was lost with the old leader's term; the client resends it.
        assert_eq!(l.check(2, &t, &a), Ok(Verdict::Append));
        t.apply(&a, 0);
        assert_eq!(l.check(3, &t, &a), Ok(Verdict::Duplicate(Some(0))));
    }

    #[test]
    fn an_older_epoch_is_fenced_and_a_newer_one_restarts_at_zero() {
        let mut l = LeaderSequences::default();
        let mut t = ProducerTable::default();
        t.apply(&stamp(1, 3, 0, 5), 0);
        assert!(matches!(
            l.check(1, &t, &stamp(1, 2, 5, 1)),
            Err(SequenceError::Fenced { current: 3, .. })
        ));
        assert!(matches!(
            l.check(1, &t, &stamp(1, 4, 5, 1)),
            Err(SequenceError::OutOfOrder { expected: 0, .. })
        ));
        assert_eq!(l.check(1, &t, &stamp(1, 4, 0, 1)), Ok(Verdict::Append));
    }

    #[test]
    fn only_the_last_batches_keep_their_offsets() {
        let mut l = LeaderSequences::default();
        let mut t = ProducerTable::default();
        for i in 0..(BATCHES_KEPT as i32 + 2) {
            t.apply(&stamp(1, 0, i, 1), i as u64);
        }
        assert!(matches!(
            l.check(1, &t, &stamp(1, 0, 0, 1)),
            Err(SequenceError::OldDuplicate { .. })
        ));
        assert_eq!(
            l.check(1, &t, &stamp(1, 0, 9, 1)),
            Ok(Verdict::Duplicate(Some(9)))
        );
    }

    #[test]
    fn a_batch_the_log_skipped_is_never_taken_for_a_stored_one() {
        let mut l = LeaderSequences::default();
        let mut t = ProducerTable::default();
        let (a, lost, b) = (stamp(1, 0, 0, 2), stamp(1, 0, 2, 1), stamp(1, 0, 3, 4));
        for s in [a, lost, b] {
            assert_eq!(l.check(1, &t, &s), Ok(Verdict::Append));
            l.submitted(&s);
        }
        // openraft refused `lost` after the check; `b` landed right after `a`.
        t.apply(&a, 0);
        t.apply(&b, 2);
        assert!(t.skipped(&lost) && !t.covers(&lost));
        assert!(!t.skipped(&a) && t.covers(&a) && t.covers(&b));
        assert!(matches!(
            l.check(1, &t, &lost),
            Err(SequenceError::Skipped { first_seq: 2, .. })
        ));
        // Still refused once it is older than the batches the table remembers.
        for i in 0..(BATCHES_KEPT as i32 + 2) {
            t.apply(&stamp(1, 0, 7 + i, 1), 6 + i as u64);
        }
        assert!(matches!(
            l.check(2, &t, &lost),
            Err(SequenceError::Skipped { .. })
        ));
        assert!(matches!(
            l.check(2, &t, &a),
            Err(SequenceError::OldDuplicate { .. })
        ));
    }

    #[test]
    fn a_refused_batch_is_checked_anew_when_it_comes_back() {
        let mut l = LeaderSequences::default();
        let t = ProducerTable::default();
        let (a, b) = (stamp(1, 0, 0, 2), stamp(1, 0, 2, 3));
        for s in [a, b] {
            assert_eq!(l.check(1, &t, &s), Ok(Verdict::Append));
            l.submitted(&s);
        }
        // Both refused by openraft: nothing of them is in the log.
        l.refused(&b);
        l.refused(&a);
        assert_eq!(l.check(1, &t, &a), Ok(Verdict::Append), "not a duplicate");
        l.submitted(&a);
        assert_eq!(l.check(1, &t, &b), Ok(Verdict::Append));
    }

    #[test]
    fn the_least_recent_producer_is_forgotten_beyond_the_cap() {
        let mut t = ProducerTable::default();
        for pid in 0..=(MAX_PRODUCERS as i64) {
            t.apply(&stamp(pid, 0, 0, 1), pid as u64);
        }
        assert_eq!(t.len(), MAX_PRODUCERS);
        assert_eq!(t.offset_of(&stamp(0, 0, 0, 1)), None);
        assert_eq!(t.offset_of(&stamp(1, 0, 0, 1)), Some(1));
    }

    #[test]
    fn the_table_survives_a_json_round_trip() {
        let mut t = ProducerTable::default();
        t.apply(&stamp(5, 1, 0, 4), 40);
        let json = serde_json::to_string(&t).expect("encode");
        let back: ProducerTable = serde_json::from_str(&json).expect("decode");
        assert_eq!(back, t);
    }
}
