//! The bench's hosts: client, load balancer and backends, each a network namespace from
//! `netns-kit`, in two layouts:
//!
//! - routed: client 10.240.1.2 <-> 10.240.1.1 lb 10.240.2.1 <-> 10.240.2.2 backends, two veth
//!   pairs; the lb namespace also routes between its two links, so the direct contender
//!   (client to backends, no load balancer) crosses the same two veth pairs as the others. The
//!   client also has 10.240.1.101-116, for the workloads from many client addresses.
//! - one-armed: client 10.241.0.100, lb 10.241.0.10 and backends 10.241.0.2 on one bridge (in a
//!   fourth, "switch" namespace), as in `vagrant/`'s network: both legs of every
//!   connection cross the load balancer's one interface.
//!
//! Names carry our pid (`slbbench-<pid>-<role>`): concurrent runs never share a namespace, and
//! a later run removes what a killed one left. The kit's guards remove the namespaces, with
//! whatever still runs in them, when the [`Topology`] drops, also while a panic unwinds.

use std::net::Ipv4Addr;

use anyhow::Context as _;
use netns_kit::{Lan, LanAddrs, Names, NetNs, Routed, RoutedAddrs, Switch};

/// The bench's namespaces: `slbbench-<pid>-<role>`.
pub(crate) const NAMES: Names = Names::new("slbbench-");

const ROUTED_NET: RoutedAddrs = RoutedAddrs::new(240);
/// The one-armed load balancer is the LAN's first (and only) one, at .10.
const ONE_ARMED_NET: LanAddrs = LanAddrs::new(241, 10);

/// Where the hosts of a layout are.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Addrs {
    pub(crate) client: Ipv4Addr,
    pub(crate) lb: Ipv4Addr,
    pub(crate) backends: Ipv4Addr,
    /// How many more client addresses (routed layout only): `.101` on in the client's subnet.
    more_clients: u8,
}

pub(crate) const ROUTED: Addrs = Addrs {
    client: ROUTED_NET.client(),
    lb: ROUTED_NET.lb(),
    backends: ROUTED_NET.backends(),
    more_clients: 16,
};

pub(crate) const ONE_ARMED: Addrs = Addrs {
    client: ONE_ARMED_NET.client(),
    lb: ONE_ARMED_NET.lb(0),
    backends: ONE_ARMED_NET.backends(),
    more_clients: 0,
};

/// The first of the client's extra addresses, as the last octet.
const FIRST_MORE_CLIENT: u8 = 101;

impl Addrs {
    /// The client's extra addresses (empty in a layout without them).
    pub(crate) fn more_clients(&self) -> Vec<Ipv4Addr> {
        let [a, b, c, _] = self.client.octets();
        (FIRST_MORE_CLIENT..FIRST_MORE_CLIENT.saturating_add(self.more_clients))
            .map(|d| Ipv4Addr::new(a, b, c, d))
            .collect()
    }
}

/// The client, load balancer and backends namespaces of one layout, linked and addressed;
/// removed when dropped.
pub(crate) struct Topology {
    pub(crate) client: NetNs,
    pub(crate) lb: NetNs,
    pub(crate) backends: NetNs,
    /// The one-armed layout's bridge.
    _switch: Option<Switch>,
    pub(crate) addrs: Addrs,
}

impl Topology {
    pub(crate) fn routed() -> anyhow::Result<Self> {
        let Routed {
            client,
            lb,
            backends,
            ..
        } = Routed::create(ROUTED_NET, &|role| NAMES.name(role))
            .context("could not create the routed namespaces")?;
        lb.sysctl("net.ipv4.ip_forward", "1")?;
        for extra in ROUTED.more_clients() {
            client.add_address(Routed::CLIENT_IF, &format!("{extra}/24"))?;
        }
        let topology = Self {
            client,
            lb,
            backends,
            _switch: None,
            addrs: ROUTED,
        };
        topology.tune()?;
        Ok(topology)
    }

