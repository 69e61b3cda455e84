//! stickylb: a sticky-session HTTP load balancer whose stick table lives in a pinned BPF map, so
//! sessions stay stuck across reloads, restarts and crashes.
//!
//! Layout: [`config`] reads the TOML file; [`proxy`] serves frontends; [`backend`] holds server
//! state and makes the routing decision with [`balance`] and the stick [`table`]; [`health`]
//! checks servers; [`dataplane`] loads the eBPF object and owns bpffs; [`monitor`] serves the
//! status page and metrics; [`daemon`] wires them together.

pub mod backend;
pub mod balance;
pub mod config;
pub mod cookie;
pub mod daemon;
pub mod dataplane;
pub mod health;
pub mod monitor;
pub mod peers;
pub mod proxy;
pub mod table;
