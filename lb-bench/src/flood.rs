//! The SYN flood measurement: what a flood from one address costs the legitimate clients, and
//! what it costs the load balancer.
//!
//! The flood is `hping3 --flood -S` (one process: as fast as one core sends) from the client
//! namespace's own address to the frontend; the legitimate clients are the load generator on
//! the client's other addresses (16 of them), keep-alive and a new connection per request. Each
//! legitimate workload is measured without the flood, then with it, against stickylb with its
//! shield on, stickylb with it off, and HAProxy (which has no such shield: the kernel's SYN
//! queue and cookies take the flood); the shield twice, where its default hook puts it (TC on
//! the bench's veths) and at XDP. Then the flood alone: the load balancer's CPU per million
//! flood packets, from `/proc` for the process and, for stickylb, from the BPF run-time
//! statistics for the shield's program (which runs in the kernel, outside the process).
//!
//! The control: on this machine the flood's sender shares the CPUs with the legitimate clients,
//! the load balancer and the servers, and takes its share of them whatever its packets cost the
//! load balancer. Each legitimate workload is therefore also measured beside a busy loop in the
//! flood's namespace (a process that only spends CPU), and the sender's and the loop's CPU are
//! read from `/proc`: what the clients lose under the flood beyond what they lose beside the loop
//! is what the flood's packets cost them.
//!
//! Two floods, each its own workload: `syn-flood` from one address (the per-source limit's
//! case), and `syn-flood-spoofed` from random source addresses (hping3's `--rand-source`), the
//! flood a per-source limit cannot stop: every source is new and within its limit, so the
//! shield passes the flood and the kernel's SYN handling (its SYN cookies once the queue is
//! full) takes it, as without the shield. What that measures is what the shield costs then.
//! For it the load balancer's namespace gets a default route through the client's (removed
//! after): its SYN-ACKs to the spoofed addresses leave it as they would leave a host on the
//! Internet, instead of failing their route lookup, which would spare the kernel the work.
//!
//! The shield's SYN limit here is [`LIMIT`], not the default (200/s, 400 at once): each of the
//! bench's 16 client addresses stands for many real clients and opens hundreds of connections
//! per second; the flood source is limited all the same (to 0.2-2% of what it sends).

