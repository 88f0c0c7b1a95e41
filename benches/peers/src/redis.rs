//! Redis Streams as a peer: a topic's partition `p` is the stream key `<topic>:<p>`,
//! each record one entry with a single field `v`. A batch is a pipeline of XADDs to
//! one key, answered once Redis has written (and, with `appendfsync always`, fsynced)
//! its AOF; reading is XRANGE from the start for a replay and XREAD BLOCK for
//! following. Redis's own settings (AOF, fsync policy) are the script's business.

use std::time::Duration;

use anyhow::{Context as _, bail};
use bytes::Bytes;
use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, Value};

use crate::Peer;
use crate::driver::{Ack, Publisher, Source};

/// Entries one XRANGE or XREAD asks for per key.
const READ_COUNT: usize = 4096;
/// How long XREAD blocks when nothing is new, so a follower can check its deadline.
const BLOCK_MS: u64 = 100;

/// One multiplexed connection to a Redis server.
pub struct Redis {
    conn: MultiplexedConnection,
}

impl Redis {
    pub async fn connect(url: String) -> anyhow::Result<Self> {
        let client = redis::Client::open(url.as_str()).with_context(|| format!("bad URL {url}"))?;
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(5)))
            .set_response_timeout(Some(Duration::from_secs(60)));
        let conn = client
            .get_multiplexed_async_connection_with_config(&config)
            .await
            .with_context(|| format!("cannot reach Redis at {url}"))?;
        Ok(Self { conn })
    }
}

fn key(topic: &str, partition: u32) -> String {
    format!("{topic}:{partition}")
}

impl Publisher for Redis {
    async fn publish(
        &self,
        topic: &str,
        partition: u32,
        values: Vec<Bytes>,
    ) -> anyhow::Result<Ack> {
        let key = key(topic, partition);
        let mut pipe = redis::pipe();
        for value in &values {
            pipe.cmd("XADD")
                .arg(&key)
                .arg("*")
                .arg("v")
                .arg(value.as_ref())
                .ignore();
        }
        let mut conn = self.conn.clone();
        // The multiplexed connection writes the pipeline when first polled and matches
        // answers in order, so spawning keeps many pipelines in flight on one socket.
        let reply = tokio::spawn(async move { pipe.query_async::<()>(&mut conn).await });
        Ok(Box::pin(async move {
            reply.await.context("the XADD task failed")??;
            Ok(())
        }))
    }
}

impl Peer for Redis {
    type Reader = RedisReader;

    async fn recreate(&self, topic: &str, partitions: u32) -> anyhow::Result<()> {
        let mut cmd = redis::cmd("DEL");
        for p in 0..partitions {
            cmd.arg(key(topic, p));
        }
        cmd.query_async::<()>(&mut self.conn.clone())
            .await
            .with_context(|| format!("cannot delete the streams of {topic}"))?;
        Ok(())
    }

    async fn reader(&self, topic: &str, partitions: u32) -> anyhow::Result<(RedisReader, u64)> {
        let mut backlog = 0u64;
        let mut conn = self.conn.clone();
        for p in 0..partitions {
            let len: u64 = redis::cmd("XLEN")
                .arg(key(topic, p))
                .query_async(&mut conn)
                .await?;
            backlog += len;
        }
        let keys = (0..partitions).map(|p| key(topic, p)).collect::<Vec<_>>();
        let last_ids = vec!["0-0".to_owned(); keys.len()];
        Ok((
            RedisReader {
                conn: self.conn.clone(),
                keys,
                last_ids,
            },
            backlog,
        ))
    }
}

/// Every partition of a topic, read in order from the last id seen in each.
pub struct RedisReader {
    conn: MultiplexedConnection,
    keys: Vec<String>,
    last_ids: Vec<String>,
}

impl Source for RedisReader {
    /// One XREAD over every key: up to [`READ_COUNT`] entries from each.
    async fn next_batch(&mut self) -> anyhow::Result<Vec<Bytes>> {
        let mut cmd = redis::cmd("XREAD");
        cmd.arg("COUNT")
            .arg(READ_COUNT)
            .arg("BLOCK")
            .arg(BLOCK_MS)
            .arg("STREAMS")
            .arg(&self.keys)
            .arg(&self.last_ids);
        let reply: Value = cmd.query_async(&mut self.conn).await?;
        let mut values = Vec::new();
        for (key, entries) in streams_of(reply)? {
            let Some(i) = self
                .keys
                .iter()
                .position(|k| k.as_bytes() == key.as_slice())
            else {
                bail!("XREAD answered for a key it was not asked about");
            };
            if let Some(last) = entries_into(entries, &mut values)? {
                self.last_ids[i] = last;
            }
        }
        Ok(values)
    }
}

/// The (key, entries) pairs of an XREAD reply, which RESP2 sends as an array of
/// pairs and RESP3 as a map; nil when nothing arrived.
fn streams_of(reply: Value) -> anyhow::Result<Vec<(Vec<u8>, Value)>> {
    let pairs = match reply {
        Value::Nil => return Ok(Vec::new()),
        Value::Map(pairs) => pairs,
        Value::Array(items) => items
            .into_iter()
            .map(|item| match item {
                Value::Array(mut kv) if kv.len() == 2 => {
                    let entries = kv.pop().unwrap_or(Value::Nil);
                    let key = kv.pop().unwrap_or(Value::Nil);
                    Ok((key, entries))
                }
                other => bail!("unexpected XREAD item {other:?}"),
            })
            .collect::<anyhow::Result<_>>()?,
        other => bail!("unexpected XREAD reply {other:?}"),
    };
    pairs
        .into_iter()
        .map(|(key, entries)| match key {
            Value::BulkString(k) => Ok((k, entries)),
            other => bail!("unexpected stream key {other:?}"),
        })
        .collect()
}

/// Appends the `v` field of each `[id, [field, value, ...]]` entry; returns the last
/// id.
fn entries_into(entries: Value, values: &mut Vec<Bytes>) -> anyhow::Result<Option<String>> {
    let Value::Array(entries) = entries else {
        bail!("unexpected stream entries {entries:?}");
    };
    let mut last = None;
    for entry in entries {
        let Value::Array(mut parts) = entry else {
            bail!("unexpected stream entry {entry:?}");
        };
        if parts.len() != 2 {
            bail!("a stream entry has {} parts, not 2", parts.len());
        }
        let fields = parts.pop().unwrap_or(Value::Nil);
        let id = parts.pop().unwrap_or(Value::Nil);
        let Value::BulkString(id) = id else {
            bail!("unexpected entry id {id:?}");
        };
        let Value::Array(mut fields) = fields else {
            bail!("unexpected entry fields {fields:?}");
        };
        if fields.len() != 2 {
            bail!("an entry has {} field items, not [v, value]", fields.len());
        }
        let Value::BulkString(value) = fields.swap_remove(1) else {
            bail!("an entry's value is not a string");
        };
        values.push(Bytes::from(value));
        last = Some(String::from_utf8(id).context("an entry id is not UTF-8")?);
    }
    Ok(last)
}
