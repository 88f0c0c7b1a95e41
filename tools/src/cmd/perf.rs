//! `sluice perf`: load generators in the spirit of `kafka-producer-perf-test`,
//! `kafka-consumer-perf-test` and the OpenMessaging Benchmark.
//!
//! - `perf produce`: N producers send `--record-size`-byte records (for a count or a
//!   duration, optionally at a fixed `--rate`) and report records/s, MB/s and the
//!   produce-acknowledgement latency (HDR histogram, from the `send` call to the ack);
//! - `perf consume`: reads every partition of a topic and reports records/s, MB/s;
//! - `perf end-to-end`: produces at a fixed rate while a consumer follows the topic;
//!   the producer stamps the send time into the first 8 bytes of each value and the
//!   consumer reports the produce→consume latency next to the ack latency.
//!
//! How it measures:
//! - the benchmark runs on its own multi-threaded Tokio runtime (one worker per
//!   core; the CLI's runtime is deliberately small), on its own thread; progress
//!   lines come back over a channel and go to stderr once a second, the summary goes
//!   to stdout (a table, or one JSON object with `--output json`);
//! - the value bytes are generated once (random letters, like Kafka's tool, so
//!   compression has something to do) and shared by every record (`Bytes` clones);
//!   only `end-to-end` copies them per record, to stamp the time;
//! - rate limiting is an interval schedule: record k of a producer is due at
//!   `start + k / rate`; a producer that falls behind catches up at once (no sleep
//!   for records already due), so the long-run rate is exact;
//! - latencies are recorded in microseconds in `hdrhistogram` (3 significant
//!   digits, up to an hour) and reported in milliseconds; MB is 10^6 bytes and
//!   counts keys plus values;
//! - throughput is records acknowledged (or consumed) over the time from the first
//!   send (or the consumer's start) to the last acknowledgement (or record);
//! - with `--warmup`, records sent in the warm-up (before `--duration` starts) count
//!   in no figure, as in the OpenMessaging Benchmark: the first second otherwise
//!   measures connecting, fetching metadata and the catch-up burst after it. Both
//!   sides decide by the send instant, which is also the end-to-end stamp.

use std::io::Write as _;
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, anyhow, bail};
use bytes::{Bytes, BytesMut};
use clap::{ArgGroup, Args, Subcommand};
use hdrhistogram::Histogram;
use serde_json::{Value, json};
use sluice_client::{
    Acks, Admin, ClientError, Compression, Connection, Consumer, ConsumerConfig, NewTopic, Offset,
    OffsetReset, Producer, ProducerConfig, ProducerRecord, RecordMetadata, TopicMetadata,
};
use tokio::sync::{mpsc, watch};

use crate::output::Table;
use crate::{GlobalArgs, Io, OutputFormat, args};

/// `sluice perf`.
#[derive(Debug, Subcommand)]
pub enum PerfCommand {
    /// Measure produce throughput and acknowledgement latency.
    Produce(PerfProduceArgs),
    /// Measure consume throughput over every partition of a topic.
    Consume(PerfConsumeArgs),
    /// Produce at a fixed rate while consuming, and measure produce→consume latency.
    EndToEnd(PerfEndToEndArgs),
}

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
    /// Target bytes of one batch (default: the producer's, 64 KiB).
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

/// A small, fast PRNG (SplitMix64): payloads and random keys, not cryptography.
#[derive(Debug, Clone)]
pub struct SplitMix64(u64);

impl SplitMix64 {
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}

/// A seed from the clock, different for every run.
pub fn seed() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0x5EED, |d| d.as_nanos() as u64)
}

/// The value every record shares: `size` random uppercase letters.
pub fn payload(size: usize, rng: &mut SplitMix64) -> Bytes {
    let mut v = Vec::with_capacity(size);
    while v.len() < size {
        let mut r = rng.next_u64();
        for _ in 0..8 {
            if v.len() == size {
                break;
            }
            v.push(b'A' + (r % 26) as u8);
            r >>= 8;
        }
    }
    Bytes::from(v)
}

impl KeyMode {
    /// The key of a producer's `n`-th record.
    fn key(self, n: u64, rng: &mut SplitMix64) -> Option<Bytes> {
        match self {
            KeyMode::None => None,
            KeyMode::Random => Some(Bytes::copy_from_slice(&rng.next_u64().to_be_bytes())),
            KeyMode::Seq(k) => Some(Bytes::from(format!("key-{}", n % k))),
        }
    }
}

/// Interval schedule for `--rate`: the `k`-th record is due at `start + k / rate`.
#[derive(Debug, Clone)]
pub struct Pacer {
    start: Instant,
    interval: Option<f64>,
    next: u64,
}

impl Pacer {
    /// A schedule of `rate` records per second from `start`; `None` is unlimited.
    pub fn new(start: Instant, rate: Option<f64>) -> Self {
        Self {
            start,
            interval: rate.map(|r| 1.0 / r),
            next: 0,
        }
    }

    /// When the next record is due (`None`: now, unlimited).
    pub fn next_due(&mut self) -> Option<Instant> {
        let interval = self.interval?;
        let at = self.start + Duration::from_secs_f64(self.next as f64 * interval);
        self.next += 1;
        Some(at)
    }
}

/// `total` split into `parts` shares that differ by at most one.
pub fn split_evenly(total: u64, parts: u32) -> Vec<u64> {
    let parts = u64::from(parts.max(1));
    (0..parts)
        .map(|i| total / parts + u64::from(i < total % parts))
        .collect()
}

/// Writes `nanos` (since the run's base instant) into the value's first 8 bytes.
pub fn stamp(template: &[u8], nanos: u64) -> Bytes {
    let mut v = BytesMut::from(template);
    v[..8].copy_from_slice(&nanos.to_be_bytes());
    v.freeze()
}

/// The time stamped by [`stamp`], if the value is long enough.
pub fn read_stamp(value: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(value.get(..8)?.try_into().ok()?))
}

