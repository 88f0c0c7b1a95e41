//! An in-process mock of the `sluice.v1` service for client and CLI tests: a fake
//! cluster of one or more brokers sharing in-memory partition logs, with fault
//! injection (stale metadata, produce errors, withheld replies), and a group
//! coordinator for one consumer group whose assignment the test dictates. Shared by
//! `client/tests/mock_broker.rs` and `tools/tests/cli.rs` through `#[path]`.
#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::Stream;
use sluice_proto::batch::Batch;
use sluice_proto::batch::header::stamp_base_offset;
use sluice_proto::v1;
use sluice_proto::v1::group_coordinator_server::{GroupCoordinator, GroupCoordinatorServer};
use sluice_proto::v1::sluice_server::{Sluice, SluiceServer};
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::{ReceiverStream, TcpListenerStream};
use tonic::{Request, Response, Status, Streaming};

#[derive(Default)]
pub struct PartitionLog {
    /// The broker that really leads.
    pub leader: u64,
    /// The leader metadata reports (may be stale on purpose).
    pub advertised: u64,
    pub batches: Vec<Bytes>,
    pub next_offset: u64,
}

#[derive(Default)]
pub struct ClusterState {
    pub brokers: BTreeMap<u64, String>,
    pub controller: u64,
    pub advertised_controller: u64,
    pub topics: BTreeMap<String, Vec<PartitionLog>>,
    /// Errors to answer the next produce requests with, in order.
    pub produce_faults: VecDeque<v1::ErrorCode>,
    /// Answer no produce request (to fill the client's buffer).
    pub withhold_produce: bool,
    pub produce_requests: u64,
    /// Producer ids handed out so far (the next one is this number).
    pub producer_ids: i64,
    /// The consumer group every group request is about, whatever its id.
    pub group: MockGroup,
}

/// Offsets of one commit: (topic, partition, offset).
pub type CommitOffsets = Vec<(String, u32, u64)>;

/// A commit the mock answered.
#[derive(Debug, Clone)]
pub struct AnsweredCommit {
    pub offsets: CommitOffsets,
    /// The member epoch the commit carried.
    pub member_epoch: i32,
    pub at: Instant,
}

/// A consumer group as the mock coordinates it: every member is assigned `target`
/// (tests run one member), and commits take `commit_delay` to answer.
#[derive(Debug, Default)]
pub struct MockGroup {
    /// (topic, partition) the members may own; changing it revokes or assigns.
    pub target: BTreeSet<(String, u32)>,
    pub epoch: i32,
    /// What each member reported owning in its latest heartbeat.
    pub owned: BTreeMap<String, BTreeSet<(String, u32)>>,
    /// Every assignment sent in a heartbeat reply, and when.
    pub assignments: Vec<(BTreeSet<(String, u32)>, Instant)>,
    pub offsets: BTreeMap<(String, u32), u64>,
    pub commit_delay: Duration,
    /// Every commit answered, in order.
    pub commits: Vec<AnsweredCommit>,
    /// Answer the next heartbeat with UNKNOWN_MEMBER_ID (the member was removed).
    pub expel_next: bool,
}

fn from_wire(tps: &[v1::TopicPartitions]) -> BTreeSet<(String, u32)> {
    tps.iter()
        .flat_map(|t| t.partitions.iter().map(|p| (t.topic.clone(), *p)))
        .collect()
}

fn to_wire(tps: &BTreeSet<(String, u32)>) -> Vec<v1::TopicPartitions> {
    let mut out: BTreeMap<&str, Vec<u32>> = BTreeMap::new();
    for (t, p) in tps {
        out.entry(t).or_default().push(*p);
    }
    out.into_iter()
        .map(|(topic, partitions)| v1::TopicPartitions {
            topic: topic.to_string(),
            partitions,
        })
        .collect()
}

#[derive(Clone)]
pub struct Cluster {
    state: Arc<Mutex<ClusterState>>,
    /// Bumped on every append, for follow-mode fetches.
    appended: Arc<watch::Sender<u64>>,
}

impl Cluster {
    pub fn new() -> Self {
        Self {
            state: Arc::default(),
            appended: Arc::new(watch::channel(0).0),
        }
    }

