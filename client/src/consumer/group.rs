//! A subscribed consumer's membership in its group: the heartbeat task and the
//! committer.
//!
//! - The heartbeat task joins, heartbeats at the interval the coordinator names, and
//!   reports the subscription and what the consumer owns now; it passes every
//!   assignment the coordinator sends to the consumer as a [`GroupEvent`], and wakes
//!   up at once when the consumer's ownership changes (so revoked partitions are
//!   released without waiting a whole interval). Removed from the group (session
//!   expired, fenced), it reports that and rejoins.
//! - The committer sends commits one at a time, in the order they were asked for, so
//!   an older asynchronous commit never lands after a newer one. Each carries the
//!   member id and epoch of when it was asked for: positions read under a membership
//!   that has since ended must be fenced, not committed under the next one.
//!
//! The consumer (`mod.rs`) acts on the events inside `recv`; nothing here touches
//! fetching. Dropping a [`GroupMember`] stops both tasks without leaving the group
//! (its session then expires, as after a crash); [`GroupMember::leave`] leaves.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sluice_proto::v1;
use tokio::sync::{Notify, mpsc, oneshot};
use tokio::task::JoinHandle;

use super::OffsetAndMetadata;
use crate::backoff::{Backoff, random_u64};
use crate::config::ConsumerConfig;
use crate::coordinator::Coordinator;
use crate::error::{ClientError, Result, check};
use crate::types::TopicPartition;

/// Shortest heartbeat interval honoured, whatever a broker says.
const MIN_HEARTBEAT: Duration = Duration::from_millis(50);

/// What the heartbeat task tells the consumer.
#[derive(Debug)]
pub(crate) enum GroupEvent {
    /// The partitions the consumer may own from now on.
    Assignment(BTreeSet<TopicPartition>),
    /// The consumer is no longer a member: what it owned belongs to others now. The
    /// task is rejoining.
    Lost(ClientError),
    /// Heartbeats have failed for a while (the task keeps trying), or failed for
    /// good (the task stopped).
    Error { error: ClientError, fatal: bool },
}

/// Topics by name and/or a regex over topic names.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Subscription {
    pub topics: Vec<String>,
    pub regex: String,
}

#[derive(Debug, Default)]
struct Identity {
    member_id: String,
    epoch: i32,
}

/// State the consumer and the heartbeat task share.
#[derive(Debug, Default)]
struct Shared {
    identity: Mutex<Identity>,
    owned: Mutex<BTreeSet<TopicPartition>>,
    subscription: Mutex<Subscription>,
    wake: Notify,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Shared {
    fn identity(&self) -> (String, i32) {
        let id = lock(&self.identity);
        (id.member_id.clone(), id.epoch)
    }
}

struct CommitJob {
    request: v1::OffsetCommitRequest,
    reply: Option<oneshot::Sender<Result<()>>>,
}

/// Membership of one group: heartbeat task, committer, and what they share.
pub(crate) struct GroupMember {
    coordinator: Arc<Coordinator>,
    shared: Arc<Shared>,
    pub(crate) events: mpsc::UnboundedReceiver<GroupEvent>,
    commits: mpsc::UnboundedSender<CommitJob>,
    tasks: Vec<JoinHandle<()>>,
    config: ConsumerConfig,
}

impl Drop for GroupMember {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

impl GroupMember {
    /// Starts membership of the coordinator's group with `subscription`.
    pub(crate) fn join(
        coordinator: Coordinator,
        subscription: Subscription,
        config: &ConsumerConfig,
    ) -> Self {
        let coordinator = Arc::new(coordinator);
        let shared = Arc::new(Shared::default());
        *lock(&shared.subscription) = subscription;
        // Chosen here rather than by the coordinator, so that a join whose reply is
        // lost and is sent again joins the same member instead of leaving a ghost.
        lock(&shared.identity).member_id = new_member_id();
        let (events_tx, events) = mpsc::unbounded_channel();
        let (commits, commit_rx) = mpsc::unbounded_channel();
        let heartbeat = tokio::spawn(
            Heartbeats {
                coordinator: coordinator.clone(),
                shared: shared.clone(),
                events: events_tx,
                config: config.clone(),
            }
            .run(),
        );
        let committer = tokio::spawn(run_committer(coordinator.clone(), commit_rx));
        Self {
            coordinator,
            shared,
            events,
            commits,
            tasks: vec![heartbeat, committer],
            config: config.clone(),
        }
    }

