//! Several processes on one database: set-up on a fresh home, reads beside a writer, and the
//! write lock after a refused request.

use std::process::Stdio;
use std::time::{Duration, Instant};

use ccm_tests::TestHome;
use sqlx::ConnectOptions;

/// A connection of another process, waiting at most `busy` for a lock.
async fn outside_connection(home: &TestHome, busy: Duration) -> sqlx::SqliteConnection {
    sqlx::sqlite::SqliteConnectOptions::new()
        .filename(home.db_file())
        .busy_timeout(busy)
        .connect()
        .await
        .expect("database opens")
}

#[test]
fn parallel_commands_on_a_fresh_home_set_the_database_up_once() {
    for round in 0..3 {
        let home = TestHome::new("fresh-race");
        let adds: Vec<_> = (0..16)
            .map(|i| {
                home.ccm()
                    .args(["task", "add", &format!("t{i}")])
                    .stdout(Stdio::null())
                    .stderr(Stdio::piped())
                    .spawn()
                    .expect("ccm task add starts")
            })
            .collect();
        // Waits until it answers, and fails if it exited (a failed migration, say).
        let daemon = home.start();
        for add in adds {
            let out = add.wait_with_output().expect("ccm task add ends");
            assert!(
                out.status.success(),
                "round {round}: task add failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        assert_eq!(home.run_json(&["task", "list"]).as_array().unwrap().len(), 16);
        drop(daemon);
    }
}

#[tokio::test]
async fn reads_work_while_another_process_holds_the_write_lock() {
    let home = TestHome::new("reads-locked");
    home.run_ok(&["task", "add", "first"]);
    let mut outside = outside_connection(&home, Duration::from_secs(1)).await;
    sqlx::query("BEGIN IMMEDIATE").execute(&mut outside).await.unwrap();

    for args in [
        &["task", "list"][..],
        &["status"],
        &["dump-state"],
        &["decide"],
        &["agent", "list"],
        &["claims"],
    ] {
        let started = Instant::now();
        let out = home.run(args);
        assert!(
            out.status.success(),
            "ccm {args:?} failed beside a writer: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(started.elapsed() < Duration::from_secs(3), "ccm {args:?} waited for the writer");
        assert!(out.stderr.is_empty(), "{}", String::from_utf8_lossy(&out.stderr));
    }

    // A write waits for its busy timeout, then says so in one line, without SQL.
    let out = home.run(&["task", "add", "second"]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("busy") && stderr.contains("ccm.db"), "{stderr}");
    sqlx::query("ROLLBACK").execute(&mut outside).await.unwrap();
}

#[tokio::test]
async fn a_refused_write_leaves_the_database_unlocked() {
    let home = TestHome::new("refused-unlocks");
    let daemon = home.start();
    let out = home.run(&["decide", "0123abcd", "cancel"]);
    assert!(!out.status.success(), "an unknown decision is refused");
    let (status, body) =
        daemon.post("/api/tasks/nosuchtask/events", serde_json::json!({ "event": "cancel" })).await;
    assert_eq!(status, 404, "{body}");

    let mut outside = outside_connection(&home, Duration::from_secs(2)).await;
    sqlx::query("BEGIN IMMEDIATE")
        .execute(&mut outside)
        .await
        .expect("the daemon holds no write transaction after refusing");
    sqlx::query("ROLLBACK").execute(&mut outside).await.unwrap();
}
