//! The L7 proxy: for each request, find the server (sticky lookup first, then selection),
//! forward the request over a pooled keep-alive connection, learn `Set-Cookie`, log one line.
//! An upgrade the server accepts (`101`, e.g. WebSocket) becomes a tunnel of bytes between the
//! client's connection and a connection to that server.
//!
//! Two transports carry exchanges: [`relay`] serves every simple HTTP/1.1 request (and hands
//! connections to the kernel fast path), and [`Proxy::handle`], on hyper, serves the rest.
//! [`listener`] gives connections to the first, which passes what it does not serve to the
//! second; on a TLS frontend it gives them to [`tls`], which gives HTTP/1.1 to the relay and
//! HTTP/2 to [`h2`], a server of this crate's that takes each request through the second's
//! path ([`Proxy::serve`]). All go through the same pipeline: [`exchange`] routes,
//! learns cookies, counts and writes the one access record; [`error`] classifies failures by
//! side and is the one responder. See docs/PIPELINE.md.

pub mod drain;
mod error;
mod exchange;
mod h2;
mod headers;
pub mod listener;
mod message;
pub mod pool;
mod redirect;
mod relay;
mod tls;
mod upstream_tls;
pub mod workers;

use std::{
    net::SocketAddr,
    sync::{
        atomic::{AtomicU64, Ordering::Relaxed},
        Arc, OnceLock,
    },
    time::{Duration, Instant},
};

use arc_swap::ArcSwap;
use bytes::Bytes;
use http_body_util::{combinators::BoxBody, BodyExt as _};
use hyper::{body::Incoming, Request, Response, Uri};
use hyper_util::{
    client::legacy::{connect::HttpConnector, Client},
    rt::TokioExecutor,
};

use self::{
    error::ClientBodyFailed,
    exchange::{Access, Via},
};
pub use self::{
    error::{short_response, ProxyError, Side},
    tls::Certificates,
};
use crate::{
    backend::{BackendState, InFlight, ServerState},
    config::Timeouts,
    cookie,
    fastpath::Runtime,
};

/// Body of every response the proxy sends.
pub type ProxyBody = BoxBody<Bytes, BodyFailed>;

/// Why a response body broke off (the server's connection, or hyper's).
pub type BodyFailed = Box<dyn std::error::Error + Send + Sync>;

/// Body of a request forwarded by hyper's client: a failure to read it from the client says so
/// (see [`ProxyError::upstream`]).
type RequestBody = BoxBody<Bytes, ClientBodyFailed>;

type UpstreamClient = Client<HttpConnector, RequestBody>;

/// One frontend: where its requests go.
pub struct Frontend {
    pub name: String,
    pub backend: Arc<BackendState>,
    /// Set when the frontend has `fastpath = "splice"` and the daemon loaded the fast path.
    pub fastpath: OnceLock<Arc<Runtime>>,
    /// `fastpath_interfaces`: empty for any.
    pub fastpath_interfaces: Vec<String>,
    /// `tls`: the frontend terminates TLS with these certificates (and never splices); a
    /// reload replaces them.
    pub tls: Option<Arc<Certificates>>,
    /// `hsts`: the `Strict-Transport-Security` value a TLS frontend adds to its responses.
    pub hsts: Option<hyper::header::HeaderValue>,
    /// `redirect_http_to`: every request is answered with a redirect under this origin.
    pub redirect: Option<Arc<str>>,
    /// Its connections, counted once each (never per request).
    pub stats: FrontendStats,
}

/// ALPN values a TLS frontend counts, in [`FrontendStats::tls_alpn`] order (`none`: the client
/// offered nothing the frontend speaks, or no ALPN at all).
pub const ALPN_LABELS: [&str; 4] = ["h2", "http/1.1", "http/1.0", "none"];

/// What a frontend has seen: connections accepted and, on a TLS frontend, how their handshakes
/// ended and which protocol ALPN chose. Aligned to cache lines of its own: every worker reads
/// the frontend's other fields on every request, and a connection counted here must not evict
/// them from the other CPUs' caches.
#[derive(Debug, Default)]
#[repr(align(128))]
pub struct FrontendStats {
    pub connections: AtomicU64,
    pub tls_handshakes: AtomicU64,
    /// Handshakes that failed: plaintext on the TLS port, garbage, a protocol error.
    pub tls_failed: AtomicU64,
    /// Handshakes not done within `timeouts.client`.
    pub tls_timed_out: AtomicU64,
    /// Completed handshakes by the protocol chosen, [`ALPN_LABELS`] order.
    pub tls_alpn: [AtomicU64; 4],
}

