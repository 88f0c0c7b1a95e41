//! The [`Consumer`]: reads assigned partitions as a stream of [`ConsumerRecord`]s.
//!
//! - `mod.rs` (this file): assignment, start positions (`Offset::Earliest | Latest |
//!   At | Timestamp`, resolved with `ListOffsets`), `seek`, `position`, and the record
//!   stream, which merges what the partitions' fetch tasks deliver and advances each
//!   partition's position as records are handed to the application;
//! - `fetcher`: one long-lived `Fetch` stream (`follow = true`) per partition, with
//!   reconnects, and batch decoding.
//!
//! Positions only move for records the application has received: records fetched
//! ahead but not yet taken are dropped by `seek`/`assign` and fetched again.
//! Group membership (`subscribe`) and committed offsets are not here yet.

mod fetcher;

use std::collections::BTreeMap;
use std::sync::Arc;

use bytes::Bytes;
use futures::stream::{BoxStream, StreamExt};
use sluice_proto::batch::Header;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::config::{ClientConfig, ConsumerConfig};
use crate::connection::Connection;
use crate::error::{ClientError, Result};
use crate::types::{Offset, OffsetReset, TopicPartition};
use fetcher::{FetchEvent, FetchTask};

/// A record read from a partition.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ConsumerRecord {
    pub topic: Arc<str>,
    pub partition: u32,
    pub offset: u64,
    /// Milliseconds since the Unix epoch (the producer's create time).
    pub timestamp: i64,
    pub key: Option<Bytes>,
    pub value: Option<Bytes>,
    pub headers: Vec<Header>,
}

#[derive(Debug, Default, Clone)]
struct PartState {
    /// A start position to resolve before fetching (from `seek`).
    pending: Option<Offset>,
    /// The offset of the next record to hand out, once resolved.
    position: Option<u64>,
    /// The last high watermark a fetch reported.
    high_watermark: Option<u64>,
}

/// Running fetch tasks for the current assignment and positions.
struct Session {
    tps: Vec<TopicPartition>,
    rx: mpsc::Receiver<FetchEvent>,
    tasks: Vec<JoinHandle<()>>,
    current: Option<(usize, std::vec::IntoIter<ConsumerRecord>)>,
    /// Every task has stopped (after fatal errors): the stream has ended.
    finished: bool,
}

