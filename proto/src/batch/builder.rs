//! Building batches: [`BatchBuilder`] encodes records into exactly Kafka's RecordBatch
//! v2 bytes, compresses the records section, and stamps the CRC-32C.
//!
//! This module owns the producer side of the format. Records are encoded the moment
//! they are appended, so [`BatchBuilder::encoded_len`] is exact and costs nothing; the
//! header is written last, into bytes reserved at the front, so an uncompressed build
//! copies nothing. It never produces a batch that [`Batch::verify`] would reject
//! (except the empty batch, which it documents), never emits offsets other than 0, and
//! never panics: a record that would push the batch past [`MAX_BATCH_BYTES`] is refused.
//!
//! [`Batch::verify`]: super::Batch::verify

use bytes::Bytes;

use super::compression::{Compression, compress_into};
use super::error::BatchError;
use super::header::{
    ATTRIBUTES, BASE_OFFSET, BASE_SEQUENCE, BASE_TIMESTAMP, BATCH_LENGTH, CRC, HEADER_LEN,
    LAST_OFFSET_DELTA, LEADER_EPOCH, LOG_OVERHEAD, MAGIC, MAGIC_POS, MAX_TIMESTAMP, NO_PRODUCER_ID,
    NO_TIMESTAMP, PRODUCER_EPOCH, PRODUCER_ID, RECORD_COUNT, checksum,
};
use super::record::{Header, body_len, framed_len, put_record};

/// Largest batch the builder will produce, header included, before compression:
/// 1 GiB. Far above any sensible batch, and far enough below `i32::MAX` that neither
/// codec's worst-case expansion can overflow `batchLength`.
pub const MAX_BATCH_BYTES: usize = 1 << 30;

/// Encodes records into one RecordBatch v2.
///
/// ```
/// use bytes::Bytes;
/// use sluice_proto::batch::{Batch, BatchBuilder, Compression, Header};
///
/// let mut builder = BatchBuilder::new(Compression::Lz4);
/// builder.append(1_700_000_000_000, Some(b"key"), Some(b"value"), &[])?;
/// builder.append(
///     1_700_000_000_001,
///     None,
///     Some(b"v2"),
///     &[Header::new("trace", Some(Bytes::from_static(b"abc")))],
/// )?;
/// let bytes = builder.build();
/// assert_eq!(Batch::verify(&bytes)?.record_count, 2);
/// let batch = Batch::decode(bytes)?;
/// let records: Vec<_> = batch.records().collect::<Result<_, _>>()?;
/// assert_eq!(records[1].value.as_deref(), Some(&b"v2"[..]));
/// # Ok::<(), sluice_proto::batch::BatchError>(())
/// ```
#[derive(Debug, Clone)]
pub struct BatchBuilder {
    compression: Compression,
    producer_id: i64,
    producer_epoch: i16,
    base_sequence: i32,
    base_timestamp: i64,
    max_timestamp: i64,
    count: i32,
    /// `HEADER_LEN` reserved bytes, then the uncompressed records section.
    buf: Vec<u8>,
}

impl Default for BatchBuilder {
    fn default() -> Self {
        Self::new(Compression::None)
    }
}

impl BatchBuilder {
    /// An empty builder using `compression`, with no idempotent producer
    /// (producer id, epoch and base sequence all -1).
    pub fn new(compression: Compression) -> Self {
        Self::with_capacity(compression, 0)
    }

    /// Like [`BatchBuilder::new`], with room for `bytes` of records reserved up front.
    pub fn with_capacity(compression: Compression, bytes: usize) -> Self {
        let mut buf = Vec::with_capacity(HEADER_LEN + bytes.min(MAX_BATCH_BYTES));
        buf.resize(HEADER_LEN, 0);
        Self {
            compression,
            producer_id: NO_PRODUCER_ID,
            producer_epoch: NO_PRODUCER_ID as i16,
            base_sequence: NO_PRODUCER_ID as i32,
            base_timestamp: NO_TIMESTAMP,
            max_timestamp: NO_TIMESTAMP,
            count: 0,
            buf,
        }
    }

