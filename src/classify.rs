//! Deciding whether a call succeeded, failed or should not count.
//!
//! A breaker (and the recovery trigger layer) must know what a failure is, and
//! that is a property of the dependency, not of the trip policy: a model server
//! that answers `503` has failed even though the HTTP call returned `Ok`, and a
//! `404` from a lookup is a perfectly healthy answer. [`Classify`] answers one
//! question per finished call, [`Outcome::Success`], [`Outcome::Failure`] or
//! [`Outcome::Ignore`], by looking at the `Result` by reference. It never
//! allocates and never consumes the response.
//!
//! Provided classifiers:
//!
//! - [`ErrorsAsFailures`], the default: `Err` is a failure, `Ok` a success.
//! - [`HttpErrorsAsFailures`]: `Err` and `5xx` are failures; optionally
//!   `429 Too Many Requests` too. Works on [`http::Response`] out of the box
//!   and on any other response type (reqwest's, say) through a status accessor.
//! - Any closure `Fn(&Result<T, E>) -> Outcome`.
//! - With the `tower-http` feature, [`TowerHttpClassifier`] adapts
//!   `tower_http::classify` classifiers.
//! - With the `sqlx` feature, [`SqlxErrorsAsFailures`](sqlx::SqlxErrorsAsFailures)
//!   splits database errors into the database's failures (connection,
//!   pool, I/O, timeouts, shutdown) and the caller's errors (constraints,
//!   data too long, syntax), which never open a breaker or start a
//!   recovery: see [`sqlx`](mod@sqlx).
//! - [`GrpcErrorsAsFailures`](grpc::GrpcErrorsAsFailures) reads gRPC's
//!   `grpc-status` in the response head and, through [`ClassifyResponse`],
//!   in the trailers at the end of the body: see [`grpc`].
//!
//! # Outcomes that arrive with the end of the body
//!
//! A [`Classify`] decides when the response future resolves, from the
//! response head. Some protocols say how a call went only at the end of the
//! body: gRPC puts its status in the trailers. [`ClassifyResponse`] looks
//! at the head and either decides ([`Classified::Ready`]) or hands a
//! [`ClassifyEos`] to the body ([`Classified::RequiresEos`]), which decides
//! on the trailers, the end of the stream or an error frame. A breaker
//! built with [`CircuitBreakerLayer::classify_eos`] or
//! [`Breaker::grpc_layer`] wraps the response body to record that outcome;
//! a body dropped before its end records nothing. (The same shape as
//! `tower_http::classify::ClassifyResponse`.)
//!
//! [`CircuitBreakerLayer::classify_eos`]: crate::circuit_breaker::CircuitBreakerLayer::classify_eos
//! [`Breaker::grpc_layer`]: crate::circuit_breaker::Breaker::grpc_layer
//!
//! ```
//! use http::{Response, StatusCode};
//! use tower_recovery::classify::{Classify, Outcome, HttpErrorsAsFailures};
//!
//! let classify = HttpErrorsAsFailures::new().with_too_many_requests();
//! let ok: Result<_, std::io::Error> = Ok(Response::new(()));
//! assert_eq!(classify.classify(&ok), Outcome::Success);
//!
//! let busy: Result<_, std::io::Error> = Ok(Response::builder()
//!     .status(StatusCode::TOO_MANY_REQUESTS)
//!     .body(())
//!     .unwrap());
//! assert_eq!(classify.classify(&busy), Outcome::Failure);
//!
//! // Another response type: tell the classifier where its status is.
//! struct MyResponse { code: u16 }
//! let mine = HttpErrorsAsFailures::new()
//!     .with_status(|r: &MyResponse| StatusCode::from_u16(r.code).unwrap());
//! let bad: Result<_, std::io::Error> = Ok(MyResponse { code: 502 });
//! assert_eq!(mine.classify(&bad), Outcome::Failure);
//! ```

use std::fmt;

use http::StatusCode;

/// What a finished call means for the health of a dependency.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Outcome {
    /// The dependency worked.
    Success,
    /// The dependency failed; counts towards tripping.
    Failure,
    /// Neither: the call is not recorded at all (a client-side cancellation,
    /// a validation error that never reached the dependency, ...).
    Ignore,
}

/// Classifies the result of a call. Must be cheap and must not allocate.
pub trait Classify<T, E> {
    /// Classify one finished call.
    fn classify(&self, result: &Result<T, E>) -> Outcome;

    /// For a call classified as a [`Failure`](Outcome::Failure): how long
    /// the dependency asked callers to stay away (an HTTP `Retry-After`).
    /// A breaker opened by this failure stays open that long (capped; see
    /// `circuit_breaker::Builder::retry_after_cap`). Asked only of
    /// failures, so it costs nothing on the success path. The default
    /// reads nothing.
    fn retry_after(&self, result: &Result<T, E>) -> Option<std::time::Duration> {
        let _ = result;
        None
    }
}

impl<T, E, F> Classify<T, E> for F
where
    F: Fn(&Result<T, E>) -> Outcome,
{
    fn classify(&self, result: &Result<T, E>) -> Outcome {
        self(result)
    }
}

