//! A fleet of replicas recovers as one: recovery decisions coordinated
//! through a shared engine (Redis, with feature `redis`).
//!
//! # Why
//!
//! Run the service as many replicas behind a load balancer and every
//! replica sees the model server go down at once: without coordination,
//! every replica runs its recovery action (fifty reconnect storms, fifty
//! "restart the model server" calls, fifty pages). Sharing a breaker's
//! per-call counters across replicas would put a network call on every
//! request, which Resilience4j's, Polly's and gobreaker's maintainers
//! refuse, and rightly. A fleet coordinates *decisions*, not calls:
//!
//! - **One recovery per fleet.** Before a replica starts a recovery cycle
//!   for a dependency it takes that dependency's *lease* (an atomic
//!   set-if-absent with an expiry and a fencing token). The other replicas'
//!   triggers answer [`TriggerOutcome::RunningElsewhere`] and they watch the
//!   holder's outcomes: when it succeeds, each probes its own breaker at
//!   once ([`Breaker::probe_now`]) instead of waiting out its open duration;
//!   when it fails, they see its attempt count; when it gives up, they end
//!   their cycle as it did (and page nobody: the holder alerted).
//! - **Takeover.** The holder renews its lease every third of its time to
//!   live while its cycle runs and releases it at the end. If the holder
//!   dies, its lease expires and a waiting replica takes it over: within
//!   the time to live plus one renewal interval.
//! - **Fencing.** Every lease carries a token from a counter that only
//!   grows. An outcome is accepted only while no newer lease was issued, so
//!   a holder that stalled past its lease cannot report over its successor.
//!   Before each attempt the holder checks that it still holds the lease.
//! - **The request path never waits on the coordinator.** Admission and
//!   recording stay local and lock-free; leases, outcomes and heartbeats
//!   are handled by background tasks. When the coordinator is unreachable,
//!   the replica says so (a log line, the `tower_recovery_fleet_connected`
//!   gauge, [`Fleet::status`] and `/reliability`), recovers on its own
//!   ([`Fallback::Local`], the default) or waits ([`Fallback::Wait`]), and
//!   rejoins when the coordinator is back.
//! - **Fleet view.** Each replica publishes a heartbeat with its
//!   dependencies' breaker and recovery states, with a time to live, so
//!   replicas that died vanish. [`Fleet::status`] says which replicas are
//!   alive, how many see each dependency down, and who holds each lease.
//! - **Fleet-wide commands, and states that stand.** An admin action may
//!   target the fleet ([`Fleet::broadcast`], `?scope=fleet` on the admin
//!   POSTs): every replica applies it at once, and one that was away
//!   applies it on its return (if sent in the last 5 minutes). A
//!   fleet-wide force-open or disable also *stands* until a fleet-wide
//!   reset: a replica that joins later, or returns after any absence, is
//!   put in it (see [Standing states](#standing-states)).
//!
//! ```no_run
//! # #[cfg(feature = "redis")]
//! # async fn demo() -> Result<(), tower_recovery::BoxError> {
//! use tower_recovery::circuit_breaker::Breaker;
//! use tower_recovery::fleet::{Fleet, RedisCoordinator};
//! use tower_recovery::recovery::Recovery;
//!
//! let fleet = Fleet::builder(RedisCoordinator::new("redis://redis:6379/")?).spawn();
//! let breaker = Breaker::new("model_server");
//! let recovery = Recovery::builder("model_server", || async {
//!     // Restart or reconnect the model server: one replica of the fleet
//!     // does it at a time.
//!     Ok::<_, std::io::Error>(())
//! })
//! .watch(&breaker)
//! .fleet(&fleet)
//! .spawn();
//! # Ok(()) }
//! ```
//!
//! # Choosing the times
//!
//! The lease's time to live (default 10 s) bounds how long a dead holder
//! blocks the fleet: another replica takes over within the time to live
//! plus one renewal interval (a third of it). A holder renews every third
//! of the time to live, so two renewals in a row may fail (a slow network,
//! a pause) before it loses the lease. Heartbeats go out every 2 s and live
//! 6 s.
//!
//! # Standing states
//!
//! An operator who force-opens (or disables) a dependency for the whole
//! fleet means every replica, including the ones that start afterwards: a
//! pod restarted, a scale-up, a replica that was cut off from Redis longer
//! than the catch-up window. So a fleet-wide force-open or disable is kept
//! as the dependency's *standing state* ([`Coordinator::standing`]; in
//! Redis a hash, `{ns}:standing`), written in the same atomic step that
//! numbers the command; a fleet-wide reset replaces it (a trigger is
//! one-off and does not touch it). It has no time to live: it stands until
//! an operator resets it fleet-wide (it is lost only with Redis's data: run
//! Redis with persistence if it must survive a Redis restart).
//!
//! - **When a replica applies it.** On joining: after it subscribed to the
//!   commands and before anything else, so before its first heartbeat that
//!   lists the dependency (a dependency is left out of the heartbeat until
//!   then) and before [`Fleet::standing_applied`] is true, which `/readyz`
//!   waits for with `Admin::fleet` (a replica takes no traffic for a
//!   dependency the fleet cut off; measured: 2-5 ms after the replica
//!   started, with Redis on the same host). A recovery built after the
//!   fleet joined wakes it to apply its dependency's state. On every
//!   return (reconnection), the same way, before its first heartbeat.
//!   In between, commands come live, in order; the standing states are
//!   read again every heartbeat interval for the report only (a read must
//!   not overtake a command queued on the subscription). If the
//!   coordinator cannot be reached, the replica is not kept unready:
//!   [`Fleet::standing_applied`] turns true at the failed attempt, and the
//!   states are applied when it subscribes again (a read that fails while
//!   subscribed, for a recovery built after joining, drops the
//!   subscription and goes through that return at once). Only this
//!   replica's dependencies are read; odd data (a value too large to be a
//!   line of this crate's, a number more than a day ahead of the
//!   coordinator's clock) is skipped, and never keeps a replica out.
//! - **Order.** Commands are numbered by the coordinator, and a standing
//!   state is always the highest-numbered manual-state command of its
//!   dependency. Each replica applies a dependency's manual-state commands
//!   only in increasing number, whether one comes live, from the catch-up
//!   or as the standing state: so a standing state read just before a
//!   fleet-wide reset, with the reset delivered after, ends reset; a reset
//!   and a force-open sent while a replica joins end forced open, without
//!   closing it on the way; and when two operators act at once, every
//!   replica (the senders included) ends in the state of the later one.
//!   A sender settles its own command by its number when the send
//!   returns ([`Fleet::broadcast`]): its echo, or the standing state read
//!   after a resubscribe, does not undo a local action taken since.
//! - **A standing reset** (the latest command was a fleet-wide reset) only
//!   clears a state the fleet had put this replica in while it was away; a
//!   replica that joins after it does nothing.
//! - **Local decisions are not fought.** A replica-local reset (or
//!   force-open, disable) while a fleet state stands is applied as asked;
//!   the standing state is applied once per command number, so later reads
//!   and reconnections do not undo it. It is reported instead:
//!   [`Standing::diverges`], `/reliability`'s
//!   `fleet.dependencies.{name}.standing` (`diverges_here`,
//!   `replicas_diverging` by the replicas' heartbeats sent since the
//!   command), the local POST's
//!   answer, and a `warn` line. A new fleet-wide command (a new number) is
//!   applied again.
//!
//! # Another engine
//!
//! [`Coordinator`] is the whole contract: leases with fencing tokens,
//! outcomes, a subscription, numbered commands with their log and
//! standing states, and heartbeats. [`RedisCoordinator`] is the one
//! shipped (feature `redis`).
//!
//! [`TriggerOutcome::RunningElsewhere`]: crate::recovery::TriggerOutcome::RunningElsewhere
//! [`Breaker::probe_now`]: crate::circuit_breaker::Breaker::probe_now

