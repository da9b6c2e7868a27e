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
//! 1. readiness fails at once ([`Drain::is_draining`]: `/readyz` says 503;
//!    [`Drain::draining`] resolves);
//! 2. an optional pre-drain delay: requests are still served, so load
//!    balancers notice the readiness change;
//! 3. new requests get `503` with `Connection: close` and `Retry-After` (a
//!    typed [`Draining`] error for non-HTTP services), in-flight ones run on,
//!    and [`Drain::accepting_stopped`] resolves;
//! 4. the drain waits until the last in-flight request finishes or the
//!    grace period (default 30 s, counted from the signal) is over, whichever
//!    is first; a second signal ends the wait at once;
//! 5. the hooks run in order (stop the health monitor), each under the hook
//!    timeout, then outbound clients wrapped with [`Drain::client_layer`]
//!    close: they refuse new calls once no request is in flight any more,
//!    so requests still being served (even past the grace period) can use
//!    their dependencies until they finish;
//! 6. a [`DrainReport`]: finished, refused, cut off, still running, hooks
//!    that failed, elapsed; [`Drain::completed`] resolves with it.
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
//!     .layer(drain.layer())
//!     // Admin routes outside the drain layer: they answer during the drain.
//!     .route("/livez", get(|| async { "ok" }));
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
//! // One listener for both: it stays open until the drain completes, so
//! // `/livez` answers throughout while `/fir` answers 503.
//! let done = drain.completed();
//! let server = axum::serve(listener, app).with_graceful_shutdown(async move {
//!     done.await;
//! });
//! let server = tokio::spawn(async move { server.await });
//!
//! drain.begin(); // what SIGTERM does with `listen_for_signals`
//! let report = drain.completed().await;
//! assert_eq!((report.finished, report.cut_off, report.still_running), (0, 0, 0));
//! // axum's own shutdown has no deadline: bound it by ours, then exit.
//! let _ = tokio::time::timeout(Duration::from_secs(1), server).await;
//! # }
//! ```
//!
//! # Which listener closes when
//!
//! Liveness must answer until the process exits: a liveness probe failing
//! during a 30 s drain gets the process killed mid-drain. So either
//!
//! - the application and the admin routes share one listener, which stays
//!   open until the drain completes: hand `drain.completed()` to
//!   `with_graceful_shutdown` (as above); the application's routes answer
//!   `503` from step 3 on, the admin routes answer normally; or
//! - the admin routes have a listener of their own (as Envoy's admin port),
//!   and the application's listener may close at step 3: hand it
//!   [`Drain::accepting_stopped`].
//!
//! # Bounding axum's shutdown
//!
//! `with_graceful_shutdown` waits for every connection without a deadline.
//! Race it against [`Drain::completed`] plus a short margin
//! (`tokio::select!` or `tokio::time::timeout`, as above) and return from
//! `main` after it: in-flight requests have finished by then, or the grace
//! period is over. Requests still running then are dropped when the process
//! exits; [`Drain::report`] just before exiting says how many.
//!
//! # Hooks
//!
//! [`Drain::on_drained`] hooks run one at a time, in the order they were
//! added, after the in-flight wait and before outbound clients close. Each
//! runs as its own task under the hook timeout (default 5 s,
//! [`Builder::hook_timeout`]): a hook that overruns is abandoned (its task is
//! aborted) and one that panics is caught; both are logged and reported in
//! [`DrainReport::hook_failures`], and the sequence goes on with the next
//! hook. A hook added while the hooks run (by a hook, say) runs after the
//! others. Once the last hook has run, [`Drain::on_drained`] refuses new
//! hooks with [`AlreadyDrained`], which hands the hook back: the caller
//! decides whether to run it now. It is not run at once by the drain because
//! it was promised to run before the clients close, and they are closed (or
//! close as soon as the requests still running finish).
//!
//! # The report
//!
//! Every count in a [`DrainReport`] is a statement about what had happened
//! when the report was produced, counted when it happened:
//!
//! - `finished`: requests whose response was complete (body read to its end;
//!   the head, for a response with no body on the wire: to `HEAD`, a `2xx`
//!   to `CONNECT`, `1xx`, `204`, `304`; future resolved, `Ok` or `Err`, for
//!   non-HTTP services) after the signal;
//! - `refused`: new requests answered `503` (or [`Draining`]);
//! - `cut_off`: requests whose response was never completed: the response
//!   future or body was dropped before its end (the server gave up on it,
//!   the client went away, or the process is exiting), or the HTTP service
//!   returned `Err` (no response was sent);
//! - `still_running`: requests in flight when the report was produced;
//!   neither finished nor cut off, yet;
//! - `running_at_deadline`: requests still in flight when the wait ended
//!   at the grace period or at a second signal (0 when the last request
//!   finished in time). They are not cut off by the deadline: if they finish
//!   later, they count as finished.
//!
//! Requests in flight at the signal, plus those admitted after it (during
//! the pre-drain delay), are `finished + cut_off + still_running`. The
//! report of [`Drain::completed`] is taken when the hooks have run;
//! [`Drain::report`] takes a new one at any time, for the last word before
//! the process exits.

