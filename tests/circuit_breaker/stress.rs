//! Many threads share one breaker while it trips and heals.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Barrier, Mutex};
use std::time::Duration;

use tower_recovery::circuit_breaker::{Breaker, State};
use tower_recovery::clock::ManualClock;

fn run(breaker: Breaker, clock: ManualClock, permits: u16) {
    const THREADS: usize = 4;
    /// Phases the driver runs; each waits for the workers to make 2,000 calls.
    const ROUNDS: u64 = 45;
    let mut events = breaker.subscribe();
    // The stream is bounded (64): read it as the run goes, as a real
    // observer would, on a thread of its own.
    let reader = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        rt.block_on(async move {
            let mut seen = Vec::new();
            loop {
                match events.recv().await {
                    Ok(t) => seen.push(t),
                    Err(tower_recovery::circuit_breaker::RecvError::Closed) => return seen,
                    Err(lagged) => panic!("the reader fell behind: {lagged}"),
                }
            }
        })
    });
    let healthy = Arc::new(AtomicBool::new(true));
    let done = Arc::new(AtomicBool::new(false));
    let probes: Arc<Mutex<HashMap<u64, u32>>> = Arc::default();
    let (failures, rejected, successes) = (
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicU64::new(0)),
    );
    let calls = Arc::new(AtomicU64::new(0));
    let start = Arc::new(Barrier::new(THREADS + 1));

    let workers: Vec<_> = (0..THREADS)
        .map(|t| {
            let (breaker, healthy, probes, calls, done) = (
                breaker.clone(),
                healthy.clone(),
                probes.clone(),
                calls.clone(),
                done.clone(),
            );
            let (failures, rejected, successes, start) = (
                failures.clone(),
                rejected.clone(),
                successes.clone(),
                start.clone(),
            );
            std::thread::spawn(move || {
                start.wait();
                let mut i = 0usize;
                while !done.load(Ordering::Acquire) {
                    i += 1;
                    calls.fetch_add(1, Ordering::Relaxed);
                    match breaker.try_acquire() {
                        Ok(permit) => {
                            if permit.is_probe() {
                                *probes
                                    .lock()
                                    .unwrap()
                                    .entry(permit.generation())
                                    .or_default() += 1;
                            }
                            if (i + t) % 7 == 0 {
                                std::thread::yield_now();
                            }
                            if healthy.load(Ordering::Relaxed) {
                                successes.fetch_add(1, Ordering::Relaxed);
                                permit.success();
                            } else {
                                failures.fetch_add(1, Ordering::Relaxed);
                                permit.failure();
                            }
                        }
                        Err(_) => {
                            rejected.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
            })
        })
        .collect();

    // The driver: flips health and moves time so the breaker trips and heals.
    let driver = {
        let (clock, healthy, done, start, calls) = (
            clock.clone(),
            healthy.clone(),
            done.clone(),
            start.clone(),
            calls.clone(),
        );
        std::thread::spawn(move || {
            start.wait();
            let deadline = std::time::Instant::now() + Duration::from_secs(60);
            for round in 1..=ROUNDS {
                // Two healthy phases, then two failing ones: long enough for a
                // time window (about three phases wide) to reach the rate.
                healthy.store(round % 4 < 2, Ordering::Relaxed);
                clock.advance(Duration::from_millis(5));
                // Each phase lasts until the workers made 2,000 more calls.
                let from = calls.load(Ordering::Relaxed);
                while calls.load(Ordering::Relaxed) < from + 2_000
                    && std::time::Instant::now() < deadline
                {
                    std::thread::yield_now();
                }
            }
            done.store(true, Ordering::Release);
            assert!(
                std::time::Instant::now() < deadline,
                "workers made no progress in 60 s"
            );
            ROUNDS
        })
    };
    let rounds = driver.join().unwrap();
    for w in workers {
        w.join().unwrap();
    }

    let snap = breaker.snapshot();
    let total = calls.load(Ordering::Relaxed);
    let (f, r, s) = (
        failures.load(Ordering::Relaxed),
        rejected.load(Ordering::Relaxed),
        successes.load(Ordering::Relaxed),
    );
    assert_eq!(
        f + r + s,
        total,
        "every call is a success, a failure or a rejection"
    );
    assert_eq!(snap.failures, f, "breaker failures add up");
    assert_eq!(snap.rejected, r, "breaker rejections add up");

    let probes = probes.lock().unwrap();
    for (generation, admitted) in probes.iter() {
        assert!(
            *admitted <= u32::from(permits),
            "half-open generation {generation} admitted {admitted} > {permits}"
        );
    }

    // Every transition was delivered, in order, chained.
    let transitions = snap.transitions;
    drop(breaker);
    let seen = reader.join().unwrap();
    assert_eq!(seen.len() as u64, transitions);
    for pair in seen.windows(2) {
        assert_eq!(pair[0].to, pair[1].from, "chained");
        assert_eq!(pair[0].generation + 1, pair[1].generation, "ordered");
    }
    let opened = seen.iter().filter(|t| t.to == State::Open).count();
    let closed = seen.iter().filter(|t| t.to == State::Closed).count();
    println!(
        "stress: {total} calls, tripped {opened} and healed {closed} times over {rounds} phases"
    );
    assert!(
        opened >= 2 && closed >= 2,
        "tripped {opened} and healed {closed} times over {rounds} rounds"
    );
}

#[test]
fn threads_share_one_breaker_consecutive() {
    let clock = ManualClock::new();
    let breaker = Breaker::builder("stress")
        .consecutive_failures(5)
        .open_duration(Duration::from_millis(2))
        .half_open_permits(3)
        .clock(clock.clone())
        .build();
    run(breaker, clock, 3);
}

#[test]
fn threads_share_one_breaker_count_window() {
    let clock = ManualClock::new();
    let breaker = Breaker::builder("stress")
        .count_window(50)
        .minimum_calls(20)
        .failure_rate(0.5)
        .open_duration(Duration::from_millis(2))
        .half_open_permits(2)
        .clock(clock.clone())
        .build();
    run(breaker, clock, 2);
}

#[test]
fn threads_share_one_breaker_time_window() {
    let clock = ManualClock::new();
    let breaker = Breaker::builder("stress")
        .time_window(Duration::from_millis(10), 5)
        .minimum_calls(20)
        .failure_rate(0.5)
        .open_duration(Duration::from_millis(2))
        .half_open_permits(4)
        .clock(clock.clone())
        .build();
    run(breaker, clock, 4);
}
