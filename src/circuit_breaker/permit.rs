//! A call admitted by hand ([`Breaker::try_acquire`]) and the recording of
//! its outcome.

use std::fmt;

#[cfg(doc)]
use super::Breaker;
use super::core::{Core, Ticket};
use crate::classify::Outcome;

/// An admitted call of [`Breaker::try_acquire`].
#[must_use = "a permit records nothing unless its outcome is recorded"]
pub struct Permit<'a> {
    pub(super) core: &'a Core,
    pub(super) ticket: Option<Ticket>,
}

impl Permit<'_> {
    /// Records the call's outcome.
    #[inline]
    pub fn record(mut self, outcome: Outcome) {
        if let Some(ticket) = self.ticket.take() {
            self.core.complete(ticket, outcome);
        }
    }

    /// Records a success.
    #[inline]
    pub fn success(self) {
        self.record(Outcome::Success);
    }

    /// Records a failure.
    #[inline]
    pub fn failure(self) {
        self.record(Outcome::Failure);
    }

    /// Records a failure after which the dependency asked callers to wait
    /// `retry_after` (an HTTP `Retry-After`, a gRPC retry hint): if this
    /// failure opens the breaker, it stays open that long (capped by
    /// [`Builder::retry_after_cap`](super::Builder::retry_after_cap))
    /// instead of the configured open duration.
    pub fn failure_with_retry_after(mut self, retry_after: std::time::Duration) {
        if let Some(ticket) = self.ticket.take() {
            self.core
                .complete_hinted(ticket, Outcome::Failure, Some(retry_after));
        }
    }

    /// The generation of the state the call was admitted in.
    pub fn generation(&self) -> u64 {
        self.ticket.map_or(0, |t| t.generation())
    }

    /// Whether this is a half-open probe.
    pub fn is_probe(&self) -> bool {
        self.ticket.is_some_and(|t| t.is_probe())
    }
}

impl Drop for Permit<'_> {
    fn drop(&mut self) {
        if let Some(ticket) = self.ticket.take() {
            self.core.release(ticket);
        }
    }
}

impl fmt::Debug for Permit<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Permit")
            .field("probe", &self.is_probe())
            .finish()
    }
}
