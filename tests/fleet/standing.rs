//! Fleet-wide manual states that stand: a fleet-scope force-open or
//! disable is applied by every replica that joins or returns later,
//! however long it was away, until a fleet-scope reset; a local reset
//! while it stands is reported, not undone; and the order of numbers wins
//! when a standing state and a later command race with a joining replica.

use tower_recovery::fleet::{BoxFuture, Holder, Lease, Published, Subscription, Unavailable};

use super::*;

/// A replica with a breaker and a recovery that watches it.
pub(super) struct Member {
    pub(super) fleet: Fleet,
    pub(super) breaker: Breaker,
    pub(super) _recovery: Recovery,
}

pub(super) fn member(coordinator: impl Coordinator, id: &str, beat: Duration) -> Member {
    let fleet = Fleet::builder(coordinator)
        .replica_id(id)
        .lease_ttl(Duration::from_millis(900))
        .heartbeat_interval(beat)
        .spawn();
    let breaker = Breaker::builder("model_server").build();
    let recovery = Recovery::builder("model_server", || async { Ok::<(), String>(()) })
        .watch(&breaker)
        .fleet(&fleet)
        .spawn();
    Member {
        fleet,
        breaker,
        _recovery: recovery,
    }
}

pub(super) fn via_relay(relay: &Relay) -> RedisCoordinator {
    RedisCoordinator::builder(format!("redis://127.0.0.1:{}/", relay.port))
        .namespace(NS)
        .timeout(Duration::from_millis(300))
        .build()
        .unwrap()
}

