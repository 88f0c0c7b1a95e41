//! [`GroupCoordinator`]: this broker's part in coordinating consumer groups.
//!
//! Owns: the shards (the `__consumer_offsets` partitions this broker hosts), routing a
//! group to its shard, creating the internal topic on first use (when this broker is
//! the controller), the request-level rules (valid ids, existing partitions, who may
//! commit, when a group may be reset or deleted), and a timer that expires sessions,
//! loads shards this broker has come to lead and compacts them.
//!
//! Must never answer for a group whose shard it does not lead (`NotCoordinator`), and
//! never answer before what the answer reflects is durable: every change goes through
//! [`Shard::update`], which answers once the change's records are written, and every
//! read of offsets or groups through [`Shard::read`], which also confirms that this
//! broker still leads (a cut-off leader would otherwise answer from stale memory).
//!
//! Liveness is judged by when a member's request *arrived*, not when it was handled:
//! requests may queue behind writes, and a member whose heartbeat is waiting is alive.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use tokio::task::JoinHandle;

use super::membership::{Group, Heartbeat, HeartbeatReply, MemberState};
use super::records::{Committed, GroupRecord};
use super::shard::{Loaded, Shard};
use super::{
    GroupConfig, GroupError, MAX_OFFSET_METADATA_BYTES, OFFSETS_TOPIC, TopicPartition,
    partition_for, validate_group_id,
};
use crate::log::now_ms;
use crate::metadata::state::{MetadataError, is_internal_topic};
use crate::metadata::{ControllerError, MetadataCommand, MetadataState};
use crate::node::Node;
use crate::partition::Partition;

/// How often sessions are checked and newly led shards loaded.
const TICK: Duration = Duration::from_millis(200);

/// Heartbeat interval of a member waiting for partitions others are releasing.
const RECONCILING_HEARTBEAT: Duration = Duration::from_millis(200);

/// How often shards consider compaction.
const COMPACTION_INTERVAL: Duration = Duration::from_secs(30);

/// Segment size of `__consumer_offsets`: small, so that compaction frees space soon.
const OFFSETS_SEGMENT_BYTES: u64 = 4 << 20;

/// A group as `describe` reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupDescription {
    pub id: String,
    pub phase: &'static str,
    pub epoch: i32,
    pub members: Vec<MemberState>,
    pub offsets: BTreeMap<TopicPartition, Committed>,
}

/// A group as `list` reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupSummary {
    pub id: String,
    pub phase: &'static str,
    pub members: usize,
}

/// An offset to commit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OffsetCommit {
    pub tp: TopicPartition,
    pub offset: u64,
    pub metadata: String,
}

pub struct GroupCoordinator {
    node: Arc<Node>,
    config: GroupConfig,
    shards: Mutex<HashMap<u32, Arc<Shard>>>,
    /// When each member's latest request arrived (before it waits for its shard),
    /// and how many of its requests are being handled.
    heard: Mutex<HashMap<String, Heard>>,
    member_seq: AtomicU64,
    ticker: Mutex<Option<JoinHandle<()>>>,
}

impl GroupCoordinator {
    /// A coordinator for `node`, with its timer running.
    pub fn start(node: Arc<Node>, config: GroupConfig) -> Arc<Self> {
        let coordinator = Arc::new(Self {
            node,
            config,
            shards: Mutex::new(HashMap::new()),
            heard: Mutex::new(HashMap::new()),
            member_seq: AtomicU64::new(0),
            ticker: Mutex::new(None),
        });
        let handle = tokio::spawn(run_timer(Arc::downgrade(&coordinator)));
        *lock(&coordinator.ticker) = Some(handle);
        coordinator
    }

    /// Stops the timer; loaded shards stay readable but nothing expires any more.
    pub fn stop(&self) {
        if let Some(t) = lock(&self.ticker).take() {
            t.abort();
        }
    }

    pub fn config(&self) -> &GroupConfig {
        &self.config
    }

    pub fn node(&self) -> &Arc<Node> {
        &self.node
    }

    /// Partitions of `__consumer_offsets`, once it exists.
    pub fn offsets_partitions(&self) -> Option<u32> {
        self.node
            .controller
            .state()
            .topic(OFFSETS_TOPIC)
            .ok()
            .map(|t| t.partitions.len() as u32)
    }

