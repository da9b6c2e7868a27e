//! Scenario 2: database connection loss. The test runs its own `mariadbd`
//! (own data directory, free port), kills it with SIGKILL, restarts it on
//! the same directory and port; recovery takes a fresh connection and runs
//! `SELECT 1`; no committed FIR row is lost.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::support::*;

fn which(bin: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/usr/bin")])
        .map(|d| d.join(bin))
        .find(|p| p.is_file())
}

struct MariaDb {
    bin: PathBuf,
    dir: PathBuf,
    port: u16,
    child: Option<Child>,
}

impl MariaDb {
    fn install(dir: &Path) -> Option<Self> {
        let bin = which("mariadbd")?;
        let install = which("mariadb-install-db")?;
        let data = dir.join("data");
        let status = Command::new(install)
            .args([
                "--no-defaults",
                &format!("--datadir={}", data.display()),
                "--auth-root-authentication-method=normal",
                "--user=root",
                "--skip-test-db",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .ok()?;
        assert!(status.success(), "mariadb-install-db failed");
        Some(Self {
            bin,
            dir: data,
            port: free_port(),
            child: None,
        })
    }

    /// A private server in `dir`, or `None` with a message when its
    /// binaries are missing (a failure under `REQUIRE_MARIADB`, as in CI).
    fn install_or_skip(dir: &Path, test: &str) -> Option<Self> {
        let db = Self::install(dir);
        if db.is_none() {
            assert!(
                std::env::var_os("REQUIRE_MARIADB").is_none(),
                "REQUIRE_MARIADB is set but mariadbd / mariadb-install-db are not on the PATH"
            );
            eprintln!("SKIPPED {test}: mariadbd not found (apt-get install -y mariadb-server)");
        }
        db
    }

    fn start(&mut self) {
        let d = self.dir.display();
        let child = Command::new(&self.bin)
            .args([
                "--no-defaults".to_string(),
                format!("--datadir={d}"),
                format!("--port={}", self.port),
                "--bind-address=127.0.0.1".to_string(),
                format!("--socket={d}/sock"),
                "--user=root".to_string(),
                format!("--pid-file={d}/pid"),
                format!("--log-error={d}/err.log"),
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start mariadbd");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(60);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(Instant::now() < deadline, "mariadbd did not listen");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill")
                .args(["-KILL", &child.id().to_string()])
                .status();
            let _ = child.wait();
        }
    }

    fn sql(&self, statement: &str) -> String {
        let client = which("mariadb")
            .or_else(|| which("mysql"))
            .expect("a mariadb client");
        let out = Command::new(client)
            .args([
                "--no-defaults",
                "-uroot",
                "-h127.0.0.1",
                &format!("-P{}", self.port),
                "-N",
                "-e",
                statement,
            ])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }
}

impl Drop for MariaDb {
    fn drop(&mut self) {
        self.kill();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn database_connection_loss() {
    let dir = temp_dir("mariadb");
    let Some(mut db) = MariaDb::install_or_skip(&dir, "database_connection_loss") else {
        return;
    };
    db.start();
    db.sql("CREATE DATABASE fir");
    let model = Upstream::start(model_server(Duration::ZERO)).await.unwrap();
    let asr = Upstream::start(asr_ocr_server()).await.unwrap();
    let demo = Demo::spawn(
        free_port(),
        dir.join("demo.log"),
        &[
            ("MODEL_SERVER_URL", model.url()),
            ("ASR_OCR_SERVER_URL", asr.url()),
            (
                "DATABASE_URL",
                format!("mysql://root@127.0.0.1:{}/fir", db.port),
            ),
        ],
    );
    demo.ready(Duration::from_secs(60)).await;
    let http = reqwest::Client::new();
    let mut committed = Vec::new();
    for i in 0..5 {
        let (status, body) = post_fir(&http, &demo, &format!("complaint {i}"))
            .await
            .unwrap();
        assert_eq!(status, 201, "{body}");
        committed.push(body["id"].as_str().unwrap().to_string());
    }

    db.kill();
    // Detected: by the monitor (health fail) and on the request path.
    eventually(Duration::from_secs(15), "the failure detected", || async {
        let r = reliability(&http, &demo).await;
        let state = r["recovery"]["database"]["state"]
            .as_str()
            .unwrap_or("")
            .to_string();
        let failing = r["health_monitor"]["dependencies"]["database"]["last_status"] == "fail";
        (failing && state != "idle").then_some(())
    })
    .await;
    let (status, _) = post_fir(&http, &demo, "while the database is down")
        .await
        .unwrap();
    assert_eq!(status, 503);
    eventually(
        Duration::from_secs(15),
        "a failed recovery attempt",
        || async {
            let r = reliability(&http, &demo).await;
            (r["recovery"]["database"]["failures"].as_u64() >= Some(1)).then_some(())
        },
    )
    .await;

    db.start(); // same directory, same port
    let back = Instant::now();
    let id = eventually(Duration::from_secs(40), "a successful request", || async {
        match post_fir(&http, &demo, "after the database came back").await {
            Ok((201, body)) => Some(body["id"].as_str().unwrap().to_string()),
            _ => None,
        }
    })
    .await;
    let downtime = back.elapsed();
    committed.push(id);
    // The pool reconnects on the request path too; the recovery's next
    // attempt (fresh connection, SELECT 1) succeeds as well.
    eventually(Duration::from_secs(20), "the recovery recorded", || async {
        let r = reliability(&http, &demo).await;
        (r["recovery"]["database"]["successes"].as_u64() >= Some(1)).then_some(())
    })
    .await;
    for id in &committed {
        let response = http
            .get(demo.url(&format!("/fir/{id}")))
            .send()
            .await
            .unwrap();
        let status = response.status();
        let body = response.text().await.unwrap();
        assert_eq!(status, 200, "FIR {id} lost: {body}");
    }
    let rows = db.sql("SELECT COUNT(*) FROM fir.firs");
    assert_eq!(rows.trim(), committed.len().to_string());
    println!(
        "scenario 2 (database): downtime from the database's return to the first successful request: {:.2} s \
         (HEALTH_CHECK_INTERVAL=1, backoff 1 s x 2.0; seed expected 2-10 s); {} committed rows intact",
        downtime.as_secs_f64(),
        committed.len()
    );
    drop(demo);
    drop(db);
    let _ = std::fs::remove_dir_all(dir);
}

/// Issue 15: a complaint too long for its column (MariaDB `TEXT`, 65,535
/// bytes; error 1406, SQLSTATE 22001) is the caller's error: 422 naming the
/// field and the limit, every time, and no recovery starts (the database
/// recovery triggers after 3 consecutive failures: 6 such posts would have
/// started one twice over). Breakers stay closed; a normal complaint is
/// stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_complaint_too_long_for_its_column_is_the_callers_error() {
    let dir = temp_dir("mariadb-too-long");
    let Some(mut db) = MariaDb::install_or_skip(
        &dir,
        "a_complaint_too_long_for_its_column_is_the_callers_error",
    ) else {
        return;
    };
    db.start();
    db.sql("CREATE DATABASE fir");
    let model = Upstream::start(model_server(Duration::ZERO)).await.unwrap();
    let asr = Upstream::start(asr_ocr_server()).await.unwrap();
    let demo = Demo::spawn(
        free_port(),
        dir.join("demo.log"),
        &[
            ("MODEL_SERVER_URL", model.url()),
            ("ASR_OCR_SERVER_URL", asr.url()),
            (
                "DATABASE_URL",
                format!("mysql://root@127.0.0.1:{}/fir", db.port),
            ),
        ],
    );
    demo.ready(Duration::from_secs(60)).await;
    let http = reqwest::Client::new();

    let too_long = "x".repeat(70_000);
    for _ in 0..6 {
        let (status, body) = post_fir(&http, &demo, &too_long).await.unwrap();
        assert_eq!(status, 422, "{body}");
        assert_eq!(body["field"], "complaint", "{body}");
        assert_eq!(body["column"], "complaint", "{body}");
        assert_eq!(body["limit_bytes"], 65_535, "{body}");
        assert!(
            body["error"]
                .as_str()
                .unwrap()
                .starts_with("complaint too long to store"),
            "{body}"
        );
    }
    // The recovery task would have started a cycle at once: give it the
    // time to show one, then look.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let r = reliability(&http, &demo).await;
    let recovery = &r["recovery"]["database"];
    assert_eq!(recovery["state"], "idle", "{r}");
    assert_eq!(recovery["attempts"], 0, "{r}");
    assert_eq!(recovery["successes"], 0, "{r}");
    assert_eq!(recovery["failures"], 0, "{r}");
    assert_eq!(recovery["track_record"]["since_start"]["outages"], 0, "{r}");
    for (name, breaker) in r["circuit_breakers"].as_object().unwrap() {
        assert_eq!(breaker["state"], "closed", "{name}: {r}");
        assert_eq!(breaker["failure_count"], 0, "{name}: {r}");
    }
    assert_eq!(r["status"], "pass", "{r}");
    let log = demo.log_text();
    assert!(!log.contains("Triggering recovery"), "{log}");

    let (status, body) = post_fir(&http, &demo, "a stolen bicycle").await.unwrap();
    assert_eq!(status, 201, "{body}");
    // Only the normal complaint was stored.
    assert_eq!(db.sql("SELECT COUNT(*) FROM fir.firs").trim(), "1");
    drop(demo);
    drop(db);
    let _ = std::fs::remove_dir_all(dir);
}

/// A complaint that fits its column but whose draft (the complaint and the
/// report's heading) does not: the 422 must not claim the complaint broke
/// a limit it is under.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "review2 finding, not fixed: a 65,500-byte complaint gets 422 blaming the complaint for the draft column"]
async fn a_draft_too_long_is_not_blamed_on_a_complaint_under_the_limit() {
    let dir = temp_dir("mariadb-draft-too-long");
    let Some(mut db) = MariaDb::install_or_skip(
        &dir,
        "a_draft_too_long_is_not_blamed_on_a_complaint_under_the_limit",
    ) else {
        return;
    };
    db.start();
    db.sql("CREATE DATABASE fir");
    let model = Upstream::start(model_server(Duration::ZERO)).await.unwrap();
    let asr = Upstream::start(asr_ocr_server()).await.unwrap();
    let demo = Demo::spawn(
        free_port(),
        dir.join("demo.log"),
        &[
            ("MODEL_SERVER_URL", model.url()),
            ("ASR_OCR_SERVER_URL", asr.url()),
            (
                "DATABASE_URL",
                format!("mysql://root@127.0.0.1:{}/fir", db.port),
            ),
        ],
    );
    demo.ready(Duration::from_secs(60)).await;
    let http = reqwest::Client::new();
    let complaint = "x".repeat(65_500);
    let (status, body) = post_fir(&http, &demo, &complaint).await.unwrap();
    if status == 422 {
        let limit = body["limit_bytes"].as_u64().unwrap();
        assert!(
            (complaint.len() as u64) > limit || body["column"] != "complaint",
            "{body}"
        );
        assert_eq!(
            body["column"], body["field"],
            "the answer names the field {} but the column {}: {body}",
            body["field"], body["column"]
        );
    }
    drop(demo);
    drop(db);
    let _ = std::fs::remove_dir_all(dir);
}

/// Issue 13, coordination: the model server is declared to need storage
/// (`FIR_MODEL_NEEDS_DATABASE=1`; storage is a private MariaDB). Both stop.
/// The model server's recovery waits for storage instead of failing
/// against it, `/health` names storage as the root cause, one alert fires
/// (storage's); storage recovers first, the model server after it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn storage_and_model_server_down_recover_in_dependency_order() {
    let dir = temp_dir("mariadb_order");
    let Some(mut db) = MariaDb::install_or_skip(
        &dir,
        "storage_and_model_server_down_recover_in_dependency_order",
    ) else {
        return;
    };
    db.start();
    db.sql("CREATE DATABASE fir");
    let model = Upstream::start(model_server(Duration::ZERO)).await.unwrap();
    let asr = Upstream::start(asr_ocr_server()).await.unwrap();
    // A local receiver of the demo's alert webhook.
    let posted_alerts = std::sync::Arc::new(std::sync::Mutex::new(Vec::<serde_json::Value>::new()));
    let receiver = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let webhook_url = format!("http://{}/alerts", receiver.local_addr().unwrap());
    tokio::spawn({
        let alerts = posted_alerts.clone();
        let app = axum::Router::new().route(
            "/alerts",
            axum::routing::post(move |body: String| async move {
                alerts
                    .lock()
                    .unwrap()
                    .push(serde_json::from_str(&body).unwrap());
                axum::http::StatusCode::NO_CONTENT
            }),
        );
        async move { axum::serve(receiver, app).await.unwrap() }
    });
    let demo = Demo::spawn(
        free_port(),
        dir.join("demo.log"),
        &[
            ("MODEL_SERVER_URL", model.url()),
            ("ASR_OCR_SERVER_URL", asr.url()),
            (
                "DATABASE_URL",
                format!("mysql://root@127.0.0.1:{}/fir", db.port),
            ),
            ("FIR_MODEL_NEEDS_DATABASE", "1".into()),
            ("ALERT_WEBHOOK_URL", webhook_url),
            ("MAX_RECOVERY_ATTEMPTS", "2".into()),
        ],
    );
    demo.ready(Duration::from_secs(60)).await;
    let http = reqwest::Client::new();
    let (status, body) = post_fir(&http, &demo, "before").await.unwrap();
    assert_eq!(status, 201, "{body}");

    // Storage goes first, and its recovery gives up (one alert)...
    db.kill();
    eventually(
        Duration::from_secs(30),
        "storage's recovery exhausted",
        || async {
            let r = reliability(&http, &demo).await;
            (r["recovery"]["database"]["state"] == "exhausted").then_some(())
        },
    )
    .await;
    // ...then the model server: its breaker opens on failed calls.
    model.stop();
    eventually(
        Duration::from_secs(15),
        "the model server's breaker open",
        || async {
            let _ = post_fir(&http, &demo, "while both are down").await;
            let r = reliability(&http, &demo).await;
            (r["circuit_breakers"]["model_server"]["state"] == "open").then_some(())
        },
    )
    .await;
    // Its recovery waits for storage; the root cause is named.
    eventually(
        Duration::from_secs(15),
        "the model server waiting",
        || async {
            let r = reliability(&http, &demo).await;
            (r["recovery"]["model_server"]["waiting_for"] == "database").then_some(())
        },
    )
    .await;
    let health: serde_json::Value = http
        .get(demo.url("/health"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(health["status"], "fail");
    assert_eq!(
        health["root_causes"]["model_server"], "database",
        "{health}"
    );
    assert_eq!(
        health["checks"]["model_server:connectivity"][0]["rootCause"],
        "database"
    );
    // The model server comes back while storage is still down: nothing
    // runs against it yet (no traffic either, so its breaker stays open or
    // half-open).
    model.restart().await.unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await; // a window in which nothing may happen
    let log = demo.log_text();
    assert!(
        !log.contains("Triggering recovery for: model_server"),
        "the model server's recovery ran while storage was down"
    );
    // Storage returns: its recovery first, the model server's after it.
    db.start();
    eventually(
        Duration::from_secs(30),
        "the model server recovered",
        || async {
            let r = reliability(&http, &demo).await;
            (r["circuit_breakers"]["model_server"]["state"] == "closed"
                && r["recovery"]["model_server"]["waiting_for"].is_null())
            .then_some(())
        },
    )
    .await;
    let (status, body) = post_fir(&http, &demo, "after both came back")
        .await
        .unwrap();
    assert_eq!(status, 201, "{body}");
    let log = demo.log_text();
    let at = |line: &str| {
        log.find(line)
            .unwrap_or_else(|| panic!("log lacks {line:?}:\n{log}"))
    };
    let storage_back = at("Dependency 'database' is healthy again");
    let goes_on = at("'database' is back: recovery of 'model_server' goes on");
    let model_back = at("Recovery successful for: model_server");
    assert!(
        storage_back < goes_on && goes_on < model_back,
        "storage first, the model server after"
    );
    assert!(log.contains("Recovery of 'model_server' waits for 'database'"));
    let alerts: Vec<&str> = log.lines().filter(|l| l.contains("ALERT:")).collect();
    assert_eq!(alerts.len(), 1, "one alert: {alerts:?}");
    assert!(
        alerts[0].contains("recovery of database exhausted (root cause: database)"),
        "{alerts:?}"
    );
    // The same alert, once, through the webhook.
    let posted = alerts_posted(&posted_alerts).await;
    assert_eq!(posted.len(), 1, "{posted:?}");
    assert_eq!(posted[0]["dependency"], "database");
    assert_eq!(posted[0]["root_cause"], "database");
    assert_eq!(posted[0]["kind"], "exhausted");
    drop(demo);
    drop(db);
    let _ = std::fs::remove_dir_all(dir);
}

/// The alerts the receiver got, once at least one has arrived.
async fn alerts_posted(
    alerts: &std::sync::Mutex<Vec<serde_json::Value>>,
) -> Vec<serde_json::Value> {
    eventually(Duration::from_secs(10), "an alert posted", || async {
        let got = alerts.lock().unwrap().clone();
        (!got.is_empty()).then_some(got)
    })
    .await
}
