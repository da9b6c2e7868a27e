//! Memory held by health state: 100 dependencies with full histories, and
//! the monitor's tasks. Measured with a counting global allocator (bytes
//! allocated and not yet freed); printed, and bounded by the seed's promise
//! of about 1 MB.

use std::time::Duration;

use tower_recovery::health::{Dependency, HealthCheck, Monitor, Reliability};

#[path = "common/live_bytes.rs"]
mod live_bytes;

use live_bytes::live;

#[tokio::test(start_paused = true)]
async fn hundred_dependencies_with_full_histories_fit_in_a_megabyte() {
    let before = live();
    let mut builder = Reliability::builder().history_size(100);
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
    let set = builder.build().unwrap();
    let monitor = Monitor::start(&set, Duration::from_secs(30));
    // 120 rounds: every history full (100) and wrapped.
    tokio::time::sleep(Duration::from_secs(30 * 120)).await;
    let report = set.report();
    assert!(report.dependencies.iter().all(|d| d.checks >= 120));
    drop(report);
    let held = live() - before;
    println!("health state for 100 dependencies x 100 results, monitor running: {held} bytes");
    assert!(held < 1 << 20, "{held} bytes");
    monitor.stop().await;
}
