//! What a run shares: the three namespaces, the backends, the paths and binaries; starting a
//! load balancer and waiting until it serves; and removing what a killed run left behind.

use std::{
    cell::Cell,
    fs,
    path::{Path, PathBuf},
    process::{Child, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _};

use super::{
    contender::{self, Contender, Frontend, LbProcess, SynLimit},
    hosts::{self, Topology},
    metrics::metric_value,
    plan::Plan,
    procs,
    tls::TlsFiles,
    wrk,
};
use crate::workspace;

/// Root of the bench's pinned maps; each run pins under `<this>/bench-<pid>/`.
const PIN_DIR: &str = "/sys/fs/bpf/stickylb-bench";
/// Root of the bench's sockets (stickylb's control socket, HAProxy's stats socket).
const RUN_DIR: &str = "/run/stickylb-bench";
/// No per-request log (HAProxy logs nothing either) unless the plan says `access_log`; the
/// daemon's few start-up lines stay, as the bench waits for `stickylb started`.
const STICKYLB_LOG: &str = "warn,stickylb::daemon=info";
pub(super) const HAPROXY: &str = "/usr/sbin/haproxy";
/// Pinned maps and sockets of bench runs whose process is gone, and their namespaces.
pub(super) fn remove_stale() {
    hosts::remove_stale();
    for root in [PIN_DIR, RUN_DIR] {
        for (path, pid) in runs_in(Path::new(root), "bench-") {
            println!("bench: removing {} left by process {pid}", path.display());
            let _ = fs::remove_dir_all(path);
        }
    }
    // Earlier runs' logs: only the latest run's are kept.
    for (path, _) in runs_in(&work_root(), "run-") {
        let _ = fs::remove_dir_all(path);
    }
}

/// Entries `<prefix><pid>` of `dir` whose process is gone.
fn runs_in(dir: &Path, prefix: &str) -> Vec<(PathBuf, u32)> {
    let Ok(entries) = fs::read_dir(dir) else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|entry| {
            let name = entry.file_name().to_string_lossy().into_owned();
            let pid: u32 = name.strip_prefix(prefix)?.parse().ok()?;
            let gone = !Path::new("/proc").join(pid.to_string()).exists();
            gone.then(|| (entry.path(), pid))
        })
        .collect()
}

/// `target/bench`: each run's configurations and logs in `run-<pid>/`, the latest profiles
/// in `profiles/`.
pub(super) fn work_root() -> PathBuf {
    workspace::host_target_dir().join("bench")
}

/// Which hosts a workload runs on (see [`hosts`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub(super) enum Layout {
    Routed,
    OneArmed,
}

/// Everything a run shares: the namespaces, the backends, the paths and binaries.
pub(crate) struct Env {
    pub(super) plan: Plan,
    routed: Topology,
    one_armed: Topology,
    /// Configurations, logs and the wrk script: `target/bench/run-<pid>/`.
    pub(super) work_dir: PathBuf,
    /// `<RUN_DIR>/bench-<pid>`: sockets.
    run_dir: PathBuf,
    /// `<PIN_DIR>/bench-<pid>`: stickylb's pin root (instance `bench-<pid>`).
    pin_root: PathBuf,
    instance: String,
    stickylb: PathBuf,
    /// lb-userspace's load generator, `stickylb-load`.
    pub(super) load: PathBuf,
    pub(super) script: PathBuf,
    /// The TLS workloads' certificate, in the work directory.
    tls: TlsFiles,
    backends: Vec<Child>,
    /// What is left of `plan.patience`.
    patience: Cell<Duration>,
    /// The shield of the stickylb started next (see [`Env::set_shield`]).
    shield: Cell<Option<SynLimit>>,
}

