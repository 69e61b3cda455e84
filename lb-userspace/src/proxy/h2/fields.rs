//! Header fields: a request's decoded HPACK fields checked and made into an HTTP request (RFC
//! 9113 section 8.2 and 8.3), and an answer's head encoded as an HPACK block.
//!
//! Answers are encoded without the dynamic table (each field a literal "without indexing"):
//! the client's decoder state never depends on this side, so nothing has to be tracked or
//! evicted, for a few more bytes per answer.

use bytes::Bytes;
use hyper::{
    header::{HeaderName, HeaderValue},
    http::uri::{Authority, PathAndQuery, Scheme},
    HeaderMap, Method, StatusCode, Uri,
};

/// Why a request's fields make no request; the stream is reset (`PROTOCOL_ERROR`), or answered
/// `431` when only its size is wrong.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Malformed {
    /// More than the frontend's `max_header_bytes` (as RFC 9113 counts a header list).
    TooLarge,
    /// A pseudo-header missing, repeated, unknown or after a regular field; an uppercase or
    /// connection-specific field; a value that is not a field value.
    Invalid(&'static str),
}

/// A request's fields as they are decoded, checked one by one.
pub(super) struct RequestFields {
    method: Option<Method>,
    scheme: Option<Bytes>,
    authority: Option<Bytes>,
    path: Option<Bytes>,
    headers: HeaderMap,
    /// The request's `content-length`, checked against its DATA frames.
    pub(super) content_length: Option<u64>,
    size: usize,
    limit: usize,
    regular_seen: bool,
    error: Option<Malformed>,
}

impl RequestFields {
    pub(super) fn new(limit: usize) -> Self {
        Self {
            method: None,
            scheme: None,
            authority: None,
            path: None,
            headers: HeaderMap::new(),
            content_length: None,
            size: 0,
            limit,
            regular_seen: false,
            error: None,
        }
    }

    /// One decoded field. The first problem is kept; the rest of the block is still decoded
    /// (the HPACK state must follow it) but not stored.
    pub(super) fn add(&mut self, name: &[u8], value: &[u8]) {
        if self.error.is_some() {
            return;
        }
        // RFC 9113 section 6.5.2: a field counts its name, its value and 32.
        self.size += name.len() + value.len() + 32;
        if self.size > self.limit {
            self.error = Some(Malformed::TooLarge);
            // What was kept is no longer needed: free it now.
            self.headers = HeaderMap::new();
            return;
        }
        if let Err(why) = self.take(name, value) {
            self.error = Some(Malformed::Invalid(why));
        }
    }

    fn take(&mut self, name: &[u8], value: &[u8]) -> Result<(), &'static str> {
        if let Some(pseudo) = name.strip_prefix(b":") {
            if self.regular_seen {
                return Err("pseudo-header after a regular field");
            }
            return self.take_pseudo(pseudo, value);
        }
        self.regular_seen = true;
        if name.iter().any(u8::is_ascii_uppercase) {
            return Err("uppercase field name");
        }
        let name = HeaderName::from_bytes(name).map_err(|_| "invalid field name")?;
        if is_connection_specific(&name) {
            return Err("connection-specific field");
        }
        if name == hyper::header::TE && value != b"trailers" {
            return Err("te other than trailers");
        }
        let value = HeaderValue::from_bytes(value).map_err(|_| "invalid field value")?;
        if name == hyper::header::CONTENT_LENGTH {
            let length = value
                .to_str()
                .ok()
                .and_then(|v| v.parse().ok())
                .ok_or("invalid content-length")?;
            if self.content_length.is_some_and(|seen| seen != length) {
                return Err("conflicting content-length");
            }
            self.content_length = Some(length);
        }
        self.headers.append(name, value);
        Ok(())
    }

    fn take_pseudo(&mut self, pseudo: &[u8], value: &[u8]) -> Result<(), &'static str> {
        let value = Bytes::copy_from_slice(value);
        let slot = match pseudo {
            b"method" => {
                if self.method.is_some() {
                    return Err("repeated :method");
                }
                self.method = Some(Method::from_bytes(&value).map_err(|_| "invalid :method")?);
                return Ok(());
            }
            b"scheme" => &mut self.scheme,
            b"authority" => &mut self.authority,
            b"path" => &mut self.path,
            _ => return Err("unknown pseudo-header"),
        };
        if slot.replace(value).is_some() {
            return Err("repeated pseudo-header");
        }
        Ok(())
    }

    /// The request's head, or why there is none.
    pub(super) fn finish(self) -> Result<hyper::http::request::Parts, Malformed> {
        if let Some(error) = self.error {
            return Err(error);
        }
        let method = self.method.ok_or(Malformed::Invalid("no :method"))?;
        if method == Method::CONNECT {
            // No tunnels over this server's streams (no extended CONNECT announced).
            return Err(Malformed::Invalid("CONNECT"));
        }
        let (Some(scheme), Some(path)) = (self.scheme, self.path) else {
            return Err(Malformed::Invalid("no :scheme or :path"));
        };
        if path.is_empty() {
            return Err(Malformed::Invalid("empty :path"));
        }
        let scheme = Scheme::try_from(&scheme[..]).map_err(|_| Malformed::Invalid(":scheme"))?;
        let path =
            PathAndQuery::from_maybe_shared(path).map_err(|_| Malformed::Invalid(":path"))?;
        let uri = match self.authority {
            Some(authority) => {
                let mut uri = hyper::http::uri::Parts::default();
                uri.scheme = Some(scheme);
                uri.authority = Some(
                    Authority::from_maybe_shared(authority)
                        .map_err(|_| Malformed::Invalid(":authority"))?,
                );
                uri.path_and_query = Some(path);
                Uri::from_parts(uri).map_err(|_| Malformed::Invalid("request target"))?
            }
            // A `Uri` has a scheme only with an authority: without one, the path alone (the
            // `Host` field, if any, names the server).
            None => Uri::from(path),
        };
        let (mut parts, ()) = hyper::Request::new(()).into_parts();
        parts.method = method;
        parts.uri = uri;
        parts.version = hyper::Version::HTTP_2;
        parts.headers = self.headers;
        Ok(parts)
    }
}

