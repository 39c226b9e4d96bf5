//! Bounded storage (issue 28): the retention pass (`ccm gc --db`), the file given back, the
//! rotated backups (`ccm backup DIR --keep N`), and the janitor (`ccm gc`, issue 23).

use std::path::Path;
use std::process::Command;

use ccm_tests::{git_repo, open_db, TestHome};
use serde_json::Value;

const DAY_MS: i64 = 24 * 3600 * 1000;

fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as i64
}

async fn scalar(db: &Path, sql: &str) -> i64 {
    let mut conn = open_db(db).await;
    sqlx::query_scalar(sql).fetch_one(&mut conn).await.expect(sql)
}

async fn exec(conn: &mut sqlx::SqliteConnection, sql: &str) {
    sqlx::query(sql).execute(&mut *conn).await.expect(sql);
}

/// `n` hook events of `task` (NULL: a session ccm did not start), `age_days` old.
async fn hook_events(
    conn: &mut sqlx::SqliteConnection,
    task: Option<&str>,
    n: usize,
    age_days: i64,
) {
    let at = now_ms() - age_days * DAY_MS;
    for i in 0..n {
        sqlx::query(
            "INSERT INTO hook_events (key, at, system, task_id, event, kind, via, payload) \
             VALUES (?, ?, 'claude', ?, 'PreToolUse', 'pre_tool', 'api', '{}')",
        )
        .bind(format!("{}-{age_days}-{i}", task.unwrap_or("none")))
        .bind(at + i as i64)
        .bind(task)
        .execute(&mut *conn)
        .await
        .unwrap();
    }
}

fn task_id(home: &TestHome, title: &str) -> String {
    let out = home.run_ok(&["task", "add", title, "--json"]);
    let task: Value = serde_json::from_str(&out).expect("task JSON");
    task["id"].as_str().or(task["task"]["id"].as_str()).expect("task id").to_string()
}

