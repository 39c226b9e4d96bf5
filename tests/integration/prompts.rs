//! Prompts of any size: `task add --prompt-file` and `--prompt -`, a megabyte prompt reaching
//! an agent on its stdin or as a file (tmux's command line stays short: the window runs the
//! agent's launcher), a prompt too long for a `{prompt}` argument refused, launch failures that
//! are ccm's said to be ccm's, and a daemon log that never holds a prompt.
//!
//! The real Claude Code, Gemini CLI and Codex with a megabyte prompt: `claude.rs` and
//! `gemini_codex.rs`.

use std::io::Write as _;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use ccm_tests::{wait_until, Daemon, TestHome};
use serde_json::Value;

const SLOW: Duration = Duration::from_secs(60);

/// About a megabyte of prompt, one line, with a marker at each end.
pub fn megabyte_prompt() -> String {
    let mut prompt = String::from("PROMPT-HEAD ");
    let mut n = 0;
    while prompt.len() < 1_000_000 {
        prompt.push_str(&format!("word{n} "));
        n += 1;
    }
    prompt.push_str("PROMPT-TAIL");
    prompt
}

/// Whether `log` holds any 200-byte piece of `prompt` (a prompt written to the log).
pub fn holds_part_of(log: &str, prompt: &str) -> bool {
    (0..prompt.len().saturating_sub(200))
        .step_by(50_000)
        .any(|start| log.contains(&prompt[start..start + 200]))
}

/// `value` as text with `prompt` replaced by a note, for a failure message.
pub fn without(value: &Value, prompt: &str) -> String {
    format!("{value:#}").replace(prompt, "<the prompt>")
}

fn home_with(name: &str, profiles: &str) -> TestHome {
    let home = TestHome::new(name);
    let profiles =
        if profiles.is_empty() { String::new() } else { format!("profiles:\n{profiles}") };
    home.write_config(&format!(
        "tasks:\n  retry_base_secs: 0\n  retry_cap_secs: 0\nruntime:\n  poll_ms: 50\n{profiles}"
    ));
    home
}

/// `ccm task add ARGS --json` with `stdin` on its standard input; its output.
fn add_with_stdin(home: &TestHome, args: &[&str], stdin: &[u8]) -> std::process::Output {
    let mut child = home
        .ccm()
        .args(["task", "add"])
        .args(args)
        .arg("--json")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(stdin).unwrap();
    child.wait_with_output().unwrap()
}

