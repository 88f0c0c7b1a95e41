//! Configuration: [`ClientConfig`] (how to reach the cluster, shared by every client
//! type), [`ProducerConfig`] and [`ConsumerConfig`].
//!
//! All three are plain structs with public fields and Kafka-like defaults; build them
//! with struct-update syntax (`ProducerConfig { linger: ..., ..Default::default() }`).
//! Each has a `validate` that the client constructors call, so a nonsensical setting
//! fails up front with [`ClientError::InvalidArgument`].

use std::time::Duration;

use sluice_proto::batch::{Compression, MAX_BATCH_BYTES};

use crate::error::{ClientError, Result};
use crate::types::{Acks, OffsetReset};

/// The port a broker listens on by default.
pub const DEFAULT_PORT: u16 = 9700;

/// How to reach a cluster, and how patient to be with it.
///
/// ```
/// use std::time::Duration;
/// use sluice_client::ClientConfig;
///
/// let config = ClientConfig {
///     request_timeout: Duration::from_secs(10),
///     ..ClientConfig::new(["10.0.0.1:9700", "10.0.0.2:9700"])
/// };
/// assert_eq!(config.bootstrap.len(), 2);
/// let parsed = ClientConfig::from_bootstrap("a:1, b:2").unwrap();
/// assert_eq!(parsed.bootstrap, ["a:1", "b:2"]);
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientConfig {
    /// Brokers to ask for metadata first, as `host:port`. Any one that answers is
    /// enough: the cluster's metadata names the rest.
    pub bootstrap: Vec<String>,
    /// How long one request may take before it counts as failed (and is retried
    /// where that is safe). Default 30 s.
    pub request_timeout: Duration,
    /// How long to wait for a TCP connection to a broker. Default 10 s.
    pub connect_timeout: Duration,
    /// First back-off between retries of a request. Default 100 ms.
    pub retry_backoff: Duration,
    /// Longest back-off between retries. Default 1 s.
    pub retry_backoff_max: Duration,
    /// How often an admin or metadata request is retried on retriable errors
    /// (leader moved, broker unreachable, timeout). Default 10.
    pub max_retries: u32,
    /// Largest gRPC message the client accepts from a broker. Default 256 MiB.
    pub max_message_bytes: usize,
    /// Cached metadata older than this is refreshed in the background even without
    /// an error pointing at it (new partitions, moved leaders). Default 5 min.
    pub metadata_max_age: Duration,
}

impl Default for ClientConfig {
    fn default() -> Self {
        Self {
            bootstrap: vec![format!("127.0.0.1:{DEFAULT_PORT}")],
            request_timeout: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(10),
            retry_backoff: Duration::from_millis(100),
            retry_backoff_max: Duration::from_secs(1),
            max_retries: 10,
            max_message_bytes: 256 << 20,
            metadata_max_age: Duration::from_secs(300),
        }
    }
}

impl ClientConfig {
    /// Defaults, with these bootstrap brokers.
    pub fn new<I, S>(bootstrap: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        Self {
            bootstrap: bootstrap.into_iter().map(Into::into).collect(),
            ..Self::default()
        }
    }

    /// Defaults, with the bootstrap brokers from a comma-separated list
    /// (`"host:port,host:port"`). Fails on an empty list or a bad address.
    pub fn from_bootstrap(list: &str) -> Result<Self> {
        let config = Self::new(
            list.split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(str::to_owned),
        );
        config.validate()?;
        Ok(config)
    }

    /// Checks the settings; every client constructor calls this.
    pub fn validate(&self) -> Result<()> {
        if self.bootstrap.is_empty() {
            return Err(ClientError::InvalidArgument(
                "no bootstrap brokers given: pass at least one host:port".into(),
            ));
        }
        for addr in &self.bootstrap {
            validate_addr(addr)?;
        }
        nonzero(self.request_timeout, "request_timeout")?;
        nonzero(self.connect_timeout, "connect_timeout")?;
        if self.max_message_bytes < 1024 {
            return Err(ClientError::InvalidArgument(format!(
                "max_message_bytes {} is too small: it must be at least 1024",
                self.max_message_bytes
            )));
        }
        Ok(())
    }
}

