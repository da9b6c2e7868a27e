//! The chaos routes of the admin router: `Admin::chaos_router`.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use http::{HeaderMap, HeaderValue, StatusCode, header};
use serde_json::{Map, Value, json};

use super::{Chaos, Faults, MAX_LATENCY, Snapshot};
use crate::admin::Admin;

/// The longest rehearsal the routes start: a week.
const MAX_DURATION_SECONDS: f64 = 7.0 * 24.0 * 3600.0;

/// The fields `POST /chaos/{name}` reads.
const FIELDS: &str = "error_rate, latency_ms, latency_rate, status, duration_seconds";

struct Routes {
    admin: Admin,
    handles: Vec<Chaos>,
}

impl Routes {
    fn get(&self, name: &str) -> Result<&Chaos, Box<Response>> {
        self.handles
            .iter()
            .find(|c| c.name() == name)
            .ok_or_else(|| {
                let known: Vec<&str> = self.handles.iter().map(Chaos::name).collect();
                Box::new(json_response(
                    StatusCode::NOT_FOUND,
                    &json!({ "error": format!("no chaos named {name:?}"), "known": known }),
                ))
            })
    }
}

#[cfg_attr(docsrs, doc(cfg(all(feature = "chaos", feature = "admin"))))]
impl Admin {
    /// The chaos routes over `chaos`, to `merge` next to
    /// [`router`](Self::router), under the same token rules: reading is
    /// open, changing needs the bearer token (401 without it, 403 while no
    /// token is configured, unless [`open`](Self::open)).
    ///
    /// | route | answer |
    /// |---|---|
    /// | `GET /chaos` | every handle's state: `{"active": bool, "chaos": {name: state}}` |
    /// | `DELETE /chaos` | stops every handle; 200 with their states |
    /// | `GET /chaos/{name}` | one handle's state |
    /// | `POST /chaos/{name}` | starts a rehearsal; 200 with the state |
    /// | `DELETE /chaos/{name}` | stops it; 200 with the state |
    ///
    /// A state is `{"name", "active", "error_rate", "latency_ms",
    /// "latency_rate", "status", "duration_seconds", "started_at",
    /// "remaining_seconds", "since_start_seconds", "calls", "injected",
    /// "delayed", "faults_injected": {"error", "response", "latency"}}` (the
    /// faults of the current or last rehearsal, `null` before the first;
    /// `started_at` in RFC 3339; the counts since the last start, `injected`
    /// the calls drawn to fail, `faults_injected` by kind as in
    /// [`Snapshot`]). `/reliability` lists the same states under `chaos`
    /// for the handles added to the set with
    /// [`health::Builder::chaos`](crate::health::Builder::chaos): pass
    /// [`Reliability::chaos_handles`](crate::health::Reliability::chaos_handles)
    /// here, and the handles switched over HTTP are the ones reported.
    ///
    /// The body of `POST /chaos/{name}` is a JSON object with any of
    /// `error_rate` (0 to 1), `latency_ms` (0 to 3,600,000), `latency_rate`
    /// (0 to 1, default 1), `status` (200 to 599: the response override)
    /// and `duration_seconds` (above 0, at most a week; without it the
    /// rehearsal lasts until stopped), and must inject something:
    ///
    /// ```text
    /// curl -XPOST localhost:8000/chaos/model_server -H "authorization: Bearer $ADMIN_TOKEN" \
    ///      -d '{"error_rate": 0.5, "latency_ms": 200, "duration_seconds": 300}'
    /// ```
    ///
    /// A body that is not JSON gets 400; an unknown field, a value of the
    /// wrong type or out of range, or nothing to inject gets 422, with
    /// `{"error", "field", "expected"}` naming the field and what it must
    /// be. An unknown name gets 404 with the `known` names.
    ///
    /// ```
    /// use axum::Router;
    /// use tower_recovery::admin::Admin;
    /// use tower_recovery::chaos::Chaos;
    /// use tower_recovery::drain::Drain;
    /// use tower_recovery::health::Reliability;
    ///
    /// let model = Chaos::new("model_server");
    /// // Added to the set: reported in `/health` and `/reliability`.
    /// let reliability = Reliability::builder().chaos(&model).build().unwrap();
    /// let admin = Admin::new(&reliability, &Drain::default()).token("s3cret");
    /// let app: Router = Router::new()
    ///     .merge(admin.chaos_router(reliability.chaos_handles()))
    ///     .merge(admin.router());
    /// ```
    ///
    /// # Panics
    ///
    /// If two handles have the same name.
    pub fn chaos_router<'a, S>(&self, chaos: impl IntoIterator<Item = &'a Chaos>) -> Router<S>
    where
        S: Clone + Send + Sync + 'static,
    {
        let mut handles: Vec<Chaos> = Vec::new();
        for c in chaos {
            assert!(
                handles.iter().all(|h| h.name() != c.name()),
                "two chaos handles named {:?}",
                c.name()
            );
            handles.push(c.clone());
        }
        let state = Arc::new(Routes {
            admin: self.clone(),
            handles,
        });
        Router::new()
            .route("/chaos", get(list).delete(stop_all))
            .route("/chaos/{name}", get(show).post(start).delete(stop))
            .with_state(state)
    }
}

