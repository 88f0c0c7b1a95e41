//! The record accumulator: per-partition queues of batches waiting to be sent.
//!
//! Pure bookkeeping, no I/O and no clock of its own (every method takes `now`), so
//! it is unit-tested directly. It owns:
//! - appending a record to its partition's open batch, or sealing that batch and
//!   opening a new one when the record would push it past `batch_bytes`;
//! - deciding which batches are ready: sealed (full, or followed by a newer batch),
//!   older than `linger`, covered by a `flush`, or the producer is closing — and
//!   handing them out while the partition has fewer than `max_in_flight` requests
//!   outstanding and is not backing off after a failure;
//! - taking failed batches back in their original order (by batch id) for a retry;
//! - for an idempotent producer, stamping each batch with the producer id, the
//!   partition's epoch and its first record's sequence number as it is first sent,
//!   and re-stamping batches left over from an epoch the producer abandoned;
//! - tracking which batches are incomplete, for `flush`;
//! - expiring batches that waited longer than the delivery timeout.

use std::collections::{BTreeSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use foldhash::HashMap;
use sluice_proto::batch::header::stamp_producer;
use sluice_proto::batch::{BatchBuilder, Compression, Header};
use tokio::sync::OwnedSemaphorePermit;
use tokio::sync::oneshot;

use crate::error::{ClientError, Result};
use crate::producer::RecordMetadata;

/// What the accumulator needs of a record.
#[derive(Debug, Clone)]
pub(crate) struct RecordData {
    pub timestamp: i64,
    pub key: Option<Bytes>,
    pub value: Option<Bytes>,
    pub headers: Vec<Header>,
}

/// One record's place in a batch: its timestamp and where its result goes.
#[derive(Debug)]
struct PendingRecord {
    timestamp: i64,
    delivery: Delivery,
}

/// A callback given a record's outcome, on the producer's background task.
pub(crate) type Callback = Box<dyn FnOnce(Result<RecordMetadata>) + Send>;

/// Where a record's outcome goes: its [`crate::producer::DeliveryFuture`], or a
/// callback (no future to poll per record, for callers that send very many).
pub(crate) enum Delivery {
    Future(oneshot::Sender<Result<RecordMetadata>>),
    Callback(Callback),
}

impl Delivery {
    fn deliver(self, outcome: Result<RecordMetadata>) {
        match self {
            // The caller may have dropped its delivery future; that is fine.
            Self::Future(tx) => {
                let _ = tx.send(outcome);
            }
            // A panicking callback must not take the producer's task down with it.
            Self::Callback(f) => {
                let ran = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(outcome)));
                if ran.is_err() {
                    tracing::error!("a producer delivery callback panicked");
                }
            }
        }
    }
}

impl From<oneshot::Sender<Result<RecordMetadata>>> for Delivery {
    fn from(tx: oneshot::Sender<Result<RecordMetadata>>) -> Self {
        Self::Future(tx)
    }
}

impl std::fmt::Debug for Delivery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Future(_) => "Future",
            Self::Callback(_) => "Callback",
        })
    }
}

/// Offset reported for records produced with `Acks::None`: the broker does not say.
pub const UNKNOWN_OFFSET: u64 = u64::MAX;

/// A batch of records for one partition, from creation until it is acknowledged or
/// failed. Dropping it releases its buffer memory.
#[derive(Debug)]
pub(crate) struct ProducerBatch {
    pub id: u64,
    pub topic: Arc<str>,
    pub partition: u32,
    builder: Option<BatchBuilder>,
    payload: Option<Bytes>,
    records: Vec<PendingRecord>,
    pub created: Instant,
    /// Still taking records (only the newest batch of a partition can be).
    open: bool,
    /// Times this batch has been sent and failed.
    pub attempts: u32,
    /// Idempotent produce: the epoch and first sequence number it was stamped with.
    pub stamp: Option<(i16, i32)>,
    /// An attempt failed without proof that nothing was stored (see
    /// [`ClientError::proves_not_stored`]), so the batch may be in the log under its
    /// stamp. Such a batch is never re-stamped: under a new epoch it would be stored
    /// a second time.
    pub maybe_stored: bool,
    memory: Option<OwnedSemaphorePermit>,
}

impl ProducerBatch {
    /// Number of records.
    pub fn len(&self) -> usize {
        self.records.len()
    }

