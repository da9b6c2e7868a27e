//! The API: `POST /fir`, `POST /fir/audio`, `GET /fir/{id}`, their body
//! limits, and JSON error answers.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::SystemTime;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::{Deserialize, Serialize};
use serde_json::json;
use tower::{BoxError, ServiceExt};
use tower_recovery::circuit_breaker::{Breaker, Rejected};
use tower_recovery::classify::sqlx::{SqlxErrorsAsFailures, is_dependency_failure};
use tower_recovery::drain::ClientClosed;
use tower_recovery::recovery::Recovery;

use crate::database::Database;
use crate::describe::describe;
use crate::upstreams::{Client, MODEL};

/// The body limit of the JSON routes (axum's default, 2 MiB).
pub(crate) const JSON_BODY_LIMIT: usize = 2 * 1024 * 1024;
/// The body limit of `POST /fir/audio` (25 MiB).
pub(crate) const AUDIO_BODY_LIMIT: usize = 25 * 1024 * 1024;

#[derive(Clone)]
pub(crate) struct App {
    /// Builds requests; they are sent through the guarded clients.
    pub(crate) http: reqwest::Client,
    pub(crate) model: Client,
    pub(crate) asr_ocr: Client,
    pub(crate) model_breaker: Breaker,
    pub(crate) asr_breaker: Breaker,
    pub(crate) model_url: String,
    pub(crate) asr_ocr_url: String,
    pub(crate) db: Database,
    pub(crate) db_recovery: Recovery,
    pub(crate) ids: Arc<AtomicU64>,
}

#[derive(Deserialize)]
struct NewFir {
    complaint: String,
}

#[derive(Serialize)]
pub(crate) struct Fir {
    pub(crate) id: String,
    pub(crate) complaint: String,
    pub(crate) draft: String,
    pub(crate) created_at: String,
}

/// The API routes, with their body limits.
pub(crate) fn routes(app: App) -> Router {
    Router::new()
        .route("/fir", post(create_fir))
        .route(
            "/fir/audio",
            post(create_fir_from_audio).layer(DefaultBodyLimit::max(AUDIO_BODY_LIMIT)),
        )
        .route("/fir/{id}", get(get_fir))
        .layer(DefaultBodyLimit::max(JSON_BODY_LIMIT))
        .with_state(app)
}

/// Every error answer is JSON, like the API's own: axum's rejections (bad
/// JSON 400, 405, 413 past the body limit, 415) and the drain's 503 come as
/// plain text or empty. Headers (`Allow`, `Retry-After`, `Connection`) are
/// kept.
pub(crate) async fn json_errors(response: Response) -> Response {
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

pub(crate) fn api_error(status: StatusCode, message: impl Into<String>) -> Response {
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
        // The caller's errors (data too long for its column, a constraint)
        // are answered by a healthy database: they count towards no
        // recovery.
        match self
            .db_recovery
            .call_with(&SqlxErrorsAsFailures::new(), self.db.insert(&fir))
            .await
        {
            Ok(()) => Ok(fir),
            Err(e) => Err(self.database_error(e).await),
        }
    }

    /// 503 when the database failed; 422 or 500 when it refused this call.
    async fn database_error(&self, error: sqlx::Error) -> Response {
        if is_dependency_failure(&error) {
            self.database_unavailable(error).await
        } else {
            database_refused(&error)
        }
    }

    /// 503 naming the cause; the log also names the URL (without password).
    async fn database_unavailable(&self, error: sqlx::Error) -> Response {
        let error = self.db.explain(error).await;
        tracing::warn!(dependency = "database", error = %error, "database call failed");
        api_error(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("database unavailable: {}", error.cause()),
        )
    }
}

/// The database answered and refused the call. Data too long for its
/// column is the caller's: 422 naming the field and the limit. Anything
/// else is this service's own fault (a query the schema does not fit): 500.
/// Neither is an outage, so neither says "unavailable" nor asks for a
/// retry.
fn database_refused(error: &sqlx::Error) -> Response {
    if let Some(too_long) = crate::database::TooLong::of(error) {
        tracing::info!(column = %too_long.column, "complaint too long to store");
        let message = format!(
            "complaint too long to store: the {} column holds at most {} bytes on this database",
            too_long.column, too_long.limit
        );
        let body = json!({
            "error": message,
            "field": "complaint",
            "column": too_long.column,
            "limit_bytes": too_long.limit,
        });
        return (StatusCode::UNPROCESSABLE_ENTITY, axum::Json(body)).into_response();
    }
    tracing::error!(error = %describe(error), "the database refused a query");
    api_error(
        StatusCode::INTERNAL_SERVER_ERROR,
        format!("the database refused the query: {}", describe(error)),
    )
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
        .body(body)
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

async fn get_fir(State(app): State<App>, Path(id): Path<String>) -> Response {
    let row = match app
        .db_recovery
        .call_with(&SqlxErrorsAsFailures::new(), app.db.find(&id))
        .await
    {
        Ok(Some(row)) => row,
        Ok(None) => return api_error(StatusCode::NOT_FOUND, format!("no FIR with id {id:?}")),
        Err(e) => return app.database_error(e).await,
    };
    match crate::database::fir_from_row(&row) {
        Ok(fir) => axum::Json(fir).into_response(),
        Err(e) => api_error(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("stored FIR unreadable: {e}"),
        ),
    }
}
