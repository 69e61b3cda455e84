use std::{
    collections::HashMap,
    sync::{atomic::Ordering::Relaxed, Arc},
    time::Duration,
};

use http_body_util::BodyExt as _;
use hyper::{header, Method, Request, Response, StatusCode};
use serde_json::Value;
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::{TcpListener, TcpStream},
};

use super::{
    metrics::LabelValue,
    page::{self, ByteSize, Count, Html, Uptime},
    route, serve,
    view::Snapshot,
    CookieMask, MonitorBody, Shared,
};
use crate::{
    backend::{admin::MemorySettings, Route},
    config::Config,
    peers::{link::PeerLink, stats::PeerState},
    table::{self, now_ms},
};

const CONFIG: &str = r#"
[instance]
name = "lb-test"

[[frontend]]
name = "www"
bind = "127.0.0.1:18080"
backend = "web"

[[frontend]]
name = "api"
bind = "127.0.0.1:18090"
backend = "api"

[[frontend]]
name = "http"
bind = "127.0.0.1:18070"
backend = "web"
redirect_http_to = "https://www.example.test"

[[backend]]
name = "web"
table_size = 100
servers = [
  { name = "web1", addr = "127.0.0.1:9001" },
  { name = "web2", addr = "127.0.0.1:9002" },
]

[[backend]]
name = "api"
health_check = { enabled = false }
servers = [ { name = "api.1", addr = "[::1]:9003" } ]
"#;

/// The key of the fixture's cookie mask.
pub(super) const MASK_KEY: [u8; 32] = [1; 32];

/// Two backends: `web` (web1 up with traffic and three sessions s1 (most recent), s3, s2;
/// web2 down) and `api` (its only server down, one request refused).
pub(super) fn fixture() -> Shared {
    let config = Config::from_toml(CONFIG).unwrap();
    let store = table::memory::store(1024);
    let (backends, frontends) = crate::routing::build(&config, &store, &MemorySettings::shared());

    let (web, api) = (&backends[0], &backends[1]);
    let (web1, web2) = (web.server("web1").unwrap(), web.server("web2").unwrap());
    web2.set_up(false);
    web2.update_check(|c| {
        c.last_result = "<script>alert(1)</script>".into();
        c.consecutive_failed = 3;
    });
    web1.update_check(|c| {
        c.last_result = "L7OK 200 in 1 ms".into();
        c.consecutive_ok = 7;
    });
    let now = now_ms();
    for (cookie, age) in [(b"s1", 3000), (b"s2", 2000), (b"s3", 1000)] {
        web.route(Some(cookie.as_slice()), now - age);
    }
    web.route(Some(b"s1".as_slice()), now);
    web.route(None, now);
    // The five requests routed above all went to web1 (web2 is down).
    web1.stats.bytes_in.fetch_add(1536, Relaxed);
    web1.stats.bytes_out.fetch_add(3 << 20, Relaxed);
    web1.stats.responses[2].fetch_add(4, Relaxed);
    web1.stats.responses[0].fetch_add(1, Relaxed);
    web1.stats.failures.fetch_add(1, Relaxed);
    api.server("api.1").unwrap().set_up(false);
    assert!(matches!(api.route(None, now), Route::NoServer));

    Shared {
        peers: Vec::new(),
        instance: "lb-test".into(),
        backends,
        frontends,
        started_ms: now - 90_061_000,
        fastpath: None,
        shield: None,
        cookie_mask: CookieMask::with_key(MASK_KEY),
        auth: None,
        table_durable: true,
    }
}