mod agent;
mod codec;
mod pump;
#[cfg(feature = "redis")]
mod redis;
#[cfg(feature = "admin")]
pub(crate) mod report;
#[cfg(feature = "admin")]
pub(crate) mod scope;
mod standing;

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{Notify, mpsc, watch};
use tokio::time::Instant;

use crate::circuit_breaker::State as BreakerState;
use crate::recovery::{RecoveryState, WeakRecovery};
use crate::sync::atomic::{AtomicBool, Ordering};
use crate::sync::{Mutex, lock};

pub(crate) use self::agent::Guard;
#[cfg(feature = "redis")]
#[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
pub use self::redis::{InvalidRedisUrl, RedisBuilder, RedisCoordinator};
#[cfg(feature = "admin")]
pub(crate) use self::scope::fleet_scope;
use self::standing::{Manual, Step, Via};

/// Gauge: 1 while this replica reaches its coordinator, else 0 (`replica`).
pub const FLEET_CONNECTED: &str = "tower_recovery_fleet_connected";
/// Counter: times this replica lost its coordinator (`replica`).
pub const FLEET_DISCONNECTS: &str = "tower_recovery_fleet_disconnects_total";
/// Counter: recovery cycles this replica left to another one
/// (`dependency`).
pub const FLEET_RUNNING_ELSEWHERE: &str = "tower_recovery_fleet_running_elsewhere_total";

/// A boxed future, as [`Coordinator`]'s methods return (they run off the
/// request path, on background tasks).
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

// ===== the contract =====

/// The engine replicas coordinate through: leases with fencing tokens,
/// outcomes, a subscription to them, and heartbeats.
///
/// Every method may fail with [`Unavailable`] when the engine cannot be
/// reached; the fleet then falls back as its [`Fallback`] says.
pub trait Coordinator: Send + Sync + 'static {
    /// Takes the lease on `dependency` for `replica`, for `ttl`, unless a
    /// lease on it is held (by any replica, this one included). A lease
    /// granted carries a fencing token greater than every token granted
    /// before for the dependency.
    fn acquire<'a>(
        &'a self,
        dependency: &'a str,
        replica: &'a str,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<Acquire, Unavailable>>;

    /// Extends `lease` to `ttl` from now. `Ok(false)` when it is not held
    /// any more (it expired, and perhaps another replica took it).
    fn renew<'a>(
        &'a self,
        lease: &'a Lease,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<bool, Unavailable>>;

    /// Gives `lease` up. `Ok(false)` when it was not held any more.
    fn release<'a>(&'a self, lease: &'a Lease) -> BoxFuture<'a, Result<bool, Unavailable>>;

    /// Who holds the lease on `dependency`, if anyone.
    fn holder<'a>(
        &'a self,
        dependency: &'a str,
    ) -> BoxFuture<'a, Result<Option<Holder>, Unavailable>>;

    /// Publishes `outcome` of the cycle that `lease` was granted for, to
    /// every subscriber, and keeps it as the dependency's last outcome.
    /// Refused (`Ok(false)`) when a newer lease was granted for the
    /// dependency since: the fencing that keeps a stale holder quiet.
    fn publish<'a>(
        &'a self,
        lease: &'a Lease,
        outcome: &'a Outcome,
    ) -> BoxFuture<'a, Result<bool, Unavailable>>;

    /// The last outcome accepted for `dependency`.
    fn last_outcome<'a>(
        &'a self,
        dependency: &'a str,
    ) -> BoxFuture<'a, Result<Option<Published>, Unavailable>>;

    /// Subscribes to every outcome accepted and every command broadcast
    /// from now on, for every dependency. The subscription ends when the
    /// connection is lost.
    fn subscribe(&self) -> BoxFuture<'_, Result<Subscription, Unavailable>>;

    /// Sends `command` to every replica subscribed now (this one
    /// included), numbered after the commands before it, and keeps it
    /// among the recent ones. Returns how many received it.
    ///
    /// A coordinator that keeps [standing states](Self::standing) keeps a
    /// reset, force-open or disable as its dependency's standing state too,
    /// in the same atomic step as its numbering (so that the standing state
    /// is always the latest of them by number).
    fn broadcast<'a>(&'a self, command: &'a Command) -> BoxFuture<'a, Result<usize, Unavailable>>;

    /// As [`broadcast`](Self::broadcast), and also returns the number the
    /// command was given (0: none), first. What [`Fleet::broadcast`]
    /// calls: with a number, the sender's own manual-state command is
    /// settled here when the send returns, so that finding it again (its
    /// echo, the standing states read on a return) does not undo what
    /// this replica did since. The default numbers nothing.
    fn broadcast_numbered<'a>(
        &'a self,
        command: &'a Command,
    ) -> BoxFuture<'a, Result<(u64, usize), Unavailable>> {
        Box::pin(async move { Ok((0, self.broadcast(command).await?)) })
    }

    /// The standing manual states: for each dependency, the latest fleet
    /// command that set one ([`Action::ForceOpen`], [`Action::Disable`]) or
    /// cleared it ([`Action::Reset`]), kept with no expiry (an operator's
    /// decision), its time read by this replica's clock as in
    /// [`recent_commands`](Self::recent_commands). What a replica applies
    /// when it joins or returns, however long it was away. The default
    /// keeps none: a replica that joins later is not put in the fleet's
    /// state.
    ///
    /// Only the `dependencies` named are asked for (those of this
    /// replica): a coordinator need not return others, and skips a record
    /// too large to be one of its own (odd data must not stall it or keep
    /// a replica out).
    fn standing<'a>(
        &'a self,
        dependencies: &'a [Arc<str>],
    ) -> BoxFuture<'a, Result<Vec<Command>, Unavailable>> {
        let _ = dependencies;
        Box::pin(async { Ok(Vec::new()) })
    }

    /// The latest commands broadcast (at most 64), oldest first, with
    /// their numbers: what a replica that was away applies on its return
    /// (those numbered after the last it saw, sent in the last
    /// five minutes). The default keeps none: commands reach only the
    /// replicas subscribed when they are sent.
    fn recent_commands(&self) -> BoxFuture<'_, Result<Vec<Command>, Unavailable>> {
        Box::pin(async { Ok(Vec::new()) })
    }

    /// Publishes this replica's heartbeat, which lives `ttl`.
    fn heartbeat<'a>(
        &'a self,
        beat: &'a Heartbeat,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<(), Unavailable>>;

    /// The heartbeats still alive, this replica's included.
    fn replicas(&self) -> BoxFuture<'_, Result<Vec<Heartbeat>, Unavailable>>;
}

