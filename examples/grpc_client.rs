//! A gRPC client behind `Breaker::grpc_layer`: the outcome of each call is
//! its `grpc-status`, in the response head (Trailers-Only) or in the
//! trailers after the reply.
//!
//! ```sh
//! cargo run --example grpc_client
//! ```
//!
//! The example starts a small gRPC server on loopback (`fir.Drafts/Draft`,
//! HTTP/2, `application/grpc`, messages length-prefixed, the status in
//! HTTP/2 trailers) and calls it with hyper-util's HTTP/2 client:
//!
//! 1. healthy: replies with `grpc-status: 0` in the trailers;
//! 2. an empty complaint: `INVALID_ARGUMENT` (the caller's error) ten
//!    times; the breaker stays closed;
//! 3. the server's model is down: a reply frame, then `UNAVAILABLE` in the
//!    trailers; the breaker opens after 3 and rejects at once;
//! 4. the model is back: after the open wait a probe goes through, its
//!    trailers say `OK`, the breaker closes.
//!
//! `examples/tonic_client.rs` puts the same layer around a tonic
//! `Channel`; this one speaks gRPC's wire format by hand, to show what the
//! layer reads.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tower::{BoxError, Service, ServiceBuilder, ServiceExt};
use tower_recovery::circuit_breaker::{Breaker, Rejected, State};

#[path = "support/grpc_server.rs"]
mod grpc_server;
use grpc_server::frame;

/// One unary call: the reply's text and the status from the trailers (or
/// the head).
async fn draft<S, B>(svc: &mut S, base: &str, complaint: &str) -> Result<(String, String), BoxError>
where
    S: Service<Request<Full<Bytes>>, Response = Response<B>, Error = BoxError>,
    B: hyper::body::Body,
    B::Error: Into<BoxError>,
{
    let request = Request::post(format!("{base}/fir.Drafts/Draft"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(Full::new(frame(complaint.as_bytes())))?;
    let response = svc.ready().await?.call(request).await?;
    let head_status = response.headers().get("grpc-status").cloned();
    let collected = response.into_body().collect().await.map_err(Into::into)?;
    let status = head_status
        .or_else(|| {
            collected
                .trailers()
                .and_then(|t| t.get("grpc-status").cloned())
        })
        .map(|v| v.to_str().unwrap_or("?").to_string())
        .unwrap_or_default();
    let bytes = collected.to_bytes();
    let text = String::from_utf8_lossy(bytes.get(5..).unwrap_or_default()).into_owned();
    Ok((text, status))
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let model_up = Arc::new(AtomicBool::new(true));
    let base = grpc_server::start(model_up.clone()).await?;

    let breaker = Breaker::builder("drafts")
        .consecutive_failures(3)
        .open_duration(Duration::from_secs(1))
        .build();
    let channel = Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build_http::<Full<Bytes>>();
    let mut svc = ServiceBuilder::new()
        .layer(breaker.grpc_layer())
        .service(channel);

    let (text, status) = draft(&mut svc, &base, "a stolen bicycle").await?;
    println!("healthy:        grpc-status {status}: {text}");

    for _ in 0..10 {
        let (_, status) = draft(&mut svc, &base, "").await?;
        assert_eq!(status, "3");
    }
    println!(
        "empty x10:      grpc-status 3 (INVALID_ARGUMENT) each; breaker {}",
        breaker.state()
    );
    assert_eq!(breaker.state(), State::Closed);

    model_up.store(false, Ordering::SeqCst);
    for i in 1..=4 {
        match draft(&mut svc, &base, "a stolen bicycle").await {
            Ok((_, status)) => println!(
                "model down #{i}:  grpc-status {status} in the trailers; breaker {}",
                breaker.state()
            ),
            Err(e) if e.is::<Rejected>() => {
                println!("model down #{i}:  rejected by the breaker: {e}")
            }
            Err(e) => return Err(e),
        }
    }
    assert_eq!(breaker.state(), State::Open);

    model_up.store(true, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    println!("model back:     breaker {}", breaker.state());
    let (text, status) = draft(&mut svc, &base, "a stolen bicycle").await?;
    println!(
        "probe:          grpc-status {status}: {text}; breaker {}",
        breaker.state()
    );
    assert_eq!(breaker.state(), State::Closed);
    Ok(())
}
