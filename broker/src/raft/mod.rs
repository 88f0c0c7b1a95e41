//! Replication: every partition (and the controller, group 0) is an openraft group
//! whose Raft log *is* the partition's segmented [`Log`].
//!
//! - [`types`]: the openraft type configuration (`u64` node ids, record batches as data,
//!   standard single-leader-per-term log ids).
//! - [`log_store`]: `RaftLogStorage`/`RaftLogReader` over the log, group-commit fsync.
//! - [`state_machine`]: the thin state machine (applied id, membership, high watermark).
//! - [`network`]: one gRPC service for all groups between two brokers.
//! - [`recent`]: the newest entries kept in memory until applied, so applying and
//!   replicating them does not read the log back.
//! - [`producers`]: idempotent producers' sequences (dedupe of retried batches).
//! - [`meta`]: the small atomically written state files.
//! - [`abstain`]: a replica that lost a damaged log tail stays out of elections until
//!   it has caught up.
//! - [`pulse`]: one beat per broker pair drives every group's elections (openraft's
//!   per-group timers are off).
//! - this module: [`Replica`], the handle the rest of the broker uses.
//!
//! Owns: starting, registering, writing to and stopping a group's replica. Must never
//! let gRPC types leak upward (errors are [`ReplicaError`]), never let openraft
//! snapshot or purge on its own (retention decides; see [`RaftTuning`]), and never
//! acknowledge a write before the promised durability.

pub mod abstain;
pub mod log_store;
pub mod meta;
pub mod network;
pub mod producers;
pub mod pulse;
pub mod recent;
pub mod state_machine;
pub mod types;

#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use openraft::alias::OneshotReceiverOf;
use openraft::async_runtime::WatchReceiver;
use openraft::errors::{
    ClientWriteError, Fatal, ForwardToLeader, InitializeError, LinearizableReadError, RaftError,
};
use openraft::impls::ProgressResponder;
use openraft::metrics::WaitError;
use openraft::raft::ClientWriteResult;
use openraft::{Config, Instant as _, LinearizerOption, SnapshotPolicy};
use sluice_proto::batch::{BatchHeader, HeaderError};
use thiserror::Error;
use tokio::sync::watch;

use crate::log::{EntryId, Log, LogConfig, LogError};
use log_store::{AckWaiter, LeaderAcks, LogStore, StorageFailure};
use meta::{MetaState, MetaStore, StateFileError};
use network::TransportError;
use producers::{LeaderSequences, ProducerTable, SequenceError, Stamp, Verdict};
use recent::{EntryBudget, RecentEntries};
use state_machine::{StateMachine, StateMachineError};

pub use log_store::DEFAULT_MAX_APPEND_BYTES;
pub use network::{GroupRegistry, Network, NetworkOptions, PeerDial, RaftService};
pub use state_machine::{ApplyHook, CheckpointPolicy, PartitionSnapshot};
pub use types::{Applied, BasicNode, NodeId, RecordBatch, TypeConfig};

/// An openraft handle of a Sluice group.
pub type RaftHandle = openraft::Raft<TypeConfig, StateMachine>;

/// How durable a write must be before it is acknowledged.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum Acks {
    /// Committed by a Raft majority (and applied on the leader).
    #[default]
    All,
    /// Appended and fsynced on the leader; a leader change may still lose it.
    Leader,
    /// Handed to the leader; nothing is awaited.
    None,
}

/// A write whose place in the log is fixed and whose acknowledgement is to come.
pub enum PendingWrite {
    Submitted {
        completed: Option<OneshotReceiverOf<TypeConfig, ClientWriteResult<TypeConfig>>>,
        leader_ack: Option<AckWaiter>,
        /// The producer stamp the leader's sequence checks counted as submitted.
        stamp: Option<Stamp>,
    },
    /// A retry of a stamped batch already submitted: nothing new was appended; the
    /// answer is the original's offset (known, or once the original applies).
    Duplicate { stamp: Stamp, offset: Option<u64> },
}

/// Where an acknowledged write landed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Written {
    /// The batch's first offset; `None` for [`Acks::None`], which waits for nothing.
    pub base_offset: Option<u64>,
    /// The high watermark when the write was acknowledged. With [`Acks::All`] it covers
    /// the batch; with [`Acks::Leader`] it may not yet.
    pub high_watermark: u64,
    /// The batch was a producer's retry of one already in the log, which is where
    /// `base_offset` points; nothing was appended.
    pub duplicate: bool,
}

