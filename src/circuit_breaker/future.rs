//! Response future of the [`CircuitBreaker`](super::CircuitBreaker) service.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use pin_project_lite::pin_project;

use super::Rejection;
use super::core::Core;
use super::core::Ticket;
use super::reject::OnReject;
use crate::classify::{Classify, Outcome};
use crate::lease::Lease;

/// Records the outcome of an admitted call, or gives its admission back if
/// the call is dropped unfinished.
///
/// The ticket is kept as two plain words (`DONE` marks it used) rather than
/// an `Option<Ticket>`: the option's tag, written apart from the ticket and
/// read back together with it, cost a store-forwarding stall per call.
pub(crate) struct Guard {
    lease: Lease<Core>,
    word: u64,
    start: u64,
}

const DONE: u64 = u64::MAX;

impl Guard {
    #[inline]
    pub(crate) fn new(lease: Lease<Core>, ticket: Ticket) -> Self {
        Self {
            lease,
            word: ticket.word(),
            start: ticket.start(),
        }
    }

    /// Records a failure with the wait the upstream asked for.
    #[cold]
    pub(crate) fn complete_hinted(&mut self, outcome: Outcome, retry_after: Option<Duration>) {
        let word = std::mem::replace(&mut self.word, DONE);
        if word != DONE {
            self.lease
                .complete_hinted(Ticket::new(word, self.start), outcome, retry_after);
        }
    }

    #[inline]
    pub(crate) fn complete(&mut self, outcome: Outcome) {
        let word = std::mem::replace(&mut self.word, DONE);
        if word != DONE {
            self.lease.complete(Ticket::new(word, self.start), outcome);
        }
    }
}

impl Drop for Guard {
    #[inline]
    fn drop(&mut self) {
        let word = std::mem::replace(&mut self.word, DONE);
        if word != DONE {
            self.lease.release(Ticket::new(word, self.start));
        }
    }
}

pin_project! {
    #[project = KindProj]
    enum Kind<F, C> {
        Called {
            #[pin]
            future: F,
            guard: Guard,
            classify: C,
        },
        Rejected {
            rejected: Option<Rejection>,
        },
    }
}

pin_project! {
    /// Response future of [`CircuitBreaker`](super::CircuitBreaker).
    pub struct ResponseFuture<F, C, R> {
        #[pin]
        kind: Kind<F, C>,
        reject: R,
    }
}

impl<F, C, R> ResponseFuture<F, C, R> {
    pub(crate) fn called(future: F, guard: Guard, classify: C, reject: R) -> Self {
        Self {
            kind: Kind::Called {
                future,
                guard,
                classify,
            },
            reject,
        }
    }

    pub(crate) fn rejected(rejected: Rejection, reject: R) -> Self {
        Self {
            kind: Kind::Rejected {
                rejected: Some(rejected),
            },
            reject,
        }
    }
}

impl<F, C, R, T, E> Future for ResponseFuture<F, C, R>
where
    F: Future<Output = Result<T, E>>,
    C: Classify<T, E>,
    R: OnReject<T, E>,
{
    type Output = Result<T, R::Error>;

    #[inline]
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        match this.kind.project() {
            KindProj::Called {
                future,
                guard,
                classify,
            } => {
                let result = ready!(future.poll(cx));
                match classify.classify(&result) {
                    Outcome::Failure => {
                        guard.complete_hinted(Outcome::Failure, classify.retry_after(&result))
                    }
                    outcome => guard.complete(outcome),
                }
                Poll::Ready(result.map_err(|e| this.reject.convert(e)))
            }
            KindProj::Rejected { rejected } => {
                let rejected = rejected
                    .take()
                    .expect("ResponseFuture polled after completion");
                Poll::Ready(this.reject.reject(rejected))
            }
        }
    }
}

impl<F, C, R> fmt::Debug for ResponseFuture<F, C, R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}
