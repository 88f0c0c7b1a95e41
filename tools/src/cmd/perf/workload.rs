//! What the load generators send and when: values, keys, the send-time stamp and
//! the rate schedule. Pure and deterministic given a seed; no I/O, no clocks but the
//! ones callers pass in.

use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};

use super::*;

/// A small, fast PRNG (SplitMix64): payloads and random keys, not cryptography.
#[derive(Debug, Clone)]
pub struct SplitMix64(u64);

impl SplitMix64 {
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}

/// A seed from the clock, different for every run.
pub fn seed() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0x5EED, |d| d.as_nanos() as u64)
}

/// The value every record shares: `size` random uppercase letters.
pub fn payload(size: usize, rng: &mut SplitMix64) -> Bytes {
    let mut v = Vec::with_capacity(size);
    while v.len() < size {
        let mut r = rng.next_u64();
        for _ in 0..8 {
            if v.len() == size {
                break;
            }
            v.push(b'A' + (r % 26) as u8);
            r >>= 8;
        }
    }
    Bytes::from(v)
}

impl KeyMode {
    /// The key of a producer's `n`-th record.
    pub(super) fn key(self, n: u64, rng: &mut SplitMix64) -> Option<Bytes> {
        match self {
            KeyMode::None => None,
            KeyMode::Random => Some(Bytes::copy_from_slice(&rng.next_u64().to_be_bytes())),
            KeyMode::Seq(k) => Some(Bytes::from(format!("key-{}", n % k))),
        }
    }
}

/// Interval schedule for `--rate`: the `k`-th record is due at `start + k / rate`.
#[derive(Debug, Clone)]
pub struct Pacer {
    start: Instant,
    interval: Option<f64>,
    next: u64,
}

impl Pacer {
    /// A schedule of `rate` records per second from `start`; `None` is unlimited.
    pub fn new(start: Instant, rate: Option<f64>) -> Self {
        Self {
            start,
            interval: rate.map(|r| 1.0 / r),
            next: 0,
        }
    }

    /// When the next record is due (`None`: now, unlimited).
    pub fn next_due(&mut self) -> Option<Instant> {
        let interval = self.interval?;
        let at = self.start + Duration::from_secs_f64(self.next as f64 * interval);
        self.next += 1;
        Some(at)
    }
}

/// `total` split into `parts` shares that differ by at most one.
pub fn split_evenly(total: u64, parts: u32) -> Vec<u64> {
    let parts = u64::from(parts.max(1));
    (0..parts)
        .map(|i| total / parts + u64::from(i < total % parts))
        .collect()
}

/// Writes `nanos` (since the run's base instant) into the value's first 8 bytes.
pub fn stamp(template: &[u8], nanos: u64) -> Bytes {
    let mut v = BytesMut::from(template);
    v[..8].copy_from_slice(&nanos.to_be_bytes());
    v.freeze()
}

/// The time stamped by [`stamp`], if the value is long enough.
pub fn read_stamp(value: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(value.get(..8)?.try_into().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_follow_the_mode() {
        let mut rng = SplitMix64::new(1);
        assert_eq!(KeyMode::None.key(3, &mut rng), None);
        assert_eq!(
            KeyMode::Seq(10).key(13, &mut rng).as_deref(),
            Some(&b"key-3"[..])
        );
        let a = KeyMode::Random.key(0, &mut rng).unwrap();
        let b = KeyMode::Random.key(0, &mut rng).unwrap();
        assert_eq!(a.len(), 8);
        assert_ne!(a, b);
    }

    #[test]
    fn payloads_have_the_size_and_are_letters() {
        let mut rng = SplitMix64::new(42);
        for size in [1, 7, 8, 9, 1024] {
            let p = payload(size, &mut rng);
            assert_eq!(p.len(), size);
            assert!(p.iter().all(u8::is_ascii_uppercase));
        }
        let p = payload(4096, &mut rng);
        let distinct: std::collections::BTreeSet<u8> = p.iter().copied().collect();
        assert!(distinct.len() > 20, "{distinct:?}");
    }

    #[test]
    fn stamps_round_trip() {
        let template = payload(32, &mut SplitMix64::new(3));
        let v = stamp(&template, 123_456_789);
        assert_eq!(v.len(), 32);
        assert_eq!(read_stamp(&v), Some(123_456_789));
        assert_eq!(&v[8..], &template[8..]);
        assert_eq!(read_stamp(b"short"), None);
    }

    #[test]
    fn the_pacer_schedules_at_the_rate() {
        let start = Instant::now();
        let mut p = Pacer::new(start, Some(1000.0));
        let due: Vec<Instant> = (0..1001).map(|_| p.next_due().unwrap()).collect();
        assert_eq!(due[0], start);
        assert!((due[1] - start).abs_diff(Duration::from_millis(1)) < Duration::from_micros(1));
        assert!((due[1000] - start).abs_diff(Duration::from_secs(1)) < Duration::from_micros(1));
        let mut unlimited = Pacer::new(start, None);
        assert_eq!(unlimited.next_due(), None);
    }

    #[test]
    fn records_split_evenly_over_producers() {
        assert_eq!(split_evenly(10, 3), [4, 3, 3]);
        assert_eq!(split_evenly(2, 4), [1, 1, 0, 0]);
        assert_eq!(split_evenly(7, 1), [7]);
        assert_eq!(split_evenly(100, 7).iter().sum::<u64>(), 100);
    }
}
