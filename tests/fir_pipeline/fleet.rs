//! Three replicas of the demo (child processes, distinct ports) share one
//! private `redis-server` and one stand-in model server. The model server
//! loses its model: exactly one replica runs each recovery attempt (counted
//! at the stand-in, never two at once), the others report that it runs
//! elsewhere; the holder is SIGKILLed mid-cycle: another replica takes over
//! within the lease's time to live plus one renewal interval; the model is
//! back: the replicas serve 201s within a second of the holder's success.
//! Redis is killed under three replicas: they keep serving at the same
//! latency, say Redis is unreachable, recover on their own, and rejoin when
//! it is back. A fleet-scope force-open posted to one replica reaches all
//! three, and a fleet-scope reset closes them all.
//!
//! The tests here run one at a time (`SERIAL`): three demo processes each,
//! and latencies measured.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use axum::Router;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use serde_json::{Value, json};

use crate::support::*;

#[path = "../fleet/redis_server.rs"]
#[allow(dead_code)]
mod redis_server;

use redis_server::RedisServer;

/// One fleet test at a time: each runs three demos and one measures
/// latencies.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The model server, whose model can be unloaded: then `/health` still
/// answers (the process is up) but `/v1/models` and completions fail. Each
/// `/v1/models` request is a recovery attempt (health checks only read
/// `/health`), counted, with the most ever in flight at once (each takes
/// 200 ms while the model is not loaded).
struct Counts {
    attempts: AtomicUsize,
    in_flight: AtomicUsize,
    most_in_flight: AtomicUsize,
}

