//! Graceful shutdown at the request level: finish what was accepted, refuse
//! what comes after, and say what happened.
//!
//! # Why
//!
//! A restart must not lose an accepted request. A server's own graceful
//! shutdown stops accepting connections and waits for them, but it cannot
//! tell an orchestrator to stop routing traffic first, cannot bound the wait,
//! and does not know when a streamed response body is really done. A
//! [`Drain`] counts every request from `call` until its response body ends
//! (or is dropped), with atomics, and runs the shutdown sequence:
//!
//! 1. readiness fails at once ([`Drain::is_draining`]: `/readyz` says 503);
//! 2. an optional pre-drain delay: requests are still served, so load
//!    balancers notice the readiness change;
//! 3. new requests get `503` with `Connection: close` and `Retry-After` (a
//!    typed [`Draining`] error for non-HTTP services), in-flight ones run on,
//!    and [`Drain::accepting_stopped`] resolves: hand it to
//!    `axum::serve(..).with_graceful_shutdown(..)` so the listener closes;
//! 4. the drain completes when the last in-flight request finishes or at the
//!    grace period (default 30 s, counted from the signal), whichever is
//!    first; a second signal ends the wait at once;
//! 5. the hooks run in order (stop the health monitor), then outbound clients
//!    wrapped with [`Drain::client_layer`] refuse new calls: only now, so
//!    requests still being served could use their dependencies;
//! 6. a [`DrainReport`]: finished, cut off, elapsed.
//!
//! ```
//! use std::time::Duration;
//! use axum::{Router, routing::get};
//! use tower_recovery::drain::Drain;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let drain = Drain::builder().grace_period(Duration::from_secs(30)).build();
//! let app = Router::new()
//!     .route("/fir", get(|| async { "draft" }))
//!     .layer(drain.layer());            // admin routes go outside this layer
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
//! let server = axum::serve(listener, app).with_graceful_shutdown(drain.accepting_stopped());
//! let server = tokio::spawn(async move { server.await });
//!
//! drain.begin(); // what SIGTERM does with `listen_for_signals`
//! let report = drain.completed().await;
//! assert_eq!(report.cut_off, 0);
//! // axum's own shutdown has no deadline: bound it by ours, then exit.
//! let _ = tokio::time::timeout(Duration::from_secs(1), server).await;
//! # }
//! ```
//!
//! # Bounding axum's shutdown
//!
//! `with_graceful_shutdown` waits for every connection without a deadline.
//! Race it against [`Drain::completed`] plus a short margin
//! (`tokio::select!` or `tokio::time::timeout`, as above) and return from
//! `main` after it: in-flight requests have finished by then, or the grace
//! period is over.

mod layer;

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

pub use self::layer::{
    DrainBody, DrainClient, DrainClientLayer, DrainLayer, DrainRpc, DrainRpcLayer, DrainService,
    ResponseFuture, RpcResponseFuture,
};

const SERVING: u8 = 0;
const PRE_DRAIN: u8 = 1;
const REJECTING: u8 = 2;
const DRAINED: u8 = 3;
const CLOSED: u8 = 4;

/// A new request arrived while draining.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Draining {
    _p: (),
}

impl fmt::Display for Draining {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("service is shutting down; request refused")
    }
}

impl std::error::Error for Draining {}

/// An outbound client was used after the drain closed it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ClientClosed {
    _p: (),
}

impl fmt::Display for ClientClosed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("client closed by the shutdown drain")
    }
}

impl std::error::Error for ClientClosed {}

/// What a drain did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DrainReport {
    /// Requests that finished after the drain began.
    pub finished: u64,
    /// Requests still in flight when the wait ended (grace period over, or a
    /// second signal).
    pub cut_off: u64,
    /// From the signal to the end of the hooks.
    pub elapsed: Duration,
    /// Whether a second signal cut the wait short.
    pub forced: bool,
}

type Hook = Box<dyn FnOnce() -> Pin<Box<dyn Future<Output = ()> + Send>> + Send>;

struct Shared {
    #[cfg(feature = "metrics")]
    in_flight_gauge: metrics::Gauge,
    in_flight: crate::util::Padded<AtomicUsize>,
    phase: AtomicU8,
    finished: AtomicU64,
    forced: AtomicBool,
    begun: AtomicBool,
    changed: Notify,
    grace: Duration,
    pre_drain: Duration,
    retry_after: u64,
    hooks: Mutex<Vec<Hook>>,
    report: Mutex<Option<DrainReport>>,
}

impl Shared {
    /// Enters a request: counted first, then the phase is checked, so a
    /// request and the drain's "zero in flight?" can never miss each other.
    #[inline]
    fn enter(self: &Arc<Self>) -> Option<Guard> {
        self.in_flight.0.fetch_add(1, Ordering::SeqCst);
        #[cfg(feature = "metrics")]
        self.in_flight_gauge.increment(1.0);
        if self.phase.load(Ordering::SeqCst) >= REJECTING {
            self.leave(false);
            return None;
        }
        Some(Guard {
            shared: self.clone(),
        })
    }

