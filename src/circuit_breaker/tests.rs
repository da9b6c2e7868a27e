//! Unit tests of the state machine on paused tokio time, one per row of the
//! semantics table and per policy.

use std::time::Duration;

use tokio::time::advance;

use super::*;
use crate::classify::Outcome;

fn fail(b: &Breaker, n: usize) {
    for _ in 0..n {
        b.try_acquire().expect("admitted").failure();
    }
}

fn succeed(b: &Breaker, n: usize) {
    for _ in 0..n {
        b.try_acquire().expect("admitted").success();
    }
}

const MS: Duration = Duration::from_millis(1);
const SEC: Duration = Duration::from_secs(1);

#[tokio::test(start_paused = true)]
async fn trips_at_exactly_the_consecutive_threshold_and_success_resets() {
    let b = Breaker::new("dep");
    fail(&b, 4);
    succeed(&b, 1);
    assert_eq!(b.counts().consecutive_failures, 0);
    fail(&b, 4);
    assert_eq!(b.state(), State::Closed);
    assert_eq!(b.counts().consecutive_failures, 4);
    fail(&b, 1);
    assert_eq!(b.state(), State::Open);
    let err = b.try_acquire().unwrap_err();
    assert_eq!(err.state(), State::Open);
    assert_eq!(err.retry_after(), Some(Duration::from_secs(30)));
    assert_eq!(b.snapshot().rejected, 1);
    assert_eq!(b.snapshot().failures, 9);
}

#[tokio::test(start_paused = true)]
async fn rate_equal_to_threshold_trips() {
    let b = Breaker::builder("dep")
        .count_window(10)
        .minimum_calls(10)
        .failure_rate(0.5)
        .build();
    succeed(&b, 5);
    fail(&b, 4);
    assert_eq!(b.state(), State::Closed, "9 calls: below the minimum");
    fail(&b, 1);
    assert_eq!(b.state(), State::Open, "5/10 = 0.5 trips");

    let b = Breaker::builder("dep")
        .count_window(10)
        .minimum_calls(10)
        .failure_rate(0.3)
        .build();
    succeed(&b, 7);
    fail(&b, 2);
    succeed(&b, 1);
    assert_eq!(b.state(), State::Closed, "2/10 < 0.3");
    fail(&b, 1); // evicts a success: 3/10 = 0.3, no float rounding
    assert_eq!(b.state(), State::Open);
}

#[tokio::test(start_paused = true)]
async fn rate_is_evaluated_after_each_outcome_once_minimum_is_reached() {
    let b = Breaker::builder("dep")
        .count_window(10)
        .minimum_calls(4)
        .failure_rate(0.5)
        .build();
    fail(&b, 3);
    assert_eq!(b.state(), State::Closed);
    // A success makes the minimum: 3/4 >= 0.5, so it trips.
    succeed(&b, 1);
    assert_eq!(b.state(), State::Open);
}

#[tokio::test(start_paused = true)]
async fn count_window_evicts_the_oldest_call() {
    let b = Breaker::builder("dep")
        .count_window(4)
        .minimum_calls(4)
        .failure_rate(0.75)
        .build();
    fail(&b, 2);
    succeed(&b, 2);
    assert_eq!(b.counts().window_failures, 2);
    succeed(&b, 2); // the two failures leave the window
    let c = b.counts();
    assert_eq!((c.window_calls, c.window_failures), (4, 0));
    fail(&b, 2);
    assert_eq!(b.state(), State::Closed, "2/4 < 0.75");
    fail(&b, 1);
    assert_eq!(b.state(), State::Open, "3/4");
}

#[tokio::test(start_paused = true)]
async fn time_buckets_are_aligned_and_expire_a_full_window_after_their_end() {
    // 10 s window of 1 s buckets; the clock's origin is the build time.
    let b = Breaker::builder("dep")
        .time_window(Duration::from_secs(10), 10)
        .minimum_calls(100)
        .build();
    advance(500 * MS).await;
    fail(&b, 1); // bucket [0 s, 1 s)
    advance(600 * MS).await; // t = 1.1 s
    succeed(&b, 1); // bucket [1 s, 2 s)
    advance(Duration::from_millis(9_899)).await; // t = 10.999 s
    assert_eq!(
        b.counts().window_calls,
        2,
        "bucket [0,1) ends at 1 s: 9.999 s old"
    );
    advance(MS).await; // t = 11 s
    let c = b.counts();
    assert_eq!(
        (c.window_calls, c.window_failures),
        (1, 0),
        "bucket [0,1) is a full window old"
    );
    advance(SEC).await; // t = 12 s
    assert_eq!(b.counts().window_calls, 0);
}

#[tokio::test(start_paused = true)]
async fn time_window_trips_on_rate() {
    let b = Breaker::builder("dep")
        .time_window(Duration::from_secs(60), 6)
        .minimum_calls(4)
        .failure_rate(0.5)
        .build();
    fail(&b, 2);
    advance(Duration::from_secs(70)).await; // both expire
    succeed(&b, 2);
    fail(&b, 1);
    assert_eq!(b.state(), State::Closed, "1/3: below minimum");
    fail(&b, 1);
    assert_eq!(b.state(), State::Open, "2/4");
}

