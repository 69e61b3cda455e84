//! The phases every exchange goes through whichever transport carries it (the relay or hyper):
//! route (sticky lookup, then balance), learn the response's stickiness cookie, and end with
//! one [`Access`] record that counts the outcome against the server and writes the access-log
//! line, or answers a failure. Transports only move bytes. See docs/PIPELINE.md.

use std::{fmt, net::SocketAddr, sync::atomic::Ordering::Relaxed, time::Instant};

use super::{error::ProxyError, Frontend};
use crate::{
    backend::{BackendState, Decision, InFlight, Route, ServerState},
    error_chain,
    table::now_ms,
};

/// The server for a request from `client` carrying `cookie` (the stickiness cookie's value, if
/// any), with the request's place there. When every server that could take it is at its
/// `maxconn`, the request waits in the backend's queue, at most `queue_timeout`.
pub(super) async fn route(
    backend: &BackendState,
    client: SocketAddr,
    cookie: Option<&[u8]>,
) -> Result<(InFlight, Decision), ProxyError> {
    let mut queued: Option<(Instant, QueuedGuard<'_>)> = None;
    loop {
        // Once queued, listen before asking again, so that a place freed in between is not
        // missed. (Not before: listening takes the backend's lock, which every request would
        // then contend for.)
        let freed = backend.freed().notified();
        tokio::pin!(freed);
        if queued.is_some() {
            freed.as_mut().enable();
        }
        match backend.route_from(Some(client.ip()), cookie, now_ms()) {
            Route::Admitted(admitted, decision) => return Ok((admitted, decision)),
            Route::NoServer => {
                return Err(ProxyError::NoServer {
                    backend: backend.name.clone(),
                })
            }
            Route::Queued => {}
        }
        let Some((since, _)) = &queued else {
            queued = Some((Instant::now(), QueuedGuard::new(backend)));
            continue;
        };
        let deadline = *since + backend.queue_timeout();
        if tokio::time::timeout_at(deadline.into(), freed)
            .await
            .is_err()
        {
            backend.stats.queue_timeouts.fetch_add(1, Relaxed);
            return Err(ProxyError::QueueTimeout {
                backend: backend.name.clone(),
                waited_ms: u64::try_from(since.elapsed().as_millis()).unwrap_or(u64::MAX),
            });
        }
    }
}

/// Counts a request in the backend's queue while it waits.
struct QueuedGuard<'a>(&'a BackendState);

impl<'a> QueuedGuard<'a> {
    fn new(backend: &'a BackendState) -> Self {
        backend.stats.queued_total.fetch_add(1, Relaxed);
        backend.stats.queued.fetch_add(1, Relaxed);
        Self(backend)
    }
}

impl Drop for QueuedGuard<'_> {
    fn drop(&mut self) {
        self.0.stats.queued.fetch_sub(1, Relaxed);
    }
}

/// Records the session a response set (`Set-Cookie` of the stickiness cookie) for `server`:
/// done before the client hears of it, so the session is in the table (and the pinned map)
/// by the time the client's next request can arrive.
pub(super) fn learn(backend: &BackendState, cookie: &[u8], server: &ServerState) {
    backend.learn(cookie, server, now_ms());
}

/// Which transport carried an exchange, as the access log names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Via {
    /// The relay, over a pooled server connection.
    Pooled,
    /// The relay, over a server connection that can be handed to the kernel fast path.
    Fastpath,
    /// hyper (HTTP/1.0, chunked or `Expect` request bodies, malformed heads).
    Hyper,
    /// hyper over TLS (HTTP/1.1 or HTTP/2): a TLS frontend.
    Tls(TlsInfo),
}

