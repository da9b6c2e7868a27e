//! What a breaker is in and what it reports: its state, the cause of a
//! transition, the counts of its window, a transition and a snapshot.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

#[cfg(doc)]
use super::Breaker;

/// The state of a breaker.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum State {
    /// Calls flow; outcomes are recorded.
    Closed,
    /// Calls are rejected until the open wait elapses.
    Open,
    /// A limited number of probes are admitted.
    HalfOpen,
    /// Set by hand: every call is rejected until [`Breaker::reset`].
    ForcedOpen,
    /// Set by hand: every call is admitted and nothing is recorded until
    /// [`Breaker::reset`].
    Disabled,
}

impl State {
    /// Lower-case name, as used in JSON (`closed`, `half_open`, ...).
    pub fn as_str(&self) -> &'static str {
        match self {
            State::Closed => "closed",
            State::Open => "open",
            State::HalfOpen => "half_open",
            State::ForcedOpen => "forced_open",
            State::Disabled => "disabled",
        }
    }

    /// Upper-case name, as in the log lines (`CLOSED`, `HALF_OPEN`, ...).
    pub fn as_upper(&self) -> &'static str {
        match self {
            State::Closed => "CLOSED",
            State::Open => "OPEN",
            State::HalfOpen => "HALF_OPEN",
            State::ForcedOpen => "FORCED_OPEN",
            State::Disabled => "DISABLED",
        }
    }

    /// Whether calls are admitted normally.
    pub fn is_closed(&self) -> bool {
        matches!(self, State::Closed)
    }
}

impl fmt::Display for State {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a transition happened.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Cause {
    /// The consecutive-failure threshold was reached.
    ConsecutiveFailures,
    /// The window's failure rate reached the threshold.
    FailureRate,
    /// The window's slow-call rate reached the threshold.
    SlowCallRate,
    /// The open wait elapsed.
    OpenWaitElapsed,
    /// [`Breaker::probe_now`]: the dependency answered a health check, so
    /// the open wait ended early.
    ProbeRequested,
    /// A half-open probe failed.
    ProbeFailed,
    /// Enough half-open probes succeeded.
    ProbesSucceeded,
    /// A half-open ramp admitted all calls and enough of them succeeded.
    RampCompleted,
    /// Half-open lasted longer than its maximum wait.
    HalfOpenTimeout,
    /// [`Breaker::reset`].
    Reset,
    /// [`Breaker::close`]: the dependency is known to work again (a recovery
    /// succeeded, or a health check passed).
    Recovered,
    /// [`Breaker::force_open`].
    ForcedOpen,
    /// [`Breaker::disable`].
    Disabled,
}

impl fmt::Display for Cause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Cause::ConsecutiveFailures => "consecutive failures",
            Cause::FailureRate => "failure rate",
            Cause::SlowCallRate => "slow-call rate",
            Cause::OpenWaitElapsed => "open wait elapsed",
            Cause::ProbeRequested => "probe requested",
            Cause::ProbeFailed => "probe failed",
            Cause::ProbesSucceeded => "probes succeeded",
            Cause::RampCompleted => "ramp completed",
            Cause::HalfOpenTimeout => "half-open wait elapsed",
            Cause::Reset => "reset",
            Cause::Recovered => "recovered",
            Cause::ForcedOpen => "forced open",
            Cause::Disabled => "disabled",
        })
    }
}

/// Counts at one moment: the consecutive failures, and the window's contents
/// (zero without a window).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    /// Failures since the last success while closed.
    pub consecutive_failures: u32,
    /// Calls recorded in the window.
    pub window_calls: u64,
    /// Failures recorded in the window.
    pub window_failures: u64,
    /// Slow calls recorded in the window.
    pub window_slow_calls: u64,
}

impl Counts {
    /// Failure rate of the window, if it holds any call.
    pub fn failure_rate(&self) -> Option<f64> {
        (self.window_calls > 0).then(|| self.window_failures as f64 / self.window_calls as f64)
    }

    /// Slow-call rate of the window, if it holds any call.
    pub fn slow_call_rate(&self) -> Option<f64> {
        (self.window_calls > 0).then(|| self.window_slow_calls as f64 / self.window_calls as f64)
    }
}

/// A change of state, with the counts that caused it.
#[derive(Clone, Debug, PartialEq)]
pub struct Transition {
    /// The breaker's name.
    pub name: Arc<str>,
    /// State before.
    pub from: State,
    /// State after.
    pub to: State,
    /// Why.
    pub cause: Cause,
    /// Generation of the new state; increases by one per transition, so
    /// events can be ordered.
    pub generation: u64,
    /// Counts just before the transition.
    pub counts: Counts,
    /// For a transition to `Open`: how long it stays open.
    pub open_for: Option<Duration>,
}

/// A point-in-time view of a breaker, for reports.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct Snapshot {
    /// The breaker's name.
    pub name: Arc<str>,
    /// Current state.
    pub state: State,
    /// Current generation.
    pub generation: u64,
    /// Current counts.
    pub counts: Counts,
    /// Failures observed since creation (including outcomes dropped as
    /// stale).
    pub failures: u64,
    /// Calls rejected since creation.
    pub rejected: u64,
    /// Transitions since creation.
    pub transitions: u64,
    /// When open: time until the next probe is admitted.
    pub next_probe_in: Option<Duration>,
    /// When half-open: probe permits free.
    pub available_permits: Option<u16>,
    /// Metrics-only mode: calls admitted that the breaker would have
    /// rejected, since creation.
    pub shadow_rejected: u64,
    /// When half-open with a ramp: the share of calls admitted now.
    pub traffic_share: Option<f64>,
}
