//! The kernel fast path: TCP connections spliced by a TC program (design: `docs/FASTPATH.md`).
//!
//! - [`program`] loads `splice_ingress`, attaches it to interfaces with TCX and pins the links
//!   and the maps under `<pin_dir>/<instance>/v1/`, adopting what a previous process pinned.
//! - [`flows`] reads and writes the pinned `SPLICE_FLOWS` map.
//! - [`repair`] reads a socket's exact TCP state with `TCP_REPAIR`.
//! - [`translate`] turns the two legs' snapshots into the two map entries.
//!
//! The splice protocol itself (OBSERVE, quiescence, HOLD, double snapshot, commit or abort,
//! silent close) is in [`splice`].

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
