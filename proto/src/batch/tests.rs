//! Cross-module tests of the batch codec: round trips, every rejection `decode` and
//! `verify` promise, and hostile input (bit flips, truncation, random bytes) that must
//! give an error or a valid batch, never a panic.

use bytes::Bytes;
use proptest::collection::vec;
use proptest::prelude::*;

use super::compression::compress_into;
use super::header::{
    ATTRIBUTES, BATCH_LENGTH, CRC, HEADER_LEN, LAST_OFFSET_DELTA, LOG_APPEND_TIME_FLAG,
    MAX_TIMESTAMP, RECORD_COUNT, checksum, stamp_base_offset, stamp_leader_epoch, stamp_producer,
};
use super::*;

// ---------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------

#[derive(Debug, Clone, PartialEq)]
struct Spec {
    timestamp: i64,
    key: Option<Vec<u8>>,
    value: Option<Vec<u8>>,
    headers: Vec<(String, Option<Vec<u8>>)>,
}

impl Spec {
    fn headers(&self) -> Vec<Header> {
        self.headers
            .iter()
            .map(|(k, v)| Header::new(k.clone(), v.clone().map(Bytes::from)))
            .collect()
    }
}

fn build(codec: Compression, specs: &[Spec]) -> Bytes {
    let mut b = BatchBuilder::new(codec);
    for s in specs {
        b.append(
            s.timestamp,
            s.key.as_deref(),
            s.value.as_deref(),
            &s.headers(),
        )
        .unwrap();
    }
    b.build()
}

/// A few records covering null, empty and non-empty fields, headers and a negative
/// timestamp delta.
fn sample_specs() -> Vec<Spec> {
    vec![
        Spec {
            timestamp: 1_700_000_000_000,
            key: Some(b"user-1".to_vec()),
            value: Some(b"hello world, hello world, hello world".to_vec()),
            headers: vec![("trace".into(), Some(b"abc".to_vec()))],
        },
        Spec {
            timestamp: 1_699_999_999_000,
            key: None,
            value: Some(Vec::new()),
            headers: vec![],
        },
        Spec {
            timestamp: 1_700_000_000_500,
            key: Some(Vec::new()),
            value: None,
            headers: vec![("a".into(), None), ("".into(), Some(Vec::new()))],
        },
    ]
}

fn sample(codec: Compression) -> Bytes {
    build(codec, &sample_specs())
}

/// Recomputes the CRC so that a deliberately damaged batch gets past the CRC check
/// and exercises the parsers behind it.
fn recrc(buf: &mut [u8]) {
    let crc = checksum(buf);
    buf[CRC..CRC + 4].copy_from_slice(&crc.to_be_bytes());
}

fn put_i32(buf: &mut [u8], at: usize, v: i32) {
    buf[at..at + 4].copy_from_slice(&v.to_be_bytes());
}

fn put_i16(buf: &mut [u8], at: usize, v: i16) {
    buf[at..at + 2].copy_from_slice(&v.to_be_bytes());
}

/// A batch header (valid CRC and length) around an arbitrary records section.
fn wrap(codec: Compression, section: &[u8], count: i32, last_offset_delta: i32) -> Vec<u8> {
    let mut b = BatchBuilder::new(Compression::None);
    b.append(0, None, None, &[]).unwrap();
    let mut out = b.build()[..HEADER_LEN].to_vec();
    out.extend_from_slice(section);
    let batch_length = (out.len() - 12) as i32;
    put_i32(&mut out, BATCH_LENGTH, batch_length);
    put_i16(&mut out, ATTRIBUTES, codec.code().into());
    put_i32(&mut out, RECORD_COUNT, count);
    put_i32(&mut out, LAST_OFFSET_DELTA, last_offset_delta);
    recrc(&mut out);
    out
}

/// Decodes, iterates and verifies `buf` the way a consumer and the broker would.
/// Panics only if the codec breaks its own promises: anything `verify` accepts must
/// decode and iterate without error to exactly `record_count` records.
fn exercise(buf: &[u8]) -> Result<usize, BatchError> {
    let decoded = Batch::decode(Bytes::copy_from_slice(buf)).and_then(|batch| {
        let mut n = 0usize;
        for r in batch.records() {
            r?;
            n += 1;
        }
        Ok(n)
    });
    let verified = Batch::verify(buf);
    if let Ok(header) = &verified {
        assert_eq!(
            decoded.as_ref().ok(),
            Some(&(header.record_count as usize)),
            "verify accepted a batch that does not decode: {decoded:?}"
        );
    }
    verified.map(|h| h.record_count as usize)
}

