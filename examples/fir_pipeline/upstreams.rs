//! The model server and the ASR/OCR server: the embedded stand-ins (shared
//! with the other examples and the scenario tests), the guarded clients,
//! their health checks and recovery probes.

use std::time::Duration;

use tower::util::BoxCloneSyncService;
use tower::{BoxError, ServiceBuilder};
use tower_recovery::circuit_breaker::Breaker;
use tower_recovery::classify::HttpErrorsAsFailures;
use tower_recovery::drain::Drain;
use tower_recovery::health::HealthCheck;

use crate::describe::describe;

#[path = "../support/stand_in.rs"]
mod stand_in;

pub(crate) use stand_in::{MODEL, StandIn, asr_ocr_server, model_server};

/// The URL in `var`, or an embedded stand-in serving `app` (kept alive by
/// the returned handle: dropping it stops the server).
pub(crate) async fn url_or_stand_in(
    var: &str,
    what: &str,
    app: impl FnOnce() -> axum::Router,
) -> std::io::Result<(String, Option<StandIn>)> {
    match std::env::var(var) {
        Ok(url) => Ok((url.trim_end_matches('/').to_string(), None)),
        Err(_) => {
            let s = StandIn::start(app()).await?;
            tracing::info!("embedded {what} on {}", s.url());
            Ok((s.url(), Some(s)))
        }
    }
}

pub(crate) type Client = BoxCloneSyncService<reqwest::Request, reqwest::Response, BoxError>;

/// A reqwest client behind a breaker (5xx and connection errors are
/// failures), a timeout, and the drain's client layer.
pub(crate) fn guarded_client(http: &reqwest::Client, breaker: &Breaker, drain: &Drain) -> Client {
    let http = http.clone();
    let svc =
        ServiceBuilder::new()
            .layer(drain.client_layer())
            .layer(breaker.layer().classify(
                HttpErrorsAsFailures::new().with_status(|r: &reqwest::Response| r.status()),
            ))
            .timeout(Duration::from_secs(30))
            .service_fn(move |req: reqwest::Request| {
                let http = http.clone();
                async move { http.execute(req).await.map_err(BoxError::from) }
            });
    BoxCloneSyncService::new(svc)
}

/// The health check: `GET {base}/health` answers 2xx.
pub(crate) fn health_check(http: &reqwest::Client, base: String) -> HealthCheck {
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
}

/// The seed's recovery handlers for HTTP servers: health endpoint, then
/// every model listed.
pub(crate) async fn probe(
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
