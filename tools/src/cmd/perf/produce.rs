//! `perf produce` (and the producing half of `end-to-end`): producers sending to a
//! plan, each record's outcome recorded by its delivery callback. Records sent in the
//! warm-up are shown in progress but counted in no figure.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, anyhow};
use bytes::Bytes;
use sluice_client::{Connection, Producer, ProducerConfig, ProducerRecord, RecordMetadata};

use super::progress::{Counters, Lines, report_progress};
use super::*;
use crate::GlobalArgs;

/// What to send.
pub(super) struct Plan {
    pub(super) records: Option<u64>,
    pub(super) duration: Option<Duration>,
    pub(super) producers: u32,
    pub(super) rate: Option<f64>,
    /// Sending before `duration` whose records count in no figure.
    pub(super) warmup: Duration,
    /// Stamp the send time into each value (end-to-end), as nanoseconds since
    /// `base`, which is also where sending starts (default: now).
    pub(super) stamp: bool,
    pub(super) base: Option<Instant>,
    /// Shared with the progress line (and the end-to-end consumer).
    pub(super) counters: Arc<Counters>,
}

/// One producer's acknowledgements, recorded by its delivery callbacks (on the
/// producer's background task: no future per record to poll).
struct AckRecorder {
    counters: Arc<Counters>,
    /// Records sent before this only warm up: the progress line shows them, the
    /// report does not.
    measure_from: Instant,
    tally: std::sync::Mutex<Tally>,
    /// Records whose outcome has been recorded.
    done: AtomicU64,
    /// How many outcomes `finish` waits for (`u64::MAX` until it is called), so that
    /// only the last outcome wakes it, not every record.
    awaited: AtomicU64,
    progress: tokio::sync::Notify,
}

