//! The producer's background task: moves ready batches from the accumulator to the
//! partition leaders and turns the answers into delivery results.
//!
//! It keeps one `Produce` bidi stream per broker address, each with a reader task
//! that forwards replies (or the stream's failure) back here. Requests carry a
//! correlation id unique to this producer; a reply for an id no longer in flight
//! (it timed out) is ignored. A failed batch is retried — same bytes, to the
//! refreshed or hinted leader, after a jittered exponential back-off — while the
//! error is retriable, `retries` allows and `delivery_timeout` has not passed;
//! otherwise all its records fail with the error.
//!
//! An idempotent producer first gets its producer id from the controller (nothing
//! is sent until then). Its batches carry sequence numbers, so a resend is safe:
//! the leader answers a retry of a batch it already has with the original offset.
//! A sequence error is retried too: it means an earlier batch is being resent, or
//! the batch will be re-stamped under the partition's next epoch, which the
//! producer moves to when one of its batches fails for good.
//!
//! The task ends once the producer is closing and nothing is queued or in flight.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use sluice_proto::v1;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio_stream::wrappers::ReceiverStream;

use super::Shared;
use super::accumulator::{ProducerBatch, ProducerId, UNKNOWN_OFFSET};
use crate::backoff::Backoff;
use crate::connection::{unknown_partition, unknown_topic};
use crate::error::ClientError;
use crate::types::Acks;

/// Requests buffered per broker stream before the sender holds batches back.
const STREAM_QUEUE: usize = 1024;

struct BrokerStream {
    id: u64,
    tx: mpsc::Sender<v1::ProduceRequest>,
    task: JoinHandle<()>,
}

impl Drop for BrokerStream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

struct InFlight {
    batch: ProducerBatch,
    stream: u64,
    addr: String,
    deadline: Instant,
}

enum StreamEvent {
    Response { resp: v1::ProduceResponse },
    Closed { stream: u64, error: ClientError },
}

struct Sender {
    shared: Arc<Shared>,
    streams: HashMap<String, BrokerStream>,
    in_flight: HashMap<u64, InFlight>,
    next_correlation: u64,
    next_stream: u64,
    events_tx: mpsc::Sender<StreamEvent>,
    refreshing: Arc<AtomicBool>,
    /// An idempotent producer's id request is under way.
    initializing: Arc<AtomicBool>,
    backoff: Backoff,
}

