//! The system calls the kit makes itself; everything else is iproute2's.

use std::{fs::File, io, os::fd::AsRawFd as _};

/// SIGKILL to `pid`, ignoring failure (the process may be gone already).
pub(crate) fn kill(pid: u32) {
    let Ok(pid) = libc::pid_t::try_from(pid) else {
        return;
    };
    // SAFETY: kill takes no pointers; a stale pid only makes it fail.
    unsafe { libc::kill(pid, libc::SIGKILL) };
}

/// setns(2) of the calling thread into the network namespace `file` is a handle of.
pub(crate) fn join_net(file: &File) -> io::Result<()> {
    // SAFETY: the fd is open for the duration of the call; CLONE_NEWNET only changes this
    // thread's network namespace.
    let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Whether this process runs as root (the kit needs it; its users ask before they start).
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}
