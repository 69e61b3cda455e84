//! The cluster demo's processes: the backends and one stickylb daemon per node, each logging
//! to target/demo-cluster/<name>.log; their configurations, and reading their tables and logs.

use std::{
    collections::BTreeMap,
    fs::{self, File},
    path::PathBuf,
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _};
use netns_kit::{command_in, Cluster};

use crate::workspace;

/// The nodes' pin directory (each instance pins under `<PIN_ROOT>/<name>`).
pub(super) const PIN_ROOT: &str = "/sys/fs/bpf/stickylb-cluster-demo";
/// Their control sockets.
const RUN_DIR: &str = "/run/stickylb-cluster-demo";
pub(super) const PEERS_PORT: u16 = 1024;
const BACKEND: &str = "web";
/// How long a daemon or the backends may take to start serving.
const START_LIMIT: Duration = Duration::from_secs(30);
/// How long a stopping daemon gets before SIGKILL.
const STOP_LIMIT: Duration = Duration::from_secs(5);

/// Node `i`'s instance name.
pub(super) fn node_name(i: usize) -> String {
    format!("lb-{}", i + 1)
}

/// The running processes; stopped on drop too (an error half way).
pub(super) struct Nodes {
    stickylb: PathBuf,
    dir: PathBuf,
    /// Node i's daemon.
    daemons: Vec<Child>,
    backends: Option<Child>,
}

impl Nodes {
    /// Starts the backends, then every node (each waited for), with fresh logs, configurations
    /// and pins.
    pub(super) fn start(cluster: &Cluster, release: bool) -> anyhow::Result<Nodes> {
        let dir = workspace::host_target_dir().join("demo-cluster");
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        remove_pins()?;
        let stickylb = workspace::stickylb_binary(release);
        let mut nodes = Nodes {
            stickylb: stickylb.clone(),
            dir,
            daemons: Vec::new(),
            backends: None,
        };
        let mut web = command_in(
            cluster.backends.name(),
            stickylb.with_file_name("stickylb-backend"),
        );
        for n in 1..=7 {
            web.arg("--listen").arg(format!(
                "{}:{}=Backend {n}",
                cluster.addrs.backends(),
                8080 + n
            ));
        }
        nodes.backends = Some(nodes.spawn("backends", &mut web, "ready")?);
        for i in 0..cluster.nodes.len() {
            let config = nodes.config(i);
            fs::write(&config, config_text(cluster, i, "roundrobin"))
                .with_context(|| format!("writing {}", config.display()))?;
            let mut daemon = command_in(cluster.nodes[i].name(), &nodes.stickylb);
            daemon
                .args(["--log", "info", "run", "--config"])
                .arg(&config);
            let child = nodes.spawn(&node_name(i), &mut daemon, "stickylb started")?;
            println!(
                "{}: stickylb on {} (pid {}), peers port {}:{PEERS_PORT}",
                node_name(i),
                cluster.addrs.service(),
                child.id(),
                cluster.addrs.node(i)
            );
            nodes.daemons.push(child);
        }
        Ok(nodes)
    }

    fn config(&self, i: usize) -> PathBuf {
        self.dir.join(format!("{}.toml", node_name(i)))
    }

