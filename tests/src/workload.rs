//! The write side of a fault test: producers with acks=all sending unique values to
//! every partition of a topic while faults happen, and the [`History`] of what each
//! send came to.
//!
//! Owns the producers and the record of every attempt. It judges nothing (that is the
//! [`crate::checker`]'s job) and never retries on its own: retries are the client
//! library's, which is what is under test.
//!
//! Besides each outcome, every attempt records the offset floor of its partition at
//! the moment it was handed to the producer: one past the highest offset already
//! acknowledged there. A record sent after another was acknowledged must land after
//! it, so every copy of it must lie at or above that floor.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sluice_client::{
    ClientConfig, ClientError, Connection, Producer, ProducerConfig, ProducerRecord, UNKNOWN_OFFSET,
};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::inspect::eventually;

/// How a workload writes.
#[derive(Debug, Clone)]
pub struct WorkloadConfig {
    pub topic: String,
    pub partitions: u32,
    /// Independent producers, each with its own connection, each writing every partition.
    pub producers: usize,
    /// Pause between two sends of one producer.
    pub interval: Duration,
    /// Prefix of every value, unique per scenario.
    pub tag: String,
    /// Turns on the producer's idempotence (see [`crate::checker::EXACTLY_ONCE`]).
    pub idempotent: bool,
}

impl WorkloadConfig {
    pub fn new(topic: &str, partitions: u32, tag: &str) -> Self {
        Self {
            topic: topic.into(),
            partitions,
            producers: 2,
            interval: Duration::from_millis(4),
            tag: tag.into(),
            idempotent: crate::checker::EXACTLY_ONCE,
        }
    }
}

/// The shared test client settings with a shorter request timeout: a request stuck on
/// a paused or isolated broker is abandoned sooner, so faults cost less of the run.
pub fn client_config(bootstrap: Vec<String>) -> ClientConfig {
    ClientConfig {
        request_timeout: Duration::from_secs(3),
        ..crate::client_config(bootstrap)
    }
}

/// The shared producer settings with the same shorter timeout and a bounded delivery,
/// so a test ends.
pub fn producer_config(idempotent: bool) -> ProducerConfig {
    ProducerConfig {
        request_timeout: Duration::from_secs(3),
        delivery_timeout: DELIVERY_TIMEOUT,
        max_block: Duration::from_secs(5),
        idempotence: idempotent,
        ..crate::producer_config()
    }
}

/// How long the producer keeps retrying one record.
pub const DELIVERY_TIMEOUT: Duration = Duration::from_secs(20);

/// What became of one send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Acknowledged at this offset.
    Acked { offset: u64 },
    /// Acknowledged without an offset: an idempotent producer's retry of a batch the
    /// broker stored long enough ago to have forgotten where.
    AckedSomewhere,
    /// The producer gave up: the record may or may not be stored.
    Failed(ClientError),
    /// `send` refused it: it never left this process.
    NotSent(ClientError),
}

/// One attempt to write one value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Op {
    pub value: String,
    pub partition: u32,
    pub producer: usize,
    /// The producer's send number: one producer's sends are numbered in send order.
    pub seq: u64,
    /// One past the highest offset acknowledged on the partition before this send.
    pub floor: u64,
    pub outcome: Outcome,
}

/// Every attempt of a workload, in no particular order.
#[derive(Debug, Clone, Default)]
pub struct History {
    pub ops: Vec<Op>,
}

impl History {
    pub fn acked(&self) -> usize {
        self.ops
            .iter()
            .filter(|o| matches!(o.outcome, Outcome::Acked { .. } | Outcome::AckedSomewhere))
            .count()
    }

    /// The failures, by error code name (or the error's text when it has no code).
    pub fn failures(&self) -> BTreeMap<String, usize> {
        let mut out = BTreeMap::new();
        for op in &self.ops {
            if let Outcome::Failed(e) | Outcome::NotSent(e) = &op.outcome {
                *out.entry(error_kind(e)).or_default() += 1;
            }
        }
        out
    }
}

/// Live counters while a workload runs.
#[derive(Debug, Default)]
pub struct Progress {
    acked: AtomicU64,
    failed: AtomicU64,
    /// Failures so far, by [`error_kind`].
    failures: Mutex<BTreeMap<String, usize>>,
    /// Per partition: one past the highest acknowledged offset.
    floors: Vec<AtomicU64>,
}

impl Progress {
    pub fn acked(&self) -> u64 {
        self.acked.load(Ordering::Relaxed)
    }

    pub fn failed(&self) -> u64 {
        self.failed.load(Ordering::Relaxed)
    }

