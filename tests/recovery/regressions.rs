//! One test per defect found in review, named after the behaviour.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use crate::eventually;

use tokio::time::Instant;
use tower_recovery::circuit_breaker::{Breaker, CallError, State};
use tower_recovery::clock::ManualClock;
use tower_recovery::recovery::{RecoveryState, TriggerOutcome, is_refusal};

const S: Duration = Duration::from_secs(1);

/// An action that succeeds while `up` holds.
fn action(
    up: &Arc<AtomicBool>,
    runs: &Arc<AtomicUsize>,
) -> impl Fn() -> std::future::Ready<Result<(), &'static str>> + Send + Sync + 'static {
    let (up, runs) = (up.clone(), runs.clone());
    move || {
        runs.fetch_add(1, Ordering::SeqCst);
        std::future::ready(if up.load(Ordering::SeqCst) {
            Ok(())
        } else {
            Err("refused")
        })
    }
}

/// Item 1: the cooldown ended with a deferred trigger while the watched
/// breaker's half-open wait was overdue; the recovery asked the breaker for
/// its state under its own lock, the read performed the re-open, the
/// breaker's callback re-entered the recovery and took the same lock.
#[test]
fn a_deferred_trigger_meeting_an_overdue_half_open_timeout_does_not_deadlock() {
    let (done_tx, done_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .start_paused(true)
            .build()
            .unwrap();
        rt.block_on(async {
            let b = Breaker::builder("model_server")
                .consecutive_failures(1)
                .open_duration(S)
                .half_open_max_wait(S)
                .build();
            let (up, runs) = (Arc::new(AtomicBool::new(true)), Arc::default());
            let recovery = crate::strict("model_server", action(&up, &runs))
                .watch(&b)
                .cooldown(5 * S)
                .spawn();
            b.try_acquire().unwrap().failure();
            recovery.wait_idle_or_cooling().await;
            assert_eq!(recovery.status().state, RecoveryState::CoolingDown);
            up.store(false, Ordering::SeqCst);
            b.try_acquire().unwrap().failure(); // deferred: cooling down
            tokio::time::advance(S).await;
            let _hung = b.try_acquire().unwrap(); // a probe that never ends
            tokio::time::advance(5 * S).await; // half-open wait and cooldown over
            let status = recovery.status();
            assert_ne!(b.state(), State::Closed);
            assert_ne!(status.state, RecoveryState::CoolingDown);
            eventually("the deferred trigger ran", || {
                runs.load(Ordering::SeqCst) == 2
            })
            .await;
            // The overdue re-open is made by this admission, without a hang,
            // and the caller finds what the read said.
            let projected = b.state();
            let admitted = b.try_acquire();
            assert_eq!(admitted.is_ok(), projected == State::HalfOpen);
            drop(admitted);
            recovery.trigger_manual();
            recovery.status()
        });
        done_tx.send(()).unwrap();
    });
    // A watchdog on real time: a deadlocked thread never reports. (A failed
    // assertion drops the sender, which also ends the wait.)
    match done_rx.recv_timeout(Duration::from_secs(20)) {
        Ok(()) => {}
        Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
            panic!("deadlock: the scenario did not finish in 20 s")
        }
        Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
            panic!("the scenario failed an assertion (see its panic above)")
        }
    }
}

