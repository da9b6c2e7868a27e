use std::any::Any;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use pin_project_lite::pin_project;
use tower_layer::Layer;
use tower_service::Service;

use super::{Recovery, Shared};
use crate::BoxError;
#[cfg(doc)]
use crate::circuit_breaker::CallError;
use crate::circuit_breaker::{Rejected, Rejection};
use crate::classify::{Classify, ErrorsAsFailures, Outcome};
use crate::lease::{Credits, Lease};

/// Whether `error` is a refusal made by this crate rather than a failure of
/// the dependency: a breaker's [`Rejected`] or [`Rejection`] (bare, boxed, anywhere in a
/// `BoxError`'s source chain, or as [`CallError::Rejected`] around any
/// error type), or a drain's `Draining` / `ClientClosed`. A recovery never
/// counts these: the breaker reports its own opening, and a drain is not an
/// outage.
///
/// `CallError<E>` is generic over the caller's error type, which no code
/// here can name; [`Breaker::call`](crate::circuit_breaker::Breaker::call)
/// registers each `CallError<E>` type the first time it rejects, and this
/// looks the type up (a thread-local check on the rejection path after the
/// first time).
///
/// Not recognised: a refusal converted into another error type that does
/// not keep it as its `source()` (`anyhow::Error`, `io::Error::other`, a
/// `Box<dyn Error>` without `Send + Sync`). Keep the refusal reachable, or
/// classify such outcomes yourself with [`RecoveryTriggerLayer::classify`].
pub fn is_refusal<E: 'static>(error: &E) -> bool {
    let any = error as &dyn Any;
    if is_own_refusal(any) {
        return true;
    }
    if let Some(boxed) = any.downcast_ref::<BoxError>() {
        return chain_has_refusal(&**boxed);
    }
    crate::circuit_breaker::error::registry::is_rejected_call_error(any)
}

fn is_own_refusal(any: &dyn Any) -> bool {
    if any.is::<Rejected>() || any.is::<Rejection>() {
        return true;
    }
    #[cfg(feature = "drain")]
    if any.is::<crate::drain::Draining>() || any.is::<crate::drain::ClientClosed>() {
        return true;
    }
    false
}

fn chain_has_refusal(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut next = Some(error);
    while let Some(e) = next {
        if e.is::<Rejected>() || e.is::<Rejection>() {
            return true;
        }
        #[cfg(feature = "drain")]
        if e.is::<crate::drain::Draining>() || e.is::<crate::drain::ClientClosed>() {
            return true;
        }
        next = e.source();
    }
    false
}

/// Triggers a [`Recovery`] after consecutive failures of the service it
/// wraps, for clients without a breaker (the seed's database). Made by
/// [`Recovery::layer`]; every service it makes shares the recovery's count.
///
/// Outcomes are classified with [`Classify`] (default: `Err` is a failure).
/// A refusal made by this crate ([`is_refusal`]: a breaker's rejection,
/// around any error type, or a drain's) is ignored: the breaker already
/// reports its own opening. Put this layer outside a breaker, if there is one.
#[derive(Clone)]
pub struct RecoveryTriggerLayer<C = ErrorsAsFailures> {
    recovery: Recovery,
    classify: C,
}

impl RecoveryTriggerLayer {
    pub(crate) fn new(recovery: Recovery) -> Self {
        Self {
            recovery,
            classify: ErrorsAsFailures,
        }
    }
}

impl<C> RecoveryTriggerLayer<C> {
    /// Classifies outcomes with `classify`.
    pub fn classify<C2>(self, classify: C2) -> RecoveryTriggerLayer<C2> {
        RecoveryTriggerLayer {
            recovery: self.recovery,
            classify,
        }
    }
}

impl<C> fmt::Debug for RecoveryTriggerLayer<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RecoveryTriggerLayer")
            .field("recovery", &self.recovery.name())
            .finish_non_exhaustive()
    }
}

impl<S, C: Clone> Layer<S> for RecoveryTriggerLayer<C> {
    type Service = RecoveryTrigger<S, C>;

    fn layer(&self, inner: S) -> Self::Service {
        RecoveryTrigger {
            inner,
            recovery: self.recovery.clone(),
            credits: Credits::new(self.recovery.shared_arc().clone()),
            classify: self.classify.clone(),
        }
    }
}

/// The service of [`RecoveryTriggerLayer`].
#[derive(Clone)]
pub struct RecoveryTrigger<S, C> {
    inner: S,
    /// Keeps the recovery (its task) running while the service exists.
    recovery: Recovery,
    /// For the calls' hold on the recovery's state (no reference count per
    /// call: see `crate::lease`).
    credits: Credits<Shared>,
    classify: C,
}

impl<S, C> RecoveryTrigger<S, C> {
    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The inner service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// Consumes the wrapper, returning the inner service.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S: fmt::Debug, C> fmt::Debug for RecoveryTrigger<S, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RecoveryTrigger")
            .field("inner", &self.inner)
            .field("recovery", &self.recovery.name())
            .finish_non_exhaustive()
    }
}

impl<S, C, Req> Service<Req> for RecoveryTrigger<S, C>
where
    S: Service<Req>,
    S::Error: 'static,
    C: Classify<S::Response, S::Error> + Clone,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future, C>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Req) -> Self::Future {
        let future = self.inner.call(req);
        ResponseFuture {
            future,
            recovery: Some(self.credits.take()),
            classify: self.classify.clone(),
        }
    }
}

pin_project! {
    /// Response future of [`RecoveryTrigger`].
    pub struct ResponseFuture<F, C> {
        #[pin]
        future: F,
        recovery: Option<Lease<Shared>>,
        classify: C,
    }
}

impl<F, C> fmt::Debug for ResponseFuture<F, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}

impl<F, C, T, E> Future for ResponseFuture<F, C>
where
    F: Future<Output = Result<T, E>>,
    E: 'static,
    C: Classify<T, E>,
{
    type Output = Result<T, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let result = ready!(this.future.poll(cx));
        if let Some(recovery) = this.recovery.take() {
            let outcome = match &result {
                Err(e) if is_refusal(e) => Outcome::Ignore,
                _ => this.classify.classify(&result),
            };
            recovery.record(outcome);
        }
        Poll::Ready(result)
    }
}
