//! Chaos for rehearsals: inject errors, latency and chosen responses into a
//! service, switched on and off at runtime.
//!
//! # Why
//!
//! A breaker that has never opened, a recovery that has never run and an
//! alert that has never fired are hopes, not safeguards. Rehearsing an
//! outage in staging, on the real stack with its real settings, shows
//! whether the breaker opens, the recovery backs off and brings the
//! dependency back, the alert reaches someone, and the users see a clean
//! `503` rather than a hang. Polly calls these chaos strategies, and
//! tower-resilience has a chaos layer; this is the same, shaped like the
//! rest of this crate.
//!
//! # Shape
//!
//! A [`Chaos`] is a handle: cheap to clone, all clones share one state. It
//! is off until [`Chaos::start`] switches it on with [`Faults`]: the share
//! of calls that fail, an added latency (for a share of calls), the HTTP
//! status a failed call answers with, and how long the rehearsal lasts
//! before it ends itself (so a forgotten one does not outlive the day).
//! [`Chaos::stop`] switches it off. Both log a `warn!` line saying what is
//! injected: chaos in production must be loud.
//!
//! [`Chaos::layer`] makes an [`InjectFaultsLayer`] (the chaos layer); every
//! service it makes, however many times it is applied, follows the same
//! handle. Where it sits decides what is rehearsed: between a breaker and
//! its client, the injected failures are failures of the dependency, and
//! the breaker opens on them.
//!
//! ```
//! use std::time::Duration;
//! use tower::{Service, ServiceBuilder, ServiceExt, service_fn};
//! use tower_recovery::chaos::{Chaos, Faults, Injected};
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() {
//! let chaos = Chaos::new("model_server");
//! let mut client = ServiceBuilder::new()
//!     .layer(chaos.layer())
//!     .service(service_fn(|prompt: &'static str| async move {
//!         Ok::<_, std::io::Error>(format!("draft for {prompt}"))
//!     }));
//!
//! // Off: calls go through.
//! assert_eq!(client.ready().await.unwrap().call("theft").await.unwrap(), "draft for theft");
//!
//! // Every call fails, for one minute.
//! chaos.start(Faults::new().error_rate(1.0).duration(Duration::from_secs(60)));
//! let err = client.ready().await.unwrap().call("theft").await.unwrap_err();
//! assert!(err.is::<Injected>());
//!
//! // The minute is over: the rehearsal ended itself.
//! tokio::time::advance(Duration::from_secs(61)).await;
//! assert!(!chaos.is_active());
//! assert!(client.ready().await.unwrap().call("theft").await.is_ok());
//! # }
//! ```
//!
//! # What a failed call returns
//!
//! Chosen by the layer, as a breaker's rejection is (see [`OnFault`]):
//!
//! - [`FaultWithError`] (the default): `Err(BoxError)` holding an
//!   [`Injected`], the service's error type becomes `BoxError`. For clients:
//!   an injected failure looks like a refused connection.
//! - [`FaultWithResponse`] ([`InjectFaultsLayer::fault_with_response`]): an
//!   HTTP response with the status of [`Faults::status`] (default `503`) and
//!   an empty body, with the [`Injected`] in its extensions; the inner error
//!   type is kept, so axum's `Infallible` holds. This is the *response
//!   override*: set a status, and that many calls get it instead of reaching
//!   the inner service.
//!
//! A failed call never reaches the inner service. A delayed call waits the
//! added latency, then its response future is polled: the inner service's
//! `call` runs at once, and its future (which is where hyper, reqwest and
//! `async` blocks do their work) first runs after the delay. A call can be
//! delayed and then fail, like a dependency that hangs before it errors.
//!
//! # Cost
//!
//! Off, a call costs one relaxed atomic load more than the inner service's
//! (`benches/chaos.rs` measures it). On, it costs a few atomic operations
//! (a shared random sequence and counters) and, if the rehearsal has an end,
//! a clock read; a delay or a fault allocates its future's state, and
//! records its metric (feature `metrics`). Settings are atomics, read
//! without a lock; a call that races [`Chaos::start`] may see some settings
//! of the old rehearsal and some of the new one, and one that races
//! [`Chaos::stop`] may still be failed.
//!
//! # Randomness
//!
//! Which calls fail is drawn from a sequence shared by the handle's clones
//! (splitmix64 over an atomic counter, no dependency), seeded at random;
//! [`Chaos::seed`] fixes it, so the same calls in the same order fail the
//! same way (a rehearsal or a test that cannot flake).
//!
//! # At runtime, over HTTP
//!
//! With the `admin` feature, `admin::Admin::chaos_router`
//! serves `GET /chaos` and `GET`/`POST`/`DELETE /chaos/{name}` behind the
//! admin routes' bearer token, so an operator can start and stop a
//! rehearsal on a running service.
//!
//! # Where operators look
//!
//! A rehearsal's failures look like an outage's: a breaker opens, a
//! recovery runs, error rates climb on the dashboards. Whoever is paged
//! during one (or reads the graphs after it) must be able to tell that the
//! failures were injected, where they already look:
//!
//! - Add the handle to the dependency set with
//!   [`health::Builder::chaos`](crate::health::Builder::chaos) (feature
//!   `health`). [`Reliability::report`](crate::health::Reliability::report)
//!   then lists it ([`Snapshot`]: active or not, the faults, when it
//!   started, the time left, the calls seen and the faults injected by
//!   kind), and while it is active the aggregate status is `warn` at
//!   least, never `fail` because of it. With `admin`, `/reliability` shows
//!   each handle under `chaos`, and `/health` says `"chaos_active": true`
//!   and names it (its code stays 200 unless something else fails). Pass
//!   [`Reliability::chaos_handles`](crate::health::Reliability::chaos_handles)
//!   to the chaos routes, so that the handles switched over HTTP are the
//!   ones reported.
//! - With the `metrics` feature, `tower_recovery_chaos_active{chaos}` is 1
//!   while a rehearsal is on and `tower_recovery_chaos_injected_total{chaos,
//!   fault}` counts its faults (`error`, `response`, `latency`; see
//!   [`metrics`](crate::metrics)). They are labelled by the handle's name
//!   only, never by anything of a request's, and counted on injected calls
//!   only: off, or for a call it lets through, chaos records nothing.
//!
//! The set only reads the handles: it never starts, stops or ends a
//! rehearsal, and reading a report changes nothing.
//!
//! A failed call counts as `error` or `response` by what the [`OnFault`]
//! answered (`Err` or `Ok`), when it is answered; a delayed call counts as
//! `latency` when it is drawn (a call delayed then failed counts as both).
//!
#![cfg_attr(feature = "health", doc = "```")]
#![cfg_attr(not(feature = "health"), doc = "```ignore")]
//! use std::time::Duration;
//! use tower::{Service, ServiceBuilder, ServiceExt, service_fn};
//! use tower_recovery::chaos::{Chaos, Faults};
//! use tower_recovery::health::{HealthStatus, Reliability};
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() {
//! let chaos = Chaos::new("model_server");
//! let reliability = Reliability::builder().chaos(&chaos).build().unwrap();
//! let mut client = ServiceBuilder::new()
//!     .layer(chaos.layer())
//!     .service(service_fn(|_: ()| async { Ok::<_, std::io::Error>("draft") }));
//! assert_eq!(reliability.status(), HealthStatus::Pass);
//!
//! chaos.start(Faults::new().error_rate(1.0).duration(Duration::from_secs(300)));
//! for _ in 0..3 {
//!     assert!(client.ready().await.unwrap().call(()).await.is_err());
//! }
//! let report = reliability.report();
//! assert_eq!(report.status, HealthStatus::Warn, "failures are being injected");
//! let rehearsal = &report.chaos[0];
//! assert!(rehearsal.active);
//! assert_eq!(rehearsal.remaining, Some(Duration::from_secs(300)));
//! assert_eq!((rehearsal.calls, rehearsal.errors, rehearsal.responses), (3, 3, 0));
//!
//! chaos.stop();
//! assert_eq!(reliability.status(), HealthStatus::Pass);
//! assert_eq!(reliability.report().chaos[0].errors, 3, "the last rehearsal's counts stay");
//! # }
//! ```

mod error;
mod fault;
pub mod future;
mod layer;
mod service;

#[cfg(feature = "admin")]
pub(crate) mod admin;

use std::fmt;
use std::sync::atomic::{AtomicU16, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, SystemTime};

use http::StatusCode;
use tokio::time::Instant;

pub use self::error::Injected;
pub use self::fault::{
    DefaultFaultResponse, FaultResponse, FaultWithError, FaultWithResponse, OnFault,
};
pub use self::layer::InjectFaultsLayer;
pub use self::service::InjectFaults;

/// The longest latency [`Faults::latency`] accepts: one hour.
pub const MAX_LATENCY: Duration = Duration::from_secs(3600);

/// What a rehearsal injects: given to [`Chaos::start`].
///
/// Build it with the methods of the same names as the fields, which check
/// their values:
///
/// ```
/// use std::time::Duration;
/// use http::StatusCode;
/// use tower_recovery::chaos::Faults;
///
/// let faults = Faults::new()
///     .error_rate(0.25)
///     .status(StatusCode::BAD_GATEWAY)
///     .latency(Duration::from_millis(300))
///     .latency_rate(0.5)
///     .duration(Duration::from_secs(600));
/// assert_eq!(faults.error_rate, 0.25);
/// ```
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Faults {
    /// The share of calls that fail, from 0 to 1 (default 0).
    pub error_rate: f64,
    /// The latency added to a delayed call (default none), at most
    /// [`MAX_LATENCY`].
    pub latency: Duration,
    /// The share of calls delayed by [`latency`](Self::latency), from 0 to
    /// 1 (default 1: all of them).
    pub latency_rate: f64,
    /// The status a failed call answers with on HTTP stacks
    /// ([`FaultWithResponse`]); `None` is `503 Service Unavailable`. Error
    /// stacks see it in [`Injected::status`].
    pub status: Option<StatusCode>,
    /// How long the rehearsal lasts before it ends itself (default: until
    /// [`Chaos::stop`]).
    pub duration: Option<Duration>,
}

impl Default for Faults {
    fn default() -> Self {
        Self::new()
    }
}

impl Faults {
    /// Nothing injected yet: no errors, no latency (latency rate 1), no
    /// status, no end.
    pub const fn new() -> Self {
        Self {
            error_rate: 0.0,
            latency: Duration::ZERO,
            latency_rate: 1.0,
            status: None,
            duration: None,
        }
    }

    /// Fails `rate` of the calls.
    ///
    /// # Panics
    ///
    /// If `rate` is not in `[0, 1]`.
    pub fn error_rate(mut self, rate: f64) -> Self {
        assert!(is_rate(rate), "error_rate must be in [0, 1], got {rate}");
        self.error_rate = rate;
        self
    }

    /// Adds `latency` to the delayed calls (all of them unless
    /// [`latency_rate`](Self::latency_rate) says otherwise).
    ///
    /// # Panics
    ///
    /// If `latency` is over [`MAX_LATENCY`].
    pub fn latency(mut self, latency: Duration) -> Self {
        assert!(
            latency <= MAX_LATENCY,
            "latency must be at most {MAX_LATENCY:?}, got {latency:?}"
        );
        self.latency = latency;
        self
    }

    /// Delays `rate` of the calls by [`latency`](Self::latency).
    ///
    /// # Panics
    ///
    /// If `rate` is not in `[0, 1]`.
    pub fn latency_rate(mut self, rate: f64) -> Self {
        assert!(is_rate(rate), "latency_rate must be in [0, 1], got {rate}");
        self.latency_rate = rate;
        self
    }

    /// Failed calls answer `status` on HTTP stacks: the response override.
    ///
    /// # Panics
    ///
    /// If `status` is informational (`1xx`): not a final answer (a `101`
    /// would switch the connection to a protocol that never comes).
    pub fn status(mut self, status: StatusCode) -> Self {
        assert!(
            !status.is_informational(),
            "status must be a final status (200 to 599), got {status}"
        );
        self.status = Some(status);
        self
    }

    /// The rehearsal ends itself after `duration`.
    ///
    /// # Panics
    ///
    /// If `duration` is zero.
    pub fn duration(mut self, duration: Duration) -> Self {
        assert!(!duration.is_zero(), "duration must be more than zero");
        self.duration = Some(duration);
        self
    }

    /// Whether these faults inject anything: an error rate or a latency
    /// with a rate above zero.
    pub fn injects_anything(&self) -> bool {
        self.error_rate > 0.0 || (!self.latency.is_zero() && self.latency_rate > 0.0)
    }

    /// The first field with a value out of range, and what it must be.
    pub(crate) fn invalid(&self) -> Option<(&'static str, &'static str)> {
        if !is_rate(self.error_rate) {
            return Some(("error_rate", "a number from 0 to 1"));
        }
        if !is_rate(self.latency_rate) {
            return Some(("latency_rate", "a number from 0 to 1"));
        }
        if self.latency > MAX_LATENCY {
            return Some(("latency_ms", "at most 3600000 (one hour)"));
        }
        if self.duration.is_some_and(|d| d.is_zero()) {
            return Some(("duration_seconds", "a number of seconds above 0"));
        }
        if self.status.is_some_and(|s| s.is_informational()) {
            return Some(("status", "an HTTP status code from 200 to 599"));
        }
        None
    }
}

fn is_rate(rate: f64) -> bool {
    (0.0..=1.0).contains(&rate)
}

impl fmt::Display for Faults {
    /// What is injected, in words, for the log.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut said = false;
        if self.error_rate > 0.0 {
            let status = self.status.unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
            write!(
                f,
                "failing {}% of calls (an injected error, or status {} on HTTP stacks)",
                percent(self.error_rate),
                status.as_u16()
            )?;
            said = true;
        }
        if !self.latency.is_zero() && self.latency_rate > 0.0 {
            if said {
                f.write_str(", ")?;
            }
            write!(
                f,
                "adding {} ms to {}% of calls",
                self.latency.as_millis(),
                percent(self.latency_rate)
            )?;
            said = true;
        }
        if !said {
            f.write_str("injecting nothing")?;
        }
        match self.duration {
            Some(d) => write!(f, ", for {} s", d.as_secs_f64()),
            None => f.write_str(", until stopped"),
        }
    }
}

fn percent(rate: f64) -> f64 {
    (rate * 1000.0).round() / 10.0
}

/// A chaos switch for one dependency: what [`InjectFaultsLayer`] services
/// follow. Cheap to clone; all clones share one state.
///
/// Off until [`start`](Self::start). See the [module docs](self).
#[derive(Clone)]
pub struct Chaos {
    shared: Arc<Shared>,
}

/// No end (the `until` word).
const FOREVER: u64 = u64::MAX;
/// The `on` bit of the state word; the rest is the generation, bumped by
/// every start, stop and end.
const ON: u64 = 1;

struct Shared {
    name: Arc<str>,
    /// `generation << 1 | on`. Off, a call reads this word only.
    state: AtomicU64,
    /// Out of 2^32: a call fails when its draw is below.
    error_threshold: AtomicU64,
    /// Out of 2^32: a call is delayed when its draw is below.
    latency_threshold: AtomicU64,
    latency_nanos: AtomicU64,
    /// 0: none.
    status: AtomicU16,
    /// Nanoseconds after `base` when the rehearsal ends, or `FOREVER`.
    until: AtomicU64,
    base: Instant,
    /// The random sequence's counter.
    rng: AtomicU64,
    calls: AtomicU64,
    injected: AtomicU64,
    delayed: AtomicU64,
    /// Failed calls answered with an error, and with a response (the
    /// [`OnFault`]'s `Err` and `Ok`), counted as they are answered.
    errors: AtomicU64,
    responses: AtomicU64,
    /// The handles of `tower_recovery_chaos_*`, registered with the
    /// recorder in use at each event (re-registered when it changes).
    #[cfg(feature = "metrics")]
    metrics: crate::metrics::Bound<Metrics>,
    /// The writers' side: serialises start, stop and end, and keeps what
    /// readers of the settings (not calls) see.
    control: Mutex<Control>,
}

#[derive(Default)]
struct Control {
    /// The faults of the current or last rehearsal.
    faults: Option<Faults>,
    /// When the current or last rehearsal started.
    started: Option<Instant>,
    /// The same, on the wall clock (for reports).
    started_at: Option<SystemTime>,
    /// The task that ends a rehearsal with a duration.
    timer: Option<tokio::task::AbortHandle>,
}

/// What one call gets: drawn by [`Chaos::plan`].
pub(crate) struct Plan {
    pub(crate) delay: Option<Duration>,
    pub(crate) fault: Option<Injected>,
    /// The state word of the rehearsal that drew it: its failed call's
    /// answer is counted only in that rehearsal's snapshot.
    pub(crate) state: u64,
}

impl Plan {
    const NONE: Self = Self {
        delay: None,
        fault: None,
        state: 0,
    };
}

/// The state of a [`Chaos`] handle: what [`Chaos::snapshot`] returns and
/// `GET /chaos` shows.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct Snapshot {
    /// The handle's name.
    pub name: Arc<str>,
    /// Whether faults are being injected now.
    pub active: bool,
    /// The faults of the current rehearsal, or of the last one.
    pub faults: Option<Faults>,
    /// When the current or last rehearsal started, on the wall clock.
    pub started_at: Option<SystemTime>,
    /// How long since the current or last rehearsal started.
    pub since_start: Option<Duration>,
    /// While active with a duration: how long until it ends itself.
    pub remaining: Option<Duration>,
    /// Calls seen while active, since the last start.
    pub calls: u64,
    /// Calls failed on purpose, since the last start.
    pub injected: u64,
    /// Calls delayed on purpose, since the last start.
    pub delayed: u64,
    /// Of the failed calls, those answered with an error (the
    /// [`OnFault`]'s `Err`, as [`FaultWithError`] answers), since the last
    /// start. Counted when the call is answered: one dropped during its
    /// added latency is in [`injected`](Self::injected) only.
    pub errors: u64,
    /// Of the failed calls, those answered with a response (the
    /// [`OnFault`]'s `Ok`: the response override of [`FaultWithResponse`]),
    /// since the last start. Counted as [`errors`](Self::errors) are.
    pub responses: u64,
}

