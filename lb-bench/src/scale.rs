//! Workload 4, table scale: fill the stick table with real requests (keep-alive, a new cookie
//! per request, cycling through exactly N cookies so the table settles at N), then read the
//! memory it takes and time restarts.
//!
//! stickylb's memory is its RSS plus the pinned map's (the kernel's `memlock` figure, which
//! bpftool prints); HAProxy's is its RSS. A restart is SIGTERM, wait for the exit, start again:
//! stickylb's is timed to its `stickylb started` line (after adopting the pinned map), HAProxy's
//! to the first answered request (it starts with an empty table).

use std::{
    io::{Read as _, Write as _},
    os::unix::net::UnixStream,
    time::{Duration, Instant},
};

use anyhow::Context as _;
use serde::Serialize;

use super::{
    contender::{self, Contender, LbProcess, BACKEND_NAME},
    env::{Env, Layout},
    hosts::ROUTED,
    metrics::metric_value,
    procs,
    stats::median,
    wrk::{self, WrkSpec},
};

#[derive(Clone, Debug, Serialize)]
pub(super) struct ScaleResult {
    pub(super) contender: Contender,
    /// Entries in the table when the fill stopped.
    pub(super) entries: u64,
    pub(super) fill_seconds: f64,
    pub(super) rss_bytes: u64,
    /// The pinned map's memory (stickylb only).
    pub(super) map_bytes: Option<u64>,
    /// Each restart: from the start of the new process until it serves with the table adopted.
    pub(super) restart_seconds: Vec<f64>,
    /// Entries the restarted process had (stickylb: adopted from the pinned map).
    pub(super) entries_after_restart: u64,
    pub(super) rss_after_restart_bytes: u64,
}

impl ScaleResult {
    pub(super) fn total_bytes(&self) -> u64 {
        self.rss_bytes + self.map_bytes.unwrap_or(0)
    }

    pub(super) fn fill_rate(&self) -> f64 {
        self.entries as f64 / self.fill_seconds
    }

    pub(super) fn restart_median(&self) -> Option<f64> {
        median(&self.restart_seconds)
    }
}

pub(super) fn measure(env: &Env, contender: Contender) -> anyhow::Result<ScaleResult> {
    let plan = &env.plan;
    env.reset_table()?;
    let (mut lb, _) = env.start(contender, Layout::Routed)?;
    let fill_seconds = fill(env, &mut lb, plan.table_entries)?;
    // Let requests in flight end, then count again (HAProxy counts entries of requests in
    // flight too).
    procs::sleep(Duration::from_secs(1))?;
    let entries = table_entries(env, &lb)?;
    let rss_bytes = lb.rss_bytes()?;
    let map_bytes = if contender.is_stickylb() {
        Some(env.map_memlock_bytes()?)
    } else {
        None
    };
    println!(
        "bench: table-scale {}: {entries} entries in {fill_seconds:.1} s, RSS {:.1} MB{}",
        contender.label(),
        rss_bytes as f64 / 1e6,
        map_bytes.map_or(String::new(), |m| format!(", map {:.1} MB", m as f64 / 1e6)),
    );
    let mut restart_seconds = Vec::new();
    let (mut entries_after_restart, mut rss_after_restart_bytes) = (0, 0);
    for _ in 0..plan.restarts {
        lb.stop()?;
        let (restarted, ready_after) = env.start(contender, Layout::Routed)?;
        lb = restarted;
        restart_seconds.push(ready_after.as_secs_f64());
        entries_after_restart = table_entries(env, &lb)?;
        rss_after_restart_bytes = lb.rss_bytes()?;
        println!(
            "bench: table-scale {}: restarted in {:.3} s with {entries_after_restart} entries",
            contender.label(),
            ready_after.as_secs_f64()
        );
    }
    lb.stop()?;
    env.reset_table()?;
    Ok(ScaleResult {
        contender,
        entries,
        fill_seconds,
        rss_bytes,
        map_bytes,
        restart_seconds,
        entries_after_restart,
        rss_after_restart_bytes,
    })
}

