//! The fixed 61-byte batch header: field positions, attribute bits, parsing, the
//! CRC-32C over the checksummed range, and in-place stamping.
//!
//! This module knows byte positions only; it never looks at records. The log uses it
//! to stamp offsets and to index batches without decoding them.

use thiserror::Error;

/// Byte position of `baseOffset` (i64).
pub const BASE_OFFSET: usize = 0;
/// Byte position of `batchLength` (i32): bytes that follow this field.
pub const BATCH_LENGTH: usize = 8;
/// Byte position of `partitionLeaderEpoch` (i32); Sluice stores the Raft term here.
pub const LEADER_EPOCH: usize = 12;
/// Byte position of `magic` (i8), always [`MAGIC`].
pub const MAGIC_POS: usize = 16;
/// Byte position of `crc` (u32): CRC-32C from [`ATTRIBUTES`] to the end of the batch.
pub const CRC: usize = 17;
/// Byte position of `attributes` (i16); the checksummed range starts here.
pub const ATTRIBUTES: usize = 21;
/// Byte position of `lastOffsetDelta` (i32).
pub const LAST_OFFSET_DELTA: usize = 23;
/// Byte position of `baseTimestamp` (i64).
pub const BASE_TIMESTAMP: usize = 27;
/// Byte position of `maxTimestamp` (i64).
pub const MAX_TIMESTAMP: usize = 35;
/// Byte position of `producerId` (i64).
pub const PRODUCER_ID: usize = 43;
/// Byte position of `producerEpoch` (i16).
pub const PRODUCER_EPOCH: usize = 51;
/// Byte position of `baseSequence` (i32).
pub const BASE_SEQUENCE: usize = 53;
/// Byte position of the record count (i32).
pub const RECORD_COUNT: usize = 57;
/// Length of the fixed header; records start here.
pub const HEADER_LEN: usize = 61;
/// Bytes before and including `batchLength`, not counted by it.
pub const LOG_OVERHEAD: usize = 12;
/// RecordBatch v2.
pub const MAGIC: u8 = 2;

/// `attributes` bits 0-2: the compression codec (see `Compression`).
pub const COMPRESSION_MASK: i16 = 0x07;
/// `attributes` bit 3: timestamps are log-append time (set by the broker), not create time.
pub const LOG_APPEND_TIME_FLAG: i16 = 0x08;
/// `attributes` bit 4: the batch is part of a transaction.
pub const TRANSACTIONAL_FLAG: i16 = 0x10;
/// `attributes` bit 5: the batch is a control batch (transaction markers).
pub const CONTROL_FLAG: i16 = 0x20;
/// `producerId`, `producerEpoch`, `baseSequence` value meaning "no idempotent producer".
pub const NO_PRODUCER_ID: i64 = -1;
/// Timestamp value meaning "no timestamp" (base/max timestamp of an empty batch).
pub const NO_TIMESTAMP: i64 = -1;

/// CRC-32C of a batch's checksummed range: from [`ATTRIBUTES`] to the end of `batch`.
/// Returns the CRC of the empty range if `batch` is shorter than the header start of
/// that range; callers check lengths first.
pub fn checksum(batch: &[u8]) -> u32 {
    crc32c::crc32c(batch.get(ATTRIBUTES..).unwrap_or(&[]))
}

/// Why a batch header cannot be read.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum HeaderError {
    #[error("batch truncated: {len} bytes, the fixed header needs {HEADER_LEN}")]
    Truncated { len: usize },
    #[error("unsupported batch magic {magic}: only RecordBatch v2 (magic 2) is accepted")]
    BadMagic { magic: u8 },
    #[error("batchLength {declared} does not match the {actual} bytes that follow it")]
    LengthMismatch { declared: i64, actual: usize },
    #[error("lastOffsetDelta {last_offset_delta} is negative")]
    NegativeOffsetDelta { last_offset_delta: i32 },
}

/// The fixed fields of a batch, read without touching its records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchHeader {
    pub base_offset: i64,
    pub batch_length: i32,
    pub partition_leader_epoch: i32,
    pub magic: u8,
    pub crc: u32,
    pub attributes: i16,
    pub last_offset_delta: i32,
    pub base_timestamp: i64,
    pub max_timestamp: i64,
    pub producer_id: i64,
    pub producer_epoch: i16,
    pub base_sequence: i32,
    pub record_count: i32,
}

