//! Automatic recovery: when a dependency fails, run the action that brings it
//! back, with backoff, a cooldown, and an end to trying.
//!
//! # Why
//!
//! A circuit breaker stops the damage while a dependency is down, but it only
//! waits: it probes with real traffic and never does anything to restore the
//! connection. The seed system paired each breaker with a recovery handler
//! (reconnect to the model server, take a fresh database connection and run
//! `SELECT 1`) triggered when the breaker opens or a health check fails. No
//! Rust crate did this; [`Recovery`] does.
//!
//! # Shape
//!
//! A [`Recovery`] is a handle (clones share state) around a background task
//! that runs a user-supplied [`RecoveryAction`]. It is triggered by:
//!
//! - the breaker it [watches](Builder::watch) opening (Closed -> Open or
//!   HalfOpen -> Open), delivered synchronously by the breaker, never polled;
//! - a failing health check ([`Recovery::report_check`], what the health
//!   monitor calls);
//! - a [`RecoveryLayer`] on a client that has no breaker, after
//!   `trigger_after` consecutive failures (default 3);
//! - [`Recovery::trigger`] by hand (the admin endpoint).
//!
//! Triggers coalesce: one cycle runs at a time, and each trigger says what
//! became of it ([`TriggerOutcome`]).
//!
//! ```
//! use std::time::Duration;
//! use tower_recovery::circuit_breaker::{Breaker, State};
//! use tower_recovery::recovery::{Recovery, RecoveryState, TriggerOutcome};
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() {
//! let breaker = Breaker::builder("model_server").consecutive_failures(1).build();
//! let recovery = Recovery::builder("model_server", || async {
//!     // Reconnect, probe the health endpoint, check the model is loaded...
//!     Ok::<_, std::io::Error>(())
//! })
//! .watch(&breaker)
//! .spawn();
//!
//! // The breaker opens: recovery starts at once, off the request path.
//! breaker.try_acquire().unwrap().failure();
//! assert_eq!(recovery.status().state, RecoveryState::Recovering);
//! recovery.wait_idle_or_cooling().await;
//! assert_eq!(breaker.state(), State::Closed);
//! assert_eq!(recovery.status().successes, 1);
//! // Cooling down: an automatic trigger now is deferred, a manual one runs.
//! assert_eq!(recovery.trigger(), TriggerOutcome::Started);
//! # }
//! ```
//!
//! # A cycle
//!
//! Up to `max_attempts` attempts (default 3). No delay before attempt 1;
//! before attempt `n >= 2`, `base * multiplier^(n-1)` (defaults 1 s and 2.0:
//! 2 s, then 4 s), optionally jittered. Each attempt runs under
//! `attempt_timeout` (default 10 s): a hung action is a failed attempt.
//!
//! - **Success**: the watched breaker is closed (never when `ForcedOpen` or
//!   `Disabled`), attempts reset, the time to recover is recorded (MTTR), and a
//!   cooldown (default 60 s) starts. An automatic trigger during the cooldown
//!   is deferred to its end and honoured then only if the dependency is still
//!   down (breaker not closed, or the last check failed). A manual trigger
//!   bypasses the cooldown.
//! - **All attempts failed**: `exhausted`, "manual intervention required"; the
//!   alert hook fires once; automatic triggers are ignored. The breaker keeps
//!   probing on its own schedule, so it may heal by itself: whenever it closes
//!   by any path, or a health check passes, a running cycle is cancelled,
//!   `exhausted` returns to `idle` and the recovery is recorded. A manual
//!   trigger or [`Recovery::reset`] starts again at attempt 1.
//!
//! Dropping every handle stops the background task.
//!
//! # Logs
//!
//! The seed's lines, as `tracing` events: `Circuit breaker 'model_server'
//! opened, triggering auto-recovery`, `Triggering recovery for: model_server
//! (attempt 1/3)`, `Applying backoff delay: 2.0s`, `Recovery successful for:
//! model_server`, `Recovery failed for: model_server`.

mod backoff;
mod layer;

use std::collections::VecDeque;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, SystemTime};

use tokio::sync::Notify;
use tokio::time::Instant;

pub use self::backoff::Backoff;
pub use self::layer::{RecoveryLayer, RecoveryService, ResponseFuture};

use crate::circuit_breaker::{Breaker, Cause, State, Transition, WeakBreaker};