/// Sends requests until the table holds `target` entries; returns the time it took.
fn fill(env: &Env, lb: &mut LbProcess, target: u64) -> anyhow::Result<f64> {
    let plan = &env.plan;
    let limit = plan.fill_limit;
    let url = lb.contender.base_url(&ROUTED);
    let spec = WrkSpec {
        threads: plan.wrk_threads,
        connections: plan.keep_alive_connections,
        duration: limit,
        url: &url,
        prefix: "5ca1e000",
        pool: target,
        close: false,
    };
    let started = Instant::now();
    let mut load = wrk::start(&env.topology(Layout::Routed).client, &env.script, &spec)?;
    let filled = loop {
        let entries = table_entries(env, lb);
        let entries = match entries {
            Ok(entries) => entries,
            Err(error) => {
                procs::kill(&mut load);
                return Err(error);
            }
        };
        if entries >= target {
            break Ok(entries);
        }
        if let Ok(Some(status)) = load.try_wait() {
            break Err(anyhow::anyhow!(
                "wrk stopped ({status}) with {entries} of {target} entries"
            ));
        }
        if started.elapsed() > limit {
            break Err(anyhow::anyhow!(
                "only {entries} of {target} entries after {limit:?}"
            ));
        }
        if let Err(error) = procs::sleep(Duration::from_millis(200)) {
            break Err(error);
        }
    };
    let seconds = started.elapsed().as_secs_f64();
    procs::kill(&mut load);
    lb.check_running()?;
    filled?;
    Ok(seconds)
}

/// Entries in the running load balancer's table: stickylb's from its monitor's metrics,
/// HAProxy's from `show table` on its stats socket.
fn table_entries(env: &Env, lb: &LbProcess) -> anyhow::Result<u64> {
    if lb.contender.is_stickylb() {
        let metrics = env.client_get(
            &format!("{}/metrics", contender::monitor_url(&ROUTED)),
            Layout::Routed,
        )?;
        metric_value(&metrics, "stickylb_backend_table_entries")
            .context("no stickylb_backend_table_entries in the monitor's /metrics")
    } else {
        // Without a table name, `show table` prints each table's header line, not its entries.
        let answer = haproxy_command(env, "show table")?;
        haproxy_table_used(&answer, BACKEND_NAME)
            .with_context(|| format!("unexpected `show table` answer: {answer}"))
    }
}

fn haproxy_command(env: &Env, command: &str) -> anyhow::Result<String> {
    let path = env.haproxy_socket();
    let mut socket = UnixStream::connect(&path)
        .with_context(|| format!("could not connect to {}", path.display()))?;
    socket.set_read_timeout(Some(Duration::from_secs(10)))?;
    socket.write_all(format!("{command}\n").as_bytes())?;
    let mut answer = String::new();
    socket
        .read_to_string(&mut answer)
        .with_context(|| format!("reading the answer to `{command}`"))?;
    Ok(answer)
}

/// `used:N` of `# table: web, type: string, size:1048576, used:N`, HAProxy's `show table`
/// answer (also read by the cluster workloads).
pub(crate) fn haproxy_table_used(answer: &str, table: &str) -> Option<u64> {
    let header = answer
        .lines()
        .find(|line| line.starts_with(&format!("# table: {table},")))?;
    let used = header.split("used:").nth(1)?;
    used.trim()
        .split(|c: char| !c.is_ascii_digit())
        .next()?
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::haproxy_table_used;

    #[test]
    fn reads_haproxy_table_usage() {
        let answer = "# table: fe, type: ip, size:10, used:1\n\
            # table: web, type: string, size:1048576, used:123456\n";
        assert_eq!(haproxy_table_used(answer, "web"), Some(123_456));
        assert_eq!(haproxy_table_used("Unknown command\n", "web"), None);
    }
}
