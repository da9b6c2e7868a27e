//! Predictive recovery: a dependency that is getting worse is marked
//! degraded before its breaker opens.

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::sync::watch;

use super::{Recovery, WeakRecovery};
use crate::circuit_breaker::{Breaker, State, WeakBreaker};

/// Whether a dependency is degraded, and why.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Degradation {
    /// A warning threshold is reached while the breaker is closed.
    pub degraded: bool,
    /// Which threshold, with the value that reached it
    /// (`"failure rate 30% (warning at 25%)"`).
    pub reason: Option<String>,
    /// Since when it is degraded (wall clock).
    pub since: Option<SystemTime>,
    /// Times it became degraded.
    pub episodes: u64,
}

/// Watches a breaker's counts against warning thresholds below its trip
/// thresholds (seed enhancement 2, predictive recovery). When one is
/// reached while the breaker is closed, the dependency is *degraded*: a
/// `degraded` transition (logged, published on [`subscribe`](Self::subscribe),
/// a metric), `warn` in `/health` (see
/// [`Dependency::early_warning`](crate::health::Dependency::early_warning)),
/// and, if asked, its recovery is triggered before the breaker opens.
///
/// It reads the counts the breaker keeps anyway, on its own task once per
/// interval (default 1 s): the per-call path is untouched. Reading the
/// counts changes nothing.
///
/// ```
/// use std::time::Duration;
/// use tower_recovery::circuit_breaker::Breaker;
/// use tower_recovery::recovery::EarlyWarning;
///
/// # #[tokio::main(flavor = "current_thread", start_paused = true)]
/// # async fn main() {
/// let breaker = Breaker::builder("model_server")
///     .count_window(20)
///     .failure_rate(0.5) // trips at 50%
///     .minimum_calls(10)
///     .build();
/// let warning = EarlyWarning::builder(&breaker)
///     .failure_rate(0.25) // degraded at 25%
///     .spawn();
/// for i in 0..12 {
///     let permit = breaker.try_acquire().unwrap();
///     if i % 3 == 0 { permit.failure() } else { permit.success() } // 33%
/// }
/// tokio::time::sleep(Duration::from_secs(1)).await;
/// assert!(warning.status().degraded);
/// assert!(breaker.state().is_closed(), "degraded, not open");
/// # }
/// ```
#[derive(Clone)]
pub struct EarlyWarning {
    status: watch::Receiver<Degradation>,
    _task: Arc<Task>,
}

/// Stops the task when the last handle is dropped.
struct Task(tokio::task::AbortHandle);

impl Drop for Task {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl fmt::Debug for EarlyWarning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EarlyWarning")
            .field("status", &*self.status.borrow())
            .finish()
    }
}

/// Configures an [`EarlyWarning`].
#[derive(Debug)]
pub struct EarlyWarningBuilder {
    breaker: WeakBreaker,
    name: Arc<str>,
    failure_rate: Option<f64>,
    slow_call_rate: Option<f64>,
    consecutive_failures: Option<u32>,
    minimum_calls: u64,
    interval: Duration,
    recovery: Option<WeakRecovery>,
}

impl EarlyWarning {
    /// Watches `breaker` (held weakly: the watch ends with the breaker).
    pub fn builder(breaker: &Breaker) -> EarlyWarningBuilder {
        EarlyWarningBuilder {
            breaker: breaker.downgrade(),
            name: breaker.name().into(),
            failure_rate: None,
            slow_call_rate: None,
            consecutive_failures: None,
            minimum_calls: 10,
            interval: Duration::from_secs(1),
            recovery: None,
        }
    }

    /// The current reading. Reading changes nothing.
    pub fn status(&self) -> Degradation {
        self.status.borrow().clone()
    }

    /// Every change of [`status`](Self::status), the latest kept.
    pub fn subscribe(&self) -> watch::Receiver<Degradation> {
        self.status.clone()
    }
}

impl EarlyWarningBuilder {
    /// Degraded at this window failure rate (below the breaker's).
    ///
    /// # Panics
    /// Outside `(0, 1]`.
    pub fn failure_rate(mut self, rate: f64) -> Self {
        assert!(rate > 0.0 && rate <= 1.0, "failure_rate must be in (0, 1]");
        self.failure_rate = Some(rate);
        self
    }

    /// Degraded at this window slow-call rate (the breaker's slow-call
    /// threshold decides what is slow).
    ///
    /// # Panics
    /// Outside `(0, 1]`.
    pub fn slow_call_rate(mut self, rate: f64) -> Self {
        assert!(
            rate > 0.0 && rate <= 1.0,
            "slow_call_rate must be in (0, 1]"
        );
        self.slow_call_rate = Some(rate);
        self
    }

    /// Degraded at this many consecutive failures (below the breaker's).
    ///
    /// # Panics
    /// If `n` is zero.
    pub fn consecutive_failures(mut self, n: u32) -> Self {
        assert!(n > 0, "consecutive_failures must be at least 1");
        self.consecutive_failures = Some(n);
        self
    }

