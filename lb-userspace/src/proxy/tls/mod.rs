//! The TLS transport: a frontend with `tls` terminates TLS (1.2 and 1.3, rustls with `ring`)
//! and serves HTTP/2 (chosen by ALPN) with this crate's HTTP/2 server ([`h2`]), HTTP/1.1 with
//! the relay (never spliced: the kernel cannot splice TLS without kTLS) or, for what the relay
//! hands back and on a frontend with `hsts`, with hyper. Every request goes through the same
//! pipeline ([`Proxy::serve`] or the relay's).
//!
//! The handshake is bounded by `timeouts.client`; a client that fails it (plaintext on the TLS
//! port, garbage, a stall) is closed and logged at debug. See docs/PIPELINE.md, "TLS frontends".

use std::{
    future::Future,
    net::SocketAddr,
    pin::Pin,
    sync::{
        atomic::{
            AtomicUsize,
            Ordering::{Relaxed, SeqCst},
        },
        Arc, Mutex, PoisonError,
    },
    task::{Context, Poll},
    time::{Duration, Instant},
};

use arc_swap::ArcSwap;
use bytes::{Buf as _, Bytes};
use hyper::service::service_fn;
use hyper_util::{
    rt::{TokioExecutor, TokioIo, TokioTimer},
    server::conn::auto,
};
use rustls::{
    server::{ClientHello, ResolvesServerCert, ServerSessionMemoryCache},
    sign::CertifiedKey,
    ServerConfig,
};
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::TcpStream,
    sync::watch,
};
use tokio_rustls::TlsAcceptor;

use super::{
    drain::Drain,
    exchange::{TlsInfo, Via},
    h2,
    relay::{self, Release},
    Answer, BodyFailed, ConnSettings, Frontend, Proxy,
};
use crate::config;

/// Sessions a frontend remembers for resumption by id (TLS 1.2, and TLS 1.3 clients that do
/// not take tickets); tickets need no memory here.
const SESSION_CACHE: usize = 4096;
/// Streams an HTTP/2 client may have open at once on one connection; more are refused
/// (`REFUSED_STREAM`), so one connection holds at most this many requests.
const MAX_STREAMS: u32 = 128;
/// Streams a client may open and reset before they were served ("rapid reset", CVE-2023-44487)
/// before the connection is closed with `ENHANCE_YOUR_CALM`.
const MAX_PENDING_RESETS: usize = 20;
/// Streams this side may reset for a client's protocol errors before it closes the connection.
const MAX_ERROR_RESETS: usize = 256;
/// Response bytes one HTTP/2 stream may have waiting for the client (beyond one read from its
/// server, at most 16 KiB). A client decides its windows: with the largest, hyper's default
/// (400 KiB) let one connection that stops reading hold 50 MB (128 streams of a download).
const MAX_STREAM_SEND_BUF: usize = 16 * 1024;
const HYPER_MIN_BUF: usize = 8192;

/// A TLS frontend's acceptor: its certificates, versions, ALPN and resumption settings.
pub(super) fn acceptor(certificates: Arc<Certificates>) -> Result<TlsAcceptor, rustls::Error> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut server = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
        .with_no_client_auth()
        .with_cert_resolver(certificates);
    // `http/1.0` too: rustls refuses a client whose ALPN offers nothing it knows, and an
    // HTTP/1.0 client (`curl --http1.0`) offers only that.
    server.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec(), b"http/1.0".to_vec()];
    server.session_storage = ServerSessionMemoryCache::new(SESSION_CACHE);
    server.ticketer = rustls::crypto::ring::Ticketer::new()?;
    Ok(TlsAcceptor::from(Arc::new(server)))
}

/// The certificates of a frontend, chosen by the client's SNI. A reload replaces them as a
/// whole: a handshake uses the set in force when it began, and a connection keeps the
/// certificate it was served.
#[derive(Debug)]
pub struct Certificates {
    /// Not empty (validated): the first is the default.
    keys: ArcSwap<Vec<Arc<CertifiedKey>>>,
}

impl Certificates {
    pub fn new(tls: &config::Tls) -> Self {
        Self {
            keys: ArcSwap::from_pointee(loaded(tls)),
        }
    }

    /// How many certificates are served (SNI chooses among them; never none).
    pub fn count(&self) -> usize {
        self.keys.load().len()
    }

