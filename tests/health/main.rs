//! Health checks, the startup gate and the monitor, on paused tokio time.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use tokio::time::Instant;
use tower_recovery::circuit_breaker::Breaker;
use tower_recovery::health::{
    BuildError, CheckResult, Dependency, HealthCheck, HealthStatus, Monitor, Reliability,
};
use tower_recovery::recovery::{Recovery, RecoveryState};

const S: Duration = Duration::from_secs(1);

/// A check that passes once `t0 + after` is reached.
fn up_after(t0: Instant, after: Duration) -> HealthCheck {
    HealthCheck::new(move || async move {
        if Instant::now() >= t0 + after {
            Ok(())
        } else {
            Err("connection refused")
        }
    })
}

/// A check whose health is switched from the test, counting its runs.
#[derive(Clone, Default)]
struct Switch {
    up: Arc<AtomicBool>,
    runs: Arc<AtomicU64>,
}

impl Switch {
    fn up() -> Self {
        let s = Self::default();
        s.up.store(true, Ordering::SeqCst);
        s
    }
    fn check(&self) -> HealthCheck {
        let me = self.clone();
        HealthCheck::new(move || {
            let me = me.clone();
            async move {
                me.runs.fetch_add(1, Ordering::SeqCst);
                if me.up.load(Ordering::SeqCst) {
                    Ok(())
                } else {
                    Err("down")
                }
            }
        })
    }
    fn set(&self, up: bool) {
        self.up.store(up, Ordering::SeqCst);
    }
    fn runs(&self) -> u64 {
        self.runs.load(Ordering::SeqCst)
    }
}

fn hanging(for_: Duration) -> HealthCheck {
    HealthCheck::new(move || async move {
        tokio::time::sleep(for_).await;
        Ok::<_, String>(())
    })
}

#[tokio::test(start_paused = true)]
async fn gate_passes_when_dependencies_come_up_at_different_times() {
    let t0 = Instant::now();
    let set = Reliability::builder()
        .dependency(Dependency::new("model_server", up_after(t0, 7 * S)))
        .dependency(Dependency::new("database", up_after(t0, 12 * S)))
        .build()
        .unwrap();
    let gate = tokio::spawn({
        let set = set.clone();
        async move { set.wait_for_dependencies(5 * S, 300 * S).await }
    });
    tokio::time::sleep(11 * S).await;
    assert!(!set.is_started(), "not ready while the database is down");
    let report = gate.await.unwrap().unwrap();
    assert_eq!(report.elapsed, 15 * S, "rounds at 0, 5, 10, 15 s");
    assert_eq!(report.rounds, 4);
    assert!(set.is_started());
}

#[tokio::test(start_paused = true)]
async fn gate_times_out_naming_each_required_dependency_still_failing() {
    let t0 = Instant::now();
    let set = Reliability::builder()
        .dependency(Dependency::new(
            "model_server",
            up_after(t0, Duration::MAX / 4),
        ))
        .dependency(Dependency::new("database", up_after(t0, S)))
        .dependency(Dependency::new(
            "asr_ocr_server",
            up_after(t0, Duration::MAX / 4),
        ))
        .dependency(Dependency::new("cache", up_after(t0, Duration::MAX / 4)).optional())
        .build()
        .unwrap();
    let err = set.wait_for_dependencies(5 * S, 20 * S).await.unwrap_err();
    assert_eq!(err.waited, 20 * S);
    let names: Vec<_> = err
        .failing
        .iter()
        .map(|(n, o)| (n.to_string(), o.clone()))
        .collect();
    assert_eq!(
        names,
        [
            ("model_server".to_string(), "connection refused".to_string()),
            (
                "asr_ocr_server".to_string(),
                "connection refused".to_string()
            )
        ]
    );
    let text = err.to_string();
    assert!(
        text.contains("model_server (connection refused)") && !text.contains("cache"),
        "{text}"
    );
    assert!(!set.is_started());
}

#[tokio::test(start_paused = true)]
async fn optional_dependencies_never_block() {
    let t0 = Instant::now();
    let set = Reliability::builder()
        .dependency(Dependency::new("database", up_after(t0, Duration::ZERO)))
        .dependency(Dependency::new("asr_ocr_server", up_after(t0, Duration::MAX / 4)).optional())
        .build()
        .unwrap();
    let report = set.wait_for_dependencies(5 * S, 300 * S).await.unwrap();
    assert_eq!((report.rounds, report.elapsed), (1, Duration::ZERO));
    assert_eq!(report.optional_failing, [Arc::from("asr_ocr_server")]);
    assert_eq!(set.status(), HealthStatus::Warn);
}