/// What the head of an HTTP response says about a call: see
/// [`ClassifyResponse`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Classified<D> {
    /// The outcome is known now.
    Ready(Outcome),
    /// The outcome is known at the end of the body: `D` decides it.
    RequiresEos(D),
}

/// Classifies HTTP responses whose outcome may arrive only with the end of
/// their body (gRPC's trailers). Must be cheap and must not allocate.
pub trait ClassifyResponse<B, E> {
    /// Decides at the end of the body.
    type Eos: ClassifyEos;

    /// Classify a finished call from its response head (or error).
    fn classify_response(&self, result: &Result<http::Response<B>, E>) -> Classified<Self::Eos>;
}

/// Decides the outcome of a call at the end of its response body.
pub trait ClassifyEos: Sized {
    /// The body ended: with its trailers, if it had any.
    fn classify_eos(self, trailers: Option<&http::HeaderMap>) -> Outcome;

    /// The body failed (a reset stream, a lost connection). A failure by
    /// default.
    fn classify_error(self) -> Outcome {
        Outcome::Failure
    }
}

/// The default classifier: `Err` is a failure, `Ok` a success.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ErrorsAsFailures;

impl ErrorsAsFailures {
    /// Creates the classifier.
    pub const fn new() -> Self {
        Self
    }
}

impl<T, E> Classify<T, E> for ErrorsAsFailures {
    #[inline]
    fn classify(&self, result: &Result<T, E>) -> Outcome {
        match result {
            Ok(_) => Outcome::Success,
            Err(_) => Outcome::Failure,
        }
    }
}

/// Reads the status code of a response type.
///
/// Implemented for [`http::Response`] ([`HttpStatus`]) and for every
/// `Fn(&T) -> StatusCode`, so a foreign response type needs only a closure.
pub trait StatusOf<T> {
    /// The response's `Retry-After`, in seconds, if it has one (the
    /// default reads none; [`HttpStatus`] reads the header).
    fn retry_after(&self, response: &T) -> Option<std::time::Duration> {
        let _ = response;
        None
    }

    /// The response's status code.
    fn status_of(&self, response: &T) -> StatusCode;
}

/// Reads the status of an [`http::Response`].
#[derive(Clone, Copy, Debug, Default)]
pub struct HttpStatus;

impl<B> StatusOf<http::Response<B>> for HttpStatus {
    #[inline]
    fn status_of(&self, response: &http::Response<B>) -> StatusCode {
        response.status()
    }

    fn retry_after(&self, response: &http::Response<B>) -> Option<std::time::Duration> {
        retry_after_header(response.headers())
    }
}

/// The `Retry-After` of `headers` as delta-seconds (an HTTP date is not
/// read: servers asking for a pause almost always send seconds).
pub(crate) fn retry_after_header(headers: &http::HeaderMap) -> Option<std::time::Duration> {
    let value = headers.get(http::header::RETRY_AFTER)?.to_str().ok()?;
    value
        .trim()
        .parse::<u64>()
        .ok()
        .map(std::time::Duration::from_secs)
}

impl<T, F> StatusOf<T> for F
where
    F: Fn(&T) -> StatusCode,
{
    #[inline]
    fn status_of(&self, response: &T) -> StatusCode {
        self(response)
    }
}

/// Classifies `Err` and `5xx` responses as failures, optionally `429` too.
///
/// Every other status, including `4xx`, is a success: the dependency answered
/// and the fault, if any, is the caller's.
#[derive(Clone, Copy, Default)]
pub struct HttpErrorsAsFailures<A = HttpStatus> {
    status: A,
    too_many_requests: bool,
}

impl HttpErrorsAsFailures {
    /// Classifies [`http::Response`]s: `5xx` and `Err` are failures.
    pub const fn new() -> Self {
        Self {
            status: HttpStatus,
            too_many_requests: false,
        }
    }
}

impl<A> HttpErrorsAsFailures<A> {
    /// Also treat `429 Too Many Requests` as a failure.
    pub fn with_too_many_requests(mut self) -> Self {
        self.too_many_requests = true;
        self
    }

    /// Classify another response type, reading its status with `status`.
    pub fn with_status<A2>(self, status: A2) -> HttpErrorsAsFailures<A2> {
        HttpErrorsAsFailures {
            status,
            too_many_requests: self.too_many_requests,
        }
    }

    /// Whether a status code is a failure under this classifier.
    #[inline]
    pub fn is_failure(&self, status: StatusCode) -> bool {
        status.is_server_error()
            || (self.too_many_requests && status == StatusCode::TOO_MANY_REQUESTS)
    }
}

impl<A> fmt::Debug for HttpErrorsAsFailures<A> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HttpErrorsAsFailures")
            .field("too_many_requests", &self.too_many_requests)
            .finish_non_exhaustive()
    }
}

