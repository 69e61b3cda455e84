//! The bench's hosts: client, load balancer and backends, each a network namespace, in two
//! layouts:
//!
//! - routed: client 10.240.1.2 <-> 10.240.1.1 lb 10.240.2.1 <-> 10.240.2.2 backends, two veth
//!   pairs; the lb namespace also routes between its two links, so the direct contender
//!   (client to backends, no load balancer) crosses the same two veth pairs as the others. The
//!   client also has 10.240.1.101-116, for the workloads from many client addresses.
//! - one-armed: client 10.241.0.100, lb 10.241.0.10 and backends 10.241.0.2 on one bridge (in a
//!   fourth, "switch" namespace), as in `vagrant/`'s network: both legs of every
//!   connection cross the load balancer's one interface.
//!
//! Processes join only the network namespace (`nsenter --net`), not the mount namespace that
//! `ip netns exec` would give them, so stickylb sees the host's bpffs. Names carry our pid:
//! concurrent runs never share a namespace, and a later run removes what a killed one left.

use std::{
    fs,
    path::Path,
    process::{Command, Stdio},
};

use anyhow::{bail, Context as _};

use crate::process::describe;

/// Prefix of every namespace the bench creates: `slbbench-<pid>-<role>`.
const PREFIX: &str = "slbbench-";

/// Where `ip netns add` creates the namespace handles that `nsenter --net=` takes.
const NETNS_DIR: &str = "/var/run/netns";

/// Where the hosts of a layout are.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Addrs {
    pub(super) client: &'static str,
    pub(super) lb: &'static str,
    pub(super) backends: &'static str,
    /// More client addresses (`<prefix><n>`, n = 101..=116), routed layout only.
    pub(super) more_clients: Option<&'static str>,
}

pub(super) const ROUTED: Addrs = Addrs {
    client: "10.240.1.2",
    lb: "10.240.1.1",
    backends: "10.240.2.2",
    more_clients: Some("10.240.1."),
};
const ROUTED_LB_BACKEND_SIDE: &str = "10.240.2.1";

pub(super) const ONE_ARMED: Addrs = Addrs {
    client: "10.241.0.100",
    lb: "10.241.0.10",
    backends: "10.241.0.2",
    more_clients: None,
};

/// How many more client addresses the routed client has.
pub(super) const MORE_CLIENTS: u8 = 16;

impl Addrs {
    /// The client's extra addresses (empty in a layout without them).
    pub(super) fn more_clients(&self) -> Vec<String> {
        self.more_clients.map_or_else(Vec::new, |prefix| {
            (101..101 + MORE_CLIENTS)
                .map(|n| format!("{prefix}{n}"))
                .collect()
        })
    }
}

/// A network namespace, deleted on drop together with every process still in it.
pub(super) struct Netns {
    name: String,
}

impl Netns {
    fn create(role: &str) -> anyhow::Result<Self> {
        let name = format!("{PREFIX}{}-{role}", std::process::id());
        run(Command::new("ip").args(["netns", "add", &name]))?;
        let netns = Self { name };
        netns.run(&["ip", "link", "set", "lo", "up"])?;
        Ok(netns)
    }

    pub(super) fn name(&self) -> &str {
        &self.name
    }

    /// `program` to be run inside this namespace (network only).
    pub(super) fn command(&self, program: &str) -> Command {
        let mut command = Command::new("nsenter");
        command
            .arg(format!("--net={NETNS_DIR}/{}", self.name))
            .arg("--")
            .arg(program);
        command
    }

    /// Runs `argv` inside the namespace and fails unless it succeeds.
    pub(super) fn run(&self, argv: &[&str]) -> anyhow::Result<()> {
        let (program, args) = argv.split_first().context("empty command")?;
        run(self.command(program).args(args))
    }

    fn sysctl(&self, key: &str, value: &str) -> anyhow::Result<()> {
        self.run(&["sysctl", "-q", "-w", &format!("{key}={value}")])
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        delete(&self.name);
    }
}

