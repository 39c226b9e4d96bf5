//! The trust boundary and the resource limits of the node, probed from outside as an attacker
//! or a careless user would.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use ccm_tests::{open_db, TestHome};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

fn stderr(output: &std::process::Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[tokio::test]
async fn empty_or_short_token_stops_the_daemon_and_fails_doctor() {
    let home = TestHome::new("short-token");
    std::fs::create_dir_all(home.home()).unwrap();
    let auth = home.home().join("auth.json");
    for token in ["", "x", &"a".repeat(63)] {
        std::fs::write(&auth, json!({ "token": token }).to_string()).unwrap();
        let mut up = home.ccm().arg("up").stderr(Stdio::piped()).spawn().unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        while up.try_wait().unwrap().is_none() {
            if Instant::now() > deadline {
                up.kill().unwrap();
                up.wait().unwrap();
                panic!("the daemon started with token {token:?}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let up = up.wait_with_output().unwrap();
        assert!(!up.status.success());
        let message = stderr(&up);
        assert!(message.contains("auth.json"), "{message}");
        assert!(message.contains("at least 64"), "{message}");
        assert!(message.contains("fix: delete the file and run `ccm up`"), "{message}");
        let doctor = home.run(&["doctor"]);
        assert!(!doctor.status.success());
        let report = String::from_utf8_lossy(&doctor.stdout);
        assert!(report.contains("FAIL  auth"), "{report}");
    }
    // A generated token works again once the file is removed.
    std::fs::remove_file(&auth).unwrap();
    let daemon = home.start();
    assert_eq!(daemon.token.len(), 64);
    assert_eq!(daemon.get("/api/status").await.0, 200);
}

/// Every file under `dir` is 0600 and every directory 0700.
fn assert_private(dir: &Path) {
    assert_eq!(mode(dir), 0o700, "{}", dir.display());
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            assert_private(&path);
        } else {
            assert_eq!(mode(&path), 0o600, "{}", path.display());
        }
    }
}

#[tokio::test]
async fn home_and_its_files_are_private_whatever_the_umask() {
    let home = TestHome::new("umask");
    let hook = |home: &TestHome| {
        let out = home
            .ccm_after("umask 000")
            .args(["hook", "--agent", "claude", r#"{"hook_event_name":"Stop"}"#])
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", stderr(&out));
    };
    // No daemon: `ccm hook` creates the home, the database and logs/hook.log.
    hook(&home);
    assert!(home.home().join("logs/hook.log").exists());
    // The database busy: the event goes to the spool.
    let mut db = open_db(&home.db_file()).await;
    sqlx::query("BEGIN IMMEDIATE").execute(&mut db).await.unwrap();
    hook(&home);
    assert_eq!(std::fs::read_dir(home.home().join("spool")).unwrap().count(), 1);
    sqlx::query("ROLLBACK").execute(&mut db).await.unwrap();
    drop(db);

    let daemon = home.start_command(home.ccm_after("umask 000"));
    assert_eq!(daemon.post("/api/tasks", json!({ "title": "private" })).await.0, 201);
    assert!(home.home().join("ccm.db-wal").exists());
    assert!(home.home().join("daemon.json").exists());
    assert_private(&home.home());

    // The CLI refuses a port file others may write (it would send them the token)...
    std::fs::set_permissions(home.home().join("daemon.json"), PermissionsExt::from_mode(0o666))
        .unwrap();
    let status = home.run(&["task", "list"]);
    assert!(!status.status.success());
    let message = stderr(&status);
    assert!(message.contains("daemon.json is writable by other users"), "{message}");
    assert!(message.contains("fix: stop the daemon and `rm "), "{message}");
    std::fs::set_permissions(home.home().join("daemon.json"), PermissionsExt::from_mode(0o600))
        .unwrap();
    // ... and a home others may write.
    std::fs::set_permissions(home.home(), PermissionsExt::from_mode(0o777)).unwrap();
    let list = home.run(&["task", "list"]);
    std::fs::set_permissions(home.home(), PermissionsExt::from_mode(0o700)).unwrap();
    assert!(!list.status.success());
    let message = stderr(&list);
    assert!(message.contains("is writable by other users (mode 777)"), "{message}");
    assert!(message.contains("fix: `chmod 700 "), "{message}");
    let doctor = home.run(&["doctor"]);
    assert!(String::from_utf8_lossy(&doctor.stdout).contains("ok    home"));
}

#[tokio::test]
async fn configured_loopback_address_answers_its_own_host() {
    let home = TestHome::new("loopback2");
    let daemon = home.start_with(|c| {
        c.env("CCM_DAEMON__HOST", "127.0.0.2");
    });
    assert!(daemon.addr.starts_with("127.0.0.2:"), "{}", daemon.addr);
    let health = daemon.http.get(daemon.url("/healthz")).send().await.unwrap();
    assert_eq!(health.status(), 200);
    assert_eq!(daemon.get("/api/status").await.0, 200);
    // Another name is still refused.
    let port = daemon.addr.rsplit(':').next().unwrap();
    let request =
        daemon.http.get(daemon.url("/healthz")).header("host", format!("127.0.0.3:{port}"));
    assert_eq!(daemon.send(request).await.0, 403);
}

/// Sends `request` as is and returns the status line's code.
async fn raw_status(addr: &str, request: &str) -> u16 {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    let mut buf = [0u8; 4096];
    while !answer.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = stream.read(&mut buf).await.unwrap();
        assert!(n > 0, "connection closed before an answer");
        answer.extend_from_slice(&buf[..n]);
    }
    let text = String::from_utf8_lossy(&answer);
    text.split(' ').nth(1).unwrap().parse().unwrap()
}

#[tokio::test]
async fn second_host_header_or_foreign_absolute_target_answers_403() {
    let home = TestHome::new("two-hosts");
    let daemon = home.start();
    let (addr, token) = (&daemon.addr, &daemon.token);
    let auth = format!("Authorization: Bearer {token}\r\nConnection: close\r\n");
    let good = format!("GET /api/status HTTP/1.1\r\nHost: {addr}\r\n{auth}\r\n");
    assert_eq!(raw_status(addr, &good).await, 200);
    let two_hosts =
        format!("GET /api/status HTTP/1.1\r\nHost: {addr}\r\nHost: evil.example.com\r\n{auth}\r\n");
    assert_eq!(raw_status(addr, &two_hosts).await, 403);
    let absolute =
        format!("GET http://evil.example.com/api/status HTTP/1.1\r\nHost: {addr}\r\n{auth}\r\n");
    assert_eq!(raw_status(addr, &absolute).await, 403);
    let own_absolute =
        format!("GET http://{addr}/api/status HTTP/1.1\r\nHost: {addr}\r\n{auth}\r\n");
    assert_eq!(raw_status(addr, &own_absolute).await, 200);
}

async fn hook_rows(home: &TestHome) -> i64 {
    let mut db = open_db(&home.db_file()).await;
    sqlx::query_scalar("SELECT count(*) FROM hook_events").fetch_one(&mut db).await.unwrap()
}

fn ndjson(lines: usize) -> String {
    "{}\n".repeat(lines)
}

#[tokio::test]
async fn oversized_bodies_and_batches_answer_413_in_the_json_format() {
    let home = TestHome::new("limits");
    let daemon = home.start_with(|c| {
        c.env("CCM_DAEMON__MAX_BATCH_EVENTS", "600").env("CCM_DAEMON__MAX_BODY_BYTES", "4096");
    });
    let batch = |body: String| {
        daemon
            .http
            .post(daemon.url("/api/hooks?system=claude&key=big"))
            .header("content-type", "application/x-ndjson")
            .body(body)
    };
    let (status, answer) = daemon.send(batch(ndjson(601))).await;
    assert_eq!(status, 413, "{answer}");
    assert_eq!(answer["error"]["code"], "payload_too_large");
    let message = answer["error"]["message"].as_str().unwrap();
    assert!(message.contains("601 events; at most 600"), "{message}");
    assert!(message.contains("daemon.max_batch_events"), "{message}");
    assert_eq!(hook_rows(&home).await, 0);

    // The same overflow of bytes answers the same on both routes.
    let big = "x".repeat(5000);
    let (status, hooks) = daemon
        .send(daemon.http.post(daemon.url("/api/hooks")).json(&json!({ "prompt": big })))
        .await;
    assert_eq!(status, 413, "{hooks}");
    let (status, tasks) = daemon.post("/api/tasks", json!({ "title": "t", "prompt": big })).await;
    assert_eq!(status, 413, "{tasks}");
    for answer in [&hooks, &tasks] {
        assert_eq!(answer["error"]["code"], "payload_too_large", "{answer}");
        assert!(answer["error"]["message"].as_str().unwrap().contains("daemon.max_body_bytes"));
    }
    let (_, listed) = daemon.get("/api/tasks").await;
    assert_eq!(listed, json!([]));

    // Within the limits, a batch larger than one write group is stored whole, under its keys.
    let response = batch(ndjson(600)).bearer_auth(&daemon.token).send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.text().await.unwrap().lines().count(), 600);
    assert_eq!(hook_rows(&home).await, 600);
    let mut db = open_db(&home.db_file()).await;
    let last: i64 = sqlx::query_scalar("SELECT count(*) FROM hook_events WHERE key = 'big:599'")
        .fetch_one(&mut db)
        .await
        .unwrap();
    assert_eq!(last, 1);
}

#[tokio::test]
async fn large_batch_is_written_in_groups_that_other_writers_interleave() {
    const EVENTS: i64 = 10_000;
    let home = TestHome::new("groups");
    let daemon = home.start();
    let request = daemon
        .http
        .post(daemon.url("/api/hooks?system=claude&key=groups"))
        .header("content-type", "application/x-ndjson")
        .bearer_auth(&daemon.token)
        .body(ndjson(EVENTS as usize));
    let batch = tokio::spawn(request.send());
    // Part of the batch is committed before the rest: another writer gets in meanwhile.
    let mut partial = false;
    while !batch.is_finished() {
        if (1..EVENTS).contains(&hook_rows(&home).await) {
            let (status, _) = daemon.post("/api/tasks", json!({ "title": "between groups" })).await;
            assert_eq!(status, 201);
            partial = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let response = batch.await.unwrap().unwrap();
    assert_eq!(response.status(), 200);
    assert!(partial, "the batch was committed at once");
    assert_eq!(hook_rows(&home).await, EVENTS);
}

#[tokio::test]
async fn idle_connections_beyond_the_cap_do_not_keep_healthz_from_answering() {
    let home = TestHome::new("slowloris");
    let daemon = home.start_with(|c| {
        c.env("CCM_DAEMON__MAX_CONNECTIONS", "8").env("CCM_DAEMON__HEADER_TIMEOUT_MS", "300");
    });
    // Many more connections than the cap, each sending a request line and then nothing.
    let mut idle = Vec::new();
    for _ in 0..40 {
        let mut stream = TcpStream::connect(&daemon.addr).await.unwrap();
        stream.write_all(b"GET /healthz HTTP/1.1\r\n").await.unwrap();
        idle.push(stream);
    }
    let started = Instant::now();
    let health = daemon.http.get(daemon.url("/healthz")).send().await.unwrap();
    assert_eq!(health.status(), 200);
    assert!(started.elapsed() < Duration::from_secs(10), "{:?}", started.elapsed());
    // The daemon closed the silent connections.
    for stream in &mut idle {
        let mut buf = [0u8; 1024];
        let read = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut buf)).await;
        assert!(matches!(read, Ok(Ok(0) | Err(_))), "an idle connection stayed open: {read:?}");
    }
    // A kept-alive connection that goes silent is closed too.
    let mut stream = TcpStream::connect(&daemon.addr).await.unwrap();
    let request = format!("GET /healthz HTTP/1.1\r\nHost: {}\r\n\r\n", daemon.addr);
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut answer = vec![0u8; 4096];
    assert!(stream.read(&mut answer).await.unwrap() > 0);
    let read = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut answer)).await;
    assert!(matches!(read, Ok(Ok(0) | Err(_))), "{read:?}");
}

