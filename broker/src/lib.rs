//! The Sluice broker.
//!
//! Data flows one way: [`server`] → [`partition`] → [`raft`] → [`log`].
//!
//! - [`log`]: a partition's segmented, memory-mapped log (the Raft log and the data).
//! - [`raft`]: openraft glue: log store over [`log`], thin state machine, transport.
//! - [`metadata`]: the controller group and the cluster metadata it commits.
//! - [`partition`]: the replicas this broker hosts, kept in step with the metadata.
//! - [`group`]: consumer groups: membership, assignment, committed offsets.
//! - [`server`]: the gRPC services; the only module that knows gRPC types.
//! - [`node`]: a running broker, wiring the above together.
//! - [`config`] and [`cli`]: settings and the `sluice-broker` program.

pub mod cli;
pub mod config;
pub mod group;
pub mod log;
pub mod metadata;
pub mod node;
pub mod partition;
pub mod raft;
pub mod server;
