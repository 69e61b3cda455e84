//! `cargo xtask run`: build, then become `stickylb` (as root: it loads BPF and pins maps).

use std::{convert::Infallible, os::unix::process::CommandExt as _, process::Command};

use anyhow::Context as _;

use crate::{
    build,
    process::{describe, is_root},
    workspace,
};

/// Builds, then replaces this process with `stickylb`, so its exit code, signals and terminal
/// are its own. Returns only if that fails.
pub(crate) fn run(release: bool, stickylb_args: &[String]) -> anyhow::Result<Infallible> {
    build::build_all(release)?;
    let binary = workspace::stickylb_binary(release);
    let mut command = if is_root() {
        Command::new(&binary)
    } else {
        // -E: keep RUST_LOG and friends.
        let mut sudo = Command::new("sudo");
        sudo.arg("-E").arg(&binary);
        sudo
    };
    command.args(stickylb_args);
    let error = command.exec();
    Err(error).with_context(|| format!("could not start `{}`", describe(&command)))
}
