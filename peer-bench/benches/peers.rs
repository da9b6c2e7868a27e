//! tower-recovery's breaker side by side with recloser, failsafe, seatbelt and
//! tower-resilience-circuitbreaker, wrapping the same inner call, in one run.
//!
//! `cd peer-bench && cargo bench` (see the crate README).
//!
//! Every contender is driven the way generic Tower code drives a service
//! (`tower::util::Oneshot`, `Buffer`'s worker, axum): each caller owns a
//! clone of the service, awaits `ServiceExt::ready`, calls `call(req)` and
//! moves the response future by value into the `.await` that completes it.
//! seatbelt and tower-resilience are Tower services; recloser and failsafe
//! are wrapped in the Tower service a user would write around their
//! synchronous `call(closure)`. Ours is the default configuration
//! (`Breaker::builder(..).build().layer()`, default clock), as a user gets it.

use std::fmt;
use std::future::{Future, Ready, ready};
use std::hint::black_box;
use std::pin::pin;
use std::sync::{Arc, Barrier};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};
use tower::{Layer, Service, ServiceExt, service_fn};
use tower_recovery::BoxError;

type Output = Result<u8, fmt::Error>;

#[inline]
fn work(fail: bool) -> Output {
    if fail { Err(fmt::Error) } else { Ok(1) }
}

type Inner = tower::util::ServiceFn<fn(bool) -> Ready<Output>>;

fn inner() -> Inner {
    service_fn(|fail: bool| ready(work(fail)))
}

/// Polls `f` to completion with a no-op waker (a contender whose future is
/// pending, a lock taken by the other thread, is polled again).
fn block_on<F: Future>(f: F) -> F::Output {
    let mut cx = Context::from_waker(Waker::noop());
    let mut f = pin!(f);
    loop {
        if let Poll::Ready(out) = f.as_mut().poll(&mut cx) {
            return out;
        }
        std::hint::spin_loop();
    }
}

/// One caller: `iters` calls through its own clone of the service.
async fn caller<S: Service<bool>>(mut svc: S, iters: u64, fail: bool) {
    for _ in 0..iters {
        let Ok(ready) = svc.ready().await else {
            unreachable!("no contender fails poll_ready")
        };
        let future = ready.call(black_box(fail));
        let out = black_box(future).await;
        black_box(out.is_ok());
    }
}

/// A synchronous breaker as a Tower service.
#[derive(Clone)]
struct Sync<B>(B);

trait SyncBreaker: Clone + Send + 'static {
    fn run(&self, fail: bool) -> Result<u8, BoxError>;
}

#[derive(Clone)]
struct Recloser(Arc<recloser::Recloser>);

impl SyncBreaker for Recloser {
    #[inline]
    fn run(&self, fail: bool) -> Result<u8, BoxError> {
        self.0.call(|| work(fail)).map_err(|e| format!("{e:?}").into())
    }
}

struct Failsafe<P: failsafe::failure_policy::FailurePolicy + Send + std::marker::Sync>(
    Arc<failsafe::StateMachine<P, ()>>,
);

impl<P: failsafe::failure_policy::FailurePolicy + Send + std::marker::Sync> Clone for Failsafe<P> {
    fn clone(&self) -> Self {
        Self(self.0.clone())
    }
}

impl<P> SyncBreaker for Failsafe<P>
where
    P: failsafe::failure_policy::FailurePolicy + Send + std::marker::Sync + 'static,
{
    #[inline]
    fn run(&self, fail: bool) -> Result<u8, BoxError> {
        use failsafe::CircuitBreaker;
        (*self.0).call(|| work(fail)).map_err(|e| format!("{e:?}").into())
    }
}

impl<B: SyncBreaker> Service<bool> for Sync<B> {
    type Response = u8;
    type Error = BoxError;
    type Future = Ready<Result<u8, BoxError>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    #[inline]
    fn call(&mut self, fail: bool) -> Self::Future {
        ready(self.0.run(fail))
    }
}

/// A contender: runs `iters` calls on `threads` callers at once.
trait Contender: Send {
    fn run(&self, threads: usize, iters: u64, fail: bool) -> Duration;
}

struct Svc<S>(S);

