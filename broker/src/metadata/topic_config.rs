//! Per-topic configs, with Kafka's names: what a user may set and what it means.
//!
//! Unknown keys and unparsable values are refused with a message naming them, so a
//! typo never silently falls back to a default.

use std::collections::BTreeMap;
use std::time::Duration;

use thiserror::Error;

use crate::log::{LogConfig, RetentionPolicy};

/// Keys a topic accepts.
pub const KEYS: &[&str] = &[
    "retention.ms",
    "retention.bytes",
    "segment.bytes",
    "segment.ms",
    "max.message.bytes",
    "flush.fsync",
];

/// Largest batch accepted by default (`max.message.bytes`).
pub const DEFAULT_MAX_MESSAGE_BYTES: u64 = 8 << 20;

#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("invalid topic config {key}={value}: {reason}")]
pub struct ConfigError {
    pub key: String,
    pub value: String,
    pub reason: String,
}

/// A topic's effective settings, parsed from its string map.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicConfig {
    pub log: LogConfig,
    pub max_message_bytes: u64,
    /// Whether an append is acknowledged only after fsync (default true).
    pub fsync: bool,
}

impl TopicConfig {
    /// Parses and validates `entries` on top of the defaults.
    pub fn parse(entries: &BTreeMap<String, String>) -> Result<Self, ConfigError> {
        let mut config = Self {
            log: LogConfig::default(),
            max_message_bytes: DEFAULT_MAX_MESSAGE_BYTES,
            fsync: true,
        };
        for (key, value) in entries {
            let err = |reason: &str| ConfigError {
                key: key.clone(),
                value: value.clone(),
                reason: reason.to_string(),
            };
            // -1 means "no limit", as in Kafka.
            let limit = || -> Result<Option<u64>, ConfigError> {
                match value.trim().parse::<i64>() {
                    Ok(-1) => Ok(None),
                    Ok(v) if v >= 0 => Ok(Some(v as u64)),
                    _ => Err(err("expected a non-negative integer or -1 for no limit")),
                }
            };
            match key.as_str() {
                "retention.ms" => {
                    config.log.retention.max_age = limit()?.map(Duration::from_millis)
                }
                "retention.bytes" => config.log.retention.max_bytes = limit()?,
                "segment.bytes" => {
                    config.log.segment_bytes =
                        limit()?.ok_or_else(|| err("segments need a size"))?
                }
                "segment.ms" => config.log.segment_age = limit()?.map(Duration::from_millis),
                "max.message.bytes" => {
                    config.max_message_bytes = limit()?
                        .filter(|&v| v > 0)
                        .ok_or_else(|| err("expected a positive size"))?
                }
                "flush.fsync" => {
                    config.fsync = value
                        .parse::<bool>()
                        .map_err(|_| err("expected true or false"))?
                }
                _ => {
                    return Err(err(&format!(
                        "unknown key; known keys: {}",
                        KEYS.join(", ")
                    )));
                }
            }
        }
        config.log.validate().map_err(|e| ConfigError {
            key: "segment.bytes".into(),
            value: config.log.segment_bytes.to_string(),
            reason: e.to_string(),
        })?;
        Ok(config)
    }

    pub fn retention(&self) -> &RetentionPolicy {
        &self.log.retention
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn known_keys_override_defaults() {
        let c = TopicConfig::parse(&map(&[
            ("retention.ms", "60000"),
            ("retention.bytes", "-1"),
            ("segment.bytes", "1048576"),
            ("flush.fsync", "false"),
        ]))
        .expect("valid");
        assert_eq!(c.log.retention.max_age, Some(Duration::from_secs(60)));
        assert_eq!(c.log.retention.max_bytes, None);
        assert_eq!(c.log.segment_bytes, 1 << 20);
        assert!(!c.fsync);
    }

    #[test]
    fn unknown_keys_and_bad_values_are_refused() {
        assert!(TopicConfig::parse(&map(&[("retention.msec", "1")])).is_err());
        assert!(TopicConfig::parse(&map(&[("retention.ms", "soon")])).is_err());
        assert!(TopicConfig::parse(&map(&[("segment.bytes", "0")])).is_err());
        assert!(TopicConfig::parse(&map(&[("flush.fsync", "yes")])).is_err());
    }
}
