//! Review 3 of the fleet: fencing across a Redis restart, and a holder
//! cut off from Redis that goes on attempting after its lease expired.

use std::sync::Mutex;
use std::sync::atomic::AtomicBool;

use tower_recovery::fleet::{BoxFuture, Holder, Lease, Published, Subscription, Unavailable};
use tower_recovery::recovery::Backoff;

use super::*;

/// Retries `f` while the coordinator is reconnecting (the first call after
/// a restart fails: its connection was to the old server).
async fn reachable<T, F, Fut>(mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, Unavailable>>,
{
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match f().await {
            Ok(v) => return v,
            Err(e) => assert!(Instant::now() < deadline, "redis unreachable: {e}"),
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Redis restarted without the token counter (no persistence, or a crash
/// before its last snapshot): the leases granted after it must still be
/// newer than the ones granted before, or a stale holder's results pass
/// its successor's fencing.
#[tokio::test]
async fn fencing_tokens_keep_growing_across_a_redis_restart() {
    let Some(mut redis) = RedisServer::start_or_skip("review3_token_restart") else {
        return;
    };
    let ttl = Duration::from_secs(30);
    let a = coordinator(&redis);
    for _ in 0..2 {
        let lease = granted(a.acquire("model_server", "a", ttl).await.unwrap());
        assert!(a.release(&lease).await.unwrap());
    }
    // a holds the third lease when Redis restarts (and loses everything).
    let stale = granted(a.acquire("model_server", "a", ttl).await.unwrap());
    redis.kill();
    redis.start();

    // b recovers the dependency three times after the restart; it holds
    // the last lease.
    let b = coordinator(&redis);
    let mut tokens = Vec::new();
    let mut current = None;
    for i in 0..3 {
        let lease = granted(reachable(|| b.acquire("model_server", "b", ttl)).await);
        tokens.push(lease.token());
        if i < 2 {
            assert!(b.release(&lease).await.unwrap());
        } else {
            current = Some(lease);
        }
    }
    let current = current.unwrap();
    // a wakes up with its stale lease: its outcome must be refused.
    let accepted = reachable(|| a.publish(&stale, &Outcome::Recovered { attempts: 1 })).await;
    assert!(
        !accepted,
        "a's stale outcome (token {}) was accepted over b's lease (token {}); \
         tokens after the restart: {tokens:?}",
        stale.token(),
        current.token()
    );
    assert!(
        tokens.iter().all(|t| *t > stale.token()),
        "tokens granted after the restart {tokens:?} are not all newer than {}",
        stale.token()
    );
}

/// A coordinator this replica reaches only while `cut` is false (a network
/// partition between one replica and Redis; the others still reach it).
struct Partitioned {
    inner: RedisCoordinator,
    cut: Arc<AtomicBool>,
}

impl Partitioned {
    fn cut<'a, T: Send + 'a>(&self) -> Option<BoxFuture<'a, Result<T, Unavailable>>> {
        self.cut
            .load(Ordering::SeqCst)
            .then(|| -> BoxFuture<'a, Result<T, Unavailable>> {
                Box::pin(async { Err(Unavailable::new("partitioned")) })
            })
    }
}

impl Coordinator for Partitioned {
    fn acquire<'a>(
        &'a self,
        dependency: &'a str,
        replica: &'a str,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<Acquire, Unavailable>> {
        self.cut()
            .unwrap_or_else(|| self.inner.acquire(dependency, replica, ttl))
    }
    fn renew<'a>(
        &'a self,
        lease: &'a Lease,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<bool, Unavailable>> {
        self.cut().unwrap_or_else(|| self.inner.renew(lease, ttl))
    }
    fn release<'a>(&'a self, lease: &'a Lease) -> BoxFuture<'a, Result<bool, Unavailable>> {
        self.cut().unwrap_or_else(|| self.inner.release(lease))
    }
    fn holder<'a>(
        &'a self,
        dependency: &'a str,
    ) -> BoxFuture<'a, Result<Option<Holder>, Unavailable>> {
        self.cut().unwrap_or_else(|| self.inner.holder(dependency))
    }
    fn publish<'a>(
        &'a self,
        lease: &'a Lease,
        outcome: &'a Outcome,
    ) -> BoxFuture<'a, Result<bool, Unavailable>> {
        self.cut()
            .unwrap_or_else(|| self.inner.publish(lease, outcome))
    }
    fn last_outcome<'a>(
        &'a self,
        dependency: &'a str,
    ) -> BoxFuture<'a, Result<Option<Published>, Unavailable>> {
        self.cut()
            .unwrap_or_else(|| self.inner.last_outcome(dependency))
    }
    fn subscribe(&self) -> BoxFuture<'_, Result<Subscription, Unavailable>> {
        self.cut().unwrap_or_else(|| self.inner.subscribe())
    }
    fn broadcast<'a>(&'a self, command: &'a Command) -> BoxFuture<'a, Result<usize, Unavailable>> {
        self.cut().unwrap_or_else(|| self.inner.broadcast(command))
    }
    fn heartbeat<'a>(
        &'a self,
        beat: &'a Heartbeat,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<(), Unavailable>> {
        self.cut()
            .unwrap_or_else(|| self.inner.heartbeat(beat, ttl))
    }
    fn replicas(&self) -> BoxFuture<'_, Result<Vec<Heartbeat>, Unavailable>> {
        self.cut().unwrap_or_else(|| self.inner.replicas())
    }
}

