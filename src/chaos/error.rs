//! Error types.

use std::fmt;
use std::sync::Arc;

use http::StatusCode;

/// A failure injected on purpose by a [`Chaos`](super::Chaos) handle: the
/// error of a failed call (inside a `BoxError`: test it with
/// `err.is::<Injected>()`), and what an [`OnFault`](super::OnFault)
/// receives. HTTP answers made by
/// [`FaultWithResponse`](super::FaultWithResponse) carry it in their
/// extensions.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Injected {
    name: Arc<str>,
    status: Option<StatusCode>,
}

impl Injected {
    pub(crate) fn new(name: Arc<str>, status: Option<StatusCode>) -> Self {
        Self { name, status }
    }

    /// The name of the [`Chaos`](super::Chaos) handle that injected it.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The status of the rehearsal's [`Faults::status`](super::Faults::status),
    /// if it set one.
    pub fn status(&self) -> Option<StatusCode> {
        self.status
    }
}

impl fmt::Display for Injected {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "fault injected by chaos '{}'", self.name)
    }
}

impl std::error::Error for Injected {}
