//! Runtime control through a real listener: force open, disable, changing
//! thresholds and open duration of a running breaker, its effective
//! configuration and recent events, and every refusal.

use std::time::Duration;

use serde_json::{Value, json};
use tower_recovery::admin::Admin;
use tower_recovery::circuit_breaker::{Breaker, State, TripPolicy};
use tower_recovery::clock::ManualClock;
use tower_recovery::drain::Drain;
use tower_recovery::health::{Dependency, HealthCheck, Reliability};

struct Served {
    base: String,
    client: reqwest::Client,
    breaker: Breaker,
    clock: ManualClock,
}

/// The admin router over one dependency with a breaker (5 consecutive
/// failures, open 30 s, on a manual clock), on 127.0.0.1.
async fn serve(window: bool) -> Served {
    let clock = ManualClock::new();
    let builder = Breaker::builder("model_server").clock(clock.clone());
    let breaker = if window {
        builder.count_window(20).minimum_calls(10).failure_rate(0.5)
    } else {
        builder.consecutive_failures(5)
    }
    .open_duration(Duration::from_secs(30))
    .build();
    let reliability = Reliability::builder()
        .dependency(
            Dependency::new(
                "model_server",
                HealthCheck::new(|| async { Ok::<(), String>(()) }),
            )
            .breaker(&breaker),
        )
        .build()
        .unwrap();
    let router = Admin::new(&reliability, &Drain::default())
        .token("t0ken")
        .router::<()>();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, router).await });
    Served {
        base,
        client: reqwest::Client::new(),
        breaker,
        clock,
    }
}

impl Served {
    async fn post(&self, path: &str, token: Option<&str>, body: &str) -> (u16, Value) {
        let mut request = self
            .client
            .post(format!("{}{path}", self.base))
            .header("content-type", "application/json")
            .body(body.to_string());
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        (status, response.json().await.unwrap())
    }

    async fn get(&self, path: &str) -> (u16, Value) {
        let response = self
            .client
            .get(format!("{}{path}", self.base))
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        (status, response.json().await.unwrap())
    }

    fn fail(&self, n: usize) {
        for _ in 0..n {
            if let Ok(permit) = self.breaker.try_acquire() {
                permit.failure();
            }
        }
    }
}

const CONFIG: &str = "/reliability/circuit-breaker/model_server/config";

#[tokio::test]
async fn thresholds_and_open_duration_change_on_a_running_breaker() {
    let s = serve(false).await;
    let (status, body) = s
        .post(
            CONFIG,
            Some("t0ken"),
            r#"{"consecutive_failures": 2, "open_duration_seconds": 5, "half_open_permits": 2}"#,
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body["changes"],
        json!([
            "consecutive_failures 5 -> 2",
            "open_duration 30s -> 5s",
            "max_open_duration 30s -> 5s",
            "half_open_permits 1 -> 2"
        ])
    );
    assert_eq!(body["config"]["consecutive_failures"], 2);
    assert_eq!(body["config"]["open_duration_seconds"], 5.0);
    assert_eq!(s.breaker.config().trip, TripPolicy::ConsecutiveFailures(2));

    // Two failures now open it (five did before), for five seconds.
    s.fail(2);
    assert_eq!(s.breaker.state(), State::Open);
    s.clock.advance(Duration::from_millis(4_900));
    assert_eq!(s.breaker.state(), State::Open, "open 5 s, not 30 s");
    s.clock.advance(Duration::from_millis(200));
    assert_eq!(s.breaker.state(), State::HalfOpen);
    // Two probes now, and both must pass to close.
    let a = s.breaker.try_acquire().unwrap();
    let b = s.breaker.try_acquire().unwrap();
    assert!(s.breaker.try_acquire().is_err(), "two permits, not three");
    a.success();
    assert_eq!(s.breaker.state(), State::HalfOpen);
    b.success();
    assert_eq!(s.breaker.state(), State::Closed);

    // The detail route: configuration and recent events, newest first.
    let (status, detail) = s.get("/reliability/circuit-breaker/model_server").await;
    assert_eq!(status, 200);
    assert_eq!(detail["name"], "model_server");
    assert_eq!(detail["state"], "closed");
    assert_eq!(detail["config"]["half_open_permits"], 2);
    let events = detail["recent_events"].as_array().unwrap();
    let kinds: Vec<_> = events
        .iter()
        .map(|e| {
            format!(
                "{} {}",
                e["type"].as_str().unwrap(),
                e["to"].as_str().unwrap_or("")
            )
        })
        .collect();
    assert_eq!(
        kinds,
        [
            "transition closed",
            "transition half_open",
            "transition open",
            "config_changed "
        ]
    );
    assert_eq!(events[2]["open_for_seconds"], 5.0);
    assert!(
        events[3]["changes"]
            .as_str()
            .unwrap()
            .contains("consecutive_failures 5 -> 2")
    );
    assert!(events[0]["time"].as_str().unwrap().ends_with('Z'));

    // And `/reliability` shows each breaker's effective configuration.
    let (_, doc) = s.get("/reliability").await;
    assert_eq!(
        doc["circuit_breakers"]["model_server"]["config"]["open_duration_seconds"],
        5.0
    );
}