    /// Creates `__consumer_offsets` if it does not exist yet. Only the controller can:
    /// elsewhere this fails with `Controller(NotController { .. })`, naming it.
    pub async fn ensure_offsets_topic(&self) -> Result<u32, GroupError> {
        if let Some(n) = self.offsets_partitions() {
            return Ok(n);
        }
        let state = self.node.controller.state();
        let cmd = MetadataCommand::CreateTopic {
            name: OFFSETS_TOPIC.to_string(),
            partitions: self.config.offsets_partitions,
            replication_factor: (state.brokers.len() as u32).clamp(1, 3),
            configs: BTreeMap::from([
                ("retention.ms".to_string(), "-1".to_string()),
                ("retention.bytes".to_string(), "-1".to_string()),
                (
                    "segment.bytes".to_string(),
                    OFFSETS_SEGMENT_BYTES.to_string(),
                ),
            ]),
        };
        match self.node.controller.propose(cmd).await {
            Ok(()) => tracing::info!("created {OFFSETS_TOPIC}"),
            Err(ControllerError::Invalid(MetadataError::TopicExists(_))) => {}
            Err(e) => return Err(GroupError::Controller(e)),
        }
        self.offsets_partitions().ok_or_else(|| {
            GroupError::CoordinatorNotAvailable(format!("{OFFSETS_TOPIC} is being created"))
        })
    }

    /// Waits up to `timeout` for the metadata to show `__consumer_offsets`.
    pub async fn wait_for_offsets_topic(&self, timeout: Duration) -> Option<u32> {
        let mut watch = self.node.controller.subscribe();
        let _ =
            tokio::time::timeout(timeout, watch.wait_for(|s| s.topic(OFFSETS_TOPIC).is_ok())).await;
        self.offsets_partitions()
    }

    /// The `__consumer_offsets` partition coordinating `group`.
    pub fn partition_of(&self, group: &str) -> Result<u32, GroupError> {
        validate_group_id(group)?;
        let n = self
            .offsets_partitions()
            .ok_or(GroupError::NotCoordinator { leader: None })?;
        Ok(partition_for(group, n))
    }

    fn shard_for(&self, index: u32, partition: Arc<Partition>) -> Arc<Shard> {
        let mut shards = lock(&self.shards);
        match shards.get(&index) {
            Some(s) if Arc::ptr_eq(s.partition(), &partition) => s.clone(),
            _ => {
                let shard = Arc::new(Shard::new(partition));
                shards.insert(index, shard.clone());
                shard
            }
        }
    }

    /// The shard of `group`, if this broker hosts a replica of it.
    fn shard(&self, group: &str) -> Result<Arc<Shard>, GroupError> {
        let index = self.partition_of(group)?;
        let partition = self
            .node
            .partitions
            .get(OFFSETS_TOPIC, index)
            .ok_or(GroupError::NotCoordinator { leader: None })?;
        Ok(self.shard_for(index, partition))
    }

    /// User topics and their partition counts: what groups may subscribe to.
    fn topic_view(state: &MetadataState) -> BTreeMap<String, u32> {
        state
            .topics
            .values()
            .filter(|t| !is_internal_topic(&t.name))
            .map(|t| (t.name.clone(), t.partitions.len() as u32))
            .collect()
    }

    fn new_member_id(&self) -> String {
        let seq = self.member_seq.fetch_add(1, Ordering::Relaxed);
        format!("{}-{:x}-{seq}", self.node.node_id, now_ms())
    }

    fn session_timeout(&self, asked: Duration) -> Result<Duration, GroupError> {
        let c = &self.config;
        if asked.is_zero() {
            return Ok(c.session_timeout);
        }
        if asked < c.min_session_timeout || asked > c.max_session_timeout {
            return Err(GroupError::InvalidRequest(format!(
                "session timeout {asked:?} is outside the broker's bounds {:?}..={:?}",
                c.min_session_timeout, c.max_session_timeout
            )));
        }
        Ok(asked)
    }

