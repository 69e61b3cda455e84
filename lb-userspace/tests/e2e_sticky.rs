//! End to end, in network namespaces (client, lb, backends): the original demo's stickiness and round
//! robin order, redispatch, the durable table across stop/start and kill -9, bpftool, and the
//! answers to bad input.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test code: a failed setup step must fail the test loudly"
)]

mod common;

use std::time::Duration;

use common::{
    demo_cookie, http, privileged, start_daemon, wait_until, write_temp, PinDir, Proc, Topology,
};

/// Seven servers `be1..be7` on ports 8081-8087 of the backends host, in this order.
fn config(
    topo: &Topology,
    pin: &PinDir,
    instance: &str,
    servers: &[(&str, u16)],
    extra: &str,
) -> String {
    sized_config(topo, pin, instance, servers, extra, 1_048_576)
}

fn sized_config(
    topo: &Topology,
    pin: &PinDir,
    instance: &str,
    servers: &[(&str, u16)],
    extra: &str,
    table_size: u32,
) -> String {
    let servers: String = servers
        .iter()
        .map(|(name, port)| {
            format!(
                "  {{ name = \"{name}\", addr = \"{}:{port}\" }},\n",
                topo.backend_addr()
            )
        })
        .collect();
    format!(
        r#"
{head}
[[backend]]
name = "back-session"
balance = "roundrobin"
stick_cookie = "JSESSIONID"
expire = "30m"
table_size = {table_size}
health_check = {{ path = "/", interval = "200ms", timeout = "500ms", rise = 1, fall = 1 }}
servers = [
{servers}]

[monitor]
bind = "{lb}:8404"
{extra}
"#,
        head = common::config_head(instance, pin, topo.lb_addr(), "back-session"),
        lb = topo.lb_addr(),
    )
}

fn seven() -> Vec<(&'static str, u16)> {
    vec![
        ("be1", 8081),
        ("be2", 8082),
        ("be3", 8083),
        ("be4", 8084),
        ("be5", 8085),
        ("be6", 8086),
        ("be7", 8087),
    ]
}

/// One backend process per server, answering `Backend N`.
fn start_backends(topo: &Topology, servers: &[(&str, u16)]) -> Vec<Proc> {
    servers
        .iter()
        .map(|(name, port)| {
            let n = &name[2..];
            let listen = format!("{}:{port}=Backend {n}", topo.backend_addr());
            let proc = Proc::spawn(
                name,
                topo.backends.name(),
                &[common::backend_bin(), "--listen", &listen],
            );
            proc.wait_for_output("ready", Duration::from_secs(10));
            proc
        })
        .collect()
}

/// Three hosts (client, lb, backends) with the backends running and the lb's config written;
/// torn down in field order: backends, then the pin directory, then the namespaces.
struct Rig {
    backends: Vec<Proc>,
    cfg: std::path::PathBuf,
    pin: PinDir,
    topo: Topology,
}

/// `tag` names the namespaces and the instance (`lb-<tag>`); `net` picks the test's subnets.
fn rig(tag: &str, net: u8, servers: &[(&str, u16)], extra: &str) -> Rig {
    let topo = Topology::new(tag, net);
    let pin = PinDir::new(tag);
    let backends = start_backends(&topo, servers);
    let instance = format!("lb-{tag}");
    let cfg = write_temp(
        &format!("{tag}.toml"),
        &config(&topo, &pin, &instance, servers, extra),
    );
    Rig {
        backends,
        cfg,
        pin,
        topo,
    }
}

impl Rig {
    fn start(&self) -> Proc {
        start_daemon(self.topo.lb.name(), &self.cfg)
    }

    /// Sets `fastpath = "off"` on the frontend: every request through the userspace proxy.
    fn without_fast_path(&self) {
        let text = std::fs::read_to_string(&self.cfg).unwrap();
        let text = text.replace(
            "backend = \"back-session\"\n",
            "backend = \"back-session\"\nfastpath = \"off\"\n",
        );
        std::fs::write(&self.cfg, text).unwrap();
    }
}