    /// The encoded batch, built (and compressed) on first use; a retry re-sends the
    /// same bytes.
    pub fn payload(&mut self) -> Bytes {
        if let Some(builder) = self.builder.take() {
            self.payload = Some(builder.build());
        }
        self.payload.clone().unwrap_or_default()
    }

    /// Stamps the batch for idempotent produce. Before the first send this goes into
    /// the builder; a built batch is copied and its CRC recomputed.
    fn stamp_with(&mut self, producer_id: i64, epoch: i16, first_seq: i32) {
        if let Some(builder) = self.builder.take() {
            self.builder = Some(builder.producer(producer_id, epoch, first_seq));
        } else if let Some(payload) = &self.payload {
            let mut buf = payload.to_vec();
            stamp_producer(&mut buf, producer_id, epoch, first_seq);
            self.payload = Some(Bytes::from(buf));
        }
        self.stamp = Some((epoch, first_seq));
    }

    /// Bytes the records take before compression (as counted against `batch_bytes`).
    pub fn encoded_len(&self) -> usize {
        match (&self.builder, &self.payload) {
            (Some(b), _) => b.encoded_len(),
            (None, Some(p)) => p.len(),
            (None, None) => 0,
        }
    }

    /// Completes every record: offsets `base_offset..` on success (or
    /// [`UNKNOWN_OFFSET`] for all when `base_offset` is unknown), or the error.
    pub fn complete(self, result: Result<u64>) {
        let topic = self.topic;
        for (i, record) in self.records.into_iter().enumerate() {
            let outcome = match &result {
                Ok(base) => Ok(RecordMetadata {
                    topic: topic.clone(),
                    partition: self.partition,
                    offset: if *base == UNKNOWN_OFFSET {
                        UNKNOWN_OFFSET
                    } else {
                        base.saturating_add(i as u64)
                    },
                    timestamp: record.timestamp,
                }),
                Err(e) => Err(e.clone()),
            };
            record.delivery.deliver(outcome);
        }
        drop(self.memory);
    }
}

#[derive(Debug, Default)]
struct PartitionQueue {
    batches: VecDeque<ProducerBatch>,
    in_flight: usize,
    backoff_until: Option<Instant>,
    /// Idempotent produce: epochs this partition moved past the producer's own
    /// (after a batch failed for good), and the next record's sequence number.
    epoch_bumps: i16,
    next_seq: i32,
}

/// An idempotent producer's identity, from the cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ProducerId {
    pub id: i64,
    pub epoch: i16,
}

/// Outcome of [`Accumulator::append`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Appended {
    /// The record started a new batch (the sender must schedule its linger).
    pub new_batch: bool,
    /// The record's batch reached `batch_bytes` and is ready to send.
    pub full: bool,
}

/// Per-partition batch queues. See the module docs.
#[derive(Debug)]
pub(crate) struct Accumulator {
    batch_bytes: usize,
    linger: Duration,
    compression: Compression,
    topics: HashMap<Arc<str>, HashMap<u32, PartitionQueue>>,
    next_id: u64,
    /// Batches with a smaller id are ready regardless of linger.
    flush_below: u64,
    closing: bool,
    /// Ids of batches neither acknowledged nor failed (queued or in flight).
    incomplete: BTreeSet<u64>,
    /// Set once an idempotent producer has its id; batches are stamped from then on.
    producer: Option<ProducerId>,
}

impl Accumulator {
    pub fn new(batch_bytes: usize, linger: Duration, compression: Compression) -> Self {
        Self {
            batch_bytes,
            linger,
            compression,
            topics: HashMap::default(),
            next_id: 0,
            flush_below: 0,
            closing: false,
            incomplete: BTreeSet::new(),
            producer: None,
        }
    }

    /// From now on, batches are stamped as they are first sent (idempotent produce).
    pub fn set_producer(&mut self, producer: ProducerId) {
        self.producer = Some(producer);
    }

    pub fn producer(&self) -> Option<ProducerId> {
        self.producer
    }

    /// The epoch a partition's batches are stamped with now.
    pub fn epoch_of(&self, topic: &str, partition: u32) -> Option<i16> {
        let base = self.producer?.epoch;
        let bumps = self.queue(topic, partition).map_or(0, |q| q.epoch_bumps);
        Some(base.saturating_add(bumps))
    }

