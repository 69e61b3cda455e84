//! This machine: privilege, and probing what is installed.

use std::process::{Command, Stdio};

/// Whether we run as root.
pub(crate) fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// Runs `command` quietly and returns its stdout if it could start and exited successfully.
/// For probes ("which version?"), where failing to run is an answer rather than an error.
pub(crate) fn probe_stdout(command: &mut Command) -> Option<String> {
    let output = command
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .ok()?;
    output
        .status
        .success()
        .then(|| String::from_utf8_lossy(&output.stdout).into_owned())
}
