//! Routing with the operator's settings: admin states, weights, limits, and what is kept.

use std::collections::HashMap;

use super::{admin::MemorySettings, *};
use crate::{config::Config, table};

/// A backend `web` of `servers` (`name`, extra server keys) with health checks off.
fn config(servers: &[(&str, &str)], backend_extra: &str) -> config::Backend {
    let servers: Vec<String> = servers
        .iter()
        .enumerate()
        .map(|(i, (name, extra))| {
            format!(
                "{{ name = \"{name}\", addr = \"127.0.0.1:{}\"{extra} }}",
                9001 + i
            )
        })
        .collect();
    let text = format!(
        "[instance]\nname = \"lb\"\n\n[[frontend]]\nname = \"www\"\nbind = \"127.0.0.1:1\"\nbackend = \"web\"\n\n\
         [[backend]]\nname = \"web\"\nhealth_check = {{ enabled = false }}\n{backend_extra}\nservers = [ {} ]\n",
        servers.join(", ")
    );
    Config::from_toml(&text).unwrap().backends.remove(0)
}

fn backend(config: &config::Backend, settings: &SharedSettings) -> BackendState {
    BackendState::new(config, table::memory::store(1024), Arc::clone(settings))
}

/// Routes one request; the server's name and the decision (the place is given back).
fn route(backend: &BackendState, cookie: Option<&str>) -> (String, Decision) {
    match backend.route(cookie.map(str::as_bytes), now_ms()) {
        Route::Admitted(admitted, decision) => (admitted.server().name.to_string(), decision),
        Route::Queued => panic!("queued"),
        Route::NoServer => panic!("no server"),
    }
}

fn new_sessions(backend: &BackendState, count: usize, tag: &str) -> HashMap<String, usize> {
    let mut seen = HashMap::new();
    for i in 0..count {
        let (server, decision) = route(backend, Some(&format!("{tag}-{i}")));
        assert_eq!(decision, Decision::NewSession);
        *seen.entry(server).or_default() += 1;
    }
    seen
}

#[test]
fn a_drained_server_keeps_its_sessions_and_takes_no_new_ones() {
    let settings = MemorySettings::shared();
    let web = backend(&config(&[("be1", ""), ("be2", "")], ""), &settings);
    assert_eq!(route(&web, Some("kept")).0, "be1");
    web.set_admin("be1", Admin::Drain).unwrap();
    for _ in 0..3 {
        assert_eq!(
            route(&web, Some("kept")),
            ("be1".to_owned(), Decision::StickyHit)
        );
    }
    assert_eq!(new_sessions(&web, 20, "new").get("be1"), None);
    assert_eq!(route(&web, None).0, "be2");
}

#[test]
fn maintenance_redispatches_and_ready_restores() {
    let settings = MemorySettings::shared();
    let web = backend(&config(&[("be1", ""), ("be2", "")], ""), &settings);
    assert_eq!(route(&web, Some("s")).0, "be1");
    web.set_admin("be1", Admin::Maint).unwrap();
    assert_eq!(
        route(&web, Some("s")),
        ("be2".to_owned(), Decision::Redispatch)
    );
    assert_eq!(route(&web, Some("s")).1, Decision::StickyHit);
    web.set_admin("be1", Admin::Ready).unwrap();
    let seen = new_sessions(&web, 10, "after");
    assert_eq!(seen.get("be1"), Some(&5));
}

#[test]
fn weights_share_new_sessions_in_proportion_and_equal_weights_keep_the_order() {
    let settings = MemorySettings::shared();
    let web = backend(
        &config(&[("be1", ", weight = 3"), ("be2", ", weight = 1")], ""),
        &settings,
    );
    let seen = new_sessions(&web, 400, "w");
    assert_eq!(seen.get("be1"), Some(&300));
    assert_eq!(seen.get("be2"), Some(&100));

    let equal = backend(
        &config(
            &[
                ("a", ", weight = 5"),
                ("b", ", weight = 5"),
                ("c", ", weight = 5"),
            ],
            "",
        ),
        &settings,
    );
    let order: Vec<String> = (0..6)
        .map(|i| route(&equal, Some(&format!("e{i}"))).0)
        .collect();
    assert_eq!(order, ["a", "b", "c", "a", "b", "c"]);

    web.set_weight("be2", 0).unwrap();
    assert_eq!(new_sessions(&web, 10, "zero").get("be2"), None);
}

