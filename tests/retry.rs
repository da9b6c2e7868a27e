//! `RetryPolicy` through a real stack: retry (outside) -> breaker -> a
//! hyper-util client -> an upstream on loopback.
#![cfg(all(feature = "retry", feature = "webhook", feature = "drain"))]

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use axum::Router;
use axum::http::StatusCode;
use axum::routing::get;
use bytes::Bytes;
use http::{Request, Response, header};
use http_body_util::Full;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tower::retry::{Policy, RetryLayer};
use tower::{ServiceBuilder, ServiceExt};
use tower_recovery::circuit_breaker::{
    Breaker, DefaultRejectResponse, RejectWithResponse, Rejected,
};
use tower_recovery::retry::RetryPolicy;

/// An upstream answering each request with the next of `answers` (then
/// 200), counting requests.
async fn upstream(answers: Vec<(u16, Option<&'static str>)>) -> (String, Arc<AtomicUsize>) {
    let hits = Arc::new(AtomicUsize::new(0));
    let answers = Arc::new(answers);
    let app = Router::new().route(
        "/draft",
        get({
            let hits = hits.clone();
            move || async move {
                let n = hits.fetch_add(1, Ordering::SeqCst);
                let (status, after) = answers.get(n).copied().unwrap_or((200, None));
                let mut response = Response::new(axum::body::Body::from("draft"));
                *response.status_mut() = StatusCode::from_u16(status).unwrap();
                if let Some(after) = after {
                    response
                        .headers_mut()
                        .insert(header::RETRY_AFTER, after.parse().unwrap());
                }
                response
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/draft", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (url, hits)
}

/// Counts the tries a retry makes (the layer just inside it).
fn counting(
    calls: &Arc<AtomicUsize>,
) -> impl Fn(Request<Full<Bytes>>) -> Request<Full<Bytes>> + Clone {
    let calls = calls.clone();
    move |r| {
        calls.fetch_add(1, Ordering::SeqCst);
        r
    }
}

fn get_request(url: &str) -> Request<Full<Bytes>> {
    Request::get(url).body(Full::new(Bytes::new())).unwrap()
}

#[tokio::test]
async fn a_503_with_retry_after_is_retried_after_it() {
    let (url, hits) = upstream(vec![(503, Some("1"))]).await;
    let breaker = Breaker::builder("model_server")
        .consecutive_failures(5)
        .build();
    let client = ServiceBuilder::new()
        .layer(RetryLayer::new(RetryPolicy::http()))
        .layer(breaker.layer())
        .service(Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>());
    let started = Instant::now();
    let response = client.oneshot(get_request(&url)).await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(hits.load(Ordering::SeqCst), 2, "one retry");
    assert!(
        started.elapsed() >= Duration::from_secs(1),
        "Retry-After honoured"
    );
}

#[tokio::test]
async fn a_retry_after_past_the_cap_is_not_waited_for() {
    let (url, hits) = upstream(vec![(429, Some("120"))]).await;
    let client = ServiceBuilder::new()
        .layer(RetryLayer::new(RetryPolicy::http()))
        .service(Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>());
    let response = client.oneshot(get_request(&url)).await.unwrap();
    assert_eq!(response.status(), 429, "given back as it is");
    assert_eq!(hits.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn the_breakers_rejection_is_never_retried() {
    // 502s: the first try and one retry open the breaker (2 consecutive
    // failures, 5xx counted); the next request is refused by it at once.
    let (url, hits) = upstream(vec![(502, None), (502, None), (502, None)]).await;
    let breaker = Breaker::builder("model_server")
        .consecutive_failures(2)
        .build();
    let layer = breaker
        .layer()
        .classify(tower_recovery::classify::HttpErrorsAsFailures::new());
    let calls = Arc::new(AtomicUsize::new(0));
    let client = ServiceBuilder::new()
        .layer(RetryLayer::new(
            RetryPolicy::http().backoff(Duration::from_millis(1), Duration::from_millis(5)),
        ))
        .map_request(counting(&calls))
        .layer(layer)
        .service(Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>());
    let err = client.clone().oneshot(get_request(&url)).await.unwrap_err();
    assert!(err.is::<Rejected>(), "the third try was refused: {err}");
    assert_eq!(
        hits.load(Ordering::SeqCst),
        2,
        "two tries reached the upstream"
    );
    assert_eq!(
        calls.load(Ordering::SeqCst),
        3,
        "two retries, the last refused"
    );
    let err = client.oneshot(get_request(&url)).await.unwrap_err();
    assert!(err.is::<Rejected>());
    assert_eq!(calls.load(Ordering::SeqCst), 4, "refused, and not retried");
    assert_eq!(hits.load(Ordering::SeqCst), 2);
}

/// A server-side breaker answering `503` (`RejectWithResponse`): the answer
/// is marked as a refusal, and not retried.
#[tokio::test]
async fn a_rejection_answered_as_a_503_is_never_retried() {
    let breaker = Breaker::builder("api").consecutive_failures(1).build();
    breaker.force_open();
    let tries = Arc::new(AtomicUsize::new(0));
    let counted = tries.clone();
    let calls = Arc::new(AtomicUsize::new(0));
    let server = ServiceBuilder::new()
        .layer(RetryLayer::new(RetryPolicy::http()))
        .map_request(counting(&calls))
        .layer(
            breaker
                .layer()
                .on_reject(RejectWithResponse::new(DefaultRejectResponse)),
        )
        .service(tower::service_fn(move |_: Request<Full<Bytes>>| {
            counted.fetch_add(1, Ordering::SeqCst);
            async { Ok::<_, std::convert::Infallible>(Response::new(Full::new(Bytes::new()))) }
        }));
    let response = server
        .oneshot(get_request("http://local/fir"))
        .await
        .unwrap();
    assert_eq!(response.status(), 503);
    assert_eq!(tries.load(Ordering::SeqCst), 0);
    assert_eq!(
        calls.load(Ordering::SeqCst),
        1,
        "refused by the breaker, not retried"
    );
}

#[tokio::test]
async fn a_drains_refusal_is_never_retried() {
    let drain = tower_recovery::drain::Drain::default();
    drain.begin();
    drain.accepting_stopped().await;
    let tries = Arc::new(AtomicUsize::new(0));
    let counted = tries.clone();
    let calls = Arc::new(AtomicUsize::new(0));
    let server = ServiceBuilder::new()
        .layer(RetryLayer::new(RetryPolicy::http()))
        .map_request(counting(&calls))
        .layer(drain.layer())
        .service(tower::service_fn(move |_: Request<Full<Bytes>>| {
            counted.fetch_add(1, Ordering::SeqCst);
            async { Ok::<_, std::convert::Infallible>(Response::new(Full::new(Bytes::new()))) }
        }));
    let response = server
        .oneshot(get_request("http://local/fir"))
        .await
        .unwrap();
    assert_eq!(response.status(), 503);
    assert_eq!(tries.load(Ordering::SeqCst), 0);
    assert_eq!(
        calls.load(Ordering::SeqCst),
        1,
        "refused by the drain, not retried"
    );
}

#[test]
fn a_request_is_cloned_whole() {
    let mut policy = RetryPolicy::http();
    let mut request = get_request("http://upstream/draft");
    request
        .headers_mut()
        .insert("x-trace", "7".parse().unwrap());
    request.extensions_mut().insert(42u32);
    let clone = <RetryPolicy as Policy<_, Response<()>, std::io::Error>>::clone_request(
        &mut policy,
        &request,
    )
    .unwrap();
    assert_eq!(clone.uri(), request.uri());
    assert_eq!(clone.headers()["x-trace"], "7");
    assert_eq!(clone.extensions().get::<u32>(), Some(&42));
}