    /// Sets the idempotent producer fields written into the header.
    pub fn producer(mut self, producer_id: i64, producer_epoch: i16, base_sequence: i32) -> Self {
        self.producer_id = producer_id;
        self.producer_epoch = producer_epoch;
        self.base_sequence = base_sequence;
        self
    }

    /// The codec `build` will use.
    pub fn compression(&self) -> Compression {
        self.compression
    }

    /// Records appended so far.
    pub fn len(&self) -> usize {
        self.count as usize
    }

    /// Whether no record has been appended.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Bytes of the batch built now, before compression: exact for
    /// [`Compression::None`], an upper bound in practice for lz4 and zstd.
    pub fn encoded_len(&self) -> usize {
        self.buf.len()
    }

    /// What [`BatchBuilder::encoded_len`] would be after appending this record, so a
    /// producer can decide whether it still fits before appending it.
    pub fn encoded_len_with(
        &self,
        timestamp: i64,
        key: Option<&[u8]>,
        value: Option<&[u8]>,
        headers: &[Header],
    ) -> usize {
        let body = body_len(
            self.timestamp_delta(timestamp),
            self.count,
            key,
            value,
            headers,
        );
        self.buf.len().saturating_add(framed_len(body))
    }

    fn timestamp_delta(&self, timestamp: i64) -> i64 {
        if self.count == 0 {
            0
        } else {
            // Wrapping, as in Kafka: base + delta wraps back to exactly `timestamp`.
            timestamp.wrapping_sub(self.base_timestamp)
        }
    }

    /// Appends a record. The first record's timestamp becomes the batch's base
    /// timestamp; later ones may be earlier or later. Fails only if the batch would
    /// exceed [`MAX_BATCH_BYTES`], in which case nothing is appended.
    pub fn append(
        &mut self,
        timestamp: i64,
        key: Option<&[u8]>,
        value: Option<&[u8]>,
        headers: &[Header],
    ) -> Result<(), BatchError> {
        let timestamp_delta = self.timestamp_delta(timestamp);
        let body = body_len(timestamp_delta, self.count, key, value, headers);
        let new_len = self.buf.len().saturating_add(framed_len(body));
        if new_len > MAX_BATCH_BYTES {
            return Err(BatchError::TooLarge {
                what: "batch",
                len: new_len,
                max: MAX_BATCH_BYTES,
            });
        }
        put_record(
            &mut self.buf,
            body,
            timestamp_delta,
            self.count,
            key,
            value,
            headers,
        );
        if self.count == 0 {
            self.base_timestamp = timestamp;
            self.max_timestamp = timestamp;
        } else {
            self.max_timestamp = self.max_timestamp.max(timestamp);
        }
        // Cannot overflow: every record takes at least 7 bytes of MAX_BATCH_BYTES.
        self.count += 1;
        Ok(())
    }