/// Attempt starts, by replica, with when.
type Starts = Arc<Mutex<Vec<(&'static str, Instant)>>>;

fn failing_replica(
    coordinator: impl Coordinator,
    id: &'static str,
    starts: &Starts,
) -> (Fleet, Breaker, Recovery) {
    let fleet = Fleet::builder(coordinator)
        .replica_id(id)
        .lease_ttl(Duration::from_millis(900))
        .heartbeat_interval(Duration::from_millis(100))
        .fallback(Fallback::Wait)
        .spawn();
    let breaker = Breaker::builder("model_server")
        .consecutive_failures(1)
        .open_duration(Duration::from_secs(600))
        .build();
    let starts = starts.clone();
    let recovery = Recovery::builder("model_server", move || {
        let starts = starts.clone();
        async move {
            starts.lock().unwrap().push((id, Instant::now()));
            tokio::time::sleep(Duration::from_millis(100)).await;
            Err::<(), _>(std::io::Error::other("model server still down"))
        }
    })
    .watch(&breaker)
    .fleet(&fleet)
    .max_attempts(1000)
    .backoff(Backoff::new(Duration::from_millis(50), 1.0).jitter(0.0))
    .attempt_timeout(Duration::from_secs(60))
    .spawn();
    (fleet, breaker, recovery)
}

/// In wait mode ("never two replicas at once"), a holder that cannot reach
/// Redis any more cannot renew its lease: once the lease's time to live
/// has passed since its last renewal, it may have expired and another
/// replica may hold it, so the holder must start no further attempt.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_holder_cut_off_from_redis_stops_attempting_when_its_lease_may_have_expired() {
    let Some(redis) = RedisServer::start_or_skip("review3_partition") else {
        return;
    };
    let starts: Starts = Arc::default();
    let cut = Arc::new(AtomicBool::new(false));
    let (a_fleet, a_breaker, _a) = failing_replica(
        Partitioned {
            inner: coordinator(&redis),
            cut: cut.clone(),
        },
        "a",
        &starts,
    );
    let (b_fleet, b_breaker, _b) = failing_replica(coordinator(&redis), "b", &starts);
    connected(&a_fleet, true).await;
    connected(&b_fleet, true).await;
    a_breaker.try_acquire().unwrap().failure();
    eventually(Duration::from_secs(5), "a's first attempt", || {
        (!starts.lock().unwrap().is_empty()).then_some(())
    })
    .await;
    // a is cut off from Redis; b sees the dependency down too.
    cut.store(true, Ordering::SeqCst);
    b_breaker.try_acquire().unwrap().failure();
    // b takes the lease over once a's expired, and attempts.
    eventually(Duration::from_secs(10), "b's first attempt", || {
        starts
            .lock()
            .unwrap()
            .iter()
            .find(|(r, _)| *r == "b")
            .map(|_| ())
    })
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let starts = starts.lock().unwrap().clone();
    let b_first = starts.iter().find(|(r, _)| *r == "b").unwrap().1;
    let a_after: Vec<_> = starts
        .iter()
        .filter(|(r, at)| *r == "a" && *at > b_first)
        .map(|(_, at)| at.duration_since(b_first))
        .collect();
    assert!(
        a_after.is_empty(),
        "a (its lease expired, b holding the next one) started {} attempts \
         after b's first: {a_after:?}",
        a_after.len()
    );
}

