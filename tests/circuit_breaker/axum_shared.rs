//! The layer applied by a real `axum::Router`: every request, through every
//! clone of the router, governs one shared breaker.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use axum::Router;
use axum::body::Body;
use axum::extract::Path;
use axum::http::{Request, StatusCode};
use axum::routing::get;
use tower::ServiceExt;
use tower_recovery::circuit_breaker::{Breaker, State};
use tower_recovery::classify::HttpErrorsAsFailures;

#[tokio::test]
async fn router_layer_shares_one_breaker_across_oneshot_calls() {
    let breaker = Breaker::builder("upstream").consecutive_failures(5).build();
    let handled = Arc::new(AtomicUsize::new(0));
    let counter = handled.clone();
    let app = Router::new()
        .route(
            "/status/{code}",
            get(move |Path(code): Path<u16>| {
                counter.fetch_add(1, Ordering::SeqCst);
                async move { StatusCode::from_u16(code).unwrap() }
            }),
        )
        .layer(
            breaker
                .layer()
                .classify(HttpErrorsAsFailures::new())
                .reject_with_response(),
        );

    let get = |uri: &str| Request::builder().uri(uri).body(Body::empty()).unwrap();

    // 4xx are answers, not failures.
    for _ in 0..10 {
        let res = app.clone().oneshot(get("/status/404")).await.unwrap();
        assert_eq!(res.status(), StatusCode::NOT_FOUND);
    }
    // Five 500s through five different clones of the router trip it.
    for i in 0..5 {
        assert_eq!(breaker.state(), State::Closed, "after {i} failures");
        let res = app.clone().oneshot(get("/status/500")).await.unwrap();
        assert_eq!(res.status(), StatusCode::INTERNAL_SERVER_ERROR);
    }
    assert_eq!(breaker.state(), State::Open);
    assert_eq!(handled.load(Ordering::SeqCst), 15);

    // Now every clone rejects without reaching the handler.
    for _ in 0..20 {
        let res = app.clone().oneshot(get("/status/200")).await.unwrap();
        assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
        let retry: u64 = res.headers()["retry-after"]
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        assert!((1..=30).contains(&retry), "retry-after {retry}");
    }
    assert_eq!(handled.load(Ordering::SeqCst), 15);
    assert_eq!(breaker.snapshot().rejected, 20);

    breaker.reset();
    let res = app.oneshot(get("/status/200")).await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
}
