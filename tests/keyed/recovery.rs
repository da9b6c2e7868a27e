//! A recovery per key: each failing key runs its own, the healthy ones
//! never do, eviction drops an idle key's recovery (and never one at work),
//! threads racing on a new key make one, the overflow breaker's, and one
//! end to end over loopback.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::uri::Authority;
use tower::{ServiceBuilder, ServiceExt};
use tower_recovery::circuit_breaker::keyed::{ByAuthority, KeyedBreaker};
use tower_recovery::circuit_breaker::{Breaker, Rejected, State};
use tower_recovery::classify::HttpErrorsAsFailures;
use tower_recovery::recovery::{Backoff, Mode, Recovery, RecoveryState};

/// Attempts made, per key.
type Attempts = Arc<Mutex<HashMap<String, u32>>>;

fn attempts_of(attempts: &Attempts, key: &str) -> u32 {
    attempts.lock().unwrap().get(key).copied().unwrap_or(0)
}

/// Sets its flag when dropped: held by an action, it says the recovery's
/// task has ended (the task owns the action and drops it when it stops).
struct DropFlag(Arc<AtomicBool>);

impl Drop for DropFlag {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

/// Lets the recoveries' tasks run until `cond` holds (time stands still
/// when paused); fails the test, naming `what`, if it does not.
async fn eventually(what: &str, cond: impl Fn() -> bool) {
    for _ in 0..1_000 {
        if cond() {
            return;
        }
        tokio::task::yield_now().await;
    }
    panic!("never happened: {what}");
}

/// A registry of hosts whose recovery counts its attempts per key and
/// fails the first `fail_first` of each key's.
fn hosts(fail_first: u32, attempts: &Attempts) -> KeyedBreaker<String> {
    let attempts = attempts.clone();
    KeyedBreaker::builder(
        Breaker::builder("host")
            .consecutive_failures(1)
            .open_duration(Duration::from_secs(3600)),
    )
    .recovery(move |key: &String| {
        let (key, attempts) = (key.clone(), attempts.clone());
        Recovery::builder("ignored", move || {
            let n = {
                let mut attempts = attempts.lock().unwrap();
                let n = attempts.entry(key.clone()).or_insert(0);
                *n += 1;
                *n
            };
            async move {
                if n <= fail_first {
                    Err(format!("attempt {n} refused"))
                } else {
                    Ok(())
                }
            }
        })
        .mode(Mode::Strict)
        .max_attempts(3)
        .backoff(Backoff::new(Duration::from_secs(1), 2.0))
    })
    .build()
}

#[tokio::test(start_paused = true)]
async fn a_failing_key_runs_its_own_recovery_which_closes_its_breaker() {
    let attempts = Attempts::default();
    let keyed = hosts(2, &attempts);
    let (up, down) = ("up".to_string(), "down".to_string());
    keyed.get(&up).try_acquire().unwrap().success();
    keyed.get(&down).try_acquire().unwrap().failure();
    assert_eq!(keyed.get(&down).state(), State::Open);

    let recovery = keyed.recovery(&down).expect("a recovery per key");
    assert_eq!(recovery.name(), "host[down]");
    assert_eq!(recovery.status().state, RecoveryState::Recovering);
    let summary = keyed.summary(10);
    assert_eq!(summary.recovering, 1);
    assert_eq!(summary.not_closed[0].name.as_ref(), "host[down]");
    let listed = summary.not_closed_recovery[0].as_ref().unwrap();
    assert_eq!(
        (listed.name.as_ref(), listed.state),
        ("host[down]", RecoveryState::Recovering)
    );

    // Two refused attempts, with backoff, then the third succeeds.
    recovery.wait_idle_or_cooling().await;
    assert_eq!(recovery.status().state, RecoveryState::CoolingDown);
    assert_eq!(
        keyed.get(&down).state(),
        State::Closed,
        "closed by its recovery"
    );
    assert_eq!(attempts_of(&attempts, "down"), 3);
    assert_eq!(
        attempts_of(&attempts, "up"),
        0,
        "a healthy key's never runs"
    );
    let up_recovery = keyed.recovery(&up).unwrap();
    assert_eq!(up_recovery.status().state, RecoveryState::Idle);
    assert_eq!(up_recovery.status().failed_attempts, 0);
    assert_eq!(recovery.status().recoveries, 1);
    assert_eq!(recovery.status().failed_attempts, 2);

    // Another key's outage is its own: its attempts start from 1.
    let other = "other".to_string();
    keyed.get(&other).try_acquire().unwrap().failure();
    keyed.recovery(&other).unwrap().wait_idle_or_cooling().await;
    assert_eq!(attempts_of(&attempts, "other"), 3);
    assert_eq!(attempts_of(&attempts, "down"), 3, "not run again");
    assert_eq!(keyed.get(&other).state(), State::Closed);
    let summary = keyed.summary(10);
    assert_eq!((summary.recovering, summary.exhausted), (0, 0));
    assert_eq!(summary.without_recovery, 0);
}

#[tokio::test(start_paused = true)]
async fn an_exhausted_key_is_counted_and_stays_open() {
    let attempts = Attempts::default();
    let keyed = hosts(u32::MAX, &attempts);
    let down = "down".to_string();
    keyed.get(&down).try_acquire().unwrap().failure();
    let recovery = keyed.recovery(&down).unwrap();
    recovery.wait_idle_or_cooling().await;
    assert_eq!(recovery.status().state, RecoveryState::Exhausted);
    assert_eq!(attempts_of(&attempts, "down"), 3);
    assert_eq!(keyed.get(&down).state(), State::Open);
    let summary = keyed.summary(10);
    assert_eq!((summary.recovering, summary.exhausted), (0, 1));
    let listed = summary.not_closed_recovery[0].as_ref().unwrap();
    assert_eq!(listed.state, RecoveryState::Exhausted);
    assert_eq!(listed.last_error.as_deref(), Some("attempt 3 refused"));
}

#[tokio::test(start_paused = true)]
async fn an_idle_key_is_evicted_with_its_recovery_whose_task_ends() {
    let ended = Arc::new(AtomicBool::new(false));
    let flag = ended.clone();
    let keyed = KeyedBreaker::<u32>::builder(Breaker::builder("host"))
        .idle_timeout(Duration::from_secs(60))
        .recovery(move |_: &u32| {
            let flag = DropFlag(flag.clone());
            Recovery::builder("host", move || {
                let _held = &flag;
                async { Ok::<_, String>(()) }
            })
        })
        .build();
    keyed.get(&1).try_acquire().unwrap().success();
    assert!(keyed.recovery(&1).is_some());
    tokio::time::advance(Duration::from_secs(30)).await;
    assert_eq!(keyed.evict_idle(), 0);
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }
    assert!(
        !ended.load(Ordering::SeqCst),
        "its task runs while the key is kept"
    );

