//! The holder's side of a lease: a task that renews it every third of its
//! time to live, publishes the cycle's outcomes in order, and releases it
//! when the guard is dropped.

use std::sync::Arc;

use tokio::sync::mpsc;
use tokio::time::Instant;

use super::{Fleet, Lease, Outcome};
use crate::sync::atomic::{AtomicBool, Ordering};
use crate::sync::{Mutex, lock};

/// A lease this replica holds. Dropping it releases the lease (after the
/// outcomes handed to it are published).
pub(crate) struct Guard {
    lease: Lease,
    tx: mpsc::UnboundedSender<Outcome>,
    lost: Arc<AtomicBool>,
    /// Until when the lease is surely still ours: its time to live from
    /// the start of the last call that set it (the acquire, or a renewal
    /// that succeeded). Past it, a holder that could not renew (the
    /// coordinator unreachable from here) may have lost it to another
    /// replica without being told.
    until: Arc<Mutex<Instant>>,
}

impl std::fmt::Debug for Guard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Guard")
            .field("lease", &self.lease)
            .field("lost", &self.is_lost())
            .finish()
    }
}

impl Guard {
    /// Starts renewing `lease`, granted by a call made at `asked`.
    pub(crate) fn spawn(fleet: Fleet, lease: Lease, asked: Instant) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        let lost = Arc::new(AtomicBool::new(false));
        let until = Arc::new(Mutex::new(asked + fleet.inner().settings.lease_ttl));
        tokio::spawn(run(fleet, lease.clone(), rx, lost.clone(), until.clone()));
        Self {
            lease,
            tx,
            lost,
            until,
        }
    }

    /// Whether the lease is held no more, or may not be: a renewal found
    /// it gone (it expired; another replica may hold a newer one), or no
    /// renewal succeeded for its time to live (then it is given up: not
    /// renewed again, so it expires if it has not).
    pub(crate) fn is_lost(&self) -> bool {
        if self.lost.load(Ordering::Acquire) {
            return true;
        }
        if Instant::now() >= *lock(&self.until) {
            self.lost.store(true, Ordering::Release);
            return true;
        }
        false
    }

    /// Publishes `outcome` under the lease (in order with the others).
    pub(crate) fn publish(&self, outcome: Outcome) {
        let _ = self.tx.send(outcome);
    }
}

async fn run(
    fleet: Fleet,
    lease: Lease,
    mut rx: mpsc::UnboundedReceiver<Outcome>,
    lost: Arc<AtomicBool>,
    until: Arc<Mutex<Instant>>,
) {
    let inner = fleet.inner().clone();
    let settings = inner.settings;
    let coordinator = inner.coordinator.clone();
    let name = lease.dependency().to_string();
    let mut renew = tokio::time::interval_at(
        tokio::time::Instant::now() + settings.renew_every,
        settings.renew_every,
    );
    renew.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            biased;
            outcome = rx.recv() => match outcome {
                Some(outcome) => {
                    let result = coordinator.publish(&lease, &outcome).await;
                    inner.observe(&result);
                    match result {
                        Ok(true) => {}
                        Ok(false) => {
                            lost.store(true, Ordering::Release);
                            tracing::warn!(
                                dependency = name,
                                token = lease.token(),
                                outcome = outcome.as_str(),
                                "Fleet refused this replica's recovery outcome: a newer lease was granted (stale fencing token)"
                            );
                        }
                        Err(e) => tracing::warn!(
                            dependency = name,
                            outcome = outcome.as_str(),
                            error = %e,
                            "Recovery outcome not published to the fleet"
                        ),
                    }
                }
                None => {
                    // The cycle is over: give the lease up.
                    if !lost.load(Ordering::Acquire) {
                        let result = coordinator.release(&lease).await;
                        inner.observe(&result);
                    }
                    return;
                }
            },
            _ = renew.tick(), if !lost.load(Ordering::Acquire) => {
                let asked = Instant::now();
                if asked >= *lock(&until) {
                    // No renewal succeeded for the lease's time to live: it
                    // may be another replica's now. Given up.
                    lost.store(true, Ordering::Release);
                    tracing::warn!(
                        dependency = name,
                        token = lease.token(),
                        "Recovery lease given up: not renewed for its time to live (coordinator unreachable)"
                    );
                    continue;
                }
                let result = coordinator.renew(&lease, settings.lease_ttl).await;
                inner.observe(&result);
                if let Ok(true) = result {
                    let mut until = lock(&until);
                    *until = (*until).max(asked + settings.lease_ttl);
                }
                if let Ok(false) = result {
                    lost.store(true, Ordering::Release);
                    tracing::warn!(
                        dependency = name,
                        token = lease.token(),
                        "Recovery lease lost (it expired before it was renewed)"
                    );
                }
            }
        }
    }
}