/// Sends one command to Redis in RESP, as any process could.
fn raw(redis: &RedisServer, args: &[&str]) {
    use std::io::{Read, Write};
    let mut cmd = format!("*{}\r\n", args.len());
    for a in args {
        cmd.push_str(&format!("${}\r\n{a}\r\n", a.len()));
    }
    let mut s = std::net::TcpStream::connect(("127.0.0.1", redis.port)).unwrap();
    s.write_all(cmd.as_bytes()).unwrap();
    let mut buf = [0u8; 64];
    let _ = s.read(&mut buf).unwrap();
}

/// Another process publishes an outcome with a huge token on the outcomes
/// channel (no lease, never accepted by the fencing script): the replicas
/// must still see the next outcome a real holder publishes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forged_outcome_on_the_channel_does_not_blind_the_replicas() {
    let Some(redis) = RedisServer::start_or_skip("review3_forged") else {
        return;
    };
    let calls = Arc::new(AtomicUsize::new(0));
    let (_go, go_rx) = watch::channel(Some(true));
    let b = replica(&redis, "b", &calls, &go_rx, Fallback::Local);
    connected(&b.fleet, true).await;
    raw(
        &redis,
        &[
            "PUBLISH",
            &format!("{NS}:outcomes"),
            &format!("v1\tmodel_server\tmallory\t{}\tstarted\t1\t", u64::MAX),
        ],
    );
    // (time for the message to reach b's subscription)
    tokio::time::sleep(Duration::from_millis(300)).await;
    let shown = b.fleet.status().dependencies[0].last_outcome.clone();
    assert!(
        shown.as_ref().is_none_or(|p| &*p.replica != "mallory"),
        "a forged outcome, never accepted, is shown: {shown:?}"
    );
    // A real holder's outcome, accepted by the fencing script.
    let x = coordinator(&redis);
    let lease = granted(
        x.acquire("model_server", "x", Duration::from_secs(5))
            .await
            .unwrap(),
    );
    assert!(
        x.publish(&lease, &Outcome::Recovered { attempts: 1 })
            .await
            .unwrap()
    );
    eventually(Duration::from_secs(5), "x's outcome seen by b", || {
        b.fleet.status().dependencies[0]
            .last_outcome
            .as_ref()
            .is_some_and(|p| &*p.replica == "x")
            .then_some(())
    })
    .await;
}

/// `FleetStatus::replicas` says "empty while the coordinator is
/// unreachable": heartbeats read before Redis went away are not the
/// replicas alive now (nor what `/reliability` counts down on).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_replica_is_shown_alive_while_redis_is_unreachable() {
    let Some(mut redis) = RedisServer::start_or_skip("review3_stale_replicas") else {
        return;
    };
    let calls = Arc::new(AtomicUsize::new(0));
    let (_go, go_rx) = watch::channel(Some(true));
    let a = replica(&redis, "a", &calls, &go_rx, Fallback::Local);
    eventually(Duration::from_secs(5), "a's own heartbeat read", || {
        (!a.fleet.status().replicas.is_empty()).then_some(())
    })
    .await;
    redis.kill();
    connected(&a.fleet, false).await;
    let status = a.fleet.status();
    assert!(
        status.replicas.is_empty(),
        "replicas shown alive while Redis is unreachable: {:?}",
        status.replicas
    );
    assert_eq!(status.dependencies[0].reporting, 0);
}
