//! `cargo xtask bench`: builds in release mode, then measures stickylb against HAProxy 2.6 and
//! against no load balancer at all, in network namespaces (client, lb, backends), and writes
//! `BENCHMARKS.md` and `benchmarks.json` (to `docs/` unless `--output` says otherwise).
//!
//! Every cell (workload x contender) starts its load balancer afresh with an empty table,
//! warms up, then measures; repetitions alternate the contenders. A benchmark, not a test:
//! nothing here asserts a speed. `xtask test` runs `--quick` and checks the table's shape.

mod bpfstats;
mod bpftool;
mod check;
pub(crate) mod client;
mod contender;
mod env;
mod load;
mod logtail;
mod machine;
mod netns;
mod others;
mod procs;
mod profile;
mod report;
mod scale;
mod splice_rate;
mod workload;
mod wrk;

use std::{
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _};
use serde::Serialize;

pub(crate) use self::{check::verify, client::ClientArgs};
use self::{
    contender::Contender,
    env::{remove_stale, Env, HAPROXY},
    procs::SignalGuard,
    report::{Cell, Report},
    workload::Workload,
};
use crate::{build, process::is_root, setup, workspace};

#[derive(Debug, clap::Args)]
pub(crate) struct BenchArgs {
    /// Short runs, one repetition, 100k table entries: under two minutes, for development.
    #[arg(long)]
    pub(crate) quick: bool,
    /// Directory for BENCHMARKS.md and benchmarks.json [default: docs/].
    #[arg(long, value_name = "DIR")]
    pub(crate) output: Option<PathBuf>,
    /// Repetitions of each cell [default: 3; --quick: 1].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub(crate) runs: Option<u32>,
    /// Also profile each workload with perf (one extra, unmeasured run per load balancer) and
    /// add where the CPU time goes to the report; perf data under target/bench/.
    #[arg(long)]
    pub(crate) perf: bool,
    /// Only these workloads (new-conn-unique, new-conn-repeat, keep-alive, download, churn,
    /// churn-16-clients, port-reuse, paced-keep-alive, one-armed-keep-alive, one-armed-churn,
    /// table-scale, splice-rate); a partial run writes to target/bench/partial/ unless --output
    /// says otherwise.
    #[arg(long = "workload", value_name = "ID", value_parser = parse_workload_filter)]
    workloads: Vec<String>,
    /// Only these contenders (direct, haproxy, stickylb, stickylb-fast-path); see --workload.
    #[arg(long = "contender", value_name = "ID", value_parser = parse_contender)]
    contenders: Vec<Contender>,
}

/// The table-scale and splice-rate measurements are not request workloads, but they can be
/// chosen like one.
const TABLE_SCALE: &str = "table-scale";
const SPLICE_RATE: &str = "splice-rate";

fn parse_workload_filter(id: &str) -> Result<String, String> {
    if id == TABLE_SCALE || id == SPLICE_RATE || Workload::from_id(id).is_some() {
        Ok(id.to_owned())
    } else {
        Err(format!(
            "unknown workload {id:?}; one of: {}, {TABLE_SCALE}, {SPLICE_RATE}",
            Workload::ALL.map(Workload::id).join(", ")
        ))
    }
}

fn parse_contender(id: &str) -> Result<Contender, String> {
    Contender::from_id(id).ok_or_else(|| {
        format!(
            "unknown contender {id:?}; one of: {}",
            Contender::ALL.map(Contender::id).join(", ")
        )
    })
}

impl BenchArgs {
    fn partial(&self) -> bool {
        !self.workloads.is_empty() || !self.contenders.is_empty()
    }

    fn wants_workload(&self, id: &str) -> bool {
        self.workloads.is_empty() || self.workloads.iter().any(|w| w == id)
    }

    fn wants_contender(&self, contender: Contender) -> bool {
        self.contenders.is_empty() || self.contenders.contains(&contender)
    }
}

