//! The cost of `RetryPolicy` on the success path (no retry made): the
//! breaker alone against `tower::retry::Retry` with the policy around it,
//! through the generic call path (a service per caller, `ready()`,
//! `call()`, the future moved and awaited), one thread, medians in one
//! run. A success deposits into the shared retry budget: that deposit is
//! most of the cost.
//!
//! `cargo bench --features retry --bench retry`.

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};
use tower::retry::RetryLayer;
use tower::{Layer, Service, ServiceExt};
use tower_recovery::circuit_breaker::Breaker;

mod support;
use support::{block_on, inner};
use tower_recovery::retry::RetryPolicy;

fn run<S>(svc: &S, iters: u64) -> Duration
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

fn retry(c: &mut Criterion) {
    let mut g = c.benchmark_group("retry_success_path");
    let breaker = Breaker::new("bench");
    let plain = breaker.layer().layer(inner());
    g.bench_function("breaker", |b| b.iter_custom(|n| run(&plain, n)));
    let retried = RetryLayer::new(RetryPolicy::errors()).layer(breaker.layer().layer(inner()));
    g.bench_function("retry_policy_and_breaker", |b| {
        b.iter_custom(|n| run(&retried, n))
    });
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .sample_size(30);
    targets = retry
}
criterion_main!(benches);