#[derive(Debug, Error)]
pub enum ReplicaError {
    #[error("{}", not_leader_message(.leader))]
    NotLeader { leader: Option<(NodeId, String)> },
    /// A new leader still applying entries of earlier terms cannot check producer
    /// sequences yet; it takes a round trip or two.
    #[error("the new leader is catching up with earlier terms; retry shortly")]
    LeaderNotReady { leader: (NodeId, String) },
    #[error(transparent)]
    Sequence(#[from] SequenceError),
    #[error("invalid record batch: {0}")]
    InvalidBatch(#[from] HeaderError),
    #[error("partition storage failed: {0}")]
    Storage(#[source] Arc<LogError>),
    #[error("partition state file: {0}")]
    StateFile(#[from] StateFileError),
    #[error("timed out after {0:?} waiting for replication")]
    Timeout(Duration),
    #[error("the replica is shut down")]
    Shutdown,
    #[error("raft transport: {0}")]
    Transport(#[from] TransportError),
    #[error("invalid raft configuration: {0}")]
    Config(String),
    #[error("raft stopped: {0}")]
    Fatal(String),
}

fn not_leader_message(leader: &Option<(NodeId, String)>) -> String {
    match leader {
        Some((id, addr)) => format!("not the leader; the leader is broker {id} at {addr}"),
        None => "not the leader, and no leader is known yet: retry shortly".to_string(),
    }
}

impl From<LogError> for ReplicaError {
    fn from(e: LogError) -> Self {
        Self::Storage(Arc::new(e))
    }
}

impl From<StateMachineError> for ReplicaError {
    fn from(e: StateMachineError) -> Self {
        match e {
            StateMachineError::Log(e) => e.into(),
            StateMachineError::StateFile(e) => e.into(),
        }
    }
}

impl ReplicaError {
    /// Whether the failure is a full disk (the client should be told so).
    pub fn is_disk_full(&self) -> bool {
        matches!(self, Self::Storage(e) if matches!(**e, LogError::DiskFull { .. }))
    }
}

/// Timers and limits of a group. The defaults suit a small cluster on a LAN and make a
/// single node elect itself within about half a second.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RaftTuning {
    pub heartbeat_interval: Duration,
    pub election_timeout_min: Duration,
    pub election_timeout_max: Duration,
    /// How long `write` waits for the promised durability.
    pub write_timeout: Duration,
    /// Most entries per AppendEntries RPC.
    pub max_payload_entries: u64,
    /// Most payload bytes per AppendEntries RPC (at least one entry goes).
    pub max_append_bytes: usize,
    pub install_snapshot_timeout: Duration,
    pub checkpoint: CheckpointPolicy,
}

impl Default for RaftTuning {
    fn default() -> Self {
        Self {
            heartbeat_interval: Duration::from_millis(100),
            election_timeout_min: Duration::from_millis(300),
            election_timeout_max: Duration::from_millis(600),
            write_timeout: Duration::from_secs(10),
            max_payload_entries: 256,
            max_append_bytes: DEFAULT_MAX_APPEND_BYTES,
            install_snapshot_timeout: Duration::from_secs(10),
            checkpoint: CheckpointPolicy::default(),
        }
    }
}

impl RaftTuning {
    /// The openraft configuration: timers from here; snapshots and purges only when the
    /// broker asks (`trigger().snapshot()` / `purge_log`), because the log is the data.
    pub fn openraft_config(&self, group_id: u64) -> Result<Config, ReplicaError> {
        let ms = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        Config {
            cluster_name: format!("sluice-group-{group_id}"),
            heartbeat_interval: ms(self.heartbeat_interval),
            election_timeout_min: ms(self.election_timeout_min),
            election_timeout_max: ms(self.election_timeout_max),
            install_snapshot_timeout: ms(self.install_snapshot_timeout),
            max_payload_entries: self.max_payload_entries,
            snapshot_policy: SnapshotPolicy::Never,
            max_in_snapshot_log_to_keep: u64::MAX,
            enable_pre_vote: Some(true),
            // The broker's pulse stands replicas for election and heartbeats idle groups
            // (see [`pulse`]): per-group ticks cost a core for a thousand partitions.
            enable_tick: false,
            // A follower's log can end before entries it acknowledged: recovery cuts a
            // frame that fails its CRC (a bad sector, a damaged file), and the replica
            // comes back shorter. The leader then replicates to it again from where its
            // log really ends, instead of asserting that logs never shrink. The entries
            // are safe as long as the rest of the majority holds them: damage on one
            // replica is one failure.
            allow_log_reversion: Some(true),
            // A restarted leader always stands for election instead of resuming its old
            // term: its log may have lost a tail it had already sent (a torn write, a
            // corrupt frame cut by recovery), and new entries in the same term at those
            // indexes would carry the same log ids as the copies followers hold.
            enable_leader_restore: Some(false),
            ..Config::default()
        }
        .validate()
        .map_err(|e| ReplicaError::Config(e.to_string()))
    }
}

/// What a replica needs to start.
#[derive(Clone)]
pub struct ReplicaSpec {
    pub group_id: u64,
    /// This broker's id.
    pub node_id: NodeId,
    /// The group's directory: the log in `log/`, `raft-meta`, `sm-state`.
    pub dir: PathBuf,
    pub log_config: LogConfig,
    /// The initial voters of a brand-new group.
    pub members: BTreeMap<NodeId, BasicNode>,
    /// The member that initializes a brand-new group at once (and so, normally, leads
    /// it first); default the lowest id. See [`ReplicaSpec::preferred_leader`].
    pub preferred_leader: Option<NodeId>,
    /// Called with every applied data batch, in log order (the controller's metadata).
    pub hook: Option<ApplyHook>,
    pub tuning: RaftTuning,
}

impl ReplicaSpec {
    pub fn new(
        group_id: u64,
        node_id: NodeId,
        dir: impl Into<PathBuf>,
        members: BTreeMap<NodeId, BasicNode>,
    ) -> Self {
        Self {
            group_id,
            node_id,
            dir: dir.into(),
            log_config: LogConfig::default(),
            members,
            preferred_leader: None,
            hook: None,
            tuning: RaftTuning::default(),
        }
    }

    /// Which member forms a brand-new group: it initializes at once; every other
    /// member initializes too, with the same voters, if the group has still not
    /// reached it [`INIT_FALLBACK`] × its rank later (preferred first, then by id), so
    /// a group forms even when its preferred leader is down at creation. openraft
    /// allows several members to initialize with an identical membership.
    pub fn preferred_leader(mut self, id: NodeId) -> Self {
        self.preferred_leader = Some(id);
        self
    }

    pub fn log_config(mut self, config: LogConfig) -> Self {
        self.log_config = config;
        self
    }

    pub fn hook(mut self, hook: ApplyHook) -> Self {
        self.hook = Some(hook);
        self
    }

    pub fn tuning(mut self, tuning: RaftTuning) -> Self {
        self.tuning = tuning;
        self
    }
}

/// One replica of one group on this broker.
pub struct Replica {
    group_id: u64,
    node_id: NodeId,
    raft: RaftHandle,
    log: Arc<Log>,
    meta: Arc<MetaStore>,
    hw: watch::Receiver<u64>,
    acks: Arc<LeaderAcks>,
    failure: Arc<StorageFailure>,
    registry: GroupRegistry,
    write_timeout: Duration,
    /// A write renews the leader lease first when no quorum acknowledged this leader
    /// for this long (half the lease).
    lease_renewal: Duration,
    /// Applied by the state machine; read by the leader's sequence checks.
    producers: Arc<Mutex<ProducerTable>>,
    /// Held across check and submit so stamped batches are checked in log order.
    sequences: tokio::sync::Mutex<LeaderSequences>,
}

impl std::fmt::Debug for Replica {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Replica")
            .field("group_id", &self.group_id)
            .field("node_id", &self.node_id)
            .field("dir", &self.log.dir())
            .finish()
    }
}

impl Replica {
    /// Opens the group's log and state in `spec.dir`, starts its Raft node, registers it
    /// for incoming RPCs, and, if the group is brand new here and this broker has the
    /// first in line (see [`ReplicaSpec::preferred_leader`]), initializes the group with
    /// `spec.members`; later members do so after a delay if the group has not formed.
    pub async fn start(
        spec: ReplicaSpec,
        registry: &GroupRegistry,
        network: &Network,
    ) -> Result<Self, ReplicaError> {
        let ReplicaSpec {
            group_id,
            node_id,
            dir,
            log_config,
            members,
            preferred_leader,
            hook,
            tuning,
        } = spec;
        let config = tuning.openraft_config(group_id)?;
        // Checked before the log is opened: two replicas must never share a log.
        if registry.contains(group_id) {
            return Err(TransportError::AlreadyRegistered { group_id }.into());
        }
        std::fs::create_dir_all(&dir).map_err(|e| LogError::io("create group dir", &dir, e))?;
        let log = Arc::new(Log::open(dir.join("log"), log_config)?);
        let meta = Arc::new(MetaStore::open(dir.join("raft-meta"))?);
        let sm_path = dir.join("sm-state");
        let fresh =
            log.last_id().is_none() && meta.state() == MetaState::default() && !sm_path.exists();
        let recent = Arc::new(RecentEntries::new(EntryBudget::shared()));
        let (sm, hw) = StateMachine::open(
            log.clone(),
            recent.clone(),
            sm_path,
            hook,
            tuning.checkpoint,
        )?;
        let producers = sm.producers();
        let acks = Arc::new(LeaderAcks::default());
        let failure = Arc::new(StorageFailure::default());
        let store = LogStore::new(
            log.clone(),
            meta.clone(),
            recent,
            acks.clone(),
            failure.clone(),
            tuning.max_append_bytes,
        );
        let raft = RaftHandle::new(
            node_id,
            Arc::new(config),
            network.group(group_id, node_id),
            store,
            sm,
        )
        .await
        .map_err(|f| fatal_error(f, &failure))?;
        let sole_voter = match raft
            .metrics()
            .borrow_watched()
            .membership_config
            .nodes()
            .count()
        {
            0 => members.len() == 1,
            n => n == 1,
        };
        // Before the group is reachable: a vote may arrive at once. A sole voter has
        // nobody to wait for.
        if log.recovered_damage() && !sole_voter {
            let a = Arc::new(abstain::Abstention::default());
            registry.abstain(group_id, a.clone());
            tracing::warn!(
                group_id,
                node_id,
                "the log lost a damaged tail: not voting until a leader brings it up to date"
            );
            abstain::until_caught_up(raft.clone(), a, group_id);
        }
        if let Err(e) = registry.register(group_id, raft.clone()) {
            let _ = raft.shutdown().await;
            return Err(e.into());
        }
        pulse::ensure_running(registry, node_id, network, &tuning);
        let replica = Self {
            group_id,
            node_id,
            raft,
            log,
            meta,
            hw,
            acks,
            failure,
            registry: registry.clone(),
            write_timeout: tuning.write_timeout,
            lease_renewal: tuning.election_timeout_max / 2,
            producers,
            sequences: tokio::sync::Mutex::new(LeaderSequences::default()),
        };
        let rank = fresh
            .then(|| init_order(&members, preferred_leader))
            .and_then(|order| order.iter().position(|&id| id == node_id));
        if let Some(rank) = rank.filter(|&r| r > 0) {
            // Not first in line: form the group only if nobody else has by then.
            let (raft, members) = (replica.raft.clone(), members.clone());
            tokio::spawn(async move {
                tokio::time::sleep(INIT_FALLBACK * rank as u32).await;
                match raft.initialize(members).await {
                    Ok(()) => tracing::info!(
                        group_id,
                        node_id,
                        "formed the group: members ahead of this one did not"
                    ),
                    Err(RaftError::APIError(InitializeError::NotAllowed(_))) => {}
                    Err(e) => tracing::debug!(group_id, error = %e, "fallback initialize"),
                }
            });
        }
        if rank == Some(0) {
            match replica.raft.initialize(members).await {
                Ok(()) | Err(RaftError::APIError(InitializeError::NotAllowed(_))) => {}
                Err(e) => {
                    let err = match e {
                        RaftError::Fatal(f) => replica.fatal(f),
                        RaftError::APIError(api) => ReplicaError::Config(api.to_string()),
                    };
                    let _ = replica.shutdown().await;
                    return Err(err);
                }
            }
        }
        tracing::info!(group_id, node_id, fresh, sole_voter, "replica started");
        Ok(replica)
    }

    pub fn group_id(&self) -> u64 {
        self.group_id
    }

    pub fn node_id(&self) -> NodeId {
        self.node_id
    }

    /// The partition's log (reads go straight to it, bounded by the high watermark).
    pub fn log(&self) -> &Arc<Log> {
        &self.log
    }

    /// The openraft handle, for membership changes and retention-driven purges.
    pub fn raft(&self) -> &RaftHandle {
        &self.raft
    }

    /// The offset after the last committed (applied) record: consumers read below it.
    pub fn high_watermark(&self) -> u64 {
        *self.hw.borrow()
    }

    /// The high watermark as a leader can vouch for it: once it leads and has applied
    /// every entry of earlier terms. Right after an election or a restart the applied
    /// point may trail what was committed before, so a "latest offset" read from it
    /// could go backward; until then this answers "not ready, retry" (Kafka's KIP-207
    /// answers OFFSET_NOT_AVAILABLE in the same spot).
    pub fn settled_high_watermark(&self) -> Result<u64, ReplicaError> {
        self.ensure_leader()?;
        self.settled_term()?;
        Ok(self.high_watermark())
    }

    /// Confirms that this replica still leads: a quorum acknowledged it within the
    /// leader lease (if not, it asks them again and waits up to a lease). What a leader
    /// keeps in memory may be read only after this: a leader cut off from the others
    /// does not know at once that another was elected and took writes.
    pub async fn confirm_leadership(&self) -> Result<(), ReplicaError> {
        self.quorum_ack_within(None).await
    }

    /// Has a quorum acknowledge this leader if none has within `max_age` (default: the
    /// lease), heartbeating at once.
    async fn quorum_ack_within(&self, max_age: Option<Duration>) -> Result<(), ReplicaError> {
        match self
            .raft
            .get_read_linearizer(LinearizerOption::new(max_age, true))
            .await
        {
            Ok(_) => Ok(()),
            Err(RaftError::APIError(LinearizableReadError::ForwardToLeader(f))) => {
                Err(self.not_leader(f))
            }
            // Cut off from a quorum: it may no longer lead, and cannot tell who does.
            Err(RaftError::APIError(LinearizableReadError::QuorumNotEnough(_))) => {
                Err(ReplicaError::NotLeader { leader: None })
            }
            Err(RaftError::Fatal(f)) => Err(self.fatal(f)),
        }
    }

    /// A receiver that changes whenever the high watermark moves (long-poll fetches).
    pub fn watch_high_watermark(&self) -> watch::Receiver<u64> {
        self.hw.clone()
    }

    /// The current leader, as far as this replica knows.
    pub fn leader(&self) -> Option<NodeId> {
        self.raft.metrics().borrow_watched().current_leader
    }

    pub fn is_leader(&self) -> bool {
        self.raft.as_leader().is_ok()
    }

    /// The Raft term this replica is in: a leader that still sees the term it was
    /// elected in has led without interruption.
    pub fn term(&self) -> u64 {
        self.raft.metrics().borrow_watched().current_term
    }

    /// The last entry this leader may purge while keeping every offset from
    /// `keep_from` on, such that every voter already holds what goes (so no follower
    /// ever needs a snapshot for it): the end of the longest run of old sealed
    /// segments below both. `None` on a follower, or when nothing qualifies.
    pub fn purge_point_before(&self, keep_from: u64) -> Option<EntryId> {
        let metrics = self.raft.metrics().borrow_watched().clone();
        let replication = metrics.replication.as_ref()?;
        let mut held_by_all = u64::MAX;
        for voter in metrics.membership_config.voter_ids() {
            if voter != self.node_id {
                let matched = replication.get(&voter)?.as_ref()?;
                held_by_all = held_by_all.min(matched.index);
            }
        }
        self.log.purge_point(keep_from, held_by_all)
    }

    /// Why openraft stopped this replica on its own (a storage error such as a full
    /// disk, or a panic); `None` while it runs or after [`Replica::shutdown`]. A
    /// stopped replica answers nothing until it is started again from its files.
    pub fn stopped_by(&self) -> Option<String> {
        match &self.raft.metrics().borrow_watched().running_state {
            Ok(()) | Err(Fatal::Stopped) => None,
            Err(f) => Some(self.fatal(f.clone()).to_string()),
        }
    }

    /// Voters holding every committed entry, as the leader sees them (the leader
    /// included). Empty on a follower, which cannot tell.
    pub fn in_sync_replicas(&self) -> Vec<NodeId> {
        let metrics = self.raft.metrics().borrow_watched().clone();
        let (Some(replication), Some(committed)) =
            (&metrics.replication, metrics.cluster_committed)
        else {
            return Vec::new();
        };
        let mut isr: Vec<NodeId> = replication
            .iter()
            .filter(|(_, matched)| matched.as_ref().is_some_and(|m| m.index >= committed.index))
            .map(|(id, _)| *id)
            .collect();
        if !isr.contains(&self.node_id) {
            isr.push(self.node_id);
        }
        isr.sort_unstable();
        isr
    }

    /// The current leader and its address, as far as this replica knows.
    pub fn leader_node(&self) -> Option<(NodeId, String)> {
        let metrics = self.raft.metrics().borrow_watched().clone();
        let id = metrics.current_leader?;
        let addr = metrics
            .membership_config
            .get_node(&id)
            .map(|n| n.addr.clone())
            .unwrap_or_default();
        Some((id, addr))
    }

    /// Waits until some replica (maybe this one) is leader; returns its id. When it is
    /// this replica, its leadership is established (writes are accepted) on return.
    pub async fn wait_for_leader(&self, timeout: Duration) -> Result<NodeId, ReplicaError> {
        let me = self.node_id;
        let metrics = self
            .raft
            .wait(Some(timeout))
            .metrics(
                move |m| match m.current_leader {
                    // A new leader takes writes once a quorum has acknowledged it (its
                    // lease), or at once if it is the only voter.
                    Some(l) if l == me => {
                        m.state.is_leader()
                            && m.vote.is_committed()
                            && (m.last_quorum_acked.is_some()
                                || m.membership_config.voter_ids().count() == 1)
                    }
                    Some(_) => true,
                    None => false,
                },
                "a leader is known",
            )
            .await
            .map_err(wait_error)?;
        metrics.current_leader.ok_or(ReplicaError::Shutdown)
    }

    /// Appends a record batch (Kafka RecordBatch v2; its base offset and leader epoch are
    /// stamped by the log) and waits for the durability `acks` asks for.
    pub async fn write(&self, batch: Bytes, acks: Acks) -> Result<Written, ReplicaError> {
        let pending = self.submit(batch, acks).await?;
        self.complete(pending).await
    }

    /// Hands a batch to Raft and returns once its place in the log order is fixed, not
    /// once it is durable: batches submitted one after another from one task are
    /// appended in that order, while their acknowledgements ([`Replica::complete`]) may
    /// be awaited concurrently. This is what lets a producer pipeline.
    ///
    /// A batch stamped by an idempotent producer is first checked against the
    /// producer's sequences: a retry of a batch already in the log is not appended
    /// again (its acknowledgement carries the original offset), and a gap or an older
    /// epoch is refused with [`ReplicaError::Sequence`].
    pub async fn submit(&self, batch: Bytes, acks: Acks) -> Result<PendingWrite, ReplicaError> {
        // A batch the log cannot index would fail the append and stop the group.
        let header = BatchHeader::parse(&batch)?;
        // A replica stopped by its storage (a full disk) says so, rather than passing
        // for a leader it no longer is.
        if let Some(e) = self.failure.get() {
            return Err(ReplicaError::Storage(e));
        }
        self.ensure_leader()?;
        let Some(stamp) = Stamp::of(&header) else {
            return self.submit_to_raft(batch, acks, None).await;
        };
        let mut sequences = self.sequences.lock().await;
        let term = self.settled_term()?;
        let verdict = sequences.check(term, &self.producer_table(), &stamp)?;
        match verdict {
            Verdict::Append => {
                let pending = self.submit_to_raft(batch, acks, Some(stamp)).await?;
                sequences.submitted(&stamp);
                Ok(pending)
            }
            Verdict::Duplicate(offset) => Ok(PendingWrite::Duplicate { stamp, offset }),
        }
    }

    /// openraft refuses writes from a leader no quorum has acknowledged within its lease,
    /// and a group nobody writes to sends no heartbeats (see [`pulse`]): so the first
    /// write after a quiet spell has the followers acknowledge this leader first (one
    /// heartbeat round). Under load replication keeps the lease fresh and this is a
    /// metrics read.
    async fn renew_idle_lease(&self) -> Result<(), ReplicaError> {
        let stale = {
            let m = self.raft.metrics();
            let m = m.borrow_watched();
            let replicated = m.membership_config.voter_ids().nth(1).is_some();
            replicated
                && m.last_quorum_acked
                    .as_ref()
                    .is_none_or(|acked| acked.elapsed() >= self.lease_renewal)
        };
        if stale {
            self.quorum_ack_within(Some(self.lease_renewal)).await?;
        }
        Ok(())
    }

    fn producer_table(&self) -> std::sync::MutexGuard<'_, ProducerTable> {
        self.producers.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// This leader's term, once every entry of earlier terms is applied (so the
    /// producer table covers them): openraft's first entry in a new term is a blank
    /// one, and it is applied only after everything before it.
    ///
    /// The replica must be leading now, not only hold its old vote: a restarted leader
    /// keeps the vote of its last term while it stands for election, and its table
    /// then lacks whatever was committed after its last saved commit point.
    fn settled_term(&self) -> Result<u64, ReplicaError> {
        let (term, applied_term, leading) = {
            let m = self.raft.metrics();
            let m = m.borrow_watched();
            (
                m.current_term,
                m.last_applied.map(|id| id.leader_id.term),
                m.state.is_leader() && m.current_leader == Some(self.node_id),
            )
        };
        if !leading {
            return Err(ReplicaError::NotLeader { leader: None });
        }
        if applied_term == Some(term) {
            return Ok(term);
        }
        let addr = self.leader_node().map(|(_, addr)| addr).unwrap_or_default();
        Err(ReplicaError::LeaderNotReady {
            leader: (self.node_id, addr),
        })
    }

    async fn submit_to_raft(
        &self,
        batch: Bytes,
        acks: Acks,
        stamp: Option<Stamp>,
    ) -> Result<PendingWrite, ReplicaError> {
        self.renew_idle_lease().await?;
        let leader_ack = (acks == Acks::Leader).then(|| self.acks.register(&batch));
        let (responder, completed) = match acks {
            Acks::None => (None, None),
            Acks::All | Acks::Leader => {
                let (responder, completed) = ProgressResponder::complete_only();
                (Some(responder), Some(completed))
            }
        };
        self.raft
            .client_write_ff(RecordBatch(batch), responder)
            .await
            .map_err(|f| self.fatal(f))?;
        Ok(PendingWrite::Submitted {
            completed,
            leader_ack,
            stamp,
        })
    }

    /// Waits for the durability a [`PendingWrite`] was submitted with: commit by a
    /// majority (`All`), fsync on this leader (`Leader`, or commit if that comes first),
    /// or nothing (`None`).
    pub async fn complete(&self, pending: PendingWrite) -> Result<Written, ReplicaError> {
        let (completed, leader_ack, stamp) = match pending {
            PendingWrite::Submitted {
                completed,
                leader_ack,
                stamp,
            } => (completed, leader_ack, stamp),
            PendingWrite::Duplicate { stamp, offset } => {
                return self.original_of(stamp, offset).await;
            }
        };
        let Some(completed) = completed else {
            return Ok(Written {
                base_offset: None,
                high_watermark: self.high_watermark(),
                duplicate: false,
            });
        };
        let committed = async {
            match completed.await {
                Ok(Ok(resp)) => Ok(Written {
                    base_offset: Some(resp.data.base_offset),
                    high_watermark: resp.data.high_watermark,
                    duplicate: false,
                }),
                Ok(Err(e)) => {
                    // openraft refused the entry after the sequence check counted it
                    // (a leader whose lease lapsed refuses writes for a moment): it is
                    // not in the log, so its retry must be checked anew, not awaited.
                    if let (ClientWriteError::ForwardToLeader(_), Some(stamp)) = (&e, &stamp) {
                        self.sequences.lock().await.refused(stamp);
                    }
                    Err(self.client_write_error(e))
                }
                Err(_) => Err(ReplicaError::Shutdown),
            }
        };
        let wait = async {
            match leader_ack {
                None => committed.await,
                Some(mut waiter) => tokio::select! {
                    biased;
                    Ok(base) = &mut waiter.appended => Ok(Written {
                        base_offset: Some(base),
                        high_watermark: self.high_watermark(),
                        duplicate: false,
                    }),
                    done = committed => done,
                },
            }
        };
        tokio::time::timeout(self.write_timeout, wait)
            .await
            .map_err(|_| ReplicaError::Timeout(self.write_timeout))?
    }

    /// The acknowledgement of a retried batch: where its original landed, waiting (up to
    /// the write timeout) for an original that is submitted but not yet applied. If the
    /// original is lost with this leader's term, the retry fails as "not leader" and the
    /// producer resends it to the next leader.
    async fn original_of(&self, stamp: Stamp, known: Option<u64>) -> Result<Written, ReplicaError> {
        let written = |base| Written {
            base_offset: Some(base),
            high_watermark: self.high_watermark(),
            duplicate: true,
        };
        if let Some(base) = known {
            return Ok(written(base));
        }
        let mut hw = self.hw.clone();
        let wait = async {
            loop {
                let applied = {
                    let table = self.producer_table();
                    (
                        table.offset_of(&stamp),
                        table.covers(&stamp),
                        table.skipped(&stamp),
                    )
                };
                match applied {
                    (Some(base), ..) => return Ok(written(base)),
                    (None, true, _) => return Err(SequenceError::old_duplicate(&stamp).into()),
                    // The original was refused after it was checked, and the log moved on.
                    (None, false, true) => return Err(SequenceError::skipped(&stamp).into()),
                    (None, false, false) => {}
                }
                self.ensure_leader()?;
                tokio::select! {
                    changed = hw.changed() => changed.map_err(|_| ReplicaError::Shutdown)?,
                    _ = tokio::time::sleep(DUPLICATE_POLL) => {}
                }
            }
        };
        tokio::time::timeout(self.write_timeout, wait)
            .await
            .map_err(|_| ReplicaError::Timeout(self.write_timeout))?
    }

    /// Applies the log's retention policy the Raft way: snapshot at least up to the
    /// last entry retention would delete, then purge through it, so openraft never
    /// looks for entries that are gone (a follower that needs them installs the
    /// snapshot). Only committed data is ever deleted. Returns whether anything went.
    pub async fn enforce_retention(&self, now_ms: i64) -> Result<bool, ReplicaError> {
        let Some(upto) = self.log.retention_point(now_ms, self.high_watermark()) else {
            return Ok(false);
        };
        self.purge_through(upto).await?;
        Ok(true)
    }

    /// Snapshots at least up to `upto`, then purges the log through it. `upto` must
    /// be committed.
    pub async fn purge_through(&self, upto: EntryId) -> Result<(), ReplicaError> {
        self.raft
            .trigger()
            .snapshot()
            .await
            .map_err(|f| self.fatal(f))?;
        self.raft
            .wait(Some(self.write_timeout))
            .metrics(
                move |m| m.snapshot.is_some_and(|s| s.index >= upto.index),
                "snapshot covers the retention point",
            )
            .await
            .map_err(wait_error)?;
        self.raft
            .trigger()
            .purge_log(upto.index)
            .await
            .map_err(|f| self.fatal(f))?;
        // The trigger only queues the purge; it may also wait for replication reads.
        self.raft
            .wait(Some(self.write_timeout))
            .metrics(
                move |m| m.purged.is_some_and(|p| p.index >= upto.index),
                "purged through the retention point",
            )
            .await
            .map_err(wait_error)?;
        Ok(())
    }

    fn ensure_leader(&self) -> Result<(), ReplicaError> {
        self.raft
            .as_leader()
            .map(|_| ())
            .map_err(|f| self.not_leader(f))
    }

    fn not_leader(&self, f: ForwardToLeader<TypeConfig>) -> ReplicaError {
        let leader = f.leader_id.map(|id| {
            let addr = f
                .leader_node
                .map(|n| n.addr)
                .or_else(|| {
                    self.raft
                        .metrics()
                        .borrow_watched()
                        .membership_config
                        .get_node(&id)
                        .map(|n| n.addr.clone())
                })
                .unwrap_or_default();
            (id, addr)
        });
        ReplicaError::NotLeader { leader }
    }

    /// A discarded entry (leader changed before it committed) is reported as "not
    /// leader": the client retries at the new leader, and idempotent producers dedupe.
    fn client_write_error(&self, e: ClientWriteError<TypeConfig>) -> ReplicaError {
        match e {
            ClientWriteError::ForwardToLeader(f) | ClientWriteError::LogEntryDiscarded(f) => {
                self.not_leader(f)
            }
            other => ReplicaError::Fatal(other.to_string()),
        }
    }

    fn fatal(&self, f: Fatal<TypeConfig>) -> ReplicaError {
        fatal_error(f, &self.failure)
    }

    /// Stops the group here: no more RPCs are routed to it, openraft stops, and the
    /// committed id is written out.
    pub async fn shutdown(&self) -> Result<(), ReplicaError> {
        self.registry.unregister(self.group_id);
        let stopped = self.raft.shutdown().await;
        let meta = self.meta.clone();
        let persisted = tokio::task::spawn_blocking(move || meta.persist())
            .await
            .map_err(|e| ReplicaError::Fatal(e.to_string()))?;
        stopped.map_err(|e| ReplicaError::Fatal(e.to_string()))?;
        persisted?;
        tracing::info!(group_id = self.group_id, "replica stopped");
        Ok(())
    }
}

/// How often a retry waiting for its original re-checks leadership when nothing
/// applies meanwhile.
const DUPLICATE_POLL: Duration = Duration::from_millis(50);

/// How long each member after the first in line waits before it forms a new group
/// itself (see [`ReplicaSpec::preferred_leader`]).
pub const INIT_FALLBACK: Duration = Duration::from_millis(1500);

/// Members in the order they may initialize a new group: the preferred leader (if a
/// member), then the rest by id.
fn init_order(members: &BTreeMap<NodeId, BasicNode>, preferred: Option<NodeId>) -> Vec<NodeId> {
    let first = preferred.filter(|p| members.contains_key(p));
    first
        .into_iter()
        .chain(members.keys().copied().filter(|&id| Some(id) != first))
        .collect()
}

fn wait_error(e: WaitError) -> ReplicaError {
    match e {
        WaitError::Timeout(t, _) => ReplicaError::Timeout(t),
        WaitError::ShuttingDown => ReplicaError::Shutdown,
    }
}

fn fatal_error(f: Fatal<TypeConfig>, failure: &StorageFailure) -> ReplicaError {
    match f {
        Fatal::Stopped => ReplicaError::Shutdown,
        Fatal::StorageError(e) => match failure.get() {
            Some(log_err) => ReplicaError::Storage(log_err),
            None => ReplicaError::Fatal(e.to_string()),
        },
        other => ReplicaError::Fatal(other.to_string()),
    }
}