#[tokio::test(start_paused = true)]
async fn outcome_admitted_in_an_earlier_state_is_dropped() {
    let b = Breaker::builder("dep").consecutive_failures(2).build();
    let old = b.try_acquire().unwrap();
    fail(&b, 2);
    assert_eq!(b.state(), State::Open);
    b.reset();
    old.failure();
    assert_eq!(
        b.counts().consecutive_failures,
        0,
        "stale failure not recorded"
    );
    assert_eq!(b.snapshot().failures, 3, "but still counted as observed");

    // A stale success does not reset the new period's count either.
    let old = b.try_acquire().unwrap();
    fail(&b, 1);
    b.force_open();
    b.reset();
    fail(&b, 1);
    old.success();
    assert_eq!(b.counts().consecutive_failures, 1);
}

#[tokio::test(start_paused = true)]
async fn open_wait_boundary_admits_a_probe_at_exactly_the_duration() {
    let b = Breaker::builder("dep")
        .consecutive_failures(1)
        .open_duration(10 * SEC)
        .build();
    fail(&b, 1);
    advance(Duration::from_millis(9_999)).await;
    let err = b.try_acquire().unwrap_err();
    assert_eq!(err.retry_after(), Some(MS));
    advance(MS).await;
    let probe = b.try_acquire().expect("admitted at exactly 10 s");
    assert!(probe.is_probe());
    assert_eq!(b.state(), State::HalfOpen);
    probe.success();
    assert_eq!(b.state(), State::Closed);
}

#[tokio::test(start_paused = true)]
async fn reads_report_a_due_timed_transition_without_making_it() {
    // Item 12: `state()`, `snapshot()` and `Debug` used to perform the
    // overdue transition (and run callbacks) from inside an observer.
    let b = Breaker::builder("dep").consecutive_failures(1).build();
    let mut events = b.subscribe();
    fail(&b, 1);
    assert_eq!(b.state(), State::Open);
    assert_eq!(b.snapshot().next_probe_in, Some(Duration::from_secs(30)));
    advance(Duration::from_secs(30)).await;
    let generation = b.generation();
    assert_eq!(b.state(), State::HalfOpen, "observers see the truth");
    let snap = b.snapshot();
    assert_eq!(
        (snap.state, snap.available_permits, snap.next_probe_in),
        (State::HalfOpen, Some(1), None)
    );
    assert!(format!("{b:?}").contains("HalfOpen"));
    assert_eq!(b.generation(), generation, "reading made no transition");
    assert_eq!(b.snapshot().transitions, 1);
    let opened = events.recv().await.unwrap();
    assert_eq!(
        (opened.from, opened.to, opened.cause),
        (State::Closed, State::Open, Cause::ConsecutiveFailures)
    );
    assert_eq!(
        events.try_recv().unwrap_err(),
        TryRecvError::Empty,
        "no event from a read"
    );
    // The next admission makes it.
    let probe = b.try_acquire().unwrap();
    assert!(probe.is_probe());
    let half = events.recv().await.unwrap();
    assert_eq!(
        (half.to, half.cause),
        (State::HalfOpen, Cause::OpenWaitElapsed)
    );
}

#[tokio::test(start_paused = true)]
async fn reads_project_a_half_open_timeout_and_the_reopen_after_it() {
    let b = Breaker::builder("dep")
        .consecutive_failures(1)
        .open_duration(10 * SEC)
        .half_open_max_wait(5 * SEC)
        .build();
    fail(&b, 1);
    advance(10 * SEC).await;
    let _hung = b.try_acquire().unwrap();
    advance(6 * SEC).await;
    let snap = b.snapshot();
    assert_eq!(snap.state, State::Open);
    assert_eq!(
        snap.next_probe_in,
        Some(9 * SEC),
        "re-opened at 5 s for 10 s"
    );
    advance(9 * SEC).await;
    assert_eq!(b.state(), State::HalfOpen);
    assert_eq!(b.snapshot().transitions, 2, "only the performed ones");
}

#[tokio::test(start_paused = true)]
async fn a_count_window_smaller_than_the_minimum_still_trips() {
    // Item 2: count_window(5) with the default minimum of 10 never tripped.
    let b = Breaker::builder("dep").count_window(5).build();
    fail(&b, 4);
    assert_eq!(b.state(), State::Closed);
    fail(&b, 1);
    assert_eq!(
        b.state(),
        State::Open,
        "the minimum is capped at the window"
    );
}

#[tokio::test(start_paused = true)]
async fn a_half_open_rejection_says_when_to_retry() {
    // Item 13: every permit in use used to give `retry_after() == None`.
    let b = Breaker::builder("dep")
        .consecutive_failures(1)
        .open_duration(10 * SEC)
        .half_open_max_wait(5 * SEC)
        .build();
    fail(&b, 1);
    advance(10 * SEC).await;
    let _probe = b.try_acquire().unwrap();
    advance(2 * SEC).await;
    let err = b.try_acquire().unwrap_err();
    assert_eq!(err.state(), State::HalfOpen);
    assert_eq!(
        err.retry_after(),
        Some(3 * SEC),
        "when the half-open wait ends"
    );
    assert!(err.to_string().contains("retry in 3.000s"), "{err}");

    let b = Breaker::builder("dep")
        .consecutive_failures(1)
        .open_duration(10 * SEC)
        .build();
    fail(&b, 1);
    advance(10 * SEC).await;
    let _probe = b.try_acquire().unwrap();
    let err = b.try_acquire().unwrap_err();
    assert_eq!(
        err.retry_after(),
        Some(10 * SEC),
        "no half-open wait: the least a failing probe keeps it open"
    );
}

