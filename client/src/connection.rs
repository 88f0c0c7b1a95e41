//! [`Connection`]: the channels to the brokers and the metadata cache that routes
//! requests to them.
//!
//! This module owns:
//! - one tonic `Channel` per broker address, created lazily and shared by every
//!   client type built on the same `Connection` (tonic reconnects it by itself);
//! - the [`ClusterMetadata`] cache: filled from any bootstrap broker that answers,
//!   refreshed when it is missing a topic or leader, when a broker says `NOT_LEADER`
//!   or `UNKNOWN_*`, when a broker is unreachable, and when older than
//!   `metadata_max_age`; `NOT_LEADER` / `NOT_CONTROLLER` hints are applied at once;
//! - request routing and retry (`Connection::call`): to any broker, to the
//!   controller, or to a partition's leader, retrying retriable errors with
//!   exponential back-off and jitter, following leader hints without waiting.
//!
//! Refreshes are single-flight: concurrent callers that find the cache stale wait
//! for one `Metadata` request instead of sending one each. Metadata always asks for
//! every topic, which keeps the cache simple; a cluster with very many topics may
//! want per-topic requests later.

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use sluice_proto::v1;
use sluice_proto::v1::group_coordinator_client::GroupCoordinatorClient;
use sluice_proto::v1::sluice_client::SluiceClient;
use tonic::transport::{Channel, Endpoint};

use crate::backoff::Backoff;
use crate::config::{ClientConfig, validate_addr};
use crate::error::{CallError, ClientError, Result, check};
use crate::metadata::{BrokerInfo, ClusterMetadata, TopicMetadata};
use crate::types::Offset;

/// The largest HTTP/2 frame the client accepts: a fetch response's full size.
const MAX_FRAME_BYTES: u32 = 1 << 20;

/// Where a request must go.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Target<'a> {
    /// Any broker that answers (metadata, listings).
    Any,
    /// The controller (topic changes); falls back to any broker, then follows hints.
    Controller,
    /// The leader of a partition.
    Leader(&'a str, u32),
}

/// A handle on a cluster: broker channels plus the metadata cache. Cheap to clone;
/// clones share everything. [`crate::Producer`], [`crate::Consumer`] and
/// [`crate::Admin`] can share one.
///
/// ```no_run
/// use sluice_client::{ClientConfig, Connection};
///
/// # async fn example() -> sluice_client::Result<()> {
/// let conn = Connection::connect(ClientConfig::new(["127.0.0.1:9700"])).await?;
/// let metadata = conn.refresh_metadata().await?;
/// for broker in metadata.brokers.values() {
///     println!("broker {broker}");
/// }
/// let leader = conn.leader("orders", 0).await?;
/// println!("orders/0 is led by {leader}");
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct Connection {
    inner: Arc<Inner>,
}

struct Inner {
    config: ClientConfig,
    channels: Mutex<HashMap<String, Channel>>,
    metadata: RwLock<Snapshot>,
    /// Bumped by every completed refresh; lets waiting refreshers skip theirs.
    generation: AtomicU64,
    refresh_lock: tokio::sync::Mutex<()>,
    /// The broker that last answered an untargeted request.
    preferred: Mutex<Option<String>>,
    /// A background refresh (for `metadata_max_age`) is running.
    aging_refresh: AtomicBool,
}