/// Item 3: `recovery.call(breaker.call(fut))` yields `CallError<E>` for the
/// caller's `E`; rejections were recognised for three concrete types only.
#[tokio::test(start_paused = true)]
async fn rejections_around_any_error_type_are_not_counted() {
    #[derive(Debug)]
    struct DbError; // not even `std::error::Error`
    let b = Breaker::builder("database").consecutive_failures(1).build();
    let (up, runs) = (Arc::new(AtomicBool::new(false)), Arc::default());
    let recovery = crate::strict("database", action(&up, &runs))
        .trigger_after(2)
        .spawn();
    let r: Result<(), CallError<DbError>> =
        recovery.call(b.call(async { Err::<(), _>(DbError) })).await;
    assert!(matches!(r, Err(CallError::Inner(DbError))));
    assert_eq!(b.state(), State::Open);
    for _ in 0..5 {
        let r = recovery.call(b.call(async { Ok::<(), DbError>(()) })).await;
        let err = r.unwrap_err();
        assert!(err.is_rejected());
        assert!(is_refusal(&err), "CallError<DbError> rejection recognised");
    }
    assert_eq!(
        recovery.status().state,
        RecoveryState::Idle,
        "one failure and five rejections start nothing"
    );
    assert_eq!(runs.load(Ordering::SeqCst), 0);
    assert!(!is_refusal(&CallError::Inner(DbError)));
    // Boxed, and anywhere in a source chain.
    let boxed: tower_recovery::BoxError = Box::new(b.try_acquire().unwrap_err());
    assert!(is_refusal(&boxed));
    #[derive(Debug)]
    struct Wrapped(tower_recovery::circuit_breaker::Rejection);
    impl std::fmt::Display for Wrapped {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("client error")
        }
    }
    impl std::error::Error for Wrapped {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            Some(&self.0)
        }
    }
    let boxed: tower_recovery::BoxError = Box::new(Wrapped(b.try_acquire().unwrap_err()));
    assert!(is_refusal(&boxed), "found in the source chain");
}

/// Item 4: a trigger deferred during the cooldown set the outage start; the
/// breaker healed by itself in that cooldown and nothing cleared it, so the
/// next, instant recovery was recorded as an hour.
#[tokio::test(start_paused = true)]
async fn an_outage_that_heals_during_the_cooldown_ends_there() {
    let b = Breaker::builder("model_server")
        .consecutive_failures(1)
        .open_duration(10 * S)
        .build();
    let (up, runs) = (Arc::new(AtomicBool::new(true)), Arc::default());
    let recovery = crate::strict("model_server", action(&up, &runs))
        .watch(&b)
        .cooldown(60 * S)
        .spawn();
    b.try_acquire().unwrap().failure();
    recovery.wait_idle_or_cooling().await;
    assert_eq!(recovery.status().mttr, Some(Duration::ZERO));
    b.try_acquire().unwrap().failure(); // deferred
    tokio::time::advance(10 * S).await;
    b.try_acquire().unwrap().success(); // healed by its own probe at 10 s
    let status = recovery.status();
    assert_eq!(status.recoveries, 2, "the second outage ended by itself");
    assert_eq!(status.mttr, Some(5 * S), "mean of 0 s and 10 s");
    // An hour later: a new outage, recovered at once.
    tokio::time::advance(Duration::from_secs(3_600)).await;
    let t0 = Instant::now();
    b.try_acquire().unwrap().failure();
    recovery.wait_idle_or_cooling().await;
    assert_eq!(Instant::now(), t0);
    let status = recovery.status();
    assert_eq!(status.recoveries, 3);
    assert_eq!(
        status.mttr,
        Some(10 * S / 3),
        "samples 0 s, 10 s, 0 s: not 3,610 s"
    );
}

/// Item 15: a passing check while the breaker was open recorded the outage
/// as healed, then the cycle it started recorded it again (about 0 s): two
/// successes and half the MTTR per outage.
#[tokio::test(start_paused = true)]
async fn each_outage_is_counted_once() {
    let b = Breaker::builder("model_server")
        .consecutive_failures(1)
        .open_duration(30 * S)
        .build();
    let (up, runs) = (Arc::new(AtomicBool::new(false)), Arc::default());
    let recovery = crate::strict("model_server", action(&up, &runs))
        .watch(&b)
        .spawn();
    let t0 = Instant::now();
    b.try_acquire().unwrap().failure();
    recovery.wait_idle_or_cooling().await;
    assert_eq!(recovery.status().state, RecoveryState::Exhausted);
    tokio::time::sleep_until(t0 + 21 * S).await;
    up.store(true, Ordering::SeqCst);
    // Exhausted: the passing check starts no cycle; the monitor would let
    // the breaker probe, and the probe closes it.
    assert_eq!(recovery.report_check(true), Some(TriggerOutcome::Ignored));
    assert!(b.probe_now());
    b.try_acquire().unwrap().success();
    assert_eq!(b.state(), State::Closed);
    let status = recovery.status();
    assert_eq!(status.recoveries, 1, "one outage, one recovery");
    assert_eq!(status.mttr, Some(21 * S), "the outage's true length");
    // Later passing checks and the breaker's close add nothing.
    assert_eq!(recovery.report_check(true), None);
    assert_eq!(recovery.status().recoveries, 1);
}

