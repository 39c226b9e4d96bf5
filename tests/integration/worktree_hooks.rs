//! ccm's hook settings in a task's worktree are ccm's: whatever git command the agent runs,
//! they stay out of its branch, its report and what cleanup sees.

use std::time::Duration;

use ccm_tests::{git_repo, wait_until, TestHome};

const SLOW: Duration = Duration::from_secs(60);
const HOOK_FILES: [&str; 3] =
    [".claude/settings.local.json", ".gemini/settings.json", ".codex/config.toml"];

fn git(dir: &std::path::Path, args: &[&str]) -> String {
    let out = std::process::Command::new("git").arg("-C").arg(dir).args(args).output().unwrap();
    assert!(out.status.success(), "git {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test]
async fn an_agent_that_adds_everything_commits_only_its_own_work() {
    let home = TestHome::new("add-all");
    let agent = home.dir.path().join("add-all.sh");
    std::fs::write(
        &agent,
        "short=$(printf %s \"$CCM_TASK_ID\" | cut -c1-8)\n\
         echo work >> work.txt\n\
         git add -A && git commit -q -m \"[$short] everything\" && echo committed\n",
    )
    .unwrap();
    home.write_config(&format!(
        "runtime:\n  poll_ms: 50\nprofiles:\n  add-all:\n    command: [sh, {}, '{{prompt}}']\n    output: plain\n",
        agent.display()
    ));
    let repo = home.work().join("app");
    git_repo(&repo, None);
    let repo = std::fs::canonicalize(&repo).unwrap();
    home.run_ok(&["context", "add", repo.to_str().unwrap()]);
    let daemon = home.start();
    let id = home.run_json(&[
        "task",
        "add",
        "add everything",
        "--profile",
        "add-all",
        "--repo",
        repo.to_str().unwrap(),
    ])["id"]
        .as_str()
        .unwrap()
        .to_string();
    let short = &id[..8];

    let done = wait_until(SLOW, || async {
        daemon.get(&format!("/api/tasks/{id}")).await.1["state"] == "complete"
    })
    .await;
    let detail = daemon.get(&format!("/api/tasks/{id}")).await.1;
    assert!(done, "{detail:#}\n{}", daemon.log_text());

    let committed = git(&repo, &["ls-tree", "-r", "--name-only", &format!("ccm/{short}")]);
    assert_eq!(committed.lines().collect::<Vec<_>>(), ["README.md", "work.txt"]);
    let work = &detail["reports"][0]["summary"]["work"];
    assert_eq!(work["files_changed"], 1, "{work:#}");
    let stat = work["diff_stat"].as_str().unwrap();
    assert!(HOOK_FILES.iter().all(|f| !stat.contains(f)), "{stat}");

    // Cleanup finds nothing but the unmerged branch: no deletions keep the worktree.
    let alert = wait_until(SLOW, || async {
        home.run_json(&["dump-state"])["alerts"]
            .as_array()
            .unwrap()
            .iter()
            .any(|a| a["reason"] == "work_kept")
    })
    .await;
    assert!(alert, "{}", daemon.log_text());
    let dump = home.run_json(&["dump-state"]);
    let note = dump["alerts"].as_array().unwrap().iter().find(|a| a["reason"] == "work_kept");
    let note = note.unwrap()["message"].as_str().unwrap().to_string();
    assert!(!note.contains("uncommitted"), "{note}");
    assert!(!home.home().join(format!("worktrees/app-{short}")).exists(), "{note}");

    // The main checkout still sees such files as untracked.
    std::fs::create_dir_all(repo.join(".claude")).unwrap();
    std::fs::write(repo.join(HOOK_FILES[0]), "{}").unwrap();
    assert_eq!(git(&repo, &["status", "--porcelain"]).trim(), "?? .claude/");
}
