//! The `sluice.v1.GroupCoordinator` gRPC service: converts requests to
//! [`crate::group`] calls and answers, and routes clients to the coordinator.
//!
//! Routing: `FindCoordinator` names the leader of the group's `__consumer_offsets`
//! partition (from the local replica, else from brokers hosting one, as `peers` does
//! for partition leaders), creating the topic first if needed: the controller creates
//! it; any other broker forwards the request there once (marked [`FORWARDED`]). Other
//! calls reaching a broker that does not coordinate the group get `NOT_COORDINATOR`
//! with the coordinator when known.
//!
//! Lives in `server/` rather than `group/` so that gRPC types stay in this module.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use sluice_proto::v1::group_coordinator_client::GroupCoordinatorClient;
use sluice_proto::v1::group_coordinator_server::GroupCoordinator as GroupRpc;
use sluice_proto::v1::{self, ErrorCode};
use tonic::{Request, Response, Status};

use super::errors::{self, error};
use super::peers::{FORWARDED, PEER_TIMEOUT, Peers};
use crate::group::coordinator::{GroupDescription, OffsetCommit};
use crate::group::membership::{Heartbeat, MemberState};
use crate::group::records::Committed;
use crate::group::{
    GroupCoordinator, GroupError, OFFSETS_TOPIC, TopicPartition, partition_for, validate_group_id,
};
use crate::metadata::ControllerError;

/// How long `FindCoordinator` waits for a new offsets topic and its leaders.
const CREATE_WAIT: Duration = Duration::from_secs(5);

pub struct GroupService {
    coordinator: Arc<OnceLock<Arc<GroupCoordinator>>>,
    peers: Arc<Peers>,
}

impl GroupService {
    /// Serves once `coordinator` is set; until then every call gets `UNAVAILABLE`.
    pub fn new(coordinator: Arc<OnceLock<Arc<GroupCoordinator>>>) -> Self {
        Self {
            coordinator,
            peers: Arc::default(),
        }
    }

    fn coordinator(&self) -> Result<Arc<GroupCoordinator>, Status> {
        self.coordinator
            .get()
            .cloned()
            .ok_or_else(|| Status::unavailable("the broker is starting; retry shortly"))
    }

    /// The leader of partition `p` of the offsets topic, from the local replica or
    /// from brokers hosting one.
    async fn leader_of(&self, c: &GroupCoordinator, p: u32) -> Option<v1::Broker> {
        let node = c.node();
        if let Some(part) = node.partitions.get(OFFSETS_TOPIC, p)
            && let Some((id, addr)) = part.replica.leader_node()
            && !addr.is_empty()
        {
            return Some(v1::Broker { id, addr });
        }
        let state = node.controller.state();
        let found = self
            .peers
            .describe(&state, node.node_id, OFFSETS_TOPIC, &[p])
            .await;
        let leader = found.get(&p)?.leader;
        let addr = state.brokers.get(&leader)?.addr.clone();
        Some(v1::Broker { id: leader, addr })
    }

    /// The API error for `e` about `group`, with the coordinator filled in for
    /// `NOT_COORDINATOR` when this broker can find it.
    async fn group_error(&self, c: &GroupCoordinator, group: &str, e: GroupError) -> v1::Error {
        let mut out = errors::from_group(&e);
        if matches!(e, GroupError::NotCoordinator { leader: None })
            && let Ok(p) = c.partition_of(group)
        {
            out.leader = self
                .leader_of(c, p)
                .await
                .filter(|b| b.id != c.node().node_id);
        }
        out
    }

    /// Asks the controller at `addr` to find (and so create) a coordinator.
    async fn forward_find(&self, addr: &str, group: &str) {
        let Some(channel) = self.peers.channel(addr) else {
            return;
        };
        let mut req = Request::new(v1::FindCoordinatorRequest {
            group_id: group.to_string(),
        });
        req.metadata_mut()
            .insert(FORWARDED, tonic::metadata::MetadataValue::from_static("1"));
        let mut client = GroupCoordinatorClient::new(channel);
        match tokio::time::timeout(CREATE_WAIT, client.find_coordinator(req)).await {
            Ok(Ok(_)) => {}
            Ok(Err(status)) => tracing::debug!(%status, "forwarded find-coordinator failed"),
            Err(_) => tracing::debug!("forwarded find-coordinator timed out"),
        }
    }

