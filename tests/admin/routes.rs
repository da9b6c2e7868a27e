use std::sync::atomic::Ordering;
use std::time::Duration;

use tower_recovery::circuit_breaker::State;
use tower_recovery::health::Monitor;
use tower_recovery::recovery::RecoveryState;

use crate::support::*;

#[tokio::test(start_paused = true)]
async fn health_document_and_status_codes() {
    let f = Fixture::new();
    let router = f.admin().router::<()>();
    f.reliability.check_all().await;
    let (res, body) = call(&router, "GET", "/health", None).await;
    assert_eq!(res.status(), 200);
    assert_eq!(res.headers()["content-type"], "application/health+json");
    assert_eq!(res.headers()["cache-control"], "max-age=2");
    let doc: HealthDoc = serde_json::from_str(&body).unwrap();
    assert_eq!(doc.status, "pass");
    assert_eq!(doc.checks.len(), 3);
    let db = &doc.checks["database:connectivity"][0];
    assert_eq!(
        (db.status.as_str(), db.component_type.as_str(), db.required),
        ("pass", "component", true)
    );
    assert_eq!(db.observed_unit.as_deref(), Some("ms"));
    assert!(db.observed_value.is_some());
    let time = db.time.as_deref().unwrap();
    assert!(
        time.len() == 20 && time.ends_with('Z') && time.as_bytes()[10] == b'T',
        "RFC 3339: {time}"
    );
    assert_eq!(doc.circuit_breakers["model_server"], "closed");
    assert_eq!(doc.recovery["database"], "idle");
    assert!(!doc.chaos_active && doc.chaos.is_empty(), "no chaos added");
    assert!(!doc.draining);

    // Optional failing: warn, still 200.
    f.cache_up.store(false, Ordering::SeqCst);
    f.reliability.check_all().await;
    let (res, body) = call(&router, "GET", "/health", None).await;
    assert_eq!(res.status(), 200);
    let doc: HealthDoc = serde_json::from_str(&body).unwrap();
    assert_eq!(doc.status, "warn");
    assert_eq!(
        doc.checks["cache:connectivity"][0].output.as_deref(),
        Some("cache: connection refused (secret-host:5432)")
    );

    // Required failing: fail, 503.
    f.db_up.store(false, Ordering::SeqCst);
    f.reliability.check_all().await;
    let (res, body) = call(&router, "GET", "/health", None).await;
    assert_eq!(res.status(), 503);
    assert_eq!(
        serde_json::from_str::<HealthDoc>(&body).unwrap().status,
        "fail"
    );

    // Draining: 503 even when healthy.
    f.db_up.store(true, Ordering::SeqCst);
    f.cache_up.store(true, Ordering::SeqCst);
    f.reliability.check_all().await;
    f.drain.begin();
    tokio::task::yield_now().await;
    let (res, body) = call(&router, "GET", "/health", None).await;
    assert_eq!(res.status(), 503);
    let doc: HealthDoc = serde_json::from_str(&body).unwrap();
    assert!(doc.draining);
    assert_eq!(doc.status, "pass");
}

#[tokio::test(start_paused = true)]
async fn liveness_and_readiness() {
    let f = Fixture::new();
    let router = f.admin().router::<()>();
    let (res, _) = call(&router, "GET", "/livez", None).await;
    assert_eq!(res.status(), 200);
    let (res, body) = call(&router, "GET", "/readyz", None).await;
    assert_eq!(res.status(), 503, "startup gate not passed");
    assert!(body.contains("waiting for required dependencies"));
    f.reliability
        .wait_for_dependencies(Duration::from_secs(5), Duration::from_secs(300))
        .await
        .unwrap();
    let (res, _) = call(&router, "GET", "/readyz", None).await;
    assert_eq!(res.status(), 200);
    // After startup, readiness depends only on draining, not dependencies.
    f.db_up.store(false, Ordering::SeqCst);
    f.reliability.check_all().await;
    let (res, _) = call(&router, "GET", "/readyz", None).await;
    assert_eq!(
        res.status(),
        200,
        "a database blip must not unready every replica"
    );
    f.drain.begin();
    tokio::task::yield_now().await;
    let (res, body) = call(&router, "GET", "/readyz", None).await;
    assert_eq!(res.status(), 503);
    assert!(body.contains("draining"));
    let (res, _) = call(&router, "GET", "/livez", None).await;
    assert_eq!(res.status(), 200, "alive while draining");
}

