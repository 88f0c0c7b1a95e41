//! The controller: Raft group 0, whose log holds metadata commands as records.
//!
//! Proposals are validated against the committed state first and serialized on this
//! broker, so a proposal that returns `Ok` has been committed *and* applied. Committed
//! commands reach the state through the replica's apply hook, in log order. The state
//! is kept in memory only: a replica with a hook keeps no checkpoint, so at start
//! openraft re-applies the whole controller log through the hook. Batches already
//! applied (by offset) are skipped, so a repeated delivery changes nothing.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use sluice_proto::batch::{Batch, BatchBuilder, Compression};
use thiserror::Error;
use tokio::sync::watch;

use super::state::{BrokerInfo, MetadataCommand, MetadataError, MetadataState};
use crate::log::{LogConfig, RetentionPolicy, now_ms};
use crate::raft::{
    Acks, BasicNode, GroupRegistry, Network, RaftTuning, Replica, ReplicaError, ReplicaSpec,
};

/// The controller's Raft group id.
pub const CONTROLLER_GROUP: u64 = 0;

/// How long a proposal waits for a controller to be elected.
const ELECTION_WAIT: Duration = Duration::from_secs(5);

#[derive(Debug, Error)]
pub enum ControllerError {
    #[error(transparent)]
    Invalid(#[from] MetadataError),
    #[error("this broker is not the controller{}", leader_hint(.leader))]
    NotController { leader: Option<(u64, String)> },
    #[error("controller replication failed: {0}")]
    Replica(ReplicaError),
}

fn leader_hint(leader: &Option<(u64, String)>) -> String {
    match leader {
        Some((id, addr)) => format!("; the controller is broker {id} at {addr}"),
        None => "; no controller is elected yet, retry shortly".into(),
    }
}

impl From<ReplicaError> for ControllerError {
    fn from(e: ReplicaError) -> Self {
        match e {
            ReplicaError::NotLeader { leader } => Self::NotController { leader },
            other => Self::Replica(other),
        }
    }
}

/// Metadata as applied so far, and the offset after the last applied record.
struct Applied {
    state: MetadataState,
    next_offset: u64,
}

pub struct Controller {
    replica: Replica,
    published: watch::Receiver<Arc<MetadataState>>,
    propose_lock: tokio::sync::Mutex<()>,
}

impl Controller {
    /// Starts (or recovers) the controller replica in `dir` with `brokers` as voters.
    pub async fn start(
        node_id: u64,
        dir: &Path,
        brokers: Vec<BrokerInfo>,
        registry: &GroupRegistry,
        network: &Network,
        tuning: RaftTuning,
    ) -> Result<Self, ControllerError> {
        let initial = MetadataState::new(brokers.clone());
        let (publish, published) = watch::channel(Arc::new(initial.clone()));
        let publish = Arc::new(publish);
        let applied = Arc::new(Mutex::new(Applied {
            state: initial,
            next_offset: 0,
        }));
        let hook = {
            let (applied, publish) = (applied.clone(), publish.clone());
            Arc::new(move |base_offset: u64, batch: &Bytes| {
                apply_batch(&applied, &publish, base_offset, batch);
            })
        };
        let members: BTreeMap<u64, BasicNode> = brokers
            .iter()
            .map(|b| (b.id, BasicNode::new(b.addr.clone())))
            .collect();
        let spec = ReplicaSpec::new(CONTROLLER_GROUP, node_id, dir, members)
            .log_config(controller_log_config())
            .hook(hook)
            .tuning(tuning);
        let replica = Replica::start(spec, registry, network).await?;
        // Let the re-apply catch up with what the log held at start, so a restarted
        // broker does not answer from empty metadata. Best effort: an entry that never
        // commits (a truncated tail) must not hold the start up forever.
        let end = replica.log().next_offset();
        let mut hw = replica.watch_high_watermark();
        let _ = tokio::time::timeout(ELECTION_WAIT, hw.wait_for(|hw| *hw >= end)).await;
        Ok(Self {
            replica,
            published,
            propose_lock: tokio::sync::Mutex::new(()),
        })
    }

    /// The latest applied metadata.
    pub fn state(&self) -> Arc<MetadataState> {
        self.published.borrow().clone()
    }

    /// Notified on every change of the applied metadata.
    pub fn subscribe(&self) -> watch::Receiver<Arc<MetadataState>> {
        self.published.clone()
    }

    /// The elected controller, if known.
    pub fn leader(&self) -> Option<u64> {
        self.replica.leader()
    }

    /// Waits until a controller is elected (any broker), up to `timeout`.
    pub async fn wait_for_leader(&self, timeout: Duration) -> bool {
        self.replica.wait_for_leader(timeout).await.is_ok()
    }

    /// Validates, commits and applies `cmd`. Only the controller leader accepts.
    pub async fn propose(&self, cmd: MetadataCommand) -> Result<(), ControllerError> {
        let _one_at_a_time = self.propose_lock.lock().await;
        self.propose_locked(cmd).await
    }

