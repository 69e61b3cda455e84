//! HTTP/2 abuse on a TLS frontend, with frames written by hand: each pattern is bounded per
//! connection (refused streams, or the connection closed), and the server's answer comes
//! before the client has sent all it wanted to.

use std::{sync::Arc, time::Duration};

use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::{TcpListener, TcpStream},
};

use super::*;
use crate::proxy::h2::tests::frame;

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const HEADERS: u8 = 0x1;
const RST_STREAM: u8 = 0x3;
const SETTINGS: u8 = 0x4;
const GOAWAY: u8 = 0x7;
const CONTINUATION: u8 = 0x9;
const END_STREAM: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
const ACK: u8 = 0x1;
const CANCEL: u32 = 0x8;
const REFUSED_STREAM: u32 = 0x7;

/// HPACK for `GET https://www.example.test/`: static-table fields and a literal authority.
fn request_block() -> Vec<u8> {
    let mut block = vec![0x82, 0x87, 0x84, 0x01, 16];
    block.extend_from_slice(b"www.example.test");
    block
}

/// What the server sent, frame by frame.
#[derive(Debug, Default)]
struct Heard {
    /// The error code of a GOAWAY, and the last stream it says was processed.
    goaway: Option<(u32, u32)>,
    resets: Vec<(u32, u32)>,
    headers: usize,
    closed: bool,
}

/// A TLS frontend whose backend accepts connections and never answers (requests stay in
/// flight), and a TLS client connected to it over HTTP/2.
struct Rig {
    client: tokio_rustls::client::TlsStream<TcpStream>,
    _graceful: Arc<Drain>,
    _backend: TcpListener,
}

impl Rig {
    async fn start() -> Rig {
        let backend = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let backend_addr = backend.local_addr().unwrap();
        let (mut client, graceful) =
            super::tests::h2_connection(backend_addr, Duration::from_secs(10)).await;
        // The preface, then the server's settings acknowledged: its limits are in force.
        client.write_all(PREFACE).await.unwrap();
        client.write_all(&frame(SETTINGS, 0, 0, &[])).await.unwrap();
        loop {
            let (kind, flags, _, _) = read_frame(&mut client).await.unwrap();
            if kind == SETTINGS && flags & ACK == 0 {
                break;
            }
        }
        client
            .write_all(&frame(SETTINGS, ACK, 0, &[]))
            .await
            .unwrap();
        client.flush().await.unwrap();
        Rig {
            client,
            _graceful: graceful,
            _backend: backend,
        }
    }

    /// Sends `bytes`; false once the server has closed the connection.
    async fn send(&mut self, bytes: &[u8]) -> bool {
        self.client.write_all(bytes).await.is_ok() && self.client.flush().await.is_ok()
    }

    /// The frames the server sends until it closes or is quiet for `quiet`.
    async fn listen(&mut self, quiet: Duration) -> Heard {
        let mut heard = Heard::default();
        loop {
            match tokio::time::timeout(quiet, read_frame(&mut self.client)).await {
                Err(_) => return heard,
                Ok(None) => {
                    heard.closed = true;
                    return heard;
                }
                Ok(Some((kind, _, stream, payload))) => match kind {
                    GOAWAY => {
                        let last = code(&payload[..4]) & 0x7fff_ffff;
                        heard.goaway = Some((code(&payload[4..8]), last));
                    }
                    RST_STREAM => heard.resets.push((stream, code(&payload[..4]))),
                    HEADERS => heard.headers += 1,
                    _ => {}
                },
            }
        }
    }
}

fn code(bytes: &[u8]) -> u32 {
    u32::from_be_bytes(bytes.try_into().unwrap())
}

/// One frame from the server, or `None` once the connection ends.
async fn read_frame(
    stream: &mut tokio_rustls::client::TlsStream<TcpStream>,
) -> Option<(u8, u8, u32, Vec<u8>)> {
    let mut head = [0u8; 9];
    stream.read_exact(&mut head).await.ok()?;
    let len = usize::from(head[0]) << 16 | usize::from(head[1]) << 8 | usize::from(head[2]);
    let mut payload = vec![0; len];
    stream.read_exact(&mut payload).await.ok()?;
    let id = u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff;
    Some((head[3], head[4], id, payload))
}