    async fn find(
        &self,
        c: &GroupCoordinator,
        group: &str,
        forwarded: bool,
    ) -> Result<v1::Broker, v1::Error> {
        validate_group_id(group).map_err(|e| errors::from_group(&e))?;
        let partitions = match c.ensure_offsets_topic().await {
            Ok(n) => n,
            Err(GroupError::Controller(ControllerError::NotController {
                leader: Some((_, addr)),
            })) if !forwarded => {
                self.forward_find(&addr, group).await;
                c.wait_for_offsets_topic(CREATE_WAIT).await.ok_or_else(|| {
                    error(
                        ErrorCode::CoordinatorNotAvailable,
                        format!("{OFFSETS_TOPIC} is being created; retry shortly"),
                    )
                })?
            }
            Err(e) => return Err(errors::from_group(&e)),
        };
        let p = partition_for(group, partitions);
        let deadline = tokio::time::Instant::now() + CREATE_WAIT;
        loop {
            if let Some(b) = self.leader_of(c, p).await {
                return Ok(b);
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(error(
                    ErrorCode::CoordinatorNotAvailable,
                    format!("partition {p} of {OFFSETS_TOPIC} has no leader yet; retry shortly"),
                ));
            }
            tokio::time::sleep(PEER_TIMEOUT / 10).await;
        }
    }
}

fn commits(list: Vec<v1::CommitOffset>) -> Vec<OffsetCommit> {
    list.into_iter()
        .map(|o| OffsetCommit {
            tp: TopicPartition::new(o.topic, o.partition),
            offset: o.offset,
            metadata: o.metadata,
        })
        .collect()
}

fn committed(tp: TopicPartition, c: Committed) -> v1::CommittedOffset {
    v1::CommittedOffset {
        topic: tp.topic,
        partition: tp.partition,
        offset: c.offset,
        metadata: c.metadata,
        commit_timestamp_ms: c.timestamp_ms,
    }
}

fn member(m: MemberState) -> v1::MemberDescription {
    v1::MemberDescription {
        assigned: TopicPartition::to_wire(m.assigned.into_keys()),
        revoking: TopicPartition::to_wire(m.revoking.into_keys()),
        member_id: m.id,
        client_id: m.client_id,
        member_epoch: m.epoch,
        subscribed_topics: m.topics.into_iter().collect(),
        subscribed_regex: m.regex,
    }
}

fn description(d: GroupDescription) -> v1::DescribeGroupResponse {
    v1::DescribeGroupResponse {
        group_id: d.id,
        state: d.phase.to_string(),
        group_epoch: d.epoch,
        members: d.members.into_iter().map(member).collect(),
        offsets: d
            .offsets
            .into_iter()
            .map(|(tp, c)| committed(tp, c))
            .collect(),
        error: None,
    }
}

#[tonic::async_trait]
impl GroupRpc for GroupService {
    async fn find_coordinator(
        &self,
        request: Request<v1::FindCoordinatorRequest>,
    ) -> Result<Response<v1::FindCoordinatorResponse>, Status> {
        let c = self.coordinator()?;
        let forwarded = request.metadata().contains_key(FORWARDED);
        let group = request.into_inner().group_id;
        let resp = match self.find(&c, &group, forwarded).await {
            Ok(b) => v1::FindCoordinatorResponse {
                coordinator: Some(b),
                error: None,
            },
            Err(e) => v1::FindCoordinatorResponse {
                coordinator: None,
                error: Some(e),
            },
        };
        Ok(Response::new(resp))
    }

