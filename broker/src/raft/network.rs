//! Broker-to-broker Raft transport: one gRPC service (`sluice.raft.v1.Raft`) carries
//! the RPCs of every group between two brokers, each request keyed by its group id.
//!
//! Owns: the [`GroupRegistry`] that routes incoming requests to the group's `Raft`, the
//! server side ([`RaftService`]), the client side ([`Network`]: one shared, lazily
//! connected tonic `Channel` per peer address; [`GroupNetwork`] / [`PeerClient`] per
//! group), and the payload encoding. A peer is dialed at its address in the group's
//! membership unless [`NetworkOptions::dial`] overrides it (tunnels, NAT, fault
//! proxies): the membership keeps advertised addresses, dialing is a local choice. Must never panic on bad or unexpected input: an
//! unknown group, an undecodable payload or a stopped group is a typed error.
//!
//! Payloads are openraft's own request/response types, encoded as one wire-version
//! byte followed by `postcard`. postcard is compact (record batches travel as
//! length-prefixed bytes, unlike JSON's number arrays), maintained, and has a documented,
//! stable wire format; openraft keeps its types positional-format safe (see its
//! `SnapshotMeta`). The version byte covers openraft's serde layout changing between
//! releases: brokers refuse, rather than misread, a payload of another version.
//! Pre-vote travels on the `Vote` RPC, tagged.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::time::Duration;

use bytes::Bytes;
use openraft::errors::{
    Fatal, NetworkError, RPCError, RaftError, ReplicationClosed, StreamingError, Timeout,
    Unreachable,
};
use openraft::network::{RPCOption, RPCTypes, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, VoteRequest, VoteResponse,
};
use openraft::{OptionalSend, RaftNetworkV2, Snapshot};
use postcard::ser_flavors::Size;
use serde::Serialize;
use serde::de::DeserializeOwned;
use sluice_proto::raft::raft_client::RaftClient;
use sluice_proto::raft::raft_server::{self, RaftServer};
use sluice_proto::raft::{RaftRequest, RaftResponse};
use thiserror::Error;
use tonic::transport::{Channel, Endpoint};

use super::RaftHandle;
use super::abstain::Abstention;
use super::pulse::{Beat, BeatReply, Pulse};
use super::state_machine::{GroupSnapshot, PartitionSnapshot};
use super::types::{BasicNode, NodeId, SnapshotMeta, TypeConfig, Vote, decode_sharing};

/// Version byte in front of every payload.
pub const WIRE_VERSION: u8 = 1;

/// Largest Raft RPC either side accepts: room for one maximal entry plus framing.
pub const MAX_RPC_BYTES: usize = 512 << 20;

/// Least time an `AppendEntries` carrying entries gets. openraft gives every append
/// the heartbeat interval (100 ms), but a follower answers one only after its fsync,
/// which on a busy disk takes longer: the append then timed out and was sent again,
/// and under load replication (and with it every acks=all write) stalled for seconds
/// in retry storms. Heartbeats (no entries) keep the short limit.
pub const APPEND_WITH_ENTRIES_MIN_TTL: Duration = Duration::from_secs(2);

#[derive(Debug, Error)]
pub enum TransportError {
    #[error("Raft group {group_id} is not running on this broker")]
    UnknownGroup { group_id: u64 },
    #[error("Raft group {group_id} is already registered on this broker")]
    AlreadyRegistered { group_id: u64 },
    #[error("invalid peer address {addr:?}: {detail}")]
    BadAddress { addr: String, detail: String },
    #[error("cannot encode a Raft message: {0}")]
    Encode(String),
    #[error("cannot decode a Raft message: {0}")]
    Decode(String),
    #[error("Raft message has wire version {got}; this broker speaks version {WIRE_VERSION}")]
    WireVersion { got: u8 },
    #[error("Raft RPC timed out after {0:?}")]
    Timeout(Duration),
    #[error("Raft RPC failed: {0}")]
    Status(Box<tonic::Status>),
    #[error("peer could not handle the Raft request: {0}")]
    Remote(String),
    #[error(
        "the replica of Raft group {group_id} lost a damaged log tail and does not vote until it has caught up"
    )]
    Abstaining { group_id: u64 },
    #[error(
        "broker {leader} still leads Raft group {group_id} as far as this replica hears: no pre-vote"
    )]
    LeaderAlive { group_id: u64, leader: NodeId },
}

