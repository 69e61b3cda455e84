//! A TCP socket's exact state: `TCP_REPAIR` and the options it unlocks, `TCP_INFO`, and the
//! queue-length ioctls (tcp(7), linux/tcp.h, linux/sockios.h). Repair mode needs
//! CAP_NET_ADMIN.
//!
//! None of these has a wrapper in rustix, so they are `setsockopt`/`getsockopt`/`ioctl` on
//! plain integers here. What the fast path does with them is in `fastpath::repair`.

use std::{
    io,
    mem::{size_of, MaybeUninit},
    os::fd::{AsRawFd as _, BorrowedFd},
};

/// What `TCP_REPAIR` is set to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Repair {
    /// Repair mode on: closing the socket sends nothing (no FIN, no RST) and leaves no
    /// TIME_WAIT.
    On,
    /// Off, sending the peer a window probe (an old sequence number, which the peer answers
    /// with an acknowledgement), as after a restore (`TCP_REPAIR_OFF`).
    OffWithProbe,
    /// Off, sending nothing (`TCP_REPAIR_OFF_NO_WP`).
    Off,
}

/// The queue `TCP_REPAIR_QUEUE` selects for `TCP_QUEUE_SEQ`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Queue {
    Recv,
    Send,
}

/// The fields of `struct tcp_info` the fast path reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TcpInfo {
    /// `tcpi_state` (`TCP_ESTABLISHED`, ...).
    pub state: u8,
    /// `tcpi_options` (`TCPI_OPT_*`).
    pub options: u8,
    /// Scale the peer applies to the windows it sends (low nibble of `tcpi_snd_rcv_wscale`).
    pub snd_wscale: u8,
    /// Scale this socket applies to the windows it sends (high nibble).
    pub rcv_wscale: u8,
    /// `tcpi_snd_mss`.
    pub snd_mss: u32,
    /// `tcpi_rcv_mss`.
    pub rcv_mss: u32,
    /// `tcpi_advmss`.
    pub adv_mss: u32,
}

/// Sets `TCP_REPAIR`.
pub fn set_repair(socket: BorrowedFd<'_>, mode: Repair) -> io::Result<()> {
    let value = match mode {
        Repair::On => 1,
        Repair::OffWithProbe => 0,
        Repair::Off => -1,
    };
    setsockopt_int(socket, libc::IPPROTO_TCP, libc::TCP_REPAIR, value)
}

/// Selects the queue that [`queue_seq`] reads (`TCP_REPAIR_QUEUE`; repair mode only).
pub fn select_queue(socket: BorrowedFd<'_>, queue: Queue) -> io::Result<()> {
    // TCP_RECV_QUEUE and TCP_SEND_QUEUE (linux/tcp.h).
    let value = match queue {
        Queue::Recv => 1,
        Queue::Send => 2,
    };
    setsockopt_int(socket, libc::IPPROTO_TCP, libc::TCP_REPAIR_QUEUE, value)
}

/// The next sequence number of the selected queue (`TCP_QUEUE_SEQ`; repair mode only):
/// `write_seq` for the send queue, `rcv_nxt` for the receive queue.
pub fn queue_seq(socket: BorrowedFd<'_>) -> io::Result<u32> {
    getsockopt_u32(socket, libc::TCP_QUEUE_SEQ)
}

/// The socket's TCP timestamp clock now (`TCP_TIMESTAMP`).
pub fn timestamp(socket: BorrowedFd<'_>) -> io::Result<u32> {
    getsockopt_u32(socket, libc::TCP_TIMESTAMP)
}

/// `TCP_INFO`.
pub fn tcp_info(socket: BorrowedFd<'_>) -> io::Result<TcpInfo> {
    let mut info = MaybeUninit::<libc::tcp_info>::zeroed();
    let mut len = socklen::<libc::tcp_info>();
    // SAFETY: info points to writable memory of len bytes; the kernel writes at most len.
    let rc = unsafe {
        libc::getsockopt(
            socket.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            info.as_mut_ptr().cast(),
            &mut len,
        )
    };
    check(rc)?;
    // SAFETY: zero-initialised plain integers, partly overwritten by the kernel.
    let info = unsafe { info.assume_init() };
    Ok(TcpInfo {
        state: info.tcpi_state,
        options: info.tcpi_options,
        snd_wscale: info.tcpi_snd_rcv_wscale & 0x0f,
        rcv_wscale: info.tcpi_snd_rcv_wscale >> 4,
        snd_mss: info.tcpi_snd_mss,
        rcv_mss: info.tcpi_rcv_mss,
        adv_mss: info.tcpi_advmss,
    })
}

/// Unread bytes (`SIOCINQ`, which is `FIONREAD`).
pub fn inq(socket: BorrowedFd<'_>) -> io::Result<u32> {
    ioctl_int(socket, libc::FIONREAD)
}

/// Unacknowledged or unsent bytes (`SIOCOUTQ`, which is `TIOCOUTQ`).
pub fn outq(socket: BorrowedFd<'_>) -> io::Result<u32> {
    ioctl_int(socket, libc::TIOCOUTQ)
}

/// Bytes written to the socket that it has not sent yet (`SIOCOUTQNSD`).
pub fn unsent(socket: BorrowedFd<'_>) -> io::Result<u32> {
    /// `SIOCOUTQNSD` (linux/sockios.h).
    const SIOCOUTQNSD: libc::Ioctl = 0x894B;
    ioctl_int(socket, SIOCOUTQNSD)
}

fn setsockopt_int(
    fd: BorrowedFd<'_>,
    level: libc::c_int,
    option: libc::c_int,
    value: libc::c_int,
) -> io::Result<()> {
    // SAFETY: value is a c_int on the stack and the length says so.
    let rc = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            level,
            option,
            (&raw const value).cast(),
            socklen::<libc::c_int>(),
        )
    };
    check(rc)
}

fn getsockopt_u32(fd: BorrowedFd<'_>, option: libc::c_int) -> io::Result<u32> {
    let mut value: u32 = 0;
    let mut len = socklen::<u32>();
    // SAFETY: value is 4 writable bytes and len says so.
    let rc = unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            libc::IPPROTO_TCP,
            option,
            (&raw mut value).cast(),
            &mut len,
        )
    };
    check(rc)?;
    Ok(value)
}

/// One of the queue-length ioctls above, which all write one int. (rustix wraps FIONREAD but
/// not the other two; all three are read alike here.)
fn ioctl_int(fd: BorrowedFd<'_>, request: libc::Ioctl) -> io::Result<u32> {
    let mut value: libc::c_int = 0;
    // SAFETY: every request passed here writes one int through the pointer.
    let rc = unsafe { libc::ioctl(fd.as_raw_fd(), request, &raw mut value) };
    check(rc)?;
    Ok(u32::try_from(value).unwrap_or(0))
}

fn check(rc: libc::c_int) -> io::Result<()> {
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

fn socklen<T>() -> libc::socklen_t {
    libc::socklen_t::try_from(size_of::<T>()).unwrap_or(libc::socklen_t::MAX)
}
