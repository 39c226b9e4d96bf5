//! Usage limits per account (issue 25): the real Claude Code against the model stand-in, which
//! answers a 429 whose rate limits reset a while later. One agent's limit stops every agent of
//! its account (profiles name their `account`) until the reset, a task with a fallback profile
//! runs under it meanwhile, and after the reset each waiting task resumes exactly once.

use std::collections::BTreeMap;
use std::time::Duration;

use ccm_tests::fleet::{wait_for, Fleet, Node};
use ccm_tests::standin::anthropic::{Anthropic, Turn};
use ccm_tests::{agent_cli, wait_until, Daemon, TestHome};
use serde_json::Value;

use crate::claude::{agent_outputs, setup, start, wait_state};

/// How long the limit lasts after the 429: long enough for the other tasks to be offered a
/// slot (and refused) on a loaded machine.
const RESET_IN_SECS: u64 = 30;
/// Four Claude Code runs one after the other, after the reset, on a loaded machine.
const RESUMING: Duration = Duration::from_secs(300);

/// A profile that runs the real Claude Code as the built-in `claude` does, against `api`, in
/// `account` (and falling back to `fallbacks`), with `env` added to its environment.
fn claude_profile(
    name: &str,
    api: &Anthropic,
    account: &str,
    fallbacks: &[&str],
    env: &[(&'static str, String)],
) -> String {
    let env: Vec<String> = api
        .env()
        .into_iter()
        .chain([("ANTHROPIC_LOG", "debug".to_string())])
        .chain(env.iter().cloned())
        .map(|(key, value)| format!("{key}: '{value}'"))
        .collect();
    format!(
        "  {name}:\n    command: ['{}', -p, --output-format, stream-json, --verbose, \
         --session-id, '{{session_id}}', --permission-mode, acceptEdits, \
         '--allowedTools={{allowed_tools}}']\n    stdin: prompt\n    output: claude\n    \
         allowed_tools: [Bash, Edit, Write]\n    account: {account}\n    \
         fallback_profiles: [{}]\n    env: {{{}}}\n",
        agent_cli("claude").display(),
        fallbacks.join(", "),
        env.join(", ")
    )
}

fn add(home: &TestHome, repo: &str, profile: &str, title: &str) -> String {
    let args = ["task", "add", title, "--repo", repo, "--profile", profile];
    home.run_json(&args)["id"].as_str().unwrap().to_string()
}

async fn task(daemon: &Daemon, id: &str) -> Value {
    daemon.get(&format!("/api/tasks/{id}")).await.1
}

/// Every agent, as the API lists them.
async fn agents(daemon: &Daemon) -> Vec<Value> {
    daemon.get("/api/agents").await.1.as_array().cloned().unwrap_or_default()
}

/// How many agents each task had.
async fn agents_per_task(daemon: &Daemon) -> BTreeMap<String, usize> {
    let mut per_task = BTreeMap::new();
    for agent in agents(daemon).await {
        *per_task.entry(agent["task_id"].as_str().unwrap().to_string()).or_default() += 1;
    }
    per_task
}

/// Requests of the agents' main loop (those that offer tools) the stand-in received.
fn main_loop_requests(api: &Anthropic) -> usize {
    api.requests()
        .iter()
        .filter(|r| r["tools"].as_array().is_some_and(|tools| !tools.is_empty()))
        .count()
}

fn millis(rfc3339: &Value) -> i64 {
    let at = humantime::parse_rfc3339_weak(rfc3339.as_str().expect("a time")).expect("RFC 3339");
    at.duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as i64
}

fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as i64
}

/// Waits until every task of `ids` is in `state`.
async fn wait_all(daemon: &Daemon, ids: &[&str], state: &str, timeout: Duration) {
    let reached = wait_until(timeout, || async {
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
        panic!(
            "not every task reached {state}:\n{details}\n{}\n{}",
            agent_outputs(daemon).await,
            daemon.log_text()
        );
    }
}

#[tokio::test]
async fn a_usage_limit_on_one_agent_stops_the_accounts_other_starts_until_the_reset_and_each_resumes_once(
) {
    let api = Anthropic::start(vec![Turn::RateLimitedFor {
        retry_after_secs: 7200,
        reset_in_secs: RESET_IN_SECS,
    }]);
    // Two profiles, one account: the limit is the account's, not the profile's.
    let config = format!(
        "scheduler:\n  slots: 1\nprofiles:\n{}{}",
        claude_profile("alpha", &api, "team", &[], &[]),
        claude_profile("beta", &api, "team", &[], &[])
    );
    let (home, repo) = setup("account-limit", &config);
    let daemon = start(&home, &api);
    let first = add(&home, &repo, "alpha", "first");
    let others = [
        add(&home, &repo, "beta", "second"),
        add(&home, &repo, "alpha", "third"),
        add(&home, &repo, "beta", "fourth"),
    ];
    let all: Vec<&str> =
        std::iter::once(first.as_str()).chain(others.iter().map(String::as_str)).collect();

    // The first agent hits the limit; each of the other three is offered the slot it frees,
    // and waits for the reset instead of starting an agent.
    wait_all(&daemon, &all, "waiting_quota", Duration::from_secs(90)).await;
    // The agent's `StopFailure` hook may park it before its output names the reset (until
    // then the limit lasts `runtime.quota_wait_secs`); then every waiting task follows it.
    let named = wait_until(Duration::from_secs(30), || async {
        let status = home.run_json(&["status"]);
        let reset = &status["account_limits"][0]["reset_at"];
        reset.is_string() && millis(reset) <= now_ms() + RESET_IN_SECS as i64 * 1000
    })
    .await;
    assert!(named, "the limit never took the reset the 429 named: {}", daemon.log_text());
    let status = home.run_json(&["status"]);
    let limits = status["account_limits"].as_array().unwrap();
    assert_eq!(limits.len(), 1, "{status:#}");
    assert_eq!(limits[0]["account"], "team", "{status:#}");
    assert_eq!(limits[0]["source"], "agent", "{status:#}");
    assert_eq!(limits[0]["task_id"], first.as_str(), "{status:#}");
    assert_eq!(limits[0]["waiting"], 4, "{status:#}");
    let reset = millis(&limits[0]["reset_at"]);
    assert!(reset > now_ms(), "the limit is still in force: {status:#}");
    for id in &all {
        let detail = task(&daemon, id).await;
        assert_eq!(millis(&detail["wake_at"]), reset, "each task waits for the reset: {detail:#}");
    }
    for id in &others {
        let detail = task(&daemon, id).await;
        let parked = detail["log"].as_array().unwrap().iter().any(|e| {
            e["to_state"] == "waiting_quota"
                && e["reason"].as_str().unwrap().contains("account `team` is at its usage limit")
        });
        assert!(parked, "{detail:#}");
        assert_eq!(detail["attempts"], 0, "no attempt was counted: {detail:#}");
    }
    let shown = home.run_ok(&["status"]);
    assert!(shown.contains("account team at its usage limit until"), "{shown}");
    let listed = home.run_ok(&["task", "list"]);
    assert_eq!(listed.matches("waiting_quota until ").count(), 4, "{listed}");
    // Until the reset, no other agent starts.
    let before_reset = agents(&daemon).await;
    assert_eq!(before_reset.len(), 1, "{before_reset:#?}");
    assert_eq!(main_loop_requests(&api), 1);

    // After the reset, each task resumes exactly once and completes.
    wait_all(&daemon, &all, "complete", RESUMING).await;
    let per_task = agents_per_task(&daemon).await;
    assert_eq!(per_task.get(&first), Some(&2), "the first: its limited run and one more");
    for id in &others {
        assert_eq!(per_task.get(id), Some(&1), "{id} started once: {per_task:?}");
    }
    let late = agents(&daemon).await;
    for agent in late.iter().filter(|a| a["id"] != before_reset[0]["id"]) {
        assert!(millis(&agent["started_at"]) >= reset, "started before the reset: {agent:#}");
    }
    assert_eq!(main_loop_requests(&api), 5, "one request per run");
    let status = home.run_json(&["status"]);
    assert_eq!(status["account_limits"], serde_json::json!([]), "{status:#}");
}

#[tokio::test]
async fn a_task_with_a_fallback_profile_runs_under_it_while_its_account_is_limited() {
    let limited = Anthropic::start(vec![Turn::RateLimitedFor {
        retry_after_secs: 7200,
        reset_in_secs: 3600,
    }]);
    let spare = Anthropic::start(vec![Turn::text("Done under the spare account.")]);
    let config = format!(
        "scheduler:\n  slots: 1\nprofiles:\n{}{}{}",
        claude_profile("first", &limited, "team-a", &[], &[]),
        claude_profile("second", &limited, "team-a", &["spare"], &[]),
        claude_profile("spare", &spare, "team-b", &[], &[])
    );
    let (home, repo) = setup("account-fallback", &config);
    let daemon = start(&home, &limited);
    let first = add(&home, &repo, "first", "first");
    wait_state(&daemon, &first, "waiting_quota").await;
    let second = add(&home, &repo, "second", "second");

    let detail = wait_state(&daemon, &second, "complete").await;
    assert_eq!(detail["runs"][0]["last_message"], "Done under the spare account.", "{detail:#}");
    let started = detail["log"].as_array().unwrap().iter().any(|e| {
        e["to_state"] == "executing"
            && e["reason"].as_str().unwrap().ends_with("(spare, account team-b)")
    });
    assert!(started, "the log says it ran under the fallback: {detail:#}");
    assert_eq!(detail["profile"], "second", "the task keeps its own profile: {detail:#}");
    let mut ran: Vec<(String, String)> = agents(&daemon)
        .await
        .iter()
        .map(|a| {
            let name = if a["task_id"] == first.as_str() { "first task" } else { "second task" };
            (name.to_string(), a["profile"].as_str().unwrap().to_string())
        })
        .collect();
    ran.sort();
    let expected = [("first task", "first"), ("second task", "spare")]
        .map(|(task, profile)| (task.to_string(), profile.to_string()));
    assert_eq!(ran, expected, "no agent of team-a started after its limit");
    assert_eq!(main_loop_requests(&limited), 1);
    assert_eq!(task(&daemon, &first).await["state"], "waiting_quota");
}

/// Gives a fleet node the profile `team` (account `team`): the real Claude Code against `api`,
/// keeping its `~/.claude` in the test's directory.
fn share_account(node: &Node, api: &Anthropic) {
    let file = node.home.home().join("config.yaml");
    let config = std::fs::read_to_string(&file).unwrap();
    let user = node.home.dir.path().join("user");
    std::fs::create_dir_all(&user).unwrap();
    let env = [("HOME", user.display().to_string())];
    let profile = claude_profile("team", api, "team", &[], &env);
    let config = config.replacen("profiles:\n", &format!("profiles:\n{profile}"), 1);
    std::fs::write(&file, config).unwrap();
}

/// The node's account limits, as `ccm status --json` shows them.
fn limits(node: &Node) -> Vec<Value> {
    let status = node.home.run_json(&["status"]);
    status["account_limits"].as_array().cloned().unwrap_or_default()
}

#[tokio::test]
async fn a_second_system_sharing_the_account_stops_starting_until_the_reset() {
    let fleet = Fleet::start();
    let alpha_api =
        Anthropic::start(vec![Turn::RateLimitedFor { retry_after_secs: 7200, reset_in_secs: 45 }]);
    let beta_api = Anthropic::start(vec![Turn::text("Done on beta after the reset.")]);
    let (alpha, beta) =
        (fleet.node(1, "alpha", false, "commit"), fleet.node(2, "beta", false, "commit"));
    share_account(&alpha, &alpha_api);
    share_account(&beta, &beta_api);
    let (alpha, beta) = (alpha.up(), beta.up());

    let limited = alpha.home.run_json(&["task", "add", "limited", "--profile", "team"]);
    let limited = limited["id"].as_str().unwrap().to_string();
    wait_for("alpha's agent to hit the limit", Duration::from_secs(90), async || {
        let task = alpha.local(&limited).await?;
        (task["state"] == "waiting_quota").then_some(())
    })
    .await;
    // The central holds the account's limit, and beta learns it on its next round.
    let reset = wait_for("beta to learn the limit", Duration::from_secs(30), async || {
        let limit = limits(&beta).into_iter().find(|l| l["account"] == "team")?;
        (limit["source"] == "fleet").then_some(limit)
    })
    .await;
    assert_eq!(reset["system"], "alpha", "{reset:#}");
    let reset_ms = millis(&reset["reset_at"]);
    let alpha_limit = limits(&alpha);
    assert_eq!(millis(&alpha_limit[0]["reset_at"]), reset_ms, "{alpha_limit:#?}");
    let rows = fleet.central.pg.rows(
        "select l.account, s.name from private.account_limits l join private.systems s using (system_id)",
    );
    assert_eq!(rows, serde_json::json!([{ "account": "team", "name": "alpha" }]));

    // A task of the account on beta waits for the reset: beta starts no agent before it.
    let waiting = beta.home.run_json(&["task", "add", "on beta", "--profile", "team"]);
    let waiting = waiting["id"].as_str().unwrap().to_string();
    let detail = wait_for("beta's task to wait", Duration::from_secs(60), async || {
        let task = beta.local(&waiting).await?;
        (task["state"] == "waiting_quota").then_some(task)
    })
    .await;
    assert_eq!(millis(&detail["wake_at"]), reset_ms, "{detail:#}");
    assert_eq!(agents(beta.daemon()).await.len(), 0);
    assert_eq!(main_loop_requests(&beta_api), 0);

    // After the reset it starts once, and completes.
    let done = wait_for("beta's task to complete", RESUMING, async || {
        let task = beta.local(&waiting).await?;
        (task["state"] == "complete").then_some(task)
    })
    .await;
    assert_eq!(done["runs"][0]["last_message"], "Done on beta after the reset.", "{done:#}");
    let ran = agents(beta.daemon()).await;
    assert_eq!(ran.len(), 1, "{ran:#?}");
    assert!(millis(&ran[0]["started_at"]) >= reset_ms, "{ran:#?}");
    assert_eq!(main_loop_requests(&beta_api), 1);
}
