//! The startup gate: wait until every required dependency passes.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use tokio::time::{Instant, MissedTickBehavior};

use super::{CheckResult, HealthStatus, Reliability, lock};

/// A successful startup gate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StartupReport {
    /// Time from the start of the gate to its passing.
    pub elapsed: Duration,
    /// Rounds of checks run.
    pub rounds: u32,
    /// Optional dependencies that were failing when the gate passed.
    pub optional_failing: Vec<Arc<str>>,
}

/// The startup gate timed out.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StartupError {
    /// How long the gate waited.
    pub waited: Duration,
    /// Each required dependency still failing, with its last output.
    pub failing: Vec<(Arc<str>, String)>,
}

impl fmt::Display for StartupError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "required dependencies not healthy after {:?}:",
            self.waited
        )?;
        for (i, (name, output)) in self.failing.iter().enumerate() {
            let sep = if i == 0 { " " } else { "; " };
            write!(f, "{sep}{name} ({output})")?;
        }
        Ok(())
    }
}

impl std::error::Error for StartupError {}

impl Reliability {
    /// The startup gate: checks every dependency every `interval` (all checks
    /// of a round concurrently, each under its timeout) until every required
    /// one passes, for at most `timeout`. Logs each dependency's status each
    /// round. Optional dependencies are logged and never block. Marks the set
    /// started on success, so readiness can flip.
    ///
    /// `timeout` is a bound: the gate gives up at `timeout` exactly, not
    /// after the round in progress. A round running at the deadline is cut
    /// there; each of its checks still running is reported as timed out at
    /// the deadline, with the output of its previous result, if any. No
    /// round starts at or after the deadline (the first one always runs).
    ///
    /// Seed defaults: `DEPENDENCY_CHECK_INTERVAL` 5 s, `STARTUP_TIMEOUT` 300 s.
    pub async fn wait_for_dependencies(
        &self,
        interval: Duration,
        timeout: Duration,
    ) -> Result<StartupReport, StartupError> {
        let start = Instant::now();
        let deadline = start + timeout;
        let mut ticker = tokio::time::interval(interval.max(Duration::from_millis(1)));
        ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut rounds = 0;
        let mut failing = Vec::new();
        tracing::info!(
            dependencies = self.inner.entries.len(),
            timeout_s = timeout.as_secs_f64(),
            "Waiting for dependencies to become healthy..."
        );
        loop {
            if rounds == 0 {
                ticker.tick().await;
            } else {
                tokio::select! {
                    biased;
                    () = tokio::time::sleep_until(deadline) => return Err(self.give_up(start, failing)),
                    _ = ticker.tick() => {}
                }
                if Instant::now() >= deadline {
                    return Err(self.give_up(start, failing));
                }
            }
            rounds += 1;
            let results = self.round_until(deadline).await;
            failing = Vec::new();
            let mut optional_failing = Vec::new();
            for (dep, result) in self.dependencies().zip(&results) {
                let kind = if dep.required { "required" } else { "optional" };
                let output = result.output.clone().unwrap_or_default();
                match result.status {
                    HealthStatus::Fail => {
                        tracing::warn!(dependency = &*dep.name, kind, output = %output, "Dependency '{}' ({kind}): fail {output}", dep.name);
                        if dep.required {
                            failing.push((dep.name.clone(), output));
                        } else {
                            optional_failing.push(dep.name.clone());
                        }
                    }
                    status => tracing::info!(
                        dependency = &*dep.name,
                        kind,
                        "Dependency '{}' ({kind}): {status}",
                        dep.name
                    ),
                }
            }
            let elapsed = start.elapsed();
            if failing.is_empty() {
                tracing::info!(
                    elapsed_ms = elapsed.as_millis() as u64,
                    rounds,
                    "All required dependencies are healthy"
                );
                self.mark_started();
                return Ok(StartupReport {
                    elapsed,
                    rounds,
                    optional_failing,
                });
            }
            if Instant::now() >= deadline {
                return Err(self.give_up(start, failing));
            }
        }
    }

    /// One round of checks, all at once, cut at `deadline`: a check still
    /// running then fails as timed out, with its previous output. Records
    /// each result as the dependency's last.
    async fn round_until(&self, deadline: Instant) -> Vec<CheckResult> {
        let round_start = Instant::now();
        let entries = &self.inner.entries;
        let mut results: Vec<Option<CheckResult>> = vec![None; entries.len()];
        {
            let mut running: FuturesUnordered<_> = entries
                .iter()
                .enumerate()
                .map(|(i, e)| async move { (i, e.dep.check.run(e.dep.timeout).await) })
                .collect();
            let cut = tokio::time::sleep_until(deadline);
            tokio::pin!(cut);
            loop {
                tokio::select! {
                    biased;
                    next = running.next() => match next {
                        Some((i, result)) => results[i] = Some(result),
                        None => break,
                    },
                    () = &mut cut => break,
                }
            }
        }
        let ran = round_start.elapsed();
        results
            .into_iter()
            .zip(entries)
            .map(|(result, entry)| {
                let result = match result {
                    Some(result) => result,
                    None => {
                        let previous = lock(&entry.state)
                            .last
                            .as_ref()
                            .and_then(|r| r.output.clone());
                        let output = match previous {
                            Some(previous) => format!(
                                "timed out at the startup deadline after {ran:?}; last output: {previous}"
                            ),
                            None => format!("timed out at the startup deadline after {ran:?}"),
                        };
                        let mut result = CheckResult::fail(output);
                        result.duration = ran;
                        result.observed_value = Some(ran.as_secs_f64() * 1000.0);
                        result
                    }
                };
                lock(&entry.state).last = Some(result.clone());
                result
            })
            .collect()
    }

    fn give_up(&self, start: Instant, failing: Vec<(Arc<str>, String)>) -> StartupError {
        let error = StartupError {
            waited: start.elapsed(),
            failing,
        };
        tracing::error!("{error}");
        error
    }
}
