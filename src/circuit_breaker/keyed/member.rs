//! The keys-per-state gauge of a keyed registry (feature `metrics`).
//!
//! Each breaker of a registry reports its state to the registry's gauge
//! (`tower_recovery_keyed_breakers{keyed, state}`): +1 to its state when it
//! joins, -1/+1 on each transition, -1 when it is evicted. The state it last
//! reported is kept under a small lock with its membership, so that a
//! transition racing an eviction moves the gauge exactly once; the gauge
//! itself is updated after the lock is released (the updates commute).

use std::sync::{Arc, Mutex};

use crate::circuit_breaker::State;

/// A breaker's membership of a keyed registry.
#[derive(Debug)]
pub(crate) struct Member {
    registry: Arc<str>,
    /// The state last added to the gauge; `None` before joining and after
    /// leaving.
    reported: Mutex<Option<State>>,
}

/// Gauge updates to make once no lock is held.
#[must_use]
pub(crate) struct Report {
    registry: Arc<str>,
    from: Option<State>,
    to: Option<State>,
}

impl Member {
    pub(crate) fn new(registry: Arc<str>) -> Self {
        Self {
            registry,
            reported: Mutex::new(None),
        }
    }

    /// The registry's name (the `breaker` label of its breakers' metrics).
    pub(crate) fn registry(&self) -> &str {
        &self.registry
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<State>> {
        self.reported.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Joins the registry (a new breaker, closed).
    pub(crate) fn join(&self) -> Report {
        let mut reported = self.lock();
        let from = reported.replace(State::Closed);
        Report {
            registry: self.registry.clone(),
            from,
            to: Some(State::Closed),
        }
    }

    /// Leaves the registry (evicted).
    pub(crate) fn leave(&self) -> Report {
        let from = self.lock().take();
        Report {
            registry: self.registry.clone(),
            from,
            to: None,
        }
    }

    /// A transition: `now` reads the breaker's state (under this lock, so
    /// that racing transitions report the latest one last).
    pub(crate) fn moved(&self, now: impl FnOnce() -> State) -> Report {
        let mut reported = self.lock();
        let (from, to) = match *reported {
            Some(from) => {
                let to = now();
                *reported = Some(to);
                (Some(from), Some(to))
            }
            None => (None, None),
        };
        Report {
            registry: self.registry.clone(),
            from,
            to,
        }
    }
}

impl Report {
    /// Updates the gauge (no lock of this crate held).
    pub(crate) fn report(self) {
        if self.from == self.to {
            return;
        }
        let gauge = |state: State| {
            metrics::gauge!(
                crate::metrics::KEYED_BREAKERS,
                "keyed" => self.registry.to_string(),
                "state" => state.as_str()
            )
        };
        if let Some(from) = self.from {
            gauge(from).decrement(1.0);
        }
        if let Some(to) = self.to {
            gauge(to).increment(1.0);
        }
    }
}