/// Longest `last_error` kept, in bytes.
pub const MAX_ERROR_LEN: usize = 256;

/// How many recent recoveries the MTTR is averaged over.
const MTTR_SAMPLES: usize = 20;

type BoxFuture = Pin<Box<dyn Future<Output = Result<(), String>> + Send>>;

/// The async action that brings a dependency back.
///
/// Implemented for every `Fn() -> impl Future<Output = Result<(), E>>` with
/// `E: Display`, so a closure is enough.
pub trait RecoveryAction: Send + Sync + 'static {
    /// Why an attempt failed.
    type Error: fmt::Display + Send + 'static;
    /// The attempt.
    type Future: Future<Output = Result<(), Self::Error>> + Send + 'static;

    /// Makes one attempt.
    fn recover(&self) -> Self::Future;
}

impl<F, Fut, E> RecoveryAction for F
where
    F: Fn() -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<(), E>> + Send + 'static,
    E: fmt::Display + Send + 'static,
{
    type Error = E;
    type Future = Fut;

    fn recover(&self) -> Fut {
        self()
    }
}

/// The state of a recovery.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RecoveryState {
    /// Nothing to do.
    Idle,
    /// A cycle is running.
    Recovering,
    /// A cycle succeeded recently; automatic triggers wait for the end.
    CoolingDown,
    /// Every attempt of the last cycle failed: manual intervention required.
    Exhausted,
}

impl RecoveryState {
    /// Lower-case name, as used in JSON.
    pub fn as_str(&self) -> &'static str {
        match self {
            RecoveryState::Idle => "idle",
            RecoveryState::Recovering => "recovering",
            RecoveryState::CoolingDown => "cooling_down",
            RecoveryState::Exhausted => "exhausted",
        }
    }
}

impl fmt::Display for RecoveryState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What became of a trigger.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum TriggerOutcome {
    /// A cycle started.
    Started,
    /// A cycle was already running; this trigger joined it.
    AlreadyRunning,
    /// Cooling down: considered again at the end of the cooldown.
    Deferred,
    /// Exhausted: automatic triggers are ignored until a manual one or a
    /// reset.
    Ignored,
}

impl TriggerOutcome {
    /// Lower-case name, as used in JSON.
    pub fn as_str(&self) -> &'static str {
        match self {
            TriggerOutcome::Started => "started",
            TriggerOutcome::AlreadyRunning => "already_running",
            TriggerOutcome::Deferred => "deferred",
            TriggerOutcome::Ignored => "ignored",
        }
    }
}

impl fmt::Display for TriggerOutcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A point-in-time view of a recovery, for reports.
#[derive(Clone, Debug, PartialEq)]
pub struct Status {
    /// The dependency's name.
    pub name: Arc<str>,
    /// Current state.
    pub state: RecoveryState,
    /// Attempt of the running (or last) cycle, 0 when none ran yet.
    pub attempt: u32,
    /// Attempts per cycle.
    pub max_attempts: u32,
    /// When the last attempt started (wall clock).
    pub last_attempt_at: Option<SystemTime>,
    /// Why the last failed attempt failed, capped at [`MAX_ERROR_LEN`] bytes.
    pub last_error: Option<String>,
    /// Recoveries: cycles that succeeded plus self-healing observed.
    pub successes: u64,
    /// Failed attempts.
    pub failures: u64,
    /// Cycles that ended exhausted.
    pub exhaustions: u64,
    /// Mean time to recover (dependency down to back) over recent recoveries.
    pub mttr: Option<Duration>,
    /// When cooling down: time left.
    pub cooldown_remaining: Option<Duration>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Manual,
    Automatic,
}

type Alert = Box<dyn Fn(&Status) + Send + Sync>;

struct Config {
    max_attempts: u32,
    backoff: Backoff,
    attempt_timeout: Duration,
    cooldown: Duration,
    trigger_after: u32,
}

struct Inner {
    state: RecoveryState,
    /// Bumped to cancel the running cycle.
    cycle: u64,
    attempt: u32,
    deferred: bool,
    cooldown_until: Option<Instant>,
    last_attempt_at: Option<SystemTime>,
    last_error: Option<String>,
    successes: u64,
    failures: u64,
    exhaustions: u64,
    mttr: VecDeque<Duration>,
    down_since: Option<Instant>,
    last_check_failed: bool,
}

