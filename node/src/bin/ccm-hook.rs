//! `ccm-hook`: the command the agent CLIs' hooks run (see `ccm_node::hooks::fast`).

fn main() -> std::process::ExitCode {
    ccm_node::hooks::fast::main()
}
