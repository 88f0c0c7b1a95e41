//! One partition of `__consumer_offsets` as its leader runs it: the groups and offsets
//! it holds, loaded by replaying the partition, changed only through replicated
//! writes, and kept bounded by checkpoints that let the log before them be purged.
//!
//! Owns: loading (after the leader's first entry commits, everything earlier leaders
//! committed is in the log, and nobody else writes here), the term check that makes a
//! leader that lost and regained leadership reload, and compaction. Writes go through
//! the shard's [`Writer`] (group commit). Must never answer from state that a write
//! did not reach: answers wait for their ticket, and a failed write ends the writer's
//! generation, which makes the next request load the state again from the log (where
//! the write either is or is not).
//!
//! Compaction: when the log holds more stale records than live ones and spans a few
//! segments, the shard writes a checkpoint (every live offset and group, between
//! begin/end markers) and purges the sealed segments wholly before it that every
//! voter already holds. So no follower ever needs a snapshot to catch up with a purge
//! (a snapshot would skip the checkpoint); a replica whose log was cut short anyway
//! (a replaced disk) refuses to coordinate until a later checkpoint reaches it.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{Mutex, MutexGuard};

use super::GroupError;
use super::membership::Group;
use super::offsets::{OffsetStore, Replay};
use super::records::{self, GroupRecord};
use super::writer::{Ticket, Writer};
use crate::partition::Partition;

/// How long loading waits for earlier leaders' entries to be applied.
const LOAD_WAIT: Duration = Duration::from_secs(5);

/// Bytes read from the log per step of a replay.
const REPLAY_READ_BYTES: usize = 4 << 20;

/// Compaction waits for at least this many stale records.
const MIN_STALE_RECORDS: u64 = 1000;

/// Compaction waits until the log spans at least this many segments.
const MIN_SEGMENTS: usize = 3;

/// The state of a loaded shard.
#[derive(Debug)]
pub struct Loaded {
    term: u64,
    /// The writer's generation this state belongs to.
    generation: u64,
    pub offsets: OffsetStore,
    pub groups: BTreeMap<String, Group>,
    /// Records in the log since the last checkpoint began (or since the log start).
    since_checkpoint: u64,
    next_checkpoint_id: u64,
}

impl Loaded {
    /// Records a checkpoint would write now.
    fn live_records(&self) -> u64 {
        (self.offsets.len() + self.groups.len()) as u64
    }
}

pub struct Shard {
    partition: Arc<Partition>,
    state: Mutex<Option<Loaded>>,
    writer: Writer,
}

/// Exclusive access to a loaded shard.
pub struct ShardGuard<'a> {
    shard: &'a Shard,
    slot: MutexGuard<'a, Option<Loaded>>,
}

impl ShardGuard<'_> {
    /// The loaded state.
    pub fn state(&mut self) -> Result<&mut Loaded, GroupError> {
        self.slot.as_mut().ok_or_else(|| {
            GroupError::CoordinatorNotAvailable("the group state is being reloaded".into())
        })
    }

    /// Queues `records`, which make the changes just made durable; with none, a
    /// ticket for what is queued already (for an answer that read the state). Answer
    /// only once [`Shard::wait`] of the ticket succeeds.
    pub fn enqueue(&mut self, records: Vec<GroupRecord>) -> Ticket {
        let count = records.len() as u64;
        let generation = match self.slot.as_mut() {
            Some(loaded) => {
                loaded.since_checkpoint += count;
                loaded.generation
            }
            // Nothing loaded: a ticket of an ended generation, which fails.
            None => self.shard.writer.generation().wrapping_sub(1),
        };
        self.shard.writer.enqueue(generation, records)
    }
}

impl Shard {
    pub fn new(partition: Arc<Partition>) -> Self {
        Self {
            writer: Writer::start(partition.clone()),
            partition,
            state: Mutex::new(None),
        }
    }

    pub fn partition(&self) -> &Arc<Partition> {
        &self.partition
    }