#[tokio::test(start_paused = true)]
async fn close_never_overrides_a_manual_state_or_closes_twice() {
    // Item 6: `close` read the state, then acted on a second read.
    let b = Breaker::builder("dep").consecutive_failures(1).build();
    let mut events = b.subscribe();
    fail(&b, 1);
    b.force_open();
    assert!(!b.close());
    assert_eq!(b.state(), State::ForcedOpen);
    b.reset();
    fail(&b, 1);
    advance(Duration::from_secs(30)).await;
    b.try_acquire().unwrap().success(); // the probe closes it first
    assert!(!b.close(), "already closed: no second Closed transition");
    let mut closes = 0;
    while let Ok(t) = events.try_recv() {
        closes += usize::from(t.to == State::Closed && t.cause != Cause::Reset);
    }
    assert_eq!(closes, 1);
}

#[tokio::test(start_paused = true)]
async fn a_slow_subscriber_is_told_what_it_missed() {
    // Item 8: an unread stream grew without bound.
    let b = Breaker::builder("dep").consecutive_failures(1).build();
    let mut events = b.subscribe();
    for _ in 0..50 {
        b.force_open();
        b.reset();
    }
    assert_eq!(events.recv().await, Err(RecvError::Lagged(36)));
    let oldest = events.recv().await.unwrap();
    assert_eq!(oldest.generation, 37, "goes on from the oldest kept");
    let mut rest = 1;
    while events.try_recv().is_ok() {
        rest += 1;
    }
    assert_eq!(rest, 64, "at most 64 kept");
}

#[tokio::test(start_paused = true)]
async fn try_recv_reports_a_lag_too() {
    let b = Breaker::builder("dep").consecutive_failures(1).build();
    let mut events = b.subscribe();
    for _ in 0..40 {
        b.force_open();
        b.reset();
    }
    assert_eq!(events.try_recv(), Err(TryRecvError::Lagged(16)));
    assert_eq!(events.try_recv().unwrap().generation, 17);
}

#[tokio::test(start_paused = true)]
async fn a_waker_that_acts_on_the_breaker_does_not_deadlock_it() {
    // Wakers used to run under the transition lock: a waker acting on the
    // breaker (as a naive executor might, by polling inline) deadlocked.
    use std::sync::Arc;
    use std::task::{Context, Wake, Waker};
    struct Resets(Breaker);
    impl Wake for Resets {
        fn wake(self: Arc<Self>) {
            self.0.reset();
        }
    }
    let b = Breaker::builder("dep").consecutive_failures(1).build();
    let mut events = b.subscribe();
    let waker = Waker::from(Arc::new(Resets(b.clone())));
    let mut cx = Context::from_waker(&waker);
    {
        let recv = events.recv();
        tokio::pin!(recv);
        assert!(recv.as_mut().poll(&mut cx).is_pending());
        b.force_open(); // wakes the waker, which resets: must not hang
    }
    assert_eq!(b.state(), State::Closed, "the waker's reset came after");
    assert_eq!(events.recv().await.unwrap().to, State::ForcedOpen);
    assert_eq!(events.recv().await.unwrap().to, State::Closed);
}

#[tokio::test(start_paused = true)]
async fn manual_states_are_left_only_by_reset() {
    let b = Breaker::builder("dep")
        .consecutive_failures(1)
        .open_duration(SEC)
        .build();
    b.force_open();
    assert_eq!(b.try_acquire().unwrap_err().state(), State::ForcedOpen);
    advance(Duration::from_secs(3600)).await;
    assert_eq!(b.state(), State::ForcedOpen);
    assert!(!b.close(), "recovery never changes ForcedOpen");
    assert_eq!(b.state(), State::ForcedOpen);

    b.disable();
    fail(&b, 100);
    assert_eq!(b.state(), State::Disabled);
    assert_eq!(b.counts().consecutive_failures, 0, "records nothing");
    assert!(!b.close());
    b.reset();
    assert_eq!(b.state(), State::Closed);
    fail(&b, 1);
    assert_eq!(b.state(), State::Open);
}

#[tokio::test(start_paused = true)]
async fn reset_clears_window_growth_and_bumps_generation() {
    let b = Breaker::builder("dep")
        .count_window(10)
        .minimum_calls(3)
        .open_duration(10 * SEC)
        .open_growth(2.0, 100 * SEC)
        .build();
    fail(&b, 3);
    assert_eq!(b.state(), State::Open);
    advance(10 * SEC).await;
    b.try_acquire().unwrap().failure(); // re-open: 20 s
    assert_eq!(b.snapshot().next_probe_in, Some(20 * SEC));
    let generation = b.generation();
    b.reset();
    assert_eq!(b.state(), State::Closed);
    assert_eq!(b.generation(), generation + 1);
    assert_eq!(b.counts(), Counts::default());
    fail(&b, 3);
    assert_eq!(
        b.snapshot().next_probe_in,
        Some(10 * SEC),
        "growth back to base"
    );
}