struct Shared {
    name: Arc<str>,
    cfg: Config,
    action: Box<dyn Fn() -> BoxFuture + Send + Sync>,
    breaker: Option<WeakBreaker>,
    alert: Option<Alert>,
    inner: Mutex<Inner>,
    /// Wakes the task: a trigger, a cancellation, or the stop.
    wake: Notify,
    /// Wakes waiters on the state (`wait_*`).
    changed: Notify,
    stopped: AtomicBool,
    /// Consecutive failures seen by `RecoveryLayer`s and `call`.
    pub(crate) layer_failures: AtomicU32,
}

fn lock(m: &Mutex<Inner>) -> MutexGuard<'_, Inner> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Keeps the background task alive; dropped with the last handle.
struct Owner {
    shared: Arc<Shared>,
}

impl Drop for Owner {
    fn drop(&mut self) {
        self.shared.stopped.store(true, Ordering::Release);
        self.shared.wake.notify_one();
        self.shared.changed.notify_waiters();
    }
}

/// A recovery handle. Clones share one state and one background task, which
/// stops when the last clone is dropped.
#[derive(Clone)]
pub struct Recovery {
    owner: Arc<Owner>,
}

impl fmt::Debug for Recovery {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Recovery")
            .field("name", &self.shared().name)
            .field("state", &lock(&self.shared().inner).state)
            .finish()
    }
}

impl Recovery {
    /// Configures a recovery running `action` for the dependency `name`.
    pub fn builder<A: RecoveryAction>(name: impl Into<Arc<str>>, action: A) -> Builder {
        Builder::new(name.into(), action)
    }

    fn shared(&self) -> &Arc<Shared> {
        &self.owner.shared
    }

    /// The dependency's name.
    pub fn name(&self) -> &str {
        &self.shared().name
    }

    /// A manual trigger: starts a cycle unless one is running, bypassing the
    /// cooldown and leaving `exhausted` (from attempt 1).
    pub fn trigger(&self) -> TriggerOutcome {
        self.shared().trigger(Kind::Manual, "manual trigger")
    }

    /// An automatic trigger (what the breaker, the monitor and the layer
    /// use): deferred while cooling down, ignored when exhausted.
    pub fn trigger_automatic(&self, reason: &str) -> TriggerOutcome {
        self.shared().trigger(Kind::Automatic, reason)
    }

    /// The health monitor's entry point: a failing check triggers recovery
    /// (automatically); a passing one ends a cycle or an exhaustion, the
    /// dependency being back, and, if the watched breaker is still open,
    /// triggers a cycle whose success closes it.
    pub fn report_check(&self, passed: bool) -> Option<TriggerOutcome> {
        let shared = self.shared();
        if passed {
            shared.healed("health check passed");
            // The dependency answers its check but its breaker is still
            // open (a cycle ended exhausted, or none ran): run the action
            // now, whose success closes the breaker, instead of leaving
            // traffic to wait for the breaker's own probe.
            let breaker_open = shared
                .breaker
                .as_ref()
                .and_then(WeakBreaker::upgrade)
                .is_some_and(|b| matches!(b.state(), State::Open | State::HalfOpen));
            breaker_open.then(|| {
                shared.trigger(
                    Kind::Automatic,
                    "health check passed while the breaker is open",
                )
            })
        } else {
            lock(&shared.inner).last_check_failed = true;
            Some(shared.trigger(Kind::Automatic, "health check failed"))
        }
    }

    /// Back to `idle`: cancels a running cycle, clears the cooldown and the
    /// deferral. Counters and MTTR history are kept.
    pub fn reset(&self) {
        let shared = self.shared();
        let mut inner = lock(&shared.inner);
        inner.cycle += 1;
        inner.state = RecoveryState::Idle;
        inner.attempt = 0;
        inner.deferred = false;
        inner.cooldown_until = None;
        drop(inner);
        shared.layer_failures.store(0, Ordering::Relaxed);
        shared.wake.notify_one();
        shared.changed.notify_waiters();
    }

    /// A point-in-time view.
    pub fn status(&self) -> Status {
        self.shared().status()
    }

    /// A layer that triggers this recovery after consecutive failures of the
    /// client it wraps (for clients without a breaker).
    pub fn layer(&self) -> RecoveryLayer {
        RecoveryLayer::new(self.clone())
    }

