//! The `sluice.v1.Sluice` gRPC service: topics, metadata, produce, fetch, offsets.
//!
//! Handlers validate everything a client sends before it reaches a partition (names,
//! partition numbers, batch size and CRC) and answer with typed errors; nothing a
//! client sends can panic the broker. Produce and fetch live in their own modules.

use std::collections::BTreeMap;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use futures::Stream;
use sluice_proto::batch::Batch;
use sluice_proto::v1::{self, ErrorCode, list_offsets_request::Spec, sluice_server::Sluice};
use tonic::{Request, Response, Status, Streaming};

use super::errors;
use super::peers::{FORWARDED, Peers};
use super::{fetch, produce};
use crate::metadata::MetadataCommand;
use crate::metadata::state::is_internal_topic;
use crate::node::Node;

/// How long topic creation waits for this broker's new partitions to elect leaders.
const CREATE_WAIT: Duration = Duration::from_secs(5);

pub struct ClientApi {
    node: Arc<OnceLock<Arc<Node>>>,
    peers: Arc<Peers>,
}

impl ClientApi {
    /// Serves once `node` is set; until then every call gets `UNAVAILABLE`. Asks
    /// other brokers through `peers`.
    pub fn new(node: Arc<OnceLock<Arc<Node>>>, peers: Peers) -> Self {
        Self {
            node,
            peers: Arc::new(peers),
        }
    }

    fn node(&self) -> Result<Arc<Node>, Status> {
        self.node
            .get()
            .cloned()
            .ok_or_else(|| Status::unavailable("the broker is starting; retry shortly"))
    }
}

