//! `sluice consume TOPIC`: print records, one per line.
//!
//! Without `--follow` the command stops once every partition has been read up to the
//! high watermark it had when the command started, so it terminates on a busy topic
//! too; with `--follow` it keeps printing as records commit, until interrupted.
//!
//! Start position: `--from-beginning`, `--offset N` (every selected partition),
//! `--from-time TS`; without any, the beginning when not following (a snapshot of
//! the topic, like `kcat -e`) and the end with `--follow` (only new records, like
//! `kafka-console-consumer`).
//!
//! With `--group G` the command is a member of consumer group G: it reads the share
//! of the topic's partitions the group gives it, from the group's committed offsets
//! (partitions without one start as above), commits its position every
//! `--commit-interval` and when it stops (also on Ctrl-C / SIGTERM, leaving the group
//! so its partitions move on at once), and notes on stderr the partitions it is
//! given and gives up. Without `--follow` it stops once its partitions are read up
//! to where they ended when it got them.

use std::collections::BTreeMap;
use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context as _, bail};
use clap::Args;
use sluice_client::{
    Consumer, ConsumerConfig, Offset, OffsetReset, RebalanceListener, TopicPartition,
};

use crate::output::{Template, record_json};
use crate::{GlobalArgs, Io, OutputFormat, args};

/// `sluice consume`.
#[derive(Debug, Clone, Args)]
pub struct ConsumeArgs {
    /// Topic to read.
    pub topic: String,
    /// Start at the oldest record still kept.
    #[arg(long, group = "start")]
    pub from_beginning: bool,
    /// Start at this offset (in every selected partition).
    #[arg(long, group = "start", value_name = "N")]
    pub offset: Option<u64>,
    /// Start at the first record at or after this time: RFC 3339
    /// (2024-05-01T12:00:00Z) or milliseconds since the epoch.
    #[arg(long, group = "start", value_name = "TS", value_parser = args::parse_timestamp)]
    pub from_time: Option<i64>,
    /// Read only this partition (default: all partitions).
    #[arg(long, value_name = "P")]
    pub partition: Option<u32>,
    /// Stop after printing N records.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pub max_records: Option<u64>,
    /// Keep printing new records as they arrive (otherwise stop at the high
    /// watermark seen at start).
    #[arg(long)]
    pub follow: bool,
    /// Line format with fields {key} {value} {offset} {partition} {timestamp}
    /// {topic}, e.g. '{offset} {key} {value}' (default: '{value}').
    #[arg(long, value_name = "TEMPLATE")]
    pub format: Option<Template>,
    /// Read as a member of this consumer group, from its committed offsets.
    #[arg(long, value_name = "GROUP", conflicts_with_all = ["offset", "from_time", "partition"])]
    pub group: Option<String>,
    /// With --group: how often the position is committed, e.g. 1s.
    #[arg(long, value_name = "DURATION", default_value = "5s", value_parser = args::parse_duration)]
    pub commit_interval: Duration,
}

impl ConsumeArgs {
    /// Where each selected partition starts.
    pub fn start(&self) -> Offset {
        match (self.from_beginning, self.offset, self.from_time) {
            (true, _, _) => Offset::Earliest,
            (_, Some(n), _) => Offset::At(n),
            (_, _, Some(ts)) => Offset::Timestamp(ts),
            _ if self.follow => Offset::Latest,
            _ => Offset::Earliest,
        }
    }
}

