//! Alerts: a structured event when a recovery gives up, and where it goes.
//!
//! A recovery whose cycle ends exhausted sends an [`AlertEvent`] to each of
//! its sinks ([`Builder::alert`](super::Builder::alert)): the dependency, its
//! state, the attempts made, the last error, since when it is down, and the
//! root cause (the prerequisite it waits for, see
//! [`Dependency::needs`](crate::health::Dependency::needs), or the dependency
//! itself). In adaptive mode that is once per outage; in strict mode once
//! per exhausted cycle.
//!
//! A sink is anything that implements [`Alert`]: a closure, [`LogAlert`], or
//! (feature `webhook`) [`WebhookAlert`](super::WebhookAlert), a JSON POST
//! with retries, a rate limit and deduplication. Sinks are called on the
//! recovery's task with no lock held, and must not block it: one that does
//! I/O hands the event to its own task.
//!
//! ```
//! use std::sync::{Arc, Mutex};
//! use tower_recovery::recovery::{AlertEvent, LogAlert, Recovery, RecoveryState};
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() {
//! let seen = Arc::new(Mutex::new(Vec::new()));
//! let recovery = Recovery::builder("storage", || async {
//!     Err::<(), _>("connection refused")
//! })
//! .max_attempts(1)
//! .alert(LogAlert)
//! .alert({
//!     let seen = seen.clone();
//!     move |event: &AlertEvent| seen.lock().unwrap().push(event.clone())
//! })
//! .spawn();
//! recovery.trigger_automatic("SELECT 1 failed");
//! recovery.wait_for(|s| s == RecoveryState::Exhausted).await;
//! let seen = seen.lock().unwrap();
//! assert_eq!(seen.len(), 1);
//! assert_eq!(&*seen[0].dependency, "storage");
//! assert_eq!(&*seen[0].root_cause, "storage");
//! assert_eq!(seen[0].last_error.as_deref(), Some("connection refused"));
//! # }
//! ```

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use super::{RecoveryState, Status};

/// What happened, for a person or a pager.
#[derive(Clone, Debug, PartialEq)]
pub struct AlertEvent {
    /// What the alert is about: `"exhausted"`, a recovery that gave up.
    pub kind: &'static str,
    /// The dependency whose recovery sent it.
    pub dependency: Arc<str>,
    /// The recovery's state when it was sent.
    pub state: RecoveryState,
    /// Attempts made in the cycle that ended.
    pub attempts: u32,
    /// Attempts a cycle makes.
    pub max_attempts: u32,
    /// Why the last attempt failed.
    pub last_error: Option<String>,
    /// When the outage began (wall clock), if one is open.
    pub since: Option<SystemTime>,
    /// The dependency at the root of the trouble: the deepest prerequisite
    /// that is down when the alert is made (see
    /// [`Dependency::needs`](crate::health::Dependency::needs)), or this one.
    pub root_cause: Arc<str>,
    /// Cycles that ended exhausted so far.
    pub exhausted_cycles: u64,
    /// When the alert was made (wall clock).
    pub at: SystemTime,
}

impl AlertEvent {
    /// The event for a recovery whose cycle just ended exhausted.
    pub(crate) fn exhausted(status: &Status, root_cause: Option<Arc<str>>) -> Self {
        let at = SystemTime::now();
        Self {
            kind: "exhausted",
            dependency: status.name.clone(),
            state: status.state,
            attempts: status.attempt,
            max_attempts: status.max_attempts,
            last_error: status.last_error.clone(),
            since: status.record.open_outage.map(|d| at - d),
            root_cause: root_cause.unwrap_or_else(|| status.name.clone()),
            exhausted_cycles: status.exhausted_cycles,
            at,
        }
    }

    /// How long the dependency has been down, if an outage is open.
    pub fn down_for(&self) -> Option<Duration> {
        self.since.and_then(|s| self.at.duration_since(s).ok())
    }
}

/// Where alerts go. Called on the recovery's task with no lock held; must
/// return quickly (a sink that does I/O queues the event for its own task).
pub trait Alert: Send + Sync + 'static {
    /// Sends `event`.
    fn alert(&self, event: &AlertEvent);
}

impl<F> Alert for F
where
    F: Fn(&AlertEvent) + Send + Sync + 'static,
{
    fn alert(&self, event: &AlertEvent) {
        self(event)
    }
}

/// A sink that may not be there (one configured or not).
impl<A: Alert> Alert for Option<A> {
    fn alert(&self, event: &AlertEvent) {
        if let Some(sink) = self {
            sink.alert(event);
        }
    }
}

/// Writes each alert as one `tracing` event at error level, every field
/// structured.
#[derive(Clone, Copy, Debug, Default)]
pub struct LogAlert;

impl Alert for LogAlert {
    fn alert(&self, event: &AlertEvent) {
        tracing::error!(
            alert = event.kind,
            dependency = &*event.dependency,
            root_cause = &*event.root_cause,
            state = event.state.as_str(),
            attempts = event.attempts,
            max_attempts = event.max_attempts,
            last_error = event.last_error.as_deref().unwrap_or(""),
            down_for_s = event.down_for().map(|d| d.as_secs_f64()),
            "ALERT: recovery of {} {} (root cause: {})",
            event.dependency,
            event.kind,
            event.root_cause
        );
    }
}