#[tokio::test]
async fn a_full_tcp_listener_holds_neither_the_cli_nor_new_requests_for_the_header_timeout() {
    let home = TestHome::new("tcp-cap-full");
    // The default header timeout (10 s): idle connections alone would hold the slots that long.
    let daemon = home.start_with(|c| {
        c.env("CCM_DAEMON__MAX_CONNECTIONS", "8");
    });
    let mut idle = Vec::new();
    for _ in 0..40 {
        let mut stream = TcpStream::connect(&daemon.addr).await.unwrap();
        stream.write_all(b"GET /healthz HTTP/1.1\r\n").await.unwrap();
        idle.push(stream);
    }
    // The CLI goes through the daemon's Unix socket, which has slots of its own.
    let list = home.run(&["task", "list"]);
    assert!(list.status.success(), "{}", stderr(&list));
    // A new TCP client gets a slot of a connection that sent no complete request, well before
    // the header timeout would have freed one.
    let health = daemon
        .http
        .get(daemon.url("/healthz"))
        .timeout(Duration::from_secs(5))
        .send()
        .await
        .expect("healthz answers while idle connections fill every slot");
    assert_eq!(health.status(), 200);
    assert!(daemon.log_text().contains("closing an idle connection"));
    drop(idle);
}

#[tokio::test]
async fn daemon_keeps_serving_when_file_descriptors_run_out() {
    let home = TestHome::new("emfile");
    let daemon = home.start_command({
        let mut command = home.ccm_after("ulimit -n 96");
        command.env("CCM_DAEMON__HEADER_TIMEOUT_MS", "500");
        command
    });
    let mut idle = Vec::new();
    for _ in 0..200 {
        let mut stream = TcpStream::connect(&daemon.addr).await.unwrap();
        stream.write_all(b"GET /healthz HTTP/1.1\r\n").await.unwrap();
        idle.push(stream);
    }
    let health = daemon.http.get(daemon.url("/healthz")).send().await.unwrap();
    assert_eq!(health.status(), 200);
    drop(idle);
    let log = daemon.log_text();
    assert!(log.contains("cannot accept a connection"), "{log}");
}

