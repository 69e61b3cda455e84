//! The relay: how every simple HTTP/1.1 request is served. A small relay over plain sockets,
//! the client's and a server connection, that parses each message head once and copies bodies
//! as they are (hyper is the fallback for everything else).
//!
//! - On a frontend with `fastpath = "splice"` the server connection is dedicated (never
//!   pooled) and observed, so that the connection can be handed to the kernel once an exchange
//!   is complete; every request of the connection then goes to that server, the semantics of a
//!   spliced connection. After each complete exchange it tries the hand-off. A connection that
//!   is not spliced yet (a request raced it, the peers had not acknowledged) tries again after
//!   the next exchange; one whose legs cannot be translated stays in userspace for good.
//!   Connections whose first exchange made no sticky session go to hyper.
//! - Otherwise (`fastpath = "off"`, a request that closes the connection, an IPv6 server) each
//!   request is routed by its own cookie over a pooled keep-alive connection to its server
//!   ([`super::pool`]), and a server connection that fails before answering a request that can
//!   be repeated is retried once on a new connection.
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
    leg::{Failed, Leg},
    tunnel::{splice_tunnel, tunnel},
};
use super::{
    count_status,
    listener::ConnSettings,
    message::{Framing, RequestHead, ResponseHead},
    Frontend, Proxy,
};
use crate::{
    backend::{BackendState, Decision, ServerState},
    fastpath::runtime::{Attempt, Runtime},
    table::now_ms,
};

mod io;
mod leg;
mod tunnel;

/// What the caller does with the client connection when the relay lets go of it.
pub(super) enum Release {
    /// Serve it with hyper, these bytes first.
    ToHyper(TcpStream, BytesMut),
    /// Done (spliced, closed, or tunnelled to its end).
    Done,
}

