//! The FIR pipeline: the seed system, running on tower-recovery.
//!
//! `cargo run --example fir_pipeline` starts, with embedded defaults:
//!
//! - a stand-in LLM model server and a stand-in ASR/OCR server: real HTTP
//!   servers on loopback (`MODEL_SERVER_URL`, `ASR_OCR_SERVER_URL` point at
//!   real ones instead);
//! - a SQLite database file (`DATABASE_URL` may name SQLite or
//!   MySQL/MariaDB instead);
//! - the API on `HOST`:`PORT` (default 127.0.0.1:8000; `HOST=0.0.0.0` listens
//!   on every interface): `POST /fir` with `{"complaint": "..."}`
//!   asks the model server for a draft, stores it and answers 201 with its
//!   `id`; `GET /fir/{id}` reads it back; `POST /fir/audio` sends the body
//!   through the ASR/OCR server first;
//! - the admin routes (`/health`, `/livez`, `/readyz`, `/reliability`, the
//!   admin POSTs) and `/metrics` in Prometheus text.
//!
//! The model-server and ASR/OCR clients are reqwest clients behind breaker
//! layers watched by recoveries; the database goes through `Recovery::call`
//! and a recovery that takes a fresh connection and runs `SELECT 1`. The
//! health monitor triggers recoveries too.
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
//! `--chaos` (or `FIR_CHAOS=1`) stops the embedded model server for 20 s
//! every 45 s: watch the breaker open, recovery back off, and recover, in the
//! log and in `GET /reliability`. Every setting of the crate's `config`
//! module is read from the environment.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::{Deserialize, Serialize};
use serde_json::json;
use sqlx::AnyPool;
use sqlx::any::AnyPoolOptions;
use tokio::net::TcpListener;
use tower::util::BoxCloneSyncService;
use tower::{BoxError, ServiceBuilder, ServiceExt};
use tower_recovery::admin::Admin;
use tower_recovery::circuit_breaker::{Breaker, Rejected};
use tower_recovery::classify::HttpFailures;
use tower_recovery::config::Settings;
use tower_recovery::drain::{ClientClosed, Drain};
use tower_recovery::health::{Dependency, HealthCheck, Monitor, Reliability};
use tower_recovery::recovery::Recovery;

// ===== embedded stand-ins =====

#[path = "support/stand_in.rs"]
mod stand_in;

use stand_in::{MODEL, StandIn, asr_ocr_server, model_server};

// ===== clients =====

type Client = BoxCloneSyncService<reqwest::Request, reqwest::Response, BoxError>;

/// A reqwest client behind a breaker (5xx and connection errors are
/// failures), a timeout, and the drain's client layer.
fn guarded_client(http: &reqwest::Client, breaker: &Breaker, drain: &Drain) -> Client {
    let http = http.clone();
    let svc = ServiceBuilder::new()
        .layer(drain.client_layer())
        .layer(
            breaker
                .layer()
                .classify(HttpFailures::new().with_status(|r: &reqwest::Response| r.status())),
        )
        .timeout(Duration::from_secs(30))
        .service_fn(move |req: reqwest::Request| {
            let http = http.clone();
            async move { http.execute(req).await.map_err(BoxError::from) }
        });
    BoxCloneSyncService::new(svc)
}

#[path = "support/describe.rs"]
mod describe;

use describe::describe;

/// The seed's recovery handlers for HTTP servers: health endpoint, then
/// every model listed.
async fn probe(
    http: reqwest::Client,
    base: String,
    models: &'static [&'static str],
    what: &'static str,
) -> Result<(), String> {
    tracing::info!("Attempting to recover {what} connection...");
    let result = async {
        let health = http
            .get(format!("{base}/health"))
            .send()
            .await
            .map_err(|e| describe(&e))?;
        if !health.status().is_success() {
            return Err(format!("health endpoint answered {}", health.status()));
        }
        let listed = http
            .get(format!("{base}/v1/models"))
            .send()
            .await
            .map_err(|e| describe(&e))?
            .text()
            .await
            .map_err(|e| describe(&e))?;
        match models.iter().find(|m| !listed.contains(**m)) {
            Some(missing) => Err(format!("model {missing} is not loaded")),
            None => Ok(()),
        }
    }
    .await;
    match &result {
        Ok(()) => tracing::info!("{what} connection recovered"),
        Err(e) => tracing::error!("{what} recovery failed: {e}"),
    }
    result
}

