//! What ccm answers a hook event: strict file ownership for writes, and whether an approval
//! rule makes the tool call wait for a human. [`verdict`] decides, for the daemon's
//! `POST /api/hooks` and the direct path of `ccm hook` alike; [`Verdict::output`] words it.

use std::path::{Path, PathBuf};

use ccm_schema::Task;
use serde_json::Value;

use super::event::{HookEvent, Kind};
use super::shell;
use crate::config::{Answer, ApprovalConfig};
use crate::home::Home;
use crate::store::{Ownership, Result, Store};

/// What ccm answers a hook event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Nothing to say: the CLI goes on as it would.
    Pass,
    Allow(String),
    Deny(String),
    /// An approval rule holds the tool call: a human answers (or the configured default, when
    /// nobody can), then [`Verdict::approved`] gives the verdict.
    Ask,
}

impl Verdict {
    /// The verdict of an answered approval (or of the configured default).
    pub fn approved(answer: Answer, reason: String) -> Verdict {
        match answer {
            Answer::Allow => Verdict::Allow(reason),
            Answer::Deny => Verdict::Deny(reason),
        }
    }

    /// The verdict in the sending CLI's JSON format; `None` when there is nothing to say (or
    /// the event is not one the CLI takes an answer to).
    pub fn output(&self, event: &HookEvent) -> Option<Value> {
        match self {
            Verdict::Allow(reason) => event.decision_output(true, reason),
            Verdict::Deny(reason) => event.decision_output(false, reason),
            Verdict::Pass | Verdict::Ask => None,
        }
    }
}

/// Decides what ccm answers the task's event: a deny when it writes a file another task owns
/// (the file is claimed otherwise), `Ask` when an approval rule holds it (judged against
/// `worktree`, the working directory the runtime recorded for the agent that sent it; see
/// [`needs_approval`]), else `Pass`.
pub async fn verdict(
    store: &Store,
    home: &Home,
    task: &Task,
    event: &HookEvent,
    approvals: &ApprovalConfig,
    worktree: &Path,
) -> Result<Verdict> {
    if let Some(reason) = check_ownership(store, home, task, event).await? {
        return Ok(Verdict::Deny(reason));
    }
    if needs_approval(approvals, event, worktree) {
        return Ok(Verdict::Ask);
    }
    Ok(Verdict::Pass)
}

/// Refuses a write to a file another active task owns (or that the project's config
/// pre-assigns to another workflow or task); claims it otherwise. Returns the reason of a
/// refusal.
async fn check_ownership(
    store: &Store,
    home: &Home,
    task: &Task,
    event: &HookEvent,
) -> Result<Option<String>> {
    if !(event.kind == Kind::PreTool && event.writes) || event.paths.is_empty() {
        return Ok(None);
    }
    let roots = roots(store, task).await?;
    let repo = task
        .repo
        .clone()
        .or_else(|| roots.first().map(|r| r.to_string_lossy().into_owned()))
        .unwrap_or_default();
    let ownership = match roots.last() {
        Some(checkout) => match crate::config::load_checked(store, home.root(), checkout).await {
            Ok(config) => config.ownership,
            Err(problem) => {
                return Ok(Some(format!(
                    "{problem}: file ownership cannot be checked, so writes are refused until it is fixed"
                )))
            }
        },
        None => Default::default(),
    };
    for path in &event.paths {
        let relative = relative(Path::new(path), &roots, event.cwd.as_deref());
        let preassigned = preassigned_owner(&ownership, task, &relative);
        if let Ownership::Taken { reason } = store
            .claim(task, &repo, &relative, preassigned.as_deref(), event.tool.as_deref())
            .await?
        {
            return Ok(Some(reason));
        }
    }
    Ok(None)
}

/// Where a file an agent names lies for ownership: the task's repository key, the path
/// relative to it, and the owner a glob of the project's config pre-assigns it to (unless the
/// task itself). `Err` says why ownership cannot be judged (the project's config is broken).
pub(crate) async fn locate(
    store: &Store,
    home: &Path,
    task: &Task,
    file: &str,
) -> Result<std::result::Result<(String, String, Option<String>), String>> {
    let roots = roots(store, task).await?;
    let repo = task
        .repo
        .clone()
        .or_else(|| roots.first().map(|r| r.to_string_lossy().into_owned()))
        .unwrap_or_default();
    let ownership = match roots.last() {
        Some(checkout) => match crate::config::load_checked(store, home, checkout).await {
            Ok(config) => config.ownership,
            Err(problem) => return Ok(Err(problem)),
        },
        None => Default::default(),
    };
    let relative = relative(Path::new(file), &roots, None);
    let preassigned = preassigned_owner(&ownership, task, &relative);
    Ok(Ok((repo, relative, preassigned)))
}

