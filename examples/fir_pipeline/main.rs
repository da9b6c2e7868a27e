//! The FIR pipeline: the seed system, running on tower-recovery.
//!
//! `cargo run --example fir_pipeline` starts, with embedded
//! defaults:
//!
//! - a stand-in LLM model server and a stand-in ASR/OCR server: real HTTP
//!   servers on loopback (`MODEL_SERVER_URL`, `ASR_OCR_SERVER_URL` point at
//!   real ones instead);
//! - a SQLite database file in the temporary directory, in WAL mode with one
//!   connection (`DATABASE_URL` may name SQLite or MySQL/MariaDB instead;
//!   the startup log names the file);
//! - the API on `HOST`:`PORT` (default 127.0.0.1:8000; `HOST=0.0.0.0` listens
//!   on every interface): `POST /fir` with `{"complaint": "..."}`
//!   asks the model server for a draft, stores it and answers 201 with its
//!   `id`; `GET /fir/{id}` reads it back; `POST /fir/audio` sends the body
//!   through the ASR/OCR server first;
//! - the admin routes (`/health`, `/livez`, `/readyz`, `/reliability`, the
//!   admin POSTs) and `/metrics` in Prometheus text, with help texts and
//!   `http_requests_total{route, method, status}`.
//!
//! Request bodies are limited to 2 MiB, except `POST /fir/audio`'s, limited
//! to 25 MiB; a larger body gets 413. Every error answer is JSON.
//!
//! The model-server and ASR/OCR clients are reqwest clients behind breaker
//! layers watched by recoveries; the database goes through
//! `Recovery::call_with` and a recovery that takes a fresh connection and
//! runs `SELECT 1`. The health monitor triggers recoveries too. Database
//! errors are classified by `classify::sqlx` (feature `sqlx`): the
//! database's failures (connection, pool, I/O, timeouts) answer 503 and
//! count towards its recovery; the caller's errors count towards nothing,
//! and a complaint too long for its column (MySQL/MariaDB `TEXT`, 65,535
//! bytes) answers 422 naming the field and the limit. Database errors name
//! their cause ("connection refused") and, in the log and the health
//! output, the URL without its password.
//!
//! SIGTERM (or ctrl-c) drains: readiness fails, new requests to the API get
//! 503, in-flight ones finish, the monitor stops, clients close, the process
//! exits 0. The API and the admin routes share one listener, which stays
//! open until the drain completes, so `/livez` answers 200 throughout the
//! drain (a failing liveness probe would get the pod killed mid-drain).
//! SIGTERM during the startup gate (the wait for dependencies, up to
//! `STARTUP_TIMEOUT`) ends the wait at once: the demo logs "Shutdown
//! requested during the startup gate" and exits 0 without serving, since it
//! was asked to stop and stopped cleanly. Exit status 1 means startup failed
//! (a dependency still down at `STARTUP_TIMEOUT`, or an error), 2 a
//! configuration error (every bad setting is named at once, and a port in
//! use is one). `--help` lists the settings.
//!
//! Each server's client goes through a chaos layer (`tower_recovery::chaos`,
//! off until switched on). `--chaos` (or `FIR_CHAOS=1`) makes the model
//! server unreachable for this process for 20 s every 45 s by switching its
//! injected failures on: watch the breaker open, recovery back off, and
//! recover, in the log and in `GET /reliability`. The admin routes `GET
//! /chaos` and `POST`/`DELETE /chaos/{model_server|asr_ocr_server}` (bearer
//! token) start and stop other rehearsals on a running demo, e.g.
//! `{"error_rate": 0.5, "latency_ms": 800, "duration_seconds": 120}`. Every
//! setting of the crate's `config` module is read from the environment.
//!
//! `REDIS_URL` (the demo is built with `redis`) makes this process
//! a replica of a fleet: one replica at a time recovers each dependency,
//! the others wait on it and probe at its success (see `fleet`).
//!
//! Modules: `config` (arguments, environment, `--help`), `database`, `fleet`,
//! `handlers` (the API), `upstreams` (model and ASR/OCR servers), `telemetry`
//! (`/metrics`), `chaos`.

