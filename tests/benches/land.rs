//! Landing, next to its floor measured in the same run on the same machine.
//!
//! Run with `cargo bench -p ccm-tests --bench land`. Nothing here asserts on time: the bench
//! prints a table and fails only when ccm misbehaves (a task that does not land).
//!
//! - ccm: `LANDINGS` complete tasks (profile `manual`, each with a branch `ccm/<short id>` of one
//!   commit on a file of its own) queued at once with `POST /api/land {"all": true}`, landed one
//!   after another with `mode: rebase`, `verify_after_merge` and the trivial verify `true`, on a
//!   checkout whose `main` is checked out (so each move is a fast-forward in the operator's
//!   tree); the figure is the wall time until the queue is empty, per landing.
//! - floor: a shell loop doing the same git work on an identical repository: for each branch a
//!   detached worktree, `git rebase main`, the verify, `git merge --ff-only` in the checkout,
//!   the worktree removed and the branch deleted.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use ccm_tests::bench::{machine, ms, print_table, Row};
use ccm_tests::{git_repo, wait_until, TestHome};
use serde_json::json;

const LANDINGS: usize = 20;
const RATIO_GOAL: &str = "≤ 1.5×";

fn git(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("git").arg("-C").arg(dir).args(args).output().expect("git runs");
    assert!(out.status.success(), "git {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A branch `ccm/<short>` off `main` with one commit adding `<short>.txt`.
fn branch(repo: &Path, short: &str) {
    git(repo, &["checkout", "-q", "-b", &format!("ccm/{short}"), "main"]);
    std::fs::write(repo.join(format!("{short}.txt")), format!("{short}\n")).unwrap();
    git(repo, &["add", "."]);
    git(repo, &["commit", "-q", "-m", &format!("[{short}] work")]);
    git(repo, &["checkout", "-q", "main"]);
}

fn floor(work: &Path) -> Duration {
    let repo = work.join("floor");
    git_repo(&repo, None);
    let shorts: Vec<String> = (0..LANDINGS).map(|i| format!("{i:08x}")).collect();
    for short in &shorts {
        branch(&repo, short);
    }
    let script = format!(
        r#"set -e
cd {repo}
for b in {branches}; do
    w={work}/floor-wt
    git worktree add -q --detach "$w" "ccm/$b"
    git -C "$w" rebase -q main
    (cd "$w" && true)
    new=$(git -C "$w" rev-parse HEAD)
    git merge -q --ff-only "$new"
    git worktree remove --force "$w"
    git branch -q -D "ccm/$b"
done
"#,
        repo = repo.display(),
        work = work.display(),
        branches = shorts.join(" ")
    );
    let start = Instant::now();
    let status = Command::new("sh").arg("-c").arg(&script).status().expect("sh runs");
    let took = start.elapsed();
    assert!(status.success(), "the floor's script failed");
    assert_eq!(git(&repo, &["rev-list", "--count", "main"]).trim(), (LANDINGS + 1).to_string());
    took
}

#[tokio::main]
async fn main() {
    println!("{}", machine());
    let home = TestHome::new("bench-land");
    home.write_config("scheduler:\n  tick_ms: 20\n");
    let repo = home.work().join("app");
    git_repo(&repo, None);
    std::fs::create_dir_all(repo.join(".ccm")).unwrap();
    std::fs::write(repo.join(".ccm/config.yaml"), "land:\n  mode: rebase\n  verify: 'true'\n")
        .unwrap();
    std::fs::write(repo.join(".git/info/exclude"), ".ccm/\n").unwrap();
    let repo = std::fs::canonicalize(&repo).unwrap();
    let repo_text = repo.to_string_lossy().into_owned();
    home.run_ok(&["context", "add", &repo_text]);
    let daemon = home.start();
    let mut ids = Vec::new();
    for i in 0..LANDINGS {
        let (status, task) = daemon
            .post(
                "/api/tasks",
                json!({ "title": format!("task {i}"), "profile": "manual", "repo": repo_text }),
            )
            .await;
        assert_eq!(status, 201, "{task}");
        ids.push(task["id"].as_str().unwrap().to_string());
    }
    for id in &ids {
        let queued = wait_until(Duration::from_secs(30), || async {
            daemon.get(&format!("/api/tasks/{id}")).await.1["state"] == "queued"
        })
        .await;
        assert!(queued, "{id} was not admitted");
        for event in [
            json!({"event": "start"}),
            json!({"event": "worker_finished"}),
            json!({"event": "verify_passed"}),
            json!({"event": "report_ready", "supervised": false}),
        ] {
            let (status, body) = daemon.post(&format!("/api/tasks/{id}/events"), event).await;
            assert_eq!(status, 200, "{body}");
        }
        branch(&repo, &id[..8]);
    }

    let start = Instant::now();
    let (status, body) = daemon.post("/api/land", json!({ "all": true })).await;
    assert_eq!(status, 200, "{body}");
    let landed = wait_until(Duration::from_secs(300), || async {
        daemon.get("/api/land").await.1.as_array().is_some_and(|q| q.is_empty())
    })
    .await;
    let ccm = start.elapsed();
    assert!(landed, "the queue did not empty\n{}", daemon.log_text());
    assert_eq!(git(&repo, &["rev-list", "--count", "main"]).trim(), (LANDINGS + 1).to_string());
    assert_eq!(git(&repo, &["branch", "--list", "ccm/*"]).trim(), "");

    let work = tempfile::tempdir().unwrap();
    let floor = floor(work.path());
    let per = |d: Duration| d / LANDINGS as u32;
    print_table(&[Row::new(
        &format!("landing, per task ({LANDINGS} in one queue)"),
        ms(per(ccm)),
        format!("{} (shell: worktree, rebase, verify, ff, cleanup)", ms(per(floor))),
        "≤ 1.5× the floor",
    )
    .ratio(per(ccm).as_secs_f64(), per(floor).as_secs_f64(), RATIO_GOAL)]);
}
