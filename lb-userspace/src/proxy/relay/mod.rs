//! The relay: how every simple HTTP/1.1 request is served. A small relay over plain sockets,
//! the client's and a server connection, that parses each message head once and copies bodies
//! as they are (hyper is the fallback for everything else).
//!
//! - Each request is routed by its own cookie and sent over a pooled keep-alive connection to
//!   its server ([`super::pool`], HAProxy's `http-reuse always`); a server connection that fails
//!   before answering a request that can be repeated is retried once on a new connection.
//! - On a frontend with `fastpath = "splice"`, a connection the hand-off policy picks
//!   (`fastpath::policy`: it has carried enough requests, paused, moved a large body, or asks
//!   for a tunnel) gets a server connection of its own from a reserved port, observed by the
//!   kernel program, and is handed to the kernel at the next message boundary after its
//!   exchange; every later request of the connection then goes to that server. An attempt that
//!   fails leaves the connection relayed and the policy asks for more before the next one. A
//!   request whose cookie routes elsewhere before the hand-off gives that connection up.
//! - A request it cannot relay simply (HTTP/1.0, a chunked or `Expect` body) goes to the hyper
//!   proxy with the bytes already read, as do heads that are malformed, too large or too slow
//!   (hyper answers them 400, 431 and 408).
//! - An upgrade (`Upgrade` + `Connection: upgrade`, e.g. WebSocket) answered `101`, or a
//!   `CONNECT` answered `2xx`, makes the connection a tunnel to that server; when splicing, it
//!   is handed to the kernel right after the response head, or as soon as the tunnel is quiet,
//!   and relayed as bytes until then (or for good, when its legs cannot be translated).
//! - A server that fails before the client heard anything is answered `503`, as hyper does;
//!   a request with no server to go to, too.

//!
//! The relay is a state machine ([`State`], see docs/PIPELINE.md): each state is one small
//! method of [`Conn`] that returns the next, driven by the loop in [`serve`]. Routing, cookie
//! learning, counting, the access log and failure answers are the pipeline's
//! ([`super::exchange`], [`super::error`]), shared with hyper.

use std::{
    net::SocketAddr,
    sync::Arc,
    time::{Duration, Instant},
};

use bytes::BytesMut;
use tokio::{
    io::{AsyncRead, AsyncWrite, AsyncWriteExt as _},
    net::TcpStream,
    sync::watch,
};

use self::{forward::Answer, leg::Leg, splicing::Splicing};
use super::{exchange::TlsInfo, message::RequestHead, ConnSettings, Frontend, Proxy};
use crate::{
    backend::{Decision, InFlight},
    fastpath::{policy::Tracker, Runtime},
};

mod forward;
mod io;
mod leg;
pub(super) mod pooled;
mod splicing;
mod states;
#[cfg(test)]
mod tests;
mod tunnel;

/// A connection prepared for a hand-off during a pause connects to its server within this
/// (or the configured connect timeout, if shorter): its client may send a request meanwhile.
const PAUSE_CONNECT: Duration = Duration::from_secs(1);

/// The client's side of a relayed connection: its socket when served, an in-memory stream in
/// the relay's tests (never handed to the kernel).
pub(super) trait ClientIo: AsyncRead + AsyncWrite + Unpin {
    /// The TCP socket, for a hand-off to the kernel fast path.
    fn socket(&mut self) -> Option<&mut TcpStream>;
}

impl ClientIo for TcpStream {
    fn socket(&mut self) -> Option<&mut TcpStream> {
        Some(self)
    }
}

/// A TLS connection: relayed in userspace, never handed to the kernel.
impl ClientIo for tokio_rustls::server::TlsStream<TcpStream> {
    fn socket(&mut self) -> Option<&mut TcpStream> {
        None
    }
}

/// What the caller does with the client connection when the relay lets go of it.
pub(super) enum Release<C> {
    /// Serve it with hyper, these bytes first.
    ToHyper(C, BytesMut),
    /// Done (spliced, closed, or tunnelled to its end).
    Done,
}

