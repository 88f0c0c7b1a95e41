//! The Sluice Rust client.
//!
//! - [`Producer`]: batched, pipelined, retrying writes with Kafka-compatible key
//!   partitioning and bounded memory.
//! - [`Consumer`]: streams records from assigned partitions, pushed by the brokers as
//!   they commit.
//! - [`Admin`]: topics, partitions, cluster information.
//! - [`Connection`]: the broker channels and metadata cache all three share.
//!
//! Modules, one concern each: [`config`], [`error`], [`types`], [`metadata`],
//! [`connection`], [`backoff`], [`partitioner`], [`producer`], [`consumer`], [`admin`].
//! The wire formats come from `sluice-proto`: the gRPC API (`sluice.v1`) and the
//! record batch codec, re-exported as [`batch`].
//!
//! ```no_run
//! use sluice_client::{
//!     Admin, ClientConfig, Connection, Consumer, ConsumerConfig, NewTopic, Offset, Producer,
//!     ProducerConfig, ProducerRecord, TopicPartition,
//! };
//! use futures::StreamExt;
//!
//! # async fn example() -> sluice_client::Result<()> {
//! let conn = Connection::connect(ClientConfig::new(["127.0.0.1:9700"])).await?;
//! Admin::new(conn.clone()).create_topic(NewTopic::new("greetings", 3)).await?;
//!
//! let producer = Producer::new(conn.clone(), ProducerConfig::default())?;
//! let md = producer.send(ProducerRecord::new("greetings", "hello").key("en")).await?.await?;
//!
//! let mut consumer = Consumer::new(conn, ConsumerConfig::default())?;
//! let tp = TopicPartition::new("greetings", md.partition);
//! consumer.assign(vec![tp.clone()]);
//! consumer.seek(&tp, Offset::At(md.offset))?;
//! let record = consumer.stream().next().await.expect("assigned")?;
//! assert_eq!(record.value.as_deref(), Some(&b"hello"[..]));
//! # Ok(())
//! # }
//! ```

pub mod admin;
pub mod backoff;
pub mod config;
pub mod connection;
pub mod consumer;
pub mod error;
pub mod metadata;
pub mod partitioner;
pub mod producer;
pub mod types;

pub use sluice_proto::batch;

pub use admin::{
    Admin, ClusterInfo, NewTopic, PartitionDescription, TopicDescription, TopicListing,
};
pub use backoff::Backoff;
pub use batch::{Compression, Header};
pub use config::{ClientConfig, ConsumerConfig, MAX_IDEMPOTENT_IN_FLIGHT, ProducerConfig};
pub use connection::Connection;
pub use consumer::{Consumer, ConsumerRecord};
pub use error::{ClientError, Result};
pub use metadata::{BrokerInfo, ClusterMetadata, PartitionMetadata, TopicMetadata};
pub use producer::{DeliveryFuture, Producer, ProducerRecord, RecordMetadata, UNKNOWN_OFFSET};
pub use types::{Acks, Offset, OffsetReset, TopicPartition};
