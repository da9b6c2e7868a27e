//! The chaos layer through real stacks: services on paused time, a breaker
//! fed by injected faults, an axum server on loopback switched at runtime
//! through the admin routes (and their auth), and a reqwest client stack.
#![cfg(all(feature = "chaos", feature = "admin"))]

#[path = "common/captured_logs.rs"]
mod captured_logs;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::routing::get;
use http::{Response, StatusCode};
use serde_json::{Value, json};
use tokio::time::Instant;
use tower::{BoxError, Service, ServiceBuilder, ServiceExt, service_fn};
use tower_recovery::admin::Admin;
use tower_recovery::chaos::{Chaos, Faults, Injected};
use tower_recovery::circuit_breaker::{Breaker, Rejected, State};
use tower_recovery::drain::Drain;
use tower_recovery::health::{BuildError, Dependency, HealthCheck, HealthStatus, Reliability};

// ===== helpers =====

/// A service counting its calls, answering `"ok"`.
fn counted() -> (
    Arc<AtomicUsize>,
    impl Service<(), Response = &'static str, Error = BoxError, Future: Send> + Clone,
) {
    let calls = Arc::new(AtomicUsize::new(0));
    let svc = service_fn({
        let calls = calls.clone();
        move |()| {
            calls.fetch_add(1, Ordering::SeqCst);
            async { Ok::<_, BoxError>("ok") }
        }
    });
    (calls, svc)
}

/// Calls `svc` `n` times; the number of injected failures.
async fn failures<S>(svc: &mut S, n: usize) -> usize
where
    S: Service<(), Error = BoxError>,
{
    let mut failed = 0;
    for _ in 0..n {
        match svc.ready().await.unwrap().call(()).await {
            Ok(_) => {}
            Err(e) if e.is::<Injected>() => failed += 1,
            Err(e) => panic!("not an injected error: {e}"),
        }
    }
    failed
}

// ===== the layer on services =====

#[tokio::test(start_paused = true)]
async fn off_every_call_reaches_the_inner_service() {
    let chaos = Chaos::new("model_server");
    let (calls, inner) = counted();
    let mut svc = ServiceBuilder::new().layer(chaos.layer()).service(inner);
    let start = Instant::now();
    assert_eq!(failures(&mut svc, 100).await, 0);
    assert_eq!(calls.load(Ordering::SeqCst), 100);
    assert_eq!(start.elapsed(), Duration::ZERO, "no latency added");
    assert_eq!(chaos.snapshot().calls, 0, "nothing counted while off");
}

#[tokio::test(start_paused = true)]
async fn error_rate_one_fails_every_call_without_calling_the_inner_service() {
    let chaos = Chaos::new("model_server");
    let (calls, inner) = counted();
    let mut svc = ServiceBuilder::new().layer(chaos.layer()).service(inner);
    chaos.start(Faults::new().error_rate(1.0));
    assert_eq!(failures(&mut svc, 1000).await, 1000);
    assert_eq!(
        calls.load(Ordering::SeqCst),
        0,
        "a failed call never reaches it"
    );
    let err = svc.ready().await.unwrap().call(()).await.unwrap_err();
    let injected = err.downcast_ref::<Injected>().unwrap();
    assert_eq!(injected.name(), "model_server");
    assert_eq!(err.to_string(), "fault injected by chaos 'model_server'");
    let snapshot = chaos.snapshot();
    assert!(snapshot.active);
    assert_eq!((snapshot.calls, snapshot.injected), (1001, 1001));

    chaos.stop();
    assert_eq!(failures(&mut svc, 10).await, 0);
    assert_eq!(calls.load(Ordering::SeqCst), 10);
}

#[tokio::test(start_paused = true)]
async fn error_rate_zero_fails_none() {
    let chaos = Chaos::new("model_server");
    let (calls, inner) = counted();
    let mut svc = ServiceBuilder::new().layer(chaos.layer()).service(inner);
    chaos.start(
        Faults::new()
            .error_rate(0.0)
            .latency(Duration::from_millis(1)),
    );
    assert_eq!(failures(&mut svc, 1000).await, 0);
    assert_eq!(calls.load(Ordering::SeqCst), 1000);
    let snapshot = chaos.snapshot();
    assert_eq!((snapshot.injected, snapshot.delayed), (0, 1000));
}