mod layer;
#[cfg(all(test, tower_recovery_loom))]
mod loom;

use std::collections::VecDeque;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use crate::lease::Lease;
use crate::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, AtomicUsize, Ordering, fence};
use crate::sync::{Mutex, lock};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

pub use self::layer::{
    DrainBody, DrainClient, DrainClientLayer, DrainHttp, DrainHttpLayer, DrainRpc, DrainRpcLayer,
};

/// The response futures of the drain's services.
pub mod future {
    pub use super::layer::{ResponseFuture, RpcResponseFuture};
}

const SERVING: u8 = 0;
const PRE_DRAIN: u8 = 1;
const REJECTING: u8 = 2;
const DRAINED: u8 = 3;
const CLOSED: u8 = 4;

/// A new request arrived while draining.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Draining {
    _p: (),
}

impl Draining {
    pub(crate) const fn new() -> Self {
        Self { _p: () }
    }
}

impl fmt::Display for Draining {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("service is shutting down; request refused")
    }
}

impl std::error::Error for Draining {}

/// An outbound client was used after the drain closed it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ClientClosed {
    _p: (),
}

impl ClientClosed {
    pub(crate) const fn new() -> Self {
        Self { _p: () }
    }
}

impl fmt::Display for ClientClosed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("client closed by the shutdown drain")
    }
}

impl std::error::Error for ClientClosed {}

/// A hook was added with [`Drain::on_drained`] after the drain's hooks had
/// run. It was not added and will not be run by the drain;
/// [`into_inner`](Self::into_inner) gives it back.
pub struct AlreadyDrained<F> {
    hook: F,
}

impl<F> AlreadyDrained<F> {
    /// The hook that was not added.
    pub fn into_inner(self) -> F {
        self.hook
    }
}

impl<F> fmt::Debug for AlreadyDrained<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AlreadyDrained").finish_non_exhaustive()
    }
}

impl<F> fmt::Display for AlreadyDrained<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("the drain's hooks have already run; hook not added")
    }
}

impl<F> std::error::Error for AlreadyDrained<F> {}

/// A drain hook that did not complete. `index` is the hook's position in
/// the order hooks were added, from 0.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum HookFailure {
    /// It overran the hook timeout and was abandoned (its task aborted).
    TimedOut {
        /// Its position, from 0.
        index: usize,
        /// The hook timeout it overran.
        after: Duration,
    },
    /// It panicked; the panic was caught.
    Panicked {
        /// Its position, from 0.
        index: usize,
        /// The panic message, when it was a string.
        message: String,
    },
    /// Its task was cancelled from outside (the runtime shutting down).
    Cancelled {
        /// Its position, from 0.
        index: usize,
    },
}

impl fmt::Display for HookFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HookFailure::TimedOut { index, after } => {
                write!(f, "drain hook {index} timed out after {after:?}")
            }
            HookFailure::Panicked { index, message } => {
                write!(f, "drain hook {index} panicked: {message}")
            }
            HookFailure::Cancelled { index } => write!(f, "drain hook {index} was cancelled"),
        }
    }
}

