//! The kernel fast path inside the real daemon: namespaces client, lb (two
//! interfaces) and backends; `stickylb run` with `fastpath = "splice"`.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test code: a failed setup step must fail the test loudly"
)]

mod common;

use std::{
    io::{Read as _, Write as _},
    net::TcpStream,
    path::{Path, PathBuf},
    sync::mpsc,
    thread,
    time::Duration,
};

use common::{
    fastpath::backend_body_sha256,
    netns::{Exec as _, NetNs},
    wait_until, PinDir, Proc, Topology,
};
use lb_common::{
    SpliceEntry, SpliceKey, SPLICE_SEEN_FIN, SPLICE_SEEN_RST, SPLICE_STATE_ARMED,
    SPLICE_STATE_SPLICE, SPLICE_STAT_DROPPED, SPLICE_STAT_REDIRECTED, SPLICE_STAT_XDP_REDIRECTED,
};
use sha2::{Digest as _, Sha256};
use stickylb::{
    dataplane::pin_root,
    fastpath::program::{open_pinned_flows, read_pinned_stats},
};

const BIG: u64 = 100 * 1024 * 1024;

struct Setup {
    topo: Topology,
    pins: PinDir,
    config: PathBuf,
    root: PathBuf,
    _backend: Proc,
}

impl Setup {
    fn new(tag: &str, net: u8, fin_grace: &str) -> Setup {
        Setup::with_health(tag, net, fin_grace, r#"{ interval = "200ms" }"#)
    }

    /// `health`: the backend's `health_check` table.
    fn with_health(tag: &str, net: u8, fin_grace: &str, health: &str) -> Setup {
        let topo = Topology::new(tag, net);
        let pins = PinDir::new(&format!("fastpath-daemon-{tag}"));
        let b = topo.backend_addr();
        let backend = common::fastpath::spawn_servers(&topo.backends, &b);
        let lb = topo.lb_addr();
        // `STICKYLB_TEST_XDP=1`: the whole suite with the XDP translation on.
        let xdp = common::fastpath::xdp_on();
        if xdp {
            common::fastpath::enable_gro(&topo.client, netns_kit::Routed::CLIENT_IF);
            common::fastpath::enable_gro(&topo.backends, netns_kit::Routed::BACKENDS_IF);
        }
        let xdp = if xdp { "xdp = \"auto\"" } else { "" };
        let text = format!(
            r#"[instance]
name = "fpd"
pin_dir = "{pin}"
control_socket = "{control}"

[[frontend]]
name = "www"
bind = "{lb}:8080"
backend = "web"
fastpath = "splice"

[[backend]]
name = "web"
health_check = {health}
servers = [ {{ name = "s1", addr = "{b}:8001" }}, {{ name = "s2", addr = "{b}:8002" }} ]

[monitor]
bind = "{lb}:8404"

[timeouts]
splice_fin_grace = "{fin_grace}"

# Hand over every connection with its first answer: these tests are about what happens to
# spliced connections, not about which connections the policy picks.
[fastpath]
after_requests = 1
{xdp}
"#,
            pin = pins.0.display(),
            control = pins.control_socket().display(),
        );
        let config = common::write_temp(&format!("{tag}.toml"), &text);
        let root = pin_root(&pins.0, "fpd");
        Setup {
            topo,
            pins,
            config,
            root,
            _backend: backend,
        }
    }

    fn start(&self) -> Proc {
        let proc = common::start_daemon(self.topo.lb.name(), &self.config);
        // Health checks bring both servers up.
        let lb = self.topo.lb_addr();
        let up = wait_until(Duration::from_secs(10), || {
            let metrics = metrics(&self.topo.client, &lb);
            metrics.matches("stickylb_server_up{").count() == 2
                && !metrics.contains("stickylb_server_up{backend=\"web\",server=\"s1\"} 0")
                && !metrics.contains("stickylb_server_up{backend=\"web\",server=\"s2\"} 0")
        });
        assert!(up, "servers up: {}", metrics(&self.topo.client, &lb));
        proc
    }

    fn spliced(&self) -> Vec<(SpliceKey, SpliceEntry)> {
        open_pinned_flows(&self.root)
            .expect("pinned flows")
            .entries()
            .expect("entries")
            .into_iter()
            // ARMED: the client's direction of a hand-off its next packet completes.
            .filter(|(_, e)| matches!(e.state, SPLICE_STATE_SPLICE | SPLICE_STATE_ARMED))
            .collect()
    }
}

fn metrics(ns: &NetNs, lb: &str) -> String {
    ns.try_exec(&[
        "curl",
        "-s",
        "--max-time",
        "5",
        &format!("http://{lb}:8404/metrics"),
    ])
    .1
}

fn metric(text: &str, line_start: &str) -> u64 {
    text.lines()
        .find(|l| l.starts_with(line_start))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// Runs `script` on a thread in the client namespace, on a new connection to the frontend
/// (20 s read timeout). It reports to the test on its `Sender` and waits for the test's go on
/// its `Receiver`. Returns the thread and the test's ends of both channels.
fn scripted_client<T, G, R>(
    setup: &Setup,
    script: impl FnOnce(TcpStream, mpsc::Sender<T>, mpsc::Receiver<G>) -> R + Send + 'static,
) -> (thread::JoinHandle<R>, mpsc::Sender<G>, mpsc::Receiver<T>)
where
    T: Send + 'static,
    G: Send + 'static,
    R: Send + 'static,
{
    let (to_main, from_client) = mpsc::channel();
    let (to_client, from_main) = mpsc::channel();
    let ns = setup.topo.client.name().to_owned();
    let addr = format!("{}:8080", setup.topo.lb_addr());
    let client = thread::spawn(move || {
        common::http::in_netns(&ns, move || script(connect(&addr), to_main, from_main))
    });
    (client, to_client, from_client)
}

/// A connection with a 20 s read timeout.
fn connect(addr: &str) -> TcpStream {
    let conn = TcpStream::connect(addr).expect("connect");
    conn.set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    conn
}

/// Requests the proxy forwarded to `servers` (of backend `web`), from `/metrics` text.
fn proxied(metrics: &str, servers: &[&str]) -> u64 {
    servers
        .iter()
        .map(|s| {
            metric(
                metrics,
                &format!("stickylb_server_requests_total{{backend=\"web\",server=\"{s}\"}}"),
            )
        })
        .sum()
}

/// Reads a response head; `buf` keeps what follows.
fn read_head(conn: &mut TcpStream, buf: &mut Vec<u8>) -> String {
    loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..i + 4]).into_owned();
            buf.drain(..i + 4);
            return head;
        }
        let mut chunk = [0u8; 16384];
        let n = conn.read(&mut chunk).expect("read head");
        assert!(n > 0, "closed before a response head");
        buf.extend_from_slice(&chunk[..n]);
    }
}

