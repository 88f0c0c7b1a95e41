//! Asking brokers directly what their own replicas hold, bypassing the client
//! library's routing: `DescribeTopic` marked `sluice-forwarded` (answered from the
//! broker's local replicas only) and `Fetch` from one broker.
//!
//! Every call is bounded by [`CALL_TIMEOUT`], so a paused or dead broker makes a
//! question fail rather than hang. Failures are returned as messages for the caller's
//! assertion; nothing here panics.

use std::time::{Duration, Instant};

use sluice_proto::batch::Batch;
use sluice_proto::v1::{self, sluice_client::SluiceClient};
use tonic::transport::{Channel, Endpoint};

/// Longest wait for one answer from one broker.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(5);

/// One record of a replica: its offset and its value as text.
pub type StoredRecord = (u64, String);

/// A client of the broker at `addr` only.
pub async fn raw_client(addr: &str) -> Result<SluiceClient<Channel>, String> {
    let channel = Endpoint::from_shared(format!("http://{addr}"))
        .map_err(|e| format!("bad address {addr}: {e}"))?
        .connect_timeout(Duration::from_secs(1))
        .timeout(CALL_TIMEOUT)
        .connect()
        .await
        .map_err(|e| format!("cannot connect to {addr}: {e}"))?;
    Ok(SluiceClient::new(channel).max_decoding_message_size(256 << 20))
}

/// `topic` as the broker at `addr` describes it from its own replicas only: marked as
/// forwarded, the request is not passed on to brokers hosting what it lacks.
pub async fn describe_on(addr: &str, topic: &str) -> Option<v1::DescribeTopicResponse> {
    describe(addr, topic, true).await
}

/// `topic` as the broker at `addr` describes it; `local` as in [`describe_on`].
pub async fn describe(addr: &str, topic: &str, local: bool) -> Option<v1::DescribeTopicResponse> {
    let mut c = raw_client(addr).await.ok()?;
    let mut req = tonic::Request::new(v1::DescribeTopicRequest { name: topic.into() });
    if local {
        req.metadata_mut().insert(
            "sluice-forwarded",
            tonic::metadata::MetadataValue::from_static("1"),
        );
    }
    let resp = tokio::time::timeout(CALL_TIMEOUT, c.describe_topic(req))
        .await
        .ok()?
        .ok()?
        .into_inner();
    resp.error.is_none().then_some(resp)
}

/// Every committed record of one partition (up to that replica's high watermark), read
/// from the replica at `addr`.
pub async fn read_replica(
    addr: &str,
    topic: &str,
    partition: u32,
) -> Result<Vec<StoredRecord>, String> {
    let read = async {
        let mut c = raw_client(addr).await?;
        let mut stream = c
            .fetch(v1::FetchRequest {
                topic: topic.into(),
                partition,
                offset: 0,
                max_bytes: 0,
                follow: false,
            })
            .await
            .map_err(|s| format!("fetch {topic}/{partition} from {addr}: {s}"))?
            .into_inner();
        let mut out = Vec::new();
        while let Some(resp) = stream
            .message()
            .await
            .map_err(|s| format!("fetch {topic}/{partition} from {addr}: {s}"))?
        {
            if let Some(e) = resp.error {
                return Err(format!("fetch {topic}/{partition} from {addr}: {e:?}"));
            }
            for bytes in resp.batches {
                let batch = Batch::decode(bytes)
                    .map_err(|e| format!("{topic}/{partition} on {addr}: bad batch: {e}"))?;
                for r in batch.records() {
                    let r = r.map_err(|e| format!("{topic}/{partition} on {addr}: {e}"))?;
                    let value = r.value.map(|v| String::from_utf8_lossy(&v).into_owned());
                    out.push((r.offset as u64, value.unwrap_or_default()));
                }
            }
        }
        Ok(out)
    };
    tokio::time::timeout(CALL_TIMEOUT * 4, read)
        .await
        .unwrap_or_else(|_| Err(format!("reading {topic}/{partition} from {addr} timed out")))
}

/// How often [`eventually`] asks again.
pub const POLL: Duration = Duration::from_millis(100);

/// Asks `probe` every [`POLL`] until it answers `Ok`, for at most `timeout`; then
/// returns its last `Err`, which should say what it was waiting for.
pub async fn eventually<T, F, Fut>(timeout: Duration, mut probe: F) -> Result<T, String>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, String>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        match probe().await {
            Ok(v) => return Ok(v),
            Err(e) if Instant::now() >= deadline => {
                return Err(format!("{e} (waited {timeout:?})"));
            }
            Err(_) => tokio::time::sleep(POLL).await,
        }
    }
}

/// Waits until every broker at `addrs` reports the same high watermark, at least `min`,
/// for every partition of `topic`; returns the watermarks.
pub async fn converged(
    addrs: &[String],
    topic: &str,
    min: &[u64],
    timeout: Duration,
) -> Result<Vec<u64>, String> {
    eventually(timeout, || async move {
        let mut per_broker = Vec::new();
        for addr in addrs {
            per_broker.push(describe_on(addr, topic).await.map(|d| {
                d.partitions
                    .iter()
                    .map(|p| p.high_watermark)
                    .collect::<Vec<_>>()
            }));
        }
        match per_broker.first() {
            Some(Some(first))
                if per_broker.iter().all(|h| h.as_ref() == Some(first))
                    && first.iter().zip(min).all(|(h, m)| h >= m)
                    && first.len() >= min.len() =>
            {
                Ok(first.clone())
            }
            _ => Err(format!(
                "replicas of {topic} did not converge: high watermarks per broker {per_broker:?} (want at least {min:?})"
            )),
        }
    })
    .await
}

/// The leader of each partition of `topic`, as the first broker at `addrs` that knows
/// a leader for every partition sees it.
pub async fn leaders(addrs: &[String], topic: &str, timeout: Duration) -> Result<Vec<u64>, String> {
    eventually(timeout, || async move {
        for addr in addrs {
            if let Some(d) = describe_on(addr, topic).await {
                let l: Vec<u64> = d.partitions.iter().map(|p| p.leader).collect();
                if l.iter().all(|&id| id != 0) {
                    return Ok(l);
                }
            }
        }
        Err(format!("{topic} still has partitions without a leader"))
    })
    .await
}