impl Env {
    /// stickylb's `--log`: its default when both log requests.
    fn stickylb_log(&self) -> &'static str {
        if self.plan.access_log {
            "info"
        } else {
            STICKYLB_LOG
        }
    }

    pub(super) fn create(plan: Plan) -> anyhow::Result<Self> {
        let plan_patience = plan.patience;
        let instance = format!("bench-{}", std::process::id());
        let work_dir = work_root().join(format!("run-{}", std::process::id()));
        let run_dir = Path::new(RUN_DIR).join(&instance);
        for dir in [&work_dir, &run_dir] {
            fs::create_dir_all(dir)
                .with_context(|| format!("could not create {}", dir.display()))?;
        }
        let script = work_dir.join("bench.lua");
        fs::write(&script, wrk::SCRIPT)
            .with_context(|| format!("could not write {}", script.display()))?;
        let tls = TlsFiles::make(&work_dir)?;
        let stickylb = workspace::stickylb_binary(true);
        let routed = Topology::routed()?;
        let one_armed = Topology::one_armed()?;
        let backend = stickylb.with_file_name("stickylb-backend");
        let mut backends = Vec::new();
        for (topology, log) in [
            (&routed, "backends.log"),
            (&one_armed, "backends-one-armed.log"),
        ] {
            backends.push(start_backends(topology, &backend, &work_dir.join(log))?);
            println!(
                "bench: namespaces {}, {}, {}",
                topology.client.name(),
                topology.lb.name(),
                topology.backends.name(),
            );
        }
        println!("bench: work directory {}", work_dir.display());
        Ok(Self {
            pin_root: Path::new(PIN_DIR).join(&instance),
            plan,
            routed,
            one_armed,
            work_dir,
            run_dir,
            instance,
            load: stickylb.with_file_name("stickylb-load"),
            stickylb,
            script,
            tls,
            backends,
            patience: Cell::new(plan_patience),
            shield: Cell::new(None),
        })
    }

    pub(super) fn topology(&self, layout: Layout) -> &Topology {
        match layout {
            Layout::Routed => &self.routed,
            Layout::OneArmed => &self.one_armed,
        }
    }

    /// Starts the next stickylb with the shield on and this SYN limit (`None`: off, as every
    /// request workload runs it).
    pub(super) fn set_shield(&self, limit: Option<SynLimit>) {
        self.shield.set(limit);
    }

    /// Where stickylb pins the shield's links (`shield_<interface>`).
    pub(super) fn shield_links(&self) -> PathBuf {
        self.pin_root.join("v1")
    }

    /// What is left of the time for waiting on other processes and repeating runs.
    pub(super) fn patience_left(&self) -> Duration {
        self.patience.get()
    }

    pub(super) fn spend_patience(&self, spent: Duration) {
        self.patience.set(self.patience.get().saturating_sub(spent));
    }

    /// Starts `contender`'s load balancer in `layout` and waits until it serves; returns it and
    /// how long that took from the start of the process.
    pub(super) fn start(
        &self,
        contender: Contender,
        layout: Layout,
    ) -> anyhow::Result<(LbProcess, Duration)> {
        self.start_serving(contender, layout, Frontend::Http)
    }

    /// The same, also serving HTTPS when `frontend` says so.
    pub(super) fn start_serving(
        &self,
        contender: Contender,
        layout: Layout,
        frontend: Frontend,
    ) -> anyhow::Result<(LbProcess, Duration)> {
        let tls = (frontend == Frontend::Https).then_some(&self.tls);
        let topology = self.topology(layout);
        let (lb, addrs) = (&topology.lb, &topology.addrs);
        let started = Instant::now();
        match contender {
            Contender::Direct => bail!("the direct contender has no load balancer"),
            Contender::Haproxy => {
                let config = self.work_dir.join("haproxy.cfg");
                let socket = self.haproxy_socket();
                write(
                    &config,
                    &contender::haproxy_config(
                        &socket.display().to_string(),
                        addrs,
                        tls.map(|tls| tls.combined.as_path()),
                        self.plan.access_log,
                    ),
                )?;
                let mut command = lb.command(HAPROXY);
                command.arg("-f").arg(&config).arg("-db");
                let child = procs::spawn(contender::lb_stdio(&mut command))?;
                let process = LbProcess::new(contender, child, &self.work_dir.join("haproxy.log"))?;
                self.wait_answering(&contender.base_url(addrs), &process, layout)?;
                Ok((process, started.elapsed()))
            }
            Contender::Stickylb
            | Contender::StickylbFastPath
            | Contender::StickylbFastPathXdp
            | Contender::StickylbShield => {
                if let Some(why) = contender.unavailable() {
                    bail!("{}: {why}", contender.label());
                }
                let fastpath = contender.is_fast_path();
                let name = match contender {
                    Contender::StickylbFastPath => "stickylb-fastpath",
                    Contender::StickylbFastPathXdp => "stickylb-fastpath-xdp",
                    Contender::StickylbShield => "stickylb-shield",
                    _ => "stickylb",
                };
                let config = self.work_dir.join(format!("{name}.toml"));
                write(
                    &config,
                    &contender::stickylb_config(
                        &self.instance,
                        PIN_DIR,
                        &self.run_dir.join("control.sock").display().to_string(),
                        contender.into(),
                        addrs,
                        tls,
                        match contender {
                            Contender::StickylbShield => Some(contender::DEFAULT_SHIELD),
                            _ => self.shield.get(),
                        },
                    ),
                )?;
                let mut command = lb.command(&self.stickylb);
                command
                    .args(["--log", self.stickylb_log(), "run", "--config"])
                    .arg(&config);
                let child = procs::spawn(contender::lb_stdio(&mut command))?;
                let log = self.work_dir.join(format!("{name}.log"));
                let mut process = LbProcess::new(contender, child, &log)?;
                if fastpath {
                    process = process.with_fastpath_links(self.pin_root.join("v1"));
                }
                process
                    .log
                    .wait_for("stickylb started", Duration::from_secs(120))?;
                Ok((process, started.elapsed()))
            }
        }
    }

    /// Polls `base_url` from the client until it answers 200.
    fn wait_answering(
        &self,
        base_url: &str,
        process: &LbProcess,
        layout: Layout,
    ) -> anyhow::Result<()> {
        let end = Instant::now() + Duration::from_secs(30);
        loop {
            procs::check_interrupted()?;
            if self.client_get(&format!("{base_url}/"), layout).is_ok() {
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

    /// GET `url` from the client namespace of `layout`; the body of a 200 answer.
    pub(super) fn client_get(&self, url: &str, layout: Layout) -> anyhow::Result<String> {
        let output = self
            .topology(layout)
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

    /// `<pin root>/bench-<pid>`: removed when the run ends (the cluster pins under it too).
    pub(super) fn pin_root(&self) -> &Path {
        &self.pin_root
    }

    /// Where the run's sockets go.
    pub(super) fn run_dir(&self) -> &Path {
        &self.run_dir
    }

    pub(super) fn haproxy_socket(&self) -> PathBuf {
        self.run_dir.join("haproxy.sock")
    }

    /// Forgets stickylb's pinned table, so the next start begins empty.
    pub(super) fn reset_table(&self) -> anyhow::Result<()> {
        match fs::remove_dir_all(&self.pin_root) {
            Ok(()) => Ok(()),
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(error) => {
                Err(error).with_context(|| format!("could not remove {}", self.pin_root.display()))
            }
        }
    }

    /// The running fast path's hand-off counters and its program's, from the monitor's
    /// metrics in `layout`.
    pub(super) fn fastpath_counters(&self, layout: Layout) -> anyhow::Result<FastPathCounters> {
        let addrs = &self.topology(layout).addrs;
        let metrics = self.client_get(
            &format!("{}/metrics", contender::monitor_url(addrs)),
            layout,
        )?;
        Ok(FastPathCounters::parse(&metrics))
    }

    /// The memory the kernel accounts to the pinned stick table.
    pub(super) fn map_memlock_bytes(&self) -> anyhow::Result<u64> {
        let path = self.pin_root.join("v1/STICK_TABLE");
        let map = super::bpftool::bpftool(&["map", "show", "pinned"], &path)?;
        // The kernel's account of the map's memory.
        super::bpftool::number(&map, "bytes_memlock")
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        for backends in &mut self.backends {
            procs::kill(backends);
        }
        let _ = self.reset_table();
        let _ = fs::remove_dir(PIN_DIR);
        let _ = fs::remove_dir_all(&self.run_dir);
        let _ = fs::remove_dir(RUN_DIR);
        // The namespaces go with `topology`; the work directory stays for its logs.
    }
}

/// One `stickylb-backend` with a listener per backend port; waits for its `ready`.
fn start_backends(topology: &Topology, binary: &Path, log: &Path) -> anyhow::Result<Child> {
    let listens = contender::BACKEND_PORTS
        .iter()
        .enumerate()
        .map(|(i, port)| format!("{}:{port}=be{}", topology.addrs.backends, i + 1));
    procs::start_backend_server(&topology.backends, binary, listens, log, "the backends")
}

/// What the fast path did during a run (warm-up included): its hand-off outcomes and its
/// program's counters, from `/metrics`.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub(super) struct FastPathCounters {
    pub(super) attempts: u64,
    pub(super) candidates: u64,
    /// `stickylb_fastpath_handoffs_total` by outcome, in the daemon's order.
    pub(super) outcomes: Vec<(String, u64)>,
    /// `stickylb_fastpath_program_packets_total` by counter.
    pub(super) program: Vec<(String, u64)>,
}

impl FastPathCounters {
    fn parse(metrics: &str) -> Self {
        let labelled = |family: &str, label: &str| -> Vec<(String, u64)> {
            let start = format!("{family}{{{label}=\"");
            metrics
                .lines()
                .filter_map(|line| {
                    let rest = line.strip_prefix(&start)?;
                    let (name, value) = rest.split_once("\"} ")?;
                    Some((name.to_owned(), value.trim().parse().ok()?))
                })
                .collect()
        };
        let plain = |name: &str| metric_value(metrics, name).unwrap_or(0);
        Self {
            attempts: plain("stickylb_fastpath_attempts_total"),
            candidates: plain("stickylb_fastpath_candidates_total"),
            outcomes: labelled("stickylb_fastpath_handoffs_total", "outcome"),
            program: labelled("stickylb_fastpath_program_packets_total", "counter"),
        }
    }

    pub(super) fn outcome(&self, name: &str) -> u64 {
        self.outcomes
            .iter()
            .find(|(n, _)| n == name)
            .map_or(0, |(_, v)| *v)
    }

    pub(super) fn program(&self, name: &str) -> u64 {
        self.program
            .iter()
            .find(|(n, _)| n == name)
            .map_or(0, |(_, v)| *v)
    }
}

fn write(path: &Path, text: &str) -> anyhow::Result<()> {
    fs::write(path, text).with_context(|| format!("could not write {}", path.display()))
}