struct Snapshot {
    metadata: Arc<ClusterMetadata>,
    fetched: Option<Instant>,
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection")
            .field("bootstrap", &self.inner.config.bootstrap)
            .finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Connection {
    /// Connects: validates `config` and fetches metadata from the first bootstrap
    /// broker that answers. Fails with [`ClientError::Transport`] naming every
    /// bootstrap broker tried when none answers.
    pub async fn connect(config: ClientConfig) -> Result<Self> {
        let conn = Self::new(config)?;
        conn.refresh_metadata().await?;
        Ok(conn)
    }

    /// A connection that has not talked to any broker yet; the first request fetches
    /// metadata. Must be called inside a Tokio runtime.
    pub fn new(config: ClientConfig) -> Result<Self> {
        config.validate()?;
        Ok(Self {
            inner: Arc::new(Inner {
                config,
                channels: Mutex::new(HashMap::new()),
                metadata: RwLock::new(Snapshot {
                    metadata: Arc::new(ClusterMetadata::default()),
                    fetched: None,
                }),
                generation: AtomicU64::new(0),
                refresh_lock: tokio::sync::Mutex::new(()),
                preferred: Mutex::new(None),
                aging_refresh: AtomicBool::new(false),
            }),
        })
    }

    /// The configuration this connection was made with.
    pub fn config(&self) -> &ClientConfig {
        &self.inner.config
    }

    /// The cached metadata, as last fetched (and patched by leader hints).
    pub fn metadata(&self) -> Arc<ClusterMetadata> {
        self.inner
            .metadata
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .metadata
            .clone()
    }

    fn update_metadata(&self, f: impl FnOnce(&mut ClusterMetadata)) {
        let mut snap = self
            .inner
            .metadata
            .write()
            .unwrap_or_else(|e| e.into_inner());
        f(Arc::make_mut(&mut snap.metadata));
    }

    /// Fetches fresh metadata (every topic) from the first broker that answers:
    /// the one that answered last, then every known broker, then the bootstrap list.
    /// If another task is already refreshing, waits for its result instead.
    pub async fn refresh_metadata(&self) -> Result<Arc<ClusterMetadata>> {
        let seen = self.inner.generation.load(Ordering::Acquire);
        let _guard = self.inner.refresh_lock.lock().await;
        if self.inner.generation.load(Ordering::Acquire) != seen {
            return Ok(self.metadata());
        }
        let timeout = self.inner.config.request_timeout;
        let mut failures = Vec::new();
        for addr in self.candidates() {
            let attempt = async {
                let mut client = self.client(&addr)?;
                let resp = tokio::time::timeout(
                    timeout,
                    client.metadata(v1::MetadataRequest { topics: vec![] }),
                )
                .await
                .map_err(|_| ClientError::Timeout {
                    message: format!("{addr} did not answer a metadata request within {timeout:?}"),
                })?
                .map_err(|s| ClientError::from_status(&addr, &s))?
                .into_inner();
                check(resp.error.clone())?;
                Ok::<_, ClientError>(resp)
            };
            match attempt.await {
                Ok(resp) => {
                    let metadata = Arc::new(ClusterMetadata::from_proto(resp));
                    {
                        let mut snap = self
                            .inner
                            .metadata
                            .write()
                            .unwrap_or_else(|e| e.into_inner());
                        snap.metadata = metadata.clone();
                        snap.fetched = Some(Instant::now());
                    }
                    *lock(&self.inner.preferred) = Some(addr);
                    self.inner.generation.fetch_add(1, Ordering::AcqRel);
                    return Ok(metadata);
                }
                Err(err) => {
                    tracing::debug!(%addr, %err, "metadata request failed");
                    let mut preferred = lock(&self.inner.preferred);
                    if preferred.as_deref() == Some(addr.as_str()) {
                        *preferred = None;
                    }
                    drop(preferred);
                    failures.push((addr, err));
                }
            }
        }
        Err(no_broker_answered(failures))
    }

    /// Addresses to try for an untargeted request, best first, without duplicates.
    pub(crate) fn candidates(&self) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        let mut push = |a: &str| {
            if !out.iter().any(|x| x == a) {
                out.push(a.to_owned());
            }
        };
        if let Some(p) = lock(&self.inner.preferred).as_deref() {
            push(p);
        }
        for b in self.metadata().brokers.values() {
            push(&b.addr);
        }
        for b in &self.inner.config.bootstrap {
            push(b);
        }
        out
    }

