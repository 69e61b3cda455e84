//! The first exchange of a connection on a frontend with `fastpath = "splice"`: a small
//! HTTP/1.1 relay over two plain sockets this process controls, the client's and a dedicated
//! (never pooled) connection to the chosen server, so that the connection can be handed to the
//! kernel once the exchange is complete.
//!
//! - A request it cannot relay simply (HTTP/1.0, a chunked or `Expect` body,
//!   `Connection: close`, a non-IPv4 server) goes to the hyper proxy with the bytes already
//!   read, as do connections whose first exchange made no sticky session.
//! - An upgrade (`Upgrade` + `Connection: upgrade`, e.g. WebSocket) answered `101`, or a
//!   `CONNECT` answered `2xx`, makes the connection a tunnel to that server: it is handed to the
//!   kernel right after the response head, or as soon as the tunnel is quiet, and relayed as
//!   bytes until then (or for good, when its legs cannot be translated).
//! - After each complete exchange it tries the hand-off. A connection that is not spliced yet
//!   (a request raced it, the peers had not acknowledged) stays on its server and tries again
//!   after the next exchange; one whose legs cannot be translated stays in userspace for good.
//!   Either way it keeps going to the same server: the semantics of a spliced connection.

use std::{net::SocketAddr, sync::Arc, time::Instant};

use bytes::{Buf as _, BytesMut};
use hyper::{
    header::{HeaderName, HeaderValue},
    HeaderMap,
};
use tokio::{
    io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _},
    net::TcpStream,
    sync::watch,
};

use super::{count_status, headers, listener::ConnSettings, Frontend, Proxy};
use crate::{
    backend::{BackendState, Decision, ServerState},
    cookie,
    fastpath::runtime::{Attempt, Runtime},
    table::now_ms,
};

const MAX_HEADERS: usize = 100;
const CHUNK: usize = 256 * 1024;

/// What the caller does with the client connection when the relay lets go of it.
pub(super) enum Release {
    /// Serve it with hyper, these bytes first.
    ToHyper(TcpStream, BytesMut),
    /// Done (spliced, closed, or tunnelled to its end).
    Done,
}

/// A parsed request head.
struct RequestHead {
    method: String,
    path: String,
    headers: HeaderMap,
    body: u64,
    /// The protocol of an upgrade request (`Upgrade` with `Connection: upgrade`).
    upgrade: Option<HeaderValue>,
}

impl RequestHead {
    fn is_connect(&self) -> bool {
        self.method == "CONNECT"
    }

    /// Whether `status` turns the connection into a tunnel: `101` to an upgrade, `2xx` to
    /// `CONNECT`.
    fn tunnels_on(&self, status: u16) -> bool {
        (self.upgrade.is_some() && status == 101)
            || (self.is_connect() && (200..300).contains(&status))
    }
}

/// How a response body ends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Framing {
    Length(u64),
    Chunked,
    /// Until the server closes, or what follows a 1xx: not HTTP messages the relay can follow.
    Unframed,
    /// The connection is now a tunnel (an accepted upgrade or CONNECT).
    Tunnel,
}

/// A parsed response head.
struct ResponseHead {
    status: u16,
    headers: HeaderMap,
    body: Framing,
    close: bool,
}

