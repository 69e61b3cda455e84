//! A socket's exact TCP state, read with `TCP_REPAIR` (needs CAP_NET_ADMIN).

use std::{
    io,
    mem::{size_of, MaybeUninit},
    os::fd::{AsFd, AsRawFd, BorrowedFd},
};

/// `TCP_REPAIR_QUEUE` values (linux/tcp.h).
const TCP_RECV_QUEUE: libc::c_int = 1;
const TCP_SEND_QUEUE: libc::c_int = 2;

/// `tcpi_options` bits (linux/tcp.h).
pub const TCPI_OPT_TIMESTAMPS: u8 = 1;
pub const TCPI_OPT_SACK: u8 = 2;
pub const TCPI_OPT_WSCALE: u8 = 4;
pub const TCPI_OPT_ECN: u8 = 8;
pub const TCPI_OPT_USEC_TS: u8 = 64;

/// `TCP_ESTABLISHED` in `tcpi_state`.
pub const TCP_ESTABLISHED: u8 = 1;

/// A failed socket call, named.
#[derive(Debug, thiserror::Error)]
#[error("{call} on the socket")]
pub struct RepairError {
    pub call: &'static str,
    #[source]
    pub source: io::Error,
}

/// What the translation needs from one socket, read in repair mode.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Snapshot {
    /// The next sequence number this socket will send (`write_seq`).
    pub snd_nxt: u32,
    /// The next sequence number it expects (`rcv_nxt`).
    pub rcv_nxt: u32,
    /// The socket's TCP timestamp clock now (`TCP_TIMESTAMP`).
    pub ts_clock: u32,
    /// `tcpi_state`.
    pub state: u8,
    /// `tcpi_options` (`TCPI_OPT_*`).
    pub options: u8,
    /// Scale the peer applies to the windows it sends (`tcpi_snd_wscale`).
    pub snd_wscale: u8,
    /// Scale this socket applies to the windows it sends (`tcpi_rcv_wscale`).
    pub rcv_wscale: u8,
    /// Largest payload this socket sends (`tcpi_snd_mss`: the peer's MSS and the path, less
    /// the TCP options in use).
    pub snd_mss: u32,
    pub rcv_mss: u32,
    /// The MSS this socket advertised to its peer (`tcpi_advmss`, options not deducted).
    pub adv_mss: u32,
    /// Unread bytes (`SIOCINQ`).
    pub inq: u32,
    /// Unacknowledged or unsent bytes (`SIOCOUTQ`).
    pub outq: u32,
}

/// (`SIOCINQ`, `SIOCOUTQ`) of a TCP socket.
pub fn queues(socket: BorrowedFd<'_>) -> Result<(u32, u32), RepairError> {
    Ok((
        ioctl_int(socket, libc::FIONREAD, "ioctl(SIOCINQ)")?,
        ioctl_int(socket, libc::TIOCOUTQ, "ioctl(SIOCOUTQ)")?,
    ))
}

/// Turns repair mode on. Closing a socket in repair mode sends nothing (no FIN, no RST) and
/// leaves no TIME_WAIT.
pub fn enter(socket: impl AsFd) -> Result<(), RepairError> {
    setsockopt_int(
        socket.as_fd(),
        libc::IPPROTO_TCP,
        libc::TCP_REPAIR,
        1,
        "TCP_REPAIR",
    )
}

/// `TCP_REPAIR` off and send the peer a window probe (an old sequence number, which the peer
/// answers with an acknowledgement), as after a restore.
const TCP_REPAIR_OFF: libc::c_int = 0;
/// `TCP_REPAIR` off, sending nothing.
const TCP_REPAIR_OFF_NO_WP: libc::c_int = -1;

/// Turns repair mode off, sending nothing.
///
/// Leaving repair mode also clears `SO_REUSEADDR` (the kernel sets `sk_reuse` to "no reuse"):
/// a client socket that later ends in TIME_WAIT would then keep a new listener from binding its
/// port (restart right after traffic failed with "Address already in use"). It is set again
/// here: every socket we repair is either accepted from a listener that has it or a server
/// connection of ours that we bind with it.
pub fn leave(socket: impl AsFd) -> Result<(), RepairError> {
    leave_with(socket.as_fd(), TCP_REPAIR_OFF_NO_WP)
}

fn leave_with(fd: BorrowedFd<'_>, how: libc::c_int) -> Result<(), RepairError> {
    setsockopt_int(fd, libc::IPPROTO_TCP, libc::TCP_REPAIR, how, "TCP_REPAIR")?;
    setsockopt_int(fd, libc::SOL_SOCKET, libc::SO_REUSEADDR, 1, "SO_REUSEADDR")
}

/// Makes the peer acknowledge at once (repair mode on, then off with a window probe), so that
/// the program records a fresh TSval of a peer that has been quiet.
pub fn probe(socket: impl AsFd) -> Result<(), RepairError> {
    let fd = socket.as_fd();
    enter(fd)?;
    leave_with(fd, TCP_REPAIR_OFF)
}

