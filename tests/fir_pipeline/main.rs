//! The seed's failure scenarios against the real demo binary, real sockets
//! and a real MariaDB server: each scenario prints the downtime it measured.

mod adaptive;
mod database;
#[cfg(feature = "redis")]
mod fleet;
mod gate;
mod limits;
mod metrics;
mod restart;
mod support;
mod upstreams;

mod cli {
    //! The demo's first minute: `--help`, mistakes, a busy port.
    use std::process::Command;

    use crate::support::demo_binary;

    fn run(args: &[&str], env: &[(&str, &str)]) -> (Option<i32>, String, String) {
        let out = Command::new(demo_binary())
            .args(args)
            .envs(env.iter().copied())
            .env("STARTUP_TIMEOUT", "1")
            .output()
            .expect("the demo runs");
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    #[test]
    fn help_is_answered_and_unknown_arguments_refused() {
        let (code, stdout, _) = run(&["--help"], &[]);
        assert_eq!(code, Some(0));
        assert!(
            stdout.contains("--chaos") && stdout.contains("HOST"),
            "{stdout}"
        );
        // The body limits are documented.
        assert!(
            stdout.contains("up to 2 MiB") && stdout.contains("up to 25 MiB"),
            "{stdout}"
        );
        let (code, _, stderr) = run(&["--chaso"], &[]);
        assert_eq!(code, Some(2));
        assert!(stderr.contains("unknown argument \"--chaso\""), "{stderr}");
    }

    #[test]
    fn every_bad_setting_is_named_at_once() {
        let (code, _, stderr) = run(
            &[],
            &[
                ("PORT", "80x"),
                ("HOST", "localhostt"),
                ("FIR_CHAOS", "maybe"),
                ("HEALTH_CHECK_INTERVAL", "-1"),
                ("RECOVERY_MODE", "lenient"),
                ("FIR_CHAOS_DOWN", "0"),
                ("FIR_MODEL_NEEDS_DATABASE", "perhaps"),
                ("ALERT_WEBHOOK_URL", "https://pager.example/alerts"),
            ],
        );
        assert_eq!(code, Some(2), "{stderr}");
        for named in [
            "PORT=\"80x\"",
            "HOST=\"localhostt\"",
            "FIR_CHAOS=\"maybe\"",
            "HEALTH_CHECK_INTERVAL=\"-1\"",
            "RECOVERY_MODE=\"lenient\": expected adaptive or strict",
            "FIR_CHAOS_DOWN=\"0\"",
            "FIR_MODEL_NEEDS_DATABASE=\"perhaps\"",
            "ALERT_WEBHOOK_URL: invalid webhook URL \"https://pager.example/alerts\"",
        ] {
            assert!(stderr.contains(named), "{named} not named in:\n{stderr}");
        }
    }

    #[test]
    fn a_busy_port_is_named() {
        let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = busy.local_addr().unwrap().port().to_string();
        let dir = crate::support::temp_dir("busy-port");
        let db = format!("sqlite://{}?mode=rwc", dir.join("fir.db").display());
        let (code, _, stderr) = run(&[], &[("PORT", &port), ("DATABASE_URL", &db)]);
        assert_eq!(code, Some(2), "{stderr}");
        assert!(
            stderr.contains(&format!("PORT={port}")) && stderr.contains("in use"),
            "{stderr}"
        );
    }
}

mod errors {
    //! Every error answer of the demo is JSON (issue 12).
    use crate::support::Demo;

    #[tokio::test]
    async fn every_error_answer_is_json() {
        let (demo, _dir) = Demo::ready_on_sqlite("json-errors").await;
        let http = reqwest::Client::new();
        let cases = [
            (http.get(demo.url("/no/such/route")), 404),
            (http.delete(demo.url("/fir")), 405),
            (
                http.post(demo.url("/fir"))
                    .header("content-type", "text/plain")
                    .body("complaint"),
                415,
            ),
            (
                http.post(demo.url("/fir"))
                    .header("content-type", "application/json")
                    .body("{not json"),
                400,
            ),
            (
                http.post(demo.url("/fir"))
                    .header("content-type", "application/json")
                    .body(vec![b' '; 3 << 20]),
                413,
            ),
        ];
        for (request, status) in cases {
            let response = request.send().await.unwrap();
            assert_eq!(response.status(), status);
            let content_type = response.headers()["content-type"]
                .to_str()
                .unwrap()
                .to_string();
            assert!(
                content_type.starts_with("application/json"),
                "{status}: {content_type}"
            );
            let body: serde_json::Value = response.json().await.unwrap();
            assert!(
                body["error"].as_str().is_some_and(|e| !e.is_empty()),
                "{status}: {body}"
            );
        }
        // An access log line per request, at info.
        let log = demo.log_text();
        let lines = log
            .lines()
            .filter(|l| l.contains("INFO") && l.contains("finished processing request"))
            .count();
        assert!(lines >= 5, "{lines} access lines in:\n{log}");
    }
}

mod database_errors {
    //! A database that refuses connections is named as such, with its URL
    //! and without its password: not as sqlx's "pool timed out".
    use std::time::Duration;