// ===== found in review =====

/// Review: an automatic trigger during the cooldown (a `RecoveryTriggerLayer`,
/// `trigger_automatic`) set the outage start; the deferral was dropped at the
/// end of the cooldown and the start never cleared, so an instant recovery
/// an hour later was recorded as half an hour. Now a sign that the
/// dependency is back (here a passing check) ends that outage when it comes,
/// and the deferral is dropped with nothing left open.
#[tokio::test(start_paused = true)]
async fn a_deferred_trigger_whose_outage_ends_in_the_cooldown_leaves_nothing_open() {
    let b = Breaker::builder("db").consecutive_failures(1).build();
    let recovery = crate::strict("db", || async { Ok::<_, std::io::Error>(()) })
        .watch(&b)
        .cooldown(60 * S)
        .spawn();
    b.try_acquire().unwrap().failure();
    recovery.wait_idle_or_cooling().await;
    assert_eq!(recovery.status().mttr, Some(Duration::ZERO));
    assert_eq!(
        recovery.trigger_automatic("layer"),
        TriggerOutcome::Deferred
    );
    tokio::time::sleep(10 * S).await;
    assert_eq!(recovery.report_check(true), None, "back: the outage ends");
    let s = recovery.status();
    assert_eq!(
        (s.recoveries, s.mttr),
        (2, Some(5 * S)),
        "samples 0 s, 10 s"
    );
    tokio::time::sleep(51 * S).await; // cooldown over: deferral dropped
    assert_eq!(recovery.status().state, RecoveryState::Idle);
    tokio::time::sleep(3_600 * S).await;
    b.try_acquire().unwrap().failure(); // a new outage, recovered at once
    recovery.wait_idle_or_cooling().await;
    let s = recovery.status();
    assert_eq!(s.recoveries, 3);
    assert_eq!(s.mttr, Some(10 * S / 3), "samples 0 s, 10 s, 0 s: {s:?}");
}

/// The same without a breaker (the seed's database, a `RecoveryTriggerLayer`
/// only): a deferred layer trigger with no sign of recovery since is
/// honoured at the end of the cooldown (it used to be dropped, leaving a
/// failing database alone); the first call that succeeds afterwards is the
/// sign that ends an outage.
#[tokio::test(start_paused = true)]
async fn a_deferred_layer_trigger_is_honoured_unless_a_call_succeeded() {
    use tower::{Service, ServiceBuilder, ServiceExt, service_fn};
    let up = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let runs = Arc::new(AtomicUsize::new(0));
    let recovery = crate::strict("db", action(&up, &runs))
        .cooldown(60 * S)
        .trigger_after(1)
        .spawn();
    let flag = up.clone();
    let mut db = ServiceBuilder::new()
        .layer(recovery.layer())
        .service(service_fn(move |()| {
            let up = flag.load(Ordering::SeqCst);
            async move { if up { Ok(()) } else { Err("lost connection") } }
        }));
    up.store(true, Ordering::SeqCst);
    assert!(db.ready().await.unwrap().call(()).await.is_ok());
    // Down: the layer triggers; the action fixes it at once.
    up.store(false, Ordering::SeqCst);
    let _ = db.ready().await.unwrap().call(()).await;
    up.store(true, Ordering::SeqCst);
    recovery.wait_idle_or_cooling().await;
    assert_eq!(recovery.status().state, RecoveryState::CoolingDown);
    // Down again during the cooldown: deferred, and nothing says it is back.
    up.store(false, Ordering::SeqCst);
    let _ = db.ready().await.unwrap().call(()).await;
    tokio::time::sleep(61 * S).await;
    eventually("the deferred trigger ran", || {
        runs.load(Ordering::SeqCst) == 2
    })
    .await;
    // Still down: attempt 2 fails too. Then a call succeeds: that is the
    // sign the dependency is back; the cycle is cancelled, the outage ends.
    tokio::time::sleep(5 * S).await;
    assert_eq!(runs.load(Ordering::SeqCst), 3);
    up.store(true, Ordering::SeqCst);
    assert!(db.ready().await.unwrap().call(()).await.is_ok());
    let s = recovery.status();
    assert_eq!((s.state, s.recoveries), (RecoveryState::Idle, 2));
    assert_eq!(s.mttr, Some(33 * S), "samples 0 s and 66 s (t = 0 to 66)");
    tokio::time::sleep(61 * S).await;
    assert_eq!(runs.load(Ordering::SeqCst), 3, "no attempt after the sign");
}