    /// Serves `tls`'s certificates to new connections from now on; whether any chain differs
    /// from the ones served until now (the files may be the same, renewed in place).
    pub fn replace(&self, tls: &config::Tls) -> bool {
        let new = loaded(tls);
        let old = self.keys.load();
        let same = old.len() == new.len() && old.iter().zip(&new).all(|(a, b)| a.cert == b.cert);
        self.keys.store(Arc::new(new));
        !same
    }

    /// The first certificate valid for `sni`, else the first (also without SNI).
    fn choose(&self, sni: Option<&str>) -> Option<Arc<CertifiedKey>> {
        let keys = self.keys.load();
        let matching = sni
            .and_then(|name| rustls_pki_types::ServerName::try_from(name).ok())
            .and_then(|name| keys.iter().find(|key| valid_for(key, &name)));
        matching.or_else(|| keys.first()).cloned()
    }
}

fn loaded(tls: &config::Tls) -> Vec<Arc<CertifiedKey>> {
    tls.certificates
        .iter()
        .map(|c| Arc::clone(&c.loaded))
        .collect()
}

/// Whether `key`'s end-entity certificate names `name` (wildcards as a client would check).
fn valid_for(key: &CertifiedKey, name: &rustls_pki_types::ServerName<'_>) -> bool {
    key.end_entity_cert()
        .ok()
        .and_then(|der| webpki::EndEntityCert::try_from(der).ok())
        .is_some_and(|cert| cert.verify_is_valid_for_subject_name(name).is_ok())
}

impl ResolvesServerCert for Certificates {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.choose(hello.server_name())
    }
}

impl TlsInfo {
    /// What the handshake of `connection` agreed on.
    fn of(connection: &rustls::ServerConnection) -> Self {
        let version = match connection.protocol_version() {
            Some(rustls::ProtocolVersion::TLSv1_3) => "1.3",
            Some(rustls::ProtocolVersion::TLSv1_2) => "1.2",
            _ => "-",
        };
        let alpn = match connection.alpn_protocol() {
            Some(b"h2") => "h2",
            Some(b"http/1.1") => "http/1.1",
            Some(b"http/1.0") => "http/1.0",
            _ => "-",
        };
        Self { version, alpn }
    }
}

/// hyper's HTTP/2 server with the frontend's limits (streams per connection, resets for rapid
/// reset and for a client's protocol errors, the size of a header block), on either builder:
/// hyper's own, or `auto`'s, which has the same methods on a type of its own.
macro_rules! http2_limits {
    ($builder:expr, $settings:expr) => {
        $builder
            .timer(TokioTimer::new())
            .max_concurrent_streams(MAX_STREAMS)
            .max_pending_accept_reset_streams(MAX_PENDING_RESETS)
            .max_local_error_reset_streams(MAX_ERROR_RESETS)
            .max_send_buf_size(MAX_STREAM_SEND_BUF)
            .max_header_list_size(u32::try_from($settings.max_header_bytes).unwrap_or(u32::MAX))
    };
}

/// Completes the handshake of `stream` (with `TCP_NODELAY` set by the caller) within the
/// client timeout, then serves its requests with hyper on a task of its own, watched by
/// `graceful`.
pub(super) async fn serve(
    stream: TcpStream,
    peer: SocketAddr,
    acceptor: &TlsAcceptor,
    (frontend, proxy): (&Arc<Frontend>, &Arc<Proxy>),
    settings: ConnSettings,
    (graceful, stop): (&Drain, watch::Receiver<bool>),
) {
    let handshake = tokio::time::timeout(settings.client_timeout, acceptor.accept(stream)).await;
    let stats = &frontend.stats;
    let stream = match handshake {
        Ok(Ok(stream)) => stream,
        Ok(Err(error)) => {
            stats.tls_failed.fetch_add(1, Relaxed);
            tracing::debug!(frontend = %frontend.name, %peer, %error, "TLS handshake failed; closing");
            return;
        }
        Err(_) => {
            stats.tls_timed_out.fetch_add(1, Relaxed);
            tracing::debug!(frontend = %frontend.name, %peer, "TLS handshake timed out; closing");
            return;
        }
    };
    let info = TlsInfo::of(stream.get_ref().1);
    stats.handshake_done(info.alpn);
    let via = Via::Tls(info);
    if info.alpn == "h2" {
        // HTTP/2 by ALPN: this crate's HTTP/2 server (see `h2`), on this task.
        let pipeline = h2::Pipeline::new(frontend, proxy, peer, via);
        let limits = h2::Limits {
            max_header_bytes: settings.max_header_bytes,
            client_timeout: settings.client_timeout,
        };
        let connection = h2::Connection::new(stream, pipeline, limits);
        let connection = graceful.watch(connection, |connection| connection.get_mut().close());
        if let Err(error) = connection.await {
            tracing::debug!(%peer, %error, "HTTP/2 client connection ended with an error");
        }
        return;
    }
    let idle = Arc::new(Idle::new());
    let service = service(Arc::clone(frontend), Arc::clone(proxy), peer, via, &idle);
    let watched = (graceful, idle, settings.client_timeout);
    // HTTP/1.1 is served by the relay, as on a cleartext connection but never spliced; what it
    // does not serve simply comes back for hyper with the bytes it read. A frontend that adds
    // HSTS (the relay passes response heads as they are) goes to hyper.
    let stream = if frontend.hsts.is_none() {
        let conn = (&**frontend, &**proxy);
        match relay::serve(stream, peer, conn, settings, None, (stop, Some(info))).await {
            Release::Done => return,
            Release::ToHyper(stream, read) => Prefixed::new(stream, read.freeze()),
        }
    } else {
        Prefixed::new(stream, Bytes::new())
    };
    // Without ALPN a client may still speak HTTP/2 (prior knowledge): `auto` tells by the
    // preface.
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .keep_alive(true)
        .header_read_timeout(settings.client_timeout)
        .max_buf_size(settings.max_header_bytes.max(HYPER_MIN_BUF));
    http2_limits!(builder.http2(), settings);
    let connection = builder
        .serve_connection_with_upgrades(TokioIo::new(stream), service)
        .into_owned();
    spawn_watched(connection, |c| c.graceful_shutdown(), watched, peer);
}