/// Rapid reset: streams opened and cancelled at once, by the thousand. The server closes the
/// connection with `ENHANCE_YOUR_CALM` long before the last.
#[tokio::test]
async fn rapid_resets_close_the_connection() {
    let mut rig = Rig::start().await;
    let block = request_block();
    for batch in 0..50u32 {
        let mut bytes = Vec::new();
        for i in 0..100u32 {
            let stream = 1 + 2 * (batch * 100 + i);
            bytes.extend(frame(HEADERS, END_HEADERS | END_STREAM, stream, &block));
            bytes.extend(frame(RST_STREAM, 0, stream, &CANCEL.to_be_bytes()));
        }
        if !rig.send(&bytes).await {
            break;
        }
    }
    let heard = rig.listen(Duration::from_secs(5)).await;
    let Some((reason, last)) = heard.goaway else {
        panic!("no GOAWAY: {heard:?}");
    };
    assert_eq!(reason, 0xb, "ENHANCE_YOUR_CALM: {heard:?}");
    assert!(heard.closed, "{heard:?}");
    // The client's writes fit in the socket buffers; what the server processed did not.
    assert!(last < 2 * 1000, "processed up to stream {last} of 9999");
}

/// A header block that never ends (CONTINUATION frames past the header list limit): the
/// server stops it well before the client stops sending.
#[tokio::test]
async fn a_continuation_flood_is_cut_short() {
    let mut rig = Rig::start().await;
    let mut fragment = Vec::new();
    for _ in 0..150 {
        fragment.extend_from_slice(&[0x00, 0x01, b'a', 100]);
        fragment.extend_from_slice(&[b'b'; 100]);
    }
    let mut bytes = frame(HEADERS, 0, 1, &request_block());
    let mut sent = 0usize;
    let mut open = rig.send(&bytes).await;
    // Up to 10 MB of header block, 16 times the configured limit many times over.
    while open && sent < 10 << 20 {
        bytes = frame(CONTINUATION, 0, 1, &fragment);
        open = rig.send(&bytes).await;
        sent += fragment.len();
        if sent % (1 << 20) < fragment.len() {
            // Look for an answer now and then, without waiting on a quiet server.
            let heard = rig.listen(Duration::from_millis(50)).await;
            if heard.closed || heard.goaway.is_some() || !heard.resets.is_empty() {
                // Seen at the first look: within about 1 MB of a 16 KB limit.
                assert!(
                    sent <= 2 << 20,
                    "stopped only after {sent} bytes: {heard:?}"
                );
                return;
            }
            assert_eq!(heard.headers, 0, "a response to a request never ended");
        }
    }
    assert!(!open, "the server took {sent} bytes of one header block");
}

/// More streams than `MAX_STREAMS` open at once: the ones past it are refused, and the
/// connection stays usable.
#[tokio::test]
async fn streams_past_the_limit_are_refused() {
    let mut rig = Rig::start().await;
    let block = request_block();
    let wanted = MAX_STREAMS + 72;
    let mut bytes = Vec::new();
    for i in 0..wanted {
        // No END_STREAM: each request stays open (its body never ends).
        bytes.extend(frame(HEADERS, END_HEADERS, 1 + 2 * i, &block));
    }
    assert!(rig.send(&bytes).await);
    let heard = rig.listen(Duration::from_secs(2)).await;
    let refused: Vec<u32> = heard
        .resets
        .iter()
        .filter(|(_, code)| *code == REFUSED_STREAM)
        .map(|(stream, _)| *stream)
        .collect();
    assert_eq!(refused.len(), 72, "{heard:?}");
    assert!(refused.iter().all(|s| *s > 2 * MAX_STREAMS), "{refused:?}");
    assert!(!heard.closed && heard.goaway.is_none(), "{heard:?}");
}