/// What a drain did, as known when the report was produced. See the
/// [module docs](self#the-report) for how each count is determined.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct DrainReport {
    /// Requests whose response was complete after the signal. HTTP: body
    /// read to its end, or, for a response with no body on the wire (to
    /// `HEAD`, a `2xx` to `CONNECT`, `1xx`, `204`, `304`), its head handed
    /// to the server, which drops such a body unpolled. Other services:
    /// future resolved, `Ok` or `Err`.
    pub finished: u64,
    /// New requests refused with `503` (or [`Draining`]) by the drain
    /// layers, counted when the refusal was handed back.
    pub refused: u64,
    /// Requests whose response was never completed, after the signal: the
    /// response future or body was dropped before its end, or the HTTP
    /// service returned `Err` (the server sends no response for it).
    pub cut_off: u64,
    /// Requests in flight when this report was produced.
    pub still_running: u64,
    /// Requests still in flight when the wait ended at the grace period or
    /// at a second signal; 0 when the last request finished in time. Not
    /// cut off by the deadline: those that finish later count as finished.
    pub running_at_deadline: u64,
    /// Whether a second signal ended the wait.
    pub forced: bool,
    /// Hooks that timed out, panicked or were cancelled, in the order they
    /// ran.
    pub hook_failures: Vec<HookFailure>,
    /// From the signal to this report (for the report of
    /// [`Drain::completed`], to the end of the hooks).
    pub elapsed: Duration,
}

type Hook = Box<dyn FnOnce() -> Pin<Box<dyn Future<Output = ()> + Send>> + Send>;

/// The hooks not run yet; `closed` once the last one has run.
struct Hooks {
    queue: VecDeque<(usize, Hook)>,
    added: usize,
    closed: bool,
}

/// What the report needs beyond the atomics. While draining, a request
/// leaves under this lock, so `finished + cut_off` and `in_flight` are read
/// as one.
#[derive(Default)]
struct Progress {
    finished: u64,
    cut_off: u64,
    started: Option<Instant>,
    running_at_deadline: u64,
    hook_failures: Vec<HookFailure>,
    report: Option<DrainReport>,
}

pub(crate) struct Shared {
    #[cfg(feature = "metrics")]
    in_flight_gauge: crate::metrics::Bound<metrics::Gauge>,
    in_flight: crate::util::Padded<AtomicUsize>,
    phase: AtomicU8,
    refused: AtomicU64,
    forced: AtomicBool,
    begun: AtomicBool,
    /// Set once a client saw the drain closed with nothing in flight: from
    /// then on clients refuse without reading the count.
    clients_closed: AtomicBool,
    changed: Notify,
    grace: Duration,
    pre_drain: Duration,
    hook_timeout: Duration,
    retry_after: u64,
    hooks: Mutex<Hooks>,
    progress: Mutex<Progress>,
    /// Request credits given back through the shared tally (see
    /// `crate::lease`).
    returned: AtomicU64,
}

impl crate::lease::Leased for Shared {
    fn returned(&self) -> &AtomicU64 {
        &self.returned
    }
}

impl Shared {
    /// Enters a request: counted first, then the phase is checked, so a
    /// request and the drain's "zero in flight?" can never miss each other.
    #[inline]
    #[cfg_attr(not(tower_recovery_loom), allow(dead_code))]
    fn enter(self: &Arc<Self>) -> Option<Guard> {
        self.admit().then(|| Guard {
            hold: Hold::Counted(self.clone()),
            finished: false,
        })
    }

    /// [`enter`](Self::enter) for a request that holds a lease on the
    /// drain (no reference count per request).
    #[inline]
    pub(crate) fn enter_leased(lease: Lease<Shared>) -> Option<Guard> {
        lease.admit().then(|| Guard {
            hold: Hold::Leased(lease),
            finished: false,
        })
    }

    /// Counts a request in unless the drain rejects it.
    #[inline]
    fn admit(&self) -> bool {
        if self.phase.load(Ordering::Acquire) >= REJECTING {
            return false;
        }
        self.in_flight.0.fetch_add(1, Ordering::SeqCst);
        // With the fence after the phase store in `set_phase`: either this
        // load sees the drain, or the drain's count sees this request.
        fence(Ordering::SeqCst);
        #[cfg(feature = "metrics")]
        self.report_in_flight();
        if self.phase.load(Ordering::SeqCst) >= REJECTING {
            // Rejecting began between the two loads: not admitted, so
            // neither finished nor cut off.
            let before = {
                let _progress = lock(&self.progress);
                self.in_flight.0.fetch_sub(1, Ordering::SeqCst)
            };
            #[cfg(feature = "metrics")]
            self.report_in_flight();
            if before == 1 {
                self.changed.notify_waiters();
            }
            return false;
        }
        true
    }

