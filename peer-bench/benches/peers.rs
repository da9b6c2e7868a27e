//! tower-recovery's breaker side by side with recloser, failsafe, seatbelt and
//! tower-resilience-circuitbreaker, wrapping the same inner call, in one run.
//!
//! `cd peer-bench && cargo bench` (see the crate README).
//!
//! Each peer is driven the way its documentation shows: recloser and
//! failsafe through their synchronous `call(closure)`, seatbelt and
//! tower-resilience as Tower services (`poll_ready`, `call`, poll the future).
//! Ours is measured both ways: as a Tower layer (with a counted and a leaked
//! handle) and through `try_acquire`, the synchronous equivalent.

use std::fmt;
use std::future::Future;
use std::hint::black_box;
use std::pin::pin;
use std::sync::Barrier;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};
use tower::{Layer, Service, service_fn};

type Output = Result<u8, fmt::Error>;

#[inline]
fn work(fail: bool) -> Output {
    if fail { Err(fmt::Error) } else { Ok(1) }
}

type Inner = tower::util::ServiceFn<fn(bool) -> std::future::Ready<Output>>;

fn inner() -> Inner {
    service_fn(|fail: bool| std::future::ready(work(fail)))
}

/// Polls to completion. The inner call is always ready; a contender whose
/// own future is pending (a lock taken by the other thread) is polled again.
#[inline]
fn now<F: Future>(f: F) -> F::Output {
    let mut cx = Context::from_waker(Waker::noop());
    let mut f = pin!(f);
    loop {
        if let Poll::Ready(out) = f.as_mut().poll(&mut cx) {
            return out;
        }
        std::hint::spin_loop();
    }
}

#[inline]
fn drive<S: Service<bool>>(svc: &mut S, fail: bool) -> Result<S::Response, S::Error> {
    let mut cx = Context::from_waker(Waker::noop());
    loop {
        match svc.poll_ready(&mut cx) {
            Poll::Ready(Ok(())) => break,
            Poll::Ready(Err(_)) => unreachable!("no contender fails poll_ready"),
            Poll::Pending => std::hint::spin_loop(),
        }
    }
    now(svc.call(black_box(fail)))
}

/// One call, through whichever API the contender offers. Clones share state.
trait Contender: Clone + Send {
    fn call(&mut self, fail: bool) -> bool;
}

#[derive(Clone)]
struct Tower<S>(S);

impl<S> Contender for Tower<S>
where
    S: Service<bool> + Clone + Send,
{
    #[inline]
    fn call(&mut self, fail: bool) -> bool {
        drive(&mut self.0, fail).is_ok()
    }
}

#[derive(Clone)]
struct OursAcquire(tower_recovery::circuit_breaker::Breaker);

impl Contender for OursAcquire {
    #[inline]
    fn call(&mut self, fail: bool) -> bool {
        match self.0.try_acquire() {
            Ok(permit) => {
                let out = work(black_box(fail));
                if out.is_ok() { permit.success() } else { permit.failure() }
                out.is_ok()
            }
            Err(_) => false,
        }
    }
}

#[derive(Clone)]
struct Recloser(std::sync::Arc<recloser::Recloser>);

impl Contender for Recloser {
    #[inline]
    fn call(&mut self, fail: bool) -> bool {
        self.0.call(|| work(black_box(fail))).is_ok()
    }
}

struct Failsafe<P: failsafe::failure_policy::FailurePolicy + Send + Sync>(
    std::sync::Arc<failsafe::StateMachine<P, ()>>,
);

impl<P: failsafe::failure_policy::FailurePolicy + Send + Sync> Clone for Failsafe<P> {
    fn clone(&self) -> Self {
        Self(self.0.clone())
    }
}

impl<P> Contender for Failsafe<P>
where
    P: failsafe::failure_policy::FailurePolicy + Send + Sync,
{
    #[inline]
    fn call(&mut self, fail: bool) -> bool {
        use failsafe::CircuitBreaker;
        (*self.0).call(|| work(black_box(fail))).is_ok()
    }
}

