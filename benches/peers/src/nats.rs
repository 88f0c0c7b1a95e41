//! NATS JetStream as a peer: a topic is one file-storage stream named after it, whose
//! partitions are the subjects `<topic>.<p>` (JetStream has no partitions; one stream
//! is what "one topic" means there). Producing is JetStream's asynchronous publish,
//! each message acknowledged by the server (after its fsync only when the server runs
//! with `sync_interval: always`); reading is an ephemeral pull consumer without acks.
//!
//! The fsync policy is the server's configuration, which the script writes: nothing
//! here may change it.

use std::time::Duration;

use anyhow::Context as _;
use async_nats::jetstream::consumer::pull::{self, Stream as Messages};
use async_nats::jetstream::consumer::{AckPolicy, DeliverPolicy};
use async_nats::jetstream::{self, stream};
use bytes::Bytes;
use futures::StreamExt;

use crate::Peer;
use crate::driver::{Ack, Publisher, Source};

/// How long a publish may wait for its acknowledgement (and an API call for its answer).
const ACK_TIMEOUT: Duration = Duration::from_secs(300);
/// Acks a connection may wait for at once; the driver's window is the real bound.
const MAX_ACKS_IN_FLIGHT: usize = 1 << 20;
/// Messages and bytes one pull request asks for, as the Sluice consumer's fetches
/// (4 MiB).
const PULL_MESSAGES: usize = 64 << 10;
const PULL_BYTES: usize = 4 << 20;

/// One connection to a JetStream server.
pub struct Nats {
    js: jetstream::Context,
}

impl Nats {
    pub async fn connect(url: String) -> anyhow::Result<Self> {
        let client = async_nats::ConnectOptions::new()
            .connection_timeout(Duration::from_secs(5))
            .connect(url.as_str())
            .await
            .with_context(|| format!("cannot reach NATS at {url}"))?;
        let js = jetstream::ContextBuilder::new()
            // Long enough for a full window on a server that fsyncs every message on a
            // busy disk (a few hundred a second), short enough to end a stuck run.
            .timeout(ACK_TIMEOUT)
            .max_ack_inflight(MAX_ACKS_IN_FLIGHT)
            .backpressure_on_inflight(true)
            .build(client);
        Ok(Self { js })
    }
}

impl Publisher for Nats {
    async fn publish(
        &self,
        topic: &str,
        partition: u32,
        values: Vec<Bytes>,
    ) -> anyhow::Result<Ack> {
        let subject = async_nats::Subject::from(format!("{topic}.{partition}"));
        let mut acks = Vec::with_capacity(values.len());
        for value in values {
            acks.push(self.js.publish(subject.clone(), value).await?);
        }
        Ok(Box::pin(async move {
            for ack in acks {
                ack.await?;
            }
            Ok(())
        }))
    }
}

impl Peer for Nats {
    type Reader = NatsReader;

    async fn recreate(&self, topic: &str, _partitions: u32) -> anyhow::Result<()> {
        // Deleting a stream that does not exist is the expected case on a fresh server.
        let _ = self.js.delete_stream(topic).await;
        self.js
            .create_stream(stream::Config {
                name: topic.to_owned(),
                subjects: vec![format!("{topic}.*")],
                storage: stream::StorageType::File,
                max_bytes: -1,
                max_messages: -1,
                max_messages_per_subject: -1,
                max_consumers: -1,
                num_replicas: 1,
                ..Default::default()
            })
            .await
            .with_context(|| format!("cannot create stream {topic}"))?;
        Ok(())
    }

    async fn reader(&self, topic: &str, _partitions: u32) -> anyhow::Result<(NatsReader, u64)> {
        let stream = self
            .js
            .get_stream(topic)
            .await
            .with_context(|| format!("no stream {topic}"))?;
        let backlog = stream.get_info().await?.state.messages;
        let consumer = stream
            .create_consumer(pull::Config {
                ack_policy: AckPolicy::None,
                deliver_policy: DeliverPolicy::All,
                ..Default::default()
            })
            .await
            .with_context(|| format!("cannot create a consumer on {topic}"))?;
        let messages = consumer
            .stream()
            .max_messages_per_batch(PULL_MESSAGES)
            .max_bytes_per_batch(PULL_BYTES)
            .messages()
            .await?;
        Ok((NatsReader { messages }, backlog))
    }
}

/// The messages of a pull consumer.
pub struct NatsReader {
    messages: Messages,
}

/// Messages taken from the client's buffer per call, at most.
const READ_CHUNK: usize = 4096;

impl Source for NatsReader {
    async fn next_batch(&mut self) -> anyhow::Result<Vec<Bytes>> {
        let mut batch = Vec::new();
        let first = tokio::time::timeout(Duration::from_millis(100), self.messages.next()).await;
        match first {
            Err(_) => return Ok(batch),
            Ok(None) => anyhow::bail!("the consumer's message stream ended"),
            Ok(Some(m)) => batch.push(m.map_err(|e| anyhow::anyhow!(e))?.message.payload),
        }
        // Take what is already buffered without waiting.
        while batch.len() < READ_CHUNK {
            match futures::FutureExt::now_or_never(self.messages.next()) {
                Some(Some(m)) => batch.push(m.map_err(|e| anyhow::anyhow!(e))?.message.payload),
                Some(None) | None => break,
            }
        }
        Ok(batch)
    }
}