use std::{
    path::Path,
    process::{Child, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _};
use serde::Serialize;

use super::{
    bpftool::{bpftool, number},
    contender::{Contender, SynLimit},
    env::{Env, Layout},
    load::{self, LoadSpec},
    procs,
};

/// The shield's SYN limit for this measurement (see the module's comment), where the default
/// `hook` puts it (TC on the bench's veths).
pub(super) const LIMIT: SynLimit = SynLimit {
    rate: 2000,
    burst: 4000,
    hook: "auto",
};

/// The same at XDP (native on a veth), for what a dropped packet costs at each hook.
const LIMIT_AT_XDP: SynLimit = SynLimit {
    hook: "xdp",
    ..LIMIT
};

/// The frontend port the flood aims at (the bench's HTTP frontend).
const FRONTEND_PORT: &str = "80";

/// The target: legitimate req/s under the flood at least this share of those without it.
pub(super) const TARGET_RATIO: f64 = 0.8;

/// What runs against the flood: a contender, and for stickylb its shield.
#[derive(Clone, Copy, Debug)]
struct Setup {
    contender: Contender,
    shield: Option<SynLimit>,
    /// The name in the output.
    label: &'static str,
}

const SETUPS: [Setup; 4] = [
    Setup {
        contender: Contender::Stickylb,
        shield: Some(LIMIT),
        label: "stickylb-shield",
    },
    Setup {
        contender: Contender::Stickylb,
        shield: Some(LIMIT_AT_XDP),
        label: "stickylb-shield-xdp",
    },
    Setup {
        contender: Contender::Stickylb,
        shield: None,
        label: "stickylb-no-shield",
    },
    Setup {
        contender: Contender::Haproxy,
        shield: None,
        label: "haproxy",
    },
];

/// One legitimate workload against one setup, without and with the flood.
#[derive(Clone, Debug, Serialize)]
pub(super) struct FloodRow {
    /// `stickylb-shield`, `stickylb-no-shield` or `haproxy`.
    pub(super) contender: &'static str,
    /// `keep-alive` or `new-conn`.
    pub(super) workload: &'static str,
    pub(super) quiet_per_s: f64,
    pub(super) flooded_per_s: f64,
    pub(super) quiet_errors: u64,
    pub(super) flooded_errors: u64,
    /// SYNs per second hping3 sent meanwhile.
    pub(super) flood_per_s: f64,
    /// CPUs hping3 kept busy meanwhile (its CPU seconds per second, from `/proc`).
    pub(super) sender_cpus: f64,
    /// The control: the same workload beside a busy loop in the flood's namespace, and the
    /// CPUs that loop kept busy.
    pub(super) busy_loop_per_s: f64,
    pub(super) busy_loop_errors: u64,
    pub(super) busy_loop_cpus: f64,
}

impl FloodRow {
    pub(super) fn ratio(&self) -> f64 {
        self.flooded_per_s / self.quiet_per_s
    }

    /// Under the flood against beside the busy loop: what the flood's packets cost the clients,
    /// beyond the CPU its sender takes from them.
    pub(super) fn beyond_the_senders_cpu(&self) -> f64 {
        self.flooded_per_s / self.busy_loop_per_s
    }

    /// Beside the busy loop against without it.
    pub(super) fn busy_loop_ratio(&self) -> f64 {
        self.busy_loop_per_s / self.quiet_per_s
    }
}

/// The flood alone against one setup: what its packets cost.
#[derive(Clone, Debug, Serialize)]
pub(super) struct FloodCost {
    /// As in [`FloodRow::contender`].
    pub(super) contender: &'static str,
    pub(super) packets: u64,
    pub(super) seconds: f64,
    /// CPU seconds of the load balancer's process meanwhile.
    pub(super) process_cpu_s: f64,
    /// Run time of the shield's program meanwhile (`None` without the shield, or without
    /// BPF statistics).
    pub(super) program_cpu_s: Option<f64>,
    /// SYNs the shield dropped by rate meanwhile (with the shield).
    pub(super) dropped_by_rate: Option<u64>,
}

impl FloodCost {
    /// CPU milliseconds per million flood packets, process and program together.
    pub(super) fn ms_per_million(&self) -> f64 {
        let cpu = self.process_cpu_s + self.program_cpu_s.unwrap_or(0.0);
        cpu * 1e3 / (self.packets as f64 / 1e6)
    }
}

/// Where the flood's SYNs come from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub(super) enum Sources {
    /// The client namespace's own address.
    One,
    /// Random addresses, a new one for nearly every SYN.
    Spoofed,
}

impl Sources {
    /// The workload's id, which also names its output.
    pub(super) fn workload(self) -> &'static str {
        match self {
            Self::One => super::args::SYN_FLOOD,
            Self::Spoofed => super::args::SYN_FLOOD_SPOOFED,
        }
    }
}

/// What the measurement found.
#[derive(Clone, Debug, Serialize)]
pub(super) struct Flood {
    pub(super) sources: Sources,
    pub(super) limit: SynLimit,
    pub(super) rows: Vec<FloodRow>,
    pub(super) costs: Vec<FloodCost>,
}

/// The legitimate workloads: keep-alive, and a new connection per request.
const WORKLOADS: [(&str, u32); 2] = [("keep-alive", 0), ("new-conn", 1)];