struct InFlight(Arc<Counts>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

fn model_server_with_switch(loaded: Arc<AtomicBool>, counts: Arc<Counts>) -> Router {
    let guard = {
        let loaded = loaded.clone();
        move |request: axum::extract::Request, next: axum::middleware::Next| {
            let (loaded, counts) = (loaded.clone(), counts.clone());
            async move {
                let attempt = request.uri().path() == "/v1/models";
                // Leaves the count when the request ends, or is dropped
                // (its client was killed).
                let _in_flight = attempt.then(|| {
                    counts.attempts.fetch_add(1, Ordering::SeqCst);
                    let now = counts.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
                    counts.most_in_flight.fetch_max(now, Ordering::SeqCst);
                    InFlight(counts.clone())
                });
                if request.uri().path() != "/health" && !loaded.load(Ordering::SeqCst) {
                    if attempt {
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                    (StatusCode::SERVICE_UNAVAILABLE, "model not loaded").into_response()
                } else {
                    next.run(request).await
                }
            }
        }
    };
    model_server(Duration::ZERO).layer(axum::middleware::from_fn(guard))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replicas_recover_the_model_server_as_one() {
    let _serial = SERIAL.lock().await;
    let Some(redis) = RedisServer::start_or_skip("three_replicas") else {
        return;
    };
    let loaded = Arc::new(AtomicBool::new(true));
    let counts = Arc::new(Counts {
        attempts: AtomicUsize::new(0),
        in_flight: AtomicUsize::new(0),
        most_in_flight: AtomicUsize::new(0),
    });
    let attempts = &counts.attempts;
    let model = Upstream::start(model_server_with_switch(loaded.clone(), counts.clone()))
        .await
        .unwrap();
    let asr = Upstream::start(asr_ocr_server()).await.unwrap();
    let dir = temp_dir("fleet");
    let mut demos: Vec<Demo> = (0..3)
        .map(|i| {
            Demo::spawn(
                free_port(),
                dir.join(format!("demo-{i}.log")),
                &[
                    ("MODEL_SERVER_URL", model.url()),
                    ("ASR_OCR_SERVER_URL", asr.url()),
                    (
                        "DATABASE_URL",
                        format!(
                            "sqlite://{}?mode=rwc",
                            dir.join(format!("fir-{i}.db")).display()
                        ),
                    ),
                    ("REDIS_URL", redis.url()),
                    ("FLEET_REPLICA_ID", format!("r{i}")),
                    ("FLEET_LEASE_TTL", "2".into()),
                    ("RECOVERY_BACKOFF", "1.0".into()),
                    ("MAX_RECOVERY_ATTEMPTS", "20".into()),
                    // The monitor's own probing would heal each replica on
                    // its own schedule: keep it out of the way.
                    ("HEALTH_CHECK_INTERVAL", "600".into()),
                ],
            )
        })
        .collect();
    for demo in &demos {
        demo.ready(Duration::from_secs(120)).await;
    }
    let http = reqwest::Client::new();
    for demo in &demos {
        let (status, body) = post_fir(&http, demo, "stolen bicycle").await.unwrap();
        assert_eq!(status, 201, "{body}");
    }
    eventually(
        Duration::from_secs(10),
        "three replicas in the fleet",
        || async {
            let r = reliability(&http, &demos[0]).await;
            (r["fleet"]["replicas_alive"] == 3).then_some(())
        },
    )
    .await;

    // The model is unloaded: every replica's breaker opens under traffic.
    loaded.store(false, Ordering::SeqCst);
    for demo in &demos {
        eventually(Duration::from_secs(10), "the breaker open", || async {
            let _ = post_fir(&http, demo, "while the model is gone").await;
            let r = reliability(&http, demo).await;
            (r["circuit_breakers"]["model_server"]["state"] != "closed").then_some(())
        })
        .await;
    }
    // One replica holds the lease and makes the attempts; the others say
    // it runs elsewhere, on that replica.
    let holder = eventually(
        Duration::from_secs(10),
        "a holder, followed by the others",
        || async {
            let mut holder = None;
            let mut following = 0;
            for demo in &demos {
                let r = reliability(&http, demo).await;
                let mine = &r["recovery"]["model_server"]["fleet"];
                let id = r["fleet"]["replica"].as_str().unwrap_or("").to_string();
                if mine["lease_holder"]["replica"] == json!(id) {
                    holder = Some(id);
                } else if mine["running_elsewhere"]["replica"].is_string() {
                    following += 1;
                }
            }
            holder.filter(|_| following == 2)
        },
    )
    .await;
    eventually(
        Duration::from_secs(10),
        "three attempts at the stand-in",
        || async { (attempts.load(Ordering::SeqCst) >= 3).then_some(()) },
    )
    .await;
    let mut own: Vec<(String, u64)> = Vec::new();
    for demo in &demos {
        let r = reliability(&http, demo).await;
        own.push((
            r["fleet"]["replica"].as_str().unwrap().to_string(),
            r["recovery"]["model_server"]["failures"].as_u64().unwrap(),
        ));
    }
    let at_stand_in = attempts.load(Ordering::SeqCst) as u64;
    let total: u64 = own.iter().map(|(_, n)| n).sum();
    println!("fleet: holder {holder}; attempts per replica {own:?}; {at_stand_in} at the stand-in");
    // Each attempt the stand-in saw was one replica's (an attempt under way
    // may be seen by the stand-in before its replica counts it).
    assert!(
        total <= at_stand_in && at_stand_in <= total + 1,
        "{own:?} vs {at_stand_in} at the stand-in"
    );
    for (id, n) in &own {
        if id != &holder {
            assert_eq!(*n, 0, "{id} made attempts while {holder} held the lease");
        }
    }
    let (status, body) = {
        let r = http
            .post(demos[0].url("/reliability/auto-recovery/model_server/trigger"))
            .bearer_auth(TOKEN)
            .send()
            .await
            .unwrap();
        (r.status().as_u16(), r.json::<Value>().await.unwrap())
    };
    assert_eq!(status, 202);
    if own[0].0 != holder {
        assert_eq!(body["outcome"], "running_elsewhere", "{body}");
        assert_eq!(body["holder"], json!(holder), "{body}");
    }

    // The holder dies mid-cycle (SIGKILL): its lease expires unrenewed and
    // another replica takes it over.
    let dead = own.iter().position(|(id, _)| id == &holder).unwrap();
    let mut killed = demos.remove(dead);
    killed.child.kill().unwrap();
    let _ = killed.child.wait();
    let died = Instant::now();
    let bound = Duration::from_secs(2) + Duration::from_secs(2) / 3;
    let holder = eventually(bound + Duration::from_secs(3), "a new holder", || async {
        for demo in &demos {
            let r = reliability(&http, demo).await;
            let id = r["fleet"]["replica"].clone();
            if r["recovery"]["model_server"]["fleet"]["lease_holder"]["replica"] == id {
                return id.as_str().map(str::to_string);
            }
        }
        None
    })
    .await;
    let takeover = died.elapsed();
    println!("fleet: {holder} took over {takeover:?} after the holder was SIGKILLed (lease 2 s)");
    assert!(
        takeover <= bound + Duration::from_millis(600),
        "takeover {takeover:?}, bound {bound:?}"
    );
    let before = attempts.load(Ordering::SeqCst);
    eventually(
        Duration::from_secs(10),
        "the new holder's attempts",
        || async { (attempts.load(Ordering::SeqCst) >= before + 2).then_some(()) },
    )
    .await;
    assert_eq!(
        counts.most_in_flight.load(Ordering::SeqCst),
        1,
        "two replicas attempted at once"
    );

    // The model is back: the holder's next attempt succeeds, and every
    // replica serves again within a second of it.
    loaded.store(true, Ordering::SeqCst);
    let mut holder_demo = None;
    for demo in &demos {
        let r = reliability(&http, demo).await;
        if r["fleet"]["replica"] == json!(holder) {
            holder_demo = Some(demo);
        }
    }
    let holder_demo = holder_demo.unwrap();
    let success = eventually(Duration::from_secs(15), "the holder's success", || async {
        let r = reliability(&http, holder_demo).await;
        (r["fleet"]["dependencies"]["model_server"]["last_outcome"]["outcome"] == "recovered")
            .then(Instant::now)
    })
    .await;
    let mut served = Vec::new();
    for demo in &demos {
        let t = eventually(Duration::from_secs(5), "a 201", || async {
            match post_fir(&http, demo, "after the model came back").await {
                Ok((201, _)) => Some(Instant::now()),
                _ => None,
            }
        })
        .await;
        served.push(t.saturating_duration_since(success));
    }
    println!("fleet: replicas served 201 {served:?} after the holder's success was seen");
    for s in &served {
        assert!(*s <= Duration::from_secs(1), "{served:?}");
    }
}

fn new_counts() -> Arc<Counts> {
    Arc::new(Counts {
        attempts: AtomicUsize::new(0),
        in_flight: AtomicUsize::new(0),
        most_in_flight: AtomicUsize::new(0),
    })
}

/// Three demo replicas `r0`..`r2` on one Redis and the two stand-ins,
/// ready, each having served a 201, all three seen alive and connected by
/// every replica.
async fn three_replicas(
    http: &reqwest::Client,
    name: &str,
    redis: &RedisServer,
    model: &Upstream,
    asr: &Upstream,
) -> Vec<Demo> {
    let dir = temp_dir(name);
    let demos: Vec<Demo> = (0..3)
        .map(|i| {
            Demo::spawn(
                free_port(),
                dir.join(format!("demo-{i}.log")),
                &[
                    ("MODEL_SERVER_URL", model.url()),
                    ("ASR_OCR_SERVER_URL", asr.url()),
                    (
                        "DATABASE_URL",
                        format!(
                            "sqlite://{}?mode=rwc",
                            dir.join(format!("fir-{i}.db")).display()
                        ),
                    ),
                    ("REDIS_URL", redis.url()),
                    ("FLEET_REPLICA_ID", format!("r{i}")),
                    ("FLEET_LEASE_TTL", "2".into()),
                    ("RECOVERY_INTERVAL", "1".into()),
                    ("RECOVERY_BACKOFF", "1.0".into()),
                    ("MAX_RECOVERY_ATTEMPTS", "20".into()),
                    // The monitor's own probing would heal each replica on
                    // its own schedule: keep it out of the way.
                    ("HEALTH_CHECK_INTERVAL", "600".into()),
                ],
            )
        })
        .collect();
    for demo in &demos {
        demo.ready(Duration::from_secs(120)).await;
    }
    for demo in &demos {
        let (status, body) = post_fir(http, demo, "stolen bicycle").await.unwrap();
        assert_eq!(status, 201, "{body}");
    }
    for demo in &demos {
        eventually(
            Duration::from_secs(10),
            "three replicas in the fleet, connected",
            || async {
                let r = reliability(http, demo).await;
                (r["fleet"]["connected"] == true && r["fleet"]["replicas_alive"] == 3).then_some(())
            },
        )
        .await;
    }
    demos
}

/// `n` complaints posted round-robin to `demos`, each answered 201: their
/// latencies, sorted.
async fn latencies(http: &reqwest::Client, demos: &[Demo], n: usize, what: &str) -> Vec<Duration> {
    let mut all = Vec::with_capacity(n);
    for i in 0..n {
        let demo = &demos[i % demos.len()];
        let start = Instant::now();
        let (status, body) = post_fir(http, demo, "stolen bicycle").await.unwrap();
        all.push(start.elapsed());
        assert_eq!(status, 201, "{what}, request {i} to {}: {body}", demo.base);
    }
    all.sort();
    all
}

fn p50(sorted: &[Duration]) -> Duration {
    sorted[sorted.len() / 2]
}

/// Polls `demo`'s `/reliability` every 5 ms until `test` accepts it: the
/// time since `since`, or a panic after `within`.
async fn reliability_within(
    http: &reqwest::Client,
    demo: &Demo,
    since: Instant,
    within: Duration,
    what: &str,
    test: impl Fn(&Value) -> bool,
) -> Duration {
    loop {
        let r = reliability(http, demo).await;
        if test(&r) {
            return since.elapsed();
        }
        assert!(
            since.elapsed() < within,
            "{what} on {}: not within {within:?}; /reliability: {r}",
            demo.base
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_redis_the_replicas_serve_recover_locally_and_rejoin() {
    let _serial = SERIAL.lock().await;
    let Some(mut redis) = RedisServer::start_or_skip("redis_stopped") else {
        return;
    };
    let loaded = Arc::new(AtomicBool::new(true));
    let counts = new_counts();
    let model = Upstream::start(model_server_with_switch(loaded.clone(), counts.clone()))
        .await
        .unwrap();
    let asr = Upstream::start(asr_ocr_server()).await.unwrap();
    let http = reqwest::Client::new();
    let demos = three_replicas(&http, "fleet-redis-stopped", &redis, &model, &asr).await;

    // The request path with Redis up, then from the moment it is killed
    // (before the replicas noticed), then once they all said so.
    let n = 90;
    let before = latencies(&http, &demos, n, "Redis up").await;
    redis.kill();
    let killed = Instant::now();
    let mut after = latencies(&http, &demos, n, "Redis just killed").await;
    let mut noticed = Vec::new();
    for demo in &demos {
        noticed.push(
            reliability_within(
                &http,
                demo,
                killed,
                Duration::from_secs(10),
                "Redis unreachable",
                |r| {
                    r["fleet"]["connected"] == false
                        && r["fleet"]["recovering_locally"] == true
                        && r["fleet"]["disconnected_seconds"].is_number()
                },
            )
            .await,
        );
    }
    println!("fleet: Redis killed, each replica said so after {noticed:?}");
    after.extend(latencies(&http, &demos, n, "Redis down").await);
    after.sort();
    let (p50_before, max_before) = (p50(&before), *before.last().unwrap());
    let (p50_after, max_after) = (p50(&after), *after.last().unwrap());
    println!(
        "fleet: POST /fir over 3 replicas, Redis up: p50 {p50_before:?} max {max_before:?} \
         ({n} requests); Redis down: p50 {p50_after:?} max {max_after:?} ({} requests)",
        after.len()
    );
    assert!(
        max_after < Duration::from_millis(200),
        "a request took {max_after:?} without Redis"
    );
    assert!(
        p50_after <= p50_before * 2 + Duration::from_millis(2),
        "the request path slowed without Redis: p50 {p50_before:?} -> {p50_after:?}"
    );
    // The metric says so too.
    let metrics = http
        .get(demos[0].url("/metrics"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let gauge = metrics
        .lines()
        .find(|l| l.starts_with("tower_recovery_fleet_connected"))
        .unwrap_or_else(|| panic!("no fleet_connected gauge in:\n{metrics}"));
    assert!(gauge.ends_with(" 0"), "{gauge}");

    // The model server loses its model while Redis is down: each replica
    // recovers on its own (no lease to take), and serves again once the
    // model is back.
    let attempts_before = counts.attempts.load(Ordering::SeqCst);
    loaded.store(false, Ordering::SeqCst);
    for demo in &demos {
        eventually(Duration::from_secs(10), "the breaker open", || async {
            let _ = post_fir(&http, demo, "while the model is gone").await;
            let r = reliability(&http, demo).await;
            (r["circuit_breakers"]["model_server"]["state"] != "closed").then_some(())
        })
        .await;
    }
    for demo in &demos {
        eventually(
            Duration::from_secs(10),
            "a failed local attempt",
            || async {
                let r = reliability(&http, demo).await;
                let mine = &r["recovery"]["model_server"];
                (mine["fleet"]["recovering_locally"] == true
                    && mine["fleet"]["lease_holder"].is_null()
                    && mine["fleet"]["running_elsewhere"].is_null()
                    && mine["failures"].as_u64().unwrap_or(0) >= 1)
                    .then_some(())
            },
        )
        .await;
    }
    let local_attempts = counts.attempts.load(Ordering::SeqCst) - attempts_before;
    assert!(
        local_attempts >= 3,
        "{local_attempts} attempts at the stand-in: every replica makes its own"
    );
    loaded.store(true, Ordering::SeqCst);
    let back = Instant::now();
    let mut served = Vec::new();
    for demo in &demos {
        eventually(
            Duration::from_secs(15),
            "a 201 after local recovery",
            || async {
                matches!(post_fir(&http, demo, "model back").await, Ok((201, _))).then_some(())
            },
        )
        .await;
        served.push(back.elapsed());
    }
    println!(
        "fleet: with Redis down, {local_attempts} local attempts at the stand-in; \
         replicas served 201 {served:?} after the model came back (recovery interval 1 s)"
    );

    // Redis is back on the same port: every replica rejoins within its
    // reconnect delay (at most 2 s) plus slack, and sees the others again.
    redis.start();
    let restarted = Instant::now();
    let rejoin_bound = Duration::from_secs(2) + Duration::from_secs(2);
    let mut rejoined = Vec::new();
    for demo in &demos {
        rejoined.push(
            reliability_within(&http, demo, restarted, rejoin_bound, "rejoined", |r| {
                r["fleet"]["connected"] == true && r["fleet"]["recovering_locally"] == false
            })
            .await,
        );
    }
    let alive_bound = rejoin_bound + Duration::from_secs(2);
    let mut alive = Vec::new();
    for demo in &demos {
        alive.push(
            reliability_within(
                &http,
                demo,
                restarted,
                alive_bound,
                "three replicas alive again",
                |r| r["fleet"]["replicas_alive"] == 3,
            )
            .await,
        );
    }
    println!(
        "fleet: Redis restarted; replicas connected again after {rejoined:?} \
         (bound {rejoin_bound:?}), saw 3 alive after {alive:?} (bound {alive_bound:?})"
    );
    let again = latencies(&http, &demos, 30, "Redis back").await;
    assert!(
        *again.last().unwrap() < Duration::from_millis(200),
        "{again:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fleet_scope_force_open_reaches_every_demo_replica() {
    let _serial = SERIAL.lock().await;
    let Some(redis) = RedisServer::start_or_skip("fleet_force_open") else {
        return;
    };
    let model = Upstream::start(model_server(Duration::ZERO)).await.unwrap();
    let asr = Upstream::start(asr_ocr_server()).await.unwrap();
    let http = reqwest::Client::new();
    let demos = three_replicas(&http, "fleet-force-open", &redis, &model, &asr).await;
    let post = |demo: &Demo, action: &str| {
        http.post(demo.url(&format!(
            "/reliability/circuit-breaker/model_server/{action}?scope=fleet"
        )))
        .bearer_auth(TOKEN)
        .send()
    };
    let state_is = |want: &'static str| {
        move |r: &Value| r["circuit_breakers"]["model_server"]["state"] == want
    };
    let bound = Duration::from_secs(1);

    // Without the token: refused, applied nowhere.
    let r = http
        .post(demos[1].url("/reliability/circuit-breaker/model_server/force-open?scope=fleet"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    for demo in &demos {
        let r = reliability(&http, demo).await;
        assert!(state_is("closed")(&r), "{r}");
    }

    let sent = Instant::now();
    let r = post(&demos[1], "force-open").await.unwrap();
    let posted = sent.elapsed();
    assert_eq!(r.status(), 200);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["fleet"]["sent"], true, "{body}");
    assert_eq!(body["fleet"]["action"], "force_open", "{body}");
    assert_eq!(body["fleet"]["replicas_subscribed"], 3, "{body}");
    let mut reached = Vec::new();
    for demo in &demos {
        reached.push(
            reliability_within(
                &http,
                demo,
                sent,
                bound,
                "forced open",
                state_is("forced_open"),
            )
            .await,
        );
    }
    println!(
        "fleet: a fleet-scope force-open (POST answered in {posted:?}) seen forced_open \
         in each replica's /reliability after {reached:?} (bound {bound:?})"
    );
    for (i, demo) in demos.iter().enumerate() {
        let r = reliability(&http, demo).await;
        let applied = r["fleet"]["commands_applied"].as_array().unwrap();
        if i == 1 {
            assert!(applied.is_empty(), "r1 applied its own command twice: {r}");
        } else {
            assert!(
                applied.iter().any(|a| a["action"] == "force_open"
                    && a["from"] == "r1"
                    && a["dependency"] == "model_server"),
                "{r}"
            );
        }
        // Forced open: no complaint reaches the model server.
        let (status, body) = post_fir(&http, demo, "while forced open").await.unwrap();
        assert_ne!(
            status, 201,
            "{} served while forced open: {body}",
            demo.base
        );
    }

    // A fleet-scope reset from another replica closes all three.
    let sent = Instant::now();
    let r = post(&demos[2], "reset").await.unwrap();
    assert_eq!(r.status(), 200);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["fleet"]["replicas_subscribed"], 3, "{body}");
    let mut closed = Vec::new();
    for demo in &demos {
        closed
            .push(reliability_within(&http, demo, sent, bound, "closed", state_is("closed")).await);
    }
    println!("fleet: a fleet-scope reset seen closed after {closed:?} (bound {bound:?})");
    for demo in &demos {
        let (status, body) = post_fir(&http, demo, "after the reset").await.unwrap();
        assert_eq!(status, 201, "{} after the reset: {body}", demo.base);
    }
}
