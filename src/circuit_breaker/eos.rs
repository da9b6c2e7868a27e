//! A breaker for HTTP services whose outcome may arrive with the end of the
//! response body (gRPC's trailers).

use std::fmt;
use std::task::{Context, Poll};

use tower_layer::Layer;
use tower_service::Service;

use super::future::{ClassifiedBody, EosResponseFuture};
use super::reject::OnReject;
use super::{Breaker, CircuitBreaker, CircuitBreakerLayer};
use crate::classify::ClassifyResponse;

/// Applies a shared [`Breaker`] to an HTTP service and classifies its
/// responses with a [`ClassifyResponse`]: at the response head when it
/// decides, otherwise at the end of the body, which the service wraps in a
/// [`ClassifiedBody`].
///
/// Made with [`CircuitBreakerLayer::classify_eos`] (keeping the layer's
/// rejection and backpressure settings) or [`Breaker::grpc_layer`]. Like
/// [`CircuitBreakerLayer`], it holds a handle, not a state.
///
/// Admission is the same as [`CircuitBreaker`]'s; only the recording moves
/// to the end of the body, so a half-open probe holds its permit until its
/// trailers arrive.
#[derive(Clone)]
pub struct CircuitBreakerEosLayer<C, R> {
    inner: CircuitBreakerLayer<C, R>,
}

impl<C, R> CircuitBreakerEosLayer<C, R> {
    pub(super) fn new(inner: CircuitBreakerLayer<C, R>) -> Self {
        Self { inner }
    }

    /// The breaker this layer reports to.
    pub fn breaker(&self) -> &Breaker {
        self.inner.breaker()
    }
}

impl<S, C: Clone, R: Clone> Layer<S> for CircuitBreakerEosLayer<C, R> {
    type Service = CircuitBreakerEos<S, C, R>;

    fn layer(&self, inner: S) -> Self::Service {
        CircuitBreakerEos {
            inner: self.inner.layer(inner),
        }
    }
}

impl<C, R> fmt::Debug for CircuitBreakerEosLayer<C, R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CircuitBreakerEosLayer")
            .field("breaker", &self.inner.breaker().name())
            .finish_non_exhaustive()
    }
}

/// An HTTP service guarded by a [`Breaker`] whose outcome may be recorded
/// at the end of the response body. Made by [`CircuitBreakerEosLayer`].
///
/// Its responses have a [`ClassifiedBody`] around the inner body.
#[derive(Clone)]
pub struct CircuitBreakerEos<S, C, R> {
    inner: CircuitBreaker<S, C, R>,
}

impl<S, C, R> CircuitBreakerEos<S, C, R> {
    /// The breaker this service reports to.
    pub fn breaker(&self) -> &Breaker {
        self.inner.breaker()
    }

    /// The inner service.
    pub fn get_ref(&self) -> &S {
        self.inner.get_ref()
    }

    /// The inner service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        self.inner.get_mut()
    }

    /// Consumes the wrapper, returning the inner service (and giving back a
    /// latched admission).
    pub fn into_inner(self) -> S {
        self.inner.into_inner()
    }
}

impl<S: fmt::Debug, C, R> fmt::Debug for CircuitBreakerEos<S, C, R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CircuitBreakerEos")
            .field("inner", &self.inner)
            .finish()
    }
}

impl<S, C, R, Req, B> Service<Req> for CircuitBreakerEos<S, C, R>
where
    S: Service<Req, Response = http::Response<B>>,
    C: ClassifyResponse<B, S::Error> + Clone,
    R: OnReject<http::Response<B>, S::Error> + Clone,
{
    type Response = http::Response<ClassifiedBody<B, C::Eos>>;
    type Error = R::Error;
    type Future = EosResponseFuture<S::Future, C, R>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        match self.inner.poll_admission(cx) {
            Poll::Ready(Ok(())) => Poll::Ready(Ok(())),
            Poll::Pending => Poll::Pending,
            Poll::Ready(Err(e)) => Poll::Ready(Err(self.inner.reject_ref().convert(e))),
        }
    }

    fn call(&mut self, req: Req) -> Self::Future {
        let reject = self.inner.reject_ref().clone();
        match self.inner.call_admitted(req) {
            Ok((future, guard)) => {
                EosResponseFuture::called(future, guard, self.inner.classify_ref().clone(), reject)
            }
            Err(rejected) => EosResponseFuture::rejected(rejected, reject),
        }
    }
}