/// Checks a `host:port` broker address (an `http://` prefix is accepted).
pub(crate) fn validate_addr(addr: &str) -> Result<()> {
    let bare = addr.strip_prefix("http://").unwrap_or(addr);
    let bad = |why: &str| {
        Err(ClientError::InvalidArgument(format!(
            "broker address {addr:?} {why}: write it as host:port, e.g. 127.0.0.1:{DEFAULT_PORT}"
        )))
    };
    let Some((host, port)) = bare.rsplit_once(':') else {
        return bad("has no port");
    };
    if host.is_empty() || host.contains(['/', ' ']) {
        return bad("has no valid host");
    }
    match port.parse::<u16>() {
        Ok(p) if p != 0 => Ok(()),
        _ => bad("has no valid port"),
    }
}

fn nonzero(d: Duration, name: &str) -> Result<()> {
    if d.is_zero() {
        Err(ClientError::InvalidArgument(format!(
            "{name} must be greater than zero"
        )))
    } else {
        Ok(())
    }
}

/// Default `batch_bytes`: 1 MiB.
///
/// Kafka's historic default is 16 KiB. Sluice turns every batch into one Raft log
/// entry (frame, index entries, replication and a group-commit fsync per entry), so
/// per-batch costs weigh more than in Kafka. A partition moves at most
/// `max_in_flight` batches per round trip through the broker (append, fsync,
/// commit, answer), so under load the batch size bounds a partition's throughput:
/// one producer on 8 partitions of 1 KiB records, acknowledged after fsync, went from
/// 330k records/s with 64 KiB batches to 520k with 256 KiB and 580k with 1 MiB
/// (medians of 3 to 5 runs) on the 2-vCPU machine of `benches/compare.sh`. 1 MiB is Kafka's default
/// `max.request.size` and Redpanda's usual batch ceiling. It costs nothing at low
/// rates: with `linger` at 5 ms a batch is sent when the linger expires, however
/// small, and memory is only taken for records actually buffered.
pub const DEFAULT_BATCH_BYTES: usize = 1 << 20;

/// How the producer batches, retries and bounds its memory.
///
/// ```
/// use std::time::Duration;
/// use sluice_client::{Acks, ProducerConfig};
/// use sluice_client::batch::Compression;
///
/// let config = ProducerConfig {
///     acks: Acks::Leader,
///     linger: Duration::from_millis(20),
///     compression: Compression::Zstd,
///     ..ProducerConfig::default()
/// };
/// config.validate().unwrap();
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProducerConfig {
    /// Durability required before a record counts as delivered. Default `All`.
    pub acks: Acks,
    /// How long a partition's batch waits for more records before it is sent.
    /// Default 5 ms (Kafka 4's default).
    pub linger: Duration,
    /// Target size of one batch before compression; a batch is sent as soon as it
    /// reaches it. A single larger record travels alone. Default
    /// [`DEFAULT_BATCH_BYTES`] (64 KiB).
    pub batch_bytes: usize,
    /// Bytes of records the producer buffers (queued or in flight) before `send`
    /// waits for room. Default 32 MiB.
    pub buffer_memory: usize,
    /// How long `send` waits for buffer memory (or for the topic's metadata) before
    /// failing with [`ClientError::BufferFull`]. Default 60 s.
    pub max_block: Duration,
    /// Produce requests in flight per partition. Default 5. With more than 1, a
    /// retried batch can land after a later one (as in Kafka without idempotence):
    /// set 1 when order under failures matters.
    pub max_in_flight: usize,
    /// How often one batch is retried on retriable errors. Default unlimited,
    /// bounded by `delivery_timeout`.
    pub retries: u32,
    /// First back-off before re-sending a failed batch. Default 100 ms.
    pub retry_backoff: Duration,
    /// Longest back-off between re-sends. Default 1 s.
    pub retry_backoff_max: Duration,
    /// Upper bound on the time from `send` until the record is acknowledged or
    /// failed, retries included. Default 120 s.
    pub delivery_timeout: Duration,
    /// How long one produce request may wait for its answer; also sent to the
    /// broker as the request's timeout. Default 30 s.
    pub request_timeout: Duration,
    /// Codec for the records of each batch. Default none.
    pub compression: Compression,
    /// Idempotent produce, in effect with `acks: All` (the default): the producer
    /// gets a producer id from the cluster and numbers its batches per partition, and
    /// partition leaders append each batch once however often it is retried, so
    /// retries and leader failovers neither duplicate nor reorder records. Needs
    /// `max_in_flight` of at most [`MAX_IDEMPOTENT_IN_FLIGHT`]. Default true.
    pub idempotence: bool,
}

