//! Running other programs: checked runs, privilege, and the cargo that runs us.

use std::{
    env,
    ffi::OsStr,
    process::{Command, ExitStatus},
};

use anyhow::{bail, Context as _};
/// Whether we already run as root, so privileged commands need no `sudo`.
pub(crate) use netns_kit::is_root;

use crate::workspace;

/// Whether `pid` is a live (not zombie) process, from /proc.
pub(crate) fn alive(pid: u32) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    // The state follows the command name, which is in parentheses and may hold anything.
    let state = stat
        .rsplit_once(')')
        .and_then(|(_, rest)| rest.trim_start().chars().next());
    !matches!(state, None | Some('Z' | 'X'))
}

/// A command that runs `program` as root: directly when we are root, through `sudo` otherwise.
pub(crate) fn as_root(program: &str) -> Command {
    if is_root() {
        Command::new(program)
    } else {
        let mut command = Command::new("sudo");
        command.arg(program);
        command
    }
}

/// The cargo that runs xtask (the host toolchain's), in the workspace root.
pub(crate) fn host_cargo() -> Command {
    let cargo = env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut command = Command::new(cargo);
    command.current_dir(workspace::root());
    command
}

/// Runs `command` with inherited stdio and fails unless it exits successfully.
pub(crate) fn run_checked(command: &mut Command) -> anyhow::Result<()> {
    let status = run_status(command)?;
    if !status.success() {
        bail!("`{}` failed: {status}", describe(command));
    }
    Ok(())
}

/// Runs `command` with inherited stdio and returns how it exited.
pub(crate) fn run_status(command: &mut Command) -> anyhow::Result<ExitStatus> {
    command
        .status()
        .with_context(|| format!("could not start `{}`", describe(command)))
}

pub(crate) use netns_kit::probe_stdout;

/// The command line, for messages.
pub(crate) fn describe(command: &Command) -> String {
    let program = command.get_program();
    let args = command.get_args();
    std::iter::once(program)
        .chain(args)
        .map(OsStr::to_string_lossy)
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::alive;

    #[test]
    fn tells_live_processes_from_gone_ones() {
        assert!(alive(std::process::id()));
        // Above the kernel's pid_max limit (4194304): never a process.
        assert!(!alive(u32::MAX));
    }
}