impl Chaos {
    /// A chaos switch named `name` (the dependency it rehearses the loss
    /// of), off.
    pub fn new(name: impl Into<Arc<str>>) -> Self {
        Self {
            shared: Arc::new(Shared {
                name: name.into(),
                state: AtomicU64::new(0),
                error_threshold: AtomicU64::new(0),
                latency_threshold: AtomicU64::new(0),
                latency_nanos: AtomicU64::new(0),
                status: AtomicU16::new(0),
                until: AtomicU64::new(FOREVER),
                base: Instant::now(),
                rng: AtomicU64::new(random_seed()),
                calls: AtomicU64::new(0),
                injected: AtomicU64::new(0),
                delayed: AtomicU64::new(0),
                errors: AtomicU64::new(0),
                responses: AtomicU64::new(0),
                #[cfg(feature = "metrics")]
                metrics: crate::metrics::Bound::new(),
                control: Mutex::new(Control::default()),
            }),
        }
    }

    /// The name given to [`new`](Self::new).
    pub fn name(&self) -> &str {
        &self.shared.name
    }

    /// A layer whose services follow this handle: failed calls return an
    /// [`Injected`] error (see [`InjectFaultsLayer::fault_with_response`]
    /// for HTTP stacks).
    pub fn layer(&self) -> InjectFaultsLayer {
        InjectFaultsLayer::new(self.clone())
    }