/// The coordinator cannot be reached (or answered something this crate
/// cannot read).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Unavailable {
    reason: String,
}

impl Unavailable {
    /// Says why.
    pub fn new(reason: impl fmt::Display) -> Self {
        Self {
            reason: crate::util::truncate_utf8(reason.to_string(), 256),
        }
    }

    /// Why.
    pub fn reason(&self) -> &str {
        &self.reason
    }
}

impl fmt::Display for Unavailable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "coordinator unavailable: {}", self.reason)
    }
}

impl std::error::Error for Unavailable {}

/// A lease on a dependency's recovery, granted to one replica.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Lease {
    dependency: Arc<str>,
    replica: Arc<str>,
    token: u64,
}

impl Lease {
    /// A lease as a [`Coordinator`] grants it.
    pub fn new(dependency: impl Into<Arc<str>>, replica: impl Into<Arc<str>>, token: u64) -> Self {
        Self {
            dependency: dependency.into(),
            replica: replica.into(),
            token,
        }
    }

    /// The dependency it is for.
    pub fn dependency(&self) -> &str {
        &self.dependency
    }

    /// The replica that holds it.
    pub fn replica(&self) -> &str {
        &self.replica
    }

    /// Its fencing token: greater than every token granted before it for
    /// the dependency.
    pub fn token(&self) -> u64 {
        self.token
    }
}

/// The replica holding a lease.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Holder {
    /// The replica's id.
    pub replica: Arc<str>,
    /// The lease's fencing token.
    pub token: u64,
    /// Time left before the lease expires unless renewed, when known.
    pub expires_in: Option<Duration>,
}

impl Holder {
    /// A holder as a [`Coordinator`] reports it.
    pub fn new(replica: impl Into<Arc<str>>, token: u64, expires_in: Option<Duration>) -> Self {
        Self {
            replica: replica.into(),
            token,
            expires_in,
        }
    }
}

/// What [`Coordinator::acquire`] got.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Acquire {
    /// The lease is ours.
    Granted(Lease),
    /// Another lease is held.
    HeldBy(Holder),
}

/// What became of a cycle run under a lease, as published to the fleet.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Outcome {
    /// The holder is starting attempt `attempt` of its cycle.
    Started {
        /// 1-based.
        attempt: u32,
    },
    /// Attempt `attempt` failed; more follow.
    AttemptFailed {
        /// 1-based.
        attempt: u32,
        /// Why, capped at 256 bytes.
        error: String,
    },
    /// The cycle succeeded after `attempts` attempts: the dependency is
    /// back.
    Recovered {
        /// Attempts the cycle made.
        attempts: u32,
    },
    /// Every attempt of the cycle failed.
    Exhausted {
        /// Attempts the cycle made.
        attempts: u32,
        /// The last attempt's error, capped at 256 bytes.
        error: String,
    },
}

impl Outcome {
    /// Lower-case name, as used in JSON.
    pub fn as_str(&self) -> &'static str {
        match self {
            Outcome::Started { .. } => "started",
            Outcome::AttemptFailed { .. } => "attempt_failed",
            Outcome::Recovered { .. } => "recovered",
            Outcome::Exhausted { .. } => "exhausted",
        }
    }

    /// Whether the cycle ended with it.
    pub fn is_final(&self) -> bool {
        matches!(self, Outcome::Recovered { .. } | Outcome::Exhausted { .. })
    }
}

/// An outcome as the fleet saw it: which replica published it, under which
/// lease.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Published {
    /// The dependency.
    pub dependency: Arc<str>,
    /// The replica that ran the cycle.
    pub replica: Arc<str>,
    /// The lease's fencing token.
    pub token: u64,
    /// What happened.
    pub outcome: Outcome,
}

impl Published {
    /// An outcome as a [`Coordinator`] delivers it.
    pub fn new(lease: &Lease, outcome: Outcome) -> Self {
        Self {
            dependency: lease.dependency.clone(),
            replica: lease.replica.clone(),
            token: lease.token,
            outcome,
        }
    }
}

/// What a subscription delivers.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Message {
    /// An outcome was accepted.
    Outcome(Published),
    /// A command was broadcast to the fleet.
    Command(Command),
}

/// An admin action for every replica of the fleet (`?scope=fleet` on the
/// admin POSTs).
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Command {
    /// The dependency it is for.
    pub dependency: Arc<str>,
    /// What to do.
    pub action: Action,
    /// The replica it came from.
    pub from: Arc<str>,
    /// Its number, given by the coordinator when it is broadcast (0
    /// before): later commands have higher numbers.
    pub id: u64,
    /// When it was sent (milliseconds since the Unix epoch): the sender's
    /// clock until it is broadcast; then the coordinator's, if it keeps a
    /// clock (Redis: its `TIME`), and in [`Coordinator::recent_commands`],
    /// translated to this replica's clock (a replica whose clock is off
    /// misjudges no command's age).
    pub sent_at_ms: u64,
}

impl Command {
    /// A command from replica `from`, sent now.
    pub fn new(dependency: impl Into<Arc<str>>, action: Action, from: impl Into<Arc<str>>) -> Self {
        Self {
            dependency: dependency.into(),
            action,
            from: from.into(),
            id: 0,
            sent_at_ms: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64),
        }
    }
}

/// What a fleet [`Command`] does on each replica.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Action {
    /// Resets the breaker and the recovery.
    Reset,
    /// Forces the breaker open.
    ForceOpen,
    /// Disables the breaker.
    Disable,
    /// Triggers the recovery by hand.
    Trigger,
}

impl Action {
    /// Lower-case name, as used in JSON and in the admin routes
    /// (`reset`, `force_open`, `disable`, `trigger`).
    pub fn as_str(&self) -> &'static str {
        match self {
            Action::Reset => "reset",
            Action::ForceOpen => "force_open",
            Action::Disable => "disable",
            Action::Trigger => "trigger",
        }
    }

    /// The action named `name` ([`as_str`](Self::as_str)).
    pub fn from_name(name: &str) -> Option<Self> {
        Some(match name {
            "reset" => Action::Reset,
            "force_open" => Action::ForceOpen,
            "disable" => Action::Disable,
            "trigger" => Action::Trigger,
            _ => return None,
        })
    }

    /// Whether it sets or clears a manual state that stands for the fleet
    /// (reset, force-open, disable), unlike a trigger, which is one-off.
    pub fn is_manual_state(&self) -> bool {
        !matches!(self, Action::Trigger)
    }

    /// The breaker state it puts a breaker in, for one that stands.
    pub(crate) fn breaker_state(&self) -> Option<BreakerState> {
        match self {
            Action::ForceOpen => Some(BreakerState::ForcedOpen),
            Action::Disable => Some(BreakerState::Disabled),
            Action::Reset | Action::Trigger => None,
        }
    }
}

