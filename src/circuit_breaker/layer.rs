use std::fmt;

use tower_layer::Layer;

use super::reject::{DefaultRejectResponse, RejectWithError, RejectWithResponse};
use super::{Breaker, CircuitBreaker, CircuitBreakerEosLayer};
use crate::classify::ErrorsAsFailures;

/// Applies a shared [`Breaker`] to a service.
///
/// Made with [`Breaker::layer`]. The layer holds a handle, not a state: every
/// service it produces, however many times it is applied (axum applies route
/// layers per route, and tower stacks are often rebuilt per connection),
/// reports to and is governed by the same breaker.
#[derive(Clone)]
pub struct CircuitBreakerLayer<C = ErrorsAsFailures, R = RejectWithError> {
    breaker: Breaker,
    classify: C,
    reject: R,
    backpressure: bool,
}

impl CircuitBreakerLayer {
    pub(crate) fn new(breaker: Breaker) -> Self {
        Self {
            breaker,
            classify: ErrorsAsFailures,
            reject: RejectWithError,
            backpressure: false,
        }
    }
}

impl<C, R> CircuitBreakerLayer<C, R> {
    /// Classifies outcomes with `classify` instead of [`ErrorsAsFailures`].
    pub fn classify<C2>(self, classify: C2) -> CircuitBreakerLayer<C2, R> {
        CircuitBreakerLayer {
            breaker: self.breaker,
            classify,
            reject: self.reject,
            backpressure: self.backpressure,
        }
    }

    /// Answers rejected HTTP calls with `503 Service Unavailable` and
    /// `Retry-After` instead of an error, keeping the inner error type.
    pub fn reject_with_response(self) -> CircuitBreakerLayer<C, RejectWithResponse> {
        self.on_reject(RejectWithResponse::new(DefaultRejectResponse))
    }

    /// Decides what a rejected call returns: see [`reject`](super::reject).
    pub fn on_reject<R2>(self, reject: R2) -> CircuitBreakerLayer<C, R2> {
        CircuitBreakerLayer {
            breaker: self.breaker,
            classify: self.classify,
            reject,
            backpressure: self.backpressure,
        }
    }

    /// Backpressure mode: instead of admitting and rejecting in `call`,
    /// `poll_ready` returns `Pending` until the breaker admits calls again
    /// (for balancers, which route around services that are not ready).
    pub fn backpressure(mut self) -> Self {
        self.backpressure = true;
        self
    }

    /// The breaker this layer reports to.
    pub fn breaker(&self) -> &Breaker {
        &self.breaker
    }

    /// Classifies HTTP responses with a [`ClassifyResponse`], whose outcome
    /// may be decided only at the end of the body (gRPC's trailers): the
    /// services wrap response bodies in a
    /// [`ClassifiedBody`](super::future::ClassifiedBody) that records it.
    /// Keeps this layer's rejection and backpressure settings.
    ///
    /// See [`Breaker::grpc_layer`] for gRPC.
    ///
    /// [`ClassifyResponse`]: crate::classify::ClassifyResponse
    pub fn classify_eos<C2>(self, classify: C2) -> CircuitBreakerEosLayer<C2, R> {
        CircuitBreakerEosLayer::new(self.classify(classify))
    }
}

impl<S, C: Clone, R: Clone> Layer<S> for CircuitBreakerLayer<C, R> {
    type Service = CircuitBreaker<S, C, R>;

    fn layer(&self, inner: S) -> Self::Service {
        CircuitBreaker::from_parts(
            inner,
            self.breaker.clone(),
            self.classify.clone(),
            self.reject.clone(),
            self.backpressure,
        )
    }
}

impl<C, R> fmt::Debug for CircuitBreakerLayer<C, R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CircuitBreakerLayer")
            .field("breaker", &self.breaker.name())
            .field("backpressure", &self.backpressure)
            .finish_non_exhaustive()
    }
}
