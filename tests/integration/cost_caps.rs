//! Daily cost caps (issue 25): scripted agents (`tests/fixtures/fake-claude.sh`) that report a
//! cost of $3 each, against a cap of $5 on a project (its `.ccm/config.yaml`) or an account
//! (`accounts:` of the global file). Past the cap no new agent starts, the tasks wait in
//! `waiting_quota` until the day ends, one `cost_cap` decision goes out through the notifiers,
//! and approving it raises the cap for the day so that the waiting tasks start, each once.

use std::path::{Path, PathBuf};
use std::time::Duration;

use ccm_tests::standin::Recorder;
use ccm_tests::{git_repo, wait_until, Daemon, TestHome};
use serde_json::Value;

const SLOW: Duration = Duration::from_secs(90);

fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/fake-claude.sh")
}

/// A home with one slot, the profile `fake` (a scripted agent costing $3 a run; `profile`
/// adds its keys) and `extra` YAML; a git repository registered as a context, whose
/// `.ccm/config.yaml` holds `project`.
fn setup(name: &str, profile: &str, extra: &str, project: &str) -> (TestHome, String) {
    let home = TestHome::new(name);
    home.write_config(&format!(
        "scheduler:\n  slots: 1\nruntime:\n  poll_ms: 50\nprofiles:\n  fake:\n    command: [sh, {}, \
         '{{prompt}}']\n    output: claude\n    env: {{FAKE_MODE: commit, FAKE_COST: '3'}}\n{profile}{extra}",
        fixture().display()
    ));
    let repo = home.work().join("app");
    git_repo(&repo, None);
    std::fs::create_dir_all(repo.join(".ccm")).unwrap();
    std::fs::write(repo.join(".ccm/config.yaml"), project).unwrap();
    let repo = std::fs::canonicalize(&repo).unwrap().to_string_lossy().into_owned();
    home.run_ok(&["context", "add", &repo]);
    (home, repo)
}

fn add(home: &TestHome, repo: &str, title: &str) -> String {
    let args = ["task", "add", title, "--repo", repo, "--profile", "fake"];
    home.run_json(&args)["id"].as_str().unwrap().to_string()
}

async fn task(daemon: &Daemon, id: &str) -> Value {
    daemon.get(&format!("/api/tasks/{id}")).await.1
}

async fn agents(daemon: &Daemon) -> Vec<Value> {
    daemon.get("/api/agents").await.1.as_array().cloned().unwrap_or_default()
}

async fn agents_of(daemon: &Daemon, id: &str) -> usize {
    agents(daemon).await.iter().filter(|a| a["task_id"] == id).count()
}

async fn cost_cap_decisions(daemon: &Daemon) -> Vec<Value> {
    let decisions = daemon.get("/api/decisions").await.1;
    decisions.as_array().unwrap().iter().filter(|d| d["kind"] == "cost_cap").cloned().collect()
}

/// Waits until every task of `ids` is in `state`.
async fn wait_all(daemon: &Daemon, ids: &[&str], state: &str) {
    let reached = wait_until(SLOW, || async {
        for id in ids {
            if task(daemon, id).await["state"] != state {
                return false;
            }
        }
        true
    })
    .await;
    if !reached {
        let mut details = String::new();
        for id in ids {
            details.push_str(&format!("{:#}\n", task(daemon, id).await));
        }
        panic!("not every task reached {state}:\n{details}\n{}", daemon.log_text());
    }
}

/// Whether the task's log has a move to `state` whose reason contains `words`.
fn logged(detail: &Value, state: &str, words: &str) -> bool {
    detail["log"]
        .as_array()
        .unwrap()
        .iter()
        .any(|e| e["to_state"] == state && e["reason"].as_str().is_some_and(|r| r.contains(words)))
}

