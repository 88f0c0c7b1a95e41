//! Every way a record batch can be wrong, as one typed error.
//!
//! This module owns [`BatchError`] and the conversion from the header parser's
//! [`HeaderError`]. It never inspects bytes itself: the parsers decide what is wrong,
//! and this module only says it in words a producer or operator can act on.

use thiserror::Error;

use super::compression::Compression;
use super::header::{HEADER_LEN, HeaderError};

/// Why a batch could not be built, decoded or verified.
///
/// Every message names the field that is wrong, what was found and what to do about
/// it. The broker returns these to producers as they are, so they must stay readable
/// without the source at hand.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum BatchError {
    /// The input ends before the fixed header or before the end `batchLength` announces.
    #[error(
        "batch truncated: {what} needs {needed} byte(s) but only {available} are present; \
         the batch was cut short in transit or storage, send the complete batch"
    )]
    Truncated {
        what: &'static str,
        needed: usize,
        available: usize,
    },

    /// The magic byte is not 2 (RecordBatch v2).
    #[error(
        "unsupported batch magic {magic}: only Kafka RecordBatch v2 (magic 2) is accepted; \
         upgrade the producer or encode with sluice_proto::batch::BatchBuilder"
    )]
    BadMagic { magic: u8 },

    /// `batchLength` is too small to even cover the fixed header.
    #[error(
        "batchLength {declared} is smaller than the {min} bytes the fixed header needs; \
         the batch header is corrupt, rebuild the batch",
        min = HEADER_LEN - super::header::LOG_OVERHEAD
    )]
    InvalidBatchLength { declared: i64 },

    /// The buffer holds bytes after the end of the batch or after its last record.
    #[error(
        "{extra} trailing byte(s) after the {what}; send exactly one batch per buffer \
         and make sure the record count matches the records written"
    )]
    TrailingBytes { what: &'static str, extra: usize },

    /// The stored CRC-32C does not match the bytes.
    #[error(
        "batch CRC-32C mismatch: the header says {expected:#010x} but the bytes from \
         `attributes` to the end give {actual:#010x}; the batch was corrupted after it \
         was built, send it again (and check the producer's memory and network path)"
    )]
    CrcMismatch { expected: u32, actual: u32 },

    /// `lastOffsetDelta` is negative.
    #[error(
        "lastOffsetDelta {last_offset_delta} is negative; it must be the number of \
         records minus one"
    )]
    NegativeOffsetDelta { last_offset_delta: i32 },

    /// The record count in the header is negative.
    #[error("record count {count} is negative; the batch header is corrupt, rebuild the batch")]
    NegativeRecordCount { count: i32 },

    /// The header announces more records than the records section holds.
    #[error(
        "the header announces {declared} record(s) but the records section holds only \
         {actual}; the batch is truncated or its record count is wrong, rebuild it"
    )]
    RecordCountMismatch { declared: i32, actual: i32 },

    /// `lastOffsetDelta` disagrees with the number of records (produce-time check).
    #[error(
        "lastOffsetDelta {last_offset_delta} does not match {record_count} record(s): a \
         produced batch must have lastOffsetDelta = record count - 1"
    )]
    LastOffsetDeltaMismatch {
        last_offset_delta: i32,
        record_count: i32,
    },

    /// A record's offset delta is out of order or outside the batch.
    #[error(
        "record {index} has offsetDelta {offset_delta}, expected {expected}; offset deltas \
         must count up from 0 within the batch (lastOffsetDelta {last_offset_delta})"
    )]
    BadOffsetDelta {
        index: i32,
        offset_delta: i32,
        expected: &'static str,
        last_offset_delta: i32,
    },

    /// `baseOffset + offsetDelta` does not fit in an i64.
    #[error(
        "record {index}: baseOffset {base_offset} + offsetDelta {offset_delta} overflows \
         an i64 offset; the base offset is corrupt"
    )]
    OffsetOverflow {
        index: i32,
        base_offset: i64,
        offset_delta: i32,
    },

    /// A produced batch holds no records.
    #[error("the batch holds no records; a producer must send at least one record per batch")]
    EmptyBatch,

    /// `maxTimestamp` is not the largest record timestamp (produce-time check, create time).
    #[error(
        "maxTimestamp {declared} does not match the largest record timestamp {actual}; \
         the batch header is inconsistent, rebuild the batch"
    )]
    MaxTimestampMismatch { declared: i64, actual: i64 },

    /// A record ends before one of its fields (or the records section ends inside a
    /// record's length varint).
    #[error(
        "record {record}: {what} needs {needed} byte(s) but only {available} remain; the \
         record's framing is corrupt or cut short, rebuild the batch"
    )]
    RecordTruncated {
        record: i32,
        what: &'static str,
        needed: usize,
        available: usize,
    },

    /// A length field points past the end of what contains it.
    #[error(
        "record {record}: {what} length {len} points past the end of the record \
         ({remaining} byte(s) left); the record framing is corrupt, rebuild the batch"
    )]
    LengthPastEnd {
        record: i32,
        what: &'static str,
        len: i64,
        remaining: usize,
    },

    /// A record's fields end before its length says the record ends.
    #[error(
        "record {record}: its length says {declared} bytes but its fields use {used}; \
         the record framing is corrupt, rebuild the batch"
    )]
    RecordLengthMismatch {
        record: i32,
        declared: usize,
        used: usize,
    },

    /// A length is negative and not -1 (or -1 where null is not allowed).
    #[error(
        "record {record}: {what} length {len} is invalid; lengths are >= 0, or -1 for \
         null where null is allowed"
    )]
    NegativeLength {
        record: i32,
        what: &'static str,
        len: i64,
    },

    /// A varint keeps its continuation bit set past the longest encoding of its type.
    #[error(
        "record {record}: the {what} varint is longer than {max_bytes} bytes; the record \
         framing is corrupt, rebuild the batch"
    )]
    VarintTooLong {
        record: i32,
        what: &'static str,
        max_bytes: usize,
    },

    /// A varint's last byte carries bits beyond the width of its type.
    #[error(
        "record {record}: the {what} varint overflows {bits} bits; the record framing is \
         corrupt, rebuild the batch"
    )]
    VarintOverflow {
        record: i32,
        what: &'static str,
        bits: u32,
    },

    /// A header key is not valid UTF-8.
    #[error(
        "record {record}: header {header} key is not valid UTF-8 (header keys are strings); \
         fix the producer's header keys"
    )]
    InvalidHeaderKey { record: i32, header: i32 },

    /// The attributes name a compression codec Sluice does not implement.
    #[error(
        "batch compression {name} (attributes code {code}) is not supported; Sluice accepts \
         none, lz4 and zstd, configure the producer with one of those"
    )]
    UnsupportedCompression { code: u8, name: &'static str },

    /// The compressed records section is not valid for its codec.
    #[error(
        "{codec} decompression of the records section failed: {reason}; the compressed \
         data is corrupt or was written by an incompatible encoder, rebuild the batch"
    )]
    DecompressionFailed { codec: Compression, reason: String },

    /// The records section decompresses to more than the allowed size.
    #[error(
        "{codec} records section decompresses to more than {limit} bytes; send smaller \
         batches, or raise the decompression limit if this size is intended"
    )]
    DecompressedTooLarge { codec: Compression, limit: usize },

    /// The builder was asked to hold more than a batch can.
    #[error(
        "{what} of {len} bytes exceeds the maximum of {max} bytes; split the data over more batches"
    )]
    TooLarge {
        what: &'static str,
        len: usize,
        max: usize,
    },
}