    /// Joins, heartbeats or leaves (see [`Group::heartbeat`]). Returns the reply and
    /// the interval the member should heartbeat at.
    pub async fn heartbeat(
        &self,
        group: &str,
        mut hb: Heartbeat,
    ) -> Result<(HeartbeatReply, Duration), GroupError> {
        let _alive = (hb.member_epoch > 0).then(|| self.heard_from(&hb.member_id));
        hb.session_timeout = self.session_timeout(hb.session_timeout)?;
        if hb.rebalance_timeout.is_zero() {
            hb.rebalance_timeout = self.config.rebalance_timeout;
        }
        let interval = self.config.heartbeat_for(hb.session_timeout);
        let topics = Self::topic_view(&self.node.controller.state());
        let shard = self.shard(group)?;
        let asked_epoch = hb.member_epoch;
        let reply = shard
            .peek(
                |loaded| {
                    let entry = loaded
                        .groups
                        .entry(group.to_string())
                        .or_insert_with(|| Group::new(group));
                    let result =
                        entry.heartbeat(hb, &topics, Instant::now(), || self.new_member_id());
                    let records = match &result {
                        Ok((_, true)) => vec![GroupRecord::Group(entry.state().clone())],
                        _ => Vec::new(),
                    };
                    forget_if_unused(loaded, group);
                    let (reply, _) = result?;
                    Ok((reply, records))
                },
                // A member told nothing new need not wait for others' writes.
                |reply| reply.assignment.is_none() && reply.member_epoch == asked_epoch,
            )
            .await?;
        // Waiting for partitions others release: ask again soon, not in a second.
        let interval = if reply.reconciling {
            interval.min(RECONCILING_HEARTBEAT)
        } else {
            interval
        };
        Ok((reply, interval))
    }

