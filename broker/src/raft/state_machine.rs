//! The thin Raft state machine of a group: the last applied log id, the last applied
//! membership and the high watermark (the offset after the last applied data batch).
//!
//! Owns: the high watermark and its `watch` channel (fetchers long-poll on it), the
//! optional apply hook (the controller applies metadata records through it), and the
//! `sm-state` file, which is both the latest snapshot and a periodic checkpoint of the
//! applied state. Must never write to the log except to reset it when a snapshot from
//! the leader replaces entries this replica lacks, and never re-read the whole log.
//!
//! Start-up: the state machine resumes from its last checkpoint (applied id, membership)
//! with the high watermark recomputed from the log (`Log::next_offset_after`); openraft
//! then re-applies only the entries between the checkpoint and the committed id, which
//! a checkpoint taken every few thousand entries / megabytes / seconds keeps short. (It
//! cannot simply claim the saved committed id as applied: the membership as of that id
//! could lie anywhere in the log.) With an apply hook nothing is skipped: the state
//! machine starts empty and openraft re-applies the whole log through the hook.
//!
//! A snapshot is small: the applied id and membership (in openraft's meta), the next
//! offset, the log start offset and the idempotent producers' table (see
//! [`super::producers`]), which the state machine keeps from every stamped batch. A follower installing one whose last entry its log
//! lacks resets its log to start right after it.

use std::io;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::{Stream, StreamExt};
use openraft::storage::{EntryResponder, RaftStateMachine};
use openraft::{EntryPayload, OptionalSend, RaftSnapshotBuilder, Snapshot};
use serde::{Deserialize, Serialize};
use sluice_proto::batch::BatchHeader;
use thiserror::Error;
use tokio::sync::watch;

use super::meta::{StateFileError, read_state, write_state};
use super::producers::{ProducerTable, Stamp};
use super::recent::RecentEntries;
use super::types::{Applied, LogId, SnapshotMeta, StoredMembership, TypeConfig, entry_id};
use crate::log::{Log, LogError};

/// Called with each applied data batch and its base offset, in log order. The batch's
/// own header may hold the base offset its writer gave it rather than the log's (it
/// can come from memory, see [`super::recent`]): offsets come from the argument.
pub type ApplyHook = Arc<dyn Fn(u64, &Bytes) + Send + Sync>;

/// The snapshot data of a partition: where its offsets stand and what it knows of
/// idempotent producers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartitionSnapshot {
    /// The high watermark at the snapshot's last entry.
    pub next_offset: u64,
    /// The first offset still in the log of the replica that built the snapshot.
    pub log_start_offset: u64,
    #[serde(default)]
    pub producers: ProducerTable,
}

pub type GroupSnapshot = Snapshot<
    openraft::alias::CommittedLeaderIdOf<TypeConfig>,
    u64,
    super::types::BasicNode,
    PartitionSnapshot,
>;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct StoredSnapshot {
    meta: SnapshotMeta,
    data: PartitionSnapshot,
}

impl StoredSnapshot {
    fn into_snapshot(self) -> GroupSnapshot {
        Snapshot {
            meta: self.meta,
            snapshot: self.data,
        }
    }
}

/// When the applied state is checkpointed (whichever comes first).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CheckpointPolicy {
    pub every_entries: u64,
    pub every_bytes: u64,
    pub every: Duration,
}

impl Default for CheckpointPolicy {
    fn default() -> Self {
        Self {
            every_entries: 8192,
            every_bytes: 64 << 20,
            every: Duration::from_secs(10),
        }
    }
}