pub(super) fn measure(env: &Env, sources: Sources) -> anyhow::Result<Flood> {
    let _route = match sources {
        Sources::One => None,
        Sources::Spoofed => Some(ReturnRoute::add(env)?),
    };
    let id = sources.workload();
    let mut flood = Flood {
        sources,
        limit: LIMIT,
        rows: Vec::new(),
        costs: Vec::new(),
    };
    for setup in SETUPS {
        env.reset_table()?;
        env.set_shield(setup.shield);
        let started = env.start(setup.contender, Layout::Routed);
        env.set_shield(None);
        let (mut lb, _) = started?;
        for (workload, per_connection) in WORKLOADS {
            let row = measure_workload(env, (setup, sources), workload, per_connection)?;
            let verdict = if row.ratio() >= TARGET_RATIO {
                "met"
            } else {
                "missed"
            };
            println!(
                "bench: {id} {workload} {}: {:.0} req/s without the flood, {:.0} under \
                 {:.0} SYN/s: {:.2}x (target {TARGET_RATIO}x {verdict}; errors {} / {}); \
                 beside a busy loop {:.0} req/s ({:.2}x): the flood {:.2}x of that; \
                 sender {:.2} CPUs, loop {:.2}",
                setup.label,
                row.quiet_per_s,
                row.flooded_per_s,
                row.flood_per_s,
                row.ratio(),
                row.quiet_errors,
                row.flooded_errors,
                row.busy_loop_per_s,
                row.busy_loop_ratio(),
                row.beyond_the_senders_cpu(),
                row.sender_cpus,
                row.busy_loop_cpus,
            );
            flood.rows.push(row);
        }
        lb.check_running()?;
        let cost = measure_cost(env, (setup, sources), lb.pid())?;
        println!(
            "bench: {id} alone {}: {} packets in {:.1} s, process {:.3} s CPU, program {} \
             -> {:.1} ms CPU per million packets{}",
            setup.label,
            cost.packets,
            cost.seconds,
            cost.process_cpu_s,
            cost.program_cpu_s
                .map_or("not counted".to_owned(), |s| format!("{s:.3} s")),
            cost.ms_per_million(),
            cost.dropped_by_rate
                .map_or(String::new(), |n| format!(", {n} dropped by rate")),
        );
        flood.costs.push(cost);
        lb.check_running()?;
        lb.stop()?;
        env.reset_table()?;
    }
    Ok(flood)
}

/// One legitimate workload without, then with, the flood, then beside the busy loop.
fn measure_workload(
    env: &Env,
    (setup, sources): (Setup, Sources),
    workload: &'static str,
    per_connection: u32,
) -> anyhow::Result<FloodRow> {
    let plan = &env.plan;
    let topology = env.topology(Layout::Routed);
    let base = setup.contender.base_url(&topology.addrs);
    let clients = topology.addrs.more_clients();
    let connections = if per_connection == 0 {
        plan.keep_alive_connections
    } else {
        plan.new_conn_connections
    };
    let spec = |duration, prefix| LoadSpec {
        per_connection,
        sources: &clients,
        ..LoadSpec::new(
            base.trim_start_matches("http://"),
            connections,
            duration,
            prefix,
        )
    };
    load::run(&topology.client, &env.load, &spec(plan.warmup, "f100d000"))?;
    let quiet = load::run(&topology.client, &env.load, &spec(plan.measure, "f100d001"))?;
    let hping = Hping::start(env, sources)?;
    // The flood at full rate before the measurement starts.
    procs::sleep(Duration::from_millis(300))?;
    let flooded = load::run(&topology.client, &env.load, &spec(plan.measure, "f100d002"));
    let sender_cpus = hping.cpus();
    let (sent, seconds) = hping.stop()?;
    let flooded = flooded?;
    let sender_cpus = sender_cpus?;
    let busy_loop = BusyLoop::start(env)?;
    procs::sleep(Duration::from_millis(300))?;
    let beside = load::run(&topology.client, &env.load, &spec(plan.measure, "f100d003"));
    let busy_loop_cpus = busy_loop.stop()?;
    let beside = beside?;
    Ok(FloodRow {
        contender: setup.label,
        workload,
        quiet_per_s: quiet.requests as f64 / quiet.seconds,
        flooded_per_s: flooded.requests as f64 / flooded.seconds,
        quiet_errors: quiet.errors + quiet.status_errors,
        flooded_errors: flooded.errors + flooded.status_errors,
        flood_per_s: sent as f64 / seconds,
        sender_cpus,
        busy_loop_per_s: beside.requests as f64 / beside.seconds,
        busy_loop_errors: beside.errors + beside.status_errors,
        busy_loop_cpus,
    })
}

