//! The cluster's hosts and processes: one LAN (a client, the backends and up to
//! [`MAX_NODES`] load balancer nodes, each a namespace on one bridge), and a full mesh of
//! stickylb or HAProxy nodes on it, every node a peer of every other.
//!
//! Clients address each node directly (no ECMP router): the measurements are about the
//! tables, not about how clients are spread.

use std::{
    cell::Cell,
    fs,
    path::{Path, PathBuf},
    process::Child,
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _};
use netns_kit::{Lan, NetNs};

use super::{
    addrs::{node_name, MONITOR_PORT, NET, PEERS_PORT},
    config,
};
use crate::{
    contender::{self, Contender, LbProcess},
    env::{Env, HAPROXY},
    hosts, procs, workspace,
};

/// The most nodes any cluster workload starts.
pub(crate) const MAX_NODES: usize = 5;
/// Same as the other workloads' log level: start-up lines only.
const STICKYLB_LOG: &str = "warn,stickylb::daemon=info";

/// The LAN and the backends, shared by every cluster workload of a run.
pub(crate) struct Hosts {
    lan: Lan,
    backends: Option<Child>,
}

impl Hosts {
    pub(crate) fn create(env: &Env) -> anyhow::Result<Self> {
        let lan = Lan::create(NET, MAX_NODES, &|role| {
            hosts::NAMES.name(&format!("c-{role}"))
        })
        .context("could not create the cluster's namespaces")?;
        // The peers port is the first of the range: a node's connection must never take it.
        let listen = [contender::FRONTEND_PORT, MONITOR_PORT, PEERS_PORT];
        for netns in lan.lbs.iter().chain([&lan.client, &lan.backends]) {
            hosts::tune_ports(netns, &listen)?;
        }
        let backends = start_backends(&lan.backends, &env.work_dir.join("cluster-backends.log"))?;
        Ok(Self {
            lan,
            backends: Some(backends),
        })
    }

    pub(crate) fn client(&self) -> &NetNs {
        &self.lan.client
    }

    pub(crate) fn node_netns(&self, i: usize) -> anyhow::Result<&NetNs> {
        self.lan.lbs.get(i).with_context(|| format!("no node {i}"))
    }
}

impl Drop for Hosts {
    fn drop(&mut self) {
        if let Some(backends) = &mut self.backends {
            procs::kill(backends);
        }
    }
}

/// A full mesh of `size` nodes of one contender, started one by one: every node's peers
/// section lists all `size`, so a node started later joins the others.
pub(crate) struct Mesh<'a> {
    hosts: &'a Hosts,
    pub(crate) contender: Contender,
    pub(crate) size: usize,
    nodes: Vec<Option<LbProcess>>,
    /// The bench's work directory: configurations and logs.
    work_dir: PathBuf,
    /// Where stickylb nodes pin their tables (`<pin_dir>/n<i>/v1/`) and where sockets go.
    pin_dir: PathBuf,
    run_dir: PathBuf,
    /// The node cut off its peers, if one is.
    partitioned: Cell<Option<usize>>,
}

impl<'a> Mesh<'a> {
    /// No node runs yet; stickylb's pinned tables of an earlier mesh are gone.
    pub(crate) fn new(
        env: &Env,
        hosts: &'a Hosts,
        contender: Contender,
        size: usize,
    ) -> anyhow::Result<Self> {
        if size > MAX_NODES {
            bail!("a mesh of {size} nodes: at most {MAX_NODES}");
        }
        let pin_dir = env.pin_root().join("cluster");
        remove_dir(&pin_dir)?;
        Ok(Self {
            hosts,
            contender,
            size,
            nodes: (0..size).map(|_| None).collect(),
            work_dir: env.work_dir.clone(),
            pin_dir,
            run_dir: env.run_dir().to_owned(),
            partitioned: Cell::new(None),
        })
    }