/// Outcomes and commands as they are published, from
/// [`Coordinator::subscribe`].
#[derive(Debug)]
pub struct Subscription {
    rx: mpsc::UnboundedReceiver<Message>,
}

impl Subscription {
    /// A subscription fed through `rx`: it ends when every sender is
    /// dropped (the coordinator's connection was lost).
    pub fn new(rx: mpsc::UnboundedReceiver<Message>) -> Self {
        Self { rx }
    }

    /// The next message; `None` once the subscription ended.
    pub async fn next(&mut self) -> Option<Message> {
        self.rx.recv().await
    }

    /// The next message if one is queued already.
    pub(crate) fn try_next(&mut self) -> Option<Message> {
        self.rx.try_recv().ok()
    }
}

/// A replica's heartbeat: what it sees of each dependency.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Heartbeat {
    /// The replica's id.
    pub replica: Arc<str>,
    /// Milliseconds since the Unix epoch when it was sent, by the sender's
    /// clock.
    pub sent_at_ms: u64,
    /// Each dependency coordinated through the fleet.
    pub dependencies: Vec<DependencyBeat>,
}

impl Heartbeat {
    /// A heartbeat as a [`Coordinator`] reads it.
    pub fn new(
        replica: impl Into<Arc<str>>,
        sent_at_ms: u64,
        dependencies: Vec<DependencyBeat>,
    ) -> Self {
        Self {
            replica: replica.into(),
            sent_at_ms,
            dependencies,
        }
    }
}

/// One dependency in a heartbeat.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct DependencyBeat {
    /// Its name.
    pub name: Arc<str>,
    /// Its breaker's state (`closed`, `open`, ...), if the recovery watches
    /// one.
    pub breaker: Option<Arc<str>>,
    /// Its recovery's state (`idle`, `recovering`, ...).
    pub recovery: Arc<str>,
    /// Whether the replica sees it down: its breaker open or half-open, or
    /// its recovery recovering or exhausted.
    pub down: bool,
}

impl DependencyBeat {
    /// One dependency's part of a heartbeat.
    pub fn new(
        name: impl Into<Arc<str>>,
        breaker: Option<Arc<str>>,
        recovery: impl Into<Arc<str>>,
        down: bool,
    ) -> Self {
        Self {
            name: name.into(),
            breaker,
            recovery: recovery.into(),
            down,
        }
    }
}

// ===== the fleet =====

/// What a replica does about recovery while it cannot reach the
/// coordinator.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum Fallback {
    /// Recover on its own, as a replica without a fleet would (the
    /// default): a dependency is never left without recovery because the
    /// coordinator is down, at the price of replicas possibly recovering at
    /// once meanwhile.
    #[default]
    Local,
    /// Wait for the coordinator before each cycle: never two replicas at
    /// once, at the price of no recovery while it is down.
    Wait,
}

impl Fallback {
    /// Lower-case name, as used in JSON.
    pub fn as_str(&self) -> &'static str {
        match self {
            Fallback::Local => "local",
            Fallback::Wait => "wait",
        }
    }
}

#[derive(Clone, Copy, Debug)]
pub(crate) struct Settings {
    pub(crate) lease_ttl: Duration,
    pub(crate) renew_every: Duration,
    pub(crate) heartbeat_every: Duration,
    pub(crate) heartbeat_ttl: Duration,
    pub(crate) fallback: Fallback,
}

/// Configures a [`Fleet`].
pub struct Builder {
    coordinator: Arc<dyn Coordinator>,
    replica: Option<Arc<str>>,
    settings: Settings,
}

impl fmt::Debug for Builder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Builder")
            .field("replica", &self.replica)
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

impl Builder {
    /// This replica's id, unique in the fleet. Default: `$HOSTNAME` (a
    /// Kubernetes pod's name) and the process id, as `host-pid`.
    pub fn replica_id(mut self, id: impl Into<Arc<str>>) -> Self {
        self.replica = Some(id.into());
        self
    }

    /// A lease's time to live (default 10 s); renewed every third of it.
    ///
    /// # Panics
    /// If `ttl` is under 30 ms.
    pub fn lease_ttl(mut self, ttl: Duration) -> Self {
        assert!(
            ttl >= Duration::from_millis(30),
            "lease_ttl must be at least 30 ms"
        );
        self.settings.lease_ttl = ttl;
        self.settings.renew_every = ttl / 3;
        self
    }

    /// How often the heartbeat goes out (default 2 s); it lives three
    /// times as long.
    ///
    /// # Panics
    /// If `every` is under 10 ms.
    pub fn heartbeat_interval(mut self, every: Duration) -> Self {
        assert!(
            every >= Duration::from_millis(10),
            "heartbeat_interval must be at least 10 ms"
        );
        self.settings.heartbeat_every = every;
        self.settings.heartbeat_ttl = every * 3;
        self
    }

    /// What to do while the coordinator is unreachable (default
    /// [`Fallback::Local`]).
    pub fn fallback(mut self, fallback: Fallback) -> Self {
        self.settings.fallback = fallback;
        self
    }

    /// Starts the fleet's background task (subscription, heartbeats, the
    /// view of leases).
    ///
    /// # Panics
    /// Outside a tokio runtime.
    pub fn spawn(self) -> Fleet {
        let replica = self.replica.unwrap_or_else(default_replica_id);
        let (fleet_tx, _) = watch::channel(());
        let inner = Arc::new(Inner {
            coordinator: self.coordinator,
            replica,
            settings: self.settings,
            link: Mutex::new(Link {
                connected: false,
                since: Instant::now(),
                error: None,
                ever_connected: false,
            }),
            deps: Mutex::new(Vec::new()),
            replicas: Mutex::new(Vec::new()),
            applied: Mutex::new(std::collections::VecDeque::new()),
            changed: fleet_tx,
            wake: Notify::new(),
            stopped: AtomicBool::new(false),
            last_command: std::sync::atomic::AtomicU64::new(0),
        });
        #[cfg(feature = "metrics")]
        metrics::gauge!(FLEET_CONNECTED, "replica" => inner.replica.to_string()).set(0.0);
        tokio::spawn(pump::run(inner.clone()));
        Fleet {
            owner: Arc::new(Owner { inner }),
        }
    }
}

fn default_replica_id() -> Arc<str> {
    let host = std::env::var("HOSTNAME")
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "replica".to_string());
    format!("{host}-{}", std::process::id()).into()
}

/// Whether this replica reaches the coordinator.
struct Link {
    connected: bool,
    /// Since when `connected` has been what it is.
    since: Instant,
    error: Option<String>,
    ever_connected: bool,
}

/// A dependency coordinated through the fleet.
struct Entry {
    name: Arc<str>,
    recovery: std::sync::OnceLock<WeakRecovery>,
    view: watch::Sender<View>,
    /// Its fleet-wide manual state, as this replica knows it.
    manual: Manual,
}

/// What this replica knows of a dependency's lease and outcomes.
#[derive(Clone, Debug, Default)]
pub(crate) struct View {
    /// The lease holder, as last seen.
    pub(crate) holder: Option<Holder>,
    /// The last outcome seen, and when it arrived here (`None`: read when
    /// catching up, it may be old).
    pub(crate) last: Option<(Published, Option<Instant>)>,
}