/// The answer to one request, on its way: boxed (see [`service`]).
type Answering = Pin<
    Box<dyn Future<Output = Result<hyper::Response<InProgress>, std::convert::Infallible>> + Send>,
>;

/// Each request of a connection through the pipeline ([`Proxy::serve`]), counted in `idle`
/// until hyper is done with its answer.
fn service(
    frontend: Arc<Frontend>,
    proxy: Arc<Proxy>,
    peer: SocketAddr,
    via: Via,
    idle: &Arc<Idle>,
) -> impl hyper::service::Service<
    hyper::Request<hyper::body::Incoming>,
    Response = hyper::Response<InProgress>,
    Error = std::convert::Infallible,
    Future = Answering,
> + Clone {
    // One handle per connection, cloned per request: the frontend's and the proxy's own
    // reference counts are shared by every worker thread, and each request touching them would
    // move their cache line between CPUs.
    let shared = Arc::new((frontend, proxy));
    let busy = Arc::clone(idle);
    service_fn(move |request| {
        let shared = Arc::clone(&shared);
        let active = busy.begin();
        // Boxed: hyper moves a stream's future a few times before it runs it (into the
        // stream's state, then into a task of its own), and the request pipeline's future is a
        // few KiB; a pointer moves for nothing.
        Box::pin(async move {
            let (frontend, proxy) = &*shared;
            let mut response = proxy.serve(frontend, peer, via, request).await;
            add_hsts(frontend, response.headers_mut());
            // In progress until hyper is done with the body (it drops it then).
            let response = response.map(|body| InProgress {
                body,
                _active: active,
            });
            Ok::<_, std::convert::Infallible>(response)
        }) as Answering
    })
}

/// `frontend`'s `hsts`, on an answer that has no `Strict-Transport-Security` of its own (the
/// server's policy, when it has one, is the one that counts).
pub(super) fn add_hsts(frontend: &Frontend, headers: &mut hyper::HeaderMap) {
    if let Some(hsts) = &frontend.hsts {
        headers
            .entry(hyper::header::STRICT_TRANSPORT_SECURITY)
            .or_insert_with(|| hsts.clone());
    }
}

/// Runs `connection` on a task of its own until it ends: shut down gracefully once idle for
/// the client timeout, or when the frontend drains.
fn spawn_watched<C, E>(
    connection: C,
    shutdown: fn(Pin<&mut C>),
    (graceful, idle, limit): (&Drain, Arc<Idle>, Duration),
    peer: SocketAddr,
) where
    C: Future<Output = Result<(), E>> + Send + 'static,
    E: std::fmt::Display + Send + 'static,
{
    let connection = CloseWhenIdle::new(Box::pin(connection), shutdown, idle, limit);
    let connection = graceful.watch(connection, |connection| connection.get_mut().close());
    tokio::spawn(async move {
        if let Err(error) = connection.await {
            tracing::debug!(%peer, %error, "TLS client connection ended with an error");
        }
    });
}