    pub(crate) fn group(&self) -> &str {
        self.coordinator.group()
    }

    /// Changes the subscription; the next heartbeat (sent now) carries it.
    pub(crate) fn resubscribe(&self, subscription: Subscription) {
        *lock(&self.shared.subscription) = subscription;
        self.shared.wake.notify_one();
    }

    /// Tells the coordinator (at once) what the consumer owns now.
    pub(crate) fn set_owned(&self, owned: BTreeSet<TopicPartition>) {
        *lock(&self.shared.owned) = owned;
        self.shared.wake.notify_one();
    }

    /// The member id and epoch, once joined.
    pub(crate) fn identity(&self) -> (String, i32) {
        self.shared.identity()
    }

    /// Commits `offsets` and waits for the answer. Commits are sent in order.
    pub(crate) async fn commit(
        &self,
        offsets: Vec<(TopicPartition, OffsetAndMetadata)>,
    ) -> Result<()> {
        committed(self.commit_then(offsets)?.await)
    }

    /// Queues a commit; the receiver gets its outcome. Commits are sent in order.
    pub(crate) fn commit_then(
        &self,
        offsets: Vec<(TopicPartition, OffsetAndMetadata)>,
    ) -> Result<oneshot::Receiver<Result<()>>> {
        let (tx, rx) = oneshot::channel();
        self.send_commit(offsets, Some(tx))?;
        Ok(rx)
    }

    /// Queues a commit without waiting; a failure is logged.
    pub(crate) fn commit_async(
        &self,
        offsets: Vec<(TopicPartition, OffsetAndMetadata)>,
    ) -> Result<()> {
        self.send_commit(offsets, None)
    }

    fn send_commit(
        &self,
        offsets: Vec<(TopicPartition, OffsetAndMetadata)>,
        reply: Option<oneshot::Sender<Result<()>>>,
    ) -> Result<()> {
        if offsets.is_empty() {
            if let Some(reply) = reply {
                let _ = reply.send(Ok(()));
            }
            return Ok(());
        }
        let offsets = offsets
            .into_iter()
            .map(|(tp, o)| v1::CommitOffset {
                topic: tp.topic,
                partition: tp.partition,
                offset: o.offset,
                metadata: o.metadata,
            })
            .collect();
        // Stamped now, not when sent: if the member is removed and rejoins (same id,
        // new epoch) while this waits, the coordinator must refuse it.
        let (member_id, member_epoch) = self.shared.identity();
        let request = v1::OffsetCommitRequest {
            group_id: self.group().to_string(),
            member_id,
            member_epoch,
            offsets,
        };
        self.commits
            .send(CommitJob { request, reply })
            .map_err(|_| ClientError::Closed("the consumer's committer stopped".into()))
    }

    /// Committed offsets of `partitions` (those without a commit are left out).
    pub(crate) async fn committed(
        &self,
        partitions: &[TopicPartition],
    ) -> Result<BTreeMap<TopicPartition, OffsetAndMetadata>> {
        self.coordinator.committed(Some(partitions)).await
    }

