//! The relay's server side for requests hyper read (HTTP/2, and the HTTP/1.x requests the
//! relay hands to hyper): a request without a body to a cleartext server goes over the relay's
//! pooled keep-alive connections ([`super::leg`]) instead of hyper's client. The head is
//! written in one piece, the answer's head read and parsed as the relay reads it, and its body
//! decoded into a body hyper sends on; a connection goes back to its pool once the body has
//! ended as its framing said. Everything happens in the request's own task: no connection
//! task, no channel between the two, which is where hyper's client spent its time.
//!
//! A reused connection that fails before the server answered a `GET`, `HEAD` or `OPTIONS`
//! is retried once on a new connection, as the relay does.

use std::{
    pin::Pin,
    sync::Arc,
    task::{ready, Context, Poll},
    time::Duration,
};

use bytes::{Buf as _, Bytes, BytesMut};
use hyper::body::{Body, Frame, SizeHint};
use tokio::io::AsyncWriteExt as _;

use super::{
    forward::{eof, invalid, server_failed, unreached},
    io::{chunk_size, read_head},
    leg::Leg,
};
use crate::{
    backend::ServerState,
    proxy::{
        error::ProxyError,
        message::{Framing, ResponseHead},
        pool::Pools,
    },
};

/// The largest response head read from a server.
const MAX_HEAD: usize = 64 * 1024;
/// The most read from a server connection at once.
const READ_SIZE: usize = 16 * 1024;
/// The first read of an answer: a head and a small body fit, and a buffer this small comes
/// from the allocator's per-thread cache (a larger one takes its slow path at every request);
/// it grows for a larger head, and the body's reads take [`READ_SIZE`].
const FIRST_READ: usize = 1000;
/// The longest chunk-size or trailer line accepted.
const MAX_LINE: usize = 4096;

/// One request to send: its HTTP/1.1 head (see `headers::http11_head`), and whether it is a
/// `HEAD` (no body follows the answer) and can be sent again on a new connection.
pub(in crate::proxy) struct Request {
    pub(in crate::proxy) head: Vec<u8>,
    pub(in crate::proxy) head_request: bool,
    pub(in crate::proxy) repeatable: bool,
}

/// The server's answer: its status, its end-to-end headers, the cookie it set and its body.
pub(in crate::proxy) struct Answer {
    pub(in crate::proxy) status: hyper::StatusCode,
    pub(in crate::proxy) headers: hyper::HeaderMap,
    pub(in crate::proxy) body: PooledBody,
}

/// Sends `request` to `server` over a pooled connection (or a new one) and reads the answer's
/// head; `timeouts`: connect, then server (for the head). `cookie`: the stickiness cookie's
/// name.
pub(in crate::proxy) async fn exchange(
    pools: &Pools,
    server: &Arc<ServerState>,
    request: &Request,
    cookie: &str,
    (connect, server_timeout): (Duration, Duration),
) -> Result<Answer, ProxyError> {
    let mut leg = Leg::open(Arc::clone(server), pools, connect)
        .await
        .map_err(|source| unreached(server, source))?;
    let mut retried = false;
    loop {
        match send(&mut leg, request, cookie, server_timeout).await {
            Ok(answer) => return Ok(answer.into_answer(leg)),
            Err(error) if !retried && request.repeatable && error.retry_allowed() => {
                tracing::debug!(%error, server = %server.name, "a reused server connection failed before answering; retrying once on a new one");
                retried = true;
                leg = leg
                    .reopen(connect)
                    .await
                    .map_err(|source| unreached(server, source))?;
            }
            Err(error) => return Err(error),
        }
    }
}

/// The head of an answer, with what was read after it.
struct Head {
    response: ResponseHead,
    status: hyper::StatusCode,
    headers: hyper::HeaderMap,
    rest: BytesMut,
}