/// A stream that yields `read` (bytes taken from it already) before what it reads next.
struct Prefixed<S> {
    read: Bytes,
    inner: S,
}

impl<S> Prefixed<S> {
    fn new(inner: S, read: Bytes) -> Self {
        Self { read, inner }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Prefixed<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        if this.read.is_empty() {
            return Pin::new(&mut this.inner).poll_read(cx, buf);
        }
        let n = this.read.len().min(buf.remaining());
        buf.put_slice(&this.read[..n]);
        this.read.advance(n);
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Prefixed<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, data)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

/// The requests of one connection whose answer is not done, and since when it has had none.
struct Idle {
    active: AtomicUsize,
    since: Mutex<Instant>,
}

impl Idle {
    fn new() -> Self {
        Self {
            active: AtomicUsize::new(0),
            since: Mutex::new(Instant::now()),
        }
    }

    /// A request begins; it is in progress until the guard is dropped.
    fn begin(self: &Arc<Self>) -> Active {
        self.active.fetch_add(1, SeqCst);
        Active(Arc::clone(self))
    }

    /// How long the connection has had no request in progress; `None` while one is.
    fn idle_for(&self) -> Option<Duration> {
        if self.active.load(SeqCst) > 0 {
            return None;
        }
        Some(
            self.since
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .elapsed(),
        )
    }
}

/// A request in progress on a connection (see [`Idle`]).
struct Active(Arc<Idle>);

/// A response body that keeps its request in progress until hyper drops it.
struct InProgress {
    body: Answer,
    _active: Active,
}

impl hyper::body::Body for InProgress {
    type Data = Bytes;
    type Error = BodyFailed;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<hyper::body::Frame<Bytes>, BodyFailed>>> {
        Pin::new(&mut self.get_mut().body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.body.size_hint()
    }
}

impl Drop for Active {
    fn drop(&mut self) {
        // Only the last one's end starts the idle time: the others need not read the clock.
        // (A connection's requests all end on its worker's thread: none ends in between.)
        if self.0.active.load(SeqCst) == 1 {
            *self.0.since.lock().unwrap_or_else(PoisonError::into_inner) = Instant::now();
        }
        self.0.active.fetch_sub(1, SeqCst);
    }
}

/// A connection shut down gracefully once it had no request in progress for `limit`: hyper
/// closes an idle HTTP/1.1 connection itself (its header timeout), but keeps an idle HTTP/2
/// one open for ever.
struct CloseWhenIdle<C> {
    connection: Pin<Box<C>>,
    shutdown: fn(Pin<&mut C>),
    idle: Arc<Idle>,
    limit: Duration,
    check: Pin<Box<tokio::time::Sleep>>,
    closing: bool,
}

impl<C> CloseWhenIdle<C> {
    fn new(
        connection: Pin<Box<C>>,
        shutdown: fn(Pin<&mut C>),
        idle: Arc<Idle>,
        limit: Duration,
    ) -> Self {
        Self {
            connection,
            shutdown,
            idle,
            limit,
            check: Box::pin(tokio::time::sleep(limit)),
            closing: false,
        }
    }

    /// Asks the connection to finish what is in progress and close (once).
    fn close(&mut self) {
        if !std::mem::replace(&mut self.closing, true) {
            (self.shutdown)(self.connection.as_mut());
        }
    }
}

impl<C: Future> Future for CloseWhenIdle<C> {
    type Output = C::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<C::Output> {
        let this = self.get_mut();
        while !this.closing && this.check.as_mut().poll(cx).is_ready() {
            let next = match this.idle.idle_for() {
                Some(idle) if idle >= this.limit => {
                    this.close();
                    break;
                }
                Some(idle) => this.limit.saturating_sub(idle),
                None => this.limit,
            };
            this.check
                .as_mut()
                .reset(tokio::time::Instant::now() + next);
        }
        this.connection.as_mut().poll(cx)
    }
}

#[cfg(test)]
mod flood_tests;
#[cfg(test)]
mod tests {
    use super::*;

    /// A self-signed certificate for `names`, loaded as the configuration loads one.
    pub(super) fn certificate(names: &[&str]) -> config::TlsCertificate {
        let made = rcgen::generate_simple_self_signed(
            names.iter().map(|n| (*n).to_owned()).collect::<Vec<_>>(),
        )
        .unwrap();
        let key = rustls_pki_types::PrivateKeyDer::Pkcs8(made.key_pair.serialize_der().into());
        let provider = rustls::crypto::ring::default_provider();
        let loaded = CertifiedKey::from_der(vec![made.cert.der().clone()], key, &provider).unwrap();
        config::TlsCertificate {
            cert: format!("/{}.pem", names[0]).into(),
            key: "/key.pem".into(),
            loaded: Arc::new(loaded),
        }
    }