    /// Switches chaos on with `faults` (replacing a rehearsal in progress),
    /// logs it with `warn!`, and resets the counts of the
    /// [`snapshot`](Self::snapshot). A rehearsal with a
    /// [`duration`](Faults::duration) ends itself: at the next call after
    /// it, and, inside a Tokio runtime, on a timer that logs it.
    ///
    /// # Panics
    ///
    /// If a field of `faults` is out of range (see [`Faults`]' methods).
    pub fn start(&self, faults: Faults) {
        if let Some((field, expected)) = faults.invalid() {
            panic!("invalid chaos faults: {field} must be {expected}");
        }
        let shared = &self.shared;
        let now = Instant::now();
        let mut control = shared.control.lock().unwrap_or_else(|e| e.into_inner());
        // Aborted once the lock is released: nothing of tokio's runs under it.
        let old_timer = control.timer.take();
        // Off with a new generation while the settings change, then on.
        let generation = (shared.state.load(Ordering::Relaxed) >> 1) + 1;
        shared.state.store(generation << 1, Ordering::Relaxed);
        shared
            .error_threshold
            .store(threshold(faults.error_rate), Ordering::Relaxed);
        shared
            .latency_threshold
            .store(threshold(faults.latency_rate), Ordering::Relaxed);
        shared
            .latency_nanos
            .store(faults.latency.as_nanos() as u64, Ordering::Relaxed);
        shared
            .status
            .store(faults.status.map_or(0, |s| s.as_u16()), Ordering::Relaxed);
        let until = faults.duration.and_then(|d| now.checked_add(d));
        shared.until.store(
            until.map_or(FOREVER, |u| {
                // Saturating: a cast would wrap a far end to one already past.
                let nanos = u.saturating_duration_since(shared.base).as_nanos();
                u64::try_from(nanos).map_or(FOREVER - 1, |n| n.min(FOREVER - 1))
            }),
            Ordering::Relaxed,
        );
        shared.calls.store(0, Ordering::Relaxed);
        shared.injected.store(0, Ordering::Relaxed);
        shared.delayed.store(0, Ordering::Relaxed);
        shared.errors.store(0, Ordering::Relaxed);
        shared.responses.store(0, Ordering::Relaxed);
        let on = generation << 1 | ON;
        shared.state.store(on, Ordering::Release);
        control.faults = Some(faults);
        control.started = Some(now);
        control.started_at = Some(SystemTime::now());
        drop(control);
        // The recorder is someone else's code: called with no lock held.
        shared.sync_active_gauge();
        if let Some(timer) = old_timer {
            timer.abort();
        }
        if let (Some(until), Ok(runtime)) = (until, tokio::runtime::Handle::try_current()) {
            // Spawned with no lock held, then kept only if this rehearsal is
            // still the one on (a `stop` or a newer `start` may have come
            // between; the timer would do nothing then, as it checks the
            // generation, but it is not left sleeping).
            let weak = Arc::downgrade(shared);
            let timer = runtime.spawn(end_at(weak, until, on)).abort_handle();
            let mut control = shared.control.lock().unwrap_or_else(|e| e.into_inner());
            let stale = if shared.state.load(Ordering::Acquire) == on && control.timer.is_none() {
                control.timer = Some(timer);
                None
            } else {
                Some(timer)
            };
            drop(control);
            if let Some(timer) = stale {
                timer.abort();
            }
        }
        tracing::warn!(
            chaos = %shared.name,
            "Chaos ON for '{}': {faults}",
            shared.name
        );
    }

