//! Scenario 1: a model server (and an ASR/OCR server) stops; the breaker
//! opens after 5 failures; recovery runs with backoff; the server comes back;
//! recovery succeeds, the breaker closes, requests succeed.

use std::time::{Duration, Instant};

use serde_json::json;

use crate::support::*;

/// Which upstream goes away, and how a request reaches it.
#[derive(Clone, Copy, Debug)]
enum Target {
    Model,
    AsrOcr,
}

impl Target {
    fn name(self) -> &'static str {
        match self {
            Target::Model => "model_server",
            Target::AsrOcr => "asr_ocr_server",
        }
    }

    async fn request(self, http: &reqwest::Client, demo: &Demo) -> Result<u16, reqwest::Error> {
        let r = match self {
            Target::Model => http
                .post(demo.url("/fir"))
                .json(&json!({ "complaint": "stolen bicycle" })),
            Target::AsrOcr => http
                .post(demo.url("/fir/audio"))
                .body("stolen bicycle, spoken"),
        };
        Ok(r.send().await?.status().as_u16())
    }
}

async fn temporary_failure(target: Target) {
    let model = Upstream::start(model_server(Duration::ZERO)).await.unwrap();
    let asr = Upstream::start(asr_ocr_server()).await.unwrap();
    let dir = temp_dir(target.name());
    let port = free_port();
    let demo = Demo::spawn(
        port,
        dir.join("demo.log"),
        &[
            ("MODEL_SERVER_URL", model.url()),
            ("ASR_OCR_SERVER_URL", asr.url()),
            (
                "DATABASE_URL",
                format!("sqlite://{}?mode=rwc", dir.join("fir.db").display()),
            ),
        ],
    );
    demo.ready(Duration::from_secs(60)).await;
    let http = reqwest::Client::new();
    assert_eq!(target.request(&http, &demo).await.unwrap(), 201);

    let upstream = match target {
        Target::Model => &model,
        Target::AsrOcr => &asr,
    };
    upstream.stop();
    // Five failures open the breaker; the next request is rejected at once.
    for i in 0..5 {
        let status = target.request(&http, &demo).await.unwrap();
        assert_eq!(status, 502, "failure {i} reaches the dead upstream");
    }
    assert_eq!(
        target.request(&http, &demo).await.unwrap(),
        503,
        "circuit open"
    );
    let report = reliability(&http, &demo).await;
    assert_eq!(report["circuit_breakers"][target.name()]["state"], "open");
    assert_eq!(report["recovery"][target.name()]["state"], "recovering");
    // Let attempt 1 fail and the backoff begin, then bring the server back.
    eventually(Duration::from_secs(10), "a failed attempt", || async {
        let r = reliability(&http, &demo).await;
        (r["recovery"][target.name()]["failures"].as_u64() >= Some(1)).then_some(())
    })
    .await;
    upstream.restart().await.unwrap();
    let back = Instant::now();
    eventually(Duration::from_secs(30), "a successful request", || async {
        (target.request(&http, &demo).await.ok() == Some(201)).then_some(())
    })
    .await;
    let downtime = back.elapsed();
    let report = reliability(&http, &demo).await;
    assert_eq!(report["circuit_breakers"][target.name()]["state"], "closed");
    assert!(report["recovery"][target.name()]["successes"].as_u64() >= Some(1));
    let log = demo.log_text();
    for line in [
        format!(
            "Circuit breaker '{}' opened, triggering auto-recovery",
            target.name()
        ),
        format!("Triggering recovery for: {} (attempt 1/6)", target.name()),
        "Applying backoff delay: 2.0s".to_string(),
        format!(
            "Circuit breaker '{}': Transitioning to CLOSED",
            target.name()
        ),
    ] {
        assert!(log.contains(&line), "log lacks {line:?}");
    }
    // Closed by the recovery's next attempt, or (sooner) by the breaker's
    // probe, which a passing health check let through at once.
    let by_recovery = format!("Recovery successful for: {}", target.name());
    let by_probe = format!("Dependency '{}' is healthy again", target.name());
    assert!(
        log.contains(&by_recovery) || log.contains(&by_probe),
        "log lacks {by_recovery:?} and {by_probe:?}"
    );
    println!(
        "scenario 1 ({}): downtime from the server's return to the first successful request: {:.2} s \
         (HEALTH_CHECK_INTERVAL=1, backoff 1 s x 2.0; seed expected 5-15 s)",
        target.name(),
        downtime.as_secs_f64()
    );
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn model_server_temporary_failure() {
    temporary_failure(Target::Model).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn asr_ocr_server_temporary_failure() {
    temporary_failure(Target::AsrOcr).await;
}
