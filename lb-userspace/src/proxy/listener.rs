//! Serving a frontend: accept connections, give each to the relay (see [`relay`]), and to
//! hyper ([`Proxy::handle`]) what the relay does not serve itself; stop gracefully.
//!
//! hyper answers malformed requests with 400 and oversized heads with 431 itself. A client too
//! slow to send its request head makes hyper give up silently, so the listener keeps a duplicate
//! of the socket to say `408 Request Timeout` (the pipeline's answer and access record, see
//! docs/PIPELINE.md) before closing.

use std::{
    convert::Infallible,
    io,
    net::SocketAddr,
    os::fd::AsFd as _,
    pin::Pin,
    sync::{
        atomic::{AtomicU64, Ordering::Relaxed},
        Arc,
    },
    task::{Context, Poll},
    time::{Duration, Instant},
};

use arc_swap::ArcSwap;
use bytes::Bytes;
use hyper::{server::conn::http1, service::service_fn};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::{
    io::{unix::AsyncFd, AsyncRead, AsyncWrite, Interest, ReadBuf},
    net::{TcpListener, TcpSocket, TcpStream},
    sync::watch,
    task::JoinSet,
};

pub use super::ConnSettings;
use super::{
    drain::Drain,
    exchange::{Access, Via},
    relay::{self, Release},
    workers::Workers,
    Frontend, Proxy, ProxyError,
};

const LISTEN_BACKLOG: u32 = 4096;
const HYPER_MIN_BUF: usize = 8192;

