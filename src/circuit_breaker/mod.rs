//! Circuit breaking: stop calling a dependency that is failing, and probe it
//! until it works again.
//!
//! # Why
//!
//! A dependency that is down makes every caller wait for a timeout, holds
//! connections and threads, and is hammered while it tries to come back. A
//! breaker notices the failures, rejects calls at once for a while (the
//! circuit is *open*), then lets a few probes through (*half-open*) and goes
//! back to normal (*closed*) when they succeed.
//!
//! # Shape
//!
//! A [`Breaker`] is a handle: cheap to clone, all clones share one state.
//! [`Breaker::layer`] makes a [`CircuitBreakerLayer`] from it; applying that
//! layer any number of times (axum does it per route, many stacks per
//! connection) always governs the same breaker. For clients that are not
//! Tower services (sqlx pools, redis connections) [`Breaker::call`] wraps any
//! future.
//!
//! ```
//! use std::time::Duration;
//! use tower::{Service, ServiceBuilder, ServiceExt, service_fn};
//! use tower_recovery::circuit_breaker::{Breaker, Rejected, State};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let breaker = Breaker::builder("model_server")
//!     .consecutive_failures(2)
//!     .open_duration(Duration::from_secs(30))
//!     .build();
//!
//! let mut svc = ServiceBuilder::new()
//!     .layer(breaker.layer())
//!     .service(service_fn(|fail: bool| async move {
//!         if fail { Err("upstream refused") } else { Ok("ok") }
//!     }));
//!
//! assert_eq!(svc.ready().await.unwrap().call(false).await.unwrap(), "ok");
//! for _ in 0..2 {
//!     assert!(svc.ready().await.unwrap().call(true).await.is_err());
//! }
//! assert_eq!(breaker.state(), State::Open);
//!
//! // Open: rejected without calling the inner service.
//! let err = svc.ready().await.unwrap().call(false).await.unwrap_err();
//! assert!(err.is::<Rejected>());
//! # }
//! ```
//!
//! # Trip policies
//!
//! - Consecutive failures (the default, 5).
//! - A failure rate over a sliding window once a minimum number of calls is
//!   recorded: the last N calls ([`Builder::count_window`]) or the last T of
//!   time in fixed, aligned buckets ([`Builder::time_window`]). Both are O(1)
//!   per call whatever the volume.
//! - A slow-call rate over the same window ([`Builder::slow_calls`]).
//!
//! What counts as a failure is decided by a [`Classify`]
//! implementation, separately from the policy.
//!
//! # Semantics
//!
//! | question | answer |
//! |---|---|
//! | rate equal to the threshold | trips (`>=`) |
//! | when is the rate evaluated | after each recorded outcome, once the minimum is reached |
//! | time buckets | aligned to multiples of the bucket width; a bucket expires when its end is a full window old |
//! | outcome of a call admitted in an earlier state | dropped (each admission carries the generation; see below for the one race it loses in a window) |
//! | open wait elapsed exactly | the next call is admitted as a probe |
//! | `state()` after the open wait elapsed, no call yet | `HalfOpen` |
//! | `ForcedOpen` / `Disabled` | only [`Breaker::reset`] leaves them |
//! | `reset` | Closed, window cleared, open-duration growth back to base, new generation |
//!
//! Stale outcomes are dropped exactly by the consecutive count, the probe
//! permits and the transitions, which all carry the generation. A window
//! checks the generation before it records, so an outcome that finishes in
//! the nanoseconds between that check and a concurrent close or reset can
//! land in the new window: at most one outcome per racing thread, never a
//! transition (the trip itself re-checks the generation under the lock).
//!
//! In half-open at most `permits` probes are in flight. A permit is taken at
//! admission and given back only when the call is dropped unfinished or its
//! outcome is [`Ignore`](crate::classify::Outcome::Ignore); `permits`
//! successes close the circuit, any probe failure opens it again.
//!
//! # Tower contract
//!
//! `poll_ready` decides admission and latches it for the next `call`, like
//! tower's `LoadShed`. It never returns an error because the circuit is open:
//! such an error is final in Tower and would kill a `Buffer`. A rejected call
//! gets a zero-sized [`Rejected`] error (in a `BoxError`, allocating nothing) or, with
//! [`CircuitBreakerLayer::reject_with_response`], a `503` with `Retry-After`.
//! [`CircuitBreakerLayer::backpressure`] makes `poll_ready` wait instead.
//!
//! # Ordering with other layers
//!
//! Put retries outside the breaker, so that a rejection is not retried
//! against an open circuit at full speed, and timeouts inside it, so that a
//! hung call counts as a failure.
//!
//! # Observing transitions
//!
//! [`Breaker::subscribe`] gives an ordered stream of [`Transition`]s, each
//! with the counts that caused it, to read on a task of your own. The stream
//! is bounded (64 transitions): a subscriber that falls further behind is
//! told how many it missed ([`RecvError::Lagged`]) and goes on from the
//! oldest one kept. Transitions are also logged with `tracing`
//! (`Circuit breaker 'name': Transitioning to OPEN`).
//!
//! # Events flow one way
//!
//! No code of yours, and no other component, runs inside the breaker: a
//! transition publishes its event and wakes whoever waits (subscribers, a
//! [`Recovery`](crate::recovery::Recovery) watching the breaker, callers in
//! backpressure mode), and they react on their own tasks. A recovery does
//! not read the bounded stream: it watches counts of openings and heals that
//! never lose an event. Reading ([`Breaker::state`], [`Breaker::snapshot`],
//! `Debug`) never changes the breaker: when the open wait has elapsed,
//! `state()` reports `HalfOpen`, and the transition itself is made by the
//! next call that asks for admission.
//!
//! # Cost
//!
//! The closed path takes no lock, allocates nothing and boxes no future. In
//! the default mode a success is two atomic loads. Windows add two or three
//! atomic adds. See the crate README for measured numbers.