    /// Switches chaos off (and logs it with `warn!`, if it was on).
    pub fn stop(&self) {
        let shared = &self.shared;
        let mut control = shared.control.lock().unwrap_or_else(|e| e.into_inner());
        let timer = control.timer.take();
        let state = shared.state.load(Ordering::Relaxed);
        shared
            .state
            .store(((state >> 1) + 1) << 1, Ordering::Release);
        drop(control);
        if let Some(timer) = timer {
            timer.abort();
        }
        if state & ON != 0 {
            shared.sync_active_gauge();
            shared.log_off("stopped");
        }
    }

    /// Whether faults are being injected now (on, and not past its end).
    pub fn is_active(&self) -> bool {
        let shared = &self.shared;
        shared.state.load(Ordering::Acquire) & ON != 0 && !shared.past_end(Instant::now())
    }

    /// Fixes the random sequence that decides which calls fail and which
    /// are delayed: the same seed and the same calls in the same order give
    /// the same faults.
    pub fn seed(&self, seed: u64) {
        self.shared.rng.store(seed, Ordering::Relaxed);
    }

    /// The state now. Reading changes nothing: a rehearsal past its end
    /// reads as inactive, and is switched off by the next call or its
    /// timer.
    pub fn snapshot(&self) -> Snapshot {
        let shared = &self.shared;
        let now = Instant::now();
        let control = shared.control.lock().unwrap_or_else(|e| e.into_inner());
        let on = shared.state.load(Ordering::Acquire) & ON != 0;
        let active = on && !shared.past_end(now);
        let remaining = match (active, control.faults.and_then(|f| f.duration)) {
            (true, Some(_)) => {
                let until = shared.until.load(Ordering::Relaxed);
                let at = shared.base + Duration::from_nanos(until);
                Some(at.saturating_duration_since(now))
            }
            _ => None,
        };
        Snapshot {
            name: shared.name.clone(),
            active,
            faults: control.faults,
            started_at: control.started_at,
            since_start: control.started.map(|s| now.saturating_duration_since(s)),
            remaining,
            calls: shared.calls.load(Ordering::Relaxed),
            injected: shared.injected.load(Ordering::Relaxed),
            delayed: shared.delayed.load(Ordering::Relaxed),
            errors: shared.errors.load(Ordering::Relaxed),
            responses: shared.responses.load(Ordering::Relaxed),
        }
    }