#[tokio::test(start_paused = true)]
async fn resetting_a_closed_breaker_clears_counts_but_is_not_a_transition() {
    let b = Breaker::builder("dep")
        .count_window(10)
        .minimum_calls(4)
        .build();
    let mut events = b.subscribe();
    let generation = b.generation();
    fail(&b, 3);
    let in_flight = b.try_acquire().expect("admitted");
    assert_eq!(b.counts().window_failures, 3);
    assert_eq!(b.counts().consecutive_failures, 3);
    b.reset();
    assert_eq!(b.state(), State::Closed);
    assert_eq!(b.generation(), generation, "no new generation");
    assert_eq!(b.snapshot().transitions, 0, "no transition counted");
    assert_eq!(
        b.counts(),
        Counts::default(),
        "window and consecutive cleared"
    );
    assert_eq!(
        events.try_recv().unwrap_err(),
        TryRecvError::Empty,
        "nothing published"
    );
    // A call admitted before the reset still counts: same generation.
    in_flight.failure();
    assert_eq!(b.counts().window_failures, 1);
    // The cleared window needs its minimum again before it can trip.
    fail(&b, 2);
    assert_eq!(b.state(), State::Closed);
    fail(&b, 1);
    assert_eq!(b.state(), State::Open);
}

#[tokio::test(start_paused = true)]
async fn open_duration_grows_to_its_cap_and_returns_after_a_healthy_period() {
    let b = Breaker::builder("dep")
        .consecutive_failures(1)
        .open_duration(10 * SEC)
        .open_growth(2.0, 35 * SEC)
        .healthy_period(60 * SEC)
        .build();
    let mut expected = vec![10, 20, 35, 35];
    expected.reverse();
    fail(&b, 1);
    while let Some(secs) = expected.pop() {
        assert_eq!(b.snapshot().next_probe_in, Some(Duration::from_secs(secs)));
        advance(Duration::from_secs(secs)).await;
        b.try_acquire().unwrap().failure();
    }
    // Close, trip again soon: still grown.
    advance(35 * SEC).await;
    b.try_acquire().unwrap().success();
    advance(59 * SEC).await;
    fail(&b, 1);
    assert_eq!(b.snapshot().next_probe_in, Some(35 * SEC));
    // Close and stay closed for the healthy period: back to base.
    advance(35 * SEC).await;
    b.try_acquire().unwrap().success();
    advance(60 * SEC).await;
    fail(&b, 1);
    assert_eq!(b.snapshot().next_probe_in, Some(10 * SEC));
}

#[tokio::test(start_paused = true)]
async fn half_open_admits_at_most_its_permits() {
    let b = Breaker::builder("dep")
        .consecutive_failures(1)
        .half_open_permits(2)
        .build();
    fail(&b, 1);
    advance(Duration::from_secs(30)).await;
    let p1 = b.try_acquire().unwrap();
    let p2 = b.try_acquire().unwrap();
    assert_eq!(b.try_acquire().unwrap_err().state(), State::HalfOpen);
    drop(p2); // dropped unfinished: permit back
    let p2 = b.try_acquire().unwrap();
    p1.record(Outcome::Ignore); // ignored: permit back
    let p3 = b.try_acquire().unwrap();
    p2.success();
    assert_eq!(b.state(), State::HalfOpen, "one success of two");
    p3.success();
    assert_eq!(b.state(), State::Closed);
}

#[tokio::test(start_paused = true)]
async fn a_probe_failure_reopens() {
    let b = Breaker::builder("dep")
        .consecutive_failures(1)
        .half_open_permits(3)
        .build();
    fail(&b, 1);
    advance(Duration::from_secs(30)).await;
    let p1 = b.try_acquire().unwrap();
    let p2 = b.try_acquire().unwrap();
    p1.success();
    p2.failure();
    assert_eq!(b.state(), State::Open);
}

#[tokio::test(start_paused = true)]
async fn half_open_max_wait_reopens() {
    let b = Breaker::builder("dep")
        .consecutive_failures(1)
        .half_open_max_wait(5 * SEC)
        .build();
    fail(&b, 1);
    advance(Duration::from_secs(30)).await;
    let hung = b.try_acquire().unwrap();
    advance(Duration::from_millis(4_999)).await;
    assert_eq!(b.state(), State::HalfOpen);
    advance(MS).await;
    assert_eq!(b.state(), State::Open);
    hung.success();
    assert_eq!(b.state(), State::Open, "late probe outcome is stale");
}

#[tokio::test(start_paused = true)]
async fn slow_calls_trip_the_window() {
    let b = Breaker::builder("dep")
        .count_window(4)
        .minimum_calls(4)
        .slow_calls(2 * SEC, 0.5)
        .build();
    for slow in [true, false, false, true] {
        let p = b.try_acquire().unwrap();
        advance(if slow { 2 * SEC } else { 1999 * MS }).await;
        p.success();
    }
    assert_eq!(b.state(), State::Open);
    let t = b.subscribe();
    drop(t);
}