/// Fields HTTP/2 forbids (RFC 9113 section 8.2.2): they describe the HTTP/1.1 connection.
fn is_connection_specific(name: &HeaderName) -> bool {
    matches!(
        name.as_str(),
        "connection" | "keep-alive" | "proxy-connection" | "transfer-encoding" | "upgrade"
    )
}

/// The HPACK block of an answer's head: `status`, then `headers` without the fields HTTP/2
/// forbids. `table_size_update`: the block starts by setting the client's table for this side
/// to 0 (the client lowered its limit; this side never uses the table).
pub(super) fn answer_block(
    out: &mut Vec<u8>,
    status: Option<StatusCode>,
    headers: &HeaderMap,
    table_size_update: bool,
) {
    if table_size_update {
        // Dynamic table size update to 0: `001` and a 5-bit integer.
        out.push(0x20);
    }
    if let Some(status) = status {
        match static_status(status) {
            Some(index) => out.push(0x80 | index),
            None => {
                // Literal without indexing, name `:status` (static index 8).
                integer(out, 0x00, 4, 8);
                string(out, status.as_str().as_bytes());
            }
        }
    }
    for (name, value) in headers {
        if is_connection_specific(name) {
            continue;
        }
        match static_name(name.as_str()) {
            Some(index) => integer(out, 0x00, 4, usize::from(index)),
            None => {
                out.push(0x00);
                string(out, name.as_str().as_bytes());
            }
        }
        string(out, value.as_bytes());
    }
}

/// The static table's complete `:status` entries (RFC 7541 appendix A).
fn static_status(status: StatusCode) -> Option<u8> {
    Some(match status.as_u16() {
        200 => 8,
        204 => 9,
        206 => 10,
        304 => 11,
        400 => 12,
        404 => 13,
        500 => 14,
        _ => return None,
    })
}

/// The static table's index of the names answers carry most.
fn static_name(name: &str) -> Option<u8> {
    Some(match name {
        "cache-control" => 24,
        "content-encoding" => 26,
        "content-length" => 28,
        "content-type" => 31,
        "date" => 33,
        "etag" => 34,
        "expires" => 36,
        "last-modified" => 44,
        "location" => 46,
        "server" => 54,
        "set-cookie" => 55,
        "strict-transport-security" => 56,
        "vary" => 59,
        _ => return None,
    })
}

/// An HPACK integer (RFC 7541 section 5.1) with `flags` in the bits above its `prefix` bits.
fn integer(out: &mut Vec<u8>, flags: u8, prefix: u8, value: usize) {
    let max = (1usize << prefix) - 1;
    if value < max {
        out.push(flags | value as u8);
        return;
    }
    out.push(flags | max as u8);
    let mut rest = value - max;
    while rest >= 128 {
        out.push((rest % 128) as u8 | 0x80);
        rest /= 128;
    }
    out.push(rest as u8);
}