    /// Runs `future`, counting its failure (`Err`) towards the layer's
    /// consecutive-failure trigger, like a [`RecoveryLayer`] would. A breaker
    /// rejection is not counted.
    pub async fn call<F, T, E>(&self, future: F) -> Result<T, E>
    where
        F: std::future::IntoFuture<Output = Result<T, E>>,
        E: 'static,
    {
        let result = future.into_future().await;
        let outcome = match &result {
            Err(e) if layer::is_rejection(e) => crate::classify::Outcome::Ignore,
            Err(_) => crate::classify::Outcome::Failure,
            Ok(_) => crate::classify::Outcome::Success,
        };
        self.record(outcome);
        result
    }

    pub(crate) fn record(&self, outcome: crate::classify::Outcome) {
        let shared = self.shared();
        match outcome {
            crate::classify::Outcome::Success => {
                if shared.layer_failures.load(Ordering::Relaxed) != 0 {
                    shared.layer_failures.store(0, Ordering::Relaxed);
                }
            }
            crate::classify::Outcome::Failure => {
                let n = shared.layer_failures.fetch_add(1, Ordering::AcqRel) + 1;
                if n >= shared.cfg.trigger_after {
                    shared.layer_failures.store(0, Ordering::Relaxed);
                    shared.trigger(Kind::Automatic, "consecutive call failures");
                }
            }
            crate::classify::Outcome::Ignore => {}
        }
    }

    /// Waits until the state is neither `recovering` nor a pending start:
    /// the current cycle (if any) has ended.
    pub async fn wait_idle_or_cooling(&self) {
        self.wait_for(|s| s != RecoveryState::Recovering).await;
    }

    /// Waits until `pred` holds for the state (or the recovery is stopped).
    pub async fn wait_for(&self, pred: impl Fn(RecoveryState) -> bool) {
        let shared = self.shared();
        loop {
            let notified = shared.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if pred(lock(&shared.inner).state) || shared.stopped.load(Ordering::Acquire) {
                return;
            }
            notified.await;
        }
    }
}

impl Shared {
    /// Ends a cooldown whose time is up (observers see the truth even
    /// before the task wakes).
    fn refresh(self: &Arc<Self>) {
        let due = {
            let inner = lock(&self.inner);
            inner.state == RecoveryState::CoolingDown
                && inner.cooldown_until.is_some_and(|t| Instant::now() >= t)
        };
        if due {
            self.cooled_down();
        }
    }

    fn trigger(self: &Arc<Self>, kind: Kind, reason: &str) -> TriggerOutcome {
        self.refresh();
        let mut inner = lock(&self.inner);
        if kind == Kind::Automatic && inner.down_since.is_none() {
            inner.down_since = Some(Instant::now());
        }
        let outcome = match inner.state {
            RecoveryState::Recovering => TriggerOutcome::AlreadyRunning,
            RecoveryState::Exhausted if kind == Kind::Automatic => TriggerOutcome::Ignored,
            RecoveryState::CoolingDown if kind == Kind::Automatic => {
                inner.deferred = true;
                TriggerOutcome::Deferred
            }
            _ => {
                inner.state = RecoveryState::Recovering;
                inner.attempt = 0;
                inner.deferred = false;
                inner.cooldown_until = None;
                inner.cycle += 1;
                TriggerOutcome::Started
            }
        };
        drop(inner);
        tracing::debug!(dependency = &*self.name, %outcome, reason, "recovery trigger");
        if outcome == TriggerOutcome::Started {
            self.wake.notify_one();
            self.changed.notify_waiters();
        }
        outcome
    }

    /// The dependency is back by another path than our own cycle: the
    /// breaker closed, or a health check passed.
    fn healed(&self, how: &str) {
        let mut inner = lock(&self.inner);
        inner.last_check_failed = false;
        let was = inner.state;
        if matches!(was, RecoveryState::Recovering | RecoveryState::Exhausted) {
            inner.cycle += 1;
            inner.state = RecoveryState::Idle;
            inner.attempt = 0;
            inner.successes += 1;
            if let Some(since) = inner.down_since.take() {
                let mttr = since.elapsed();
                push_mttr(&mut inner.mttr, mttr);
            }
            drop(inner);
            self.count(crate_metrics::Event::Healed);
            tracing::info!(
                dependency = &*self.name,
                was = %was,
                "Dependency '{}' is healthy again ({how}); recovery back to idle",
                self.name
            );
            self.wake.notify_one();
            self.changed.notify_waiters();
        } else if was != RecoveryState::CoolingDown {
            inner.down_since = None;
        }
    }