#[tokio::test(start_paused = true)]
async fn transitions_are_ordered_and_carry_counts() {
    let b = Breaker::builder("dep").consecutive_failures(3).build();
    let mut events = b.subscribe();
    fail(&b, 3);
    advance(Duration::from_secs(30)).await;
    b.try_acquire().unwrap().success();
    b.force_open();
    b.disable();
    b.reset();
    let mut got = Vec::new();
    while let Ok(t) = events.try_recv() {
        got.push(t);
    }
    let tos: Vec<_> = got.iter().map(|t| t.to).collect();
    assert_eq!(
        tos,
        [
            State::Open,
            State::HalfOpen,
            State::Closed,
            State::ForcedOpen,
            State::Disabled,
            State::Closed
        ]
    );
    assert_eq!(got[0].counts.consecutive_failures, 3);
    assert_eq!(got[0].open_for, Some(Duration::from_secs(30)));
    let gens: Vec<_> = got.iter().map(|t| t.generation).collect();
    assert_eq!(gens, [1, 2, 3, 4, 5, 6]);
    assert_eq!(b.snapshot().transitions, 6);
    drop(b);
    assert_eq!(
        events.recv().await,
        Err(RecvError::Closed),
        "stream ends when the breaker is gone"
    );
}

#[tokio::test(start_paused = true)]
async fn close_is_what_a_recovery_uses() {
    let b = Breaker::builder("dep").consecutive_failures(1).build();
    assert!(!b.close(), "already closed");
    fail(&b, 1);
    let mut events = b.subscribe();
    assert!(b.close());
    assert_eq!(b.state(), State::Closed);
    let closed = events.try_recv().unwrap();
    assert_eq!(
        (closed.from, closed.to, closed.cause),
        (State::Open, State::Closed, Cause::Recovered)
    );
}

#[tokio::test(start_paused = true)]
async fn call_api_rejects_without_polling_and_classifies() {
    let b = Breaker::builder("dep").consecutive_failures(1).build();
    let r: Result<(), CallError<&str>> = b.call(async { Err("down") }).await;
    assert_eq!(r, Err(CallError::Inner("down")));
    let polled = std::sync::atomic::AtomicBool::new(false);
    let r = b
        .call(async {
            polled.store(true, std::sync::atomic::Ordering::SeqCst);
            Ok::<_, ()>(())
        })
        .await;
    assert!(r.unwrap_err().is_rejected());
    assert!(!polled.load(std::sync::atomic::Ordering::SeqCst));
    // A custom classifier: 404 answers are fine.
    b.reset();
    let not_found = |r: &Result<u16, ()>| match r {
        Ok(404) | Ok(200) => Outcome::Success,
        _ => Outcome::Failure,
    };
    assert_eq!(b.call_with(&not_found, async { Ok(404) }).await, Ok(404));
    assert_eq!(b.state(), State::Closed);
}

#[tokio::test(start_paused = true)]
async fn dropped_call_future_gives_back_its_probe_permit() {
    let b = Breaker::builder("dep").consecutive_failures(1).build();
    fail(&b, 1);
    advance(Duration::from_secs(30)).await;
    {
        let fut = b.call(std::future::pending::<Result<(), ()>>());
        tokio::pin!(fut);
        assert!(futures_util::poll!(fut.as_mut()).is_pending());
        assert_eq!(b.snapshot().available_permits, Some(0));
    }
    assert_eq!(b.snapshot().available_permits, Some(1));
}

#[test]
fn response_futures_keep_the_breaker_alive_and_it_is_freed_after() {
    use std::future::Future;
    use std::sync::mpsc;
    use tower::{Layer, Service};
    // Futures outlive their service and every handle (as `Oneshot` makes
    // them do) and still record into the breaker. Made on one thread and
    // finished on another, each thread is left holding part of a batch of
    // credits; the breaker is freed when both have given theirs back.
    let b = Breaker::builder("dep").consecutive_failures(3).build();
    let weak = b.downgrade();
    let (to_b, futures) = mpsc::channel();
    let (a_done_tx, a_done) = mpsc::channel::<()>();
    let (a_exit_tx, a_exit) = mpsc::channel::<()>();
    let a = std::thread::spawn(move || {
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        let inner = tower::service_fn(|fail: bool| {
            std::future::ready(if fail { Err(std::fmt::Error) } else { Ok(()) })
        });
        let mut svc = b.layer().layer(inner);
        let mut made = Vec::new();
        for i in 0..200 {
            assert!(svc.poll_ready(&mut cx).is_ready());
            made.push(svc.call(i >= 197));
        }
        drop(svc);
        drop(b);
        to_b.send(made).unwrap();
        a_done_tx.send(()).unwrap();
        a_exit.recv().unwrap();
    });
    a_done.recv().unwrap();
    let watched = weak.clone();
    std::thread::spawn(move || {
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        let mut failures = 0;
        for f in futures.recv().unwrap() {
            let mut f = std::pin::pin!(f);
            if let std::task::Poll::Ready(Err(_)) = f.as_mut().poll(&mut cx) {
                failures += 1;
            }
        }
        assert_eq!(failures, 3);
        let b = watched.upgrade().expect("alive: both threads hold credits");
        assert_eq!(
            b.state(),
            State::Open,
            "the futures' outcomes were recorded"
        );
    })
    .join()
    .unwrap();
    assert!(weak.upgrade().is_some(), "thread A still holds credits");
    a_exit_tx.send(()).unwrap();
    a.join().unwrap();
    assert!(weak.upgrade().is_none(), "freed once both gave theirs back");
}

