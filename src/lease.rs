//! Keeping shared state alive for a call without an atomic reference count
//! per call.
//!
//! A response future must keep the state it reports to (a breaker, a
//! recovery, a drain) alive until it records its outcome: it may outlive the
//! service that made it (`Oneshot` drops the service as it calls). An `Arc`
//! clone per call costs two atomic read-modify-writes on one cache line
//! that every caller shares, which threads on several cores contend for
//! (the figures are in the README's "Performance" and the CHANGELOG).
//!
//! Instead a service takes references in batches. One strong count of the
//! state's `Arc` stands for [`BATCH`] credits. Each call takes a credit
//! from its service ([`Credits::take`], a plain decrement), or one that the
//! thread was given back and still holds, into a [`Lease`] that lives in the
//! response future. A finished call gives its credit back to a small
//! per-thread cache, which keeps up to a batch of them for the thread's next
//! calls and service clones and, past that, drops one strong count per
//! whole batch. What a thread holds is added to the state's shared tally
//! ([`Leased::returned`]) when the cache needs the slot for another state
//! or the thread exits, and each whole batch that tally completes drops one
//! strong count.
//!
//! Credits are interchangeable, so every strong count taken is dropped
//! exactly once when all its credits are back, wherever they were spent; and
//! while any credit is out or held by a cache, at least one batch is held,
//! so the state outlives every lease. The price: state whose handles are all
//! dropped is freed once the threads that ran its calls have given back
//! what they hold, that is when they work for other state mapped to the
//! same slot of their cache, or exit. At most [`WAYS`] dropped states are
//! held per thread. A thread that works for more than `WAYS` states in turn
//! evicts entries, and each eviction is one shared read-modify-write.
//! Leased state must therefore do nothing observable when dropped (a recovery's task stops when its `Owner` handle drops, which is
//! never leased).

#![allow(unsafe_code)]

use std::cell::Cell;
use std::fmt;
use std::mem::ManuallyDrop;
use std::ops::Deref;
use std::ptr::NonNull;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use crate::sync::atomic::AtomicU64;

/// Credits per strong count.
pub(crate) const BATCH: u64 = 1024;
/// Credits a thread keeps for reuse (a batch): calls and service clones on
/// this thread take them back without any shared write.
const KEEP: u64 = BATCH;
/// States a thread's cache holds credits for.
const WAYS: usize = 8;

/// Shared state that calls hold credits on.
pub(crate) trait Leased: Send + Sync + 'static {
    /// Credits given back through the shared tally: starts at 0, touched
    /// only by this module.
    fn returned(&self) -> &AtomicU64;
}

/// A service's supply of credits for its calls, and its own hold on the
/// state.
pub(crate) struct Credits<T: Leased> {
    /// The service's handle. Owned (it holds a strong count) or, for a
    /// clone made on a thread that held a spare credit, kept alive by that
    /// credit: cloning a service per request then costs no shared write.
    arc: ManuallyDrop<Arc<T>>,
    owned: bool,
    /// Credits left of the batch this service took: its own, spent without
    /// any shared write.
    left: u64,
}

impl<T: Leased> Credits<T> {
    pub(crate) fn new(arc: Arc<T>) -> Self {
        Self {
            arc: ManuallyDrop::new(arc),
            owned: true,
            left: 0,
        }
    }

    /// The state these credits are for.
    #[inline]
    pub(crate) fn get(&self) -> &Arc<T> {
        &self.arc
    }

    /// The state's address, with the provenance of the whole allocation
    /// (the reference counts included), as `Arc::from_raw` and
    /// `Arc::decrement_strong_count` need.
    fn ptr(&self) -> NonNull<T> {
        NonNull::new(Arc::as_ptr(&self.arc).cast_mut()).expect("an Arc is never null")
    }

    /// A lease for one call.
    #[inline]
    pub(crate) fn take(&mut self) -> Lease<T> {
        let ptr = self.ptr();
        if self.left == 0 && reuse(ptr.cast()) {
            // A credit this thread was given back: no shared write. A
            // service cloned per request (axum clones it for each) takes
            // and gives back its one credit here.
            return Lease { ptr };
        }
        if self.left == 0 {
            // One strong count for the next `BATCH` calls of this service.
            std::mem::forget(Arc::clone(&self.arc));
            self.left = BATCH;
        }
        self.left -= 1;
        Lease { ptr }
    }
}

