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
//! - A server that fails before the client heard anything is answered `503`, as hyper does.

use std::{
    net::SocketAddr,
    sync::{atomic::Ordering::Relaxed, Arc},
    time::{Duration, Instant},
};

use bytes::{Buf as _, BytesMut};
use tokio::{io::AsyncWriteExt as _, net::TcpStream, sync::watch};

use self::{
    io::{copy_body, copy_chunked, read_head},
    leg::{Failed, Leg, Tried},
    tunnel::{tunnel, tunnel_leg},
};
use super::{
    count_status,
    message::{Framing, RequestHead, ResponseHead},
    ConnSettings, Frontend, Proxy,
};
use crate::{
    backend::{BackendState, Decision, ServerState},
    fastpath::{policy::Tracker, Runtime},
    table::now_ms,
};

mod io;
mod leg;
mod tunnel;

/// A connection prepared for a hand-off during a pause connects to its server within this
/// (or the configured connect timeout, if shorter): its client may send a request meanwhile.
const PAUSE_CONNECT: Duration = Duration::from_secs(1);

/// What the caller does with the client connection when the relay lets go of it.
pub(super) enum Release {
    /// Serve it with hyper, these bytes first.
    ToHyper(TcpStream, BytesMut),
    /// Done (spliced, closed, or tunnelled to its end).
    Done,
}

/// The client connection's progress toward the kernel fast path, on a splicing frontend.
struct Splicing<'a> {
    runtime: &'a Arc<Runtime>,
    interfaces: &'a [String],
    tracker: Tracker,
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