/// The directories a task's file paths are relative to: its worktree, then the checkout of its
/// repository.
pub(crate) async fn roots(store: &Store, task: &Task) -> Result<Vec<PathBuf>> {
    let mut roots = Vec::new();
    if let Some(saved) = store.worktree(task.id).await? {
        roots.push(saved.worktree.path);
    }
    if let Some(repo) = &task.repo {
        if let Some(context) = store
            .contexts()
            .await?
            .into_iter()
            .find(|c| c.repo_url.as_deref() == Some(repo.as_str()) || c.path == *repo)
        {
            roots.push(PathBuf::from(context.path));
        }
    }
    Ok(roots)
}

/// `path` relative to the first root (or the event's cwd) that contains it; as given otherwise.
fn relative(path: &Path, roots: &[PathBuf], cwd: Option<&str>) -> String {
    roots
        .iter()
        .map(PathBuf::as_path)
        .chain(cwd.map(Path::new))
        .find_map(|root| path.strip_prefix(root).ok())
        .unwrap_or(path)
        .to_string_lossy()
        .into_owned()
}

/// The owner a glob of `ownership` pre-assigns `path` to, unless that owner is the task itself
/// (its workflow, or a prefix of its id).
fn preassigned_owner(
    ownership: &std::collections::BTreeMap<String, Vec<String>>,
    task: &Task,
    path: &str,
) -> Option<String> {
    ownership
        .iter()
        .filter(|(owner, _)| {
            task.workflow.as_deref() != Some(owner.as_str())
                && !task.id.to_string().starts_with(owner.as_str())
        })
        .find(|(_, globs)| {
            globs
                .iter()
                .filter_map(|g| globset::Glob::new(g).ok())
                .any(|g| g.compile_matcher().is_match(path))
        })
        .map(|(owner, _)| owner.clone())
}

/// Whether an approval rule makes this tool call wait for a human: the one place that decides
/// it. `worktree` is the agent's working directory as the runtime recorded it (its task's
/// worktree); the directory the event says it was sent from never makes a call pass.
///
/// A `command:` pattern is matched against the whole command line and against each of its
/// simple commands as [`shell::simple_commands`] normalizes them. `writes_outside_worktree`
/// judges the files a file tool writes and the obvious write targets of a shell command
/// ([`shell::Simple::writes`]) with [`outside`].
pub fn needs_approval(approvals: &ApprovalConfig, event: &HookEvent, worktree: &Path) -> bool {
    if !event.kind.is_gate() || approvals.rules.is_empty() {
        return false;
    }
    let home = std::env::var_os("HOME").map(PathBuf::from);
    let place = Place { worktree, cwd: event.cwd.as_deref().map(Path::new), home: home.as_deref() };
    let simple = std::cell::OnceCell::new();
    let simple = || {
        simple.get_or_init(|| {
            event.command.as_deref().map(shell::simple_commands).unwrap_or_default()
        })
    };
    approvals.rules.iter().any(|rule| {
        let tool_matches = rule.tools.is_empty()
            || event.tool.as_deref().is_some_and(|t| rule.tools.iter().any(|r| r == t));
        let command_matches = match &rule.command {
            None => true,
            Some(pattern) => event.command.as_deref().is_some_and(|c| {
                pattern.is_match(c) || simple().iter().any(|s| pattern.is_match(&s.text))
            }),
        };
        tool_matches
            && command_matches
            && (!rule.writes_outside_worktree || writes_outside(event, simple(), &place))
    })
}

/// Where a tool call's paths are judged from.
struct Place<'a> {
    /// The agent's worktree, as the runtime recorded it.
    worktree: &'a Path,
    /// The directory the event says it was sent from: a shell's relative targets are judged
    /// from it too (a shell may have moved), but it can only make a call ask, never pass.
    cwd: Option<&'a Path>,
    /// What `~` stands for; unknown, a path under `~` counts as outside.
    home: Option<&'a Path>,
}

