//! The HTTP/2 server against a client of frames written by hand, over an in-memory pipe, with
//! a service that answers from memory (the pipeline has tests of its own): flow control both
//! ways, the connection's lifecycle, and the client's mistakes.

use std::{
    convert::Infallible,
    sync::{
        atomic::{AtomicUsize, Ordering::SeqCst},
        Arc,
    },
    time::Duration,
};

use bytes::Bytes;
use http_body_util::{combinators::BoxBody, BodyExt as _, Full};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _, DuplexStream};

use super::{
    conn::{Connection, Limits, Service},
    frame::PREFACE,
    hpack,
};

type TestBody = BoxBody<Bytes, Infallible>;

/// Answers `GET /bytes/N` with N bytes, `POST` with the length of the body it read, and
/// `/never` never (counting the answers dropped unfinished in `dropped`).
#[derive(Clone, Default)]
struct Memory {
    dropped: Arc<AtomicUsize>,
}

struct DropCount(Arc<AtomicUsize>);

impl Drop for DropCount {
    fn drop(&mut self) {
        self.0.fetch_add(1, SeqCst);
    }
}

impl Service for Memory {
    type Body = TestBody;

    fn call(
        &mut self,
        request: hyper::Request<super::body::RequestBody>,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = hyper::Response<TestBody>> + Send>>
    {
        let dropped = Arc::clone(&self.dropped);
        Box::pin(async move {
            let path = request.uri().path().to_owned();
            if path == "/never" {
                let _count = DropCount(dropped);
                std::future::pending::<()>().await;
            }
            let body = if request.method() == hyper::Method::POST {
                let read = request.into_body().collect().await;
                let len = read.map_or(0, |body| body.to_bytes().len());
                Bytes::from(len.to_string())
            } else {
                let n: usize = path.trim_start_matches("/bytes/").parse().unwrap_or(0);
                Bytes::from(vec![b'x'; n])
            };
            hyper::Response::new(Full::new(body).boxed())
        })
    }

    fn short(&self, status: hyper::StatusCode, text: &'static str) -> hyper::Response<TestBody> {
        let mut response =
            hyper::Response::new(Full::new(Bytes::from_static(text.as_bytes())).boxed());
        *response.status_mut() = status;
        response
    }
}

const DATA: u8 = 0x0;
const HEADERS: u8 = 0x1;
const RST_STREAM: u8 = 0x3;
const SETTINGS: u8 = 0x4;
const PING: u8 = 0x6;
const GOAWAY: u8 = 0x7;
const WINDOW_UPDATE: u8 = 0x8;
const END_STREAM: u8 = 0x1;
const END_HEADERS: u8 = 0x4;

/// One frame: the 9-byte header, then `payload` (the TLS frontend's flood tests use it too).
pub(in crate::proxy) fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = u32::try_from(payload.len()).unwrap().to_be_bytes();
    let mut out = vec![len[1], len[2], len[3], kind, flags];
    out.extend_from_slice(&stream.to_be_bytes());
    out.extend_from_slice(payload);
    out
}

/// HPACK for a request of `method` (static index) to `path`, fields not indexed.
fn request(method: u8, path: &str) -> Vec<u8> {
    let mut block = vec![method, 0x87, 0x04, u8::try_from(path.len()).unwrap()];
    block.extend_from_slice(path.as_bytes());
    block.extend_from_slice(&[0x01, 4]);
    block.extend_from_slice(b"test");
    block
}

const GET: u8 = 0x82;
const POST: u8 = 0x83;

struct Frame {
    kind: u8,
    flags: u8,
    stream: u32,
    payload: Vec<u8>,
}

struct Client {
    io: DuplexStream,
    decoder: hpack::Decoder,
    /// Frames of other streams, read while waiting for one stream's answer.
    stash: std::collections::VecDeque<Frame>,
}

