//! The layouts the end-to-end tests, the demo and the bench share: a client, a load balancer
//! and the backends as hosts, either routed through the load balancer or on one LAN; or a
//! cluster of load balancers behind an ECMP router ([`Cluster`]).

mod cluster;

use std::net::Ipv4Addr;

pub use self::cluster::{Cluster, ClusterAddrs};
use crate::{veth, Error, NetNs, Result, Switch};

/// Where the hosts of a [`Routed`] layout are: 10.<net>.1.0/24 between the client (.2) and the
/// load balancer (.1), 10.<net>.2.0/24 between the load balancer (.1) and the backends (.2).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RoutedAddrs {
    net: u8,
}

impl RoutedAddrs {
    /// `net` must be unique among the layouts that exist at once.
    pub const fn new(net: u8) -> RoutedAddrs {
        RoutedAddrs { net }
    }

    pub const fn net(self) -> u8 {
        self.net
    }

    pub const fn client(self) -> Ipv4Addr {
        Ipv4Addr::new(10, self.net, 1, 2)
    }

    /// The load balancer on the client's side: where clients connect.
    pub const fn lb(self) -> Ipv4Addr {
        Ipv4Addr::new(10, self.net, 1, 1)
    }

    /// The load balancer on the backends' side: their gateway.
    pub const fn lb_backend_side(self) -> Ipv4Addr {
        Ipv4Addr::new(10, self.net, 2, 1)
    }

    pub const fn backends(self) -> Ipv4Addr {
        Ipv4Addr::new(10, self.net, 2, 2)
    }
}

/// client <-> lb <-> backends: two veth pairs, the client's and the backends' default routes
/// through the load balancer (which routes between its links only if the caller sets
/// `net.ipv4.ip_forward` there). Dropping it removes all three namespaces.
#[derive(Debug)]
pub struct Routed {
    pub client: NetNs,
    pub lb: NetNs,
    pub backends: NetNs,
    pub addrs: RoutedAddrs,
}

impl Routed {
    /// The client's interface, towards the load balancer.
    pub const CLIENT_IF: &'static str = "veth-lb";
    /// The load balancer's interface towards the client.
    pub const LB_CLIENT_IF: &'static str = "veth-client";
    /// The load balancer's interface towards the backends.
    pub const LB_BACKENDS_IF: &'static str = "veth-backends";
    /// The backends' interface, towards the load balancer.
    pub const BACKENDS_IF: &'static str = "veth-lb";

    /// `name` names each namespace after its role: `client`, `lb`, `backends`.
    pub fn create(addrs: RoutedAddrs, name: &dyn Fn(&str) -> String) -> Result<Routed> {
        // Each namespace is owned as soon as it exists, so a failed step removes those made.
        let client = NetNs::create(name("client"))?;
        let lb = NetNs::create(name("lb"))?;
        let backends = NetNs::create(name("backends"))?;
        veth(&client, Self::CLIENT_IF, &lb, Self::LB_CLIENT_IF)?;
        veth(&lb, Self::LB_BACKENDS_IF, &backends, Self::BACKENDS_IF)?;
        for (netns, dev, addr) in [
            (&client, Self::CLIENT_IF, addrs.client()),
            (&lb, Self::LB_CLIENT_IF, addrs.lb()),
            (&lb, Self::LB_BACKENDS_IF, addrs.lb_backend_side()),
            (&backends, Self::BACKENDS_IF, addrs.backends()),
        ] {
            netns.add_address(dev, &format!("{addr}/24"))?;
        }
        client.add_default_route(&addrs.lb().to_string())?;
        backends.add_default_route(&addrs.lb_backend_side().to_string())?;
        Ok(Routed {
            client,
            lb,
            backends,
            addrs,
        })
    }
}

/// Where the hosts of a [`Lan`] are on 10.<net>.0.0/24: the client .100, the backends .2, load
/// balancer i (from 0) .(first_lb + i), more hosts where [`Lan::add_host`] puts them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LanAddrs {
    net: u8,
    first_lb: u8,
}

