//! The demo's processes: the web backends, the two stickylb daemons and the port forwarder.
//! Each is started in its own process group (a terminal's Ctrl-C reaches xtask, which takes
//! them down in order; with `--keep` they outlive it), logging to target/demo/<name>.log.

use std::{
    fs::OpenOptions,
    os::unix::process::CommandExt as _,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _};

use super::{
    files::{log_len, log_message, read_from, wait_for, Paths, FORWARDER, WEB},
    lifecycle, topology, Lb, CONFIG,
};
use crate::{process::alive, workspace};

/// How long a daemon or backend may take to start serving.
const START_LIMIT: Duration = Duration::from_secs(30);
/// How long a stopping daemon may take: its drain timeout is 10 s.
const STOP_LIMIT: Duration = Duration::from_secs(15);
/// How long the peers may take to meet, or to mirror a change.
pub(super) const SYNC_LIMIT: Duration = Duration::from_secs(10);

/// The running demo: where its binaries are and which daemon runs where.
pub(super) struct Nodes {
    paths: Paths,
    stickylb: PathBuf,
    backend: PathBuf,
    /// The pid of each load balancer's daemon, while it runs.
    lbs: [Option<u32>; 2],
    /// The length of each load balancer's log when it was last started or reloaded: where to
    /// look for what it logged since.
    marks: [u64; 2],
}

impl Nodes {
    pub(super) fn new(paths: Paths, release: bool) -> anyhow::Result<Nodes> {
        paths.reset_logs()?;
        let stickylb = workspace::stickylb_binary(release);
        let backend = stickylb.with_file_name("stickylb-backend");
        Ok(Nodes {
            paths,
            stickylb,
            backend,
            lbs: [None; 2],
            marks: [0; 2],
        })
    }

    /// Web, then both load balancers (waiting until they are peers), then the forwards.
    pub(super) fn bring_up(&mut self) -> anyhow::Result<()> {
        let mut web = self.in_namespace(topology::WEB_NS, &self.backend);
        for n in 1..=7 {
            web.arg("--listen")
                .arg(format!("0.0.0.0:{}=Backend {n}", 8080 + n));
        }
        let pid = self.start_logged(WEB, &mut web, "ready")?;
        println!(
            "web: Backend 1..7 on {}:8081-8087 (pid {pid})",
            topology::WEB_ADDR
        );
        for lb in Lb::ALL {
            let pid = self.start_lb(lb)?;
            println!("{}: stickylb on {}:80 (pid {pid})", lb.name(), lb.addr());
        }
        let (_, line) = self.wait_for_log(Lb::One, "peer session established", SYNC_LIMIT)?;
        println!("lb-1: {}", log_message(&line));

        let mut forwarder = lifecycle::command(&self.backend);
        let mut shown = Vec::new();
        for lb in Lb::ALL {
            let (http, monitor) = lb.host_ports();
            for (host_port, guest_port) in [(http, 80), (monitor, 8404)] {
                for ip in topology::loopbacks() {
                    let listen = std::net::SocketAddr::new(ip, host_port);
                    forwarder
                        .arg("--forward")
                        .arg(format!("{listen}={}:{guest_port}", lb.addr()));
                }
                shown.push(format!(
                    "localhost:{host_port} -> {}:{guest_port}",
                    lb.name()
                ));
            }
        }
        let pid = self.start_logged(FORWARDER, &mut forwarder, "ready")?;
        println!("forwarding {} (pid {pid})", shown.join(", "));
        Ok(())
    }

    /// `nsenter --net=<ns> -- program`, from the repository root.
    fn in_namespace(&self, ns: &str, program: &Path) -> Command {
        let mut command = netns_kit::command_in(ns, shown_path(program));
        lifecycle::unblock_signals(&mut command);
        command.current_dir(workspace::root());
        command
    }

