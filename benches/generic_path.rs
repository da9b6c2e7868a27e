//! The breaker as generic Tower code drives it: each caller owns a clone of
//! the service, awaits `ServiceExt::ready`, calls `call(req)` and moves the
//! response future by value into the `.await` that completes it (what
//! `tower::util::Oneshot`, `Buffer`'s worker and axum do). Medians against
//! the bare inner service, in one run.
//!
//! `cargo bench --bench generic_path`. `peer-bench/` drives the peers the
//! same way.

use std::hint::black_box;
use std::sync::Barrier;
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};
use tower::{Layer, Service, ServiceExt};
use tower_recovery::circuit_breaker::Breaker;

mod support;
use support::{block_on, inner};

/// One caller: `iters` calls through its own clone of the service.
async fn caller<S>(mut svc: S, iters: u64, fail: bool)
where
    S: Service<bool>,
{
    for _ in 0..iters {
        let Ok(ready) = svc.ready().await else {
            unreachable!("never fails poll_ready")
        };
        let future = ready.call(black_box(fail));
        // Moved by value, as a generic caller's `.await` does.
        let out = black_box(future).await;
        black_box(out.is_ok());
    }
}

/// `iters` calls by `threads` callers at once, each with its own clone; the
/// time per call is the slowest caller's.
fn run<S>(svc: &S, threads: usize, iters: u64, fail: bool) -> Duration
where
    S: Service<bool> + Clone + Send,
{
    if threads == 1 {
        let svc = svc.clone();
        let start = Instant::now();
        block_on(caller(svc, iters, fail));
        return start.elapsed();
    }
    let barrier = Barrier::new(threads);
    std::thread::scope(|scope| {
        let handles: Vec<_> = (0..threads)
            .map(|_| {
                let svc = svc.clone();
                let barrier = &barrier;
                scope.spawn(move || {
                    barrier.wait();
                    let start = Instant::now();
                    block_on(caller(svc, iters, fail));
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

/// The default configuration of each trip rule, built as a user would.
fn breakers() -> Vec<(&'static str, Breaker)> {
    vec![
        ("consecutive", Breaker::builder("bench").build()),
        (
            "count_window_1k",
            Breaker::builder("bench").count_window(1_000).build(),
        ),
        (
            "count_window_1M",
            Breaker::builder("bench").count_window(1_000_000).build(),
        ),
        (
            "time_window_10s",
            Breaker::builder("bench")
                .time_window(Duration::from_secs(10), 10)
                .build(),
        ),
    ]
}

fn closed(c: &mut Criterion, threads: usize) {
    let mut g = c.benchmark_group(format!("generic_closed_{threads}_thread"));
    let bare = inner();
    g.bench_function("bare", |b| b.iter_custom(|n| run(&bare, threads, n, false)));
    for (name, breaker) in breakers() {
        let svc = breaker.layer().layer(inner());
        g.bench_function(name, |b| b.iter_custom(|n| run(&svc, threads, n, false)));
    }
    g.finish();
}

fn closed_one_thread(c: &mut Criterion) {
    closed(c, 1);
}

fn closed_two_threads(c: &mut Criterion) {
    closed(c, 2);
}

fn open(c: &mut Criterion) {
    let mut g = c.benchmark_group("generic_open_rejection");
    let breaker = Breaker::builder("bench")
        .open_duration(Duration::from_secs(3600))
        .build();
    let svc = breaker.layer().layer(inner());
    run(&svc, 1, 5, true);
    assert!(breaker.try_acquire().is_err(), "tripped");
    for threads in [1, 2] {
        g.bench_function(format!("{threads}_thread"), |b| {
            b.iter_custom(|n| run(&svc, threads, n, false))
        });
    }
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .sample_size(30);
    targets = closed_one_thread, closed_two_threads, open
}
criterion_main!(benches);
