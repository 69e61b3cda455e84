//! A cluster of load balancers behind a router that spreads connections over them by ECMP, as
//! a data centre's routers spread a service address over the machines that announce it.
//!
//! ```text
//!  client ──(10.<net>.1.0/24)── router ══(10.<net>.0.0/24, a bridge)══ node1 … nodeN, backends
//! ```
//!
//! Every node holds the service address (10.<net>.100.1/32) on its `lo`; the router reaches it
//! by one multipath route whose next hops are the nodes' LAN addresses, hashing each
//! connection's addresses and ports (`fib_multipath_hash_policy = 1`), so one client's
//! connections land on different nodes. The nodes reach each other (their peers' links) and
//! the backends on the LAN; their replies go back through the router, their default gateway.

use std::net::Ipv4Addr;

use crate::{veth, Error, NetNs, Result, Switch};

/// Where the hosts of a [`Cluster`] are: the client 10.<net>.1.2 and the router's side of its
/// link 10.<net>.1.1; on the LAN 10.<net>.0.0/24 the router .1, the backends .2 and node i
/// (from 0) .(11 + i); the service address 10.<net>.100.1 on every node.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ClusterAddrs {
    net: u8,
}

impl ClusterAddrs {
    /// The LAN address of the first node: the nodes are .11 to .99.
    const FIRST_NODE: u8 = 11;
    /// How many nodes the address plan has room for.
    pub const MAX_NODES: usize = 89;

    /// `net` must be unique among the layouts that exist at once.
    pub const fn new(net: u8) -> ClusterAddrs {
        ClusterAddrs { net }
    }

    pub const fn net(self) -> u8 {
        self.net
    }

    pub const fn client(self) -> Ipv4Addr {
        Ipv4Addr::new(10, self.net, 1, 2)
    }

    /// The router on the client's link: the client's gateway.
    pub const fn router_client_side(self) -> Ipv4Addr {
        Ipv4Addr::new(10, self.net, 1, 1)
    }

    /// The router on the LAN: the nodes' gateway.
    pub const fn router(self) -> Ipv4Addr {
        Ipv4Addr::new(10, self.net, 0, 1)
    }

    pub const fn backends(self) -> Ipv4Addr {
        Ipv4Addr::new(10, self.net, 0, 2)
    }

    /// The address every node serves on (on its `lo`) and clients connect to.
    pub const fn service(self) -> Ipv4Addr {
        Ipv4Addr::new(10, self.net, 100, 1)
    }

    /// Node `i`'s (from 0) address on the LAN: what its peers connect to, and the router's next
    /// hop to it. Panics beyond [`Self::MAX_NODES`].
    pub const fn node(self, i: usize) -> Ipv4Addr {
        assert!(i < Self::MAX_NODES, "no room for this node");
        Ipv4Addr::new(10, self.net, 0, Self::FIRST_NODE + i as u8)
    }
}

/// client <-> router <-> N nodes and the backends on one LAN; the router's multipath route to
/// the service address goes to the nodes [`Cluster::route_to`] names (all of them at first).
/// Dropping it removes every namespace.
#[derive(Debug)]
pub struct Cluster {
    pub switch: Switch,
    pub client: NetNs,
    pub router: NetNs,
    pub backends: NetNs,
    /// Node i (from 0) at [`ClusterAddrs::node`]`(i)`, in the order they were made.
    pub nodes: Vec<NetNs>,
    pub addrs: ClusterAddrs,
    /// The nodes the route to the service address goes to now.
    routed: Vec<usize>,
}

impl Cluster {
    /// The client's interface, towards the router.
    pub const CLIENT_IF: &'static str = "veth-router";
    /// The router's interface towards the client.
    pub const ROUTER_CLIENT_IF: &'static str = "veth-client";
    /// Every host's interface on the LAN (the router's too).
    pub const LAN_IF: &'static str = "lan0";

    /// `nodes` nodes, all routed to. `name` names each namespace after its role: `switch`,
    /// `client`, `router`, `backends`, `node1`, `node2`... (node i is `node<i + 1>`).
    pub fn create(
        addrs: ClusterAddrs,
        nodes: usize,
        name: &dyn Fn(&str) -> String,
    ) -> Result<Cluster> {
        check_room(addrs, nodes)?;
        // Each namespace is owned as soon as it exists, so a failed step removes those made.
        let switch = Switch::create(name("switch"))?;
        let client = NetNs::create(name("client"))?;
        let router = NetNs::create(name("router"))?;
        let backends = NetNs::create(name("backends"))?;
        veth(&client, Self::CLIENT_IF, &router, Self::ROUTER_CLIENT_IF)?;
        client.add_address(Self::CLIENT_IF, &format!("{}/24", addrs.client()))?;
        client.add_default_route(&addrs.router_client_side().to_string())?;
        let router_side = format!("{}/24", addrs.router_client_side());
        router.add_address(Self::ROUTER_CLIENT_IF, &router_side)?;
        attach(&switch, &router, addrs.router())?;
        setup_router(&router)?;
        attach(&switch, &backends, addrs.backends())?;
        let mut cluster = Cluster {
            switch,
            client,
            router,
            backends,
            nodes: Vec::with_capacity(nodes),
            addrs,
            routed: Vec::new(),
        };
        for _ in 0..nodes {
            cluster.add_node(name)?;
        }
        cluster.route_to(&(0..nodes).collect::<Vec<_>>())?;
        Ok(cluster)
    }