/// The original demo's access script: `NNNNN - <body>` for each session.
fn access(topo: &Topology, sessions: impl IntoIterator<Item = u32>) -> Vec<String> {
    let addr = format!("{}:80", topo.lb_addr());
    let sessions: Vec<u32> = sessions.into_iter().collect();
    let cookies: Vec<(u32, String)> = sessions.iter().map(|&n| (n, demo_cookie(n))).collect();
    http::in_netns(topo.client.name(), move || {
        cookies
            .iter()
            .map(|(n, cookie)| {
                let response = http::get(
                    &addr,
                    "/",
                    Some(&format!("c1=1; c2=2; JSESSIONID={cookie}")),
                );
                format!("{n:05} - {}", response.text().trim_end())
            })
            .collect()
    })
}

fn expect(sessions: impl IntoIterator<Item = u32>, backends: &[u32]) -> Vec<String> {
    sessions
        .into_iter()
        .zip(backends)
        .map(|(n, b)| format!("{n:05} - Backend {b}"))
        .collect()
}

#[test]
fn round_robin_and_stickiness_follow_the_original_demo_transcript() {
    if !privileged() {
        return;
    }
    let rig = rig("rr", 211, &seven(), "");
    let (topo, daemon) = (&rig.topo, rig.start());

    assert_eq!(access(topo, 1..=5), expect(1..=5, &[1, 2, 3, 4, 5]));
    assert_eq!(
        access(topo, 1..=5),
        expect(1..=5, &[1, 2, 3, 4, 5]),
        "sticky on repeat"
    );
    assert_eq!(access(topo, 21..=25), expect(21..=25, &[6, 7, 1, 2, 3]));
    assert_eq!(access(topo, 1..=5), expect(1..=5, &[1, 2, 3, 4, 5]));

    let log = daemon.stop_with(libc::SIGTERM);
    assert!(log.contains("decision=\"new-session\""), "{log}");
    assert!(log.contains("decision=\"sticky\""), "{log}");
    assert!(log.contains("server=be6"), "{log}");
}

#[test]
fn table_survives_stop_start_kill9_and_server_reordering() {
    if !privileged() {
        return;
    }
    let rig = rig("dur", 212, &seven(), "");
    let (topo, pin) = (&rig.topo, &rig.pin);
    let before = {
        let _daemon = rig.start();
        access(topo, 21..=27)
    }; // dropped: SIGKILL
    assert_eq!(before, expect(21..=27, &[1, 2, 3, 4, 5, 6, 7]));

    // kill -9, then start: the pinned map carries the table.
    let daemon = rig.start();
    assert!(daemon.output().contains("adopted=7"), "{}", daemon.output());
    assert_eq!(access(topo, 21..=27), before, "after kill -9 and start");

    // stop (SIGTERM), then start.
    daemon.stop_with(libc::SIGTERM);
    let daemon = rig.start();
    assert_eq!(access(topo, 21..=27), before, "after stop and start");
    daemon.stop_with(libc::SIGTERM);

    // The servers reordered and one added: sessions follow server names, not positions.
    let mut reordered = seven();
    reordered.reverse();
    reordered.insert(3, ("be8", 8088));
    let _extra = start_backends(topo, &[("be8", 8088)]);
    let cfg = write_temp("dur2.toml", &config(topo, pin, "lb-dur", &reordered, ""));
    let _daemon = start_daemon(topo.lb.name(), &cfg);
    assert_eq!(access(topo, 21..=27), before, "after reordering servers");
}