#[tokio::test(start_paused = true)]
async fn reliability_document_field_by_field() {
    let f = Fixture::new();
    let router = f.admin().router::<()>();
    let monitor = Monitor::start(&f.reliability, Duration::from_secs(30));
    tokio::time::sleep(Duration::from_secs(31)).await;
    f.model_up.store(false, Ordering::SeqCst);
    f.breaker.try_acquire().unwrap().failure(); // opens; recovery starts and fails
    f.recovery.wait_idle_or_cooling().await;
    let (res, body) = call(&router, "GET", "/reliability", None).await;
    assert_eq!(res.status(), 200);
    let doc: ReliabilityDoc = serde_json::from_str(&body).unwrap();
    assert_eq!(doc.uptime_target, 99.9);
    assert!(!doc.started);
    let b = &doc.circuit_breakers["model_server"];
    assert_eq!(
        (b.state.as_str(), b.failure_count, b.consecutive_failures),
        ("open", 1, 1)
    );
    assert_eq!((b.rejected, b.transitions), (0, 1));
    assert!(doc.keyed_breakers.is_empty(), "no keyed registry added");
    assert!(doc.chaos.is_empty(), "no chaos handle added");
    assert_eq!(b.failure_rate, None, "no window");
    assert_eq!(
        (b.metrics_only, b.would_have_rejected, b.traffic_share),
        (false, 0, None)
    );
    assert_eq!(
        (b.config.trip.as_str(), b.config.consecutive_failures),
        ("consecutive_failures", Some(1))
    );
    assert_eq!(b.config.open_duration_seconds, 30.0);
    assert_eq!(b.config.retry_after_cap_seconds, Some(300.0));
    assert!(b.next_probe_in_seconds.unwrap() > 0.0);
    assert_eq!(
        doc.circuit_breakers.len(),
        1,
        "only dependencies with a breaker"
    );
    let r = &doc.recovery["model_server"];
    assert_eq!(
        (r.state.as_str(), r.attempts, r.max_attempts),
        ("exhausted", 3, 3)
    );
    assert_eq!((r.successes, r.failures, r.exhaustions), (0, 3, 1));
    assert_eq!(
        r.last_error.as_deref(),
        Some("model server refused (secret-host:8001)"),
        "no token: shown"
    );
    assert_eq!(r.mttr_seconds, None);
    assert_eq!(r.mode, "adaptive");
    assert_eq!(
        (r.cooldown_remaining_seconds, r.recent_recoveries),
        (None, 0)
    );
    let retry = r
        .next_retry_in_seconds
        .expect("adaptive: a retry is planned");
    assert!((27.0..=33.0).contains(&retry), "{retry}");
    // The track record: one exhausted cycle, the outage still open since
    // the breaker opened at 31 s; the error budget against 99.9%.
    let t = &r.track_record;
    let since = &t["since_start"];
    assert_eq!(
        (
            since["outages"].as_u64(),
            since["cycles_exhausted"].as_u64()
        ),
        (Some(0), Some(1))
    );
    assert_eq!(since["success_rate"], 0.0);
    let open = t["open_outage_seconds"]
        .as_f64()
        .expect("an outage is open");
    let observed = t["observed_seconds"].as_f64().unwrap();
    assert_eq!(since["downtime_seconds"].as_f64(), Some(open));
    let budget = &t["error_budget"];
    assert_eq!(budget["target_percent"], 99.9);
    let allowed = budget["allowed_seconds"].as_f64().unwrap();
    assert!((allowed - observed * 0.001).abs() < 1e-6, "{budget}");
    assert_eq!(budget["used_seconds"].as_f64(), Some(open));
    assert!(budget["left_seconds"].as_f64().unwrap() < 0.0, "{budget}");
    let in_state = &t["time_in_state_seconds"];
    let total: f64 = ["idle", "recovering", "cooling_down", "exhausted"]
        .iter()
        .map(|k| in_state[*k].as_f64().unwrap())
        .sum();
    assert!((total - observed).abs() < 1e-6, "{in_state} vs {observed}");
    assert_eq!(doc.recovery.len(), 2);
    assert!(doc.health_monitor.running);
    assert_eq!(doc.health_monitor.interval_seconds, Some(30.0));
    let m = &doc.health_monitor.dependencies["database"];
    assert_eq!((m.checks, m.consecutive_failures), (2, 0));
    assert_eq!(
        (m.degraded, m.degraded_reason.as_deref()),
        (false, None),
        "no early warning"
    );
    assert_eq!(
        (m.uptime_percent, m.availability_percent),
        (Some(100.0), Some(100.0))
    );
    assert_eq!(m.last_status.as_deref(), Some("pass"));
    assert_eq!(doc.graceful_shutdown.grace_period_seconds, 30.0);
    assert_eq!(
        (
            doc.graceful_shutdown.draining,
            doc.graceful_shutdown.in_flight
        ),
        (false, 0)
    );
    // The breaker's opening woke the monitor, which checked the model
    // server at once (1 s later) instead of at its next 30 s tick: it is
    // down, and required.
    let model = &doc.health_monitor.dependencies["model_server"];
    assert!(
        model.consecutive_failures >= 1,
        "{:?}",
        model.consecutive_failures
    );
    assert_eq!(doc.status, "fail", "a required dependency is down");
    monitor.stop().await;
}