/// The most batches per partition an idempotent producer keeps in flight: brokers
/// remember the last few batches of each producer to answer retries of them.
pub const MAX_IDEMPOTENT_IN_FLIGHT: usize = 5;

impl Default for ProducerConfig {
    fn default() -> Self {
        Self {
            acks: Acks::All,
            linger: Duration::from_millis(5),
            batch_bytes: DEFAULT_BATCH_BYTES,
            buffer_memory: 32 << 20,
            max_block: Duration::from_secs(60),
            max_in_flight: 5,
            retries: u32::MAX,
            retry_backoff: Duration::from_millis(100),
            retry_backoff_max: Duration::from_secs(1),
            delivery_timeout: Duration::from_secs(120),
            request_timeout: Duration::from_secs(30),
            compression: Compression::None,
            idempotence: true,
        }
    }
}

impl ProducerConfig {
    /// Whether batches are stamped for idempotent produce (`idempotence` with
    /// `acks: All`; weaker acks do not promise the durability dedupe relies on).
    pub fn is_idempotent(&self) -> bool {
        self.idempotence && self.acks == Acks::All
    }

    /// Checks the settings; [`crate::Producer::new`] calls this.
    pub fn validate(&self) -> Result<()> {
        let bad = |msg: String| Err(ClientError::InvalidArgument(msg));
        if self.batch_bytes == 0 || self.batch_bytes > MAX_BATCH_BYTES {
            return bad(format!(
                "batch_bytes {} must be between 1 and {MAX_BATCH_BYTES}",
                self.batch_bytes
            ));
        }
        if self.buffer_memory < self.batch_bytes || self.buffer_memory > u32::MAX as usize {
            return bad(format!(
                "buffer_memory {} must be at least batch_bytes ({}) and at most {}",
                self.buffer_memory,
                self.batch_bytes,
                u32::MAX
            ));
        }
        if self.max_in_flight == 0 {
            return bad("max_in_flight must be at least 1".into());
        }
        if self.is_idempotent() && self.max_in_flight > MAX_IDEMPOTENT_IN_FLIGHT {
            return bad(format!(
                "max_in_flight {} exceeds {MAX_IDEMPOTENT_IN_FLIGHT}, the most an idempotent producer may keep in flight per partition: lower it or set idempotence to false",
                self.max_in_flight
            ));
        }
        nonzero(self.request_timeout, "request_timeout")?;
        nonzero(self.delivery_timeout, "delivery_timeout")?;
        if self.delivery_timeout < self.linger {
            return bad(format!(
                "delivery_timeout {:?} must be at least linger {:?}",
                self.delivery_timeout, self.linger
            ));
        }
        Ok(())
    }
}

/// How the consumer fetches.
///
/// ```
/// use sluice_client::{ConsumerConfig, OffsetReset};
///
/// let config = ConsumerConfig { auto_offset_reset: OffsetReset::Earliest, ..Default::default() };
/// config.validate().unwrap();
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsumerConfig {
    /// Start position of an assigned partition that was not `seek`ed, and where to
    /// go when the position falls out of the log. Default `Latest`, as in Kafka.
    pub auto_offset_reset: OffsetReset,
    /// Soft bound on the batch bytes of one fetch response (at least one batch is
    /// always sent). Default 1 MiB.
    pub fetch_max_bytes: u32,
    /// Fetch responses buffered ahead of the application, over all partitions.
    /// Default 16.
    pub prefetch: usize,
    /// First back-off before reconnecting a failed fetch stream. Default 100 ms.
    pub retry_backoff: Duration,
    /// Longest back-off between reconnects. Default 1 s.
    pub retry_backoff_max: Duration,
    /// A subscribed consumer commits the positions it reached every
    /// `auto_commit_interval`, before partitions are revoked, and when it leaves.
    /// Default true.
    pub enable_auto_commit: bool,
    /// Default 5 s, as Kafka.
    pub auto_commit_interval: Duration,
    /// How long the group coordinator waits for a heartbeat before it removes this
    /// member and gives its partitions to others. `None`: the broker's default
    /// (10 s unless configured).
    pub session_timeout: Option<Duration>,
    /// How long this member may take to release revoked partitions. `None`: the
    /// broker's default (60 s).
    pub rebalance_timeout: Option<Duration>,
    /// Shown by `sluice group describe`. Default "sluice-client".
    pub client_id: String,
}

