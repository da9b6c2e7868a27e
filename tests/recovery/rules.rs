use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::eventually;

use tokio::time::Instant;
use tower::{Service, ServiceBuilder, ServiceExt, service_fn};
use tower_recovery::circuit_breaker::{Breaker, State};
use tower_recovery::recovery::{Backoff, RecoveryState, TriggerOutcome};

/// An action whose attempts succeed or fail as `healthy` says, recording when
/// each attempt started.
#[derive(Clone, Default)]
struct Script {
    healthy: Arc<std::sync::atomic::AtomicBool>,
    hang: Arc<std::sync::atomic::AtomicBool>,
    starts: Arc<Mutex<Vec<Instant>>>,
}

impl Script {
    fn action(
        &self,
    ) -> impl Fn() -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), String>> + Send>>
    + Send
    + Sync
    + 'static {
        let me = self.clone();
        move || {
            let me = me.clone();
            Box::pin(async move {
                me.starts.lock().unwrap().push(Instant::now());
                if me.hang.load(Ordering::SeqCst) {
                    std::future::pending::<()>().await;
                }
                if me.healthy.load(Ordering::SeqCst) {
                    Ok(())
                } else {
                    Err("Connection refused".to_string())
                }
            })
        }
    }
    fn set_healthy(&self, up: bool) {
        self.healthy.store(up, Ordering::SeqCst);
    }
    fn offsets(&self, t0: Instant) -> Vec<Duration> {
        self.starts
            .lock()
            .unwrap()
            .iter()
            .map(|t| *t - t0)
            .collect()
    }
    fn attempts(&self) -> usize {
        self.starts.lock().unwrap().len()
    }
}

fn breaker() -> Breaker {
    Breaker::builder("model_server")
        .consecutive_failures(1)
        .open_duration(Duration::from_secs(30))
        .build()
}

fn trip(b: &Breaker) {
    b.try_acquire().unwrap().failure();
}

const S: Duration = Duration::from_secs(1);

#[tokio::test(start_paused = true)]
async fn triggers_coalesce_and_say_what_became_of_them() {
    let script = Script::default();
    let recovery = crate::strict("db", script.action()).spawn();
    assert_eq!(recovery.trigger_manual(), TriggerOutcome::Started);
    assert_eq!(recovery.trigger_manual(), TriggerOutcome::AlreadyRunning);
    assert_eq!(
        recovery.trigger_automatic("test"),
        TriggerOutcome::AlreadyRunning
    );
    recovery.wait_idle_or_cooling().await;
    assert_eq!(recovery.status().state, RecoveryState::Exhausted);
    assert_eq!(script.attempts(), 3, "one cycle for three triggers");
    assert_eq!(recovery.trigger_automatic("test"), TriggerOutcome::Ignored);
    script.set_healthy(true);
    assert_eq!(
        recovery.trigger_manual(),
        TriggerOutcome::Started,
        "manual leaves exhausted"
    );
    recovery.wait_idle_or_cooling().await;
    assert_eq!(recovery.status().state, RecoveryState::CoolingDown);
    assert_eq!(recovery.trigger_automatic("test"), TriggerOutcome::Deferred);
}

#[tokio::test(start_paused = true)]
async fn backoff_delays_are_zero_two_and_four_seconds() {
    let script = Script::default();
    let recovery = crate::strict("model_server", script.action()).spawn();
    let t0 = Instant::now();
    recovery.trigger_manual();
    recovery.wait_idle_or_cooling().await;
    assert_eq!(script.offsets(t0), [Duration::ZERO, 2 * S, 6 * S]);
    let status = recovery.status();
    assert_eq!(
        (status.state, status.attempt, status.max_attempts),
        (RecoveryState::Exhausted, 3, 3)
    );
    assert_eq!(status.failed_attempts, 3);
    assert_eq!(status.last_error.as_deref(), Some("Connection refused"));

    // Custom backoff and attempts.
    let script = Script::default();
    let recovery = crate::strict("x", script.action())
        .max_attempts(4)
        .backoff(Backoff::new(Duration::from_millis(100), 3.0))
        .spawn();
    let t0 = Instant::now();
    recovery.trigger_manual();
    recovery.wait_idle_or_cooling().await;
    let ms = |n| Duration::from_millis(n);
    assert_eq!(script.offsets(t0), [ms(0), ms(300), ms(1200), ms(3900)]);
}

