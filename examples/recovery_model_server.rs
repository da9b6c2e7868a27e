//! Recovery of an HTTP model server. Run with
//! `cargo run --example recovery_model_server`.
//!
//! A stand-in model server (axum, on loopback) is down when the example
//! starts and comes up three seconds later. The client is reqwest, wrapped as
//! a Tower service and guarded by a breaker that classifies `5xx` (and
//! connection errors) as failures. The recovery action is what the seed's
//! `recover_model_server` did: probe the health endpoint, then verify the
//! model is listed. Watch the log: the breaker opens, recovery attempts back
//! off (0 s, 1 s, 2 s, ...), the server comes up, recovery succeeds and
//! closes the breaker long before its own 30 s open wait would have.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::TcpListener;
use tower::{BoxError, ServiceBuilder, ServiceExt, service_fn};
use tower_recovery::circuit_breaker::{Breaker, Rejected, State};
use tower_recovery::classify::HttpErrorsAsFailures;
use tower_recovery::recovery::{Backoff, Recovery};

const MODEL: &str = "fir-draft-7b";

#[path = "support/describe.rs"]
mod describe;

use describe::describe;

/// The recovery action: health endpoint answers 200 and the model is loaded.
async fn probe_model_server(http: reqwest::Client, base: String) -> Result<(), BoxError> {
    tracing::info!("Attempting to recover model server connection...");
    let health = http
        .get(format!("{base}/health"))
        .send()
        .await
        .map_err(|e| {
            let text = describe(&e);
            tracing::error!("Model server recovery failed: {text}");
            text
        })?;
    if !health.status().is_success() {
        return Err(format!("health check answered {}", health.status()).into());
    }
    let models = http
        .get(format!("{base}/v1/models"))
        .send()
        .await?
        .text()
        .await?;
    if !models.contains(MODEL) {
        return Err(format!("model {MODEL} is not loaded").into());
    }
    tracing::info!("Model server connection recovered");
    Ok(())
}

async fn stand_in_model_server(addr: SocketAddr) {
    let app = axum::Router::new()
        .route("/health", axum::routing::get(|| async { "ok" }))
        .route(
            "/v1/models",
            axum::routing::get(|| async { format!(r#"{{"data":[{{"id":"{MODEL}"}}]}}"#) }),
        );
    let listener = TcpListener::bind(addr).await.expect("port still free");
    axum::serve(listener, app).await.unwrap();
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    tracing_subscriber::fmt().with_target(false).init();
    let addr = TcpListener::bind("127.0.0.1:0").await?.local_addr()?;
    let base = format!("http://{addr}");
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(2))
        .build()?;

    let breaker = Breaker::builder("model_server")
        .consecutive_failures(5)
        .build();
    let recovery = Recovery::builder("model_server", {
        let (http, base) = (http.clone(), base.clone());
        move || probe_model_server(http.clone(), base.clone())
    })
    .watch(&breaker)
    .max_attempts(5)
    .backoff(Backoff::new(Duration::from_millis(500), 2.0))
    .spawn();

    let client =
        ServiceBuilder::new()
            .layer(breaker.layer().classify(
                HttpErrorsAsFailures::new().with_status(|r: &reqwest::Response| r.status()),
            ))
            .service(service_fn(move |path: &'static str| {
                let request = http.get(format!("{base}{path}"));
                async move { request.send().await }
            }));

    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_secs(3)).await;
        tracing::info!("stand-in model server starting on {addr}");
        stand_in_model_server(addr).await;
    });

    for i in 1..=16 {
        match client.clone().oneshot("/health").await {
            Ok(response) => println!("request {i}: {}", response.status()),
            Err(e) if e.is::<Rejected>() => println!("request {i}: rejected ({e})"),
            Err(e) => println!("request {i}: failed ({e})"),
        }
        tokio::time::sleep(Duration::from_millis(400)).await;
    }
    let status = recovery.status();
    println!("breaker: {}, recovery: {:?}", breaker.state(), status);
    assert_eq!(breaker.state(), State::Closed);
    assert_eq!(status.recoveries, 1);
    Ok(())
}
