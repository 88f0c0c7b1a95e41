//! Tunables of a partition log, with Kafka's defaults where Kafka has one.

use std::time::Duration;

use super::LogError;
use super::frame::MAX_PAYLOAD_LEN;

/// How a partition's log rolls segments and how long it keeps them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogConfig {
    /// Roll the active segment once it holds this many bytes (`segment.bytes`).
    pub segment_bytes: u64,
    /// Roll the active segment once it is this old (`segment.ms`).
    pub segment_age: Option<Duration>,
    /// Bytes of log between two sparse index entries (`index.interval.bytes`).
    pub index_interval_bytes: u64,
    pub retention: RetentionPolicy,
}

/// When whole old segments are deleted. `None` means no limit of that kind.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RetentionPolicy {
    /// Keep at most this many bytes of log (`retention.bytes`).
    pub max_bytes: Option<u64>,
    /// Delete segments whose newest record is older than this (`retention.ms`).
    pub max_age: Option<Duration>,
}

/// File positions are 32-bit in the indexes; leave room for one oversized frame.
const MAX_SEGMENT_BYTES: u64 = u32::MAX as u64 - 2 * MAX_PAYLOAD_LEN as u64;

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            segment_bytes: 1 << 30,
            segment_age: Some(Duration::from_secs(7 * 24 * 3600)),
            index_interval_bytes: 4096,
            retention: RetentionPolicy {
                max_bytes: None,
                max_age: Some(Duration::from_secs(7 * 24 * 3600)),
            },
        }
    }
}

impl LogConfig {
    pub fn validate(&self) -> Result<(), LogError> {
        if self.segment_bytes == 0 || self.segment_bytes > MAX_SEGMENT_BYTES {
            return Err(LogError::Config(format!(
                "segment_bytes must be between 1 and {MAX_SEGMENT_BYTES}, got {}",
                self.segment_bytes
            )));
        }
        if self.index_interval_bytes == 0 {
            return Err(LogError::Config(
                "index_interval_bytes must be positive".into(),
            ));
        }
        Ok(())
    }
}