/// The flood alone, for `env.plan.measure`: the load balancer's CPU meanwhile.
fn measure_cost(
    env: &Env,
    (setup, sources): (Setup, Sources),
    pid: u32,
) -> anyhow::Result<FloodCost> {
    let links = env.shield_links();
    let shielded = setup.shield.is_some();
    let program =
        |links: &Path| -> Option<(f64, u64)> { shielded.then(|| shield_program(links).ok())? };
    let (cpu_before, program_before) = (procs::cpu_seconds(pid)?, program(&links));
    let dropped_before = dropped_by_rate(env, shielded);
    let hping = Hping::start(env, sources)?;
    procs::sleep(env.plan.measure)?;
    let (packets, seconds) = hping.stop()?;
    let (cpu_after, program_after) = (procs::cpu_seconds(pid)?, program(&links));
    let dropped_after = dropped_by_rate(env, shielded);
    let program_cpu_s = match (program_before, program_after) {
        // A run time of 0 while the program ran: statistics are off.
        (Some((before, _)), Some((after, count))) if count > 0 && after > 0.0 => {
            Some(after - before)
        }
        _ => None,
    };
    Ok(FloodCost {
        contender: setup.label,
        packets,
        seconds,
        process_cpu_s: cpu_after - cpu_before,
        program_cpu_s,
        dropped_by_rate: dropped_before
            .zip(dropped_after)
            .map(|(before, after)| after.saturating_sub(before)),
    })
}

/// Seconds the shield's program has run and how many packets it ran for, from its links pinned
/// in `dir` (`shield_<interface>` at XDP, `shieldtc_<interface>` at TC).
fn shield_program(dir: &Path) -> anyhow::Result<(f64, u64)> {
    let mut programs = std::collections::BTreeSet::new();
    for entry in std::fs::read_dir(dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .flatten()
    {
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with("shield_") || name.starts_with("shieldtc_") {
            let link = bpftool(&["link", "show", "pinned"], &entry.path())?;
            programs.insert(number(&link, "prog_id")?);
        }
    }
    if programs.is_empty() {
        bail!("no shield link pinned in {}", dir.display());
    }
    let (mut nanoseconds, mut count) = (0, 0);
    for id in programs {
        let program = bpftool(&["prog", "show", "id"], Path::new(&id.to_string()))?;
        // Absent while statistics are off.
        nanoseconds += number(&program, "run_time_ns").unwrap_or(0);
        count += number(&program, "run_cnt").unwrap_or(0);
    }
    Ok((nanoseconds as f64 / 1e9, count))
}

/// The shield's dropped-by-rate counter, from stickylb's metrics (when it is `shielded`).
fn dropped_by_rate(env: &Env, shielded: bool) -> Option<u64> {
    if !shielded {
        return None;
    }
    let addrs = &env.topology(Layout::Routed).addrs;
    let url = format!("{}/metrics", super::contender::monitor_url(addrs));
    let metrics = env.client_get(&url, Layout::Routed).ok()?;
    super::metrics::metric_value(
        &metrics,
        "stickylb_shield_packets_total{verdict=\"dropped_rate\"}",
    )
}

/// A process running in the client namespace (the flood's), and since when.
struct Beside {
    child: Child,
    started: Instant,
}

impl Beside {
    /// Starts `args` in the client namespace; its output is kept when `output`.
    fn start(env: &Env, args: &[&str], output: bool) -> anyhow::Result<Self> {
        let (program, args) = args.split_first().context("no program to start")?;
        let mut command = env.topology(Layout::Routed).client.command(program);
        let out = || {
            if output {
                Stdio::piped()
            } else {
                Stdio::null()
            }
        };
        command
            .args(args)
            .stdin(Stdio::null())
            .stdout(out())
            .stderr(out());
        Ok(Self {
            child: procs::spawn(&mut command)?,
            started: Instant::now(),
        })
    }

    /// CPUs it has kept busy since it started: its CPU seconds per second.
    fn cpus(&self) -> anyhow::Result<f64> {
        let cpu = procs::cpu_seconds(self.child.id())?;
        Ok(cpu / self.started.elapsed().as_secs_f64())
    }
}

/// A running `hping3 --flood -S` from the client namespace to the frontend.
struct Hping(Beside);

impl Hping {
    fn start(env: &Env, sources: Sources) -> anyhow::Result<Self> {
        let addrs = &env.topology(Layout::Routed).addrs;
        let (client, lb) = (addrs.client.to_string(), addrs.lb.to_string());
        let source: &[&str] = match sources {
            Sources::One => &["-a", &client],
            Sources::Spoofed => &["--rand-source"],
        };
        let args: Vec<&str> = ["hping3", "-S", "-p", FRONTEND_PORT, "--flood"]
            .into_iter()
            .chain(source.iter().copied())
            .chain([lb.as_str()])
            .collect();
        Ok(Self(Beside::start(env, &args, true)?))
    }

    fn cpus(&self) -> anyhow::Result<f64> {
        self.0.cpus()
    }

    /// Stops it (SIGINT: it prints its statistics); the SYNs it sent and over how long.
    fn stop(self) -> anyhow::Result<(u64, f64)> {
        let Beside { mut child, started } = self.0;
        let seconds = started.elapsed().as_secs_f64();
        procs::signal(child.id(), libc::SIGINT);
        procs::wait(&mut child, Duration::from_secs(10), "hping3")?;
        let output = child
            .wait_with_output()
            .context("reading hping3's output")?;
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        match transmitted(&text) {
            Some(sent) => Ok((sent, seconds)),
            None => bail!("hping3 printed no statistics:\n{text}"),
        }
    }
}

/// The control beside the flood: a shell's busy loop in the flood's namespace, a process that
/// only spends CPU (as much as the scheduler gives one runnable thread, as hping3 does).
struct BusyLoop(Beside);

impl BusyLoop {
    fn start(env: &Env) -> anyhow::Result<Self> {
        let args = ["sh", "-c", "while :; do :; done"];
        Ok(Self(Beside::start(env, &args, false)?))
    }

    /// Stops it; the CPUs it kept busy.
    fn stop(self) -> anyhow::Result<f64> {
        let cpus = self.0.cpus();
        let mut child = self.0.child;
        procs::signal(child.id(), libc::SIGKILL);
        procs::wait(&mut child, Duration::from_secs(10), "the busy loop")?;
        cpus
    }
}

/// The load balancer namespace's default route through the client's, while a spoofed flood
/// runs (see the module's comment); removed on drop. The client's namespace does not forward:
/// the SYN-ACKs end there.
struct ReturnRoute<'a>(&'a netns_kit::NetNs);

