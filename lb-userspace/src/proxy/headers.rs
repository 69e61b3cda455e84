//! Header rewriting between the two legs: hop-by-hop headers stay on their leg, the client's
//! address is appended to `X-Forwarded-For`, a TLS frontend says `X-Forwarded-Proto: https`,
//! and an HTTP/2 request's fields take their HTTP/1.1 form.

use std::{io::Write as _, net::IpAddr};

use hyper::header::{self, HeaderMap, HeaderName, HeaderValue};

/// The header a proxy appends the client's address to.
pub(super) static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
/// The scheme the client used, for the server (set on TLS frontends only).
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");

/// Headers that describe one connection, not the message (RFC 9110 section 7.6.1).
pub(super) const HOP_BY_HOP: [HeaderName; 7] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHENTICATE,
    header::TE,
    header::TRAILER,
    header::UPGRADE,
];

/// Removes hop-by-hop headers, including those the `Connection` header names.
pub(super) fn remove_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .collect();
    for name in named.iter().chain(HOP_BY_HOP.iter()) {
        headers.remove(name);
    }
}

/// Whether a `Connection` header lists `token`.
pub(super) fn connection_has(headers: &HeaderMap, token: &str) -> bool {
    headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case(token))
}

/// The protocol an upgrade request asks for: `Upgrade`, named in `Connection`.
pub(super) fn upgrade_protocol(headers: &HeaderMap) -> Option<HeaderValue> {
    let protocol = headers.get(header::UPGRADE)?;
    connection_has(headers, "upgrade").then(|| protocol.clone())
}

/// Puts an upgrade back after [`remove_hop_by_hop`]: it is asked of (or granted by) the next
/// hop, so it goes on.
pub(super) fn keep_upgrade(headers: &mut HeaderMap, protocol: HeaderValue) {
    headers.insert(header::UPGRADE, protocol);
    headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
}

/// The `X-Forwarded-For` value that goes to the server, written to `out`: what earlier proxies
/// wrote (`earlier`, the first such header), then `client`. The one rule both transports use.
pub(super) fn forwarded_for(earlier: Option<&[u8]>, client: IpAddr, out: &mut Vec<u8>) {
    if let Some(earlier) = earlier.filter(|v| !v.trim_ascii().is_empty()) {
        out.extend_from_slice(earlier);
        out.extend_from_slice(b", ");
    }
    match client {
        IpAddr::V4(v4) => write_ipv4(v4, out),
        // Written in place: a `Vec` takes every byte.
        IpAddr::V6(v6) => {
            let _ = write!(out, "{v6}");
        }
    }
}

/// `address` in dotted decimal, as `Display` writes it: every request that goes to a server
/// carries its client's, and `Display` (padding, a buffer of its own) costs a few times this.
fn write_ipv4(address: std::net::Ipv4Addr, out: &mut Vec<u8>) {
    for (i, octet) in address.octets().into_iter().enumerate() {
        if i > 0 {
            out.push(b'.');
        }
        if octet >= 100 {
            out.push(b'0' + octet / 100);
        }
        if octet >= 10 {
            out.push(b'0' + octet / 10 % 10);
        }
        out.push(b'0' + octet % 10);
    }
}

/// Appends `client` to `X-Forwarded-For`, keeping what earlier proxies wrote.
pub(super) fn append_forwarded_for(headers: &mut HeaderMap, client: IpAddr) {
    let mut value = Vec::new();
    let earlier = headers.get(&X_FORWARDED_FOR).map(HeaderValue::as_bytes);
    forwarded_for(earlier, client, &mut value);
    if let Ok(value) = HeaderValue::from_bytes(&value) {
        headers.insert(X_FORWARDED_FOR.clone(), value);
    }
}

/// Tells the server the client spoke HTTPS, replacing what the client claimed.
pub(super) fn set_forwarded_proto_https(headers: &mut HeaderMap) {
    headers.insert(X_FORWARDED_PROTO.clone(), HeaderValue::from_static("https"));
}

