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
    sync::{atomic::Ordering::Relaxed, Arc},
    time::{Duration, Instant},
};

use bytes::{Buf as _, BytesMut};
use tokio::{
    io::{AsyncRead, AsyncWrite, AsyncWriteExt as _},
    net::TcpStream,
    sync::watch,
};

use self::{
    forward::{deliver, forward, retry_on_a_new_connection, Answer, Delivered},
    io::read_head,
    leg::Leg,
    splicing::{choose_leg, Splicing},
    tunnel::{tunnel, tunnel_leg},
};
use super::{
    error::ProxyError,
    exchange::{self, Access, Via},
    message::{Framing, RequestHead},
    ConnSettings, Frontend, Proxy,
};
use crate::{
    backend::{Decision, InFlight},
    fastpath::{policy::Tracker, Runtime},
};

mod forward;
mod io;
mod leg;
mod splicing;
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

/// What the caller does with the client connection when the relay lets go of it.
pub(super) enum Release<C> {
    /// Serve it with hyper, these bytes first.
    ToHyper(C, BytesMut),
    /// Done (spliced, closed, or tunnelled to its end).
    Done,
}

/// Where a relayed connection is. Each state is handled by the [`Conn`] method of the same
/// name, which returns the next.
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
}

/// Serves `client`; see the module documentation. `fastpath`: the frontend splices.
pub(super) async fn serve<C: ClientIo>(
    client: C,
    peer: SocketAddr,
    (frontend, proxy): (&Frontend, &Proxy),
    settings: ConnSettings,
    fastpath: Option<&Arc<Runtime>>,
    stop: watch::Receiver<bool>,
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

impl<'a, C: ClientIo> Conn<'a, C> {
    /// Timeouts, errors and oversized heads go to hyper, which answers them as it always does.
    async fn reading_first_head(&mut self) -> State {
        let max = self.settings.max_header_bytes;
        let read = read_head(&mut self.client, &mut self.buf, max);
        match tokio::time::timeout(self.settings.client_timeout, read).await {
            Ok(Ok(Some(head))) => {
                self.timeouts = self.proxy.timeouts();
                State::Routing { head, held: None }
            }
            _ => State::ToHyper,
        }
    }

    /// A request the relay does not serve simply (HTTP/1.0, a chunked or `Expect` body, a
    /// malformed head) goes to hyper; one with no server to go to is answered `503`.
    async fn routing(&mut self, head: usize, held: Option<Leg>) -> State {
        let Some(request) = RequestHead::parse(&self.buf[..head]) else {
            if let Some(leg) = held {
                leg.finish(true);
            }
            return State::ToHyper;
        };
        let backend = &self.frontend.backend;
        let (server, decision) =
            match exchange::route(backend, request.cookie(&backend.stick_cookie)) {
                Ok(routed) => routed,
                Err(error) => {
                    if let Some(leg) = held {
                        leg.finish(true);
                    }
                    let access = self.access(&request, None, Via::Pooled, Instant::now());
                    self.fail(&access, &error).await;
                    return State::Closing;
                }
            };
        // A candidate exchange goes over a leg that can be spliced and is followed by an
        // attempt; the others are relayed as with the fast path off.
        let candidate = self
            .splicing
            .as_ref()
            .is_some_and(|s| s.wants(&request, &server, decision));
        let spliceable = self.splicing.as_ref().filter(|_| candidate);
        let pools = (&self.proxy.pools, self.timeouts.0);
        let leg = match choose_leg(held, &server, spliceable, &mut self.client, pools).await {
            Ok(leg) => leg,
            Err(source) => {
                let error = ProxyError::ServerIo {
                    server: Arc::clone(&server.name),
                    answered: false,
                    reused: false,
                    source,
                };
                let routed = Some((&*server, decision));
                let access = self.access(&request, routed, Via::Pooled, Instant::now());
                self.fail(&access, &error).await;
                return State::Done;
            }
        };
        if let Some(splicing) = self
            .splicing
            .as_mut()
            .filter(|_| candidate && leg.splice.is_none())
        {
            // No leg that can be spliced was to be had (counted by the fast path): later.
            splicing.tracker.failed();
        }
        self.buf.advance(head);
        State::Forwarding(Exchange {
            request,
            decision,
            candidate,
            started: Instant::now(),
            in_flight: leg.server.start_request(),
            leg,
        })
    }

    /// Sends the request, retrying once on a new connection when a reused one failed before
    /// answering a request that can be repeated.
    async fn forwarding(&mut self, mut x: Exchange) -> State {
        let out_head = x.request.forwarded(self.peer.ip());
        let cookie = &*self.frontend.backend.stick_cookie;
        let mut retried = false;
        let forwarded = loop {
            let forwarded = forward(
                &mut self.client,
                &mut x.leg,
                &mut self.buf,
                &out_head,
                (&x.request, cookie),
                self.timeouts.1,
            )
            .await;
            match forwarded {
                Err(error) if !retried && retry_on_a_new_connection(&error, &x.leg, &x.request) => {
                    tracing::debug!(%error, server = %x.leg.server.name, "a reused server connection failed before answering; retrying once on a new one");
                    retried = true;
                    match x.leg.reopen(self.timeouts.0).await {
                        Ok(fresh) => x.leg = fresh,
                        Err(source) => {
                            break Err(ProxyError::ServerIo {
                                server: Arc::clone(&x.leg.server.name),
                                answered: false,
                                reused: false,
                                source,
                            })
                        }
                    }
                }
                other => break other,
            }
        };
        match forwarded {
            Ok(answer) => State::Delivering(x, answer),
            Err(error) => self.failed(x, &error).await,
        }
    }

    /// Delivers the answer; a candidate exchange of a sticky session is handed to the kernel
    /// as it is delivered (a tunnel belongs to its server whatever the cookie). Then the
    /// connection goes on as the response says.
    async fn delivering(&mut self, mut x: Exchange, answer: Answer) -> State {
        let hand_off = x.candidate
            && x.leg.can_splice()
            && (x.decision != Decision::NoCookie
                || answer.head.sets_cookie.is_some()
                || answer.head.body == Framing::Tunnel)
            && self.buf.is_empty();
        let limit = hand_off.then_some(self.settings.client_timeout);
        let backend = &self.frontend.backend;
        let delivered = deliver(
            &mut self.client,
            &mut x.leg,
            answer,
            backend,
            &x.request,
            limit,
        )
        .await;
        let Delivered {
            response,
            learned,
            body,
            tried,
        } = match delivered {
            Ok(delivered) => delivered,
            Err(error) => return self.failed(x, &error).await,
        };
        let Exchange {
            request,
            decision,
            mut leg,
            started,
            in_flight,
            ..
        } = x;
        leg.reused = true;
        drop(in_flight);
        let via = if leg.splice.is_some() {
            Via::Fastpath
        } else {
            Via::Pooled
        };
        self.access(&request, Some((&leg.server, decision)), via, started)
            .served(response.status);
        let sticky = decision != Decision::NoCookie || learned;
        if let Some(splicing) = self.splicing.as_mut() {
            splicing.tracker.exchanged(body);
            if splicing.record(tried) {
                tracing::debug!(client = %self.peer, server = %leg.server.name, "spliced");
                return State::Done;
            }
        }
        if response.body == Framing::Tunnel {
            return State::Tunnelling(leg);
        }
        if response.close || request.close {
            leg.finish(!response.close);
            return State::Closing;
        }
        if response.body == Framing::Unframed {
            return State::Streaming(leg);
        }
        let pause = self
            .splicing
            .as_ref()
            .filter(|_| sticky && self.buf.is_empty())
            .and_then(|s| s.tracker.pause());
        State::ReadingHead { leg, pause }
    }

    /// The next request, or a pause long enough for a hand-off.
    async fn reading_head(&mut self, leg: Leg, pause: Option<Duration>) -> State {
        let next = read_next(
            &mut self.client,
            &mut self.buf,
            self.settings,
            &mut self.stop,
            pause,
        )
        .await;
        match next {
            Next::Head(head) => State::Routing {
                head,
                held: Some(leg),
            },
            Next::Paused if self.splicing.is_some() => State::HandingOff(leg),
            Next::Paused => State::ReadingHead { leg, pause: None },
            Next::End => {
                leg.finish(true);
                State::Closing
            }
        }
    }

    async fn handing_off(&mut self, mut leg: Leg) -> State {
        let Some(splicing) = self.splicing.as_mut() else {
            return State::ReadingHead { leg, pause: None };
        };
        let connect = self.timeouts.0.min(PAUSE_CONNECT);
        let limits = (connect, self.settings.client_timeout);
        match splicing
            .after_pause(&mut leg, &mut self.client, limits)
            .await
        {
            Ok(true) => {
                tracing::debug!(client = %self.peer, server = %leg.server.name, "spliced after a pause");
                State::Done
            }
            Ok(false) => State::ReadingHead { leg, pause: None },
            Err(_) => {
                leg.finish(true);
                State::Closing
            }
        }
    }

    async fn tunnelling(&mut self, leg: Leg) -> State {
        let pending = std::mem::take(&mut self.buf);
        tunnel_leg(&mut self.client, leg, pending, self.settings.client_timeout).await;
        State::Done
    }

    /// Forwarded until the server closes: the rest is tunnelled as bytes.
    async fn streaming(&mut self, mut leg: Leg) -> State {
        if leg.can_splice() {
            if let Some(splicing) = &self.splicing {
                splicing.runtime.stats.unframed.fetch_add(1, Relaxed);
            }
        }
        leg.stop_observing();
        tunnel(&mut self.client, &mut leg.stream, &self.buf).await;
        State::Done
    }

    /// The exchange failed: counted, logged and answered (when the client can still hear
    /// one), then the connection closes.
    async fn failed(&mut self, x: Exchange, error: &ProxyError) -> State {
        drop(x.in_flight);
        let routed = Some((&*x.leg.server, x.decision));
        let access = self.access(&x.request, routed, Via::Pooled, x.started);
        self.fail(&access, error).await;
        State::Closing
    }

    async fn fail(&mut self, access: &Access<'_>, error: &ProxyError) {
        if access.failed(error).is_some() {
            let _ = self.client.write_all(error.answer().raw).await;
        }
    }

    fn access<'r>(
        &self,
        request: &'r RequestHead,
        routed: Option<(&'r crate::backend::ServerState, Decision)>,
        via: Via,
        started: Instant,
    ) -> Access<'r>
    where
        'a: 'r,
    {
        Access {
            frontend: self.frontend,
            client: self.peer,
            method: request.method(),
            path: request.path(),
            routed,
            via,
            started,
        }
    }
}

/// How the wait for the next request ended.
enum Next {
    /// A complete head of this length is in the buffer.
    Head(usize),
    /// The client paused (sent nothing) for as long as asked.
    Paused,
    /// The client closed, failed, timed out, or the daemon stops.
    End,
}

/// Waits for the next request head. With `pause`, gives up waiting after that long if nothing
/// came at all ([`Next::Paused`]). A stopping daemon closes an idle connection (as hyper's
/// graceful shutdown does), not one whose next request has begun.
async fn read_next<C: ClientIo>(
    client: &mut C,
    buf: &mut BytesMut,
    settings: ConnSettings,
    stop: &mut watch::Receiver<bool>,
    pause: Option<Duration>,
) -> Next {
    let idle = buf.is_empty();
    let limit = pause.map_or(settings.client_timeout, |p| p.min(settings.client_timeout));
    let read = tokio::time::timeout(limit, read_head(client, buf, settings.max_header_bytes));
    let read = tokio::select! {
        read = read => read,
        _ = stop.wait_for(|stop| *stop), if idle => return Next::End,
    };
    match read {
        Ok(Ok(Some(len))) => Next::Head(len),
        Ok(_) => Next::End,
        Err(_) if pause.is_some() && buf.is_empty() => Next::Paused,
        // The request began during the pause: its head gets the whole client timeout.
        Err(_) if pause.is_some() => Box::pin(read_next(client, buf, settings, stop, None)).await,
        Err(_) => Next::End,
    }
}