#[tokio::test(start_paused = true)]
async fn a_hanging_check_fails_at_its_timeout() {
    let set = Reliability::builder()
        .dependency(Dependency::new("database", hanging(Duration::from_secs(3600))).timeout(2 * S))
        .build()
        .unwrap();
    let t0 = Instant::now();
    let err = set.wait_for_dependencies(5 * S, 10 * S).await.unwrap_err();
    assert_eq!(err.failing[0].1, "check timed out after 2s");
    // Rounds at 0 and 5 s, each failing after 2 s; none starts at the 10 s
    // deadline, where the gate gives up.
    assert_eq!(t0.elapsed(), 10 * S);
}

/// Item 14: the gate's timeout is a bound. A 100 s gate with 30 s checks
/// used to give up at 120 s, at the end of the round in progress.
#[tokio::test(start_paused = true)]
async fn the_gate_gives_up_at_its_timeout_cutting_the_round_in_progress() {
    let set = Reliability::builder()
        .dependency(
            Dependency::new("model_server", hanging(Duration::from_secs(3600))).timeout(30 * S),
        )
        .dependency(Dependency::new("database", hanging(Duration::from_secs(3600))).timeout(30 * S))
        .dependency(Dependency::new(
            "database_replica",
            up_after(Instant::now(), 85 * S),
        ))
        .build()
        .unwrap();
    let t0 = Instant::now();
    let err = set.wait_for_dependencies(5 * S, 100 * S).await.unwrap_err();
    // Rounds at 0, 30, 60 and 90 s, the last cut at 100 s.
    assert_eq!(t0.elapsed(), 100 * S, "at its timeout, not at 120 s");
    assert_eq!(err.waited, 100 * S);
    let cut = "timed out at the startup deadline after 10s; last output: check timed out after 30s";
    assert_eq!(
        err.failing,
        [
            (Arc::from("model_server"), cut.to_string()),
            (Arc::from("database"), cut.to_string()),
        ],
        "the replica passed in the last round; the others are reported as timed out"
    );
    let report = set.report();
    let last = report.dependencies[0].last.as_ref().unwrap();
    assert_eq!(
        (last.status, last.output.as_deref(), last.duration),
        (HealthStatus::Fail, Some(cut), 10 * S)
    );
    assert!(!set.is_started());
}

#[tokio::test(start_paused = true)]
async fn readiness_flips_when_the_gate_passes() {
    let t0 = Instant::now();
    let set = Reliability::builder()
        .dependency(Dependency::new("database", up_after(t0, 6 * S)))
        .build()
        .unwrap();
    let ready = tokio::spawn({
        let set = set.clone();
        async move {
            set.wait_started().await;
            t0.elapsed()
        }
    });
    set.wait_for_dependencies(5 * S, 300 * S).await.unwrap();
    assert_eq!(ready.await.unwrap(), 10 * S);
}

#[tokio::test(start_paused = true)]
async fn history_is_bounded_at_its_size() {
    let dep = Switch::up();
    let set = Reliability::builder()
        .history_size(5)
        .dependency(Dependency::new("db", dep.check()).no_probe_while_down())
        .build()
        .unwrap();
    let monitor = Monitor::start(&set, 10 * S);
    tokio::time::sleep(Duration::from_millis(60_500)).await; // checks at 0..=60: 7 up
    dep.set(false);
    tokio::time::sleep(50 * S).await; // checks at 70..=110: 5 down
    let report = set.report();
    let db = &report.dependencies[0];
    assert_eq!(db.checks, 12);
    assert_eq!(
        db.uptime_percent,
        Some(0.0),
        "only the last 5 are kept, all down"
    );
    assert_eq!(db.consecutive_failures, 5);
    assert_eq!(report.status, HealthStatus::Fail);
    monitor.stop().await;
}

