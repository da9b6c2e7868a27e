//! Configuring a breaker: trip rule, window, open duration, probes.

use std::sync::Arc;
use std::time::Duration;

use super::Breaker;
use super::core::{Config, Core, Ramp, TripRule, WindowKind};
use crate::clock::{Clock, saturating_nanos};

/// Configures a [`Breaker`].
///
/// Setters panic on values that make no sense (a zero threshold, a rate
/// outside `(0, 1]`); values from outside the program should be validated
/// first (the `config` module does this for environment variables).
#[derive(Clone, Debug)]
pub struct Builder {
    name: Arc<str>,
    consecutive: u32,
    window: WindowKind,
    failure_rate: f64,
    minimum_calls: u64,
    slow: Option<(Duration, f64)>,
    open: Duration,
    multiplier: f64,
    open_max: Duration,
    healthy_period: Duration,
    permits: u16,
    half_open_max_wait: Option<Duration>,
    retry_after_cap: Option<Duration>,
    metrics_only: bool,
    recent_events: usize,
    ramp: Option<(f64, Duration)>,
    clock: Option<Clock>,
    /// The keyed registry this breaker belongs to (its metrics, and its
    /// calls counted in flight).
    keyed: Option<Arc<str>>,
}

impl Builder {
    pub(super) fn new(name: Arc<str>) -> Self {
        Self {
            name,
            consecutive: 5,
            window: WindowKind::None,
            failure_rate: 0.5,
            minimum_calls: 10,
            slow: None,
            open: Duration::from_secs(30),
            multiplier: 1.0,
            open_max: Duration::from_secs(30),
            healthy_period: Duration::from_secs(60),
            permits: 1,
            half_open_max_wait: None,
            retry_after_cap: Some(Duration::from_secs(300)),
            metrics_only: false,
            recent_events: 32,
            ramp: None,
            clock: None,
            keyed: None,
        }
    }

    /// Trip after `n` consecutive failures (the default, with `n = 5`).
    /// Replaces a window set before.
    ///
    /// # Panics
    /// If `n` is zero.
    pub fn consecutive_failures(mut self, n: u32) -> Self {
        assert!(n > 0, "consecutive_failures must be at least 1");
        self.consecutive = n;
        self.window = WindowKind::None;
        self
    }

    /// Trip on the failure rate of the last `size` calls.
    ///
    /// # Panics
    /// If `size` is zero or above 2^24.
    pub fn count_window(mut self, size: u32) -> Self {
        assert!(
            (1..=1 << 24).contains(&size),
            "count_window size must be in 1..=16777216"
        );
        self.window = WindowKind::Count(size);
        self
    }

    /// Trip on the failure rate of the calls of the last `length` of time,
    /// kept in `buckets` buckets of `length / buckets` each.
    ///
    /// # Panics
    /// If `buckets` is zero or above 1024, or a bucket would be shorter than
    /// a microsecond.
    pub fn time_window(mut self, length: Duration, buckets: u32) -> Self {
        assert!(
            (1..=1024).contains(&buckets),
            "time_window buckets must be in 1..=1024"
        );
        let width = saturating_nanos(length) / u64::from(buckets);
        assert!(
            width >= 1_000,
            "time_window buckets must be at least 1 µs wide"
        );
        self.window = WindowKind::Time { width, buckets };
        self
    }

    /// Failure rate in `(0, 1]` at which a window trips (default 0.5).
    ///
    /// # Panics
    /// If `rate` is outside `(0, 1]`.
    pub fn failure_rate(mut self, rate: f64) -> Self {
        assert!(rate > 0.0 && rate <= 1.0, "failure_rate must be in (0, 1]");
        self.failure_rate = rate;
        self
    }

    /// Calls a window must hold before its rates are evaluated (default 10).
    /// A count window smaller than this evaluates once it is full instead
    /// (the minimum is capped at the window's size, as in Resilience4j), so
    /// a breaker can always open.
    ///
    /// # Panics
    /// If `n` is zero.
    pub fn minimum_calls(mut self, n: u64) -> Self {
        assert!(n > 0, "minimum_calls must be at least 1");
        self.minimum_calls = n;
        self
    }

