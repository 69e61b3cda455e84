//! target/demo: each process's log and pid file, and reading what a log says.

use std::{
    fs::{self, File},
    path::{Path, PathBuf},
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _};

use super::Lb;
use crate::{process::alive, workspace};

pub(super) const FORWARDER: &str = "forward";
pub(super) const WEB: &str = "web";

/// target/demo: the logs and pid files.
#[derive(Clone, Debug)]
pub(super) struct Paths {
    dir: PathBuf,
}

impl Paths {
    pub(super) fn new() -> Paths {
        Paths {
            dir: workspace::host_target_dir().join("demo"),
        }
    }

    pub(super) fn dir(&self) -> &Path {
        &self.dir
    }

    pub(super) fn log(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}.log"))
    }

    fn pid_file(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}.pid"))
    }

    pub(super) fn record_pid(&self, name: &str, pid: u32) -> anyhow::Result<()> {
        let path = self.pid_file(name);
        fs::write(&path, format!("{pid}\n"))
            .with_context(|| format!("could not write {}", path.display()))
    }

    /// The forwarder of an earlier run, if its pid file names one that still runs (and is a
    /// forwarder: a stale pid may belong to anything by now).
    pub(super) fn running_forwarder(&self) -> Option<u32> {
        let pid: u32 = fs::read_to_string(self.pid_file(FORWARDER))
            .ok()?
            .trim()
            .parse()
            .ok()?;
        let cmdline = fs::read(format!("/proc/{pid}/cmdline")).ok()?;
        let is_forwarder = cmdline
            .split(|&byte| byte == 0)
            .any(|arg| arg == b"--forward");
        (alive(pid) && is_forwarder).then_some(pid)
    }

    pub(super) fn remove_pid_files(&self) -> anyhow::Result<()> {
        for name in [FORWARDER, WEB, Lb::One.name(), Lb::Two.name()] {
            let path = self.pid_file(name);
            if path.exists() {
                fs::remove_file(&path)
                    .with_context(|| format!("could not remove {}", path.display()))?;
            }
        }
        Ok(())
    }

    /// A fresh log (truncated) for each process, in a created target/demo.
    pub(super) fn reset_logs(&self) -> anyhow::Result<()> {
        fs::create_dir_all(&self.dir)
            .with_context(|| format!("could not create {}", self.dir.display()))?;
        for name in [FORWARDER, WEB, Lb::One.name(), Lb::Two.name()] {
            let path = self.log(name);
            File::create(&path).with_context(|| format!("could not create {}", path.display()))?;
        }
        Ok(())
    }
}

/// Waits until `log` shows `needle` past byte `from`; fails early if `pid` ends. Returns how
/// long it took and the line.
pub(super) fn wait_for(
    log: &Path,
    from: u64,
    needle: &str,
    limit: Duration,
    pid: Option<u32>,
) -> anyhow::Result<(Duration, String)> {
    let started = Instant::now();
    loop {
        let text = read_from(log, from);
        if let Some(line) = text.lines().find(|line| line.contains(needle)) {
            return Ok((started.elapsed(), line.to_owned()));
        }
        let ended = pid.is_some_and(|pid| !alive(pid));
        if ended || started.elapsed() >= limit {
            let why = if ended { "exited" } else { "timed out" };
            bail!(
                "{why} waiting for `{needle}` in {}; its last lines:\n{}",
                log.display(),
                tail(&text, 15)
            );
        }
        thread::sleep(Duration::from_millis(20));
    }
}

/// A daemon's log line without its timestamp and level.
pub(super) fn log_message(line: &str) -> &str {
    ["INFO ", "WARN "]
        .iter()
        .find_map(|level| line.split_once(level).map(|(_, message)| message))
        .unwrap_or(line)
        .trim()
}

pub(super) fn log_len(log: &Path) -> u64 {
    fs::metadata(log).map_or(0, |meta| meta.len())
}

/// What `log` holds past byte `from` (empty when unreadable).
pub(super) fn read_from(log: &Path, from: u64) -> String {
    let bytes = fs::read(log).unwrap_or_default();
    let from = usize::try_from(from).unwrap_or(usize::MAX).min(bytes.len());
    String::from_utf8_lossy(&bytes[from..]).into_owned()
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::{log_message, tail};

    #[test]
    fn log_messages_lose_their_timestamp_and_level() {
        assert_eq!(
            log_message(
                "2026-11-24T22:00:06.813677Z  INFO full resync from peer done peer=lb-1 \
                 partial=false"
            ),
            "full resync from peer done peer=lb-1 partial=false"
        );
        assert_eq!(
            log_message("upgraded: pid 1 handed over to pid 2"),
            "upgraded: pid 1 handed over to pid 2"
        );
    }

    #[test]
    fn tail_keeps_the_last_lines() {
        assert_eq!(tail("a\nb\nc\n", 2), "b\nc");
        assert_eq!(tail("a\n", 5), "a");
        assert_eq!(tail("", 5), "");
    }
}
