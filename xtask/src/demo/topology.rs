//! The demo's LAN: the seed's private network 192.168.33.0/24 as a bridge in a switch
//! namespace, one namespace per machine, and this host on it through `slbdemo0`.

use std::{
    io,
    net::{Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener},
    path::Path,
};

use anyhow::{bail, Context as _};

use super::{lifecycle, Lb};
use crate::process::describe;

pub(super) const SWITCH_NS: &str = "slbdemo-sw";
pub(super) const WEB_NS: &str = "slbdemo-web";
pub(super) const LB1_NS: &str = "slbdemo-lb1";
pub(super) const LB2_NS: &str = "slbdemo-lb2";
/// Every namespace of the demo; the machines before the switch, so that their processes go
/// first when the demo is taken down.
pub(super) const NAMESPACES: [&str; 4] = [LB1_NS, LB2_NS, WEB_NS, SWITCH_NS];

pub(super) const WEB_ADDR: &str = "192.168.33.10";
pub(super) const HOST_ADDR: &str = "192.168.33.1";
/// This host's end of its link to the switch.
pub(super) const HOST_IF: &str = "slbdemo0";
const SUBNET: &str = "192.168.33.0/24";
const BRIDGE: &str = "br0";

/// Where `ip netns` keeps a namespace (what `nsenter --net=` wants).
pub(super) fn netns_path(ns: &str) -> String {
    format!("/var/run/netns/{ns}")
}

pub(super) fn netns_exists(ns: &str) -> bool {
    Path::new(&netns_path(ns)).exists()
}

/// Fails, naming the conflict, when a forwarded port or the seed's subnet is already in use
/// on this host. Run after the leftovers of an earlier demo are removed.
pub(super) fn check_free() -> anyhow::Result<()> {
    for lb in Lb::ALL {
        let (http, monitor) = lb.host_ports();
        for port in [http, monitor] {
            check_port_free(port)?;
        }
    }
    let routes = ip_output(&["-o", "-4", "route", "show", "root", SUBNET])?;
    if !routes.trim().is_empty() {
        bail!(
            "this host already routes {SUBNET}, the seed's private network the demo recreates \
             (a Vagrant host-only network?):\n{}\nremove it or stop what uses it first",
            routes.trim_end()
        );
    }
    Ok(())
}

/// The forwarder listens on both loopbacks when IPv6 has one, as `localhost` may be either.
pub(super) fn loopbacks() -> Vec<std::net::IpAddr> {
    let mut addrs = vec![Ipv4Addr::LOCALHOST.into()];
    if TcpListener::bind(SocketAddr::from((Ipv6Addr::LOCALHOST, 0))).is_ok() {
        addrs.push(Ipv6Addr::LOCALHOST.into());
    }
    addrs
}

fn check_port_free(port: u16) -> anyhow::Result<()> {
    for ip in loopbacks() {
        let addr = SocketAddr::new(ip, port);
        match TcpListener::bind(addr) {
            Ok(_) => {}
            Err(error) if error.kind() == io::ErrorKind::AddrInUse => bail!(
                "port {port} is taken on this host ({addr}): the demo forwards localhost:{port} \
                 like the seed's Vagrant ports. `ss -ltnp 'sport = :{port}'` shows who has it; \
                 stop it and run the demo again"
            ),
            Err(error) => {
                return Err(error).with_context(|| format!("cannot check whether {addr} is free"))
            }
        }
    }
    Ok(())
}

/// Creates the namespaces, the bridge and the links, and addresses every machine.
pub(super) fn create() -> anyhow::Result<()> {
    for ns in NAMESPACES {
        ip(&["netns", "add", ns])?;
        ip(&["-n", ns, "link", "set", "lo", "up"])?;
    }
    ip(&[
        "-n",
        SWITCH_NS,
        "link",
        "add",
        BRIDGE,
        "type",
        "bridge",
        "forward_delay",
        "0",
        "stp_state",
        "0",
    ])?;
    ip(&["-n", SWITCH_NS, "link", "set", BRIDGE, "up"])?;
    attach(WEB_NS, "web", WEB_ADDR)?;
    attach(LB1_NS, "lb1", Lb::One.addr())?;
    attach(LB2_NS, "lb2", Lb::Two.addr())?;
    // The host's link: created here, its peer moved straight into the switch.
    ip(&[
        "link", "add", HOST_IF, "type", "veth", "peer", "name", "host", "netns", SWITCH_NS,
    ])?;
    plug_into_bridge("host")?;
    ip(&["addr", "add", &format!("{HOST_ADDR}/24"), "dev", HOST_IF])?;
    ip(&["link", "set", HOST_IF, "up"])
}

/// Links `ns` to the bridge: `eth0` (with `addr`) in `ns`, `port` on the switch. Both ends are
/// created inside namespaces, so no name can clash with this host's interfaces.
fn attach(ns: &str, port: &str, addr: &str) -> anyhow::Result<()> {
    ip(&[
        "-n", SWITCH_NS, "link", "add", port, "type", "veth", "peer", "name", "eth0", "netns", ns,
    ])?;
    plug_into_bridge(port)?;
    ip(&[
        "-n",
        ns,
        "addr",
        "add",
        &format!("{addr}/24"),
        "dev",
        "eth0",
    ])?;
    ip(&["-n", ns, "link", "set", "eth0", "up"])
}

fn plug_into_bridge(port: &str) -> anyhow::Result<()> {
    ip(&["-n", SWITCH_NS, "link", "set", port, "master", BRIDGE])?;
    ip(&["-n", SWITCH_NS, "link", "set", port, "up"])
}

/// Deletes the host's link and the namespaces; adds what existed to `removed`. Processes must
/// be gone first: a namespace lives on while a process is in it.
pub(super) fn remove(removed: &mut Vec<String>) -> anyhow::Result<()> {
    // First, as deleting the switch namespace would take it along, but asynchronously.
    if Path::new("/sys/class/net").join(HOST_IF).exists() {
        ip(&["link", "del", HOST_IF])?;
        removed.push(format!("interface {HOST_IF}"));
    }
    for ns in NAMESPACES {
        if netns_exists(ns) {
            ip(&["netns", "del", ns])?;
            removed.push(format!("namespace {ns}"));
        }
    }
    Ok(())
}

/// The pids of the processes in `ns` (`ip netns pids`).
pub(super) fn pids_in(ns: &str) -> anyhow::Result<Vec<u32>> {
    if !netns_exists(ns) {
        return Ok(Vec::new());
    }
    let pids = ip_output(&["netns", "pids", ns])?;
    Ok(pids
        .split_whitespace()
        .filter_map(|pid| pid.parse().ok())
        .collect())
}

fn ip(args: &[&str]) -> anyhow::Result<()> {
    ip_output(args).map(drop)
}

fn ip_output(args: &[&str]) -> anyhow::Result<String> {
    let mut command = lifecycle::command("ip");
    command.args(args);
    let output = command
        .output()
        .with_context(|| format!("could not run `{}` (iproute2)", describe(&command)))?;
    if !output.status.success() {
        bail!(
            "`{}` failed: {}",
            describe(&command),
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}
