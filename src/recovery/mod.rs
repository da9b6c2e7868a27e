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
//!   HalfOpen -> Open), seen through counts the breaker publishes, which
//!   never lose an opening;
//! - a failing health check ([`Recovery::report_check`], what the health
//!   monitor calls);
//! - a [`RecoveryTriggerLayer`] on a client that has no breaker, after
//!   `trigger_after` consecutive failures (default 3);
//! - [`Recovery::trigger_manual`] by hand (the admin endpoint).
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
//! assert_eq!(recovery.status().recoveries, 1);
//! // Cooling down: an automatic trigger now is deferred, a manual one runs.
//! assert_eq!(recovery.trigger_manual(), TriggerOutcome::Started);
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
//! - **All attempts failed**: `exhausted`; the alert hook fires (once per
//!   outage, see [`Mode`]) and automatic triggers are ignored. In the
//!   default [adaptive](Mode::Adaptive) mode another cycle starts by itself
//!   after a growing delay (30 s doubling to 10 min, ±10% jitter, like
//!   Kubernetes' restart backoff) while the dependency is still down; in
//!   [strict](Mode::Strict) mode (the seed's) nothing runs until a person
//!   acts: "manual intervention required". Either way the breaker keeps
//!   probing on its own schedule, so it may heal by itself: whenever it
//!   closes by any path, or a health check passes, a running cycle is
//!   cancelled, `exhausted` returns to `idle` and the recovery is recorded.
//!   A manual trigger or [`Recovery::reset`] starts again at attempt 1.
//!
//! # Adaptive recovery
//!
//! The seed's two limitations, "after 3 failed attempts manual intervention
//! is required" and "a 60-second cooldown between cycles", are the
//! [strict](Mode::Strict) mode. The default [adaptive](Mode::Adaptive) mode
//! changes both:
//!
//! - an exhausted cycle is retried while the dependency is still down, on a
//!   growing interval that starts over once the dependency has been healthy
//!   for a while (10 min), and the alert fires once per outage;
//! - the cooldown follows the failure pattern: short (5 s) after a one-off
//!   failure, doubling with each other recovery in the last hour, up to the
//!   configured cooldown for a flapping dependency.
//!
//! With the health monitor, a dependency that is down is also probed on a
//! short interval (see [`Dependency::probe_while_down`](crate::health::Dependency::probe_while_down)), and a
//! passing probe lets its breaker admit its half-open probe at once.
//!
//! ```
//! use std::time::Duration;
//! use tower_recovery::recovery::{Adaptive, Mode, Recovery, RecoveryState};
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() {
//! let recovery = Recovery::builder("storage", || async {
//!     Err::<(), _>(std::io::Error::other("connection refused"))
//! })
//! .max_attempts(1)
//! .mode(Mode::Adaptive(Adaptive::default().retry_exhausted(
//!     Duration::from_secs(30),
//!     Duration::from_secs(600),
//! )))
//! .spawn();
//! recovery.trigger_automatic("storage check failed");
//! recovery.wait_for(|s| s == RecoveryState::Exhausted).await;
//! let next = recovery.status().next_retry_in.expect("adaptive retries");
//! assert!(next >= Duration::from_secs(27) && next <= Duration::from_secs(33));
//! // Strict mode would wait for a person here.
//! # }
//! ```
//!
//! One outage is one recovery: the outage starts at the first sign the
//! dependency is down and ends at the first sign it is back (our cycle
//! succeeded, the breaker closed by another path, a check passed while the
//! breaker is not open); only its end records a success and an MTTR sample.
//!
//! Dropping every handle stops the background task.
//!
//! # Design: one-way events, a pure machine
//!
//! The rules live in a pure state machine (events in: triggers, check
//! results, breaker openings and heals, attempt outcomes, time; effects out:
//! run an attempt, cancel it, close the breaker, alert, log). Handles feed it
//! events under a short lock and return; the background task carries out
//! the effects with no lock held. The breaker never calls into a recovery:
//! it publishes, and the recovery's task reacts. Reading ([`Recovery::status`],
//! `Debug`) changes nothing: a cooldown whose time is up, or a breaker
//! opening the task has not handled yet, is projected for the reader on a
//! copy of the machine.
//!
//! # Logs
//!
//! The seed's lines, as `tracing` events: `Circuit breaker 'model_server'
//! opened, triggering auto-recovery`, `Triggering recovery for: model_server
//! (attempt 1/3)`, `Applying backoff delay: 2.0s`, `Recovery successful for:
//! model_server`, `Recovery failed for: model_server`.

pub mod alert;
mod backoff;
mod early;
#[cfg(feature = "fleet")]
mod fleet;
mod ladder;
mod layer;
#[cfg(all(test, tower_recovery_loom))]
mod loom;
mod machine;
mod task;
#[cfg(all(test, not(tower_recovery_loom)))]
mod tests;
#[cfg(feature = "webhook")]
mod webhook;

use crate::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::sync::{Notify, watch};
use tokio::time::Instant;

pub use self::alert::{Alert, AlertEvent, LogAlert};
pub use self::backoff::Backoff;
pub use self::early::{Degradation, EarlyWarning, EarlyWarningBuilder};
pub use self::ladder::Ladder;
pub use self::layer::{RecoveryTrigger, RecoveryTriggerLayer};
#[cfg(feature = "webhook")]
#[cfg_attr(docsrs, doc(cfg(feature = "webhook")))]
pub use self::webhook::{InvalidWebhookUrl, WebhookAlert, WebhookBuilder, WebhookStats};

/// The response future of [`RecoveryTrigger`].
pub mod future {
    pub use super::layer::ResponseFuture;
}

use self::machine::{Effect, Event, Kind, Machine, Rules};
use crate::circuit_breaker::core::Signal;
use crate::circuit_breaker::{Breaker, WeakBreaker};
use crate::sync::{Mutex, lock};

/// Longest `last_error` kept, in bytes.
pub const MAX_ERROR_LEN: usize = 256;

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

    /// Makes attempt `attempt` (1-based) of a cycle. The default is
    /// [`recover`](Self::recover); a [`Ladder`] picks its rung by it.
    fn recover_attempt(&self, attempt: u32) -> Self::Future {
        let _ = attempt;
        self.recover()
    }

    /// The attempts a cycle of this action makes, if it knows better than
    /// the builder's default (a [`Ladder`]: the sum of its rungs').
    fn attempts(&self) -> Option<u32> {
        None
    }
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
    /// Every attempt of the last cycle failed: in adaptive mode the next
    /// cycle starts by itself later if the dependency is still down; in
    /// strict mode only a person starts one (manual intervention required).
    /// Either way a sign that the dependency is back ends it.
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
#[non_exhaustive]
pub enum TriggerOutcome {
    /// A cycle started.
    Started,
    /// A cycle was already running; this trigger joined it.
    AlreadyRunning,
    /// Cooling down: considered again at the end of the cooldown.
    Deferred,
    /// Exhausted: automatic triggers are ignored; the next cycle starts at
    /// the retry (adaptive), by a manual trigger or a reset, or the
    /// exhaustion ends when the dependency is seen back.
    Ignored,
    /// Another replica of the fleet holds the dependency's recovery lease
    /// and runs its cycle: this replica's cycle waits on it and ends as it
    /// does (feature `fleet`; the holder is in
    /// [`Recovery::fleet_status`]).
    RunningElsewhere,
}

impl TriggerOutcome {
    /// Lower-case name, as used in JSON.
    pub fn as_str(&self) -> &'static str {
        match self {
            TriggerOutcome::Started => "started",
            TriggerOutcome::AlreadyRunning => "already_running",
            TriggerOutcome::Deferred => "deferred",
            TriggerOutcome::Ignored => "ignored",
            TriggerOutcome::RunningElsewhere => "running_elsewhere",
        }
    }
}

