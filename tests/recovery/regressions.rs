//! One test per defect found in review, named after the behaviour.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use tokio::time::Instant;
use tower_recovery::circuit_breaker::{Breaker, CallError, State};
use tower_recovery::recovery::{Recovery, RecoveryState, TriggerOutcome, is_refusal};

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

async fn eventually(what: &str, cond: impl Fn() -> bool) {
    for _ in 0..1_000 {
        if cond() {
            return;
        }
        tokio::task::yield_now().await;
    }
    panic!("never happened: {what}");
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
            let recovery = Recovery::builder("model_server", action(&up, &runs))
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
            recovery.trigger();
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
    let recovery = Recovery::builder("database", action(&up, &runs))
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
    struct Wrapped(tower_recovery::circuit_breaker::Rejected);
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
    let recovery = Recovery::builder("model_server", action(&up, &runs))
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
    assert_eq!(status.successes, 2, "the second outage ended by itself");
    assert_eq!(status.mttr, Some(5 * S), "mean of 0 s and 10 s");
    // An hour later: a new outage, recovered at once.
    tokio::time::advance(Duration::from_secs(3_600)).await;
    let t0 = Instant::now();
    b.try_acquire().unwrap().failure();
    recovery.wait_idle_or_cooling().await;
    assert_eq!(Instant::now(), t0);
    let status = recovery.status();
    assert_eq!(status.successes, 3);
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
    let recovery = Recovery::builder("model_server", action(&up, &runs))
        .watch(&b)
        .spawn();
    let t0 = Instant::now();
    b.try_acquire().unwrap().failure();
    recovery.wait_idle_or_cooling().await;
    assert_eq!(recovery.status().state, RecoveryState::Exhausted);
    tokio::time::sleep_until(t0 + 21 * S).await;
    up.store(true, Ordering::SeqCst);
    assert_eq!(recovery.report_check(true), Some(TriggerOutcome::Started));
    recovery.wait_idle_or_cooling().await;
    assert_eq!(b.state(), State::Closed);
    let status = recovery.status();
    assert_eq!(status.successes, 1, "one outage, one recovery");
    assert_eq!(status.mttr, Some(21 * S), "the outage's true length");
    // Later passing checks and the breaker's close add nothing.
    assert_eq!(recovery.report_check(true), None);
    assert_eq!(recovery.status().successes, 1);
}