    /// What the next call gets. Off: one relaxed load.
    #[inline]
    pub(crate) fn plan(&self) -> Plan {
        let state = self.shared.state.load(Ordering::Relaxed);
        if state & ON == 0 {
            return Plan::NONE;
        }
        self.shared.draw(state)
    }

    /// Records a delayed call in `tower_recovery_chaos_injected_total`
    /// (its count in the snapshot is taken by the draw). Called from the
    /// planned path, out of line: in `draw`, it made every call on save
    /// more registers.
    #[cfg(feature = "metrics")]
    pub(crate) fn count_delayed(&self) {
        self.shared.count_injected(Fault::Latency);
    }

    /// Counts a failed call, drawn by the rehearsal switched on as `state`,
    /// as answered: with a response (the [`OnFault`]'s `Ok`) or with an
    /// error. The snapshot counts it only while its rehearsal is the
    /// current one (on, or the last one, switched off since): an answer
    /// of an earlier rehearsal, after a restart, is not the new one's.
    pub(crate) fn answered(&self, response: bool, state: u64) {
        let shared = &self.shared;
        let now = shared.state.load(Ordering::Relaxed);
        // On: the same word. Off since (stopped or ended): the next
        // generation, with the on bit clear.
        if now == state || now == ((state >> 1) + 1) << 1 {
            let count = if response {
                &shared.responses
            } else {
                &shared.errors
            };
            count.fetch_add(1, Ordering::Relaxed);
        }
        #[cfg(feature = "metrics")]
        shared.count_injected(if response {
            Fault::Response
        } else {
            Fault::Error
        });
    }
}

