//! The materialized state of one `__consumer_offsets` partition: committed offsets by
//! group ([`OffsetStore`]) and group state, rebuilt by replaying its records
//! ([`Replay`]).
//!
//! Owns the meaning of the record stream: the latest record about a key wins, a
//! deleted group takes its offsets along, and a log that was cut short (a replica that
//! installed a snapshot) is only trusted if it holds a complete checkpoint. Must never
//! do I/O; the shard feeds it records.

use std::collections::BTreeMap;

use super::TopicPartition;
use super::membership::GroupState;
use super::records::{Committed, GroupRecord};

/// Committed offsets, by group then partition.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OffsetStore {
    by_group: BTreeMap<String, BTreeMap<TopicPartition, Committed>>,
}

impl OffsetStore {
    pub fn commit(&mut self, group: &str, tp: TopicPartition, committed: Committed) {
        self.by_group
            .entry(group.to_string())
            .or_default()
            .insert(tp, committed);
    }

    /// Every committed offset of `group`.
    pub fn group(&self, group: &str) -> Option<&BTreeMap<TopicPartition, Committed>> {
        self.by_group.get(group)
    }

    pub fn remove_group(&mut self, group: &str) {
        self.by_group.remove(group);
    }

    /// Groups with at least one committed offset.
    pub fn groups(&self) -> impl Iterator<Item = &String> {
        self.by_group.keys()
    }

    /// How many offsets are stored.
    pub fn len(&self) -> usize {
        self.by_group.values().map(BTreeMap::len).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.by_group.is_empty()
    }

    /// One record per stored offset (what a checkpoint rewrites).
    pub fn records(&self) -> impl Iterator<Item = GroupRecord> + '_ {
        self.by_group.iter().flat_map(|(group, offsets)| {
            offsets.iter().map(|(tp, c)| GroupRecord::Offset {
                group: group.clone(),
                topic: tp.topic.clone(),
                partition: tp.partition,
                committed: c.clone(),
            })
        })
    }
}

/// A partition's state as its records, replayed in log order, leave it.
#[derive(Debug, Default)]
pub struct Replay {
    pub offsets: OffsetStore,
    pub groups: BTreeMap<String, GroupState>,
    /// Records applied.
    pub records: u64,
    /// The checkpoint begun and not yet ended.
    open_checkpoint: Option<u64>,
    /// A checkpoint was read from begin to end.
    complete_checkpoint: bool,
    /// The highest checkpoint id seen.
    pub last_checkpoint_id: u64,
}

impl Replay {
    pub fn apply(&mut self, record: GroupRecord) {
        self.records += 1;
        match record {
            GroupRecord::Offset {
                group,
                topic,
                partition,
                committed,
            } => self
                .offsets
                .commit(&group, TopicPartition::new(topic, partition), committed),
            GroupRecord::Group(state) => {
                self.groups.insert(state.id.clone(), state);
            }
            GroupRecord::GroupDeleted { group } => {
                self.groups.remove(&group);
                self.offsets.remove_group(&group);
            }
            GroupRecord::CheckpointBegin { id } => {
                self.open_checkpoint = Some(id);
                self.last_checkpoint_id = self.last_checkpoint_id.max(id);
            }
            GroupRecord::CheckpointEnd { id } => {
                if self.open_checkpoint == Some(id) {
                    self.complete_checkpoint = true;
                }
                self.open_checkpoint = None;
            }
        }
    }

    /// Whether the replayed records hold every live fact: the log started at its
    /// very beginning, or it holds a whole checkpoint (which rewrote every fact alive
    /// before it).
    pub fn is_complete(&self, log_start_offset: u64) -> bool {
        log_start_offset == 0 || self.complete_checkpoint
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::group::records::offset;

    fn committed(r: &Replay, group: &str, p: u32) -> Option<u64> {
        r.offsets
            .group(group)?
            .get(&TopicPartition::new("t", p))
            .map(|c| c.offset)
    }

    #[test]
    fn the_latest_commit_wins_and_deletes_take_offsets_along() {
        let mut r = Replay::default();
        for rec in [
            offset("a", 0, 5),
            offset("a", 0, 9),
            offset("b", 1, 3),
            GroupRecord::Group(GroupState {
                id: "b".into(),
                ..GroupState::default()
            }),
            GroupRecord::GroupDeleted { group: "b".into() },
            offset("a", 1, 2),
        ] {
            r.apply(rec);
        }
        assert_eq!(committed(&r, "a", 0), Some(9));
        assert_eq!(committed(&r, "a", 1), Some(2));
        assert_eq!(committed(&r, "b", 1), None);
        assert!(r.groups.is_empty());
        assert_eq!(r.offsets.len(), 2);
        assert_eq!(r.records, 6);
    }

    #[test]
    fn a_cut_log_is_complete_only_with_a_whole_checkpoint() {
        let mut r = Replay::default();
        r.apply(offset("a", 0, 1));
        assert!(r.is_complete(0));
        assert!(!r.is_complete(10));
        r.apply(GroupRecord::CheckpointBegin { id: 4 });
        r.apply(offset("a", 0, 1));
        assert!(!r.is_complete(10), "checkpoint not ended");
        r.apply(GroupRecord::CheckpointEnd { id: 4 });
        assert!(r.is_complete(10));
        assert_eq!(r.last_checkpoint_id, 4);
    }

    #[test]
    fn a_checkpoint_reproduces_the_state() {
        let mut r = Replay::default();
        for rec in [offset("a", 0, 5), offset("b", 2, 7), offset("a", 0, 6)] {
            r.apply(rec);
        }
        let mut again = Replay::default();
        for rec in r.offsets.records() {
            again.apply(rec);
        }
        assert_eq!(again.offsets, r.offsets);
    }
}
