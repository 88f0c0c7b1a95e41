//! Produce: a bidirectional stream of batches in, acknowledgements out.
//!
//! A client keeps many requests in flight on one stream. Each request is checked on
//! arrival (partition known and hosted, batch within `max.message.bytes`, CRC and
//! structure valid), then handed to its partition's lane. Lanes keep requests for one
//! partition in arrival order, so a client's batches land in the order it sent them;
//! different partitions proceed independently.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use sluice_proto::batch::Batch;
use sluice_proto::v1::{self, ErrorCode};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Status, Streaming};

use futures::StreamExt;
use futures::stream::FuturesOrdered;

use super::errors::{self, error};
use crate::metadata::state::is_internal_topic;
use crate::node::Node;
use crate::partition::Partition;
use crate::raft::{Acks, ReplicaError};

/// Replies buffered per stream before the client must read some.
const REPLY_BUFFER: usize = 1024;
/// Requests queued per partition lane before the stream stops reading.
const LANE_DEPTH: usize = 256;
/// Batches per partition lane submitted to Raft and not yet acknowledged.
const LANE_IN_FLIGHT: usize = 64;
/// A produce's deadline when the request names none.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

struct Job {
    correlation_id: u64,
    batch: Bytes,
    acks: Acks,
    timeout: Duration,
}

type Reply = Result<v1::ProduceResponse, Status>;

/// A partition's lane on one stream, and the hosted replica it writes to.
struct Lane {
    partition: Arc<Partition>,
    jobs: mpsc::Sender<Job>,
}

pub fn serve(
    node: Arc<Node>,
    mut requests: Streaming<v1::ProduceRequest>,
) -> ReceiverStream<Reply> {
    let (replies, out) = mpsc::channel(REPLY_BUFFER);
    tokio::spawn(async move {
        let mut lanes: HashMap<(String, u32), Lane> = HashMap::new();
        loop {
            let req = match requests.message().await {
                Ok(Some(req)) => req,
                Ok(None) => break,
                Err(status) => {
                    tracing::debug!(%status, "produce stream ended by the client");
                    break;
                }
            };
            let correlation_id = req.correlation_id;
            match admit(&node, req) {
                Err(e) => {
                    if replies.send(Ok(failure(correlation_id, e))).await.is_err() {
                        break;
                    }
                }
                Ok((partition, job)) => {
                    let key = (partition.topic.clone(), partition.partition);
                    let fire_and_forget = job.acks == Acks::None;
                    // A replica started again (see `PartitionManager::revive`) gets a
                    // new lane; the old one answers what it holds and ends.
                    let lane = match lanes.get(&key) {
                        Some(lane) if Arc::ptr_eq(&lane.partition, &partition) => lane,
                        _ => {
                            let jobs = spawn_lane(partition.clone(), replies.clone());
                            lanes.insert(key.clone(), Lane { partition, jobs });
                            &lanes[&key]
                        }
                    };
                    if lane.jobs.send(job).await.is_err() {
                        break;
                    }
                    // acks=none is answered on receipt, without an offset.
                    if fire_and_forget {
                        let reply = v1::ProduceResponse {
                            correlation_id,
                            base_offset: 0,
                            error: None,
                            duplicate: false,
                        };
                        if replies.send(Ok(reply)).await.is_err() {
                            break;
                        }
                    }
                }
            }
        }
    });
    ReceiverStream::new(out)
}

/// Checks a request and turns it into a job for its partition's lane.
fn admit(node: &Node, req: v1::ProduceRequest) -> Result<(Arc<Partition>, Job), v1::Error> {
    let acks = match v1::Acks::try_from(req.acks) {
        Ok(v1::Acks::All) => Acks::All,
        Ok(v1::Acks::Leader) => Acks::Leader,
        Ok(v1::Acks::None) => Acks::None,
        Err(_) => {
            return Err(error(
                ErrorCode::InvalidRequest,
                format!("unknown acks value {}: use all, leader or none", req.acks),
            ));
        }
    };
    if is_internal_topic(&req.topic) {
        return Err(errors::reserved_topic(&req.topic, "written to"));
    }
    let partition = node.local_partition(&req.topic, req.partition)?;
    let max = partition.config.max_message_bytes;
    if req.batch.len() as u64 > max {
        return Err(error(
            ErrorCode::BatchTooLarge,
            format!(
                "batch of {} bytes exceeds the topic's max.message.bytes of {max}: send smaller batches",
                req.batch.len()
            ),
        ));
    }
    Batch::verify(&req.batch).map_err(|e| errors::from_batch(&e))?;
    let timeout = match req.timeout_ms {
        0 => DEFAULT_TIMEOUT,
        ms => Duration::from_millis(u64::from(ms)),
    };
    Ok((
        partition,
        Job {
            correlation_id: req.correlation_id,
            batch: req.batch,
            acks,
            timeout,
        },
    ))
}

/// A partition's lane: submits jobs to Raft strictly in arrival order, keeps up to
/// [`LANE_IN_FLIGHT`] of them awaiting acknowledgement, and replies in order.
fn spawn_lane(partition: Arc<Partition>, replies: mpsc::Sender<Reply>) -> mpsc::Sender<Job> {
    let (tx, mut jobs) = mpsc::channel::<Job>(LANE_DEPTH);
    tokio::spawn(async move {
        let mut in_flight = FuturesOrdered::new();
        let mut open = true;
        while open || !in_flight.is_empty() {
            tokio::select! {
                job = jobs.recv(), if open && in_flight.len() < LANE_IN_FLIGHT => {
                    let Some(job) = job else {
                        open = false;
                        continue;
                    };
                    let submitted = partition.replica.submit(job.batch, job.acks).await;
                    let partition = partition.clone();
                    in_flight.push_back(async move {
                        let written = match submitted {
                            Ok(pending) => tokio::time::timeout(job.timeout, partition.replica.complete(pending))
                                .await
                                .unwrap_or(Err(ReplicaError::Timeout(job.timeout))),
                            Err(e) => Err(e),
                        };
                        (job.correlation_id, job.acks, written)
                    });
                }
                Some((correlation_id, acks, written)) = in_flight.next(), if !in_flight.is_empty() => {
                    if acks == Acks::None {
                        continue;
                    }
                    let reply = match written {
                        Ok(w) => v1::ProduceResponse {
                            correlation_id,
                            base_offset: w.base_offset.unwrap_or_default(),
                            error: None,
                            duplicate: w.duplicate,
                        },
                        Err(e) => failure(correlation_id, errors::from_replica(&e)),
                    };
                    if replies.send(Ok(reply)).await.is_err() {
                        return;
                    }
                }
            }
        }
    });
    tx
}

fn failure(correlation_id: u64, error: v1::Error) -> v1::ProduceResponse {
    v1::ProduceResponse {
        correlation_id,
        base_offset: 0,
        error: Some(error),
        duplicate: false,
    }
}