impl AckRecorder {
    fn new(counters: Arc<Counters>, measure_from: Instant) -> Self {
        Self {
            counters,
            measure_from,
            tally: std::sync::Mutex::default(),
            done: AtomicU64::new(0),
            awaited: AtomicU64::new(u64::MAX),
            progress: tokio::sync::Notify::new(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Tally> {
        self.tally.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records the outcome of a record of `bytes` sent at `at`.
    fn record(&self, at: Instant, bytes: u64, result: sluice_client::Result<RecordMetadata>) {
        let c = &self.counters;
        match result {
            Ok(_) => {
                let us = at.elapsed().as_micros() as u64;
                if at >= self.measure_from {
                    self.lock().ack(1, bytes, us);
                }
                c.acked.fetch_add(1, Ordering::Relaxed);
                c.bytes.fetch_add(bytes, Ordering::Relaxed);
                c.ack_sum_us.fetch_add(us, Ordering::Relaxed);
                c.ack_max_us.fetch_max(us, Ordering::Relaxed);
            }
            Err(e) => {
                c.failed.fetch_add(1, Ordering::Relaxed);
                self.lock().fail(1, e);
            }
        }
        // SeqCst pairs with `finish`: either it sees this count or this sees its target.
        let done = self.done.fetch_add(1, Ordering::SeqCst) + 1;
        if done >= self.awaited.load(Ordering::SeqCst) {
            self.progress.notify_waiters();
        }
    }

    /// Waits until `sent` outcomes have been recorded, then hands them over.
    async fn finish(&self, sent: u64) -> Tally {
        self.awaited.store(sent, Ordering::SeqCst);
        loop {
            let progress = self.progress.notified();
            tokio::pin!(progress);
            progress.as_mut().enable();
            if self.done.load(Ordering::SeqCst) >= sent {
                break;
            }
            progress.await;
        }
        std::mem::take(&mut *self.lock())
    }
}

pub(super) fn producer_config(o: &ProducerOpts, global: &GlobalArgs) -> ProducerConfig {
    let base = ProducerConfig::default();
    let batch_bytes = o.batch_bytes.map_or(base.batch_bytes, |b| b as usize);
    ProducerConfig {
        acks: o.acks,
        compression: o.compression,
        linger: o.linger_ms.map_or(base.linger, Duration::from_millis),
        batch_bytes,
        buffer_memory: base.buffer_memory.max(batch_bytes.saturating_mul(4)),
        request_timeout: global.timeout,
        ..base
    }
}

/// Runs the producers to the plan; `base` is the instant end-to-end stamps count
/// from. Returns the report (without end-to-end numbers).
pub(super) async fn produce(
    conn: &Connection,
    topic: &str,
    o: &ProducerOpts,
    plan: Plan,
    global: &GlobalArgs,
    lines: Lines,
) -> anyhow::Result<Report> {
    let config = producer_config(o, global);
    let counters = plan.counters.clone();
    let value = payload(o.record_size as usize, &mut SplitMix64::new(seed()));
    let start = plan.base.unwrap_or_else(Instant::now);
    let measure_from = start + plan.warmup;
    let deadline = plan.duration.map(|d| measure_from + d);
    let shares: Vec<Option<u64>> = match plan.records {
        Some(n) => split_evenly(n, plan.producers)
            .into_iter()
            .map(Some)
            .collect(),
        None => vec![None; plan.producers as usize],
    };
    let rate = plan.rate.map(|r| r / f64::from(plan.producers));
    let reporter = tokio::spawn(report_progress(
        counters.clone(),
        lines.clone(),
        start,
        measure_from,
        true,
    ));

    let mut tasks = Vec::new();
    for (i, share) in shares.into_iter().enumerate() {
        let producer = Producer::new(conn.clone(), config.clone())?;
        let recorder = Arc::new(AckRecorder::new(counters.clone(), measure_from));
        let sender = SendLoop {
            producer,
            topic: topic.into(),
            value: value.clone(),
            keys: o.keys,
            rng: SplitMix64::new(seed() ^ (i as u64).wrapping_mul(0x9E37_79B9)),
            pacer: Pacer::new(start, rate),
            limit: share,
            deadline,
            stamp: plan.stamp.then_some(start),
            recorder: recorder.clone(),
        };
        tasks.push((tokio::spawn(sender.run()), recorder));
    }
    let mut total = Tally::default();
    for (sender, recorder) in tasks {
        let (sent, result) = sender.await.context("a producer task failed")?;
        // Every record sent gets its callback: close() waited for each outcome.
        total.merge(recorder.finish(sent).await);
        if let Err(e) = result {
            total.first_error.get_or_insert(format!("{e:#}"));
        }
    }
    let elapsed = measure_from.elapsed();
    reporter.abort();
    Ok(Report::Produce(
        total.into_report(topic.to_owned(), elapsed),
    ))
}

/// One producer's sending loop.
struct SendLoop {
    producer: Producer,
    topic: Arc<str>,
    value: Bytes,
    keys: KeyMode,
    rng: SplitMix64,
    pacer: Pacer,
    limit: Option<u64>,
    deadline: Option<Instant>,
    stamp: Option<Instant>,
    recorder: Arc<AckRecorder>,
}

impl SendLoop {
    /// Sends until the plan says stop; returns how many records were handed to the
    /// producer (each gets its outcome recorded) and how sending ended.
    async fn run(mut self) -> (u64, anyhow::Result<()>) {
        let mut sent = 0u64;
        let result = loop {
            if self.limit.is_some_and(|n| sent >= n) {
                break Ok(());
            }
            // One clock read per record serves the deadline and the latency: at
            // hundreds of thousands of records a second, reads of the clock add up.
            let mut at = Instant::now();
            if let Some(due) = self.pacer.next_due() {
                if self.deadline.is_some_and(|d| due >= d) {
                    break Ok(());
                }
                if due > at {
                    tokio::time::sleep_until(due.into()).await;
                    at = Instant::now();
                }
            } else if self.deadline.is_some_and(|d| at >= d) {
                break Ok(());
            }
            let key = self.keys.key(sent, &mut self.rng);
            let bytes = (key.as_ref().map_or(0, Bytes::len) + self.value.len()) as u64;
            let value = match self.stamp {
                // The send instant, so the consumer leaves out exactly the warm-up
                // records the acknowledgements leave out.
                Some(base) => stamp(&self.value, at.duration_since(base).as_nanos() as u64),
                None => self.value.clone(),
            };
            let record = ProducerRecord {
                topic: self.topic.clone(),
                key,
                value: Some(value),
                ..ProducerRecord::default()
            };
            let recorder = self.recorder.clone();
            let sent_one = self
                .producer
                .send_with(record, move |result| recorder.record(at, bytes, result))
                .await;
            match sent_one {
                Ok(()) => sent += 1,
                Err(e) => break Err(anyhow!(e).context("cannot send")),
            }
        };
        // Send what lingers, and wait until the sender task has finished.
        let closed = self.producer.close().await.map_err(anyhow::Error::from);
        (sent, result.and(closed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stored() -> sluice_client::Result<RecordMetadata> {
        Ok(RecordMetadata {
            topic: "t".into(),
            partition: 0,
            offset: 0,
            timestamp: 0,
        })
    }

    #[tokio::test]
    async fn warm_up_records_show_in_progress_but_count_in_no_figure() {
        let counters = Arc::new(Counters::default());
        let start = Instant::now();
        let measure_from = start + Duration::from_millis(50);
        let recorder = AckRecorder::new(counters.clone(), measure_from);
        recorder.record(start, 10, stored());
        recorder.record(start, 10, Err(ClientError::Closed("test".into())));
        recorder.record(measure_from, 7, stored());
        let tally = recorder.finish(3).await;
        assert_eq!((tally.acked, tally.bytes), (1, 7));
        assert_eq!(tally.hist.len(), 1);
        // A failure counts whenever it happens: a warm-up must not hide errors.
        assert_eq!(tally.failed, 1);
        assert!(tally.first_error.is_some());
        assert_eq!(counters.acked.load(Ordering::Relaxed), 2);
        assert_eq!(counters.bytes.load(Ordering::Relaxed), 17);
    }

    #[tokio::test]
    async fn finish_waits_for_outcomes_recorded_after_it_was_called() {
        let recorder = Arc::new(AckRecorder::new(
            Arc::new(Counters::default()),
            Instant::now(),
        ));
        recorder.record(Instant::now(), 1, stored());
        let finishing = tokio::spawn({
            let recorder = recorder.clone();
            async move { recorder.finish(3).await }
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(
            !finishing.is_finished(),
            "finish returned with 1 of 3 outcomes"
        );
        recorder.record(Instant::now(), 1, stored());
        recorder.record(Instant::now(), 1, stored());
        let tally = tokio::time::timeout(Duration::from_secs(5), finishing)
            .await
            .expect("finish wakes on the last outcome")
            .expect("finish task");
        assert_eq!(tally.acked, 3);
    }
}