    /// Leaves a request: `finished` if its response was complete, else it
    /// was cut off. Atomics only while serving; a short lock while draining,
    /// so the report reads its counts as one.
    #[inline]
    fn leave(&self, finished: bool) {
        if self.phase.load(Ordering::Acquire) == SERVING {
            let before = self.in_flight.0.fetch_sub(1, Ordering::SeqCst);
            fence(Ordering::SeqCst);
            #[cfg(feature = "metrics")]
            self.report_in_flight();
            if self.phase.load(Ordering::SeqCst) != SERVING {
                // The drain began as this request left: it ended at the
                // signal; count it with the drain.
                lock(&self.progress).count(finished);
                if before == 1 {
                    self.changed.notify_waiters();
                }
            }
            return;
        }
        let before = {
            let mut progress = lock(&self.progress);
            progress.count(finished);
            self.in_flight.0.fetch_sub(1, Ordering::SeqCst)
        };
        #[cfg(feature = "metrics")]
        self.report_in_flight();
        if before == 1 {
            if self.phase.load(Ordering::Acquire) >= CLOSED {
                tracing::info!("The last request still running finished: outbound clients closed");
            }
            self.changed.notify_waiters();
        }
    }

    /// Whether outbound clients refuse new calls: the drain is over and no
    /// request is in flight. Atomics only. Once true it stays true: a
    /// request refused later takes a count for a moment, but it is not
    /// served, so it must not reopen the clients.
    ///
    /// A request calling a client holds its own count, so it always reads
    /// a count above zero. Reading zero after reading `CLOSED` means no
    /// admitted request is left and none can be admitted any more (the
    /// handshake of `enter` with `set_phase(REJECTING)`).
    #[inline]
    fn clients_closed(&self) -> bool {
        if self.clients_closed.load(Ordering::Acquire) {
            return true;
        }
        if self.phase.load(Ordering::Acquire) < CLOSED
            || self.in_flight.0.load(Ordering::SeqCst) != 0
        {
            return false;
        }
        self.clients_closed.store(true, Ordering::Release);
        true
    }

    /// Sets the in-flight gauge of the recorder in use (absolute, so a
    /// change of recorder never leaves it off by the requests counted
    /// under the previous one).
    #[cfg(feature = "metrics")]
    #[inline]
    fn report_in_flight(&self) {
        let n = self.in_flight.0.load(Ordering::Relaxed) as f64;
        self.in_flight_gauge.with(
            || metrics::gauge!(crate::metrics::DRAIN_IN_FLIGHT),
            |g| g.set(n),
        );
    }

    fn refused(&self) {
        self.refused.fetch_add(1, Ordering::Relaxed);
    }

    fn set_phase(&self, phase: u8) {
        self.phase.store(phase, Ordering::SeqCst);
        // Pairs with the fences in `enter` and `leave` (store-load order
        // needs a fence on each side; SeqCst accesses alone are not modelled
        // as such by loom, and fences make the argument explicit).
        fence(Ordering::SeqCst);
        self.changed.notify_waiters();
    }

    /// The report as of now, or `None` before the drain began.
    fn report_now(&self) -> Option<DrainReport> {
        let progress = lock(&self.progress);
        let started = progress.started?;
        Some(DrainReport {
            finished: progress.finished,
            refused: self.refused.load(Ordering::Relaxed),
            cut_off: progress.cut_off,
            still_running: self.in_flight.0.load(Ordering::SeqCst) as u64,
            running_at_deadline: progress.running_at_deadline,
            forced: self.forced.load(Ordering::Acquire),
            hook_failures: progress.hook_failures.clone(),
            elapsed: started.elapsed(),
        })
    }
}

impl Progress {
    fn count(&mut self, finished: bool) {
        if finished {
            self.finished += 1;
        } else {
            self.cut_off += 1;
        }
    }
}

/// Holds one in-flight request. [`Guard::finish`] when its response is
/// complete; dropped without it, the request was cut off.
pub(crate) struct Guard {
    hold: Hold,
    finished: bool,
}

/// How a guard keeps the drain's state alive.
enum Hold {
    #[cfg_attr(not(tower_recovery_loom), allow(dead_code))]
    Counted(Arc<Shared>),
    Leased(Lease<Shared>),
}