impl LanAddrs {
    /// `net` must be unique among the layouts that exist at once.
    pub const fn new(net: u8, first_lb: u8) -> LanAddrs {
        LanAddrs { net, first_lb }
    }

    pub const fn net(self) -> u8 {
        self.net
    }

    pub const fn client(self) -> Ipv4Addr {
        self.host(100)
    }

    pub const fn backends(self) -> Ipv4Addr {
        self.host(2)
    }

    /// Load balancer `i` (from 0).
    pub const fn lb(self, i: usize) -> Ipv4Addr {
        self.host(self.lb_host(i))
    }

    pub const fn host(self, host: u8) -> Ipv4Addr {
        Ipv4Addr::new(10, self.net, 0, host)
    }

    /// Saturates at .255, which [`Lan::create`] never hands out.
    const fn lb_host(self, i: usize) -> u8 {
        if i > u8::MAX as usize {
            return u8::MAX;
        }
        match self.first_lb.checked_add(i as u8) {
            Some(host) => host,
            None => u8::MAX,
        }
    }
}

/// Hosts on one bridge: a client, the backends and `lbs` load balancers, each in its own
/// namespace on a port of the [`Switch`]; a one-armed load balancer, or several that are peers.
/// Dropping it removes every namespace, the ones [`Lan::add_host`] added too.
#[derive(Debug)]
pub struct Lan {
    pub switch: Switch,
    pub client: NetNs,
    pub backends: NetNs,
    pub lbs: Vec<NetNs>,
    pub addrs: LanAddrs,
    /// Hosts added with [`Lan::add_host`].
    more: Vec<NetNs>,
}

impl Lan {
    /// Every host's interface on the LAN.
    pub const HOST_IF: &'static str = "lan0";

    /// `name` names each namespace after its role: `switch`, `client`, `backends`, `lb1`,
    /// `lb2`... (load balancer i is `lb<i + 1>`).
    pub fn create(addrs: LanAddrs, lbs: usize, name: &dyn Fn(&str) -> String) -> Result<Lan> {
        let full = Error::LanFull {
            net: addrs.net,
            first: addrs.first_lb,
            count: lbs,
        };
        let last = usize::from(addrs.first_lb) + lbs;
        if addrs.first_lb <= 2 || last > 100 {
            return Err(full);
        }
        let switch = Switch::create(name("switch"))?;
        let client = NetNs::create(name("client"))?;
        attach(&switch, &client, addrs.client())?;
        let backends = NetNs::create(name("backends"))?;
        attach(&switch, &backends, addrs.backends())?;
        let mut lb_hosts = Vec::with_capacity(lbs);
        for i in 0..lbs {
            let lb = NetNs::create(name(&format!("lb{}", i + 1)))?;
            attach(&switch, &lb, addrs.lb(i))?;
            lb_hosts.push(lb);
        }
        Ok(Lan {
            switch,
            client,
            backends,
            lbs: lb_hosts,
            addrs,
            more: Vec::new(),
        })
    }

    /// One more host, namespace `name` at 10.<net>.0.<host>, owned (and removed) by the LAN.
    pub fn add_host(&mut self, name: impl Into<String>, host: u8) -> Result<&NetNs> {
        let netns = NetNs::create(name)?;
        attach(&self.switch, &netns, self.addrs.host(host))?;
        self.more.push(netns);
        let added = self.more.len() - 1;
        Ok(&self.more[added])
    }

    /// Cuts load balancer `i` off the segment (its switch port goes down), or puts it back.
    pub fn set_lb_attached(&self, i: usize, attached: bool) -> Result<()> {
        self.switch
            .set_port_up(&port(self.addrs.lb_host(i)), attached)
    }
}

/// The switch port of the host at .`host`: unique, as the host's address is.
fn port(host: u8) -> String {
    format!("p{host}")
}

fn attach(switch: &Switch, host: &NetNs, addr: Ipv4Addr) -> Result<()> {
    let [.., last] = addr.octets();
    switch.attach(host, &port(last), Lan::HOST_IF, &format!("{addr}/24"))
}
