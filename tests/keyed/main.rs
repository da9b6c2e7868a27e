//! Keyed breakers through real stacks: per-host isolation over loopback
//! with hyper-util's client, the cap, idle eviction, races, metrics and
//! `/reliability`.
#![cfg(all(feature = "circuit-breaker", feature = "webhook"))]

mod metrics;
mod overflow_recovery;
mod recovery;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use axum::Router;
use axum::http::StatusCode;
use axum::routing::get;
use bytes::Bytes;
use http::Request;
use http::uri::Authority;
use http_body_util::Full;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tower::{Service, ServiceBuilder, ServiceExt, service_fn};
use tower_recovery::circuit_breaker::keyed::{ByAuthority, ByHeader, KeyedBreaker};
use tower_recovery::circuit_breaker::{Breaker, Rejected, State};
use tower_recovery::classify::HttpErrorsAsFailures;

/// An upstream on loopback answering `status`, counting requests.
async fn upstream(status: u16) -> (Authority, Arc<AtomicUsize>) {
    let hits = Arc::new(AtomicUsize::new(0));
    let counted = hits.clone();
    let app = Router::new().route(
        "/",
        get(move || {
            counted.fetch_add(1, Ordering::SeqCst);
            async move { StatusCode::from_u16(status).unwrap() }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let authority = listener.local_addr().unwrap().to_string().parse().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (authority, hits)
}

/// An address nothing listens on (bound, then closed).
async fn stopped() -> Authority {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    listener.local_addr().unwrap().to_string().parse().unwrap()
}

fn get_request(authority: &Authority) -> Request<Full<Bytes>> {
    Request::get(format!("http://{authority}/"))
        .body(Full::new(Bytes::new()))
        .unwrap()
}

#[tokio::test]
async fn a_failing_host_opens_its_breaker_while_a_healthy_host_keeps_serving() {
    let (healthy, healthy_hits) = upstream(200).await;
    let (failing, failing_hits) = upstream(500).await;
    let down = stopped().await;
    let upstreams = KeyedBreaker::<Authority>::new(
        Breaker::builder("upstream")
            .consecutive_failures(3)
            .open_duration(Duration::from_secs(3600)),
    );
    let client = ServiceBuilder::new()
        .layer(
            upstreams
                .layer(ByAuthority)
                .classify(HttpErrorsAsFailures::new()),
        )
        .service(Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>());

    for _ in 0..3 {
        let response = client.clone().oneshot(get_request(&failing)).await.unwrap();
        assert_eq!(response.status(), 500);
        assert!(client.clone().oneshot(get_request(&down)).await.is_err());
        let response = client.clone().oneshot(get_request(&healthy)).await.unwrap();
        assert_eq!(response.status(), 200);
    }
    assert_eq!(upstreams.get(&failing).state(), State::Open);
    assert_eq!(upstreams.get(&down).state(), State::Open);
    assert_eq!(upstreams.get(&healthy).state(), State::Closed);
    assert_eq!(upstreams.len(), 3);

    // The open hosts are refused without being called; the healthy one
    // still is called.
    let err = client
        .clone()
        .oneshot(get_request(&failing))
        .await
        .unwrap_err();
    assert!(err.is::<Rejected>());
    assert_eq!(failing_hits.load(Ordering::SeqCst), 3);
    let err = client
        .clone()
        .oneshot(get_request(&down))
        .await
        .unwrap_err();
    assert!(err.is::<Rejected>());
    let response = client.clone().oneshot(get_request(&healthy)).await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(healthy_hits.load(Ordering::SeqCst), 4);

    let summary = upstreams.summary(1);
    assert_eq!((summary.keys, summary.closed, summary.open), (3, 1, 2));
    assert_eq!(summary.not_closed.len(), 1, "bounded listing");
    assert_eq!(summary.not_closed_unlisted, 1);
}

#[cfg(feature = "admin")]
#[tokio::test]
async fn reliability_groups_keyed_breakers_with_bounded_listing() {
    use http_body_util::BodyExt;
    use tower_recovery::admin::Admin;
    use tower_recovery::drain::Drain;
    use tower_recovery::health::Reliability;

    let keyed = KeyedBreaker::<String>::new(Breaker::builder("tenant").consecutive_failures(1));
    for n in 0..30 {
        let breaker = keyed.get(&format!("t{n:02}"));
        if n < 25 {
            breaker.try_acquire().unwrap().failure();
        }
    }
    let reliability = Reliability::builder().keyed(&keyed).build().unwrap();
    let drain = Drain::default();
    let router: Router = Admin::new(&reliability, &drain).router();
    let response = router
        .oneshot(
            Request::get("/reliability")
                .body(axum::body::Body::empty())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let body = response.into_body().collect().await.unwrap().to_bytes();
    let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
    let tenant = &json["keyed_breakers"]["tenant"];
    assert_eq!(tenant["keys"], 30);
    assert_eq!(tenant["states"]["open"], 25);
    assert_eq!(tenant["states"]["closed"], 5);
    let listed = tenant["not_closed"].as_object().unwrap();
    assert_eq!(listed.len(), 20, "at most 20 keys listed");
    assert!(listed.contains_key("tenant[t00]"));
    assert_eq!(listed["tenant[t00]"]["state"], "open");
    assert_eq!(tenant["not_closed_unlisted"], 5);
    assert_eq!(tenant["overflow"]["state"], "closed");
    // An open key does not make the service unhealthy.
    assert_eq!(json["status"], "pass");
}

#[tokio::test]
async fn past_the_cap_new_keys_share_the_overflow_breaker() {
    let keyed = KeyedBreaker::<String>::builder(Breaker::builder("route").consecutive_failures(2))
        .max_keys(2)
        .build();
    let mut svc = ServiceBuilder::new()
        .layer(keyed.layer(|req: &(String, bool)| req.0.clone()))
        .service(service_fn(|(_, fail): (String, bool)| async move {
            if fail { Err("boom") } else { Ok("ok") }
        }));
    let mut call = async |key: &str, fail: bool| {
        svc.ready()
            .await
            .unwrap()
            .call((key.to_string(), fail))
            .await
    };
    for key in ["a", "b", "c", "d"] {
        assert_eq!(call(key, false).await.unwrap(), "ok");
    }
    assert_eq!(keyed.len(), 2, "the cap holds");
    assert!(keyed.find(&"a".into()).is_some());
    assert!(keyed.find(&"c".into()).is_none());
    assert_eq!(keyed.get(&"c".into()).name(), "route[overflow]");
    assert_eq!(keyed.overflowed(), 3, "c, d, and the get");

    // Keys past the cap share one fate, as with one plain breaker...
    for _ in 0..2 {
        assert!(call("c", true).await.is_err());
    }
    let err = call("d", false).await.unwrap_err();
    assert!(err.is::<Rejected>());
    assert_eq!(keyed.overflow().state(), State::Open);
    // ...and keys with their own breaker are not touched by it.
    assert_eq!(call("a", false).await.unwrap(), "ok");
    assert_eq!(call("b", false).await.unwrap(), "ok");
}

#[tokio::test(start_paused = true)]
async fn idle_closed_keys_are_evicted_and_open_ones_are_kept() {
    let keyed = KeyedBreaker::<&'static str>::builder(
        Breaker::builder("host")
            .consecutive_failures(1)
            .open_duration(Duration::from_secs(3600)),
    )
    .idle_timeout(Duration::from_secs(60))
    .max_keys(3)
    .build();
    keyed.get(&"idle").try_acquire().unwrap().success();
    keyed.get(&"busy").try_acquire().unwrap().success();
    keyed.get(&"down").try_acquire().unwrap().failure();
    assert_eq!(keyed.get(&"down").state(), State::Open);

    tokio::time::advance(Duration::from_secs(30)).await;
    keyed.get(&"busy").try_acquire().unwrap().success();
    tokio::time::advance(Duration::from_secs(31)).await;
    // 61 s: "idle" had no call for 61 s; "busy" had one 31 s ago.
    assert_eq!(keyed.evict_idle(), 1);
    assert!(keyed.find(&"idle").is_none());
    assert!(keyed.find(&"busy").is_some());
    assert_eq!(keyed.get(&"down").state(), State::Open, "kept");
    assert_eq!(keyed.evicted(), 1);

    // Much later, with no explicit sweep: a new key arriving at a full
    // registry sweeps, and takes the room of the idle closed key. The open
    // one is never evicted, however long it is idle.
    tokio::time::advance(Duration::from_secs(600)).await;
    keyed.get(&"x");
    assert_eq!(keyed.len(), 2, "busy evicted, x added");
    assert!(keyed.find(&"busy").is_none());
    assert!(keyed.find(&"x").is_some());
    let down = keyed
        .find(&"down")
        .expect("an open breaker is never evicted");
    assert_eq!(down.state(), State::Open);
    assert_eq!(down.name(), "host[down]");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn tasks_racing_on_a_new_key_share_one_breaker() {
    const TASKS: usize = 32;
    let keyed = KeyedBreaker::<String>::new(
        Breaker::builder("race")
            .consecutive_failures(TASKS as u32)
            .open_duration(Duration::from_secs(3600)),
    );
    let svc = ServiceBuilder::new()
        .layer(keyed.layer(|_: &u32| "same".to_string()))
        .service(service_fn(|_: u32| async { Err::<(), _>("boom") }));
    let barrier = Arc::new(tokio::sync::Barrier::new(TASKS));
    let tasks: Vec<_> = (0..TASKS)
        .map(|n| {
            let (svc, barrier) = (svc.clone(), barrier.clone());
            tokio::spawn(async move {
                barrier.wait().await;
                svc.oneshot(n as u32).await
            })
        })
        .collect();
    for task in tasks {
        let err = task.await.unwrap().unwrap_err();
        assert!(!err.is::<Rejected>(), "every call was admitted");
    }
    assert_eq!(keyed.len(), 1);
    // One breaker saw every failure: it opened at exactly `TASKS`.
    let breaker = keyed.get(&"same".to_string());
    assert_eq!(breaker.state(), State::Open);
    assert_eq!(breaker.snapshot().failures, TASKS as u64);
}

#[test]
fn the_number_of_keys_never_exceeds_the_cap() {
    const CAP: usize = 64;
    let keyed = KeyedBreaker::<u64>::builder(Breaker::builder("bounded"))
        .max_keys(CAP)
        .build();
    std::thread::scope(|scope| {
        for t in 0..4u64 {
            let keyed = &keyed;
            scope.spawn(move || {
                for n in 0..2_000 {
                    let breaker = keyed.get(&(t * 1_000_000 + n));
                    drop(breaker.try_acquire());
                    assert!(keyed.len() <= CAP);
                }
            });
        }
    });
    assert_eq!(keyed.len(), CAP);
    assert_eq!(keyed.snapshot().len(), CAP);
    assert_eq!(keyed.overflowed(), 4 * 2_000 - CAP as u64);
}

#[tokio::test]
async fn by_header_keys_by_tenant_and_defaults_when_missing() {
    let keyed = KeyedBreaker::<Arc<str>>::new(Breaker::builder("tenant"));
    let svc = ServiceBuilder::new()
        .layer(keyed.layer(ByHeader::new(http::HeaderName::from_static("x-tenant"))))
        .service(service_fn(|_: Request<()>| async {
            Ok::<_, std::convert::Infallible>(())
        }));
    let with = Request::get("/")
        .header("x-tenant", "acme")
        .body(())
        .unwrap();
    svc.clone().oneshot(with).await.unwrap();
    svc.clone()
        .oneshot(Request::get("/").body(()).unwrap())
        .await
        .unwrap();
    let mut names: Vec<_> = keyed
        .snapshot()
        .into_iter()
        .map(|(key, s)| (key.to_string(), s.name.to_string()))
        .collect();
    names.sort();
    assert_eq!(
        names,
        [
            ("acme".to_string(), "tenant[acme]".to_string()),
            ("default".to_string(), "tenant[default]".to_string())
        ]
    );
}

#[tokio::test]
async fn a_key_from_outside_is_cut_in_the_breakers_name() {
    let keyed = KeyedBreaker::<String>::new(Breaker::builder("h"));
    let long = "é".repeat(200);
    let name = keyed.get(&long).name().to_string();
    assert!(name.len() <= 2 + 96 + 3 + 1, "{}", name.len());
    assert!(name.ends_with("…]"));
}

#[test]
fn many_keys_in_turn_on_several_threads_keep_every_breaker_alive() {
    // More keys than a thread's cache of call credits holds: every call
    // takes its credit another way, and the registry's breakers stay
    // alive and correctly counted (a double free here would abort).
    let keyed = KeyedBreaker::<u32>::new(Breaker::builder("turns"));
    let svc = ServiceBuilder::new()
        .layer(keyed.layer(|k: &u32| *k))
        .service(service_fn(|_: u32| async {
            Ok::<_, std::convert::Infallible>(())
        }));
    for round in 0..3 {
        std::thread::scope(|scope| {
            for t in 0..2u32 {
                let svc = svc.clone();
                scope.spawn(move || {
                    let rt = tokio::runtime::Builder::new_current_thread()
                        .build()
                        .unwrap();
                    rt.block_on(async move {
                        for n in 0..20_000u32 {
                            svc.clone()
                                .oneshot((n + t * 7 + round) % 1_000)
                                .await
                                .unwrap();
                        }
                    });
                });
            }
        });
    }
    assert_eq!(keyed.len(), 1_000);
    drop(svc);
    drop(keyed);
}

#[test]
fn keys_in_turn_past_a_threads_credit_cache_free_nothing_twice() {
    // Nine keys in turn on one thread, whose cache keeps call credits for
    // eight breakers: every call misses it and takes a reference count,
    // and every eviction gives a batch back. A credit given back twice
    // would free a breaker the registry still holds (this aborted once).
    const KEYS: u32 = 9;
    let keyed = KeyedBreaker::<u32>::new(Breaker::builder("turns"));
    let svc = ServiceBuilder::new()
        .layer(keyed.layer(|k: &u32| *k))
        .service(service_fn(|_: u32| {
            std::future::ready(Ok::<_, std::convert::Infallible>(()))
        }));
    for round in 0..40u32 {
        let svc = svc.clone();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .build()
                .unwrap();
            rt.block_on(async move {
                for n in 0..round * 200 {
                    svc.clone().oneshot((n + round) % KEYS).await.unwrap();
                }
            });
        })
        .join()
        .unwrap();
    }
    assert_eq!(keyed.len(), KEYS as usize);
    for key in 0..KEYS {
        assert_eq!(keyed.get(&key).state(), State::Closed);
    }
}

/// A waker that asks the registry for a key from another thread and
/// records whether that lookup was blocked (a shard's lock held by the
/// thread that woke it).
struct LookupOnWake {
    keyed: KeyedBreaker<String>,
    key: String,
    blocked: std::sync::Mutex<Option<bool>>,
}

impl std::task::Wake for LookupOnWake {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        let (tx, rx) = std::sync::mpsc::channel();
        let (keyed, key) = (self.keyed.clone(), self.key.clone());
        std::thread::spawn(move || {
            let _ = keyed.find(&key);
            let _ = tx.send(());
        });
        let blocked = rx.recv_timeout(Duration::from_millis(500)).is_err();
        *self.blocked.lock().unwrap() = Some(blocked);
    }
}

#[tokio::test(start_paused = true)]
async fn an_evicted_breaker_is_dropped_with_no_shard_lock_held() {
    use std::future::Future;
    let keyed = KeyedBreaker::<String>::builder(Breaker::builder("host"))
        .idle_timeout(Duration::from_secs(1))
        .build();
    let key = "k".to_string();
    // Someone watches the key's transitions; the registry holds the only
    // handle of its breaker.
    let mut transitions = keyed.get(&key).subscribe();
    let probe = Arc::new(LookupOnWake {
        keyed: keyed.clone(),
        key: key.clone(),
        blocked: std::sync::Mutex::new(None),
    });
    let waker = std::task::Waker::from(probe.clone());
    {
        let mut recv = std::pin::pin!(transitions.recv());
        let mut cx = std::task::Context::from_waker(&waker);
        assert!(recv.as_mut().poll(&mut cx).is_pending());
        tokio::time::advance(Duration::from_secs(2)).await;
        // The breaker is dropped, its event channel closes, its receiver
        // is woken: a waker is code of someone else's.
        assert_eq!(keyed.evict_idle(), 1);
    }
    assert_eq!(
        *probe.blocked.lock().unwrap(),
        Some(false),
        "the receiver's waker ran under the shard's lock"
    );
}

#[tokio::test(start_paused = true)]
async fn a_key_with_a_call_in_flight_is_not_forgotten_open() {
    let keyed = KeyedBreaker::<&'static str>::builder(
        Breaker::builder("host")
            .consecutive_failures(1)
            .open_duration(Duration::from_secs(3600)),
    )
    .idle_timeout(Duration::from_secs(60))
    .build();
    let (release, hung) = tokio::sync::oneshot::channel::<()>();
    let hung = Arc::new(std::sync::Mutex::new(Some(hung)));
    let mut svc = ServiceBuilder::new()
        .layer(keyed.layer(|_: &u32| "slow"))
        .service(service_fn(move |_: u32| {
            let hung = hung.lock().unwrap().take();
            async move {
                if let Some(hung) = hung {
                    let _ = hung.await;
                }
                Err::<(), _>(std::io::Error::other("upstream failed"))
            }
        }));
    // A long call (a stream, a slow upstream) is admitted...
    let call = svc.ready().await.unwrap().call(1);
    let call = tokio::spawn(call);
    tokio::task::yield_now().await;
    // ...and outlives two sweeps a minute apart: the key is kept.
    tokio::time::advance(Duration::from_secs(30)).await;
    assert_eq!(keyed.evict_idle(), 0);
    tokio::time::advance(Duration::from_secs(61)).await;
    assert_eq!(keyed.evict_idle(), 0, "a key with a call in flight is kept");
    assert_eq!(keyed.len(), 1);
    // It fails: the key's breaker opens.
    release.send(()).unwrap();
    assert!(call.await.unwrap().is_err());
    // The next call of the key must be rejected, not sent upstream.
    let next = svc.ready().await.unwrap().call(2).await;
    let err = next.expect_err("the key is open");
    assert!(
        err.downcast_ref::<Rejected>().is_some(),
        "the open breaker was forgotten: {err}"
    );
}

