//! Random paths, methods and headers: never a panic, never a 2xx on a POST
//! without valid auth.

use proptest::prelude::*;

use crate::support::*;

fn segment() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("reliability".to_string()),
        Just("auto-recovery".to_string()),
        Just("circuit-breaker".to_string()),
        Just("trigger".to_string()),
        Just("reset".to_string()),
        Just("health".to_string()),
        Just("model_server".to_string()),
        Just("database".to_string()),
        Just("%2e%2e".to_string()),
        Just("%FF%00".to_string()),
        "[a-zA-Z0-9_.~-]{0,12}",
    ]
}

fn path() -> impl Strategy<Value = String> {
    prop::collection::vec(segment(), 0..6).prop_map(|s| format!("/{}", s.join("/")))
}

fn method() -> impl Strategy<Value = &'static str> {
    prop::sample::select(vec![
        "GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS",
    ])
}

fn auth() -> impl Strategy<Value = Option<String>> {
    prop_oneof![
        Just(None),
        Just(Some("Bearer right-token".to_string())),
        Just(Some("Bearer wrong".to_string())),
        Just(Some("bearer right-token".to_string())),
        Just(Some("Basic cmlnaHQtdG9rZW4=".to_string())),
        "[ -~]{0,40}".prop_map(Some),
    ]
}

fn extra_headers() -> impl Strategy<Value = Vec<(&'static str, String)>> {
    let name = prop::sample::select(vec![
        "content-type",
        "accept",
        "x-forwarded-for",
        "cookie",
        "authorization",
        "host",
    ]);
    prop::collection::vec((name, "[ -~]{0,30}"), 0..4)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]

    #[test]
    fn never_panics_and_never_admits_unauthorised_posts(
        path in path(),
        method in method(),
        auth in auth(),
        extra in extra_headers(),
        configured in any::<bool>(),
    ) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().start_paused(true).build().unwrap();
        rt.block_on(async {
            let f = Fixture::new();
            let admin = f.admin();
            let router = if configured { admin.token("right-token").router::<()>() } else { admin.router::<()>() };
            let mut request = http::Request::builder().method(method).uri(&path);
            for (name, value) in &extra {
                if *name != "authorization" {
                    request = request.header(*name, value.as_str());
                }
            }
            if let Some(auth) = &auth {
                request = request.header("authorization", auth.as_str());
            }
            let Ok(request) = request.body(axum::body::Body::empty()) else { return Ok(()) };
            let response = tower::ServiceExt::oneshot(router, request).await.unwrap();
            if method == "POST" && response.status().is_success() {
                let valid = configured && auth.as_deref() == Some("Bearer right-token");
                prop_assert!(valid, "{} {} with {:?} got {}", method, path, auth, response.status());
            }
            Ok(())
        })?;
    }
}