    async fn heartbeat(
        &self,
        request: Request<v1::HeartbeatRequest>,
    ) -> Result<Response<v1::HeartbeatResponse>, Status> {
        let c = self.coordinator()?;
        let req = request.into_inner();
        let group = req.group_id.clone();
        let hb = Heartbeat {
            member_id: req.member_id,
            member_epoch: req.member_epoch,
            client_id: req.client_id,
            topics: req.subscribed_topics.into_iter().collect(),
            regex: req.subscribed_regex,
            owned: TopicPartition::from_wire(req.owned).collect(),
            session_timeout: Duration::from_millis(req.session_timeout_ms.into()),
            rebalance_timeout: Duration::from_millis(req.rebalance_timeout_ms.into()),
        };
        let resp = match c.heartbeat(&group, hb).await {
            Ok((reply, interval)) => v1::HeartbeatResponse {
                member_id: reply.member_id,
                member_epoch: reply.member_epoch,
                heartbeat_interval_ms: u32::try_from(interval.as_millis()).unwrap_or(u32::MAX),
                assignment: reply.assignment.map(|a| v1::Assignment {
                    partitions: TopicPartition::to_wire(a),
                }),
                error: None,
            },
            Err(e) => v1::HeartbeatResponse {
                error: Some(self.group_error(&c, &group, e).await),
                ..Default::default()
            },
        };
        Ok(Response::new(resp))
    }

    async fn offset_commit(
        &self,
        request: Request<v1::OffsetCommitRequest>,
    ) -> Result<Response<v1::OffsetCommitResponse>, Status> {
        let c = self.coordinator()?;
        let req = request.into_inner();
        let result = c
            .commit(
                &req.group_id,
                &req.member_id,
                req.member_epoch,
                commits(req.offsets),
            )
            .await;
        let error = match result {
            Ok(()) => None,
            Err(e) => Some(self.group_error(&c, &req.group_id, e).await),
        };
        Ok(Response::new(v1::OffsetCommitResponse { error }))
    }

    async fn offset_fetch(
        &self,
        request: Request<v1::OffsetFetchRequest>,
    ) -> Result<Response<v1::OffsetFetchResponse>, Status> {
        let c = self.coordinator()?;
        let req = request.into_inner();
        let wanted = (!req.partitions.is_empty())
            .then(|| TopicPartition::from_wire(req.partitions).collect());
        let resp = match c.fetch_offsets(&req.group_id, wanted).await {
            Ok(offsets) => v1::OffsetFetchResponse {
                offsets: offsets
                    .into_iter()
                    .map(|(tp, c)| committed(tp, c))
                    .collect(),
                error: None,
            },
            Err(e) => v1::OffsetFetchResponse {
                offsets: Vec::new(),
                error: Some(self.group_error(&c, &req.group_id, e).await),
            },
        };
        Ok(Response::new(resp))
    }

    async fn list_groups(
        &self,
        _request: Request<v1::ListGroupsRequest>,
    ) -> Result<Response<v1::ListGroupsResponse>, Status> {
        let c = self.coordinator()?;
        let groups = c
            .list()
            .await
            .into_iter()
            .map(|g| v1::GroupListing {
                group_id: g.id,
                state: g.phase.to_string(),
                members: g.members as u32,
            })
            .collect();
        Ok(Response::new(v1::ListGroupsResponse {
            groups,
            error: None,
        }))
    }

    async fn describe_group(
        &self,
        request: Request<v1::DescribeGroupRequest>,
    ) -> Result<Response<v1::DescribeGroupResponse>, Status> {
        let c = self.coordinator()?;
        let group = request.into_inner().group_id;
        let resp = match c.describe(&group).await {
            Ok(d) => description(d),
            Err(e) => v1::DescribeGroupResponse {
                group_id: group.clone(),
                error: Some(self.group_error(&c, &group, e).await),
                ..Default::default()
            },
        };
        Ok(Response::new(resp))
    }

    async fn delete_group(
        &self,
        request: Request<v1::DeleteGroupRequest>,
    ) -> Result<Response<v1::DeleteGroupResponse>, Status> {
        let c = self.coordinator()?;
        let group = request.into_inner().group_id;
        let error = match c.delete(&group).await {
            Ok(()) => None,
            Err(e) => Some(self.group_error(&c, &group, e).await),
        };
        Ok(Response::new(v1::DeleteGroupResponse { error }))
    }

    async fn reset_offsets(
        &self,
        request: Request<v1::ResetOffsetsRequest>,
    ) -> Result<Response<v1::ResetOffsetsResponse>, Status> {
        let c = self.coordinator()?;
        let req = request.into_inner();
        let error = match c
            .reset_offsets(&req.group_id, commits(req.offsets), req.force)
            .await
        {
            Ok(_) => None,
            Err(e) => Some(self.group_error(&c, &req.group_id, e).await),
        };
        Ok(Response::new(v1::ResetOffsetsResponse { error }))
    }
}