// ===== the database =====

async fn connect_database(url: &str) -> Result<AnyPool, BoxError> {
    sqlx::any::install_default_drivers();
    let pool = AnyPoolOptions::new()
        .max_connections(8)
        .acquire_timeout(Duration::from_secs(3))
        .test_before_acquire(true)
        .connect_lazy(url)?;
    Ok(pool)
}

async fn ensure_schema(pool: &AnyPool) -> Result<(), sqlx::Error> {
    sqlx::query(
        "CREATE TABLE IF NOT EXISTS firs (
            id VARCHAR(40) PRIMARY KEY,
            complaint TEXT NOT NULL,
            draft TEXT NOT NULL,
            created_at VARCHAR(40) NOT NULL
        )",
    )
    .execute(pool)
    .await?;
    Ok(())
}

async fn select_one(pool: AnyPool) -> Result<(), String> {
    tracing::info!("Attempting to recover database connection...");
    let result = async {
        let mut conn = pool.acquire().await.map_err(|e| describe(&e))?;
        sqlx::query("SELECT 1")
            .execute(&mut *conn)
            .await
            .map_err(|e| describe(&e))?;
        Ok(())
    }
    .await;
    match &result {
        Ok(()) => tracing::info!("Database connection recovered"),
        Err(e) => tracing::error!("Database recovery failed: {e}"),
    }
    result
}

// ===== the API =====

#[derive(Clone)]
struct App {
    /// Builds requests; they are sent through the guarded clients.
    http: reqwest::Client,
    model: Client,
    asr_ocr: Client,
    model_breaker: Breaker,
    asr_breaker: Breaker,
    model_url: String,
    asr_ocr_url: String,
    db: AnyPool,
    db_recovery: Recovery,
    ids: Arc<AtomicU64>,
}

#[derive(Deserialize)]
struct NewFir {
    complaint: String,
}

#[derive(Serialize)]
struct Fir {
    id: String,
    complaint: String,
    draft: String,
    created_at: String,
}

/// Every error answer is JSON, like the API's own: axum's rejections (bad
/// JSON 400, 405, 413 past the body limit, 415) and the drain's 503 come as
/// plain text or empty. Headers (`Allow`, `Retry-After`, `Connection`) are
/// kept.
async fn json_errors(response: Response) -> Response {
    let status = response.status();
    let json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/") && v.contains("json"));
    if json || !(status.is_client_error() || status.is_server_error()) {
        return response;
    }
    let (parts, body) = response.into_parts();
    let text = axum::body::to_bytes(body, 64 * 1024)
        .await
        .map(|b| String::from_utf8_lossy(&b).trim().to_string())
        .unwrap_or_default();
    let message = if text.is_empty() {
        status
            .canonical_reason()
            .unwrap_or("error")
            .to_ascii_lowercase()
    } else {
        text
    };
    let mut out = api_error(status, message);
    for (name, value) in &parts.headers {
        if name != header::CONTENT_TYPE && name != header::CONTENT_LENGTH {
            out.headers_mut().insert(name.clone(), value.clone());
        }
    }
    out
}

fn api_error(status: StatusCode, message: impl Into<String>) -> Response {
    (status, axum::Json(json!({ "error": message.into() }))).into_response()
}

/// Maps a client error to an answer: open circuit or shutdown -> 503 with a
/// retry hint, anything else from the dependency -> 502.
fn dependency_error(what: &str, error: BoxError, breaker: &Breaker) -> Response {
    if error.is::<Rejected>() {
        let mut response = api_error(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("{what} unavailable: {error}"),
        );
        let next_probe = breaker.snapshot().next_probe_in;
        let after = next_probe.map_or(5, |d| d.as_secs().max(1));
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(after));
        return response;
    }
    if error.is::<ClientClosed>() {
        return api_error(StatusCode::SERVICE_UNAVAILABLE, "shutting down");
    }
    // The whole error (upstream URL included) goes to the log, for the
    // operator; the answer names the dependency and the cause only.
    tracing::warn!(dependency = what, error = %describe(&*error), "dependency call failed");
    let error = match error.downcast::<reqwest::Error>() {
        Ok(e) => describe(&e.without_url()),
        Err(other) => describe(&*other),
    };
    api_error(StatusCode::BAD_GATEWAY, format!("{what} failed: {error}"))
}