    /// Whether `batch` carries a stamp of an epoch its partition has since left.
    pub fn stamped_in_abandoned_epoch(&self, batch: &ProducerBatch) -> bool {
        let current = self.epoch_of(&batch.topic, batch.partition);
        matches!((batch.stamp, current), (Some((e, _)), Some(c)) if e < c)
    }

    /// Abandons the partition's current epoch: a batch of it failed for good, so its
    /// sequence has a gap the broker would never accept past. Later batches (and
    /// retries of batches the broker refused) are re-stamped from sequence 0 under
    /// the next epoch. Returns the queued batches that may already be stored under
    /// the epoch left behind: they can be neither resent as they are (the broker has
    /// moved on) nor re-stamped (a second copy), so the caller fails them.
    #[must_use = "stranded batches must be completed"]
    pub fn bump_epoch(&mut self, topic: &str, partition: u32) -> Vec<ProducerBatch> {
        let q = self.queue_mut(topic, partition);
        q.epoch_bumps = q.epoch_bumps.saturating_add(1);
        q.next_seq = 0;
        let (stranded, keep): (VecDeque<_>, VecDeque<_>) = std::mem::take(&mut q.batches)
            .into_iter()
            .partition(|b| b.maybe_stored && b.stamp.is_some());
        q.batches = keep;
        for b in &stranded {
            self.incomplete.remove(&b.id);
        }
        stranded.into()
    }

    fn queue(&self, topic: &str, partition: u32) -> Option<&PartitionQueue> {
        self.topics.get(topic)?.get(&partition)
    }

    fn queue_mut(&mut self, topic: &str, partition: u32) -> &mut PartitionQueue {
        queue_in(&mut self.topics, topic, partition)
    }

    fn fits(&self, batch: &ProducerBatch, rec: &RecordData) -> bool {
        fits(batch, rec, self.batch_bytes)
    }

    /// Whether appending `rec` to the partition would start a new batch (no open
    /// batch, or the record does not fit in it). Sticky partitioning switches
    /// partitions exactly then.
    pub fn needs_new_batch(&self, topic: &str, partition: u32, rec: &RecordData) -> bool {
        match self.queue(topic, partition).and_then(|q| q.batches.back()) {
            Some(last) => !self.fits(last, rec),
            None => true,
        }
    }

    /// Appends a record to its partition's open batch, or to a new one. `memory`
    /// is the record's share of buffer memory, held until the batch completes.
    pub fn append(
        &mut self,
        topic: &str,
        partition: u32,
        rec: RecordData,
        memory: Option<OwnedSemaphorePermit>,
        delivery: impl Into<Delivery>,
        now: impl FnOnce() -> Instant,
    ) -> Result<Appended> {
        let batch_bytes = self.batch_bytes;
        let pending = PendingRecord {
            timestamp: rec.timestamp,
            delivery: delivery.into(),
        };
        // One map lookup per record: this is the hot path of every send.
        let q = queue_in(&mut self.topics, topic, partition);
        if let Some(batch) = q.batches.back_mut()
            && fits(batch, &rec, batch_bytes)
        {
            push_record(batch, &rec, pending, memory)?;
            let full = batch.encoded_len() >= batch_bytes;
            if full {
                batch.open = false;
            }
            return Ok(Appended {
                new_batch: false,
                full,
            });
        }
        let id = self.next_id;
        let mut batch = ProducerBatch {
            id,
            topic: self
                .topics
                .get_key_value(topic)
                .map(|(k, _)| k.clone())
                .unwrap_or_else(|| Arc::from(topic)),
            partition,
            builder: Some(BatchBuilder::with_capacity(
                self.compression,
                batch_bytes.min(1 << 20),
            )),
            payload: None,
            records: Vec::new(),
            created: now(),
            open: true,
            attempts: 0,
            stamp: None,
            maybe_stored: false,
            memory: None,
        };
        push_record(&mut batch, &rec, pending, memory)?;
        self.next_id += 1;
        self.incomplete.insert(id);
        let full = batch.encoded_len() >= batch_bytes;
        batch.open = !full;
        let q = self.queue_mut(topic, partition);
        if let Some(last) = q.batches.back_mut() {
            last.open = false;
        }
        q.batches.push_back(batch);
        Ok(Appended {
            new_batch: true,
            full,
        })
    }