impl<T, E, A> Classify<T, E> for HttpErrorsAsFailures<A>
where
    A: StatusOf<T>,
{
    #[inline]
    fn classify(&self, result: &Result<T, E>) -> Outcome {
        match result {
            Ok(response) if self.is_failure(self.status.status_of(response)) => Outcome::Failure,
            Ok(_) => Outcome::Success,
            Err(_) => Outcome::Failure,
        }
    }

    /// The `Retry-After` of a `429` or `503` answer.
    fn retry_after(&self, result: &Result<T, E>) -> Option<std::time::Duration> {
        match result {
            Ok(response)
                if matches!(
                    self.status.status_of(response),
                    StatusCode::TOO_MANY_REQUESTS | StatusCode::SERVICE_UNAVAILABLE
                ) =>
            {
                self.status.retry_after(response)
            }
            _ => None,
        }
    }
}

#[cfg(feature = "tower-http")]
pub use self::tower_http_adapter::TowerHttpClassifier;

pub mod grpc;

#[cfg(feature = "sqlx")]
#[cfg_attr(docsrs, doc(cfg(feature = "sqlx")))]
pub mod sqlx;

#[cfg(feature = "tower-http")]
mod tower_http_adapter {
    use super::{Classify, Outcome};
    use std::fmt;
    use tower_http::classify::{ClassifiedResponse, ClassifyResponse};

    /// Adapts a [`tower_http::classify::ClassifyResponse`] classifier.
    ///
    /// A response classified as a failure, or an error, is a failure.
    /// Classifiers that can only decide at the end of the stream (gRPC's
    /// trailers) are treated as success at the response head: a breaker
    /// records the outcome when the response future resolves.
    ///
    /// An `Err` is a failure without asking the classifier (whose
    /// `classify_error` would format it into a `String`): nothing allocates.
    #[derive(Clone, Default)]
    pub struct TowerHttpClassifier<C> {
        inner: C,
    }

    impl<C> TowerHttpClassifier<C> {
        /// Wraps a tower-http classifier.
        pub fn new(inner: C) -> Self {
            Self { inner }
        }
    }

    impl<C> fmt::Debug for TowerHttpClassifier<C> {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.debug_struct("TowerHttpClassifier")
                .finish_non_exhaustive()
        }
    }

    impl<C, B, E> Classify<http::Response<B>, E> for TowerHttpClassifier<C>
    where
        C: ClassifyResponse + Clone,
        E: fmt::Display + 'static,
    {
        fn classify(&self, result: &Result<http::Response<B>, E>) -> Outcome {
            match result {
                Ok(response) => match self.inner.clone().classify_response(response) {
                    ClassifiedResponse::Ready(Ok(())) => Outcome::Success,
                    ClassifiedResponse::Ready(Err(_)) => Outcome::Failure,
                    ClassifiedResponse::RequiresEos(_) => Outcome::Success,
                },
                Err(_) => Outcome::Failure,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn response(code: u16) -> Result<http::Response<()>, ()> {
        Ok(http::Response::builder().status(code).body(()).unwrap())
    }

    #[test]
    fn errors_as_failures() {
        assert_eq!(ErrorsAsFailures.classify(&Ok::<_, ()>(1)), Outcome::Success);
        assert_eq!(
            ErrorsAsFailures.classify(&Err::<(), _>(1)),
            Outcome::Failure
        );
    }

    #[test]
    fn server_errors() {
        let c = HttpErrorsAsFailures::new();
        for (code, expected) in [
            (200, Outcome::Success),
            (404, Outcome::Success),
            (429, Outcome::Success),
            (499, Outcome::Success),
            (500, Outcome::Failure),
            (503, Outcome::Failure),
            (599, Outcome::Failure),
        ] {
            assert_eq!(c.classify(&response(code)), expected, "status {code}");
        }
        assert_eq!(
            c.classify(&Err::<http::Response<()>, _>(())),
            Outcome::Failure
        );
        let c = c.with_too_many_requests();
        assert_eq!(c.classify(&response(429)), Outcome::Failure);
        assert_eq!(c.classify(&response(428)), Outcome::Success);
    }

    #[test]
    fn closures_classify() {
        let c = |r: &Result<u8, ()>| match r {
            Ok(0) => Outcome::Ignore,
            Ok(_) => Outcome::Success,
            Err(_) => Outcome::Failure,
        };
        assert_eq!(c.classify(&Ok(0)), Outcome::Ignore);
        assert_eq!(Classify::classify(&c, &Ok(1)), Outcome::Success);
    }

    #[cfg(feature = "tower-http")]
    #[test]
    fn tower_http_adapter() {
        use tower_http::classify::ServerErrorsAsFailures as Th;
        let c = TowerHttpClassifier::new(Th::new());
        let ok: Result<http::Response<()>, std::io::Error> =
            response(204).map_err(|_| unreachable!());
        assert_eq!(c.classify(&ok), Outcome::Success);
        let bad: Result<http::Response<()>, std::io::Error> =
            response(502).map_err(|_| unreachable!());
        assert_eq!(c.classify(&bad), Outcome::Failure);
        let err: Result<http::Response<()>, std::io::Error> = Err(std::io::Error::other("x"));
        assert_eq!(c.classify(&err), Outcome::Failure);
    }
}