    /// SNI picks the first certificate that names the host (wildcards included); no SNI, an
    /// unknown name or an IP address gets the first, the default.
    #[test]
    fn sni_picks_the_certificate_and_falls_back_on_the_first() {
        let tls = config::Tls {
            certificates: vec![
                certificate(&["www.example.test"]),
                certificate(&["api.example.test", "*.api.example.test"]),
                certificate(&["api.example.test"]),
            ],
        };
        let certificates = Certificates::new(&tls);
        let chosen = |sni: Option<&str>| {
            let key = certificates.choose(sni).unwrap();
            certificates
                .keys
                .load()
                .iter()
                .position(|k| Arc::ptr_eq(k, &key))
                .unwrap()
        };
        assert_eq!(chosen(Some("www.example.test")), 0);
        assert_eq!(chosen(Some("api.example.test")), 1);
        assert_eq!(chosen(Some("v2.api.example.test")), 1);
        assert_eq!(chosen(Some("API.Example.Test")), 1);
        assert_eq!(chosen(Some("unknown.test")), 0);
        assert_eq!(chosen(Some("10.0.0.1")), 0);
        assert_eq!(chosen(None), 0);
    }

    /// A client of each TLS version negotiates ALPN, and its second connection resumes the
    /// first's session (TLS 1.3 by ticket, TLS 1.2 by the session cache or a ticket).
    #[tokio::test]
    async fn handshakes_negotiate_alpn_and_resume() {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

        let certificate = certificate(&["www.example.test"]);
        let acceptor = acceptor(Arc::new(Certificates::new(&config::Tls {
            certificates: vec![certificate.clone()],
        })))
        .unwrap();
        let mut roots = rustls::RootCertStore::empty();
        roots.add(certificate.loaded.cert[0].clone()).unwrap();
        for (version, name) in [
            (&rustls::version::TLS13, "1.3"),
            (&rustls::version::TLS12, "1.2"),
        ] {
            let provider = Arc::new(rustls::crypto::ring::default_provider());
            let mut client = rustls::ClientConfig::builder_with_provider(provider)
                .with_protocol_versions(&[version])
                .unwrap()
                .with_root_certificates(roots.clone())
                .with_no_client_auth();
            client.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
            let connector = tokio_rustls::TlsConnector::from(Arc::new(client));
            let mut kinds = Vec::new();
            for _ in 0..2 {
                let (client_io, server_io) = tokio::io::duplex(64 * 1024);
                let acceptor = acceptor.clone();
                let server = tokio::spawn(async move {
                    let mut stream = acceptor.accept(server_io).await.unwrap();
                    // Application data after the session tickets: the client reads both.
                    stream.write_all(b"x").await.unwrap();
                    stream.flush().await.unwrap();
                    let info = TlsInfo::of(stream.get_ref().1);
                    (info, stream.get_ref().1.handshake_kind())
                });
                let sni = rustls_pki_types::ServerName::try_from("www.example.test").unwrap();
                let mut stream = connector.connect(sni, client_io).await.unwrap();
                let mut byte = [0u8; 1];
                stream.read_exact(&mut byte).await.unwrap();
                let (info, kind) = server.await.unwrap();
                assert_eq!(
                    info,
                    TlsInfo {
                        version: name,
                        alpn: "h2"
                    }
                );
                kinds.push(kind);
            }
            assert_eq!(
                kinds,
                [
                    Some(rustls::HandshakeKind::Full),
                    Some(rustls::HandshakeKind::Resumed)
                ],
                "TLS {name}"
            );
        }
    }

    /// A test frontend: the address it serves, the frontend (for the counters), its drain,
    /// and the certificate a client trusts.
    pub(super) type TestFrontend = (
        SocketAddr,
        Arc<Frontend>,
        Arc<Drain>,
        rustls_pki_types::CertificateDer<'static>,
    );

    /// A TLS frontend (the test certificate for `www.example.test`) in front of `server`,
    /// serving every connection to the address it returns.
    pub(super) async fn tls_frontend(server: SocketAddr, client_timeout: Duration) -> TestFrontend {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        tls_frontend_on(listener, server, client_timeout).await
    }

