//! The committed cluster metadata and the commands that change it.
//!
//! Commands travel as records in the controller group's log: one record per command,
//! its value a version byte followed by JSON (readable with `sluice consume` one day,
//! and easy to extend). `apply` is deterministic: placement is computed from the state,
//! so every broker replaying the log places replicas identically.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use thiserror::Error;

use super::topic_config::{ConfigError, TopicConfig};

/// Encoding version of a command record's value.
const COMMAND_VERSION: u8 = 1;

/// Longest topic name, as in Kafka.
pub const MAX_TOPIC_NAME_LEN: usize = 249;

/// Most partitions a topic may have.
pub const MAX_PARTITIONS: u32 = 10_000;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BrokerInfo {
    pub id: u64,
    pub addr: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartitionMeta {
    /// The partition's Raft group id, unique for the cluster's lifetime.
    pub group_id: u64,
    /// Broker ids; the first is the preferred leader.
    pub replicas: Vec<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TopicMeta {
    pub name: String,
    pub replication_factor: u32,
    pub configs: BTreeMap<String, String>,
    pub partitions: Vec<PartitionMeta>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum MetadataCommand {
    CreateTopic {
        name: String,
        partitions: u32,
        replication_factor: u32,
        configs: BTreeMap<String, String>,
    },
    DeleteTopic {
        name: String,
    },
    /// Grows a topic to `partitions` in total.
    AddPartitions {
        name: String,
        partitions: u32,
    },
    /// Hands out producer id `id` (the next unused one) to an idempotent producer.
    AllocateProducerId {
        id: i64,
    },
}

/// Why a command cannot be applied; each maps to a client error code.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum MetadataError {
    #[error("topic '{0}' already exists")]
    TopicExists(String),
    #[error("unknown topic '{0}'")]
    UnknownTopic(String),
    #[error(
        "invalid topic name '{0}': use 1 to {MAX_TOPIC_NAME_LEN} characters of [a-zA-Z0-9._-], not '.' or '..'"
    )]
    InvalidTopicName(String),
    #[error("invalid partition count {requested}: {reason}")]
    InvalidPartitions { requested: u32, reason: String },
    #[error("replication factor {requested} is invalid: the cluster has {brokers} brokers")]
    InvalidReplicationFactor { requested: u32, brokers: usize },
    #[error(transparent)]
    InvalidConfig(#[from] ConfigError),
    #[error("undecodable metadata record: {0}")]
    Undecodable(String),
    #[error("producer id {requested} is not the next free one ({next}); retry")]
    ProducerIdTaken { requested: i64, next: i64 },
}

/// Checks a topic name against Kafka's rules.
pub fn validate_topic_name(name: &str) -> Result<(), MetadataError> {
    let ok = !name.is_empty()
        && name.len() <= MAX_TOPIC_NAME_LEN
        && name != "."
        && name != ".."
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(MetadataError::InvalidTopicName(name.to_string()))
    }
}

impl MetadataCommand {
    /// The record value that carries this command.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = vec![COMMAND_VERSION];
        // Serializing plain data with string keys cannot fail.
        out.extend(serde_json::to_vec(self).unwrap_or_default());
        out
    }

    pub fn decode(value: &[u8]) -> Result<Self, MetadataError> {
        match value.split_first() {
            Some((&COMMAND_VERSION, json)) => {
                serde_json::from_slice(json).map_err(|e| MetadataError::Undecodable(e.to_string()))
            }
            Some((v, _)) => Err(MetadataError::Undecodable(format!("unknown version {v}"))),
            None => Err(MetadataError::Undecodable("empty record".into())),
        }
    }
}

/// Everything the controller group has committed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MetadataState {
    pub brokers: BTreeMap<u64, BrokerInfo>,
    pub topics: BTreeMap<String, TopicMeta>,
    /// Next partition Raft group id; group 0 is the controller.
    next_group_id: u64,
    /// Next idempotent producer id to hand out.
    next_producer_id: i64,
}

impl MetadataState {
    pub fn new(brokers: impl IntoIterator<Item = BrokerInfo>) -> Self {
        Self {
            brokers: brokers.into_iter().map(|b| (b.id, b)).collect(),
            topics: BTreeMap::new(),
            next_group_id: 1,
            next_producer_id: 0,
        }
    }

