//! A rehearsal: faults injected into a client feed its circuit breaker,
//! which opens, and closes again once the rehearsal ends itself. Run with
//! `cargo run --example chaos` (about 4 s).
//!
//! The chaos is switched on the way an operator would: `POST
//! /chaos/model_server` on the admin routes (with the bearer token), here
//! served on loopback next to the client.

use std::time::Duration;

use axum::Router;
use tower::{BoxError, Service, ServiceBuilder, ServiceExt, service_fn};
use tower_recovery::admin::Admin;
use tower_recovery::chaos::{Chaos, Injected};
use tower_recovery::circuit_breaker::{Breaker, Rejected, State};
use tower_recovery::drain::Drain;
use tower_recovery::health::Reliability;

const TOKEN: &str = "rehearsal";

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    tracing_subscriber::fmt().with_target(false).init();

    // The client: breaker outside, chaos inside, so the injected faults are
    // failures of the model server as the breaker sees them.
    let breaker = Breaker::builder("model_server")
        .consecutive_failures(3)
        .open_duration(Duration::from_secs(1))
        .build();
    let chaos = Chaos::new("model_server");
    let mut client = ServiceBuilder::new()
        .layer(breaker.layer())
        .layer(chaos.layer())
        .service(service_fn(|prompt: &'static str| async move {
            // The model server, in process: always fine.
            Ok::<_, BoxError>(format!("draft for {prompt}"))
        }));

    // The admin routes, with the chaos switch.
    let reliability = Reliability::builder().build()?;
    let admin = Admin::new(&reliability, &Drain::default()).token(TOKEN);
    let app: Router = Router::new()
        .merge(admin.chaos_router([&chaos]))
        .merge(admin.router());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let base = format!("http://{}", listener.local_addr()?);
    tokio::spawn(async move { axum::serve(listener, app).await });

    let draft = client.ready().await?.call("theft").await?;
    println!("before the rehearsal: {draft:?}");

    // Every call fails for 2 s: the rehearsal ends itself.
    let http = reqwest::Client::new();
    let answer = http
        .post(format!("{base}/chaos/model_server"))
        .bearer_auth(TOKEN)
        .body(r#"{"error_rate": 1.0, "duration_seconds": 2}"#)
        .send()
        .await?;
    println!(
        "POST /chaos/model_server -> {}: {}",
        answer.status(),
        answer.text().await?
    );

    let mut opened = false;
    for call in 1..=40 {
        let outcome = match client.ready().await?.call("theft").await {
            Ok(draft) => format!("ok: {draft:?}"),
            Err(e) if e.is::<Injected>() => format!("failed: {e}"),
            Err(e) if e.is::<Rejected>() => "rejected by the open breaker".to_string(),
            Err(e) => return Err(e),
        };
        let state = breaker.state();
        opened |= state == State::Open;
        println!("call {call:2}: {outcome:48} breaker {state}");
        if opened && !chaos.is_active() && state == State::Closed {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let after: serde_json::Value = http
        .get(format!("{base}/chaos/model_server"))
        .send()
        .await?
        .json()
        .await?;
    println!("GET /chaos/model_server -> {after}");
    assert!(opened, "the injected faults opened the breaker");
    assert_eq!(after["active"], false, "the rehearsal ended itself");
    assert_eq!(breaker.state(), State::Closed, "and the breaker closed");
    println!(
        "the breaker opened under {} injected faults and closed after the rehearsal",
        after["injected"]
    );
    Ok(())
}