    /// [`tls_frontend`] on a listener the caller made (with its socket options).
    async fn tls_frontend_on(
        listener: tokio::net::TcpListener,
        server: SocketAddr,
        client_timeout: Duration,
    ) -> TestFrontend {
        use crate::{backend::BackendState, config::Config, table};

        let certificate = certificate(&["www.example.test"]);
        let root = certificate.loaded.cert[0].clone();
        let acceptor = acceptor(Arc::new(Certificates::new(&config::Tls {
            certificates: vec![certificate],
        })))
        .unwrap();
        let config = Config::from_toml(&format!(
            "[instance]\nname = \"lb\"\n\n[[frontend]]\nname = \"www\"\nbind = \"127.0.0.1:1\"\nbackend = \"web\"\n\n\
             [[backend]]\nname = \"web\"\nhealth_check = {{ enabled = false }}\nservers = [ {{ name = \"s1\", addr = \"{server}\" }} ]\n",
        ))
        .unwrap();
        let backend = BackendState::in_memory(&config.backends[0], table::memory::store(64));
        let frontend = Arc::new(Frontend::new("www".into(), Arc::new(backend)));
        let proxy = Arc::new(Proxy::new(Duration::from_secs(5), Duration::from_secs(30)));
        let settings = ConnSettings {
            client_timeout,
            max_header_bytes: 16384,
            drain: Duration::from_secs(1),
        };
        let addr = listener.local_addr().unwrap();
        let graceful = Arc::new(Drain::new());
        let (watching, serving) = (Arc::clone(&graceful), Arc::clone(&frontend));
        tokio::spawn(async move {
            let (_keep, stop) = watch::channel(false);
            while let Ok((stream, peer)) = listener.accept().await {
                let (acceptor, frontend, proxy) =
                    (acceptor.clone(), Arc::clone(&serving), Arc::clone(&proxy));
                let (watching, stop) = (Arc::clone(&watching), stop.clone());
                tokio::spawn(async move {
                    let conn = (&frontend, &proxy);
                    serve(stream, peer, &acceptor, conn, settings, (&watching, stop)).await;
                });
            }
        });
        (addr, frontend, graceful, root)
    }

    /// A client of [`tls_frontend`] that trusts `root` and offers `alpn`.
    pub(super) async fn tls_client(
        addr: SocketAddr,
        root: rustls_pki_types::CertificateDer<'static>,
        alpn: &[u8],
    ) -> tokio_rustls::client::TlsStream<TcpStream> {
        let tcp = TcpStream::connect(addr).await.unwrap();
        tls_client_over(tcp, root, alpn).await
    }

    /// [`tls_client`] over a TCP connection the caller made.
    async fn tls_client_over(
        tcp: TcpStream,
        root: rustls_pki_types::CertificateDer<'static>,
        alpn: &[u8],
    ) -> tokio_rustls::client::TlsStream<TcpStream> {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(root).unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut client = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        client.alpn_protocols = vec![alpn.to_vec()];
        let sni = rustls_pki_types::ServerName::try_from("www.example.test").unwrap();
        tokio_rustls::TlsConnector::from(Arc::new(client))
            .connect(sni, tcp)
            .await
            .unwrap()
    }

    /// An HTTP/2 connection (ALPN `h2`) to a TLS frontend in front of `server`. The `Drain` is
    /// kept for the whole test: a dropped one asks its connections to stop.
    pub(super) async fn h2_connection(
        server: SocketAddr,
        client_timeout: Duration,
    ) -> (tokio_rustls::client::TlsStream<TcpStream>, Arc<Drain>) {
        let (addr, _, graceful, root) = tls_frontend(server, client_timeout).await;
        (tls_client(addr, root, b"h2").await, graceful)
    }

