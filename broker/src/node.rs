//! A running broker: binds its port, starts the controller and the partitions it
//! hosts, serves clients and peers, and shuts all of it down in order.
//!
//! Start-up order matters for clusters: the gRPC server (with the Raft transport) is
//! up before the controller elects, so peers can reach this broker; client calls that
//! arrive before the node is ready get `UNAVAILABLE` and are retried by clients.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use sluice_proto::raft::raft_server::RaftServer;
use sluice_proto::v1;
use sluice_proto::v1::group_coordinator_server::GroupCoordinatorServer;
use sluice_proto::v1::sluice_server::SluiceServer;
use thiserror::Error;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio_stream::wrappers::TcpListenerStream;

use crate::config::BrokerConfig;
use crate::group::GroupCoordinator;
use crate::log::now_ms;
use crate::metadata::{BrokerInfo, Controller, ControllerError};
use crate::partition::{Partition, PartitionManager};
use crate::raft::{GroupRegistry, Network, NetworkOptions, PeerDial, RaftService};
use crate::server::MAX_MESSAGE_BYTES;
use crate::server::client_api::{ClientApi, not_found};
use crate::server::group_service::GroupService;
use crate::server::peers::Peers;

/// HTTP/2 flow-control windows of one stream and of one connection.
const STREAM_WINDOW: u32 = 16 << 20;
const CONNECTION_WINDOW: u32 = 64 << 20;
/// The largest HTTP/2 frame the broker accepts (a produce batch's usual size).
const MAX_FRAME: u32 = 1 << 20;

/// How often retention and segment ageing run.
const HOUSEKEEPING_INTERVAL: Duration = Duration::from_secs(30);

/// How long a stopping broker waits for open requests once its replicas are down.
/// Streams that clients keep open (produce, follow-fetch) never end by themselves,
/// and with the replicas stopped there is nothing left for them to do.
const SERVER_DRAIN: Duration = Duration::from_secs(1);

#[derive(Debug, Error)]
pub enum StartError {
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot create data directory {path}: {source}")]
    DataDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("controller failed to start: {0}")]
    Controller(#[from] ControllerError),
}

/// What request handlers need of the broker.
pub struct Node {
    pub node_id: u64,
    pub controller: Controller,
    pub partitions: Arc<PartitionManager>,
    pub default_replication_factor: u32,
}

impl Node {
    /// The hosted partition, or the error a client should get for it.
    pub fn local_partition(
        &self,
        topic: &str,
        partition: u32,
    ) -> Result<Arc<Partition>, v1::Error> {
        self.partitions
            .get(topic, partition)
            .ok_or_else(|| not_found(self, topic, partition))
    }