impl App {
    fn next_id(&self) -> String {
        let n = self.ids.fetch_add(1, Ordering::Relaxed);
        let t = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default();
        format!(
            "fir-{:x}-{:04x}-{n}",
            t.as_secs(),
            std::process::id() & 0xffff
        )
    }

    async fn draft(&self, complaint: &str) -> Result<String, Response> {
        let request = self
            .http
            .post(format!("{}/v1/completions", self.model_url))
            .json(&json!({ "model": MODEL, "prompt": complaint, "max_tokens": 512 }))
            .build()
            .map_err(|e| api_error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
        let response = self
            .model
            .clone()
            .oneshot(request)
            .await
            .map_err(|e| dependency_error("model server", e, &self.model_breaker))?;
        if !response.status().is_success() {
            return Err(api_error(
                StatusCode::BAD_GATEWAY,
                format!("model server answered {}", response.status()),
            ));
        }
        let body: serde_json::Value = response
            .json()
            .await
            .map_err(|e| api_error(StatusCode::BAD_GATEWAY, format!("model server answer: {e}")))?;
        body["text"]
            .as_str()
            .map(str::to_string)
            .ok_or_else(|| api_error(StatusCode::BAD_GATEWAY, "model server answer has no text"))
    }

    async fn store(&self, complaint: String, draft: String) -> Result<Fir, Response> {
        let fir = Fir {
            id: self.next_id(),
            complaint,
            draft,
            created_at: httpdate::fmt_http_date(SystemTime::now()),
        };
        let insert =
            sqlx::query("INSERT INTO firs (id, complaint, draft, created_at) VALUES (?, ?, ?, ?)")
                .bind(&fir.id)
                .bind(&fir.complaint)
                .bind(&fir.draft)
                .bind(&fir.created_at)
                .execute(&self.db);
        self.db_recovery.call(insert).await.map_err(|e| {
            api_error(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("database unavailable: {}", describe(&e)),
            )
        })?;
        Ok(fir)
    }
}

async fn create_fir(
    State(app): State<App>,
    headers: axum::http::HeaderMap,
    body: Bytes,
) -> Response {
    let json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("application/json"));
    if !json {
        return api_error(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "expected content-type: application/json",
        );
    }
    let new: NewFir = match serde_json::from_slice(&body) {
        Ok(new) => new,
        Err(e) => {
            return api_error(
                StatusCode::BAD_REQUEST,
                format!("expected {{\"complaint\": \"...\"}}: {e}"),
            );
        }
    };
    if new.complaint.trim().is_empty() {
        return api_error(StatusCode::BAD_REQUEST, "complaint must not be empty");
    }
    let draft = match app.draft(&new.complaint).await {
        Ok(draft) => draft,
        Err(response) => return response,
    };
    match app.store(new.complaint, draft).await {
        Ok(fir) => (StatusCode::CREATED, axum::Json(fir)).into_response(),
        Err(response) => response,
    }
}

async fn create_fir_from_audio(State(app): State<App>, body: Bytes) -> Response {
    if body.is_empty() {
        return api_error(StatusCode::BAD_REQUEST, "expected an audio or image body");
    }
    let request = match app
        .http
        .post(format!("{}/v1/transcribe", app.asr_ocr_url))
        .body(body.to_vec())
        .build()
    {
        Ok(request) => request,
        Err(e) => return api_error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    };
    let text = match app.asr_ocr.clone().oneshot(request).await {
        Ok(response) if response.status().is_success() => match response
            .json::<serde_json::Value>()
            .await
        {
            Ok(v) => v["text"].as_str().unwrap_or_default().to_string(),
            Err(e) => return api_error(StatusCode::BAD_GATEWAY, format!("ASR/OCR answer: {e}")),
        },
        Ok(response) => {
            return api_error(
                StatusCode::BAD_GATEWAY,
                format!("ASR/OCR server answered {}", response.status()),
            );
        }
        Err(e) => return dependency_error("ASR/OCR server", e, &app.asr_breaker),
    };
    let draft = match app.draft(&text).await {
        Ok(draft) => draft,
        Err(response) => return response,
    };
    match app.store(text, draft).await {
        Ok(fir) => (StatusCode::CREATED, axum::Json(fir)).into_response(),
        Err(response) => response,
    }
}

