//! gRPC responses: `grpc-status` in the response head or in the trailers.
//!
//! # Why
//!
//! A gRPC call answers HTTP `200 OK` whether it worked or not: its outcome
//! is the `grpc-status` field. A server that fails at once sends it in the
//! response headers (a *Trailers-Only* response, how most errors arrive);
//! a call that returns a message sends it in the trailers, after the body.
//! [`HttpErrorsAsFailures`](super::HttpErrorsAsFailures) sees only `200`.
//! [`GrpcErrorsAsFailures`] reads the status.
//!
//! - As a [`Classify`] (with [`CircuitBreakerLayer::classify`]), it reads
//!   the head only: a `grpc-status` in the headers decides; a `200` without
//!   one counts as a success when the head arrives, whatever the trailers
//!   say later.
//! - As a [`ClassifyResponse`] (with [`Breaker::grpc_layer`] or
//!   [`CircuitBreakerLayer::classify_eos`]), a `200` without a status in
//!   its head is decided at the end of its body, by the trailers: the
//!   breaker wraps the body and records the outcome when the trailers
//!   arrive.
//!
//! ```
//! use http::{HeaderMap, Response};
//! use tower_recovery::classify::{Classify, ClassifyEos, ClassifyResponse, Classified, Outcome};
//! use tower_recovery::classify::grpc::{GrpcCode, GrpcErrorsAsFailures};
//!
//! let classify = GrpcErrorsAsFailures::new();
//!
//! // Trailers-Only: the status is in the head.
//! let unavailable: Result<_, std::io::Error> =
//!     Ok(Response::builder().header("grpc-status", "14").body(()).unwrap());
//! assert_eq!(classify.classify(&unavailable), Outcome::Failure);
//!
//! // A message: the status comes in the trailers.
//! let ok: Result<_, std::io::Error> = Ok(Response::new(()));
//! let Classified::RequiresEos(eos) = classify.classify_response(&ok) else { panic!() };
//! let mut trailers = HeaderMap::new();
//! trailers.insert("grpc-status", "3".parse().unwrap()); // INVALID_ARGUMENT
//! assert_eq!(eos.classify_eos(Some(&trailers)), Outcome::Success);
//!
//! // The codes are configurable.
//! let classify = classify.with_failure(GrpcCode::ResourceExhausted);
//! assert_eq!(classify.outcome(GrpcCode::ResourceExhausted), Outcome::Failure);
//! ```
//!
//! # Which codes are failures
//!
//! | code | outcome | why |
//! |---|---|---|
//! | `UNAVAILABLE` (14), `DEADLINE_EXCEEDED` (4), `INTERNAL` (13), `UNKNOWN` (2), `DATA_LOSS` (15) | failure | the server or the way to it failed, or did not answer in time |
//! | `CANCELLED` (1) | not counted ([`Outcome::Ignore`]) | usually the caller gave up; says nothing of the server |
//! | `RESOURCE_EXHAUSTED` (8) | success, [`with_failure`](GrpcErrorsAsFailures::with_failure) to count it | a quota or rate limit for this caller, or a message larger than the limit: the caller's, like a `429` for [`HttpErrorsAsFailures`](super::HttpErrorsAsFailures) |
//! | `OK` and the caller's codes: `INVALID_ARGUMENT`, `NOT_FOUND`, `ALREADY_EXISTS`, `PERMISSION_DENIED`, `UNAUTHENTICATED`, `FAILED_PRECONDITION`, `ABORTED`, `OUT_OF_RANGE`, `UNIMPLEMENTED` | success | the server answered |
//! | a code above 16, or a `grpc-status` that is not a number | as `UNKNOWN` | what the gRPC spec says to do with them |
//! | no `grpc-status` at the end of the body, or an error frame (a reset stream, a lost connection) | failure | a stream cut short or an answer that is not gRPC |
//! | no `grpc-status` in a non-`200` head | as the gRPC spec maps the HTTP status: `429`, `502`, `503`, `504` as `UNAVAILABLE`, `401` `UNAUTHENTICATED`, `403` `PERMISSION_DENIED`, `404` `UNIMPLEMENTED`, `400` `INTERNAL`, others `UNKNOWN` | a proxy answered instead of the server |
//!
//! The caller's codes count as *successes*, not as ignored: the server
//! answered, which is what a half-open probe wants to know. This is what a
//! `4xx` is for [`HttpErrorsAsFailures`](super::HttpErrorsAsFailures), and
//! [`GrpcErrorsAsFailures::with_ignored`] changes it code by code.
//!
//! A body dropped before its end (a stream the caller abandoned) records
//! nothing: the call is given back, as a dropped response future is.
//!
//! [`Classify`]: super::Classify
//! [`ClassifyResponse`]: super::ClassifyResponse
//! [`Breaker::grpc_layer`]: crate::circuit_breaker::Breaker::grpc_layer
//! [`CircuitBreakerLayer::classify`]: crate::circuit_breaker::CircuitBreakerLayer::classify
//! [`CircuitBreakerLayer::classify_eos`]: crate::circuit_breaker::CircuitBreakerLayer::classify_eos

