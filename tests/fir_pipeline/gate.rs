//! Item 10: the demo asked to stop while its startup gate waits for a
//! dependency that is down exits at once, not at `STARTUP_TIMEOUT`.

use std::time::Duration;

use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_during_the_startup_gate_exits_promptly() {
    let asr = Upstream::start(asr_ocr_server()).await.unwrap();
    let dir = temp_dir("gate");
    // Nothing listens there: the required model server is down.
    let dead_model = format!("http://127.0.0.1:{}", free_port());
    let mut demo = Demo::spawn(
        free_port(),
        dir.join("demo.log"),
        &[
            ("MODEL_SERVER_URL", dead_model),
            ("ASR_OCR_SERVER_URL", asr.url()),
            (
                "DATABASE_URL",
                format!("sqlite://{}?mode=rwc", dir.join("fir.db").display()),
            ),
            ("STARTUP_TIMEOUT", "300".to_string()),
        ],
    );
    let http = reqwest::Client::new();
    // The gate is waiting: the model server failed a round, the admin routes
    // answer, readiness says not ready.
    eventually(
        Duration::from_secs(60),
        "the startup gate waiting for the model server",
        || async {
            let failed = demo
                .log_text()
                .contains("Dependency 'model_server' (required): fail");
            let live = http.get(demo.url("/livez")).send().await.ok()?.status();
            let ready = http.get(demo.url("/readyz")).send().await.ok()?.status();
            (failed && live == 200 && ready == 503).then_some(())
        },
    )
    .await;

    demo.signal("-TERM");
    let (status, after) = demo.wait_exit(Duration::from_secs(5)).await;
    let log = demo.log_text();
    assert!(status.success(), "exit status {status:?}; log:\n{log}");
    assert!(
        log.contains("Shutdown requested during the startup gate: exiting without serving"),
        "{log}"
    );
    assert!(!log.contains("Ready to serve"), "{log}");
    println!(
        "startup gate: SIGTERM while waiting for a dependency that is down (STARTUP_TIMEOUT=300): exit 0 {:.2} s after the signal",
        after.as_secs_f64()
    );
    let _ = std::fs::remove_dir_all(dir);
}
