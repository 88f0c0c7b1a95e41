//! Cluster metadata: brokers, topics, partition placement and topic configs.
//!
//! - [`state`]: [`MetadataState`], what the controller group has committed, and the
//!   commands that change it. Applying a command is deterministic, so every broker
//!   that replays the controller log arrives at the same state.
//! - [`topic_config`]: the per-topic configs a user may set, validated.
//! - [`controller`]: [`Controller`], the controller Raft group (group 0): proposes
//!   commands, applies committed ones, publishes the state to the rest of the broker.
//!
//! Metadata never touches partition data; partitions react to the state it publishes.

pub mod controller;
pub mod state;
pub mod topic_config;

pub use controller::{Controller, ControllerError};
pub use state::{BrokerInfo, MetadataCommand, MetadataState, PartitionMeta, TopicMeta};
pub use topic_config::TopicConfig;
