//! Wire formats shared by the Sluice client and broker.
//!
//! - [`batch`]: Kafka RecordBatch v2, the unit that is produced, stored and fetched.
//!   The client encodes batches; the broker validates them and stores them as-is.

pub mod batch;
