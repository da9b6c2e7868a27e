//! A breaker in front of a real HTTP upstream on loopback that goes away and
//! comes back. Run with `cargo run --example circuit_breaker`.
//!
//! The upstream is an axum server; the client is a raw HTTP/1.0 request over
//! `tokio::net::TcpStream` wrapped as a Tower service, so the example needs
//! nothing beyond the crate's dev-dependencies. Watch the log: five refused
//! connections open the circuit, calls are rejected at once while it is open,
//! and after the open wait a probe finds the upstream back and closes it.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tower::{BoxError, ServiceBuilder, ServiceExt, service_fn};
use tower_recovery::circuit_breaker::{Breaker, RecvError, Rejected, State};

async fn get(addr: SocketAddr) -> Result<String, BoxError> {
    let mut stream = TcpStream::connect(addr).await?;
    stream
        .write_all(b"GET /health HTTP/1.0\r\nHost: upstream\r\n\r\n")
        .await?;
    let mut response = String::new();
    stream.read_to_string(&mut response).await?;
    let status = response
        .split_whitespace()
        .nth(1)
        .unwrap_or("?")
        .to_string();
    Ok(status)
}

async fn serve(listener: TcpListener) {
    let app = axum::Router::new().route("/health", axum::routing::get(|| async { "ok" }));
    axum::serve(listener, app).await.unwrap();
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    tracing_subscriber::fmt().with_target(false).init();

    // Reserve a loopback port, then free it: nothing listens there yet.
    let addr = TcpListener::bind("127.0.0.1:0").await?.local_addr()?;

    let breaker = Breaker::builder("model_server")
        .consecutive_failures(5)
        .open_duration(Duration::from_secs(2))
        .build();
    let mut events = breaker.subscribe();
    tokio::spawn(async move {
        loop {
            match events.recv().await {
                Ok(t) => println!(
                    "transition: {} -> {} ({}), counts {:?}",
                    t.from, t.to, t.cause, t.counts
                ),
                Err(RecvError::Lagged(n)) => println!("({n} transitions missed)"),
                Err(RecvError::Closed) => break,
            }
        }
    });

    let client = ServiceBuilder::new()
        .layer(breaker.layer())
        .timeout(Duration::from_secs(1))
        .service(service_fn(move |()| get(addr)));

    for i in 1..=8 {
        match client.clone().oneshot(()).await {
            Ok(status) => println!("call {i}: upstream answered {status}"),
            Err(e) if e.is::<Rejected>() => println!("call {i}: rejected: {e}"),
            Err(e) => println!("call {i}: failed: {e}"),
        }
    }
    assert_eq!(breaker.state(), State::Open);

    // The upstream comes back on the same port.
    let server = tokio::spawn(serve(TcpListener::bind(addr).await?));
    tokio::time::sleep(Duration::from_secs(2)).await;
    println!("after the open wait the breaker is {}", breaker.state());
    let status = client.clone().oneshot(()).await?;
    println!(
        "probe: upstream answered {status}; breaker is {}",
        breaker.state()
    );
    assert_eq!(breaker.state(), State::Closed);
    println!("snapshot: {:?}", breaker.snapshot());
    server.abort();
    Ok(())
}