    pub(super) fn log_path(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}.log"))
    }

    /// What process `name` has logged so far.
    pub(super) fn log(&self, name: &str) -> String {
        fs::read_to_string(self.log_path(name)).unwrap_or_default()
    }

    /// Starts `command` logging to `<name>.log` and waits until the log says `ready`.
    fn spawn(&self, name: &str, command: &mut Command, ready: &str) -> anyhow::Result<Child> {
        let path = self.log_path(name);
        let log = File::create(&path).with_context(|| format!("creating {}", path.display()))?;
        let mut child = command
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {name}"))?;
        let started = Instant::now();
        while !self.log(name).contains(ready) {
            if let Ok(Some(status)) = child.try_wait() {
                bail!("{name} exited ({status}):\n{}", self.log(name));
            }
            if started.elapsed() > START_LIMIT {
                let _ = child.kill();
                let _ = child.wait();
                bail!(
                    "{name} did not start within {START_LIMIT:?}:\n{}",
                    self.log(name)
                );
            }
            thread::sleep(Duration::from_millis(20));
        }
        Ok(child)
    }

    /// Rewrites every node's configuration with `balance` and reloads it in place
    /// (`stickylb reload`, which the daemon applies without a restart).
    pub(super) fn set_balance(&self, cluster: &Cluster, balance: &str) -> anyhow::Result<()> {
        for i in 0..cluster.nodes.len() {
            let config = self.config(i);
            fs::write(&config, config_text(cluster, i, balance))
                .with_context(|| format!("writing {}", config.display()))?;
            let out = command_in(cluster.nodes[i].name(), &self.stickylb)
                .arg("reload")
                .arg("--config")
                .arg(&config)
                .output()
                .context("running stickylb reload")?;
            let said = String::from_utf8_lossy(&out.stdout).trim().to_owned();
            if !out.status.success() {
                let stderr = String::from_utf8_lossy(&out.stderr);
                bail!("stickylb reload on {}: {said} {stderr}", node_name(i));
            }
            println!("  {}: {said}", node_name(i));
        }
        Ok(())
    }

    /// Node `i`'s stick table, read from its pinned map: cookie -> server.
    pub(super) fn table(&self, i: usize) -> anyhow::Result<BTreeMap<String, String>> {
        let out = Command::new(&self.stickylb)
            .args(["table", "--json", "--config"])
            .arg(self.config(i))
            .output()
            .context("running stickylb table")?;
        if !out.status.success() {
            bail!("stickylb table: {}", String::from_utf8_lossy(&out.stderr));
        }
        let entries: serde_json::Value =
            serde_json::from_slice(&out.stdout).context("reading stickylb table --json")?;
        let entries = entries.as_array().map(Vec::as_slice).unwrap_or_default();
        Ok(entries
            .iter()
            .filter_map(|e| {
                let cookie = e["cookie"].as_str()?.to_owned();
                Some((cookie, e["server"].as_str()?.to_owned()))
            })
            .collect())
    }

    /// Stops every daemon (SIGTERM, then SIGKILL after [`STOP_LIMIT`]) and the backends, and
    /// removes the pins.
    pub(super) fn stop(&mut self) {
        for child in self.daemons.iter_mut().chain(self.backends.as_mut()) {
            stop(child);
        }
        self.daemons.clear();
        self.backends = None;
        let _ = remove_pins();
    }
}

impl Drop for Nodes {
    fn drop(&mut self) {
        self.stop();
    }
}

fn stop(child: &mut Child) {
    if let Ok(pid) = i32::try_from(child.id()) {
        // SAFETY: kill(2) takes plain integers; the pid is our own unreaped child.
        unsafe { libc::kill(pid, libc::SIGTERM) };
    }
    let started = Instant::now();
    while started.elapsed() < STOP_LIMIT {
        if matches!(child.try_wait(), Ok(Some(_))) {
            return;
        }
        thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// Pins and control sockets of an earlier run, or of this one.
fn remove_pins() -> anyhow::Result<()> {
    for dir in [PIN_ROOT, RUN_DIR] {
        match fs::remove_dir_all(dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).with_context(|| format!("removing {dir}")),
        }
    }
    Ok(())
}

/// Node `i`'s configuration: the original demo's backend (JSESSIONID, seven servers; `balance`
/// round robin at first), served on the service address, with every node as a peer.
fn config_text(cluster: &Cluster, i: usize, balance: &str) -> String {
    let addrs = cluster.addrs;
    let servers: String = (1..=7)
        .map(|n| {
            format!(
                "  {{ name = \"be{n}\", addr = \"{}:{}\" }},\n",
                addrs.backends(),
                8080 + n
            )
        })
        .collect();
    let members: String = (0..cluster.nodes.len())
        .map(|m| {
            format!(
                "  {{ name = \"{}\", addr = \"{}:{PEERS_PORT}\" }},\n",
                node_name(m),
                addrs.node(m)
            )
        })
        .collect();
    format!(
        r#"# Written by `cargo xtask demo --nodes {n}`.
[instance]
name = "{name}"
pin_dir = "{PIN_ROOT}"
control_socket = "{RUN_DIR}/{name}.sock"

[[frontend]]
name = "www"
bind = "{service}:80"
backend = "{BACKEND}"

[[backend]]
name = "{BACKEND}"
balance = "{balance}"
stick_cookie = "JSESSIONID"
health_check = {{ path = "/", interval = "500ms" }}
servers = [
{servers}]

[peers]
bind = "{node}:{PEERS_PORT}"
members = [
{members}]
"#,
        n = cluster.nodes.len(),
        name = node_name(i),
        service = addrs.service(),
        node = addrs.node(i),
    )
}