    /// Notes a request from `member`; it counts as alive until the returned guard
    /// is dropped, and for a session after that.
    fn heard_from(&self, member: &str) -> InFlight<'_> {
        let mut heard = lock(&self.heard);
        let h = heard.entry(member.to_string()).or_insert(Heard {
            at: Instant::now(),
            in_flight: 0,
        });
        h.at = Instant::now();
        h.in_flight += 1;
        InFlight {
            heard: &self.heard,
            member: member.to_string(),
        }
    }

    fn check_partitions<'a>(
        &self,
        partitions: impl IntoIterator<Item = &'a TopicPartition>,
    ) -> Result<(), GroupError> {
        let state = self.node.controller.state();
        for tp in partitions {
            let topic = state
                .topic(&tp.topic)
                .map_err(|_| GroupError::UnknownTopic(tp.topic.clone()))?;
            let count = topic.partitions.len() as u32;
            if tp.partition >= count {
                return Err(GroupError::UnknownPartition {
                    topic: tp.topic.clone(),
                    partition: tp.partition,
                    count,
                });
            }
        }
        Ok(())
    }

    fn check_offsets(&self, offsets: &[OffsetCommit]) -> Result<(), GroupError> {
        self.check_partitions(offsets.iter().map(|o| &o.tp))?;
        if let Some(o) = offsets
            .iter()
            .find(|o| o.metadata.len() > MAX_OFFSET_METADATA_BYTES)
        {
            return Err(GroupError::InvalidRequest(format!(
                "the metadata committed with {} is {} bytes; at most {MAX_OFFSET_METADATA_BYTES} are kept",
                o.tp,
                o.metadata.len()
            )));
        }
        let distinct: BTreeSet<&TopicPartition> = offsets.iter().map(|o| &o.tp).collect();
        if distinct.len() != offsets.len() {
            return Err(GroupError::InvalidRequest(
                "a partition appears twice in one commit".into(),
            ));
        }
        Ok(())
    }

    /// Commits offsets for `member` at `epoch` (an empty member id commits from
    /// outside the group, which only an empty group accepts). All or nothing.
    pub async fn commit(
        &self,
        group: &str,
        member: &str,
        epoch: i32,
        offsets: Vec<OffsetCommit>,
    ) -> Result<(), GroupError> {
        self.check_offsets(&offsets)?;
        let _alive = (!member.is_empty()).then(|| self.heard_from(member));
        let shard = self.shard(group)?;
        shard
            .update(|loaded| {
                match loaded.groups.get(group) {
                    Some(g) => g.check_commit(member, epoch, offsets.iter().map(|o| &o.tp))?,
                    None if member.is_empty() => {}
                    None => {
                        return Err(GroupError::UnknownMember {
                            group: group.to_string(),
                            member: member.to_string(),
                        });
                    }
                }
                Ok(((), commit_offsets(loaded, group, offsets, Vec::new())))
            })
            .await
    }

    /// Committed offsets of `group`: of `partitions`, or all when `None`. Partitions
    /// without a commit are left out.
    pub async fn fetch_offsets(
        &self,
        group: &str,
        partitions: Option<Vec<TopicPartition>>,
    ) -> Result<Vec<(TopicPartition, Committed)>, GroupError> {
        let shard = self.shard(group)?;
        shard
            .read(|loaded| {
                let Some(all) = loaded.offsets.group(group) else {
                    return Ok(Vec::new());
                };
                Ok(match partitions {
                    None => all.iter().map(|(tp, c)| (tp.clone(), c.clone())).collect(),
                    Some(wanted) => wanted
                        .into_iter()
                        .filter_map(|tp| all.get(&tp).map(|c| (tp, c.clone())))
                        .collect(),
                })
            })
            .await
    }

    pub async fn describe(&self, group: &str) -> Result<GroupDescription, GroupError> {
        let shard = self.shard(group)?;
        shard
            .read(|loaded| {
                let offsets = loaded.offsets.group(group).cloned();
                let state = loaded.groups.get(group);
                if state.is_none() && offsets.is_none() {
                    return Err(GroupError::UnknownGroup(group.to_string()));
                }
                let d = GroupDescription {
                    id: group.to_string(),
                    phase: state.map_or("empty", Group::phase),
                    epoch: state.map_or(0, |g| g.state().epoch),
                    members: state
                        .map(|g| g.state().members.values().cloned().collect())
                        .unwrap_or_default(),
                    offsets: offsets.unwrap_or_default(),
                };
                Ok(d)
            })
            .await
    }

    /// Groups coordinated here (in shards this broker leads).
    pub async fn list(&self) -> Vec<GroupSummary> {
        let Some(n) = self.offsets_partitions() else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for index in 0..n {
            let Some(partition) = self.node.partitions.get(OFFSETS_TOPIC, index) else {
                continue;
            };
            if !partition.replica.is_leader() {
                continue;
            }
            let shard = self.shard_for(index, partition);
            let listed = shard
                .read(|loaded| {
                    let ids: BTreeSet<&String> = loaded
                        .groups
                        .keys()
                        .chain(loaded.offsets.groups())
                        .collect();
                    let summaries: Vec<GroupSummary> = ids
                        .into_iter()
                        .map(|id| {
                            let g = loaded.groups.get(id);
                            GroupSummary {
                                id: id.clone(),
                                phase: g.map_or("empty", Group::phase),
                                members: g.map_or(0, |g| g.state().members.len()),
                            }
                        })
                        .collect();
                    Ok(summaries)
                })
                .await;
            match listed {
                Ok(summaries) => out.extend(summaries),
                Err(e) => tracing::debug!(partition = index, error = %e, "groups not listed"),
            }
        }
        out.sort_by(|a, b| a.id.cmp(&b.id));
        out
    }

    /// Deletes a group without members, with its offsets.
    pub async fn delete(&self, group: &str) -> Result<(), GroupError> {
        let shard = self.shard(group)?;
        shard
            .update(|loaded| {
                let members = loaded
                    .groups
                    .get(group)
                    .map_or(0, |g| g.state().members.len());
                if members > 0 {
                    return Err(GroupError::GroupNotEmpty {
                        group: group.to_string(),
                        members,
                    });
                }
                if !loaded.groups.contains_key(group) && loaded.offsets.group(group).is_none() {
                    return Err(GroupError::UnknownGroup(group.to_string()));
                }
                loaded.groups.remove(group);
                loaded.offsets.remove_group(group);
                let deleted = GroupRecord::GroupDeleted {
                    group: group.to_string(),
                };
                Ok(((), vec![deleted]))
            })
            .await?;
        tracing::info!(group, "group deleted");
        Ok(())
    }

    /// Sets committed offsets as an administrator. Refused while the group has
    /// members, unless `force`: then the members are removed in the same write (they
    /// learn it at their next heartbeat, rejoin, and start from these offsets).
    /// Returns how many members were removed.
    pub async fn reset_offsets(
        &self,
        group: &str,
        offsets: Vec<OffsetCommit>,
        force: bool,
    ) -> Result<usize, GroupError> {
        self.check_offsets(&offsets)?;
        let shard = self.shard(group)?;
        let removed = shard
            .update(|loaded| {
                let mut before = Vec::new();
                let mut removed = 0;
                if let Some(g) = loaded.groups.get_mut(group)
                    && !g.is_empty()
                {
                    if !force {
                        return Err(GroupError::GroupNotEmpty {
                            group: group.to_string(),
                            members: g.state().members.len(),
                        });
                    }
                    removed = g.remove_all();
                    before.push(GroupRecord::Group(g.state().clone()));
                }
                Ok((removed, commit_offsets(loaded, group, offsets, before)))
            })
            .await?;
        tracing::info!(group, removed, "committed offsets reset");
        Ok(removed)
    }

    /// One timer step: load newly led shards, expire sessions, maybe compact.
    async fn tick(&self, compact: bool) {
        let Some(n) = self.offsets_partitions() else {
            return;
        };
        for index in 0..n {
            let Some(partition) = self.node.partitions.get(OFFSETS_TOPIC, index) else {
                lock(&self.shards).remove(&index);
                continue;
            };
            let leads = partition.replica.is_leader();
            let shard = self.shard_for(index, partition);
            if !leads {
                shard.unload().await;
                continue;
            }
            if let Err(e) = self.expire(&shard).await {
                tracing::debug!(partition = index, error = %e, "session check skipped");
            }
            if compact && let Err(e) = shard.compact().await {
                tracing::warn!(partition = index, error = %e, "offsets compaction failed");
            }
        }
        // Members not heard of for longer than any session are gone.
        let horizon = self.config.max_session_timeout;
        lock(&self.heard).retain(|_, h| h.in_flight > 0 || h.at.elapsed() < horizon);
    }

    /// Removes members whose sessions ran out, in every group of `shard`.
    async fn expire(&self, shard: &Shard) -> Result<(), GroupError> {
        shard
            .update(|loaded| Ok(((), self.expire_loaded(loaded))))
            .await
    }

    /// Removes expired members from the groups of `loaded`; returns the records
    /// of the groups that changed.
    fn expire_loaded(&self, loaded: &mut Loaded) -> Vec<GroupRecord> {
        let now = Instant::now();
        let heard = lock(&self.heard).clone();
        let mut records = Vec::new();
        for group in loaded.groups.values_mut() {
            // A member whose request is still waiting is alive.
            let gone = group.expire(now, |member| {
                heard
                    .get(member)
                    .map(|h| if h.in_flight > 0 { now } else { h.at })
            });
            if gone.is_empty() {
                continue;
            }
            let mut heard = lock(&self.heard);
            for (member, why) in &gone {
                heard.remove(member);
                tracing::info!(group = group.id(), member, reason = ?why, "member removed");
            }
            records.push(GroupRecord::Group(group.state().clone()));
        }
        records
    }
}

