//! HTTP/1.1 message heads as the relay reads and writes them: parsed once with `httparse`,
//! kept as the bytes that came plus where their parts are, and rewritten for the server in one
//! pass (hop-by-hop headers dropped, the client appended to `X-Forwarded-For`). Nothing is
//! allocated per header.

use std::{net::IpAddr, ops::Range};

use bytes::Bytes;

use super::headers::{self, HOP_BY_HOP, X_FORWARDED_FOR};
use crate::cookie;

const MAX_HEADERS: usize = 100;

/// A request the relay forwards itself: HTTP/1.1, a body framed by Content-Length (or none),
/// no `Expect`; an upgrade only without a body.
pub(super) struct RequestHead {
    raw: Bytes,
    method: Range<usize>,
    path: Range<usize>,
    /// Name and value of each header, in order.
    headers: Vec<(Range<usize>, Range<usize>)>,
    /// Body length.
    pub(super) body: u64,
    /// The protocol of an upgrade request (`Upgrade` with `Connection: upgrade`).
    upgrade: Option<Range<usize>>,
    /// The client closes after this request (`Connection: close`).
    pub(super) close: bool,
}

impl RequestHead {
    /// Parses a complete head (ending with its empty line); `None` when the relay leaves the
    /// request to hyper (see the type's docs) or it is malformed.
    pub(super) fn parse(bytes: &[u8]) -> Option<RequestHead> {
        let mut slots = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut parsed = httparse::Request::new(&mut slots);
        if !parsed.parse(bytes).ok()?.is_complete() || parsed.version != Some(1) {
            return None;
        }
        let headers = parsed.headers;
        if ["transfer-encoding", "expect"]
            .iter()
            .any(|name| values(headers, name).next().is_some())
        {
            return None;
        }
        let body = content_length(headers)?.unwrap_or(0);
        let at = |part: &[u8]| offset(bytes, part);
        // An upgrade request carries no body, and names itself in Connection.
        let upgrade = values(headers, "upgrade").next();
        let upgrade = match upgrade {
            Some(protocol) if lists(headers, "connection", "upgrade") && body == 0 => {
                Some(at(protocol))
            }
            Some(_) => return None,
            None => None,
        };
        let method = parsed.method?;
        if method == "CONNECT" && body != 0 {
            return None;
        }
        Some(RequestHead {
            raw: Bytes::copy_from_slice(bytes),
            method: at(method.as_bytes()),
            path: at(parsed.path?.as_bytes()),
            headers: headers
                .iter()
                .map(|h| (at(h.name.as_bytes()), at(h.value)))
                .collect(),
            body,
            upgrade,
            close: lists(headers, "connection", "close"),
        })
    }

    pub(super) fn method(&self) -> &str {
        std::str::from_utf8(&self.raw[self.method.clone()]).unwrap_or("-")
    }

    pub(super) fn path(&self) -> &str {
        std::str::from_utf8(&self.raw[self.path.clone()]).unwrap_or("-")
    }

    /// The value of cookie `name` (see [`cookie::request_cookie`]).
    pub(super) fn cookie(&self, name: &str) -> Option<&[u8]> {
        cookie::request_cookie_in(self.values("cookie"), name)
    }

    /// Whether the request asks for a tunnel (an upgrade or `CONNECT`).
    pub(super) fn asks_tunnel(&self) -> bool {
        self.upgrade.is_some() || self.method() == "CONNECT"
    }

    /// Whether `status` turns the connection into a tunnel: `101` to an upgrade, `2xx` to
    /// `CONNECT`.
    pub(super) fn tunnels_on(&self, status: u16) -> bool {
        (self.upgrade.is_some() && status == 101)
            || (self.method() == "CONNECT" && (200..300).contains(&status))
    }