/// Every way a call ends gives its in-flight count back: once idle, the
/// key is dropped (a count left behind would keep it forever).
#[tokio::test(start_paused = true)]
async fn calls_that_end_any_way_leave_nothing_in_flight() {
    let keyed = KeyedBreaker::<u32>::builder(
        Breaker::builder("host")
            .consecutive_failures(1)
            .open_duration(Duration::from_secs(1)),
    )
    .idle_timeout(Duration::from_secs(60))
    .build();
    let mut svc = ServiceBuilder::new()
        .layer(keyed.layer(|req: &(u32, u8)| req.0))
        .service(service_fn(|(_, how): (u32, u8)| async move {
            match how {
                0 => Ok(()),
                1 => Err(std::io::Error::other("upstream failed")),
                _ => std::future::pending().await,
            }
        }));
    // Key 1: a success. Key 2: a failure (opens), then a rejection while
    // open, then a success as its probe. Key 3: a call dropped unfinished.
    svc.ready().await.unwrap().call((1, 0)).await.unwrap();
    assert!(svc.ready().await.unwrap().call((2, 1)).await.is_err());
    let rejected = svc.ready().await.unwrap().call((2, 0)).await.unwrap_err();
    assert!(rejected.downcast_ref::<Rejected>().is_some());
    tokio::time::advance(Duration::from_secs(1)).await;
    svc.ready().await.unwrap().call((2, 0)).await.unwrap();
    assert_eq!(keyed.get(&2).state(), State::Closed);
    let dropped = svc.ready().await.unwrap().call((3, 2));
    drop(dropped);
    assert_eq!(keyed.len(), 3);
    // Two sweeps a timeout apart, no calls: all three are idle and none
    // is in flight.
    assert_eq!(keyed.evict_idle(), 0, "just used");
    tokio::time::advance(Duration::from_secs(60)).await;
    assert_eq!(keyed.evict_idle(), 3);
    assert!(keyed.is_empty());
}