/// Review: the task feeds AttemptDone without first syncing the breaker's
/// signal. A probe that fails (HalfOpen -> Open) while the attempt finishes
/// is seen *after* the success was recorded, as a new opening carrying the
/// breaker's original `opened_at`: the outage that was just recorded is
/// re-opened with its old start, the recovery then closes the breaker, and
/// the stale start is used for the next outage's MTTR.
#[tokio::test(start_paused = true)]
async fn probe_failing_as_the_attempt_succeeds_reopens_the_recorded_outage() {
    let b = Breaker::builder("model_server")
        .consecutive_failures(1)
        .open_duration(S)
        .build();
    let runs = Arc::new(AtomicUsize::new(0));
    let (b2, runs2) = (b.clone(), runs.clone());
    let recovery = crate::strict("model_server", move || {
        let n = runs2.fetch_add(1, Ordering::SeqCst);
        let b = b2.clone();
        async move {
            if n == 0 {
                return Err("refused");
            }
            // Real traffic: a probe admitted in half-open fails just as this
            // attempt's own reconnect succeeds.
            if let Ok(p) = b.try_acquire() {
                p.failure();
            }
            Ok(())
        }
    })
    .watch(&b)
    .cooldown(60 * S)
    .spawn();
    b.try_acquire().unwrap().failure(); // outage 1 starts at t0
    recovery.wait_idle_or_cooling().await; // attempt 2 after 2 s backoff
    assert_eq!(runs.load(Ordering::SeqCst), 2);
    tokio::time::sleep(S / 10).await;
    assert_eq!(b.state(), State::Closed);
    let s = recovery.status();
    assert_eq!(s.recoveries, 1);
    assert_eq!(s.mttr, Some(2 * S), "{s:?}");
    tokio::time::sleep(61 * S).await; // cooldown over
    tokio::time::sleep(3_600 * S).await;
    // Outage 2, recovered at once.
    b.try_acquire().unwrap().failure();
    recovery.wait_idle_or_cooling().await;
    let s = recovery.status();
    assert_eq!(s.recoveries, 2, "{s:?}");
    assert_eq!(s.mttr, Some(S), "samples 2 s and 0 s: {s:?}");
}

/// Review: a recovery action that panics (an `unwrap()` in reconnect code) kills
/// the recovery's background task: the machine stays `Recovering` forever,
/// later triggers say `AlreadyRunning`, nothing ever runs again, silently.
/// (Item 9 made drain hooks panic-safe; recovery actions are not.)
#[tokio::test(start_paused = true)]
async fn a_panicking_action_does_not_kill_the_recovery() {
    let runs = Arc::new(AtomicUsize::new(0));
    let r2 = runs.clone();
    let recovery = crate::strict("db", move || {
        let n = r2.fetch_add(1, Ordering::SeqCst);
        async move {
            if n == 0 {
                panic!("connection pool poisoned");
            }
            Ok::<_, String>(())
        }
    })
    .spawn();
    assert_eq!(recovery.trigger_manual(), TriggerOutcome::Started);
    tokio::time::sleep(60 * S).await;
    let s = recovery.status();
    assert_ne!(s.state, RecoveryState::Recovering, "stuck: {s:?}");
    assert_eq!(recovery.trigger_manual(), TriggerOutcome::Started);
    tokio::time::sleep(60 * S).await;
    assert!(runs.load(Ordering::SeqCst) >= 2, "never ran again");
}

async fn settle() {
    for _ in 0..100 {
        tokio::task::yield_now().await;
    }
}

fn counting(
    runs: &Arc<AtomicUsize>,
) -> impl Fn() -> std::future::Ready<Result<(), &'static str>> + Send + Sync + 'static {
    let runs = runs.clone();
    move || {
        runs.fetch_add(1, Ordering::SeqCst);
        std::future::ready(Ok(()))
    }
}