/// Whether the call writes outside the worktree: a file tool's paths (relative ones are taken
/// from the worktree), or a shell command's obvious targets (relative ones from the worktree
/// and from the event's `cwd`, or from where a `cd` of the line moved; a target named by an
/// expansion, or after a `cd` to one, counts as outside).
fn writes_outside(event: &HookEvent, simple: &[shell::Simple], place: &Place) -> bool {
    if event.writes
        && event.paths.iter().any(|p| outside(p, place.worktree, place.worktree, place.home))
    {
        return true;
    }
    // The directories relative targets are taken from; None once a `cd` went somewhere unknown.
    let mut bases: Option<Vec<PathBuf>> =
        Some(std::iter::once(place.worktree).chain(place.cwd).map(Path::to_path_buf).collect());
    for command in simple {
        for target in &command.writes {
            let shell::Target::Path(path) = target else { return true };
            if harmless(path) {
                continue;
            }
            let from_home_or_root = path.starts_with('/') || path == "~" || path.starts_with("~/");
            let held = match &bases {
                _ if from_home_or_root => outside(path, place.worktree, place.worktree, place.home),
                Some(bases) => bases.iter().any(|b| outside(path, b, place.worktree, place.home)),
                None => true,
            };
            if held {
                return true;
            }
        }
        if let Some(dir) = &command.chdir {
            bases = match (dir, bases) {
                (shell::Target::Path(dir), Some(bases)) => bases
                    .iter()
                    .map(|base| absolute(dir, base, place.home))
                    .collect::<Option<Vec<_>>>(),
                _ => None,
            };
        }
    }
    false
}

/// Files a shell writes to that are not files: `/dev/null`, the terminal, the standard streams.
fn harmless(path: &str) -> bool {
    matches!(path, "/dev/null" | "/dev/stdout" | "/dev/stderr" | "/dev/tty")
        || path.strip_prefix("/dev/fd/").is_some_and(|fd| fd.bytes().all(|b| b.is_ascii_digit()))
}

/// Whether `path` leads outside `worktree` once resolved as the system would write it: `~`
/// is `home`, a relative path is taken from `base`, and symbolic links (of the worktree too)
/// and `..` are followed; parts that do not exist yet are taken as they are written.
pub fn outside(path: &str, base: &Path, worktree: &Path, home: Option<&Path>) -> bool {
    let Some(path) = absolute(path, base, home) else { return true };
    !resolve(&path).starts_with(resolve(worktree))
}

/// `path` made absolute: `~` and `~/...` from `home`, a relative path from `base`. None for a
/// path under `~` when the home directory is unknown.
fn absolute(path: &str, base: &Path, home: Option<&Path>) -> Option<PathBuf> {
    let under_home = if path == "~" { Some("") } else { path.strip_prefix("~/") };
    Some(match under_home {
        Some(rest) => home?.join(rest),
        None => base.join(path),
    })
}

