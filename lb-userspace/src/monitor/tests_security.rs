//! What the monitor keeps to itself: whole cookies, and everything without the credentials of
//! `[monitor] auth`; and what it says of the table's durability.

use hyper::{header, Method, StatusCode};

use super::{
    route,
    tests::{fixture, get, get_json, parse_metrics, request, split, value_of},
    BasicAuth,
};

/// Every route the monitor serves.
const ROUTES: [&str; 8] = [
    "/",
    "/monitor",
    "/metrics",
    "/api/table",
    "/api/frontends",
    "/api/servers",
    "/api/peers",
    "/api/status",
];

#[tokio::test]
async fn no_route_shows_a_whole_cookie() {
    let shared = fixture();
    let now = crate::table::now_ms();
    let cookies = [
        "Zq8XkP2mLw5RtY7vNc3BhJ6dFg9sAe4u",
        "0123456789abcdef0123456789abcdef",
        "s3cr3t-session-value",
    ];
    for cookie in cookies {
        shared.backends[0].route(Some(cookie.as_bytes()), now);
    }
    for uri in ROUTES {
        let (_, _, body) = get(&shared, uri).await;
        for cookie in cookies {
            assert!(!body.contains(cookie), "{uri} shows {cookie}");
        }
    }
    let (_, tables) = get_json(&shared, "/api/table?backend=web").await;
    let entries = tables[0]["entries"].as_array().unwrap();
    assert_eq!(entries.len(), 6);
    let shown = shared.cookie_mask.mask(cookies[0]);
    assert!(shown.starts_with("Zq8X…#"), "{shown}");
    assert!(entries.iter().any(|e| e["cookie"] == shown.as_str()));
}

#[tokio::test]
async fn auth_guards_every_route() {
    let mut shared = fixture();
    shared.auth = Some(BasicAuth::new("admin", "s3cr3t"));
    // admin:s3cr3t, admin:wrong
    let (right, wrong) = ("Basic YWRtaW46czNjcjN0", "Basic YWRtaW46d3Jvbmc=");
    for uri in ROUTES.into_iter().chain(["/nope", "/api/nope"]) {
        for sent in [None, Some(wrong)] {
            let mut req = request(Method::GET, uri);
            if let Some(sent) = sent {
                req.headers_mut()
                    .insert(header::AUTHORIZATION, sent.parse().unwrap());
            }
            let response = route(&shared, &req);
            assert_eq!(
                response.status(),
                StatusCode::UNAUTHORIZED,
                "{uri} {sent:?}"
            );
            assert_eq!(
                response.headers()[header::WWW_AUTHENTICATE],
                "Basic realm=\"stickylb\""
            );
            let (_, _, body) = split(response).await;
            assert!(!body.contains("web1"), "{uri} leaks data in a refusal");
        }
        let mut req = request(Method::GET, uri);
        req.headers_mut()
            .insert(header::AUTHORIZATION, right.parse().unwrap());
        let status = route(&shared, &req).status();
        assert_ne!(status, StatusCode::UNAUTHORIZED, "{uri}");
    }
    let mut req = request(Method::GET, "/metrics");
    req.headers_mut()
        .insert(header::AUTHORIZATION, right.parse().unwrap());
    assert_eq!(route(&shared, &req).status(), StatusCode::OK);
}

#[tokio::test]
async fn durability_is_on_the_page_the_api_and_the_metrics() {
    let mut shared = fixture();
    for durable in [true, false] {
        shared.table_durable = durable;
        let word = if durable { "yes" } else { "no" };
        let (_, _, html) = get(&shared, "/monitor").await;
        assert!(html.contains("<dt>Durable</dt>"), "{html}");
        assert!(html.contains(&format!(">{word}</dd>")), "durable {word}");
        let (status, body) = get_json(&shared, "/api/status").await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body["table_durable"], durable);
        assert_eq!(body["instance"], "lb-test");
        assert_eq!(body["version"], env!("CARGO_PKG_VERSION"));
        assert!(body["uptime_ms"].as_u64().unwrap() >= 90_061_000);
        assert!(body["log_lines_dropped"].is_u64(), "{body}");
        let (_, _, text) = get(&shared, "/metrics").await;
        let samples = parse_metrics(&text);
        assert_eq!(
            value_of(&samples, "stickylb_table_durable", &[]),
            f64::from(u8::from(durable))
        );
    }
}