/// A text column: MySQL reports TEXT to sqlx's Any driver as BLOB, so fall
/// back to bytes.
fn text(row: &sqlx::any::AnyRow, index: usize) -> Result<String, sqlx::Error> {
    use sqlx::Row;
    row.try_get::<String, _>(index).or_else(|_| {
        row.try_get::<Vec<u8>, _>(index)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
    })
}

async fn get_fir(State(app): State<App>, Path(id): Path<String>) -> Response {
    let query = sqlx::query("SELECT id, complaint, draft, created_at FROM firs WHERE id = ?")
        .bind(&id)
        .fetch_optional(&app.db);
    let row = match app.db_recovery.call(query).await {
        Ok(Some(row)) => row,
        Ok(None) => return api_error(StatusCode::NOT_FOUND, format!("no FIR with id {id:?}")),
        Err(e) => {
            return api_error(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("database unavailable: {}", describe(&e)),
            );
        }
    };
    let fir = (|| {
        Ok::<_, sqlx::Error>(Fir {
            id: text(&row, 0)?,
            complaint: text(&row, 1)?,
            draft: text(&row, 2)?,
            created_at: text(&row, 3)?,
        })
    })();
    match fir {
        Ok(fir) => axum::Json(fir).into_response(),
        Err(e) => api_error(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("stored FIR unreadable: {e}"),
        ),
    }
}

// ===== main =====

/// `url` without its password (`mysql://user:***@host/db`).
fn redact_url(url: &str) -> String {
    match url.split_once("://") {
        Some((scheme, rest)) => match rest.split_once('@') {
            Some((userinfo, host)) => {
                let user = userinfo.split(':').next().unwrap_or_default();
                if userinfo.contains(':') {
                    format!("{scheme}://{user}:***@{host}")
                } else {
                    url.to_string()
                }
            }
            None => url.to_string(),
        },
        None => url.to_string(),
    }
}

fn random_token() -> String {
    use std::hash::{BuildHasher, Hasher};
    let mut out = String::new();
    for i in 0..4u64 {
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u64(i);
        h.write_u128(
            SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .unwrap_or_default()
                .as_nanos(),
        );
        out.push_str(&format!("{:016x}", h.finish()));
    }
    out
}

const USAGE: &str = "\
usage: cargo run --example fir_pipeline [-- --chaos]

  --chaos      stop the embedded model server for 20 s every 45 s (or FIR_CHAOS=1)
  -h, --help   this text

environment: HOST (default 127.0.0.1; 0.0.0.0 to listen on every interface),
PORT (default 8000), DATABASE_URL (default: a SQLite file in the temporary
directory), MODEL_SERVER_URL and ASR_OCR_SERVER_URL (default: embedded
stand-ins), ADMIN_TOKEN, and the settings of tower_recovery::config
(RECOVERY_INTERVAL, HEALTH_CHECK_INTERVAL, ...).";