    /// One more node, ready to serve but not routed to yet (see [`Cluster::route_to`]); its
    /// index. `name` names it as [`Cluster::create`] does.
    pub fn add_node(&mut self, name: &dyn Fn(&str) -> String) -> Result<usize> {
        let i = self.nodes.len();
        check_room(self.addrs, i + 1)?;
        let node = NetNs::create(name(&format!("node{}", i + 1)))?;
        attach(&self.switch, &node, self.addrs.node(i))?;
        setup_node(&node, self.addrs)?;
        self.nodes.push(node);
        Ok(i)
    }

    /// Points the router's route to the service address at `nodes` (indices), replacing the
    /// route there was: connections are spread over them from then on (an established one may
    /// move to another node when the set changes, as with any hash-threshold ECMP). An empty
    /// set makes the address unreachable.
    pub fn route_to(&mut self, nodes: &[usize]) -> Result<()> {
        let service = format!("{}/32", self.addrs.service());
        let hops: Vec<String> = nodes
            .iter()
            .map(|&i| self.addrs.node(i).to_string())
            .collect();
        let mut argv = vec!["ip", "route", "replace"];
        if hops.is_empty() {
            argv.extend(["unreachable", &service]);
        } else {
            argv.push(&service);
            for hop in &hops {
                argv.extend(["nexthop", "via", hop, "dev", Self::LAN_IF]);
            }
        }
        self.router.run(&argv)?;
        self.routed = nodes.to_vec();
        Ok(())
    }

    /// The nodes the route to the service address goes to now.
    pub fn routed(&self) -> &[usize] {
        &self.routed
    }

    /// Cuts node `i` off the other nodes (`cut`), or joins it again: blackhole routes to each
    /// other's LAN addresses on both sides, so that the packets of their peers' links vanish
    /// silently, as in a partition; the client's traffic (through the router) and the backends'
    /// are not touched.
    pub fn set_partitioned(&self, i: usize, cut: bool) -> Result<()> {
        let action = if cut { "add" } else { "del" };
        let this = format!("{}/32", self.addrs.node(i));
        for (j, other) in self.nodes.iter().enumerate().filter(|(j, _)| *j != i) {
            let that = format!("{}/32", self.addrs.node(j));
            self.nodes[i].run(&["ip", "route", action, "blackhole", &that])?;
            other.run(&["ip", "route", action, "blackhole", &this])?;
        }
        Ok(())
    }
}

fn check_room(addrs: ClusterAddrs, nodes: usize) -> Result<()> {
    if nodes > ClusterAddrs::MAX_NODES {
        return Err(Error::LanFull {
            net: addrs.net,
            first: ClusterAddrs::FIRST_NODE,
            count: nodes,
        });
    }
    Ok(())
}

fn attach(switch: &Switch, host: &NetNs, addr: Ipv4Addr) -> Result<()> {
    let [.., last] = addr.octets();
    let port = format!("p{last}");
    switch.attach(host, &port, Cluster::LAN_IF, &format!("{addr}/24"))
}

/// Forwarding, and the multipath hash over addresses and ports (policy 1: L4), so that one
/// client's connections spread; no reverse-path filter (replies from the service address come
/// from any node).
fn setup_router(router: &NetNs) -> Result<()> {
    router.sysctl("net.ipv4.ip_forward", "1")?;
    router.sysctl("net.ipv4.fib_multipath_hash_policy", "1")?;
    for conf in ["all", "default", Cluster::LAN_IF, Cluster::ROUTER_CLIENT_IF] {
        router.sysctl(&format!("net.ipv4.conf.{conf}.rp_filter"), "0")?;
    }
    Ok(())
}

/// The service address on `lo`, never answered for in ARP on the LAN (each node has it: only
/// the router's route says which one gets a connection), and the router as gateway.
fn setup_node(node: &NetNs, addrs: ClusterAddrs) -> Result<()> {
    node.add_address("lo", &format!("{}/32", addrs.service()))?;
    for conf in ["all", Cluster::LAN_IF] {
        node.sysctl(&format!("net.ipv4.conf.{conf}.rp_filter"), "0")?;
        node.sysctl(&format!("net.ipv4.conf.{conf}.arp_ignore"), "1")?;
        node.sysctl(&format!("net.ipv4.conf.{conf}.arp_announce"), "2")?;
    }
    node.add_default_route(&addrs.router().to_string())
}