    /// [`Controller::propose`], with the propose lock held by the caller.
    async fn propose_locked(&self, cmd: MetadataCommand) -> Result<(), ControllerError> {
        // During an election nobody leads; give it a moment rather than fail at once.
        if self.replica.leader().is_none() || self.replica.leader() == Some(self.replica.node_id())
        {
            let _ = self.replica.wait_for_leader(ELECTION_WAIT).await;
        }
        self.state().validate(&cmd)?;
        let mut builder = BatchBuilder::new(Compression::None);
        builder
            .append(now_ms(), None, Some(&cmd.encode()), &[])
            .map_err(|e| ControllerError::Invalid(MetadataError::Undecodable(e.to_string())))?;
        // Committed means applied: the hook ran before the write returned.
        self.replica.write(builder.build(), Acks::All).await?;
        Ok(())
    }

    /// Commits the next producer id for an idempotent producer and returns it.
    pub async fn allocate_producer_id(&self) -> Result<i64, ControllerError> {
        let _one_at_a_time = self.propose_lock.lock().await;
        let id = self.state().next_producer_id();
        self.propose_locked(MetadataCommand::AllocateProducerId { id })
            .await?;
        // Applied before the write returned; a lost race (a new controller handed out
        // the id first) shows as the state not having moved past it.
        if self.state().next_producer_id() <= id {
            return Err(ControllerError::Invalid(MetadataError::ProducerIdTaken {
                requested: id,
                next: self.state().next_producer_id(),
            }));
        }
        Ok(id)
    }

    pub fn replica(&self) -> &Replica {
        &self.replica
    }

    /// Stops the controller replica; the state stays readable.
    pub async fn shutdown_replica(&self) {
        if let Err(e) = self.replica.shutdown().await {
            tracing::warn!(error = %e, "controller replica did not stop cleanly");
        }
    }
}

/// The controller's log keeps everything: metadata is small and is the history.
fn controller_log_config() -> LogConfig {
    LogConfig {
        segment_bytes: 64 << 20,
        retention: RetentionPolicy::default(),
        ..LogConfig::default()
    }
}

fn apply_batch(
    applied: &Mutex<Applied>,
    publish: &watch::Sender<Arc<MetadataState>>,
    base_offset: u64,
    batch: &Bytes,
) {
    let mut applied = applied.lock().unwrap_or_else(|p| p.into_inner());
    let batch = match Batch::decode(batch.clone()) {
        Ok(b) => b,
        Err(e) => {
            tracing::error!(base_offset, error = %e, "undecodable controller batch skipped");
            return;
        }
    };
    let next = base_offset + batch.header().offset_count();
    if next <= applied.next_offset {
        return;
    }
    // The batch may carry the base offset its writer gave it (see `ApplyHook`).
    let stored_base = batch.header().base_offset;
    for record in batch.records() {
        let record = match record {
            Ok(r) => r,
            Err(e) => {
                tracing::error!(base_offset, error = %e, "undecodable controller record skipped");
                break;
            }
        };
        let Some(offset) = record
            .offset
            .checked_sub(stored_base)
            .and_then(|delta| u64::try_from(delta).ok())
            .map(|delta| base_offset.saturating_add(delta))
        else {
            tracing::error!(base_offset, "controller record before its batch skipped");
            break;
        };
        if offset < applied.next_offset {
            continue;
        }
        let Some(value) = record.value else { continue };
        match MetadataCommand::decode(&value).and_then(|cmd| applied.state.apply(&cmd)) {
            Ok(()) => tracing::info!(offset, "applied metadata command"),
            Err(e) => {
                tracing::warn!(offset, error = %e, "metadata command not applied")
            }
        }
    }
    applied.next_offset = next;
    publish.send_replace(Arc::new(applied.state.clone()));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn command_batch(cmd: &MetadataCommand) -> Bytes {
        let mut builder = BatchBuilder::new(Compression::None);
        builder
            .append(0, None, Some(&cmd.encode()), &[])
            .expect("append");
        builder.build()
    }

    #[test]
    fn commands_apply_at_the_offsets_the_log_gives_not_the_ones_in_the_batch() {
        let applied = Mutex::new(Applied {
            state: MetadataState::new(Vec::new()),
            next_offset: 0,
        });
        let (publish, published) = watch::channel(Arc::new(MetadataState::new(Vec::new())));
        // Both batches say base offset 0, as a batch kept in memory does.
        let first = command_batch(&MetadataCommand::AllocateProducerId { id: 0 });
        let second = command_batch(&MetadataCommand::AllocateProducerId { id: 1 });
        apply_batch(&applied, &publish, 0, &first);
        apply_batch(&applied, &publish, 1, &second);
        assert_eq!(published.borrow().next_producer_id(), 2);
        // Delivered again (a restart re-applies the log): skipped by offset.
        apply_batch(&applied, &publish, 1, &second);
        assert_eq!(published.borrow().next_producer_id(), 2);
        assert_eq!(applied.lock().expect("lock").next_offset, 2);
    }
}
