//! `cargo xtask bench`: builds in release mode, then measures stickylb against HAProxy 2.6 and
//! against no load balancer at all, in network namespaces (client, lb, backends), and writes
//! `BENCHMARKS.md` and `benchmarks.json` (to `docs/` unless `--output` says otherwise).
//!
//! Every cell (workload x contender) starts its load balancer afresh with an empty table,
//! warms up, then measures; repetitions alternate the contenders. A benchmark, not a test:
//! nothing here asserts a speed. `xtask test` runs `--quick` and checks the table's shape.

mod check;
mod contender;
mod logtail;
mod machine;
mod netns;
mod procs;
mod profile;
mod report;
mod scale;
mod workload;
mod wrk;

use std::{
    fs,
    io::{BufRead as _, BufReader},
    path::{Path, PathBuf},
    process::{Child, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _};
use serde::Serialize;

pub(crate) use self::check::verify;
use self::{
    contender::{Contender, LbProcess},
    netns::Topology,
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
            fill_limit: Duration::from_secs(if quick { 60 } else { 300 }),
        }
    }
}

fn as_seconds<S: serde::Serializer>(duration: &Duration, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_f64(duration.as_secs_f64())
}

/// Root of the bench's pinned maps; each run pins under `<this>/bench-<pid>/`.
const PIN_DIR: &str = "/sys/fs/bpf/stickylb-bench";
/// Root of the bench's sockets (stickylb's control socket, HAProxy's stats socket).
const RUN_DIR: &str = "/run/stickylb-bench";
/// No per-request log (HAProxy logs nothing either); the daemon's few start-up lines stay, as
/// the bench waits for `stickylb started`.
const STICKYLB_LOG: &str = "warn,stickylb::daemon=info";
const HAPROXY: &str = "/usr/sbin/haproxy";

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
    let output = args
        .output
        .clone()
        .unwrap_or_else(|| workspace::root().join("docs"));
    let started = Instant::now();
    let _signals = SignalGuard::install();
    remove_stale();
    let env = Env::create(plan)?;
    let cells = run_matrix(&env)?;
    let mut scale = Vec::new();
    for contender in [Contender::Haproxy, Contender::Stickylb] {
        scale.push(scale::measure(&env, contender)?);
    }
    let profiles = if args.perf {
        profile::run(&env)?
    } else {
        Vec::new()
    };
    let report = Report::new(
        machine,
        env.plan.clone(),
        cells,
        scale,
        profiles,
        started.elapsed(),
    );
    drop(env);
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
fn run_matrix(env: &Env) -> anyhow::Result<Vec<Cell>> {
    let contenders: Vec<Contender> = Contender::ALL
        .into_iter()
        .filter(|contender| contender.unavailable().is_none())
        .collect();
    let mut cells: Vec<Cell> = Vec::new();
    for workload in Workload::ALL {
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
    let errors = match sample.errors {
        0 => String::new(),
        n => format!(", {n} errors"),
    };
    if workload.per_gigabyte() {
        format!("{:.0} MB/s{cpu}{errors}", sample.megabytes_per_s())
    } else {
        format!(
            "{:.0} req/s, p99 {:.2} ms{cpu}{errors}",
            sample.requests_per_s(),
            sample.p99_ms.unwrap_or(0.0)
        )
    }
}

fn run_cell(
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
    let (mut lb, _) = env.start(contender)?;
    let sample = workload::measure(env, workload, contender, Some(&mut lb), run)?;
    lb.stop()?;
    Ok(sample)
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

/// Pinned maps and sockets of bench runs whose process is gone, and their namespaces.
fn remove_stale() {
    netns::remove_stale();
    for root in [PIN_DIR, RUN_DIR] {
        let Ok(entries) = fs::read_dir(root) else {
            continue;
        };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let pid = name
                .strip_prefix("bench-")
                .and_then(|pid| pid.parse::<u32>().ok());
            if pid.is_some_and(|pid| !Path::new("/proc").join(pid.to_string()).exists()) {
                println!(
                    "bench: removing {} left by a killed run",
                    entry.path().display()
                );
                let _ = fs::remove_dir_all(entry.path());
            }
        }
    }
}

/// Everything a run shares: the namespaces, the backends, the paths and binaries.
pub(crate) struct Env {
    plan: Plan,
    topology: Topology,
    /// Configurations, logs and the wrk script: `target/bench/run-<pid>/`.
    work_dir: PathBuf,
    /// `<RUN_DIR>/bench-<pid>`: sockets.
    run_dir: PathBuf,
    /// `<PIN_DIR>/bench-<pid>`: stickylb's pin root (instance `bench-<pid>`).
    pin_root: PathBuf,
    instance: String,
    stickylb: PathBuf,
    script: PathBuf,
    backends: Child,
}

impl Env {
    fn create(plan: Plan) -> anyhow::Result<Self> {
        let instance = format!("bench-{}", std::process::id());
        let work_dir = workspace::host_target_dir()
            .join("bench")
            .join(format!("run-{}", std::process::id()));
        let run_dir = Path::new(RUN_DIR).join(&instance);
        for dir in [&work_dir, &run_dir] {
            fs::create_dir_all(dir)
                .with_context(|| format!("could not create {}", dir.display()))?;
        }
        let script = work_dir.join("bench.lua");
        fs::write(&script, wrk::SCRIPT)
            .with_context(|| format!("could not write {}", script.display()))?;
        let stickylb = workspace::stickylb_binary(true);
        let topology = Topology::create()?;
        let backends = start_backends(
            &topology,
            &stickylb.with_file_name("stickylb-backend"),
            &work_dir,
        )?;
        println!(
            "bench: namespaces {}, {}, {}; work directory {}",
            topology.client.name(),
            topology.lb.name(),
            topology.backends.name(),
            work_dir.display()
        );
        Ok(Self {
            pin_root: Path::new(PIN_DIR).join(&instance),
            plan,
            topology,
            work_dir,
            run_dir,
            instance,
            stickylb,
            script,
            backends,
        })
    }

    /// Starts `contender`'s load balancer and waits until it serves; returns it and how long
    /// that took from the start of the process.
    fn start(&self, contender: Contender) -> anyhow::Result<(LbProcess, Duration)> {
        let lb = &self.topology.lb;
        let started = Instant::now();
        match contender {
            Contender::Direct => bail!("the direct contender has no load balancer"),
            Contender::Haproxy => {
                let config = self.work_dir.join("haproxy.cfg");
                let socket = self.haproxy_socket();
                write(
                    &config,
                    &contender::haproxy_config(&socket.display().to_string()),
                )?;
                let mut command = lb.command(HAPROXY);
                command.arg("-f").arg(&config).arg("-db");
                let child = procs::spawn(contender::lb_stdio(&mut command))?;
                let process = LbProcess::new(contender, child, &self.work_dir.join("haproxy.log"))?;
                self.wait_answering(&contender.base_url(), &process)?;
                Ok((process, started.elapsed()))
            }
            Contender::Stickylb | Contender::StickylbFastPath => {
                if let Some(why) = contender.unavailable() {
                    bail!("{}: {why}", contender.label());
                }
                // The fast path contender turns the fast path on here, in its own configuration,
                // once that exists.
                let config = self.work_dir.join("stickylb.toml");
                write(
                    &config,
                    &contender::stickylb_config(
                        &self.instance,
                        PIN_DIR,
                        &self.run_dir.join("control.sock").display().to_string(),
                    ),
                )?;
                let mut command = lb.command(&self.stickylb.display().to_string());
                command
                    .args(["--log", STICKYLB_LOG, "run", "--config"])
                    .arg(&config);
                let child = procs::spawn(contender::lb_stdio(&mut command))?;
                let process =
                    LbProcess::new(contender, child, &self.work_dir.join("stickylb.log"))?;
                process
                    .log
                    .wait_for("stickylb started", Duration::from_secs(120))?;
                Ok((process, started.elapsed()))
            }
        }
    }

    /// Polls `base_url` from the client until it answers 200.
    fn wait_answering(&self, base_url: &str, process: &LbProcess) -> anyhow::Result<()> {
        let end = Instant::now() + Duration::from_secs(30);
        loop {
            procs::check_interrupted()?;
            if self.client_get(&format!("{base_url}/")).is_ok() {
                return Ok(());
            }
            if Instant::now() >= end {
                bail!(
                    "{} did not answer within 30 s:\n{}",
                    process.contender.label(),
                    process.log.tail()
                );
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// GET `url` from the client namespace; the body of a 200 answer.
    fn client_get(&self, url: &str) -> anyhow::Result<String> {
        let output = self
            .topology
            .client
            .command("curl")
            .args(["--silent", "--fail", "--max-time", "5", url])
            .stdin(Stdio::null())
            .output()
            .context("could not run curl")?;
        if !output.status.success() {
            bail!("GET {url} failed ({})", output.status);
        }
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    }

    fn haproxy_socket(&self) -> PathBuf {
        self.run_dir.join("haproxy.sock")
    }

    /// Forgets stickylb's pinned table, so the next start begins empty.
    fn reset_table(&self) -> anyhow::Result<()> {
        match fs::remove_dir_all(&self.pin_root) {
            Ok(()) => Ok(()),
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(error) => {
                Err(error).with_context(|| format!("could not remove {}", self.pin_root.display()))
            }
        }
    }

    /// The memory the kernel accounts to the pinned stick table.
    fn map_memlock_bytes(&self) -> anyhow::Result<u64> {
        let path = self.pin_root.join("v1/STICK_TABLE");
        scale::memlock_from_bpftool(&scale::bpftool_map_show(&path)?)
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        procs::kill(&mut self.backends);
        let _ = self.reset_table();
        let _ = fs::remove_dir(PIN_DIR);
        let _ = fs::remove_dir_all(&self.run_dir);
        let _ = fs::remove_dir(RUN_DIR);
        // The namespaces go with `topology`; the work directory stays for its logs.
    }
}

/// One `stickylb-backend` with a listener per backend port; waits for its `ready`.
fn start_backends(topology: &Topology, binary: &Path, work_dir: &Path) -> anyhow::Result<Child> {
    let mut command = topology.backends.command(&binary.display().to_string());
    for (i, port) in contender::BACKEND_PORTS.iter().enumerate() {
        command
            .arg("--listen")
            .arg(format!("{}:{port}=be{}", netns::BACKENDS_ADDR, i + 1));
    }
    let log = work_dir.join("backends.log");
    let stderr =
        fs::File::create(&log).with_context(|| format!("could not create {}", log.display()))?;
    command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(stderr);
    let mut child = procs::spawn(&mut command)?;
    let mut first_line = String::new();
    if let Some(stdout) = child.stdout.take() {
        let _ = BufReader::new(stdout).read_line(&mut first_line);
    }
    if first_line.trim() != "ready" {
        procs::kill(&mut child);
        bail!(
            "the backends did not start:\n{}",
            fs::read_to_string(&log).unwrap_or_default()
        );
    }
    Ok(child)
}

fn write(path: &Path, text: &str) -> anyhow::Result<()> {
    fs::write(path, text).with_context(|| format!("could not write {}", path.display()))
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
