//! One HTTP/2 connection, driven by one task: it reads the client's frames, starts each
//! request's answer (the pipeline's future, polled here, not on a task of its own), and writes
//! the answers' frames as the client's windows allow, all into one output buffer that goes out
//! in as few TLS records and system calls as the answers ready at once allow.
//!
//! The connection's phases: [`Phase::Open`] serves; [`Phase::Draining`] has sent GOAWAY and
//! finishes the streams it has; [`Phase::Flushing`] writes what is left and closes.

use std::{
    future::Future,
    io,
    pin::Pin,
    sync::Arc,
    task::{ready, Context, Poll},
    time::{Duration, Instant},
};

use bytes::Bytes;
use futures_util::{
    future::{AbortHandle, Abortable, Aborted},
    stream::{FuturesUnordered, Stream as _},
};
use hyper::{body::Body, Response, StatusCode};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::{
    body::{BodyBroken, Inbox, RequestBody},
    fields::{self, Malformed, RequestFields},
    frame::{self, Head, Kind, Reason},
    hpack,
};

/// Streams a client may have open at once; more are refused (`REFUSED_STREAM`).
pub(super) const MAX_STREAMS: usize = 128;
/// The window each stream's request body starts with: what one stream may have buffered here
/// toward a slow server.
const STREAM_WINDOW: usize = 256 * 1024;
/// The window of all request bodies of a connection together.
const CONN_WINDOW: usize = 1024 * 1024;
/// Streams the client may cancel before their answer began, beyond as many as were answered,
/// before the connection is closed with `ENHANCE_YOUR_CALM` ("rapid reset", CVE-2023-44487:
/// each such stream costs a server request for nothing).
const MAX_CANCELLED: usize = 100;
/// Streams this side may reset for the client's errors before it closes the connection.
const MAX_ERROR_RESETS: usize = 256;
/// Output waiting for the client beyond which no more is produced (no frame read, no body
/// polled) until some of it went: a client that stops reading holds at most this much here,
/// plus one piece of each stream's body.
const OUTPUT_HIGH: usize = 64 * 1024;
/// The input buffer's first size, and its largest (one frame of the largest size this side
/// allows, and its header, and a read's worth more).
const INPUT_START: usize = 4096;
/// The output buffer an idle connection keeps.
const OUTPUT_IDLE: usize = 4096;
const INPUT_MAX: usize = 2 * (frame::DEFAULT_MAX_FRAME + frame::HEAD_LEN);
/// Reads handled in one turn before the task lets others run.
const READS_PER_TURN: usize = 32;

/// What serves the requests of the connection.
pub(in crate::proxy) trait Service {
    type Body: Body<Data = Bytes, Error: std::fmt::Display> + Unpin + Send + 'static;

    /// The answer to `request`, to be polled on the connection's task.
    fn call(
        &mut self,
        request: hyper::Request<RequestBody>,
    ) -> Pin<Box<dyn Future<Output = Response<Self::Body>> + Send>>;