#[tokio::test]
async fn a_retention_pass_removes_what_is_past_its_age_and_keeps_what_open_work_and_aggregates_need(
) {
    let home = TestHome::new("retention");
    let open = task_id(&home, "still open");
    let ended = task_id(&home, "long done");
    home.run_ok(&["task", "cancel", &ended]);
    let db = home.db_file();
    let agent = "0190e6b0-0000-7000-8000-00000000a6e1";
    let agent_dir = home.home().join("agents").join(agent);
    std::fs::create_dir_all(&agent_dir).unwrap();
    std::fs::write(agent_dir.join("output.log"), "{\"type\":\"result\"}\n").unwrap();
    std::fs::write(agent_dir.join("prompt.md"), "do it\n").unwrap();
    {
        let mut conn = open_db(&db).await;
        let old = now_ms() - 100 * DAY_MS;
        // The ended task's history, 100 days old: an agent with its cost, an attempt, a report.
        sqlx::query(
            "INSERT INTO agents (id, task_id, attempt, kind, profile, status, dir, cwd, cost_usd, \
             input_tokens, output_tokens, started_at, last_heartbeat, ended_at) \
             VALUES (?, ?, 1, 'worker', 'claude', 'exited', ?, '/tmp', 0.42, 1000, 200, ?, ?, ?)",
        )
        .bind(agent)
        .bind(&ended)
        .bind(agent_dir.display().to_string())
        .bind(old)
        .bind(old)
        .bind(old + 60_000)
        .execute(&mut conn)
        .await
        .unwrap();
        sqlx::query(
            "INSERT INTO attempts (task_id, number, agent_id, prompt, started_at, ended_at, outcome, \
             last_message) VALUES (?, 1, ?, 'do it', ?, ?, 'success', 'all done')",
        )
        .bind(&ended)
        .bind(agent)
        .bind(old)
        .bind(old + 60_000)
        .execute(&mut conn)
        .await
        .unwrap();
        sqlx::query(
            "INSERT INTO reports (task_id, attempt, summary, created_at) VALUES (?, 1, ?, ?)",
        )
        .bind(&ended)
        .bind(r#"{"work":{"diff_stat":" a.txt | 1 +"},"cost_usd":0.42,"tokens":{"input":1000,"output":200},"tool_calls":3}"#)
        .bind(old)
        .execute(&mut conn)
        .await
        .unwrap();
        exec(&mut conn, &format!("UPDATE tasks SET updated_at = {old} WHERE id = '{ended}'")).await;
        // Hook events: 20 days old of both tasks and of no task, and a day old of the ended one.
        hook_events(&mut conn, Some(&ended), 50, 20).await;
        hook_events(&mut conn, Some(&open), 40, 20).await;
        hook_events(&mut conn, None, 20, 20).await;
        hook_events(&mut conn, Some(&ended), 10, 1).await;
        // Alerts 100 days old: one resolved 95 days ago, one still open; both notified.
        for (id, resolved) in [
            ("0190e6b0-0000-7000-8000-0000000a1e01", Some(old + 5 * DAY_MS)),
            ("0190e6b0-0000-7000-8000-0000000a1e02", None),
        ] {
            sqlx::query(
                "INSERT INTO alerts (id, task_id, severity, reason, message, created_at, resolved_at) \
                 VALUES (?, ?, 'warning', 'stalled', 'it stalled', ?, ?)",
            )
            .bind(id)
            .bind(&ended)
            .bind(old)
            .bind(resolved)
            .execute(&mut conn)
            .await
            .unwrap();
        }
        exec(&mut conn, &format!("UPDATE notifications SET routed_at = {old}")).await;
        exec(
            &mut conn,
            &format!(
                "INSERT INTO notification_sends (notification_id, notifier, dedupe_key, state, \
                 next_at, created_at, sent_at) SELECT id, 'ntfy', source_id, 'sent', {old}, {old}, \
                 {old} FROM notifications"
            ),
        )
        .await;
        // The outbox: 5 rows never sent (old, pending) stay; 30 rows the central acknowledged
        // two days ago go, but the newest, which keeps the sequence going.
        exec(&mut conn, &format!("UPDATE outbox SET created_at = {old}")).await;
        for i in 0..5 {
            sqlx::query(
                "INSERT INTO outbox (stream, entity_key, entity_version, lane, payload, created_at) \
                 VALUES ('alert', ?, ?, 'normal', '{}', ?)",
            )
            .bind(format!("pending-{i}"))
            .bind(900 + i)
            .bind(old)
            .execute(&mut conn)
            .await
            .unwrap();
        }
        let acked = now_ms() - 2 * DAY_MS;
        for i in 0..30 {
            sqlx::query(
                "INSERT INTO outbox (stream, entity_key, entity_version, lane, payload, created_at, state) \
                 VALUES ('alert', ?, ?, 'normal', '{}', ?, 'acked')",
            )
            .bind(format!("acked-{i}"))
            .bind(1000 + i)
            .bind(acked)
            .execute(&mut conn)
            .await
            .unwrap();
        }
    }
    let pending = scalar(&db, "SELECT count(*) FROM outbox WHERE state = 'pending'").await;
    assert!(pending >= 5, "{pending} pending rows");
    let max_seq = scalar(&db, "SELECT max(seq) FROM outbox").await;

    let dry = home.run_json(&["gc", "--db", "--dry-run"]);
    let expected = [
        ("hook_events", 70),
        ("outbox_acked", 29),
        ("alerts_resolved", 1),
        ("notifications", 1),
        ("agent_output", 1),
        ("agent_dirs", 1),
    ];
    for (kind, n) in expected {
        assert_eq!(dry["removed"][kind], n, "dry run, {kind}: {dry}");
    }
    assert_eq!(
        scalar(&db, "SELECT count(*) FROM hook_events").await,
        120,
        "a dry run removes nothing"
    );
    assert!(agent_dir.join("output.log").exists());

    let text = home.run_ok(&["gc", "--db"]);
    assert!(text.contains("removed       70  hook_events"), "{text}");
    assert_eq!(
        scalar(&db, "SELECT count(*) FROM hook_events").await,
        50,
        "the open task's 40 and the 10 young ones"
    );
    assert_eq!(
        scalar(&db, &format!("SELECT count(*) FROM hook_events WHERE task_id = '{open}'")).await,
        40
    );
    assert_eq!(scalar(&db, "SELECT count(*) FROM outbox WHERE state = 'pending'").await, pending);
    assert_eq!(scalar(&db, "SELECT count(*) FROM outbox WHERE state = 'acked'").await, 1);
    assert_eq!(scalar(&db, "SELECT max(seq) FROM outbox").await, max_seq);
    assert_eq!(scalar(&db, "SELECT count(*) FROM alerts").await, 1, "the open alert stays");
    assert_eq!(
        scalar(&db, "SELECT count(*) FROM notifications WHERE source_id = '0190e6b0-0000-7000-8000-0000000a1e02'").await,
        1,
        "and its notification"
    );
    assert_eq!(scalar(&db, "SELECT count(*) FROM notifications").await, 1);
    assert_eq!(scalar(&db, "SELECT count(*) FROM notification_sends").await, 1);
    assert!(!agent_dir.exists(), "the ended task's agent files are gone");

    // The ended task keeps its summary, attempts and cost.
    let show = home.run_ok(&["task", "show", &ended]);
    for wanted in
        ["attempts:", "1  success", "last message: all done", "a.txt | 1 +", "cost $0.4200"]
    {
        assert!(show.contains(wanted), "`{wanted}` in:\n{show}");
    }
    let status = home.run_ok(&["status"]);
    assert!(status.contains("last retention pass"), "{status}");
    assert!(status.contains("hook_events 70"), "{status}");
    // A second pass finds nothing more.
    let again = home.run_json(&["gc", "--db"]);
    assert_eq!(again["removed"]["hook_events"], 0);
}

#[tokio::test]
async fn the_file_shrinks_after_a_pass_that_removed_most_rows() {
    let home = TestHome::new("retention-vacuum");
    task_id(&home, "one task");
    let db = home.db_file();
    {
        let mut conn = open_db(&db).await;
        let mode: i64 =
            sqlx::query_scalar("PRAGMA auto_vacuum").fetch_one(&mut conn).await.unwrap();
        assert_eq!(mode, 2, "a new database is in incremental auto-vacuum mode");
        let payload = "x".repeat(2000);
        let at = now_ms() - 30 * DAY_MS;
        for chunk in 0..20 {
            let mut tx = sqlx::Connection::begin(&mut conn).await.unwrap();
            for i in 0..500 {
                sqlx::query(
                    "INSERT INTO hook_events (key, at, system, event, kind, via, payload) \
                     VALUES (?, ?, 'claude', 'PostToolUse', 'post_tool', 'api', ?)",
                )
                .bind(format!("k{chunk}-{i}"))
                .bind(at)
                .bind(&payload)
                .execute(&mut *tx)
                .await
                .unwrap();
            }
            tx.commit().await.unwrap();
        }
        exec(&mut conn, "PRAGMA wal_checkpoint(TRUNCATE)").await;
    }
    let before = std::fs::metadata(&db).unwrap().len();
    assert!(before > 20_000_000, "10,000 events of 2 KB ({before} bytes)");
    let report = home.run_json(&["gc", "--db"]);
    assert_eq!(report["removed"]["hook_events"], 10_000);
    assert!(report["freed_pages"].as_i64().unwrap() > 4000, "{report}");
    let after = std::fs::metadata(&db).unwrap().len();
    assert!(after < before / 5, "the file shrank from {before} to {after} bytes");
    let check = home.run_ok(&["backup", home.dir.path().join("after.db").to_str().unwrap()]);
    assert!(check.contains("integrity check: ok"));
}

#[tokio::test]
async fn backups_with_keep_leave_the_newest_copies_each_a_valid_database() {
    let home = TestHome::new("retention-backup");
    task_id(&home, "something to copy");
    let dir = home.dir.path().join("backups");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("notes.txt"), "not a backup").unwrap();
    let mut written = Vec::new();
    for _ in 0..5 {
        let out = home.run_ok(&["backup", dir.to_str().unwrap(), "--keep", "3"]);
        let path = out.split(" to ").nth(1).and_then(|s| s.split(" (").next()).unwrap().to_string();
        written.push(path);
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let mut left: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path().display().to_string())
        .filter(|p| p.ends_with(".db"))
        .collect();
    left.sort();
    let mut newest = written[2..].to_vec();
    newest.sort();
    assert_eq!(left, newest, "the three newest copies");
    assert!(dir.join("notes.txt").exists(), "other files are left alone");
    for copy in &left {
        let mut conn = open_db(Path::new(copy)).await;
        let check: String =
            sqlx::query_scalar("PRAGMA integrity_check").fetch_one(&mut conn).await.unwrap();
        assert_eq!(check, "ok", "{copy}");
        let tasks: i64 =
            sqlx::query_scalar("SELECT count(*) FROM tasks").fetch_one(&mut conn).await.unwrap();
        assert_eq!(tasks, 1);
    }
    let refused = home.run(&["backup", dir.to_str().unwrap(), "--keep", "0"]);
    assert!(!refused.status.success());
}