impl fmt::Display for TriggerOutcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a recovery does between and after cycles.
#[derive(Clone, Copy, Debug, PartialEq)]
#[non_exhaustive]
pub enum Mode {
    /// The seed's rules: a fixed cooldown after a success, and after an
    /// exhausted cycle nothing until a person acts (a manual trigger or a
    /// reset) or the dependency is seen back. Every exhausted cycle alerts.
    Strict,
    /// Retries after exhaustion and a cooldown that follows the failure
    /// pattern (the default; see the [module docs](self#adaptive-recovery)).
    Adaptive(Adaptive),
}

impl Default for Mode {
    fn default() -> Self {
        Mode::Adaptive(Adaptive::default())
    }
}

/// The settings of [`Mode::Adaptive`].
#[derive(Clone, Copy, PartialEq)]
pub struct Adaptive {
    pub(crate) inner: machine::Adaptive,
}

impl fmt::Debug for Adaptive {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let a = &self.inner;
        f.debug_struct("Adaptive")
            .field("retry_first", &a.retry_first)
            .field("retry_max", &a.retry_max)
            .field("healthy_period", &a.healthy_period)
            .field("min_cooldown", &a.min_cooldown)
            .field("flapping_window", &a.flapping_window)
            .finish()
    }
}

impl Default for Adaptive {
    fn default() -> Self {
        Self {
            inner: machine::Adaptive {
                retry_first: Duration::from_secs(30),
                retry_max: Duration::from_secs(600),
                healthy_period: Duration::from_secs(600),
                min_cooldown: Duration::from_secs(5),
                flapping_window: Duration::from_secs(3600),
            },
        }
    }
}

impl Adaptive {
    /// After an exhausted cycle, the next one starts `first` later (while
    /// the dependency is still down), each further one twice as late, up to
    /// `max`; every delay is spread by ±10%. Defaults 30 s and 10 min.
    ///
    /// # Panics
    /// If `first` is zero or `max < first`.
    pub fn retry_exhausted(mut self, first: Duration, max: Duration) -> Self {
        assert!(
            !first.is_zero() && max >= first,
            "retry_exhausted needs 0 < first <= max"
        );
        self.inner.retry_first = first;
        self.inner.retry_max = max;
        self
    }

    /// How long the dependency must stay healthy before the retry delay
    /// starts over at its first value (default 10 min).
    pub fn healthy_period(mut self, period: Duration) -> Self {
        self.inner.healthy_period = period;
        self
    }