fn header(head: &str, name: &str) -> Option<String> {
    head.lines().find_map(|l| {
        let (n, v) = l.split_once(':')?;
        n.eq_ignore_ascii_case(name).then(|| v.trim().to_owned())
    })
}

/// GET `path` on `conn`; checks the body's sha256 against the backend's pattern when
/// `/bytes/N`; returns (server, body length). `pause`: called once after `pause.0` body bytes.
fn get(
    conn: &mut TcpStream,
    buf: &mut Vec<u8>,
    path: &str,
    cookie: Option<&str>,
    mut pause: Option<(u64, &mut dyn FnMut())>,
) -> (String, u64) {
    let cookie = cookie
        .map(|c| format!("Cookie: JSESSIONID={c}\r\n"))
        .unwrap_or_default();
    let request = format!("GET {path} HTTP/1.1\r\nHost: t\r\n{cookie}\r\n");
    conn.write_all(request.as_bytes()).expect("request");
    let head = read_head(conn, buf);
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let server = header(&head, "x-served-by").unwrap_or_default();
    if header(&head, "transfer-encoding").is_some_and(|te| te.contains("chunked")) {
        let body = read_chunked(conn, buf);
        let n: u64 = path.strip_prefix("/chunked/").unwrap().parse().unwrap();
        assert_eq!(body.len() as u64, n);
        let digest: [u8; 32] = Sha256::digest(&body).into();
        assert_eq!(digest, backend_body_sha256(n), "sha256 of {path}");
        return (server, n);
    }
    let len: u64 = header(&head, "content-length").unwrap().parse().unwrap();
    let mut hash = Sha256::new();
    let take = (buf.len() as u64).min(len) as usize;
    hash.update(&buf[..take]);
    let mut body_start = buf[..take].to_vec();
    buf.drain(..take);
    let mut got = take as u64;
    let mut chunk = vec![0u8; 64 * 1024];
    while got < len {
        if let Some((at, f)) = pause.as_mut() {
            if got >= *at {
                f();
                pause = None;
            }
        }
        let want = ((len - got) as usize).min(chunk.len());
        let n = conn.read(&mut chunk[..want]).expect("body");
        assert_ne!(n, 0, "closed mid-body at {got} of {len}");
        hash.update(&chunk[..n]);
        if body_start.len() < 64 {
            body_start.extend_from_slice(&chunk[..n.min(64)]);
        }
        got += n as u64;
    }
    if let Some(n) = path.strip_prefix("/bytes/") {
        let n: u64 = n.parse().unwrap();
        let digest: [u8; 32] = hash.finalize().into();
        assert_eq!(digest, backend_body_sha256(n), "sha256 of {path}");
    } else {
        assert_eq!(String::from_utf8_lossy(&body_start).trim(), server);
    }
    (server, len)
}

/// Decodes a chunked body from `buf`, then `conn`; `buf` keeps what follows it.
fn read_chunked(conn: &mut TcpStream, buf: &mut Vec<u8>) -> Vec<u8> {
    let mut fill = |buf: &mut Vec<u8>, want: usize| {
        while buf.len() < want {
            let mut chunk = [0u8; 65536];
            let n = conn.read(&mut chunk).expect("read chunked");
            assert!(n > 0, "closed in a chunked body");
            buf.extend_from_slice(&chunk[..n]);
        }
    };
    let line = |buf: &mut Vec<u8>, fill: &mut dyn FnMut(&mut Vec<u8>, usize)| loop {
        if let Some(i) = buf.windows(2).position(|w| w == b"\r\n") {
            let line = String::from_utf8_lossy(&buf[..i]).into_owned();
            buf.drain(..i + 2);
            return line;
        }
        let have = buf.len();
        fill(buf, have + 1);
    };
    let mut body = Vec::new();
    loop {
        let size = line(buf, &mut fill);
        let size = usize::from_str_radix(size.split(';').next().unwrap().trim(), 16).unwrap();
        if size == 0 {
            while !line(buf, &mut fill).is_empty() {}
            return body;
        }
        fill(buf, size + 2);
        body.extend_from_slice(&buf[..size]);
        assert_eq!(&buf[size..size + 2], b"\r\n");
        buf.drain(..size + 2);
    }
}

/// FIN from the client, then the server's FIN: a clean EOF, not an RST.
fn close_cleanly(mut conn: TcpStream, buf: &[u8]) {
    conn.shutdown(std::net::Shutdown::Write).expect("FIN");
    let mut rest = Vec::new();
    conn.read_to_end(&mut rest)
        .expect("the server's FIN, not an RST");
    assert!(rest.is_empty() && buf.is_empty());
}

