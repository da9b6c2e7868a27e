//! Three replicas of the demo (child processes, distinct ports) share one
//! private `redis-server` and one stand-in model server. The model server
//! loses its model: exactly one replica runs each recovery attempt (counted
//! at the stand-in, never two at once), the others report that it runs
//! elsewhere; the holder is SIGKILLed mid-cycle: another replica takes over
//! within the lease's time to live plus one renewal interval; the model is
//! back: the replicas serve 201s within a second of the holder's success.

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