pub(crate) struct Inner {
    pub(crate) coordinator: Arc<dyn Coordinator>,
    pub(crate) replica: Arc<str>,
    pub(crate) settings: Settings,
    link: Mutex<Link>,
    deps: Mutex<Vec<Entry>>,
    /// The heartbeats alive, as last read.
    replicas: Mutex<Vec<Heartbeat>>,
    /// The fleet commands applied here, newest last.
    applied: Mutex<std::collections::VecDeque<Applied>>,
    /// Bumped whenever the link or the view changes (for waiters).
    changed: watch::Sender<()>,
    /// Wakes the pump (a dependency registered, or the stop).
    wake: Notify,
    stopped: AtomicBool,
    /// The highest command number seen (applied, or from before this
    /// replica joined).
    pub(crate) last_command: std::sync::atomic::AtomicU64,
}

impl Inner {
    /// Notes what a call to the coordinator said about the link. Logs and
    /// counts the transitions, with no lock held.
    pub(crate) fn observe<T>(&self, result: &Result<T, Unavailable>) {
        let (was, now) = {
            let mut link = lock(&self.link);
            let was = (link.connected, link.ever_connected);
            match result {
                Ok(_) => {
                    if !link.connected {
                        link.connected = true;
                        link.since = Instant::now();
                    }
                    link.error = None;
                    link.ever_connected = true;
                }
                Err(e) => {
                    if link.connected || !link.ever_connected && link.error.is_none() {
                        link.since = Instant::now();
                    }
                    link.connected = false;
                    link.error = Some(e.reason().to_string());
                }
            }
            (was, link.connected)
        };
        let replica = &*self.replica;
        match (was, now) {
            ((false, ever), true) => {
                if ever {
                    tracing::info!(
                        replica,
                        "Fleet coordinator reachable again: rejoined the fleet"
                    );
                } else {
                    tracing::info!(replica, "Joined the fleet");
                }
                #[cfg(feature = "metrics")]
                metrics::gauge!(FLEET_CONNECTED, "replica" => replica.to_string()).set(1.0);
            }
            ((true, _), false) => {
                // The heartbeats read before are not the replicas alive now.
                lock(&self.replicas).clear();
                let error = result
                    .as_ref()
                    .err()
                    .map(|e| e.to_string())
                    .unwrap_or_default();
                tracing::warn!(
                    replica,
                    error = %error,
                    fallback = self.settings.fallback.as_str(),
                    "Fleet coordinator unreachable: recovering {}",
                    match self.settings.fallback {
                        Fallback::Local => "locally until it is back",
                        Fallback::Wait => "nothing until it is back (fallback: wait)",
                    }
                );
                #[cfg(feature = "metrics")]
                {
                    metrics::gauge!(FLEET_CONNECTED, "replica" => replica.to_string()).set(0.0);
                    metrics::counter!(FLEET_DISCONNECTS, "replica" => replica.to_string())
                        .increment(1);
                }
            }
            _ => {}
        }
        if was.0 != now {
            self.changed.send_replace(());
        }
    }

    pub(crate) fn connected(&self) -> bool {
        lock(&self.link).connected
    }

    /// Feeds an outcome to its dependency's view: `fresh` as it is
    /// published, else read when catching up.
    pub(crate) fn deliver(&self, published: Published, fresh: bool) {
        let view = {
            let deps = lock(&self.deps);
            deps.iter()
                .find(|e| e.name == published.dependency)
                .map(|e| e.view.clone())
        };
        if let Some(view) = view {
            let at = fresh.then(Instant::now);
            view.send_modify(|v| {
                // Keep the newest lease's news (a late message of an older
                // lease changes nothing).
                let newer = v.last.as_ref().is_none_or(|(p, _)| {
                    published.token > p.token || published.token == p.token && *p != published
                });
                if newer {
                    if published.outcome.is_final() {
                        if v.holder
                            .as_ref()
                            .is_some_and(|h| h.token <= published.token)
                        {
                            v.holder = None;
                        }
                    } else if v.holder.as_ref().is_none_or(|h| h.token < published.token) {
                        v.holder = Some(Holder::new(
                            published.replica.clone(),
                            published.token,
                            None,
                        ));
                    }
                    v.last = Some((published, at));
                }
            });
            self.changed.send_replace(());
        }
    }

    /// Sets a dependency's holder as read from the coordinator.
    pub(crate) fn set_holder(&self, name: &str, holder: Option<Holder>) {
        let view = {
            let deps = lock(&self.deps);
            deps.iter()
                .find(|e| &*e.name == name)
                .map(|e| e.view.clone())
        };
        if let Some(view) = view {
            view.send_if_modified(|v| {
                if v.holder != holder {
                    v.holder = holder;
                    true
                } else {
                    false
                }
            });
        }
    }

    pub(crate) fn names(&self) -> Vec<Arc<str>> {
        lock(&self.deps).iter().map(|e| e.name.clone()).collect()
    }

    pub(crate) fn set_replicas(&self, beats: Vec<Heartbeat>) {
        *lock(&self.replicas) = beats;
        self.changed.send_replace(());
    }

    /// This replica's heartbeat, read from its recoveries with no lock of
    /// the fleet held.
    /// A dependency is in it once its standing state was applied (or the
    /// coordinator was found unreachable): a replica that joins never
    /// reports a dependency as it was before the fleet's state.
    pub(crate) fn beat(&self) -> Heartbeat {
        let entries: Vec<(Arc<str>, Option<WeakRecovery>)> = lock(&self.deps)
            .iter()
            .filter(|e| e.manual.settled)
            .map(|e| (e.name.clone(), e.recovery.get().cloned()))
            .collect();
        let dependencies = entries
            .into_iter()
            .filter_map(|(name, weak)| {
                let recovery = weak?.upgrade()?;
                let state = recovery.status().state;
                let breaker = recovery.breaker_state();
                let down = matches!(state, RecoveryState::Recovering | RecoveryState::Exhausted)
                    || breaker.is_some_and(|b| {
                        matches!(
                            b,
                            crate::circuit_breaker::State::Open
                                | crate::circuit_breaker::State::HalfOpen
                        )
                    });
                Some(DependencyBeat::new(
                    name,
                    breaker.map(|b| Arc::from(b.as_str())),
                    state.as_str(),
                    down,
                ))
            })
            .collect();
        let sent_at_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        Heartbeat::new(self.replica.clone(), sent_at_ms, dependencies)
    }

    /// Applies a command broadcast to the fleet, delivered live or found
    /// on a catch-up, with no lock held while the breaker and recovery
    /// act. Another replica's is applied as it says; this replica's own
    /// was applied where it was made, and its manual state is only made
    /// good again if another replica's earlier one was applied here since
    /// (two operators at once: the later by number wins everywhere). A
    /// manual-state command older than one applied here for the
    /// dependency (found standing first) changes nothing.
    pub(crate) fn apply(&self, command: Command) {
        // Seen already (delivered live and found again on a catch-up, or
        // the other way round).
        if command.id != 0
            && self.last_command.fetch_max(command.id, Ordering::AcqRel) >= command.id
        {
            return;
        }
        let ours = command.from == self.replica;
        if ours && !command.action.is_manual_state() {
            return;
        }
        let found = {
            let mut deps = lock(&self.deps);
            deps.iter_mut()
                .find(|e| e.name == command.dependency)
                .and_then(|e| {
                    let recovery = e.recovery.get().cloned()?;
                    let step = if command.action.is_manual_state() {
                        e.manual.decide(&command, ours, Via::Delivered)
                    } else {
                        Step::Full
                    };
                    Some((recovery, step))
                })
        };
        if let Some((recovery, step)) = found {
            self.act(command, step, &recovery, false);
        }
    }

