//! The bounded stream of transitions ([`Breaker::subscribe`]).

use std::fmt;

#[cfg(doc)]
use super::Breaker;
use super::Transition;

/// The stream of [`Breaker::subscribe`].
///
/// Bounded: the breaker keeps the last 64 transitions for each subscriber. A
/// subscriber that falls further behind gets [`RecvError::Lagged`] with the
/// number it missed, then the oldest transition still kept.
pub struct Transitions {
    pub(super) rx: tokio::sync::broadcast::Receiver<Transition>,
}

/// Why [`Transitions::recv`] returned no transition.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RecvError {
    /// This many transitions were dropped because the subscriber fell more
    /// than 64 behind; the next `recv` returns the oldest one kept.
    Lagged(u64),
    /// Every handle of the breaker is dropped and no transition is left.
    Closed,
}

impl fmt::Display for RecvError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RecvError::Lagged(n) => write!(f, "subscriber fell behind; missed {n} transitions"),
            RecvError::Closed => f.write_str("breaker dropped"),
        }
    }
}

impl std::error::Error for RecvError {}

/// Why [`Transitions::try_recv`] returned no transition.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TryRecvError {
    /// No transition is queued.
    Empty,
    /// This many transitions were dropped because the subscriber fell more
    /// than 64 behind; the next call returns the oldest one kept.
    Lagged(u64),
    /// Every handle of the breaker is dropped and no transition is left.
    Closed,
}

impl fmt::Display for TryRecvError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TryRecvError::Empty => f.write_str("no transition queued"),
            TryRecvError::Lagged(n) => {
                write!(f, "subscriber fell behind; missed {n} transitions")
            }
            TryRecvError::Closed => f.write_str("breaker dropped"),
        }
    }
}

impl std::error::Error for TryRecvError {}

impl Transitions {
    /// The next transition, waiting for it.
    pub async fn recv(&mut self) -> Result<Transition, RecvError> {
        use tokio::sync::broadcast::error::RecvError as E;
        self.rx.recv().await.map_err(|e| match e {
            E::Lagged(n) => RecvError::Lagged(n),
            E::Closed => RecvError::Closed,
        })
    }

    /// The next transition if one is queued. `Err(TryRecvError::Empty)`
    /// when none is; a lag is reported as with [`recv`](Self::recv).
    pub fn try_recv(&mut self) -> Result<Transition, TryRecvError> {
        use tokio::sync::broadcast::error::TryRecvError as E;
        self.rx.try_recv().map_err(|e| match e {
            E::Empty => TryRecvError::Empty,
            E::Lagged(n) => TryRecvError::Lagged(n),
            E::Closed => TryRecvError::Closed,
        })
    }
}

impl fmt::Debug for Transitions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Transitions").finish_non_exhaustive()
    }
}