    /// Starts `command` in its own process group with its output appended to `<name>.log`,
    /// and waits until that log shows `ready`.
    fn start_logged(&self, name: &str, command: &mut Command, ready: &str) -> anyhow::Result<u32> {
        let log = self.paths.log(name);
        let mark = log_len(&log);
        let out = OpenOptions::new()
            .append(true)
            .create(true)
            .open(&log)
            .with_context(|| format!("could not open {}", log.display()))?;
        let err = out
            .try_clone()
            .context("could not duplicate a log handle")?;
        command
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            // The daemons' readiness lines are info level; RUST_LOG would override --log.
            .env_remove("RUST_LOG")
            .process_group(0);
        let pid = lifecycle::spawn(command)
            .with_context(|| format!("could not start {name}: `{}`", shown(command)))?;
        self.paths.record_pid(name, pid)?;
        wait_for(&log, mark, ready, START_LIMIT, Some(pid))
            .with_context(|| format!("{name} did not start"))?;
        Ok(pid)
    }

    fn start_lb(&mut self, lb: Lb) -> anyhow::Result<u32> {
        let mut command = self.lb_command(lb, &["run"]);
        self.marks[lb.index()] = log_len(&self.paths.log(lb.name()));
        let pid = self.start_logged(lb.name(), &mut command, "stickylb started")?;
        self.lbs[lb.index()] = Some(pid);
        Ok(pid)
    }

    /// `stickylb <args> --config demo/stickylb.toml --name <lb>` in the lb's namespace.
    fn lb_command(&self, lb: Lb, args: &[&str]) -> Command {
        let mut command = self.in_namespace(lb.namespace(), &self.stickylb);
        command
            .args(args)
            .args(["--config", CONFIG, "--name", lb.name()]);
        command
    }

    /// Starts `lb` as a user would on its machine, printing the command.
    pub(super) fn start(&mut self, lb: Lb) -> anyhow::Result<()> {
        println!("$ {} &", shown(&self.lb_command(lb, &["run"])));
        let pid = self.start_lb(lb)?;
        println!("{} started (pid {pid})", lb.name());
        Ok(())
    }

    fn pid(&self, lb: Lb) -> anyhow::Result<u32> {
        self.lbs[lb.index()].with_context(|| format!("{} is not running", lb.name()))
    }

    /// SIGTERM (graceful: `service stickylb stop`) or SIGKILL, and waits until it is gone.
    pub(super) fn stop(&mut self, lb: Lb, kill: bool) -> anyhow::Result<()> {
        let pid = self.pid(lb)?;
        let (signal, flag, what) = if kill {
            (libc::SIGKILL, "-9", "killed")
        } else {
            (libc::SIGTERM, "-TERM", "stopped")
        };
        println!("$ kill {flag} {pid}        # {}", lb.name());
        lifecycle::signal(pid, signal)?;
        let status = lifecycle::wait_exit(pid, STOP_LIMIT)?;
        self.lbs[lb.index()] = None;
        match status {
            Some(status) => println!("{} {what} ({status})", lb.name()),
            None => println!("{} {what}", lb.name()),
        }
        Ok(())
    }

    /// `stickylb reload --upgrade`, like `service stickylb reload` on the VMs: a new process
    /// takes the sockets over, the old one drains and exits.
    pub(super) fn reload(&mut self, lb: Lb) -> anyhow::Result<()> {
        let old = self.pid(lb)?;
        let mut command = self.lb_command(lb, &["reload", "--upgrade"]);
        println!("$ {}", shown(&command));
        let log = self.paths.log(lb.name());
        let mark = log_len(&log);
        // The new daemon inherits the command's output: into the lb's log, like the old one.
        let out = OpenOptions::new()
            .append(true)
            .open(&log)
            .with_context(|| format!("could not open {}", log.display()))?;
        command
            .stdin(Stdio::null())
            .stdout(
                out.try_clone()
                    .context("could not duplicate a log handle")?,
            )
            .stderr(out)
            .env_remove("RUST_LOG");
        let reload = lifecycle::spawn(&mut command)
            .with_context(|| format!("could not run `{}`", shown(&command)))?;
        let status = lifecycle::wait_exit(reload, START_LIMIT)?;
        for line in read_from(&log, mark).lines() {
            if line.starts_with("upgraded:") || line.starts_with("started:") {
                println!("{line}");
            }
        }
        if status.is_some_and(|status| !status.success()) {
            bail!(
                "`{}` failed; see {}",
                shown(&command),
                self.paths.log(lb.name()).display()
            );
        }
        lifecycle::wait_exit(old, STOP_LIMIT)?;
        let new = topology::pids_in(lb.namespace())?
            .into_iter()
            .find(|&pid| pid != old && alive(pid))
            .with_context(|| format!("no {} process runs after the reload", lb.name()))?;
        self.paths.record_pid(lb.name(), new)?;
        self.lbs[lb.index()] = Some(new);
        self.marks[lb.index()] = mark;
        println!(
            "{}: the old process (pid {old}) drained and exited",
            lb.name()
        );
        Ok(())
    }

