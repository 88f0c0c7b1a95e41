//! Broker settings: command-line flags, `SLUICE_*` environment variables and an
//! optional TOML file, in that order of precedence, over built-in defaults.
//!
//! With no settings at all a broker is node 1, listens on 127.0.0.1:9700, keeps its
//! data under `./data` and forms a cluster of one.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use serde::Deserialize;
use thiserror::Error;

use crate::group::GroupConfig;
use crate::metadata::state::MAX_PARTITIONS;
use crate::raft::RaftTuning;

pub const DEFAULT_LISTEN: &str = "127.0.0.1:9700";
pub const DEFAULT_DATA_DIR: &str = "./data";

#[derive(Debug, Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid config file {path}: {source}")]
    Parse {
        path: PathBuf,
        source: Box<toml::de::Error>,
    },
    #[error("invalid --peers entry '{0}': expected ID=HOST:PORT, e.g. 1=127.0.0.1:9700")]
    Peer(String),
    #[error("invalid --peer-dial entry '{0}': expected ID=HOST:PORT, e.g. 2=127.0.0.1:19702")]
    PeerDial(String),
    #[error("--peer-dial names this broker's own id {0}; a broker never dials itself")]
    DialSelf(u64),
    #[error("--peers lists brokers {peers:?} but not this broker's --node-id {node_id}")]
    SelfNotInPeers { node_id: u64, peers: Vec<u64> },
    #[error("node id 0 is reserved; use 1 or more")]
    ZeroNodeId,
    #[error("invalid {what}: {value}")]
    Invalid { what: &'static str, value: String },
}

/// Command-line flags; each may also come from its `SLUICE_*` variable.
#[derive(Debug, Clone, Default, Parser)]
#[command(name = "sluice-broker", version, about = "The Sluice message broker")]
pub struct BrokerArgs {
    /// TOML file with any of the settings below (snake_case keys).
    #[arg(long, env = "SLUICE_CONFIG")]
    pub config: Option<PathBuf>,
    /// This broker's id, unique in the cluster (default 1).
    #[arg(long, env = "SLUICE_NODE_ID")]
    pub node_id: Option<u64>,
    /// Address to serve clients and peers on (default 127.0.0.1:9700; port 0 picks one).
    #[arg(long, env = "SLUICE_LISTEN")]
    pub listen: Option<SocketAddr>,
    /// Address other brokers and clients use to reach this one (default: --listen).
    #[arg(long, env = "SLUICE_ADVERTISED_ADDR")]
    pub advertised_addr: Option<String>,
    /// Directory for all data (default ./data).
    #[arg(long, env = "SLUICE_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// The controller brokers, as ID=HOST:PORT,... (default: this broker alone).
    #[arg(long, env = "SLUICE_PEERS")]
    pub peers: Option<String>,
    /// Replication factor of topics created without one (default 1, capped by brokers).
    #[arg(long, env = "SLUICE_DEFAULT_REPLICATION_FACTOR")]
    pub default_replication_factor: Option<u32>,
    /// Consumer group session timeout in ms: a member silent this long is removed
    /// (default 10000; members may ask for 1000..=300000).
    #[arg(long, env = "SLUICE_GROUP_SESSION_TIMEOUT_MS")]
    pub group_session_timeout_ms: Option<u64>,
    /// How often group members heartbeat, in ms (default 1000).
    #[arg(long, env = "SLUICE_GROUP_HEARTBEAT_INTERVAL_MS")]
    pub group_heartbeat_interval_ms: Option<u64>,
    /// Partitions of the internal __consumer_offsets topic when it is created (default 6).
    #[arg(long, env = "SLUICE_OFFSETS_TOPIC_PARTITIONS")]
    pub offsets_topic_partitions: Option<u32>,
    /// How often this broker beats to each peer (the beat that drives every Raft
    /// group's elections), in ms (default 100).
    #[arg(long, env = "SLUICE_RAFT_HEARTBEAT_INTERVAL_MS")]
    pub raft_heartbeat_interval_ms: Option<u64>,
    /// A replica that hears no leader of its partition for a random time between this
    /// and twice this stands for election, in ms (default 300; at least three heartbeat
    /// intervals). Longer rides out longer stalls; shorter fails over sooner.
    #[arg(long, env = "SLUICE_RAFT_ELECTION_TIMEOUT_MS")]
    pub raft_election_timeout_ms: Option<u64>,
    /// Dial broker ID at ADDR instead of its advertised address, as ID=HOST:PORT,...
    /// (for tunnels, NAT and fault-injection proxies). Only broker-to-broker traffic
    /// (Raft and forwarded requests) uses it; clients still get advertised addresses.
    #[arg(long, env = "SLUICE_PEER_DIAL")]
    pub peer_dial: Option<String>,
    /// MiB of newly appended log this broker leaves in the page cache, over all its
    /// partitions; older appended pages are dropped once written back (default: an
    /// eighth of physical memory). Lower it when several brokers share a machine.
    #[arg(long, env = "SLUICE_LOG_CACHE_MIB")]
    pub log_cache_mib: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    node_id: Option<u64>,
    listen: Option<SocketAddr>,
    advertised_addr: Option<String>,
    data_dir: Option<PathBuf>,
    peers: Option<String>,
    default_replication_factor: Option<u32>,
    group_session_timeout_ms: Option<u64>,
    group_heartbeat_interval_ms: Option<u64>,
    offsets_topic_partitions: Option<u32>,
    raft_heartbeat_interval_ms: Option<u64>,
    raft_election_timeout_ms: Option<u64>,
    peer_dial: Option<String>,
    log_cache_mib: Option<u64>,
}

