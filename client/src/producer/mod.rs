//! The [`Producer`]: buffers records per partition, sends them as batches over one
//! pipelined `Produce` stream per broker, and reports each record's fate through a
//! [`DeliveryFuture`].
//!
//! - `mod.rs` (this file): the public API: [`Producer`], [`ProducerRecord`],
//!   [`RecordMetadata`], [`DeliveryFuture`]; choosing the partition (explicit, murmur2
//!   of the key, or sticky) and reserving buffer memory, which is where `send` waits
//!   when the producer is `buffer_memory` ahead of the brokers.
//! - [`accumulator`]: per-partition batches, linger and size bounds, retry order.
//! - `sender`: the background task that drains ready batches to partition leaders,
//!   matches replies by correlation id, retries, and expires.
//!
//! Produce is idempotent by default (`idempotence` with `acks: All`): the producer
//! gets a producer id from the controller and numbers its batches per partition, so a
//! batch resent after a lost answer or a leader failover is stored once, and retried
//! batches keep their order. Only when a batch fails for good (its delivery timeout
//! passes, or the broker refuses it) does the partition move to a new epoch; batches
//! that may already be stored under the old one then fail as timeouts (outcome
//! unknown) rather than being sent again under new numbers. Without idempotence
//! (`idempotence: false`, or weaker acks) delivery is at least once, and with
//! `max_in_flight > 1` a retried batch may land after a later one.

pub mod accumulator;
mod sender;

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use sluice_proto::batch::Header;
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore, TryAcquireError, oneshot, watch};

use crate::backoff::random_u64;
use crate::config::{ClientConfig, ProducerConfig};
use crate::connection::{Connection, unknown_partition};
use crate::error::{ClientError, Result};
use crate::metadata::TopicMetadata;
use crate::partitioner::{StickyPartitioner, partition_for_key};
use accumulator::{Accumulator, Delivery, RecordData};

pub use accumulator::UNKNOWN_OFFSET;

/// A record to send.
///
/// ```
/// use sluice_client::ProducerRecord;
///
/// let record = ProducerRecord::new("orders", "order #1 created")
///     .key("customer-42")
///     .header("trace-id", "abc123")
///     .timestamp(1_700_000_000_000);
/// assert_eq!(record.partition, None);
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProducerRecord {
    /// Shared, not copied: a producer sending many records to a topic clones one
    /// name (`Arc::clone`) instead of allocating one per record.
    pub topic: Arc<str>,
    /// An explicit partition; `None` lets the producer choose (by key, or sticky).
    pub partition: Option<u32>,
    pub key: Option<Bytes>,
    pub value: Option<Bytes>,
    pub headers: Vec<Header>,
    /// Milliseconds since the Unix epoch; `None` means now.
    pub timestamp: Option<i64>,
}

impl ProducerRecord {
    /// A record with a value and nothing else.
    pub fn new(topic: impl Into<Arc<str>>, value: impl Into<Bytes>) -> Self {
        Self {
            topic: topic.into(),
            value: Some(value.into()),
            ..Self::default()
        }
    }

    /// A record with a key and no value (a tombstone, for compacted topics).
    pub fn tombstone(topic: impl Into<Arc<str>>, key: impl Into<Bytes>) -> Self {
        Self {
            topic: topic.into(),
            key: Some(key.into()),
            ..Self::default()
        }
    }

    /// Sets the key (which also chooses the partition, unless one is set).
    pub fn key(mut self, key: impl Into<Bytes>) -> Self {
        self.key = Some(key.into());
        self
    }

    /// Sets an explicit partition.
    pub fn partition(mut self, partition: u32) -> Self {
        self.partition = Some(partition);
        self
    }

    /// Adds a header.
    pub fn header(mut self, key: impl Into<String>, value: impl Into<Bytes>) -> Self {
        self.headers.push(Header::new(key, Some(value.into())));
        self
    }

    /// Sets the timestamp (milliseconds since the Unix epoch).
    pub fn timestamp(mut self, ms: i64) -> Self {
        self.timestamp = Some(ms);
        self
    }
}

