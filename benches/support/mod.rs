//! What the generic-path benches share: the bare inner service and a
//! no-op executor.

use std::future::Future;
use std::pin::pin;
use std::task::{Context, Poll, Waker};

use std::hint::black_box;
use std::time::{Duration, Instant};

use tower::{Service, ServiceExt, service_fn};

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

/// `iters` calls through a clone of `svc` on this thread, the way callers
/// make them: `ready()`, `call()`, the response future moved and awaited.
#[allow(dead_code)] // not every bench measures one thread this way
pub(crate) fn run_one_thread<S>(svc: &S, iters: u64) -> Duration
where
    S: Service<bool> + Clone,
{
    let mut svc = svc.clone();
    let start = Instant::now();
    block_on(async {
        for _ in 0..iters {
            let Ok(ready) = svc.ready().await else {
                unreachable!("never fails poll_ready")
            };
            let future = ready.call(black_box(false));
            let out = black_box(future).await;
            black_box(out.is_ok());
        }
    });
    start.elapsed()
}
