//! The cost of `RetryPolicy` on the success path (no retry made): the
//! breaker alone against `tower::retry::Retry` with the policy around it,
//! through the generic call path (a service per caller, `ready()`,
//! `call()`, the future moved and awaited), one thread, medians in one
//! run. A success deposits into the shared retry budget: that deposit is
//! most of the cost.
//!
//! `cargo bench --features retry --bench retry`.

use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use tower::Layer;
use tower::retry::RetryLayer;
use tower_recovery::circuit_breaker::Breaker;

mod support;
use support::{inner, run_one_thread as run};
use tower_recovery::retry::RetryPolicy;

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
