//! Metrics through the facade, recorded by a test recorder, for a trip, a
//! recovery, health checks and a drain.
#![cfg(feature = "metrics")]

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use metrics::{Counter, Gauge, Histogram, Key, KeyName, Metadata, Recorder, SharedString, Unit};
use metrics_util::registry::{AtomicStorage, Registry};
use tower::{BoxError, ServiceExt, service_fn};
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

impl TestRecorder {
    /// The series of `name`, as their labels.
    fn series(&self, name: &str) -> Vec<Vec<(String, String)>> {
        let mut series: Vec<_> = self
            .0
            .get_counter_handles()
            .into_keys()
            .chain(self.0.get_gauge_handles().into_keys())
            .filter(|k| k.name() == name)
            .map(|k| {
                k.labels()
                    .map(|l| (l.key().to_string(), l.value().to_string()))
                    .collect()
            })
            .collect();
        series.sort();
        series
    }
}

/// A rehearsal's gauge and its injected faults by kind, labelled by the
/// handle's name only; calls that chaos lets through count nothing.
#[cfg(feature = "chaos")]
#[tokio::test(start_paused = true)]
async fn chaos_rehearsals_are_recorded_by_handle_and_kind() {
    use std::convert::Infallible;
    use tower::{Layer, Service};
    use tower_recovery::chaos::{Chaos, Faults, Injected};

    let s = TestRecorder(Arc::new(Registry::atomic()));
    // This thread's recorder (the test above installs the global one); the
    // runtime runs on this thread too, so the rehearsal's timer records
    // here.
    let _local = metrics::set_default_local_recorder(&s);
    let chaos = Chaos::new("model_server");
    let mut errors = chaos
        .layer()
        .layer(service_fn(|_: u32| async { Ok::<_, BoxError>("draft") }));
    let mut responses =
        chaos
            .layer()
            .fault_with_response()
            .layer(service_fn(|_: http::Request<()>| async {
                Ok::<_, Infallible>(http::Response::new(String::new()))
            }));
    let active = [("chaos", "model_server")];
    let injected = |fault: &'static str| [("chaos", "model_server"), ("fault", fault)];
    let counts = || {
        (
            s.counter(names::CHAOS_INJECTED, &injected("error")),
            s.counter(names::CHAOS_INJECTED, &injected("response")),
            s.counter(names::CHAOS_INJECTED, &injected("latency")),
        )
    };

    // Off: calls go through, and nothing is recorded.
    for _ in 0..10 {
        errors.ready().await.unwrap().call(0).await.unwrap();
    }
    assert!(s.series(names::CHAOS_INJECTED).is_empty());
    assert!(s.series(names::CHAOS_ACTIVE).is_empty());

    // On: failed after 100 ms, with an error (3) or a response (2).
    chaos.start(
        Faults::new()
            .error_rate(1.0)
            .latency(Duration::from_millis(100)),
    );
    assert_eq!(s.gauge(names::CHAOS_ACTIVE, &active), 1.0);
    for i in 0..3 {
        let err = errors.ready().await.unwrap().call(i).await.unwrap_err();
        assert!(err.is::<Injected>());
    }
    for _ in 0..2 {
        let answer = responses
            .ready()
            .await
            .unwrap()
            .call(http::Request::new(()))
            .await
            .unwrap();
        assert_eq!(answer.status(), 503);
    }
    assert_eq!(counts(), (3, 2, 5));
    // Dropped during its added latency: delayed, never answered.
    drop(errors.ready().await.unwrap().call(9));
    assert_eq!(counts(), (3, 2, 6));
    let snapshot = chaos.snapshot();
    assert_eq!(
        (snapshot.errors, snapshot.responses, snapshot.delayed),
        (3, 2, 6),
        "the snapshot counts as the metrics do"
    );
    assert_eq!(snapshot.injected, 6, "drawn to fail");

    // Labelled by the handle's name and the kind only.
    let model = |fault: &str| {
        vec![
            ("chaos".to_string(), "model_server".to_string()),
            ("fault".to_string(), fault.to_string()),
        ]
    };
    assert_eq!(
        s.series(names::CHAOS_INJECTED),
        [model("error"), model("latency"), model("response")]
    );

    // Stopped: 0, and calls through count nothing.
    chaos.stop();
    assert_eq!(s.gauge(names::CHAOS_ACTIVE, &active), 0.0);
    for _ in 0..10 {
        errors.ready().await.unwrap().call(0).await.unwrap();
    }
    assert_eq!(counts(), (3, 2, 6));
    // On with nothing drawn: active, still nothing counted.
    chaos.start(Faults::new());
    assert_eq!(s.gauge(names::CHAOS_ACTIVE, &active), 1.0);
    for _ in 0..10 {
        errors.ready().await.unwrap().call(0).await.unwrap();
    }
    assert_eq!(counts(), (3, 2, 6));

    // A rehearsal that ends itself: its timer sets 0, with no call.
    chaos.start(
        Faults::new()
            .error_rate(1.0)
            .duration(Duration::from_secs(10)),
    );
    assert_eq!(s.gauge(names::CHAOS_ACTIVE, &active), 1.0);
    tokio::time::sleep(Duration::from_secs(10)).await;
    for _ in 0..100 {
        if s.gauge(names::CHAOS_ACTIVE, &active) == 0.0 {
            break;
        }
        tokio::task::yield_now().await;
    }
    assert_eq!(s.gauge(names::CHAOS_ACTIVE, &active), 0.0, "ended");
    assert_eq!(counts(), (3, 2, 6));
}