impl BatchHeader {
    /// Parses the header of a buffer holding exactly one batch and checks that
    /// `batchLength` covers the buffer. The CRC is not checked here.
    pub fn parse(buf: &[u8]) -> Result<Self, HeaderError> {
        let header = Self::parse_prefix(buf)?;
        let actual = buf.len() - LOG_OVERHEAD;
        if i64::from(header.batch_length) != actual as i64 {
            return Err(HeaderError::LengthMismatch {
                declared: header.batch_length.into(),
                actual,
            });
        }
        Ok(header)
    }

    /// Parses the header at the start of `buf`, which may hold more bytes after the batch.
    pub fn parse_prefix(buf: &[u8]) -> Result<Self, HeaderError> {
        if buf.len() < HEADER_LEN {
            return Err(HeaderError::Truncated { len: buf.len() });
        }
        let magic = buf[MAGIC_POS];
        if magic != MAGIC {
            return Err(HeaderError::BadMagic { magic });
        }
        let header = Self {
            base_offset: i64_at(buf, BASE_OFFSET),
            batch_length: i32_at(buf, BATCH_LENGTH),
            partition_leader_epoch: i32_at(buf, LEADER_EPOCH),
            magic,
            crc: u32::from_be_bytes(array_at(buf, CRC)),
            attributes: i16::from_be_bytes(array_at(buf, ATTRIBUTES)),
            last_offset_delta: i32_at(buf, LAST_OFFSET_DELTA),
            base_timestamp: i64_at(buf, BASE_TIMESTAMP),
            max_timestamp: i64_at(buf, MAX_TIMESTAMP),
            producer_id: i64_at(buf, PRODUCER_ID),
            producer_epoch: i16::from_be_bytes(array_at(buf, PRODUCER_EPOCH)),
            base_sequence: i32_at(buf, BASE_SEQUENCE),
            record_count: i32_at(buf, RECORD_COUNT),
        };
        if header.last_offset_delta < 0 {
            return Err(HeaderError::NegativeOffsetDelta {
                last_offset_delta: header.last_offset_delta,
            });
        }
        if (header.batch_length as i64) < (HEADER_LEN - LOG_OVERHEAD) as i64 {
            return Err(HeaderError::LengthMismatch {
                declared: header.batch_length.into(),
                actual: buf.len() - LOG_OVERHEAD,
            });
        }
        Ok(header)
    }

    /// Number of offsets the batch occupies: `lastOffsetDelta + 1`.
    pub fn offset_count(&self) -> u64 {
        self.last_offset_delta as u64 + 1
    }

    /// Total bytes of the batch, header included.
    pub fn total_len(&self) -> usize {
        self.batch_length as usize + LOG_OVERHEAD
    }
}

/// Writes `baseOffset` into a batch. It lies outside the CRC, so the CRC stays valid.
///
/// # Panics
/// If `buf` is shorter than the header; callers parse the header first.
pub fn stamp_base_offset(buf: &mut [u8], base_offset: i64) {
    buf[BASE_OFFSET..BASE_OFFSET + 8].copy_from_slice(&base_offset.to_be_bytes());
}

/// Writes `partitionLeaderEpoch` into a batch, outside the CRC like the base offset.
///
/// # Panics
/// If `buf` is shorter than the header; callers parse the header first.
pub fn stamp_leader_epoch(buf: &mut [u8], epoch: i32) {
    buf[LEADER_EPOCH..LEADER_EPOCH + 4].copy_from_slice(&epoch.to_be_bytes());
}

/// Writes an idempotent producer's id, epoch and base sequence into a batch and
/// recomputes the CRC, which covers them (a producer re-stamps a batch it must resend
/// under a new epoch).
///
/// # Panics
/// If `buf` is shorter than the header; callers parse the header first.
pub fn stamp_producer(buf: &mut [u8], producer_id: i64, epoch: i16, base_sequence: i32) {
    buf[PRODUCER_ID..PRODUCER_ID + 8].copy_from_slice(&producer_id.to_be_bytes());
    buf[PRODUCER_EPOCH..PRODUCER_EPOCH + 2].copy_from_slice(&epoch.to_be_bytes());
    buf[BASE_SEQUENCE..BASE_SEQUENCE + 4].copy_from_slice(&base_sequence.to_be_bytes());
    let crc = checksum(buf);
    buf[CRC..CRC + 4].copy_from_slice(&crc.to_be_bytes());
}

fn array_at<const N: usize>(buf: &[u8], at: usize) -> [u8; N] {
    let mut out = [0u8; N];
    out.copy_from_slice(&buf[at..at + N]);
    out
}

fn i64_at(buf: &[u8], at: usize) -> i64 {
    i64::from_be_bytes(array_at(buf, at))
}

fn i32_at(buf: &[u8], at: usize) -> i32 {
    i32::from_be_bytes(array_at(buf, at))
}