    fn dependency_down(&self, inner: &Inner) -> bool {
        let breaker_down = self
            .breaker
            .as_ref()
            .and_then(WeakBreaker::upgrade)
            .is_some_and(|b| matches!(b.state(), State::Open | State::HalfOpen));
        breaker_down || inner.last_check_failed
    }

    fn status(self: &Arc<Self>) -> Status {
        self.refresh();
        let inner = lock(&self.inner);
        let mttr = (!inner.mttr.is_empty())
            .then(|| inner.mttr.iter().sum::<Duration>() / inner.mttr.len() as u32);
        Status {
            name: self.name.clone(),
            state: inner.state,
            attempt: inner.attempt,
            max_attempts: self.cfg.max_attempts,
            last_attempt_at: inner.last_attempt_at,
            last_error: inner.last_error.clone(),
            successes: inner.successes,
            failures: inner.failures,
            exhaustions: inner.exhaustions,
            mttr,
            cooldown_remaining: inner
                .cooldown_until
                .filter(|_| inner.state == RecoveryState::CoolingDown)
                .map(|until| until.saturating_duration_since(Instant::now())),
        }
    }

    fn is_current(&self, cycle: u64) -> bool {
        lock(&self.inner).cycle == cycle && !self.stopped.load(Ordering::Acquire)
    }

    /// Waits for `fut` unless the cycle is cancelled or the task stopped.
    async fn unless_cancelled<F: Future>(&self, cycle: u64, fut: F) -> Option<F::Output> {
        tokio::pin!(fut);
        loop {
            let woken = self.wake.notified();
            tokio::pin!(woken);
            woken.as_mut().enable();
            if !self.is_current(cycle) {
                // Pass the wake-up on: the main loop must see it too.
                self.wake.notify_one();
                return None;
            }
            tokio::select! {
                out = &mut fut => return Some(out),
                () = &mut woken => {}
            }
        }
    }

    async fn run_cycle(self: &Arc<Self>, cycle: u64) {
        let name = &*self.name;
        let max = self.cfg.max_attempts;
        for attempt in 1..=max {
            if attempt >= 2 {
                let delay = self.cfg.backoff.delay(attempt);
                tracing::info!(
                    dependency = name,
                    "Applying backoff delay: {:.1}s",
                    delay.as_secs_f64()
                );
                if self
                    .unless_cancelled(cycle, tokio::time::sleep(delay))
                    .await
                    .is_none()
                {
                    return;
                }
            }
            {
                let mut inner = lock(&self.inner);
                if inner.cycle != cycle {
                    return;
                }
                inner.attempt = attempt;
                inner.last_attempt_at = Some(SystemTime::now());
            }
            self.changed.notify_waiters();
            self.count(crate_metrics::Event::Attempt);
            tracing::info!(
                dependency = name,
                attempt,
                max,
                "Triggering recovery for: {name} (attempt {attempt}/{max})"
            );
            let attempt_fut = tokio::time::timeout(self.cfg.attempt_timeout, (self.action)());
            let error = match self.unless_cancelled(cycle, attempt_fut).await {
                None => return,
                Some(Ok(Ok(()))) => {
                    self.succeeded(cycle);
                    return;
                }
                Some(Ok(Err(e))) => e,
                Some(Err(_)) => format!("attempt timed out after {:?}", self.cfg.attempt_timeout),
            };
            tracing::error!(dependency = name, attempt, max, error = %error, "Recovery attempt {attempt}/{max} failed for: {name}: {error}");
            let mut inner = lock(&self.inner);
            if inner.cycle != cycle {
                return;
            }
            inner.failures += 1;
            inner.last_error = Some(cap(error));
            drop(inner);
            self.count(crate_metrics::Event::Failure);
        }
        let mut inner = lock(&self.inner);
        if inner.cycle != cycle {
            return;
        }
        inner.state = RecoveryState::Exhausted;
        inner.exhaustions += 1;
        drop(inner);
        self.count(crate_metrics::Event::Exhausted);
        tracing::error!(dependency = name, "Recovery failed for: {name}");
        tracing::error!(
            dependency = name,
            "Recovery for '{name}' exhausted {max} attempts: manual intervention required"
        );
        self.changed.notify_waiters();
        if let Some(alert) = &self.alert {
            alert(&self.status());
        }
    }

