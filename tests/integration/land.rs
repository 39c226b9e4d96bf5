//! Landing finished tasks on their target branch (issue 23): real git (a checkout with `main`
//! checked out, real worktrees, merges and rebases), the real daemon and the scripted agent
//! (`tests/fixtures/fake-claude.sh`, mode `edit`: the prompt's first line `edit FILE TEXT`).

use std::path::{Path, PathBuf};
use std::time::Duration;

use ccm_tests::{git_repo, wait_until, Daemon, TestHome};
use serde_json::Value;

const SLOW: Duration = Duration::from_secs(90);

fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/fake-claude.sh")
}

/// A home with the scripted `edit` agent, instant retries and `slots` agent slots, and a
/// registered checkout whose `.ccm/config.yaml` holds `land` (a YAML section body).
fn setup(name: &str, slots: u32, land: &str) -> (TestHome, String) {
    let home = TestHome::new(name);
    home.write_config(&format!(
        "tasks:\n  retry_base_secs: 0\n  retry_cap_secs: 0\nruntime:\n  poll_ms: 50\nscheduler:\n  slots: {slots}\n\
         profiles:\n  fake:\n    command: [sh, {}, '{{prompt}}']\n    output: claude\n    env: {{FAKE_MODE: edit}}\n",
        fixture().display()
    ));
    let repo = home.work().join("app");
    git_repo(&repo, None);
    std::fs::create_dir_all(repo.join(".ccm")).unwrap();
    std::fs::write(repo.join(".ccm/config.yaml"), format!("land:\n{land}")).unwrap();
    // The project's configuration is the operator's, not part of the history under test.
    std::fs::write(repo.join(".git/info/exclude"), ".ccm/\n").unwrap();
    let repo = std::fs::canonicalize(&repo).unwrap().to_string_lossy().into_owned();
    home.run_ok(&["context", "add", &repo]);
    (home, repo)
}

fn add_task(home: &TestHome, repo: &str, prompt: &str, extra: &[&str]) -> String {
    let mut args = vec!["task", "add", prompt, "--profile", "fake", "--repo", repo];
    args.extend(extra);
    home.run_json(&args)["id"].as_str().unwrap().to_string()
}

pub(crate) async fn task(daemon: &Daemon, id: &str) -> Value {
    daemon.get(&format!("/api/tasks/{id}")).await.1
}

/// Waits until the task's land state is `state`, failing with its detail and the daemon's log.
pub(crate) async fn wait_land(daemon: &Daemon, id: &str, state: &str) -> Value {
    let reached =
        wait_until(SLOW, || async { task(daemon, id).await["land_state"] == state }).await;
    let detail = task(daemon, id).await;
    assert!(reached, "task never reached land state {state}: {detail:#}\n{}", daemon.log_text());
    detail
}

pub(crate) async fn wait_state(daemon: &Daemon, id: &str, state: &str) -> Value {
    let reached = wait_until(SLOW, || async { task(daemon, id).await["state"] == state }).await;
    let detail = task(daemon, id).await;
    assert!(reached, "task never reached {state}: {detail:#}\n{}", daemon.log_text());
    detail
}

