//! Changing a running breaker: its effective configuration, a checked change
//! of thresholds and open duration, and the bounded buffer of its recent
//! events.

use std::fmt;
use std::time::{Duration, SystemTime};

use super::Transition;
use super::core::{MAX_MINIMUM_CALLS, OpenSettings, TripRule};
use crate::clock::saturating_nanos;

/// The configuration a breaker runs with now ([`Breaker::config`]).
///
/// [`Breaker::config`]: super::Breaker::config
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct BreakerConfig {
    /// What trips the breaker.
    pub trip: TripPolicy,
    /// How long the circuit stays open before a probe (the base).
    pub open_duration: Duration,
    /// The growth of the open duration per re-open (1.0: none).
    pub open_multiplier: f64,
    /// The longest open duration growth reaches.
    pub max_open_duration: Duration,
    /// How long the breaker must stay closed for the growth to start over.
    pub healthy_period: Duration,
    /// Probes admitted per half-open period, and successes needed to close.
    pub half_open_permits: u16,
    /// The longest half-open period before the breaker re-opens, if any.
    pub half_open_max_wait: Option<Duration>,
    /// A staged half-open: the initial share of calls admitted and the
    /// time over which it rises to all of them.
    pub half_open_ramp: Option<(f64, Duration)>,
    /// The longest open duration an upstream's `Retry-After` may set
    /// (`None`: `Retry-After` is not read).
    pub retry_after_cap: Option<Duration>,
    /// Records and reports, never rejects.
    pub metrics_only: bool,
}

/// What trips a breaker.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub enum TripPolicy {
    /// This many failures in a row.
    ConsecutiveFailures(u32),
    /// A failure (or slow-call) rate over a window.
    FailureRate {
        /// The window the rates are measured over.
        window: WindowConfig,
        /// The failure rate that trips, in `(0, 1]`.
        failure_rate: f64,
        /// Calls the window must hold before its rates count.
        minimum_calls: u64,
        /// The slow-call threshold and the slow-call rate that trips.
        slow_calls: Option<(Duration, f64)>,
    },
}

/// A breaker's window.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum WindowConfig {
    /// The last `n` calls.
    Count(u32),
    /// The calls of the last `length`, in `buckets` buckets.
    Time {
        /// The window's length.
        length: Duration,
        /// Its buckets.
        buckets: u32,
    },
}

impl BreakerConfig {
    /// One `name old -> new` line per setting that differs in `other`.
    pub(crate) fn changes_to(&self, other: &Self) -> Vec<String> {
        let mut out = Vec::new();
        let mut diff = |name: &str, a: String, b: String| {
            if a != b {
                out.push(format!("{name} {a} -> {b}"));
            }
        };
        match (&self.trip, &other.trip) {
            (TripPolicy::ConsecutiveFailures(a), TripPolicy::ConsecutiveFailures(b)) => {
                diff("consecutive_failures", a.to_string(), b.to_string());
            }
            (
                TripPolicy::FailureRate {
                    failure_rate: fa,
                    minimum_calls: ma,
                    slow_calls: sa,
                    ..
                },
                TripPolicy::FailureRate {
                    failure_rate: fb,
                    minimum_calls: mb,
                    slow_calls: sb,
                    ..
                },
            ) => {
                diff("failure_rate", fa.to_string(), fb.to_string());
                diff("minimum_calls", ma.to_string(), mb.to_string());
                if let (Some((ta, ra)), Some((tb, rb))) = (sa, sb) {
                    diff("slow_call_threshold", format!("{ta:?}"), format!("{tb:?}"));
                    diff("slow_call_rate", ra.to_string(), rb.to_string());
                }
            }
            _ => {}
        }
        diff(
            "open_duration",
            format!("{:?}", self.open_duration),
            format!("{:?}", other.open_duration),
        );
        diff(
            "open_multiplier",
            self.open_multiplier.to_string(),
            other.open_multiplier.to_string(),
        );
        diff(
            "max_open_duration",
            format!("{:?}", self.max_open_duration),
            format!("{:?}", other.max_open_duration),
        );
        diff(
            "healthy_period",
            format!("{:?}", self.healthy_period),
            format!("{:?}", other.healthy_period),
        );
        diff(
            "half_open_permits",
            self.half_open_permits.to_string(),
            other.half_open_permits.to_string(),
        );
        diff(
            "metrics_only",
            self.metrics_only.to_string(),
            other.metrics_only.to_string(),
        );
        out
    }
}

