//! Settings from environment variables, validated.
//!
//! The defaults are the seed's. Each may come from the environment; a bad
//! value is an error naming the variable, the value and what is expected,
//! never a silent default. An optional prefix lets two services in one
//! process be configured apart (`MODEL_HEALTH_CHECK_INTERVAL`, ...).
//!
//! | variable | default | meaning |
//! |---|---|---|
//! | `RECOVERY_INTERVAL` | 60 | cooldown between recovery cycles, seconds (adaptive: its maximum) |
//! | `MAX_RECOVERY_ATTEMPTS` | 3 | attempts per cycle before the cycle is exhausted |
//! | `RECOVERY_MODE` | `adaptive` | `adaptive` (retry exhausted cycles, adaptive cooldown) or `strict` (the seed's: manual intervention after an exhausted cycle) |
//! | `RECOVERY_BACKOFF` | 2.0 | backoff multiplier between attempts (>= 1.0) |
//! | `RECOVERY_ATTEMPT_TIMEOUT` | 10 | time allowed for one attempt, seconds |
//! | `STARTUP_TIMEOUT` | 300 | max wait for required dependencies, seconds |
//! | `DEPENDENCY_CHECK_INTERVAL` | 5 | startup check interval, seconds |
//! | `HEALTH_CHECK_INTERVAL` | 30 | monitor interval, seconds |
//! | `HEALTH_HISTORY_SIZE` | 100 | results kept per dependency |
//! | `SHUTDOWN_GRACE_PERIOD` | 30 | longest wait for in-flight requests, seconds |
//! | `PRE_DRAIN_DELAY` | 0 | serving after readiness fails, seconds |
//! | `ADMIN_TOKEN` | unset | bearer token of the admin POST routes |
//!
//! Durations accept decimals (`0.5`), so tests can run the whole sequence in
//! seconds.
//!
//! ```
//! use std::time::Duration;
//! use tower_recovery::config::Settings;
//!
//! let env = [("FIR_HEALTH_CHECK_INTERVAL", "10"), ("FIR_RECOVERY_BACKOFF", "1.5")];
//! let settings = Settings::from_lookup("FIR_", |k| {
//!     env.iter().find(|(name, _)| *name == k).map(|(_, v)| v.to_string())
//! })
//! .unwrap();
//! assert_eq!(settings.health_check_interval, Duration::from_secs(10));
//! assert_eq!(settings.recovery_backoff, 1.5);
//! assert_eq!(settings.max_recovery_attempts, 3);
//!
//! let err = Settings::from_lookup("", |k| (k == "RECOVERY_BACKOFF").then(|| "0.5".into())).unwrap_err();
//! assert_eq!(
//!     err.to_string(),
//!     "invalid RECOVERY_BACKOFF=\"0.5\": expected a number >= 1.0"
//! );
//! ```

use std::fmt;
use std::time::Duration;

/// The settings, with the seed's defaults.
#[derive(Clone, Debug, PartialEq)]
pub struct Settings {
    /// `RECOVERY_INTERVAL`: cooldown after a successful recovery.
    pub recovery_interval: Duration,
    /// `MAX_RECOVERY_ATTEMPTS`.
    pub max_recovery_attempts: u32,
    /// `RECOVERY_MODE=strict`: the seed's rules (see
    /// [`recovery::Mode`](crate::recovery::Mode)); `adaptive` (the default)
    /// is false.
    pub strict_recovery: bool,
    /// `RECOVERY_BACKOFF`: multiplier between attempts.
    pub recovery_backoff: f64,
    /// `RECOVERY_ATTEMPT_TIMEOUT`.
    pub recovery_attempt_timeout: Duration,
    /// `STARTUP_TIMEOUT`.
    pub startup_timeout: Duration,
    /// `DEPENDENCY_CHECK_INTERVAL`.
    pub dependency_check_interval: Duration,
    /// `HEALTH_CHECK_INTERVAL`.
    pub health_check_interval: Duration,
    /// `HEALTH_HISTORY_SIZE`.
    pub health_history_size: usize,
    /// `SHUTDOWN_GRACE_PERIOD`.
    pub shutdown_grace_period: Duration,
    /// `PRE_DRAIN_DELAY`.
    pub pre_drain_delay: Duration,
    /// `ADMIN_TOKEN`.
    pub admin_token: Option<String>,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            recovery_interval: Duration::from_secs(60),
            max_recovery_attempts: 3,
            strict_recovery: false,
            recovery_backoff: 2.0,
            recovery_attempt_timeout: Duration::from_secs(10),
            startup_timeout: Duration::from_secs(300),
            dependency_check_interval: Duration::from_secs(5),
            health_check_interval: Duration::from_secs(30),
            health_history_size: 100,
            shutdown_grace_period: Duration::from_secs(30),
            pre_drain_delay: Duration::ZERO,
            admin_token: None,
        }
    }
}

