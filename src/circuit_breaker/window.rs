//! Sliding windows of call outcomes, O(1) per call at any volume.
//!
//! Both windows keep a running total next to their slots. Recording adds to a
//! slot and to the total; evicting subtracts exactly what the slot held, taken
//! out with one atomic `swap`, so the total always equals the sum of the slots
//! once in-flight recorders finish, whatever the interleaving.
//!
//! In the count window, calls and failures share one `u64` as two signed
//! 32-bit digits (the window holds at most 2^24 calls, so they never wrap)
//! (`calls + failures << 32`). A recorder and an evictor can race so that a
//! subtraction lands before the matching addition; decoding the digits as
//! signed keeps such a transient `-1` from borrowing into the other field.

use crate::sync::atomic::{AtomicI64, AtomicU8, AtomicU64, Ordering};

use super::core::Padded;

/// Counts in a window at one moment.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct WindowCounts {
    pub(crate) calls: u64,
    pub(crate) failures: u64,
    pub(crate) slow: u64,
}

#[cfg(test)]
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
///
/// Each recording thread fills a block of consecutive slots that it reserves
/// at once ([`block`](Self::block) of them, at most half the ring and 64;
/// see `lease::ring_slot`), so that threads recording at once do not fight
/// over the ring's head. One thread alone fills the ring in call order: the
/// window is exactly its last `size` calls. With several, each fills its
/// own block in order (blocks of more than two threads may overlap in a
/// small ring, where a slot then holds the later of two outcomes), and a
/// thread that stops recording for the breaker (or whose per-thread cache
/// evicts it, when it works for more than 8 breakers, recoveries and drains
/// in turn) leaves at most one block partly filled with outcomes from the
/// ring's previous lap.
#[derive(Debug)]
pub(crate) struct CountRing {
    head: Padded<AtomicU64>,
    totals: Padded<AtomicU64>,
    slow: Padded<AtomicI64>,
    block: u64,
    slots: Box<[AtomicU8]>,
}

impl CountRing {
    pub(crate) fn new(size: u32) -> Self {
        Self {
            head: Padded(AtomicU64::new(0)),
            totals: Padded(AtomicU64::new(0)),
            slow: Padded(AtomicI64::new(0)),
            block: (u64::from(size) / 2).clamp(1, 64),
            slots: (0..size).map(|_| AtomicU8::new(0)).collect(),
        }
    }

    /// Slots a thread reserves at once.
    #[inline]
    pub(crate) fn block(&self) -> u64 {
        self.block
    }

    /// Reserves `n` consecutive slots; returns the first one's index.
    #[inline]
    pub(crate) fn reserve(&self, n: u64) -> u64 {
        self.head.0.fetch_add(n, Ordering::Relaxed)
    }

    #[cfg(test)]
    pub(crate) fn record(&self, failed: bool, slow: bool) -> WindowCounts {
        self.record_at(self.reserve(1), failed, slow)
    }

