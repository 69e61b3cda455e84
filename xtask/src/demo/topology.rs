//! The demo's LAN: the original demo's private network 192.168.33.0/24 as a bridge in a switch
//! namespace, one namespace per machine, and this host on it through `slbdemo0`; built with
//! `netns-kit`, like the end-to-end tests' and the bench's networks.
//!
//! The namespaces keep fixed names and outlive this process with `--keep`: once the LAN is up,
//! the kit's guards hand them over ([`netns_kit::NetNs::keep`]) and `lifecycle::down` removes
//! them by name. While the LAN is being built, the guards remove what a failed step left.

use std::{
    io,
    net::{Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener},
    path::Path,
    process::Command,
};

use anyhow::{bail, Context as _};
use netns_kit::{NetNs, Switch};

use super::Lb;

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
/// Each machine's interface on the LAN.
const MACHINE_IF: &str = "eth0";

/// Fails, naming the conflict, when a forwarded port or the original demo's subnet is already in use
/// on this host. Run after the leftovers of an earlier demo are removed.
pub(super) fn check_free() -> anyhow::Result<()> {
    for lb in Lb::ALL {
        let (http, monitor) = lb.host_ports();
        for port in [http, monitor] {
            check_port_free(port)?;
        }
    }
    let routes = ip(&["-o", "-4", "route", "show", "root", SUBNET])?;
    if !routes.trim().is_empty() {
        bail!(
            "this host already routes {SUBNET}, the original demo's private network the demo recreates \
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
                 like the original demo's Vagrant ports. `ss -ltnp 'sport = :{port}'` shows who has it; \
                 stop it and run the demo again"
            ),
            Err(error) => {
                return Err(error).with_context(|| format!("cannot check whether {addr} is free"))
            }
        }
    }
    Ok(())
}

/// Creates the namespaces, the bridge and the links, and addresses every machine; then leaves
/// them to `lifecycle::down`. The `ip` commands inherit the caller's blocked SIGINT/SIGTERM,
/// which only delays a Ctrl-C until each of them (short-lived) exits.
pub(super) fn create() -> anyhow::Result<()> {
    let switch = Switch::create(SWITCH_NS)?;
    let mut machines = Vec::new();
    for (ns, port, addr) in [
        (WEB_NS, "web", WEB_ADDR),
        (LB1_NS, "lb1", Lb::One.addr()),
        (LB2_NS, "lb2", Lb::Two.addr()),
    ] {
        let machine = NetNs::create(ns)?;
        switch.attach(&machine, port, MACHINE_IF, &format!("{addr}/24"))?;
        machines.push(machine);
    }
    // The host's link: created here, its peer moved straight into the switch.
    switch.attach_this_host(HOST_IF, "host", &format!("{HOST_ADDR}/24"))?;
    for machine in machines {
        machine.keep();
    }
    switch.keep();
    Ok(())
}

/// Deletes the host's link and the namespaces; adds what existed to `removed`. Processes must
/// be gone first: a namespace lives on while a process is in it (what is left gets SIGKILL).
pub(super) fn remove(removed: &mut Vec<String>) -> anyhow::Result<()> {
    // First, as deleting the switch namespace would take it along, but asynchronously.
    if Path::new("/sys/class/net").join(HOST_IF).exists() {
        ip(&["link", "del", HOST_IF])?;
        removed.push(format!("interface {HOST_IF}"));
    }
    for ns in NAMESPACES {
        if netns_kit::exists(ns) {
            netns_kit::remove(ns)?;
            removed.push(format!("namespace {ns}"));
        }
    }
    Ok(())
}

/// The pids of the processes in `ns` (`ip netns pids`).
pub(super) fn pids_in(ns: &str) -> anyhow::Result<Vec<u32>> {
    Ok(netns_kit::pids(ns)?)
}

fn ip(args: &[&str]) -> anyhow::Result<String> {
    Ok(netns_kit::run(Command::new("ip").args(args))?)
}
