//! The handle: shared state, cheap clones, and the calls that read or
//! change it by hand.

use std::fmt;
use std::future::{Future, IntoFuture};
use std::sync::{Arc, Weak};

use super::core::Core;
use super::{
    BreakerConfig, Builder, CallError, Cause, CircuitBreakerEosLayer, CircuitBreakerLayer, Counts,
    Permit, RecentEvent, RejectWithError, Rejection, Snapshot, State, Transitions, TuneError,
    Tuning,
};
use crate::classify::{Classify, ErrorsAsFailures};

/// A circuit breaker handle. Clones share one state.
///
/// See the [module docs](super) for the semantics.
#[derive(Clone)]
#[repr(transparent)]
pub struct Breaker {
    pub(super) core: Arc<Core>,
}

impl fmt::Debug for Breaker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Breaker")
            .field("name", &self.core.name)
            .field("state", &self.core.state())
            .finish()
    }
}

impl Breaker {
    /// A breaker with the defaults: trips after 5 consecutive failures, stays
    /// open 30 s, then admits 1 probe.
    pub fn new(name: impl Into<Arc<str>>) -> Self {
        Self::builder(name).build()
    }

    /// Configures a breaker.
    pub fn builder(name: impl Into<Arc<str>>) -> Builder {
        Builder::new(name.into())
    }

    /// The name given at creation.
    pub fn name(&self) -> &str {
        &self.core.name
    }

    /// A layer that guards services with this breaker (shared state).
    pub fn layer(&self) -> CircuitBreakerLayer {
        CircuitBreakerLayer::new(self.clone())
    }

    /// A layer for gRPC clients: classifies with
    /// [`GrpcErrorsAsFailures`](crate::classify::grpc::GrpcErrorsAsFailures),
    /// from `grpc-status` in the response head (Trailers-Only responses,
    /// how most errors arrive) or, when the head has none, in the trailers
    /// at the end of the body. Rejects with an error, as [`layer`](Self::layer)
    /// does.
    ///
    /// ```
    /// use tower::ServiceBuilder;
    /// use tower_recovery::circuit_breaker::Breaker;
    ///
    /// let breaker = Breaker::new("model_server");
    /// let _stack = ServiceBuilder::new().layer(breaker.grpc_layer());
    /// // .service(tonic::transport::Channel), or any HTTP/2 client.
    /// ```
    pub fn grpc_layer(
        &self,
    ) -> CircuitBreakerEosLayer<crate::classify::grpc::GrpcErrorsAsFailures, RejectWithError> {
        self.layer()
            .classify_eos(crate::classify::grpc::GrpcErrorsAsFailures::new())
    }

    /// The current state, as the next caller will find it: after the open
    /// wait it reports `HalfOpen` (and after a half-open wait, `Open`). A
    /// read only: the transition is made by the next admission.
    pub fn state(&self) -> State {
        self.core.state()
    }

    /// The current generation (bumped by each transition).
    pub fn generation(&self) -> u64 {
        self.core.generation()
    }

    /// Current counts.
    pub fn counts(&self) -> Counts {
        self.core.counts()
    }

    /// A consistent-enough view for reports.
    pub fn snapshot(&self) -> Snapshot {
        let (generation, state, next_probe_in, available_permits) = self.core.observe();
        Snapshot {
            name: self.core.name.clone(),
            state,
            generation,
            counts: self.core.counts(),
            failures: self.core.failures(),
            rejected: self.core.rejected(),
            transitions: self.core.transitions(),
            next_probe_in,
            available_permits,
            shadow_rejected: self.core.shadow_rejected(),
            traffic_share: self.core.traffic_share(),
        }
    }

    /// The configuration in effect now (thresholds and open duration as
    /// changed by [`tune`](Self::tune)).
    pub fn config(&self) -> BreakerConfig {
        self.core.effective()
    }

    /// Changes thresholds, open duration, probes or metrics-only mode of
    /// the running breaker (see [`Tuning`] for when each applies). The
    /// change is checked whole first: an error names the setting, the
    /// value and what was expected, and nothing applies. Returns the
    /// changes made, one `setting old -> new` line each (also logged at
    /// `warn` and kept in [`recent_events`](Self::recent_events)).
    pub fn tune(&self, tuning: Tuning) -> Result<Vec<String>, TuneError> {
        let checked = tuning.check(&self.core.effective())?;
        Ok(self.core.tune(&checked))
    }

    /// The latest transitions and configuration changes, oldest first (at
    /// most [`Builder::recent_events`], 32 by default): what happened to
    /// this breaker lately, for an operator (`/reliability`), unlike
    /// [`subscribe`](Self::subscribe), which sees only what happens after
    /// it is called.
    pub fn recent_events(&self) -> Vec<RecentEvent> {
        self.core.recent_events()
    }

    /// Back to `Closed`: the window and the consecutive count cleared, the
    /// open-duration growth back to base.
    ///
    /// From `Open`, `HalfOpen`, `ForcedOpen` or `Disabled` this is a
    /// transition (a new generation, published and logged). On a breaker
    /// already `Closed` it is not: nothing is published on
    /// [`subscribe`](Self::subscribe), the generation stays, calls in
    /// flight still count, and a watching recovery is told nothing (reset
    /// it too, as the admin route does, to end a cycle it runs).
    pub fn reset(&self) {
        self.core.force(State::Closed, Cause::Reset);
    }

