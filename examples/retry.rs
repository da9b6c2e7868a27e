//! Retries that respect the breaker, against an upstream on loopback: the
//! README's layer order (retry outside, breaker inside, the client
//! innermost).
//!
//! 1. A `503` asking `Retry-After: 1` is retried after a second, and the
//!    retry succeeds.
//! 2. An upstream that keeps failing opens the breaker; the breaker's
//!    rejection is not retried (a retry against an open circuit is load on
//!    a dependency that is down, and the breaker exists to prevent it).
//!
//! ```text
//! cargo run --example retry --features retry
//! ```

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use axum::Router;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use bytes::Bytes;
use http::Request;
use http_body_util::Full;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tower::retry::RetryLayer;
use tower::{ServiceBuilder, ServiceExt};
use tower_recovery::circuit_breaker::{Breaker, Rejected};
use tower_recovery::classify::HttpErrorsAsFailures;
use tower_recovery::retry::RetryPolicy;

/// An upstream answering its requests with `answers` in turn (then 200).
async fn upstream(answers: Vec<StatusCode>) -> (String, Arc<AtomicUsize>) {
    let hits = Arc::new(AtomicUsize::new(0));
    let app = Router::new().route(
        "/infer",
        get({
            let hits = hits.clone();
            move || async move {
                let n = hits.fetch_add(1, Ordering::SeqCst);
                let status = answers.get(n).copied().unwrap_or(StatusCode::OK);
                let mut response = (status, "answer").into_response();
                if status == StatusCode::SERVICE_UNAVAILABLE {
                    response
                        .headers_mut()
                        .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
                }
                response
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("a loopback port");
    let url = format!("http://{}/infer", listener.local_addr().expect("bound"));
    tokio::spawn(async move { axum::serve(listener, app).await });
    (url, hits)
}

#[tokio::main]
async fn main() -> Result<(), tower_recovery::BoxError> {
    let get = |url: &str| Request::get(url).body(Full::new(Bytes::new())).unwrap();

    // 1. One 503 with Retry-After: 1, then 200.
    let (url, hits) = upstream(vec![StatusCode::SERVICE_UNAVAILABLE]).await;
    let breaker = Breaker::builder("model_server")
        .consecutive_failures(3)
        .build();
    let client = ServiceBuilder::new()
        .layer(RetryLayer::new(RetryPolicy::http()))
        .layer(breaker.layer().classify(HttpErrorsAsFailures::new()))
        .service(Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>());
    let started = Instant::now();
    let response = client.oneshot(get(&url)).await?;
    println!(
        "1. {} after {} tries in {:.1} s (the upstream asked for 1 s)",
        response.status(),
        hits.load(Ordering::SeqCst),
        started.elapsed().as_secs_f64()
    );
    assert_eq!(response.status(), StatusCode::OK);

    // 2. 502s: two tries open the breaker (2 failures); the third try is
    //    refused by it, and the refusal is given back, not retried.
    let (url, hits) = upstream(vec![StatusCode::BAD_GATEWAY; 10]).await;
    let breaker = Breaker::builder("model_server")
        .consecutive_failures(2)
        .build();
    let client = ServiceBuilder::new()
        .layer(RetryLayer::new(
            RetryPolicy::http().backoff(Duration::from_millis(10), Duration::from_millis(50)),
        ))
        .layer(breaker.layer().classify(HttpErrorsAsFailures::new()))
        .service(Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>());
    let err = client.clone().oneshot(get(&url)).await.unwrap_err();
    assert!(err.is::<Rejected>());
    let err = client.oneshot(get(&url)).await.unwrap_err();
    println!(
        "2. {err}; the upstream saw {} requests, the breaker is {}",
        hits.load(Ordering::SeqCst),
        breaker.state()
    );
    assert_eq!(
        hits.load(Ordering::SeqCst),
        2,
        "nothing retried past the breaker"
    );
    Ok(())
}