    pub fn state(&self) -> std::sync::MutexGuard<'_, ClusterState> {
        self.state.lock().unwrap()
    }

    /// Starts a broker with this id on a free port.
    pub async fn start_broker(&self, id: u64) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        {
            let mut st = self.state();
            st.brokers.insert(id, addr.clone());
            if st.controller == 0 {
                st.controller = id;
                st.advertised_controller = id;
            }
        }
        let service = MockBroker {
            id,
            cluster: self.clone(),
        };
        let coordinator = MockBroker {
            id,
            cluster: self.clone(),
        };
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(SluiceServer::new(service))
                .add_service(GroupCoordinatorServer::new(coordinator))
                .serve_with_incoming(TcpListenerStream::new(listener)),
        );
        addr
    }

    pub fn records(
        &self,
        topic: &str,
        partition: usize,
    ) -> Vec<(u64, Option<Bytes>, Option<Bytes>)> {
        let st = self.state();
        let mut out = Vec::new();
        for b in &st.topics[topic][partition].batches {
            for r in Batch::decode(b.clone()).unwrap().records() {
                let r = r.unwrap();
                out.push((r.offset as u64, r.key, r.value));
            }
        }
        out
    }
}

struct MockBroker {
    id: u64,
    cluster: Cluster,
}

fn error(code: v1::ErrorCode, message: &str, leader: Option<(u64, String)>) -> Option<v1::Error> {
    Some(v1::Error {
        code: code as i32,
        message: message.into(),
        leader: leader.map(|(id, addr)| v1::Broker { id, addr }),
    })
}

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

impl MockBroker {
    fn not_controller(&self) -> Option<Option<v1::Error>> {
        let st = self.cluster.state();
        (st.controller != self.id).then(|| {
            let c = st.controller;
            error(
                v1::ErrorCode::NotController,
                &format!("broker {} is not the controller", self.id),
                Some((c, st.brokers[&c].clone())),
            )
        })
    }

    /// Checks that this broker leads the partition.
    fn lead_check(st: &ClusterState, me: u64, topic: &str, partition: u32) -> Option<v1::Error> {
        let Some(parts) = st.topics.get(topic) else {
            return error(
                v1::ErrorCode::UnknownTopic,
                &format!("no topic {topic}"),
                None,
            );
        };
        let Some(p) = parts.get(partition as usize) else {
            return error(v1::ErrorCode::UnknownPartition, "no partition", None);
        };
        if p.leader != me {
            return error(
                v1::ErrorCode::NotLeader,
                &format!("broker {me} does not lead {topic}/{partition}"),
                Some((p.leader, st.brokers[&p.leader].clone())),
            );
        }
        None
    }
}

#[tonic::async_trait]
impl Sluice for MockBroker {
    async fn create_topic(
        &self,
        req: Request<v1::CreateTopicRequest>,
    ) -> Result<Response<v1::CreateTopicResponse>, Status> {
        if let Some(error) = self.not_controller() {
            return Ok(Response::new(v1::CreateTopicResponse { error }));
        }
        let req = req.into_inner();
        let mut st = self.cluster.state();
        if st.topics.contains_key(&req.name) {
            return Ok(Response::new(v1::CreateTopicResponse {
                error: error(v1::ErrorCode::TopicAlreadyExists, "exists", None),
            }));
        }
        let leader = self.id;
        st.topics.insert(
            req.name,
            (0..req.partitions)
                .map(|_| PartitionLog {
                    leader,
                    advertised: leader,
                    ..Default::default()
                })
                .collect(),
        );
        Ok(Response::new(v1::CreateTopicResponse { error: None }))
    }

    async fn delete_topic(
        &self,
        req: Request<v1::DeleteTopicRequest>,
    ) -> Result<Response<v1::DeleteTopicResponse>, Status> {
        if let Some(error) = self.not_controller() {
            return Ok(Response::new(v1::DeleteTopicResponse { error }));
        }
        let removed = self.cluster.state().topics.remove(&req.into_inner().name);
        Ok(Response::new(v1::DeleteTopicResponse {
            error: if removed.is_some() {
                None
            } else {
                error(v1::ErrorCode::UnknownTopic, "no such topic", None)
            },
        }))
    }

    async fn list_topics(
        &self,
        _: Request<v1::ListTopicsRequest>,
    ) -> Result<Response<v1::ListTopicsResponse>, Status> {
        let st = self.cluster.state();
        Ok(Response::new(v1::ListTopicsResponse {
            topics: st
                .topics
                .iter()
                .map(|(name, parts)| v1::TopicSummary {
                    name: name.clone(),
                    partitions: parts.len() as u32,
                    replication_factor: 1,
                })
                .collect(),
            error: None,
        }))
    }