    /// The producer id the next [`MetadataCommand::AllocateProducerId`] must carry.
    pub fn next_producer_id(&self) -> i64 {
        self.next_producer_id
    }

    /// Checks that `cmd` would apply cleanly to this state.
    pub fn validate(&self, cmd: &MetadataCommand) -> Result<(), MetadataError> {
        match cmd {
            MetadataCommand::CreateTopic {
                name,
                partitions,
                replication_factor,
                configs,
            } => {
                validate_topic_name(name)?;
                if self.topics.contains_key(name) {
                    return Err(MetadataError::TopicExists(name.clone()));
                }
                if *partitions == 0 || *partitions > MAX_PARTITIONS {
                    return Err(MetadataError::InvalidPartitions {
                        requested: *partitions,
                        reason: format!("a topic needs 1 to {MAX_PARTITIONS} partitions"),
                    });
                }
                if *replication_factor == 0 || *replication_factor as usize > self.brokers.len() {
                    return Err(MetadataError::InvalidReplicationFactor {
                        requested: *replication_factor,
                        brokers: self.brokers.len(),
                    });
                }
                TopicConfig::parse(configs)?;
                Ok(())
            }
            MetadataCommand::DeleteTopic { name } => self.topic(name).map(|_| ()),
            MetadataCommand::AddPartitions { name, partitions } => {
                let topic = self.topic(name)?;
                let current = topic.partitions.len() as u32;
                if *partitions <= current || *partitions > MAX_PARTITIONS {
                    return Err(MetadataError::InvalidPartitions {
                        requested: *partitions,
                        reason: format!(
                            "topic '{name}' has {current}; the new total must be larger and at most {MAX_PARTITIONS}"
                        ),
                    });
                }
                Ok(())
            }
            MetadataCommand::AllocateProducerId { id } => {
                if *id != self.next_producer_id {
                    return Err(MetadataError::ProducerIdTaken {
                        requested: *id,
                        next: self.next_producer_id,
                    });
                }
                Ok(())
            }
        }
    }

    pub fn topic(&self, name: &str) -> Result<&TopicMeta, MetadataError> {
        self.topics
            .get(name)
            .ok_or_else(|| MetadataError::UnknownTopic(name.to_string()))
    }

    /// Applies a committed command. An invalid one (a race the proposer lost) changes
    /// nothing and is reported.
    pub fn apply(&mut self, cmd: &MetadataCommand) -> Result<(), MetadataError> {
        self.validate(cmd)?;
        match cmd {
            MetadataCommand::CreateTopic {
                name,
                partitions,
                replication_factor,
                configs,
            } => {
                let mut topic = TopicMeta {
                    name: name.clone(),
                    replication_factor: *replication_factor,
                    configs: configs.clone(),
                    partitions: Vec::new(),
                };
                self.place(&mut topic, *partitions);
                self.topics.insert(name.clone(), topic);
            }
            MetadataCommand::DeleteTopic { name } => {
                self.topics.remove(name);
            }
            MetadataCommand::AddPartitions { name, partitions } => {
                if let Some(mut topic) = self.topics.remove(name) {
                    self.place(&mut topic, *partitions);
                    self.topics.insert(name.clone(), topic);
                }
            }
            MetadataCommand::AllocateProducerId { id } => {
                self.next_producer_id = id + 1;
            }
        }
        Ok(())
    }

    /// Adds partitions up to `total`, spreading replicas and preferred leaders over
    /// brokers round-robin; the starting broker rotates with the group id so topics
    /// do not all lead on the same broker.
    fn place(&mut self, topic: &mut TopicMeta, total: u32) {
        let ids: Vec<u64> = self.brokers.keys().copied().collect();
        let n = ids.len().max(1);
        let rf = (topic.replication_factor as usize).min(ids.len());
        while (topic.partitions.len() as u32) < total {
            let group_id = self.next_group_id;
            self.next_group_id += 1;
            let start = (group_id as usize) % n;
            let replicas = (0..rf).map(|k| ids[(start + k) % n]).collect();
            topic.partitions.push(PartitionMeta { group_id, replicas });
        }
    }