/// The HTTP/1.1 head of a request hyper read (HTTP/2, or HTTP/1.x), as it goes to a server
/// over a pooled connection: origin-form target; `Host` as sent, else from `:authority`, else
/// the server's address; hop-by-hop headers (and those `Connection` names) dropped; HTTP/2's
/// `Cookie` fields joined into one (RFC 9113 section 8.2.3); `X-Forwarded-Proto: https` over
/// TLS, replacing the client's claim; the client appended to `X-Forwarded-For`. The same
/// rewriting as [`to_http11`] and the relay's, written in one pass.
pub(super) fn http11_head(
    parts: &hyper::http::request::Parts,
    server: std::net::SocketAddr,
    client: IpAddr,
    https: bool,
) -> Vec<u8> {
    let headers = &parts.headers;
    let mut out = Vec::with_capacity(256 + headers.len() * 32);
    out.extend_from_slice(parts.method.as_str().as_bytes());
    out.push(b' ');
    let target = parts.uri.path_and_query().map_or("/", |pq| pq.as_str());
    out.extend_from_slice(if target.is_empty() {
        b"/"
    } else {
        target.as_bytes()
    });
    out.extend_from_slice(b" HTTP/1.1\r\n");
    if !headers.contains_key(header::HOST) {
        out.extend_from_slice(b"host: ");
        match parts.uri.authority() {
            Some(authority) => out.extend_from_slice(authority.as_str().as_bytes()),
            None => out.extend_from_slice(server.to_string().as_bytes()),
        }
        out.extend_from_slice(b"\r\n");
    }
    let named: Vec<&str> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .collect();
    let mut cookies = 0;
    for (name, value) in headers {
        let dropped = HOP_BY_HOP.contains(name)
            || named.iter().any(|n| n.eq_ignore_ascii_case(name.as_str()))
            || *name == X_FORWARDED_FOR
            || (https && *name == X_FORWARDED_PROTO);
        if dropped {
            continue;
        }
        if *name == header::COOKIE {
            cookies += 1;
            if cookies > 1 {
                continue;
            }
            out.extend_from_slice(b"cookie: ");
            for (i, cookie) in headers.get_all(header::COOKIE).iter().enumerate() {
                if i > 0 {
                    out.extend_from_slice(b"; ");
                }
                out.extend_from_slice(cookie.as_bytes());
            }
            out.extend_from_slice(b"\r\n");
            continue;
        }
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    if https {
        out.extend_from_slice(b"x-forwarded-proto: https\r\n");
    }
    out.extend_from_slice(b"x-forwarded-for: ");
    let earlier = headers.get(&X_FORWARDED_FOR).map(HeaderValue::as_bytes);
    forwarded_for(earlier, client, &mut out);
    out.extend_from_slice(b"\r\n\r\n");
    out
}

/// An HTTP/2 request's fields as an HTTP/1.1 server expects them: `Host` from `:authority`
/// when there is none, and the `Cookie` fields HTTP/2 splits (RFC 9113 section 8.2.3) joined
/// into one with `; `.
pub(super) fn to_http11(headers: &mut HeaderMap, authority: Option<&hyper::http::uri::Authority>) {
    if let Some(authority) = authority.filter(|_| !headers.contains_key(header::HOST)) {
        if let Ok(host) = HeaderValue::from_str(authority.as_str()) {
            headers.insert(header::HOST, host);
        }
    }
    let mut cookies = headers.get_all(header::COOKIE).iter();
    if let (Some(first), Some(_)) = (cookies.next(), cookies.next()) {
        let mut joined = first.as_bytes().to_vec();
        for more in headers.get_all(header::COOKIE).iter().skip(1) {
            joined.extend_from_slice(b"; ");
            joined.extend_from_slice(more.as_bytes());
        }
        if let Ok(joined) = HeaderValue::from_bytes(&joined) {
            headers.insert(header::COOKIE, joined);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http2_cookie_fields_are_joined_and_authority_becomes_host() {
        let mut h = HeaderMap::new();
        h.append(header::COOKIE, HeaderValue::from_static("a=1"));
        h.append(header::COOKIE, HeaderValue::from_static("JSESSIONID=s2"));
        h.append(header::COOKIE, HeaderValue::from_static("b=2"));
        let authority = "www.example.test:8443".parse().unwrap();
        to_http11(&mut h, Some(&authority));
        let cookies: Vec<_> = h.get_all(header::COOKIE).iter().collect();
        assert_eq!(cookies, ["a=1; JSESSIONID=s2; b=2"]);
        assert_eq!(h[header::HOST], "www.example.test:8443");

        // One field stays as it is; a Host the client sent is kept.
        let mut h = HeaderMap::new();
        h.insert(header::COOKIE, HeaderValue::from_static("JSESSIONID=s1"));
        h.insert(header::HOST, HeaderValue::from_static("given"));
        to_http11(&mut h, Some(&authority));
        assert_eq!(h[header::COOKIE], "JSESSIONID=s1");
        assert_eq!(h[header::HOST], "given");
    }

    #[test]
    fn a_request_hyper_read_is_written_as_http11_for_a_pooled_connection() {
        let request = hyper::Request::builder()
            .method("GET")
            .uri("https://www.example.test:8443/a/b?c=d")
            .version(hyper::Version::HTTP_2)
            .header(header::COOKIE, "a=1")
            .header(header::COOKIE, "JSESSIONID=s2")
            .header("x-forwarded-for", "1.2.3.4")
            .header("x-forwarded-proto", "http")
            .header(header::TE, "trailers")
            .header("accept", "*/*")
            .body(())
            .unwrap();
        let (parts, ()) = request.into_parts();
        let server = "10.1.2.3:8080".parse().unwrap();
        let head = http11_head(&parts, server, "10.0.0.9".parse().unwrap(), true);
        assert_eq!(
            String::from_utf8(head).unwrap(),
            "GET /a/b?c=d HTTP/1.1\r\nhost: www.example.test:8443\r\ncookie: a=1; JSESSIONID=s2\r\n\
             accept: */*\r\nx-forwarded-proto: https\r\nx-forwarded-for: 1.2.3.4, 10.0.0.9\r\n\r\n"
        );

        // HTTP/1.0 without Host: the server's address; Connection and what it names dropped;
        // over cleartext the client's X-Forwarded-Proto stays.
        let request = hyper::Request::builder()
            .uri("/")
            .version(hyper::Version::HTTP_10)
            .header(header::CONNECTION, "close, x-secret")
            .header("x-secret", "1")
            .header("x-forwarded-proto", "http")
            .body(())
            .unwrap();
        let (parts, ()) = request.into_parts();
        let head = http11_head(&parts, server, "10.0.0.9".parse().unwrap(), false);
        assert_eq!(
            String::from_utf8(head).unwrap(),
            "GET / HTTP/1.1\r\nhost: 10.1.2.3:8080\r\nx-forwarded-proto: http\r\nx-forwarded-for: 10.0.0.9\r\n\r\n"
        );
    }

    #[test]
    fn forwarded_proto_replaces_the_clients_claim() {
        let mut h = HeaderMap::new();
        h.insert("x-forwarded-proto", HeaderValue::from_static("http"));
        set_forwarded_proto_https(&mut h);
        let protos: Vec<_> = h.get_all("x-forwarded-proto").iter().collect();
        assert_eq!(protos, ["https"]);
    }

    #[test]
    fn hop_by_hop_and_connection_named_headers_are_removed() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, X-Secret"),
        );
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert(header::COOKIE, HeaderValue::from_static("JSESSIONID=a"));
        remove_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1);
        assert!(h.contains_key(header::COOKIE));
    }

    #[test]
    fn ipv4_addresses_are_written_as_display_writes_them() {
        for octet in 0..=255u8 {
            let ip = std::net::Ipv4Addr::new(octet, 255 - octet, octet / 3, octet % 10);
            let mut out = b"x".to_vec();
            write_ipv4(ip, &mut out);
            assert_eq!(out, format!("x{ip}").as_bytes());
        }
        let mut out = Vec::new();
        forwarded_for(Some(b"10.0.0.1"), "2001:db8::1".parse().unwrap(), &mut out);
        assert_eq!(out, b"10.0.0.1, 2001:db8::1");
    }

    #[test]
    fn forwarded_for_is_appended() {
        let mut h = HeaderMap::new();
        append_forwarded_for(&mut h, "10.0.0.1".parse().unwrap());
        assert_eq!(h[&X_FORWARDED_FOR], "10.0.0.1");
        append_forwarded_for(&mut h, "10.0.0.2".parse().unwrap());
        assert_eq!(h[&X_FORWARDED_FOR], "10.0.0.1, 10.0.0.2");
    }
}