/// Applies `offsets` to `loaded` and returns the records for them, after `before`.
fn commit_offsets(
    loaded: &mut Loaded,
    group: &str,
    offsets: Vec<OffsetCommit>,
    mut records: Vec<GroupRecord>,
) -> Vec<GroupRecord> {
    let timestamp_ms = now_ms();
    for o in offsets {
        let committed = Committed {
            offset: o.offset,
            metadata: o.metadata,
            timestamp_ms,
        };
        records.push(GroupRecord::Offset {
            group: group.to_string(),
            topic: o.tp.topic.clone(),
            partition: o.tp.partition,
            committed: committed.clone(),
        });
        loaded.offsets.commit(group, o.tp, committed);
    }
    records
}

#[derive(Debug, Clone, Copy)]
struct Heard {
    at: Instant,
    in_flight: u32,
}

/// A member's request being handled (see [`GroupCoordinator::heard_from`]).
struct InFlight<'a> {
    heard: &'a Mutex<HashMap<String, Heard>>,
    member: String,
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        if let Some(h) = lock(self.heard).get_mut(&self.member) {
            h.in_flight = h.in_flight.saturating_sub(1);
            h.at = Instant::now();
        }
    }
}

/// Drops a group entry a request created but that holds nothing worth keeping.
fn forget_if_unused(loaded: &mut Loaded, group: &str) {
    let unused = loaded
        .groups
        .get(group)
        .is_some_and(|g| g.is_empty() && g.state().epoch == 0);
    if unused {
        loaded.groups.remove(group);
    }
}

async fn run_timer(coordinator: Weak<GroupCoordinator>) {
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_compaction = Instant::now();
    loop {
        tick.tick().await;
        let Some(c) = coordinator.upgrade() else {
            return;
        };
        let compact = last_compaction.elapsed() >= COMPACTION_INTERVAL;
        if compact {
            last_compaction = Instant::now();
        }
        c.tick(compact).await;
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}