    #[inline]
    fn leave(&self, finished: bool) {
        let before = self.in_flight.0.fetch_sub(1, Ordering::SeqCst);
        #[cfg(feature = "metrics")]
        self.in_flight_gauge.decrement(1.0);
        if self.phase.load(Ordering::Acquire) != SERVING {
            if finished {
                self.finished.fetch_add(1, Ordering::Relaxed);
            }
            if before == 1 {
                self.changed.notify_waiters();
            }
        }
    }

    fn set_phase(&self, phase: u8) {
        self.phase.store(phase, Ordering::SeqCst);
        self.changed.notify_waiters();
    }
}

/// Holds one in-flight request; released on drop.
pub(crate) struct Guard {
    shared: Arc<Shared>,
}

impl Drop for Guard {
    fn drop(&mut self) {
        self.shared.leave(true);
    }
}

/// A drain handle. Clones share one state.
#[derive(Clone)]
pub struct Drain {
    shared: Arc<Shared>,
}

impl fmt::Debug for Drain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Drain")
            .field("in_flight", &self.in_flight())
            .field("draining", &self.is_draining())
            .finish()
    }
}

impl Default for Drain {
    fn default() -> Self {
        Self::builder().build()
    }
}

impl Drain {
    /// Configures a drain.
    pub fn builder() -> Builder {
        Builder {
            grace: Duration::from_secs(30),
            pre_drain: Duration::ZERO,
            retry_after: Duration::from_secs(5),
        }
    }

    /// The layer for HTTP services: counts each request until its response
    /// body ends, answers `503` while draining. Keep admin routes outside it.
    pub fn layer(&self) -> DrainLayer {
        DrainLayer::new(self.clone())
    }

    /// The layer for non-HTTP services: counts each call until its future
    /// completes, fails with [`Draining`] while draining.
    pub fn rpc_layer(&self) -> DrainRpcLayer {
        DrainRpcLayer::new(self.clone())
    }

    /// The layer for outbound clients: refuses calls with [`ClientClosed`]
    /// once the drain is over (never while requests are still served).
    pub fn client_layer(&self) -> DrainClientLayer {
        DrainClientLayer::new(self.clone())
    }

    /// Requests in flight now.
    pub fn in_flight(&self) -> usize {
        self.shared.in_flight.0.load(Ordering::Acquire)
    }

    /// Whether the drain has begun (readiness must fail).
    pub fn is_draining(&self) -> bool {
        self.shared.phase.load(Ordering::Acquire) != SERVING
    }

    /// Whether new requests are refused.
    pub fn is_rejecting(&self) -> bool {
        self.shared.phase.load(Ordering::Acquire) >= REJECTING
    }

    /// Whether outbound clients are closed (the drain is over).
    pub fn is_closed(&self) -> bool {
        self.shared.phase.load(Ordering::Acquire) >= CLOSED
    }

    /// The grace period.
    pub fn grace_period(&self) -> Duration {
        self.shared.grace
    }

    /// Runs `hook` after the in-flight wait and before clients close, in the
    /// order hooks were added (stop the health monitor here).
    pub fn on_drained<F, Fut>(&self, hook: F)
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        self.shared
            .hooks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(Box::new(move || Box::pin(hook())));
    }

    /// Stops `monitor` when the drain is over, before clients close.
    #[cfg(feature = "health")]
    pub fn stop_monitor(&self, monitor: crate::health::Monitor) {
        self.on_drained(move || monitor.stop());
    }

    /// Begins the drain (the first signal). A second call ends the in-flight
    /// wait at once (the second signal). Needs a tokio runtime.
    pub fn begin(&self) {
        if self.shared.begun.swap(true, Ordering::AcqRel) {
            tracing::warn!("Second shutdown signal: ending the drain now");
            self.shared.forced.store(true, Ordering::Release);
            self.shared.changed.notify_waiters();
            return;
        }
        // Readiness fails at once, and requests finishing from now on count
        // as finished during the drain, before the sequence task runs.
        let start = Instant::now();
        self.shared.set_phase(PRE_DRAIN);
        tokio::spawn(sequence(self.shared.clone(), start));
    }

    /// Listens for SIGTERM and ctrl-c: the first begins the drain, the
    /// second ends its wait. Needs a tokio runtime.
    pub fn listen_for_signals(&self) {
        let drain = self.clone();
        tokio::spawn(async move {
            loop {
                shutdown_signal().await;
                drain.begin();
            }
        });
    }

    /// Resolves when new requests start being refused: hand it to
    /// `with_graceful_shutdown` so the listener closes then.
    pub fn accepting_stopped(&self) -> impl Future<Output = ()> + Send + 'static {
        let shared = self.shared.clone();
        async move { wait_phase(&shared, REJECTING).await }
    }

    /// Resolves with the report when the drain is over (hooks run, clients
    /// closed).
    pub fn completed(&self) -> impl Future<Output = DrainReport> + Send + 'static {
        let shared = self.shared.clone();
        async move {
            wait_phase(&shared, CLOSED).await;
            shared
                .report
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .expect("report written before the phase")
        }
    }
}

