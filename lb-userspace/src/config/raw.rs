//! The file as written: serde structs that mirror the TOML, refuse unknown keys, and keep the
//! span of every value so that `validate` can name the line of each problem.
//!
//! Keys the daemon needs are still `Option` here: a missing one is reported by `validate` along
//! with every other problem, instead of stopping serde at the first. Defaults live in `validate`.
//!
//! Sub-tables are not wrapped in `Spanned`: a table made implicitly by a dotted key
//! (`monitor.bind = ...`) has no span, and `Spanned` would refuse it. `[[frontend]]` and
//! `[[backend]]` elements and inline tables in arrays always have one.

use std::{
    fmt::{self, Write},
    ops::Range,
};

use serde::{
    de::{MapAccess, SeqAccess, Unexpected, Visitor},
    Deserialize, Deserializer,
};
use toml::Spanned;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawConfig {
    #[serde(default)]
    pub(super) instance: RawInstance,
    #[serde(default)]
    pub(super) frontend: Vec<Spanned<RawFrontend>>,
    #[serde(default)]
    pub(super) backend: Vec<Spanned<RawBackend>>,
    #[serde(default)]
    pub(super) monitor: Option<RawMonitor>,
    #[serde(default)]
    pub(super) timeouts: RawTimeouts,
    #[serde(default)]
    pub(super) peers: Option<RawPeers>,
    #[serde(default)]
    pub(super) fastpath: RawFastPath,
    #[serde(default)]
    pub(super) shield: RawShield,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawInstance {
    /// Default: the host name.
    pub(super) name: Option<Spanned<String>>,
    /// Default `/sys/fs/bpf/stickylb`.
    pub(super) pin_dir: Option<Spanned<String>>,
    /// Default `/run/stickylb/<name>.sock`.
    pub(super) control_socket: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawFrontend {
    pub(super) name: Option<Spanned<String>>,
    pub(super) bind: Option<Spanned<String>>,
    pub(super) backend: Option<Spanned<String>>,
    /// `splice` or `off`; default in `validate`.
    pub(super) fastpath: Option<Spanned<String>>,
    /// Interface names; default: the routes' interfaces.
    pub(super) fastpath_interfaces: Option<Spanned<Vec<Spanned<String>>>>,
    /// `tls = { cert, key }` or `tls.certificates = [{ cert, key }, ...]`: an HTTPS frontend.
    #[serde(default)]
    pub(super) tls: Option<RawTls>,
    /// `https://host[:port][/prefix]`: a cleartext frontend answers every request with a
    /// redirect there.
    pub(super) redirect_http_to: Option<Spanned<String>>,
    /// `max-age` of the `Strict-Transport-Security` a TLS frontend adds (`1y`, `180d`).
    pub(super) hsts: Option<Spanned<RawDuration>>,
}

/// A frontend's `tls`: one certificate (`cert`, `key`) or several chosen by SNI
/// (`certificates`), not both.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawTls {
    pub(super) cert: Option<Spanned<String>>,
    pub(super) key: Option<Spanned<String>>,
    pub(super) certificates: Option<Spanned<Vec<Spanned<RawCertificate>>>>,
}

/// A PEM certificate chain (end entity first) and its PEM private key.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawCertificate {
    pub(super) cert: Option<Spanned<String>>,
    pub(super) key: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawBackend {
    pub(super) name: Option<Spanned<String>>,
    /// `roundrobin` (default), `leastconn` or `random`.
    pub(super) balance: Option<Spanned<String>>,
    /// Default `JSESSIONID`.
    pub(super) stick_cookie: Option<Spanned<String>>,
    /// Default 1048576.
    pub(super) table_size: Option<Spanned<i64>>,
    /// Default `30m`.
    pub(super) expire: Option<Spanned<RawDuration>>,
    /// Default 32.
    pub(super) peer_key_len: Option<Spanned<i64>>,
    #[serde(default)]
    pub(super) health_check: Option<RawHealthCheck>,
    /// Default off (`0s`).
    pub(super) slowstart: Option<Spanned<RawDuration>>,
    /// Default `5s`.
    pub(super) queue_timeout: Option<Spanned<RawDuration>>,
    pub(super) servers: Option<Spanned<Vec<Spanned<RawServer>>>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawHealthCheck {
    /// Default true.
    pub(super) enabled: Option<bool>,
    /// Default `/`.
    pub(super) path: Option<Spanned<String>>,
    /// Default `2s`.
    pub(super) interval: Option<Spanned<RawDuration>>,
    /// Default `1s`.
    pub(super) timeout: Option<Spanned<RawDuration>>,
    /// Default 2.
    pub(super) rise: Option<Spanned<i64>>,
    /// Default 3.
    pub(super) fall: Option<Spanned<i64>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawServer {
    pub(super) name: Option<Spanned<String>>,
    pub(super) addr: Option<Spanned<String>>,
    /// Default 1.
    pub(super) weight: Option<Spanned<i64>>,
    /// Default 0: no limit.
    pub(super) maxconn: Option<Spanned<i64>>,
    /// Default false: cleartext HTTP/1.1.
    pub(super) tls: Option<Spanned<bool>>,
    /// With `tls`: the name sent as SNI and verified. Default: the address's IP is verified.
    pub(super) sni: Option<Spanned<String>>,
    /// With `tls`: PEM bundle of the CAs the server is verified with. Default: the system's.
    pub(super) ca: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawMonitor {
    pub(super) bind: Option<Spanned<String>>,
    /// HTTP basic credentials for every route. Default: none (no authentication).
    #[serde(default)]
    pub(super) auth: Option<RawMonitorAuth>,
}

/// `[monitor] auth = { user = "...", password_file = "..." }`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawMonitorAuth {
    pub(super) user: Option<Spanned<String>>,
    /// An absolute path; the password is the file's first line.
    pub(super) password_file: Option<Spanned<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawTimeouts {
    /// Default `5s`.
    pub(super) connect: Option<Spanned<RawDuration>>,
    /// Default `50s`.
    pub(super) client: Option<Spanned<RawDuration>>,
    /// Default `50s`.
    pub(super) server: Option<Spanned<RawDuration>>,
    /// Default `10s`.
    pub(super) drain: Option<Spanned<RawDuration>>,
    /// Default 16384.
    pub(super) max_header_bytes: Option<Spanned<i64>>,
    /// Default `60s`.
    pub(super) splice_fin_grace: Option<Spanned<RawDuration>>,
    /// Default `2h`.
    pub(super) splice_idle: Option<Spanned<RawDuration>>,
}

/// `[shield]`: the XDP deny list and SYN rate limit.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawShield {
    /// Default false.
    pub(super) enabled: Option<Spanned<bool>>,
    /// Interface names; default: those owning the frontends' bind addresses.
    pub(super) interfaces: Option<Spanned<Vec<Spanned<String>>>>,
    /// SYNs (without ACK) per second per source (/32, /64 for IPv6); default 200.
    pub(super) syn_rate: Option<Spanned<i64>>,
    /// SYNs a source may send back to back; default 400.
    pub(super) syn_burst: Option<Spanned<i64>>,
    /// `auto`, `xdp` or `tc`; default `auto`.
    pub(super) hook: Option<Spanned<String>>,
}

/// `[fastpath]`: the hand-off policy of the frontends with `fastpath = "splice"`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawFastPath {
    /// Default 8.
    pub(super) after_requests: Option<Spanned<i64>>,
    /// Default `50ms`.
    pub(super) after_pause: Option<Spanned<RawDuration>>,
    /// Default `1s`.
    pub(super) port_reuse: Option<Spanned<RawDuration>>,
    /// Default `61000-64999`.
    pub(super) source_ports: Option<Spanned<String>>,
    /// `off` (default) or `auto`.
    pub(super) xdp: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawPeers {
    pub(super) bind: Option<Spanned<String>>,
    #[serde(default)]
    pub(super) members: Vec<Spanned<RawPeerMember>>,
    /// `tls = { cert, key, ca }`: sessions over mutual TLS. Default: cleartext.
    #[serde(default)]
    pub(super) tls: Option<RawPeersTls>,
    /// CIDRs that may connect to the peers port. Default: the members' addresses.
    pub(super) allow: Option<Spanned<Vec<Spanned<String>>>>,
}

/// `[peers] tls`: our certificate chain and key, and the CA that signs every member's.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawPeersTls {
    pub(super) cert: Option<Spanned<String>>,
    pub(super) key: Option<Spanned<String>>,
    pub(super) ca: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawPeerMember {
    pub(super) name: Option<Spanned<String>>,
    pub(super) addr: Option<Spanned<String>>,
}

/// A duration as written: a string for [`super::parse_duration`], or a TOML integer, which
/// means milliseconds like a bare number in the string form.
#[derive(Debug)]
pub(super) enum RawDuration {
    Text(String),
    Millis(i64),
}

impl<'de> Deserialize<'de> for RawDuration {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct DurationVisitor;
        impl<'de> Visitor<'de> for DurationVisitor {
            type Value = RawDuration;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(r#"a duration such as "2s" or "500ms", or an integer of milliseconds"#)
            }
            fn visit_str<E>(self, v: &str) -> Result<RawDuration, E> {
                Ok(RawDuration::Text(v.to_owned()))
            }
            fn visit_i64<E>(self, v: i64) -> Result<RawDuration, E> {
                Ok(RawDuration::Millis(v))
            }
            // A TOML date-time reaches serde as a map.
            fn visit_map<A: MapAccess<'de>>(self, _: A) -> Result<RawDuration, A::Error> {
                let found = Unexpected::Other("a table or date-time");
                Err(serde::de::Error::invalid_type(found, &self))
            }
        }
        deserializer.deserialize_any(DurationVisitor)
    }
}

/// The 1-based line of byte offset `offset` in `text`.
pub(super) fn line_of(text: &str, offset: usize) -> usize {
    text.bytes().take(offset).filter(|&b| b == b'\n').count() + 1
}

/// The dotted key (`backend[0].servers[1].adr`) at byte range `span` of `text`, to name the key
/// of a serde error, which only carries a span. Inside a table made implicitly by dotted keys,
/// which has no span, it stops at the nearest enclosing table that has one. Falls back on the
/// text at `span` when that is a bare key, and on the empty string.
pub(super) fn key_at(text: &str, span: Range<usize>) -> String {
    let mut path = String::new();
    if let Ok(root) = toml::from_str::<Shape>(text) {
        root.find(span.start, &mut path);
    }
    if path.is_empty() {
        let bare = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == '-';
        if let Some(key) = text.get(span).filter(|key| key.chars().all(bare)) {
            path.push_str(key);
        }
    }
    path
}

/// A TOML document reduced to its shape and spans.
enum Shape {
    Leaf,
    Table(Vec<(Spanned<String>, Node)>),
    Array(Vec<Node>),
}

/// A value and its span, or `None` for a value that has no span (a table made implicitly by a
/// dotted key or header), so that one such table does not leave the whole document unlocated.
struct Node(Option<Spanned<Shape>>);

impl Shape {
    /// Appends to `path` the keys leading to the innermost key or value containing `offset`.
    fn find(&self, offset: usize, path: &mut String) -> bool {
        let start = path.len();
        let found = match self {
            Shape::Leaf => false,
            Shape::Table(entries) => entries.iter().any(|(key, value)| {
                path.truncate(start);
                if !path.is_empty() {
                    path.push('.');
                }
                path.push_str(key.get_ref());
                key.span().contains(&offset) || value.find(offset, path)
            }),
            Shape::Array(items) => items.iter().enumerate().any(|(i, item)| {
                path.truncate(start);
                // Writing to a String cannot fail.
                let _ = write!(path, "[{i}]");
                item.find(offset, path)
            }),
        };
        if !found {
            path.truncate(start);
        }
        found
    }
}

impl Node {
    fn find(&self, offset: usize, path: &mut String) -> bool {
        self.0.as_ref().is_some_and(|value| {
            value.get_ref().find(offset, path) || value.span().contains(&offset)
        })
    }
}

impl<'de> Deserialize<'de> for Node {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        // `Spanned` refuses a value without a span. Each value is deserialized on its own, so
        // the rest of the document is unaffected by dropping the error.
        Ok(Node(Spanned::deserialize(deserializer).ok()))
    }
}

impl<'de> Deserialize<'de> for Shape {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct ShapeVisitor;
        impl<'de> Visitor<'de> for ShapeVisitor {
            type Value = Shape;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("any TOML value")
            }
            fn visit_bool<E>(self, _: bool) -> Result<Shape, E> {
                Ok(Shape::Leaf)
            }
            fn visit_i64<E>(self, _: i64) -> Result<Shape, E> {
                Ok(Shape::Leaf)
            }
            fn visit_u64<E>(self, _: u64) -> Result<Shape, E> {
                Ok(Shape::Leaf)
            }
            fn visit_f64<E>(self, _: f64) -> Result<Shape, E> {
                Ok(Shape::Leaf)
            }
            fn visit_str<E>(self, _: &str) -> Result<Shape, E> {
                Ok(Shape::Leaf)
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Shape, A::Error> {
                let mut items = Vec::new();
                while let Some(item) = seq.next_element()? {
                    items.push(item);
                }
                Ok(Shape::Array(items))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Shape, A::Error> {
                let mut entries = Vec::new();
                while let Some(entry) = map.next_entry()? {
                    entries.push(entry);
                }
                Ok(Shape::Table(entries))
            }
        }
        deserializer.deserialize_any(ShapeVisitor)
    }
}