#[tokio::test(start_paused = true)]
async fn admin_posts_auth_matrix() {
    let f = Fixture::new();
    let trigger = "/reliability/auto-recovery/database/trigger";
    // None configured: refused, saying how to enable.
    let closed = f.admin().router::<()>();
    let (res, body) = call(&closed, "POST", trigger, None).await;
    assert_eq!(res.status(), 403);
    let err: ErrorDoc = serde_json::from_str(&body).unwrap();
    assert!(err.error.contains("ADMIN_TOKEN"), "{}", err.error);
    let (res, _) = call(&closed, "POST", trigger, Some("anything")).await;
    assert_eq!(res.status(), 403);

    // Configured: missing and wrong tokens get 401, the right one works.
    let guarded = f.admin().token("s3cret-token").router::<()>();
    let (res, body) = call(&guarded, "POST", trigger, None).await;
    assert_eq!(res.status(), 401);
    assert_eq!(res.headers()["www-authenticate"], "Bearer");
    serde_json::from_str::<ErrorDoc>(&body).unwrap();
    for wrong in ["s3cret-toke", "s3cret-token2", "S3CRET-TOKEN", ""] {
        let (res, _) = call(&guarded, "POST", trigger, Some(wrong)).await;
        assert_eq!(res.status(), 401, "token {wrong:?}");
    }
    let (res, body) = call(&guarded, "POST", trigger, Some("s3cret-token")).await;
    assert_eq!(res.status(), 202);
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["outcome"], "started");
    assert_eq!(v["name"], "database");

    // Explicitly open.
    let open = f.admin().open().router::<()>();
    f.db_recovery.wait_idle_or_cooling().await;
    let (res, body) = call(&open, "POST", trigger, None).await;
    assert_eq!(res.status(), 202);
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["outcome"], "started", "manual bypasses the cooldown");
}