#[test]
fn bpftool_and_table_command_show_a_cookie_just_used() {
    if !privileged() {
        return;
    }
    let rig = rig("bpft", 213, &seven()[..2], "");
    let (topo, pin, cfg) = (&rig.topo, &rig.pin, &rig.cfg);
    let _daemon = rig.start();
    let cookie = demo_cookie(4242);
    assert_eq!(access(topo, [4242]), ["04242 - Backend 1"]);

    let map = pin.0.join("lb-bpft/v1/STICK_TABLE");
    let map = map.to_str().unwrap().to_owned();
    let mut dump = String::new();
    let found = wait_until(Duration::from_millis(500), || {
        let out = std::process::Command::new("bpftool")
            .args(["map", "dump", "pinned", &map])
            .output()
            .unwrap();
        dump = String::from_utf8_lossy(&out.stdout).into_owned();
        dump.contains(&format!("\"cookie\": \"{cookie}\""))
    });
    assert!(
        found,
        "bpftool did not show the cookie within 500 ms:\n{dump}"
    );
    assert!(dump.contains("\"server\": \"be1\""), "{dump}");
    assert!(dump.contains("\"last_seen_ms\": "), "{dump}");

    let out = std::process::Command::new(common::stickylb_bin())
        .args(["table", "--config", cfg.to_str().unwrap()])
        .output()
        .unwrap();
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{table}");
    let row = table
        .lines()
        .find(|l| l.contains(&cookie))
        .unwrap_or_else(|| panic!("{table}"));
    assert!(row.contains("back-session") && row.contains("be1"), "{row}");
}

#[test]
fn a_down_server_gets_no_new_sessions_and_its_sessions_are_redispatched() {
    if !privileged() {
        return;
    }
    let servers = &seven()[..3];
    let mut rig = rig("redis", 214, servers, "");
    let daemon = rig.start();
    let topo = &rig.topo;
    assert_eq!(access(topo, 1..=3), expect(1..=3, &[1, 2, 3]));

    drop(rig.backends.remove(1)); // be2 dies
    daemon.wait_for_output("server is DOWN", Duration::from_secs(10));
    assert!(daemon.output().contains("server=be2"));

    // Session 2 moves to a live server and stays there; new sessions avoid be2.
    let moved = access(topo, [2]);
    assert_ne!(moved, ["00002 - Backend 2"]);
    assert_eq!(
        access(topo, [2]),
        moved,
        "the redispatched session is stuck to its new server"
    );
    let fresh = access(topo, 30..=33);
    assert!(
        fresh.iter().all(|line| !line.ends_with("Backend 2")),
        "{fresh:?}"
    );
    // The access line may reach the test just after the answer.
    daemon.wait_for_output("decision=\"redispatch\"", Duration::from_secs(10));

    // be2 comes back: session 2 stays where it was redispatched to.
    let _revived = start_backends(topo, &servers[1..2]);
    daemon.wait_for_output("server is UP", Duration::from_secs(10));
    assert_eq!(access(topo, [2]), moved);
    assert_eq!(access(topo, [1, 3]), expect([1, 3], &[1, 3]));
}

#[test]
fn bad_input_gets_400_431_408_and_no_server_gets_503() {
    if !privileged() {
        return;
    }
    let timeouts = "[timeouts]\nclient = \"1s\"\nmax_header_bytes = 8192\n";
    let mut rig = rig("bad", 215, &seven()[..1], timeouts);
    let daemon = rig.start();
    let topo = &rig.topo;
    let addr = format!("{}:80", topo.lb_addr());

    let a = addr.clone();
    let (garbage, huge, slow, xff) = http::in_netns(topo.client.name(), move || {
        let limit = Duration::from_secs(5);
        let garbage = http::raw_exchange(&a, b"NOT HTTP AT ALL\r\n\r\n", limit);
        let big = format!(
            "GET / HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
            "a".repeat(20_000)
        );
        let huge = http::raw_exchange(&a, big.as_bytes(), limit);
        let slow = http::raw_exchange(&a, b"GET / HTTP/1.1\r\nHost: x\r\n", limit);
        let xff = http::get(&a, "/headers", None);
        (garbage, huge, slow, xff)
    });
    assert_eq!(http::parse(&garbage).status, 400);
    assert_eq!(http::parse(&huge).status, 431);
    assert_eq!(http::parse(&slow).status, 408);
    assert_eq!(xff.status, 200);
    let forwarded = xff.text();
    assert!(
        forwarded.contains(&format!("x-forwarded-for: {}", topo.client_addr())),
        "{forwarded}"
    );

    rig.backends.clear();
    daemon.wait_for_output("server is DOWN", Duration::from_secs(10));
    let a = addr.clone();
    let unavailable = http::in_netns(topo.client.name(), move || {
        http::get(&a, "/", Some("JSESSIONID=zz"))
    });
    assert_eq!(unavailable.status, 503);
    assert!(unavailable.text().len() < 200);
    daemon.wait_for_output("status=503", Duration::from_secs(10));
}

