//! The shield: an XDP program on the frontend interfaces that drops packets from sources on the
//! operator's deny list, and TCP SYNs beyond a per-source rate, before the stack sees them
//! (docs/SHIELD.md).
//!
//! - [`deny`] reads and writes the pinned deny list `SHIELD_DENY` (`stickylb deny`), one LPM
//!   trie for both address families.
//! - [`limit`] turns `[shield] syn_rate`/`syn_burst` into the program's settings and writes
//!   them to the pinned map `SHIELD_CONFIG` (at start and on a reload).
//! - [`program`] loads the XDP program `shield`, attaches it (native mode where the driver has
//!   it, generic otherwise) and pins its links and maps under `<pin_dir>/<instance>/v1/`,
//!   adopting what a previous process pinned; it also reads the counters.
//! - [`refund`] loads and attaches the `sock_ops` program that gives a SYN back to its
//!   source's bucket when its connection is established (only SYNs that never become
//!   connections are limited).
//! - [`interfaces`] finds the interfaces that carry the frontends' addresses.
//!
//! - [`error`] says which part failed.
//!
//! Arrows go one way: `program` -> `deny`, `limit` -> `error`; `refund` -> `program`;
//! `interfaces` -> `error`.

pub mod deny;
pub mod error;
pub mod interfaces;
pub mod limit;
pub mod program;
pub mod refund;

pub use self::{
    deny::DenyList,
    error::ShieldError,
    limit::SynLimit,
    program::{AttachMode, Attached, Shield},
};
