//! Group commit for a shard: the records of many requests, written in one replicated
//! write.
//!
//! Requests change the shard's state under its lock and queue the records that make
//! the change durable, each getting a [`Ticket`]; a reader takes a ticket too (for
//! everything queued before it read). One writer task writes whatever is queued
//! (acks=all) and reports progress; a request answers only once its ticket is
//! durable. So a burst of commits costs one Raft entry, not one each, while no answer
//! ever reflects a change that is not durable.
//!
//! A failed write ends the shard's *generation*: its records and every record queued
//! after them in that generation fail (their requests get the error), and the shard
//! reloads its state from the log before serving again (see `shard`). Must never
//! write a record of an ended generation.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::{Notify, watch};
use tokio::task::JoinHandle;

use super::GroupError;
use super::records::{self, GroupRecord};
use crate::log::now_ms;
use crate::partition::Partition;
use crate::raft::{Acks, ReplicaError, Written};

/// How long a write refused for a lapsed leader lease is retried, and how often.
const LEASE_RETRY: Duration = Duration::from_secs(5);
const LEASE_RETRY_PAUSE: Duration = Duration::from_millis(50);

/// What a request waits for: every record queued before `upto` (in `generation`)
/// written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ticket {
    upto: u64,
    generation: u64,
}

/// Why a generation's writes failed, for the requests waiting on them.
#[derive(Debug, Clone)]
struct Failure {
    /// The first record (sequence number) not written.
    from: u64,
    not_leader: bool,
    message: String,
}

impl Failure {
    fn error(&self) -> GroupError {
        if self.not_leader {
            GroupError::NotCoordinator { leader: None }
        } else {
            GroupError::CoordinatorNotAvailable(format!(
                "writing the group state failed: {}",
                self.message
            ))
        }
    }
}

#[derive(Debug, Clone, Default)]
struct Progress {
    /// Records with sequence numbers below this are written (or failed, see below).
    durable: u64,
    /// Generation → where it failed.
    failures: HashMap<u64, Failure>,
}

struct Queued {
    seq: u64,
    generation: u64,
    records: Vec<GroupRecord>,
}

#[derive(Default)]
struct Inner {
    generation: u64,
    next_seq: u64,
    pending: Vec<Queued>,
}

struct Queue {
    inner: Mutex<Inner>,
    wake: Notify,
    progress: watch::Sender<Progress>,
}

fn lock(m: &Mutex<Inner>) -> std::sync::MutexGuard<'_, Inner> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The write queue and writer task of one shard.
pub struct Writer {
    queue: Arc<Queue>,
    partition: Arc<Partition>,
    task: JoinHandle<()>,
}

impl Drop for Writer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Writer {
    pub fn start(partition: Arc<Partition>) -> Self {
        let queue = Arc::new(Queue {
            inner: Mutex::new(Inner::default()),
            wake: Notify::new(),
            progress: watch::channel(Progress::default()).0,
        });
        let task = tokio::spawn(run(queue.clone(), partition.clone()));
        Self {
            queue,
            partition,
            task,
        }
    }

    /// The current generation: state loaded in another one must be reloaded.
    pub fn generation(&self) -> u64 {
        lock(&self.queue.inner).generation
    }

    /// Queues `records` (written by state of `generation`); an empty list queues
    /// nothing and returns a ticket for what is queued already.
    pub fn enqueue(&self, generation: u64, records: Vec<GroupRecord>) -> Ticket {
        let mut inner = lock(&self.queue.inner);
        if !records.is_empty() {
            let seq = inner.next_seq;
            inner.next_seq += 1;
            inner.pending.push(Queued {
                seq,
                generation,
                records,
            });
            self.queue.wake.notify_one();
        }
        Ticket {
            upto: inner.next_seq,
            generation,
        }
    }

    /// Waits until everything `ticket` covers is written, or fails.
    pub async fn wait(&self, ticket: Ticket) -> Result<(), GroupError> {
        let mut progress = self.queue.progress.subscribe();
        loop {
            {
                let p = progress.borrow_and_update();
                if let Some(f) = p.failures.get(&ticket.generation)
                    && f.from < ticket.upto
                {
                    return Err(f.error());
                }
                if p.durable >= ticket.upto {
                    return Ok(());
                }
            }
            if progress.changed().await.is_err() {
                return Err(GroupError::CoordinatorNotAvailable(
                    "the shard's writer stopped".into(),
                ));
            }
        }
    }