    /// The cooldown after a success is `min`, doubled for each other
    /// recovery within `window` before it, up to the builder's
    /// [`cooldown`](Builder::cooldown). Defaults 5 s and 1 h.
    pub fn cooldown(mut self, min: Duration, window: Duration) -> Self {
        self.inner.min_cooldown = min;
        self.inner.flapping_window = window;
        self
    }
}

/// A recovery's track record (seed enhancement 4): outages, downtime,
/// MTTR, success rate and attempts per recovery, since it started and over
/// the last hour, and the time it spent in each state.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct TrackRecord {
    /// Since the recovery started.
    pub since_start: Period,
    /// Over the last hour.
    pub last_hour: Period,
    /// How long the recovery has been running.
    pub observed: Duration,
    /// How long the outage still open has lasted so far, if one is.
    pub open_outage: Option<Duration>,
    /// Time spent idle since start.
    pub time_idle: Duration,
    /// Time spent recovering (attempts and their backoff) since start.
    pub time_recovering: Duration,
    /// Time spent cooling down since start.
    pub time_cooling_down: Duration,
    /// Time spent exhausted since start.
    pub time_exhausted: Duration,
    /// Time spent in each state over the last hour: idle, recovering,
    /// cooling down, exhausted.
    pub last_hour_in_state: [Duration; 4],
}

/// Figures over a period of time.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Period {
    /// Outages that ended in the period.
    pub outages: u64,
    /// Time down in the period: the outages that ended in it, and the one
    /// still open.
    pub downtime: Duration,
    /// Mean time to recover over the outages that ended in the period,
    /// each of its whole length (as [`Status::mttr`]).
    pub mttr: Option<Duration>,
    /// Cycles that succeeded.
    pub cycles_succeeded: u64,
    /// Cycles that ended exhausted.
    pub cycles_exhausted: u64,
    /// Succeeded over ended cycles (a cancelled cycle is neither).
    pub success_rate: Option<f64>,
    /// Mean attempts of the cycles that succeeded.
    pub attempts_per_recovery: Option<f64>,
}

impl Period {
    fn from_span(span: machine::Span, open: Duration) -> Self {
        let ended = span.cycles_ok + span.cycles_exhausted;
        Period {
            outages: span.outages,
            downtime: span.downtime + open,
            mttr: (span.outages > 0)
                .then(|| Duration::from_secs_f64(span.lengths.as_secs_f64() / span.outages as f64)),
            cycles_succeeded: span.cycles_ok,
            cycles_exhausted: span.cycles_exhausted,
            success_rate: (ended > 0).then(|| span.cycles_ok as f64 / ended as f64),
            attempts_per_recovery: (span.cycles_ok > 0)
                .then(|| span.attempts_ok as f64 / span.cycles_ok as f64),
        }
    }
}

/// A point-in-time view of a recovery, for reports.
#[derive(Clone, Debug, PartialEq)]
pub struct Status {
    /// The dependency's name.
    pub name: Arc<str>,
    /// Current state.
    pub state: RecoveryState,
    /// The rules it follows.
    pub mode: Mode,
    /// Attempt of the running (or last) cycle, 0 when none ran yet.
    pub attempt: u32,
    /// Attempts per cycle.
    pub max_attempts: u32,
    /// When the last attempt started (wall clock).
    pub last_attempt_at: Option<SystemTime>,
    /// Why the last failed attempt failed, capped at [`MAX_ERROR_LEN`] bytes.
    pub last_error: Option<String>,
    /// Recoveries: outages that ended (by our cycle or by themselves), plus
    /// cycles that succeeded with no outage known (a manual trigger).
    pub recoveries: u64,
    /// Failed attempts.
    pub failed_attempts: u64,
    /// Cycles that ended exhausted.
    pub exhausted_cycles: u64,
    /// Mean time to recover (dependency down to back) over the last 20
    /// recoveries.
    pub mttr: Option<Duration>,
    /// When cooling down: time left.
    pub cooldown_remaining: Option<Duration>,
    /// When exhausted in adaptive mode: time until the next cycle starts by
    /// itself (if the dependency is still down then).
    pub next_retry_in: Option<Duration>,
    /// Recoveries that ended in the last flapping window (adaptive; 0 in
    /// strict mode): what the cooldown grows with.
    pub recent_recoveries: usize,
    /// The prerequisite the next attempt waits for (the root cause of the
    /// outage), when the dependency set declares prerequisites (see
    /// [`Dependency::needs`](crate::health::Dependency::needs)) and one is
    /// down.
    pub waiting_for: Option<Arc<str>>,
    /// The track record: outages, downtime, MTTR, success rate, time in
    /// each state, since start and over the last hour.
    pub record: TrackRecord,
}

type AlertHook = Box<dyn Fn(&Status) + Send + Sync>;

struct Config {
    mode: Mode,
    max_attempts: u32,
    backoff: Backoff,
    attempt_timeout: Duration,
    trigger_after: u32,
}

/// The breaker signal counts the machine has been told about.
#[derive(Clone, Copy, Debug, Default)]
struct Seen {
    generation: u64,
    opens: u64,
    heals: u64,
}

