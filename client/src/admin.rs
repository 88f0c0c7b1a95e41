//! [`Admin`]: topics, partitions and cluster information (groups: `group_admin`).
//!
//! Topic changes (create, delete, add partitions) go to the controller, following
//! `NOT_CONTROLLER` / `NOT_LEADER` hints; reads (list, describe, metadata) go to any
//! broker. Both retry retriable errors per [`ClientConfig`]. After a change the
//! metadata cache is refreshed so that producers and consumers on the same
//! [`Connection`] see it.

use std::collections::BTreeMap;

use sluice_proto::v1;

use crate::config::ClientConfig;
use crate::connection::{Connection, Target};
use crate::error::{ClientError, Result, check};
use crate::metadata::{BrokerInfo, ClusterMetadata};
use crate::types::{Offset, TopicPartition};

/// A topic to create.
///
/// ```
/// use sluice_client::NewTopic;
///
/// let topic = NewTopic::new("orders", 12)
///     .replication_factor(3)
///     .config("retention.ms", "604800000");
/// assert_eq!(topic.configs["retention.ms"], "604800000");
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewTopic {
    pub name: String,
    pub partitions: u32,
    /// `None`: the broker's default.
    pub replication_factor: Option<u32>,
    pub configs: BTreeMap<String, String>,
}

impl NewTopic {
    /// A topic with `partitions` partitions and the default replication factor.
    pub fn new(name: impl Into<String>, partitions: u32) -> Self {
        Self {
            name: name.into(),
            partitions,
            replication_factor: None,
            configs: BTreeMap::new(),
        }
    }

    /// Sets the replication factor.
    pub fn replication_factor(mut self, factor: u32) -> Self {
        self.replication_factor = Some(factor);
        self
    }

    /// Adds a topic config entry.
    pub fn config(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.configs.insert(key.into(), value.into());
        self
    }
}

/// A topic as `list_topics` reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicListing {
    pub name: String,
    pub partitions: u32,
    pub replication_factor: u32,
}

/// One partition as `describe_topic` reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionDescription {
    pub partition: u32,
    /// Leader broker id; `None` when no leader is known.
    pub leader: Option<u64>,
    pub replicas: Vec<u64>,
    pub in_sync_replicas: Vec<u64>,
    pub log_start_offset: u64,
    pub high_watermark: u64,
    pub log_end_offset: u64,
}

/// A topic as `describe_topic` reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicDescription {
    pub name: String,
    pub replication_factor: u32,
    pub configs: BTreeMap<String, String>,
    pub partitions: Vec<PartitionDescription>,
}

/// The brokers and the controller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterInfo {
    pub brokers: Vec<BrokerInfo>,
    pub controller: Option<BrokerInfo>,
}

/// Administers topics and inspects the cluster.
///
/// ```no_run
/// use sluice_client::{Admin, ClientConfig, NewTopic};
///
/// # async fn example() -> sluice_client::Result<()> {
/// let admin = Admin::connect(ClientConfig::new(["127.0.0.1:9700"])).await?;
/// admin.create_topic(NewTopic::new("orders", 6).replication_factor(3)).await?;
/// admin.add_partitions("orders", 12).await?;
/// for topic in admin.list_topics().await? {
///     println!("{} ({} partitions)", topic.name, topic.partitions);
/// }
/// let description = admin.describe_topic("orders").await?;
/// for p in &description.partitions {
///     println!("{}: leader {:?}, high watermark {}", p.partition, p.leader, p.high_watermark);
/// }
/// let cluster = admin.cluster_info().await?;
/// println!("controller: {:?}", cluster.controller);
/// admin.delete_topic("orders").await?;
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct Admin {
    conn: Connection,
}

impl Admin {
    /// Connects to the cluster.
    pub async fn connect(config: ClientConfig) -> Result<Self> {
        Ok(Self::new(Connection::connect(config).await?))
    }

    /// An admin client on an existing connection.
    pub fn new(conn: Connection) -> Self {
        Self { conn }
    }

    /// The connection the admin client uses.
    pub fn connection(&self) -> &Connection {
        &self.conn
    }

    /// Creates a topic.
    pub async fn create_topic(&self, topic: NewTopic) -> Result<()> {
        if topic.name.is_empty() {
            return Err(ClientError::InvalidArgument("a topic needs a name".into()));
        }
        let req = v1::CreateTopicRequest {
            name: topic.name,
            partitions: topic.partitions,
            replication_factor: topic.replication_factor.unwrap_or(0),
            configs: topic.configs.into_iter().collect(),
        };
        self.conn
            .call(Target::Controller, |mut c| {
                let req = req.clone();
                async move { Ok(check(c.create_topic(req).await?.into_inner().error)?) }
            })
            .await?;
        self.refresh().await;
        Ok(())
    }