/// Reads a flag: unset, or one of the values below.
fn flag(name: &str) -> Result<bool, String> {
    match std::env::var(name) {
        Err(_) => Ok(false),
        Ok(v) => match v.trim().to_ascii_lowercase().as_str() {
            "1" | "true" | "yes" | "on" => Ok(true),
            "" | "0" | "false" | "no" | "off" => Ok(false),
            _ => Err(format!(
                "invalid {name}={v:?}: expected 1, true, yes, on, or 0, false, no, off"
            )),
        },
    }
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    // Arguments first: `--help` and mistakes are answered before anything
    // starts.
    let mut chaos_arg = false;
    for arg in std::env::args().skip(1) {
        match arg.as_str() {
            "--chaos" => chaos_arg = true,
            "-h" | "--help" => {
                println!("{USAGE}");
                return Ok(());
            }
            other => {
                eprintln!("configuration error: unknown argument {other:?}\n\n{USAGE}");
                std::process::exit(2);
            }
        }
    }
    tracing_subscriber::fmt().with_target(false).init();
    // Every bad setting at once, one format, exit status 2.
    let mut problems = Vec::new();
    let settings = Settings::from_env()
        .map_err(|e| problems.extend(e.errors().iter().map(ToString::to_string)))
        .ok();
    let port: u16 = match std::env::var("PORT") {
        Ok(p) => p.trim().parse().unwrap_or_else(|_| {
            problems.push(format!(
                "invalid PORT={p:?}: expected a port number 0-65535"
            ));
            0
        }),
        Err(_) => 8000,
    };
    let host: std::net::IpAddr = match std::env::var("HOST") {
        Ok(h) => h.trim().parse().unwrap_or_else(|_| {
            problems.push(format!(
                "invalid HOST={h:?}: expected an IP address (127.0.0.1, or 0.0.0.0 for every interface)"
            ));
            std::net::Ipv4Addr::LOCALHOST.into()
        }),
        Err(_) => std::net::Ipv4Addr::LOCALHOST.into(),
    };
    let chaos = chaos_arg
        | flag("FIR_CHAOS").unwrap_or_else(|e| {
            problems.push(e);
            false
        });
    let Some(settings) = settings.filter(|_| problems.is_empty()) else {
        for problem in &problems {
            eprintln!("configuration error: {problem}");
        }
        std::process::exit(2);
    };
    let prometheus = metrics_exporter_prometheus::PrometheusBuilder::new().install_recorder()?;

    // 1. Connect clients (starting the embedded stand-ins where no URL is set).
    let (model_url, model_stand_in) = match std::env::var("MODEL_SERVER_URL") {
        Ok(url) => (url.trim_end_matches('/').to_string(), None),
        Err(_) => {
            let s = StandIn::start(model_server(Duration::ZERO)).await?;
            tracing::info!("embedded model server on {}", s.url());
            (s.url(), Some(s))
        }
    };
    // The stand-ins live as long as `main`: dropping one stops its server.
    let (asr_ocr_url, _asr_ocr_stand_in) = match std::env::var("ASR_OCR_SERVER_URL") {
        Ok(url) => (url.trim_end_matches('/').to_string(), None),
        Err(_) => {
            let s = StandIn::start(asr_ocr_server()).await?;
            tracing::info!("embedded ASR/OCR server on {}", s.url());
            (s.url(), Some(s))
        }
    };
    let database_url = std::env::var("DATABASE_URL").unwrap_or_else(|_| {
        let path = std::env::temp_dir().join("fir_pipeline.db");
        format!("sqlite://{}?mode=rwc", path.display())
    });
    let db = connect_database(&database_url).await?;
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

    let model_breaker = Breaker::new("model_server");
    let asr_breaker = Breaker::new("asr_ocr_server");
    let (attempts, backoff, attempt_timeout, cooldown) = (
        settings.max_recovery_attempts,
        settings.backoff(),
        settings.recovery_attempt_timeout,
        settings.recovery_interval,
    );
    let model_recovery = Recovery::builder("model_server", {
        let (http, base) = (http.clone(), model_url.clone());
        move || probe(http.clone(), base.clone(), &[MODEL], "model server")
    })
    .watch(&model_breaker)
    .max_attempts(attempts)
    .backoff(backoff)
    .attempt_timeout(attempt_timeout)
    .cooldown(cooldown)
    .on_exhausted(|s| {
        tracing::error!(
            "ALERT: recovery of {} exhausted: {:?}",
            s.name,
            s.last_error
        )
    })
    .spawn();
    let asr_recovery = Recovery::builder("asr_ocr_server", {
        let (http, base) = (http.clone(), asr_ocr_url.clone());
        move || {
            probe(
                http.clone(),
                base.clone(),
                &["whisper", "dots_ocr"],
                "ASR/OCR server",
            )
        }
    })
    .watch(&asr_breaker)
    .max_attempts(attempts)
    .backoff(backoff)
    .attempt_timeout(attempt_timeout)
    .cooldown(cooldown)
    .spawn();
    let db_recovery = Recovery::builder("database", {
        let db = db.clone();
        move || select_one(db.clone())
    })
    .max_attempts(attempts)
    .backoff(backoff)
    .attempt_timeout(attempt_timeout)
    .cooldown(cooldown)
    .spawn();

    // 2. Register dependencies.
    let http_check = |base: String| {
        let http = http.clone();
        HealthCheck::new(move || {
            let request = http.get(format!("{base}/health"));
            async move {
                let response = request.send().await.map_err(|e| describe(&e))?;
                if response.status().is_success() {
                    Ok(())
                } else {
                    Err(format!("health answered {}", response.status()))
                }
            }
        })
    };
    let db_check = {
        let db = db.clone();
        HealthCheck::new(move || {
            let db = db.clone();
            async move {
                sqlx::query("SELECT 1")
                    .execute(&db)
                    .await
                    .map(|_| ())
                    .map_err(|e| describe(&e))
            }
        })
    };
    let reliability = Reliability::builder()
        .history_size(settings.health_history_size)
        .dependency(
            Dependency::new("model_server", http_check(model_url.clone()))
                .breaker(&model_breaker)
                .recovery(&model_recovery),
        )
        .dependency(
            Dependency::new("asr_ocr_server", http_check(asr_ocr_url.clone()))
                .optional()
                .breaker(&asr_breaker)
                .recovery(&asr_recovery),
        )
        .dependency(Dependency::new("database", db_check).recovery(&db_recovery))
        .build()?;

    // The admin routes answer from now on, during the startup gate too.
    let token = settings.admin_token.clone().unwrap_or_else(|| {
        let token = random_token();
        tracing::warn!("ADMIN_TOKEN is not set: generated one for this run");
        token
    });
    let asr_ocr_url_shown = asr_ocr_url.clone();
    let app = App {
        http: http.clone(),
        model: guarded_client(&http, &model_breaker, &drain),
        asr_ocr: guarded_client(&http, &asr_breaker, &drain),
        model_breaker: model_breaker.clone(),
        asr_breaker: asr_breaker.clone(),
        model_url: model_url.clone(),
        asr_ocr_url,
        db: db.clone(),
        db_recovery: db_recovery.clone(),
        ids: Arc::new(AtomicU64::new(0)),
    };
    let router = Router::new()
        .route("/fir", post(create_fir))
        .route("/fir/audio", post(create_fir_from_audio))
        .route("/fir/{id}", get(get_fir))
        .with_state(app)
        .layer(drain.layer())
        .merge(Admin::new(&reliability, &drain).token(&token).router())
        .route(
            "/metrics",
            get(move || std::future::ready(prometheus.render())),
        )
        .fallback(|| async { api_error(StatusCode::NOT_FOUND, "no such route") })
        .layer(axum::middleware::map_response(json_errors))
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
    tracing::info!(
        listen = %addr,
        database = %redact_url(&database_url),
        model_server = %model_url,
        asr_ocr_server = %asr_ocr_url_shown,
        startup_timeout_s = settings.startup_timeout.as_secs_f64(),
        dependency_check_interval_s = settings.dependency_check_interval.as_secs_f64(),
        health_check_interval_s = settings.health_check_interval.as_secs_f64(),
        recovery_interval_s = settings.recovery_interval.as_secs_f64(),
        max_recovery_attempts = settings.max_recovery_attempts,
        shutdown_grace_period_s = settings.shutdown_grace_period.as_secs_f64(),
        admin_token = if settings.admin_token.is_some() { "from ADMIN_TOKEN" } else { "generated" },
        chaos,
        "effective configuration"
    );

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
    ensure_schema(&db).await?;
    // 4. Continuous monitoring (recoveries were registered above).
    let monitor = Monitor::start(&reliability, settings.health_check_interval);
    drain.stop_monitor(monitor);
    tracing::info!(
        startup_gate_ms = started.elapsed().as_millis() as u64,
        "Ready to serve on http://{addr}"
    );
    println!("\n  FIR pipeline ready on http://{addr}\n");
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
    println!("  curl -s http://{addr}/metrics\n");

    if chaos {
        match model_stand_in.clone() {
            Some(stand_in) => {
                tracing::warn!("chaos: the embedded model server stops for 20 s every 45 s");
                tokio::spawn(async move {
                    loop {
                        tokio::time::sleep(Duration::from_secs(25)).await;
                        tracing::warn!("chaos: stopping the model server");
                        stand_in.stop();
                        tokio::time::sleep(Duration::from_secs(20)).await;
                        tracing::warn!("chaos: starting the model server again");
                        if let Err(e) = stand_in.restart().await {
                            tracing::error!("chaos: restart failed: {e}");
                        }
                    }
                });
            }
            None => {
                tracing::warn!("--chaos needs the embedded model server (MODEL_SERVER_URL is set)")
            }
        }
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
