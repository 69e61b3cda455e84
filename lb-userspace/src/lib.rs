//! stickylb: a sticky-session HTTP load balancer whose stick table lives in a pinned BPF map, so
//! sessions stay stuck across reloads, restarts and crashes.
//!
//! Layout: [`config`] reads the TOML file; [`proxy`] serves frontends; [`backend`] holds server
//! state and makes the routing decision with [`balance`] and the stick [`table`]; [`health`]
//! checks servers; [`dataplane`] loads the eBPF object and owns bpffs; [`fastpath`] splices
//! established connections in the kernel; [`monitor`] serves the
//! status page and metrics; [`peers`] mirrors the tables with other load balancers; [`reload`]
//! applies a configuration in place; [`control`] answers `stickylb reload` and hands sockets to
//! a successor, and [`operate`] carries out the operator's requests on it; [`detach`] takes a
//! stopped instance's programs out of the kernel; [`routing`] builds
//! the backends and frontends from a configuration; [`daemon`]
//! wires them together (nothing depends on it); [`logging`] writes the log without making the
//! traffic wait for its reader. Every system call the crate makes itself is in
//! [`sys`], the only module allowed `unsafe`.

#![deny(unsafe_code)]

pub mod backend;
pub mod balance;
pub mod config;
pub mod control;
pub mod cookie;
pub mod daemon;
pub mod dataplane;
pub mod detach;
pub mod fastpath;
pub mod health;
pub mod logging;
pub mod monitor;
pub mod operate;
pub mod peers;
pub mod proxy;
pub mod reload;
pub mod routing;
pub mod shield;
#[expect(
    unsafe_code,
    reason = "the raw system calls live here, each with its contract"
)]
pub mod sys;
pub mod table;

/// An error and its causes on one line, for log lines that must say why.
pub fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
