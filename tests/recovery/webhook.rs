//! `WebhookAlert` against a real receiver on loopback: the body, retries,
//! deduplication, the rate limit, an unreachable receiver, and a recovery
//! that alerts through it.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use axum::Router;
use axum::http::StatusCode;
use axum::routing::post;
use serde_json::Value;
use tower_recovery::recovery::{
    Alert, AlertEvent, Mode, Recovery, RecoveryState, WebhookAlert, WebhookStats,
};

/// A receiver that answers 500 to its first `fail` requests, then 204, and
/// keeps every body it got.
struct Receiver {
    url: String,
    bodies: Arc<Mutex<Vec<Value>>>,
    requests: Arc<AtomicUsize>,
}

async fn receiver(fail: usize) -> Receiver {
    let bodies = Arc::new(Mutex::new(Vec::new()));
    let requests = Arc::new(AtomicUsize::new(0));
    let app = Router::new().route(
        "/alerts",
        post({
            let (bodies, requests) = (bodies.clone(), requests.clone());
            move |body: String| async move {
                let n = requests.fetch_add(1, Ordering::SeqCst);
                if n < fail {
                    return StatusCode::INTERNAL_SERVER_ERROR;
                }
                bodies
                    .lock()
                    .unwrap()
                    .push(serde_json::from_str(&body).unwrap());
                StatusCode::NO_CONTENT
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/alerts", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    Receiver {
        url,
        bodies,
        requests,
    }
}

fn event(dependency: &str) -> AlertEvent {
    let at = SystemTime::now();
    AlertEvent {
        kind: "exhausted",
        dependency: dependency.into(),
        state: RecoveryState::Exhausted,
        attempts: 3,
        max_attempts: 3,
        last_error: Some("connection refused".into()),
        since: Some(at - Duration::from_secs(6)),
        root_cause: "storage".into(),
        exhausted_cycles: 1,
        at,
    }
}

/// Waits (real time, 10 s at most) until the stats say `done`.
async fn until(webhook: &WebhookAlert, done: impl Fn(WebhookStats) -> bool) -> WebhookStats {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let stats = webhook.stats();
        if done(stats) {
            return stats;
        }
        assert!(Instant::now() < deadline, "not within 10 s: {stats:?}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test]
async fn an_alert_is_posted_as_json_and_retried_until_delivered() {
    let rx = receiver(2).await;
    let webhook = WebhookAlert::builder(&rx.url)
        .unwrap()
        .retries(3, Duration::from_millis(20))
        .build();
    webhook.alert(&event("model_server"));
    let stats = until(&webhook, |s| s.delivered == 1).await;
    assert_eq!(stats.failed, 0);
    assert_eq!(rx.requests.load(Ordering::SeqCst), 3, "two 500s, then 204");
    let body = rx.bodies.lock().unwrap()[0].clone();
    assert_eq!(body["kind"], "exhausted");
    assert_eq!(body["dependency"], "model_server");
    assert_eq!(body["root_cause"], "storage");
    assert_eq!(body["state"], "exhausted");
    assert_eq!(
        (body["attempts"].as_u64(), body["max_attempts"].as_u64()),
        (Some(3), Some(3))
    );
    assert_eq!(body["last_error"], "connection refused");
    assert_eq!(body["down_for_seconds"], 6.0);
    let since = body["since"].as_str().unwrap();
    assert!(since.len() == 20 && since.ends_with('Z'), "{since}");
}

#[tokio::test]
async fn repeats_are_deduplicated_and_a_storm_is_rate_limited() {
    let rx = receiver(0).await;
    let webhook = WebhookAlert::builder(&rx.url)
        .unwrap()
        .rate_limit(3, Duration::from_secs(60))
        .build();
    webhook.alert(&event("model_server"));
    webhook.alert(&event("model_server")); // the same alert again
    for dependency in ["asr", "cache", "queue", "search"] {
        webhook.alert(&event(dependency));
    }
    let stats = until(&webhook, |s| {
        s.delivered + s.deduplicated + s.rate_limited == 6
    })
    .await;
    assert_eq!(
        stats,
        WebhookStats {
            delivered: 3,
            deduplicated: 1,
            rate_limited: 2,
            ..Default::default()
        }
    );
    let mut got: Vec<String> = rx
        .bodies
        .lock()
        .unwrap()
        .iter()
        .map(|b| b["dependency"].as_str().unwrap().to_string())
        .collect();
    got.sort();
    assert_eq!(got, ["asr", "cache", "model_server"], "the first three");
}

#[tokio::test]
async fn an_unreachable_receiver_fails_after_its_retries() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port(); // closed again: connections are refused
    let webhook = WebhookAlert::builder(&format!("http://127.0.0.1:{port}/alerts"))
        .unwrap()
        .retries(2, Duration::from_millis(10))
        .build();
    webhook.alert(&event("model_server"));
    let stats = until(&webhook, |s| s.failed == 1).await;
    assert_eq!(stats.delivered, 0);
}

#[test]
fn a_bad_url_is_refused_with_the_reason() {
    let err = WebhookAlert::builder("https://pager.example/alerts").unwrap_err();
    assert!(err.to_string().contains("https is not supported"), "{err}");
    let err = WebhookAlert::builder("not a url").unwrap_err();
    assert_eq!(
        err.to_string(),
        "invalid webhook URL \"not a url\": expected http://host[:port]/path"
    );
}

#[tokio::test]
async fn a_recovery_that_gives_up_alerts_once_through_the_webhook() {
    let rx = receiver(0).await;
    let webhook = WebhookAlert::builder(&rx.url).unwrap().build();
    let recovery = Recovery::builder("storage", || async { Err::<(), _>("connection refused") })
        .max_attempts(1)
        .mode(Mode::default())
        .alert(webhook.clone())
        .spawn();
    recovery.trigger_automatic("SELECT 1 failed");
    recovery.wait_for(|s| s == RecoveryState::Exhausted).await;
    until(&webhook, |s| s.delivered == 1).await;
    // A person tries again and it fails again: the same outage, no second
    // alert (the sink is not even called).
    recovery.trigger_manual();
    recovery.wait_for(|s| s == RecoveryState::Recovering).await;
    recovery.wait_for(|s| s == RecoveryState::Exhausted).await;
    assert_eq!(recovery.status().exhausted_cycles, 2);
    assert_eq!(webhook.stats().delivered + webhook.stats().in_flight, 1);
    assert_eq!(
        webhook.stats().deduplicated,
        0,
        "not sent to the sink at all"
    );
    let body = rx.bodies.lock().unwrap()[0].clone();
    assert_eq!(
        (body["dependency"].as_str(), body["root_cause"].as_str()),
        (Some("storage"), Some("storage"))
    );
    assert_eq!(body["last_error"], "connection refused");
}
