//! The built-in `gemini` and `codex` profiles with the real Gemini CLI and Codex (installed
//! from npm at the versions `tests/agent-clis/` pins), each pointed at a scripted stand-in of
//! its model API (`ccm_tests::standin`). The agent's `HOME` (and `CODEX_HOME`) is a temporary
//! directory of the test, given to the daemon, whose `PATH` starts with the CLIs' directory.

use std::path::{Path, PathBuf};
use std::time::Duration;

use ccm_tests::standin::{gemini, openai, Standin, Turn};
use ccm_tests::{agent_cli, git_repo, wait_until, Daemon, TestHome, HOLDER_PROFILE};
use serde_json::Value;

/// Generous: a real CLI starts in about 2 s on an idle machine, much slower on a busy one.
const SLOW: Duration = Duration::from_secs(90);

/// Which real CLI a test runs.
#[derive(Clone, Copy, PartialEq)]
enum Cli {
    Gemini,
    Codex,
}

impl Cli {
    fn profile(self) -> &'static str {
        match self {
            Cli::Gemini => "gemini",
            Cli::Codex => "codex",
        }
    }
}

/// A home with a registered git repository, and the agent's own home directory.
struct Setup {
    home: TestHome,
    repo: String,
    agent_home: PathBuf,
}

fn setup(name: &str, cli: Cli) -> Setup {
    let home = TestHome::new(name);
    home.write_config(
        "tasks:\n  retry_base_secs: 0\n  retry_cap_secs: 0\n  max_attempts: 1\nruntime:\n  poll_ms: 50\n",
    );
    let repo = home.work().join("app");
    git_repo(&repo, None);
    let repo = std::fs::canonicalize(&repo).unwrap().to_string_lossy().into_owned();
    home.run_ok(&["context", "add", &repo]);
    let agent_home = home.dir.path().join("agent-home");
    match cli {
        Cli::Gemini => {
            // The API-key auth type (otherwise headless Gemini CLI exits 41) and a fixed model
            // (otherwise it first asks a router model which one to use).
            write(
                &agent_home.join(".gemini/settings.json"),
                r#"{"security": {"auth": {"selectedType": "gemini-api-key"}}, "model": {"name": "gemini-2.5-flash"}}"#,
            );
        }
        Cli::Codex => {}
    }
    Setup { home, repo, agent_home }
}

fn write(path: &Path, text: &str) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, text).unwrap();
}

/// Starts the daemon with the agent's environment: its home, the stand-in's address, and the
/// real CLI first on `PATH`.
fn start(setup: &Setup, cli: Cli, standin: &Standin) -> Daemon {
    let bin = agent_cli(cli.profile());
    let bin_dir = bin.parent().unwrap().to_owned();
    let path = format!("{}:{}", bin_dir.display(), std::env::var("PATH").unwrap_or_default());
    let codex_home = setup.agent_home.join(".codex");
    if cli == Cli::Codex {
        // A model provider at the stand-in; no retries of a 429 (Codex would retry it itself).
        write(
            &codex_home.join("config.toml"),
            &format!(
                "model = \"gpt-5\"\nmodel_provider = \"standin\"\n\n[model_providers.standin]\n\
                 name = \"stand-in\"\nbase_url = \"{}/v1\"\nenv_key = \"STANDIN_API_KEY\"\n\
                 wire_api = \"responses\"\nrequest_max_retries = 0\nstream_max_retries = 0\n",
                standin.url()
            ),
        );
    }
    setup.home.start_with(|command| {
        command
            .env("HOME", &setup.agent_home)
            .env("PATH", &path)
            .env("GOOGLE_GEMINI_BASE_URL", standin.url())
            .env("GEMINI_API_KEY", "standin")
            .env("CODEX_HOME", &codex_home)
            .env("STANDIN_API_KEY", "standin");
    })
}

/// Adds a task with the CLI's built-in profile (the daemon is not running yet, so the stand-in
/// can be scripted with the task's short id before the agent starts).
fn add_task(setup: &Setup, cli: Cli, prompt: &str, verify: &str) -> String {
    // `--prompt=`: a prompt may begin with `-`.
    add_task_with(setup, cli, &[&format!("--prompt={prompt}")], verify)
}

