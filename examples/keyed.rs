//! One breaker per upstream host: a client of three upstreams, one healthy,
//! one answering 500 and one stopped. The failing hosts' breakers open; the
//! healthy host keeps being served. Each host also has a recovery of its
//! own, which probes that host: the stopped host comes back, its recovery
//! sees it and closes its breaker; the host answering 500 exhausts its
//! recovery; the healthy host's never runs.
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
use tower_recovery::circuit_breaker::{Breaker, Rejected, State};
use tower_recovery::classify::HttpErrorsAsFailures;
use tower_recovery::recovery::{Backoff, Recovery, RecoveryState};

/// An upstream on loopback answering `status`.
async fn upstream(status: u16) -> Authority {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let authority = listener.local_addr().unwrap().to_string().parse().unwrap();
    serve(listener, status);
    authority
}

fn serve(listener: tokio::net::TcpListener, status: u16) {
    let app = Router::new().route(
        "/",
        get(move || async move { StatusCode::from_u16(status).unwrap() }),
    );
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
}

type HttpClient = Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>>;

fn get_request(host: &Authority) -> Request<Full<Bytes>> {
    Request::get(format!("http://{host}/"))
        .body(Full::new(Bytes::new()))
        .unwrap()
}

/// A host's recovery action: is it answering again?
async fn probe(http: HttpClient, host: Authority) -> Result<(), String> {
    let response = http
        .request(get_request(&host))
        .await
        .map_err(|e| format!("{host}: {e}"))?;
    match response.status().as_u16() {
        200 => Ok(()),
        status => Err(format!("{host} answers {status}")),
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let healthy = upstream(200).await;
    let failing = upstream(500).await;
    let stopped: Authority = {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        listener.local_addr().unwrap().to_string().parse().unwrap()
    };

    let http: HttpClient = Client::builder(TokioExecutor::new()).build_http();

    // One breaker per host, built like this template, at most 100 hosts;
    // a host idle (and closed) for 5 minutes is forgotten. Each host has a
    // recovery that probes it (made with its breaker, named like it,
    // dropped with it).
    let probes = http.clone();
    let upstreams = KeyedBreaker::<Authority>::builder(
        Breaker::builder("upstream")
            .consecutive_failures(3)
            .open_duration(Duration::from_secs(30)),
    )
    .max_keys(100)
    .idle_timeout(Duration::from_secs(300))
    .recovery(move |host: &Authority| {
        let (http, host) = (probes.clone(), host.clone());
        Recovery::builder("upstream", move || probe(http.clone(), host.clone()))
            .max_attempts(4)
            .backoff(Backoff::new(Duration::from_millis(100), 2.0))
            .attempt_timeout(Duration::from_secs(2))
    })
    .build();

    let client = ServiceBuilder::new()
        .layer(
            upstreams
                .layer(ByAuthority)
                .classify(HttpErrorsAsFailures::new()),
        )
        .service(http);
    let round = async |round: u32| {
        for host in [&healthy, &failing, &stopped] {
            let answer = match client.clone().oneshot(get_request(host)).await {
                Ok(response) => response.status().to_string(),
                Err(err) if err.is::<Rejected>() => "refused by its breaker".to_string(),
                Err(err) => format!("error: {err}"),
            };
            println!("round {round}: {host:<16} -> {answer}");
        }
    };

    for n in 1..=4 {
        round(n).await;
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
        "{} hosts: {} closed, {} open, {} recovering",
        summary.keys, summary.closed, summary.open, summary.recovering
    );
    assert_eq!(summary.open, 2, "the failing and the stopped host");
    assert_eq!(summary.closed, 1, "the healthy host");

    // The stopped host comes back on its port: its own recovery sees it
    // and closes its breaker. The host answering 500 exhausts its own.
    serve(
        tokio::net::TcpListener::bind(stopped.as_str())
            .await
            .unwrap(),
        200,
    );
    let back = upstreams.recovery(&stopped).unwrap();
    let still_failing = upstreams.recovery(&failing).unwrap();
    let within = Duration::from_secs(10);
    tokio::time::timeout(within, back.wait_idle_or_cooling())
        .await
        .expect("recovered");
    tokio::time::timeout(
        within,
        still_failing.wait_for(|s| s == RecoveryState::Exhausted),
    )
    .await
    .expect("exhausted");
    println!();
    for recovery in [&back, &still_failing] {
        let status = recovery.status();
        println!(
            "{:<30} {:<12} {} failed attempts, {} recovered{}",
            status.name,
            status.state.as_str(),
            status.failed_attempts,
            status.recoveries,
            status
                .last_error
                .map(|e| format!(" (last error: {e})"))
                .unwrap_or_default()
        );
    }
    assert_eq!(upstreams.get(&stopped).state(), State::Closed);
    let healthy_recovery = upstreams.recovery(&healthy).unwrap().status();
    assert_eq!(
        healthy_recovery.failed_attempts + healthy_recovery.recoveries,
        0
    );
    println!();
    round(5).await;
    let summary = upstreams.summary(10);
    println!(
        "{} hosts: {} closed, {} open, {} exhausted",
        summary.keys, summary.closed, summary.open, summary.exhausted
    );
    assert_eq!((summary.closed, summary.open, summary.exhausted), (2, 1, 1));
}
