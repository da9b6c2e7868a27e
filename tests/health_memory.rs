//! Memory held by health state: 100 dependencies with full histories, and
//! the monitor's tasks. Measured with a counting global allocator (bytes
//! allocated and not yet freed); printed, and bounded by the seed's promise
//! of about 1 MB.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicIsize, Ordering};
use std::time::Duration;

use tower_recovery::health::{Dependency, HealthCheck, Monitor, Reliability};

struct Counting;

static LIVE: AtomicIsize = AtomicIsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size() as isize, Ordering::Relaxed);
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size() as isize, Ordering::Relaxed);
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LIVE.fetch_add(
            new_size as isize - layout.size() as isize,
            Ordering::Relaxed,
        );
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

#[tokio::test(start_paused = true)]
async fn hundred_dependencies_with_full_histories_fit_in_a_megabyte() {
    let before = LIVE.load(Ordering::Relaxed);
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
    let held = LIVE.load(Ordering::Relaxed) - before;
    println!("health state for 100 dependencies x 100 results, monitor running: {held} bytes");
    assert!(held < 1 << 20, "{held} bytes");
    monitor.stop().await;
}
