//! Driving `stickylb-load` (lb-userspace's load generator) for the workloads wrk cannot shape:
//! connections that carry a few requests and close, many client addresses, paced requests,
//! tunnels. It runs in a client namespace and prints one `LOAD-RESULT` line.

use std::{
    path::Path,
    process::{Child, Stdio},
    time::Duration,
};

use anyhow::{bail, Context as _};
use netns_kit::NetNs;

use super::procs;

/// One run of the load generator.
#[derive(Clone, Debug)]
pub(super) struct LoadSpec<'a> {
    /// host:port.
    pub(super) target: &'a str,
    pub(super) connections: u32,
    pub(super) duration: Duration,
    /// Requests per connection, the last one closing; 0: keep-alive to the end.
    pub(super) per_connection: u32,
    /// Sessions the cookies cycle through; 0: a new one per connection.
    pub(super) pool: u64,
    /// Every request starts a new session (the pool is not used).
    pub(super) session_per_request: bool,
    /// Characters that start every cookie of the run.
    pub(super) prefix: &'a str,
    /// Client addresses the connections take in turn (none: the namespace's own).
    pub(super) sources: &'a [std::net::Ipv4Addr],
    /// Requests (tunnels) per second; 0: closed loop.
    pub(super) rate: f64,
    /// Each connection is a tunnel (upgrade, `101`, a few bytes echoed, close).
    pub(super) tunnel: bool,
}

impl<'a> LoadSpec<'a> {
    /// A closed loop of `connections` keep-alive connections to `target`.
    pub(super) fn new(
        target: &'a str,
        connections: u32,
        duration: Duration,
        prefix: &'a str,
    ) -> Self {
        Self {
            target,
            connections,
            duration,
            per_connection: 0,
            pool: 1000,
            session_per_request: false,
            prefix,
            sources: &[],
            rate: 0.0,
            tunnel: false,
        }
    }
}

/// What the load generator measured (the same figures as wrk's).
pub(super) type LoadResult = super::wrk::WrkResult;

/// Runs `binary` (stickylb-load) in `netns` to completion.
pub(super) fn run(netns: &NetNs, binary: &Path, spec: &LoadSpec<'_>) -> anyhow::Result<LoadResult> {
    let child = start(netns, binary, spec)?;
    finish(child, spec.duration)
}

/// Starts `binary` (stickylb-load) in `netns`; read its result with [`finish`].
pub(super) fn start(netns: &NetNs, binary: &Path, spec: &LoadSpec<'_>) -> anyhow::Result<Child> {
    let mut command = netns.command(binary);
    command
        .args(["--target", spec.target])
        .arg(format!("--connections={}", spec.connections))
        .arg(format!("--duration={}", spec.duration.as_secs_f64()))
        .arg(format!("--per-connection={}", spec.per_connection))
        .arg(format!("--pool={}", spec.pool))
        .arg(format!("--prefix={}", spec.prefix))
        .arg(format!("--rate={}", spec.rate));
    for source in spec.sources {
        command.arg(format!("--source={source}"));
    }
    if spec.tunnel {
        command.arg("--tunnel");
    }
    if spec.session_per_request {
        command.arg("--session-per-request");
    }
    command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    procs::spawn(&mut command)
}

/// Waits for a load generator started by [`start`] for `duration` (plus a minute) and parses
/// its result.
pub(super) fn finish(mut child: Child, duration: Duration) -> anyhow::Result<LoadResult> {
    procs::wait(
        &mut child,
        duration + Duration::from_secs(60),
        "stickylb-load",
    )?;
    let output = child
        .wait_with_output()
        .context("reading stickylb-load's output")?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    match parse(&stdout) {
        Some(result) => Ok(result),
        None => bail!(
            "stickylb-load printed no result ({}):\n{stdout}{}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        ),
    }
}

/// The `LOAD-RESULT key=value ...` line.
fn parse(stdout: &str) -> Option<LoadResult> {
    super::wrk::parse_line(stdout, "LOAD-RESULT")
}

#[cfg(test)]
mod tests {
    use super::{parse, LoadResult};

    #[test]
    fn parses_the_result_line() {
        let stdout = "LOAD-RESULT requests=1000 duration_us=2000000 bytes=50000 errors=2 \
            status_errors=1 p50_us=300 p99_us=900 p999_us=2000 max_us=3000 connections=200 \
            connect_errors=2 io_errors=0 timeouts=0 closed_early=0\n";
        assert_eq!(
            parse(stdout),
            Some(LoadResult {
                requests: 1000,
                seconds: 2.0,
                bytes: 50_000,
                errors: 2,
                status_errors: 1,
                p50_us: 300,
                p99_us: 900,
            })
        );
        assert_eq!(parse("LOAD-RESULT requests=1\n"), None);
    }
}