/// Many callers on two threads, keys coming and going while sweeps run: no
/// key is dropped with a call in flight (each call holds a barrier of its
/// own key until the sweep has run), and every count comes back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sweeps_racing_calls_on_two_threads_drop_no_key_in_flight() {
    let clock = tower_recovery::clock::ManualClock::new();
    let keyed = KeyedBreaker::<u32>::builder(
        Breaker::builder("host")
            .consecutive_failures(1)
            .open_duration(Duration::from_secs(3600))
            .clock(clock.clone()),
    )
    .idle_timeout(Duration::from_secs(1))
    .build();
    let svc = ServiceBuilder::new()
        .layer(keyed.layer(|req: &u32| *req))
        .service(service_fn(|_: u32| async move {
            tokio::task::yield_now().await;
            Err::<(), _>(std::io::Error::other("upstream failed"))
        }));
    let sweeper = {
        let keyed = keyed.clone();
        let clock = clock.clone();
        tokio::spawn(async move {
            let mut dropped = 0;
            for _ in 0..2_000 {
                clock.advance(Duration::from_secs(2));
                dropped += keyed.evict_idle();
                tokio::task::yield_now().await;
            }
            dropped
        })
    };
    let callers: Vec<_> = (0..4u32)
        .map(|c| {
            let mut svc = svc.clone();
            let keyed = keyed.clone();
            tokio::spawn(async move {
                for i in 0..500u32 {
                    // Two keys of this caller's own.
                    let key = c * 2 + i % 2;
                    let err = svc.ready().await.unwrap().call(key).await.unwrap_err();
                    assert!(
                        err.downcast_ref::<Rejected>().is_none(),
                        "reset after each call: never open when called"
                    );
                    // The failure opened the key's breaker: the registry
                    // must still have it, open.
                    let found = keyed
                        .find(&key)
                        .unwrap_or_else(|| panic!("key {key} dropped with a call in flight"));
                    assert_eq!(found.state(), State::Open, "key {key} forgotten open");
                    // Closed again, so that it can go idle and be swept.
                    found.reset();
                }
            })
        })
        .collect();
    for caller in callers {
        caller.await.unwrap();
    }
    let dropped = sweeper.await.unwrap();
    assert!(dropped > 0, "sweeps dropped idle keys meanwhile");
    clock.advance(Duration::from_secs(2));
    keyed.evict_idle();
    clock.advance(Duration::from_secs(2));
    keyed.evict_idle();
    assert!(keyed.is_empty(), "a count was left behind");
}

