//! Upstream-aware opening, each part against a real upstream on loopback:
//!
//! 1. an upstream answering `503` with `Retry-After: 2` opens the breaker
//!    for the 2 s it asks for, not the configured 30 s;
//! 2. a staged half-open ramp admits 20% of calls, rising to all of them
//!    over 2 s, before the breaker closes;
//! 3. metrics-only mode: the breaker trips and counts what it would have
//!    rejected, and rejects nothing.
//!
//! ```text
//! cargo run --example upstream_aware
//! ```

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use axum::Router;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use bytes::Bytes;
use http::Request;
use http_body_util::Full;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tower::{Service, ServiceBuilder, ServiceExt};
use tower_recovery::circuit_breaker::{Breaker, State};
use tower_recovery::classify::HttpErrorsAsFailures;

#[tokio::main]
async fn main() -> Result<(), tower_recovery::BoxError> {
    // The upstream: overloaded (503, come back in 2 s) until told otherwise.
    let overloaded = Arc::new(AtomicBool::new(true));
    let hits = Arc::new(AtomicU64::new(0));
    let app = Router::new().route(
        "/infer",
        get({
            let (overloaded, hits) = (overloaded.clone(), hits.clone());
            move || async move {
                hits.fetch_add(1, Ordering::Relaxed);
                if overloaded.load(Ordering::Relaxed) {
                    let mut response = (StatusCode::SERVICE_UNAVAILABLE, "busy").into_response();
                    response
                        .headers_mut()
                        .insert(header::RETRY_AFTER, HeaderValue::from_static("2"));
                    response
                } else {
                    (StatusCode::OK, "ok").into_response()
                }
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}/infer", listener.local_addr()?);
    tokio::spawn(async move { axum::serve(listener, app).await });

    let breaker = Breaker::builder("model_server")
        .consecutive_failures(3)
        .open_duration(Duration::from_secs(30))
        .half_open_ramp(0.2, Duration::from_secs(2))
        .build();
    let mut client = ServiceBuilder::new()
        .layer(breaker.layer().classify(HttpErrorsAsFailures::new()))
        .service(Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>());
    let request = || Request::get(&url).body(Full::new(Bytes::new())).unwrap();

    // 1. Three 503s open it, for the upstream's 2 s.
    let mut transitions = breaker.subscribe();
    for _ in 0..3 {
        let _ = client.ready().await?.call(request()).await;
    }
    let opened = transitions.recv().await?;
    println!(
        "opened by {} for {:?} (configured: 30 s)",
        opened.cause,
        opened.open_for.unwrap_or_default()
    );
    assert!(opened.open_for.unwrap() <= Duration::from_secs(2));

    // 2. The upstream recovers; after the 2 s, the ramp admits a share.
    overloaded.store(false, Ordering::Relaxed);
    // (The reject path reads a clock that ticks every millisecond.)
    tokio::time::sleep(opened.open_for.unwrap() + Duration::from_millis(20)).await;
    let mut admitted = 0;
    for _ in 0..50 {
        if client.ready().await?.call(request()).await.is_ok() {
            admitted += 1;
        }
    }
    println!(
        "ramp start: {admitted} of 50 calls admitted (share {:?})",
        breaker.snapshot().traffic_share
    );
    assert!(admitted < 50);
    while breaker.state() != State::Closed {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let _ = client.ready().await?.call(request()).await;
    }
    let closed = loop {
        let t = transitions.recv().await?;
        if t.to == State::Closed {
            break t;
        }
    };
    println!("closed: {}", closed.cause);

    // 3. Metrics-only: every call reaches the upstream; the breaker says
    //    what it would have done.
    overloaded.store(true, Ordering::Relaxed);
    let shadow = Breaker::builder("shadow")
        .consecutive_failures(3)
        .metrics_only()
        .build();
    let mut client = ServiceBuilder::new()
        .layer(shadow.layer().classify(HttpErrorsAsFailures::new()))
        .service(Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>());
    let before = hits.load(Ordering::Relaxed);
    for _ in 0..10 {
        let _ = client.ready().await?.call(request()).await?;
    }
    let snapshot = shadow.snapshot();
    println!(
        "metrics-only: state {}, {} calls reached the upstream, would have rejected {}",
        snapshot.state,
        hits.load(Ordering::Relaxed) - before,
        snapshot.shadow_rejected
    );
    assert_eq!(hits.load(Ordering::Relaxed) - before, 10);
    assert_eq!(snapshot.shadow_rejected, 7);
    Ok(())
}