    /// Rejects every call until [`reset`](Self::reset).
    pub fn force_open(&self) {
        self.core.force(State::ForcedOpen, Cause::ForcedOpen);
    }

    /// Admits every call and records nothing until [`reset`](Self::reset).
    pub fn disable(&self) {
        self.core.force(State::Disabled, Cause::Disabled);
    }

    /// Closes the breaker because its dependency is known to work again,
    /// unless it is `ForcedOpen` or `Disabled` or already closed. Returns
    /// whether it closed it. This is what a recovery calls.
    ///
    /// The check and the transition are one atomic step: a concurrent
    /// [`force_open`](Self::force_open) is never overwritten, and a probe
    /// that closed the breaker first is not followed by a second close.
    pub fn close(&self) -> bool {
        self.core.close_if_down()
    }

    /// Ends the open wait now: an `Open` breaker becomes `HalfOpen` and
    /// admits its probes at once, instead of when its open duration is
    /// over. Returns whether it did (false in any other state). What the
    /// health monitor calls when a check of an open breaker's dependency
    /// passes: the probes then test the path real calls take.
    pub fn probe_now(&self) -> bool {
        self.core.probe_now()
    }

    /// An ordered stream of this breaker's transitions from now on, bounded
    /// at 64: see [`Transitions::recv`].
    pub fn subscribe(&self) -> Transitions {
        Transitions {
            rx: self.core.subscribe(),
        }
    }

    /// What a recovery watches: lossless counts of openings and heals.
    #[cfg(feature = "recovery")]
    pub(crate) fn watch(&self) -> tokio::sync::watch::Receiver<super::core::Signal> {
        self.core.watch()
    }

    /// The handle whose state `core` is.
    pub(crate) fn from_arc_ref(core: &Arc<Core>) -> &Breaker {
        // SAFETY: `Breaker` is `repr(transparent)` over `Arc<Core>`.
        #[allow(unsafe_code)]
        unsafe {
            &*(core as *const Arc<Core>).cast::<Breaker>()
        }
    }

    /// A handle that does not keep the breaker alive.
    ///
    /// Calls hold credits on the breaker rather than reference counts
    /// (README, "Performance"): once every handle is dropped, the breaker is
    /// freed when the threads that ran its calls have given back what they
    /// hold (when they work for other breakers or exit). Until then
    /// [`WeakBreaker::upgrade`] still succeeds, and [`Transitions`] streams
    /// do not end.
    pub fn downgrade(&self) -> WeakBreaker {
        WeakBreaker {
            core: Arc::downgrade(&self.core),
        }
    }

    /// Asks for admission. The permit records the call's outcome; dropping it
    /// unrecorded counts as a call that never finished (a half-open permit is
    /// given back).
    #[inline]
    pub fn try_acquire(&self) -> Result<Permit<'_>, Rejection> {
        let mut ticket = self.core.admit()?;
        self.core.start(&mut ticket);
        Ok(Permit {
            core: &self.core,
            ticket: Some(ticket),
        })
    }

    /// Runs `future` if the breaker admits it, classifying `Err` as failure.
    ///
    /// ```
    /// # use tower_recovery::circuit_breaker::Breaker;
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// let breaker = Breaker::new("database");
    /// let rows = breaker.call(async { Ok::<_, std::io::Error>(3) }).await;
    /// assert_eq!(rows.unwrap(), 3);
    /// # }
    /// ```
    pub async fn call<F, T, E>(&self, future: F) -> Result<T, CallError<E>>
    where
        F: IntoFuture<Output = Result<T, E>>,
        E: 'static,
    {
        self.call_with(&ErrorsAsFailures, future).await
    }

    /// Runs `future` if the breaker admits it, classifying with `classify`.
    ///
    /// A rejection is [`CallError::Rejected`]; a recovery recognises it
    /// around any `E` ([`is_refusal`](crate::recovery::is_refusal)).
    pub async fn call_with<C, F, T, E>(&self, classify: &C, future: F) -> Result<T, CallError<E>>
    where
        C: Classify<T, E>,
        F: IntoFuture<Output = Result<T, E>>,
        E: 'static,
    {
        let permit = match self.try_acquire() {
            Ok(permit) => permit,
            Err(rejected) => {
                #[cfg(feature = "recovery")]
                super::error::registry::register::<E>();
                return Err(CallError::Rejected(rejected));
            }
        };
        let result = future.into_future().await;
        permit.record(classify.classify(&result));
        result.map_err(CallError::Inner)
    }

    /// Waits until the breaker changes: any transition, or a half-open
    /// probe permit given back. (A reset of a closed breaker is no
    /// transition and wakes nobody.)
    pub fn changed(&self) -> impl Future<Output = ()> + Send + 'static {
        self.core.changed.clone().notified_owned()
    }
}

/// A [`Breaker`] that does not keep it alive.
#[derive(Clone, Debug)]
pub struct WeakBreaker {
    pub(super) core: Weak<Core>,
}

impl WeakBreaker {
    /// The breaker, if a handle is still alive.
    pub fn upgrade(&self) -> Option<Breaker> {
        self.core.upgrade().map(|core| Breaker { core })
    }
}
