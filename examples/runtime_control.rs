//! Runtime control of a running breaker through the admin routes: show its
//! effective configuration, change its thresholds and open duration, force
//! it open and reset it, and read its recent events, without a restart.
//!
//! ```text
//! cargo run --example runtime_control            # runs the steps and exits
//! cargo run --example runtime_control -- --serve # then keeps serving for curl
//! ```

use std::time::Duration;

use serde_json::Value;
use tower_recovery::admin::Admin;
use tower_recovery::circuit_breaker::{Breaker, State};
use tower_recovery::drain::Drain;
use tower_recovery::health::{Dependency, HealthCheck, Reliability};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let serve = std::env::args().any(|a| a == "--serve");
    let breaker = Breaker::builder("model_server")
        .consecutive_failures(5)
        .open_duration(Duration::from_secs(30))
        .build();
    let reliability = Reliability::builder()
        .dependency(
            Dependency::new(
                "model_server",
                HealthCheck::new(|| async { Ok::<(), String>(()) }),
            )
            .breaker(&breaker),
        )
        .build()?;
    let token = "example-token";
    let router = Admin::new(&reliability, &Drain::default())
        .token(token)
        .router::<()>();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let base = format!("http://{}", listener.local_addr()?);
    tokio::spawn(async move { axum::serve(listener, router).await });
    let client = reqwest::Client::new();
    let url = |path: &str| format!("{base}/reliability/circuit-breaker/model_server{path}");

    let detail: Value = client.get(url("")).send().await?.json().await?;
    println!("effective configuration: {}", detail["config"]);

    // Trip sooner, stay open shorter: applied to the running breaker.
    let answer: Value = client
        .post(url("/config"))
        .bearer_auth(token)
        .body(r#"{"consecutive_failures": 2, "open_duration_seconds": 5}"#)
        .send()
        .await?
        .json()
        .await?;
    println!("changes: {}", answer["changes"]);
    for _ in 0..2 {
        breaker.try_acquire()?.failure();
    }
    assert_eq!(breaker.state(), State::Open, "two failures trip it now");

    // A bad value names the setting and changes nothing.
    let refused = client
        .post(url("/config"))
        .bearer_auth(token)
        .body(r#"{"failure_rate": 0.2}"#)
        .send()
        .await?;
    println!("refused ({}): {}", refused.status(), refused.text().await?);

    client
        .post(url("/force-open"))
        .bearer_auth(token)
        .send()
        .await?;
    client.post(url("/reset")).bearer_auth(token).send().await?;
    assert_eq!(breaker.state(), State::Closed);

    let detail: Value = client.get(url("")).send().await?.json().await?;
    println!("recent events, newest first:");
    for event in detail["recent_events"].as_array().into_iter().flatten() {
        println!(
            "  {} {} {}",
            event["time"].as_str().unwrap_or(""),
            event["type"].as_str().unwrap_or(""),
            event["to"]
                .as_str()
                .or(event["changes"].as_str())
                .unwrap_or("")
        );
    }
    if serve {
        println!("serving on {base} (token {token}); try:");
        println!("  curl {base}/reliability/circuit-breaker/model_server");
        println!(
            "  curl -X POST -H 'Authorization: Bearer {token}' -d '{{\"metrics_only\": true}}' \
             {base}/reliability/circuit-breaker/model_server/config"
        );
        tokio::signal::ctrl_c().await?;
    }
    Ok(())
}
