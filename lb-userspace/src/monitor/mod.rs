//! The monitor, served on `[monitor].bind`:
//!
//! - `/monitor`: the status page (HTML, like HAProxy's stats page; `/` redirects to it);
//! - `/metrics`: Prometheus text exposition format 0.0.4;
//! - `/api/table`: the stick tables as JSON (`?backend=NAME`, `?limit=N`);
//! - `/api/frontends`: every frontend's connections and a TLS frontend's handshakes as JSON;
//! - `/api/servers`: every server's state and counters as JSON;
//! - `/api/peers`: every peer's session state and counters as JSON;
//! - `/api/status`: the instance, its uptime and whether its table is durable, as JSON.
//!
//! No route shows a whole session cookie: `/api/table` masks them ([`mask`]). With
//! `[monitor] auth` set, every route asks for HTTP basic credentials ([`auth`]).
//!
//! [`route`] is the whole service and needs no socket; [`serve`] runs it on the listener. Both
//! read a [`Shared`], which the daemon fills with its backends, frontends, peer links, fast
//! path and shield: the monitor reads their counters and tables and changes nothing.

mod api;
mod auth;
mod mask;
mod metrics;
mod page;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_frontends;
#[cfg(test)]
mod tests_security;
#[cfg(test)]
mod tests_shield;
mod view;

use std::{convert::Infallible, net::SocketAddr, sync::Arc, time::Duration};

use bytes::Bytes;
use http_body_util::Full;
use hyper::{
    body::Incoming,
    header::{self, HeaderValue},
    server::conn::http1,
    service::service_fn,
    Method, Request, Response, StatusCode,
};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};

use self::view::Snapshot;
pub use self::{auth::BasicAuth, mask::CookieMask};
use crate::{
    backend::BackendState, fastpath, peers::link::PeerLink, proxy::Frontend, shield, table::now_ms,
};

/// Everything the monitor shows, handed to [`serve`] by the daemon; the monitor only reads it.
pub struct Shared {
    pub instance: String,
    pub backends: Vec<Arc<BackendState>>,
    pub frontends: Vec<Arc<Frontend>>,
    /// The other members of the peers section.
    pub peers: Vec<Arc<PeerLink>>,
    pub started_ms: u64,
    /// The kernel fast path, when a frontend splices.
    pub fastpath: Option<Arc<fastpath::Runtime>>,
    /// The XDP shield, when it is on.
    pub shield: Option<shield::Attached>,
    /// Masks every cookie the monitor shows, with a key made at start.
    pub cookie_mask: CookieMask,
    /// `[monitor] auth`: the credentials every request must carry.
    pub auth: Option<BasicAuth>,
    /// Whether the pinned stick table outlives this process: false when its bpffs is one only
    /// this process's mount namespace sees (`dataplane::pin_root_durability`).
    pub table_durable: bool,
}

/// Body of every monitor response.
pub type MonitorBody = Full<Bytes>;

/// Time a client gets to send a request head, and to keep an idle connection open.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// Pause after a failed accept (EMFILE and friends) instead of spinning.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

const HTML: &str = "text/html; charset=utf-8";
const PROMETHEUS: &str = "text/plain; version=0.0.4; charset=utf-8";
const JSON: &str = "application/json";
const TEXT: &str = "text/plain; charset=utf-8";

/// Serves the monitor endpoints on `listener` forever, each connection in its own task.
pub async fn serve(listener: TcpListener, shared: Arc<Shared>) {
    loop {
        match listener.accept().await {
            Ok((stream, peer)) => {
                tokio::spawn(serve_connection(stream, peer, Arc::clone(&shared)));
            }
            Err(error) => {
                tracing::warn!(%error, "monitor: accept failed");
                tokio::time::sleep(ACCEPT_BACKOFF).await;
            }
        }
    }
}

