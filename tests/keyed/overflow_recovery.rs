//! The overflow breaker's recovery, made late (at the first call routed to
//! it from inside a runtime).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tower_recovery::circuit_breaker::keyed::KeyedBreaker;
use tower_recovery::circuit_breaker::{Breaker, State};
use tower_recovery::recovery::{Recovery, RecoveryState};

/// The overflow breaker is opened by calls made outside a runtime (a
/// startup check, a plain thread); its recovery is made later, at the
/// first call routed to it from inside one, and takes the outage under
/// way as "before I watched": it never runs, and the overflow breaker
/// stays open for its whole open duration (an hour here) although its
/// recovery would close it at once. A key's recovery is never in this
/// position (made with its breaker, or never: `without_recovery`).
#[test]
fn the_overflow_recovery_recovers_an_outage_under_way_when_made() {
    let attempts = Arc::new(AtomicUsize::new(0));
    let counted = attempts.clone();
    let keyed = KeyedBreaker::<u32>::builder(
        Breaker::builder("host")
            .consecutive_failures(1)
            .open_duration(Duration::from_secs(3600)),
    )
    .max_keys(1)
    .overflow_recovery(Recovery::builder("ignored", move || {
        counted.fetch_add(1, Ordering::SeqCst);
        async { Ok::<_, String>(()) }
    }))
    .build();
    // Outside a runtime: key 1 has the one place, key 2 is routed to the
    // overflow breaker (no recovery can be spawned here), and fails.
    keyed.get(&1);
    keyed.get(&2).try_acquire().unwrap().failure();
    assert_eq!(keyed.overflow().state(), State::Open);
    assert!(keyed.overflow_recovery().is_none());

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .build()
        .unwrap();
    rt.block_on(async {
        // A call routed to it from a runtime makes its recovery.
        let refused = keyed.get(&3).try_acquire().is_err();
        assert!(refused, "the overflow breaker is open");
        let recovery = keyed.overflow_recovery().expect("made now");
        // Within the cooldown that follows the success (5 s at least, the
        // adaptive mode's default).
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert_eq!(
            (
                recovery.status().state,
                attempts.load(Ordering::SeqCst),
                keyed.overflow().state()
            ),
            (RecoveryState::CoolingDown, 1, State::Closed),
            "the overflow breaker's outage is its recovery's to recover"
        );
        assert_eq!(recovery.status().recoveries, 1);
    });
}
