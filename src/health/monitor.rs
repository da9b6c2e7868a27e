//! The background health monitor.

use std::fmt;
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::{MonitorInfo, Reliability};

/// Checks every dependency on an interval, in one task per dependency so a
/// slow check never delays the others; records each result in the history;
/// a failing check triggers the dependency's recovery, a passing one lets it
/// return to idle. Stop it with [`Monitor::stop`] (the drain does, at its
/// end); dropping it stops it too, without waiting.
///
/// A dependency that is down is checked more often (see
/// [`Dependency::probe_while_down`](super::Dependency::probe_while_down)),
/// and a passing check of a dependency whose breaker is open lets the
/// breaker admit its half-open probe at once.
pub struct Monitor {
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
    reliability: Reliability,
    interval: Duration,
}

impl fmt::Debug for Monitor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Monitor")
            .field("interval", &self.interval)
            .finish_non_exhaustive()
    }
}

impl Monitor {
    /// Starts checking every dependency of `reliability` every `interval`
    /// (seed default `HEALTH_CHECK_INTERVAL`: 30 s), the first time at once.
    ///
    /// # Panics
    /// Outside a tokio runtime.
    pub fn start(reliability: &Reliability, interval: Duration) -> Self {
        let interval = interval.max(Duration::from_millis(1));
        let (stop, stopped) = watch::channel(false);
        let tasks = (0..reliability.inner.entries.len())
            .map(|index| {
                tokio::spawn(watch_one(
                    reliability.clone(),
                    index,
                    interval,
                    stopped.clone(),
                ))
            })
            .collect();
        reliability.set_monitor(Some(MonitorInfo {
            interval,
            running: true,
        }));
        tracing::info!(
            interval_s = interval.as_secs_f64(),
            "Health monitor started"
        );
        Self {
            stop,
            tasks,
            reliability: reliability.clone(),
            interval,
        }
    }

    /// The interval.
    pub fn interval(&self) -> Duration {
        self.interval
    }

    /// Stops every check task and waits for them to end. A check in flight is
    /// abandoned.
    pub async fn stop(mut self) {
        let _ = self.stop.send(true);
        for task in self.tasks.drain(..) {
            let _ = task.await;
        }
        self.reliability.set_monitor(Some(MonitorInfo {
            interval: self.interval,
            running: false,
        }));
        tracing::info!("Health monitor stopped");
    }
}

impl Drop for Monitor {
    fn drop(&mut self) {
        if !self.tasks.is_empty() {
            let _ = self.stop.send(true);
            self.reliability.set_monitor(Some(MonitorInfo {
                interval: self.interval,
                running: false,
            }));
        }
    }
}

/// A wake-up on the breaker's next change, created before its state is
/// read, so no transition between the read and the wait is missed.
type Changed = Option<std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>>;

#[cfg(feature = "circuit-breaker")]
fn breaker_changed(dep: &super::Dependency) -> Changed {
    dep.breaker
        .as_ref()
        .map(|b| Box::pin(b.changed()) as std::pin::Pin<Box<_>>)
}

#[cfg(not(feature = "circuit-breaker"))]
fn breaker_changed(_: &super::Dependency) -> Changed {
    None
}

/// Whether the dependency's breaker is open or half-open.
#[cfg(feature = "circuit-breaker")]
fn breaker_open(dep: &super::Dependency) -> bool {
    use crate::circuit_breaker::State;
    dep.breaker
        .as_ref()
        .is_some_and(|b| matches!(b.state(), State::Open | State::HalfOpen))
}

#[cfg(not(feature = "circuit-breaker"))]
fn breaker_open(_: &super::Dependency) -> bool {
    false
}

async fn watch_one(
    reliability: Reliability,
    index: usize,
    interval: Duration,
    mut stopped: watch::Receiver<bool>,
) {
    let dep = reliability.inner.entries[index].dep.clone();
    let mut next = Instant::now();
    // Checks failed in a row: the fast interval doubles with each.
    let mut down_checks: u32 = 0;
    let mut changed = breaker_changed(&dep);
    let mut was_open = breaker_open(&dep);
    loop {
        let wake = async {
            match changed.as_mut() {
                Some(changed) => changed.await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            () = tokio::time::sleep_until(next) => {}
            () = wake => {
                // Re-armed before the state is read.
                changed = breaker_changed(&dep);
                let open = breaker_open(&dep);
                // The breaker opened (from closed) between checks: the
                // dependency is down from now, so check it soon. A re-opening
                // after a failed probe changes nothing: it is down already.
                if open && !was_open {
                    if let Some((first, _)) = dep.probe_while_down {
                        let soon = Instant::now() + first.min(interval);
                        if soon < next {
                            next = soon;
                            down_checks = 1;
                        }
                    }
                }
                was_open = open;
                continue;
            }
            _ = stopped.changed() => return,
        }
        let started = Instant::now();
        let result = tokio::select! {
            result = dep.check.run(dep.timeout) => result,
            _ = stopped.changed() => return,
        };
        let up = result.status.is_up();
        #[cfg(feature = "metrics")]
        {
            let name = dep.name().to_string();
            metrics::histogram!(crate::metrics::CHECK_DURATION, "dependency" => name.clone())
                .record(result.duration.as_secs_f64());
            metrics::counter!(crate::metrics::CHECKS, "dependency" => name, "status" => result.status.as_str())
                .increment(1);
        }
        if !up {
            tracing::warn!(
                dependency = &*dep.name,
                output = result.output.as_deref().unwrap_or(""),
                "Health check failed for: {}",
                dep.name
            );
        }
        // The history keeps one result per interval (a failure standing),
        // so that checks made more often while down do not outweigh the
        // others.
        reliability.record(index, result, interval, started);
        #[cfg(feature = "recovery")]
        if let Some(recovery) = &dep.recovery {
            recovery.report_check(up);
        }
        changed = breaker_changed(&dep);
        #[cfg(feature = "circuit-breaker")]
        if let Some(breaker) = &dep.breaker {
            // Once per check, so at most once per interval while checks
            // pass and calls fail (an endpoint up, the model not loaded).
            if up && breaker.probe_now() {
                tracing::info!(
                    dependency = &*dep.name,
                    "Health check passed for '{}' while its circuit breaker is open: probing now",
                    dep.name
                );
            }
        }
        was_open = breaker_open(&dep);
        // A passing check says the dependency answers: back to the
        // interval, whatever the breaker's probes will find.
        let delay = match dep.probe_while_down {
            Some((first, max)) if !up => {
                let grown = first.saturating_mul(1 << down_checks.min(20));
                down_checks = down_checks.saturating_add(1);
                grown.min(max).min(interval)
            }
            _ => {
                down_checks = 0;
                interval
            }
        };
        // Like an interval that delays missed ticks: never a burst.
        let now = Instant::now();
        next = started
            .checked_add(delay)
            .unwrap_or_else(|| now + Duration::from_secs(86_400 * 365))
            .max(now);
    }
}