#[tokio::test(start_paused = true)]
async fn a_hung_attempt_fails_at_the_attempt_timeout() {
    let script = Script::default();
    script.hang.store(true, Ordering::SeqCst);
    let recovery = crate::strict("db", script.action()).spawn();
    let t0 = Instant::now();
    recovery.trigger_manual();
    eventually("attempt 1 started", || script.attempts() == 1).await;
    tokio::time::sleep(Duration::from_millis(10_001)).await;
    let status = recovery.status();
    assert_eq!(status.attempt, 1);
    assert!(status.last_error.unwrap().contains("timed out after 10s"));
    // Attempt 2 starts 2 s after the timeout of attempt 1.
    recovery.wait_idle_or_cooling().await;
    assert_eq!(script.offsets(t0), [Duration::ZERO, 12 * S, 26 * S]);
}

#[tokio::test(start_paused = true)]
async fn success_closes_the_breaker_and_starts_the_cooldown() {
    let b = breaker();
    let script = Script::default();
    let recovery = crate::strict("model_server", script.action())
        .watch(&b)
        .spawn();
    trip(&b);
    assert_eq!(
        recovery.status().state,
        RecoveryState::Recovering,
        "the breaker's opening is seen at once"
    );
    eventually("attempt 1 ran", || recovery.status().failed_attempts == 1).await;
    // Attempt 1 fails; the dependency comes back before attempt 2.
    tokio::time::sleep(S).await;
    assert_eq!(b.state(), State::Open, "left open on failure");
    script.set_healthy(true);
    recovery.wait_idle_or_cooling().await;
    assert_eq!(b.state(), State::Closed);
    let status = recovery.status();
    assert_eq!(status.state, RecoveryState::CoolingDown);
    assert_eq!(status.recoveries, 1);
    assert_eq!(status.cooldown_remaining, Some(Duration::from_secs(60)));
    assert_eq!(
        status.mttr,
        Some(2 * S),
        "open at 0, recovered by attempt 2 at 2 s"
    );
    tokio::time::sleep(Duration::from_millis(59_999)).await;
    assert_eq!(recovery.status().state, RecoveryState::CoolingDown);
    tokio::time::sleep(Duration::from_millis(1)).await;
    assert_eq!(
        recovery.status().state,
        RecoveryState::Idle,
        "at exactly the end"
    );
}

#[tokio::test(start_paused = true)]
async fn forced_open_is_never_changed_by_recovery() {
    let b = breaker();
    let script = Script::default();
    script.set_healthy(true);
    let recovery = crate::strict("model_server", script.action())
        .watch(&b)
        .spawn();
    b.force_open();
    assert_eq!(recovery.trigger_manual(), TriggerOutcome::Started);
    recovery.wait_idle_or_cooling().await;
    assert_eq!(recovery.status().recoveries, 1);
    assert_eq!(b.state(), State::ForcedOpen);
}

