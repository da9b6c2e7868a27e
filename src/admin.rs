//! The admin HTTP surface: what operators and orchestrators read and do.
//!
//! [`Admin::router`] gives an axum [`Router<S>`] over the dependency set and
//! the drain, generic over the application's state and with no fallback of
//! its own, to `merge` or `nest`:
//!
//! | route | answer |
//! |---|---|
//! | `GET /health` | `application/health+json` (IETF draft-inadarei-api-health-check); 200 for pass and warn, 503 for fail and while draining |
//! | `GET /livez` | 200 while the process runs, draining or not |
//! | `GET /readyz` | 200 once startup passed and until draining begins, else 503 |
//! | `GET /reliability` | breakers, recoveries, monitor and drain, as JSON |
//! | `POST /reliability/auto-recovery/{name}/trigger` | 202 with the trigger outcome |
//! | `POST /reliability/circuit-breaker/{name}/reset` | 200; resets the breaker and its recovery |
//!
//! With the `chaos` feature, `Admin::chaos_router` serves `GET /chaos` and
//! `GET`/`POST`/`DELETE /chaos/{name}` under the same rules (see
//! [`chaos`](crate::chaos)).
//!
//! # Security
//!
//! The POST routes change production behaviour. With a token configured
//! ([`Admin::token`], `ADMIN_TOKEN`) they need `Authorization: Bearer
//! <token>` (compared in constant time; 401 otherwise). With none they are
//! refused with 403 and a message saying how to enable them, unless the
//! application opts into open admin routes ([`Admin::open`]). With a token
//! configured, error texts (`last_error`, check `output`) are shown only to
//! requests carrying it. Unknown names get 404 with a JSON error, wrong
//! methods 405.
//!
//! Keep these routes outside the drain layer, and their listener open until
//! the drain completes (see [`drain`](crate::drain#which-listener-closes-when)),
//! so `/livez` answers during a drain:
//!
//! ```
//! use axum::{Router, routing::get};
//! use tower_recovery::admin::Admin;
//! use tower_recovery::drain::Drain;
//! use tower_recovery::health::Reliability;
//!
//! let reliability = Reliability::builder().build().unwrap();
//! let drain = Drain::default();
//! let app: Router = Router::new()
//!     .route("/fir", get(|| async { "draft" }))
//!     .layer(drain.layer())
//!     .merge(Admin::new(&reliability, &drain).token("s3cret").router());
//! ```

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use http::{HeaderMap, HeaderValue, StatusCode, header};
use serde_json::{Map, Value, json};

use crate::circuit_breaker::Snapshot;
use crate::config::Settings;
use crate::drain::Drain;
use crate::health::{DependencyReport, HealthStatus, Reliability};
use crate::recovery::Status;

/// Builds the admin router.
#[derive(Clone, Debug)]
pub struct Admin {
    reliability: Reliability,
    drain: Drain,
    token: Option<Arc<str>>,
    open: bool,
    uptime_target: f64,
    cache_max_age: Duration,
}

impl Admin {
    /// Admin routes over `reliability` and `drain`; POST routes refused until
    /// a token is set or [`open`](Self::open) is called.
    pub fn new(reliability: &Reliability, drain: &Drain) -> Self {
        Self {
            reliability: reliability.clone(),
            drain: drain.clone(),
            token: None,
            open: false,
            uptime_target: 99.9,
            cache_max_age: Duration::from_secs(2),
        }
    }

    /// Requires `Authorization: Bearer <token>` on POST routes (and to see
    /// error texts). An empty token is ignored (see `config` for the error).
    pub fn token(mut self, token: impl AsRef<str>) -> Self {
        let token = token.as_ref();
        self.token = (!token.is_empty()).then(|| Arc::from(token));
        self
    }

    /// Admin routes configured from [`Settings`]: the token is
    /// `ADMIN_TOKEN` when it is set (POST routes refused otherwise).
    pub fn from_settings(reliability: &Reliability, drain: &Drain, settings: &Settings) -> Self {
        let admin = Self::new(reliability, drain);
        match &settings.admin_token {
            Some(token) => admin.token(token),
            None => admin,
        }
    }

    /// Serves the POST routes without a token. Only for networks where every
    /// caller is trusted.
    pub fn open(mut self) -> Self {
        self.open = true;
        self
    }

    /// `uptime_target` in `/reliability` (default 99.9).
    pub fn uptime_target(mut self, percent: f64) -> Self {
        self.uptime_target = percent;
        self
    }

