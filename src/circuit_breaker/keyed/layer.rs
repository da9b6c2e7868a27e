use std::fmt;

use tower_layer::Layer;

use super::{KeyedBreaker, KeyedCircuitBreaker};
use crate::circuit_breaker::reject::{DefaultRejectResponse, RejectWithError, RejectWithResponse};
use crate::classify::ErrorsAsFailures;

/// Applies a shared [`KeyedBreaker`] to a service: each call is guarded by
/// the breaker of its key.
///
/// Made with [`KeyedBreaker::layer`]. Like
/// [`CircuitBreakerLayer`](crate::circuit_breaker::CircuitBreakerLayer), it
/// holds a handle, not state: every service it makes shares the registry.
#[derive(Clone)]
pub struct KeyedCircuitBreakerLayer<K, F, C = ErrorsAsFailures, R = RejectWithError> {
    keyed: KeyedBreaker<K>,
    extract: F,
    classify: C,
    reject: R,
}

impl<K, F> KeyedCircuitBreakerLayer<K, F> {
    pub(crate) fn new(keyed: KeyedBreaker<K>, extract: F) -> Self {
        Self {
            keyed,
            extract,
            classify: ErrorsAsFailures,
            reject: RejectWithError,
        }
    }
}

impl<K, F, C, R> KeyedCircuitBreakerLayer<K, F, C, R> {
    /// Classifies outcomes with `classify` instead of [`ErrorsAsFailures`].
    pub fn classify<C2>(self, classify: C2) -> KeyedCircuitBreakerLayer<K, F, C2, R> {
        KeyedCircuitBreakerLayer {
            keyed: self.keyed,
            extract: self.extract,
            classify,
            reject: self.reject,
        }
    }

    /// Answers rejected HTTP calls with `503 Service Unavailable` and
    /// `Retry-After` instead of an error, keeping the inner error type.
    pub fn reject_with_response(self) -> KeyedCircuitBreakerLayer<K, F, C, RejectWithResponse> {
        self.on_reject(RejectWithResponse::new(DefaultRejectResponse))
    }

    /// Decides what a rejected call returns: see
    /// [`reject`](crate::circuit_breaker::reject).
    pub fn on_reject<R2>(self, reject: R2) -> KeyedCircuitBreakerLayer<K, F, C, R2> {
        KeyedCircuitBreakerLayer {
            keyed: self.keyed,
            extract: self.extract,
            classify: self.classify,
            reject,
        }
    }

    /// The registry this layer reports to.
    pub fn keyed(&self) -> &KeyedBreaker<K> {
        &self.keyed
    }
}

impl<S, K, F: Clone, C: Clone, R: Clone> Layer<S> for KeyedCircuitBreakerLayer<K, F, C, R> {
    type Service = KeyedCircuitBreaker<S, K, F, C, R>;

    fn layer(&self, inner: S) -> Self::Service {
        KeyedCircuitBreaker {
            inner,
            keyed: self.keyed.clone(),
            extract: self.extract.clone(),
            classify: self.classify.clone(),
            reject: self.reject.clone(),
        }
    }
}

impl<K, F, C, R> fmt::Debug for KeyedCircuitBreakerLayer<K, F, C, R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyedCircuitBreakerLayer")
            .field("keyed", &self.keyed)
            .finish_non_exhaustive()
    }
}