    /// A TLS frontend counts its connections' handshakes: done (by the protocol ALPN chose),
    /// failed (plaintext on the port), and timed out (a client that says nothing).
    #[tokio::test]
    async fn handshakes_are_counted_by_outcome_and_protocol() {
        use tokio::io::AsyncWriteExt as _;

        let nowhere = "127.0.0.1:9".parse().unwrap();
        let (addr, frontend, _graceful, root) =
            tls_frontend(nowhere, Duration::from_millis(300)).await;
        let _h2 = tls_client(addr, root.clone(), b"h2").await;
        let _h1 = tls_client(addr, root.clone(), b"http/1.1").await;
        let _h1_again = tls_client(addr, root, b"http/1.1").await;
        let mut plaintext = TcpStream::connect(addr).await.unwrap();
        plaintext
            .write_all(b"GET / HTTP/1.1\r\nHost: www.example.test\r\n\r\n")
            .await
            .unwrap();
        let _silent = TcpStream::connect(addr).await.unwrap();
        let stats = &frontend.stats;
        let deadline = Instant::now() + Duration::from_secs(5);
        while stats.tls_timed_out.load(Relaxed) + stats.tls_failed.load(Relaxed) < 2
            && Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(stats.tls_handshakes.load(Relaxed), 3);
        assert_eq!(stats.tls_failed.load(Relaxed), 1);
        assert_eq!(stats.tls_timed_out.load(Relaxed), 1);
        let alpn: Vec<u64> = stats.tls_alpn.iter().map(|c| c.load(Relaxed)).collect();
        assert_eq!(alpn, [1, 2, 0, 0], "{:?}", super::super::ALPN_LABELS);
    }

    /// An HTTP/2 connection with no request for `timeouts.client` is closed (GOAWAY, then
    /// the close), not kept for ever.
    #[tokio::test]
    async fn an_idle_http2_connection_is_closed_after_the_client_timeout() {
        let server = "127.0.0.1:1".parse().unwrap();
        let (tls, graceful) = h2_connection(server, Duration::from_millis(300)).await;
        let started = Instant::now();
        let (_sender, connection) = hyper::client::conn::http2::handshake::<
            _,
            _,
            http_body_util::Empty<bytes::Bytes>,
        >(TokioExecutor::new(), TokioIo::new(tls))
        .await
        .unwrap();
        let ended = tokio::time::timeout(Duration::from_secs(5), connection).await;
        assert!(ended.is_ok(), "the idle connection is still open");
        let waited = started.elapsed();
        assert!(
            waited >= Duration::from_millis(250),
            "closed after {waited:?}"
        );
        drop(graceful);
    }