#[test]
fn services_cloned_per_request_record_and_the_breaker_is_freed_after() {
    use std::future::Future;
    use tower::{Layer, Service};
    // As axum does: a clone of the service per request, dropped with it.
    let b = Breaker::builder("dep").consecutive_failures(3).build();
    let weak = b.downgrade();
    let watched = b.downgrade();
    std::thread::spawn(move || {
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        let svc = b.layer().layer(tower::service_fn(|fail: bool| {
            std::future::ready(if fail { Err(std::fmt::Error) } else { Ok(()) })
        }));
        drop(b);
        for i in 0..3_000 {
            let mut one = svc.clone();
            assert!(one.poll_ready(&mut cx).is_ready());
            let mut f = std::pin::pin!(one.call(i >= 2_997));
            drop(one);
            assert!(f.as_mut().poll(&mut cx).is_ready());
        }
        assert_eq!(watched.upgrade().unwrap().state(), State::Open);
        drop(svc);
    })
    .join()
    .unwrap();
    assert!(weak.upgrade().is_none(), "freed once the thread is gone");
}

#[test]
fn a_time_window_idle_past_its_tag_wrap_starts_empty() {
    // Review: tags were ticks modulo 2^24; after an idle gap of 2^23 ticks
    // (9.7 days of 100 ms buckets) the old counts came back and tripped a
    // healthy breaker, while `counts()` showed an empty window.
    for (window, idle_ticks) in [
        (Duration::from_secs(1), (1u64 << 23) + 20),
        (Duration::from_millis(10), (1 << 23) + 3),
        (Duration::from_millis(10), (1 << 31) + 7),
    ] {
        let manual = crate::clock::ManualClock::new();
        let b = Breaker::builder("w")
            .time_window(window, 10)
            .minimum_calls(10)
            .clock(manual.clone())
            .build();
        fail(&b, 9); // below the minimum
        manual.advance(window / 10 * idle_ticks as u32);
        assert_eq!(b.counts().window_calls, 0, "all expired long ago");
        succeed(&b, 1);
        assert_eq!(b.state(), State::Closed, "{window:?}: {:?}", b.snapshot());
        assert_eq!(b.counts().window_calls, 1);
        fail(&b, 9);
        assert_eq!(b.state(), State::Open, "and it still trips on fresh data");
    }
}

#[tokio::test(start_paused = true)]
async fn a_snapshot_past_a_half_open_timeout_shows_the_new_period_s_permits() {
    // Found by the simulation (seed 122): the snapshot said no permit was
    // free while the next call was admitted as the probe of a new period.
    let b = Breaker::builder("dep")
        .consecutive_failures(1)
        .open_duration(5 * SEC)
        .half_open_max_wait(7 * SEC)
        .build();
    fail(&b, 1);
    advance(5 * SEC).await;
    let _held = b.try_acquire().unwrap();
    advance(15 * SEC).await; // re-opened at 12 s, half-open again at 17 s
    let snap = b.snapshot();
    assert_eq!(
        (snap.state, snap.available_permits),
        (State::HalfOpen, Some(1))
    );
    assert!(b.try_acquire().is_ok(), "the read predicted it");
}

#[test]
fn count_windows_of_breakers_used_in_turn_on_one_thread_still_trip() {
    // Review: the per-thread cache was direct-mapped, and each breaker's
    // outcome evicted the other's entry and reserved a fresh block of slots
    // of which it wrote one: a count window of 100 saw 2 calls and never
    // reached its minimum. Six breakers (more than the cache holds), in
    // turn, every call failing.
    let breakers: Vec<Breaker> = (0..6)
        .map(|i| {
            Breaker::builder(format!("dep{i}"))
                .count_window(100)
                .minimum_calls(10)
                .failure_rate(0.5)
                .build()
        })
        .collect();
    for _ in 0..10 {
        for b in &breakers {
            if let Ok(permit) = b.try_acquire() {
                permit.failure();
            }
        }
    }
    for b in &breakers {
        assert_eq!(b.state(), State::Open, "{}: {:?}", b.name(), b.counts());
    }
}

#[test]
fn a_call_error_chain_prints_each_message_once() {
    // Issue 12: `CallError` printed its source's message as its own.
    fn chain(e: &dyn std::error::Error) -> Vec<String> {
        let mut out = vec![e.to_string()];
        let mut next = e.source();
        while let Some(e) = next {
            out.push(e.to_string());
            next = e.source();
        }
        out
    }
    let inner: CallError<std::io::Error> = CallError::Inner(std::io::Error::other("refused"));
    assert_eq!(chain(&inner), ["refused"]);
    let b = Breaker::builder("dep").consecutive_failures(1).build();
    b.try_acquire().unwrap().failure();
    let rejected: CallError<std::io::Error> = CallError::Rejected(b.try_acquire().unwrap_err());
    let messages = chain(&rejected);
    assert_eq!(messages.len(), 2, "{messages:?}");
    assert_eq!(messages[0], "call not admitted");
    assert!(
        messages[1].starts_with("circuit breaker is open"),
        "{messages:?}"
    );
}

// ===== runtime changes and upstream hints =====