impl Hold {
    fn shared(&self) -> &Shared {
        match self {
            Hold::Counted(arc) => arc,
            Hold::Leased(lease) => lease,
        }
    }
}

impl Guard {
    /// The response is complete.
    pub(crate) fn finish(mut self) {
        self.finished = true;
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        self.hold.shared().leave(self.finished);
    }
}

/// A drain handle. Clones share one state.
#[derive(Clone)]
pub struct Drain {
    shared: Arc<Shared>,
    _owner: Arc<Owner>,
}

/// Dropped with the last [`Drain`] handle: hooks that can no longer run (no
/// handle is left to begin the drain) are dropped then, with what they
/// captured, not when the state itself is freed (which requests' holds may
/// delay: `crate::lease`). A drain already begun runs its hooks regardless.
struct Owner {
    shared: Arc<Shared>,
}

impl Drop for Owner {
    fn drop(&mut self) {
        let unrun = {
            let mut hooks = lock(&self.shared.hooks);
            if self.shared.begun.load(Ordering::Acquire) {
                VecDeque::new()
            } else {
                std::mem::take(&mut hooks.queue)
            }
        };
        drop(unrun);
    }
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
            hook_timeout: Duration::from_secs(5),
        }
    }

    /// The layer for HTTP services: counts each request until its response
    /// body ends, answers `503` while draining. Keep admin routes outside it.
    pub fn layer(&self) -> DrainHttpLayer {
        DrainHttpLayer::new(self.clone())
    }

    /// The layer for non-HTTP services: counts each call until its future
    /// completes, fails with [`Draining`] while draining.
    pub fn rpc_layer(&self) -> DrainRpcLayer {
        DrainRpcLayer::new(self.clone())
    }

    /// The layer for outbound clients: refuses calls with [`ClientClosed`]
    /// once the drain is over and no request is in flight any more (never
    /// while requests are still served, even past the grace period).
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

    /// Whether outbound clients are closed: the drain is over and no
    /// request is in flight any more. While requests outlive the grace
    /// period, the drain is over ([`completed`](Self::completed) has
    /// resolved) but the clients stay open until the last one finishes.
    pub fn is_closed(&self) -> bool {
        self.shared.clients_closed()
    }

    /// The grace period.
    pub fn grace_period(&self) -> Duration {
        self.shared.grace
    }

    /// The longest a hook may run.
    pub fn hook_timeout(&self) -> Duration {
        self.shared.hook_timeout
    }

    /// Runs `hook` after the in-flight wait and before clients close, in the
    /// order hooks were added (stop the health monitor here), as its own
    /// task under the hook timeout; a hook that overruns is abandoned and
    /// one that panics is caught, both reported in
    /// [`DrainReport::hook_failures`].
    ///
    /// # Errors
    ///
    /// [`AlreadyDrained`], holding `hook`, once the drain's hooks have run:
    /// the hook is not silently skipped, and the caller decides what to do
    /// with it. A hook added while the hooks are running is accepted and
    /// runs after them.
    pub fn on_drained<F, Fut>(&self, hook: F) -> Result<(), AlreadyDrained<F>>
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let mut hooks = lock(&self.shared.hooks);
        if hooks.closed {
            return Err(AlreadyDrained { hook });
        }
        let index = hooks.added;
        hooks.added += 1;
        hooks
            .queue
            .push_back((index, Box::new(move || Box::pin(hook()))));
        Ok(())
    }

    /// Stops `monitor` when the drain is over, before clients close. If the
    /// drain's hooks have already run, the monitor is stopped now (without
    /// waiting for its tasks to end).
    #[cfg(feature = "health")]
    pub fn stop_monitor(&self, monitor: crate::health::Monitor) {
        if let Err(late) = self.on_drained(move || monitor.stop()) {
            tracing::info!("The drain is already over: stopping the health monitor now");
            // Dropping the hook drops the monitor, which stops it.
            drop(late.into_inner());
        }
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
        lock(&self.shared.progress).started = Some(start);
        self.shared.set_phase(PRE_DRAIN);
        tokio::spawn(sequence(self.shared.clone(), start));
    }

    /// Listens for SIGTERM and ctrl-c: the first begins the drain, the
    /// second ends its wait. The signal handlers are installed before this
    /// returns, so a signal that arrives right after is not missed. Needs a
    /// tokio runtime.
    pub fn listen_for_signals(&self) {
        let drain = self.clone();
        let mut signals = Signals::install();
        tokio::spawn(async move {
            loop {
                signals.recv().await;
                drain.begin();
            }
        });
    }

    /// Resolves when the drain begins (readiness fails): race long startup
    /// work, such as waiting for dependencies, against it.
    pub fn draining(&self) -> impl Future<Output = ()> + Send + 'static {
        let shared = self.shared.clone();
        async move { wait_phase(&shared, PRE_DRAIN).await }
    }

    /// Resolves when new requests start being refused. Hand it to
    /// `with_graceful_shutdown` only if the admin routes have a listener of
    /// their own; otherwise hand it [`completed`](Self::completed), so
    /// liveness keeps answering during the drain.
    pub fn accepting_stopped(&self) -> impl Future<Output = ()> + Send + 'static {
        let shared = self.shared.clone();
        async move { wait_phase(&shared, REJECTING).await }
    }

    /// Resolves with the report when the drain is over: hooks run, clients
    /// closed, or closing as soon as the requests still running (past the
    /// grace period) finish.
    pub fn completed(&self) -> impl Future<Output = DrainReport> + Send + 'static {
        let shared = self.shared.clone();
        async move {
            wait_phase(&shared, CLOSED).await;
            lock(&shared.progress)
                .report
                .clone()
                .expect("report written before the phase")
        }
    }

    /// A report as of now, `None` before the drain began: during the drain,
    /// or after it, as the last word before the process exits (requests
    /// still running then are dropped at exit).
    pub fn report(&self) -> Option<DrainReport> {
        self.shared.report_now()
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

/// SIGTERM and ctrl-c, listened for from when this is made.
struct Signals {
    #[cfg(unix)]
    term: Option<tokio::signal::unix::Signal>,
    #[cfg(unix)]
    interrupt: Option<tokio::signal::unix::Signal>,
}

impl Signals {
    fn install() -> Self {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            let install = |kind: SignalKind, name: &str| match signal(kind) {
                Ok(s) => Some(s),
                Err(e) => {
                    tracing::error!("cannot listen for {name}: {e}");
                    None
                }
            };
            Self {
                term: install(SignalKind::terminate(), "SIGTERM"),
                interrupt: install(SignalKind::interrupt(), "SIGINT"),
            }
        }
        #[cfg(not(unix))]
        {
            Self {}
        }
    }

    async fn recv(&mut self) {
        #[cfg(unix)]
        {
            async fn next(s: &mut Option<tokio::signal::unix::Signal>) {
                match s {
                    Some(s) => {
                        if s.recv().await.is_none() {
                            std::future::pending::<()>().await;
                        }
                    }
                    None => std::future::pending().await,
                }
            }
            tokio::select! {
                () = next(&mut self.term) => tracing::info!("Received SIGTERM"),
                () = next(&mut self.interrupt) => tracing::info!("Received ctrl-c"),
            }
        }
        #[cfg(not(unix))]
        {
            if tokio::signal::ctrl_c().await.is_err() {
                std::future::pending::<()>().await;
            }
            tracing::info!("Received ctrl-c");
        }
    }
}