/// Open -> HalfOpen -> Closed (healed by its own probe) -> ForcedOpen, all
/// before the recovery's task looks: sync sees "opened and healed, not
/// closed now" and replays them as heal-then-open, so it starts a recovery
/// cycle for an outage that already ended, against a ForcedOpen breaker.
#[tokio::test(start_paused = true)]
async fn a_heal_then_force_open_is_not_replayed_as_a_new_outage() {
    let manual = ManualClock::new();
    let b = Breaker::builder("m")
        .consecutive_failures(1)
        .open_duration(S)
        .clock(manual.clone())
        .build();
    let runs = Arc::new(AtomicUsize::new(0));
    let recovery = crate::strict("m", counting(&runs)).watch(&b).spawn();
    settle().await;
    b.try_acquire().unwrap().failure(); // Closed -> Open
    manual.advance(S);
    b.try_acquire().unwrap().success(); // HalfOpen -> Closed: healed
    b.force_open(); // an operator takes it out of service
    assert_eq!(b.state(), State::ForcedOpen);
    settle().await;
    let s = recovery.status();
    assert_eq!(
        runs.load(Ordering::SeqCst),
        0,
        "no action for a healed outage: {s:?}"
    );
    assert_eq!(s.recoveries, 1, "the outage ended by itself: {s:?}");
    assert_eq!(s.state, RecoveryState::Idle, "{s:?}");
}

/// open, heal, open before the task looks: the first outage is never counted.
#[tokio::test(start_paused = true)]
async fn two_outages_between_two_looks_are_two_outages() {
    let manual = ManualClock::new();
    let b = Breaker::builder("m")
        .consecutive_failures(1)
        .open_duration(S)
        .clock(manual.clone())
        .build();
    let runs = Arc::new(AtomicUsize::new(0));
    let recovery = crate::strict("m", counting(&runs)).watch(&b).spawn();
    settle().await;
    b.try_acquire().unwrap().failure(); // outage 1
    manual.advance(S);
    b.try_acquire().unwrap().success(); // healed by itself
    b.try_acquire().unwrap().failure(); // outage 2
    settle().await;
    let s = recovery.status();
    assert_eq!(
        s.recoveries, 2,
        "outage 1 healed, outage 2 recovered: {s:?}"
    );
}

/// Found by the simulation (seed 1093): a reset of a breaker that was
/// closed anyway, then an opening, both before the recovery's task looked,
/// were replayed as an outage that had healed: a recovery and an MTTR sample
/// for nothing.
#[tokio::test(start_paused = true)]
async fn a_reset_of_a_closed_breaker_is_no_heal() {
    let manual = ManualClock::new();
    let b = Breaker::builder("m")
        .consecutive_failures(1)
        .clock(manual.clone())
        .build();
    let runs = Arc::new(AtomicUsize::new(0));
    let recovery = crate::strict("m", counting(&runs)).watch(&b).spawn();
    settle().await;
    tokio::time::sleep(1312 * S / 1000).await;
    b.reset(); // closed already
    b.try_acquire().unwrap().failure(); // an outage begins now
    settle().await;
    let s = recovery.status();
    assert_eq!(s.recoveries, 1, "one outage, recovered: {s:?}");
    assert_eq!(s.mttr, Some(Duration::ZERO), "not the breaker's age: {s:?}");
}

// ===== found in the second review =====

