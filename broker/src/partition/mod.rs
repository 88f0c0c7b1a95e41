//! The partitions this broker hosts, kept in step with the committed metadata.
//!
//! [`PartitionManager`] starts a Raft replica for every partition the metadata places
//! on this broker, and stops it (deleting its data) when its topic is deleted. It owns
//! the `partitions/` directory; nothing else creates or removes replicas.
//!
//! It also revives replicas that openraft stopped on its own (a write failed on a full
//! disk, a panic): such a replica is started again from its files, which keep every
//! fsynced entry, until a start succeeds. Until then the stopped replica stays in
//! place, so clients keep getting its error (e.g. disk full) rather than "not here".

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use tokio::sync::watch;

use crate::metadata::{MetadataState, TopicConfig};
use crate::raft::{BasicNode, GroupRegistry, Network, RaftTuning, Replica, ReplicaSpec};

/// A hosted partition.
pub struct Partition {
    pub topic: String,
    pub partition: u32,
    pub group_id: u64,
    pub replicas: Vec<u64>,
    pub config: TopicConfig,
    pub replica: Replica,
}

type Key = (String, u32);

/// How often stopped replicas are looked for and started again.
pub const REVIVE_INTERVAL: Duration = Duration::from_secs(1);

/// Where the metadata wants a partition: its group, its replicas, its topic's configs.
struct Placement {
    group_id: u64,
    replicas: Vec<u64>,
    configs: BTreeMap<String, String>,
}

pub struct PartitionManager {
    node_id: u64,
    dir: PathBuf,
    registry: GroupRegistry,
    network: Network,
    tuning: RaftTuning,
    hosted: RwLock<HashMap<Key, Arc<Partition>>>,
    reconcile_lock: tokio::sync::Mutex<()>,
}

impl PartitionManager {
    pub fn new(
        node_id: u64,
        data_dir: &std::path::Path,
        registry: GroupRegistry,
        network: Network,
        tuning: RaftTuning,
    ) -> Self {
        Self {
            node_id,
            dir: data_dir.join("partitions"),
            registry,
            network,
            tuning,
            hosted: RwLock::new(HashMap::new()),
            reconcile_lock: tokio::sync::Mutex::new(()),
        }
    }

    /// The hosted replica of `topic`/`partition`, if this broker has one.
    pub fn get(&self, topic: &str, partition: u32) -> Option<Arc<Partition>> {
        self.hosted
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(&(topic.to_string(), partition))
            .cloned()
    }

    pub fn all(&self) -> Vec<Arc<Partition>> {
        self.hosted
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .cloned()
            .collect()
    }