    /// Failures so far, by [`error_kind`].
    pub fn failures(&self) -> BTreeMap<String, usize> {
        self.failures
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn floor(&self, partition: u32) -> u64 {
        self.floors[partition as usize].load(Ordering::Acquire)
    }

    fn record(&self, partition: u32, outcome: &Outcome) {
        match outcome {
            Outcome::Acked { offset } => {
                self.floors[partition as usize].fetch_max(offset + 1, Ordering::AcqRel);
                self.acked.fetch_add(1, Ordering::Relaxed);
            }
            Outcome::AckedSomewhere => {
                self.acked.fetch_add(1, Ordering::Relaxed);
            }
            Outcome::Failed(e) | Outcome::NotSent(e) => {
                self.failed.fetch_add(1, Ordering::Relaxed);
                *self
                    .failures
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .entry(error_kind(e))
                    .or_default() += 1;
            }
        }
    }
}

/// Producers writing until [`Workload::stop`].
pub struct Workload {
    stop: watch::Sender<bool>,
    writers: Vec<JoinHandle<()>>,
    ops: Arc<Mutex<Vec<Op>>>,
    progress: Arc<Progress>,
    started: Instant,
}

impl Workload {
    /// Connects the producers to `bootstrap` and starts writing.
    pub async fn start(bootstrap: Vec<String>, config: WorkloadConfig) -> Result<Self, String> {
        let (stop, stopped) = watch::channel(false);
        let progress = Arc::new(Progress {
            floors: (0..config.partitions).map(|_| AtomicU64::new(0)).collect(),
            ..Progress::default()
        });
        let ops: Arc<Mutex<Vec<Op>>> = Arc::default();
        let mut writers = Vec::new();
        for id in 0..config.producers {
            let conn = Connection::connect(client_config(bootstrap.clone()))
                .await
                .map_err(|e| format!("producer {id} cannot connect: {e}"))?;
            let producer = Producer::new(conn, producer_config(config.idempotent))
                .map_err(|e| format!("producer {id}: {e}"))?;
            writers.push(tokio::spawn(write(
                id,
                producer,
                config.clone(),
                stopped.clone(),
                ops.clone(),
                progress.clone(),
            )));
        }
        Ok(Self {
            stop,
            writers,
            ops,
            progress,
            started: Instant::now(),
        })
    }

    pub fn progress(&self) -> &Arc<Progress> {
        &self.progress
    }

    /// Waits until `n` more records than now have been acknowledged; `Err` with the
    /// counts if that takes longer than `timeout`.
    pub async fn wait_for_acks(&self, n: u64, timeout: Duration) -> Result<(), String> {
        let target = self.progress.acked() + n;
        eventually(timeout, || async move {
            if self.progress.acked() >= target {
                return Ok(());
            }
            Err(format!(
                "only {} of {target} records acknowledged ({:?} into the workload; failures so far: {:?})",
                self.progress.acked(),
                self.started.elapsed(),
                self.progress.failures()
            ))
        })
        .await
    }

    /// Stops sending, waits for every outstanding record's outcome (bounded by the
    /// producers' delivery timeout), and returns the history.
    pub async fn stop(self) -> History {
        let _ = self.stop.send(true);
        for w in self.writers {
            // A writer that panicked has recorded what it could; the checker judges.
            let _ = w.await;
        }
        let ops = std::mem::take(&mut *self.ops.lock().unwrap_or_else(|p| p.into_inner()));
        History { ops }
    }
}

/// One producer's loop: round-robin over the partitions until told to stop, then
/// waits for all its deliveries.
async fn write(
    id: usize,
    producer: Producer,
    config: WorkloadConfig,
    mut stop: watch::Receiver<bool>,
    ops: Arc<Mutex<Vec<Op>>>,
    progress: Arc<Progress>,
) {
    let mut deliveries = Vec::new();
    let mut seq: u64 = 0;
    while !*stop.borrow() {
        let n = seq;
        seq += 1;
        let partition = (n % u64::from(config.partitions)) as u32;
        let value = format!("{}-p{id}-{n}", config.tag);
        let floor = progress.floor(partition);
        let record = ProducerRecord::new(config.topic.clone(), value.clone()).partition(partition);
        let op = |outcome| Op {
            value: value.clone(),
            partition,
            producer: id,
            seq: n,
            floor,
            outcome,
        };
        match producer.send(record).await {
            Ok(delivery) => {
                let unresolved = op(Outcome::Failed(ClientError::Timeout {
                    message: "the producer never reported an outcome".into(),
                }));
                let task = {
                    let (ops, progress, pending) =
                        (ops.clone(), progress.clone(), unresolved.clone());
                    tokio::spawn(async move {
                        let outcome = match delivery.await {
                            Ok(meta) if meta.offset == UNKNOWN_OFFSET => Outcome::AckedSomewhere,
                            Ok(meta) => Outcome::Acked {
                                offset: meta.offset,
                            },
                            Err(e) => Outcome::Failed(e),
                        };
                        progress.record(partition, &outcome);
                        let done = Op { outcome, ..pending };
                        ops.lock().unwrap_or_else(|p| p.into_inner()).push(done);
                    })
                };
                deliveries.push((unresolved, task));
            }
            Err(e) => {
                let outcome = Outcome::NotSent(e);
                progress.record(partition, &outcome);
                ops.lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .push(op(outcome));
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(config.interval) => {}
            _ = stop.changed() => {}
        }
    }
    // Every delivery resolves within the delivery timeout; one that does not is
    // recorded as unresolved (a client bug the checker's counts will show).
    let deadline = tokio::time::Instant::now() + DELIVERY_TIMEOUT + Duration::from_secs(5);
    let _ = tokio::time::timeout_at(deadline, producer.flush()).await;
    for (unresolved, mut task) in deliveries {
        if tokio::time::timeout_at(deadline, &mut task).await.is_err() {
            task.abort();
            ops.lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(unresolved);
        }
    }
    let _ = tokio::time::timeout_at(deadline, producer.close()).await;
}

/// A short name for an error: its API code, else its variant.
pub fn error_kind(e: &ClientError) -> String {
    match e.code() {
        Some(c) => c.as_str_name().to_string(),
        None => format!("{e:?}")
            .split(|c: char| !c.is_alphanumeric())
            .next()
            .unwrap_or_default()
            .to_string(),
    }
}
