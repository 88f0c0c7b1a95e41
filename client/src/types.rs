//! Small value types shared by the producer, consumer and admin client:
//! [`TopicPartition`], [`Offset`], [`OffsetReset`], [`OffsetAndMetadata`], [`Acks`].

use std::fmt;

use sluice_proto::v1;

pub use sluice_proto::TopicPartition;

/// A position to start reading a partition from. Everything but `At` is resolved
/// to an offset with the broker's `ListOffsets`.
///
/// ```
/// use sluice_client::Offset;
///
/// let starts = [Offset::Earliest, Offset::Latest, Offset::At(42), Offset::Timestamp(1_700_000_000_000)];
/// assert_eq!(starts[2].to_string(), "offset 42");
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Offset {
    /// The log start offset: the oldest record still kept.
    Earliest,
    /// The high watermark: only records committed from now on.
    Latest,
    /// Exactly this offset.
    At(u64),
    /// The first record whose timestamp is at or after this many milliseconds since
    /// the Unix epoch (the high watermark if there is none).
    Timestamp(i64),
}

impl fmt::Display for Offset {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Offset::Earliest => f.write_str("earliest"),
            Offset::Latest => f.write_str("latest"),
            Offset::At(o) => write!(f, "offset {o}"),
            Offset::Timestamp(ts) => write!(f, "timestamp {ts} ms"),
        }
    }
}

/// Where a consumer starts a partition it has no position for, and where it goes
/// when its position falls outside the log (`OFFSET_OUT_OF_RANGE`, e.g. after
/// retention deleted it). Kafka's `auto.offset.reset`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum OffsetReset {
    /// The log start offset.
    Earliest,
    /// The high watermark (the default, as in Kafka).
    #[default]
    Latest,
    /// No automatic position: `stream` reports an error until [`seek`] sets one, and
    /// an out-of-range position is reported as an error.
    ///
    /// [`seek`]: crate::Consumer::seek
    None,
}

/// A committed offset: the offset of the next record to read, and a string the
/// committer may attach (at most 4 KiB).
///
/// ```
/// use sluice_client::OffsetAndMetadata;
///
/// let o = OffsetAndMetadata::new(42).with_metadata("batch 7 done");
/// assert_eq!((o.offset, o.metadata.as_str()), (42, "batch 7 done"));
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct OffsetAndMetadata {
    pub offset: u64,
    pub metadata: String,
}

impl OffsetAndMetadata {
    pub fn new(offset: u64) -> Self {
        Self {
            offset,
            metadata: String::new(),
        }
    }

    pub fn with_metadata(mut self, metadata: impl Into<String>) -> Self {
        self.metadata = metadata.into();
        self
    }
}

/// How durable a write must be before the broker acknowledges it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Acks {
    /// Committed by a Raft majority, each replica fsynced (the default).
    #[default]
    All,
    /// Appended and fsynced on the leader.
    Leader,
    /// The broker answers as soon as it has read the request; offsets are unknown.
    None,
}

impl Acks {
    pub(crate) fn to_proto(self) -> v1::Acks {
        match self {
            Acks::All => v1::Acks::All,
            Acks::Leader => v1::Acks::Leader,
            Acks::None => v1::Acks::None,
        }
    }
}

impl fmt::Display for Acks {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Acks::All => "all",
            Acks::Leader => "leader",
            Acks::None => "none",
        })
    }
}

impl std::str::FromStr for Acks {
    type Err = String;

    /// Parses `all` (or `-1`), `leader` (or `1`) and `none` (or `0`).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "all" | "-1" => Ok(Acks::All),
            "leader" | "1" => Ok(Acks::Leader),
            "none" | "0" => Ok(Acks::None),
            _ => Err(format!(
                "unknown acks {s:?}: choose one of all, leader, none"
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn acks_parse_and_display_round_trip() {
        for acks in [Acks::All, Acks::Leader, Acks::None] {
            assert_eq!(acks.to_string().parse::<Acks>(), Ok(acks));
        }
        assert_eq!("-1".parse::<Acks>(), Ok(Acks::All));
        assert_eq!(" LEADER ".parse::<Acks>(), Ok(Acks::Leader));
        assert!(
            "most"
                .parse::<Acks>()
                .unwrap_err()
                .contains("all, leader, none")
        );
        assert_eq!(Acks::default(), Acks::All);
        assert_eq!(Acks::None.to_proto(), v1::Acks::None);
    }

    #[test]
    fn topic_partitions_order_by_topic_then_partition() {
        let mut tps = [
            TopicPartition::new("b", 0),
            TopicPartition::new("a", 2),
            TopicPartition::new("a", 1),
        ];
        tps.sort();
        assert_eq!(tps[0], TopicPartition::new("a", 1));
        assert_eq!(tps[2].to_string(), "b/0");
    }
}