/// With a fixed seed the same calls fail: the count is exact, the test
/// cannot flake. The bounds (±5.5 standard deviations) hold for any decent
/// sequence, so they say the rate is right, not only repeatable.
#[tokio::test(start_paused = true)]
async fn a_rate_fails_that_share_of_calls_and_a_seed_repeats_them() {
    let chaos = Chaos::new("model_server");
    let (_, inner) = counted();
    let mut svc = ServiceBuilder::new().layer(chaos.layer()).service(inner);
    chaos.seed(42);
    chaos.start(Faults::new().error_rate(0.3));
    let first = failures(&mut svc, 10_000).await;
    // sd = sqrt(10000 * 0.3 * 0.7) = 45.8
    assert!(
        (2750..=3250).contains(&first),
        "{first} of 10000 failed at 0.3"
    );

    chaos.seed(42);
    chaos.start(Faults::new().error_rate(0.3));
    assert_eq!(
        failures(&mut svc, 10_000).await,
        first,
        "same seed, same faults"
    );

    // The latency rate too, independently of the error rate.
    chaos.start(
        Faults::new()
            .error_rate(0.5)
            .latency(Duration::from_millis(10))
            .latency_rate(0.2),
    );
    let failed = failures(&mut svc, 10_000).await;
    let delayed = chaos.snapshot().delayed;
    assert!(
        (4725..=5275).contains(&failed),
        "{failed} of 10000 failed at 0.5"
    );
    // sd = sqrt(10000 * 0.2 * 0.8) = 40
    assert!(
        (1780..=2220).contains(&delayed),
        "{delayed} of 10000 delayed at 0.2"
    );
}

#[tokio::test(start_paused = true)]
async fn added_latency_is_waited_before_the_inner_future_runs() {
    let chaos = Chaos::new("model_server");
    let polled_at = Arc::new(Mutex::new(None));
    let inner = service_fn({
        let polled_at = polled_at.clone();
        move |()| {
            let polled_at = polled_at.clone();
            async move {
                *polled_at.lock().unwrap() = Some(Instant::now());
                Ok::<_, BoxError>("ok")
            }
        }
    });
    let mut svc = ServiceBuilder::new().layer(chaos.layer()).service(inner);
    chaos.start(Faults::new().latency(Duration::from_millis(250)));
    let start = Instant::now();
    assert_eq!(svc.ready().await.unwrap().call(()).await.unwrap(), "ok");
    assert_eq!(start.elapsed(), Duration::from_millis(250));
    assert_eq!(
        polled_at.lock().unwrap().unwrap() - start,
        Duration::from_millis(250),
        "the inner future first ran after the delay"
    );

    // Delayed, then failed: a dependency that hangs before it errors.
    chaos.start(
        Faults::new()
            .error_rate(1.0)
            .latency(Duration::from_secs(2)),
    );
    let start = Instant::now();
    let err = svc.ready().await.unwrap().call(()).await.unwrap_err();
    assert!(err.is::<Injected>());
    assert_eq!(start.elapsed(), Duration::from_secs(2));

    // A timeout outside sees the hang.
    chaos.start(Faults::new().latency(Duration::from_secs(60)));
    let mut timed = ServiceBuilder::new()
        .timeout(Duration::from_secs(5))
        .layer(chaos.layer())
        .service(counted().1);
    let err = timed.ready().await.unwrap().call(()).await.unwrap_err();
    assert!(err.is::<tower::timeout::error::Elapsed>());
}

