//! The record batch: Kafka's RecordBatch v2 byte layout.
//!
//! A batch is built by the producer, verified by the broker (CRC-32C, structure) and
//! stored and served as-is. The broker only ever rewrites the base offset and the
//! partition leader epoch, which lie outside the checksummed range.
//!
//! One module per concern:
//! - [`header`]: the fixed 61-byte header, its byte positions, CRC and stamping.
//! - [`varint`]: Kafka's zigzag varints.
//! - [`record`]: one record's framing, and the [`Record`] / [`Header`] types.
//! - [`builder`]: [`BatchBuilder`], the encoder.
//! - [`decoder`]: [`Batch::decode`], [`Batch::verify`] and the [`Records`] iterator.
//! - [`compression`]: the [`Compression`] codecs (none, lz4 frame, zstd).
//! - [`error`]: [`BatchError`], every way a batch can be wrong.

pub mod builder;
pub mod compression;
pub mod decoder;
pub mod error;
pub mod header;
pub mod record;
pub mod varint;

#[cfg(test)]
mod tests;

pub use builder::{BatchBuilder, MAX_BATCH_BYTES};
pub use compression::{Compression, DEFAULT_MAX_DECOMPRESSED, ParseCompressionError};
pub use decoder::{Batch, Records};
pub use error::BatchError;
pub use header::{BatchHeader, HeaderError};
pub use record::{Header, Record};
