use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use axum::body::Body;
use http::{Request, Response};
use http_body_util::BodyExt;
use serde::Deserialize;
use tower::ServiceExt;
use tower_recovery::admin::Admin;
use tower_recovery::circuit_breaker::Breaker;
use tower_recovery::drain::Drain;
use tower_recovery::health::{Dependency, HealthCheck, Reliability};
use tower_recovery::recovery::Recovery;

pub(crate) struct Fixture {
    pub(crate) breaker: Breaker,
    pub(crate) recovery: Recovery,
    pub(crate) db_recovery: Recovery,
    pub(crate) reliability: Reliability,
    pub(crate) drain: Drain,
    pub(crate) model_up: Arc<AtomicBool>,
    pub(crate) db_up: Arc<AtomicBool>,
    pub(crate) cache_up: Arc<AtomicBool>,
}

fn switch(flag: &Arc<AtomicBool>, what: &'static str) -> HealthCheck {
    let flag = flag.clone();
    HealthCheck::new(move || {
        let up = flag.load(Ordering::SeqCst);
        async move {
            if up {
                Ok(())
            } else {
                Err(format!("{what}: connection refused (secret-host:5432)"))
            }
        }
    })
}

impl Fixture {
    pub(crate) fn new() -> Self {
        let breaker = Breaker::builder("model_server")
            .consecutive_failures(1)
            .build();
        let model_up = Arc::new(AtomicBool::new(true));
        let db_up = Arc::new(AtomicBool::new(true));
        let cache_up = Arc::new(AtomicBool::new(true));
        let up = model_up.clone();
        let recovery = Recovery::builder("model_server", move || {
            let up = up.load(Ordering::SeqCst);
            async move {
                if up {
                    Ok(())
                } else {
                    Err("model server refused (secret-host:8001)")
                }
            }
        })
        .watch(&breaker)
        .spawn();
        let db_recovery = Recovery::builder("database", || async { Ok::<_, String>(()) }).spawn();
        let reliability = Reliability::builder()
            .dependency(
                Dependency::new("model_server", switch(&model_up, "model"))
                    .breaker(&breaker)
                    .recovery(&recovery),
            )
            .dependency(
                Dependency::new("database", switch(&db_up, "database")).recovery(&db_recovery),
            )
            .dependency(Dependency::new("cache", switch(&cache_up, "cache")).optional())
            .build()
            .unwrap();
        Self {
            breaker,
            recovery,
            db_recovery,
            reliability,
            drain: Drain::default(),
            model_up,
            db_up,
            cache_up,
        }
    }

    pub(crate) fn admin(&self) -> Admin {
        Admin::new(&self.reliability, &self.drain)
    }
}

