//! The local API's guards and error answers.

use ccm_tests::TestHome;
use serde_json::json;

#[tokio::test]
async fn api_without_the_token_answers_401() {
    let home = TestHome::new("no-token");
    let daemon = home.start();
    for request in [
        daemon.http.get(daemon.url("/api/tasks")),
        daemon.http.post(daemon.url("/api/tasks")).json(&json!({ "title": "x" })),
        daemon.http.get(daemon.url("/api/status")).bearer_auth("wrong-token"),
    ] {
        let response = request.send().await.unwrap();
        assert_eq!(response.status(), 401);
        let body: serde_json::Value = response.json().await.unwrap();
        assert_eq!(body["error"]["code"], "unauthorized");
    }
    // Nothing was created by the refused POST.
    let (_, tasks) = daemon.get("/api/tasks").await;
    assert_eq!(tasks, json!([]));
}

#[tokio::test]
async fn foreign_origin_or_host_answers_403() {
    let home = TestHome::new("foreign");
    let daemon = home.start();
    let port = daemon.addr.rsplit(':').next().unwrap();
    let cases = [
        ("host", "evil.example.com".to_string()),
        ("host", format!("attacker.test:{port}")),
        ("origin", "https://evil.example.com".to_string()),
        ("origin", "null".to_string()),
    ];
    for (header, value) in cases {
        let request = daemon
            .http
            .post(daemon.url("/api/tasks"))
            .header(header, &value)
            .json(&json!({ "title": "x" }));
        let (status, body) = daemon.send(request).await;
        assert_eq!(status, 403, "{header}: {value}");
        assert_eq!(body["error"]["code"], "forbidden");
        assert!(body["error"]["message"].as_str().unwrap().contains(&value), "{body}");
    }
    // The token does not open the door for a foreign host, and /healthz is guarded too.
    let request = daemon.http.get(daemon.url("/healthz")).header("host", "rebind.example.com");
    assert_eq!(daemon.send(request).await.0, 403);
    // Same-origin requests from the dashboard's own origin are fine.
    let request = daemon
        .http
        .get(daemon.url("/api/tasks"))
        .header("origin", format!("http://localhost:{port}"));
    assert_eq!(daemon.send(request).await.0, 200);
}

#[tokio::test]
async fn bad_body_answers_400_naming_the_field() {
    let home = TestHome::new("bad-body");
    let daemon = home.start();
    let cases = [
        (json!({ "prompt": "no title" }), "missing field `title`"),
        (json!({ "title": 42 }), "title"),
        (json!({ "title": "x", "max_attempts": "three" }), "max_attempts"),
        (json!({ "title": "x", "colour": "red" }), "unknown field `colour`"),
        (json!({ "title": "   " }), "title: must not be empty"),
        (json!({ "title": "x", "max_attempts": 0 }), "max_attempts: must be between 1 and 100"),
        (
            json!({ "title": "x", "depends_on": ["00000000"] }),
            "depends_on: no task matches `00000000`",
        ),
    ];
    for (body, expected) in cases {
        let (status, answer) = daemon.post("/api/tasks", body.clone()).await;
        assert_eq!(status, 400, "{body} → {answer}");
        let message = answer["error"]["message"].as_str().unwrap();
        assert!(message.contains(expected), "{body}: `{message}` should contain `{expected}`");
    }
    let request = daemon
        .http
        .post(daemon.url("/api/tasks"))
        .header("content-type", "application/json")
        .body("{not json");
    let (status, answer) = daemon.send(request).await;
    assert_eq!(status, 400, "{answer}");

    let (_, task) = daemon.post("/api/tasks", json!({ "title": "real" })).await;
    let id = task["id"].as_str().unwrap();
    let (status, answer) =
        daemon.post(&format!("/api/tasks/{id}/events"), json!({ "event": "explode" })).await;
    assert_eq!(status, 400);
    assert!(
        answer["error"]["message"]
            .as_str()
            .unwrap()
            .starts_with("event: unknown variant `explode`"),
        "{answer}"
    );
    let (status, answer) = daemon
        .post(&format!("/api/tasks/{id}/events"), json!({ "event": "failed", "class": "boom" }))
        .await;
    assert_eq!(status, 400);
    assert!(answer["error"]["message"].as_str().unwrap().contains("class"), "{answer}");
    let (status, _) = daemon.get("/api/tasks/ffffffff").await;
    assert_eq!(status, 404);

    // Only the one valid task was stored.
    let (_, tasks) = daemon.get("/api/tasks").await;
    assert_eq!(tasks.as_array().unwrap().len(), 1);
}

#[tokio::test]
async fn health_and_metrics_answer_in_their_formats() {
    let home = TestHome::new("metrics");
    let daemon = home.start();
    daemon.post("/api/tasks", json!({ "title": "counted" })).await;
    let health: serde_json::Value =
        daemon.http.get(daemon.url("/healthz")).send().await.unwrap().json().await.unwrap();
    assert_eq!(health["status"], "ok");
    assert_eq!(health["pid"], daemon.child.id());
    let metrics =
        daemon.http.get(daemon.url("/metrics")).send().await.unwrap().text().await.unwrap();
    assert!(metrics.contains("# TYPE ccm_tasks gauge"), "{metrics}");
    assert!(metrics.contains("ccm_tasks_created_total 1"), "{metrics}");
    assert!(
        metrics.contains(
            r#"ccm_http_requests_total{method="POST",route="/api/tasks",status="201"} 1"#
        ),
        "{metrics}"
    );
}

#[tokio::test]
async fn an_events_reason_with_a_nul_byte_or_over_4_kib_is_refused_naming_the_field() {
    let home = TestHome::new("event-reason");
    let daemon = home.start();
    let (status, task) = daemon.post("/api/tasks", json!({ "title": "t", "prompt": "p" })).await;
    assert_eq!(status, 201, "{task}");
    let id = task["id"].as_str().unwrap().to_string();
    let events = format!("/api/tasks/{id}/events");
    for (reason, says) in [
        ("stop\u{0}here".to_string(), "reason: must not contain NUL bytes"),
        ("x".repeat(3 * 1024 * 1024), "reason: must be at most 4096 bytes, got 3145728"),
    ] {
        let (status, body) =
            daemon.post(&events, json!({ "event": "cancel", "reason": reason })).await;
        assert_eq!(status, 400, "{body}");
        assert_eq!(body["error"]["message"], says);
    }
    let (_, shown) = daemon.get(&format!("/api/tasks/{id}")).await;
    assert_ne!(shown["state"], "cancelled", "nothing was applied");
    let (status, body) =
        daemon.post(&events, json!({ "event": "cancel", "reason": "y".repeat(4096) })).await;
    assert_eq!((status, &body["state"]), (200, &json!("cancelled")), "4 KiB is allowed");

    // the CLI's own path, with no daemon, checks the same
    drop(daemon);
    let other = home.run_json(&["task", "add", "other"]);
    let other = other["id"].as_str().unwrap();
    let refused = home.run(&[
        "task",
        "event",
        other,
        r#"{"event": "cancel"}"#,
        "--reason",
        &"z".repeat(5000),
    ]);
    assert!(!refused.status.success());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(stderr.contains("reason: must be at most 4096 bytes"), "{stderr}");
}