/// Where an acknowledged record was stored.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RecordMetadata {
    pub topic: Arc<str>,
    pub partition: u32,
    /// The record's offset; [`UNKNOWN_OFFSET`] with `Acks::None`.
    pub offset: u64,
    /// The record's timestamp (as sent).
    pub timestamp: i64,
}

/// Resolves when the broker acknowledges the record (or the producer gives up on it).
///
/// Dropping it does not cancel the send.
#[derive(Debug)]
#[must_use = "a DeliveryFuture reports whether the record was stored; await it or drop it deliberately"]
pub struct DeliveryFuture {
    rx: oneshot::Receiver<Result<RecordMetadata>>,
}

impl Future for DeliveryFuture {
    type Output = Result<RecordMetadata>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        Pin::new(&mut self.rx).poll(cx).map(|r| {
            r.unwrap_or_else(|_| {
                Err(ClientError::Closed(
                    "the producer stopped before the record was acknowledged".into(),
                ))
            })
        })
    }
}

/// Sends records to Sluice, batched per partition.
///
/// `send` returns as soon as the record is buffered, with a [`DeliveryFuture`] for its
/// acknowledgement, so one task can keep many records in flight; it only waits when
/// `buffer_memory` is full (back-pressure) or the topic's metadata is not cached yet.
/// Cloning is cheap and clones share the buffers. Dropping the last clone sends what
/// is buffered in the background; [`Producer::close`] waits for it.
///
/// ```no_run
/// use sluice_client::{ClientConfig, Producer, ProducerConfig, ProducerRecord};
///
/// # async fn example() -> sluice_client::Result<()> {
/// let producer = Producer::connect(
///     ClientConfig::new(["127.0.0.1:9700"]),
///     ProducerConfig::default(),
/// )
/// .await?;
///
/// // Many sends in flight, then wait for all acknowledgements.
/// let mut acks = Vec::new();
/// for i in 0..1000 {
///     let record = ProducerRecord::new("orders", format!("order {i}")).key(format!("customer-{}", i % 10));
///     acks.push(producer.send(record).await?);
/// }
/// for ack in acks {
///     let md = ack.await?;
///     println!("stored at {}/{} offset {}", md.topic, md.partition, md.offset);
/// }
///
/// // Or one at a time.
/// let md = producer.send(ProducerRecord::new("orders", "one more")).await?.await?;
/// println!("offset {}", md.offset);
/// producer.close().await?;
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct Producer {
    handle: Arc<Handle>,
}

/// The user-facing owner: dropping the last one starts an orderly shutdown.
struct Handle {
    shared: Arc<Shared>,
    done: watch::Receiver<bool>,
}

impl Drop for Handle {
    fn drop(&mut self) {
        self.shared.begin_close();
    }
}

/// State shared by the API and the sender task.
pub(crate) struct Shared {
    pub(crate) conn: Connection,
    pub(crate) config: ProducerConfig,
    pub(crate) state: Mutex<State>,
    pub(crate) memory: Arc<Semaphore>,
    /// Wakes the sender: a batch was created or filled, a flush or close began.
    pub(crate) wake: Notify,
    /// Wakes flushers: a batch completed.
    pub(crate) completed: Notify,
    closed: AtomicBool,
}

pub(crate) struct State {
    pub(crate) acc: Accumulator,
    sticky: StickyPartitioner,
}

impl Shared {
    pub(crate) fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Stops new sends and tells the sender to send everything and stop.
    fn begin_close(&self) {
        self.closed.store(true, Ordering::Release);
        self.memory.close();
        self.state().acc.set_closing();
        self.wake.notify_one();
    }
}

