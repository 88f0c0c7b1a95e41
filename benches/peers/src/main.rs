//! `peer-perf`: the load side of `benches/compare.sh` for the systems Sluice is
//! compared with, NATS JetStream (`nats`) and Redis Streams (`redis`).
//!
//! It runs the same three workloads as `sluice perf` (`produce`, `consume`,
//! `end-to-end`) with the same record sizes, batch size and in-flight window, and
//! prints the same one-line JSON summary (it renders `sluice perf`'s own report type),
//! so the script tabulates every system alike. Server settings (fsync policy, storage)
//! are the script's business: this program only connects, creates the stream it is
//! told to, and measures.

mod driver;
mod nats;
mod redis;

use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand, ValueEnum};
use sluice_tools::OutputFormat;
use sluice_tools::cmd::perf::{Report, parse_rate, parse_secs};

use crate::driver::{LoadShape, Publisher, Source};

/// Load generator for NATS JetStream and Redis Streams, reporting like `sluice perf`.
#[derive(Debug, Parser)]
#[command(name = "peer-perf")]
struct Cli {
    /// The system under test.
    #[arg(long, value_enum)]
    system: System,
    /// Its address: nats://127.0.0.1:4222 or redis://127.0.0.1:6379/.
    #[arg(long)]
    url: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum System {
    Nats,
    Redis,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Produce as fast as the window allows (or at --rate) and report the ack latency.
    Produce(ProduceArgs),
    /// Read a whole stream from its start and report the rate.
    Consume(ConsumeArgs),
    /// Produce at a fixed rate while a consumer follows; report both latencies.
    EndToEnd(EndToEndArgs),
}

/// The stream and how records are sent to it.
#[derive(Debug, Clone, Args)]
struct LoadArgs {
    /// Stream (JetStream) or key prefix (Redis) to use; it is recreated empty first.
    #[arg(long)]
    topic: String,
    /// Partitions: subjects `<topic>.<p>` of one JetStream stream, or Redis keys
    /// `<topic>:<p>`.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=4096))]
    partitions: u32,
    /// Bytes of each record's value.
    #[arg(long, value_parser = clap::value_parser!(u32).range(8..=(1 << 20)))]
    record_size: u32,
    /// Records per batch at full speed: this many bytes' worth, as `sluice perf`'s
    /// producer batches (1 MiB).
    #[arg(long, default_value_t = 1 << 20, value_parser = clap::value_parser!(u64).range(1..))]
    batch_bytes: u64,
    /// Requests in flight per partition, as the Sluice producer's `max_in_flight` (5):
    /// a producer keeps at most this many batches' worth of records per partition sent
    /// and not yet acknowledged, as many as the Sluice broker sees in flight. (Records
    /// a Sluice producer buffers beyond that wait in the client, not at the broker.)
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u64).range(1..))]
    max_in_flight: u64,
    /// Producers, each with its own connection and window.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=64))]
    producers: u32,
    /// How long to send: seconds (15, 2.5) or with a unit (500ms, 2m).
    #[arg(long, value_parser = parse_secs, default_value = "1h")]
    duration: Duration,
    /// Send for this long before --duration starts and leave it out of every figure,
    /// as `sluice perf --warmup` does.
    #[arg(long, value_parser = parse_secs, conflicts_with = "records")]
    warmup: Option<Duration>,
    /// Stop after this many records over all producers (and at --duration at the
    /// latest).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    records: Option<u64>,
}

#[derive(Debug, Args)]
struct ProduceArgs {
    #[command(flatten)]
    load: LoadArgs,
    /// Records per second over all producers (default: as fast as possible).
    #[arg(long, value_parser = parse_rate)]
    rate: Option<f64>,
}

#[derive(Debug, Args)]
struct ConsumeArgs {
    /// Stream (JetStream) or key prefix (Redis) to read, every partition.
    #[arg(long)]
    topic: String,
    /// Partitions of a Redis topic (JetStream reads the whole stream).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=4096))]
    partitions: u32,
}

#[derive(Debug, Args)]
struct EndToEndArgs {
    #[command(flatten)]
    load: LoadArgs,
    /// Records per second to produce.
    #[arg(long, value_parser = parse_rate)]
    rate: f64,
}