    /// Calls the window must hold before a rate counts (default 10).
    pub fn minimum_calls(mut self, n: u64) -> Self {
        self.minimum_calls = n;
        self
    }

    /// How often the counts are read (default 1 s).
    pub fn interval(mut self, interval: Duration) -> Self {
        self.interval = interval.max(Duration::from_millis(1));
        self
    }

    /// Triggers `recovery` when the dependency becomes degraded: recovery
    /// before the breaker opens. The trigger runs a cycle if the recovery
    /// is idle, and starts no outage (the dependency is degraded, not
    /// down). Held weakly: the warning keeps no recovery running.
    pub fn recover(mut self, recovery: &Recovery) -> Self {
        self.recovery = Some(recovery.downgrade());
        self
    }

    /// Starts watching.
    ///
    /// # Panics
    /// Outside a tokio runtime.
    pub fn spawn(self) -> EarlyWarning {
        let (tx, rx) = watch::channel(Degradation::default());
        let task = tokio::spawn(watch_counts(self, tx));
        EarlyWarning {
            status: rx,
            _task: Arc::new(Task(task.abort_handle())),
        }
    }
}

impl EarlyWarningBuilder {
    /// Which warning threshold the breaker's counts reach, if any: `None`
    /// when the breaker is not closed, or changed while they were read.
    fn reached(&self, breaker: &Breaker) -> Option<String> {
        let generation = breaker.generation();
        if !breaker.state().is_closed() {
            return None;
        }
        let counts = breaker.counts();
        if breaker.generation() != generation {
            return None;
        }
        let pct = |r: f64| format!("{:.0}%", r * 100.0);
        if let Some(limit) = self.consecutive_failures {
            if counts.consecutive_failures >= limit {
                return Some(format!(
                    "{} consecutive failures (warning at {limit})",
                    counts.consecutive_failures
                ));
            }
        }
        if counts.window_calls < self.minimum_calls.max(1) {
            return None;
        }
        if let (Some(limit), Some(rate)) = (self.failure_rate, counts.failure_rate()) {
            if rate >= limit {
                return Some(format!(
                    "failure rate {} (warning at {})",
                    pct(rate),
                    pct(limit)
                ));
            }
        }
        if let (Some(limit), Some(rate)) = (self.slow_call_rate, counts.slow_call_rate()) {
            if rate >= limit {
                return Some(format!(
                    "slow-call rate {} (warning at {})",
                    pct(rate),
                    pct(limit)
                ));
            }
        }
        None
    }
}

async fn watch_counts(cfg: EarlyWarningBuilder, tx: watch::Sender<Degradation>) {
    let name = cfg.name.clone();
    let mut ticker = tokio::time::interval(cfg.interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        let Some(breaker) = cfg.breaker.upgrade() else {
            // The breaker is gone: nothing is degraded any more.
            if tx.borrow().degraded {
                tx.send_modify(|d| {
                    d.degraded = false;
                    d.reason = None;
                    d.since = None;
                });
                gauge(&name, 0.0);
            }
            return;
        };
        let reached = cfg.reached(&breaker);
        let open = matches!(breaker.state(), State::Open | State::HalfOpen);
        drop(breaker);
        let was = tx.borrow().degraded;
        match (was, reached) {
            (false, Some(reason)) => {
                tracing::warn!(
                    dependency = &*name,
                    reason = %reason,
                    "Dependency '{name}' degraded: {reason}"
                );
                tx.send_modify(|d| {
                    d.degraded = true;
                    d.reason = Some(reason);
                    d.since = Some(SystemTime::now());
                    d.episodes += 1;
                });
                gauge(&name, 1.0);
                if let Some(recovery) = cfg.recovery.as_ref().and_then(WeakRecovery::upgrade) {
                    let outcome = recovery.trigger_early("degraded");
                    tracing::info!(dependency = &*name, %outcome, "recovery triggered early: degraded");
                }
            }
            (true, None) => {
                if open {
                    tracing::info!(
                        dependency = &*name,
                        "Dependency '{name}' no longer degraded: its breaker opened"
                    );
                } else {
                    tracing::info!(
                        dependency = &*name,
                        "Dependency '{name}' no longer degraded"
                    );
                }
                tx.send_modify(|d| {
                    d.degraded = false;
                    d.reason = None;
                    d.since = None;
                });
                gauge(&name, 0.0);
            }
            (true, Some(reason)) => {
                // Still degraded; keep the reason current without waking
                // subscribers for a changed percentage.
                tx.send_if_modified(|d| {
                    d.reason = Some(reason);
                    false
                });
            }
            (false, None) => {}
        }
    }
}

fn gauge(_name: &Arc<str>, _value: f64) {
    #[cfg(feature = "metrics")]
    metrics::gauge!(crate::metrics::DEGRADED, "dependency" => _name.to_string()).set(_value);
}