/// How long and how hard: the full bench, or `--quick`.
#[derive(Clone, Debug, Serialize)]
pub(crate) struct Plan {
    pub(crate) quick: bool,
    pub(crate) runs: u32,
    #[serde(rename = "warmup_s", serialize_with = "as_seconds")]
    pub(crate) warmup: Duration,
    #[serde(rename = "measure_s", serialize_with = "as_seconds")]
    pub(crate) measure: Duration,
    pub(crate) wrk_threads: u32,
    pub(crate) new_conn_connections: u32,
    pub(crate) keep_alive_connections: u32,
    /// Distinct cookies of the repeating workloads.
    pub(crate) cookie_pool: u64,
    pub(crate) download_connections: u32,
    /// Bytes of each download.
    pub(crate) download_bytes: u64,
    pub(crate) table_entries: u64,
    pub(crate) restarts: u32,
    /// Requests per connection of the browser-like workloads (the last one closes).
    pub(crate) churn_requests: u32,
    /// Requests per second of the paced workload, all connections together.
    pub(crate) paced_rate: f64,
    /// The unmeasured keep-alive prelude of the port-reuse workload.
    #[serde(rename = "port_reuse_prelude_s", serialize_with = "as_seconds")]
    pub(crate) port_reuse_prelude: Duration,
    /// New spliced connections per second offered to one server (the source-port budget).
    pub(crate) splice_rate: f64,
    #[serde(rename = "splice_rate_duration_s", serialize_with = "as_seconds")]
    pub(crate) splice_rate_duration: Duration,
    /// Tries per run when other processes disturb it (see `run_cell`).
    pub(crate) attempts: u32,
    /// Time the whole run may spend waiting for other processes and repeating disturbed runs.
    #[serde(rename = "patience_s", serialize_with = "as_seconds")]
    pub(crate) patience: Duration,
    #[serde(rename = "fill_limit_s", serialize_with = "as_seconds")]
    pub(crate) fill_limit: Duration,
}

impl Plan {
    fn new(args: &BenchArgs) -> Self {
        let quick = args.quick;
        Self {
            quick,
            runs: args.runs.unwrap_or(if quick { 1 } else { 3 }),
            warmup: Duration::from_secs(if quick { 1 } else { 2 }),
            measure: Duration::from_secs(if quick { 2 } else { 10 }),
            wrk_threads: 2,
            new_conn_connections: 16,
            keep_alive_connections: 64,
            cookie_pool: 1000,
            download_connections: 4,
            download_bytes: if quick { 64 << 20 } else { 512 << 20 },
            table_entries: if quick { 100_000 } else { 1_000_000 },
            restarts: if quick { 1 } else { 3 },
            churn_requests: 5,
            paced_rate: 20_000.0,
            port_reuse_prelude: Duration::from_secs(if quick { 1 } else { 3 }),
            splice_rate: if quick { 1000.0 } else { 2000.0 },
            splice_rate_duration: Duration::from_secs(if quick { 3 } else { 120 }),
            attempts: if quick { 1 } else { 3 },
            patience: Duration::from_secs(if quick { 0 } else { 240 }),
            fill_limit: Duration::from_secs(if quick { 60 } else { 300 }),
        }
    }
}

fn as_seconds<S: serde::Serializer>(duration: &Duration, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_f64(duration.as_secs_f64())
}

