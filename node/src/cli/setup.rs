//! Setting a repository up: `ccm init` and `ccm hooks install|uninstall|status`.

use std::path::Path;

use anyhow::Context as _;
use ccm_schema::types::short_id;
use clap::{Args, Subcommand};

use super::backend::Backend;
use crate::config::{Config, PROJECT_TEMPLATE};
use crate::home::Home;
use crate::store::ContextProbe;

#[derive(Debug, Subcommand)]
pub enum HooksCommand {
    /// Add ccm's hooks, keeping every hook that is already there (idempotent).
    Install(HooksArgs),
    /// Remove exactly the hooks ccm added.
    Uninstall(HooksArgs),
    /// Show which settings files have ccm's hooks.
    Status(HooksArgs),
}

#[derive(Debug, Args)]
pub struct HooksArgs {
    /// Claude Code: use the committed `.claude/settings.json` instead of `.claude/settings.local.json`.
    #[arg(long)]
    shared: bool,
}

/// Options for the hook installer in the repository around `cwd`.
fn hook_options<'a>(
    config: &Config,
    repo: &'a Path,
    hook: &'a [String],
    shared: bool,
) -> crate::hooks::install::Options<'a> {
    crate::hooks::install::Options {
        repo,
        hook,
        shared,
        // A gate waits at most the approval timeout, plus time for the answer to travel.
        gate_timeout_secs: config.approvals.timeout_secs + 30,
        mcp_program: None,
    }
}

/// The program a checkout's hooks run: `ccm hook` from PATH for committed settings (`--shared`:
/// every machine that checks them out has `ccm`, not necessarily a `ccm-hook` beside it); else
/// this very build's ([`crate::hooks::hook_program`]), unless it is a cargo build (under a
/// `target/` directory) and a `ccm` is on PATH: `cargo clean` removes a build, while the
/// programs on PATH follow `cargo install` (`ccm-hook` when it is there too).
fn hook_program(shared: bool) -> Vec<String> {
    let on_path = |name: &str| crate::agents::on_path(name).is_some();
    let exe = crate::hooks::hook_program();
    let cargo_build = Path::new(&exe[0]).components().any(|c| c.as_os_str() == "target");
    if !(shared || (cargo_build && on_path("ccm"))) {
        exe
    } else if !shared && on_path("ccm-hook") {
        vec!["ccm-hook".into()]
    } else {
        vec!["ccm".into(), "hook".into()]
    }
}

pub fn hooks(config: &Config, cwd: &Path, command: HooksCommand) -> anyhow::Result<()> {
    let probe = ContextProbe::inspect(cwd)
        .map_err(|e| anyhow::anyhow!("ccm hooks works in a git repository: {e}"))?;
    let (args, run): (&HooksArgs, fn(&crate::hooks::install::Options) -> _) = match &command {
        HooksCommand::Install(args) => (args, crate::hooks::install::install_all),
        HooksCommand::Uninstall(args) => (args, crate::hooks::install::uninstall_all),
        HooksCommand::Status(args) => (args, crate::hooks::install::status_all),
    };
    let hook = hook_program(args.shared);
    let reports = run(&hook_options(config, &probe.path, &hook, args.shared))?;
    show_hook_reports(&reports);
    Ok(())
}

fn show_hook_reports(reports: &[crate::hooks::install::FileReport]) {
    for report in reports {
        let action = serde_json::to_value(report.action)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default();
        println!("{:<7} {:<16} {}  {}", report.agent, action, report.file.display(), report.detail);
    }
}

pub async fn init(home: &Home, config: &Config, cwd: &Path) -> anyhow::Result<()> {
    let probe = ContextProbe::inspect(cwd)
        .map_err(|e| anyhow::anyhow!("ccm init needs a git repository: {e}"))?;
    let dot = probe.path.join(".ccm");
    for dir in [dot.clone(), dot.join("prompts"), dot.join("skills")] {
        std::fs::create_dir_all(&dir)
            .with_context(|| format!("cannot create {}", dir.display()))?;
    }
    let config_file = dot.join("config.yaml");
    let wrote_config = !config_file.exists();
    if wrote_config {
        std::fs::write(&config_file, PROJECT_TEMPLATE)
            .with_context(|| format!("cannot write {}", config_file.display()))?;
    }
    let hook = hook_program(false);
    let reports =
        crate::hooks::install::install_all(&hook_options(config, &probe.path, &hook, false))?;
    let backend = Backend::connect(home, config).await?;
    let context = backend.add_context(&probe.path).await?;
    show_hook_reports(&reports);
    let relative =
        |file: &Path| file.strip_prefix(&probe.path).unwrap_or(file).display().to_string();
    println!(
        "{} {}, with .ccm/prompts/ and .ccm/skills/",
        if wrote_config { "created" } else { "kept   " },
        relative(&config_file)
    );
    println!(
        "context {} registered: {} ({}, branch {})",
        short_id(&context.id),
        context.path,
        context.repo_url.as_deref().unwrap_or("no remote"),
        context.default_branch.as_deref().unwrap_or("none"),
    );
    let local: Vec<String> = reports.iter().map(|r| relative(&r.file)).collect();
    println!(
        "\ncommit: .ccm/ (the project's ccm settings, prompts and skills, shared with the team)"
    );
    let program = hook.join(" ");
    println!(
        "ignore: {} (hooks that run `{program}` on this machine), e.g. add them to .git/info/exclude",
        local.join(" ")
    );
    if hook[0].contains('/') {
        println!(
            "hooks run {program}; after `cargo install --path node` (or a move), run `ccm hooks install` again"
        );
    }
    println!("next: `ccm up -d`, then `ccm task add \"...\" --verify \"...\"` here");
    Ok(())
}
