//! Health checks: one async probe of a dependency, pass / warn / fail.

use std::borrow::Cow;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use tower_service::Service;

use crate::classify::{Classify, ErrorsAsFailures, Outcome};

/// Longest check `output` kept, in bytes.
pub const MAX_OUTPUT_LEN: usize = 256;

/// The status of a check, as in the IETF health-check draft.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum HealthStatus {
    /// Healthy.
    Pass,
    /// Healthy, with concerns.
    Warn,
    /// Unhealthy.
    Fail,
}

impl HealthStatus {
    /// `pass`, `warn` or `fail`.
    pub fn as_str(&self) -> &'static str {
        match self {
            HealthStatus::Pass => "pass",
            HealthStatus::Warn => "warn",
            HealthStatus::Fail => "fail",
        }
    }

    /// Whether the dependency is usable (`pass` or `warn`).
    pub fn is_up(&self) -> bool {
        !matches!(self, HealthStatus::Fail)
    }
}

impl fmt::Display for HealthStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The result of one check.
#[derive(Clone, Debug, PartialEq)]
pub struct CheckResult {
    /// Pass, warn or fail.
    pub status: HealthStatus,
    /// What was observed (by default the latency in milliseconds).
    pub observed_value: Option<f64>,
    /// Unit of `observed_value` (`ms` by default).
    pub observed_unit: Cow<'static, str>,
    /// Human-readable detail, capped at [`MAX_OUTPUT_LEN`] bytes.
    pub output: Option<String>,
    /// When the check finished (wall clock).
    pub time: SystemTime,
    /// How long the check took.
    pub duration: Duration,
}

impl CheckResult {
    /// A result with `status` and optional output; the runner fills in the
    /// latency, unit and time.
    pub fn new(status: HealthStatus, output: Option<String>) -> Self {
        Self {
            status,
            observed_value: None,
            observed_unit: Cow::Borrowed("ms"),
            output: output.map(cap),
            time: SystemTime::now(),
            duration: Duration::ZERO,
        }
    }

    /// Passed.
    pub fn pass() -> Self {
        Self::new(HealthStatus::Pass, None)
    }

    /// Passed with a concern.
    pub fn warn(output: impl Into<String>) -> Self {
        Self::new(HealthStatus::Warn, Some(output.into()))
    }

    /// Failed, saying why.
    pub fn fail(output: impl Into<String>) -> Self {
        Self::new(HealthStatus::Fail, Some(output.into()))
    }

    /// Reports `value` in `unit` instead of the latency.
    pub fn observed(mut self, value: f64, unit: impl Into<Cow<'static, str>>) -> Self {
        self.observed_value = Some(value);
        self.observed_unit = unit.into();
        self
    }
}

fn cap(text: String) -> String {
    crate::util::truncate_utf8(text, MAX_OUTPUT_LEN)
}

type BoxFuture = Pin<Box<dyn Future<Output = CheckResult> + Send>>;

/// An async probe of a dependency. Cheap to clone.
///
/// Made from a closure ([`HealthCheck::new`], [`HealthCheck::from_result`])
/// or from a Tower service ([`HealthCheck::from_service`]). Whoever runs it
/// ([`HealthCheck::run`]) applies a timeout, so a hang is a failure, and
/// measures the latency.
#[derive(Clone)]
pub struct HealthCheck {
    probe: Arc<dyn Fn() -> BoxFuture + Send + Sync>,
}

impl fmt::Debug for HealthCheck {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HealthCheck").finish_non_exhaustive()
    }
}

impl HealthCheck {
    /// A check from a closure returning `Result<(), E>`: `Ok` passes, `Err`
    /// fails with the error as output.
    pub fn new<F, Fut, E>(probe: F) -> Self
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), E>> + Send + 'static,
        E: fmt::Display,
    {
        Self {
            probe: Arc::new(move || {
                let fut = probe();
                Box::pin(async move {
                    match fut.await {
                        Ok(()) => CheckResult::pass(),
                        Err(e) => CheckResult::fail(e.to_string()),
                    }
                })
            }),
        }
    }

    /// A check from a closure returning a full [`CheckResult`] (to warn, or
    /// to report another observed value).
    pub fn from_result<F, Fut>(probe: F) -> Self
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = CheckResult> + Send + 'static,
    {
        Self {
            probe: Arc::new(move || Box::pin(probe())),
        }
    }

    /// A check that sends `request()` through a Tower service and classifies
    /// the answer with `classify` (a failure fails the check).
    pub fn from_service<S, Req, R, C>(service: S, request: R, classify: C) -> Self
    where
        S: Service<Req> + Clone + Send + 'static,
        S::Future: Send,
        S::Response: Send,
        S::Error: fmt::Display + Send,
        R: Fn() -> Req + Send + Sync + 'static,
        Req: Send + 'static,
        C: Classify<S::Response, S::Error> + Send + Sync + 'static,
    {
        let service = Arc::new(Mutex::new(service));
        let classify = Arc::new(classify);
        Self {
            probe: Arc::new(move || {
                let mut svc = service.lock().unwrap_or_else(|e| e.into_inner()).clone();
                let req = request();
                let classify = classify.clone();
                Box::pin(async move {
                    let result = match std::future::poll_fn(|cx| svc.poll_ready(cx)).await {
                        Ok(()) => svc.call(req).await,
                        Err(e) => Err(e),
                    };
                    match (classify.classify(&result), result) {
                        (Outcome::Failure, Err(e)) => CheckResult::fail(e.to_string()),
                        (Outcome::Failure, Ok(_)) => {
                            CheckResult::fail("probe answered with a failure")
                        }
                        (_, _) => CheckResult::pass(),
                    }
                })
            }),
        }
    }

    /// A check from a Tower service, `Err` failing.
    pub fn from_service_errors<S, Req, R>(service: S, request: R) -> Self
    where
        S: Service<Req> + Clone + Send + 'static,
        S::Future: Send,
        S::Response: Send,
        S::Error: fmt::Display + Send,
        R: Fn() -> Req + Send + Sync + 'static,
        Req: Send + 'static,
    {
        Self::from_service(service, request, ErrorsAsFailures)
    }

    /// Runs the check under `timeout`: a hang is a failure. Fills in the
    /// latency (as the observed value, unless the check set one), the time
    /// and the duration.
    pub async fn run(&self, timeout: Duration) -> CheckResult {
        let start = tokio::time::Instant::now();
        let mut result = match tokio::time::timeout(timeout, (self.probe)()).await {
            Ok(result) => result,
            Err(_) => CheckResult::fail(format!("check timed out after {timeout:?}")),
        };
        let duration = start.elapsed();
        result.duration = duration;
        result.time = SystemTime::now();
        if result.observed_value.is_none() {
            result.observed_value = Some(duration.as_secs_f64() * 1000.0);
            result.observed_unit = Cow::Borrowed("ms");
        }
        result
    }
}
