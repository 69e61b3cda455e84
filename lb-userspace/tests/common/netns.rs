//! The end-to-end tests' hosts, from `netns-kit`: its layouts under the tests' names and
//! addresses, and commands that panic on failure, as test setup should.
//!
//! Namespaces are `slb-<pid>-<n>-<tag>-<role>`; each test passes a `net` of its own, so tests
//! never share a subnet: 10.<net>.x.x. The first layout of a test process removes what an
//! earlier, killed one left.

use std::{
    ops::{Deref, DerefMut},
    sync::Once,
};

pub use netns_kit::NetNs;
use netns_kit::{ClusterAddrs, LanAddrs, Names, Routed, RoutedAddrs};

const NAMES: Names = Names::new("slb-");

/// `name` for the namespaces of test `tag`; sweeps stale ones first, once per process.
fn names(tag: &str) -> impl Fn(&str) -> String + '_ {
    static SWEEP: Once = Once::new();
    SWEEP.call_once(|| {
        for stale in NAMES.remove_stale() {
            eprintln!(
                "removed namespace {} left by process {}",
                stale.name, stale.pid
            );
        }
    });
    move |role| NAMES.unique(&format!("{tag}-{role}"))
}

/// Commands in a namespace for tests: output is stdout and stderr together.
pub trait Exec {
    /// Runs `argv`, panicking unless it succeeds.
    fn exec(&self, argv: &[&str]) -> String;
    /// Runs `argv`: whether it succeeded, and what it printed.
    fn try_exec(&self, argv: &[&str]) -> (bool, String);
}

impl Exec for NetNs {
    fn exec(&self, argv: &[&str]) -> String {
        let (ok, text) = self.try_exec(argv);
        assert!(ok, "{argv:?} in {} failed: {text}", self.name());
        text
    }

    fn try_exec(&self, argv: &[&str]) -> (bool, String) {
        let (program, args) = argv.split_first().expect("a command");
        let out = self
            .command(program)
            .args(args)
            .output()
            .unwrap_or_else(|e| panic!("{argv:?}: {e}"));
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.success(), text)
    }
}

/// client <-> lb <-> backends (netns-kit's `Routed`), on subnets 10.<net>.1.0/24 and
/// 10.<net>.2.0/24. Addresses: client 10.<net>.1.2, lb 10.<net>.1.1 and 10.<net>.2.1,
/// backends 10.<net>.2.2.
pub struct Topology(Routed);

impl Topology {
    /// `net` must be unique per test so that tests never share a subnet.
    pub fn new(tag: &str, net: u8) -> Topology {
        let routed = Routed::create(RoutedAddrs::new(net), &names(tag))
            .unwrap_or_else(|e| panic!("routed hosts for {tag}: {e}"));
        Topology(routed)
    }

    pub fn lb_addr(&self) -> String {
        self.0.addrs.lb().to_string()
    }

    pub fn client_addr(&self) -> String {
        self.0.addrs.client().to_string()
    }

    pub fn backend_addr(&self) -> String {
        self.0.addrs.backends().to_string()
    }
}

impl Deref for Topology {
    type Target = Routed;

    fn deref(&self) -> &Routed {
        &self.0
    }
}

/// One L2 segment 10.<net>.0.0/24 (netns-kit's `Lan`): a bridge in a hidden "switch"
/// namespace, and one namespace per host on it. Hosts: client 10.<net>.0.100, backends
/// 10.<net>.0.2, lb i (0-based) 10.<net>.0.(11+i).
pub struct Lan(netns_kit::Lan);

impl Lan {
    /// `net` must be unique per test so that tests never share a subnet; at most 89 lbs.
    pub fn new(tag: &str, net: u8, lbs: usize) -> Lan {
        let lan = netns_kit::Lan::create(LanAddrs::new(net, 11), lbs, &names(tag))
            .unwrap_or_else(|e| panic!("LAN for {tag}: {e}"));
        Lan(lan)
    }

    /// Address of `lbs[i]` (0-based): 10.<net>.0.(11+i).
    pub fn lb_addr(&self, i: usize) -> String {
        assert!(i < self.lbs.len(), "no lb {i}");
        self.addrs.lb(i).to_string()
    }

