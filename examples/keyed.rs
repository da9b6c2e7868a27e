//! One breaker per upstream host: a client of three upstreams, one healthy,
//! one answering 500 and one stopped. The failing hosts' breakers open; the
//! healthy host keeps being served.
//!
//! `cargo run --example keyed` (starts its own upstreams on loopback).

use std::time::Duration;

use axum::Router;
use axum::http::StatusCode;
use axum::routing::get;
use bytes::Bytes;
use http::Request;
use http::uri::Authority;
use http_body_util::Full;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tower::{ServiceBuilder, ServiceExt};
use tower_recovery::circuit_breaker::keyed::{ByAuthority, KeyedBreaker};
use tower_recovery::circuit_breaker::{Breaker, Rejected};
use tower_recovery::classify::HttpErrorsAsFailures;

/// An upstream on loopback answering `status`.
async fn upstream(status: u16) -> Authority {
    let app = Router::new().route(
        "/",
        get(move || async move { StatusCode::from_u16(status).unwrap() }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let authority = listener.local_addr().unwrap().to_string().parse().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    authority
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let healthy = upstream(200).await;
    let failing = upstream(500).await;
    let stopped: Authority = {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        listener.local_addr().unwrap().to_string().parse().unwrap()
    };

    // One breaker per host, built like this template, at most 100 hosts;
    // a host idle (and closed) for 5 minutes is forgotten.
    let upstreams = KeyedBreaker::<Authority>::builder(
        Breaker::builder("upstream")
            .consecutive_failures(3)
            .open_duration(Duration::from_secs(30)),
    )
    .max_keys(100)
    .idle_timeout(Duration::from_secs(300))
    .build();

    let client = ServiceBuilder::new()
        .layer(
            upstreams
                .layer(ByAuthority)
                .classify(HttpErrorsAsFailures::new()),
        )
        .service(Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>());

    for round in 1..=5 {
        for host in [&healthy, &failing, &stopped] {
            let request = Request::get(format!("http://{host}/"))
                .body(Full::new(Bytes::new()))
                .unwrap();
            let answer = match client.clone().oneshot(request).await {
                Ok(response) => response.status().to_string(),
                Err(err) if err.is::<Rejected>() => "refused by its breaker".to_string(),
                Err(err) => format!("error: {err}"),
            };
            println!("round {round}: {host:<16} -> {answer}");
        }
    }

    println!();
    for (host, snapshot) in upstreams.snapshot() {
        println!(
            "{host:<16} {:<10} ({})",
            snapshot.state.as_str(),
            snapshot.name
        );
    }
    let summary = upstreams.summary(10);
    println!(
        "{} hosts: {} closed, {} open",
        summary.keys, summary.closed, summary.open
    );
    assert_eq!(summary.open, 2, "the failing and the stopped host");
    assert_eq!(summary.closed, 1, "the healthy host");
}