    /// The topic's metadata: from the cache, or from a refresh if the cache does not
    /// have it. [`ClientError::UnknownTopic`] if the cluster does not have it either.
    /// A cache older than `metadata_max_age` is refreshed in the background.
    pub async fn topic(&self, name: &str) -> Result<Arc<TopicMetadata>> {
        self.refresh_if_aged();
        if let Some(t) = self.cached_topic(name) {
            return Ok(t);
        }
        let metadata = self.refresh_metadata().await?;
        metadata
            .topic(name)
            .cloned()
            .ok_or_else(|| unknown_topic(name))
    }

    /// `topic`'s metadata if cached, without waiting and without reading the clock:
    /// the producer calls this for every record, so the age check is
    /// [`Connection::refresh_if_aged`]'s, called once per batch.
    pub(crate) fn cached_topic(&self, name: &str) -> Option<Arc<TopicMetadata>> {
        let snap = self
            .inner
            .metadata
            .read()
            .unwrap_or_else(|e| e.into_inner());
        snap.metadata.topic(name).cloned()
    }

    /// Starts a background refresh if the cached metadata is older than
    /// `metadata_max_age` (and none is running).
    pub(crate) fn refresh_if_aged(&self) {
        let fetched = self
            .inner
            .metadata
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .fetched;
        if fetched.is_some_and(|at| at.elapsed() > self.inner.config.metadata_max_age)
            && !self.inner.aging_refresh.swap(true, Ordering::AcqRel)
        {
            let conn = self.clone();
            tokio::spawn(async move {
                if let Err(err) = conn.refresh_metadata().await {
                    tracing::debug!(%err, "background metadata refresh failed");
                }
                conn.inner.aging_refresh.store(false, Ordering::Release);
            });
        }
    }

    /// The leader of `topic`/`partition`: from the cache, or after one refresh.
    /// Fails with `UnknownTopic` / `UnknownPartition` if the refreshed metadata does
    /// not have the partition, and with a retriable `NotLeader` (no hint) if it has
    /// no leader right now (an election is under way).
    pub async fn leader(&self, topic: &str, partition: u32) -> Result<BrokerInfo> {
        if let Some(b) = self.cached_leader(topic, partition) {
            return Ok(b);
        }
        let metadata = self.refresh_metadata().await?;
        let t = metadata.topic(topic).ok_or_else(|| unknown_topic(topic))?;
        let p = t
            .partition(partition)
            .ok_or_else(|| unknown_partition(topic, partition, t.partition_count()))?;
        p.leader.clone().ok_or_else(|| ClientError::NotLeader {
            message: format!(
                "no leader is known for {topic}/{partition} (an election may be under way)"
            ),
            leader: None,
        })
    }

    /// The cached leader of `topic`/`partition`, without any request.
    pub(crate) fn cached_leader(&self, topic: &str, partition: u32) -> Option<BrokerInfo> {
        self.metadata().leader(topic, partition).cloned()
    }

    /// Applies what an error says about leadership: a `NOT_LEADER` hint becomes the
    /// partition's cached leader, a `NOT_CONTROLLER` hint the cached controller.
    /// Without a hint, a partition's cached leader is forgotten. Returns the address
    /// to retry at, if the error named one.
    pub(crate) fn apply_hint(&self, tp: Option<(&str, u32)>, err: &ClientError) -> Option<String> {
        match (err, tp) {
            (
                ClientError::NotLeader {
                    leader: Some(b), ..
                },
                Some((t, p)),
            ) => {
                self.update_metadata(|m| m.set_leader(t, p, b.clone()));
                Some(b.addr.clone())
            }
            (ClientError::NotLeader { leader: None, .. }, Some((t, p))) => {
                self.update_metadata(|m| m.clear_leader(t, p));
                None
            }
            (
                ClientError::NotController {
                    leader: Some(b), ..
                },
                _,
            ) => {
                self.update_metadata(|m| {
                    if b.id != 0 {
                        m.brokers.insert(b.id, b.clone());
                        m.controller = Some(b.clone());
                    }
                });
                Some(b.addr.clone())
            }
            (
                ClientError::NotLeader {
                    leader: Some(b), ..
                },
                None,
            ) => Some(b.addr.clone()),
            _ => None,
        }
    }