/// Serves `client` on a splicing frontend; see the module documentation.
pub(super) async fn serve(
    mut client: TcpStream,
    peer: SocketAddr,
    frontend: &Frontend,
    proxy: &Proxy,
    settings: ConnSettings,
    fastpath: &Arc<Runtime>,
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
    let Some(request) = parse_request(&buf[..head]) else {
        return Release::ToHyper(client, buf);
    };
    let backend = &frontend.backend;
    let cookie =
        cookie::request_cookie(&request.headers, &backend.stick_cookie).map(<[u8]>::to_vec);
    let Some((server, decision)) = backend.route(cookie.as_deref(), now_ms()) else {
        return Release::ToHyper(client, buf);
    };
    let SocketAddr::V4(server_addr) = server.addr else {
        return Release::ToHyper(client, buf);
    };
    let (connect_timeout, server_timeout) = proxy.timeouts();
    let mut upstream = match fastpath.connect(server_addr, connect_timeout).await {
        Ok(upstream) => upstream,
        Err(error) => {
            tracing::debug!(%error, server = %server.name, "fast path connect failed; hyper takes the request");
            return Release::ToHyper(client, buf);
        }
    };
    let mut handoff = match fastpath.observe(&client, &upstream, &frontend.fastpath_interfaces) {
        Ok(handoff) => handoff,
        Err(error) => {
            tracing::warn!(error = %crate::error_chain(&error), "fast path: cannot observe the connection");
            None
        }
    };
    let mut sticky = decision != Decision::NoCookie;
    let mut first = Some(decision);
    let mut request = request;
    let mut head = head;
    loop {
        let started = Instant::now();
        let in_flight = server.start_request();
        let decision = first.take().unwrap_or(Decision::StickyHit);
        let exchanged = exchange(
            (&mut client, &mut upstream, &mut buf),
            (head, &request),
            peer,
            (backend, &server),
            (server_timeout, handoff.is_none()),
        )
        .await;
        let response = match exchanged {
            Ok((response, learned)) => {
                sticky |= learned;
                response
            }
            Err(error) => {
                server
                    .stats
                    .failures
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                tracing::info!(target: "access", frontend = %frontend.name, backend = %backend.name, server = %server.name, %peer, method = %request.method, path = %request.path, error = %error, "relayed exchange failed; closing");
                break;
            }
        };
        drop(in_flight);
        tracing::info!(
            target: "access",
            frontend = %frontend.name,
            backend = %backend.name,
            server = %server.name,
            status = response.status,
            ms = started.elapsed().as_millis() as u64,
            decision = decision.as_str(),
            client = %peer,
            method = %request.method,
            path = request.path,
            relay = "fastpath",
        );
        count_status(&server, response.status);
        if response.body == Framing::Tunnel {
            return splice_tunnel(client, upstream, buf, handoff, fastpath).await;
        }
        if response.close || request_wants_close(&request.headers) {
            break;
        }
        if response.body == Framing::Unframed {
            // Forwarded until the server closes, or an upgrade: tunnel the rest as bytes.
            fastpath
                .stats
                .unframed
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            if let Some(h) = handoff.take() {
                fastpath.forget(h);
            }
            tunnel(&mut client, &mut upstream, &buf).await;
            return Release::Done;
        }
        if !sticky {
            fastpath
                .stats
                .not_sticky
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            if let Some(h) = handoff.take() {
                fastpath.forget(h);
            }
            let _ = upstream.shutdown().await;
            return Release::ToHyper(client, buf);
        }
        if buf.is_empty() {
            if let Some(h) = handoff.take() {
                match fastpath.try_splice(h, &client).await {
                    Attempt::Spliced => {
                        tracing::debug!(client = %peer, server = %server.name, "spliced");
                        // Both sockets are in repair mode: dropping them sends nothing.
                        return Release::Done;
                    }
                    Attempt::Again(h) => handoff = Some(h),
                    Attempt::Never => {}
                }
            }
        }
        // The next request, on the same server; a stopping daemon closes an idle connection
        // (as hyper's graceful shutdown does), not one whose next request has begun.
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
        match parse_request(&buf[..head]) {
            Some(next) => request = next,
            None => {
                // Not simple (e.g. a chunked body): the rest goes through as bytes.
                if let Some(h) = handoff.take() {
                    fastpath.forget(h);
                }
                tunnel(&mut client, &mut upstream, &buf).await;
                return Release::Done;
            }
        }
    }
    if let Some(h) = handoff.take() {
        fastpath.forget(h);
    }
    let _ = upstream.shutdown().await;
    let _ = client.shutdown().await;
    Release::Done
}