#[tokio::test(start_paused = true)]
async fn deferred_trigger_is_honoured_only_if_still_down() {
    // Still down at the end of the cooldown: a new cycle.
    let b = breaker();
    let script = Script::default();
    script.set_healthy(true);
    let recovery = crate::strict("model_server", script.action())
        .watch(&b)
        .spawn();
    trip(&b);
    recovery.wait_idle_or_cooling().await;
    assert_eq!(b.state(), State::Closed);
    trip(&b); // opens again during the cooldown
    assert_eq!(
        recovery.status().state,
        RecoveryState::CoolingDown,
        "deferred"
    );
    assert_eq!(script.attempts(), 1);
    tokio::time::sleep(Duration::from_millis(59_999)).await;
    assert_eq!(
        script.attempts(),
        1,
        "nothing before the end of the cooldown"
    );
    tokio::time::sleep(Duration::from_millis(2)).await;
    assert_eq!(script.attempts(), 2, "honoured at the end of the cooldown");
    assert_eq!(recovery.status().state, RecoveryState::CoolingDown);
    assert_eq!(b.state(), State::Closed);

    // Back up by itself before the end: the deferred trigger is dropped.
    let b = breaker();
    let script = Script::default();
    script.set_healthy(true);
    let recovery = crate::strict("model_server", script.action())
        .watch(&b)
        .spawn();
    trip(&b);
    recovery.wait_idle_or_cooling().await;
    trip(&b);
    b.reset();
    tokio::time::sleep(Duration::from_secs(61)).await;
    assert_eq!(recovery.status().state, RecoveryState::Idle);
    assert_eq!(script.attempts(), 1, "dropped");
}

#[tokio::test(start_paused = true)]
async fn exhaustion_alerts_once_and_ignores_automatic_triggers() {
    let b = breaker();
    let script = Script::default();
    let alerts = Arc::new(AtomicUsize::new(0));
    let counter = alerts.clone();
    let recovery = crate::strict("model_server", script.action())
        .watch(&b)
        .on_exhausted(move |status| {
            assert_eq!(status.state, RecoveryState::Exhausted);
            counter.fetch_add(1, Ordering::SeqCst);
        })
        .spawn();
    trip(&b);
    recovery.wait_idle_or_cooling().await;
    assert_eq!(recovery.status().state, RecoveryState::Exhausted);
    assert_eq!(alerts.load(Ordering::SeqCst), 1);
    // The breaker's own probe fails: it re-opens; recovery ignores it.
    tokio::time::sleep(Duration::from_secs(30)).await;
    b.try_acquire().unwrap().failure();
    assert_eq!(b.state(), State::Open);
    assert_eq!(recovery.trigger_automatic("again"), TriggerOutcome::Ignored);
    tokio::time::sleep(Duration::from_secs(120)).await;
    assert_eq!(script.attempts(), 3);
    assert_eq!(alerts.load(Ordering::SeqCst), 1, "fires once");
    assert_eq!(recovery.status().exhausted_cycles, 1);
}

#[tokio::test(start_paused = true)]
async fn the_breaker_healing_by_itself_ends_exhaustion_and_is_recorded() {
    let b = breaker();
    let script = Script::default();
    let recovery = crate::strict("model_server", script.action())
        .watch(&b)
        .spawn();
    let t0 = Instant::now();
    trip(&b);
    recovery.wait_idle_or_cooling().await;
    assert_eq!(recovery.status().state, RecoveryState::Exhausted);
    // At 30 s the breaker admits a probe, which succeeds: closed by itself.
    tokio::time::sleep_until(t0 + 30 * S).await;
    b.try_acquire().unwrap().success();
    assert_eq!(b.state(), State::Closed);
    let status = recovery.status();
    assert_eq!(status.state, RecoveryState::Idle);
    assert_eq!(status.recoveries, 1);
    assert_eq!(status.mttr, Some(30 * S));
}

#[tokio::test(start_paused = true)]
async fn a_passing_health_check_cancels_a_running_cycle() {
    let script = Script::default();
    let recovery = crate::strict("db", script.action()).spawn();
    assert_eq!(recovery.report_check(false), Some(TriggerOutcome::Started));
    eventually("attempt 1 failed", || {
        recovery.status().failed_attempts == 1
    })
    .await;
    tokio::time::sleep(S).await; // attempt 1 failed, waiting 2 s
    assert_eq!(recovery.report_check(true), None);
    assert_eq!(recovery.status().state, RecoveryState::Idle);
    tokio::time::sleep(Duration::from_secs(10)).await;
    assert_eq!(script.attempts(), 1, "cancelled before attempt 2");
}