/// Encodes a payload: version byte, then postcard. The buffer is sized exactly first
/// (postcard's `Size` flavor counts without copying), so a large append is not copied
/// again each time its buffer would grow.
pub fn encode<T: Serialize>(value: &T) -> Result<Bytes, TransportError> {
    let encode_error = |e: postcard::Error| TransportError::Encode(e.to_string());
    let len = postcard::serialize_with_flavor::<T, Size, usize>(value, Size::default())
        .map_err(encode_error)?;
    let mut out = Vec::with_capacity(1 + len);
    out.push(WIRE_VERSION);
    let out = postcard::to_extend(value, out).map_err(encode_error)?;
    Ok(Bytes::from(out))
}

/// Decodes a payload written by [`encode`]. Record batches in it share `payload`'s
/// memory instead of being copied.
pub fn decode<T: DeserializeOwned>(payload: &Bytes) -> Result<T, TransportError> {
    match payload.split_first() {
        Some((&WIRE_VERSION, body)) => decode_sharing(payload, || postcard::from_bytes(body))
            .map_err(|e| TransportError::Decode(e.to_string())),
        Some((&got, _)) => Err(TransportError::WireVersion { got }),
        None => Err(TransportError::Decode("empty payload".into())),
    }
}

/// What an `AppendEntries` request carries.
pub type AppendEntriesRpc = AppendEntriesRequest<TypeConfig>;
/// What a `Vote` request carries: a vote or a pre-vote.
pub type VoteRpc = (VoteKind, VoteRequest<TypeConfig>);
/// What an `InstallSnapshot` request carries: the leader's vote and the whole snapshot.
pub type SnapshotRpc = (Vote, SnapshotMeta, PartitionSnapshot);

/// Which vote a `Vote` RPC carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
pub enum VoteKind {
    Vote,
    PreVote,
}

/// The groups running on this broker, by group id, and the broker's [`Pulse`]. Cheap
/// to clone.
#[derive(Clone, Default)]
pub struct GroupRegistry {
    inner: Arc<RegistryInner>,
}

#[derive(Default)]
struct RegistryInner {
    groups: RwLock<HashMap<u64, RaftHandle>>,
    /// Replicas that must not vote yet (see [`super::abstain`]).
    abstaining: RwLock<HashMap<u64, Arc<Abstention>>>,
    pulse: Arc<Pulse>,
}

/// A registry that does not keep the broker's groups alive (held by the pulse's task).
#[derive(Clone)]
pub struct WeakRegistry {
    inner: Weak<RegistryInner>,
}

impl WeakRegistry {
    pub fn upgrade(&self) -> Option<GroupRegistry> {
        self.inner.upgrade().map(|inner| GroupRegistry { inner })
    }
}

impl std::fmt::Debug for GroupRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GroupRegistry")
            .field("groups", &self.group_ids())
            .finish()
    }
}

impl GroupRegistry {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn downgrade(&self) -> WeakRegistry {
        WeakRegistry {
            inner: Arc::downgrade(&self.inner),
        }
    }

    /// This broker's pulse: the beats it hears and the timers of its elections.
    pub fn pulse(&self) -> &Arc<Pulse> {
        &self.inner.pulse
    }

    pub fn register(&self, group_id: u64, raft: RaftHandle) -> Result<(), TransportError> {
        let mut groups = self.inner.groups.write().unwrap_or_else(|p| p.into_inner());
        if groups.contains_key(&group_id) {
            return Err(TransportError::AlreadyRegistered { group_id });
        }
        groups.insert(group_id, raft.clone());
        drop(groups);
        self.inner.pulse.track(group_id, &raft);
        Ok(())
    }

    /// Keeps the group's replica out of elections while `abstention` is active.
    pub fn abstain(&self, group_id: u64, abstention: Arc<Abstention>) {
        self.inner
            .abstaining
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(group_id, abstention);
    }

