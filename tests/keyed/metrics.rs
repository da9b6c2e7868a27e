//! Keyed breakers' metrics: labelled by the registry, never by key.
#![cfg(feature = "metrics")]

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use metrics::{Counter, Gauge, Histogram, Key, KeyName, Metadata, Recorder, SharedString, Unit};
use metrics_util::registry::{AtomicStorage, Registry};
use tower_recovery::circuit_breaker::Breaker;
use tower_recovery::circuit_breaker::keyed::KeyedBreaker;
use tower_recovery::clock::ManualClock;
use tower_recovery::metrics as names;

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

impl TestRecorder {
    fn gauge(&self, state: &str) -> f64 {
        self.0
            .get_gauge_handles()
            .iter()
            .find(|(k, _)| {
                k.name() == names::KEYED_BREAKERS
                    && k.labels().any(|l| l.key() == "state" && l.value() == state)
                    && k.labels()
                        .any(|l| l.key() == "keyed" && l.value() == "host")
            })
            .map_or(0.0, |(_, g)| f64::from_bits(g.load(Ordering::SeqCst)))
    }
}

#[test]
fn keys_are_counted_per_state_and_no_series_is_per_key() {
    let recorder = TestRecorder(Arc::new(Registry::atomic()));
    let clock = ManualClock::new();
    metrics::with_local_recorder(&recorder, || {
        let keyed = KeyedBreaker::<u32>::builder(
            Breaker::builder("host")
                .consecutive_failures(1)
                .clock(clock.clone()),
        )
        .idle_timeout(Duration::from_secs(60))
        .build();
        for key in 0..100 {
            keyed.get(&key).try_acquire().unwrap().success();
        }
        for key in 0..10 {
            keyed.get(&key).try_acquire().unwrap().failure();
        }
        assert!(keyed.get(&0).try_acquire().is_err());
        assert_eq!(recorder.gauge("closed"), 90.0);
        assert_eq!(recorder.gauge("open"), 10.0);

        clock.advance(Duration::from_secs(61));
        assert_eq!(keyed.evict_idle(), 90);
        assert_eq!(recorder.gauge("closed"), 0.0);
        assert_eq!(recorder.gauge("open"), 10.0);
        for key in 0..10 {
            keyed.get(&key).reset();
        }
        assert_eq!(recorder.gauge("closed"), 10.0);
        assert_eq!(recorder.gauge("open"), 0.0);
    });
    // Every series is labelled by the registry: none names a key.
    let labels: Vec<String> = recorder
        .0
        .get_counter_handles()
        .keys()
        .chain(recorder.0.get_gauge_handles().keys())
        .flat_map(|k| {
            k.labels()
                .map(|l| l.value().to_string())
                .collect::<Vec<_>>()
        })
        .collect();
    assert!(labels.iter().all(|v| !v.contains('[')), "{labels:?}");
    let failures = recorder
        .0
        .get_counter_handles()
        .iter()
        .find(|(k, _)| {
            k.name() == names::BREAKER_FAILURES && k.labels().any(|l| l.value() == "host")
        })
        .map(|(_, c)| c.load(Ordering::SeqCst));
    assert_eq!(failures, Some(10));
}
