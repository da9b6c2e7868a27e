//! Arguments and environment: `--chaos`, `--help`, `HOST`, `PORT`,
//! `FIR_CHAOS` and the crate's [`Settings`]. Every bad setting is named at
//! once, with exit status 2.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;
use std::time::SystemTime;

use tower_recovery::config::Settings;
use tower_recovery::recovery::{WebhookAlert, WebhookBuilder};

use crate::database::Database;
use crate::handlers::{AUDIO_BODY_LIMIT, JSON_BODY_LIMIT};

/// The `--help` text.
fn usage() -> String {
    let mib = |bytes: usize| bytes / (1024 * 1024);
    format!(
        "\
usage: cargo run --example fir_pipeline [-- --chaos]

  --chaos      make the model server unreachable for 20 s every 45 s by switching its
               chaos layer's injected failures on (or FIR_CHAOS=1; FIR_CHAOS_UP and
               FIR_CHAOS_DOWN set the seconds up and down)
  -h, --help   this text

routes: POST /fir (JSON {{\"complaint\": \"...\"}}, body up to {json} MiB),
POST /fir/audio (audio or image bytes, up to {audio} MiB), GET /fir/{{id}};
/health, /livez, /readyz, /reliability, /metrics. A larger body gets 413.
Chaos at runtime (bearer ADMIN_TOKEN): GET /chaos; POST /chaos/model_server
(or /chaos/asr_ocr_server) with JSON {{\"error_rate\": 0.5, \"latency_ms\": 800,
\"latency_rate\": 1, \"status\": 503, \"duration_seconds\": 120}} (any of them);
DELETE /chaos/model_server, or DELETE /chaos for all.

environment: HOST (default 127.0.0.1; 0.0.0.0 to listen on every interface),
PORT (default 8000), DATABASE_URL (default: a SQLite file in the temporary
directory), MODEL_SERVER_URL and ASR_OCR_SERVER_URL (default: embedded
stand-ins), ADMIN_TOKEN, and the settings of tower_recovery::config
(RECOVERY_INTERVAL, MAX_RECOVERY_ATTEMPTS, RECOVERY_MODE=adaptive|strict,
HEALTH_CHECK_INTERVAL, ...). FIR_MODEL_NEEDS_DATABASE=1 declares that the
model server needs the database: its recovery then waits for the database's.
ALERT_WEBHOOK_URL=http://host:port/path POSTs each recovery alert as JSON.
REDIS_URL=redis://host:6379/ joins a fleet of replicas (built with --features
redis): FLEET_REPLICA_ID, FLEET_LEASE_TTL (seconds, default 10),
FLEET_FALLBACK=local|wait.",
        json = mib(JSON_BODY_LIMIT),
        audio = mib(AUDIO_BODY_LIMIT),
    )
}

/// Reads the arguments before anything starts: refuses unknown ones (exit
/// 2), answers `--help` (then `None`), else whether `--chaos` was given.
pub(crate) fn parse_args() -> Option<bool> {
    let mut chaos = false;
    for arg in std::env::args().skip(1) {
        match arg.as_str() {
            "--chaos" => chaos = true,
            "-h" | "--help" => {
                println!("{}", usage());
                return None;
            }
            other => {
                eprintln!(
                    "configuration error: unknown argument {other:?}\n\n{}",
                    usage()
                );
                std::process::exit(2);
            }
        }
    }
    Some(chaos)
}

/// The demo's configuration.
pub(crate) struct Config {
    pub(crate) settings: Settings,
    pub(crate) host: IpAddr,
    pub(crate) port: u16,
    pub(crate) chaos: bool,
    /// `--chaos`: how long the model server is reachable, then unreachable.
    pub(crate) chaos_up: Duration,
    pub(crate) chaos_down: Duration,
    /// `FIR_MODEL_NEEDS_DATABASE`: the model server needs the database
    /// (its storage), so its recovery waits for the database's.
    pub(crate) model_needs_database: bool,
    /// `ALERT_WEBHOOK_URL`: where recovery alerts are POSTed as JSON.
    pub(crate) alert_webhook: Option<WebhookBuilder>,
}

impl Config {
    /// Reads the environment; exits with status 2, naming every bad
    /// setting, if any is.
    pub(crate) fn from_env(chaos_arg: bool) -> Self {
        let mut problems = Vec::new();
        let settings = Settings::from_env()
            .map_err(|e| problems.extend(e.errors().iter().map(ToString::to_string)))
            .ok();
        let port: u16 = match std::env::var("PORT") {
            Ok(p) => p.trim().parse().unwrap_or_else(|_| {
                problems.push(format!(
                    "invalid PORT={p:?}: expected a port number 0-65535"
                ));
                0
            }),
            Err(_) => 8000,
        };
        let host: IpAddr = match std::env::var("HOST") {
            Ok(h) => h.trim().parse().unwrap_or_else(|_| {
                problems.push(format!(
                    "invalid HOST={h:?}: expected an IP address (127.0.0.1, or 0.0.0.0 for every interface)"
                ));
                Ipv4Addr::LOCALHOST.into()
            }),
            Err(_) => Ipv4Addr::LOCALHOST.into(),
        };
        let chaos = chaos_arg
            | flag("FIR_CHAOS").unwrap_or_else(|e| {
                problems.push(e);
                false
            });
        let alert_webhook = match std::env::var("ALERT_WEBHOOK_URL") {
            Err(_) => None,
            Ok(url) => match WebhookAlert::builder(url.trim()) {
                Ok(builder) => Some(builder),
                Err(e) => {
                    problems.push(format!("ALERT_WEBHOOK_URL: {e}"));
                    None
                }
            },
        };
        let model_needs_database = flag("FIR_MODEL_NEEDS_DATABASE").unwrap_or_else(|e| {
            problems.push(e);
            false
        });
        let mut seconds = |name: &str, default: u64| match std::env::var(name) {
            Err(_) => Duration::from_secs(default),
            Ok(v) => match v.trim().parse::<f64>() {
                Ok(secs) if secs.is_finite() && secs > 0.0 && secs <= 86_400.0 => {
                    Duration::from_secs_f64(secs)
                }
                _ => {
                    problems.push(format!(
                        "invalid {name}={v:?}: expected seconds, more than 0 and at most 86400"
                    ));
                    Duration::from_secs(default)
                }
            },
        };
        let chaos_up = seconds("FIR_CHAOS_UP", 25);
        let chaos_down = seconds("FIR_CHAOS_DOWN", 20);
        let Some(settings) = settings.filter(|_| problems.is_empty()) else {
            for problem in &problems {
                eprintln!("configuration error: {problem}");
            }
            std::process::exit(2);
        };
        Self {
            settings,
            host,
            port,
            chaos,
            chaos_up,
            chaos_down,
            model_needs_database,
            alert_webhook,
        }
    }

    /// `DATABASE_URL`, or a SQLite file in the temporary directory.
    pub(crate) fn database_url() -> String {
        std::env::var("DATABASE_URL").unwrap_or_else(|_| {
            let path = std::env::temp_dir().join("fir_pipeline.db");
            format!("sqlite://{}?mode=rwc", path.display())
        })
    }

    /// `ADMIN_TOKEN`, or one generated for this run.
    pub(crate) fn admin_token(&self) -> String {
        self.settings.admin_token.clone().unwrap_or_else(|| {
            tracing::warn!("ADMIN_TOKEN is not set: generated one for this run");
            random_token()
        })
    }

    /// One log line with every setting in effect (no password, no token).
    pub(crate) fn log_effective(
        &self,
        listen: SocketAddr,
        db: &Database,
        model_url: &str,
        asr_ocr_url: &str,
    ) {
        let s = &self.settings;
        tracing::info!(
            listen = %listen,
            database = %db.shown(),
            sqlite_file = db.sqlite_file().map(tracing::field::display),
            model_server = %model_url,
            asr_ocr_server = %asr_ocr_url,
            startup_timeout_s = s.startup_timeout.as_secs_f64(),
            dependency_check_interval_s = s.dependency_check_interval.as_secs_f64(),
            health_check_interval_s = s.health_check_interval.as_secs_f64(),
            recovery_interval_s = s.recovery_interval.as_secs_f64(),
            max_recovery_attempts = s.max_recovery_attempts,
            recovery_mode = if s.strict_recovery { "strict" } else { "adaptive" },
            shutdown_grace_period_s = s.shutdown_grace_period.as_secs_f64(),
            admin_token = if s.admin_token.is_some() { "from ADMIN_TOKEN" } else { "generated" },
            model_needs_database = self.model_needs_database,
            alert_webhook = self.alert_webhook.is_some(),
            chaos = self.chaos,
            chaos_up_s = self.chaos.then_some(self.chaos_up.as_secs_f64()),
            chaos_down_s = self.chaos.then_some(self.chaos_down.as_secs_f64()),
            "effective configuration"
        );
    }
}

/// Reads a flag: unset, or one of the values below.
fn flag(name: &str) -> Result<bool, String> {
    match std::env::var(name) {
        Err(_) => Ok(false),
        Ok(v) => match v.trim().to_ascii_lowercase().as_str() {
            "1" | "true" | "yes" | "on" => Ok(true),
            "" | "0" | "false" | "no" | "off" => Ok(false),
            _ => Err(format!(
                "invalid {name}={v:?}: expected 1, true, yes, on, or 0, false, no, off"
            )),
        },
    }
}

fn random_token() -> String {
    use std::hash::{BuildHasher, Hasher};
    let mut out = String::new();
    for i in 0..4u64 {
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u64(i);
        h.write_u128(
            SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .unwrap_or_default()
                .as_nanos(),
        );
        out.push_str(&format!("{:016x}", h.finish()));
    }
    out
}