/// Every contender, closed, configured to trip after 5 consecutive failures
/// where the peer supports it (its nearest equivalent otherwise).
fn contenders(rt: &tokio::runtime::Runtime) -> Vec<(&'static str, Box<dyn FnMut() -> Box<dyn ContenderDyn>>)> {
    let ours = tower_recovery::circuit_breaker::Breaker::new("bench");
    let ours_leaked = ours.leak();
    let coarse = tower_recovery::circuit_breaker::Breaker::builder("bench")
        .clock(tower_recovery::clock::Clock::coarse())
        .build()
        .leak();
    let recloser = std::sync::Arc::new(recloser::Recloser::custom().closed_len(5).error_rate(1.0).build());
    let failsafe = failsafe::Config::new()
        .failure_policy(failsafe::failure_policy::consecutive_failures(
            5,
            failsafe::backoff::constant(Duration::from_secs(30)),
        ))
        .build();
    let tr = tower_resilience_circuitbreaker::CircuitBreakerLayer::builder()
        .consecutive_failures(5)
        .build()
        .expect("valid config");
    let tr_svc = tr.layer(inner());
    let seatbelt_svc = {
        let _enter = rt.enter();
        let clock = tick::Clock::new_tokio();
        let context: seatbelt::ResilienceContext<bool, Output> = seatbelt::ResilienceContext::new(&clock);
        let layer = seatbelt::breaker::Breaker::layer("bench", &context)
            .recovery_with(|out: &Output, _| match out {
                Ok(_) => seatbelt::RecoveryInfo::never(),
                Err(_) => seatbelt::RecoveryInfo::retry(),
            })
            .rejected_input_error(|_, _| fmt::Error);
        use layered::Stack;
        (layer, layered::Execute::new(|fail: bool| async move { work(fail) })).into_service()
    };

    let ours_layer = Tower(ours.layer().layer(inner()));
    let ours_leaked_layer = Tower(ours_leaked.layer().layer(inner()));
    let ours_acquire = OursAcquire(ours_leaked);
    let coarse_layer = Tower(coarse.layer().layer(inner()));
    let coarse_acquire = OursAcquire(coarse);
    let recloser = Recloser(recloser);
    let failsafe = Failsafe(std::sync::Arc::new(failsafe));
    let tr = Tower(tr_svc);
    let seatbelt = Tower(seatbelt_svc);
    vec![
        ("bare", boxed(Tower(inner()))),
        ("tower-recovery layer", boxed(ours_layer)),
        ("tower-recovery layer, leaked handle", boxed(ours_leaked_layer)),
        ("tower-recovery try_acquire", boxed(ours_acquire)),
        ("tower-recovery layer, leaked handle, coarse clock", boxed(coarse_layer)),
        ("tower-recovery try_acquire, coarse clock", boxed(coarse_acquire)),
        ("recloser 1.4", boxed(recloser)),
        ("failsafe 1.3", boxed(failsafe)),
        ("seatbelt 0.11", boxed(seatbelt)),
        ("tower-resilience 0.14", boxed(tr)),
    ]
}

trait ContenderDyn: Send {
    fn one_thread(&mut self, iters: u64, fail: bool) -> Duration;
    fn two_threads(&self, iters: u64) -> Duration;
}

impl<T: Contender + 'static> ContenderDyn for T {
    fn one_thread(&mut self, iters: u64, fail: bool) -> Duration {
        let start = Instant::now();
        for _ in 0..iters {
            black_box(self.call(fail));
        }
        start.elapsed()
    }

    fn two_threads(&self, iters: u64) -> Duration {
        let barrier = Barrier::new(2);
        std::thread::scope(|scope| {
            let handles: Vec<_> = (0..2)
                .map(|_| {
                    let mut me = self.clone();
                    let barrier = &barrier;
                    scope.spawn(move || {
                        barrier.wait();
                        let start = Instant::now();
                        for _ in 0..iters {
                            black_box(me.call(false));
                        }
                        start.elapsed()
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).max().unwrap()
        })
    }
}

fn boxed<T: Contender + 'static>(t: T) -> Box<dyn FnMut() -> Box<dyn ContenderDyn>> {
    Box::new(move || Box::new(t.clone()))
}

fn closed(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let _enter = rt.enter();
    let mut g = c.benchmark_group("closed_1_thread");
    for (name, mut make) in contenders(&rt) {
        let mut contender = make();
        g.bench_function(name, |b| b.iter_custom(|iters| contender.one_thread(iters, false)));
    }
    g.finish();
    let mut g = c.benchmark_group("closed_2_threads");
    for (name, mut make) in contenders(&rt) {
        let contender = make();
        g.bench_function(name, |b| b.iter_custom(|iters| contender.two_threads(iters)));
    }
    g.finish();
}

fn open(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let _enter = rt.enter();
    let mut g = c.benchmark_group("open_rejection");
    for (name, mut make) in contenders(&rt) {
        if name == "bare" {
            continue;
        }
        let mut contender = make();
        // Trip it: enough failures for every peer's policy.
        for _ in 0..200 {
            contender.one_thread(1, true);
        }
        g.bench_function(name, |b| b.iter_custom(|iters| contender.one_thread(iters, false)));
    }
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .sample_size(50);
    targets = closed, open
}
criterion_main!(benches);
