//! Socket calls std and tokio do not make the way the daemon needs: accepting without joining
//! an event loop (`accept4` with `SOCK_NONBLOCK`), connecting to a unix socket without waiting
//! on a full backlog, and the socket options the fast path sets.

use std::{
    io,
    net::{SocketAddr, TcpListener, TcpStream},
    os::{fd::BorrowedFd, unix::net::UnixStream},
    path::Path,
    time::Duration,
};

use rustix::net::{sockopt, SocketFlags};
use tokio::io::{unix::AsyncFd, Interest};

/// A listening socket watched for readability by the tokio reactor of the thread that
/// registered it, whose connections come out non-blocking and in no event loop yet: each then
/// joins the event loop of the worker that serves it, so its readiness never has to cross
/// threads.
pub struct Acceptor {
    listener: AsyncFd<TcpListener>,
}

impl Acceptor {
    /// Registers `listener` with the current tokio runtime's reactor.
    pub fn register(listener: TcpListener) -> io::Result<Acceptor> {
        // SAFETY: the AsyncFd owns the listener, whose descriptor stays open and the same until
        // the AsyncFd is dropped: this type never hands the listener out, so nothing can swap
        // it for another.
        let registered = unsafe { AsyncFd::register_with_interest(listener, Interest::READABLE) };
        Ok(Acceptor {
            listener: registered?,
        })
    }

    /// The next connection, non-blocking and in no event loop yet.
    pub async fn accept(&self) -> io::Result<(TcpStream, SocketAddr)> {
        loop {
            let mut ready = self.listener.readable().await?;
            if let Ok(accepted) = ready.try_io(|listener| accept_nonblocking(listener.get_ref())) {
                return accepted;
            }
        }
    }
}

/// `accept4` with `SOCK_NONBLOCK`: std's accept would need another syscall to make the
/// socket non-blocking.
fn accept_nonblocking(listener: &TcpListener) -> io::Result<(TcpStream, SocketAddr)> {
    let (fd, peer) =
        rustix::net::acceptfrom_with(listener, SocketFlags::NONBLOCK | SocketFlags::CLOEXEC)?;
    let stream = TcpStream::from(fd);
    let peer = peer
        .and_then(|peer| SocketAddr::try_from(peer).ok())
        .ok_or_else(|| io::Error::other("unexpected peer address family"))?;
    Ok((stream, peer))
}

/// A connection to the unix stream socket at `path`, which never waits for the listener: a
/// listener whose backlog is full (a process that stopped accepting) fails it at once with
/// `WouldBlock`, where std's connect would wait for room for ever. The stream it returns is
/// blocking.
pub fn connect_unix_at_once(path: &Path) -> io::Result<UnixStream> {
    let socket = rustix::net::socket_with(
        rustix::net::AddressFamily::UNIX,
        rustix::net::SocketType::STREAM,
        SocketFlags::NONBLOCK | SocketFlags::CLOEXEC,
        None,
    )?;
    rustix::net::connect(&socket, &rustix::net::SocketAddrUnix::new(path)?)?;
    let stream = UnixStream::from(socket);
    stream.set_nonblocking(false)?;
    Ok(stream)
}

/// `SO_LINGER` 0: the socket's close sends an RST and leaves no TIME_WAIT.
pub fn set_reset_on_close(socket: BorrowedFd<'_>) -> io::Result<()> {
    Ok(sockopt::set_socket_linger(socket, Some(Duration::ZERO))?)
}

/// `SO_REUSEADDR` on.
pub fn set_reuseaddr(socket: BorrowedFd<'_>) -> io::Result<()> {
    Ok(sockopt::set_socket_reuseaddr(socket, true)?)
}

/// The cookie of this thread's network namespace (`SO_NETNS_COOKIE`, Linux 5.14), the value
/// `bpf_get_netns_cookie` gives a BPF program for a socket of that namespace.
pub fn netns_cookie() -> io::Result<u64> {
    let socket = rustix::net::socket(
        rustix::net::AddressFamily::INET,
        rustix::net::SocketType::DGRAM,
        None,
    )?;
    let mut cookie: u64 = 0;
    let mut len = libc::socklen_t::try_from(size_of::<u64>()).map_err(io::Error::other)?;
    // SAFETY: `cookie` is a u64 the kernel writes at most `len` (8) bytes into; `socket` is an
    // open descriptor for the duration of the call.
    let rc = unsafe {
        libc::getsockopt(
            std::os::fd::AsRawFd::as_raw_fd(&socket),
            libc::SOL_SOCKET,
            libc::SO_NETNS_COOKIE,
            std::ptr::from_mut(&mut cookie).cast(),
            &raw mut len,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(cookie)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A listener that never accepts and has room for one connection: the first connects, the
    /// second is refused at once (std's connect would block); a path nobody listens on is
    /// refused, a missing one not found.
    #[test]
    fn a_unix_connect_does_not_wait_on_a_full_backlog() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("full.sock");
        let listener = rustix::net::socket(
            rustix::net::AddressFamily::UNIX,
            rustix::net::SocketType::STREAM,
            None,
        )
        .unwrap();
        rustix::net::bind(&listener, &rustix::net::SocketAddrUnix::new(&path).unwrap()).unwrap();
        rustix::net::listen(&listener, 0).unwrap();
        let queued = connect_unix_at_once(&path).unwrap();
        let started = std::time::Instant::now();
        let full = connect_unix_at_once(&path).unwrap_err();
        assert_eq!(full.kind(), io::ErrorKind::WouldBlock, "{full}");
        assert!(started.elapsed() < Duration::from_secs(1));
        drop((queued, listener));
        let stale = connect_unix_at_once(&path).unwrap_err();
        assert_eq!(stale.kind(), io::ErrorKind::ConnectionRefused, "{stale}");
        std::fs::remove_file(&path).unwrap();
        let missing = connect_unix_at_once(&path).unwrap_err();
        assert_eq!(missing.kind(), io::ErrorKind::NotFound, "{missing}");
    }

    #[test]
    fn accepted_sockets_are_non_blocking_and_know_their_peer() {
        for bind in ["127.0.0.1:0", "[::1]:0"] {
            let listener = std::net::TcpListener::bind(bind).unwrap();
            let client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
            let (accepted, peer) = accept_nonblocking(&listener).unwrap();
            assert_eq!(peer, client.local_addr().unwrap());
            let mut byte = [0u8; 1];
            let read = std::io::Read::read(&mut &accepted, &mut byte);
            assert_eq!(read.unwrap_err().kind(), io::ErrorKind::WouldBlock);
        }
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let none = accept_nonblocking(&listener).unwrap_err();
        assert_eq!(none.kind(), io::ErrorKind::WouldBlock);
    }
}