    /// Waits until `lb`'s log shows `needle` since it last started; returns how long that
    /// took and the matching line.
    pub(super) fn wait_for_log(
        &self,
        lb: Lb,
        needle: &str,
        limit: Duration,
    ) -> anyhow::Result<(Duration, String)> {
        let log = self.paths.log(lb.name());
        wait_for(
            &log,
            self.marks[lb.index()],
            needle,
            limit,
            self.lbs[lb.index()],
        )
    }

    /// Waits until `lb`'s pinned stick table (as `stickylb table` prints it) holds every
    /// cookie in `cookies`; returns how long that took, or `None` after [`SYNC_LIMIT`].
    pub(super) fn wait_for_table(
        &self,
        lb: Lb,
        cookies: &[String],
    ) -> anyhow::Result<Option<Duration>> {
        let started = Instant::now();
        loop {
            let mut table = lifecycle::command(&self.stickylb);
            table
                .args(["table", "--json", "--config", CONFIG, "--name", lb.name()])
                .current_dir(workspace::root())
                .stderr(Stdio::null());
            let output = table
                .output()
                .with_context(|| format!("could not run `{}`", shown(&table)))?;
            let json = String::from_utf8_lossy(&output.stdout);
            if cookies
                .iter()
                .all(|cookie| json.contains(&format!("\"{cookie}\"")))
            {
                return Ok(Some(started.elapsed()));
            }
            if started.elapsed() >= SYNC_LIMIT {
                return Ok(None);
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    pub(super) fn print_keep_help(&self) {
        let stickylb = shown_path(&self.stickylb);
        println!("\n==> demo: left running (cargo xtask demo --down removes it)");
        for lb in Lb::ALL {
            let (http, monitor) = lb.host_ports();
            let pid =
                self.lbs[lb.index()].map_or_else(|| "stopped".into(), |pid| format!("pid {pid}"));
            println!(
                "  {}: http://localhost:{http}/  monitor http://localhost:{monitor}/monitor  ({pid})",
                lb.name()
            );
        }
        println!("  cd vagrant && ./access-1.sh 1 5 && ./access-2.sh 101 105");
        println!("  curl localhost:8080 -H 'Cookie: JSESSIONID=x'");
        println!("  {stickylb} table --config {CONFIG} --name lb-1");
        println!("  bpftool map dump pinned /sys/fs/bpf/stickylb/lb-1/v1/STICK_TABLE");
        println!(
            "  nsenter --net={} -- {stickylb} reload --upgrade --config {CONFIG} --name lb-1",
            netns_kit::path(Lb::One.namespace()).display()
        );
        println!(
            "  logs: {}/{{lb-1,lb-2,web,forward}}.log",
            shown_path(self.paths.dir())
        );
    }
}

/// A path as a user in the repository root would type it.
fn shown_path(path: &Path) -> String {
    path.strip_prefix(workspace::root())
        .unwrap_or(path)
        .display()
        .to_string()
}

fn shown(command: &Command) -> String {
    crate::process::describe(command)
}
