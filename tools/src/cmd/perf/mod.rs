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

mod consume;
mod end_to_end;
mod options;
mod produce;
mod progress;
mod report;
mod workload;

pub use options::*;
pub use report::*;
pub use workload::*;

use consume::consume;
use end_to_end::end_to_end;
use produce::{Plan, produce};
use progress::Lines;

use std::io::Write as _;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, anyhow, bail};
use clap::Subcommand;
use sluice_client::{Admin, ClientError, Connection, NewTopic, TopicMetadata};
use tokio::sync::mpsc;

use crate::{GlobalArgs, Io};

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

pub(super) async fn prepare_topic(
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

#[cfg(test)]
mod tests {
    use super::*;

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
