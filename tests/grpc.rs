//! gRPC classification through a real stack: a hyper HTTP/2 server on
//! loopback answering gRPC-shaped responses (`application/grpc`,
//! `grpc-status` in the headers or in HTTP/2 trailers), and hyper-util's
//! HTTP/2 client behind `Breaker::grpc_layer`.
#![cfg(feature = "circuit-breaker")]

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::stream;
use http::{Request, Response};
use http_body_util::{BodyExt, Empty, StreamBody, combinators::BoxBody};
use hyper::body::{Frame, Incoming};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::sync::Notify;
use tower::{Service, ServiceBuilder, ServiceExt};
use tower_recovery::circuit_breaker::{Breaker, Rejected, State};
use tower_recovery::classify::grpc::GrpcErrorsAsFailures;

type Body = BoxBody<Bytes, std::io::Error>;

/// One gRPC message frame: no compression, length, payload.
fn message(payload: &[u8]) -> Bytes {
    let mut out = vec![0u8];
    out.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    out.extend_from_slice(payload);
    out.into()
}

fn trailers(status: &str) -> http::HeaderMap {
    let mut t = http::HeaderMap::new();
    t.insert("grpc-status", status.parse().unwrap());
    t
}

/// `/trailers-only/{code}`: the status in the headers, no body.
/// `/trailers/{code}`: a message, then the status in the trailers.
/// `/held/{code}`: a message, then the trailers once `release` is notified.
/// `/reset`: a message, then the stream is reset.
/// `/no-status`: a message and the end of the stream, no trailers.
async fn answer(
    req: Request<Incoming>,
    release: Arc<Notify>,
) -> Result<Response<Body>, Infallible> {
    let path = req.uri().path().to_string();
    let mut parts = path.trim_start_matches('/').split('/');
    let kind = parts.next().unwrap_or_default().to_string();
    let code = parts.next().unwrap_or("0").to_string();
    let builder = Response::builder().header("content-type", "application/grpc");
    let body: Body = match kind.as_str() {
        "trailers-only" => {
            return Ok(builder
                .header("grpc-status", code)
                .header("grpc-message", "from the head")
                .body(Empty::new().map_err(|e| match e {}).boxed())
                .unwrap());
        }
        "trailers" => StreamBody::new(stream::iter([
            Ok(Frame::data(message(b"reply"))),
            Ok(Frame::trailers(trailers(&code))),
        ]))
        .boxed(),
        "held" => {
            let frames = stream::unfold(0, move |step| {
                let release = release.clone();
                let code = code.clone();
                async move {
                    match step {
                        0 => Some((Ok(Frame::data(message(b"first"))), 1)),
                        1 => {
                            release.notified().await;
                            Some((Ok(Frame::trailers(trailers(&code))), 2))
                        }
                        _ => None,
                    }
                }
            });
            StreamBody::new(frames).boxed()
        }
        "reset" => {
            // The reset comes after the head has reached the client.
            let frames = stream::unfold(0, |step| async move {
                match step {
                    0 => Some((Ok(Frame::data(message(b"partial"))), 1)),
                    1 => {
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        Some((Err(std::io::Error::other("server gave up")), 2))
                    }
                    _ => None,
                }
            });
            StreamBody::new(frames).boxed()
        }
        _ => StreamBody::new(stream::iter([Ok(Frame::data(message(b"no status")))])).boxed(),
    };
    Ok(builder.body(body).unwrap())
}

struct Server {
    base: String,
    release: Arc<Notify>,
}

async fn server() -> Server {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let release = Arc::new(Notify::new());
    let shared = release.clone();
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            let release = shared.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |req| answer(req, release.clone()));
                let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    Server { base, release }
}

fn client() -> Client<HttpConnector, Empty<Bytes>> {
    Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build_http()
}

fn request(server: &Server, path: &str) -> Request<Empty<Bytes>> {
    Request::post(format!("{}{path}", server.base))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(Empty::new())
        .unwrap()
}

/// Opens at a failure rate of 50% over the last 10 calls, from 2 calls;
/// `window_calls` counts the outcomes recorded.
fn breaker() -> Breaker {
    Breaker::builder("grpc")
        .count_window(10)
        .failure_rate(0.5)
        .minimum_calls(2)
        .open_duration(Duration::from_secs(60))
        .build()
}