fn git(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("git").arg("-C").arg(dir).args(args).output().expect("git runs");
    assert!(out.status.success(), "git {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Acceptance 8 of issue 23: 30 ended tasks' branches; the dry run lists what would go and
/// keeps every branch with commits its target lacks; `ccm gc` removes exactly those listed.
#[tokio::test]
async fn gc_lists_then_removes_exactly_the_ended_tasks_work_that_loses_nothing() {
    let home = TestHome::new("janitor");
    let repo = home.work().join("repo");
    git_repo(&repo, None);
    home.run_ok(&["context", "add", repo.to_str().unwrap()]);
    let mut ids = Vec::new();
    for i in 0..30 {
        let id = task_id(&home, &format!("task {i}"));
        home.run_ok(&["task", "cancel", &id]);
        ids.push(id);
    }
    let running = task_id(&home, "still running");
    // Branches as the runtime leaves them: 10 merged into main (nothing of theirs is lost),
    // 10 with a commit main lacks, 10 merged with a worktree still there, 5 of which hold an
    // uncommitted change; plus the branch of a task that has not ended and one no task has.
    let worktrees = home.dir.path().join("worktrees");
    for (i, id) in ids.iter().enumerate() {
        let branch = format!("ccm/{}", &id[..8]);
        match i / 10 {
            0 => {
                git(&repo, &["branch", &branch, "main"]);
            }
            1 => {
                let path = worktrees.join(&id[..8]);
                git(
                    &repo,
                    &["worktree", "add", "-q", "-b", &branch, path.to_str().unwrap(), "main"],
                );
                std::fs::write(path.join(format!("f{i}.txt")), "work\n").unwrap();
                git(&path, &["add", "."]);
                git(&path, &["commit", "-q", "-m", &format!("work of {}", &id[..8])]);
                git(&repo, &["worktree", "remove", path.to_str().unwrap()]);
            }
            _ => {
                let path = worktrees.join(&id[..8]);
                git(
                    &repo,
                    &["worktree", "add", "-q", "-b", &branch, path.to_str().unwrap(), "main"],
                );
                if i % 2 == 0 {
                    std::fs::write(path.join("README.md"), "edited, not committed\n").unwrap();
                }
            }
        }
    }
    git(&repo, &["branch", &format!("ccm/{}", &running[..8]), "main"]);
    git(&repo, &["branch", "ccm/0000beef", "main"]);

    let plan = home.run_json(&["gc", "--dry-run"]);
    let items = plan["items"].as_array().expect("items");
    assert_eq!(items.len(), 32, "{plan}");
    let removable: Vec<&str> = items
        .iter()
        .filter(|i| i["verdict"]["action"] == "remove")
        .map(|i| i["branch"].as_str().unwrap())
        .collect();
    assert_eq!(removable.len(), 15, "10 merged, 5 merged with a clean worktree: {plan}");
    for item in items {
        let branch = item["branch"].as_str().unwrap();
        let why = item["verdict"]["why"].as_str().unwrap();
        let ahead: i64 =
            git(&repo, &["rev-list", "--count", &format!("main..{branch}")]).parse().unwrap();
        if ahead > 0 {
            assert_eq!(item["verdict"]["action"], "keep", "{branch} has commits: {item}");
            assert!(why.contains("not merged into main"), "{why}");
        }
    }
    let text = home.run_ok(&["gc", "--dry-run"]);
    assert!(text.contains("would remove 15 of 32 task branches"), "{text}");
    assert!(text.contains("its task is created") || text.contains("its task is queued"), "{text}");
    assert!(text.contains("no task of this node has id 0000beef"), "{text}");
    assert!(text.contains("uncommitted change"), "{text}");
    let before = git(&repo, &["for-each-ref", "--format=%(refname:short)", "refs/heads/ccm/"]);
    assert_eq!(before.lines().count(), 32, "a dry run removes nothing");

    let done = home.run_json(&["gc"]);
    let removed: Vec<&str> = done["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|i| i["verdict"]["action"] == "remove")
        .map(|i| i["branch"].as_str().unwrap())
        .collect();
    assert_eq!(removed, removable, "exactly the listed ones");
    let after = git(&repo, &["for-each-ref", "--format=%(refname:short)", "refs/heads/ccm/"]);
    let left: Vec<&str> = after.lines().collect();
    assert_eq!(left.len(), 17);
    for branch in &removable {
        assert!(!left.contains(branch), "{branch} is gone");
    }
    let listed = git(&repo, &["worktree", "list", "--porcelain"]);
    assert_eq!(listed.matches("worktree ").count(), 1 + 5, "the main checkout and 5 dirty ones");
    let again = home.run_json(&["gc", "--dry-run"]);
    assert!(
        again["items"].as_array().unwrap().iter().all(|i| i["verdict"]["action"] == "keep"),
        "nothing more to remove: {again}"
    );
}

/// The daemon runs the pass every `retention.every` and the scheduled backup, and `/metrics`
/// shows the database and the last pass.
#[tokio::test]
async fn the_daemon_runs_retention_passes_and_backups_and_shows_them_in_metrics() {
    let home = TestHome::new("retention-daemon");
    let backups = home.dir.path().join("backups");
    home.write_config(&format!(
        "retention:\n  every: 1s\n  hook_events: 7d\nbackup:\n  dir: {}\n  keep: 2\n",
        backups.display()
    ));
    home.run_ok(&["status"]);
    {
        let mut conn = open_db(&home.db_file()).await;
        hook_events(&mut conn, None, 30, 8).await;
        hook_events(&mut conn, None, 5, 6).await;
    }
    let daemon = home.start();
    let db = home.db_file();
    let passed = ccm_tests::wait_until(std::time::Duration::from_secs(20), || async {
        scalar(&db, "SELECT count(*) FROM retention_passes").await > 0
    })
    .await;
    assert!(passed, "a pass ran: {}", daemon.log_text());
    assert_eq!(scalar(&db, "SELECT count(*) FROM hook_events").await, 5, "the 8-day-old ones went");
    let backed_up = ccm_tests::wait_until(std::time::Duration::from_secs(20), || async {
        std::fs::read_dir(&backups).map(|d| d.count()).unwrap_or(0) == 1
    })
    .await;
    assert!(backed_up, "a backup was written: {}", daemon.log_text());
    let metrics =
        daemon.http.get(daemon.url("/metrics")).send().await.unwrap().text().await.unwrap();
    for wanted in [
        "ccm_db_bytes ",
        "ccm_db_rows{table=\"hook_events\"} 5",
        "ccm_retention_last_removed{kind=\"hook_events\"} 30",
        "ccm_retention_last_pass_seconds ",
    ] {
        assert!(metrics.contains(wanted), "`{wanted}` in:\n{metrics}");
    }
}

#[test]
fn a_bad_retention_setting_is_refused_naming_the_key_and_the_value() {
    let home = TestHome::new("retention-config");
    for (yaml, wanted) in [
        ("retention:\n  hook_events: 14\n", "`14` has no unit"),
        ("retention:\n  hook_events: 14x\n", "`14x` is not a duration"),
        ("retention:\n  batch_rows: 0\n", "retention.batch_rows"),
        ("backup:\n  keep: 0\n", "backup.keep"),
    ] {
        home.write_config(yaml);
        let out = home.run(&["status"]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{yaml} refused");
        assert!(stderr.contains(wanted), "`{wanted}` in: {stderr}");
    }
    home.write_config("retention:\n  hook_events: never\n  notifications: 12h\n");
    home.run_ok(&["status"]);
}

/// The daemon's janitor removes an ended task's merged branch once `land.keep_days` passed
/// (0 here), and keeps an unmerged one.
#[tokio::test]
async fn the_daemons_janitor_removes_merged_branches_of_ended_tasks_after_keep_days() {
    let home = TestHome::new("janitor-daemon");
    let repo = home.work().join("repo");
    git_repo(&repo, None);
    home.write_config("retention:\n  every: 1s\nland:\n  keep_days: 0\n");
    home.run_ok(&["context", "add", repo.to_str().unwrap()]);
    let merged = task_id(&home, "merged");
    let unmerged = task_id(&home, "unmerged");
    for id in [&merged, &unmerged] {
        home.run_ok(&["task", "cancel", id]);
    }
    git(&repo, &["branch", &format!("ccm/{}", &merged[..8]), "main"]);
    let path = home.dir.path().join(&unmerged[..8]);
    let branch = format!("ccm/{}", &unmerged[..8]);
    git(&repo, &["worktree", "add", "-q", "-b", &branch, path.to_str().unwrap(), "main"]);
    std::fs::write(path.join("new.txt"), "work\n").unwrap();
    git(&path, &["add", "."]);
    git(&path, &["commit", "-q", "-m", "unmerged work"]);
    let daemon = home.start();
    let gone = ccm_tests::wait_until(std::time::Duration::from_secs(20), || async {
        git(&repo, &["branch", "--list", "ccm/*"]).lines().count() == 1
    })
    .await;
    assert!(gone, "the merged branch went: {}", daemon.log_text());
    // The branch is gone before its line is logged, and the other task's line may come later.
    let logged = ccm_tests::wait_until(std::time::Duration::from_secs(20), || async {
        let log = daemon.log_text();
        log.contains("janitor removed") && log.contains("janitor kept")
    })
    .await;
    assert!(logged, "both judgements logged: {}", daemon.log_text());
    assert!(git(&repo, &["branch", "--list", &branch]).contains(&branch), "the unmerged one stays");
    assert!(path.join("new.txt").exists());
}
