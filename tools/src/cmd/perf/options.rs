//! The command line of `sluice perf`: its subcommands' arguments and their parsers.
//! Only parsing and validation live here; nothing here talks to a broker.

use std::str::FromStr;
use std::time::Duration;

use clap::{ArgGroup, Args};
use sluice_client::{Acks, Compression};

use crate::args;

/// The topic to use, and whether to create it.
#[derive(Debug, Clone, Args)]
pub struct TopicOpts {
    /// Topic to benchmark.
    #[arg(long)]
    pub topic: String,
    /// Create the topic first (an existing topic is used as it is).
    #[arg(long)]
    pub create: bool,
    /// Partitions of the topic --create makes (default 1).
    #[arg(long, requires = "create", value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub partitions: Option<u32>,
    /// Replication factor of the topic --create makes (default: the broker's).
    #[arg(long, requires = "create", value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub replication_factor: Option<u32>,
}

/// How records are made and sent.
#[derive(Debug, Clone, Args)]
pub struct ProducerOpts {
    /// Bytes of each record's value.
    #[arg(long, value_name = "BYTES", value_parser = clap::value_parser!(u32).range(1..=(64 << 20)))]
    pub record_size: u32,
    /// Durability to wait for: all (Raft majority), leader, none.
    #[arg(long, default_value = "all")]
    pub acks: Acks,
    /// Target bytes of one batch (default: the producer's, 1 MiB).
    #[arg(long, value_name = "B", value_parser = clap::value_parser!(u64).range(1..))]
    pub batch_bytes: Option<u64>,
    /// How long a batch waits for more records, in milliseconds (default: the
    /// producer's, 5).
    #[arg(long, value_name = "L")]
    pub linger_ms: Option<u64>,
    /// Batch compression: none, lz4, zstd.
    #[arg(long, default_value = "none")]
    pub compression: Compression,
    /// Record keys: none, random (8 random bytes), or seq:K (key-0 .. key-(K-1) in
    /// turn).
    #[arg(long, default_value = "none", value_name = "none|random|seq:K")]
    pub keys: KeyMode,
}

/// `sluice perf produce`.
#[derive(Debug, Clone, Args)]
#[command(group(ArgGroup::new("amount").required(true).args(["records", "duration"])))]
pub struct PerfProduceArgs {
    #[command(flatten)]
    pub topic: TopicOpts,
    #[command(flatten)]
    pub producer: ProducerOpts,
    /// Records to send (over all producers).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pub records: Option<u64>,
    /// How long to send: seconds (15, 2.5) or with a unit (500ms, 2m).
    #[arg(long, value_name = "SECS", value_parser = parse_secs)]
    pub duration: Option<Duration>,
    /// Producers sending in parallel, each with its own buffers.
    #[arg(long, default_value_t = 1, value_name = "P", value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub producers: u32,
    /// Records per second over all producers (default: as fast as possible).
    #[arg(long, value_name = "RECORDS_PER_SEC", value_parser = parse_rate)]
    pub rate: Option<f64>,
    /// Send for this long before --duration starts and leave it out of every figure
    /// (connections, metadata and the broker's first pages warm up).
    #[arg(long, value_name = "SECS", value_parser = parse_secs, conflicts_with = "records")]
    pub warmup: Option<Duration>,
}

/// `sluice perf consume`.
#[derive(Debug, Clone, Args)]
#[command(group(ArgGroup::new("amount").args(["records", "duration"])))]
pub struct PerfConsumeArgs {
    /// Topic to read (every partition).
    #[arg(long)]
    pub topic: String,
    /// Stop after this many records (default: at the high watermarks seen at start).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pub records: Option<u64>,
    /// Stop after this long: seconds (15, 2.5) or with a unit (500ms, 2m).
    #[arg(long, value_name = "SECS", value_parser = parse_secs)]
    pub duration: Option<Duration>,
    /// Where every partition starts.
    #[arg(long, value_enum, default_value_t = StartAt::Earliest)]
    pub from: StartAt,
}

/// `--from` of `perf consume`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum StartAt {
    /// The oldest record still kept.
    Earliest,
    /// Only records produced after the start.
    Latest,
}

/// `sluice perf end-to-end`.
#[derive(Debug, Clone, Args)]
pub struct PerfEndToEndArgs {
    #[command(flatten)]
    pub topic: TopicOpts,
    #[command(flatten)]
    pub producer: ProducerOpts,
    /// Records per second to produce.
    #[arg(long, value_name = "RECORDS_PER_SEC", value_parser = parse_rate)]
    pub rate: f64,
    /// How long to produce: seconds (15, 2.5) or with a unit (500ms, 2m).
    #[arg(long, value_name = "SECS", value_parser = parse_secs)]
    pub duration: Duration,
    /// Produce and consume for this long before --duration starts and leave it out of
    /// every figure (connections, metadata and the broker's first pages warm up).
    #[arg(long, value_name = "SECS", value_parser = parse_secs)]
    pub warmup: Option<Duration>,
}