pub(crate) async fn call(
    router: &Router,
    method: &str,
    uri: &str,
    token: Option<&str>,
) -> (Response<()>, String) {
    let mut request = Request::builder().method(method).uri(uri);
    if let Some(token) = token {
        request = request.header("authorization", format!("Bearer {token}"));
    }
    let response = router
        .clone()
        .oneshot(request.body(Body::empty()).unwrap())
        .await
        .unwrap();
    let (parts, body) = response.into_parts();
    let bytes = body.collect().await.unwrap().to_bytes();
    (
        Response::from_parts(parts, ()),
        String::from_utf8(bytes.to_vec()).unwrap(),
    )
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
pub(crate) struct CheckDoc {
    pub(crate) status: String,
    #[serde(rename = "componentType")]
    pub(crate) component_type: String,
    #[serde(rename = "observedValue")]
    pub(crate) observed_value: Option<f64>,
    #[serde(rename = "observedUnit")]
    pub(crate) observed_unit: Option<String>,
    pub(crate) time: Option<String>,
    pub(crate) output: Option<String>,
    pub(crate) required: bool,
    #[serde(rename = "rootCause")]
    pub(crate) root_cause: Option<String>,
    pub(crate) degraded: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct HealthDoc {
    pub(crate) status: String,
    pub(crate) checks: HashMap<String, Vec<CheckDoc>>,
    pub(crate) circuit_breakers: HashMap<String, String>,
    pub(crate) recovery: HashMap<String, String>,
    pub(crate) root_causes: HashMap<String, String>,
    pub(crate) draining: bool,
    /// No chaos handle is added to the set here (`tests/chaos.rs` adds
    /// some): `false` and empty.
    pub(crate) chaos_active: bool,
    pub(crate) chaos: HashMap<String, String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct BreakerDoc {
    pub(crate) state: String,
    pub(crate) failure_count: u64,
    pub(crate) consecutive_failures: u32,
    pub(crate) failure_rate: Option<f64>,
    pub(crate) rejected: u64,
    pub(crate) transitions: u64,
    pub(crate) next_probe_in_seconds: Option<f64>,
    pub(crate) metrics_only: bool,
    pub(crate) would_have_rejected: u64,
    pub(crate) traffic_share: Option<f64>,
    pub(crate) config: BreakerConfigDoc,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
pub(crate) struct BreakerConfigDoc {
    pub(crate) trip: String,
    pub(crate) consecutive_failures: Option<u32>,
    pub(crate) window: Option<serde_json::Value>,
    pub(crate) failure_rate: Option<f64>,
    pub(crate) minimum_calls: Option<u64>,
    pub(crate) slow_call_threshold_seconds: Option<f64>,
    pub(crate) slow_call_rate: Option<f64>,
    pub(crate) open_duration_seconds: f64,
    pub(crate) open_multiplier: f64,
    pub(crate) max_open_duration_seconds: f64,
    pub(crate) healthy_period_seconds: f64,
    pub(crate) half_open_permits: u16,
    pub(crate) half_open_max_wait_seconds: Option<f64>,
    pub(crate) half_open_ramp: Option<serde_json::Value>,
    pub(crate) retry_after_cap_seconds: Option<f64>,
    pub(crate) metrics_only: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RecoveryDoc {
    pub(crate) state: String,
    pub(crate) attempts: u32,
    pub(crate) max_attempts: u32,
    pub(crate) last_error: Option<String>,
    pub(crate) successes: u64,
    pub(crate) failures: u64,
    pub(crate) exhaustions: u64,
    pub(crate) mttr_seconds: Option<f64>,
    pub(crate) mode: String,
    pub(crate) cooldown_remaining_seconds: Option<f64>,
    pub(crate) next_retry_in_seconds: Option<f64>,
    pub(crate) recent_recoveries: u64,
    pub(crate) waiting_for: Option<String>,
    pub(crate) track_record: serde_json::Value,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct MonitoredDoc {
    pub(crate) uptime_percent: Option<f64>,
    pub(crate) availability_percent: Option<f64>,
    pub(crate) checks: u64,
    pub(crate) consecutive_failures: u32,
    pub(crate) last_status: Option<String>,
    pub(crate) needs: Vec<String>,
    pub(crate) root_cause: Option<String>,
    pub(crate) degraded: bool,
    pub(crate) degraded_reason: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct MonitorDoc {
    pub(crate) running: bool,
    pub(crate) interval_seconds: Option<f64>,
    pub(crate) dependencies: HashMap<String, MonitoredDoc>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ShutdownDoc {
    pub(crate) draining: bool,
    pub(crate) in_flight: usize,
    pub(crate) grace_period_seconds: f64,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ReliabilityDoc {
    pub(crate) uptime_target: f64,
    pub(crate) status: String,
    pub(crate) started: bool,
    pub(crate) circuit_breakers: HashMap<String, BreakerDoc>,
    pub(crate) keyed_breakers: HashMap<String, KeyedDoc>,
    pub(crate) recovery: HashMap<String, RecoveryDoc>,
    pub(crate) health_monitor: MonitorDoc,
    pub(crate) graceful_shutdown: ShutdownDoc,
    /// Its shape is pinned by `tests/chaos.rs`.
    pub(crate) chaos: HashMap<String, serde_json::Value>,
}

/// A keyed registry's breaker in `/reliability` (its configuration is the
/// registry's template, not repeated).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
pub(crate) struct KeyedBreakerDoc {
    pub(crate) state: String,
    pub(crate) failure_count: u64,
    pub(crate) consecutive_failures: u32,
    pub(crate) failure_rate: Option<f64>,
    pub(crate) rejected: u64,
    pub(crate) transitions: u64,
    pub(crate) next_probe_in_seconds: Option<f64>,
}

/// A keyed registry in `/reliability` (`tests/keyed` fills one).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
pub(crate) struct KeyedDoc {
    pub(crate) keys: usize,
    pub(crate) max_keys: usize,
    pub(crate) states: HashMap<String, usize>,
    pub(crate) not_closed: HashMap<String, KeyedBreakerDoc>,
    pub(crate) not_closed_unlisted: usize,
    pub(crate) overflow: KeyedBreakerDoc,
    pub(crate) overflowed_calls: u64,
    pub(crate) evicted: u64,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ErrorDoc {
    pub(crate) error: String,
}
