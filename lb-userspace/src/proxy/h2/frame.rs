//! HTTP/2 frames (RFC 9113 section 4 and 6): the 9-byte header read from the client's bytes,
//! and the frames this side writes, appended to the connection's output buffer.

use bytes::BufMut as _;

/// The client's first bytes on an HTTP/2 connection (RFC 9113 section 3.4).
pub(super) const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
pub(super) const HEAD_LEN: usize = 9;
/// The largest frame payload either side may send until told otherwise (and the most this side
/// accepts: it never announces more).
pub(super) const DEFAULT_MAX_FRAME: usize = 16_384;
/// The window every stream and the connection start with (RFC 9113 section 6.9.2).
pub(super) const DEFAULT_WINDOW: i64 = 65_535;
pub(super) const MAX_WINDOW: i64 = (1 << 31) - 1;

/// Frame types (RFC 9113 section 6).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Kind {
    Data,
    Headers,
    Priority,
    ResetStream,
    Settings,
    PushPromise,
    Ping,
    GoAway,
    WindowUpdate,
    Continuation,
    /// Ignored, as the protocol asks (section 5.5).
    Unknown(u8),
}

impl Kind {
    fn of(byte: u8) -> Kind {
        match byte {
            0x0 => Kind::Data,
            0x1 => Kind::Headers,
            0x2 => Kind::Priority,
            0x3 => Kind::ResetStream,
            0x4 => Kind::Settings,
            0x5 => Kind::PushPromise,
            0x6 => Kind::Ping,
            0x7 => Kind::GoAway,
            0x8 => Kind::WindowUpdate,
            0x9 => Kind::Continuation,
            other => Kind::Unknown(other),
        }
    }
}

pub(super) const END_STREAM: u8 = 0x1;
pub(super) const ACK: u8 = 0x1;
pub(super) const END_HEADERS: u8 = 0x4;
pub(super) const PADDED: u8 = 0x8;
pub(super) const PRIORITY: u8 = 0x20;

/// Error codes (RFC 9113 section 7).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u32)]
pub(in crate::proxy) enum Reason {
    NoError = 0x0,
    Protocol = 0x1,
    Internal = 0x2,
    FlowControl = 0x3,
    StreamClosed = 0x5,
    FrameSize = 0x6,
    RefusedStream = 0x7,
    Compression = 0x9,
    EnhanceYourCalm = 0xb,
}

/// The header of one frame.
#[derive(Clone, Copy, Debug)]
pub(super) struct Head {
    pub(super) len: usize,
    pub(super) kind: Kind,
    pub(super) flags: u8,
    pub(super) stream: u32,
}

impl Head {
    /// The header at the start of `bytes` (at least [`HEAD_LEN`] of them).
    pub(super) fn parse(bytes: &[u8]) -> Head {
        let len = usize::from(bytes[0]) << 16 | usize::from(bytes[1]) << 8 | usize::from(bytes[2]);
        let stream = u32::from_be_bytes([bytes[5], bytes[6], bytes[7], bytes[8]]) & 0x7fff_ffff;
        Head {
            len,
            kind: Kind::of(bytes[3]),
            flags: bytes[4],
            stream,
        }
    }

    pub(super) fn has(&self, flag: u8) -> bool {
        self.flags & flag != 0
    }
}

/// A payload without its padding (`PADDED`: a length byte first, that many bytes last); `None`
/// when the padding is longer than the payload, a connection error (section 6.1).
pub(super) fn unpadded(head: &Head, payload: &[u8]) -> Option<(usize, usize)> {
    if !head.has(PADDED) {
        return Some((0, payload.len()));
    }
    let pad = usize::from(*payload.first()?);
    let end = payload.len().checked_sub(pad)?;
    (end >= 1).then_some((1, end))
}

fn put_head(out: &mut Vec<u8>, len: usize, kind: u8, flags: u8, stream: u32) {
    debug_assert!(len < 1 << 24);
    let len = u32::try_from(len).unwrap_or(0).to_be_bytes();
    out.extend_from_slice(&[len[1], len[2], len[3], kind, flags]);
    out.put_u32(stream);
}