    /// The head as it goes to the server: hop-by-hop headers (and those `Connection` names)
    /// dropped, an upgrade kept, the client appended to `X-Forwarded-For`.
    pub(super) fn forwarded(&self, client: IpAddr, https: bool) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.raw.len() + 64);
        out.extend_from_slice(&self.raw[self.method.clone()]);
        out.push(b' ');
        out.extend_from_slice(&self.raw[self.path.clone()]);
        out.extend_from_slice(b" HTTP/1.1\r\n");
        let mut forwarded_for = None;
        for (name, value) in self.pairs() {
            if name.eq_ignore_ascii_case(X_FORWARDED_FOR.as_str().as_bytes()) {
                forwarded_for = forwarded_for.or(Some(value));
                continue;
            }
            if self.hop_by_hop(name) {
                continue;
            }
            // Over TLS the proxy says the scheme, whatever the client claimed.
            if https && name.eq_ignore_ascii_case(b"x-forwarded-proto") {
                continue;
            }
            push_header(&mut out, name, value);
        }
        if https {
            push_header(&mut out, b"x-forwarded-proto", b"https");
        }
        if let Some(protocol) = &self.upgrade {
            push_header(&mut out, b"upgrade", &self.raw[protocol.clone()]);
            push_header(&mut out, b"connection", b"upgrade");
        }
        out.extend_from_slice(X_FORWARDED_FOR.as_str().as_bytes());
        out.extend_from_slice(b": ");
        headers::forwarded_for(forwarded_for, client, &mut out);
        out.extend_from_slice(b"\r\n\r\n");
        out
    }

    fn pairs(&self) -> impl DoubleEndedIterator<Item = (&[u8], &[u8])> {
        self.headers
            .iter()
            .map(|(name, value)| (&self.raw[name.clone()], &self.raw[value.clone()]))
    }

    fn values<'a>(&'a self, name: &'a str) -> impl DoubleEndedIterator<Item = &'a [u8]> {
        self.pairs()
            .filter(move |(n, _)| n.eq_ignore_ascii_case(name.as_bytes()))
            .map(|(_, value)| value)
    }

    fn hop_by_hop(&self, name: &[u8]) -> bool {
        HOP_BY_HOP
            .iter()
            .any(|h| name.eq_ignore_ascii_case(h.as_str().as_bytes()))
            || self
                .values("connection")
                .flat_map(tokens)
                .any(|token| name.eq_ignore_ascii_case(token))
    }
}

/// How a response body ends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Framing {
    Length(u64),
    Chunked,
    /// Until the server closes, or what follows a 1xx: not HTTP messages the relay can follow.
    Unframed,
    /// The connection is now a tunnel (an accepted upgrade or CONNECT).
    Tunnel,
}

/// A parsed response head.
pub(super) struct ResponseHead {
    pub(super) status: u16,
    pub(super) body: Framing,
    /// The server closes after this response.
    pub(super) close: bool,
    /// The value the response sets for the stickiness cookie, if it does.
    pub(super) sets_cookie: Option<Vec<u8>>,
}

impl ResponseHead {
    /// Parses a complete head; `head_request`: the request was a `HEAD` (no body follows);
    /// `cookie`: the stickiness cookie's name.
    pub(super) fn parse(bytes: &[u8], head_request: bool, cookie: &str) -> Option<ResponseHead> {
        let mut slots = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut parsed = httparse::Response::new(&mut slots);
        if !parsed.parse(bytes).ok()?.is_complete() {
            return None;
        }
        Self::of(&parsed, head_request, cookie)
    }

    /// [`Self::parse`], with the head's status and end-to-end headers as hyper's response
    /// carries them (hop-by-hop headers, those `Connection` names and `Transfer-Encoding`
    /// dropped: they describe the server's connection). The values share `head`'s bytes.
    pub(super) fn parse_for_hyper(
        head: &Bytes,
        head_request: bool,
        cookie: &str,
    ) -> Option<(ResponseHead, hyper::StatusCode, hyper::HeaderMap)> {
        let mut slots = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut parsed = httparse::Response::new(&mut slots);
        if !parsed.parse(head).ok()?.is_complete() {
            return None;
        }
        let response = Self::of(&parsed, head_request, cookie)?;
        let status = hyper::StatusCode::from_u16(response.status).ok()?;
        let named = |name: &[u8]| {
            values(parsed.headers, "connection")
                .flat_map(tokens)
                .any(|token| name.eq_ignore_ascii_case(token))
        };
        let mut map = hyper::HeaderMap::with_capacity(parsed.headers.len());
        for header in parsed.headers.iter() {
            let name = header.name.as_bytes();
            let dropped = HOP_BY_HOP
                .iter()
                .any(|h| name.eq_ignore_ascii_case(h.as_str().as_bytes()))
                || name.eq_ignore_ascii_case(b"transfer-encoding")
                || named(name);
            if dropped {
                continue;
            }
            let name = hyper::header::HeaderName::from_bytes(name).ok()?;
            let value =
                hyper::header::HeaderValue::from_maybe_shared(head.slice_ref(header.value)).ok()?;
            map.append(name, value);
        }
        Some((response, status, map))
    }