#[tokio::test(start_paused = true)]
async fn reset_unknown_names_and_wrong_methods() {
    let f = Fixture::new();
    let router = f.admin().open().router::<()>();
    f.model_up.store(false, Ordering::SeqCst);
    f.breaker.try_acquire().unwrap().failure();
    f.recovery.wait_idle_or_cooling().await;
    assert_eq!(f.recovery.status().state, RecoveryState::Exhausted);
    let (res, body) = call(
        &router,
        "POST",
        "/reliability/circuit-breaker/model_server/reset",
        None,
    )
    .await;
    assert_eq!(res.status(), 200, "{body}");
    assert_eq!(f.breaker.state(), State::Closed);
    assert_eq!(f.recovery.status().state, RecoveryState::Idle);

    let (res, body) = call(
        &router,
        "POST",
        "/reliability/circuit-breaker/database/reset",
        None,
    )
    .await;
    assert_eq!(res.status(), 404);
    let err: ErrorDoc = serde_json::from_str(&body).unwrap();
    assert!(
        err.error.contains("has no circuit breaker"),
        "{}",
        err.error
    );
    let (res, body) = call(
        &router,
        "POST",
        "/reliability/auto-recovery/cache/trigger",
        None,
    )
    .await;
    assert_eq!(res.status(), 404);
    assert!(
        serde_json::from_str::<ErrorDoc>(&body)
            .unwrap()
            .error
            .contains("no auto-recovery")
    );
    for uri in [
        "/reliability/auto-recovery/nope/trigger",
        "/reliability/circuit-breaker/nope/reset",
    ] {
        let (res, body) = call(&router, "POST", uri, None).await;
        assert_eq!(res.status(), 404);
        assert!(
            serde_json::from_str::<ErrorDoc>(&body)
                .unwrap()
                .error
                .contains("no dependency named \"nope\"")
        );
    }
    for (method, uri) in [
        ("GET", "/reliability/auto-recovery/database/trigger"),
        ("DELETE", "/reliability/circuit-breaker/model_server/reset"),
        ("POST", "/health"),
        ("PUT", "/livez"),
        ("POST", "/reliability"),
    ] {
        let (res, _) = call(&router, method, uri, None).await;
        assert_eq!(res.status(), 405, "{method} {uri}");
    }
}

#[tokio::test(start_paused = true)]
async fn error_texts_are_redacted_without_the_token() {
    let f = Fixture::new();
    let router = f.admin().token("t0ken").router::<()>();
    f.db_up.store(false, Ordering::SeqCst);
    f.model_up.store(false, Ordering::SeqCst);
    f.reliability.check_all().await;
    f.breaker.try_acquire().unwrap().failure();
    f.recovery.wait_idle_or_cooling().await;

    let (_, body) = call(&router, "GET", "/health", None).await;
    assert!(!body.contains("secret-host"), "{body}");
    let doc: HealthDoc = serde_json::from_str(&body).unwrap();
    assert_eq!(doc.checks["database:connectivity"][0].output, None);
    let (_, body) = call(&router, "GET", "/reliability", None).await;
    assert!(!body.contains("secret-host"), "{body}");
    let doc: ReliabilityDoc = serde_json::from_str(&body).unwrap();
    assert_eq!(doc.recovery["model_server"].last_error, None);

    let (_, body) = call(&router, "GET", "/health", Some("t0ken")).await;
    let doc: HealthDoc = serde_json::from_str(&body).unwrap();
    assert!(
        doc.checks["database:connectivity"][0]
            .output
            .as_deref()
            .unwrap()
            .contains("secret-host")
    );
    let (_, body) = call(&router, "GET", "/reliability", Some("t0ken")).await;
    let doc: ReliabilityDoc = serde_json::from_str(&body).unwrap();
    assert!(
        doc.recovery["model_server"]
            .last_error
            .as_deref()
            .unwrap()
            .contains("secret-host")
    );
}

#[tokio::test(start_paused = true)]
async fn nests_and_merges_with_application_state() {
    #[derive(Clone)]
    struct AppState;
    let f = Fixture::new();
    let app: axum::Router = axum::Router::new()
        .route(
            "/fir",
            axum::routing::get(
                |axum::extract::State(_): axum::extract::State<AppState>| async { "draft" },
            ),
        )
        .nest("/ops", f.admin().router::<AppState>())
        .with_state(AppState);
    let (res, _) = call(&app, "GET", "/ops/livez", None).await;
    assert_eq!(res.status(), 200);
    let (res, body) = call(&app, "GET", "/fir", None).await;
    assert_eq!((res.status().as_u16(), body.as_str()), (200, "draft"));
    let (res, _) = call(&app, "GET", "/nothing-here", None).await;
    assert_eq!(res.status(), 404, "no fallback of its own");
}