impl<'a> ReturnRoute<'a> {
    fn add(env: &'a Env) -> anyhow::Result<Self> {
        let topology = env.topology(Layout::Routed);
        let gateway = topology.addrs.client.to_string();
        topology
            .lb
            .add_default_route(&gateway)
            .context("adding the load balancer's route back to the spoofed sources")?;
        Ok(Self(&topology.lb))
    }
}

impl Drop for ReturnRoute<'_> {
    fn drop(&mut self) {
        if let Err(error) = self.0.run(&["ip", "route", "del", "default"]) {
            eprintln!("bench: could not remove the spoofed flood's return route: {error:#}");
        }
    }
}

/// `N packets transmitted` of hping3's statistics.
fn transmitted(text: &str) -> Option<u64> {
    let line = text.lines().find(|l| l.contains("packets transmitted"))?;
    line.split_whitespace().next()?.parse().ok()
}

/// Writes what was measured as `<workload>.json` (`syn-flood.json`, `syn-flood-spoofed.json`)
/// into `dir`.
pub(super) fn write(flood: &Flood, dir: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let path = dir.join(format!("{}.json", flood.sources.workload()));
    let text = serde_json::to_string_pretty(flood).context("serializing the flood results")?;
    std::fs::write(&path, text + "\n").with_context(|| format!("writing {}", path.display()))
}

/// Whether hping3 is there to flood with.
pub(super) fn available() -> bool {
    super::run::find_in_path("hping3").is_some()
}

#[cfg(test)]
mod tests {
    use super::{transmitted, FloodCost};

    #[test]
    fn reads_hpings_statistics() {
        let text = "HPING 10.240.1.1 (veth0 10.240.1.1): S set, 40 headers + 0 data bytes\n\
                    hping in flood mode, no replies will be shown\n\n\
                    --- 10.240.1.1 hping statistic ---\n\
                    98026 packets transmitted, 0 packets received, 100% packet loss\n";
        assert_eq!(transmitted(text), Some(98_026));
        assert_eq!(transmitted("nothing"), None);
    }

    #[test]
    fn cost_is_cpu_per_million_packets() {
        let cost = FloodCost {
            contender: "stickylb",
            packets: 2_000_000,
            seconds: 2.0,
            process_cpu_s: 0.01,
            program_cpu_s: Some(0.09),
            dropped_by_rate: Some(1_990_000),
        };
        assert!((cost.ms_per_million() - 50.0).abs() < 1e-9);
    }
}