    /// Starts node `i` and waits until it serves.
    pub(crate) fn start(&mut self, i: usize) -> anyhow::Result<()> {
        let netns = self.hosts.node_netns(i)?;
        let name = node_name(i);
        let tag = format!("cluster-{}-{name}", self.contender.id());
        let config = self.work_dir.join(format!("{tag}.conf"));
        let log = self.work_dir.join(format!("{tag}.log"));
        let mut command = match self.contender {
            Contender::Haproxy => {
                let text = config::haproxy(i, self.size, &self.cli_socket(i));
                write(&config, &text)?;
                let mut command = netns.command(HAPROXY);
                command.arg("-f").arg(&config).arg("-db");
                command
            }
            Contender::Stickylb => {
                let text = config::stickylb(i, self.size, &self.pin_dir, &self.control_socket(i));
                write(&config, &text)?;
                let mut command = netns.command(workspace::stickylb_binary(true));
                command
                    .args(["--log", STICKYLB_LOG, "run", "--config"])
                    .arg(&config);
                command
            }
            other => bail!("{} does not run as a cluster", other.label()),
        };
        let child = procs::spawn(contender::lb_stdio(&mut command))?;
        let process = LbProcess::new(self.contender, child, &log)?;
        self.wait_serving(i, &process)?;
        self.nodes[i] = Some(process);
        Ok(())
    }

    pub(crate) fn start_all(&mut self) -> anyhow::Result<()> {
        (0..self.size).try_for_each(|i| self.start(i))
    }

    fn wait_serving(&self, i: usize, process: &LbProcess) -> anyhow::Result<()> {
        match self.contender {
            Contender::Haproxy => {
                let end = Instant::now() + Duration::from_secs(30);
                while super::cli::Cli::connect(&self.cli_socket(i)).is_err() {
                    procs::check_interrupted()?;
                    if Instant::now() >= end {
                        bail!("HAProxy node {i} did not start:\n{}", process.log.tail());
                    }
                    std::thread::sleep(Duration::from_millis(5));
                }
                Ok(())
            }
            _ => process
                .log
                .wait_for("stickylb started", Duration::from_secs(120))
                .map(drop),
        }
    }

    /// Each running node's CPU seconds so far (0 for a node not running).
    pub(crate) fn cpu_seconds(&self) -> anyhow::Result<Vec<f64>> {
        self.nodes
            .iter()
            .map(|node| node.as_ref().map_or(Ok(0.0), LbProcess::cpu_seconds))
            .collect()
    }

    /// Fails when a node died (its log says why).
    pub(crate) fn check_running(&mut self) -> anyhow::Result<()> {
        self.nodes
            .iter_mut()
            .flatten()
            .try_for_each(LbProcess::check_running)
    }

    pub(crate) fn cli_socket(&self, i: usize) -> PathBuf {
        self.run_dir.join(format!("cluster-{}.sock", node_name(i)))
    }

    fn control_socket(&self, i: usize) -> PathBuf {
        self.run_dir
            .join(format!("cluster-{}-control.sock", node_name(i)))
    }

    /// stickylb node `i`'s pinned stick table.
    pub(crate) fn pinned_table(&self, i: usize) -> PathBuf {
        self.pin_dir.join(node_name(i)).join("v1/STICK_TABLE")
    }

    /// Cuts node `i` off its peers: its namespace drops every packet to or from the peers
    /// port (policy rules with action blackhole, ahead of the local table so that arriving
    /// packets are dropped too); clients and backends still reach it.
    pub(crate) fn partition(&self, i: usize) -> anyhow::Result<()> {
        let netns = self.hosts.node_netns(i)?;
        let port = PEERS_PORT.to_string();
        for (pref, side) in [("1", "dport"), ("2", "sport")] {
            netns.run(&[
                "ip",
                "rule",
                "add",
                "pref",
                pref,
                "ipproto",
                "tcp",
                side,
                &port,
                "blackhole",
            ])?;
        }
        netns.run(&["ip", "rule", "add", "pref", "32000", "lookup", "local"])?;
        netns.run(&["ip", "rule", "del", "pref", "0"])?;
        self.partitioned.set(Some(i));
        Ok(())
    }

