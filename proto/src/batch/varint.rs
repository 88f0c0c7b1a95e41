//! Kafka's variable-length integers: zigzag-encoded LEB128 `varint` (i32, at most 5
//! bytes) and `varlong` (i64, at most 10 bytes), as used inside RecordBatch v2 records.
//!
//! This module owns the bit twiddling only. It never allocates, never panics on any
//! input, and never decides what a value means: callers attach field names to errors.
//! Decoding is strict where Kafka is lax: a 5th varint byte (10th varlong byte) that
//! carries bits beyond the type's width is an overflow error, not silently truncated.
//! Non-minimal encodings (e.g. `0x80 0x00` for 0) are accepted, as Kafka does.

/// Longest encoding of a varint (i32).
pub const MAX_VARINT_LEN: usize = 5;
/// Longest encoding of a varlong (i64).
pub const MAX_VARLONG_LEN: usize = 10;

/// Why a varint could not be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VarintError {
    /// The input ended before the last byte (one without the continuation bit).
    Truncated,
    /// The longest permitted encoding still had its continuation bit set.
    TooLong,
    /// The last permitted byte carried bits beyond the type's width.
    Overflow,
}

/// Zigzag-maps an i32 so that small magnitudes of either sign encode short.
#[inline]
pub const fn zigzag32(v: i32) -> u32 {
    ((v << 1) ^ (v >> 31)) as u32
}

/// Zigzag-maps an i64.
#[inline]
pub const fn zigzag64(v: i64) -> u64 {
    ((v << 1) ^ (v >> 63)) as u64
}

#[inline]
const fn unzigzag32(u: u32) -> i32 {
    ((u >> 1) as i32) ^ -((u & 1) as i32)
}

#[inline]
const fn unzigzag64(u: u64) -> i64 {
    ((u >> 1) as i64) ^ -((u & 1) as i64)
}

#[inline]
const fn uvarint_len(mut v: u64) -> usize {
    let mut n = 1;
    while v >= 0x80 {
        v >>= 7;
        n += 1;
    }
    n
}

/// Encoded length of `v` as a varint.
#[inline]
pub const fn varint_len(v: i32) -> usize {
    uvarint_len(zigzag32(v) as u64)
}

/// Encoded length of `v` as a varlong.
#[inline]
pub const fn varlong_len(v: i64) -> usize {
    uvarint_len(zigzag64(v))
}

#[inline]
fn put_uvarint(out: &mut Vec<u8>, mut v: u64) {
    let mut buf = [0u8; MAX_VARLONG_LEN];
    let mut n = 0;
    while v >= 0x80 {
        buf[n] = (v as u8) | 0x80;
        v >>= 7;
        n += 1;
    }
    buf[n] = v as u8;
    out.extend_from_slice(&buf[..=n]);
}

/// Appends `v` as a zigzag varint.
#[inline]
pub fn put_varint(out: &mut Vec<u8>, v: i32) {
    put_uvarint(out, zigzag32(v) as u64)
}

/// Appends `v` as a zigzag varlong.
#[inline]
pub fn put_varlong(out: &mut Vec<u8>, v: i64) {
    put_uvarint(out, zigzag64(v))
}

/// Reads an unsigned LEB128 value of at most `max_len` bytes holding `bits` bits.
#[inline]
fn read_uvarint(buf: &[u8], max_len: usize, bits: u32) -> Result<(u64, usize), VarintError> {
    // Fast path: one byte.
    match buf.first() {
        None => return Err(VarintError::Truncated),
        Some(&b) if b < 0x80 => return Ok((u64::from(b), 1)),
        Some(_) => {}
    }
    let mut value: u64 = 0;
    for i in 0..max_len {
        let Some(&b) = buf.get(i) else {
            return Err(VarintError::Truncated);
        };
        let payload = u64::from(b & 0x7f);
        let shift = 7 * i as u32;
        if i == max_len - 1 {
            if b & 0x80 != 0 {
                return Err(VarintError::TooLong);
            }
            if payload >> (bits - shift) != 0 {
                return Err(VarintError::Overflow);
            }
        }
        value |= payload << shift;
        if b & 0x80 == 0 {
            return Ok((value, i + 1));
        }
    }
    Err(VarintError::TooLong)
}

/// Reads a zigzag varint from the start of `buf`; returns it and the bytes it used.
#[inline]
pub fn read_varint(buf: &[u8]) -> Result<(i32, usize), VarintError> {
    let (u, n) = read_uvarint(buf, MAX_VARINT_LEN, 32)?;
    Ok((unzigzag32(u as u32), n))
}