/// A change of a running breaker's settings, for [`Breaker::tune`]: only
/// the settings given change, and the change is checked whole before any of
/// it applies.
///
/// The thresholds apply to the next recorded outcome; the open duration,
/// its growth and the healthy period from the next opening (an open wait in
/// progress keeps its end); the probes from the next half-open period. The
/// window (its kind and size) and the kind of trip rule are fixed when the
/// breaker is built.
///
/// ```
/// use std::time::Duration;
/// use tower_recovery::circuit_breaker::{Breaker, TripPolicy, Tuning};
///
/// let breaker = Breaker::builder("model-server").consecutive_failures(5).build();
/// breaker
///     .tune(Tuning::new().consecutive_failures(3).open_duration(Duration::from_secs(10)))
///     .unwrap();
/// let config = breaker.config();
/// assert_eq!(config.trip, TripPolicy::ConsecutiveFailures(3));
/// assert_eq!(config.open_duration, Duration::from_secs(10));
///
/// // A rate needs a window this breaker does not have: nothing changes.
/// let err = breaker.tune(Tuning::new().failure_rate(0.2).half_open_permits(4)).unwrap_err();
/// assert_eq!(err.setting(), "failure_rate");
/// assert_eq!(breaker.config().half_open_permits, 1);
/// ```
///
/// [`Breaker::tune`]: super::Breaker::tune
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Tuning {
    consecutive_failures: Option<u32>,
    failure_rate: Option<f64>,
    minimum_calls: Option<u64>,
    slow_call_rate: Option<f64>,
    slow_call_threshold: Option<Duration>,
    open_duration: Option<Duration>,
    open_multiplier: Option<f64>,
    max_open_duration: Option<Duration>,
    healthy_period: Option<Duration>,
    half_open_permits: Option<u16>,
    metrics_only: Option<bool>,
}

impl Tuning {
    /// No change yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Trip after `n` failures in a row (a consecutive-failure breaker).
    pub fn consecutive_failures(mut self, n: u32) -> Self {
        self.consecutive_failures = Some(n);
        self
    }

    /// The failure rate in `(0, 1]` that trips (a breaker with a window).
    pub fn failure_rate(mut self, rate: f64) -> Self {
        self.failure_rate = Some(rate);
        self
    }

    /// Calls a window must hold before its rates count (a breaker with a
    /// window).
    pub fn minimum_calls(mut self, n: u64) -> Self {
        self.minimum_calls = Some(n);
        self
    }

    /// The slow-call rate in `(0, 1]` that trips (a breaker built with slow
    /// calls).
    pub fn slow_call_rate(mut self, rate: f64) -> Self {
        self.slow_call_rate = Some(rate);
        self
    }

    /// Calls taking at least this long are slow (a breaker built with slow
    /// calls).
    pub fn slow_call_threshold(mut self, threshold: Duration) -> Self {
        self.slow_call_threshold = Some(threshold);
        self
    }

    /// The base open duration.
    pub fn open_duration(mut self, open: Duration) -> Self {
        self.open_duration = Some(open);
        self
    }

    /// The growth per re-open (at least 1.0).
    pub fn open_multiplier(mut self, multiplier: f64) -> Self {
        self.open_multiplier = Some(multiplier);
        self
    }