/// The `fault` label of `tower_recovery_chaos_injected_total`.
#[cfg(feature = "metrics")]
#[derive(Clone, Copy)]
enum Fault {
    Error,
    Latency,
    Response,
}

/// Metric handles of one handle's name, for one recorder.
#[cfg(feature = "metrics")]
struct Metrics {
    active: metrics::Gauge,
    error: metrics::Counter,
    latency: metrics::Counter,
    response: metrics::Counter,
}

#[cfg(feature = "metrics")]
impl Metrics {
    /// Labelled by the handle's name only: nothing of a request's.
    fn new(name: &str) -> Self {
        let injected = |fault: &'static str| {
            metrics::counter!(
                crate::metrics::CHAOS_INJECTED,
                "chaos" => name.to_string(),
                "fault" => fault
            )
        };
        Self {
            active: metrics::gauge!(crate::metrics::CHAOS_ACTIVE, "chaos" => name.to_string()),
            error: injected("error"),
            latency: injected("latency"),
            response: injected("response"),
        }
    }
}

impl Shared {
    /// Whether the rehearsal's end has passed at `now`.
    fn past_end(&self, now: Instant) -> bool {
        let until = self.until.load(Ordering::Relaxed);
        until != FOREVER && now.saturating_duration_since(self.base).as_nanos() as u64 >= until
    }