/// Reads a zigzag varlong from the start of `buf`; returns it and the bytes it used.
#[inline]
pub fn read_varlong(buf: &[u8]) -> Result<(i64, usize), VarintError> {
    let (u, n) = read_uvarint(buf, MAX_VARLONG_LEN, 64)?;
    Ok((unzigzag64(u), n))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn enc32(v: i32) -> Vec<u8> {
        let mut out = Vec::new();
        put_varint(&mut out, v);
        out
    }

    fn enc64(v: i64) -> Vec<u8> {
        let mut out = Vec::new();
        put_varlong(&mut out, v);
        out
    }

    #[test]
    fn encodes_known_kafka_vectors() {
        // Zigzag: 0 -> 0, -1 -> 1, 1 -> 2, -2 -> 3, 63 -> 126, -64 -> 127, 64 -> 128.
        assert_eq!(enc32(0), [0x00]);
        assert_eq!(enc32(-1), [0x01]);
        assert_eq!(enc32(1), [0x02]);
        assert_eq!(enc32(-64), [0x7f]);
        assert_eq!(enc32(64), [0x80, 0x01]);
        assert_eq!(enc32(300), [0xd8, 0x04]);
        assert_eq!(enc32(i32::MAX), [0xfe, 0xff, 0xff, 0xff, 0x0f]);
        assert_eq!(enc32(i32::MIN), [0xff, 0xff, 0xff, 0xff, 0x0f]);
        assert_eq!(enc64(i64::MIN).len(), MAX_VARLONG_LEN);
        assert_eq!(*enc64(i64::MIN).last().unwrap(), 0x01);
    }

    #[test]
    fn empty_input_is_truncated() {
        assert_eq!(read_varint(&[]), Err(VarintError::Truncated));
        assert_eq!(read_varlong(&[]), Err(VarintError::Truncated));
    }

    #[test]
    fn continuation_without_end_is_truncated() {
        assert_eq!(read_varint(&[0x80, 0x80]), Err(VarintError::Truncated));
        assert_eq!(read_varlong(&[0xff; 9]), Err(VarintError::Truncated));
    }

    #[test]
    fn continuation_on_last_permitted_byte_is_too_long() {
        assert_eq!(read_varint(&[0xff; 6]), Err(VarintError::TooLong));
        assert_eq!(read_varlong(&[0xff; 11]), Err(VarintError::TooLong));
    }

    #[test]
    fn bits_beyond_the_type_width_overflow() {
        // 5th byte may carry only 4 bits for an i32.
        assert_eq!(
            read_varint(&[0xff, 0xff, 0xff, 0xff, 0x1f]),
            Err(VarintError::Overflow)
        );
        assert_eq!(
            read_varint(&[0xff, 0xff, 0xff, 0xff, 0x0f]),
            Ok((i32::MIN, 5))
        );
        // 10th byte may carry only 1 bit for an i64.
        let mut long = vec![0xff; 9];
        long.push(0x02);
        assert_eq!(read_varlong(&long), Err(VarintError::Overflow));
    }

    #[test]
    fn non_minimal_encodings_are_accepted() {
        assert_eq!(read_varint(&[0x80, 0x00]), Ok((0, 2)));
        assert_eq!(read_varint(&[0x81, 0x80, 0x00]), Ok((-1, 3)));
    }

    proptest! {
        #[test]
        fn varint_round_trips_and_len_is_exact(v in any::<i32>(), tail in proptest::collection::vec(any::<u8>(), 0..4)) {
            let mut buf = enc32(v);
            prop_assert_eq!(buf.len(), varint_len(v));
            let n = buf.len();
            buf.extend_from_slice(&tail);
            prop_assert_eq!(read_varint(&buf), Ok((v, n)));
        }

        #[test]
        fn varlong_round_trips_and_len_is_exact(v in any::<i64>(), tail in proptest::collection::vec(any::<u8>(), 0..4)) {
            let mut buf = enc64(v);
            prop_assert_eq!(buf.len(), varlong_len(v));
            let n = buf.len();
            buf.extend_from_slice(&tail);
            prop_assert_eq!(read_varlong(&buf), Ok((v, n)));
        }

        #[test]
        fn arbitrary_bytes_never_panic_and_never_over_read(buf in proptest::collection::vec(any::<u8>(), 0..12)) {
            if let Ok((_, n)) = read_varint(&buf) {
                prop_assert!((1..=MAX_VARINT_LEN).contains(&n) && n <= buf.len());
            }
            if let Ok((_, n)) = read_varlong(&buf) {
                prop_assert!((1..=MAX_VARLONG_LEN).contains(&n) && n <= buf.len());
            }
        }
    }
}