impl State {
    /// Chooses the partition for a record: explicit, murmur2 of the key, or the
    /// topic's sticky partition (switching first if the record would start a new
    /// batch there).
    fn place(
        &mut self,
        topic: &TopicMetadata,
        partition: Option<u32>,
        rec: &RecordData,
        random: &mut impl FnMut() -> u64,
    ) -> Result<u32> {
        let count = topic.partition_count();
        if count == 0 {
            return Err(ClientError::UnknownPartition {
                message: format!("topic '{}' has no partitions", topic.name),
            });
        }
        match (partition, &rec.key) {
            (Some(p), _) if p < count => Ok(p),
            (Some(p), _) => Err(unknown_partition(&topic.name, p, count)),
            (None, Some(key)) => Ok(partition_for_key(key, count)),
            (None, None) => {
                // Which partitions have a leader matters only when choosing one: once
                // per batch, not per record.
                let p = match self.sticky.current(&topic.name, count) {
                    Some(p) => p,
                    None => self.sticky.partition(
                        &topic.name,
                        count,
                        &topic.available_partitions(),
                        random,
                    ),
                };
                if self.acc.needs_new_batch(&topic.name, p, rec) {
                    Ok(self.sticky.on_new_batch(
                        &topic.name,
                        p,
                        count,
                        &topic.available_partitions(),
                        random,
                    ))
                } else {
                    Ok(p)
                }
            }
        }
    }
}

/// Bytes of buffer memory a record is charged: its key, value and headers plus
/// the most its framing can take (length, attributes, timestamp and offset deltas,
/// key/value lengths, header count: 5 + 1 + 10 + 5 + 5 + 5 + 5 bytes), and 10 bytes
/// of lengths per header.
fn charge(rec: &RecordData) -> usize {
    let data = rec.key.as_ref().map_or(0, Bytes::len) + rec.value.as_ref().map_or(0, Bytes::len);
    let headers: usize = rec
        .headers
        .iter()
        .map(|h| h.key.len() + h.value.as_ref().map_or(0, Bytes::len) + 10)
        .sum();
    data.saturating_add(headers).saturating_add(36)
}