/// Open -> ForcedOpen -> Reset: seen one by one, one outage recorded;
/// coalesced at one look, none.
async fn open_force_reset(rushed: bool) -> u64 {
    let manual = ManualClock::new();
    let b = Breaker::builder("m")
        .consecutive_failures(1)
        .open_duration(S)
        .clock(manual.clone())
        .build();
    let recovery = crate::strict("m", std::future::pending::<Result<(), &'static str>>)
        .watch(&b)
        .spawn();
    settle().await;
    b.try_acquire().unwrap().failure(); // Closed -> Open
    if !rushed {
        settle().await;
    }
    b.force_open();
    if !rushed {
        settle().await;
    }
    b.reset();
    settle().await;
    let s = recovery.status();
    assert_eq!(b.state(), State::Closed);
    assert_ne!(s.state, RecoveryState::Recovering);
    s.recoveries
}

#[tokio::test(start_paused = true)]
async fn an_outage_forced_open_then_reset_counts_the_same_seen_at_once_or_step_by_step() {
    let slow = open_force_reset(false).await;
    let rushed = open_force_reset(true).await;
    assert_eq!(
        slow, rushed,
        "one-by-one recorded {slow} recoveries, coalesced {rushed}"
    );
}

/// One breaker outage (Closed -> Open once), a layer trigger before it: a
/// single half-open probe success ends the recovery's outage, the next probe
/// failure starts a second one.
#[tokio::test(start_paused = true)]
async fn one_breaker_outage_is_one_recovery_with_the_layer_too() {
    let manual = ManualClock::new();
    let b = Breaker::builder("m")
        .consecutive_failures(2)
        .half_open_permits(2)
        .open_duration(S)
        .clock(manual.clone())
        .build();
    let runs = Arc::new(AtomicUsize::new(0));
    let r2 = runs.clone();
    let recovery = crate::strict("m", move || {
        r2.fetch_add(1, Ordering::SeqCst);
        std::future::ready(Err::<(), _>("still down"))
    })
    .max_attempts(1)
    .trigger_after(1)
    .watch(&b)
    .spawn();
    settle().await;
    let fail = || async { Err::<(), &str>("boom") };
    let ok = || async { Ok::<(), &str>(()) };
    let _ = recovery.call(b.call(fail())).await; // layer triggers
    let _ = recovery.call(b.call(fail())).await; // breaker opens
    settle().await;
    assert_eq!(b.state(), State::Open);
    manual.advance(S); // half-open, 2 probes needed
    let _ = recovery.call(b.call(ok())).await; // probe 1 ok
    settle().await;
    let after_probe = recovery.status();
    let _ = recovery.call(b.call(fail())).await; // probe 2 fails: re-open
    settle().await;
    manual.advance(S);
    let _ = recovery.call(b.call(ok())).await;
    let _ = recovery.call(b.call(ok())).await; // healed
    settle().await;
    assert_eq!(b.state(), State::Closed);
    let s = recovery.status();
    assert_eq!(
        s.recoveries,
        1,
        "one breaker outage, {} recoveries (after the first probe: {:?}); runs {}",
        s.recoveries,
        after_probe,
        runs.load(Ordering::SeqCst)
    );
}

/// Found by the simulation (seed 9881 of 16,000): our cycle ended an outage
/// while the breaker was forced open (so it could not be closed, and still
/// held the outage's start). Much later a reset closed it and a failure
/// opened it again before the recovery's task looked: the heal carried the
/// old start, and the recovery counted the outage a second time, from its
/// start to the reset (an MTTR of 100 s for an outage recovered at once).
#[tokio::test(start_paused = true)]
async fn an_outage_our_cycle_ended_under_a_forced_open_breaker_is_not_counted_again() {
    let b = Breaker::builder("m")
        .consecutive_failures(1)
        .open_duration(3600 * S)
        .build();
    let runs = Arc::new(AtomicUsize::new(0));
    let recovery = crate::strict("m", counting(&runs)).watch(&b).spawn();
    b.try_acquire().unwrap().failure();
    b.force_open();
    eventually("the cycle ran", || runs.load(Ordering::SeqCst) == 1).await;
    recovery.wait_idle_or_cooling().await;
    let status = recovery.status();
    assert_eq!((status.recoveries, status.mttr), (1, Some(Duration::ZERO)));
    assert_eq!(
        b.state(),
        State::ForcedOpen,
        "our close left it forced open"
    );
    tokio::time::advance(100 * S).await;
    // Before the task looks: reset (a heal) and a new opening.
    b.reset();
    b.try_acquire().unwrap().failure();
    let status = recovery.status();
    assert_eq!(status.recoveries, 1, "{status:?}");
    assert_eq!(status.mttr, Some(Duration::ZERO), "{status:?}");
    // And once the task has looked too.
    recovery.wait_idle_or_cooling().await;
    let status = recovery.status();
    assert_eq!(status.recoveries, 2, "the new outage, recovered at once");
    assert_eq!(status.mttr, Some(Duration::ZERO), "{status:?}");
}
