//! The refund (docs/SHIELD.md, "The refund"): the `sock_ops` program `shield_refund` gives a
//! SYN back to its source's bucket when the kernel establishes the connection it opened on one
//! of this daemon's frontends, so only SYNs that never become connections are rate-limited.
//!
//! - **Where.** A `sock_ops` program attaches to a cgroup v2 and sees the sockets of every
//!   process under it: this one attaches to the root of the hierarchy (mounted at
//!   [`CGROUP2_FALLBACK`] on a host that has none mounted, as one with only cgroup v1 at
//!   `/sys/fs/cgroup`), so it sees the listeners whatever cgroup the daemon, or the process it
//!   was upgraded from, runs in. It attaches as a BPF link, which the kernel always
//!   attaches beside the others (`BPF_F_ALLOW_MULTI`): several daemons' programs coexist.
//! - **Whose connections.** The program refunds only for the (network namespace, port) pairs in
//!   `SHIELD_FRONTENDS`, which this process fills with its frontends' ports in its own
//!   namespace: another daemon's connections, or another service's on this host, are left to
//!   their own program or to none.
//! - **Lifetime.** Like the XDP links: the link is pinned as `<root>/`[`LINK_NAME`] and
//!   outlives the process; a start adopts it and replaces its program atomically
//!   (`BPF_LINK_UPDATE`); a start with the shield off removes it.

use std::{
    io,
    os::fd::AsFd as _,
    path::{Path, PathBuf},
};

use aya::{
    maps::{HashMap, MapData},
    programs::{links::CgroupAttachMode, SockOps},
};
use lb_common::{ShieldFrontend, SHIELD_FRONTENDS_MAP, SHIELD_REFUND_PROGRAM};

use super::{error::ShieldError, program::Shield};
use crate::{dataplane, sys};

/// File name of the pinned link under `<pin_dir>/<instance>/v1` (not `shield_...`: those are
/// the XDP links, one per interface).
pub const LINK_NAME: &str = "sockops_shield_refund";

/// Where the daemon mounts the cgroup v2 hierarchy when none is mounted.
pub const CGROUP2_FALLBACK: &str = "/run/stickylb/cgroup2";

/// How the refund got attached.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RefundAttach {
    /// A new link at the root of the hierarchy mounted at this path.
    Attached(PathBuf),
    /// A previous process's pinned link, its program replaced.
    Adopted,
}

impl Shield {
    /// Loads `shield_refund`, tells it this process's frontend `ports` (in this network
    /// namespace), and attaches it: adopting the link pinned under the root, or attaching a
    /// new one to the root of the cgroup v2 hierarchy and pinning it.
    pub fn attach_refund(&mut self, ports: &[u16]) -> Result<RefundAttach, ShieldError> {
        let netns_cookie = sys::socket::netns_cookie().map_err(ShieldError::NetnsCookie)?;
        let map = dataplane::map_mut(&mut self.ebpf, SHIELD_FRONTENDS_MAP)?;
        let mut frontends = HashMap::<&mut MapData, ShieldFrontend, u32>::try_from(map)
            .map_err(ShieldError::Frontends)?;
        for &port in ports {
            let key = ShieldFrontend {
                netns_cookie,
                port,
                _pad: [0; 6],
            };
            frontends
                .insert(key, 1, 0)
                .map_err(ShieldError::Frontends)?;
        }
        let path = self.root.join(LINK_NAME);
        let program = refund_program(&mut self.ebpf)?;
        let verify = |source| ShieldError::Verify {
            program: SHIELD_REFUND_PROGRAM,
            source,
        };
        program.load().map_err(verify)?;
        let program_fd = program.fd().map_err(verify)?;
        match sys::bpf_link::open_pinned(&path) {
            Ok(link) => {
                sys::bpf_link::replace_program(link.as_fd(), program_fd.as_fd())
                    .map_err(|source| ShieldError::RefundAdopt { path, source })?;
                return Ok(RefundAttach::Adopted);
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(source) => return Err(ShieldError::RefundAdopt { path, source }),
        }
        let hierarchy = cgroup2_hierarchy()?;
        let cgroup = sys::cgroup::open(&hierarchy).map_err(|source| ShieldError::Cgroup {
            path: hierarchy.clone(),
            source,
        })?;
        // A cgroup *link* always attaches beside the others (the kernel's BPF_F_ALLOW_MULTI)
        // and refuses the flag itself: `Single` passes no flag; it is multi-attach all the same.
        let link_id = program
            .attach(cgroup, CgroupAttachMode::Single)
            .map_err(ShieldError::RefundAttach)?;
        let link = program
            .take_link(link_id)
            .map_err(ShieldError::RefundAttach)?;
        dataplane::keep_link(link, &path, true)?;
        Ok(RefundAttach::Attached(hierarchy))
    }
}

/// Removes the refund's pinned link under `root`, which detaches it; whether there was one.
pub fn detach(root: &Path) -> Result<bool, ShieldError> {
    let path = root.join(LINK_NAME);
    match std::fs::remove_file(&path) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(source) => Err(ShieldError::RefundAdopt { path, source }),
    }
}

/// Where the root of the cgroup v2 hierarchy is mounted; mounted at [`CGROUP2_FALLBACK`] when
/// nowhere yet (idempotent: a second daemon finds the first one's mount).
fn cgroup2_hierarchy() -> Result<PathBuf, ShieldError> {
    let found = sys::cgroup::cgroup2_root().map_err(|source| ShieldError::Cgroup {
        path: PathBuf::from("/proc/self/mountinfo"),
        source,
    })?;
    if let Some(path) = found {
        return Ok(path);
    }
    let target = PathBuf::from(CGROUP2_FALLBACK);
    sys::cgroup::mount_cgroup2(&target).map_err(|source| ShieldError::Cgroup {
        path: target.clone(),
        source,
    })?;
    tracing::info!(path = %target.display(), "shield: mounted the cgroup v2 hierarchy (none was)");
    Ok(target)
}

fn refund_program(ebpf: &mut aya::Ebpf) -> Result<&mut SockOps, ShieldError> {
    Ok(dataplane::program_mut(ebpf, SHIELD_REFUND_PROGRAM)?)
}
