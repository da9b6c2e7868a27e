//! The recovery's background task: carries out the machine's effects with no
//! lock held, feeds it the breaker's signals, attempt outcomes and time.

use std::future::Future;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use std::time::Duration;

use tokio::time::{Instant, Sleep};

#[cfg(feature = "fleet")]
use super::fleet::{self, Held, Turn, TurnFuture};
use super::machine::{Effect, Event, Log};
use super::{BoxFuture, RecoveryState, Shared, User};
use crate::sync::atomic::Ordering;
use crate::sync::lock;

/// How often an attempt that waits for a prerequisite looks again.
const GATE_POLL: Duration = Duration::from_millis(200);

/// The attempt under way: its backoff wait, the wait for its prerequisites,
/// then the action.
struct Running {
    cycle: u64,
    attempt: u32,
    wait: Option<Pin<Box<Sleep>>>,
    /// The prerequisite waited for, once announced.
    waiting: Option<Arc<str>>,
    started: bool,
    action: Option<BoxFuture>,
    /// The turn in the fleet under way (the lease taken, or another
    /// replica's cycle waited on), kept across cancellations of `step`.
    #[cfg(feature = "fleet")]
    turn: Option<TurnFuture>,
    /// The turn was taken (the lease, or the local fallback).
    #[cfg(feature = "fleet")]
    turned: bool,
}

enum Step {
    /// The fleet's turn came to this.
    #[cfg(feature = "fleet")]
    Turn(Turn),
    Started,
    Done(Result<(), String>),
}

/// Without the fleet feature: never a lease.
#[cfg(not(feature = "fleet"))]
type Held = ();

impl Running {
    /// The next step of the attempt. Cancel-safe: progress lives in `self`.
    async fn step(&mut self, shared: &Shared, _held: &Held) -> Step {
        if !self.started {
            if let Some(wait) = &mut self.wait {
                wait.await;
                self.wait = None;
            }
            if let Some(gate) = shared.gate.get() {
                // Called with no lock held: it reads other components.
                while let Some(blocker) = gate() {
                    if self.waiting.as_ref() != Some(&blocker.name) {
                        waiting_for(shared, Some(blocker.name.clone()));
                        let name = &*shared.name;
                        tracing::warn!(
                            dependency = name,
                            waiting_for = &*blocker.name,
                            "Recovery of '{name}' waits for '{}', which it needs and which is down",
                            blocker.name
                        );
                        if let Some(recovery) = &blocker.recovery {
                            recovery.trigger_automatic(&format!("needed by {name}"));
                        }
                        self.waiting = Some(blocker.name);
                    }
                    tokio::time::sleep(GATE_POLL).await;
                }
                if let Some(was) = self.waiting.take() {
                    waiting_for(shared, None);
                    let name = &*shared.name;
                    tracing::info!(
                        dependency = name,
                        "'{was}' is back: recovery of '{name}' goes on"
                    );
                }
            }
            // The fleet's turn: the lease for this cycle, unless held.
            #[cfg(feature = "fleet")]
            if !self.turned
                && (self.turn.is_some() || fleet::needs_turn(shared, _held, self.cycle).is_some())
            {
                if self.turn.is_none() {
                    if let Some(member) = fleet::needs_turn(shared, _held, self.cycle) {
                        self.turn = Some(fleet::turn(member));
                    }
                }
                if let Some(turn) = &mut self.turn {
                    let turn = turn.await;
                    self.turn = None;
                    return Step::Turn(turn);
                }
            }
            self.started = true;
            return Step::Started;
        }
        match &mut self.action {
            Some(action) => Step::Done(action.await),
            None => std::future::pending().await,
        }
    }
}

async fn step(running: &mut Option<Running>, shared: &Shared, held: &Held) -> Step {
    match running {
        Some(r) => r.step(shared, held).await,
        None => std::future::pending().await,
    }
}

/// Publishes the prerequisite an attempt waits for.
fn waiting_for(shared: &Shared, name: Option<Arc<str>>) {
    *lock(&shared.waiting_for) = name;
    shared.changed.notify_waiters();
}

