//! Keeping the breaker alive for a call without an atomic reference count per
//! call.
//!
//! A response future must keep the breaker's state alive until it records
//! its outcome: it may outlive the service that made it (`Oneshot` drops the
//! service as it calls). An `Arc` clone per call costs two atomic
//! read-modify-writes on one cache line that every caller shares: about
//! 14 ns on one thread of the machine the benches ran on, and far more when
//! two threads contend for the line.
//!
//! Instead a service takes references in batches. One strong count of the
//! breaker's `Arc` stands for [`BATCH`] credits. Each call takes a credit
//! from its service ([`Credits::take`], a plain decrement) into a [`Lease`]
//! that lives in the response future. A finished call gives its credit back
//! to a small per-thread cache: a thread that collects a whole batch drops
//! one strong count; a partial batch is added to the breaker's shared tally
//! (`Core::returned`) when the cache needs the slot for another breaker or
//! the thread exits, and each whole batch that tally completes drops one
//! strong count.
//!
//! Credits are interchangeable, so every strong count taken is dropped
//! exactly once when all its credits are back, wherever they were spent; and
//! while any credit is out, at least one batch is held, so the breaker
//! outlives every lease. The price: a breaker whose handles are all dropped
//! is freed once the threads that finished its calls have given back their
//! partial batches, that is when they next finish calls of
//! [`WAYS`] other breakers mapped to the same slot, or exit. At most `WAYS`
//! dropped breakers are held per thread.

#![allow(unsafe_code)]

use std::cell::Cell;
use std::fmt;
use std::ops::Deref;
use std::ptr::NonNull;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use super::Breaker;
use super::core::Core;

/// Credits per strong count.
pub(crate) const BATCH: u64 = 1024;
/// Breakers a thread's cache holds partial batches for.
const WAYS: usize = 4;

/// A service's supply of credits for its calls.
pub(crate) struct Credits {
    breaker: Breaker,
    /// Credits left of the batch this service took: its own, spent without
    /// any shared write.
    left: u64,
}

impl Credits {
    pub(crate) fn new(breaker: Breaker) -> Self {
        Self { breaker, left: 0 }
    }

    /// The breaker these credits are for.
    pub(crate) fn breaker(&self) -> &Breaker {
        &self.breaker
    }

    /// A lease for one call.
    #[inline]
    pub(crate) fn take(&mut self) -> Lease {
        if self.left == 0 {
            // One strong count for the next `BATCH` calls of this service.
            std::mem::forget(Arc::clone(&self.breaker.core));
            self.left = BATCH;
        }
        self.left -= 1;
        Lease {
            core: NonNull::from(&*self.breaker.core),
        }
    }
}

impl Clone for Credits {
    fn clone(&self) -> Self {
        Self::new(self.breaker.clone())
    }
}

impl Drop for Credits {
    fn drop(&mut self) {
        if self.left > 0 {
            give_back(NonNull::from(&*self.breaker.core), self.left);
        }
    }
}

impl fmt::Debug for Credits {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credits").field("left", &self.left).finish()
    }
}

/// One credit: the breaker is alive while a lease is.
pub(crate) struct Lease {
    core: NonNull<Core>,
}

// SAFETY: a lease is a shared reference to a `Core` (which is `Send` and
// `Sync`) whose lifetime is guaranteed by the credit it holds.
unsafe impl Send for Lease {}
// SAFETY: as above; the lease gives out only `&Core`.
unsafe impl Sync for Lease {}

impl Deref for Lease {
    type Target = Core;

    #[inline]
    fn deref(&self) -> &Core {
        // SAFETY: the credit this lease holds keeps a strong count of the
        // breaker's `Arc` alive until the lease is dropped (module docs).
        unsafe { self.core.as_ref() }
    }
}

impl Drop for Lease {
    #[inline]
    fn drop(&mut self) {
        give_back(self.core, 1);
    }
}

/// What the cache asks its caller to do once it has updated itself (so that
/// whatever dropping a breaker runs finds the cache consistent).
#[derive(Default)]
#[must_use]
struct Due {
    /// A whole batch is back: drop its strong count.
    batch: Option<NonNull<Core>>,
    /// A partial batch to add to a breaker's shared tally (evicted).
    tally: Option<(NonNull<Core>, u64)>,
}

impl Due {
    #[inline]
    fn run(self) {
        if let Some((core, n)) = self.tally {
            tally(core, n);
        }
        if let Some(core) = self.batch {
            // SAFETY: `BATCH` credits of `core` came back: the strong count
            // taken for them in `Credits::take` is still held, and is
            // dropped once, here.
            unsafe { Arc::decrement_strong_count(core.as_ptr()) };
        }
    }
}

/// Per breaker this thread worked for recently: credits given back (a
/// partial batch) and the block of count-window slots it is filling.
struct Cache {
    cores: [Cell<*const Core>; WAYS],
    counts: [Cell<u64>; WAYS],
    ring_next: [Cell<u64>; WAYS],
    ring_left: [Cell<u64>; WAYS],
    /// The breaker (`Core::id`) the block is of: a breaker freed and
    /// another allocated at its address must not inherit its block.
    ring_of: [Cell<u64>; WAYS],
}