    tokio::time::advance(Duration::from_secs(61)).await;
    assert_eq!(keyed.evict_idle(), 1);
    assert!(keyed.recovery(&1).is_none());
    eventually("the evicted key's recovery task ends", || {
        ended.load(Ordering::SeqCst)
    })
    .await;
}

#[tokio::test(start_paused = true)]
async fn a_key_whose_recovery_is_at_work_is_not_evicted() {
    let ended: Arc<Mutex<HashMap<u32, Arc<AtomicBool>>>> = Arc::default();
    let (release, hold) = tokio::sync::watch::channel(false);
    let flags = ended.clone();
    let keyed = KeyedBreaker::<u32>::builder(
        Breaker::builder("host")
            .consecutive_failures(1)
            .open_duration(Duration::from_secs(3600)),
    )
    .idle_timeout(Duration::from_secs(10))
    .recovery(move |key: &u32| {
        let flag = Arc::new(AtomicBool::new(false));
        flags.lock().unwrap().insert(*key, flag.clone());
        let flag = DropFlag(flag);
        let (key, hold) = (*key, hold.clone());
        Recovery::builder("host", move || {
            let _held = &flag;
            let mut hold = hold.clone();
            async move {
                // Key 2's attempt runs until released.
                if key == 2 {
                    let _ = hold.wait_for(|go| *go).await;
                }
                Ok::<_, String>(())
            }
        })
        .mode(Mode::Strict)
        .cooldown(Duration::from_secs(300))
    })
    .build();
    // Key 1 fails; its recovery closes its breaker and cools down for 5
    // minutes. Key 2's recovery is triggered by hand, its breaker closed.
    keyed.get(&1).try_acquire().unwrap().failure();
    let one = keyed.recovery(&1).unwrap();
    one.wait_idle_or_cooling().await;
    assert_eq!(one.status().state, RecoveryState::CoolingDown);
    assert_eq!(keyed.get(&1).state(), State::Closed);
    keyed.get(&2);
    let two = keyed.recovery(&2).unwrap();
    two.trigger_manual();
    drop((one, two));

    // Closed and unused for far longer than the idle timeout: kept while
    // their recoveries are at work.
    for _ in 0..5 {
        tokio::time::advance(Duration::from_secs(20)).await;
        assert_eq!(keyed.evict_idle(), 0);
    }
    assert_eq!(keyed.len(), 2);
    let summary = keyed.summary(10);
    assert_eq!(summary.recovering, 1, "key 2");

    // Key 2's attempt ends: it cools down too. Once both cooldowns are
    // over, both keys are idle and dropped, with their recoveries.
    release.send(true).unwrap();
    eventually("key 2 recovered", || {
        keyed.recovery(&2).unwrap().status().state == RecoveryState::CoolingDown
    })
    .await;
    tokio::time::advance(Duration::from_secs(300)).await;
    eventually("both cooldowns over", || {
        [1, 2]
            .iter()
            .all(|k| keyed.recovery(k).unwrap().status().state == RecoveryState::Idle)
    })
    .await;
    // Their tasks see the cooldowns end (what they publish).
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }
    tokio::time::advance(Duration::from_secs(20)).await;
    assert_eq!(keyed.evict_idle(), 2);
    eventually("both tasks end", || {
        ended
            .lock()
            .unwrap()
            .values()
            .all(|f| f.load(Ordering::SeqCst))
    })
    .await;
}