/// An HPACK string literal, not Huffman-coded.
fn string(out: &mut Vec<u8>, bytes: &[u8]) {
    integer(out, 0x00, 7, bytes.len());
    out.extend_from_slice(bytes);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decoded(block: &[u8]) -> Vec<(String, String)> {
        let mut decoder = super::super::hpack::Decoder::new(4096);
        let mut fields = Vec::new();
        decoder
            .decode(block, |n, v| {
                fields.push((
                    String::from_utf8_lossy(n).into_owned(),
                    String::from_utf8_lossy(v).into_owned(),
                ));
            })
            .unwrap();
        fields
    }

    fn fields(
        list: &[(&str, &str)],
        limit: usize,
    ) -> Result<hyper::http::request::Parts, Malformed> {
        let mut fields = RequestFields::new(limit);
        for (n, v) in list {
            fields.add(n.as_bytes(), v.as_bytes());
        }
        fields.finish()
    }

    #[test]
    fn an_answer_block_decodes_to_the_answer_without_connection_fields() {
        let mut headers = HeaderMap::new();
        headers.insert("content-length", HeaderValue::from_static("4"));
        headers.insert("x-served-by", HeaderValue::from_static("s1"));
        headers.insert("connection", HeaderValue::from_static("keep-alive"));
        headers.append("set-cookie", HeaderValue::from_static("a=1"));
        headers.append("set-cookie", HeaderValue::from_static("b=2"));
        headers.insert("x-long", HeaderValue::from_str(&"v".repeat(300)).unwrap());
        for (status, update) in [(200, false), (302, true), (503, false)] {
            let mut block = Vec::new();
            let status = StatusCode::from_u16(status).unwrap();
            answer_block(&mut block, Some(status), &headers, update);
            let got = decoded(&block);
            assert_eq!(got[0], (":status".into(), status.as_str().into()));
            let names: Vec<&str> = got[1..].iter().map(|(n, _)| n.as_str()).collect();
            assert_eq!(
                names,
                [
                    "content-length",
                    "x-served-by",
                    "set-cookie",
                    "set-cookie",
                    "x-long"
                ]
            );
            assert_eq!(got[5].1, "v".repeat(300));
        }
    }

    #[test]
    fn a_request_is_made_of_its_pseudo_headers_and_fields() {
        let parts = fields(
            &[
                (":method", "GET"),
                (":scheme", "https"),
                (":authority", "www.example.test"),
                (":path", "/a?b=c"),
                ("cookie", "JSESSIONID=1"),
                ("cookie", "x=2"),
            ],
            8192,
        )
        .unwrap();
        assert_eq!(parts.method, Method::GET);
        assert_eq!(parts.uri.to_string(), "https://www.example.test/a?b=c");
        assert_eq!(parts.version, hyper::Version::HTTP_2);
        assert_eq!(parts.headers.get_all("cookie").iter().count(), 2);
        let bare = fields(
            &[(":method", "GET"), (":scheme", "https"), (":path", "/x")],
            8192,
        );
        assert_eq!(bare.unwrap().uri.path(), "/x");
    }

    #[test]
    fn malformed_requests_say_why() {
        let base = [(":method", "GET"), (":scheme", "https"), (":path", "/")];
        let with = |extra: &[(&'static str, &'static str)]| {
            let mut list = base.to_vec();
            list.extend_from_slice(extra);
            fields(&list, 8192).err()
        };
        assert!(matches!(
            with(&[("Host", "x")]),
            Some(Malformed::Invalid(_))
        ));
        assert!(matches!(
            with(&[("connection", "close")]),
            Some(Malformed::Invalid(_))
        ));
        assert!(matches!(
            with(&[("te", "gzip")]),
            Some(Malformed::Invalid(_))
        ));
        assert!(with(&[("te", "trailers")]).is_none());
        assert!(matches!(
            with(&[("x", "1"), (":path", "/")]),
            Some(Malformed::Invalid(_))
        ));
        assert!(matches!(
            with(&[(":path", "/")]),
            Some(Malformed::Invalid(_))
        ));
        assert!(matches!(
            with(&[(":protocol", "websocket")]),
            Some(Malformed::Invalid(_))
        ));
        assert!(matches!(
            with(&[("content-length", "1"), ("content-length", "2")]),
            Some(Malformed::Invalid(_))
        ));
        assert!(matches!(
            with(&[("x", "a\nb")]),
            Some(Malformed::Invalid(_))
        ));
        assert!(matches!(
            fields(&[(":method", "GET"), (":path", "/")], 8192),
            Err(Malformed::Invalid(_))
        ));
        assert!(matches!(
            fields(&[(":method", "CONNECT"), (":authority", "a:1")], 8192),
            Err(Malformed::Invalid(_))
        ));
        assert_eq!(with(&[("x", &*"v".repeat(200).leak())]).map(|_| ()), None);
        let big = "v".repeat(9000).leak();
        assert_eq!(with(&[("x", big)]), Some(Malformed::TooLarge));
    }
}
