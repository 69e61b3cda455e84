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

/// `ethtool -K <dev> gro on|off` for the calling thread's network namespace, through the
/// ioctl (`ethtool` itself may be missing).
pub(crate) fn set_gro(dev: &str, on: bool) -> io::Result<()> {
    const SIOCETHTOOL: libc::c_ulong = 0x8946;
    const ETHTOOL_SGRO: u32 = 0x2c;
    #[repr(C)]
    struct EthtoolValue {
        cmd: u32,
        data: u32,
    }
    let mut value = EthtoolValue {
        cmd: ETHTOOL_SGRO,
        data: u32::from(on),
    };
    // SAFETY: a zeroed ifreq is valid.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    if dev.len() >= req.ifr_name.len() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("interface name {dev} is too long"),
        ));
    }
    for (to, from) in req.ifr_name.iter_mut().zip(dev.bytes()) {
        *to = from as libc::c_char;
    }
    req.ifr_ifru.ifru_data = (&raw mut value).cast();
    // SAFETY: plain socket(2); the descriptor is closed below.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `req` is a valid ifreq whose data pointer is `value`, alive for the call.
    let rc = unsafe { libc::ioctl(fd, SIOCETHTOOL, &raw mut req) };
    let error = io::Error::last_os_error();
    // SAFETY: ours, closed once.
    unsafe { libc::close(fd) };
    if rc == 0 {
        Ok(())
    } else {
        Err(error)
    }
}

/// Whether this process runs as root (the kit needs it; its users ask before they start).
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}