async fn serve_connection(stream: TcpStream, peer: SocketAddr, shared: Arc<Shared>) {
    let service = service_fn(move |request: Request<Incoming>| {
        let shared = Arc::clone(&shared);
        async move { Ok::<_, Infallible>(respond(shared, request).await) }
    });
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .keep_alive(true);
    if let Err(error) = builder
        .serve_connection(TokioIo::new(stream), service)
        .await
    {
        tracing::debug!(%peer, %error, "monitor connection ended with an error");
    }
}

/// Runs [`route`] on the blocking pool: `/api/table` copies whole stick tables under their locks,
/// which must not stall the async workers that proxy requests.
async fn respond(shared: Arc<Shared>, request: Request<Incoming>) -> Response<MonitorBody> {
    let (parts, _body) = request.into_parts();
    let head = Request::from_parts(parts, ());
    match tokio::task::spawn_blocking(move || route(&shared, &head)).await {
        Ok(response) => response,
        Err(error) => {
            tracing::error!(%error, "monitor request handler failed");
            text(StatusCode::INTERNAL_SERVER_ERROR, "internal error\n")
        }
    }
}

/// The monitor's endpoints.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Endpoint {
    Root,
    Page,
    Metrics,
    Table,
    Frontends,
    Servers,
    Peers,
    Status,
}

impl Endpoint {
    fn from_path(path: &str) -> Option<Self> {
        match path {
            "/" => Some(Self::Root),
            "/monitor" => Some(Self::Page),
            "/metrics" => Some(Self::Metrics),
            "/api/table" => Some(Self::Table),
            "/api/frontends" => Some(Self::Frontends),
            "/api/servers" => Some(Self::Servers),
            "/api/peers" => Some(Self::Peers),
            "/api/status" => Some(Self::Status),
            _ => None,
        }
    }
}

/// Answers one request from its head (the monitor takes no request bodies). Responses to
/// `HEAD` carry the `GET` body; hyper sends only the head.
pub fn route<B>(shared: &Shared, request: &Request<B>) -> Response<MonitorBody> {
    if let Some(auth) = &shared.auth {
        if !auth.allows(request.headers().get(header::AUTHORIZATION)) {
            return unauthorized();
        }
    }
    let uri = request.uri();
    let Some(endpoint) = Endpoint::from_path(uri.path()) else {
        return if uri.path().starts_with("/api/") {
            api::error(StatusCode::NOT_FOUND, "no such endpoint", None)
        } else {
            text(StatusCode::NOT_FOUND, "not found\n")
        };
    };
    if !matches!(*request.method(), Method::GET | Method::HEAD) {
        let mut response = text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n");
        response
            .headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
        return response;
    }
    let query = uri.query().unwrap_or("");
    match endpoint {
        Endpoint::Root => {
            let mut response = text(StatusCode::FOUND, "see /monitor\n");
            response
                .headers_mut()
                .insert(header::LOCATION, HeaderValue::from_static("/monitor"));
            response
        }
        Endpoint::Page => reply(
            StatusCode::OK,
            HTML,
            page::render(&Snapshot::read(shared, now_ms())),
        ),
        Endpoint::Metrics => reply(
            StatusCode::OK,
            PROMETHEUS,
            metrics::render(&Snapshot::read(shared, now_ms())),
        ),
        Endpoint::Table => api::table(shared, query),
        Endpoint::Frontends => api::frontends(shared),
        Endpoint::Servers => api::servers(shared),
        Endpoint::Peers => api::peers(shared, now_ms()),
        Endpoint::Status => api::status(shared, now_ms()),
    }
}

/// 401 with the challenge that makes a browser ask for the credentials.
fn unauthorized() -> Response<MonitorBody> {
    let mut response = text(StatusCode::UNAUTHORIZED, "authentication required\n");
    response.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_static(auth::CHALLENGE),
    );
    response
}

fn text(status: StatusCode, body: &'static str) -> Response<MonitorBody> {
    reply(status, TEXT, body)
}

fn reply(
    status: StatusCode,
    content_type: &'static str,
    body: impl Into<Bytes>,
) -> Response<MonitorBody> {
    let mut response = Response::new(Full::new(body.into()));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}