/// [`add_task`] with the prompt given by `prompt_args` (`--prompt-file FILE`, ...).
fn add_task_with(setup: &Setup, cli: Cli, prompt_args: &[&str], verify: &str) -> String {
    let mut args = vec!["task", "add", "a task"];
    args.extend(prompt_args);
    args.extend(["--profile", cli.profile(), "--repo", &setup.repo, "--verify", verify]);
    setup.home.run_json(&args)["id"].as_str().unwrap().to_string()
}

async fn task(daemon: &Daemon, id: &str) -> Value {
    daemon.get(&format!("/api/tasks/{id}")).await.1
}

/// Waits until the task is in `state`, failing with the task's detail, the agent's output and
/// the daemon's log.
async fn wait_state(setup: &Setup, daemon: &Daemon, id: &str, state: &str) -> Value {
    let reached = wait_until(SLOW, || async { task(daemon, id).await["state"] == state }).await;
    let detail = task(daemon, id).await;
    if !reached {
        let outputs: Vec<String> = std::fs::read_dir(setup.home.home().join("agents"))
            .into_iter()
            .flatten()
            .flatten()
            .map(|d| std::fs::read_to_string(d.path().join("output.log")).unwrap_or_default())
            .collect();
        panic!(
            "task never reached {state}: {detail:#}\nagent output:\n{}\n{}",
            outputs.join("\n---\n"),
            daemon.log_text()
        );
    }
    detail
}

/// The names of the task's hook events, in order.
async fn hook_events(daemon: &Daemon, id: &str) -> Vec<String> {
    let (_, events) = daemon.get(&format!("/api/tasks/{id}/events")).await;
    events.as_array().unwrap().iter().map(|e| e["event"].as_str().unwrap().to_string()).collect()
}

