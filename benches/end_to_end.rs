//! The number users feel: an axum server whose handler calls an HTTP
//! upstream through a client, with and without this crate's layers, loaded
//! by `wrk` on loopback.
//!
//! - A, bare: the router and the client as they are.
//! - B, guarded: the router behind the drain layer; the client behind a
//!   recovery layer and a circuit breaker (the demo's stack).
//!
//! Rounds alternate A B, B A, A B, ... in one run, so that drift of the
//! machine falls on both; the medians and their ratios are printed.
//!
//! `benches/end_to_end.sh` installs `wrk` if it is missing and runs this
//! (`cargo bench --bench end_to_end`). Settings: `E2E_SECONDS` per round (10),
//! `E2E_ROUNDS` (6 of each), `E2E_CONNECTIONS` (32), `E2E_WARMUP` seconds (2),
//! `E2E_ONLY` (`A` or `B`: load one server only, to profile it).

use std::net::SocketAddr;
use std::process::Command;

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use tower::util::BoxCloneSyncService;
use tower::{ServiceBuilder, ServiceExt, service_fn};
use tower_recovery::BoxError;
use tower_recovery::circuit_breaker::Breaker;
use tower_recovery::drain::Drain;
use tower_recovery::recovery::Recovery;

type Client = BoxCloneSyncService<reqwest::Request, reqwest::Response, BoxError>;

#[derive(Clone)]
struct App {
    client: Client,
    upstream: String,
    http: reqwest::Client,
}

async fn handler(State(app): State<App>) -> Result<String, StatusCode> {
    let request = app
        .http
        .get(&app.upstream)
        .build()
        .map_err(|_| StatusCode::INTERNAL_SERVER_ERROR)?;
    let response = app
        .client
        .oneshot(request)
        .await
        .map_err(|_| StatusCode::BAD_GATEWAY)?;
    response.text().await.map_err(|_| StatusCode::BAD_GATEWAY)
}

fn setting(name: &str, default: u64) -> u64 {
    match std::env::var(name) {
        Ok(value) => value
            .parse()
            .unwrap_or_else(|_| panic!("{name}={value:?}: expected a whole number")),
        Err(_) => default,
    }
}

async fn serve(router: Router) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    addr
}

/// One `wrk` run: requests per second and p99 latency in milliseconds.
fn wrk(addr: SocketAddr, seconds: u64, connections: u64) -> (f64, f64) {
    let out = Command::new("wrk")
        .args([
            "-t1",
            &format!("-c{connections}"),
            &format!("-d{seconds}s"),
            "--latency",
            &format!("http://{addr}/"),
        ])
        .output()
        .expect("wrk runs");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "wrk failed: {text}");
    assert!(
        !text.contains("Non-2xx"),
        "the server answered errors under load:\n{text}"
    );
    let rps = text
        .lines()
        .find_map(|l| l.strip_prefix("Requests/sec:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no Requests/sec in:\n{text}"));
    let p99 = text
        .lines()
        .map(str::trim)
        .find_map(|l| l.strip_prefix("99%"))
        .map(|v| millis(v.trim()))
        .unwrap_or_else(|| panic!("no 99% latency in:\n{text}"));
    (rps, p99)
}

fn millis(value: &str) -> f64 {
    let (number, factor) = if let Some(v) = value.strip_suffix("us") {
        (v, 0.001)
    } else if let Some(v) = value.strip_suffix("ms") {
        (v, 1.0)
    } else if let Some(v) = value.strip_suffix('s') {
        (v, 1000.0)
    } else {
        panic!("latency {value:?}: unknown unit")
    };
    number.parse::<f64>().expect("a number") * factor
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    let n = values.len();
    if n % 2 == 1 {
        values[n / 2]
    } else {
        (values[n / 2 - 1] + values[n / 2]) / 2.0
    }
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        // `cargo bench -- --list` and test harness probes: nothing to list.
        return;
    }
    if Command::new("wrk").arg("--version").output().is_err() {
        eprintln!("end_to_end: `wrk` is not installed; run benches/end_to_end.sh (it installs it)");
        std::process::exit(1);
    }
    let seconds = setting("E2E_SECONDS", 10);
    let rounds = setting("E2E_ROUNDS", 6);
    let connections = setting("E2E_CONNECTIONS", 32);
    let warmup = setting("E2E_WARMUP", 2);

    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let (bare, guarded) = rt.block_on(async {
        let upstream = serve(Router::new().route("/", get(|| async { "ok" }))).await;
        let upstream = format!("http://{upstream}/");
        let http = reqwest::Client::new();
        let send = {
            let http = http.clone();
            service_fn(move |req: reqwest::Request| {
                let http = http.clone();
                async move { http.execute(req).await.map_err(BoxError::from) }
            })
        };

        let bare = App {
            client: BoxCloneSyncService::new(send.clone()),
            upstream: upstream.clone(),
            http: http.clone(),
        };
        let bare = serve(Router::new().route("/", get(handler)).with_state(bare)).await;

        let breaker = Breaker::new("upstream");
        let recovery = Recovery::builder("upstream", || async { Ok::<_, String>(()) })
            .watch(&breaker)
            .spawn();
        let drain = Drain::default();
        let client = ServiceBuilder::new()
            .layer(recovery.layer())
            .layer(breaker.layer())
            .service(send);
        let guarded = App {
            client: BoxCloneSyncService::new(client),
            upstream,
            http,
        };
        let router = Router::new()
            .route("/", get(handler))
            .with_state(guarded)
            .layer(drain.layer());
        // The handles live as long as the runtime.
        std::mem::forget((breaker, recovery, drain));
        (bare, serve(router).await)
    });

    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_default();
    println!(
        "end to end: {rounds} rounds of A (bare) and B (drain + recovery + breaker), {seconds} s each, wrk -t1 -c{connections}, CPU {cpu}, {} cores",
        std::thread::available_parallelism().map_or(1, |n| n.get())
    );
    for addr in [bare, guarded] {
        wrk(addr, warmup, connections);
    }
    let mut a = (Vec::new(), Vec::new());
    let mut b = (Vec::new(), Vec::new());
    for round in 1..=rounds {
        // A B, then B A: drift over the run falls on both equally.
        let mut order = [("A", bare, &mut a), ("B", guarded, &mut b)];
        if round % 2 == 0 {
            order.reverse();
        }
        let only = std::env::var("E2E_ONLY").ok();
        for (name, addr, into) in order {
            // `E2E_ONLY=A` or `B` loads one server only (to profile it).
            if only.as_deref().is_some_and(|o| o != name) {
                continue;
            }
            let (rps, p99) = wrk(addr, seconds, connections);
            println!("round {round} {name}: {rps:.0} requests/s, p99 {p99:.3} ms");
            into.0.push(rps);
            into.1.push(p99);
        }
    }
    if a.0.is_empty() || b.0.is_empty() {
        return;
    }
    let (a_rps, a_p99) = (median(a.0), median(a.1));
    let (b_rps, b_p99) = (median(b.0), median(b.1));
    println!(
        "median: A {a_rps:.0} requests/s, p99 {a_p99:.3} ms; B {b_rps:.0} requests/s, p99 {b_p99:.3} ms"
    );
    println!(
        "B/A: {:.1}% of the requests per second, p99 {:+.1}%",
        100.0 * b_rps / a_rps,
        100.0 * (b_p99 / a_p99 - 1.0)
    );
}
