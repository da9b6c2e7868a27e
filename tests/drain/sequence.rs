use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use futures_util::StreamExt;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use tokio::sync::oneshot;
use tower::{BoxError, Service, ServiceExt, service_fn};
use tower_recovery::drain::{ClientClosed, Drain, Draining, HookFailure};
use tower_recovery::health::{Dependency, HealthCheck, Monitor, Reliability};

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
        (
            report.finished,
            report.refused,
            report.cut_off,
            report.still_running,
            report.forced
        ),
        (3, 1, 0, 0, false)
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
async fn the_grace_period_and_a_second_signal_end_the_wait() {
    let drain = Drain::builder().grace_period(10 * S).build();
    let svc = tower::Layer::layer(&drain.layer(), waiting_service());
    let (_tx, r) = request();
    let _hung = tokio::spawn(svc.clone().oneshot(r));
    tokio::task::yield_now().await;
    drain.begin();
    let report = drain.completed().await;
    assert_eq!(
        (
            report.running_at_deadline,
            report.still_running,
            report.cut_off,
            report.elapsed,
            report.forced
        ),
        (1, 1, 0, 10 * S, false)
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
        (
            report.running_at_deadline,
            report.still_running,
            report.cut_off,
            report.elapsed,
            report.forced
        ),
        (1, 1, 0, 3 * S, true)
    );
}

/// Item 16: a request still running at the grace period is reported as
/// such; if it finishes later it is finished, not cut off; only a response
/// dropped unfinished is cut off, when that happens.
#[tokio::test(start_paused = true)]
async fn requests_outliving_the_grace_period_are_still_running_not_cut_off() {
    let drain = Drain::builder().grace_period(2 * S).build();
    let svc = tower::Layer::layer(&drain.layer(), waiting_service());
    let (tx1, r1) = request();
    let (tx2, r2) = request();
    let (_tx3, r3) = request();
    let f1 = tokio::spawn(svc.clone().oneshot(r1));
    let f2 = tokio::spawn(svc.clone().oneshot(r2));
    let f3 = tokio::spawn(svc.clone().oneshot(r3));
    tokio::task::yield_now().await;
    assert_eq!(drain.in_flight(), 3);
    drain.begin();
    let report = drain.completed().await;
    assert_eq!(
        (
            report.finished,
            report.cut_off,
            report.still_running,
            report.running_at_deadline
        ),
        (0, 0, 3, 3),
        "at the report, all three are still running: none was cut off"
    );
    assert_eq!(report.elapsed, 2 * S);

    // Two finish after the deadline: their clients get the whole answer.
    tx1.send("late one").unwrap();
    tx2.send("late two").unwrap();
    for (f, text) in [(f1, "late one"), (f2, "late two")] {
        let body = f.await.unwrap().unwrap().into_body().collect().await;
        assert_eq!(body.unwrap().to_bytes(), text);
    }
    // The third is dropped unfinished (as at process exit): cut off now.
    f3.abort();
    assert!(f3.await.unwrap_err().is_cancelled());
    let now = drain.report().expect("the drain began");
    assert_eq!(
        (now.finished, now.cut_off, now.still_running),
        (2, 1, 0),
        "counted when it happened"
    );
    assert_eq!(
        now.running_at_deadline, 3,
        "what was true at the deadline stays"
    );
    assert_eq!(
        drain.completed().await,
        report,
        "the completion report is what was true when it was produced"
    );
}