    /// The gRPC client for a broker address, sharing that broker's channel.
    pub(crate) fn client(&self, addr: &str) -> Result<SluiceClient<Channel>> {
        let channel = self.channel(addr)?;
        let max = self.inner.config.max_message_bytes;
        Ok(SluiceClient::new(channel)
            .max_decoding_message_size(max)
            .max_encoding_message_size(max))
    }

    /// The consumer-group service client for a broker address, sharing its channel.
    pub(crate) fn group_client(&self, addr: &str) -> Result<GroupCoordinatorClient<Channel>> {
        let channel = self.channel(addr)?;
        let max = self.inner.config.max_message_bytes;
        Ok(GroupCoordinatorClient::new(channel)
            .max_decoding_message_size(max)
            .max_encoding_message_size(max))
    }

    fn channel(&self, addr: &str) -> Result<Channel> {
        let mut channels = lock(&self.inner.channels);
        if let Some(c) = channels.get(addr) {
            return Ok(c.clone());
        }
        validate_addr(addr)?;
        let uri = if addr.starts_with("http://") {
            addr.to_owned()
        } else {
            format!("http://{addr}")
        };
        let endpoint = Endpoint::from_shared(uri)
            .map_err(|e| {
                ClientError::InvalidArgument(format!("broker address {addr:?} is not usable: {e}"))
            })?
            .connect_timeout(self.inner.config.connect_timeout)
            .tcp_nodelay(true)
            .http2_keep_alive_interval(Duration::from_secs(30))
            .keep_alive_timeout(Duration::from_secs(10))
            .keep_alive_while_idle(true)
            .http2_adaptive_window(true)
            // Fetch responses arrive as one HTTP/2 frame per MiB instead of one per
            // 16 KiB (the default): fewer frames for h2 and tonic to handle and copy.
            .max_frame_size(MAX_FRAME_BYTES);
        let channel = endpoint.connect_lazy();
        channels.insert(addr.to_owned(), channel.clone());
        Ok(channel)
    }

