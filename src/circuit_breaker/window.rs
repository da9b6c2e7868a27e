//! Sliding windows of call outcomes, O(1) per call at any volume.
//!
//! Both windows keep a running total next to their slots. Recording adds to a
//! slot and to the total; evicting subtracts exactly what the slot held, taken
//! out with one atomic `swap`, so the total always equals the sum of the slots
//! once in-flight recorders finish, whatever the interleaving.
//!
//! Calls and failures share one `u64` as two signed 32-bit digits
//! (`calls + failures << 32`). A recorder and an evictor can race so that a
//! subtraction lands before the matching addition; decoding the digits as
//! signed keeps such a transient `-1` from borrowing into the other field.

use std::sync::atomic::{AtomicI64, AtomicU8, AtomicU64, Ordering};

use super::core::Padded;

/// Counts in a window at one moment.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct WindowCounts {
    pub(crate) calls: u64,
    pub(crate) failures: u64,
    pub(crate) slow: u64,
}

const FAILURE: u64 = 1 << 32;

#[inline]
fn decode(total: u64, slow: i64) -> WindowCounts {
    let calls = total as u32 as i32 as i64;
    let failures = (total as i64).wrapping_sub(calls) >> 32;
    WindowCounts {
        calls: calls.max(0) as u64,
        failures: failures.max(0) as u64,
        slow: slow.max(0) as u64,
    }
}

/// Slot codes of the count window.
const RECORDED: u8 = 1;
const FAILED: u8 = 2;
const SLOW: u8 = 4;

#[inline]
fn packed(code: u8) -> i64 {
    i64::from(code & RECORDED) + (i64::from((code & FAILED) >> 1) << 32)
}

/// The last `size` calls, in a ring.
#[derive(Debug)]
pub(crate) struct CountRing {
    head: Padded<AtomicU64>,
    totals: Padded<AtomicU64>,
    slow: Padded<AtomicI64>,
    slots: Box<[AtomicU8]>,
}

impl CountRing {
    pub(crate) fn new(size: u32) -> Self {
        Self {
            head: Padded(AtomicU64::new(0)),
            totals: Padded(AtomicU64::new(0)),
            slow: Padded(AtomicI64::new(0)),
            slots: (0..size).map(|_| AtomicU8::new(0)).collect(),
        }
    }

    #[inline]
    pub(crate) fn record(&self, failed: bool, slow: bool) -> WindowCounts {
        let code = RECORDED | (u8::from(failed) << 1) | (u8::from(slow) << 2);
        let i = self.head.0.fetch_add(1, Ordering::Relaxed) % self.slots.len() as u64;
        let slot = &self.slots[i as usize];
        if slot.load(Ordering::Acquire) == code {
            // The steady state: the evicted call had the same outcome, so
            // neither the slot nor the totals change. Loads only.
            return decode(
                self.totals.0.load(Ordering::Acquire),
                self.slow.0.load(Ordering::Relaxed),
            );
        }
        let old = slot.swap(code, Ordering::AcqRel);
        let delta = packed(code).wrapping_sub(packed(old)) as u64;
        let total = self
            .totals
            .0
            .fetch_add(delta, Ordering::AcqRel)
            .wrapping_add(delta);
        let slow_delta = i64::from((code & SLOW) >> 2) - i64::from((old & SLOW) >> 2);
        let slow_total = if slow_delta != 0 {
            self.slow.0.fetch_add(slow_delta, Ordering::AcqRel) + slow_delta
        } else {
            self.slow.0.load(Ordering::Relaxed)
        };
        decode(total, slow_total)
    }

    pub(crate) fn counts(&self) -> WindowCounts {
        decode(
            self.totals.0.load(Ordering::Acquire),
            self.slow.0.load(Ordering::Acquire),
        )
    }

    pub(crate) fn clear(&self) {
        for slot in self.slots.iter() {
            let old = slot.swap(0, Ordering::AcqRel);
            if old != 0 {
                self.totals
                    .0
                    .fetch_sub(packed(old) as u64, Ordering::AcqRel);
                if old & SLOW != 0 {
                    self.slow.0.fetch_sub(1, Ordering::AcqRel);
                }
            }
        }
    }
}

#[derive(Debug, Default)]
#[repr(align(64))]
struct Bucket {
    epoch: AtomicU64,
    counts: AtomicU64,
    slow: AtomicI64,
}

/// Fixed time buckets aligned to multiples of the bucket width.
///
/// A bucket `[k*w, (k+1)*w)` is live while its end is less than a full window
/// old, so at tick `t` the live buckets are `t - n ..= t` (`n` = buckets per
/// window): the ring holds `n + 1` slots.
#[derive(Debug)]
pub(crate) struct TimeBuckets {
    head: Padded<AtomicU64>,
    totals: Padded<AtomicU64>,
    slow: Padded<AtomicI64>,
    width: u64,
    buckets: Box<[Bucket]>,
}