    /// Undoes [`Self::partition`], if a node is cut off.
    pub(crate) fn heal(&self) -> anyhow::Result<()> {
        let Some(i) = self.partitioned.take() else {
            return Ok(());
        };
        let netns = self.hosts.node_netns(i)?;
        netns.run(&["ip", "rule", "add", "pref", "0", "lookup", "local"])?;
        for pref in ["1", "2", "32000"] {
            netns.run(&["ip", "rule", "del", "pref", pref])?;
        }
        Ok(())
    }

    /// Heals a partition left in place, stops every node (SIGTERM); stickylb's pinned tables go.
    /// Runs `workload` on the mesh, then stops it; a node that died meanwhile fails the
    /// workload even when `workload` itself succeeded (its numbers would be of a smaller mesh).
    pub(crate) fn run_then_stop<T>(
        mut self,
        workload: impl FnOnce(&mut Self) -> anyhow::Result<T>,
    ) -> anyhow::Result<T> {
        let result = workload(&mut self);
        self.check_running()?;
        self.stop()?;
        result
    }

    pub(crate) fn stop(mut self) -> anyhow::Result<()> {
        self.heal()?;
        for node in self.nodes.iter_mut() {
            if let Some(node) = node.take() {
                node.stop()?;
            }
        }
        remove_dir(&self.pin_dir)
    }
}

impl Drop for Mesh<'_> {
    /// The LAN outlives the mesh: a partition left by a failed run must not cut the next one.
    fn drop(&mut self) {
        let _ = self.heal();
    }
}

/// Bytes node `i`'s LAN interface received and sent so far (`ip -s link`): the peers traffic
/// of a node that serves no client, plus a little ARP.
pub(crate) fn wire_bytes(hosts: &Hosts, i: usize) -> anyhow::Result<(u64, u64)> {
    let netns = hosts.node_netns(i)?;
    let json = netns.run(&["ip", "-j", "-s", "link", "show", Lan::HOST_IF])?;
    let value: serde_json::Value =
        serde_json::from_str(&json).context("parsing `ip -j -s link`")?;
    let stats = &value[0]["stats64"];
    let bytes = |dir: &str| stats[dir]["bytes"].as_u64();
    match (bytes("rx"), bytes("tx")) {
        (Some(rx), Some(tx)) => Ok((rx, tx)),
        _ => bail!("no byte counters in `ip -j -s link`: {json}"),
    }
}

/// Established TCP connections to or from the peers port in node `i`'s namespace.
pub(crate) fn peer_connections(hosts: &Hosts, i: usize) -> anyhow::Result<usize> {
    let netns = hosts.node_netns(i)?;
    let filter = format!("( sport = :{PEERS_PORT} or dport = :{PEERS_PORT} )");
    let out = netns.run(&["ss", "-Htn", "state", "established", &filter])?;
    Ok(out.lines().filter(|l| !l.trim().is_empty()).count())
}

/// One `stickylb-backend` with a listener per backend port; waits for its `ready`.
fn start_backends(netns: &NetNs, log: &Path) -> anyhow::Result<Child> {
    let binary = workspace::stickylb_binary(true).with_file_name("stickylb-backend");
    let listens = config::servers().map(|(name, port)| format!("{}:{port}={name}", NET.backends()));
    procs::start_backend_server(netns, &binary, listens, log, "the cluster's backends")
}

fn write(path: &Path, text: &str) -> anyhow::Result<()> {
    fs::write(path, text).with_context(|| format!("could not write {}", path.display()))
}

fn remove_dir(dir: &Path) -> anyhow::Result<()> {
    match fs::remove_dir_all(dir) {
        Ok(()) => Ok(()),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(error) => Err(error).with_context(|| format!("could not remove {}", dir.display())),
    }
}