#[test]
fn a_bad_chunked_request_body_gets_400_and_is_not_charged_to_the_server() {
    if !privileged() {
        return;
    }
    let rig = rig("chunk", 219, &seven()[..1], "");
    let daemon = rig.start();
    let topo = &rig.topo;
    let addr = format!("{}:80", topo.lb_addr());
    // The server answers after 2 s: the body fails first.
    let answer = http::in_netns(topo.client.name(), move || {
        let bad =
            b"POST /slow/2000 HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n";
        http::raw_exchange(&addr, bad, Duration::from_secs(5))
    });
    assert_eq!(http::parse(&answer).status, 400);
    // The access log line may be written just after the answer.
    daemon.wait_for_output("status=400", Duration::from_secs(10));
    let log = daemon.output();
    assert!(!log.contains("status=503"), "{log}");
}

#[test]
fn a_cookie_set_by_the_server_is_learned() {
    if !privileged() {
        return;
    }
    let rig = rig("learn", 216, &seven()[..3], "");
    let _daemon = rig.start();
    let topo = &rig.topo;
    let addr = format!("{}:80", topo.lb_addr());
    let lines = http::in_netns(topo.client.name(), move || {
        // Cookie-less requests rotate; the one the first server answers sets a session cookie.
        let login = http::get(&addr, "/login?setcookie=learned42", None);
        let set = login.header("set-cookie").unwrap();
        let then: Vec<String> = (0..4)
            .map(|_| http::get(&addr, "/", Some("JSESSIONID=learned42")).text())
            .collect();
        (login.text(), set, then)
    });
    let (login_body, set, then) = lines;
    assert!(set.starts_with("JSESSIONID=learned42"), "{set}");
    assert!(
        then.iter().all(|body| *body == login_body),
        "{login_body:?} then {then:?}"
    );
}

#[test]
fn keep_alive_connection_serves_many_sticky_requests() {
    if !privileged() {
        return;
    }
    let rig = rig("ka", 217, &seven()[..3], "");
    // This connection changes sessions midway, which needs L7 routing of every request: a
    // spliced connection stays on its first server (e2e_fastpath_daemon tests that).
    rig.without_fast_path();
    let _daemon = rig.start();
    let topo = &rig.topo;
    let addr = format!("{}:80", topo.lb_addr());
    let bodies = http::in_netns(topo.client.name(), move || {
        let mut conn = http::KeepAlive::connect(&addr);
        let mut bodies: Vec<String> = (0..20)
            .map(|_| conn.get("/", Some("JSESSIONID=ka1")).text())
            .collect();
        bodies.extend((0..20).map(|_| conn.get("/", Some("JSESSIONID=ka2")).text()));
        bodies
    });
    assert!(bodies[..20].iter().all(|b| *b == bodies[0]), "{bodies:?}");
    assert!(bodies[20..].iter().all(|b| *b == bodies[20]), "{bodies:?}");
    assert_ne!(bodies[0], bodies[20]);
}

