//! Escalation ladders: a recovery that tries harder as it fails.

use std::fmt;
use std::sync::Arc;

use super::{BoxFuture, RecoveryAction};

type Step = Box<dyn Fn() -> BoxFuture + Send + Sync>;

fn boxed<A: RecoveryAction>(action: A) -> Step {
    Box::new(move || {
        let fut = action.recover();
        Box::pin(async move { fut.await.map_err(|e| e.to_string()) })
    })
}

struct Rung {
    name: Arc<str>,
    attempts: u32,
    action: Step,
}

/// A recovery action made of rungs, each tried for its own number of
/// attempts before the next: reconnect, then recreate the pool, then fail
/// over to a standby, then page a person. A verification probe, if set,
/// must pass after a rung's action succeeds, or the attempt fails: the
/// breaker is closed only when the dependency works, not when an action
/// returned `Ok`. The seed's single action is the one-rung case.
///
/// A cycle makes the sum of the rungs' attempts (the recovery's
/// `max_attempts` unless set otherwise; past the last rung, attempts run
/// the last rung). The backoff applies between every two attempts, as
/// for a single action.
///
/// ```
/// use std::sync::{Arc, Mutex};
/// use tower_recovery::recovery::{Ladder, Recovery, RecoveryState};
///
/// # #[tokio::main(flavor = "current_thread", start_paused = true)]
/// # async fn main() {
/// let ran = Arc::new(Mutex::new(Vec::new()));
/// let step = |name: &'static str, works: bool| {
///     let ran = ran.clone();
///     move || {
///         ran.lock().unwrap().push(name);
///         async move { if works { Ok(()) } else { Err("refused") } }
///     }
/// };
/// let ladder = Ladder::new()
///     .rung("reconnect", 2, step("reconnect", false))
///     .rung("recreate the pool", 1, step("recreate the pool", false))
///     .rung("fail over to the standby", 1, step("fail over to the standby", true))
///     .verify(|| async { Ok::<_, String>(()) });
/// let recovery = Recovery::builder("database", ladder).spawn();
/// assert_eq!(recovery.status().max_attempts, 4);
/// recovery.trigger_automatic("SELECT 1 failed");
/// recovery.wait_idle_or_cooling().await;
/// assert_eq!(recovery.status().state, RecoveryState::CoolingDown);
/// assert_eq!(
///     *ran.lock().unwrap(),
///     ["reconnect", "reconnect", "recreate the pool", "fail over to the standby"]
/// );
/// # }
/// ```
#[derive(Default)]
pub struct Ladder {
    rungs: Vec<Rung>,
    verify: Option<Arc<Step>>,
}

impl fmt::Debug for Ladder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Ladder")
            .field(
                "rungs",
                &self
                    .rungs
                    .iter()
                    .map(|r| (&*r.name, r.attempts))
                    .collect::<Vec<_>>(),
            )
            .field("verify", &self.verify.is_some())
            .finish()
    }
}

impl Ladder {
    /// A ladder with no rung yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a rung: `action`, tried `attempts` times.
    ///
    /// # Panics
    /// If `attempts` is zero.
    pub fn rung(
        mut self,
        name: impl Into<Arc<str>>,
        attempts: u32,
        action: impl RecoveryAction,
    ) -> Self {
        assert!(attempts > 0, "a rung needs at least 1 attempt");
        self.rungs.push(Rung {
            name: name.into(),
            attempts,
            action: boxed(action),
        });
        self
    }

    /// The probe that must pass after a rung's action succeeds (a `SELECT 1`,
    /// the model listed by the server) for the attempt to count as a
    /// success.
    pub fn verify(mut self, probe: impl RecoveryAction) -> Self {
        self.verify = Some(Arc::new(boxed(probe)));
        self
    }

    /// The rung attempt `attempt` (1-based) runs, and which try of that rung
    /// it is.
    fn rung_for(&self, attempt: u32) -> Option<(&Rung, u32, u32)> {
        let mut first: u32 = 1;
        for rung in &self.rungs {
            if attempt < first.saturating_add(rung.attempts) {
                return Some((rung, attempt - first + 1, rung.attempts));
            }
            first = first.saturating_add(rung.attempts);
        }
        let last = self.rungs.last()?;
        Some((last, last.attempts, last.attempts))
    }
}

impl RecoveryAction for Ladder {
    type Error = String;
    type Future = BoxFuture;

    fn recover(&self) -> BoxFuture {
        self.recover_attempt(1)
    }

    fn recover_attempt(&self, attempt: u32) -> BoxFuture {
        let Some((rung, try_, tries)) = self.rung_for(attempt) else {
            return Box::pin(std::future::ready(
                Err("the ladder has no rung".to_string()),
            ));
        };
        let name = rung.name.clone();
        tracing::info!(rung = &*name, "Recovery rung '{name}' (try {try_}/{tries})");
        let action = (rung.action)();
        let verify = self.verify.clone();
        Box::pin(async move {
            action.await.map_err(|e| format!("rung '{name}': {e}"))?;
            // Made only now: the probe runs after the action succeeded.
            if let Some(verify) = verify {
                verify()
                    .await
                    .map_err(|e| format!("rung '{name}' done, but verification failed: {e}"))?;
            }
            Ok(())
        })
    }

    fn attempts(&self) -> Option<u32> {
        (!self.rungs.is_empty()).then(|| {
            self.rungs
                .iter()
                .fold(0u32, |sum, r| sum.saturating_add(r.attempts))
        })
    }
}
