//! What ccm answers a hook event: strict file ownership for writes, and whether an approval
//! rule makes the tool call wait for a human. [`verdict`] decides, for the daemon's
//! `POST /api/hooks` and the direct path of `ccm hook` alike; [`Verdict::output`] words it.

use std::path::{Path, PathBuf};

use ccm_schema::Task;
use serde_json::Value;

use super::event::{HookEvent, Kind};
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
/// (the file is claimed otherwise), `Ask` when an approval rule holds it (`workdir` is the
/// agent's working directory), else `Pass`.
pub async fn verdict(
    store: &Store,
    home: &Home,
    task: &Task,
    event: &HookEvent,
    approvals: &ApprovalConfig,
    workdir: Option<&str>,
) -> Result<Verdict> {
    if let Some(reason) = check_ownership(store, home, task, event).await? {
        return Ok(Verdict::Deny(reason));
    }
    if needs_approval(approvals, event, workdir) {
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

/// The directories a task's file paths are relative to: its worktree, then the checkout of its
/// repository.
async fn roots(store: &Store, task: &Task) -> Result<Vec<PathBuf>> {
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

/// Whether an approval rule makes this tool call wait for a human. `workdir` is the agent's
/// working directory, for `writes_outside_worktree`.
pub fn needs_approval(
    approvals: &ApprovalConfig,
    event: &HookEvent,
    workdir: Option<&str>,
) -> bool {
    if !event.kind.is_gate() {
        return false;
    }
    approvals.rules.iter().any(|rule| {
        let tool_matches = rule.tools.is_empty()
            || event.tool.as_deref().is_some_and(|t| rule.tools.iter().any(|r| r == t));
        let command_matches = match &rule.command {
            None => true,
            Some(pattern) => event.command.as_deref().is_some_and(|c| pattern.is_match(c)),
        };
        let outside_matches = !rule.writes_outside_worktree
            || (event.writes
                && event.paths.iter().any(|p| {
                    workdir
                        .or(event.cwd.as_deref())
                        .is_none_or(|root| !Path::new(p).starts_with(root))
                }));
        tool_matches && command_matches && outside_matches
    })
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
        let verdict = |task, event, approvals| verdict(&store, &home, task, event, approvals, None);

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
        assert!(!needs_approval(&ApprovalConfig::default(), &bash, None));
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
        assert!(needs_approval(&policy, &push, None));
        assert!(!needs_approval(&policy, &status, None));
        assert!(!needs_approval(&policy, &after, None), "only gates wait");
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
        assert!(!needs_approval(&policy, &inside, Some("/w/t1")));
        assert!(needs_approval(&policy, &outside, Some("/w/t1")));
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