#[test]
fn a_new_table_size_migrates_the_pinned_table_and_long_cookies_stay_sticky() {
    if !privileged() {
        return;
    }
    let topo = Topology::new("mig", 218);
    let pin = PinDir::new("mig");
    let servers = &seven()[..3];
    let _backends = start_backends(&topo, servers);
    let cfg = write_temp(
        "mig.toml",
        &sized_config(&topo, &pin, "lb-mig", servers, "", 1000),
    );
    let long_cookie = format!("JSESSIONID={}", "L".repeat(300));
    let addr = format!("{}:80", topo.lb_addr());
    let get_long = move || {
        let (addr, cookie) = (addr.clone(), long_cookie.clone());
        move || http::get(&addr, "/", Some(&cookie)).text()
    };
    let (before, long_before) = {
        let _daemon = start_daemon(topo.lb.name(), &cfg);
        let before = access(&topo, 1..=3);
        let long = http::in_netns(topo.client.name(), get_long());
        assert_eq!(
            http::in_netns(topo.client.name(), get_long()),
            long,
            "a long cookie is sticky"
        );
        (before, long)
    };
    let cfg = write_temp(
        "mig2.toml",
        &sized_config(&topo, &pin, "lb-mig", servers, "", 5000),
    );
    let daemon = start_daemon(topo.lb.name(), &cfg);
    assert!(
        daemon.output().contains("migrated the pinned stick table"),
        "{}",
        daemon.output()
    );
    assert!(daemon.output().contains("adopted=4"), "{}", daemon.output());
    assert_eq!(access(&topo, 1..=3), before);
    assert_eq!(http::in_netns(topo.client.name(), get_long()), long_before);
}

/// Opens an upgrade on a new connection to `addr` with session `cookie`; checks the `101`, the
/// server's greeting and an echo, then closes. Returns the server's name.
fn upgrade_and_echo(addr: &str, cookie: &str) -> String {
    use std::io::{Read as _, Write as _};
    let mut conn = std::net::TcpStream::connect(addr).unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let request = format!(
        "GET /chat HTTP/1.1\r\nHost: t\r\nCookie: JSESSIONID={cookie}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n"
    );
    conn.write_all(request.as_bytes()).unwrap();
    let mut got = Vec::new();
    let head_end = loop {
        if let Some(i) = got.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let mut chunk = [0u8; 1024];
        let n = conn.read(&mut chunk).unwrap();
        assert!(n > 0, "closed before the 101");
        got.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&got[..head_end]).into_owned();
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    let header = |name: &str| {
        head.lines().find_map(|l| {
            let (n, v) = l.split_once(':')?;
            n.eq_ignore_ascii_case(name).then(|| v.trim().to_owned())
        })
    };
    assert_eq!(header("upgrade").as_deref(), Some("websocket"), "{head}");
    let server = header("x-served-by").unwrap();
    let mut tunnel = got[head_end..].to_vec();
    conn.write_all(b"ping through the tunnel").unwrap();
    let expected = format!("{server}\nping through the tunnel");
    while tunnel.len() < expected.len() {
        let mut chunk = [0u8; 1024];
        let n = conn.read(&mut chunk).unwrap();
        assert!(
            n > 0,
            "tunnel closed early: {:?}",
            String::from_utf8_lossy(&tunnel)
        );
        tunnel.extend_from_slice(&chunk[..n]);
    }
    assert_eq!(String::from_utf8_lossy(&tunnel), expected);
    conn.shutdown(std::net::Shutdown::Write).unwrap();
    let mut rest = Vec::new();
    conn.read_to_end(&mut rest).unwrap();
    assert!(rest.is_empty());
    server
}

#[test]
fn an_upgrade_becomes_a_tunnel_to_the_sticky_server_without_the_fast_path() {
    if !privileged() {
        return;
    }
    let rig = rig("up", 241, &seven()[..3], "");
    // The userspace proxy's own upgrade path (the fast path's is in e2e_fastpath_daemon).
    rig.without_fast_path();
    let _daemon = rig.start();
    let addr = format!("{}:80", rig.topo.lb_addr());
    let servers = http::in_netns(rig.topo.client.name(), move || {
        let first = upgrade_and_echo(&addr, "up1");
        let again = upgrade_and_echo(&addr, "up1");
        let other = upgrade_and_echo(&addr, "up2");
        let plain = http::get(&addr, "/", Some("JSESSIONID=up1")).text();
        (first, again, other, plain)
    });
    let (first, again, other, plain) = servers;
    assert_eq!(first, again, "the session's tunnels go to its server");
    assert_ne!(first, other, "a new session is balanced to the next server");
    assert_eq!(plain.trim_end(), first, "plain requests of the session too");
}