#[tokio::test(start_paused = true)]
async fn manual_trigger_after_exhaustion_starts_at_attempt_one() {
    let script = Script::default();
    let recovery = crate::strict("db", script.action()).spawn();
    recovery.trigger_manual();
    recovery.wait_idle_or_cooling().await;
    let t1 = Instant::now();
    assert_eq!(recovery.trigger_manual(), TriggerOutcome::Started);
    recovery.wait_idle_or_cooling().await;
    assert_eq!(script.offsets(t1)[3..], [Duration::ZERO, 2 * S, 6 * S]);
    recovery.reset();
    assert_eq!(recovery.status().state, RecoveryState::Idle);
    assert_eq!(
        recovery.trigger_automatic("after reset"),
        TriggerOutcome::Started
    );
}

#[tokio::test(start_paused = true)]
async fn mttr_is_the_mean_of_recent_recoveries() {
    let b = breaker();
    let script = Script::default();
    let recovery = crate::strict("model_server", script.action())
        .watch(&b)
        .cooldown(S)
        .spawn();
    // Episode 1: recovered at attempt 2 (2 s).
    trip(&b);
    tokio::time::sleep(S).await;
    script.set_healthy(true);
    recovery.wait_idle_or_cooling().await;
    assert_eq!(recovery.status().mttr, Some(2 * S));
    tokio::time::sleep(2 * S).await;
    // Episode 2: recovered at attempt 3 (6 s).
    script.set_healthy(false);
    trip(&b);
    tokio::time::sleep(3 * S).await;
    script.set_healthy(true);
    recovery.wait_idle_or_cooling().await;
    assert_eq!(recovery.status().mttr, Some(4 * S), "mean of 2 s and 6 s");
}

#[tokio::test(start_paused = true)]
async fn recovery_layer_triggers_after_consecutive_failures() {
    let script = Script::default();
    let recovery = crate::strict("db", script.action()).spawn();
    let mut db = ServiceBuilder::new()
        .layer(recovery.layer())
        .service(service_fn(|fail: bool| async move {
            if fail { Err("lost connection") } else { Ok(()) }
        }));
    for fail in [true, true, false, true, true] {
        let _ = db.ready().await.unwrap().call(fail).await;
    }
    assert_eq!(
        recovery.status().state,
        RecoveryState::Idle,
        "a success reset the count"
    );
    let _ = db.ready().await.unwrap().call(true).await;
    assert_eq!(
        recovery.status().state,
        RecoveryState::Recovering,
        "third consecutive failure"
    );

    // Breaker rejections behind it are not counted.
    let breaker = breaker();
    trip(&breaker);
    let recovery = crate::strict("db2", Script::default().action()).spawn();
    let mut guarded = ServiceBuilder::new()
        .layer(recovery.layer())
        .layer(breaker.layer())
        .service(service_fn(|()| async { Ok::<_, std::io::Error>(()) }));
    for _ in 0..10 {
        assert!(guarded.ready().await.unwrap().call(()).await.is_err());
    }
    assert_eq!(recovery.status().state, RecoveryState::Idle);
    // The call API counts the same way.
    for _ in 0..3 {
        let _ = recovery
            .call(async { Err::<(), _>(std::io::Error::other("down")) })
            .await;
    }
    assert_eq!(recovery.status().state, RecoveryState::Recovering);
}

#[tokio::test(start_paused = true)]
async fn dropping_every_handle_stops_the_task() {
    let script = Script::default();
    let recovery = crate::strict("db", script.action()).spawn();
    let clone = recovery.clone();
    recovery.trigger_manual();
    eventually("attempt 1 started", || script.attempts() == 1).await;
    drop(recovery);
    drop(clone);
    // The task holds the action; once it is gone, only our handle remains.
    let deadline = Instant::now() + Duration::from_secs(60);
    while Arc::strong_count(&script.starts) > 1 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        Arc::strong_count(&script.starts),
        1,
        "task and action released"
    );
    assert_eq!(script.attempts(), 1, "no attempt after the drop");
}

