//! Metric names recorded through the [`metrics`](https://docs.rs/metrics)
//! facade (feature `metrics`), so any exporter (Prometheus, StatsD, ...)
//! works. A breaker's metrics are labelled by its name, a dependency's by
//! the dependency's. Nothing is recorded, and nothing costs, when the
//! feature is off. [`describe`] gives the recorder the help texts and units
//! of the table below.
//!
//! | name | kind | labels | what |
//! |---|---|---|---|
//! | `tower_recovery_breaker_failures_total` | counter | `breaker` | failures observed |
//! | `tower_recovery_breaker_rejections_total` | counter | `breaker` | calls rejected |
//! | `tower_recovery_breaker_transitions_total` | counter | `breaker`, `from`, `to` | state transitions |
//! | `tower_recovery_breaker_state` | gauge | `breaker` | 0 closed, 1 open, 2 half-open, 3 forced open, 4 disabled |
//! | `tower_recovery_keyed_breakers` | gauge | `keyed`, `state` | breakers of a keyed registry in each state (never one series per key) |
//! | `tower_recovery_recovery_attempts_total` | counter | `dependency` | recovery attempts started |
//! | `tower_recovery_breaker_shadow_rejections_total` | counter | `breaker` | calls a metrics-only breaker admitted that it would have rejected |
//! | `tower_recovery_recovery_outcomes_total` | counter | `dependency`, `outcome` | `success`, `failure` (attempt), `exhausted`, `healed` |
//! | `tower_recovery_outage_duration_seconds` | histogram | `dependency` | how long each outage lasted (sum / count = MTTR) |
//! | `tower_recovery_degraded` | gauge | `dependency` | 1 while degraded (an early warning), else 0 |
//! | `tower_recovery_drain_in_flight` | gauge | | requests in flight through drain layers |
//! | `tower_recovery_drain_completed_total` | counter | | drains completed |
//! | `tower_recovery_health_check_duration_seconds` | histogram | `dependency` | check latency |
//! | `tower_recovery_health_checks_total` | counter | `dependency`, `status` | checks run by the monitor |
//! | `tower_recovery_chaos_active` | gauge | `chaos` | 1 while a chaos rehearsal is on, else 0 |
//! | `tower_recovery_chaos_injected_total` | counter | `chaos`, `fault` | faults injected: `error`, `response` (a failed call answered with an error, or with a response), `latency` (a delayed call) |

/// Breaker failures observed.
pub const BREAKER_FAILURES: &str = "tower_recovery_breaker_failures_total";
/// Breaker rejections.
pub const BREAKER_REJECTIONS: &str = "tower_recovery_breaker_rejections_total";
/// Calls a metrics-only breaker admitted that it would have rejected.
pub const BREAKER_SHADOW_REJECTIONS: &str = "tower_recovery_breaker_shadow_rejections_total";
/// Breaker transitions.
pub const BREAKER_TRANSITIONS: &str = "tower_recovery_breaker_transitions_total";
/// Breaker state gauge.
pub const BREAKER_STATE: &str = "tower_recovery_breaker_state";
/// Gauge: the breakers of a keyed registry in each state (`keyed`,
/// `state`). A keyed registry's breakers add their failures, rejections
/// and transitions to the series of the registry's name (`breaker`), not
/// one per key: keys come from requests, and a series per key would grow
/// without bound.
pub const KEYED_BREAKERS: &str = "tower_recovery_keyed_breakers";
/// Recovery attempts.
pub const RECOVERY_ATTEMPTS: &str = "tower_recovery_recovery_attempts_total";
/// Recovery outcomes.
pub const RECOVERY_OUTCOMES: &str = "tower_recovery_recovery_outcomes_total";
/// Histogram: how long each outage lasted, from its first sign to the
/// first sign the dependency is back (`dependency`); its sum over its
/// count is the MTTR, its count the outages.
pub const OUTAGE_DURATION: &str = "tower_recovery_outage_duration_seconds";
/// Gauge: 1 while a dependency is degraded (an `EarlyWarning` threshold is
/// reached with its breaker closed), else 0 (`dependency`).
pub const DEGRADED: &str = "tower_recovery_degraded";
/// Requests in flight through drain layers.
pub const DRAIN_IN_FLIGHT: &str = "tower_recovery_drain_in_flight";
/// Drains completed.
pub const DRAIN_COMPLETED: &str = "tower_recovery_drain_completed_total";
/// Health check latency.
pub const CHECK_DURATION: &str = "tower_recovery_health_check_duration_seconds";
/// Health checks run by the monitor.
pub const CHECKS: &str = "tower_recovery_health_checks_total";
/// Gauge: 1 while a `chaos::Chaos` handle's rehearsal is on, 0 once it is
/// stopped or has ended (`chaos`: the handle's name). Set when the
/// rehearsal starts, stops or ends: a rehearsal past its end reads 1 until
/// its timer or the next call through its layer ends it (at once inside a
/// Tokio runtime).
pub const CHAOS_ACTIVE: &str = "tower_recovery_chaos_active";
/// Faults a `chaos::Chaos` handle injected (`chaos`: the handle's name;
/// `fault`: `error` or `response` for a failed call, counted when it is
/// answered with an error or a response, `latency` for a delayed call,
/// counted when drawn). A call delayed and then failed counts twice. Calls
/// chaos lets through count nothing. Labelled by the handle's name only,
/// never by anything of a request's.
pub const CHAOS_INJECTED: &str = "tower_recovery_chaos_injected_total";