    /// The faults of one call while on (`state`).
    #[inline(never)]
    fn draw(self: &Arc<Self>, state: u64) -> Plan {
        // Pairs with the `Release` store of `start`: the settings written
        // before it are seen.
        std::sync::atomic::fence(Ordering::Acquire);
        if self.until.load(Ordering::Relaxed) != FOREVER && self.past_end(Instant::now()) {
            self.end(state);
            return Plan::NONE;
        }
        let draw = splitmix64(self.rng.fetch_add(GAMMA, Ordering::Relaxed));
        let (low, high) = (draw & 0xffff_ffff, draw >> 32);
        self.calls.fetch_add(1, Ordering::Relaxed);
        let mut plan = Plan {
            state,
            ..Plan::NONE
        };
        let latency = self.latency_nanos.load(Ordering::Relaxed);
        if latency > 0 && high < self.latency_threshold.load(Ordering::Relaxed) {
            self.delayed.fetch_add(1, Ordering::Relaxed);
            plan.delay = Some(Duration::from_nanos(latency));
        }
        if low < self.error_threshold.load(Ordering::Relaxed) {
            self.injected.fetch_add(1, Ordering::Relaxed);
            let status = StatusCode::from_u16(self.status.load(Ordering::Relaxed)).ok();
            plan.fault = Some(Injected::new(self.name.clone(), status));
        }
        plan
    }

    /// Ends the rehearsal that `state` switched on, if it still runs.
    fn end(&self, state: u64) {
        let off = ((state >> 1) + 1) << 1;
        if self
            .state
            .compare_exchange(state, off, Ordering::AcqRel, Ordering::Relaxed)
            .is_ok()
        {
            let duration = self
                .control
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .faults
                .and_then(|f| f.duration);
            let why = match duration {
                Some(d) => format!("its {} s are over", d.as_secs_f64()),
                None => "its time is over".to_string(),
            };
            self.sync_active_gauge();
            self.log_off(&why);
        }
    }

    /// Sets `tower_recovery_chaos_active` to the on bit (1 from a start, 0
    /// from a stop or an end). Called after each change, with no lock held
    /// (the recorder is someone else's code); it reads the bit again after
    /// setting, so that of two changes racing, the gauge ends at the later
    /// one's value.
    fn sync_active_gauge(&self) {
        #[cfg(feature = "metrics")]
        self.with_metrics(|m| self.set_active(m));
    }

    /// Sets `m`'s active gauge to the on bit, reading it again after
    /// setting (see [`sync_active_gauge`](Self::sync_active_gauge)).
    #[cfg(feature = "metrics")]
    fn set_active(&self, m: &Metrics) {
        let mut on = self.state.load(Ordering::Acquire) & ON != 0;
        loop {
            m.active.set(if on { 1.0 } else { 0.0 });
            let now = self.state.load(Ordering::Acquire) & ON != 0;
            if now == on {
                break;
            }
            on = now;
        }
    }

    /// `tower_recovery_chaos_injected_total` of `fault`: injected calls
    /// only, never one that chaos lets through.
    #[cfg(feature = "metrics")]
    fn count_injected(&self, fault: Fault) {
        self.with_metrics(|m| {
            match fault {
                Fault::Error => &m.error,
                Fault::Latency => &m.latency,
                Fault::Response => &m.response,
            }
            .increment(1)
        });
    }

    /// Runs `f` with the handles of the recorder in use. Handles first
    /// bound to a recorder (installed, or in use, during a rehearsal) have
    /// their `tower_recovery_chaos_active` set from the on bit: the gauge
    /// is otherwise set only by a start, a stop or an end.
    #[cfg(feature = "metrics")]
    fn with_metrics(&self, f: impl FnOnce(&Metrics)) {
        self.metrics.with(
            || {
                let metrics = Metrics::new(&self.name);
                self.set_active(&metrics);
                metrics
            },
            f,
        );
    }

    fn log_off(&self, why: &str) {
        tracing::warn!(
            chaos = %self.name,
            calls = self.calls.load(Ordering::Relaxed),
            injected = self.injected.load(Ordering::Relaxed),
            delayed = self.delayed.load(Ordering::Relaxed),
            "Chaos OFF for '{}': {why}",
            self.name
        );
    }
}

impl Drop for Shared {
    /// The last handle is gone: its timer need not sleep out the
    /// rehearsal, and nothing injects any more, so a rehearsal that was on
    /// is off (`tower_recovery_chaos_active` reads 0, set with no lock
    /// held).
    fn drop(&mut self) {
        let control = self.control.get_mut().unwrap_or_else(|e| e.into_inner());
        if let Some(timer) = control.timer.take() {
            timer.abort();
        }
        let state = self.state.get_mut();
        if *state & ON != 0 {
            *state = ((*state >> 1) + 1) << 1;
            self.sync_active_gauge();
        }
    }
}

/// Ends the rehearsal switched on as `state` at `until`, unless the handle
/// is gone or it was replaced.
async fn end_at(shared: Weak<Shared>, until: Instant, state: u64) {
    tokio::time::sleep_until(until).await;
    if let Some(shared) = shared.upgrade() {
        shared.end(state);
    }
}

/// `rate` of 2^32, so that a 32-bit draw below it has probability `rate`
/// (1 is above every draw).
fn threshold(rate: f64) -> u64 {
    (rate * (1u64 << 32) as f64) as u64
}

const GAMMA: u64 = 0x9e37_79b9_7f4a_7c15;