    /// Hands out every batch that is ready and whose partition may send: fewer than
    /// `max_in_flight` requests outstanding, not backing off. Counts them as in
    /// flight. Also returns when the next batch becomes ready by itself (linger or
    /// back-off expiry), if any is waiting.
    pub fn drain_ready(
        &mut self,
        now: Instant,
        max_in_flight: usize,
    ) -> (Vec<ProducerBatch>, Option<Instant>) {
        let mut out = Vec::new();
        let mut next: Option<Instant> = None;
        let mut wake_at = |t: Instant| next = Some(next.map_or(t, |n: Instant| n.min(t)));
        let (linger, flush_below, closing) = (self.linger, self.flush_below, self.closing);
        let producer = self.producer;
        for q in self.topics.values_mut().flat_map(|t| t.values_mut()) {
            if q.batches.is_empty() {
                continue;
            }
            match q.backoff_until {
                Some(until) if until > now => {
                    wake_at(until);
                    continue;
                }
                _ => q.backoff_until = None,
            }
            while q.in_flight < max_in_flight {
                let Some(front) = q.batches.front() else {
                    break;
                };
                let linger_end = front.created + linger;
                let ready = !front.open || now >= linger_end || front.id < flush_below || closing;
                if !ready {
                    wake_at(linger_end);
                    break;
                }
                let Some(mut batch) = q.batches.pop_front() else {
                    break;
                };
                batch.open = false;
                if let Some(p) = producer {
                    stamp_for_send(q, &mut batch, p);
                }
                q.in_flight += 1;
                out.push(batch);
            }
        }
        (out, next)
    }

    /// Takes back a batch whose send failed (or could not be attempted), in batch-id
    /// order before anything newer, and holds the partition back until `retry_at`.
    pub fn requeue(&mut self, batch: ProducerBatch, retry_at: Instant) {
        let q = self.queue_mut(&batch.topic.clone(), batch.partition);
        q.in_flight = q.in_flight.saturating_sub(1);
        q.backoff_until = Some(q.backoff_until.map_or(retry_at, |t| t.max(retry_at)));
        let at = q.batches.partition_point(|b| b.id < batch.id);
        q.batches.insert(at, batch);
    }

    /// Records that an in-flight batch finished (acknowledged or failed for good).
    pub fn complete(&mut self, topic: &str, partition: u32, id: u64) {
        if let Some(q) = self
            .topics
            .get_mut(topic)
            .and_then(|t| t.get_mut(&partition))
        {
            q.in_flight = q.in_flight.saturating_sub(1);
        }
        self.incomplete.remove(&id);
    }

    /// Removes queued (not in-flight) batches created at or before `deadline`.
    pub fn expire(&mut self, created_before: Instant) -> Vec<ProducerBatch> {
        let mut out = Vec::new();
        for q in self.topics.values_mut().flat_map(|t| t.values_mut()) {
            let (old, keep): (VecDeque<_>, VecDeque<_>) = std::mem::take(&mut q.batches)
                .into_iter()
                .partition(|b| b.created <= created_before);
            q.batches = keep;
            out.extend(old);
        }
        for b in &out {
            self.incomplete.remove(&b.id);
        }
        out
    }

    /// The creation time of the oldest queued (not in-flight) batch.
    pub fn oldest_queued(&self) -> Option<Instant> {
        self.topics
            .values()
            .flat_map(|t| t.values())
            .filter_map(|q| q.batches.front().map(|b| b.created))
            .min()
    }

    /// Makes every batch that exists now ready; returns the mark to pass to
    /// [`Accumulator::is_flushed`].
    pub fn begin_flush(&mut self) -> u64 {
        self.flush_below = self.next_id;
        self.next_id
    }

    /// Whether every batch created before the mark is complete.
    pub fn is_flushed(&self, mark: u64) -> bool {
        self.incomplete.range(..mark).next().is_none()
    }

    /// From now on every batch is ready at once.
    pub fn set_closing(&mut self) {
        self.closing = true;
    }

    pub fn is_closing(&self) -> bool {
        self.closing
    }

    /// No batch is queued or in flight.
    pub fn is_idle(&self) -> bool {
        self.incomplete.is_empty()
    }
}

