//! The record batch: Kafka's RecordBatch v2 byte layout.
//!
//! A batch is built by the producer, verified by the broker (CRC-32C, structure) and
//! stored and served as-is. The broker only ever rewrites the base offset and the
//! partition leader epoch, which lie outside the checksummed range.

pub mod header;

pub use header::{BatchHeader, HeaderError};