    /// Writes `records` now, bypassing the queue, and returns the first batch's base
    /// offset. The caller holds the shard's lock with nothing queued, so the order of
    /// writes is kept. A failure ends `generation`.
    pub async fn write_now(
        &self,
        generation: u64,
        records: &[GroupRecord],
    ) -> Result<u64, GroupError> {
        match write(&self.partition, generation, &self.queue, records).await {
            Ok(first) => Ok(first),
            Err(e) => {
                let seq = lock(&self.queue.inner).next_seq;
                let failure = self.queue.fail(generation, seq, &e);
                Err(failure.error())
            }
        }
    }
}

impl Queue {
    /// Ends `generation` from record `from` on.
    fn fail(&self, generation: u64, from: u64, e: &ReplicaError) -> Failure {
        let failure = Failure {
            from,
            not_leader: matches!(e, ReplicaError::NotLeader { .. } | ReplicaError::Shutdown),
            message: e.to_string(),
        };
        {
            let mut inner = lock(&self.inner);
            if inner.generation == generation {
                inner.generation += 1;
            }
        }
        self.progress.send_modify(|p| {
            p.failures
                .entry(generation)
                .or_insert_with(|| failure.clone());
            // Only the last few generations can still have waiters.
            let oldest = generation.saturating_sub(8);
            p.failures.retain(|g, _| *g >= oldest);
        });
        failure
    }
}

/// Writes `records` in as few batches as their size allows. Returns the first
/// batch's base offset.
async fn write(
    partition: &Partition,
    generation: u64,
    queue: &Queue,
    records: &[GroupRecord],
) -> Result<u64, ReplicaError> {
    let mut first = None;
    for batch in records::encode_batches(records, now_ms()) {
        let written = write_batch(partition, generation, queue, batch).await?;
        first = first.or(written.base_offset);
    }
    Ok(first.unwrap_or_else(|| partition.replica.high_watermark()))
}

/// Writes one batch. A leader whose lease lapsed (followers slow to answer) refuses
/// writes without appending them while still leading: such a write is retried for a
/// while rather than failed.
async fn write_batch(
    partition: &Partition,
    generation: u64,
    queue: &Queue,
    batch: Bytes,
) -> Result<Written, ReplicaError> {
    let replica = &partition.replica;
    let term = replica.term();
    let deadline = Instant::now() + LEASE_RETRY;
    loop {
        match replica.write(batch.clone(), Acks::All).await {
            Err(ReplicaError::NotLeader { leader: None })
                if replica.is_leader()
                    && replica.term() == term
                    && lock(&queue.inner).generation == generation
                    && Instant::now() < deadline =>
            {
                tokio::time::sleep(LEASE_RETRY_PAUSE).await;
            }
            other => return other,
        }
    }
}

async fn run(queue: Arc<Queue>, partition: Arc<Partition>) {
    loop {
        let (batch, generation) = loop {
            let notified = queue.wake.notified();
            {
                let mut inner = lock(&queue.inner);
                if !inner.pending.is_empty() {
                    break (std::mem::take(&mut inner.pending), inner.generation);
                }
            }
            notified.await;
        };
        // Records of an ended generation are never written; their waiters already
        // see the failure that ended it.
        let live: Vec<Queued> = batch
            .into_iter()
            .filter(|q| q.generation == generation)
            .collect();
        let (Some(first), Some(last)) = (live.first(), live.last()) else {
            continue;
        };
        let (from, upto) = (first.seq, last.seq + 1);
        let records: Vec<GroupRecord> = live.into_iter().flat_map(|q| q.records).collect();
        match write(&partition, generation, &queue, &records).await {
            Ok(_) => {
                queue
                    .progress
                    .send_modify(|p| p.durable = p.durable.max(upto));
            }
            Err(e) => {
                tracing::warn!(
                    partition = partition.partition,
                    error = %e,
                    "group state write failed; the shard reloads from its log"
                );
                queue.fail(generation, from, &e);
            }
        }
    }
}
