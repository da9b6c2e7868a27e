use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use tokio::sync::oneshot;
use tower::{BoxError, Service, ServiceExt, service_fn};
use tower_recovery::drain::{ClientClosed, Drain, Draining};

type Body = Full<axum::body::Bytes>;

/// A service whose responses wait for a message on a channel taken from the
/// request's extension.
fn waiting_service() -> impl Service<
    Request<oneshot::Receiver<&'static str>>,
    Response = Response<Body>,
    Error = BoxError,
    Future: Send,
> + Clone {
    service_fn(|req: Request<oneshot::Receiver<&'static str>>| async move {
        let text = req.into_body().await.unwrap_or("cancelled");
        Ok::<_, BoxError>(Response::new(Full::from(text)))
    })
}

fn request() -> (
    oneshot::Sender<&'static str>,
    Request<oneshot::Receiver<&'static str>>,
) {
    let (tx, rx) = oneshot::channel();
    (tx, Request::new(rx))
}

const S: Duration = Duration::from_secs(1);

#[tokio::test(start_paused = true)]
async fn the_sequence_and_its_counts() {
    let drain = Drain::builder()
        .grace_period(30 * S)
        .pre_drain_delay(2 * S)
        .retry_after(7 * S)
        .build();
    let svc = tower::Layer::layer(&drain.layer(), waiting_service());
    let (tx1, r1) = request();
    let (tx2, r2) = request();
    let f1 = tokio::spawn(svc.clone().oneshot(r1));
    let f2 = tokio::spawn(svc.clone().oneshot(r2));
    tokio::task::yield_now().await;
    assert_eq!(drain.in_flight(), 2);
    let stopped = tokio::spawn(drain.accepting_stopped());
    let completed = tokio::spawn(drain.completed());

    let t0 = tokio::time::Instant::now();
    drain.begin();
    tokio::task::yield_now().await;
    assert!(drain.is_draining(), "readiness fails at once");
    assert!(!drain.is_rejecting(), "pre-drain: still serving");
    let (tx3, r3) = request();
    tx3.send("served during pre-drain").unwrap();
    let res = svc.clone().oneshot(r3).await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(drain.in_flight(), 3, "its body is not read yet");
    res.into_body().collect().await.unwrap();
    assert_eq!(drain.in_flight(), 2);
    assert!(!stopped.is_finished());

    tokio::time::sleep(2 * S).await;
    tokio::task::yield_now().await;
    assert!(drain.is_rejecting());
    assert!(stopped.is_finished(), "the listener may close now");
    let (_tx4, r4) = request();
    let refused = svc.clone().oneshot(r4).await.unwrap();
    assert_eq!(refused.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(refused.headers()["connection"], "close");
    assert_eq!(refused.headers()["retry-after"], "7");
    assert_eq!(drain.in_flight(), 2, "in-flight ones run on");

    tokio::time::sleep(3 * S).await;
    tx1.send("one").unwrap();
    let res = f1.await.unwrap().unwrap();
    assert_eq!(
        res.headers()["connection"],
        "close",
        "in-flight answers close their connection"
    );
    assert_eq!(res.into_body().collect().await.unwrap().to_bytes(), "one");
    assert!(!completed.is_finished());
    tx2.send("two").unwrap();
    let res = f2.await.unwrap().unwrap();
    res.into_body().collect().await.unwrap();
    let report = completed.await.unwrap();
    assert_eq!(
        (report.finished, report.cut_off, report.forced),
        (3, 0, false)
    );
    assert_eq!(
        report.elapsed,
        5 * S,
        "ends with the last request, not the grace period"
    );
    assert_eq!(t0.elapsed(), 5 * S);
}

#[tokio::test(start_paused = true)]
async fn dropped_futures_and_bodies_release_their_count() {
    let drain = Drain::default();
    let svc = tower::Layer::layer(&drain.layer(), waiting_service());
    // A response future dropped before it resolves.
    let (_tx, r) = request();
    let mut fut = Box::pin(svc.clone().oneshot(r));
    assert!(futures_util::poll!(fut.as_mut()).is_pending());
    assert_eq!(drain.in_flight(), 1);
    drop(fut);
    assert_eq!(drain.in_flight(), 0);
    // A body: counted until it ends or is dropped.
    let (tx, r) = request();
    tx.send("body").unwrap();
    let res = svc.clone().oneshot(r).await.unwrap();
    assert_eq!(drain.in_flight(), 1, "headers sent, body not yet");
    drop(res);
    assert_eq!(drain.in_flight(), 0, "dropped body");
    let (tx, r) = request();
    tx.send("body").unwrap();
    let res = svc.clone().oneshot(r).await.unwrap();
    let mut body = res.into_body();
    let frame = body.frame().await.unwrap().unwrap();
    assert_eq!(frame.into_data().unwrap(), "body");
    assert!(body.frame().await.is_none());
    assert_eq!(drain.in_flight(), 0, "read to the end, before drop");
    drop(body);
    assert_eq!(drain.in_flight(), 0);
}

#[tokio::test(start_paused = true)]
async fn the_grace_period_cuts_off_and_a_second_signal_ends_the_wait() {
    let drain = Drain::builder().grace_period(10 * S).build();
    let svc = tower::Layer::layer(&drain.layer(), waiting_service());
    let (_tx, r) = request();
    let _hung = tokio::spawn(svc.clone().oneshot(r));
    tokio::task::yield_now().await;
    drain.begin();
    let report = drain.completed().await;
    assert_eq!(
        (report.cut_off, report.elapsed, report.forced),
        (1, 10 * S, false)
    );

    let drain = Drain::builder().grace_period(30 * S).build();
    let svc = tower::Layer::layer(&drain.layer(), waiting_service());
    let (_tx, r) = request();
    let _hung = tokio::spawn(svc.clone().oneshot(r));
    tokio::task::yield_now().await;
    drain.begin();
    tokio::time::sleep(3 * S).await;
    drain.begin(); // the second signal
    let report = drain.completed().await;
    assert_eq!(
        (report.cut_off, report.elapsed, report.forced),
        (1, 3 * S, true)
    );
}

#[tokio::test(start_paused = true)]
async fn monitor_stops_then_clients_close_only_after_the_last_request() {
    let drain = Drain::default();
    let svc = tower::Layer::layer(&drain.layer(), waiting_service());
    let client = tower::Layer::layer(
        &drain.client_layer(),
        service_fn(|()| async { Ok::<_, BoxError>("dependency answered") }),
    );
    let (tx, r) = request();
    let in_flight = tokio::spawn(svc.clone().oneshot(r));
    tokio::task::yield_now().await;

    let hook_ran = Arc::new(AtomicBool::new(false));
    let (flag, hook_drain) = (hook_ran.clone(), drain.clone());
    drain.on_drained(move || async move {
        assert_eq!(
            hook_drain.in_flight(),
            0,
            "hooks run after the last request"
        );
        assert!(
            !hook_drain.is_closed(),
            "clients still open while hooks (the monitor stop) run"
        );
        flag.store(true, Ordering::SeqCst);
    });
    drain.begin();
    tokio::time::sleep(S).await;
    // Still serving a request: its dependency calls must work.
    assert_eq!(
        client.clone().oneshot(()).await.unwrap(),
        "dependency answered"
    );
    assert!(!hook_ran.load(Ordering::SeqCst));
    tx.send("done").unwrap();
    in_flight
        .await
        .unwrap()
        .unwrap()
        .into_body()
        .collect()
        .await
        .unwrap();
    drain.completed().await;
    assert!(hook_ran.load(Ordering::SeqCst));
    let err = client.oneshot(()).await.unwrap_err();
    assert!(err.is::<ClientClosed>(), "{err}");
}

#[tokio::test(start_paused = true)]
async fn non_http_services_get_a_typed_error() {
    let drain = Drain::default();
    let svc = tower::Layer::layer(
        &drain.rpc_layer(),
        service_fn(|x: u8| async move { Ok::<_, BoxError>(x) }),
    );
    assert_eq!(svc.clone().oneshot(1).await.unwrap(), 1);
    drain.begin();
    drain.completed().await;
    let err = svc.oneshot(2).await.unwrap_err();
    assert!(err.is::<Draining>());
}
