use std::fmt;
use std::pin::Pin;
use std::task::{Context, Poll};

use pin_project_lite::pin_project;
use tokio::sync::futures::OwnedNotified;
use tokio::time::Sleep;
use tower_service::Service;

use super::core::Core;
use super::core::Ticket;
use super::future::{Guard, ResponseFuture};
use super::reject::OnReject;
use super::{Breaker, Rejection};
use crate::classify::Classify;
use crate::lease::Credits;

/// Admission decided in `poll_ready`, honoured by the next `call`: the state
/// word of the admission, or one of these two values (no state word has code
/// bits 6 or 7). One `u64`, written and read whole: a wider latch built from
/// narrower stores and read back as one vector load stalls store forwarding,
/// which measurably slowed the closed path.
const EMPTY: u64 = u64::MAX;
const REJECTED: u64 = u64::MAX - 1;

pin_project! {
    /// What a backpressured service waits on: a change of the breaker, or the
    /// end of the open wait.
    struct Wait {
        #[pin]
        changed: OwnedNotified,
        #[pin]
        open_wait: Option<Sleep>,
    }
}

/// A service guarded by a [`Breaker`]. Made by
/// [`CircuitBreakerLayer`](super::CircuitBreakerLayer).
///
/// `poll_ready` decides admission and latches it for the next `call`:
/// admitted, it polls the inner service (holding a probe permit when the
/// breaker is half-open); rejected, it returns `Ready(Ok(()))` without
/// polling the inner service, and `call` returns the rejection without
/// calling it. `poll_ready` never fails because the circuit is open.
/// Cloning gives a service with no latch; dropping a service that holds an
/// admission gives the admission back.
pub struct CircuitBreaker<S, C, R> {
    inner: S,
    admission: Admission,
    classify: C,
    reject: R,
    backpressure: bool,
    wait: Option<Pin<Box<Wait>>>,
}

/// The breaker (with this service's credits for its calls) and this
/// service's latched admission, given back on drop.
struct Admission {
    credits: Credits<Core>,
    latch: u64,
    rejected: Option<Rejection>,
}

impl Admission {
    fn breaker(&self) -> &Breaker {
        Breaker::from_arc_ref(self.credits.get())
    }

    fn release(&mut self) {
        let latch = std::mem::replace(&mut self.latch, EMPTY);
        if latch < REJECTED {
            self.breaker().core.release(Ticket::from_word(latch));
        }
    }
}

/// Gives the admission back if the inner `call` panics, so that a service
/// that outlives the panic (a panic-catching layer outside it) does not
/// reuse it for another request.
struct Unlatch<'a>(&'a mut Admission);

impl Drop for Unlatch<'_> {
    fn drop(&mut self) {
        self.0.release();
    }
}

impl Drop for Admission {
    fn drop(&mut self) {
        self.release();
    }
}

impl<S, C, R> CircuitBreaker<S, C, R> {
    pub(crate) fn from_parts(
        inner: S,
        breaker: Breaker,
        classify: C,
        reject: R,
        backpressure: bool,
    ) -> Self {
        Self {
            inner,
            admission: Admission {
                credits: Credits::new(breaker.core),
                latch: EMPTY,
                rejected: None,
            },
            classify,
            reject,
            backpressure,
            wait: None,
        }
    }

    /// The breaker this service reports to.
    pub fn breaker(&self) -> &Breaker {
        self.admission.breaker()
    }

    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The inner service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// Consumes the wrapper, returning the inner service (and giving back a
    /// latched admission).
    pub fn into_inner(self) -> S {
        self.inner
    }