    /// Finishes the batch: base offset 0, partition leader epoch -1, create-time
    /// timestamps, the chosen codec, and the CRC-32C.
    ///
    /// An empty builder yields a batch with no records and `lastOffsetDelta` 0, which
    /// decodes to nothing and which [`super::Batch::verify`] rejects: do not send it.
    /// If the compression library fails (it can only fail to allocate), the batch is
    /// stored uncompressed, which every reader accepts.
    pub fn build(self) -> Bytes {
        let (mut out, codec) = match self.compression {
            Compression::None => (self.buf, Compression::None),
            codec => {
                let records = &self.buf[HEADER_LEN..];
                let mut out = Vec::with_capacity(HEADER_LEN + records.len() / 2 + 64);
                out.resize(HEADER_LEN, 0);
                match compress_into(codec, records, &mut out) {
                    Ok(()) if out.len() <= i32::MAX as usize => (out, codec),
                    _ => (self.buf, Compression::None),
                }
            }
        };
        let batch_length = (out.len() - LOG_OVERHEAD) as i32;
        let last_offset_delta = (self.count - 1).max(0);
        let h = &mut out[..HEADER_LEN];
        h[BASE_OFFSET..BASE_OFFSET + 8].copy_from_slice(&0i64.to_be_bytes());
        h[BATCH_LENGTH..BATCH_LENGTH + 4].copy_from_slice(&batch_length.to_be_bytes());
        h[LEADER_EPOCH..LEADER_EPOCH + 4].copy_from_slice(&(-1i32).to_be_bytes());
        h[MAGIC_POS] = MAGIC;
        h[ATTRIBUTES..ATTRIBUTES + 2].copy_from_slice(&i16::from(codec.code()).to_be_bytes());
        h[LAST_OFFSET_DELTA..LAST_OFFSET_DELTA + 4]
            .copy_from_slice(&last_offset_delta.to_be_bytes());
        h[BASE_TIMESTAMP..BASE_TIMESTAMP + 8].copy_from_slice(&self.base_timestamp.to_be_bytes());
        h[MAX_TIMESTAMP..MAX_TIMESTAMP + 8].copy_from_slice(&self.max_timestamp.to_be_bytes());
        h[PRODUCER_ID..PRODUCER_ID + 8].copy_from_slice(&self.producer_id.to_be_bytes());
        h[PRODUCER_EPOCH..PRODUCER_EPOCH + 2].copy_from_slice(&self.producer_epoch.to_be_bytes());
        h[BASE_SEQUENCE..BASE_SEQUENCE + 4].copy_from_slice(&self.base_sequence.to_be_bytes());
        h[RECORD_COUNT..RECORD_COUNT + 4].copy_from_slice(&self.count.to_be_bytes());
        let crc = checksum(&out);
        out[CRC..CRC + 4].copy_from_slice(&crc.to_be_bytes());
        Bytes::from(out)
    }
}

#[cfg(test)]
mod tests {
    use super::super::{Batch, BatchHeader};
    use super::*;

    #[test]
    fn empty_builder_has_header_size_and_no_records() {
        let b = BatchBuilder::default();
        assert!(b.is_empty());
        assert_eq!(b.len(), 0);
        assert_eq!(b.encoded_len(), HEADER_LEN);
        let bytes = b.build();
        assert_eq!(bytes.len(), HEADER_LEN);
        let batch = Batch::decode(bytes.clone()).unwrap();
        assert_eq!(batch.records().count(), 0);
        assert_eq!(Batch::verify(&bytes), Err(BatchError::EmptyBatch));
    }

    #[test]
    fn header_fields_follow_kafka_defaults_and_producer_settings() {
        let mut b = BatchBuilder::new(Compression::Zstd).producer(42, 7, 1000);
        b.append(500, Some(b"a"), None, &[]).unwrap();
        b.append(300, None, Some(b"b"), &[]).unwrap();
        b.append(900, None, None, &[]).unwrap();
        let bytes = b.build();
        let h = BatchHeader::parse(&bytes).unwrap();
        assert_eq!(h.base_offset, 0);
        assert_eq!(h.partition_leader_epoch, -1);
        assert_eq!(h.magic, 2);
        assert_eq!(h.attributes, 4);
        assert_eq!(h.last_offset_delta, 2);
        assert_eq!(h.base_timestamp, 500);
        assert_eq!(h.max_timestamp, 900);
        assert_eq!(
            (h.producer_id, h.producer_epoch, h.base_sequence),
            (42, 7, 1000)
        );
        assert_eq!(h.record_count, 3);
        assert_eq!(h.crc, checksum(&bytes));
        assert_eq!(h.total_len(), bytes.len());
    }

    #[test]
    fn default_producer_fields_are_minus_one() {
        let mut b = BatchBuilder::new(Compression::None);
        b.append(1, None, None, &[]).unwrap();
        let h = BatchHeader::parse(&b.build()).unwrap();
        assert_eq!(
            (h.producer_id, h.producer_epoch, h.base_sequence),
            (-1, -1, -1)
        );
    }