impl<T: Leased> Clone for Credits<T> {
    fn clone(&self) -> Self {
        let ptr = self.ptr();
        if reuse(ptr.cast()) {
            // SAFETY: the credit just taken keeps a strong count alive until
            // this clone gives it back in `drop`; the `Arc` made here is
            // never dropped (`ManuallyDrop`, `owned: false`), so it neither
            // takes nor releases a count of its own.
            let arc = unsafe { Arc::from_raw(ptr.as_ptr().cast_const()) };
            return Self {
                arc: ManuallyDrop::new(arc),
                owned: false,
                left: 0,
            };
        }
        Self::new(Arc::clone(&self.arc))
    }
}

impl<T: Leased> Drop for Credits<T> {
    fn drop(&mut self) {
        let ptr = self.ptr();
        if self.left > 0 {
            give_back::<T>(ptr, self.left);
        }
        if self.owned {
            // SAFETY: dropped once, here; not used after.
            unsafe { ManuallyDrop::drop(&mut self.arc) };
        } else {
            // The credit that kept this handle's state alive.
            give_back::<T>(ptr, 1);
        }
    }
}

impl<T: Leased> fmt::Debug for Credits<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credits")
            .field("owned", &self.owned)
            .field("left", &self.left)
            .finish()
    }
}

/// One credit: the state is alive while a lease is.
pub(crate) struct Lease<T: Leased> {
    ptr: NonNull<T>,
}

impl<T: Leased> Lease<T> {
    /// A lease on the state `arc` points to from a credit this thread holds
    /// for it, if it holds one: no shared write, and nothing dropped (so
    /// a caller may hold a lock). For a caller with no [`Credits`] of its
    /// own for the state (a keyed registry, which finds it per call).
    #[cfg(feature = "circuit-breaker")]
    #[inline]
    pub(crate) fn reuse(arc: &Arc<T>) -> Option<Self> {
        let ptr = NonNull::new(Arc::as_ptr(arc).cast_mut()).expect("an Arc is never null");
        // Made only when a credit was taken: a `Lease` dropped unused
        // would give back a credit it never had.
        reuse(ptr.cast()).then(|| Lease { ptr })
    }

    /// A lease made from a strong count: it stands for a batch of credits,
    /// one for this lease and the rest left in this thread's cache for its
    /// next calls (which may drop a batch, so no lock should be held).
    #[cfg(feature = "circuit-breaker")]
    pub(crate) fn from_arc(arc: Arc<T>) -> Self {
        let ptr = NonNull::new(Arc::as_ptr(&arc).cast_mut()).expect("an Arc is never null");
        std::mem::forget(arc);
        give_back::<T>(ptr, BATCH - 1);
        Lease { ptr }
    }
}

// SAFETY: a lease is a shared reference to a `T` (which is `Send` and
// `Sync`) whose lifetime is guaranteed by the credit it holds.
unsafe impl<T: Leased> Send for Lease<T> {}
// SAFETY: as above; the lease gives out only `&T`.
unsafe impl<T: Leased> Sync for Lease<T> {}

impl<T: Leased> Deref for Lease<T> {
    type Target = T;

    #[inline]
    fn deref(&self) -> &T {
        // SAFETY: the credit this lease holds keeps a strong count of the
        // state's `Arc` alive until the lease is dropped (module docs).
        unsafe { self.ptr.as_ref() }
    }
}

impl<T: Leased> Drop for Lease<T> {
    #[inline]
    fn drop(&mut self) {
        give_back::<T>(self.ptr, 1);
    }
}

impl<T: Leased> fmt::Debug for Lease<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Lease").finish_non_exhaustive()
    }
}

/// Drops one strong count of the `Arc<T>` at `ptr`.
///
/// # Safety
/// A batch's strong count of `ptr`, taken in [`Credits::take`], whose
/// credits are all back, dropped once.
unsafe fn drop_batch<T: Leased>(ptr: *const ()) {
    // SAFETY: see the function's contract.
    unsafe { Arc::decrement_strong_count(ptr.cast::<T>()) }
}

/// Adds `n` returned credits to the tally of the `T` at `ptr`, dropping a
/// strong count for each batch the tally completes.
///
/// # Safety
/// `n` credits of `ptr`'s state, still out (so at least one batch is held
/// and the state is alive), given back once, here.
#[cold]
unsafe fn tally<T: Leased>(ptr: *const (), n: u64) {
    // SAFETY: the credits being returned keep the state alive (contract).
    let returned = unsafe { (*ptr.cast::<T>()).returned() };
    let before = returned.fetch_add(n, Ordering::AcqRel);
    let batches = (before + n) / BATCH - before / BATCH;
    for _ in 0..batches {
        // SAFETY: every credit of these batches is back (the tally counts
        // credits given back nowhere else), so their strong counts are
        // dropped once each, here. The state is not touched after the last.
        unsafe { drop_batch::<T>(ptr) };
    }
}