impl From<HeaderError> for BatchError {
    fn from(err: HeaderError) -> Self {
        match err {
            HeaderError::Truncated { len } => BatchError::Truncated {
                what: "the fixed batch header",
                needed: HEADER_LEN,
                available: len,
            },
            HeaderError::BadMagic { magic } => BatchError::BadMagic { magic },
            HeaderError::LengthMismatch { declared, .. } => {
                BatchError::InvalidBatchLength { declared }
            }
            HeaderError::NegativeOffsetDelta { last_offset_delta } => {
                BatchError::NegativeOffsetDelta { last_offset_delta }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_errors_map_to_specific_batch_errors() {
        assert_eq!(
            BatchError::from(HeaderError::Truncated { len: 10 }),
            BatchError::Truncated {
                what: "the fixed batch header",
                needed: 61,
                available: 10
            }
        );
        assert_eq!(
            BatchError::from(HeaderError::BadMagic { magic: 1 }),
            BatchError::BadMagic { magic: 1 }
        );
        assert_eq!(
            BatchError::from(HeaderError::LengthMismatch {
                declared: 3,
                actual: 49
            }),
            BatchError::InvalidBatchLength { declared: 3 }
        );
    }

    #[test]
    fn messages_say_what_is_wrong_and_what_to_do() {
        let msg = BatchError::CrcMismatch {
            expected: 0xdead_beef,
            actual: 1,
        }
        .to_string();
        assert!(msg.contains("0xdeadbeef"), "{msg}");
        assert!(msg.contains("0x00000001"), "{msg}");
        assert!(msg.contains("send it again"), "{msg}");

        let msg = BatchError::UnsupportedCompression {
            code: 1,
            name: "gzip",
        }
        .to_string();
        assert!(msg.contains("gzip") && msg.contains("lz4"), "{msg}");
    }
}