#[tokio::test(start_paused = true)]
async fn the_bearer_scheme_is_case_insensitive() {
    // Issue 12 (RFC 7235: auth schemes are case-insensitive).
    use axum::body::Body;
    use axum::http::Request;
    use tower::ServiceExt;
    let f = Fixture::new();
    let router = f.admin().token("s3cret-token").router::<()>();
    let post = |authorization: &'static str| {
        Request::builder()
            .method("POST")
            .uri("/reliability/circuit-breaker/model_server/reset")
            .header("authorization", authorization)
            .body(Body::empty())
            .unwrap()
    };
    for accepted in [
        "bearer s3cret-token",
        "BEARER s3cret-token",
        "Bearer s3cret-token",
    ] {
        let res = router.clone().oneshot(post(accepted)).await.unwrap();
        assert_eq!(res.status(), 200, "{accepted:?}");
    }
    for refused in ["Basic s3cret-token", "Bearers3cret-token", "s3cret-token"] {
        let res = router.clone().oneshot(post(refused)).await.unwrap();
        assert_eq!(res.status(), 401, "{refused:?}");
    }
}

/// A dependency that needs another: `/health` names the root cause, and
/// `/reliability` says what its recovery waits for.
#[tokio::test(start_paused = true)]
async fn the_root_cause_is_named_in_health_and_reliability() {
    use std::sync::Arc;
    use std::sync::atomic::AtomicBool;
    use tower_recovery::admin::Admin;
    use tower_recovery::drain::Drain;
    use tower_recovery::health::{Dependency, HealthCheck, Reliability};
    use tower_recovery::recovery::Recovery;

    let storage_up = Arc::new(AtomicBool::new(false));
    let storage_check = {
        let up = storage_up.clone();
        HealthCheck::new(move || {
            let up = up.load(Ordering::SeqCst);
            async move {
                if up {
                    Ok(())
                } else {
                    Err("connection refused")
                }
            }
        })
    };
    let model = Recovery::builder("model_server", || async { Ok::<_, String>(()) }).spawn();
    let set = Reliability::builder()
        .dependency(Dependency::new("storage", storage_check))
        .dependency(
            Dependency::new(
                "model_server",
                HealthCheck::new(|| async { Ok::<_, String>(()) }),
            )
            .needs("storage")
            .recovery(&model),
        )
        .build()
        .unwrap();
    let drain = Drain::default();
    let router = Admin::new(&set, &drain).router::<()>();
    set.check_all().await;
    model.trigger_automatic("calls failed");
    model
        .wait_for(|_| model.status().waiting_for.is_some())
        .await;

    let (res, body) = call(&router, "GET", "/health", None).await;
    assert_eq!(res.status(), 503, "storage is required and down");
    let doc: HealthDoc = serde_json::from_str(&body).unwrap();
    assert_eq!(
        doc.root_causes.get("model_server").map(String::as_str),
        Some("storage")
    );
    assert_eq!(doc.root_causes.len(), 1, "storage is its own cause");
    let check = &doc.checks["model_server:connectivity"][0];
    assert_eq!(check.root_cause.as_deref(), Some("storage"));

    let (_, body) = call(&router, "GET", "/reliability", None).await;
    let doc: ReliabilityDoc = serde_json::from_str(&body).unwrap();
    let r = &doc.recovery["model_server"];
    assert_eq!(
        (r.state.as_str(), r.waiting_for.as_deref()),
        ("recovering", Some("storage"))
    );
    let m = &doc.health_monitor.dependencies["model_server"];
    assert_eq!(m.needs, ["storage"]);
    assert_eq!(m.root_cause.as_deref(), Some("storage"));

    // Storage is back: the recovery goes on and the cause is gone.
    storage_up.store(true, Ordering::SeqCst);
    set.check_all().await;
    model.wait_idle_or_cooling().await;
    let (res, body) = call(&router, "GET", "/health", None).await;
    assert_eq!(res.status(), 200);
    let doc: HealthDoc = serde_json::from_str(&body).unwrap();
    assert!(doc.root_causes.is_empty());
}
