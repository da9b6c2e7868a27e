//! Layer behaviour against `tower-test` mocks: the Tower contract.

use std::time::Duration;

use tokio_test::{assert_pending, assert_ready, assert_ready_ok};
use tower_recovery::BoxError;
use tower_recovery::circuit_breaker::{Breaker, Rejected, State};
use tower_recovery::classify::Outcome;
use tower_test::{assert_request_eq, mock};

fn half_open_breaker() -> Breaker {
    let b = Breaker::builder("dep").consecutive_failures(1).build();
    b.try_acquire().unwrap().failure();
    b
}

async fn to_half_open(b: &Breaker) {
    tokio::time::advance(Duration::from_secs(30)).await;
    assert_eq!(b.state(), State::HalfOpen);
}

#[tokio::test(start_paused = true)]
async fn probe_permit_is_reserved_by_poll_ready_without_calling() {
    let b = half_open_breaker();
    to_half_open(&b).await;
    let (mut a, mut handle) = mock::spawn_layer::<&str, &str, _>(b.layer());
    let mut other = mock::Spawn::new(a.get_ref().clone());
    handle.allow(1);

    assert_ready_ok!(a.poll_ready());
    assert_eq!(
        b.snapshot().available_permits,
        Some(0),
        "reserved, not called"
    );
    // The other service is rejected: ready, and `call` fails without
    // reaching the inner service.
    assert_ready_ok!(other.poll_ready());
    let err = other.call("second").await.unwrap_err();
    assert!(err.is::<Rejected>(), "{err}");
    assert_eq!(b.state(), State::HalfOpen);

    let response = a.call("probe");
    assert_request_eq!(handle, "probe").send_response("ok");
    assert_eq!(response.await.unwrap(), "ok");
    assert_eq!(b.state(), State::Closed);
}

#[tokio::test(start_paused = true)]
async fn dropped_service_gives_back_its_permit() {
    let b = half_open_breaker();
    to_half_open(&b).await;
    let (mut a, mut handle) = mock::spawn_layer::<&str, &str, _>(b.layer());
    handle.allow(2);
    let mut other = mock::Spawn::new(a.get_ref().clone());
    assert_ready_ok!(a.poll_ready());
    drop(a);
    assert_eq!(b.snapshot().available_permits, Some(1));
    assert_ready_ok!(other.poll_ready());
    let response = other.call("probe");
    assert_request_eq!(handle, "probe").send_response("ok");
    response.await.unwrap();
    assert_eq!(b.state(), State::Closed);
}

#[tokio::test(start_paused = true)]
async fn dropped_response_future_gives_back_its_permit() {
    let b = half_open_breaker();
    to_half_open(&b).await;
    let (mut svc, mut handle) = mock::spawn_layer::<&str, &str, _>(b.layer());
    handle.allow(2);
    assert_ready_ok!(svc.poll_ready());
    let response = svc.call("probe");
    assert_eq!(b.snapshot().available_permits, Some(0));
    drop(response);
    assert_eq!(b.snapshot().available_permits, Some(1));
    assert_eq!(b.state(), State::HalfOpen);
}

#[tokio::test(start_paused = true)]
async fn inner_errors_trip_and_rejection_does_not_poll_inner() {
    let b = Breaker::builder("dep").consecutive_failures(2).build();
    let (mut svc, mut handle) = mock::spawn_layer::<&str, &str, _>(b.layer());
    for _ in 0..2 {
        handle.allow(1);
        assert_ready_ok!(svc.poll_ready());
        let response = svc.call("x");
        assert_request_eq!(handle, "x").send_error("boom");
        assert_eq!(response.await.unwrap_err().to_string(), "boom");
    }
    assert_eq!(b.state(), State::Open);
    // The inner service is not ready (no allowance) and must not be polled:
    // poll_ready is Ready because admission was refused and latched.
    handle.allow(0);
    assert_ready_ok!(svc.poll_ready());
    let err: BoxError = svc.call("x").await.unwrap_err();
    assert!(err.is::<Rejected>(), "typed rejection: {err}");
    assert_eq!(b.snapshot().next_probe_in, Some(Duration::from_secs(30)));
    assert!(handle.poll_request().is_pending(), "inner never called");
}