/// The help texts reach an exporter with the series.
#[cfg(feature = "chaos")]
#[test]
fn chaos_metrics_are_described() {
    use metrics_exporter_prometheus::PrometheusBuilder;
    use tower_recovery::chaos::{Chaos, Faults};

    let recorder = PrometheusBuilder::new().build_recorder();
    let handle = recorder.handle();
    let chaos = Chaos::new("rehearsal");
    metrics::with_local_recorder(&recorder, || {
        names::describe();
        chaos.start(Faults::new().error_rate(1.0));
    });
    let text = handle.render();
    assert!(
        text.contains("# HELP tower_recovery_chaos_active 1 while a chaos rehearsal"),
        "{text}"
    );
    assert!(
        text.contains("# HELP tower_recovery_chaos_injected_total Faults injected"),
        "{text}"
    );
    assert!(
        text.contains("tower_recovery_chaos_active{chaos=\"rehearsal\"} 1"),
        "{text}"
    );
}

// ===== the active gauge =====

/// The last handle of a rehearsal that is on goes (its service and its
/// handle dropped, a stack rebuilt): nothing injects any more, the timer
/// is aborted by the drop, and `tower_recovery_chaos_active` reads 1 for
/// good.
#[cfg(feature = "chaos")]
#[tokio::test(start_paused = true)]
async fn the_active_gauge_is_not_left_at_one_when_the_handle_goes() {
    use tower_recovery::chaos::{Chaos, Faults};

    let s = TestRecorder(Arc::new(Registry::atomic()));
    let _local = metrics::set_default_local_recorder(&s);
    let active = [("chaos", "dropped")];
    let chaos = Chaos::new("dropped");
    chaos.start(
        Faults::new()
            .error_rate(1.0)
            .duration(Duration::from_secs(10)),
    );
    assert_eq!(s.gauge(names::CHAOS_ACTIVE, &active), 1.0);
    drop(chaos);
    tokio::time::sleep(Duration::from_secs(60)).await;
    for _ in 0..100 {
        tokio::task::yield_now().await;
    }
    assert_eq!(
        s.gauge(names::CHAOS_ACTIVE, &active),
        0.0,
        "no handle is left to inject anything, and the rehearsal's 10 s are long over"
    );
}

/// A recorder in use from some point on (installed, or replaced) while a
/// rehearsal is on: the injected faults are counted in it, but the gauge
/// registered with them reads 0, "not active", until the next start,
/// stop or end.
#[cfg(feature = "chaos")]
#[tokio::test(start_paused = true)]
async fn a_recorder_in_use_after_the_start_sees_the_rehearsal_active() {
    use tower::{Layer, Service};
    use tower_recovery::chaos::{Chaos, Faults};

    let chaos = Chaos::new("late");
    let mut svc = chaos
        .layer()
        .layer(service_fn(|_: u32| async { Ok::<_, BoxError>("draft") }));
    let first = TestRecorder(Arc::new(Registry::atomic()));
    metrics::with_local_recorder(&first, || chaos.start(Faults::new().error_rate(1.0)));

    let s = TestRecorder(Arc::new(Registry::atomic()));
    let _local = metrics::set_default_local_recorder(&s);
    for i in 0..3 {
        assert!(svc.ready().await.unwrap().call(i).await.is_err());
    }
    let injected = [("chaos", "late"), ("fault", "error")];
    assert_eq!(s.counter(names::CHAOS_INJECTED, &injected), 3);
    assert!(chaos.is_active());
    assert_eq!(
        s.gauge(names::CHAOS_ACTIVE, &[("chaos", "late")]),
        1.0,
        "3 faults injected while the gauge says no rehearsal is on"
    );
}