    /// The group's abstention, while it lasts.
    pub fn abstention(&self, group_id: u64) -> Option<Arc<Abstention>> {
        let abstaining = self
            .inner
            .abstaining
            .read()
            .unwrap_or_else(|p| p.into_inner());
        abstaining.get(&group_id).filter(|a| a.active()).cloned()
    }

    pub fn contains(&self, group_id: u64) -> bool {
        self.inner
            .groups
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .contains_key(&group_id)
    }

    pub fn unregister(&self, group_id: u64) -> Option<RaftHandle> {
        self.inner.pulse.untrack(group_id);
        self.inner
            .abstaining
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&group_id);
        self.inner
            .groups
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&group_id)
    }

    pub fn get(&self, group_id: u64) -> Result<RaftHandle, TransportError> {
        self.inner
            .groups
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(&group_id)
            .cloned()
            .ok_or(TransportError::UnknownGroup { group_id })
    }

    pub fn group_ids(&self) -> Vec<u64> {
        let mut ids: Vec<u64> = self
            .inner
            .groups
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .keys()
            .copied()
            .collect();
        ids.sort_unstable();
        ids
    }
}

/// The server side: serves `sluice.raft.v1.Raft` for every registered group.
#[derive(Clone, Debug)]
pub struct RaftService {
    registry: GroupRegistry,
}

impl RaftService {
    pub fn new(registry: GroupRegistry) -> Self {
        Self { registry }
    }

    /// The tonic service, accepting messages up to [`MAX_RPC_BYTES`].
    pub fn into_server(self) -> RaftServer<Self> {
        RaftServer::new(self)
            .max_decoding_message_size(MAX_RPC_BYTES)
            .max_encoding_message_size(MAX_RPC_BYTES)
    }

    async fn handle<Req, Resp, F, Fut>(&self, req: RaftRequest, call: F) -> RaftResponse
    where
        Req: DeserializeOwned,
        Resp: Serialize,
        F: FnOnce(RaftHandle, Req) -> Fut,
        Fut: Future<Output = Result<Resp, TransportError>>,
    {
        let outcome = async {
            let raft = self.registry.get(req.group_id)?;
            let rpc: Req = decode(&req.payload)?;
            encode(&call(raft, rpc).await?)
        }
        .await;
        reply(outcome)
    }
}

fn reply(outcome: Result<Bytes, TransportError>) -> RaftResponse {
    match outcome {
        Ok(payload) => RaftResponse {
            payload,
            error: String::new(),
        },
        Err(e) => RaftResponse {
            payload: Bytes::new(),
            error: e.to_string(),
        },
    }
}

type Reply = Result<tonic::Response<RaftResponse>, tonic::Status>;

#[tonic::async_trait]
impl raft_server::Raft for RaftService {
    async fn append_entries(&self, request: tonic::Request<RaftRequest>) -> Reply {
        let req = request.into_inner();
        let abstention = self.registry.abstention(req.group_id);
        let resp = self
            .handle(req, |raft, rpc: AppendEntriesRpc| async move {
                let leader_commit = rpc.leader_commit;
                let resp = raft.append_entries(rpc).await;
                // Only a leader this replica follows sets the point it must reach.
                if let (Some(a), Ok(r)) = (abstention, &resp)
                    && !matches!(r, AppendEntriesResponse::HigherVote(_))
                {
                    a.heard_commit(leader_commit);
                }
                Ok(resp)
            })
            .await;
        Ok(tonic::Response::new(resp))
    }

    async fn vote(&self, request: tonic::Request<RaftRequest>) -> Reply {
        let req = request.into_inner();
        let group_id = req.group_id;
        if self.registry.abstention(group_id).is_some() {
            let error = TransportError::Abstaining { group_id };
            return Ok(tonic::Response::new(reply(Err(error))));
        }
        let pulse = self.registry.pulse().clone();
        let resp = self
            .handle(req, |raft, (kind, rpc): VoteRpc| async move {
                match kind {
                    VoteKind::Vote => Ok(raft.vote(rpc).await),
                    VoteKind::PreVote => match pulse.live_leader(group_id, &raft, &rpc.vote) {
                        Some(leader) => Err(TransportError::LeaderAlive { group_id, leader }),
                        None => Ok(raft.pre_vote(rpc).await),
                    },
                }
            })
            .await;
        Ok(tonic::Response::new(resp))
    }

