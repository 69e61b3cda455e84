//! A minimal HTTP/1.1 client that runs inside a network namespace (on a thread that joined it),
//! so tests see exactly what a client host sees, byte for byte.

use std::{
    io::{Read as _, Write as _},
    net::TcpStream,
    thread,
    time::Duration,
};

/// Runs `f` on a thread that has joined network namespace `ns`.
pub fn in_netns<T: Send + 'static>(ns: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let ns = ns.to_owned();
    thread::spawn(move || {
        netns_kit::enter(&ns).unwrap_or_else(|e| panic!("{e:?}"));
        f()
    })
    .join()
    .expect("client thread panicked")
}

#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    pub head: String,
    pub body: Vec<u8>,
}

impl Response {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn header(&self, name: &str) -> Option<String> {
        self.head.lines().find_map(|line| {
            let (k, v) = line.split_once(':')?;
            k.eq_ignore_ascii_case(name).then(|| v.trim().to_owned())
        })
    }
}

/// Sends raw bytes, reads until the peer closes or `limit` passes; returns everything read.
pub fn raw_exchange(addr: &str, request: &[u8], limit: Duration) -> Vec<u8> {
    let mut stream = TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    stream.set_read_timeout(Some(limit)).unwrap();
    stream.write_all(request).unwrap();
    let mut out = Vec::new();
    let _ = stream.read_to_end(&mut out);
    out
}

/// One `GET path` on a new connection with an optional cookie header.
pub fn get(addr: &str, path: &str, cookie: Option<&str>) -> Response {
    let cookie = cookie
        .map(|c| format!("Cookie: {c}\r\n"))
        .unwrap_or_default();
    let request = format!("GET {path} HTTP/1.1\r\nHost: test\r\n{cookie}Connection: close\r\n\r\n");
    parse(&raw_exchange(
        addr,
        request.as_bytes(),
        Duration::from_secs(10),
    ))
}

/// Parses a complete response (Connection: close, or Content-Length).
pub fn parse(bytes: &[u8]) -> Response {
    let split = bytes
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("no response head in {:?}", String::from_utf8_lossy(bytes)));
    let head = String::from_utf8_lossy(&bytes[..split]).into_owned();
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("bad status line: {head}"));
    Response {
        status,
        head,
        body: bytes[split + 4..].to_vec(),
    }
}

/// A keep-alive connection for several requests (responses must carry Content-Length).
pub struct KeepAlive {
    stream: TcpStream,
}

impl KeepAlive {
    pub fn connect(addr: &str) -> KeepAlive {
        let stream = TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect {addr}: {e}"));
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        KeepAlive { stream }
    }

    pub fn get(&mut self, path: &str, cookie: Option<&str>) -> Response {
        let cookie = cookie
            .map(|c| format!("Cookie: {c}\r\n"))
            .unwrap_or_default();
        let request = format!("GET {path} HTTP/1.1\r\nHost: test\r\n{cookie}\r\n");
        self.stream.write_all(request.as_bytes()).unwrap();
        let mut buf = Vec::new();
        let mut chunk = [0u8; 65536];
        loop {
            let n = self.stream.read(&mut chunk).expect("read");
            assert!(n > 0, "connection closed mid-response");
            buf.extend_from_slice(&chunk[..n]);
            if let Some(split) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = parse(&buf[..split + 4]);
                let len: usize = head
                    .header("content-length")
                    .and_then(|l| l.parse().ok())
                    .expect("content-length");
                if buf.len() >= split + 4 + len {
                    return Response {
                        body: buf[split + 4..split + 4 + len].to_vec(),
                        ..head
                    };
                }
            }
        }
    }
}
