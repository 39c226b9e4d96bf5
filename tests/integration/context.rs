//! Context windows (issue 25): the real Claude Code against the model stand-in, whose answers
//! report how full the context is; ccm shows it, warns or has the agent hand off past its
//! profile's threshold, and records the compactions Claude Code makes.

use ccm_tests::standin::anthropic::{Anthropic, Turn};
use serde_json::Value;

use super::claude::{add_task, alerts, setup, start, wait_state};

/// The text of every message of a request to the stand-in, joined.
fn request_text(request: &Value) -> String {
    fn collect(value: &Value, out: &mut String) {
        match value {
            Value::String(text) => {
                out.push_str(text);
                out.push('\n');
            }
            Value::Array(items) => items.iter().for_each(|v| collect(v, out)),
            Value::Object(map) => map.values().for_each(|v| collect(v, out)),
            _ => {}
        }
    }
    let mut out = String::new();
    collect(&request["messages"], &mut out);
    out
}

/// The reasons of the task's log.
fn log_reasons(detail: &Value) -> Vec<String> {
    let log = detail["log"].as_array().expect("the task's log");
    log.iter().map(|entry| entry["reason"].as_str().unwrap_or_default().to_string()).collect()
}

#[tokio::test]
async fn an_agent_past_its_context_threshold_hands_off_with_a_summary_and_the_next_attempt_continues_without_a_failure(
) {
    let (home, repo) = setup(
        "ctx-handoff",
        "profiles:\n  claude:\n    context: {threshold: 0.5, action: handoff, window: 200000}\n",
    );
    const SUMMARY: &str = "HANDOFF-7Q: wrote part one in one.txt; part two (hello.txt) is left";
    let api = Anthropic::start(vec![
        // Attempt 1: the context passes half of the window while the command runs.
        Turn::bash("sleep 3 && echo part one > one.txt").with_context(120_000),
        Turn::write(".ccm-handoff.md", &format!("{SUMMARY}\n")).with_context(121_000),
        Turn::text("Handed over.").with_context(122_000),
        // Attempt 2: a fresh context, which finishes the task.
        Turn::write("hello.txt", "hello\n"),
        Turn::text("Finished part two."),
    ]);
    let daemon = start(&home, &api);
    let id =
        add_task(&home, &["two parts", "--repo", &repo, "--verify", "grep -q hello hello.txt"]);
    let detail = wait_state(&daemon, &id, "complete").await;

    // The request after the first tool call carried ccm's request to hand off.
    let requests: Vec<String> = api.requests().iter().map(request_text).collect();
    let asked = requests.iter().position(|r| r.contains("Hand this task over now"));
    let asked = asked.unwrap_or_else(|| panic!("no request asked for a handoff: {requests:#?}"));
    assert!(requests[asked].contains(".ccm-handoff.md"), "{}", requests[asked]);
    assert!(requests[asked].contains("60%"), "{}", requests[asked]);

    // Two runs: the handoff (not a failure) and the one that finished.
    let runs = detail["runs"].as_array().unwrap();
    let outcomes: Vec<&str> = runs.iter().map(|r| r["outcome"].as_str().unwrap()).collect();
    assert_eq!(outcomes, ["handoff", "success"], "{detail:#}");
    assert_eq!(runs[0]["handoff"], SUMMARY, "{detail:#}");
    assert_eq!(detail["attempts"], 1, "the handoff did not use up an attempt: {detail:#}");
    let prompt = runs[1]["prompt"].as_str().unwrap();
    assert!(prompt.contains(SUMMARY), "the next attempt's prompt has the summary: {prompt}");
    assert!(prompt.contains("handed the work over"), "{prompt}");
    // Claude Code of the second attempt was sent that prompt.
    assert!(requests[asked + 1..].iter().any(|r| r.contains(SUMMARY)), "{requests:#?}");

    // The log shows the request and the handoff, and no failure.
    let reasons = log_reasons(&detail);
    assert!(reasons.iter().any(|r| r.contains("asked it to hand off")), "{reasons:#?}");
    assert!(reasons.iter().any(|r| r.contains("handed off with a summary")), "{reasons:#?}");
    let states: Vec<&str> =
        detail["log"].as_array().unwrap().iter().map(|e| e["to_state"].as_str().unwrap()).collect();
    assert!(!states.iter().any(|s| ["error", "retry", "failed"].contains(s)), "{states:?}");
    // The summary is not the task's work: not in the worktree, nor in its branch.
    let files = std::process::Command::new("git")
        .args(["-C", &repo, "log", "--name-only", "--format=", &format!("ccm/{}", &id[..8])])
        .output()
        .unwrap();
    assert!(!String::from_utf8_lossy(&files.stdout).contains(".ccm-handoff.md"));
}