impl FrontendStats {
    /// Counts a completed handshake that chose `alpn` (as `TlsInfo` names it).
    pub(crate) fn handshake_done(&self, alpn: &str) {
        self.tls_handshakes.fetch_add(1, Relaxed);
        let index = ALPN_LABELS[..3]
            .iter()
            .position(|label| *label == alpn)
            .unwrap_or(3);
        self.tls_alpn[index].fetch_add(1, Relaxed);
    }
}

impl Frontend {
    pub fn new(name: String, backend: Arc<BackendState>) -> Frontend {
        Frontend {
            name,
            backend,
            fastpath: OnceLock::new(),
            fastpath_interfaces: Vec::new(),
            tls: None,
            hsts: None,
            redirect: None,
            stats: FrontendStats::default(),
        }
    }
}

/// Per-connection HTTP settings from the configuration.
#[derive(Clone, Copy, Debug)]
pub struct ConnSettings {
    /// Time allowed for a request head, and for an idle keep-alive connection.
    pub client_timeout: Duration,
    /// Largest request head; hyper's buffer has a floor of 8 KiB.
    pub max_header_bytes: usize,
    /// How long a stopping listener waits for its relayed (fast path) connections.
    pub drain: Duration,
}

impl ConnSettings {
    pub fn from_timeouts(timeouts: &Timeouts) -> Self {
        Self {
            client_timeout: timeouts.client,
            max_header_bytes: timeouts.max_header_bytes,
            drain: timeouts.drain,
        }
    }
}

/// State shared by every connection of every frontend. Its timeouts can be changed while it
/// serves (see [`Proxy::set_timeouts`]).
pub struct Proxy {
    upstream: ArcSwap<Upstream>,
    /// The relay's idle connections to each server.
    pools: pool::Pools,
}

/// The clients to servers with the timeouts they apply; each request uses the one in force
/// when it is forwarded.
struct Upstream {
    /// One client (and pool) per worker thread, and one for the other threads: a pooled
    /// connection's task lives on the thread that opened it, so a request on another thread
    /// would wake that one (an eventfd write and a context switch) on every exchange.
    clients: Arc<[UpstreamClient]>,
    /// To the servers reached over TLS.
    tls: Arc<upstream_tls::TlsClients>,
    connect_timeout: Duration,
    server_timeout: Duration,
}

impl Upstream {
    fn new(connect_timeout: Duration, server_timeout: Duration) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(connect_timeout));
        connector.set_nodelay(true);
        connector.enforce_http(true);
        let threads = workers::expected() + 1;
        let clients = (0..threads)
            .map(|_| {
                Client::builder(TokioExecutor::new())
                    .pool_idle_timeout(Duration::from_secs(60))
                    .pool_max_idle_per_host(1024)
                    .build(connector.clone())
            })
            .collect();
        Self {
            clients,
            tls: Arc::new(upstream_tls::TlsClients::new(connect_timeout)),
            connect_timeout,
            server_timeout,
        }
    }

    /// Sends `request` to `server` over the client that reaches it.
    fn send(
        &self,
        server: &ServerState,
        request: Request<RequestBody>,
    ) -> hyper_util::client::legacy::ResponseFuture {
        match &server.tls {
            None => {
                let last = self.clients.len() - 1;
                let thread = workers::current().map_or(last, |worker| worker % last.max(1));
                self.clients[thread].request(request)
            }
            Some(tls) => self.tls.client(tls).request(request),
        }
    }
}

impl Proxy {
    pub fn new(connect_timeout: Duration, server_timeout: Duration) -> Self {
        Self {
            upstream: ArcSwap::from_pointee(Upstream::new(connect_timeout, server_timeout)),
            pools: pool::Pools::default(),
        }
    }

    /// The connect and server timeouts in force.
    pub fn timeouts(&self) -> (Duration, Duration) {
        let upstream = self.upstream.load();
        (upstream.connect_timeout, upstream.server_timeout)
    }

    /// Applies new timeouts to the requests forwarded from now on; those in flight keep theirs.
    /// A new server timeout keeps the pool of server connections. A new connect timeout needs a
    /// new pool, because the timeout belongs to the connector the pool was built with; the old
    /// pool's connections close once their requests are done (TLS servers' pools alike).
    pub fn set_timeouts(&self, connect_timeout: Duration, server_timeout: Duration) {
        let current = self.upstream.load();
        let next = if current.connect_timeout == connect_timeout {
            Upstream {
                clients: Arc::clone(&current.clients),
                tls: Arc::clone(&current.tls),
                connect_timeout,
                server_timeout,
            }
        } else {
            Upstream::new(connect_timeout, server_timeout)
        };
        self.upstream.store(Arc::new(next));
    }

