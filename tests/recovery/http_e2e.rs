//! End to end with a real HTTP upstream on loopback: it refuses connections,
//! the breaker trips, recovery tries with backoff, the upstream comes back,
//! recovery succeeds, the breaker closes and requests flow again.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tower::{BoxError, ServiceBuilder, ServiceExt, service_fn};
use tower_recovery::circuit_breaker::{Breaker, Rejected, State};
use tower_recovery::recovery::{Backoff, Recovery, RecoveryState};

async fn get(addr: SocketAddr, path: &str) -> Result<(u16, String), BoxError> {
    let mut stream = TcpStream::connect(addr).await?;
    stream
        .write_all(format!("GET {path} HTTP/1.0\r\nHost: upstream\r\n\r\n").as_bytes())
        .await?;
    let mut response = String::new();
    stream.read_to_string(&mut response).await?;
    let status = response
        .split_whitespace()
        .nth(1)
        .ok_or("no status")?
        .parse()?;
    let body = response
        .split("\r\n\r\n")
        .nth(1)
        .unwrap_or_default()
        .to_string();
    Ok((status, body))
}

async fn model_server(listener: TcpListener) {
    let app = axum::Router::new()
        .route("/health", axum::routing::get(|| async { "ok" }))
        .route(
            "/v1/models",
            axum::routing::get(|| async { r#"{"data":[{"id":"fir-draft"}]}"# }),
        );
    axum::serve(listener, app).await.unwrap();
}

#[tokio::test]
async fn real_upstream_goes_down_and_is_recovered() {
    let addr = TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap()
        .local_addr()
        .unwrap();
    let breaker = Breaker::builder("model_server")
        .consecutive_failures(5)
        .open_duration(Duration::from_secs(3600)) // only recovery can close it here
        .build();
    let recovery = Recovery::builder("model_server", move || async move {
        let (status, _) = get(addr, "/health").await?;
        if status != 200 {
            return Err::<(), BoxError>(format!("health {status}").into());
        }
        let (_, models) = get(addr, "/v1/models").await?;
        if !models.contains("fir-draft") {
            return Err("model not loaded".into());
        }
        Ok(())
    })
    .watch(&breaker)
    .max_attempts(20)
    .backoff(Backoff::new(Duration::from_millis(50), 1.5).max(Duration::from_millis(400)))
    .attempt_timeout(Duration::from_secs(2))
    .spawn();

    let client = ServiceBuilder::new()
        .layer(breaker.layer())
        .service(service_fn(move |()| get(addr, "/health")));

    // Nothing listens: five refused connections trip the breaker.
    for _ in 0..5 {
        let err = client.clone().oneshot(()).await.unwrap_err();
        assert!(!err.is::<Rejected>(), "a real connection error: {err}");
    }
    assert_eq!(breaker.state(), State::Open);
    assert_eq!(recovery.status().state, RecoveryState::Recovering);
    let err = client.clone().oneshot(()).await.unwrap_err();
    assert!(err.is::<Rejected>());

    // Let at least two attempts fail against the closed port.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while recovery.status().failed_attempts < 2 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "attempts did not run"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(breaker.state(), State::Open);

    // The upstream comes back on the same port.
    let server = tokio::spawn(model_server(TcpListener::bind(addr).await.unwrap()));
    tokio::time::timeout(Duration::from_secs(10), recovery.wait_idle_or_cooling())
        .await
        .expect("recovered within 10 s");
    assert_eq!(recovery.status().state, RecoveryState::CoolingDown);
    assert_eq!(breaker.state(), State::Closed);
    let (status, body) = client.clone().oneshot(()).await.unwrap();
    assert_eq!((status, body.as_str()), (200, "ok"));
    assert!(recovery.status().mttr.is_some());
    server.abort();
}
