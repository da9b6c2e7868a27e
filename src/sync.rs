//! The synchronisation primitives of the lock-free parts, swapped for
//! `loom`'s under `--cfg tower_recovery_loom` so that the model-checking
//! tests explore every interleaving of the real code.

// Not every feature set uses every item.
#[cfg(not(tower_recovery_loom))]
#[allow(unused_imports)]
pub(crate) use std::sync::{Mutex, MutexGuard, atomic};

#[cfg(tower_recovery_loom)]
#[allow(unused_imports)]
pub(crate) use loom::sync::{Mutex, MutexGuard, atomic};

/// Locks `m`, ignoring poisoning: nothing user-supplied runs under this
/// crate's locks, so a poisoned lock only means a panic elsewhere in this
/// thread, and the data is still consistent.
#[cfg_attr(
    not(any(feature = "circuit-breaker", feature = "drain")),
    allow(dead_code)
)]
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// A value readers load without a shared write and writers replace whole
/// (copy on write): `arc-swap`'s `ArcSwap`, or under loom a mutex around
/// the `Arc` (the same operations, each one step the model can interleave).
#[cfg(all(feature = "circuit-breaker", not(tower_recovery_loom)))]
pub(crate) struct Swap<T>(arc_swap::ArcSwap<T>);

#[cfg(all(feature = "circuit-breaker", not(tower_recovery_loom)))]
impl<T> Swap<T> {
    pub(crate) fn new(value: T) -> Self {
        Self(arc_swap::ArcSwap::from_pointee(value))
    }

    /// The current value, held for a short read (no reference count
    /// taken: a guard in this thread's own slots).
    #[inline]
    pub(crate) fn load(&self) -> arc_swap::Guard<std::sync::Arc<T>> {
        self.0.load()
    }

    pub(crate) fn store(&self, value: T) {
        self.0.store(std::sync::Arc::new(value));
    }
}

#[cfg(all(feature = "circuit-breaker", tower_recovery_loom))]
pub(crate) struct Swap<T>(Mutex<std::sync::Arc<T>>);

#[cfg(all(feature = "circuit-breaker", tower_recovery_loom))]
impl<T> Swap<T> {
    pub(crate) fn new(value: T) -> Self {
        Self(Mutex::new(std::sync::Arc::new(value)))
    }

    pub(crate) fn load(&self) -> std::sync::Arc<T> {
        lock(&self.0).clone()
    }

    pub(crate) fn store(&self, value: T) {
        *lock(&self.0) = std::sync::Arc::new(value);
    }
}
