//! A finished task's worktree, cleaned up without losing work.

use std::path::Path;

use ccm_schema::{Severity, Task};
use tracing::warn;

use super::{Result, Runtime, RuntimeError};
use crate::agents::gemini_state;
use crate::worktree;

impl Runtime {
    /// A finished task's worktree goes, unless that would lose work; what is kept is said in an
    /// info alert.
    pub(super) async fn cleanup(&self, task: &Task) -> Result<()> {
        let Some(saved) = self.store.worktree(task.id).await? else { return Ok(()) };
        // ccm's own hook settings are not the agent's work: remove them before judging what is left.
        if saved.worktree.path.is_dir() {
            if let Err(e) = crate::hooks::install::uninstall_all(
                &self.hook_options(&saved.worktree.path, &crate::hooks::hook_program()),
            ) {
                warn!(error = %e, "cannot remove ccm's hooks from the worktree");
            }
        }
        let settings = crate::config::load_checked(&self.store, self.home.root(), &saved.repo)
            .await
            .map_err(|problem| {
                RuntimeError::Other(format!("cannot clean the worktree up: {problem}"))
            })?
            .worktree;
        let outcome = tokio::task::spawn_blocking(move || {
            let outcome = worktree::cleanup(&saved.repo, &saved.worktree, &settings.copy_files)?;
            // Gemini CLI's records of the worktree (its agents share the daemon's HOME).
            if let (true, Some(home)) = (outcome.worktree_removed, std::env::var_os("HOME")) {
                let gemini = Path::new(&home).join(".gemini");
                if let Err(e) = gemini_state::forget_folder(&gemini, &saved.worktree.path) {
                    warn!(error = %e, "cannot remove Gemini CLI's records of the worktree");
                }
            }
            Ok::<_, worktree::WorktreeError>(outcome)
        })
        .await??;
        self.store.set_worktree(task.id, None).await?;
        if !outcome.notes.is_empty() {
            let message =
                format!("task {} ({}): {}", task.short_id(), task.title, outcome.notes.join("; "));
            self.store.alert(Some(task.id), Severity::Info, "work_kept", &message).await?;
        }
        Ok(())
    }
}
