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
//! from its service ([`Credits::take`], a plain decrement), or one that the
//! thread was given back and still holds, into a [`Lease`] that lives in the
//! response future. A finished call gives its credit back
//! to a small per-thread cache, which keeps up to a batch of them for the
//! thread's next calls and service clones and, past that, drops one strong
//! count per whole batch. What a thread holds is added to the breaker's
//! shared tally (`Core::returned`) when the cache needs the slot for another
//! breaker or the thread exits, and each whole batch that tally completes
//! drops one strong count.
//!
//! Credits are interchangeable, so every strong count taken is dropped
//! exactly once when all its credits are back, wherever they were spent; and
//! while any credit is out, at least one batch is held, so the breaker
//! outlives every lease. The price: a breaker whose handles are all dropped
//! is freed once the threads that ran its calls have given back what they
//! hold, that is when they work for another breaker mapped to the same slot
//! of their cache, or exit. At most [`WAYS`] dropped breakers are held per
//! thread.

#![allow(unsafe_code)]

use std::cell::Cell;
use std::fmt;
use std::mem::ManuallyDrop;
use std::ops::Deref;
use std::ptr::NonNull;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use super::Breaker;
use super::core::Core;

/// Credits per strong count.
pub(crate) const BATCH: u64 = 1024;
/// Credits a thread keeps for reuse (a batch): calls and service clones on
/// this thread take them back without any shared write.
const KEEP: u64 = BATCH;
/// Breakers a thread's cache holds credits for.
const WAYS: usize = 4;

/// A service's supply of credits for its calls, and its own hold on the
/// breaker.
pub(crate) struct Credits {
    /// The service's handle. Owned (it holds a strong count) or, for a
    /// clone made on a thread that held a spare credit, kept alive by that
    /// credit: cloning a service per request then costs no shared write.
    breaker: ManuallyDrop<Breaker>,
    owned: bool,
    /// Credits left of the batch this service took: its own, spent without
    /// any shared write.
    left: u64,
}

impl Credits {
    pub(crate) fn new(breaker: Breaker) -> Self {
        Self {
            breaker: ManuallyDrop::new(breaker),
            owned: true,
            left: 0,
        }
    }

    /// The breaker these credits are for.
    pub(crate) fn breaker(&self) -> &Breaker {
        &self.breaker
    }

    fn core(&self) -> NonNull<Core> {
        NonNull::from(&*self.breaker.core)
    }

    /// A lease for one call.
    #[inline]
    pub(crate) fn take(&mut self) -> Lease {
        let core = self.core();
        if self.left == 0 && reuse(core) {
            // A credit this thread was given back: no shared write. A
            // service cloned per request (axum clones it for each) takes
            // and gives back its one credit here.
            return Lease { core };
        }
        if self.left == 0 {
            // One strong count for the next `BATCH` calls of this service.
            std::mem::forget(Arc::clone(&self.breaker.core));
            self.left = BATCH;
        }
        self.left -= 1;
        Lease { core }
    }
}

impl Clone for Credits {
    fn clone(&self) -> Self {
        let core = self.core();
        if reuse(core) {
            // SAFETY: the credit just taken keeps a strong count alive until
            // this clone gives it back in `drop`; the `Arc` made here is
            // never dropped (`ManuallyDrop`, `owned: false`), so it neither
            // takes nor releases a count of its own.
            let arc = unsafe { Arc::from_raw(core.as_ptr().cast_const()) };
            return Self {
                breaker: ManuallyDrop::new(Breaker { core: arc }),
                owned: false,
                left: 0,
            };
        }
        Self::new((*self.breaker).clone())
    }
}

impl Drop for Credits {
    fn drop(&mut self) {
        let core = self.core();
        if self.left > 0 {
            give_back(core, self.left);
        }
        if self.owned {
            // SAFETY: dropped once, here; not used after.
            unsafe { ManuallyDrop::drop(&mut self.breaker) };
        } else {
            // The credit that kept this handle's breaker alive.
            give_back(core, 1);
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
        if count >= KEEP + BATCH {
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
        count < KEEP + BATCH && {
            cache.counts[way].set(count);
            true
        }
    });
    if kept != Ok(true) {
        give_back_slow(core, n);
    }
}

/// Takes back one credit of `core` that this thread holds in its cache, if
/// it holds one.
#[inline]
fn reuse(core: NonNull<Core>) -> bool {
    CACHE
        .try_with(|cache| {
            let way = home(core.as_ptr());
            let count = cache.counts[way].get();
            let mine = cache.cores[way].get() == core.as_ptr().cast_const() && count > 0;
            if mine {
                cache.counts[way].set(count - 1);
            }
            mine
        })
        .unwrap_or(false)
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
