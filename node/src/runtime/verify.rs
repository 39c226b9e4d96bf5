//! The end of a worker: its outcome, and the verification gate.

use std::path::Path;
use std::time::Duration;

use ccm_schema::{Agent, FailureClass, Severity, Task, TaskEvent, Timestamp};

use super::outcome::{classify, Classified, WorkerEnd};
use super::{Result, Runtime};
use crate::agents::parse::{OutputFormat, OutputSummary};
use crate::store::AttemptEnd;
use crate::text::tail;

/// Longest verify output kept with an attempt (its end is kept).
const VERIFY_OUTPUT_LIMIT: usize = 16 * 1024;

impl Runtime {
    /// The worker is gone: a usage limit, a crash, or the verification gate.
    pub(super) async fn finish_worker(&self, task: &Task, agent: &Agent) -> Result<()> {
        let (summary, output) = self.summary_and_output(agent).await;
        let last_message = summary.last_message.clone();
        if let Some(handoff) = self.take_handoff(agent).await? {
            return self.finish_handoff(task, agent, &handoff, last_message.as_deref()).await;
        }
        let policy = self.policy();
        if !summary.permission_denials.is_empty() {
            let denied: Vec<String> =
                summary.permission_denials.iter().map(ToString::to_string).collect();
            let message = format!(
                "task {} ({}): the agent was denied {} tool call(s): {}",
                task.short_id(),
                task.title,
                denied.len(),
                denied.join("; ")
            );
            self.store
                .alert(Some(task.id), Severity::Warning, "permission_denied", &message)
                .await?;
        }
        let profile = self.profile(&agent.profile);
        let profile = profile.as_ref();
        let end = WorkerEnd {
            status: agent.status,
            exit_code: agent.exit_code,
            format: profile.map_or(OutputFormat::Plain, |p| p.output),
            summary: &summary,
            output: &output,
            profile: &agent.profile,
            program: profile.and_then(|p| p.command.first()).map(String::as_str),
        };
        if let Classified::Ends { outcome, event, reason } = classify(&end, Timestamp::now()) {
            let end = AttemptEnd { outcome, verify_output: None, last_message };
            self.store.end_attempt(task.id, &end, event, &reason, policy).await?;
            return Ok(());
        }

        if self.config().coordination.resume_parent {
            let message = last_message.as_deref();
            if self.store.await_subtasks(task.id, message, policy).await?.is_some() {
                // Its slot is free for the sub-tasks it waits for.
                self.scheduler_wake.notify_one();
                return Ok(());
            }
        }
        self.store
            .runtime_event(task.id, TaskEvent::WorkerFinished, "worker exited 0; verifying", policy)
            .await?;
        let (verdict, output, reason) = match &task.verify {
            None => (Verify::Passed, None, "no verify command".to_string()),
            Some(command) => {
                let (verdict, output, detail) = self.verify(command, Path::new(&agent.cwd)).await;
                (verdict, Some(output), format!("verify `{command}` {detail}"))
            }
        };
        let (outcome, event) = match verdict {
            Verify::Passed if !summary.permission_denials.is_empty() => {
                ("success_with_denials", TaskEvent::VerifyPassed)
            }
            Verify::Passed => ("success", TaskEvent::VerifyPassed),
            Verify::Failed => {
                ("verify_failed", TaskEvent::Failed { class: FailureClass::VerifyFailed })
            }
            // No attempt of the agent can install the program: the task fails at once.
            Verify::CannotRun => {
                ("verify_failed", TaskEvent::Failed { class: FailureClass::Fatal })
            }
        };
        let end = AttemptEnd { outcome, verify_output: output, last_message };
        self.store.end_attempt(task.id, &end, event, &reason, policy).await?;
        Ok(())
    }

