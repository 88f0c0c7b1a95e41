//! `sluice produce TOPIC`: one record per line of stdin.
//!
//! Lines are read on a plain thread (stdin is blocking) and handed over a bounded
//! channel; records go out through the batching producer with many in flight, and a
//! collector task counts acknowledgements. At the end (EOF, or the first bad line)
//! everything buffered is flushed, and a summary goes to stderr. Any record that was
//! not stored makes the command fail.

use std::io::{BufRead, Write};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, anyhow, bail};
use bytes::Bytes;
use clap::Args;
use serde_json::json;
use sluice_client::{Acks, Compression, DeliveryFuture, Producer, ProducerConfig, ProducerRecord};
use tokio::sync::mpsc;

use crate::{GlobalArgs, Io, OutputFormat, args};

/// `sluice produce`.
#[derive(Debug, Clone, Args)]
pub struct ProduceArgs {
    /// Topic to write to.
    pub topic: String,
    /// Split each line at the first SEP into key and value; without it the whole
    /// line is the value and records have no key.
    #[arg(long, value_name = "SEP", value_parser = non_empty)]
    pub key_separator: Option<String>,
    /// Durability to wait for: all (Raft majority), leader, none.
    #[arg(long, default_value = "all")]
    pub acks: Acks,
    /// Write every record to this partition (default: by key, or spread).
    #[arg(long)]
    pub partition: Option<u32>,
    /// Batch compression: none, lz4, zstd.
    #[arg(long, default_value = "none")]
    pub compression: Compression,
    /// How long a batch waits for more records, e.g. 5ms.
    #[arg(long, default_value = "5ms", value_parser = args::parse_duration)]
    pub linger: Duration,
}

fn non_empty(s: &str) -> Result<String, String> {
    if s.is_empty() {
        Err("the key separator must not be empty".into())
    } else {
        Ok(s.to_owned())
    }
}

/// Splits a line into key and value at the first `sep`, or returns it as the value.
pub fn split_line(line: Vec<u8>, sep: Option<&[u8]>) -> Result<(Option<Bytes>, Bytes), String> {
    let Some(sep) = sep else {
        return Ok((None, Bytes::from(line)));
    };
    let at = line
        .windows(sep.len())
        .position(|w| w == sep)
        .ok_or_else(|| {
            format!(
                "no key separator {:?} in the line; every line must be KEY{}VALUE",
                String::from_utf8_lossy(sep),
                String::from_utf8_lossy(sep)
            )
        })?;
    let line = Bytes::from(line);
    Ok((Some(line.slice(..at)), line.slice(at + sep.len()..)))
}

