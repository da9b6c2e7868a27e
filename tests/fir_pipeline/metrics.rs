//! `/metrics`: help texts, and requests counted by route template, method
//! and status.

use std::time::Duration;

use crate::support::{Demo, eventually, post_fir};

/// The value of `name{labels}` in Prometheus text, whatever the label order.
fn value(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    text.lines()
        .filter(|l| l.starts_with(&format!("{name}{{")))
        .find(|l| {
            labels
                .iter()
                .all(|(k, v)| l.contains(&format!("{k}=\"{v}\"")))
        })
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
}

#[tokio::test]
async fn metrics_are_described_and_requests_counted() {
    let (demo, _dir) = Demo::ready_on_sqlite("metrics").await;
    let http = reqwest::Client::new();

    let (status, body) = post_fir(&http, &demo, "stolen bicycle").await.unwrap();
    assert_eq!(status, 201, "{body}");
    let id = body["id"].as_str().unwrap().to_string();
    for _ in 0..2 {
        let r = http
            .get(demo.url(&format!("/fir/{id}")))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }
    let r = http.get(demo.url("/no/such/route")).send().await.unwrap();
    assert_eq!(r.status(), 404);
    let r = http
        .post(demo.url("/fir"))
        .header("content-type", "text/plain")
        .body("stolen bicycle")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 415);

    // The monitor's first round records the crate's health check metrics.
    let text = eventually(Duration::from_secs(30), "the monitor's metrics", || {
        let request = http.get(demo.url("/metrics"));
        async move {
            let text = request.send().await.ok()?.text().await.ok()?;
            text.contains("tower_recovery_health_checks_total{")
                .then_some(text)
        }
    })
    .await;
    for help in [
        "# HELP http_requests_total ",
        "# HELP tower_recovery_health_checks_total ",
        "# HELP tower_recovery_health_check_duration_seconds ",
    ] {
        assert!(text.contains(help), "{help:?} missing:\n{text}");
    }
    let requests = |route, method, status| {
        value(
            &text,
            "http_requests_total",
            &[("route", route), ("method", method), ("status", status)],
        )
    };
    assert_eq!(requests("/fir", "POST", "201"), Some(1.0), "{text}");
    assert_eq!(requests("/fir/{id}", "GET", "200"), Some(2.0), "{text}");
    assert_eq!(requests("unmatched", "GET", "404"), Some(1.0), "{text}");
    assert_eq!(requests("/fir", "POST", "415"), Some(1.0), "{text}");
    // The route template, never the raw path.
    assert!(!text.contains(&id), "{text}");
}