/// A server on `addr` in namespace `ns`, on a thread of this process: answers every request
/// `200 ok`, keeps connections alive, closes one idle for `idle`, and counts the connections
/// it accepted.
fn counting_server(
    ns: &str,
    addr: String,
    idle: Duration,
) -> std::sync::Arc<std::sync::atomic::AtomicU32> {
    use std::{
        io::{Read as _, Write as _},
        sync::{atomic::Ordering::Relaxed, Arc},
    };
    let accepted = Arc::new(std::sync::atomic::AtomicU32::new(0));
    let listener = http::in_netns(ns, move || std::net::TcpListener::bind(addr).unwrap());
    let counter = Arc::clone(&accepted);
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            counter.fetch_add(1, Relaxed);
            std::thread::spawn(move || {
                stream.set_read_timeout(Some(idle)).unwrap();
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                // Until the peer closes, or stays idle for `idle`: then this server closes.
                while let Ok(n @ 1..) = stream.read(&mut chunk) {
                    buf.extend_from_slice(&chunk[..n]);
                    while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        buf.drain(..end + 4);
                        let answer = b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\n\r\nok\n";
                        if stream.write_all(answer).is_err() {
                            return;
                        }
                    }
                }
            });
        }
    });
    accepted
}

#[test]
fn server_connections_are_shared_by_clients_and_one_the_server_closed_is_replaced() {
    use std::sync::atomic::Ordering::Relaxed;
    if !privileged() {
        return;
    }
    let rig = rig("pool", 243, &[], "");
    let server = format!("{}:8090", rig.topo.backend_addr());
    let accepted = counting_server(
        rig.topo.backends.name(),
        server.clone(),
        Duration::from_millis(300),
    );
    let text = std::fs::read_to_string(&rig.cfg).unwrap();
    let text = text
        .replace(
            "servers = [\n]",
            &format!("servers = [ {{ name = \"s1\", addr = \"{server}\" }} ]"),
        )
        .replace("health_check = {", "health_check = { enabled = false,");
    std::fs::write(&rig.cfg, text).unwrap();
    rig.without_fast_path();
    let lb = rig.start();
    let addr = format!("{}:80", rig.topo.lb_addr());
    // A new client connection per request, as the original demo's curl: each answer says it closes.
    let one_by_one = |count: usize| {
        let addr = addr.clone();
        http::in_netns(rig.topo.client.name(), move || {
            (0..count)
                .map(|i| {
                    let request = format!(
                        "GET /{i} HTTP/1.1\r\nHost: x\r\nCookie: JSESSIONID=p{i}\r\nConnection: close\r\n\r\n"
                    );
                    http::parse(&http::raw_exchange(&addr, request.as_bytes(), Duration::from_secs(5)))
                })
                .collect::<Vec<_>>()
        })
    };
    for response in one_by_one(20) {
        assert_eq!((response.status, response.text().as_str()), (200, "ok\n"));
        assert_eq!(response.header("connection").as_deref(), Some("close"));
    }
    let shared = accepted.load(Relaxed);
    assert!(
        shared <= 2,
        "20 client connections took {shared} server connections"
    );
    // The server closes the idle pooled connection; the next clients are served all the same.
    std::thread::sleep(Duration::from_millis(600));
    for response in one_by_one(5) {
        assert_eq!((response.status, response.text().as_str()), (200, "ok\n"));
    }
    assert!(
        accepted.load(Relaxed) > shared,
        "a new server connection replaced the closed one"
    );
    let log = lb.stop_with(libc::SIGTERM);
    assert_eq!(log.matches("relay=\"pooled\"").count(), 25, "{log}");
    assert!(!log.contains("relayed exchange failed"), "{log}");
}
