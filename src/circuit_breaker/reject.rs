//! What a [`CircuitBreaker`](super::CircuitBreaker) service returns for a
//! call it does not admit.
//!
//! - [`RejectWithError`] (the default): `Err(BoxError)` holding a
//!   [`Rejected`] (zero-sized: no allocation). The service's error type
//!   becomes `BoxError`.
//! - [`RejectWithResponse`]: an HTTP response built by a [`RejectResponse`],
//!   by default [`DefaultRejectResponse`] (`503 Service Unavailable` with
//!   `Retry-After`). The inner service's error type is kept, so axum's
//!   `Infallible` still holds.

use http::{HeaderValue, Response, StatusCode, header};

use super::{Rejected, Rejection};
use crate::BoxError;

/// Turns a rejection into the service's result, and the inner service's
/// errors into the service's error type.
pub trait OnReject<Res, E> {
    /// The error type of the wrapped service.
    type Error;

    /// The result for a call that was not admitted.
    fn reject(&self, rejected: Rejection) -> Result<Res, Self::Error>;

    /// Converts an error of the inner service.
    fn convert(&self, error: E) -> Self::Error;
}

/// Rejects with `Err(BoxError)` holding a [`Rejected`]: zero-sized, so the
/// box allocates nothing.
#[derive(Clone, Copy, Debug, Default)]
pub struct RejectWithError;

impl<Res, E> OnReject<Res, E> for RejectWithError
where
    E: Into<BoxError>,
{
    type Error = BoxError;

    #[inline]
    fn reject(&self, rejected: Rejection) -> Result<Res, BoxError> {
        Err(Box::new(Rejected::from(rejected)))
    }

    #[inline]
    fn convert(&self, error: E) -> BoxError {
        error.into()
    }
}

/// Builds the HTTP response for a rejected call.
pub trait RejectResponse<B> {
    /// The response to send instead of calling the inner service.
    fn response(&self, rejected: &Rejection) -> Response<B>;
}

impl<B, F> RejectResponse<B> for F
where
    F: Fn(&Rejection) -> Response<B>,
{
    fn response(&self, rejected: &Rejection) -> Response<B> {
        self(rejected)
    }
}

/// `503 Service Unavailable` with an empty body and, while open,
/// `Retry-After` in whole seconds (rounded up).
#[derive(Clone, Copy, Debug, Default)]
pub struct DefaultRejectResponse;

impl<B: Default> RejectResponse<B> for DefaultRejectResponse {
    fn response(&self, rejected: &Rejection) -> Response<B> {
        let mut response = Response::new(B::default());
        *response.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
        if let Some(after) = rejected.retry_after() {
            let secs = after.as_secs() + u64::from(after.subsec_nanos() > 0);
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs.max(1)));
        }
        response
    }
}

/// Rejects with an HTTP response from `F`, keeping the inner error type.
#[derive(Clone, Copy, Debug, Default)]
pub struct RejectWithResponse<F = DefaultRejectResponse> {
    response: F,
}

impl<F> RejectWithResponse<F> {
    /// Rejects with the responses `response` builds.
    pub fn new(response: F) -> Self {
        Self { response }
    }
}

impl<B, E, F> OnReject<Response<B>, E> for RejectWithResponse<F>
where
    F: RejectResponse<B>,
{
    type Error = E;

    fn reject(&self, rejected: Rejection) -> Result<Response<B>, E> {
        let mut response = self.response.response(&rejected);
        // Marks the answer as a refusal, so that a retry policy outside the
        // breaker does not retry it (`crate::retry`).
        response.extensions_mut().insert(rejected);
        Ok(response)
    }

    #[inline]
    fn convert(&self, error: E) -> E {
        error
    }
}
