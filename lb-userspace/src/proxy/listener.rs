//! Serving a frontend: accept connections, give each to the relay (see [`relay`]), and to
//! hyper ([`Proxy::handle`]) what the relay does not serve itself; stop gracefully. A TLS
//! frontend's connections go to [`tls`] instead, and a redirecting one's to [`redirect`].
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
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::{TcpListener, TcpSocket, TcpStream},
    sync::watch,
    task::JoinSet,
};

pub use super::ConnSettings;
use super::{
    drain::Drain,
    exchange::{Access, Via},
    redirect,
    relay::{self, Release},
    tls,
    workers::Workers,
    Frontend, Proxy, ProxyError,
};
use crate::sys::socket::Acceptor;

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
    let listener = match Acceptor::register(listener) {
        Ok(listener) => listener,
        Err(error) => {
            tracing::error!(frontend = %frontend.name, %error, "cannot serve the listening socket");
            return;
        }
    };
    let tls = match frontend.tls.clone().map(tls::acceptor).transpose() {
        Ok(tls) => tls,
        Err(error) => {
            tracing::error!(frontend = %frontend.name, %error, "cannot set up TLS");
            return;
        }
    };
    // Connections served by the relay: hyper's graceful shutdown does not see them, so a
    // stopping listener waits for them itself (each closes at its next message boundary).
    let mut relayed = JoinSet::new();
    loop {
        while relayed.try_join_next().is_some() {}
        let accepted = tokio::select! {
            accepted = listener.accept() => Some(accepted),
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
                frontend.stats.connections.fetch_add(1, Relaxed);
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
                let tls = tls.clone();
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
                        if let Some(base) = &frontend.redirect {
                            let names = (frontend.name.as_str(), base);
                            redirect::serve(stream, peer, names, settings, &graceful);
                            return;
                        }
                        if let Some(tls) = &tls {
                            let conn = (&frontend, &proxy);
                            let guards = (&*graceful, stop);
                            tls::serve(stream, peer, tls, conn, settings, guards).await;
                            return;
                        }
                        let released = relay::serve(
                            stream,
                            peer,
                            (&frontend, &proxy),
                            settings,
                            fastpath.as_ref(),
                            (stop, None),
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