/// Serves `client`; see the module documentation. `fastpath`: the frontend splices.
pub(super) async fn serve(
    mut client: TcpStream,
    peer: SocketAddr,
    frontend: &Frontend,
    proxy: &Proxy,
    settings: ConnSettings,
    fastpath: Option<&Arc<Runtime>>,
    mut stop: watch::Receiver<bool>,
) -> Release {
    let mut buf = BytesMut::with_capacity(8192);
    let max = settings.max_header_bytes;
    let head = match tokio::time::timeout(
        settings.client_timeout,
        read_head(&mut client, &mut buf, max),
    )
    .await
    {
        Ok(Ok(Some(len))) => len,
        // Timeouts, errors and oversized heads: hyper answers them as it always does.
        _ => return Release::ToHyper(client, buf),
    };
    let Some(request) = RequestHead::parse(&buf[..head]) else {
        return Release::ToHyper(client, buf);
    };
    let backend = &frontend.backend;
    let Some((server, decision)) = route(backend, &request) else {
        return Release::ToHyper(client, buf);
    };
    let (connect_timeout, server_timeout) = proxy.timeouts();
    let mut splicing = fastpath.map(|runtime| Splicing {
        runtime,
        interfaces: &frontend.fastpath_interfaces,
        tracker: Tracker::new(runtime.policy()),
    });
    let (mut request, mut head, mut server, mut decision) = (request, head, server, decision);
    let mut held: Option<Leg> = None;
    loop {
        // A candidate exchange goes over a leg that can be spliced and is followed by an
        // attempt; the others are relayed as with the fast path off.
        let candidate = splicing
            .as_ref()
            .is_some_and(|s| s.wants(&request, &server, decision));
        let opened = choose_leg(
            held.take(),
            &server,
            candidate.then_some(()).and(splicing.as_ref()),
            &client,
            (&proxy.pools, connect_timeout),
        )
        .await;
        let mut leg = match opened {
            Ok(leg) => leg,
            Err(error) => {
                let failed = Failed::before_answer(&server, error);
                failed
                    .answer(&mut client, frontend, peer, &request, decision)
                    .await;
                return Release::Done;
            }
        };
        if let Some(splicing) = splicing
            .as_mut()
            .filter(|_| candidate && leg.splice.is_none())
        {
            // No leg that can be spliced was to be had (counted by the fast path): later.
            splicing.tracker.failed();
        }
        let started = Instant::now();
        let out_head = request.forwarded(peer.ip());
        buf.advance(head);
        let in_flight = leg.server.start_request();
        // One retry, on a new connection, when a reused one failed before answering.
        let mut retried = false;
        let forwarded = loop {
            let forwarded = forward(
                &mut client,
                &mut leg,
                &mut buf,
                &out_head,
                (&request, &backend.stick_cookie),
                server_timeout,
            )
            .await;
            match forwarded {
                Err(error) if !retried && retry_on_a_new_connection(&leg, &request) => {
                    tracing::debug!(%error, server = %leg.server.name, "a reused server connection failed before answering; retrying once on a new one");
                    retried = true;
                    match leg.reopen(connect_timeout).await {
                        Ok(fresh) => leg = fresh,
                        Err(error) => break Err(error),
                    }
                }
                other => break other,
            }
        };
        let delivered = match forwarded {
            Ok(answer) => {
                // A candidate exchange of a sticky session is handed over as it is delivered.
                // A tunnel belongs to its server whatever the cookie.
                let hand_off = candidate
                    && leg.can_splice()
                    && (decision != Decision::NoCookie
                        || answer.0.sets_cookie.is_some()
                        || answer.0.body == Framing::Tunnel)
                    && buf.is_empty();
                let limit = hand_off.then_some(settings.client_timeout);
                deliver(&mut client, &mut leg, answer, backend, &request, limit)
                    .await
                    .map_err(|error| Failed::midway(&leg.server, error))
            }
            Err(error) => Err(Failed::before_answer(&leg.server, error)),
        };
        let Delivered {
            response,
            learned,
            body,
            tried,
        } = match delivered {
            Ok(delivered) => delivered,
            Err(failed) => {
                drop(in_flight);
                failed
                    .answer(&mut client, frontend, peer, &request, decision)
                    .await;
                break;
            }
        };
        leg.reused = true;
        drop(in_flight);
        tracing::info!(
            target: "access",
            frontend = %frontend.name,
            backend = %backend.name,
            server = %leg.server.name,
            status = response.status,
            ms = started.elapsed().as_millis() as u64,
            decision = decision.as_str(),
            client = %peer,
            method = %request.method(),
            path = request.path(),
            relay = if leg.splice.is_some() { "fastpath" } else { "pooled" },
        );
        count_status(&leg.server, response.status);
        let sticky = decision != Decision::NoCookie || learned;
        if let Some(splicing) = splicing.as_mut() {
            splicing.tracker.exchanged(body);
            if splicing.record(tried) {
                tracing::debug!(client = %peer, server = %leg.server.name, "spliced");
                return Release::Done;
            }
        }
        if response.body == Framing::Tunnel {
            return tunnel_leg(client, leg, buf, settings.client_timeout).await;
        }
        if response.close || request.close {
            leg.finish(!response.close);
            break;
        }
        if response.body == Framing::Unframed {
            // Forwarded until the server closes: tunnel the rest as bytes.
            if leg.can_splice() {
                if let Some(splicing) = &splicing {
                    splicing.runtime.stats.unframed.fetch_add(1, Relaxed);
                }
            }
            leg.stop_observing();
            tunnel(&mut client, &mut leg.stream, &buf).await;
            return Release::Done;
        }
        // The next request, or a pause long enough for a hand-off.
        let mut pause = splicing
            .as_ref()
            .filter(|_| sticky && buf.is_empty())
            .and_then(|s| s.tracker.pause());
        let next = loop {
            match read_next(&mut client, &mut buf, settings, &mut stop, pause.take()).await {
                Next::Paused => {
                    if let Some(splicing) = splicing.as_mut() {
                        let connect = connect_timeout.min(PAUSE_CONNECT);
                        let limits = (connect, settings.client_timeout);
                        match splicing.after_pause(&mut leg, &mut client, limits).await {
                            Ok(true) => {
                                tracing::debug!(client = %peer, server = %leg.server.name, "spliced after a pause");
                                return Release::Done;
                            }
                            Ok(false) => {}
                            Err(_) => break Next::End,
                        }
                    }
                }
                other => break other,
            }
        };
        let Next::Head(len) = next else {
            leg.finish(true);
            break;
        };
        head = len;
        let routed = RequestHead::parse(&buf[..head])
            .and_then(|next| route(backend, &next).map(|routed| (next, routed)));
        let Some((next, (next_server, routed))) = routed else {
            // Not simple (e.g. a chunked body), or no server: hyper takes it.
            leg.finish(true);
            return Release::ToHyper(client, buf);
        };
        (request, server, decision) = (next, next_server, routed);
        held = Some(leg);
    }
    let _ = client.shutdown().await;
    Release::Done
}