pub(super) async fn run(shared: Arc<Shared>, done: watch::Sender<bool>) {
    let (events_tx, mut events_rx) = mpsc::channel(STREAM_QUEUE);
    let backoff = Backoff::new(shared.config.retry_backoff, shared.config.retry_backoff_max);
    let mut sender = Sender {
        shared,
        streams: HashMap::new(),
        in_flight: HashMap::new(),
        next_correlation: 1,
        next_stream: 1,
        events_tx,
        refreshing: Arc::new(AtomicBool::new(false)),
        initializing: Arc::new(AtomicBool::new(false)),
        backoff,
    };
    loop {
        let now = Instant::now();
        // Here and not per record: a send reads the cache without the clock.
        sender.shared.conn.refresh_if_aged();
        sender.expire(now);
        let (ready, next_ready) = if sender.awaiting_producer_id() {
            sender.init_producer_id();
            (Vec::new(), None)
        } else {
            sender
                .shared
                .state()
                .acc
                .drain_ready(now, sender.shared.config.max_in_flight)
        };
        for batch in ready {
            sender.dispatch(batch, now);
        }
        let (idle, closing, oldest) = {
            let state = sender.shared.state();
            (
                state.acc.is_idle(),
                state.acc.is_closing(),
                state.acc.oldest_queued(),
            )
        };
        if closing && idle && sender.in_flight.is_empty() {
            break;
        }
        let mut wake_at = next_ready;
        for f in sender.in_flight.values() {
            wake_at = Some(wake_at.map_or(f.deadline, |w| w.min(f.deadline)));
        }
        if let Some(oldest) = oldest {
            // When the oldest queued batch passes the delivery timeout.
            let expiry = oldest + sender.shared.config.delivery_timeout;
            wake_at = Some(wake_at.map_or(expiry, |w| w.min(expiry)));
        }
        let sleep = async {
            match wake_at {
                Some(t) => tokio::time::sleep_until(t.into()).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = sender.shared.wake.notified() => {}
            ev = events_rx.recv() => {
                // `events_tx` lives in `sender`, so the channel never closes here.
                if let Some(ev) = ev {
                    sender.on_event(ev);
                    while let Ok(ev) = events_rx.try_recv() {
                        sender.on_event(ev);
                    }
                }
            }
            _ = sleep => {}
        }
    }
    sender.streams.clear();
    let _ = done.send(true);
}

impl Sender {
    fn awaiting_producer_id(&self) -> bool {
        self.shared.config.is_idempotent() && self.shared.state().acc.producer().is_none()
    }

    /// Starts asking the controller for a producer id unless a request is under way;
    /// it retries until it succeeds or the producer has closed with nothing left
    /// (queued batches meanwhile expire by `delivery_timeout`).
    fn init_producer_id(&self) {
        if self.initializing.swap(true, Ordering::AcqRel) {
            return;
        }
        let shared = self.shared.clone();
        let initializing = self.initializing.clone();
        let backoff = self.backoff;
        tokio::spawn(async move {
            let mut attempt = 0;
            loop {
                match shared.conn.init_producer_id().await {
                    Ok((id, epoch)) => {
                        tracing::debug!(producer_id = id, epoch, "idempotent producer id");
                        shared.state().acc.set_producer(ProducerId { id, epoch });
                        break;
                    }
                    Err(err) => {
                        tracing::warn!(%err, "cannot get a producer id yet; retrying");
                        let state = shared.state();
                        if state.acc.is_closing() && state.acc.is_idle() {
                            break;
                        }
                    }
                }
                tokio::time::sleep(backoff.delay(attempt)).await;
                attempt = attempt.saturating_add(1);
            }
            initializing.store(false, Ordering::Release);
            shared.wake.notify_one();
        });
    }

    fn dispatch(&mut self, mut batch: ProducerBatch, now: Instant) {
        let conn = &self.shared.conn;
        let metadata = conn.metadata();
        // The cache only loses a topic or partition when the cluster says so.
        let Some(topic) = metadata.topic(&batch.topic) else {
            let err = unknown_topic(&batch.topic);
            return self.finish(batch, Err(err));
        };
        let Some(partition) = topic.partition(batch.partition) else {
            let err = unknown_partition(&batch.topic, batch.partition, topic.partition_count());
            return self.finish(batch, Err(err));
        };
        let Some(leader) = partition.leader.clone() else {
            // No leader known (election, or a hint without one): refresh and wait.
            self.refresh_metadata();
            let retry_at = now + self.backoff.delay(batch.attempts);
            self.shared.state().acc.requeue(batch, retry_at);
            return;
        };
        let stream = self.stream(&leader.addr);
        let (stream_id, tx) = (stream.id, stream.tx.clone());
        let correlation_id = self.next_correlation;
        self.next_correlation += 1;
        let config = &self.shared.config;
        let request = v1::ProduceRequest {
            correlation_id,
            topic: batch.topic.to_string(),
            partition: batch.partition,
            acks: config.acks.to_proto() as i32,
            batch: batch.payload(),
            timeout_ms: u32::try_from(config.request_timeout.as_millis()).unwrap_or(u32::MAX),
        };
        match tx.try_send(request) {
            Ok(()) => {
                let deadline = now + config.request_timeout;
                self.in_flight.insert(
                    correlation_id,
                    InFlight {
                        batch,
                        stream: stream_id,
                        addr: leader.addr,
                        deadline,
                    },
                );
            }
            Err(mpsc::error::TrySendError::Full(_)) => {
                let retry_at = now + Duration::from_millis(1);
                self.shared.state().acc.requeue(batch, retry_at);
            }
            Err(mpsc::error::TrySendError::Closed(_)) => {
                // The stream task ended; its Closed event fails what was in flight.
                self.drop_stream(stream_id);
                self.shared.state().acc.requeue(batch, now);
            }
        }
    }

    /// The open stream to `addr`, opening one if needed.
    fn stream(&mut self, addr: &str) -> &BrokerStream {
        if !self.streams.contains_key(addr) {
            let id = self.next_stream;
            self.next_stream += 1;
            let (tx, rx) = mpsc::channel(STREAM_QUEUE);
            let task = tokio::spawn(stream_task(
                self.shared.conn.clone(),
                addr.to_owned(),
                id,
                rx,
                self.events_tx.clone(),
            ));
            self.streams
                .insert(addr.to_owned(), BrokerStream { id, tx, task });
        }
        &self.streams[addr]
    }

    fn drop_stream(&mut self, id: u64) {
        self.streams.retain(|_, s| s.id != id);
    }

    fn on_event(&mut self, ev: StreamEvent) {
        let now = Instant::now();
        match ev {
            StreamEvent::Response { resp } => {
                let Some(f) = self.in_flight.remove(&resp.correlation_id) else {
                    tracing::debug!(
                        correlation_id = resp.correlation_id,
                        "reply for a request no longer in flight"
                    );
                    return;
                };
                match ClientError::from_proto(resp.error) {
                    None => {
                        let base = if self.shared.config.acks == Acks::None {
                            UNKNOWN_OFFSET
                        } else {
                            resp.base_offset
                        };
                        self.finish(f.batch, Ok(base));
                    }
                    Some(err) => self.on_failure(f.batch, err, now),
                }
            }
            StreamEvent::Closed { stream, error } => self.fail_stream(stream, error, now),
        }
    }

    /// Everything in flight on a stream failed with `error`; the stream is gone.
    fn fail_stream(&mut self, stream: u64, error: ClientError, now: Instant) {
        self.drop_stream(stream);
        let ids: Vec<u64> = self
            .in_flight
            .iter()
            .filter(|(_, f)| f.stream == stream)
            .map(|(id, _)| *id)
            .collect();
        let mut failed: Vec<ProducerBatch> = ids
            .into_iter()
            .filter_map(|id| self.in_flight.remove(&id))
            .map(|f| f.batch)
            .collect();
        failed.sort_by_key(|b| b.id);
        for batch in failed {
            self.on_failure(batch, error.clone(), now);
        }
    }

    fn on_failure(&mut self, mut batch: ProducerBatch, err: ClientError, now: Instant) {
        if matches!(err, ClientError::DuplicateSequence { .. }) {
            // Stored long ago; only its offset is forgotten.
            return self.finish(batch, Ok(UNKNOWN_OFFSET));
        }
        batch.attempts = batch.attempts.saturating_add(1);
        batch.maybe_stored |= !err.proves_not_stored();
        let sequence_retry = self.sequence_retry(&batch, &err);
        let config = &self.shared.config;
        let retriable = err.is_retriable() || err.is_stale_metadata() || sequence_retry;
        let expired = now.duration_since(batch.created) >= config.delivery_timeout;
        if batch.maybe_stored && self.shared.state().acc.stamped_in_abandoned_epoch(&batch) {
            return self.finish(batch, Err(stranded(err)));
        }
        if retriable && batch.attempts <= config.retries && !expired {
            tracing::debug!(
                topic = %batch.topic,
                partition = batch.partition,
                attempt = batch.attempts,
                %err,
                "retrying batch"
            );
            let hint = self
                .shared
                .conn
                .apply_hint(Some((&batch.topic, batch.partition)), &err);
            if hint.is_none() {
                self.refresh_metadata();
            }
            let retry_at = now + self.backoff.delay(batch.attempts - 1);
            self.shared.state().acc.requeue(batch, retry_at);
            self.shared.wake.notify_one();
            return;
        }
        self.abandon_epoch(&batch);
        let err = if retriable && expired {
            ClientError::Timeout {
                message: format!(
                    "record not acknowledged within delivery_timeout {:?} ({} attempt(s)); last error: {err}",
                    config.delivery_timeout, batch.attempts
                ),
            }
        } else {
            err
        };
        self.finish(batch, Err(err));
    }

    /// Whether a sequence error can be cured by sending the batch again: out of
    /// order (an earlier batch is being resent), or stamped under an epoch the
    /// partition has left (it is re-stamped). A producer the partition forgot moves
    /// the partition to a new epoch first, as a batch failing for good does.
    fn sequence_retry(&self, batch: &ProducerBatch, err: &ClientError) -> bool {
        match err {
            ClientError::OutOfOrderSequence { .. } => true,
            ClientError::ProducerFenced { .. } => {
                self.shared.state().acc.stamped_in_abandoned_epoch(batch)
            }
            ClientError::UnknownProducer { .. } => {
                self.abandon_epoch(batch);
                true
            }
            _ => false,
        }
    }

    /// A stamped batch failed for good: its partition's sequence now has a gap, so
    /// the partition moves on to a new epoch. Queued retries that may already be
    /// stored under the old epoch fail with it (see [`stranded`]).
    fn abandon_epoch(&self, batch: &ProducerBatch) {
        let stranded_batches = {
            let acc = &mut self.shared.state().acc;
            match (batch.stamp, acc.epoch_of(&batch.topic, batch.partition)) {
                (Some((e, _)), Some(c)) if e == c => acc.bump_epoch(&batch.topic, batch.partition),
                _ => return,
            }
        };
        if stranded_batches.is_empty() {
            return;
        }
        for b in stranded_batches {
            b.complete(Err(stranded(ClientError::Timeout {
                message: "an earlier batch of the partition failed for good".into(),
            })));
        }
        self.shared.completed.notify_waiters();
    }

    /// Completes a batch for good.
    fn finish(&mut self, batch: ProducerBatch, result: crate::Result<u64>) {
        // Outcomes first: a flush that sees the batch complete finds its records'
        // futures resolved and callbacks run.
        let (topic, partition, id) = (batch.topic.clone(), batch.partition, batch.id);
        batch.complete(result);
        self.shared.state().acc.complete(&topic, partition, id);
        self.shared.completed.notify_waiters();
    }

    /// Fails in-flight requests past their deadline (and their stream, which may be
    /// stuck), and queued batches past the delivery timeout.
    fn expire(&mut self, now: Instant) {
        let late: Vec<(u64, String)> = self
            .in_flight
            .values()
            .filter(|f| f.deadline <= now)
            .map(|f| (f.stream, f.addr.clone()))
            .collect();
        for (stream, addr) in late {
            let timeout = self.shared.config.request_timeout;
            self.fail_stream(
                stream,
                ClientError::Timeout {
                    message: format!("{addr} did not answer a produce request within {timeout:?}"),
                },
                now,
            );
        }
        let delivery = self.shared.config.delivery_timeout;
        let Some(cutoff) = now.checked_sub(delivery) else {
            return;
        };
        let expired = self.shared.state().acc.expire(cutoff);
        if expired.is_empty() {
            return;
        }
        for batch in expired {
            self.abandon_epoch(&batch);
            let n = batch.len();
            batch.complete(Err(ClientError::Timeout {
                message: format!(
                    "{n} record(s) not sent within delivery_timeout {delivery:?}: no leader could be reached"
                ),
            }));
        }
        self.shared.completed.notify_waiters();
    }

    /// Starts a background metadata refresh unless one is running.
    fn refresh_metadata(&self) {
        if self.refreshing.swap(true, Ordering::AcqRel) {
            return;
        }
        let refreshing = self.refreshing.clone();
        let shared = self.shared.clone();
        tokio::spawn(async move {
            if let Err(err) = shared.conn.refresh_metadata().await {
                tracing::debug!(%err, "producer metadata refresh failed");
            }
            refreshing.store(false, Ordering::Release);
            shared.wake.notify_one();
        });
    }
}

/// Runs one broker's `Produce` stream: sends what arrives on `rx`, forwards replies,
/// and reports how the stream ended.
async fn stream_task(
    conn: crate::Connection,
    addr: String,
    id: u64,
    rx: mpsc::Receiver<v1::ProduceRequest>,
    events: mpsc::Sender<StreamEvent>,
) {
    let result = async {
        let mut client = conn.client(&addr)?;
        let mut replies = client
            .produce(ReceiverStream::new(rx))
            .await
            .map_err(|s| ClientError::from_status(&addr, &s))?
            .into_inner();
        loop {
            match replies.message().await {
                Ok(Some(resp)) => {
                    if events.send(StreamEvent::Response { resp }).await.is_err() {
                        return Ok(());
                    }
                }
                Ok(None) => {
                    return Err(ClientError::Transport {
                        addr: addr.clone(),
                        message: "the broker closed the produce stream".into(),
                    });
                }
                Err(status) => return Err(ClientError::from_status(&addr, &status)),
            }
        }
    }
    .await;
    if let Err(error) = result {
        let _ = events.send(StreamEvent::Closed { stream: id, error }).await;
    }
}

/// The error for a batch that may be stored under an epoch its partition has left. It
/// cannot be retried without risking a second copy, so it fails as a timeout does:
/// the records may or may not be in the log.
fn stranded(last: ClientError) -> ClientError {
    ClientError::Timeout {
        message: format!(
            "outcome unknown: the batch may be stored, and its partition moved to a new producer epoch after another batch failed for good, so it is not resent; last error: {last}"
        ),
    }
}