impl Via {
    fn as_str(self) -> &'static str {
        match self {
            Self::Pooled => "pooled",
            Self::Fastpath => "fastpath",
            Self::Hyper => "hyper",
            Self::Tls(_) => "tls",
        }
    }

    /// The TLS version and ALPN protocol, on a TLS frontend (absent from other lines).
    fn tls(self) -> (Option<&'static str>, Option<&'static str>) {
        match self {
            Self::Tls(info) => (Some(info.version), Some(info.alpn)),
            _ => (None, None),
        }
    }

    /// Whether the client's connection is TLS: the server is told `X-Forwarded-Proto: https`.
    pub(super) fn is_tls(self) -> bool {
        matches!(self, Self::Tls(_))
    }

    /// The access line's message for a failure: the relay closes the connection after one.
    fn failed(self) -> &'static str {
        match self {
            Self::Pooled | Self::Fastpath => "relayed exchange failed; closing",
            Self::Hyper | Self::Tls(_) => "exchange failed",
        }
    }
}

/// The TLS version and ALPN protocol of a TLS frontend's connection, as its access lines name
/// them (`1.3`, `h2`; `-` for none).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct TlsInfo {
    pub(super) version: &'static str,
    pub(super) alpn: &'static str,
}

/// One exchange, as the access log records it: the one place its line is written and its
/// outcome counted against its server.
pub(super) struct Access<'a> {
    pub(super) frontend: &'a Frontend,
    pub(super) client: SocketAddr,
    pub(super) method: &'a str,
    pub(super) path: &'a str,
    /// The server and how it was chosen; `None` when there was none.
    pub(super) routed: Option<(&'a ServerState, Decision)>,
    pub(super) via: Via,
    pub(super) started: Instant,
}

impl Access<'_> {
    /// The server answered with `status`: counted and logged.
    pub(super) fn served(&self, status: u16) {
        if let Some((server, _)) = self.routed {
            count_status(server, status);
        }
        let (server, decision) = self.names();
        let (tls, alpn) = self.via.tls();
        tracing::info!(
            target: "access",
            frontend = %self.frontend.name,
            backend = %self.frontend.backend.name,
            server = %server,
            status,
            ms = self.ms(),
            decision,
            client = %self.client,
            method = %self.method,
            path = self.path,
            relay = self.via.as_str(),
            tls,
            alpn,
        );
    }

    /// The exchange failed with `error`: charged to its server when the server is at fault,
    /// logged (quietly when the client is at fault). Returns the status the client gets, none
    /// when it had already heard part of the answer.
    pub(super) fn failed(&self, error: &ProxyError) -> Option<u16> {
        if let Some((server, _)) = self.routed.filter(|_| error.charges_server()) {
            server.stats.failures.fetch_add(1, Relaxed);
            server.stats.responses[0].fetch_add(1, Relaxed);
        }
        let status = error.answers_client().then(|| error.status().as_u16());
        let (server, decision) = self.names();
        let cause = error_chain(error);
        let (tls, alpn) = self.via.tls();
        macro_rules! line {
            ($level:ident) => {
                tracing::$level!(
                    target: "access",
                    frontend = %self.frontend.name,
                    backend = %self.frontend.backend.name,
                    server = %server,
                    status = %Dash(status),
                    ms = self.ms(),
                    decision,
                    client = %self.client,
                    method = %self.method,
                    path = self.path,
                    relay = self.via.as_str(),
                    tls,
                    alpn,
                    error = %cause,
                    "{}",
                    self.via.failed(),
                )
            };
        }
        if error.is_client_fault() {
            line!(info);
        } else {
            line!(warn);
        }
        status
    }

    fn names(&self) -> (&str, &'static str) {
        self.routed.map_or(("-", "-"), |(server, decision)| {
            (&*server.name, decision.as_str())
        })
    }

    fn ms(&self) -> u64 {
        u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX)
    }
}

/// Counts a response against its server by status class.
fn count_status(server: &ServerState, status: u16) {
    let class = usize::from(status / 100);
    let index = if (1..=5).contains(&class) { class } else { 0 };
    server.stats.responses[index].fetch_add(1, Relaxed);
}

/// A value, or `-` without one.
struct Dash<T>(Option<T>);

impl<T: fmt::Display> fmt::Display for Dash<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.0 {
            Some(value) => value.fmt(f),
            None => f.write_str("-"),
        }
    }
}
