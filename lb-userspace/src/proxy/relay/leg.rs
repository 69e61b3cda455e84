//! The server side of a relayed connection, and what the client is told when it fails.

use std::{
    net::SocketAddr,
    sync::{atomic::Ordering::Relaxed, Arc},
    time::Duration,
};

use tokio::{io::AsyncWriteExt as _, net::TcpStream};

use super::{Frontend, RequestHead};
use crate::{
    backend::{Decision, ServerState},
    fastpath::runtime::{Handoff, Runtime},
};

/// The server side of a relayed connection.
pub(super) struct Leg {
    pub(super) server: Arc<ServerState>,
    pub(super) stream: TcpStream,
    /// It served an exchange before (or came from the pool): the server may have closed it
    /// meanwhile, so a failure before any answer is worth one retry on a new connection.
    pub(super) reused: bool,
}

impl Leg {
    /// An idle pooled connection to `server`, or a new one.
    pub(super) async fn open(server: Arc<ServerState>, timeout: Duration) -> std::io::Result<Leg> {
        match server.idle.take() {
            Some(stream) => Ok(Leg {
                server,
                stream,
                reused: true,
            }),
            None => Self::open_new(server, timeout).await,
        }
    }

    /// A dedicated connection to `server` from the fast path's port range, observed so that
    /// the client connection can be handed to the kernel. `None` when there is none to be had
    /// (an IPv6 server, a failed connect): hyper takes the request.
    pub(super) async fn spliced(
        fastpath: &Runtime,
        server: Arc<ServerState>,
        client: &TcpStream,
        interfaces: &[String],
        timeout: Duration,
    ) -> Option<(Leg, Option<Handoff>)> {
        let SocketAddr::V4(addr) = server.addr else {
            return None;
        };
        let stream = match fastpath.connect(addr, timeout).await {
            Ok(stream) => stream,
            Err(error) => {
                tracing::debug!(%error, server = %server.name, "fast path connect failed; hyper takes the request");
                return None;
            }
        };
        let handoff = match fastpath.observe(client, &stream, interfaces) {
            Ok(handoff) => handoff,
            Err(error) => {
                tracing::warn!(error = %crate::error_chain(&error), "fast path: cannot observe the connection");
                None
            }
        };
        let leg = Leg {
            server,
            stream,
            reused: false,
        };
        Some((leg, handoff))
    }

    /// Gives the connection back to its server's pool.
    pub(super) fn park(self) {
        self.server.idle.put(self.stream);
    }
}

/// An exchange that failed, and whether the client has heard anything of it yet.
pub(super) struct Failed<'a> {
    server: &'a ServerState,
    error: std::io::Error,
    answered: bool,
}

impl<'a> Failed<'a> {
    pub(super) fn before_answer(server: &'a ServerState, error: std::io::Error) -> Self {
        Self {
            server,
            error,
            answered: false,
        }
    }

    pub(super) fn midway(server: &'a ServerState, error: std::io::Error) -> Self {
        Self {
            server,
            error,
            answered: true,
        }
    }

    /// Counts and logs the failure and, when the client has heard nothing yet, answers 503 as
    /// the hyper path does (and HAProxy). The connection is closed afterwards either way.
    pub(super) async fn answer(
        self,
        client: &mut TcpStream,
        frontend: &Frontend,
        peer: SocketAddr,
        request: &RequestHead,
        decision: Decision,
    ) {
        self.server.stats.failures.fetch_add(1, Relaxed);
        self.server.stats.responses[0].fetch_add(1, Relaxed);
        let status = if self.answered { "-" } else { "503" };
        tracing::warn!(target: "access", frontend = %frontend.name, backend = %frontend.backend.name, server = %self.server.name, status, decision = decision.as_str(), client = %peer, method = %request.method(), path = request.path(), error = %self.error, "relayed exchange failed; closing");
        if !self.answered {
            let _ = client.write_all(SERVICE_UNAVAILABLE).await;
        }
    }
}

impl Leg {
    /// A new connection to `server`, never a pooled one.
    pub(super) async fn open_new(
        server: Arc<ServerState>,
        timeout: Duration,
    ) -> std::io::Result<Leg> {
        let stream = tokio::time::timeout(timeout, TcpStream::connect(server.addr))
            .await
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "connect timeout"))??;
        stream.set_nodelay(true)?;
        Ok(Leg {
            server,
            stream,
            reused: false,
        })
    }
}

const SERVICE_UNAVAILABLE: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: text/plain\r\ncache-control: no-cache\r\ncontent-length: 54\r\nconnection: close\r\n\r\n503 Service Unavailable: the server failed to answer.\n";