/// The machine, the signals it has seen, and the effects the task has yet
/// to carry out: one lock, held only to feed an event or take a copy.
struct State {
    machine: Machine,
    seen: Seen,
    effects: Vec<Effect>,
}

impl State {
    /// Feeds the breaker's openings, heals and state since the last look.
    /// `signal` was read before the lock was taken; a reading older than
    /// what was seen changes nothing.
    ///
    /// Between two looks (microseconds apart: the task reacts at once) the
    /// breaker may have opened and healed: the generations of the latest
    /// opening and heal say which came last, and the start of the outage
    /// the heal ended is published with it, so that outage is recorded with
    /// its true length. Several outages that open and heal between two looks
    /// count as one.
    fn sync(&mut self, signal: Option<Signal>, now: Instant) {
        let Some(signal) = signal else { return };
        let generation = signal.word >> 3;
        if generation <= self.seen.generation
            && signal.opens <= self.seen.opens
            && signal.heals <= self.seen.heals
        {
            return;
        }
        let opened = signal.opens > self.seen.opens;
        let healed = signal.heals > self.seen.heals;
        // An outage that began before the last one recorded ended was
        // recorded already: our cycle ended it while the breaker could not
        // be closed (forced open or disabled), so the breaker still holds
        // its start.
        let last_end = self.machine.last_outage_end();
        let healed_outage = |events: &mut Vec<Event>, open: bool| {
            if let (true, Some(at)) = (open, signal.healed_outage_start) {
                if last_end.is_none_or(|end| at >= end) {
                    events.push(Event::BreakerOpened { at });
                }
            }
            events.push(Event::BreakerHealed {
                at: signal.closed_at,
            });
        };
        let mut events = Vec::new();
        match (opened, healed) {
            (true, true) if signal.healed_gen > signal.opened_gen => {
                // Opened, then healed last.
                healed_outage(&mut events, !self.machine.outage_open());
            }
            (true, true) => {
                // Healed an outage, then opened again last.
                healed_outage(&mut events, !self.machine.outage_open());
                events.push(Event::BreakerOpened {
                    at: signal.opened_at,
                });
            }
            (true, false) => events.push(Event::BreakerOpened {
                at: signal.opened_at,
            }),
            (false, true) => healed_outage(&mut events, false),
            (false, false) => {}
        }
        for event in events {
            let reply = self.machine.on(event, now);
            self.effects.extend(reply.effects);
        }
        if generation > self.seen.generation {
            let reply = self.machine.on(
                Event::BreakerState {
                    down: is_down(signal.state()),
                },
                now,
            );
            self.effects.extend(reply.effects);
            self.seen.generation = generation;
        }
        self.seen.opens = self.seen.opens.max(signal.opens);
        self.seen.heals = self.seen.heals.max(signal.heals);
    }
}

/// Whether a breaker in `state` says its dependency is down. `ForcedOpen`
/// and `Disabled` are a person's decision, not a sign either way.
fn is_down(state: crate::circuit_breaker::State) -> bool {
    matches!(
        state,
        crate::circuit_breaker::State::Open | crate::circuit_breaker::State::HalfOpen
    )
}

pub(crate) struct Shared {
    name: Arc<str>,
    /// The `dependency` label of its metrics: its name, or its keyed
    /// registry's.
    #[cfg_attr(not(feature = "metrics"), allow(dead_code))]
    label: Arc<str>,
    cfg: Config,
    breaker: Option<(WeakBreaker, watch::Receiver<Signal>)>,
    state: Mutex<State>,
    /// Wakes the task: effects to carry out, or the stop.
    wake: Notify,
    /// Wakes waiters on the state (`wait_*`).
    changed: Notify,
    /// The machine is not idle (a cycle, a cooldown, an exhaustion): set
    /// under the state lock after every event, read without it (a keyed
    /// registry keeps such a key, see `Recovery::is_busy`).
    busy: AtomicBool,
    stopped: AtomicBool,
    /// Consecutive failures seen by `RecoveryTriggerLayer`s and `call`.
    layer_failures: AtomicU32,
    /// The layer triggered and no call has succeeded since.
    layer_down: AtomicBool,
    /// Call credits given back through the shared tally (see `crate::lease`).
    returned: crate::sync::atomic::AtomicU64,
    /// The prerequisites an attempt waits for, set by the dependency set
    /// that declares them. Holds no handle that keeps anything running.
    gate: std::sync::OnceLock<Gate>,
    /// The prerequisite an attempt is waiting for now.
    waiting_for: Mutex<Option<Arc<str>>>,
    /// The fleet this recovery coordinates with.
    #[cfg(feature = "fleet")]
    fleet: Option<crate::fleet::Member>,
}

/// Says which prerequisite an attempt must wait for (the root cause: the
/// deepest one down), if any.
pub(crate) type Gate = Box<dyn Fn() -> Option<Blocker> + Send + Sync>;

/// A prerequisite that is down.
pub(crate) struct Blocker {
    /// Its name.
    pub(crate) name: Arc<str>,
    /// Its recovery, triggered once for every dependent that waits.
    pub(crate) recovery: Option<Recovery>,
}