/// Latency percentiles, in microseconds.
#[derive(Debug, Clone, PartialEq)]
pub struct Latency {
    pub count: u64,
    pub mean_us: f64,
    pub p50_us: u64,
    pub p99_us: u64,
    pub p999_us: u64,
    pub max_us: u64,
}

impl Latency {
    /// The summary of a histogram of microseconds (`None` if it is empty).
    pub fn from_histogram(h: &Histogram<u64>) -> Option<Self> {
        if h.is_empty() {
            return None;
        }
        Some(Self {
            count: h.len(),
            mean_us: h.mean(),
            p50_us: h.value_at_quantile(0.50),
            p99_us: h.value_at_quantile(0.99),
            p999_us: h.value_at_quantile(0.999),
            max_us: h.max(),
        })
    }

    fn json(&self) -> Value {
        json!({
            "count": self.count,
            "p50": ms(self.p50_us),
            "p99": ms(self.p99_us),
            "p99_9": ms(self.p999_us),
            "max": ms(self.max_us),
            "mean": round3(self.mean_us / 1000.0),
        })
    }

    fn row(&self, name: &str) -> Vec<String> {
        vec![
            name.to_owned(),
            self.count.to_string(),
            format!("{:.3}", self.p50_us as f64 / 1000.0),
            format!("{:.3}", self.p99_us as f64 / 1000.0),
            format!("{:.3}", self.p999_us as f64 / 1000.0),
            format!("{:.3}", self.max_us as f64 / 1000.0),
            format!("{:.3}", self.mean_us / 1000.0),
        ]
    }
}

fn ms(us: u64) -> f64 {
    round3(us as f64 / 1000.0)
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

/// A histogram of microseconds, 1 µs to 1 h, 3 significant digits.
pub fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("valid histogram bounds")
}

/// Records `us` microseconds (at least 1, saturating at the histogram's top).
pub fn record_us(h: &mut Histogram<u64>, us: u64) {
    h.saturating_record(us.max(1));
}

/// What `perf produce` and `perf end-to-end` measured.
#[derive(Debug, Clone, PartialEq)]
pub struct ProduceReport {
    /// `produce` or `end-to-end`.
    pub mode: &'static str,
    pub topic: String,
    /// Records acknowledged.
    pub records: u64,
    /// Records that failed.
    pub failed: u64,
    /// Key and value bytes acknowledged.
    pub bytes: u64,
    /// First send to last acknowledgement.
    pub elapsed: Duration,
    pub ack_latency: Option<Latency>,
    /// `end-to-end` only: records the consumer saw, and their latency.
    pub consumed: Option<u64>,
    pub e2e_latency: Option<Latency>,
    pub first_error: Option<String>,
}

/// What `perf consume` measured.
#[derive(Debug, Clone, PartialEq)]
pub struct ConsumeReport {
    pub topic: String,
    pub records: u64,
    pub bytes: u64,
    pub elapsed: Duration,
}

/// Either report.
#[derive(Debug, Clone, PartialEq)]
pub enum Report {
    Produce(ProduceReport),
    Consume(ConsumeReport),
}

fn per_sec(n: u64, elapsed: Duration) -> f64 {
    n as f64 / elapsed.as_secs_f64().max(1e-9)
}

fn mb(bytes: u64) -> f64 {
    bytes as f64 / 1e6
}

impl Report {
    /// The final summary: a table, or one JSON object (one line).
    pub fn render(&self, format: OutputFormat) -> String {
        match (self, format) {
            (Report::Produce(r), OutputFormat::Table) => {
                let mut out = format!(
                    "{} {} records ({:.2} MB) to '{}' in {:.3} s: {:.1} records/s, {:.2} MB/s\n",
                    if r.mode == "produce" {
                        "Produced"
                    } else {
                        "End-to-end: produced"
                    },
                    r.records,
                    mb(r.bytes),
                    r.topic,
                    r.elapsed.as_secs_f64(),
                    per_sec(r.records, r.elapsed),
                    mb(r.bytes) / r.elapsed.as_secs_f64().max(1e-9),
                );
                if let Some(consumed) = r.consumed {
                    out.push_str(&format!("Consumed {consumed} of them.\n"));
                }
                if r.failed > 0 {
                    out.push_str(&format!(
                        "{} records failed; first error: {}\n",
                        r.failed,
                        r.first_error.as_deref().unwrap_or("unknown")
                    ));
                }
                let mut t =
                    Table::new(&["LATENCY(ms)", "COUNT", "P50", "P99", "P99.9", "MAX", "MEAN"]);
                if let Some(l) = &r.ack_latency {
                    t.row(l.row("produce-ack"));
                }
                if let Some(l) = &r.e2e_latency {
                    t.row(l.row("end-to-end"));
                }
                if r.ack_latency.is_some() || r.e2e_latency.is_some() {
                    out.push_str(&t.render());
                }
                out
            }
            (Report::Produce(r), OutputFormat::Json) => {
                let mut v = json!({
                    "mode": r.mode,
                    "topic": r.topic,
                    "records": r.records,
                    "failed": r.failed,
                    "bytes": r.bytes,
                    "elapsed_s": round3(r.elapsed.as_secs_f64()),
                    "records_per_sec": round3(per_sec(r.records, r.elapsed)),
                    "mb_per_sec": round3(mb(r.bytes) / r.elapsed.as_secs_f64().max(1e-9)),
                    "ack_latency_ms": r.ack_latency.as_ref().map(Latency::json),
                });
                if r.mode != "produce" {
                    v["consumed"] = json!(r.consumed);
                    v["end_to_end_latency_ms"] = json!(r.e2e_latency.as_ref().map(Latency::json));
                }
                if let Some(e) = &r.first_error {
                    v["first_error"] = json!(e);
                }
                format!("{v}\n")
            }
            (Report::Consume(r), OutputFormat::Table) => format!(
                "Consumed {} records ({:.2} MB) from '{}' in {:.3} s: {:.1} records/s, {:.2} MB/s\n",
                r.records,
                mb(r.bytes),
                r.topic,
                r.elapsed.as_secs_f64(),
                per_sec(r.records, r.elapsed),
                mb(r.bytes) / r.elapsed.as_secs_f64().max(1e-9),
            ),
            (Report::Consume(r), OutputFormat::Json) => format!(
                "{}\n",
                json!({
                    "mode": "consume",
                    "topic": r.topic,
                    "records": r.records,
                    "bytes": r.bytes,
                    "elapsed_s": round3(r.elapsed.as_secs_f64()),
                    "records_per_sec": round3(per_sec(r.records, r.elapsed)),
                    "mb_per_sec": round3(mb(r.bytes) / r.elapsed.as_secs_f64().max(1e-9)),
                })
            ),
        }
    }