#[tokio::test]
async fn trailers_only_errors_are_recorded_at_the_head() {
    let server = server().await;
    let breaker = breaker();
    let mut svc = ServiceBuilder::new()
        .layer(breaker.grpc_layer())
        .service(client());
    for _ in 0..2 {
        let response = svc
            .ready()
            .await
            .unwrap()
            .call(request(&server, "/trailers-only/14"))
            .await
            .unwrap();
        assert_eq!(response.headers()["grpc-status"], "14");
        // Recorded already: the body is not read.
        assert!(!response.body().is_pending());
    }
    assert_eq!(breaker.state(), State::Open);
    let err = svc
        .ready()
        .await
        .unwrap()
        .call(request(&server, "/trailers/0"))
        .await
        .unwrap_err();
    assert!(err.is::<Rejected>());
}

#[tokio::test]
async fn statuses_in_trailers_are_recorded_at_the_end_of_the_body() {
    let server = server().await;
    let breaker = breaker();
    let mut svc = ServiceBuilder::new()
        .layer(breaker.grpc_layer())
        .service(client());

    // The caller's error (INVALID_ARGUMENT) and OK: successes.
    for path in ["/trailers/3", "/trailers/0", "/trailers-only/5"] {
        let response = svc
            .ready()
            .await
            .unwrap()
            .call(request(&server, path))
            .await
            .unwrap();
        let collected = response.into_body().collect().await.unwrap();
        if path.starts_with("/trailers/") {
            let code = path.rsplit('/').next().unwrap();
            assert_eq!(collected.trailers().unwrap()["grpc-status"], code);
        }
    }
    assert_eq!(breaker.counts().window_calls, 3);
    assert_eq!(breaker.counts().window_failures, 0);

    // UNAVAILABLE in the trailers: nothing at the head, a failure at the end.
    for i in 1..=3u64 {
        let response = svc
            .ready()
            .await
            .unwrap()
            .call(request(&server, "/trailers/14"))
            .await
            .unwrap();
        assert!(response.body().is_pending());
        assert_eq!(breaker.counts().window_calls, 2 + i);
        response.into_body().collect().await.unwrap();
        assert_eq!(breaker.counts().window_failures, i);
    }
    assert_eq!(breaker.state(), State::Open);
}

#[tokio::test]
async fn a_reset_stream_or_a_missing_status_is_a_failure() {
    let server = server().await;
    let breaker = breaker();
    let mut svc = ServiceBuilder::new()
        .layer(breaker.grpc_layer())
        .service(client());
    let response = svc
        .ready()
        .await
        .unwrap()
        .call(request(&server, "/reset"))
        .await
        .unwrap();
    assert!(response.into_body().collect().await.is_err());
    assert_eq!(breaker.counts().window_failures, 1);

    let response = svc
        .ready()
        .await
        .unwrap()
        .call(request(&server, "/no-status"))
        .await
        .unwrap();
    let collected = response.into_body().collect().await.unwrap();
    assert!(collected.trailers().is_none());
    assert_eq!(breaker.counts().window_failures, 2);
    assert_eq!(breaker.state(), State::Open);
}

#[tokio::test]
async fn a_body_dropped_before_its_end_records_nothing() {
    let server = server().await;
    let breaker = breaker();
    let mut svc = ServiceBuilder::new()
        .layer(breaker.grpc_layer())
        .service(client());
    for _ in 0..3 {
        let response = svc
            .ready()
            .await
            .unwrap()
            .call(request(&server, "/trailers/14"))
            .await
            .unwrap();
        let mut body = response.into_body();
        let first = body.frame().await.unwrap().unwrap();
        assert!(first.is_data());
        drop(body);
    }
    assert_eq!(breaker.counts().window_calls, 0);
    assert_eq!(breaker.state(), State::Closed);
}