#[tokio::test(start_paused = true)]
async fn admitted_service_waits_for_inner_readiness() {
    let b = Breaker::new("dep");
    let (mut svc, mut handle) = mock::spawn_layer::<&str, &str, _>(b.layer());
    handle.allow(0);
    assert_pending!(svc.poll_ready());
    handle.allow(1);
    assert!(svc.is_woken());
    assert_ready_ok!(svc.poll_ready());
}

#[tokio::test(start_paused = true)]
async fn ignored_errors_are_not_counted() {
    let b = Breaker::builder("dep").consecutive_failures(1).build();
    let ignore_cancel = |r: &Result<&str, BoxError>| match r {
        Err(e) if e.to_string() == "cancelled" => Outcome::Ignore,
        Err(_) => Outcome::Failure,
        Ok(_) => Outcome::Success,
    };
    let (mut svc, mut handle) =
        mock::spawn_layer::<&str, &str, _>(b.layer().classify(ignore_cancel));
    for _ in 0..3 {
        handle.allow(1);
        assert_ready_ok!(svc.poll_ready());
        let response = svc.call("x");
        assert_request_eq!(handle, "x").send_error("cancelled");
        assert!(response.await.is_err());
    }
    assert_eq!(b.state(), State::Closed);
    assert_eq!(b.snapshot().failures, 0);
}

#[tokio::test(start_paused = true)]
async fn backpressure_waits_instead_of_rejecting() {
    let b = Breaker::builder("dep").consecutive_failures(1).build();
    b.try_acquire().unwrap().failure();
    let (mut svc, mut handle) = mock::spawn_layer::<&str, &str, _>(b.layer().backpressure());
    handle.allow(1);
    assert_pending!(svc.poll_ready());
    assert_eq!(b.snapshot().rejected, 0, "waiting is not rejecting");
    tokio::time::advance(Duration::from_secs(30)).await;
    assert!(svc.is_woken(), "woken at the end of the open wait");
    assert_ready_ok!(svc.poll_ready());

    // Forced open: pending until a reset wakes it.
    let mut other = mock::Spawn::new(svc.get_ref().clone());
    drop(svc);
    b.force_open();
    assert_pending!(other.poll_ready());
    b.reset();
    assert!(other.is_woken(), "woken by the reset");
    assert_ready!(other.poll_ready()).unwrap();
}

#[tokio::test(start_paused = true)]
async fn reject_with_response_answers_503_with_retry_after() {
    use http::{Request, Response, StatusCode};
    let b = Breaker::builder("dep").consecutive_failures(1).build();
    b.try_acquire().unwrap().failure();
    tokio::time::advance(Duration::from_millis(20_500)).await;
    let (mut svc, _handle) =
        mock::spawn_layer::<Request<()>, Response<String>, _>(b.layer().reject_with_response());
    assert_ready_ok!(svc.poll_ready());
    let response = svc.call(Request::new(())).await.unwrap();
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(response.headers()["retry-after"], "10", "9.5 s rounded up");
    assert_eq!(response.body(), "");
}

#[tokio::test(start_paused = true)]
async fn backpressure_wakes_when_the_half_open_wait_ends_while_a_probe_hangs() {
    // Item 5: a half-open rejection carried no retry-after, so a waiter was
    // woken by nothing when `half_open_max_wait` elapsed with a probe hung.
    let b = Breaker::builder("dep")
        .consecutive_failures(1)
        .open_duration(Duration::from_secs(10))
        .half_open_max_wait(Duration::from_secs(5))
        .build();
    b.try_acquire().unwrap().failure();
    tokio::time::advance(Duration::from_secs(10)).await;
    let _hung = b.try_acquire().expect("the probe");
    let (mut svc, mut handle) = mock::spawn_layer::<&str, &str, _>(b.layer().backpressure());
    handle.allow(1);
    assert_pending!(svc.poll_ready());
    tokio::time::advance(Duration::from_secs(5)).await;
    assert!(svc.is_woken(), "woken when the half-open wait ends");
    // The overdue re-open is made by this admission; wait out the new open.
    assert_pending!(svc.poll_ready());
    assert_eq!(b.state(), State::Open);
    tokio::time::advance(Duration::from_secs(10)).await;
    assert!(svc.is_woken(), "woken at the end of the new open wait");
    assert_ready_ok!(svc.poll_ready());
    assert_eq!(b.state(), State::HalfOpen);
}