/// Forwards one request (head rewritten, body by Content-Length) and its response, learning
/// the response's stickiness cookie (a new, moved or learned session is in the pinned map
/// before the client hears of it: tables write as they decide). Also answers whether a cookie
/// was learned.
/// `coalesce`: a response that came whole with its head goes out in one write.
async fn exchange(
    (client, upstream, buf): (&mut TcpStream, &mut TcpStream, &mut BytesMut),
    (head, request): (usize, &RequestHead),
    peer: SocketAddr,
    (backend, server): (&BackendState, &ServerState),
    (server_timeout, coalesce): (std::time::Duration, bool),
) -> std::io::Result<(ResponseHead, bool)> {
    use std::sync::atomic::Ordering::Relaxed;
    let out_head = request_head(request, peer);
    buf.advance(head);
    upstream.write_all(&out_head).await?;
    copy_body(buf, client, upstream, request.body).await?;
    server.stats.bytes_in.fetch_add(request.body, Relaxed);
    let mut response_buf = BytesMut::with_capacity(8192);
    let len = tokio::time::timeout(
        server_timeout,
        read_head(upstream, &mut response_buf, 64 * 1024),
    )
    .await
    .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "server timeout"))??
    .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "no response head"))?;
    let mut response = parse_response(&response_buf[..len], request.method == "HEAD")
        .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::InvalidData, "bad response head"))?;
    if request.tunnels_on(response.status) {
        response.body = Framing::Tunnel;
    }
    let learned = match cookie::response_cookie(&response.headers, &backend.stick_cookie) {
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
    client
        .write_all(&response_buf[..whole.unwrap_or(len)])
        .await?;
    response_buf.advance(whole.unwrap_or(len));
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

/// Copies a chunked body (its chunks, the last chunk and the trailers) as it is, reading
/// `buf` first, then `from`; returns the payload size. Leaves in `buf` what follows it.
async fn copy_chunked<R, W>(buf: &mut BytesMut, from: &mut R, to: &mut W) -> std::io::Result<u64>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut payload = 0u64;
    loop {
        let line = read_line(buf, from).await?;
        let text = std::str::from_utf8(&buf[..line]).map_err(|_| bad_chunk())?;
        let size = text.trim_end().split(';').next().unwrap_or("").trim();
        let size = u64::from_str_radix(size, 16).map_err(|_| bad_chunk())?;
        to.write_all(&buf[..line]).await?;
        buf.advance(line);
        if size == 0 {
            // Trailers, then the empty line.
            loop {
                let line = read_line(buf, from).await?;
                let empty = line == 2;
                to.write_all(&buf[..line]).await?;
                buf.advance(line);
                if empty {
                    return Ok(payload);
                }
            }
        }
        copy_body(buf, from, to, size).await?;
        let crlf = read_line(buf, from).await?;
        if crlf != 2 {
            return Err(bad_chunk());
        }
        to.write_all(&buf[..2]).await?;
        buf.advance(2);
        payload += size;
    }
}

fn bad_chunk() -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, "bad chunked encoding")
}

/// Reads until `buf` starts with a CRLF-terminated line (at most 4 KiB); its length.
async fn read_line<R: AsyncRead + Unpin>(
    buf: &mut BytesMut,
    from: &mut R,
) -> std::io::Result<usize> {
    loop {
        if let Some(i) = buf.windows(2).position(|w| w == b"\r\n") {
            return Ok(i + 2);
        }
        if buf.len() > 4096 {
            return Err(bad_chunk());
        }
        if from.read_buf(buf).await? == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "closed in the middle of a chunked body",
            ));
        }
    }
}

/// Copies `len` body bytes: first from `buf`, then from `from`.
async fn copy_body<R, W>(
    buf: &mut BytesMut,
    from: &mut R,
    to: &mut W,
    len: u64,
) -> std::io::Result<()>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let buffered = usize::try_from(len).unwrap_or(usize::MAX).min(buf.len());
    if buffered > 0 {
        to.write_all(&buf[..buffered]).await?;
        buf.advance(buffered);
    }
    let mut left = len - buffered as u64;
    if left == 0 {
        return Ok(());
    }
    // Only bodies larger than what came with the head get here: small answers allocate nothing.
    let mut chunk = vec![0u8; usize::try_from(left).unwrap_or(CHUNK).min(CHUNK)];
    while left > 0 {
        let want = usize::try_from(left).unwrap_or(CHUNK).min(chunk.len());
        let n = from.read(&mut chunk[..want]).await?;
        if n == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "closed in the middle of a body",
            ));
        }
        to.write_all(&chunk[..n]).await?;
        left -= n as u64;
    }
    Ok(())
}