    pub(crate) fn one_armed() -> anyhow::Result<Self> {
        let Lan {
            switch,
            client,
            backends,
            mut lbs,
            ..
        } = Lan::create(ONE_ARMED_NET, 1, &|role| {
            NAMES.name(&format!("{role}-1arm"))
        })
        .context("could not create the one-armed namespaces")?;
        let lb = lbs
            .pop()
            .context("the one-armed LAN has no load balancer")?;
        let topology = Self {
            client,
            lb,
            backends,
            _switch: Some(switch),
            addrs: ONE_ARMED,
        };
        topology.tune()?;
        Ok(topology)
    }

    /// Turns GRO on or off on the far ends of the load balancer's veths (the client's and the
    /// backends' in the routed layout, the switch port in the one-armed one): a veth hands the
    /// frames an XDP program redirects to it only to a peer with GRO (or an XDP program) on.
    pub(crate) fn set_far_end_gro(&self, on: bool) -> anyhow::Result<()> {
        match &self._switch {
            None => {
                self.client.set_gro(Routed::CLIENT_IF, on)?;
                self.backends
                    .set_gro(Routed::BACKENDS_IF, on)
                    .map_err(Into::into)
            }
            Some(switch) => {
                let [.., host] = self.addrs.lb.octets();
                switch
                    .netns()
                    .set_gro(&format!("p{host}"), on)
                    .map_err(Into::into)
            }
        }
    }

    /// A new connection per request at tens of thousands a second: let the client reuse ports
    /// in TIME_WAIT and use the whole port range, whichever side closes first.
    fn tune(&self) -> anyhow::Result<()> {
        for netns in [&self.client, &self.lb, &self.backends] {
            tune_ports(netns, &LB_LISTEN_PORTS)?;
        }
        Ok(())
    }
}

/// The ports the load balancers listen on in the lb namespace: the frontends and the monitor.
const LB_LISTEN_PORTS: [u16; 3] = [
    super::contender::FRONTEND_PORT,
    super::contender::TLS_FRONTEND_PORT,
    super::contender::MONITOR_PORT,
];

/// Lets `netns` reuse ports in TIME_WAIT and use the whole port range for its connections, but
/// `listen`: a server connection of one contender would otherwise take a port the next
/// contender listens on, and its TIME_WAIT (60 s, not reusable by a listener) would make that
/// start fail with "Address already in use" (CI saw it for the monitor's 8404, after HAProxy's
/// server connections in one-armed-churn).
pub(crate) fn tune_ports(netns: &NetNs, listen: &[u16]) -> anyhow::Result<()> {
    netns.sysctl("net.ipv4.tcp_tw_reuse", "1")?;
    netns.sysctl("net.ipv4.ip_local_port_range", "1024 65535")?;
    let reserved: Vec<String> = listen.iter().map(u16::to_string).collect();
    netns.sysctl("net.ipv4.ip_local_reserved_ports", &reserved.join(","))?;
    Ok(())
}

/// Deletes the namespaces of bench runs whose process is gone (killed before cleaning up).
pub(crate) fn remove_stale() {
    for stale in NAMES.remove_stale() {
        println!(
            "bench: removed namespace {} left by process {}",
            stale.name, stale.pid
        );
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::{ONE_ARMED, ROUTED};

    #[test]
    fn the_layouts_keep_their_addresses() {
        assert_eq!(ROUTED.client, Ipv4Addr::new(10, 240, 1, 2));
        assert_eq!(ROUTED.lb, Ipv4Addr::new(10, 240, 1, 1));
        assert_eq!(ROUTED.backends, Ipv4Addr::new(10, 240, 2, 2));
        let more = ROUTED.more_clients();
        assert_eq!(more.len(), 16);
        assert_eq!(more.first(), Some(&Ipv4Addr::new(10, 240, 1, 101)));
        assert_eq!(more.last(), Some(&Ipv4Addr::new(10, 240, 1, 116)));
        assert_eq!(ONE_ARMED.client, Ipv4Addr::new(10, 241, 0, 100));
        assert_eq!(ONE_ARMED.lb, Ipv4Addr::new(10, 241, 0, 10));
        assert_eq!(ONE_ARMED.backends, Ipv4Addr::new(10, 241, 0, 2));
        assert!(ONE_ARMED.more_clients().is_empty());
    }
}
