//! `perf consume`: reads every partition of a topic and reports records/s and MB/s.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use anyhow::{Context as _, bail};
use bytes::Bytes;
use sluice_client::{Connection, Consumer, ConsumerConfig, Offset, OffsetReset};

use super::progress::{Counters, Lines, report_progress};
use super::*;

/// `perf consume`.
pub(super) async fn consume(
    conn: &Connection,
    a: PerfConsumeArgs,
    lines: Lines,
) -> anyhow::Result<Report> {
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
    // When the run ended: its deadline, else once the loop is done (no clock read per
    // record).
    let mut ended = None;
    while !(bounded && ends.is_empty()) && a.records.is_none_or(|n| records < n) {
        let next = match deadline {
            Some(d) => match tokio::time::timeout_at(d.into(), consumer.recv()).await {
                Ok(next) => next,
                Err(_) => {
                    ended = Some(d);
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
    }
    let ended = ended.unwrap_or_else(Instant::now);
    reporter.abort();
    Ok(Report::Consume(ConsumeReport {
        topic: a.topic,
        records,
        bytes,
        elapsed: ended - start,
    }))
}