/// A bad setting: the variable, its value, and what was expected.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigError {
    /// The variable, with its prefix.
    pub variable: String,
    /// The value found (not shown for secrets).
    pub value: String,
    /// What would have been accepted.
    pub expected: &'static str,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "invalid {}={:?}: expected {}",
            self.variable, self.value, self.expected
        )
    }
}

impl std::error::Error for ConfigError {}

/// Every bad setting found: all are reported at once, in the order of the
/// table above, so that one run names everything to fix.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigErrors {
    errors: Vec<ConfigError>,
}

impl ConfigErrors {
    /// Each bad setting (never empty).
    pub fn errors(&self) -> &[ConfigError] {
        &self.errors
    }
}

/// One setting per line.
impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.errors.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            e.fmt(f)?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

/// Where `variable` (with `prefix`) sits in the table of settings.
fn rank(variable: &str, prefix: &str) -> usize {
    const ORDER: [&str; 12] = [
        "RECOVERY_INTERVAL",
        "MAX_RECOVERY_ATTEMPTS",
        "RECOVERY_MODE",
        "RECOVERY_BACKOFF",
        "RECOVERY_ATTEMPT_TIMEOUT",
        "STARTUP_TIMEOUT",
        "DEPENDENCY_CHECK_INTERVAL",
        "HEALTH_CHECK_INTERVAL",
        "HEALTH_HISTORY_SIZE",
        "SHUTDOWN_GRACE_PERIOD",
        "PRE_DRAIN_DELAY",
        "ADMIN_TOKEN",
    ];
    let name = variable.strip_prefix(prefix).unwrap_or(variable);
    ORDER.iter().position(|n| *n == name).unwrap_or(ORDER.len())
}

fn invalid(variable: String, value: &str, expected: &'static str) -> ConfigError {
    ConfigError {
        variable,
        value: value.to_string(),
        expected,
    }
}

struct Reader<'a, F> {
    prefix: &'a str,
    lookup: F,
}

impl<F: Fn(&str) -> Option<String>> Reader<'_, F> {
    fn raw(&self, name: &str) -> (String, Option<String>) {
        let variable = format!("{}{name}", self.prefix);
        let value = (self.lookup)(&variable);
        (variable, value)
    }

    fn seconds(
        &self,
        name: &str,
        default: Duration,
        allow_zero: bool,
    ) -> Result<Duration, ConfigError> {
        let (variable, value) = self.raw(name);
        let Some(value) = value else {
            return Ok(default);
        };
        let expected = if allow_zero {
            "a number of seconds >= 0"
        } else {
            "a number of seconds > 0"
        };
        let secs: f64 = value
            .trim()
            .parse()
            .map_err(|_| invalid(variable.clone(), &value, expected))?;
        if !secs.is_finite() || secs < 0.0 || (!allow_zero && secs == 0.0) || secs > 1e9 {
            return Err(invalid(variable, &value, expected));
        }
        Ok(Duration::from_secs_f64(secs))
    }

    fn count(&self, name: &str, default: u64, max: u64) -> Result<u64, ConfigError> {
        let (variable, value) = self.raw(name);
        let Some(value) = value else {
            return Ok(default);
        };
        let n: u64 = value
            .trim()
            .parse()
            .map_err(|_| invalid(variable.clone(), &value, "a whole number >= 1"))?;
        if n == 0 || n > max {
            return Err(invalid(variable, &value, "a whole number >= 1"));
        }
        Ok(n)
    }
}

impl Settings {
    /// Reads the process environment, without a prefix.
    pub fn from_env() -> Result<Self, ConfigErrors> {
        Self::from_env_prefixed("")
    }

    /// Reads the process environment, each variable name preceded by
    /// `prefix`.
    pub fn from_env_prefixed(prefix: &str) -> Result<Self, ConfigErrors> {
        Self::from_lookup(prefix, |name| std::env::var(name).ok())
    }

