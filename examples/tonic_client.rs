//! A tonic client behind `Breaker::grpc_layer`: the layer goes around
//! tonic's `Channel` (a tower service of `http::Request`s), and each call's
//! outcome is its `grpc-status`, read in the head (Trailers-Only) or in the
//! trailers after the reply.
//!
//! ```sh
//! cargo run --example tonic_client
//! ```
//!
//! Against a small gRPC server on loopback (`fir.Drafts/Draft`):
//!
//! 1. healthy: `OK`;
//! 2. ten empty complaints: `INVALID_ARGUMENT` (the caller's error); the
//!    breaker stays closed;
//! 3. the server's model is down: `UNAVAILABLE` in the trailers; the
//!    breaker opens after three and then rejects at once, without a call;
//! 4. the model is back: after the open wait a probe goes through, its
//!    trailers say `OK`, the breaker closes.
//!
//! The messages are UTF-8 strings through a small `tonic::codec::Codec`,
//! so the example needs no protobuf build; with generated clients the
//! stack is the same (`FooClient::new(svc)`).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::{Buf, BufMut};
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::transport::Channel;
use tonic::{Code, Status};
use tower::{BoxError, ServiceBuilder};
use tower_recovery::circuit_breaker::{Breaker, Rejected, State};

#[path = "support/grpc_server.rs"]
mod grpc_server;

/// Messages as UTF-8 text.
#[derive(Clone, Copy, Debug, Default)]
struct Text;

impl Codec for Text {
    type Encode = String;
    type Decode = String;
    type Encoder = Text;
    type Decoder = Text;

    fn encoder(&mut self) -> Self::Encoder {
        Text
    }

    fn decoder(&mut self) -> Self::Decoder {
        Text
    }
}

impl Encoder for Text {
    type Item = String;
    type Error = Status;

    fn encode(&mut self, item: String, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.put_slice(item.as_bytes());
        Ok(())
    }
}

impl Decoder for Text {
    type Item = String;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<String>, Status> {
        let bytes = src.copy_to_bytes(src.remaining());
        String::from_utf8(bytes.to_vec())
            .map(Some)
            .map_err(|e| Status::internal(format!("not UTF-8: {e}")))
    }
}

/// One unary call through any gRPC service stack.
async fn draft<T>(client: &mut tonic::client::Grpc<T>, complaint: &str) -> Result<String, Status>
where
    T: tonic::client::GrpcService<tonic::body::Body>,
    T::ResponseBody: http_body::Body<Data = bytes::Bytes> + Send + 'static,
    <T::ResponseBody as http_body::Body>::Error: Into<BoxError> + Send,
{
    client
        .ready()
        .await
        .map_err(|e| Status::unknown(e.into().to_string()))?;
    let path = http::uri::PathAndQuery::from_static("/fir.Drafts/Draft");
    let reply = client
        .unary(tonic::Request::new(complaint.to_string()), path, Text)
        .await?;
    Ok(reply.into_inner())
}

/// Whether `status` came from the breaker's refusal, not from the server.
fn refused(status: &Status) -> bool {
    let mut source = std::error::Error::source(status);
    while let Some(e) = source {
        if e.is::<Rejected>() {
            return true;
        }
        source = e.source();
    }
    false
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let model_up = Arc::new(AtomicBool::new(true));
    let base = grpc_server::start(model_up.clone()).await?;

    let breaker = Breaker::builder("drafts")
        .consecutive_failures(3)
        .open_duration(Duration::from_secs(1))
        .build();
    let channel = Channel::from_shared(base)?.connect().await?;
    let svc = ServiceBuilder::new()
        .layer(breaker.grpc_layer())
        .service(channel);
    let mut client = tonic::client::Grpc::new(svc);

    let text = draft(&mut client, "a stolen bicycle").await?;
    println!("healthy:        OK: {text}");

    for _ in 0..10 {
        let status = draft(&mut client, "").await.unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument);
    }
    println!(
        "empty x10:      INVALID_ARGUMENT each; breaker {}",
        breaker.state()
    );
    assert_eq!(breaker.state(), State::Closed);

    model_up.store(false, Ordering::SeqCst);
    let mut rejected = 0;
    for i in 1..=5 {
        let status = draft(&mut client, "a stolen bicycle").await.unwrap_err();
        if refused(&status) {
            rejected += 1;
            println!(
                "model down #{i}:  refused by the breaker ({})",
                status.message()
            );
        } else {
            assert_eq!(status.code(), Code::Unavailable);
            println!(
                "model down #{i}:  {:?} in the trailers; breaker {}",
                status.code(),
                breaker.state()
            );
        }
    }
    assert_eq!(breaker.state(), State::Open);
    assert_eq!(
        rejected, 2,
        "three UNAVAILABLE opened it; the next two were refused"
    );

    model_up.store(true, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let text = draft(&mut client, "a stolen bicycle").await?;
    println!("probe:          OK: {text}; breaker {}", breaker.state());
    assert_eq!(breaker.state(), State::Closed);
    Ok(())
}