/// tcpdump in the lb namespace counting RSTs the load balancer sends on either interface.
fn capture_rsts(ns: &NetNs, file: &Path) -> Proc {
    let file = file.to_str().unwrap();
    let proc = Proc::spawn(
        "tcpdump",
        ns.name(),
        &[
            "tcpdump",
            "-i",
            "any",
            "-U",
            "-n",
            "-w",
            file,
            // The spliced flows' ports (the health checks close their own connections with RST).
            "tcp[tcpflags] & tcp-rst != 0 and (port 8080 or portrange 61000-64999)",
        ],
    );
    proc.wait_for_output("listening on", Duration::from_secs(10));
    proc
}

fn rsts_in(ns: &NetNs, file: &Path) -> String {
    ns.try_exec(&["tcpdump", "-n", "-r", file.to_str().unwrap()])
        .1
}

#[test]
fn daemon_splices_a_keep_alive_connection_survives_kill_9_and_collects_it() {
    if !common::privileged() {
        return;
    }
    let setup = Setup::new("fpk", 234, "3s");
    let lb = setup.topo.lb_addr();
    let capture_file = std::env::temp_dir().join(format!("fpk-{}.pcap", std::process::id()));
    let capture = capture_rsts(&setup.topo.lb, &capture_file);
    let daemon = setup.start();
    let before = metrics(&setup.topo.client, &lb);

    // The client: request 1 through the proxy (it sets the session), then, once spliced, 20
    // small requests and a 100 MB download on the same connection.
    let (client, to_client, from_client) = scripted_client(
        &setup,
        move |mut conn, to_main: mpsc::Sender<&'static str>, from_main: mpsc::Receiver<()>| {
            let mut buf = Vec::new();
            let (first, _) = get(&mut conn, &mut buf, "/?setcookie=fpk1", None, None);
            to_main.send("first").unwrap();
            from_main.recv().unwrap();
            for i in 0..19 {
                let (server, _) = get(
                    &mut conn,
                    &mut buf,
                    &format!("/bytes/{}", 1000 + i),
                    Some("fpk1"),
                    None,
                );
                assert_eq!(server, first, "request {i} on the sticky server");
            }
            let mut pause = || {
                to_main.send("mid-download").unwrap();
                from_main.recv().unwrap();
            };
            get(
                &mut conn,
                &mut buf,
                &format!("/bytes/{BIG}"),
                Some("fpk1"),
                Some((BIG / 10, &mut pause)),
            );
            let (again, _) = get(&mut conn, &mut buf, "/", Some("fpk1"), None);
            assert_eq!(again, first, "the sticky server answers after the splice");
            to_main.send("done").unwrap();
            from_main.recv().unwrap();
            // After an idle stretch under the new daemon's collector: still spliced.
            let (last, _) = get(&mut conn, &mut buf, "/", Some("fpk1"), None);
            assert_eq!(last, first, "after the idle stretch");
            close_cleanly(conn, &buf);
            first
        },
    );
    assert_eq!(
        from_client.recv_timeout(Duration::from_secs(20)).unwrap(),
        "first"
    );
    let spliced = wait_until(Duration::from_secs(10), || setup.spliced().len() == 2);
    assert!(
        spliced,
        "two SPLICE entries; map: {:?}",
        open_pinned_flows(&setup.root).unwrap().entries().unwrap()
    );
    let at_splice = metrics(&setup.topo.client, &lb);
    assert_eq!(
        metric(&at_splice, "stickylb_fastpath_spliced_flows "),
        1,
        "{at_splice}"
    );
    assert_eq!(
        metric(
            &at_splice,
            "stickylb_fastpath_handoffs_total{outcome=\"spliced\"}"
        ),
        1
    );
    let listed = std::process::Command::new(common::stickylb_bin())
        .args(["fastpath", "--config", setup.config.to_str().unwrap()])
        .output()
        .expect("stickylb fastpath");
    let listed = String::from_utf8_lossy(&listed.stdout).into_owned();
    assert!(
        listed.contains("1 spliced")
            && listed.contains(&format!("{}:8080", lb))
            && listed.contains("splice"),
        "{listed}"
    );
    to_client.send(()).unwrap();
    assert_eq!(
        from_client.recv_timeout(Duration::from_secs(60)).unwrap(),
        "mid-download"
    );
    // 20 requests later the proxy's counters have not moved.
    let mid = metrics(&setup.topo.client, &lb);
    // kill -9 in the middle of the download: the kernel carries on alone.
    let output = daemon.stop_with(libc::SIGKILL);
    to_client.send(()).unwrap();
    assert_eq!(
        from_client.recv_timeout(Duration::from_secs(60)).unwrap(),
        "done",
        "{output}"
    );
    // A new daemon adopts the entries.
    let daemon = setup.start();
    daemon.wait_for_output("fast path loaded", Duration::from_secs(5));
    assert!(daemon.output().contains("adopted=2"), "{}", daemon.output());
    // The interfaces the killed process had attached to, attached again at start: the flow it
    // spliced runs on this process's program.
    assert!(
        daemon.output().contains("reattached=2"),
        "{}",
        daemon.output()
    );
    let after = metrics(&setup.topo.client, &lb);
    // Idle longer than the RST grace (5 s), a stale HOLD (1 s) and the configured FIN grace
    // (3 s): the collector of the new daemon must leave a live flow alone, so no packet of it
    // ever meets the stack, which has no socket for it (the capture below sees no RST).
    thread::sleep(Duration::from_secs(6));
    assert_eq!(
        setup.spliced().len(),
        2,
        "the live idle flow is still in the map"
    );
    to_client.send(()).unwrap();
    let server = client.join().expect("client");
    eprintln!("sticky server {server}");

    let entries = setup.spliced();
    assert_eq!(entries.len(), 2);
    let total_bytes: u64 = entries.iter().map(|(_, e)| e.bytes).sum();
    assert!(
        total_bytes >= BIG,
        "the download went through the program: {entries:?}"
    );
    // The proxy's counters did not move after the splice (the restarted daemon starts at 0).
    let requests = |m: &str| proxied(m, &[&server]);
    eprintln!(
        "requests before {} at splice {} after restart {}",
        requests(&before),
        requests(&at_splice),
        requests(&after)
    );
    assert_eq!(requests(&after), 0);
    assert_eq!(
        requests(&at_splice),
        1,
        "the first request went through the proxy"
    );
    assert_eq!(requests(&mid), requests(&at_splice), "later ones did not");
    // FIN both ways, no RST, then the collector removes the pair after the grace.
    let closed = wait_until(Duration::from_secs(5), || {
        let e = setup.spliced();
        e.len() == 2 && e.iter().all(|(_, e)| e.seen & SPLICE_SEEN_FIN != 0)
    });
    assert!(closed, "FIN both ways: {:?}", setup.spliced());
    assert!(setup
        .spliced()
        .iter()
        .all(|(_, e)| e.seen & SPLICE_SEEN_RST == 0));
    let collected = wait_until(Duration::from_secs(15), || setup.spliced().is_empty());
    assert!(collected, "entries collected: {:?}", setup.spliced());
    let stats = read_pinned_stats(&setup.root).unwrap();
    assert_eq!(stats[SPLICE_STAT_DROPPED as usize], 0, "{stats:?}");
    if common::fastpath::xdp_on() {
        // Across the kill and the restart, the download was translated at XDP.
        assert!(
            stats[SPLICE_STAT_XDP_REDIRECTED as usize] * 2 > stats[SPLICE_STAT_REDIRECTED as usize],
            "{stats:?}"
        );
    }
    drop(capture);
    let rsts = rsts_in(&setup.topo.lb, &capture_file);
    let lines: Vec<&str> = rsts.lines().filter(|l| l.contains(" IP ")).collect();
    assert!(lines.is_empty(), "RSTs seen on lb: {rsts}");
    let _ = std::fs::remove_file(&capture_file);
    drop(daemon);
    drop(setup.pins);
}

