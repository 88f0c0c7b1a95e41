//! The [`Consumer`]: reads partitions, assigned by hand or by a consumer group, as a
//! stream of [`ConsumerRecord`]s.
//!
//! - `mod.rs` (this file): assignment, start positions (`Offset::Earliest | Latest |
//!   At | Timestamp`, resolved with `ListOffsets`), `seek`, `position`, lag, and
//!   `recv`, which hands out what the partitions' fetch tasks deliver and advances
//!   each partition's position as records are handed to the application;
//! - `session`: the running fetch tasks, started and stopped one partition at a time;
//! - `fetcher`: one long-lived `Fetch` stream (`follow = true`) per partition, with
//!   reconnects, and batch decoding;
//! - `subscription`: `subscribe` and committed offsets (commit, auto-commit, the
//!   group's assignment applied inside `recv`);
//! - `group`: the heartbeat task and the committer of a group member;
//! - `listener`: [`RebalanceListener`].
//!
//! Positions only move for records the application has received: records fetched
//! ahead but not yet taken are dropped by `seek`/`assign`/revocation and fetched
//! again.

mod fetcher;
mod group;
mod listener;
mod session;
mod subscription;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use futures::stream::{BoxStream, StreamExt};
use sluice_proto::batch::Header;

use crate::config::{ClientConfig, ConsumerConfig};
use crate::connection::Connection;
use crate::error::{ClientError, Result};
use crate::types::{Offset, OffsetReset, TopicPartition};
use fetcher::FetchEvent;
use group::{GroupEvent, GroupMember};
use session::Session;

pub use crate::types::OffsetAndMetadata;
pub use listener::RebalanceListener;

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
    /// Fetching stopped on a fatal error (or no start position): until `seek`.
    stopped: bool,
}

/// Reads records from partitions assigned with [`Consumer::assign`], or shared with
/// the other members of a consumer group with [`Consumer::subscribe`].
///
/// Data is pushed by the brokers as soon as it is committed: the stream never ends
/// on its own while partitions are assigned or the consumer is subscribed (with
/// `assign`, it ends only if every partition hit a fatal error). Reconnects and
/// leader changes are handled inside; errors that persist longer than the request
/// timeout, and fatal ones, appear as `Err` items.
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
    session: Session,
    /// Membership, when subscribed to a group.
    group: Option<GroupMember>,
    /// In a mutex only so that the consumer is `Sync` (borrowed across awaits);
    /// reached with `get_mut`, never locked.
    listener: Option<std::sync::Mutex<Box<dyn RebalanceListener>>>,
    /// The latest assignment from the group, not applied yet.
    target: Option<std::collections::BTreeSet<TopicPartition>>,
    /// Revoked partitions whose final commit is under way, oldest first: no longer
    /// read, released once the commit is acknowledged.
    revoking: std::collections::VecDeque<subscription::Revocation>,
    /// The last offset committed (or sent to be) per partition.
    committed: BTreeMap<TopicPartition, u64>,
    last_auto_commit: Instant,
    /// The answer to the automatic commit under way, if one is: there is at most one.
    auto_commit_in_flight: Option<tokio::sync::oneshot::Receiver<Result<()>>>,
}

impl std::fmt::Debug for Consumer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Consumer")
            .field("assignment", &self.parts.keys().collect::<Vec<_>>())
            .field("group", &self.group.as_ref().map(GroupMember::group))
            .finish_non_exhaustive()
    }
}

/// What woke a waiting `recv`.
enum Wake {
    Fetch(TopicPartition, FetchEvent),
    Group(Option<GroupEvent>),
    /// The oldest revocation's final commit was answered.
    Revoked(Result<()>),
    /// The automatic commit under way was answered.
    AutoCommitted(Result<()>),
    Timer,
}

impl Consumer {
    /// Connects to the cluster and creates a consumer with nothing assigned.
    pub async fn connect(client: ClientConfig, config: ConsumerConfig) -> Result<Self> {
        let conn = Connection::connect(client).await?;
        Self::new(conn, config)
    }

    /// A consumer on an existing connection, with nothing assigned. Must be called
    /// inside a Tokio runtime.
    pub fn new(conn: Connection, config: ConsumerConfig) -> Result<Self> {
        config.validate()?;
        Ok(Self {
            conn,
            session: Session::new(config.prefetch),
            config,
            parts: BTreeMap::new(),
            group: None,
            listener: None,
            target: None,
            revoking: Default::default(),
            committed: BTreeMap::new(),
            last_auto_commit: Instant::now(),
            auto_commit_in_flight: None,
        })
    }

    /// The connection the consumer uses.
    pub fn connection(&self) -> &Connection {
        &self.conn
    }