    /// `Cache-Control: max-age` of `/health` (default 2 s).
    pub fn cache_max_age(mut self, age: Duration) -> Self {
        self.cache_max_age = age;
        self
    }

    /// The router, for any application state; it has no fallback.
    pub fn router<S: Clone + Send + Sync + 'static>(self) -> Router<S> {
        let state = Arc::new(self);
        Router::new()
            .route("/health", get(health))
            .route("/livez", get(livez))
            .route("/readyz", get(readyz))
            .route("/reliability", get(reliability))
            .route("/reliability/auto-recovery/{name}/trigger", post(trigger))
            .route("/reliability/circuit-breaker/{name}/reset", post(reset))
            .with_state(state)
    }

    /// Whether the request carries the configured token.
    fn authorized(&self, headers: &HeaderMap) -> bool {
        let Some(token) = &self.token else {
            return false;
        };
        // `<scheme> <token>`, the scheme case-insensitive (RFC 7235).
        let Some(given) = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim_start().split_once(' '))
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
            .map(|(_, token)| token)
        else {
            return false;
        };
        use subtle::ConstantTimeEq;
        bool::from(given.trim().as_bytes().ct_eq(token.as_bytes()))
    }

    /// Whether error texts may be shown to this request.
    fn may_see_errors(&self, headers: &HeaderMap) -> bool {
        self.token.is_none() || self.authorized(headers)
    }

    /// The dependency a POST names, once the request is allowed to change
    /// it; else the refusal (401, 403 or 404).
    fn authorized_dependency(
        &self,
        headers: &HeaderMap,
        name: &str,
    ) -> Result<&crate::health::Dependency, Box<Response>> {
        if let Some(refusal) = self.guard_post(headers) {
            return Err(Box::new(refusal));
        }
        let missing = || {
            Box::new(error(
                StatusCode::NOT_FOUND,
                &format!("no dependency named {name:?}"),
            ))
        };
        self.reliability.get(name).ok_or_else(missing)
    }

    /// `None` when a POST may proceed, else the refusal.
    pub(crate) fn guard_post(&self, headers: &HeaderMap) -> Option<Response> {
        if self.token.is_some() {
            if self.authorized(headers) {
                return None;
            }
            // Never the token given: only that one was refused.
            tracing::warn!(
                given = headers.contains_key(header::AUTHORIZATION),
                "admin request refused: missing or invalid bearer token"
            );
            let mut response = error(StatusCode::UNAUTHORIZED, "missing or invalid bearer token");
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            return Some(response);
        }
        if self.open {
            return None;
        }
        Some(error(
            StatusCode::FORBIDDEN,
            "admin POST routes are disabled: set ADMIN_TOKEN (Admin::token) to require a bearer token, \
             or opt into open admin routes (Admin::open)",
        ))
    }
}

type AdminState = State<Arc<Admin>>;

fn json_response(status: StatusCode, content_type: &'static str, body: &Value) -> Response {
    let mut response = (status, body.to_string()).into_response();
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

fn error(status: StatusCode, message: &str) -> Response {
    json_response(status, "application/json", &json!({ "error": message }))
}

fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}

