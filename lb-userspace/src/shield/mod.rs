//! The shield: an XDP program on the frontend interfaces that drops packets from sources on the
//! operator's deny list before the stack sees them (docs/SHIELD.md).
//!
//! - [`deny`] reads and writes the pinned deny list `SHIELD_DENY` (`stickylb deny`), one LPM
//!   trie for both address families.
//! - [`program`] loads the XDP program `shield`, attaches it (native mode where the driver has
//!   it, generic otherwise) and pins its links and maps under `<pin_dir>/<instance>/v1/`,
//!   adopting what a previous process pinned.
//!
//! - [`error`] says which part failed.
//!
//! Arrows go one way: `program` -> `deny` -> `error`.

pub mod deny;
pub mod error;
pub mod program;

pub use self::{
    deny::DenyList,
    error::ShieldError,
    program::{AttachMode, Shield},
};
