//! The delay before each attempt of a recovery cycle.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Exponential backoff between attempts: none before attempt 1, then
/// `base * multiplier^(n-1)` before attempt `n >= 2` (defaults 1 s and 2.0:
/// 2 s before attempt 2, 4 s before attempt 3), optionally jittered.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Backoff {
    base: Duration,
    multiplier: f64,
    max: Duration,
    jitter: f64,
}

impl Default for Backoff {
    fn default() -> Self {
        Self {
            base: Duration::from_secs(1),
            multiplier: 2.0,
            max: Duration::from_secs(300),
            jitter: 0.0,
        }
    }
}

impl Backoff {
    /// Backoff from `base` growing by `multiplier` per attempt.
    ///
    /// # Panics
    /// If `multiplier` is below 1.0 or not finite.
    pub fn new(base: Duration, multiplier: f64) -> Self {
        assert!(
            multiplier.is_finite() && multiplier >= 1.0,
            "backoff multiplier must be >= 1.0"
        );
        Self {
            base,
            multiplier,
            ..Self::default()
        }
    }

    /// Caps each delay at `max` (default 300 s).
    pub fn max(mut self, max: Duration) -> Self {
        self.max = max;
        self
    }

    /// Spreads each delay uniformly over `delay * (1 ± fraction)`, so that
    /// replicas that lost a dependency together do not retry in lockstep.
    ///
    /// # Panics
    /// If `fraction` is outside `[0, 1]`.
    pub fn jitter(mut self, fraction: f64) -> Self {
        assert!((0.0..=1.0).contains(&fraction), "jitter must be in [0, 1]");
        self.jitter = fraction;
        self
    }

    /// The delay before attempt `attempt` (1-based), without jitter.
    pub fn nominal(&self, attempt: u32) -> Duration {
        if attempt <= 1 {
            return Duration::ZERO;
        }
        let secs = self.base.as_secs_f64() * self.multiplier.powi(attempt as i32 - 1);
        Duration::try_from_secs_f64(secs)
            .unwrap_or(self.max)
            .min(self.max)
    }

    /// The delay before attempt `attempt` (1-based), jittered if configured.
    pub fn delay(&self, attempt: u32) -> Duration {
        let nominal = self.nominal(attempt);
        if self.jitter == 0.0 || nominal.is_zero() {
            return nominal;
        }
        let unit = random_unit() * 2.0 - 1.0; // [-1, 1)
        nominal
            .mul_f64((1.0 + unit * self.jitter).max(0.0))
            .min(self.max)
    }
}

/// A uniform number in `[0, 1)`; splitmix64 over a global counter seeded
/// from the clock. Statistical quality is all jitter needs.
fn random_unit() -> f64 {
    static STATE: AtomicU64 = AtomicU64::new(0);
    let mut seed = STATE.fetch_add(0x9e37_79b9_7f4a_7c15, Ordering::Relaxed);
    if seed == 0 {
        seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64);
        STATE.store(seed, Ordering::Relaxed);
    }
    let mut z = seed.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^= z >> 31;
    (z >> 11) as f64 / (1u64 << 53) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_the_seeds() {
        let b = Backoff::default();
        assert_eq!(b.nominal(1), Duration::ZERO);
        assert_eq!(b.nominal(2), Duration::from_secs(2));
        assert_eq!(b.nominal(3), Duration::from_secs(4));
        assert_eq!(b.nominal(4), Duration::from_secs(8));
    }

    #[test]
    fn capped_and_jittered_within_bounds() {
        let b = Backoff::new(Duration::from_secs(1), 10.0).max(Duration::from_secs(50));
        assert_eq!(b.nominal(4), Duration::from_secs(50));
        let j = Backoff::default().jitter(0.5);
        for _ in 0..1000 {
            let d = j.delay(3);
            assert!(
                d >= Duration::from_secs(2) && d <= Duration::from_secs(6),
                "{d:?}"
            );
        }
    }
}
