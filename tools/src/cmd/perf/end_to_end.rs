//! `perf end-to-end`: produces at a fixed rate while a consumer follows the topic,
//! and measures each record's age when it arrives from the stamp in its value.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use bytes::Bytes;
use hdrhistogram::Histogram;
use sluice_client::{Connection, Consumer, ConsumerConfig, Offset, OffsetReset};
use tokio::sync::watch;

use super::progress::{Counters, Lines};
use super::*;
use crate::GlobalArgs;

/// `perf end-to-end`.
pub(super) async fn end_to_end(
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
    produced?.into_end_to_end(consumed, &hist)
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