pub(super) async fn run(shared: Arc<Shared>, user: User) {
    let mut signal = shared.breaker.as_ref().map(|(_, rx)| rx.clone());
    let mut running: Option<Running> = None;
    #[cfg(feature = "fleet")]
    let mut held: Held = None;
    #[cfg(not(feature = "fleet"))]
    let held: Held = ();
    #[cfg(feature = "fleet")]
    let mut view = shared.fleet.as_ref().map(|m| m.view.clone());
    #[cfg(feature = "fleet")]
    let mut seen_news = None;
    loop {
        let woken = shared.wake.notified();
        tokio::pin!(woken);
        woken.as_mut().enable();
        if shared.stopped.load(Ordering::Acquire) {
            return;
        }
        let latest = signal.as_mut().map(|rx| *rx.borrow_and_update());
        let now = Instant::now();
        let (effects, deadline) = {
            let mut state = lock(&shared.state);
            state.sync(latest, now);
            let reply = state.machine.on(Event::Tick, now);
            state.effects.extend(reply.effects);
            shared.publish(&state);
            (std::mem::take(&mut state.effects), state.machine.deadline())
        };
        let acted = !effects.is_empty();
        for effect in effects {
            carry_out(&shared, &user, effect, &mut running);
        }
        if acted {
            shared.changed.notify_waiters();
        }
        // A lease whose cycle is over (cancelled, reset) goes.
        #[cfg(feature = "fleet")]
        {
            let (cycle, state) = {
                let state = lock(&shared.state);
                (state.machine.cycle(), state.machine.state(Instant::now()))
            };
            fleet::release_if_over(
                &shared,
                &mut held,
                cycle,
                state == RecoveryState::Recovering,
            );
        }
        let breaker_changed = async {
            match signal.as_mut() {
                Some(rx) => {
                    if rx.changed().await.is_err() {
                        // The breaker is gone: nothing more to watch.
                        std::future::pending::<()>().await;
                    }
                }
                None => std::future::pending().await,
            }
        };
        #[cfg(feature = "fleet")]
        let fleet_news = async {
            match view.as_mut() {
                Some(rx) => {
                    if rx.changed().await.is_err() {
                        std::future::pending::<()>().await;
                    }
                }
                None => std::future::pending().await,
            }
        };
        #[cfg(not(feature = "fleet"))]
        let fleet_news = std::future::pending::<()>();
        let cooldown_end = async {
            match deadline {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            // Effects handed over first (a cancellation beats an attempt).
            biased;
            () = &mut woken => {}
            () = breaker_changed => {}
            () = cooldown_end => {}
            () = fleet_news => {
                #[cfg(feature = "fleet")]
                if let Some(rx) = view.as_ref() {
                    fleet::on_news(&shared, rx, &mut seen_news);
                }
            }
            step = step(&mut running, &shared, &held) => {
                let r = running.as_mut().expect("a step comes from an attempt");
                let (cycle, attempt) = (r.cycle, r.attempt);
                let started = matches!(step, Step::Started);
                #[cfg(feature = "fleet")]
                let mut done: Option<Result<(), String>> = None;
                let event = match step {
                    #[cfg(feature = "fleet")]
                    Step::Turn(Turn::Run(guard)) => {
                        r.turned = true;
                        held = guard.map(|g| (cycle, g));
                        continue;
                    }
                    #[cfg(feature = "fleet")]
                    Step::Turn(Turn::Ended { holder, result }) => {
                        running = None;
                        let name = &*shared.name;
                        match &result {
                            Ok(()) => tracing::info!(
                                dependency = name,
                                holder = &*holder,
                                "Recovery successful for: {name} (on replica '{holder}')"
                            ),
                            Err(error) => tracing::warn!(
                                dependency = name,
                                holder = &*holder,
                                "Recovery failed for: {name} ({error})"
                            ),
                        }
                        Event::EndedElsewhere { cycle, attempt, result }
                    }
                    Step::Started => Event::AttemptStarted { cycle, attempt },
                    Step::Done(result) => {
                        running = None;
                        #[cfg(feature = "fleet")]
                        {
                            done = Some(result.clone());
                        }
                        Event::AttemptDone { cycle, attempt, result }
                    }
                };
                // The breaker's news first: an opening or heal that happened
                // while the attempt ran is ordered before its outcome.
                let latest = signal.as_mut().map(|rx| *rx.borrow_and_update());
                let now = Instant::now();
                let mut state = lock(&shared.state);
                state.sync(latest, now);
                let reply = state.machine.on(event, now);
                state.effects.extend(reply.effects);
                shared.publish(&state);
                let current = state.machine.cycle() == cycle;
                #[cfg(feature = "fleet")]
                let after = state.machine.state(now);
                drop(state);
                #[cfg(feature = "fleet")]
                {
                    if started && current {
                        fleet::attempt_started(&held, cycle, attempt);
                    }
                    if let Some(result) = &done {
                        fleet::after_attempt(&mut held, cycle, attempt, result, after, current);
                    }
                }
                match running.as_mut() {
                    // The machine still wants this attempt: run the action
                    // now (never for a cycle cancelled meanwhile).
                    Some(r) if current && started => {
                        r.action = Some(start_action(&shared, &user, attempt))
                    }
                    Some(_) if !current => running = None,
                    _ => {}
                }
            }
        }
    }
}

fn start_action(shared: &Arc<Shared>, user: &User, attempt: u32) -> BoxFuture {
    let limit = shared.cfg.attempt_timeout;
    // A panic in the action (making the future, or polling it) is a failed
    // attempt, not the end of the recovery's task.
    let attempt = match catch_unwind(AssertUnwindSafe(|| (user.action)(attempt))) {
        Ok(attempt) => attempt,
        Err(panic) => {
            let error = format!("attempt panicked: {}", panic_message(&*panic));
            return Box::pin(std::future::ready(Err(error)));
        }
    };
    Box::pin(async move {
        match tokio::time::timeout(limit, CatchPanic(attempt)).await {
            Ok(result) => result,
            Err(_) => Err(format!("attempt timed out after {limit:?}")),
        }
    })
}

/// Polls the attempt, turning a panic into a failed attempt.
struct CatchPanic(BoxFuture);

impl Future for CatchPanic {
    type Output = Result<(), String>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match catch_unwind(AssertUnwindSafe(|| self.0.as_mut().poll(cx))) {
            Ok(poll) => poll,
            Err(panic) => Poll::Ready(Err(format!("attempt panicked: {}", panic_message(&*panic)))),
        }
    }
}