impl Splicing<'_> {
    /// Whether the exchange of `request` (routed to `server` by `decision`) should go over a
    /// leg that can be spliced: a tunnel request, or a sticky session's request when the
    /// policy says the connection has lived long enough. Never a request that closes the
    /// connection (nothing would be left to splice), nor an IPv6 server.
    fn wants(&self, request: &RequestHead, server: &ServerState, decision: Decision) -> bool {
        server.addr.is_ipv4()
            && !request.close
            && (request.asks_tunnel() || (decision != Decision::NoCookie && self.tracker.due()))
    }

    /// Tells the policy how an attempt went; `true` once spliced.
    fn record(&mut self, tried: Option<Tried>) -> bool {
        match tried {
            Some(Tried::Spliced) => true,
            Some(Tried::Raced) => {
                self.tracker.raced();
                false
            }
            Some(Tried::Again) => {
                self.tracker.failed();
                false
            }
            Some(Tried::Never) => {
                self.tracker.never();
                false
            }
            None => false,
        }
    }

    /// The client paused after an exchange with a sticky session: hands the connection to the
    /// kernel now, on a new leg to the same server if the current one cannot be spliced (the
    /// pooled one goes back to its pool). `Ok(true)` once spliced.
    async fn after_pause(
        &mut self,
        leg: &mut Leg,
        client: &mut TcpStream,
        (connect, limit): (Duration, Duration),
    ) -> std::io::Result<bool> {
        if leg.splice.is_none() {
            let server = Arc::clone(&leg.server);
            let spliceable =
                Leg::spliceable(self.runtime, server, client, self.interfaces, connect).await;
            match spliceable {
                Some(fresh) => std::mem::replace(leg, fresh).finish(true),
                None => {
                    self.tracker.failed();
                    return Ok(false);
                }
            }
        }
        if !leg.timestamps_seen().await {
            self.tracker.failed();
            return Ok(false);
        }
        let tried = leg.try_splice(client, &[], limit).await.transpose()?;
        // A pause that ends during its hand-off was too short: ask for a longer one.
        let tried = match tried {
            Some(Tried::Raced) => Some(Tried::Again),
            other => other,
        };
        Ok(self.record(tried))
    }
}

/// The leg for the next exchange, to `server`: the one held if it goes there (and can be
/// spliced, when `spliceable` asks for that), else a new one; the held one goes back to its
/// pool (or closes, if it was reserved).
async fn choose_leg(
    held: Option<Leg>,
    server: &Arc<ServerState>,
    spliceable: Option<&Splicing<'_>>,
    client: &TcpStream,
    (pools, connect_timeout): (&super::pool::Pools, Duration),
) -> std::io::Result<Leg> {
    if let Some(leg) = held {
        if Arc::ptr_eq(&leg.server, server) && (leg.splice.is_some() || spliceable.is_none()) {
            return Ok(leg);
        }
        leg.finish(true);
    }
    if let Some(splicing) = spliceable {
        let prepared = Leg::spliceable(
            splicing.runtime,
            Arc::clone(server),
            client,
            splicing.interfaces,
            connect_timeout,
        )
        .await;
        if let Some(leg) = prepared {
            return Ok(leg);
        }
    }
    Leg::open(Arc::clone(server), pools, connect_timeout).await
}

