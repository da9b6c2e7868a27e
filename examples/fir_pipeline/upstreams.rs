//! The model server and the ASR/OCR server: the embedded stand-ins (shared
//! with the other examples and the scenario tests), the transports (a
//! reqwest client behind each server's chaos layer), the guarded clients,
//! their health checks and recovery probes.
//!
//! Everything this process sends to a server goes through its transport:
//! the API's calls, the health checks and the recovery probes. So while the
//! server's chaos is on, the whole process sees it down, as it would a real
//! outage, and the breaker, the monitor and the recovery all react.

use std::time::Duration;

use tower::util::BoxCloneSyncService;
use tower::{BoxError, ServiceBuilder, ServiceExt};
use tower_recovery::chaos::{Chaos, Injected, OnFault};
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

/// A reqwest client behind `chaos` (off until switched on: one atomic load
/// per request). A failed request is an `Injected` error, as a refused
/// connection would be, or, when the rehearsal sets a `status`, an answer
/// with that status (see [`DemoFault`]).
pub(crate) fn transport(http: &reqwest::Client, chaos: &Chaos) -> Client {
    let http = http.clone();
    BoxCloneSyncService::new(
        ServiceBuilder::new()
            .layer(chaos.layer().on_fault(DemoFault))
            .service_fn(move |req: reqwest::Request| {
                let http = http.clone();
                async move { http.execute(req).await.map_err(BoxError::from) }
            }),
    )
}

/// What a request failed on purpose returns: an answer with the
/// rehearsal's status if it set one (the response override), else the
/// `Injected` error.
#[derive(Clone, Copy, Debug)]
pub(crate) struct DemoFault;

impl OnFault<reqwest::Response, BoxError> for DemoFault {
    type Error = BoxError;

    fn fault(&self, injected: Injected) -> Result<reqwest::Response, BoxError> {
        match injected.status() {
            Some(status) => {
                let mut response = http::Response::new(String::new());
                *response.status_mut() = status;
                Ok(reqwest::Response::from(response))
            }
            None => Err(Box::new(injected)),
        }
    }

    fn convert(&self, error: BoxError) -> BoxError {
        error
    }
}

/// `GET {url}` through `transport`.
async fn get(
    transport: &Client,
    http: &reqwest::Client,
    url: String,
) -> Result<reqwest::Response, String> {
    let request = http.get(url).build().map_err(|e| describe(&e))?;
    transport
        .clone()
        .oneshot(request)
        .await
        .map_err(|e| describe(&*e))
}

/// The transport behind a breaker (5xx and connection errors are
/// failures), a timeout, and the drain's client layer.
pub(crate) fn guarded_client(transport: &Client, breaker: &Breaker, drain: &Drain) -> Client {
    let svc =
        ServiceBuilder::new()
            .layer(drain.client_layer())
            .layer(breaker.layer().classify(
                HttpErrorsAsFailures::new().with_status(|r: &reqwest::Response| r.status()),
            ))
            .timeout(Duration::from_secs(30))
            .service(transport.clone());
    BoxCloneSyncService::new(svc)
}

/// The health check: `GET {base}/health` answers 2xx.
pub(crate) fn health_check(
    transport: &Client,
    http: &reqwest::Client,
    base: String,
) -> HealthCheck {
    let (transport, http) = (transport.clone(), http.clone());
    HealthCheck::new(move || {
        let (transport, http, url) = (transport.clone(), http.clone(), format!("{base}/health"));
        async move {
            let response = get(&transport, &http, url).await?;
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
    transport: Client,
    http: reqwest::Client,
    base: String,
    models: &'static [&'static str],
    what: &'static str,
) -> Result<(), String> {
    tracing::info!("Attempting to recover {what} connection...");
    let result = async {
        let health = get(&transport, &http, format!("{base}/health")).await?;
        if !health.status().is_success() {
            return Err(format!("health endpoint answered {}", health.status()));
        }
        let listed = get(&transport, &http, format!("{base}/v1/models"))
            .await?
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