#[tokio::test(start_paused = true)]
async fn logs_reproduce_the_seed_lines() {
    let (logs, _guard) = crate::captured_logs::capture();

    let b = breaker();
    let script = Script::default();
    let recovery = crate::strict("model_server", script.action())
        .watch(&b)
        .spawn();
    trip(&b);
    eventually("attempt 1 failed", || {
        recovery.status().failed_attempts == 1
    })
    .await;
    script.set_healthy(true);
    recovery.wait_idle_or_cooling().await;

    let log = logs.text();
    let expected = [
        "Circuit breaker 'model_server': Transitioning to OPEN",
        "Circuit breaker 'model_server' opened, triggering auto-recovery",
        "Triggering recovery for: model_server (attempt 1/3)",
        "Recovery attempt 1/3 failed for: model_server: Connection refused",
        "Applying backoff delay: 2.0s",
        "Triggering recovery for: model_server (attempt 2/3)",
        "Recovery successful for: model_server",
        "Circuit breaker 'model_server': Transitioning to CLOSED",
    ];
    let mut at = 0;
    for line in expected {
        let found = log[at..]
            .find(line)
            .unwrap_or_else(|| panic!("missing or out of order: {line}\n{log}"));
        at += found + line.len();
    }
}

#[tokio::test(start_paused = true)]
async fn a_passing_check_while_the_breaker_is_open_runs_the_action_unless_exhausted() {
    let b = breaker();
    let script = Script::default();
    let recovery = crate::strict("model_server", script.action())
        .watch(&b)
        .spawn();
    trip(&b);
    recovery.wait_idle_or_cooling().await;
    assert_eq!(recovery.status().state, RecoveryState::Exhausted);
    assert_eq!(b.state(), State::Open);
    script.set_healthy(true);
    // Exhausted: a passing check starts no cycle (checks may pass while
    // calls fail; the monitor lets the breaker probe instead), so a strict
    // recovery waits for a person.
    assert_eq!(recovery.report_check(true), Some(TriggerOutcome::Ignored));
    assert_eq!(recovery.status().state, RecoveryState::Exhausted);
    // Idle (a person reset it): the passing check runs a cycle whose
    // success closes the breaker, long before its 30 s probe.
    recovery.reset();
    assert_eq!(recovery.report_check(true), Some(TriggerOutcome::Started));
    recovery.wait_idle_or_cooling().await;
    assert_eq!(b.state(), State::Closed);
    assert_eq!(recovery.status().state, RecoveryState::CoolingDown);
    // With the breaker closed, a passing check triggers nothing.
    assert_eq!(recovery.report_check(true), None);
}

/// Adaptive (the default): an exhausted cycle is retried by itself while
/// the breaker says the dependency is down, on a growing jittered interval,
/// with one alert for the outage; the retry that succeeds closes the
/// breaker.
#[tokio::test(start_paused = true)]
async fn adaptive_exhaustion_retries_while_down_and_alerts_once() {
    use tower_recovery::recovery::{Adaptive, Mode, Recovery};
    let b = Breaker::builder("model_server")
        .consecutive_failures(1)
        .open_duration(Duration::from_secs(3600))
        .build();
    let script = Script::default();
    let alerts = Arc::new(AtomicUsize::new(0));
    let counter = alerts.clone();
    let recovery = Recovery::builder("model_server", script.action())
        .watch(&b)
        .backoff(Backoff::new(S, 2.0))
        .mode(Mode::Adaptive(
            Adaptive::default().retry_exhausted(30 * S, 60 * S),
        ))
        .on_exhausted(move |_| {
            counter.fetch_add(1, Ordering::SeqCst);
        })
        .spawn();
    let t0 = Instant::now();
    trip(&b);
    recovery.wait_for(|s| s == RecoveryState::Exhausted).await;
    let first = recovery.status().next_retry_in.expect("a retry is planned");
    assert!((27 * S..=33 * S).contains(&first), "{first:?}");
    assert_eq!(recovery.trigger_automatic("again"), TriggerOutcome::Ignored);
    // The retry runs a whole cycle, which fails again: one alert only, and
    // the next retry is twice as late (60 s, the cap).
    recovery.wait_for(|s| s == RecoveryState::Recovering).await;
    recovery.wait_for(|s| s == RecoveryState::Exhausted).await;
    assert_eq!(script.attempts(), 6);
    assert_eq!(recovery.status().exhausted_cycles, 2);
    assert_eq!(alerts.load(Ordering::SeqCst), 1, "one alert per outage");
    let second = recovery.status().next_retry_in.unwrap();
    assert!((54 * S..=66 * S).contains(&second), "{second:?}");
    // The dependency is back before that retry: its first attempt succeeds
    // and closes the breaker, long before its hour-long open wait ends.
    script.set_healthy(true);
    recovery.wait_for(|s| s == RecoveryState::CoolingDown).await;
    assert_eq!(b.state(), State::Closed);
    assert_eq!(script.attempts(), 7);
    let offsets = script.offsets(t0);
    assert_eq!(
        offsets[..3],
        [Duration::ZERO, 2 * S, 6 * S],
        "cycle 1 with backoff"
    );
    assert_eq!(
        offsets[3] - offsets[2],
        first,
        "cycle 2 after the retry delay"
    );
    let status = recovery.status();
    assert_eq!(status.recoveries, 1);
    // Cooldown after a one-off failure: the adaptive minimum.
    assert_eq!(status.cooldown_remaining, Some(5 * S));
}

