//! The JSON API: `/api/table` (stick table entries, cookies masked), `/api/frontends`
//! (connections and TLS handshakes), `/api/servers` (server state and counters), `/api/peers`
//! (peer sessions and counters) and `/api/status` (the instance).

use hyper::{Response, StatusCode};
use serde::Serialize;

use super::{
    mask::CookieMask,
    reply,
    view::{BackendView, FrontendView, PeerView},
    MonitorBody, Shared, JSON,
};
use crate::table::EntryView;

/// Entries listed per backend by `/api/table` when the request sets no `limit`.
const DEFAULT_LIMIT: usize = 1000;

#[derive(Serialize)]
struct TableView {
    backend: String,
    /// Entries in the table (including the ones not listed because of `limit`).
    size: usize,
    capacity: usize,
    /// Most recently used first.
    entries: Vec<MaskedEntry>,
}

/// A table entry with its cookie masked ([`CookieMask`]): the monitor never shows a whole one.
#[derive(Serialize)]
struct MaskedEntry {
    cookie: String,
    server: String,
    last_seen_ms: u64,
}

impl MaskedEntry {
    fn new(entry: EntryView, mask: &CookieMask) -> Self {
        Self {
            cookie: mask.mask(&entry.cookie),
            server: entry.server,
            last_seen_ms: entry.last_seen_ms,
        }
    }
}

/// What `/api/table` was asked for.
#[derive(Debug, PartialEq, Eq)]
struct TableQuery {
    backend: Option<String>,
    limit: usize,
}

/// `/api/table[?backend=NAME][&limit=N]`.
pub(super) fn table(shared: &Shared, query: &str) -> Response<MonitorBody> {
    let query = match parse_table_query(query) {
        Ok(query) => query,
        Err(message) => return error(StatusCode::BAD_REQUEST, message, None),
    };
    let tables: Vec<TableView> = shared
        .backends
        .iter()
        .filter(|b| query.backend.as_ref().is_none_or(|name| *name == b.name))
        .map(|b| {
            let size = b.table.len();
            let entries = b
                .table
                .snapshot_recent(query.limit)
                .into_iter()
                .map(|entry| MaskedEntry::new(entry, &shared.cookie_mask))
                .collect();
            TableView {
                backend: b.name.clone(),
                size,
                capacity: b.table.capacity(),
                entries,
            }
        })
        .collect();
    if let (Some(name), true) = (&query.backend, tables.is_empty()) {
        return error(StatusCode::NOT_FOUND, "unknown backend", Some(name));
    }
    json(StatusCode::OK, &tables)
}

/// `/api/frontends`: one object per frontend, its connections and, on a TLS frontend, its
/// handshakes (`tls`, `null` elsewhere).
pub(super) fn frontends(shared: &Shared) -> Response<MonitorBody> {
    let frontends: Vec<FrontendView> = shared
        .frontends
        .iter()
        .map(|f| FrontendView::read(f))
        .collect();
    json(StatusCode::OK, &frontends)
}

/// `/api/servers`: one object per backend with its counters and its servers.
pub(super) fn servers(shared: &Shared) -> Response<MonitorBody> {
    let backends: Vec<BackendView> = shared
        .backends
        .iter()
        .map(|b| BackendView::read(b))
        .collect();
    json(StatusCode::OK, &backends)
}

/// `/api/peers`: one object per member of the peers section (an empty array without one).
pub(super) fn peers(shared: &Shared, now_ms: u64) -> Response<MonitorBody> {
    let peers: Vec<PeerView> = shared
        .peers
        .iter()
        .map(|p| PeerView::read(p, now_ms))
        .collect();
    json(StatusCode::OK, &peers)
}

/// What `/api/status` says of the instance.
#[derive(Serialize)]
struct StatusView<'a> {
    instance: &'a str,
    version: &'static str,
    uptime_ms: u64,
    /// Whether the pinned stick table outlives this process (see [`Shared::table_durable`]).
    table_durable: bool,
    /// Log lines this process dropped ([`crate::logging::dropped_lines`]).
    log_lines_dropped: u64,
}