fn git(repo: &str, args: &[&str]) -> String {
    let out = std::process::Command::new("git").arg("-C").arg(repo).args(args).output().unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A worker that writes a file, runs the tests and commits, then says it is done.
fn ordinary_work(short: &str) -> Vec<Turn> {
    vec![
        Turn::Write { path: "hello.txt".into(), content: "hello\n".into() },
        Turn::Shell(format!(
            "grep -q hello hello.txt && git add hello.txt && git commit -q -m '[{short}] add hello.txt'"
        )),
        Turn::Say("Added hello.txt and committed it.".into()),
    ]
}

/// Starts the stand-in of `cli`'s model API.
fn standin(cli: Cli, turns: Vec<Turn>) -> Standin {
    match cli {
        Cli::Gemini => gemini::start(turns),
        Cli::Codex => openai::start(turns),
    }
}

/// Runs an ordinary task with `cli`'s built-in profile and checks what the report and the
/// timeline say; returns the task's hook events and the first request the model got.
async fn ordinary_task_completes(name: &str, cli: Cli, prompt: &str) -> (Vec<String>, Value) {
    let (events, requests) =
        ordinary_task_completes_with(name, cli, &[&format!("--prompt={prompt}")]).await;
    (events, requests[0].clone())
}

/// [`ordinary_task_completes`] with the prompt given by `prompt_args`; returns the task's hook
/// events and every request the model got.
async fn ordinary_task_completes_with(
    name: &str,
    cli: Cli,
    prompt_args: &[&str],
) -> (Vec<String>, Vec<Value>) {
    let setup = setup(name, cli);
    let id = add_task_with(&setup, cli, prompt_args, "grep -q hello hello.txt");
    let short = id[..8].to_string();
    let standin = standin(cli, ordinary_work(&short));
    let daemon = start(&setup, cli, &standin);
    let detail = wait_state(&setup, &daemon, &id, "complete").await;
    assert_eq!(standin.turns_left(), 0, "every scripted turn was asked for");

    assert_eq!(detail["runs"][0]["outcome"], "success", "{detail:#}");
    let report = &detail["reports"][0]["summary"];
    let work = &report["work"];
    assert_eq!(work["commits"][0]["subject"], format!("[{short}] add hello.txt"), "{report:#}");
    assert_eq!(work["commits_missing_id"], serde_json::json!([]));
    assert_eq!(report["last_message"], "Added hello.txt and committed it.");
    assert_eq!(report["tool_calls"], 2, "{report:#}");
    let (input, output) = match cli {
        Cli::Gemini => (3 * gemini::PROMPT_TOKENS, 3 * gemini::OUTPUT_TOKENS),
        Cli::Codex => (3 * openai::INPUT_TOKENS, 3 * openai::OUTPUT_TOKENS),
    };
    assert_eq!(report["tokens"]["input"], input, "{report:#}");
    assert_eq!(report["tokens"]["output"], output, "{report:#}");
    // Neither CLI reports a cost: it is unknown, not zero.
    assert_eq!(report["cost_usd"], Value::Null, "{report:#}");
    let branch = format!("ccm/{short}");
    assert!(git(&setup.repo, &["log", "--format=%s", &branch]).contains("add hello.txt"));
    let events = hook_events(&daemon, &id).await;
    if cli == Cli::Gemini {
        gemini_forgets_the_worktree(&setup, &short).await;
    }
    let requests = standin.requests().into_iter().map(|r| r.body).collect();
    (events, requests)
}

/// Once the task's worktree is removed, `~/.gemini` keeps nothing about it (Gemini CLI had
/// recorded it in `projects.json`, `trusted_hooks.json`, `tmp/` and `history/`).
async fn gemini_forgets_the_worktree(setup: &Setup, short: &str) {
    let worktree = setup.home.home().join("worktrees").join(format!("app-{short}"));
    let gemini = setup.agent_home.join(".gemini");
    let left = || {
        let mut left: Vec<String> = ["projects.json", "trusted_hooks.json"]
            .into_iter()
            .filter(|file| {
                let text = std::fs::read_to_string(gemini.join(file)).unwrap_or_default();
                text.contains(&*worktree.to_string_lossy())
            })
            .map(str::to_string)
            .collect();
        left.extend(
            ["tmp", "history"]
                .map(|area| gemini.join(area).join(format!("app-{short}")))
                .into_iter()
                .filter(|dir| dir.exists())
                .map(|dir| dir.display().to_string()),
        );
        if worktree.exists() {
            left.push(worktree.display().to_string());
        }
        left
    };
    let forgotten = wait_until(SLOW, || async { left().is_empty() }).await;
    assert!(forgotten, "left after cleanup: {:?}", left());
}

#[tokio::test]
async fn gemini_worker_edits_tests_and_commits_and_task_completes() {
    let (events, _) =
        ordinary_task_completes("gemini-ordinary", Cli::Gemini, "add hello.txt and commit it")
            .await;
    // Gemini CLI's hooks, in the order it sends them (a tool's BeforeTool/AfterTool pair per call).
    assert_eq!(
        events,
        [
            "SessionStart",
            "BeforeAgent",
            "BeforeTool",
            "AfterTool",
            "BeforeTool",
            "AfterTool",
            "AfterAgent",
            "SessionEnd"
        ],
        "PreCompress (sent before every model call) is not listened to"
    );
}

#[tokio::test]
async fn codex_worker_edits_tests_and_commits_and_task_completes() {
    let (mut events, _) =
        ordinary_task_completes("codex-ordinary", Cli::Codex, "add hello.txt and commit it").await;
    // Codex's notify program (given on its command line) is not awaited, so its
    // `agent-turn-complete` comes at any time after the turn.
    let notified = events.iter().position(|e| e == "agent-turn-complete");
    assert!(notified.is_some(), "{events:?}");
    events.remove(notified.unwrap());
    // Its lifecycle hooks (on its command line too), in the order it sends them: the write is
    // an `apply_patch` Codex applies itself (a PreToolUse `Bash` without a PostToolUse).
    assert_eq!(
        events,
        [
            "SessionStart",
            "UserPromptSubmit",
            "PreToolUse",
            "PreToolUse",
            "PostToolUse",
            "Stop",
            "SessionEnd"
        ]
    );
}

/// Another task owns `shared.txt`; the worker's write of it is refused by ccm's pre-tool hook,
/// and the refusal shows in the report and an alert.
async fn write_to_a_file_another_task_owns_is_denied(name: &str, cli: Cli) {
    let setup = setup(name, cli);
    // The owner: a task whose live agent (one that only holds its task) claimed the file through
    // a hook, with its own credential.
    let config = std::fs::read_to_string(setup.home.home().join("config.yaml")).unwrap();
    setup.home.write_config(&format!("{config}{HOLDER_PROFILE}"));
    let owner = setup.home.run_json(&[
        "task",
        "add",
        "owner of shared.txt",
        "--profile",
        "holder",
        "--repo",
        &setup.repo,
    ]);
    let owner = owner["id"].as_str().unwrap().to_string();
    let turns = vec![
        Turn::Write { path: "shared.txt".into(), content: "theirs\n".into() },
        Turn::Say("I could not write shared.txt.".into()),
    ];
    let standin = standin(cli, turns);
    let daemon = start(&setup, cli, &standin);
    let owner_token = daemon.agent_token(&owner).await;
    let claim = serde_json::json!({
        "session_id": "owner", "cwd": setup.repo, "hook_event_name": "PreToolUse", "tool_name": "Write",
        "tool_input": { "file_path": format!("{}/shared.txt", setup.repo), "content": "mine" }
    });
    let mut hook = setup
        .home
        .ccm()
        .args(["hook", "--agent", "claude"])
        .env("CCM_AGENT_TOKEN", &owner_token)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write as _;
    hook.stdin.take().unwrap().write_all(claim.to_string().as_bytes()).unwrap();
    let answer = hook.wait_with_output().unwrap();
    assert!(answer.status.success() && !String::from_utf8_lossy(&answer.stdout).contains("deny"));
    let claims = setup.home.run_json(&["claims"]);
    assert_eq!(claims["claims"][0]["task_id"], owner.as_str(), "{claims:#}");

    let id = add_task(&setup, cli, "write shared.txt", "true");
    let detail = wait_state(&setup, &daemon, &id, "complete").await;

    // The model was told why (the deny reason is in the tool result it got back).
    let last = standin.requests().last().unwrap().body.to_string();
    assert!(last.contains("is owned by task"), "{last}");
    let worktree = setup.home.home().join("worktrees").join(format!("app-{}", &id[..8]));
    assert!(!worktree.join("shared.txt").exists(), "the write did not happen");
    let report = &detail["reports"][0]["summary"];
    // The refused write is a change request, pending the operator's decision.
    let denied = &report["denied_writes"];
    assert_eq!(denied.as_array().map(Vec::len), Some(1), "{report:#}");
    assert_eq!(denied[0]["path"], "shared.txt", "{report:#}");
    assert_eq!(denied[0]["owner"], owner.as_str(), "{report:#}");
    let tool = match cli {
        Cli::Gemini => "write_file",
        Cli::Codex => "Bash",
    };
    assert_eq!(denied[0]["tool"], tool, "{report:#}");
    assert_eq!(denied[0]["state"], "pending", "{report:#}");
    assert!(denied[0]["change_request"].is_string(), "{report:#}");
    let dump = setup.home.run_json(&["dump-state"]);
    let alerts: Vec<&Value> = dump["alerts"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|a| a["reason"] == "write_denied" && a["task_id"] == id.as_str())
        .collect();
    assert_eq!(alerts.len(), 1, "{dump:#}");
    assert!(alerts[0]["message"].as_str().unwrap().contains("shared.txt"), "{:#}", alerts[0]);
}

#[tokio::test]
async fn gemini_write_to_a_file_another_task_owns_is_denied_and_reported() {
    write_to_a_file_another_task_owns_is_denied("gemini-denied", Cli::Gemini).await;
}

#[tokio::test]
async fn codex_write_to_a_file_another_task_owns_is_denied_and_reported() {
    write_to_a_file_another_task_owns_is_denied("codex-denied", Cli::Codex).await;
}

/// A prompt beginning with `-` reaches the model as the prompt, not as an option of the CLI.
async fn prompt_beginning_with_a_dash_is_a_prompt(name: &str, cli: Cli) {
    let prompt = "--help is not what I want: add hello.txt and commit it";
    let (_, first) = ordinary_task_completes(name, cli, prompt).await;
    assert!(first.to_string().contains(prompt), "{first}");
}

#[tokio::test]
async fn gemini_prompt_beginning_with_a_dash_runs_as_a_prompt() {
    prompt_beginning_with_a_dash_is_a_prompt("gemini-dash", Cli::Gemini).await;
}

#[tokio::test]
async fn codex_prompt_beginning_with_a_dash_runs_as_a_prompt() {
    prompt_beginning_with_a_dash_is_a_prompt("codex-dash", Cli::Codex).await;
}

/// A prompt of a megabyte (far over what one argument or tmux's command line can hold) reaches
/// the model whole, on the CLI's stdin, and the task completes.
async fn megabyte_prompt_reaches_the_model(name: &str, cli: Cli) {
    let prompt = crate::prompts::megabyte_prompt();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("prompt.md");
    std::fs::write(&file, &prompt).unwrap();
    let (_, requests) =
        ordinary_task_completes_with(name, cli, &["--prompt-file", &file.to_string_lossy()]).await;
    let asked = requests.iter().any(|body| body.to_string().contains(&prompt));
    assert!(asked, "the model never got the whole prompt (its tail: PROMPT-TAIL)");
}

#[tokio::test]
async fn gemini_reads_a_megabyte_prompt_on_stdin_and_the_task_completes() {
    megabyte_prompt_reaches_the_model("gemini-megabyte", Cli::Gemini).await;
}

#[tokio::test]
async fn codex_reads_a_megabyte_prompt_on_stdin_and_the_task_completes() {
    megabyte_prompt_reaches_the_model("codex-megabyte", Cli::Codex).await;
}

/// The model API answers 429; the task waits for the quota, until the time the answer gives
/// (returned: how long it waits, in seconds).
async fn rate_limit_waits_for_quota(name: &str, cli: Cli) -> u64 {
    let setup = setup(name, cli);
    let id = add_task(&setup, cli, "add hello.txt", "true");
    let standin = standin(cli, vec![Turn::RateLimited { retry_after_secs: 1800 }]);
    let daemon = start(&setup, cli, &standin);
    let detail = wait_state(&setup, &daemon, &id, "waiting_quota").await;
    assert_eq!(detail["runs"][0]["outcome"], "quota", "{detail:#}");
    let time = |value: &Value| {
        humantime::parse_rfc3339(value.as_str().unwrap_or_default())
            .unwrap_or_else(|e| panic!("{e}: {detail:#}"))
    };
    let since = time(&detail["log"].as_array().unwrap().last().unwrap()["at"]);
    time(&detail["wake_at"]).duration_since(since).unwrap().as_secs()
}

#[tokio::test]
async fn gemini_rate_limit_waits_for_quota_until_the_retry_delay() {
    let waits = rate_limit_waits_for_quota("gemini-429", Cli::Gemini).await;
    // RetryInfo's retryDelay (1800 s) reaches ccm through Gemini CLI's error message.
    assert!((1795..=1800).contains(&waits), "waits {waits} s");
}

#[tokio::test]
async fn codex_rate_limit_waits_for_quota() {
    let waits = rate_limit_waits_for_quota("codex-429", Cli::Codex).await;
    // Codex 0.171 reports only "exceeded retry limit, last status: 429 Too Many Requests": the
    // answer's retry-after does not reach ccm, so the default wait (an hour) applies.
    assert!((3595..=3600).contains(&waits), "waits {waits} s");
}

#[tokio::test]
async fn gemini_exit_41_fails_the_task_at_once_with_its_cause() {
    let setup = setup("gemini-41", Cli::Gemini);
    // Retries allowed, yet none happens: no retry fixes authentication.
    setup.home.write_config(
        "tasks:\n  retry_base_secs: 0\n  retry_cap_secs: 0\n  max_attempts: 3\nruntime:\n  poll_ms: 50\n",
    );
    // No auth type selected: Gemini CLI picks one it cannot use headless and exits 41.
    write(&setup.agent_home.join(".gemini/settings.json"), "{}");
    let id = add_task(&setup, Cli::Gemini, "add hello.txt", "true");
    let standin = standin(Cli::Gemini, vec![]);
    let daemon = start(&setup, Cli::Gemini, &standin);
    let detail = wait_state(&setup, &daemon, &id, "failed").await;
    assert_eq!(detail["runs"].as_array().unwrap().len(), 1, "{detail:#}");
    let log = detail["log"].as_array().unwrap();
    let ended = log.iter().find(|e| e["from_state"] == "executing").unwrap();
    assert_eq!(
        ended["reason"],
        "worker exited with status 41 (gemini cannot authenticate): Invalid auth method selected."
    );
    assert!(standin.requests().is_empty());
}