    fn succeeded(&self, cycle: u64) {
        let mut inner = lock(&self.inner);
        if inner.cycle != cycle {
            return;
        }
        inner.state = RecoveryState::CoolingDown;
        inner.cooldown_until = Some(Instant::now() + self.cfg.cooldown);
        inner.successes += 1;
        inner.last_check_failed = false;
        if let Some(since) = inner.down_since.take() {
            let mttr = since.elapsed();
            push_mttr(&mut inner.mttr, mttr);
        }
        drop(inner);
        let name = &*self.name;
        self.count(crate_metrics::Event::Success);
        tracing::info!(dependency = name, "Recovery successful for: {name}");
        if let Some(breaker) = self.breaker.as_ref().and_then(WeakBreaker::upgrade) {
            breaker.close();
        }
        self.changed.notify_waiters();
    }

    /// At the end of a cooldown: idle, and a deferred trigger honoured only
    /// if the dependency is still down.
    fn cooled_down(self: &Arc<Self>) {
        let mut inner = lock(&self.inner);
        if inner.state != RecoveryState::CoolingDown {
            return;
        }
        inner.state = RecoveryState::Idle;
        inner.cooldown_until = None;
        let deferred = std::mem::take(&mut inner.deferred);
        let down = deferred && self.dependency_down(&inner);
        drop(inner);
        self.changed.notify_waiters();
        if down {
            self.trigger(Kind::Automatic, "deferred trigger, dependency still down");
        } else if deferred {
            tracing::info!(
                dependency = &*self.name,
                "Deferred recovery dropped: dependency is up"
            );
        }
    }
}

impl Shared {
    #[inline]
    fn count(&self, _event: crate_metrics::Event) {
        #[cfg(feature = "metrics")]
        {
            let name = self.name.to_string();
            match _event {
                crate_metrics::Event::Attempt => {
                    metrics::counter!(crate::metrics::RECOVERY_ATTEMPTS, "dependency" => name)
                        .increment(1)
                }
                event => metrics::counter!(
                    crate::metrics::RECOVERY_OUTCOMES,
                    "dependency" => name,
                    "outcome" => event.as_str()
                )
                .increment(1),
            }
        }
    }
}

mod crate_metrics {
    #[derive(Clone, Copy, Debug)]
    pub(super) enum Event {
        Attempt,
        Success,
        Failure,
        Exhausted,
        Healed,
    }

    impl Event {
        #[allow(dead_code)]
        pub(super) fn as_str(self) -> &'static str {
            match self {
                Event::Attempt => "attempt",
                Event::Success => "success",
                Event::Failure => "failure",
                Event::Exhausted => "exhausted",
                Event::Healed => "healed",
            }
        }
    }
}

fn push_mttr(samples: &mut VecDeque<Duration>, sample: Duration) {
    if samples.len() == MTTR_SAMPLES {
        samples.pop_front();
    }
    samples.push_back(sample);
}

/// Caps an error text at [`MAX_ERROR_LEN`] bytes on a character boundary.
fn cap(text: String) -> String {
    crate::util::truncate_utf8(text, MAX_ERROR_LEN)
}

async fn run(shared: Arc<Shared>) {
    loop {
        let woken = shared.wake.notified();
        tokio::pin!(woken);
        woken.as_mut().enable();
        if shared.stopped.load(Ordering::Acquire) {
            return;
        }
        let (state, cycle, cooldown_until) = {
            let inner = lock(&shared.inner);
            (inner.state, inner.cycle, inner.cooldown_until)
        };
        match state {
            RecoveryState::Recovering => {
                shared.run_cycle(cycle).await;
                continue;
            }
            RecoveryState::CoolingDown => {
                if let Some(until) = cooldown_until {
                    tokio::select! {
                        () = tokio::time::sleep_until(until) => shared.cooled_down(),
                        () = &mut woken => {}
                    }
                    continue;
                }
            }
            _ => {}
        }
        woken.await;
    }
}

/// Configures a [`Recovery`].
pub struct Builder {
    name: Arc<str>,
    action: Box<dyn Fn() -> BoxFuture + Send + Sync>,
    cfg: Config,
    breaker: Option<Breaker>,
    alert: Option<Alert>,
}

