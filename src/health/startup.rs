//! The startup gate: wait until every required dependency passes.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::{Instant, MissedTickBehavior};

use super::{HealthStatus, Reliability};

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
    /// Seed defaults: `DEPENDENCY_CHECK_INTERVAL` 5 s, `STARTUP_TIMEOUT` 300 s.
    pub async fn wait_for_dependencies(
        &self,
        interval: Duration,
        timeout: Duration,
    ) -> Result<StartupReport, StartupError> {
        let start = Instant::now();
        let mut ticker = tokio::time::interval(interval.max(Duration::from_millis(1)));
        ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut rounds = 0;
        tracing::info!(
            dependencies = self.inner.entries.len(),
            "Waiting for dependencies to become healthy..."
        );
        loop {
            ticker.tick().await;
            rounds += 1;
            let results = self.check_all().await;
            let mut failing = Vec::new();
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
            if elapsed >= timeout {
                let error = StartupError {
                    waited: elapsed,
                    failing,
                };
                tracing::error!("{error}");
                return Err(error);
            }
        }
    }
}
