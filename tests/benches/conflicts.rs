//! Conflict prediction for 50 finished branches of one repository (all 1,225 pairs overlap in
//! one shared file, at lines far apart, so git must judge every pair and every pair merges
//! cleanly), against the floor of `git merge-tree --write-tree` run for those pairs by a shell
//! loop, in the same run on the same repository.
//!
//! Run with `cargo bench -p ccm-tests --bench conflicts`. Nothing here asserts on time: the
//! bench prints a table, and fails only when the prediction is wrong (a conflict where git
//! merges cleanly, or none where it does not).
//!
//! ccm's figure is `ccm conflicts --fresh --repo R` end to end: the process, the store, the
//! branches' heads, 50 `git diff --name-only`, 50 merges with the target and the 1,225 pair
//! merges (at most `conflicts::GIT_CONCURRENCY` git processes at a time).
//!
//! Then the daemon's hook latency (`POST /api/hooks`, one every 5 ms) while predictions run
//! back to back, against the same load with none: prediction must not hold up a hook.

use std::process::Command;
use std::time::{Duration, Instant};

use ccm_tests::bench::{hook_latencies, machine, ms, print_table, Row, Stats};
use ccm_tests::{git_repo, wait_until, Daemon, TestHome};
use serde_json::{json, Value};

/// Finished branches of the repository.
const BRANCHES: usize = 50;
/// Runs of each side; the median is shown.
const RUNS: usize = 3;
const TARGET: &str = "≤ 2× the floor";