impl fmt::Debug for Builder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Builder")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl Builder {
    fn new<A: RecoveryAction>(name: Arc<str>, action: A) -> Self {
        let action = Arc::new(action);
        Self {
            name,
            action: Box::new(move || {
                let fut = action.recover();
                Box::pin(async move { fut.await.map_err(|e| e.to_string()) })
            }),
            cfg: Config {
                max_attempts: 3,
                backoff: Backoff::default(),
                attempt_timeout: Duration::from_secs(10),
                cooldown: Duration::from_secs(60),
                trigger_after: 3,
            },
            breaker: None,
            alert: None,
        }
    }

    /// Attempts per cycle before "manual intervention required" (default 3).
    ///
    /// # Panics
    /// If `n` is zero.
    pub fn max_attempts(mut self, n: u32) -> Self {
        assert!(n > 0, "max_attempts must be at least 1");
        self.cfg.max_attempts = n;
        self
    }

    /// The delays between attempts (default 1 s base, multiplier 2.0).
    pub fn backoff(mut self, backoff: Backoff) -> Self {
        self.cfg.backoff = backoff;
        self
    }

    /// Time allowed for one attempt (default 10 s).
    pub fn attempt_timeout(mut self, timeout: Duration) -> Self {
        self.cfg.attempt_timeout = timeout;
        self
    }

    /// Cooldown after a successful cycle (default 60 s).
    pub fn cooldown(mut self, cooldown: Duration) -> Self {
        self.cfg.cooldown = cooldown;
        self
    }

    /// Consecutive failures a [`RecoveryLayer`] counts before triggering
    /// (default 3).
    ///
    /// # Panics
    /// If `n` is zero.
    pub fn trigger_after(mut self, n: u32) -> Self {
        assert!(n > 0, "trigger_after must be at least 1");
        self.cfg.trigger_after = n;
        self
    }

    /// Watches `breaker`: its opening triggers recovery, its closing by any
    /// path ends a cycle or an exhaustion, and a successful cycle closes it.
    pub fn watch(mut self, breaker: &Breaker) -> Self {
        self.breaker = Some(breaker.clone());
        self
    }

    /// Called once each time a cycle ends exhausted.
    pub fn on_exhausted<F>(mut self, alert: F) -> Self
    where
        F: Fn(&Status) + Send + Sync + 'static,
    {
        self.alert = Some(Box::new(alert));
        self
    }

    /// Starts the background task.
    ///
    /// # Panics
    /// Outside a tokio runtime.
    pub fn spawn(self) -> Recovery {
        let shared = Arc::new(Shared {
            name: self.name,
            cfg: self.cfg,
            action: self.action,
            breaker: self.breaker.as_ref().map(Breaker::downgrade),
            alert: self.alert,
            inner: Mutex::new(Inner {
                state: RecoveryState::Idle,
                cycle: 0,
                attempt: 0,
                deferred: false,
                cooldown_until: None,
                last_attempt_at: None,
                last_error: None,
                successes: 0,
                failures: 0,
                exhaustions: 0,
                mttr: VecDeque::new(),
                down_since: None,
                last_check_failed: false,
            }),
            wake: Notify::new(),
            changed: Notify::new(),
            stopped: AtomicBool::new(false),
            layer_failures: AtomicU32::new(0),
        });
        if let Some(breaker) = &self.breaker {
            let weak: Weak<Shared> = Arc::downgrade(&shared);
            breaker.on_transition(move |t: &Transition| {
                if let Some(shared) = weak.upgrade() {
                    on_breaker_transition(&shared, t);
                }
            });
        }
        tokio::spawn(run(shared.clone()));
        Recovery {
            owner: Arc::new(Owner { shared }),
        }
    }
}

fn on_breaker_transition(shared: &Arc<Shared>, t: &Transition) {
    if shared.stopped.load(Ordering::Acquire) {
        return;
    }
    match (t.from, t.to) {
        (State::Closed | State::HalfOpen, State::Open) => {
            let name = &*shared.name;
            tracing::info!(
                dependency = name,
                "Circuit breaker '{name}' opened, triggering auto-recovery"
            );
            shared.trigger(Kind::Automatic, "circuit breaker opened");
        }
        (_, State::Closed) if t.cause != Cause::Recovered => {
            shared.healed("circuit breaker closed")
        }
        _ => {}
    }
}