#[test]
fn maxconn_admits_up_to_the_limit_then_queues_and_a_sticky_request_waits_for_its_server() {
    let settings = MemorySettings::shared();
    let web = backend(
        &config(&[("be1", ", maxconn = 2"), ("be2", ", maxconn = 1")], ""),
        &settings,
    );
    let held: Vec<InFlight> = (0..3)
        .map(|_| match web.route(None, now_ms()) {
            Route::Admitted(admitted, _) => admitted,
            _ => panic!("not admitted"),
        })
        .collect();
    assert_eq!(web.server("be1").unwrap().in_flight(), 2);
    assert_eq!(web.server("be2").unwrap().in_flight(), 1);
    assert!(matches!(web.route(None, now_ms()), Route::Queued));
    drop(held);

    // A session of be2 waits while be2 is full, even though be1 has room.
    let cookie = (0..)
        .map(|i| format!("c{i}"))
        .find(|c| route(&web, Some(c)).0 == "be2")
        .unwrap();
    let busy = web.server("be2").unwrap().try_admit().unwrap();
    assert!(matches!(
        web.route(Some(cookie.as_bytes()), now_ms()),
        Route::Queued
    ));
    drop(busy);
    assert_eq!(
        route(&web, Some(&cookie)),
        ("be2".to_owned(), Decision::StickyHit)
    );
}

#[test]
fn settings_outlive_the_backend_and_a_server_removed_forgets_them() {
    let settings = MemorySettings::shared();
    let cfg = config(&[("be1", ""), ("be2", ", weight = 2")], "");
    let web = backend(&cfg, &settings);
    web.set_admin("be1", Admin::Drain).unwrap();
    web.set_weight("be2", 7).unwrap();
    drop(web);

    // A restart: a new backend over the same store.
    let web = backend(&cfg, &settings);
    assert_eq!(web.server("be1").unwrap().admin(), Admin::Drain);
    assert_eq!(web.server("be2").unwrap().weight(), 7);

    // The configuration's weight changed since: it wins over the runtime one.
    let edited = config(&[("be1", ""), ("be2", ", weight = 4")], "");
    web.reconfigure(&edited);
    assert_eq!(web.server("be2").unwrap().weight(), 4);

    // be1 leaves the configuration, then comes back: it starts ready.
    web.reconfigure(&config(&[("be2", ", weight = 4")], ""));
    web.reconfigure(&edited);
    assert_eq!(web.server("be1").unwrap().admin(), Admin::Ready);
    assert!(web.set_admin("nope", Admin::Drain).is_err());
}

#[test]
fn slowstart_ramps_a_server_that_comes_back() {
    let settings = MemorySettings::shared();
    let web = backend(
        &config(&[("be1", ""), ("be2", "")], "slowstart = \"1h\""),
        &settings,
    );
    let be2 = web.server("be2").unwrap();
    assert_eq!(be2.effective_weight(), WEIGHT_SCALE);
    be2.set_up(false);
    be2.set_up(true);
    assert!(be2.ramping());
    assert!(be2.effective_weight() < WEIGHT_SCALE);
    let seen = new_sessions(&web, 100, "ramp");
    assert!(seen.get("be2").copied().unwrap_or(0) < 10, "{seen:?}");
}

#[test]
fn consistent_nodes_choose_alike_for_new_cookies_and_clients_without_asking_each_other() {
    let servers = [("be1", ""), ("be2", ""), ("be3", ""), ("be4", "")];
    let settings = MemorySettings::shared();
    let web = config(&servers, "balance = \"consistent\"");
    let (node1, node2) = (backend(&web, &settings), backend(&web, &settings));
    for i in 0..200 {
        let cookie = format!("new-{i}");
        let (first, decision) = route(&node1, Some(&cookie));
        assert_eq!(decision, Decision::NewSession);
        assert_eq!(route(&node2, Some(&cookie)), (first, Decision::NewSession));
    }
    let from = |node: &BackendState, client: &str| match node.route_from(
        Some(client.parse().unwrap()),
        None,
        now_ms(),
    ) {
        Route::Admitted(admitted, Decision::NoCookie) => admitted.server().name.to_string(),
        _ => panic!("not balanced"),
    };
    for client in ["10.0.0.1", "10.0.0.2", "fd00::7"] {
        let first = from(&node1, client);
        assert_eq!(from(&node1, client), first);
        assert_eq!(from(&node2, client), first);
    }
}

#[test]
fn consistent_queues_at_the_chosen_servers_maxconn_rather_than_moving_the_session() {
    let settings = MemorySettings::shared();
    let web = config(
        &[("be1", ", maxconn = 1"), ("be2", ", maxconn = 1")],
        "balance = \"consistent\"",
    );
    let web = backend(&web, &settings);
    let Route::Admitted(held, _) = web.route(Some(b"a"), now_ms()) else {
        panic!("not admitted");
    };
    let chosen = held.server().name.to_string();
    // Another new cookie that hashes to the same server (as a node without limits tells)
    // waits for it.
    let unlimited = config(&[("be1", ""), ("be2", "")], "balance = \"consistent\"");
    let unlimited = backend(&unlimited, &settings);
    let same = (0..100)
        .map(|i| format!("b{i}"))
        .find(|c| route(&unlimited, Some(c)).0 == chosen)
        .unwrap();
    assert!(matches!(
        web.route(Some(same.as_bytes()), now_ms()),
        Route::Queued
    ));
    drop(held);
    assert_eq!(route(&web, Some(&same)).0, chosen);
}
