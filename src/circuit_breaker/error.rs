//! Error types.

use std::fmt;
use std::num::NonZeroU64;
use std::time::Duration;

use super::State;

/// The error of a [`CircuitBreaker`](super::CircuitBreaker) service that did
/// not admit a call, inside a `BoxError`: test it with
/// `err.is::<Rejected>()`.
///
/// Zero-sized, like tower's `Overloaded` and `Elapsed`, so that boxing it
/// allocates nothing: a rejection is the hot path of an open breaker. The
/// state that rejected and when to retry are in the [`Rejection`] that
/// [`Breaker::try_acquire`](super::Breaker::try_acquire),
/// [`Breaker::call`](super::Breaker::call) and a custom
/// [`OnReject`](super::OnReject) receive, and in the breaker's
/// [`snapshot`](super::Breaker::snapshot).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rejected {
    _priv: (),
}

impl Rejected {
    pub(crate) const fn new() -> Self {
        Self { _priv: () }
    }
}

impl fmt::Display for Rejected {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("circuit breaker rejected the call")
    }
}

impl std::error::Error for Rejected {}

impl From<Rejection> for Rejected {
    fn from(_: Rejection) -> Self {
        Self::new()
    }
}

/// Why a call was not admitted, and when to retry: what
/// [`Breaker::try_acquire`](super::Breaker::try_acquire) and
/// [`Breaker::call`](super::Breaker::call) return, and what an
/// [`OnReject`](super::OnReject) receives.
///
/// One word (`Option<Rejection>` too): it travels in response futures, which
/// generic callers move by value.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Rejection {
    /// `[retry-after nanoseconds + 1 (0: none) | state index + 1 (3 bits)]`.
    packed: NonZeroU64,
}

const STATES: [State; 5] = [
    State::Closed,
    State::Open,
    State::HalfOpen,
    State::ForcedOpen,
    State::Disabled,
];
const RETRY_MAX: u64 = (1 << 61) - 2;

impl Rejection {
    #[inline]
    pub(crate) fn new(state: State, retry_after_nanos: Option<u64>) -> Self {
        let index = STATES.iter().position(|s| *s == state).unwrap_or(0) as u64;
        let retry = retry_after_nanos.map_or(0, |n| n.min(RETRY_MAX) + 1);
        Self {
            packed: NonZeroU64::new((retry << 3) | (index + 1)).expect("state bits are nonzero"),
        }
    }

    /// The state that rejected the call: `Open`, `HalfOpen` (all probe
    /// permits in use) or `ForcedOpen`.
    pub fn state(&self) -> State {
        STATES[((self.packed.get() & 7) - 1) as usize]
    }

    /// When to retry. `Open`: when the next probe is admitted (read from
    /// the coarse clock where it stands in for the breaker's, which lags
    /// real time by up to about a millisecond, and so may say as much more).
    /// `HalfOpen` with every probe permit in use: when the half-open wait
    /// ends if one is set (the breaker decides again by itself then),
    /// otherwise the base open duration, the least a failing probe would
    /// keep the circuit open; a probe that succeeds sooner closes it sooner.
    /// `ForcedOpen`: `None`, only a person ends it.
    pub fn retry_after(&self) -> Option<Duration> {
        match self.packed.get() >> 3 {
            0 => None,
            n => Some(Duration::from_nanos(n - 1)),
        }
    }
}

impl fmt::Debug for Rejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Rejection")
            .field("state", &self.state())
            .field("retry_after", &self.retry_after())
            .finish()
    }
}

impl fmt::Display for Rejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.state(), self.retry_after()) {
            (State::Open, Some(after)) => {
                write!(
                    f,
                    "circuit breaker is open; next probe in {:.3}s",
                    after.as_secs_f64()
                )
            }
            (State::HalfOpen, Some(after)) => write!(
                f,
                "circuit breaker is half-open and all probe permits are in use; retry in {:.3}s",
                after.as_secs_f64()
            ),
            (State::HalfOpen, None) => {
                f.write_str("circuit breaker is half-open and all probe permits are in use")
            }
            (State::ForcedOpen, _) => f.write_str("circuit breaker is forced open"),
            _ => f.write_str("circuit breaker is open"),
        }
    }
}

impl std::error::Error for Rejection {}

/// The error of [`Breaker::call`](super::Breaker::call): rejected, or the
/// call's own error.
#[derive(Debug, PartialEq, Eq)]
pub enum CallError<E> {
    /// The breaker did not admit the call; the future was never polled.
    Rejected(Rejection),
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

/// Each message once along a `source()` chain: the call's own error is
/// transparent (its message, its own source); a rejection says the call was
/// not admitted, with the [`Rejection`] as its source (which is how
/// [`is_refusal`](crate::recovery::is_refusal) finds it in a chain).
impl<E: fmt::Display> fmt::Display for CallError<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Rejected(_) => f.write_str("call not admitted"),
            Self::Inner(e) => e.fmt(f),
        }
    }
}

impl<E: std::error::Error + 'static> std::error::Error for CallError<E> {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::Rejected(r) => Some(r),
            Self::Inner(e) => e.source(),
        }
    }
}

/// The `CallError<E>` types that were ever returned as a rejection, so that
/// [`is_refusal`](crate::recovery::is_refusal) can recognise a rejection
/// around an error type it cannot name.
#[cfg(feature = "recovery")]
pub(crate) mod registry {
    use std::any::{Any, TypeId};
    use std::collections::HashMap;
    use std::sync::RwLock;

    use super::CallError;

    type Check = fn(&dyn Any) -> bool;

    static TYPES: RwLock<Option<HashMap<TypeId, Check>>> = RwLock::new(None);

    fn check<E: 'static>(any: &dyn Any) -> bool {
        any.downcast_ref::<CallError<E>>()
            .is_some_and(CallError::is_rejected)
    }

    thread_local! {
        /// The types this thread has registered already: the rejection
        /// path checks here, without touching the shared lock.
        static SEEN: std::cell::RefCell<Vec<TypeId>> = const { std::cell::RefCell::new(Vec::new()) };
    }

    /// Remembers `CallError<E>`; called on the rejection path only. After
    /// the first time on a thread it costs a thread-local lookup.
    pub(crate) fn register<E: 'static>() {
        let id = TypeId::of::<CallError<E>>();
        let seen = SEEN.with(|seen| {
            let mut seen = seen.borrow_mut();
            if seen.contains(&id) {
                true
            } else {
                seen.push(id);
                false
            }
        });
        if !seen {
            TYPES
                .write()
                .unwrap_or_else(|e| e.into_inner())
                .get_or_insert_with(HashMap::new)
                .insert(id, check::<E>);
        }
    }

    /// Whether `any` is a registered `CallError<_>` holding a rejection.
    pub(crate) fn is_rejected_call_error(any: &dyn Any) -> bool {
        let found = TYPES
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .and_then(|m| m.get(&any.type_id()).copied());
        found.is_some_and(|check| check(any))
    }
}
