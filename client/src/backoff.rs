//! Exponential back-off with jitter, and the crate's small source of randomness.
//!
//! Retries wait `initial * 2^attempt`, capped at `max`, then spread by ±20 % (as
//! Kafka's `retry.backoff.ms` / `retry.backoff.max.ms`), so that many clients retrying
//! after the same failover do not hit the new leader in lock-step.
//!
//! Randomness comes from the standard library's randomly keyed SipHash
//! ([`std::collections::hash_map::RandomState`]) over a counter: good enough for
//! jitter and for picking a sticky partition, and no extra dependency.

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Fraction of the delay added or removed at random.
pub const JITTER: f64 = 0.2;

/// Computes retry delays: exponential from `initial`, capped at `max`, ±20 % jitter.
///
/// ```
/// use std::time::Duration;
/// use sluice_client::Backoff;
///
/// let backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(1));
/// let d = backoff.delay(3); // about 800 ms
/// assert!(d >= Duration::from_millis(640) && d <= Duration::from_millis(960));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    /// Delay before the first retry (attempt 0), before jitter.
    pub initial: Duration,
    /// Largest delay, before jitter.
    pub max: Duration,
}

impl Backoff {
    /// A back-off from `initial` doubling up to `max` (`max` is raised to `initial`
    /// if smaller).
    pub fn new(initial: Duration, max: Duration) -> Self {
        Self {
            initial,
            max: max.max(initial),
        }
    }

    /// The delay before retry number `attempt` (0-based), with random jitter.
    pub fn delay(&self, attempt: u32) -> Duration {
        self.delay_with(attempt, random_unit())
    }

    /// The delay before retry `attempt` for a given random draw `unit` in `[0, 1)`:
    /// `unit = 0.5` gives the exact exponential value, 0 gives -20 %, 1 gives +20 %.
    pub fn delay_with(&self, attempt: u32, unit: f64) -> Duration {
        let base = self.base(attempt).as_secs_f64();
        let factor = 1.0 + JITTER * (2.0 * unit.clamp(0.0, 1.0) - 1.0);
        Duration::from_secs_f64(base * factor)
    }

    /// The delay before retry `attempt` without jitter.
    pub fn base(&self, attempt: u32) -> Duration {
        let factor = 2u32.saturating_pow(attempt.min(31));
        self.initial.saturating_mul(factor).min(self.max)
    }
}

/// A random `u64`.
pub(crate) fn random_u64() -> u64 {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut h = RandomState::new().build_hasher();
    h.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
    h.finish()
}

/// A random number in `[0, 1)`.
pub(crate) fn random_unit() -> f64 {
    (random_u64() >> 11) as f64 / (1u64 << 53) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_from_initial_and_caps_at_max() {
        let b = Backoff::new(Duration::from_millis(100), Duration::from_secs(1));
        let bases: Vec<u128> = (0..7).map(|a| b.base(a).as_millis()).collect();
        assert_eq!(bases, [100, 200, 400, 800, 1000, 1000, 1000]);
        // Huge attempt numbers neither overflow nor panic.
        assert_eq!(b.base(u32::MAX), Duration::from_secs(1));
    }

    #[test]
    fn jitter_spreads_by_twenty_percent() {
        let b = Backoff::new(Duration::from_millis(100), Duration::from_secs(10));
        assert_eq!(b.delay_with(0, 0.5), Duration::from_millis(100));
        assert_eq!(b.delay_with(0, 0.0).as_millis(), 80);
        assert_eq!(b.delay_with(0, 1.0).as_millis(), 120);
        assert_eq!(b.delay_with(2, 0.0).as_millis(), 320);
        // Out-of-range draws are clamped.
        assert_eq!(b.delay_with(0, 7.0).as_millis(), 120);
        for attempt in 0..10 {
            let d = b.delay(attempt);
            let base = b.base(attempt).as_secs_f64();
            assert!(d.as_secs_f64() >= base * 0.8 - 1e-9, "{d:?}");
            assert!(d.as_secs_f64() <= base * 1.2 + 1e-9, "{d:?}");
        }
    }

    #[test]
    fn max_below_initial_is_raised() {
        let b = Backoff::new(Duration::from_secs(2), Duration::from_secs(1));
        assert_eq!(b.base(5), Duration::from_secs(2));
    }

    #[test]
    fn random_values_vary_and_stay_in_range() {
        let draws: Vec<f64> = (0..1000).map(|_| random_unit()).collect();
        assert!(draws.iter().all(|d| (0.0..1.0).contains(d)));
        let mean = draws.iter().sum::<f64>() / draws.len() as f64;
        assert!((0.4..0.6).contains(&mean), "{mean}");
        assert_ne!(random_u64(), random_u64());
    }
}
