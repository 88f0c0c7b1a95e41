//! Reading batches: [`Batch::decode`] for consumers (zero-copy records),
//! [`Batch::verify`] for the broker's produce path, and the [`Records`] iterator.
//!
//! This module owns the batch-level rules: that `batchLength` covers exactly the
//! buffer, that the CRC-32C matches, which codec the attributes name, how many records
//! there are, and how their offset deltas run. Record framing itself is parsed by
//! `record.rs`, the same code for both paths, so anything `verify` accepts decodes.
//!
//! It never panics on any input, never trusts a count or a length before checking it
//! against the bytes that are really present (nothing is pre-allocated from a count),
//! and never decompresses beyond a limit (64 MiB by default).
//!
//! Strictness differs on purpose between the two entry points:
//! - `decode` accepts every batch a log may legitimately hold, including empty batches
//!   and batches with offset gaps (as compaction leaves them): offset deltas must only
//!   increase and stay within `lastOffsetDelta`.
//! - `verify` checks what a producer must send: at least one record, dense offset
//!   deltas `0..count`, `lastOffsetDelta == count - 1`, and (for create-time batches)
//!   `maxTimestamp` equal to the largest record timestamp, since the broker indexes by it.

use std::iter::FusedIterator;

use bytes::Bytes;

use super::compression::{Compression, DEFAULT_MAX_DECOMPRESSED, decompress};
use super::error::BatchError;
use super::header::{
    self, BATCH_LENGTH, BatchHeader, CRC, HEADER_LEN, LOG_APPEND_TIME_FLAG, LOG_OVERHEAD, MAGIC,
    MAGIC_POS,
};
use super::record::{Header, RawRecord, Record, parse_record};

/// A decoded batch: its header and its records section, ready to iterate.
#[derive(Debug, Clone)]
pub struct Batch {
    header: BatchHeader,
    compression: Compression,
    raw: Bytes,
    records: Bytes,
}

/// Checks everything that can be checked without looking at records: length, magic,
/// `batchLength`, CRC-32C, record count sign and codec. Returns the header and codec.
fn check_frame(buf: &[u8]) -> Result<(BatchHeader, Compression), BatchError> {
    if buf.len() < HEADER_LEN {
        return Err(BatchError::Truncated {
            what: "the fixed batch header",
            needed: HEADER_LEN,
            available: buf.len(),
        });
    }
    if buf[MAGIC_POS] != MAGIC {
        return Err(BatchError::BadMagic {
            magic: buf[MAGIC_POS],
        });
    }
    // Check length and CRC before any other field, so that a corrupted field inside
    // the checksummed range is reported as corruption, not as a nonsensical value.
    let mut len_bytes = [0u8; 4];
    len_bytes.copy_from_slice(&buf[BATCH_LENGTH..BATCH_LENGTH + 4]);
    let batch_length = i32::from_be_bytes(len_bytes);
    if (batch_length as i64) < (HEADER_LEN - LOG_OVERHEAD) as i64 {
        return Err(BatchError::InvalidBatchLength {
            declared: batch_length.into(),
        });
    }
    let total = batch_length as usize + LOG_OVERHEAD;
    if total > buf.len() {
        return Err(BatchError::Truncated {
            what: "the batch its batchLength announces",
            needed: total,
            available: buf.len(),
        });
    }
    if total < buf.len() {
        return Err(BatchError::TrailingBytes {
            what: "batch",
            extra: buf.len() - total,
        });
    }
    let mut crc_bytes = [0u8; 4];
    crc_bytes.copy_from_slice(&buf[CRC..CRC + 4]);
    let expected = u32::from_be_bytes(crc_bytes);
    let actual = header::checksum(buf);
    if actual != expected {
        return Err(BatchError::CrcMismatch { expected, actual });
    }
    let header = BatchHeader::parse_prefix(buf)?;
    if header.record_count < 0 {
        return Err(BatchError::NegativeRecordCount {
            count: header.record_count,
        });
    }
    let compression = Compression::from_attributes(header.attributes)?;
    Ok((header, compression))
}

impl Batch {
    /// Decodes a buffer holding exactly one batch: checks the header, `batchLength`,
    /// magic and CRC-32C, and decompresses the records (at most 64 MiB). Records are
    /// parsed lazily by [`Batch::records`]; a framing error surfaces there.
    pub fn decode(bytes: Bytes) -> Result<Self, BatchError> {
        Self::decode_with_limit(bytes, DEFAULT_MAX_DECOMPRESSED)
    }