#[tokio::test]
async fn a_bad_change_names_the_setting_and_changes_nothing() {
    let s = serve(false).await;
    let before = s.breaker.config();
    let cases: &[(&str, u16, &str)] = &[
        ("not json", 400, "not valid JSON"),
        ("[1, 2]", 400, "JSON object"),
        (r#"{"consecutive_failure": 3}"#, 422, "consecutive_failure"),
        (r#"{"consecutive_failures": "3"}"#, 422, "a whole number"),
        (r#"{"consecutive_failures": 0}"#, 422, "at least 1"),
        (r#"{"consecutive_failures": -1}"#, 422, "a whole number"),
        (r#"{"open_duration_seconds": -5}"#, 422, "seconds"),
        (r#"{"open_duration_seconds": 1e300}"#, 422, "seconds"),
        (r#"{"open_multiplier": 0.5}"#, 422, "at least 1.0"),
        (r#"{"half_open_permits": 70000}"#, 422, "below 65536"),
        (r#"{"metrics_only": "yes"}"#, 422, "true or false"),
        // A rate needs a window; the valid open duration beside it is not
        // applied either.
        (
            r#"{"open_duration_seconds": 1, "failure_rate": 0.2}"#,
            422,
            "a breaker with a window",
        ),
    ];
    for (body, status, says) in cases {
        let (got, answer) = s.post(CONFIG, Some("t0ken"), body).await;
        assert_eq!(got, *status, "{body}: {answer}");
        let error = answer["error"].as_str().unwrap();
        assert!(error.contains(says), "{body}: {error}");
        if *status == 422 {
            assert!(answer["setting"].is_string(), "{answer}");
            assert!(answer.get("expected").is_some(), "{answer}");
        }
    }
    let (_, answer) = s
        .post(
            CONFIG,
            Some("t0ken"),
            r#"{"open_duration_seconds": 1, "failure_rate": 0.2}"#,
        )
        .await;
    assert_eq!(answer["setting"], "failure_rate");
    assert_eq!(s.breaker.config(), before, "nothing changed");
    assert!(s.breaker.recent_events().is_empty(), "no change recorded");

    // Without the token, or with a wrong one: 401, nothing changed.
    for token in [None, Some("wrong")] {
        let (got, _) = s
            .post(CONFIG, token, r#"{"consecutive_failures": 1}"#)
            .await;
        assert_eq!(got, 401);
    }
    assert_eq!(s.breaker.config(), before);
    // An unknown breaker: 404.
    let (got, _) = s
        .post(
            "/reliability/circuit-breaker/nope/config",
            Some("t0ken"),
            "{}",
        )
        .await;
    assert_eq!(got, 404);
}

#[tokio::test]
async fn a_window_breaker_takes_rates_and_refuses_a_count() {
    let s = serve(true).await;
    let (status, body) = s
        .post(
            CONFIG,
            Some("t0ken"),
            r#"{"failure_rate": 0.25, "minimum_calls": 4}"#,
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["config"]["failure_rate"], 0.25);
    assert_eq!(body["config"]["minimum_calls"], 4);
    assert_eq!(body["config"]["window"]["calls"], 20);
    // Three successes and one failure: 25% of four calls trips now.
    for _ in 0..3 {
        s.breaker.try_acquire().unwrap().success();
    }
    s.fail(1);
    assert_eq!(s.breaker.state(), State::Open);

    let (status, body) = s
        .post(CONFIG, Some("t0ken"), r#"{"consecutive_failures": 3}"#)
        .await;
    assert_eq!(status, 422);
    assert_eq!(body["setting"], "consecutive_failures");
    let (status, body) = s
        .post(CONFIG, Some("t0ken"), r#"{"slow_call_rate": 0.5}"#)
        .await;
    assert_eq!(status, 422, "{body}");
    assert!(body["expected"].as_str().unwrap().contains("slow calls"));
}

#[tokio::test]
async fn force_open_and_disable_take_effect_and_need_the_token() {
    let s = serve(false).await;
    for route in ["force-open", "disable"] {
        let path = format!("/reliability/circuit-breaker/model_server/{route}");
        let (status, _) = s.post(&path, None, "").await;
        assert_eq!(status, 401, "{route}");
        assert_eq!(s.breaker.state(), State::Closed, "{route} refused");
    }
    let (status, body) = s
        .post(
            "/reliability/circuit-breaker/model_server/force-open",
            Some("t0ken"),
            "",
        )
        .await;
    assert_eq!(
        (status, &body["circuit_breaker"]),
        (200, &json!("forced_open"))
    );
    assert!(s.breaker.try_acquire().is_err(), "forced open rejects");

    let (status, body) = s
        .post(
            "/reliability/circuit-breaker/model_server/disable",
            Some("t0ken"),
            "",
        )
        .await;
    assert_eq!(
        (status, &body["circuit_breaker"]),
        (200, &json!("disabled"))
    );
    s.fail(10);
    assert_eq!(
        s.breaker.state(),
        State::Disabled,
        "disabled records nothing"
    );

    let (status, _) = s
        .post(
            "/reliability/circuit-breaker/model_server/reset",
            Some("t0ken"),
            "",
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(s.breaker.state(), State::Closed);
    let (_, detail) = s.get("/reliability/circuit-breaker/model_server").await;
    let to: Vec<_> = detail["recent_events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["to"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(to, ["closed", "disabled", "forced_open"]);
}

#[tokio::test]
async fn metrics_only_is_switched_at_runtime() {
    let s = serve(false).await;
    let (status, _) = s
        .post(CONFIG, Some("t0ken"), r#"{"metrics_only": true}"#)
        .await;
    assert_eq!(status, 200);
    s.fail(5);
    assert_eq!(s.breaker.state(), State::Open, "it still trips");
    for _ in 0..3 {
        s.breaker
            .try_acquire()
            .expect("metrics-only admits")
            .success();
    }
    let (_, doc) = s.get("/reliability").await;
    let b = &doc["circuit_breakers"]["model_server"];
    assert_eq!(b["would_have_rejected"], 3);
    assert_eq!(b["rejected"], 0);
    assert_eq!(b["metrics_only"], true);
    assert_eq!(b["state"], "open", "successes while open are not recorded");

    let (status, _) = s
        .post(CONFIG, Some("t0ken"), r#"{"metrics_only": false}"#)
        .await;
    assert_eq!(status, 200);
    assert!(s.breaker.try_acquire().is_err(), "enforcing again");
}