fn decode_all(bytes: Bytes) -> Result<Vec<Record>, BatchError> {
    Batch::decode(bytes)?.records().collect()
}

// ---------------------------------------------------------------------------------
// Round trips
// ---------------------------------------------------------------------------------

fn field() -> impl Strategy<Value = Option<Vec<u8>>> {
    prop_oneof![
        1 => Just(None),
        1 => Just(Some(Vec::new())),
        4 => vec(any::<u8>(), 0..200).prop_map(Some),
    ]
}

fn spec(base: i64) -> impl Strategy<Value = Spec> {
    (
        prop_oneof![
            3 => (-5_000i64..5_000).prop_map(move |d| base.wrapping_add(d)),
            1 => any::<i64>(),
        ],
        field(),
        field(),
        vec(("\\PC{0,12}", field()), 0..4),
    )
        .prop_map(|(timestamp, key, value, headers)| Spec {
            timestamp,
            key,
            value,
            headers,
        })
}

fn specs() -> impl Strategy<Value = Vec<Spec>> {
    any::<i64>().prop_flat_map(|base| vec(spec(base), 1..25))
}

fn codec() -> impl Strategy<Value = Compression> {
    prop::sample::select(Compression::ALL.to_vec())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    #[test]
    fn round_trip_preserves_every_record_for_every_codec(specs in specs(), codec in codec()) {
        let bytes = build(codec, &specs);
        let header = Batch::verify(&bytes).unwrap();
        prop_assert_eq!(header.record_count as usize, specs.len());
        prop_assert_eq!(header.max_timestamp, specs.iter().map(|s| s.timestamp).max().unwrap());

        let batch = Batch::decode(bytes).unwrap();
        prop_assert_eq!(batch.compression(), codec);
        let records: Vec<Record> = batch.records().collect::<Result<_, _>>().unwrap();
        prop_assert_eq!(records.len(), specs.len());
        for (i, (r, s)) in records.iter().zip(&specs).enumerate() {
            prop_assert_eq!(r.offset, i as i64);
            prop_assert_eq!(r.timestamp, s.timestamp);
            prop_assert_eq!(r.key.as_deref(), s.key.as_deref());
            prop_assert_eq!(r.value.as_deref(), s.value.as_deref());
            prop_assert_eq!(&r.headers, &s.headers());
        }
    }

    #[test]
    fn encoded_len_matches_the_uncompressed_build(specs in specs()) {
        let mut b = BatchBuilder::new(Compression::None);
        for s in &specs {
            b.append(s.timestamp, s.key.as_deref(), s.value.as_deref(), &s.headers()).unwrap();
        }
        let predicted = b.encoded_len();
        prop_assert_eq!(b.build().len(), predicted);
    }

    /// Random bytes behind a valid header and CRC reach the record parser and the
    /// decompressors directly.
    #[test]
    fn random_records_sections_never_panic(
        section in vec(any::<u8>(), 0..300),
        codec in codec(),
        count in prop_oneof![0i32..5, any::<i32>()],
        last_offset_delta in prop_oneof![0i32..5, any::<i32>()],
    ) {
        let buf = wrap(codec, &section, count, last_offset_delta);
        let _ = exercise(&buf);
    }

    /// Valid compressed data of a random (possibly malformed) records section.
    #[test]
    fn random_decompressed_sections_never_panic(
        section in vec(any::<u8>(), 0..300),
        codec in prop::sample::select(vec![Compression::Lz4, Compression::Zstd]),
        count in 0i32..5,
    ) {
        let mut compressed = Vec::new();
        compress_into(codec, &section, &mut compressed).unwrap();
        let buf = wrap(codec, &compressed, count, (count - 1).max(0));
        let _ = exercise(&buf);
    }

    #[test]
    fn random_buffers_never_panic(buf in vec(any::<u8>(), 0..200)) {
        let _ = exercise(&buf);
    }
}

// ---------------------------------------------------------------------------------
// Hostile input: flips and truncation
// ---------------------------------------------------------------------------------

const FLIPS: [fn(u8) -> u8; 6] = [
    |b| b ^ 0x01,
    |b| b ^ 0x80,
    |b| b ^ 0xff,
    |_| 0x00,
    |_| 0xff,
    |_| 0x7f,
];