pub async fn run(a: ConsumeArgs, global: &GlobalArgs, io: &mut Io) -> anyhow::Result<()> {
    if a.format.is_some() && global.output == OutputFormat::Json {
        bail!("--format and --output json cannot be combined: pick one");
    }
    if let Some(group) = a.group.clone() {
        return run_group(&a, &group, global, io).await;
    }
    let conn = global.connect().await?;
    let topic = conn
        .topic(&a.topic)
        .await
        .with_context(|| format!("cannot consume '{}'", a.topic))?;
    let count = topic.partition_count();
    let partitions: Vec<u32> = match a.partition {
        Some(p) if p >= count => bail!(
            "topic '{}' has {count} partition(s) (0..{count}); --partition {p} does not exist",
            a.topic
        ),
        Some(p) => vec![p],
        None => topic.partitions.iter().map(|p| p.partition).collect(),
    };
    let tps: Vec<TopicPartition> = partitions
        .iter()
        .map(|&p| TopicPartition::new(&a.topic, p))
        .collect();
    let mut consumer = Consumer::new(
        conn,
        ConsumerConfig {
            // An explicit position that falls out of the log is an error, not a jump.
            auto_offset_reset: OffsetReset::None,
            ..ConsumerConfig::default()
        },
    )?;
    consumer.assign(tps.clone());
    let start = a.start();
    // Where each partition stops without --follow: its high watermark now.
    let mut ends: BTreeMap<u32, u64> = BTreeMap::new();
    for tp in &tps {
        consumer.seek(tp, start)?;
        let position = consumer
            .position(tp)
            .await
            .with_context(|| format!("cannot find {start} in {tp}"))?;
        if !a.follow {
            let end = consumer.offset_for(tp, Offset::Latest).await?;
            if position < end {
                ends.insert(tp.partition, end);
            }
        }
    }
    if !a.follow && ends.is_empty() {
        return Ok(());
    }

    let template = a.format.clone().unwrap_or_default();
    let mut line = Vec::with_capacity(256);
    let mut printed = 0u64;
    while a.max_records.is_none_or(|max| printed < max) {
        let Some(record) = consumer.recv().await else {
            break;
        };
        let record = record.with_context(|| format!("cannot consume '{}'", a.topic))?;
        if !a.follow {
            let Some(&end) = ends.get(&record.partition) else {
                continue;
            };
            if record.offset >= end {
                ends.remove(&record.partition);
                if ends.is_empty() {
                    break;
                }
                continue;
            }
        }
        line.clear();
        match global.output {
            OutputFormat::Table => template.render(&record, &mut line),
            OutputFormat::Json => line.extend_from_slice(record_json(&record).as_bytes()),
        }
        io.stdout.write_all(&line)?;
        printed += 1;
        if a.follow {
            io.stdout.flush()?;
        } else if ends
            .get(&record.partition)
            .is_some_and(|&end| record.offset + 1 >= end)
        {
            ends.remove(&record.partition);
            if ends.is_empty() {
                break;
            }
        }
    }
    io.stdout.flush()?;
    Ok(())
}

/// Notes the group's changes to this member's partitions, for stderr.
struct Notes(Arc<Mutex<Vec<String>>>);

impl Notes {
    fn push(&self, what: &str, partitions: &[TopicPartition]) {
        let list: Vec<String> = partitions.iter().map(ToString::to_string).collect();
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(format!("{what}: {}", list.join(", ")));
    }
}

impl RebalanceListener for Notes {
    fn on_assigned(&mut self, partitions: &[TopicPartition]) {
        self.push("assigned", partitions);
    }
    fn on_revoked(&mut self, partitions: &[TopicPartition]) {
        self.push("revoked", partitions);
    }
    fn on_lost(&mut self, partitions: &[TopicPartition]) {
        self.push("lost", partitions);
    }
}

/// How long a group member without `--follow` waits for a record before it checks
/// whether it has read everything.
const IDLE_CHECK: Duration = Duration::from_millis(200);