use http::{HeaderMap, StatusCode};

use super::{Classified, Classify, ClassifyEos, ClassifyResponse, Outcome};

/// The name of the header and trailer that carries a gRPC call's status.
pub const GRPC_STATUS: &str = "grpc-status";

/// A gRPC status code.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
#[repr(u8)]
pub enum GrpcCode {
    /// `OK` (0).
    Ok = 0,
    /// `CANCELLED` (1).
    Cancelled = 1,
    /// `UNKNOWN` (2).
    Unknown = 2,
    /// `INVALID_ARGUMENT` (3).
    InvalidArgument = 3,
    /// `DEADLINE_EXCEEDED` (4).
    DeadlineExceeded = 4,
    /// `NOT_FOUND` (5).
    NotFound = 5,
    /// `ALREADY_EXISTS` (6).
    AlreadyExists = 6,
    /// `PERMISSION_DENIED` (7).
    PermissionDenied = 7,
    /// `RESOURCE_EXHAUSTED` (8).
    ResourceExhausted = 8,
    /// `FAILED_PRECONDITION` (9).
    FailedPrecondition = 9,
    /// `ABORTED` (10).
    Aborted = 10,
    /// `OUT_OF_RANGE` (11).
    OutOfRange = 11,
    /// `UNIMPLEMENTED` (12).
    Unimplemented = 12,
    /// `INTERNAL` (13).
    Internal = 13,
    /// `UNAVAILABLE` (14).
    Unavailable = 14,
    /// `DATA_LOSS` (15).
    DataLoss = 15,
    /// `UNAUTHENTICATED` (16).
    Unauthenticated = 16,
}

impl GrpcCode {
    const ALL: [GrpcCode; 17] = [
        GrpcCode::Ok,
        GrpcCode::Cancelled,
        GrpcCode::Unknown,
        GrpcCode::InvalidArgument,
        GrpcCode::DeadlineExceeded,
        GrpcCode::NotFound,
        GrpcCode::AlreadyExists,
        GrpcCode::PermissionDenied,
        GrpcCode::ResourceExhausted,
        GrpcCode::FailedPrecondition,
        GrpcCode::Aborted,
        GrpcCode::OutOfRange,
        GrpcCode::Unimplemented,
        GrpcCode::Internal,
        GrpcCode::Unavailable,
        GrpcCode::DataLoss,
        GrpcCode::Unauthenticated,
    ];

    /// The code for a number; numbers above 16 are `UNKNOWN`, as the gRPC
    /// spec says.
    pub fn from_u32(code: u32) -> Self {
        usize::try_from(code)
            .ok()
            .and_then(|i| Self::ALL.get(i).copied())
            .unwrap_or(GrpcCode::Unknown)
    }

    /// The code of a `grpc-status` value: `UNKNOWN` if it is not a number.
    pub fn from_bytes(value: &[u8]) -> Self {
        if value.is_empty() || value.len() > 9 || !value.iter().all(u8::is_ascii_digit) {
            return GrpcCode::Unknown;
        }
        let n = value.iter().fold(0u32, |n, d| n * 10 + u32::from(d - b'0'));
        Self::from_u32(n)
    }