    async fn describe_topic(
        &self,
        req: Request<v1::DescribeTopicRequest>,
    ) -> Result<Response<v1::DescribeTopicResponse>, Status> {
        let name = req.into_inner().name;
        let st = self.cluster.state();
        let Some(parts) = st.topics.get(&name) else {
            return Ok(Response::new(v1::DescribeTopicResponse {
                error: error(
                    v1::ErrorCode::UnknownTopic,
                    &format!("topic '{name}' does not exist"),
                    None,
                ),
                ..Default::default()
            }));
        };
        Ok(Response::new(v1::DescribeTopicResponse {
            name: name.clone(),
            replication_factor: 1,
            configs: HashMap::new(),
            partitions: parts
                .iter()
                .enumerate()
                .map(|(i, p)| v1::PartitionDescription {
                    partition: i as u32,
                    leader: p.leader,
                    replicas: vec![p.leader],
                    in_sync_replicas: vec![p.leader],
                    log_start_offset: 0,
                    high_watermark: p.next_offset,
                    log_end_offset: p.next_offset,
                })
                .collect(),
            error: None,
        }))
    }

    async fn add_partitions(
        &self,
        req: Request<v1::AddPartitionsRequest>,
    ) -> Result<Response<v1::AddPartitionsResponse>, Status> {
        if let Some(error) = self.not_controller() {
            return Ok(Response::new(v1::AddPartitionsResponse { error }));
        }
        let req = req.into_inner();
        let mut st = self.cluster.state();
        let leader = self.id;
        let Some(parts) = st.topics.get_mut(&req.name) else {
            return Ok(Response::new(v1::AddPartitionsResponse {
                error: error(v1::ErrorCode::UnknownTopic, "no such topic", None),
            }));
        };
        if req.partitions as usize <= parts.len() {
            return Ok(Response::new(v1::AddPartitionsResponse {
                error: error(v1::ErrorCode::InvalidPartitions, "must grow", None),
            }));
        }
        parts.resize_with(req.partitions as usize, || PartitionLog {
            leader,
            advertised: leader,
            ..Default::default()
        });
        Ok(Response::new(v1::AddPartitionsResponse { error: None }))
    }

    async fn metadata(
        &self,
        _: Request<v1::MetadataRequest>,
    ) -> Result<Response<v1::MetadataResponse>, Status> {
        let st = self.cluster.state();
        Ok(Response::new(v1::MetadataResponse {
            brokers: st
                .brokers
                .iter()
                .map(|(&id, addr)| v1::Broker {
                    id,
                    addr: addr.clone(),
                })
                .collect(),
            controller: st.advertised_controller,
            topics: st
                .topics
                .iter()
                .map(|(name, parts)| v1::TopicMetadata {
                    name: name.clone(),
                    partitions: parts
                        .iter()
                        .enumerate()
                        .map(|(i, p)| v1::PartitionMetadata {
                            partition: i as u32,
                            leader: p.advertised,
                            replicas: vec![p.leader],
                        })
                        .collect(),
                    error: None,
                })
                .collect(),
            error: None,
        }))
    }

    type ProduceStream = BoxStream<v1::ProduceResponse>;

