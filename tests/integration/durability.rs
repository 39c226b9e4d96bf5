//! Acknowledged writes survive `kill -9`; backups taken under load are consistent.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ccm_tests::{open_db, Api, TestHome};
use serde_json::json;

const TASKS: usize = 5_000;
const CLIENTS: usize = 8;

/// Creates tasks through the API from `CLIENTS` concurrent clients until `total` were attempted
/// or `stop` is set; returns the ids whose creation was acknowledged with a 2xx.
async fn create_tasks(api: Api, total: usize, stop: Arc<AtomicBool>) -> Vec<String> {
    let next = Arc::new(AtomicUsize::new(0));
    let acked = Arc::new(Mutex::new(Vec::new()));
    let mut clients = Vec::new();
    for _ in 0..CLIENTS {
        let (http, url, token) = (api.http.clone(), api.url("/api/tasks"), api.token.clone());
        let (next, acked, stop) = (next.clone(), acked.clone(), stop.clone());
        clients.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let n = next.fetch_add(1, Ordering::Relaxed);
                if n >= total {
                    break;
                }
                let body = json!({ "title": format!("task {n}"), "priority": n % 7 });
                let Ok(response) = http.post(&url).bearer_auth(&token).json(&body).send().await
                else {
                    break; // the daemon is gone
                };
                if response.status().is_success() {
                    let task: serde_json::Value =
                        response.json().await.expect("created task as JSON");
                    acked.lock().unwrap().push(task["id"].as_str().expect("id").to_string());
                }
            }
        }));
    }
    for client in clients {
        client.await.expect("client task");
    }
    let ids = acked.lock().unwrap().clone();
    ids
}

async fn integrity(path: &std::path::Path) -> String {
    let mut db = open_db(path).await;
    let (result,): (String,) =
        sqlx::query_as("PRAGMA integrity_check").fetch_one(&mut db).await.unwrap();
    result
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_while_creating_5000_tasks_loses_no_acknowledged_task() {
    let home = TestHome::new("kill9");
    // A node with `sync:` (never enrolled, nothing sent): it keeps an outbox, written in each
    // task's transaction.
    home.write_config("sync:\n  rest_url: http://127.0.0.1:9/rest/v1\n  publishable_key: k\n");
    let mut daemon = home.start();
    let stop = Arc::new(AtomicBool::new(false));
    let creating = tokio::spawn(create_tasks(daemon.api.clone(), TASKS, stop.clone()));
    // Kill the daemon mid-stream, once a good share of the tasks is in.
    let db = home.db_file();
    let reached = ccm_tests::wait_until(Duration::from_secs(60), || {
        let db = db.clone();
        async move {
            let mut conn = open_db(&db).await;
            let (n,): (i64,) =
                sqlx::query_as("SELECT count(*) FROM tasks").fetch_one(&mut conn).await.unwrap();
            n >= 500
        }
    })
    .await;
    assert!(reached, "creation did not get going: {}", daemon.log_text());
    daemon.kill9();
    let acked = creating.await.unwrap();
    // At least 500 were committed when it was killed; some of them may not have been answered.
    assert!(
        !acked.is_empty() && acked.len() < TASKS,
        "killed mid-stream: {} acknowledged",
        acked.len()
    );

    assert_eq!(integrity(&home.db_file()).await, "ok");
    let restarted = home.start();
    let (status, tasks) = restarted.get("/api/tasks").await;
    assert_eq!(status, 200);
    let stored: std::collections::HashSet<&str> =
        tasks.as_array().unwrap().iter().map(|t| t["id"].as_str().unwrap()).collect();
    let missing: Vec<&String> = acked.iter().filter(|id| !stored.contains(id.as_str())).collect();
    assert!(
        missing.is_empty(),
        "{} acknowledged tasks lost, e.g. {:?}",
        missing.len(),
        &missing[..missing.len().min(3)]
    );

    // Every stored task has its creation in the log and a row for sync, as another process sees it.
    let mut conn = open_db(&home.db_file()).await;
    let (without_log,): (i64,) = sqlx::query_as(
        "SELECT count(*) FROM tasks t WHERE NOT EXISTS (SELECT 1 FROM task_log l WHERE l.task_id = t.id AND l.from_state IS NULL)",
    )
    .fetch_one(&mut conn)
    .await
    .unwrap();
    assert_eq!(without_log, 0);
    let (without_outbox,): (i64,) = sqlx::query_as(
        "SELECT count(*) FROM tasks t WHERE NOT EXISTS (SELECT 1 FROM outbox o WHERE o.stream = 'task_summary' AND o.entity_key = t.id)",
    )
    .fetch_one(&mut conn)
    .await
    .unwrap();
    assert_eq!(without_outbox, 0);
    drop(restarted);
    assert_eq!(integrity(&home.db_file()).await, "ok");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backup_taken_while_tasks_are_written_restores_to_a_consistent_database() {
    let home = TestHome::new("backup");
    let daemon = home.start();
    let stop = Arc::new(AtomicBool::new(false));
    let writing = tokio::spawn(create_tasks(daemon.api.clone(), usize::MAX, stop.clone()));
    tokio::time::sleep(Duration::from_millis(300)).await;
    let backup = home.dir.path().join("backup.db");
    let out = home.run_ok(&["backup", backup.to_str().unwrap()]);
    assert!(out.contains("integrity check: ok"), "{out}");
    tokio::time::sleep(Duration::from_millis(200)).await;
    stop.store(true, Ordering::Relaxed);
    let acked = writing.await.unwrap();

    let again = home.run(&["backup", backup.to_str().unwrap()]);
    assert!(
        String::from_utf8_lossy(&again.stderr).contains("already exists"),
        "a backup never overwrites a file"
    );

    // Restore: the copy becomes the database of a fresh home.
    let restored = TestHome::new("backup-restored");
    std::fs::create_dir_all(restored.home()).unwrap();
    std::fs::copy(&backup, restored.db_file()).unwrap();
    assert_eq!(integrity(&restored.db_file()).await, "ok");
    let mut conn = open_db(&restored.db_file()).await;
    let (tasks,): (i64,) =
        sqlx::query_as("SELECT count(*) FROM tasks").fetch_one(&mut conn).await.unwrap();
    let (logged,): (i64,) =
        sqlx::query_as("SELECT count(DISTINCT task_id) FROM task_log WHERE from_state IS NULL")
            .fetch_one(&mut conn)
            .await
            .unwrap();
    let (dangling,): (i64,) = sqlx::query_as("SELECT count(*) FROM pragma_foreign_key_check")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert!(
        tasks > 0 && (tasks as usize) < acked.len(),
        "a snapshot mid-stream: {tasks} of {}",
        acked.len()
    );
    assert_eq!(logged, tasks, "every task in the backup has its creation logged");
    assert_eq!(dangling, 0);
    drop(conn);

    let listed = restored.run_json(&["task", "list"]);
    assert_eq!(listed.as_array().unwrap().len() as i64, tasks);
    drop(daemon);
}
