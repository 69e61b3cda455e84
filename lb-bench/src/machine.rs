//! The machine and the versions a run used, for the report's header.

use std::{fs, process::Command};

use netns_kit::probe_stdout;
use serde::Serialize;

use super::env::HAPROXY;
use crate::workspace;

#[derive(Clone, Debug, Serialize)]
pub(crate) struct Machine {
    /// When the run started, UTC.
    pub(crate) date: String,
    pub(crate) cpu_model: String,
    pub(crate) cpus: usize,
    pub(crate) memory_gib: f64,
    pub(crate) kernel: String,
    pub(crate) os: String,
    pub(crate) stickylb: String,
    pub(crate) haproxy: String,
    pub(crate) wrk: String,
    pub(crate) h2load: String,
    pub(crate) curl: String,
    pub(crate) rustc: String,
    /// `/proc/loadavg` before the run: other work on the machine skews the figures.
    pub(crate) load_average: String,
}

/// `/proc/loadavg`'s three averages.
pub(crate) fn load_average() -> String {
    fs::read_to_string("/proc/loadavg")
        .map(|avg| avg.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

pub(crate) fn describe(load_average: String) -> Machine {
    let cpuinfo = fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let meminfo = fs::read_to_string("/proc/meminfo").unwrap_or_default();
    Machine {
        date: first_line(Command::new("date").args(["-u", "+%Y-%m-%d %H:%M UTC"])),
        cpu_model: field(&cpuinfo, "model name").unwrap_or_else(|| "unknown".into()),
        cpus: std::thread::available_parallelism().map_or(0, usize::from),
        memory_gib: field(&meminfo, "MemTotal")
            .and_then(|kib| kib.trim_end_matches("kB").trim().parse::<f64>().ok())
            .map_or(0.0, |kib| kib / (1024.0 * 1024.0)),
        kernel: fs::read_to_string("/proc/sys/kernel/osrelease")
            .map_or_else(|_| "unknown".into(), |release| release.trim().to_owned()),
        os: os_name(),
        stickylb: stickylb_version(),
        haproxy: first_line(Command::new(HAPROXY).arg("-v")),
        // `wrk -v` prints its version, then its usage, and exits 1.
        wrk: Command::new("wrk")
            .arg("-v")
            .output()
            .ok()
            .and_then(|out| {
                let text = String::from_utf8_lossy(&out.stdout).into_owned();
                text.split(" [").next().map(str::to_owned)
            })
            .unwrap_or_else(|| "unknown".into()),
        // `h2load nghttp2/1.52.0`.
        h2load: first_line(Command::new("h2load").arg("--version")),
        // `curl 7.88.1 (x86_64-pc-linux-gnu) libcurl/7.88.1 OpenSSL/...`: the first two words.
        curl: first_line(Command::new("curl").arg("--version"))
            .split_whitespace()
            .take(2)
            .collect::<Vec<_>>()
            .join(" "),
        rustc: first_line(
            Command::new("rustc")
                .arg("-V")
                .current_dir(workspace::root()),
        ),
        load_average,
    }
}

/// `stickylb --version` and the commit it was built from (`+` when the tree had changes).
fn stickylb_version() -> String {
    let version = first_line(Command::new(workspace::stickylb_binary(true)).arg("--version"));
    let commit = probe_stdout(
        Command::new("git")
            .args(["describe", "--always", "--dirty=+"])
            .current_dir(workspace::root()),
    );
    match commit {
        Some(commit) => format!("{version} (git {})", commit.trim()),
        None => version,
    }
}

fn os_name() -> String {
    let release = fs::read_to_string("/etc/os-release").unwrap_or_default();
    release
        .lines()
        .find_map(|line| line.strip_prefix("PRETTY_NAME="))
        .map_or_else(
            || "unknown".into(),
            |name| name.trim_matches('"').to_owned(),
        )
}

/// `key : value` of /proc/cpuinfo, `key: value` of /proc/meminfo.
fn field(text: &str, key: &str) -> Option<String> {
    text.lines().find_map(|line| {
        let (name, value) = line.split_once(':')?;
        (name.trim() == key).then(|| value.trim().to_owned())
    })
}

fn first_line(command: &mut Command) -> String {
    probe_stdout(command)
        .and_then(|out| out.lines().next().map(str::to_owned))
        .unwrap_or_else(|| "unknown".into())
}

#[cfg(test)]
mod tests {
    use super::field;

    #[test]
    fn reads_proc_fields() {
        let cpuinfo = "processor\t: 0\nmodel name\t: AMD EPYC\n";
        assert_eq!(field(cpuinfo, "model name").as_deref(), Some("AMD EPYC"));
        assert_eq!(
            field("MemTotal:       24683532 kB\n", "MemTotal").as_deref(),
            Some("24683532 kB")
        );
        assert_eq!(field(cpuinfo, "flags"), None);
    }
}