/// Resolves on SIGTERM or ctrl-c. The handlers are installed when it is
/// first polled; [`Drain::listen_for_signals`] installs them at once.
pub async fn shutdown_signal() {
    Signals::install().recv().await;
}

/// How the in-flight wait ended.
#[derive(Clone, Copy, PartialEq, Eq)]
enum WaitEnd {
    Done,
    Deadline,
    Forced,
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
    let end = wait_until(&shared, deadline, || {
        shared.in_flight.0.load(Ordering::SeqCst) == 0
    })
    .await;
    if end != WaitEnd::Done {
        let running = shared.in_flight.0.load(Ordering::SeqCst) as u64;
        lock(&shared.progress).running_at_deadline = running;
        if running > 0 {
            let why = if end == WaitEnd::Forced {
                "Second signal"
            } else {
                "Grace period over"
            };
            tracing::warn!(
                running,
                "{why} with requests still running: not waiting for them any longer"
            );
        }
    }
    shared.set_phase(DRAINED);
    run_hooks(&shared).await;
    let report = shared.report_now().expect("the drain began");
    lock(&shared.progress).report = Some(report.clone());
    #[cfg(feature = "metrics")]
    metrics::counter!(crate::metrics::DRAIN_COMPLETED).increment(1);
    shared.set_phase(CLOSED);
    let clients = if shared.clients_closed() {
        "outbound clients closed"
    } else {
        "outbound clients close when the requests still running finish"
    };
    tracing::info!(
        finished = report.finished,
        refused = report.refused,
        cut_off = report.cut_off,
        still_running = report.still_running,
        hook_failures = report.hook_failures.len(),
        elapsed_ms = report.elapsed.as_millis() as u64,
        "Graceful shutdown complete; {clients}"
    );
}