/// Resolved settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokerConfig {
    pub node_id: u64,
    pub listen: SocketAddr,
    /// `None` until known: defaults to the bound address once listening.
    pub advertised_addr: Option<String>,
    pub data_dir: PathBuf,
    /// Controller members: id → address. Empty means "this broker alone".
    pub peers: BTreeMap<u64, String>,
    pub default_replication_factor: u32,
    pub groups: GroupConfig,
    /// Raft timers of every partition and of the controller.
    pub raft: RaftTuning,
    /// Broker id → address this broker dials it at, overriding the advertised one.
    pub peer_dial: BTreeMap<u64, String>,
    /// Bytes of appended log left in the page cache (`None`: the default budget).
    /// Process-wide: the `sluice-broker` program applies it before any log opens.
    pub log_cache_bytes: Option<u64>,
}

impl BrokerConfig {
    pub fn from_args(args: BrokerArgs) -> Result<Self, ConfigError> {
        let file = match &args.config {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                    path: path.clone(),
                    source,
                })?;
                toml::from_str::<FileConfig>(&text).map_err(|e| ConfigError::Parse {
                    path: path.clone(),
                    source: Box::new(e),
                })?
            }
            None => FileConfig::default(),
        };
        let node_id = args.node_id.or(file.node_id).unwrap_or(1);
        if node_id == 0 {
            return Err(ConfigError::ZeroNodeId);
        }
        let groups = group_config(&args, &file)?;
        let raft = raft_tuning(&args, &file)?;
        let listen = match args.listen.or(file.listen) {
            Some(l) => l,
            None => DEFAULT_LISTEN.parse().map_err(|_| ConfigError::Invalid {
                what: "default listen address",
                value: DEFAULT_LISTEN.into(),
            })?,
        };
        let peers = match args.peers.or(file.peers) {
            Some(spec) => parse_peers(&spec)?,
            None => BTreeMap::new(),
        };
        if !peers.is_empty() && !peers.contains_key(&node_id) {
            return Err(ConfigError::SelfNotInPeers {
                node_id,
                peers: peers.keys().copied().collect(),
            });
        }
        let default_replication_factor = args
            .default_replication_factor
            .or(file.default_replication_factor)
            .unwrap_or(1);
        if default_replication_factor == 0 {
            return Err(ConfigError::Invalid {
                what: "default replication factor",
                value: "0".into(),
            });
        }
        let peer_dial = match args.peer_dial.or(file.peer_dial) {
            Some(spec) => parse_peers(&spec).map_err(|e| match e {
                ConfigError::Peer(entry) => ConfigError::PeerDial(entry),
                other => other,
            })?,
            None => BTreeMap::new(),
        };
        if peer_dial.contains_key(&node_id) {
            return Err(ConfigError::DialSelf(node_id));
        }
        let advertised_addr = args
            .advertised_addr
            .or(file.advertised_addr)
            .or_else(|| peers.get(&node_id).cloned());
        Ok(Self {
            node_id,
            listen,
            advertised_addr,
            data_dir: args
                .data_dir
                .or(file.data_dir)
                .unwrap_or_else(|| PathBuf::from(DEFAULT_DATA_DIR)),
            peers,
            default_replication_factor,
            groups,
            raft,
            peer_dial,
            log_cache_bytes: args
                .log_cache_mib
                .or(file.log_cache_mib)
                .map(|mib| mib.saturating_mul(1 << 20)),
        })
    }
}