    /// A server that answers every request on a connection with `size` bytes of `b'x'`, framed
    /// by Content-Length or, with `chunked`, in chunks of 64 KiB.
    async fn bulk_server(size: usize, chunked: bool) -> SocketAddr {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut conn, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let mut head = Vec::new();
                    let mut byte = [0u8; 1];
                    while conn.read_exact(&mut byte).await.is_ok() {
                        head.push(byte[0]);
                        if !head.ends_with(b"\r\n\r\n") {
                            continue;
                        }
                        head.clear();
                        let piece = vec![b'x'; 64 * 1024];
                        let answer = if chunked {
                            let mut answer =
                                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
                            for _ in 0..size / piece.len() {
                                answer.extend(format!("{:x}\r\n", piece.len()).as_bytes());
                                answer.extend(&piece);
                                answer.extend(b"\r\n");
                            }
                            answer.extend(b"0\r\n\r\n");
                            answer
                        } else {
                            let mut answer =
                                format!("HTTP/1.1 200 OK\r\nContent-Length: {size}\r\n\r\n")
                                    .into_bytes();
                            answer.resize(answer.len() + size, b'x');
                            answer
                        };
                        if conn.write_all(&answer).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        addr
    }

    /// Reads one response of `size` body bytes slowly (4 KiB a millisecond at most: the client,
    /// not the proxy, is the bottleneck, so the proxy's writes find the socket full); the body
    /// bytes read, or what happened.
    async fn read_slowly(
        tls: &mut tokio_rustls::client::TlsStream<TcpStream>,
        size: usize,
        chunked: bool,
    ) -> Result<usize, String> {
        use tokio::io::AsyncReadExt as _;

        let mut got = Vec::new();
        let mut piece = vec![0u8; 4 * 1024];
        loop {
            let end = got.windows(4).position(|w| w == b"\r\n\r\n");
            if let Some(end) = end {
                let body = &got[end + 4..];
                let done = if chunked {
                    body.ends_with(b"\r\n0\r\n\r\n")
                } else {
                    body.len() >= size
                };
                if done {
                    return Ok(body.iter().filter(|&&b| b == b'x').count());
                }
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
            let read = tokio::time::timeout(Duration::from_secs(5), tls.read(&mut piece)).await;
            match read {
                Ok(Ok(0)) => return Err(format!("closed after {} bytes", got.len())),
                Ok(Ok(n)) => got.extend_from_slice(&piece[..n]),
                Ok(Err(error)) => return Err(format!("{error} after {} bytes", got.len())),
                Err(_) => return Err(format!("nothing more for 5 s after {} bytes", got.len())),
            }
        }
    }

    /// A large answer over HTTP/1.1 on TLS (the relay's way) reaches a slow client whole, then
    /// the next one on the same connection: the end of each is flushed out of the TLS buffer,
    /// not left there until the client's next request (which never comes, as the client waits
    /// for that end).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_slow_tls_client_gets_the_end_of_every_large_answer() {
        use tokio::io::AsyncWriteExt as _;

        const SIZE: usize = 1024 * 1024;
        for chunked in [false, true] {
            let server = bulk_server(SIZE, chunked).await;
            let (mut tls, graceful) = tight_tls_connection(server).await;
            for request in 1..=3 {
                tls.write_all(b"GET /bulk HTTP/1.1\r\nHost: www.example.test\r\n\r\n")
                    .await
                    .unwrap();
                let read = read_slowly(&mut tls, SIZE, chunked).await;
                assert_eq!(read, Ok(SIZE), "chunked: {chunked}, request {request}");
            }
            drop(graceful);
        }
    }

    /// A TLS frontend over HTTP/1.1 (the relay) whose listener has small send buffers: its
    /// writes to a client stop and go a few KiB at a time, so a write seldom finds room for all
    /// that the TLS buffer holds. A client with a small receive buffer, connected.
    async fn tight_tls_connection(
        server: SocketAddr,
    ) -> (tokio_rustls::client::TlsStream<TcpStream>, Arc<Drain>) {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.set_send_buffer_size(8192).unwrap();
        socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let listener = socket.listen(64).unwrap();
        let (addr, _frontend, graceful, root) =
            tls_frontend_on(listener, server, Duration::from_secs(30)).await;
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.set_recv_buffer_size(4096).unwrap();
        let tcp = socket.connect(addr).await.unwrap();
        (tls_client_over(tcp, root, b"http/1.1").await, graceful)
    }

    /// What a server sent before it paused reaches a slow TLS client during the pause: the
    /// relay flushes the TLS buffer before it waits for the server. Here the server sends the
    /// rest only once the client has all of the first part.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_slow_tls_client_gets_what_the_server_sent_before_it_paused() {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

        const FIRST: usize = 512 * 1024;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let server = listener.local_addr().unwrap();
        let resume = Arc::new(tokio::sync::Notify::new());
        let resumed = Arc::clone(&resume);
        tokio::spawn(async move {
            let (mut conn, _) = listener.accept().await.unwrap();
            let mut head = [0u8; 1024];
            let _ = conn.read(&mut head).await;
            let mut first =
                format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n", FIRST + 4).into_bytes();
            first.resize(first.len() + FIRST, b'x');
            conn.write_all(&first).await.unwrap();
            resumed.notified().await;
            conn.write_all(b"done").await.unwrap();
        });
        let (mut tls, graceful) = tight_tls_connection(server).await;
        tls.write_all(b"GET /paused HTTP/1.1\r\nHost: www.example.test\r\n\r\n")
            .await
            .unwrap();
        let mut got = Vec::new();
        let mut piece = vec![0u8; 4 * 1024];
        while got.iter().filter(|&&b| b == b'x').count() < FIRST {
            tokio::time::sleep(Duration::from_millis(1)).await;
            let read = tokio::time::timeout(Duration::from_secs(5), tls.read(&mut piece)).await;
            match read {
                Ok(Ok(n)) if n > 0 => got.extend_from_slice(&piece[..n]),
                other => panic!("after {} bytes of the first part: {other:?}", got.len()),
            }
        }
        resume.notify_one();
        let mut rest = Vec::new();
        while !rest.ends_with(b"done") {
            let read = tokio::time::timeout(Duration::from_secs(5), tls.read(&mut piece)).await;
            match read {
                Ok(Ok(n)) if n > 0 => rest.extend_from_slice(&piece[..n]),
                other => panic!("after {} bytes of the rest: {other:?}", rest.len()),
            }
        }
        drop(graceful);
    }

    /// The acceptor builds from a configuration's certificates, offering both protocols.
    #[test]
    fn the_acceptor_offers_h2_and_http11() {
        let tls = config::Tls {
            certificates: vec![certificate(&["www.example.test"])],
        };
        let acceptor = acceptor(Arc::new(Certificates::new(&tls))).unwrap();
        assert_eq!(
            acceptor.config().alpn_protocols,
            [b"h2".to_vec(), b"http/1.1".to_vec(), b"http/1.0".to_vec()]
        );
    }
}
