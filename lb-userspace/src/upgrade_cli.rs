//! `stickylb reload --upgrade`: starts a new process that takes over from the running one, and
//! waits until it serves.

use std::{
    path::Path,
    process::{Command, ExitCode, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _};
use stickylb::{config::Config, control};

/// How long the new process may take to load, take over and answer on the control socket.
const START_LIMIT: Duration = Duration::from_secs(90);

pub(crate) fn start_successor(
    config_path: &Path,
    name: Option<&str>,
    config: &Config,
    log: &str,
) -> anyhow::Result<ExitCode> {
    let control_path = &config.instance.control_socket;
    let before = control::running_pid(control_path);
    let exe = std::env::current_exe().context("finding the stickylb binary")?;
    let mut command = Command::new(&exe);
    command
        .args(["--log", log, "run", "--upgrade", "--config"])
        .arg(config_path)
        .stdin(Stdio::null());
    if let Some(name) = name {
        command.args(["--name", name]);
    }
    // Its own process group: the new daemon must outlive this command and not receive the
    // signals meant for it (a terminal's Ctrl-C, systemd ending ExecReload).
    std::os::unix::process::CommandExt::process_group(&mut command, 0);
    let mut child = command
        .spawn()
        .with_context(|| format!("starting {}", exe.display()))?;
    let deadline = Instant::now() + START_LIMIT;
    loop {
        if let Some(status) = child.try_wait()? {
            bail!("the new process exited before it took over ({status}); the running instance is unchanged");
        }
        if control::running_pid(control_path) == Some(child.id()) {
            match before {
                Some(old) => println!("upgraded: pid {old} handed over to pid {}", child.id()),
                None => println!(
                    "started: pid {} (no running instance to take over from)",
                    child.id()
                ),
            }
            return Ok(ExitCode::SUCCESS);
        }
        if Instant::now() >= deadline {
            bail!(
                "the new process (pid {}) did not take over within {START_LIMIT:?}",
                child.id()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}
