//! Model checking of trigger coalescing with `loom`. Run with
//! `RUSTFLAGS="--cfg tower_recovery_loom" cargo test --lib loom`.
//!
//! Invariant: concurrent triggers start exactly one cycle, and the task is
//! handed exactly one attempt for it.

use std::sync::Arc;
use std::time::Duration;

use loom::thread;
use tokio::sync::Notify;

use super::machine::{Effect, Kind, Machine, Rules};
use super::{Backoff, Config, Seen, Shared, State, TriggerOutcome};
use crate::sync::Mutex;
use crate::sync::atomic::{AtomicBool, AtomicU32};

fn shared() -> Arc<Shared> {
    Arc::new(Shared {
        name: "loom".into(),
        label: "loom".into(),
        cfg: Config {
            mode: super::Mode::Strict,
            max_attempts: 3,
            backoff: Backoff::default(),
            attempt_timeout: Duration::from_secs(10),
            trigger_after: 3,
        },
        breaker: None,
        state: Mutex::new(State {
            machine: Machine::new(Rules {
                max_attempts: 3,
                cooldown: Duration::from_secs(60),
                adaptive: None,
                jitter_seed: 0,
            }),
            seen: Seen::default(),
            effects: Vec::new(),
        }),
        wake: Notify::new(),
        changed: Notify::new(),
        busy: AtomicBool::new(false),
        stopped: AtomicBool::new(false),
        layer_failures: AtomicU32::new(0),
        layer_down: AtomicBool::new(false),
        returned: crate::sync::atomic::AtomicU64::new(0),
        gate: std::sync::OnceLock::new(),
        waiting_for: Mutex::new(None),
        // The crate's dev-dependency on itself (for the demo) turns the
        // fleet on in every test build.
        #[cfg(feature = "fleet")]
        fleet: None,
    })
}

#[test]
fn concurrent_triggers_start_one_cycle() {
    let mut builder = loom::model::Builder::new();
    builder.preemption_bound = Some(3);
    builder.check(|| {
        let shared = shared();
        let threads: Vec<_> = [Kind::Automatic, Kind::Manual]
            .into_iter()
            .map(|kind| {
                let shared = shared.clone();
                thread::spawn(move || shared.trigger(kind))
            })
            .collect();
        let mine = shared.trigger(Kind::Automatic);
        let mut outcomes: Vec<_> = threads.into_iter().map(|t| t.join().unwrap()).collect();
        outcomes.push(mine);
        let started = outcomes
            .iter()
            .filter(|o| **o == TriggerOutcome::Started)
            .count();
        assert_eq!(started, 1, "{outcomes:?}");
        assert!(
            outcomes
                .iter()
                .all(|o| matches!(o, TriggerOutcome::Started | TriggerOutcome::AlreadyRunning))
        );
        let state = crate::sync::lock(&shared.state);
        let attempts = state
            .effects
            .iter()
            .filter(|e| matches!(e, Effect::Attempt { .. }))
            .count();
        assert_eq!(attempts, 1, "one attempt handed to the task");
    });
}