    fn of(parsed: &httparse::Response<'_, '_>, head_request: bool, cookie: &str) -> Option<Self> {
        let status = parsed.code?;
        let headers = &*parsed.headers;
        let close = parsed.version != Some(1) || lists(headers, "connection", "close");
        let body = if (100..200).contains(&status) {
            // 1xx (e.g. 101) has no body, but what follows is not HTTP.
            Framing::Unframed
        } else if head_request || status == 204 || status == 304 {
            Framing::Length(0)
        } else if let Some(codings) = values(headers, "transfer-encoding").next() {
            let chunked_last = tokens(codings)
                .next_back()
                .is_some_and(|last| last.eq_ignore_ascii_case(b"chunked"));
            if chunked_last && values(headers, "transfer-encoding").count() == 1 {
                Framing::Chunked
            } else {
                Framing::Unframed
            }
        } else {
            content_length(headers)?.map_or(Framing::Unframed, Framing::Length)
        };
        let sets_cookie =
            cookie::response_cookie_in(values(headers, "set-cookie"), cookie).map(<[u8]>::to_vec);
        Some(ResponseHead {
            status,
            body,
            close,
            sets_cookie,
        })
    }
}

/// Where `part` (a slice of `whole`) is in `whole`.
fn offset(whole: &[u8], part: &[u8]) -> Range<usize> {
    let start = (part.as_ptr() as usize).saturating_sub(whole.as_ptr() as usize);
    start..start + part.len()
}

fn values<'h>(
    headers: &'h [httparse::Header<'h>],
    name: &'h str,
) -> impl DoubleEndedIterator<Item = &'h [u8]> {
    headers
        .iter()
        .filter(move |h| h.name.eq_ignore_ascii_case(name))
        .map(|h| h.value)
}

/// The comma-separated tokens of a header value, trimmed.
fn tokens(value: &[u8]) -> impl DoubleEndedIterator<Item = &[u8]> {
    value
        .split(|&b| b == b',')
        .map(<[u8]>::trim_ascii)
        .filter(|t| !t.is_empty())
}

