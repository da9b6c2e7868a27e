//! A fleet of replicas recovering as one, through a private `redis-server`
//! started by each test (its own port and directory; never the shared
//! Redis). Times are real: leases live a second or less and every wait is
//! for a condition, with a deadline.
#![cfg(feature = "redis")]

mod redis_server;
mod review3;
mod review4;
mod standing;
mod standing_faults;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::watch;
use tower_recovery::circuit_breaker::{Breaker, State};
use tower_recovery::fleet::{
    Acquire, Action, Command, Coordinator, DependencyBeat, Fallback, Fleet, Heartbeat, Message,
    Outcome, RedisCoordinator,
};
use tower_recovery::recovery::{Recovery, RecoveryState, TriggerOutcome};

use redis_server::RedisServer;

const NS: &str = "test";

fn coordinator(redis: &RedisServer) -> RedisCoordinator {
    RedisCoordinator::builder(redis.url())
        .namespace(NS)
        .timeout(Duration::from_millis(500))
        .build()
        .unwrap()
}

/// Polls `f` until it gives a value, failing after `within`.
async fn eventually<T>(within: Duration, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + within;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

async fn connected(fleet: &Fleet, yes: bool) {
    tokio::time::timeout(Duration::from_secs(10), fleet.wait_connected(yes))
        .await
        .unwrap_or_else(|_| panic!("fleet never became connected={yes}"));
}

fn granted(a: Acquire) -> tower_recovery::fleet::Lease {
    match a {
        Acquire::Granted(lease) => lease,
        Acquire::HeldBy(h) => panic!("expected the lease, held by {h:?}"),
    }
}

#[tokio::test]
async fn a_lease_is_exclusive_and_a_stale_holder_is_fenced() {
    let Some(redis) = RedisServer::start_or_skip("lease_exclusive") else {
        return;
    };
    let a = coordinator(&redis);
    let b = coordinator(&redis);
    let ttl = Duration::from_millis(300);

    let first = granted(a.acquire("model_server", "a", ttl).await.unwrap());
    // Held: b is told who holds it, with its token; a cannot take it twice.
    match b.acquire("model_server", "b", ttl).await.unwrap() {
        Acquire::HeldBy(h) => {
            assert_eq!(&*h.replica, "a");
            assert_eq!(h.token, first.token());
            assert!(h.expires_in.is_some_and(|d| d <= ttl));
        }
        other => panic!("b took a held lease: {other:?}"),
    }
    assert!(matches!(
        a.acquire("model_server", "a", ttl).await.unwrap(),
        Acquire::HeldBy(_)
    ));
    // Leases are per dependency.
    granted(b.acquire("database", "b", ttl).await.unwrap());
    // Only the holder renews or releases it.
    let forged = tower_recovery::fleet::Lease::new("model_server", "b", first.token());
    assert!(!b.renew(&forged, ttl).await.unwrap());
    assert!(!b.release(&forged).await.unwrap());
    assert!(a.renew(&first, ttl).await.unwrap());
    assert!(
        a.publish(&first, &Outcome::Started { attempt: 1 })
            .await
            .unwrap()
    );

    // a stalls past its lease: it expires, b takes over with a newer token.
    let started = Instant::now();
    let mut second = None;
    while second.is_none() {
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "the lease never expired"
        );
        if let Acquire::Granted(lease) = b.acquire("model_server", "b", ttl).await.unwrap() {
            second = Some(lease);
        } else {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    let second = second.unwrap();
    assert!(second.token() > first.token());
    // a's renewal, release and results are refused: fenced by its token.
    assert!(!a.renew(&first, ttl).await.unwrap());
    assert!(
        !a.publish(&first, &Outcome::Recovered { attempts: 1 })
            .await
            .unwrap()
    );
    assert!(!a.release(&first).await.unwrap());
    let holder = a.holder("model_server").await.unwrap().unwrap();
    assert_eq!((&*holder.replica, holder.token), ("b", second.token()));
    // b's result is accepted, and is the dependency's last outcome.
    let failed = Outcome::AttemptFailed {
        attempt: 1,
        error: "connection refused".into(),
    };
    assert!(b.publish(&second, &failed).await.unwrap());
    let last = a.last_outcome("model_server").await.unwrap().unwrap();
    assert_eq!((&*last.replica, last.token), ("b", second.token()));
    assert_eq!(last.outcome, failed);
    // Released, it is free at once.
    assert!(b.release(&second).await.unwrap());
    assert_eq!(a.holder("model_server").await.unwrap(), None);
    let third = granted(a.acquire("model_server", "a", ttl).await.unwrap());
    assert!(third.token() > second.token());
}

#[tokio::test]
async fn subscribers_see_outcomes_and_heartbeats_expire() {
    let Some(redis) = RedisServer::start_or_skip("subscribe_heartbeat") else {
        return;
    };
    let a = coordinator(&redis);
    let b = coordinator(&redis);
    let mut sub = b.subscribe().await.unwrap();
    let lease = granted(a.acquire("asr", "a", Duration::from_secs(5)).await.unwrap());
    let outcome = Outcome::Exhausted {
        attempts: 3,
        error: "model not loaded".into(),
    };
    assert!(a.publish(&lease, &outcome).await.unwrap());
    let got = tokio::time::timeout(Duration::from_secs(5), sub.next())
        .await
        .expect("an outcome within 5 s")
        .expect("the subscription is alive");
    let Message::Outcome(got) = got else {
        panic!("expected an outcome, got {got:?}")
    };
    assert_eq!((&*got.dependency, &*got.replica), ("asr", "a"));
    assert_eq!(got.outcome, outcome);
    let command = Command::new("asr", Action::ForceOpen, "a");
    assert_eq!(a.broadcast(&command).await.unwrap(), 1, "b is subscribed");
    let got = tokio::time::timeout(Duration::from_secs(5), sub.next())
        .await
        .expect("a command within 5 s")
        .expect("the subscription is alive");
    let Message::Command(got) = got else {
        panic!("expected a command, got {got:?}")
    };
    // Numbered by the coordinator: at least its clock in milliseconds (the
    // same machine's clock here), so that numbers grow across a restart.
    assert!(
        got.id.abs_diff(command.sent_at_ms) < 60_000,
        "numbered {} by the coordinator, sent at {}",
        got.id,
        command.sent_at_ms
    );
    assert_eq!(
        (&*got.dependency, got.action, &*got.from),
        ("asr", Action::ForceOpen, "a")
    );
    // Stamped by the coordinator's clock (the same machine's here).
    assert!(got.sent_at_ms.abs_diff(command.sent_at_ms) < 60_000);
    // Kept for a replica that was away (its time read by this clock).
    let recent = a.recent_commands().await.unwrap();
    assert_eq!(recent.len(), 1);
    assert_eq!(
        (
            recent[0].id,
            &*recent[0].dependency,
            recent[0].action,
            &*recent[0].from
        ),
        (got.id, "asr", Action::ForceOpen, "a")
    );
    assert!(recent[0].sent_at_ms.abs_diff(got.sent_at_ms) < 5_000);

    let beat = Heartbeat::new(
        "a",
        1,
        vec![DependencyBeat::new(
            "asr",
            Some("open".into()),
            "recovering",
            true,
        )],
    );
    a.heartbeat(&beat, Duration::from_millis(300))
        .await
        .unwrap();
    b.heartbeat(&Heartbeat::new("b", 2, vec![]), Duration::from_secs(30))
        .await
        .unwrap();
    let mut seen = b.replicas().await.unwrap();
    seen.sort_by(|x, y| x.replica.cmp(&y.replica));
    assert_eq!(seen.len(), 2);
    assert_eq!(seen[0], beat);
    // a stops beating: it vanishes after its time to live.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let alive = b.replicas().await.unwrap();
        if alive.len() == 1 {
            assert_eq!(&*alive[0].replica, "b");
            break;
        }
        assert!(Instant::now() < deadline, "a's heartbeat never expired");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A replica: its fleet membership, breaker and recovery, whose action
/// counts its calls and finishes when `go` says so.
struct Replica {
    fleet: Fleet,
    breaker: Breaker,
    recovery: Recovery,
}

fn replica(
    redis: &RedisServer,
    id: &str,
    calls: &Arc<AtomicUsize>,
    go: &watch::Receiver<Option<bool>>,
    fallback: Fallback,
) -> Replica {
    let fleet = Fleet::builder(coordinator(redis))
        .replica_id(id)
        .lease_ttl(Duration::from_millis(900))
        .heartbeat_interval(Duration::from_millis(100))
        .fallback(fallback)
        .spawn();
    let breaker = Breaker::builder("model_server")
        .consecutive_failures(1)
        .open_duration(Duration::from_secs(600))
        .build();
    let (calls, go) = (calls.clone(), go.clone());
    let recovery = Recovery::builder("model_server", move || {
        let (calls, mut go) = (calls.clone(), go.clone());
        async move {
            calls.fetch_add(1, Ordering::SeqCst);
            let ok = go.wait_for(|g| g.is_some()).await.unwrap().unwrap_or(false);
            if ok {
                Ok(())
            } else {
                Err(std::io::Error::other("model server still down"))
            }
        }
    })
    .watch(&breaker)
    .fleet(&fleet)
    .max_attempts(1)
    .attempt_timeout(Duration::from_secs(60))
    .spawn();
    Replica {
        fleet,
        breaker,
        recovery,
    }
}

fn holder_of(r: &Replica) -> Option<String> {
    r.recovery
        .fleet_status()
        .unwrap()
        .holder
        .map(|h| h.replica.to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_run_one_recovery_and_the_other_probes_at_its_success() {
    let Some(redis) = RedisServer::start_or_skip("one_recovery") else {
        return;
    };
    let calls = Arc::new(AtomicUsize::new(0));
    let (go, go_rx) = watch::channel(None);
    let a = replica(&redis, "a", &calls, &go_rx, Fallback::Local);
    let b = replica(&redis, "b", &calls, &go_rx, Fallback::Local);
    connected(&a.fleet, true).await;
    connected(&b.fleet, true).await;

    // The model server goes down: a sees it first and takes the lease.
    a.breaker.try_acquire().unwrap().failure();
    let secs = Duration::from_secs(5);
    eventually(secs, "a's attempt", || {
        (calls.load(Ordering::SeqCst) == 1).then_some(())
    })
    .await;
    eventually(secs, "b sees a holding the lease", || {
        (holder_of(&b).as_deref() == Some("a")).then_some(())
    })
    .await;
    // b sees it too: its cycle waits on a's, its triggers say so.
    b.breaker.try_acquire().unwrap().failure();
    assert_eq!(
        b.recovery.trigger_automatic("test"),
        TriggerOutcome::RunningElsewhere
    );
    let following = eventually(secs, "b following a", || {
        b.recovery.fleet_status().unwrap().running_elsewhere
    })
    .await;
    assert_eq!(&*following.holder.replica, "a");
    assert_eq!(b.recovery.status().state, RecoveryState::Recovering);
    assert_eq!(
        b.recovery.trigger_manual(),
        TriggerOutcome::RunningElsewhere
    );

    // a's action succeeds: a closes its breaker, b probes its own at once
    // (its open duration is ten minutes) and ends its cycle.
    let done = Instant::now();
    go.send_replace(Some(true));
    eventually(secs, "a closed", || {
        a.breaker.state().is_closed().then_some(())
    })
    .await;
    eventually(secs, "b half-open", || {
        (b.breaker.state() == State::HalfOpen).then_some(())
    })
    .await;
    let probe_after = done.elapsed();
    eventually(secs, "b's cycle ended", || {
        (b.recovery.status().state == RecoveryState::CoolingDown).then_some(())
    })
    .await;
    println!("fleet: the other replica probes {probe_after:?} after the holder's success");
    assert_eq!(calls.load(Ordering::SeqCst), 1, "one attempt in the fleet");
    let status = b.recovery.status();
    assert_eq!(status.recoveries, 1);
    assert_eq!(status.failed_attempts, 0, "b made no attempt");
    assert!(
        b.recovery
            .fleet_status()
            .unwrap()
            .running_elsewhere
            .is_none()
    );
    // b's probe goes through and closes its breaker.
    b.breaker.try_acquire().unwrap().success();
    assert!(b.breaker.state().is_closed());
    // The lease was released.
    let raw = coordinator(&redis);
    let deadline = Instant::now() + secs;
    while raw.holder("model_server").await.unwrap().is_some() {
        assert!(Instant::now() < deadline, "the lease was never released");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let last = raw.last_outcome("model_server").await.unwrap().unwrap();
    assert_eq!(&*last.replica, "a");
    assert_eq!(last.outcome, Outcome::Recovered { attempts: 1 });

    // The fleet view: both replicas alive.
    eventually(secs, "both replicas in the fleet view", || {
        let s = a.fleet.status();
        (s.replicas.len() == 2).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn followers_end_exhausted_with_the_holder_and_do_not_alert() {
    let Some(redis) = RedisServer::start_or_skip("exhausted_elsewhere") else {
        return;
    };
    let calls = Arc::new(AtomicUsize::new(0));
    let (go, go_rx) = watch::channel(None);
    let a = replica(&redis, "a", &calls, &go_rx, Fallback::Local);
    let b = replica(&redis, "b", &calls, &go_rx, Fallback::Local);
    connected(&a.fleet, true).await;
    connected(&b.fleet, true).await;
    let secs = Duration::from_secs(5);
    a.breaker.try_acquire().unwrap().failure();
    eventually(secs, "a's attempt", || {
        (calls.load(Ordering::SeqCst) == 1).then_some(())
    })
    .await;
    eventually(secs, "b sees a holding the lease", || {
        (holder_of(&b).as_deref() == Some("a")).then_some(())
    })
    .await;
    b.breaker.try_acquire().unwrap().failure();
    eventually(secs, "b following a", || {
        b.recovery.fleet_status().unwrap().running_elsewhere
    })
    .await;
    go.send_replace(Some(false));
    eventually(secs, "a exhausted", || {
        (a.recovery.status().state == RecoveryState::Exhausted).then_some(())
    })
    .await;
    eventually(secs, "b exhausted too", || {
        (b.recovery.status().state == RecoveryState::Exhausted).then_some(())
    })
    .await;
    assert_eq!(calls.load(Ordering::SeqCst), 1, "one attempt in the fleet");
    let status = b.recovery.status();
    assert_eq!(status.failed_attempts, 0, "b made no attempt");
    assert!(
        status
            .last_error
            .as_deref()
            .is_some_and(|e| e.contains("replica 'a'") && e.contains("model server still down")),
        "{:?}",
        status.last_error
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_takes_over_when_the_holder_dies() {
    let Some(redis) = RedisServer::start_or_skip("takeover") else {
        return;
    };
    let calls = Arc::new(AtomicUsize::new(0));
    let (_go, go_rx) = watch::channel(Some(true));
    let b = replica(&redis, "b", &calls, &go_rx, Fallback::Local);
    connected(&b.fleet, true).await;
    // A holder that dies mid-cycle: it took the lease and never renews it.
    let ghost = coordinator(&redis);
    let ttl = Duration::from_millis(900);
    let lease = granted(ghost.acquire("model_server", "ghost", ttl).await.unwrap());
    let taken = Instant::now();
    eventually(Duration::from_secs(5), "b sees the ghost's lease", || {
        (holder_of(&b).as_deref() == Some("ghost")).then_some(())
    })
    .await;
    b.breaker.try_acquire().unwrap().failure();
    // b waits on the ghost, then takes over once its lease expired.
    let bound = ttl + ttl / 3;
    eventually(bound + Duration::from_secs(2), "b's own attempt", || {
        (calls.load(Ordering::SeqCst) == 1).then_some(())
    })
    .await;
    let takeover = taken.elapsed();
    println!("fleet: takeover {takeover:?} after the holder took its lease (ttl {ttl:?})");
    assert!(takeover >= ttl, "b ran while the ghost's lease was alive");
    assert!(
        // (slack for a loaded machine: the test suite runs in parallel)
        takeover <= bound + Duration::from_millis(600),
        "takeover took {takeover:?}, bound {bound:?}"
    );
    eventually(Duration::from_secs(5), "b recovered", || {
        b.breaker.state().is_closed().then_some(())
    })
    .await;
    // The ghost wakes up: its results are refused.
    assert!(
        !ghost
            .publish(&lease, &Outcome::Recovered { attempts: 1 })
            .await
            .unwrap()
    );
    // b's success is published (by its lease's task, just after it closed
    // its breaker); the ghost's never is.
    let deadline = Instant::now() + Duration::from_secs(5);
    let last = loop {
        match ghost.last_outcome("model_server").await.unwrap() {
            Some(last) if last.outcome == (Outcome::Recovered { attempts: 1 }) => break last,
            _ => {}
        }
        assert!(Instant::now() < deadline, "b's success never published");
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    assert_eq!(&*last.replica, "b");
    assert!(last.token > lease.token());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_redis_a_replica_recovers_locally_and_rejoins() {
    let Some(mut redis) = RedisServer::start_or_skip("fallback") else {
        return;
    };
    let calls = Arc::new(AtomicUsize::new(0));
    let (_go, go_rx) = watch::channel(Some(true));
    let a = replica(&redis, "a", &calls, &go_rx, Fallback::Local);
    connected(&a.fleet, true).await;

    // The request path costs the same with the coordinator up or down.
    // The best of five runs, so a test running beside this one on the
    // same cores does not decide the figure.
    let per_call = |breaker: &Breaker| {
        let n = 100_000u32;
        (0..5)
            .map(|_| {
                let start = Instant::now();
                for _ in 0..n {
                    breaker.try_acquire().unwrap().success();
                }
                start.elapsed() / n
            })
            .min()
            .unwrap()
    };
    let up = per_call(&a.breaker);

    redis.kill();
    connected(&a.fleet, false).await;
    let down = per_call(&a.breaker);
    println!("fleet: breaker call {up:?} with Redis up, {down:?} with Redis down");
    assert!(
        down <= up * 3 + Duration::from_nanos(200),
        "the request path slowed without Redis: {up:?} -> {down:?}"
    );
    let status = a.fleet.status();
    assert!(!status.connected && status.last_error.is_some());

    // The model server goes down: a recovers on its own.
    a.breaker.try_acquire().unwrap().failure();
    eventually(Duration::from_secs(5), "a local attempt", || {
        (calls.load(Ordering::SeqCst) == 1).then_some(())
    })
    .await;
    eventually(Duration::from_secs(5), "a recovered locally", || {
        a.breaker.state().is_closed().then_some(())
    })
    .await;
    assert!(a.recovery.fleet_status().unwrap().local_fallback);

    // Redis is back: a rejoins, and its next cycle runs under a lease.
    redis.start();
    connected(&a.fleet, true).await;
    assert_eq!(a.recovery.trigger_manual(), TriggerOutcome::Started);
    let raw = coordinator(&redis);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        if let Some(last) = raw.last_outcome("model_server").await.unwrap() {
            if last.outcome == (Outcome::Recovered { attempts: 1 }) {
                assert_eq!(&*last.replica, "a");
                break;
            }
        }
        assert!(
            Instant::now() < deadline,
            "no outcome published after rejoining"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(calls.load(Ordering::SeqCst), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_wait_mode_no_cycle_runs_until_redis_is_back() {
    let Some(mut redis) = RedisServer::start_or_skip("wait_mode") else {
        return;
    };
    let calls = Arc::new(AtomicUsize::new(0));
    let (_go, go_rx) = watch::channel(Some(true));
    let a = replica(&redis, "a", &calls, &go_rx, Fallback::Wait);
    connected(&a.fleet, true).await;
    redis.kill();
    connected(&a.fleet, false).await;
    a.breaker.try_acquire().unwrap().failure();
    assert_eq!(a.recovery.status().state, RecoveryState::Recovering);
    // The cycle's turn tries the coordinator (and fails) at least twice
    // before Redis comes back; nothing runs meanwhile.
    let start = Instant::now();
    while start.elapsed() < Duration::from_millis(700) {
        assert_eq!(calls.load(Ordering::SeqCst), 0, "ran without the lease");
        tokio::task::yield_now().await;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    redis.start();
    eventually(Duration::from_secs(10), "the attempt under a lease", || {
        (calls.load(Ordering::SeqCst) == 1).then_some(())
    })
    .await;
    eventually(Duration::from_secs(5), "recovered", || {
        a.breaker.state().is_closed().then_some(())
    })
    .await;
}

/// `/reliability` and `/health` of a replica whose recovery waits on
/// another replica's: the fleet section tells the truth.
#[cfg(feature = "admin")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_routes_report_the_fleet() {
    use axum::body::Body;
    use http_body_util::BodyExt;
    use tower::ServiceExt;
    use tower_recovery::admin::Admin;
    use tower_recovery::drain::Drain;
    use tower_recovery::health::{Dependency, HealthCheck, Reliability};

    let Some(redis) = RedisServer::start_or_skip("admin") else {
        return;
    };
    let calls = Arc::new(AtomicUsize::new(0));
    let (go, go_rx) = watch::channel(None);
    let a = replica(&redis, "a", &calls, &go_rx, Fallback::Local);
    let b = replica(&redis, "b", &calls, &go_rx, Fallback::Local);
    connected(&a.fleet, true).await;
    connected(&b.fleet, true).await;
    let reliability = Reliability::builder()
        .dependency(
            Dependency::new(
                "model_server",
                HealthCheck::new(|| async { Ok::<(), String>(()) }),
            )
            .breaker(&b.breaker)
            .recovery(&b.recovery),
        )
        .build()
        .unwrap();
    let router = Admin::new(&reliability, &Drain::default())
        .fleet(&b.fleet)
        .open()
        .router::<()>();
    let get = |path: &'static str| {
        let router = router.clone();
        async move {
            let response = router
                .oneshot(http::Request::get(path).body(Body::empty()).unwrap())
                .await
                .unwrap();
            let bytes = response.into_body().collect().await.unwrap().to_bytes();
            serde_json::from_slice::<serde_json::Value>(&bytes).unwrap()
        }
    };
    let secs = Duration::from_secs(5);
    a.breaker.try_acquire().unwrap().failure();
    eventually(secs, "a's attempt", || {
        (calls.load(Ordering::SeqCst) == 1).then_some(())
    })
    .await;
    b.breaker.try_acquire().unwrap().failure();
    eventually(secs, "b following a", || {
        b.recovery.fleet_status().unwrap().running_elsewhere
    })
    .await;
    // Both replicas' heartbeats say the model server is down.
    let deadline = Instant::now() + secs;
    let r = loop {
        let r = get("/reliability").await;
        if r["fleet"]["dependencies"]["model_server"]["replicas_seeing_it_down"] == 2 {
            break r;
        }
        assert!(
            Instant::now() < deadline,
            "the fleet view never caught up: {r}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let fleet = &r["fleet"];
    assert_eq!(fleet["replica"], "b");
    assert_eq!(fleet["connected"], true);
    assert_eq!(fleet["replicas_alive"], 2);
    let dep = &fleet["dependencies"]["model_server"];
    assert_eq!(dep["lease_holder"]["replica"], "a");
    assert_eq!(dep["down_everywhere"], true);
    let mine = &r["recovery"]["model_server"]["fleet"];
    assert_eq!(mine["running_elsewhere"]["replica"], "a");
    assert_eq!(mine["recovering_locally"], false);
    let health = get("/health").await;
    assert_eq!(health["fleet"]["down_scope"]["model_server"], "fleet");
    // The trigger says where the cycle runs.
    let response = router
        .clone()
        .oneshot(
            http::Request::post("/reliability/auto-recovery/model_server/trigger")
                .body(Body::empty())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(response.status(), 202);
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    let body: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
    assert_eq!(body["outcome"], "running_elsewhere");
    assert_eq!(body["holder"], "a");
    go.send_replace(Some(true));
    eventually(secs, "b's cycle ended", || {
        (b.recovery.status().state == RecoveryState::CoolingDown).then_some(())
    })
    .await;
}

/// `POST .../force-open?scope=fleet` on one replica reaches the others.
#[cfg(feature = "admin")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fleet_scope_force_open_reaches_every_replica() {
    use axum::body::Body;
    use http_body_util::BodyExt;
    use tower::ServiceExt;
    use tower_recovery::admin::Admin;
    use tower_recovery::drain::Drain;
    use tower_recovery::health::{Dependency, HealthCheck, Reliability};

    let Some(redis) = RedisServer::start_or_skip("fleet_scope") else {
        return;
    };
    let calls = Arc::new(AtomicUsize::new(0));
    let (_go, go_rx) = watch::channel(Some(true));
    let replicas: Vec<Replica> = ["a", "b", "c"]
        .into_iter()
        .map(|id| replica(&redis, id, &calls, &go_rx, Fallback::Local))
        .collect();
    for r in &replicas {
        connected(&r.fleet, true).await;
    }
    let admin = |r: &Replica| {
        let reliability = Reliability::builder()
            .dependency(
                Dependency::new(
                    "model_server",
                    HealthCheck::new(|| async { Ok::<(), String>(()) }),
                )
                .breaker(&r.breaker)
                .recovery(&r.recovery),
            )
            .build()
            .unwrap();
        Admin::new(&reliability, &Drain::default())
            .fleet(&r.fleet)
            .token("t0ken")
            .router::<()>()
    };
    let post = |router: axum::Router, path: &'static str| async move {
        let response = router
            .oneshot(
                http::Request::post(path)
                    .header("authorization", "Bearer t0ken")
                    .body(Body::empty())
                    .unwrap(),
            )
            .await
            .unwrap();
        let status = response.status();
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        (
            status,
            serde_json::from_slice::<serde_json::Value>(&bytes).unwrap(),
        )
    };
    let a = admin(&replicas[0]);
    // Not for every route.
    let (status, _) = post(
        a.clone(),
        "/reliability/circuit-breaker/model_server/config?scope=fleet",
    )
    .await;
    assert_eq!(status, 400);
    // A mistyped scope is refused, not applied here alone.
    let (status, body) = post(
        a.clone(),
        "/reliability/circuit-breaker/model_server/force-open?scope=Fleet",
    )
    .await;
    assert_eq!(status, 400, "{body}");
    assert!(body["error"].as_str().unwrap().contains("scope=Fleet"));
    assert_eq!(
        replicas[0].breaker.state(),
        State::Closed,
        "nothing applied"
    );
    let sent = Instant::now();
    let (status, body) = post(
        a.clone(),
        "/reliability/circuit-breaker/model_server/force-open?scope=fleet",
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["fleet"]["sent"], true);
    assert_eq!(body["fleet"]["replicas_subscribed"], 3);
    assert_eq!(replicas[0].breaker.state(), State::ForcedOpen);
    let bound = Duration::from_secs(1);
    for r in &replicas[1..] {
        eventually(bound, "the force-open reached every replica", || {
            (r.breaker.state() == State::ForcedOpen).then_some(())
        })
        .await;
    }
    println!(
        "fleet: a fleet-scope force-open reached 3 replicas in {:?}",
        sent.elapsed()
    );
    let applied = &replicas[2].fleet.status().commands_applied;
    assert_eq!(applied.len(), 1);
    assert_eq!(&*applied[0].command.from, "a");
    assert_eq!(applied[0].command.action, Action::ForceOpen);
    assert!(
        replicas[0].fleet.status().commands_applied.is_empty(),
        "a applied it itself"
    );
    // Reset, fleet-wide: every breaker closes.
    let (status, _) = post(
        admin(&replicas[2]),
        "/reliability/circuit-breaker/model_server/reset?scope=fleet",
    )
    .await;
    assert_eq!(status, 200);
    for r in &replicas {
        eventually(bound, "the reset reached every replica", || {
            r.breaker.state().is_closed().then_some(())
        })
        .await;
    }
    // Without Redis, a fleet-scope action is applied here only, and says so.
    drop(redis);
    connected(&replicas[0].fleet, false).await;
    let (status, body) = post(
        a,
        "/reliability/circuit-breaker/model_server/disable?scope=fleet",
    )
    .await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["fleet"]["sent"], false);
    assert_eq!(replicas[0].breaker.state(), State::Disabled);
}

/// A TCP relay to Redis that the test can cut (every connection dropped,
/// new ones refused) and restore: one replica loses Redis while the
/// others keep it.
struct Relay {
    port: u16,
    cut: Arc<std::sync::atomic::AtomicBool>,
    links: Arc<std::sync::Mutex<Vec<tokio::task::AbortHandle>>>,
}

impl Relay {
    async fn start(to: u16) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let cut = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let links = Arc::new(std::sync::Mutex::new(Vec::new()));
        let (c, l) = (cut.clone(), links.clone());
        tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                if c.load(Ordering::SeqCst) {
                    continue; // dropped: refused
                }
                let link = tokio::spawn(async move {
                    if let Ok(mut outbound) =
                        tokio::net::TcpStream::connect(("127.0.0.1", to)).await
                    {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
                l.lock().unwrap().push(link.abort_handle());
            }
        });
        Self { port, cut, links }
    }

    fn cut(&self) {
        self.cut.store(true, Ordering::SeqCst);
        for link in self.links.lock().unwrap().drain(..) {
            link.abort();
        }
    }

    fn restore(&self) {
        self.cut.store(false, Ordering::SeqCst);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_away_during_a_fleet_command_applies_it_on_its_return() {
    let Some(redis) = RedisServer::start_or_skip("fleet_catch_up") else {
        return;
    };
    let calls = Arc::new(AtomicUsize::new(0));
    let (_go, go_rx) = watch::channel(Some(true));
    let a = replica(&redis, "a", &calls, &go_rx, Fallback::Local);
    // b reaches Redis through a relay the test cuts.
    let relay = Relay::start(redis.port).await;
    let b_fleet = Fleet::builder(
        RedisCoordinator::builder(format!("redis://127.0.0.1:{}/", relay.port))
            .namespace(NS)
            .timeout(Duration::from_millis(300))
            .build()
            .unwrap(),
    )
    .replica_id("b")
    .lease_ttl(Duration::from_millis(900))
    .heartbeat_interval(Duration::from_millis(100))
    .spawn();
    let b_breaker = Breaker::builder("model_server").build();
    let b_recovery = Recovery::builder("model_server", || async { Ok::<(), String>(()) })
        .watch(&b_breaker)
        .fleet(&b_fleet)
        .spawn();
    connected(&a.fleet, true).await;
    connected(&b_fleet, true).await;

    // A command from before c joins is history to c.
    assert_eq!(
        a.fleet
            .broadcast("model_server", Action::Disable)
            .await
            .unwrap(),
        2
    );
    eventually(Duration::from_secs(1), "b disabled", || {
        (b_breaker.state() == State::Disabled).then_some(())
    })
    .await;
    a.fleet
        .broadcast("model_server", Action::Reset)
        .await
        .unwrap();
    eventually(Duration::from_secs(1), "b reset", || {
        b_breaker.state().is_closed().then_some(())
    })
    .await;

    relay.cut();
    connected(&b_fleet, false).await;
    let received = a
        .fleet
        .broadcast("model_server", Action::ForceOpen)
        .await
        .unwrap();
    assert_eq!(received, 1, "only a is subscribed now");
    assert_eq!(b_breaker.state(), State::Closed, "b is away");

    let back = Instant::now();
    relay.restore();
    eventually(
        Duration::from_secs(5),
        "b applied the command it missed",
        || (b_breaker.state() == State::ForcedOpen).then_some(()),
    )
    .await;
    println!(
        "fleet: a replica away during a fleet command applied it {:?} after Redis was reachable again",
        back.elapsed()
    );
    let applied = b_fleet.status().commands_applied;
    let actions: Vec<_> = applied.iter().map(|x| x.command.action).collect();
    assert_eq!(
        actions,
        [Action::Disable, Action::Reset, Action::ForceOpen],
        "each once: the catch-up skips what was delivered live"
    );

    // A replica joining now does not replay the fleet's history; it is
    // put in the state that stands (the force-open, not reset since).
    let c = replica(&redis, "c", &calls, &go_rx, Fallback::Local);
    connected(&c.fleet, true).await;
    c.fleet.wait_standing_applied().await;
    assert_eq!(c.breaker.state(), State::ForcedOpen);
    // A command after it joined reaches it: everything before was read.
    a.fleet
        .broadcast("model_server", Action::Trigger)
        .await
        .unwrap();
    eventually(Duration::from_secs(1), "c got the new command", || {
        (c.fleet.status().commands_applied.len() == 2).then_some(())
    })
    .await;
    let c_actions: Vec<_> = c
        .fleet
        .status()
        .commands_applied
        .iter()
        .map(|x| (x.command.action, x.standing))
        .collect();
    assert_eq!(
        c_actions,
        [(Action::ForceOpen, true), (Action::Trigger, false)],
        "no history replayed on joining, only the standing state"
    );
    drop(b_recovery);
}
