//! Upstream-aware opening through a real stack (breaker -> hyper-util
//! client -> an axum upstream on loopback): the open duration an upstream
//! asks for with `Retry-After`, its cap, and metrics-only mode.
#![cfg(feature = "circuit-breaker")]

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use axum::Router;
use axum::http::StatusCode;
use axum::routing::get;
use bytes::Bytes;
use http::{Request, Response, header};
use http_body_util::Full;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tower::{Service, ServiceBuilder, ServiceExt};
use tower_recovery::circuit_breaker::{Breaker, Rejected, State};
use tower_recovery::classify::HttpErrorsAsFailures;

/// An upstream answering every request with `status` and, if given,
/// `Retry-After: after`, counting requests.
async fn upstream(status: u16, after: Option<&'static str>) -> (String, Arc<AtomicUsize>) {
    let hits = Arc::new(AtomicUsize::new(0));
    let app = Router::new().route(
        "/infer",
        get({
            let hits = hits.clone();
            move || async move {
                hits.fetch_add(1, Ordering::SeqCst);
                let mut response = Response::new(axum::body::Body::from("busy"));
                *response.status_mut() = StatusCode::from_u16(status).unwrap();
                if let Some(after) = after {
                    response
                        .headers_mut()
                        .insert(header::RETRY_AFTER, after.parse().unwrap());
                }
                response
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/infer", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (url, hits)
}

/// The open duration of the opening one call to `url` through `breaker`
/// causes (the breaker trips on one failure).
async fn opening_after_one_call(breaker: &Breaker, url: &str, too_many: bool) -> Option<Duration> {
    let mut transitions = breaker.subscribe();
    let classify = if too_many {
        HttpErrorsAsFailures::new().with_too_many_requests()
    } else {
        HttpErrorsAsFailures::new()
    };
    let client = ServiceBuilder::new()
        .layer(breaker.layer().classify(classify))
        .service(Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>());
    let request = Request::get(url).body(Full::new(Bytes::new())).unwrap();
    let response = client.oneshot(request).await.unwrap();
    assert!(response.status().is_client_error() || response.status().is_server_error());
    if breaker.state() != State::Open {
        return None;
    }
    let t = transitions.try_recv().unwrap();
    assert_eq!(t.to, State::Open);
    t.open_for
}

/// `open_for` is `secs` counted from when the answer arrived: a little
/// less by the time the breaker opens.
fn about(open_for: Option<Duration>, secs: u64) -> bool {
    open_for.is_some_and(|d| {
        d <= Duration::from_secs(secs) && d > Duration::from_secs(secs) - Duration::from_millis(100)
    })
}

fn breaker() -> tower_recovery::circuit_breaker::Builder {
    Breaker::builder("model_server")
        .consecutive_failures(1)
        .open_duration(Duration::from_secs(30))
}

#[tokio::test]
async fn a_503_with_retry_after_opens_for_as_long_as_it_asks() {
    let (url, _) = upstream(503, Some("7")).await;
    let b = breaker().build();
    let open_for = opening_after_one_call(&b, &url, false).await;
    assert!(
        about(open_for, 7),
        "the upstream's 7 s, not the configured 30 s: {open_for:?}"
    );
    let next = b.snapshot().next_probe_in.unwrap();
    assert!(
        next <= Duration::from_secs(7) && next > Duration::from_secs(6),
        "{next:?}"
    );
    let rejection = b.try_acquire().unwrap_err();
    assert!(rejection.retry_after().unwrap() <= Duration::from_secs(7));
}

#[tokio::test]
async fn a_429_with_retry_after_counts_when_429_is_a_failure() {
    let (url, _) = upstream(429, Some("3")).await;
    let b = breaker().build();
    assert!(about(opening_after_one_call(&b, &url, true).await, 3));
    // Not classified as a failure: no opening at all.
    let b = breaker().build();
    assert_eq!(opening_after_one_call(&b, &url, false).await, None);
    assert_eq!(b.state(), State::Closed);
}

#[tokio::test]
async fn a_long_retry_after_is_capped() {
    let (url, _) = upstream(503, Some("3600")).await;
    let b = breaker().retry_after_cap(Duration::from_secs(60)).build();
    assert!(about(opening_after_one_call(&b, &url, false).await, 60));
}

#[tokio::test]
async fn retry_after_is_read_only_where_it_means_come_back_later() {
    // A 500 with Retry-After: the configured duration.
    let (url, _) = upstream(500, Some("7")).await;
    let b = breaker().build();
    assert_eq!(
        opening_after_one_call(&b, &url, false).await,
        Some(Duration::from_secs(30))
    );
    // Ignored by choice.
    let (url, _) = upstream(503, Some("7")).await;
    let b = breaker().ignore_retry_after().build();
    assert_eq!(
        opening_after_one_call(&b, &url, false).await,
        Some(Duration::from_secs(30))
    );
    // Not seconds: the configured duration.
    let (url, _) = upstream(503, Some("Wed, 21 Oct 2015 07:28:00 GMT")).await;
    let b = breaker().build();
    assert_eq!(
        opening_after_one_call(&b, &url, false).await,
        Some(Duration::from_secs(30))
    );
}

#[tokio::test]
async fn metrics_only_lets_every_call_through_and_says_what_it_would_have_done() {
    let (url, hits) = upstream(500, None).await;
    let b = Breaker::builder("model_server")
        .consecutive_failures(2)
        .metrics_only()
        .build();
    let mut client = ServiceBuilder::new()
        .layer(b.layer().classify(HttpErrorsAsFailures::new()))
        .service(Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>());
    for _ in 0..10 {
        let request = Request::get(&url).body(Full::new(Bytes::new())).unwrap();
        let response = client.ready().await.unwrap().call(request).await.unwrap();
        assert_eq!(response.status(), 500, "reached the upstream");
    }
    assert_eq!(hits.load(Ordering::SeqCst), 10, "nothing rejected");
    let snapshot = b.snapshot();
    assert_eq!(snapshot.state, State::Open, "it tripped as it would have");
    assert_eq!(snapshot.shadow_rejected, 8, "the calls after the trip");
    assert_eq!(snapshot.rejected, 0);

    // Enforcing now: the same stack rejects without reaching the upstream.
    b.tune(tower_recovery::circuit_breaker::Tuning::new().metrics_only(false))
        .unwrap();
    let request = Request::get(&url).body(Full::new(Bytes::new())).unwrap();
    let err = client
        .ready()
        .await
        .unwrap()
        .call(request)
        .await
        .unwrap_err();
    assert!(
        err.is::<Rejected>() || err.to_string().contains("not admitted"),
        "{err}"
    );
    assert_eq!(hits.load(Ordering::SeqCst), 10);
}

/// The gRPC layer: a proxy's `503` with `Retry-After` in front of a gRPC
/// service (UNAVAILABLE by the gRPC spec's HTTP mapping) sets the opening.
#[tokio::test(start_paused = true)]
async fn a_proxys_503_retry_after_sets_the_grpc_breakers_opening() {
    let b = breaker().build();
    let mut transitions = b.subscribe();
    let upstream = tower::service_fn(|_req: Request<Full<Bytes>>| async {
        let mut response = Response::new(Full::new(Bytes::new()));
        *response.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, "9".parse().unwrap());
        Ok::<_, std::convert::Infallible>(response)
    });
    let client = ServiceBuilder::new()
        .layer(b.grpc_layer())
        .service(upstream);
    let request = Request::post("http://proxy/fir.Drafts/Draft")
        .header("content-type", "application/grpc")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let _ = client.oneshot(request).await.unwrap();
    let t = transitions.try_recv().unwrap();
    assert_eq!(
        (t.to, t.open_for),
        (State::Open, Some(Duration::from_secs(9)))
    );
}

#[tokio::test(start_paused = true)]
async fn metrics_only_counts_what_a_backpressured_service_lets_through() {
    let breaker = Breaker::builder("shadow")
        .consecutive_failures(1)
        .metrics_only()
        .build();
    let mut svc = ServiceBuilder::new()
        .layer(breaker.layer().backpressure())
        .service(tower::service_fn(|fail: bool| async move {
            if fail {
                Err(std::io::Error::other("down"))
            } else {
                Ok(())
            }
        }));
    let _ = svc.ready().await.unwrap().call(true).await;
    assert_eq!(breaker.state(), State::Open);
    for _ in 0..5 {
        svc.ready().await.unwrap().call(false).await.unwrap();
    }
    assert_eq!(
        breaker.snapshot().shadow_rejected,
        5,
        "five calls let through by an open metrics-only breaker"
    );
}
