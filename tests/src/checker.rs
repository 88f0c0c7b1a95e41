//! The verdict of a fault test: given the [`History`] of every send and what every
//! replica of every partition holds once the faults have healed, what went wrong.
//!
//! Checks, per partition:
//! - every acknowledged value is present, at the offset its acknowledgement named;
//! - order: no copy of a value lies below its send's floor (one past the highest
//!   offset acknowledged on that partition before it was sent), so a record
//!   acknowledged before another was sent always comes first in the log;
//! - nothing is stored that was never sent, or in another partition than it was sent to;
//! - every replica holds the same records, with dense offsets, up to the high watermark;
//! - duplicates are counted; with [`EXACTLY_ONCE`] on (idempotent producers) a single
//!   duplicate fails the check, and so does a producer's records stored out of the
//!   order it sent them in.
//!
//! And of the consumer group reading along ([`check_commits`]): the committed offset of
//! a partition never goes backward, and never points past the end of its log.
//!
//! Pure functions over data: no I/O, no clocks, so the checker itself is unit-tested
//! below against histories that must fail.

use std::collections::HashMap;

use crate::inspect::StoredRecord;
use crate::readers::CommitHistory;
use crate::workload::{History, Op, Outcome};

/// The switch for exactly-once, in-order delivery per partition: on, the workload's
/// producers are idempotent, and a single duplicate or a producer's records out of
/// send order fail a test; off (at-least-once delivery), duplicates are only counted.
pub const EXACTLY_ONCE: bool = true;

/// At most this many examples of each kind of problem are quoted.
const EXAMPLES: usize = 10;

/// What one broker holds of one partition (its committed records, in order).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplicaLog {
    pub broker: u64,
    pub records: Vec<StoredRecord>,
}

/// Every replica of one partition, read after the replicas agreed on `high_watermark`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionReplicas {
    pub partition: u32,
    pub high_watermark: u64,
    pub replicas: Vec<ReplicaLog>,
}

/// What the checker found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Verdict {
    pub sent: usize,
    pub acked: usize,
    /// Acknowledged, found, but without an offset to check it against.
    pub acked_without_offset: usize,
    /// Sends the producer gave up on or refused (maybe stored, maybe not).
    pub failed: usize,
    /// Acknowledged values found on no replica.
    pub lost: Vec<String>,
    /// Acknowledged values not at the offset the acknowledgement named.
    pub misplaced: Vec<String>,
    /// Copies stored below their send's floor.
    pub out_of_order: Vec<String>,
    /// Stored values that were never sent (to that partition).
    pub unexpected: Vec<String>,
    /// Extra copies: a value stored twice counts one.
    pub duplicates: usize,
    pub duplicated_values: Vec<String>,
    /// Records stored before one their producer sent earlier.
    pub reordered: Vec<String>,
    /// Replicas that disagree, offsets with holes, logs not matching the watermark.
    pub divergent: Vec<String>,
    /// Records the consumer group read.
    pub group_read: u64,
    /// Committed offsets the watcher saw, over all partitions.
    pub commit_samples: usize,
    /// A committed offset lower than one seen before it.
    pub commits_backward: Vec<String>,
    /// A committed offset beyond the partition's high watermark.
    pub commits_past_end: Vec<String>,
}

impl Verdict {
    /// Every broken guarantee, as a sentence with examples; empty when all hold.
    pub fn problems(&self) -> Vec<String> {
        let mut out = Vec::new();
        let mut report = |what: &str, list: &[String], total: usize| {
            out.extend(sentence(what, list, total));
        };
        report("acknowledged record(s) lost", &self.lost, self.lost.len());
        report(
            "acknowledged record(s) not at their acknowledged offset",
            &self.misplaced,
            self.misplaced.len(),
        );
        report(
            "record(s) stored before a record acknowledged ahead of their send",
            &self.out_of_order,
            self.out_of_order.len(),
        );
        report(
            "record(s) stored that were never sent there",
            &self.unexpected,
            self.unexpected.len(),
        );
        report(
            "replica disagreement(s)",
            &self.divergent,
            self.divergent.len(),
        );
        if EXACTLY_ONCE {
            report(
                "duplicate(s) with exactly-once on",
                &self.duplicated_values,
                self.duplicates,
            );
            report(
                "record(s) stored out of their producer's send order",
                &self.reordered,
                self.reordered.len(),
            );
        }
        out.extend(self.commit_problems());
        out
    }

    /// What the consumer group's committed offsets broke, as sentences; empty when
    /// they only went forward and stayed within the log.
    fn commit_problems(&self) -> Vec<String> {
        [
            (
                "committed offset(s) that went backward",
                &self.commits_backward,
            ),
            (
                "committed offset(s) past the end of the log",
                &self.commits_past_end,
            ),
        ]
        .into_iter()
        .filter_map(|(what, list)| sentence(what, list, list.len()))
        .collect()
    }

