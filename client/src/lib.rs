//! The Sluice Rust client. Producer, Consumer and Admin arrive with the broker's API.

pub use sluice_proto::batch;