/// Item 16: a body dropped before its end is cut off; one dropped with
/// nothing left to send (as servers drop a complete body without polling
/// it) finished.
#[tokio::test(start_paused = true)]
async fn a_body_dropped_before_its_end_is_cut_off_and_a_complete_one_finished() {
    let drain = Drain::default();
    let chunks = tower::Layer::layer(
        &drain.layer(),
        service_fn(|_: Request<()>| async {
            // One chunk, then a chunk that never comes.
            let chunks = futures_util::stream::iter([Ok::<_, BoxError>("first")])
                .chain(futures_util::stream::pending());
            Ok::<_, BoxError>(Response::new(axum::body::Body::from_stream(chunks)))
        }),
    );
    let empty = tower::Layer::layer(
        &drain.layer(),
        service_fn(|_: Request<()>| async { Ok::<_, BoxError>(Response::new(Body::default())) }),
    );
    let streamed = chunks.clone().oneshot(Request::new(())).await.unwrap();
    let complete = empty.clone().oneshot(Request::new(())).await.unwrap();
    drain.begin();
    let mut body = streamed.into_body();
    let first = body.frame().await.unwrap().unwrap();
    assert_eq!(first.into_data().unwrap(), "first");
    drop(body); // the client went away mid-body
    drop(complete); // never polled, but nothing was left to send
    let report = drain.completed().await;
    assert_eq!((report.finished, report.cut_off), (1, 1));
}

/// Item 9: the report counts the requests the drain layers refused.
#[tokio::test(start_paused = true)]
async fn refused_requests_are_counted_in_the_report() {
    let drain = Drain::default();
    let http = tower::Layer::layer(&drain.layer(), waiting_service());
    let rpc = tower::Layer::layer(
        &drain.rpc_layer(),
        service_fn(|x: u8| async move { Ok::<_, BoxError>(x) }),
    );
    let (tx, r) = request();
    let held = tokio::spawn(http.clone().oneshot(r));
    tokio::task::yield_now().await;
    drain.begin();
    drain.accepting_stopped().await;
    for _ in 0..3 {
        let (_tx, r) = request();
        let res = http.clone().oneshot(r).await.unwrap();
        assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
    }
    for x in 0..2 {
        assert!(rpc.clone().oneshot(x).await.unwrap_err().is::<Draining>());
    }
    // A refusal nobody waited for was not handed back: not counted.
    let (_tx, r) = request();
    drop(http.clone().call(r));
    tx.send("done").unwrap();
    held.await
        .unwrap()
        .unwrap()
        .into_body()
        .collect()
        .await
        .unwrap();
    let report = drain.completed().await;
    assert_eq!((report.finished, report.refused), (1, 5));
    // Refusals go on after the drain completed: a new report counts them.
    let (_tx, r) = request();
    http.clone().oneshot(r).await.unwrap();
    assert_eq!(drain.report().unwrap().refused, 6);
    assert_eq!(report.refused, 5);
}

/// Item 9: a panicking hook is caught and reported; the drain goes on.
#[tokio::test(start_paused = true)]
async fn a_panicking_hook_is_reported_and_the_drain_completes() {
    let drain = Drain::default();
    let next_ran = Arc::new(AtomicBool::new(false));
    drain
        .on_drained(|| async { panic!("monitor exploded") })
        .unwrap();
    let flag = next_ran.clone();
    drain
        .on_drained(move || async move { flag.store(true, Ordering::SeqCst) })
        .unwrap();
    drain.begin();
    let report = tokio::time::timeout(60 * S, drain.completed())
        .await
        .expect("the drain completes despite the panic");
    assert!(next_ran.load(Ordering::SeqCst), "the next hook ran");
    assert_eq!(
        report.hook_failures,
        [HookFailure::Panicked {
            index: 0,
            message: "monitor exploded".into()
        }]
    );
    assert!(drain.is_closed());
}