mod chaos;
mod config;
mod database;
mod fleet;
mod handlers;
mod telemetry;
mod upstreams;

#[path = "../support/describe.rs"]
mod describe;

use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use axum::http::StatusCode;
use axum::routing::get;
use tokio::net::TcpListener;
use tower::BoxError;
use tower_recovery::admin::Admin;
use tower_recovery::chaos::Chaos;
use tower_recovery::circuit_breaker::Breaker;
use tower_recovery::drain::Drain;
use tower_recovery::health::{Dependency, HealthCheck, Monitor, Reliability};
use tower_recovery::recovery::{LogAlert, Recovery, WebhookAlert};

use config::Config;
use database::Database;
use handlers::{App, api_error, json_errors};
use upstreams::{MODEL, asr_ocr_server, guarded_client, model_server, probe, transport};

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    // Arguments first: `--help` and mistakes are answered before anything
    // starts.
    let Some(chaos_arg) = config::parse_args() else {
        return Ok(());
    };
    tracing_subscriber::fmt().with_target(false).init();
    let config = Config::from_env(chaos_arg);
    let settings = &config.settings;
    let fleet = fleet::join().unwrap_or_else(|problems| {
        for problem in &problems {
            eprintln!("configuration error: {problem}");
        }
        std::process::exit(2);
    });
    let prometheus = telemetry::install()?;

    // 1. Connect clients (starting the embedded stand-ins where no URL is set).
    // The stand-ins live as long as `main`: dropping one stops its server.
    let (model_url, _model_stand_in) =
        upstreams::url_or_stand_in("MODEL_SERVER_URL", "model server", || {
            model_server(Duration::ZERO)
        })
        .await?;
    let (asr_ocr_url, _asr_ocr_stand_in) =
        upstreams::url_or_stand_in("ASR_OCR_SERVER_URL", "ASR/OCR server", asr_ocr_server).await?;
    let db = Database::connect(&Config::database_url())?;
    let http = reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(2))
        .build()?;
    let drain = Drain::builder()
        .grace_period(settings.shutdown_grace_period)
        .pre_drain_delay(settings.pre_drain_delay)
        .build();
    // Signals are handled from here on: during the startup gate, and before
    // the first connection is accepted.
    drain.listen_for_signals();

    // What this process sends each server goes through its chaos switch
    // (off until `--chaos` or an admin request switches it on).
    let model_chaos = Chaos::new("model_server");
    let asr_chaos = Chaos::new("asr_ocr_server");
    let model_transport = transport(&http, &model_chaos);
    let asr_transport = transport(&http, &asr_chaos);

    let model_breaker = Breaker::new("model_server");
    let asr_breaker = Breaker::new("asr_ocr_server");
    // Alerts: a log line each, and a JSON POST to ALERT_WEBHOOK_URL if set.
    let webhook: Option<WebhookAlert> = config.alert_webhook.clone().map(|b| b.build());
    let (attempts, backoff, attempt_timeout, cooldown, mode) = (
        settings.max_recovery_attempts,
        settings.backoff(),
        settings.recovery_attempt_timeout,
        settings.recovery_interval,
        settings.recovery_mode(),
    );
    let model_recovery = fleet::recovery(
        Recovery::builder("model_server", {
            let (transport, http, base) =
                (model_transport.clone(), http.clone(), model_url.clone());
            move || {
                probe(
                    transport.clone(),
                    http.clone(),
                    base.clone(),
                    &[MODEL],
                    "model server",
                )
            }
        })
        .watch(&model_breaker)
        .max_attempts(attempts)
        .backoff(backoff)
        .attempt_timeout(attempt_timeout)
        .cooldown(cooldown)
        .mode(mode)
        .alert(LogAlert)
        .alert(webhook.clone()),
        &fleet,
    )
    .spawn();
    let asr_recovery = fleet::recovery(
        Recovery::builder("asr_ocr_server", {
            let (transport, http, base) =
                (asr_transport.clone(), http.clone(), asr_ocr_url.clone());
            move || {
                probe(
                    transport.clone(),
                    http.clone(),
                    base.clone(),
                    &["whisper", "dots_ocr"],
                    "ASR/OCR server",
                )
            }
        })
        .watch(&asr_breaker)
        .alert(LogAlert)
        .alert(webhook.clone())
        .max_attempts(attempts)
        .backoff(backoff)
        .attempt_timeout(attempt_timeout)
        .cooldown(cooldown)
        .mode(mode),
        &fleet,
    )
    .spawn();
    let db_recovery = fleet::recovery(
        Recovery::builder("database", {
            let db = db.clone();
            move || {
                let db = db.clone();
                async move { db.recover().await }
            }
        })
        .max_attempts(attempts)
        .backoff(backoff)
        .attempt_timeout(attempt_timeout)
        .cooldown(cooldown)
        .mode(mode)
        .alert(LogAlert)
        .alert(webhook.clone()),
        &fleet,
    )
    .spawn();

    // 2. Register dependencies.
    let db_check = {
        let db = db.clone();
        HealthCheck::new(move || {
            let db = db.clone();
            async move { db.check().await }
        })
    };
    let reliability = Reliability::builder()
        .history_size(settings.health_history_size)
        .dependency({
            let model = Dependency::new(
                "model_server",
                upstreams::health_check(&model_transport, &http, model_url.clone()),
            )
            .breaker(&model_breaker)
            .recovery(&model_recovery);
            if config.model_needs_database {
                model.needs("database")
            } else {
                model
            }
        })
        .dependency(
            Dependency::new(
                "asr_ocr_server",
                upstreams::health_check(&asr_transport, &http, asr_ocr_url.clone()),
            )
            .optional()
            .breaker(&asr_breaker)
            .recovery(&asr_recovery),
        )
        .dependency(Dependency::new("database", db_check).recovery(&db_recovery))
        // Rehearsals show in /health and /reliability.
        .chaos(&model_chaos)
        .chaos(&asr_chaos)
        .build()?;

    // The admin routes answer from now on, during the startup gate too.
    let token = config.admin_token();
    let app = App {
        http: http.clone(),
        model: guarded_client(&model_transport, &model_breaker, &drain),
        asr_ocr: guarded_client(&asr_transport, &asr_breaker, &drain),
        model_breaker: model_breaker.clone(),
        asr_breaker: asr_breaker.clone(),
        model_url: model_url.clone(),
        asr_ocr_url: asr_ocr_url.clone(),
        db: db.clone(),
        db_recovery: db_recovery.clone(),
        ids: Arc::new(AtomicU64::new(0)),
    };
    let admin = fleet::admin(Admin::new(&reliability, &drain).token(&token), &fleet);
    let router = handlers::routes(app)
        .layer(drain.layer())
        .merge(admin.chaos_router(reliability.chaos_handles()))
        .merge(admin.router())
        .route(
            "/metrics",
            get(move || std::future::ready(prometheus.render())),
        )
        .fallback(|| async { api_error(StatusCode::NOT_FOUND, "no such route") })
        .layer(axum::middleware::map_response(json_errors))
        .layer(axum::middleware::from_fn(telemetry::count_requests))
        // An access log line per request, at info.
        .layer(
            tower_http::trace::TraceLayer::new_for_http()
                .make_span_with(
                    tower_http::trace::DefaultMakeSpan::new().level(tracing::Level::INFO),
                )
                .on_request(())
                .on_response(
                    tower_http::trace::DefaultOnResponse::new().level(tracing::Level::INFO),
                ),
        );
    let (host, port) = (config.host, config.port);
    let listener = match TcpListener::bind((host, port)).await {
        Ok(listener) => listener,
        Err(e) => {
            let why = if e.kind() == std::io::ErrorKind::AddrInUse {
                "the port is in use".to_string()
            } else {
                e.to_string()
            };
            eprintln!(
                "configuration error: cannot listen on {host}:{port} (PORT={port}, HOST={host}): {why}"
            );
            std::process::exit(2);
        }
    };
    let addr = listener.local_addr()?;
    let server = tokio::spawn({
        // One listener for the API and the admin routes: it stays open until
        // the drain completes, so `/livez` answers during the drain while the
        // API answers 503.
        let drained = drain.completed();
        async move {
            axum::serve(listener, router)
                .with_graceful_shutdown(async move {
                    drained.await;
                })
                .await
        }
    });
    tracing::info!("listening on http://{addr} (admin routes up; /readyz waits for dependencies)");
    config.log_effective(addr, &db, &model_url, &asr_ocr_url);

    // 3. Wait for the required dependencies, unless asked to stop.
    let started = tokio::time::Instant::now();
    tokio::select! {
        gate = reliability
            .wait_for_dependencies(settings.dependency_check_interval, settings.startup_timeout) => {
            gate?;
        }
        () = drain.draining() => {
            tracing::info!(
                waited_ms = started.elapsed().as_millis() as u64,
                "Shutdown requested during the startup gate: exiting without serving"
            );
            return Ok(());
        }
    }
    db.ensure_schema().await?;
    // 4. Continuous monitoring (recoveries were registered above).
    let monitor = Monitor::start(&reliability, settings.health_check_interval);
    drain.stop_monitor(monitor);
    tracing::info!(
        startup_gate_ms = started.elapsed().as_millis() as u64,
        "Ready to serve on http://{addr}"
    );
    println!("\n  FIR pipeline ready on http://{addr}\n");
    if let Some(file) = db.sqlite_file() {
        println!("  SQLite database: {file}\n");
    }
    println!(
        "  curl -s -XPOST http://{addr}/fir -H 'content-type: application/json' -d '{{\"complaint\":\"My bicycle was stolen from the market\"}}'"
    );
    // A token the user supplied is never echoed: the commands name its
    // variable instead.
    let shown = if settings.admin_token.is_some() {
        "$ADMIN_TOKEN".to_string()
    } else {
        token.clone()
    };
    println!("  curl -s http://{addr}/reliability -H \"authorization: Bearer {shown}\"");
    println!(
        "  curl -s -XPOST http://{addr}/reliability/auto-recovery/model_server/trigger -H \"authorization: Bearer {shown}\""
    );
    println!(
        "  curl -s -XPOST http://{addr}/reliability/circuit-breaker/model_server/reset -H \"authorization: Bearer {shown}\""
    );
    println!(
        "  curl -s -XPOST http://{addr}/chaos/model_server -H \"authorization: Bearer {shown}\" -d '{{\"error_rate\": 0.5, \"latency_ms\": 800, \"duration_seconds\": 120}}'"
    );
    println!("  curl -s -XDELETE http://{addr}/chaos -H \"authorization: Bearer {shown}\"");
    println!("  curl -s http://{addr}/metrics\n");

    if config.chaos {
        chaos::start(&model_chaos, config.chaos_up, config.chaos_down);
    }

    // 5. Serve until drained; bound axum's own shutdown by the drain.
    let report = drain.completed().await;
    if report.still_running > 0 {
        tracing::warn!(
            still_running = report.still_running,
            "The drain ended with requests still running: giving them 2 s more"
        );
    }
    let _ = tokio::time::timeout(Duration::from_secs(2), server).await;
    db.close().await;
    // The last word, true as the process exits: requests still running now
    // are dropped with it.
    let last = drain.report().unwrap_or(report);
    tracing::info!(
        finished = last.finished,
        refused = last.refused,
        cut_off = last.cut_off,
        dropped_at_exit = last.still_running,
        elapsed_ms = last.elapsed.as_millis() as u64,
        "Service exits"
    );
    Ok(())
}