fn git(repo: &str, args: &[&str]) -> String {
    let out = std::process::Command::new("git").arg("-C").arg(repo).args(args).output().unwrap();
    assert!(out.status.success(), "git {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test]
async fn ten_disjoint_tasks_land_one_after_another_with_auto_each_verified_merged() {
    let work = tempfile::tempdir().unwrap();
    let verify_log = work.path().join("verify.log");
    let verify = format!(
        "  auto: true\n  verify: 'echo \"$(git rev-parse HEAD) $(ls f*.txt | wc -l)\" >> {}'\n",
        verify_log.display()
    );
    let (home, repo) = setup("land-ten", 4, &verify);
    let daemon = home.start();
    let base = git(&repo, &["rev-parse", "main"]).trim().to_string();
    let ids: Vec<String> =
        (0..10).map(|i| add_task(&home, &repo, &format!("edit f{i}.txt line {i}"), &[])).collect();
    for id in &ids {
        wait_land(&daemon, id, "landed").await;
    }

    // Ten commits on main since the base, each subject carrying its task's short id.
    let subjects = git(&repo, &["log", "--format=%s", &format!("{base}..main")]);
    let subjects: Vec<&str> = subjects.lines().collect();
    assert_eq!(subjects.len(), 10, "{subjects:?}");
    for id in &ids {
        let short = &id[..8];
        assert_eq!(
            subjects.iter().filter(|s| s.starts_with(&format!("[{short}]"))).count(),
            1,
            "{short} in {subjects:?}"
        );
    }
    // Linear: every commit has one parent. The operator's tree followed (fast-forwards there).
    assert_eq!(git(&repo, &["rev-list", "--merges", &format!("{base}..main")]).trim(), "");
    assert_eq!(git(&repo, &["status", "--porcelain", "--untracked-files=no"]).trim(), "");
    for i in 0..10 {
        assert!(Path::new(&repo).join(format!("f{i}.txt")).exists(), "f{i}.txt");
    }
    // Every branch and worktree is gone.
    assert_eq!(git(&repo, &["branch", "--list", "ccm/*"]).trim(), "");
    let worktrees = git(&repo, &["worktree", "list"]);
    assert_eq!(worktrees.lines().count(), 1, "{worktrees}");
    let wait_gone = wait_until(SLOW, || async {
        std::fs::read_dir(home.home().join("worktrees")).map_or(true, |d| d.count() == 0)
    })
    .await;
    assert!(
        wait_gone,
        "{:?}",
        std::fs::read_dir(home.home().join("worktrees")).unwrap().collect::<Vec<_>>()
    );
    // The verify ran on each merged result: ten runs, each on the commit main then moved to,
    // with one more task file each time.
    let log = std::fs::read_to_string(&verify_log).unwrap();
    let runs: Vec<(&str, usize)> = log
        .lines()
        .map(|l| {
            let (sha, count) = l.split_once(' ').unwrap();
            (sha, count.trim().parse().unwrap())
        })
        .collect();
    assert_eq!(runs.len(), 10, "{log}");
    let history = git(&repo, &["rev-list", "--reverse", &format!("{base}..main")]);
    let history: Vec<&str> = history.lines().collect();
    for (n, (sha, count)) in runs.iter().enumerate() {
        assert_eq!(*sha, history[n], "run {n} verified the commit main moved to: {log}");
        assert_eq!(*count, n + 1, "{log}");
    }
    // `ccm task list` and `ccm land status` say so.
    let list = home.run_ok(&["task", "list"]);
    assert_eq!(list.matches("landed").count(), 10, "{list}");
    assert!(home.run_ok(&["land", "status"]).contains("no task waits to land"));
}

#[tokio::test]
async fn semantic_conflict_is_refused_target_stays_and_the_task_gets_the_failing_output() {
    let (home, repo) = setup("land-semantic", 2, "  auto: false\n");
    let daemon = home.start();
    let verify = "if [ -f a.txt ] && [ -f b.txt ]; then echo 'clash: a.txt and b.txt cannot both exist'; exit 1; fi";
    let a = add_task(&home, &repo, "edit a.txt from a", &["--verify", verify]);
    let b =
        add_task(&home, &repo, "edit b.txt from b", &["--verify", verify, "--max-attempts", "2"]);
    // Each passes its verify alone.
    wait_state(&daemon, &a, "complete").await;
    wait_state(&daemon, &b, "complete").await;
    let plan = home.run_ok(&["land", "--plan", "--repo", &repo]);
    assert!(plan.contains(&a[..8]) && plan.contains(&b[..8]), "{plan}");

    home.run_ok(&["land", &a[..8], &b[..8]]);
    wait_land(&daemon, &a, "landed").await;
    let landed = git(&repo, &["rev-parse", "main"]).trim().to_string();
    let detail = wait_land(&daemon, &b, "land_failed").await;

    // The target did not move for the second task.
    assert_eq!(git(&repo, &["rev-parse", "main"]).trim(), landed);
    assert!(!Path::new(&repo).join("b.txt").exists());
    let landing = &detail["landing"];
    assert_eq!(landing["old_head"], landed.as_str());
    assert!(landing["verify_output"].as_str().unwrap().contains("clash"), "{landing}");
    // Its next attempt carries the failing output and the newest head of the target.
    let started = wait_until(SLOW, || async {
        task(&daemon, &b).await["runs"].as_array().is_some_and(|r| r.len() == 2)
    })
    .await;
    let detail = task(&daemon, &b).await;
    assert!(started, "{detail:#}\n{}", daemon.log_text());
    let prompt = detail["runs"][1]["prompt"].as_str().unwrap();
    assert!(prompt.contains("clash: a.txt and b.txt cannot both exist"), "{prompt}");
    assert!(prompt.contains(&format!("git rebase {landed}")), "{prompt}");
    let shown = home.run_ok(&["task", "show", &b[..8]]);
    assert!(shown.contains("landing   land_failed on main"), "{shown}");
}

#[tokio::test]
async fn conflicting_second_task_gets_an_attempt_with_the_conflict_resolves_it_and_lands() {
    let (home, repo) = setup("land-conflict", 2, "  auto: false\n  mode: rebase\n");
    let daemon = home.start();
    let a = add_task(&home, &repo, "edit shared.txt written by a", &[]);
    let b = add_task(&home, &repo, "edit shared.txt written by b", &[]);
    wait_state(&daemon, &a, "complete").await;
    wait_state(&daemon, &b, "complete").await;

    home.run_ok(&["land", "--all", "--repo", &repo]);
    wait_land(&daemon, &a, "landed").await;
    let first = git(&repo, &["rev-parse", "main"]).trim().to_string();
    // The second conflicts, gets an attempt with the conflict in its prompt, rebases and
    // resolves it (the scripted agent keeps both lines), completes again and lands.
    let detail = wait_land(&daemon, &b, "landed").await;
    let runs = detail["runs"].as_array().unwrap();
    assert_eq!(runs.len(), 2, "{detail:#}");
    let prompt = runs[1]["prompt"].as_str().unwrap();
    assert!(prompt.contains("Conflicting files: shared.txt"), "{prompt}");
    assert!(prompt.contains("<<<<<<<") && prompt.contains(">>>>>>>"), "{prompt}");
    assert!(prompt.contains(&format!("git rebase {first}")), "{prompt}");
    let states: Vec<&str> =
        detail["log"].as_array().unwrap().iter().map(|e| e["to_state"].as_str().unwrap()).collect();
    assert!(states.windows(2).any(|w| w == ["complete", "error"]), "{states:?}");

    let shared = std::fs::read_to_string(Path::new(&repo).join("shared.txt")).unwrap();
    assert_eq!(shared, "written by a\nwritten by b\n");
    let subjects = git(&repo, &["log", "--format=%s", "-2", "main"]);
    assert!(subjects.lines().next().unwrap().starts_with(&format!("[{}]", &b[..8])), "{subjects}");
    assert!(subjects.lines().nth(1).unwrap().starts_with(&format!("[{}]", &a[..8])), "{subjects}");
    assert_eq!(git(&repo, &["branch", "--list", "ccm/*"]).trim(), "");
}

/// A `reference-transaction` hook in the checkout that holds git while a marker file exists:
/// `hold-main` right after `refs/heads/main` moved (committed), `hold-delete` before a task
/// branch is deleted (prepared). Each says where it holds by touching `at-<marker>`.
fn install_holds(repo: &str, marks: &Path) {
    let hook = Path::new(repo).join(".git/hooks/reference-transaction");
    let m = marks.display();
    std::fs::write(
        &hook,
        format!(
            r#"#!/bin/sh
zero=0000000000000000000000000000000000000000
while read old new ref; do
    case "$1:$ref:$new" in
    committed:refs/heads/main:*) mark=hold-main ;;
    prepared:refs/heads/ccm/*:$zero) mark=hold-delete ;;
    *) continue ;;
    esac
    if [ -f {m}/$mark ]; then
        touch {m}/at-$mark
        while [ -f {m}/$mark ]; do sleep 0.05; done
    fi
done
exit 0
"#
        ),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&hook, std::fs::Permissions::from_mode(0o755)).unwrap();
}

/// How often `main` moved (its reflog's entries).
fn moves_of_main(repo: &str) -> usize {
    git(repo, &["reflog", "show", "--format=%H", "refs/heads/main"]).lines().count()
}

async fn wait_file(path: &Path, daemon: &Daemon) {
    let there = wait_until(SLOW, || async { path.exists() }).await;
    assert!(there, "{} never appeared\n{}", path.display(), daemon.log_text());
}

#[tokio::test]
async fn landing_killed_at_each_step_moves_the_target_once_and_finishes_once_after_restart() {
    let marks = tempfile::tempdir().unwrap();
    let m = marks.path();
    let verify = format!(
        "  auto: true\n  verify: 'if [ -f {m}/hold-verify ]; then touch {m}/at-hold-verify; while [ -f {m}/hold-verify ]; do sleep 0.05; done; fi'\n",
        m = m.display()
    );
    let (home, repo) = setup("land-kill9", 1, &verify);
    install_holds(&repo, m);
    let moves = moves_of_main(&repo);
    let base = git(&repo, &["rev-parse", "main"]).trim().to_string();

    // 1. Killed after the merge, during its verify, before the target moves.
    std::fs::write(m.join("hold-verify"), "").unwrap();
    let mut daemon = home.start();
    let one = add_task(&home, &repo, "edit one.txt 1", &[]);
    wait_file(&m.join("at-hold-verify"), &daemon).await;
    daemon.kill9();
    assert_eq!(git(&repo, &["rev-parse", "main"]).trim(), base, "the target is untouched");
    std::fs::remove_file(m.join("hold-verify")).unwrap();
    let mut daemon = home.start();
    wait_land(&daemon, &one, "landed").await;
    assert_eq!(moves_of_main(&repo), moves + 1);

    // 2. Killed after the target moved, before the landing recorded it.
    std::fs::write(m.join("hold-main"), "").unwrap();
    let two = add_task(&home, &repo, "edit two.txt 2", &[]);
    wait_file(&m.join("at-hold-main"), &daemon).await;
    daemon.kill9();
    std::fs::remove_file(m.join("hold-main")).unwrap();
    let moved = wait_until(SLOW, || async { moves_of_main(&repo) == moves + 2 }).await;
    assert!(moved, "git finished the move it held");
    let mut daemon = home.start();
    wait_land(&daemon, &two, "landed").await;
    assert_eq!(moves_of_main(&repo), moves + 2, "moved exactly once");

    // 3. Killed after the target moved and was recorded, before the branch is deleted.
    std::fs::write(m.join("hold-delete"), "").unwrap();
    let three = add_task(&home, &repo, "edit three.txt 3", &[]);
    wait_file(&m.join("at-hold-delete"), &daemon).await;
    assert_eq!(task(&daemon, &three).await["land_state"], "moved");
    daemon.kill9();
    std::fs::remove_file(m.join("hold-delete")).unwrap();
    let daemon = home.start();
    let detail = wait_land(&daemon, &three, "landed").await;
    assert_eq!(moves_of_main(&repo), moves + 3, "moved exactly once");

    // Each landed once: one `landed` record each, the three commits in order, no branch left.
    for id in [&one, &two, &three] {
        let landing = task(&daemon, id).await["landing"].clone();
        assert_eq!(landing["state"], "landed", "{landing}");
    }
    assert_eq!(detail["landing"]["restarts"], 0);
    let subjects = git(&repo, &["log", "--format=%s", &format!("{base}..main")]);
    let expected: Vec<String> =
        [&three, &two, &one].iter().map(|id| format!("[{}]", &id[..8])).collect();
    let got: Vec<&str> = subjects.lines().map(|s| s.split(' ').next().unwrap()).collect();
    assert_eq!(got, expected);
    assert_eq!(git(&repo, &["branch", "--list", "ccm/*"]).trim(), "");
}

/// Gives a fleet node's checkout the landing policy `land` and excludes `.ccm/` from git.
fn land_policy(node: &ccm_tests::fleet::Node, land: &str) -> String {
    let clone = std::fs::canonicalize(node.home.work().join("app")).unwrap();
    std::fs::create_dir_all(clone.join(".ccm")).unwrap();
    std::fs::write(clone.join(".ccm/config.yaml"), format!("land:\n{land}")).unwrap();
    std::fs::write(clone.join(".git/info/exclude"), ".ccm/\n").unwrap();
    clone.to_string_lossy().into_owned()
}

#[tokio::test]
async fn two_systems_land_on_one_remote_one_at_a_time_through_the_central_lease() {
    use ccm_tests::fleet::Fleet;
    let fleet = Fleet::start();
    let alpha = fleet.node(1, "alpha", true, "edit");
    let beta = fleet.node(2, "beta", true, "edit");
    // A verify that takes a while, so that two landings without a lease would overlap.
    let land = "  auto: true\n  push: true\n  verify: 'sleep 2'\n";
    let alpha_repo = land_policy(&alpha, land);
    let beta_repo = land_policy(&beta, land);
    let (alpha, beta) = (alpha.up(), beta.up());
    let a = alpha.add(&["edit alpha.txt from alpha", "--repo", &alpha_repo]);
    let b = beta.add(&["edit beta.txt from beta", "--repo", &beta_repo]);
    let a_detail = wait_land(alpha.daemon(), &a, "landed").await;
    let b_detail = wait_land(beta.daemon(), &b, "landed").await;

    // The remote's main has both commits, one after the other.
    let bare = fleet.dir.path().join("app.git").to_string_lossy().into_owned();
    let subjects = git(&bare, &["log", "--format=%s", "main"]);
    let subjects: Vec<&str> = subjects.lines().collect();
    assert_eq!(subjects.len(), 3, "{subjects:?}");
    let mut firsts: Vec<String> =
        subjects[..2].iter().map(|s| s.split(' ').next().unwrap().to_string()).collect();
    firsts.sort();
    let mut expected = vec![format!("[{}]", &a[..8]), format!("[{}]", &b[..8])];
    expected.sort();
    assert_eq!(firsts, expected);
    assert_eq!(git(&bare, &["rev-list", "--merges", "main"]).trim(), "");
    // One landing at a time: the two landings' spans do not overlap, and the second started
    // from the first's result (no restart was needed).
    let span = |d: &Value| {
        let at = |k: &str| d["landing"][k].as_str().unwrap().to_string();
        (at("started_at"), at("landed_at"))
    };
    let (a_span, b_span) = (span(&a_detail), span(&b_detail));
    let (first, second) = if a_span.0 < b_span.0 { (&a_span, &b_span) } else { (&b_span, &a_span) };
    assert!(first.1 <= second.0, "landings overlapped: {a_span:?} {b_span:?}");
    assert_eq!(a_detail["landing"]["restarts"], 0, "{a_detail:#}");
    assert_eq!(b_detail["landing"]["restarts"], 0, "{b_detail:#}");

    // The central shows where each landing is: both landed, each on the system that landed it.
    let central_land = || {
        fleet.central.pg.query(&format!(
            "select string_agg(system_name || ' ' || coalesce(land_state::text, '-'), ', ' \
             order by system_name) from api.fleet_tasks where task_id in ('{a}', '{b}')"
        ))
    };
    let shown = wait_until(Duration::from_secs(20), || async {
        alpha.home.run_ok(&["sync", "now"]);
        beta.home.run_ok(&["sync", "now"]);
        central_land() == "alpha landed, beta landed"
    })
    .await;
    assert!(shown, "the central shows: {}", central_land());
}

#[tokio::test]
async fn landing_waits_for_a_dirty_operator_tree_saying_why_and_lands_once_it_is_clean() {
    let (home, repo) = setup("land-dirty", 1, "  auto: true\n");
    // The operator is editing a tracked file of the checkout, where `main` is checked out.
    std::fs::write(Path::new(&repo).join("README.md"), "operator's edit\n").unwrap();
    let base = git(&repo, &["rev-parse", "main"]).trim().to_string();
    let daemon = home.start();
    let id = add_task(&home, &repo, "edit new.txt from the agent", &[]);
    let waiting = wait_until(SLOW, || async {
        home.run_ok(&["land", "status"]).contains("which has uncommitted changes (README.md)")
    })
    .await;
    let status = home.run_ok(&["land", "status"]);
    assert!(waiting, "{status}\n{}", daemon.log_text());
    assert!(status.contains(&id[..8]) && status.contains("landing"), "{status}");
    // Nothing of the operator's was touched: the edit is there, main has not moved.
    assert_eq!(git(&repo, &["rev-parse", "main"]).trim(), base);
    assert_eq!(
        std::fs::read_to_string(Path::new(&repo).join("README.md")).unwrap(),
        "operator's edit\n"
    );
    assert_eq!(task(&daemon, &id).await["land_state"], "merged");

    git(&repo, &["checkout", "--", "README.md"]);
    wait_land(&daemon, &id, "landed").await;
    assert!(Path::new(&repo).join("new.txt").exists());
    assert_ne!(git(&repo, &["rev-parse", "main"]).trim(), base);
}

#[tokio::test]
async fn after_without_stack_waits_for_the_base_to_land_when_the_repository_lands() {
    let (home, repo) = setup("land-after", 3, "  auto: false\n");
    // A second checkout without a `land:` section: there `--after` waits for complete only.
    let plain = home.work().join("plain");
    git_repo(&plain, None);
    let plain = std::fs::canonicalize(&plain).unwrap().to_string_lossy().into_owned();
    home.run_ok(&["context", "add", &plain]);
    let daemon = home.start();
    let a = add_task(&home, &repo, "edit a.txt from a", &[]);
    // B starts only from a main that has A's work.
    let b = add_task(
        &home,
        &repo,
        "edit b.txt from b",
        &["--after", &a[..8], "--verify", "test -f a.txt"],
    );
    let c = add_task(&home, &plain, "edit c.txt from c", &[]);
    let d = add_task(&home, &plain, "edit d.txt from d", &["--after", &c[..8]]);
    wait_state(&daemon, &a, "complete").await;
    // Without a landing policy, complete is enough.
    wait_state(&daemon, &d, "complete").await;
    assert!(task(&daemon, &c).await["land_state"].is_null());
    // With one, complete is not enough: A has not landed.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(task(&daemon, &b).await["state"], "created");

    home.run_ok(&["land", &a[..8]]);
    wait_land(&daemon, &a, "landed").await;
    let detail = wait_state(&daemon, &b, "complete").await;
    assert_eq!(detail["attempts"], 1, "{detail:#}");
    assert!(detail["stack"].is_null(), "{detail:#}");
    home.run_ok(&["land", &b[..8]]);
    wait_land(&daemon, &b, "landed").await;
    let subjects = git(&repo, &["log", "--format=%s", "-2", "main"]);
    assert!(subjects.starts_with(&format!("[{}]", &b[..8])), "{subjects}");
}

#[tokio::test]
async fn stacked_task_starts_from_its_bases_branch_before_it_lands_and_lands_after_it_with_linear_history(
) {
    let (home, repo) = setup("land-stack", 2, "  auto: false\n  mode: rebase\n");
    let daemon = home.start();
    let base = git(&repo, &["rev-parse", "main"]).trim().to_string();
    let a = add_task(&home, &repo, "edit a.txt from a", &[]);
    // B's verify passes only where A's change is.
    let b = add_task(
        &home,
        &repo,
        "edit b.txt from b",
        &["--after", &a[..8], "--stack", "--verify", "grep -q 'from a' a.txt"],
    );
    wait_state(&daemon, &a, "complete").await;
    let detail = wait_state(&daemon, &b, "complete").await;
    assert_eq!(detail["attempts"], 1, "{detail:#}");

    // A has not landed; B's branch has A's commit below its own.
    assert!(task(&daemon, &a).await["land_state"].is_null());
    assert_eq!(git(&repo, &["rev-parse", "main"]).trim(), base);
    let (a_branch, b_branch) = (format!("ccm/{}", &a[..8]), format!("ccm/{}", &b[..8]));
    assert_eq!(git(&repo, &["show", &format!("{b_branch}:a.txt")]), "from a\n");
    let a_tip = git(&repo, &["rev-parse", &a_branch]).trim().to_string();
    assert_eq!(git(&repo, &["rev-parse", &format!("{b_branch}^")]).trim(), a_tip);
    assert_eq!(detail["stack"]["base_task"], a.as_str(), "{detail:#}");
    assert_eq!(detail["stack"]["fork_commit"], a_tip.as_str(), "{detail:#}");
    let shown = home.run_ok(&["task", "show", &b[..8]]);
    assert!(
        shown.contains(&format!("stacked   on {}: starts from its branch {a_branch}", &a[..8])),
        "{shown}"
    );
    // The plan lands A first.
    let plan = home.run_json(&["land", "--plan", "--repo", &repo]);
    let planned: Vec<&str> =
        plan.as_array().unwrap().iter().map(|p| p["task_id"].as_str().unwrap()).collect();
    assert_eq!(planned, [a.as_str(), b.as_str()], "{plan:#}");

    // Queued alone, B waits for A without moving anything.
    home.run_ok(&["land", &b[..8]]);
    let waits = format!("task {}, its stack base, to land", &a[..8]);
    let waiting =
        wait_until(SLOW, || async { home.run_ok(&["land", "status"]).contains(&waits) }).await;
    let status = home.run_ok(&["land", "status"]);
    assert!(waiting, "{status}\n{}", daemon.log_text());
    assert_eq!(git(&repo, &["rev-parse", "main"]).trim(), base);
    assert_eq!(task(&daemon, &b).await["land_state"], "land_queued");

    home.run_ok(&["land", "--all", "--repo", &repo]);
    let a_landed = wait_land(&daemon, &a, "landed").await;
    let b_landed = wait_land(&daemon, &b, "landed").await;
    assert!(
        a_landed["landing"]["landed_at"].as_str() <= b_landed["landing"]["started_at"].as_str(),
        "{a_landed:#}\n{b_landed:#}"
    );
    assert_eq!(b_landed["runs"].as_array().unwrap().len(), 1, "{b_landed:#}");

    // Linear: A's commit, then B's, and nothing else.
    let subjects = git(&repo, &["log", "--format=%s", &format!("{base}..main")]);
    assert_eq!(
        subjects.lines().collect::<Vec<_>>(),
        [format!("[{}] edit b.txt", &b[..8]), format!("[{}] edit a.txt", &a[..8])],
    );
    assert_eq!(
        git(&repo, &["log", "--merges", "--format=%H", &format!("{base}..main")]).trim(),
        ""
    );
    assert!(Path::new(&repo).join("a.txt").exists() && Path::new(&repo).join("b.txt").exists());
    assert_eq!(git(&repo, &["branch", "--list", "ccm/*"]).trim(), "");
}

#[tokio::test]
async fn a_stacked_task_whose_base_got_a_new_attempt_lands_only_its_own_commits() {
    let (home, repo) = setup("land-stack-redo", 3, "  auto: false\n  mode: rebase\n");
    let daemon = home.start();
    let base = git(&repo, &["rev-parse", "main"]).trim().to_string();
    // X and A both write shared.txt: A's landing after X's conflicts.
    let x = add_task(&home, &repo, "edit shared.txt written by x", &[]);
    let a = add_task(&home, &repo, "edit shared.txt written by a", &[]);
    wait_state(&daemon, &x, "complete").await;
    wait_state(&daemon, &a, "complete").await;
    // B stacks on A's first version.
    let b = add_task(&home, &repo, "edit b.txt from b", &["--after", &a[..8], "--stack"]);
    wait_state(&daemon, &b, "complete").await;
    let b_branch = format!("ccm/{}", &b[..8]);
    assert_eq!(git(&repo, &["show", &format!("{b_branch}:shared.txt")]), "written by a\n");

    home.run_ok(&["land", &x[..8]]);
    wait_land(&daemon, &x, "landed").await;
    // A conflicts, gets a new attempt that rebases it onto X (its branch changes), and lands
    // again once complete; B, queued meanwhile, waits for it.
    home.run_ok(&["land", &a[..8], &b[..8]]);
    let a_detail = wait_land(&daemon, &a, "landed").await;
    assert_eq!(a_detail["runs"].as_array().unwrap().len(), 2, "{a_detail:#}");
    let b_detail = wait_land(&daemon, &b, "landed").await;

    // B landed at its first attempt: its branch's old version of A was left out, so nothing
    // conflicted, and only B's own commit landed on top of A's new one.
    assert_eq!(b_detail["runs"].as_array().unwrap().len(), 1, "{b_detail:#}");
    let subjects = git(&repo, &["log", "--format=%s", &format!("{base}..main")]);
    let firsts: Vec<&str> = subjects.lines().map(|s| s.split(' ').next().unwrap()).collect();
    assert_eq!(
        firsts,
        [format!("[{}]", &b[..8]), format!("[{}]", &a[..8]), format!("[{}]", &x[..8])],
        "{subjects}"
    );
    assert_eq!(
        git(&repo, &["log", "--merges", "--format=%H", &format!("{base}..main")]).trim(),
        ""
    );
    let shared = std::fs::read_to_string(Path::new(&repo).join("shared.txt")).unwrap();
    assert_eq!(shared, "written by x\nwritten by a\n");
    assert!(Path::new(&repo).join("b.txt").exists());
}

#[tokio::test]
async fn a_rebased_commit_without_the_task_id_lands_with_it_in_its_subject() {
    let (home, repo) = setup("land-subjects", 1, "  auto: false\n");
    let daemon = home.start();
    let base = git(&repo, &["rev-parse", "main"]).trim().to_string();
    let id = add_task(&home, &repo, "edit one.txt from the agent", &[]);
    wait_state(&daemon, &id, "complete").await;
    let cleaned =
        wait_until(SLOW, || async { task(&daemon, &id).await["worktree"].is_null() }).await;
    assert!(cleaned, "the task's worktree was not cleaned up");
    // A second commit on the task's branch whose subject lacks the id.
    let extra = tempfile::tempdir().unwrap();
    let extra = extra.path().join("wt");
    let extra = extra.to_string_lossy();
    git(&repo, &["worktree", "add", "-q", &extra, &format!("ccm/{}", &id[..8])]);
    std::fs::write(Path::new(&*extra).join("two.txt"), "two\n").unwrap();
    git(&extra, &["add", "two.txt"]);
    git(&extra, &["commit", "-q", "-m", "a commit without the id"]);
    git(&repo, &["worktree", "remove", &extra]);

    home.run_ok(&["land", &id[..8]]);
    wait_land(&daemon, &id, "landed").await;
    let subjects = git(&repo, &["log", "--format=%s", &format!("{base}..main")]);
    assert_eq!(
        subjects.lines().collect::<Vec<_>>(),
        [format!("[{}] a commit without the id", &id[..8]), format!("[{}] edit one.txt", &id[..8])],
    );
}

#[tokio::test]
async fn a_discarded_task_leaves_the_land_plan_and_gc_removes_its_unlanded_branch() {
    let (home, repo) = setup("land-discard", 2, "  auto: false\n");
    let daemon = home.start();
    let kept = add_task(&home, &repo, "edit kept.txt kept", &[]);
    let dropped = add_task(&home, &repo, "edit dropped.txt dropped", &[]);
    wait_state(&daemon, &kept, "complete").await;
    wait_state(&daemon, &dropped, "complete").await;
    let plan = home.run_json(&["land", "--plan", "--repo", &repo]);
    assert_eq!(plan.as_array().unwrap().len(), 2, "{plan:#}");

    // An unfinished task is refused, naming its state.
    let waiting = add_task(&home, &repo, "edit later.txt later", &["--after", &kept]);
    let refused = home.run(&["task", "discard", &waiting]);
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success(), "{stderr}");
    assert!(stderr.contains("is created") && stderr.contains("cancel it first"), "{stderr}");

    let said = home.run_ok(&["task", "discard", &dropped, "--reason", "wrong approach"]);
    assert!(said.contains(&format!("task {} discarded", &dropped[..8])), "{said}");
    let shown = home.run_ok(&["task", "show", &dropped]);
    assert!(shown.contains("discarded") && shown.contains("wrong approach"), "{shown}");
    assert_eq!(task(&daemon, &dropped).await["discarded"]["reason"], "wrong approach");
    // It leaves the plan, and landing it is refused.
    let plan = home.run_json(&["land", "--plan", "--repo", &repo]);
    let planned: Vec<&str> =
        plan.as_array().unwrap().iter().map(|p| p["task_id"].as_str().unwrap()).collect();
    assert_eq!(planned, [kept.as_str()], "{plan:#}");
    let refused = home.run(&["land", &dropped]);
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(stderr.contains("was discarded"), "{stderr}");

    // The janitor removes the discarded branch although main lacks its commit, and keeps the
    // other finished task's unlanded one.
    let dropped_branch = format!("ccm/{}", &dropped[..8]);
    let kept_branch = format!("ccm/{}", &kept[..8]);
    assert_ne!(
        git(&repo, &["rev-list", "--count", &format!("main..{dropped_branch}")]).trim(),
        "0"
    );
    let gc = home.run_json(&["gc", "--dry-run"]);
    let verdict = |branch: &str| {
        gc["items"].as_array().unwrap().iter().find(|i| i["branch"] == branch).cloned()
    };
    let dropped_verdict = verdict(&dropped_branch).expect("the discarded branch is looked at");
    assert_eq!(dropped_verdict["verdict"]["action"], "remove", "{gc:#}");
    assert!(dropped_verdict["verdict"]["why"].as_str().unwrap().contains("discarded"), "{gc:#}");
    assert_eq!(verdict(&kept_branch).expect("kept")["verdict"]["action"], "keep", "{gc:#}");
    home.run_ok(&["gc"]);
    let branches = git(&repo, &["branch", "--list", "ccm/*"]);
    assert!(!branches.contains(&dropped_branch), "{branches}");
    assert!(branches.contains(&kept_branch), "{branches}");
}

#[tokio::test]
async fn a_stacked_task_needs_one_base_in_its_repository_and_the_api_takes_after_with_stack() {
    use serde_json::json;
    let (home, repo) = setup("land-stack-api", 1, "  auto: false\n");
    let plain = home.work().join("plain");
    git_repo(&plain, None);
    let plain = std::fs::canonicalize(&plain).unwrap().to_string_lossy().into_owned();
    home.run_ok(&["context", "add", &plain]);
    let daemon = home.start();
    let a = add_task(&home, &repo, "edit a.txt from a", &[]);
    let c = add_task(&home, &repo, "edit c.txt from c", &[]);

    // Refused, naming what was wrong.
    let refused = [
        (
            json!({"title": "t", "repo": repo, "stack": true}),
            "exactly one task (`--after A --stack`), got 0",
        ),
        (json!({"title": "t", "repo": repo, "after": [a, c], "stack": true}), "got 2"),
        (
            json!({"title": "t", "repo": plain, "after": [a], "stack": true}),
            "a task stacked on it works in the same repository",
        ),
    ];
    for (body, expected) in refused {
        let (status, answer) = daemon.post("/api/tasks", body.clone()).await;
        assert_eq!(status, 400, "{body} → {answer}");
        let message = answer["error"]["message"].as_str().unwrap();
        assert!(message.starts_with("stack: ") && message.contains(expected), "{body}: {message}");
    }
    let cli = home.run(&["task", "add", "t", "--stack", "--repo", &repo]);
    assert!(!cli.status.success());
    assert!(String::from_utf8_lossy(&cli.stderr).contains("--after"), "{cli:?}");

    // `after` with `stack`: the base's repository when none is named.
    let body =
        json!({"title": "edit b.txt from b", "profile": "fake", "after": [&a[..8]], "stack": true});
    let (status, created) = daemon.post("/api/tasks", body).await;
    assert_eq!(status, 201, "{created}");
    let b = created["id"].as_str().unwrap();
    let detail = task(&daemon, b).await;
    assert_eq!(detail["stack"]["base_task"], a.as_str(), "{detail:#}");
    assert_eq!(detail["repo"], task(&daemon, &a).await["repo"], "{detail:#}");
    assert_eq!(detail["depends_on"], json!([a]), "{detail:#}");
}
