//! Standing states under faults: Redis stalling, odd or forged data in the
//! standing hash, stale heartbeats, and the sender's own command coming
//! back after a resubscribe.

use std::sync::Mutex;

use tower_recovery::fleet::{BoxFuture, Holder, Lease, Published, Subscription, Unavailable};

use super::standing::{
    Member, beat_of, fleet_wide, member, now_ms, raw_bytes, raw_command, standing_of,
    two_beats_after, via_relay,
};
use super::*;

/// A replica's fleet joined while no recovery of it was built yet (the
/// documented "a recovery built after the fleet joined wakes it to apply
/// its dependency's state"); Redis stalls (a slow command, a
/// fork, `CLIENT PAUSE`) just when the recovery is built. The read of the
/// standing states made for it fails (twice: the read and its retry), so
/// `settle_unreachable` marks the dependency settled: `/readyz` answers
/// 200 and its heartbeat lists it. Its subscription was never lost, so no
/// "reconnection" ever comes to apply the state, and the periodic read is
/// for the report only: the replica serves the dependency the fleet cut
/// off, for good, and its own report says it does not diverge.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_read_for_a_late_recovery_while_subscribed_is_retried() {
    let Some(redis) = RedisServer::start_or_skip("standing_late_read") else {
        return;
    };
    let raw = coordinator(&redis);
    let a = member(coordinator(&redis), "a", Duration::from_millis(100));
    connected(&a.fleet, true).await;
    assert_eq!(fleet_wide(&a, Action::ForceOpen).await, 1);

    // j joins with no recovery yet: its join (subscribe, standing read,
    // first heartbeat) completes.
    let j = Fleet::builder(coordinator(&redis))
        .replica_id("j")
        .lease_ttl(Duration::from_millis(900))
        .heartbeat_interval(Duration::from_millis(100))
        .spawn();
    connected(&j, true).await;
    let deadline = Instant::now() + Duration::from_secs(5);
    while !raw
        .replicas()
        .await
        .unwrap_or_default()
        .iter()
        .any(|b| &*b.replica == "j")
    {
        assert!(Instant::now() < deadline, "j never sent a heartbeat");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }

    // Redis stalls for 5 s (every client waits; no connection is closed).
    assert_eq!(
        raw_command(redis.port, &["CLIENT", "PAUSE", "5000", "ALL"]),
        "+OK\r\n"
    );
    let breaker = Breaker::builder("model_server").build();
    let _recovery = Recovery::builder("model_server", || async { Ok::<(), String>(()) })
        .watch(&breaker)
        .fleet(&j)
        .spawn();
    tokio::time::timeout(Duration::from_secs(10), j.wait_standing_applied())
        .await
        .expect("never settled");
    // Redis answers again; j's subscription was never lost.
    connected(&j, true).await;
    // Give j every chance: several heartbeats (each preceded by a read of
    // the standing states) after Redis came back.
    let state = two_beats_after(&raw, "j", now_ms() + 300).await;
    let status = j.status();
    let standing = status.dependencies[0].standing.clone();
    println!(
        "j's breaker {:?}, its heartbeat says {state}, standing_applied {}, its report: {:?}",
        breaker.state(),
        status.standing_applied,
        standing
            .as_ref()
            .map(|s| (s.applied_here, s.diverges(), s.breaker_here))
    );
    assert_eq!(
        breaker.state(),
        State::ForcedOpen,
        "j serves a dependency the fleet forced open (ready: {}, reported diverging: {:?})",
        status.standing_applied,
        standing.as_ref().map(|s| s.diverges())
    );
}

/// Log lines written while the fleet applies a standing state, with what
/// `/readyz` would say at that instant and the other dependency's breaker.
#[derive(Clone, Default)]
struct Probe(Arc<Mutex<ProbeState>>);

#[derive(Default)]
struct ProbeState {
    fleet: Option<Fleet>,
    breakers: Vec<Breaker>,
    seen: Vec<(bool, Vec<State>)>,
}

