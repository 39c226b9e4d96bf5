//! `land.mode: pr` (issue 23, acceptance 5): the task's branch pushed to a real bare repository,
//! its pull request opened, checked and merged through the GitHub stand-in
//! (`ccm_tests::standin::github`, GitHub's documented JSON, its merges real git merges in the
//! bare repository), the real daemon and the scripted agent (`tests/fixtures/fake-claude.sh`,
//! mode `commit`: each attempt appends `attempt N` to `work.txt` and commits).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use ccm_tests::standin::github::{Check, GitHub};
use ccm_tests::{git_repo, wait_until, Daemon, TestHome};
use serde_json::Value;

use crate::land::{task, wait_land, wait_state};

const SLOW: Duration = Duration::from_secs(90);
const TOKEN: &str = "ghp_standin0123456789abcdefghijklmnopqrst";

fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/fake-claude.sh")
}

fn git(dir: &Path, args: &[&str]) -> String {
    let out = std::process::Command::new("git").arg("-C").arg(dir).args(args).output().unwrap();
    assert!(out.status.success(), "git {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// A home with the scripted `commit` agent and instant retries; a bare repository `origin.git`
/// (the forge's git data) and a registered clone of it whose `.ccm/config.yaml` lands by pull
/// request through `forge`, plus `extra` lines of `land:`. The GitHub token is in `auth.json`.
struct Setup {
    home: TestHome,
    repo: PathBuf,
    bare: PathBuf,
    forge: GitHub,
}

fn setup(name: &str, extra: &str) -> Setup {
    let home = TestHome::new(name);
    home.write_config(&format!(
        "tasks:\n  retry_base_secs: 0\n  retry_cap_secs: 0\nruntime:\n  poll_ms: 50\nscheduler:\n  slots: 2\n\
         profiles:\n  fake:\n    command: [sh, {}, '{{prompt}}']\n    output: claude\n    env: {{FAKE_MODE: commit}}\n",
        fixture().display()
    ));
    let bare = home.work().join("origin.git");
    git(&home.work(), &["init", "-q", "--bare", "-b", "main", &bare.to_string_lossy()]);
    let repo = home.work().join("app");
    git_repo(&repo, Some(&bare.to_string_lossy()));
    git(&repo, &["push", "-q", "origin", "main"]);
    let forge = GitHub::start(&bare, "octo-org", "app", TOKEN);
    std::fs::create_dir_all(repo.join(".ccm")).unwrap();
    std::fs::write(
        repo.join(".ccm/config.yaml"),
        format!(
            "land:\n  mode: pr\n  api_url: {}\n  repo: octo-org/app\n  poll_secs: 1\n  checks_grace_secs: 0\n{extra}",
            forge.url()
        ),
    )
    .unwrap();
    std::fs::write(repo.join(".git/info/exclude"), ".ccm/\n").unwrap();
    let repo = std::fs::canonicalize(&repo).unwrap();
    home.run_ok(&["context", "add", &repo.to_string_lossy()]);
    Setup { home, repo, bare, forge }
}

impl Setup {
    /// Starts the daemon, and puts the GitHub token where the operator does: `github_token`
    /// in the `auth.json` the daemon made (read at each look at the forge).
    fn start(&self) -> Daemon {
        let daemon = self.home.start();
        let auth_file = self.home.home().join("auth.json");
        let mut auth: Value = serde_json::from_slice(&std::fs::read(&auth_file).unwrap()).unwrap();
        auth["github_token"] = TOKEN.into();
        std::fs::write(&auth_file, serde_json::to_vec_pretty(&auth).unwrap()).unwrap();
        daemon
    }
}

fn add_task(setup: &Setup, title: &str, extra: &[&str]) -> String {
    let repo = setup.repo.to_string_lossy();
    let mut args = vec!["task", "add", title, "--profile", "fake", "--repo", &repo];
    args.extend(extra);
    setup.home.run_json(&args)["id"].as_str().unwrap().to_string()
}

/// The bare repository's branches.
fn remote_branches(bare: &Path) -> String {
    git(bare, &["for-each-ref", "--format=%(refname)", "refs/heads"])
}

#[tokio::test]
async fn pr_mode_opens_a_pull_request_with_the_report_and_merges_it_when_checks_pass() {
    let s = setup("land-pr-merge", "  auto: true\n");
    // The CI runs until the test lets it finish.
    let finished = Arc::new(AtomicBool::new(false));
    let done = finished.clone();
    s.forge.set_checks(move |_, _| {
        let conclusion = done.load(Ordering::SeqCst).then_some("success");
        vec![Check::new("test", conclusion, "All tests passed", "14 passed", "")]
    });
    let base = git(&s.bare, &["rev-parse", "main"]);
    let daemon = s.start();
    let id = add_task(
        &s,
        "Add the work file",
        &["--verify", "grep -c attempt work.txt && echo verified-ok"],
    );
    let short = &id[..8];
    let branch = format!("ccm/{short}");

    // A pull request of the pushed branch is open, and the landing waits for its checks,
    // saying so in `ccm land status`.
    let waiting = wait_until(SLOW, || async {
        s.home.run_ok(&["land", "status"]).contains("waiting for checks on PR #1")
    })
    .await;
    let status = s.home.run_ok(&["land", "status"]);
    assert!(waiting, "{status}\n{}", daemon.log_text());
    assert!(status.contains(short), "{status}");
    assert_eq!(git(&s.bare, &["rev-parse", "main"]), base, "nothing merged before the checks pass");
    let pulls = s.forge.pulls();
    assert_eq!(pulls.len(), 1, "{pulls:#?}");
    let pull = &pulls[0];
    assert_eq!(pull["head"]["ref"], branch.as_str());
    assert_eq!(pull["base"]["ref"], "main");
    assert_eq!(pull["head"]["sha"], git(&s.repo, &["rev-parse", &branch]).as_str());
    assert_eq!(pull["title"], format!("[{short}] Add the work file").as_str());
    // Its body is the task's report: the summary, the verify's output, the cost.
    let body = pull["body"].as_str().unwrap();
    assert!(body.contains("Done: wrote work.txt"), "{body}");
    assert!(body.contains("grep -c attempt work.txt") && body.contains("verified-ok"), "{body}");
    assert!(body.contains("$0.0123"), "{body}");
    let detail = task(&daemon, &id).await;
    assert_eq!(detail["landing"]["pr_number"], 1, "{detail:#}");
    assert_eq!(detail["landing"]["pr_url"], "https://github.com/octo-org/app/pull/1");
    let shown = s.home.run_ok(&["task", "show", short]);
    assert!(shown.contains("pull request #1 https://github.com/octo-org/app/pull/1"), "{shown}");

    // The checks pass: the pull request is merged on the remote, and the task has landed.
    finished.store(true, Ordering::SeqCst);
    wait_land(&daemon, &id, "landed").await;
    let pull = s.forge.pull(1);
    assert_eq!(pull["merged"], true, "{pull:#}");
    let merge = git(&s.bare, &["rev-parse", "main"]);
    assert_eq!(pull["merge_commit_sha"], merge.as_str());
    let subject = git(&s.bare, &["log", "-1", "--format=%s", "main"]);
    assert_eq!(subject, format!("[{short}] Add the work file (#1)"));
    assert_eq!(git(&s.bare, &["rev-parse", "main^1"]), base);
    assert_eq!(git(&s.bare, &["show", "main:work.txt"]), "attempt 1");
    // The merge went in at the head the checks passed on.
    let merges: Vec<_> = s.forge.calls().into_iter().filter(|c| c.method == "PUT").collect();
    assert_eq!(merges.len(), 1, "{merges:?}");
    assert_eq!(merges[0].body["sha"], pull["head"]["sha"]);
    // The checkout followed (a fast-forward in the operator's clean tree); the branch is gone
    // here and on the remote.
    assert_eq!(git(&s.repo, &["rev-parse", "main"]), merge);
    assert!(s.repo.join("work.txt").exists());
    assert_eq!(git(&s.repo, &["branch", "--list", "ccm/*"]), "");
    assert!(!remote_branches(&s.bare).contains(&branch), "{}", remote_branches(&s.bare));
    let list = s.home.run_ok(&["task", "list"]);
    assert!(list.contains("landed"), "{list}");
}

#[tokio::test]
async fn pr_mode_failing_check_run_starts_a_new_attempt_with_the_checks_output() {
    let s = setup("land-pr-fail", "  auto: true\n");
    // The CI fails the first attempt's work and passes once a second attempt fixed it.
    s.forge.set_checks(|bare, sha| {
        let work = git(bare, &["show", &format!("{sha}:work.txt")]);
        if work.contains("attempt 2") {
            vec![Check::new("test", Some("success"), "All tests passed", "14 passed", "")]
        } else {
            vec![
                Check::new("lint", Some("success"), "No lint", "clean", ""),
                Check::new(
                    "test",
                    Some("failure"),
                    "1 test failed",
                    "test_login failed",
                    "assertion failed: expected 200, got 500 (tests/login.rs:42)",
                ),
            ]
        }
    });
    let daemon = s.start();
    let id = add_task(&s, "Fix the login", &[]);
    let detail = wait_land(&daemon, &id, "landed").await;

    // The failing check made a second attempt whose prompt carries the check's output.
    let runs = detail["runs"].as_array().unwrap();
    assert_eq!(runs.len(), 2, "{detail:#}");
    let prompt = runs[1]["prompt"].as_str().unwrap();
    assert!(prompt.contains("checks failed on PR #1: test"), "{prompt}");
    assert!(prompt.contains("1 test failed") && prompt.contains("test_login failed"), "{prompt}");
    assert!(prompt.contains("assertion failed: expected 200, got 500"), "{prompt}");
    assert!(prompt.contains("https://github.com/octo-org/app/pull/1"), "{prompt}");
    assert!(!prompt.contains("No lint"), "only the failing run's output: {prompt}");
    let states: Vec<&str> =
        detail["log"].as_array().unwrap().iter().map(|e| e["to_state"].as_str().unwrap()).collect();
    assert!(states.windows(2).any(|w| w == ["complete", "error"]), "{states:?}");

    // The second attempt's commits went to the same pull request, which was merged.
    let pulls = s.forge.pulls();
    assert_eq!(pulls.len(), 1, "{pulls:#?}");
    assert_eq!(pulls[0]["merged"], true);
    let work = git(&s.bare, &["show", "main:work.txt"]);
    assert_eq!(work, "attempt 1\nattempt 2");
    assert_eq!(detail["landing"]["pr_number"], 1);
}

#[tokio::test]
async fn pr_mode_adopts_the_pull_request_already_open_for_the_branch_after_a_422() {
    let s = setup("land-pr-exists", "  auto: false\n");
    let daemon = s.start();
    let id = add_task(&s, "Already proposed", &[]);
    wait_state(&daemon, &id, "complete").await;
    let branch = format!("ccm/{}", &id[..8]);
    // Someone pushed the branch and opened its pull request by hand.
    git(&s.repo, &["push", "-q", "origin", &branch]);
    let number = s.forge.open_pull(&branch, "main", "Opened by hand", "a person's words");

    s.home.run_ok(&["land", &id[..8]]);
    let detail = wait_land(&daemon, &id, "landed").await;
    assert_eq!(detail["landing"]["pr_number"], number, "{detail:#}");
    // GitHub answered the creation 422 "already exists"; ccm found the open one and merged it.
    let calls = s.forge.calls();
    let created: Vec<_> = calls.iter().filter(|c| c.method == "POST").collect();
    assert_eq!(created.len(), 1, "{calls:?}");
    assert_eq!(created[0].status, 422);
    assert!(
        calls.iter().any(|c| c.method == "GET"
            && c.path.contains("/pulls?")
            && c.path.contains(&format!("octo-org:{branch}"))),
        "{calls:?}"
    );
    let pulls = s.forge.pulls();
    assert_eq!(pulls.len(), 1, "{pulls:#?}");
    assert_eq!(pulls[0]["merged"], true);
    assert_eq!(pulls[0]["title"], "Opened by hand");
    assert_eq!(git(&s.bare, &["show", "main:work.txt"]), "attempt 1");
}

#[tokio::test]
async fn pr_mode_with_decide_puts_failing_checks_to_the_operator() {
    let s = setup("land-pr-decide", "  auto: true\n  on_checks_failed: decide\n");
    s.forge.set_checks(|_, _| {
        vec![Check::new("test", Some("failure"), "2 tests failed", "flaky network", "")]
    });
    let daemon = s.start();
    let id = add_task(&s, "Needs a human", &[]);
    let detail = wait_state(&daemon, &id, "blocked").await;
    assert_eq!(detail["runs"].as_array().unwrap().len(), 1, "no new attempt: {detail:#}");
    assert_eq!(detail["landing"]["state"], "land_failed");
    assert!(
        detail["landing"]["verify_output"].as_str().unwrap().contains("2 tests failed"),
        "{detail:#}"
    );
    let decisions = s.home.run_ok(&["decide"]);
    assert!(decisions.contains(&id[..8]), "{decisions}");
    assert_eq!(s.forge.pull(1)["merged"], false);

    // The operator retries: the fresh attempt is told what the checks said.
    s.home.run_ok(&["decide", &id[..8], "retry"]);
    let started = wait_until(SLOW, || async {
        task(&daemon, &id).await["runs"].as_array().is_some_and(|r| r.len() == 2)
    })
    .await;
    let detail = task(&daemon, &id).await;
    assert!(started, "{detail:#}\n{}", daemon.log_text());
    let prompt = detail["runs"][1]["prompt"].as_str().unwrap();
    assert!(prompt.contains("2 tests failed") && prompt.contains("flaky network"), "{prompt}");
}

#[tokio::test]
async fn pr_mode_changes_requested_review_starts_a_new_attempt_with_the_review() {
    let s = setup("land-pr-review", "  auto: true\n");
    // The CI runs until the test lets it finish.
    let finished = Arc::new(AtomicBool::new(false));
    let done = finished.clone();
    s.forge.set_checks(move |_, _| {
        let conclusion = done.load(Ordering::SeqCst).then_some("success");
        vec![Check::new("test", conclusion, "All tests passed", "14 passed", "")]
    });
    let daemon = s.start();
    let id = add_task(&s, "Rename the helper", &[]);
    let waiting = wait_until(SLOW, || async {
        s.home.run_ok(&["land", "status"]).contains("waiting for checks on PR #1")
    })
    .await;
    assert!(waiting, "{}\n{}", s.home.run_ok(&["land", "status"]), daemon.log_text());
    // A reviewer asks for changes on the pushed head; the CI then passes.
    s.forge.review(1, "alice", "CHANGES_REQUESTED", "Please call it `parse_login`, not `pl`.");
    finished.store(true, Ordering::SeqCst);

    // The review became the next attempt's feedback; that attempt's commits answered it (the
    // request was on an older head), and the pull request merged.
    let detail = wait_land(&daemon, &id, "landed").await;
    let runs = detail["runs"].as_array().unwrap();
    assert_eq!(runs.len(), 2, "{detail:#}");
    let prompt = runs[1]["prompt"].as_str().unwrap();
    assert!(prompt.contains("changes requested on PR #1 by alice"), "{prompt}");
    assert!(prompt.contains("Please call it `parse_login`, not `pl`."), "{prompt}");
    assert_eq!(s.forge.pull(1)["merged"], true);
    assert_eq!(git(&s.bare, &["show", "main:work.txt"]), "attempt 1\nattempt 2");
}

#[tokio::test]
async fn pr_mode_pull_request_merged_by_a_person_marks_the_task_landed() {
    let s = setup("land-pr-by-hand", "  auto: true\n");
    // The CI never finishes; a person merges the pull request anyway.
    s.forge.set_checks(|_, _| vec![Check::new("test", None, "Running", "", "")]);
    let daemon = s.start();
    let id = add_task(&s, "Merged by a person", &[]);
    let waiting = wait_until(SLOW, || async {
        s.home.run_ok(&["land", "status"]).contains("waiting for checks on PR #1 (0 of 1 done")
    })
    .await;
    assert!(waiting, "{}\n{}", s.home.run_ok(&["land", "status"]), daemon.log_text());
    let merged = s.forge.merge_by_hand(1);

    // GitHub answers `merged: true`: the landing takes the forge's merge commit and finishes.
    wait_land(&daemon, &id, "landed").await;
    assert_eq!(git(&s.bare, &["rev-parse", "main"]), merged["sha"].as_str().unwrap());
    assert_eq!(git(&s.repo, &["rev-parse", "main"]), merged["sha"].as_str().unwrap());
    assert!(s.forge.calls().iter().all(|c| c.method != "PUT"), "ccm merged nothing itself");
    let branch = format!("ccm/{}", &id[..8]);
    assert!(!remote_branches(&s.bare).contains(&branch), "{}", remote_branches(&s.bare));
    assert_eq!(git(&s.repo, &["branch", "--list", "ccm/*"]), "");
}

#[tokio::test]
async fn pr_mode_waiting_for_checks_holds_up_no_other_repositorys_landing() {
    let s = setup("land-pr-other", "  auto: true\n");
    s.forge.set_checks(|_, _| vec![Check::new("test", None, "Running", "", "")]);
    // A second repository of the same home lands by rebase, automatically.
    let other = s.home.work().join("other");
    git_repo(&other, None);
    std::fs::create_dir_all(other.join(".ccm")).unwrap();
    std::fs::write(other.join(".ccm/config.yaml"), "land:\n  auto: true\n").unwrap();
    std::fs::write(other.join(".git/info/exclude"), ".ccm/\n").unwrap();
    let other = std::fs::canonicalize(&other).unwrap();
    s.home.run_ok(&["context", "add", &other.to_string_lossy()]);
    let base = git(&other, &["rev-parse", "main"]);
    let daemon = s.start();

    let waiting = add_task(&s, "Waits for its checks", &[]);
    let held = wait_until(SLOW, || async {
        s.home.run_ok(&["land", "status"]).contains("waiting for checks on PR #1")
    })
    .await;
    assert!(held, "{}\n{}", s.home.run_ok(&["land", "status"]), daemon.log_text());
    let other_path = other.to_string_lossy();
    let args = ["task", "add", "Lands meanwhile", "--profile", "fake", "--repo", &other_path];
    let lands = s.home.run_json(&args)["id"].as_str().unwrap().to_string();
    wait_land(&daemon, &lands, "landed").await;
    assert_ne!(git(&other, &["rev-parse", "main"]), base);
    // The pull request still waits, saying why.
    let detail = task(&daemon, &waiting).await;
    assert_eq!(detail["land_state"], "landing", "{detail:#}");
    assert!(
        detail["landing"]["reason"].as_str().unwrap().starts_with("waiting for checks on PR #1"),
        "{detail:#}"
    );
}

#[tokio::test]
async fn pr_mode_pull_request_that_does_not_merge_gives_an_attempt_told_to_merge_the_target() {
    let s = setup("land-pr-conflict", "  auto: false\n");
    let daemon = s.start();
    let id = add_task(&s, "Write the work file", &["--max-attempts", "2"]);
    wait_state(&daemon, &id, "complete").await;
    // Meanwhile someone else's work.txt reached the remote's main.
    let side = s.home.work().join("side");
    git(&s.home.work(), &["clone", "-q", &s.bare.to_string_lossy(), &side.to_string_lossy()]);
    std::fs::write(side.join("work.txt"), "someone else's line\n").unwrap();
    git(&side, &["add", "work.txt"]);
    git(
        &side,
        &["-c", "user.name=x", "-c", "user.email=x@example.com", "commit", "-q", "-m", "other"],
    );
    git(&side, &["push", "-q", "origin", "main"]);
    let moved = git(&s.bare, &["rev-parse", "main"]);

    s.home.run_ok(&["land", &id[..8]]);
    // GitHub says the pull request does not merge: the next attempt is told to merge the
    // target's newest head into its branch (not to rebase: the branch is pushed again).
    let started = wait_until(SLOW, || async {
        task(&daemon, &id).await["runs"].as_array().is_some_and(|r| r.len() == 2)
    })
    .await;
    let detail = task(&daemon, &id).await;
    assert!(started, "{detail:#}\n{}", daemon.log_text());
    let prompt = detail["runs"][1]["prompt"].as_str().unwrap();
    assert!(
        prompt.contains(&format!("PR #1 does not merge with main at {}", &moved[..12])),
        "{prompt}"
    );
    assert!(prompt.contains(&format!("git merge {moved}")), "{prompt}");
    assert!(prompt.contains("do not rebase"), "{prompt}");
    assert_eq!(git(&s.bare, &["rev-parse", "main"]), moved, "the target did not move");
    assert_eq!(s.forge.pull(1)["mergeable"], false);
}

#[tokio::test]
async fn pr_mode_without_a_token_waits_saying_where_to_put_it_then_uses_the_environments() {
    let s = setup("land-pr-env", "");
    // No `land.api_url`: the API comes from GITHUB_API_URL, as on a GitHub Enterprise runner.
    std::fs::write(
        s.repo.join(".ccm/config.yaml"),
        "land:\n  mode: pr\n  auto: true\n  repo: octo-org/app\n  poll_secs: 1\n  checks_grace_secs: 0\n",
    )
    .unwrap();
    let url = s.forge.url();
    let mut daemon = s.home.start_with(|c| {
        c.env_remove("GITHUB_TOKEN").env("GITHUB_API_URL", &url);
    });
    let id = add_task(&s, "Needs a token", &[]);
    let said = wait_until(SLOW, || async {
        s.home.run_ok(&["land", "status"]).contains(
            "no GitHub token: put `github_token` in auth.json or set GITHUB_TOKEN for the daemon",
        )
    })
    .await;
    assert!(said, "{}\n{}", s.home.run_ok(&["land", "status"]), daemon.log_text());
    assert!(s.forge.calls().is_empty());
    daemon.terminate();

    let daemon = s.home.start_with(|c| {
        c.env("GITHUB_TOKEN", TOKEN).env("GITHUB_API_URL", &url);
    });
    wait_land(&daemon, &id, "landed").await;
    assert_eq!(s.forge.pull(1)["merged"], true);
    assert!(!daemon.log_text().contains(TOKEN), "the token is never logged");
}
