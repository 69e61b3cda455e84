//! Driving wrk: the command line for a run, and the one line its script prints when done.

use std::{
    path::Path,
    process::{Child, Stdio},
    time::Duration,
};

use anyhow::{bail, Context as _};
use netns_kit::NetNs;

use super::procs;

/// The script (`wrk.lua`) that every wrk run uses; written into the work directory.
pub(super) const SCRIPT: &str = include_str!("wrk.lua");

/// One wrk run: how much load, where, and which cookies.
pub(super) struct WrkSpec<'a> {
    pub(super) threads: u32,
    pub(super) connections: u32,
    pub(super) duration: Duration,
    pub(super) url: &'a str,
    /// 8 characters that start every cookie of the run.
    pub(super) prefix: &'a str,
    /// 0: a new cookie for every request; N: cookies cycle through N values.
    pub(super) pool: u64,
    /// A new connection for every request (`Connection: close`).
    pub(super) close: bool,
}

/// What wrk (or stickylb-load) measured.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(super) struct WrkResult {
    pub(super) requests: u64,
    pub(super) seconds: f64,
    pub(super) bytes: u64,
    /// Connect, read, write errors and timeouts.
    pub(super) errors: u64,
    /// Responses other than 2xx and 3xx.
    pub(super) status_errors: u64,
    pub(super) p50_us: u64,
    pub(super) p99_us: u64,
}

/// Starts wrk in `netns` with `script`; read its result with [`finish`].
pub(super) fn start(netns: &NetNs, script: &Path, spec: &WrkSpec<'_>) -> anyhow::Result<Child> {
    let mut command = netns.command("wrk");
    command
        .arg(format!("--threads={}", spec.threads))
        .arg(format!("--connections={}", spec.connections))
        .arg(format!("--duration={}s", spec.duration.as_secs().max(1)))
        .arg("--timeout=5s")
        .arg("--latency")
        .arg("--script")
        .arg(script)
        .arg(spec.url)
        .args([
            spec.prefix,
            &spec.threads.to_string(),
            &spec.pool.to_string(),
            if spec.close { "close" } else { "keep" },
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    procs::spawn(&mut command)
}

/// Waits for a wrk started by [`start`] (at most `limit`) and parses its result.
pub(super) fn finish(mut child: Child, limit: Duration) -> anyhow::Result<WrkResult> {
    procs::wait(&mut child, limit, "wrk")?;
    let output = child.wait_with_output().context("reading wrk's output")?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    match parse(&stdout) {
        Some(result) => Ok(result),
        None => bail!(
            "wrk printed no result ({}):\n{stdout}{}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        ),
    }
}

/// Runs wrk to completion.
pub(super) fn run(netns: &NetNs, script: &Path, spec: &WrkSpec<'_>) -> anyhow::Result<WrkResult> {
    let child = start(netns, script, spec)?;
    finish(child, spec.duration + Duration::from_secs(30))
}

/// The numbers of the first line of `stdout` that starts with `prefix` (`PREFIX key=value
/// ...`), by key.
fn result_fields<'a>(stdout: &'a str, prefix: &str) -> Option<impl Fn(&str) -> Option<u64> + 'a> {
    let line = stdout
        .lines()
        .find_map(|line| line.strip_prefix(prefix)?.strip_prefix(' '))?;
    Some(move |name: &str| -> Option<u64> {
        line.split_whitespace()
            .find_map(|pair| pair.strip_prefix(name)?.strip_prefix('='))?
            .parse()
            .ok()
    })
}

/// The `BENCH-RESULT key=value ...` line of `wrk.lua`'s `done`.
fn parse(stdout: &str) -> Option<WrkResult> {
    parse_line(stdout, "BENCH-RESULT")
}

/// The figures of a `PREFIX key=value ...` line, which wrk's script and stickylb-load both
/// print.
pub(super) fn parse_line(stdout: &str, prefix: &str) -> Option<WrkResult> {
    let field = result_fields(stdout, prefix)?;
    Some(WrkResult {
        requests: field("requests")?,
        seconds: field("duration_us")? as f64 / 1e6,
        bytes: field("bytes")?,
        errors: field("errors")?,
        status_errors: field("status_errors")?,
        p50_us: field("p50_us")?,
        p99_us: field("p99_us")?,
    })
}

#[cfg(test)]
mod tests {
    use super::{parse, WrkResult};

    #[test]
    fn parses_the_scripts_result_line() {
        let stdout = "Running 2s test @ http://10.240.1.1/\n  2 threads and 16 connections\n\
            BENCH-RESULT requests=20000 duration_us=2000000 bytes=2300000 errors=3 \
            status_errors=1 p50_us=812 p99_us=2950\n";
        assert_eq!(
            parse(stdout),
            Some(WrkResult {
                requests: 20_000,
                seconds: 2.0,
                bytes: 2_300_000,
                errors: 3,
                status_errors: 1,
                p50_us: 812,
                p99_us: 2950,
            })
        );
    }

    #[test]
    fn a_missing_field_is_no_result() {
        assert_eq!(parse("BENCH-RESULT requests=1 duration_us=2\n"), None);
        assert_eq!(parse("Requests/sec: 1000\n"), None);
    }
}