    /// Registers for the breaker's next change (and the end of the open
    /// wait). `Ready` when it is worth asking for admission again.
    fn poll_wait(&mut self, cx: &mut Context<'_>, rejected: &Rejection) -> Poll<()> {
        let core = &self.admission.breaker().core;
        let wait = self.wait.get_or_insert_with(|| {
            Box::pin(Wait {
                changed: core.changed.clone().notified_owned(),
                open_wait: rejected.retry_after().map(tokio::time::sleep),
            })
        });
        let mut this = wait.as_mut().project();
        this.changed.as_mut().enable();
        let fired = this.changed.poll(cx).is_ready()
            || this
                .open_wait
                .as_pin_mut()
                .is_some_and(|sleep| sleep.poll(cx).is_ready());
        if fired {
            self.wait = None;
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    }
}

impl<S, C, R> CircuitBreaker<S, C, R> {
    /// Asks for admission until it is latched (admitted or rejected), or
    /// returns `Pending` (backpressure) to be woken when worth asking again.
    #[inline(never)]
    fn admit(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        loop {
            match self
                .admission
                .breaker()
                .core
                .admit_counted(!self.backpressure)
            {
                Ok(ticket) => {
                    self.admission.latch = ticket.word();
                    self.wait = None;
                    return Poll::Ready(());
                }
                Err(rejected) if !self.backpressure => {
                    self.admission.latch = REJECTED;
                    self.admission.rejected = Some(rejected);
                    return Poll::Ready(());
                }
                Err(rejected) => {
                    // A fresh registration must be followed by one more
                    // look, or a change just before it would be missed.
                    let fresh = self.wait.is_none();
                    if self.poll_wait(cx, &rejected).is_pending() && !fresh {
                        return Poll::Pending;
                    }
                }
            }
        }
    }
}

/// The same admission and call, for the services built on this one
/// ([`CircuitBreakerEos`](super::CircuitBreakerEos)). The generic path
/// below keeps its own copy, tuned for the closed path's cost (see `call`).
impl<S, C, R> CircuitBreaker<S, C, R> {
    /// `poll_ready`, with the inner service's error unconverted (the
    /// admission given back).
    pub(super) fn poll_admission<Req>(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>>
    where
        S: Service<Req>,
    {
        if self.admission.latch == EMPTY {
            match self.admission.breaker().core.admit_closed() {
                Some(word) if self.wait.is_none() => self.admission.latch = word,
                _ => {
                    if self.admit(cx).is_pending() {
                        return Poll::Pending;
                    }
                }
            }
        }
        if self.admission.latch == REJECTED {
            return Poll::Ready(Ok(()));
        }
        let ready = self.inner.poll_ready(cx);
        if let Poll::Ready(Err(_)) = ready {
            self.admission.release();
        }
        ready
    }

    /// `call`: the inner call's future and the guard that records its
    /// outcome, or the latched rejection.
    pub(super) fn call_admitted<Req>(&mut self, req: Req) -> Result<(S::Future, Guard), Rejection>
    where
        S: Service<Req>,
    {
        match self.admission.latch {
            EMPTY => panic!("CircuitBreaker::call called before poll_ready returned Ready"),
            REJECTED => {
                self.admission.latch = EMPTY;
                Err(self
                    .admission
                    .rejected
                    .take()
                    .expect("rejection latched with its reason"))
            }
            word => {
                let mut ticket = Ticket::from_word(word);
                self.admission.breaker().core.start(&mut ticket);
                let unlatch = Unlatch(&mut self.admission);
                let future = self.inner.call(req);
                std::mem::forget(unlatch);
                self.admission.latch = EMPTY;
                Ok((future, Guard::new(self.admission.credits.take(), ticket)))
            }
        }
    }

    pub(super) fn classify_ref(&self) -> &C {
        &self.classify
    }

    pub(super) fn reject_ref(&self) -> &R {
        &self.reject
    }
}

impl<S: Clone, C: Clone, R: Clone> Clone for CircuitBreaker<S, C, R> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            admission: Admission {
                credits: self.admission.credits.clone(),
                latch: EMPTY,
                rejected: None,
            },
            classify: self.classify.clone(),
            reject: self.reject.clone(),
            backpressure: self.backpressure,
            wait: None,
        }
    }
}

impl<S: fmt::Debug, C, R> fmt::Debug for CircuitBreaker<S, C, R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CircuitBreaker")
            .field("inner", &self.inner)
            .field("breaker", &self.admission.breaker().name())
            .field("latched", &(self.admission.latch != EMPTY))
            .field("backpressure", &self.backpressure)
            .finish_non_exhaustive()
    }
}

impl<S, C, R, Req> Service<Req> for CircuitBreaker<S, C, R>
where
    S: Service<Req>,
    C: Classify<S::Response, S::Error> + Clone,
    R: OnReject<S::Response, S::Error> + Clone,
{
    type Response = S::Response;
    type Error = R::Error;
    type Future = ResponseFuture<S::Future, C, R>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        // The closed path, kept small enough to inline into the caller:
        // one load decides admission. Everything else is `admit`.
        if self.admission.latch == EMPTY {
            match self.admission.breaker().core.admit_closed() {
                Some(word) if self.wait.is_none() => self.admission.latch = word,
                _ => {
                    if self.admit(cx).is_pending() {
                        return Poll::Pending;
                    }
                }
            }
        }
        if self.admission.latch == REJECTED {
            return Poll::Ready(Ok(()));
        }
        match self.inner.poll_ready(cx) {
            Poll::Ready(Ok(())) => Poll::Ready(Ok(())),
            Poll::Pending => Poll::Pending,
            Poll::Ready(Err(e)) => {
                self.admission.release();
                Poll::Ready(Err(self.reject.convert(e)))
            }
        }
    }

    #[inline]
    fn call(&mut self, req: Req) -> Self::Future {
        match self.admission.latch {
            EMPTY => panic!("CircuitBreaker::call called before poll_ready returned Ready"),
            REJECTED => {
                self.admission.latch = EMPTY;
                let rejected = self
                    .admission
                    .rejected
                    .take()
                    .expect("rejection latched with its reason");
                ResponseFuture::rejected(rejected, self.reject.clone())
            }
            word => {
                let mut ticket = Ticket::from_word(word);
                self.admission.breaker().core.start(&mut ticket);
                // The admission stays latched until the inner call returns
                // (if it panics, `Unlatch` gives it back). The guard is
                // made after it, straight into the future: built
                // before and moved in, its words were read back wider than
                // they were written, a store-forwarding stall per call.
                let unlatch = Unlatch(&mut self.admission);
                let future = self.inner.call(req);
                std::mem::forget(unlatch);
                self.admission.latch = EMPTY;
                let guard = Guard::new(self.admission.credits.take(), ticket);
                ResponseFuture::called(future, guard, self.classify.clone(), self.reject.clone())
            }
        }
    }
}