impl TimeBuckets {
    pub(crate) fn new(width_nanos: u64, per_window: u32) -> Self {
        Self {
            head: Padded(AtomicU64::new(0)),
            totals: Padded(AtomicU64::new(0)),
            slow: Padded(AtomicI64::new(0)),
            width: width_nanos.max(1),
            buckets: (0..=per_window).map(|_| Bucket::default()).collect(),
        }
    }

    #[inline]
    pub(crate) fn record(&self, now: u64, failed: bool, slow: bool) -> WindowCounts {
        let tick = now / self.width;
        if tick > self.head.0.load(Ordering::Acquire) {
            self.advance(tick);
        }
        let bucket = &self.buckets[(tick % self.buckets.len() as u64) as usize];
        let delta = 1 + if failed { FAILURE } else { 0 };
        bucket.counts.fetch_add(delta, Ordering::AcqRel);
        let total = self
            .totals
            .0
            .fetch_add(delta, Ordering::AcqRel)
            .wrapping_add(delta);
        let slow_total = if slow {
            bucket.slow.fetch_add(1, Ordering::AcqRel);
            self.slow.0.fetch_add(1, Ordering::AcqRel) + 1
        } else {
            self.slow.0.load(Ordering::Relaxed)
        };
        decode(total, slow_total)
    }

    /// Counts of the buckets still live at `now`.
    pub(crate) fn counts(&self, now: u64) -> WindowCounts {
        let tick = now / self.width;
        if tick > self.head.0.load(Ordering::Acquire) {
            self.advance(tick);
        }
        decode(
            self.totals.0.load(Ordering::Acquire),
            self.slow.0.load(Ordering::Acquire),
        )
    }

    /// Expires every bucket whose slot the ticks up to `tick` reuse.
    #[cold]
    fn advance(&self, tick: u64) {
        let n = self.buckets.len() as u64;
        let head = self.head.0.load(Ordering::Acquire);
        let first = (head + 1).max(tick.saturating_sub(n - 1));
        for x in first..=tick {
            let bucket = &self.buckets[(x % n) as usize];
            let epoch = bucket.epoch.load(Ordering::Acquire);
            if epoch < x
                && bucket
                    .epoch
                    .compare_exchange(epoch, x, Ordering::AcqRel, Ordering::Acquire)
                    .is_ok()
            {
                self.evict(bucket);
            }
        }
        self.head.0.fetch_max(tick, Ordering::AcqRel);
    }

    fn evict(&self, bucket: &Bucket) {
        let counts = bucket.counts.swap(0, Ordering::AcqRel);
        if counts != 0 {
            self.totals.0.fetch_sub(counts, Ordering::AcqRel);
        }
        let slow = bucket.slow.swap(0, Ordering::AcqRel);
        if slow != 0 {
            self.slow.0.fetch_sub(slow, Ordering::AcqRel);
        }
    }

    pub(crate) fn clear(&self) {
        for bucket in self.buckets.iter() {
            self.evict(bucket);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signed_digits_survive_transient_negatives() {
        let total = 0u64.wrapping_sub(FAILURE).wrapping_add(3);
        assert_eq!(
            decode(total, 0),
            WindowCounts {
                calls: 3,
                failures: 0,
                slow: 0
            }
        );
        let total = 5u64.wrapping_add(2 * FAILURE).wrapping_sub(1);
        assert_eq!(
            decode(total, 0),
            WindowCounts {
                calls: 4,
                failures: 2,
                slow: 0
            }
        );
    }

    #[test]
    fn count_ring_evicts_oldest() {
        let ring = CountRing::new(3);
        ring.record(true, false);
        ring.record(true, true);
        let c = ring.record(false, false);
        assert_eq!(
            c,
            WindowCounts {
                calls: 3,
                failures: 2,
                slow: 1
            }
        );
        let c = ring.record(false, false);
        assert_eq!(
            c,
            WindowCounts {
                calls: 3,
                failures: 1,
                slow: 1
            }
        );
        let c = ring.record(false, false);
        assert_eq!(
            c,
            WindowCounts {
                calls: 3,
                failures: 0,
                slow: 0
            }
        );
        ring.clear();
        assert_eq!(ring.counts(), WindowCounts::default());
    }

    #[test]
    fn time_buckets_expire_when_their_end_is_a_window_old() {
        // 4 buckets of 10 ns: window 40 ns.
        let w = TimeBuckets::new(10, 4);
        w.record(5, true, false); // bucket [0, 10)
        assert_eq!(w.counts(49).calls, 1, "end 10 is 39 old");
        assert_eq!(w.counts(50).calls, 0, "end 10 is a full window (40) old");
        let w = TimeBuckets::new(10, 4);
        w.record(9, true, false);
        w.record(10, false, false);
        assert_eq!(
            w.counts(49),
            WindowCounts {
                calls: 2,
                failures: 1,
                slow: 0
            }
        );
        assert_eq!(
            w.counts(50),
            WindowCounts {
                calls: 1,
                failures: 0,
                slow: 0
            }
        );
        assert_eq!(w.counts(1_000_000), WindowCounts::default());
    }
}