async fn run_group(
    a: &ConsumeArgs,
    group: &str,
    global: &GlobalArgs,
    io: &mut Io,
) -> anyhow::Result<()> {
    let conn = global.connect().await?;
    conn.topic(&a.topic)
        .await
        .with_context(|| format!("cannot consume '{}'", a.topic))?;
    let reset = match a.start() {
        Offset::Latest => OffsetReset::Latest,
        _ => OffsetReset::Earliest,
    };
    let mut consumer = Consumer::new(
        conn,
        ConsumerConfig {
            auto_offset_reset: reset,
            auto_commit_interval: a.commit_interval,
            client_id: "sluice-cli".into(),
            ..ConsumerConfig::default()
        },
    )?;
    let notes = Arc::new(Mutex::new(Vec::new()));
    consumer.set_rebalance_listener(Notes(notes.clone()));
    consumer.subscribe(group, [a.topic.clone()])?;
    let template = a.format.clone().unwrap_or_default();
    let mut line = Vec::with_capacity(256);
    let mut printed = 0u64;
    // Where each partition stops without --follow: its end when first assigned here.
    let mut ends: BTreeMap<TopicPartition, u64> = BTreeMap::new();
    let mut stop = std::pin::pin!(stop_signal());
    while a.max_records.is_none_or(|max| printed < max) {
        // Wake up now and then (records or not) to print notes and check progress.
        let next = tokio::select! {
            biased;
            () = &mut stop => break,
            next = tokio::time::timeout(IDLE_CHECK, consumer.recv()) => next.ok(),
        };
        for note in std::mem::take(&mut *notes.lock().unwrap_or_else(|p| p.into_inner())) {
            writeln!(io.stderr, "{note}")?;
            io.stderr.flush()?;
        }
        match next {
            Some(None) => break,
            Some(Some(Ok(record))) => {
                line.clear();
                match global.output {
                    OutputFormat::Table => template.render(&record, &mut line),
                    OutputFormat::Json => line.extend_from_slice(record_json(&record).as_bytes()),
                }
                io.stdout.write_all(&line)?;
                io.stdout.flush()?;
                printed += 1;
            }
            Some(Some(Err(e))) if e.is_retriable() => {
                writeln!(io.stderr, "warning: {e} (retrying)")?;
            }
            Some(Some(Err(e))) => {
                return Err(e)
                    .with_context(|| format!("cannot consume '{}' in group '{group}'", a.topic));
            }
            None => {}
        }
        if !a.follow && caught_up(&mut consumer, &mut ends).await? {
            break;
        }
    }
    io.stdout.flush()?;
    let left = consumer.close().await;
    for note in std::mem::take(&mut *notes.lock().unwrap_or_else(|p| p.into_inner())) {
        writeln!(io.stderr, "{note}")?;
    }
    left.with_context(|| format!("cannot leave group '{group}' cleanly"))
}

/// Ctrl-C or SIGTERM: a group member then commits and leaves the group, so its
/// partitions move on at once instead of after its session times out.
async fn stop_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        if let Ok(mut term) = signal(SignalKind::terminate()) {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
            return;
        }
    }
    if tokio::signal::ctrl_c().await.is_err() {
        std::future::pending::<()>().await;
    }
}

/// Whether every partition assigned here has been read up to its end as of when it
/// was first seen assigned (and something is assigned).
async fn caught_up(
    consumer: &mut Consumer,
    ends: &mut BTreeMap<TopicPartition, u64>,
) -> anyhow::Result<bool> {
    let assigned = consumer.assignment();
    if assigned.is_empty() {
        return Ok(false);
    }
    for tp in &assigned {
        let end = match ends.get(tp) {
            Some(&end) => end,
            None => {
                let end = consumer.offset_for(tp, Offset::Latest).await?;
                ends.insert(tp.clone(), end);
                end
            }
        };
        if consumer.position(tp).await? < end {
            return Ok(false);
        }
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    fn args(extra: &[&str]) -> ConsumeArgs {
        let cli = crate::Cli::try_parse_from(
            ["sluice", "consume", "t"]
                .iter()
                .chain(extra.iter())
                .copied(),
        )
        .unwrap();
        match cli.command {
            crate::Command::Consume(a) => a,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn start_positions() {
        assert_eq!(args(&[]).start(), Offset::Earliest);
        assert_eq!(args(&["--follow"]).start(), Offset::Latest);
        assert_eq!(
            args(&["--follow", "--from-beginning"]).start(),
            Offset::Earliest
        );
        assert_eq!(args(&["--offset", "7"]).start(), Offset::At(7));
        assert_eq!(
            args(&["--from-time", "1970-01-01T00:00:01Z"]).start(),
            Offset::Timestamp(1000)
        );
    }
}
