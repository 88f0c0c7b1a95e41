//! The client's view of the cluster: [`ClusterMetadata`] (brokers, controller, and for
//! every topic its partitions' leaders and replicas), built from a `Metadata`
//! response and patched by leader hints.
//!
//! It is an immutable snapshot shared behind an `Arc`; [`crate::Connection`] swaps in
//! a new one on refresh and applies `NOT_LEADER` hints copy-on-write (topics are
//! individually `Arc`ed, so a hint copies one topic, not the map).

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use sluice_proto::v1;

/// A broker: its id and the `host:port` clients reach it at.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BrokerInfo {
    /// Broker id; ids start at 1 (0 means unknown, e.g. in a hint that only has an
    /// address).
    pub id: u64,
    pub addr: String,
}

impl fmt::Display for BrokerInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.id, self.addr)
    }
}

/// One partition as metadata describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionMetadata {
    pub partition: u32,
    /// The leader, if one is known and its address is known.
    pub leader: Option<BrokerInfo>,
    /// Broker ids holding a replica.
    pub replicas: Vec<u64>,
}

/// One topic as metadata describes it; `partitions[i].partition == i` whenever the
/// broker reports partitions densely, which it does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicMetadata {
    pub name: String,
    pub partitions: Vec<PartitionMetadata>,
}

impl TopicMetadata {
    /// Number of partitions.
    pub fn partition_count(&self) -> u32 {
        self.partitions.len() as u32
    }

    /// Partition `p`, if it exists.
    pub fn partition(&self, p: u32) -> Option<&PartitionMetadata> {
        self.partitions
            .get(p as usize)
            .filter(|m| m.partition == p)
            .or_else(|| self.partitions.iter().find(|m| m.partition == p))
    }

    /// Partitions with a known leader, in order.
    pub fn available_partitions(&self) -> Vec<u32> {
        self.partitions
            .iter()
            .filter(|p| p.leader.is_some())
            .map(|p| p.partition)
            .collect()
    }
}

/// A snapshot of the cluster: brokers, controller and topics.
///
/// ```
/// use sluice_client::ClusterMetadata;
///
/// let empty = ClusterMetadata::default();
/// assert!(empty.topic("orders").is_none());
/// assert!(empty.controller.is_none());
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClusterMetadata {
    /// Every live broker, by id.
    pub brokers: BTreeMap<u64, BrokerInfo>,
    /// The controller, if known.
    pub controller: Option<BrokerInfo>,
    /// Every topic, by name.
    pub topics: BTreeMap<String, Arc<TopicMetadata>>,
}

impl ClusterMetadata {
    /// Builds a snapshot from a `Metadata` response. Topics that come with an error
    /// are left out; leaders whose broker id is not in the broker list (or is 0)
    /// count as unknown.
    pub fn from_proto(resp: v1::MetadataResponse) -> Self {
        let brokers: BTreeMap<u64, BrokerInfo> = resp
            .brokers
            .into_iter()
            .filter(|b| b.id != 0 && !b.addr.is_empty())
            .map(|b| {
                (
                    b.id,
                    BrokerInfo {
                        id: b.id,
                        addr: b.addr,
                    },
                )
            })
            .collect();
        let controller = brokers.get(&resp.controller).cloned();
        let topics = resp
            .topics
            .into_iter()
            .filter(|t| crate::error::check(t.error.clone()).is_ok() && !t.name.is_empty())
            .map(|t| {
                let mut partitions: Vec<PartitionMetadata> = t
                    .partitions
                    .into_iter()
                    .map(|p| PartitionMetadata {
                        partition: p.partition,
                        leader: brokers.get(&p.leader).cloned(),
                        replicas: p.replicas,
                    })
                    .collect();
                partitions.sort_by_key(|p| p.partition);
                partitions.dedup_by_key(|p| p.partition);
                (
                    t.name.clone(),
                    Arc::new(TopicMetadata {
                        name: t.name,
                        partitions,
                    }),
                )
            })
            .collect();
        Self {
            brokers,
            controller,
            topics,
        }
    }

