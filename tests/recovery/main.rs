//! Recovery rules on paused tokio time, one test per rule.

#[path = "../common/captured_logs.rs"]
mod captured_logs;
mod http_e2e;
mod regressions;
mod rules;
#[cfg(feature = "webhook")]
mod webhook;

/// Lets the recovery's task run until `cond` holds; fails the test, naming
/// `what`, if it does not within 1,000 scheduler turns (time stands still).
async fn eventually(what: &str, cond: impl Fn() -> bool) {
    for _ in 0..1_000 {
        if cond() {
            return;
        }
        tokio::task::yield_now().await;
    }
    panic!("never happened: {what}");
}

/// A recovery under the seed's strict rules (fixed cooldown, stop when
/// exhausted): what these tests pin down. The adaptive default has its own
/// tests in `rules.rs`.
fn strict<A: tower_recovery::recovery::RecoveryAction>(
    name: &str,
    action: A,
) -> tower_recovery::recovery::Builder {
    tower_recovery::recovery::Recovery::builder(name, action)
        .mode(tower_recovery::recovery::Mode::Strict)
}
