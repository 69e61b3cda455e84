//! The relay's forwarding and delivering phases: a request (head rewritten, body by
//! Content-Length) to the server and its response head back, then the response to the client,
//! with a hand-off to the kernel when one is asked for. Which side failed is in the error.

use std::{
    sync::{atomic::Ordering::Relaxed, Arc},
    time::Duration,
};

use bytes::{Buf as _, BytesMut};
use tokio::io::AsyncWriteExt as _;

use super::{
    io::{copy_body, copy_chunked, read_head, Broken},
    leg::{Leg, Tried},
    ClientIo,
};
use crate::{
    backend::{BackendState, ServerState},
    proxy::{
        error::{BodyError, ProxyError},
        exchange,
        message::{Framing, RequestHead, ResponseHead},
    },
};

/// The relay's server connection failed; `answered`: the client heard part of the answer.
pub(super) fn server_failed(leg: &Leg, answered: bool, source: std::io::Error) -> ProxyError {
    ProxyError::ServerIo {
        server: Arc::clone(&leg.server.name),
        answered,
        reused: leg.reused,
        source,
    }
}

/// Whether a failed exchange is tried once more, on a new connection: the error allows it (a
/// reused connection failed before answering), the connection is a pooled one, and the request
/// can be sent again as it is (idempotent, no body) to a server of our choosing.
pub(super) fn retry_on_a_new_connection(
    error: &ProxyError,
    leg: &Leg,
    request: &RequestHead,
) -> bool {
    error.retry_allowed()
        && leg.splice.is_none()
        && request.body == 0
        && matches!(request.method(), "GET" | "HEAD" | "OPTIONS")
}

/// Sends the request (head already rewritten, body by Content-Length from `buf` then the
/// client) and reads the response head. Nothing reaches the client: a failure here can still
/// be answered. Returns the parsed head, what was read with it, and the head's length.
pub(super) async fn forward<C: ClientIo>(
    client: &mut C,
    leg: &mut Leg,
    buf: &mut BytesMut,
    out_head: &[u8],
    (request, cookie): (&RequestHead, &str),
    server_timeout: Duration,
) -> Result<Answer, ProxyError> {
    if let Err(error) = leg.stream.write_all(out_head).await {
        return Err(server_failed(leg, false, error));
    }
    match copy_body(buf, client, &mut leg.stream, request.body).await {
        Ok(()) => {}
        Err(Broken::Reading(error)) => {
            return Err(ProxyError::ClientBody(BodyError::Relayed(error)))
        }
        Err(Broken::Writing(error)) => return Err(server_failed(leg, false, error)),
    }
    leg.server.stats.bytes_in.fetch_add(request.body, Relaxed);
    let mut response_buf = BytesMut::with_capacity(8192);
    let read = tokio::time::timeout(
        server_timeout,
        read_head(&mut leg.stream, &mut response_buf, 64 * 1024),
    )
    .await;
    let len = match read {
        Ok(Ok(Some(len))) => len,
        Ok(Ok(None)) => return Err(server_failed(leg, false, eof("no response head"))),
        Ok(Err(error)) => return Err(server_failed(leg, false, error)),
        Err(_) => {
            let timeout = std::io::Error::new(std::io::ErrorKind::TimedOut, "server timeout");
            return Err(server_failed(leg, false, timeout));
        }
    };
    let head_request = request.method() == "HEAD";
    let Some(mut response) = ResponseHead::parse(&response_buf[..len], head_request, cookie) else {
        return Err(server_failed(leg, false, invalid("bad response head")));
    };
    if request.tunnels_on(response.status) {
        response.body = Framing::Tunnel;
    }
    Ok(Answer {
        head: response,
        buf: response_buf,
        len,
    })
}

/// A response head the server sent, with what was read along with it.
pub(super) struct Answer {
    pub(super) head: ResponseHead,
    /// The head, then what followed it.
    buf: BytesMut,
    /// The head's length.
    len: usize,
}