/// What the admin route does for `?scope=fleet`: applied here, then sent.
pub(super) async fn fleet_wide(m: &Member, action: Action) -> usize {
    match action {
        Action::ForceOpen => m.breaker.force_open(),
        Action::Disable => m.breaker.disable(),
        Action::Reset => m.breaker.reset(),
        _ => {}
    }
    // (retried while the coordinator reconnects after a Redis restart)
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match m.fleet.broadcast("model_server", action).await {
            Ok(n) => return n,
            Err(e) => assert!(Instant::now() < deadline, "{e}"),
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn standing_applied(m: &Member) {
    tokio::time::timeout(Duration::from_secs(10), m.fleet.wait_standing_applied())
        .await
        .expect("the standing states were never applied");
}

/// The standing state `m` knows for the model server: action and number.
pub(super) fn standing_of(m: &Member) -> Option<(Action, u64)> {
    m.fleet
        .status()
        .dependencies
        .iter()
        .find(|d| &*d.name == "model_server")?
        .standing
        .as_ref()
        .map(|s| (s.command.action, s.command.id))
}

fn applied(m: &Member) -> Vec<(Action, bool)> {
    m.fleet
        .status()
        .commands_applied
        .iter()
        .map(|a| (a.command.action, a.standing))
        .collect()
}

/// `replica`'s heartbeat entry for the model server, as stored in Redis.
pub(super) async fn beat_of(
    raw: &RedisCoordinator,
    replica: &str,
) -> Option<(u64, Option<String>)> {
    raw.replicas()
        .await
        .ok()?
        .into_iter()
        .find(|b| &*b.replica == replica)
        .and_then(|b| {
            let sent = b.sent_at_ms;
            b.dependencies
                .into_iter()
                .find(|d| &*d.name == "model_server")
                .map(|d| (sent, d.breaker.map(|s| s.to_string())))
        })
}

/// Waits until `replica` has sent two heartbeats after `after_ms` (each is
/// preceded by a read of the standing states, so at least one read was
/// made wholly after it); returns the breaker state the last one reports.
pub(super) async fn two_beats_after(
    raw: &RedisCoordinator,
    replica: &str,
    after_ms: u64,
) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut seen = Vec::new();
    loop {
        if let Some((sent, breaker)) = beat_of(raw, replica).await {
            if sent > after_ms && !seen.contains(&sent) {
                seen.push(sent);
                if seen.len() == 2 {
                    return breaker.unwrap_or_default();
                }
            }
        }
        assert!(
            Instant::now() < deadline,
            "{replica} sent no two heartbeats"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

pub(super) fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// One command to the private Redis over a plain socket; the reply's
/// first line.
pub(super) fn raw_command(port: u16, args: &[&str]) -> String {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(2)))
        .unwrap();
    let mut req = format!("*{}\r\n", args.len());
    for a in args {
        req.push_str(&format!("${}\r\n{a}\r\n", a.len()));
    }
    stream.write_all(req.as_bytes()).unwrap();
    let mut buf = [0u8; 512];
    let n = stream.read(&mut buf).unwrap();
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fleet_wide_force_open_stands_for_replicas_that_join_later() {
    let Some(redis) = RedisServer::start_or_skip("standing_join") else {
        return;
    };
    let raw = coordinator(&redis);
    let a = member(coordinator(&redis), "a", Duration::from_millis(100));
    connected(&a.fleet, true).await;
    assert_eq!(fleet_wide(&a, Action::ForceOpen).await, 1);
    let (action, id) = eventually(Duration::from_secs(2), "a's own echo", || standing_of(&a)).await;
    assert_eq!(action, Action::ForceOpen);
    // A command from another replica, for a second dependency of a's, sent
    // after the echo: once a applied it, a had processed its own echo
    // (delivered in order, before it), so the check below is not vacuous.
    let asr = Breaker::builder("asr").build();
    let _asr = Recovery::builder("asr", || async { Ok::<(), String>(()) })
        .watch(&asr)
        .fleet(&a.fleet)
        .spawn();
    standing_applied(&a).await;
    raw.broadcast(&Command::new("asr", Action::ForceOpen, "x"))
        .await
        .expect("sent");
    eventually(Duration::from_secs(2), "x's command applied on a", || {
        (asr.state() == State::ForcedOpen).then_some(())
    })
    .await;
    let on_model_server: Vec<_> = a
        .fleet
        .status()
        .commands_applied
        .iter()
        .filter(|x| &*x.command.dependency == "model_server")
        .map(|x| (x.command.action, x.standing))
        .collect();
    assert!(
        on_model_server.is_empty(),
        "a applied its own command again: {on_model_server:?}"
    );
    assert!(
        a.fleet
            .status()
            .dependencies
            .iter()
            .find(|d| &*d.name == "model_server")
            .unwrap()
            .standing
            .as_ref()
            .unwrap()
            .applied_here
    );

    // b starts afterwards (a restart, a scale-up): forced open once its
    // standing states are applied, which /readyz waits for.
    let started = Instant::now();
    let b = member(coordinator(&redis), "b", Duration::from_millis(100));
    standing_applied(&b).await;
    let took = started.elapsed();
    assert_eq!(b.breaker.state(), State::ForcedOpen, "ready before applied");
    println!(
        "fleet: a replica that joined applied the standing force-open {took:?} after it started"
    );
    assert!(took < Duration::from_secs(2), "{took:?}");
    assert_eq!(applied(&b), [(Action::ForceOpen, true)]);
    let status = b.fleet.status();
    let standing = status.dependencies[0].standing.as_ref().unwrap();
    assert_eq!((&*standing.command.from, standing.command.id), ("a", id));
    assert!(standing.applied_here && !standing.diverges());
    // Never reported as it was before: its first heartbeat that lists the
    // dependency (and every later one) says forced open.
    let deadline = Instant::now() + Duration::from_secs(2);
    let breaker = loop {
        if let Some((_, breaker)) = beat_of(&raw, "b").await {
            break breaker;
        }
        assert!(Instant::now() < deadline, "no heartbeat of b lists it");
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    assert_eq!(breaker.as_deref(), Some("forced_open"));

    // A fleet-wide reset (from b): a closes; so does c, which joins later.
    assert_eq!(fleet_wide(&b, Action::Reset).await, 2);
    eventually(Duration::from_secs(1), "a reset", || {
        a.breaker.state().is_closed().then_some(())
    })
    .await;
    eventually(Duration::from_secs(2), "the standing state cleared", || {
        standing_of(&a).is_none().then_some(())
    })
    .await;
    let c = member(coordinator(&redis), "c", Duration::from_millis(100));
    standing_applied(&c).await;
    assert_eq!(c.breaker.state(), State::Closed);
    assert!(applied(&c).is_empty(), "{:?}", applied(&c));
    assert!(c.fleet.status().dependencies[0].standing.is_none());
    // It stays closed: its later reads find the reset, numbered after.
    assert_eq!(two_beats_after(&raw, "c", now_ms()).await, "closed");
    assert_eq!(c.breaker.state(), State::Closed);

    // A disable stands too; a trigger does not change it.
    assert_eq!(fleet_wide(&a, Action::Disable).await, 3);
    a.fleet
        .broadcast("model_server", Action::Trigger)
        .await
        .unwrap();
    let d = member(coordinator(&redis), "d", Duration::from_millis(100));
    standing_applied(&d).await;
    assert_eq!(d.breaker.state(), State::Disabled);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_away_past_the_catch_up_window_applies_the_standing_state_on_its_return() {
    let Some(redis) = RedisServer::start_or_skip("standing_away") else {
        return;
    };
    let a = member(coordinator(&redis), "a", Duration::from_millis(100));
    let relay = Relay::start(redis.port).await;
    let b = member(via_relay(&relay), "b", Duration::from_millis(100));
    connected(&a.fleet, true).await;
    connected(&b.fleet, true).await;

    // b loses Redis; meanwhile a forces the model server open fleet-wide,
    // and that command is older than the catch-up window by the time b
    // is back (its time in the log set ten minutes back).
    relay.cut();
    connected(&b.fleet, false).await;
    // (Not asserted: how many subscribers the command reached; Redis may
    // count the cut subscription until it notices the close.)
    fleet_wide(&a, Action::ForceOpen).await;
    let (_, id) = eventually(Duration::from_secs(2), "a's own echo", || standing_of(&a)).await;
    let old = now_ms() - 10 * 60 * 1000;
    let line = format!("v2\t{id}\t{old}\tmodel_server\tforce_open\ta");
    let key = format!("{NS}:command:log");
    assert_eq!(
        raw_command(redis.port, &["LSET", &key, "0", &line]),
        "+OK\r\n"
    );
    let back = Instant::now();
    relay.restore();
    eventually(
        Duration::from_secs(5),
        "b forced open on its return",
        || (b.breaker.state() == State::ForcedOpen).then_some(()),
    )
    .await;
    println!(
        "fleet: a replica away past the catch-up window applied the standing force-open {:?} after Redis was reachable again",
        back.elapsed()
    );
    // Applied as the standing state, once (the catch-up found it too old).
    assert_eq!(applied(&b), [(Action::ForceOpen, true)]);

    // Away again, past the log this time (64 later commands): the reset
    // it missed clears the state the fleet had put it in.
    relay.cut();
    connected(&b.fleet, false).await;
    // (Not asserted: how many subscribers the command reached; Redis may
    // count the cut subscription until it notices the close.)
    fleet_wide(&a, Action::Reset).await;
    for _ in 0..64 {
        a.fleet.broadcast("asr", Action::Trigger).await.unwrap();
    }
    let back = Instant::now();
    relay.restore();
    eventually(Duration::from_secs(5), "b reset on its return", || {
        b.breaker.state().is_closed().then_some(())
    })
    .await;
    println!(
        "fleet: a replica away past the command log applied the standing reset {:?} after Redis was reachable again",
        back.elapsed()
    );
    assert_eq!(
        applied(&b),
        [(Action::ForceOpen, true), (Action::Reset, true)]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_local_reset_while_a_fleet_state_stands_is_reported_and_not_undone() {
    let Some(redis) = RedisServer::start_or_skip("standing_local_reset") else {
        return;
    };
    let raw = coordinator(&redis);
    let a = member(coordinator(&redis), "a", Duration::from_millis(100));
    let relay = Relay::start(redis.port).await;
    let b = member(via_relay(&relay), "b", Duration::from_millis(100));
    connected(&a.fleet, true).await;
    connected(&b.fleet, true).await;
    assert_eq!(fleet_wide(&a, Action::ForceOpen).await, 2);
    eventually(Duration::from_secs(1), "b forced open", || {
        (b.breaker.state() == State::ForcedOpen).then_some(())
    })
    .await;

    // The operator resets b alone: allowed, and reported as a divergence.
    b.breaker.reset();
    let reset_at = now_ms();
    let status = b.fleet.status();
    let standing = status.dependencies[0].standing.as_ref().unwrap();
    assert!(standing.applied_here);
    assert_eq!(standing.breaker_here, Some(State::Closed));
    assert!(standing.diverges());
    // The other replicas see it in b's heartbeats.
    eventually(Duration::from_secs(2), "a sees b closed", || {
        let s = a.fleet.status();
        s.replicas
            .iter()
            .find(|r| &*r.replica == "b")
            .and_then(|r| r.dependencies.first())
            .is_some_and(|d| d.breaker.as_deref() == Some("closed"))
            .then_some(())
    })
    .await;
    assert!(!standing_after(&a).diverges(), "a is still forced open");

    // b's later reads of the standing states do not undo the reset...
    assert_eq!(two_beats_after(&raw, "b", reset_at).await, "closed");
    // ...nor does its return after losing Redis.
    relay.cut();
    connected(&b.fleet, false).await;
    relay.restore();
    connected(&b.fleet, true).await;
    assert_eq!(two_beats_after(&raw, "b", now_ms()).await, "closed");
    assert_eq!(b.breaker.state(), State::Closed);
    assert!(
        b.fleet.status().dependencies[0]
            .standing
            .as_ref()
            .unwrap()
            .diverges()
    );
    // A new fleet-wide force-open (a new number) applies again.
    assert_eq!(fleet_wide(&a, Action::ForceOpen).await, 2);
    eventually(Duration::from_secs(1), "b forced open again", || {
        (b.breaker.state() == State::ForcedOpen).then_some(())
    })
    .await;
}

fn standing_after(m: &Member) -> tower_recovery::fleet::Standing {
    m.fleet.status().dependencies[0].standing.clone().unwrap()
}

/// A coordinator on Redis whose first read of the standing states is held
/// until the test lets it go (after reading, or before, as `read_first`
/// says), and whose joining waits until the test built the recovery: the
/// interleavings of a joining replica with commands sent meanwhile, made
/// certain instead of left to timing.
struct Gated {
    inner: RedisCoordinator,
    read_first: bool,
    started: watch::Receiver<bool>,
    held: Arc<std::sync::atomic::AtomicBool>,
    entered: watch::Sender<bool>,
    go: watch::Receiver<bool>,
}

struct Gates {
    start: watch::Sender<bool>,
    entered: watch::Receiver<bool>,
    go: watch::Sender<bool>,
}

fn gated(redis: &RedisServer, read_first: bool) -> (Gated, Gates) {
    let (start, started) = watch::channel(false);
    let (entered_tx, entered) = watch::channel(false);
    let (go, go_rx) = watch::channel(false);
    (
        Gated {
            inner: coordinator(redis),
            read_first,
            started,
            held: Arc::new(std::sync::atomic::AtomicBool::new(true)),
            entered: entered_tx,
            go: go_rx,
        },
        Gates { start, entered, go },
    )
}

impl Gates {
    async fn entered(&mut self) {
        tokio::time::timeout(Duration::from_secs(10), self.entered.wait_for(|e| *e))
            .await
            .expect("the standing states were never read")
            .unwrap();
    }
}

impl Coordinator for Gated {
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
        Box::pin(async move {
            let mut started = self.started.clone();
            let _ = started.wait_for(|s| *s).await;
            self.inner.recent_commands().await
        })
    }
    fn standing<'a>(
        &'a self,
        dependencies: &'a [Arc<str>],
    ) -> BoxFuture<'a, Result<Vec<Command>, Unavailable>> {
        Box::pin(async move {
            if !self.held.swap(false, Ordering::SeqCst) {
                return self.inner.standing(dependencies).await;
            }
            let early = if self.read_first {
                Some(self.inner.standing(dependencies).await)
            } else {
                None
            };
            self.entered.send_replace(true);
            let mut go = self.go.clone();
            let _ = go.wait_for(|g| *g).await;
            match early {
                Some(read) => read,
                None => self.inner.standing(dependencies).await,
            }
        })
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

/// The joining replica read the force-open; a fleet-wide reset is sent
/// before it applies it: it applies the force-open, then the reset (it
/// was subscribed), and ends closed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reset_sent_while_a_joining_replica_applies_the_standing_state_wins() {
    let Some(redis) = RedisServer::start_or_skip("standing_race_reset") else {
        return;
    };
    let a = member(coordinator(&redis), "a", Duration::from_millis(100));
    connected(&a.fleet, true).await;
    assert_eq!(fleet_wide(&a, Action::ForceOpen).await, 1);

    let (coordinator, mut gates) = gated(&redis, true);
    let j = member(coordinator, "j", Duration::from_millis(100));
    gates.start.send_replace(true);
    gates.entered().await;
    assert!(!j.fleet.standing_applied());
    assert_eq!(j.breaker.state(), State::Closed);
    // j is subscribed (it reads the standing states after subscribing).
    assert_eq!(fleet_wide(&a, Action::Reset).await, 2);
    gates.go.send_replace(true);
    standing_applied(&j).await;
    eventually(Duration::from_secs(2), "j applied the reset", || {
        (applied(&j).len() == 2).then_some(())
    })
    .await;
    assert_eq!(
        applied(&j),
        [(Action::ForceOpen, true), (Action::Reset, false)]
    );
    assert_eq!(j.breaker.state(), State::Closed);
}

/// A reset and then a force-open are sent after the joining replica
/// subscribed and before it read the standing states: the read gives the
/// force-open (the later), and the two delivered after it change nothing
/// (the replica never goes back to an older state).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_older_than_the_standing_state_read_are_not_applied_after_it() {
    let Some(redis) = RedisServer::start_or_skip("standing_race_older") else {
        return;
    };
    let a = member(coordinator(&redis), "a", Duration::from_millis(100));
    connected(&a.fleet, true).await;
    assert_eq!(fleet_wide(&a, Action::ForceOpen).await, 1);
    let (_, first) = eventually(Duration::from_secs(2), "a's echo", || standing_of(&a)).await;

    let (coordinator, mut gates) = gated(&redis, false);
    let j = member(coordinator, "j", Duration::from_millis(100));
    gates.start.send_replace(true);
    gates.entered().await;
    assert_eq!(fleet_wide(&a, Action::Reset).await, 2);
    assert_eq!(fleet_wide(&a, Action::ForceOpen).await, 2);
    let (_, last) = eventually(Duration::from_secs(2), "a's echo of the second", || {
        standing_of(&a).filter(|(action, id)| *action == Action::ForceOpen && *id > first)
    })
    .await;
    gates.go.send_replace(true);
    standing_applied(&j).await;
    assert_eq!(j.breaker.state(), State::ForcedOpen);
    // The two delivered live were handled after the read (queued on the
    // subscription): wait until j's heartbeat is two beats past now.
    let raw = super::coordinator(&redis);
    assert_eq!(two_beats_after(&raw, "j", now_ms()).await, "forced_open");
    assert_eq!(applied(&j), [(Action::ForceOpen, true)]);
    assert_eq!(standing_of(&j), Some((Action::ForceOpen, last)));
}

/// `/readyz` answers 503 until the joining replica applied the standing
/// states; `/reliability` shows them with the replicas diverging; a local
/// reset says it diverges.
#[cfg(feature = "admin")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_waits_for_the_standing_states_and_reliability_reports_them() {
    use axum::body::Body;
    use http_body_util::BodyExt;
    use tower::ServiceExt;
    use tower_recovery::admin::Admin;
    use tower_recovery::drain::Drain;
    use tower_recovery::health::{Dependency, HealthCheck, Reliability};

    let Some(redis) = RedisServer::start_or_skip("standing_readyz") else {
        return;
    };
    let a = member(coordinator(&redis), "a", Duration::from_millis(100));
    connected(&a.fleet, true).await;
    assert_eq!(fleet_wide(&a, Action::ForceOpen).await, 1);

    let (coordinator, mut gates) = gated(&redis, false);
    let j = member(coordinator, "j", Duration::from_millis(100));
    gates.start.send_replace(true);
    let reliability = Reliability::builder()
        .dependency(
            Dependency::new(
                "model_server",
                HealthCheck::new(|| async { Ok::<(), String>(()) }),
            )
            .breaker(&j.breaker)
            .recovery(&j._recovery),
        )
        .build()
        .unwrap();
    reliability
        .wait_for_dependencies(Duration::from_millis(10), Duration::from_secs(5))
        .await
        .unwrap();
    let router = Admin::new(&reliability, &Drain::default())
        .fleet(&j.fleet)
        .open()
        .router::<()>();
    let call = |method: &'static str, path: &'static str| {
        let router = router.clone();
        async move {
            let response = router
                .oneshot(
                    http::Request::builder()
                        .method(method)
                        .uri(path)
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
        }
    };
    gates.entered().await;
    let (status, body) = call("GET", "/readyz").await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["reason"], "applying the fleet's standing states");
    gates.go.send_replace(true);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let (status, _) = call("GET", "/readyz").await;
        if status == 200 {
            break;
        }
        assert!(Instant::now() < deadline, "never ready");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(j.breaker.state(), State::ForcedOpen, "ready before applied");

    let (_, r) = call("GET", "/reliability").await;
    let fleet = &r["fleet"];
    assert_eq!(fleet["standing_applied"], true, "{fleet}");
    let standing = &fleet["dependencies"]["model_server"]["standing"];
    assert_eq!(standing["action"], "force_open", "{standing}");
    assert_eq!(standing["from"], "a");
    assert_eq!(standing["applied_here"], true);
    assert_eq!(standing["breaker_here"], "forced_open");
    assert_eq!(standing["diverges_here"], false);
    let applied = fleet["commands_applied"].as_array().unwrap();
    assert_eq!(applied.len(), 1, "{fleet}");
    assert_eq!(applied[0]["standing"], true);

    // A local reset: applied here, and the answer says it diverges.
    let (status, body) = call("POST", "/reliability/circuit-breaker/model_server/reset").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["fleet"]["scope"], "local", "{body}");
    assert_eq!(body["fleet"]["standing"], "force_open");
    assert_eq!(body["fleet"]["diverges"], true);
    assert_eq!(j.breaker.state(), State::Closed);
    let (_, r) = call("GET", "/reliability").await;
    let standing = &r["fleet"]["dependencies"]["model_server"]["standing"];
    assert_eq!(standing["diverges_here"], true, "{standing}");
    assert_eq!(standing["replicas_diverging"], serde_json::json!(["j"]));
    // a sees j diverge too, by j's heartbeat.
    let reliability_a = Reliability::builder()
        .dependency(
            Dependency::new(
                "model_server",
                HealthCheck::new(|| async { Ok::<(), String>(()) }),
            )
            .breaker(&a.breaker),
        )
        .build()
        .unwrap();
    let router_a = Admin::new(&reliability_a, &Drain::default())
        .fleet(&a.fleet)
        .router::<()>();
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let response = router_a
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
        if standing["replicas_diverging"] == serde_json::json!(["j"]) {
            assert_eq!(standing["diverges_here"], false);
            break;
        }
        assert!(
            Instant::now() < deadline,
            "a never saw j diverge: {standing}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Redis unreachable when the replica starts: it is not kept unready (it
/// recovers locally, as without a fleet); the standing states are applied
/// once Redis is reached.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_that_cannot_reach_redis_is_not_kept_unready() {
    let Some(mut redis) = RedisServer::start_or_skip("standing_unreachable") else {
        return;
    };
    let a = member(coordinator(&redis), "a", Duration::from_millis(100));
    connected(&a.fleet, true).await;
    assert_eq!(fleet_wide(&a, Action::ForceOpen).await, 1);
    redis.kill();
    let started = Instant::now();
    let b = member(coordinator(&redis), "b", Duration::from_millis(100));
    standing_applied(&b).await;
    println!(
        "fleet: a replica that cannot reach Redis settled {:?} after it started",
        started.elapsed()
    );
    assert!(!b.fleet.is_connected());
    assert_eq!(b.breaker.state(), State::Closed);
    // Redis is back (its data lost: no persistence here), so nothing
    // stands any more; a new fleet-wide force-open reaches b.
    redis.start();
    connected(&b.fleet, true).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while fleet_wide(&a, Action::ForceOpen).await < 2 {
        assert!(Instant::now() < deadline, "a and b never both subscribed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    eventually(Duration::from_secs(2), "b forced open", || {
        (b.breaker.state() == State::ForcedOpen).then_some(())
    })
    .await;
}

/// Two operators at once: b's route resets b, a's force-open (numbered
/// first) is sent, then b's reset is sent (numbered after). The reset is
/// the fleet's latest: every replica ends reset, b included (a's
/// force-open, delivered to b after b's own reset was applied there, must
/// not stick on b).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_operators_at_once_end_every_replica_in_the_later_state() {
    let Some(redis) = RedisServer::start_or_skip("standing_two_operators") else {
        return;
    };
    let a = member(coordinator(&redis), "a", Duration::from_millis(100));
    let b = member(coordinator(&redis), "b", Duration::from_millis(100));
    connected(&a.fleet, true).await;
    connected(&b.fleet, true).await;
    b.breaker.reset(); // b's route applies its reset here...
    assert_eq!(fleet_wide(&a, Action::ForceOpen).await, 2);
    // ...then sends it, after a's force-open.
    assert_eq!(
        b.fleet
            .broadcast("model_server", Action::Reset)
            .await
            .unwrap(),
        2
    );
    // a applies b's reset (delivered after its own force-open).
    eventually(Duration::from_secs(2), "a reset by b", || {
        (a.breaker.state().is_closed() && standing_of(&a).is_none()).then_some(())
    })
    .await;
    // b got both by then too (in the same order): two heartbeats later it
    // is reset, as its own command, the later, says.
    let raw = coordinator(&redis);
    assert_eq!(two_beats_after(&raw, "b", now_ms()).await, "closed");
    assert_eq!(b.breaker.state(), State::Closed);
    assert_eq!(two_beats_after(&raw, "a", now_ms()).await, "closed");
}

/// One command to the private Redis, with arguments as bytes.
pub(super) fn raw_bytes(port: u16, args: &[&[u8]]) -> Vec<u8> {
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

/// Odd data where the standing states are kept (a key of another type,
/// values that are not lines of this crate, a line filed under another
/// dependency) neither panics nor keeps a replica out; the next fleet-wide
/// force-open is kept and applied as usual.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn odd_standing_data_in_redis_does_not_keep_a_replica_out() {
    let Some(redis) = RedisServer::start_or_skip("standing_odd_data") else {
        return;
    };
    let key = format!("{NS}:standing");
    // Not a hash at all.
    assert_eq!(
        raw_bytes(redis.port, &[b"SET", key.as_bytes(), b"junk"]),
        b"+OK\r\n"
    );
    let a = member(coordinator(&redis), "a", Duration::from_millis(100));
    connected(&a.fleet, true).await;
    standing_applied(&a).await;
    assert_eq!(a.breaker.state(), State::Closed);
    // The next force-open replaces it.
    assert_eq!(fleet_wide(&a, Action::ForceOpen).await, 1);
    // Odd values beside the real one.
    for (field, value) in [
        (&b"model_server"[..], &b"\xff\xfe"[..]),
        (b"asr", b"v2\t99999999999999999999\t1\tasr\tforce_open\tx"),
        // A line about the model server filed under another dependency.
        (b"database", b"v2\t1\t1\tmodel_server\treset\tx"),
        (b"ocr", b"v2\t5\t1\tocr\ttrigger\tx"),
    ] {
        if field == b"model_server" {
            // (beside it: under a field of its own)
            raw_bytes(redis.port, &[b"HSET", key.as_bytes(), b"odd", value]);
        } else {
            raw_bytes(redis.port, &[b"HSET", key.as_bytes(), field, value]);
        }
    }
    let b = member(coordinator(&redis), "b", Duration::from_millis(100));
    standing_applied(&b).await;
    assert_eq!(b.breaker.state(), State::ForcedOpen);
    assert_eq!(applied(&b), [(Action::ForceOpen, true)]);
    // The value of the model server's own field forged: skipped, the
    // replica joins as if nothing stood.
    raw_bytes(
        redis.port,
        &[b"HSET", key.as_bytes(), b"model_server", b"\xff\xfe"],
    );
    let c = member(coordinator(&redis), "c", Duration::from_millis(100));
    standing_applied(&c).await;
    assert!(c.fleet.is_connected());
    assert_eq!(c.breaker.state(), State::Closed);
}