/// Raft timers over [`RaftTuning`]'s defaults.
fn raft_tuning(args: &BrokerArgs, file: &FileConfig) -> Result<RaftTuning, ConfigError> {
    let mut tuning = RaftTuning::default();
    if let Some(ms) = args
        .raft_heartbeat_interval_ms
        .or(file.raft_heartbeat_interval_ms)
    {
        if ms == 0 {
            return Err(ConfigError::Invalid {
                what: "Raft heartbeat interval (ms, 1 or more)",
                value: ms.to_string(),
            });
        }
        tuning.heartbeat_interval = Duration::from_millis(ms);
    }
    let election = match args
        .raft_election_timeout_ms
        .or(file.raft_election_timeout_ms)
    {
        Some(ms) => Duration::from_millis(ms),
        None => tuning
            .election_timeout_min
            .max(tuning.heartbeat_interval * 3),
    };
    if election < tuning.heartbeat_interval * 3 {
        return Err(ConfigError::Invalid {
            what: "Raft election timeout (ms, at least three heartbeat intervals)",
            value: election.as_millis().to_string(),
        });
    }
    tuning.election_timeout_min = election;
    tuning.election_timeout_max = election * 2;
    Ok(tuning)
}

/// Consumer group settings over [`GroupConfig`]'s defaults.
fn group_config(args: &BrokerArgs, file: &FileConfig) -> Result<GroupConfig, ConfigError> {
    let mut groups = GroupConfig::default();
    if let Some(ms) = args
        .group_session_timeout_ms
        .or(file.group_session_timeout_ms)
    {
        groups.session_timeout = Duration::from_millis(ms);
        if groups.session_timeout < groups.min_session_timeout
            || groups.session_timeout > groups.max_session_timeout
        {
            return Err(ConfigError::Invalid {
                what: "group session timeout (ms, 1000..=300000)",
                value: ms.to_string(),
            });
        }
    }
    if let Some(ms) = args
        .group_heartbeat_interval_ms
        .or(file.group_heartbeat_interval_ms)
    {
        if ms == 0 {
            return Err(ConfigError::Invalid {
                what: "group heartbeat interval (ms)",
                value: ms.to_string(),
            });
        }
        groups.heartbeat_interval = Duration::from_millis(ms);
    }
    if let Some(n) = args
        .offsets_topic_partitions
        .or(file.offsets_topic_partitions)
    {
        if n == 0 || n > MAX_PARTITIONS {
            return Err(ConfigError::Invalid {
                what: "offsets topic partitions",
                value: n.to_string(),
            });
        }
        groups.offsets_partitions = n;
    }
    Ok(groups)
}