    /// Reads variables through `lookup` (for tests, or another source).
    pub fn from_lookup(
        prefix: &str,
        lookup: impl Fn(&str) -> Option<String>,
    ) -> Result<Self, ConfigErrors> {
        let r = Reader { prefix, lookup };
        let d = Self::default();
        let mut errors = Vec::new();
        let mut ok = |result: Result<Duration, ConfigError>, default: Duration| {
            result.unwrap_or_else(|e| {
                errors.push(e);
                default
            })
        };
        let recovery_interval = ok(
            r.seconds("RECOVERY_INTERVAL", d.recovery_interval, true),
            d.recovery_interval,
        );
        let max_recovery_attempts = r.count("MAX_RECOVERY_ATTEMPTS", 3, u64::from(u32::MAX));
        let strict_recovery = {
            let (variable, value) = r.raw("RECOVERY_MODE");
            match value.as_deref().map(|v| v.trim().to_ascii_lowercase()) {
                None => Ok(false),
                Some(v) if v == "adaptive" => Ok(false),
                Some(v) if v == "strict" => Ok(true),
                Some(_) => Err(invalid(
                    variable,
                    value.as_deref().unwrap_or_default(),
                    "adaptive or strict",
                )),
            }
        };
        let backoff = {
            let (variable, value) = r.raw("RECOVERY_BACKOFF");
            match value {
                None => Ok(d.recovery_backoff),
                Some(value) => {
                    let expected = "a number >= 1.0";
                    match value.trim().parse::<f64>() {
                        Ok(m) if m.is_finite() && m >= 1.0 => Ok(m),
                        _ => Err(invalid(variable, &value, expected)),
                    }
                }
            }
        };
        let recovery_attempt_timeout = ok(
            r.seconds(
                "RECOVERY_ATTEMPT_TIMEOUT",
                d.recovery_attempt_timeout,
                false,
            ),
            d.recovery_attempt_timeout,
        );
        let startup_timeout = ok(
            r.seconds("STARTUP_TIMEOUT", d.startup_timeout, false),
            d.startup_timeout,
        );
        let dependency_check_interval = ok(
            r.seconds(
                "DEPENDENCY_CHECK_INTERVAL",
                d.dependency_check_interval,
                false,
            ),
            d.dependency_check_interval,
        );
        let health_check_interval = ok(
            r.seconds("HEALTH_CHECK_INTERVAL", d.health_check_interval, false),
            d.health_check_interval,
        );
        let health_history_size = r.count("HEALTH_HISTORY_SIZE", 100, 1_000_000);
        let shutdown_grace_period = ok(
            r.seconds("SHUTDOWN_GRACE_PERIOD", d.shutdown_grace_period, false),
            d.shutdown_grace_period,
        );
        let pre_drain_delay = ok(
            r.seconds("PRE_DRAIN_DELAY", d.pre_drain_delay, true),
            d.pre_drain_delay,
        );
        let admin_token = {
            let (variable, value) = r.raw("ADMIN_TOKEN");
            match value {
                Some(v) if v.trim().is_empty() => Err(ConfigError {
                    variable,
                    value: v,
                    expected: "a non-empty token (unset the variable to disable admin POST routes)",
                }),
                other => Ok(other),
            }
        };
        let max_recovery_attempts = max_recovery_attempts.map_err(|e| errors.push(e)).ok();
        let strict_recovery = strict_recovery.map_err(|e| errors.push(e)).ok();
        let backoff = backoff.map_err(|e| errors.push(e)).ok();
        let health_history_size = health_history_size.map_err(|e| errors.push(e)).ok();
        let admin_token = admin_token.map_err(|e| errors.push(e)).ok();
        // In the order of the table.
        errors.sort_by_key(|e| rank(&e.variable, prefix));
        if !errors.is_empty() {
            return Err(ConfigErrors { errors });
        }
        Ok(Self {
            recovery_interval,
            max_recovery_attempts: max_recovery_attempts.unwrap_or(3) as u32,
            strict_recovery: strict_recovery.unwrap_or(false),
            recovery_backoff: backoff.unwrap_or(d.recovery_backoff),
            recovery_attempt_timeout,
            startup_timeout,
            dependency_check_interval,
            health_check_interval,
            health_history_size: health_history_size.unwrap_or(100) as usize,
            shutdown_grace_period,
            pre_drain_delay,
            admin_token: admin_token.flatten(),
        })
    }

    /// The recovery backoff these settings describe: 1 s base, growing by
    /// `RECOVERY_BACKOFF` (2 s, then 4 s by default).
    #[cfg(feature = "recovery")]
    pub fn backoff(&self) -> crate::recovery::Backoff {
        crate::recovery::Backoff::new(Duration::from_secs(1), self.recovery_backoff)
    }

    /// The recovery mode `RECOVERY_MODE` names: adaptive (the default, with
    /// its default settings) or strict.
    #[cfg(feature = "recovery")]
    pub fn recovery_mode(&self) -> crate::recovery::Mode {
        if self.strict_recovery {
            crate::recovery::Mode::Strict
        } else {
            crate::recovery::Mode::default()
        }
    }
}
