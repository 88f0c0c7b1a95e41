//! Answers about partitions this broker does not host, asked of brokers that do.
//!
//! Only a partition's replicas know its leader. So that any broker can route a client
//! to any leader (replication factor below the cluster size, or a broker whose
//! replica is not started yet), `Metadata` and `DescribeTopic` fill in such partitions
//! by asking their replicas' brokers with a `DescribeTopic` marked [`FORWARDED`]; a
//! forwarded request is answered from local replicas only, never forwarded again.
//! The brokers are asked in parallel, each bounded by [`PEER_TIMEOUT`], so a dead
//! broker delays an answer by at most that and costs only its partitions' leaders.
//! Brokers are dialed as the Raft transport dials them ([`PeerDial`]).

use std::collections::{BTreeSet, HashMap};
use std::sync::Mutex;
use std::time::Duration;

use sluice_proto::v1::{self, sluice_client::SluiceClient};
use tonic::transport::{Channel, Endpoint};

use super::MAX_MESSAGE_BYTES;
use crate::metadata::MetadataState;
use crate::raft::PeerDial;

/// gRPC metadata key marking a request one broker sent another on a client's behalf.
pub const FORWARDED: &str = "sluice-forwarded";

/// How long a forwarded request may take (connect included).
pub const PEER_TIMEOUT: Duration = Duration::from_millis(500);

/// Client channels to the other brokers, one per address, made lazily.
#[derive(Default)]
pub struct Peers {
    channels: Mutex<HashMap<String, Channel>>,
    dial: PeerDial,
}

impl Peers {
    pub fn new(dial: PeerDial) -> Self {
        Self {
            channels: Mutex::default(),
            dial,
        }
    }

    fn client(&self, addr: &str) -> Option<SluiceClient<Channel>> {
        Some(
            SluiceClient::new(self.channel(addr)?)
                .max_decoding_message_size(MAX_MESSAGE_BYTES)
                .max_encoding_message_size(MAX_MESSAGE_BYTES),
        )
    }

    /// The channel to the broker at `addr`, shared by every service's client.
    pub fn channel(&self, addr: &str) -> Option<Channel> {
        let mut channels = self.channels.lock().unwrap_or_else(|p| p.into_inner());
        let channel = match channels.get(addr) {
            Some(c) => c.clone(),
            None => {
                let c = Endpoint::from_shared(format!("http://{addr}"))
                    .ok()?
                    .connect_timeout(PEER_TIMEOUT)
                    .tcp_nodelay(true)
                    .connect_lazy();
                channels.insert(addr.to_string(), c.clone());
                c
            }
        };
        Some(channel)
    }

    /// Descriptions of `partitions` of `topic` from the brokers hosting them (never
    /// `me`). A partition is left out when none of its replicas' brokers answered
    /// with a leader. The leader's own answer wins, as it alone knows the in-sync set.
    pub async fn describe(
        &self,
        state: &MetadataState,
        me: u64,
        topic: &str,
        partitions: &[u32],
    ) -> HashMap<u32, v1::PartitionDescription> {
        let Ok(meta) = state.topic(topic) else {
            return HashMap::new();
        };
        let replicas_of = |p: u32| {
            meta.partitions
                .get(p as usize)
                .map(|m| m.replicas.as_slice())
                .unwrap_or_default()
        };
        let ask: BTreeSet<u64> = partitions
            .iter()
            .flat_map(|&p| replicas_of(p).iter().copied())
            .filter(|&id| id != me)
            .collect();
        let calls = ask.into_iter().filter_map(|id| {
            let addr = self.dial.addr(id, &state.brokers.get(&id)?.addr);
            let mut client = self.client(addr)?;
            let mut req = tonic::Request::new(v1::DescribeTopicRequest { name: topic.into() });
            req.metadata_mut()
                .insert(FORWARDED, tonic::metadata::MetadataValue::from_static("1"));
            Some(async move {
                let resp = tokio::time::timeout(PEER_TIMEOUT, client.describe_topic(req)).await;
                match resp {
                    Ok(Ok(r)) if r.get_ref().error.is_none() => Some((id, r.into_inner())),
                    Ok(Ok(r)) => {
                        tracing::debug!(broker = id, error = ?r.get_ref().error, "peer describe");
                        None
                    }
                    Ok(Err(status)) => {
                        tracing::debug!(broker = id, %status, "peer describe failed");
                        None
                    }
                    Err(_) => {
                        tracing::debug!(broker = id, "peer describe timed out");
                        None
                    }
                }
            })
        });
        let answers: Vec<(u64, v1::DescribeTopicResponse)> = futures::future::join_all(calls)
            .await
            .into_iter()
            .flatten()
            .collect();
        let mut out = HashMap::new();
        for &p in partitions {
            let replicas = replicas_of(p);
            let candidates: Vec<(u64, &v1::PartitionDescription)> = answers
                .iter()
                .filter(|(id, _)| replicas.contains(id))
                .filter_map(|(id, r)| {
                    r.partitions
                        .iter()
                        .find(|d| d.partition == p && d.leader != 0)
                        .map(|d| (*id, d))
                })
                .collect();
            let best = candidates
                .iter()
                .find(|(id, d)| d.leader == *id)
                .or_else(|| candidates.first());
            if let Some((_, d)) = best {
                out.insert(p, (*d).clone());
            }
        }
        out
    }
}