/// [`fixture`] plus two peers: `lb2` established, heard from 1.2 s before `heard_at`, with
/// traffic and an error whose text is markup; `lb3` connecting and never heard from.
fn fixture_with_peers(heard_at: u64) -> Shared {
    let mut shared = fixture();
    let (lb2, _) = PeerLink::new("lb2".into(), "10.0.0.2:10000".parse().unwrap(), None, 1);
    let stats = &lb2.stats;
    stats.set_state(PeerState::Established);
    stats.set_last_error("connection reset <script>alert(2)</script>".into());
    stats.last_received_ms.store(heard_at - 1_200, Relaxed);
    for (counter, value) in [
        (&stats.sessions, 2),
        (&stats.updates_sent, 40),
        (&stats.updates_received, 30),
        (&stats.updates_acked, 38),
        (&stats.resyncs_taught, 1),
        (&stats.resyncs_learned, 3),
        (&stats.unknown_servers, 4),
        (&stats.conflicts, 5),
        (&stats.keys_too_long, 6),
    ] {
        counter.store(value, Relaxed);
    }
    let (lb3, _) = PeerLink::new("lb3".into(), "[fd00::3]:10000".parse().unwrap(), None, 1);
    lb3.stats.set_state(PeerState::Connecting);
    shared.peers = vec![lb2, lb3];
    shared
}

pub(super) fn request(method: Method, uri: &str) -> Request<()> {
    Request::builder().method(method).uri(uri).body(()).unwrap()
}

pub(super) async fn get(shared: &Shared, uri: &str) -> (StatusCode, String, String) {
    split(route(shared, &request(Method::GET, uri))).await
}

pub(super) async fn split(response: Response<MonitorBody>) -> (StatusCode, String, String) {
    let status = response.status();
    let content_type = response
        .headers()
        .get(header::CONTENT_TYPE)
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    (
        status,
        content_type,
        String::from_utf8(body.to_vec()).unwrap(),
    )
}

pub(super) async fn get_json(shared: &Shared, uri: &str) -> (StatusCode, Value) {
    let (status, content_type, body) = get(shared, uri).await;
    assert_eq!(content_type, "application/json");
    (status, serde_json::from_str(&body).unwrap())
}

#[tokio::test]
async fn root_redirects_to_the_page() {
    let shared = fixture();
    let response = route(&shared, &request(Method::GET, "/"));
    assert_eq!(response.status(), StatusCode::FOUND);
    assert_eq!(response.headers()[header::LOCATION], "/monitor");
}