#[tokio::test(start_paused = true)]
async fn a_rehearsal_with_a_duration_ends_itself_and_says_so() {
    let (log, _guard) = captured_logs::capture();

    let chaos = Chaos::new("model_server");
    let (_, inner) = counted();
    let mut svc = ServiceBuilder::new().layer(chaos.layer()).service(inner);
    chaos.start(
        Faults::new()
            .error_rate(1.0)
            .duration(Duration::from_secs(60)),
    );
    assert!(log.text().contains(
        "Chaos ON for 'model_server': failing 100% of calls (an injected error, or status 503 \
         on HTTP stacks), for 60 s"
    ));
    tokio::time::advance(Duration::from_secs(59)).await;
    assert_eq!(failures(&mut svc, 5).await, 5);
    assert_eq!(
        chaos.snapshot().remaining,
        Some(Duration::from_secs(1)),
        "one second left"
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    // Its timer (due at the same instant) runs: off, logged, before any
    // call.
    for _ in 0..10 {
        if log.text().contains("Chaos OFF") {
            break;
        }
        tokio::task::yield_now().await;
    }
    assert!(!chaos.is_active());
    assert!(
        log.text()
            .contains("Chaos OFF for 'model_server': its 60 s are over"),
        "{}",
        log.text()
    );
    assert_eq!(failures(&mut svc, 100).await, 0);
    let snapshot = chaos.snapshot();
    assert!(!snapshot.active);
    assert_eq!(snapshot.remaining, None);
    assert_eq!(
        snapshot.injected, 5,
        "the counts of the last rehearsal stay"
    );

    chaos.start(Faults::new().error_rate(1.0));
    chaos.stop();
    assert!(log.text().contains("Chaos OFF for 'model_server': stopped"));
}

#[tokio::test(start_paused = true)]
async fn injected_faults_open_a_breaker_and_it_closes_once_they_stop() {
    let breaker = Breaker::builder("model_server")
        .consecutive_failures(5)
        .open_duration(Duration::from_secs(30))
        .build();
    let chaos = Chaos::new("model_server");
    let (calls, inner) = counted();
    // Breaker outside, chaos inside: the faults are the dependency's.
    let mut client = ServiceBuilder::new()
        .layer(breaker.layer())
        .layer(chaos.layer())
        .service(inner);
    assert_eq!(client.ready().await.unwrap().call(()).await.unwrap(), "ok");

    chaos.start(Faults::new().error_rate(1.0));
    for _ in 0..5 {
        let err = client.ready().await.unwrap().call(()).await.unwrap_err();
        assert!(err.is::<Injected>());
    }
    assert_eq!(breaker.state(), State::Open);
    let err = client.ready().await.unwrap().call(()).await.unwrap_err();
    assert!(
        err.is::<Rejected>(),
        "open: rejected before the chaos layer"
    );
    assert_eq!(chaos.snapshot().calls, 5);

    chaos.stop();
    tokio::time::advance(Duration::from_secs(30)).await;
    assert_eq!(client.ready().await.unwrap().call(()).await.unwrap(), "ok");
    assert_eq!(breaker.state(), State::Closed);
    assert_eq!(calls.load(Ordering::SeqCst), 2);
}

// ===== an axum server switched through the admin routes =====

const TOKEN: &str = "s3cret";

struct Server {
    base: String,
    http: reqwest::Client,
    hits: Arc<AtomicUsize>,
}

impl Server {
    /// `/fir` behind the chaos layer (HTTP answers), the chaos routes with
    /// `admin`'s rules, on loopback.
    async fn start(chaos: &Chaos, admin: Admin) -> Self {
        let hits = Arc::new(AtomicUsize::new(0));
        let app = Self::fir(chaos, &hits).merge(admin.chaos_router([chaos]));
        Self::serve(app, hits).await
    }

    /// As [`start`](Self::start), with the chaos routes over the set's
    /// handles and the admin routes (`/health`, `/reliability`) next to
    /// them.
    async fn start_reported(chaos: &Chaos, reliability: &Reliability, admin: Admin) -> Self {
        let hits = Arc::new(AtomicUsize::new(0));
        let app = Self::fir(chaos, &hits)
            .merge(admin.chaos_router(reliability.chaos_handles()))
            .merge(admin.router());
        Self::serve(app, hits).await
    }

    /// `/fir`, counting its hits, behind `chaos`'s layer.
    fn fir(chaos: &Chaos, hits: &Arc<AtomicUsize>) -> Router {
        Router::new()
            .route(
                "/fir",
                get({
                    let hits = hits.clone();
                    move || async move {
                        hits.fetch_add(1, Ordering::SeqCst);
                        "draft"
                    }
                }),
            )
            .route_layer(chaos.layer().fault_with_response())
    }

    async fn serve(app: Router, hits: Arc<AtomicUsize>) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Self {
            base,
            http: reqwest::Client::new(),
            hits,
        }
    }

    async fn get(&self, path: &str) -> (u16, String) {
        let r = self
            .http
            .get(format!("{}{path}", self.base))
            .send()
            .await
            .unwrap();
        (r.status().as_u16(), r.text().await.unwrap())
    }

    async fn json(&self, path: &str) -> Value {
        let (status, body) = self.get(path).await;
        assert_eq!(status, 200, "{body}");
        serde_json::from_str(&body).unwrap()
    }

    async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        token: Option<&str>,
        body: &str,
    ) -> (u16, Value) {
        let mut request = self
            .http
            .request(method, format!("{}{path}", self.base))
            .body(body.to_string());
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        let r = request.send().await.unwrap();
        let status = r.status().as_u16();
        let text = r.text().await.unwrap();
        let value = serde_json::from_str(&text).unwrap_or_else(|_| json!(text));
        (status, value)
    }

    async fn post(&self, token: Option<&str>, body: &str) -> (u16, Value) {
        self.send(reqwest::Method::POST, "/chaos/model_server", token, body)
            .await
    }
}

