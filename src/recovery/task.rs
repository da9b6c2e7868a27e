//! The recovery's background task: carries out the machine's effects with no
//! lock held, feeds it the breaker's signals, attempt outcomes and time.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use tokio::time::{Instant, Sleep};

use super::machine::{Effect, Event, Log};
use super::{BoxFuture, RecoveryState, Shared};
use crate::sync::lock;

/// The attempt under way: its backoff wait, then the action.
struct Running {
    cycle: u64,
    attempt: u32,
    wait: Option<Pin<Box<Sleep>>>,
    started: bool,
    action: Option<BoxFuture>,
}

enum Step {
    Started,
    Done(Result<(), String>),
}

impl Running {
    /// The next step of the attempt. Cancel-safe: progress lives in `self`.
    async fn step(&mut self) -> Step {
        if !self.started {
            if let Some(wait) = &mut self.wait {
                wait.await;
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

async fn step(running: &mut Option<Running>) -> Step {
    match running {
        Some(r) => r.step().await,
        None => std::future::pending().await,
    }
}

pub(super) async fn run(shared: Arc<Shared>) {
    let mut signal = shared.breaker.as_ref().map(|(_, rx)| rx.clone());
    let mut running: Option<Running> = None;
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
            (std::mem::take(&mut state.effects), state.machine.deadline())
        };
        let acted = !effects.is_empty();
        for effect in effects {
            carry_out(&shared, effect, &mut running);
        }
        if acted {
            shared.changed.notify_waiters();
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
        let cooldown_end = async {
            match deadline {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            () = &mut woken => {}
            () = breaker_changed => {}
            () = cooldown_end => {}
            step = step(&mut running) => {
                let r = running.as_mut().expect("a step comes from an attempt");
                let (cycle, attempt) = (r.cycle, r.attempt);
                let event = match step {
                    Step::Started => {
                        r.action = Some(start_action(&shared));
                        Event::AttemptStarted { cycle, attempt }
                    }
                    Step::Done(result) => {
                        running = None;
                        Event::AttemptDone { cycle, attempt, result }
                    }
                };
                let mut state = lock(&shared.state);
                let reply = state.machine.on(event, Instant::now());
                state.effects.extend(reply.effects);
                let current = state.machine.cycle() == cycle;
                drop(state);
                if !current {
                    running = None;
                }
            }
        }
    }
}

fn start_action(shared: &Arc<Shared>) -> BoxFuture {
    let attempt = (shared.action)();
    let limit = shared.cfg.attempt_timeout;
    Box::pin(async move {
        match tokio::time::timeout(limit, attempt).await {
            Ok(result) => result,
            Err(_) => Err(format!("attempt timed out after {limit:?}")),
        }
    })
}

fn carry_out(shared: &Arc<Shared>, effect: Effect, running: &mut Option<Running>) {
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
            *running = Some(Running {
                cycle,
                attempt,
                wait,
                started: false,
                action: None,
            });
        }
        Effect::Cancel => *running = None,
        Effect::CloseBreaker => {
            if let Some(breaker) = shared.breaker.as_ref().and_then(|(weak, _)| weak.upgrade()) {
                breaker.close();
            }
        }
        Effect::Alert => {
            if let Some(alert) = &shared.alert {
                alert(&shared.status());
            }
        }
        Effect::Log(log) => self::log(shared, log, name, max),
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
        Log::Exhausted => {
            count(shared, "exhausted");
            tracing::error!(dependency = name, "Recovery failed for: {name}");
            tracing::error!(
                dependency = name,
                "Recovery for '{name}' exhausted {max} attempts: manual intervention required"
            );
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
        Log::DeferredDropped => tracing::info!(
            dependency = name,
            "Deferred recovery dropped: dependency is up"
        ),
    }
}

fn count(_shared: &Shared, _what: &'static str) {
    #[cfg(feature = "metrics")]
    {
        let name = _shared.name.to_string();
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
fn _assert_send(shared: Arc<Shared>) -> impl Future<Output = ()> + Send {
    run(shared)
}