#[test]
fn flipping_any_byte_is_an_error_or_a_valid_batch_never_a_panic() {
    for codec in Compression::ALL {
        let good = sample(codec);
        for pos in 0..good.len() {
            for flip in FLIPS {
                let mut buf = good.to_vec();
                buf[pos] = flip(buf[pos]);
                if buf[pos] == good[pos] {
                    continue;
                }
                let outcome = exercise(&buf);
                // Outside the CRC range only the base offset and leader epoch may
                // change; inside it, every change must be caught by the CRC.
                if pos >= ATTRIBUTES {
                    assert!(
                        matches!(outcome, Err(BatchError::CrcMismatch { .. })),
                        "{codec}: flip at {pos} gave {outcome:?}"
                    );
                } else if pos < 8 || (12..16).contains(&pos) {
                    assert_eq!(outcome, Ok(3), "{codec}: flip at {pos}");
                } else {
                    assert!(outcome.is_err(), "{codec}: flip at {pos} accepted");
                }

                // The same damage with a fixed-up CRC reaches the parsers behind it.
                if pos >= ATTRIBUTES {
                    recrc(&mut buf);
                    let _ = exercise(&buf);
                }
            }
        }
    }
}

#[test]
fn truncation_at_every_length_is_an_error_never_a_panic() {
    for codec in Compression::ALL {
        let good = sample(codec);
        for cut in 0..good.len() {
            let buf = &good[..cut];
            assert!(exercise(buf).is_err(), "{codec}: cut at {cut} accepted");

            // With batchLength and CRC fixed up, the cut reaches the records parser
            // or the decompressor, which must notice the missing bytes.
            if cut >= HEADER_LEN {
                let mut buf = buf.to_vec();
                put_i32(&mut buf, BATCH_LENGTH, (cut - 12) as i32);
                recrc(&mut buf);
                let outcome = exercise(&buf);
                assert!(
                    outcome.is_err(),
                    "{codec}: consistent cut at {cut} accepted"
                );
                if codec == Compression::None && cut > HEADER_LEN {
                    assert!(
                        matches!(
                            outcome,
                            Err(BatchError::RecordCountMismatch { .. }
                                | BatchError::LengthPastEnd { .. }
                                | BatchError::RecordTruncated { .. })
                        ),
                        "cut at {cut}: {outcome:?}"
                    );
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------------
// Each rejection, by name
// ---------------------------------------------------------------------------------

#[test]
fn crc_mismatch_is_rejected() {
    let mut buf = sample(Compression::None).to_vec();
    let stored = u32::from_be_bytes(buf[CRC..CRC + 4].try_into().unwrap());
    let last = buf.len() - 1;
    buf[last] ^= 0x10;
    let actual = checksum(&buf);
    assert_ne!(stored, actual);
    let want = BatchError::CrcMismatch {
        expected: stored,
        actual,
    };
    assert_eq!(Batch::verify(&buf), Err(want.clone()));
    assert_eq!(Batch::decode(Bytes::from(buf)).unwrap_err(), want);
}

#[test]
fn bad_magic_is_rejected() {
    let mut buf = sample(Compression::None).to_vec();
    buf[16] = 1;
    assert_eq!(Batch::verify(&buf), Err(BatchError::BadMagic { magic: 1 }));
}

#[test]
fn short_header_is_truncated() {
    let buf = sample(Compression::None);
    assert_eq!(
        Batch::verify(&buf[..60]),
        Err(BatchError::Truncated {
            what: "the fixed batch header",
            needed: 61,
            available: 60
        })
    );
}

#[test]
fn batch_length_past_the_buffer_is_truncated() {
    let buf = sample(Compression::None);
    let cut = &buf[..buf.len() - 1];
    assert_eq!(
        Batch::verify(cut),
        Err(BatchError::Truncated {
            what: "the batch its batchLength announces",
            needed: buf.len(),
            available: buf.len() - 1
        })
    );
}

#[test]
fn bytes_after_the_batch_are_trailing_bytes() {
    let mut buf = sample(Compression::Lz4).to_vec();
    buf.extend_from_slice(&[0, 0, 0]);
    assert_eq!(
        Batch::verify(&buf),
        Err(BatchError::TrailingBytes {
            what: "batch",
            extra: 3
        })
    );
}

#[test]
fn batch_length_below_the_header_is_invalid() {
    let mut buf = sample(Compression::None).to_vec();
    put_i32(&mut buf, BATCH_LENGTH, 48);
    assert_eq!(
        Batch::verify(&buf),
        Err(BatchError::InvalidBatchLength { declared: 48 })
    );
    put_i32(&mut buf, BATCH_LENGTH, -5);
    assert_eq!(
        Batch::verify(&buf),
        Err(BatchError::InvalidBatchLength { declared: -5 })
    );
}

#[test]
fn record_count_above_the_records_present_is_rejected() {
    for codec in Compression::ALL {
        let mut buf = sample(codec).to_vec();
        put_i32(&mut buf, RECORD_COUNT, 4);
        put_i32(&mut buf, LAST_OFFSET_DELTA, 3);
        recrc(&mut buf);
        let want = BatchError::RecordCountMismatch {
            declared: 4,
            actual: 3,
        };
        assert_eq!(Batch::verify(&buf), Err(want.clone()), "{codec}");
        let results: Vec<_> = Batch::decode(Bytes::from(buf)).unwrap().records().collect();
        assert_eq!(results.len(), 4);
        assert_eq!(results[3], Err(want));
    }
}

#[test]
fn record_count_below_the_records_present_leaves_trailing_bytes() {
    let mut buf = sample(Compression::Zstd).to_vec();
    put_i32(&mut buf, RECORD_COUNT, 2);
    put_i32(&mut buf, LAST_OFFSET_DELTA, 1);
    recrc(&mut buf);
    assert!(matches!(
        Batch::verify(&buf),
        Err(BatchError::TrailingBytes {
            what: "last record the header counts",
            ..
        })
    ));
}

#[test]
fn huge_record_count_fails_fast_without_allocating_for_it() {
    let mut buf = sample(Compression::None).to_vec();
    put_i32(&mut buf, RECORD_COUNT, i32::MAX);
    put_i32(&mut buf, LAST_OFFSET_DELTA, i32::MAX - 1);
    recrc(&mut buf);
    assert_eq!(
        Batch::verify(&buf),
        Err(BatchError::RecordCountMismatch {
            declared: i32::MAX,
            actual: 3
        })
    );
    let batch = Batch::decode(Bytes::from(buf)).unwrap();
    assert_eq!(batch.records().size_hint().0, 0);
    assert_eq!(batch.records().count(), 4); // three records, then the error
}

#[test]
fn negative_record_count_is_rejected() {
    let mut buf = sample(Compression::None).to_vec();
    put_i32(&mut buf, RECORD_COUNT, -1);
    recrc(&mut buf);
    assert_eq!(
        Batch::verify(&buf),
        Err(BatchError::NegativeRecordCount { count: -1 })
    );
}

#[test]
fn negative_last_offset_delta_is_rejected() {
    let mut buf = sample(Compression::None).to_vec();
    put_i32(&mut buf, LAST_OFFSET_DELTA, -2);
    recrc(&mut buf);
    assert_eq!(
        Batch::verify(&buf),
        Err(BatchError::NegativeOffsetDelta {
            last_offset_delta: -2
        })
    );
}

#[test]
fn last_offset_delta_not_count_minus_one_fails_verify_but_decodes() {
    let mut buf = sample(Compression::None).to_vec();
    put_i32(&mut buf, LAST_OFFSET_DELTA, 9);
    recrc(&mut buf);
    assert_eq!(
        Batch::verify(&buf),
        Err(BatchError::LastOffsetDeltaMismatch {
            last_offset_delta: 9,
            record_count: 3
        })
    );
    // A log may hold such a batch after compaction: reading it works.
    assert_eq!(decode_all(Bytes::from(buf)).unwrap().len(), 3);
}

/// Builds an uncompressed batch whose records carry the given offset deltas.
fn batch_with_offset_deltas(deltas: &[i32], last_offset_delta: i32) -> Vec<u8> {
    let mut section = Vec::new();
    for &d in deltas {
        let body = super::record::body_len(0, d, None, Some(b"v"), &[]);
        super::record::put_record(&mut section, body, 0, d, None, Some(b"v"), &[]);
    }
    let mut buf = wrap(
        Compression::None,
        &section,
        deltas.len() as i32,
        last_offset_delta,
    );
    // Create-time batch with maxTimestamp 0, as the records say.
    buf[MAX_TIMESTAMP..MAX_TIMESTAMP + 8].copy_from_slice(&0i64.to_be_bytes());
    recrc(&mut buf);
    buf
}

#[test]
fn sparse_offset_deltas_decode_but_fail_verify() {
    let buf = batch_with_offset_deltas(&[0, 2, 5], 5);
    let offsets: Vec<i64> = decode_all(Bytes::from(buf.clone()))
        .unwrap()
        .iter()
        .map(|r| r.offset)
        .collect();
    assert_eq!(offsets, [0, 2, 5]);
    assert!(matches!(
        Batch::verify(&buf),
        Err(BatchError::LastOffsetDeltaMismatch { .. })
    ));
    let buf = batch_with_offset_deltas(&[0, 2, 1], 2);
    assert!(matches!(
        Batch::verify(&buf),
        Err(BatchError::BadOffsetDelta {
            index: 1,
            offset_delta: 2,
            ..
        })
    ));
    assert!(Batch::verify(&batch_with_offset_deltas(&[0, 1, 2], 2)).is_ok());
}

#[test]
fn decreasing_or_out_of_range_offset_deltas_fail_decode() {
    for (deltas, last, bad_index) in [
        (&[0, 2, 1][..], 2, 2),
        (&[0, 0][..], 1, 1),
        (&[0, 3][..], 2, 1),
        (&[-1][..], 0, 0),
    ] {
        let buf = batch_with_offset_deltas(deltas, last);
        let err = decode_all(Bytes::from(buf)).unwrap_err();
        assert!(
            matches!(err, BatchError::BadOffsetDelta { index, .. } if index == bad_index),
            "{deltas:?}: {err:?}"
        );
    }
}

#[test]
fn offset_overflow_is_an_error_not_a_wrap() {
    let mut buf = batch_with_offset_deltas(&[0, 1], 1);
    stamp_base_offset(&mut buf, i64::MAX);
    let results: Vec<_> = Batch::decode(Bytes::from(buf)).unwrap().records().collect();
    assert_eq!(results[0].as_ref().unwrap().offset, i64::MAX);
    assert_eq!(
        results[1],
        Err(BatchError::OffsetOverflow {
            index: 1,
            base_offset: i64::MAX,
            offset_delta: 1
        })
    );
}

#[test]
fn max_timestamp_mismatch_fails_verify() {
    let mut buf = sample(Compression::None).to_vec();
    buf[MAX_TIMESTAMP..MAX_TIMESTAMP + 8].copy_from_slice(&5i64.to_be_bytes());
    recrc(&mut buf);
    assert_eq!(
        Batch::verify(&buf),
        Err(BatchError::MaxTimestampMismatch {
            declared: 5,
            actual: 1_700_000_000_500
        })
    );
}

#[test]
fn log_append_time_batches_report_max_timestamp_for_every_record() {
    let mut buf = sample(Compression::None).to_vec();
    put_i16(&mut buf, ATTRIBUTES, LOG_APPEND_TIME_FLAG);
    buf[MAX_TIMESTAMP..MAX_TIMESTAMP + 8].copy_from_slice(&42i64.to_be_bytes());
    recrc(&mut buf);
    assert!(Batch::verify(&buf).is_ok());
    let stamps: Vec<i64> = decode_all(Bytes::from(buf))
        .unwrap()
        .iter()
        .map(|r| r.timestamp)
        .collect();
    assert_eq!(stamps, [42, 42, 42]);
}

#[test]
fn gzip_and_snappy_batches_are_unsupported() {
    for (code, name) in [(1i16, "gzip"), (2, "snappy"), (7, "unknown")] {
        let mut buf = sample(Compression::None).to_vec();
        put_i16(&mut buf, ATTRIBUTES, code);
        recrc(&mut buf);
        let want = BatchError::UnsupportedCompression {
            code: code as u8,
            name,
        };
        assert_eq!(Batch::verify(&buf), Err(want.clone()));
        assert_eq!(Batch::decode(Bytes::from(buf)).unwrap_err(), want);
    }
}

#[test]
fn corrupt_compressed_section_is_a_decompression_error() {
    for codec in [Compression::Lz4, Compression::Zstd] {
        // Uncompressed records labelled as compressed.
        let mut buf = sample(Compression::None).to_vec();
        put_i16(&mut buf, ATTRIBUTES, codec.code().into());
        recrc(&mut buf);
        assert!(
            matches!(
                Batch::verify(&buf),
                Err(BatchError::DecompressionFailed { codec: c, .. }) if c == codec
            ),
            "{codec}"
        );
    }
}

#[test]
fn decompressed_size_beyond_the_limit_is_rejected() {
    let value = vec![b'x'; 100_000];
    for codec in [Compression::Lz4, Compression::Zstd] {
        let mut b = BatchBuilder::new(codec);
        for t in 0..10 {
            b.append(t, None, Some(&value), &[]).unwrap();
        }
        let bytes = b.build();
        assert!(bytes.len() < 20_000, "{codec}: {} bytes", bytes.len());
        let want = BatchError::DecompressedTooLarge {
            codec,
            limit: 500_000,
        };
        assert_eq!(Batch::verify_with_limit(&bytes, 500_000), Err(want.clone()));
        assert_eq!(
            Batch::decode_with_limit(bytes.clone(), 500_000).unwrap_err(),
            want
        );
        assert!(Batch::verify_with_limit(&bytes, 2_000_000).is_ok());
    }
}

#[test]
fn varint_overflow_inside_a_record_is_rejected() {
    // One record whose offset delta varint has a 5th byte beyond 32 bits.
    let section = [20u8, 0, 0, 0xff, 0xff, 0xff, 0xff, 0x7f, 1, 1, 0];
    let buf = wrap(Compression::None, &section, 1, 0);
    assert_eq!(
        Batch::verify(&buf),
        Err(BatchError::VarintOverflow {
            record: 0,
            what: "offset delta",
            bits: 32
        })
    );
}

#[test]
fn empty_batch_fails_verify() {
    let buf = wrap(Compression::None, &[], 0, 0);
    assert_eq!(Batch::verify(&buf), Err(BatchError::EmptyBatch));
    assert_eq!(decode_all(Bytes::from(buf)).unwrap(), vec![]);
}

// ---------------------------------------------------------------------------------
// What the broker and consumers rely on
// ---------------------------------------------------------------------------------

#[test]
fn stamping_offset_and_epoch_keeps_the_batch_valid() {
    for codec in Compression::ALL {
        let mut buf = sample(codec).to_vec();
        stamp_base_offset(&mut buf, 1_000);
        stamp_leader_epoch(&mut buf, 7);
        let header = Batch::verify(&buf).unwrap();
        assert_eq!(
            (header.base_offset, header.partition_leader_epoch),
            (1_000, 7)
        );
        let offsets: Vec<i64> = decode_all(Bytes::from(buf))
            .unwrap()
            .iter()
            .map(|r| r.offset)
            .collect();
        assert_eq!(offsets, [1_000, 1_001, 1_002]);
    }
}

#[test]
fn restamping_the_producer_keeps_the_batch_valid() {
    for codec in Compression::ALL {
        let mut buf = sample(codec).to_vec();
        stamp_producer(&mut buf, 42, 3, 1_000);
        let header = Batch::verify(&buf).unwrap();
        assert_eq!(
            (
                header.producer_id,
                header.producer_epoch,
                header.base_sequence
            ),
            (42, 3, 1_000)
        );
        assert_eq!(decode_all(Bytes::from(buf)).unwrap().len(), 3);
    }
}

#[test]
fn uncompressed_records_share_the_input_buffer() {
    let bytes = sample(Compression::None);
    let range = bytes.as_ptr_range();
    let batch = Batch::decode(bytes.clone()).unwrap();
    let first = batch.records().next().unwrap().unwrap();
    for part in [
        first.key.as_ref().unwrap(),
        first.value.as_ref().unwrap(),
        first.headers[0].value.as_ref().unwrap(),
    ] {
        assert!(range.contains(&part.as_ptr()), "copied instead of sliced");
    }
    assert_eq!(batch.as_bytes(), &bytes);
}

#[test]
fn compressed_records_share_one_decompressed_buffer() {
    let batch = Batch::decode(sample(Compression::Zstd)).unwrap();
    let records: Vec<Record> = batch.records().collect::<Result<_, _>>().unwrap();
    let key0 = records[0].key.as_ref().unwrap().as_ptr() as usize;
    let value0 = records[0].value.as_ref().unwrap().as_ptr() as usize;
    // Key and value of one record lie next to each other in the same buffer.
    assert_eq!(value0 - key0, b"user-1".len() + 1);
}

#[test]
fn iteration_stops_after_the_first_error() {
    let mut buf = sample(Compression::None).to_vec();
    // Corrupt the second record's length so it points past the end.
    let first_len = 1 + usize::from(buf[HEADER_LEN]) / 2;
    buf[HEADER_LEN + first_len] = 0x7e; // 63
    recrc(&mut buf);
    let mut records = Batch::decode(Bytes::from(buf)).unwrap().records();
    assert!(records.next().unwrap().is_ok());
    assert!(matches!(
        records.next(),
        Some(Err(BatchError::LengthPastEnd {
            record: 1,
            what: "record",
            ..
        }))
    ));
    assert_eq!(records.next(), None);
    assert_eq!(records.next(), None);
}

#[test]
fn batch_iterates_by_reference() {
    let batch = Batch::decode(sample(Compression::Lz4)).unwrap();
    let mut n = 0;
    for record in &batch {
        assert_eq!(record.unwrap().offset, n);
        n += 1;
    }
    assert_eq!(n, 3);
}

// ---------------------------------------------------------------------------------
// Interop: batches written by other Kafka clients
// ---------------------------------------------------------------------------------
//
// Byte captures of batches produced by librdkafka (and one by the Java client), as
// published in the test suite of the rskafka crate (influxdata/rskafka,
// src/protocol/record.rs). Each holds one record: key `key`, value `value`, header
// foo=bar.

fn librdkafka_uncompressed() -> Vec<u8> {
    [
        &b"\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x4b\x00\x00\x00\x00"[..],
        b"\x02\x27\x24\xfe\xcd\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x61",
        b"\xd5\x9b\x77\x00\x00\x00\x00\x61\xd5\x9b\x77\xff\xff\xff\xff\xff",
        b"\xff\xff\xff\xff\xff\xff\xff\xff\xff\x00\x00\x00\x01\x32\x00\x00",
        b"\x00\x00\x16\x68\x65\x6c\x6c\x6f\x20\x6b\x61\x66\x6b\x61\x02\x06",
        b"\x66\x6f\x6f\x06\x62\x61\x72",
    ]
    .concat()
}

fn librdkafka_lz4() -> Vec<u8> {
    [
        &b"\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x63\x00\x00\x00\x00"[..],
        b"\x02\x1b\xa5\x92\x35\x00\x03\x00\x00\x00\x00\x00\x00\x01\x7e\xb1",
        b"\x1f\xc7\x24\x00\x00\x01\x7e\xb1\x1f\xc7\x24\xff\xff\xff\xff\xff",
        b"\xff\xff\xff\xff\xff\xff\xff\xff\xff\x00\x00\x00\x01\x04\x22\x4d",
        b"\x18\x60\x40\x82\x23\x00\x00\x00\x8f\xfc\x01\x00\x00\x00\xc8\x01",
        b"\x78\x01\x00\x50\xf0\x06\x16\x68\x65\x6c\x6c\x6f\x20\x6b\x61\x66",
        b"\x6b\x61\x02\x06\x66\x6f\x6f\x06\x62\x61\x72\x00\x00\x00\x00",
    ]
    .concat()
}

fn librdkafka_zstd() -> Vec<u8> {
    [
        &b"\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x5d\x00\x00\x00\x00"[..],
        b"\x02\xa1\x6e\x4e\x95\x00\x04\x00\x00\x00\x00\x00\x00\x01\x7e\xbf",
        b"\x78\xf3\xad\x00\x00\x01\x7e\xbf\x78\xf3\xad\xff\xff\xff\xff\xff",
        b"\xff\xff\xff\xff\xff\xff\xff\xff\xff\x00\x00\x00\x01\x28\xb5\x2f",
        b"\xfd\x00\x58\x1d\x01\x00\xe8\xfc\x01\x00\x00\x00\xc8\x01\x78\x16",
        b"\x68\x65\x6c\x6c\x6f\x20\x6b\x61\x66\x6b\x61\x02\x06\x66\x6f\x6f",
        b"\x06\x62\x61\x72\x01\x00\x20\x05\x5c",
    ]
    .concat()
}

fn librdkafka_gzip() -> Vec<u8> {
    [
        &b"\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x64\x00\x00\x00\x00"[..],
        b"\x02\xba\x41\x46\x65\x00\x01\x00\x00\x00\x00\x00\x00\x01\x7e\x90",
        b"\xb3\x34\x67\x00\x00\x01\x7e\x90\xb3\x34\x67\xff\xff\xff\xff\xff",
        b"\xff\xff\xff\xff\xff\xff\xff\xff\xff\x00\x00\x00\x01\x1f\x8b\x08",
        b"\x00\x00\x00\x00\x00\x00\x03\xfb\xc3\xc8\xc0\xc0\x70\x82\xb1\x82",
        b"\x0e\x40\x2c\x23\x35\x27\x27\x5f\x21\x3b\x31\x2d\x3b\x91\x89\x2d",
        b"\x2d\x3f\x9f\x2d\x29\xb1\x08\x00\xe4\xcd\xba\x1f\x80\x00\x00\x00",
    ]
    .concat()
}

fn java_snappy() -> Vec<u8> {
    [
        &b"\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x8c\x00\x00\x00\x00"[..],
        b"\x02\x79\x1e\x2d\xce\x00\x02\x00\x00\x00\x01\x00\x00\x01\x7f\x07",
        b"\x25\x7a\xb1\x00\x00\x01\x7f\x07\x25\x7a\xb1\xff\xff\xff\xff\xff",
        b"\xff\xff\xff\xff\xff\xff\xff\xff\xff\x00\x00\x00\x02\x82\x53\x4e",
        b"\x41\x50\x50\x59\x00\x00\x00\x00\x01\x00\x00\x00\x01\x00\x00\x00",
        b"\x47\xff\x01\x1c\xfc\x01\x00\x00\x00\xc8\x01\x78\xfe\x01\x00\x8a",
        b"\x01\x00\x64\x16\x68\x65\x6c\x6c\x6f\x20\x6b\x61\x66\x6b\x61\x02",
        b"\x06\x66\x6f\x6f\x06\x62\x61\x72\xfa\x01\x00\x00\x02\xfe\x80\x00",
        b"\x96\x80\x00\x4c\x14\x73\x6f\x6d\x65\x20\x76\x61\x6c\x75\x65\x02",
        b"\x06\x66\x6f\x6f\x06\x62\x61\x72",
    ]
    .concat()
}

fn assert_one_hello_kafka_record(buf: &[u8], codec: Compression, key: &[u8], timestamp: i64) {
    let header = Batch::verify(buf).unwrap_or_else(|e| panic!("{codec}: {e}"));
    assert_eq!(header.record_count, 1);
    let batch = Batch::decode(Bytes::copy_from_slice(buf)).unwrap();
    assert_eq!(batch.compression(), codec);
    let records = batch.records().collect::<Result<Vec<_>, _>>().unwrap();
    assert_eq!(
        records,
        vec![Record {
            offset: 0,
            timestamp,
            key: Some(Bytes::copy_from_slice(key)),
            value: Some(Bytes::from_static(b"hello kafka")),
            headers: vec![Header::new("foo", Some(Bytes::from_static(b"bar")))],
        }]
    );
}

#[test]
fn decodes_batches_written_by_librdkafka() {
    assert_one_hello_kafka_record(
        &librdkafka_uncompressed(),
        Compression::None,
        b"",
        1_641_388_919,
    );
    assert_one_hello_kafka_record(
        &librdkafka_lz4(),
        Compression::Lz4,
        &[b'x'; 100],
        1_643_649_156_900,
    );
    assert_one_hello_kafka_record(
        &librdkafka_zstd(),
        Compression::Zstd,
        &[b'x'; 100],
        1_643_889_882_029,
    );
}

#[test]
fn encodes_byte_for_byte_what_librdkafka_writes() {
    let mut b = BatchBuilder::new(Compression::None);
    b.append(
        1_641_388_919,
        Some(b""),
        Some(b"hello kafka"),
        &[Header::new("foo", Some(Bytes::from_static(b"bar")))],
    )
    .unwrap();
    let mut ours = b.build().to_vec();
    // librdkafka leaves partitionLeaderEpoch 0; it lies outside the CRC.
    stamp_leader_epoch(&mut ours, 0);
    assert_eq!(ours, librdkafka_uncompressed());
}

#[test]
fn gzip_and_snappy_batches_from_other_clients_are_refused_by_name() {
    assert_eq!(
        Batch::verify(&librdkafka_gzip()),
        Err(BatchError::UnsupportedCompression {
            code: 1,
            name: "gzip"
        })
    );
    assert_eq!(
        Batch::verify(&java_snappy()),
        Err(BatchError::UnsupportedCompression {
            code: 2,
            name: "snappy"
        })
    );
}