#[tokio::test(start_paused = true)]
async fn more_probes_asked_for_in_a_half_open_period_start_with_the_next() {
    let b = Breaker::builder("dep").consecutive_failures(1).build();
    fail(&b, 1);
    advance(30 * SEC).await;
    let probe = b.try_acquire().expect("the period's one probe");
    b.tune(Tuning::new().half_open_permits(3)).unwrap();
    assert!(b.try_acquire().is_err(), "this period keeps its one permit");
    probe.success();
    assert_eq!(b.state(), State::Closed, "its one success closes it");

    fail(&b, 1);
    advance(30 * SEC).await;
    let probes: Vec<_> = (0..3).map(|_| b.try_acquire().expect("three")).collect();
    assert!(b.try_acquire().is_err());
    for (i, p) in probes.into_iter().enumerate() {
        assert_eq!(b.state(), State::HalfOpen, "{i} successes");
        p.success();
    }
    assert_eq!(b.state(), State::Closed);
}

#[tokio::test(start_paused = true)]
async fn fewer_probes_asked_for_still_close_a_period_that_admitted_more() {
    let b = Breaker::builder("dep")
        .consecutive_failures(1)
        .half_open_permits(3)
        .build();
    fail(&b, 1);
    advance(30 * SEC).await;
    let probes: Vec<_> = (0..3).map(|_| b.try_acquire().unwrap()).collect();
    b.tune(Tuning::new().half_open_permits(1)).unwrap();
    for p in probes {
        p.success();
    }
    assert_eq!(b.state(), State::Closed, "the period needed its own three");
}

#[tokio::test(start_paused = true)]
async fn a_failed_probe_with_retry_after_reopens_for_that_long() {
    let b = Breaker::builder("dep").consecutive_failures(1).build();
    let mut events = b.subscribe();
    fail(&b, 1);
    assert_eq!(events.try_recv().unwrap().open_for, Some(30 * SEC));
    advance(30 * SEC).await;
    b.try_acquire().unwrap().failure_with_retry_after(90 * SEC);
    let _half_open = events.try_recv().unwrap();
    let reopened = events.try_recv().unwrap();
    assert_eq!(
        (reopened.to, reopened.open_for),
        (State::Open, Some(90 * SEC))
    );
    advance(89 * SEC).await;
    assert_eq!(b.state(), State::Open);
    advance(SEC).await;
    assert_eq!(b.state(), State::HalfOpen);
}

#[tokio::test(start_paused = true)]
async fn a_retry_after_seen_earlier_sets_the_opening_while_it_lasts() {
    let b = Breaker::builder("dep")
        .consecutive_failures(2)
        .retry_after_cap(120 * SEC)
        .build();
    let mut events = b.subscribe();
    // Asked to wait 100 s; the breaker opens 10 s later: 90 s left.
    b.try_acquire().unwrap().failure_with_retry_after(100 * SEC);
    advance(10 * SEC).await;
    fail(&b, 1);
    assert_eq!(events.try_recv().unwrap().open_for, Some(90 * SEC));
    // A reset forgets it.
    b.reset();
    b.try_acquire().unwrap().failure_with_retry_after(100 * SEC);
    b.reset();
    let _closed = events.try_recv().unwrap();
    fail(&b, 2);
    assert_eq!(events.try_recv().unwrap().open_for, Some(30 * SEC));
}

#[tokio::test(start_paused = true)]
async fn a_tuned_open_duration_applies_from_the_next_opening() {
    let b = Breaker::builder("dep").consecutive_failures(1).build();
    fail(&b, 1);
    let changes = b.tune(Tuning::new().open_duration(5 * SEC)).unwrap();
    assert_eq!(
        changes,
        ["open_duration 30s -> 5s", "max_open_duration 30s -> 5s"]
    );
    advance(5 * SEC).await;
    assert_eq!(b.state(), State::Open, "the wait in progress keeps its end");
    advance(25 * SEC).await;
    b.try_acquire().unwrap().failure();
    assert_eq!(b.snapshot().next_probe_in, Some(5 * SEC));
    // Nothing to change: no change, no event.
    let before = b.recent_events().len();
    assert!(
        b.tune(Tuning::new().open_duration(5 * SEC))
            .unwrap()
            .is_empty()
    );
    assert_eq!(b.recent_events().len(), before);
}

#[tokio::test(start_paused = true)]
async fn recent_events_are_bounded_and_in_order() {
    let b = Breaker::builder("dep")
        .consecutive_failures(1)
        .recent_events(3)
        .build();
    for _ in 0..4 {
        fail(&b, 1);
        b.reset();
    }
    let events = b.recent_events();
    assert_eq!(events.len(), 3);
    let gens: Vec<_> = events
        .iter()
        .map(|e| match &e.kind {
            RecentKind::Transition(t) => t.generation,
            RecentKind::Tuned(_) => 0,
        })
        .collect();
    assert_eq!(gens, [6, 7, 8], "the newest three, oldest first");
    let none = Breaker::builder("dep").recent_events(0).build();
    none.force_open();
    assert!(none.recent_events().is_empty());
}

// ===== the half-open ramp =====

/// A breaker with a ramp from 10% over 10 s, opened.
fn ramped() -> Breaker {
    let b = Breaker::builder("dep")
        .consecutive_failures(1)
        .half_open_ramp(0.1, 10 * SEC)
        .build();
    fail(&b, 1);
    b
}