    pub fn client_addr(&self) -> String {
        self.addrs.client().to_string()
    }

    pub fn backend_addr(&self) -> String {
        self.addrs.backends().to_string()
    }

    /// Adds one more host namespace on the segment at 10.<net>.0.<host> (e.g. for a HAProxy
    /// peer); the `Lan` owns it and removes it on drop.
    pub fn add_host(&mut self, tag: &str, host: u8) -> &NetNs {
        self.0
            .add_host(NAMES.unique(tag), host)
            .unwrap_or_else(|e| panic!("host {tag}: {e}"))
    }

    /// Cuts `lbs[i]` off the segment: its switch-side link goes down.
    pub fn partition(&self, i: usize) {
        self.0
            .set_lb_attached(i, false)
            .unwrap_or_else(|e| panic!("partition lb {i}: {e}"));
    }

    /// Puts `lbs[i]` back on the segment.
    pub fn heal(&self, i: usize) {
        self.0
            .set_lb_attached(i, true)
            .unwrap_or_else(|e| panic!("heal lb {i}: {e}"));
    }
}

impl Deref for Lan {
    type Target = netns_kit::Lan;

    fn deref(&self) -> &netns_kit::Lan {
        &self.0
    }
}

/// N load balancers behind an ECMP router (netns-kit's `Cluster`): client 10.<net>.1.2 routed
/// by the router (10.<net>.1.1, 10.<net>.0.1) to the service address 10.<net>.100.1, which
/// every node holds on its `lo`; node i (0-based) at 10.<net>.0.(11+i) and the backends at
/// 10.<net>.0.2 on one LAN. The router hashes addresses and ports, so one client's connections
/// land on different nodes.
pub struct Cluster {
    inner: netns_kit::Cluster,
    tag: String,
}

impl Cluster {
    /// `net` must be unique per test so that tests never share a subnet; every node is routed
    /// to.
    pub fn new(tag: &str, net: u8, nodes: usize) -> Cluster {
        let inner = netns_kit::Cluster::create(ClusterAddrs::new(net), nodes, &names(tag))
            .unwrap_or_else(|e| panic!("cluster for {tag}: {e}"));
        Cluster {
            inner,
            tag: tag.to_owned(),
        }
    }

    /// One more node on the LAN, not routed to until [`Cluster::route_to`] names it; its index.
    pub fn add_node(&mut self) -> usize {
        let name = names(&self.tag);
        self.inner
            .add_node(&name)
            .unwrap_or_else(|e| panic!("node for {}: {e}", self.tag))
    }

    /// Spreads the service address's connections over `nodes` (indices) only.
    pub fn route_to(&mut self, nodes: &[usize]) {
        self.inner
            .route_to(nodes)
            .unwrap_or_else(|e| panic!("route to {nodes:?}: {e}"));
    }

    /// Drops every packet between node `i` and the other nodes (their peers' links); the
    /// client and the backends still reach it.
    pub fn partition(&self, i: usize) {
        self.inner
            .set_partitioned(i, true)
            .unwrap_or_else(|e| panic!("partition node {i}: {e}"));
    }

    /// Ends [`Cluster::partition`].
    pub fn heal(&self, i: usize) {
        self.inner
            .set_partitioned(i, false)
            .unwrap_or_else(|e| panic!("heal node {i}: {e}"));
    }

    /// Where clients connect: the service address.
    pub fn service_addr(&self) -> String {
        self.addrs.service().to_string()
    }

    /// Node `i`'s LAN address (what its peers connect to).
    pub fn node_addr(&self, i: usize) -> String {
        self.addrs.node(i).to_string()
    }

    pub fn client_addr(&self) -> String {
        self.addrs.client().to_string()
    }

    pub fn backend_addr(&self) -> String {
        self.addrs.backends().to_string()
    }
}

impl Deref for Cluster {
    type Target = netns_kit::Cluster;

    fn deref(&self) -> &netns_kit::Cluster {
        &self.inner
    }
}

impl DerefMut for Cluster {
    fn deref_mut(&mut self) -> &mut netns_kit::Cluster {
        &mut self.inner
    }
}
