//! Settings from the environment: every variable, defaults, each kind of bad
//! value, the prefix.

use std::collections::HashMap;
use std::time::Duration;

use tower_recovery::config::{ConfigError, ConfigErrors, Settings};

fn read(prefix: &str, vars: &[(&str, &str)]) -> Result<Settings, ConfigErrors> {
    let env: HashMap<String, String> = vars
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    Settings::from_lookup(prefix, |k| env.get(k).cloned())
}

#[test]
fn defaults_are_the_seeds() {
    let s = read("", &[]).unwrap();
    assert_eq!(s, Settings::default());
    assert_eq!(s.recovery_interval, Duration::from_secs(60));
    assert_eq!(s.max_recovery_attempts, 3);
    assert_eq!(s.recovery_backoff, 2.0);
    assert_eq!(s.recovery_attempt_timeout, Duration::from_secs(10));
    assert_eq!(s.startup_timeout, Duration::from_secs(300));
    assert_eq!(s.dependency_check_interval, Duration::from_secs(5));
    assert_eq!(s.health_check_interval, Duration::from_secs(30));
    assert_eq!(s.health_history_size, 100);
    assert_eq!(s.shutdown_grace_period, Duration::from_secs(30));
    assert_eq!(s.pre_drain_delay, Duration::ZERO);
    assert_eq!(s.admin_token, None);
    assert_eq!(s.backoff().nominal(2), Duration::from_secs(2));
    assert_eq!(s.backoff().nominal(3), Duration::from_secs(4));
}

#[test]
fn every_variable_is_read() {
    let s = read(
        "",
        &[
            ("RECOVERY_INTERVAL", "0"),
            ("MAX_RECOVERY_ATTEMPTS", "5"),
            ("RECOVERY_BACKOFF", "1.5"),
            ("RECOVERY_ATTEMPT_TIMEOUT", "2.5"),
            ("STARTUP_TIMEOUT", "20"),
            ("DEPENDENCY_CHECK_INTERVAL", "0.2"),
            ("HEALTH_CHECK_INTERVAL", " 1 "),
            ("HEALTH_HISTORY_SIZE", "7"),
            ("SHUTDOWN_GRACE_PERIOD", "3"),
            ("PRE_DRAIN_DELAY", "0.5"),
            ("ADMIN_TOKEN", "tok"),
        ],
    )
    .unwrap();
    assert_eq!(s.recovery_interval, Duration::ZERO);
    assert_eq!(s.max_recovery_attempts, 5);
    assert_eq!(s.recovery_backoff, 1.5);
    assert_eq!(s.recovery_attempt_timeout, Duration::from_millis(2500));
    assert_eq!(s.startup_timeout, Duration::from_secs(20));
    assert_eq!(s.dependency_check_interval, Duration::from_millis(200));
    assert_eq!(s.health_check_interval, Duration::from_secs(1));
    assert_eq!(s.health_history_size, 7);
    assert_eq!(s.shutdown_grace_period, Duration::from_secs(3));
    assert_eq!(s.pre_drain_delay, Duration::from_millis(500));
    assert_eq!(s.admin_token.as_deref(), Some("tok"));
}

#[test]
fn bad_values_name_the_variable_the_value_and_what_is_expected() {
    let cases: &[(&str, &str, &str)] = &[
        ("HEALTH_CHECK_INTERVAL", "thirty", "a number of seconds > 0"),
        ("HEALTH_CHECK_INTERVAL", "-5", "a number of seconds > 0"),
        ("HEALTH_CHECK_INTERVAL", "0", "a number of seconds > 0"),
        (
            "DEPENDENCY_CHECK_INTERVAL",
            "NaN",
            "a number of seconds > 0",
        ),
        ("STARTUP_TIMEOUT", "inf", "a number of seconds > 0"),
        ("SHUTDOWN_GRACE_PERIOD", "", "a number of seconds > 0"),
        ("RECOVERY_ATTEMPT_TIMEOUT", "0", "a number of seconds > 0"),
        ("RECOVERY_INTERVAL", "-1", "a number of seconds >= 0"),
        ("PRE_DRAIN_DELAY", "soon", "a number of seconds >= 0"),
        ("MAX_RECOVERY_ATTEMPTS", "0", "a whole number >= 1"),
        ("MAX_RECOVERY_ATTEMPTS", "2.5", "a whole number >= 1"),
        ("MAX_RECOVERY_ATTEMPTS", "-3", "a whole number >= 1"),
        ("HEALTH_HISTORY_SIZE", "0", "a whole number >= 1"),
        ("RECOVERY_BACKOFF", "0.9", "a number >= 1.0"),
        ("RECOVERY_BACKOFF", "two", "a number >= 1.0"),
        ("RECOVERY_BACKOFF", "inf", "a number >= 1.0"),
        (
            "ADMIN_TOKEN",
            "",
            "a non-empty token (unset the variable to disable admin POST routes)",
        ),
        (
            "ADMIN_TOKEN",
            "   ",
            "a non-empty token (unset the variable to disable admin POST routes)",
        ),
    ];
    for (variable, value, expected) in cases {
        let err = read("", &[(variable, value)]).unwrap_err();
        assert_eq!(
            err.errors(),
            [ConfigError {
                variable: variable.to_string(),
                value: value.to_string(),
                expected
            }],
            "{variable}={value:?}"
        );
        let text = err.to_string();
        assert!(
            text.contains(variable)
                && text.contains(&format!("{value:?}"))
                && text.contains(expected),
            "{text}"
        );
    }
}

#[test]
fn a_prefix_configures_two_services_apart() {
    let vars = [
        ("MODEL_HEALTH_CHECK_INTERVAL", "10"),
        ("DB_HEALTH_CHECK_INTERVAL", "2"),
        ("HEALTH_CHECK_INTERVAL", "99"),
        ("DB_RECOVERY_BACKOFF", "0"),
    ];
    let model = read("MODEL_", &vars).unwrap();
    assert_eq!(model.health_check_interval, Duration::from_secs(10));
    let err = read("DB_", &vars).unwrap_err();
    assert_eq!(
        err.errors()[0].variable,
        "DB_RECOVERY_BACKOFF",
        "the error names the prefixed variable"
    );
    let plain = read("", &vars).unwrap();
    assert_eq!(plain.health_check_interval, Duration::from_secs(99));
}

#[test]
fn reads_the_process_environment() {
    // A variable no other test sets, read through the real environment.
    let s = Settings::from_env_prefixed("TOWER_RECOVERY_TEST_UNSET_").unwrap();
    assert_eq!(s, Settings::default());
}

#[test]
fn every_bad_setting_is_reported_at_once_in_table_order() {
    // Issue 12: the first bad setting used to hide the others.
    let err = read(
        "APP_",
        &[
            ("APP_ADMIN_TOKEN", " "),
            ("APP_HEALTH_CHECK_INTERVAL", "soon"),
            ("APP_RECOVERY_BACKOFF", "0.5"),
            ("APP_MAX_RECOVERY_ATTEMPTS", "0"),
            ("APP_STARTUP_TIMEOUT", "60"),
        ],
    )
    .unwrap_err();
    let named: Vec<&str> = err.errors().iter().map(|e| e.variable.as_str()).collect();
    assert_eq!(
        named,
        [
            "APP_MAX_RECOVERY_ATTEMPTS",
            "APP_RECOVERY_BACKOFF",
            "APP_HEALTH_CHECK_INTERVAL",
            "APP_ADMIN_TOKEN"
        ]
    );
    assert_eq!(err.to_string().lines().count(), 4, "{err}");
}