fn closed() -> ClientError {
    ClientError::Closed("the producer is closed".into())
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

impl Producer {
    /// Connects to the cluster and starts a producer.
    pub async fn connect(client: ClientConfig, config: ProducerConfig) -> Result<Self> {
        let conn = Connection::connect(client).await?;
        Self::new(conn, config)
    }

    /// Starts a producer on an existing connection. Must be called inside a Tokio
    /// runtime (the producer runs a background task).
    pub fn new(conn: Connection, config: ProducerConfig) -> Result<Self> {
        config.validate()?;
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| {
            ClientError::InvalidArgument("a Producer must be created inside a Tokio runtime".into())
        })?;
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                acc: Accumulator::new(config.batch_bytes, config.linger, config.compression),
                sticky: StickyPartitioner::default(),
            }),
            memory: Arc::new(Semaphore::new(config.buffer_memory)),
            wake: Notify::new(),
            completed: Notify::new(),
            closed: AtomicBool::new(false),
            conn,
            config,
        });
        let (done_tx, done) = watch::channel(false);
        runtime.spawn(sender::run(shared.clone(), done_tx));
        Ok(Self {
            handle: Arc::new(Handle { shared, done }),
        })
    }

    /// The producer's configuration.
    pub fn config(&self) -> &ProducerConfig {
        &self.handle.shared.config
    }

    /// The connection the producer uses.
    pub fn connection(&self) -> &Connection {
        &self.handle.shared.conn
    }

    /// Buffers a record for sending and returns a future for its acknowledgement.
    ///
    /// Waits (up to `max_block`) only for the topic's metadata if it is not cached,
    /// and for buffer memory if `buffer_memory` bytes are already buffered. Fails at
    /// once for an unknown topic or partition, a record larger than `buffer_memory`,
    /// or a closed producer.
    pub async fn send(&self, record: ProducerRecord) -> Result<DeliveryFuture> {
        let (tx, rx) = oneshot::channel();
        self.buffer(record, Delivery::Future(tx)).await?;
        Ok(DeliveryFuture { rx })
    }

    /// Like [`Producer::send`], but the outcome goes to `callback` instead of a
    /// future: Kafka's `send(record, callback)`. It runs on the producer's background
    /// task once the record is acknowledged or failed, so it must be quick and must
    /// not block (hand heavier work to a channel). No future per record makes this
    /// the cheaper way to keep very many small records in flight. If this returns an
    /// error, the callback is never called.
    pub async fn send_with(
        &self,
        record: ProducerRecord,
        callback: impl FnOnce(Result<RecordMetadata>) + Send + 'static,
    ) -> Result<()> {
        self.buffer(record, Delivery::Callback(Box::new(callback)))
            .await
    }

    /// Validates, places and buffers `record`; its outcome goes to `delivery`.
    async fn buffer(&self, record: ProducerRecord, delivery: Delivery) -> Result<()> {
        let shared = &self.handle.shared;
        if shared.closed.load(Ordering::Acquire) {
            return Err(closed());
        }
        if record.topic.is_empty() {
            return Err(ClientError::InvalidArgument(
                "a record needs a topic name".into(),
            ));
        }
        // The usual case, cached metadata and free buffer memory, waits for nothing and
        // so sets no timer (which would read the clock for every record). The waits are
        // boxed: their state would otherwise make this future, which is built and moved
        // for every record, kilobytes large.
        let topic = match shared.conn.cached_topic(&record.topic) {
            Some(topic) => topic,
            None => Box::pin(self.wait_for_topic(&record.topic)).await?,
        };
        let rec = RecordData {
            timestamp: record.timestamp.unwrap_or_else(now_ms),
            key: record.key,
            value: record.value,
            headers: record.headers,
        };
        if let Some(p) = record.partition
            && p >= topic.partition_count()
        {
            return Err(unknown_partition(&topic.name, p, topic.partition_count()));
        }
        let charge = charge(&rec);
        let buffer = shared.config.buffer_memory;
        if charge > buffer {
            return Err(ClientError::InvalidArgument(format!(
                "a record of about {charge} bytes does not fit in buffer_memory ({buffer} bytes); \
                 raise buffer_memory or send smaller records"
            )));
        }
        let permit = match shared.memory.clone().try_acquire_many_owned(charge as u32) {
            Ok(permit) => permit,
            Err(TryAcquireError::Closed) => return Err(closed()),
            Err(TryAcquireError::NoPermits) => Box::pin(self.wait_for_memory(charge)).await?,
        };
        let wake = {
            let mut state = shared.state();
            // Checked under the lock: a close that began after this cannot miss the record.
            if state.acc.is_closing() {
                return Err(closed());
            }
            let partition = state.place(&topic, record.partition, &rec, &mut random_u64)?;
            let appended = state.acc.append(
                &topic.name,
                partition,
                rec,
                Some(permit),
                delivery,
                Instant::now,
            )?;
            appended.new_batch || appended.full
        };
        if wake {
            shared.wake.notify_one();
        }
        Ok(())
    }

    /// `topic`'s metadata from the cluster, within `max_block`.
    async fn wait_for_topic(&self, topic: &str) -> Result<Arc<TopicMetadata>> {
        let max_block = self.handle.shared.config.max_block;
        tokio::time::timeout(max_block, self.handle.shared.conn.topic(topic))
            .await
            .map_err(|_| ClientError::Timeout {
                message: format!("no metadata for topic '{topic}' within max_block {max_block:?}"),
            })?
    }

    /// `charge` bytes of buffer memory, once records in flight release them, within
    /// `max_block`.
    async fn wait_for_memory(&self, charge: usize) -> Result<OwnedSemaphorePermit> {
        let shared = &self.handle.shared;
        let (buffer, max_block) = (shared.config.buffer_memory, shared.config.max_block);
        match tokio::time::timeout(
            max_block,
            shared.memory.clone().acquire_many_owned(charge as u32),
        )
        .await
        {
            Ok(Ok(permit)) => Ok(permit),
            Ok(Err(_)) => Err(closed()),
            Err(_) => Err(ClientError::BufferFull(format!(
                "no room for a {charge}-byte record in {buffer} bytes of buffer memory within \
                 max_block {max_block:?}: the brokers are not keeping up or cannot be reached"
            ))),
        }
    }

    /// Sends every buffered record now (ignoring linger) and waits until each has
    /// been acknowledged or failed. Records sent while flushing are not waited for.
    /// Failures are reported through the records' delivery futures, not here.
    pub async fn flush(&self) -> Result<()> {
        let shared = &self.handle.shared;
        let mark = shared.state().acc.begin_flush();
        shared.wake.notify_one();
        loop {
            let completed = shared.completed.notified();
            tokio::pin!(completed);
            completed.as_mut().enable();
            if shared.state().acc.is_flushed(mark) {
                return Ok(());
            }
            completed.await;
        }
    }

    /// Stops taking records, sends everything buffered, waits for the answers, and
    /// stops the background task. Later `send`s fail with [`ClientError::Closed`].
    /// Bounded by `delivery_timeout`: records still unacknowledged then fail.
    pub async fn close(&self) -> Result<()> {
        let shared = &self.handle.shared;
        shared.closed.store(true, Ordering::Release);
        self.flush().await?;
        shared.begin_close();
        let mut done = self.handle.done.clone();
        // An error means the task ended (dropped the sender): also done.
        let _ = done.wait_for(|d| *d).await;
        Ok(())
    }
}