    /// Records an outcome in slot `index` (modulo the size), evicting the
    /// outcome it held.
    #[inline]
    pub(crate) fn record_at(&self, index: u64, failed: bool, slow: bool) -> WindowCounts {
        let code = RECORDED | (u8::from(failed) << 1) | (u8::from(slow) << 2);
        let i = index % self.slots.len() as u64;
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

/// One counter of a time bucket: the bucket's tick (low [`TAG_BITS`] bits)
/// and its count, in one word. Recording and rotating the bucket to a newer
/// tick are both compare-and-swaps of that word, so an outcome lands in
/// exactly one version of the bucket, and a rotation evicts exactly the
/// counts of the version it replaced: nothing recorded in the gap between
/// "new tick" and "old counts taken" can vanish, because there is no gap.
const TAG_BITS: u32 = 32;
const COUNT_BITS: u32 = 64 - TAG_BITS;
const TAG_MASK: u64 = (1 << TAG_BITS) - 1;
/// A bucket counts at most this many outcomes of one kind; more saturate.
pub(crate) const BUCKET_MAX: u64 = (1 << COUNT_BITS) - 1;

#[inline]
fn tag(tick: u64) -> u64 {
    tick & TAG_MASK
}

/// Ticks from the cell's tag forward to `tick`'s (serial-number arithmetic:
/// valid while the two are less than 2^31 ticks apart).
#[inline]
fn ahead(tick: u64, cell: u64) -> u64 {
    tag(tick).wrapping_sub(cell >> COUNT_BITS) & TAG_MASK
}

/// Adds `delta` to `cell` for `tick`, first rotating the cell to `tick` if
/// it holds an older one. Returns the change to the window's total: the
/// outcomes added minus the ones evicted.
#[inline]
fn add(cell: &AtomicU64, tick: u64, delta: u64) -> i64 {
    let mut cur = cell.load(Ordering::Acquire);
    loop {
        let count = cur & BUCKET_MAX;
        if delta == 0 && count == 0 {
            // Nothing to evict: an empty cell of an old tick is as good as a
            // new one (the next addition rotates it).
            return 0;
        }
        let fwd = ahead(tick, cur);
        let (next, change) = if fwd != 0 && fwd < 1 << (TAG_BITS - 1) {
            // Older tick in the cell: evict it, start this tick's count.
            let added = delta.min(BUCKET_MAX);
            (
                (tag(tick) << COUNT_BITS) | added,
                added as i64 - count as i64,
            )
        } else {
            // Same tick, or a straggler whose tick the cell has passed: its
            // outcome is counted in the newer bucket (kept longer, not lost).
            let added = delta.min(BUCKET_MAX - count);
            (cur + added, added as i64)
        };
        if next == cur {
            return 0;
        }
        match cell.compare_exchange_weak(cur, next, Ordering::AcqRel, Ordering::Acquire) {
            Ok(_) => return change,
            Err(actual) => cur = actual,
        }
    }
}

/// Empties `cell` for `tick` unless it holds a tick within `near` of it
/// (either way: a recorder racing this one). Used when every bucket has
/// expired, where the serial-number test of [`add`] cannot tell an ancient
/// tag from a recent one. Returns the change to the window's total.
fn expire(cell: &AtomicU64, tick: u64, near: u64) -> i64 {
    let mut cur = cell.load(Ordering::Acquire);
    loop {
        let count = cur & BUCKET_MAX;
        let fwd = ahead(tick, cur);
        if fwd < near || (1 << TAG_BITS) - fwd < near {
            return 0;
        }
        match cell.compare_exchange_weak(
            cur,
            tag(tick) << COUNT_BITS,
            Ordering::AcqRel,
            Ordering::Acquire,
        ) {
            Ok(_) => return -(count as i64),
            Err(actual) => cur = actual,
        }
    }
}

/// The count `cell` holds for a bucket still live at `tick` (at most
/// `live - 1` ticks old), else zero.
#[inline]
fn live_count(cell: u64, tick: u64, live: u64) -> u64 {
    if ahead(tick, cell) < live {
        cell & BUCKET_MAX
    } else {
        0
    }
}

/// Fixed time buckets aligned to multiples of the bucket width.
///
/// A bucket `[k*w, (k+1)*w)` is live while its end is less than a full window
/// old, so at tick `t` the live buckets are `t - n ..= t` (`n` = buckets per
/// window): the ring holds `n + 1` slots.
///
/// Every call adds to its bucket's call count, so that count is striped:
/// each thread adds to its own stripe's copy of the ring (see
/// [`crate::util::stripe`]), and two threads recording at once do not fight
/// over one cache line. A bucket's calls are the sum over the stripes, read
/// only when a rate could trip (see [`TimeBuckets::record`]). Failures and
/// slow calls, written only when they happen, are one ring each with a
/// running total.
///
/// Bounds: a bucket's cell counts at most 2^32 - 1 outcomes; beyond that it
/// saturates, it never wraps. The totals are 64-bit. Bucket tags are the
/// tick modulo 2^32: a window idle for a whole window or more is emptied
/// outright when next used, so the wrap never brings old counts back, except
/// after an idle gap within one window of an exact multiple of 2^32 ticks
/// (4,971 days of 100 ms buckets, 71 minutes of the smallest, 1 µs,
/// buckets).
///
/// Calls, failures and slow calls are separate cells: an outcome recorded by
/// a thread that read the clock just before its bucket expired, racing the
/// rotation, may have its call counted in the next bucket and its failure
/// expired (or the reverse). Every count still lands once, never twice, and
/// the running totals always equal the sum of their buckets.
#[derive(Debug)]
pub(crate) struct TimeBuckets {
    head: Padded<AtomicU64>,
    failures_total: Padded<AtomicI64>,
    slow_total: Padded<AtomicI64>,
    width: u64,
    /// Slots in a ring: buckets per window + 1.
    live: usize,
    /// Cells from one stripe's ring to the next (the ring, then a cache
    /// line pair of padding).
    stride: usize,
    stripes: usize,
    calls: Box<[AtomicU64]>,
    failures: Box<[AtomicU64]>,
    slow: Box<[AtomicU64]>,
}

/// Cells of padding between stripes: two cache lines.
const STRIPE_GAP: usize = 16;

fn cells(n: usize) -> Box<[AtomicU64]> {
    (0..n).map(|_| AtomicU64::new(0)).collect()
}

impl TimeBuckets {
    pub(crate) fn new(width_nanos: u64, per_window: u32) -> Self {
        let live = per_window as usize + 1;
        let stripes = crate::util::stripes();
        let stride = live + STRIPE_GAP;
        Self {
            head: Padded(AtomicU64::new(0)),
            failures_total: Padded(AtomicI64::new(0)),
            slow_total: Padded(AtomicI64::new(0)),
            width: width_nanos.max(1),
            live,
            stride,
            stripes,
            calls: cells(stride * stripes),
            failures: cells(live),
            slow: cells(live),
        }
    }

    /// Records an outcome at `now`. Returns the window's failures and slow
    /// calls (running totals, two loads); the calls, a sum over every
    /// stripe, are [`calls`](Self::calls), for when a rate could trip.
    #[inline]
    pub(crate) fn record(&self, now: u64, failed: bool, slow: bool) -> (u64, u64) {
        let tick = now / self.width;
        if tick > self.head.0.load(Ordering::Acquire) {
            self.advance(tick);
        }
        let slot = (tick % self.live as u64) as usize;
        let stripe = crate::util::stripe() & (self.stripes - 1);
        add(&self.calls[stripe * self.stride + slot], tick, 1);
        let failures = if failed {
            Self::apply(&self.failures_total.0, add(&self.failures[slot], tick, 1))
        } else {
            self.failures_total.0.load(Ordering::Acquire)
        };
        let slow_total = if slow {
            Self::apply(&self.slow_total.0, add(&self.slow[slot], tick, 1))
        } else {
            self.slow_total.0.load(Ordering::Relaxed)
        };
        (failures.max(0) as u64, slow_total.max(0) as u64)
    }

    #[inline]
    fn apply(total: &AtomicI64, change: i64) -> i64 {
        if change == 0 {
            total.load(Ordering::Acquire)
        } else {
            total.fetch_add(change, Ordering::AcqRel) + change
        }
    }

    /// Whether nothing has been recorded for a whole window before `tick`.
    fn idle(&self, tick: u64) -> bool {
        tick >= self
            .head
            .0
            .load(Ordering::Acquire)
            .saturating_add(self.live as u64)
    }

    /// Calls in the buckets still live at `now`, over every stripe. Reads
    /// only.
    pub(crate) fn calls(&self, now: u64) -> u64 {
        // A recorder whose clock reading lags the head (it was descheduled
        // while others rotated buckets) counts as of the head, as the
        // rotation has the failure total: else it would see the failures of
        // the whole window over the calls of part of it.
        let tick = (now / self.width).max(self.head.0.load(Ordering::Acquire));
        if self.idle(tick) {
            return 0;
        }
        let live = self.live as u64;
        (0..self.stripes)
            .flat_map(|s| &self.calls[s * self.stride..s * self.stride + self.live])
            .map(|cell| live_count(cell.load(Ordering::Acquire), tick, live))
            .sum()
    }

    /// Counts of the buckets still live at `now`. Reads only: it sums the
    /// live buckets (O(buckets x stripes)), it never rotates one.
    pub(crate) fn counts(&self, now: u64) -> WindowCounts {
        let tick = now / self.width;
        let live = self.live as u64;
        if self.idle(tick) {
            // Nothing recorded for a whole window: all expired, whatever
            // the (wrapping) tags would say.
            return WindowCounts::default();
        }
        let sum = |cells: &[AtomicU64]| -> u64 {
            cells
                .iter()
                .map(|cell| live_count(cell.load(Ordering::Acquire), tick, live))
                .sum()
        };
        WindowCounts {
            calls: self.calls(now),
            failures: sum(&self.failures),
            slow: sum(&self.slow),
        }
    }

    /// Every cell of slot `slot`: each stripe's calls, failures, slow calls,
    /// with the running total each belongs to.
    fn slot_cells(&self, slot: usize) -> impl Iterator<Item = (&AtomicU64, Option<&AtomicI64>)> {
        (0..self.stripes)
            .map(move |s| (&self.calls[s * self.stride + slot], None))
            .chain([
                (&self.failures[slot], Some(&self.failures_total.0)),
                (&self.slow[slot], Some(&self.slow_total.0)),
            ])
    }

    /// Rotates every slot that the ticks up to `tick` reuse, evicting what
    /// it held.
    #[cold]
    fn advance(&self, tick: u64) {
        let n = self.live as u64;
        let head = self.head.0.load(Ordering::Acquire);
        if tick <= head {
            // Another recorder moved the head past us since we looked.
            return;
        }
        if tick - head >= n {
            // Idle for a whole window or more: everything has expired. The
            // tags wrap (2^32 ticks), so an old bucket is emptied outright
            // unless a racing recorder has just written a tick near ours.
            for x in tick + 1 - n..=tick {
                for (cell, total) in self.slot_cells((x % n) as usize) {
                    let change = expire(cell, x, n);
                    if let Some(total) = total {
                        Self::apply(total, change);
                    }
                }
            }
            self.head.0.fetch_max(tick, Ordering::AcqRel);
            return;
        }
        for x in head + 1..=tick {
            for (cell, total) in self.slot_cells((x % n) as usize) {
                let change = add(cell, x, 0);
                if let Some(total) = total {
                    Self::apply(total, change);
                }
            }
        }
        self.head.0.fetch_max(tick, Ordering::AcqRel);
    }

    /// Empties every bucket (the breaker closed or was reset).
    pub(crate) fn clear(&self) {
        for slot in 0..self.live {
            for (cell, total) in self.slot_cells(slot) {
                let mut cur = cell.load(Ordering::Acquire);
                loop {
                    let count = cur & BUCKET_MAX;
                    if count == 0 {
                        break;
                    }
                    match cell.compare_exchange_weak(
                        cur,
                        cur - count,
                        Ordering::AcqRel,
                        Ordering::Acquire,
                    ) {
                        Ok(_) => {
                            if let Some(total) = total {
                                total.fetch_sub(count as i64, Ordering::AcqRel);
                            }
                            break;
                        }
                        Err(actual) => cur = actual,
                    }
                }
            }
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
    fn time_buckets_totals_are_64_bit_and_buckets_saturate() {
        // More than 2^32 calls in one window: the old packed 32-bit totals
        // wrapped here and the rate was garbage.
        let w = TimeBuckets::new(10, 4);
        let stripe = crate::util::stripe() & (w.stripes - 1);
        w.calls[stripe * w.stride].store(BUCKET_MAX - 1, Ordering::Relaxed); // tick 0
        w.failures[0].store(BUCKET_MAX - 1, Ordering::Relaxed);
        w.failures_total
            .0
            .store((BUCKET_MAX - 1) as i64, Ordering::Relaxed);
        w.record(5, true, false);
        assert_eq!(w.calls(5), BUCKET_MAX, "2^32 - 1 calls counted");
        let (failures, _) = w.record(5, true, false);
        assert_eq!(w.calls(5), BUCKET_MAX, "saturated, not wrapped");
        assert_eq!(failures, BUCKET_MAX, "saturated, not wrapped");
        assert_eq!(w.counts(9).calls, BUCKET_MAX);
        // Rotation evicts exactly what the bucket held.
        assert_eq!(w.counts(1_000).calls, 0);
        let (failures, _) = w.record(1_000, false, false);
        assert_eq!(failures, 0, "the total lost what the bucket held");
        assert_eq!(w.counts(1_000).calls, 1);
    }

    #[test]
    fn every_stripe_counts() {
        let w = TimeBuckets::new(10, 4);
        for s in 0..w.stripes {
            w.calls[s * w.stride + 1].store((1 << COUNT_BITS) | 2, Ordering::Relaxed);
        }
        assert_eq!(w.counts(15).calls, 2 * w.stripes as u64);
        w.clear();
        assert_eq!(w.counts(15), WindowCounts::default());
    }

    #[test]
    fn an_advance_behind_the_head_changes_nothing() {
        // Review: a recorder that saw an old head and advanced after another
        // moved it further underflowed `tick - head` (a panic in debug, the
        // newest bucket emptied in release).
        let w = TimeBuckets::new(10, 2);
        w.record(35, false, false); // tick 3
        w.advance(2);
        assert_eq!(w.counts(39).calls, 1);
    }

    #[test]
    fn time_bucket_reads_do_not_rotate() {
        let w = TimeBuckets::new(10, 4);
        w.record(5, true, false);
        assert_eq!(w.counts(1_000).calls, 0);
        // The read changed nothing: a reader earlier in time still sees it.
        assert_eq!(w.counts(9).calls, 1);
        assert_eq!(w.head.0.load(Ordering::Relaxed), 0);
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