fn git(repo: &str, args: &[&str]) -> String {
    let out = Command::new("git").arg("-C").arg(repo).args(args).output().expect("git runs");
    assert!(out.status.success(), "git {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Hook requests per side of the latency comparison.
const HOOK_SAMPLES: usize = 400;

/// `HOOK_SAMPLES` hook events posted one every 5 ms; each one's round trip.
async fn hooks(daemon: &Daemon) -> Vec<Duration> {
    let samples = hook_latencies(daemon, HOOK_SAMPLES, Duration::from_millis(5)).await;
    samples.into_iter().map(|(_, latency)| latency).collect()
}

fn median(mut samples: Vec<Duration>) -> Duration {
    samples.sort_unstable();
    samples[samples.len() / 2]
}

fn main() {
    let machine = machine();
    let runtime =
        tokio::runtime::Builder::new_current_thread().enable_all().build().expect("tokio runtime");
    let home = TestHome::new("bench-conflicts");
    home.write_config("scheduler:\n  tick_ms: 50\n");
    let repo = home.work().join("app");
    git_repo(&repo, None);
    let repo = std::fs::canonicalize(&repo).unwrap().to_string_lossy().into_owned();
    let lines: String = (0..BRANCHES * 4).map(|i| format!("line {i}\n")).collect();
    std::fs::write(format!("{repo}/shared.txt"), lines).unwrap();
    git(&repo, &["add", "shared.txt"]);
    git(&repo, &["commit", "-q", "-m", "shared file"]);
    home.run_ok(&["context", "add", &repo]);

    // 50 tasks of the manual profile, driven to `complete`, each with its branch: one line of
    // the shared file (4 lines apart from the others') and a file of its own.
    let daemon = home.start();
    let mut branches = Vec::new();
    runtime.block_on(async {
        for i in 0..BRANCHES {
            let args =
                ["task", "add", &format!("branch {i}"), "--profile", "manual", "--repo", &repo];
            let id = home.run_json(&args)["id"].as_str().unwrap().to_string();
            let queued = wait_until(Duration::from_secs(20), || async {
                daemon.get(&format!("/api/tasks/{id}")).await.1["state"] == "queued"
            })
            .await;
            assert!(queued, "task {id} was not admitted");
            let mut last = Value::Null;
            for event in [
                json!({ "event": "start" }),
                json!({ "event": "worker_finished" }),
                json!({ "event": "verify_passed" }),
                json!({ "event": "report_ready", "supervised": false }),
            ] {
                last = daemon.post(&format!("/api/tasks/{id}/events"), event).await.1;
            }
            assert_eq!(last["state"], "complete", "{last}");
            let branch = format!("ccm/{}", &id[..8]);
            git(&repo, &["checkout", "-q", "-b", &branch, "main"]);
            let shared = std::fs::read_to_string(format!("{repo}/shared.txt")).unwrap();
            let changed: String = shared
                .lines()
                .enumerate()
                .map(|(n, l)| {
                    if n == 4 * i + 2 {
                        format!("{l} changed by {i}\n")
                    } else {
                        format!("{l}\n")
                    }
                })
                .collect();
            std::fs::write(format!("{repo}/shared.txt"), changed).unwrap();
            std::fs::write(format!("{repo}/own-{i}.txt"), "mine\n").unwrap();
            git(&repo, &["add", "."]);
            git(&repo, &["commit", "-q", "-m", &format!("[{}] branch {i}", &id[..8])]);
            git(&repo, &["checkout", "-q", "main"]);
            branches.push(branch);
        }
    });
    drop(daemon); // its own predictor must not compete with what is measured

    let pairs: Vec<(String, String)> = branches
        .iter()
        .enumerate()
        .flat_map(|(i, a)| branches[i + 1..].iter().map(move |b| (a.clone(), b.clone())))
        .collect();
    let list = home.work().join("pairs.txt");
    std::fs::write(&list, pairs.iter().map(|(a, b)| format!("{a} {b}\n")).collect::<String>())
        .unwrap();
    let script = format!(
        "cd '{repo}' && while read a b; do git merge-tree --write-tree \"$a\" \"$b\" >/dev/null || exit 1; done < '{}'",
        list.display()
    );

    let (mut floor, mut ccm) = (Vec::new(), Vec::new());
    for _ in 0..RUNS {
        let start = Instant::now();
        let status = Command::new("sh").args(["-c", &script]).status().expect("sh runs");
        floor.push(start.elapsed());
        assert!(status.success(), "a pair of the floor's merges conflicts");

        let start = Instant::now();
        let predicted = home.run_json(&["conflicts", "--fresh", "--repo", &repo]);
        ccm.push(start.elapsed());
        assert_eq!(predicted[0]["conflicts"], json!([]), "every pair merges cleanly: {predicted}");
    }
    let (floor, ccm) = (median(floor), median(ccm));
    let rows = vec![Row::new(
        &format!("prediction, {BRANCHES} finished branches ({} pairs)", pairs.len()),
        ms(ccm),
        format!("{} ({} × git merge-tree, shell loop)", ms(floor), pairs.len()),
        TARGET,
    )
    .ratio(ccm.as_secs_f64(), floor.as_secs_f64(), "≤ 2")];

    // One pair conflicts once its line is changed again on a branch: the prediction names it.
    git(&repo, &["checkout", "-q", &branches[1]]);
    let shared = std::fs::read_to_string(format!("{repo}/shared.txt")).unwrap();
    let clash: String = shared
        .lines()
        .enumerate()
        .map(|(n, l)| if n == 2 { "line 2 clashing\n".to_string() } else { format!("{l}\n") })
        .collect();
    std::fs::write(format!("{repo}/shared.txt"), clash).unwrap();
    git(&repo, &["commit", "-q", "-am", "clash"]);
    git(&repo, &["checkout", "-q", "main"]);
    let predicted = home.run_json(&["conflicts", "--fresh", "--repo", &repo]);
    let conflicts = predicted[0]["conflicts"].as_array().unwrap();
    assert_eq!(conflicts.len(), 1, "{predicted}");
    assert_eq!(conflicts[0]["kind"], "merge");

    // The hook latency with predictions running back to back, against none.
    let daemon = home.start();
    let (idle, busy, predictions) = runtime.block_on(async {
        hooks(&daemon).await; // warm-up
        let idle = Stats::new(hooks(&daemon).await);
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        // The same command as `home.ccm()`, owned by the thread that runs it.
        let base = home.ccm();
        let program = base.get_program().to_owned();
        let args: Vec<_> = base.get_args().map(|a| a.to_owned()).collect();
        let envs: Vec<_> =
            base.get_envs().map(|(k, v)| (k.to_owned(), v.map(|v| v.to_owned()))).collect();
        let predicting = std::thread::spawn({
            let (stop, repo) = (stop.clone(), repo.clone());
            move || {
                let mut n = 0;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let mut run = Command::new(&program);
                    run.args(&args).args(["conflicts", "--fresh", "--repo", &repo]);
                    for (key, value) in &envs {
                        match value {
                            Some(value) => run.env(key, value),
                            None => run.env_remove(key),
                        };
                    }
                    assert!(run.output().expect("ccm runs").status.success());
                    n += 1;
                }
                n
            }
        });
        tokio::time::sleep(Duration::from_millis(200)).await;
        let busy = Stats::new(hooks(&daemon).await);
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        (idle, busy, predicting.join().expect("predictions ran"))
    });
    println!("\n{machine}");
    print_table(&rows);
    println!(
        "\nhook latency, {HOOK_SAMPLES} events one every 5 ms ({predictions} predictions ran meanwhile)"
    );
    for (label, s) in [("no prediction", &idle), ("predictions running", &busy)] {
        println!("  {label:<22} p50 {}  p99 {}  max {}", ms(s.p50), ms(s.p99), ms(s.max));
    }
    println!(
        "  p99 during / idle: {:.2}× (goal ≤ 1.20×)",
        busy.p99.as_secs_f64() / idle.p99.as_secs_f64()
    );
}
