//! One record inside a batch: the public [`Record`] and [`Header`] types, and the one
//! encoder and the one parser of Kafka's varint record framing.
//!
//! Layout of a record (all integers zigzag varints, `varlong` for the timestamp):
//! `length, attributes: i8, timestampDelta: varlong, offsetDelta, keyLength (-1 =
//! null), key, valueLength (-1 = null), value, headerCount, headers` where each header
//! is `keyLength, key (UTF-8, never null), valueLength (-1 = null), value`.
//!
//! This module owns one record's bytes. It never looks at the batch header, never
//! decides whether offset deltas or counts make sense for a batch (the decoder does),
//! never copies key or value bytes while parsing (it hands out ranges), and never
//! panics or allocates on behalf of a length it has not checked against the bytes
//! that are really there.

use std::ops::Range;

use bytes::Bytes;

use super::error::BatchError;
use super::varint::{
    MAX_VARINT_LEN, MAX_VARLONG_LEN, VarintError, put_varint, put_varlong, read_varint,
    read_varlong, varint_len, varlong_len,
};

/// A record header: a UTF-8 key and an optional value.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Header {
    pub key: String,
    pub value: Option<Bytes>,
}

impl Header {
    /// A header with the given key and value.
    pub fn new(key: impl Into<String>, value: Option<Bytes>) -> Self {
        Self {
            key: key.into(),
            value,
        }
    }
}

/// A decoded record. For uncompressed batches `key`, `value` and header values share
/// the batch's buffer; for compressed ones they share the batch's decompressed buffer.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Record {
    /// `baseOffset + offsetDelta`.
    pub offset: i64,
    /// `baseTimestamp + timestampDelta` (wrapping, as Kafka computes it).
    pub timestamp: i64,
    pub key: Option<Bytes>,
    pub value: Option<Bytes>,
    pub headers: Vec<Header>,
}

// ---------------------------------------------------------------------------------
// Encoding
// ---------------------------------------------------------------------------------

/// Length prefix to write for a field of `len` bytes. Lengths beyond i32 are rejected
/// by the builder's size limit before anything is written.
fn len_i32(len: usize) -> i32 {
    i32::try_from(len).unwrap_or(i32::MAX)
}

fn nullable_len(field: Option<&[u8]>) -> usize {
    match field {
        None => varint_len(-1),
        Some(b) => varint_len(len_i32(b.len())).saturating_add(b.len()),
    }
}

/// Bytes of a record's body (everything after its `length` varint).
pub(crate) fn body_len(
    timestamp_delta: i64,
    offset_delta: i32,
    key: Option<&[u8]>,
    value: Option<&[u8]>,
    headers: &[Header],
) -> usize {
    let mut len = 1 + varlong_len(timestamp_delta) + varint_len(offset_delta);
    len = len
        .saturating_add(nullable_len(key))
        .saturating_add(nullable_len(value))
        .saturating_add(varint_len(len_i32(headers.len())));
    for h in headers {
        len = len
            .saturating_add(nullable_len(Some(h.key.as_bytes())))
            .saturating_add(nullable_len(h.value.as_deref()));
    }
    len
}

/// Bytes of a whole record, `length` varint included, given its body length.
pub(crate) fn framed_len(body_len: usize) -> usize {
    varint_len(len_i32(body_len)).saturating_add(body_len)
}

fn put_nullable(out: &mut Vec<u8>, field: Option<&[u8]>) {
    match field {
        None => put_varint(out, -1),
        Some(b) => {
            put_varint(out, len_i32(b.len()));
            out.extend_from_slice(b);
        }
    }
}

/// Appends one record. `body_len` must come from [`body_len`] with the same arguments.
pub(crate) fn put_record(
    out: &mut Vec<u8>,
    body_len: usize,
    timestamp_delta: i64,
    offset_delta: i32,
    key: Option<&[u8]>,
    value: Option<&[u8]>,
    headers: &[Header],
) {
    let start = out.len();
    put_varint(out, len_i32(body_len));
    out.push(0); // record attributes: unused in v2
    put_varlong(out, timestamp_delta);
    put_varint(out, offset_delta);
    put_nullable(out, key);
    put_nullable(out, value);
    put_varint(out, len_i32(headers.len()));
    for h in headers {
        put_nullable(out, Some(h.key.as_bytes()));
        put_nullable(out, h.value.as_deref());
    }
    debug_assert_eq!(out.len() - start, framed_len(body_len));
}

