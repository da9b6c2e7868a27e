use std::fmt;
use std::task::{Context, Poll};

use tower_service::Service;

use super::future::ResponseFuture;
use super::{Chaos, OnFault};

/// A service that fails or delays calls while its [`Chaos`] handle is on.
/// Made by [`InjectFaultsLayer`](super::InjectFaultsLayer).
///
/// `poll_ready` is the inner service's. `call` draws the call's faults: a
/// failed call returns the [`OnFault`]'s result without calling the inner
/// service; a delayed one calls it and polls its future after the delay.
/// Off, `call` adds one relaxed atomic load to the inner service's.
#[derive(Clone)]
pub struct InjectFaults<S, O> {
    inner: S,
    chaos: Chaos,
    on_fault: O,
}

impl<S, O> InjectFaults<S, O> {
    pub(crate) fn new(inner: S, chaos: Chaos, on_fault: O) -> Self {
        Self {
            inner,
            chaos,
            on_fault,
        }
    }

    /// The handle this service follows.
    pub fn chaos(&self) -> &Chaos {
        &self.chaos
    }

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

impl<S, O, Req> Service<Req> for InjectFaults<S, O>
where
    S: Service<Req>,
    O: OnFault<S::Response, S::Error> + Clone,
{
    type Response = S::Response;
    type Error = O::Error;
    type Future = ResponseFuture<S::Future, O>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner
            .poll_ready(cx)
            .map_err(|e| self.on_fault.convert(e))
    }

    #[inline]
    fn call(&mut self, req: Req) -> Self::Future {
        let plan = self.chaos.plan();
        if plan.delay.is_none() && plan.fault.is_none() {
            return ResponseFuture::called(self.inner.call(req), self.on_fault.clone());
        }
        // A failed call never reaches the inner service.
        let then = match plan.fault {
            Some(injected) => Err(injected),
            None => Ok(self.inner.call(req)),
        };
        ResponseFuture::planned(
            then,
            plan.delay,
            self.on_fault.clone(),
            &self.chaos,
            plan.state,
        )
    }
}

impl<S: fmt::Debug, O> fmt::Debug for InjectFaults<S, O> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("InjectFaults")
            .field("inner", &self.inner)
            .field("chaos", &self.chaos.name())
            .finish_non_exhaustive()
    }
}