    /// This replica's own command, as the coordinator numbered it when
    /// the send returned: a manual-state one is settled for its dependency
    /// (noted as seen, so that its echo and the standing states read later
    /// do not apply it again over a local action taken since), and made
    /// good again only if another replica's earlier one was applied here
    /// meanwhile. The fleet's last command seen is left alone: commands
    /// numbered before it may still be on their way.
    pub(crate) fn settle_own(&self, command: Command) {
        if command.id == 0 || !command.action.is_manual_state() {
            return;
        }
        let found = {
            let mut deps = lock(&self.deps);
            deps.iter_mut()
                .find(|e| e.name == command.dependency)
                .and_then(|e| {
                    let recovery = e.recovery.get().cloned()?;
                    let step = e.manual.decide(&command, true, Via::Delivered);
                    Some((recovery, step))
                })
        };
        if let Some((recovery, step)) = found {
            self.act(command, step, &recovery, false);
        }
    }

    /// Notes each dependency's standing state, as read from the
    /// coordinator, for the report; applies it (only if newer than what was
    /// applied here) to the dependencies `apply_to` says whose recovery is
    /// attached, with no lock held while the breakers act, and marks them
    /// settled once every state is applied (never before: `/readyz`
    /// answers by it).
    pub(crate) fn sync_standing(&self, records: &[Command], apply_to: ApplyTo) {
        let mut todo = Vec::new();
        let mut settle: Vec<Arc<str>> = Vec::new();
        {
            let mut deps = lock(&self.deps);
            for e in deps.iter_mut() {
                let record = standing::record_for(records, &e.name);
                e.manual.read(record);
                let Some(recovery) = e.recovery.get() else {
                    continue;
                };
                let apply = match apply_to {
                    ApplyTo::All => true,
                    ApplyTo::Unsettled => !e.manual.settled,
                    ApplyTo::ReportOnly => false,
                };
                if !apply {
                    continue;
                }
                if let Some(record) = record {
                    let ours = record.from == self.replica;
                    let step = e.manual.decide(record, ours, Via::Standing);
                    if step == Step::Converge {
                        todo.push((record.clone(), recovery.clone()));
                    }
                }
                if !e.manual.settled {
                    settle.push(e.name.clone());
                }
            }
        }
        for (command, recovery) in todo {
            self.act(command, Step::Converge, &recovery, true);
        }
        if !settle.is_empty() {
            for e in lock(&self.deps).iter_mut() {
                if settle.contains(&e.name) {
                    e.manual.settled = true;
                }
            }
        }
        self.changed.send_replace(());
    }

    /// The coordinator could not be reached: the dependencies attached are
    /// settled as they are (a replica is not kept unready by a Redis
    /// outage); their standing states are applied on reconnection.
    pub(crate) fn settle_unreachable(&self) {
        let mut changed = false;
        for e in lock(&self.deps).iter_mut() {
            if e.recovery.get().is_some() && !e.manual.settled {
                e.manual.settled = true;
                changed = true;
            }
        }
        if changed {
            self.changed.send_replace(());
        }
    }

    /// Whether a dependency's recovery attached since the standing states
    /// were last read.
    pub(crate) fn unsettled(&self) -> bool {
        lock(&self.deps)
            .iter()
            .any(|e| e.recovery.get().is_some() && !e.manual.settled)
    }

    /// Whether every dependency registered is settled.
    fn all_settled(&self) -> bool {
        lock(&self.deps).iter().all(|e| e.manual.settled)
    }

    /// Carries out `step` of `command` on the dependency's breaker and
    /// recovery (no lock of the fleet is held), logs and reports what it
    /// did, if anything.
    fn act(&self, command: Command, step: Step, recovery: &WeakRecovery, standing: bool) {
        let Some(recovery) = recovery.upgrade() else {
            return;
        };
        let breaker = recovery.breaker();
        let name = &*command.dependency;
        let result = match step {
            Step::Skip | Step::Note => None,
            Step::Full => Some(match (command.action, &breaker) {
                (Action::Reset, _) => {
                    if let Some(b) = &breaker {
                        b.reset();
                    }
                    recovery.reset();
                    "reset".to_string()
                }
                (Action::ForceOpen, Some(b)) => {
                    b.force_open();
                    "forced open".to_string()
                }
                (Action::Disable, Some(b)) => {
                    b.disable();
                    "disabled".to_string()
                }
                (Action::Trigger, _) => recovery.trigger_manual().as_str().to_string(),
                (_, None) => "no breaker here".to_string(),
            }),
            Step::Converge => match (command.action, &breaker) {
                (Action::Reset, Some(b))
                    if matches!(b.state(), BreakerState::ForcedOpen | BreakerState::Disabled) =>
                {
                    b.reset();
                    recovery.reset();
                    Some("reset".to_string())
                }
                (Action::ForceOpen, Some(b)) if b.state() != BreakerState::ForcedOpen => {
                    b.force_open();
                    Some("forced open".to_string())
                }
                (Action::Disable, Some(b)) if b.state() != BreakerState::Disabled => {
                    b.disable();
                    Some("disabled".to_string())
                }
                _ => None,
            },
        };
        let Some(result) = result else { return };
        if standing {
            tracing::warn!(
                dependency = name,
                from = &*command.from,
                action = command.action.as_str(),
                command = command.id,
                result = result.as_str(),
                "Fleet standing state from replica '{}': {} '{name}' ({result})",
                command.from,
                command.action.as_str()
            );
        } else {
            tracing::warn!(
                dependency = name,
                from = &*command.from,
                action = command.action.as_str(),
                command = command.id,
                result = result.as_str(),
                "Fleet command from replica '{}': {} '{name}' ({result})",
                command.from,
                command.action.as_str()
            );
        }
        {
            let mut applied = lock(&self.applied);
            if applied.len() == APPLIED_KEPT {
                applied.pop_front();
            }
            applied.push_back(Applied {
                command,
                result,
                at: std::time::SystemTime::now(),
                standing,
            });
        }
        self.changed.send_replace(());
    }

    pub(crate) fn stopped(&self) -> bool {
        self.stopped.load(Ordering::Acquire)
    }

    pub(crate) fn wake(&self) -> &Notify {
        &self.wake
    }
}

/// Which dependencies a read of the standing states is applied to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ApplyTo {
    /// Every one: the replica just subscribed (joined, or returned), and
    /// the commands sent since are delivered after.
    All,
    /// Those whose recovery attached since the last read.
    Unsettled,
    /// None, the report only: the commands of the dependencies applied
    /// already come live, in order (a read must not overtake one queued on
    /// the subscription, and a subscriber loses none without losing its
    /// connection, when it returns through `All`).
    ReportOnly,
}

