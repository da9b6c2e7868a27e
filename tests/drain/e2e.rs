//! A real axum server on loopback, drained while requests are in flight.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::routing::get;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio::time::Instant;
use tower_recovery::drain::Drain;

/// The app: `/slow` waits for a permit of `gate`, `/stream` sends three
/// chunks 100 ms apart, and `/livez` sits outside the drain layer.
fn app(drain: &Drain, gate: Arc<Semaphore>) -> Router {
    let work = Router::new()
        .route(
            "/slow",
            get(move || {
                let gate = gate.clone();
                async move {
                    gate.acquire().await.unwrap().forget();
                    "slow done"
                }
            }),
        )
        .route(
            "/stream",
            get(|| async {
                let chunks = futures_util::stream::unfold(0u8, |n| async move {
                    if n == 3 {
                        return None;
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    Some((
                        Ok::<_, std::io::Error>(Bytes::from(format!("chunk{n};"))),
                        n + 1,
                    ))
                });
                Body::from_stream(chunks)
            }),
        )
        .layer(drain.layer());
    Router::new()
        .route("/livez", get(|| async { "alive" }))
        .merge(work)
}

async fn wait_in_flight(drain: &Drain, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while drain.in_flight() < n {
        assert!(
            Instant::now() < deadline,
            "only {} of {n} requests in flight",
            drain.in_flight()
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

async fn serve(
    drain: &Drain,
    gate: Arc<Semaphore>,
) -> (SocketAddr, tokio::task::JoinHandle<std::io::Result<()>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let done = drain.completed();
    let server = axum::serve(listener, app(drain, gate)).with_graceful_shutdown(async move {
        done.await;
    });
    (addr, tokio::spawn(async move { server.await }))
}

#[tokio::test]
async fn in_flight_requests_finish_new_ones_get_503_and_the_server_stops() {
    let drain = Drain::builder()
        .grace_period(Duration::from_secs(30))
        .build();
    let gate = Arc::new(Semaphore::new(0));
    let (addr, server) = serve(&drain, gate.clone()).await;
    let http = reqwest::Client::new();
    let url = |path: &str| format!("http://{addr}{path}");

    let slow: Vec<_> = (0..2)
        .map(|_| tokio::spawn(http.get(url("/slow")).send()))
        .collect();
    wait_in_flight(&drain, 2).await;
    let mut stream = http.get(url("/stream")).send().await.unwrap();
    assert_eq!(stream.status(), 200);
    wait_in_flight(&drain, 3).await;

    let t0 = Instant::now();
    drain.begin();
    // New requests are refused, liveness still answers.
    let refused = reqwest::Client::new()
        .get(url("/slow"))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 503);
    assert_eq!(refused.headers()["connection"], "close");
    assert!(refused.headers().contains_key("retry-after"));
    let live = reqwest::Client::new()
        .get(url("/livez"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        (live.status().as_u16(), live.text().await.unwrap()),
        (200, "alive".to_string())
    );

    // The streamed body keeps arriving; the slow requests finish.
    let mut streamed = String::new();
    while let Some(chunk) = stream.chunk().await.unwrap() {
        streamed.push_str(std::str::from_utf8(&chunk).unwrap());
    }
    assert_eq!(streamed, "chunk0;chunk1;chunk2;");
    gate.add_permits(2);
    for request in slow {
        let response = request.await.unwrap().expect("no connection reset");
        assert_eq!(response.status(), 200);
        assert_eq!(response.text().await.unwrap(), "slow done");
    }
    let report = drain.completed().await;
    assert_eq!((report.finished, report.refused, report.cut_off), (3, 1, 0));
    tokio::time::timeout(Duration::from_secs(5), server)
        .await
        .expect("the server stops once drained")
        .unwrap()
        .unwrap();
    assert!(
        t0.elapsed() < Duration::from_secs(5),
        "well before the 30 s grace period: {:?}",
        t0.elapsed()
    );
}

/// Item 16: requests that outlive the grace period and then finish get
/// their answers, and no report calls them cut off: at the deadline they
/// are still running; once they have finished, they are finished.
#[tokio::test]
async fn requests_outliving_the_grace_period_finish_and_are_not_reported_cut_off() {
    const N: usize = 8;
    let drain = Drain::builder()
        .grace_period(Duration::from_millis(200))
        .build();
    let gate = Arc::new(Semaphore::new(0));
    let (addr, server) = serve(&drain, gate.clone()).await;
    let http = reqwest::Client::new();
    let url = format!("http://{addr}/slow");
    let requests: Vec<_> = (0..N)
        .map(|_| tokio::spawn(http.get(&url).send()))
        .collect();
    wait_in_flight(&drain, N).await;

    drain.begin();
    let report = tokio::time::timeout(Duration::from_secs(10), drain.completed())
        .await
        .expect("the drain completes at the grace period");
    assert_eq!(
        (
            report.finished,
            report.cut_off,
            report.still_running,
            report.running_at_deadline
        ),
        (0, 0, N as u64, N as u64),
        "{report:?}"
    );

    // The upstream answers after the grace period: every client gets its 200.
    gate.add_permits(N);
    for request in requests {
        let response = request.await.unwrap().expect("no connection reset");
        assert_eq!(response.status(), 200);
        assert_eq!(response.text().await.unwrap(), "slow done");
    }
    tokio::time::timeout(Duration::from_secs(10), server)
        .await
        .expect("the server stops once its connections are done")
        .unwrap()
        .unwrap();
    let last = drain.report().expect("the drain began");
    assert_eq!(
        (last.finished, last.cut_off, last.still_running),
        (N as u64, 0, 0),
        "{last:?}"
    );
    assert_eq!(last.running_at_deadline, N as u64);
}

/// 1,000 requests in flight at the signal; all complete, none lost. Ignored
/// by default (it opens 2,000 sockets); `.ci/run` runs it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "load test: run with --ignored (CI does)"]
async fn thousand_requests_in_flight_at_the_signal_all_complete() {
    const N: usize = 1_000;
    let drain = Drain::builder()
        .grace_period(Duration::from_secs(30))
        .build();
    let gate = Arc::new(Semaphore::new(0));
    let (addr, server) = serve(&drain, gate.clone()).await;
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()
        .unwrap();
    let url = format!("http://{addr}/slow");
    let requests: Vec<_> = (0..N)
        .map(|_| tokio::spawn(http.get(&url).send()))
        .collect();
    wait_in_flight(&drain, N).await;

    let t0 = Instant::now();
    drain.begin();
    gate.add_permits(N);
    let mut ok = 0;
    for request in requests {
        let response = request.await.unwrap().expect("no request lost");
        assert_eq!(response.status(), 200);
        assert_eq!(response.text().await.unwrap(), "slow done");
        ok += 1;
    }
    let report = drain.completed().await;
    println!(
        "load drain: {N} in flight at the signal, {ok} completed with 200, report {report:?}, drained in {:?}",
        t0.elapsed()
    );
    assert_eq!(ok, N);
    assert_eq!((report.finished, report.cut_off), (N as u64, 0));
    tokio::time::timeout(Duration::from_secs(10), server)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
}

/// A HEAD answered during the drain is finished, like a GET: its body is
/// never sent (axum and hyper drop it unpolled), but the response was.
#[tokio::test]
async fn head_and_get_answered_during_the_drain_are_both_finished() {
    let drain = Drain::builder()
        .grace_period(Duration::from_secs(30))
        .build();
    let gate = Arc::new(Semaphore::new(0));
    let (addr, server) = serve(&drain, gate.clone()).await;
    let http = reqwest::Client::new();
    let url = format!("http://{addr}/slow");
    let head = tokio::spawn(http.head(&url).send());
    let get = tokio::spawn(http.get(&url).send());
    wait_in_flight(&drain, 2).await;

    drain.begin();
    drain.accepting_stopped().await;
    gate.add_permits(2);
    let head = head.await.unwrap().expect("HEAD answered");
    assert_eq!(head.status(), 200);
    assert_eq!(head.text().await.unwrap(), "");
    let get = get.await.unwrap().expect("GET answered");
    assert_eq!(get.status(), 200);
    assert_eq!(get.text().await.unwrap(), "slow done");

    let report = tokio::time::timeout(Duration::from_secs(10), drain.completed())
        .await
        .expect("the drain completes once both are answered");
    assert_eq!(
        (report.finished, report.cut_off, report.still_running),
        (2, 0, 0),
        "{report:?}"
    );
    tokio::time::timeout(Duration::from_secs(10), server)
        .await
        .expect("the server stops once drained")
        .unwrap()
        .unwrap();
}
