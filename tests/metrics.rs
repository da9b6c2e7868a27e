//! Metrics through the facade, recorded by a test recorder, for a trip, a
//! recovery, health checks and a drain.
#![cfg(feature = "metrics")]

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use metrics::{Counter, Gauge, Histogram, Key, KeyName, Metadata, Recorder, SharedString, Unit};
use metrics_util::registry::{AtomicStorage, Registry};
use tower::{ServiceExt, service_fn};
use tower_recovery::circuit_breaker::{Breaker, State};
use tower_recovery::drain::Drain;
use tower_recovery::health::{Dependency, HealthCheck, Monitor, Reliability};
use tower_recovery::metrics as names;
use tower_recovery::recovery::{Backoff, Recovery};

/// A recorder whose values can be read without resetting them.
#[derive(Clone)]
struct TestRecorder(Arc<Registry<Key, AtomicStorage>>);

impl Recorder for TestRecorder {
    fn describe_counter(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_gauge(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_histogram(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn register_counter(&self, key: &Key, _: &Metadata<'_>) -> Counter {
        self.0
            .get_or_create_counter(key, |c| Counter::from_arc(c.clone()))
    }
    fn register_gauge(&self, key: &Key, _: &Metadata<'_>) -> Gauge {
        self.0
            .get_or_create_gauge(key, |g| Gauge::from_arc(g.clone()))
    }
    fn register_histogram(&self, key: &Key, _: &Metadata<'_>) -> Histogram {
        self.0
            .get_or_create_histogram(key, |h| Histogram::from_arc(h.clone()))
    }
}

fn matches(key: &Key, name: &str, labels: &[(&str, &str)]) -> bool {
    key.name() == name
        && labels
            .iter()
            .all(|(k, v)| key.labels().any(|l| l.key() == *k && l.value() == *v))
}

impl TestRecorder {
    fn counter(&self, name: &str, labels: &[(&str, &str)]) -> u64 {
        let handles = self.0.get_counter_handles();
        let found = handles.iter().find(|(k, _)| matches(k, name, labels));
        found
            .map(|(_, c)| c.load(Ordering::SeqCst))
            .unwrap_or_else(|| panic!("no counter {name} {labels:?}"))
    }
    fn gauge(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        let handles = self.0.get_gauge_handles();
        let found = handles.iter().find(|(k, _)| matches(k, name, labels));
        found
            .map(|(_, g)| f64::from_bits(g.load(Ordering::SeqCst)))
            .unwrap_or_else(|| panic!("no gauge {name} {labels:?}"))
    }
    fn histogram_len(&self, name: &str, labels: &[(&str, &str)]) -> usize {
        let handles = self.0.get_histogram_handles();
        let found = handles.iter().find(|(k, _)| matches(k, name, labels));
        found
            .map(|(_, h)| h.data().len())
            .unwrap_or_else(|| panic!("no histogram {name} {labels:?}"))
    }
}

#[tokio::test(start_paused = true)]
async fn a_trip_a_recovery_checks_and_a_drain_are_recorded() {
    // Built, and even used, before the recorder is installed, as a
    // `static`, an early constructor or a startup check would: they must
    // still report (handles bound at build, or at the first event, used to
    // record nothing afterwards, silently).
    let breaker = Breaker::builder("model_server")
        .consecutive_failures(5)
        .build();
    breaker.try_acquire().unwrap().success();
    breaker.try_acquire().unwrap().success();
    let drain = Drain::default();
    let s = TestRecorder(Arc::new(Registry::atomic()));
    metrics::set_global_recorder(s.clone()).unwrap();

    // A trip: 5 failures, then 2 rejections.
    let up = Arc::new(AtomicBool::new(false));
    let flag = up.clone();
    let recovery = Recovery::builder("model_server", move || {
        let up = flag.load(Ordering::SeqCst);
        async move { if up { Ok(()) } else { Err("refused") } }
    })
    .watch(&breaker)
    .backoff(Backoff::new(Duration::from_secs(1), 2.0))
    .spawn();
    for _ in 0..5 {
        breaker.try_acquire().unwrap().failure();
    }
    for _ in 0..2 {
        assert!(breaker.try_acquire().is_err());
    }
    let b = [("breaker", "model_server")];
    assert_eq!(s.counter(names::BREAKER_FAILURES, &b), 5);
    assert_eq!(s.counter(names::BREAKER_REJECTIONS, &b), 2);
    assert_eq!(
        s.counter(
            names::BREAKER_TRANSITIONS,
            &[
                ("breaker", "model_server"),
                ("from", "closed"),
                ("to", "open")
            ]
        ),
        1
    );
    assert_eq!(s.gauge(names::BREAKER_STATE, &b), 1.0);

    // A recovery: attempt 1 fails, attempt 2 succeeds and closes the breaker.
    for _ in 0..1_000 {
        if recovery.status().failed_attempts == 1 {
            break;
        }
        tokio::task::yield_now().await;
    }
    assert_eq!(recovery.status().failed_attempts, 1, "attempt 1 failed");
    up.store(true, Ordering::SeqCst);
    recovery.wait_idle_or_cooling().await;
    let d = [("dependency", "model_server")];
    assert_eq!(s.counter(names::RECOVERY_ATTEMPTS, &d), 2);
    assert_eq!(
        s.counter(
            names::RECOVERY_OUTCOMES,
            &[("dependency", "model_server"), ("outcome", "failure")]
        ),
        1
    );
    assert_eq!(
        s.counter(
            names::RECOVERY_OUTCOMES,
            &[("dependency", "model_server"), ("outcome", "success")]
        ),
        1
    );
    assert_eq!(breaker.state(), State::Closed);
    assert_eq!(s.gauge(names::BREAKER_STATE, &b), 0.0);

    // Health checks: latency and status.
    let set = Reliability::builder()
        .dependency(Dependency::new(
            "database",
            HealthCheck::new(|| async { Ok::<_, String>(()) }),
        ))
        .build()
        .unwrap();
    let monitor = Monitor::start(&set, Duration::from_secs(10));
    tokio::time::sleep(Duration::from_secs(25)).await;
    monitor.stop().await;
    assert_eq!(
        s.counter(
            names::CHECKS,
            &[("dependency", "database"), ("status", "pass")]
        ),
        3
    );
    assert_eq!(
        s.histogram_len(names::CHECK_DURATION, &[("dependency", "database")]),
        3
    );

    // A drain (built before the recorder): the in-flight gauge moves with
    // requests; completion counted.
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let svc = tower::Layer::layer(
        &drain.rpc_layer(),
        service_fn(|rx: tokio::sync::oneshot::Receiver<()>| async move {
            rx.await.map_err(|_| "dropped")
        }),
    );
    let call = tokio::spawn(svc.oneshot(rx));
    tokio::task::yield_now().await;
    assert_eq!(s.gauge(names::DRAIN_IN_FLIGHT, &[]), 1.0);
    drain.begin();
    tx.send(()).unwrap();
    call.await.unwrap().unwrap();
    let report = drain.completed().await;
    assert_eq!(report.finished, 1);
    assert_eq!(s.gauge(names::DRAIN_IN_FLIGHT, &[]), 0.0);
    assert_eq!(s.counter(names::DRAIN_COMPLETED, &[]), 1);
}