// ===== every path a call ends by, and a sweep that unwinds =====

/// Paths the commit's own test does not take: a metrics-only breaker's
/// shadow admissions (admitted while open, finished and dropped), a
/// half-open probe and the call rejected for want of a permit, slow-call
/// timing (the ticket's start carries the `COUNTED` bit), and an inner
/// service that panics in `call`. Each gives its count back: once idle,
/// every key is dropped.
#[tokio::test(start_paused = true)]
async fn shadow_admissions_probes_slow_calls_and_panics_leave_nothing_in_flight() {
    let shadow = KeyedBreaker::<u32>::builder(
        Breaker::builder("shadow")
            .consecutive_failures(1)
            .open_duration(Duration::from_secs(1))
            .metrics_only(),
    )
    .idle_timeout(Duration::from_secs(60))
    .build();
    let strict = KeyedBreaker::<u32>::builder(
        Breaker::builder("strict")
            .count_window(1)
            .minimum_calls(1)
            .failure_rate(1.0)
            .half_open_permits(1)
            .slow_calls(Duration::from_secs(30), 1.0)
            .open_duration(Duration::from_secs(1)),
    )
    .idle_timeout(Duration::from_secs(60))
    .build();
    // 0: success, 1: failure, 2: pending until told, 3: panic in `call`.
    let inner = |release: Arc<tokio::sync::Notify>| {
        service_fn(move |(_, how): (u32, u8)| {
            assert!(how != 3, "the inner service panics in call");
            let release = release.clone();
            async move {
                match how {
                    0 => Ok(()),
                    1 => Err(std::io::Error::other("upstream failed")),
                    _ => {
                        release.notified().await;
                        Ok(())
                    }
                }
            }
        })
    };
    let release = Arc::new(tokio::sync::Notify::new());
    let mut shadowed = ServiceBuilder::new()
        .layer(shadow.layer(|req: &(u32, u8)| req.0))
        .service(inner(release.clone()));
    let mut guarded = ServiceBuilder::new()
        .layer(strict.layer(|req: &(u32, u8)| req.0))
        .service(inner(release.clone()));

    // Metrics-only: open, then a call admitted in the shadow of the open
    // state (finished), and one dropped unfinished; then a probe closes it.
    assert!(shadowed.ready().await.unwrap().call((1, 1)).await.is_err());
    assert_eq!(shadow.get(&1).state(), State::Open);
    shadowed.ready().await.unwrap().call((1, 0)).await.unwrap();
    drop(shadowed.ready().await.unwrap().call((1, 2)));
    assert_eq!(shadow.get(&1).snapshot().shadow_rejected, 2);
    tokio::time::advance(Duration::from_secs(1)).await;
    shadowed.ready().await.unwrap().call((1, 0)).await.unwrap();
    assert_eq!(shadow.get(&1).state(), State::Closed);

    // Strict: open, then one probe held while a second call is refused
    // (no permit), then the probe succeeds.
    assert!(guarded.ready().await.unwrap().call((1, 1)).await.is_err());
    tokio::time::advance(Duration::from_secs(1)).await;
    let probe = tokio::spawn(guarded.ready().await.unwrap().call((1, 2)));
    tokio::task::yield_now().await;
    let refused = guarded
        .ready()
        .await
        .unwrap()
        .call((1, 0))
        .await
        .unwrap_err();
    assert!(refused.downcast_ref::<Rejected>().is_some());
    release.notify_waiters();
    probe.await.unwrap().unwrap();
    assert_eq!(strict.get(&1).state(), State::Closed);
    // A panic in the inner service's `call`, after admission.
    let svc = guarded.ready().await.unwrap();
    let panicked =
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| drop(svc.call((2, 3)))));
    assert!(panicked.is_err());
    assert_eq!(strict.get(&2).state(), State::Closed);
    // A slow call (its ticket's start is masked of `COUNTED` when timed):
    // it opens the breaker; a probe closes it again.
    let slow = tokio::spawn(guarded.ready().await.unwrap().call((3, 2)));
    tokio::task::yield_now().await;
    tokio::time::advance(Duration::from_secs(31)).await;
    release.notify_waiters();
    slow.await.unwrap().unwrap();
    assert_eq!(strict.get(&3).state(), State::Open, "a slow call is slow");
    tokio::time::advance(Duration::from_secs(1)).await;
    guarded.ready().await.unwrap().call((3, 0)).await.unwrap();
    assert_eq!(strict.get(&3).state(), State::Closed);

    for keyed in [&shadow, &strict] {
        assert_eq!(keyed.evict_idle(), 0, "just used");
    }
    tokio::time::advance(Duration::from_secs(60)).await;
    assert_eq!(
        shadow.evict_idle(),
        1,
        "a shadow admission left a count behind"
    );
    assert_eq!(
        strict.evict_idle(),
        3,
        "a probe, refusal, panic or slow call left a count behind"
    );
}