    use crate::support::{Demo, TOKEN, eventually, free_port, post_fir, temp_dir};

    const PASSWORD: &str = "hunter2-secret";

    #[tokio::test]
    async fn a_refused_connection_is_named_without_the_password() {
        let dir = temp_dir("refused-database");
        // Nothing listens here: connections are refused.
        let closed = free_port();
        let demo = Demo::spawn(
            free_port(),
            dir.join("demo.log"),
            &[(
                "DATABASE_URL",
                format!("mysql://root:{PASSWORD}@127.0.0.1:{closed}/test"),
            )],
        );
        let shown = format!("mysql://root:***@127.0.0.1:{closed}/test");
        let http = reqwest::Client::new();

        // The health output (shown with the token) names cause and URL.
        let output = eventually(Duration::from_secs(30), "the database check", || {
            let request = http.get(demo.url("/health")).bearer_auth(TOKEN);
            async move {
                let health: serde_json::Value = request.send().await.ok()?.json().await.ok()?;
                let check = &health["checks"]["database:connectivity"][0];
                let output = check["output"]
                    .as_str()
                    .filter(|_| check["status"] == "fail")?;
                Some(output.to_string())
            }
        })
        .await;
        assert_eq!(
            output,
            format!("cannot connect to {shown}: connection refused")
        );

        // The API answers 503 with the cause (the URL stays in the log).
        let (status, body) = post_fir(&http, &demo, "stolen bicycle").await.unwrap();
        assert_eq!(status, 503, "{body}");
        assert_eq!(
            body["error"], "database unavailable: connection refused",
            "{body}"
        );

        // The recovery attempt names it too.
        let trigger = http
            .post(demo.url("/reliability/auto-recovery/database/trigger"))
            .bearer_auth(TOKEN)
            .send()
            .await
            .unwrap();
        assert_eq!(trigger.status(), 202);
        let failed =
            format!("Database recovery failed: cannot connect to {shown}: connection refused");
        eventually(Duration::from_secs(15), "the recovery log line", || {
            let found = demo.log_text().contains(&failed);
            async move { found.then_some(()) }
        })
        .await;

        let log = demo.log_text();
        assert!(
            log.contains(&format!(
                "error=cannot connect to {shown}: connection refused"
            )),
            "the request path's log line:\n{log}"
        );
        assert!(!log.contains(PASSWORD), "password in the log:\n{log}");
        assert!(!log.contains("pool timed out"), "{log}");
    }
}

mod gateway {
    //! A failed dependency is named in a 502, its internal URL is not.
    use std::time::Duration;

    use crate::support::{Demo, eventually, free_port, temp_dir};

    #[tokio::test]
    async fn a_502_does_not_reveal_the_upstream_url() {
        let dir = temp_dir("bad-gateway");
        // Nothing listens here: connections are refused.
        let refused = free_port();
        let demo = Demo::spawn(
            free_port(),
            dir.join("demo.log"),
            &[
                ("MODEL_SERVER_URL", format!("http://127.0.0.1:{refused}")),
                (
                    "DATABASE_URL",
                    format!("sqlite://{}?mode=rwc", dir.join("fir.db").display()),
                ),
            ],
        );
        let http = reqwest::Client::new();
        // The API answers during the startup gate (the model server is down).
        let (status, body) = eventually(Duration::from_secs(60), "an answer", || {
            let http = http.clone();
            let url = demo.url("/fir");
            async move {
                let r = http
                    .post(url)
                    .json(&serde_json::json!({ "complaint": "stolen bicycle" }))
                    .send()
                    .await
                    .ok()?;
                Some((r.status().as_u16(), r.text().await.ok()?))
            }
        })
        .await;
        assert_eq!(status, 502, "{body}");
        assert!(body.contains("model server"), "{body}");
        assert!(!body.contains(&refused.to_string()), "URL revealed: {body}");
        assert!(
            demo.log_text().contains(&refused.to_string()),
            "the log keeps the URL for the operator"
        );
    }
}
