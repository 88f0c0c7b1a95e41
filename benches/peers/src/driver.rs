//! The measuring loops, shared by every peer: producing with a bounded window of
//! unacknowledged records, following a topic for end-to-end latency, and replaying a
//! backlog. They talk to a system only through [`Publisher`] and [`Source`], and
//! count the way `sluice perf` counts (see its module doc): ack latency from the
//! publish call to the acknowledgement, throughput from the first send to the last
//! acknowledgement, MB = 10^6 bytes of values. Records sent in the warm-up count in
//! no figure; both sides decide by the send instant, which is also the stamp.
//!
//! Every loop ends by itself: producing at the duration, following when every
//! acknowledged record arrived or a grace period passed, replaying at the backlog
//! counted at its start or when nothing arrives for a while.

use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use bytes::Bytes;
use futures::StreamExt;
use futures::stream::FuturesUnordered;
use hdrhistogram::Histogram;
use sluice_tools::cmd::perf::{
    ConsumeReport, Pacer, Report, SplitMix64, Tally, new_histogram, payload, read_stamp, record_us,
    seed, split_evenly, stamp,
};
use tokio::sync::{Semaphore, mpsc, watch};

/// Resolves once the system acknowledged every record of one publish call.
pub type Ack = Pin<Box<dyn Future<Output = anyhow::Result<()>> + Send>>;

/// Sends records to a system.
pub trait Publisher: Send + Sync + 'static {
    /// Sends one batch of values to a partition of a topic. Returns once they are
    /// handed to the connection; the [`Ack`] resolves once they are acknowledged.
    fn publish(
        &self,
        topic: &str,
        partition: u32,
        values: Vec<Bytes>,
    ) -> impl Future<Output = anyhow::Result<Ack>> + Send;
}

/// Reads the values of every partition of a topic, in any interleaving.
pub trait Source: Send + 'static {
    /// The values that arrived next; empty when none arrived within a short wait
    /// (about 100 ms), so callers can check their own deadlines between calls.
    fn next_batch(&mut self) -> impl Future<Output = anyhow::Result<Vec<Bytes>>> + Send;
}

/// The workload, the same numbers `sluice perf` is given.
#[derive(Debug, Clone)]
pub struct LoadShape {
    pub topic: String,
    pub partitions: u32,
    pub record_size: usize,
    /// Records per publish call at full speed (one at a fixed rate: no batching
    /// delay, which favours the peer's latency).
    pub batch_records: u64,
    /// Unacknowledged records one producer may have outstanding.
    pub window_records: u64,
    pub duration: Duration,
    /// Sending before `duration` whose records count in no figure.
    pub warmup: Duration,
    /// Records to send over all producers, if fewer than the duration allows.
    pub records: Option<u64>,
    /// Records per second over all producers; `None` is as fast as the window allows.
    pub rate: Option<f64>,
}

/// Runs one sending loop per publisher for the shape's warm-up and duration and
/// reports like `sluice perf produce`. With `stamp_base` (then also the start), each
/// value carries its send time (ns since that instant) in its first 8 bytes, for
/// [`end_to_end`].
pub async fn produce<P: Publisher>(
    publishers: Vec<P>,
    shape: LoadShape,
    stamp_base: Option<Instant>,
) -> anyhow::Result<Report> {
    let value = payload(shape.record_size, &mut SplitMix64::new(seed()));
    let producers = publishers.len().max(1) as u32;
    let rate = shape.rate.map(|r| r / f64::from(producers));
    let shape = Arc::new(shape);
    let start = stamp_base.unwrap_or_else(Instant::now);
    let measure_from = start + shape.warmup;
    let mut tasks = Vec::new();
    let shares: Vec<Option<u64>> = match shape.records {
        Some(n) => split_evenly(n, producers).into_iter().map(Some).collect(),
        None => vec![None; producers as usize],
    };
    for ((i, publisher), limit) in publishers.into_iter().enumerate().zip(shares) {
        let sender = SendLoop {
            limit,
            publisher,
            shape: shape.clone(),
            value: value.clone(),
            pacer: Pacer::new(start, rate),
            deadline: measure_from + shape.duration,
            measure_from,
            first_partition: i as u32 % shape.partitions,
            stamp_base,
        };
        tasks.push(tokio::spawn(sender.run()));
    }
    let mut total = Tally::default();
    for task in tasks {
        total.merge(task.await.context("a producer task failed")?);
    }
    let elapsed = measure_from.elapsed();
    Ok(Report::Produce(
        total.into_report(shape.topic.clone(), elapsed),
    ))
}

/// One producer: publishes batches round-robin over the partitions while its window
/// has room; a collector task awaits the acknowledgements and frees the window.
struct SendLoop<P> {
    publisher: P,
    shape: Arc<LoadShape>,
    value: Bytes,
    pacer: Pacer,
    deadline: Instant,
    measure_from: Instant,
    /// Records this producer sends at most.
    limit: Option<u64>,
    first_partition: u32,
    stamp_base: Option<Instant>,
}

type InFlight = (Instant, u64, Ack);