/// How the relay reaches servers.
#[derive(Clone, Copy)]
enum Reach<'a> {
    /// A dedicated connection from the fast path's port range, observed so that it can be
    /// handed to the kernel: every request of the client connection goes to that server.
    Splice(&'a Arc<Runtime>),
    /// Pooled connections: each request goes where its own cookie says.
    Pooled,
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
    // A connection that closes after this request has nothing to splice.
    let reach = match (fastpath, server.addr) {
        (Some(fastpath), SocketAddr::V4(_)) if !request.close => Reach::Splice(fastpath),
        _ => Reach::Pooled,
    };
    let (mut leg, mut handoff) = match reach {
        Reach::Splice(fastpath) => {
            let interfaces = &frontend.fastpath_interfaces;
            let spliced = Leg::spliced(fastpath, server, &client, interfaces, connect_timeout);
            match spliced.await {
                Some(opened) => opened,
                None => return Release::ToHyper(client, buf),
            }
        }
        Reach::Pooled => match Leg::open(Arc::clone(&server), connect_timeout).await {
            Ok(leg) => (leg, None),
            Err(error) => {
                let failed = Failed::before_answer(&server, error);
                failed
                    .answer(&mut client, frontend, peer, &request, decision)
                    .await;
                return Release::Done;
            }
        },
    };
    let mut sticky = decision != Decision::NoCookie;
    let mut decision = decision;
    let mut request = request;
    let mut head = head;
    // Whether `leg` may serve another exchange.
    let mut reusable: bool;
    loop {
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
                Err(error) if !retried && retry_on_a_new_connection(&leg, &request, reach) => {
                    tracing::debug!(%error, server = %leg.server.name, "a reused server connection failed before answering; retrying once on a new one");
                    retried = true;
                    match Leg::open_new(Arc::clone(&leg.server), connect_timeout).await {
                        Ok(fresh) => leg = fresh,
                        Err(error) => break Err(error),
                    }
                }
                other => break other,
            }
        };
        let delivered = match forwarded {
            Ok((response, response_buf, len)) => {
                let coalesce = handoff.is_none();
                deliver(
                    &mut client,
                    &mut leg,
                    (response, response_buf, len),
                    backend,
                    &request,
                    coalesce,
                )
                .await
                .map_err(|error| Failed::midway(&leg.server, error))
            }
            Err(error) => Err(Failed::before_answer(&leg.server, error)),
        };
        let (response, learned) = match delivered {
            Ok(delivered) => delivered,
            Err(failed) => {
                drop(in_flight);
                failed
                    .answer(&mut client, frontend, peer, &request, decision)
                    .await;
                reusable = false;
                break;
            }
        };
        sticky |= learned;
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
            relay = match reach {
                Reach::Splice(_) => "fastpath",
                Reach::Pooled => "pooled",
            },
        );
        count_status(&leg.server, response.status);
        if response.body == Framing::Tunnel {
            return match reach {
                Reach::Splice(fastpath) => {
                    splice_tunnel(client, leg.stream, buf, handoff, fastpath).await
                }
                Reach::Pooled => {
                    tunnel(&mut client, &mut leg.stream, &buf).await;
                    Release::Done
                }
            };
        }
        reusable = !response.close && response.body != Framing::Unframed;
        if response.close || request.close {
            break;
        }
        if response.body == Framing::Unframed {
            // Forwarded until the server closes: tunnel the rest as bytes.
            if let (Reach::Splice(fastpath), Some(h)) = (reach, handoff.take()) {
                fastpath.stats.unframed.fetch_add(1, Relaxed);
                fastpath.forget(h);
            }
            tunnel(&mut client, &mut leg.stream, &buf).await;
            return Release::Done;
        }
        if let Reach::Splice(fastpath) = reach {
            if !sticky {
                fastpath.stats.not_sticky.fetch_add(1, Relaxed);
                if let Some(h) = handoff.take() {
                    fastpath.forget(h);
                }
                let _ = leg.stream.shutdown().await;
                return Release::ToHyper(client, buf);
            }
            if buf.is_empty() {
                if let Some(h) = handoff.take() {
                    match fastpath.try_splice(h, &client).await {
                        Attempt::Spliced => {
                            tracing::debug!(client = %peer, server = %leg.server.name, "spliced");
                            // Both sockets are in repair mode: dropping them sends nothing.
                            return Release::Done;
                        }
                        Attempt::Again(h) => handoff = Some(h),
                        Attempt::Never => {}
                    }
                }
            }
        }
        // The next request; a stopping daemon closes an idle connection (as hyper's graceful
        // shutdown does), not one whose next request has begun.
        let idle = buf.is_empty();
        let next = tokio::time::timeout(
            settings.client_timeout,
            read_head(&mut client, &mut buf, settings.max_header_bytes),
        );
        head = tokio::select! {
            read = next => match read {
                Ok(Ok(Some(len))) => len,
                _ => break,
            },
            _ = stop.wait_for(|stop| *stop), if idle => break,
        };
        let Some(next) = RequestHead::parse(&buf[..head]) else {
            // Not simple (e.g. a chunked body).
            return match reach {
                Reach::Splice(fastpath) => {
                    // Spliced semantics: the rest goes to the same server, as bytes.
                    if let Some(h) = handoff.take() {
                        fastpath.forget(h);
                    }
                    tunnel(&mut client, &mut leg.stream, &buf).await;
                    Release::Done
                }
                Reach::Pooled => {
                    leg.park();
                    Release::ToHyper(client, buf)
                }
            };
        };
        request = next;
        decision = Decision::StickyHit;
        if let Reach::Pooled = reach {
            let Some((server, routed)) = route(backend, &request) else {
                leg.park();
                return Release::ToHyper(client, buf);
            };
            decision = routed;
            if !Arc::ptr_eq(&server, &leg.server) {
                match Leg::open(Arc::clone(&server), connect_timeout).await {
                    Ok(next_leg) => std::mem::replace(&mut leg, next_leg).park(),
                    Err(error) => {
                        let failed = Failed::before_answer(&server, error);
                        failed
                            .answer(&mut client, frontend, peer, &request, decision)
                            .await;
                        reusable = true;
                        break;
                    }
                }
            }
        }
    }
    match reach {
        Reach::Splice(fastpath) => {
            if let Some(h) = handoff.take() {
                fastpath.forget(h);
            }
            let _ = leg.stream.shutdown().await;
        }
        Reach::Pooled if reusable => leg.park(),
        Reach::Pooled => {}
    }
    let _ = client.shutdown().await;
    Release::Done
}