/// Kills what still runs in the namespace, then deletes it (which removes its veth ends).
fn delete(name: &str) {
    if let Ok(output) = Command::new("ip").args(["netns", "pids", name]).output() {
        for pid in String::from_utf8_lossy(&output.stdout).split_whitespace() {
            if let Ok(pid) = pid.parse::<libc::pid_t>() {
                // SAFETY: kill has no memory-safety preconditions; a stale pid only fails.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        }
    }
    let _ = Command::new("ip")
        .args(["netns", "del", name])
        .stderr(Stdio::null())
        .status();
}

/// The client, load balancer and backends namespaces of one layout, linked and addressed.
pub(super) struct Topology {
    pub(super) client: Netns,
    pub(super) lb: Netns,
    pub(super) backends: Netns,
    /// The one-armed layout's bridge.
    _switch: Option<Netns>,
    pub(super) addrs: Addrs,
}

impl Topology {
    pub(super) fn routed() -> anyhow::Result<Self> {
        // Each namespace is owned as soon as it exists, so a failed step deletes those made.
        let client = Netns::create("client")?;
        let lb = Netns::create("lb")?;
        let backends = Netns::create("backends")?;
        let a = ROUTED;
        link(&client, a.client, &lb, a.lb, 'c')?;
        link(&lb, ROUTED_LB_BACKEND_SIDE, &backends, a.backends, 'b')?;
        client.run(&["ip", "route", "add", "default", "via", a.lb])?;
        backends.run(&[
            "ip",
            "route",
            "add",
            "default",
            "via",
            ROUTED_LB_BACKEND_SIDE,
        ])?;
        lb.sysctl("net.ipv4.ip_forward", "1")?;
        let interface = format!("sb{}c0", std::process::id());
        for extra in a.more_clients() {
            client.run(&[
                "ip",
                "addr",
                "add",
                &format!("{extra}/24"),
                "dev",
                &interface,
            ])?;
        }
        let topology = Self {
            client,
            lb,
            backends,
            _switch: None,
            addrs: a,
        };
        topology.tune()?;
        Ok(topology)
    }

    pub(super) fn one_armed() -> anyhow::Result<Self> {
        let switch = Netns::create("switch1")?;
        switch.run(&[
            "ip",
            "link",
            "add",
            "br0",
            "type",
            "bridge",
            "forward_delay",
            "0",
            "stp_state",
            "0",
        ])?;
        switch.run(&["ip", "link", "set", "br0", "up"])?;
        let a = ONE_ARMED;
        let client = Netns::create("client1")?;
        attach(&switch, &client, a.client, '1')?;
        let lb = Netns::create("lb1")?;
        attach(&switch, &lb, a.lb, '2')?;
        let backends = Netns::create("backends1")?;
        attach(&switch, &backends, a.backends, '3')?;
        let topology = Self {
            client,
            lb,
            backends,
            _switch: Some(switch),
            addrs: a,
        };
        topology.tune()?;
        Ok(topology)
    }

    /// A new connection per request at tens of thousands a second: let the client reuse ports
    /// in TIME_WAIT and use the whole port range, whichever side closes first.
    fn tune(&self) -> anyhow::Result<()> {
        for netns in [&self.client, &self.lb, &self.backends] {
            netns.sysctl("net.ipv4.tcp_tw_reuse", "1")?;
            netns.sysctl("net.ipv4.ip_local_port_range", "1024 65535")?;
        }
        Ok(())
    }
}

/// Connects `host` to the bridge `br0` of `switch` with a veth pair, `addr`/24 on the host end.
fn attach(switch: &Netns, host: &Netns, addr: &str, tag: char) -> anyhow::Result<()> {
    let pid = std::process::id();
    let (switch_if, host_if) = (format!("sb{pid}s{tag}"), format!("sb{pid}h{tag}"));
    run(Command::new("ip").args([
        "link",
        "add",
        &switch_if,
        "netns",
        &switch.name,
        "type",
        "veth",
        "peer",
        "name",
        &host_if,
        "netns",
        &host.name,
    ]))?;
    switch.run(&["ip", "link", "set", &switch_if, "master", "br0"])?;
    switch.run(&["ip", "link", "set", &switch_if, "up"])?;
    host.run(&["ip", "addr", "add", &format!("{addr}/24"), "dev", &host_if])?;
    host.run(&["ip", "link", "set", &host_if, "up"])?;
    Ok(())
}

/// A veth pair from `a` to `b`, `/24` addresses on both ends. Interface names carry the pid
/// (at most 15 characters), as they exist in the host namespace for a moment.
fn link(a: &Netns, a_addr: &str, b: &Netns, b_addr: &str, tag: char) -> anyhow::Result<()> {
    let pid = std::process::id();
    let (a_if, b_if) = (format!("sb{pid}{tag}0"), format!("sb{pid}{tag}1"));
    run(Command::new("ip").args([
        "link", "add", &a_if, "netns", &a.name, "type", "veth", "peer", "name", &b_if, "netns",
        &b.name,
    ]))?;
    for (netns, interface, addr) in [(a, &a_if, a_addr), (b, &b_if, b_addr)] {
        netns.run(&["ip", "addr", "add", &format!("{addr}/24"), "dev", interface])?;
        netns.run(&["ip", "link", "set", interface, "up"])?;
    }
    Ok(())
}

/// Deletes the namespaces of bench runs whose process is gone (killed before cleaning up).
pub(super) fn remove_stale() {
    let Ok(entries) = fs::read_dir(NETNS_DIR) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if let Some(pid) = stale_owner(&name) {
            println!("bench: removing namespace {name} left by process {pid}");
            delete(&name);
        }
    }
}

/// The pid in `slbbench-<pid>-<role>` when that process no longer exists.
fn stale_owner(name: &str) -> Option<u32> {
    let pid: u32 = name.strip_prefix(PREFIX)?.split('-').next()?.parse().ok()?;
    let alive = Path::new("/proc").join(pid.to_string()).exists();
    (!alive).then_some(pid)
}

fn run(command: &mut Command) -> anyhow::Result<()> {
    let output = command
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("could not start `{}`", describe(command)))?;
    if !output.status.success() {
        bail!(
            "`{}` failed: {}",
            describe(command),
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::stale_owner;

    #[test]
    fn only_names_of_dead_bench_processes_are_stale() {
        let me = std::process::id();
        assert_eq!(stale_owner(&format!("slbbench-{me}-lb")), None);
        assert_eq!(stale_owner("slb-e2e-1-0"), None);
        assert_eq!(stale_owner("slbbench-x-lb"), None);
        // pid_max is at most 2^22, so this pid cannot exist.
        assert_eq!(stale_owner("slbbench-99999999-lb"), Some(99_999_999));
    }
}