impl Head {
    fn into_answer(self, leg: Leg) -> Answer {
        let decoder = match self.response.body {
            Framing::Length(len) => Decoder::Length(len),
            Framing::Chunked => Decoder::ChunkSize,
            Framing::Unframed | Framing::Tunnel => Decoder::UntilClose,
        };
        Answer {
            status: self.status,
            headers: self.headers,
            body: PooledBody {
                server: Arc::clone(&leg.server.name),
                leg: Some(leg),
                buf: self.rest,
                decoder,
                reusable: !self.response.close,
            },
        }
    }
}

/// Writes the request and reads the final answer's head (interim `1xx` answers are skipped).
async fn send(
    leg: &mut Leg,
    request: &Request,
    cookie: &str,
    server_timeout: Duration,
) -> Result<Head, ProxyError> {
    if let Err(error) = leg.stream.write_all(&request.head).await {
        return Err(server_failed(leg, false, error));
    }
    let mut buf = BytesMut::with_capacity(FIRST_READ);
    loop {
        let read = tokio::time::timeout(
            server_timeout,
            read_head(&mut leg.stream, &mut buf, MAX_HEAD),
        )
        .await
        .map_err(|_| ProxyError::UpstreamTimeout {
            server: Arc::clone(&leg.server.name),
        })?;
        let len = match read {
            Ok(Some(len)) => len,
            Ok(None) => return Err(server_failed(leg, false, eof("closed before answering"))),
            Err(error) => return Err(server_failed(leg, false, error)),
        };
        let head = buf.split_to(len).freeze();
        let Some((response, status, headers)) =
            ResponseHead::parse_for_hyper(&head, request.head_request, cookie)
        else {
            return Err(server_failed(leg, false, invalid("bad response head")));
        };
        // An interim answer (`100 Continue`, `103 Early Hints`): the final one follows. A
        // `101` cannot come: no upgrade is sent this way.
        if status.is_informational() && status != hyper::StatusCode::SWITCHING_PROTOCOLS {
            continue;
        }
        return Ok(Head {
            response,
            status,
            headers,
            rest: buf,
        });
    }
}

/// An answer's body, read from its server connection as hyper asks for it. The connection
/// goes back to its pool when the body ended as framed with nothing after it; it is closed
/// otherwise, or when the body is dropped before its end.
pub(in crate::proxy) struct PooledBody {
    server: Arc<str>,
    leg: Option<Leg>,
    buf: BytesMut,
    decoder: Decoder,
    /// The server did not say it closes after this answer.
    reusable: bool,
}

impl PooledBody {
    /// The end of the body: the connection goes back to its pool if it can serve again (the
    /// body ended as framed, the server keeps it open, and sent nothing more).
    fn finish(&mut self) {
        if let Some(leg) = self.leg.take() {
            let framed = matches!(self.decoder, Decoder::Done | Decoder::Length(0));
            leg.finish(self.reusable && framed && self.buf.is_empty());
        }
    }

    /// The body broke: the connection is closed, and the client's stream reset.
    fn fail(&mut self, source: std::io::Error) -> ProxyError {
        self.leg = None;
        ProxyError::ServerIo {
            server: Arc::clone(&self.server),
            answered: true,
            reused: false,
            source,
        }
    }
}

/// hyper stops asking once [`Body::is_end_stream`] says the body is complete, and drops it:
/// the connection goes back to its pool then.
impl Drop for PooledBody {
    fn drop(&mut self) {
        if self.is_end_stream() {
            self.finish();
        }
    }
}