/// A half-open probe holds its permit until its trailers arrive: a second
/// call is rejected meanwhile; OK in the trailers closes the breaker.
#[tokio::test]
async fn a_probe_is_decided_by_its_trailers() {
    let server = server().await;
    let breaker = Breaker::builder("grpc")
        .consecutive_failures(1)
        .open_duration(Duration::from_millis(100))
        .build();
    let mut svc = ServiceBuilder::new()
        .layer(breaker.grpc_layer())
        .service(client());
    let response = svc
        .ready()
        .await
        .unwrap()
        .call(request(&server, "/trailers-only/13"))
        .await
        .unwrap();
    drop(response);
    assert_eq!(breaker.state(), State::Open);
    tokio::time::sleep(Duration::from_millis(150)).await;
    assert_eq!(breaker.state(), State::HalfOpen);

    let probe = svc
        .ready()
        .await
        .unwrap()
        .call(request(&server, "/held/0"))
        .await
        .unwrap();
    let mut body = probe.into_body();
    assert!(body.frame().await.unwrap().unwrap().is_data());
    // The head said nothing: the probe is still out.
    assert_eq!(breaker.state(), State::HalfOpen);
    let err = svc
        .ready()
        .await
        .unwrap()
        .call(request(&server, "/trailers/0"))
        .await
        .unwrap_err();
    assert!(err.is::<Rejected>(), "{err}");

    server.release.notify_one();
    let rest = body.collect().await.unwrap();
    assert_eq!(rest.trailers().unwrap()["grpc-status"], "0");
    assert_eq!(breaker.state(), State::Closed);
}

/// The plain layer with `GrpcErrorsAsFailures` as a `Classify` reads the
/// head only: a Trailers-Only error counts; a status in the trailers does
/// not (the documented limit of head-only classification).
#[tokio::test]
async fn the_plain_layer_reads_the_head_only() {
    let server = server().await;
    let breaker = breaker();
    let svc = ServiceBuilder::new()
        .layer(breaker.layer().classify(GrpcErrorsAsFailures::new()))
        .service(client());
    let response = svc
        .clone()
        .oneshot(request(&server, "/trailers/14"))
        .await
        .unwrap();
    response.into_body().collect().await.unwrap();
    assert_eq!(breaker.counts().window_failures, 0);
    let _ = svc
        .oneshot(request(&server, "/trailers-only/14"))
        .await
        .unwrap();
    assert_eq!(breaker.counts().window_failures, 1);
}

// ===== the end-of-body record, in process, on a manual clock =====

mod end_of_body {
    use std::collections::VecDeque;
    use std::pin::Pin;
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::task::{Context, Poll};

    use http_body_util::BodyExt;
    use hyper::body::{Body as _, Frame, SizeHint};
    use tokio::sync::mpsc;
    use tower_recovery::clock::ManualClock;

    use super::*;

    /// A body fed through a channel; counts polls after its end.
    #[derive(Debug)]
    struct Fed {
        rx: mpsc::UnboundedReceiver<Result<Frame<Bytes>, std::io::Error>>,
        ended: bool,
        after_end: Arc<AtomicUsize>,
    }

    impl hyper::body::Body for Fed {
        type Data = Bytes;
        type Error = std::io::Error;
        fn poll_frame(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
            if self.ended {
                self.after_end.fetch_add(1, Ordering::SeqCst);
                return Poll::Ready(None);
            }
            let polled = self.rx.poll_recv(cx);
            if let Poll::Ready(None) = polled {
                self.ended = true;
            }
            polled
        }
        fn size_hint(&self) -> SizeHint {
            SizeHint::with_exact(7)
        }
    }

    type Feed = mpsc::UnboundedSender<Result<Frame<Bytes>, std::io::Error>>;

    /// Responses handed out in order; each call's body feed comes back.
    #[derive(Clone, Default)]
    struct Script {
        heads: Arc<Mutex<VecDeque<Option<&'static str>>>>,
        feeds: Arc<Mutex<VecDeque<Feed>>>,
        after_end: Arc<AtomicUsize>,
    }

    impl Script {
        fn next(&self, grpc_status_in_head: Option<&'static str>) {
            self.heads.lock().unwrap().push_back(grpc_status_in_head);
        }
        fn feed(&self) -> Feed {
            self.feeds.lock().unwrap().pop_back().unwrap()
        }
        fn service(
            &self,
        ) -> impl Service<
            Request<()>,
            Response = Response<Fed>,
            Error = std::io::Error,
            Future: Send,
        > + Clone {
            let script = self.clone();
            tower::service_fn(move |_req: Request<()>| {
                let head = script.heads.lock().unwrap().pop_front().unwrap();
                let (tx, rx) = mpsc::unbounded_channel();
                script.feeds.lock().unwrap().push_back(tx);
                let mut b = Response::builder().header("content-type", "application/grpc");
                if let Some(code) = head {
                    b = b.header("grpc-status", code);
                }
                let body = Fed {
                    rx,
                    ended: false,
                    after_end: script.after_end.clone(),
                };
                std::future::ready(Ok::<_, std::io::Error>(b.body(body).unwrap()))
            })
        }
    }

