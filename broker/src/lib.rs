//! The Sluice broker.
//!
//! - [`log`]: a partition's segmented, memory-mapped log (the Raft log and the data).

pub mod log;