/// Describes every metric above to the recorder in use: its unit and help
/// text (Prometheus exporters render them as `# HELP` lines).
///
/// Descriptions go to the recorder installed when this is called, so call it
/// once, after installing yours. The metrics themselves are recorded with or
/// without it.
///
/// ```
/// use metrics_exporter_prometheus::PrometheusBuilder;
///
/// let recorder = PrometheusBuilder::new().build_recorder();
/// let handle = recorder.handle();
/// metrics::with_local_recorder(&recorder, || {
///     tower_recovery::metrics::describe();
///     metrics::counter!(tower_recovery::metrics::BREAKER_FAILURES, "breaker" => "db").increment(1);
/// });
/// let text = handle.render();
/// assert!(text.contains("# HELP tower_recovery_breaker_failures_total Failures"));
/// ```
pub fn describe() {
    use ::metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
    describe_counter!(
        BREAKER_FAILURES,
        Unit::Count,
        "Failures observed by the circuit breaker, by breaker"
    );
    describe_counter!(
        BREAKER_REJECTIONS,
        Unit::Count,
        "Calls the circuit breaker rejected, by breaker"
    );
    describe_counter!(
        BREAKER_SHADOW_REJECTIONS,
        Unit::Count,
        "Calls a metrics-only circuit breaker admitted that it would have rejected, by breaker"
    );
    describe_counter!(
        BREAKER_TRANSITIONS,
        Unit::Count,
        "Circuit breaker state transitions, by breaker, from and to"
    );
    describe_gauge!(
        BREAKER_STATE,
        "Circuit breaker state: 0 closed, 1 open, 2 half-open, 3 forced open, 4 disabled"
    );
    describe_gauge!(
        KEYED_BREAKERS,
        Unit::Count,
        "Breakers of a keyed registry in each state, by registry and state"
    );
    describe_counter!(
        RECOVERY_ATTEMPTS,
        Unit::Count,
        "Recovery attempts started, by dependency"
    );
    describe_counter!(
        RECOVERY_OUTCOMES,
        Unit::Count,
        "Recovery outcomes (success, failure, exhausted, healed), by dependency"
    );
    describe_histogram!(
        OUTAGE_DURATION,
        Unit::Seconds,
        "Outage durations (time to recover), by dependency"
    );
    describe_gauge!(
        DEGRADED,
        "1 while a dependency is degraded (a warning threshold reached, breaker closed), by dependency"
    );
    describe_gauge!(
        DRAIN_IN_FLIGHT,
        Unit::Count,
        "Requests in flight through drain layers"
    );
    describe_counter!(DRAIN_COMPLETED, Unit::Count, "Drains completed");
    describe_histogram!(
        CHECK_DURATION,
        Unit::Seconds,
        "Health check latency, by dependency"
    );
    describe_counter!(
        CHECKS,
        Unit::Count,
        "Health checks run by the monitor, by dependency and status"
    );
    describe_gauge!(
        CHAOS_ACTIVE,
        "1 while a chaos rehearsal injects faults, else 0, by chaos handle"
    );
    describe_counter!(
        CHAOS_INJECTED,
        Unit::Count,
        "Faults injected by a chaos rehearsal (error, response, latency), by chaos handle and fault"
    );
}

/// Metric handles registered with the recorder in use, re-registered when
/// the recorder changes: a part built before the application installs its
/// recorder (or used first under another one) still reports to the one in
/// use now. Handles for up to four recorders are kept (past that, the
/// fourth's are used). A recorder is known by its address: a local recorder
/// replaced by another at the same address keeps the first one's handles.
#[cfg(any(feature = "circuit-breaker", feature = "drain", feature = "chaos"))]
pub(crate) struct Bound<T> {
    slots: [std::sync::OnceLock<(usize, T)>; 4],
}

#[cfg(any(feature = "circuit-breaker", feature = "drain", feature = "chaos"))]
impl<T> Bound<T> {
    pub(crate) const fn new() -> Self {
        Self {
            slots: [const { std::sync::OnceLock::new() }; 4],
        }
    }

    /// Runs `f` with the handles of the recorder in use, registering them
    /// with `make` the first time that recorder is seen (outside any lock).
    #[inline]
    pub(crate) fn with<R>(&self, make: impl FnOnce() -> T, f: impl FnOnce(&T) -> R) -> R {
        let id =
            ::metrics::with_recorder(|r| r as *const dyn ::metrics::Recorder as *const () as usize);
        // The common case: the recorder the handles were first made for.
        if let Some((owner, handles)) = self.slots[0].get() {
            if *owner == id {
                return f(handles);
            }
        }
        self.with_other(id, make, f)
    }

    #[cold]
    fn with_other<R>(&self, id: usize, make: impl FnOnce() -> T, f: impl FnOnce(&T) -> R) -> R {
        let mut made: Option<T> = None;
        let mut make = Some(make);
        for slot in &self.slots {
            if slot.get().is_none() {
                let handles = made
                    .take()
                    .unwrap_or_else(|| (make.take().expect("once"))());
                if let Err((_, back)) = slot.set((id, handles)) {
                    made = Some(back);
                }
            }
            if let Some((owner, handles)) = slot.get() {
                if *owner == id {
                    return f(handles);
                }
            }
        }
        // More recorders than slots: handles registered for this use.
        match made {
            Some(handles) => f(&handles),
            None => f(&(make.take().expect("once"))()),
        }
    }
}

#[cfg(any(feature = "circuit-breaker", feature = "drain", feature = "chaos"))]
impl<T> std::fmt::Debug for Bound<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bound").finish_non_exhaustive()
    }
}
