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

        self.store
            .runtime_event(task.id, TaskEvent::WorkerFinished, "worker exited 0; verifying", policy)
            .await?;
        let (passed, output, reason) = match &task.verify {
            None => (true, None, "no verify command".to_string()),
            Some(command) => {
                let (passed, output, detail) = self.verify(command, Path::new(&agent.cwd)).await;
                (passed, Some(output), format!("verify `{command}` {detail}"))
            }
        };
        let (outcome, event) = if passed && !summary.permission_denials.is_empty() {
            ("success_with_denials", TaskEvent::VerifyPassed)
        } else if passed {
            ("success", TaskEvent::VerifyPassed)
        } else {
            ("verify_failed", TaskEvent::Failed { class: FailureClass::VerifyFailed })
        };
        let end = AttemptEnd { outcome, verify_output: output, last_message };
        self.store.end_attempt(task.id, &end, event, &reason, policy).await?;
        Ok(())
    }

    /// Runs the verification command in `cwd`; returns whether it passed, its output (the
    /// end of it) and a short description.
    pub(super) async fn verify(&self, command: &str, cwd: &Path) -> (bool, String, String) {
        let timeout = Duration::from_secs(self.config.runtime.verify_timeout_secs);
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
                let detail = match out.status.code() {
                    Some(0) => "passed".to_string(),
                    Some(code) => format!("failed with status {code}"),
                    None => "was killed by a signal".to_string(),
                };
                (out.status.success(), tail(&text, VERIFY_OUTPUT_LIMIT), detail)
            }
            Ok(Err(e)) => (false, e.to_string(), format!("could not run: {e}")),
            Err(_) => (false, String::new(), format!("timed out after {}s", timeout.as_secs())),
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