/// Runs the hooks one at a time, each as a task under the hook timeout,
/// until none is left; then refuses new ones.
async fn run_hooks(shared: &Shared) {
    loop {
        let (index, hook) = {
            let mut hooks = lock(&shared.hooks);
            match hooks.queue.pop_front() {
                Some(next) => next,
                None => {
                    hooks.closed = true;
                    return;
                }
            }
        };
        // The hook is called in its task too, so a panic in the call itself
        // is caught as well.
        let mut task = tokio::spawn(async move { hook().await });
        let failure = match tokio::time::timeout(shared.hook_timeout, &mut task).await {
            Ok(Ok(())) => None,
            Ok(Err(e)) if e.is_panic() => {
                let payload = e.into_panic();
                let message = payload
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| payload.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "non-string panic payload".to_string());
                Some(HookFailure::Panicked { index, message })
            }
            Ok(Err(_)) => Some(HookFailure::Cancelled { index }),
            Err(_) => {
                task.abort();
                Some(HookFailure::TimedOut {
                    index,
                    after: shared.hook_timeout,
                })
            }
        };
        if let Some(failure) = failure {
            tracing::error!("{failure}; going on with the drain");
            lock(&shared.progress).hook_failures.push(failure);
        }
    }
}

/// Waits until `done()`, the deadline, or a forced end.
async fn wait_until(shared: &Shared, deadline: Instant, done: impl Fn() -> bool) -> WaitEnd {
    loop {
        let notified = shared.changed.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        if done() {
            return WaitEnd::Done;
        }
        if shared.forced.load(Ordering::Acquire) {
            return WaitEnd::Forced;
        }
        if Instant::now() >= deadline {
            return WaitEnd::Deadline;
        }
        tokio::select! {
            () = notified => {}
            () = tokio::time::sleep_until(deadline) => {}
        }
    }
}

/// Configures a [`Drain`].
#[derive(Clone, Debug)]
pub struct Builder {
    grace: Duration,
    pre_drain: Duration,
    retry_after: Duration,
    hook_timeout: Duration,
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

    /// Longest each [`on_drained`](Drain::on_drained) hook may run (default
    /// 5 s); one that overruns is abandoned and reported. The hooks run after
    /// the grace period, so the whole drain may last up to the grace period
    /// plus this for each hook: keep both within the orchestrator's own
    /// limit (Kubernetes' `terminationGracePeriodSeconds`).
    pub fn hook_timeout(mut self, timeout: Duration) -> Self {
        self.hook_timeout = timeout;
        self
    }

    /// Builds the drain.
    pub fn build(self) -> Drain {
        let shared = Arc::new(Shared {
            #[cfg(feature = "metrics")]
            in_flight_gauge: crate::metrics::Bound::new(),
            in_flight: crate::util::Padded(AtomicUsize::new(0)),
            returned: AtomicU64::new(0),
            phase: AtomicU8::new(SERVING),
            refused: AtomicU64::new(0),
            forced: AtomicBool::new(false),
            begun: AtomicBool::new(false),
            clients_closed: AtomicBool::new(false),
            changed: Notify::new(),
            grace: self.grace,
            pre_drain: self.pre_drain,
            hook_timeout: self.hook_timeout,
            retry_after: self.retry_after.as_secs().max(1),
            hooks: Mutex::new(Hooks {
                queue: VecDeque::new(),
                added: 0,
                closed: false,
            }),
            progress: Mutex::new(Progress::default()),
        });
        Drain {
            _owner: Arc::new(Owner {
                shared: shared.clone(),
            }),
            shared,
        }
    }
}
