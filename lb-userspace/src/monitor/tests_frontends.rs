//! Frontends on `/monitor` and `/metrics`: connections for every frontend, and a TLS
//! frontend's handshakes by outcome and by the protocol ALPN chose.

use std::sync::atomic::Ordering::Relaxed;

use super::{
    metrics, page,
    tests::{fixture, get_json, parse_metrics, value_of},
    view::{Snapshot, TlsCounts},
};
use crate::table::now_ms;

/// The fixture's frontends, `www` counted 12 connections; `api` made a TLS frontend with 9
/// handshakes done (h2 5, http/1.1 3, none 1), 2 failed, 1 timed out.
fn with_counts() -> Snapshot {
    let shared = fixture();
    shared.frontends[0].stats.connections.store(12, Relaxed);
    let mut snapshot = Snapshot::read(&shared, now_ms());
    let api = &mut snapshot.frontends[1];
    api.connections = 12;
    api.tls = Some(TlsCounts {
        handshakes: 9,
        failed: 2,
        timed_out: 1,
        alpn: [5, 3, 0, 1],
    });
    snapshot
}

#[test]
fn metrics_count_connections_and_tls_handshakes_per_frontend() {
    let text = metrics::render(&with_counts());
    let samples = parse_metrics(&text);
    let value = |name: &str, labels: &[(&str, &str)]| value_of(&samples, name, labels);
    let connections = "stickylb_frontend_connections_total";
    assert_eq!(value(connections, &[("frontend", "www")]), 12.0);
    assert_eq!(value(connections, &[("frontend", "http")]), 0.0);
    let handshakes = "stickylb_frontend_tls_handshakes_total";
    for (result, count) in [("done", 9.0), ("failed", 2.0), ("timeout", 1.0)] {
        assert_eq!(
            value(handshakes, &[("frontend", "api"), ("result", result)]),
            count
        );
    }
    let alpn = "stickylb_frontend_tls_alpn_total";
    for (protocol, count) in [
        ("h2", 5.0),
        ("http/1.1", 3.0),
        ("http/1.0", 0.0),
        ("none", 1.0),
    ] {
        assert_eq!(
            value(alpn, &[("frontend", "api"), ("alpn", protocol)]),
            count
        );
    }
    // Only the TLS frontend has handshakes.
    let tls_frontends: Vec<_> = samples
        .iter()
        .filter(|s| s.name == handshakes)
        .map(|s| s.labels["frontend"].as_str())
        .collect();
    assert_eq!(tls_frontends, ["api"; 3]);
}

#[test]
fn cleartext_frontends_have_no_tls_families() {
    let text = metrics::render(&Snapshot::read(&fixture(), now_ms()));
    assert!(text.contains("stickylb_frontend_connections_total{frontend=\"www\"} 0"));
    assert!(!text.contains("stickylb_frontend_tls"), "{text}");
}

#[test]
fn the_page_shows_connections_and_handshakes() {
    let html = page::render(&with_counts());
    assert!(html.contains("<th>Connections</th>"), "{html}");
    assert!(
        html.contains("<td>12</td><td class=\"l\">9 done, 2 failed, 1 timed out; h2 5; http/1.1 3; none 1</td>"),
        "{html}"
    );
    assert!(html.contains("<td>0</td><td class=\"l\">-</td>"), "{html}");
}

#[tokio::test]
async fn the_api_lists_every_frontend_with_its_counters() {
    let shared = fixture();
    shared.frontends[0].stats.connections.store(12, Relaxed);
    let (status, json) = get_json(&shared, "/api/frontends").await;
    assert_eq!(status, hyper::StatusCode::OK);
    assert_eq!(
        json[0],
        serde_json::json!({
            "frontend": "www", "backend": "web", "serves": "HTTP", "connections": 12, "tls": null
        })
    );
    let names: Vec<&str> = json
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["frontend"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["www", "api", "http"]);
    // A TLS frontend's handshakes, with ALPN by name.
    let tls = with_counts().frontends[1].tls.take().unwrap();
    assert_eq!(
        serde_json::to_value(&tls).unwrap(),
        serde_json::json!({
            "handshakes": 9, "failed": 2, "timed_out": 1,
            "alpn": { "h2": 5, "http/1.1": 3, "http/1.0": 0, "none": 1 }
        })
    );
}

/// Dropped log lines: on `/metrics` always, on the page's header only when there are some.
#[test]
fn dropped_log_lines_are_on_the_metrics_and_on_the_page_when_there_are_some() {
    let mut snapshot = Snapshot::read(&fixture(), now_ms());
    for dropped in [0, 7] {
        snapshot.log_dropped = dropped;
        let samples = parse_metrics(&metrics::render(&snapshot));
        assert_eq!(
            value_of(&samples, "stickylb_log_lines_dropped_total", &[]),
            dropped as f64
        );
        let html = page::render(&snapshot);
        let shown = html.contains("<dt>Log lines dropped</dt>");
        assert_eq!(shown, dropped > 0, "{html}");
        if dropped > 0 {
            assert!(
                html.contains(&format!("id=\"log-dropped\" class=\"bad\">{dropped}</dd>")),
                "{html}"
            );
        }
    }
}
