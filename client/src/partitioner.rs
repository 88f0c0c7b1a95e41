//! Choosing a partition for a record, exactly as Kafka's Java producer does.
//!
//! - Keyed records: `toPositive(murmur2(key)) % partitions` ([`partition_for_key`]),
//!   bit for bit Kafka's `DefaultPartitioner` / `BuiltInPartitioner.partitionForKey`,
//!   so a key lands on the same partition number as it would in Kafka.
//! - Keyless records: sticky partitioning (`StickyPartitioner`, KIP-480): all keyless
//!   records of a topic go to one partition until a new batch would have to be started
//!   for it, then the producer switches to another partition chosen at random among
//!   those with a leader. This fills batches instead of spreading single records
//!   over every partition.

use foldhash::HashMap;

/// Kafka's murmur2 (`org.apache.kafka.common.utils.Utils.murmur2`), seed
/// `0x9747b28c`, as a signed 32-bit value like Java's `int`.
///
/// ```
/// assert_eq!(sluice_client::partitioner::murmur2(b"21"), -973932308);
/// ```
pub fn murmur2(data: &[u8]) -> i32 {
    const SEED: u32 = 0x9747_b28c;
    const M: u32 = 0x5bd1_e995;
    const R: u32 = 24;

    let len = data.len();
    let mut h: u32 = SEED ^ (len as u32);
    let mut chunks = data.chunks_exact(4);
    for c in &mut chunks {
        let mut k = u32::from_le_bytes([c[0], c[1], c[2], c[3]]);
        k = k.wrapping_mul(M);
        k ^= k >> R;
        k = k.wrapping_mul(M);
        h = h.wrapping_mul(M);
        h ^= k;
    }
    let tail = chunks.remainder();
    if tail.len() >= 3 {
        h ^= u32::from(tail[2]) << 16;
    }
    if tail.len() >= 2 {
        h ^= u32::from(tail[1]) << 8;
    }
    if !tail.is_empty() {
        h ^= u32::from(tail[0]);
        h = h.wrapping_mul(M);
    }
    h ^= h >> 13;
    h = h.wrapping_mul(M);
    h ^= h >> 15;
    h as i32
}

/// Kafka's `Utils.toPositive`: clears the sign bit (not `abs`, which would overflow
/// for `i32::MIN`).
pub fn to_positive(n: i32) -> u32 {
    (n & 0x7fff_ffff) as u32
}

/// The partition Kafka would choose for `key` among `partitions` partitions.
/// `partitions` must not be 0.
///
/// ```
/// use sluice_client::partitioner::partition_for_key;
///
/// // murmur2("foobar") = -790332482; toPositive = 1357151166; 1357151166 % 10 = 6.
/// assert_eq!(partition_for_key(b"foobar", 10), 6);
/// ```
pub fn partition_for_key(key: &[u8], partitions: u32) -> u32 {
    debug_assert!(partitions > 0);
    to_positive(murmur2(key)) % partitions.max(1)
}

/// The current sticky partition of every topic.
#[derive(Debug, Default)]
pub(crate) struct StickyPartitioner {
    current: HashMap<String, u32>,
}

impl StickyPartitioner {
    /// The sticky partition for `topic`, choosing one if there is none yet (or the
    /// current one no longer exists). `available` are the partitions with a leader;
    /// when none has one, any of the `count` partitions is used.
    pub(crate) fn partition(
        &mut self,
        topic: &str,
        count: u32,
        available: &[u32],
        random: &mut impl FnMut() -> u64,
    ) -> u32 {
        self.current(topic, count).unwrap_or_else(|| {
            let p = choose(count, available, None, random);
            self.current.insert(topic.to_owned(), p);
            p
        })
    }

    /// The sticky partition for `topic`, if it has one among `count` partitions.
    pub(crate) fn current(&self, topic: &str, count: u32) -> Option<u32> {
        self.current.get(topic).copied().filter(|&p| p < count)
    }

    /// A new batch is needed for `topic`'s sticky partition `prev`: switch to another
    /// partition (different from `prev` when there is a choice) and return it. If the
    /// sticky partition already moved away from `prev`, keeps the current one.
    pub(crate) fn on_new_batch(
        &mut self,
        topic: &str,
        prev: u32,
        count: u32,
        available: &[u32],
        random: &mut impl FnMut() -> u64,
    ) -> u32 {
        if let Some(&p) = self.current.get(topic)
            && p != prev
            && p < count
        {
            return p;
        }
        let p = choose(count, available, Some(prev), random);
        self.current.insert(topic.to_owned(), p);
        p
    }
}