pub(crate) mod core;
pub mod error;
pub mod future;
mod layer;
pub mod reject;
mod service;
mod window;

use std::fmt;
use std::future::{Future, IntoFuture};
use std::sync::{Arc, Weak};
use std::time::Duration;

pub use self::error::{CallError, Rejected, Rejection};
pub use self::layer::CircuitBreakerLayer;
pub use self::reject::{
    DefaultRejectResponse, OnReject, RejectResponse, RejectWithError, RejectWithResponse,
};
pub use self::service::CircuitBreaker;

use self::core::{Config, Core, Ticket, TripRule, WindowKind};
use crate::classify::{Classify, ErrorsAsFailures, Outcome};
use crate::clock::{Clock, saturating_nanos};

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
    /// A half-open probe failed.
    ProbeFailed,
    /// Enough half-open probes succeeded.
    ProbesSucceeded,
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
            Cause::ProbeFailed => "probe failed",
            Cause::ProbesSucceeded => "probes succeeded",
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
}

/// A circuit breaker handle. Clones share one state.
///
/// See the [module docs](self) for the semantics.
#[derive(Clone)]
#[repr(transparent)]
pub struct Breaker {
    core: Arc<Core>,
}

impl fmt::Debug for Breaker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Breaker")
            .field("name", &self.core.name)
            .field("state", &self.core.state())
            .finish()
    }
}

impl Breaker {
    /// A breaker with the defaults: trips after 5 consecutive failures, stays
    /// open 30 s, then admits 1 probe.
    pub fn new(name: impl Into<Arc<str>>) -> Self {
        Self::builder(name).build()
    }

    /// Configures a breaker.
    pub fn builder(name: impl Into<Arc<str>>) -> Builder {
        Builder::new(name.into())
    }

    /// The name given at creation.
    pub fn name(&self) -> &str {
        &self.core.name
    }

    /// A layer that guards services with this breaker (shared state).
    pub fn layer(&self) -> CircuitBreakerLayer {
        CircuitBreakerLayer::new(self.clone())
    }

    /// The current state, as the next caller will find it: after the open
    /// wait it reports `HalfOpen` (and after a half-open wait, `Open`). A
    /// read only: the transition is made by the next admission.
    pub fn state(&self) -> State {
        self.core.state()
    }

    /// The current generation (bumped by each transition).
    pub fn generation(&self) -> u64 {
        self.core.generation()
    }

    /// Current counts.
    pub fn counts(&self) -> Counts {
        self.core.counts()
    }

    /// A consistent-enough view for reports.
    pub fn snapshot(&self) -> Snapshot {
        let (generation, state, next_probe_in, available_permits) = self.core.observe();
        Snapshot {
            name: self.core.name.clone(),
            state,
            generation,
            counts: self.core.counts(),
            failures: self.core.failures(),
            rejected: self.core.rejected(),
            transitions: self.core.transitions(),
            next_probe_in,
            available_permits,
        }
    }

    /// Back to `Closed` from any state: window cleared, open-duration growth
    /// back to base, new generation.
    pub fn reset(&self) {
        self.core.force(State::Closed, Cause::Reset);
    }

    /// Rejects every call until [`reset`](Self::reset).
    pub fn force_open(&self) {
        self.core.force(State::ForcedOpen, Cause::ForcedOpen);
    }