/// Strict (the seed's rules): an exhausted cycle waits for a person.
#[tokio::test(start_paused = true)]
async fn strict_exhaustion_waits_for_a_person() {
    let b = breaker();
    let script = Script::default();
    let recovery = crate::strict("model_server", script.action())
        .watch(&b)
        .spawn();
    trip(&b);
    recovery.wait_for(|s| s == RecoveryState::Exhausted).await;
    assert_eq!(recovery.status().next_retry_in, None);
    // The breaker's probes keep failing: nothing runs for an hour.
    for _ in 0..120 {
        tokio::time::sleep(30 * S).await;
        if let Ok(probe) = b.try_acquire() {
            probe.failure();
        }
    }
    assert_eq!(script.attempts(), 3);
    assert_eq!(recovery.status().state, RecoveryState::Exhausted);
    assert_eq!(recovery.trigger_manual(), TriggerOutcome::Started);
}

/// Issue 13, recovery metrics: the track record since start and over the
/// last hour, and the time in each state, exactly, on paused time.
#[tokio::test(start_paused = true)]
async fn the_track_record_counts_outages_cycles_and_time_in_each_state() {
    let b = breaker();
    let script = Script::default();
    let recovery = crate::strict("model_server", script.action())
        .watch(&b)
        .max_attempts(2)
        .backoff(Backoff::new(S, 2.0))
        .cooldown(60 * S)
        .spawn();
    let t0 = Instant::now();
    tokio::time::sleep(10 * S).await; // idle for 10 s
    trip(&b); // outage 1 begins at 10 s: attempt 1 fails at once
    eventually("attempt 1 failed", || {
        recovery.status().failed_attempts == 1
    })
    .await;
    script.set_healthy(true); // attempt 2, at 12 s, succeeds
    recovery.wait_for(|s| s == RecoveryState::CoolingDown).await;
    assert_eq!(Instant::now() - t0, 12 * S);
    let r = recovery.status().record;
    assert_eq!(r.since_start.outages, 1);
    assert_eq!(r.since_start.downtime, 2 * S);
    assert_eq!(r.since_start.mttr, Some(2 * S));
    assert_eq!(r.since_start.cycles_succeeded, 1);
    assert_eq!(r.since_start.success_rate, Some(1.0));
    assert_eq!(r.since_start.attempts_per_recovery, Some(2.0));
    assert_eq!(r.last_hour, r.since_start);
    // A second outage ends exhausted, then by itself (the breaker heals).
    tokio::time::sleep_until(t0 + 100 * S).await;
    script.set_healthy(false);
    trip(&b); // outage 2 begins at 100 s
    recovery.wait_for(|s| s == RecoveryState::Exhausted).await; // at 102 s
    tokio::time::sleep_until(t0 + 130 * S).await; // the open wait ends at 130 s
    b.try_acquire().unwrap().success(); // the breaker's probe closes it
    let r = recovery.status().record;
    assert_eq!(r.open_outage, None);
    assert_eq!(r.since_start.outages, 2);
    assert_eq!(r.since_start.downtime, 32 * S);
    assert_eq!(r.since_start.mttr, Some(16 * S));
    assert_eq!(
        (
            r.since_start.cycles_succeeded,
            r.since_start.cycles_exhausted
        ),
        (1, 1)
    );
    assert_eq!(r.since_start.success_rate, Some(0.5));
    assert_eq!(r.since_start.attempts_per_recovery, Some(2.0));
    // Idle 0-10 and 72-100 and from 130; recovering 10-12 and 100-102;
    // cooling down 12-72; exhausted 102-130.
    assert_eq!(r.observed, 130 * S);
    assert_eq!(r.time_recovering, 4 * S);
    assert_eq!(r.time_cooling_down, 60 * S);
    assert_eq!(r.time_exhausted, 28 * S);
    assert_eq!(r.time_idle, 38 * S);
    assert_eq!(r.last_hour_in_state, [38 * S, 4 * S, 60 * S, 28 * S]);
    // An hour later the last hour is empty; since start keeps it all.
    tokio::time::sleep_until(t0 + 130 * S + 3600 * S).await;
    let r = recovery.status().record;
    assert_eq!(r.last_hour.outages, 0);
    assert_eq!(r.last_hour.downtime, Duration::ZERO);
    assert_eq!(r.last_hour.success_rate, None);
    assert_eq!(r.since_start.outages, 2);
    assert_eq!(r.time_idle, 38 * S + 3600 * S);
    assert_eq!(
        r.last_hour_in_state,
        [3600 * S, Duration::ZERO, Duration::ZERO, Duration::ZERO]
    );
}