/// An absolute `path` with its symbolic links followed (at most 40, as Linux does) and `.` and
/// `..` taken away, component by component as the system walks it; a part that does not exist
/// is kept as written.
fn resolve(path: &Path) -> PathBuf {
    use std::path::Component;
    let mut resolved = PathBuf::from("/");
    // The components still to walk, the next one last.
    let mut pending: Vec<std::ffi::OsString> =
        path.components().rev().map(|c| c.as_os_str().to_os_string()).collect();
    let mut links = 0;
    while let Some(part) = pending.pop() {
        match Path::new(&part).components().next() {
            Some(Component::RootDir | Component::Prefix(_)) => resolved = PathBuf::from(&part),
            Some(Component::ParentDir) => {
                resolved.pop();
            }
            Some(Component::Normal(name)) => {
                let next = resolved.join(name);
                match std::fs::read_link(&next) {
                    Ok(target) if links < 40 => {
                        links += 1;
                        // An absolute target starts again from `/` (its first component).
                        pending.extend(
                            target.components().rev().map(|c| c.as_os_str().to_os_string()),
                        );
                    }
                    _ => resolved = next,
                }
            }
            Some(Component::CurDir) | None => {}
        }
    }
    resolved
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ApprovalRule;

    fn event(json: &str) -> HookEvent {
        HookEvent::parse(None, json.as_bytes())
    }

    fn rules(rules: Vec<ApprovalRule>) -> ApprovalConfig {
        ApprovalConfig { rules, ..ApprovalConfig::default() }
    }

    #[tokio::test]
    async fn the_verdict_denies_a_write_to_another_tasks_file_and_asks_when_a_rule_holds_the_call()
    {
        let dir = tempfile::tempdir().unwrap();
        let home = Home::at(dir.path());
        let store = Store::open(&home.db_file(), "node").await.unwrap();
        let config = crate::config::Config::load(dir.path(), None).unwrap();
        let new = |title: &str| crate::store::NewTask { title: title.into(), ..Default::default() };
        let first = store.create_task(new("first"), &config, "test").await.unwrap();
        let second = store.create_task(new("second"), &config, "test").await.unwrap();
        let write = event(
            r#"{"hook_event_name":"PreToolUse","cwd":"/w","tool_name":"Write","tool_input":{"file_path":"/w/src/a.rs"}}"#,
        );
        let bash = event(
            r#"{"hook_event_name":"PreToolUse","tool_name":"Bash","tool_input":{"command":"git push"}}"#,
        );
        let none = ApprovalConfig::default();
        let bash_held =
            rules(vec![ApprovalRule { tools: vec!["Bash".into()], ..Default::default() }]);
        let worktree = dir.path().join("w");
        let verdict =
            |task, event, approvals| verdict(&store, &home, task, event, approvals, &worktree);

        assert_eq!(
            verdict(&first, &write, &none).await.unwrap(),
            Verdict::Pass,
            "a free file is claimed"
        );
        assert_eq!(
            verdict(&first, &write, &none).await.unwrap(),
            Verdict::Pass,
            "its owner writes again"
        );
        let denied = verdict(&second, &write, &none).await.unwrap();
        let Verdict::Deny(reason) = &denied else { panic!("expected a deny, got {denied:?}") };
        assert!(reason.starts_with("src/a.rs is owned by task"), "{reason}");
        assert_eq!(verdict(&second, &bash, &bash_held).await.unwrap(), Verdict::Ask);
        assert_eq!(verdict(&second, &bash, &none).await.unwrap(), Verdict::Pass);

        // Worded in the sending CLI's format; nothing to say is no output.
        let output = denied.output(&write).unwrap();
        assert_eq!(output["hookSpecificOutput"]["permissionDecision"], "deny");
        assert_eq!(output["hookSpecificOutput"]["permissionDecisionReason"], reason.as_str());
        let allowed = Verdict::approved(Answer::Allow, "allow by cli through ccm".into());
        assert_eq!(allowed, Verdict::Allow("allow by cli through ccm".into()));
        assert_eq!(
            allowed.output(&bash).unwrap()["hookSpecificOutput"]["permissionDecision"],
            "allow"
        );
        assert_eq!(Verdict::Pass.output(&bash), None);
        assert_eq!(Verdict::Ask.output(&bash), None);
    }

    #[test]
    fn default_policy_approves_nothing() {
        let bash = event(
            r#"{"hook_event_name":"PreToolUse","tool_name":"Bash","tool_input":{"command":"rm -rf /"}}"#,
        );
        assert!(!needs_approval(&ApprovalConfig::default(), &bash, Path::new("/w")));
    }

    #[test]
    fn bash_rule_matches_commands_by_pattern() {
        let policy = rules(vec![ApprovalRule {
            tools: vec!["Bash".into()],
            command: Some("^git push".parse().unwrap()),
            ..Default::default()
        }]);
        let push = event(
            r#"{"hook_event_name":"PreToolUse","tool_name":"Bash","tool_input":{"command":"git push origin main"}}"#,
        );
        let status = event(
            r#"{"hook_event_name":"PreToolUse","tool_name":"Bash","tool_input":{"command":"git status"}}"#,
        );
        let after = event(
            r#"{"hook_event_name":"PostToolUse","tool_name":"Bash","tool_input":{"command":"git push"}}"#,
        );
        let w = Path::new("/w");
        assert!(needs_approval(&policy, &push, w));
        assert!(!needs_approval(&policy, &status, w));
        assert!(!needs_approval(&policy, &after, w), "only gates wait");
    }

    #[test]
    fn writes_outside_the_worktree_need_approval() {
        let policy =
            rules(vec![ApprovalRule { writes_outside_worktree: true, ..Default::default() }]);
        let inside = event(
            r#"{"hook_event_name":"PreToolUse","tool_name":"Write","tool_input":{"file_path":"/w/t1/src/a.rs"}}"#,
        );
        let outside = event(
            r#"{"hook_event_name":"PreToolUse","tool_name":"Write","tool_input":{"file_path":"/etc/hosts"}}"#,
        );
        assert!(!needs_approval(&policy, &inside, Path::new("/w/t1")));
        assert!(needs_approval(&policy, &outside, Path::new("/w/t1")));
    }

    fn outside_only() -> ApprovalConfig {
        rules(vec![ApprovalRule { writes_outside_worktree: true, ..Default::default() }])
    }

    fn write(kind: &str, cwd: &str, path: &str) -> HookEvent {
        event(&serde_json::json!({"hook_event_name": kind, "cwd": cwd, "tool_name": "Write", "tool_input": {"file_path": path}}).to_string())
    }

    #[test]
    fn an_events_own_cwd_never_lets_a_write_outside_the_worktree_pass() {
        let worktree = Path::new("/w/t1");
        for cwd in ["/tmp", "/", "/w/t1"] {
            for kind in ["PreToolUse", "PermissionRequest"] {
                let event = write(kind, cwd, "/tmp/c1.txt");
                assert!(needs_approval(&outside_only(), &event, worktree), "{kind} from {cwd}");
            }
        }
        // The event's cwd does not make a write inside the worktree ask either.
        assert!(!needs_approval(
            &outside_only(),
            &write("PreToolUse", "/tmp", "/w/t1/a.rs"),
            worktree
        ));
    }

    #[test]
    fn symlinks_and_dot_dots_are_followed_before_judging_a_path() {
        let dir = tempfile::tempdir().unwrap();
        let worktree = dir.path().join("wt");
        let away = dir.path().join("away");
        std::fs::create_dir_all(worktree.join("src")).unwrap();
        std::fs::create_dir_all(&away).unwrap();
        std::os::unix::fs::symlink(&away, worktree.join("escape")).unwrap();
        std::os::unix::fs::symlink(dir.path().join("nowhere/new.txt"), worktree.join("dangling"))
            .unwrap();
        std::os::unix::fs::symlink("../../away/x", worktree.join("src/relative")).unwrap();
        std::os::unix::fs::symlink("src", worktree.join("inner")).unwrap();
        std::os::unix::fs::symlink(&worktree, dir.path().join("wt-link")).unwrap();
        let w = worktree.to_str().unwrap();
        let check = |path: String, expected: bool| {
            assert_eq!(outside(&path, &worktree, &worktree, None), expected, "{path}");
        };
        check(format!("{w}/escape/a.txt"), true);
        check(format!("{w}/dangling"), true);
        check(format!("{w}/src/relative"), true);
        check(format!("{w}/src/../../away/a.txt"), true);
        check(format!("{w}/../away/a.txt"), true);
        check("src/../../away/a.txt".into(), true);
        check(format!("{w}/inner/a.rs"), false);
        check(format!("{w}/src/new/../a.rs"), false);
        check(format!("{w}/not-yet/deeper/a.rs"), false);
        // A worktree named through a link holds what it holds.
        let linked = dir.path().join("wt-link");
        assert!(!outside(&format!("{w}/src/a.rs"), &linked, &linked, None));
        assert!(!outside("src/a.rs", &linked, &linked, None));
        let event = write("PreToolUse", w, &format!("{w}/escape/a.txt"));
        assert!(needs_approval(&outside_only(), &event, &worktree));
    }

    #[test]
    fn relative_paths_are_inside_and_home_is_expanded() {
        let dir = tempfile::tempdir().unwrap();
        let home = dir.path();
        let worktree = home.join(".ccm-global/worktrees/app-1");
        std::fs::create_dir_all(&worktree).unwrap();
        assert!(!outside("src/main.rs", &worktree, &worktree, Some(home)));
        assert!(!outside("./a.txt", &worktree, &worktree, Some(home)));
        assert!(!outside("~/.ccm-global/worktrees/app-1/a.txt", &worktree, &worktree, Some(home)));
        assert!(outside("~/.bashrc", &worktree, &worktree, Some(home)));
        assert!(outside("~", &worktree, &worktree, Some(home)));
        assert!(outside("~/a", &worktree, &worktree, None), "an unknown home is outside");
        // Gemini CLI sends paths relative to its project: no approval needed.
        let gemini = event(
            r#"{"hook_event_name":"BeforeTool","cwd":"/elsewhere","tool_name":"write_file","tool_input":{"file_path":"src/main.rs"}}"#,
        );
        assert!(!needs_approval(&outside_only(), &gemini, &worktree));
    }

    fn bash(command: &str) -> HookEvent {
        event(&serde_json::json!({"hook_event_name": "PreToolUse", "cwd": "/w/t1", "tool_name": "Bash", "tool_input": {"command": command}}).to_string())
    }

    #[test]
    fn command_rules_match_every_spelling_of_the_command() {
        let policy = rules(vec![ApprovalRule {
            tools: vec!["Bash".into()],
            command: Some("^git push".parse().unwrap()),
            ..Default::default()
        }]);
        let w = Path::new("/w/t1");
        for held in [
            "git push",
            "  git push",
            "env git push",
            "VAR=1 git push",
            "true && git push",
            "git -C dir push",
            "/usr/bin/git push",
            "echo done\ngit push",
            "cd x; git status | cat; git push --force",
            "sh -c 'git push'",
            "echo $(git push)",
        ] {
            let command = held.replace("\\n", "\n");
            assert!(needs_approval(&policy, &bash(&command), w), "{command:?} is not held");
        }
        for free in ["git status", "echo git push", "git commit -m 'git push'", "gitpush"] {
            assert!(!needs_approval(&policy, &bash(free), w), "{free:?} is held");
        }
    }

    #[test]
    fn shell_commands_writing_outside_the_worktree_need_approval() {
        let dir = tempfile::tempdir().unwrap();
        let worktree = dir.path().join("wt");
        std::fs::create_dir_all(&worktree).unwrap();
        let w = worktree.to_str().unwrap();
        let at = |cwd: &str, command: &str| {
            event(&serde_json::json!({"hook_event_name": "PreToolUse", "cwd": cwd, "tool_name": "Bash", "tool_input": {"command": command}}).to_string())
        };
        let held = |cwd: &str, command: &str| {
            needs_approval(&outside_only(), &at(cwd, command), &worktree)
        };
        for command in [
            "echo x > /tmp/out",
            "echo x >> ../sibling.txt",
            "make 2>&1 | tee /tmp/log",
            "cp a.txt /etc/",
            "mv -t /tmp a b",
            "touch ~/.profile",
            "rm -rf /tmp/x",
            "cd /tmp && touch x",
            "cd \"$SOMEWHERE\" && echo x > y",
            "echo x > \"$OUT\"",
            "bash -c 'echo x > /tmp/inner'",
        ] {
            assert!(held(w, command), "{command:?} writes outside unasked");
        }
        for command in [
            "echo x > out.txt",
            &format!("echo x > {w}/out.txt"),
            "cargo build 2>/dev/null >&2",
            "cd \"$SOMEWHERE\" && make 2>/dev/null",
            "mkdir -p target/x && cp a b",
            "cat < /etc/hosts | grep x",
            "cd src && touch lib.rs",
            "git status",
        ] {
            assert!(!held(w, command), "{command:?} asks");
        }
        // The event's cwd may make a relative target ask, never pass.
        assert!(held("/tmp", "echo x > out.txt"));
        assert!(held("/tmp", "echo x > /tmp/out.txt"));
    }

    #[test]
    fn paths_are_made_relative_to_the_first_root_that_holds_them() {
        let roots = [PathBuf::from("/wt/app-1"), PathBuf::from("/src/app")];
        assert_eq!(relative(Path::new("/src/app/lib.rs"), &roots, None), "lib.rs");
        assert_eq!(relative(Path::new("/wt/app-1/a/b.rs"), &roots, None), "a/b.rs");
        assert_eq!(relative(Path::new("/tmp/x/c.rs"), &roots, Some("/tmp/x")), "c.rs");
        assert_eq!(relative(Path::new("/else/d.rs"), &roots, None), "/else/d.rs");
    }
}