fn panic_message(panic: &(dyn std::any::Any + Send)) -> &str {
    panic
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| panic.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("(no message)")
}

fn carry_out(shared: &Arc<Shared>, user: &User, effect: Effect, running: &mut Option<Running>) {
    let name = &*shared.name;
    let max = shared.cfg.max_attempts;
    match effect {
        Effect::Attempt { cycle, attempt } => {
            let wait = (attempt >= 2).then(|| {
                let delay = shared.cfg.backoff.delay(attempt);
                tracing::info!(
                    dependency = name,
                    "Applying backoff delay: {:.1}s",
                    delay.as_secs_f64()
                );
                Box::pin(tokio::time::sleep(delay))
            });
            if running.as_ref().is_some_and(|r| r.waiting.is_some()) {
                waiting_for(shared, None);
            }
            *running = Some(Running {
                cycle,
                attempt,
                wait,
                waiting: None,
                started: false,
                action: None,
                #[cfg(feature = "fleet")]
                turn: None,
                #[cfg(feature = "fleet")]
                turned: false,
            });
        }
        Effect::Cancel => {
            if running.take().is_some_and(|r| r.waiting.is_some()) {
                waiting_for(shared, None);
            }
        }
        Effect::CloseBreaker => {
            let breaker = shared.breaker.as_ref().and_then(|(weak, _)| weak.upgrade());
            if breaker.is_some_and(|b| b.close()) {
                shared.feed(Event::ClosedByUs);
            }
        }
        Effect::Alert => {
            if user.alert.is_none() && user.sinks.is_empty() {
                return;
            }
            let status = shared.status();
            if let Some(alert) = &user.alert {
                if catch_unwind(AssertUnwindSafe(|| alert(&status))).is_err() {
                    tracing::error!(dependency = name, "the exhaustion alert hook panicked");
                }
            }
            // The root cause: the prerequisite that is down, if one is
            // (asked with no lock held), else the dependency itself.
            let root = shared.gate.get().and_then(|gate| gate()).map(|b| b.name);
            let event = super::AlertEvent::exhausted(&status, root);
            for sink in &user.sinks {
                if catch_unwind(AssertUnwindSafe(|| sink.alert(&event))).is_err() {
                    tracing::error!(dependency = name, "an alert sink panicked");
                }
            }
        }
        Effect::Log(log) => self::log(shared, log, name, max),
        Effect::Outage(_lasted) => {
            #[cfg(feature = "metrics")]
            metrics::histogram!(
                crate::metrics::OUTAGE_DURATION,
                "dependency" => shared.label.to_string()
            )
            .record(_lasted.as_secs_f64());
        }
    }
}