async fn wait_phase(shared: &Shared, phase: u8) {
    loop {
        let notified = shared.changed.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        if shared.phase.load(Ordering::Acquire) >= phase {
            return;
        }
        notified.await;
    }
}

/// Resolves on SIGTERM or ctrl-c.
pub async fn shutdown_signal() {
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(term) => term,
                Err(e) => {
                    tracing::error!("cannot listen for SIGTERM: {e}");
                    let _ = tokio::signal::ctrl_c().await;
                    return;
                }
            };
        tokio::select! {
            _ = term.recv() => tracing::info!("Received SIGTERM"),
            _ = tokio::signal::ctrl_c() => tracing::info!("Received ctrl-c"),
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
        tracing::info!("Received ctrl-c");
    }
}

async fn sequence(shared: Arc<Shared>, start: Instant) {
    let deadline = start + shared.grace;
    tracing::info!(
        in_flight = shared.in_flight.0.load(Ordering::Acquire),
        grace_s = shared.grace.as_secs_f64(),
        "Graceful shutdown initiated"
    );
    if !shared.pre_drain.is_zero() {
        wait_until(&shared, (start + shared.pre_drain).min(deadline), || false).await;
    }
    shared.set_phase(REJECTING);
    tracing::info!(
        in_flight = shared.in_flight.0.load(Ordering::SeqCst),
        "New requests are rejected with 503; waiting for in-flight requests"
    );
    wait_until(&shared, deadline, || {
        shared.in_flight.0.load(Ordering::SeqCst) == 0
    })
    .await;
    let cut_off = shared.in_flight.0.load(Ordering::SeqCst) as u64;
    if cut_off > 0 {
        tracing::warn!(cut_off, "Grace period over with requests still in flight");
    }
    shared.set_phase(DRAINED);
    let hooks = std::mem::take(&mut *shared.hooks.lock().unwrap_or_else(|e| e.into_inner()));
    for hook in hooks {
        hook().await;
    }
    let report = DrainReport {
        finished: shared.finished.load(Ordering::Relaxed),
        cut_off,
        elapsed: start.elapsed(),
        forced: shared.forced.load(Ordering::Acquire),
    };
    *shared.report.lock().unwrap_or_else(|e| e.into_inner()) = Some(report);
    #[cfg(feature = "metrics")]
    metrics::counter!(crate::metrics::DRAIN_COMPLETED).increment(1);
    shared.set_phase(CLOSED);
    tracing::info!(
        finished = report.finished,
        cut_off = report.cut_off,
        elapsed_ms = report.elapsed.as_millis() as u64,
        "Graceful shutdown complete; outbound clients closed"
    );
}

/// Waits until `done()`, the deadline, or a forced end.
async fn wait_until(shared: &Shared, deadline: Instant, done: impl Fn() -> bool) {
    loop {
        let notified = shared.changed.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        if done() || shared.forced.load(Ordering::Acquire) || Instant::now() >= deadline {
            return;
        }
        tokio::select! {
            () = notified => {}
            () = tokio::time::sleep_until(deadline) => return,
        }
    }
}

/// Configures a [`Drain`].
#[derive(Clone, Debug)]
pub struct Builder {
    grace: Duration,
    pre_drain: Duration,
    retry_after: Duration,
}

impl Builder {
    /// Longest wait for in-flight requests, from the signal
    /// (`SHUTDOWN_GRACE_PERIOD`, default 30 s).
    pub fn grace_period(mut self, grace: Duration) -> Self {
        self.grace = grace;
        self
    }

    /// Time to keep serving after readiness fails (`PRE_DRAIN_DELAY`,
    /// default 0).
    pub fn pre_drain_delay(mut self, delay: Duration) -> Self {
        self.pre_drain = delay;
        self
    }

    /// `Retry-After` of the 503 answers while draining (default 5 s).
    pub fn retry_after(mut self, after: Duration) -> Self {
        self.retry_after = after;
        self
    }

    /// Builds the drain.
    pub fn build(self) -> Drain {
        Drain {
            shared: Arc::new(Shared {
                #[cfg(feature = "metrics")]
                in_flight_gauge: metrics::gauge!(crate::metrics::DRAIN_IN_FLIGHT),
                in_flight: crate::util::Padded(AtomicUsize::new(0)),
                phase: AtomicU8::new(SERVING),
                finished: AtomicU64::new(0),
                forced: AtomicBool::new(false),
                begun: AtomicBool::new(false),
                changed: Notify::new(),
                grace: self.grace,
                pre_drain: self.pre_drain,
                retry_after: self.retry_after.as_secs().max(1),
                hooks: Mutex::new(Vec::new()),
                report: Mutex::new(None),
            }),
        }
    }
}