    /// [`Batch::decode`] with a caller-given bound on the decompressed records size.
    pub fn decode_with_limit(bytes: Bytes, max_decompressed: usize) -> Result<Self, BatchError> {
        let (header, compression) = check_frame(&bytes)?;
        let records = match compression {
            Compression::None => bytes.slice(HEADER_LEN..),
            codec => Bytes::from(decompress(codec, &bytes[HEADER_LEN..], max_decompressed)?),
        };
        Ok(Self {
            header,
            compression,
            raw: bytes,
            records,
        })
    }

    /// Checks a produced batch completely without keeping anything: everything
    /// [`Batch::decode`] checks, plus every record's framing, at least one record, a
    /// record count that matches the records present, `lastOffsetDelta == count - 1`,
    /// dense offset deltas, and `maxTimestamp` for create-time batches. Compressed
    /// batches are decompressed (at most 64 MiB) into a scratch buffer.
    pub fn verify(buf: &[u8]) -> Result<BatchHeader, BatchError> {
        Self::verify_with_limit(buf, DEFAULT_MAX_DECOMPRESSED)
    }

    /// [`Batch::verify`] with a caller-given bound on the decompressed records size.
    pub fn verify_with_limit(
        buf: &[u8],
        max_decompressed: usize,
    ) -> Result<BatchHeader, BatchError> {
        let (header, compression) = check_frame(buf)?;
        if header.record_count == 0 {
            return Err(BatchError::EmptyBatch);
        }
        if header.last_offset_delta != header.record_count - 1 {
            return Err(BatchError::LastOffsetDeltaMismatch {
                last_offset_delta: header.last_offset_delta,
                record_count: header.record_count,
            });
        }
        // Every offset the batch claims must exist, so `decode` can hand them all out.
        if header
            .base_offset
            .checked_add(header.last_offset_delta.into())
            .is_none()
        {
            return Err(BatchError::OffsetOverflow {
                index: header.record_count - 1,
                base_offset: header.base_offset,
                offset_delta: header.last_offset_delta,
            });
        }
        let scratch;
        let section: &[u8] = match compression {
            Compression::None => &buf[HEADER_LEN..],
            codec => {
                scratch = decompress(codec, &buf[HEADER_LEN..], max_decompressed)?;
                &scratch
            }
        };
        let mut walker = Walker::new(&header, true);
        let mut max_timestamp = i64::MIN;
        while let Some(raw) = walker.next_raw(section, |_, _| {}) {
            let raw = raw?;
            max_timestamp =
                max_timestamp.max(header.base_timestamp.wrapping_add(raw.timestamp_delta));
        }
        if header.attributes & LOG_APPEND_TIME_FLAG == 0 && max_timestamp != header.max_timestamp {
            return Err(BatchError::MaxTimestampMismatch {
                declared: header.max_timestamp,
                actual: max_timestamp,
            });
        }
        Ok(header)
    }

    /// The batch's fixed header.
    pub fn header(&self) -> &BatchHeader {
        &self.header
    }

    /// The codec of the records section.
    pub fn compression(&self) -> Compression {
        self.compression
    }

    /// The offset of the first record (as stamped by the broker's log).
    pub fn base_offset(&self) -> i64 {
        self.header.base_offset
    }

    /// The record count the header announces.
    pub fn record_count(&self) -> i32 {
        self.header.record_count
    }

    /// The batch exactly as it was given to [`Batch::decode`].
    pub fn as_bytes(&self) -> &Bytes {
        &self.raw
    }

    /// Gives back the batch's bytes.
    pub fn into_bytes(self) -> Bytes {
        self.raw
    }

    /// Iterates over the records, parsing each as it goes. After the first error the
    /// iterator ends. Keys, values and header values are slices of the batch's buffer
    /// (or of its decompressed records section); nothing is copied.
    pub fn records(&self) -> Records {
        Records {
            section: self.records.clone(),
            base_offset: self.header.base_offset,
            base_timestamp: self.header.base_timestamp,
            log_append_time: (self.header.attributes & LOG_APPEND_TIME_FLAG != 0)
                .then_some(self.header.max_timestamp),
            walker: Walker::new(&self.header, false),
        }
    }
}

impl IntoIterator for &Batch {
    type Item = Result<Record, BatchError>;
    type IntoIter = Records;