impl std::io::Write for Probe {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        if String::from_utf8_lossy(b).contains("Fleet standing state") {
            let mut st = self.0.lock().unwrap();
            if let Some(fleet) = st.fleet.clone() {
                let ready = fleet.standing_applied();
                let states = st.breakers.iter().map(|b| b.state()).collect();
                st.seen.push((ready, states));
            }
        }
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Probe {
    type Writer = Probe;
    fn make_writer(&'a self) -> Probe {
        self.clone()
    }
}

/// `sync_standing` marks every dependency settled under the lock, then
/// applies the states one by one with no lock held: in between,
/// `Fleet::standing_applied` (what `/readyz` answers by) is true while a
/// dependency is still in the state it was before the fleet's. Shown
/// deterministically with two dependencies both forced open fleet-wide:
/// while the first one's state is applied (its log line written), the
/// replica already says ready and the second breaker is still closed. (With
/// one dependency the window is the same, only shorter: a `/readyz` served
/// on another worker thread can see it.)
#[tokio::test]
async fn not_ready_before_every_standing_state_is_applied() {
    let Some(redis) = RedisServer::start_or_skip("standing_ready_early") else {
        return;
    };
    // (a global no-op subscriber first: tokio-rs/tracing#3611)
    let _ = tracing::subscriber::set_global_default(tracing_subscriber::registry());
    let probe = Probe::default();
    let _guard = tracing::subscriber::set_default(
        tracing_subscriber::fmt()
            .with_writer(probe.clone())
            .with_ansi(false)
            .finish(),
    );
    let a = member(coordinator(&redis), "a", Duration::from_millis(100));
    connected(&a.fleet, true).await;
    assert_eq!(fleet_wide(&a, Action::ForceOpen).await, 1);
    a.fleet
        .broadcast("asr", Action::ForceOpen)
        .await
        .expect("sent");

    // j starts with two dependencies (this runtime has one thread: j's
    // background task runs only once the test awaits, after both are built).
    let j = Fleet::builder(coordinator(&redis))
        .replica_id("j")
        .heartbeat_interval(Duration::from_millis(100))
        .spawn();
    let mut breakers = Vec::new();
    let mut recoveries = Vec::new();
    for name in ["model_server", "asr"] {
        let breaker = Breaker::builder(name).build();
        recoveries.push(
            Recovery::builder(name, || async { Ok::<(), String>(()) })
                .watch(&breaker)
                .fleet(&j)
                .spawn(),
        );
        breakers.push(breaker);
    }
    {
        let mut st = probe.0.lock().unwrap();
        st.fleet = Some(j.clone());
        st.breakers = breakers.clone();
    }
    tokio::time::timeout(Duration::from_secs(10), j.wait_standing_applied())
        .await
        .expect("never settled");
    eventually(Duration::from_secs(2), "both applied", || {
        breakers
            .iter()
            .all(|b| b.state() == State::ForcedOpen)
            .then_some(())
    })
    .await;
    let seen = std::mem::take(&mut probe.0.lock().unwrap().seen);
    println!("(ready, breakers) while each standing state was applied: {seen:?}");
    assert_eq!(seen.len(), 2, "{seen:?}");
    for (ready, states) in &seen {
        assert!(
            !ready || states.iter().all(|s| *s == State::ForcedOpen),
            "/readyz would answer 200 while a breaker is {states:?}"
        );
    }
}

/// `replicas_diverging` is computed from the other replicas' last
/// heartbeats with no regard to when they were sent: right after a
/// fleet-wide force-open that every replica applied within milliseconds,
/// the sender's `/reliability` lists every other replica as diverging
/// (until each has sent a heartbeat since, up to a heartbeat interval: 2 s
/// by default).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_diverging_ignores_heartbeats_older_than_the_command() {
    use axum::body::Body;
    use http_body_util::BodyExt;
    use tower::ServiceExt;
    use tower_recovery::admin::Admin;
    use tower_recovery::drain::Drain;
    use tower_recovery::health::{Dependency, HealthCheck, Reliability};

    let Some(redis) = RedisServer::start_or_skip("standing_diverging") else {
        return;
    };
    // The default heartbeat interval.
    let a = member(coordinator(&redis), "a", Duration::from_secs(2));
    let b = member(coordinator(&redis), "b", Duration::from_secs(2));
    connected(&a.fleet, true).await;
    connected(&b.fleet, true).await;
    // a has read b's heartbeat (closed).
    eventually(Duration::from_secs(10), "a sees b", || {
        a.fleet
            .status()
            .replicas
            .iter()
            .any(|r| &*r.replica == "b" && !r.dependencies.is_empty())
            .then_some(())
    })
    .await;
    assert_eq!(fleet_wide(&a, Action::ForceOpen).await, 2);
    eventually(Duration::from_secs(1), "b forced open", || {
        (b.breaker.state() == State::ForcedOpen).then_some(())
    })
    .await;
    eventually(Duration::from_secs(1), "a's echo", || standing_of(&a)).await;

