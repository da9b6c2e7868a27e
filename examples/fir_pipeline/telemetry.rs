//! `/metrics`: the crate's metrics, described, and
//! `http_requests_total{route, method, status}`.

use axum::extract::{MatchedPath, Request};
use axum::middleware::Next;
use axum::response::Response;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

const HTTP_REQUESTS: &str = "http_requests_total";

/// Installs the Prometheus recorder and describes every metric (the
/// `# HELP` lines).
pub(crate) fn install() -> Result<PrometheusHandle, tower::BoxError> {
    let handle = PrometheusBuilder::new().install_recorder()?;
    tower_recovery::metrics::describe();
    metrics::describe_counter!(
        HTTP_REQUESTS,
        metrics::Unit::Count,
        "HTTP requests answered, by route template, method and status"
    );
    Ok(handle)
}

/// Counts each answer. The labels stay bounded: `route` is the matched
/// route template (`/fir/{id}`, never the raw path) or `unmatched`, and
/// `method` is a standard method or `other`.
pub(crate) async fn count_requests(request: Request, next: Next) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_string(), |p| p.as_str().to_string());
    let method = ["GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"]
        .into_iter()
        .find(|m| *m == request.method().as_str())
        .unwrap_or("other");
    let response = next.run(request).await;
    metrics::counter!(
        HTTP_REQUESTS,
        "route" => route,
        "method" => method,
        "status" => response.status().as_str().to_string(),
    )
    .increment(1);
    response
}