/// Item 9: a hook runs under the hook timeout; one that overruns is
/// abandoned (its task aborted) and reported; the drain goes on.
#[tokio::test(start_paused = true)]
async fn a_hook_that_overruns_the_hook_timeout_is_abandoned_and_reported() {
    struct SetOnDrop(Arc<AtomicBool>);
    impl Drop for SetOnDrop {
        fn drop(&mut self) {
            self.0.store(true, Ordering::SeqCst);
        }
    }
    let drain = Drain::builder().hook_timeout(2 * S).build();
    assert_eq!(drain.hook_timeout(), 2 * S);
    let abandoned = Arc::new(AtomicBool::new(false));
    let next_ran = Arc::new(AtomicBool::new(false));
    let flag = abandoned.clone();
    drain
        .on_drained(move || async move {
            let _dropped_when_aborted = SetOnDrop(flag);
            std::future::pending::<()>().await;
        })
        .unwrap();
    let flag = next_ran.clone();
    drain
        .on_drained(move || async move { flag.store(true, Ordering::SeqCst) })
        .unwrap();
    let t0 = tokio::time::Instant::now();
    drain.begin();
    let report = tokio::time::timeout(60 * S, drain.completed())
        .await
        .expect("the drain completes despite the hung hook");
    assert_eq!(t0.elapsed(), 2 * S, "one hook timeout");
    assert!(next_ran.load(Ordering::SeqCst), "the next hook ran");
    assert_eq!(
        report.hook_failures,
        [HookFailure::TimedOut {
            index: 0,
            after: 2 * S
        }]
    );
    tokio::time::timeout(S, async {
        while !abandoned.load(Ordering::SeqCst) {
            tokio::task::yield_now().await;
        }
    })
    .await
    .expect("the hung hook's task was aborted");
}

/// Item 9: a hook added after the hooks ran is handed back, never silently
/// skipped; one added while they run (by a hook) runs.
#[tokio::test(start_paused = true)]
async fn a_hook_added_after_the_hooks_ran_is_handed_back_not_skipped() {
    let drain = Drain::default();
    let added_by_a_hook = Arc::new(AtomicBool::new(false));
    let (flag, inner) = (added_by_a_hook.clone(), drain.clone());
    drain
        .on_drained(move || async move {
            inner
                .on_drained(move || async move { flag.store(true, Ordering::SeqCst) })
                .expect("hooks are still running");
        })
        .unwrap();
    drain.begin();
    drain.completed().await;
    assert!(added_by_a_hook.load(Ordering::SeqCst));

    let late = Arc::new(AtomicBool::new(false));
    let flag = late.clone();
    let err = drain
        .on_drained(move || async move { flag.store(true, Ordering::SeqCst) })
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "the drain's hooks have already run; hook not added"
    );
    // The caller has the hook back and decides: here, run it now.
    (err.into_inner())().await;
    assert!(late.load(Ordering::SeqCst));
}

