//! The system calls the daemon makes itself, in one place (as aya's `sys/`): the rest of the
//! crate calls the safe functions here and gets `io::Error`s back. rustix makes the calls it
//! wraps; the others are raw `libc` calls, and every `unsafe` block of the crate is under
//! here, with the contract it relies on written beside it (the crate root denies `unsafe_code`
//! everywhere else).
//!
//! - [`bpf`]: map element and batch commands of `bpf(2)` on `&self`.
//! - [`bpf_link`]: opening a pinned link and replacing its program (`BPF_LINK_UPDATE`).
//! - [`bpffs`]: whether a path is on a bpf filesystem, and which one; mounting one.
//! - [`cgroup`]: where the cgroup v2 hierarchy is mounted; mounting it.
//! - [`fds`]: passing descriptors over a unix socket (`SCM_RIGHTS`).
//! - [`net`]: interface indexes and which interface has an address.
//! - [`netdev`]: what XDP an interface's driver can do (generic netlink `netdev`).
//! - [`process`]: the descriptor limit, the host name, the monotonic clock.
//! - [`socket`]: accepting outside an event loop (`accept4`); connecting to a unix socket
//!   without waiting on its backlog; `SO_LINGER`, `SO_REUSEADDR`, `SO_NETNS_COOKIE`.
//! - [`tcp_repair`]: `TCP_REPAIR`, `TCP_INFO` and the queue-length ioctls.

pub mod bpf;
pub mod bpf_link;
pub mod bpffs;
pub mod cgroup;
pub mod fds;
pub mod net;
pub mod netdev;
pub mod process;
pub mod socket;
pub mod tcp_repair;
