//! The kernel fast path: TCP connections spliced by a TC program (design: `docs/FASTPATH.md`).
//!
//! - [`program`] loads `splice_ingress`, attaches it to interfaces with TCX and pins the links
//!   and the maps under `<pin_dir>/<instance>/v1/`, adopting what a previous process pinned.
//! - [`flows`] reads and writes the pinned `SPLICE_FLOWS` map.
//! - [`repair`] reads a socket's exact TCP state with `TCP_REPAIR`.
//! - [`translate`] turns the two legs' snapshots into the two map entries.
//! - [`runtime`] is the fast path in the daemon: the loaded program, the attached interfaces,
//!   the source [`ports`], the [`collector`] that ages entries, and the counters.
//! - [`handoff`] hands one relayed connection to the kernel when the [`policy`] says so, with
//!   [`Runtime`]'s state; [`interfaces`] finds the interface an address uses.
//! - [`report`] summarises the flow map for `stickylb fastpath` and the monitor.
//!
//! The splice protocol itself (OBSERVE, arming at a quiet message boundary, completion by the
//! program, silent close) is in [`splice`].
//!
//! Arrows go one way: `handoff` -> `runtime` -> `program` -> `flows`, and `handoff` ->
//! `splice` -> `translate` -> `repair`; a module never names one that depends on it.

pub mod collector;
pub mod flows;
pub mod handoff;
pub mod interfaces;
pub mod policy;
pub mod ports;
pub mod program;
pub mod repair;
pub mod report;
pub mod runtime;
pub mod splice;
pub mod translate;

pub use self::{
    flows::Flows,
    program::{FastPath, FastPathError},
    runtime::Runtime,
};
