//! Consumer group administration on [`Admin`]: list, describe, delete, reset offsets.
//!
//! A group's calls go to its coordinator (see `coordinator`); listing asks every
//! broker, since each one answers for the groups it coordinates.

use std::collections::BTreeMap;

use sluice_proto::v1;

use crate::admin::Admin;
use crate::consumer::OffsetAndMetadata;
use crate::coordinator::{Coordinator, committed_from_proto};
use crate::error::{ClientError, Result, check};
use crate::types::TopicPartition;

/// A group as `list_groups` reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupListing {
    pub group_id: String,
    /// "empty", "stable" or "reconciling".
    pub state: String,
    pub members: u32,
}

/// A member as `describe_group` reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberDescription {
    pub member_id: String,
    pub client_id: String,
    pub member_epoch: i32,
    pub subscribed_topics: Vec<String>,
    pub subscribed_regex: String,
    /// What it owns now.
    pub assigned: Vec<TopicPartition>,
    /// What it was asked to release and has not yet.
    pub revoking: Vec<TopicPartition>,
}

/// A group as `describe_group` reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupDescription {
    pub group_id: String,
    pub state: String,
    pub group_epoch: i32,
    pub members: Vec<MemberDescription>,
    pub offsets: BTreeMap<TopicPartition, OffsetAndMetadata>,
}

impl GroupDescription {
    /// The member owning `tp`, if any.
    pub fn owner(&self, tp: &TopicPartition) -> Option<&MemberDescription> {
        self.members.iter().find(|m| m.assigned.contains(tp))
    }
}

impl Admin {
    fn coordinator(&self, group: &str) -> Result<Coordinator> {
        if group.is_empty() {
            return Err(ClientError::InvalidArgument("a group needs an id".into()));
        }
        Ok(Coordinator::new(self.connection().clone(), group))
    }

    /// Every group the cluster coordinates, sorted by id.
    pub async fn list_groups(&self) -> Result<Vec<GroupListing>> {
        let conn = self.connection();
        let metadata = conn.refresh_metadata().await?;
        let mut groups: BTreeMap<String, GroupListing> = BTreeMap::new();
        let mut answered = 0;
        let mut last_error = None;
        for broker in metadata.brokers.values() {
            let resp = async {
                let mut client = conn.group_client(&broker.addr)?;
                let timeout = conn.config().request_timeout;
                let resp =
                    tokio::time::timeout(timeout, client.list_groups(v1::ListGroupsRequest {}))
                        .await
                        .map_err(|_| ClientError::Timeout {
                            message: format!(
                                "{} did not list its groups within {timeout:?}",
                                broker.addr
                            ),
                        })?
                        .map_err(|s| ClientError::from_status(&broker.addr, &s))?
                        .into_inner();
                check(resp.error)?;
                Ok::<_, ClientError>(resp.groups)
            };
            match resp.await {
                Ok(list) => {
                    answered += 1;
                    for g in list {
                        groups.entry(g.group_id.clone()).or_insert(GroupListing {
                            group_id: g.group_id,
                            state: g.state,
                            members: g.members,
                        });
                    }
                }
                Err(e) => {
                    tracing::debug!(broker = %broker, %e, "list groups");
                    last_error = Some(e);
                }
            }
        }
        match (answered, last_error) {
            (0, Some(e)) => Err(e),
            _ => Ok(groups.into_values().collect()),
        }
    }

    /// A group's members, their assignments, and its committed offsets.
    /// [`ClientError::UnknownGroup`] if it has neither members nor offsets.
    pub async fn describe_group(&self, group: &str) -> Result<GroupDescription> {
        let req = v1::DescribeGroupRequest {
            group_id: group.to_string(),
        };
        let resp = self
            .coordinator(group)?
            .call(|mut c| {
                let req = req.clone();
                async move {
                    let resp = c.describe_group(req).await?.into_inner();
                    check(resp.error.clone())?;
                    Ok(resp)
                }
            })
            .await?;
        Ok(GroupDescription {
            group_id: resp.group_id,
            state: resp.state,
            group_epoch: resp.group_epoch,
            members: resp
                .members
                .into_iter()
                .map(|m| MemberDescription {
                    member_id: m.member_id,
                    client_id: m.client_id,
                    member_epoch: m.member_epoch,
                    subscribed_topics: m.subscribed_topics,
                    subscribed_regex: m.subscribed_regex,
                    assigned: TopicPartition::from_wire(m.assigned).collect(),
                    revoking: TopicPartition::from_wire(m.revoking).collect(),
                })
                .collect(),
            offsets: committed_from_proto(resp.offsets),
        })
    }

    /// A group's committed offsets.
    pub async fn group_offsets(
        &self,
        group: &str,
    ) -> Result<BTreeMap<TopicPartition, OffsetAndMetadata>> {
        self.coordinator(group)?.committed(None).await
    }

    /// Deletes a group and its committed offsets. [`ClientError::GroupNotEmpty`]
    /// while it has members.
    pub async fn delete_group(&self, group: &str) -> Result<()> {
        let req = v1::DeleteGroupRequest {
            group_id: group.to_string(),
        };
        self.coordinator(group)?
            .call(|mut c| {
                let req = req.clone();
                async move { Ok(check(c.delete_group(req).await?.into_inner().error)?) }
            })
            .await
    }

    /// Sets a group's committed offsets. Refused with
    /// [`ClientError::GroupNotEmpty`] while it has members, unless `force`: then
    /// the members are removed (they rejoin and start from the new offsets).
    pub async fn reset_offsets(
        &self,
        group: &str,
        offsets: BTreeMap<TopicPartition, u64>,
        force: bool,
    ) -> Result<()> {
        let req = v1::ResetOffsetsRequest {
            group_id: group.to_string(),
            offsets: offsets
                .into_iter()
                .map(|(tp, offset)| v1::CommitOffset {
                    topic: tp.topic,
                    partition: tp.partition,
                    offset,
                    metadata: String::new(),
                })
                .collect(),
            force,
        };
        self.coordinator(group)?
            .call(|mut c| {
                let req = req.clone();
                async move { Ok(check(c.reset_offsets(req).await?.into_inner().error)?) }
            })
            .await
    }
}
