//! The cost of the chaos layer: off (one relaxed atomic load per call) and
//! on without faults drawn (the shared random sequence and the counters),
//! against the bare service (and a closed breaker, for scale), through the generic call path (a service per
//! caller, `ready()`, `call()`, the future moved and awaited), one thread.
//!
//! `cargo bench --bench chaos`.

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};
use tower::{Layer, Service, ServiceExt};
use tower_recovery::chaos::{Chaos, Faults};

mod support;
use support::{block_on, inner};

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

fn chaos(c: &mut Criterion) {
    let mut g = c.benchmark_group("chaos");
    let bare = inner();
    g.bench_function("bare", |b| b.iter_custom(|n| run(&bare, n)));
    // For scale: a closed breaker, the crate's measured hot path.
    let breaker = tower_recovery::circuit_breaker::Breaker::new("bench");
    let svc = breaker.layer().layer(inner());
    g.bench_function("breaker_closed", |b| b.iter_custom(|n| run(&svc, n)));
    let off = Chaos::new("bench");
    let svc = off.layer().layer(inner());
    g.bench_function("off", |b| b.iter_custom(|n| run(&svc, n)));
    let on = Chaos::new("bench");
    on.start(Faults::new());
    let svc = on.layer().layer(inner());
    g.bench_function("on_no_fault_drawn", |b| b.iter_custom(|n| run(&svc, n)));
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .sample_size(30);
    targets = chaos
}
criterion_main!(benches);
