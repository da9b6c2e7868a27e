//! A small gRPC server for the examples: `fir.Drafts/Draft` over HTTP/2 on
//! loopback, `application/grpc`, messages length-prefixed, the status in
//! the HTTP/2 trailers (or, for a caller's error, in the head:
//! Trailers-Only). The request's payload is the complaint as UTF-8 (a real
//! service would use protobuf; the framing and the status are gRPC's).

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use bytes::Bytes;
use http::{HeaderMap, Request, Response};
use http_body_util::{BodyExt, Full, StreamBody, combinators::BoxBody};
use hyper::body::{Frame, Incoming};
use hyper_util::rt::{TokioExecutor, TokioIo};

/// A gRPC message frame: not compressed, a 4-byte length, the payload.
pub(crate) fn frame(payload: &[u8]) -> Bytes {
    let mut out = Vec::with_capacity(5 + payload.len());
    out.push(0);
    out.extend_from_slice(&u32::try_from(payload.len()).unwrap().to_be_bytes());
    out.extend_from_slice(payload);
    out.into()
}

/// `fir.Drafts/Draft`: the request's payload is the complaint (a real
/// service would use protobuf; the framing and status are gRPC's).
async fn serve(
    req: Request<Incoming>,
    model_up: Arc<AtomicBool>,
) -> Result<Response<BoxBody<Bytes, Infallible>>, Infallible> {
    let body = req.into_body().collect().await.map(|b| b.to_bytes());
    let complaint = body.map(|b| b.slice(5.min(b.len())..)).unwrap_or_default();
    let response = Response::builder().header("content-type", "application/grpc");
    if complaint.is_empty() {
        // Trailers-Only: the status in the head, no body.
        return Ok(response
            .header("grpc-status", "3")
            .header("grpc-message", "complaint must not be empty")
            .body(Full::new(Bytes::new()).boxed())
            .unwrap());
    }
    let (reply, status) = if model_up.load(Ordering::SeqCst) {
        let draft = format!(
            "FIRST INFORMATION REPORT: {}",
            String::from_utf8_lossy(&complaint)
        );
        (frame(draft.as_bytes()), "0")
    } else {
        (frame(b""), "14")
    };
    let mut trailers = HeaderMap::new();
    trailers.insert("grpc-status", status.parse().unwrap());
    let frames =
        futures_util::stream::iter([Ok(Frame::data(reply)), Ok(Frame::trailers(trailers))]);
    Ok(response.body(StreamBody::new(frames).boxed()).unwrap())
}

/// Starts the server on 127.0.0.1; `model_up` false makes every call end
/// with `UNAVAILABLE` in the trailers. Returns its base URL.
pub(crate) async fn start(model_up: Arc<AtomicBool>) -> std::io::Result<String> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let base = format!("http://{}", listener.local_addr()?);
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let model_up = model_up.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |r| serve(r, model_up.clone()));
                let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    Ok(base)
}
