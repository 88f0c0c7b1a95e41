//! The broker's gRPC endpoint: the client API and the Raft transport on one port.
//!
//! - [`client_api`]: `sluice.v1.Sluice` (topics, metadata, offsets).
//! - [`produce`] and [`fetch`]: the two streaming calls.
//! - [`errors`]: typed broker errors → API error codes.
//! - [`peers`]: leaders of partitions not hosted here, asked of brokers hosting them.
//! - [`group_service`]: `sluice.v1.GroupCoordinator` (consumer groups and offsets).
//!
//! Only this module knows gRPC types; it converts at the edge and calls into the node.

pub mod client_api;
pub mod errors;
pub mod fetch;
pub mod group_service;
pub mod peers;
pub mod produce;

/// Largest gRPC message accepted or sent: a batch of `max.message.bytes` or a fetch
/// response of the largest allowed size, with room for framing.
pub const MAX_MESSAGE_BYTES: usize = 80 << 20;