// ---------------------------------------------------------------------------------
// Parsing
// ---------------------------------------------------------------------------------

/// A record's fields as positions in the records section; nothing copied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RawRecord {
    pub timestamp_delta: i64,
    pub offset_delta: i32,
    pub key: Option<Range<usize>>,
    pub value: Option<Range<usize>>,
}

/// Reads fields of one record from `buf[pos..end]`; positions stay absolute in `buf`.
struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
    end: usize,
    record: i32,
}

impl<'a> Cursor<'a> {
    fn remaining(&self) -> usize {
        self.end - self.pos
    }

    fn varint_error(&self, err: VarintError, what: &'static str, long: bool) -> BatchError {
        let (max_bytes, bits) = if long {
            (MAX_VARLONG_LEN, 64)
        } else {
            (MAX_VARINT_LEN, 32)
        };
        match err {
            VarintError::Truncated => BatchError::RecordTruncated {
                record: self.record,
                what,
                needed: 1,
                available: 0,
            },
            VarintError::TooLong => BatchError::VarintTooLong {
                record: self.record,
                what,
                max_bytes,
            },
            VarintError::Overflow => BatchError::VarintOverflow {
                record: self.record,
                what,
                bits,
            },
        }
    }

    fn varint(&mut self, what: &'static str) -> Result<i32, BatchError> {
        let (v, n) = read_varint(&self.buf[self.pos..self.end])
            .map_err(|e| self.varint_error(e, what, false))?;
        self.pos += n;
        Ok(v)
    }

    fn varlong(&mut self, what: &'static str) -> Result<i64, BatchError> {
        let (v, n) = read_varlong(&self.buf[self.pos..self.end])
            .map_err(|e| self.varint_error(e, what, true))?;
        self.pos += n;
        Ok(v)
    }

    fn byte(&mut self, what: &'static str) -> Result<u8, BatchError> {
        if self.pos >= self.end {
            return Err(BatchError::RecordTruncated {
                record: self.record,
                what,
                needed: 1,
                available: 0,
            });
        }
        let b = self.buf[self.pos];
        self.pos += 1;
        Ok(b)
    }

    /// A length-prefixed field; `-1` is null when `nullable`.
    fn field(
        &mut self,
        what: &'static str,
        nullable: bool,
    ) -> Result<Option<Range<usize>>, BatchError> {
        let len = self.varint(what)?;
        if len == -1 && nullable {
            return Ok(None);
        }
        if len < 0 {
            return Err(BatchError::NegativeLength {
                record: self.record,
                what,
                len: len.into(),
            });
        }
        let len = len as usize;
        if len > self.remaining() {
            return Err(BatchError::LengthPastEnd {
                record: self.record,
                what,
                len: len as i64,
                remaining: self.remaining(),
            });
        }
        let range = self.pos..self.pos + len;
        self.pos += len;
        Ok(Some(range))
    }
}