impl<S> Contender for Svc<S>
where
    S: Service<bool> + Clone + Send,
{
    fn run(&self, threads: usize, iters: u64, fail: bool) -> Duration {
        if threads == 1 {
            let svc = self.0.clone();
            let start = Instant::now();
            block_on(caller(svc, iters, fail));
            return start.elapsed();
        }
        let barrier = Barrier::new(threads);
        // Contenders that arm tokio timers need the runtime's context.
        let runtime = tokio::runtime::Handle::current();
        std::thread::scope(|scope| {
            let handles: Vec<_> = (0..threads)
                .map(|_| {
                    let svc = self.0.clone();
                    let barrier = &barrier;
                    let runtime = &runtime;
                    scope.spawn(move || {
                        let _context = runtime.enter();
                        barrier.wait();
                        let start = Instant::now();
                        block_on(caller(svc, iters, fail));
                        start.elapsed()
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().unwrap())
                .max()
                .unwrap()
        })
    }
}

fn boxed<S>(s: S) -> Box<dyn Contender>
where
    S: Service<bool> + Clone + Send + 'static,
{
    Box::new(Svc(s))
}

/// Every contender, closed, configured to trip after 5 consecutive failures
/// where the peer supports it (its nearest equivalent otherwise).
fn contenders(rt: &tokio::runtime::Runtime) -> Vec<(&'static str, Box<dyn Contender>)> {
    use tower_recovery::circuit_breaker::Breaker;
    let ours = Breaker::builder("bench").build();
    let ours_count = Breaker::builder("bench").count_window(100).build();
    let ours_time = Breaker::builder("bench")
        .time_window(Duration::from_secs(10), 10)
        .build();
    let recloser = Arc::new(
        recloser::Recloser::custom()
            .closed_len(5)
            .error_rate(1.0)
            .build(),
    );
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
    let seatbelt_svc = {
        let _enter = rt.enter();
        let clock = tick::Clock::new_tokio();
        let context: seatbelt::ResilienceContext<bool, Output> =
            seatbelt::ResilienceContext::new(&clock);
        let layer = seatbelt::breaker::Breaker::layer("bench", &context)
            .recovery_with(|out: &Output, _| match out {
                Ok(_) => seatbelt::RecoveryInfo::never(),
                Err(_) => seatbelt::RecoveryInfo::retry(),
            })
            .rejected_input_error(|_, _| fmt::Error);
        use layered::Stack;
        (
            layer,
            layered::Execute::new(|fail: bool| async move { work(fail) }),
        )
            .into_service()
    };
    vec![
        ("bare", boxed(inner())),
        ("tower-recovery", boxed(ours.layer().layer(inner()))),
        (
            "tower-recovery count window 100",
            boxed(ours_count.layer().layer(inner())),
        ),
        (
            "tower-recovery time window 10 s",
            boxed(ours_time.layer().layer(inner())),
        ),
        ("recloser 1.4", boxed(Sync(Recloser(recloser)))),
        (
            "failsafe 1.3",
            boxed(Sync(Failsafe(Arc::new(failsafe)))),
        ),
        ("seatbelt 0.11", boxed(seatbelt_svc)),
        ("tower-resilience 0.14", boxed(tr.layer(inner()))),
    ]
}

fn closed(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let _enter = rt.enter();
    for threads in [1, 2] {
        let mut g = c.benchmark_group(format!("generic_closed_{threads}_thread"));
        for (name, contender) in contenders(&rt) {
            g.bench_function(name, |b| {
                b.iter_custom(|iters| contender.run(threads, iters, false))
            });
        }
        g.finish();
    }
}

fn open(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let _enter = rt.enter();
    for threads in [1, 2] {
        let mut g = c.benchmark_group(format!("generic_open_{threads}_thread"));
        for (name, contender) in contenders(&rt) {
            if name == "bare" || name.contains("window") {
                continue;
            }
            // Trip it: enough failures for every peer's policy.
            contender.run(1, 200, true);
            g.bench_function(name, |b| {
                b.iter_custom(|iters| contender.run(threads, iters, false))
            });
        }
        g.finish();
    }
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .sample_size(30);
    targets = closed, open
}
criterion_main!(benches);
