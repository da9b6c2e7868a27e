//! A hyper-util client behind a breaker and a retry policy, against an
//! upstream this example starts, stops and starts again on loopback.
//!
//! ```sh
//! cargo run --example hyper_client --features retry
//! ```
//!
//! The stack, outermost first: `RetryPolicy` (retries errors and `5xx`,
//! never a breaker's rejection), the breaker (`HttpErrorsAsFailures`: `5xx`
//! and errors are failures), hyper-util's legacy client. While the upstream
//! is down, connections are refused: the retries meet the breaker's
//! failures, it opens after 3, and the calls after it are rejected at once
//! without touching the network. When the upstream is back, the first call
//! after the open wait is a probe; it succeeds and the breaker closes.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use axum::Router;
use axum::routing::get;
use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tower::retry::RetryLayer;
use tower::timeout::TimeoutLayer;
use tower::{BoxError, Service, ServiceBuilder, ServiceExt};
use tower_recovery::circuit_breaker::{Breaker, Rejected, State};
use tower_recovery::classify::HttpErrorsAsFailures;
use tower_recovery::retry::RetryPolicy;

/// Serves `GET /draft` on `addr` until the returned handle is aborted.
async fn upstream(addr: SocketAddr) -> tokio::task::JoinHandle<()> {
    let app = Router::new().route("/draft", get(|| async { "FIRST INFORMATION REPORT" }));
    let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() })
}

/// One call: the status and the body.
async fn draft<S, B>(svc: S, url: &str) -> Result<String, BoxError>
where
    S: Service<Request<Full<Bytes>>, Response = http::Response<B>, Error = BoxError>,
    B: hyper::body::Body,
    B::Error: Into<BoxError>,
{
    let request = Request::get(url).body(Full::new(Bytes::new()))?;
    let response = svc.oneshot(request).await?;
    let status = response.status();
    let body = response.into_body().collect().await.map_err(Into::into)?;
    Ok(format!(
        "{status} {}",
        String::from_utf8_lossy(&body.to_bytes())
    ))
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let addr = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?;
    let url = format!("http://{addr}/draft");
    let mut server = upstream(addr).await;

    let breaker = Breaker::builder("model_server")
        .consecutive_failures(3)
        .open_duration(Duration::from_secs(1))
        .build();
    let client = Client::builder(TokioExecutor::new())
        // A new connection per call, so that a stopped upstream is seen at
        // once (a pooled connection would outlive the listener).
        .pool_max_idle_per_host(0)
        .build_http::<Full<Bytes>>();
    let svc = ServiceBuilder::new()
        .layer(RetryLayer::new(
            RetryPolicy::http().backoff(Duration::from_millis(10), Duration::from_millis(50)),
        ))
        .layer(breaker.layer().classify(HttpErrorsAsFailures::new()))
        .layer(TimeoutLayer::new(Duration::from_secs(2)))
        .service(client);

    println!("upstream up:");
    for _ in 0..2 {
        println!(
            "  {} (breaker {})",
            draft(svc.clone(), &url).await?,
            breaker.state()
        );
    }
    assert_eq!(breaker.state(), State::Closed);

    server.abort();
    let _ = (&mut server).await;
    println!("upstream stopped:");
    for _ in 0..3 {
        let started = Instant::now();
        let err = draft(svc.clone(), &url).await.unwrap_err();
        let kind = if err.is::<Rejected>() {
            "rejected by the breaker"
        } else {
            "failed"
        };
        println!(
            "  {kind} in {:?}: {err} (breaker {})",
            started.elapsed(),
            breaker.state()
        );
    }
    assert_eq!(breaker.state(), State::Open);

    let _server = upstream(addr).await;
    println!("upstream back; waiting for the open wait to end...");
    tokio::time::sleep(Duration::from_millis(1100)).await;
    println!("  breaker {} (a probe is admitted)", breaker.state());
    println!(
        "  {} (breaker {})",
        draft(svc.clone(), &url).await?,
        breaker.state()
    );
    assert_eq!(breaker.state(), State::Closed);
    println!(
        "breaker transitions: {}, rejected calls: {}",
        breaker.snapshot().transitions,
        breaker.snapshot().rejected
    );
    Ok(())
}