    /// The longest open duration growth reaches (at least the base).
    pub fn max_open_duration(mut self, max: Duration) -> Self {
        self.max_open_duration = Some(max);
        self
    }

    /// How long the breaker must stay closed for the growth to start over.
    pub fn healthy_period(mut self, period: Duration) -> Self {
        self.healthy_period = Some(period);
        self
    }

    /// Probes per half-open period (at least 1).
    pub fn half_open_permits(mut self, permits: u16) -> Self {
        self.half_open_permits = Some(permits);
        self
    }

    /// Metrics-only mode on (record and report, never reject) or off.
    pub fn metrics_only(mut self, on: bool) -> Self {
        self.metrics_only = Some(on);
        self
    }

    /// Whether the change changes nothing.
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }

    /// Checks the change against the breaker's current configuration.
    pub(crate) fn check(&self, current: &BreakerConfig) -> Result<Checked, TuneError> {
        let rate = |setting: &'static str, value: Option<f64>| match value {
            Some(r) if !(r > 0.0 && r <= 1.0) => Err(TuneError::new(
                setting,
                r.to_string(),
                "a rate in (0, 1], such as 0.5",
            )),
            _ => Ok(value),
        };
        let failure_rate = rate("failure_rate", self.failure_rate)?;
        let slow_call_rate = rate("slow_call_rate", self.slow_call_rate)?;
        let rule = match &current.trip {
            TripPolicy::ConsecutiveFailures(n) => {
                let needs_window = [
                    ("failure_rate", self.failure_rate.is_some()),
                    ("minimum_calls", self.minimum_calls.is_some()),
                    ("slow_call_rate", self.slow_call_rate.is_some()),
                    ("slow_call_threshold", self.slow_call_threshold.is_some()),
                ];
                if let Some((setting, _)) = needs_window.iter().find(|(_, set)| *set) {
                    return Err(TuneError::new(
                        setting,
                        "given".into(),
                        "a breaker with a window (this one trips on consecutive failures)",
                    ));
                }
                match self.consecutive_failures {
                    Some(0) => {
                        return Err(TuneError::new(
                            "consecutive_failures",
                            "0".into(),
                            "at least 1",
                        ));
                    }
                    Some(limit) if limit != *n => Some(TripRule::Consecutive(limit)),
                    _ => None,
                }
            }
            TripPolicy::FailureRate {
                window,
                failure_rate: current_rate,
                minimum_calls,
                slow_calls,
            } => {
                if let Some(n) = self.consecutive_failures {
                    return Err(TuneError::new(
                        "consecutive_failures",
                        n.to_string(),
                        "a breaker without a window (this one trips on a failure rate)",
                    ));
                }
                if slow_calls.is_none()
                    && (self.slow_call_rate.is_some() || self.slow_call_threshold.is_some())
                {
                    let setting = if self.slow_call_rate.is_some() {
                        "slow_call_rate"
                    } else {
                        "slow_call_threshold"
                    };
                    return Err(TuneError::new(
                        setting,
                        "given".into(),
                        "a breaker built with slow calls (`Builder::slow_calls`)",
                    ));
                }
                let minimum = match self.minimum_calls {
                    Some(0) => {
                        return Err(TuneError::new("minimum_calls", "0".into(), "at least 1"));
                    }
                    Some(n) => {
                        // A count window evaluates once full, whatever the
                        // minimum, as at build.
                        let cap = match window {
                            WindowConfig::Count(size) => u64::from(*size),
                            WindowConfig::Time { .. } => MAX_MINIMUM_CALLS,
                        };
                        if n > MAX_MINIMUM_CALLS {
                            return Err(TuneError::new(
                                "minimum_calls",
                                n.to_string(),
                                "at most 8388607",
                            ));
                        }
                        n.min(cap)
                    }
                    None => *minimum_calls,
                };
                let ppm = |r: f64| ((r * 1_000_000.0).round() as u64).max(1);
                let rule = TripRule::Rate {
                    minimum_calls: minimum,
                    failure_ppm: ppm(failure_rate.unwrap_or(*current_rate)),
                    slow_ppm: slow_calls.map(|(_, r)| ppm(slow_call_rate.unwrap_or(r))),
                };
                (self.failure_rate.is_some()
                    || self.minimum_calls.is_some()
                    || self.slow_call_rate.is_some())
                .then_some(rule)
            }
        };
        let slow_limit = self.slow_call_threshold.map(saturating_nanos);
        if self.half_open_permits == Some(0) {
            return Err(TuneError::new(
                "half_open_permits",
                "0".into(),
                "at least 1",
            ));
        }
        let multiplier = self.open_multiplier.unwrap_or(current.open_multiplier);
        if !(multiplier.is_finite() && multiplier >= 1.0) {
            return Err(TuneError::new(
                "open_multiplier",
                multiplier.to_string(),
                "a finite number of at least 1.0",
            ));
        }
        let base = self.open_duration.unwrap_or(current.open_duration);
        let max = match self.max_open_duration {
            Some(max) if max < base => {
                return Err(TuneError::new(
                    "max_open_duration",
                    format!("{max:?}"),
                    "at least the open duration",
                ));
            }
            Some(max) => max,
            // Without growth the longest is the base; with growth it is at
            // least the base.
            None if multiplier <= 1.0 => base,
            None => current.max_open_duration.max(base),
        };
        let open_changed = self.open_duration.is_some()
            || self.open_multiplier.is_some()
            || self.max_open_duration.is_some()
            || self.healthy_period.is_some();
        let open = open_changed.then(|| OpenSettings {
            base: saturating_nanos(base),
            multiplier,
            max: saturating_nanos(max),
            healthy_period: saturating_nanos(self.healthy_period.unwrap_or(current.healthy_period)),
        });
        Ok(Checked {
            rule,
            slow_limit,
            permits: self.half_open_permits,
            open,
            metrics_only: self.metrics_only,
        })
    }
}