/// Of `n` calls asking now, how many are admitted (each succeeds).
fn admitted_of(b: &Breaker, n: usize) -> usize {
    (0..n)
        .filter_map(|_| b.try_acquire().ok())
        .map(|p| p.success())
        .count()
}

#[tokio::test(start_paused = true)]
async fn a_ramp_admits_a_rising_share_then_closes() {
    let b = ramped();
    let mut events = b.subscribe();
    advance(30 * SEC).await;
    assert_eq!(b.snapshot().traffic_share, Some(0.1));
    assert_eq!(admitted_of(&b, 100), 10, "10% at the start, picked evenly");
    assert_eq!(b.state(), State::HalfOpen, "successes do not end the ramp");
    assert_eq!(b.snapshot().available_permits, None);
    advance(5 * SEC).await;
    assert_eq!(b.snapshot().traffic_share, Some(0.55));
    assert_eq!(admitted_of(&b, 100), 55, "55% half way");
    let r = b.try_acquire().expect_err("the 201st is not picked at 55%");
    assert!(r.retry_after().unwrap() <= SEC, "a short retry hint");
    advance(5 * SEC).await;
    assert_eq!(
        b.state(),
        State::Closed,
        "projected: over, and calls succeeded"
    );
    assert_eq!(admitted_of(&b, 10), 10);
    let causes: Vec<_> = std::iter::from_fn(|| events.try_recv().ok())
        .map(|t| t.cause)
        .collect();
    assert_eq!(causes, [Cause::OpenWaitElapsed, Cause::RampCompleted]);
}

#[tokio::test(start_paused = true)]
async fn a_failure_during_the_ramp_reopens() {
    let b = ramped();
    advance(30 * SEC).await;
    let admitted = (0..10).find_map(|_| b.try_acquire().ok()).unwrap();
    admitted.failure();
    assert_eq!(b.state(), State::Open);
}

#[tokio::test(start_paused = true)]
async fn a_ramp_without_traffic_closes_only_on_a_success() {
    let b = ramped();
    advance(30 * SEC).await;
    // One call makes it half-open; it is not picked (the first of ten).
    assert!(b.try_acquire().is_err());
    advance(60 * SEC).await;
    assert_eq!(b.state(), State::HalfOpen, "no success yet: no evidence");
    let p = b
        .try_acquire()
        .expect("all calls admitted once the ramp is over");
    drop(p);
    assert_eq!(b.state(), State::HalfOpen, "a dropped call is no success");
    b.try_acquire().unwrap().success();
    assert_eq!(b.state(), State::Closed);
}

#[test]
#[should_panic(expected = "cannot be combined")]
fn a_ramp_and_a_half_open_wait_are_refused_together() {
    let _ = Breaker::builder("dep")
        .half_open_ramp(0.1, SEC)
        .half_open_max_wait(SEC)
        .build();
}

// ===== runtime changes and upstream hints, continued =====

#[tokio::test(start_paused = true)]
async fn a_half_open_timeout_projects_the_tuned_open_duration() {
    let b = Breaker::builder("dep")
        .consecutive_failures(1)
        .open_duration(10 * SEC)
        .half_open_max_wait(SEC)
        .build();
    fail(&b, 1);
    advance(10 * SEC).await;
    let _hung = b.try_acquire().expect("the probe");
    b.tune(Tuning::new().open_duration(100 * SEC)).unwrap();
    advance(SEC).await;
    // Read only: the re-open at the half-open timeout is projected.
    let projected = b.snapshot().next_probe_in;
    // Performed by the next admission.
    assert!(b.try_acquire().is_err());
    let performed = b.snapshot().next_probe_in;
    assert_eq!(performed, Some(100 * SEC));
    assert_eq!(projected, performed, "the read told another story");
}

#[tokio::test(start_paused = true)]
async fn a_retry_after_is_forgotten_once_calls_succeed_again() {
    let b = Breaker::builder("dep")
        .consecutive_failures(2)
        .open_duration(5 * SEC)
        .build();
    let mut events = b.subscribe();
    b.try_acquire().unwrap().failure_with_retry_after(120 * SEC);
    // The upstream serves again.
    succeed(&b, 100);
    advance(10 * SEC).await;
    // Two timeouts, no Retry-After.
    fail(&b, 2);
    assert_eq!(
        events.try_recv().unwrap().open_for,
        Some(5 * SEC),
        "opened for an upstream hint that successes had outdated"
    );
}

#[test]
fn concurrent_tunes_of_different_settings_lose_none() {
    let b = Breaker::builder("dep").consecutive_failures(5).build();
    let stop = std::sync::atomic::AtomicBool::new(false);
    let lost = std::thread::scope(|s| {
        let other = s.spawn(|| {
            let mut i = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                i += 1;
                b.tune(Tuning::new().healthy_period(Duration::from_millis(i)))
                    .unwrap();
            }
        });
        let mut lost = 0;
        for i in 1..=20_000u64 {
            let want = Duration::from_millis(i);
            b.tune(Tuning::new().open_duration(want)).unwrap();
            // Nobody else changes the open duration.
            if b.config().open_duration != want {
                lost += 1;
            }
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        other.join().unwrap();
        lost
    });
    assert_eq!(
        lost, 0,
        "open_duration changes reverted by a concurrent tune"
    );
}