/// Waits for the next request head. With `pause`, gives up waiting after that long if nothing
/// came at all ([`Next::Paused`]). A stopping daemon closes an idle connection (as hyper's
/// graceful shutdown does), not one whose next request has begun.
async fn read_next(
    client: &mut TcpStream,
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

/// The server for `request`, by its stickiness cookie.
fn route(backend: &BackendState, request: &RequestHead) -> Option<(Arc<ServerState>, Decision)> {
    backend.route(request.cookie(&backend.stick_cookie), now_ms())
}

/// Whether a failure before any answer deserves a second try: the connection was reused (the
/// server may have closed it while it was idle), it is a pooled one, and the request can be
/// sent again as it is (idempotent, no body) to a server of our choosing.
fn retry_on_a_new_connection(leg: &Leg, request: &RequestHead) -> bool {
    leg.splice.is_none()
        && leg.reused
        && request.body == 0
        && matches!(request.method(), "GET" | "HEAD" | "OPTIONS")
}

/// Sends the request (head already rewritten, body by Content-Length from `buf` then the
/// client) and reads the response head. Nothing reaches the client: a failure here can still
/// be answered. Returns the parsed head, what was read with it, and the head's length.
async fn forward(
    client: &mut TcpStream,
    leg: &mut Leg,
    buf: &mut BytesMut,
    out_head: &[u8],
    (request, cookie): (&RequestHead, &str),
    server_timeout: Duration,
) -> std::io::Result<(ResponseHead, BytesMut, usize)> {
    let upstream = &mut leg.stream;
    upstream.write_all(out_head).await?;
    copy_body(buf, client, upstream, request.body).await?;
    leg.server.stats.bytes_in.fetch_add(request.body, Relaxed);
    let mut response_buf = BytesMut::with_capacity(8192);
    let len = tokio::time::timeout(
        server_timeout,
        read_head(upstream, &mut response_buf, 64 * 1024),
    )
    .await
    .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "server timeout"))??
    .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "no response head"))?;
    let head_request = request.method() == "HEAD";
    let mut response = ResponseHead::parse(&response_buf[..len], head_request, cookie)
        .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::InvalidData, "bad response head"))?;
    if request.tunnels_on(response.status) {
        response.body = Framing::Tunnel;
    }
    Ok((response, response_buf, len))
}

/// A delivered answer.
struct Delivered {
    response: ResponseHead,
    /// The response set the stickiness cookie (now in the table).
    learned: bool,
    /// The body's size (0 when close-delimited or a tunnel).
    body: u64,
    /// How the hand-off attempt made with it went, if one was made.
    tried: Option<Tried>,
}

/// The largest answer held back and written after a hand-off is armed (larger ones are written
/// first and the hand-off tried after): it must fit the client's receive window, since the
/// client's window updates no longer reach the proxy socket once the hand-off is armed.
const HELD_ANSWER: usize = 16 * 1024;