/// Parses `1=host:port,2=host:port`.
pub fn parse_peers(spec: &str) -> Result<BTreeMap<u64, String>, ConfigError> {
    let mut peers = BTreeMap::new();
    for part in spec.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (id, addr) = part
            .split_once('=')
            .ok_or_else(|| ConfigError::Peer(part.to_string()))?;
        let id: u64 = id
            .trim()
            .parse()
            .map_err(|_| ConfigError::Peer(part.to_string()))?;
        let addr = addr.trim();
        if id == 0
            || addr
                .rsplit_once(':')
                .is_none_or(|(_, port)| port.parse::<u16>().is_err())
        {
            return Err(ConfigError::Peer(part.to_string()));
        }
        if peers.insert(id, addr.to_string()).is_some() {
            return Err(ConfigError::Peer(part.to_string()));
        }
    }
    Ok(peers)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_settings_give_a_single_node_broker_under_data() {
        let c = BrokerConfig::from_args(BrokerArgs::default()).expect("defaults");
        assert_eq!(c.node_id, 1);
        assert_eq!(c.listen.to_string(), DEFAULT_LISTEN);
        assert_eq!(c.data_dir, PathBuf::from("./data"));
        assert!(c.peers.is_empty());
    }

    #[test]
    fn raft_timers_default_to_the_tuning_and_are_checked() {
        let c = BrokerConfig::from_args(BrokerArgs::default()).expect("defaults");
        assert_eq!(c.raft, RaftTuning::default());
        let args = |flags: &[&str]| {
            let mut all = vec!["sluice-broker"];
            all.extend_from_slice(flags);
            BrokerConfig::from_args(BrokerArgs::try_parse_from(all).expect("args"))
        };
        let c = args(&["--raft-heartbeat-interval-ms", "200"]).expect("slower beat");
        assert_eq!(c.raft.heartbeat_interval, Duration::from_millis(200));
        assert_eq!(
            (c.raft.election_timeout_min, c.raft.election_timeout_max),
            (Duration::from_millis(600), Duration::from_millis(1200)),
            "the election timeout follows a slower beat"
        );
        let c = args(&["--raft-election-timeout-ms", "1000"]).expect("longer");
        assert_eq!(c.raft.election_timeout_max, Duration::from_millis(2000));
        assert!(args(&["--raft-heartbeat-interval-ms", "0"]).is_err());
        assert!(
            args(&["--raft-election-timeout-ms", "250"]).is_err(),
            "under three beats"
        );
    }

    #[test]
    fn flags_override_the_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("broker.toml");
        std::fs::write(
            &path,
            "node_id = 2\ndata_dir = \"/var/sluice\"\npeers = \"1=a:1,2=b:2\"\n",
        )
        .expect("write");
        let args = BrokerArgs::try_parse_from([
            "sluice-broker",
            "--config",
            path.to_str().expect("utf8"),
            "--data-dir",
            "/tmp/x",
        ])
        .expect("args");
        let c = BrokerConfig::from_args(args).expect("config");
        assert_eq!((c.node_id, c.data_dir), (2, PathBuf::from("/tmp/x")));
        assert_eq!(c.advertised_addr.as_deref(), Some("b:2"));
    }

    #[test]
    fn group_settings_come_from_flags() {
        let args = BrokerArgs::try_parse_from([
            "sluice-broker",
            "--group-session-timeout-ms",
            "3000",
            "--group-heartbeat-interval-ms",
            "250",
            "--offsets-topic-partitions",
            "4",
        ])
        .expect("args");
        let c = BrokerConfig::from_args(args).expect("config");
        assert_eq!(c.groups.session_timeout, Duration::from_secs(3));
        assert_eq!(c.groups.heartbeat_interval, Duration::from_millis(250));
        assert_eq!(c.groups.offsets_partitions, 4);
        for bad in [
            ["--group-session-timeout-ms", "10"],
            ["--group-heartbeat-interval-ms", "0"],
            ["--offsets-topic-partitions", "0"],
        ] {
            let args = BrokerArgs::try_parse_from(["sluice-broker", bad[0], bad[1]]).expect("args");
            assert!(
                matches!(
                    BrokerConfig::from_args(args),
                    Err(ConfigError::Invalid { .. })
                ),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn peer_dial_comes_from_the_flag_or_the_file() {
        let args = BrokerArgs::try_parse_from([
            "sluice-broker",
            "--node-id",
            "1",
            "--peer-dial",
            "2=127.0.0.1:19702, 3=127.0.0.1:19703",
        ])
        .expect("args");
        let c = BrokerConfig::from_args(args).expect("config");
        assert_eq!(
            c.peer_dial,
            BTreeMap::from([
                (2, "127.0.0.1:19702".to_string()),
                (3, "127.0.0.1:19703".to_string())
            ])
        );
        assert!(
            BrokerConfig::from_args(BrokerArgs::default())
                .expect("defaults")
                .peer_dial
                .is_empty()
        );

        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("broker.toml");
        std::fs::write(&path, "node_id = 2\npeer_dial = \"1=tunnel:1\"\n").expect("write");
        let args = BrokerArgs {
            config: Some(path),
            ..Default::default()
        };
        let c = BrokerConfig::from_args(args).expect("config");
        assert_eq!(c.peer_dial, BTreeMap::from([(1, "tunnel:1".to_string())]));
    }

    #[test]
    fn bad_peer_dial_is_refused_with_a_reason() {
        let with = |spec: &str| {
            BrokerConfig::from_args(BrokerArgs {
                node_id: Some(1),
                peer_dial: Some(spec.into()),
                ..Default::default()
            })
        };
        let err = with("2=nowhere").expect_err("no port");
        assert!(matches!(&err, ConfigError::PeerDial(e) if e == "2=nowhere"));
        assert!(err.to_string().contains("--peer-dial"), "{err}");
        assert!(matches!(with("2=a:1,2=b:2"), Err(ConfigError::PeerDial(_))));
        assert!(matches!(with("1=a:1"), Err(ConfigError::DialSelf(1))));
    }

    #[test]
    fn the_log_cache_budget_comes_from_the_flag_or_the_file() {
        let c = BrokerConfig::from_args(BrokerArgs::default()).expect("defaults");
        assert_eq!(c.log_cache_bytes, None);
        let c = BrokerConfig::from_args(BrokerArgs {
            log_cache_mib: Some(512),
            ..Default::default()
        })
        .expect("flag");
        assert_eq!(c.log_cache_bytes, Some(512 << 20));
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("broker.toml");
        std::fs::write(&path, "log_cache_mib = 64\n").expect("write");
        let c = BrokerConfig::from_args(BrokerArgs {
            config: Some(path),
            ..Default::default()
        })
        .expect("file");
        assert_eq!(c.log_cache_bytes, Some(64 << 20));
    }

    #[test]
    fn bad_settings_are_refused_with_a_reason() {
        assert!(parse_peers("1=a").is_err());
        assert!(parse_peers("x=a:1").is_err());
        assert!(parse_peers("1=a:1,1=b:2").is_err());
        let args = BrokerArgs {
            node_id: Some(3),
            peers: Some("1=a:1,2=b:2".into()),
            ..Default::default()
        };
        assert!(matches!(
            BrokerConfig::from_args(args),
            Err(ConfigError::SelfNotInPeers { .. })
        ));
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("bad.toml");
        std::fs::write(&path, "nodeid = 2\n").expect("write");
        let args = BrokerArgs {
            config: Some(path),
            ..Default::default()
        };
        assert!(matches!(
            BrokerConfig::from_args(args),
            Err(ConfigError::Parse { .. })
        ));
    }
}