/// Whether a `name` header lists `token`.
fn lists(headers: &[httparse::Header<'_>], name: &str, token: &str) -> bool {
    values(headers, name)
        .flat_map(tokens)
        .any(|t| t.eq_ignore_ascii_case(token.as_bytes()))
}

/// `Some(None)` without Content-Length, `None` when it is invalid or repeated differently.
fn content_length(headers: &[httparse::Header<'_>]) -> Option<Option<u64>> {
    let mut lengths = values(headers, "content-length");
    let Some(first) = lengths.next() else {
        return Some(None);
    };
    let len: u64 = std::str::from_utf8(first).ok()?.trim().parse().ok()?;
    if lengths.any(|v| v != first) {
        return None;
    }
    Some(Some(len))
}

fn push_header(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(bytes: &[u8]) -> Option<RequestHead> {
        RequestHead::parse(bytes)
    }

    fn response(bytes: &[u8], head_request: bool) -> ResponseHead {
        ResponseHead::parse(bytes, head_request, "JSESSIONID").unwrap()
    }

    #[test]
    fn simple_requests_are_relayed_others_go_to_hyper() {
        let get = request(b"GET /a?b HTTP/1.1\r\nHost: x\r\nCookie: S=1\r\n\r\n").unwrap();
        assert_eq!((get.method(), get.path(), get.body), ("GET", "/a?b", 0));
        assert_eq!(get.cookie("S"), Some(&b"1"[..]));
        let post = request(b"POST / HTTP/1.1\r\nContent-Length: 5\r\n\r\n").unwrap();
        assert_eq!((post.body, post.close), (5, false));
        let last = request(b"GET / HTTP/1.1\r\nConnection: close\r\n\r\n").unwrap();
        assert!(last.close);
        for refused in [
            &b"GET / HTTP/1.0\r\n\r\n"[..],
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n",
            b"GET / HTTP/1.1\r\nUpgrade: websocket\r\n\r\n",
            b"POST / HTTP/1.1\r\nUpgrade: x\r\nConnection: upgrade\r\nContent-Length: 3\r\n\r\n",
            b"CONNECT h:1 HTTP/1.1\r\nContent-Length: 3\r\n\r\n",
            b"POST / HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 1\r\n\r\n",
            b"POST / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
            b"GET / HTTP/1.1\r\nContent-Length: x\r\n\r\n",
            b"GET / HTTP/1.1\r\nBad\x01Header: x\r\n\r\n",
        ] {
            assert!(
                request(refused).is_none(),
                "{:?}",
                String::from_utf8_lossy(refused)
            );
        }
    }

    #[test]
    fn upgrades_and_connect_are_relayed_and_tunnel_on_their_answer() {
        let ws = request(
            b"GET /chat HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\nConnection: keep-alive, Upgrade\r\n\r\n",
        )
        .unwrap();
        assert!(ws.tunnels_on(101));
        assert!(
            !ws.tunnels_on(200),
            "a declined upgrade is a plain response"
        );
        let head = String::from_utf8(ws.forwarded("10.0.0.9".parse().unwrap(), false)).unwrap();
        assert!(head.contains("upgrade: websocket\r\n"), "{head}");
        assert!(head.contains("connection: upgrade\r\n"), "{head}");
        assert!(!head.contains("keep-alive"), "{head}");
        let connect = request(b"CONNECT db:5432 HTTP/1.1\r\nHost: db:5432\r\n\r\n").unwrap();
        assert!(connect.tunnels_on(200));
        assert!(!connect.tunnels_on(101) && !connect.tunnels_on(407));
        let get = request(b"GET / HTTP/1.1\r\n\r\n").unwrap();
        assert!(!get.tunnels_on(101) && !get.tunnels_on(200));
    }

    #[test]
    fn response_framing() {
        let r = response(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\n", false);
        assert_eq!(
            (r.status, r.body, r.close),
            (200, Framing::Length(3), false)
        );
        let r = response(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\n", true);
        assert_eq!(r.body, Framing::Length(0));
        let r = response(b"HTTP/1.1 204 No Content\r\n\r\n", false);
        assert_eq!(r.body, Framing::Length(0));
        let r = response(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
            false,
        );
        assert_eq!(r.body, Framing::Chunked);
        let r = response(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
            false,
        );
        assert_eq!(r.body, Framing::Chunked);
        let r = response(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, gzip\r\n\r\n",
            false,
        );
        assert_eq!(r.body, Framing::Unframed);
        let r = response(b"HTTP/1.1 200 OK\r\n\r\n", false);
        assert_eq!(r.body, Framing::Unframed, "until close");
        let r = response(b"HTTP/1.1 101 Switching\r\nUpgrade: ws\r\n\r\n", false);
        assert_eq!(r.body, Framing::Unframed);
        let r = response(
            b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 0\r\n\r\n",
            false,
        );
        assert!(r.close);
        assert!(response(b"HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n", false).close);
        assert!(ResponseHead::parse(
            b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
            false,
            "S"
        )
        .is_none());
    }

    #[test]
    fn the_stickiness_cookie_a_response_sets_is_found() {
        let r = response(
            b"HTTP/1.1 200 OK\r\nSet-Cookie: other=1\r\nset-cookie: JSESSIONID=abc; Path=/\r\nContent-Length: 0\r\n\r\n",
            false,
        );
        assert_eq!(r.sets_cookie.as_deref(), Some(&b"abc"[..]));
        let r = response(b"HTTP/1.1 200 OK\r\nSet-Cookie: other=1\r\n\r\n", false);
        assert_eq!(r.sets_cookie, None);
    }

    #[test]
    fn request_head_is_rewritten() {
        let rewritten = request(
            b"GET /x HTTP/1.1\r\nHost: h\r\nKeep-Alive: 5\r\nConnection: X-Secret\r\nX-Secret: 1\r\nX-Forwarded-For: 1.2.3.4\r\nCookie: a=b\r\n\r\n",
        )
        .unwrap();
        let text =
            String::from_utf8(rewritten.forwarded("10.0.0.9".parse().unwrap(), false)).unwrap();
        assert_eq!(
            text,
            "GET /x HTTP/1.1\r\nHost: h\r\nCookie: a=b\r\nx-forwarded-for: 1.2.3.4, 10.0.0.9\r\n\r\n"
        );
        let first = request(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n").unwrap();
        let text = String::from_utf8(first.forwarded("10.0.0.9".parse().unwrap(), false)).unwrap();
        assert!(
            text.ends_with("\r\nx-forwarded-for: 10.0.0.9\r\n\r\n"),
            "{text}"
        );
    }
}