    /// Partitions with a replica on `broker`: (topic, partition index, meta).
    pub fn partitions_on(&self, broker: u64) -> impl Iterator<Item = (&str, u32, &PartitionMeta)> {
        self.topics.values().flat_map(move |t| {
            t.partitions
                .iter()
                .enumerate()
                .filter(move |(_, p)| p.replicas.contains(&broker))
                .map(move |(i, p)| (t.name.as_str(), i as u32, p))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn three_brokers() -> MetadataState {
        MetadataState::new((1..=3).map(|id| BrokerInfo {
            id,
            addr: format!("127.0.0.1:{}", 9700 + id),
        }))
    }

    fn create(name: &str, partitions: u32, rf: u32) -> MetadataCommand {
        MetadataCommand::CreateTopic {
            name: name.into(),
            partitions,
            replication_factor: rf,
            configs: BTreeMap::new(),
        }
    }

    #[test]
    fn commands_round_trip_through_their_record_encoding() {
        let cmd = create("orders", 3, 1);
        assert_eq!(MetadataCommand::decode(&cmd.encode()), Ok(cmd));
        assert!(MetadataCommand::decode(b"\x09{}").is_err());
        assert!(MetadataCommand::decode(b"").is_err());
    }

    #[test]
    fn placement_spreads_replicas_and_leaders_evenly() {
        let mut s = three_brokers();
        s.apply(&create("t", 6, 3)).expect("create");
        let t = s.topic("t").expect("topic");
        let mut leaders = BTreeMap::new();
        for p in &t.partitions {
            let mut r = p.replicas.clone();
            r.sort_unstable();
            r.dedup();
            assert_eq!(r.len(), 3, "distinct replicas");
            *leaders.entry(p.replicas[0]).or_insert(0) += 1;
        }
        assert_eq!(leaders.values().copied().collect::<Vec<_>>(), vec![2, 2, 2]);
        let groups: Vec<u64> = t.partitions.iter().map(|p| p.group_id).collect();
        assert_eq!(groups, (1..=6).collect::<Vec<_>>());
    }

    #[test]
    fn invalid_commands_change_nothing() {
        let mut s = three_brokers();
        s.apply(&create("t", 2, 1)).expect("create");
        let before = s.clone();
        for cmd in [
            create("t", 1, 1),
            create("bad name", 1, 1),
            create("..", 1, 1),
            create("x", 0, 1),
            create("x", 1, 4),
            MetadataCommand::DeleteTopic {
                name: "nope".into(),
            },
            MetadataCommand::AddPartitions {
                name: "t".into(),
                partitions: 2,
            },
        ] {
            assert!(s.apply(&cmd).is_err(), "{cmd:?}");
            assert_eq!(s, before, "{cmd:?}");
        }
        let long = "a".repeat(MAX_TOPIC_NAME_LEN + 1);
        assert!(validate_topic_name(&long).is_err());
        assert!(validate_topic_name(&"a".repeat(MAX_TOPIC_NAME_LEN)).is_ok());
    }

    #[test]
    fn added_partitions_get_fresh_groups() {
        let mut s = three_brokers();
        s.apply(&create("t", 2, 1)).expect("create");
        s.apply(&create("u", 1, 1)).expect("create");
        s.apply(&MetadataCommand::AddPartitions {
            name: "t".into(),
            partitions: 4,
        })
        .expect("grow");
        let groups: Vec<u64> = s
            .topic("t")
            .expect("t")
            .partitions
            .iter()
            .map(|p| p.group_id)
            .collect();
        assert_eq!(groups, vec![1, 2, 4, 5]);
        s.apply(&MetadataCommand::DeleteTopic { name: "t".into() })
            .expect("delete");
        assert!(s.topic("t").is_err());
    }

    #[test]
    fn producer_ids_are_handed_out_once_each() {
        let mut s = three_brokers();
        for id in 0..3 {
            assert_eq!(s.next_producer_id(), id);
            s.apply(&MetadataCommand::AllocateProducerId { id })
                .expect("allocate");
        }
        let before = s.clone();
        assert_eq!(
            s.apply(&MetadataCommand::AllocateProducerId { id: 1 }),
            Err(MetadataError::ProducerIdTaken {
                requested: 1,
                next: 3
            })
        );
        assert_eq!(s, before);
    }
}