/// Where a relayed connection is. Each state is handled by the [`Conn`] method of the same
/// name (in `states.rs`), which returns the next.
enum State {
    /// Reading the connection's first request head.
    ReadingFirstHead,
    /// A request head of this length is in the buffer: parse it, route it, and choose the
    /// server connection for it (the one `held` from the last exchange, if it fits).
    Routing { head: usize, held: Option<Leg> },
    /// Sending the request and reading the response head.
    Forwarding(Exchange),
    /// Passing the response on, with a hand-off to the kernel when one is due.
    Delivering(Exchange, Answer),
    /// Waiting for the next request head on a kept-alive connection, or for a pause (`pause`)
    /// long enough for a hand-off.
    ReadingHead { leg: Leg, pause: Option<Duration> },
    /// The client paused after an exchange of a sticky session: handing it to the kernel.
    HandingOff(Leg),
    /// An accepted upgrade or CONNECT: a tunnel to the server.
    Tunnelling(Leg),
    /// A response framed by the server's close: bytes both ways until then.
    Streaming(Leg),
    /// Closing the client connection (a FIN).
    Closing,
    /// Done with the connection (spliced, tunnelled, or dropped).
    Done,
    /// hyper serves the rest of the connection.
    ToHyper,
}

/// One request on its way, from routing to delivery.
struct Exchange {
    request: RequestHead,
    decision: Decision,
    /// Its leg can be spliced and an attempt follows it (see `Splicing::wants`).
    candidate: bool,
    leg: Leg,
    started: Instant,
    in_flight: InFlight,
}

/// A relayed connection, and what its states share.
struct Conn<'a, C> {
    client: C,
    /// What the client sent that is not handled yet.
    buf: BytesMut,
    peer: SocketAddr,
    frontend: &'a Frontend,
    proxy: &'a Proxy,
    settings: ConnSettings,
    /// Connect and server timeouts, read when the first head is in.
    timeouts: (Duration, Duration),
    splicing: Option<Splicing<'a>>,
    stop: watch::Receiver<bool>,
    /// The client's TLS, when the relay serves a TLS connection (never spliced).
    tls: Option<TlsInfo>,
}

/// Serves `client`; see the module documentation. `fastpath`: the frontend splices.
pub(super) async fn serve<C: ClientIo>(
    client: C,
    peer: SocketAddr,
    (frontend, proxy): (&Frontend, &Proxy),
    settings: ConnSettings,
    fastpath: Option<&Arc<Runtime>>,
    (stop, tls): (watch::Receiver<bool>, Option<TlsInfo>),
) -> Release<C> {
    let mut conn = Conn {
        client,
        buf: BytesMut::with_capacity(8192),
        peer,
        frontend,
        proxy,
        settings,
        timeouts: (Duration::ZERO, Duration::ZERO),
        splicing: fastpath.map(|runtime| Splicing {
            runtime,
            interfaces: &frontend.fastpath_interfaces,
            tracker: Tracker::new(runtime.policy()),
        }),
        stop,
        tls,
    };
    let mut state = State::ReadingFirstHead;
    loop {
        state = match state {
            State::ReadingFirstHead => conn.reading_first_head().await,
            State::Routing { head, held } => conn.routing(head, held).await,
            State::Forwarding(exchange) => conn.forwarding(exchange).await,
            State::Delivering(exchange, answer) => conn.delivering(exchange, answer).await,
            State::ReadingHead { leg, pause } => conn.reading_head(leg, pause).await,
            State::HandingOff(leg) => conn.handing_off(leg).await,
            State::Tunnelling(leg) => conn.tunnelling(leg).await,
            State::Streaming(leg) => conn.streaming(leg).await,
            State::Closing => {
                let _ = conn.client.shutdown().await;
                State::Done
            }
            State::Done => return Release::Done,
            State::ToHyper => return Release::ToHyper(conn.client, conn.buf),
        };
    }
}