#[tokio::test]
async fn a_project_reaching_its_daily_cost_cap_starts_no_new_agent_and_raises_one_decision() {
    let hook = Recorder::start(200, "ok");
    let notify = format!(
        "node:\n  name: cap-box\nnotify:\n  notifiers:\n    ops:\n      kind: webhook\n      url: {}/ccm\n",
        hook.url()
    );
    let (home, repo) = setup("cost-cap-project", "", &notify, "daily_cost_cap_usd: 5\n");
    let daemon = home.start();
    // $3 after the first, $6 after the second: the third and fourth find the cap reached.
    let ran = [add(&home, &repo, "first"), add(&home, &repo, "second")];
    wait_all(&daemon, &[&ran[0], &ran[1]], "complete").await;
    let waiting = [add(&home, &repo, "third"), add(&home, &repo, "fourth")];
    wait_all(&daemon, &[&waiting[0], &waiting[1]], "waiting_quota").await;

    let decisions = cost_cap_decisions(&daemon).await;
    assert_eq!(decisions.len(), 1, "one decision for the cap: {decisions:#?}");
    let question = decisions[0]["question"].as_str().unwrap();
    for words in ["daily cost cap of $5.00 reached for project", &repo, "$6.00 spent", "$10.00"] {
        assert!(question.contains(words), "`{question}` should say `{words}`");
    }
    assert_eq!(decisions[0]["answer"], Value::Null);
    assert_eq!(decisions[0]["options"], serde_json::json!(["approve", "reject"]));
    for id in &waiting {
        let detail = task(&daemon, id).await;
        assert!(
            logged(&detail, "waiting_quota", "daily cost cap of $5.00 reached for project"),
            "{detail:#}"
        );
        assert_eq!(detail["attempts"], 0, "no attempt was counted: {detail:#}");
        assert_eq!(agents_of(&daemon, id).await, 0, "no agent started for it");
        let wake = detail["wake_at"].as_str().expect("it waits for the day's end");
        assert!(wake > detail["updated_at"].as_str().unwrap(), "{detail:#}");
    }

    // The decision went out through the notifier, once.
    let sent = wait_until(Duration::from_secs(30), || async {
        hook.received().iter().any(|r| r.json()["event"] == "decision")
    })
    .await;
    assert!(sent, "the decision reached no notifier: {}", daemon.log_text());
    let messages: Vec<Value> = hook
        .received()
        .iter()
        .map(|r| r.json())
        .filter(|b| b["subject"]["kind"] == "cost_cap")
        .collect();
    assert_eq!(messages.len(), 1, "{messages:#?}");
    assert_eq!(messages[0]["title"], "cap-box: daily cost cap reached: raise it?");
    assert_eq!(messages[0]["subject"]["id"], decisions[0]["id"]);

    // The cap and its waiting tasks are shown.
    let status = home.run_json(&["status"]);
    let caps = status["cost_caps"].as_array().unwrap();
    assert_eq!(caps.len(), 1, "{status:#}");
    assert_eq!(
        (&caps[0]["scope"], &caps[0]["name"], &caps[0]["state"], &caps[0]["waiting"]),
        (&"project".into(), &Value::from(repo.as_str()), &"reached".into(), &2.into()),
        "{status:#}"
    );
    assert_eq!(caps[0]["cap_usd"], 5.0);
    assert_eq!(caps[0]["spent_usd"], 6.0);
    let shown = home.run_ok(&["status"]);
    assert!(
        shown.contains(&format!("cap     project {repo}: daily cost cap $5.00 reached")),
        "{shown}"
    );
    assert!(shown.contains("(2 tasks waiting)"), "{shown}");

    // Later passes start nothing and ask nothing more; what ran is left alone.
    let later = add(&home, &repo, "fifth");
    wait_all(&daemon, &[&later], "waiting_quota").await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(agents(&daemon).await.len(), 2, "no agent started past the cap");
    assert_eq!(cost_cap_decisions(&daemon).await.len(), 1, "still one decision");
    for id in waiting.iter().chain([&later]) {
        assert_eq!(task(&daemon, id).await["state"], "waiting_quota");
    }
    for id in &ran {
        assert_eq!(task(&daemon, id).await["state"], "complete");
    }
}

#[tokio::test]
async fn approving_the_cost_cap_decision_raises_the_cap_and_the_waiting_tasks_start_once() {
    let (home, repo) = setup(
        "cost-cap-account",
        "    account: team\n",
        "accounts:\n  team:\n    daily_cost_cap_usd: 5\n",
        "",
    );
    let daemon = home.start();
    let ran = [add(&home, &repo, "first"), add(&home, &repo, "second")];
    wait_all(&daemon, &[&ran[0], &ran[1]], "complete").await;
    let waiting = [add(&home, &repo, "third"), add(&home, &repo, "fourth")];
    wait_all(&daemon, &[&waiting[0], &waiting[1]], "waiting_quota").await;
    let decisions = cost_cap_decisions(&daemon).await;
    assert_eq!(decisions.len(), 1, "{decisions:#?}");
    let question = decisions[0]["question"].as_str().unwrap();
    assert!(question.contains("for account `team`"), "{question}");
    assert!(question.contains("raise it to $10.00"), "{question}");
    assert_eq!(agents(&daemon).await.len(), 2);

    // Approved: the cap is $10 for today; $6 spent, so both waiting tasks run, each once.
    let id = decisions[0]["id"].as_str().unwrap();
    let answered = home.run_ok(&["decide", &id[..8], "approve"]);
    assert!(answered.contains("answered `approve`"), "{answered}");
    wait_all(&daemon, &[&waiting[0], &waiting[1]], "complete").await;
    for id in &waiting {
        assert_eq!(agents_of(&daemon, id).await, 1, "{id} started once");
        let detail = task(&daemon, id).await;
        assert!(logged(&detail, "queued", "daily cost cap raised"), "{detail:#}");
        assert_eq!(detail["attempts"], 1, "{detail:#}");
    }
    let status = home.run_json(&["status"]);
    let cap = &status["cost_caps"][0];
    assert_eq!((&cap["scope"], &cap["name"]), (&"account".into(), &"team".into()), "{status:#}");
    assert_eq!(
        (&cap["state"], &cap["cap_usd"], &cap["raises"]),
        (&"raised".into(), &10.0.into(), &1.into())
    );
    assert_eq!(cap["answered_by"], "cli", "{status:#}");
    let shown = home.run_ok(&["status"]);
    assert!(shown.contains("account team: daily cost cap raised to $10.00"), "{shown}");

    // $12 spent now: the raised cap is reached in turn, and asks once more.
    let fifth = add(&home, &repo, "fifth");
    wait_all(&daemon, &[&fifth], "waiting_quota").await;
    let decisions = cost_cap_decisions(&daemon).await;
    assert_eq!(decisions.len(), 2, "{decisions:#?}");
    let pending: Vec<&Value> = decisions.iter().filter(|d| d["answer"].is_null()).collect();
    assert_eq!(pending.len(), 1, "{decisions:#?}");
    let question = pending[0]["question"].as_str().unwrap();
    assert!(
        question.contains("cap of $10.00") && question.contains("raise it to $15.00"),
        "{question}"
    );
    // Rejected: it waits for the next day.
    home.run_ok(&["decide", &pending[0]["id"].as_str().unwrap()[..8], "reject"]);
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(task(&daemon, &fifth).await["state"], "waiting_quota");
    assert_eq!(agents(&daemon).await.len(), 4, "no agent started after the rejection");
    let status = home.run_json(&["status"]);
    assert_eq!(status["cost_caps"][0]["state"], "kept", "{status:#}");
}
