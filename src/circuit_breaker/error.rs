//! Error types.

use std::fmt;
use std::time::Duration;

use super::State;

/// A call was not admitted because the circuit is open.
///
/// Returned as the error of a [`CircuitBreaker`](super::CircuitBreaker)
/// service (inside a `BoxError`: test it with `err.is::<Rejected>()`) and by
/// [`Breaker::call`](super::Breaker::call).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rejected {
    pub(crate) state: State,
    pub(crate) retry_after: Option<Duration>,
}

impl Rejected {
    /// The state that rejected the call: `Open`, `HalfOpen` (all probe
    /// permits in use) or `ForcedOpen`.
    pub fn state(&self) -> State {
        self.state
    }

    /// How long until the next probe is admitted, when known (`Open`).
    pub fn retry_after(&self) -> Option<Duration> {
        self.retry_after
    }
}

impl fmt::Display for Rejected {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.state, self.retry_after) {
            (State::Open, Some(after)) => {
                write!(
                    f,
                    "circuit breaker is open; next probe in {:.3}s",
                    after.as_secs_f64()
                )
            }
            (State::HalfOpen, _) => {
                f.write_str("circuit breaker is half-open and all probe permits are in use")
            }
            (State::ForcedOpen, _) => f.write_str("circuit breaker is forced open"),
            _ => f.write_str("circuit breaker is open"),
        }
    }
}

impl std::error::Error for Rejected {}

/// The error of [`Breaker::call`](super::Breaker::call): rejected, or the
/// call's own error.
#[derive(Debug, PartialEq, Eq)]
pub enum CallError<E> {
    /// The breaker did not admit the call; the future was never polled.
    Rejected(Rejected),
    /// The call ran and failed.
    Inner(E),
}

impl<E> CallError<E> {
    /// Whether the breaker rejected the call.
    pub fn is_rejected(&self) -> bool {
        matches!(self, Self::Rejected(_))
    }

    /// The call's own error, if it ran.
    pub fn into_inner(self) -> Option<E> {
        match self {
            Self::Inner(e) => Some(e),
            Self::Rejected(_) => None,
        }
    }
}

impl<E: fmt::Display> fmt::Display for CallError<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Rejected(r) => r.fmt(f),
            Self::Inner(e) => e.fmt(f),
        }
    }
}

impl<E: std::error::Error + 'static> std::error::Error for CallError<E> {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::Rejected(r) => Some(r),
            Self::Inner(e) => Some(e),
        }
    }
}