    /// Waits until every partition of `topic` hosted here knows its leader, so a client
    /// that just created a topic can produce at once.
    pub async fn wait_for_local_leaders(&self, topic: &str, timeout: Duration) {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let state = self.controller.state();
            let ready = state.topic(topic).is_ok_and(|t| {
                t.partitions.iter().enumerate().all(|(i, meta)| {
                    !meta.replicas.contains(&self.node_id)
                        || self
                            .partitions
                            .get(topic, i as u32)
                            .is_some_and(|p| p.replica.leader().is_some())
                })
            });
            if ready || tokio::time::Instant::now() >= deadline {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// A broker that is serving. Dropping it does not stop it; call [`Broker::shutdown`].
pub struct Broker {
    pub addr: SocketAddr,
    node: Arc<Node>,
    stop_server: oneshot::Sender<()>,
    server: JoinHandle<Result<(), tonic::transport::Error>>,
    housekeeping: JoinHandle<()>,
    groups: Arc<GroupCoordinator>,
}

impl Broker {
    pub async fn start(config: BrokerConfig) -> Result<Self, StartError> {
        std::fs::create_dir_all(&config.data_dir).map_err(|source| StartError::DataDir {
            path: config.data_dir.clone(),
            source,
        })?;
        let listener =
            TcpListener::bind(config.listen)
                .await
                .map_err(|source| StartError::Bind {
                    addr: config.listen,
                    source,
                })?;
        let addr = listener.local_addr().map_err(|source| StartError::Bind {
            addr: config.listen,
            source,
        })?;
        let advertised = config
            .advertised_addr
            .clone()
            .unwrap_or_else(|| addr.to_string());
        let brokers: Vec<BrokerInfo> = if config.peers.is_empty() {
            vec![BrokerInfo {
                id: config.node_id,
                addr: advertised.clone(),
            }]
        } else {
            config
                .peers
                .iter()
                .map(|(id, addr)| BrokerInfo {
                    id: *id,
                    addr: addr.clone(),
                })
                .collect()
        };

        let registry = GroupRegistry::default();
        let dial = PeerDial::new(config.peer_dial.clone());
        let network = Network::new(NetworkOptions {
            dial: dial.clone(),
            ..NetworkOptions::default()
        });
        let tuning = config.raft.clone();
        let ready: Arc<OnceLock<Arc<Node>>> = Arc::new(OnceLock::new());
        let groups_ready: Arc<OnceLock<Arc<GroupCoordinator>>> = Arc::new(OnceLock::new());
        let (stop_server, stopped) = oneshot::channel::<()>();
        let server = {
            let api = SluiceServer::new(ClientApi::new(ready.clone(), Peers::new(dial)))
                .max_decoding_message_size(MAX_MESSAGE_BYTES)
                .max_encoding_message_size(MAX_MESSAGE_BYTES);
            let groups = GroupCoordinatorServer::new(GroupService::new(groups_ready.clone()));
            let raft = RaftServer::new(RaftService::new(registry.clone()))
                .max_decoding_message_size(MAX_MESSAGE_BYTES)
                .max_encoding_message_size(MAX_MESSAGE_BYTES);
            tokio::spawn(
                tonic::transport::Server::builder()
                    .tcp_nodelay(true)
                    // HTTP/2's default 64 KiB windows cap a produce stream at one batch per
                    // round trip of window updates; give each stream room for many batches.
                    .initial_stream_window_size(STREAM_WINDOW)
                    .initial_connection_window_size(CONNECTION_WINDOW)
                    // Produce requests and Raft appends arrive as one frame per MiB, not
                    // one per 16 KiB (the default): h2 and tonic handle and copy each frame.
                    .max_frame_size(MAX_FRAME)
                    .add_service(api)
                    .add_service(groups)
                    .add_service(raft)
                    .serve_with_incoming_shutdown(TcpListenerStream::new(listener), async {
                        let _ = stopped.await;
                    }),
            )
        };

        let controller = Controller::start(
            config.node_id,
            &config.data_dir.join("controller"),
            brokers,
            &registry,
            &network,
            tuning.clone(),
        )
        .await?;
        if !controller.wait_for_leader(Duration::from_secs(10)).await {
            tracing::warn!(
                "no controller elected yet; serving anyway, metadata changes wait for one"
            );
        }
        let partitions = Arc::new(PartitionManager::new(
            config.node_id,
            &config.data_dir,
            registry,
            network,
            tuning,
        ));
        partitions.reconcile(&controller.state()).await;
        tokio::spawn(partitions.clone().follow(controller.subscribe()));
        let node = Arc::new(Node {
            node_id: config.node_id,
            controller,
            partitions,
            default_replication_factor: config.default_replication_factor,
        });
        let _ = ready.set(node.clone());
        let groups = GroupCoordinator::start(node.clone(), config.groups.clone());
        let _ = groups_ready.set(groups.clone());
        let housekeeping = tokio::spawn(housekeeping(node.clone()));
        tracing::info!(node_id = config.node_id, %addr, data_dir = %config.data_dir.display(), "broker ready");
        Ok(Self {
            addr,
            node,
            stop_server,
            server,
            housekeeping,
            groups,
        })
    }

    pub fn node(&self) -> &Arc<Node> {
        &self.node
    }

    /// Stops taking requests, stops every replica, then lets the server drain.
    /// Everything acknowledged is on disk already; this only makes the stop quick and
    /// quiet. Replicas stop before the drain (up to [`SERVER_DRAIN`]) so that the
    /// groups this broker leads elect new leaders at once instead of being kept,
    /// unreachable, by its heartbeats.
    pub async fn shutdown(self) {
        let _ = self.stop_server.send(());
        self.housekeeping.abort();
        self.groups.stop();
        self.node.partitions.shutdown().await;
        self.node.controller.shutdown_replica().await;
        match tokio::time::timeout(SERVER_DRAIN, self.server).await {
            Ok(Ok(Err(e))) => tracing::warn!(error = %e, "server ended with an error"),
            Err(_) => tracing::info!("closing client streams still open after {SERVER_DRAIN:?}"),
            _ => {}
        }
        tracing::info!("broker stopped");
    }
}

/// Retention and time-based segment rolls, for every hosted partition.
async fn housekeeping(node: Arc<Node>) {
    let mut tick = tokio::time::interval(HOUSEKEEPING_INTERVAL);
    loop {
        tick.tick().await;
        for p in node.partitions.all() {
            let log = p.replica.log();
            if let Err(e) = log.roll_if_aged() {
                tracing::warn!(topic = %p.topic, partition = p.partition, error = %e, "segment roll failed");
            }
            // Snapshot, then purge: only committed data goes, and Raft never misses it.
            match p.replica.enforce_retention(now_ms()).await {
                Ok(false) => {}
                Ok(true) => {
                    tracing::info!(topic = %p.topic, partition = p.partition, "retention purged old segments")
                }
                Err(e) => {
                    tracing::warn!(topic = %p.topic, partition = p.partition, error = %e, "retention failed")
                }
            }
        }
    }
}
