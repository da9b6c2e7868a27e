//! Circuit breaking: stop calling a dependency that is failing, and probe it
//! until it works again.
//!
//! # Why
//!
//! A dependency that is down makes every caller wait for a timeout, holds
//! connections and threads, and is hammered while it tries to come back. A
//! breaker notices the failures, rejects calls at once for a while (the
//! circuit is *open*), then lets a few probes through (*half-open*) and goes
//! back to normal (*closed*) when they succeed.
//!
//! # Shape
//!
//! A [`Breaker`] is a handle: cheap to clone, all clones share one state.
//! [`Breaker::layer`] makes a [`CircuitBreakerLayer`] from it; applying that
//! layer any number of times (axum does it per route, many stacks per
//! connection) always governs the same breaker. For clients that are not
//! Tower services (sqlx pools, redis connections) [`Breaker::call`] wraps any
//! future.
//!
//! ```
//! use std::time::Duration;
//! use tower::{Service, ServiceBuilder, ServiceExt, service_fn};
//! use tower_recovery::circuit_breaker::{Breaker, Rejected, State};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let breaker = Breaker::builder("model_server")
//!     .consecutive_failures(2)
//!     .open_duration(Duration::from_secs(30))
//!     .build();
//!
//! let mut svc = ServiceBuilder::new()
//!     .layer(breaker.layer())
//!     .service(service_fn(|fail: bool| async move {
//!         if fail { Err("upstream refused") } else { Ok("ok") }
//!     }));
//!
//! assert_eq!(svc.ready().await.unwrap().call(false).await.unwrap(), "ok");
//! for _ in 0..2 {
//!     assert!(svc.ready().await.unwrap().call(true).await.is_err());
//! }
//! assert_eq!(breaker.state(), State::Open);
//!
//! // Open: rejected without calling the inner service.
//! let err = svc.ready().await.unwrap().call(false).await.unwrap_err();
//! assert!(err.is::<Rejected>());
//! # }
//! ```
//!
//! # Trip policies
//!
//! - Consecutive failures (the default, 5).
//! - A failure rate over a sliding window once a minimum number of calls is
//!   recorded: the last N calls ([`Builder::count_window`]) or the last T of
//!   time in fixed, aligned buckets ([`Builder::time_window`]). Both are O(1)
//!   per call whatever the volume.
//! - A slow-call rate over the same window ([`Builder::slow_calls`]).
//!
//! What counts as a failure is decided by a [`Classify`]
//! implementation, separately from the policy.
//!
//! # Semantics
//!
//! | question | answer |
//! |---|---|
//! | rate equal to the threshold | trips (`>=`) |
//! | when is the rate evaluated | after each recorded outcome, once the minimum is reached |
//! | time buckets | aligned to multiples of the bucket width; a bucket expires when its end is a full window old |
//! | outcome of a call admitted in an earlier state | dropped (each admission carries the generation; see below for the one race it loses in a window) |
//! | open wait elapsed exactly | the next call is admitted as a probe |
//! | `state()` after the open wait elapsed, no call yet | `HalfOpen` |
//! | `ForcedOpen` / `Disabled` | only [`Breaker::reset`] leaves them |
//! | `reset` | Closed, window cleared, open-duration growth back to base, new generation |
//!
//! Stale outcomes are dropped exactly by the consecutive count, the probe
//! permits and the transitions, which all carry the generation. A window
//! checks the generation before it records, so an outcome that finishes in
//! the nanoseconds between that check and a concurrent close or reset can
//! land in the new window: at most one outcome per racing thread, never a
//! transition (the trip itself re-checks the generation under the lock).
//!
//! In half-open at most `permits` probes are in flight. A permit is taken at
//! admission and given back only when the call is dropped unfinished or its
//! outcome is [`Ignore`](crate::classify::Outcome::Ignore); `permits`
//! successes close the circuit, any probe failure opens it again.
//!
//! # Tower contract
//!
//! `poll_ready` decides admission and latches it for the next `call`, like
//! tower's `LoadShed`. It never returns an error because the circuit is open:
//! such an error is final in Tower and would kill a `Buffer`. A rejected call
//! gets a zero-sized [`Rejected`] error (in a `BoxError`, allocating nothing) or, with
//! [`CircuitBreakerLayer::reject_with_response`], a `503` with `Retry-After`.
//! [`CircuitBreakerLayer::backpressure`] makes `poll_ready` wait instead.
//!
//! # Ordering with other layers
//!
//! Put retries outside the breaker, so that a rejection is not retried
//! against an open circuit at full speed, and timeouts inside it, so that a
//! hung call counts as a failure.
//!
//! # Observing transitions
//!
//! [`Breaker::subscribe`] gives an ordered stream of [`Transition`]s, each
//! with the counts that caused it, to read on a task of your own. The stream
//! is bounded (64 transitions): a subscriber that falls further behind is
//! told how many it missed ([`RecvError::Lagged`]) and goes on from the
//! oldest one kept. Transitions are also logged with `tracing`
//! (`Circuit breaker 'name': Transitioning to OPEN`).
//!
//! # Changing a running breaker
//!
//! [`Breaker::tune`] changes thresholds, open duration, probes and
//! metrics-only mode without a restart, checked whole ([`Tuning`] says when
//! each applies); [`Breaker::config`] shows what the breaker runs with, and
//! [`Breaker::recent_events`] the last transitions and changes (the admin
//! router serves all three).
//!
//! # Upstream-aware opening
//!
//! - An upstream's `Retry-After` on a failure ([`Classify::retry_after`])
//!   sets the next open duration, capped ([`Builder::retry_after_cap`]).
//! - [`Builder::half_open_ramp`] admits a rising share of calls after the
//!   open wait instead of a fixed number of probes.
//! - [`Builder::metrics_only`] records and reports, never rejects.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() {
//! use std::time::Duration;
//! use tower_recovery::circuit_breaker::{Breaker, State};
//!
//! let breaker = Breaker::builder("model-server")
//!     .consecutive_failures(1)
//!     .half_open_ramp(0.25, Duration::from_secs(10))
//!     .build();
//! // The upstream answered 503 with `Retry-After: 5`.
//! breaker.try_acquire().unwrap().failure_with_retry_after(Duration::from_secs(5));
//! assert_eq!(breaker.snapshot().next_probe_in, Some(Duration::from_secs(5)));
//!
//! tokio::time::advance(Duration::from_secs(5)).await;
//! // A quarter of the calls at first: every fourth.
//! let admitted = (0..8).filter_map(|_| breaker.try_acquire().ok()).count();
//! assert_eq!(admitted, 2);
//! assert_eq!(breaker.state(), State::HalfOpen);
//! # }
//! ```
//!
//! # Events flow one way
//!
//! No code of yours, and no other component, runs inside the breaker: a
//! transition publishes its event and wakes whoever waits (subscribers, a
//! [`Recovery`](crate::recovery::Recovery) watching the breaker, callers in
//! backpressure mode), and they react on their own tasks. A recovery does
//! not read the bounded stream: it watches counts of openings and heals that
//! never lose an event. Reading ([`Breaker::state`], [`Breaker::snapshot`],
//! `Debug`) never changes the breaker: when the open wait has elapsed,
//! `state()` reports `HalfOpen`, and the transition itself is made by the
//! next call that asks for admission.
//!
//! # One breaker per key
//!
//! For a client of many upstreams, tenants or routes, [`keyed`] keeps a
//! breaker per key, made on first use, with bounded memory.
//!
//! # Cost
//!
//! The closed path takes no lock, allocates nothing and boxes no future. In
//! the default mode a success is two atomic loads. Windows add two or three
//! atomic adds. See the crate README for measured numbers.

mod breaker;
mod builder;
pub(crate) mod core;
mod eos;
pub mod error;
mod events;
pub mod future;
pub mod keyed;
mod layer;
mod permit;
pub mod reject;
mod service;
mod state;
mod tuning;
mod window;

pub use self::breaker::{Breaker, WeakBreaker};
pub use self::builder::Builder;
pub use self::eos::{CircuitBreakerEos, CircuitBreakerEosLayer};
pub use self::error::{CallError, Rejected, Rejection};
pub use self::events::{RecvError, Transitions, TryRecvError};
pub use self::layer::CircuitBreakerLayer;
pub use self::permit::Permit;
pub use self::reject::{
    DefaultRejectResponse, OnReject, RejectResponse, RejectWithError, RejectWithResponse,
};
pub use self::service::CircuitBreaker;
pub use self::state::{Cause, Counts, Snapshot, State, Transition};
pub use self::tuning::{
    BreakerConfig, RecentEvent, RecentKind, TripPolicy, TuneError, Tuning, WindowConfig,
};

#[cfg(doc)]
use crate::classify::Classify;

#[cfg(all(test, tower_recovery_loom))]
mod loom;
#[cfg(all(test, not(tower_recovery_loom)))]
mod tests;
