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
//! | `GET /readyz` | 200 once startup passed (and, in a fleet, its standing states were applied here) and until draining begins, else 503 |
//! | `GET /reliability` | breakers (keyed registries summed up), recoveries, monitor, drain and chaos rehearsals, as JSON |
//! | `POST /reliability/auto-recovery/{name}/trigger` | 202 with the trigger outcome |
//! | `POST /reliability/circuit-breaker/{name}/reset` | 200; resets the breaker and its recovery |
//! | `GET /reliability/circuit-breaker/{name}` | the breaker's state, effective configuration and recent events |
//! | `POST /reliability/circuit-breaker/{name}/force-open` | 200; rejects every call until reset |
//! | `POST /reliability/circuit-breaker/{name}/disable` | 200; admits every call and records nothing until reset |
//! | `POST /reliability/circuit-breaker/{name}/config` | 200 with the changes; a JSON object of settings to change (below) |
//!
//! # A fleet of replicas (feature `fleet`)
//!
//! With [`Admin::fleet`], `/reliability` gains a `fleet` section (replicas
//! alive, who holds each recovery lease, how many replicas see each
//! dependency down, the fleet commands applied here), each recovery its
//! `fleet` part (the replica its cycle waits on), and `/health` a
//! `fleet.down_scope` saying, for each dependency down here, whether it is
//! down for the whole fleet (`fleet`), for several replicas
//! (`some_replicas`), only here (`this_replica`) or `unknown`. The trigger,
//! reset, force-open and disable POSTs take `?scope=fleet`: applied here,
//! then sent to every replica, which applies it at once and lists it in
//! its own `/reliability`; the answer says how many replicas were
//! subscribed to receive it, or 503 when it could be applied here only.
//! A fleet-scope force-open or disable *stands* until a fleet-scope reset:
//! replicas that join or return later are put in it (before `/readyz`
//! answers 200), `/reliability`'s `fleet.dependencies.{name}.standing`
//! shows it with the replicas that diverge from it (reset here alone
//! since: allowed, reported), and a local reset, force-open or disable of
//! a dependency with a standing state says so in its answer
//! (`fleet.standing`, `fleet.diverges`).
//!
//! # Changing a running breaker
//!
//! `POST /reliability/circuit-breaker/{name}/config` takes a JSON object
//! with any of `consecutive_failures`, `failure_rate`, `minimum_calls`,
//! `slow_call_rate`, `slow_call_threshold_seconds`,
//! `open_duration_seconds`, `open_multiplier`,
//! `max_open_duration_seconds`, `healthy_period_seconds`,
//! `half_open_permits` and `metrics_only` (see
//! [`Tuning`] for when each applies). The
//! change is checked whole: a body that is not a JSON object gets 400; an
//! unknown setting, a value of the wrong type or out of range gets 422
//! naming the setting, the value and what was expected, and nothing
//! changes. The answer lists the changes (`setting old -> new`) and the
//! configuration now in effect; each change is logged at `warn` and kept
//! among the breaker's recent events. Changes live in memory: a restart
//! goes back to the configuration the process was built with.
//!
//! With the `chaos` feature, `Admin::chaos_router` serves `GET /chaos` and
//! `GET`/`POST`/`DELETE /chaos/{name}` under the same rules (see
//! [`chaos`](crate::chaos)). The chaos handles added to the set
//! (`health::Builder::chaos`) are reported: `/reliability` gains a `chaos`
//! section (per handle: active or not, its faults, when it started, the
//! time left, the calls seen and the faults injected by kind), and
//! `/health` a `chaos_active` flag and a `chaos` map (name -> `active` or
//! `off`); while a rehearsal is active its `status` is `warn` at least,
//! never `fail` for it, so its code stays 200 unless something else fails.
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