/// A change checked against the breaker it applies to.
#[derive(Debug)]
pub(crate) struct Checked {
    pub(crate) rule: Option<TripRule>,
    pub(crate) slow_limit: Option<u64>,
    pub(crate) permits: Option<u16>,
    pub(crate) open: Option<OpenSettings>,
    pub(crate) metrics_only: Option<bool>,
}

/// A change [`Breaker::tune`] refused: the setting, the value given and what
/// was expected. Nothing of the change was applied.
///
/// [`Breaker::tune`]: super::Breaker::tune
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TuneError {
    setting: &'static str,
    value: String,
    expected: &'static str,
}

impl TuneError {
    fn new(setting: &'static str, value: String, expected: &'static str) -> Self {
        Self {
            setting,
            value,
            expected,
        }
    }

    /// The setting refused, as named in [`Tuning`]'s methods.
    pub fn setting(&self) -> &'static str {
        self.setting
    }

    /// The value given.
    pub fn value(&self) -> &str {
        &self.value
    }

    /// What was expected.
    pub fn expected(&self) -> &'static str {
        self.expected
    }
}

impl fmt::Display for TuneError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} = {}: expected {}",
            self.setting, self.value, self.expected
        )
    }
}

impl std::error::Error for TuneError {}

/// One of a breaker's recent events ([`Breaker::recent_events`]).
///
/// [`Breaker::recent_events`]: super::Breaker::recent_events
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct RecentEvent {
    /// When it happened (wall-clock time, for people).
    pub at: SystemTime,
    /// What happened.
    pub kind: RecentKind,
}

/// What a [`RecentEvent`] was.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub enum RecentKind {
    /// A transition.
    Transition(Transition),
    /// The configuration was changed ([`Breaker::tune`]); the changes as
    /// `setting old -> new`, comma-separated.
    ///
    /// [`Breaker::tune`]: super::Breaker::tune
    Tuned(String),
}