fn log(shared: &Shared, log: Log, name: &str, max: u32) {
    match log {
        Log::Opened => tracing::info!(
            dependency = name,
            "Circuit breaker '{name}' opened, triggering auto-recovery"
        ),
        Log::Started { reason } => {
            tracing::debug!(
                dependency = name,
                reason = reason.as_str(),
                "recovery cycle started"
            )
        }
        Log::Attempt { attempt } => {
            count(shared, "attempt");
            tracing::info!(
                dependency = name,
                attempt,
                max,
                "Triggering recovery for: {name} (attempt {attempt}/{max})"
            )
        }
        Log::AttemptFailed { attempt, error } => {
            count(shared, "failure");
            tracing::error!(
                dependency = name,
                attempt,
                max,
                error = %error,
                "Recovery attempt {attempt}/{max} failed for: {name}: {error}"
            )
        }
        Log::Succeeded => {
            count(shared, "success");
            tracing::info!(dependency = name, "Recovery successful for: {name}")
        }
        Log::Exhausted { retry_in, alert } => {
            count(shared, "exhausted");
            tracing::error!(dependency = name, "Recovery failed for: {name}");
            match retry_in {
                None => tracing::error!(
                    dependency = name,
                    "Recovery for '{name}' exhausted {max} attempts: manual intervention required"
                ),
                Some(after) if alert => tracing::error!(
                    dependency = name,
                    retry_in_s = after.as_secs_f64(),
                    "Recovery for '{name}' exhausted {max} attempts: retrying in {:.0}s while it is down",
                    after.as_secs_f64()
                ),
                Some(after) => tracing::warn!(
                    dependency = name,
                    retry_in_s = after.as_secs_f64(),
                    "Recovery for '{name}' exhausted {max} attempts again: retrying in {:.0}s",
                    after.as_secs_f64()
                ),
            }
        }
        Log::Healed { was, how } => {
            count(shared, "healed");
            let was: RecoveryState = was;
            tracing::info!(
                dependency = name,
                was = %was,
                "Dependency '{name}' is healthy again ({}); recovery back to idle",
                how.as_str()
            )
        }
        Log::EndedElsewhere { recovered } => {
            count(
                shared,
                if recovered {
                    "success_elsewhere"
                } else {
                    "exhausted_elsewhere"
                },
            );
        }
        Log::DeferredDropped => tracing::info!(
            dependency = name,
            "Deferred recovery dropped: dependency is up"
        ),
    }
}

fn count(_shared: &Shared, _what: &'static str) {
    #[cfg(feature = "metrics")]
    {
        let name = _shared.label.to_string();
        if _what == "attempt" {
            metrics::counter!(crate::metrics::RECOVERY_ATTEMPTS, "dependency" => name).increment(1);
        } else {
            metrics::counter!(
                crate::metrics::RECOVERY_OUTCOMES,
                "dependency" => name,
                "outcome" => _what
            )
            .increment(1);
        }
    }
}

#[allow(dead_code)]
fn _assert_send(shared: Arc<Shared>, user: User) -> impl Future<Output = ()> + Send {
    run(shared, user)
}