    fn req() -> Request<()> {
        Request::new(())
    }

    #[tokio::test]
    async fn a_dropped_probe_body_gives_its_permit_back_exactly_once() {
        let clock = ManualClock::new();
        let breaker = Breaker::builder("grpc")
            .consecutive_failures(1)
            .open_duration(Duration::from_secs(10))
            .half_open_permits(1)
            .clock(clock.clone())
            .build();
        let script = Script::default();
        let mut svc = ServiceBuilder::new()
            .layer(breaker.grpc_layer())
            .service(script.service());

        script.next(Some("14"));
        let _ = svc.ready().await.unwrap().call(req()).await.unwrap();
        assert_eq!(breaker.state(), State::Open);
        clock.advance(Duration::from_secs(10));
        assert_eq!(breaker.state(), State::HalfOpen);

        // Probe A: its body pending; a second call is refused meanwhile.
        script.next(None);
        let a = svc.ready().await.unwrap().call(req()).await.unwrap();
        assert!(a.body().is_pending());
        let err = svc.ready().await.unwrap().call(req()).await.unwrap_err();
        assert!(err.is::<Rejected>(), "{err}");

        // Dropped before its end: the permit comes back, once.
        drop(a);
        script.next(None);
        let b = svc.ready().await.unwrap().call(req()).await.unwrap();
        assert!(b.body().is_pending(), "probe B admitted");
        let err = svc.ready().await.unwrap().call(req()).await.unwrap_err();
        assert!(
            err.is::<Rejected>(),
            "a third call admitted: the permit was given back twice ({err})"
        );

        // B ends with OK in its trailers: closed.
        let feed = script.feed();
        feed.send(Ok(Frame::data(Bytes::from_static(b"x"))))
            .unwrap();
        feed.send(Ok(Frame::trailers(trailers("0")))).unwrap();
        drop(feed);
        let collected = b.into_body().collect().await.unwrap();
        assert_eq!(collected.trailers().unwrap()["grpc-status"], "0");
        assert_eq!(breaker.state(), State::Closed);
    }

    #[tokio::test]
    async fn a_body_polled_after_its_end_records_once_and_passes_through() {
        let clock = ManualClock::new();
        let breaker = Breaker::builder("grpc")
            .count_window(10)
            .clock(clock.clone())
            .build();
        let script = Script::default();
        let mut svc = ServiceBuilder::new()
            .layer(breaker.grpc_layer())
            .service(script.service());
        script.next(None);
        let response = svc.ready().await.unwrap().call(req()).await.unwrap();
        let mut body = response.into_body();
        // Pending: never the end, whatever the inner body says; the hint
        // passes through.
        assert!(!body.is_end_stream());
        assert_eq!(body.size_hint().exact(), Some(7));
        let feed = script.feed();
        feed.send(Ok(Frame::trailers(trailers("14")))).unwrap();
        drop(feed);
        assert!(body.frame().await.unwrap().unwrap().is_trailers());
        assert!(!body.is_pending());
        assert_eq!(breaker.counts().window_failures, 1);
        assert_eq!(breaker.counts().window_calls, 1);
        // After the record: the inner body's own end, seen and passed on,
        // and nothing recorded again.
        assert!(body.frame().await.is_none());
        assert!(body.frame().await.is_none());
        assert_eq!(script.after_end.load(Ordering::SeqCst), 1);
        assert_eq!(breaker.counts().window_calls, 1);
    }

    #[tokio::test]
    async fn a_probe_whose_body_ends_without_trailers_reopens() {
        let clock = ManualClock::new();
        let breaker = Breaker::builder("grpc")
            .consecutive_failures(1)
            .open_duration(Duration::from_secs(10))
            .clock(clock.clone())
            .build();
        let script = Script::default();
        let mut svc = ServiceBuilder::new()
            .layer(breaker.grpc_layer())
            .service(script.service());
        script.next(Some("14"));
        let _ = svc.ready().await.unwrap().call(req()).await.unwrap();
        clock.advance(Duration::from_secs(10));
        script.next(None);
        let probe = svc.ready().await.unwrap().call(req()).await.unwrap();
        drop(script.feed());
        let _ = probe.into_body().collect().await.unwrap();
        assert_eq!(breaker.state(), State::Open);
    }
}