/// The connection is a tunnel to its server: hands it to the kernel as soon as both legs are
/// quiet, relaying what either side sends meanwhile; then, or when it cannot be spliced, relays
/// bytes both ways until both sides closed. `pending`: client bytes read after the request head.
async fn splice_tunnel(
    mut client: TcpStream,
    mut upstream: TcpStream,
    pending: BytesMut,
    mut handoff: Option<crate::fastpath::runtime::Handoff>,
    fastpath: &Arc<Runtime>,
) -> Release {
    if !pending.is_empty() && upstream.write_all(&pending).await.is_err() {
        if let Some(h) = handoff {
            fastpath.forget(h);
        }
        return Release::Done;
    }
    // What arrives before the hand-off is passed on as it comes, not gathered.
    let mut chunk = vec![0u8; 16 * 1024];
    while let Some(h) = handoff.take() {
        match fastpath.try_splice(h, &client).await {
            Attempt::Spliced => {
                tracing::debug!("tunnel spliced");
                return Release::Done;
            }
            Attempt::Again(h) => handoff = Some(h),
            Attempt::Never => break,
        }
        if !matches!(
            relay_ready(&mut client, &mut upstream, &mut chunk).await,
            Ok(true)
        ) {
            // A side closed (or failed): the rest is relayed here, half-closes included.
            if let Some(h) = handoff.take() {
                fastpath.forget(h);
            }
        }
    }
    tunnel(&mut client, &mut upstream, &[]).await;
    Release::Done
}

/// Waits until either side of a tunnel has something, and passes on what is there. `false`
/// when that side has closed.
async fn relay_ready(
    client: &mut TcpStream,
    upstream: &mut TcpStream,
    chunk: &mut [u8],
) -> std::io::Result<bool> {
    let client_first = tokio::select! {
        ready = client.readable() => { ready?; true }
        ready = upstream.readable() => { ready?; false }
    };
    let (from, to) = if client_first {
        (client, upstream)
    } else {
        (upstream, client)
    };
    match from.try_read(chunk) {
        Ok(0) => Ok(false),
        Ok(n) => {
            to.write_all(&chunk[..n]).await?;
            Ok(true)
        }
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => Ok(true),
        Err(e) => Err(e),
    }
}

/// Relays bytes both ways until both sides closed; `pending` goes to the server first.
async fn tunnel(client: &mut TcpStream, upstream: &mut TcpStream, pending: &[u8]) {
    if upstream.write_all(pending).await.is_ok() {
        let _ = tokio::io::copy_bidirectional(client, upstream).await;
    }
}

/// Reads until `buf` holds a complete message head; its length, `None` on EOF first.
async fn read_head(
    stream: &mut TcpStream,
    buf: &mut BytesMut,
    max: usize,
) -> std::io::Result<Option<usize>> {
    loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            return Ok(Some(i + 4));
        }
        if buf.len() > max {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                "head too large",
            ));
        }
        if stream.read_buf(buf).await? == 0 {
            return Ok(None);
        }
    }
}

/// A request the relay forwards itself: HTTP/1.1, keep-alive, a body framed by Content-Length
/// (or none), no upgrade, no `Expect`.
fn parse_request(bytes: &[u8]) -> Option<RequestHead> {
    let mut slots = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut parsed = httparse::Request::new(&mut slots);
    if !parsed.parse(bytes).ok()?.is_complete() || parsed.version != Some(1) {
        return None;
    }
    let headers = header_map(parsed.headers)?;
    let body = content_length(&headers)?.unwrap_or(0);
    let refused = [hyper::header::TRANSFER_ENCODING, hyper::header::EXPECT];
    if refused.iter().any(|h| headers.contains_key(h)) || request_wants_close(&headers) {
        return None;
    }
    // An upgrade request carries no body, and names itself in Connection.
    let upgrade = headers::upgrade_protocol(&headers);
    if headers.contains_key(hyper::header::UPGRADE) && (upgrade.is_none() || body != 0) {
        return None;
    }
    let method = parsed.method?.to_owned();
    if method == "CONNECT" && body != 0 {
        return None;
    }
    Some(RequestHead {
        method,
        path: parsed.path?.to_owned(),
        headers,
        body,
        upgrade,
    })
}

fn parse_response(bytes: &[u8], head_request: bool) -> Option<ResponseHead> {
    let mut slots = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut parsed = httparse::Response::new(&mut slots);
    if !parsed.parse(bytes).ok()?.is_complete() {
        return None;
    }
    let status = parsed.code?;
    let headers = header_map(parsed.headers)?;
    let close = parsed.version != Some(1) || request_wants_close(&headers);
    let body = if (100..200).contains(&status) {
        // 1xx (e.g. 101) has no body, but what follows is not HTTP.
        Framing::Unframed
    } else if head_request || status == 204 || status == 304 {
        Framing::Length(0)
    } else if let Some(codings) = headers.get(hyper::header::TRANSFER_ENCODING) {
        let last = codings
            .to_str()
            .ok()?
            .rsplit(',')
            .next()?
            .trim()
            .to_ascii_lowercase();
        if last == "chunked"
            && headers
                .get_all(hyper::header::TRANSFER_ENCODING)
                .iter()
                .count()
                == 1
        {
            Framing::Chunked
        } else {
            Framing::Unframed
        }
    } else {
        content_length(&headers)?.map_or(Framing::Unframed, Framing::Length)
    };
    Some(ResponseHead {
        status,
        headers,
        body,
        close,
    })
}