    /// Serves one request that arrived on `frontend` from `client` (the hyper transport: see
    /// [`exchange`] for the phases it shares with the relay).
    pub async fn handle(
        &self,
        frontend: &Frontend,
        client: SocketAddr,
        request: Request<Incoming>,
    ) -> Response<ProxyBody> {
        let response = self.serve(frontend, client, Via::Hyper, request).await;
        response.map(|body| body.boxed())
    }

    /// Serves one request read from a connection of transport `via` (hyper over cleartext or
    /// over TLS, or the HTTP/2 server of TLS frontends).
    async fn serve<B>(
        &self,
        frontend: &Frontend,
        client: SocketAddr,
        via: Via,
        mut request: Request<B>,
    ) -> Response<Answer>
    where
        B: hyper::body::Body<Data = Bytes> + Send + Sync + 'static,
        B::Error: Into<BodyFailed>,
    {
        let started = Instant::now();
        let upgrade = headers::upgrade_protocol(request.headers());
        let client_side = upgrade.is_some().then(|| hyper::upgrade::on(&mut request));
        let backend = &frontend.backend;
        let method = request.method().clone();
        // A clone shares the request's bytes (a copy of the path would be an allocation).
        let uri = request.uri().clone();
        let mut access = Access {
            frontend,
            client,
            method: method.as_str(),
            path: uri.path(),
            routed: None,
            via,
            started,
        };
        // Borrowed from the request until it is forwarded.
        let cookie = cookie::request_cookie(request.headers(), &backend.stick_cookie);
        let (in_flight, decision) = match exchange::route(backend, client, cookie).await {
            Ok(routed) => routed,
            Err(error) => {
                access.failed(&error);
                return error.into_response().map(Answer::Own);
            }
        };
        access.routed = Some((in_flight.server(), decision));
        let forwarded = self
            .forward(backend, &in_flight, (client, via), request, upgrade)
            .await;
        match forwarded {
            Ok((response, server_side)) => {
                access.served(response.status().as_u16());
                match (client_side, server_side) {
                    (Some(client_side), Some(server_side)) => {
                        tokio::spawn(tunnel(client_side, server_side, in_flight));
                        response.map(|body| Answer::Own(body.boxed()))
                    }
                    _ => response.map(|body| Answer::Server { body, in_flight }),
                }
            }
            Err(error) => {
                access.failed(&error);
                error.into_response().map(Answer::Own)
            }
        }
    }

    async fn forward<B>(
        &self,
        backend: &BackendState,
        in_flight: &InFlight,
        (client, via): (SocketAddr, Via),
        request: Request<B>,
        upgrade: Option<hyper::header::HeaderValue>,
    ) -> Result<(Response<ServerBody>, Option<hyper::upgrade::OnUpgrade>), ProxyError>
    where
        B: hyper::body::Body<Data = Bytes> + Send + Sync + 'static,
        B::Error: Into<BodyFailed>,
    {
        let server = in_flight.server();
        // A request without a body to a cleartext server (most of what browsers send over
        // HTTP/2) goes the relay's way; bodies, upgrades and TLS servers go through hyper's
        // client, which streams request bodies and speaks TLS.
        let simple = server.tls.is_none()
            && upgrade.is_none()
            && request.body().is_end_stream()
            && request.method() != hyper::Method::CONNECT;
        if simple {
            let (parts, _) = request.into_parts();
            let pooled = relay::pooled::Request {
                head: headers::http11_head(&parts, server.addr, client.ip(), via.is_tls()),
                head_request: parts.method == hyper::Method::HEAD,
                repeatable: matches!(
                    parts.method,
                    hyper::Method::GET | hyper::Method::HEAD | hyper::Method::OPTIONS
                ),
            };
            let timeouts = {
                let upstream = self.upstream.load();
                (upstream.connect_timeout, upstream.server_timeout)
            };
            let answer = relay::pooled::exchange(
                &self.pools,
                server,
                &pooled,
                &backend.stick_cookie,
                timeouts,
            )
            .await?;
            if let Some(set) = cookie::response_cookie(&answer.headers, &backend.stick_cookie) {
                exchange::learn(backend, set, server);
            }
            let mut response = Response::new(ServerBody::Pooled(answer.body));
            *response.status_mut() = answer.status;
            *response.headers_mut() = answer.headers;
            return Ok((response, None));
        }
        let upstream = self.upstream.load_full();
        let mut request = upstream_request(request, server, client, upgrade.clone())?;
        if via.is_tls() {
            headers::set_forwarded_proto_https(request.headers_mut());
        }
        let response =
            tokio::time::timeout(upstream.server_timeout, upstream.send(server, request))
                .await
                .map_err(|_| ProxyError::UpstreamTimeout {
                    server: Arc::clone(&server.name),
                })?
                .map_err(|source| ProxyError::upstream(&server.name, source))?;
        let mut response = response;
        let accepted = match upgrade {
            Some(protocol) if response.status() == hyper::StatusCode::SWITCHING_PROTOCOLS => {
                let granted = headers::upgrade_protocol(response.headers()).unwrap_or(protocol);
                Some((hyper::upgrade::on(&mut response), granted))
            }
            _ => None,
        };
        let (mut parts, body) = response.into_parts();
        if let Some(set) = cookie::response_cookie(&parts.headers, &backend.stick_cookie) {
            exchange::learn(backend, set, server);
        }
        headers::remove_hop_by_hop(&mut parts.headers);
        let server_side = accepted.map(|(server_side, protocol)| {
            headers::keep_upgrade(&mut parts.headers, protocol);
            server_side
        });
        Ok((
            Response::from_parts(parts, ServerBody::Hyper(body)),
            server_side,
        ))
    }
}

