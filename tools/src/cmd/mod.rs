//! One module per command group: `topic`, `produce`, `consume`, `group`, `cluster`,
//! `perf`.
//! Each has its clap arguments and an async `run` that talks to the cluster through
//! `sluice-client` and renders with [`crate::output`].

pub mod cluster;
pub mod consume;
pub mod group;
pub mod perf;
pub mod produce;
pub mod topic;