/// A key whose `Clone` panics once asked to: user code that the commit now
/// runs under a shard's write lock, after the sweep has marked keys
/// `evicting` (`doomed.push(key.clone())`, `HashMap::clone`).
#[derive(Debug, PartialEq, Eq, Hash)]
struct Touchy(u32);

static TOUCHY_PANICS: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

impl Clone for Touchy {
    fn clone(&self) -> Self {
        assert!(
            !TOUCHY_PANICS.load(Ordering::SeqCst),
            "Touchy::clone asked to panic"
        );
        Touchy(self.0)
    }
}

impl std::fmt::Display for Touchy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "touchy-{}", self.0)
    }
}

/// A sweep that unwinds (a key's `Clone` panicked while it copied the
/// doomed keys) leaves the key it had marked `evicting` in the map: the
/// shard lock ignores poisoning, and nothing clears the flag. Every later
/// call of that key misses on the lock-free path and, under the write lock,
/// finds an entry `Entry::enter` refuses: a debug build panics on
/// `debug_assert!(entered)` in `enter_new`; a release build runs the call
/// *uncounted*, so a sweep drops the key with the call in flight and the
/// failure it then records opens a breaker the registry has forgotten.
#[tokio::test(start_paused = true)]
async fn a_sweep_that_unwinds_leaves_no_key_marked_evicting() {
    let clock = tower_recovery::clock::ManualClock::new();
    let keyed = KeyedBreaker::<Touchy>::builder(
        Breaker::builder("touchy")
            .consecutive_failures(1)
            .open_duration(Duration::from_secs(3600))
            .clock(clock.clone()),
    )
    .idle_timeout(Duration::from_secs(60))
    .build();
    let release = Arc::new(tokio::sync::Notify::new());
    let released = release.clone();
    let mut svc = ServiceBuilder::new()
        .layer(keyed.layer(|req: &u32| Touchy(*req)))
        .service(service_fn(move |_: u32| {
            let release = released.clone();
            async move {
                release.notified().await;
                Err::<(), _>(std::io::Error::other("upstream failed"))
            }
        }));
    drop(keyed.get(&Touchy(1)));
    clock.advance(Duration::from_secs(61));
    // The sweep marks the idle key, then panics copying it.
    TOUCHY_PANICS.store(true, Ordering::SeqCst);
    let swept = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| keyed.evict_idle()));
    TOUCHY_PANICS.store(false, Ordering::SeqCst);
    assert!(swept.is_err(), "the sweep unwound");
    assert_eq!(keyed.len(), 1);

    // A call of the key: admitted, counted, and so kept while in flight.
    let svc = svc.ready().await.unwrap();
    let call = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| svc.call(1)))
        .expect("a call of a key a panicked sweep left behind is admitted");
    let call = tokio::spawn(call);
    tokio::task::yield_now().await;
    keyed.evict_idle();
    clock.advance(Duration::from_secs(61));
    keyed.evict_idle();
    release.notify_waiters();
    assert!(call.await.unwrap().is_err());
    assert_eq!(
        keyed.find(&Touchy(1)).map(|b| b.state()),
        Some(State::Open),
        "the call's failure opened a breaker the registry dropped in flight"
    );
}