pub(crate) fn run(args: &BenchArgs) -> anyhow::Result<()> {
    if !is_root() {
        bail!(
            "cargo xtask bench needs root (network namespaces, BPF maps): run it as root or \
             with `sudo -E env PATH=$PATH cargo xtask bench`"
        );
    }
    check_tools()?;
    let load_before = machine::load_average();
    setup::ensure_bpffs_mounted()?;
    build::build_all(true)?;
    let machine = machine::describe(load_before);
    let plan = Plan::new(args);
    let output = args.output.clone().unwrap_or_else(|| {
        if args.partial() {
            workspace::root().join("target/bench/partial")
        } else {
            workspace::root().join("docs")
        }
    });
    let started = Instant::now();
    let _signals = SignalGuard::install();
    remove_stale();
    // The fast path's program runs outside the daemon's process: its time is counted apart.
    let bpf_stats = bpfstats::RunTimeStats::enable()
        .inspect_err(|error| println!("bench: no BPF run-time statistics ({error:#}): the fast path's program time is not counted"))
        .ok();
    let env = Env::create(plan)?;
    let cells = run_matrix(&env, args)?;
    let mut scale = Vec::new();
    for contender in [Contender::Haproxy, Contender::Stickylb] {
        if args.wants_workload(TABLE_SCALE) && args.wants_contender(contender) {
            scale.push(scale::measure(&env, contender)?);
        }
    }
    let splice_rate = if args.wants_workload(SPLICE_RATE)
        && args.wants_contender(Contender::StickylbFastPath)
        && Contender::StickylbFastPath.unavailable().is_none()
    {
        Some(splice_rate::measure(&env)?)
    } else {
        None
    };
    let profiles = if args.perf {
        profile::run(&env)?
    } else {
        Vec::new()
    };
    let mut report = Report::new(
        machine,
        env.plan.clone(),
        cells,
        (scale, splice_rate),
        profiles,
        started.elapsed(),
    );
    report.fastpath_program_time_counted = bpf_stats.is_some();
    drop((env, bpf_stats));
    report::write(&report, &output)?;
    println!(
        "bench: done in {:.0} s; wrote {} and {}",
        started.elapsed().as_secs_f64(),
        output.join(report::MARKDOWN_FILE).display(),
        output.join(report::JSON_FILE).display()
    );
    Ok(())
}

/// Every workload against every contender that can run, `runs` times, contenders alternating.
fn run_matrix(env: &Env, args: &BenchArgs) -> anyhow::Result<Vec<Cell>> {
    let contenders: Vec<Contender> = Contender::available()
        .into_iter()
        .filter(|&contender| args.wants_contender(contender))
        .collect();
    let mut cells: Vec<Cell> = Vec::new();
    for workload in Workload::ALL
        .into_iter()
        .filter(|workload| args.wants_workload(workload.id()))
    {
        let mut row: Vec<Cell> = contenders
            .iter()
            .map(|&contender| Cell::new(workload, contender))
            .collect();
        for run in 0..env.plan.runs {
            for cell in &mut row {
                let sample = run_cell(env, workload, cell.contender, run).with_context(|| {
                    format!("{} against {}", workload.id(), cell.contender.label())
                })?;
                println!(
                    "bench: {} run {}/{} {}: {}",
                    workload.id(),
                    run + 1,
                    env.plan.runs,
                    cell.contender.label(),
                    progress(workload, &sample)
                );
                cell.samples.push(sample);
            }
        }
        cells.append(&mut row);
    }
    Ok(cells)
}

/// One line of figures for the progress output.
fn progress(workload: Workload, sample: &workload::Sample) -> String {
    let cpu = sample
        .lb_cpu_s
        .map_or(String::new(), |s| format!(", LB CPU {s:.2} s"));
    let spliced = sample.fastpath.as_ref().map_or(String::new(), |f| {
        format!(
            ", {} connections spliced in {} attempts",
            f.outcome("spliced"),
            f.attempts
        )
    });
    let errors = match sample.errors {
        0 => String::new(),
        n => format!(", {n} errors"),
    };
    if workload.per_gigabyte() {
        format!("{:.0} MB/s{cpu}{spliced}{errors}", sample.megabytes_per_s())
    } else {
        format!(
            "{:.0} req/s, p99 {:.2} ms{cpu}{spliced}{errors}",
            sample.requests_per_s(),
            sample.p99_ms.unwrap_or(0.0)
        )
    }
}