/// A connection to `server` could not be opened (nothing was sent on it).
pub(super) fn unreached(server: &ServerState, source: std::io::Error) -> ProxyError {
    ProxyError::ServerIo {
        server: Arc::clone(&server.name),
        answered: false,
        reused: false,
        source,
    }
}

pub(super) fn eof(what: &'static str) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::UnexpectedEof, what)
}

pub(super) fn invalid(what: &'static str) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, what)
}

/// Which side a copy toward the client broke on: reading the server, or writing the client.
fn delivery_failed(leg: &Leg, broken: Broken) -> ProxyError {
    match broken {
        Broken::Reading(error) => server_failed(leg, true, error),
        Broken::Writing(error) => ProxyError::ClientGone(error),
    }
}

/// A delivered answer.
pub(super) struct Delivered {
    pub(super) response: ResponseHead,
    /// The response set the stickiness cookie (now in the table).
    pub(super) learned: bool,
    /// The body's size (0 when close-delimited or a tunnel).
    pub(super) body: u64,
    /// How the hand-off attempt made with it went, if one was made.
    pub(super) tried: Option<Tried>,
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
pub(super) async fn deliver<C: ClientIo>(
    client: &mut C,
    leg: &mut Leg,
    answer: Answer,
    backend: &BackendState,
    request: &RequestHead,
    hand_off: Option<Duration>,
) -> Result<Delivered, ProxyError> {
    let Answer {
        head: response,
        buf: mut response_buf,
        len,
    } = answer;
    let learned = match &response.sets_cookie {
        Some(set) => {
            exchange::learn(backend, set, &leg.server);
            true
        }
        None => false,
    };
    if response.body == Framing::Tunnel {
        // The head and what the server sent after it, the start of the tunnel.
        let mut tried = None;
        if let Some(limit) = hand_off {
            tried = hand_over_tunnel(client, leg, &mut response_buf, limit)
                .await
                .map_err(ProxyError::Handoff)?;
        }
        if !tried.is_some_and(Tried::wrote) {
            client
                .write_all(&response_buf)
                .await
                .map_err(ProxyError::ClientGone)?;
            client.flush().await.map_err(ProxyError::ClientGone)?;
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
        tried = leg
            .try_splice(client, answer, limit)
            .await
            .transpose()
            .map_err(ProxyError::Handoff)?;
    }
    if !tried.is_some_and(Tried::wrote) {
        client
            .write_all(answer)
            .await
            .map_err(ProxyError::ClientGone)?;
    }
    response_buf.advance(sent);
    // The body's size, for a framed body.
    let framed = match response.body {
        Framing::Length(body) if whole.is_some() => Some(body),
        Framing::Length(body) => {
            copy_body(&mut response_buf, &mut leg.stream, client, body)
                .await
                .map_err(|broken| delivery_failed(leg, broken))?;
            Some(body)
        }
        Framing::Chunked => Some(
            copy_chunked(&mut response_buf, &mut leg.stream, client)
                .await
                .map_err(|broken| delivery_failed(leg, broken))?,
        ),
        Framing::Unframed | Framing::Tunnel => {
            // What the server sent after the head: the start of the body, or of the tunnel.
            client
                .write_all(&response_buf)
                .await
                .map_err(ProxyError::ClientGone)?;
            response_buf.clear();
            None
        }
    };
    if let Some(body) = framed {
        leg.server.stats.bytes_out.fetch_add(body, Relaxed);
        if !response_buf.is_empty() {
            let extra = invalid("the server sent more than its response");
            return Err(server_failed(leg, true, extra));
        }
    }
    // All of it on its way before the relay waits for anything else: a TLS client's last
    // bytes may still be in the TLS buffer (see `io`), and the client sends nothing until it has
    // them.
    client.flush().await.map_err(ProxyError::ClientGone)?;
    // A larger answer: tried once it is all written.
    if let (Some(limit), None, Some(_)) = (hand_off, held, framed) {
        tried = leg
            .try_splice(client, &[], limit)
            .await
            .transpose()
            .map_err(ProxyError::Handoff)?;
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
async fn hand_over_tunnel<C: ClientIo>(
    client: &mut C,
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