#[test]
fn threads_racing_on_a_new_key_make_one_recovery_and_the_others_run_nothing() {
    const THREADS: usize = 8;
    const KEYS: u32 = 200;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let made = Arc::new(AtomicUsize::new(0));
    let ended = Arc::new(AtomicUsize::new(0));
    let attempts = Arc::new(AtomicUsize::new(0));
    let keyed = {
        let (made, ended, attempts) = (made.clone(), ended.clone(), attempts.clone());
        KeyedBreaker::<u32>::builder(Breaker::builder("race").consecutive_failures(1))
            .recovery(move |_: &u32| {
                made.fetch_add(1, Ordering::SeqCst);
                struct Count(Arc<AtomicUsize>);
                impl Drop for Count {
                    fn drop(&mut self) {
                        self.0.fetch_add(1, Ordering::SeqCst);
                    }
                }
                let ended = Count(ended.clone());
                let attempts = attempts.clone();
                Recovery::builder("race", move || {
                    let _held = &ended;
                    attempts.fetch_add(1, Ordering::SeqCst);
                    async { Ok::<_, String>(()) }
                })
            })
            .build()
    };
    let barrier = std::sync::Barrier::new(THREADS);
    std::thread::scope(|scope| {
        for _ in 0..THREADS {
            let (keyed, barrier, handle) = (&keyed, &barrier, rt.handle());
            scope.spawn(move || {
                let _runtime = handle.enter();
                for key in 0..KEYS {
                    barrier.wait();
                    drop(keyed.get(&key));
                }
            });
        }
    });
    let made = made.load(Ordering::SeqCst);
    println!("{made} recoveries made for {KEYS} keys raced on by {THREADS} threads");
    // One per key, and losers: the barrier lines the threads up on each
    // new key, so some of them race on one.
    assert!(
        made > KEYS as usize,
        "no thread lost a race: the test proved nothing about losers"
    );
    assert_eq!(keyed.len(), KEYS as usize);
    // Every loser's task ends; none ran its action.
    rt.block_on(async {
        for _ in 0..1_000 {
            if ended.load(Ordering::SeqCst) == made - KEYS as usize {
                break;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    });
    assert_eq!(ended.load(Ordering::SeqCst), made - KEYS as usize);
    assert_eq!(attempts.load(Ordering::SeqCst), 0);
    // Each key has one recovery: an outage of one key runs one attempt.
    keyed.get(&7).try_acquire().unwrap().failure();
    let recovery = keyed.recovery(&7).unwrap();
    rt.block_on(async {
        // The recovery's task sees the opening on a worker thread: until
        // it does, the recovery is idle, and `wait_idle_or_cooling` would
        // return at once. Wait for its attempt, then for its end (the
        // task closes the breaker after it publishes the cooldown).
        tokio::time::timeout(Duration::from_secs(10), async {
            while attempts.load(Ordering::SeqCst) == 0 {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            recovery.wait_idle_or_cooling().await;
            while keyed.get(&7).state() != State::Closed {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        })
        .await
        .unwrap();
    });
    assert_eq!(attempts.load(Ordering::SeqCst), 1);
    assert_eq!(keyed.get(&7).state(), State::Closed);
}

#[test]
fn a_key_first_seen_outside_a_runtime_has_no_recovery_and_no_panic() {
    let keyed = KeyedBreaker::<u32>::builder(Breaker::builder("host").consecutive_failures(1))
        .recovery(|_: &u32| Recovery::builder("host", || async { Ok::<_, String>(()) }))
        .build();
    keyed.get(&1).try_acquire().unwrap().failure();
    assert_eq!(keyed.get(&1).state(), State::Open);
    assert!(keyed.recovery(&1).is_none());
    let summary = keyed.summary(10);
    assert_eq!(summary.without_recovery, 1);
    assert_eq!(summary.not_closed_recovery, vec![None]);

    // A key first seen in a runtime gets one.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        keyed.get(&2);
        assert!(keyed.recovery(&2).is_some());
    });
    assert_eq!(keyed.summary(10).without_recovery, 1);
}

#[tokio::test(start_paused = true)]
async fn a_panicking_factory_leaves_the_key_without_a_recovery() {
    let keyed = KeyedBreaker::<u32>::builder(Breaker::builder("host"))
        .recovery(|key: &u32| {
            assert_ne!(*key, 13, "no recovery for 13");
            Recovery::builder("host", || async { Ok::<_, String>(()) })
        })
        .build();
    assert!(keyed.get(&13).try_acquire().is_ok());
    assert!(keyed.recovery(&13).is_none());
    keyed.get(&14);
    assert!(keyed.recovery(&14).is_some());
    assert_eq!(keyed.summary(10).without_recovery, 1);
}

#[tokio::test(start_paused = true)]
async fn the_overflow_breaker_has_a_recovery_of_its_own() {
    let attempts = Arc::new(AtomicUsize::new(0));
    let counted = attempts.clone();
    let factory_calls = Arc::new(AtomicUsize::new(0));
    let calls = factory_calls.clone();
    let keyed = KeyedBreaker::<u32>::builder(
        Breaker::builder("host")
            .consecutive_failures(1)
            .open_duration(Duration::from_secs(3600)),
    )
    .max_keys(1)
    .recovery(move |_: &u32| {
        calls.fetch_add(1, Ordering::SeqCst);
        Recovery::builder("host", || async { Ok::<_, String>(()) })
    })
    .overflow_recovery(Recovery::builder("ignored", move || {
        counted.fetch_add(1, Ordering::SeqCst);
        async { Ok::<_, String>(()) }
    }))
    .build();
    keyed.get(&1);
    assert!(
        keyed.overflow_recovery().is_none(),
        "made at its first call"
    );
    // Key 2 is past the cap: the overflow breaker, and its recovery.
    let overflow = keyed.get(&2);
    assert_eq!(overflow.name(), "host[overflow]");
    let recovery = keyed.overflow_recovery().expect("made");
    assert_eq!(recovery.name(), "host[overflow]");
    assert_eq!(factory_calls.load(Ordering::SeqCst), 1, "key 1's only");
    overflow.try_acquire().unwrap().failure();
    assert_eq!(keyed.overflow().state(), State::Open);
    recovery.wait_idle_or_cooling().await;
    assert_eq!(attempts.load(Ordering::SeqCst), 1);
    assert_eq!(keyed.overflow().state(), State::Closed);
    assert_eq!(
        keyed.summary(10).overflow_recovery.unwrap().recoveries,
        1,
        "shown in the summary"
    );
}

#[cfg(feature = "admin")]
#[tokio::test(start_paused = true)]
async fn reliability_shows_each_listed_keys_recovery() {
    use http_body_util::BodyExt;
    use tower_recovery::admin::Admin;
    use tower_recovery::drain::Drain;
    use tower_recovery::health::Reliability;

    let attempts = Attempts::default();
    let keyed = hosts(u32::MAX, &attempts);
    keyed.get(&"up".to_string());
    keyed
        .get(&"down".to_string())
        .try_acquire()
        .unwrap()
        .failure();
    keyed
        .recovery(&"down".to_string())
        .unwrap()
        .wait_idle_or_cooling()
        .await;
    let reliability = Reliability::builder().keyed(&keyed).build().unwrap();
    let drain = Drain::default();
    let reliability_json = async |token: Option<&str>| {
        let router: axum::Router = Admin::new(&reliability, &drain).token("secret").router();
        let mut request = http::Request::get("/reliability");
        if let Some(token) = token {
            request = request.header("authorization", format!("Bearer {token}"));
        }
        let response = router
            .oneshot(request.body(axum::body::Body::empty()).unwrap())
            .await
            .unwrap();
        let body = response.into_body().collect().await.unwrap().to_bytes();
        serde_json::from_slice::<serde_json::Value>(&body).unwrap()
    };
    let json = reliability_json(None).await;
    let host = &json["keyed_breakers"]["host"];
    assert_eq!(host["recoveries"]["exhausted"], 1);
    assert_eq!(host["recoveries"]["recovering"], 0);
    let down = &host["not_closed"]["host[down]"];
    assert_eq!(down["state"], "open");
    assert_eq!(down["recovery"]["state"], "exhausted");
    assert_eq!(down["recovery"]["attempts"], 3);
    assert_eq!(down["recovery"]["failures"], 3);
    assert_eq!(
        down["recovery"]["last_error"],
        serde_json::Value::Null,
        "errors shown only to who may see them"
    );
    let json = reliability_json(Some("secret")).await;
    let down = &json["keyed_breakers"]["host"]["not_closed"]["host[down]"];
    assert_eq!(down["recovery"]["last_error"], "attempt 3 refused");
    let host = &json["keyed_breakers"]["host"];
    assert_eq!(host["overflow"]["recovery"], serde_json::Value::Null);
    assert!(host["not_closed"].get("host[up]").is_none());
}

// ===== end to end =====

/// `GET /health` on `authority` over a fresh connection: the status.
async fn health(authority: &Authority) -> Result<u16, tower::BoxError> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(authority.as_str()).await?;
    stream
        .write_all(format!("GET /health HTTP/1.0\r\nHost: {authority}\r\n\r\n").as_bytes())
        .await?;
    let mut response = String::new();
    stream.read_to_string(&mut response).await?;
    Ok(response
        .split_whitespace()
        .nth(1)
        .ok_or("no status")?
        .parse()?)
}

async fn serve(listener: tokio::net::TcpListener) {
    let app = axum::Router::new()
        .route("/", axum::routing::get(|| async { "ok" }))
        .route("/health", axum::routing::get(|| async { "ok" }));
    axum::serve(listener, app).await.unwrap();
}

#[tokio::test]
async fn a_host_that_goes_down_is_recovered_by_its_own_recovery_over_loopback() {
    use bytes::Bytes;
    use http_body_util::Full;
    use hyper_util::client::legacy::Client;
    use hyper_util::rt::TokioExecutor;

    let healthy = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let healthy_at: Authority = healthy.local_addr().unwrap().to_string().parse().unwrap();
    tokio::spawn(serve(healthy));
    // Nothing listens here until the host comes back.
    let down: Authority = {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        listener.local_addr().unwrap().to_string().parse().unwrap()
    };

    let attempts = Attempts::default();
    let counted = attempts.clone();
    let upstreams = KeyedBreaker::<Authority>::builder(
        Breaker::builder("upstream")
            .consecutive_failures(3)
            // Only the key's recovery can close it here.
            .open_duration(Duration::from_secs(3600)),
    )
    .recovery(move |host: &Authority| {
        let (host, counted) = (host.clone(), counted.clone());
        Recovery::builder("upstream", move || {
            *counted.lock().unwrap().entry(host.to_string()).or_insert(0) += 1;
            let host = host.clone();
            async move {
                match health(&host).await? {
                    200 => Ok(()),
                    status => Err::<(), tower::BoxError>(format!("health {status}").into()),
                }
            }
        })
        .max_attempts(40)
        .backoff(Backoff::new(Duration::from_millis(50), 1.5).max(Duration::from_millis(200)))
        .attempt_timeout(Duration::from_secs(2))
    })
    .build();
    let client = ServiceBuilder::new()
        .layer(
            upstreams
                .layer(ByAuthority)
                .classify(HttpErrorsAsFailures::new()),
        )
        .service(Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>());
    let get = |authority: &Authority| {
        http::Request::get(format!("http://{authority}/"))
            .body(Full::new(Bytes::new()))
            .unwrap()
    };

    // Three refused connections open the down host's breaker; the healthy
    // host keeps serving.
    for _ in 0..3 {
        let err = client.clone().oneshot(get(&down)).await.unwrap_err();
        assert!(!err.is::<Rejected>(), "a real connection error: {err}");
        let response = client.clone().oneshot(get(&healthy_at)).await.unwrap();
        assert_eq!(response.status(), 200);
    }
    assert_eq!(upstreams.get(&down).state(), State::Open);
    let recovery = upstreams.recovery(&down).unwrap();
    assert_eq!(recovery.name(), format!("upstream[{down}]"));
    let err = client.clone().oneshot(get(&down)).await.unwrap_err();
    assert!(err.is::<Rejected>());

    // Its attempts fail while nothing listens.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while recovery.status().failed_attempts < 2 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "attempts did not run"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(upstreams.get(&down).state(), State::Open);

    // The host comes back on the same port: its recovery succeeds, its
    // breaker closes, requests flow.
    let server = tokio::spawn(serve(
        tokio::net::TcpListener::bind(down.as_str()).await.unwrap(),
    ));
    tokio::time::timeout(Duration::from_secs(10), recovery.wait_idle_or_cooling())
        .await
        .expect("recovered within 10 s");
    assert_eq!(recovery.status().state, RecoveryState::CoolingDown);
    assert_eq!(upstreams.get(&down).state(), State::Closed);
    let response = client.clone().oneshot(get(&down)).await.unwrap();
    assert_eq!(response.status(), 200);

    assert!(attempts_of(&attempts, down.as_str()) >= 3);
    assert_eq!(
        attempts_of(&attempts, healthy_at.as_str()),
        0,
        "the healthy host's recovery never ran"
    );
    assert_eq!(
        upstreams.recovery(&healthy_at).unwrap().status().state,
        RecoveryState::Idle
    );
    server.abort();
}