#[tokio::test(start_paused = true)]
async fn uptime_and_availability_are_exact() {
    let dep = Switch::up();
    let set = Reliability::builder()
        .dependency(Dependency::new("db", dep.check()).no_probe_while_down())
        .build()
        .unwrap();
    let monitor = Monitor::start(&set, 10 * S);
    // Results at 0, 10, 20 up; 30 down; 40, 50 up.
    tokio::time::sleep(Duration::from_millis(25_000)).await;
    dep.set(false);
    tokio::time::sleep(10 * S).await; // t = 35
    dep.set(true);
    tokio::time::sleep(Duration::from_millis(15_000)).await; // t = 50
    // The monitor's tick at 50 s fired with our wake-up: let it record.
    while dep.runs() < 6 {
        tokio::task::yield_now().await;
    }
    tokio::task::yield_now().await;
    let db = &set.report().dependencies[0];
    assert_eq!(db.checks, 6);
    assert_eq!(db.uptime_percent, Some(5.0 / 6.0 * 100.0));
    // Up [0, 30) and [40, 50): 40 s of 50.
    assert_eq!(db.availability_percent, Some(80.0));
    let last = db.last.as_ref().unwrap();
    assert_eq!(last.status, HealthStatus::Pass);
    assert_eq!(last.observed_unit, "ms");
    assert_eq!(last.observed_value, Some(0.0), "latency on paused time");
    monitor.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_failing_check_triggers_recovery_and_a_passing_one_ends_exhaustion() {
    let dep = Switch::up();
    let attempts = Arc::new(AtomicU64::new(0));
    let counter = attempts.clone();
    let recovery = Recovery::builder("db", move || {
        counter.fetch_add(1, Ordering::SeqCst);
        async { Err::<(), _>("still down") }
    })
    .spawn();
    let set = Reliability::builder()
        .dependency(Dependency::new("db", dep.check()).recovery(&recovery))
        .build()
        .unwrap();
    let monitor = Monitor::start(&set, 30 * S);
    tokio::time::sleep(S).await;
    assert_eq!(recovery.status().state, RecoveryState::Idle);
    dep.set(false);
    tokio::time::sleep(30 * S).await; // the check at 30 s fails
    assert_ne!(
        recovery.status().state,
        RecoveryState::Idle,
        "triggered by the monitor"
    );
    recovery.wait_idle_or_cooling().await;
    assert_eq!(recovery.status().state, RecoveryState::Exhausted);
    assert_eq!(attempts.load(Ordering::SeqCst), 3);
    dep.set(true);
    tokio::time::sleep(30 * S).await; // the check at 60 s passes
    assert_eq!(
        recovery.status().state,
        RecoveryState::Idle,
        "healed by the passing check"
    );
    assert_eq!(recovery.status().recoveries, 1);
    monitor.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_slow_check_does_not_delay_the_others() {
    let fast = Switch::up();
    let set = Reliability::builder()
        .dependency(Dependency::new("slow", hanging(25 * S)).timeout(60 * S))
        .dependency(Dependency::new("fast", fast.check()))
        .build()
        .unwrap();
    let monitor = Monitor::start(&set, 10 * S);
    tokio::time::sleep(Duration::from_millis(30_500)).await;
    let report = set.report();
    assert_eq!(
        report.dependencies[0].checks, 1,
        "slow: finished once, at 25 s"
    );
    assert_eq!(report.dependencies[1].checks, 4, "fast: 0, 10, 20, 30 s");
    assert_eq!(fast.runs(), 4);
    monitor.stop().await;
}

#[tokio::test(start_paused = true)]
async fn stop_is_clean() {
    let dep = Switch::up();
    let set = Reliability::builder()
        .dependency(Dependency::new("db", dep.check()))
        .build()
        .unwrap();
    let monitor = Monitor::start(&set, 10 * S);
    assert!(set.report().monitor_running);
    tokio::time::sleep(Duration::from_millis(20_500)).await;
    assert_eq!(dep.runs(), 3);
    monitor.stop().await;
    let report = set.report();
    assert!(!report.monitor_running);
    assert_eq!(report.monitor_interval, Some(10 * S));
    tokio::time::sleep(100 * S).await;
    assert_eq!(dep.runs(), 3, "no check after stop");
}

#[tokio::test(start_paused = true)]
async fn set_is_validated_when_built() {
    let check = || HealthCheck::new(|| async { Ok::<_, String>(()) });
    let err = Reliability::builder()
        .dependency(Dependency::new("db", check()))
        .dependency(Dependency::new("db", check()))
        .build()
        .unwrap_err();
    assert_eq!(err, BuildError::DuplicateName("db".into()));
    assert_eq!(err.to_string(), "dependency name \"db\" is used twice");
    let err = Reliability::builder().history_size(0).build().unwrap_err();
    assert_eq!(err, BuildError::ZeroHistory);
}

#[tokio::test(start_paused = true)]
async fn aggregation_rules() {
    let required = Switch::up();
    let optional = Switch::up();
    let breaker = Breaker::builder("model_server")
        .consecutive_failures(1)
        .build();
    let set = Reliability::builder()
        .dependency(Dependency::new("db", required.check()))
        .dependency(Dependency::new("model_server", Switch::up().check()).breaker(&breaker))
        .dependency(Dependency::new("cache", optional.check()).optional())
        .build()
        .unwrap();
    assert_eq!(set.status(), HealthStatus::Warn, "nothing checked yet");
    set.check_all().await;
    assert_eq!(set.status(), HealthStatus::Pass);
    optional.set(false);
    set.check_all().await;
    assert_eq!(set.status(), HealthStatus::Warn, "optional failing");
    optional.set(true);
    breaker.try_acquire().unwrap().failure();
    set.check_all().await;
    assert_eq!(set.status(), HealthStatus::Warn, "breaker open");
    breaker.reset();
    required.set(false);
    set.check_all().await;
    assert_eq!(set.status(), HealthStatus::Fail, "required failing");
}

#[tokio::test(start_paused = true)]
async fn checks_report_values_outputs_and_service_probes() {
    let warn =
        HealthCheck::from_result(|| async { CheckResult::warn("replica lag").observed(12.0, "s") });
    let r = warn.run(S).await;
    assert_eq!(
        (r.status, r.observed_value, &*r.observed_unit),
        (HealthStatus::Warn, Some(12.0), "s")
    );
    let long = HealthCheck::new(|| async { Err::<(), _>("é".repeat(300)) });
    let r = long.run(S).await;
    assert!(r.output.as_ref().unwrap().len() <= 256, "output capped");
    // A tower service as the probe.
    let svc = tower::service_fn(|up: bool| async move { if up { Ok(()) } else { Err("refused") } });
    let ok = HealthCheck::from_service_errors(svc, || true).run(S).await;
    assert_eq!(ok.status, HealthStatus::Pass);
    let bad = HealthCheck::from_service_errors(svc, || false).run(S).await;
    assert_eq!(
        (bad.status, bad.output.as_deref()),
        (HealthStatus::Fail, Some("refused"))
    );
}

/// A check that records when it ran (since `t0`, whole seconds) and
/// passes while `up` is set.
fn timed(t0: Instant, up: Arc<AtomicBool>, runs: Arc<std::sync::Mutex<Vec<u64>>>) -> HealthCheck {
    HealthCheck::new(move || {
        let (up, runs) = (up.clone(), runs.clone());
        async move {
            runs.lock().unwrap().push(t0.elapsed().as_secs());
            if up.load(Ordering::SeqCst) {
                Ok(())
            } else {
                Err("connection refused")
            }
        }
    })
}

#[tokio::test(start_paused = true)]
async fn a_down_dependency_is_probed_on_a_short_growing_interval() {
    let t0 = Instant::now();
    let up = Arc::new(AtomicBool::new(true));
    let runs = Arc::new(std::sync::Mutex::new(Vec::new()));
    let set = Reliability::builder()
        .dependency(Dependency::new("db", timed(t0, up.clone(), runs.clone())))
        .build()
        .unwrap();
    let monitor = Monitor::start(&set, 30 * S);
    tokio::time::sleep(Duration::from_millis(500)).await;
    up.store(false, Ordering::SeqCst);
    // The check at 30 s fails: then 1 s, 2 s, 4 s, 5 s, 5 s... while down.
    tokio::time::sleep_until(t0 + Duration::from_millis(52_500)).await;
    up.store(true, Ordering::SeqCst);
    // Seen back by the check at 57 s; then the monitor's 30 s again.
    tokio::time::sleep_until(t0 + Duration::from_millis(120_500)).await;
    monitor.stop().await;
    assert_eq!(
        *runs.lock().unwrap(),
        [0, 30, 31, 33, 37, 42, 47, 52, 57, 87, 117]
    );
}

#[tokio::test(start_paused = true)]
async fn without_probing_while_down_the_interval_stays() {
    let t0 = Instant::now();
    let up = Arc::new(AtomicBool::new(false));
    let runs = Arc::new(std::sync::Mutex::new(Vec::new()));
    let set = Reliability::builder()
        .dependency(
            Dependency::new("db", timed(t0, up.clone(), runs.clone())).no_probe_while_down(),
        )
        .build()
        .unwrap();
    let monitor = Monitor::start(&set, 30 * S);
    tokio::time::sleep_until(t0 + Duration::from_millis(60_500)).await;
    monitor.stop().await;
    assert_eq!(*runs.lock().unwrap(), [0, 30, 60]);
}

#[tokio::test(start_paused = true)]
async fn a_passing_check_lets_an_open_breaker_probe_at_once() {
    use tower_recovery::circuit_breaker::State;
    let t0 = Instant::now();
    let up = Arc::new(AtomicBool::new(false));
    let runs = Arc::new(std::sync::Mutex::new(Vec::new()));
    let breaker = Breaker::builder("model_server")
        .consecutive_failures(1)
        .open_duration(60 * S)
        .build();
    let set = Reliability::builder()
        .dependency(
            Dependency::new("model_server", timed(t0, up.clone(), runs.clone())).breaker(&breaker),
        )
        .build()
        .unwrap();
    let monitor = Monitor::start(&set, 30 * S);
    breaker.try_acquire().unwrap().failure();
    assert_eq!(breaker.state(), State::Open);
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    assert_eq!(
        breaker.state(),
        State::Open,
        "failing checks change nothing"
    );
    up.store(true, Ordering::SeqCst);
    // Failing checks at 0 and 1 s; the one at 3 s passes.
    tokio::time::sleep_until(t0 + Duration::from_millis(3_500)).await;
    assert_eq!(
        breaker.state(),
        State::HalfOpen,
        "probing at 3 s, not at 60 s"
    );
    // No traffic yet: the breaker stays half-open, and the monitor goes back
    // to its interval (the dependency answered), not checking every 5 s.
    tokio::time::sleep_until(t0 + Duration::from_millis(32_500)).await;
    assert_eq!(*runs.lock().unwrap(), [0, 1, 3]);
    let probe = breaker.try_acquire().expect("the probe is admitted");
    assert!(probe.is_probe());
    probe.success();
    assert_eq!(breaker.state(), State::Closed);
    monitor.stop().await;
    assert_eq!(*runs.lock().unwrap(), [0, 1, 3]);
}

/// Checks that pass while calls fail (the endpoint answers, the model is
/// not loaded): the monitor lets the breaker probe once per check, at its
/// interval, not once per failed probe.
#[tokio::test(start_paused = true)]
async fn passing_checks_do_not_cancel_the_open_wait_again_and_again() {
    let t0 = Instant::now();
    let up = Arc::new(AtomicBool::new(true));
    let runs = Arc::new(std::sync::Mutex::new(Vec::new()));
    let breaker = Breaker::builder("model_server")
        .consecutive_failures(1)
        .open_duration(30 * S)
        .build();
    let set = Reliability::builder()
        .dependency(
            Dependency::new("model_server", timed(t0, up.clone(), runs.clone())).breaker(&breaker),
        )
        .build()
        .unwrap();
    let monitor = Monitor::start(&set, 30 * S);
    let mut probes = 0;
    // Traffic every 100 ms for 120 s; every call fails.
    for _ in 0..1_200 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        if let Ok(permit) = breaker.try_acquire() {
            probes += u32::from(permit.is_probe());
            permit.failure();
        }
    }
    monitor.stop().await;
    let checks = runs.lock().unwrap().len();
    assert!(
        checks <= 8,
        "{checks} checks in 120 s: {:?}",
        runs.lock().unwrap()
    );
    assert!(probes <= 10, "{probes} probes in 120 s");
}

#[tokio::test(start_paused = true)]
async fn a_breaker_opening_between_checks_starts_the_short_interval() {
    let t0 = Instant::now();
    let up = Arc::new(AtomicBool::new(true));
    let runs = Arc::new(std::sync::Mutex::new(Vec::new()));
    let breaker = Breaker::builder("model_server")
        .consecutive_failures(1)
        .open_duration(600 * S)
        .build();
    let set = Reliability::builder()
        .dependency(
            Dependency::new("model_server", timed(t0, up.clone(), runs.clone())).breaker(&breaker),
        )
        .build()
        .unwrap();
    let monitor = Monitor::start(&set, 30 * S);
    tokio::time::sleep_until(t0 + 10 * S).await;
    // Calls fail and open the breaker at 10 s, long before the monitor's
    // next check at 30 s would have seen it.
    up.store(false, Ordering::SeqCst);
    breaker.try_acquire().unwrap().failure();
    tokio::time::sleep_until(t0 + Duration::from_millis(22_500)).await;
    monitor.stop().await;
    assert_eq!(*runs.lock().unwrap(), [0, 11, 13, 17, 22]);
}

mod coordination {
    //! Dependencies that need others: recovery in dependency order, one
    //! trigger for a shared prerequisite, the root cause named, cycles
    //! refused.

    use super::*;
    use tower_recovery::recovery::{Mode, TriggerOutcome};

    #[test]
    fn unknown_prerequisites_and_cycles_are_refused_when_the_set_is_built() {
        let ok = || HealthCheck::new(|| async { Ok::<_, String>(()) });
        let err = Reliability::builder()
            .dependency(Dependency::new("model_server", ok()).needs("storage"))
            .build()
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "dependency \"model_server\" needs \"storage\", which is not in the set"
        );
        let err = Reliability::builder()
            .dependency(Dependency::new("a", ok()).needs("b"))
            .dependency(Dependency::new("b", ok()).needs("c"))
            .dependency(Dependency::new("c", ok()).needs("a"))
            .dependency(Dependency::new("d", ok()))
            .build()
            .unwrap_err();
        assert_eq!(
            err,
            BuildError::Cycle(vec!["a".into(), "b".into(), "c".into(), "a".into()])
        );
        assert_eq!(
            err.to_string(),
            "dependencies need each other in a cycle: a -> b -> c -> a"
        );
        let err = Reliability::builder()
            .dependency(Dependency::new("a", ok()).needs("a"))
            .build()
            .unwrap_err();
        assert_eq!(err, BuildError::Cycle(vec!["a".into(), "a".into()]));
        // A diamond is no cycle.
        Reliability::builder()
            .dependency(Dependency::new("asr", ok()).needs("cache").needs("storage"))
            .dependency(Dependency::new("cache", ok()).needs("storage"))
            .dependency(Dependency::new("storage", ok()))
            .build()
            .unwrap();
    }

    /// An action that succeeds while `up` holds, recording when it ran.
    fn action(
        up: &Arc<AtomicBool>,
        runs: &Arc<std::sync::Mutex<Vec<Instant>>>,
    ) -> impl Fn() -> std::future::Ready<Result<(), &'static str>> + Send + Sync + 'static {
        let (up, runs) = (up.clone(), runs.clone());
        move || {
            runs.lock().unwrap().push(Instant::now());
            std::future::ready(if up.load(Ordering::SeqCst) {
                Ok(())
            } else {
                Err("connection refused")
            })
        }
    }

    /// A prerequisite whose check passes is not down because its breaker
    /// waits half-open for traffic (its dependents being down, none may
    /// reach it): its dependents do not wait for it forever.
    #[tokio::test(start_paused = true)]
    async fn a_half_open_prerequisite_that_answers_its_check_blocks_nobody() {
        use tower_recovery::circuit_breaker::State;
        let storage_breaker = Breaker::builder("storage").consecutive_failures(1).build();
        let runs = Arc::new(std::sync::Mutex::new(Vec::new()));
        let always = Arc::new(AtomicBool::new(true));
        let model = Recovery::builder("model_server", action(&always, &runs)).spawn();
        let ok = || HealthCheck::new(|| async { Ok::<_, String>(()) });
        let set = Reliability::builder()
            .dependency(Dependency::new("storage", ok()).breaker(&storage_breaker))
            .dependency(
                Dependency::new("model_server", ok())
                    .needs("storage")
                    .recovery(&model),
            )
            .build()
            .unwrap();
        storage_breaker.try_acquire().unwrap().failure();
        assert!(storage_breaker.probe_now());
        assert_eq!(storage_breaker.state(), State::HalfOpen);
        set.check_all().await; // storage answers its check
        model.trigger_automatic("calls failed");
        model.wait_idle_or_cooling().await;
        assert_eq!(
            runs.lock().unwrap().len(),
            1,
            "the model server's recovery ran"
        );
        assert_eq!(set.report().dependencies[1].root_cause, None);
    }

    /// The alert of a dependent names the prerequisite that is down when its
    /// cycle gives up.
    #[tokio::test(start_paused = true)]
    async fn the_alert_names_the_prerequisite_as_the_root_cause() {
        use tower_recovery::recovery::AlertEvent;
        let storage = Breaker::builder("storage").consecutive_failures(1).build();
        let alerts = Arc::new(std::sync::Mutex::new(Vec::<AlertEvent>::new()));
        // The model server's attempt fails because storage fails meanwhile:
        // its breaker opens while the attempt runs.
        let model = Recovery::builder("model_server", {
            let storage = storage.clone();
            move || {
                storage.try_acquire().unwrap().failure();
                async { Err::<(), _>("model load failed: storage unreachable") }
            }
        })
        .max_attempts(1)
        .alert({
            let alerts = alerts.clone();
            move |e: &AlertEvent| alerts.lock().unwrap().push(e.clone())
        })
        .spawn();
        let ok = || HealthCheck::new(|| async { Ok::<_, String>(()) });
        let set = Reliability::builder()
            .dependency(Dependency::new("storage", ok()).breaker(&storage))
            .dependency(
                Dependency::new("model_server", ok())
                    .needs("storage")
                    .recovery(&model),
            )
            .build()
            .unwrap();
        model.trigger_automatic("calls failed");
        model.wait_for(|s| s == RecoveryState::Exhausted).await;
        let alerts = alerts.lock().unwrap().clone();
        assert_eq!(alerts.len(), 1);
        assert_eq!(&*alerts[0].dependency, "model_server");
        assert_eq!(&*alerts[0].root_cause, "storage");
        drop(set);
    }

    #[tokio::test(start_paused = true)]
    async fn dependents_wait_for_their_prerequisite_trigger_it_once_and_go_on_after_it() {
        let t0 = Instant::now();
        let storage_up = Arc::new(AtomicBool::new(false));
        let (storage_runs, model_runs, asr_runs) = Default::default();
        let storage = Recovery::builder("storage", action(&storage_up, &storage_runs))
            .max_attempts(1)
            .mode(Mode::Strict)
            .spawn();
        let always = Arc::new(AtomicBool::new(true));
        let model = Recovery::builder("model_server", action(&always, &model_runs)).spawn();
        let asr = Recovery::builder("asr_ocr", action(&always, &asr_runs)).spawn();
        let storage_check = {
            let up = storage_up.clone();
            HealthCheck::new(move || {
                let up = up.load(Ordering::SeqCst);
                async move {
                    if up {
                        Ok(())
                    } else {
                        Err("connection refused")
                    }
                }
            })
        };
        let ok = || HealthCheck::new(|| async { Ok::<_, String>(()) });
        let set = Reliability::builder()
            .dependency(Dependency::new("storage", storage_check).recovery(&storage))
            .dependency(
                Dependency::new("model_server", ok())
                    .needs("storage")
                    .recovery(&model),
            )
            .dependency(
                Dependency::new("asr_ocr", ok())
                    .needs("storage")
                    .recovery(&asr),
            )
            .build()
            .unwrap();
        // Storage is down (the startup check saw it); both dependents fail.
        set.check_all().await;
        assert_eq!(
            model.trigger_automatic("calls failed"),
            TriggerOutcome::Started
        );
        assert_eq!(
            asr.trigger_automatic("calls failed"),
            TriggerOutcome::Started
        );
        model
            .wait_for(|_| model.status().waiting_for.is_some())
            .await;
        asr.wait_for(|_| asr.status().waiting_for.is_some()).await;
        storage.wait_for(|s| s == RecoveryState::Exhausted).await;
        assert_eq!(model.status().waiting_for.as_deref(), Some("storage"));
        assert_eq!(asr.status().waiting_for.as_deref(), Some("storage"));
        assert_eq!(model.status().state, RecoveryState::Recovering);
        assert_eq!(
            storage_runs.lock().unwrap().len(),
            1,
            "two dependents waiting, one storage cycle"
        );
        // Time passes: the dependents make no attempt against a dependency
        // that cannot work without storage.
        tokio::time::sleep(60 * S).await;
        assert!(model_runs.lock().unwrap().is_empty());
        assert!(asr_runs.lock().unwrap().is_empty());
        let report = set.report();
        let root = |name: &str| {
            report
                .dependencies
                .iter()
                .find(|d| &*d.name == name)
                .unwrap()
                .root_cause
                .clone()
        };
        assert_eq!(root("model_server").as_deref(), Some("storage"));
        assert_eq!(root("asr_ocr").as_deref(), Some("storage"));
        assert_eq!(root("storage"), None, "the root cause itself");
        // Storage comes back: its recovery first, then the dependents.
        storage_up.store(true, Ordering::SeqCst);
        let back = Instant::now();
        assert_eq!(storage.trigger_manual(), TriggerOutcome::Started);
        set.check_all().await;
        model.wait_idle_or_cooling().await;
        asr.wait_idle_or_cooling().await;
        let storage_ok = storage_runs.lock().unwrap()[1];
        let model_at = model_runs.lock().unwrap()[0];
        assert!(
            storage_ok >= back && model_at >= storage_ok,
            "storage first"
        );
        assert!(
            model_at - back <= Duration::from_millis(200),
            "the dependent goes on within one look (200 ms): {:?}",
            model_at - back
        );
        assert_eq!(model.status().waiting_for, None);
        assert_eq!(model.status().recoveries, 1);
        assert_eq!(asr_runs.lock().unwrap().len(), 1);
        assert!(t0 <= back);
    }
}

