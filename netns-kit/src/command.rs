//! Running the programs that do the work (`ip`, `nsenter`, `sysctl`) and saying what failed.

use std::{
    ffi::OsStr,
    process::{Command, Stdio},
};

use crate::{Error, Result};

/// Runs `command` with nothing on stdin; its stdout when it succeeds, otherwise an error with
/// the command line and its stderr.
pub fn run(command: &mut Command) -> Result<String> {
    let output = command
        .stdin(Stdio::null())
        .output()
        .map_err(|source| Error::Start {
            command: describe(command),
            source,
        })?;
    if !output.status.success() {
        return Err(Error::Failed {
            command: describe(command),
            status: output.status,
            stderr: String::from_utf8_lossy(&output.stderr).trim().to_owned(),
        });
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// Runs `command` quietly and returns its stdout if it could start and exited successfully.
/// For probes ("which version?", "is it installed?"), where failing to run is an answer rather
/// than an error.
pub fn probe_stdout(command: &mut Command) -> Option<String> {
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

/// The command line, for messages.
pub fn describe(command: &Command) -> String {
    std::iter::once(command.get_program())
        .chain(command.get_args())
        .map(OsStr::to_string_lossy)
        .collect::<Vec<_>>()
        .join(" ")
}
