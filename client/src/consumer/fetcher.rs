//! One partition's fetch loop, and turning fetched batches into records.
//!
//! Each assigned partition gets a task that opens a `Fetch` server stream with
//! `follow = true` at its position at the partition leader and forwards decoded
//! records to the consumer over a bounded channel (so a slow application holds the
//! fetchers back instead of buffering without limit). It reconnects on transport
//! errors, leader changes and stale metadata with jittered exponential back-off,
//! resumes from the offset after the last record it forwarded, resets an
//! out-of-range position per `auto_offset_reset`, and reports errors that persist
//! longer than the request timeout (without stopping) and fatal ones (then stops).

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use sluice_proto::batch::Batch;
use sluice_proto::batch::header::CONTROL_FLAG;
use sluice_proto::v1;
use tokio::sync::mpsc;

use super::ConsumerRecord;
use crate::backoff::Backoff;
use crate::config::ConsumerConfig;
use crate::connection::Connection;
use crate::error::{ClientError, Result, check};
use crate::types::{Offset, OffsetReset};

/// What a fetch task tells the consumer. `task` identifies the task (a partition
/// restarted by `seek` or reassigned gets a new task, and the old one's leftover
/// events are dropped).
#[derive(Debug)]
pub(crate) enum FetchEvent {
    Records {
        task: u64,
        records: Vec<ConsumerRecord>,
        high_watermark: u64,
    },
    /// The position was reset (out of range) to `offset`.
    Reset { task: u64, offset: u64 },
    /// An error; after a fatal one the task has stopped.
    Error {
        task: u64,
        error: ClientError,
        fatal: bool,
    },
}

/// Decodes fetched batches: records at or after `from`, in offset order, and the
/// offset after the last batch (the next offset to ask for), if there was a batch.
/// Control batches (transaction markers) take offsets but yield no records.
pub(crate) fn decode_batches(
    topic: &Arc<str>,
    partition: u32,
    batches: Vec<Bytes>,
    from: u64,
) -> Result<(Vec<ConsumerRecord>, Option<u64>)> {
    let mut records = Vec::new();
    let mut next = None;
    let corrupt = |source| ClientError::Decode {
        topic: topic.to_string(),
        partition,
        source,
    };
    for bytes in batches {
        let batch = Batch::decode(bytes).map_err(corrupt)?;
        let header = batch.header();
        let end = header
            .base_offset
            .checked_add(i64::from(header.last_offset_delta) + 1)
            .and_then(|e| u64::try_from(e).ok())
            .ok_or_else(|| ClientError::Protocol {
                addr: String::new(),
                message: format!(
                    "{topic}/{partition}: fetched batch has an impossible base offset {}",
                    header.base_offset
                ),
            })?;
        next = Some(next.map_or(end, |n: u64| n.max(end)));
        if end <= from || header.attributes & CONTROL_FLAG != 0 {
            continue;
        }
        // A response holds thousands of records: grow once per batch, not by doubling.
        records.reserve(
            usize::try_from(header.record_count)
                .unwrap_or(0)
                .min(1 << 16),
        );
        for record in batch.records() {
            let record = record.map_err(corrupt)?;
            let Ok(offset) = u64::try_from(record.offset) else {
                continue;
            };
            if offset < from {
                continue;
            }
            records.push(ConsumerRecord {
                topic: topic.clone(),
                partition,
                offset,
                timestamp: record.timestamp,
                key: record.key,
                value: record.value,
                headers: record.headers,
            });
        }
    }
    Ok((records, next))
}

pub(crate) struct FetchTask {
    pub conn: Connection,
    pub config: ConsumerConfig,
    pub task: u64,
    pub topic: Arc<str>,
    pub partition: u32,
    pub position: u64,
    pub events: mpsc::Sender<FetchEvent>,
}

/// Whether the consumer is still listening.
enum Flow {
    Stop,
}