/// Parses a positive duration: plain (fractional) seconds, or with a unit.
pub fn parse_secs(s: &str) -> Result<Duration, String> {
    let t = s.trim();
    let d = match t.parse::<f64>() {
        Ok(secs) if secs.is_finite() && secs > 0.0 && secs < 1e9 => Duration::from_secs_f64(secs),
        Ok(_) => return Err(format!("invalid duration {s:?}: it must be positive")),
        Err(_) => args::parse_duration(t)?,
    };
    if d.is_zero() {
        return Err(format!("invalid duration {s:?}: it must be positive"));
    }
    Ok(d)
}

/// Parses a positive rate in records per second.
pub fn parse_rate(s: &str) -> Result<f64, String> {
    match s.trim().parse::<f64>() {
        Ok(r) if r.is_finite() && r > 0.0 => Ok(r),
        _ => Err(format!(
            "invalid rate {s:?}: give records per second, a positive number"
        )),
    }
}

/// `--keys`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyMode {
    /// No keys: the producer spreads records (sticky partitioning).
    None,
    /// 8 random bytes per record.
    Random,
    /// `key-0` .. `key-(K-1)`, in turn.
    Seq(u64),
}

impl FromStr for KeyMode {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        match s {
            "none" => return Ok(KeyMode::None),
            "random" => return Ok(KeyMode::Random),
            _ => {}
        }
        match s.strip_prefix("seq:").map(str::parse::<u64>) {
            Some(Ok(k)) if k > 0 => Ok(KeyMode::Seq(k)),
            _ => Err(format!(
                "invalid keys {s:?}: choose none, random, or seq:K with K at least 1"
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cmd::perf::PerfCommand;
    use crate::cmd::perf::produce::producer_config;
    use clap::Parser;

    fn parse(args: &[&str]) -> Result<PerfCommand, clap::Error> {
        let cli =
            crate::Cli::try_parse_from(["sluice", "perf"].iter().chain(args.iter()).copied())?;
        match cli.command {
            crate::Command::Perf(c) => Ok(c),
            other => panic!("{other:?}"),
        }
    }

    fn produce_args(args: &[&str]) -> PerfProduceArgs {
        match parse(&[&["produce"], args].concat()).unwrap() {
            PerfCommand::Produce(a) => a,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn produce_parses_with_defaults() {
        let a = produce_args(&[
            "--topic",
            "p1",
            "--record-size",
            "1024",
            "--records",
            "1000",
        ]);
        assert_eq!(a.topic.topic, "p1");
        assert!(!a.topic.create);
        assert_eq!(
            (a.topic.partitions, a.topic.replication_factor),
            (None, None)
        );
        assert_eq!(a.producer.record_size, 1024);
        assert_eq!((a.records, a.duration, a.rate), (Some(1000), None, None));
        assert_eq!(a.producers, 1);
        assert_eq!(a.producer.acks, Acks::All);
        assert_eq!(a.producer.compression, Compression::None);
        assert_eq!(a.producer.keys, KeyMode::None);
        assert_eq!((a.producer.batch_bytes, a.producer.linger_ms), (None, None));
    }

    #[test]
    fn produce_parses_every_option() {
        let a = produce_args(&[
            "--topic",
            "p8",
            "--create",
            "--partitions",
            "8",
            "--replication-factor",
            "3",
            "--record-size",
            "100",
            "--duration",
            "15",
            "--producers",
            "4",
            "--acks",
            "leader",
            "--batch-bytes",
            "262144",
            "--linger-ms",
            "10",
            "--compression",
            "zstd",
            "--keys",
            "seq:100",
            "--rate",
            "50000",
            "--warmup",
            "2",
        ]);
        assert!(a.topic.create);
        assert_eq!(a.warmup, Some(Duration::from_secs(2)));
        assert_eq!(
            (a.topic.partitions, a.topic.replication_factor),
            (Some(8), Some(3))
        );
        assert_eq!(
            (a.records, a.duration),
            (None, Some(Duration::from_secs(15)))
        );
        assert_eq!((a.producers, a.rate), (4, Some(50000.0)));
        assert_eq!(a.producer.acks, Acks::Leader);
        assert_eq!(a.producer.compression, Compression::Zstd);
        assert_eq!(a.producer.keys, KeyMode::Seq(100));
        assert_eq!(
            (a.producer.batch_bytes, a.producer.linger_ms),
            (Some(262144), Some(10))
        );
        let config = producer_config(
            &a.producer,
            &crate::Cli::try_parse_from(["sluice", "cluster", "info"])
                .unwrap()
                .global,
        );
        assert_eq!(config.batch_bytes, 262144);
        assert_eq!(config.linger, Duration::from_millis(10));
        assert_eq!(
            (config.acks, config.compression),
            (Acks::Leader, Compression::Zstd)
        );
        config.validate().unwrap();
    }

    #[test]
    fn produce_rejects_bad_arguments() {
        let base = ["produce", "--topic", "t", "--record-size", "10"];
        let with = |extra: &[&str]| parse(&[&base[..], extra].concat());
        assert!(with(&[]).is_err(), "--records or --duration is required");
        assert!(
            with(&["--records", "1", "--duration", "1"]).is_err(),
            "not both"
        );
        assert!(with(&["--records", "0"]).is_err());
        assert!(with(&["--duration", "0"]).is_err());
        assert!(with(&["--duration", "soon"]).is_err());
        assert!(
            with(&["--records", "1", "--partitions", "3"]).is_err(),
            "needs --create"
        );
        assert!(with(&["--records", "1", "--acks", "most"]).is_err());
        assert!(with(&["--records", "1", "--compression", "gzip"]).is_err());
        assert!(with(&["--records", "1", "--keys", "seq:0"]).is_err());
        assert!(with(&["--records", "1", "--rate", "0"]).is_err());
        assert!(with(&["--records", "1", "--rate", "-5"]).is_err());
        assert!(with(&["--records", "1", "--producers", "0"]).is_err());
        assert!(
            parse(&[
                "produce",
                "--topic",
                "t",
                "--record-size",
                "0",
                "--records",
                "1"
            ])
            .is_err()
        );
        assert!(parse(&["produce", "--record-size", "1", "--records", "1"]).is_err());
        assert!(with(&["--records", "1", "--create", "--partitions", "2"]).is_ok());
    }

    #[test]
    fn consume_and_end_to_end_parse() {
        let PerfCommand::Consume(c) = parse(&["consume", "--topic", "t"]).unwrap() else {
            panic!()
        };
        assert_eq!(
            (c.records, c.duration, c.from),
            (None, None, StartAt::Earliest)
        );
        let PerfCommand::Consume(c) = parse(&[
            "consume",
            "--topic",
            "t",
            "--duration",
            "500ms",
            "--from",
            "latest",
        ])
        .unwrap() else {
            panic!()
        };
        assert_eq!(
            (c.duration, c.from),
            (Some(Duration::from_millis(500)), StartAt::Latest)
        );
        assert!(
            parse(&[
                "consume",
                "--topic",
                "t",
                "--records",
                "1",
                "--duration",
                "1"
            ])
            .is_err()
        );
        assert!(parse(&["consume", "--topic", "t", "--from", "middle"]).is_err());

        let PerfCommand::EndToEnd(e) = parse(&[
            "end-to-end",
            "--topic",
            "t",
            "--record-size",
            "64",
            "--rate",
            "1000",
            "--duration",
            "2.5",
        ])
        .unwrap() else {
            panic!()
        };
        assert_eq!((e.rate, e.duration), (1000.0, Duration::from_millis(2500)));
        assert_eq!((e.producer.record_size, e.warmup), (64, None));
        assert!(
            parse(&[
                "end-to-end",
                "--topic",
                "t",
                "--record-size",
                "64",
                "--duration",
                "1"
            ])
            .is_err()
        );
        assert!(
            parse(&[
                "end-to-end",
                "--topic",
                "t",
                "--record-size",
                "64",
                "--rate",
                "1"
            ])
            .is_err()
        );
    }

    #[test]
    fn values_parse() {
        assert_eq!(parse_secs("15"), Ok(Duration::from_secs(15)));
        assert_eq!(parse_secs("0.25"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_secs("2m"), Ok(Duration::from_secs(120)));
        assert!(parse_secs("0").is_err() && parse_secs("0s").is_err() && parse_secs("-1").is_err());
        assert!(parse_secs("inf").is_err() && parse_secs("NaN").is_err());
        assert_eq!(parse_rate("1e3"), Ok(1000.0));
        assert!(parse_rate("0").is_err() && parse_rate("fast").is_err());
        assert_eq!("none".parse(), Ok(KeyMode::None));
        assert_eq!("random".parse(), Ok(KeyMode::Random));
        assert_eq!("seq:7".parse(), Ok(KeyMode::Seq(7)));
        for bad in ["seq:", "seq:x", "seq:0", "seq", "rand"] {
            assert!(
                bad.parse::<KeyMode>().unwrap_err().contains("none, random"),
                "{bad}"
            );
        }
    }

    #[test]
    fn a_warm_up_needs_a_duration_to_follow() {
        let count = [
            "produce",
            "--topic",
            "t",
            "--record-size",
            "1",
            "--records",
            "10",
        ];
        assert!(parse(&count).is_ok());
        assert!(parse(&[&count[..], &["--warmup", "1"]].concat()).is_err());
    }
}