/// Gives a batch its sequence numbers on its first send, or again if it was stamped
/// under an epoch the partition has since abandoned; a retry in the current epoch
/// keeps its stamp (the broker recognizes it).
fn stamp_for_send(q: &mut PartitionQueue, batch: &mut ProducerBatch, p: ProducerId) {
    let epoch = p.epoch.saturating_add(q.epoch_bumps);
    if batch.stamp.is_some_and(|(e, _)| e == epoch) {
        return;
    }
    let records = i32::try_from(batch.len()).unwrap_or(i32::MAX);
    if q.next_seq.checked_add(records).is_none() {
        // Sequences do not wrap: start a new epoch instead.
        q.epoch_bumps = q.epoch_bumps.saturating_add(1);
        q.next_seq = 0;
        return stamp_for_send(q, batch, p);
    }
    batch.stamp_with(p.id, epoch, q.next_seq);
    q.next_seq += records;
}

/// The queue of `topic`/`partition` in `topics`, created if missing.
fn queue_in<'a>(
    topics: &'a mut HashMap<Arc<str>, HashMap<u32, PartitionQueue>>,
    topic: &str,
    partition: u32,
) -> &'a mut PartitionQueue {
    if !topics.contains_key(topic) {
        topics.insert(Arc::from(topic), HashMap::default());
    }
    match topics.get_mut(topic) {
        Some(t) => t.entry(partition).or_default(),
        None => unreachable!("inserted above"),
    }
}

/// Whether `rec` may join `batch`: it is open and either empty or `rec` keeps it
/// within `batch_bytes`.
fn fits(batch: &ProducerBatch, rec: &RecordData, batch_bytes: usize) -> bool {
    match &batch.builder {
        Some(b) if batch.open => {
            b.is_empty()
                || b.encoded_len_with(
                    rec.timestamp,
                    rec.key.as_deref(),
                    rec.value.as_deref(),
                    &rec.headers,
                ) <= batch_bytes
        }
        _ => false,
    }
}