    let reliability = Reliability::builder()
        .dependency(
            Dependency::new(
                "model_server",
                HealthCheck::new(|| async { Ok::<(), String>(()) }),
            )
            .breaker(&a.breaker),
        )
        .build()
        .unwrap();
    let router = Admin::new(&reliability, &Drain::default())
        .fleet(&a.fleet)
        .router::<()>();
    // A heartbeat b sent after the command but before it applied it still
    // says closed: b is listed for up to one heartbeat interval (100 ms
    // here). Once a has b's next heartbeat, it is not.
    assert_eq!(b.breaker.state(), State::ForcedOpen);
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        let response = router
            .clone()
            .oneshot(
                http::Request::get("/reliability")
                    .body(Body::empty())
                    .unwrap(),
            )
            .await
            .unwrap();
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        let r: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        let standing = &r["fleet"]["dependencies"]["model_server"]["standing"];
        if standing["replicas_diverging"] == serde_json::json!([]) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "b is forced open, as the fleet stands: {standing}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A standing hash of ~100 MB (forged: Redis access is the trust boundary,
/// but the README promises odd data there "never panics or keeps a replica
/// out"). The whole hash is read, through Lua, on every join and then by
/// every replica on every heartbeat, whatever fields it holds: each read
/// blocks Redis for seconds (for every replica: leases, renewals,
/// heartbeats), and a replica whose timeout is shorter than one read never
/// joins at all (the join drops its subscription and starts over).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_huge_standing_hash_does_not_keep_a_replica_out() {
    let Some(redis) = RedisServer::start_or_skip("standing_huge") else {
        return;
    };
    let key = format!("{NS}:standing");
    let junk = vec![b'x'; 5 << 20];
    // Nineteen fields of junk, and one where this replica's dependency's
    // line would be.
    for i in 0..20 {
        let field = if i == 0 {
            "model_server".to_string()
        } else {
            format!("junk{i}")
        };
        assert_eq!(
            raw_bytes(
                redis.port,
                &[b"HSET", key.as_bytes(), field.as_bytes(), &junk]
            ),
            b":1\r\n"
        );
    }
    let raw = coordinator(&redis);
    let b = member(coordinator(&redis), "b", Duration::from_millis(100));
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if beat_of(&raw, "b").await.is_some() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "b never joined the fleet (no heartbeat in 10 s; connected: {}, ready: {})",
            b.fleet.is_connected(),
            b.fleet.standing_applied()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A standing line with a number far beyond any the coordinator gives
/// (forged, or a corrupted value): accepted, and it becomes the
/// dependency's "seen" number on every replica that reads it, so no later
/// fleet-wide command for the dependency is ever applied there again (until
/// the process restarts), and `/reliability` keeps showing the forged state
/// after a real fleet-wide reset replaced it in Redis. (Outcomes are guarded
/// against exactly this, a forged huge token; the numbers are at least the
/// Redis server's clock in milliseconds, so a bound is at hand.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forged_huge_standing_number_does_not_block_later_commands() {
    let Some(redis) = RedisServer::start_or_skip("standing_huge_number") else {
        return;
    };
    let key = format!("{NS}:standing");
    let forged = format!("v2\t{}\t1\tmodel_server\tdisable\tx", u64::MAX);
    raw_bytes(
        redis.port,
        &[b"HSET", key.as_bytes(), b"model_server", forged.as_bytes()],
    );
    let a = member(coordinator(&redis), "a", Duration::from_millis(100));
    connected(&a.fleet, true).await;
    tokio::time::timeout(Duration::from_secs(10), a.fleet.wait_standing_applied())
        .await
        .expect("never settled");
    // (a forged line must not become the number later commands are compared to)
    // The operator puts it right: a fleet-wide reset, then a force-open.
    let b = member(coordinator(&redis), "b", Duration::from_millis(100));
    connected(&b.fleet, true).await;
    assert_eq!(fleet_wide(&b, Action::Reset).await, 2);
    assert_eq!(fleet_wide(&b, Action::ForceOpen).await, 2);
    let raw = coordinator(&redis);
    let state = two_beats_after(&raw, "a", now_ms()).await;
    assert_eq!(
        a.breaker.state(),
        State::ForcedOpen,
        "a ignores every later fleet command (its heartbeat: {state}; it reports standing {:?})",
        standing_of(&a)
    );
}

/// A coordinator whose subscription goes through `sub` (a relay the test
/// cuts) and every other call straight to Redis: the state a replica is in
/// for up to its reconnection back-off (2 s) after a Redis blip, when the
/// admin POST's calls reconnect at once and the subscription has not yet.
struct Split {
    direct: RedisCoordinator,
    sub: RedisCoordinator,
}

