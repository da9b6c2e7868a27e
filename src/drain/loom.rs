//! Model checking of the drain's in-flight handshake with `loom`. Run with
//! `RUSTFLAGS="--cfg tower_recovery_loom" cargo test --lib loom`.
//!
//! Invariant: a request and the drain's "zero in flight?" never miss each
//! other: once the drain has begun rejecting and reads zero, no admitted
//! request is still running; and every request that leaves during the drain
//! is counted once, as finished or cut off. An outbound client never refuses
//! a request still running, and once it refused, it stays refused.

use std::sync::Arc;

use loom::sync::atomic::{AtomicBool, Ordering};
use loom::thread;

use super::{CLOSED, Drain, REJECTING};

fn model<F: Fn() + Sync + Send + 'static>(f: F) {
    let mut builder = loom::model::Builder::new();
    builder.preemption_bound = Some(3);
    builder.check(f);
}

#[test]
fn a_request_and_the_zero_check_never_miss_each_other() {
    model(|| {
        let drain = Drain::builder().build();
        let running = Arc::new(AtomicBool::new(false));
        let request = {
            let (shared, running) = (drain.shared.clone(), running.clone());
            thread::spawn(move || match shared.enter() {
                Some(guard) => {
                    running.store(true, Ordering::SeqCst);
                    running.store(false, Ordering::SeqCst);
                    guard.finish();
                    true
                }
                None => false,
            })
        };
        drain.shared.set_phase(REJECTING);
        if drain.shared.in_flight.0.load(Ordering::SeqCst) == 0 {
            assert!(
                !running.load(Ordering::SeqCst),
                "the drain saw zero in flight while a request ran"
            );
        }
        let admitted = request.join().unwrap();
        assert_eq!(drain.shared.in_flight.0.load(Ordering::SeqCst), 0);
        let progress = super::lock(&drain.shared.progress);
        assert_eq!(progress.cut_off, 0, "a finished request is never cut off");
        assert!(
            progress.finished <= u64::from(admitted),
            "counted at most once"
        );
    });
}

#[test]
fn two_requests_leaving_as_the_drain_begins_are_each_counted_once() {
    model(|| {
        let drain = Drain::builder().build();
        let a = drain.shared.enter().expect("serving");
        let b = drain.shared.enter().expect("serving");
        let t = thread::spawn(move || a.finish());
        drain.shared.set_phase(REJECTING);
        drop(b); // cut off
        t.join().unwrap();
        assert_eq!(drain.shared.in_flight.0.load(Ordering::SeqCst), 0);
        let progress = super::lock(&drain.shared.progress);
        // `b` left after the phase change: counted as cut off. `a` is
        // counted (finished) only if it left during the drain.
        assert_eq!(progress.cut_off, 1);
        assert!(progress.finished <= 1);
    });
}

/// A request calling a client while the drain closes is never refused; once
/// the drain is closed and the request has left, clients refuse.
#[test]
fn a_client_never_refuses_a_running_request_and_refuses_once_none_runs() {
    model(|| {
        let drain = Drain::builder().build();
        let request = {
            let shared = drain.shared.clone();
            thread::spawn(move || {
                if let Some(guard) = shared.enter() {
                    assert!(
                        !shared.clients_closed(),
                        "a client refused a request still running"
                    );
                    guard.finish();
                }
            })
        };
        drain.shared.set_phase(REJECTING);
        drain.shared.set_phase(CLOSED);
        request.join().unwrap();
        assert!(
            drain.shared.clients_closed(),
            "closed: the drain is over and nothing runs"
        );
    });
}

/// A request arriving as the drain closes may take a count for a moment
/// before it is turned away; that must not reopen a client that has refused
/// already.
#[test]
fn once_a_client_refused_it_stays_refused() {
    model(|| {
        let drain = Drain::builder().build();
        let late = {
            let shared = drain.shared.clone();
            // Admitted (and finished at once) or turned away, depending on
            // when it arrives.
            thread::spawn(move || {
                if let Some(guard) = shared.enter() {
                    guard.finish();
                }
            })
        };
        drain.shared.set_phase(REJECTING);
        drain.shared.set_phase(CLOSED);
        let first = drain.shared.clients_closed();
        let second = drain.shared.clients_closed();
        assert!(!first || second, "refused, then open again");
        late.join().unwrap();
        assert!(drain.shared.clients_closed());
    });
}