impl FetchTask {
    pub(crate) async fn run(mut self) {
        let backoff = Backoff::new(self.config.retry_backoff, self.config.retry_backoff_max);
        let report_after = self.conn.config().request_timeout;
        let mut attempt = 0u32;
        let mut failing_since: Option<Instant> = None;
        let mut last_report: Option<Instant> = None;
        loop {
            let err = match self.conn.leader(&self.topic, self.partition).await {
                Ok(leader) => match self.stream(&leader.addr, &mut attempt).await {
                    Ok(Flow::Stop) => return,
                    Err(err) => err,
                },
                // Fresh metadata says the partition does not exist: nothing to retry.
                Err(err) if !err.is_retriable() => return self.fatal(err).await,
                Err(err) => err,
            };
            if attempt == 0 {
                // First failure, or the stream delivered something before failing.
                failing_since = None;
            }
            let err = match err {
                ClientError::OffsetOutOfRange { .. } => match self.reset(err).await {
                    Ok(Some(flow)) => match flow {
                        Flow::Stop => return,
                    },
                    Ok(None) => continue,
                    Err(err) => err,
                },
                err => err,
            };
            if !(err.is_retriable() || err.is_stale_metadata()) {
                return self.fatal(err).await;
            }
            tracing::debug!(topic = %self.topic, partition = self.partition, %err, "fetch failed; reconnecting");
            if self
                .conn
                .apply_hint(Some((&self.topic, self.partition)), &err)
                .is_none()
                && let Err(e) = self.conn.refresh_metadata().await
            {
                tracing::debug!(%e, "metadata refresh failed");
            }
            let now = Instant::now();
            let since = *failing_since.get_or_insert(now);
            if now.duration_since(since) >= report_after
                && last_report.is_none_or(|t| now.duration_since(t) >= report_after)
            {
                last_report = Some(now);
                let event = FetchEvent::Error {
                    task: self.task,
                    error: err,
                    fatal: false,
                };
                if self.events.send(event).await.is_err() {
                    return;
                }
            }
            tokio::time::sleep(backoff.delay(attempt)).await;
            attempt = attempt.saturating_add(1);
        }
    }

    async fn fatal(&self, error: ClientError) {
        let _ = self
            .events
            .send(FetchEvent::Error {
                task: self.task,
                error,
                fatal: true,
            })
            .await;
    }

    /// Handles `OFFSET_OUT_OF_RANGE`: moves the position per `auto_offset_reset`
    /// (`Ok(None)`: fetch again), or returns the error when there is no policy.
    async fn reset(&mut self, err: ClientError) -> Result<Option<Flow>> {
        let to = match self.config.auto_offset_reset {
            OffsetReset::Earliest => Offset::Earliest,
            OffsetReset::Latest => Offset::Latest,
            OffsetReset::None => {
                return Err(ClientError::OffsetOutOfRange {
                    message: format!(
                        "{}/{} position {}: {err}",
                        self.topic, self.partition, self.position
                    ),
                });
            }
        };
        let offset = self
            .conn
            .list_offset(&self.topic, self.partition, to)
            .await?;
        tracing::warn!(
            topic = %self.topic,
            partition = self.partition,
            from = self.position,
            to = offset,
            "fetch position out of range; reset to {to}"
        );
        self.position = offset;
        let event = FetchEvent::Reset {
            task: self.task,
            offset,
        };
        if self.events.send(event).await.is_err() {
            return Ok(Some(Flow::Stop));
        }
        Ok(None)
    }