impl ClientApi {
    /// Waits until every partition of `topic` has a leader, here or (as the brokers
    /// hosting them say) elsewhere, so a client can produce as soon as a create returns.
    async fn wait_for_leaders(&self, node: &Node, topic: &str, timeout: Duration) {
        let deadline = tokio::time::Instant::now() + timeout;
        node.wait_for_local_leaders(topic, timeout).await;
        loop {
            let state = node.controller.state();
            let remote: Vec<u32> = state
                .topic(topic)
                .map(|t| t.partitions.len() as u32)
                .map(|n| {
                    (0..n)
                        .filter(|&p| node.partitions.get(topic, p).is_none())
                        .collect()
                })
                .unwrap_or_default();
            if remote.is_empty() {
                return;
            }
            let found = self
                .peers
                .describe(&state, node.node_id, topic, &remote)
                .await;
            if remote.iter().all(|p| found.contains_key(p))
                || tokio::time::Instant::now() >= deadline
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Fills in the leaders of partitions not hosted here, from brokers hosting them.
    async fn fill_remote_leaders(&self, node: &Node, topics: &mut [v1::TopicMetadata]) {
        let state = node.controller.state();
        let asks = topics.iter().filter_map(|t| {
            let remote: Vec<u32> = t
                .partitions
                .iter()
                .filter(|p| node.partitions.get(&t.name, p.partition).is_none())
                .map(|p| p.partition)
                .collect();
            (!remote.is_empty()).then(|| {
                let (state, name) = (state.clone(), t.name.clone());
                async move {
                    let found = self
                        .peers
                        .describe(&state, node.node_id, &name, &remote)
                        .await;
                    (name, found)
                }
            })
        });
        let found: BTreeMap<String, _> =
            futures::future::join_all(asks).await.into_iter().collect();
        for t in topics.iter_mut() {
            let Some(found) = found.get(&t.name) else {
                continue;
            };
            for p in t.partitions.iter_mut() {
                if let Some(d) = found.get(&p.partition) {
                    p.leader = d.leader;
                }
            }
        }
    }
}

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

#[tonic::async_trait]
impl Sluice for ClientApi {
    async fn create_topic(
        &self,
        request: Request<v1::CreateTopicRequest>,
    ) -> Result<Response<v1::CreateTopicResponse>, Status> {
        let node = self.node()?;
        let req = request.into_inner();
        if is_internal_topic(&req.name) {
            let error = Some(errors::reserved_topic(&req.name, "created"));
            return Ok(Response::new(v1::CreateTopicResponse { error }));
        }
        let state = node.controller.state();
        let replication_factor = match req.replication_factor {
            0 => node
                .default_replication_factor
                .min(state.brokers.len() as u32)
                .max(1),
            rf => rf,
        };
        let cmd = MetadataCommand::CreateTopic {
            name: req.name.clone(),
            partitions: req.partitions,
            replication_factor,
            configs: req.configs.into_iter().collect::<BTreeMap<_, _>>(),
        };
        let error = match node.controller.propose(cmd).await {
            Ok(()) => {
                self.wait_for_leaders(&node, &req.name, CREATE_WAIT).await;
                None
            }
            Err(e) => Some(errors::from_controller(&e)),
        };
        Ok(Response::new(v1::CreateTopicResponse { error }))
    }

    async fn delete_topic(
        &self,
        request: Request<v1::DeleteTopicRequest>,
    ) -> Result<Response<v1::DeleteTopicResponse>, Status> {
        let node = self.node()?;
        let name = request.into_inner().name;
        if is_internal_topic(&name) {
            let error = Some(errors::reserved_topic(&name, "deleted"));
            return Ok(Response::new(v1::DeleteTopicResponse { error }));
        }
        let error = node
            .controller
            .propose(MetadataCommand::DeleteTopic { name })
            .await
            .err()
            .map(|e| errors::from_controller(&e));
        Ok(Response::new(v1::DeleteTopicResponse { error }))
    }

    async fn list_topics(
        &self,
        request: Request<v1::ListTopicsRequest>,
    ) -> Result<Response<v1::ListTopicsResponse>, Status> {
        let node = self.node()?;
        let include_internal = request.into_inner().include_internal;
        let state = node.controller.state();
        let topics = state
            .topics
            .values()
            .filter(|t| include_internal || !is_internal_topic(&t.name))
            .map(|t| v1::TopicSummary {
                name: t.name.clone(),
                partitions: t.partitions.len() as u32,
                replication_factor: t.replication_factor,
            })
            .collect();
        Ok(Response::new(v1::ListTopicsResponse {
            topics,
            error: None,
        }))
    }

    async fn describe_topic(
        &self,
        request: Request<v1::DescribeTopicRequest>,
    ) -> Result<Response<v1::DescribeTopicResponse>, Status> {
        let node = self.node()?;
        let forwarded = request.metadata().contains_key(FORWARDED);
        let name = request.into_inner().name;
        let state = node.controller.state();
        let Ok(topic) = state.topic(&name) else {
            return Ok(Response::new(v1::DescribeTopicResponse {
                name: name.clone(),
                error: Some(errors::unknown_topic(&name)),
                ..Default::default()
            }));
        };
        let mut partitions: Vec<v1::PartitionDescription> = topic
            .partitions
            .iter()
            .enumerate()
            .map(|(i, meta)| {
                let mut d = v1::PartitionDescription {
                    partition: i as u32,
                    replicas: meta.replicas.clone(),
                    ..Default::default()
                };
                if let Some(p) = node.partitions.get(&name, i as u32) {
                    let r = &p.replica;
                    d.leader = r.leader().unwrap_or(0);
                    d.in_sync_replicas = r.in_sync_replicas();
                    d.log_start_offset = r.log().start_offset();
                    d.high_watermark = r.high_watermark();
                    d.log_end_offset = r.log().next_offset();
                }
                d
            })
            .collect();
        // Partitions without a replica here: ask brokers that have one.
        let remote: Vec<u32> = (0..partitions.len() as u32)
            .filter(|&p| node.partitions.get(&name, p).is_none())
            .collect();
        if !forwarded && !remote.is_empty() {
            let found = self
                .peers
                .describe(&state, node.node_id, &name, &remote)
                .await;
            for d in partitions.iter_mut() {
                if let Some(r) = found.get(&d.partition) {
                    *d = v1::PartitionDescription {
                        replicas: std::mem::take(&mut d.replicas),
                        ..r.clone()
                    };
                }
            }
        }
        Ok(Response::new(v1::DescribeTopicResponse {
            name: topic.name.clone(),
            replication_factor: topic.replication_factor,
            configs: topic.configs.clone().into_iter().collect(),
            partitions,
            error: None,
        }))
    }

    async fn add_partitions(
        &self,
        request: Request<v1::AddPartitionsRequest>,
    ) -> Result<Response<v1::AddPartitionsResponse>, Status> {
        let node = self.node()?;
        let req = request.into_inner();
        if is_internal_topic(&req.name) {
            let error = Some(errors::reserved_topic(&req.name, "altered"));
            return Ok(Response::new(v1::AddPartitionsResponse { error }));
        }
        let cmd = MetadataCommand::AddPartitions {
            name: req.name.clone(),
            partitions: req.partitions,
        };
        let error = match node.controller.propose(cmd).await {
            Ok(()) => {
                self.wait_for_leaders(&node, &req.name, CREATE_WAIT).await;
                None
            }
            Err(e) => Some(errors::from_controller(&e)),
        };
        Ok(Response::new(v1::AddPartitionsResponse { error }))
    }

    async fn metadata(
        &self,
        request: Request<v1::MetadataRequest>,
    ) -> Result<Response<v1::MetadataResponse>, Status> {
        let node = self.node()?;
        let forwarded = request.metadata().contains_key(FORWARDED);
        let wanted = request.into_inner().topics;
        let state = node.controller.state();
        let names: Vec<String> = if wanted.is_empty() {
            state.topics.keys().cloned().collect()
        } else {
            wanted
        };
        let mut topics: Vec<v1::TopicMetadata> = names
            .into_iter()
            .map(|name| match state.topic(&name) {
                Ok(t) => v1::TopicMetadata {
                    name: name.clone(),
                    partitions: t
                        .partitions
                        .iter()
                        .enumerate()
                        .map(|(i, meta)| v1::PartitionMetadata {
                            partition: i as u32,
                            leader: node
                                .partitions
                                .get(&name, i as u32)
                                .and_then(|p| p.replica.leader())
                                .unwrap_or(0),
                            replicas: meta.replicas.clone(),
                        })
                        .collect(),
                    error: None,
                },
                Err(_) => v1::TopicMetadata {
                    error: Some(errors::unknown_topic(&name)),
                    name,
                    partitions: Vec::new(),
                },
            })
            .collect();
        if !forwarded {
            self.fill_remote_leaders(&node, &mut topics).await;
        }
        Ok(Response::new(v1::MetadataResponse {
            brokers: state
                .brokers
                .values()
                .map(|b| v1::Broker {
                    id: b.id,
                    addr: b.addr.clone(),
                })
                .collect(),
            controller: node.controller.leader().unwrap_or(0),
            topics,
            error: None,
        }))
    }

    type ProduceStream = BoxStream<v1::ProduceResponse>;

    async fn produce(
        &self,
        request: Request<Streaming<v1::ProduceRequest>>,
    ) -> Result<Response<Self::ProduceStream>, Status> {
        let node = self.node()?;
        let replies = produce::serve(node, request.into_inner());
        Ok(Response::new(Box::pin(replies)))
    }

    type FetchStream = BoxStream<v1::FetchResponse>;

    async fn fetch(
        &self,
        request: Request<v1::FetchRequest>,
    ) -> Result<Response<Self::FetchStream>, Status> {
        let node = self.node()?;
        let stream = fetch::serve(node, request.into_inner());
        Ok(Response::new(Box::pin(stream)))
    }

    async fn list_offsets(
        &self,
        request: Request<v1::ListOffsetsRequest>,
    ) -> Result<Response<v1::ListOffsetsResponse>, Status> {
        let node = self.node()?;
        let req = request.into_inner();
        let reply = |offset, error| Ok(Response::new(v1::ListOffsetsResponse { offset, error }));
        let partition = match node.local_partition(&req.topic, req.partition) {
            Ok(p) => p,
            Err(e) => return reply(0, Some(e)),
        };
        let r = &partition.replica;
        let at_time = match req.spec {
            Some(Spec::Earliest(_)) => return reply(r.log().start_offset(), None),
            None | Some(Spec::Latest(_)) => None,
            Some(Spec::Timestamp(ts)) => Some(ts),
        };
        let hw = match r.settled_high_watermark() {
            Ok(hw) => hw,
            Err(e) => return reply(0, Some(errors::from_replica(&e))),
        };
        let Some(ts) = at_time else {
            return reply(hw, None);
        };
        match r.log().batch_at_time(ts) {
            Err(e) => reply(0, Some(errors::from_log(&e))),
            Ok(None) => reply(hw, None),
            Ok(Some(batch)) => {
                let offset = first_offset_at_or_after(batch, ts).unwrap_or(hw);
                reply(offset.min(hw), None)
            }
        }
    }

    async fn init_producer_id(
        &self,
        _request: Request<v1::InitProducerIdRequest>,
    ) -> Result<Response<v1::InitProducerIdResponse>, Status> {
        let node = self.node()?;
        let reply = match node.controller.allocate_producer_id().await {
            Ok(id) => v1::InitProducerIdResponse {
                producer_id: id,
                producer_epoch: 0,
                error: None,
            },
            Err(e) => v1::InitProducerIdResponse {
                producer_id: -1,
                producer_epoch: -1,
                error: Some(errors::from_controller(&e)),
            },
        };
        Ok(Response::new(reply))
    }
}

/// The first record in `batch` stamped at or after `ts`: within a batch, timestamps
/// need not be ordered, so the batch's records are decoded.
fn first_offset_at_or_after(batch: bytes::Bytes, ts: i64) -> Option<u64> {
    let batch = Batch::decode(batch).ok()?;
    let next = batch.base_offset() as u64 + batch.header().offset_count();
    batch
        .records()
        .filter_map(Result::ok)
        .find(|r| r.timestamp >= ts)
        .map(|r| r.offset as u64)
        .or(Some(next))
}

/// Used by produce and fetch: an error for a request naming an unknown place.
pub(crate) fn not_found(node: &Node, topic: &str, partition: u32) -> v1::Error {
    let state = node.controller.state();
    match state.topic(topic) {
        Err(_) => errors::unknown_topic(topic),
        Ok(t) if partition as usize >= t.partitions.len() => {
            errors::unknown_partition(topic, partition, t.partitions.len())
        }
        Ok(t) => {
            let replicas = &t.partitions[partition as usize].replicas;
            let hint = replicas
                .first()
                .and_then(|id| state.brokers.get(id))
                .map(|b| v1::Broker {
                    id: b.id,
                    addr: b.addr.clone(),
                });
            v1::Error {
                code: ErrorCode::NotLeader as i32,
                message: format!(
                    "broker {} holds no replica of {topic}/{partition}; its replicas are on {replicas:?}",
                    node.node_id
                ),
                leader: hint,
            }
        }
    }
}