/// The server for `request`, by its stickiness cookie.
fn route(backend: &BackendState, request: &RequestHead) -> Option<(Arc<ServerState>, Decision)> {
    backend.route(request.cookie(&backend.stick_cookie), now_ms())
}

/// Whether a failure before any answer deserves a second try: the connection was reused (the
/// server may have closed it while it was idle), and the request can be sent again as it is
/// (idempotent, no body) to a server of our choosing.
fn retry_on_a_new_connection(leg: &Leg, request: &RequestHead, reach: Reach<'_>) -> bool {
    matches!(reach, Reach::Pooled)
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

/// Learns the response's stickiness cookie (a new, moved or learned session is in the pinned
/// map before the client hears of it: tables write as they decide), then passes the response
/// on. Answers the head and whether a cookie was learned.
/// `coalesce`: a response that came whole with its head goes out in one write.
async fn deliver(
    client: &mut TcpStream,
    leg: &mut Leg,
    (response, mut response_buf, len): (ResponseHead, BytesMut, usize),
    backend: &BackendState,
    request: &RequestHead,
    coalesce: bool,
) -> std::io::Result<(ResponseHead, bool)> {
    let (server, upstream) = (&*leg.server, &mut leg.stream);
    let learned = match &response.sets_cookie {
        Some(set) => {
            backend.learn(set, server, now_ms());
            true
        }
        None => false,
    };
    // A response that came whole with its head (the usual small answer) goes out in one write
    // when the connection stays in userspace anyway. Before a hand-off it goes as the head, then
    // the body. Measured on this VM (64 wrk connections sending each request the moment the
    // previous answer ends): in two segments every connection acknowledged the answer before
    // its next request and all 64 were handed over within the run; in one segment the
    // acknowledgement rode on the next request, the connections were rarely quiet at a message
    // boundary, and 15 to 50 of 64 were. A client that pauses is handed over either way.
    let whole = match response.body {
        Framing::Length(body) if coalesce => usize::try_from(body)
            .ok()
            .and_then(|body| body.checked_add(len))
            .filter(|&end| end <= response_buf.len()),
        _ => None,
    };
    let sent = whole.unwrap_or(len);
    if request.close && !response.close {
        // The client asked to close after this answer: say so, as the last header.
        let mut out = Vec::with_capacity(sent + CLOSE_HEADER.len());
        out.extend_from_slice(&response_buf[..len - 2]);
        out.extend_from_slice(CLOSE_HEADER);
        out.extend_from_slice(&response_buf[len..sent]);
        client.write_all(&out).await?;
    } else {
        client.write_all(&response_buf[..sent]).await?;
    }
    response_buf.advance(sent);
    let framed = match response.body {
        Framing::Length(body) if whole.is_some() => {
            server.stats.bytes_out.fetch_add(body, Relaxed);
            true
        }
        Framing::Length(body) => {
            copy_body(&mut response_buf, upstream, client, body).await?;
            server.stats.bytes_out.fetch_add(body, Relaxed);
            true
        }
        Framing::Chunked => {
            let body = copy_chunked(&mut response_buf, upstream, client).await?;
            server.stats.bytes_out.fetch_add(body, Relaxed);
            true
        }
        Framing::Unframed | Framing::Tunnel => {
            // What the server sent after the head: the start of the body, or of the tunnel.
            client.write_all(&response_buf).await?;
            response_buf.clear();
            false
        }
    };
    if framed && !response_buf.is_empty() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "the server sent more than its response",
        ));
    }
    Ok((response, learned))
}

/// Ends a response head whose client asked to close (replacing its final empty line).
const CLOSE_HEADER: &[u8] = b"connection: close\r\n\r\n";
