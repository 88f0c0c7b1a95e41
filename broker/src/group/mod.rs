//! Consumer groups: membership, server-side assignment and committed offsets.
//!
//! A group's state lives in one partition of the internal topic `__consumer_offsets`
//! (chosen by hashing the group id); the leader of that partition is the group's
//! coordinator. Everything a coordinator decides is written to that partition through
//! the normal replicated write path (acks=all) before it is answered, and a broker that
//! becomes leader rebuilds the state by replaying the partition.
//!
//! - [`assignor`]: the sticky, balanced assignment (pure).
//! - [`membership`]: one group's members, epochs, sessions and the incremental hand-over
//!   of partitions (pure; time is passed in).
//! - [`records`]: how offsets and group state are encoded as records.
//! - [`offsets`]: the materialized state of a partition: committed offsets and groups.
//! - [`shard`]: one `__consumer_offsets` partition led here: replay, state, compaction.
//! - [`writer`]: group commit of a shard's records to its partition.
//! - [`coordinator`]: [`GroupCoordinator`], the shards of this broker, the internal
//!   topic's creation, session expiry and compaction on a timer.
//!
//! Nothing here knows gRPC: `server::group_service` converts at the edge. Errors are
//! [`GroupError`].

pub mod assignor;
pub mod coordinator;
pub mod membership;
pub mod offsets;
pub mod records;
pub mod shard;
pub mod writer;

use std::time::Duration;

use thiserror::Error;

use crate::metadata::ControllerError;
use crate::raft::ReplicaError;

pub use coordinator::GroupCoordinator;

/// The internal topic holding every group's offsets and state.
pub const OFFSETS_TOPIC: &str = "__consumer_offsets";

/// Longest group id accepted, like a topic name.
pub const MAX_GROUP_ID_LEN: usize = 249;

/// Longest metadata string stored with a committed offset (Kafka's default).
pub const MAX_OFFSET_METADATA_BYTES: usize = 4096;

pub use sluice_proto::TopicPartition;

/// Coordinator settings (broker flags). Members may ask for their own session and
/// rebalance timeouts within the bounds here.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupConfig {
    /// A member that sends no heartbeat for this long is removed (Kafka: 45 s; 10 s
    /// here, so a crashed consumer's partitions move on in seconds).
    pub session_timeout: Duration,
    pub min_session_timeout: Duration,
    pub max_session_timeout: Duration,
    /// How often members heartbeat (Kafka: 5 s; 1 s here, which bounds how long a
    /// partition hand-over waits for the next owner to hear of it).
    pub heartbeat_interval: Duration,
    /// How long a member may take to release revoked partitions before it is removed.
    pub rebalance_timeout: Duration,
    /// Partitions of `__consumer_offsets` when it is created.
    pub offsets_partitions: u32,
}

impl Default for GroupConfig {
    fn default() -> Self {
        Self {
            session_timeout: Duration::from_secs(10),
            min_session_timeout: Duration::from_secs(1),
            max_session_timeout: Duration::from_secs(300),
            heartbeat_interval: Duration::from_secs(1),
            rebalance_timeout: Duration::from_secs(60),
            offsets_partitions: 6,
        }
    }
}

impl GroupConfig {
    /// The heartbeat interval for a member with `session` timeout: at least three
    /// heartbeats fit in a session.
    pub fn heartbeat_for(&self, session: Duration) -> Duration {
        self.heartbeat_interval.min(session / 3)
    }
}

/// Why a group request failed; each maps to one client error code.
#[derive(Debug, Error)]
pub enum GroupError {
    #[error("this broker is not the coordinator of the group{}", leader_hint(.leader))]
    NotCoordinator { leader: Option<(u64, String)> },
    #[error("the group coordinator is not available: {0}")]
    CoordinatorNotAvailable(String),
    #[error("unknown member '{member}' of group '{group}': it left or was removed; rejoin")]
    UnknownMember { group: String, member: String },
    #[error("fenced: {0}")]
    Fenced(String),
    #[error("group '{group}' has {members} active member(s)")]
    GroupNotEmpty { group: String, members: usize },
    #[error("unknown group '{0}'")]
    UnknownGroup(String),
    #[error(
        "invalid group id '{0}': use 1 to {MAX_GROUP_ID_LEN} characters, no control characters"
    )]
    InvalidGroupId(String),
    #[error("unknown topic '{0}'")]
    UnknownTopic(String),
    #[error("topic '{topic}' has {count} partitions; partition {partition} does not exist")]
    UnknownPartition {
        topic: String,
        partition: u32,
        count: u32,
    },
    #[error("invalid request: {0}")]
    InvalidRequest(String),
    #[error(transparent)]
    Replica(ReplicaError),
    #[error("cannot create {OFFSETS_TOPIC}: {0}")]
    Controller(ControllerError),
}

fn leader_hint(leader: &Option<(u64, String)>) -> String {
    match leader {
        Some((id, addr)) => format!("; the coordinator is broker {id} at {addr}"),
        None => "; find the coordinator again".into(),
    }
}

impl From<ReplicaError> for GroupError {
    fn from(e: ReplicaError) -> Self {
        match e {
            ReplicaError::NotLeader { leader } => Self::NotCoordinator { leader },
            ReplicaError::Shutdown => Self::CoordinatorNotAvailable(e.to_string()),
            other => Self::Replica(other),
        }
    }
}

/// Checks a group id: 1 to [`MAX_GROUP_ID_LEN`] bytes, no control characters.
pub fn validate_group_id(group: &str) -> Result<(), GroupError> {
    if group.is_empty() || group.len() > MAX_GROUP_ID_LEN || group.chars().any(char::is_control) {
        return Err(GroupError::InvalidGroupId(group.to_string()));
    }
    Ok(())
}

/// The `__consumer_offsets` partition of `group` when the topic has `partitions`.
/// CRC-32 of the id: stable across versions and platforms, unlike `std`'s hasher.
pub fn partition_for(group: &str, partitions: u32) -> u32 {
    crc32fast::hash(group.as_bytes()) % partitions.max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn groups_map_to_stable_partitions() {
        assert_eq!(partition_for("orders", 8), partition_for("orders", 8));
        let spread: std::collections::BTreeSet<u32> = (0..64)
            .map(|i| partition_for(&format!("g{i}"), 8))
            .collect();
        assert_eq!(spread.len(), 8, "64 groups land on every partition");
        assert_eq!(partition_for("x", 0), 0);
    }

    #[test]
    fn group_ids_are_checked() {
        assert!(validate_group_id("payments-7").is_ok());
        for bad in ["", "a\nb", &"g".repeat(MAX_GROUP_ID_LEN + 1)] {
            assert!(matches!(
                validate_group_id(bad),
                Err(GroupError::InvalidGroupId(_))
            ));
        }
    }

    #[test]
    fn heartbeats_fit_three_times_in_a_session() {
        let c = GroupConfig::default();
        assert_eq!(
            c.heartbeat_for(Duration::from_secs(10)),
            c.heartbeat_interval
        );
        assert_eq!(
            c.heartbeat_for(Duration::from_millis(1500)),
            Duration::from_millis(500)
        );
    }
}
