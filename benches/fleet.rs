//! The request path with and without a fleet, driven as generic Tower code
//! drives it (a cloned service, `ready()`, `call()`, the response future
//! moved into the `.await` that completes it; see `generic_path.rs`).
//! Medians in one run, per caller count:
//!
//! - `bare`: the inner service alone;
//! - `no_fleet`: a closed breaker watched by a `Recovery` with no fleet;
//! - `fleet_connected`: the same with a `Fleet` on a private
//!   `redis-server`, connected;
//! - `fleet_redis_down`: that service again once the `redis-server` was
//!   killed (SIGKILL) and the fleet saw it (local fallback; it keeps
//!   trying to reconnect on its background task).
//!
//! The fleet's background tasks run on a tokio runtime of their own
//! (one worker thread) beside the callers, as in a server.
//!
//! `cargo bench --all-features --bench fleet`. Without `redis-server` on the
//! PATH the fleet rows are skipped (and `REQUIRE_REDIS` makes that fatal).

use std::hint::black_box;
use std::sync::Barrier;
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};
use tower::{Layer, Service, ServiceExt};
use tower_recovery::circuit_breaker::Breaker;
use tower_recovery::fleet::{Fleet, RedisCoordinator};
use tower_recovery::recovery::Recovery;

mod support;
use support::{block_on, inner};

#[path = "../tests/fleet/redis_server.rs"]
mod redis_server;
use redis_server::RedisServer;

/// One caller: `iters` calls through its own clone of the service.
async fn caller<S>(mut svc: S, iters: u64)
where
    S: Service<bool>,
{
    for _ in 0..iters {
        let Ok(ready) = svc.ready().await else {
            unreachable!("never fails poll_ready")
        };
        let future = ready.call(black_box(false));
        // Moved by value, as a generic caller's `.await` does.
        let out = black_box(future).await;
        black_box(out.is_ok());
    }
}

/// `iters` calls by `threads` callers at once, each with its own clone; the
/// time per call is the slowest caller's.
fn run<S>(svc: &S, threads: usize, iters: u64) -> Duration
where
    S: Service<bool> + Clone + Send,
{
    if threads == 1 {
        let svc = svc.clone();
        let start = Instant::now();
        block_on(caller(svc, iters));
        return start.elapsed();
    }
    let barrier = Barrier::new(threads);
    std::thread::scope(|scope| {
        let handles: Vec<_> = (0..threads)
            .map(|_| {
                let svc = svc.clone();
                let barrier = &barrier;
                scope.spawn(move || {
                    barrier.wait();
                    let start = Instant::now();
                    block_on(caller(svc, iters));
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

/// A closed breaker watched by a recovery (whose action never runs: the
/// breaker stays closed), coordinated through `fleet` if given.
fn watched(name: &str, fleet: Option<&Fleet>) -> (Breaker, Recovery) {
    let breaker = Breaker::builder(name).build();
    let builder = Recovery::builder(name, || async { Ok::<_, std::io::Error>(()) }).watch(&breaker);
    let recovery = match fleet {
        Some(fleet) => builder.fleet(fleet),
        None => builder,
    }
    .spawn();
    (breaker, recovery)
}

fn wait_connected(rt: &tokio::runtime::Runtime, fleet: &Fleet, yes: bool) {
    rt.block_on(async {
        tokio::time::timeout(Duration::from_secs(20), fleet.wait_connected(yes))
            .await
            .unwrap_or_else(|_| panic!("the fleet never became connected={yes}"))
    });
}

fn request_path(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let _enter = rt.enter();
    let mut redis = RedisServer::start_or_skip("bench_fleet");
    let (plain, _plain_recovery) = watched("bench", None);
    let fleet = redis.as_ref().map(|redis| {
        Fleet::builder(RedisCoordinator::new(&redis.url()).unwrap())
            .replica_id("bench")
            .spawn()
    });
    let with_fleet = fleet.as_ref().map(|fleet| watched("bench", Some(fleet)));

    for threads in [1, 2] {
        let mut g = c.benchmark_group(format!("fleet_closed_{threads}_thread"));
        let bare = inner();
        g.bench_function("bare", |b| b.iter_custom(|n| run(&bare, threads, n)));
        let svc = plain.layer().layer(inner());
        g.bench_function("no_fleet", |b| b.iter_custom(|n| run(&svc, threads, n)));
        if let (Some(redis), Some(fleet), Some((breaker, _))) =
            (redis.as_mut(), fleet.as_ref(), with_fleet.as_ref())
        {
            wait_connected(&rt, fleet, true);
            let svc = breaker.layer().layer(inner());
            g.bench_function("fleet_connected", |b| {
                b.iter_custom(|n| run(&svc, threads, n))
            });
            assert!(fleet.is_connected(), "Redis lost during the bench");
            redis.kill();
            wait_connected(&rt, fleet, false);
            g.bench_function("fleet_redis_down", |b| {
                b.iter_custom(|n| run(&svc, threads, n))
            });
            assert!(!fleet.is_connected());
            assert!(breaker.state().is_closed());
            // Back for the next caller count (the fleet rejoins).
            redis.start();
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
    targets = request_path
}
criterion_main!(benches);