    /// The shard's state, loaded first if needed. Fails with `NotCoordinator` unless
    /// this broker leads the partition.
    pub async fn lock(&self) -> Result<ShardGuard<'_>, GroupError> {
        let replica = &self.partition.replica;
        let mut slot = self.state.lock().await;
        if !replica.is_leader() {
            *slot = None;
            return Err(GroupError::NotCoordinator {
                leader: replica
                    .leader_node()
                    .filter(|(id, _)| *id != replica.node_id()),
            });
        }
        let term = replica.term();
        let generation = self.writer.generation();
        if slot
            .as_ref()
            .is_none_or(|l| l.term != term || l.generation != generation)
        {
            *slot = None;
            *slot = Some(self.load(term, generation).await?);
        }
        Ok(ShardGuard { shard: self, slot })
    }

    /// Waits until what `ticket` covers is durable.
    pub async fn wait(&self, ticket: Ticket) -> Result<(), GroupError> {
        self.writer.wait(ticket).await
    }

    /// Runs `change` on the loaded state, queues the records it returns, and once
    /// they (and everything queued before) are durable, returns its result.
    pub async fn update<T>(
        &self,
        change: impl FnOnce(&mut Loaded) -> Result<(T, Vec<GroupRecord>), GroupError>,
    ) -> Result<T, GroupError> {
        let (out, ticket) = {
            let mut guard = self.lock().await?;
            let (out, records) = change(guard.state()?)?;
            (out, guard.enqueue(records))
        };
        self.wait(ticket).await?;
        Ok(out)
    }

    /// Answers from the loaded state without changing it, once what `look` saw is
    /// durable and this broker is confirmed to still lead in the term it loaded in: a
    /// leader cut off from the others keeps its state, and must not answer from it
    /// (an older committed offset) after another leader took commits.
    pub async fn read<T>(
        &self,
        look: impl FnOnce(&Loaded) -> Result<T, GroupError>,
    ) -> Result<T, GroupError> {
        let (out, ticket, term) = {
            let mut guard = self.lock().await?;
            let loaded = guard.state()?;
            let term = loaded.term;
            (look(loaded)?, guard.enqueue(Vec::new()), term)
        };
        self.wait(ticket).await?;
        let replica = &self.partition.replica;
        replica.confirm_leadership().await?;
        if replica.term() != term {
            return Err(GroupError::NotCoordinator {
                leader: replica.leader_node(),
            });
        }
        Ok(out)
    }

    /// Like [`Shard::update`] for a change that writes nothing, when `answer` says its
    /// result tells the client nothing it could not have known already (so it need
    /// not wait for other requests' writes): a heartbeat that changes nothing.
    pub async fn peek<T>(
        &self,
        look: impl FnOnce(&mut Loaded) -> Result<(T, Vec<GroupRecord>), GroupError>,
        tells_nothing_new: impl FnOnce(&T) -> bool,
    ) -> Result<T, GroupError> {
        let (out, ticket) = {
            let mut guard = self.lock().await?;
            let (out, records) = look(guard.state()?)?;
            let quiet = records.is_empty() && tells_nothing_new(&out);
            (out, (!quiet).then(|| guard.enqueue(records)))
        };
        if let Some(ticket) = ticket {
            self.wait(ticket).await?;
        }
        Ok(out)
    }

    /// Drops the loaded state (this broker no longer leads).
    pub async fn unload(&self) {
        let mut slot = self.state.lock().await;
        if slot.take().is_some() {
            tracing::info!(
                partition = self.partition.partition,
                "group coordinator shard unloaded"
            );
        }
    }

    async fn load(&self, term: u64, generation: u64) -> Result<Loaded, GroupError> {
        let replica = &self.partition.replica;
        let started = Instant::now();
        // Elected is not enough: writes are taken once a quorum acknowledged the term.
        match replica.wait_for_leader(LOAD_WAIT).await {
            Ok(leader) if leader == replica.node_id() && replica.term() == term => {}
            Ok(_) => {
                return Err(GroupError::NotCoordinator {
                    leader: replica.leader_node(),
                });
            }
            Err(e) => return Err(e.into()),
        }
        let end = replica.log().next_offset();
        let mut hw = replica.watch_high_watermark();
        if tokio::time::timeout(LOAD_WAIT, hw.wait_for(|hw| *hw >= end))
            .await
            .is_err()
        {
            return Err(GroupError::CoordinatorNotAvailable(format!(
                "partition {} of the offsets topic is still catching up; retry shortly",
                self.partition.partition
            )));
        }
        let log = replica.log().clone();
        let upto = replica.high_watermark();
        let replay = tokio::task::spawn_blocking(move || replay(&log, upto))
            .await
            .map_err(|e| GroupError::CoordinatorNotAvailable(format!("replay stopped: {e}")))??;
        let log_start = replica.log().start_offset();
        if !replay.is_complete(log_start) {
            return Err(GroupError::CoordinatorNotAvailable(format!(
                "this replica of partition {} of the offsets topic starts at offset {log_start} \
                 without a complete checkpoint; another replica must lead it",
                self.partition.partition
            )));
        }
        let now = Instant::now();
        let groups = replay
            .groups
            .into_iter()
            .map(|(id, state)| (id, Group::load(state, now)))
            .collect::<BTreeMap<_, _>>();
        tracing::info!(
            partition = self.partition.partition,
            term,
            groups = groups.len(),
            offsets = replay.offsets.len(),
            records = replay.records,
            took_ms = started.elapsed().as_millis() as u64,
            "group coordinator shard loaded"
        );
        Ok(Loaded {
            term,
            generation,
            offsets: replay.offsets,
            groups,
            since_checkpoint: replay.records,
            next_checkpoint_id: replay.last_checkpoint_id + 1,
        })
    }

    /// Writes a checkpoint and purges what it makes stale, if enough is stale.
    /// Returns whether a checkpoint was written.
    pub async fn compact(&self) -> Result<bool, GroupError> {
        let mut guard = self.lock().await?;
        let loaded = guard.state()?;
        let live = loaded.live_records();
        let stale = loaded.since_checkpoint.saturating_sub(live);
        let segments = self.partition.replica.log().segment_base_offsets().len();
        if stale < MIN_STALE_RECORDS.max(live) || segments < MIN_SEGMENTS {
            return Ok(false);
        }
        self.checkpoint(&mut guard).await?;
        Ok(true)
    }

    /// Writes a checkpoint now and purges whatever the voters allow before it.
    pub async fn checkpoint(&self, guard: &mut ShardGuard<'_>) -> Result<(), GroupError> {
        // Holding the lock, nothing new is queued: once the queue is written, the
        // checkpoint goes straight after it, in order.
        let drained = guard.enqueue(Vec::new());
        self.wait(drained).await?;
        let loaded = guard.state()?;
        let id = loaded.next_checkpoint_id;
        loaded.next_checkpoint_id += 1;
        let mut records = vec![GroupRecord::CheckpointBegin { id }];
        records.extend(loaded.offsets.records());
        records.extend(
            loaded
                .groups
                .values()
                .map(|g| GroupRecord::Group(g.state().clone())),
        );
        records.push(GroupRecord::CheckpointEnd { id });
        let written = records.len() as u64;
        let generation = loaded.generation;
        let begin = self.writer.write_now(generation, &records).await?;
        guard.state()?.since_checkpoint = written;
        let replica = &self.partition.replica;
        if let Some(upto) = replica.purge_point_before(begin) {
            replica.purge_through(upto).await?;
        }
        tracing::info!(
            partition = self.partition.partition,
            checkpoint = id,
            records = written,
            log_start = replica.log().start_offset(),
            "offsets checkpoint written"
        );
        Ok(())
    }
}

/// Replays the log from its start up to `upto` (blocking).
fn replay(log: &crate::log::Log, upto: u64) -> Result<Replay, GroupError> {
    let mut state = Replay::default();
    let mut offset = log.start_offset();
    while offset < upto {
        let read = log
            .read(offset, REPLAY_READ_BYTES, upto)
            .map_err(|e| GroupError::CoordinatorNotAvailable(format!("cannot read log: {e}")))?;
        if read.batches.is_empty() || read.next_offset <= offset {
            break;
        }
        let mut at = offset;
        for batch in read.batches {
            let records = records::decode_batch(at, batch).map_err(|e| {
                GroupError::CoordinatorNotAvailable(format!("offsets topic holds {e}"))
            })?;
            at += records.len() as u64;
            for record in records {
                state.apply(record);
            }
        }
        offset = read.next_offset;
    }
    Ok(state)
}

#[cfg(test)]
mod tests;