impl Drop for Session {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// Reads records from explicitly assigned partitions.
///
/// Data is pushed by the brokers as soon as it is committed: the stream never ends
/// on its own while partitions are assigned (it ends only if every partition hit a
/// fatal error). Reconnects and leader changes are handled inside; errors that
/// persist longer than the request timeout, and fatal ones, appear as `Err` items.
///
/// ```no_run
/// use futures::StreamExt;
/// use sluice_client::{ClientConfig, Consumer, ConsumerConfig, Offset, TopicPartition};
///
/// # async fn example() -> sluice_client::Result<()> {
/// let mut consumer = Consumer::connect(
///     ClientConfig::new(["127.0.0.1:9700"]),
///     ConsumerConfig::default(),
/// )
/// .await?;
/// let tp = TopicPartition::new("orders", 0);
/// consumer.assign(vec![tp.clone(), TopicPartition::new("orders", 1)]);
/// consumer.seek(&tp, Offset::Earliest)?;
///
/// let mut records = consumer.stream();
/// while let Some(record) = records.next().await {
///     let record = record?;
///     println!("{}/{}@{}: {:?}", record.topic, record.partition, record.offset, record.value);
/// }
/// # Ok(())
/// # }
/// ```
pub struct Consumer {
    conn: Connection,
    config: ConsumerConfig,
    parts: BTreeMap<TopicPartition, PartState>,
    session: Option<Session>,
}

impl std::fmt::Debug for Consumer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Consumer")
            .field("assignment", &self.parts.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

impl Consumer {
    /// Connects to the cluster and creates a consumer with nothing assigned.
    pub async fn connect(client: ClientConfig, config: ConsumerConfig) -> Result<Self> {
        let conn = Connection::connect(client).await?;
        Self::new(conn, config)
    }

    /// A consumer on an existing connection, with nothing assigned.
    pub fn new(conn: Connection, config: ConsumerConfig) -> Result<Self> {
        config.validate()?;
        Ok(Self {
            conn,
            config,
            parts: BTreeMap::new(),
            session: None,
        })
    }

    /// The connection the consumer uses.
    pub fn connection(&self) -> &Connection {
        &self.conn
    }

    /// Replaces the assignment. Partitions that stay assigned keep their position;
    /// new ones start per `auto_offset_reset` unless [`Consumer::seek`]ed.
    pub fn assign(&mut self, partitions: Vec<TopicPartition>) {
        let mut parts = BTreeMap::new();
        for tp in partitions {
            let state = self.parts.remove(&tp).unwrap_or_default();
            parts.insert(tp, state);
        }
        self.parts = parts;
        self.session = None;
    }

    /// Assigns every partition of `topic` (as the cluster's metadata has them now).
    pub async fn assign_topic(&mut self, topic: &str) -> Result<Vec<TopicPartition>> {
        let metadata = self.conn.topic(topic).await?;
        let tps: Vec<TopicPartition> = metadata
            .partitions
            .iter()
            .map(|p| TopicPartition::new(topic, p.partition))
            .collect();
        self.assign(tps.clone());
        Ok(tps)
    }

    /// The assigned partitions, in order.
    pub fn assignment(&self) -> Vec<TopicPartition> {
        self.parts.keys().cloned().collect()
    }

    /// Moves an assigned partition to `offset`; takes effect on the next record
    /// requested (records fetched ahead are dropped).
    pub fn seek(&mut self, tp: &TopicPartition, offset: Offset) -> Result<()> {
        let state = self.parts.get_mut(tp).ok_or_else(|| not_assigned(tp))?;
        state.pending = Some(offset);
        state.position = None;
        self.session = None;
        Ok(())
    }

    /// The offset of the next record the consumer will hand out for `tp`, resolving
    /// a pending start position if needed.
    pub async fn position(&mut self, tp: &TopicPartition) -> Result<u64> {
        let state = self.parts.get(tp).ok_or_else(|| not_assigned(tp))?.clone();
        if let Some(p) = state.position {
            return Ok(p);
        }
        let offset = self.resolve(tp, &state).await?;
        if let Some(s) = self.parts.get_mut(tp) {
            s.position = Some(offset);
            s.pending = None;
        }
        Ok(offset)
    }

    /// The last high watermark a fetch of `tp` reported, if any.
    pub fn high_watermark(&self, tp: &TopicPartition) -> Option<u64> {
        self.parts.get(tp)?.high_watermark
    }

    /// Records committed but not yet handed out for `tp`, as of the last fetch.
    pub fn lag(&self, tp: &TopicPartition) -> Option<u64> {
        let s = self.parts.get(tp)?;
        Some(s.high_watermark?.saturating_sub(s.position?))
    }

    /// Resolves a start position for any partition (assigned or not) with
    /// `ListOffsets`.
    pub async fn offset_for(&self, tp: &TopicPartition, offset: Offset) -> Result<u64> {
        self.conn.list_offset(&tp.topic, tp.partition, offset).await
    }

    async fn resolve(&self, tp: &TopicPartition, state: &PartState) -> Result<u64> {
        let offset = match (state.pending, self.config.auto_offset_reset) {
            (Some(o), _) => o,
            (None, OffsetReset::Earliest) => Offset::Earliest,
            (None, OffsetReset::Latest) => Offset::Latest,
            (None, OffsetReset::None) => {
                return Err(ClientError::InvalidArgument(format!(
                    "{tp} has no position: seek it first, or set auto_offset_reset"
                )));
            }
        };
        self.offset_for(tp, offset).await
    }

    async fn start_session(&mut self) -> Result<()> {
        let tps = self.assignment();
        let mut positions = Vec::with_capacity(tps.len());
        for tp in &tps {
            positions.push(self.position(tp).await?);
        }
        // Room for a few responses per partition, at least `prefetch` in all.
        let (tx, rx) = mpsc::channel(self.config.prefetch.max(tps.len()));
        let tasks = tps
            .iter()
            .zip(positions)
            .enumerate()
            .map(|(index, (tp, position))| {
                tokio::spawn(
                    FetchTask {
                        conn: self.conn.clone(),
                        config: self.config.clone(),
                        index,
                        topic: Arc::from(tp.topic.as_str()),
                        partition: tp.partition,
                        position,
                        events: tx.clone(),
                    }
                    .run(),
                )
            })
            .collect();
        self.session = Some(Session {
            tps,
            rx,
            tasks,
            current: None,
            finished: false,
        });
        Ok(())
    }

    /// The next record from any assigned partition; `None` when nothing is assigned
    /// or every partition stopped on a fatal error. Cancel-safe: dropping the future
    /// loses no record.
    pub async fn recv(&mut self) -> Option<Result<ConsumerRecord>> {
        loop {
            if self.parts.is_empty() {
                return None;
            }
            if self.session.is_none()
                && let Err(e) = self.start_session().await
            {
                return Some(Err(e));
            }
            let session = self.session.as_mut()?;
            if session.finished {
                return None;
            }
            if let Some((index, records)) = &mut session.current {
                if let Some(record) = records.next() {
                    if let Some(state) = self.parts.get_mut(&session.tps[*index]) {
                        state.position = Some(record.offset + 1);
                    }
                    return Some(Ok(record));
                }
                session.current = None;
            }
            match session.rx.recv().await {
                Some(FetchEvent::Records {
                    index,
                    records,
                    high_watermark,
                }) => {
                    if let Some(state) = self.parts.get_mut(&session.tps[index]) {
                        state.high_watermark = Some(high_watermark);
                    }
                    session.current = Some((index, records.into_iter()));
                }
                Some(FetchEvent::Reset { index, offset }) => {
                    if let Some(state) = self.parts.get_mut(&session.tps[index]) {
                        state.position = Some(offset);
                    }
                }
                Some(FetchEvent::Error {
                    index,
                    error,
                    fatal,
                }) => {
                    if fatal {
                        tracing::warn!(partition = %session.tps[index], %error, "stopped fetching");
                    }
                    return Some(Err(error));
                }
                None => {
                    session.finished = true;
                    return None;
                }
            }
        }
    }

    /// The records of every assigned partition, as one stream (see
    /// [`Consumer::recv`]). Borrowing the consumer mutably, it keeps positions
    /// current; drop it to `seek` or `assign`, then call `stream` again.
    pub fn stream(&mut self) -> BoxStream<'_, Result<ConsumerRecord>> {
        futures::stream::unfold(self, |consumer| async move {
            let item = consumer.recv().await?;
            Some((item, consumer))
        })
        .boxed()
    }
}

fn not_assigned(tp: &TopicPartition) -> ClientError {
    ClientError::InvalidArgument(format!("{tp} is not assigned to this consumer"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn consumer() -> Consumer {
        let conn = Connection::new(ClientConfig::new(["127.0.0.1:1"])).unwrap();
        Consumer::new(conn, ConsumerConfig::default()).unwrap()
    }

    #[tokio::test]
    async fn nothing_assigned_means_an_empty_stream() {
        let mut c = consumer();
        assert!(c.recv().await.is_none());
        assert!(c.stream().next().await.is_none());
    }

    #[tokio::test]
    async fn seek_and_position_need_an_assignment() {
        let mut c = consumer();
        let tp = TopicPartition::new("t", 0);
        assert!(matches!(
            c.seek(&tp, Offset::Earliest),
            Err(ClientError::InvalidArgument(_))
        ));
        assert!(c.position(&tp).await.is_err());
        c.assign(vec![tp.clone()]);
        c.seek(&tp, Offset::At(42)).unwrap();
        // `At` needs no request.
        assert_eq!(c.position(&tp).await.unwrap(), 42);
        assert_eq!(c.lag(&tp), None);
    }

    #[tokio::test]
    async fn reassignment_keeps_positions_of_retained_partitions() {
        let mut c = consumer();
        let (a, b) = (TopicPartition::new("t", 0), TopicPartition::new("t", 1));
        c.assign(vec![a.clone()]);
        c.seek(&a, Offset::At(7)).unwrap();
        c.assign(vec![b.clone(), a.clone()]);
        assert_eq!(c.assignment(), [a.clone(), b.clone()]);
        assert_eq!(c.position(&a).await.unwrap(), 7);
    }

    #[tokio::test]
    async fn no_reset_policy_requires_a_seek() {
        let conn = Connection::new(ClientConfig::new(["127.0.0.1:1"])).unwrap();
        let config = ConsumerConfig {
            auto_offset_reset: OffsetReset::None,
            ..Default::default()
        };
        let mut c = Consumer::new(conn, config).unwrap();
        let tp = TopicPartition::new("t", 0);
        c.assign(vec![tp.clone()]);
        let err = c.recv().await.unwrap().unwrap_err();
        assert!(matches!(err, ClientError::InvalidArgument(_)), "{err}");
    }

    #[tokio::test]
    async fn an_unreachable_cluster_is_reported_on_start() {
        let client = ClientConfig {
            max_retries: 1,
            ..ClientConfig::new(["127.0.0.1:1"])
        };
        let conn = Connection::new(client).unwrap();
        let mut c = Consumer::new(conn, ConsumerConfig::default()).unwrap();
        let tp = TopicPartition::new("t", 0);
        c.assign(vec![tp]);
        let err = c.recv().await.unwrap().unwrap_err();
        assert!(matches!(err, ClientError::Transport { .. }), "{err}");
    }
}
