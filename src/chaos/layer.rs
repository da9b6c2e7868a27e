use std::fmt;

use tower_layer::Layer;

use super::fault::{DefaultFaultResponse, FaultWithError, FaultWithResponse};
use super::{Chaos, InjectFaults};

/// The chaos layer: applies a shared [`Chaos`] handle to a service.
///
/// Made with [`Chaos::layer`]. The layer holds a handle, not a state: every
/// service it produces, however many times it is applied, follows the same
/// switch, so one [`Chaos::start`] (or one admin request) reaches them all.
#[doc(alias = "ChaosLayer")]
#[derive(Clone)]
pub struct InjectFaultsLayer<O = FaultWithError> {
    chaos: Chaos,
    on_fault: O,
}

impl InjectFaultsLayer {
    pub(crate) fn new(chaos: Chaos) -> Self {
        Self {
            chaos,
            on_fault: FaultWithError,
        }
    }
}

impl<O> InjectFaultsLayer<O> {
    /// Answers failed HTTP calls with a response (the rehearsal's status,
    /// `503` if it set none) instead of an error, keeping the inner error
    /// type.
    pub fn fault_with_response(self) -> InjectFaultsLayer<FaultWithResponse> {
        self.on_fault(FaultWithResponse::new(DefaultFaultResponse))
    }

    /// Decides what a failed call returns: see [`OnFault`](super::OnFault).
    pub fn on_fault<O2>(self, on_fault: O2) -> InjectFaultsLayer<O2> {
        InjectFaultsLayer {
            chaos: self.chaos,
            on_fault,
        }
    }

    /// The handle this layer follows.
    pub fn chaos(&self) -> &Chaos {
        &self.chaos
    }
}

impl<S, O: Clone> Layer<S> for InjectFaultsLayer<O> {
    type Service = InjectFaults<S, O>;

    fn layer(&self, inner: S) -> Self::Service {
        InjectFaults::new(inner, self.chaos.clone(), self.on_fault.clone())
    }
}

impl<O> fmt::Debug for InjectFaultsLayer<O> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("InjectFaultsLayer")
            .field("chaos", &self.chaos.name())
            .finish_non_exhaustive()
    }
}