/// splitmix64's output function (as the recovery's jitter uses).
fn splitmix64(counter: u64) -> u64 {
    let mut z = counter.wrapping_add(GAMMA);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// A seed from the standard library's random hasher keys.
fn random_seed() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(0x5eed);
    h.finish()
}

impl fmt::Debug for Chaos {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Chaos")
            .field("name", &self.shared.name)
            .field("active", &self.is_active())
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thresholds_cover_the_ends() {
        assert_eq!(threshold(0.0), 0);
        assert!(threshold(1.0) > u64::from(u32::MAX));
        assert_eq!(threshold(0.5), 1 << 31);
    }

    #[test]
    fn faults_say_what_they_inject() {
        let faults = Faults::new()
            .error_rate(0.5)
            .latency(Duration::from_millis(200))
            .duration(Duration::from_secs(60));
        assert_eq!(
            faults.to_string(),
            "failing 50% of calls (an injected error, or status 503 on HTTP stacks), \
             adding 200 ms to 100% of calls, for 60 s"
        );
        assert_eq!(
            Faults::new().to_string(),
            "injecting nothing, until stopped"
        );
        assert!(!Faults::new().injects_anything());
        assert!(
            !Faults::new()
                .latency_rate(0.0)
                .latency(Duration::from_secs(1))
                .injects_anything()
        );
    }

    #[test]
    fn invalid_fields_are_named() {
        let mut f = Faults::new();
        f.error_rate = 1.5;
        assert_eq!(f.invalid().unwrap().0, "error_rate");
        f.error_rate = f64::NAN;
        assert_eq!(f.invalid().unwrap().0, "error_rate");
        let mut f = Faults::new();
        f.latency_rate = -0.1;
        assert_eq!(f.invalid().unwrap().0, "latency_rate");
        let mut f = Faults::new();
        f.duration = Some(Duration::ZERO);
        assert_eq!(f.invalid().unwrap().0, "duration_seconds");
    }

    #[test]
    #[should_panic(expected = "error_rate must be in [0, 1]")]
    fn a_rate_above_one_panics() {
        let _ = Faults::new().error_rate(1.01);
    }

    #[test]
    #[should_panic(expected = "status must be a final status")]
    fn an_interim_status_panics() {
        let _ = Faults::new().status(StatusCode::SWITCHING_PROTOCOLS);
    }

    #[test]
    fn off_plans_nothing_and_counts_nothing() {
        let chaos = Chaos::new("x");
        for _ in 0..10 {
            let plan = chaos.plan();
            assert!(plan.delay.is_none() && plan.fault.is_none());
        }
        assert_eq!(chaos.snapshot().calls, 0);
        assert!(!chaos.is_active());
    }

    #[tokio::test(start_paused = true)]
    async fn a_replaced_rehearsal_is_not_ended_by_the_old_timer() {
        let chaos = Chaos::new("x");
        chaos.start(
            Faults::new()
                .error_rate(1.0)
                .duration(Duration::from_secs(10)),
        );
        chaos.start(
            Faults::new()
                .error_rate(1.0)
                .duration(Duration::from_secs(30)),
        );
        tokio::time::sleep(Duration::from_secs(11)).await;
        assert!(chaos.is_active());
        assert!(chaos.plan().fault.is_some());
        tokio::time::sleep(Duration::from_secs(20)).await;
        assert!(!chaos.is_active());
        assert!(chaos.plan().fault.is_none());
        assert_eq!(
            chaos.shared.state.load(Ordering::Relaxed) & ON,
            0,
            "the timer switched it off"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_long_duration_does_not_wrap_to_an_end_already_past() {
        let chaos = Chaos::new("x");
        // 2^64 ns and a bit: as nanoseconds in a u64, it wraps to ~0.
        chaos.start(
            Faults::new()
                .error_rate(1.0)
                .duration(Duration::new(18_446_744_073, 709_551_616)),
        );
        assert!(chaos.is_active(), "ended as soon as started");
        assert!(chaos.plan().fault.is_some());
    }

    #[tokio::test(start_paused = true)]
    async fn without_its_timer_the_next_call_ends_it() {
        let chaos = Chaos::new("x");
        chaos.start(
            Faults::new()
                .error_rate(1.0)
                .duration(Duration::from_secs(1)),
        );
        // As if started outside a runtime: no timer.
        let timer = chaos.shared.control.lock().unwrap().timer.take();
        timer.unwrap().abort();
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!(chaos.shared.state.load(Ordering::Relaxed) & ON, ON);
        assert!(!chaos.is_active(), "reads as ended, changes nothing");
        let snapshot = chaos.snapshot();
        assert!(!snapshot.active && snapshot.remaining.is_none());
        assert_eq!(chaos.shared.state.load(Ordering::Relaxed) & ON, ON);
        assert!(chaos.plan().fault.is_none());
        assert_eq!(chaos.shared.state.load(Ordering::Relaxed) & ON, 0);
    }
}
