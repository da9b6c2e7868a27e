//! CPU cost of health monitoring: one round of 100 dependency checks (each
//! under its timeout, latency measured, result recorded), and building the
//! report the admin router serves. At the seed's 30 s interval, the share of
//! one core is `round / 30 s`.

use std::hint::black_box;
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use tower_recovery::health::{Dependency, HealthCheck, Reliability};

fn hundred() -> Reliability {
    let mut builder = Reliability::builder();
    for i in 0..100 {
        let check = HealthCheck::new(move || async move {
            if i % 10 == 0 {
                Err(format!("dependency {i}: connection refused"))
            } else {
                Ok(())
            }
        });
        builder = builder.dependency(Dependency::new(format!("dependency_{i}"), check));
    }
    builder.build().unwrap()
}

fn monitor_round(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let set = hundred();
    let mut g = c.benchmark_group("health");
    g.bench_function("round_of_100_checks", |b| {
        b.iter(|| rt.block_on(set.check_all()))
    });
    rt.block_on(set.check_all());
    g.bench_function("report_100_dependencies", |b| {
        b.iter(|| black_box(set.report()))
    });
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .sample_size(50);
    targets = monitor_round
}
criterion_main!(benches);
