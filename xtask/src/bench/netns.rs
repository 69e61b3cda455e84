//! The bench's three hosts: client, load balancer and backends, each a network namespace,
//! joined by veth pairs: client 10.240.1.2 <-> 10.240.1.1 lb 10.240.2.1 <-> 10.240.2.2 backends.
//!
//! The lb namespace also routes between its two links, so the direct contender (client to
//! backends, no load balancer) crosses the same two veth pairs as the others.
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

pub(super) const CLIENT_ADDR: &str = "10.240.1.2";
pub(super) const LB_ADDR: &str = "10.240.1.1";
const LB_BACKEND_SIDE_ADDR: &str = "10.240.2.1";
pub(super) const BACKENDS_ADDR: &str = "10.240.2.2";

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

/// The client, load balancer and backends namespaces, linked and addressed.
pub(super) struct Topology {
    pub(super) client: Netns,
    pub(super) lb: Netns,
    pub(super) backends: Netns,
}

impl Topology {
    pub(super) fn create() -> anyhow::Result<Self> {
        // Each namespace is owned as soon as it exists, so a failed step deletes those made.
        let client = Netns::create("client")?;
        let lb = Netns::create("lb")?;
        let backends = Netns::create("backends")?;
        link(&client, CLIENT_ADDR, &lb, LB_ADDR, 'c')?;
        link(&lb, LB_BACKEND_SIDE_ADDR, &backends, BACKENDS_ADDR, 'b')?;
        client.run(&["ip", "route", "add", "default", "via", LB_ADDR])?;
        backends.run(&["ip", "route", "add", "default", "via", LB_BACKEND_SIDE_ADDR])?;
        lb.sysctl("net.ipv4.ip_forward", "1")?;
        // A new connection per request at tens of thousands a second: let the client reuse
        // ports in TIME_WAIT and use the whole port range, whichever side closes first.
        for netns in [&client, &lb, &backends] {
            netns.sysctl("net.ipv4.tcp_tw_reuse", "1")?;
            netns.sysctl("net.ipv4.ip_local_port_range", "1024 65535")?;
        }
        Ok(Self {
            client,
            lb,
            backends,
        })
    }
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