/// Bytes written to the socket that it has not sent yet (`SIOCOUTQNSD`).
pub fn unsent(socket: BorrowedFd<'_>) -> Result<u32, RepairError> {
    /// `SIOCOUTQNSD` (linux/sockios.h).
    const SIOCOUTQNSD: libc::Ioctl = 0x894B;
    ioctl_int(socket, SIOCOUTQNSD, "ioctl(SIOCOUTQNSD)")
}

/// `tcpi_state` (`TCP_ESTABLISHED`, ...).
pub fn state(socket: BorrowedFd<'_>) -> Result<u8, RepairError> {
    Ok(tcp_info(socket)?.tcpi_state)
}

/// Makes the socket's close an RST (`SO_LINGER` 0): no TIME_WAIT is left on the load balancer,
/// so a reserved source port is free again at once.
pub fn reset_on_close(socket: impl AsFd) -> Result<(), RepairError> {
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: linger is a struct linger on the stack and the length says so.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_fd().as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&raw const linger).cast(),
            socklen::<libc::linger>(),
        )
    };
    check(rc, "SO_LINGER")
}

/// Reads the snapshot; the socket must be in repair mode.
pub fn snapshot(socket: impl AsFd) -> Result<Snapshot, RepairError> {
    let fd = socket.as_fd();
    setsockopt_int(
        fd,
        libc::IPPROTO_TCP,
        libc::TCP_REPAIR_QUEUE,
        TCP_SEND_QUEUE,
        "TCP_REPAIR_QUEUE",
    )?;
    let snd_nxt = getsockopt_u32(fd, libc::TCP_QUEUE_SEQ, "TCP_QUEUE_SEQ(send)")?;
    setsockopt_int(
        fd,
        libc::IPPROTO_TCP,
        libc::TCP_REPAIR_QUEUE,
        TCP_RECV_QUEUE,
        "TCP_REPAIR_QUEUE",
    )?;
    let rcv_nxt = getsockopt_u32(fd, libc::TCP_QUEUE_SEQ, "TCP_QUEUE_SEQ(recv)")?;
    let ts_clock = getsockopt_u32(fd, libc::TCP_TIMESTAMP, "TCP_TIMESTAMP")?;
    let info = tcp_info(fd)?;
    let (inq, outq) = queues(fd)?;
    Ok(Snapshot {
        snd_nxt,
        rcv_nxt,
        ts_clock,
        state: info.tcpi_state,
        options: info.tcpi_options,
        snd_wscale: info.tcpi_snd_rcv_wscale & 0x0f,
        rcv_wscale: info.tcpi_snd_rcv_wscale >> 4,
        snd_mss: info.tcpi_snd_mss,
        rcv_mss: info.tcpi_rcv_mss,
        adv_mss: info.tcpi_advmss,
        inq,
        outq,
    })
}

fn tcp_info(fd: BorrowedFd<'_>) -> Result<libc::tcp_info, RepairError> {
    let mut info = MaybeUninit::<libc::tcp_info>::zeroed();
    let mut len = socklen::<libc::tcp_info>();
    // SAFETY: info points to writable memory of len bytes; the kernel writes at most len.
    let rc = unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            info.as_mut_ptr().cast(),
            &mut len,
        )
    };
    check(rc, "TCP_INFO")?;
    // SAFETY: zero-initialised plain integers, partly overwritten by the kernel.
    Ok(unsafe { info.assume_init() })
}

fn setsockopt_int(
    fd: BorrowedFd<'_>,
    level: libc::c_int,
    option: libc::c_int,
    value: libc::c_int,
    call: &'static str,
) -> Result<(), RepairError> {
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
    check(rc, call)
}

fn getsockopt_u32(
    fd: BorrowedFd<'_>,
    option: libc::c_int,
    call: &'static str,
) -> Result<u32, RepairError> {
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
    check(rc, call)?;
    Ok(value)
}

fn ioctl_int(
    fd: BorrowedFd<'_>,
    request: libc::Ioctl,
    call: &'static str,
) -> Result<u32, RepairError> {
    let mut value: libc::c_int = 0;
    // SAFETY: both requests write one int through the pointer.
    let rc = unsafe { libc::ioctl(fd.as_raw_fd(), request, &raw mut value) };
    check(rc, call)?;
    Ok(u32::try_from(value).unwrap_or(0))
}

fn check(rc: libc::c_int, call: &'static str) -> Result<(), RepairError> {
    if rc == 0 {
        Ok(())
    } else {
        Err(RepairError {
            call,
            source: io::Error::last_os_error(),
        })
    }
}

fn socklen<T>() -> libc::socklen_t {
    libc::socklen_t::try_from(size_of::<T>()).unwrap_or(libc::socklen_t::MAX)
}