/// Learns the response's stickiness cookie (a new, moved or learned session is in the pinned
/// map before the client hears of it: tables write as they decide), then passes the response
/// on. With `hand_off` (the time the client has to acknowledge it), the connection is handed to
/// the kernel with the answer: a small one is held back and written once the hand-off is armed
/// (the client, busy waiting for it, sends nothing meanwhile), a larger one is tried after.
async fn deliver(
    client: &mut TcpStream,
    leg: &mut Leg,
    (response, mut response_buf, len): (ResponseHead, BytesMut, usize),
    backend: &BackendState,
    request: &RequestHead,
    hand_off: Option<Duration>,
) -> std::io::Result<Delivered> {
    let learned = match &response.sets_cookie {
        Some(set) => {
            backend.learn(set, &leg.server, now_ms());
            true
        }
        None => false,
    };
    if response.body == Framing::Tunnel {
        // The head and what the server sent after it, the start of the tunnel.
        let mut tried = None;
        if let Some(limit) = hand_off {
            tried = hand_over_tunnel(client, leg, &mut response_buf, limit).await?;
        }
        if !tried.is_some_and(Tried::wrote) {
            client.write_all(&response_buf).await?;
        }
        return Ok(Delivered {
            response,
            learned,
            body: 0,
            tried,
        });
    }
    // A response that came whole with its head (the usual small answer) goes out in one write.
    let whole = match response.body {
        Framing::Length(body) => usize::try_from(body)
            .ok()
            .and_then(|body| body.checked_add(len))
            .filter(|&end| end <= response_buf.len()),
        Framing::Chunked | Framing::Unframed | Framing::Tunnel => None,
    };
    let sent = whole.unwrap_or(len);
    let mut out = Vec::new();
    let answer: &[u8] = if request.close && !response.close {
        // The client asked to close after this answer: say so, as the last header.
        out.reserve(sent + CLOSE_HEADER.len());
        out.extend_from_slice(&response_buf[..len - 2]);
        out.extend_from_slice(CLOSE_HEADER);
        out.extend_from_slice(&response_buf[len..sent]);
        &out
    } else {
        &response_buf[..sent]
    };
    let held = hand_off.filter(|_| whole.is_some() && answer.len() <= HELD_ANSWER);
    let mut tried = None;
    if let Some(limit) = held {
        tried = leg.try_splice(client, answer, limit).await.transpose()?;
    }
    if !tried.is_some_and(Tried::wrote) {
        client.write_all(answer).await?;
    }
    response_buf.advance(sent);
    // The body's size, for a framed body.
    let (server, upstream) = (&*leg.server, &mut leg.stream);
    let framed = match response.body {
        Framing::Length(body) if whole.is_some() => Some(body),
        Framing::Length(body) => {
            copy_body(&mut response_buf, upstream, client, body).await?;
            Some(body)
        }
        Framing::Chunked => Some(copy_chunked(&mut response_buf, upstream, client).await?),
        Framing::Unframed | Framing::Tunnel => {
            // What the server sent after the head: the start of the body, or of the tunnel.
            client.write_all(&response_buf).await?;
            response_buf.clear();
            None
        }
    };
    if let Some(body) = framed {
        server.stats.bytes_out.fetch_add(body, Relaxed);
        if !response_buf.is_empty() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                "the server sent more than its response",
            ));
        }
    }
    // A larger answer: tried once it is all written.
    if let (Some(limit), None, Some(_)) = (hand_off, held, framed) {
        tried = leg.try_splice(client, &[], limit).await.transpose()?;
    }
    Ok(Delivered {
        response,
        learned,
        body: framed.unwrap_or(0),
        tried,
    })
}

/// Hands a tunnel over with its response head and whatever the server sent after it (`head`):
/// the client sends nothing before it has them. A server that speaks first (a greeting) may
/// still be sending when the hand-off looks at its leg: what arrived is added and the hand-off
/// tried again, a few times. Returns how the last attempt went (`None`: the leg cannot be
/// spliced); the caller writes `head` when the attempts did not.
async fn hand_over_tunnel(
    client: &mut TcpStream,
    leg: &mut Leg,
    head: &mut BytesMut,
    limit: Duration,
) -> std::io::Result<Option<Tried>> {
    const TRIES: usize = 3;
    let mut tried = None;
    for _ in 0..TRIES {
        tried = leg.try_splice(client, head, limit).await.transpose()?;
        if tried != Some(Tried::Raced) {
            break;
        }
        let before = head.len();
        while head.len() <= HELD_ANSWER {
            match leg.stream.try_read_buf(head) {
                Ok(n) if n > 0 => {}
                _ => break,
            }
        }
        if head.len() == before {
            // Not the server: the client (or a full buffer); the tunnel relays it.
            break;
        }
    }
    Ok(tried)
}

/// Ends a response head whose client asked to close (replacing its final empty line).
const CLOSE_HEADER: &[u8] = b"connection: close\r\n\r\n";