#[tokio::test]
async fn made_up_methods_and_paths_do_not_grow_metrics() {
    let home = TestHome::new("metrics-labels");
    let daemon = home.start();
    for i in 0..30 {
        let method = reqwest::Method::from_bytes(format!("MADEUP{i}").as_bytes()).unwrap();
        daemon.http.request(method, daemon.url("/healthz")).send().await.unwrap();
        daemon.http.get(daemon.url(&format!("/nope-{i}"))).send().await.unwrap();
    }
    let metrics =
        daemon.http.get(daemon.url("/metrics")).send().await.unwrap().text().await.unwrap();
    assert!(!metrics.contains("MADEUP"), "{metrics}");
    assert!(!metrics.contains("/nope-"), "{metrics}");
    let series = metrics.lines().filter(|l| l.starts_with("ccm_http_requests_total{")).count();
    assert!(series <= 3, "{series} series:\n{metrics}");
    assert!(metrics.contains(r#"method="other""#), "{metrics}");
}

#[tokio::test]
async fn task_creation_validates_at_the_boundary_naming_field_and_allowed_values() {
    let home = TestHome::new("task-validation");
    let cases: [(Value, &str); 8] = [
        (
            json!({ "title": "x", "profile": "nope" }),
            "profile: unknown profile `nope`; configured: ",
        ),
        (
            json!({ "title": "x", "workflow": "nope" }),
            "workflow: unknown workflow `nope`; configured: code-review",
        ),
        (json!({ "title": "x".repeat(501) }), "title: must be at most 500 characters, got 501"),
        (
            json!({ "title": "a\u{0}b" }),
            "title: must be one line of text without control characters",
        ),
        (json!({ "title": "two\nlines" }), "title: must be one line of text"),
        (json!({ "title": "x", "prompt": "a\u{0}b" }), "prompt: must not contain NUL characters"),
        (
            json!({ "title": "x", "priority": 1001 }),
            "priority: must be between -1000 and 1000, got 1001",
        ),
        (json!(["x", null, null, null, null, null, null, 5, []]), "expected a JSON object"),
    ];
    // Through the CLI's direct path (no daemon) ...
    for (args, expected) in [
        (vec!["task", "add", "x", "--profile", "nope"], "unknown profile `nope`; configured: "),
        (vec!["task", "add", "x", "--workflow", "nope"], "unknown workflow `nope`"),
        (
            vec!["task", "add", "x", "--priority", "-1001"],
            "priority: must be between -1000 and 1000",
        ),
    ] {
        let out = home.run(&args);
        assert!(!out.status.success(), "{args:?} was accepted");
        assert!(stderr(&out).contains(expected), "{args:?}: {}", stderr(&out));
    }
    // ... and through the API.
    let daemon = home.start();
    for (body, expected) in cases {
        let (status, answer) = daemon.post("/api/tasks", body.clone()).await;
        assert_eq!(status, 400, "{body} → {answer}");
        let message = answer["error"]["message"].as_str().unwrap();
        assert!(message.contains(expected), "{body}: `{message}` should contain `{expected}`");
    }
    let (status, _) = daemon
        .post("/api/tasks", json!({ "title": "ok", "profile": "manual", "priority": -1000 }))
        .await;
    assert_eq!(status, 201);
    let (_, tasks) = daemon.get("/api/tasks").await;
    assert_eq!(tasks.as_array().unwrap().len(), 1, "{tasks}");
}

/// What the daemon, git and the agents create under `agents/` and `worktrees/` is private too,
/// though the daemon was started under `umask 000`.
#[tokio::test]
async fn agent_and_worktree_files_are_private_whatever_the_umask() {
    let home = TestHome::new("umask-agents");
    home.write_config(
        "profiles:\n  writer:\n    command: [sh, -c, 'echo out; echo x > made.txt; mkdir -p made/deeper; echo y > made/deeper/f; touch \"$CCM_AGENT_DIR/ready\"; exec sleep 600']\n",
    );
    let repo = home.work().join("app");
    ccm_tests::git_repo(&repo, None);
    home.run_ok(&["context", "add", repo.to_str().unwrap()]);
    let daemon = home.start_command(home.ccm_after("umask 000"));
    let (status, task) = daemon
        .post("/api/tasks", json!({ "title": "private work", "profile": "writer", "repo": repo }))
        .await;
    assert_eq!(status, 201, "{task}");
    let agents = home.home().join("agents");
    let ready = ccm_tests::wait_until(Duration::from_secs(30), || async {
        std::fs::read_dir(&agents)
            .map(|dirs| dirs.flatten().any(|d| d.path().join("ready").exists()))
            .unwrap_or(false)
    })
    .await;
    assert!(ready, "{}", daemon.log_text());
    assert_private(&agents);
    let worktrees = home.home().join("worktrees");
    assert!(std::fs::read_dir(&worktrees).unwrap().count() > 0);
    assert_private(&worktrees);
}