async fn health(State(admin): AdminState, headers: HeaderMap) -> Response {
    let report = admin.reliability.report();
    let show = admin.may_see_errors(&headers);
    let draining = admin.drain.is_draining();
    let mut checks = Map::new();
    let mut breakers = Map::new();
    let mut recoveries = Map::new();
    let mut root_causes = Map::new();
    for dep in &report.dependencies {
        if let Some(root) = &dep.root_cause {
            root_causes.insert(dep.name.to_string(), json!(root.as_ref()));
        }
        let mut entry = match &dep.last {
            Some(last) => json!({
                "status": last.status.as_str(),
                "componentType": "component",
                "observedValue": last.observed_value,
                "observedUnit": last.observed_unit,
                "time": crate::util::rfc3339(last.time),
                "output": if show { last.output.clone() } else { None },
                "required": dep.required,
            }),
            None => json!({
                "status": "warn",
                "componentType": "component",
                "output": "not checked yet",
                "required": dep.required,
            }),
        };
        if let (Some(d), Some(entry)) = (&dep.degradation, entry.as_object_mut()) {
            if d.degraded {
                // Degraded: the check may pass, the calls are getting worse.
                if entry.get("status") == Some(&json!("pass")) {
                    entry.insert("status".into(), json!("warn"));
                }
                entry.insert("degraded".into(), json!(d.reason));
            }
        }
        if let (Some(root), Some(entry)) = (&dep.root_cause, entry.as_object_mut()) {
            // The dependency it needs that is down: why this one is.
            entry.insert("rootCause".into(), json!(root.as_ref()));
        }
        checks.insert(
            format!("{}:connectivity", dep.name),
            Value::Array(vec![entry]),
        );
        if let Some(b) = &dep.breaker {
            breakers.insert(dep.name.to_string(), json!(b.state.as_str()));
        }
        if let Some(r) = &dep.recovery {
            recoveries.insert(dep.name.to_string(), json!(r.state.as_str()));
        }
    }
    let status = report.status;
    let body = json!({
        "status": status.as_str(),
        "checks": checks,
        "circuit_breakers": breakers,
        "recovery": recoveries,
        "root_causes": root_causes,
        "draining": draining,
    });
    let code = if status == HealthStatus::Fail || draining {
        StatusCode::SERVICE_UNAVAILABLE
    } else {
        StatusCode::OK
    };
    let mut response = json_response(code, "application/health+json", &body);
    if let Ok(value) = HeaderValue::from_str(&format!("max-age={}", admin.cache_max_age.as_secs()))
    {
        response.headers_mut().insert(header::CACHE_CONTROL, value);
    }
    response
}

async fn livez() -> Response {
    json_response(
        StatusCode::OK,
        "application/json",
        &json!({ "status": "pass" }),
    )
}

async fn readyz(State(admin): AdminState) -> Response {
    let (code, reason) = if admin.drain.is_draining() {
        (StatusCode::SERVICE_UNAVAILABLE, Some("draining"))
    } else if !admin.reliability.is_started() {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Some("waiting for required dependencies"),
        )
    } else {
        (StatusCode::OK, None)
    };
    let status = if code == StatusCode::OK {
        "pass"
    } else {
        "fail"
    };
    json_response(
        code,
        "application/json",
        &json!({ "status": status, "reason": reason }),
    )
}

fn breaker_json(b: &Snapshot) -> Value {
    json!({
        "state": b.state.as_str(),
        "failure_count": b.failures,
        "consecutive_failures": b.counts.consecutive_failures,
        "failure_rate": b.counts.failure_rate(),
        "rejected": b.rejected,
        "transitions": b.transitions,
        "next_probe_in_seconds": b.next_probe_in.map(secs),
    })
}

fn period_json(p: &crate::recovery::Period) -> Value {
    json!({
        "outages": p.outages,
        "downtime_seconds": secs(p.downtime),
        "mttr_seconds": p.mttr.map(secs),
        "cycles_succeeded": p.cycles_succeeded,
        "cycles_exhausted": p.cycles_exhausted,
        "success_rate": p.success_rate,
        "attempts_per_recovery": p.attempts_per_recovery,
    })
}

/// The track record, and the error budget against `target` (percent):
/// the downtime the target allows over the time observed, less the
/// downtime since start.
fn track_record_json(r: &crate::recovery::TrackRecord, target: f64) -> Value {
    let observed = secs(r.observed);
    let allowed = (1.0 - target / 100.0).max(0.0) * observed;
    let used = secs(r.since_start.downtime);
    let availability = (observed > 0.0).then(|| (1.0 - used / observed) * 100.0);
    json!({
        "since_start": period_json(&r.since_start),
        "last_hour": period_json(&r.last_hour),
        "observed_seconds": observed,
        "open_outage_seconds": r.open_outage.map(secs),
        "time_in_state_seconds": {
            "idle": secs(r.time_idle),
            "recovering": secs(r.time_recovering),
            "cooling_down": secs(r.time_cooling_down),
            "exhausted": secs(r.time_exhausted),
        },
        "last_hour_time_in_state_seconds": {
            "idle": secs(r.last_hour_in_state[0]),
            "recovering": secs(r.last_hour_in_state[1]),
            "cooling_down": secs(r.last_hour_in_state[2]),
            "exhausted": secs(r.last_hour_in_state[3]),
        },
        "availability_percent": availability,
        "error_budget": {
            "target_percent": target,
            "allowed_seconds": allowed,
            "used_seconds": used,
            "left_seconds": allowed - used,
            "left_percent": (allowed > 0.0).then(|| (allowed - used) / allowed * 100.0),
        },
    })
}

