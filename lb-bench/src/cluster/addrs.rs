//! Where the cluster's hosts are: one LAN, 10.242.0.0/24 (backends .2, client .100, node i at
//! .(11 + i)), and the ports every node listens on.

use std::net::{Ipv4Addr, SocketAddr};

use netns_kit::LanAddrs;

use crate::contender::FRONTEND_PORT;

/// The cluster's LAN: nodes at .11 and up.
pub(crate) const NET: LanAddrs = LanAddrs::new(242, 11);
/// The peers port of every node, stickylb's and HAProxy's.
pub(crate) const PEERS_PORT: u16 = 1024;
/// stickylb's monitor port on each node (its table size, in `/metrics`).
pub(crate) const MONITOR_PORT: u16 = 8404;
/// Node `i`'s address (from 0).
pub(crate) fn node_addr(i: usize) -> Ipv4Addr {
    NET.lb(i)
}

/// Node `i`'s frontend.
pub(crate) fn frontend(i: usize) -> SocketAddr {
    SocketAddr::from((node_addr(i), FRONTEND_PORT))
}

/// stickylb node `i`'s monitor.
pub(crate) fn monitor(i: usize) -> SocketAddr {
    SocketAddr::from((node_addr(i), MONITOR_PORT))
}

/// Node `i`'s name among the peers (and stickylb's instance name).
pub(crate) fn node_name(i: usize) -> String {
    format!("n{}", i + 1)
}