    /// One `Fetch` stream, until it fails or the consumer goes away.
    async fn stream(&mut self, addr: &str, attempt: &mut u32) -> Result<Flow> {
        let mut client = self.conn.client(addr)?;
        let request = v1::FetchRequest {
            topic: self.topic.to_string(),
            partition: self.partition,
            offset: self.position,
            max_bytes: self.config.fetch_max_bytes,
            follow: true,
        };
        let timeout = self.conn.config().request_timeout;
        let mut responses = tokio::time::timeout(timeout, client.fetch(request))
            .await
            .map_err(|_| ClientError::Timeout {
                message: format!("{addr} did not open a fetch stream within {timeout:?}"),
            })?
            .map_err(|s| ClientError::from_status(addr, &s))?
            .into_inner();
        let mut last_hwm = None;
        loop {
            let msg = match responses.message().await {
                Ok(Some(msg)) => msg,
                Ok(None) => {
                    return Err(ClientError::Transport {
                        addr: addr.to_owned(),
                        message: "the broker ended the fetch stream".into(),
                    });
                }
                Err(status) => return Err(ClientError::from_status(addr, &status)),
            };
            check(msg.error)?;
            *attempt = 0;
            let (records, next) =
                decode_batches(&self.topic, self.partition, msg.batches, self.position)?;
            if let Some(next) = next {
                self.position = self.position.max(next);
            }
            if records.is_empty() && last_hwm == Some(msg.high_watermark) {
                continue;
            }
            last_hwm = Some(msg.high_watermark);
            let event = FetchEvent::Records {
                task: self.task,
                records,
                high_watermark: msg.high_watermark,
            };
            if self.events.send(event).await.is_err() {
                return Ok(Flow::Stop);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_proto::batch::header::{ATTRIBUTES, stamp_base_offset};
    use sluice_proto::batch::{BatchBuilder, Compression, Header};

    fn batch(base: i64, values: &[&str], codec: Compression) -> Bytes {
        let mut b = BatchBuilder::new(codec);
        for (i, v) in values.iter().enumerate() {
            let headers = [Header::new("i", Some(Bytes::from(i.to_string())))];
            b.append(1000 + i as i64, Some(b"k"), Some(v.as_bytes()), &headers)
                .unwrap();
        }
        let mut bytes = b.build().to_vec();
        stamp_base_offset(&mut bytes, base);
        Bytes::from(bytes)
    }

    #[test]
    fn records_before_the_requested_offset_are_skipped() {
        let topic: Arc<str> = Arc::from("t");
        let batches = vec![
            batch(10, &["a", "b", "c", "d"], Compression::None),
            batch(14, &["e", "f"], Compression::Zstd),
        ];
        let (records, next) = decode_batches(&topic, 2, batches, 12).unwrap();
        let got: Vec<(u64, &[u8])> = records
            .iter()
            .map(|r| (r.offset, r.value.as_deref().unwrap()))
            .collect();
        assert_eq!(
            got,
            [
                (12, &b"c"[..]),
                (13, &b"d"[..]),
                (14, &b"e"[..]),
                (15, &b"f"[..])
            ]
        );
        assert_eq!(next, Some(16));
        let r = &records[0];
        assert_eq!((&*r.topic, r.partition, r.timestamp), ("t", 2, 1002));
        assert_eq!(r.key.as_deref(), Some(&b"k"[..]));
        assert_eq!(r.headers[0].value.as_deref(), Some(&b"2"[..]));
    }

    #[test]
    fn batches_wholly_before_the_offset_only_advance_the_position() {
        let topic: Arc<str> = Arc::from("t");
        let (records, next) =
            decode_batches(&topic, 0, vec![batch(0, &["a", "b"], Compression::Lz4)], 5).unwrap();
        assert!(records.is_empty());
        assert_eq!(next, Some(2));
        let (records, next) = decode_batches(&topic, 0, vec![], 5).unwrap();
        assert!(records.is_empty() && next.is_none());
    }

    #[test]
    fn control_batches_yield_no_records() {
        let topic: Arc<str> = Arc::from("t");
        let mut bytes = batch(3, &["marker"], Compression::None).to_vec();
        // Set the control flag and fix the CRC (attributes are covered by it).
        let attrs = i16::from_be_bytes([bytes[ATTRIBUTES], bytes[ATTRIBUTES + 1]]) | CONTROL_FLAG;
        bytes[ATTRIBUTES..ATTRIBUTES + 2].copy_from_slice(&attrs.to_be_bytes());
        let crc = sluice_proto::batch::header::checksum(&bytes);
        bytes[17..21].copy_from_slice(&crc.to_be_bytes());
        let (records, next) = decode_batches(&topic, 0, vec![Bytes::from(bytes)], 0).unwrap();
        assert!(records.is_empty());
        assert_eq!(next, Some(4));
    }

    #[test]
    fn corrupt_batches_are_decode_errors() {
        let topic: Arc<str> = Arc::from("t");
        let mut bytes = batch(0, &["a"], Compression::None).to_vec();
        let last = bytes.len() - 1;
        bytes[last] ^= 0xff;
        let err = decode_batches(&topic, 7, vec![Bytes::from(bytes)], 0).unwrap_err();
        assert!(
            matches!(&err, ClientError::Decode { partition: 7, .. }),
            "{err:?}"
        );
        assert!(!err.is_retriable());
        let err = decode_batches(&topic, 7, vec![Bytes::from_static(b"short")], 0).unwrap_err();
        assert!(matches!(err, ClientError::Decode { .. }));
    }
}