/// What the user gave the recovery to run: owned by the task alone, and
/// dropped when it stops, not with `Shared` (which calls in flight may hold
/// a while longer: `crate::lease`).
pub(super) struct User {
    pub(super) action: Box<dyn Fn(u32) -> BoxFuture + Send + Sync>,
    pub(super) alert: Option<AlertHook>,
    pub(super) sinks: Vec<Box<dyn Alert>>,
}

/// A [`Recovery`] that does not keep its task running.
#[derive(Clone, Debug)]
pub(crate) struct WeakRecovery(std::sync::Weak<Owner>);

impl WeakRecovery {
    pub(crate) fn upgrade(&self) -> Option<Recovery> {
        self.0.upgrade().map(|owner| Recovery { owner })
    }
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
            .field("state", &self.shared().status().state)
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
    pub fn trigger_manual(&self) -> TriggerOutcome {
        self.shared().trigger(Kind::Manual)
    }

    /// An automatic trigger (what the breaker, the monitor and the layer
    /// use): deferred while cooling down, ignored when exhausted.
    pub fn trigger_automatic(&self, reason: &str) -> TriggerOutcome {
        let outcome = self.shared().trigger(Kind::Automatic);
        tracing::debug!(dependency = self.name(), %outcome, reason, "recovery trigger");
        outcome
    }

    /// A handle that does not keep the recovery running.
    pub(crate) fn downgrade(&self) -> WeakRecovery {
        WeakRecovery(Arc::downgrade(&self.owner))
    }

    /// An early warning's trigger: the dependency is degraded, not down.
    /// Runs a cycle when idle (nothing else); starts no outage.
    pub(crate) fn trigger_early(&self, reason: &str) -> TriggerOutcome {
        let outcome = self.shared().trigger(Kind::Early);
        tracing::debug!(dependency = self.name(), %outcome, reason, "recovery trigger");
        outcome
    }

    /// The health monitor's entry point. A failing check is an automatic
    /// trigger. A passing one ends the outage (a running cycle is cancelled,
    /// `exhausted` returns to `idle`) unless the watched breaker is still
    /// open: then it starts a cycle, whose success closes the breaker,
    /// instead of leaving traffic to wait for the breaker's own probe.
    /// Returns the trigger outcome when it was one.
    pub fn report_check(&self, passed: bool) -> Option<TriggerOutcome> {
        self.shared().feed(Event::Check { passed })
    }

    /// Back to `idle`: cancels a running cycle, clears the cooldown and the
    /// deferral. Counters and MTTR history are kept.
    pub fn reset(&self) {
        self.shared().layer_failures.store(0, Ordering::Relaxed);
        self.shared().feed(Event::Reset);
    }

    /// A point-in-time view. Reading changes nothing.
    pub fn status(&self) -> Status {
        self.shared().status()
    }

    /// This recovery's part in its fleet (who holds the lease, the cycle
    /// it waits on, the last outcome published), if it was built with
    /// [`Builder::fleet`]. Reading changes nothing and waits on no network
    /// call.
    #[cfg(feature = "fleet")]
    #[cfg_attr(docsrs, doc(cfg(feature = "fleet")))]
    pub fn fleet_status(&self) -> Option<crate::fleet::MemberStatus> {
        self.shared().fleet.as_ref().map(|m| m.status())
    }

    /// Whether a cycle, a cooldown or an exhaustion is under way, as the
    /// machine last published it (one load, no lock: a keyed registry's
    /// sweep asks it under a shard's lock). It may lag the truth by what
    /// the task has not handled yet (a breaker's opening, a cooldown whose
    /// time is up): it errs on neither side for long, and a registry's
    /// sweep also checks the breaker, which covers the opening.
    pub(crate) fn is_busy(&self) -> bool {
        self.shared().busy.load(Ordering::SeqCst)
    }

    /// The watched breaker, if it watches one that still exists.
    #[cfg_attr(not(feature = "fleet"), allow(dead_code))]
    pub(crate) fn breaker(&self) -> Option<Breaker> {
        let (weak, _) = self.shared().breaker.as_ref()?;
        weak.upgrade()
    }

    /// The watched breaker's state, if it watches one that still exists.
    #[cfg_attr(not(feature = "fleet"), allow(dead_code))]
    pub(crate) fn breaker_state(&self) -> Option<crate::circuit_breaker::State> {
        let (weak, _) = self.shared().breaker.as_ref()?;
        weak.upgrade().map(|b| b.state())
    }

    /// Makes every attempt wait while `gate` names a prerequisite that is
    /// down. Set once, by the dependency set that declares prerequisites;
    /// false if one was set already.
    #[cfg(feature = "health")]
    pub(crate) fn set_gate(&self, gate: Gate) -> bool {
        self.shared().gate.set(gate).is_ok()
    }

    /// A layer that triggers this recovery after consecutive failures of the
    /// client it wraps (for clients without a breaker).
    pub fn layer(&self) -> RecoveryTriggerLayer {
        RecoveryTriggerLayer::new(self.clone())
    }

