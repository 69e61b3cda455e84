//! Why the shield could not start, or a deny list command failed: each variant names the part.

use std::path::PathBuf;

use crate::dataplane::{self, LayoutMismatch};

/// Errors of the shield: its program, its deny list and its settings.
#[derive(Debug, thiserror::Error)]
pub enum ShieldError {
    #[error("preparing the pin directory")]
    PinRoot(#[source] dataplane::DataplaneError),
    #[error(transparent)]
    Incompatible(#[from] LayoutMismatch),
    #[error("opening the pinned deny list {path} (has this instance run with [shield] enabled?)")]
    OpenPinned {
        path: PathBuf,
        #[source]
        source: aya::maps::MapError,
    },
    #[error("operation on the pinned map {path}")]
    Map {
        path: PathBuf,
        #[source]
        source: aya::maps::MapError,
    },
    #[error(transparent)]
    Object(#[from] dataplane::ObjectError),
    /// The verifier refused `program`.
    #[error("loading the shield's program {program} into the kernel (verifier)")]
    Verify {
        program: &'static str,
        #[source]
        source: aya::programs::ProgramError,
    },
    #[error(
        "attaching {} to {interface} (native and generic XDP both failed)",
        lb_common::SHIELD_PROGRAM
    )]
    Attach {
        interface: String,
        #[source]
        source: aya::programs::ProgramError,
    },
    #[error(
        "attaching {} to {interface}: another XDP program is attached there (a previous \
         stickylb's, pinned on a bpffs this process does not see, or another tool's)",
        lb_common::SHIELD_PROGRAM
    )]
    Occupied {
        interface: String,
        #[source]
        source: aya::programs::ProgramError,
    },
    #[error(transparent)]
    Link(#[from] dataplane::PinnedLinkError),
    #[error(
        "[shield] is enabled but no interface was found for it: no frontend binds an address \
         of this host's interfaces other than loopback; set [shield] interfaces, or \
         enabled = false"
    )]
    NoInterface,
    #[error("reading this process's network namespace cookie (SO_NETNS_COOKIE)")]
    NetnsCookie(#[source] std::io::Error),
    #[error(
        "filling the map {} of the shield's refund",
        lb_common::SHIELD_FRONTENDS_MAP
    )]
    Frontends(#[source] aya::maps::MapError),
    #[error(
        "filling the map {} of the ports whose SYNs the shield limits",
        lb_common::SHIELD_PORTS_MAP
    )]
    Ports(#[source] aya::maps::MapError),
    #[error("the cgroup v2 hierarchy for the shield's refund ({path})")]
    Cgroup {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "attaching {} (sock_ops) to the root of the cgroup v2 hierarchy",
        lb_common::SHIELD_REFUND_PROGRAM
    )]
    RefundAttach(#[source] aya::programs::ProgramError),
    #[error("the pinned link of the shield's refund {path}")]
    RefundAdopt {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("listing the network interfaces")]
    ListInterfaces(#[source] std::io::Error),
    #[error(
        "the fast path's map {path} is not pinned: the shield translates spliced flows at XDP \
         only after the fast path has loaded"
    )]
    FastPathMapMissing { path: PathBuf },
}