impl LoadArgs {
    fn shape(&self, rate: Option<f64>) -> LoadShape {
        let record = u64::from(self.record_size);
        let batch_records = (self.batch_bytes / record).max(1);
        LoadShape {
            topic: self.topic.clone(),
            partitions: self.partitions,
            record_size: self.record_size as usize,
            batch_records,
            window_records: batch_records * self.max_in_flight * u64::from(self.partitions),
            duration: self.duration,
            warmup: self.warmup.unwrap_or_default(),
            records: self.records,
            rate,
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(report) => {
            print!("{}", report.render(OutputFormat::Json));
            if let Report::Produce(r) = &report
                && r.failed > 0
            {
                eprintln!("error: {} record(s) were not stored", r.failed);
                return ExitCode::FAILURE;
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<Report> {
    match cli.system {
        System::Nats => {
            let url = cli.url.clone();
            let connect = move || nats::Nats::connect(url.clone());
            dispatch(cli.command, connect).await
        }
        System::Redis => {
            let url = cli.url.clone();
            let connect = move || redis::Redis::connect(url.clone());
            dispatch(cli.command, connect).await
        }
    }
}

/// What a peer module offers: a connection that creates topics, publishes and reads.
pub trait Peer: Publisher + Sized {
    type Reader: Source;

    /// Deletes the topic if it exists and creates it empty with `partitions`.
    fn recreate(
        &self,
        topic: &str,
        partitions: u32,
    ) -> impl Future<Output = anyhow::Result<()>> + Send;

    /// A reader of every partition from the start, and the records the topic holds now.
    fn reader(
        &self,
        topic: &str,
        partitions: u32,
    ) -> impl Future<Output = anyhow::Result<(Self::Reader, u64)>> + Send;
}

async fn dispatch<P, F, Fut>(command: Command, connect: F) -> anyhow::Result<Report>
where
    P: Peer,
    F: Fn() -> Fut,
    Fut: Future<Output = anyhow::Result<P>>,
{
    let admin = connect().await.context("cannot connect")?;
    match command {
        Command::Produce(a) => {
            admin.recreate(&a.load.topic, a.load.partitions).await?;
            let publishers = connect_all(&connect, a.load.producers).await?;
            driver::produce(publishers, a.load.shape(a.rate), None).await
        }
        Command::Consume(a) => {
            let (reader, backlog) = admin.reader(&a.topic, a.partitions).await?;
            driver::replay(&a.topic, reader, backlog).await
        }
        Command::EndToEnd(a) => {
            admin.recreate(&a.load.topic, a.load.partitions).await?;
            let (reader, _) = admin.reader(&a.load.topic, a.load.partitions).await?;
            let publishers = connect_all(&connect, a.load.producers).await?;
            driver::end_to_end(publishers, a.load.shape(Some(a.rate)), reader).await
        }
    }
}

async fn connect_all<P, F, Fut>(connect: &F, n: u32) -> anyhow::Result<Vec<P>>
where
    F: Fn() -> Fut,
    Fut: Future<Output = anyhow::Result<P>>,
{
    let mut all = Vec::new();
    for _ in 0..n {
        all.push(connect().await.context("cannot connect a producer")?);
    }
    Ok(all)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn produce(args: &[&str]) -> ProduceArgs {
        let cli = Cli::try_parse_from(
            [
                "peer-perf",
                "--system",
                "nats",
                "--url",
                "nats://x",
                "produce",
            ]
            .iter()
            .chain(args),
        )
        .unwrap();
        match cli.command {
            Command::Produce(a) => a,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn the_default_window_is_what_the_sluice_producer_has_in_flight() {
        let sluice = sluice_client::ProducerConfig::default();
        let a = produce(&[
            "--topic",
            "w1",
            "--partitions",
            "8",
            "--record-size",
            "1024",
        ]);
        assert_eq!(a.load.batch_bytes as usize, sluice.batch_bytes);
        assert_eq!(a.load.max_in_flight as usize, sluice.max_in_flight);
        let shape = a.load.shape(None);
        assert_eq!(shape.batch_records, 1024);
        assert_eq!(shape.window_records, 1024 * 5 * 8);
        let small = produce(&["--topic", "w2", "--partitions", "8", "--record-size", "100"]);
        assert_eq!(small.load.shape(None).batch_records, 10485);
    }

    #[test]
    fn records_and_rate_are_optional_and_checked() {
        let a = produce(&["--topic", "t", "--record-size", "64", "--records", "10"]);
        let shape = a.load.shape(a.rate);
        assert_eq!((shape.records, shape.rate), (Some(10), None));
        assert_eq!(shape.duration, Duration::from_secs(3600));
        for bad in [
            &["--topic", "t", "--record-size", "4"][..],
            &["--topic", "t", "--record-size", "64", "--records", "0"],
            &["--topic", "t", "--record-size", "64", "--rate", "0"],
            &["--topic", "t", "--record-size", "64", "--partitions", "0"],
        ] {
            let args = [
                "peer-perf",
                "--system",
                "redis",
                "--url",
                "redis://x",
                "produce",
            ];
            assert!(
                Cli::try_parse_from(args.iter().chain(bad)).is_err(),
                "{bad:?}"
            );
        }
    }
}