#[tokio::test(start_paused = true)]
async fn a_degraded_dependency_reports_warn_with_its_reason() {
    use tower_recovery::recovery::EarlyWarning;
    let breaker = Breaker::builder("model_server")
        .consecutive_failures(5)
        .build();
    let warning = EarlyWarning::builder(&breaker)
        .consecutive_failures(3)
        .spawn();
    let set = Reliability::builder()
        .dependency(
            Dependency::new(
                "model_server",
                HealthCheck::new(|| async { Ok::<_, String>(()) }),
            )
            .breaker(&breaker)
            .early_warning(&warning),
        )
        .build()
        .unwrap();
    set.check_all().await;
    assert_eq!(set.status(), HealthStatus::Pass);
    for _ in 0..3 {
        breaker.try_acquire().unwrap().failure();
    }
    let mut changes = warning.subscribe();
    changes.changed().await.unwrap();
    let report = set.report();
    assert_eq!(
        report.status,
        HealthStatus::Warn,
        "degraded: warn, the check passes"
    );
    let d = report.dependencies[0].degradation.clone().unwrap();
    assert_eq!(
        d.reason.as_deref(),
        Some("3 consecutive failures (warning at 3)")
    );
    breaker.try_acquire().unwrap().success();
    changes.changed().await.unwrap();
    assert_eq!(set.status(), HealthStatus::Pass);
}