fn choose(
    count: u32,
    available: &[u32],
    avoid: Option<u32>,
    random: &mut impl FnMut() -> u64,
) -> u32 {
    let available: Vec<u32> = available.iter().copied().filter(|&p| p < count).collect();
    let pool: Vec<u32> = if available.is_empty() {
        (0..count).collect()
    } else {
        available
    };
    let choices: Vec<u32> = match avoid {
        Some(a) if pool.len() > 1 => pool.iter().copied().filter(|&p| p != a).collect(),
        _ => pool,
    };
    if choices.is_empty() {
        return 0;
    }
    choices[(random() % choices.len() as u64) as usize]
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Kafka's `UtilsTest.testMurmur2`.
    #[test]
    fn murmur2_matches_kafka_utils_test() {
        let cases: [(&[u8], i32); 6] = [
            (b"21", -973932308),
            (b"foobar", -790332482),
            (b"a-little-bit-long-string", -985981536),
            (b"a-little-bit-longer-string", -1486304829),
            (
                b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8",
                -58897971,
            ),
            (b"abc", 479470107),
        ];
        for (key, want) in cases {
            assert_eq!(murmur2(key), want, "{:?}", String::from_utf8_lossy(key));
        }
    }

    /// Vectors other Kafka-compatible clients check against the Java implementation:
    /// Akka's Kafka-compatible shard allocation ("1".."12345", every tail length) and
    /// librdkafka's `rdmurmur2.c` ("kafka").
    #[test]
    fn murmur2_matches_other_kafka_clients() {
        let cases: [(&str, i32); 6] = [
            ("1", -1993445489),
            ("12", 126087238),
            ("123", -267702483),
            ("1234", -1614185708),
            ("12345", -1188365604),
            ("kafka", -798503068),
        ];
        for (key, want) in cases {
            assert_eq!(murmur2(key.as_bytes()), want, "{key}");
        }
    }

    #[test]
    fn empty_key_hashes_like_kafka() {
        // h = seed ^ 0, no tail, final mix only.
        let mut h: u32 = 0x9747_b28c;
        h ^= h >> 13;
        h = h.wrapping_mul(0x5bd1_e995);
        h ^= h >> 15;
        assert_eq!(murmur2(b""), h as i32);
    }

    #[test]
    fn to_positive_clears_the_sign_bit() {
        assert_eq!(to_positive(-1), 0x7fff_ffff);
        assert_eq!(to_positive(i32::MIN), 0);
        assert_eq!(to_positive(5), 5);
        assert_eq!(to_positive(-973932308), 1173551340);
    }

    #[test]
    fn keyed_partitions_match_kafka() {
        // toPositive(murmur2(key)) % n, computed from the Kafka vectors above.
        assert_eq!(partition_for_key(b"21", 3), 1173551340 % 3);
        assert_eq!(partition_for_key(b"foobar", 10), 6);
        assert_eq!(partition_for_key(b"abc", 7), 479470107 % 7);
        assert_eq!(
            partition_for_key(b"a-little-bit-long-string", 12),
            (-985981536i32 & 0x7fff_ffff) as u32 % 12
        );
        for n in 1..50 {
            assert!(partition_for_key(b"any", n) < n);
        }
    }

    fn counter() -> impl FnMut() -> u64 {
        let mut n = 0u64;
        move || {
            n += 1;
            n
        }
    }

    #[test]
    fn sticky_partition_stays_until_a_new_batch_is_needed() {
        let mut s = StickyPartitioner::default();
        let mut rnd = counter();
        let all = [0, 1, 2, 3];
        let first = s.partition("t", 4, &all, &mut rnd);
        for _ in 0..10 {
            assert_eq!(s.partition("t", 4, &all, &mut rnd), first);
        }
        let next = s.on_new_batch("t", first, 4, &all, &mut rnd);
        assert_ne!(next, first);
        assert_eq!(s.partition("t", 4, &all, &mut rnd), next);
        // A stale notification (the sticky partition already moved) changes nothing.
        assert_eq!(s.on_new_batch("t", first, 4, &all, &mut rnd), next);
        // Topics are independent.
        let other = s.partition("u", 1, &[0], &mut rnd);
        assert_eq!(other, 0);
        assert_eq!(s.partition("t", 4, &all, &mut rnd), next);
    }

    #[test]
    fn sticky_prefers_partitions_with_a_leader() {
        let mut s = StickyPartitioner::default();
        let mut rnd = counter();
        for _ in 0..20 {
            let p = s.partition("t", 8, &[5], &mut rnd);
            assert_eq!(p, 5);
            // Only one available: switching stays on it.
            assert_eq!(s.on_new_batch("t", p, 8, &[5], &mut rnd), 5);
        }
        // No partition has a leader: any partition will do.
        let mut s = StickyPartitioner::default();
        assert!(s.partition("t", 3, &[], &mut rnd) < 3);
    }

    #[test]
    fn sticky_switching_spreads_over_partitions() {
        let mut s = StickyPartitioner::default();
        let mut rnd = crate::backoff::random_u64;
        let all: Vec<u32> = (0..4).collect();
        let mut seen = [0u32; 4];
        let mut p = s.partition("t", 4, &all, &mut rnd);
        for _ in 0..400 {
            let next = s.on_new_batch("t", p, 4, &all, &mut rnd);
            assert_ne!(next, p);
            p = next;
            seen[p as usize] += 1;
        }
        assert!(seen.iter().all(|&n| n > 50), "{seen:?}");
    }

    #[test]
    fn sticky_handles_shrunk_partition_counts() {
        let mut s = StickyPartitioner::default();
        let mut rnd = counter();
        let p = s.partition("t", 100, &[99], &mut rnd);
        assert_eq!(p, 99);
        // Metadata now says 2 partitions: the old choice is out of range.
        assert!(s.partition("t", 2, &[0, 1], &mut rnd) < 2);
    }
}
