//! Memory held per breaker and per recovery, measured with a counting global
//! allocator (bytes allocated and not yet freed), printed, and bounded, so
//! that the figures in the README stay true and a regression shows.
//!
//! One test in this binary: the count is process-wide.

use std::time::Duration;

use tower_recovery::circuit_breaker::Breaker;
use tower_recovery::recovery::Recovery;

#[path = "common/live_bytes.rs"]
mod live_bytes;

use live_bytes::live;

/// Bytes held per item by `n` items that `make` builds.
fn per_item<T>(n: usize, make: impl Fn(usize) -> T) -> isize {
    let before = live();
    let items: Vec<T> = (0..n).map(&make).collect();
    let held = live() - before;
    let vec = (n * std::mem::size_of::<T>()) as isize;
    drop(items);
    (held - vec) / n as isize
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn memory_per_breaker_and_per_recovery() {
    // Warm up what is made once per process (the coarse clock, stripes).
    drop(
        Breaker::builder("warm")
            .time_window(Duration::from_secs(10), 10)
            .build(),
    );

    let consecutive = per_item(1_000, |i| Breaker::new(format!("dependency_{i}")));
    let count = per_item(1_000, |i| {
        Breaker::builder(format!("dependency_{i}"))
            .count_window(100)
            .build()
    });
    let time = per_item(1_000, |i| {
        Breaker::builder(format!("dependency_{i}"))
            .time_window(Duration::from_secs(10), 10)
            .build()
    });
    let recovery = {
        let breakers: Vec<Breaker> = (0..100)
            .map(|i| Breaker::new(format!("dependency_{i}")))
            .collect();
        let before = live();
        let recoveries: Vec<Recovery> = (0..100)
            .map(|i| {
                Recovery::builder(format!("dependency_{i}"), || async { Ok::<_, String>(()) })
                    .watch(&breakers[i])
                    .spawn()
            })
            .collect();
        // Let the tasks start (their first poll allocates their state).
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
        let held = live() - before;
        let vec = (100 * std::mem::size_of::<Recovery>()) as isize;
        drop(recoveries);
        (held - vec) / 100
    };
    // A breaker that has run calls and has a subscriber (its transition
    // channel is made then) and a time window (its clock chosen then).
    let used = {
        let before = live();
        let b = Breaker::builder("used")
            .time_window(Duration::from_secs(10), 10)
            .build();
        let events = b.subscribe();
        for _ in 0..1_000 {
            b.try_acquire().unwrap().success();
        }
        let held = live() - before;
        drop((events, b));
        held
    };
    println!(
        "memory per breaker: consecutive {consecutive} B, count window of 100 {count} B, time window of 10 buckets {time} B, that one used and subscribed to {used} B; per recovery (handle and task) {recovery} B"
    );
    // Bounds with room for machines with more cores (up to 8 stripes).
    assert!(consecutive < 6 * 1024, "{consecutive} bytes per breaker");
    assert!(count < 6 * 1024, "{count} bytes per count-window breaker");
    assert!(time < 12 * 1024, "{time} bytes per time-window breaker");
    assert!(recovery < 4 * 1024, "{recovery} bytes per recovery");
    assert!(
        used < 24 * 1024,
        "{used} bytes for a used, observed breaker"
    );
}