use crate::circuit_breaker::{
    BreakerConfig, RecentEvent, RecentKind, Snapshot, TripPolicy, Tuning, WindowConfig,
};
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
    #[cfg(feature = "fleet")]
    fleet: Option<crate::fleet::Fleet>,
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
            #[cfg(feature = "fleet")]
            fleet: None,
        }
    }

    /// Reports this replica's fleet: a `fleet` section in `/reliability`
    /// (replicas alive, who holds each lease, how many replicas see each
    /// dependency down, the fleet-wide manual states that stand and the
    /// replicas that diverge from them) and, in `/health`, whether a
    /// dependency that is down is down for the whole fleet or only here.
    /// `/readyz` answers 503 until the fleet's standing states were
    /// applied here ([`Fleet::standing_applied`](crate::fleet::Fleet::standing_applied)).
    #[cfg(feature = "fleet")]
    #[cfg_attr(docsrs, doc(cfg(feature = "fleet")))]
    pub fn fleet(mut self, fleet: &crate::fleet::Fleet) -> Self {
        self.fleet = Some(fleet.clone());
        self
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
        #[cfg(feature = "fleet")]
        let fleet = self.fleet.clone();
        let state = Arc::new(self);
        let router = Router::new()
            .route("/health", get(health))
            .route("/livez", get(livez))
            .route("/readyz", get(readyz))
            .route("/reliability", get(reliability))
            .route("/reliability/auto-recovery/{name}/trigger", post(trigger))
            .route("/reliability/circuit-breaker/{name}/reset", post(reset))
            .route("/reliability/circuit-breaker/{name}", get(breaker_detail))
            .route(
                "/reliability/circuit-breaker/{name}/force-open",
                post(force_open),
            )
            .route("/reliability/circuit-breaker/{name}/disable", post(disable))
            .route(
                "/reliability/circuit-breaker/{name}/config",
                post(configure),
            );
        // `?scope=fleet`: applied here, then sent to every replica.
        #[cfg(feature = "fleet")]
        let router = router.route_layer(axum::middleware::from_fn_with_state(
            fleet,
            crate::fleet::fleet_scope,
        ));
        router.with_state(state)
    }

    /// The breaker of the dependency `name`, if both exist.
    fn breaker_of(&self, name: &str) -> Option<&crate::circuit_breaker::Breaker> {
        self.reliability.get(name)?.breaker_handle()
    }

    /// The breaker a POST names, once the request is allowed to change it;
    /// else the refusal (401, 403 or 404).
    fn authorized_breaker(
        &self,
        headers: &HeaderMap,
        name: &str,
    ) -> Result<&crate::circuit_breaker::Breaker, Box<Response>> {
        let dep = self.authorized_dependency(headers, name)?;
        dep.breaker_handle().ok_or_else(|| {
            Box::new(error(
                StatusCode::NOT_FOUND,
                &format!("dependency {name:?} has no circuit breaker"),
            ))
        })
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
    #[allow(unused_mut)]
    let mut body = json!({
        "status": status.as_str(),
        "checks": checks,
        "circuit_breakers": breakers,
        "recovery": recoveries,
        "root_causes": root_causes,
        "draining": draining,
    });
    #[cfg(feature = "chaos")]
    {
        // A rehearsal active: the failures seen may be injected (the
        // status is `warn` at least, never `fail` for it; the code stays).
        let chaos: Map<String, Value> = report
            .chaos
            .iter()
            .map(|c| {
                let state = if c.active { "active" } else { "off" };
                (c.name.to_string(), json!(state))
            })
            .collect();
        body["chaos_active"] = json!(report.chaos.iter().any(|c| c.active));
        body["chaos"] = Value::Object(chaos);
    }
    #[cfg(feature = "fleet")]
    if let Some(fleet) = &admin.fleet {
        // Each dependency seen down here: down for the fleet, or only here.
        let fleet = fleet.status();
        let scopes: Map<String, Value> = report
            .dependencies
            .iter()
            .filter(|d| {
                d.breaker.as_ref().is_some_and(|b| !b.state.is_closed())
                    || d.last
                        .as_ref()
                        .is_some_and(|l| l.status == HealthStatus::Fail)
            })
            .map(|d| {
                (
                    d.name.to_string(),
                    json!(crate::fleet::report::scope(&fleet, &d.name)),
                )
            })
            .collect();
        body["fleet"] = json!({ "connected": fleet.connected, "down_scope": scopes });
    }
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

/// Whether this replica's fleet, if any, has applied its standing states
/// (a replica that joins takes no traffic for a dependency the fleet cut
/// off).
fn fleet_standing_applied(_admin: &Admin) -> bool {
    #[cfg(feature = "fleet")]
    if let Some(fleet) = &_admin.fleet {
        return fleet.standing_applied();
    }
    true
}

async fn readyz(State(admin): AdminState) -> Response {
    let (code, reason) = if admin.drain.is_draining() {
        (StatusCode::SERVICE_UNAVAILABLE, Some("draining"))
    } else if !admin.reliability.is_started() {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Some("waiting for required dependencies"),
        )
    } else if !fleet_standing_applied(&admin) {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Some("applying the fleet's standing states"),
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

fn breaker_json(b: &Snapshot, config: &BreakerConfig) -> Value {
    json!({
        "state": b.state.as_str(),
        "failure_count": b.failures,
        "consecutive_failures": b.counts.consecutive_failures,
        "failure_rate": b.counts.failure_rate(),
        "rejected": b.rejected,
        "transitions": b.transitions,
        "next_probe_in_seconds": b.next_probe_in.map(secs),
        "metrics_only": config.metrics_only,
        "would_have_rejected": b.shadow_rejected,
        "traffic_share": b.traffic_share,
        "config": config_json(config),
    })
}

/// A breaker's effective configuration, in the names `config` accepts.
fn config_json(c: &BreakerConfig) -> Value {
    let mut out = Map::new();
    match &c.trip {
        TripPolicy::ConsecutiveFailures(n) => {
            out.insert("trip".into(), json!("consecutive_failures"));
            out.insert("consecutive_failures".into(), json!(n));
        }
        TripPolicy::FailureRate {
            window,
            failure_rate,
            minimum_calls,
            slow_calls,
        } => {
            out.insert("trip".into(), json!("failure_rate"));
            let window = match window {
                WindowConfig::Count(n) => json!({ "calls": n }),
                WindowConfig::Time { length, buckets } => {
                    json!({ "seconds": secs(*length), "buckets": buckets })
                }
            };
            out.insert("window".into(), window);
            out.insert("failure_rate".into(), json!(failure_rate));
            out.insert("minimum_calls".into(), json!(minimum_calls));
            if let Some((threshold, rate)) = slow_calls {
                out.insert(
                    "slow_call_threshold_seconds".into(),
                    json!(secs(*threshold)),
                );
                out.insert("slow_call_rate".into(), json!(rate));
            }
        }
    }
    out.insert("open_duration_seconds".into(), json!(secs(c.open_duration)));
    out.insert("open_multiplier".into(), json!(c.open_multiplier));
    out.insert(
        "max_open_duration_seconds".into(),
        json!(secs(c.max_open_duration)),
    );
    out.insert(
        "healthy_period_seconds".into(),
        json!(secs(c.healthy_period)),
    );
    out.insert("half_open_permits".into(), json!(c.half_open_permits));
    out.insert(
        "half_open_max_wait_seconds".into(),
        json!(c.half_open_max_wait.map(secs)),
    );
    out.insert(
        "half_open_ramp".into(),
        match c.half_open_ramp {
            Some((share, over)) => json!({ "initial_share": share, "seconds": secs(over) }),
            None => Value::Null,
        },
    );
    out.insert(
        "retry_after_cap_seconds".into(),
        json!(c.retry_after_cap.map(secs)),
    );
    out.insert("metrics_only".into(), json!(c.metrics_only));
    Value::Object(out)
}

fn events_json(events: &[RecentEvent]) -> Value {
    let now = std::time::SystemTime::now();
    Value::Array(
        events
            .iter()
            .rev()
            .map(|e| {
                let mut entry = match &e.kind {
                    RecentKind::Transition(t) => json!({
                        "type": "transition",
                        "from": t.from.as_str(),
                        "to": t.to.as_str(),
                        "cause": t.cause.to_string(),
                        "generation": t.generation,
                        "open_for_seconds": t.open_for.map(secs),
                        "consecutive_failures": t.counts.consecutive_failures,
                        "window_calls": t.counts.window_calls,
                        "window_failures": t.counts.window_failures,
                    }),
                    RecentKind::Tuned(changes) => json!({
                        "type": "config_changed",
                        "changes": changes,
                    }),
                };
                if let Some(entry) = entry.as_object_mut() {
                    entry.insert("time".into(), json!(crate::util::rfc3339(e.at)));
                    entry.insert(
                        "seconds_ago".into(),
                        json!(now.duration_since(e.at).map_or(0.0, |d| d.as_secs_f64())),
                    );
                }
                entry
            })
            .collect(),
    )
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

/// Keys not closed listed per keyed registry in `/reliability`; the rest
/// are counted.
const KEYED_LISTED: usize = 20;

/// A keyed registry's breaker: its state and counts (their configuration
/// is the registry's template).
fn keyed_breaker_json(b: &Snapshot) -> Value {
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

/// A keyed registry's recovery (of a key or of its overflow breaker): its
/// state and counts (its configuration is the registry's factory's).
fn keyed_recovery_json(r: &Status, show: bool) -> Value {
    json!({
        "state": r.state.as_str(),
        "attempts": r.attempt,
        "max_attempts": r.max_attempts,
        "last_error": if show { r.last_error.clone() } else { None },
        "successes": r.recoveries,
        "failures": r.failed_attempts,
        "exhaustions": r.exhausted_cycles,
        "mttr_seconds": r.mttr.map(secs),
        "cooldown_remaining_seconds": r.cooldown_remaining.map(secs),
        "next_retry_in_seconds": r.next_retry_in.map(secs),
    })
}

/// The keyed registries: totals by state and the keys not closed (bounded),
/// each with its recovery.
fn keyed_json(reliability: &Reliability, show: bool) -> Value {
    let mut keyed = Map::new();
    for s in reliability.keyed(KEYED_LISTED) {
        let listed: Map<String, Value> = s
            .not_closed
            .iter()
            .zip(&s.not_closed_recovery)
            .map(|(b, r)| {
                let mut breaker = keyed_breaker_json(b);
                breaker["recovery"] = r
                    .as_ref()
                    .map_or(Value::Null, |r| keyed_recovery_json(r, show));
                (b.name.to_string(), breaker)
            })
            .collect();
        let mut overflow = keyed_breaker_json(&s.overflow);
        overflow["recovery"] = s
            .overflow_recovery
            .as_ref()
            .map_or(Value::Null, |r| keyed_recovery_json(r, show));
        keyed.insert(
            s.name.to_string(),
            json!({
                "keys": s.keys,
                "max_keys": s.max_keys,
                "states": {
                    "closed": s.closed,
                    "open": s.open,
                    "half_open": s.half_open,
                    "forced_open": s.forced_open,
                    "disabled": s.disabled,
                },
                "recoveries": {
                    "recovering": s.recovering,
                    "exhausted": s.exhausted,
                    "without_recovery": s.without_recovery,
                },
                "not_closed": listed,
                "not_closed_unlisted": s.not_closed_unlisted,
                "overflow": overflow,
                "overflowed_calls": s.overflowed,
                "evicted": s.evicted,
            }),
        );
    }
    Value::Object(keyed)
}

async fn reliability(State(admin): AdminState, headers: HeaderMap) -> Response {
    let report = admin.reliability.report();
    let show = admin.may_see_errors(&headers);
    let mut breakers = Map::new();
    let mut recoveries = Map::new();
    let mut monitored = Map::new();
    for dep in &report.dependencies {
        if let (Some(b), Some(handle)) = (&dep.breaker, admin.breaker_of(&dep.name)) {
            breakers.insert(dep.name.to_string(), breaker_json(b, &handle.config()));
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
        "keyed_breakers": keyed_json(&admin.reliability, show),
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
    #[cfg(feature = "chaos")]
    let body = {
        let mut body = body;
        // The handles added with `health::Builder::chaos`, as `GET /chaos`
        // shows them.
        let chaos: Map<String, Value> = report
            .chaos
            .iter()
            .map(|c| (c.name.to_string(), crate::chaos::admin::state_json(c)))
            .collect();
        body["chaos"] = Value::Object(chaos);
        body
    };
    #[cfg(feature = "fleet")]
    let body = {
        let mut body = body;
        if let Some(fleet) = &admin.fleet {
            body["fleet"] = crate::fleet::report::fleet_json(&fleet.status(), show);
        }
        for dep in &report.dependencies {
            let member = admin
                .reliability
                .get(&dep.name)
                .and_then(|d| d.recovery_handle())
                .and_then(|r| r.fleet_status());
            if let (Some(m), Some(entry)) = (member, body["recovery"].get_mut(&*dep.name)) {
                entry["fleet"] = crate::fleet::report::member_json(&m, show);
            }
        }
        body
    };
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
    #[allow(unused_mut)]
    let mut body = json!({ "name": name, "outcome": outcome.as_str(), "state": recovery.status().state.as_str() });
    #[cfg(feature = "fleet")]
    if let Some(m) = recovery.fleet_status() {
        // Running elsewhere: which replica runs it.
        let holder = m.running_elsewhere.map(|f| f.holder).or(m.holder);
        body["holder"] = json!(holder.map(|h| h.replica.to_string()));
    }
    json_response(StatusCode::ACCEPTED, "application/json", &body)
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

async fn breaker_detail(State(admin): AdminState, Path(name): Path<String>) -> Response {
    let Some(dep) = admin.reliability.get(&name) else {
        return error(
            StatusCode::NOT_FOUND,
            &format!("no dependency named {name:?}"),
        );
    };
    let Some(breaker) = dep.breaker_handle() else {
        return error(
            StatusCode::NOT_FOUND,
            &format!("dependency {name:?} has no circuit breaker"),
        );
    };
    let config = breaker.config();
    let mut body = breaker_json(&breaker.snapshot(), &config);
    if let Some(body) = body.as_object_mut() {
        body.insert("name".into(), json!(name));
        body.insert(
            "recent_events".into(),
            events_json(&breaker.recent_events()),
        );
    }
    json_response(StatusCode::OK, "application/json", &body)
}

/// A manual state set by an operator: forced open or disabled.
fn manual(
    admin: &Admin,
    name: &str,
    headers: &HeaderMap,
    apply: fn(&crate::circuit_breaker::Breaker),
    what: &str,
) -> Response {
    let breaker = match admin.authorized_breaker(headers, name) {
        Ok(breaker) => breaker,
        Err(refusal) => return *refusal,
    };
    apply(breaker);
    tracing::warn!(dependency = %name, "Circuit breaker {what} by an operator");
    json_response(
        StatusCode::OK,
        "application/json",
        &json!({ "name": name, "circuit_breaker": breaker.state().as_str() }),
    )
}

async fn force_open(
    State(admin): AdminState,
    Path(name): Path<String>,
    headers: HeaderMap,
) -> Response {
    manual(
        &admin,
        &name,
        &headers,
        crate::circuit_breaker::Breaker::force_open,
        "forced open",
    )
}

async fn disable(
    State(admin): AdminState,
    Path(name): Path<String>,
    headers: HeaderMap,
) -> Response {
    manual(
        &admin,
        &name,
        &headers,
        crate::circuit_breaker::Breaker::disable,
        "disabled",
    )
}

/// A refused setting: 422 naming it, the value given and what was
/// expected.
fn unprocessable(setting: &str, value: &Value, expected: &str) -> Response {
    json_response(
        StatusCode::UNPROCESSABLE_ENTITY,
        "application/json",
        &json!({
            "error": format!("{setting} = {value}: expected {expected}"),
            "setting": setting,
            "value": value,
            "expected": expected,
        }),
    )
}

/// The settings of a `config` body, as a [`Tuning`]; else the 422.
fn tuning_of(body: &Map<String, Value>) -> Result<Tuning, Box<Response>> {
    let mut tuning = Tuning::new();
    for (key, value) in body {
        let bad = |expected: &str| Box::new(unprocessable(key, value, expected));
        let count = || value.as_u64().ok_or_else(|| bad("a whole number"));
        let number = || {
            value
                .as_f64()
                .filter(|n| n.is_finite())
                .ok_or_else(|| bad("a number"))
        };
        let seconds = || {
            value
                .as_f64()
                .and_then(|s| Duration::try_from_secs_f64(s).ok())
                .ok_or_else(|| bad("a number of seconds, 0 or more"))
        };
        tuning = match key.as_str() {
            "consecutive_failures" => tuning.consecutive_failures(
                u32::try_from(count()?).map_err(|_| bad("a whole number below 2^32"))?,
            ),
            "failure_rate" => tuning.failure_rate(number()?),
            "minimum_calls" => tuning.minimum_calls(count()?),
            "slow_call_rate" => tuning.slow_call_rate(number()?),
            "slow_call_threshold_seconds" => tuning.slow_call_threshold(seconds()?),
            "open_duration_seconds" => tuning.open_duration(seconds()?),
            "open_multiplier" => tuning.open_multiplier(number()?),
            "max_open_duration_seconds" => tuning.max_open_duration(seconds()?),
            "healthy_period_seconds" => tuning.healthy_period(seconds()?),
            "half_open_permits" => tuning.half_open_permits(
                u16::try_from(count()?).map_err(|_| bad("a whole number below 65536"))?,
            ),
            "metrics_only" => {
                tuning.metrics_only(value.as_bool().ok_or_else(|| bad("true or false"))?)
            }
            _ => {
                return Err(bad(
                    "one of consecutive_failures, failure_rate, minimum_calls, slow_call_rate, \
                     slow_call_threshold_seconds, open_duration_seconds, open_multiplier, \
                     max_open_duration_seconds, healthy_period_seconds, half_open_permits, \
                     metrics_only (an unknown setting)",
                ));
            }
        };
    }
    Ok(tuning)
}

/// A tuning field's name in the `config` body.
fn body_name(setting: &str) -> String {
    match setting {
        "slow_call_threshold" | "open_duration" | "max_open_duration" | "healthy_period" => {
            format!("{setting}_seconds")
        }
        other => other.to_string(),
    }
}

async fn configure(
    State(admin): AdminState,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let breaker = match admin.authorized_breaker(&headers, &name) {
        Ok(breaker) => breaker,
        Err(refusal) => return *refusal,
    };
    let settings = match serde_json::from_slice::<Value>(&body) {
        Ok(Value::Object(settings)) => settings,
        Ok(_) => {
            return error(
                StatusCode::BAD_REQUEST,
                "the body must be a JSON object of settings to change",
            );
        }
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                &format!("the body is not valid JSON: {e}"),
            );
        }
    };
    let tuning = match tuning_of(&settings) {
        Ok(tuning) => tuning,
        Err(refusal) => return *refusal,
    };
    match breaker.tune(tuning) {
        Ok(changes) => {
            tracing::warn!(
                dependency = %name,
                changes = changes.len(),
                "Circuit breaker configuration changed by an operator"
            );
            json_response(
                StatusCode::OK,
                "application/json",
                &json!({
                    "name": name,
                    "changes": changes,
                    "config": config_json(&breaker.config()),
                }),
            )
        }
        Err(e) => {
            let setting = body_name(e.setting());
            let value = settings.get(&setting).cloned().unwrap_or(Value::Null);
            unprocessable(&setting, &value, e.expected())
        }
    }
}