    async fn produce(
        &self,
        req: Request<Streaming<v1::ProduceRequest>>,
    ) -> Result<Response<Self::ProduceStream>, Status> {
        let mut requests = req.into_inner();
        let (tx, rx) = mpsc::channel(1024);
        let cluster = self.cluster.clone();
        let me = self.id;
        tokio::spawn(async move {
            while let Ok(Some(req)) = requests.message().await {
                let reply = {
                    let mut st = cluster.state();
                    st.produce_requests += 1;
                    if st.withhold_produce {
                        continue;
                    }
                    let mut reply = v1::ProduceResponse {
                        correlation_id: req.correlation_id,
                        ..Default::default()
                    };
                    if let Some(err) = MockBroker::lead_check(&st, me, &req.topic, req.partition) {
                        reply.error = Some(err);
                    } else if let Some(code) = st.produce_faults.pop_front() {
                        reply.error = error(code, "injected fault", None);
                    } else {
                        match Batch::verify(&req.batch) {
                            Err(e) => {
                                reply.error =
                                    error(v1::ErrorCode::CorruptBatch, &e.to_string(), None)
                            }
                            Ok(header) => {
                                let p = &mut st.topics.get_mut(&req.topic).unwrap()
                                    [req.partition as usize];
                                let mut bytes = req.batch.to_vec();
                                stamp_base_offset(&mut bytes, p.next_offset as i64);
                                reply.base_offset = p.next_offset;
                                p.next_offset += header.record_count as u64;
                                p.batches.push(Bytes::from(bytes));
                                cluster.appended.send_modify(|n| *n += 1);
                            }
                        }
                    }
                    reply
                };
                if tx.send(Ok(reply)).await.is_err() {
                    return;
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    type FetchStream = BoxStream<v1::FetchResponse>;

    async fn fetch(
        &self,
        req: Request<v1::FetchRequest>,
    ) -> Result<Response<Self::FetchStream>, Status> {
        let req = req.into_inner();
        {
            let st = self.cluster.state();
            if let Some(err) = MockBroker::lead_check(&st, self.id, &req.topic, req.partition) {
                let resp = v1::FetchResponse {
                    error: Some(err),
                    ..Default::default()
                };
                return Ok(Response::new(Box::pin(futures::stream::iter([Ok(resp)]))));
            }
            let end = st.topics[&req.topic][req.partition as usize].next_offset;
            if req.offset > end {
                let resp = v1::FetchResponse {
                    error: error(v1::ErrorCode::OffsetOutOfRange, "past the end", None),
                    ..Default::default()
                };
                return Ok(Response::new(Box::pin(futures::stream::iter([Ok(resp)]))));
            }
        }
        let (tx, rx) = mpsc::channel(16);
        let cluster = self.cluster.clone();
        tokio::spawn(async move {
            let mut offset = req.offset;
            let mut appended = cluster.appended.subscribe();
            loop {
                let resp = {
                    let st = cluster.state();
                    let Some(p) = st
                        .topics
                        .get(&req.topic)
                        .and_then(|t| t.get(req.partition as usize))
                    else {
                        return;
                    };
                    let mut batches = Vec::new();
                    for b in &p.batches {
                        let batch = Batch::decode(b.clone()).unwrap();
                        let end = batch.base_offset() as u64 + batch.header().offset_count();
                        if end > offset {
                            batches.push(b.clone());
                            offset = end;
                        }
                    }
                    v1::FetchResponse {
                        batches,
                        high_watermark: p.next_offset,
                        log_start_offset: 0,
                        error: None,
                    }
                };
                let empty = resp.batches.is_empty();
                if !empty && tx.send(Ok(resp)).await.is_err() {
                    return;
                }
                if empty && !req.follow {
                    return;
                }
                if appended.changed().await.is_err() {
                    return;
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn list_offsets(
        &self,
        req: Request<v1::ListOffsetsRequest>,
    ) -> Result<Response<v1::ListOffsetsResponse>, Status> {
        let req = req.into_inner();
        let st = self.cluster.state();
        if let Some(err) = MockBroker::lead_check(&st, self.id, &req.topic, req.partition) {
            return Ok(Response::new(v1::ListOffsetsResponse {
                offset: 0,
                error: Some(err),
            }));
        }
        let p = &st.topics[&req.topic][req.partition as usize];
        use v1::list_offsets_request::Spec;
        let offset = match req.spec {
            Some(Spec::Earliest(_)) => 0,
            Some(Spec::Latest(_)) | None => p.next_offset,
            Some(Spec::Timestamp(ts)) => {
                let mut found = p.next_offset;
                'outer: for b in &p.batches {
                    for r in Batch::decode(b.clone()).unwrap().records() {
                        let r = r.unwrap();
                        if r.timestamp >= ts {
                            found = r.offset as u64;
                            break 'outer;
                        }
                    }
                }
                found
            }
        };
        Ok(Response::new(v1::ListOffsetsResponse {
            offset,
            error: None,
        }))
    }

    async fn init_producer_id(
        &self,
        _req: Request<v1::InitProducerIdRequest>,
    ) -> Result<Response<v1::InitProducerIdResponse>, Status> {
        if let Some(error) = self.not_controller() {
            return Ok(Response::new(v1::InitProducerIdResponse {
                producer_id: -1,
                producer_epoch: -1,
                error,
            }));
        }
        let mut st = self.cluster.state();
        let producer_id = st.producer_ids;
        st.producer_ids += 1;
        Ok(Response::new(v1::InitProducerIdResponse {
            producer_id,
            producer_epoch: 0,
            error: None,
        }))
    }
}

#[tonic::async_trait]
impl GroupCoordinator for MockBroker {
    async fn find_coordinator(
        &self,
        _req: Request<v1::FindCoordinatorRequest>,
    ) -> Result<Response<v1::FindCoordinatorResponse>, Status> {
        let addr = self.cluster.state().brokers[&self.id].clone();
        Ok(Response::new(v1::FindCoordinatorResponse {
            coordinator: Some(v1::Broker { id: self.id, addr }),
            error: None,
        }))
    }

    async fn heartbeat(
        &self,
        req: Request<v1::HeartbeatRequest>,
    ) -> Result<Response<v1::HeartbeatResponse>, Status> {
        let req = req.into_inner();
        let mut st = self.cluster.state();
        let group = &mut st.group;
        if std::mem::take(&mut group.expel_next) {
            return Ok(Response::new(v1::HeartbeatResponse {
                error: error(v1::ErrorCode::UnknownMemberId, "removed", None),
                ..Default::default()
            }));
        }
        let owned = from_wire(&req.owned);
        group.owned.insert(req.member_id.clone(), owned.clone());
        if req.member_epoch == 0 || owned != group.target {
            group.epoch += 1;
        }
        if owned != group.target {
            let sent = (group.target.clone(), Instant::now());
            group.assignments.push(sent);
        }
        Ok(Response::new(v1::HeartbeatResponse {
            member_id: req.member_id,
            member_epoch: group.epoch,
            heartbeat_interval_ms: 50,
            assignment: (owned != group.target).then(|| v1::Assignment {
                partitions: to_wire(&group.target),
            }),
            error: None,
        }))
    }

    async fn offset_commit(
        &self,
        req: Request<v1::OffsetCommitRequest>,
    ) -> Result<Response<v1::OffsetCommitResponse>, Status> {
        let delay = self.cluster.state().group.commit_delay;
        tokio::time::sleep(delay).await;
        let req = req.into_inner();
        let member_epoch = req.member_epoch;
        let offsets: CommitOffsets = req
            .offsets
            .into_iter()
            .map(|o| (o.topic, o.partition, o.offset))
            .collect();
        let mut st = self.cluster.state();
        for (t, p, o) in &offsets {
            st.group.offsets.insert((t.clone(), *p), *o);
        }
        st.group.commits.push(AnsweredCommit {
            offsets,
            member_epoch,
            at: Instant::now(),
        });
        Ok(Response::new(v1::OffsetCommitResponse { error: None }))
    }

    async fn offset_fetch(
        &self,
        req: Request<v1::OffsetFetchRequest>,
    ) -> Result<Response<v1::OffsetFetchResponse>, Status> {
        let wanted = from_wire(&req.into_inner().partitions);
        let st = self.cluster.state();
        let offsets = st
            .group
            .offsets
            .iter()
            .filter(|(tp, _)| wanted.is_empty() || wanted.contains(*tp))
            .map(|((topic, partition), offset)| v1::CommittedOffset {
                topic: topic.clone(),
                partition: *partition,
                offset: *offset,
                ..Default::default()
            })
            .collect();
        Ok(Response::new(v1::OffsetFetchResponse {
            offsets,
            error: None,
        }))
    }

    async fn list_groups(
        &self,
        _req: Request<v1::ListGroupsRequest>,
    ) -> Result<Response<v1::ListGroupsResponse>, Status> {
        Err(Status::unimplemented("the mock does not list groups"))
    }

    async fn describe_group(
        &self,
        _req: Request<v1::DescribeGroupRequest>,
    ) -> Result<Response<v1::DescribeGroupResponse>, Status> {
        Err(Status::unimplemented("the mock does not describe groups"))
    }

    async fn delete_group(
        &self,
        _req: Request<v1::DeleteGroupRequest>,
    ) -> Result<Response<v1::DeleteGroupResponse>, Status> {
        Err(Status::unimplemented("the mock does not delete groups"))
    }

    async fn reset_offsets(
        &self,
        _req: Request<v1::ResetOffsetsRequest>,
    ) -> Result<Response<v1::ResetOffsetsResponse>, Status> {
        Err(Status::unimplemented("the mock does not reset offsets"))
    }
}
