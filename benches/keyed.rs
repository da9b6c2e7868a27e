//! Keyed breakers on the generic Tower call path (a clone per caller,
//! `ready()`, `call()`, the response future moved and awaited), against
//! the plain breaker and the bare service, in one run: 1 key, and 1,000
//! keys in round robin (each call a different key than the last), without
//! and with a recovery per key.
//!
//! `cargo bench --bench keyed`.

use std::hint::black_box;
use std::sync::Barrier;
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};
use tower::{Layer, Service, ServiceExt};
use tower_recovery::circuit_breaker::Breaker;
use tower_recovery::circuit_breaker::keyed::KeyedBreaker;
use tower_recovery::recovery::Recovery;

mod support;
use support::{block_on, inner};

/// A request: the key, and whether the inner service fails it.
type Req = (u32, bool);

/// One caller: `iters` calls through its own clone, keys `0..keys` in turn.
async fn caller<S: Service<Req>>(mut svc: S, iters: u64, keys: u32, offset: u32) {
    let mut key = offset % keys;
    for _ in 0..iters {
        let Ok(ready) = svc.ready().await else {
            unreachable!("never fails poll_ready")
        };
        let future = ready.call(black_box((key, false)));
        let out = black_box(future).await;
        black_box(out.is_ok());
        key += 1;
        if key == keys {
            key = 0;
        }
    }
}

fn run<S>(svc: &S, threads: usize, iters: u64, keys: u32) -> Duration
where
    S: Service<Req> + Clone + Send,
{
    let barrier = Barrier::new(threads);
    std::thread::scope(|scope| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let svc = svc.clone();
                let barrier = &barrier;
                scope.spawn(move || {
                    barrier.wait();
                    let start = Instant::now();
                    block_on(caller(svc, iters, keys, t as u32 * 7));
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

/// The bare inner service of `support`, taking the key along.
fn bare() -> impl Service<Req, Response = u8, Error = std::fmt::Error, Future: Send> + Clone + Send
{
    let inner = inner();
    tower::service_fn(move |(_, fail): Req| {
        let mut inner = inner;
        inner.call(fail)
    })
}

fn closed(c: &mut Criterion, threads: usize) {
    let mut g = c.benchmark_group(format!("keyed_closed_{threads}_thread"));
    let svc = bare();
    g.bench_function("bare", |b| b.iter_custom(|n| run(&svc, threads, n, 1)));
    let breaker = Breaker::builder("bench").build();
    let svc = breaker.layer().layer(bare());
    g.bench_function("plain", |b| b.iter_custom(|n| run(&svc, threads, n, 1)));
    for keys in [1u32, 1_000] {
        let keyed = KeyedBreaker::<u32>::builder(Breaker::builder("bench"))
            .max_keys(keys as usize)
            .build();
        let svc = keyed.layer(|req: &Req| req.0).layer(bare());
        // Every key made before measuring.
        run(&svc, 1, u64::from(keys), keys);
        assert_eq!(keyed.len(), keys as usize);
        g.bench_function(format!("keyed_{keys}"), |b| {
            b.iter_custom(|n| run(&svc, threads, n, keys))
        });
        assert_eq!(keyed.overflowed(), 0);
    }
    // The same with a recovery per key: made with each key (in a runtime,
    // before measuring), parked while its breaker stays closed.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    for keys in [1u32, 1_000] {
        let keyed = KeyedBreaker::<u32>::builder(Breaker::builder("bench"))
            .max_keys(keys as usize)
            .recovery(|_: &u32| Recovery::builder("bench", || async { Ok::<_, String>(()) }))
            .build();
        let svc = keyed.layer(|req: &Req| req.0).layer(bare());
        {
            // On this thread, where the runtime is entered.
            let _runtime = rt.enter();
            block_on(caller(svc.clone(), u64::from(keys), keys, 0));
        }
        assert_eq!(keyed.len(), keys as usize);
        assert_eq!(keyed.summary(0).without_recovery, 0);
        g.bench_function(format!("keyed_{keys}_recovery"), |b| {
            b.iter_custom(|n| run(&svc, threads, n, keys))
        });
        assert_eq!(keyed.overflowed(), 0);
    }
    g.finish();
}

fn closed_one_thread(c: &mut Criterion) {
    closed(c, 1);
}

fn closed_two_threads(c: &mut Criterion) {
    closed(c, 2);
}

fn open(c: &mut Criterion) {
    let mut g = c.benchmark_group("keyed_open_rejection_1_thread");
    let keyed = KeyedBreaker::<u32>::new(
        Breaker::builder("bench").open_duration(Duration::from_secs(3600)),
    );
    let svc = keyed.layer(|req: &Req| req.0).layer(bare());
    for _ in 0..5 {
        let _ = block_on(svc.clone().oneshot((0, true)));
    }
    assert!(keyed.get(&0).try_acquire().is_err(), "tripped");
    g.bench_function("keyed_1", |b| b.iter_custom(|n| run(&svc, 1, n, 1)));
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    targets = closed_one_thread, closed_two_threads, open
}
criterion_main!(benches);