    /// Deletes a topic and all its data.
    pub async fn delete_topic(&self, name: &str) -> Result<()> {
        let req = v1::DeleteTopicRequest { name: name.into() };
        self.conn
            .call(Target::Controller, |mut c| {
                let req = req.clone();
                async move { Ok(check(c.delete_topic(req).await?.into_inner().error)?) }
            })
            .await?;
        self.refresh().await;
        Ok(())
    }

    /// Raises a topic's partition count to `total` (which must exceed the current
    /// count). Keys map to partitions by count, so keyed data is spread differently
    /// from then on.
    pub async fn add_partitions(&self, name: &str, total: u32) -> Result<()> {
        let req = v1::AddPartitionsRequest {
            name: name.into(),
            partitions: total,
        };
        self.conn
            .call(Target::Controller, |mut c| {
                let req = req.clone();
                async move { Ok(check(c.add_partitions(req).await?.into_inner().error)?) }
            })
            .await?;
        self.refresh().await;
        Ok(())
    }

    /// Every topic, sorted by name, except internal ones (`__consumer_offsets`).
    pub async fn list_topics(&self) -> Result<Vec<TopicListing>> {
        self.list_topics_with(false).await
    }

    /// Every topic, sorted by name; internal ones too when `include_internal`.
    pub async fn list_topics_with(&self, include_internal: bool) -> Result<Vec<TopicListing>> {
        let req = v1::ListTopicsRequest { include_internal };
        let mut topics = self
            .conn
            .call(Target::Any, |mut c| async move {
                let resp = c.list_topics(req).await?.into_inner();
                check(resp.error)?;
                Ok(resp.topics)
            })
            .await?
            .into_iter()
            .map(|t| TopicListing {
                name: t.name,
                partitions: t.partitions,
                replication_factor: t.replication_factor,
            })
            .collect::<Vec<_>>();
        topics.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(topics)
    }

    /// A topic's partitions (leader, replicas, in-sync replicas, offsets) and
    /// configs. [`ClientError::UnknownTopic`] if it does not exist.
    pub async fn describe_topic(&self, name: &str) -> Result<TopicDescription> {
        let req = v1::DescribeTopicRequest { name: name.into() };
        let resp = self
            .conn
            .call(Target::Any, |mut c| {
                let req = req.clone();
                async move {
                    let resp = c.describe_topic(req).await?.into_inner();
                    check(resp.error.clone())?;
                    Ok(resp)
                }
            })
            .await?;
        let mut partitions: Vec<PartitionDescription> = resp
            .partitions
            .into_iter()
            .map(|p| PartitionDescription {
                partition: p.partition,
                leader: (p.leader != 0).then_some(p.leader),
                replicas: p.replicas,
                in_sync_replicas: p.in_sync_replicas,
                log_start_offset: p.log_start_offset,
                high_watermark: p.high_watermark,
                log_end_offset: p.log_end_offset,
            })
            .collect();
        partitions.sort_by_key(|p| p.partition);
        Ok(TopicDescription {
            name: if resp.name.is_empty() {
                name.to_owned()
            } else {
                resp.name
            },
            replication_factor: resp.replication_factor,
            configs: resp.configs.into_iter().collect(),
            partitions,
        })
    }

    /// Fresh cluster metadata (every topic).
    pub async fn metadata(&self) -> Result<std::sync::Arc<ClusterMetadata>> {
        self.conn.refresh_metadata().await
    }

    /// The brokers (by id) and the controller.
    pub async fn cluster_info(&self) -> Result<ClusterInfo> {
        let metadata = self.metadata().await?;
        Ok(ClusterInfo {
            brokers: metadata.brokers.values().cloned().collect(),
            controller: metadata.controller.clone(),
        })
    }

    /// Resolves a position in a partition to an offset (`ListOffsets`): the log
    /// start, the high watermark, or the first offset at a timestamp.
    pub async fn list_offset(&self, tp: &TopicPartition, offset: Offset) -> Result<u64> {
        self.conn.list_offset(&tp.topic, tp.partition, offset).await
    }

    async fn refresh(&self) {
        if let Err(err) = self.conn.refresh_metadata().await {
            tracing::debug!(%err, "metadata refresh after a topic change failed");
        }
    }
}