/// Fleet commands kept for the report.
const APPLIED_KEPT: usize = 16;

/// A fleet command this replica applied.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Applied {
    /// The command.
    pub command: Command,
    /// What it did here (`reset`, `forced open`, a trigger's outcome, ...).
    pub result: String,
    /// When (wall clock).
    pub at: std::time::SystemTime,
    /// Applied as the dependency's standing state, read when this replica
    /// joined or returned (or on a periodic read), rather than as it was
    /// sent.
    pub standing: bool,
}

/// Stops the background task when the last handle goes.
struct Owner {
    inner: Arc<Inner>,
}

impl Drop for Owner {
    fn drop(&mut self) {
        self.inner.stopped.store(true, Ordering::Release);
        self.inner.wake.notify_one();
    }
}

/// A replica's membership of a fleet: cheap to clone, all clones share it.
/// Its background task stops when the last clone (and the last recovery
/// that uses it) is dropped.
#[derive(Clone)]
pub struct Fleet {
    owner: Arc<Owner>,
}

impl fmt::Debug for Fleet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Fleet")
            .field("replica", &self.inner().replica)
            .field("connected", &self.inner().connected())
            .finish_non_exhaustive()
    }
}

impl Fleet {
    /// Configures a fleet coordinated through `coordinator`.
    pub fn builder(coordinator: impl Coordinator) -> Builder {
        Self::builder_arc(Arc::new(coordinator))
    }

    /// [`builder`](Self::builder) with a shared coordinator.
    pub fn builder_arc(coordinator: Arc<dyn Coordinator>) -> Builder {
        let ttl = Duration::from_secs(10);
        Builder {
            coordinator,
            replica: None,
            settings: Settings {
                lease_ttl: ttl,
                renew_every: ttl / 3,
                heartbeat_every: Duration::from_secs(2),
                heartbeat_ttl: Duration::from_secs(6),
                fallback: Fallback::Local,
            },
        }
    }

    pub(crate) fn inner(&self) -> &Arc<Inner> {
        &self.owner.inner
    }

    /// This replica's id.
    pub fn replica_id(&self) -> &str {
        &self.inner().replica
    }

    /// Whether the coordinator answered the last call made to it.
    pub fn is_connected(&self) -> bool {
        self.inner().connected()
    }

    /// Waits until the coordinator is reachable (or not), as last seen.
    pub async fn wait_connected(&self, connected: bool) {
        let mut rx = self.inner().changed.subscribe();
        loop {
            if self.inner().connected() == connected {
                return;
            }
            if rx.changed().await.is_err() {
                return;
            }
        }
    }

    /// Whether every dependency registered here (each recovery built with
    /// [`fleet`](crate::recovery::Builder::fleet)) has been put in the
    /// fleet's standing state, if one stands for it: the standing states
    /// were read and applied since it registered, or the coordinator could
    /// not be reached at the attempt (then they are applied when it is
    /// reached). `/readyz` answers 503 until then (with `Admin::fleet`),
    /// so that a replica that joins takes no traffic for a dependency the
    /// fleet cut off. See [Standing states](crate::fleet#standing-states).
    pub fn standing_applied(&self) -> bool {
        self.inner().all_settled()
    }

    /// Waits until [`standing_applied`](Self::standing_applied): await it
    /// after building the recoveries, before serving, when no `/readyz`
    /// gates the traffic. It waits at most about the coordinator's
    /// connection timeout when the coordinator is unreachable.
    pub async fn wait_standing_applied(&self) {
        let mut rx = self.inner().changed.subscribe();
        loop {
            if self.standing_applied() {
                return;
            }
            if rx.changed().await.is_err() {
                return;
            }
        }
    }

    /// Registers a recovery's dependency; its view of the lease follows.
    ///
    /// # Panics
    /// If a recovery of that name is registered already.
    pub(crate) fn register(&self, name: Arc<str>) -> Member {
        let (tx, rx) = watch::channel(View::default());
        {
            let mut deps = lock(&self.inner().deps);
            assert!(
                deps.iter().all(|e| e.name != name),
                "a fleet coordinates one recovery per dependency: '{name}' is registered twice"
            );
            deps.push(Entry {
                name: name.clone(),
                recovery: std::sync::OnceLock::new(),
                view: tx,
                manual: Manual::default(),
            });
        }
        self.inner().wake.notify_one();
        Member {
            fleet: self.clone(),
            name,
            view: rx,
            following: Arc::new(Mutex::new(None)),
        }
    }

    /// Sends an admin action on `dependency` to every replica of the fleet
    /// (each applies it at once, and reports it in its [`status`](Self::status)).
    /// Apply it here yourself first: this replica does not apply its own
    /// command as the others do. A reset, force-open or disable is settled
    /// here when the send returns, by its number (the fleet's state is
    /// made good again only if another replica's earlier command was
    /// applied here meanwhile); its echo and later reads of the standing
    /// states then change nothing, so a local action taken after it is not
    /// undone. Returns how many replicas were subscribed to receive it,
    /// this one included.
    pub async fn broadcast(&self, dependency: &str, action: Action) -> Result<usize, Unavailable> {
        let inner = self.inner();
        let mut command = Command::new(dependency, action, inner.replica.clone());
        let sent = inner.coordinator.broadcast_numbered(&command).await;
        inner.observe(&sent);
        let (id, received) = sent?;
        command.id = id;
        inner.settle_own(command);
        Ok(received)
    }

    /// A point-in-time view of the fleet, as this replica knows it.
    /// Reading changes nothing and waits on no network call.
    pub fn status(&self) -> FleetStatus {
        let inner = self.inner();
        let (connected, since, error) = {
            let link = lock(&inner.link);
            (link.connected, link.since, link.error.clone())
        };
        let replicas = lock(&inner.replicas).clone();
        type Read = (Arc<str>, View, Manual, Option<WeakRecovery>);
        let views: Vec<Read> = lock(&inner.deps)
            .iter()
            .map(|e| {
                (
                    e.name.clone(),
                    e.view.borrow().clone(),
                    e.manual.clone(),
                    e.recovery.get().cloned(),
                )
            })
            .collect();
        let dependencies = views
            .into_iter()
            .map(|(name, view, manual, recovery)| {
                // The breaker is read with no lock of the fleet held.
                let standing = manual
                    .known
                    .clone()
                    .filter(|c| c.action.breaker_state().is_some())
                    .map(|command| Standing {
                        applied_here: manual.applied(command.id),
                        breaker_here: recovery
                            .and_then(|r| r.upgrade())
                            .and_then(|r| r.breaker_state()),
                        command,
                    });
                let reporting = replicas
                    .iter()
                    .filter(|r| r.dependencies.iter().any(|d| d.name == name))
                    .count();
                let down_on: Vec<Arc<str>> = replicas
                    .iter()
                    .filter(|r| r.dependencies.iter().any(|d| d.name == name && d.down))
                    .map(|r| r.replica.clone())
                    .collect();
                DependencyStatus {
                    name,
                    holder: view.holder,
                    last_outcome: view.last.map(|(p, _)| p),
                    reporting,
                    down_on,
                    standing,
                }
            })
            .collect();
        FleetStatus {
            replica: inner.replica.clone(),
            connected,
            disconnected_for: (!connected).then(|| since.elapsed()),
            last_error: error,
            fallback: inner.settings.fallback,
            lease_ttl: inner.settings.lease_ttl,
            replicas,
            dependencies,
            commands_applied: lock(&inner.applied).iter().cloned().collect(),
            standing_applied: inner.all_settled(),
        }
    }
}