    /// The code the gRPC spec gives a response without `grpc-status` that
    /// has this HTTP status (`None` for `200`: the status is still to come).
    pub fn from_http_status(status: StatusCode) -> Option<Self> {
        Some(match status.as_u16() {
            200 => return None,
            400 => GrpcCode::Internal,
            401 => GrpcCode::Unauthenticated,
            403 => GrpcCode::PermissionDenied,
            404 => GrpcCode::Unimplemented,
            429 | 502 | 503 | 504 => GrpcCode::Unavailable,
            _ => GrpcCode::Unknown,
        })
    }

    /// The code's number.
    pub fn as_u32(self) -> u32 {
        self as u32
    }

    fn bit(self) -> u32 {
        1 << (self as u32)
    }
}

/// Classifies gRPC responses by their `grpc-status`. See the
/// [module docs](self).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GrpcErrorsAsFailures {
    /// One bit per code.
    failures: u32,
    ignored: u32,
}

impl Default for GrpcErrorsAsFailures {
    fn default() -> Self {
        Self::new()
    }
}

impl GrpcErrorsAsFailures {
    /// Failures: `UNAVAILABLE`, `DEADLINE_EXCEEDED`, `INTERNAL`, `UNKNOWN`,
    /// `DATA_LOSS`; `CANCELLED` not counted; every other code a success.
    pub const fn new() -> Self {
        const fn bit(code: GrpcCode) -> u32 {
            1 << (code as u32)
        }
        Self {
            failures: bit(GrpcCode::Unavailable)
                | bit(GrpcCode::DeadlineExceeded)
                | bit(GrpcCode::Internal)
                | bit(GrpcCode::Unknown)
                | bit(GrpcCode::DataLoss),
            ignored: bit(GrpcCode::Cancelled),
        }
    }

    /// Also counts `code` as a failure (`RESOURCE_EXHAUSTED`, say).
    pub fn with_failure(mut self, code: GrpcCode) -> Self {
        self.failures |= code.bit();
        self.ignored &= !code.bit();
        self
    }

    /// Counts `code` as a success (the server answered).
    pub fn with_success(mut self, code: GrpcCode) -> Self {
        self.failures &= !code.bit();
        self.ignored &= !code.bit();
        self
    }

    /// Does not count `code` at all.
    pub fn with_ignored(mut self, code: GrpcCode) -> Self {
        self.failures &= !code.bit();
        self.ignored |= code.bit();
        self
    }

    /// The outcome of a call that ended with `code`.
    #[inline]
    pub fn outcome(&self, code: GrpcCode) -> Outcome {
        if self.failures & code.bit() != 0 {
            Outcome::Failure
        } else if self.ignored & code.bit() != 0 {
            Outcome::Ignore
        } else {
            Outcome::Success
        }
    }

    /// The outcome `grpc-status` in `map` gives, if it has one.
    #[inline]
    fn status_in(&self, map: &HeaderMap) -> Option<Outcome> {
        map.get(GRPC_STATUS)
            .map(|value| self.outcome(GrpcCode::from_bytes(value.as_bytes())))
    }

    /// The outcome the head gives, or `None` to wait for the trailers.
    #[inline]
    fn head<B, E>(&self, result: &Result<http::Response<B>, E>) -> Option<Outcome> {
        match result {
            Err(_) => Some(Outcome::Failure),
            Ok(response) => self.status_in(response.headers()).or_else(|| {
                GrpcCode::from_http_status(response.status()).map(|code| self.outcome(code))
            }),
        }
    }
}

/// Reads the head only: a `200` without `grpc-status` is a success.
impl<B, E> Classify<http::Response<B>, E> for GrpcErrorsAsFailures {
    #[inline]
    fn classify(&self, result: &Result<http::Response<B>, E>) -> Outcome {
        self.head(result).unwrap_or(Outcome::Success)
    }
}