    /// Admits every call and records nothing until [`reset`](Self::reset).
    pub fn disable(&self) {
        self.core.force(State::Disabled, Cause::Disabled);
    }

    /// Closes the breaker because its dependency is known to work again,
    /// unless it is `ForcedOpen` or `Disabled` or already closed. Returns
    /// whether it closed it. This is what a recovery calls.
    ///
    /// The check and the transition are one atomic step: a concurrent
    /// [`force_open`](Self::force_open) is never overwritten, and a probe
    /// that closed the breaker first is not followed by a second close.
    pub fn close(&self) -> bool {
        self.core.close_if_down()
    }

    /// An ordered stream of this breaker's transitions from now on, bounded
    /// at 64: see [`Transitions::recv`].
    pub fn subscribe(&self) -> Transitions {
        Transitions {
            rx: self.core.subscribe(),
        }
    }

    /// What a recovery watches: lossless counts of openings and heals.
    #[cfg(feature = "recovery")]
    pub(crate) fn watch(&self) -> tokio::sync::watch::Receiver<self::core::Signal> {
        self.core.watch()
    }

    /// The handle whose state `core` is.
    pub(crate) fn from_arc_ref(core: &Arc<Core>) -> &Breaker {
        // SAFETY: `Breaker` is `repr(transparent)` over `Arc<Core>`.
        #[allow(unsafe_code)]
        unsafe {
            &*(core as *const Arc<Core>).cast::<Breaker>()
        }
    }

    /// A handle that does not keep the breaker alive.
    ///
    /// Calls hold credits on the breaker rather than reference counts
    /// (README, "Performance"): once every handle is dropped, the breaker is
    /// freed when the threads that ran its calls have given back what they
    /// hold (when they work for other breakers or exit). Until then
    /// [`WeakBreaker::upgrade`] still succeeds, and [`Transitions`] streams
    /// do not end.
    pub fn downgrade(&self) -> WeakBreaker {
        WeakBreaker {
            core: Arc::downgrade(&self.core),
        }
    }

    /// Asks for admission. The permit records the call's outcome; dropping it
    /// unrecorded counts as a call that never finished (a half-open permit is
    /// given back).
    #[inline]
    pub fn try_acquire(&self) -> Result<Permit<'_>, Rejection> {
        let mut ticket = self.core.admit()?;
        self.core.start(&mut ticket);
        Ok(Permit {
            core: &self.core,
            ticket: Some(ticket),
        })
    }

    /// Runs `future` if the breaker admits it, classifying `Err` as failure.
    ///
    /// ```
    /// # use tower_recovery::circuit_breaker::Breaker;
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// let breaker = Breaker::new("database");
    /// let rows = breaker.call(async { Ok::<_, std::io::Error>(3) }).await;
    /// assert_eq!(rows.unwrap(), 3);
    /// # }
    /// ```
    pub async fn call<F, T, E>(&self, future: F) -> Result<T, CallError<E>>
    where
        F: IntoFuture<Output = Result<T, E>>,
        E: 'static,
    {
        self.call_with(&ErrorsAsFailures, future).await
    }

    /// Runs `future` if the breaker admits it, classifying with `classify`.
    ///
    /// A rejection is [`CallError::Rejected`]; a recovery recognises it
    /// around any `E` ([`is_refusal`](crate::recovery::is_refusal)).
    pub async fn call_with<C, F, T, E>(&self, classify: &C, future: F) -> Result<T, CallError<E>>
    where
        C: Classify<T, E>,
        F: IntoFuture<Output = Result<T, E>>,
        E: 'static,
    {
        let permit = match self.try_acquire() {
            Ok(permit) => permit,
            Err(rejected) => {
                #[cfg(feature = "recovery")]
                self::error::registry::register::<E>();
                return Err(CallError::Rejected(rejected));
            }
        };
        let result = future.into_future().await;
        permit.record(classify.classify(&result));
        result.map_err(CallError::Inner)
    }

    /// Waits until the breaker's state changes (any transition).
    pub fn changed(&self) -> impl Future<Output = ()> + Send + 'static {
        self.core.changed.clone().notified_owned()
    }
}

/// A [`Breaker`] that does not keep it alive.
#[derive(Clone, Debug)]
pub struct WeakBreaker {
    core: Weak<Core>,
}

impl WeakBreaker {
    /// The breaker, if a handle is still alive.
    pub fn upgrade(&self) -> Option<Breaker> {
        self.core.upgrade().map(|core| Breaker { core })
    }
}

/// An admitted call of [`Breaker::try_acquire`].
#[must_use = "a permit records nothing unless its outcome is recorded"]
pub struct Permit<'a> {
    core: &'a Core,
    ticket: Option<Ticket>,
}

