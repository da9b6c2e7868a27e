//! Review 4 of the fleet: numbered commands across a Redis restart, and a
//! command log holding a line this version cannot read.

use tower_recovery::fleet::{BoxFuture, Holder, Lease, Published, Subscription, Unavailable};

use super::*;

/// Sends one command to the private Redis (RESP over a plain socket, so
/// that the test can write bytes no client of this crate would).
fn raw(port: u16, args: &[&[u8]]) -> Vec<u8> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(2)))
        .unwrap();
    let mut req = format!("*{}\r\n", args.len()).into_bytes();
    for a in args {
        req.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
        req.extend_from_slice(a);
        req.extend_from_slice(b"\r\n");
    }
    stream.write_all(&req).unwrap();
    let mut buf = [0u8; 256];
    let n = stream.read(&mut buf).unwrap();
    buf[..n].to_vec()
}

fn plain_replica(redis: &RedisServer, id: &str) -> (Fleet, Breaker, Recovery) {
    let fleet = Fleet::builder(coordinator(redis))
        .replica_id(id)
        .lease_ttl(Duration::from_millis(900))
        .heartbeat_interval(Duration::from_millis(100))
        .spawn();
    let breaker = Breaker::builder("model_server").build();
    let recovery = Recovery::builder("model_server", || async { Ok::<(), String>(()) })
        .watch(&breaker)
        .fleet(&fleet)
        .spawn();
    (fleet, breaker, recovery)
}

/// Redis restarts without the command counter (no persistence): the
/// commands sent after it must still be numbered after the ones every
/// replica saw before, or they are all taken for ones seen already.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fleet_command_after_a_redis_restart_reaches_the_replicas_that_stayed() {
    let Some(mut redis) = RedisServer::start_or_skip("review4_command_restart") else {
        return;
    };
    let (a, _a_breaker, _a_recovery) = plain_replica(&redis, "a");
    let (b, b_breaker, _b_recovery) = plain_replica(&redis, "b");
    connected(&a, true).await;
    connected(&b, true).await;
    for action in [
        Action::Disable,
        Action::Reset,
        Action::Disable,
        Action::Reset,
    ] {
        a.broadcast("model_server", action).await.unwrap();
    }
    eventually(Duration::from_secs(2), "b saw the 4 commands", || {
        (b.status().commands_applied.len() == 4).then_some(())
    })
    .await;

    redis.kill();
    redis.start();
    // Both are back (subscribed again, caught up).
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let sent = a.broadcast("model_server", Action::ForceOpen).await;
        if matches!(sent, Ok(2)) {
            break;
        }
        assert!(Instant::now() < deadline, "never both subscribed: {sent:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    eventually(
        Duration::from_secs(3),
        "b applied the command sent after the restart",
        || (b_breaker.state() == State::ForcedOpen).then_some(()),
    )
    .await;
}

/// A line in the command log this version cannot read (another version's,
/// or bytes that are not UTF-8) is skipped: it must not keep a replica from
/// joining the fleet.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreadable_line_in_the_command_log_does_not_keep_a_replica_out() {
    let Some(redis) = RedisServer::start_or_skip("review4_bad_log_line") else {
        return;
    };
    let key = format!("{NS}:command:log");
    let reply = raw(redis.port, &[b"LPUSH", key.as_bytes(), b"v2\t1\t\xff\xfe"]);
    assert_eq!(reply, b":1\r\n");
    let (a, _breaker, _recovery) = plain_replica(&redis, "a");
    connected(&a, true).await;
}

/// A coordinator whose command log cannot be read while `log_down` is set
/// (a timeout on that one read); everything else goes to Redis.
struct LogFlaky {
    inner: RedisCoordinator,
    log_down: Arc<std::sync::atomic::AtomicBool>,
    log_failures: Arc<AtomicUsize>,
}

impl Coordinator for LogFlaky {
    fn acquire<'a>(
        &'a self,
        dependency: &'a str,
        replica: &'a str,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<Acquire, Unavailable>> {
        self.inner.acquire(dependency, replica, ttl)
    }
    fn renew<'a>(
        &'a self,
        lease: &'a Lease,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<bool, Unavailable>> {
        self.inner.renew(lease, ttl)
    }
    fn release<'a>(&'a self, lease: &'a Lease) -> BoxFuture<'a, Result<bool, Unavailable>> {
        self.inner.release(lease)
    }
    fn holder<'a>(
        &'a self,
        dependency: &'a str,
    ) -> BoxFuture<'a, Result<Option<Holder>, Unavailable>> {
        self.inner.holder(dependency)
    }
    fn publish<'a>(
        &'a self,
        lease: &'a Lease,
        outcome: &'a Outcome,
    ) -> BoxFuture<'a, Result<bool, Unavailable>> {
        self.inner.publish(lease, outcome)
    }
    fn last_outcome<'a>(
        &'a self,
        dependency: &'a str,
    ) -> BoxFuture<'a, Result<Option<Published>, Unavailable>> {
        self.inner.last_outcome(dependency)
    }
    fn subscribe(&self) -> BoxFuture<'_, Result<Subscription, Unavailable>> {
        self.inner.subscribe()
    }
    fn broadcast<'a>(&'a self, command: &'a Command) -> BoxFuture<'a, Result<usize, Unavailable>> {
        self.inner.broadcast(command)
    }
    fn recent_commands(&self) -> BoxFuture<'_, Result<Vec<Command>, Unavailable>> {
        if self.log_down.load(Ordering::SeqCst) {
            self.log_failures.fetch_add(1, Ordering::SeqCst);
            return Box::pin(async { Err(Unavailable::new("timed out reading the log")) });
        }
        self.inner.recent_commands()
    }
    fn heartbeat<'a>(
        &'a self,
        beat: &'a Heartbeat,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<(), Unavailable>> {
        self.inner.heartbeat(beat, ttl)
    }
    fn replicas(&self) -> BoxFuture<'_, Result<Vec<Heartbeat>, Unavailable>> {
        self.inner.replicas()
    }
}