    async fn install_snapshot(&self, request: tonic::Request<RaftRequest>) -> Reply {
        let resp = self
            .handle(
                request.into_inner(),
                |raft, (vote, meta, data): SnapshotRpc| async move {
                    let snapshot = Snapshot {
                        meta,
                        snapshot: data,
                    };
                    Ok(raft.install_full_snapshot(vote, snapshot).await)
                },
            )
            .await;
        Ok(tonic::Response::new(resp))
    }

    async fn beat(&self, request: tonic::Request<RaftRequest>) -> Reply {
        let outcome = decode::<Beat>(&request.into_inner().payload)
            .and_then(|beat| encode(&self.registry.pulse().on_beat(beat)));
        Ok(tonic::Response::new(reply(outcome)))
    }
}

/// How the client side connects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetworkOptions {
    /// Give up connecting to a peer after this long (the RPC then fails as unreachable).
    pub connect_timeout: Duration,
    /// HTTP/2 keep-alive ping interval on peer connections.
    pub keep_alive: Duration,
    /// Peers to dial somewhere other than their advertised address (`--peer-dial`).
    pub dial: PeerDial,
}

impl Default for NetworkOptions {
    fn default() -> Self {
        Self {
            connect_timeout: Duration::from_secs(1),
            keep_alive: Duration::from_secs(10),
            dial: PeerDial::default(),
        }
    }
}

/// Where this broker dials each peer: an override per broker id, else the address
/// the peer advertises. Cheap to clone.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PeerDial {
    overrides: Arc<BTreeMap<NodeId, String>>,
}

impl PeerDial {
    pub fn new(overrides: BTreeMap<NodeId, String>) -> Self {
        Self {
            overrides: Arc::new(overrides),
        }
    }

    /// The address to dial broker `id` at, given the address it advertises.
    pub fn addr<'a>(&'a self, id: NodeId, advertised: &'a str) -> &'a str {
        self.overrides.get(&id).map_or(advertised, String::as_str)
    }
}

/// The client side of a broker: one shared, lazily connected channel per peer address,
/// used by every group. Cheap to clone.
#[derive(Clone, Debug, Default)]
pub struct Network {
    inner: Arc<NetworkInner>,
}

#[derive(Debug, Default)]
struct NetworkInner {
    options: NetworkOptions,
    channels: Mutex<HashMap<String, Channel>>,
}

impl Network {
    pub fn new(options: NetworkOptions) -> Self {
        Self {
            inner: Arc::new(NetworkInner {
                options,
                channels: Mutex::new(HashMap::new()),
            }),
        }
    }

    /// The channel to `addr` (`host:port`), created on first use; it connects lazily and
    /// reconnects by itself.
    pub fn channel(&self, addr: &str) -> Result<Channel, TransportError> {
        let mut channels = self
            .inner
            .channels
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if let Some(c) = channels.get(addr) {
            return Ok(c.clone());
        }
        let bad = |e: tonic::transport::Error| TransportError::BadAddress {
            addr: addr.to_string(),
            detail: e.to_string(),
        };
        let opts = &self.inner.options;
        let channel = Endpoint::from_shared(format!("http://{addr}"))
            .map_err(bad)?
            .connect_timeout(opts.connect_timeout)
            .tcp_nodelay(true)
            .http2_keep_alive_interval(opts.keep_alive)
            .keep_alive_while_idle(true)
            .connect_lazy();
        channels.insert(addr.to_string(), channel.clone());
        Ok(channel)
    }

    /// Sends `beat` (encoded) to broker `target`, advertised at `addr`.
    pub async fn beat(
        &self,
        local: NodeId,
        target: NodeId,
        addr: &str,
        beat: Bytes,
        ttl: Duration,
    ) -> Result<BeatReply, TransportError> {
        let client = PeerClient {
            group_id: 0,
            local,
            target,
            addr: self.inner.options.dial.addr(target, addr).to_string(),
            network: self.clone(),
        };
        client.call(Rpc::Beat, beat, ttl).await
    }

    /// The openraft network factory of one group on this broker (`local` is its node id).
    pub fn group(&self, group_id: u64, local: NodeId) -> GroupNetwork {
        GroupNetwork {
            group_id,
            local,
            network: self.clone(),
        }
    }
}