    /// Replaces the assignment. Partitions that stay assigned keep their position
    /// and keep fetching; new ones start per `auto_offset_reset` unless
    /// [`Consumer::seek`]ed. A subscribed consumer stops being a group member (without
    /// leaving: call [`Consumer::unsubscribe`] first to leave at once).
    pub fn assign(&mut self, partitions: Vec<TopicPartition>) {
        if let Some(g) = self.group.take() {
            tracing::warn!(
                group = g.group(),
                "assign() replaces the group subscription"
            );
            self.target = None;
        }
        let mut parts = BTreeMap::new();
        for tp in partitions {
            let mut state = self.parts.remove(&tp).unwrap_or_default();
            state.stopped = false;
            parts.insert(tp, state);
        }
        for tp in self.parts.keys() {
            self.session.stop(tp);
        }
        self.parts = parts;
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

    /// The assigned partitions (by hand, or by the group now), in order.
    pub fn assignment(&self) -> Vec<TopicPartition> {
        self.parts.keys().cloned().collect()
    }

    /// Moves an assigned partition to `offset`; takes effect on the next record
    /// requested (records fetched ahead are dropped).
    pub fn seek(&mut self, tp: &TopicPartition, offset: Offset) -> Result<()> {
        let state = self.parts.get_mut(tp).ok_or_else(|| not_assigned(tp))?;
        state.pending = Some(offset);
        state.position = None;
        state.stopped = false;
        self.session.stop(tp);
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

    /// The lag of every assigned partition whose lag is known (see [`Consumer::lag`]).
    pub fn lags(&self) -> BTreeMap<TopicPartition, u64> {
        self.parts
            .keys()
            .filter_map(|tp| Some((tp.clone(), self.lag(tp)?)))
            .collect()
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

    /// The next delivered record, its partition's position moved past it.
    fn take_buffered(&mut self) -> Option<ConsumerRecord> {
        let (tp, record) = self.session.next_buffered()?;
        if let Some(state) = self.parts.get_mut(tp) {
            state.position = Some(record.offset + 1);
        }
        Some(record)
    }

    /// Starts a fetch task for every assigned partition without one.
    async fn start_fetching(&mut self) -> Result<()> {
        let idle: Vec<TopicPartition> = self
            .parts
            .iter()
            .filter(|(tp, s)| !s.stopped && !self.session.is_running(tp))
            .map(|(tp, _)| tp.clone())
            .collect();
        for tp in idle {
            let position = self.position(&tp).await?;
            self.session.start(&self.conn, &self.config, &tp, position);
        }
        Ok(())
    }

    /// The next record from any assigned partition; `None` when nothing is assigned
    /// (and the consumer is not subscribed) or every assigned partition stopped on a
    /// fatal error. A subscribed consumer also applies the group's assignment changes
    /// and auto-commits here. Cancel-safe: dropping the future loses no record.
    pub async fn recv(&mut self) -> Option<Result<ConsumerRecord>> {
        loop {
            // Without a group there is nothing to maintain between the records of a
            // delivered batch: hand them out first (per-record checks of every
            // partition's task were a fifth of a replaying consumer's time).
            if self.group.is_none()
                && let Some(record) = self.take_buffered()
            {
                return Some(Ok(record));
            }
            if self.group.is_some() {
                if let Err(e) = self.maintain_group().await {
                    return Some(Err(e));
                }
            } else if self.parts.values().all(|s| s.stopped) {
                return None;
            }
            if let Err(e) = self.start_fetching().await {
                return Some(Err(e));
            }
            if let Some(record) = self.take_buffered() {
                return Some(Ok(record));
            }
            let due = self.auto_commit_due();
            let wake = match self.group.as_mut() {
                Some(g) => {
                    tokio::select! {
                        (tp, event) = self.session.next_event() => Wake::Fetch(tp, event),
                        event = g.events.recv() => Wake::Group(event),
                        done = subscription::next_revoked(&mut self.revoking) => Wake::Revoked(done),
                        done = subscription::auto_commit_answered(&mut self.auto_commit_in_flight) => Wake::AutoCommitted(done),
                        () = sleep_until(due) => Wake::Timer,
                    }
                }
                None => {
                    let (tp, event) = self.session.next_event().await;
                    Wake::Fetch(tp, event)
                }
            };
            let handled = match wake {
                Wake::Fetch(tp, event) => self.on_fetch_event(tp, event),
                Wake::Group(Some(event)) => self.on_group_event(event),
                Wake::Group(None) => Err(ClientError::Closed(
                    "the consumer's group membership stopped".into(),
                )),
                Wake::Revoked(done) => self.release_revoked(done),
                Wake::AutoCommitted(done) => {
                    self.note_auto_committed(done);
                    Ok(())
                }
                Wake::Timer => Ok(()),
            };
            if let Err(e) = handled {
                return Some(Err(e));
            }
        }
    }

    fn on_fetch_event(&mut self, tp: TopicPartition, event: FetchEvent) -> Result<()> {
        match event {
            FetchEvent::Records {
                records,
                high_watermark,
                ..
            } => {
                if let Some(state) = self.parts.get_mut(&tp) {
                    state.high_watermark = Some(high_watermark);
                }
                self.session.buffer(tp, records);
                Ok(())
            }
            FetchEvent::Reset { offset, .. } => {
                if let Some(state) = self.parts.get_mut(&tp) {
                    state.position = Some(offset);
                }
                Ok(())
            }
            FetchEvent::Error { error, fatal, .. } => {
                if fatal {
                    tracing::warn!(partition = %tp, %error, "stopped fetching");
                    if let Some(state) = self.parts.get_mut(&tp) {
                        state.stopped = true;
                    }
                    self.session.forget(&tp);
                }
                Err(error)
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

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
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
