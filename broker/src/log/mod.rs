//! A partition's segmented, memory-mapped log: the data and the Raft log in one.
//!
//! - [`frame`]: how one entry is laid out on disk (length, CRC, term, index, kind).
//! - [`segment`]: one `.log` file with its `.index` and `.timeindex`; appends, recovery.
//! - [`index`]: the sparse offset/Raft-index and timestamp indexes.
//! - [`store`]: [`Log`], the ordered segments; rolls, truncation, purge, retention.
//! - [`reader`]: walking mapped frames for reads, without the log's lock.
//! - [`mapped`]: the segment mappings, and releasing the pages a read touched once
//!   it is served, so resident memory does not grow with the backlog.
//! - [`cache`]: the broker-wide budget of appended bytes left in the page cache.
//! - [`commit`]: group commit, so one `fdatasync` covers every waiting append.
//! - [`retention`]: which old segments go.
//!
//! Nothing here knows about gRPC or openraft types; the Raft glue adapts this API.

pub mod cache;
pub mod commit;
pub mod config;
pub mod error;
pub mod frame;
pub mod index;
pub mod mapped;
pub mod reader;
pub mod retention;
pub mod segment;
pub mod store;

pub use commit::Ticket;
pub use config::{LogConfig, RetentionPolicy};
pub use error::LogError;
pub use frame::{EntryId, EntryKind, Frame};
pub use reader::ReadBatches;
pub use segment::NewEntry;
pub use store::{Appended, Log, now_ms};

#[cfg(test)]
mod tests;
