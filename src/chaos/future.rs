//! Response future of the [`InjectFaults`](super::InjectFaults) service.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use pin_project_lite::pin_project;
use tokio::time::Sleep;

use super::{Injected, OnFault};

pin_project! {
    #[project = KindProj]
    enum Kind<F> {
        Called {
            #[pin]
            future: F,
        },
        Fault {
            injected: Option<Injected>,
        },
    }
}

pin_project! {
    /// Response future of [`InjectFaults`](super::InjectFaults): the added
    /// latency if any, then the inner future or the injected fault.
    pub struct ResponseFuture<F, O> {
        #[pin]
        kind: Kind<F>,
        // Boxed: a delay is the rare case, and off the future stays small.
        delay: Option<Pin<Box<Sleep>>>,
        on_fault: O,
    }
}

impl<F, O> ResponseFuture<F, O> {
    pub(crate) fn called(future: F, delay: Option<Duration>, on_fault: O) -> Self {
        Self {
            kind: Kind::Called { future },
            delay: delay.map(|d| Box::pin(tokio::time::sleep(d))),
            on_fault,
        }
    }

    pub(crate) fn fault(injected: Injected, delay: Option<Duration>, on_fault: O) -> Self {
        Self {
            kind: Kind::Fault {
                injected: Some(injected),
            },
            delay: delay.map(|d| Box::pin(tokio::time::sleep(d))),
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
        if let Some(delay) = this.delay {
            ready!(delay.as_mut().poll(cx));
            *this.delay = None;
        }
        match this.kind.project() {
            KindProj::Called { future } => {
                let result = ready!(future.poll(cx));
                Poll::Ready(result.map_err(|e| this.on_fault.convert(e)))
            }
            KindProj::Fault { injected } => {
                let injected = injected
                    .take()
                    .expect("ResponseFuture polled after completion");
                Poll::Ready(this.on_fault.fault(injected))
            }
        }
    }
}

impl<F, O> fmt::Debug for ResponseFuture<F, O> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture")
            .field("delayed", &self.delay.is_some())
            .finish_non_exhaustive()
    }
}