fn admin() -> Admin {
    Admin::new(&Reliability::builder().build().unwrap(), &Drain::default())
}

#[tokio::test]
async fn switched_on_and_off_over_http_with_the_token() {
    let chaos = Chaos::new("model_server");
    let server = Server::start(&chaos, admin().token(TOKEN)).await;
    assert_eq!(server.get("/fir").await, (200, "draft".into()));
    let all = server.json("/chaos").await;
    assert_eq!(all["active"], json!(false));
    assert_eq!(all["chaos"]["model_server"]["error_rate"], Value::Null);

    // The response override: every call answers 418 without reaching /fir.
    let (status, state) = server
        .post(
            Some(TOKEN),
            r#"{"error_rate": 1.0, "status": 418, "duration_seconds": 600}"#,
        )
        .await;
    assert_eq!(status, 200, "{state}");
    assert_eq!(state["active"], json!(true));
    assert_eq!(state["status"], json!(418));
    assert!(state["remaining_seconds"].as_f64().unwrap() <= 600.0);
    let hits = server.hits.load(Ordering::SeqCst);
    for _ in 0..5 {
        assert_eq!(server.get("/fir").await.0, 418);
    }
    assert_eq!(server.hits.load(Ordering::SeqCst), hits, "never reached");
    let all = server.json("/chaos").await;
    assert_eq!(all["active"], json!(true));
    assert_eq!(all["chaos"]["model_server"]["injected"], json!(5));
    assert_eq!(server.json("/chaos/model_server").await["calls"], json!(5));

    // Without a status: 503.
    let (status, _) = server.post(Some(TOKEN), r#"{"error_rate": 1}"#).await;
    assert_eq!(status, 200);
    assert_eq!(server.get("/fir").await.0, 503);

    // Stopped: calls go through again.
    let (status, state) = server
        .send(
            reqwest::Method::DELETE,
            "/chaos/model_server",
            Some(TOKEN),
            "",
        )
        .await;
    assert_eq!((status, &state["active"]), (200, &json!(false)));
    assert!(!chaos.is_active());
    assert_eq!(server.get("/fir").await, (200, "draft".into()));

    // DELETE /chaos stops every handle.
    server.post(Some(TOKEN), r#"{"error_rate": 1}"#).await;
    let (status, all) = server
        .send(reqwest::Method::DELETE, "/chaos", Some(TOKEN), "")
        .await;
    assert_eq!((status, &all["active"]), (200, &json!(false)));
    assert_eq!(server.get("/fir").await.0, 200);

    let (status, body) = server
        .send(reqwest::Method::GET, "/chaos/nope", None, "")
        .await;
    assert_eq!(status, 404);
    assert_eq!(body["known"], json!(["model_server"]));
}

#[tokio::test]
async fn changes_need_the_token_and_a_configured_one() {
    let chaos = Chaos::new("model_server");
    let server = Server::start(&chaos, admin().token(TOKEN)).await;
    let on = r#"{"error_rate": 1}"#;
    for token in [None, Some("wrong")] {
        let (status, body) = server.post(token, on).await;
        assert_eq!(status, 401, "{token:?}: {body}");
        let (status, _) = server
            .send(reqwest::Method::DELETE, "/chaos", token, "")
            .await;
        assert_eq!(status, 401);
    }
    assert!(!chaos.is_active());
    // Reading is open.
    assert_eq!(server.get("/chaos").await.0, 200);

    // No token configured: refused with 403, unless opened.
    let closed = Chaos::new("model_server");
    let server = Server::start(&closed, admin()).await;
    let (status, body) = server.post(Some(TOKEN), on).await;
    assert_eq!(status, 403, "{body}");
    assert!(body["error"].as_str().unwrap().contains("ADMIN_TOKEN"));
    assert!(!closed.is_active());

    let open = Chaos::new("model_server");
    let server = Server::start(&open, admin().open()).await;
    assert_eq!(server.post(None, on).await.0, 200);
    assert!(open.is_active());
}

#[tokio::test]
async fn bad_bodies_are_refused_naming_the_field() {
    let chaos = Chaos::new("model_server");
    let server = Server::start(&chaos, admin().token(TOKEN)).await;
    let (status, body) = server.post(Some(TOKEN), "error_rate=1").await;
    assert_eq!(status, 400, "{body}");
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .starts_with("the body is not JSON")
    );

    let cases = [
        (r#"[1]"#, Value::Null),
        (r#"{"error_rate": 1.5}"#, json!("error_rate")),
        (r#"{"error_rate": "0.5"}"#, json!("error_rate")),
        (r#"{"error_rate": -0.1}"#, json!("error_rate")),
        (
            r#"{"latency_rate": 2, "latency_ms": 5}"#,
            json!("latency_rate"),
        ),
        (r#"{"latency_ms": -5}"#, json!("latency_ms")),
        (r#"{"latency_ms": 3600001}"#, json!("latency_ms")),
        (r#"{"error_rate": 1, "status": 1000}"#, json!("status")),
        (r#"{"error_rate": 1, "status": 99}"#, json!("status")),
        (
            r#"{"error_rate": 1, "duration_seconds": 0}"#,
            json!("duration_seconds"),
        ),
        (r#"{"eror_rate": 1}"#, json!("eror_rate")),
        // Nothing to inject.
        (r#"{}"#, json!("error_rate")),
        (r#"{"status": 503}"#, json!("error_rate")),
        (
            r#"{"latency_ms": 100, "latency_rate": 0}"#,
            json!("error_rate"),
        ),
    ];
    for (body, field) in cases {
        let (status, answer) = server.post(Some(TOKEN), body).await;
        assert_eq!(status, 422, "{body}: {answer}");
        assert_eq!(answer["field"], field, "{body}: {answer}");
        assert!(answer["expected"].is_string(), "{body}: {answer}");
    }
    assert_eq!(
        server.post(Some(TOKEN), r#"{"error_rate": 1.5}"#).await.1["expected"],
        json!("a number from 0 to 1")
    );
    assert!(!chaos.is_active(), "no bad body switched anything on");
    assert_eq!(server.get("/fir").await.0, 200);
}

// ===== rehearsals where operators look: /health and /reliability =====

/// One handle's state in `/reliability` (and `GET /chaos/{name}`), field
/// by field: a field added or renamed fails here.
#[derive(Debug, PartialEq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct ChaosDoc {
    name: String,
    active: bool,
    error_rate: Option<f64>,
    latency_ms: Option<f64>,
    latency_rate: Option<f64>,
    status: Option<u16>,
    duration_seconds: Option<f64>,
    started_at: Option<String>,
    remaining_seconds: Option<f64>,
    since_start_seconds: Option<f64>,
    calls: u64,
    injected: u64,
    delayed: u64,
    faults_injected: KindsDoc,
}

#[derive(Debug, PartialEq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct KindsDoc {
    error: u64,
    response: u64,
    latency: u64,
}

/// Seconds since the Unix epoch of an RFC 3339 `YYYY-MM-DDTHH:MM:SSZ`.
fn unix_seconds(rfc3339: &str) -> u64 {
    let b = rfc3339.as_bytes();
    assert!(
        b.len() == 20 && b[4] == b'-' && b[10] == b'T' && b[19] == b'Z',
        "not RFC 3339 in UTC: {rfc3339}"
    );
    let n = |range: std::ops::Range<usize>| rfc3339[range].parse::<i64>().unwrap();
    let (y, m, d) = (n(0..4), n(5..7), n(8..10));
    // Days from civil (Howard Hinnant's algorithm).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    (days * 86_400 + n(11..13) * 3600 + n(14..16) * 60 + n(17..19)) as u64
}

fn now_unix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// A set with a model server (its check passes, its breaker closed) and
/// two chaos handles, as an application adds them.
fn reported_set(chaos: &Chaos, upstream: &Chaos) -> Reliability {
    let breaker = Breaker::new("model_server");
    Reliability::builder()
        .dependency(
            Dependency::new(
                "model_server",
                HealthCheck::new(|| async { Ok::<(), String>(()) }),
            )
            .breaker(&breaker),
        )
        .chaos(chaos)
        .chaos(upstream)
        .build()
        .unwrap()
}

/// During an incident, `/health` and `/reliability` must say that failures
/// are injected: a rehearsal started over HTTP on an axum server, its
/// failed calls answered with the response override (`/fir`) and with an
/// error (a client stack), then stopped; the code of `/health` stays 200.
#[tokio::test]
async fn a_rehearsal_shows_in_health_and_reliability_while_it_runs() {
    let chaos = Chaos::new("model_server");
    let upstream = Chaos::new("upstream");
    let reliability = reported_set(&chaos, &upstream);
    reliability.check_all().await;
    let admin = Admin::new(&reliability, &Drain::default()).token(TOKEN);
    let server = Server::start_reported(&chaos, &reliability, admin).await;

    // Before: nothing injected, nothing said.
    let health = server.json("/health").await;
    assert_eq!(health["status"], json!("pass"), "{health}");
    assert_eq!(health["chaos_active"], json!(false));
    assert_eq!(
        health["chaos"],
        json!({"model_server": "off", "upstream": "off"})
    );
    let report = server.json("/reliability").await;
    let before: ChaosDoc = serde_json::from_value(report["chaos"]["model_server"].clone()).unwrap();
    assert_eq!(
        before,
        ChaosDoc {
            name: "model_server".into(),
            active: false,
            error_rate: None,
            latency_ms: None,
            latency_rate: None,
            status: None,
            duration_seconds: None,
            started_at: None,
            remaining_seconds: None,
            since_start_seconds: None,
            calls: 0,
            injected: 0,
            delayed: 0,
            faults_injected: KindsDoc {
                error: 0,
                response: 0,
                latency: 0
            },
        }
    );

    // The model server's rehearsal: every call answers 418 after 1 ms.
    let asked = now_unix();
    let (status, body) = server
        .post(
            Some(TOKEN),
            r#"{"error_rate": 1, "status": 418, "latency_ms": 1, "duration_seconds": 600}"#,
        )
        .await;
    assert_eq!(status, 200, "{body}");
    for _ in 0..5 {
        assert_eq!(server.get("/fir").await.0, 418);
    }
    assert_eq!(server.hits.load(Ordering::SeqCst), 0, "never reached");

    // The upstream's: a client stack whose failed calls are errors.
    let (status, body) = server
        .send(
            reqwest::Method::POST,
            "/chaos/upstream",
            Some(TOKEN),
            r#"{"error_rate": 1}"#,
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let (_, inner) = counted();
    let mut client = ServiceBuilder::new().layer(upstream.layer()).service(inner);
    assert_eq!(failures(&mut client, 3).await, 3);

    // /health: warn, with the rehearsals named; the code stays 200 and the
    // dependency's own check still passes.
    let (code, text) = server.get("/health").await;
    assert_eq!(code, 200, "{text}");
    let health: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(health["status"], json!("warn"), "{health}");
    assert_eq!(health["chaos_active"], json!(true));
    assert_eq!(
        health["chaos"],
        json!({"model_server": "active", "upstream": "active"})
    );
    assert_eq!(
        health["checks"]["model_server:connectivity"][0]["status"],
        json!("pass")
    );
    assert_eq!(health["circuit_breakers"]["model_server"], json!("closed"));

    // /reliability: each handle, its faults, its times and its counts.
    let report = server.json("/reliability").await;
    assert_eq!(report["status"], json!("warn"));
    let model: ChaosDoc = serde_json::from_value(report["chaos"]["model_server"].clone()).unwrap();
    let started_at = model.started_at.as_deref().expect("started_at");
    let started = unix_seconds(started_at);
    assert!(
        (asked..=now_unix()).contains(&started),
        "started at {started_at}, asked at {asked}"
    );
    let remaining = model.remaining_seconds.unwrap();
    let since = model.since_start_seconds.unwrap();
    assert!(
        remaining > 540.0 && remaining <= 600.0,
        "{remaining} s left of 600"
    );
    assert!((0.0..60.0).contains(&since), "{since} s since the start");
    assert_eq!(
        model,
        ChaosDoc {
            name: "model_server".into(),
            active: true,
            error_rate: Some(1.0),
            latency_ms: Some(1.0),
            latency_rate: Some(1.0),
            status: Some(418),
            duration_seconds: Some(600.0),
            started_at: Some(started_at.to_string()),
            remaining_seconds: Some(remaining),
            since_start_seconds: Some(since),
            calls: 5,
            injected: 5,
            delayed: 5,
            faults_injected: KindsDoc {
                error: 0,
                response: 5,
                latency: 5
            },
        }
    );
    let up: ChaosDoc = serde_json::from_value(report["chaos"]["upstream"].clone()).unwrap();
    assert!(up.active);
    assert_eq!(
        (up.duration_seconds, up.remaining_seconds, up.status),
        (None, None, None),
        "until stopped"
    );
    assert_eq!((up.calls, up.injected, up.delayed), (3, 3, 0));
    assert_eq!(
        up.faults_injected,
        KindsDoc {
            error: 3,
            response: 0,
            latency: 0
        }
    );
    // The chaos route shows the same counts.
    let shown: ChaosDoc = serde_json::from_value(server.json("/chaos/upstream").await).unwrap();
    assert_eq!(shown.faults_injected, up.faults_injected);

    // Stopped: pass again; the last rehearsal's counts and start stay.
    let (status, _) = server
        .send(reqwest::Method::DELETE, "/chaos", Some(TOKEN), "")
        .await;
    assert_eq!(status, 200);
    let health = server.json("/health").await;
    assert_eq!(health["status"], json!("pass"), "{health}");
    assert_eq!(health["chaos_active"], json!(false));
    assert_eq!(
        health["chaos"],
        json!({"model_server": "off", "upstream": "off"})
    );
    let report = server.json("/reliability").await;
    assert_eq!(report["status"], json!("pass"));
    let after: ChaosDoc = serde_json::from_value(report["chaos"]["model_server"].clone()).unwrap();
    assert!(!after.active);
    assert_eq!(after.remaining_seconds, None);
    assert_eq!(after.started_at.as_deref(), Some(started_at));
    assert_eq!(after.faults_injected, model.faults_injected);
    assert_eq!(server.get("/fir").await, (200, "draft".into()));
}

/// On paused time: the report counts the time left down, and the
/// rehearsal's end takes the `warn` away.
#[tokio::test(start_paused = true)]
async fn the_report_follows_a_rehearsal_to_its_end() {
    let chaos = Chaos::new("model_server");
    let upstream = Chaos::new("upstream");
    let reliability = reported_set(&chaos, &upstream);
    reliability.check_all().await;
    assert_eq!(reliability.status(), HealthStatus::Pass);

    chaos.start(
        Faults::new()
            .latency(Duration::from_millis(100))
            .duration(Duration::from_secs(60)),
    );
    let report = reliability.report();
    assert_eq!(report.status, HealthStatus::Warn, "a rehearsal is on");
    let names: Vec<&str> = report.chaos.iter().map(|c| &*c.name).collect();
    assert_eq!(names, ["model_server", "upstream"], "in the order added");
    assert!(report.chaos[0].active && !report.chaos[1].active);
    assert_eq!(report.chaos[0].remaining, Some(Duration::from_secs(60)));

    tokio::time::advance(Duration::from_secs(45)).await;
    let report = reliability.report();
    assert_eq!(report.chaos[0].remaining, Some(Duration::from_secs(15)));
    assert_eq!(report.chaos[0].since_start, Some(Duration::from_secs(45)));
    assert_eq!(report.status, HealthStatus::Warn);

    tokio::time::sleep(Duration::from_secs(15)).await;
    let report = reliability.report();
    assert!(!report.chaos[0].active, "over");
    assert_eq!(report.chaos[0].remaining, None);
    assert_eq!(report.status, HealthStatus::Pass);
    assert!(!chaos.is_active());
}

#[test]
fn two_chaos_handles_of_one_name_are_refused() {
    let a = Chaos::new("model_server");
    let b = Chaos::new("model_server");
    let err = Reliability::builder()
        .chaos(&a)
        .chaos(&b)
        .build()
        .unwrap_err();
    assert_eq!(err, BuildError::DuplicateChaos("model_server".into()));
    assert_eq!(
        err.to_string(),
        "chaos handle name \"model_server\" is added twice"
    );
    // One handle added twice, too: reports list them by name.
    assert!(Reliability::builder().chaos(&a).chaos(&a).build().is_err());
}

// ===== a reqwest client stack =====

#[tokio::test]
async fn a_client_stack_fails_without_sending_and_sends_again_when_stopped() {
    let upstream = Server::start(&Chaos::new("unused"), admin()).await;
    let chaos = Chaos::new("upstream");
    let breaker = Breaker::builder("upstream").consecutive_failures(3).build();
    let http = reqwest::Client::new();
    let mut client = ServiceBuilder::new()
        .layer(breaker.layer())
        .layer(chaos.layer())
        .service(service_fn(move |req: reqwest::Request| {
            let http = http.clone();
            async move { http.execute(req).await }
        }));
    let request = || {
        reqwest::Request::new(
            reqwest::Method::GET,
            format!("{}/fir", upstream.base).parse().unwrap(),
        )
    };
    let r = client.ready().await.unwrap().call(request()).await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(upstream.hits.load(Ordering::SeqCst), 1);

    chaos.start(Faults::new().error_rate(1.0));
    for _ in 0..3 {
        let err = client
            .ready()
            .await
            .unwrap()
            .call(request())
            .await
            .unwrap_err();
        assert!(err.is::<Injected>(), "{err}");
    }
    assert_eq!(breaker.state(), State::Open);
    assert_eq!(upstream.hits.load(Ordering::SeqCst), 1, "nothing was sent");

    chaos.stop();
    breaker.reset();
    let r = client.ready().await.unwrap().call(request()).await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(upstream.hits.load(Ordering::SeqCst), 2);
}

// ===== HTTP answers keep `Infallible` =====

#[tokio::test]
async fn http_answers_carry_the_injected_fault() {
    let chaos = Chaos::new("api");
    let mut svc = ServiceBuilder::new()
        .layer(chaos.layer().fault_with_response())
        .service(service_fn(|_: http::Request<()>| async {
            Ok::<_, std::convert::Infallible>(Response::new(String::from("draft")))
        }));
    chaos.start(
        Faults::new()
            .error_rate(1.0)
            .status(StatusCode::BAD_GATEWAY),
    );
    let response = svc
        .ready()
        .await
        .unwrap()
        .call(http::Request::new(()))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::BAD_GATEWAY);
    assert_eq!(response.body(), "");
    let injected = response.extensions().get::<Injected>().unwrap();
    assert_eq!(injected.status(), Some(StatusCode::BAD_GATEWAY));
}

// ===== outside input never panics; a timer does not outlive its handle =====

#[tokio::test]
async fn a_duration_that_rounds_to_zero_is_a_422_not_a_panic() {
    let chaos = Chaos::new("model_server");
    let server = Server::start(&chaos, admin().token(TOKEN)).await;
    // Above 0 as JSON, but zero once a Duration: `Chaos::start` asserts.
    let (status, answer) = server
        .post(
            Some(TOKEN),
            r#"{"error_rate": 1, "duration_seconds": 1e-10}"#,
        )
        .await;
    assert_eq!(status, 422, "{answer}");
    assert_eq!(answer["field"], json!("duration_seconds"), "{answer}");
    assert!(!chaos.is_active());
}

/// A 1xx is not a final answer: a `101` override switched every
/// connection to a protocol that never came.
#[tokio::test]
async fn an_interim_status_is_refused_as_a_response_override() {
    let chaos = Chaos::new("model_server");
    let server = Server::start(&chaos, admin().token(TOKEN)).await;
    let (status, answer) = server
        .post(Some(TOKEN), r#"{"error_rate": 1, "status": 101}"#)
        .await;
    assert_eq!(status, 422, "{answer}");
    assert_eq!(answer["field"], json!("status"));
    assert_eq!(
        answer["expected"],
        json!("an HTTP status code from 200 to 599")
    );
    assert!(!chaos.is_active());
    assert_eq!(server.get("/fir").await.0, 200);
}

#[tokio::test]
async fn a_rehearsals_timer_task_does_not_outlive_its_handles() {
    let metrics = tokio::runtime::Handle::current().metrics();
    let before = metrics.num_alive_tasks();
    let chaos = Chaos::new("model_server");
    chaos.start(
        Faults::new()
            .error_rate(1.0)
            .duration(Duration::from_secs(7 * 24 * 3600)),
    );
    assert_eq!(metrics.num_alive_tasks(), before + 1, "its timer");
    drop(chaos);
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }
    assert_eq!(
        metrics.num_alive_tasks(),
        before,
        "every handle is gone, its timer still sleeps out the week"
    );
}

// ===== counts across a restart =====

/// A failed call drawn by one rehearsal and answered after a restart is
/// counted as an `error` of the new rehearsal, whose `injected` (reset by
/// the start) never counted it: the report says more failed calls were
/// answered with an error than were ever drawn to fail, and names a fault
/// the new rehearsal (which injects nothing) never injected.
#[tokio::test(start_paused = true)]
async fn an_answer_of_the_last_rehearsal_is_not_counted_in_the_next() {
    let chaos = Chaos::new("model_server");
    let (_, inner) = counted();
    let mut svc = ServiceBuilder::new().layer(chaos.layer()).service(inner);
    chaos.start(
        Faults::new()
            .error_rate(1.0)
            .latency(Duration::from_secs(1)),
    );
    // Drawn to fail, waiting out its added second.
    let pending = svc.ready().await.unwrap().call(());
    let before = chaos.snapshot();
    assert_eq!((before.calls, before.injected, before.delayed), (1, 1, 1));

    // The operator replaces the rehearsal by one that injects nothing.
    chaos.start(Faults::new());
    assert!(pending.await.unwrap_err().is::<Injected>());

    let after = chaos.snapshot();
    assert_eq!((after.calls, after.injected, after.delayed), (0, 0, 0));
    assert!(
        after.errors + after.responses <= after.injected,
        "answered {} with an error and {} with a response, of {} drawn to fail, \
         in a rehearsal that injects nothing",
        after.errors,
        after.responses,
        after.injected
    );
}
