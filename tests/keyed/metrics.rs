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

#[test]
fn a_registry_has_no_breaker_state_series_that_reads_closed() {
    let recorder = TestRecorder(Arc::new(Registry::atomic()));
    metrics::with_local_recorder(&recorder, || {
        let keyed = KeyedBreaker::<u32>::new(Breaker::builder("host").consecutive_failures(1));
        for key in 0..3 {
            keyed.get(&key).try_acquire().unwrap().failure();
        }
        assert_eq!(recorder.gauge("open"), 3.0);
    });
    // `breaker_state{breaker="host"}` would say 0 (closed) with every key
    // open: the keys-per-state gauge stands for a registry's state.
    let state: Vec<f64> = recorder
        .0
        .get_gauge_handles()
        .iter()
        .filter(|(k, _)| {
            k.name() == names::BREAKER_STATE && k.labels().any(|l| l.value() == "host")
        })
        .map(|(_, g)| f64::from_bits(g.load(Ordering::SeqCst)))
        .collect();
    assert_eq!(state, Vec::<f64>::new(), "a registry-wide state series");
}

#[test]
fn keys_recoveries_add_to_the_registrys_series_and_none_is_per_key() {
    use tower_recovery::circuit_breaker::State;
    use tower_recovery::recovery::{Backoff, Mode, Recovery};

    let recorder = TestRecorder(Arc::new(Registry::atomic()));
    // The recoveries' tasks record on this thread: a current-thread
    // runtime driven inside the local recorder's scope.
    metrics::with_local_recorder(&recorder, || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .start_paused(true)
            .build()
            .unwrap();
        rt.block_on(async {
            let keyed = KeyedBreaker::<u32>::builder(
                Breaker::builder("host")
                    .consecutive_failures(1)
                    .open_duration(Duration::from_secs(3600)),
            )
            .max_keys(3)
            .recovery(|key: &u32| {
                // Key 0's first attempt fails; every other attempt succeeds.
                let key = *key;
                let tried = Arc::new(std::sync::atomic::AtomicBool::new(false));
                Recovery::builder("host", move || {
                    let first = !tried.swap(true, Ordering::SeqCst);
                    async move {
                        if key == 0 && first {
                            Err("refused")
                        } else {
                            Ok(())
                        }
                    }
                })
                .mode(Mode::Strict)
                .backoff(Backoff::new(Duration::from_millis(10), 1.0))
            })
            .overflow_recovery(Recovery::builder("overflow", || async {
                Ok::<_, String>(())
            }))
            .build();
            for key in 0..4 {
                keyed.get(&key).try_acquire().unwrap().failure();
            }
            for key in 0..3 {
                keyed.recovery(&key).unwrap().wait_idle_or_cooling().await;
                assert_eq!(keyed.get(&key).state(), State::Closed);
            }
            keyed
                .overflow_recovery()
                .unwrap()
                .wait_idle_or_cooling()
                .await;
        });
    });
    let counter = |name: &str, dependency: &str, outcome: Option<&str>| {
        recorder
            .0
            .get_counter_handles()
            .iter()
            .find(|(k, _)| {
                k.name() == name
                    && k.labels()
                        .any(|l| l.key() == "dependency" && l.value() == dependency)
                    && outcome
                        .is_none_or(|o| k.labels().any(|l| l.key() == "outcome" && l.value() == o))
            })
            .map(|(_, c)| c.load(Ordering::SeqCst))
    };
    // Three keys: four attempts (key 0's twice), one failed, three
    // outages ended, in the registry's series.
    assert_eq!(counter(names::RECOVERY_ATTEMPTS, "host", None), Some(4));
    assert_eq!(
        counter(names::RECOVERY_OUTCOMES, "host", Some("failure")),
        Some(1)
    );
    assert_eq!(
        counter(names::RECOVERY_OUTCOMES, "host", Some("success")),
        Some(3)
    );
    let outages = recorder
        .0
        .get_histogram_handles()
        .iter()
        .find(|(k, _)| {
            k.name() == names::OUTAGE_DURATION && k.labels().any(|l| l.value() == "host")
        })
        .map(|(_, h)| h.data().len());
    assert_eq!(outages, Some(3));
    // The overflow breaker's recovery has its one series, as its breaker.
    assert_eq!(
        counter(names::RECOVERY_ATTEMPTS, "host[overflow]", None),
        Some(1)
    );
    // No series names a key.
    let labels: Vec<String> = recorder
        .0
        .get_counter_handles()
        .keys()
        .chain(recorder.0.get_gauge_handles().keys())
        .chain(recorder.0.get_histogram_handles().keys())
        .flat_map(|k| {
            k.labels()
                .map(|l| l.value().to_string())
                .collect::<Vec<_>>()
        })
        .collect();
    for key in 0..4 {
        assert!(
            labels.iter().all(|v| v != &format!("host[{key}]")),
            "a series for key {key}: {labels:?}"
        );
    }
}