    /// Runs `future`, counting its failure (`Err`) towards the layer's
    /// consecutive-failure trigger, like a [`RecoveryTriggerLayer`] would. A refusal
    /// made by this crate (a breaker's rejection, around any error type, or
    /// a drain's) is not counted: see [`is_refusal`].
    pub async fn call<F, T, E>(&self, future: F) -> Result<T, E>
    where
        F: std::future::IntoFuture<Output = Result<T, E>>,
        E: 'static,
    {
        self.call_with(&crate::classify::ErrorsAsFailures, future)
            .await
    }

    /// Runs `future`, classifying its outcome with `classify` for the
    /// consecutive-failure trigger: only an [`Outcome::Failure`] counts
    /// towards it, a success resets it. A refusal made by this crate is not
    /// counted whatever `classify` says ([`is_refusal`]).
    ///
    /// With the `sqlx` feature,
    /// [`SqlxErrorsAsFailures`](crate::classify::sqlx::SqlxErrorsAsFailures)
    /// keeps the caller's errors (a constraint, data too long) from
    /// starting a recovery (an example is in its module docs).
    ///
    /// [`Outcome::Failure`]: crate::classify::Outcome::Failure
    pub async fn call_with<C, F, T, E>(&self, classify: &C, future: F) -> Result<T, E>
    where
        C: crate::classify::Classify<T, E>,
        F: std::future::IntoFuture<Output = Result<T, E>>,
        E: 'static,
    {
        let result = future.into_future().await;
        let outcome = match &result {
            Err(e) if is_refusal(e) => crate::classify::Outcome::Ignore,
            _ => classify.classify(&result),
        };
        self.record(outcome);
        result
    }

    pub(crate) fn record(&self, outcome: crate::classify::Outcome) {
        self.shared().record(outcome);
    }

    /// The state a layer's calls report to.
    pub(crate) fn shared_arc(&self) -> &Arc<Shared> {
        self.shared()
    }

    /// Waits until no cycle is running: the current cycle (if any) has ended.
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
            if pred(shared.status().state) || shared.stopped.load(Ordering::Acquire) {
                return;
            }
            // A cooldown, or the wait for a retry, ends by time alone:
            // wake for it too.
            let status = shared.status();
            match status.cooldown_remaining.or(status.next_retry_in) {
                Some(left) => {
                    tokio::select! {
                        () = &mut notified => {}
                        () = tokio::time::sleep(left) => {}
                    }
                }
                None => notified.await,
            }
        }
    }
}

pub use self::layer::is_refusal;

impl crate::lease::Leased for Shared {
    fn returned(&self) -> &crate::sync::atomic::AtomicU64 {
        &self.returned
    }
}

impl Shared {
    /// An outcome of a call through a [`RecoveryTriggerLayer`].
    pub(crate) fn record(&self, outcome: crate::classify::Outcome) {
        let shared = self;
        match outcome {
            crate::classify::Outcome::Success => {
                if shared.layer_failures.load(Ordering::Relaxed) != 0 {
                    shared.layer_failures.store(0, Ordering::Relaxed);
                }
                // The first success after the layer triggered: a sign the
                // dependency is back (one event, not one per call).
                if shared.layer_down.load(Ordering::Relaxed)
                    && shared.layer_down.swap(false, Ordering::AcqRel)
                {
                    shared.feed(Event::CallSucceeded);
                }
            }
            crate::classify::Outcome::Failure => {
                let n = shared.layer_failures.fetch_add(1, Ordering::AcqRel) + 1;
                if n >= shared.cfg.trigger_after {
                    shared.layer_failures.store(0, Ordering::Relaxed);
                    shared.trigger(Kind::Automatic);
                    // Raised after the trigger is in: a success that sees
                    // it always comes after the trigger it answers.
                    shared.layer_down.store(true, Ordering::Release);
                }
            }
            crate::classify::Outcome::Ignore => {}
        }
    }

    fn signal(&self) -> Option<Signal> {
        self.breaker.as_ref().map(|(_, rx)| *rx.borrow())
    }

    fn trigger(&self, kind: Kind) -> TriggerOutcome {
        self.feed(Event::Trigger(kind))
            .expect("a trigger always has an outcome")
    }

    /// The outcome as the fleet changes it: a cycle that waits on another
    /// replica's runs elsewhere. Asked with no lock of the machine held.
    fn in_fleet(&self, outcome: Option<TriggerOutcome>) -> Option<TriggerOutcome> {
        #[cfg(feature = "fleet")]
        if let (Some(TriggerOutcome::Started | TriggerOutcome::AlreadyRunning), Some(member)) =
            (outcome, &self.fleet)
        {
            if member.elsewhere() {
                return Some(TriggerOutcome::RunningElsewhere);
            }
        }
        outcome
    }

    /// Feeds one event (after the breaker's pending signals) and hands the
    /// effects to the task.
    fn feed(&self, event: Event) -> Option<TriggerOutcome> {
        let signal = self.signal();
        let now = Instant::now();
        let (outcome, wake) = {
            let mut state = lock(&self.state);
            state.sync(signal, now);
            let reply = state.machine.on(event, now);
            state.effects.extend(reply.effects);
            self.publish(&state);
            (reply.outcome, !state.effects.is_empty())
        };
        if wake {
            self.wake.notify_one();
        }
        self.changed.notify_waiters();
        self.in_fleet(outcome)
    }