/// Parses the record that starts at `*pos` in the records section `section` and moves
/// `*pos` past it. `index` is the record's position in the batch, for error messages.
/// Each header is handed to `on_header` (key already checked to be UTF-8) instead of
/// being collected, so a caller that only validates allocates nothing.
pub(crate) fn parse_record<'a>(
    section: &'a [u8],
    pos: &mut usize,
    index: i32,
    mut on_header: impl FnMut(&'a str, Option<Range<usize>>),
) -> Result<RawRecord, BatchError> {
    // The length prefix is read against the whole section, the fields against the
    // record's own bytes: a field can never reach into the next record.
    let mut outer = Cursor {
        buf: section,
        pos: *pos,
        end: section.len(),
        record: index,
    };
    let len = outer.varint("record length")?;
    if len < 0 {
        return Err(BatchError::NegativeLength {
            record: index,
            what: "record",
            len: len.into(),
        });
    }
    let len = len as usize;
    if len > outer.remaining() {
        return Err(BatchError::LengthPastEnd {
            record: index,
            what: "record",
            len: len as i64,
            remaining: outer.remaining(),
        });
    }
    let start = outer.pos;
    let mut c = Cursor {
        buf: section,
        pos: start,
        end: start + len,
        record: index,
    };
    let _attributes = c.byte("record attributes")?;
    let timestamp_delta = c.varlong("timestamp delta")?;
    let offset_delta = c.varint("offset delta")?;
    let key = c.field("key", true)?;
    let value = c.field("value", true)?;
    let header_count = c.varint("header count")?;
    if header_count < 0 {
        return Err(BatchError::NegativeLength {
            record: index,
            what: "header count",
            len: header_count.into(),
        });
    }
    for header in 0..header_count {
        // Every header takes at least two bytes; running out is reported by the
        // field reads below, so a huge count costs at most one pass over the bytes.
        // Not nullable: `field` returns a range or an error, never `None`.
        let key_range = c.field("header key", false)?.unwrap_or_default();
        let key =
            std::str::from_utf8(&section[key_range]).map_err(|_| BatchError::InvalidHeaderKey {
                record: index,
                header,
            })?;
        let value = c.field("header value", true)?;
        on_header(key, value);
    }
    if c.pos != c.end {
        return Err(BatchError::RecordLengthMismatch {
            record: index,
            declared: len,
            used: c.pos - start,
        });
    }
    *pos = c.end;
    Ok(RawRecord {
        timestamp_delta,
        offset_delta,
        key,
        value,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encode(
        ts_delta: i64,
        offset_delta: i32,
        key: Option<&[u8]>,
        value: Option<&[u8]>,
        headers: &[Header],
    ) -> Vec<u8> {
        let body = body_len(ts_delta, offset_delta, key, value, headers);
        let mut out = Vec::new();
        put_record(&mut out, body, ts_delta, offset_delta, key, value, headers);
        assert_eq!(out.len(), framed_len(body));
        out
    }

    type ParsedHeaders = Vec<(String, Option<Range<usize>>)>;

    fn parse(buf: &[u8]) -> Result<(RawRecord, ParsedHeaders, usize), BatchError> {
        let mut pos = 0;
        let mut headers = Vec::new();
        let raw = parse_record(buf, &mut pos, 0, |k, v| headers.push((k.to_owned(), v)))?;
        Ok((raw, headers, pos))
    }

    #[test]
    fn encodes_the_exact_kafka_byte_layout() {
        let headers = [Header::new("h", Some(Bytes::from_static(b"v")))];
        let got = encode(-1, 2, Some(b"k"), None, &headers);
        #[rustfmt::skip]
        let want = [
            22,             // length 11 (zigzag)
            0,              // attributes
            1,              // timestampDelta -1
            4,              // offsetDelta 2
            2, b'k',        // key length 1, key
            1,              // value null (-1)
            2,              // 1 header
            2, b'h', 2, b'v',
        ];
        assert_eq!(got, want);
    }

    #[test]
    fn parse_returns_ranges_of_the_input() {
        let headers = [
            Header::new("a", None),
            Header::new("", Some(Bytes::from_static(b""))),
        ];
        let buf = encode(5, 0, None, Some(b"hello"), &headers);
        let (raw, hs, used) = parse(&buf).unwrap();
        assert_eq!(used, buf.len());
        assert_eq!(raw.timestamp_delta, 5);
        assert_eq!(raw.offset_delta, 0);
        assert_eq!(raw.key, None);
        assert_eq!(&buf[raw.value.unwrap()], b"hello");
        assert_eq!(hs.len(), 2);
        assert_eq!((hs[0].0.as_str(), hs[0].1.clone()), ("a", None));
        assert_eq!(hs[1].0, "");
        assert_eq!(hs[1].1.clone().map(|r| r.len()), Some(0));
    }

    #[test]
    fn record_length_past_the_section_is_rejected() {
        let mut buf = encode(0, 0, Some(b"key"), Some(b"value"), &[]);
        buf.pop();
        assert!(matches!(
            parse(&buf),
            Err(BatchError::LengthPastEnd { what: "record", .. })
        ));
    }

    #[test]
    fn key_length_past_the_record_is_rejected_even_if_the_section_has_more() {
        let mut buf = encode(0, 0, Some(b"key"), None, &[]);
        // Key length 3 -> 100 (zigzag 200 = 0xc8 0x01 would change the size; use 60 -> 120).
        assert_eq!(buf[4], 6);
        buf[4] = 120;
        buf.extend_from_slice(&[0u8; 200]); // the next "record" must not be borrowed
        assert!(matches!(
            parse(&buf),
            Err(BatchError::LengthPastEnd {
                what: "key",
                len: 60,
                ..
            })
        ));
    }

    #[test]
    fn negative_lengths_other_than_null_are_rejected() {
        let mut buf = encode(0, 0, Some(b"k"), None, &[]);
        assert_eq!(buf[4], 2);
        buf[4] = 3; // -2
        assert!(matches!(
            parse(&buf),
            Err(BatchError::NegativeLength {
                what: "key",
                len: -2,
                ..
            })
        ));
        // A null header key (-1) is not allowed either.
        let mut buf = encode(0, 0, None, None, &[Header::new("", None)]);
        let key_len_pos = buf.len() - 2;
        assert_eq!(buf[key_len_pos], 0);
        buf[key_len_pos] = 1;
        assert!(matches!(
            parse(&buf),
            Err(BatchError::NegativeLength {
                what: "header key",
                len: -1,
                ..
            })
        ));
        // A negative record length.
        assert!(matches!(
            parse(&[3]),
            Err(BatchError::NegativeLength {
                what: "record",
                len: -2,
                ..
            })
        ));
    }

    #[test]
    fn fields_ending_before_the_record_length_are_rejected() {
        let mut buf = encode(0, 0, None, None, &[]);
        buf[0] += 2; // claim one more byte
        buf.push(0);
        assert!(matches!(
            parse(&buf),
            Err(BatchError::RecordLengthMismatch {
                declared: 7,
                used: 6,
                ..
            })
        ));
    }

    #[test]
    fn header_key_must_be_utf8() {
        let mut buf = encode(0, 0, None, None, &[Header::new("x", None)]);
        let key_pos = buf.len() - 2;
        assert_eq!(buf[key_pos], b'x');
        buf[key_pos] = 0xff;
        assert_eq!(
            parse(&buf).map(|_| ()),
            Err(BatchError::InvalidHeaderKey {
                record: 0,
                header: 0
            })
        );
    }

    #[test]
    fn huge_header_count_fails_on_missing_bytes_without_allocating_for_it() {
        let mut buf = encode(0, 0, None, None, &[]);
        // Header count 0 -> i32::MAX, length adjusted to hold the 5-byte varint.
        buf.pop();
        buf.extend_from_slice(&[0xfe, 0xff, 0xff, 0xff, 0x0f]);
        buf[0] = ((buf.len() - 1) * 2) as u8;
        assert!(matches!(
            parse(&buf),
            Err(BatchError::RecordTruncated {
                what: "header key",
                ..
            })
        ));
    }

    #[test]
    fn overlong_and_overflowing_varints_are_rejected() {
        // Timestamp delta varlong with 11 continuation bytes inside a long-enough record.
        let mut buf = vec![40u8, 0];
        buf.extend_from_slice(&[0xff; 19]);
        assert!(matches!(
            parse(&buf),
            Err(BatchError::VarintTooLong {
                what: "timestamp delta",
                max_bytes: 10,
                ..
            })
        ));
        // Offset delta overflowing 32 bits.
        let mut buf = vec![20u8, 0, 0, 0xff, 0xff, 0xff, 0xff, 0x7f];
        buf.extend_from_slice(&[0; 3]);
        assert!(matches!(
            parse(&buf),
            Err(BatchError::VarintOverflow {
                what: "offset delta",
                bits: 32,
                ..
            })
        ));
    }
}