    /// The topic, if the cluster has it.
    pub fn topic(&self, name: &str) -> Option<&Arc<TopicMetadata>> {
        self.topics.get(name)
    }

    /// The leader of `topic`/`partition`, if known.
    pub fn leader(&self, topic: &str, partition: u32) -> Option<&BrokerInfo> {
        self.topic(topic)?.partition(partition)?.leader.as_ref()
    }

    /// Records that `leader` now leads `topic`/`partition` (from a `NOT_LEADER`
    /// hint). Does nothing if the topic or partition is unknown.
    pub fn set_leader(&mut self, topic: &str, partition: u32, leader: BrokerInfo) {
        if leader.id != 0 {
            self.brokers.insert(leader.id, leader.clone());
        }
        if let Some(t) = self.topics.get_mut(topic) {
            let t = Arc::make_mut(t);
            if let Some(p) = t.partitions.iter_mut().find(|p| p.partition == partition) {
                p.leader = Some(leader);
            }
        }
    }

    /// Forgets the leader of `topic`/`partition`, so the next use refreshes metadata.
    pub fn clear_leader(&mut self, topic: &str, partition: u32) {
        if let Some(t) = self.topics.get_mut(topic) {
            let t = Arc::make_mut(t);
            if let Some(p) = t.partitions.iter_mut().find(|p| p.partition == partition) {
                p.leader = None;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn response() -> v1::MetadataResponse {
        v1::MetadataResponse {
            brokers: vec![
                v1::Broker {
                    id: 1,
                    addr: "b1:9700".into(),
                },
                v1::Broker {
                    id: 2,
                    addr: "b2:9700".into(),
                },
            ],
            controller: 2,
            topics: vec![
                v1::TopicMetadata {
                    name: "orders".into(),
                    partitions: vec![
                        v1::PartitionMetadata {
                            partition: 1,
                            leader: 0,
                            replicas: vec![1, 2],
                        },
                        v1::PartitionMetadata {
                            partition: 0,
                            leader: 1,
                            replicas: vec![1, 2],
                        },
                    ],
                    error: None,
                },
                v1::TopicMetadata {
                    name: "gone".into(),
                    partitions: vec![],
                    error: Some(v1::Error {
                        code: v1::ErrorCode::UnknownTopic as i32,
                        message: "no such topic".into(),
                        leader: None,
                    }),
                },
            ],
            error: None,
        }
    }

    #[test]
    fn builds_from_a_response() {
        let m = ClusterMetadata::from_proto(response());
        assert_eq!(m.brokers.len(), 2);
        assert_eq!(m.controller.as_ref().unwrap().addr, "b2:9700");
        assert!(m.topic("gone").is_none());
        let t = m.topic("orders").unwrap();
        assert_eq!(t.partition_count(), 2);
        assert_eq!(t.partitions[0].partition, 0);
        assert_eq!(m.leader("orders", 0).unwrap().addr, "b1:9700");
        assert_eq!(m.leader("orders", 1), None);
        assert_eq!(t.available_partitions(), [0]);
    }

    #[test]
    fn hints_patch_one_partition_copy_on_write() {
        let before = ClusterMetadata::from_proto(response());
        let mut after = before.clone();
        after.set_leader(
            "orders",
            1,
            BrokerInfo {
                id: 3,
                addr: "b3:9700".into(),
            },
        );
        assert_eq!(after.leader("orders", 1).unwrap().id, 3);
        assert_eq!(after.brokers[&3].addr, "b3:9700");
        assert_eq!(before.leader("orders", 1), None);
        after.clear_leader("orders", 0);
        assert_eq!(after.leader("orders", 0), None);
        // Unknown topics and partitions are ignored.
        after.set_leader(
            "nope",
            0,
            BrokerInfo {
                id: 1,
                addr: "b1:9700".into(),
            },
        );
        after.clear_leader("orders", 9);
        assert!(after.topic("nope").is_none());
    }
}
