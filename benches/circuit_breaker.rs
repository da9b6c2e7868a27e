//! Cost of the breaker against the bare inner service, measured in one run.
//!
//! `cargo bench --bench circuit_breaker`; the peers are compared in
//! `peer-bench/` (its own workspace).

use std::future::Future;
use std::hint::black_box;
use std::pin::pin;
use std::sync::Barrier;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};
use tower::{Layer, Service, service_fn};
use tower_recovery::circuit_breaker::Breaker;
use tower_recovery::clock::{Clock, ManualClock};

type Inner = tower::util::ServiceFn<fn(bool) -> std::future::Ready<Result<u8, std::fmt::Error>>>;

fn inner() -> Inner {
    service_fn(|fail: bool| std::future::ready(if fail { Err(std::fmt::Error) } else { Ok(1u8) }))
}

#[inline]
fn now<F: Future>(f: F) -> F::Output {
    let mut cx = Context::from_waker(Waker::noop());
    match pin!(f).poll(&mut cx) {
        Poll::Ready(out) => out,
        Poll::Pending => unreachable!("ready futures only"),
    }
}

/// One call through a service: `poll_ready`, `call`, poll the future.
#[inline]
fn drive<S: Service<bool>>(svc: &mut S) -> Result<S::Response, S::Error> {
    let mut cx = Context::from_waker(Waker::noop());
    match svc.poll_ready(&mut cx) {
        Poll::Ready(Ok(())) => {}
        _ => unreachable!("always ready"),
    }
    now(svc.call(black_box(false)))
}

/// Each configuration of the trip rules.
fn breakers() -> Vec<(String, Breaker)> {
    let configs = vec![
        ("consecutive", Breaker::new("bench")),
        (
            "count_window",
            Breaker::builder("bench").count_window(100).build(),
        ),
        (
            "time_window_tokio_clock",
            Breaker::builder("bench")
                .time_window(Duration::from_secs(10), 10)
                .build(),
        ),
        (
            "time_window_coarse_clock",
            Breaker::builder("bench")
                .time_window(Duration::from_secs(10), 10)
                .clock(Clock::coarse())
                .build(),
        ),
    ];
    configs
        .into_iter()
        .map(|(name, b)| (name.to_string(), b))
        .collect()
}

/// `iters` calls in a plain loop (as `peer-bench` does), timed as a whole.
fn one_thread<S: Service<bool>>(svc: &mut S, iters: u64) -> Duration {
    let start = Instant::now();
    for _ in 0..iters {
        let _ = black_box(drive(svc).is_ok());
    }
    start.elapsed()
}

fn closed_one_thread(c: &mut Criterion) {
    let mut g = c.benchmark_group("closed_1_thread");
    let mut bare = inner();
    g.bench_function("bare", |b| {
        b.iter_custom(|iters| one_thread(&mut bare, iters))
    });
    for (name, breaker) in breakers() {
        let mut svc = breaker.layer().layer(inner());
        g.bench_function(&name, |b| {
            b.iter_custom(|iters| one_thread(&mut svc, iters))
        });
    }
    let breaker = Breaker::new("bench");
    g.bench_function("consecutive_call_api", |b| {
        b.iter(|| now(breaker.call(async { Ok::<_, ()>(black_box(1u8)) })))
    });
    g.bench_function("consecutive_try_acquire", |b| {
        b.iter(|| breaker.try_acquire().map(|p| p.success()))
    });
    g.finish();
}

/// Two threads call through clones of one service sharing one breaker; the
/// time per call is the slower thread's.
fn two_threads<S>(svc: &S, iters: u64) -> Duration
where
    S: Service<bool> + Clone + Send,
{
    let barrier = Barrier::new(2);
    std::thread::scope(|scope| {
        let handles: Vec<_> = (0..2)
            .map(|_| {
                let mut svc = svc.clone();
                let barrier = &barrier;
                scope.spawn(move || {
                    barrier.wait();
                    let start = Instant::now();
                    for _ in 0..iters {
                        let _ = black_box(drive(&mut svc));
                    }
                    start.elapsed()
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap())
            .max()
            .unwrap()
    })
}

fn closed_two_threads(c: &mut Criterion) {
    let mut g = c.benchmark_group("closed_2_threads");
    let bare = inner();
    g.bench_function("bare", |b| b.iter_custom(|iters| two_threads(&bare, iters)));
    for (name, breaker) in breakers() {
        let svc = breaker.layer().layer(inner());
        g.bench_function(&name, |b| b.iter_custom(|iters| two_threads(&svc, iters)));
    }
    g.finish();
}

fn open(c: &mut Criterion) {
    let mut g = c.benchmark_group("open_rejection");
    let breaker = Breaker::builder("bench")
        .consecutive_failures(1)
        .open_duration(Duration::from_secs(3600))
        .build();
    breaker.try_acquire().unwrap().failure();
    let mut svc = breaker.layer().layer(inner());
    g.bench_function("layer_typed_error", |b| {
        b.iter_custom(|iters| one_thread(&mut svc, iters))
    });
    g.bench_function("call_api", |b| {
        b.iter(|| now(breaker.call(async { Ok::<_, ()>(black_box(1u8)) })).is_err())
    });
    g.bench_function("try_acquire", |b| b.iter(|| breaker.try_acquire().is_err()));
    let coarse = Breaker::builder("bench")
        .consecutive_failures(1)
        .open_duration(Duration::from_secs(3600))
        .clock(Clock::coarse())
        .build();
    coarse.try_acquire().unwrap().failure();
    g.bench_function("try_acquire_coarse_clock", |b| {
        b.iter(|| coarse.try_acquire().is_err())
    });
    g.finish();
}

/// A time window holding `in_window` calls: a manual clock moves one bucket
/// every `in_window / 10` calls, so the cost per call must not depend on it.
fn time_window_volume(c: &mut Criterion) {
    let mut g = c.benchmark_group("time_window_volume");
    for (label, in_window) in [("1k", 1_000u64), ("1M", 1_000_000)] {
        let clock = ManualClock::new();
        let breaker = Breaker::builder("bench")
            .time_window(Duration::from_secs(10), 10)
            .minimum_calls(u64::MAX)
            .clock(clock.clone())
            .build();
        let mut svc = breaker.layer().layer(inner());
        let per_bucket = in_window / 10;
        let mut calls = 0u64;
        // Fill the window first.
        for _ in 0..in_window {
            drive(&mut svc).unwrap();
            calls += 1;
            if calls % per_bucket == 0 {
                clock.advance(Duration::from_secs(1));
            }
        }
        assert!(breaker.counts().window_calls >= in_window);
        g.bench_function(label, |b| {
            b.iter(|| {
                let out = drive(&mut svc);
                calls += 1;
                if calls % per_bucket == 0 {
                    clock.advance(Duration::from_secs(1));
                }
                out
            })
        });
        let calls_in_window = breaker.counts().window_calls;
        assert!(
            calls_in_window >= in_window && calls_in_window <= in_window + per_bucket,
            "{label}: {calls_in_window} calls in the window"
        );
    }
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .sample_size(50);
    targets = closed_one_thread, closed_two_threads, open, time_window_volume
}
criterion_main!(benches);