    /// Leaves the group (after the tasks stop), bounded by the request timeout.
    pub(crate) async fn leave(self) -> Result<()> {
        for t in &self.tasks {
            t.abort();
        }
        let (member_id, epoch) = self.shared.identity();
        if epoch <= 0 {
            return Ok(());
        }
        let req = v1::HeartbeatRequest {
            group_id: self.group().to_string(),
            member_id,
            member_epoch: -1,
            client_id: self.config.client_id.clone(),
            ..Default::default()
        };
        self.coordinator
            .call_once(
                |mut c| async move { Ok(check(c.heartbeat(req).await?.into_inner().error)?) },
            )
            .await
    }
}

/// The outcome of a commit whose reply came through a channel.
pub(crate) fn committed(
    reply: std::result::Result<Result<()>, oneshot::error::RecvError>,
) -> Result<()> {
    reply.map_err(|_| ClientError::Closed("the consumer's committer stopped".into()))?
}

/// A random member id: 128 bits in hex.
fn new_member_id() -> String {
    format!("{:016x}{:016x}", random_u64(), random_u64())
}

async fn run_committer(
    coordinator: Arc<Coordinator>,
    mut jobs: mpsc::UnboundedReceiver<CommitJob>,
) {
    while let Some(job) = jobs.recv().await {
        let req = job.request;
        let result = coordinator
            .call(|mut c| {
                let req = req.clone();
                async move { Ok(check(c.offset_commit(req).await?.into_inner().error)?) }
            })
            .await;
        match job.reply {
            Some(reply) => {
                let _ = reply.send(result);
            }
            None => {
                if let Err(e) = result {
                    tracing::warn!(group = %coordinator.group(), %e, "asynchronous commit failed");
                }
            }
        }
    }
}

struct Heartbeats {
    coordinator: Arc<Coordinator>,
    shared: Arc<Shared>,
    events: mpsc::UnboundedSender<GroupEvent>,
    config: ConsumerConfig,
}

impl Heartbeats {
    fn request(&self) -> v1::HeartbeatRequest {
        let (member_id, member_epoch) = self.shared.identity();
        let subscription = lock(&self.shared.subscription).clone();
        let millis =
            |d: Option<Duration>| d.map_or(0, |d| u32::try_from(d.as_millis()).unwrap_or(u32::MAX));
        v1::HeartbeatRequest {
            group_id: self.coordinator.group().to_string(),
            member_id,
            member_epoch,
            subscribed_topics: subscription.topics,
            subscribed_regex: subscription.regex,
            owned: TopicPartition::to_wire(lock(&self.shared.owned).iter().cloned()),
            session_timeout_ms: millis(self.config.session_timeout),
            rebalance_timeout_ms: millis(self.config.rebalance_timeout),
            client_id: self.config.client_id.clone(),
        }
    }

    async fn run(self) {
        let backoff = Backoff::new(self.config.retry_backoff, self.config.retry_backoff_max);
        let report_after = self
            .config
            .session_timeout
            .unwrap_or(Duration::from_secs(10));
        let mut interval = MIN_HEARTBEAT;
        let mut failures = 0u32;
        let mut failing_since: Option<Instant> = None;
        loop {
            let req = self.request();
            let result = self
                .coordinator
                .call_once(|mut c| async move {
                    let resp = c.heartbeat(req).await?.into_inner();
                    check(resp.error.clone())?;
                    Ok(resp)
                })
                .await;
            let wait = match result {
                Ok(resp) => {
                    failures = 0;
                    failing_since = None;
                    {
                        let mut id = lock(&self.shared.identity);
                        id.member_id = resp.member_id;
                        id.epoch = resp.member_epoch;
                    }
                    if let Some(a) = resp.assignment
                        && self
                            .events
                            .send(GroupEvent::Assignment(
                                TopicPartition::from_wire(a.partitions).collect(),
                            ))
                            .is_err()
                    {
                        return;
                    }
                    interval =
                        Duration::from_millis(resp.heartbeat_interval_ms.into()).max(MIN_HEARTBEAT);
                    interval
                }
                Err(
                    e @ (ClientError::UnknownMemberId { .. }
                    | ClientError::FencedMemberEpoch { .. }),
                ) => {
                    tracing::warn!(group = %self.coordinator.group(), %e, "removed from the group; rejoining");
                    lock(&self.shared.identity).epoch = 0;
                    lock(&self.shared.owned).clear();
                    if self.events.send(GroupEvent::Lost(e)).is_err() {
                        return;
                    }
                    continue;
                }
                Err(e) if e.is_retriable() || e.is_stale_metadata() => {
                    tracing::debug!(group = %self.coordinator.group(), %e, "heartbeat failed");
                    let since = *failing_since.get_or_insert_with(Instant::now);
                    if since.elapsed() >= report_after {
                        failing_since = Some(Instant::now());
                        let event = GroupEvent::Error {
                            error: e,
                            fatal: false,
                        };
                        if self.events.send(event).is_err() {
                            return;
                        }
                    }
                    failures = failures.saturating_add(1);
                    // Never wait longer than the interval: the session keeps running.
                    backoff.delay(failures - 1).min(interval.max(MIN_HEARTBEAT))
                }
                Err(error) => {
                    let _ = self.events.send(GroupEvent::Error { error, fatal: true });
                    return;
                }
            };
            tokio::select! {
                () = tokio::time::sleep(wait) => {}
                () = self.shared.wake.notified() => {}
            }
        }
    }
}
