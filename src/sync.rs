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