    #[test]
    fn encoded_len_is_exact_for_uncompressed_batches() {
        let mut b = BatchBuilder::new(Compression::None);
        let headers = [Header::new("k", Some(Bytes::from_static(b"v")))];
        for i in 0..100i64 {
            let key = i.to_string();
            let predicted = b.encoded_len_with(
                i * 1000 - 50_000,
                Some(key.as_bytes()),
                Some(&[7; 300]),
                &headers,
            );
            b.append(
                i * 1000 - 50_000,
                Some(key.as_bytes()),
                Some(&[7; 300]),
                &headers,
            )
            .unwrap();
            assert_eq!(b.encoded_len(), predicted);
        }
        let len = b.encoded_len();
        assert_eq!(b.build().len(), len);
    }

    #[test]
    fn matches_a_hand_encoded_kafka_batch() {
        // One record, key "k", value "v", timestamp 1000, no headers.
        let mut b = BatchBuilder::new(Compression::None);
        b.append(1000, Some(b"k"), Some(b"v"), &[]).unwrap();
        let bytes = b.build();
        let mut want = Vec::new();
        want.extend_from_slice(&0i64.to_be_bytes()); // baseOffset
        want.extend_from_slice(&58i32.to_be_bytes()); // batchLength = 70 - 12
        want.extend_from_slice(&(-1i32).to_be_bytes()); // partitionLeaderEpoch
        want.push(2); // magic
        want.extend_from_slice(&[0; 4]); // crc, patched below
        want.extend_from_slice(&0i16.to_be_bytes()); // attributes
        want.extend_from_slice(&0i32.to_be_bytes()); // lastOffsetDelta
        want.extend_from_slice(&1000i64.to_be_bytes()); // baseTimestamp
        want.extend_from_slice(&1000i64.to_be_bytes()); // maxTimestamp
        want.extend_from_slice(&(-1i64).to_be_bytes()); // producerId
        want.extend_from_slice(&(-1i16).to_be_bytes()); // producerEpoch
        want.extend_from_slice(&(-1i32).to_be_bytes()); // baseSequence
        want.extend_from_slice(&1i32.to_be_bytes()); // records count
        want.extend_from_slice(&[16, 0, 0, 0, 2, b'k', 2, b'v', 0]); // record, length 8
        let crc = crc32c::crc32c(&want[21..]);
        want[17..21].copy_from_slice(&crc.to_be_bytes());
        assert_eq!(&bytes[..], &want[..]);
    }

    #[test]
    fn extreme_timestamps_round_trip_through_wrapping_deltas() {
        for codec in Compression::ALL {
            let mut b = BatchBuilder::new(codec);
            let stamps = [i64::MAX, i64::MIN, 0, -1, i64::MIN + 1];
            for ts in stamps {
                b.append(ts, None, None, &[]).unwrap();
            }
            let bytes = b.build();
            assert_eq!(Batch::verify(&bytes).unwrap().max_timestamp, i64::MAX);
            let got: Vec<i64> = Batch::decode(bytes)
                .unwrap()
                .records()
                .map(|r| r.unwrap().timestamp)
                .collect();
            assert_eq!(got, stamps);
        }
    }

    #[test]
    fn record_that_would_exceed_the_batch_limit_is_refused_and_not_appended() {
        let mut b = BatchBuilder::new(Compression::None);
        // Fake a nearly full builder cheaply: only the length matters for the check.
        b.buf.resize(MAX_BATCH_BYTES - 10, 0);
        let err = b.append(0, None, Some(&[0; 16]), &[]).unwrap_err();
        assert!(matches!(
            err,
            BatchError::TooLarge {
                what: "batch",
                max: MAX_BATCH_BYTES,
                ..
            }
        ));
        assert_eq!(b.len(), 0);
        assert_eq!(b.encoded_len(), MAX_BATCH_BYTES - 10);
    }
}