/// b comes back after missing a command, subscribes, but its one read of
/// the command log fails: the missed command must still be applied (the
/// catch-up retried), not skipped for good when a later command arrives.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_catch_up_read_does_not_lose_the_missed_command() {
    let Some(redis) = RedisServer::start_or_skip("review4_catch_up_fails") else {
        return;
    };
    let (a, _a_breaker, _a_recovery) = plain_replica(&redis, "a");
    let relay = Relay::start(redis.port).await;
    let log_down = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let log_failures = Arc::new(AtomicUsize::new(0));
    let b = Fleet::builder(LogFlaky {
        inner: RedisCoordinator::builder(format!("redis://127.0.0.1:{}/", relay.port))
            .namespace(NS)
            .timeout(Duration::from_millis(300))
            .build()
            .unwrap(),
        log_down: log_down.clone(),
        log_failures: log_failures.clone(),
    })
    .replica_id("b")
    .lease_ttl(Duration::from_millis(900))
    .heartbeat_interval(Duration::from_millis(100))
    .spawn();
    let b_breaker = Breaker::builder("model_server").build();
    let _b_recovery = Recovery::builder("model_server", || async { Ok::<(), String>(()) })
        .watch(&b_breaker)
        .fleet(&b)
        .spawn();
    connected(&a, true).await;
    connected(&b, true).await;

    relay.cut();
    connected(&b, false).await;
    assert_eq!(
        a.broadcast("model_server", Action::ForceOpen)
            .await
            .unwrap(),
        1
    );
    // b is back, but its first read of the log fails.
    log_down.store(true, Ordering::SeqCst);
    relay.restore();
    eventually(Duration::from_secs(5), "b's catch-up read failed", || {
        (log_failures.load(Ordering::SeqCst) > 0).then_some(())
    })
    .await;
    log_down.store(false, Ordering::SeqCst);
    // A later command (for a dependency b does not have) arrives live.
    let deadline = Instant::now() + Duration::from_secs(5);
    while a.broadcast("asr", Action::Reset).await.unwrap() < 2 {
        assert!(Instant::now() < deadline, "b never subscribed again");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    eventually(
        Duration::from_secs(5),
        "b applied the command it missed",
        || (b_breaker.state() == State::ForcedOpen).then_some(()),
    )
    .await;
}

/// The sender's clock is six minutes slow (or the receiver's fast): a
/// command it sent a moment ago while b was away is not five minutes old,
/// and b must apply it on its return.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_from_a_replica_with_a_slow_clock_is_caught_up() {
    let Some(redis) = RedisServer::start_or_skip("review4_clock_skew") else {
        return;
    };
    let relay = Relay::start(redis.port).await;
    let b = Fleet::builder(
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
    let _b_recovery = Recovery::builder("model_server", || async { Ok::<(), String>(()) })
        .watch(&b_breaker)
        .fleet(&b)
        .spawn();
    connected(&b, true).await;
    relay.cut();
    connected(&b, false).await;

    // a, whose clock is six minutes behind, sends a command now.
    let a = coordinator(&redis);
    let mut command = Command::new("model_server", Action::ForceOpen, "a");
    command.sent_at_ms -= 6 * 60 * 1000;
    assert_eq!(a.broadcast(&command).await.unwrap(), 0);

    relay.restore();
    eventually(
        Duration::from_secs(5),
        "b applied the command it missed",
        || (b_breaker.state() == State::ForcedOpen).then_some(()),
    )
    .await;
}

/// `?scope=` is the only query the admin POSTs take: a mistyped key
/// (`Scope=fleet`, `scopes=fleet`) or two scopes must be refused, not
/// applied here alone while the operator believes it went fleet-wide.
#[tokio::test]
async fn a_mistyped_or_repeated_scope_key_is_refused() {
    use axum::body::Body;
    use tower::ServiceExt;
    use tower_recovery::admin::Admin;
    use tower_recovery::drain::Drain;
    use tower_recovery::health::{Dependency, HealthCheck, Reliability};

    // No Redis needed: nothing may be sent.
    let fleet = Fleet::builder(
        RedisCoordinator::builder("redis://127.0.0.1:1/")
            .build()
            .unwrap(),
    )
    .replica_id("a")
    .spawn();
    let breaker = Breaker::builder("model_server").build();
    let recovery = Recovery::builder("model_server", || async { Ok::<(), String>(()) })
        .watch(&breaker)
        .fleet(&fleet)
        .spawn();
    let reliability = Reliability::builder()
        .dependency(
            Dependency::new(
                "model_server",
                HealthCheck::new(|| async { Ok::<(), String>(()) }),
            )
            .breaker(&breaker)
            .recovery(&recovery),
        )
        .build()
        .unwrap();
    let router = Admin::new(&reliability, &Drain::default())
        .fleet(&fleet)
        .token("t0ken")
        .router::<()>();
    for query in [
        "Scope=fleet",
        "scopes=fleet",
        "scope",
        "scope=local&scope=fleet",
        "scope=fleet&scope=local",
    ] {
        let response = router
            .clone()
            .oneshot(
                http::Request::post(format!(
                    "/reliability/circuit-breaker/model_server/force-open?{query}"
                ))
                .header("authorization", "Bearer t0ken")
                .body(Body::empty())
                .unwrap(),
            )
            .await
            .unwrap();
        assert_eq!(response.status(), 400, "?{query}");
        assert_eq!(breaker.state(), State::Closed, "?{query} applied here");
    }
}