impl<P: Publisher> SendLoop<P> {
    async fn run(mut self) -> Tally {
        let window = self.shape.window_records.max(self.shape.batch_records);
        let room = Arc::new(Semaphore::new(window as usize));
        let (tx, rx) = mpsc::unbounded_channel::<InFlight>();
        let record_bytes = self.value.len() as u64;
        let collector = tokio::spawn(collect(rx, room.clone(), record_bytes, self.measure_from));
        let per_call = if self.shape.rate.is_some() {
            1
        } else {
            self.shape.batch_records
        };
        let mut partition = self.first_partition;
        let mut send_error = None;
        let mut sent = 0u64;
        loop {
            let per_call = match self.limit {
                Some(limit) if sent >= limit => break,
                Some(limit) => per_call.min(limit - sent),
                None => per_call,
            };
            match self.pacer.next_due() {
                Some(due) if due >= self.deadline => break,
                Some(due) => tokio::time::sleep_until(due.into()).await,
                None if Instant::now() >= self.deadline => break,
                None => {}
            }
            let Ok(permit) = room.clone().acquire_many_owned(per_call as u32).await else {
                break;
            };
            // The collector hands the room back as acknowledgements arrive.
            permit.forget();
            let at = Instant::now();
            let values: Vec<Bytes> = (0..per_call)
                .map(|_| match self.stamp_base {
                    Some(base) => stamp(&self.value, at.duration_since(base).as_nanos() as u64),
                    None => self.value.clone(),
                })
                .collect();
            match self
                .publisher
                .publish(&self.shape.topic, partition, values)
                .await
            {
                Ok(ack) => {
                    sent += per_call;
                    if tx.send((at, per_call, ack)).is_err() {
                        break;
                    }
                }
                Err(e) => {
                    send_error = Some((per_call, e));
                    break;
                }
            }
            partition = (partition + 1) % self.shape.partitions;
        }
        drop(tx);
        let mut tally = match collector.await {
            Ok(tally) => tally,
            Err(e) => {
                let mut t = Tally::default();
                t.fail(0, anyhow::anyhow!("the ack collector failed: {e}"));
                t
            }
        };
        if let Some((records, e)) = send_error {
            tally.fail(records, e.context("cannot publish"));
        }
        tally
    }
}

/// Awaits acknowledgements in any order, records their latency (one sample per
/// record, as `sluice perf` does; none for the warm-up's) and returns their room to
/// the window.
async fn collect(
    mut rx: mpsc::UnboundedReceiver<InFlight>,
    room: Arc<Semaphore>,
    record_bytes: u64,
    measure_from: Instant,
) -> Tally {
    let mut tally = Tally::default();
    let mut pending = FuturesUnordered::new();
    let mut open = true;
    loop {
        tokio::select! {
            item = rx.recv(), if open => match item {
                Some((at, records, ack)) => pending.push(async move {
                    let result = ack.await;
                    (at, at.elapsed(), records, result)
                }),
                None => open = false,
            },
            Some((at, latency, records, result)) = pending.next(), if !pending.is_empty() => {
                room.add_permits(records as usize);
                match result {
                    Ok(()) if at < measure_from => {}
                    Ok(()) => tally.ack(records, record_bytes, latency.as_micros() as u64),
                    Err(e) => tally.fail(records, e),
                }
            }
            else => break,
        }
    }
    tally
}

/// Produces at the shape's rate while `reader` follows the topic, and reports both
/// the ack latency and the produce→consume latency, like `sluice perf end-to-end`.
pub async fn end_to_end<P: Publisher, S: Source>(
    publishers: Vec<P>,
    shape: LoadShape,
    reader: S,
) -> anyhow::Result<Report> {
    let base = Instant::now();
    let (stop_tx, stop_rx) = watch::channel(None);
    let measure_from = shape.warmup.as_nanos() as u64;
    let follower = tokio::spawn(follow(reader, stop_rx, measure_from, base));
    let produced = produce(publishers, shape, Some(base)).await;
    let acked = match &produced {
        Ok(Report::Produce(r)) => r.records,
        _ => 0,
    };
    let _ = stop_tx.send(Some((acked, Instant::now() + Duration::from_secs(10))));
    let (hist, consumed) = follower.await.context("the consumer task failed")??;
    produced?.into_end_to_end(consumed, &hist)
}

/// Reads until told how many records to expect and they all arrived, or the grace
/// deadline passes; records each one's age from the stamp in its first 8 bytes,
/// except for those stamped in the warm-up (before `measure_from`, ns since `base`).
async fn follow<S: Source>(
    mut reader: S,
    stop: watch::Receiver<Option<(u64, Instant)>>,
    measure_from: u64,
    base: Instant,
) -> anyhow::Result<(Histogram<u64>, u64)> {
    let mut hist = new_histogram();
    let mut received = 0u64;
    loop {
        if let Some((expected, deadline)) = *stop.borrow()
            && (received >= expected || Instant::now() >= deadline)
        {
            break;
        }
        let batch = reader.next_batch().await.context("cannot consume")?;
        let now = base.elapsed().as_nanos() as u64;
        for value in batch {
            let Some(sent) = read_stamp(&value) else {
                continue;
            };
            if sent > now || sent < measure_from {
                continue; // not stamped by this run, or in its warm-up
            }
            record_us(&mut hist, (now - sent) / 1000);
            received += 1;
        }
    }
    Ok((hist, received))
}

/// How long a replay waits for the next record before it gives up on the backlog.
const STALL: Duration = Duration::from_secs(30);

/// Reads `backlog` records from the start and reports like `sluice perf consume`.
pub async fn replay<S: Source>(topic: &str, mut reader: S, backlog: u64) -> anyhow::Result<Report> {
    let start = Instant::now();
    let mut last_record = start;
    let (mut records, mut bytes) = (0u64, 0u64);
    while records < backlog {
        let batch = reader.next_batch().await.context("cannot consume")?;
        if batch.is_empty() {
            if last_record.elapsed() > STALL {
                bail!(
                    "replay of '{topic}' stalled at {records} of {backlog} records: nothing for {} s",
                    STALL.as_secs()
                );
            }
            continue;
        }
        records += batch.len() as u64;
        bytes += batch.iter().map(|v| v.len() as u64).sum::<u64>();
        last_record = Instant::now();
    }
    Ok(Report::Consume(ConsumeReport {
        topic: topic.to_owned(),
        records,
        bytes,
        elapsed: last_record - start,
    }))
}
