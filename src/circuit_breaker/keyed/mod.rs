//! Keyed breakers: one breaker per upstream host, tenant or route, made on
//! first use, with bounded memory.
//!
//! # Why
//!
//! One breaker in front of a client that talks to many upstreams (a proxy,
//! a webhook sender, a multi-tenant gateway) opens for all of them when one
//! fails: a single dead host takes every healthy one out with it. A breaker
//! per upstream isolates them, but the upstreams are known only from the
//! requests, and they come and go. A [`KeyedBreaker`] is a registry of
//! breakers, one per key, each built from the same template and made the
//! first time its key is seen; [`KeyedBreaker::layer`] finds each request's
//! key ([`ExtractKey`]: [`ByAuthority`], [`ByHeader`] or a closure) and
//! guards the call with that key's breaker.
//!
//! ```
//! use http::{Request, Response};
//! use tower::{Service, ServiceBuilder, ServiceExt, service_fn};
//! use tower_recovery::circuit_breaker::keyed::{ByAuthority, KeyedBreaker};
//! use tower_recovery::circuit_breaker::{Breaker, Rejected, State};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let upstreams = KeyedBreaker::new(Breaker::builder("upstream").consecutive_failures(2));
//!
//! let mut client = ServiceBuilder::new()
//!     .layer(upstreams.layer(ByAuthority))
//!     .service(service_fn(|req: Request<()>| async move {
//!         match req.uri().host() {
//!             Some("down.internal") => Err("connection refused"),
//!             _ => Ok(Response::new(())),
//!         }
//!     }));
//! let get = |uri: &str| Request::get(uri).body(()).unwrap();
//!
//! for _ in 0..2 {
//!     let err = client.ready().await.unwrap().call(get("http://down.internal/")).await;
//!     assert!(err.is_err());
//! }
//! // The failing host's breaker is open...
//! let err = client.ready().await.unwrap().call(get("http://down.internal/")).await.unwrap_err();
//! assert!(err.is::<Rejected>());
//! // ...and the healthy one still serves.
//! assert!(client.ready().await.unwrap().call(get("http://up.internal/")).await.is_ok());
//!
//! let down = "down.internal".parse().unwrap();
//! assert_eq!(upstreams.get(&down).state(), State::Open);
//! assert_eq!(upstreams.get(&down).name(), "upstream[down.internal]");
//! assert_eq!(upstreams.len(), 2);
//! # }
//! ```
//!
//! # Bounded memory
//!
//! Keys come from requests, so their number must not be up to the
//! requests. Two rules bound it:
//!
//! - **Idle keys are dropped.** A key whose breaker is `Closed` and that
//!   had no call for [`idle_timeout`](Builder::idle_timeout) (default 10
//!   minutes) is dropped; its next call starts a fresh breaker, which is
//!   what a closed breaker with no recent calls is anyway. A breaker that is
//!   open, half-open, forced open or disabled is **never** dropped: that
//!   would forget a failing upstream and send it traffic again at once, or
//!   undo an operator's decision. A call marks its key used with one load
//!   (and a store when the mark was clear); no clock is read per call. Idle
//!   keys are found by a sweep that runs when a new key arrives (at most
//!   every quarter of the idle timeout), or when you call
//!   [`KeyedBreaker::evict_idle`] (on a timer, if you want stale keys gone
//!   from reports sooner). A key is dropped between one and about one and
//!   a quarter idle timeouts after its last call *started*, and **never
//!   while a call of it is in flight**: each key's breaker counts its calls
//!   in flight (striped per thread, so callers on different threads do not
//!   share a cache line), so a call that outlives the idle timeout (a
//!   stream, a hung upstream) still records its outcome on the breaker the
//!   registry keeps, and a failure it brings opens that breaker. A sweep
//!   and a call finding the key at the same moment never miss each other:
//!   the call counts itself before it checks whether the key is being
//!   dropped, the sweep marks the key before it reads the count (the
//!   `loom` models `a_sweep_and_a_call_finding_its_key_never_orphan_the_call`
//!   and `a_call_ending_during_a_sweep_is_seen_in_flight_or_recorded`).
//! - **A cap on keys.** At most [`max_keys`](Builder::max_keys) (default
//!   1,000) keys have a breaker of their own. Past the cap, a new key's
//!   calls go through one shared **overflow breaker**
//!   (`{name}[overflow]`, [`KeyedBreaker::overflow`]) until idle keys make
//!   room. Why this policy: refusing new keys would let anyone who can send
//!   many distinct keys (random `Host` headers, made-up tenant ids) deny
//!   service to every new, healthy upstream; evicting keys in use would
//!   throw away the state that protects them (never an open one, so a
//!   flood could not evict it either, and the cap would not hold). The
//!   overflow breaker keeps every call guarded, as one plain breaker would
//!   be, and never grows. Calls routed to it are counted
//!   ([`KeyedBreaker::overflowed`]) and shown by `/reliability`.
//!
//! A breaker costs about 3 KiB (3,192 bytes with the default trip rule on
//! a 2-core machine, `tests/breaker_memory.rs`; its striped counters grow
//! with the cores, up to 8), plus its key: the default cap holds a few MiB.
//! Size the cap for the keys you expect.
//!
//! # Cost
//!
//! A call hashes its key and finds it in a snapshot of one of 16 shards of
//! the key map, read with no lock and no shared write (`arc-swap`: the
//! snapshot is held in this thread's own slots; a new key or a sweep
//! replaces a shard's map whole, one writer at a time). It marks the key
//! used (a load, and a store only when the mark was clear), counts the
//! call in flight in this thread's stripe, and asks that key's breaker for
//! admission as the plain layer does; its response future keeps the
//! breaker alive with a credit of this thread (see the README,
//! "Performance"), not a reference count. So callers on several threads
//! calling the same key share no written cache line beyond what the
//! breaker itself writes. The first call of a key builds its breaker and
//! copies its shard's map (about 1/16 of the keys). The README's "Keyed
//! breakers" gives measured numbers.
//!
//! # Tower contract
//!
//! The key is known only in `call`, so [`KeyedCircuitBreaker`] drives the
//! inner service's readiness in `poll_ready` and decides admission in
//! `call`; a rejection is a ready future with the same answer as the plain
//! layer's (an error holding [`Rejected`](super::Rejected), or a `503`).
//! There is no backpressure mode: which breaker to wait for is not known
//! before the request.
//!
//! # Observing
//!
//! [`KeyedBreaker::snapshot`] lists every key; [`KeyedBreaker::summary`]
//! gives totals by state and the keys not closed (at most a given number),
//! which is what the admin router's `/reliability` shows under
//! `keyed_breakers` once the registry is added to the dependency set with
//! [`health::Builder::keyed`](crate::health::Builder::keyed). Metrics are
//! labelled by the registry's name, never by key (keys come from requests,
//! and a series per key would grow without bound): the breakers' failures,
//! rejections and transitions add to the series of the registry's name,
//! and `tower_recovery_keyed_breakers{keyed, state}` counts the keys in
//! each state. Transition log lines name the key's breaker.
//!
//! # A recovery per key
//!
//! With the `recovery` feature, [`Builder::recovery`] gives each key a
//! [`Recovery`](crate::recovery::Recovery) of its own: when a key's breaker
//! opens, that key's recovery runs its action (reconnect to that host,
//! refresh that tenant's credentials) with the attempts, backoff, cooldown
//! and adaptive rules of any recovery, and its success closes that key's
//! breaker. The factory returns a configured builder for the key, so the
//! action knows its key; the registry completes it: it watches the key's
//! breaker, takes its name (`{name}[{key}]`), labels its metrics with the
//! registry's name, and spawns it.
//!
//! ```
//! use std::sync::Arc;
//! use std::sync::atomic::{AtomicU32, Ordering};
//! use tower_recovery::circuit_breaker::keyed::KeyedBreaker;
//! use tower_recovery::circuit_breaker::{Breaker, State};
//! use tower_recovery::recovery::{Recovery, RecoveryState};
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() {
//! let reconnects = Arc::new(AtomicU32::new(0));
//! let counted = reconnects.clone();
//! let upstreams = KeyedBreaker::builder(Breaker::builder("upstream").consecutive_failures(1))
//!     .recovery(move |host: &String| {
//!         let (host, counted) = (host.clone(), counted.clone());
//!         Recovery::builder("upstream", move || {
//!             let (host, counted) = (host.clone(), counted.clone());
//!             async move {
//!                 // Reconnect to `host`, probe it...
//!                 assert_eq!(host, "down.internal");
//!                 counted.fetch_add(1, Ordering::SeqCst);
//!                 Ok::<_, std::io::Error>(())
//!             }
//!         })
//!         .max_attempts(5)
//!     })
//!     .build();
//!
//! let (down, up) = ("down.internal".to_string(), "up.internal".to_string());
//! upstreams.get(&up).try_acquire().unwrap().success();
//! upstreams.get(&down).try_acquire().unwrap().failure();
//! assert_eq!(upstreams.get(&down).state(), State::Open);
//!
//! // The failing key's recovery runs, and closes its breaker...
//! let recovery = upstreams.recovery(&down).unwrap();
//! assert_eq!(recovery.name(), "upstream[down.internal]");
//! recovery.wait_idle_or_cooling().await;
//! assert_eq!(upstreams.get(&down).state(), State::Closed);
//! assert_eq!(reconnects.load(Ordering::SeqCst), 1);
//! // ...and the healthy key's never ran.
//! assert_eq!(upstreams.recovery(&up).unwrap().status().state, RecoveryState::Idle);
//! # }
//! ```
//!
//! <div class="warning">
//!
//! The factory runs once per key (and once per thread racing on a new
//! key), and keys come from requests: whatever its builders carry is
//! multiplied by the number of keys. Probes their actions make, alerts
//! and webhooks they send, a health check per recovery: each key's
//! outage sends its own, so a client choosing keys (a header, a host)
//! chooses how many. Keep such side effects keyed on what you control, or
//! cap keys with [`Builder::max_keys`]. A factory that captures the
//! registry itself (a [`KeyedBreaker`] clone, to look at other keys)
//! makes a reference cycle (the registry holds the factory, which holds
//! the registry): the registry, its breakers and its recoveries' tasks
//! are never freed. Capture only what the action needs, never the
//! registry.
//!
//! </div>
//!
//! How it fits the rest:
//!
//! - **Made with the key's breaker**, on the key's first call, before the
//!   key is published, so it sees the breaker's first opening like any
//!   recovery watching from the start (a recovery made later, at the first
//!   opening, would need someone on the request path to notice that
//!   opening and would take a breaker already open as "down before I
//!   watched", not as its own outage). The factory runs and the task is
//!   spawned with no lock held; nothing of it is on the path of later
//!   calls, which find the key and its breaker as before (the `keyed`
//!   bench measures this). What it costs is memory and a parked task per
//!   key: a recovery's handle and task hold about 2.3 KiB
//!   (`tests/breaker_memory.rs`), besides the breaker's 3.
//! - **One per key.** Threads racing on a new key each build a breaker and
//!   a recovery, and one inserts; the others' recoveries are dropped
//!   (their tasks end) before their breakers were seen by anyone, so their
//!   actions never run.
//! - **Dropped with its key**, when the key is evicted for being idle (its
//!   task ends). A key whose recovery is at work (a cycle running, even
//!   one triggered by hand on a closed breaker, the cooldown after one, an
//!   exhaustion) is kept like an open one, whatever its breaker's state:
//!   a cycle the breaker started begins with the breaker open (which keeps
//!   the key), the recovery is marked busy from then on, and the mark is
//!   cleared when its cooldown is over; a sweep reads the breaker's state,
//!   then the mark. So a sweep drops only a closed breaker with an idle
//!   recovery, and with it the recovery's history (its flapping window:
//!   the next outage of that key starts a fresh recovery). With a cooldown
//!   (the default: [`cooldown`](crate::recovery::Builder::cooldown) and
//!   the adaptive mode's minimum are more than zero) the mark is still set
//!   when the recovery closes the breaker, and stays set until the
//!   cooldown is over. With a zero cooldown (`cooldown(Duration::ZERO)`,
//!   in either mode, or an adaptive minimum of zero) it is over at once,
//!   before the recovery closes the breaker: the mark is cleared first. A
//!   sweep between the two still reads the breaker open and keeps the
//!   key; one after the close may drop it, the recovery being idle (its
//!   history goes with it, as above).
//! - **Outside a tokio runtime** (a [`KeyedBreaker::get`] from a plain
//!   thread) a key's first call cannot spawn: the key gets its breaker and
//!   no recovery while it is kept (logged once, counted in
//!   [`Summary::without_recovery`]); nothing panics on the request path.
//! - **The overflow breaker** gets a recovery only from
//!   [`Builder::overflow_recovery`] (named `{name}[overflow]`, made at the
//!   first call routed to it from inside a tokio runtime): it stands for
//!   whichever keys came past the cap, so no key's action fits it. If the
//!   overflow breaker is already open when its recovery is made (opened by
//!   calls made outside a runtime), that outage is the recovery's own: it
//!   starts a cycle at once.
//! - **Metrics** of the keys' recoveries add to the series of the
//!   registry's name (`dependency` label), like their breakers' (one
//!   series per registry, never per key); their log lines name the key.
//! - **Seen** in [`KeyedBreaker::summary`] (keys recovering, exhausted,
//!   without a recovery; each listed key's recovery status) and in
//!   `/reliability`; [`KeyedBreaker::recovery`] gives a key's handle (to
//!   trigger or reset it by hand).

mod key;
mod layer;
#[cfg(feature = "metrics")]
mod member;
#[cfg(feature = "recovery")]
mod recovery;
mod registry;
mod service;

use std::fmt;
use std::hash::Hash;
use std::sync::Arc;

pub use self::key::{ByAuthority, ByHeader, ExtractKey};
pub use self::layer::KeyedCircuitBreakerLayer;
pub use self::registry::{Builder, KeyedBreaker};
pub use self::service::KeyedCircuitBreaker;

#[cfg(feature = "metrics")]
pub(crate) use self::member::Member;

use super::Snapshot;

/// What a key must be: hashed and compared to find its breaker, cloned into
/// the registry, and shown in its breaker's name (`{name}[{key}]`, cut to
/// 96 bytes). `Hash`, `Eq` and `Clone` run under a shard's lock: they must
/// not use the registry.
pub trait Key: Hash + Eq + Clone + fmt::Display + Send + Sync + 'static {}

impl<K: Hash + Eq + Clone + fmt::Display + Send + Sync + 'static> Key for K {}

/// A registry seen without its key type (the dependency set keeps them).
#[cfg_attr(not(feature = "health"), allow(dead_code))]
pub(crate) trait View: fmt::Debug + Send + Sync {
    fn summary(&self, max_listed: usize) -> Summary;
}

impl<K: Key> View for KeyedBreaker<K> {
    fn summary(&self, max_listed: usize) -> Summary {
        KeyedBreaker::summary(self, max_listed)
    }
}

/// A keyed registry at a glance: [`KeyedBreaker::summary`].
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct Summary {
    /// The registry's name.
    pub name: Arc<str>,
    /// Keys with a breaker of their own.
    pub keys: usize,
    /// The cap on keys.
    pub max_keys: usize,
    /// Keys whose breaker is closed.
    pub closed: usize,
    /// Keys whose breaker is open.
    pub open: usize,
    /// Keys whose breaker is half-open.
    pub half_open: usize,
    /// Keys whose breaker is forced open.
    pub forced_open: usize,
    /// Keys whose breaker is disabled.
    pub disabled: usize,
    /// The breakers not closed, by name, at most the number asked for.
    pub not_closed: Vec<Snapshot>,
    /// Breakers not closed beyond those listed.
    pub not_closed_unlisted: usize,
    /// The overflow breaker.
    pub overflow: Snapshot,
    /// Calls routed to the overflow breaker.
    pub overflowed: u64,
    /// Keys dropped for being idle.
    pub evicted: u64,
    /// Keys whose recovery is running a cycle.
    #[cfg(feature = "recovery")]
    #[cfg_attr(docsrs, doc(cfg(feature = "recovery")))]
    pub recovering: usize,
    /// Keys whose recovery is exhausted (every attempt of its last cycle
    /// failed).
    #[cfg(feature = "recovery")]
    #[cfg_attr(docsrs, doc(cfg(feature = "recovery")))]
    pub exhausted: usize,
    /// Keys without a recovery in a registry that gives keys one: their
    /// first call was made outside a tokio runtime, or the factory (or the
    /// spawn) panicked. Logged when it happens.
    #[cfg(feature = "recovery")]
    #[cfg_attr(docsrs, doc(cfg(feature = "recovery")))]
    pub without_recovery: usize,
    /// The recovery of each breaker in `not_closed`, in the same order
    /// (`None` for a key without one).
    #[cfg(feature = "recovery")]
    #[cfg_attr(docsrs, doc(cfg(feature = "recovery")))]
    pub not_closed_recovery: Vec<Option<crate::recovery::Status>>,
    /// The overflow breaker's recovery, once made.
    #[cfg(feature = "recovery")]
    #[cfg_attr(docsrs, doc(cfg(feature = "recovery")))]
    pub overflow_recovery: Option<crate::recovery::Status>,
}