#[tokio::test]
async fn page_shows_every_server_its_state_and_the_backend_counters() {
    let shared = fixture();
    let (status, content_type, html) = get(&shared, "/monitor").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(content_type, "text/html; charset=utf-8");
    assert!(html.starts_with("<!DOCTYPE html>"));
    assert!(html.contains(r#"<meta http-equiv="refresh" content="5">"#));
    assert!(html.contains("lb-test"));
    assert!(html.contains(env!("CARGO_PKG_VERSION")));
    assert!(html.contains("1d 01h01m01s"), "uptime");
    for name in [
        "www",
        "api",
        "web",
        "web1",
        "web2",
        "api.1",
        "127.0.0.1:9001",
        "[::1]:9003",
    ] {
        assert!(html.contains(name), "{name} missing");
    }
    assert!(html.contains(r#"<tr class="up"><td class="l"><b>web1</b>"#));
    assert!(html.contains("backend &middot; balance roundrobin &middot;"));
    assert!(html.contains(r#"<tr class="down"><td class="l"><b>web2</b>"#));
    assert!(html.contains(r#"<td class="state">UP</td>"#));
    assert!(html.contains(r#"<td class="state">DOWN</td>"#));
    assert!(
        html.contains("<b>3 / 100</b>"),
        "stick table size / capacity"
    );
    assert!(
        html.contains("1.5 KiB") && html.contains("3.0 MiB"),
        "bytes"
    );
    assert!(html.contains("L7OK 200 in 1 ms") && html.contains("checks disabled"));
    assert!(html.contains("Peers") && html.contains("No peers configured"));
    // What each frontend speaks.
    assert!(html.contains(r#"<td class="l">www</td><td class="l">HTTP</td>"#));
    assert!(html.contains(r#"<td class="l">308 to https://www.example.test</td>"#));
    // A check result is data: it is escaped, never markup.
    assert!(!html.contains("<script>"));
    assert!(html.contains("&lt;script&gt;alert(1)&lt;/script&gt;"));
}

#[test]
fn html_escaping() {
    assert_eq!(
        Html(r#"<script>alert("x" & 'y')</script>"#).to_string(),
        "&lt;script&gt;alert(&quot;x&quot; &amp; &#39;y&#39;)&lt;/script&gt;"
    );
    assert_eq!(Html("plain é text").to_string(), "plain é text");
    assert_eq!(Html("").to_string(), "");
}

#[test]
fn human_readable_numbers() {
    assert_eq!(Count(0).to_string(), "0");
    assert_eq!(Count(999).to_string(), "999");
    assert_eq!(Count(1_048_576).to_string(), "1,048,576");
    assert_eq!(ByteSize(512).to_string(), "512 B");
    assert_eq!(ByteSize(1536).to_string(), "1.5 KiB");
    assert_eq!(ByteSize(5 << 30).to_string(), "5.0 GiB");
    assert_eq!(ByteSize(u64::MAX).to_string(), "16.0 EiB");
    assert_eq!(Uptime(59_999).to_string(), "0d 00h00m59s");
    assert_eq!(Uptime(90_061_000).to_string(), "1d 01h01m01s");
}

#[test]
fn prometheus_label_escaping() {
    assert_eq!(LabelValue("a\"b\\c\nd").to_string(), r#"a\"b\\c\nd"#);
}

#[derive(Debug)]
pub(super) struct Sample {
    pub(super) name: String,
    pub(super) labels: HashMap<String, String>,
    pub(super) value: f64,
}

/// Parses the text format strictly: every family has HELP and TYPE before its samples and its
/// samples are contiguous; every sample is `name{labels} value` with a numeric value.
pub(super) fn parse_metrics(text: &str) -> Vec<Sample> {
    let mut helped = Vec::new();
    let mut typed = HashMap::new();
    let mut finished: Vec<String> = Vec::new();
    let mut current: Option<String> = None;
    let mut samples = Vec::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let (name, help) = rest.split_once(' ').unwrap();
            assert!(
                !help.is_empty() && !helped.contains(&name.to_owned()),
                "{line}"
            );
            helped.push(name.to_owned());
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap();
            assert!(matches!(kind, "gauge" | "counter"), "{line}");
            assert!(
                typed.insert(name.to_owned(), kind.to_owned()).is_none(),
                "{line}"
            );
            if let Some(done) = current.replace(name.to_owned()) {
                finished.push(done);
            }
            continue;
        }
        assert!(
            !line.starts_with('#') && !line.is_empty(),
            "unexpected line {line:?}"
        );
        let end = line.find(['{', ' ']).unwrap();
        let name = &line[..end];
        assert!(name.starts_with("stickylb_"), "{line}");
        assert!(
            name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'),
            "{line}"
        );
        assert_eq!(
            current.as_deref(),
            Some(name),
            "sample outside its family: {line}"
        );
        assert!(helped.contains(&name.to_owned()) && !finished.contains(&name.to_owned()));
        let (labels, rest) = parse_labels(&line[end..]);
        let value = rest.strip_prefix(' ').unwrap();
        let value: f64 = value
            .parse()
            .unwrap_or_else(|_| panic!("bad value in {line:?}"));
        assert!(value.is_finite() && value >= 0.0);
        samples.push(Sample {
            name: name.to_owned(),
            labels,
            value,
        });
    }
    assert_eq!(helped.len(), typed.len());
    samples
}

/// `{a="x",b="y"} rest` -> labels and ` rest`; no braces -> no labels.
fn parse_labels(text: &str) -> (HashMap<String, String>, &str) {
    let mut labels = HashMap::new();
    let Some(mut rest) = text.strip_prefix('{') else {
        return (labels, text);
    };
    loop {
        if let Some(after) = rest.strip_prefix('}') {
            return (labels, after);
        }
        let (key, after) = rest.split_once("=\"").unwrap();
        assert!(key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'));
        let mut value = String::new();
        let mut chars = after.char_indices();
        let close = loop {
            match chars.next().unwrap() {
                (_, '\\') => match chars.next().unwrap().1 {
                    'n' => value.push('\n'),
                    c @ ('\\' | '"') => value.push(c),
                    c => panic!("bad escape \\{c}"),
                },
                (i, '"') => break i,
                (_, c) => value.push(c),
            }
        };
        labels.insert(key.to_owned(), value);
        rest = &after[close + 1..];
        rest = rest.strip_prefix(',').unwrap_or(rest);
    }
}

pub(super) fn value_of(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> f64 {
    let found: Vec<&Sample> = samples
        .iter()
        .filter(|s| {
            s.name == name
                && labels
                    .iter()
                    .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
        })
        .collect();
    assert_eq!(found.len(), 1, "{name} {labels:?}: {found:?}");
    found[0].value
}

#[tokio::test]
async fn metrics_follow_the_text_format_and_report_the_counters() {
    let shared = fixture();
    let (status, content_type, text) = get(&shared, "/metrics").await;
    assert_eq!(status, StatusCode::OK);
    assert!(content_type.starts_with("text/plain; version=0.0.4"));
    let samples = parse_metrics(&text);

    let web1 = [("backend", "web"), ("server", "web1")];
    let web2 = [("backend", "web"), ("server", "web2")];
    assert_eq!(value_of(&samples, "stickylb_server_up", &web1), 1.0);
    assert_eq!(value_of(&samples, "stickylb_server_up", &web2), 0.0);
    assert_eq!(
        value_of(&samples, "stickylb_server_up", &[("server", "api.1")]),
        0.0
    );
    assert_eq!(value_of(&samples, "stickylb_server_in_flight", &web1), 0.0);
    assert_eq!(
        value_of(&samples, "stickylb_server_sessions_total", &web1),
        3.0
    );
    assert_eq!(
        value_of(&samples, "stickylb_server_requests_total", &web1),
        5.0
    );
    assert_eq!(
        value_of(&samples, "stickylb_server_bytes_in_total", &web1),
        1536.0
    );
    assert_eq!(
        value_of(&samples, "stickylb_server_bytes_out_total", &web1),
        f64::from(3 << 20)
    );
    assert_eq!(
        value_of(&samples, "stickylb_server_failures_total", &web1),
        1.0
    );
    assert_eq!(
        value_of(&samples, "stickylb_server_check_transitions_total", &web2),
        1.0
    );
    let responses = "stickylb_server_responses_total";
    assert_eq!(
        value_of(&samples, responses, &[web1[0], web1[1], ("code", "2xx")]),
        4.0
    );
    assert_eq!(
        value_of(&samples, responses, &[web1[0], web1[1], ("code", "other")]),
        1.0
    );
    assert_eq!(
        samples.iter().filter(|s| s.name == responses).count(),
        3 * 6
    );

    let web = [("backend", "web")];
    assert_eq!(
        value_of(&samples, "stickylb_backend_table_entries", &web),
        3.0
    );
    assert_eq!(
        value_of(&samples, "stickylb_backend_table_capacity", &web),
        100.0
    );
    let decisions = "stickylb_backend_decisions_total";
    assert_eq!(
        value_of(&samples, decisions, &[web[0], ("decision", "sticky")]),
        1.0
    );
    assert_eq!(
        value_of(&samples, decisions, &[web[0], ("decision", "new-session")]),
        3.0
    );
    assert_eq!(
        value_of(&samples, decisions, &[web[0], ("decision", "redispatch")]),
        0.0
    );
    assert_eq!(
        value_of(&samples, decisions, &[web[0], ("decision", "no-cookie")]),
        1.0
    );
    assert_eq!(
        value_of(
            &samples,
            "stickylb_backend_no_server_total",
            &[("backend", "api")]
        ),
        1.0
    );
    assert_eq!(
        value_of(&samples, "stickylb_backend_learned_total", &web),
        0.0
    );
    assert!(value_of(&samples, "stickylb_uptime_seconds", &[]) >= 90_061.0);
    assert_eq!(
        value_of(&samples, "stickylb_build_info", &[("instance", "lb-test")]),
        1.0
    );
}

#[tokio::test]
async fn api_table_lists_entries_most_recent_first() {
    let shared = fixture();
    let (status, tables) = get_json(&shared, "/api/table").await;
    assert_eq!(status, StatusCode::OK);
    let tables = tables.as_array().unwrap();
    assert_eq!(tables.len(), 2);
    assert_eq!(tables[0]["backend"], "web");
    assert_eq!(tables[0]["size"], 3);
    assert_eq!(tables[0]["capacity"], 100);
    let cookies: Vec<&str> = tables[0]["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["cookie"].as_str().unwrap())
        .collect();
    // Masked: the monitor never shows a whole cookie.
    let mask = CookieMask::with_key(MASK_KEY);
    assert_eq!(cookies, [mask.mask("s1"), mask.mask("s3"), mask.mask("s2")]);
    assert_eq!(tables[0]["entries"][0]["server"], "web1");
    assert!(tables[0]["entries"][0]["last_seen_ms"].as_u64().unwrap() > 0);
    assert_eq!(tables[1]["backend"], "api");
    assert_eq!(tables[1]["entries"].as_array().unwrap().len(), 0);
}

#[tokio::test]
async fn api_table_filters_by_backend_and_limits_entries() {
    let shared = fixture();
    let (status, tables) = get_json(&shared, "/api/table?backend=web&limit=1").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(tables.as_array().unwrap().len(), 1);
    assert_eq!(tables[0]["backend"], "web");
    assert_eq!(tables[0]["size"], 3);
    assert_eq!(tables[0]["entries"].as_array().unwrap().len(), 1);
    assert_eq!(
        tables[0]["entries"][0]["cookie"],
        CookieMask::with_key(MASK_KEY).mask("s1")
    );

    let (_, tables) = get_json(&shared, "/api/table?limit=0&backend=%77eb").await;
    assert_eq!(tables[0]["backend"], "web");
    assert_eq!(tables[0]["entries"].as_array().unwrap().len(), 0);

    let (status, error) = get_json(&shared, "/api/table?backend=nope").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(error["error"], "unknown backend");
    assert_eq!(error["backend"], "nope");

    let (status, error) = get_json(&shared, "/api/table?limit=lots").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(error["error"].as_str().unwrap().contains("limit"));
}

#[tokio::test]
async fn api_servers_reports_state_and_counters() {
    let shared = fixture();
    let (status, backends) = get_json(&shared, "/api/servers").await;
    assert_eq!(status, StatusCode::OK);
    let web = &backends[0];
    assert_eq!(web["backend"], "web");
    assert_eq!(web["balance"], "roundrobin");
    assert_eq!(web["stats"]["sticky_hits"], 1);
    assert_eq!(web["stats"]["new_sessions"], 3);
    assert_eq!(web["table_size"], 3);
    let web1 = &web["servers"][0];
    assert_eq!(web1["server"], "web1");
    assert_eq!(web1["addr"], "127.0.0.1:9001");
    assert_eq!(web1["state"], "UP");
    assert_eq!(web1["requests_total"], 5);
    assert_eq!(web1["responses"]["2xx"], 4);
    assert_eq!(web1["responses"]["other"], 1);
    assert_eq!(web1["check"]["consecutive_ok"], 7);
    assert_eq!(web["servers"][1]["state"], "DOWN");
    assert_eq!(web["servers"][1]["check_transitions"], 1);
    assert_eq!(backends[1]["servers"][0]["check"]["enabled"], false);
    assert_eq!(backends[1]["stats"]["no_server"], 1);
}

#[tokio::test]
async fn unknown_paths_are_404_and_other_methods_405() {
    let shared = fixture();
    let (status, content_type, _) = get(&shared, "/nope").await;
    assert_eq!(
        (status, content_type.as_str()),
        (StatusCode::NOT_FOUND, "text/plain; charset=utf-8")
    );
    let (status, error) = get_json(&shared, "/api/nope").await;
    assert_eq!(
        (status, &error["error"]),
        (StatusCode::NOT_FOUND, &Value::from("no such endpoint"))
    );
    assert_eq!(
        route(&shared, &request(Method::POST, "/nope")).status(),
        StatusCode::NOT_FOUND
    );

    for (method, uri) in [
        (Method::POST, "/metrics"),
        (Method::DELETE, "/api/table"),
        (Method::PUT, "/"),
    ] {
        let response = route(&shared, &request(method, uri));
        assert_eq!(response.status(), StatusCode::METHOD_NOT_ALLOWED, "{uri}");
        assert_eq!(response.headers()[header::ALLOW], "GET, HEAD");
    }
    assert_eq!(
        route(&shared, &request(Method::HEAD, "/monitor")).status(),
        StatusCode::OK
    );
}

#[tokio::test]
async fn serves_metrics_on_a_socket() {
    let shared = fixture();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(serve(listener, Arc::new(shared)));

    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(
            b"HEAD /metrics HTTP/1.1\r\nHost: test\r\n\r\n\
              GET /metrics HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n",
        )
        .await
        .unwrap();
    let mut raw = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut raw))
        .await
        .unwrap()
        .unwrap();
    server.abort();

    let raw = String::from_utf8(raw).unwrap();
    // The HEAD response is only a head; the GET response follows it directly.
    let (head, rest) = raw.split_once("\r\n\r\n").unwrap();
    assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
    assert!(
        head.contains("content-type: text/plain; version=0.0.4"),
        "{head}"
    );
    assert!(rest.starts_with("HTTP/1.1 200 OK\r\n"), "{rest}");
    let (_, body) = rest.split_once("\r\n\r\n").unwrap();
    let samples = parse_metrics(body);
    assert_eq!(
        value_of(&samples, "stickylb_server_up", &[("server", "web1")]),
        1.0
    );
}

#[tokio::test]
async fn metrics_report_each_peer() {
    let shared = fixture_with_peers(now_ms());
    let (_, _, text) = get(&shared, "/metrics").await;
    let samples = parse_metrics(&text);
    let lb2 = [("peer", "lb2")];
    let lb3 = [("peer", "lb3")];
    assert_eq!(value_of(&samples, "stickylb_peer_up", &lb2), 1.0);
    assert_eq!(value_of(&samples, "stickylb_peer_up", &lb3), 0.0);
    let heard = value_of(&samples, "stickylb_peer_last_heard_seconds", &lb2);
    assert!((1.2..60.0).contains(&heard), "{heard}");
    assert!(
        !samples
            .iter()
            .any(|s| s.name == "stickylb_peer_last_heard_seconds" && s.labels["peer"] == "lb3"),
        "never heard from: no sample"
    );
    for (name, value) in [
        ("stickylb_peer_sessions_total", 2.0),
        ("stickylb_peer_updates_sent_total", 40.0),
        ("stickylb_peer_updates_received_total", 30.0),
        ("stickylb_peer_updates_acked_total", 38.0),
        ("stickylb_peer_unknown_servers_total", 4.0),
        ("stickylb_peer_conflicts_total", 5.0),
        ("stickylb_peer_keys_too_long_total", 6.0),
    ] {
        assert_eq!(value_of(&samples, name, &lb2), value, "{name}");
        assert_eq!(value_of(&samples, name, &lb3), 0.0, "{name}");
    }
    let resyncs = "stickylb_peer_resyncs_total";
    assert_eq!(
        value_of(&samples, resyncs, &[lb2[0], ("direction", "taught")]),
        1.0
    );
    assert_eq!(
        value_of(&samples, resyncs, &[lb2[0], ("direction", "learned")]),
        3.0
    );
    assert_eq!(samples.iter().filter(|s| s.name == resyncs).count(), 2 * 2);

    // Without peers the families are declared but hold no samples.
    let shared = fixture();
    let (_, _, text) = get(&shared, "/metrics").await;
    assert!(text.contains("# TYPE stickylb_peer_up gauge\n"));
    assert!(!parse_metrics(&text)
        .iter()
        .any(|s| s.name.starts_with("stickylb_peer_")));
}

#[tokio::test]
async fn api_peers_reports_state_and_counters() {
    let shared = fixture_with_peers(now_ms());
    let (status, peers) = get_json(&shared, "/api/peers").await;
    assert_eq!(status, StatusCode::OK);
    let peers = peers.as_array().unwrap();
    assert_eq!(peers.len(), 2);
    let lb2 = &peers[0];
    assert_eq!(lb2["peer"], "lb2");
    assert_eq!(lb2["addr"], "10.0.0.2:10000");
    assert_eq!(lb2["state"], "established");
    assert!(lb2["last_received_ms"].as_u64().unwrap() > 0);
    assert!(lb2["last_heard_ms_ago"].as_u64().unwrap() >= 1_200);
    for (field, value) in [
        ("sessions", 2),
        ("updates_sent", 40),
        ("updates_received", 30),
        ("updates_acked", 38),
        ("resyncs_taught", 1),
        ("resyncs_learned", 3),
        ("unknown_servers", 4),
        ("conflicts", 5),
        ("keys_too_long", 6),
    ] {
        assert_eq!(lb2[field], value, "{field}");
    }
    assert_eq!(
        lb2["last_error"],
        "connection reset <script>alert(2)</script>"
    );
    let lb3 = &peers[1];
    assert_eq!(
        (&lb3["peer"], &lb3["addr"], &lb3["state"]),
        (
            &Value::from("lb3"),
            &Value::from("[fd00::3]:10000"),
            &Value::from("connecting")
        )
    );
    assert_eq!(lb3["last_received_ms"], 0);
    assert!(lb3["last_heard_ms_ago"].is_null());
    assert!(lb3["last_error"].is_null());

    let shared = fixture();
    let (status, peers) = get_json(&shared, "/api/peers").await;
    assert_eq!((status, peers), (StatusCode::OK, Value::Array(Vec::new())));
}

#[test]
fn page_shows_each_peer() {
    let now = now_ms();
    let shared = fixture_with_peers(now);
    let html = page::render(&Snapshot::read(&shared, now + 34));
    assert!(!html.contains("No peers configured"));
    assert!(html.contains(r#"<tr class="up"><td class="l"><b>lb2</b></td><td class="l">10.0.0.2:10000</td><td class="state">established</td><td>1.2 s ago</td>"#));
    assert!(html.contains(r#"<tr class="connecting"><td class="l"><b>lb3</b></td><td class="l">[fd00::3]:10000</td><td class="state">connecting</td><td><span class="muted">never</span></td>"#));
    // The last error is data: escaped, never markup.
    assert!(!html.contains("<script>"));
    assert!(html.contains("connection reset &lt;script&gt;alert(2)&lt;/script&gt;"));
    assert!(html.contains(r#"href="/api/peers""#));
}

#[tokio::test]
async fn the_operators_server_settings_show_on_the_page_the_api_and_the_metrics() {
    let shared = fixture();
    let web = &shared.backends[0];
    web.set_admin("web1", crate::backend::Admin::Drain).unwrap();
    web.set_weight("web1", 3).unwrap();
    web.server("web2").unwrap().set_up(true);
    web.set_admin("web2", crate::backend::Admin::Maint).unwrap();

    let (_, backends) = get_json(&shared, "/api/servers").await;
    let servers = &backends[0]["servers"];
    assert_eq!(servers[0]["admin"], "drain");
    assert_eq!(servers[0]["weight"], 3);
    assert_eq!(servers[0]["effective_weight"], 0);
    assert_eq!(servers[1]["admin"], "maint");

    let (_, _, page) = get(&shared, "/monitor").await;
    assert!(page.contains("<tr class=\"drain\"><td class=\"l\"><b>web1</b>"));
    assert!(page.contains(">DRAIN</td>"));
    assert!(page.contains("<tr class=\"maint\"><td class=\"l\"><b>web2</b>"));
    assert!(page.contains(">MAINT</td>"));

    let (_, _, text) = get(&shared, "/metrics").await;
    let samples = parse_metrics(&text);
    let web1 = [("backend", "web"), ("server", "web1")];
    assert_eq!(value_of(&samples, "stickylb_server_weight", &web1), 3.0);
    let drain = [("backend", "web"), ("server", "web1"), ("state", "drain")];
    assert_eq!(
        value_of(&samples, "stickylb_server_admin_state", &drain),
        1.0
    );
    let ready = [("backend", "web"), ("server", "web1"), ("state", "ready")];
    assert_eq!(
        value_of(&samples, "stickylb_server_admin_state", &ready),
        0.0
    );
}
