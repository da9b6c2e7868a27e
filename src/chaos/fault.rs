//! What an [`InjectFaults`](super::InjectFaults) service returns for a call
//! it fails on purpose.
//!
//! - [`FaultWithError`] (the default): `Err(BoxError)` holding the
//!   [`Injected`]. The service's error type becomes `BoxError`.
//! - [`FaultWithResponse`]: an HTTP response built by a [`FaultResponse`],
//!   by default [`DefaultFaultResponse`] (the rehearsal's status, `503` if
//!   it set none, and an empty body). The inner service's error type is
//!   kept, so axum's `Infallible` still holds.

use http::{Response, StatusCode};

use super::Injected;
use crate::BoxError;

/// Turns an injected fault into the service's result, and the inner
/// service's errors into the service's error type.
pub trait OnFault<Res, E> {
    /// The error type of the wrapped service.
    type Error;

    /// The result of a call failed on purpose.
    fn fault(&self, injected: Injected) -> Result<Res, Self::Error>;

    /// Converts an error of the inner service.
    fn convert(&self, error: E) -> Self::Error;
}

/// Fails with `Err(BoxError)` holding the [`Injected`].
#[derive(Clone, Copy, Debug, Default)]
pub struct FaultWithError;

impl<Res, E> OnFault<Res, E> for FaultWithError
where
    E: Into<BoxError>,
{
    type Error = BoxError;

    fn fault(&self, injected: Injected) -> Result<Res, BoxError> {
        Err(Box::new(injected))
    }

    #[inline]
    fn convert(&self, error: E) -> BoxError {
        error.into()
    }
}

/// Builds the HTTP response for a call failed on purpose.
pub trait FaultResponse<B> {
    /// The response to send instead of calling the inner service.
    fn response(&self, injected: &Injected) -> Response<B>;
}

impl<B, F> FaultResponse<B> for F
where
    F: Fn(&Injected) -> Response<B>,
{
    fn response(&self, injected: &Injected) -> Response<B> {
        self(injected)
    }
}

/// The rehearsal's [`status`](super::Faults::status) (`503 Service
/// Unavailable` if it set none) with an empty body.
#[derive(Clone, Copy, Debug, Default)]
pub struct DefaultFaultResponse;

impl<B: Default> FaultResponse<B> for DefaultFaultResponse {
    fn response(&self, injected: &Injected) -> Response<B> {
        let mut response = Response::new(B::default());
        *response.status_mut() = injected.status().unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
        response
    }
}

/// Fails with an HTTP response from `F`, keeping the inner error type; the
/// [`Injected`] goes in the response's extensions.
#[derive(Clone, Copy, Debug, Default)]
pub struct FaultWithResponse<F = DefaultFaultResponse> {
    response: F,
}

impl<F> FaultWithResponse<F> {
    /// Fails with the responses `response` builds.
    pub fn new(response: F) -> Self {
        Self { response }
    }
}

impl<B, E, F> OnFault<Response<B>, E> for FaultWithResponse<F>
where
    F: FaultResponse<B>,
{
    type Error = E;

    fn fault(&self, injected: Injected) -> Result<Response<B>, E> {
        let mut response = self.response.response(&injected);
        response.extensions_mut().insert(injected);
        Ok(response)
    }

    #[inline]
    fn convert(&self, error: E) -> E {
        error
    }
}