/// A server's response body, as hyper's client or the relay's pooled connection reads it.
#[expect(
    clippy::large_enum_variant,
    reason = "one per response, moved once into hyper's stream"
)]
enum ServerBody {
    Hyper(Incoming),
    Pooled(relay::pooled::PooledBody),
}

impl hyper::body::Body for ServerBody {
    type Data = Bytes;
    type Error = BodyFailed;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, BodyFailed>>> {
        match self.get_mut() {
            Self::Hyper(body) => std::pin::Pin::new(body).poll_frame(cx).map_err(Into::into),
            Self::Pooled(body) => std::pin::Pin::new(body).poll_frame(cx).map_err(Into::into),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Self::Hyper(body) => body.is_end_stream(),
            Self::Pooled(body) => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        match self {
            Self::Hyper(body) => body.size_hint(),
            Self::Pooled(body) => body.size_hint(),
        }
    }
}

/// Relays an accepted upgrade's bytes both ways until both sides closed; the request stays in
/// flight meanwhile (for `leastconn`).
async fn tunnel(
    client_side: hyper::upgrade::OnUpgrade,
    server_side: hyper::upgrade::OnUpgrade,
    in_flight: InFlight,
) {
    let (client_io, server_io) = match tokio::try_join!(client_side, server_side) {
        Ok(both) => both,
        Err(error) => {
            tracing::debug!(%error, "upgrade: a side did not switch");
            return;
        }
    };
    let mut client_io = hyper_util::rt::TokioIo::new(client_io);
    let mut server_io = hyper_util::rt::TokioIo::new(server_io);
    match tokio::io::copy_bidirectional(&mut client_io, &mut server_io).await {
        Ok((up, down)) => {
            let stats = &in_flight.server().stats;
            stats.bytes_in.fetch_add(up, Relaxed);
            stats.bytes_out.fetch_add(down, Relaxed);
        }
        Err(error) => tracing::debug!(%error, "upgrade: tunnel ended with an error"),
    }
}

/// The request as it goes to `server` over HTTP/1.1: absolute URI to the server (`https` for
/// one reached over TLS), hop-by-hop headers dropped, the client appended to
/// `X-Forwarded-For`, the body counted. An HTTP/2 request's `:authority` becomes its `Host`
/// and its `Cookie` fields one field (RFC 9113 section 8.2.3), as HTTP/1.1 has them.
fn upstream_request<B>(
    request: Request<B>,
    server: &Arc<ServerState>,
    client: SocketAddr,
    upgrade: Option<hyper::header::HeaderValue>,
) -> Result<Request<RequestBody>, ProxyError>
where
    B: hyper::body::Body<Data = Bytes> + Send + Sync + 'static,
    B::Error: Into<BodyFailed>,
{
    let (mut parts, body) = request.into_parts();
    if parts.version == hyper::Version::HTTP_2 {
        headers::to_http11(&mut parts.headers, parts.uri.authority());
        parts.version = hyper::Version::HTTP_11;
    }
    let path_and_query = parts.uri.path_and_query().map_or("/", |pq| pq.as_str());
    let scheme = if server.tls.is_some() {
        "https"
    } else {
        "http"
    };
    parts.uri = Uri::builder()
        .scheme(scheme)
        .authority(server.addr.to_string())
        .path_and_query(path_and_query)
        .build()
        .map_err(ProxyError::BadRequest)?;
    headers::remove_hop_by_hop(&mut parts.headers);
    if let Some(protocol) = upgrade {
        headers::keep_upgrade(&mut parts.headers, protocol);
    }
    headers::append_forwarded_for(&mut parts.headers, client.ip());
    let counted = Arc::clone(server);
    let body = body
        .map_frame(move |frame| {
            if let Some(data) = frame.data_ref() {
                counted.stats.bytes_in.fetch_add(data.len() as u64, Relaxed);
            }
            frame
        })
        .map_err(|error| ClientBodyFailed(error.into()))
        .boxed();
    Ok(Request::from_parts(parts, body))
}

/// The body of a response the pipeline gives its transport: the server's, whose bytes are
/// counted against the server and which keeps the request in flight until it is done; or one
/// the proxy made (an error's, an accepted upgrade's). Not boxed: hyper, and the HTTP/2
/// server, take it as it is.
#[expect(
    clippy::large_enum_variant,
    reason = "one per response, moved into hyper's stream: boxing it is the allocation saved"
)]
enum Answer {
    Server {
        body: ServerBody,
        in_flight: InFlight,
    },
    Own(ProxyBody),
}