fn stderr(output: &std::process::Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

async fn task(daemon: &Daemon, id: &str) -> Value {
    daemon.get(&format!("/api/tasks/{id}")).await.1
}

async fn wait_state(daemon: &Daemon, id: &str, state: &str) -> Value {
    let reached = wait_until(SLOW, || async { task(daemon, id).await["state"] == state }).await;
    let detail = task(daemon, id).await;
    assert!(reached, "task never reached {state}: {detail:#}\n{}", daemon.log_text());
    detail
}

#[tokio::test]
async fn task_add_takes_the_prompt_from_a_file_or_from_stdin() {
    let home = home_with("prompt-sources", "");
    let prompt = megabyte_prompt();
    let file = home.work().join("prompt.md");
    std::fs::write(&file, &prompt).unwrap();
    let from_file = home.run_json(&[
        "task",
        "add",
        "from a file",
        "--no-repo",
        "--prompt-file",
        &file.to_string_lossy(),
    ]);
    let output =
        add_with_stdin(&home, &["from stdin", "--no-repo", "--prompt", "-"], b"-x first\n");
    assert!(output.status.success(), "{}", stderr(&output));
    let from_stdin: Value = serde_json::from_slice(&output.stdout).unwrap();

    let shown = |task: &Value| home.run_json(&["task", "show", task["id"].as_str().unwrap()]);
    assert_eq!(shown(&from_file)["prompt"], prompt.as_str());
    assert_eq!(shown(&from_stdin)["prompt"], "-x first\n");
    // A literal prompt still may begin with `-`.
    let literal = home.run_json(&["task", "add", "literal", "--no-repo", "--prompt", "-x"]);
    assert_eq!(shown(&literal)["prompt"], "-x");
}

#[tokio::test]
async fn task_show_prints_the_beginning_of_a_long_prompt_and_its_size() {
    let home = home_with("prompt-show", "");
    let prompt = megabyte_prompt();
    let file = home.work().join("prompt.md");
    std::fs::write(&file, &prompt).unwrap();
    let id = home.run_json(&[
        "task",
        "add",
        "long",
        "--no-repo",
        "--prompt-file",
        &file.to_string_lossy(),
    ])["id"]
        .as_str()
        .unwrap()
        .to_string();
    let shown = home.run_ok(&["task", "show", &id]);
    assert!(shown.len() < 10_000, "the whole prompt was printed ({} bytes)", shown.len());
    assert!(shown.contains("PROMPT-HEAD") && !shown.contains("PROMPT-TAIL"), "{shown}");
    assert!(shown.contains(&format!("{} bytes", prompt.len())), "{shown}");
    let short = home.run_json(&["task", "add", "short", "--no-repo", "--prompt", "fix it"]);
    let shown = home.run_ok(&["task", "show", short["id"].as_str().unwrap()]);
    assert!(shown.contains("  prompt    fix it\n"), "{shown}");
}

#[tokio::test]
async fn task_add_refuses_a_prompt_file_that_is_missing_not_utf8_or_empty() {
    let home = home_with("prompt-refused", "");
    let work = home.work();
    let missing = work.join("missing.md");
    let binary = work.join("binary.md");
    std::fs::write(&binary, b"abc\xff\xfe").unwrap();
    let empty = work.join("empty.md");
    std::fs::write(&empty, " \n").unwrap();
    let refused = |file: &Path| {
        let output =
            home.run(&["task", "add", "t", "--no-repo", "--prompt-file", &file.to_string_lossy()]);
        assert!(!output.status.success());
        stderr(&output)
    };
    let error = refused(&missing);
    assert!(
        error.contains(&format!("cannot read prompt file {}: No such file", missing.display())),
        "{error}"
    );
    let error = refused(&binary);
    assert!(
        error.contains(&format!(
            "prompt file {} is not UTF-8 text (invalid byte at offset 3)",
            binary.display()
        )),
        "{error}"
    );
    let error = refused(&empty);
    assert!(error.contains(&format!("prompt file {} is empty", empty.display())), "{error}");

    let output = add_with_stdin(&home, &["t", "--no-repo", "--prompt", "-"], b"");
    assert!(!output.status.success());
    assert!(
        stderr(&output).contains("the prompt read from stdin (--prompt -) is empty"),
        "{}",
        stderr(&output)
    );
    let output = add_with_stdin(&home, &["t", "--no-repo", "--prompt", "-"], b"\xc3\x28");
    assert!(
        stderr(&output).contains("is not UTF-8 text (invalid byte at offset 0)"),
        "{}",
        stderr(&output)
    );
    let output = home.run(&["task", "add", "t", "--prompt", "x", "--prompt-file", "f"]);
    assert!(stderr(&output).contains("cannot be used with"), "{}", stderr(&output));
    assert_eq!(home.run_json(&["task", "list"]).as_array().map(Vec::len), Some(0));
}

/// A megabyte prompt reaches a custom agent whole, on its stdin (`stdin: prompt`) and as
/// `{prompt_file}`; both tasks complete, and the daemon's log holds no piece of the prompt.
#[tokio::test]
async fn a_megabyte_prompt_reaches_the_agent_on_stdin_or_as_a_file_and_stays_out_of_the_log() {
    let home = home_with(
        "prompt-megabyte",
        "  on-stdin:\n    command: [sh, -c, 'cat > \"$CCM_AGENT_DIR/received\"']\n    stdin: prompt\n\
         \x20 as-file:\n    command: [sh, -c, 'cp \"$1\" \"$CCM_AGENT_DIR/received\"', sh, '{prompt_file}']\n",
    );
    let prompt = megabyte_prompt();
    let file = home.work().join("prompt.md");
    std::fs::write(&file, &prompt).unwrap();
    let add = |profile: &str| {
        home.run_json(&[
            "task",
            "add",
            profile,
            "--no-repo",
            "--profile",
            profile,
            "--prompt-file",
            &file.to_string_lossy(),
        ])["id"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let ids = [add("on-stdin"), add("as-file")];
    let daemon = home.start();
    for id in &ids {
        let detail = wait_state(&daemon, id, "complete").await;
        assert_eq!(detail["runs"].as_array().unwrap().len(), 1, "{detail:#}");
    }
    let (_, agents) = daemon.get("/api/agents").await;
    let agents = agents.as_array().unwrap();
    assert_eq!(agents.len(), 2);
    for agent in agents {
        let dir = Path::new(agent["dir"].as_str().unwrap());
        let received = std::fs::read_to_string(dir.join("received")).unwrap();
        assert!(
            received == prompt,
            "{} got {} bytes, not the prompt",
            agent["profile"],
            received.len()
        );
        // The window ran the launcher, which holds the command; only its owner may read it.
        let launcher = dir.join("launch.sh");
        use std::os::unix::fs::PermissionsExt as _;
        assert_eq!(std::fs::metadata(&launcher).unwrap().permissions().mode() & 0o777, 0o600);
    }
    let log = daemon.log_text();
    assert!(!holds_part_of(&log, &prompt), "the daemon's log holds the prompt");
}

/// A profile that passes the prompt as an argument (`{prompt}`) cannot take a megabyte: the
/// task is refused at creation, saying why and what to use instead.
#[tokio::test]
async fn a_prompt_too_long_for_a_prompt_argument_is_refused_at_creation() {
    let home = home_with("prompt-argv", "  in-argv:\n    command: [my-agent, '{prompt}']\n");
    let file = home.work().join("prompt.md");
    std::fs::write(&file, megabyte_prompt()).unwrap();
    let output = home.run(&[
        "task",
        "add",
        "t",
        "--no-repo",
        "--profile",
        "in-argv",
        "--prompt-file",
        &file.to_string_lossy(),
    ]);
    assert!(!output.status.success());
    let error = stderr(&output);
    let expected = format!(
        "prompt: is {} bytes, and profile `in-argv` passes it on the command line ({{prompt}}), \
         which takes at most 98304",
        megabyte_prompt().len()
    );
    assert!(error.contains(&expected), "{error}");
    assert!(error.contains("`stdin: prompt` or {prompt_file}"), "{error}");
    // Below that size the task is created as before.
    let small = "x".repeat(60_000);
    home.run_json(&["task", "add", "t", "--no-repo", "--profile", "in-argv", "--prompt", &small]);
}

/// The open alerts of the task, as another process reads the database.
async fn alerts_of(home: &TestHome, id: &str) -> Vec<String> {
    let mut db = ccm_tests::open_db(&home.db_file()).await;
    let rows: Vec<(String,)> =
        sqlx::query_as("SELECT message FROM alerts WHERE task_id = ? AND resolved_at IS NULL")
            .bind(id)
            .fetch_all(&mut db)
            .await
            .unwrap();
    rows.into_iter().map(|(message,)| message).collect()
}

/// Checks that the task failed after one attempt with `expected` in its reason and alert,
/// blaming ccm and not an outside kill.
async fn failed_at_once_as_ccms_failure(
    home: &TestHome,
    daemon: &Daemon,
    id: &str,
    expected: &str,
) {
    let detail = wait_state(daemon, id, "failed").await;
    let runs = detail["runs"].as_array().unwrap();
    assert_eq!(runs.len(), 1, "no attempt is spent again: {detail:#}");
    assert_eq!(runs[0]["outcome"], "start_failed", "{detail:#}");
    let log = detail["log"].as_array().unwrap();
    let reason = log.iter().find(|e| e["from_state"] == "executing").unwrap()["reason"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(reason.contains(expected), "{reason}");
    assert!(reason.ends_with("the agent never ran"), "{reason}");
    let alerts = alerts_of(home, id).await;
    assert!(alerts.iter().any(|a| a.contains(expected)), "{alerts:?}");
    assert!(
        alerts.iter().all(|a| !a.contains("killed from outside") && !a.contains("vanished")),
        "{alerts:?}"
    );
}

/// tmux refuses to open the agent's window: the task fails at once, its alert saying that ccm
/// could not open the window and why, not that something outside killed the agent.
#[tokio::test]
async fn a_window_tmux_refuses_fails_the_task_at_once_as_ccms_failure() {
    let home = home_with("prompt-tmux-refuses", "  agent:\n    command: [true]\n");
    // A tmux that refuses every new window as too long and does everything else.
    let real = String::from_utf8(
        std::process::Command::new("sh").args(["-c", "command -v tmux"]).output().unwrap().stdout,
    )
    .unwrap();
    let shim = home.dir.path().join("shim");
    std::fs::create_dir_all(&shim).unwrap();
    std::fs::write(
        shim.join("tmux"),
        format!(
            "#!/bin/sh\ncase \" $* \" in *\" new-window \"*) echo 'command too long' >&2; exit 1;; esac\nexec {} \"$@\"\n",
            real.trim()
        ),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(shim.join("tmux"), std::fs::Permissions::from_mode(0o755)).unwrap();
    let path = format!("{}:{}", shim.display(), std::env::var("PATH").unwrap_or_default());
    let id = home.run_json(&["task", "add", "t", "--no-repo", "--profile", "agent"])["id"]
        .as_str()
        .unwrap()
        .to_string();
    let daemon = home.start_with(|command| {
        command.env("PATH", &path);
    });
    failed_at_once_as_ccms_failure(
        &home,
        &daemon,
        &id,
        "ccm could not open the agent's tmux window: tmux new-window",
    )
    .await;
    let alerts = alerts_of(&home, &id).await;
    assert!(alerts.iter().any(|a| a.contains("failed: command too long")), "{alerts:?}");
}

/// A workflow's prompt template makes the prompt too long for the profile's `{prompt}`
/// argument only when the agent starts: the task fails at once, naming the argument and the fix.
#[tokio::test]
async fn a_command_too_long_to_start_fails_the_task_at_once_naming_the_fix() {
    let home = home_with("prompt-argv-launch", "  in-argv:\n    command: [echo, '{prompt}']\n");
    let config = std::fs::read_to_string(home.home().join("config.yaml")).unwrap();
    home.write_config(&format!(
        "{config}workflows:\n  twice:\n    steps:\n      - role: worker\n        prompt: '{{prompt}} {{prompt}} {{prompt}}'\n"
    ));
    let prompt = "y".repeat(60_000);
    let id = home.run_json(&[
        "task",
        "add",
        "t",
        "--no-repo",
        "--profile",
        "in-argv",
        "--workflow",
        "twice",
        "--prompt",
        &prompt,
    ])["id"]
        .as_str()
        .unwrap()
        .to_string();
    let daemon = home.start();
    failed_at_once_as_ccms_failure(
        &home,
        &daemon,
        &id,
        "the command of profile `in-argv` is too long to start: its argument 1 is 180002 bytes",
    )
    .await;
    assert!(!holds_part_of(&daemon.log_text(), &prompt), "the daemon's log holds the prompt");
}