impl Client {
    /// A connection served with `limits`, its preface and SETTINGS (`settings`) sent, and
    /// the server's SETTINGS read.
    async fn start(
        service: Memory,
        limits: Limits,
        settings: &[(u16, u32)],
    ) -> (
        Client,
        tokio::task::JoinHandle<Result<(), super::conn::Ended>>,
    ) {
        let (ours, theirs) = tokio::io::duplex(1 << 20);
        let served = tokio::spawn(Connection::new(theirs, service, limits));
        let mut client = Client {
            io: ours,
            decoder: hpack::Decoder::new(4096),
            stash: Default::default(),
        };
        let mut payload = Vec::new();
        for (id, value) in settings {
            payload.extend_from_slice(&id.to_be_bytes());
            payload.extend_from_slice(&value.to_be_bytes());
        }
        client.send(PREFACE).await;
        client.send(&frame(SETTINGS, 0, 0, &payload)).await;
        let first = client.next().await.unwrap();
        assert_eq!((first.kind, first.flags), (SETTINGS, 0));
        (client, served)
    }

    async fn send(&mut self, bytes: &[u8]) {
        self.io.write_all(bytes).await.unwrap();
    }

    /// A GET of `path` on stream `id`, the whole request in one HEADERS frame.
    async fn get(&mut self, id: u32, path: &str) {
        let block = request(GET, path);
        self.send(&frame(HEADERS, END_HEADERS | END_STREAM, id, &block))
            .await;
    }

    /// The server's next frame; `None` once it closed.
    async fn next(&mut self) -> Option<Frame> {
        if let Some(frame) = self.stash.pop_front() {
            return Some(frame);
        }
        let mut head = [0u8; 9];
        let read = tokio::time::timeout(Duration::from_secs(5), self.io.read_exact(&mut head));
        read.await.expect("the server said nothing for 5 s").ok()?;
        let len = usize::from(head[0]) << 16 | usize::from(head[1]) << 8 | usize::from(head[2]);
        let mut payload = vec![0; len];
        self.io.read_exact(&mut payload).await.ok()?;
        let stream = u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff;
        Some(Frame {
            kind: head[3],
            flags: head[4],
            stream,
            payload,
        })
    }

    /// Frames until one of `kind` (the others are returned too, in order).
    async fn until(&mut self, kind: u8) -> Vec<Frame> {
        let mut seen = Vec::new();
        loop {
            let frame = self.next().await.expect("closed");
            let done = frame.kind == kind;
            seen.push(frame);
            if done {
                return seen;
            }
        }
    }

    /// The answer on `stream`: its status and body, read until END_STREAM (settings, acks
    /// and window updates skipped).
    async fn answer(&mut self, stream: u32) -> (String, Vec<u8>) {
        let (mut status, mut body) = (String::new(), Vec::new());
        let mut others = std::collections::VecDeque::new();
        loop {
            let frame = self.next().await.expect("closed before the answer ended");
            if frame.stream != stream {
                if frame.stream != 0 {
                    others.push_back(frame);
                }
                continue;
            }
            match frame.kind {
                HEADERS => {
                    let block = frame.payload.clone();
                    self.decoder
                        .decode(&block, |n, v| {
                            if n == b":status" {
                                status = String::from_utf8_lossy(v).into_owned();
                            }
                        })
                        .unwrap();
                }
                DATA => body.extend_from_slice(&frame.payload),
                WINDOW_UPDATE => {}
                other => panic!("frame {other} on stream {stream}"),
            }
            if frame.flags & END_STREAM != 0 {
                others.extend(self.stash.drain(..));
                self.stash = others;
                return (status, body);
            }
        }
    }
}

fn limits() -> Limits {
    Limits {
        max_header_bytes: 8192,
        client_timeout: Duration::from_secs(5),
    }
}

fn window_update(stream: u32, increment: u32) -> Vec<u8> {
    frame(WINDOW_UPDATE, 0, stream, &increment.to_be_bytes())
}

#[tokio::test]
async fn answers_come_on_their_streams_in_any_order() {
    let (mut client, _served) = Client::start(Memory::default(), limits(), &[]).await;
    client.get(1, "/bytes/3").await;
    client.get(3, "/bytes/70000").await;
    // The second is longer than the first windows (65535): the rest waits for both.
    let (status, body) = client.answer(1).await;
    assert_eq!((status.as_str(), body.len()), ("200", 3));
    client.send(&window_update(0, 10_000)).await;
    client.send(&window_update(3, 10_000)).await;
    let (status, body) = client.answer(3).await;
    assert_eq!((status.as_str(), body.len()), ("200", 70_000));
}