impl hyper::body::Body for Answer {
    type Data = Bytes;
    type Error = BodyFailed;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, BodyFailed>>> {
        match self.get_mut() {
            Self::Server { body, in_flight } => {
                let frame = std::pin::Pin::new(body).poll_frame(cx);
                if let std::task::Poll::Ready(Some(Ok(frame))) = &frame {
                    if let Some(data) = frame.data_ref() {
                        let stats = &in_flight.server().stats;
                        stats.bytes_out.fetch_add(data.len() as u64, Relaxed);
                    }
                }
                frame
            }
            Self::Own(body) => std::pin::Pin::new(body).poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Self::Server { body, .. } => body.is_end_stream(),
            Self::Own(body) => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        match self {
            Self::Server { body, .. } => body.size_hint(),
            Self::Own(body) => body.size_hint(),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::Ordering::Relaxed;

    use hyper::{server::conn::http1, service::service_fn};
    use hyper_util::rt::TokioIo;
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    use super::*;
    use crate::{config::Config, table};

    /// A bad chunk size in a request body hyper serves is the client's fault: 400, and the
    /// server it was forwarded to is not charged with it.
    #[tokio::test]
    async fn a_bad_chunked_body_is_answered_400_and_not_charged_to_the_server() {
        let server = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = server.local_addr().unwrap();
        // Reads what it is sent and never answers: the failure can only be the body's.
        tokio::spawn(async move {
            let (mut conn, _) = server.accept().await.unwrap();
            let mut sink = Vec::new();
            let _ = conn.read_to_end(&mut sink).await;
        });
        let config = Config::from_toml(&format!(
            "[instance]\nname = \"lb\"\n\n[[frontend]]\nname = \"www\"\nbind = \"127.0.0.1:1\"\nbackend = \"web\"\n\n\
             [[backend]]\nname = \"web\"\nhealth_check = {{ enabled = false }}\nservers = [ {{ name = \"s1\", addr = \"{addr}\" }} ]\n"
        ))
        .unwrap();
        let backend = BackendState::in_memory(&config.backends[0], table::memory::store(64));
        let frontend = Arc::new(Frontend::new("www".into(), Arc::new(backend)));
        let proxy = Arc::new(Proxy::new(Duration::from_secs(1), Duration::from_secs(5)));
        let (ours, mut client) = tokio::io::duplex(64 * 1024);
        let (served, handler) = (Arc::clone(&frontend), Arc::clone(&proxy));
        let service = service_fn(move |request| {
            let (frontend, proxy) = (Arc::clone(&served), Arc::clone(&handler));
            let peer = "10.0.0.9:40000".parse().unwrap();
            async move {
                Ok::<_, std::convert::Infallible>(proxy.handle(&frontend, peer, request).await)
            }
        });
        tokio::spawn(http1::Builder::new().serve_connection(TokioIo::new(ours), service));
        client
            .write_all(b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n")
            .await
            .unwrap();
        let mut answer = Vec::new();
        let read =
            tokio::time::timeout(Duration::from_secs(3), client.read_to_end(&mut answer)).await;
        let answer = String::from_utf8_lossy(&answer);
        assert!(read.is_ok(), "no answer in time: {answer}");
        assert!(answer.starts_with("HTTP/1.1 400 "), "{answer}");
        let s1 = frontend.backend.server("s1").unwrap();
        assert_eq!(s1.stats.failures.load(Relaxed), 0);
        assert_eq!(s1.stats.responses[0].load(Relaxed), 0);
    }
}
