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
use crate::classify::{Classified, Classify, ClassifyEos, ClassifyResponse, Outcome};
use crate::lease::Lease;
use http_body::{Body, Frame, SizeHint};

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

pin_project! {
    #[project = EosKindProj]
    enum EosKind<F, C> {
        Called {
            #[pin]
            future: F,
            guard: Option<Guard>,
            classify: C,
        },
        Rejected {
            rejected: Option<Rejection>,
        },
    }
}

pin_project! {
    /// Response future of [`CircuitBreakerEos`](super::CircuitBreakerEos):
    /// records the outcome when the response head decides it, or hands the
    /// record to the response's [`ClassifiedBody`].
    pub struct EosResponseFuture<F, C, R> {
        #[pin]
        kind: EosKind<F, C>,
        reject: R,
    }
}

impl<F, C, R> EosResponseFuture<F, C, R> {
    pub(crate) fn called(future: F, guard: Guard, classify: C, reject: R) -> Self {
        Self {
            kind: EosKind::Called {
                future,
                guard: Some(guard),
                classify,
            },
            reject,
        }
    }

    pub(crate) fn rejected(rejected: Rejection, reject: R) -> Self {
        Self {
            kind: EosKind::Rejected {
                rejected: Some(rejected),
            },
            reject,
        }
    }
}

impl<F, C, R, B, E> Future for EosResponseFuture<F, C, R>
where
    F: Future<Output = Result<http::Response<B>, E>>,
    C: ClassifyResponse<B, E>,
    R: OnReject<http::Response<B>, E>,
{
    type Output = Result<http::Response<ClassifiedBody<B, C::Eos>>, R::Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        match this.kind.project() {
            EosKindProj::Called {
                future,
                guard,
                classify,
            } => {
                let result = ready!(future.poll(cx));
                let mut guard = guard
                    .take()
                    .expect("ResponseFuture polled after completion");
                let result = match classify.classify_response(&result) {
                    Classified::Ready(outcome) => {
                        guard.complete(outcome);
                        result.map(|r| r.map(ClassifiedBody::settled))
                    }
                    Classified::RequiresEos(eos) => match result {
                        Ok(response) => {
                            Ok(response.map(|body| ClassifiedBody::new(body, guard, eos)))
                        }
                        Err(e) => {
                            guard.complete(eos.classify_error());
                            Err(e)
                        }
                    },
                };
                Poll::Ready(result.map_err(|e| this.reject.convert(e)))
            }
            EosKindProj::Rejected { rejected } => {
                let rejected = rejected
                    .take()
                    .expect("ResponseFuture polled after completion");
                Poll::Ready(
                    this.reject
                        .reject(rejected)
                        .map(|r| r.map(ClassifiedBody::settled)),
                )
            }
        }
    }
}

impl<F, C, R> fmt::Debug for EosResponseFuture<F, C, R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EosResponseFuture").finish_non_exhaustive()
    }
}

pin_project! {
    /// A response body whose call's outcome is recorded at its end: on its
    /// trailers, at the end of the stream, or on an error frame. Dropped
    /// before its end, it records nothing and gives the call back (a
    /// half-open permit returns), like a dropped response future.
    ///
    /// While the outcome is pending, [`is_end_stream`](Body::is_end_stream)
    /// answers `false`, so that a reader polls once more and the end is
    /// seen.
    pub struct ClassifiedBody<B, D> {
        #[pin]
        inner: B,
        eos: Option<(Guard, D)>,
    }
}

impl<B, D> ClassifiedBody<B, D> {
    fn new(inner: B, guard: Guard, eos: D) -> Self {
        Self {
            inner,
            eos: Some((guard, eos)),
        }
    }

    /// A body whose outcome is already recorded (or that has none: a
    /// rejection's).
    fn settled(inner: B) -> Self {
        Self { inner, eos: None }
    }

    /// Whether the outcome is still to be recorded at the end of the body.
    pub fn is_pending(&self) -> bool {
        self.eos.is_some()
    }

    /// The inner body.
    pub fn get_ref(&self) -> &B {
        &self.inner
    }

    /// Consumes the wrapper, returning the inner body. A pending outcome
    /// is not recorded: the call is given back.
    pub fn into_inner(self) -> B {
        self.inner
    }
}

/// How a body ended.
enum End<'a> {
    Trailers(&'a http::HeaderMap),
    Error,
    Stream,
}

impl<B, D> Body for ClassifiedBody<B, D>
where
    B: Body,
    D: ClassifyEos,
{
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.project();
        let frame = ready!(this.inner.poll_frame(cx));
        let end = match &frame {
            Some(Ok(frame)) => frame.trailers_ref().map(End::Trailers),
            Some(Err(_)) => Some(End::Error),
            None => Some(End::Stream),
        };
        if let Some(end) = end {
            if let Some((mut guard, eos)) = this.eos.take() {
                guard.complete(match end {
                    End::Trailers(trailers) => eos.classify_eos(Some(trailers)),
                    End::Error => eos.classify_error(),
                    End::Stream => eos.classify_eos(None),
                });
            }
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.eos.is_none() && self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl<B: fmt::Debug, D> fmt::Debug for ClassifiedBody<B, D> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClassifiedBody")
            .field("inner", &self.inner)
            .field("pending", &self.eos.is_some())
            .finish()
    }
}