/// The fleet as one replica sees it.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct FleetStatus {
    /// This replica's id.
    pub replica: Arc<str>,
    /// Whether the coordinator answered the last call made to it.
    pub connected: bool,
    /// How long the coordinator has been unreachable, when it is.
    pub disconnected_for: Option<Duration>,
    /// Why the last call to the coordinator failed, while it is
    /// unreachable.
    pub last_error: Option<String>,
    /// What this replica does while the coordinator is unreachable.
    pub fallback: Fallback,
    /// A lease's time to live.
    pub lease_ttl: Duration,
    /// The replicas alive (their heartbeats), as last read: empty while the
    /// coordinator is unreachable.
    pub replicas: Vec<Heartbeat>,
    /// Each dependency this replica coordinates.
    pub dependencies: Vec<DependencyStatus>,
    /// The last fleet commands this replica applied (up to 16), oldest
    /// first: as they were sent, or found standing. Another replica's, or
    /// this one's own when its state had to be made good again (another
    /// replica's earlier command applied here meanwhile, or found standing
    /// after a restart under the same replica id).
    pub commands_applied: Vec<Applied>,
    /// Whether every dependency registered here was put in the fleet's
    /// standing state ([`Fleet::standing_applied`]).
    pub standing_applied: bool,
}

/// One dependency in a [`FleetStatus`].
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct DependencyStatus {
    /// Its name.
    pub name: Arc<str>,
    /// The replica holding its lease (running its recovery), as last seen.
    pub holder: Option<Holder>,
    /// The last outcome a holder published.
    pub last_outcome: Option<Published>,
    /// Replicas alive whose heartbeat reports it.
    pub reporting: usize,
    /// Replicas alive that see it down.
    pub down_on: Vec<Arc<str>>,
    /// The fleet-wide manual state standing for it (a fleet-scope
    /// force-open or disable not reset since), as last read from the
    /// coordinator or delivered since.
    pub standing: Option<Standing>,
}

/// A fleet-wide manual state that stands for a dependency: set by a
/// fleet-scope force-open or disable, cleared only by a fleet-scope reset
/// (never by a time to live: an operator's decision). Every replica that
/// joins or returns is put in it.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct Standing {
    /// The command that set it ([`Action::ForceOpen`] or
    /// [`Action::Disable`]): its number, the replica it was sent from, and
    /// when (by the coordinator's clock, read by this replica's).
    pub command: Command,
    /// Whether this replica applied it (as it was sent, found standing, or
    /// a later manual-state command was applied here).
    pub applied_here: bool,
    /// This replica's breaker's state now, if its recovery watches one.
    pub breaker_here: Option<BreakerState>,
}

impl Standing {
    /// Whether this replica applied it and its breaker is not in that state
    /// now: it was reset (or set otherwise) here alone since, which is
    /// allowed (the fleet does not fight an operator's local decision) and
    /// reported.
    pub fn diverges(&self) -> bool {
        self.applied_here
            && self
                .breaker_here
                .is_some_and(|b| Some(b) != self.command.action.breaker_state())
    }
}

impl DependencyStatus {
    /// Whether every replica alive that reports it sees it down (and at
    /// least one does): "down for everyone", not one replica's problem.
    pub fn down_everywhere(&self) -> bool {
        self.reporting > 0 && self.down_on.len() == self.reporting
    }
}

// ===== a recovery's link to the fleet =====

/// A recovery's membership: the fleet, and its dependency's view.
#[derive(Clone)]
pub(crate) struct Member {
    pub(crate) fleet: Fleet,
    pub(crate) name: Arc<str>,
    pub(crate) view: watch::Receiver<View>,
    /// The holder this replica's cycle waits on, published by the cycle.
    pub(crate) following: Arc<Mutex<Option<Following>>>,
}

impl fmt::Debug for Member {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Member")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl Member {
    /// Ties the recovery to its entry, for heartbeats and fleet
    /// commands, and wakes the fleet's task to apply the dependency's
    /// standing state.
    pub(crate) fn attach(&self, recovery: WeakRecovery) {
        {
            let deps = lock(&self.fleet.inner().deps);
            if let Some(e) = deps.iter().find(|e| e.name == self.name) {
                let _ = e.recovery.set(recovery);
            }
        }
        self.fleet.inner().wake.notify_one();
    }

    pub(crate) fn inner(&self) -> &Arc<Inner> {
        self.fleet.inner()
    }

    pub(crate) fn set_following(&self, following: Option<Following>) {
        *lock(&self.following) = following;
    }

    /// Whether a trigger now would be answered by another replica's cycle:
    /// this replica's cycle waits on one, or (as last seen) another replica
    /// holds the lease and the coordinator is reachable.
    pub(crate) fn elsewhere(&self) -> bool {
        if lock(&self.following).is_some() {
            return true;
        }
        let inner = self.inner();
        inner.connected()
            && self
                .view
                .borrow()
                .holder
                .as_ref()
                .is_some_and(|h| h.replica != inner.replica)
    }

    /// What a recovery reports about its fleet.
    pub(crate) fn status(&self) -> MemberStatus {
        let inner = self.inner();
        let view = self.view.borrow().clone();
        let following = lock(&self.following).clone();
        let connected = inner.connected();
        MemberStatus {
            replica: inner.replica.clone(),
            connected,
            local_fallback: !connected && inner.settings.fallback == Fallback::Local,
            holder: view.holder,
            running_elsewhere: following,
            last_outcome: view.last.map(|(p, _)| p),
        }
    }
}

/// The cycle another replica runs, that this replica's cycle waits on.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Following {
    /// The holder running it.
    pub holder: Holder,
    /// Its last failed attempt, 0 before one failed.
    pub attempts_failed: u32,
    /// Why its last attempt failed.
    pub last_error: Option<String>,
}

/// A recovery's part in its fleet (from
/// [`Recovery::fleet_status`](crate::recovery::Recovery::fleet_status)).
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct MemberStatus {
    /// This replica's id.
    pub replica: Arc<str>,
    /// Whether the coordinator answered the last call made to it.
    pub connected: bool,
    /// The coordinator is unreachable and this replica recovers on its own.
    pub local_fallback: bool,
    /// The replica holding the lease (running the recovery), as last seen:
    /// this one or another.
    pub holder: Option<Holder>,
    /// The cycle of another replica that this replica's cycle waits on.
    pub running_elsewhere: Option<Following>,
    /// The last outcome a holder published.
    pub last_outcome: Option<Published>,
}
