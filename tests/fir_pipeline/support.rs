//! Processes and servers for the scenarios.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use serde_json::json;

pub(crate) const TOKEN: &str = "scenario-token";

/// The demo binary, built once per test run from the current sources (a
/// plain `cargo test` builds examples, `cargo test --test fir_pipeline` does
/// not: a binary left by an earlier build would be stale).
pub(crate) fn demo_binary() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let dir = std::env::current_exe()
            .unwrap()
            .parent()
            .unwrap()
            .parent()
            .unwrap()
            .to_path_buf();
        let bin = dir.join("examples").join("fir_pipeline");
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let status = Command::new(cargo)
            .args(["build", "--all-features", "--example", "fir_pipeline"])
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .status()
            .expect("cargo build --example fir_pipeline");
        assert!(
            status.success(),
            "cargo build --example fir_pipeline failed"
        );
        assert!(bin.exists(), "{} not built", bin.display());
        bin
    })
}

pub(crate) fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The demo as a child process; killed if the test ends early.
pub(crate) struct Demo {
    pub(crate) child: Child,
    pub(crate) base: String,
    pub(crate) log: PathBuf,
}

impl Demo {
    pub(crate) fn spawn(port: u16, log: PathBuf, env: &[(&str, String)]) -> Self {
        Self::spawn_with_args(port, log, &[], env)
    }

    /// The demo on a free port with its own SQLite file in a new temporary
    /// directory `name`, ready; and that directory.
    pub(crate) async fn ready_on_sqlite(name: &str) -> (Self, PathBuf) {
        let dir = temp_dir(name);
        let demo = Self::spawn(
            free_port(),
            dir.join("demo.log"),
            &[(
                "DATABASE_URL",
                format!("sqlite://{}?mode=rwc", dir.join("fir.db").display()),
            )],
        );
        demo.ready(Duration::from_secs(60)).await;
        (demo, dir)
    }

    /// [`Demo::spawn`] with command-line arguments.
    pub(crate) fn spawn_with_args(
        port: u16,
        log: PathBuf,
        args: &[&str],
        env: &[(&str, String)],
    ) -> Self {
        let mut cmd = Command::new(demo_binary());
        cmd.args(args)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("PORT", port.to_string())
            .env("ADMIN_TOKEN", TOKEN)
            .env("DEPENDENCY_CHECK_INTERVAL", "0.2")
            .env("HEALTH_CHECK_INTERVAL", "1")
            .env("RECOVERY_INTERVAL", "5")
            .env("MAX_RECOVERY_ATTEMPTS", "6")
            .env("RECOVERY_ATTEMPT_TIMEOUT", "2")
            .env("STARTUP_TIMEOUT", "60")
            .env("SHUTDOWN_GRACE_PERIOD", "10")
            .env("RUST_LOG", "info");
        for (k, v) in env {
            cmd.env(k, v);
        }
        let out = std::fs::File::create(&log).unwrap();
        cmd.stdout(Stdio::from(out.try_clone().unwrap()))
            .stderr(Stdio::from(out));
        let child = cmd.spawn().expect("spawn the demo");
        Self {
            child,
            base: format!("http://127.0.0.1:{port}"),
            log,
        }
    }

    pub(crate) fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// Waits until `/readyz` answers 200.
    pub(crate) async fn ready(&self, within: Duration) -> Duration {
        let start = Instant::now();
        let http = reqwest::Client::new();
        loop {
            if let Ok(r) = http.get(self.url("/readyz")).send().await {
                if r.status() == 200 {
                    return start.elapsed();
                }
            }
            assert!(
                start.elapsed() < within,
                "demo not ready within {within:?}; log:\n{}",
                self.log_text()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub(crate) fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub(crate) fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .args([signal, &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// Waits for the process to exit, returning its status and the time.
    pub(crate) async fn wait_exit(
        &mut self,
        within: Duration,
    ) -> (std::process::ExitStatus, Duration) {
        let start = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return (status, start.elapsed());
            }
            assert!(
                start.elapsed() < within,
                "demo did not exit within {within:?}; log:\n{}",
                self.log_text()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

impl Drop for Demo {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[path = "../../examples/support/stand_in.rs"]
#[allow(dead_code)]
mod stand_in;

pub(crate) use stand_in::{StandIn as Upstream, asr_ocr_server, model_server};

pub(crate) fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "tower-recovery-{name}-{}-{}",
        std::process::id(),
        free_port()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

pub(crate) async fn post_fir(
    http: &reqwest::Client,
    demo: &Demo,
    complaint: &str,
) -> Result<(u16, serde_json::Value), reqwest::Error> {
    let r = http
        .post(demo.url("/fir"))
        .json(&json!({ "complaint": complaint }))
        .send()
        .await?;
    let status = r.status().as_u16();
    let body = r.json().await.unwrap_or(serde_json::Value::Null);
    Ok((status, body))
}

pub(crate) async fn reliability(http: &reqwest::Client, demo: &Demo) -> serde_json::Value {
    http.get(demo.url("/reliability"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

/// Polls `f` until it returns `Some`, or panics after `within`.
pub(crate) async fn eventually<T, F, Fut>(within: Duration, what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let start = Instant::now();
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(start.elapsed() < within, "{what}: not within {within:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