    /// The error to exit with after the summary, if records failed.
    fn failure(&self) -> Option<anyhow::Error> {
        match self {
            Report::Produce(r) if r.failed > 0 => Some(anyhow!(
                "{} record(s) were not stored; first error: {}",
                r.failed,
                r.first_error.as_deref().unwrap_or("unknown")
            )),
            _ => None,
        }
    }
}

/// Live counters the progress line reads.
#[derive(Debug, Default)]
struct Counters {
    acked: AtomicU64,
    failed: AtomicU64,
    bytes: AtomicU64,
    /// Ack latency since the last progress line.
    ack_sum_us: AtomicU64,
    ack_max_us: AtomicU64,
    consumed: AtomicU64,
    consumed_bytes: AtomicU64,
    e2e_sum_us: AtomicU64,
    e2e_max_us: AtomicU64,
}

type Lines = mpsc::UnboundedSender<String>;

/// Runs a `perf` command: the benchmark on its own runtime, progress to stderr, the
/// summary to stdout.
pub async fn run(cmd: PerfCommand, global: &GlobalArgs, io: &mut Io) -> anyhow::Result<()> {
    let (tx, mut lines) = mpsc::unbounded_channel::<String>();
    let g = global.clone();
    let bench = std::thread::Builder::new()
        .name("perf".into())
        .spawn(move || -> anyhow::Result<Report> {
            let workers = std::thread::available_parallelism().map_or(4, |n| n.get().max(2));
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(workers)
                .thread_name("perf-worker")
                .enable_all()
                .build()
                .context("cannot start the benchmark runtime")?;
            let result = rt.block_on(bench(cmd, g, tx));
            rt.shutdown_background();
            result
        })
        .context("cannot start the benchmark thread")?;
    while let Some(line) = lines.recv().await {
        io.stderr.write_all(line.as_bytes())?;
        io.stderr.flush()?;
    }
    let report = tokio::task::spawn_blocking(move || bench.join())
        .await
        .context("the benchmark thread failed")?
        .map_err(|_| anyhow!("the benchmark panicked"))??;
    io.stdout
        .write_all(report.render(global.output).as_bytes())?;
    io.stdout.flush()?;
    match report.failure() {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

async fn bench(cmd: PerfCommand, global: GlobalArgs, lines: Lines) -> anyhow::Result<Report> {
    let conn = global.connect().await?;
    match cmd {
        PerfCommand::Produce(a) => {
            let topic = prepare_topic(&conn, &a.topic, &global, &lines).await?;
            let _ = lines.send(format!(
                "Producing {}-byte records to '{}' ({} partition(s)) with {} producer(s), acks={}, compression={}{}{}{}\n",
                a.producer.record_size,
                topic.name,
                topic.partition_count(),
                a.producers,
                a.producer.acks,
                a.producer.compression,
                a.rate.map_or(String::new(), |r| format!(", rate={r} records/s")),
                match (a.records, a.duration) {
                    (Some(n), _) => format!(", {n} records"),
                    (_, Some(d)) => format!(", for {:.1} s", d.as_secs_f64()),
                    _ => String::new(),
                },
                a.warmup.map_or(String::new(), |w| format!(
                    " after {:.1} s of warm-up",
                    w.as_secs_f64()
                )),
            ));
            let plan = Plan {
                records: a.records,
                duration: a.duration,
                producers: a.producers,
                rate: a.rate,
                warmup: a.warmup.unwrap_or_default(),
                stamp: false,
                base: None,
                counters: Arc::default(),
            };
            produce(&conn, &a.topic.topic, &a.producer, plan, &global, lines).await
        }
        PerfCommand::EndToEnd(a) => end_to_end(&conn, a, &global, lines).await,
        PerfCommand::Consume(a) => consume(&conn, a, lines).await,
    }
}

async fn prepare_topic(
    conn: &Connection,
    t: &TopicOpts,
    global: &GlobalArgs,
    lines: &Lines,
) -> anyhow::Result<Arc<TopicMetadata>> {
    if t.create {
        let mut new = NewTopic::new(&t.topic, t.partitions.unwrap_or(1));
        if let Some(rf) = t.replication_factor {
            new = new.replication_factor(rf);
        }
        match Admin::new(conn.clone()).create_topic(new).await {
            Ok(()) => {}
            Err(ClientError::TopicAlreadyExists { .. }) => {
                let _ = lines.send(format!(
                    "Topic '{}' already exists; using it as it is.\n",
                    t.topic
                ));
            }
            Err(e) => {
                return Err(e).with_context(|| format!("cannot create topic '{}'", t.topic));
            }
        }
    }
    // Wait until every partition has a leader, so the first seconds measure the
    // broker and not an election.
    let deadline = Instant::now() + global.timeout;
    loop {
        let md = conn.refresh_metadata().await?;
        match md.topic(&t.topic) {
            Some(topic)
                if topic.partition_count() > 0
                    && topic.available_partitions().len() == topic.partition_count() as usize =>
            {
                return Ok(topic.clone());
            }
            None if !t.create => bail!("topic '{}' does not exist (add --create)", t.topic),
            other => {
                if Instant::now() >= deadline {
                    return match other {
                        Some(topic) => Ok(topic.clone()),
                        None => bail!("topic '{}' did not appear in time", t.topic),
                    };
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// What to send.
struct Plan {
    records: Option<u64>,
    duration: Option<Duration>,
    producers: u32,
    rate: Option<f64>,
    /// Sending before `duration` whose records count in no figure.
    warmup: Duration,
    /// Stamp the send time into each value (end-to-end), as nanoseconds since
    /// `base`, which is also where sending starts (default: now).
    stamp: bool,
    base: Option<Instant>,
    /// Shared with the progress line (and the end-to-end consumer).
    counters: Arc<Counters>,
}

/// What one producer's collector saw, warm-up left out (failures count always).
struct Collected {
    hist: Histogram<u64>,
    acked: u64,
    bytes: u64,
    failed: u64,
    first_error: Option<String>,
}

impl Collected {
    fn new() -> Self {
        Self {
            hist: new_histogram(),
            acked: 0,
            bytes: 0,
            failed: 0,
            first_error: None,
        }
    }
}

/// One producer's acknowledgements, recorded by its delivery callbacks (on the
/// producer's background task: no future per record to poll).
struct AckRecorder {
    counters: Arc<Counters>,
    /// Records sent before this only warm up: the progress line shows them, the
    /// report does not.
    measure_from: Instant,
    collected: std::sync::Mutex<Collected>,
    /// Records whose outcome has been recorded.
    done: AtomicU64,
    progress: tokio::sync::Notify,
}

impl AckRecorder {
    fn new(counters: Arc<Counters>, measure_from: Instant) -> Self {
        Self {
            counters,
            measure_from,
            collected: std::sync::Mutex::new(Collected::new()),
            done: AtomicU64::new(0),
            progress: tokio::sync::Notify::new(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Collected> {
        self.collected.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records the outcome of a record of `bytes` sent at `at`.
    fn record(&self, at: Instant, bytes: u64, result: sluice_client::Result<RecordMetadata>) {
        let c = &self.counters;
        match result {
            Ok(_) => {
                let us = at.elapsed().as_micros() as u64;
                if at >= self.measure_from {
                    let mut collected = self.lock();
                    record_us(&mut collected.hist, us);
                    collected.acked += 1;
                    collected.bytes += bytes;
                }
                c.acked.fetch_add(1, Ordering::Relaxed);
                c.bytes.fetch_add(bytes, Ordering::Relaxed);
                c.ack_sum_us.fetch_add(us, Ordering::Relaxed);
                c.ack_max_us.fetch_max(us, Ordering::Relaxed);
            }
            Err(e) => {
                c.failed.fetch_add(1, Ordering::Relaxed);
                let mut collected = self.lock();
                collected.failed += 1;
                collected.first_error.get_or_insert_with(|| e.to_string());
            }
        }
        self.done.fetch_add(1, Ordering::Release);
        self.progress.notify_waiters();
    }

    /// Waits until `sent` outcomes have been recorded, then hands them over.
    async fn finish(&self, sent: u64) -> Collected {
        loop {
            let progress = self.progress.notified();
            tokio::pin!(progress);
            progress.as_mut().enable();
            if self.done.load(Ordering::Acquire) >= sent {
                break;
            }
            progress.await;
        }
        std::mem::replace(&mut *self.lock(), Collected::new())
    }
}

fn producer_config(o: &ProducerOpts, global: &GlobalArgs) -> ProducerConfig {
    let base = ProducerConfig::default();
    let batch_bytes = o.batch_bytes.map_or(base.batch_bytes, |b| b as usize);
    ProducerConfig {
        acks: o.acks,
        compression: o.compression,
        linger: o.linger_ms.map_or(base.linger, Duration::from_millis),
        batch_bytes,
        buffer_memory: base.buffer_memory.max(batch_bytes.saturating_mul(4)),
        request_timeout: global.timeout,
        ..base
    }
}

/// Runs the producers to the plan; `base` is the instant end-to-end stamps count
/// from. Returns the report (without end-to-end numbers).
async fn produce(
    conn: &Connection,
    topic: &str,
    o: &ProducerOpts,
    plan: Plan,
    global: &GlobalArgs,
    lines: Lines,
) -> anyhow::Result<Report> {
    let config = producer_config(o, global);
    let counters = plan.counters.clone();
    let value = payload(o.record_size as usize, &mut SplitMix64::new(seed()));
    let start = plan.base.unwrap_or_else(Instant::now);
    let measure_from = start + plan.warmup;
    let deadline = plan.duration.map(|d| measure_from + d);
    let shares: Vec<Option<u64>> = match plan.records {
        Some(n) => split_evenly(n, plan.producers)
            .into_iter()
            .map(Some)
            .collect(),
        None => vec![None; plan.producers as usize],
    };
    let rate = plan.rate.map(|r| r / f64::from(plan.producers));
    let reporter = tokio::spawn(report_progress(
        counters.clone(),
        lines.clone(),
        start,
        measure_from,
        true,
    ));

    let mut tasks = Vec::new();
    for (i, share) in shares.into_iter().enumerate() {
        let producer = Producer::new(conn.clone(), config.clone())?;
        let recorder = Arc::new(AckRecorder::new(counters.clone(), measure_from));
        let sender = SendLoop {
            producer,
            topic: topic.to_owned(),
            value: value.clone(),
            keys: o.keys,
            rng: SplitMix64::new(seed() ^ (i as u64).wrapping_mul(0x9E37_79B9)),
            pacer: Pacer::new(start, rate),
            limit: share,
            deadline,
            stamp: plan.stamp.then_some(start),
            recorder: recorder.clone(),
        };
        tasks.push((tokio::spawn(sender.run()), recorder));
    }
    let mut total = Collected::new();
    for (sender, recorder) in tasks {
        let (sent, result) = sender.await.context("a producer task failed")?;
        // Every record sent gets its callback: close() waited for each outcome.
        let collected = recorder.finish(sent).await;
        total
            .hist
            .add(&collected.hist)
            .expect("same histogram bounds");
        total.acked += collected.acked;
        total.bytes += collected.bytes;
        total.failed += collected.failed;
        if let Err(e) = result {
            total.first_error.get_or_insert(format!("{e:#}"));
        }
        if let Some(e) = collected.first_error {
            total.first_error.get_or_insert(e);
        }
    }
    let elapsed = measure_from.elapsed();
    reporter.abort();
    Ok(Report::Produce(ProduceReport {
        mode: "produce",
        topic: topic.to_owned(),
        records: total.acked,
        failed: total.failed,
        bytes: total.bytes,
        elapsed,
        ack_latency: Latency::from_histogram(&total.hist),
        consumed: None,
        e2e_latency: None,
        first_error: total.first_error,
    }))
}

/// One producer's sending loop.
struct SendLoop {
    producer: Producer,
    topic: String,
    value: Bytes,
    keys: KeyMode,
    rng: SplitMix64,
    pacer: Pacer,
    limit: Option<u64>,
    deadline: Option<Instant>,
    stamp: Option<Instant>,
    recorder: Arc<AckRecorder>,
}

impl SendLoop {
    /// Sends until the plan says stop; returns how many records were handed to the
    /// producer (each gets its outcome recorded) and how sending ended.
    async fn run(mut self) -> (u64, anyhow::Result<()>) {
        let mut sent = 0u64;
        let result = loop {
            if self.limit.is_some_and(|n| sent >= n) {
                break Ok(());
            }
            // One clock read per record serves the deadline and the latency: at
            // hundreds of thousands of records a second, reads of the clock add up.
            let mut at = Instant::now();
            if let Some(due) = self.pacer.next_due() {
                if self.deadline.is_some_and(|d| due >= d) {
                    break Ok(());
                }
                if due > at {
                    tokio::time::sleep_until(due.into()).await;
                    at = Instant::now();
                }
            } else if self.deadline.is_some_and(|d| at >= d) {
                break Ok(());
            }
            let key = self.keys.key(sent, &mut self.rng);
            let bytes = (key.as_ref().map_or(0, Bytes::len) + self.value.len()) as u64;
            let value = match self.stamp {
                // The send instant, so the consumer leaves out exactly the warm-up
                // records the acknowledgements leave out.
                Some(base) => stamp(&self.value, at.duration_since(base).as_nanos() as u64),
                None => self.value.clone(),
            };
            let record = ProducerRecord {
                topic: self.topic.clone(),
                key,
                value: Some(value),
                ..ProducerRecord::default()
            };
            let recorder = self.recorder.clone();
            let sent_one = self
                .producer
                .send_with(record, move |result| recorder.record(at, bytes, result))
                .await;
            match sent_one {
                Ok(()) => sent += 1,
                Err(e) => break Err(anyhow!(e).context("cannot send")),
            }
        };
        // Send what lingers, and wait until the sender task has finished.
        let closed = self.producer.close().await.map_err(anyhow::Error::from);
        (sent, result.and(closed))
    }
}

/// One progress line a second: the last second's rates and latency.
async fn report_progress(
    counters: Arc<Counters>,
    lines: Lines,
    start: Instant,
    measure_from: Instant,
    producing: bool,
) {
    let mut tick = tokio::time::interval_at(
        (start + Duration::from_secs(1)).into(),
        Duration::from_secs(1),
    );
    let (mut last_acked, mut last_bytes, mut last_consumed, mut last_consumed_bytes) =
        (0u64, 0u64, 0u64, 0u64);
    let mut last = start;
    loop {
        tick.tick().await;
        let now = Instant::now();
        let secs = (now - last).as_secs_f64().max(1e-9);
        let warming_up = last < measure_from;
        last = now;
        let acked = counters.acked.load(Ordering::Relaxed);
        let bytes = counters.bytes.load(Ordering::Relaxed);
        let consumed = counters.consumed.load(Ordering::Relaxed);
        let consumed_bytes = counters.consumed_bytes.load(Ordering::Relaxed);
        let ack_sum = counters.ack_sum_us.swap(0, Ordering::Relaxed);
        let ack_max = counters.ack_max_us.swap(0, Ordering::Relaxed);
        let e2e_sum = counters.e2e_sum_us.swap(0, Ordering::Relaxed);
        let e2e_max = counters.e2e_max_us.swap(0, Ordering::Relaxed);
        let mut line = format!("[{:>4.0}s]", (now - start).as_secs_f64());
        if warming_up {
            line.push_str(" warm-up:");
        }
        if producing {
            let n = acked - last_acked;
            line.push_str(&format!(
                " produced {acked} ({:.1} records/s, {:.2} MB/s), ack latency avg {:.3} ms max {:.3} ms",
                n as f64 / secs,
                mb(bytes - last_bytes) / secs,
                if n > 0 { ack_sum as f64 / n as f64 / 1000.0 } else { 0.0 },
                ack_max as f64 / 1000.0,
            ));
        }
        if !producing || consumed > 0 {
            let n = consumed - last_consumed;
            line.push_str(&format!(
                "{} consumed {consumed} ({:.1} records/s, {:.2} MB/s)",
                if producing { ";" } else { "" },
                n as f64 / secs,
                mb(consumed_bytes - last_consumed_bytes) / secs,
            ));
            if e2e_sum > 0 || e2e_max > 0 {
                line.push_str(&format!(
                    ", end-to-end avg {:.3} ms max {:.3} ms",
                    if n > 0 {
                        e2e_sum as f64 / n as f64 / 1000.0
                    } else {
                        0.0
                    },
                    e2e_max as f64 / 1000.0
                ));
            }
        }
        let failed = counters.failed.load(Ordering::Relaxed);
        if failed > 0 {
            line.push_str(&format!(", {failed} failed"));
        }
        line.push('\n');
        if lines.send(line).is_err() {
            return;
        }
        (last_acked, last_bytes, last_consumed, last_consumed_bytes) =
            (acked, bytes, consumed, consumed_bytes);
    }
}

/// `perf consume`.
async fn consume(conn: &Connection, a: PerfConsumeArgs, lines: Lines) -> anyhow::Result<Report> {
    if a.from == StartAt::Latest && a.records.is_none() && a.duration.is_none() {
        bail!("with --from latest, give --records or --duration (there is nothing to read yet)");
    }
    let mut consumer = Consumer::new(
        conn.clone(),
        ConsumerConfig {
            auto_offset_reset: OffsetReset::None,
            prefetch: 64,
            fetch_max_bytes: 4 << 20,
            ..ConsumerConfig::default()
        },
    )?;
    let tps = consumer
        .assign_topic(&a.topic)
        .await
        .with_context(|| format!("cannot consume '{}'", a.topic))?;
    let start_at = match a.from {
        StartAt::Earliest => Offset::Earliest,
        StartAt::Latest => Offset::Latest,
    };
    // Without --records or --duration: stop at the high watermarks seen now.
    let bounded = a.records.is_none() && a.duration.is_none();
    let mut ends = std::collections::BTreeMap::new();
    for tp in &tps {
        consumer.seek(tp, start_at)?;
        let position = consumer.position(tp).await?;
        if bounded {
            let end = consumer.offset_for(tp, Offset::Latest).await?;
            if position < end {
                ends.insert(tp.partition, end);
            }
        }
    }
    let _ = lines.send(format!(
        "Consuming '{}' ({} partition(s)) from {}\n",
        a.topic,
        tps.len(),
        start_at
    ));
    let counters = Arc::new(Counters::default());
    let start = Instant::now();
    let deadline = a.duration.map(|d| start + d);
    let reporter = tokio::spawn(report_progress(
        counters.clone(),
        lines,
        start,
        start,
        false,
    ));
    let (mut records, mut bytes) = (0u64, 0u64);
    let mut last_record = start;
    while !(bounded && ends.is_empty()) && a.records.is_none_or(|n| records < n) {
        let next = match deadline {
            Some(d) => match tokio::time::timeout_at(d.into(), consumer.recv()).await {
                Ok(next) => next,
                Err(_) => {
                    last_record = d;
                    break;
                }
            },
            None => consumer.recv().await,
        };
        let Some(record) = next else { break };
        let record = record.with_context(|| format!("cannot consume '{}'", a.topic))?;
        if bounded {
            let Some(&end) = ends.get(&record.partition) else {
                continue;
            };
            if record.offset + 1 >= end {
                ends.remove(&record.partition);
            }
            if record.offset >= end {
                continue;
            }
        }
        records += 1;
        let size =
            record.key.as_ref().map_or(0, Bytes::len) + record.value.as_ref().map_or(0, Bytes::len);
        bytes += size as u64;
        counters.consumed.fetch_add(1, Ordering::Relaxed);
        counters
            .consumed_bytes
            .fetch_add(size as u64, Ordering::Relaxed);
        last_record = Instant::now();
    }
    reporter.abort();
    Ok(Report::Consume(ConsumeReport {
        topic: a.topic,
        records,
        bytes,
        elapsed: last_record - start,
    }))
}

/// `perf end-to-end`.
async fn end_to_end(
    conn: &Connection,
    a: PerfEndToEndArgs,
    global: &GlobalArgs,
    lines: Lines,
) -> anyhow::Result<Report> {
    if a.producer.record_size < 8 {
        bail!(
            "end-to-end needs --record-size of at least 8 (the send time is in the first 8 bytes)"
        );
    }
    let topic = prepare_topic(conn, &a.topic, global, &lines).await?;
    let mut consumer = Consumer::new(
        conn.clone(),
        ConsumerConfig {
            auto_offset_reset: OffsetReset::None,
            prefetch: 64,
            ..ConsumerConfig::default()
        },
    )?;
    let tps = consumer.assign_topic(&topic.name).await?;
    for tp in &tps {
        consumer.seek(tp, Offset::Latest)?;
        consumer.position(tp).await?;
    }
    let warmup = a.warmup.unwrap_or_default();
    let _ = lines.send(format!(
        "End-to-end on '{}' ({} partition(s)): {}-byte records at {} records/s for {:.1} s{}, acks={}\n",
        topic.name,
        tps.len(),
        a.producer.record_size,
        a.rate,
        a.duration.as_secs_f64(),
        if warmup.is_zero() {
            String::new()
        } else {
            format!(" after {:.1} s of warm-up", warmup.as_secs_f64())
        },
        a.producer.acks,
    ));
    let base = Instant::now();
    let counters = Arc::new(Counters::default());
    let (stop_tx, stop_rx) = watch::channel(None);
    let follower = tokio::spawn(follow(
        consumer,
        counters.clone(),
        stop_rx,
        warmup.as_nanos() as u64,
        base,
    ));
    let plan = Plan {
        records: None,
        duration: Some(a.duration),
        producers: 1,
        rate: Some(a.rate),
        warmup,
        stamp: true,
        base: Some(base),
        counters: counters.clone(),
    };
    let produced = produce(conn, &topic.name, &a.producer, plan, global, lines).await;
    // Give the consumer until every acknowledged record arrived, or a grace period.
    let acked = match &produced {
        Ok(Report::Produce(r)) => r.records,
        _ => 0,
    };
    let grace = global.timeout.min(Duration::from_secs(10));
    let _ = stop_tx.send(Some((acked, Instant::now() + grace)));
    let (hist, consumed) = follower.await.context("the consumer task failed")??;
    let Report::Produce(mut r) = produced? else {
        unreachable!("produce returns a produce report")
    };
    r.mode = "end-to-end";
    r.consumed = Some(consumed);
    r.e2e_latency = Latency::from_histogram(&hist);
    Ok(Report::Produce(r))
}

/// Follows the topic and records each record's age (now minus its stamp) until told
/// how many to expect and they all arrived, or the grace deadline passes. Records
/// stamped before `measure_from` (ns since `base`) are the warm-up: shown, not counted.
async fn follow(
    mut consumer: Consumer,
    counters: Arc<Counters>,
    mut stop: watch::Receiver<Option<(u64, Instant)>>,
    measure_from: u64,
    base: Instant,
) -> anyhow::Result<(Histogram<u64>, u64)> {
    let mut hist = new_histogram();
    let mut received = 0u64;
    loop {
        let target = *stop.borrow_and_update();
        if let Some((expected, _)) = target
            && received >= expected
        {
            break;
        }
        let far = Instant::now() + Duration::from_secs(365 * 24 * 3600);
        let until = target.map_or(far, |(_, d)| d);
        tokio::select! {
            next = consumer.recv() => {
                let Some(record) = next else { break };
                let record = record.context("cannot consume")?;
                let now = base.elapsed().as_nanos() as u64;
                let Some(sent) = record.value.as_deref().and_then(read_stamp) else {
                    continue;
                };
                if sent > now {
                    continue; // not ours
                }
                let us = (now - sent) / 1000;
                if sent >= measure_from {
                    record_us(&mut hist, us);
                    received += 1;
                }
                let size = record.value.as_ref().map_or(0, Bytes::len) + record.key.as_ref().map_or(0, Bytes::len);
                counters.consumed.fetch_add(1, Ordering::Relaxed);
                counters.consumed_bytes.fetch_add(size as u64, Ordering::Relaxed);
                counters.e2e_sum_us.fetch_add(us, Ordering::Relaxed);
                counters.e2e_max_us.fetch_max(us, Ordering::Relaxed);
            }
            changed = stop.changed(), if target.is_none() => {
                if changed.is_err() {
                    break;
                }
            }
            _ = tokio::time::sleep_until(until.into()), if target.is_some() => break,
        }
    }
    Ok((hist, received))
}

#[cfg(test)]
mod tests {
    use super::*;
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
    fn keys_follow_the_mode() {
        let mut rng = SplitMix64::new(1);
        assert_eq!(KeyMode::None.key(3, &mut rng), None);
        assert_eq!(
            KeyMode::Seq(10).key(13, &mut rng).as_deref(),
            Some(&b"key-3"[..])
        );
        let a = KeyMode::Random.key(0, &mut rng).unwrap();
        let b = KeyMode::Random.key(0, &mut rng).unwrap();
        assert_eq!(a.len(), 8);
        assert_ne!(a, b);
    }

    #[test]
    fn payloads_have_the_size_and_are_letters() {
        let mut rng = SplitMix64::new(42);
        for size in [1, 7, 8, 9, 1024] {
            let p = payload(size, &mut rng);
            assert_eq!(p.len(), size);
            assert!(p.iter().all(u8::is_ascii_uppercase));
        }
        let p = payload(4096, &mut rng);
        let distinct: std::collections::BTreeSet<u8> = p.iter().copied().collect();
        assert!(distinct.len() > 20, "{distinct:?}");
    }

    #[test]
    fn stamps_round_trip() {
        let template = payload(32, &mut SplitMix64::new(3));
        let v = stamp(&template, 123_456_789);
        assert_eq!(v.len(), 32);
        assert_eq!(read_stamp(&v), Some(123_456_789));
        assert_eq!(&v[8..], &template[8..]);
        assert_eq!(read_stamp(b"short"), None);
    }

    #[test]
    fn the_pacer_schedules_at_the_rate() {
        let start = Instant::now();
        let mut p = Pacer::new(start, Some(1000.0));
        let due: Vec<Instant> = (0..1001).map(|_| p.next_due().unwrap()).collect();
        assert_eq!(due[0], start);
        assert!((due[1] - start).abs_diff(Duration::from_millis(1)) < Duration::from_micros(1));
        assert!((due[1000] - start).abs_diff(Duration::from_secs(1)) < Duration::from_micros(1));
        let mut unlimited = Pacer::new(start, None);
        assert_eq!(unlimited.next_due(), None);
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

    #[tokio::test]
    async fn warm_up_records_show_in_progress_but_count_in_no_figure() {
        let counters = Arc::new(Counters::default());
        let start = Instant::now();
        let measure_from = start + Duration::from_millis(50);
        let recorder = AckRecorder::new(counters.clone(), measure_from);
        let stored = || {
            Ok(RecordMetadata {
                topic: "t".into(),
                partition: 0,
                offset: 0,
                timestamp: 0,
            })
        };
        recorder.record(start, 10, stored());
        recorder.record(start, 10, Err(ClientError::Closed("test".into())));
        recorder.record(measure_from, 7, stored());
        let collected = recorder.finish(3).await;
        assert_eq!((collected.acked, collected.bytes), (1, 7));
        assert_eq!(collected.hist.len(), 1);
        // A failure counts whenever it happens: a warm-up must not hide errors.
        assert_eq!(collected.failed, 1);
        assert!(collected.first_error.is_some());
        assert_eq!(counters.acked.load(Ordering::Relaxed), 2);
        assert_eq!(counters.bytes.load(Ordering::Relaxed), 17);
    }

    #[test]
    fn records_split_evenly_over_producers() {
        assert_eq!(split_evenly(10, 3), [4, 3, 3]);
        assert_eq!(split_evenly(2, 4), [1, 1, 0, 0]);
        assert_eq!(split_evenly(7, 1), [7]);
        assert_eq!(split_evenly(100, 7).iter().sum::<u64>(), 100);
    }

    fn latency() -> Latency {
        let mut h = new_histogram();
        for us in 1..=1000 {
            record_us(&mut h, us * 10);
        }
        Latency::from_histogram(&h).unwrap()
    }

    #[test]
    fn latency_percentiles_come_from_the_histogram() {
        assert_eq!(Latency::from_histogram(&new_histogram()), None);
        let l = latency();
        assert_eq!(l.count, 1000);
        // 3 significant digits.
        assert!(l.p50_us.abs_diff(5000) <= 5, "{l:?}");
        assert!(l.p99_us.abs_diff(9900) <= 10, "{l:?}");
        assert!(l.p999_us.abs_diff(9990) <= 10, "{l:?}");
        assert!(l.max_us.abs_diff(10_000) <= 10, "{l:?}");
        assert!((l.mean_us - 5005.0).abs() < 10.0, "{l:?}");
        let mut h = new_histogram();
        record_us(&mut h, 0);
        record_us(&mut h, u64::MAX);
        assert_eq!(h.len(), 2);
    }

    fn produce_report() -> ProduceReport {
        ProduceReport {
            mode: "produce",
            topic: "p1".into(),
            records: 20_000,
            failed: 0,
            bytes: 20_480_000,
            elapsed: Duration::from_secs(2),
            ack_latency: Some(latency()),
            consumed: None,
            e2e_latency: None,
            first_error: None,
        }
    }

    #[test]
    fn the_produce_summary_renders_as_a_table() {
        let out = Report::Produce(produce_report()).render(OutputFormat::Table);
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(
            lines[0],
            "Produced 20000 records (20.48 MB) to 'p1' in 2.000 s: 10000.0 records/s, 10.24 MB/s"
        );
        assert!(
            lines[1].starts_with("LATENCY(ms)") && lines[1].contains("P99.9"),
            "{out}"
        );
        assert!(
            lines[2].starts_with("produce-ack") && lines[2].contains("1000"),
            "{out}"
        );
        assert!(
            lines[2].contains("5.0") && lines[2].contains("10.0"),
            "{out}"
        );
        assert_eq!(lines.len(), 3, "{out}");

        let mut r = produce_report();
        r.failed = 3;
        r.first_error = Some("timed out".into());
        let report = Report::Produce(r);
        assert!(
            report
                .render(OutputFormat::Table)
                .contains("3 records failed; first error: timed out")
        );
        assert!(
            report
                .failure()
                .unwrap()
                .to_string()
                .contains("3 record(s) were not stored")
        );
        assert!(Report::Produce(produce_report()).failure().is_none());
    }

    #[test]
    fn the_produce_summary_renders_as_one_json_object() {
        let out = Report::Produce(produce_report()).render(OutputFormat::Json);
        assert_eq!(out.lines().count(), 1);
        let v: Value = serde_json::from_str(&out).unwrap();
        assert_eq!(v["mode"], "produce");
        assert_eq!(v["topic"], "p1");
        assert_eq!(v["records"], 20_000);
        assert_eq!(v["failed"], 0);
        assert_eq!(v["bytes"], 20_480_000);
        assert_eq!(v["elapsed_s"], 2.0);
        assert_eq!(v["records_per_sec"], 10_000.0);
        assert_eq!(v["mb_per_sec"], 10.24);
        let ack = &v["ack_latency_ms"];
        assert_eq!(ack["count"], 1000);
        for field in ["p50", "p99", "p99_9", "max", "mean"] {
            assert!(ack[field].as_f64().unwrap() > 0.0, "{field}: {ack}");
        }
        assert!(ack["p50"].as_f64().unwrap() < ack["p99"].as_f64().unwrap());
        assert!(v.get("end_to_end_latency_ms").is_none() && v.get("first_error").is_none());
    }

    #[test]
    fn the_end_to_end_summary_has_both_latencies() {
        let mut r = produce_report();
        r.mode = "end-to-end";
        r.consumed = Some(19_999);
        r.e2e_latency = Some(latency());
        let report = Report::Produce(r);
        let table = report.render(OutputFormat::Table);
        assert!(
            table.starts_with("End-to-end: produced 20000 records"),
            "{table}"
        );
        assert!(table.contains("Consumed 19999 of them."), "{table}");
        assert!(
            table.contains("\nproduce-ack") && table.contains("\nend-to-end"),
            "{table}"
        );
        let v: Value = serde_json::from_str(&report.render(OutputFormat::Json)).unwrap();
        assert_eq!(v["mode"], "end-to-end");
        assert_eq!(v["consumed"], 19_999);
        assert_eq!(v["end_to_end_latency_ms"]["count"], 1000);
    }

    #[test]
    fn the_consume_summary_renders() {
        let report = Report::Consume(ConsumeReport {
            topic: "p1".into(),
            records: 5000,
            bytes: 5_000_000,
            elapsed: Duration::from_millis(500),
        });
        assert_eq!(
            report.render(OutputFormat::Table),
            "Consumed 5000 records (5.00 MB) from 'p1' in 0.500 s: 10000.0 records/s, 10.00 MB/s\n"
        );
        let v: Value = serde_json::from_str(&report.render(OutputFormat::Json)).unwrap();
        assert_eq!(v["mode"], "consume");
        assert_eq!(
            (v["records"].as_u64(), v["records_per_sec"].as_f64()),
            (Some(5000), Some(10_000.0))
        );
        assert_eq!(v["mb_per_sec"], 10.0);
        assert!(report.failure().is_none());
    }

    #[test]
    fn an_unreachable_broker_fails_cleanly() {
        use std::sync::{Arc, Mutex};
        #[derive(Clone, Default)]
        struct Buf(Arc<Mutex<Vec<u8>>>);
        impl std::io::Write for Buf {
            fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
                self.0.lock().unwrap().extend_from_slice(b);
                Ok(b.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let (out, err) = (Buf::default(), Buf::default());
        let io = Io {
            stdin: Box::new(std::io::empty()),
            stdout: Box::new(out.clone()),
            stderr: Box::new(err.clone()),
        };
        let code = crate::run_with(
            [
                "sluice",
                "--bootstrap",
                "127.0.0.1:1",
                "--timeout",
                "2s",
                "perf",
                "produce",
                "--topic",
                "t",
                "--record-size",
                "10",
                "--records",
                "1",
            ],
            io,
        );
        assert_eq!(code, std::process::ExitCode::FAILURE);
        assert!(out.0.lock().unwrap().is_empty());
        let err = String::from_utf8(err.0.lock().unwrap().clone()).unwrap();
        assert!(
            err.starts_with("error: cannot reach a Sluice broker at 127.0.0.1:1"),
            "{err}"
        );
    }
}