impl Cache {
    /// The way holding `ptr`, installed (evicting another) if missing.
    #[inline]
    fn way(&self, ptr: *const Core) -> (usize, Due) {
        let home = home(ptr);
        if self.cores[home].get() == ptr {
            return (home, Due::default());
        }
        for way in 0..WAYS {
            if self.cores[way].get() == ptr {
                return (way, Due::default());
            }
        }
        self.install(ptr)
    }

    #[cold]
    fn install(&self, ptr: *const Core) -> (usize, Due) {
        let way = home(ptr);
        let old = self.cores[way].replace(ptr);
        let old_count = self.counts[way].replace(0);
        self.ring_left[way].set(0);
        let tally = NonNull::new(old.cast_mut())
            .filter(|_| old_count > 0)
            .map(|old| (old, old_count));
        (way, Due { batch: None, tally })
    }

    #[inline]
    fn give(&self, core: NonNull<Core>, n: u64) -> Due {
        let (way, mut due) = self.way(core.as_ptr().cast_const());
        let count = self.counts[way].get() + n;
        if count >= BATCH {
            self.counts[way].set(count - BATCH);
            due.batch = Some(core);
        } else {
            self.counts[way].set(count);
        }
        due
    }

    /// The next slot of this thread's block for `core`'s count window,
    /// reserving a new block of `block` slots with `reserve` when it is used
    /// up.
    #[inline]
    fn ring_slot(&self, core: &Core, block: u64, reserve: impl FnOnce(u64) -> u64) -> (u64, Due) {
        let (way, due) = self.way(core);
        let left = self.ring_left[way].get();
        let slot = if left == 0 || self.ring_of[way].get() != core.id {
            let start = reserve(block);
            self.ring_next[way].set(start + 1);
            self.ring_left[way].set(block - 1);
            self.ring_of[way].set(core.id);
            start
        } else {
            let next = self.ring_next[way].get();
            self.ring_next[way].set(next + 1);
            self.ring_left[way].set(left - 1);
            next
        };
        (slot, due)
    }
}

impl Drop for Cache {
    fn drop(&mut self) {
        for way in 0..WAYS {
            let count = self.counts[way].replace(0);
            if let Some(core) = NonNull::new(self.cores[way].get().cast_mut()) {
                if count > 0 {
                    tally(core, count);
                }
            }
        }
    }
}

thread_local! {
    static CACHE: Cache = const {
        Cache {
            cores: [const { Cell::new(std::ptr::null()) }; WAYS],
            counts: [const { Cell::new(0) }; WAYS],
            ring_next: [const { Cell::new(0) }; WAYS],
            ring_left: [const { Cell::new(0) }; WAYS],
            ring_of: [const { Cell::new(0) }; WAYS],
        }
    };
}

/// Gives back `n` credits of `core`.
#[inline]
fn give_back(core: NonNull<Core>, n: u64) {
    // The hot path: this thread's entry for `core` is in its home way and
    // the batch is not complete.
    let kept = CACHE.try_with(|cache| {
        let way = home(core.as_ptr());
        if cache.cores[way].get() != core.as_ptr().cast_const() {
            return false;
        }
        let count = cache.counts[way].get() + n;
        count < BATCH && {
            cache.counts[way].set(count);
            true
        }
    });
    if kept != Ok(true) {
        give_back_slow(core, n);
    }
}

/// The way a breaker is installed in.
#[inline]
fn home(ptr: *const Core) -> usize {
    (ptr as usize >> 7) % WAYS
}

#[cold]
fn give_back_slow(core: NonNull<Core>, n: u64) {
    CACHE
        .try_with(|cache| cache.give(core, n))
        // The thread is exiting and its cache is gone: straight to the tally.
        .unwrap_or(Due {
            batch: None,
            tally: Some((core, n)),
        })
        .run();
}

/// The count-window slot for an outcome this thread records for `core`:
/// threads fill blocks of `block` consecutive slots that they reserve with
/// `reserve` (one shared read-modify-write per block, not per call).
#[inline]
pub(crate) fn ring_slot(core: &Core, block: u64, reserve: impl Fn(u64) -> u64) -> u64 {
    match CACHE.try_with(|cache| cache.ring_slot(core, block, &reserve)) {
        Ok((slot, due)) => {
            due.run();
            slot
        }
        Err(_) => reserve(1),
    }
}

/// Adds `n` returned credits to `core`'s shared tally, dropping a strong
/// count for each batch the tally completes.
#[cold]
fn tally(core: NonNull<Core>, n: u64) {
    // SAFETY: the `n` credits being returned are still out, so at least one
    // batch (strong count) is held and `core` is alive.
    let returned = unsafe { &core.as_ref().returned.0 };
    let before = returned.fetch_add(n, Ordering::AcqRel);
    let batches = (before + n) / BATCH - before / BATCH;
    for _ in 0..batches {
        // SAFETY: every credit of these batches is back (the tally counts
        // credits given back nowhere else), so their strong counts, taken
        // in `Credits::take`, are dropped once each, here. `core` is not
        // touched after the last one.
        unsafe { Arc::decrement_strong_count(core.as_ptr()) };
    }
}