type TallyFn = unsafe fn(*const (), u64);
type BatchFn = unsafe fn(*const ());

/// What the cache asks its caller to do once it has updated itself (so that
/// whatever dropping a state runs finds the cache consistent).
#[derive(Default)]
#[must_use]
struct Due {
    /// A whole batch is back: drop its strong count.
    batch: Option<(*const (), BatchFn)>,
    /// Credits to add to a state's shared tally (evicted).
    tally: Option<(*const (), u64, TallyFn)>,
}

impl Due {
    #[inline]
    fn run(self) {
        if let Some((ptr, n, tally)) = self.tally {
            // SAFETY: the evicted entry's credits, handed over once.
            unsafe { tally(ptr, n) };
        }
        if let Some((ptr, drop_batch)) = self.batch {
            // SAFETY: a whole batch of `ptr`'s credits came back to this
            // thread and left its cache, handed over once.
            unsafe { drop_batch(ptr) };
        }
    }
}

/// Per state this thread worked for recently: credits given back (held for
/// reuse) and, for a breaker's count window, the block of slots it fills.
struct Cache {
    ptrs: [Cell<*const ()>; WAYS],
    counts: [Cell<u64>; WAYS],
    tallies: [Cell<Option<TallyFn>>; WAYS],
    #[cfg_attr(not(feature = "circuit-breaker"), allow(dead_code))]
    ring_next: [Cell<u64>; WAYS],
    ring_left: [Cell<u64>; WAYS],
    /// The breaker (`Core::id`) the block is of: a breaker freed and
    /// another allocated at its address must not inherit its block.
    ring_of: [Cell<u64>; WAYS],
    /// The next way to evict when none is free.
    victim: Cell<usize>,
}

impl Cache {
    /// The way holding `ptr`, installed (evicting another) if missing.
    #[inline]
    fn way(&self, ptr: *const (), tally: TallyFn) -> (usize, Due) {
        let home = home(ptr);
        if self.ptrs[home].get() == ptr {
            // The state at this address now: a freed one's entry (count 0)
            // must not keep its type's tally.
            self.tallies[home].set(Some(tally));
            return (home, Due::default());
        }
        for way in 0..WAYS {
            if self.ptrs[way].get() == ptr {
                self.tallies[way].set(Some(tally));
                return (way, Due::default());
            }
        }
        self.install(ptr, tally)
    }

    /// Installs `ptr`: in its home way if that holds nothing, else in a
    /// way that holds nothing, else in place of the entry installed longest
    /// ago (so that a thread working for up to `WAYS` states in turn keeps
    /// all of them).
    #[cold]
    fn install(&self, ptr: *const (), tally: TallyFn) -> (usize, Due) {
        let empty = |way: usize| self.counts[way].get() == 0 && self.ring_left[way].get() == 0;
        let home = home(ptr);
        let way = if empty(home) {
            home
        } else if let Some(way) = (0..WAYS).find(|&way| empty(way)) {
            way
        } else {
            let way = self.victim.get() % WAYS;
            self.victim.set(way + 1);
            way
        };
        let old = self.ptrs[way].replace(ptr);
        let old_count = self.counts[way].replace(0);
        let old_tally = self.tallies[way].replace(Some(tally));
        self.ring_left[way].set(0);
        self.ring_of[way].set(0);
        let tally = match old_tally {
            Some(f) if !old.is_null() && old_count > 0 => Some((old, old_count, f)),
            _ => None,
        };
        (way, Due { batch: None, tally })
    }

    #[inline]
    fn give<T: Leased>(&self, ptr: *const (), n: u64) -> Due {
        let (way, mut due) = self.way(ptr, tally::<T>);
        let count = self.counts[way].get() + n;
        if count >= KEEP + BATCH {
            self.counts[way].set(count - BATCH);
            due.batch = Some((ptr, drop_batch::<T> as BatchFn));
        } else {
            self.counts[way].set(count);
        }
        due
    }
}

