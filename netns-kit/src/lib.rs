//! Network namespaces as hosts, for stickylb's end-to-end tests, its demo and its bench: one
//! kit, so that all three build their networks, run commands in them and clean up the same way.
//!
//! - [`NetNs`]: a named namespace (`ip netns add`), removed with every process in it when the
//!   guard drops, also while a panic unwinds; [`NetNs::keep`] leaves it for a later run.
//! - Commands run inside with `nsenter --net=/var/run/netns/<name>`, which joins the network
//!   namespace only. `ip netns exec` would also give the command a private mount namespace with
//!   a fresh /sys, hiding the host's bpffs: BPF objects pinned there would vanish with it.
//! - [`veth`] links two namespaces; [`Switch`] is a bridge in a namespace of its own, for hosts
//!   on one LAN.
//! - [`Routed`] (client, load balancer, backends on two links) and [`Lan`] (client, backends
//!   and load balancers on one bridge) are the two layouts the tests and the bench share;
//!   [`Cluster`] puts N load balancers behind a router that spreads connections by ECMP.
//! - [`Names`] names namespaces after the process that made them, so that a later run removes
//!   what a crashed one left ([`Names::remove_stale`]).
//!
//! Everything here needs root (CAP_NET_ADMIN and CAP_SYS_ADMIN) and iproute2, nsenter and
//! sysctl on the PATH.

mod command;
mod error;
mod layout;
mod link;
mod names;
mod netns;
mod sys;

pub use self::{
    command::{describe, probe_stdout, run},
    error::Error,
    layout::{Cluster, ClusterAddrs, Lan, LanAddrs, Routed, RoutedAddrs},
    link::{veth, Switch},
    names::{Names, Stale},
    netns::{command_in, enter, exists, path, pids, remove, NetNs, NETNS_DIR},
    sys::is_root,
};

/// What this crate's functions return.
pub type Result<T, E = Error> = std::result::Result<T, E>;
