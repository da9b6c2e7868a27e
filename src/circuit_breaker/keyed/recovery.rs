//! A recovery per key (feature `recovery`): made with the key's breaker
//! from the registry's factory, and one for the overflow breaker.

use std::fmt;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::{Arc, OnceLock};

use super::Key;
use crate::circuit_breaker::{Breaker, State};
use crate::recovery::{Builder as RecoveryBuilder, Recovery};
use crate::sync::atomic::{AtomicBool, Ordering};
use crate::sync::{Mutex, lock};

/// The user's factory: a configured recovery builder for a key.
pub(super) type Factory<K> = Arc<dyn Fn(&K) -> RecoveryBuilder + Send + Sync>;

/// What a registry needs to give its keys (and its overflow breaker) a
/// recovery.
pub(super) struct Recoveries<K> {
    factory: Option<Factory<K>>,
    /// The overflow breaker's recovery builder, until the first call routed
    /// to it takes it (`None` inside once taken; the outer `None` when there
    /// is none to make).
    overflow_builder: Option<Mutex<Option<RecoveryBuilder>>>,
    overflow: OnceLock<Recovery>,
    /// Warned once that a key was made outside a tokio runtime.
    warned_runtime: AtomicBool,
    /// Warned once that the factory's builders were given a fleet.
    #[cfg(feature = "fleet")]
    warned_fleet: AtomicBool,
}

impl<K> Recoveries<K> {
    pub(super) fn new(factory: Option<Factory<K>>, overflow: Option<RecoveryBuilder>) -> Self {
        Self {
            factory,
            overflow_builder: overflow.map(|b| Mutex::new(Some(b))),
            overflow: OnceLock::new(),
            warned_runtime: AtomicBool::new(false),
            #[cfg(feature = "fleet")]
            warned_fleet: AtomicBool::new(false),
        }
    }

    /// Whether keys get a recovery.
    pub(super) fn per_key(&self) -> bool {
        self.factory.is_some()
    }

    /// The overflow breaker's recovery, once made.
    pub(super) fn overflow(&self) -> Option<&Recovery> {
        self.overflow.get()
    }

    /// Whether a task can be spawned here; warns once if not.
    fn runtime(&self, registry: &str) -> bool {
        if tokio::runtime::Handle::try_current().is_ok() {
            return true;
        }
        if !self.warned_runtime.swap(true, Ordering::Relaxed) {
            tracing::warn!(
                keyed = registry,
                "a key of '{registry}' was first seen outside a tokio runtime: it has no recovery \
                 while it is kept (see `Summary::without_recovery`)"
            );
        }
        false
    }
}

impl<K: Key> Recoveries<K> {
    /// A recovery for `key`, watching its new `breaker` (named `name`,
    /// before anyone else can see it), if the registry has a factory.
    /// Called with no lock held: the factory is user code, and spawning
    /// wakes the runtime. `None` outside a tokio runtime (logged once), or
    /// if the factory or the spawn panicked (logged).
    pub(super) fn for_key(
        &self,
        registry: &Arc<str>,
        key: &K,
        name: &Arc<str>,
        breaker: &Breaker,
    ) -> Option<Recovery> {
        let factory = self.factory.as_ref()?;
        if !self.runtime(registry) {
            return None;
        }
        let made = catch_unwind(AssertUnwindSafe(|| {
            let builder = factory(key);
            #[cfg(feature = "fleet")]
            let builder = {
                let (builder, had) = builder.without_fleet();
                if had && !self.warned_fleet.swap(true, Ordering::Relaxed) {
                    tracing::warn!(
                        keyed = &**registry,
                        "the recoveries of '{registry}''s keys are not coordinated with a fleet \
                         (a fleet registers a dependency for good; keys come and go): the fleet \
                         given to the factory's builder is ignored"
                    );
                }
                builder
            };
            builder
                .renamed(name.clone())
                .metrics_label(registry.clone())
                .watch(breaker)
                .spawn()
        }));
        match made {
            Ok(recovery) => Some(recovery),
            Err(_) => {
                tracing::error!(
                    keyed = &**registry,
                    breaker = &**name,
                    "the recovery factory of '{registry}' panicked: '{name}' has no recovery"
                );
                None
            }
        }
    }

    /// Makes the overflow breaker's recovery if it has one to make and it
    /// is not made yet: called by each call routed to the overflow breaker
    /// (with no lock held) before it is admitted. After the first, one
    /// load.
    pub(super) fn for_overflow(&self, registry: &str, overflow: &Breaker) {
        let Some(slot) = &self.overflow_builder else {
            return;
        };
        if self.overflow.get().is_some() || !self.runtime(registry) {
            return;
        }
        // The signal is read before the builder is taken: a call routed to
        // the overflow breaker after this one took it (and that did not
        // wait for the spawn) opens it after `since`, so the recovery
        // counts that opening as its own.
        let since = overflow.core.signal_now();
        let Some(builder) = lock(slot).take() else {
            // Another call took it: it is being made.
            return;
        };
        let name: Arc<str> = overflow.name().into();
        let made = catch_unwind(AssertUnwindSafe(|| {
            builder
                .renamed(name.clone())
                .watch_since(overflow, since)
                .spawn()
        }));
        match made {
            Ok(recovery) => {
                // Opened before its recovery could be made (by calls made
                // outside a runtime): the outage under way is still the
                // overflow breaker's, and no one else recovers it. An
                // opening after `since` started a cycle already, which
                // this trigger joins.
                if matches!(overflow.state(), State::Open | State::HalfOpen) {
                    recovery.trigger_automatic(
                        "the overflow breaker was open when its recovery was made",
                    );
                }
                let _ = self.overflow.set(recovery);
            }
            Err(_) => tracing::error!(
                keyed = registry,
                breaker = &*name,
                "the overflow recovery of '{registry}' panicked when spawned: '{name}' has no recovery"
            ),
        }
    }
}

impl<K> fmt::Debug for Recoveries<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Recoveries")
            .field("per_key", &self.factory.is_some())
            .field("overflow", &self.overflow.get())
            .finish_non_exhaustive()
    }
}
