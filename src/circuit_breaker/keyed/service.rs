use std::fmt;
use std::task::{Context, Poll};

use tower_service::Service;

use super::{ExtractKey, Key, KeyedBreaker};
use crate::circuit_breaker::future::{Guard, ResponseFuture};
use crate::circuit_breaker::reject::OnReject;
use crate::classify::Classify;

/// A service guarded by one breaker per key. Made by
/// [`KeyedCircuitBreakerLayer`](super::KeyedCircuitBreakerLayer).
///
/// The key is known only once the request is: `poll_ready` drives the
/// inner service's readiness and nothing else, and admission is decided in
/// `call`. A rejected call gets the same answer as from a
/// [`CircuitBreaker`](crate::circuit_breaker::CircuitBreaker) (a
/// [`Rejected`](crate::circuit_breaker::Rejected) error, or the `503` of
/// [`reject_with_response`](super::KeyedCircuitBreakerLayer::reject_with_response)),
/// without calling the inner service; the readiness it was given stays
/// with this service for its next call.
pub struct KeyedCircuitBreaker<S, K, F, C, R> {
    pub(super) inner: S,
    pub(super) keyed: KeyedBreaker<K>,
    pub(super) extract: F,
    pub(super) classify: C,
    pub(super) reject: R,
}

impl<S, K, F, C, R> KeyedCircuitBreaker<S, K, F, C, R> {
    /// The registry this service reports to.
    pub fn keyed(&self) -> &KeyedBreaker<K> {
        &self.keyed
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

impl<S: Clone, K, F: Clone, C: Clone, R: Clone> Clone for KeyedCircuitBreaker<S, K, F, C, R> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            keyed: self.keyed.clone(),
            extract: self.extract.clone(),
            classify: self.classify.clone(),
            reject: self.reject.clone(),
        }
    }
}

impl<S: fmt::Debug, K, F, C, R> fmt::Debug for KeyedCircuitBreaker<S, K, F, C, R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyedCircuitBreaker")
            .field("inner", &self.inner)
            .field("keyed", &self.keyed)
            .finish_non_exhaustive()
    }
}

impl<S, K, F, C, R, Req> Service<Req> for KeyedCircuitBreaker<S, K, F, C, R>
where
    S: Service<Req>,
    K: Key,
    F: ExtractKey<Req, Key = K>,
    C: Classify<S::Response, S::Error> + Clone,
    R: OnReject<S::Response, S::Error> + Clone,
{
    type Response = S::Response;
    type Error = R::Error;
    type Future = ResponseFuture<S::Future, C, R>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner
            .poll_ready(cx)
            .map_err(|e| self.reject.convert(e))
    }

    #[inline]
    fn call(&mut self, req: Req) -> Self::Future {
        let key = self.extract.extract_key(&req);
        match self.keyed.admit(&key) {
            Ok((lease, ticket)) => {
                // Made before the inner call: if it panics, the guard
                // gives the admission back.
                let guard = Guard::new(lease, ticket);
                let future = self.inner.call(req);
                ResponseFuture::called(future, guard, self.classify.clone(), self.reject.clone())
            }
            Err(rejected) => ResponseFuture::rejected(rejected, self.reject.clone()),
        }
    }
}
