//! What the generic-path benches share: the bare inner service and a
//! no-op executor.

use std::future::Future;
use std::pin::pin;
use std::task::{Context, Poll, Waker};

use tower::service_fn;

pub(crate) type Output = Result<u8, std::fmt::Error>;
pub(crate) type Inner = tower::util::ServiceFn<fn(bool) -> std::future::Ready<Output>>;

/// The bare service: answers at once, `Err` when asked to fail.
pub(crate) fn inner() -> Inner {
    service_fn(|fail: bool| std::future::ready(if fail { Err(std::fmt::Error) } else { Ok(1u8) }))
}

/// Polls `f` to completion with a no-op waker.
pub(crate) fn block_on<F: Future>(f: F) -> F::Output {
    let mut cx = Context::from_waker(Waker::noop());
    let mut f = pin!(f);
    loop {
        if let Poll::Ready(out) = f.as_mut().poll(&mut cx) {
            return out;
        }
        std::hint::spin_loop();
    }
}