    /// A short answer made here (a request too large for the pipeline).
    fn short(&self, status: StatusCode, text: &'static str) -> Response<Self::Body>;
}

/// The connection's limits, from the frontend's configuration.
#[derive(Clone, Copy, Debug)]
pub(in crate::proxy) struct Limits {
    pub(in crate::proxy) max_header_bytes: usize,
    /// How long the connection may stay without a stream in progress, and how long the client
    /// may leave this side's output unread.
    pub(in crate::proxy) client_timeout: Duration,
}

/// How a connection ended, when not cleanly (logged at debug).
#[derive(Debug, thiserror::Error)]
pub(in crate::proxy) enum Ended {
    #[error("reading from or writing to the client failed")]
    Io(#[source] io::Error),
    #[error("the client broke the protocol ({reason:?}: {why}); GOAWAY sent")]
    Protocol { reason: Reason, why: &'static str },
    #[error("the client read nothing for the client timeout")]
    Stalled,
}

/// A connection error: the GOAWAY reason, and why (for the log).
struct Fatal(Reason, &'static str);

#[derive(Debug, PartialEq, Eq)]
enum Phase {
    /// Waiting for the client's preface.
    Preface,
    Open,
    /// GOAWAY sent (or received): no new stream; closes when the last one is done.
    Draining,
    /// Writes what is left, then closes.
    Flushing,
}

enum Answer<B> {
    /// The pipeline is working on it.
    Waiting(AbortHandle),
    /// The head went out; the body goes as the windows allow. `pending`: a piece of it the
    /// windows did not let through yet.
    Sending { body: B, pending: Bytes },
    /// END_STREAM went out.
    Sent,
}

struct Stream<B> {
    id: u32,
    answer: Answer<B>,
    /// The request body, while it has a reader (what it took becomes window again).
    inbox: Option<Arc<Inbox>>,
    /// The client has not ended its side (no END_STREAM yet).
    receiving: bool,
    /// What the client may still send before a WINDOW_UPDATE, and what it took that was not
    /// announced yet.
    recv_window: i64,
    unannounced: usize,
    received: u64,
    content_length: Option<u64>,
    send_window: i64,
}

impl<B> Stream<B> {
    fn done(&self) -> bool {
        matches!(self.answer, Answer::Sent) && !self.receiving
    }
}

/// A header block that goes on in CONTINUATION frames.
struct Block {
    stream: u32,
    end_stream: bool,
    bytes: Vec<u8>,
}

/// A stream's answer on its way, tagged with its stream.
struct Tagged<B> {
    id: u32,
    inner: Abortable<Pin<Box<dyn Future<Output = Response<B>> + Send>>>,
}

impl<B> Future for Tagged<B> {
    type Output = (u32, Result<Response<B>, Aborted>);

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        let done = ready!(Pin::new(&mut this.inner).poll(cx));
        Poll::Ready((this.id, done))
    }
}

pub(in crate::proxy) struct Connection<S, F: Service> {
    io: S,
    service: F,
    limits: Limits,
    phase: Phase,
    /// Bytes read and not yet handled: `input[start..end]`.
    input: Vec<u8>,
    start: usize,
    end: usize,
    output: Vec<u8>,
    written: usize,
    /// A header block being encoded.
    scratch: Vec<u8>,
    decoder: hpack::Decoder,
    streams: Vec<Stream<F::Body>>,
    answering: FuturesUnordered<Tagged<F::Body>>,
    /// The highest stream the client opened, and the highest this side took (GOAWAY's).
    last_stream: u32,
    last_taken: u32,
    block: Option<Block>,
    send_window: i64,
    recv_window: i64,
    unannounced: usize,
    peer_initial_window: i64,
    peer_max_frame: usize,
    table_size_update: bool,
    /// The client's first SETTINGS arrived (the first frame must be one).
    settings_seen: bool,
    answered: usize,
    cancelled: usize,
    error_resets: usize,
    /// `close` was called: GOAWAY goes out at the next turn.
    close_asked: bool,
    timer: Pin<Box<tokio::time::Sleep>>,
    idle_since: Instant,
    last_written: Instant,
    failure: Option<Ended>,
}

impl<S, F> Connection<S, F>
where
    S: AsyncRead + AsyncWrite + Unpin,
    F: Service,
{
    pub(in crate::proxy) fn new(io: S, service: F, limits: Limits) -> Self {
        let mut output = Vec::with_capacity(256);
        frame::settings(
            &mut output,
            &[
                (0x3, MAX_STREAMS as u32),
                (0x4, STREAM_WINDOW as u32),
                (
                    0x6,
                    u32::try_from(limits.max_header_bytes).unwrap_or(u32::MAX),
                ),
            ],
        );
        frame::window_update(&mut output, 0, (CONN_WINDOW - 65_535) as u32);
        // This side announces no SETTINGS_HEADER_TABLE_SIZE: the default, 4096.
        let decoder = hpack::Decoder::new(4096);
        let now = Instant::now();
        Self {
            io,
            service,
            limits,
            phase: Phase::Preface,
            input: vec![0; INPUT_START],
            start: 0,
            end: 0,
            output,
            written: 0,
            scratch: Vec::new(),
            decoder,
            streams: Vec::new(),
            answering: FuturesUnordered::new(),
            last_stream: 0,
            last_taken: 0,
            block: None,
            send_window: frame::DEFAULT_WINDOW,
            recv_window: CONN_WINDOW as i64,
            unannounced: 0,
            peer_initial_window: frame::DEFAULT_WINDOW,
            peer_max_frame: frame::DEFAULT_MAX_FRAME,
            table_size_update: false,
            settings_seen: false,
            answered: 0,
            cancelled: 0,
            error_resets: 0,
            close_asked: false,
            timer: Box::pin(tokio::time::sleep(limits.client_timeout)),
            idle_since: now,
            last_written: now,
            failure: None,
        }
    }

    /// Asks the connection to finish its streams and close (GOAWAY), as a drain does.
    pub(in crate::proxy) fn close(&mut self) {
        self.close_asked = true;
    }

    fn turn(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Ended>> {
        if self.close_asked && matches!(self.phase, Phase::Preface | Phase::Open) {
            self.go_away(Reason::NoError);
        }
        let mut reads = 0;
        loop {
            let mut busy = false;
            if self.reading() {
                if reads == READS_PER_TURN {
                    cx.waker().wake_by_ref();
                    return Poll::Pending;
                }
                match self.poll_input(cx) {
                    Poll::Ready(Ok(true)) => {
                        reads += 1;
                        busy = true;
                    }
                    // The client is gone: nothing more can reach it.
                    Poll::Ready(Ok(false)) => return Poll::Ready(Ok(())),
                    Poll::Ready(Err(error)) => return Poll::Ready(Err(Ended::Io(error))),
                    Poll::Pending => {}
                }
            }
            if self.phase != Phase::Flushing {
                busy |= self.poll_answers(cx);
                busy |= self.poll_bodies(cx);
                self.give_back_window();
                if self.phase == Phase::Draining && self.streams.is_empty() {
                    self.phase = Phase::Flushing;
                }
            }
            // Output that went makes room for more (frames read, bodies polled): another pass,
            // or nothing would wake this task for them.
            let waiting = self.output.len() - self.written;
            let polled = self.poll_output(cx);
            busy |= self.output.len() - self.written < waiting;
            match polled {
                Poll::Ready(Ok(())) => {
                    if self.phase == Phase::Flushing {
                        // Best effort: the client may be gone already.
                        let _ = ready!(Pin::new(&mut self.io).poll_shutdown(cx));
                        return Poll::Ready(self.failure.take().map_or(Ok(()), Err));
                    }
                }
                Poll::Ready(Err(error)) => return Poll::Ready(Err(Ended::Io(error))),
                Poll::Pending => {}
            }
            if !busy {
                break;
            }
        }
        self.poll_timer(cx)
    }

    fn reading(&self) -> bool {
        matches!(self.phase, Phase::Preface | Phase::Open | Phase::Draining)
            && self.output.len() - self.written < OUTPUT_HIGH
    }

    /// Reads once and handles every complete frame; `false` at the end of the client's bytes.
    fn poll_input(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<bool>> {
        if self.start > 0 {
            // What is left is the start of a frame: it moves to the front.
            self.input.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        if self.end == self.input.len() {
            let size = (self.input.len() * 2).min(INPUT_MAX);
            self.input.resize(size, 0);
        }
        let mut buf = ReadBuf::new(&mut self.input[self.end..]);
        ready!(Pin::new(&mut self.io).poll_read(cx, &mut buf))?;
        let n = buf.filled().len();
        if n == 0 {
            self.abandon();
            return Poll::Ready(Ok(false));
        }
        self.end += n;
        if let Err(Fatal(reason, why)) = self.handle_input(cx) {
            self.fail(reason, why);
        }
        Poll::Ready(Ok(true))
    }

    fn handle_input(&mut self, cx: &mut Context<'_>) -> Result<(), Fatal> {
        if self.phase == Phase::Preface && !self.preface_read()? {
            return Ok(());
        }
        while self.end - self.start >= frame::HEAD_LEN && self.reading_frames() {
            let head = Head::parse(&self.input[self.start..]);
            if head.len > frame::DEFAULT_MAX_FRAME {
                return Err(Fatal(Reason::FrameSize, "frame larger than allowed"));
            }
            if self.end - self.start < frame::HEAD_LEN + head.len {
                break;
            }
            let from = self.start + frame::HEAD_LEN;
            self.start = from + head.len;
            // The payload is handled in place: the buffer is lent out meanwhile.
            let input = std::mem::take(&mut self.input);
            let handled = self.frame(cx, head, &input[from..from + head.len]);
            self.input = input;
            handled?;
        }
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
            if self.streams.is_empty() && self.input.len() > INPUT_START {
                self.input.truncate(INPUT_START);
                self.input.shrink_to_fit();
            }
        }
        Ok(())
    }

    /// Frames are handled until the connection flushes its last bytes.
    fn reading_frames(&self) -> bool {
        matches!(self.phase, Phase::Open | Phase::Draining)
    }

    /// Whether the preface was read (and taken off the input).
    fn preface_read(&mut self) -> Result<bool, Fatal> {
        let have = &self.input[self.start..self.end];
        let len = have.len().min(frame::PREFACE.len());
        if have[..len] != frame::PREFACE[..len] {
            return Err(Fatal(Reason::Protocol, "no HTTP/2 preface"));
        }
        if len < frame::PREFACE.len() {
            return Ok(false);
        }
        self.start += frame::PREFACE.len();
        self.phase = if self.close_asked {
            Phase::Draining
        } else {
            Phase::Open
        };
        Ok(true)
    }

    fn frame(&mut self, cx: &mut Context<'_>, head: Head, payload: &[u8]) -> Result<(), Fatal> {
        if !self.settings_seen && (head.kind != Kind::Settings || head.has(frame::ACK)) {
            return Err(Fatal(Reason::Protocol, "first frame not SETTINGS"));
        }
        if self.block.is_some() && head.kind != Kind::Continuation {
            return Err(Fatal(Reason::Protocol, "frame inside a header block"));
        }
        match head.kind {
            Kind::Data => self.data(&head, payload),
            Kind::Headers => self.headers(cx, &head, payload),
            Kind::Continuation => self.continuation(cx, &head, payload),
            Kind::Priority => self.priority(&head, payload),
            Kind::ResetStream => self.reset_by_client(&head, payload),
            Kind::Settings => self.settings(&head, payload),
            Kind::PushPromise => Err(Fatal(Reason::Protocol, "PUSH_PROMISE from a client")),
            Kind::Ping => self.ping(&head, payload),
            Kind::GoAway => self.goaway_from_client(&head, payload),
            Kind::WindowUpdate => self.window_update(&head, payload),
            Kind::Unknown(_) => Ok(()),
        }
    }

    fn position(&self, id: u32) -> Option<usize> {
        self.streams.iter().position(|s| s.id == id)
    }

    /// A frame that names a stream the client has not opened yet: a connection error (RFC
    /// 9113 section 5.1, "idle").
    fn not_idle(&self, head: &Head) -> Result<(), Fatal> {
        if head.stream == 0 || head.stream > self.last_stream {
            return Err(Fatal(Reason::Protocol, "frame on an idle stream"));
        }
        Ok(())
    }

    fn data(&mut self, head: &Head, payload: &[u8]) -> Result<(), Fatal> {
        self.not_idle(head)?;
        self.recv_window -= payload.len() as i64;
        if self.recv_window < 0 {
            return Err(Fatal(
                Reason::FlowControl,
                "DATA past the connection window",
            ));
        }
        let (from, to) = frame::unpadded(head, payload)
            .ok_or(Fatal(Reason::Protocol, "padding longer than the frame"))?;
        let data = &payload[from..to];
        // The padding is never read by anyone: its window comes back at once.
        let mut returned = payload.len() - data.len();
        let end = head.has(frame::END_STREAM);
        let Some(index) = self.position(head.stream) else {
            // A stream closed here (reset, or answered) the client had not heard of yet.
            self.unannounced += payload.len();
            return Ok(());
        };
        let stream = &mut self.streams[index];
        stream.recv_window -= payload.len() as i64;
        stream.received += data.len() as u64;
        let broken = if !stream.receiving {
            Some((Reason::StreamClosed, "DATA after END_STREAM"))
        } else if stream.recv_window < 0 {
            Some((Reason::FlowControl, "DATA past the stream window"))
        } else if stream
            .content_length
            .is_some_and(|length| stream.received > length || end && stream.received != length)
        {
            Some((
                Reason::Protocol,
                "body length other than its content-length",
            ))
        } else {
            None
        };
        if let Some((reason, why)) = broken {
            self.unannounced += payload.len();
            return self.stream_error(head.stream, reason, why);
        }
        match &stream.inbox {
            Some(inbox) => inbox.push(Bytes::copy_from_slice(data), end),
            None => returned += data.len(),
        }
        stream.unannounced += returned;
        self.unannounced += returned;
        if end {
            stream.receiving = false;
            if stream.done() {
                self.remove(index);
            }
        }
        Ok(())
    }

    fn headers(&mut self, cx: &mut Context<'_>, head: &Head, payload: &[u8]) -> Result<(), Fatal> {
        if head.stream == 0 || head.stream.is_multiple_of(2) {
            return Err(Fatal(
                Reason::Protocol,
                "HEADERS on a stream a client cannot open",
            ));
        }
        let (mut from, to) = frame::unpadded(head, payload)
            .ok_or(Fatal(Reason::Protocol, "padding longer than the frame"))?;
        if head.has(frame::PRIORITY) {
            from += 5;
            if from > to {
                return Err(Fatal(
                    Reason::FrameSize,
                    "HEADERS shorter than its priority",
                ));
            }
        }
        let fragment = &payload[from..to];
        let end_stream = head.has(frame::END_STREAM);
        if head.has(frame::END_HEADERS) {
            return self.header_block(cx, head.stream, end_stream, fragment);
        }
        self.block = Some(Block {
            stream: head.stream,
            end_stream,
            bytes: fragment.to_vec(),
        });
        Ok(())
    }

    fn continuation(
        &mut self,
        cx: &mut Context<'_>,
        head: &Head,
        payload: &[u8],
    ) -> Result<(), Fatal> {
        let Some(mut block) = self.block.take() else {
            return Err(Fatal(Reason::Protocol, "CONTINUATION without HEADERS"));
        };
        if block.stream != head.stream {
            return Err(Fatal(Reason::Protocol, "CONTINUATION on another stream"));
        }
        // A block is decoded only whole (the HPACK state depends on all of it), so one past
        // the limit cannot be answered 431: the connection ends. Twice the limit leaves room
        // for a block that encodes its fields larger than they are.
        if block.bytes.len() + payload.len() > 2 * self.limits.max_header_bytes + 1024 {
            return Err(Fatal(
                Reason::EnhanceYourCalm,
                "header block past the limit",
            ));
        }
        block.bytes.extend_from_slice(payload);
        if !head.has(frame::END_HEADERS) {
            self.block = Some(block);
            return Ok(());
        }
        self.header_block(cx, block.stream, block.end_stream, &block.bytes)
    }

    /// A whole header block: a new request, or a request's trailers.
    fn header_block(
        &mut self,
        cx: &mut Context<'_>,
        id: u32,
        end_stream: bool,
        block: &[u8],
    ) -> Result<(), Fatal> {
        let mut fields = RequestFields::new(self.limits.max_header_bytes);
        self.decoder
            .decode(block, |name, value| fields.add(name, value))
            .map_err(|_| Fatal(Reason::Compression, "undecodable header block"))?;
        if id <= self.last_stream {
            return self.trailers(id, end_stream);
        }
        self.last_stream = id;
        if self.phase != Phase::Open {
            // After GOAWAY: not processed, as GOAWAY's last stream told the client.
            return Ok(());
        }
        self.last_taken = id;
        if self.streams.len() >= MAX_STREAMS {
            frame::reset(&mut self.output, id, Reason::RefusedStream);
            return Ok(());
        }
        let content_length = fields.content_length;
        let parts = match fields.finish() {
            Ok(parts) if end_stream && content_length.is_some_and(|l| l > 0) => {
                drop(parts);
                return self.refuse(id, "content-length without a body");
            }
            Ok(parts) => parts,
            Err(Malformed::TooLarge) => {
                let answer = self.service.short(
                    StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                    "request header fields too large\n",
                );
                self.open(id, end_stream, None, content_length);
                self.answer(id, answer);
                return Ok(());
            }
            Err(Malformed::Invalid(why)) => return self.refuse(id, why),
        };
        let inbox = (!end_stream).then(|| Inbox::new(cx.waker().clone()));
        let body = RequestBody::new(inbox.clone(), STREAM_WINDOW / 2);
        let future = self.service.call(hyper::Request::from_parts(parts, body));
        let (future, abort) = futures_util::future::abortable(future);
        self.answering.push(Tagged { id, inner: future });
        self.open(id, end_stream, Some(abort), content_length);
        if let Some(stream) = self.streams.last_mut() {
            stream.inbox = inbox;
        }
        Ok(())
    }

    fn open(
        &mut self,
        id: u32,
        end_stream: bool,
        abort: Option<AbortHandle>,
        content_length: Option<u64>,
    ) {
        self.streams.push(Stream {
            id,
            answer: match abort {
                Some(abort) => Answer::Waiting(abort),
                None => Answer::Sent,
            },
            inbox: None,
            receiving: !end_stream,
            recv_window: STREAM_WINDOW as i64,
            unannounced: 0,
            received: 0,
            content_length,
            send_window: self.peer_initial_window,
        });
    }

    /// A malformed request: its stream is reset.
    fn refuse(&mut self, id: u32, why: &'static str) -> Result<(), Fatal> {
        tracing::debug!(stream = id, why, "HTTP/2 request malformed; stream reset");
        self.count_error_reset()?;
        frame::reset(&mut self.output, id, Reason::Protocol);
        Ok(())
    }

    fn count_error_reset(&mut self) -> Result<(), Fatal> {
        self.error_resets += 1;
        if self.error_resets > MAX_ERROR_RESETS {
            return Err(Fatal(Reason::EnhanceYourCalm, "too many malformed streams"));
        }
        Ok(())
    }

    /// A second header block on a stream: its trailers, which end it (they are not
    /// forwarded: the server is reached over HTTP/1.1 without them).
    fn trailers(&mut self, id: u32, end_stream: bool) -> Result<(), Fatal> {
        let Some(index) = self.position(id) else {
            // Trailers of a stream closed here that the client had not heard of yet (answered
            // before its body ended, or reset): decoded, and nothing else to do.
            return Ok(());
        };
        if !end_stream || !self.streams[index].receiving {
            return self.stream_error(id, Reason::Protocol, "trailers without END_STREAM");
        }
        let stream = &mut self.streams[index];
        stream.receiving = false;
        if let Some(inbox) = &stream.inbox {
            inbox.push(Bytes::new(), true);
        }
        if stream.done() {
            self.remove(index);
        }
        Ok(())
    }

    fn priority(&mut self, head: &Head, payload: &[u8]) -> Result<(), Fatal> {
        if head.stream == 0 {
            return Err(Fatal(Reason::Protocol, "PRIORITY on stream 0"));
        }
        if payload.len() != 5 {
            return self.stream_error(head.stream, Reason::FrameSize, "PRIORITY of a bad size");
        }
        Ok(())
    }

    fn reset_by_client(&mut self, head: &Head, payload: &[u8]) -> Result<(), Fatal> {
        if payload.len() != 4 {
            return Err(Fatal(Reason::FrameSize, "RST_STREAM of a bad size"));
        }
        self.not_idle(head)?;
        let Some(index) = self.position(head.stream) else {
            return Ok(());
        };
        if matches!(self.streams[index].answer, Answer::Waiting(_)) {
            self.cancelled += 1;
            if self.cancelled > MAX_CANCELLED + self.answered {
                return Err(Fatal(
                    Reason::EnhanceYourCalm,
                    "streams reset before their answer",
                ));
            }
        }
        self.remove(index);
        Ok(())
    }

    fn settings(&mut self, head: &Head, payload: &[u8]) -> Result<(), Fatal> {
        if head.stream != 0 {
            return Err(Fatal(Reason::Protocol, "SETTINGS on a stream"));
        }
        if head.has(frame::ACK) {
            if !payload.is_empty() {
                return Err(Fatal(Reason::FrameSize, "SETTINGS ACK with a payload"));
            }
            return Ok(());
        }
        if !payload.len().is_multiple_of(6) {
            return Err(Fatal(Reason::FrameSize, "SETTINGS of a bad size"));
        }
        self.settings_seen = true;
        for setting in payload.chunks_exact(6) {
            let id = u16::from_be_bytes([setting[0], setting[1]]);
            let value = u32::from_be_bytes([setting[2], setting[3], setting[4], setting[5]]);
            self.setting(id, value)?;
        }
        frame::settings_ack(&mut self.output);
        Ok(())
    }

    fn setting(&mut self, id: u16, value: u32) -> Result<(), Fatal> {
        match id {
            0x1 => self.table_size_update = true,
            0x2 if value > 1 => return Err(Fatal(Reason::Protocol, "ENABLE_PUSH above 1")),
            0x4 => {
                let value = i64::from(value);
                if value > frame::MAX_WINDOW {
                    return Err(Fatal(Reason::FlowControl, "INITIAL_WINDOW_SIZE too large"));
                }
                let delta = value - self.peer_initial_window;
                self.peer_initial_window = value;
                for stream in &mut self.streams {
                    stream.send_window += delta;
                    if stream.send_window > frame::MAX_WINDOW {
                        return Err(Fatal(Reason::FlowControl, "a stream window past 2^31-1"));
                    }
                }
            }
            0x5 => {
                let value = value as usize;
                if !(frame::DEFAULT_MAX_FRAME..1 << 24).contains(&value) {
                    return Err(Fatal(Reason::Protocol, "MAX_FRAME_SIZE out of range"));
                }
                self.peer_max_frame = value;
            }
            // The others (and unknown ones) change nothing here: this side never pushes, and
            // its answers' heads are what its servers sent.
            _ => {}
        }
        Ok(())
    }

    fn ping(&mut self, head: &Head, payload: &[u8]) -> Result<(), Fatal> {
        if head.stream != 0 {
            return Err(Fatal(Reason::Protocol, "PING on a stream"));
        }
        if payload.len() != 8 {
            return Err(Fatal(Reason::FrameSize, "PING of a bad size"));
        }
        if !head.has(frame::ACK) {
            frame::ping_ack(&mut self.output, payload);
        }
        Ok(())
    }

    fn goaway_from_client(&mut self, head: &Head, payload: &[u8]) -> Result<(), Fatal> {
        if head.stream != 0 {
            return Err(Fatal(Reason::Protocol, "GOAWAY on a stream"));
        }
        if payload.len() < 8 {
            return Err(Fatal(Reason::FrameSize, "GOAWAY of a bad size"));
        }
        // The client opens no more streams: the ones it has finish, then the connection ends.
        if self.phase == Phase::Open {
            self.phase = Phase::Draining;
        }
        Ok(())
    }

    fn window_update(&mut self, head: &Head, payload: &[u8]) -> Result<(), Fatal> {
        if payload.len() != 4 {
            return Err(Fatal(Reason::FrameSize, "WINDOW_UPDATE of a bad size"));
        }
        let increment = i64::from(
            u32::from_be_bytes([payload[0], payload[1], payload[2], payload[3]]) & 0x7fff_ffff,
        );
        if head.stream == 0 {
            if increment == 0 {
                return Err(Fatal(Reason::Protocol, "WINDOW_UPDATE of 0"));
            }
            self.send_window += increment;
            if self.send_window > frame::MAX_WINDOW {
                return Err(Fatal(Reason::FlowControl, "connection window past 2^31-1"));
            }
            return Ok(());
        }
        self.not_idle(head)?;
        let Some(index) = self.position(head.stream) else {
            return Ok(());
        };
        if increment == 0 {
            return self.stream_error(head.stream, Reason::Protocol, "WINDOW_UPDATE of 0");
        }
        let stream = &mut self.streams[index];
        stream.send_window += increment;
        if stream.send_window > frame::MAX_WINDOW {
            return self.stream_error(head.stream, Reason::FlowControl, "window past 2^31-1");
        }
        Ok(())
    }

    /// Resets stream `id` for the client's error.
    fn stream_error(&mut self, id: u32, reason: Reason, why: &'static str) -> Result<(), Fatal> {
        tracing::debug!(
            stream = id,
            ?reason,
            why,
            "HTTP/2 stream error; stream reset"
        );
        self.count_error_reset()?;
        frame::reset(&mut self.output, id, reason);
        if let Some(index) = self.position(id) {
            self.remove(index);
        }
        Ok(())
    }

    /// Forgets stream `index`: its answer is dropped (a pending one aborted), its request body
    /// ends for its reader, and what the body held comes back to the connection's window.
    fn remove(&mut self, index: usize) {
        let stream = self.streams.swap_remove(index);
        if let Answer::Waiting(abort) = &stream.answer {
            abort.abort();
        }
        if let Some(inbox) = &stream.inbox {
            let dropped = if stream.receiving {
                inbox.break_off(|| BodyBroken::Reset)
            } else {
                0
            };
            self.unannounced += inbox.taken() + dropped;
        }
        if self.streams.is_empty() {
            self.idle_since = Instant::now();
        }
    }

    /// Answers that became ready: their heads go out.
    fn poll_answers(&mut self, cx: &mut Context<'_>) -> bool {
        let mut any = false;
        while let Poll::Ready(Some((id, done))) = Pin::new(&mut self.answering).poll_next(cx) {
            any = true;
            if let Ok(response) = done {
                self.answered += 1;
                self.answer(id, response);
            }
        }
        any
    }

    /// Sends `response`'s head on stream `id` (if the stream is still there).
    fn answer(&mut self, id: u32, response: Response<F::Body>) {
        let Some(index) = self.position(id) else {
            return;
        };
        let (parts, body) = response.into_parts();
        let end = body.is_end_stream();
        self.scratch.clear();
        fields::answer_block(
            &mut self.scratch,
            Some(parts.status),
            &parts.headers,
            std::mem::take(&mut self.table_size_update),
        );
        frame::headers(
            &mut self.output,
            id,
            &self.scratch,
            end,
            self.peer_max_frame,
        );
        self.streams[index].answer = if end {
            Answer::Sent
        } else {
            Answer::Sending {
                body,
                pending: Bytes::new(),
            }
        };
        self.answer_sent(index);
    }

    /// After an answer's last frame: a stream whose request is also over is forgotten; one
    /// whose request body still arrives is reset (`NO_ERROR`: the answer did not need it).
    fn answer_sent(&mut self, index: usize) {
        let stream = &self.streams[index];
        if !matches!(stream.answer, Answer::Sent) {
            return;
        }
        if stream.receiving {
            frame::reset(&mut self.output, stream.id, Reason::NoError);
        }
        self.remove(index);
    }

    /// Sends what the windows allow of the bodies being sent, one frame per stream in turn.
    fn poll_bodies(&mut self, cx: &mut Context<'_>) -> bool {
        let mut any = false;
        loop {
            let mut sent = false;
            let mut index = 0;
            while index < self.streams.len() {
                if self.output.len() - self.written >= OUTPUT_HIGH || self.send_window <= 0 {
                    return any;
                }
                let before = self.streams.len();
                sent |= self.poll_body(cx, index);
                // A stream done is swapped out for the last one: look at this index again.
                if self.streams.len() == before {
                    index += 1;
                }
            }
            any |= sent;
            if !sent {
                return any;
            }
        }
    }

    /// One frame of stream `index`'s body, if its window and its body allow; whether one went.
    fn poll_body(&mut self, cx: &mut Context<'_>, index: usize) -> bool {
        let max_frame = self.peer_max_frame;
        let stream = &mut self.streams[index];
        let Answer::Sending { body, pending } = &mut stream.answer else {
            return false;
        };
        if pending.is_empty() {
            match Pin::new(&mut *body).poll_frame(cx) {
                Poll::Pending => return false,
                Poll::Ready(None) => {
                    frame::data_head(&mut self.output, stream.id, 0, true);
                    stream.answer = Answer::Sent;
                    self.answer_sent(index);
                    return true;
                }
                Poll::Ready(Some(Err(error))) => {
                    let id = stream.id;
                    tracing::debug!(stream = id, %error, "HTTP/2 answer body broke off");
                    frame::reset(&mut self.output, id, Reason::Internal);
                    self.remove(index);
                    return true;
                }
                Poll::Ready(Some(Ok(piece))) => match piece.into_data() {
                    // Nothing to send: the next piece, in the next pass.
                    Ok(data) if data.is_empty() => return true,
                    Ok(data) => *pending = data,
                    // Trailers end the stream.
                    Err(piece) => {
                        let trailers = piece.into_trailers().unwrap_or_default();
                        self.scratch.clear();
                        fields::answer_block(&mut self.scratch, None, &trailers, false);
                        frame::headers(&mut self.output, stream.id, &self.scratch, true, max_frame);
                        stream.answer = Answer::Sent;
                        self.answer_sent(index);
                        return true;
                    }
                },
            }
        }
        let allowed = stream.send_window.min(self.send_window).max(0) as usize;
        let len = pending.len().min(allowed).min(max_frame);
        if len == 0 && !pending.is_empty() {
            return false;
        }
        let piece = pending.split_to(len);
        let end = pending.is_empty() && body.is_end_stream();
        frame::data_head(&mut self.output, stream.id, len, end);
        self.output.extend_from_slice(&piece);
        stream.send_window -= len as i64;
        self.send_window -= len as i64;
        if end {
            stream.answer = Answer::Sent;
            self.answer_sent(index);
        }
        true
    }

    /// Announces the window the readers of request bodies gave back.
    fn give_back_window(&mut self) {
        for stream in &mut self.streams {
            if let Some(inbox) = &stream.inbox {
                let taken = inbox.taken();
                stream.unannounced += taken;
                self.unannounced += taken;
            }
            if stream.receiving && stream.unannounced >= STREAM_WINDOW / 2 {
                frame::window_update(&mut self.output, stream.id, stream.unannounced as u32);
                stream.recv_window += stream.unannounced as i64;
                stream.unannounced = 0;
            }
        }
        if self.unannounced >= CONN_WINDOW / 2 {
            frame::window_update(&mut self.output, 0, self.unannounced as u32);
            self.recv_window += self.unannounced as i64;
            self.unannounced = 0;
        }
    }

    /// Writes the output; ready once all of it is written and flushed.
    fn poll_output(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.written < self.output.len() {
            let n = ready!(Pin::new(&mut self.io).poll_write(cx, &self.output[self.written..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.written += n;
            self.last_written = Instant::now();
        }
        if self.written > 0 {
            self.output.clear();
            self.written = 0;
            if self.streams.is_empty() && self.output.capacity() > OUTPUT_IDLE {
                // An idle connection (most of a browser's) keeps a small buffer.
                self.output.shrink_to(OUTPUT_IDLE);
            }
        }
        // TLS keeps what the socket did not take until flushed.
        Pin::new(&mut self.io).poll_flush(cx)
    }

    /// The client timeout: an idle connection goes away, one whose client reads nothing ends.
    fn poll_timer(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Ended>> {
        let limit = self.limits.client_timeout;
        while self.timer.as_mut().poll(cx).is_ready() {
            let now = Instant::now();
            let unread = !self.output.is_empty();
            if unread && now.duration_since(self.last_written) >= limit {
                return Poll::Ready(Err(Ended::Stalled));
            }
            if self.streams.is_empty() && now.duration_since(self.idle_since) >= limit {
                if self.phase == Phase::Preface {
                    return Poll::Ready(Ok(()));
                }
                self.go_away(Reason::NoError);
                cx.waker().wake_by_ref();
            }
            let next = if unread {
                limit.saturating_sub(now.duration_since(self.last_written))
            } else if self.streams.is_empty() {
                limit.saturating_sub(now.duration_since(self.idle_since))
            } else {
                limit
            };
            self.timer
                .as_mut()
                .reset(tokio::time::Instant::now() + next.max(Duration::from_millis(10)));
        }
        Poll::Pending
    }

    /// GOAWAY (with the last stream opened: those are served), then no new stream.
    fn go_away(&mut self, reason: Reason) {
        if matches!(self.phase, Phase::Draining | Phase::Flushing) {
            return;
        }
        frame::goaway(&mut self.output, self.last_taken, reason);
        self.phase = if self.phase == Phase::Preface {
            Phase::Flushing
        } else {
            Phase::Draining
        };
    }

    /// A connection error: GOAWAY with `reason`, every stream dropped, and the connection
    /// closed once that is written.
    fn fail(&mut self, reason: Reason, why: &'static str) {
        tracing::debug!(?reason, why, "HTTP/2 connection error; GOAWAY");
        frame::goaway(&mut self.output, self.last_taken, reason);
        self.abandon();
        self.phase = Phase::Flushing;
        self.failure = Some(Ended::Protocol { reason, why });
    }

    /// Drops every stream (the client is gone, or broke the protocol).
    fn abandon(&mut self) {
        while !self.streams.is_empty() {
            self.remove(self.streams.len() - 1);
        }
        self.answering = FuturesUnordered::new();
    }
}

impl<S, F> Future for Connection<S, F>
where
    S: AsyncRead + AsyncWrite + Unpin,
    F: Service + Unpin,
{
    type Output = Result<(), Ended>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.get_mut().turn(cx)
    }
}