#[tokio::test]
async fn an_answer_waits_for_its_streams_window() {
    let (mut client, _served) = Client::start(Memory::default(), limits(), &[(0x4, 10)]).await;
    client.get(1, "/bytes/25").await;
    let mut got = Vec::new();
    for frame in client.until(DATA).await {
        if frame.kind == DATA {
            got.extend(frame.payload);
        }
    }
    assert_eq!(got.len(), 10, "no more than the window");
    // Nothing more until the window grows.
    let quiet = tokio::time::timeout(Duration::from_millis(200), client.next()).await;
    assert!(quiet.is_err(), "sent past the window");
    client.send(&window_update(1, 100)).await;
    let mut end = false;
    while !end {
        let frame = client.next().await.unwrap();
        got.extend(frame.payload);
        end = frame.flags & END_STREAM != 0;
    }
    assert_eq!(got.len(), 25);
}

#[tokio::test]
async fn a_request_body_larger_than_its_window_arrives_whole() {
    let (mut client, _served) = Client::start(Memory::default(), limits(), &[]).await;
    client
        .send(&frame(HEADERS, END_HEADERS, 1, &request(POST, "/upload")))
        .await;
    let total = 600 * 1024;
    // Within the stream's window the server announced (256 KiB; the connection's is 1 MiB),
    // then only as its WINDOW_UPDATEs allow.
    let (mut sent, mut window) = (0usize, 256 * 1024);
    let mut updates = 0;
    while sent < total {
        while window > 0 && sent < total {
            let n = (total - sent).min(16_384).min(window);
            let end = sent + n == total;
            client
                .send(&frame(
                    DATA,
                    if end { END_STREAM } else { 0 },
                    1,
                    &vec![7; n],
                ))
                .await;
            sent += n;
            window -= n;
        }
        if sent == total {
            break;
        }
        let frame = client.next().await.unwrap();
        if frame.kind == WINDOW_UPDATE && frame.stream == 1 {
            updates += 1;
            window += u32::from_be_bytes(frame.payload[..4].try_into().unwrap()) as usize;
        }
    }
    let (status, body) = client.answer(1).await;
    assert_eq!(status, "200");
    assert_eq!(String::from_utf8(body).unwrap(), total.to_string());
    assert!(updates >= 1, "the window came back as the body was read");
}

#[tokio::test]
async fn a_reset_stream_drops_its_answer_in_progress() {
    let service = Memory::default();
    let dropped = Arc::clone(&service.dropped);
    let (mut client, _served) = Client::start(service, limits(), &[]).await;
    client.get(1, "/never").await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    client
        .send(&frame(RST_STREAM, 0, 1, &8u32.to_be_bytes()))
        .await;
    // The connection goes on serving.
    client.get(3, "/bytes/1").await;
    assert_eq!(client.answer(3).await.0, "200");
    assert_eq!(dropped.load(SeqCst), 1);
}

#[tokio::test]
async fn ping_is_answered_and_a_drain_finishes_what_was_asked() {
    let service = Memory::default();
    let (ours, theirs) = tokio::io::duplex(1 << 20);
    let mut connection = Connection::new(theirs, service, limits());
    let mut client = Client {
        io: ours,
        decoder: hpack::Decoder::new(4096),
        stash: Default::default(),
    };
    client.send(PREFACE).await;
    client.send(&frame(SETTINGS, 0, 0, &[])).await;
    client.send(&frame(PING, 0, 0, b"12345678")).await;
    client.get(1, "/bytes/5").await;
    // Served until the request has begun, then asked to close.
    let served = tokio::spawn(async move {
        tokio::time::timeout(Duration::from_millis(100), &mut connection)
            .await
            .ok();
        connection.close();
        connection.await
    });
    let frames = client.until(PING).await;
    assert_eq!(frames.last().unwrap().payload, b"12345678");
    assert_eq!(frames.last().unwrap().flags, 0x1);
    let (status, body) = client.answer(1).await;
    assert_eq!((status.as_str(), body.len()), ("200", 5));
    let goaway = client.until(GOAWAY).await.pop().unwrap();
    assert_eq!(&goaway.payload[..8], &[0, 0, 0, 1, 0, 0, 0, 0]);
    assert!(client.next().await.is_none(), "closed after GOAWAY");
    assert!(served.await.unwrap().is_ok());
}