/// The uptime samples one result per interval, a failure standing: the
/// checks made every 1-5 s while down neither outweigh the others nor let
/// a pass erase a short outage.
#[tokio::test(start_paused = true)]
async fn uptime_takes_one_sample_per_interval_with_failures_standing() {
    let t0 = Instant::now();
    let up = Arc::new(AtomicBool::new(true));
    let runs = Arc::new(std::sync::Mutex::new(Vec::new()));
    let set = Reliability::builder()
        .dependency(Dependency::new("db", timed(t0, up.clone(), runs.clone())))
        .build()
        .unwrap();
    let monitor = Monitor::start(&set, 30 * S);
    tokio::time::sleep_until(t0 + Duration::from_millis(29_500)).await;
    up.store(false, Ordering::SeqCst);
    tokio::time::sleep_until(t0 + Duration::from_millis(32_500)).await;
    up.store(true, Ordering::SeqCst);
    tokio::time::sleep_until(t0 + 100 * S).await;
    monitor.stop().await;
    assert_eq!(*runs.lock().unwrap(), [0, 30, 31, 33, 63, 93]);
    let db = &set.report().dependencies[0];
    assert_eq!(db.checks, 6);
    // Slots [0, 30) up, [30, 60) down (30, 31 failed; 33 passed), [60, 90)
    // and [90, 120) up.
    assert_eq!(db.uptime_percent, Some(75.0));
}