fn push_record(
    batch: &mut ProducerBatch,
    rec: &RecordData,
    pending: PendingRecord,
    memory: Option<OwnedSemaphorePermit>,
) -> Result<()> {
    let Some(builder) = batch.builder.as_mut() else {
        return Err(ClientError::InvalidArgument(
            "internal: append to a sealed batch".into(),
        ));
    };
    builder
        .append(
            rec.timestamp,
            rec.key.as_deref(),
            rec.value.as_deref(),
            &rec.headers,
        )
        .map_err(|e| ClientError::InvalidArgument(format!("record cannot be batched: {e}")))?;
    batch.records.push(pending);
    match (&mut batch.memory, memory) {
        (Some(held), Some(more)) => held.merge(more),
        (held @ None, more) => *held = more,
        (Some(_), None) => {}
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_proto::batch::Batch;

    const MS: Duration = Duration::from_millis(1);

    fn rec(value_len: usize) -> RecordData {
        RecordData {
            timestamp: 1_000,
            key: None,
            value: Some(Bytes::from(vec![b'x'; value_len])),
            headers: vec![],
        }
    }

    fn add(
        acc: &mut Accumulator,
        p: u32,
        r: RecordData,
        now: Instant,
    ) -> (Appended, oneshot::Receiver<Result<RecordMetadata>>) {
        let (tx, rx) = oneshot::channel();
        (acc.append("t", p, r, None, tx, || now).unwrap(), rx)
    }

    #[test]
    fn records_share_a_batch_until_linger_expires() {
        let t0 = Instant::now();
        let mut acc = Accumulator::new(16 * 1024, 5 * MS, Compression::None);
        let (a, _) = add(&mut acc, 0, rec(10), t0);
        assert_eq!(
            a,
            Appended {
                new_batch: true,
                full: false
            }
        );
        let (a, _) = add(&mut acc, 0, rec(10), t0 + MS);
        assert_eq!(
            a,
            Appended {
                new_batch: false,
                full: false
            }
        );

        let (out, next) = acc.drain_ready(t0 + 4 * MS, 5);
        assert!(out.is_empty());
        assert_eq!(
            next,
            Some(t0 + 5 * MS),
            "wakes when the linger of the first record ends"
        );

        let (out, next) = acc.drain_ready(t0 + 5 * MS, 5);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].len(), 2);
        assert_eq!(next, None);

        // The drained batch is sealed: the next record opens a new batch.
        let (a, _) = add(&mut acc, 0, rec(10), t0 + 6 * MS);
        assert!(a.new_batch);
    }

    #[test]
    fn a_full_batch_is_ready_at_once_and_the_next_record_starts_another() {
        let t0 = Instant::now();
        let mut acc = Accumulator::new(1000, Duration::from_secs(60), Compression::None);
        let mut appended = Vec::new();
        for _ in 0..12 {
            appended.push(add(&mut acc, 0, rec(100), t0).0);
        }
        // 61-byte header + ~108 bytes per record: 8 records fit in 1000 bytes.
        assert!(appended[0].new_batch);
        let second = appended.iter().skip(1).position(|a| a.new_batch).unwrap() + 1;
        assert_eq!(second, 8);
        let (out, _) = acc.drain_ready(t0, 5);
        assert_eq!(
            out.len(),
            1,
            "only the sealed batch; the second still lingers"
        );
        assert_eq!(out[0].len(), 8);
        assert!(out[0].encoded_len() <= 1000);
    }

    #[test]
    fn a_record_reaching_batch_bytes_marks_the_batch_full() {
        let t0 = Instant::now();
        let mut acc = Accumulator::new(200, Duration::from_secs(60), Compression::None);
        let (a, _) = add(&mut acc, 0, rec(50), t0);
        assert!(!a.full);
        // 61 + 57 bytes so far; a 73-byte value frames to exactly the remaining 82.
        let (a, _) = add(&mut acc, 0, rec(73), t0);
        assert!(a.full && !a.new_batch, "{a:?}");
        let (out, _) = acc.drain_ready(t0, 5);
        assert_eq!(out.len(), 1);
    }

    #[test]
    fn an_oversized_record_travels_alone() {
        let t0 = Instant::now();
        let mut acc = Accumulator::new(100, Duration::from_secs(60), Compression::None);
        add(&mut acc, 0, rec(10), t0);
        let (a, _) = add(&mut acc, 0, rec(5000), t0);
        assert_eq!(
            a,
            Appended {
                new_batch: true,
                full: true
            }
        );
        let (a, _) = add(&mut acc, 0, rec(10), t0);
        assert!(a.new_batch);
        let (out, _) = acc.drain_ready(t0, 5);
        assert_eq!(out.iter().map(|b| b.len()).collect::<Vec<_>>(), [1, 1]);
    }

    #[test]
    fn partitions_batch_independently() {
        let t0 = Instant::now();
        let mut acc = Accumulator::new(16 * 1024, 5 * MS, Compression::None);
        assert!(add(&mut acc, 0, rec(1), t0).0.new_batch);
        assert!(add(&mut acc, 1, rec(1), t0 + 2 * MS).0.new_batch);
        assert!(!add(&mut acc, 0, rec(1), t0 + 3 * MS).0.new_batch);
        let (out, next) = acc.drain_ready(t0 + 5 * MS, 5);
        assert_eq!(out.len(), 1);
        assert_eq!((out[0].partition, out[0].len()), (0, 2));
        assert_eq!(next, Some(t0 + 7 * MS));
    }

    #[test]
    fn in_flight_is_bounded_per_partition() {
        let t0 = Instant::now();
        let mut acc = Accumulator::new(100, Duration::ZERO, Compression::None);
        for _ in 0..5 {
            add(&mut acc, 0, rec(80), t0);
        }
        let (out, _) = acc.drain_ready(t0, 2);
        assert_eq!(out.len(), 2);
        let (none, _) = acc.drain_ready(t0, 2);
        assert!(none.is_empty());
        acc.complete("t", 0, out[0].id);
        let (one, _) = acc.drain_ready(t0, 2);
        assert_eq!(one.len(), 1);
        assert_eq!(one[0].id, out[1].id + 1, "batches leave in order");
    }

    fn header(batch: &mut ProducerBatch) -> (i64, i16, i32) {
        let h = Batch::verify(&batch.payload()).expect("valid batch");
        (h.producer_id, h.producer_epoch, h.base_sequence)
    }

    #[test]
    fn idempotent_batches_are_numbered_per_partition_and_retries_keep_their_numbers() {
        let t0 = Instant::now();
        let mut acc = Accumulator::new(100, Duration::ZERO, Compression::None);
        acc.set_producer(ProducerId { id: 9, epoch: 0 });
        for p in [0, 0, 1] {
            add(&mut acc, p, rec(80), t0);
        }
        let (mut out, _) = acc.drain_ready(t0, 5);
        out.sort_by_key(|b| b.id);
        let stamps: Vec<_> = out.iter_mut().map(header).collect();
        assert_eq!(stamps, vec![(9, 0, 0), (9, 0, 1), (9, 0, 0)]);
        let retry = out.remove(1);
        acc.requeue(retry, t0);
        let (mut again, _) = acc.drain_ready(t0, 5);
        assert_eq!(header(&mut again[0]), (9, 0, 1), "a retry keeps its stamp");
    }

    #[test]
    fn a_new_epoch_restamps_leftover_batches_from_sequence_zero() {
        let t0 = Instant::now();
        let mut acc = Accumulator::new(100, Duration::ZERO, Compression::Lz4);
        acc.set_producer(ProducerId { id: 3, epoch: 0 });
        for _ in 0..3 {
            add(&mut acc, 0, rec(80), t0);
        }
        let (mut out, _) = acc.drain_ready(t0, 5);
        // The first batch fails for good; the others come back for a retry.
        acc.complete("t", 0, out[0].id);
        assert!(
            acc.bump_epoch("t", 0).is_empty(),
            "nothing failed ambiguously, so nothing is stranded"
        );
        assert_eq!(acc.epoch_of("t", 0), Some(1));
        let third = out.pop().expect("third");
        let second = out.pop().expect("second");
        acc.requeue(third, t0);
        acc.requeue(second, t0);
        let (mut again, _) = acc.drain_ready(t0, 5);
        let stamps: Vec<_> = again.iter_mut().map(header).collect();
        assert_eq!(stamps, vec![(3, 1, 0), (3, 1, 1)]);
    }

    #[test]
    fn requeued_batches_go_back_in_order_after_their_back_off() {
        let t0 = Instant::now();
        let mut acc = Accumulator::new(100, Duration::ZERO, Compression::None);
        for _ in 0..4 {
            add(&mut acc, 0, rec(80), t0);
        }
        let (mut out, _) = acc.drain_ready(t0, 3);
        let ids: Vec<u64> = out.iter().map(|b| b.id).collect();
        assert_eq!(ids.len(), 3);
        // The second and first fail, in that order; both go back before the fourth.
        let first = out.remove(0);
        let second = out.remove(0);
        acc.requeue(second, t0 + 100 * MS);
        acc.requeue(first, t0 + 50 * MS);
        let (none, next) = acc.drain_ready(t0 + 60 * MS, 3);
        assert!(
            none.is_empty(),
            "the partition backs off until the later retry time"
        );
        assert_eq!(next, Some(t0 + 100 * MS));
        let (again, _) = acc.drain_ready(t0 + 100 * MS, 3);
        let again_ids: Vec<u64> = again.iter().map(|b| b.id).collect();
        assert_eq!(
            again_ids,
            [ids[0], ids[1]],
            "one slot is still taken by the third"
        );
    }

    #[test]
    fn retries_resend_the_same_bytes() {
        let t0 = Instant::now();
        let mut acc = Accumulator::new(1000, Duration::ZERO, Compression::Lz4);
        add(&mut acc, 0, rec(300), t0);
        let (mut out, _) = acc.drain_ready(t0, 1);
        let mut batch = out.remove(0);
        let first = batch.payload();
        batch.attempts += 1;
        acc.requeue(batch, t0);
        let (mut out, _) = acc.drain_ready(t0, 1);
        let second = out[0].payload();
        assert_eq!(first, second);
        let decoded = Batch::decode(second).unwrap();
        assert_eq!(decoded.compression(), Compression::Lz4);
        assert_eq!(decoded.records().count(), 1);
    }

    #[test]
    fn flush_makes_lingering_batches_ready_and_tracks_completion() {
        let t0 = Instant::now();
        let mut acc = Accumulator::new(16 * 1024, Duration::from_secs(60), Compression::None);
        add(&mut acc, 0, rec(1), t0);
        add(&mut acc, 1, rec(1), t0);
        let mark = acc.begin_flush();
        assert!(!acc.is_flushed(mark));
        // Records appended after the flush started linger as usual...
        add(&mut acc, 2, rec(1), t0);
        let (out, next) = acc.drain_ready(t0, 5);
        assert_eq!(out.len(), 2);
        assert!(next.is_some());
        for b in out {
            acc.complete(&b.topic.clone(), b.partition, b.id);
            b.complete(Ok(0));
        }
        // ...and do not hold the flush up.
        assert!(acc.is_flushed(mark));
        assert!(!acc.is_idle());
        acc.set_closing();
        let (out, _) = acc.drain_ready(t0, 5);
        assert_eq!(out.len(), 1, "closing sends everything at once");
    }

    #[test]
    fn completion_reports_consecutive_offsets_or_the_error() {
        let t0 = Instant::now();
        let mut acc = Accumulator::new(16 * 1024, Duration::ZERO, Compression::None);
        let mut rxs = Vec::new();
        for ts in [7, 8, 9] {
            let (tx, rx) = oneshot::channel();
            let r = RecordData {
                timestamp: ts,
                ..rec(1)
            };
            acc.append("t", 3, r, None, tx, || t0).unwrap();
            rxs.push(rx);
        }
        let (mut out, _) = acc.drain_ready(t0, 5);
        out.remove(0).complete(Ok(100));
        for (i, mut rx) in rxs.into_iter().enumerate() {
            let md = rx.try_recv().unwrap().unwrap();
            assert_eq!(
                (md.partition, md.offset, md.timestamp),
                (3, 100 + i as u64, 7 + i as i64)
            );
            assert_eq!(&*md.topic, "t");
        }

        let (_, mut rx) = add(&mut acc, 0, rec(1), t0);
        let (mut out, _) = acc.drain_ready(t0, 5);
        out.remove(0).complete(Err(ClientError::BatchTooLarge {
            message: "too big".into(),
        }));
        assert!(matches!(
            rx.try_recv().unwrap(),
            Err(ClientError::BatchTooLarge { .. })
        ));

        let (_, mut rx) = add(&mut acc, 0, rec(1), t0);
        let (mut out, _) = acc.drain_ready(t0, 5);
        out.remove(0).complete(Ok(UNKNOWN_OFFSET));
        assert_eq!(rx.try_recv().unwrap().unwrap().offset, UNKNOWN_OFFSET);
    }

    #[test]
    fn expiry_removes_only_old_queued_batches() {
        let t0 = Instant::now();
        let mut acc = Accumulator::new(100, Duration::from_secs(60), Compression::None);
        add(&mut acc, 0, rec(80), t0);
        add(&mut acc, 0, rec(80), t0 + 10 * MS);
        assert_eq!(acc.oldest_queued(), Some(t0));
        let old = acc.expire(t0 + 5 * MS);
        assert_eq!(old.len(), 1);
        assert_eq!(acc.oldest_queued(), Some(t0 + 10 * MS));
        assert!(!acc.is_idle());
        let rest = acc.expire(t0 + 10 * MS);
        assert_eq!(rest.len(), 1);
        assert!(acc.is_idle());
    }

    #[test]
    fn needs_new_batch_predicts_append() {
        let t0 = Instant::now();
        let mut acc = Accumulator::new(300, Duration::from_secs(60), Compression::None);
        assert!(acc.needs_new_batch("t", 0, &rec(10)));
        add(&mut acc, 0, rec(10), t0);
        assert!(!acc.needs_new_batch("t", 0, &rec(10)));
        assert!(acc.needs_new_batch("t", 0, &rec(400)));
        for _ in 0..20 {
            let r = rec(30);
            let predicted = acc.needs_new_batch("t", 0, &r);
            let (a, _) = add(&mut acc, 0, r, t0);
            assert_eq!(predicted, a.new_batch);
        }
    }

    #[test]
    fn memory_permits_are_held_until_completion() {
        let t0 = Instant::now();
        let sem = Arc::new(tokio::sync::Semaphore::new(100));
        let mut acc = Accumulator::new(16 * 1024, Duration::ZERO, Compression::None);
        for _ in 0..2 {
            let permit = sem.clone().try_acquire_many_owned(30).unwrap();
            let (tx, _rx) = oneshot::channel();
            acc.append("t", 0, rec(1), Some(permit), tx, || t0).unwrap();
        }
        assert_eq!(sem.available_permits(), 40);
        let (mut out, _) = acc.drain_ready(t0, 1);
        assert_eq!(sem.available_permits(), 40, "in flight still holds memory");
        out.remove(0).complete(Ok(0));
        assert_eq!(sem.available_permits(), 100);
    }
}