/// Item 9: a monitor handed to the drain after it is over is stopped at
/// once, not left running.
#[tokio::test(start_paused = true)]
async fn a_monitor_handed_over_after_the_drain_is_stopped_at_once() {
    let set = Reliability::builder()
        .dependency(Dependency::new(
            "db",
            HealthCheck::new(|| async { Ok::<_, String>(()) }),
        ))
        .build()
        .unwrap();
    let drain = Drain::default();
    drain.begin();
    drain.completed().await;
    let monitor = Monitor::start(&set, 10 * S);
    assert!(set.report().monitor_running);
    drain.stop_monitor(monitor);
    assert!(!set.report().monitor_running);
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
    drain
        .on_drained(move || async move {
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
        })
        .unwrap();
    assert!(drain.report().is_none(), "no report before the signal");
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

/// DESIGN §5 step 5: a request still running at the grace deadline may use
/// its dependencies until it finishes; clients refuse only once the drain is
/// over and the last request has finished.
#[tokio::test(start_paused = true)]
async fn a_request_outliving_the_grace_period_can_still_call_its_dependencies() {
    let drain = Drain::builder().grace_period(2 * S).build();
    // Boxed: the handler's future must be `Send` (rustc cannot prove it for
    // the unboxed call future inside a spawned closure's future).
    let client = tower::util::BoxCloneService::new(tower::Layer::layer(
        &drain.client_layer(),
        service_fn(|()| async { Ok::<_, BoxError>("dependency answered") }),
    ));
    let handler_client = client.clone();
    let svc = tower::Layer::layer(
        &drain.layer(),
        service_fn(move |_: Request<()>| {
            let client = handler_client.clone();
            async move {
                // Outlives the 2 s grace period, then calls its dependency.
                tokio::time::sleep(5 * S).await;
                match client.oneshot(()).await {
                    Ok(answer) => Ok(Response::new(Body::from(answer))),
                    Err(e) => Err(e),
                }
            }
        }),
    );
    let request = tokio::spawn(svc.oneshot(Request::new(())));
    tokio::task::yield_now().await;
    assert_eq!(drain.in_flight(), 1);

    drain.begin();
    let report = drain.completed().await;
    assert_eq!(
        (
            report.running_at_deadline,
            report.still_running,
            report.elapsed
        ),
        (1, 1, 2 * S)
    );

    let response = request
        .await
        .unwrap()
        .expect("the dependency answered a request running past the deadline");
    let body = response.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(body, "dependency answered");
    assert_eq!(drain.in_flight(), 0);

    // The last request has finished: now the clients are closed.
    assert!(drain.is_closed());
    let err = client.clone().oneshot(()).await.unwrap_err();
    assert!(err.is::<ClientClosed>(), "{err}");
    let last = drain.report().unwrap();
    assert_eq!((last.finished, last.cut_off, last.still_running), (1, 0, 0));
}

/// A client call while requests are still in flight after the deadline is
/// served, whichever request makes it; the first call after the last
/// request finished is refused, and so is every later one.
#[tokio::test(start_paused = true)]
async fn clients_refuse_from_the_moment_the_last_late_request_finishes() {
    let drain = Drain::builder().grace_period(S).build();
    let svc = tower::Layer::layer(&drain.layer(), waiting_service());
    let client = tower::Layer::layer(
        &drain.client_layer(),
        service_fn(|()| async { Ok::<_, BoxError>("dependency answered") }),
    );
    let (tx, r) = request();
    let late = tokio::spawn(svc.clone().oneshot(r));
    tokio::task::yield_now().await;
    drain.begin();
    drain.completed().await;
    assert_eq!(
        client.clone().oneshot(()).await.unwrap(),
        "dependency answered"
    );
    // A request refused after the drain is over takes no count that would
    // reopen the clients.
    let (_tx, r) = request();
    assert_eq!(
        svc.clone().oneshot(r).await.unwrap().status(),
        StatusCode::SERVICE_UNAVAILABLE
    );
    assert!(!drain.is_closed(), "a request is still being served");
    tx.send("late").unwrap();
    let res = late.await.unwrap().unwrap();
    assert_eq!(drain.in_flight(), 1, "its body is not read yet");
    assert_eq!(
        client.clone().oneshot(()).await.unwrap(),
        "dependency answered"
    );
    res.into_body().collect().await.unwrap();
    assert!(drain.is_closed());
    for _ in 0..2 {
        let err = client.clone().oneshot(()).await.unwrap_err();
        assert!(err.is::<ClientClosed>(), "{err}");
    }
}

/// A response with no body on the wire (HEAD, 1xx, 204, 304) is finished
/// at its head: servers drop its body unpolled, whatever it holds.
#[tokio::test(start_paused = true)]
async fn bodiless_responses_dropped_unpolled_are_finished_not_cut_off() {
    let drain = Drain::default();
    let svc = tower::Layer::layer(
        &drain.layer(),
        service_fn(|req: Request<()>| async move {
            let status = match req.uri().path() {
                "/204" => StatusCode::NO_CONTENT,
                "/304" => StatusCode::NOT_MODIFIED,
                _ => StatusCode::OK,
            };
            let mut res = Response::new(Body::from("not sent on the wire"));
            *res.status_mut() = status;
            Ok::<_, BoxError>(res)
        }),
    );
    // Admitted before the signal (the drain layer admits in `call`).
    let mut admitted = Vec::new();
    for req in [
        Request::head("/").body(()).unwrap(),
        Request::get("/204").body(()).unwrap(),
        Request::get("/304").body(()).unwrap(),
        Request::get("/").body(()).unwrap(),
    ] {
        let mut svc = svc.clone();
        admitted.push(svc.ready().await.unwrap().call(req));
    }
    drain.begin();
    drain.accepting_stopped().await;
    let get = admitted.pop().unwrap().await.unwrap();
    for response in admitted {
        // Dropped unpolled, as hyper (or axum, for HEAD) does.
        drop(response.await.unwrap());
    }
    // A GET whose body is dropped unread is still cut off.
    drop(get);
    let report = drain.completed().await;
    assert_eq!((report.finished, report.cut_off), (3, 1), "{report:?}");
}

/// An HTTP service that returns `Err` sent no response: cut off. A non-HTTP
/// service's `Err` is its answer: finished.
#[tokio::test(start_paused = true)]
async fn an_http_service_error_during_the_drain_is_cut_off() {
    let drain = Drain::builder().grace_period(30 * S).build();
    let (tx, rx) = oneshot::channel::<()>();
    let rx = Arc::new(std::sync::Mutex::new(Some(rx)));
    let http = tower::Layer::layer(
        &drain.layer(),
        service_fn(move |_: Request<()>| {
            let rx = rx.lock().unwrap().take().unwrap();
            async move {
                let _ = rx.await;
                Err::<Response<Body>, BoxError>("upstream exploded".into())
            }
        }),
    );
    let (rpc_tx, rpc_rx) = oneshot::channel::<()>();
    let rpc_rx = Arc::new(std::sync::Mutex::new(Some(rpc_rx)));
    let rpc = tower::Layer::layer(
        &drain.rpc_layer(),
        service_fn(move |()| {
            let rx = rpc_rx.lock().unwrap().take().unwrap();
            async move {
                let _ = rx.await;
                Err::<(), BoxError>("rpc error".into())
            }
        }),
    );
    let failing = tokio::spawn(http.oneshot(Request::new(())));
    let rpc_failing = tokio::spawn(rpc.oneshot(()));
    tokio::task::yield_now().await;
    assert_eq!(drain.in_flight(), 2);
    drain.begin();
    drain.accepting_stopped().await;
    tx.send(()).unwrap();
    rpc_tx.send(()).unwrap();
    assert!(failing.await.unwrap().is_err());
    assert!(rpc_failing.await.unwrap().is_err());
    let report = drain.completed().await;
    assert_eq!((report.finished, report.cut_off), (1, 1), "{report:?}");
}

#[tokio::test]
async fn hooks_no_one_can_run_are_dropped_with_the_last_handle() {
    // Requests hold the drain's state by credits that threads give back
    // later (`src/lease.rs`); what a hook captured must not wait for that.
    use tower::{Layer, Service, ServiceExt};
    let drain = tower_recovery::drain::Drain::default();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    assert!(
        drain
            .on_drained(move || async move {
                let _ = tx.send(());
            })
            .is_ok()
    );
    let mut svc = drain
        .layer()
        .layer(tower::service_fn(|_: http::Request<String>| async {
            Ok::<_, std::convert::Infallible>(http::Response::new(String::from("ok")))
        }));
    let response = svc
        .ready()
        .await
        .unwrap()
        .call(http::Request::new(String::new()))
        .await
        .unwrap();
    drop(response);
    drop(drain);
    // No handle is left to begin the drain: the hook (and its sender) went.
    let dropped = tokio::time::timeout(std::time::Duration::from_secs(5), rx).await;
    assert!(
        matches!(dropped, Ok(Err(_))),
        "the unrun hook was dropped: {dropped:?}"
    );
    drop(svc);
}