#[derive(Debug, Error)]
pub enum StateMachineError {
    #[error(transparent)]
    Log(#[from] LogError),
    #[error(transparent)]
    StateFile(#[from] StateFileError),
}

/// The `sm-state` file and the snapshot it holds, shared with snapshot builders.
#[derive(Debug)]
struct SnapshotStore {
    path: PathBuf,
    current: Mutex<Option<StoredSnapshot>>,
    write: Mutex<()>,
}

impl SnapshotStore {
    fn current(&self) -> Option<StoredSnapshot> {
        self.current
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Writes `snap` durably unless a newer one is already stored (blocking).
    fn save(&self, snap: StoredSnapshot) -> Result<(), StateFileError> {
        let _w = self.write.lock().unwrap_or_else(|p| p.into_inner());
        if self
            .current()
            .is_some_and(|c| c.meta.last_log_id > snap.meta.last_log_id)
        {
            return Ok(());
        }
        write_state(&self.path, &snap)?;
        *self.current.lock().unwrap_or_else(|p| p.into_inner()) = Some(snap);
        Ok(())
    }
}

async fn save_snapshot(store: &Arc<SnapshotStore>, snap: StoredSnapshot) -> io::Result<()> {
    let store = store.clone();
    tokio::task::spawn_blocking(move || store.save(snap))
        .await
        .map_err(io::Error::other)?
        .map_err(io::Error::from)
}

#[derive(Debug)]
struct SinceCheckpoint {
    entries: u64,
    bytes: u64,
    at: Instant,
}

impl SinceCheckpoint {
    fn new() -> Self {
        Self {
            entries: 0,
            bytes: 0,
            at: Instant::now(),
        }
    }
}

pub struct StateMachine {
    log: Arc<Log>,
    /// Entries kept in memory until applied; released here, cleared on a log reset.
    recent: Arc<RecentEntries>,
    last_applied: Option<LogId>,
    membership: StoredMembership,
    hw: u64,
    hw_tx: watch::Sender<u64>,
    hook: Option<ApplyHook>,
    /// Shared with the leader's sequence checks ([`super::Replica::submit`]).
    producers: Arc<Mutex<ProducerTable>>,
    snapshots: Arc<SnapshotStore>,
    policy: CheckpointPolicy,
    since: SinceCheckpoint,
}

impl StateMachine {
    /// Opens the state machine of the log, reading `path` (the `sm-state` file). If the
    /// stored snapshot is ahead of the log (a crash in the middle of installing it), the
    /// log is reset to continue after it, finishing the install.
    pub fn open(
        log: Arc<Log>,
        recent: Arc<RecentEntries>,
        path: PathBuf,
        hook: Option<ApplyHook>,
        policy: CheckpointPolicy,
    ) -> Result<(Self, watch::Receiver<u64>), StateMachineError> {
        // With a hook, replay the whole log through it, unless the log no longer starts
        // at the first entry (it took a snapshot): then the hook cannot see what it missed.
        let replayable = match log.first_id() {
            Some(first) => first.index == 0,
            None => log.last_id().is_none(),
        };
        let stored = if hook.is_none() || !replayable {
            read_state::<StoredSnapshot>(&path)?
        } else {
            None
        };
        if hook.is_some() && stored.is_some() {
            tracing::warn!(
                dir = %log.dir().display(),
                "the log starts after a snapshot: the apply hook only sees entries after it"
            );
        }
        if let Some(s) = &stored
            && let Some(last) = &s.meta.last_log_id
        {
            let id = entry_id(last);
            if log.last_id().is_none_or(|l| l.index < id.index) {
                tracing::warn!(
                    dir = %log.dir().display(),
                    snapshot = %last,
                    "log ends before the stored snapshot; finishing the snapshot install"
                );
                log.reset(s.data.next_offset, Some(id))?;
            }
        }
        let (last_applied, membership) = match &stored {
            Some(s) => (s.meta.last_log_id, s.meta.last_membership.clone()),
            None => (None, StoredMembership::default()),
        };
        let hw = match &last_applied {
            Some(id) => log.next_offset_after(id.index)?,
            None => log.start_offset(),
        };
        let (hw_tx, hw_rx) = watch::channel(hw);
        let producers = stored
            .as_ref()
            .map(|s| s.data.producers.clone())
            .unwrap_or_default();
        let sm = Self {
            log,
            recent,
            last_applied,
            membership,
            hw,
            hw_tx,
            hook,
            producers: Arc::new(Mutex::new(producers)),
            snapshots: Arc::new(SnapshotStore {
                path,
                current: Mutex::new(stored),
                write: Mutex::new(()),
            }),
            policy,
            since: SinceCheckpoint::new(),
        };
        Ok((sm, hw_rx))
    }

    pub fn high_watermark(&self) -> u64 {
        self.hw
    }

    /// The idempotent producers' table, updated as batches apply.
    pub fn producers(&self) -> Arc<Mutex<ProducerTable>> {
        self.producers.clone()
    }

    fn producer_table(&self) -> std::sync::MutexGuard<'_, ProducerTable> {
        self.producers.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn state_now(&self) -> StoredSnapshot {
        StoredSnapshot {
            meta: SnapshotMeta {
                last_log_id: self.last_applied,
                last_membership: self.membership.clone(),
            },
            data: PartitionSnapshot {
                next_offset: self.hw,
                log_start_offset: self.log.start_offset(),
                producers: self.producer_table().clone(),
            },
        }
    }

    fn publish(&self) {
        let hw = self.hw;
        self.hw_tx.send_if_modified(|v| {
            let changed = *v != hw;
            *v = hw;
            changed
        });
    }

    async fn maybe_checkpoint(&mut self) -> io::Result<()> {
        if self.hook.is_some() || self.since.entries == 0 {
            return Ok(());
        }
        let due = self.since.entries >= self.policy.every_entries
            || self.since.bytes >= self.policy.every_bytes
            || self.since.at.elapsed() >= self.policy.every;
        if due {
            save_snapshot(&self.snapshots, self.state_now()).await?;
            self.since = SinceCheckpoint::new();
        }
        Ok(())
    }

    /// Applies one data batch; returns its base offset.
    fn apply_batch(&mut self, id: &LogId, batch: &Bytes) -> io::Result<u64> {
        let header = BatchHeader::parse(batch).map_err(|e| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("entry {id} holds an unreadable batch: {e}"),
            )
        })?;
        // Not `header.base_offset`: a batch read from memory carries the producer's.
        let base = self.hw;
        self.hw += header.offset_count();
        self.since.bytes += batch.len() as u64;
        if let Some(stamp) = Stamp::of(&header) {
            self.producer_table().apply(&stamp, base);
        }
        if let Some(hook) = &self.hook {
            hook(base, batch);
        }
        Ok(base)
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotData = PartitionSnapshot;
    type SnapshotBuilder = SnapshotBuilder;

    async fn applied_state(&mut self) -> io::Result<(Option<LogId>, StoredMembership)> {
        Ok((self.last_applied, self.membership.clone()))
    }

    async fn apply<Strm>(&mut self, mut entries: Strm) -> io::Result<()>
    where
        Strm: Stream<Item = io::Result<EntryResponder<TypeConfig>>> + Unpin + OptionalSend,
    {
        while let Some(item) = entries.next().await {
            let (entry, responder) = item?;
            let base_offset = match &entry.payload {
                EntryPayload::Normal(batch) => self.apply_batch(&entry.log_id, &batch.0)?,
                EntryPayload::Blank => self.hw,
                EntryPayload::Membership(m) => {
                    self.membership = StoredMembership::new(Some(entry.log_id), m.clone());
                    self.hw
                }
            };
            self.last_applied = Some(entry.log_id);
            self.since.entries += 1;
            self.publish();
            if let Some(r) = responder {
                r.send(Applied {
                    base_offset,
                    high_watermark: self.hw,
                });
            }
        }
        if let Some(id) = &self.last_applied {
            self.recent.release_through(id.index);
        }
        self.maybe_checkpoint().await
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        SnapshotBuilder {
            snapshot: self.state_now(),
            store: self.snapshots.clone(),
        }
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        snapshot: PartitionSnapshot,
    ) -> io::Result<()> {
        let (next_offset, producers) = (snapshot.next_offset, snapshot.producers.clone());
        let stored = StoredSnapshot {
            meta: meta.clone(),
            data: snapshot,
        };
        let hw = match &meta.last_log_id {
            Some(last) => {
                let id = entry_id(last);
                let have = self
                    .log
                    .entries(id.index..id.index + 1, 1)
                    .ok()
                    .and_then(|f| f.into_iter().next())
                    .is_some_and(|f| f.id == id);
                // Durable before the log changes, so a crash in between finishes the
                // reset at the next start.
                save_snapshot(&self.snapshots, stored).await?;
                self.recent.clear();
                if have {
                    self.log
                        .next_offset_after(id.index)
                        .map_err(io::Error::other)?
                } else {
                    self.log
                        .reset(next_offset, Some(id))
                        .map_err(io::Error::other)?;
                    next_offset
                }
            }
            None => {
                save_snapshot(&self.snapshots, stored).await?;
                next_offset
            }
        };
        *self.producer_table() = producers;
        if self.hook.is_some() {
            tracing::warn!(
                snapshot = ?meta.last_log_id,
                "installed a snapshot: the apply hook did not see the entries it covers"
            );
        }
        self.last_applied = meta.last_log_id;
        self.membership = meta.last_membership.clone();
        self.hw = hw;
        self.since = SinceCheckpoint::new();
        self.publish();
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> io::Result<Option<GroupSnapshot>> {
        Ok(self.snapshots.current().map(StoredSnapshot::into_snapshot))
    }
}

/// Builds (writes out) a snapshot of the state captured when it was created.
pub struct SnapshotBuilder {
    snapshot: StoredSnapshot,
    store: Arc<SnapshotStore>,
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    type SnapshotData = PartitionSnapshot;

    async fn build_snapshot(&mut self) -> io::Result<GroupSnapshot> {
        save_snapshot(&self.store, self.snapshot.clone()).await?;
        Ok(self.snapshot.clone().into_snapshot())
    }
}