    fn into_iter(self) -> Records {
        self.records()
    }
}

/// Iterator over a batch's records; see [`Batch::records`].
#[derive(Debug, Clone)]
pub struct Records {
    section: Bytes,
    base_offset: i64,
    base_timestamp: i64,
    /// With log-append time every record's timestamp is the batch's maxTimestamp.
    log_append_time: Option<i64>,
    walker: Walker,
}

impl Iterator for Records {
    type Item = Result<Record, BatchError>;

    fn next(&mut self) -> Option<Self::Item> {
        let section = &self.section;
        let mut headers = Vec::new();
        let raw = match self.walker.next_raw(section, |key, value| {
            headers.push(Header {
                key: key.to_owned(),
                value: value.map(|r| section.slice(r)),
            })
        })? {
            Ok(raw) => raw,
            Err(err) => return Some(Err(err)),
        };
        let Some(offset) = self.base_offset.checked_add(raw.offset_delta.into()) else {
            self.walker.done = true;
            return Some(Err(BatchError::OffsetOverflow {
                index: self.walker.index - 1,
                base_offset: self.base_offset,
                offset_delta: raw.offset_delta,
            }));
        };
        let timestamp = self
            .log_append_time
            .unwrap_or_else(|| self.base_timestamp.wrapping_add(raw.timestamp_delta));
        Some(Ok(Record {
            offset,
            timestamp,
            key: raw.key.map(|r| section.slice(r)),
            value: raw.value.map(|r| section.slice(r)),
            headers,
        }))
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        if self.walker.done {
            (0, Some(0))
        } else {
            // One more item may be an error about trailing bytes.
            let left = (self.walker.declared - self.walker.index) as usize;
            (0, Some(left + 1))
        }
    }
}

impl FusedIterator for Records {}

/// Walks the records section record by record and enforces the batch-level rules
/// (count, trailing bytes, offset deltas). Shared by `verify` and `Records`.
#[derive(Debug, Clone)]
struct Walker {
    pos: usize,
    /// Records returned so far.
    index: i32,
    declared: i32,
    last_offset_delta: i32,
    prev_offset_delta: i64,
    /// Offset deltas must be exactly `0, 1, 2, ...` (produce) rather than increasing.
    dense: bool,
    done: bool,
}

impl Walker {
    fn new(header: &BatchHeader, dense: bool) -> Self {
        Self {
            pos: 0,
            index: 0,
            declared: header.record_count.max(0),
            last_offset_delta: header.last_offset_delta,
            prev_offset_delta: -1,
            dense,
            done: false,
        }
    }

    fn next_raw<'a>(
        &mut self,
        section: &'a [u8],
        on_header: impl FnMut(&'a str, Option<std::ops::Range<usize>>),
    ) -> Option<Result<RawRecord, BatchError>> {
        if self.done {
            return None;
        }
        let result = self.step(section, on_header);
        if !matches!(result, Some(Ok(_))) {
            self.done = true;
        }
        result
    }

    fn step<'a>(
        &mut self,
        section: &'a [u8],
        on_header: impl FnMut(&'a str, Option<std::ops::Range<usize>>),
    ) -> Option<Result<RawRecord, BatchError>> {
        if self.index == self.declared {
            if self.pos != section.len() {
                return Some(Err(BatchError::TrailingBytes {
                    what: "last record the header counts",
                    extra: section.len() - self.pos,
                }));
            }
            return None;
        }
        if self.pos >= section.len() {
            return Some(Err(BatchError::RecordCountMismatch {
                declared: self.declared,
                actual: self.index,
            }));
        }
        let raw = match parse_record(section, &mut self.pos, self.index, on_header) {
            Ok(raw) => raw,
            Err(err) => return Some(Err(err)),
        };
        let delta = i64::from(raw.offset_delta);
        let ok = if self.dense {
            delta == i64::from(self.index)
        } else {
            delta > self.prev_offset_delta && raw.offset_delta <= self.last_offset_delta
        };
        if !ok {
            return Some(Err(BatchError::BadOffsetDelta {
                index: self.index,
                offset_delta: raw.offset_delta,
                expected: if self.dense {
                    "equal to the record's index"
                } else {
                    "above the previous record's and at most lastOffsetDelta"
                },
                last_offset_delta: self.last_offset_delta,
            }));
        }
        self.prev_offset_delta = delta;
        self.index += 1;
        Some(Ok(raw))
    }
}