/// openraft's `RaftNetworkFactory` for one group.
#[derive(Clone, Debug)]
pub struct GroupNetwork {
    group_id: u64,
    local: NodeId,
    network: Network,
}

impl RaftNetworkFactory<TypeConfig> for GroupNetwork {
    type Network = PeerClient;

    async fn new_client(&mut self, target: NodeId, node: &BasicNode) -> PeerClient {
        let addr = self.network.inner.options.dial.addr(target, &node.addr);
        PeerClient {
            group_id: self.group_id,
            local: self.local,
            target,
            addr: addr.to_string(),
            network: self.network.clone(),
        }
    }
}

#[derive(Debug, Clone, Copy)]
enum Rpc {
    AppendEntries,
    Vote,
    InstallSnapshot,
    Beat,
}

/// One group's connection to one peer.
#[derive(Debug, Clone)]
pub struct PeerClient {
    group_id: u64,
    local: NodeId,
    target: NodeId,
    addr: String,
    network: Network,
}

impl PeerClient {
    async fn call<Resp: DeserializeOwned>(
        &self,
        rpc: Rpc,
        payload: Bytes,
        ttl: Duration,
    ) -> Result<Resp, TransportError> {
        let channel = self.network.channel(&self.addr)?;
        let mut client = RaftClient::new(channel)
            .max_decoding_message_size(MAX_RPC_BYTES)
            .max_encoding_message_size(MAX_RPC_BYTES);
        let mut request = tonic::Request::new(RaftRequest {
            group_id: self.group_id,
            payload,
        });
        request.set_timeout(ttl);
        let sent = async {
            match rpc {
                Rpc::AppendEntries => client.append_entries(request).await,
                Rpc::Vote => client.vote(request).await,
                Rpc::InstallSnapshot => client.install_snapshot(request).await,
                Rpc::Beat => client.beat(request).await,
            }
        };
        let resp = tokio::time::timeout(ttl, sent)
            .await
            .map_err(|_| TransportError::Timeout(ttl))?
            .map_err(|s| TransportError::Status(Box::new(s)))?
            .into_inner();
        if !resp.error.is_empty() {
            return Err(TransportError::Remote(resp.error));
        }
        decode(&resp.payload)
    }

    fn rpc_error(&self, action: RPCTypes, e: TransportError) -> RPCError<TypeConfig> {
        match e {
            TransportError::Timeout(timeout) => RPCError::Timeout(Timeout {
                action,
                id: self.local,
                target: self.target,
                timeout,
            }),
            TransportError::Status(s) if s.code() != tonic::Code::Unavailable => {
                RPCError::Network(NetworkError::new(&TransportError::Status(s)))
            }
            other => RPCError::Unreachable(Unreachable::new(&other)),
        }
    }