    /// Lost records: the number the summary table reports.
    pub fn lost_count(&self) -> usize {
        self.lost.len()
    }

    /// The header of the summary table [`Verdict::table_row`] writes rows of.
    pub const TABLE_HEADER: &str = "| scenario | acknowledged | lost | duplicated | failed sends | read by group | commits sampled | seed |";

    /// One line of the summary table.
    pub fn table_row(&self, scenario: &str, seed: Option<u64>) -> String {
        let seed = seed.map_or_else(|| "-".to_string(), |s| s.to_string());
        format!(
            "| {scenario} | {} | {} | {} | {} | {} | {} | {seed} |",
            self.acked,
            self.lost_count(),
            self.duplicates,
            self.failed,
            self.group_read,
            self.commit_samples,
        )
    }
}

/// "`total` `what`, e.g. [the first few of `list`]", unless `total` is 0.
fn sentence(what: &str, list: &[String], total: usize) -> Option<String> {
    (total > 0).then(|| {
        format!(
            "{total} {what}, e.g. {:?}",
            &list[..list.len().min(EXAMPLES)]
        )
    })
}

/// Judges what the consumer group committed against the agreed logs: per partition,
/// the coordinator's answers never go backward and never pass the high watermark.
pub fn check_commits(v: &mut Verdict, commits: &CommitHistory, partitions: &[PartitionReplicas]) {
    v.group_read = commits.read;
    for (&partition, offsets) in &commits.samples {
        v.commit_samples += offsets.len();
        for pair in offsets.windows(2) {
            if pair[1] < pair[0] {
                v.commits_backward.push(format!(
                    "partition {partition}: {} after {}",
                    pair[1], pair[0]
                ));
            }
        }
        let end = partitions
            .iter()
            .find(|p| p.partition == partition)
            .map(|p| p.high_watermark);
        if let (Some(end), Some(&top)) = (end, offsets.iter().max())
            && top > end
        {
            v.commits_past_end.push(format!(
                "partition {partition}: committed {top}, high watermark {end}"
            ));
        }
    }
}

/// Judges `history` against the replicas of every partition it wrote to.
pub fn check(history: &History, partitions: &[PartitionReplicas]) -> Verdict {
    let mut v = Verdict {
        sent: history.ops.len(),
        acked: history.acked(),
        failed: history.ops.len() - history.acked(),
        ..Verdict::default()
    };
    let logs: HashMap<u32, &[StoredRecord]> = partitions
        .iter()
        .map(|p| (p.partition, agreed_log(p, &mut v.divergent)))
        .collect();

    let sent: HashMap<&str, &Op> = history
        .ops
        .iter()
        .map(|op| (op.value.as_str(), op))
        .collect();
    // Where each value is stored: (partition, offset) of every copy.
    let mut copies: HashMap<&str, Vec<(u32, u64)>> = HashMap::new();
    for (&partition, log) in &logs {
        // Per producer: the send number and offset of its last record so far.
        let mut last: HashMap<usize, (u64, u64)> = HashMap::new();
        for (offset, value) in log.iter() {
            match sent.get(value.as_str()) {
                Some(op) if op.partition == partition => {
                    copies
                        .entry(value.as_str())
                        .or_default()
                        .push((partition, *offset));
                    if let Some(&(seq, at)) = last.get(&op.producer)
                        && op.seq < seq
                    {
                        v.reordered.push(format!(
                            "{value} at {partition}/{offset} after send {seq} of its producer at {partition}/{at}"
                        ));
                    }
                    last.insert(op.producer, (op.seq, *offset));
                }
                Some(op) => v.unexpected.push(format!(
                    "{value} at {partition}/{offset} (sent to partition {})",
                    op.partition
                )),
                None => v
                    .unexpected
                    .push(format!("{value:?} at {partition}/{offset}")),
            }
        }
    }

    for op in &history.ops {
        let found = copies.get(op.value.as_str()).map_or(&[][..], Vec::as_slice);
        if found.len() > 1 {
            v.duplicates += found.len() - 1;
            v.duplicated_values
                .push(format!("{} at {found:?}", op.value));
        }
        for &(p, offset) in found {
            if offset < op.floor {
                v.out_of_order.push(format!(
                    "{} at {p}/{offset}, sent after offset {} was acknowledged",
                    op.value,
                    op.floor - 1
                ));
            }
        }
        let offset = match op.outcome {
            Outcome::Acked { offset } => Some(offset),
            Outcome::AckedSomewhere => None,
            Outcome::Failed(_) | Outcome::NotSent(_) => continue,
        };
        if found.is_empty() {
            v.lost.push(format!(
                "{} (acknowledged at {}/{offset:?})",
                op.value, op.partition
            ));
            continue;
        }
        let Some(offset) = offset else {
            v.acked_without_offset += 1;
            continue;
        };
        let at = logs
            .get(&op.partition)
            .and_then(|log| log.iter().find(|(o, _)| *o == offset));
        if at.is_none_or(|(_, stored)| *stored != op.value) {
            v.misplaced.push(format!(
                "{} acknowledged at {}/{offset}, which holds {:?}; stored at {found:?}",
                op.value,
                op.partition,
                at.map(|(_, s)| s)
            ));
        }
    }
    v
}

