//! Tower middleware that keeps a service up when its dependencies fail.
//!
//! `tower-recovery` gives a Rust service what Resilience4j and Polly give
//! Java and .NET services, as composable [Tower] layers:
//!
//! - [`circuit_breaker`]: stop calling a failing dependency, probe it, and
//!   close again when it works; shared handles, lock-free closed path.
//! - [`recovery`]: run the action that brings a failed dependency back,
//!   triggered by its breaker opening, a failing health check, consecutive
//!   client failures or by hand; backoff, cooldown, exhaustion, MTTR.
//! - [`drain`]: graceful shutdown at the request level: readiness fails,
//!   new requests get 503, in-flight ones (bodies included) finish within a
//!   grace period, then the monitor stops and clients close.
//! - [`health`]: health checks, the dependency set, the startup gate, and a
//!   monitor with history, uptime and availability.
//! - [`admin`]: the axum router with `/health`, `/livez`, `/readyz`,
//!   `/reliability` and the admin POSTs, secure by default.
//! - [`config`]: the settings from environment variables, validated.
//! - [`classify`]: what counts as a failure (errors, `5xx`, `429`, your own).
//! - `retry` (feature): a retry policy that never retries a refusal.
//! - [`chaos`]: fault injection for rehearsals (error rate, latency,
//!   response override), switched at runtime, also over the admin routes.
//! - [`clock`]: the time sources, including virtual time for tests.
//!
//! # Shape
//!
//! Three kinds of things. *Handles* own shared state and are cheap to clone
//! ([`Breaker`](circuit_breaker::Breaker)). *Layers* are thin adapters made
//! from a handle ([`Breaker::layer`](circuit_breaker::Breaker::layer)); applying
//! one many times shares the handle's state. A request never passes through a
//! registry.
//!
//! ```
//! use tower::{ServiceBuilder, ServiceExt, service_fn};
//! use tower_recovery::circuit_breaker::Breaker;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), tower_recovery::BoxError> {
//! let breaker = Breaker::new("model_server");
//! let client = ServiceBuilder::new()
//!     .layer(breaker.layer())
//!     .service(service_fn(|prompt: String| async move {
//!         Ok::<_, std::io::Error>(format!("draft for {prompt}"))
//!     }));
//! let draft = client.oneshot("theft".to_string()).await?;
//! assert_eq!(draft, "draft for theft");
//! # Ok(()) }
//! ```
//!
//! # Rules that keep the parts correct together
//!
//! - **No code of yours, and no other component, runs under a lock of
//!   this crate.** Locks guard a few words and are released before a
//!   callback, a log line, a wake-up or a call into another handle.
//! - **Events flow one way.** A breaker publishes its transitions (a
//!   bounded stream for observers, lossless counts for a recovery); the
//!   recovery reacts on its own task. Nothing calls back into the component
//!   that published.
//! - **Reading never acts.** `state`, `snapshot`, `status`, reports and
//!   `Debug` change nothing: a timed transition that is due is reported,
//!   and made by the next admission (or, for the recovery, on its task).
//! - **Checked, not hoped.** The lock-free parts are model-checked with
//!   `loom`; the recovery's rules are a pure state machine tested over every
//!   event sequence to a depth; a seeded simulation drives the parts
//!   together on paused time.
//!
//! # Feature flags
//!
//! | feature | default | what it adds |
//! |---|---|---|
//! | `circuit-breaker` | yes | [`circuit_breaker`] |
//! | `recovery` | yes | [`recovery`] (needs `circuit-breaker`) |
//! | `health` | yes | [`health`] |
//! | `drain` | yes | [`drain`] |
//! | `admin` | yes | [`admin`]: the axum router (needs the others) |
//! | `metrics` | yes | counters and gauges through the `metrics` facade: see [`metrics`] |
//! | `webhook` | yes | `recovery::WebhookAlert`: alerts as JSON POSTs |
//! | `retry` | no | [`retry::RetryPolicy`]: retries that respect the breaker and the drain |
//! | `chaos` | yes | [`chaos`]: the chaos layer; with `admin`, its routes |
//! | `tower-http` | no | [`classify::TowerHttpClassifier`] for `tower_http::classify` |
//! | `fleet` | no | `fleet`: replicas recover as one (the `Coordinator` trait) |
//! | `redis` | no | `fleet::RedisCoordinator`: the fleet coordinated through Redis |
//! | `full` | no | everything |
//!
//! The defaults are the service kit (the demo runs with one command); with
//! `default-features = false` and, say, `features = ["circuit-breaker"]`, a
//! tower-only user compiles no axum, hyper, serde_json or metrics.
//!
//! [Tower]: https://docs.rs/tower

#![cfg_attr(docsrs, feature(doc_cfg))]
// `unsafe` is allowed in two places only: the `lease` module (measured: it
// takes the reference count off every call) and `Breaker::from_arc_ref`, a
// `repr(transparent)` cast.
#![deny(unsafe_code)]

#[cfg(feature = "admin")]
pub mod admin;
#[cfg(feature = "chaos")]
pub mod chaos;
#[cfg(feature = "circuit-breaker")]
pub mod circuit_breaker;
pub mod classify;
pub mod clock;
pub mod config;
#[cfg(feature = "drain")]
pub mod drain;
#[cfg(feature = "fleet")]
#[cfg_attr(docsrs, doc(cfg(feature = "fleet")))]
pub mod fleet;
#[cfg(feature = "health")]
pub mod health;
#[cfg(any(feature = "circuit-breaker", feature = "recovery", feature = "drain"))]
mod lease;
#[cfg(feature = "metrics")]
pub mod metrics;
#[cfg(feature = "recovery")]
pub mod recovery;
#[cfg(feature = "retry")]
pub mod retry;
#[cfg(any(
    feature = "circuit-breaker",
    feature = "drain",
    feature = "recovery",
    feature = "health"
))]
#[allow(dead_code)]
mod sync;
#[cfg(any(
    feature = "circuit-breaker",
    feature = "drain",
    feature = "recovery",
    feature = "health"
))]
mod util;

#[doc = include_str!("../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;

/// The boxed error type of services that add a failure mode.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