impl Drop for Cache {
    fn drop(&mut self) {
        for way in 0..WAYS {
            let count = self.counts[way].replace(0);
            let ptr = self.ptrs[way].get();
            if let Some(tally) = self.tallies[way].get() {
                if count > 0 && !ptr.is_null() {
                    // SAFETY: the credits this cache held, handed over once.
                    unsafe { tally(ptr, count) };
                }
            }
        }
    }
}

thread_local! {
    static CACHE: Cache = const {
        Cache {
            ptrs: [const { Cell::new(std::ptr::null()) }; WAYS],
            counts: [const { Cell::new(0) }; WAYS],
            tallies: [const { Cell::new(None) }; WAYS],
            ring_next: [const { Cell::new(0) }; WAYS],
            ring_left: [const { Cell::new(0) }; WAYS],
            ring_of: [const { Cell::new(0) }; WAYS],
            victim: Cell::new(0),
        }
    };
}

/// The way a state is installed in.
#[inline]
fn home(ptr: *const ()) -> usize {
    (ptr as usize >> 7) % WAYS
}

/// Takes back one credit of the state at `ptr` that this thread holds in
/// its cache, if it holds one.
#[inline]
fn reuse(ptr: NonNull<()>) -> bool {
    let ptr = ptr.as_ptr().cast_const();
    CACHE
        .try_with(|cache| {
            let home = home(ptr);
            let way = if cache.ptrs[home].get() == ptr {
                home
            } else {
                match (0..WAYS).find(|&way| cache.ptrs[way].get() == ptr) {
                    Some(way) => way,
                    None => return false,
                }
            };
            let count = cache.counts[way].get();
            if count == 0 {
                return false;
            }
            cache.counts[way].set(count - 1);
            true
        })
        .unwrap_or(false)
}

/// Gives back `n` credits of the state at `ptr`.
#[inline]
fn give_back<T: Leased>(ptr: NonNull<T>, n: u64) {
    let ptr = ptr.as_ptr().cast_const().cast::<()>();
    // The hot path: this thread's entry for the state is in its home way
    // and holds less than it keeps.
    let kept = CACHE.try_with(|cache| {
        let way = home(ptr);
        if cache.ptrs[way].get() != ptr {
            return false;
        }
        let count = cache.counts[way].get() + n;
        count < KEEP + BATCH && {
            cache.counts[way].set(count);
            // This state's type: the entry may have been another's, freed,
            // at the same address (its count was then 0).
            cache.tallies[way].set(Some(tally::<T>));
            true
        }
    });
    if kept != Ok(true) {
        give_back_slow::<T>(ptr, n);
    }
}

#[cold]
fn give_back_slow<T: Leased>(ptr: *const (), n: u64) {
    CACHE
        .try_with(|cache| cache.give::<T>(ptr, n))
        // The thread is exiting and its cache is gone: straight to the tally.
        .unwrap_or(Due {
            batch: None,
            tally: Some((ptr, n, tally::<T> as TallyFn)),
        })
        .run();
}

/// The count-window slot for an outcome this thread records for the
/// breaker at `ptr` (unique `id`): threads fill blocks of `block`
/// consecutive slots that they reserve with `reserve` (one shared
/// read-modify-write per block, not per call).
#[cfg(feature = "circuit-breaker")]
#[inline]
pub(crate) fn ring_slot<T: Leased>(
    state: &T,
    id: u64,
    block: u64,
    reserve: impl Fn(u64) -> u64,
) -> u64 {
    let ptr = (state as *const T).cast::<()>();
    let slot = CACHE.try_with(|cache| {
        let (way, due) = cache.way(ptr, tally::<T>);
        let left = cache.ring_left[way].get();
        let slot = if cache.ring_of[way].get() != id {
            // New here (or installed again after an eviction, which drops
            // the block): one slot. A block is reserved only for a breaker
            // this thread records for again while it keeps its entry, so
            // entries evicted in turn waste no slots.
            cache.ring_of[way].set(id);
            cache.ring_left[way].set(0);
            reserve(1)
        } else if left == 0 {
            let start = reserve(block);
            cache.ring_next[way].set(start + 1);
            cache.ring_left[way].set(block - 1);
            start
        } else {
            let next = cache.ring_next[way].get();
            cache.ring_next[way].set(next + 1);
            cache.ring_left[way].set(left - 1);
            next
        };
        (slot, due)
    });
    match slot {
        Ok((slot, due)) => {
            due.run();
            slot
        }
        Err(_) => reserve(1),
    }
}