    /// Publishes whether the machine is busy (called under the state lock
    /// after it changed).
    fn publish(&self, state: &State) {
        self.busy.store(state.machine.is_busy(), Ordering::SeqCst);
    }

    /// A status computed on a copy of the machine, with pending breaker
    /// signals and the time applied to the copy only.
    fn status(&self) -> Status {
        let signal = self.signal();
        let now = Instant::now();
        let mut copy = {
            let state = lock(&self.state);
            State {
                machine: state.machine.clone(),
                seen: state.seen,
                effects: Vec::new(),
            }
        };
        copy.sync(signal, now);
        let _ = copy.machine.on(Event::Tick, now);
        let m = &copy.machine;
        let wall = SystemTime::now();
        Status {
            name: self.name.clone(),
            state: m.state(now),
            mode: self.cfg.mode,
            attempt: m.attempt,
            max_attempts: self.cfg.max_attempts,
            last_attempt_at: m
                .last_attempt_at
                .map(|t| wall - now.saturating_duration_since(t)),
            last_error: m.last_error.clone().map(cap),
            recoveries: m.recoveries,
            failed_attempts: m.failed_attempts,
            exhausted_cycles: m.exhausted_cycles,
            mttr: m.mttr(),
            cooldown_remaining: m.cooldown_remaining(now),
            next_retry_in: m.retry_remaining(now),
            recent_recoveries: m.recent_recoveries(now),
            // What the task published, while the machine still recovers
            // (a reset the task has not seen yet ends the wait).
            waiting_for: if m.state(now) == RecoveryState::Recovering {
                lock(&self.waiting_for).clone()
            } else {
                None
            },
            record: track_record(m, now),
        }
    }
}

/// The machine's figures as a track record at `now`.
fn track_record(m: &Machine, now: Instant) -> TrackRecord {
    let ledger = &m.ledger;
    let observed = ledger
        .since
        .map_or(Duration::ZERO, |s| now.saturating_duration_since(s));
    let open = m.open_outage(now);
    // The open outage's part inside what was observed, and the last hour.
    let open_seen = open.map_or(Duration::ZERO, |d| d.min(observed));
    let [idle, recovering, cooling, exhausted] = ledger.in_state;
    TrackRecord {
        since_start: Period::from_span(ledger.since_start(), open_seen),
        last_hour: Period::from_span(ledger.last_hour(now), open_seen.min(machine::LAST_HOUR)),
        observed,
        open_outage: open,
        time_idle: idle,
        time_recovering: recovering,
        time_cooling_down: cooling,
        time_exhausted: exhausted,
        last_hour_in_state: ledger.in_state_last_hour(now),
    }
}

/// Caps an error text at [`MAX_ERROR_LEN`] bytes on a character boundary.
fn cap(text: String) -> String {
    crate::util::truncate_utf8(text, MAX_ERROR_LEN)
}