type RoutesState = State<Arc<Routes>>;

fn json_response(status: StatusCode, body: &Value) -> Response {
    let mut response = (status, body.to_string()).into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

/// One handle's state: what `GET /chaos/{name}` answers and `/reliability`
/// lists under `chaos`.
pub(crate) fn state_json(s: &Snapshot) -> Value {
    let f = s.faults;
    json!({
        "name": s.name.as_ref(),
        "active": s.active,
        "error_rate": f.map(|f| f.error_rate),
        "latency_ms": f.map(|f| f.latency.as_secs_f64() * 1000.0),
        "latency_rate": f.map(|f| f.latency_rate),
        "status": f.and_then(|f| f.status).map(|s| s.as_u16()),
        "duration_seconds": f.and_then(|f| f.duration).map(|d| d.as_secs_f64()),
        "started_at": s.started_at.map(crate::util::rfc3339),
        "remaining_seconds": s.remaining.map(|d| d.as_secs_f64()),
        "since_start_seconds": s.since_start.map(|d| d.as_secs_f64()),
        "calls": s.calls,
        "injected": s.injected,
        "delayed": s.delayed,
        // The names of `tower_recovery_chaos_injected_total`'s `fault`.
        "faults_injected": {
            "error": s.errors,
            "response": s.responses,
            "latency": s.delayed,
        },
    })
}

fn all_json(routes: &Routes) -> Value {
    let mut all = Map::new();
    let mut active = false;
    for c in &routes.handles {
        let s = c.snapshot();
        active |= s.active;
        all.insert(c.name().to_string(), state_json(&s));
    }
    json!({ "active": active, "chaos": all })
}

async fn list(State(routes): RoutesState) -> Response {
    json_response(StatusCode::OK, &all_json(&routes))
}

async fn stop_all(State(routes): RoutesState, headers: HeaderMap) -> Response {
    if let Some(refusal) = routes.admin.guard_post(&headers) {
        return refusal;
    }
    for c in &routes.handles {
        if c.is_active() {
            tracing::warn!(chaos = %c.name(), "Chaos stopped by an admin request");
        }
        c.stop();
    }
    json_response(StatusCode::OK, &all_json(&routes))
}

async fn show(State(routes): RoutesState, Path(name): Path<String>) -> Response {
    match routes.get(&name) {
        Ok(c) => json_response(StatusCode::OK, &state_json(&c.snapshot())),
        Err(missing) => *missing,
    }
}

async fn start(
    State(routes): RoutesState,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if let Some(refusal) = routes.admin.guard_post(&headers) {
        return refusal;
    }
    let chaos = match routes.get(&name) {
        Ok(c) => c,
        Err(missing) => return *missing,
    };
    let faults = match parse(&body) {
        Ok(faults) => faults,
        Err(refusal) => return *refusal,
    };
    tracing::warn!(chaos = %name, "Chaos started by an admin request");
    chaos.start(faults);
    json_response(StatusCode::OK, &state_json(&chaos.snapshot()))
}

async fn stop(
    State(routes): RoutesState,
    Path(name): Path<String>,
    headers: HeaderMap,
) -> Response {
    if let Some(refusal) = routes.admin.guard_post(&headers) {
        return refusal;
    }
    let chaos = match routes.get(&name) {
        Ok(c) => c,
        Err(missing) => return *missing,
    };
    if chaos.is_active() {
        tracing::warn!(chaos = %name, "Chaos stopped by an admin request");
    }
    chaos.stop();
    json_response(StatusCode::OK, &state_json(&chaos.snapshot()))
}

/// 422 naming `field`, what it must be, and what was given.
fn unprocessable(field: &str, expected: &str, got: Option<&Value>) -> Box<Response> {
    Box::new(json_response(
        StatusCode::UNPROCESSABLE_ENTITY,
        &json!({
            "error": format!("invalid chaos setting {field:?}: expected {expected}"),
            "field": field,
            "expected": expected,
            "got": got,
        }),
    ))
}

/// The faults a `POST /chaos/{name}` body asks for.
fn parse(body: &[u8]) -> Result<Faults, Box<Response>> {
    let value: Value = serde_json::from_slice(body).map_err(|e| {
        Box::new(json_response(
            StatusCode::BAD_REQUEST,
            &json!({
                "error": format!("the body is not JSON: {e}"),
                "expected": "a JSON object such as {\"error_rate\": 0.5, \"duration_seconds\": 60}",
            }),
        ))
    })?;
    let Value::Object(fields) = value else {
        return Err(Box::new(json_response(
            StatusCode::UNPROCESSABLE_ENTITY,
            &json!({
                "error": "the body must be a JSON object",
                "field": null,
                "expected": format!("a JSON object with any of {FIELDS}"),
            }),
        )));
    };
    let mut faults = Faults::new();
    for (key, value) in &fields {
        let number = |range: &dyn Fn(f64) -> bool, expected: &str| {
            value
                .as_f64()
                .filter(|n| range(*n))
                .ok_or_else(|| unprocessable(key, expected, Some(value)))
        };
        match key.as_str() {
            "error_rate" => {
                faults.error_rate = number(&|n| (0.0..=1.0).contains(&n), "a number from 0 to 1")?;
            }
            "latency_rate" => {
                faults.latency_rate =
                    number(&|n| (0.0..=1.0).contains(&n), "a number from 0 to 1")?;
            }
            "latency_ms" => {
                let max = MAX_LATENCY.as_secs_f64() * 1000.0;
                let ms = number(
                    &|n| (0.0..=max).contains(&n),
                    "a number of milliseconds from 0 to 3600000",
                )?;
                faults.latency = Duration::from_secs_f64(ms / 1000.0);
            }
            "status" => {
                // A 1xx is not a final answer: a 101 would switch the
                // connection to a protocol that never comes.
                let expected = "an HTTP status code from 200 to 599";
                let code = value
                    .as_u64()
                    .filter(|c| (200..=599).contains(c))
                    .and_then(|c| StatusCode::from_u16(c as u16).ok())
                    .ok_or_else(|| unprocessable(key, expected, Some(value)))?;
                faults.status = Some(code);
            }
            "duration_seconds" => {
                // Above 0 once a `Duration` too (1e-10 is not a nanosecond).
                let secs = number(
                    &|n| {
                        n > 0.0
                            && n <= MAX_DURATION_SECONDS
                            && !Duration::from_secs_f64(n).is_zero()
                    },
                    "a number of seconds above 0, at most 604800 (a week)",
                )?;
                faults.duration = Some(Duration::from_secs_f64(secs));
            }
            _ => {
                return Err(unprocessable(
                    key,
                    &format!("one of {FIELDS} (unknown field)"),
                    None,
                ));
            }
        }
    }
    // What `Chaos::start` asserts is refused here, whatever slipped past
    // the checks above: outside input never panics.
    if let Some((field, expected)) = faults.invalid() {
        return Err(unprocessable(field, expected, fields.get(field)));
    }
    if !faults.injects_anything() {
        return Err(unprocessable(
            "error_rate",
            "error_rate above 0, or latency_ms above 0 (with latency_rate above 0): \
             these settings inject nothing",
            fields.get("error_rate"),
        ));
    }
    Ok(faults)
}