fn recovery_json(r: &Status, show: bool, target: f64) -> Value {
    json!({
        "state": r.state.as_str(),
        "attempts": r.attempt,
        "max_attempts": r.max_attempts,
        "last_error": if show { r.last_error.clone() } else { None },
        "successes": r.recoveries,
        "failures": r.failed_attempts,
        "exhaustions": r.exhausted_cycles,
        "mttr_seconds": r.mttr.map(secs),
        "mode": match r.mode {
            crate::recovery::Mode::Strict => "strict",
            crate::recovery::Mode::Adaptive(_) => "adaptive",
        },
        "cooldown_remaining_seconds": r.cooldown_remaining.map(secs),
        "next_retry_in_seconds": r.next_retry_in.map(secs),
        "recent_recoveries": r.recent_recoveries,
        "waiting_for": r.waiting_for.as_deref(),
        "track_record": track_record_json(&r.record, target),
    })
}

fn monitor_json(dep: &DependencyReport) -> Value {
    json!({
        "uptime_percent": dep.uptime_percent,
        "availability_percent": dep.availability_percent,
        "checks": dep.checks,
        "consecutive_failures": dep.consecutive_failures,
        "last_status": dep.last.as_ref().map(|l| l.status.as_str()),
        "needs": dep.needs.iter().map(|n| n.as_ref()).collect::<Vec<_>>(),
        "root_cause": dep.root_cause.as_deref(),
        "degraded": dep.degradation.as_ref().is_some_and(|d| d.degraded),
        "degraded_reason": dep.degradation.as_ref().and_then(|d| d.reason.clone()),
    })
}

async fn reliability(State(admin): AdminState, headers: HeaderMap) -> Response {
    let report = admin.reliability.report();
    let show = admin.may_see_errors(&headers);
    let mut breakers = Map::new();
    let mut recoveries = Map::new();
    let mut monitored = Map::new();
    for dep in &report.dependencies {
        if let Some(b) = &dep.breaker {
            breakers.insert(dep.name.to_string(), breaker_json(b));
        }
        if let Some(r) = &dep.recovery {
            recoveries.insert(
                dep.name.to_string(),
                recovery_json(r, show, admin.uptime_target),
            );
        }
        monitored.insert(dep.name.to_string(), monitor_json(dep));
    }
    let body = json!({
        "uptime_target": admin.uptime_target,
        "status": report.status.as_str(),
        "started": report.started,
        "circuit_breakers": breakers,
        "recovery": recoveries,
        "health_monitor": {
            "running": report.monitor_running,
            "interval_seconds": report.monitor_interval.map(secs),
            "dependencies": monitored,
        },
        "graceful_shutdown": {
            "draining": admin.drain.is_draining(),
            "in_flight": admin.drain.in_flight(),
            "grace_period_seconds": secs(admin.drain.grace_period()),
        },
    });
    json_response(StatusCode::OK, "application/json", &body)
}

async fn trigger(
    State(admin): AdminState,
    Path(name): Path<String>,
    headers: HeaderMap,
) -> Response {
    let dep = match admin.authorized_dependency(&headers, &name) {
        Ok(dep) => dep,
        Err(refusal) => return *refusal,
    };
    let Some(recovery) = dep.recovery_handle() else {
        return error(
            StatusCode::NOT_FOUND,
            &format!("dependency {name:?} has no auto-recovery"),
        );
    };
    let outcome = recovery.trigger_manual();
    tracing::info!(dependency = %name, %outcome, "Manual recovery trigger");
    json_response(
        StatusCode::ACCEPTED,
        "application/json",
        &json!({ "name": name, "outcome": outcome.as_str(), "state": recovery.status().state.as_str() }),
    )
}

async fn reset(State(admin): AdminState, Path(name): Path<String>, headers: HeaderMap) -> Response {
    let dep = match admin.authorized_dependency(&headers, &name) {
        Ok(dep) => dep,
        Err(refusal) => return *refusal,
    };
    let Some(breaker) = dep.breaker_handle() else {
        return error(
            StatusCode::NOT_FOUND,
            &format!("dependency {name:?} has no circuit breaker"),
        );
    };
    breaker.reset();
    if let Some(recovery) = dep.recovery_handle() {
        recovery.reset();
    }
    tracing::info!(dependency = %name, "Circuit breaker and recovery reset by an operator");
    json_response(
        StatusCode::OK,
        "application/json",
        &json!({ "name": name, "circuit_breaker": breaker.state().as_str(), "reset": true }),
    )
}