/// Binds a frontend's listening socket.
pub fn bind(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

/// Accepts connections on `listener` until `stop` turns true, and serves each on the next of
/// `workers`; connections are registered with `graceful` so the caller can drain them. Each
/// connection takes the `settings` in force when it is accepted and keeps them: a reload
/// changes them for the connections that follow.
///
/// A connection is accepted without joining this thread's event loop: it joins its worker's,
/// so its readiness never has to cross threads.
pub async fn serve(
    listener: std::net::TcpListener,
    frontend: Arc<Frontend>,
    proxy: Arc<Proxy>,
    (settings, workers): (Arc<ArcSwap<ConnSettings>>, Arc<Workers>),
    graceful: Arc<Drain>,
    mut stop: watch::Receiver<bool>,
) {
    // SAFETY: the AsyncFd owns the listener, whose descriptor stays open and the same until
    // the AsyncFd is dropped.
    let registered = unsafe { AsyncFd::register_with_interest(listener, Interest::READABLE) };
    let listener = match registered {
        Ok(listener) => listener,
        Err(error) => {
            tracing::error!(frontend = %frontend.name, %error, "cannot serve the listening socket");
            return;
        }
    };
    // Connections served by the relay: hyper's graceful shutdown does not see them, so a
    // stopping listener waits for them itself (each closes at its next message boundary).
    let mut relayed = JoinSet::new();
    loop {
        while relayed.try_join_next().is_some() {}
        let accepted = tokio::select! {
            accepted = accept(&listener) => Some(accepted),
            _ = stop.wait_for(|stop| *stop) => None,
        };
        let Some(accepted) = accepted else {
            let limit = settings.load().drain;
            let all = async { while relayed.join_next().await.is_some() {} };
            if tokio::time::timeout(limit, all).await.is_err() {
                tracing::warn!(frontend = %frontend.name, left = relayed.len(), "drain timeout: closing relayed connections still busy");
            }
            return;
        };
        match accepted {
            Ok((stream, peer)) => {
                let settings = **settings.load();
                let (frontend, proxy, graceful) = (
                    Arc::clone(&frontend),
                    Arc::clone(&proxy),
                    Arc::clone(&graceful),
                );
                // A loopback client's leg has no neighbour to redirect to: it is not spliced.
                let fastpath = match (frontend.fastpath.get(), peer) {
                    (Some(fastpath), SocketAddr::V4(v4)) if !v4.ip().is_loopback() => {
                        Some(Arc::clone(fastpath))
                    }
                    _ => None,
                };
                let stop = stop.clone();
                relayed.spawn_on(
                    async move {
                        let stream = match TcpStream::from_std(stream) {
                            Ok(stream) => stream,
                            Err(error) => {
                                tracing::warn!(%peer, %error, "cannot serve an accepted connection");
                                return;
                            }
                        };
                        let _ = stream.set_nodelay(true);
                        let released = relay::serve(
                            stream,
                            peer,
                            (&frontend, &proxy),
                            settings,
                            fastpath.as_ref(),
                            stop,
                        )
                        .await;
                        if let Release::ToHyper(stream, read) = released {
                            serve_connection(
                                stream,
                                read.freeze(),
                                peer,
                                &frontend,
                                &proxy,
                                settings,
                                &graceful,
                            );
                        }
                    },
                    workers.next(),
                );
            }
            Err(error) => {
                // EMFILE and friends: back off briefly instead of spinning.
                tracing::warn!(frontend = %frontend.name, %error, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// Serves `stream` (with `TCP_NODELAY` set by the caller) with hyper, `read` first.
/// The next connection, non-blocking and in no event loop yet.
async fn accept(
    listener: &AsyncFd<std::net::TcpListener>,
) -> io::Result<(std::net::TcpStream, SocketAddr)> {
    loop {
        let mut ready = listener.readable().await?;
        if let Ok(accepted) = ready.try_io(|listener| accept_nonblocking(listener.get_ref())) {
            return accepted;
        }
    }
}

/// `accept4` with `SOCK_NONBLOCK`: std's accept would need another syscall to make the
/// socket non-blocking.
fn accept_nonblocking(
    listener: &std::net::TcpListener,
) -> io::Result<(std::net::TcpStream, SocketAddr)> {
    use std::os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd};
    // SAFETY: sockaddr_storage is plain old data; all zeroes is a valid value.
    let mut storage: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    // SAFETY: storage and len describe a writable buffer of the size accept4 is told.
    let fd = unsafe {
        libc::accept4(
            listener.as_raw_fd(),
            (&raw mut storage).cast(),
            &mut len,
            libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: accept4 returned a new descriptor that nothing else owns.
    let stream = std::net::TcpStream::from(unsafe { OwnedFd::from_raw_fd(fd) });
    let peer =
        socket_addr(&storage).ok_or_else(|| io::Error::other("unexpected peer address family"))?;
    Ok((stream, peer))
}

/// The address in a `sockaddr_storage` the kernel filled for a TCP socket.
fn socket_addr(storage: &libc::sockaddr_storage) -> Option<SocketAddr> {
    match i32::from(storage.ss_family) {
        libc::AF_INET => {
            // SAFETY: the family says the storage holds a sockaddr_in, which it can hold.
            let v4: &libc::sockaddr_in = unsafe { &*std::ptr::from_ref(storage).cast() };
            let ip = std::net::Ipv4Addr::from(u32::from_be(v4.sin_addr.s_addr));
            Some(SocketAddr::from((ip, u16::from_be(v4.sin_port))))
        }
        libc::AF_INET6 => {
            // SAFETY: the family says the storage holds a sockaddr_in6, which it can hold.
            let v6: &libc::sockaddr_in6 = unsafe { &*std::ptr::from_ref(storage).cast() };
            let ip = std::net::Ipv6Addr::from(v6.sin6_addr.s6_addr);
            Some(SocketAddr::V6(std::net::SocketAddrV6::new(
                ip,
                u16::from_be(v6.sin6_port),
                v6.sin6_flowinfo,
                v6.sin6_scope_id,
            )))
        }
        _ => None,
    }
}

fn serve_connection(
    stream: TcpStream,
    read: Bytes,
    peer: SocketAddr,
    frontend: &Arc<Frontend>,
    proxy: &Arc<Proxy>,
    settings: ConnSettings,
    graceful: &Drain,
) {
    let spare = stream
        .as_fd()
        .try_clone_to_owned()
        .ok()
        .map(std::net::TcpStream::from);
    let progress = Arc::new(Progress::default());
    let io = TokioIo::new(CountingStream {
        inner: stream,
        read,
        progress: Arc::clone(&progress),
    });
    let started = Instant::now();
    let logged = Arc::clone(frontend);
    let (frontend, proxy, seen) = (
        Arc::clone(frontend),
        Arc::clone(proxy),
        Arc::clone(&progress),
    );
    let service = service_fn(move |request| {
        seen.request_started();
        let (frontend, proxy) = (Arc::clone(&frontend), Arc::clone(&proxy));
        async move { Ok::<_, Infallible>(proxy.handle(&frontend, peer, request).await) }
    });
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .keep_alive(true)
        .header_read_timeout(settings.client_timeout)
        .max_buf_size(settings.max_header_bytes.max(HYPER_MIN_BUF));
    let connection = graceful.watch(
        builder.serve_connection(io, service).with_upgrades(),
        |connection| connection.graceful_shutdown(),
    );
    tokio::spawn(async move {
        if let Err(error) = connection.await {
            if error.is_timeout() && progress.request_pending() {
                let timeout = ProxyError::ClientTimeout;
                if let Some(mut spare) = spare {
                    use std::io::Write as _;
                    // Best effort: the socket buffer is empty at this point, so this never blocks.
                    let _ = spare.write_all(timeout.answer().raw);
                }
                let access = Access {
                    frontend: &logged,
                    client: peer,
                    method: "-",
                    path: "-",
                    routed: None,
                    via: Via::Hyper,
                    started,
                };
                access.failed(&timeout);
            } else {
                tracing::debug!(%peer, %error, "client connection ended with an error");
            }
        }
    });
}

/// What a connection has read, to tell a slow request from an idle keep-alive connection.
#[derive(Default)]
struct Progress {
    bytes_read: AtomicU64,
    requests: AtomicU64,
    read_at_last_request: AtomicU64,
}

impl Progress {
    fn request_started(&self) {
        self.requests.fetch_add(1, Relaxed);
        self.read_at_last_request
            .store(self.bytes_read.load(Relaxed), Relaxed);
    }

    /// A request was begun but not completed: either nothing was ever served, or bytes arrived
    /// after the last request was dispatched.
    fn request_pending(&self) -> bool {
        self.requests.load(Relaxed) == 0
            || self.bytes_read.load(Relaxed) > self.read_at_last_request.load(Relaxed)
    }
}

struct CountingStream {
    inner: TcpStream,
    /// Bytes read before hyper took the connection (the splicing relay's), served first.
    read: Bytes,
    progress: Arc<Progress>,
}

impl AsyncRead for CountingStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if !self.read.is_empty() {
            let n = self.read.len().min(buf.remaining());
            let head = self.read.split_to(n);
            buf.put_slice(&head);
            self.progress.bytes_read.fetch_add(n as u64, Relaxed);
            return Poll::Ready(Ok(()));
        }
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        let read = buf.filled().len().saturating_sub(before);
        self.progress.bytes_read.fetch_add(read as u64, Relaxed);
        polled
    }
}

impl AsyncWrite for CountingStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