    /// Sends one request to `target`, retrying retriable errors (and, for a
    /// partition's leader, stale-metadata errors) up to `max_retries` times. Leader
    /// hints are followed at once; other retries refresh metadata and back off.
    /// Each attempt is bounded by `request_timeout`.
    pub(crate) async fn call<T, F, Fut>(&self, target: Target<'_>, mut op: F) -> Result<T>
    where
        F: FnMut(SluiceClient<Channel>) -> Fut,
        Fut: Future<Output = std::result::Result<T, CallError>>,
    {
        let config = &self.inner.config;
        let backoff = Backoff::new(config.retry_backoff, config.retry_backoff_max);
        let mut attempt = 0u32;
        let mut redirect: Option<String> = None;
        let mut rotate = 0usize;
        loop {
            let resolved = match redirect.take() {
                Some(addr) => Ok(addr),
                None => self.resolve(target, rotate).await,
            };
            let (addr, err) = match resolved {
                Ok(addr) => match self.attempt(&addr, &mut op).await {
                    Ok(v) => {
                        if !matches!(target, Target::Leader(..)) {
                            *lock(&self.inner.preferred) = Some(addr);
                        }
                        return Ok(v);
                    }
                    Err(e) => (Some(addr), e),
                },
                // The refreshed metadata says the partition does not exist: final.
                Err(e) if !e.is_retriable() => return Err(e),
                Err(e) => (None, e),
            };
            attempt += 1;
            let retriable = err.is_retriable()
                || (matches!(target, Target::Leader(..)) && err.is_stale_metadata());
            if !retriable || attempt > config.max_retries {
                return Err(err);
            }
            tracing::debug!(?target, attempt, %err, "retrying request");
            let tp = match target {
                Target::Leader(t, p) => Some((t, p)),
                _ => None,
            };
            if let Some(hint) = self.apply_hint(tp, &err)
                && addr.as_deref() != Some(hint.as_str())
            {
                redirect = Some(hint);
                continue;
            }
            if matches!(
                err,
                ClientError::Transport { .. } | ClientError::Timeout { .. }
            ) {
                rotate += 1;
            }
            tokio::time::sleep(backoff.delay(attempt - 1)).await;
            if let Err(e) = self.refresh_metadata().await {
                tracing::debug!(%e, "metadata refresh before retry failed");
            }
        }
    }

    async fn resolve(&self, target: Target<'_>, rotate: usize) -> Result<String> {
        match target {
            Target::Leader(topic, partition) => Ok(self.leader(topic, partition).await?.addr),
            Target::Controller => match self.metadata().controller.as_ref() {
                Some(c) if rotate == 0 => Ok(c.addr.clone()),
                _ => self.any_addr(rotate).await,
            },
            Target::Any => self.any_addr(rotate).await,
        }
    }

    async fn any_addr(&self, rotate: usize) -> Result<String> {
        let candidates = self.candidates();
        // `candidates` always holds the (validated, non-empty) bootstrap list.
        Ok(candidates[rotate % candidates.len()].clone())
    }

    async fn attempt<T, F, Fut>(&self, addr: &str, op: &mut F) -> Result<T>
    where
        F: FnMut(SluiceClient<Channel>) -> Fut,
        Fut: Future<Output = std::result::Result<T, CallError>>,
    {
        let client = self.client(addr)?;
        let timeout = self.inner.config.request_timeout;
        match tokio::time::timeout(timeout, op(client)).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(e.into_client(addr)),
            Err(_) => Err(ClientError::Timeout {
                message: format!("{addr} did not answer within {timeout:?}"),
            }),
        }
    }

    /// A producer id (and epoch) for idempotent produce, from the controller.
    pub(crate) async fn init_producer_id(&self) -> Result<(i64, i16)> {
        self.call(Target::Controller, |mut c| async move {
            let resp = c
                .init_producer_id(v1::InitProducerIdRequest {})
                .await?
                .into_inner();
            check(resp.error)?;
            let epoch =
                i16::try_from(resp.producer_epoch).map_err(|_| ClientError::InvalidRequest {
                    message: format!(
                        "the broker handed out producer epoch {}, outside Kafka's range",
                        resp.producer_epoch
                    ),
                })?;
            Ok((resp.producer_id, epoch))
        })
        .await
    }

    /// Resolves a start position to an offset with the partition leader's
    /// `ListOffsets` (`Offset::At` needs no request).
    pub async fn list_offset(&self, topic: &str, partition: u32, offset: Offset) -> Result<u64> {
        use v1::list_offsets_request::Spec;
        let spec = match offset {
            Offset::At(o) => return Ok(o),
            Offset::Earliest => Spec::Earliest(true),
            Offset::Latest => Spec::Latest(true),
            Offset::Timestamp(ts) => Spec::Timestamp(ts),
        };
        let req = v1::ListOffsetsRequest {
            topic: topic.to_owned(),
            partition,
            spec: Some(spec),
        };
        self.call(Target::Leader(topic, partition), |mut c| {
            let req = req.clone();
            async move {
                let resp = c.list_offsets(req).await?.into_inner();
                check(resp.error)?;
                Ok(resp.offset)
            }
        })
        .await
    }
}

pub(crate) fn unknown_topic(topic: &str) -> ClientError {
    ClientError::UnknownTopic {
        message: format!("topic '{topic}' does not exist"),
    }
}

pub(crate) fn unknown_partition(topic: &str, partition: u32, count: u32) -> ClientError {
    ClientError::UnknownPartition {
        message: format!(
            "topic '{topic}' has {count} partition(s) (0..{count}); partition {partition} does not exist"
        ),
    }
}