    /// Runs the verification command in `cwd`; returns how it ended, its output (the end of
    /// it) and a short description.
    pub(super) async fn verify(&self, command: &str, cwd: &Path) -> (Verify, String, String) {
        let timeout = Duration::from_secs(self.config().runtime.verify_timeout_secs);
        let run = tokio::process::Command::new("sh")
            .arg("-c")
            .arg(command)
            .current_dir(cwd)
            .kill_on_drop(true)
            .output();
        match tokio::time::timeout(timeout, run).await {
            Ok(Ok(out)) => {
                let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
                text.push_str(&String::from_utf8_lossy(&out.stderr));
                let (verdict, detail) = match out.status.code() {
                    Some(0) => (Verify::Passed, "passed".to_string()),
                    // The shell's "not found" and "not executable", of a program the worktree
                    // does not provide (one it does, the agent may still have to build).
                    Some(code @ (126 | 127)) if !from_worktree(&text) => {
                        let what = if code == 127 { "not found" } else { "not executable" };
                        let said = text.lines().rev().find(|l| !l.trim().is_empty());
                        let said = said.map(|l| format!(": {}", l.trim())).unwrap_or_default();
                        let detail = format!(
                            "could not run (status {code}: a program it runs is {what}{said}); \
                             is it installed and on the daemon's PATH? retrying the agent cannot fix it"
                        );
                        (Verify::CannotRun, detail)
                    }
                    Some(code) => (Verify::Failed, format!("failed with status {code}")),
                    None => (Verify::Failed, "was killed by a signal".to_string()),
                };
                (verdict, tail(&text, VERIFY_OUTPUT_LIMIT), detail)
            }
            Ok(Err(e)) => (Verify::CannotRun, e.to_string(), format!("could not run: {e}")),
            Err(_) => {
                (Verify::Failed, String::new(), format!("timed out after {}s", timeout.as_secs()))
            }
        }
    }

    /// Everything the agent printed, summarized (read again from its log, so it is right
    /// after a restart too).
    pub(super) async fn summary(&self, agent: &Agent) -> OutputSummary {
        self.summary_and_output(agent).await.0
    }

    /// The summary, and the output it was made from.
    pub(super) async fn summary_and_output(&self, agent: &Agent) -> (OutputSummary, String) {
        let format = self.profile(&agent.profile).map_or(OutputFormat::Plain, |p| p.output);
        let output =
            tokio::fs::read(Path::new(&agent.dir).join("output.log")).await.unwrap_or_default();
        let output = String::from_utf8_lossy(&output).into_owned();
        (OutputSummary::of(format, &output), output)
    }
}

/// How a verification command ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Verify {
    Passed,
    /// It ran and said no (or ran out of time): the next attempt may do better.
    Failed,
    /// It could not run: the shell did not find (127) or could not execute (126) a program,
    /// or `sh` itself did not start. No attempt of the agent changes that.
    CannotRun,
}

/// Whether the program the shell did not find (or could not run), as its last words name it,
/// is a relative path: a file of the worktree, which an attempt may yet create.
fn from_worktree(output: &str) -> bool {
    let Some(line) = output.lines().rev().find(|l| !l.trim().is_empty()) else { return false };
    let before =
        ["command not found", "not found", "Permission denied", "No such file or directory"]
            .iter()
            .find_map(|end| line.trim().strip_suffix(end));
    let program = before
        .and_then(|b| b.trim_end().strip_suffix(':'))
        .and_then(|b| b.rsplit(": ").next())
        .map(str::trim);
    program.is_some_and(|p| p.contains('/') && !p.starts_with('/'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_program_of_the_worktree_is_told_apart_from_one_of_the_system() {
        assert!(!from_worktree("sh: 1: nosuch-tool: not found\n"));
        assert!(!from_worktree("sh: line 1: nosuch: command not found\n"));
        assert!(!from_worktree("sh: 1: /opt/x/bin/tool: not found\n"));
        assert!(from_worktree("sh: 1: ./build/app: not found\n"));
        assert!(from_worktree("sh: 1: ./run-tests: Permission denied\n"));
        assert!(!from_worktree(""));
    }
}