    async fn send_vote(
        &self,
        kind: VoteKind,
        rpc: VoteRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<VoteResponse<TypeConfig>, RPCError<TypeConfig>> {
        let result: Result<VoteResponse<TypeConfig>, RaftError<TypeConfig>> = async {
            let payload = encode(&(kind, &rpc))?;
            self.call(Rpc::Vote, payload, option.hard_ttl()).await
        }
        .await
        .map_err(|e| self.rpc_error(RPCTypes::Vote, e))?;
        result.map_err(|e| RPCError::Unreachable(Unreachable::new(&e)))
    }
}

impl RaftNetworkV2<TypeConfig> for PeerClient {
    type SnapshotData = PartitionSnapshot;

    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<TypeConfig>, RPCError<TypeConfig>> {
        let ttl = if rpc.entries.is_empty() {
            option.hard_ttl()
        } else {
            option.hard_ttl().max(APPEND_WITH_ENTRIES_MIN_TTL)
        };
        let result: Result<AppendEntriesResponse<TypeConfig>, RaftError<TypeConfig>> = async {
            let payload = encode(&rpc)?;
            self.call(Rpc::AppendEntries, payload, ttl).await
        }
        .await
        .map_err(|e| self.rpc_error(RPCTypes::AppendEntries, e))?;
        // The peer's group has stopped: treat it as unreachable until it is back.
        result.map_err(|e| RPCError::Unreachable(Unreachable::new(&e)))
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<VoteResponse<TypeConfig>, RPCError<TypeConfig>> {
        self.send_vote(VoteKind::Vote, rpc, option).await
    }

    async fn pre_vote(
        &mut self,
        rpc: VoteRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<VoteResponse<TypeConfig>, RPCError<TypeConfig>> {
        self.send_vote(VoteKind::PreVote, rpc, option).await
    }

    async fn full_snapshot(
        &mut self,
        vote: Vote,
        snapshot: GroupSnapshot,
        cancel: impl Future<Output = ReplicationClosed> + OptionalSend + 'static,
        option: RPCOption,
    ) -> Result<SnapshotResponse<TypeConfig>, StreamingError<TypeConfig>> {
        let ttl = option.hard_ttl();
        let send = async {
            let payload = encode(&(&vote, &snapshot.meta, &snapshot.snapshot))?;
            self.call::<Result<SnapshotResponse<TypeConfig>, Fatal<TypeConfig>>>(
                Rpc::InstallSnapshot,
                payload,
                ttl,
            )
            .await
        };
        let result = tokio::select! {
            closed = cancel => return Err(StreamingError::Closed(closed)),
            r = send => r,
        };
        let result = result.map_err(|e| match self.rpc_error(RPCTypes::InstallSnapshot, e) {
            RPCError::Timeout(t) => StreamingError::Timeout(t),
            RPCError::Network(n) => StreamingError::Network(n),
            RPCError::Unreachable(u) => StreamingError::Unreachable(u),
            RPCError::RemoteError(r) => StreamingError::Unreachable(Unreachable::new(&r)),
        })?;
        result.map_err(|e| StreamingError::Unreachable(Unreachable::new(&e)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_carry_a_version_byte() {
        let enc = encode(&(VoteKind::PreVote, 7u64)).expect("encode");
        assert_eq!(enc[0], WIRE_VERSION);
        let back: (VoteKind, u64) = decode(&enc).expect("decode");
        assert_eq!(back, (VoteKind::PreVote, 7));
        let mut wrong = enc.to_vec();
        wrong[0] = 9;
        assert!(matches!(
            decode::<(VoteKind, u64)>(&Bytes::from(wrong)),
            Err(TransportError::WireVersion { got: 9 })
        ));
        assert!(matches!(
            decode::<(VoteKind, u64)>(&Bytes::new()),
            Err(TransportError::Decode(_))
        ));
        assert!(matches!(
            decode::<(VoteKind, u64)>(&Bytes::from_static(&[WIRE_VERSION, 0xff])),
            Err(TransportError::Decode(_))
        ));
    }

    #[tokio::test]
    async fn peers_are_dialed_at_their_override_else_as_advertised() {
        let dial = PeerDial::new(BTreeMap::from([(2, "127.0.0.1:19702".to_string())]));
        assert_eq!(dial.addr(2, "b2:9700"), "127.0.0.1:19702");
        assert_eq!(dial.addr(3, "b3:9700"), "b3:9700");
        let network = Network::new(NetworkOptions {
            dial,
            ..NetworkOptions::default()
        });
        let mut group = network.group(7, 1);
        let client = group.new_client(2, &BasicNode::new("b2:9700")).await;
        assert_eq!(client.addr, "127.0.0.1:19702");
        let client = group.new_client(3, &BasicNode::new("b3:9700")).await;
        assert_eq!(client.addr, "b3:9700");
    }

    #[tokio::test]
    async fn unknown_group_is_a_typed_error_not_a_panic() {
        let service = RaftService::new(GroupRegistry::new());
        let resp = raft_server::Raft::append_entries(
            &service,
            tonic::Request::new(RaftRequest {
                group_id: 42,
                payload: Bytes::from_static(b"garbage"),
            }),
        )
        .await
        .expect("reply")
        .into_inner();
        assert!(resp.payload.is_empty());
        assert!(resp.error.contains("group 42"), "{}", resp.error);
        assert!(matches!(
            GroupRegistry::new().get(42),
            Err(TransportError::UnknownGroup { group_id: 42 })
        ));
    }
}