/// The partition's log as its replicas agree on it, noting every disagreement. The
/// first replica's log is the reference.
fn agreed_log<'a>(p: &'a PartitionReplicas, divergent: &mut Vec<String>) -> &'a [StoredRecord] {
    let Some(first) = p.replicas.first() else {
        divergent.push(format!("partition {}: no replica was read", p.partition));
        return &[];
    };
    for r in &p.replicas {
        let dense = r
            .records
            .iter()
            .enumerate()
            .all(|(i, (o, _))| *o == i as u64);
        if !dense {
            divergent.push(format!(
                "partition {} on broker {}: offsets are not dense from 0",
                p.partition, r.broker
            ));
        }
        if r.records.len() as u64 != p.high_watermark {
            divergent.push(format!(
                "partition {} on broker {}: {} records below a high watermark of {}",
                p.partition,
                r.broker,
                r.records.len(),
                p.high_watermark
            ));
        }
        if r.records != first.records {
            let at = r
                .records
                .iter()
                .zip(&first.records)
                .position(|(a, b)| a != b)
                .unwrap_or(r.records.len().min(first.records.len()));
            divergent.push(format!(
                "partition {}: broker {} differs from broker {} from offset {at}",
                p.partition, r.broker, first.broker
            ));
        }
    }
    &first.records
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_client::ClientError;

    /// An op of producer 0 whose send number is the value's position in the alphabet.
    fn op(value: &str, partition: u32, floor: u64, outcome: Outcome) -> Op {
        Op {
            value: value.into(),
            partition,
            producer: 0,
            seq: value.bytes().next().map_or(0, |b| u64::from(b - b'a')),
            floor,
            outcome,
        }
    }

    fn commits(samples: &[(u32, &[u64])]) -> CommitHistory {
        CommitHistory {
            samples: samples.iter().map(|(p, o)| (*p, o.to_vec())).collect(),
            ..CommitHistory::default()
        }
    }

    #[test]
    fn committed_offsets_that_only_grow_pass() {
        let mut v = Verdict::default();
        let parts = replicated(&["a", "b", "c"]);
        check_commits(&mut v, &commits(&[(0, &[0, 1, 1, 3])]), &parts);
        assert!(v.commit_problems().is_empty(), "{:?}", v.commit_problems());
        assert_eq!(v.commit_samples, 4);
    }

    #[test]
    fn a_committed_offset_going_backward_fails() {
        let mut v = Verdict::default();
        let parts = replicated(&["a", "b", "c"]);
        check_commits(&mut v, &commits(&[(0, &[1, 3, 2])]), &parts);
        assert_eq!(
            v.commits_backward,
            vec!["partition 0: 2 after 3".to_string()]
        );
        assert_eq!(v.problems().len(), 1);
    }

    #[test]
    fn a_committed_offset_past_the_log_end_fails() {
        let mut v = Verdict::default();
        let parts = replicated(&["a", "b"]);
        check_commits(&mut v, &commits(&[(0, &[1, 5])]), &parts);
        assert_eq!(v.commits_past_end.len(), 1, "{:?}", v.commit_problems());
    }

    fn acked(value: &str, offset: u64) -> Op {
        op(value, 0, 0, Outcome::Acked { offset })
    }

    fn log(values: &[&str]) -> Vec<StoredRecord> {
        values
            .iter()
            .enumerate()
            .map(|(i, v)| (i as u64, v.to_string()))
            .collect()
    }

    /// Partition 0 held identically by brokers 1..=3.
    fn replicated(values: &[&str]) -> Vec<PartitionReplicas> {
        vec![PartitionReplicas {
            partition: 0,
            high_watermark: values.len() as u64,
            replicas: (1..=3)
                .map(|broker| ReplicaLog {
                    broker,
                    records: log(values),
                })
                .collect(),
        }]
    }

    fn history(ops: Vec<Op>) -> History {
        History { ops }
    }

    #[test]
    fn a_clean_run_has_no_problems() {
        let h = history(vec![
            acked("a", 0),
            acked("b", 1),
            op("c", 0, 2, Outcome::Failed(ClientError::Closed("x".into()))),
        ]);
        let v = check(&h, &replicated(&["a", "b", "c"]));
        assert!(v.problems().is_empty(), "{:?}", v.problems());
        assert_eq!((v.sent, v.acked, v.failed, v.duplicates), (3, 2, 1, 0));
    }

    #[test]
    fn an_acknowledged_record_missing_everywhere_is_lost() {
        let h = history(vec![acked("a", 0), acked("b", 1)]);
        let v = check(&h, &replicated(&["a"]));
        assert_eq!(v.lost.len(), 1, "{v:?}");
        assert!(v.problems()[0].contains("lost"), "{:?}", v.problems());
    }

    #[test]
    fn an_unacknowledged_record_may_be_missing() {
        let h = history(vec![
            acked("a", 0),
            op("b", 0, 1, Outcome::Failed(ClientError::Closed("x".into()))),
        ]);
        assert!(check(&h, &replicated(&["a"])).problems().is_empty());
    }

    #[test]
    fn an_acknowledgement_naming_the_wrong_offset_is_caught() {
        let h = history(vec![acked("a", 1), acked("b", 0)]);
        let v = check(&h, &replicated(&["a", "b"]));
        assert_eq!(v.misplaced.len(), 2, "{v:?}");
    }

    #[test]
    fn a_record_stored_before_one_acknowledged_ahead_of_it_is_out_of_order() {
        // "b" was sent after "a" had been acknowledged at offset 1, yet lies below it.
        let h = history(vec![
            op("a", 0, 0, Outcome::Acked { offset: 1 }),
            op("b", 0, 2, Outcome::Acked { offset: 0 }),
        ]);
        let v = check(&h, &replicated(&["b", "a"]));
        assert_eq!(v.out_of_order.len(), 1, "{v:?}");
    }

    #[test]
    fn values_never_sent_or_sent_elsewhere_are_unexpected() {
        let h = history(vec![
            acked("a", 0),
            op("b", 1, 0, Outcome::Acked { offset: 0 }),
        ]);
        let mut parts = replicated(&["a", "b", "ghost"]);
        parts.push(PartitionReplicas {
            partition: 1,
            high_watermark: 1,
            replicas: vec![ReplicaLog {
                broker: 1,
                records: log(&["b"]),
            }],
        });
        let v = check(&h, &parts);
        assert_eq!(v.unexpected.len(), 2, "{v:?}");
    }

    #[test]
    fn duplicates_are_counted_and_fail_only_exactly_once() {
        let h = history(vec![acked("a", 0), acked("b", 2)]);
        let v = check(&h, &replicated(&["a", "b", "b", "b"]));
        assert_eq!(v.duplicates, 2);
        assert_eq!(v.misplaced.len(), 0, "{v:?}");
        assert_eq!(v.problems().is_empty(), !EXACTLY_ONCE, "{:?}", v.problems());
    }

    #[test]
    fn a_producer_s_records_out_of_send_order_fail_only_exactly_once() {
        // "b" was sent after "a" (neither acknowledged before the other was sent).
        let h = history(vec![acked("a", 1), acked("b", 0)]);
        let v = check(&h, &replicated(&["b", "a"]));
        assert_eq!(v.reordered.len(), 1, "{v:?}");
        assert_eq!(v.problems().is_empty(), !EXACTLY_ONCE, "{:?}", v.problems());
        let mut other = acked("a", 1);
        other.producer = 1;
        let v = check(
            &history(vec![other, acked("b", 0)]),
            &replicated(&["b", "a"]),
        );
        assert!(
            v.reordered.is_empty(),
            "two producers' records may interleave"
        );
    }

    #[test]
    fn replicas_that_disagree_or_fall_short_of_the_watermark_are_divergent() {
        let mut parts = replicated(&["a", "b"]);
        parts[0].replicas[1].records = log(&["a", "x"]);
        parts[0].replicas[2].records = log(&["a"]);
        let h = history(vec![acked("a", 0), acked("b", 1)]);
        let v = check(&h, &parts);
        // Broker 2 differs; broker 3 differs and is short of the watermark.
        assert_eq!(v.divergent.len(), 3, "{:?}", v.divergent);

        let mut holes = replicated(&["a", "b"]);
        for r in &mut holes[0].replicas {
            r.records[1].0 = 5;
        }
        let v = check(&h, &holes);
        assert_eq!(v.divergent.len(), 3, "{:?}", v.divergent);
    }

    #[test]
    fn the_table_row_names_acknowledged_lost_and_duplicated() {
        let h = history(vec![acked("a", 0), acked("b", 1)]);
        let v = check(&h, &replicated(&["a", "a"]));
        assert_eq!(
            v.table_row("x", Some(7)),
            "| x | 2 | 1 | 1 | 0 | 0 | 0 | 7 |"
        );
    }
}