/// SETTINGS with `values` (identifier, value).
pub(super) fn settings(out: &mut Vec<u8>, values: &[(u16, u32)]) {
    put_head(out, values.len() * 6, 0x4, 0, 0);
    for (id, value) in values {
        out.put_u16(*id);
        out.put_u32(*value);
    }
}

pub(super) fn settings_ack(out: &mut Vec<u8>) {
    put_head(out, 0, 0x4, ACK, 0);
}

pub(super) fn ping_ack(out: &mut Vec<u8>, data: &[u8]) {
    put_head(out, data.len(), 0x6, ACK, 0);
    out.extend_from_slice(data);
}

pub(super) fn window_update(out: &mut Vec<u8>, stream: u32, increment: u32) {
    put_head(out, 4, 0x8, 0, stream);
    out.put_u32(increment);
}

pub(super) fn reset(out: &mut Vec<u8>, stream: u32, reason: Reason) {
    put_head(out, 4, 0x3, 0, stream);
    out.put_u32(reason as u32);
}

pub(super) fn goaway(out: &mut Vec<u8>, last_stream: u32, reason: Reason) {
    put_head(out, 8, 0x7, 0, 0);
    out.put_u32(last_stream);
    out.put_u32(reason as u32);
}

/// A header block as HEADERS and, past `max_frame` bytes, CONTINUATION frames.
pub(super) fn headers(
    out: &mut Vec<u8>,
    stream: u32,
    block: &[u8],
    end_stream: bool,
    max_frame: usize,
) {
    let mut pieces = block.chunks(max_frame).peekable();
    let mut kind = 0x1;
    let mut flags = if end_stream { END_STREAM } else { 0 };
    // An empty block is still one HEADERS frame.
    let first: &[u8] = pieces.next().unwrap_or(&[]);
    let mut piece = first;
    loop {
        let last = pieces.peek().is_none();
        if last {
            flags |= END_HEADERS;
        }
        put_head(out, piece.len(), kind, flags, stream);
        out.extend_from_slice(piece);
        match pieces.next() {
            Some(next) => piece = next,
            None => return,
        }
        kind = 0x9;
        flags = 0;
    }
}

/// The header of a DATA frame of `len` bytes (its payload follows).
pub(super) fn data_head(out: &mut Vec<u8>, stream: u32, len: usize, end_stream: bool) {
    put_head(
        out,
        len,
        0x0,
        if end_stream { END_STREAM } else { 0 },
        stream,
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_long_header_block_goes_on_in_continuation_frames() {
        let mut out = Vec::new();
        headers(&mut out, 3, &[7; 40], true, 16);
        let first = Head::parse(&out);
        assert_eq!(
            (first.len, first.kind, first.flags, first.stream),
            (16, Kind::Headers, END_STREAM, 3)
        );
        let second = Head::parse(&out[25..]);
        assert_eq!(
            (second.len, second.kind, second.flags),
            (16, Kind::Continuation, 0)
        );
        let third = Head::parse(&out[50..]);
        assert_eq!(
            (third.len, third.kind, third.flags),
            (8, Kind::Continuation, END_HEADERS)
        );
        assert_eq!(out.len(), 3 * HEAD_LEN + 40);
    }

    #[test]
    fn an_empty_header_block_is_one_frame() {
        let mut out = Vec::new();
        headers(&mut out, 1, &[], false, 16);
        let head = Head::parse(&out);
        assert_eq!(
            (head.len, head.kind, head.flags),
            (0, Kind::Headers, END_HEADERS)
        );
        assert_eq!(out.len(), HEAD_LEN);
    }

    #[test]
    fn padding_longer_than_the_payload_is_refused() {
        let head = Head {
            len: 3,
            kind: Kind::Data,
            flags: PADDED,
            stream: 1,
        };
        assert_eq!(unpadded(&head, &[1, b'a', 0]), Some((1, 2)));
        assert_eq!(unpadded(&head, &[3, b'a', 0]), None);
        assert_eq!(unpadded(&head, &[]), None);
    }
}