#[tokio::test]
async fn an_idle_connection_goes_away_after_the_client_timeout() {
    let limits = Limits {
        client_timeout: Duration::from_millis(300),
        ..limits()
    };
    let (mut client, served) = Client::start(Memory::default(), limits, &[]).await;
    client.get(1, "/bytes/1").await;
    assert_eq!(client.answer(1).await.0, "200");
    let started = std::time::Instant::now();
    let goaway = client.until(GOAWAY).await.pop().unwrap();
    assert!(started.elapsed() >= Duration::from_millis(200));
    assert_eq!(&goaway.payload[4..8], &[0, 0, 0, 0]);
    assert!(client.next().await.is_none());
    assert!(served.await.unwrap().is_ok());
}

#[tokio::test]
async fn the_clients_protocol_errors_end_the_connection_with_goaway() {
    // Uploads whose bodies are never read: no window comes back.
    let open = |id: u32| frame(HEADERS, END_HEADERS, id, &request(POST, "/never"));
    let setting = |id: u16, value: u32| {
        let mut payload = id.to_be_bytes().to_vec();
        payload.extend_from_slice(&value.to_be_bytes());
        frame(SETTINGS, 0, 0, &payload)
    };
    let cases: Vec<(&str, Vec<u8>, u32)> = vec![
        (
            "HEADERS on a stream a client cannot open",
            frame(HEADERS, END_HEADERS | END_STREAM, 2, &request(GET, "/")),
            0x1,
        ),
        (
            "a frame between HEADERS and its CONTINUATION",
            [
                frame(HEADERS, 0, 1, &request(GET, "/")),
                frame(PING, 0, 0, &[0; 8]),
            ]
            .concat(),
            0x1,
        ),
        (
            "CONTINUATION without HEADERS",
            frame(0x9, END_HEADERS, 1, &[0x82]),
            0x1,
        ),
        ("PING of 7 bytes", frame(PING, 0, 0, &[0; 7]), 0x6),
        ("SETTINGS of 5 bytes", frame(SETTINGS, 0, 0, &[0; 5]), 0x6),
        (
            "INITIAL_WINDOW_SIZE past 2^31-1",
            setting(0x4, 1 << 31),
            0x3,
        ),
        ("MAX_FRAME_SIZE below 16384", setting(0x5, 100), 0x1),
        ("ENABLE_PUSH of 2", setting(0x2, 2), 0x1),
        (
            "PUSH_PROMISE from a client",
            frame(0x5, END_HEADERS, 1, &[0, 0, 0, 2]),
            0x1,
        ),
        (
            "the connection's window past 2^31-1",
            window_update(0, (1 << 31) - 1),
            0x3,
        ),
        (
            "DATA past the connection's window",
            [
                open(1),
                open(3),
                open(5),
                open(7),
                open(9),
                // 65 x 16 KiB, 13 to each stream: within each one's 256 KiB, past the 1 MiB
                // of all.
                (0..65)
                    .flat_map(|i| frame(DATA, 0, 1 + 2 * (i % 5), &[0; 16_384]))
                    .collect(),
            ]
            .concat(),
            0x3,
        ),
        (
            "RST_STREAM on a stream never opened",
            frame(RST_STREAM, 0, 9, &[0; 4]),
            0x1,
        ),
        (
            "DATA on a stream never opened",
            frame(DATA, 0, 5, b"x"),
            0x1,
        ),
        (
            "WINDOW_UPDATE of 0 on the connection",
            window_update(0, 0),
            0x1,
        ),
        (
            "a frame larger than allowed",
            frame(0x0, 0, 1, &vec![0; 16_385]),
            0x6,
        ),
        (
            "an undecodable header block",
            frame(HEADERS, END_HEADERS | END_STREAM, 1, &[0xbf]),
            0x9,
        ),
    ];
    for (what, bytes, code) in cases {
        let (mut client, served) = Client::start(Memory::default(), limits(), &[]).await;
        client.send(&bytes).await;
        let goaway = client.until(GOAWAY).await.pop().unwrap();
        assert_eq!(
            u32::from_be_bytes(goaway.payload[4..8].try_into().unwrap()),
            code,
            "{what}"
        );
        assert!(client.next().await.is_none(), "{what}: still open");
        assert!(served.await.unwrap().is_err(), "{what}");
    }
}

