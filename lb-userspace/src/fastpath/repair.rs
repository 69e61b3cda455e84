//! A socket's exact TCP state, read with `TCP_REPAIR` (needs CAP_NET_ADMIN): what the
//! hand-off reads and how, each failure named. The system calls are in [`crate::sys`].

use std::{
    io,
    os::fd::{AsFd, BorrowedFd},
};

use crate::sys::{
    socket,
    tcp_repair::{self, Queue, Repair},
};

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
        tcp_repair::inq(socket).map_err(named("ioctl(SIOCINQ)"))?,
        tcp_repair::outq(socket).map_err(named("ioctl(SIOCOUTQ)"))?,
    ))
}

/// Turns repair mode on. Closing a socket in repair mode sends nothing (no FIN, no RST) and
/// leaves no TIME_WAIT.
pub fn enter(socket: impl AsFd) -> Result<(), RepairError> {
    tcp_repair::set_repair(socket.as_fd(), Repair::On).map_err(named("TCP_REPAIR"))
}

/// Turns repair mode off, sending nothing.
///
/// Leaving repair mode also clears `SO_REUSEADDR` (the kernel sets `sk_reuse` to "no reuse"):
/// a client socket that later ends in TIME_WAIT would then keep a new listener from binding its
/// port (restart right after traffic failed with "Address already in use"). It is set again
/// here: every socket we repair is either accepted from a listener that has it or a server
/// connection of ours that we bind with it.
pub fn leave(socket: impl AsFd) -> Result<(), RepairError> {
    leave_with(socket.as_fd(), Repair::Off)
}

fn leave_with(fd: BorrowedFd<'_>, how: Repair) -> Result<(), RepairError> {
    tcp_repair::set_repair(fd, how).map_err(named("TCP_REPAIR"))?;
    socket::set_reuseaddr(fd).map_err(named("SO_REUSEADDR"))
}

/// Makes the peer acknowledge at once (repair mode on, then off with a window probe), so that
/// the program records a fresh TSval of a peer that has been quiet.
pub fn probe(socket: impl AsFd) -> Result<(), RepairError> {
    let fd = socket.as_fd();
    enter(fd)?;
    leave_with(fd, Repair::OffWithProbe)
}

/// Bytes written to the socket that it has not sent yet (`SIOCOUTQNSD`).
pub fn unsent(socket: BorrowedFd<'_>) -> Result<u32, RepairError> {
    tcp_repair::unsent(socket).map_err(named("ioctl(SIOCOUTQNSD)"))
}

/// `tcpi_state` (`TCP_ESTABLISHED`, ...).
pub fn state(socket: BorrowedFd<'_>) -> Result<u8, RepairError> {
    Ok(tcp_info(socket)?.state)
}

/// Makes the socket's close an RST (`SO_LINGER` 0): no TIME_WAIT is left on the load balancer,
/// so a reserved source port is free again at once.
pub fn reset_on_close(socket: impl AsFd) -> Result<(), RepairError> {
    socket::set_reset_on_close(socket.as_fd()).map_err(named("SO_LINGER"))
}

/// Reads the snapshot; the socket must be in repair mode.
pub fn snapshot(socket: impl AsFd) -> Result<Snapshot, RepairError> {
    let fd = socket.as_fd();
    tcp_repair::select_queue(fd, Queue::Send).map_err(named("TCP_REPAIR_QUEUE"))?;
    let snd_nxt = tcp_repair::queue_seq(fd).map_err(named("TCP_QUEUE_SEQ(send)"))?;
    tcp_repair::select_queue(fd, Queue::Recv).map_err(named("TCP_REPAIR_QUEUE"))?;
    let rcv_nxt = tcp_repair::queue_seq(fd).map_err(named("TCP_QUEUE_SEQ(recv)"))?;
    let ts_clock = tcp_repair::timestamp(fd).map_err(named("TCP_TIMESTAMP"))?;
    let info = tcp_info(fd)?;
    let (inq, outq) = queues(fd)?;
    Ok(Snapshot {
        snd_nxt,
        rcv_nxt,
        ts_clock,
        state: info.state,
        options: info.options,
        snd_wscale: info.snd_wscale,
        rcv_wscale: info.rcv_wscale,
        snd_mss: info.snd_mss,
        rcv_mss: info.rcv_mss,
        adv_mss: info.adv_mss,
        inq,
        outq,
    })
}

fn tcp_info(fd: BorrowedFd<'_>) -> Result<tcp_repair::TcpInfo, RepairError> {
    tcp_repair::tcp_info(fd).map_err(named("TCP_INFO"))
}

/// Names the call that failed.
fn named(call: &'static str) -> impl FnOnce(io::Error) -> RepairError {
    move |source| RepairError { call, source }
}