fn read_lines(mut input: Box<dyn BufRead + Send>, tx: mpsc::Sender<std::io::Result<Vec<u8>>>) {
    loop {
        let mut line = Vec::new();
        match input.read_until(b'\n', &mut line) {
            Ok(0) => return,
            Ok(_) => {
                if line.last() == Some(&b'\n') {
                    line.pop();
                    if line.last() == Some(&b'\r') {
                        line.pop();
                    }
                }
                if tx.blocking_send(Ok(line)).is_err() {
                    return;
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => {
                let _ = tx.blocking_send(Err(e));
                return;
            }
        }
    }
}

#[derive(Debug, Default)]
struct Outcome {
    stored: u64,
    failed: u64,
    first_error: Option<sluice_client::ClientError>,
}

async fn collect(mut acks: mpsc::Receiver<DeliveryFuture>) -> Outcome {
    let mut outcome = Outcome::default();
    while let Some(ack) = acks.recv().await {
        match ack.await {
            Ok(_) => outcome.stored += 1,
            Err(e) => {
                outcome.failed += 1;
                outcome.first_error.get_or_insert(e);
            }
        }
    }
    outcome
}

pub async fn run(a: ProduceArgs, global: &GlobalArgs, io: &mut Io) -> anyhow::Result<()> {
    let conn = global.connect().await?;
    let topic = conn
        .topic(&a.topic)
        .await
        .with_context(|| format!("cannot produce to '{}'", a.topic))?;
    if let Some(p) = a.partition
        && p >= topic.partition_count()
    {
        bail!(
            "topic '{}' has {} partition(s) (0..{}); --partition {p} does not exist",
            a.topic,
            topic.partition_count(),
            topic.partition_count()
        );
    }
    let producer = Producer::new(
        conn,
        ProducerConfig {
            acks: a.acks,
            compression: a.compression,
            linger: a.linger,
            request_timeout: global.timeout,
            ..ProducerConfig::default()
        },
    )?;

    let stdin = std::mem::replace(&mut io.stdin, Box::new(std::io::empty()));
    let (line_tx, mut lines) = mpsc::channel(1024);
    std::thread::Builder::new()
        .name("stdin-reader".into())
        .spawn(move || read_lines(stdin, line_tx))
        .context("cannot start the stdin reader")?;
    let (ack_tx, ack_rx) = mpsc::channel(1 << 16);
    let collector = tokio::spawn(collect(ack_rx));

    let start = Instant::now();
    let sep = a.key_separator.as_deref().map(str::as_bytes);
    let topic: Arc<str> = a.topic.as_str().into();
    let (mut sent, mut bytes, mut line_no) = (0u64, 0u64, 0u64);
    let mut failure: Option<anyhow::Error> = None;
    while let Some(line) = lines.recv().await {
        line_no += 1;
        let line = match line {
            Ok(line) => line,
            Err(e) => {
                failure = Some(anyhow!(e).context(format!("cannot read line {line_no} of stdin")));
                break;
            }
        };
        let (key, value) = match split_line(line, sep) {
            Ok(kv) => kv,
            Err(e) => {
                failure = Some(anyhow!("line {line_no}: {e}"));
                break;
            }
        };
        bytes += (key.as_ref().map_or(0, Bytes::len) + value.len()) as u64;
        let record = ProducerRecord {
            topic: topic.clone(),
            partition: a.partition,
            key,
            value: Some(value),
            ..ProducerRecord::default()
        };
        match producer.send(record).await {
            Ok(ack) => {
                sent += 1;
                if ack_tx.send(ack).await.is_err() {
                    break;
                }
            }
            Err(e) => {
                failure = Some(anyhow!(e).context(format!("cannot send line {line_no}")));
                break;
            }
        }
    }
    drop(lines);
    drop(ack_tx);
    producer.close().await?;
    let outcome = collector
        .await
        .context("the acknowledgement collector failed")?;
    let elapsed = start.elapsed();

    let summary = match global.output {
        OutputFormat::Table => format!(
            "Produced {} record(s) ({bytes} bytes) to '{}' in {:.3}s ({:.0} records/s){}.\n",
            outcome.stored,
            a.topic,
            elapsed.as_secs_f64(),
            outcome.stored as f64 / elapsed.as_secs_f64().max(1e-9),
            if outcome.failed > 0 {
                format!("; {} failed", outcome.failed)
            } else {
                String::new()
            }
        ),
        OutputFormat::Json => format!(
            "{}\n",
            json!({
                "topic": a.topic,
                "records": outcome.stored,
                "failed": outcome.failed,
                "bytes": bytes,
                "elapsed_ms": elapsed.as_millis() as u64,
            })
        ),
    };
    io.stderr.write_all(summary.as_bytes())?;
    if let Some(failure) = failure {
        return Err(failure);
    }
    if let Some(e) = outcome.first_error {
        bail!(
            "{} of {sent} record(s) were not stored; first error: {e}",
            outcome.failed
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_split_at_the_first_separator() {
        let (k, v) = split_line(b"user-1:{\"a\":1}".to_vec(), Some(b":")).unwrap();
        assert_eq!(k.as_deref(), Some(&b"user-1"[..]));
        assert_eq!(&v[..], b"{\"a\":1}");
        let (k, v) = split_line(b"a::b::c".to_vec(), Some(b"::")).unwrap();
        assert_eq!((k.as_deref(), &v[..]), (Some(&b"a"[..]), &b"b::c"[..]));
        let (k, v) = split_line(b":v".to_vec(), Some(b":")).unwrap();
        assert_eq!((k.as_deref(), &v[..]), (Some(&b""[..]), &b"v"[..]));
        let (k, v) = split_line(b"no sep".to_vec(), None).unwrap();
        assert_eq!((k, &v[..]), (None, &b"no sep"[..]));
        let err = split_line(b"no sep".to_vec(), Some(b"\t")).unwrap_err();
        assert!(err.contains("separator"), "{err}");
    }

    #[test]
    fn stdin_lines_lose_their_line_endings() {
        let (tx, mut rx) = mpsc::channel(16);
        let input = std::io::Cursor::new(b"a\nb\r\n\nlast".to_vec());
        read_lines(Box::new(input), tx);
        let mut got = Vec::new();
        while let Ok(line) = rx.try_recv() {
            got.push(line.unwrap());
        }
        assert_eq!(got, [&b"a"[..], b"b", b"", b"last"]);
    }
}
