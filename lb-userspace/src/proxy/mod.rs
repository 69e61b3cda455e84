//! The L7 proxy: for each request, find the server (sticky lookup first, then selection),
//! forward the request over a pooled keep-alive connection, learn `Set-Cookie`, log one line.
//! An upgrade the server accepts (`101`, e.g. WebSocket) becomes a tunnel of bytes between the
//! client's connection and a connection to that server.
//!
//! Two implementations share the routing, counters and log lines: [`relay`] serves every
//! simple HTTP/1.1 request (and hands connections to the kernel fast path), and
//! [`Proxy::handle`], on hyper, serves the rest. [`listener`] gives connections to the first,
//! which passes what it does not serve to the second.

pub mod drain;
mod error;
mod headers;
pub mod listener;
mod message;
pub mod pool;
mod relay;
pub mod workers;

use std::{
    net::SocketAddr,
    sync::{atomic::Ordering::Relaxed, Arc, OnceLock},
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

pub use self::error::{short_response, ProxyError};
use crate::{
    backend::{BackendState, Decision, InFlight, ServerState},
    config::Timeouts,
    cookie, error_chain,
    fastpath::Runtime,
    table::now_ms,
};

/// Body of every response the proxy sends.
pub type ProxyBody = BoxBody<Bytes, hyper::Error>;

type UpstreamClient = Client<HttpConnector, ProxyBody>;

/// One frontend: where its requests go.
pub struct Frontend {
    pub name: String,
    pub backend: Arc<BackendState>,
    /// Set when the frontend has `fastpath = "splice"` and the daemon loaded the fast path.
    pub fastpath: OnceLock<Arc<Runtime>>,
    /// `fastpath_interfaces`: empty for any.
    pub fastpath_interfaces: Vec<String>,
}

impl Frontend {
    pub fn new(name: String, backend: Arc<BackendState>) -> Frontend {
        Frontend {
            name,
            backend,
            fastpath: OnceLock::new(),
            fastpath_interfaces: Vec::new(),
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

/// The client to servers with the timeouts it applies; each request uses the one in force when
/// it is forwarded.
struct Upstream {
    client: UpstreamClient,
    connect_timeout: Duration,
    server_timeout: Duration,
}

impl Upstream {
    fn new(connect_timeout: Duration, server_timeout: Duration) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(connect_timeout));
        connector.set_nodelay(true);
        connector.enforce_http(true);
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(60))
            .pool_max_idle_per_host(1024)
            .build(connector);
        Self {
            client,
            connect_timeout,
            server_timeout,
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
    /// pool's connections close once their requests are done.
    pub fn set_timeouts(&self, connect_timeout: Duration, server_timeout: Duration) {
        let current = self.upstream.load();
        let next = if current.connect_timeout == connect_timeout {
            Upstream {
                client: current.client.clone(),
                connect_timeout,
                server_timeout,
            }
        } else {
            Upstream::new(connect_timeout, server_timeout)
        };
        self.upstream.store(Arc::new(next));
    }

    /// Serves one request that arrived on `frontend` from `client`.
    pub async fn handle(
        &self,
        frontend: &Frontend,
        client: SocketAddr,
        mut request: Request<Incoming>,
    ) -> Response<ProxyBody> {
        let started = Instant::now();
        let upgrade = headers::upgrade_protocol(request.headers());
        let client_side = upgrade.is_some().then(|| hyper::upgrade::on(&mut request));
        let backend = &frontend.backend;
        let method = request.method().clone();
        let path = request.uri().path().to_owned();
        let cookie =
            cookie::request_cookie(request.headers(), &backend.stick_cookie).map(<[u8]>::to_vec);
        let routed = backend.route(cookie.as_deref(), now_ms());
        let (server, decision) = match routed {
            Some(routed) => routed,
            None => {
                let error = ProxyError::NoServer {
                    backend: backend.name.clone(),
                };
                log_failure(frontend, client, &method, &path, None, &error, started);
                return error.into_response();
            }
        };
        let in_flight = server.start_request();
        let forwarded = self
            .forward(backend, &in_flight, client, request, upgrade)
            .await;
        match forwarded {
            Ok((response, server_side)) => {
                tracing::info!(
                    target: "access",
                    frontend = %frontend.name,
                    backend = %backend.name,
                    server = %server.name,
                    status = response.status().as_u16(),
                    ms = started.elapsed().as_millis() as u64,
                    decision = decision.as_str(),
                    %client,
                    %method,
                    path,
                );
                count_status(&server, response.status().as_u16());
                match (client_side, server_side) {
                    (Some(client_side), Some(server_side)) => {
                        tokio::spawn(tunnel(client_side, server_side, in_flight));
                        response.map(|body| body.boxed())
                    }
                    _ => with_accounting(response, in_flight),
                }
            }
            Err(error) => {
                server.stats.failures.fetch_add(1, Relaxed);
                server.stats.responses[0].fetch_add(1, Relaxed);
                log_failure(
                    frontend,
                    client,
                    &method,
                    &path,
                    Some((&server, decision)),
                    &error,
                    started,
                );
                error.into_response()
            }
        }
    }

    async fn forward(
        &self,
        backend: &BackendState,
        in_flight: &InFlight,
        client: SocketAddr,
        request: Request<Incoming>,
        upgrade: Option<hyper::header::HeaderValue>,
    ) -> Result<(Response<Incoming>, Option<hyper::upgrade::OnUpgrade>), ProxyError> {
        let server = in_flight.server();
        let upstream = self.upstream.load_full();
        let request = upstream_request(request, server, client, upgrade.clone())?;
        let response =
            tokio::time::timeout(upstream.server_timeout, upstream.client.request(request))
                .await
                .map_err(|_| ProxyError::UpstreamTimeout {
                    server: server.name.to_string(),
                })?
                .map_err(|source| ProxyError::Upstream {
                    server: server.name.to_string(),
                    source,
                })?;
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
            backend.learn(set, server, now_ms());
        }
        headers::remove_hop_by_hop(&mut parts.headers);
        let server_side = accepted.map(|(server_side, protocol)| {
            headers::keep_upgrade(&mut parts.headers, protocol);
            server_side
        });
        Ok((Response::from_parts(parts, body), server_side))
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

/// The request as it goes to `server`: absolute URI to the server, hop-by-hop headers dropped,
/// the client appended to `X-Forwarded-For`, the body counted.
fn upstream_request(
    request: Request<Incoming>,
    server: &Arc<ServerState>,
    client: SocketAddr,
    upgrade: Option<hyper::header::HeaderValue>,
) -> Result<Request<ProxyBody>, ProxyError> {
    let (mut parts, body) = request.into_parts();
    let path_and_query = parts.uri.path_and_query().map_or("/", |pq| pq.as_str());
    parts.uri = Uri::builder()
        .scheme("http")
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
        .boxed();
    Ok(Request::from_parts(parts, body))
}

/// Counts the response body's bytes against the server, and keeps the request in flight until
/// the body is done.
fn with_accounting(response: Response<Incoming>, in_flight: InFlight) -> Response<ProxyBody> {
    response.map(|body| {
        body.map_frame(move |frame| {
            if let Some(data) = frame.data_ref() {
                in_flight
                    .server()
                    .stats
                    .bytes_out
                    .fetch_add(data.len() as u64, Relaxed);
            }
            frame
        })
        .boxed()
    })
}

fn count_status(server: &ServerState, status: u16) {
    let class = usize::from(status / 100);
    let index = if (1..=5).contains(&class) { class } else { 0 };
    server.stats.responses[index].fetch_add(1, Relaxed);
}

fn log_failure(
    frontend: &Frontend,
    client: SocketAddr,
    method: &hyper::Method,
    path: &str,
    routed: Option<(&ServerState, Decision)>,
    error: &ProxyError,
    started: Instant,
) {
    let server = routed.map_or("-", |(s, _)| &*s.name);
    let decision = routed.map_or("-", |(_, d)| d.as_str());
    let status = error.status().as_u16();
    let ms = started.elapsed().as_millis() as u64;
    let cause = error_chain(error);
    if error.is_client_fault() {
        tracing::info!(target: "access", frontend = %frontend.name, backend = %frontend.backend.name, server, status, ms, decision, %client, %method, path, error = %cause);
    } else {
        tracing::warn!(target: "access", frontend = %frontend.name, backend = %frontend.backend.name, server, status, ms, decision, %client, %method, path, error = %cause);
    }
}