/// A run disturbed by other processes (more than this share of the CPUs) is repeated.
const OTHERS_LIMIT_PERCENT: f64 = 5.0;

/// One run of a cell. Waits for other processes to quiet down first, and repeats a run they
/// disturbed anyway, within the plan's attempts and the run's budget for such waits.
fn run_cell(
    env: &Env,
    workload: Workload,
    contender: Contender,
    run: u32,
) -> anyhow::Result<workload::Sample> {
    let cpus = std::thread::available_parallelism().map_or(1, usize::from) as f64;
    let mut attempt = 1;
    loop {
        let waited = others::wait_until_quiet(OTHERS_LIMIT_PERCENT, env.patience_left())?;
        env.spend_patience(waited);
        let (others_before, started) = (others::cpu_seconds(), Instant::now());
        let mut sample = run_cell_once(env, workload, contender, run)?;
        let elapsed = started.elapsed();
        let percent =
            100.0 * (others::cpu_seconds() - others_before) / (elapsed.as_secs_f64() * cpus);
        sample.others_cpu_percent = Some(percent);
        sample.attempts = attempt;
        if percent <= OTHERS_LIMIT_PERCENT
            || attempt >= env.plan.attempts
            || env.patience_left().is_zero()
        {
            return Ok(sample);
        }
        println!(
            "bench: {} {}: other processes used {percent:.0}% of the CPUs meanwhile: again",
            workload.id(),
            contender.label()
        );
        env.spend_patience(elapsed);
        attempt += 1;
    }
}

fn run_cell_once(
    env: &Env,
    workload: Workload,
    contender: Contender,
    run: u32,
) -> anyhow::Result<workload::Sample> {
    procs::check_interrupted()?;
    if contender == Contender::Direct {
        return workload::measure(env, workload, contender, None, run);
    }
    env.reset_table()?;
    let (mut lb, _) = env.start(contender, workload.layout())?;
    let mut sample = workload::measure(env, workload, contender, Some(&mut lb), run);
    if let (Ok(sample), Contender::StickylbFastPath) = (&mut sample, contender) {
        sample.fastpath = env.fastpath_counters(workload.layout()).ok();
    }
    lb.stop()?;
    // Unpins the table and the fast path's links, which detaches its program.
    env.reset_table()?;
    sample
}

/// The median of `values` (the mean of the middle two for an even count); None when empty.
pub(crate) fn median(values: &[f64]) -> Option<f64> {
    let mut sorted: Vec<f64> = values.iter().copied().filter(|v| v.is_finite()).collect();
    sorted.sort_by(f64::total_cmp);
    let n = sorted.len();
    match n {
        0 => None,
        _ if n % 2 == 1 => sorted.get(n / 2).copied(),
        _ => Some((sorted.get(n / 2 - 1)? + sorted.get(n / 2)?) / 2.0),
    }
}

/// What the bench needs from the system, named with the command that installs it.
fn check_tools() -> anyhow::Result<()> {
    let missing: Vec<&str> = ["ip", "nsenter", "wrk", "curl", "bpftool", "sysctl"]
        .into_iter()
        .filter(|tool| find_in_path(tool).is_none())
        .chain((!Path::new(HAPROXY).exists()).then_some(HAPROXY))
        .collect();
    if !missing.is_empty() {
        bail!(
            "missing {}: run `cargo xtask setup` (Debian packages)",
            missing.join(", ")
        );
    }
    Ok(())
}

pub(crate) fn find_in_path(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .chain(["/usr/sbin".into(), "/sbin".into()])
        .map(|dir| dir.join(program))
        .find(|candidate| candidate.is_file())
}

#[cfg(test)]
mod tests {
    use super::median;

    #[test]
    fn median_of_odd_even_and_empty() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), Some(2.5));
        assert_eq!(median(&[]), None);
        assert_eq!(median(&[f64::NAN, 5.0]), Some(5.0));
    }
}