/// Configures a [`Recovery`].
pub struct Builder {
    name: Arc<str>,
    action: Box<dyn Fn(u32) -> BoxFuture + Send + Sync>,
    cfg: Config,
    cooldown: Duration,
    breaker: Option<Breaker>,
    /// The breaker's signal the recovery takes as seen: openings after it
    /// are its to recover (default: the signal when it is spawned).
    since: Option<Signal>,
    /// The `dependency` label of its metrics (default: its name).
    label: Option<Arc<str>>,
    alert: Option<AlertHook>,
    sinks: Vec<Box<dyn Alert>>,
    #[cfg(feature = "fleet")]
    fleet: Option<crate::fleet::Fleet>,
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
        let attempts = action.attempts().unwrap_or(3).max(1);
        let action = Arc::new(action);
        Self {
            name,
            action: Box::new(move |attempt| {
                let fut = action.recover_attempt(attempt);
                Box::pin(async move { fut.await.map_err(|e| cap(e.to_string())) })
            }),
            cfg: Config {
                mode: Mode::default(),
                max_attempts: attempts,
                backoff: Backoff::default(),
                attempt_timeout: Duration::from_secs(10),
                trigger_after: 3,
            },
            cooldown: Duration::from_secs(60),
            breaker: None,
            since: None,
            label: None,
            alert: None,
            sinks: Vec::new(),
            #[cfg(feature = "fleet")]
            fleet: None,
        }
    }

    /// Attempts per cycle before the cycle ends exhausted (default 3).
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

    /// Cooldown after a successful cycle (default 60 s); in adaptive mode
    /// the most it grows to for a flapping dependency.
    pub fn cooldown(mut self, cooldown: Duration) -> Self {
        self.cooldown = cooldown;
        self
    }

    /// Adaptive (the default) or the seed's strict rules.
    pub fn mode(mut self, mode: Mode) -> Self {
        self.cfg.mode = mode;
        self
    }

    /// Consecutive failures a [`RecoveryTriggerLayer`] counts before triggering
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
    /// The recovery holds only a weak reference to the breaker.
    pub fn watch(mut self, breaker: &Breaker) -> Self {
        self.breaker = Some(breaker.clone());
        self.since = None;
        self
    }

    /// Watches `breaker` as [`watch`](Self::watch) does, taking `since`
    /// (a signal it published earlier) as what was seen already: an
    /// opening between then and the spawn is this recovery's to recover.
    pub(crate) fn watch_since(mut self, breaker: &Breaker, since: Signal) -> Self {
        self.breaker = Some(breaker.clone());
        self.since = Some(since);
        self
    }

    /// Renames the recovery (a keyed registry names it after its key's
    /// breaker).
    pub(crate) fn renamed(mut self, name: Arc<str>) -> Self {
        self.name = name;
        self
    }

    /// Labels its metrics `label` rather than its name (a keyed
    /// registry's: one series per registry, not per key).
    pub(crate) fn metrics_label(mut self, label: Arc<str>) -> Self {
        self.label = Some(label);
        self
    }

    /// Drops the fleet it was given, if any: whether there was one.
    #[cfg(feature = "fleet")]
    pub(crate) fn without_fleet(mut self) -> (Self, bool) {
        let had = self.fleet.take().is_some();
        (self, had)
    }

    /// Called when a cycle ends exhausted, on the recovery's task: once per
    /// outage in adaptive mode, for every exhausted cycle in strict mode.
    pub fn on_exhausted<F>(mut self, alert: F) -> Self
    where
        F: Fn(&Status) + Send + Sync + 'static,
    {
        self.alert = Some(Box::new(alert));
        self
    }

    /// Sends an [`AlertEvent`] to `sink` when a cycle ends exhausted (once
    /// per outage in adaptive mode): a closure, [`LogAlert`], or a
    /// `WebhookAlert`. May be called more than once; every sink gets every
    /// alert.
    pub fn alert(mut self, sink: impl Alert) -> Self {
        self.sinks.push(Box::new(sink));
        self
    }

    /// Coordinates this recovery with the other replicas of `fleet`: one
    /// replica at a time runs a cycle for the dependency, the others wait
    /// on it, probe their breaker when it succeeds, and end their cycle
    /// as it ends (see [`crate::fleet`]).
    #[cfg(feature = "fleet")]
    #[cfg_attr(docsrs, doc(cfg(feature = "fleet")))]
    pub fn fleet(mut self, fleet: &crate::fleet::Fleet) -> Self {
        self.fleet = Some(fleet.clone());
        self
    }

    /// Starts the background task.
    ///
    /// # Panics
    /// Outside a tokio runtime; with a [fleet](Self::fleet) that
    /// coordinates a recovery of the same name already.
    pub fn spawn(self) -> Recovery {
        let breaker = self.breaker.as_ref().map(|b| {
            let rx = b.watch();
            (b.downgrade(), rx)
        });
        // What was seen of the breaker: its signal now, or the one given.
        let seen_signal = breaker
            .as_ref()
            .map(|(_, rx)| self.since.unwrap_or_else(|| *rx.borrow()));
        let seen = seen_signal.map_or(Seen::default(), |signal| Seen {
            generation: signal.word >> 3,
            opens: signal.opens,
            heals: signal.heals,
        });
        let jitter_seed = {
            use std::hash::{BuildHasher, Hasher};
            let mut h = std::collections::hash_map::RandomState::new().build_hasher();
            h.write(self.name.as_bytes());
            h.finish()
        };
        let mut machine = Machine::new(Rules {
            max_attempts: self.cfg.max_attempts,
            cooldown: self.cooldown,
            adaptive: match self.cfg.mode {
                Mode::Strict => None,
                Mode::Adaptive(a) => Some(a.inner),
            },
            jitter_seed,
        });
        if let (Some(b), Some(seen)) = (&self.breaker, seen_signal) {
            // A breaker already open when the recovery starts: the
            // dependency is down (an opening before we watched is not ours
            // to recover, but a check or trigger will find it down).
            let state = if self.since.is_some() {
                seen.state()
            } else {
                b.state()
            };
            if is_down(state) {
                let _ = machine.on(Event::BreakerState { down: true }, Instant::now());
            }
        }
        #[cfg(feature = "fleet")]
        let member = self.fleet.as_ref().map(|f| f.register(self.name.clone()));
        let busy = machine.is_busy();
        let shared = Arc::new(Shared {
            label: self.label.unwrap_or_else(|| self.name.clone()),
            name: self.name,
            cfg: self.cfg,
            breaker,
            state: Mutex::new(State {
                machine,
                seen,
                effects: Vec::new(),
            }),
            wake: Notify::new(),
            changed: Notify::new(),
            busy: AtomicBool::new(busy),
            stopped: AtomicBool::new(false),
            layer_failures: AtomicU32::new(0),
            layer_down: AtomicBool::new(false),
            returned: crate::sync::atomic::AtomicU64::new(0),
            gate: std::sync::OnceLock::new(),
            waiting_for: Mutex::new(None),
            #[cfg(feature = "fleet")]
            fleet: member,
        });
        let user = User {
            action: self.action,
            alert: self.alert,
            sinks: self.sinks,
        };
        tokio::spawn(task::run(shared.clone(), user));
        let recovery = Recovery {
            owner: Arc::new(Owner { shared }),
        };
        #[cfg(feature = "fleet")]
        if let Some(member) = &recovery.shared().fleet {
            member.attach(recovery.downgrade());
        }
        recovery
    }
}