/// `/api/status`: the instance, its version and uptime, whether its table is durable, and the
/// log lines it dropped.
pub(super) fn status(shared: &Shared, now_ms: u64) -> Response<MonitorBody> {
    json(
        StatusCode::OK,
        &StatusView {
            instance: &shared.instance,
            version: env!("CARGO_PKG_VERSION"),
            uptime_ms: now_ms.saturating_sub(shared.started_ms),
            table_durable: shared.table_durable,
            log_lines_dropped: crate::logging::dropped_lines(),
        },
    )
}

/// A JSON error body: `{"error": message}`, plus the backend it concerns if any.
pub(super) fn error(
    status: StatusCode,
    message: &str,
    backend: Option<&str>,
) -> Response<MonitorBody> {
    let body = match backend {
        Some(backend) => serde_json::json!({ "error": message, "backend": backend }),
        None => serde_json::json!({ "error": message }),
    };
    json(status, &body)
}

fn json(status: StatusCode, value: &impl Serialize) -> Response<MonitorBody> {
    match serde_json::to_vec_pretty(value) {
        Ok(mut body) => {
            body.push(b'\n');
            reply(status, JSON, body)
        }
        Err(err) => {
            tracing::error!(error = %err, "cannot serialize a monitor response");
            reply(
                StatusCode::INTERNAL_SERVER_ERROR,
                JSON,
                &b"{\"error\": \"internal error\"}\n"[..],
            )
        }
    }
}

/// Parses `backend=` and `limit=` (other parameters are ignored, as cache busters are).
fn parse_table_query(query: &str) -> Result<TableQuery, &'static str> {
    let mut parsed = TableQuery {
        backend: None,
        limit: DEFAULT_LIMIT,
    };
    for pair in query.split('&').filter(|pair| !pair.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        match key {
            "backend" => {
                parsed.backend = Some(
                    percent_decode(value).ok_or("backend is not valid percent-encoded UTF-8")?,
                )
            }
            "limit" => {
                parsed.limit = value
                    .parse()
                    .map_err(|_| "limit must be a non-negative integer")?
            }
            _ => {}
        }
    }
    Ok(parsed)
}

/// Decodes `%XX` escapes and `+` (a space in query strings). `None` on a bad escape or on
/// bytes that are not UTF-8.
fn percent_decode(text: &str) -> Option<String> {
    let mut bytes = Vec::with_capacity(text.len());
    let mut rest = text.as_bytes();
    while let Some((&byte, tail)) = rest.split_first() {
        rest = tail;
        match byte {
            b'+' => bytes.push(b' '),
            b'%' => {
                let (&[high, low], tail) = rest.split_first_chunk::<2>()?;
                bytes.push((hex_value(high)? << 4) | hex_value(low)?);
                rest = tail;
            }
            _ => bytes.push(byte),
        }
    }
    String::from_utf8(bytes).ok()
}

fn hex_value(digit: u8) -> Option<u8> {
    char::from(digit)
        .to_digit(16)
        .and_then(|value| u8::try_from(value).ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_defaults_and_overrides() {
        assert_eq!(
            parse_table_query(""),
            Ok(TableQuery {
                backend: None,
                limit: DEFAULT_LIMIT
            })
        );
        assert_eq!(
            parse_table_query("backend=web%2D1&limit=5&_=123"),
            Ok(TableQuery {
                backend: Some("web-1".into()),
                limit: 5
            })
        );
        assert!(parse_table_query("limit=-1").is_err());
        assert!(parse_table_query("limit=").is_err());
        assert!(parse_table_query("backend=%zz").is_err());
        assert!(parse_table_query("backend=%4").is_err());
    }

    #[test]
    fn percent_decoding() {
        assert_eq!(percent_decode("a+b%20c%41").as_deref(), Some("a b cA"));
        assert_eq!(percent_decode("%C3%A9").as_deref(), Some("é"));
        assert_eq!(percent_decode("%FF"), None);
        assert_eq!(percent_decode("%+1"), None);
    }
}
