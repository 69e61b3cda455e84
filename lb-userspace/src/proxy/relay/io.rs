//! Moving HTTP/1.1 message bytes: heads read whole, bodies copied as they are (by length, or
//! chunk by chunk with their trailers).
//!
//! A copy flushes its writer before each read from its reader (a no-op on a TCP socket). A TLS writer (tokio-rustls) keeps
//! what the socket did not take in its own buffer until the next write or flush: without the
//! flush, the end of a response could sit there while the relay waits for the server, or for
//! the client's next request, which never comes since the client still waits for that end.

use bytes::{Buf as _, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};

/// The largest read of a body copied through userspace.
const CHUNK: usize = 256 * 1024;

/// Which end of a copy failed: the side it was reading from (which includes malformed input,
/// e.g. a bad chunk size) or the side it was writing to.
#[derive(Debug)]
pub(super) enum Broken {
    Reading(std::io::Error),
    Writing(std::io::Error),
}

/// Reads until `buf` holds a complete message head; its length, `None` on EOF first.
pub(super) async fn read_head<R: AsyncRead + Unpin>(
    stream: &mut R,
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

/// Copies a chunked body (its chunks, the last chunk and the trailers) as it is, reading
/// `buf` first, then `from`; returns the payload size. Leaves in `buf` what follows it.
pub(super) async fn copy_chunked<R, W>(
    buf: &mut BytesMut,
    from: &mut R,
    to: &mut W,
) -> Result<u64, Broken>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut payload = 0u64;
    loop {
        let line = read_line(buf, from, to).await?;
        let size = chunk_size(&buf[..line]).ok_or_else(|| Broken::Reading(bad_chunk()))?;
        to.write_all(&buf[..line]).await.map_err(Broken::Writing)?;
        buf.advance(line);
        if size == 0 {
            // Trailers, then the empty line.
            loop {
                let line = read_line(buf, from, to).await?;
                let empty = line == 2;
                to.write_all(&buf[..line]).await.map_err(Broken::Writing)?;
                buf.advance(line);
                if empty {
                    return Ok(payload);
                }
            }
        }
        copy_body(buf, from, to, size).await?;
        let crlf = read_line(buf, from, to).await?;
        if crlf != 2 {
            return Err(Broken::Reading(bad_chunk()));
        }
        to.write_all(&buf[..2]).await.map_err(Broken::Writing)?;
        buf.advance(2);
        payload += size;
    }
}

/// The size a chunk-size line (with its CRLF) gives, extensions ignored.
pub(super) fn chunk_size(line: &[u8]) -> Option<u64> {
    let text = std::str::from_utf8(line).ok()?;
    let size = text.trim_end().split(';').next()?.trim();
    u64::from_str_radix(size, 16).ok()
}

fn bad_chunk() -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, "bad chunked encoding")
}

/// Reads until `buf` starts with a CRLF-terminated line (at most 4 KiB); its length. `to` is
/// flushed before each read from `from`.
async fn read_line<R, W>(buf: &mut BytesMut, from: &mut R, to: &mut W) -> Result<usize, Broken>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    loop {
        if let Some(i) = buf.windows(2).position(|w| w == b"\r\n") {
            return Ok(i + 2);
        }
        if buf.len() > 4096 {
            return Err(Broken::Reading(bad_chunk()));
        }
        to.flush().await.map_err(Broken::Writing)?;
        if from.read_buf(buf).await.map_err(Broken::Reading)? == 0 {
            return Err(Broken::Reading(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "closed in the middle of a chunked body",
            )));
        }
    }
}

/// Copies `len` body bytes: first from `buf`, then from `from` (`to` flushed before each read
/// from it).
pub(super) async fn copy_body<R, W>(
    buf: &mut BytesMut,
    from: &mut R,
    to: &mut W,
    len: u64,
) -> Result<(), Broken>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let buffered = usize::try_from(len).unwrap_or(usize::MAX).min(buf.len());
    if buffered > 0 {
        to.write_all(&buf[..buffered])
            .await
            .map_err(Broken::Writing)?;
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
        to.flush().await.map_err(Broken::Writing)?;
        let n = from
            .read(&mut chunk[..want])
            .await
            .map_err(Broken::Reading)?;
        if n == 0 {
            return Err(Broken::Reading(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "closed in the middle of a body",
            )));
        }
        to.write_all(&chunk[..n]).await.map_err(Broken::Writing)?;
        left -= n as u64;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

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
        assert!(
            matches!(err, Err(Broken::Reading(_))),
            "a bad chunk size is the reader's"
        );
        let mut buf = BytesMut::from(&b"5\r\nhel"[..]);
        let err = copy_chunked(&mut buf, &mut &b""[..], &mut Vec::new()).await;
        assert!(err.is_err(), "closed mid-chunk");
    }
}
