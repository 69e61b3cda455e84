//! The bulk-transfer client of `cargo xtask bench` (`lb-bench client`, run inside the client
//! namespace): on one keep-alive connection, a small request that makes the session, a pause
//! (a person between loading a page and clicking a download), then one large download. The
//! fast path can take the connection over in that pause, as it would for a browser; a client
//! that sends its next request at once races the hand-off instead (see docs/SPLICE.md).
//!
//! It prints one line: `BULK <status> <bytes> <start_ns> <end_ns>`, the times on
//! CLOCK_MONOTONIC (shared by every namespace), around the download only.

use std::{io::Write as _, net::TcpStream, time::Duration};

use anyhow::{bail, Context as _};

#[derive(Debug, clap::Args)]
pub(crate) struct ClientArgs {
    /// host:port of the load balancer (or the server).
    #[arg(long)]
    addr: String,
    /// The JSESSIONID this client keeps.
    #[arg(long)]
    session: String,
    /// Size of the download.
    #[arg(long)]
    bytes: u64,
    /// Pause between the first response and the download, in milliseconds.
    #[arg(long, default_value_t = 100)]
    think_ms: u64,
}

pub(crate) fn run(args: &ClientArgs) -> anyhow::Result<()> {
    let mut stream =
        TcpStream::connect(&args.addr).with_context(|| format!("connecting to {}", args.addr))?;
    stream.set_read_timeout(Some(Duration::from_secs(120)))?;
    let mut buf = vec![0u8; 256 * 1024];
    let (status, _) = exchange(&mut stream, &mut buf, "/", &args.session)?;
    if status != 200 {
        bail!("the first request was answered {status}");
    }
    std::thread::sleep(Duration::from_millis(args.think_ms));
    let start = monotonic_ns();
    let (status, body) = exchange(
        &mut stream,
        &mut buf,
        &format!("/bytes/{}", args.bytes),
        &args.session,
    )?;
    let end = monotonic_ns();
    println!("BULK {status} {body} {start} {end}");
    Ok(())
}

/// One request; the response's status and body size (Content-Length framing only, which is
/// what `stickylb-backend` sends).
fn exchange(
    stream: &mut TcpStream,
    buf: &mut [u8],
    path: &str,
    session: &str,
) -> anyhow::Result<(u16, u64)> {
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: bench\r\nCookie: c1=1; c2=2; JSESSIONID={session}\r\n\r\n"
    );
    stream.write_all(request.as_bytes())?;
    let (status, _, length) = read_response(stream, buf)?;
    Ok((status, length))
}

/// Reads one response with a Content-Length body from `stream` (`buf` for its reads): its
/// status, head length and body length.
pub(crate) fn read_response(
    stream: &mut impl std::io::Read,
    buf: &mut [u8],
) -> anyhow::Result<(u16, u64, u64)> {
    let mut head = Vec::new();
    let head_end = loop {
        let n = stream.read(buf)?;
        if n == 0 {
            bail!("closed before the response head");
        }
        head.extend_from_slice(buf.get(..n).unwrap_or_default());
        if let Some(i) = head.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        if head.len() > 64 * 1024 {
            bail!("response head too large");
        }
    };
    let (status, length) = parse_head(head.get(..head_end).unwrap_or_default())?;
    let mut received = (head.len() - head_end) as u64;
    while received < length {
        let n = stream.read(buf)?;
        if n == 0 {
            bail!("closed after {received} of {length} body bytes");
        }
        received += n as u64;
    }
    if received != length {
        bail!("{received} body bytes for a Content-Length of {length}");
    }
    Ok((status, head_end as u64, length))
}

/// The status and Content-Length of a response head (the bench's servers always send one).
pub(crate) fn parse_head(head: &[u8]) -> anyhow::Result<(u16, u64)> {
    let text = String::from_utf8_lossy(head);
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .context("no status in the response")?;
    let length = text
        .lines()
        .find_map(|line| {
            let (name, value) = line.split_once(':')?;
            name.trim()
                .eq_ignore_ascii_case("content-length")
                .then(|| value.trim().parse().ok())?
        })
        .context("no Content-Length in the response")?;
    Ok((status, length))
}

pub(crate) fn monotonic_ns() -> u64 {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `now` is a valid timespec for the kernel to fill.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut now) };
    (now.tv_sec as u64) * 1_000_000_000 + now.tv_nsec as u64
}

/// The figures of one client's `BULK` line.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Bulk {
    pub(crate) status: u16,
    pub(crate) bytes: u64,
    pub(crate) start_ns: u64,
    pub(crate) end_ns: u64,
}

pub(crate) fn parse_line(output: &str) -> Option<Bulk> {
    let line = output.lines().find(|l| l.starts_with("BULK "))?;
    let mut fields = line.split_whitespace().skip(1);
    let mut next = || fields.next()?.parse::<u64>().ok();
    Some(Bulk {
        status: u16::try_from(next()?).ok()?,
        bytes: next()?,
        start_ns: next()?,
        end_ns: next()?,
    })
}

#[cfg(test)]
mod tests {
    use super::{parse_line, Bulk};

    #[test]
    fn bulk_lines_parse() {
        assert_eq!(
            parse_line("noise\nBULK 200 1024 5 9\n"),
            Some(Bulk {
                status: 200,
                bytes: 1024,
                start_ns: 5,
                end_ns: 9
            })
        );
        assert_eq!(parse_line("BULK 200 x 5 9"), None);
        assert_eq!(parse_line(""), None);
    }
}
