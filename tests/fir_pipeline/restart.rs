//! Scenario 3: the demo under concurrent load receives SIGTERM: requests in
//! flight complete, new ones are refused, it exits 0 within the grace period;
//! started again, it waits for its dependencies and serves; every FIR
//! acknowledged before the signal is still readable.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::Mutex;

use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn service_restart_under_load_loses_nothing() {
    // Each draft takes 300 ms, so requests are in flight at the signal.
    let model = Upstream::start(model_server(Duration::from_millis(300)))
        .await
        .unwrap();
    let asr = Upstream::start(asr_ocr_server()).await.unwrap();
    let dir = temp_dir("restart");
    let port = free_port();
    let env = [
        ("MODEL_SERVER_URL", model.url()),
        ("ASR_OCR_SERVER_URL", asr.url()),
        (
            "DATABASE_URL",
            format!("sqlite://{}?mode=rwc", dir.join("fir.db").display()),
        ),
    ];
    let spawn_started = Instant::now();
    let mut demo = Demo::spawn(port, dir.join("demo-1.log"), &env);
    let first_ready = demo.ready(Duration::from_secs(60)).await;
    let gate_overhead = spawn_started.elapsed();

    let acked = Arc::new(Mutex::new(Vec::<String>::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let outcomes = Arc::new(Mutex::new(Vec::<String>::new()));
    let workers: Vec<_> = (0..16)
        .map(|w| {
            let (acked, stop, outcomes, url) = (
                acked.clone(),
                stop.clone(),
                outcomes.clone(),
                demo.url("/fir"),
            );
            tokio::spawn(async move {
                let http = reqwest::Client::new();
                let mut i = 0;
                while !stop.load(Ordering::Acquire) {
                    i += 1;
                    let sent = http
                        .post(&url)
                        .json(&serde_json::json!({ "complaint": format!("worker {w} case {i}") }))
                        .send()
                        .await;
                    let outcome = match sent {
                        Ok(r) if r.status() == 201 => {
                            let body: serde_json::Value =
                                r.json().await.expect("a complete 201 body");
                            acked
                                .lock()
                                .await
                                .push(body["id"].as_str().unwrap().to_string());
                            "201".to_string()
                        }
                        Ok(r) => r.status().as_u16().to_string(),
                        Err(e) if e.is_connect() => "refused".to_string(),
                        Err(e) => format!("error: {e:?}"),
                    };
                    outcomes.lock().await.push(outcome);
                    if sent_refused(&outcomes).await {
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                }
            })
        })
        .collect();

    // Under load, then SIGTERM.
    eventually(Duration::from_secs(30), "load acknowledged", || async {
        (acked.lock().await.len() >= 30).then_some(())
    })
    .await;
    let acked_before = acked.lock().await.len();
    demo.signal("-TERM");
    let (status, exit_after) = demo.wait_exit(Duration::from_secs(15)).await;
    stop.store(true, Ordering::Release);
    for w in workers {
        w.await.unwrap();
    }
    assert!(
        status.success(),
        "exit status {status:?}; log:\n{}",
        demo.log_text()
    );
    assert!(
        exit_after < Duration::from_secs(10),
        "within the 10 s grace period: {exit_after:?}"
    );
    let log = demo.log_text();
    assert!(
        log.contains("Graceful shutdown complete") && log.contains("cut_off=0"),
        "{log}"
    );
    let outcomes = outcomes.lock().await.clone();
    let errors: Vec<_> = outcomes.iter().filter(|o| o.starts_with("error")).collect();
    assert!(errors.is_empty(), "requests cut mid-flight: {errors:?}");
    assert!(
        outcomes
            .iter()
            .all(|o| ["201", "503", "refused"].contains(&o.as_str())),
        "{outcomes:?}"
    );

    // Started again on the same port and database.
    let restart = Instant::now();
    let demo = Demo::spawn(port, dir.join("demo-2.log"), &env);
    demo.ready(Duration::from_secs(60)).await;
    let downtime_restart = restart.elapsed();
    let http = reqwest::Client::new();
    let acked = acked.lock().await.clone();
    assert!(acked.len() >= acked_before);
    for id in &acked {
        let r = http
            .get(demo.url(&format!("/fir/{id}")))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "acknowledged FIR {id} lost");
    }
    let count = |what: &str| outcomes.iter().filter(|o| o.as_str() == what).count();
    println!(
        "scenario 3 (restart): outcomes under load: {} x 201, {} x 503, {} refused connections, 0 cut mid-flight",
        count("201"),
        count("503"),
        count("refused")
    );
    println!(
        "scenario 3 (restart): {} FIRs acknowledged, all readable after the restart; exit {:.2} s after SIGTERM \
         (grace 10 s); restart to ready {:.2} s (seed expected 30-60 s with model loading); \
         startup gate with healthy dependencies: ready {:.2} s after spawn ({:.2} s from exec; seed +5-10 s)",
        acked.len(),
        exit_after.as_secs_f64(),
        downtime_restart.as_secs_f64(),
        gate_overhead.as_secs_f64(),
        first_ready.as_secs_f64()
    );
    let _ = std::fs::remove_dir_all(dir);
}

/// Whether the last outcome was a refusal (then back off a little).
async fn sent_refused(outcomes: &Mutex<Vec<String>>) -> bool {
    outcomes.lock().await.last().is_some_and(|o| o != "201")
}