/// Reads the head, and the trailers when the head has no status.
impl<B, E> ClassifyResponse<B, E> for GrpcErrorsAsFailures {
    type Eos = Self;

    #[inline]
    fn classify_response(&self, result: &Result<http::Response<B>, E>) -> Classified<Self> {
        match self.head(result) {
            Some(outcome) => Classified::Ready(outcome),
            None => Classified::RequiresEos(*self),
        }
    }
}

impl ClassifyEos for GrpcErrorsAsFailures {
    fn classify_eos(self, trailers: Option<&HeaderMap>) -> Outcome {
        trailers
            .and_then(|t| self.status_in(t))
            // No status at the end: a stream cut short, or not gRPC.
            .unwrap_or(Outcome::Failure)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(status: u16, grpc: Option<&str>) -> Result<http::Response<()>, ()> {
        let mut b = http::Response::builder().status(status);
        if let Some(g) = grpc {
            b = b.header(GRPC_STATUS, g);
        }
        Ok(b.body(()).unwrap())
    }

    #[test]
    fn codes() {
        let c = GrpcErrorsAsFailures::new();
        for n in 0..=20u32 {
            let expected = match n {
                2 | 4 | 13 | 14 | 15 | 17.. => Outcome::Failure,
                1 => Outcome::Ignore,
                _ => Outcome::Success,
            };
            let value = n.to_string();
            assert_eq!(c.classify(&head(200, Some(&value))), expected, "code {n}");
        }
        assert_eq!(c.classify(&head(200, Some("x"))), Outcome::Failure);
        assert_eq!(c.classify(&head(200, Some(""))), Outcome::Failure);
        assert_eq!(
            c.classify(&head(200, Some("99999999999"))),
            Outcome::Failure
        );
        assert_eq!(
            c.classify(&Err::<http::Response<()>, _>(())),
            Outcome::Failure
        );
    }

    #[test]
    fn http_status_without_grpc_status() {
        let c = GrpcErrorsAsFailures::new();
        assert_eq!(c.classify(&head(200, None)), Outcome::Success);
        assert!(matches!(
            c.classify_response(&head(200, None)),
            Classified::RequiresEos(_)
        ));
        for (status, expected) in [
            (503, Outcome::Failure),
            (502, Outcome::Failure),
            (429, Outcome::Failure),
            (500, Outcome::Failure),
            (404, Outcome::Success),
            (401, Outcome::Success),
            (400, Outcome::Failure),
        ] {
            assert_eq!(c.classify(&head(status, None)), expected, "{status}");
        }
        // A status in the head wins over the HTTP status.
        assert_eq!(c.classify(&head(503, Some("0"))), Outcome::Success);
    }

    #[test]
    fn trailers() {
        let c = GrpcErrorsAsFailures::new();
        let mut t = HeaderMap::new();
        t.insert(GRPC_STATUS, "14".parse().unwrap());
        assert_eq!(c.classify_eos(Some(&t)), Outcome::Failure);
        t.insert(GRPC_STATUS, "0".parse().unwrap());
        assert_eq!(c.classify_eos(Some(&t)), Outcome::Success);
        assert_eq!(c.classify_eos(Some(&HeaderMap::new())), Outcome::Failure);
        assert_eq!(c.classify_eos(None), Outcome::Failure);
        assert_eq!(c.classify_error(), Outcome::Failure);
    }

    #[test]
    fn configurable() {
        let c = GrpcErrorsAsFailures::new()
            .with_failure(GrpcCode::ResourceExhausted)
            .with_success(GrpcCode::Unknown)
            .with_ignored(GrpcCode::Unimplemented)
            .with_failure(GrpcCode::Cancelled);
        assert_eq!(c.outcome(GrpcCode::ResourceExhausted), Outcome::Failure);
        assert_eq!(c.outcome(GrpcCode::Unknown), Outcome::Success);
        assert_eq!(c.outcome(GrpcCode::Unimplemented), Outcome::Ignore);
        assert_eq!(c.outcome(GrpcCode::Cancelled), Outcome::Failure);
        assert_eq!(GrpcCode::from_u32(14).as_u32(), 14);
    }
}
