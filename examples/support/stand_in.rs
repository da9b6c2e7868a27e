//! Stand-ins for the FIR pipeline's upstreams: real HTTP servers on loopback
//! that can be stopped and started again on the same port (what `docker stop`
//! / `docker start` did in the seed). Shared by the `fir_pipeline` example
//! and its scenario tests.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post};
use serde_json::json;
use tokio::net::TcpListener;
use tokio::sync::watch;

/// The model the stand-in model server lists.
pub(crate) const MODEL: &str = "fir-draft-7b";

/// An HTTP server on a loopback port that can be stopped and restarted.
/// Dropping it stops the server.
#[derive(Clone)]
pub(crate) struct StandIn {
    addr: SocketAddr,
    app: Router,
    running: watch::Sender<bool>,
}

impl StandIn {
    /// Serves `app` on a free loopback port.
    pub(crate) async fn start(app: Router) -> std::io::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let (running, _) = watch::channel(true);
        let me = Self { addr, app, running };
        me.serve(listener);
        Ok(me)
    }

    fn serve(&self, listener: TcpListener) {
        let mut stop = self.running.subscribe();
        let app = self.app.clone();
        tokio::spawn(async move {
            let shutdown = async move {
                let _ = stop.wait_for(|running| !running).await;
            };
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(shutdown)
                .await;
        });
    }

    /// Stops accepting and closes the server (the scenario tests' outages;
    /// the demo's `--chaos` injects them instead).
    #[allow(dead_code)]
    pub(crate) fn stop(&self) {
        self.running.send_replace(false);
    }

    /// Serves again on the same port (retrying the bind for up to 10 s).
    #[allow(dead_code)]
    pub(crate) async fn restart(&self) -> std::io::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(10);
        let listener = loop {
            match TcpListener::bind(self.addr).await {
                Ok(listener) => break listener,
                Err(e) if Instant::now() >= deadline => return Err(e),
                Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        };
        self.running.send_replace(true);
        self.serve(listener);
        Ok(())
    }

    /// `http://127.0.0.1:<port>`.
    pub(crate) fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

/// The LLM model server: `/health`, `/v1/models`, `/v1/completions` (each
/// completion taking `delay`).
pub(crate) fn model_server(delay: Duration) -> Router {
    Router::new()
        .route("/health", get(|| async { "ok" }))
        .route("/v1/models", get(|| async { axum::Json(json!({ "data": [{ "id": MODEL }] })) }))
        .route(
            "/v1/completions",
            post(move |axum::Json(req): axum::Json<serde_json::Value>| async move {
                tokio::time::sleep(delay).await;
                let complaint = req["prompt"].as_str().unwrap_or_default();
                let nature = complaint.split_whitespace().take(6).collect::<Vec<_>>().join(" ");
                let draft = format!(
                    "FIRST INFORMATION REPORT\nNature of complaint: {nature}\nStatement: {complaint}\n\
                     Sections: to be determined by the officer in charge."
                );
                axum::Json(json!({ "model": MODEL, "text": draft }))
            }),
        )
}

/// The ASR/OCR server: `/health`, `/v1/models` (whisper, dots_ocr),
/// `/v1/transcribe` (echoes the body as text, trimmed; bodies up to 32 MiB).
pub(crate) fn asr_ocr_server() -> Router {
    Router::new()
        .route("/health", get(|| async { "ok" }))
        .route(
            "/v1/models",
            get(|| async {
                axum::Json(json!({ "data": [{ "id": "whisper" }, { "id": "dots_ocr" }] }))
            }),
        )
        .route(
            "/v1/transcribe",
            post(|body: Bytes| async move {
                axum::Json(json!({ "text": String::from_utf8_lossy(&body).trim().to_string() }))
            })
            .layer(DefaultBodyLimit::max(32 * 1024 * 1024)),
        )
}
