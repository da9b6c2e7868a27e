//! Zero heap allocations per call on the closed path, counted by a global
//! allocator; and the allocations of the reject paths, measured.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::convert::Infallible;
use std::future::Future;
use std::pin::pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tower::{Service, service_fn};
use tower_recovery::circuit_breaker::{Breaker, State};
use tower_recovery::clock::Clock;

struct Counting;

thread_local! {
    static ALLOCATIONS: Cell<u64> = const { Cell::new(0) };
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.with(|c| c.set(c.get() + 1));
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.with(|c| c.set(c.get() + 1));
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn allocations() -> u64 {
    ALLOCATIONS.with(Cell::get)
}

fn ready<F: Future>(f: F) -> F::Output {
    let mut cx = Context::from_waker(std::task::Waker::noop());
    let mut f = pin!(f);
    match f.as_mut().poll(&mut cx) {
        Poll::Ready(out) => out,
        Poll::Pending => panic!("not ready"),
    }
}

/// Allocations per call through the layer, over `calls` calls.
fn layer_calls(breaker: &Breaker, calls: u64, fail_every: u64) -> u64 {
    let inner = service_fn(|fail: bool| {
        std::future::ready(if fail {
            Err(std::fmt::Error)
        } else {
            Ok::<_, std::fmt::Error>(1u8)
        })
    });
    let mut svc = tower::Layer::layer(&breaker.layer(), inner);
    let mut cx = Context::from_waker(std::task::Waker::noop());
    // Warm up: lazily initialised state (thread locals, clocks, the metric
    // handles registered at the first failure) allocates once.
    for i in 0..100 {
        assert!(svc.poll_ready(&mut cx).is_ready());
        let _ = ready(svc.call(fail_every != 0 && i == 0));
    }
    let before = allocations();
    for i in 0..calls {
        assert!(svc.poll_ready(&mut cx).is_ready());
        let fail = fail_every != 0 && i % fail_every == 0;
        let out = ready(svc.call(fail));
        assert_eq!(out.is_err(), fail);
    }
    allocations() - before
}

#[test]
fn allocations_per_call() {
    let breakers = [
        ("consecutive", Breaker::new("a")),
        (
            "count window",
            Breaker::builder("b")
                .count_window(100)
                .minimum_calls(1000)
                .build(),
        ),
        (
            "time window",
            Breaker::builder("c")
                .time_window(Duration::from_secs(10), 10)
                .minimum_calls(1000)
                .build(),
        ),
        (
            "time window, coarse clock, slow calls",
            Breaker::builder("d")
                .time_window(Duration::from_secs(10), 10)
                .slow_calls(Duration::from_secs(1), 0.9)
                .minimum_calls(1000)
                .clock(Clock::coarse())
                .build(),
        ),
    ];
    for (name, breaker) in breakers.iter() {
        // Successes, and failures below the threshold: zero allocations.
        assert_eq!(
            layer_calls(breaker, 10_000, 0),
            0,
            "{name}: closed path, successes"
        );
        assert_eq!(
            layer_calls(breaker, 10_000, 7),
            0,
            "{name}: closed path, some failures"
        );
        assert_eq!(breaker.state(), State::Closed);

        // The handle's call API.
        let before = allocations();
        for _ in 0..10_000 {
            assert_eq!(ready(breaker.call(async { Ok::<_, ()>(1) })), Ok(1));
        }
        assert_eq!(allocations() - before, 0, "{name}: Breaker::call");
    }

    // Reject paths: the layer's `Rejected` is zero-sized (boxing it
    // allocates nothing), and neither does the call API.
    let breaker = Breaker::builder("open").consecutive_failures(1).build();
    breaker.try_acquire().unwrap().failure();
    assert_eq!(breaker.state(), State::Open);
    let inner = service_fn(|_: ()| std::future::ready(Ok::<_, Infallible>(())));
    let mut svc = tower::Layer::layer(&breaker.layer(), inner);
    let mut cx = Context::from_waker(std::task::Waker::noop());
    let before = allocations();
    for _ in 0..1_000 {
        assert!(svc.poll_ready(&mut cx).is_ready());
        assert!(ready(svc.call(())).is_err());
    }
    assert_eq!(
        allocations() - before,
        0,
        "no allocation per layer rejection"
    );
    // The first rejection of a `CallError<E>` type registers it once, so a
    // recovery can recognise it (`recovery::is_refusal`); none after that.
    assert!(ready(breaker.call(async { Ok::<_, ()>(()) })).is_err());
    let before = allocations();
    for _ in 0..1_000 {
        assert!(ready(breaker.call(async { Ok::<_, ()>(()) })).is_err());
    }
    assert_eq!(
        allocations() - before,
        0,
        "no allocation per call-API rejection"
    );
}