    /// Reconciles with every new metadata state until `metadata` closes, and every
    /// [`REVIVE_INTERVAL`] starts again the replicas openraft stopped on its own.
    pub async fn follow(self: Arc<Self>, mut metadata: watch::Receiver<Arc<MetadataState>>) {
        let mut revive = tokio::time::interval(REVIVE_INTERVAL);
        revive.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let state = metadata.borrow_and_update().clone();
            self.reconcile(&state).await;
            loop {
                tokio::select! {
                    changed = metadata.changed() => {
                        if changed.is_err() {
                            return;
                        }
                        break;
                    }
                    _ = revive.tick() => self.revive(&state).await,
                }
            }
        }
    }

    /// Starts again, from its files, every replica whose Raft stopped on its own. One
    /// whose start fails stays as it was, to be tried again.
    pub async fn revive(&self, state: &MetadataState) {
        let _one_at_a_time = self.reconcile_lock.lock().await;
        let stopped: Vec<(Arc<Partition>, String)> = self
            .all()
            .into_iter()
            .filter_map(|p| p.replica.stopped_by().map(|why| (p, why)))
            .collect();
        if stopped.is_empty() {
            return;
        }
        let mut wanted = self.placements(state);
        for (p, why) in stopped {
            let key = (p.topic.clone(), p.partition);
            let Some(placement) = wanted.remove(&key).filter(|w| w.group_id == p.group_id) else {
                continue;
            };
            tracing::warn!(topic = %p.topic, partition = p.partition, reason = %why, "replica stopped; starting it again");
            // Frees its group id for the new replica; what it fails to persist now
            // (a full disk) its successor recovers from the log.
            if let Err(e) = p.replica.shutdown().await {
                tracing::debug!(topic = %p.topic, partition = p.partition, error = %e, "stopped replica's shutdown");
            }
            if let Err(e) = self.start(state, &key, placement).await {
                tracing::warn!(topic = %p.topic, partition = p.partition, error = %e, "cannot start the replica again yet");
            }
        }
    }

    /// Where the metadata places this broker's replicas.
    fn placements(&self, state: &MetadataState) -> BTreeMap<Key, Placement> {
        state
            .partitions_on(self.node_id)
            .map(|(topic, p, meta)| {
                let placement = Placement {
                    group_id: meta.group_id,
                    replicas: meta.replicas.clone(),
                    configs: state
                        .topics
                        .get(topic)
                        .map(|t| t.configs.clone())
                        .unwrap_or_default(),
                };
                ((topic.to_string(), p), placement)
            })
            .collect()
    }

    /// Starts replicas the metadata places here and stops those it no longer does.
    pub async fn reconcile(&self, state: &MetadataState) {
        let _one_at_a_time = self.reconcile_lock.lock().await;
        let wanted = self.placements(state);
        let stale: Vec<Arc<Partition>> = {
            let hosted = self.hosted.read().unwrap_or_else(|p| p.into_inner());
            hosted
                .iter()
                .filter(|(k, p)| wanted.get(*k).is_none_or(|w| w.group_id != p.group_id))
                .map(|(_, p)| p.clone())
                .collect()
        };
        for p in stale {
            self.stop(&p).await;
        }
        for (key, placement) in wanted {
            if self.get(&key.0, key.1).is_some() {
                continue;
            }
            if let Err(e) = self.start(state, &key, placement).await {
                tracing::error!(topic = %key.0, partition = key.1, error = %e, "cannot start partition replica");
            }
        }
    }

    fn partition_dir(&self, topic: &str, partition: u32, group_id: u64) -> PathBuf {
        self.dir.join(format!("{topic}-{partition}.g{group_id}"))
    }

    async fn start(
        &self,
        state: &MetadataState,
        key: &Key,
        placement: Placement,
    ) -> Result<(), String> {
        let Placement {
            group_id,
            replicas,
            configs,
        } = placement;
        // Configs were validated when the topic was created.
        let config = TopicConfig::parse(&configs).map_err(|e| e.to_string())?;
        let members: BTreeMap<u64, BasicNode> = replicas
            .iter()
            .filter_map(|id| {
                state
                    .brokers
                    .get(id)
                    .map(|b| (*id, BasicNode::new(b.addr.clone())))
            })
            .collect();
        let dir = self.partition_dir(&key.0, key.1, group_id);
        let mut spec = ReplicaSpec::new(group_id, self.node_id, &dir, members)
            .log_config(config.log.clone())
            .tuning(self.tuning.clone());
        // The metadata's first replica is the preferred leader: spreading it spreads load.
        if let Some(&first) = replicas.first() {
            spec = spec.preferred_leader(first);
        }
        let replica = Replica::start(spec, &self.registry, &self.network)
            .await
            .map_err(|e| e.to_string())?;
        tracing::info!(topic = %key.0, partition = key.1, group_id, "partition replica started");
        let partition = Arc::new(Partition {
            topic: key.0.clone(),
            partition: key.1,
            group_id,
            replicas,
            config,
            replica,
        });
        self.hosted
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(key.clone(), partition);
        Ok(())
    }

    async fn stop(&self, p: &Arc<Partition>) {
        let removed = self
            .hosted
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&(p.topic.clone(), p.partition));
        let Some(partition) = removed else { return };
        if let Err(e) = partition.replica.shutdown().await {
            tracing::warn!(topic = %p.topic, partition = p.partition, error = %e, "replica did not stop cleanly");
        }
        let dir = self.partition_dir(&p.topic, p.partition, p.group_id);
        if let Err(e) = std::fs::remove_dir_all(&dir) {
            tracing::warn!(dir = %dir.display(), error = %e, "cannot remove deleted partition's data");
        }
        tracing::info!(topic = %p.topic, partition = p.partition, "partition replica removed");
    }

    /// Stops every replica, keeping its data.
    pub async fn shutdown(&self) {
        let all: Vec<Arc<Partition>> = self
            .hosted
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .drain()
            .map(|(_, p)| p)
            .collect();
        for p in all {
            if let Err(e) = p.replica.shutdown().await {
                tracing::warn!(topic = %p.topic, partition = p.partition, error = %e, "replica did not stop cleanly");
            }
        }
    }
}