impl std::fmt::Debug for Producer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Producer")
            .field("config", &self.handle.shared.config)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    use crate::metadata::{BrokerInfo, PartitionMetadata};
    use sluice_proto::batch::Compression;

    fn topic(partitions: u32) -> TopicMetadata {
        TopicMetadata {
            name: "t".into(),
            partitions: (0..partitions)
                .map(|p| PartitionMetadata {
                    partition: p,
                    leader: Some(BrokerInfo {
                        id: 1,
                        addr: "b:1".into(),
                    }),
                    replicas: vec![1],
                })
                .collect(),
        }
    }

    fn state(batch_bytes: usize) -> State {
        State {
            acc: Accumulator::new(batch_bytes, Duration::from_secs(60), Compression::None),
            sticky: StickyPartitioner::default(),
        }
    }

    fn keyless(len: usize) -> RecordData {
        RecordData {
            timestamp: 0,
            key: None,
            value: Some(Bytes::from(vec![0; len])),
            headers: vec![],
        }
    }

    fn put(state: &mut State, t: &TopicMetadata, part: Option<u32>, rec: RecordData) -> u32 {
        let p = state.place(t, part, &rec, &mut random_u64).unwrap();
        let (tx, _rx) = oneshot::channel();
        state
            .acc
            .append(&t.name, p, rec, None, tx, Instant::now)
            .unwrap();
        p
    }

    #[test]
    fn keyless_records_stick_to_a_partition_until_its_batch_is_full() {
        let t = topic(4);
        let mut s = state(1000);
        // ~109 bytes per record: 8 per 1000-byte batch.
        let placed: Vec<u32> = (0..40)
            .map(|_| put(&mut s, &t, None, keyless(100)))
            .collect();
        let runs: Vec<&[u32]> = placed.chunk_by(|a, b| a == b).collect();
        assert!(runs.len() >= 5, "{placed:?}");
        for (i, run) in runs.iter().enumerate() {
            assert_eq!(run.len(), 8, "run {i} of {placed:?}");
        }
        for pair in runs.windows(2) {
            assert_ne!(pair[0][0], pair[1][0], "switches to a different partition");
        }
    }

    #[test]
    fn sticky_switches_when_the_lingering_batch_was_sent() {
        let t = topic(3);
        let mut s = state(1 << 20);
        let first = put(&mut s, &t, None, keyless(10));
        assert_eq!(put(&mut s, &t, None, keyless(10)), first);
        // Linger expired: the batch leaves, so the next record needs a new batch.
        let (sent, _) = s
            .acc
            .drain_ready(Instant::now() + Duration::from_secs(61), 5);
        assert_eq!(sent.len(), 1);
        let next = put(&mut s, &t, None, keyless(10));
        assert_ne!(next, first);
    }

    #[test]
    fn keyed_and_explicit_records_are_not_sticky() {
        let t = topic(10);
        let mut s = state(1 << 20);
        let rec = RecordData {
            key: Some(Bytes::from_static(b"foobar")),
            ..keyless(1)
        };
        for _ in 0..5 {
            assert_eq!(put(&mut s, &t, None, rec.clone()), 6);
        }
        assert_eq!(put(&mut s, &t, Some(9), rec.clone()), 9);
        let err = s.place(&t, Some(10), &rec, &mut random_u64).unwrap_err();
        assert!(matches!(err, ClientError::UnknownPartition { .. }), "{err}");
        let err = s.place(&topic(0), None, &rec, &mut random_u64).unwrap_err();
        assert!(matches!(err, ClientError::UnknownPartition { .. }), "{err}");
    }

    #[test]
    fn records_are_charged_at_least_their_size() {
        let rec = RecordData {
            timestamp: 0,
            key: Some(Bytes::from_static(b"key")),
            value: Some(Bytes::from(vec![0; 1000])),
            headers: vec![Header::new("h", Some(Bytes::from_static(b"v")))],
        };
        let mut b = sluice_proto::batch::BatchBuilder::new(Compression::None);
        let before = b.encoded_len();
        b.append(
            i64::MAX,
            rec.key.as_deref(),
            rec.value.as_deref(),
            &rec.headers,
        )
        .unwrap();
        b.append(
            i64::MIN,
            rec.key.as_deref(),
            rec.value.as_deref(),
            &rec.headers,
        )
        .unwrap();
        let second = b.encoded_len() - before;
        assert!(charge(&rec) * 2 >= second, "{} vs {second}", charge(&rec));
    }

    #[tokio::test]
    async fn builder_sets_the_fields() {
        let r = ProducerRecord::new("t", "v")
            .key("k")
            .partition(2)
            .header("h", "x")
            .timestamp(5);
        assert_eq!(r.key.as_deref(), Some(&b"k"[..]));
        assert_eq!(r.partition, Some(2));
        assert_eq!(r.headers[0].key, "h");
        assert_eq!(r.timestamp, Some(5));
        let t = ProducerRecord::tombstone("t", "k");
        assert!(t.value.is_none());
    }

    #[tokio::test]
    async fn a_closed_producer_refuses_records_and_close_returns() {
        let conn = Connection::new(ClientConfig::new(["127.0.0.1:1"])).unwrap();
        let producer = Producer::new(conn, ProducerConfig::default()).unwrap();
        tokio::time::timeout(Duration::from_secs(5), producer.close())
            .await
            .unwrap()
            .unwrap();
        let err = producer
            .send(ProducerRecord::new("t", "v"))
            .await
            .unwrap_err();
        assert!(matches!(err, ClientError::Closed(_)), "{err}");
    }

    #[tokio::test]
    async fn send_to_an_unreachable_cluster_fails_with_transport() {
        let conn = Connection::new(ClientConfig::new(["127.0.0.1:1"])).unwrap();
        let producer = Producer::new(conn, ProducerConfig::default()).unwrap();
        let err = producer
            .send(ProducerRecord::new("t", "v"))
            .await
            .unwrap_err();
        assert!(matches!(err, ClientError::Transport { .. }), "{err}");
    }

    #[tokio::test]
    async fn a_send_future_stays_small() {
        // Built and moved once per record: waits that are rarely taken are boxed so
        // that their state (a metadata refresh, timers) does not make it kilobytes.
        let conn = Connection::new(ClientConfig::new(["127.0.0.1:1"])).unwrap();
        let producer = Producer::new(conn, ProducerConfig::default()).unwrap();
        let send = producer.send_with(ProducerRecord::new("t", "v"), |_| {});
        let size = std::mem::size_of_val(&send);
        assert!(size <= 1024, "send_with's future is {size} bytes");
    }

    #[test]
    fn creating_a_producer_outside_a_runtime_is_an_error() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let conn = rt.block_on(async { Connection::new(ClientConfig::default()).unwrap() });
        let err = Producer::new(conn, ProducerConfig::default()).unwrap_err();
        assert!(matches!(err, ClientError::InvalidArgument(_)), "{err}");
    }
}
