//! Which old segments retention deletes. Pure decisions; the log does the deleting.
//!
//! Like Kafka: by size, drop the oldest segment while the rest still hold at least
//! `max_bytes`; by age, drop the oldest segment while its newest batch is older than
//! `max_age`. Never the active segment, and never a segment holding offsets at or
//! above `protect_from` (data not yet committed or applied).

use super::config::RetentionPolicy;

/// What retention needs to know of a segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SegmentStats {
    pub size: u64,
    /// Offset after the segment's last record.
    pub next_offset: u64,
    /// Newest batch max-timestamp in the segment (ms), `i64::MIN` if it holds none.
    pub max_timestamp: i64,
}

/// How many segments, oldest first, retention deletes. `segments` excludes the
/// active segment; `active_size` counts toward the total.
pub fn segments_to_delete(
    policy: &RetentionPolicy,
    segments: &[SegmentStats],
    active_size: u64,
    now_ms: i64,
    protect_from: u64,
) -> usize {
    let mut total: u64 = segments.iter().map(|s| s.size).sum::<u64>() + active_size;
    let oldest_kept = policy
        .max_age
        .map(|age| now_ms.saturating_sub(i64::try_from(age.as_millis()).unwrap_or(i64::MAX)));
    let mut count = 0;
    for s in segments {
        if s.next_offset > protect_from {
            break;
        }
        let by_size = policy.max_bytes.is_some_and(|max| total - s.size >= max);
        let by_age = oldest_kept.is_some_and(|oldest| s.max_timestamp < oldest);
        if !(by_size || by_age) {
            break;
        }
        total -= s.size;
        count += 1;
    }
    count
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn seg(i: u64, ts: i64) -> SegmentStats {
        SegmentStats {
            size: 100,
            next_offset: (i + 1) * 10,
            max_timestamp: ts,
        }
    }

    #[test]
    fn size_retention_keeps_at_least_max_bytes() {
        let policy = RetentionPolicy {
            max_bytes: Some(250),
            max_age: None,
        };
        let segs: Vec<_> = (0..5).map(|i| seg(i, 0)).collect();
        // 5 sealed + 50 active = 550 bytes; dropping 3 leaves 250.
        assert_eq!(segments_to_delete(&policy, &segs, 50, 0, u64::MAX), 3);
    }

    #[test]
    fn age_retention_stops_at_first_young_segment() {
        let policy = RetentionPolicy {
            max_bytes: None,
            max_age: Some(Duration::from_millis(1000)),
        };
        let segs = vec![seg(0, 100), seg(1, 5000), seg(2, 200)];
        assert_eq!(segments_to_delete(&policy, &segs, 0, 3000, u64::MAX), 1);
    }

    #[test]
    fn uncommitted_segments_are_protected() {
        let policy = RetentionPolicy {
            max_bytes: Some(0),
            max_age: None,
        };
        let segs: Vec<_> = (0..5).map(|i| seg(i, 0)).collect();
        assert_eq!(segments_to_delete(&policy, &segs, 0, 0, 25), 2);
    }

    #[test]
    fn no_policy_deletes_nothing() {
        let segs: Vec<_> = (0..5).map(|i| seg(i, 0)).collect();
        let policy = RetentionPolicy::default();
        assert_eq!(segments_to_delete(&policy, &segs, 0, i64::MAX, u64::MAX), 0);
    }
}