fn no_broker_answered(mut failures: Vec<(String, ClientError)>) -> ClientError {
    if failures.len() == 1 {
        let (_, err) = failures.remove(0);
        return err;
    }
    let addrs: Vec<&str> = failures.iter().map(|(a, _)| a.as_str()).collect();
    let details: Vec<String> = failures.iter().map(|(a, e)| format!("{a}: {e}")).collect();
    ClientError::Transport {
        addr: addrs.join(","),
        message: format!("no broker answered; {}", details.join("; ")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn unreachable_bootstrap_fails_with_a_transport_error_naming_it() {
        // Port 1 on localhost: nothing listens there, the connect is refused at once.
        let config = ClientConfig {
            connect_timeout: Duration::from_secs(2),
            ..ClientConfig::new(["127.0.0.1:1"])
        };
        let err = Connection::connect(config).await.unwrap_err();
        assert!(
            matches!(&err, ClientError::Transport { addr, .. } if addr == "127.0.0.1:1"),
            "{err:?}"
        );
        assert!(err.to_string().contains("127.0.0.1:1"), "{err}");
    }

    #[tokio::test]
    async fn several_unreachable_bootstraps_are_all_named() {
        let config = ClientConfig {
            connect_timeout: Duration::from_secs(2),
            ..ClientConfig::new(["127.0.0.1:1", "127.0.0.1:2"])
        };
        let err = Connection::connect(config).await.unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains("127.0.0.1:1") && text.contains("127.0.0.1:2"),
            "{text}"
        );
    }

    #[tokio::test]
    async fn hints_update_the_cache() {
        let conn = Connection::new(ClientConfig::default()).unwrap();
        conn.update_metadata(|m| {
            *m = ClusterMetadata::from_proto(v1::MetadataResponse {
                brokers: vec![v1::Broker {
                    id: 1,
                    addr: "b1:1".into(),
                }],
                controller: 1,
                topics: vec![v1::TopicMetadata {
                    name: "t".into(),
                    partitions: vec![v1::PartitionMetadata {
                        partition: 0,
                        leader: 1,
                        replicas: vec![1],
                    }],
                    error: None,
                }],
                error: None,
            })
        });
        assert_eq!(conn.cached_leader("t", 0).unwrap().addr, "b1:1");
        let moved = ClientError::NotLeader {
            message: "moved".into(),
            leader: Some(BrokerInfo {
                id: 2,
                addr: "b2:1".into(),
            }),
        };
        assert_eq!(
            conn.apply_hint(Some(("t", 0)), &moved).as_deref(),
            Some("b2:1")
        );
        assert_eq!(conn.cached_leader("t", 0).unwrap().id, 2);
        let no_hint = ClientError::NotLeader {
            message: "election".into(),
            leader: None,
        };
        assert_eq!(conn.apply_hint(Some(("t", 0)), &no_hint), None);
        assert_eq!(conn.cached_leader("t", 0), None);
        let controller = ClientError::NotController {
            message: "ask 3".into(),
            leader: Some(BrokerInfo {
                id: 3,
                addr: "b3:1".into(),
            }),
        };
        assert_eq!(conn.apply_hint(None, &controller).as_deref(), Some("b3:1"));
        assert_eq!(conn.metadata().controller.as_ref().unwrap().id, 3);
        // The preferred broker, then known brokers, then bootstrap, no duplicates.
        let candidates = conn.candidates();
        assert_eq!(candidates, ["b1:1", "b2:1", "b3:1", "127.0.0.1:9700"]);
    }

    #[tokio::test]
    async fn bad_addresses_are_refused_before_connecting() {
        let conn = Connection::new(ClientConfig::default()).unwrap();
        assert!(matches!(
            conn.client("no-port"),
            Err(ClientError::InvalidArgument(_))
        ));
        conn.client("127.0.0.1:9").unwrap();
    }
}