impl Body for PooledBody {
    type Data = Bytes;
    type Error = ProxyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, ProxyError>>> {
        let this = self.get_mut();
        loop {
            match this.decoder.step(&mut this.buf) {
                Step::Data(data) => return Poll::Ready(Some(Ok(Frame::data(data)))),
                Step::Done => {
                    this.finish();
                    return Poll::Ready(None);
                }
                Step::Invalid => {
                    return Poll::Ready(Some(Err(this.fail(invalid("bad chunked encoding")))))
                }
                Step::More => {}
            }
            let Some(leg) = this.leg.as_mut() else {
                return Poll::Ready(None);
            };
            this.buf.reserve(READ_SIZE);
            let read = loop {
                match leg.stream.try_read_buf(&mut this.buf) {
                    Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => {
                        if let Err(error) = ready!(leg.stream.poll_read_ready(cx)) {
                            break Err(error);
                        }
                    }
                    other => break other,
                }
            };
            match read {
                Ok(0) if this.decoder == Decoder::UntilClose => {
                    this.reusable = false;
                    this.decoder = Decoder::Done;
                }
                Ok(0) => {
                    let error = eof("closed before the end of the body");
                    return Poll::Ready(Some(Err(this.fail(error))));
                }
                Ok(_) => {}
                Err(error) => return Poll::Ready(Some(Err(this.fail(error)))),
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.decoder == Decoder::Done || self.decoder == Decoder::Length(0)
    }

    fn size_hint(&self) -> SizeHint {
        match self.decoder {
            Decoder::Length(len) => SizeHint::with_exact(len),
            Decoder::Done => SizeHint::with_exact(0),
            _ => SizeHint::default(),
        }
    }
}

/// Where a response body is in its framing: what the next bytes are.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Decoder {
    /// This many body bytes are left.
    Length(u64),
    /// A chunk-size line.
    ChunkSize,
    /// This many bytes of the current chunk are left.
    ChunkData(u64),
    /// The CRLF after a chunk's data.
    ChunkEnd,
    /// Trailer lines, until the empty one (trailers are not passed on).
    Trailers,
    /// Everything until the server closes.
    UntilClose,
    Done,
}

/// What [`Decoder::step`] found in the buffer.
#[derive(Debug, PartialEq, Eq)]
enum Step {
    Data(Bytes),
    /// More bytes are needed.
    More,
    Done,
    /// Not a valid chunked body.
    Invalid,
}

impl Decoder {
    /// Decodes what it can from the front of `buf`: body bytes, or the end.
    fn step(&mut self, buf: &mut BytesMut) -> Step {
        loop {
            match *self {
                Self::Length(0) => {
                    *self = Self::Done;
                    return Step::Done;
                }
                Self::Length(left) => match take(buf, left) {
                    Some(data) => {
                        *self = Self::Length(left - data.len() as u64);
                        return Step::Data(data);
                    }
                    None => return Step::More,
                },
                Self::ChunkSize => {
                    let Some(line) = line(buf) else {
                        return more_or_invalid(buf);
                    };
                    let size = chunk_size(&buf[..line]);
                    buf.advance(line);
                    *self = match size {
                        Some(0) => Self::Trailers,
                        Some(size) => Self::ChunkData(size),
                        None => return Step::Invalid,
                    };
                }
                Self::ChunkData(left) => match take(buf, left) {
                    Some(data) => {
                        let left = left - data.len() as u64;
                        *self = if left == 0 {
                            Self::ChunkEnd
                        } else {
                            Self::ChunkData(left)
                        };
                        return Step::Data(data);
                    }
                    None => return Step::More,
                },
                Self::ChunkEnd => {
                    if buf.len() < 2 {
                        return Step::More;
                    }
                    if &buf[..2] != b"\r\n" {
                        return Step::Invalid;
                    }
                    buf.advance(2);
                    *self = Self::ChunkSize;
                }
                Self::Trailers => {
                    let Some(line) = line(buf) else {
                        return more_or_invalid(buf);
                    };
                    buf.advance(line);
                    if line == 2 {
                        *self = Self::Done;
                        return Step::Done;
                    }
                }
                Self::UntilClose => {
                    if buf.is_empty() {
                        return Step::More;
                    }
                    return Step::Data(buf.split().freeze());
                }
                Self::Done => return Step::Done,
            }
        }
    }
}

/// Up to `left` bytes from the front of `buf`; `None` when it is empty.
fn take(buf: &mut BytesMut, left: u64) -> Option<Bytes> {
    if buf.is_empty() {
        return None;
    }
    let n = usize::try_from(left).unwrap_or(usize::MAX).min(buf.len());
    Some(buf.split_to(n).freeze())
}

/// The length of the CRLF-terminated line at the front of `buf`, if it is all there.
fn line(buf: &[u8]) -> Option<usize> {
    buf.windows(2).position(|w| w == b"\r\n").map(|i| i + 2)
}

fn more_or_invalid(buf: &[u8]) -> Step {
    if buf.len() > MAX_LINE {
        Step::Invalid
    } else {
        Step::More
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Decodes `input` fed in pieces of `piece` bytes; the body and whether it ended.
    fn decode(mut decoder: Decoder, input: &[u8], piece: usize) -> (Vec<u8>, Step) {
        let mut buf = BytesMut::new();
        let mut body = Vec::new();
        let mut pieces = input.chunks(piece);
        loop {
            match decoder.step(&mut buf) {
                Step::Data(data) => body.extend_from_slice(&data),
                Step::More => match pieces.next() {
                    Some(p) => buf.extend_from_slice(p),
                    None => return (body, Step::More),
                },
                end => return (body, end),
            }
        }
    }

    #[test]
    fn chunked_bodies_are_decoded_whatever_the_pieces() {
        let input = b"5;ext=1\r\nhello\r\nb\r\n, world!!!!\r\n0\r\nx-trailer: 1\r\n\r\n";
        for piece in [1, 2, 3, 7, 64] {
            let (body, end) = decode(Decoder::ChunkSize, input, piece);
            assert_eq!(body, b"hello, world!!!!", "piece {piece}");
            assert_eq!(end, Step::Done, "piece {piece}");
        }
    }

    #[test]
    fn what_follows_the_body_stays_in_the_buffer() {
        let mut buf = BytesMut::from(&b"abcHTTP/1.1"[..]);
        let mut decoder = Decoder::Length(3);
        assert_eq!(
            decoder.step(&mut buf),
            Step::Data(Bytes::from_static(b"abc"))
        );
        assert_eq!(decoder.step(&mut buf), Step::Done);
        assert_eq!(&buf[..], b"HTTP/1.1", "not reusable: the caller sees it");
        let mut buf = BytesMut::from(&b"0\r\n\r\nextra"[..]);
        let mut decoder = Decoder::ChunkSize;
        assert_eq!(decoder.step(&mut buf), Step::Done);
        assert_eq!(&buf[..], b"extra");
    }

    #[test]
    fn bad_chunked_bodies_are_refused() {
        for bad in [&b"zz\r\n"[..], b"3\r\nabcX\r\n", &[b'1'; MAX_LINE + 10][..]] {
            let (_, end) = decode(Decoder::ChunkSize, bad, 5);
            assert_eq!(end, Step::Invalid, "{:?}", String::from_utf8_lossy(bad));
        }
        let (_, end) = decode(Decoder::ChunkSize, b"5\r\nhel", 2);
        assert_eq!(end, Step::More, "cut short: the caller sees EOF");
    }

    /// A server that answers every request on a connection with `answer`, and counts its
    /// connections.
    async fn server(
        answer: &'static [u8],
    ) -> (Arc<ServerState>, Arc<std::sync::atomic::AtomicUsize>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let server = Arc::new(ServerState::new("s1", listener.local_addr().unwrap()));
        let accepted = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counted = Arc::clone(&accepted);
        tokio::spawn(async move {
            loop {
                let (mut conn, _) = listener.accept().await.unwrap();
                counted.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                tokio::spawn(async move {
                    let mut buf = BytesMut::new();
                    loop {
                        match read_head(&mut conn, &mut buf, MAX_HEAD).await {
                            Ok(Some(len)) => buf.advance(len),
                            _ => return,
                        }
                        if conn.write_all(answer).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        (server, accepted)
    }

    #[test]
    fn a_body_until_close_passes_everything() {
        let (body, end) = decode(Decoder::UntilClose, b"anything at all", 4);
        assert_eq!(body, b"anything at all");
        assert_eq!(end, Step::More);
        let (body, end) = decode(Decoder::Length(0), b"", 4);
        assert_eq!((body.len(), end), (0, Step::Done));
    }

    async fn get(pools: &Pools, server: &Arc<ServerState>) -> (u16, Vec<u8>) {
        use http_body_util::BodyExt as _;
        let (request, timeouts) = (plain_get(), TIMEOUTS);
        let answer = exchange(pools, server, &request, "JSESSIONID", timeouts)
            .await
            .unwrap();
        let body = answer.body.collect().await.unwrap().to_bytes();
        (answer.status.as_u16(), body.to_vec())
    }

    /// A bodyless, repeatable `GET /`.
    fn plain_get() -> Request {
        Request {
            head: b"GET / HTTP/1.1\r\nhost: x\r\n\r\n".to_vec(),
            head_request: false,
            repeatable: true,
        }
    }

    /// Connect and answer timeouts of the tests' exchanges.
    const TIMEOUTS: (Duration, Duration) = (Duration::from_secs(1), Duration::from_secs(2));

    #[tokio::test]
    async fn connections_are_reused_after_bodies_that_ended_as_framed() {
        for answer in [
            &b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"[..],
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n",
            b"HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
        ] {
            let (server, accepted) = server(answer).await;
            let pools = Pools::default();
            for _ in 0..3 {
                assert_eq!(get(&pools, &server).await, (200, b"ok".to_vec()));
            }
            assert_eq!(
                accepted.load(std::sync::atomic::Ordering::Relaxed),
                1,
                "{}",
                String::from_utf8_lossy(answer)
            );
        }
    }

    /// As hyper's HTTP/2 server does: once the body says it is complete, it is dropped
    /// without being asked for its end.
    #[tokio::test]
    async fn a_body_dropped_once_complete_gives_its_connection_back() {
        use http_body_util::BodyExt as _;
        let (server, accepted) = server(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok").await;
        let pools = Pools::default();
        let (request, timeouts) = (plain_get(), TIMEOUTS);
        for _ in 0..3 {
            let mut answer = exchange(&pools, &server, &request, "JSESSIONID", timeouts)
                .await
                .unwrap();
            let frame = answer.body.frame().await.unwrap().unwrap();
            assert_eq!(frame.into_data().unwrap(), "ok");
            assert!(answer.body.is_end_stream());
        }
        assert_eq!(accepted.load(std::sync::atomic::Ordering::Relaxed), 1);
    }

    /// A head much longer than the first read grows the buffer and is read whole.
    #[tokio::test]
    async fn a_head_longer_than_the_first_read_is_read_whole() {
        use http_body_util::BodyExt as _;
        let value = "v".repeat(FIRST_READ * 5);
        let answer = format!("HTTP/1.1 200 OK\r\nX-Long: {value}\r\nContent-Length: 2\r\n\r\nok");
        let (server, accepted) = server(Box::leak(answer.into_bytes().into_boxed_slice())).await;
        let pools = Pools::default();
        let (request, timeouts) = (plain_get(), TIMEOUTS);
        for _ in 0..2 {
            let answer = exchange(&pools, &server, &request, "JSESSIONID", timeouts)
                .await
                .unwrap();
            assert_eq!(answer.headers["x-long"].len(), value.len());
            let body = answer.body.collect().await.unwrap().to_bytes();
            assert_eq!(&body[..], b"ok");
        }
        assert_eq!(accepted.load(std::sync::atomic::Ordering::Relaxed), 1);
    }

    #[tokio::test]
    async fn a_connection_the_server_closes_is_not_reused() {
        let (server, accepted) =
            server(b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok").await;
        let pools = Pools::default();
        for _ in 0..2 {
            assert_eq!(get(&pools, &server).await, (200, b"ok".to_vec()));
        }
        assert_eq!(accepted.load(std::sync::atomic::Ordering::Relaxed), 2);
    }
}