impl Coordinator for Split {
    fn acquire<'a>(
        &'a self,
        dependency: &'a str,
        replica: &'a str,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<Acquire, Unavailable>> {
        self.direct.acquire(dependency, replica, ttl)
    }
    fn renew<'a>(
        &'a self,
        lease: &'a Lease,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<bool, Unavailable>> {
        self.direct.renew(lease, ttl)
    }
    fn release<'a>(&'a self, lease: &'a Lease) -> BoxFuture<'a, Result<bool, Unavailable>> {
        self.direct.release(lease)
    }
    fn holder<'a>(
        &'a self,
        dependency: &'a str,
    ) -> BoxFuture<'a, Result<Option<Holder>, Unavailable>> {
        self.direct.holder(dependency)
    }
    fn publish<'a>(
        &'a self,
        lease: &'a Lease,
        outcome: &'a Outcome,
    ) -> BoxFuture<'a, Result<bool, Unavailable>> {
        self.direct.publish(lease, outcome)
    }
    fn last_outcome<'a>(
        &'a self,
        dependency: &'a str,
    ) -> BoxFuture<'a, Result<Option<Published>, Unavailable>> {
        self.direct.last_outcome(dependency)
    }
    fn subscribe(&self) -> BoxFuture<'_, Result<Subscription, Unavailable>> {
        self.sub.subscribe()
    }
    fn broadcast<'a>(&'a self, command: &'a Command) -> BoxFuture<'a, Result<usize, Unavailable>> {
        self.direct.broadcast(command)
    }
    fn broadcast_numbered<'a>(
        &'a self,
        command: &'a Command,
    ) -> BoxFuture<'a, Result<(u64, usize), Unavailable>> {
        self.direct.broadcast_numbered(command)
    }
    fn recent_commands(&self) -> BoxFuture<'_, Result<Vec<Command>, Unavailable>> {
        self.direct.recent_commands()
    }
    fn standing<'a>(
        &'a self,
        dependencies: &'a [Arc<str>],
    ) -> BoxFuture<'a, Result<Vec<Command>, Unavailable>> {
        self.direct.standing(dependencies)
    }
    fn heartbeat<'a>(
        &'a self,
        beat: &'a Heartbeat,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<(), Unavailable>> {
        self.direct.heartbeat(beat, ttl)
    }
    fn replicas(&self) -> BoxFuture<'_, Result<Vec<Heartbeat>, Unavailable>> {
        self.direct.replicas()
    }
}

/// The sender's own command, found standing (or in the log) when its
/// subscription comes back, is "made good again" (`Step::Converge`): an
/// operator's local reset made after the fleet-wide force-open, while the
/// sender's subscription was still reconnecting, is undone, though the
/// module docs promise "later reads and reconnections do not undo it".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_senders_own_standing_command_does_not_undo_a_later_local_reset() {
    let Some(redis) = RedisServer::start_or_skip("standing_own_echo") else {
        return;
    };
    let a = member(coordinator(&redis), "a", Duration::from_millis(100));
    let relay = Relay::start(redis.port).await;
    let b = member(
        Split {
            direct: coordinator(&redis),
            sub: via_relay(&relay),
        },
        "b",
        Duration::from_millis(100),
    );
    connected(&a.fleet, true).await;
    connected(&b.fleet, true).await;
    // b's subscription drops (its other calls still reach Redis).
    relay.cut();
    connected(&b.fleet, false).await;
    // The operator forces the model server open fleet-wide from b...
    // (Not asserted: how many subscribers the command reached; Redis may
    // count the cut subscription until it notices the close.)
    fleet_wide(&b, Action::ForceOpen).await;
    eventually(Duration::from_secs(2), "a forced open", || {
        (a.breaker.state() == State::ForcedOpen).then_some(())
    })
    .await;
    // ...then resets b alone (a canary, say): allowed, reported.
    b.breaker.reset();
    relay.restore();
    connected(&b.fleet, true).await;
    let raw = coordinator(&redis);
    let state = two_beats_after(&raw, "b", now_ms()).await;
    let applied: Vec<_> = b
        .fleet
        .status()
        .commands_applied
        .iter()
        .map(|x| {
            (
                x.command.action,
                x.standing,
                x.command.from.to_string(),
                x.result.clone(),
            )
        })
        .collect();
    println!("b applied {applied:?}");
    assert_eq!(
        b.breaker.state(),
        State::Closed,
        "b's local reset, made after the fleet command, was undone on its return (heartbeat: {state}; applied: {applied:?})"
    );
}

#[allow(dead_code)]
fn _uses(_: &Member) {}