impl Default for ConsumerConfig {
    fn default() -> Self {
        Self {
            auto_offset_reset: OffsetReset::Latest,
            fetch_max_bytes: 1 << 20,
            prefetch: 16,
            retry_backoff: Duration::from_millis(100),
            retry_backoff_max: Duration::from_secs(1),
            enable_auto_commit: true,
            auto_commit_interval: Duration::from_secs(5),
            session_timeout: None,
            rebalance_timeout: None,
            client_id: "sluice-client".into(),
        }
    }
}

impl ConsumerConfig {
    /// Checks the settings; [`crate::Consumer::new`] calls this.
    pub fn validate(&self) -> Result<()> {
        if self.fetch_max_bytes == 0 {
            return Err(ClientError::InvalidArgument(
                "fetch_max_bytes must be at least 1".into(),
            ));
        }
        if self.prefetch == 0 {
            return Err(ClientError::InvalidArgument(
                "prefetch must be at least 1".into(),
            ));
        }
        nonzero(self.auto_commit_interval, "auto_commit_interval")?;
        if let Some(t) = self.session_timeout {
            nonzero(t, "session_timeout")?;
        }
        if let Some(t) = self.rebalance_timeout {
            nonzero(t, "rebalance_timeout")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        ClientConfig::default().validate().unwrap();
        ProducerConfig::default().validate().unwrap();
        ConsumerConfig::default().validate().unwrap();
        assert_eq!(ProducerConfig::default().batch_bytes, 1 << 20);
    }

    #[test]
    fn bootstrap_lists_are_parsed_and_checked() {
        let c = ClientConfig::from_bootstrap(" a:1 ,b:2,,").unwrap();
        assert_eq!(c.bootstrap, ["a:1", "b:2"]);
        for bad in ["", ",", "nohost", ":9700", "h:0", "h:99999", "h:x", "a b:1"] {
            let err = ClientConfig::from_bootstrap(bad).unwrap_err();
            assert!(
                matches!(err, ClientError::InvalidArgument(_)),
                "{bad}: {err}"
            );
        }
        ClientConfig::new(["http://h:1", "[::1]:9700"])
            .validate()
            .unwrap();
    }

    #[test]
    fn producer_settings_are_checked() {
        let base = ProducerConfig::default();
        for bad in [
            ProducerConfig {
                batch_bytes: 0,
                ..base.clone()
            },
            ProducerConfig {
                buffer_memory: 10,
                ..base.clone()
            },
            ProducerConfig {
                max_in_flight: 0,
                ..base.clone()
            },
            ProducerConfig {
                delivery_timeout: Duration::from_millis(1),
                linger: Duration::from_secs(1),
                ..base.clone()
            },
            ProducerConfig {
                max_in_flight: MAX_IDEMPOTENT_IN_FLIGHT + 1,
                ..base.clone()
            },
        ] {
            assert!(bad.validate().is_err(), "{bad:?}");
        }
        for good in [
            ProducerConfig {
                max_in_flight: MAX_IDEMPOTENT_IN_FLIGHT + 1,
                idempotence: false,
                ..base.clone()
            },
            ProducerConfig {
                max_in_flight: 64,
                acks: Acks::Leader,
                ..base.clone()
            },
        ] {
            assert!(!good.is_idempotent() && good.validate().is_ok(), "{good:?}");
        }
    }
}