#[tokio::test]
async fn no_preface_no_service() {
    let (ours, theirs) = tokio::io::duplex(1 << 16);
    let served = tokio::spawn(Connection::new(theirs, Memory::default(), limits()));
    let mut client = Client {
        io: ours,
        decoder: hpack::Decoder::new(4096),
        stash: Default::default(),
    };
    client.send(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n").await;
    let frames = client.until(GOAWAY).await;
    assert_eq!(frames[0].kind, SETTINGS);
    assert!(client.next().await.is_none());
    assert!(served.await.unwrap().is_err());
}

#[tokio::test]
async fn a_malformed_request_resets_its_stream_only() {
    let (mut client, _served) = Client::start(Memory::default(), limits(), &[]).await;
    // An uppercase field name.
    let mut block = request(GET, "/bytes/1");
    block.extend_from_slice(&[0x00, 1, b'X', 1, b'y']);
    client
        .send(&frame(HEADERS, END_HEADERS | END_STREAM, 1, &block))
        .await;
    let reset = client.until(RST_STREAM).await.pop().unwrap();
    assert_eq!(
        (reset.stream, reset.payload.as_slice()),
        (1, &[0, 0, 0, 1][..])
    );
    client.get(3, "/bytes/2").await;
    assert_eq!(client.answer(3).await.1.len(), 2);
}

#[tokio::test]
async fn a_header_list_past_the_limit_is_answered_431() {
    let (mut client, _served) = Client::start(Memory::default(), limits(), &[]).await;
    let mut block = request(GET, "/bytes/1");
    for _ in 0..3 {
        // 3 fields of 3000 bytes: past 8192.
        block.extend_from_slice(&[0x00, 1, b'x', 0x7f, 0xb9, 0x16]);
        block.extend_from_slice(&[b'v'; 3000]);
    }
    client
        .send(&frame(HEADERS, END_HEADERS | END_STREAM, 1, &block))
        .await;
    assert_eq!(client.answer(1).await.0, "431");
}

#[tokio::test]
async fn after_the_client_lowers_its_table_the_first_answer_says_so() {
    let (mut client, _served) = Client::start(Memory::default(), limits(), &[(0x1, 0)]).await;
    client.get(1, "/bytes/1").await;
    let headers = client.until(HEADERS).await.pop().unwrap();
    assert_eq!(headers.payload[0], 0x20, "a table size update to 0 first");
    client.get(3, "/bytes/1").await;
    let headers = client.until(HEADERS).await.pop().unwrap();
    assert_ne!(headers.payload[0], 0x20, "only once");
}

/// A large answer to a client that announces the largest windows, so that only the pipe and
/// the output buffer hold it back: the answer must not stop when the output drains at once.
#[tokio::test]
async fn a_large_answer_with_the_largest_windows_arrives_whole() {
    let max = (1u32 << 31) - 1;
    let (mut client, _served) = Client::start(Memory::default(), limits(), &[(0x4, max)]).await;
    client.send(&window_update(0, max - 65_535)).await;
    let total = 20_000_000;
    let path = format!("/bytes/{total}");
    client.get(1, &path).await;
    let (status, body) = client.answer(1).await;
    assert_eq!((status.as_str(), body.len()), ("200", total));
}

/// A request body ended by trailers (a second HEADERS with END_STREAM): the body is whole,
/// and the trailers' fields go through the connection's HPACK table like any others.
#[tokio::test]
async fn trailers_end_a_request_body() {
    let (mut client, _served) = Client::start(Memory::default(), limits(), &[]).await;
    client
        .send(&frame(HEADERS, END_HEADERS, 1, &request(POST, "/upload")))
        .await;
    client.send(&frame(DATA, 0, 1, b"hello")).await;
    // `x-check: 1`, a literal entered in the table, then a request that refers to it (62).
    let trailers = [&[0x40, 7][..], b"x-check", &[1, b'1']].concat();
    client
        .send(&frame(HEADERS, END_HEADERS | END_STREAM, 1, &trailers))
        .await;
    let (status, body) = client.answer(1).await;
    assert_eq!((status.as_str(), body.as_slice()), ("200", &b"5"[..]));
    let mut block = request(GET, "/bytes/2");
    block.push(0x80 | 62);
    client
        .send(&frame(HEADERS, END_HEADERS | END_STREAM, 3, &block))
        .await;
    assert_eq!(client.answer(3).await.1.len(), 2);
}