/// Raises this process's descriptor limit (1000 connections and their threads' files).
fn raise_fd_limit() {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: a valid rlimit to fill, then to set.
    unsafe {
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit);
        limit.rlim_cur = limit.rlim_max;
        libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
    }
}

#[test]
fn a_thousand_concurrent_keep_alive_connections_are_spliced_each_on_its_sticky_server() {
    if !common::privileged() {
        return;
    }
    raise_fd_limit();
    const CONNECTIONS: usize = 1000;
    const THREADS: usize = 10;
    let setup = Setup::new("fpt", 235, "60s");
    let lb = setup.topo.lb_addr();
    let _daemon = setup.start();
    let addr = format!("{lb}:8080");
    let (to_main, from_clients) = mpsc::channel::<()>();
    let mut go = Vec::new();
    let mut clients = Vec::new();
    for t in 0..THREADS {
        let (tx, rx) = mpsc::channel::<()>();
        go.push(tx);
        let (ns, addr, to_main) = (
            setup.topo.client.name().to_owned(),
            addr.clone(),
            to_main.clone(),
        );
        clients.push(thread::spawn(move || {
            common::http::in_netns(&ns, move || {
                let mut conns = Vec::new();
                for i in 0..CONNECTIONS / THREADS {
                    let cookie = format!("c{t}x{i}");
                    let mut conn = TcpStream::connect(&addr).expect("connect");
                    conn.set_read_timeout(Some(Duration::from_secs(30)))
                        .unwrap();
                    let mut buf = Vec::new();
                    let (server, _) = get(
                        &mut conn,
                        &mut buf,
                        &format!("/?setcookie={cookie}"),
                        None,
                        None,
                    );
                    conns.push((conn, buf, cookie, server));
                }
                to_main.send(()).unwrap();
                rx.recv().unwrap();
                let mut per_server = std::collections::HashMap::new();
                for round in 0..3 {
                    for (conn, buf, cookie, server) in &mut conns {
                        let path = if round == 1 {
                            "/bytes/20000".to_owned()
                        } else {
                            "/".to_owned()
                        };
                        let (answered, _) = get(conn, buf, &path, Some(cookie), None);
                        assert_eq!(&answered, server, "{cookie} on its sticky server");
                    }
                }
                for (conn, buf, _, server) in conns {
                    *per_server.entry(server).or_insert(0usize) += 1;
                    close_cleanly(conn, &buf);
                }
                per_server
            })
        }));
    }
    for _ in 0..THREADS {
        from_clients
            .recv_timeout(Duration::from_secs(120))
            .expect("first requests");
    }
    let all_spliced = wait_until(Duration::from_secs(60), || {
        setup.spliced().len() == 2 * CONNECTIONS
    });
    let m = metrics(&setup.topo.client, &lb);
    assert!(
        all_spliced,
        "{} SPLICE entries; {}",
        setup.spliced().len(),
        m.lines()
            .filter(|l| l.starts_with("stickylb_fastpath"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    for tx in &go {
        tx.send(()).unwrap();
    }
    let mut per_server = std::collections::HashMap::new();
    for client in clients {
        for (server, n) in client.join().expect("client thread") {
            *per_server.entry(server).or_insert(0) += n;
        }
    }
    eprintln!("connections per server: {per_server:?}");
    assert_eq!(per_server.values().sum::<usize>(), CONNECTIONS);
    assert_eq!(per_server.len(), 2, "round robin used both servers");
    // Only the first request of each connection went through the proxy.
    let m = metrics(&setup.topo.client, &lb);
    let requests = proxied(&m, &["s1", "s2"]);
    assert_eq!(requests, CONNECTIONS as u64, "proxy requests");
    let entries = setup.spliced();
    let packets: u64 = entries.iter().map(|(_, e)| e.packets).sum();
    assert!(
        packets >= (CONNECTIONS * 6) as u64,
        "{packets} packets through the program"
    );
    let fin = wait_until(Duration::from_secs(10), || {
        setup
            .spliced()
            .iter()
            .all(|(_, e)| e.seen & SPLICE_SEEN_FIN != 0)
    });
    assert!(fin, "FIN both ways on every connection");
    assert!(setup
        .spliced()
        .iter()
        .all(|(_, e)| e.seen & SPLICE_SEEN_RST == 0));
    let stats = read_pinned_stats(&setup.root).unwrap();
    assert_eq!(stats[SPLICE_STAT_DROPPED as usize], 0, "{stats:?}");
}

#[test]
fn legs_with_different_options_stay_in_the_proxy_and_are_counted() {
    if !common::privileged() {
        return;
    }
    let setup = Setup::new("fpo", 236, "60s");
    setup
        .topo
        .client
        .exec(&["sysctl", "-qw", "net.ipv4.tcp_timestamps=0"]);
    let lb = setup.topo.lb_addr();
    let daemon = setup.start();
    let addr = format!("{lb}:8080");
    let requests = 6;
    let server = common::http::in_netns(setup.topo.client.name(), move || {
        let mut conn = connect(&addr);
        let mut buf = Vec::new();
        let (first, _) = get(&mut conn, &mut buf, "/?setcookie=fpo1", None, None);
        for i in 1..requests {
            // Give the proxy time to try (and refuse) the hand-off.
            thread::sleep(Duration::from_millis(100));
            let path = match i {
                2 => "/bytes/3000000",
                3 => "/chunked/2000000",
                _ => "/",
            };
            let (server, _) = get(&mut conn, &mut buf, path, Some("fpo1"), None);
            assert_eq!(server, first);
        }
        (first, conn, buf)
    });
    let (server, mut conn, buf) = server;
    assert!(buf.is_empty());
    let m = metrics(&setup.topo.client, &lb);
    let fast: Vec<&str> = m
        .lines()
        .filter(|l| l.starts_with("stickylb_fastpath"))
        .collect();
    eprintln!("{}", fast.join("\n"));
    assert_eq!(
        metric(
            &m,
            "stickylb_fastpath_handoffs_total{outcome=\"refused_options\"}"
        ),
        1,
        "counted once"
    );
    assert_eq!(
        metric(&m, "stickylb_fastpath_handoffs_total{outcome=\"spliced\"}"),
        0
    );
    assert_eq!(
        metric(&m, "stickylb_fastpath_handoffs_total{outcome=\"unframed\"}"),
        0,
        "the chunked response was followed, not tunnelled"
    );
    assert_eq!(
        proxied(&m, &[&server]),
        requests as u64,
        "every request went through the proxy"
    );
    assert!(setup.spliced().is_empty());
    // SIGTERM: the daemon closes the idle relayed connection cleanly (a FIN, not an RST) and
    // exits within the drain timeout.
    let output = daemon.stop_with(libc::SIGTERM);
    assert!(output.contains("stopped"), "{output}");
    let mut rest = Vec::new();
    conn.read_to_end(&mut rest)
        .expect("a clean close of the relayed connection");
    assert!(rest.is_empty());
    assert!(
        !output.contains("drain timeout"),
        "the relayed connection did not hold the drain: {output}"
    );
}

#[test]
fn upgrade_and_stop_never_interrupt_spliced_connections() {
    if !common::privileged() {
        return;
    }
    let setup = Setup::new("fpu", 237, "60s");
    let lb = setup.topo.lb_addr();
    let capture_file = std::env::temp_dir().join(format!("fpu-{}.pcap", std::process::id()));
    let capture = capture_rsts(&setup.topo.lb, &capture_file);
    let mut old = setup.start();

    // Each client connection: the first request through the proxy, then `step` more requests
    // (and a 10 MB download) each time the main thread says so, on its sticky server.
    let connection = |cookie: &'static str| {
        scripted_client(
            &setup,
            move |mut conn, to_main: mpsc::Sender<String>, from_main: mpsc::Receiver<bool>| {
                let mut buf = Vec::new();
                let (first, _) = get(
                    &mut conn,
                    &mut buf,
                    &format!("/?setcookie={cookie}"),
                    None,
                    None,
                );
                to_main.send(first.clone()).unwrap();
                while from_main.recv().unwrap() {
                    for path in ["/", "/bytes/10000000", "/"] {
                        let (server, _) = get(&mut conn, &mut buf, path, Some(cookie), None);
                        assert_eq!(server, first, "{cookie}: {path} on its sticky server");
                    }
                    to_main.send(first.clone()).unwrap();
                }
                close_cleanly(conn, &buf);
            },
        )
    };
    let (a, to_a, from_a) = connection("fpuA");
    from_a.recv_timeout(Duration::from_secs(20)).unwrap();
    assert!(wait_until(Duration::from_secs(10), || setup
        .spliced()
        .len()
        == 2));

    // Upgrade: a new process takes the sockets and adopts the pins; the old one exits.
    let mut upgrade = Proc::spawn(
        "reload --upgrade",
        setup.topo.lb.name(),
        &[
            common::stickylb_bin(),
            "--log",
            "info",
            "reload",
            "--upgrade",
            "--config",
            setup.config.to_str().unwrap(),
        ],
    );
    let upgraded = wait_until(Duration::from_secs(60), || {
        matches!(upgrade.child.try_wait(), Ok(Some(_)))
    });
    assert!(upgraded, "{}", upgrade.output());
    assert!(
        upgrade.child.try_wait().unwrap().unwrap().success(),
        "{}",
        upgrade.output()
    );
    let old_exited = wait_until(Duration::from_secs(30), || {
        matches!(old.child.try_wait(), Ok(Some(_)))
    });
    assert!(old_exited, "the old daemon exits: {}", old.output());
    upgrade.wait_for_output("fast path loaded", Duration::from_secs(5));
    assert!(
        upgrade.output().contains("adopted=2"),
        "{}",
        upgrade.output()
    );

    // The spliced connection goes on; a new one is spliced by the new daemon.
    to_a.send(true).unwrap();
    from_a
        .recv_timeout(Duration::from_secs(60))
        .expect("A after the upgrade");
    let (b, to_b, from_b) = connection("fpuB");
    from_b.recv_timeout(Duration::from_secs(20)).unwrap();
    assert!(
        wait_until(Duration::from_secs(10), || setup.spliced().len() == 4),
        "{}",
        upgrade.output()
    );
    let m = metrics(&setup.topo.client, &lb);
    let requests = proxied(&m, &["s1", "s2"]);
    assert_eq!(requests, 1, "the new daemon proxied B's first request only");

    // SIGTERM: the daemon drains and exits; both spliced connections go on without it.
    let output = upgrade.stop_with(libc::SIGTERM);
    assert!(output.contains("stopped"), "{output}");
    to_a.send(true).unwrap();
    to_b.send(true).unwrap();
    from_a
        .recv_timeout(Duration::from_secs(60))
        .expect("A after the stop");
    from_b
        .recv_timeout(Duration::from_secs(60))
        .expect("B after the stop");
    to_a.send(false).unwrap();
    to_b.send(false).unwrap();
    a.join().expect("client A");
    b.join().expect("client B");
    let fin = wait_until(Duration::from_secs(10), || {
        let e = setup.spliced();
        e.len() == 4 && e.iter().all(|(_, e)| e.seen & SPLICE_SEEN_FIN != 0)
    });
    assert!(fin, "FIN both ways on both: {:?}", setup.spliced());
    let stats = read_pinned_stats(&setup.root).unwrap();
    assert_eq!(stats[SPLICE_STAT_DROPPED as usize], 0, "{stats:?}");
    if common::fastpath::xdp_on() {
        // Across the kill and the restart, the download was translated at XDP.
        assert!(
            stats[SPLICE_STAT_XDP_REDIRECTED as usize] * 2 > stats[SPLICE_STAT_REDIRECTED as usize],
            "{stats:?}"
        );
    }
    drop(capture);
    let rsts = rsts_in(&setup.topo.lb, &capture_file);
    let lines: Vec<&str> = rsts.lines().filter(|l| l.contains(" IP ")).collect();
    assert!(lines.is_empty(), "RSTs seen on lb: {rsts}");
    let _ = std::fs::remove_file(&capture_file);
    drop(old);
}

/// The request head of a tunnel, its answer's head, and the server's greeting (`NAME\n`).
fn open_tunnel(conn: &mut TcpStream, request: &str, status: &str) -> String {
    conn.write_all(request.as_bytes()).expect("tunnel request");
    let mut buf = Vec::new();
    let head = read_head(conn, &mut buf);
    assert!(head.starts_with(status), "{head}");
    let server = header(&head, "x-served-by").expect("x-served-by");
    while !buf.contains(&b'\n') {
        let mut chunk = [0u8; 256];
        let n = conn.read(&mut chunk).expect("greeting");
        assert!(n > 0, "closed before the greeting");
        buf.extend_from_slice(&chunk[..n]);
    }
    assert_eq!(
        buf,
        format!("{server}\n").as_bytes(),
        "greeting, nothing more"
    );
    server
}

/// Sends `len` bytes of the backend's pattern through an echoing tunnel while reading them
/// back; the echo's sha256 must match.
fn echo_through(conn: &TcpStream, len: u64) {
    let mut writer = conn.try_clone().unwrap();
    let sender = thread::spawn(move || {
        let block: Vec<u8> = (0..65536).map(|i| (i % 251) as u8).collect();
        let mut left = len;
        while left > 0 {
            let n = left.min(65536) as usize;
            writer.write_all(&block[..n]).expect("tunnel write");
            left -= n as u64;
        }
    });
    let mut reader = conn.try_clone().unwrap();
    let (mut hash, mut got, mut chunk) = (Sha256::new(), 0u64, vec![0u8; 65536]);
    while got < len {
        let want = ((len - got) as usize).min(chunk.len());
        let n = reader.read(&mut chunk[..want]).expect("tunnel read");
        assert_ne!(n, 0, "tunnel closed at {got} of {len}");
        hash.update(&chunk[..n]);
        got += n as u64;
    }
    sender.join().unwrap();
    let digest: [u8; 32] = hash.finalize().into();
    assert_eq!(digest, backend_body_sha256(len), "echo of {len} bytes");
}

#[test]
fn websocket_and_connect_tunnels_are_spliced_right_after_the_response_head() {
    if !common::privileged() {
        return;
    }
    let setup = Setup::new("fpw", 238, "2s");
    let lb = setup.topo.lb_addr();
    let _daemon = setup.start();
    let addr = format!("{lb}:8080");
    let ns = setup.topo.client.name().to_owned();
    let (conns, servers) = common::http::in_netns(&ns, move || {
        let mut ws = connect(&addr);
        let ws_server = open_tunnel(
            &mut ws,
            "GET /chat HTTP/1.1\r\nHost: t\r\nCookie: JSESSIONID=fpwA\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n",
            "HTTP/1.1 101",
        );
        let mut tunnel = connect(&addr);
        let connect_server = open_tunnel(
            &mut tunnel,
            "CONNECT db:5432 HTTP/1.1\r\nHost: db:5432\r\nCookie: JSESSIONID=fpwB\r\n\r\n",
            "HTTP/1.1 200",
        );
        ((ws, tunnel), (ws_server, connect_server))
    });
    // Both tunnels are in the kernel before anything went through them.
    assert!(
        wait_until(Duration::from_secs(10), || setup.spliced().len() == 4),
        "spliced entries: {:?}",
        setup.spliced().len()
    );
    let before = metrics(&setup.topo.client, &lb);
    assert_eq!(
        metric(
            &before,
            "stickylb_fastpath_handoffs_total{outcome=\"spliced\"}"
        ),
        2,
        "{before}"
    );
    // bpftool decodes the pinned flow map from its BTF: field names and values.
    let flows = setup.root.join(lb_common::SPLICE_FLOWS_MAP);
    // From the host: `ip netns exec` would mount another /sys, without our bpffs.
    let out = std::process::Command::new("bpftool")
        .args(["map", "dump", "pinned"])
        .arg(&flows)
        .output()
        .expect("bpftool");
    let dump = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "bpftool map dump: {dump}");
    // Each tunnel: the server's direction SPLICE, the client's SPLICE or still ARMED (its next
    // packet completes the hand-off).
    let count = |state: u32| dump.matches(&format!("\"state\": {state},")).count();
    assert_eq!(
        count(SPLICE_STATE_SPLICE) + count(SPLICE_STATE_ARMED),
        4,
        "{dump}"
    );
    assert!(count(SPLICE_STATE_SPLICE) >= 2, "{dump}");
    for field in [
        "\"new_saddr\"",
        "\"seq_delta\"",
        "\"out_ifindex\"",
        "\"sport\"",
    ] {
        assert!(dump.contains(field), "{field} in {dump}");
    }
    let (ws, connect) = conns;
    echo_through(&ws, 20_000_000);
    echo_through(&connect, 1_000_000);
    let after = metrics(&setup.topo.client, &lb);
    assert_eq!(
        proxied(&after, &["s1", "s2"]),
        2,
        "the proxy saw the two tunnel requests only"
    );
    let bytes: u64 = setup.spliced().iter().map(|(_, e)| e.bytes).sum();
    assert!(
        bytes >= 2 * 21_000_000,
        "the map carried both directions of both echoes: {bytes} bytes"
    );
    println!(
        "tunnels on {} (WebSocket) and {} (CONNECT): {bytes} bytes through the kernel",
        servers.0, servers.1
    );
    for conn in [ws, connect] {
        close_cleanly(conn, &[]);
    }
    let closed = wait_until(Duration::from_secs(10), || {
        let flows = open_pinned_flows(&setup.root)
            .expect("flows")
            .entries()
            .expect("entries");
        flows.is_empty()
            || flows
                .iter()
                .all(|(_, e)| e.seen & SPLICE_SEEN_FIN != 0 && e.seen & SPLICE_SEEN_RST == 0)
    });
    assert!(closed, "FIN both ways, no RST, on both tunnels");
    assert_eq!(
        read_pinned_stats(&setup.root).unwrap()[SPLICE_STAT_DROPPED as usize],
        0
    );
}

/// (segments received, RSTs sent) by the TCP stack of `ns` (`/proc/net/snmp`).
fn stack_counters(ns: &NetNs) -> (u64, u64) {
    let text = ns.try_exec(&["cat", "/proc/net/snmp"]).1;
    let mut tcp = text.lines().filter(|l| l.starts_with("Tcp:"));
    let names: Vec<&str> = tcp.next().expect("Tcp names").split_whitespace().collect();
    let values: Vec<&str> = tcp.next().expect("Tcp values").split_whitespace().collect();
    let value = |name: &str| -> u64 {
        let i = names.iter().position(|n| *n == name).expect(name);
        values[i].parse().expect(name)
    };
    (value("InSegs"), value("OutRsts"))
}

#[test]
fn no_packet_of_a_live_spliced_flow_reaches_the_load_balancers_stack() {
    if !common::privileged() {
        return;
    }
    // No health checks and no monitor scrapes while counting: the flow is the only TCP traffic
    // toward the lb namespace, so its stack must receive no segment at all.
    let setup = Setup::with_health("fpm", 239, "2s", "{ enabled = false }");
    let daemon = setup.start();
    let (client, to_client, from_client) = scripted_client(
        &setup,
        move |mut conn, to_main: mpsc::Sender<String>, from_main: mpsc::Receiver<()>| {
            let mut buf = Vec::new();
            let (first, _) = get(&mut conn, &mut buf, "/?setcookie=fpm1", None, None);
            to_main.send(first.clone()).unwrap();
            let mut phase = |requests: usize, download: bool, done: &str| {
                from_main.recv().unwrap();
                for _ in 0..requests {
                    let (server, _) = get(&mut conn, &mut buf, "/", Some("fpm1"), None);
                    assert_eq!(server, first);
                }
                if download {
                    get(&mut conn, &mut buf, "/bytes/20000000", Some("fpm1"), None);
                }
                to_main.send(done.to_owned()).unwrap();
            };
            phase(30, true, "with the daemon");
            phase(10, false, "without a daemon");
            phase(10, false, "with a new daemon");
            close_cleanly(conn, &buf);
            to_main.send("closed".to_owned()).unwrap();
        },
    );
    let wait = || from_client.recv_timeout(Duration::from_secs(60)).unwrap();
    wait();
    assert!(wait_until(Duration::from_secs(10), || setup
        .spliced()
        .len()
        == 2));
    let base = stack_counters(&setup.topo.lb);
    to_client.send(()).unwrap();
    assert_eq!(wait(), "with the daemon");
    assert_eq!(
        stack_counters(&setup.topo.lb),
        base,
        "(segments in, RSTs out) of the lb's stack: 30 requests and 20 MB with the daemon"
    );
    let output = daemon.stop_with(libc::SIGKILL);
    // The daemon's own connections close with it (the server connection of the first request
    // went back to the pool, and the kernel closes it now): let that exchange end first, to
    // the server's FIN, however late it comes (CI once counted it in the last phase).
    assert!(
        wait_until(Duration::from_secs(10), || closing_sockets(&setup.topo.lb)
            .is_empty()),
        "the killed daemon's connections did not finish closing: {}",
        closing_sockets(&setup.topo.lb)
    );
    let base = stack_counters(&setup.topo.lb);
    // No process holds a socket for the flow now: a segment reaching the stack would be
    // answered with an RST.
    to_client.send(()).unwrap();
    assert_eq!(wait(), "without a daemon", "{output}");
    let alone = stack_counters(&setup.topo.lb);
    assert_eq!(
        alone, base,
        "(segments in, RSTs out) of the lb's stack: 10 requests without a daemon"
    );
    let daemon = setup.start();
    let base = stack_counters(&setup.topo.lb);
    to_client.send(()).unwrap();
    assert_eq!(wait(), "with a new daemon");
    assert_eq!(wait(), "closed");
    // FIN both ways, then the collector removes the pair after the 2 s grace.
    let collected = wait_until(Duration::from_secs(15), || {
        open_pinned_flows(&setup.root)
            .expect("flows")
            .entries()
            .expect("entries")
            .is_empty()
    });
    assert!(collected, "{}", daemon.output());
    thread::sleep(Duration::from_millis(500));
    let end = stack_counters(&setup.topo.lb);
    assert_eq!(
        end, base,
        "(segments in, RSTs out): 10 requests, FIN both ways and the collection"
    );
    client.join().unwrap();
    println!("lb stack counters unchanged while the flow lived: {end:?}");
}

/// The TCP sockets of `ns` still closing (a FIN sent or received, the exchange not over), one
/// line each: segments of their close may still reach the stack.
fn closing_sockets(ns: &NetNs) -> String {
    ns.try_exec(&[
        "ss",
        "-Htan",
        "state",
        "fin-wait-1",
        "state",
        "fin-wait-2",
        "state",
        "closing",
        "state",
        "last-ack",
        "state",
        "close-wait",
    ])
    .1
    .trim()
    .to_owned()
}

/// The interface of `ns` that holds `addr`.
fn device_with(ns: &NetNs, addr: &str) -> String {
    let (_, text) = ns.try_exec(&["ip", "-o", "-4", "addr", "show"]);
    text.lines()
        .find(|l| l.contains(&format!(" {addr}/")))
        .and_then(|l| l.split_whitespace().nth(1))
        .unwrap_or_else(|| panic!("no interface with {addr}: {text}"))
        .to_owned()
}

#[test]
fn a_client_behind_a_smaller_mtu_stays_in_the_proxy_and_is_counted() {
    if !common::privileged() {
        return;
    }
    let setup = Setup::new("fpz", 242, "60s");
    let topo = &setup.topo;
    // The client's link has an MTU of 1400, the servers' 1500: spliced, the server's 1448-byte
    // segments would not fit the client's link.
    for (ns, addr) in [
        (&topo.client, topo.client_addr()),
        (&topo.lb, topo.lb_addr()),
    ] {
        let device = device_with(ns, &addr);
        ns.exec(&["ip", "link", "set", "dev", &device, "mtu", "1400"]);
    }
    let lb = topo.lb_addr();
    let daemon = setup.start();
    let addr = format!("{lb}:8080");
    let server = common::http::in_netns(topo.client.name(), move || {
        let mut conn = connect(&addr);
        let mut buf = Vec::new();
        let (first, _) = get(&mut conn, &mut buf, "/?setcookie=fpz1", None, None);
        for path in ["/bytes/3000000", "/", "/"] {
            // Time for the proxy to try (and refuse) the hand-off.
            thread::sleep(Duration::from_millis(100));
            let (server, _) = get(&mut conn, &mut buf, path, Some("fpz1"), None);
            assert_eq!(server, first);
        }
        close_cleanly(conn, &buf);
        first
    });
    let m = metrics(&topo.client, &lb);
    let outcome = |o: &str| {
        metric(
            &m,
            &format!("stickylb_fastpath_handoffs_total{{outcome=\"{o}\"}}"),
        )
    };
    assert_eq!(
        (outcome("refused_options"), outcome("spliced")),
        (1, 0),
        "{m}"
    );
    let requests = proxied(&m, &[&server]);
    assert_eq!(requests, 4, "every request went through the proxy");
    let output = daemon.stop_with(libc::SIGTERM);
    assert!(
        output.contains("would exceed the client's MSS"),
        "the refusal says why: {output}"
    );
}