    /// Calls taking at least `threshold` are slow; a window trips when the
    /// slow-call rate reaches `rate`. Needs a window.
    ///
    /// # Panics
    /// If `rate` is outside `(0, 1]`.
    pub fn slow_calls(mut self, threshold: Duration, rate: f64) -> Self {
        assert!(
            rate > 0.0 && rate <= 1.0,
            "slow-call rate must be in (0, 1]"
        );
        self.slow = Some((threshold, rate));
        self
    }

    /// How long the circuit stays open before a probe (default 30 s).
    pub fn open_duration(mut self, open: Duration) -> Self {
        self.open = open;
        if self.multiplier <= 1.0 || self.open_max < open {
            self.open_max = open;
        }
        self
    }

    /// Each re-open without an intervening healthy period multiplies the open
    /// duration by `multiplier`, up to `max`.
    ///
    /// # Panics
    /// If `multiplier` is below 1.0 or not finite.
    pub fn open_growth(mut self, multiplier: f64, max: Duration) -> Self {
        assert!(
            multiplier.is_finite() && multiplier >= 1.0,
            "open_growth multiplier must be >= 1.0"
        );
        self.multiplier = multiplier;
        self.open_max = max.max(self.open);
        self
    }

    /// How long the breaker must stay closed for the open duration to go back
    /// to its base (default 60 s).
    pub fn healthy_period(mut self, period: Duration) -> Self {
        self.healthy_period = period;
        self
    }

    /// Probes admitted in half-open, and successes needed to close (default 1).
    ///
    /// # Panics
    /// If `permits` is zero.
    pub fn half_open_permits(mut self, permits: u16) -> Self {
        assert!(permits > 0, "half_open_permits must be at least 1");
        self.permits = permits;
        self
    }

    /// A staged half-open: after the open wait, admit a share of calls
    /// rising linearly from `initial_share` (in `(0, 1]`) to all of them
    /// over `duration`, instead of a fixed number of probes. A failure
    /// re-opens the breaker; it closes once the ramp is over and at least
    /// [`half_open_permits`](Self::half_open_permits) admitted calls
    /// succeeded (so a ramp without traffic does not close it on no
    /// evidence). Calls are picked evenly (every tenth at 10%), and a call
    /// not picked is rejected with a retry hint of at most a second.
    ///
    /// A recovering dependency is not hit by every caller at once (a
    /// thundering herd that can knock it over again), yet serves more than
    /// a handful of probes while it warms up. Envoy's slow start and
    /// seatbelt's ramping half-open do the same.
    ///
    /// # Panics
    /// If `initial_share` is outside `(0, 1]`, or with
    /// [`half_open_max_wait`](Self::half_open_max_wait) (a ramp admits
    /// more as it goes, so it cannot hang on a few probes).
    pub fn half_open_ramp(mut self, initial_share: f64, duration: Duration) -> Self {
        assert!(
            initial_share > 0.0 && initial_share <= 1.0,
            "half_open_ramp's initial share must be in (0, 1]"
        );
        self.ramp = Some((initial_share, duration));
        self
    }

    /// Re-open if half-open lasts longer than `wait` (probes hung).
    pub fn half_open_max_wait(mut self, wait: Duration) -> Self {
        self.half_open_max_wait = Some(wait);
        self
    }

    /// The longest open duration an upstream may ask for with
    /// `Retry-After` (default 5 min).
    ///
    /// When the failure that opens the breaker (or one shortly before it)
    /// carried a `Retry-After` (read by the classifier: see
    /// [`Classify::retry_after`]; [`HttpErrorsAsFailures`] reads it on `429`
    /// and `503`), the breaker stays open until then, capped at `cap`,
    /// instead of for the configured open duration: the upstream knows when
    /// it expects to serve again, sooner or later. A success after the
    /// failure that carried it ends that wait (the upstream serves again):
    /// a later opening lasts the configured duration.
    ///
    /// [`Classify::retry_after`]: crate::classify::Classify::retry_after
    /// [`HttpErrorsAsFailures`]: crate::classify::HttpErrorsAsFailures
    pub fn retry_after_cap(mut self, cap: Duration) -> Self {
        self.retry_after_cap = Some(cap);
        self
    }

