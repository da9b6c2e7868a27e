//! The cost of the chaos layer: off (one relaxed atomic load per call) and
//! on without faults drawn (the shared random sequence and the counters),
//! against the bare service (and a closed breaker, for scale), through the generic call path (a service per
//! caller, `ready()`, `call()`, the future moved and awaited), one thread.
//!
//! `cargo bench --bench chaos`.

use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use tower::Layer;
use tower_recovery::chaos::{Chaos, Faults};

mod support;
use support::{inner, run_one_thread as run};

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
