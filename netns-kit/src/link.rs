//! Links between namespaces: veth pairs, and a bridge that many hosts plug into.

use std::process::Command;

use crate::{command::run, NetNs, Result};

/// A veth pair, `a_if` in `a` and `b_if` in `b`, both up, without addresses. It is created from
/// inside `a`, so the names need only be free in `a` and `b`, never in this host's namespace.
pub fn veth(a: &NetNs, a_if: &str, b: &NetNs, b_if: &str) -> Result<()> {
    a.run(&[
        "ip",
        "link",
        "add",
        a_if,
        "type",
        "veth",
        "peer",
        "name",
        b_if,
        "netns",
        b.name(),
    ])?;
    a.set_link_up(a_if)?;
    b.set_link_up(b_if)
}

/// One L2 segment: the bridge `br0` in a namespace of its own, and the ports hosts plug into.
/// Dropping it removes the namespace, its ports and so the hosts' ends of them.
#[derive(Debug)]
pub struct Switch {
    netns: NetNs,
}

impl Switch {
    const BRIDGE: &'static str = "br0";

    /// A namespace `name` holding an up bridge that forwards at once (no STP, no delay).
    pub fn create(name: impl Into<String>) -> Result<Switch> {
        let netns = NetNs::create(name)?;
        netns.run(&[
            "ip",
            "link",
            "add",
            Self::BRIDGE,
            "type",
            "bridge",
            "forward_delay",
            "0",
            "stp_state",
            "0",
        ])?;
        netns.set_link_up(Self::BRIDGE)?;
        Ok(Switch { netns })
    }

    pub fn netns(&self) -> &NetNs {
        &self.netns
    }

    /// Plugs `host` in: a veth pair with `port` on the bridge and `host_if` in `host`, which
    /// gets address `cidr`.
    pub fn attach(&self, host: &NetNs, port: &str, host_if: &str, cidr: &str) -> Result<()> {
        veth(&self.netns, port, host, host_if)?;
        self.plug(port)?;
        host.add_address(host_if, cidr)
    }

    /// Plugs in the namespace this process runs in (the machine itself): `host_if` here, with
    /// address `cidr`, and `port` on the bridge. Gone with the switch's namespace.
    pub fn attach_this_host(&self, host_if: &str, port: &str, cidr: &str) -> Result<()> {
        run(Command::new("ip").args([
            "link",
            "add",
            host_if,
            "type",
            "veth",
            "peer",
            "name",
            port,
            "netns",
            self.netns.name(),
        ]))?;
        self.plug(port)?;
        run(Command::new("ip").args(["addr", "add", cidr, "dev", host_if]))?;
        run(Command::new("ip").args(["link", "set", host_if, "up"])).map(drop)
    }

    fn plug(&self, port: &str) -> Result<()> {
        self.netns
            .run(&["ip", "link", "set", port, "master", Self::BRIDGE])?;
        self.netns.set_link_up(port)
    }

    /// Takes `port` down (the host behind it is cut off the segment) or up again.
    pub fn set_port_up(&self, port: &str, up: bool) -> Result<()> {
        if up {
            self.netns.set_link_up(port)
        } else {
            self.netns.set_link_down(port)
        }
    }

    /// Leaves the switch in place when the guard goes; see [`NetNs::keep`].
    pub fn keep(self) -> String {
        self.netns.keep()
    }
}