    /// Ignore `Retry-After`: every opening lasts the configured duration.
    pub fn ignore_retry_after(mut self) -> Self {
        self.retry_after_cap = None;
        self
    }

    /// Metrics-only mode: the breaker records, trips, probes and reports as
    /// usual, but admits every call it would reject (counted in
    /// [`Snapshot::shadow_rejected`] and the metric
    /// `tower_recovery_breaker_shadow_rejections_total`). For tuning
    /// thresholds against production traffic before enforcing them; switch
    /// enforcement on at runtime with [`Tuning::metrics_only`]. A breaker
    /// forced open still rejects (a person asked for it), and a recovery
    /// watching the breaker still acts on its transitions.
    ///
    /// [`Snapshot::shadow_rejected`]: super::Snapshot::shadow_rejected
    /// [`Tuning::metrics_only`]: super::Tuning::metrics_only
    pub fn metrics_only(mut self) -> Self {
        self.metrics_only = true;
        self
    }

    /// Events kept for [`Breaker::recent_events`] (default 32; 0 keeps
    /// none).
    pub fn recent_events(mut self, n: usize) -> Self {
        self.recent_events = n;
        self
    }

    /// The clock (default [`Clock::tokio`]).
    pub fn clock(mut self, clock: impl Into<Clock>) -> Self {
        self.clock = Some(clock.into());
        self
    }

    /// The name given to [`Breaker::builder`].
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The clock set, or the default one (made now).
    pub(crate) fn clock_or_default(&self) -> Clock {
        self.clock.clone().unwrap_or_default()
    }

    /// The same configuration under another name.
    pub(crate) fn renamed(mut self, name: Arc<str>) -> Self {
        self.name = name;
        self
    }

    /// Marks the breaker as one of the keyed registry `registry`.
    pub(crate) fn keyed(mut self, registry: &Arc<str>) -> Self {
        self.keyed = Some(registry.clone());
        self
    }

    /// Builds the breaker.
    ///
    /// # Panics
    /// If slow calls are configured without a window, or a half-open ramp
    /// with a half-open maximum wait.
    pub fn build(self) -> Breaker {
        assert!(
            self.ramp.is_none() || self.half_open_max_wait.is_none(),
            "half_open_ramp and half_open_max_wait cannot be combined"
        );
        let ppm = |rate: f64| ((rate * 1_000_000.0).round() as u64).max(1);
        let rule = match self.window {
            WindowKind::None => {
                assert!(
                    self.slow.is_none(),
                    "slow_calls needs a count_window or a time_window"
                );
                TripRule::Consecutive(self.consecutive)
            }
            WindowKind::Count(size) => TripRule::Rate {
                minimum_calls: self.minimum_calls.min(u64::from(size)),
                failure_ppm: ppm(self.failure_rate),
                slow_ppm: self.slow.map(|(_, rate)| ppm(rate)),
            },
            WindowKind::Time { .. } => TripRule::Rate {
                minimum_calls: self.minimum_calls,
                failure_ppm: ppm(self.failure_rate),
                slow_ppm: self.slow.map(|(_, rate)| ppm(rate)),
            },
        };
        let cfg = Config {
            rule,
            window: self.window,
            slow_nanos: self.slow.map(|(d, _)| saturating_nanos(d)),
            open_base: saturating_nanos(self.open),
            open_multiplier: self.multiplier,
            open_max: saturating_nanos(self.open_max),
            healthy_period: saturating_nanos(self.healthy_period),
            permits: self.permits,
            half_open_max_wait: self.half_open_max_wait.map(saturating_nanos),
            retry_after_cap: self.retry_after_cap.map(saturating_nanos),
            metrics_only: self.metrics_only,
            recent_events: self.recent_events,
            ramp: self.ramp.map(|(share, duration)| Ramp {
                initial_ppm: ppm(share).min(1_000_000),
                duration: saturating_nanos(duration),
            }),
            in_registry: self.keyed.is_some(),
            #[cfg(feature = "metrics")]
            keyed: self
                .keyed
                .map(|registry| Arc::new(super::keyed::Member::new(registry))),
        };
        Breaker {
            core: Arc::new(Core::new(self.name, cfg, self.clock.unwrap_or_default())),
        }
    }
}