fn header_map(parsed: &[httparse::Header<'_>]) -> Option<HeaderMap> {
    let mut map = HeaderMap::with_capacity(parsed.len());
    for h in parsed {
        let name = HeaderName::from_bytes(h.name.as_bytes()).ok()?;
        let value = HeaderValue::from_bytes(h.value).ok()?;
        map.append(name, value);
    }
    Some(map)
}

/// `Some(None)` without Content-Length, `None` when it is invalid or repeated differently.
fn content_length(headers: &HeaderMap) -> Option<Option<u64>> {
    let mut values = headers.get_all(hyper::header::CONTENT_LENGTH).iter();
    let Some(first) = values.next() else {
        return Some(None);
    };
    let len: u64 = first.to_str().ok()?.trim().parse().ok()?;
    if values.any(|v| v != first) {
        return None;
    }
    Some(Some(len))
}

fn request_wants_close(headers: &HeaderMap) -> bool {
    headers::connection_has(headers, "close")
}

/// The request head as it goes to the server: hop-by-hop headers dropped, the client appended
/// to `X-Forwarded-For`.
fn request_head(request: &RequestHead, client: SocketAddr) -> Vec<u8> {
    let mut headers = request.headers.clone();
    headers::remove_hop_by_hop(&mut headers);
    if let Some(protocol) = &request.upgrade {
        headers::keep_upgrade(&mut headers, protocol.clone());
    }
    headers::append_forwarded_for(&mut headers, client.ip());
    let mut out = Vec::with_capacity(512);
    out.extend_from_slice(request.method.as_bytes());
    out.push(b' ');
    out.extend_from_slice(request.path.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    for (name, value) in &headers {
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn simple_requests_are_relayed_others_go_to_hyper() {
        let get = parse_request(b"GET /a?b HTTP/1.1\r\nHost: x\r\nCookie: S=1\r\n\r\n").unwrap();
        assert_eq!(
            (get.method.as_str(), get.path.as_str(), get.body),
            ("GET", "/a?b", 0)
        );
        let post = parse_request(b"POST / HTTP/1.1\r\nContent-Length: 5\r\n\r\n").unwrap();
        assert_eq!(post.body, 5);
        for refused in [
            &b"GET / HTTP/1.0\r\n\r\n"[..],
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n",
            b"GET / HTTP/1.1\r\nConnection: close\r\n\r\n",
            b"GET / HTTP/1.1\r\nUpgrade: websocket\r\n\r\n",
            b"POST / HTTP/1.1\r\nUpgrade: x\r\nConnection: upgrade\r\nContent-Length: 3\r\n\r\n",
            b"CONNECT h:1 HTTP/1.1\r\nContent-Length: 3\r\n\r\n",
            b"POST / HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 1\r\n\r\n",
            b"POST / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
            b"GET / HTTP/1.1\r\nContent-Length: x\r\n\r\n",
        ] {
            assert!(
                parse_request(refused).is_none(),
                "{:?}",
                String::from_utf8_lossy(refused)
            );
        }
    }

    #[test]
    fn upgrades_and_connect_are_relayed_and_tunnel_on_their_answer() {
        let ws = parse_request(
            b"GET /chat HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\nConnection: keep-alive, Upgrade\r\n\r\n",
        )
        .unwrap();
        assert!(ws.tunnels_on(101));
        assert!(
            !ws.tunnels_on(200),
            "a declined upgrade is a plain response"
        );
        let head = String::from_utf8(request_head(&ws, "10.0.0.9:5000".parse().unwrap())).unwrap();
        assert!(head.contains("upgrade: websocket\r\n"), "{head}");
        assert!(head.contains("connection: upgrade\r\n"), "{head}");
        assert!(!head.contains("keep-alive"), "{head}");
        let connect = parse_request(b"CONNECT db:5432 HTTP/1.1\r\nHost: db:5432\r\n\r\n").unwrap();
        assert!(connect.tunnels_on(200));
        assert!(!connect.tunnels_on(101) && !connect.tunnels_on(407));
        let get = parse_request(b"GET / HTTP/1.1\r\n\r\n").unwrap();
        assert!(!get.tunnels_on(101) && !get.tunnels_on(200));
    }

    #[test]
    fn response_framing() {
        let r = parse_response(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\n", false).unwrap();
        assert_eq!(
            (r.status, r.body, r.close),
            (200, Framing::Length(3), false)
        );
        let r = parse_response(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\n", true).unwrap();
        assert_eq!(r.body, Framing::Length(0));
        let r = parse_response(b"HTTP/1.1 204 No Content\r\n\r\n", false).unwrap();
        assert_eq!(r.body, Framing::Length(0));
        let r = parse_response(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
            false,
        )
        .unwrap();
        assert_eq!(r.body, Framing::Chunked);
        let r = parse_response(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
            false,
        )
        .unwrap();
        assert_eq!(r.body, Framing::Chunked);
        let r = parse_response(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, gzip\r\n\r\n",
            false,
        )
        .unwrap();
        assert_eq!(r.body, Framing::Unframed);
        let r = parse_response(b"HTTP/1.1 200 OK\r\n\r\n", false).unwrap();
        assert_eq!(r.body, Framing::Unframed, "until close");
        let r = parse_response(b"HTTP/1.1 101 Switching\r\nUpgrade: ws\r\n\r\n", false).unwrap();
        assert_eq!(r.body, Framing::Unframed);
        let r = parse_response(
            b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 0\r\n\r\n",
            false,
        )
        .unwrap();
        assert!(r.close);
        assert!(
            parse_response(b"HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n", false)
                .unwrap()
                .close
        );
    }

    #[test]
    fn request_head_is_rewritten() {
        let request = parse_request(
            b"GET /x HTTP/1.1\r\nHost: h\r\nKeep-Alive: 5\r\nX-Forwarded-For: 1.2.3.4\r\n\r\n",
        )
        .unwrap();
        let head = request_head(&request, "10.0.0.9:5000".parse().unwrap());
        let text = String::from_utf8(head).unwrap();
        assert!(text.starts_with("GET /x HTTP/1.1\r\n"), "{text}");
        assert!(text.contains("host: h\r\n"));
        assert!(text.contains("x-forwarded-for: 1.2.3.4, 10.0.0.9\r\n"));
        assert!(!text.contains("keep-alive"));
        assert!(text.ends_with("\r\n\r\n"));
    }

    #[tokio::test]
    async fn bodies_are_copied_from_the_buffer_then_the_stream() {
        let body = b"0123456789NEXT";
        for split in [0, 4, 10, 14] {
            let mut buf = BytesMut::from(&body[..split]);
            let mut rest = &body[split..];
            let mut out = Vec::new();
            copy_body(&mut buf, &mut rest, &mut out, 10).await.unwrap();
            assert_eq!(out, b"0123456789", "split {split}");
            let mut leftover = buf.to_vec();
            leftover.extend_from_slice(rest);
            assert_eq!(leftover, b"NEXT", "split {split}");
        }
        let mut buf = BytesMut::from(&b"01"[..]);
        let err = copy_body(&mut buf, &mut &b"234"[..], &mut Vec::new(), 10).await;
        assert!(err.is_err(), "closed mid-body");
    }

    #[tokio::test]
    async fn chunked_bodies_are_copied_to_their_end() {
        let body = b"5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nX-Trailer: t\r\n\r\nNEXT";
        for split in [0, 3, 12, 30, body.len()] {
            let mut buf = BytesMut::from(&body[..split]);
            let mut rest = &body[split..];
            let mut out = Vec::new();
            let payload = copy_chunked(&mut buf, &mut rest, &mut out).await.unwrap();
            assert_eq!(payload, 11);
            let mut leftover = buf.to_vec();
            leftover.extend_from_slice(rest);
            assert_eq!(leftover, b"NEXT", "split {split}");
            assert_eq!(out, &body[..body.len() - 4]);
        }
        let mut buf = BytesMut::from(&b"zz\r\n"[..]);
        let err = copy_chunked(&mut buf, &mut &b""[..], &mut Vec::new()).await;
        assert!(err.is_err());
        let mut buf = BytesMut::from(&b"5\r\nhel"[..]);
        let err = copy_chunked(&mut buf, &mut &b""[..], &mut Vec::new()).await;
        assert!(err.is_err(), "closed mid-chunk");
    }
}
