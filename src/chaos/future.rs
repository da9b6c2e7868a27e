//! Response future of the [`InjectFaults`](super::InjectFaults) service.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use pin_project_lite::pin_project;
use tokio::time::Sleep;

use super::{Chaos, Injected, OnFault};

pin_project! {
    #[project = KindProj]
    enum Kind<F> {
        // Chaos off, or nothing drawn for this call: the inner future alone,
        // so that the future is no larger than it and polls it directly.
        Called {
            #[pin]
            future: F,
        },
        // A delay or a fault was drawn: boxed, off the common path.
        Planned {
            planned: PlannedBox<F>,
        },
    }
}

/// The boxed plan of a call with a delay or a fault, dropped out of line:
/// dropping a future of the common path (`Called`) stays a check of its
/// kind, however much a plan holds (with the plan's drop inlined, the
/// whole future's drop glue grew out of line, and every call paid a
/// function call for it, chaos off or on).
struct PlannedBox<F>(Option<Pin<Box<Planned<F>>>>);

impl<F> PlannedBox<F> {
    fn get(&mut self) -> Pin<&mut Planned<F>> {
        self.0
            .as_mut()
            .expect("a plan is taken only when it is dropped")
            .as_mut()
    }
}

impl<F> Drop for PlannedBox<F> {
    #[inline]
    fn drop(&mut self) {
        if let Some(planned) = self.0.take() {
            drop_cold(planned);
        }
    }
}

#[cold]
#[inline(never)]
fn drop_cold<T>(value: T) {
    drop(value);
}

pin_project! {
    struct Planned<F> {
        #[pin]
        delay: Option<Sleep>,
        #[pin]
        then: Then<F>,
    }
}

pin_project! {
    #[project = ThenProj]
    enum Then<F> {
        Call {
            #[pin]
            future: F,
        },
        Fail {
            injected: Option<Injected>,
            // Counts the answer: an error or a response.
            chaos: Chaos,
            // The state word of the rehearsal that drew the fault: the
            // answer is counted in its snapshot only.
            state: u64,
        },
    }
}

pin_project! {
    /// Response future of [`InjectFaults`](super::InjectFaults): the added
    /// latency if any, then the inner future or the injected fault.
    pub struct ResponseFuture<F, O> {
        #[pin]
        kind: Kind<F>,
        on_fault: O,
    }
}

impl<F, O> ResponseFuture<F, O> {
    #[inline]
    pub(crate) fn called(future: F, on_fault: O) -> Self {
        Self {
            kind: Kind::Called { future },
            on_fault,
        }
    }

    /// A call with a delay, a fault or both: `Ok(future)` is the inner
    /// service's, `Err` the fault. Out of line, with what it records, so
    /// that the common path stays as small as it was.
    #[inline(never)]
    pub(crate) fn planned(
        then: Result<F, Injected>,
        delay: Option<Duration>,
        on_fault: O,
        chaos: &Chaos,
        state: u64,
    ) -> Self {
        #[cfg(feature = "metrics")]
        if delay.is_some() {
            chaos.count_delayed();
        }
        let then = match then {
            Ok(future) => Then::Call { future },
            Err(injected) => Then::Fail {
                injected: Some(injected),
                // Counts the answer.
                chaos: chaos.clone(),
                state,
            },
        };
        Self {
            kind: Kind::Planned {
                planned: PlannedBox(Some(Box::pin(Planned {
                    delay: delay.map(tokio::time::sleep),
                    then,
                }))),
            },
            on_fault,
        }
    }
}

impl<F, O, T, E> Future for ResponseFuture<F, O>
where
    F: Future<Output = Result<T, E>>,
    O: OnFault<T, E>,
{
    type Output = Result<T, O::Error>;

    #[inline]
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let then = match this.kind.project() {
            KindProj::Called { future } => {
                let result = ready!(future.poll(cx));
                return Poll::Ready(result.map_err(|e| this.on_fault.convert(e)));
            }
            KindProj::Planned { planned } => planned.get().project(),
        };
        let mut delay = then.delay;
        if let Some(sleep) = delay.as_mut().as_pin_mut() {
            ready!(sleep.poll(cx));
            delay.set(None);
        }
        match then.then.project() {
            ThenProj::Call { future } => {
                let result = ready!(future.poll(cx));
                Poll::Ready(result.map_err(|e| this.on_fault.convert(e)))
            }
            ThenProj::Fail {
                injected,
                chaos,
                state,
            } => {
                let injected = injected
                    .take()
                    .expect("ResponseFuture polled after completion");
                let answer = this.on_fault.fault(injected);
                chaos.answered(answer.is_ok(), *state);
                Poll::Ready(answer)
            }
        }
    }
}

impl<F, O> fmt::Debug for ResponseFuture<F, O> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture")
            .field("planned", &matches!(self.kind, Kind::Planned { .. }))
            .finish_non_exhaustive()
    }
}