#[tokio::test]
async fn an_agent_past_its_context_threshold_under_warn_raises_an_alert_and_carries_on() {
    let (home, repo) = setup(
        "ctx-warn",
        "profiles:\n  claude:\n    context: {threshold: 0.7, action: warn, window: 200000}\n",
    );
    let api = Anthropic::start(vec![
        Turn::bash("sleep 2 && echo working").with_context(150_000),
        Turn::write("hello.txt", "hello\n").with_context(151_000),
        Turn::text("Done.").with_context(152_000),
    ]);
    let daemon = start(&home, &api);
    let id = add_task(&home, &["warned", "--repo", &repo, "--verify", "grep -q hello hello.txt"]);
    let detail = wait_state(&daemon, &id, "complete").await;

    let outcomes: Vec<&str> =
        detail["runs"].as_array().unwrap().iter().map(|r| r["outcome"].as_str().unwrap()).collect();
    assert_eq!(outcomes, ["success"], "{detail:#}");
    let warned = alerts(&home, "context_high").await;
    assert_eq!(warned.len(), 1, "{warned:?}");
    assert!(warned[0].contains("75%") && warned[0].contains("70%"), "{warned:?}");
    // Nobody asked the agent for anything.
    assert!(!api.requests().iter().any(|r| request_text(r).contains("Hand this task over")));

    // `ccm agent list` shows how full its context was at the end (of the window the profile
    // sets, which wins over the one Claude Code reports).
    let list = home.run_ok(&["agent", "list"]);
    assert!(list.contains("CONTEXT") && list.contains("ctx 76%"), "{list}");
    let agents = home.run_json(&["agent", "list"]);
    assert_eq!(agents[0]["context_tokens"], 152_000, "{agents:#}");
    assert_eq!(agents[0]["context_window"], 200_000, "{agents:#}");
    assert_eq!(agents[0]["context_action"], "warn", "{agents:#}");
}

#[tokio::test]
async fn a_compaction_is_recorded_in_the_task_log() {
    let (home, repo) = setup("ctx-compact", "");
    // A context near the whole window of the default model (1,000,000 tokens in the Claude
    // Code the tests cover): it compacts the context before its next call.
    let api = Anthropic::start(vec![
        Turn::bash("echo working").with_context(990_000),
        Turn::write("hello.txt", "hello\n"),
        Turn::text("Done."),
    ]);
    let daemon = start(&home, &api);
    let id =
        add_task(&home, &["compacted", "--repo", &repo, "--verify", "grep -q hello hello.txt"]);
    let detail = wait_state(&daemon, &id, "complete").await;

    let reasons = log_reasons(&detail);
    let compaction = reasons.iter().find(|r| r.contains("context compaction"));
    let compaction = compaction.unwrap_or_else(|| panic!("no compaction logged: {reasons:#?}"));
    assert!(compaction.contains("(auto)"), "{compaction}");
    let list = home.run_ok(&["agent", "list"]);
    assert!(list.contains("compaction"), "{list}");
    let agents = home.run_json(&["agent", "list"]);
    assert_eq!(
        agents[0]["context_window"], 1_000_000,
        "the window Claude Code reported: {agents:#}"
    );
}
