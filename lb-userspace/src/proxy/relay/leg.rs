//! The server side of a relayed connection.

use std::{sync::Arc, time::Duration};

use tokio::net::TcpStream;

use super::ClientIo;
use crate::{
    backend::ServerState,
    fastpath::{
        handoff::{Attempt, Handoff, Reserved},
        Runtime,
    },
    proxy::pool::{Pool, Pools},
};

/// The server side of a relayed connection.
pub(super) struct Leg {
    pub(super) server: Arc<ServerState>,
    pub(super) stream: TcpStream,
    /// It served an exchange before (or came from the pool): the server may have closed it
    /// meanwhile, so a failure before any answer is worth one retry on a new connection.
    pub(super) reused: bool,
    /// Set on a connection that can be handed to the kernel (a candidate's, see
    /// `fastpath::policy`); never pooled.
    pub(super) splice: Option<SpliceLeg>,
    /// The server's pool, for a pooled connection (none for one that can be spliced).
    pool: Option<Arc<Pool>>,
}

/// What became of a hand-off attempt, for the relay.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Tried {
    /// Both sockets are in repair mode: drop them, which sends nothing.
    Spliced,
    /// Still relayed: a leg was not quiet (a request already there, the server still
    /// talking); the next message boundary may do. What was to be written was not.
    Raced,
    /// Still relayed; a later attempt may succeed.
    Again,
    /// Still relayed, for good. What was to be written was not.
    Never,
    /// Still relayed, for good; what was to be written was (the attempt failed after that).
    Abandoned,
}

impl Tried {
    /// Whether the bytes given to the attempt were written.
    pub(super) fn wrote(self) -> bool {
        matches!(self, Self::Spliced | Self::Again | Self::Abandoned)
    }
}

/// What a leg that can be spliced carries: its reserved source port and, until an attempt
/// splices it or finds that it never can be, the observation of both legs.
pub(super) struct SpliceLeg {
    pub(super) runtime: Arc<Runtime>,
    /// Dropped with the leg: the socket closes with an RST, the port goes back.
    _reserved: Reserved,
    pub(super) handoff: Option<Handoff>,
}

impl Drop for SpliceLeg {
    fn drop(&mut self) {
        if let Some(handoff) = self.handoff.take() {
            self.runtime.forget(handoff);
        }
    }
}

impl Leg {
    /// An idle pooled connection to `server`, or a new one.
    pub(super) async fn open(
        server: Arc<ServerState>,
        pools: &Pools,
        timeout: Duration,
    ) -> std::io::Result<Leg> {
        let pool = pools.of(&server);
        match pool.take() {
            Some(stream) => Ok(Leg {
                server,
                stream,
                reused: true,
                splice: None,
                pool: Some(pool),
            }),
            None => Self::open_new(server, Some(pool), timeout).await,
        }
    }

    /// A new connection to `server`, never a pooled one; it goes back to `pool` when done.
    pub(super) async fn open_new(
        server: Arc<ServerState>,
        pool: Option<Arc<Pool>>,
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
            splice: None,
            pool,
        })
    }

    /// A connection to `server` that can be handed to the kernel with `client`'s (from a
    /// reserved port, both legs observed; see `Runtime::prepare`). `None` when there is none to
    /// be had (an interface the fast path may not use, no free port, a failed connect: counted
    /// by the fast path).
    pub(super) async fn spliceable(
        runtime: &Arc<Runtime>,
        server: Arc<ServerState>,
        client: &TcpStream,
        interfaces: &[String],
        timeout: Duration,
    ) -> Option<Leg> {
        let prepared = runtime
            .prepare(client, server.addr, interfaces, timeout)
            .await;
        match prepared {
            Ok(prepared) => Some(Leg {
                server,
                stream: prepared.stream,
                reused: false,
                splice: Some(SpliceLeg {
                    runtime: Arc::clone(runtime),
                    _reserved: prepared.reserved,
                    handoff: Some(prepared.handoff),
                }),
                pool: None,
            }),
            Err(error) => {
                tracing::debug!(error = %crate::error_chain(&error), server = %server.name, "not a fast path candidate; relayed as it is");
                None
            }
        }
    }

    /// Whether the leg can still be spliced.
    pub(super) fn can_splice(&self) -> bool {
        self.splice.as_ref().is_some_and(|s| s.handoff.is_some())
    }

    /// Tries to hand the connection to the kernel at a message boundary, nothing buffered;
    /// `pending` (an answer held back for this, or nothing) is written to the client if the
    /// hand-off was armed ([`Tried::wrote`]). `None` when the leg cannot be spliced.
    pub(super) async fn try_splice<C: ClientIo>(
        &mut self,
        client: &mut C,
        pending: &[u8],
        limit: Duration,
    ) -> Option<std::io::Result<Tried>> {
        let splice = self.splice.as_mut()?;
        let client = client.socket()?;
        let handoff = splice.handoff.take()?;
        let attempt = splice
            .runtime
            .try_splice(handoff, client, pending, limit)
            .await;
        Some(match attempt {
            Attempt::Spliced => Ok(Tried::Spliced),
            Attempt::Raced(handoff) => {
                splice.handoff = Some(handoff);
                Ok(Tried::Raced)
            }
            Attempt::Again(handoff) => {
                splice.handoff = Some(handoff);
                Ok(Tried::Again)
            }
            Attempt::Never => Ok(Tried::Never),
            Attempt::Abandoned => Ok(Tried::Abandoned),
            Attempt::Failed(error) => Err(error),
        })
    }

    /// Whether the program has seen both peers' timestamps (see `Runtime::wait_tsvals`).
    pub(super) async fn timestamps_seen(&self) -> bool {
        match &self.splice {
            Some(SpliceLeg {
                runtime,
                handoff: Some(handoff),
                ..
            }) => runtime.wait_tsvals(handoff).await,
            _ => false,
        }
    }

    /// Stops observing: the connection stays in userspace.
    pub(super) fn stop_observing(&mut self) {
        if let Some(splice) = self.splice.as_mut() {
            if let Some(handoff) = splice.handoff.take() {
                splice.runtime.forget(handoff);
            }
        }
    }

    /// A new connection to the same server, in place of this pooled one that failed.
    pub(super) async fn reopen(&self, timeout: Duration) -> std::io::Result<Leg> {
        Self::open_new(Arc::clone(&self.server), self.pool.clone(), timeout).await
    }

    /// Lets go of the leg after a complete exchange: a pooled connection goes back to its
    /// server's pool when `reusable`, any other is closed (a reserved one with an RST).
    pub(super) fn finish(self, reusable: bool) {
        if let Some(pool) = self.pool.filter(|_| reusable && self.splice.is_none()) {
            pool.put(self.stream);
        }
    }
}
