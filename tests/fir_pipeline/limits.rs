//! Body limits: 2 MiB on the JSON routes, 25 MiB on `POST /fir/audio`.

use crate::support::Demo;

const MIB: usize = 1024 * 1024;

#[tokio::test]
async fn json_routes_take_2_mib_and_audio_25_mib() {
    let (demo, _dir) = Demo::ready_on_sqlite("body-limits").await;
    let http = reqwest::Client::new();

    // Past the JSON limit: 413, as JSON.
    let mut complaint = br#"{"complaint": ""#.to_vec();
    complaint.resize(2 * MIB, b'x');
    complaint.extend_from_slice(br#""}"#);
    let response = http
        .post(demo.url("/fir"))
        .header("content-type", "application/json")
        .body(complaint)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 413);
    assert!(
        response.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("application/json")
    );
    let body: serde_json::Value = response.json().await.unwrap();
    assert!(
        body["error"].as_str().is_some_and(|e| e.contains("limit")),
        "{body}"
    );

    // 3 MiB of audio is taken (the stand-in's transcript is the trimmed
    // body).
    let mut audio = vec![b' '; 3 * MIB];
    audio.extend_from_slice(b"My bicycle was stolen");
    let response = http
        .post(demo.url("/fir/audio"))
        .body(audio)
        .send()
        .await
        .unwrap();
    let status = response.status();
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["complaint"], "My bicycle was stolen");

    // Past the audio limit: 413.
    let response = http
        .post(demo.url("/fir/audio"))
        .body(vec![b' '; 25 * MIB + 1])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 413);
}