impl Permit<'_> {
    /// Records the call's outcome.
    #[inline]
    pub fn record(mut self, outcome: Outcome) {
        if let Some(ticket) = self.ticket.take() {
            self.core.complete(ticket, outcome);
        }
    }

    /// Records a success.
    #[inline]
    pub fn success(self) {
        self.record(Outcome::Success);
    }

    /// Records a failure.
    #[inline]
    pub fn failure(self) {
        self.record(Outcome::Failure);
    }

    /// The generation of the state the call was admitted in.
    pub fn generation(&self) -> u64 {
        self.ticket.map_or(0, |t| t.generation())
    }

    /// Whether this is a half-open probe.
    pub fn is_probe(&self) -> bool {
        self.ticket.is_some_and(|t| t.is_probe())
    }
}

impl Drop for Permit<'_> {
    fn drop(&mut self) {
        if let Some(ticket) = self.ticket.take() {
            self.core.release(ticket);
        }
    }
}

impl fmt::Debug for Permit<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Permit")
            .field("probe", &self.is_probe())
            .finish()
    }
}

/// The stream of [`Breaker::subscribe`].
///
/// Bounded: the breaker keeps the last 64 transitions for each subscriber. A
/// subscriber that falls further behind gets [`RecvError::Lagged`] with the
/// number it missed, then the oldest transition still kept.
pub struct Transitions {
    rx: tokio::sync::broadcast::Receiver<Transition>,
}

/// Why [`Transitions::recv`] returned no transition.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RecvError {
    /// This many transitions were dropped because the subscriber fell more
    /// than 64 behind; the next `recv` returns the oldest one kept.
    Lagged(u64),
    /// Every handle of the breaker is dropped and no transition is left.
    Closed,
}

impl fmt::Display for RecvError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RecvError::Lagged(n) => write!(f, "subscriber fell behind; missed {n} transitions"),
            RecvError::Closed => f.write_str("breaker dropped"),
        }
    }
}

impl std::error::Error for RecvError {}

/// Why [`Transitions::try_recv`] returned no transition.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TryRecvError {
    /// No transition is queued.
    Empty,
    /// This many transitions were dropped because the subscriber fell more
    /// than 64 behind; the next call returns the oldest one kept.
    Lagged(u64),
    /// Every handle of the breaker is dropped and no transition is left.
    Closed,
}

impl fmt::Display for TryRecvError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TryRecvError::Empty => f.write_str("no transition queued"),
            TryRecvError::Lagged(n) => {
                write!(f, "subscriber fell behind; missed {n} transitions")
            }
            TryRecvError::Closed => f.write_str("breaker dropped"),
        }
    }
}

impl std::error::Error for TryRecvError {}

impl Transitions {
    /// The next transition, waiting for it.
    pub async fn recv(&mut self) -> Result<Transition, RecvError> {
        use tokio::sync::broadcast::error::RecvError as E;
        self.rx.recv().await.map_err(|e| match e {
            E::Lagged(n) => RecvError::Lagged(n),
            E::Closed => RecvError::Closed,
        })
    }

    /// The next transition if one is queued. `Err(TryRecvError::Empty)`
    /// when none is; a lag is reported as with [`recv`](Self::recv).
    pub fn try_recv(&mut self) -> Result<Transition, TryRecvError> {
        use tokio::sync::broadcast::error::TryRecvError as E;
        self.rx.try_recv().map_err(|e| match e {
            E::Empty => TryRecvError::Empty,
            E::Lagged(n) => TryRecvError::Lagged(n),
            E::Closed => TryRecvError::Closed,
        })
    }
}

impl fmt::Debug for Transitions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Transitions").finish_non_exhaustive()
    }
}

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
    clock: Option<Clock>,
}

impl Builder {
    fn new(name: Arc<str>) -> Self {
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
            clock: None,
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

    /// Re-open if half-open lasts longer than `wait` (probes hung).
    pub fn half_open_max_wait(mut self, wait: Duration) -> Self {
        self.half_open_max_wait = Some(wait);
        self
    }

    /// The clock (default [`Clock::tokio`]).
    pub fn clock(mut self, clock: impl Into<Clock>) -> Self {
        self.clock = Some(clock.into());
        self
    }

    /// Builds the breaker.
    ///
    /// # Panics
    /// If slow calls are configured without a window.
    pub fn build(self) -> Breaker {
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
        };
        Breaker {
            core: Arc::new(Core::new(self.name, cfg, self.clock.unwrap_or_default())),
        }
    }
}

#[cfg(all(test, tower_recovery_loom))]
mod loom;
#[cfg(all(test, not(tower_recovery_loom)))]
mod tests;