/// Issue 13, escalation ladders: each rung for its own attempts, in
/// order, and the breaker closed only once the verification probe passes
/// (an action that returns `Ok` is not enough).
#[tokio::test(start_paused = true)]
async fn a_ladder_climbs_its_rungs_and_closes_the_breaker_only_when_verified() {
    use std::sync::atomic::AtomicBool;
    use tower_recovery::recovery::Ladder;
    let b = breaker();
    let ran = Arc::new(Mutex::new(Vec::<(&'static str, Duration)>::new()));
    let verified = Arc::new(AtomicBool::new(false));
    let t0 = Instant::now();
    let step = |name: &'static str, works: bool| {
        let ran = ran.clone();
        move || {
            ran.lock().unwrap().push((name, Instant::now() - t0));
            async move { if works { Ok(()) } else { Err("refused") } }
        }
    };
    let ladder = Ladder::new()
        .rung("reconnect", 2, step("reconnect", false))
        // Succeeds, but the dependency does not answer yet: not verified.
        .rung("recreate the pool", 1, step("recreate the pool", true))
        .rung(
            "fail over to the standby",
            2,
            step("fail over to the standby", true),
        )
        .verify({
            let verified = verified.clone();
            move || {
                let ok = verified.load(Ordering::SeqCst);
                async move {
                    if ok {
                        Ok(())
                    } else {
                        Err("SELECT 1: connection refused")
                    }
                }
            }
        });
    let recovery = crate::strict("database", ladder)
        .watch(&b)
        .backoff(Backoff::new(S, 1.0))
        .spawn();
    assert_eq!(recovery.status().max_attempts, 5, "2 + 1 + 2");
    trip(&b);
    recovery
        .wait_for(|_| recovery.status().failed_attempts == 3)
        .await;
    assert_eq!(
        recovery.status().last_error.as_deref(),
        Some(
            "rung 'recreate the pool' done, but verification failed: SELECT 1: connection refused"
        )
    );
    assert_eq!(b.state(), State::Open, "not verified: not closed");
    verified.store(true, Ordering::SeqCst); // the standby answers
    recovery.wait_idle_or_cooling().await;
    assert_eq!(b.state(), State::Closed);
    assert_eq!(
        *ran.lock().unwrap(),
        [
            ("reconnect", Duration::ZERO),
            ("reconnect", S),
            ("recreate the pool", 2 * S),
            ("fail over to the standby", 3 * S),
        ]
    );
    assert_eq!(
        recovery.status().record.since_start.attempts_per_recovery,
        Some(4.0)
    );
}

/// Issue 13, predictive recovery: a failure rate below the trip threshold
/// but at the warning one marks the dependency degraded and triggers its
/// recovery while the breaker is still closed; it clears when the rate
/// falls.
#[tokio::test(start_paused = true)]
async fn a_warning_threshold_marks_degraded_and_recovers_before_the_breaker_opens() {
    use tower_recovery::recovery::EarlyWarning;
    let b = Breaker::builder("model_server")
        .count_window(20)
        .failure_rate(0.5)
        .minimum_calls(10)
        .build();
    let script = Script::default();
    script.set_healthy(true);
    let recovery = crate::strict("model_server", script.action())
        .watch(&b)
        .spawn();
    let warning = EarlyWarning::builder(&b)
        .failure_rate(0.25)
        .recover(&recovery)
        .spawn();
    let mut changes = warning.subscribe();
    let record = |fail: bool| {
        let permit = b.try_acquire().unwrap();
        if fail {
            permit.failure()
        } else {
            permit.success()
        }
    };
    // 2 failures in 10: 20%, below the warning.
    for i in 0..10 {
        record(i < 2);
    }
    tokio::time::sleep(2 * S).await;
    assert!(!warning.status().degraded);
    assert_eq!(script.attempts(), 0);
    // 4 in 14 (29%): degraded at the next reading, recovery runs early.
    for _ in 0..2 {
        record(true);
    }
    for _ in 0..2 {
        record(false);
    }
    changes.changed().await.unwrap();
    let d = warning.status();
    assert!(d.degraded);
    assert_eq!(
        d.reason.as_deref(),
        Some("failure rate 29% (warning at 25%)")
    );
    assert_eq!(d.episodes, 1);
    assert!(b.state().is_closed(), "the breaker never opened");
    recovery.wait_idle_or_cooling().await;
    assert_eq!(script.attempts(), 1, "recovered before the breaker opened");
    // Degraded is not down: no outage was booked, none is open.
    let track = recovery.status().record;
    assert_eq!((track.since_start.outages, track.open_outage), (0, None));
    assert_eq!(track.since_start.cycles_succeeded, 1);
    // Successes push the rate down: no longer degraded.
    for _ in 0..20 {
        record(false);
    }
    changes.changed().await.unwrap();
    assert!(!warning.status().degraded);
    assert_eq!(warning.status().episodes, 1);
}

/// A 2 h outage: its MTTR is 2 h in every period; the last hour's downtime
/// is the hour of it inside the window.
#[tokio::test(start_paused = true)]
async fn a_long_outage_keeps_its_whole_length_in_the_mttr() {
    let b = Breaker::builder("model_server")
        .consecutive_failures(1)
        .open_duration(7200 * S)
        .build();
    let recovery = crate::strict("model_server", Script::default().action())
        .watch(&b)
        .spawn();
    let t0 = Instant::now();
    trip(&b);
    recovery.wait_for(|s| s == RecoveryState::Exhausted).await;
    tokio::time::sleep_until(t0 + 7200 * S).await;
    b.try_acquire().unwrap().success(); // the probe closes it: healed
    let r = recovery.status().record;
    assert_eq!(recovery.status().mttr, Some(7200 * S));
    assert_eq!(r.since_start.mttr, Some(7200 * S));
    assert_eq!(r.last_hour.mttr, Some(7200 * S));
    assert_eq!(r.since_start.downtime, 7200 * S);
    assert_eq!(r.last_hour.downtime, 3600 * S);
}
