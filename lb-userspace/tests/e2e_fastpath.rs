//! The kernel fast path (`docs/FASTPATH.md`): the splice program passes the verifier, attaches with TCX
//! and pins; a keep-alive connection relayed in userspace is handed to the kernel with the
//! armed hand-off and keeps working without the relay.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test code: a failed setup step must fail the test loudly"
)]

mod common;

use std::{
    io::{Read as _, Write as _},
    net::{Ipv4Addr, SocketAddrV4, TcpListener, TcpStream},
    path::Path,
    sync::{mpsc, mpsc::Receiver},
    thread,
    time::Duration,
};

use common::{
    netns::{Exec as _, NetNs},
    PinDir, Topology,
};
use lb_common::{
    SPLICE_FLOWS_MAP, SPLICE_SEEN_FIN, SPLICE_SEEN_RST, SPLICE_STATE_SPLICE, SPLICE_STATS_MAP,
    SPLICE_STAT_DROPPED, SPLICE_STAT_REDIRECTED, SPLICE_STAT_XDP_REDIRECTED,
};
use sha2::{Digest as _, Sha256};
use stickylb::{
    dataplane::pin_root,
    fastpath::{
        interfaces::transmits_xdp_redirects,
        program::{open_pinned_flows, read_pinned_stats, Attachment, XdpAttachment},
        repair,
        splice::{Observed, Progress},
        FastPath,
    },
};

/// Runs `f` on a thread that joined network namespace `ns` (network namespaces are per thread).
fn in_netns<T: Send + 'static>(ns: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    spawn_in_netns(ns, f).join().expect("netns thread panicked")
}

fn spawn_in_netns<T: Send + 'static>(
    ns: &str,
    f: impl FnOnce() -> T + Send + 'static,
) -> thread::JoinHandle<T> {
    let ns = ns.to_owned();
    thread::spawn(move || {
        netns_kit::enter(&ns).unwrap_or_else(|e| panic!("{ns}: {e}"));
        f()
    })
}

/// The interface of namespace `ns` that carries `addr`.
fn interface_with(ns: &NetNs, addr: &str) -> String {
    let out = ns.exec(&["ip", "-o", "-4", "addr", "show"]);
    out.lines()
        .find(|line| line.contains(&format!(" {addr}/")))
        .and_then(|line| line.split_whitespace().nth(1))
        .unwrap_or_else(|| panic!("no interface with {addr} in {out}"))
        .to_owned()
}

/// From `ip link` (`<ifindex>: <name>...`): commands join only the network namespace, so
/// /sys/class/net would list the host's interfaces, not the namespace's.
fn ifindex(ns: &NetNs, name: &str) -> u32 {
    let out = ns.exec(&["ip", "-o", "link", "show", "dev", name]);
    out.split(':')
        .next()
        .unwrap_or("")
        .trim()
        .parse()
        .expect("ifindex")
}

#[test]
fn splice_program_passes_the_verifier_attaches_and_is_adopted() {
    if !common::privileged() {
        return;
    }
    let pins = PinDir::new("fastpath-load");
    let root = pin_root(&pins.0, "fp");
    let topo = Topology::new("fpv", 230);
    let lb_if = interface_with(&topo.lb, "10.230.1.1");
    let (r, i) = (root.clone(), lb_if.clone());
    let first = in_netns(topo.lb.name(), move || {
        // Both programs through the verifier.
        let mut fastpath = FastPath::load(&r, true).expect("load (verifier)");
        let xdp = fastpath.attach_xdp(&i).expect("attach XDP");
        (fastpath.attach(&i).expect("attach"), xdp)
    });
    assert_eq!(first, (Attachment::Created, XdpAttachment::Native));
    for name in [
        SPLICE_FLOWS_MAP,
        SPLICE_STATS_MAP,
        &format!("splice_ingress_{lb_if}"),
        &format!("splice_xdp_{lb_if}"),
    ] {
        assert!(root.join(name).exists(), "{name} is not pinned");
    }
    // A second process (here: a second load) adopts the pinned link and replaces the program.
    let (r, i) = (root.clone(), lb_if.clone());
    let second = in_netns(topo.lb.name(), move || {
        let mut fastpath = FastPath::load(&r, common::fastpath::xdp_on()).expect("load again");
        fastpath.attach(&i).expect("attach again")
    });
    assert_eq!(second, Attachment::Replaced);
    // Traffic that matches no entry passes untouched.
    let (ok, out) = topo
        .client
        .try_exec(&["ping", "-c", "1", "-W", "2", &topo.lb_addr()]);
    assert!(ok, "ping through the attached program: {out}");
}

const BIG: usize = 100 * 1024 * 1024;
const SMALL_REQUESTS: usize = 20;

/// Deterministic body bytes: a 1 MiB xorshift block, repeated.
fn pattern_block() -> Vec<u8> {
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    (0..1 << 20)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

fn expected_sha256(block: &[u8], len: usize) -> [u8; 32] {
    let mut hash = Sha256::new();
    let mut left = len;
    while left > 0 {
        let n = left.min(block.len());
        hash.update(&block[..n]);
        left -= n;
    }
    hash.finalize().into()
}

/// Reads up to and including the blank line ending a message head; `buf` keeps what follows.
fn read_head(stream: &mut impl std::io::Read, buf: &mut Vec<u8>) -> Option<Vec<u8>> {
    loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let rest = buf.split_off(i + 4);
            return Some(std::mem::replace(buf, rest));
        }
        let mut chunk = [0u8; 4096];
        let n = stream.read(&mut chunk).ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

fn content_length(head: &[u8]) -> usize {
    String::from_utf8_lossy(head)
        .lines()
        .find_map(|line| {
            let (name, value) = line.split_once(':')?;
            name.eq_ignore_ascii_case("content-length")
                .then(|| value.trim().parse().ok())?
        })
        .unwrap_or(0)
}

/// Backend: `GET /bytes/N` answers N pattern bytes, keep-alive, until the client closes.
/// Returns the number of requests served.
fn backend(listener: TcpListener) -> usize {
    let block = pattern_block();
    let (mut conn, _) = listener.accept().expect("backend accept");
    let mut buf = Vec::new();
    let mut served = 0;
    while let Some(head) = read_head(&mut conn, &mut buf) {
        let text = String::from_utf8_lossy(&head);
        let len: usize = text
            .split_whitespace()
            .nth(1)
            .and_then(|path| path.strip_prefix("/bytes/"))
            .and_then(|n| n.parse().ok())
            .expect("request path /bytes/N");
        write!(conn, "HTTP/1.1 200 OK\r\nContent-Length: {len}\r\n\r\n").expect("head");
        let mut left = len;
        while left > 0 {
            let n = left.min(block.len());
            conn.write_all(&block[..n]).expect("body");
            left -= n;
        }
        served += 1;
    }
    served
}

/// What the relay did.
struct Relayed {
    /// Requests relayed in userspace.
    requests: usize,
    /// The committed entries, if the connection was spliced.
    translation: Option<stickylb::fastpath::translate::Translation>,
    /// Why each attempt that did not splice gave up.
    refusals: Vec<String>,
}

/// The hand-written relay of the test: relays requests and responses in userspace and, with
/// each small response, tries the hand-off as the proxy does: arm, write the response, wait
/// until the client acknowledged it (the program completes the hand-off), close both sockets
/// silently. Returns once spliced, or when the client closes. Reports each attempt's verdict on
/// `verdict`.
fn relay(
    root: &Path,
    (client_if, server_if): (&str, &str),
    (client_ifindex, server_ifindex): (u32, u32),
    listener: TcpListener,
    backend: SocketAddrV4,
    verdict: mpsc::Sender<bool>,
) -> Relayed {
    let xdp = common::fastpath::xdp_on();
    let mut fastpath = FastPath::load(root, xdp).expect("load");
    fastpath.attach(client_if).expect("attach client side");
    fastpath.attach(server_if).expect("attach server side");
    if xdp {
        for (name, index) in [(client_if, client_ifindex), (server_if, server_ifindex)] {
            let attached = fastpath.attach_xdp(name).expect("attach XDP");
            assert_eq!(attached, XdpAttachment::Native, "{name}");
            if transmits_xdp_redirects(index).expect("XDP features") {
                fastpath
                    .allow_xdp_redirect(index)
                    .expect("XDP redirect target");
            }
        }
    }
    let flows = fastpath.flows().expect("flows");
    let (client, _) = listener.accept().expect("accept");
    let server = TcpStream::connect(backend).expect("connect backend");
    let observed = Observed::start(&flows, client, server).expect("observe");
    // The client's first packets may have passed before its entry was there: make it
    // acknowledge once more (a window probe), as the proxy does, so its timestamp is seen.
    repair::probe(&observed.client).expect("window probe");
    let (client_key, _) = observed.keys();
    let seen = common::wait_until(
        Duration::from_secs(2),
        || matches!(flows.get(&client_key), Ok(Some(entry)) if entry.last_tsval != 0),
    );
    // Without timestamps (a test's client has them off) there is nothing to see.
    eprintln!("client timestamp seen: {seen}");
    let mut client_buf = Vec::new();
    let mut relayed = Relayed {
        requests: 0,
        translation: None,
        refusals: Vec::new(),
    };
    while let Some(head) = read_head(&mut &observed.client, &mut client_buf) {
        (&observed.server)
            .write_all(&head)
            .expect("forward request");
        relayed.requests += 1;
        let mut response = Vec::new();
        let head = read_head(&mut &observed.server, &mut response).expect("response head");
        let len = content_length(&head);
        let mut chunk = vec![0u8; 256 * 1024];
        while response.len() < len {
            let n = (&observed.server).read(&mut chunk).expect("body");
            assert_ne!(n, 0, "backend closed mid-body");
            response.extend_from_slice(&chunk[..n]);
        }
        let answer = [head, response].concat();
        if !client_buf.is_empty() || answer.len() > 16 * 1024 {
            relayed.refusals.push("pipelined or large".to_owned());
            (&observed.client).write_all(&answer).expect("forward");
            continue;
        }
        let pending = u32::try_from(answer.len()).expect("small");
        let armed = observed
            .arm(&flows, client_ifindex, server_ifindex, pending)
            .expect("arm");
        (&observed.client).write_all(&answer).expect("forward");
        let translation = match armed {
            Ok(translation) => translation,
            Err(why) => {
                eprintln!("not armed after request {}: {why}", relayed.requests);
                relayed.refusals.push(why.to_string());
                let _ = verdict.send(false);
                continue;
            }
        };
        let progress = loop {
            thread::sleep(Duration::from_millis(1));
            match observed.progress(&flows, true).expect("progress") {
                Progress::Waiting => continue,
                other => break other,
            }
        };
        if progress == Progress::Broken {
            relayed.refusals.push("broken".to_owned());
            observed.disarm(&flows).expect("disarm");
            let _ = verdict.send(false);
            continue;
        }
        observed.close_silently().expect("close");
        let _ = verdict.send(true);
        relayed.translation = Some(translation);
        return relayed;
    }
    // The client closed: close the server side too, and forget the entries.
    let (_client, server) = observed.forget(&flows).expect("forget");
    let _ = server.shutdown(std::net::Shutdown::Write);
    relayed
}

/// Client: one request through the relay; then (after the relay's first verdict, when `wait`
/// is set, else at once) 20 small requests and a 100 MB download on the same connection, all
/// checked by sha256; then a clean close. Returns the number of responses verified.
fn client(lb: SocketAddrV4, verdict: Receiver<bool>, wait: bool) -> usize {
    let block = pattern_block();
    let mut conn = TcpStream::connect(lb).expect("connect lb");
    let mut buf = Vec::new();
    let get = |conn: &mut TcpStream, buf: &mut Vec<u8>, len: usize| {
        let request = format!("GET /bytes/{len} HTTP/1.1\r\nHost: t\r\n\r\n");
        conn.write_all(request.as_bytes()).expect("request");
        let head = read_head(conn, buf).expect("response head");
        assert_eq!(content_length(&head), len);
        let mut hash = Sha256::new();
        let mut left = len;
        let take = buf.len().min(left);
        hash.update(&buf[..take]);
        buf.drain(..take);
        left -= take;
        let mut chunk = vec![0u8; 256 * 1024];
        while left > 0 {
            let n = conn.read(&mut chunk[..left.min(256 * 1024)]).expect("body");
            assert_ne!(n, 0, "connection closed mid-body with {left} bytes left");
            hash.update(&chunk[..n]);
            left -= n;
        }
        let got: [u8; 32] = hash.finalize().into();
        assert_eq!(got, expected_sha256(&block, len), "sha256 of /bytes/{len}");
    };
    get(&mut conn, &mut buf, 100);
    if wait {
        verdict
            .recv_timeout(Duration::from_secs(10))
            .expect("the relay's first verdict");
    }
    for i in 0..SMALL_REQUESTS {
        get(&mut conn, &mut buf, 1000 + i);
    }
    get(&mut conn, &mut buf, BIG);
    get(&mut conn, &mut buf, 10);
    conn.shutdown(std::net::Shutdown::Write).expect("FIN");
    let mut rest = Vec::new();
    conn.read_to_end(&mut rest)
        .expect("the server's FIN, not an RST");
    assert!(rest.is_empty() && buf.is_empty());
    1 + SMALL_REQUESTS + 2
}

/// What a scenario saw.
struct Run {
    relayed: Relayed,
    verified: usize,
    served: usize,
    topo: Topology,
    root: std::path::PathBuf,
    _pins: PinDir,
}

/// client -> relay on lb -> backend on subnet 10.<net>.x.x; `client_setup` runs in the client
/// namespace first (e.g. a sysctl).
fn run_scenario(tag: &str, net: u8, wait_for_verdict: bool, client_setup: &[&str]) -> Run {
    let pins = PinDir::new(&format!("fastpath-{tag}"));
    let root = pin_root(&pins.0, "fp");
    let topo = Topology::new(tag, net);
    if !client_setup.is_empty() {
        topo.client.exec(client_setup);
    }
    if common::fastpath::xdp_on() {
        common::fastpath::enable_gro(&topo.client, netns_kit::Routed::CLIENT_IF);
        common::fastpath::enable_gro(&topo.backends, netns_kit::Routed::BACKENDS_IF);
    }
    let client_if = interface_with(&topo.lb, &format!("10.{net}.1.1"));
    let server_if = interface_with(&topo.lb, &format!("10.{net}.2.1"));
    let ifindexes = (ifindex(&topo.lb, &client_if), ifindex(&topo.lb, &server_if));
    let backend_addr = SocketAddrV4::new(Ipv4Addr::new(10, net, 2, 2), 8000);
    let lb_addr = SocketAddrV4::new(Ipv4Addr::new(10, net, 1, 1), 8080);

    let backend_listener = in_netns(topo.backends.name(), move || {
        TcpListener::bind(backend_addr).expect("backend bind")
    });
    let backend = spawn_in_netns(topo.backends.name(), move || backend(backend_listener));
    let lb_listener = in_netns(topo.lb.name(), move || {
        TcpListener::bind(lb_addr).expect("lb bind")
    });
    let (verdict_tx, verdict_rx) = mpsc::channel();
    let relay_root = root.clone();
    let relay = spawn_in_netns(topo.lb.name(), move || {
        relay(
            &relay_root,
            (&client_if, &server_if),
            ifindexes,
            lb_listener,
            backend_addr,
            verdict_tx,
        )
    });
    let client = spawn_in_netns(topo.client.name(), move || {
        client(lb_addr, verdict_rx, wait_for_verdict)
    });
    let relayed = relay.join().expect("relay");
    let verified = client.join().expect("client");
    let served = backend.join().expect("backend");
    Run {
        relayed,
        verified,
        served,
        topo,
        root,
        _pins: pins,
    }
}

#[test]
fn keep_alive_connection_is_spliced_and_carries_100_mb() {
    if !common::privileged() {
        return;
    }
    let run = run_scenario("fps", 231, true, &[]);
    assert_eq!(
        run.relayed.requests, 1,
        "only the first request went through userspace"
    );
    assert_eq!(
        run.served, run.verified,
        "every request reached the backend"
    );

    // The kernel carried everything after the first exchange: the map's counters moved, the
    // relay holds no socket (it returned, and dropped the program's loader too: the pinned link
    // keeps the program attached), and both directions saw a FIN, no RST.
    let flows = open_pinned_flows(&run.root).expect("pinned flows");
    let t = run.relayed.translation.expect("spliced");
    let to_server = flows
        .get(&t.client_key)
        .expect("get")
        .expect("client entry");
    let to_client = flows
        .get(&t.server_key)
        .expect("get")
        .expect("server entry");
    eprintln!("client->server {to_server:?}\nserver->client {to_client:?}");
    for entry in [&to_server, &to_client] {
        assert_eq!(entry.state, SPLICE_STATE_SPLICE);
        assert!(entry.packets > 0);
        assert_eq!(
            entry.seen & SPLICE_SEEN_FIN,
            SPLICE_SEEN_FIN,
            "FIN followed"
        );
        assert_eq!(entry.seen & SPLICE_SEEN_RST, 0, "no RST");
    }
    assert!(
        to_client.bytes >= BIG as u64,
        "the download went through the program"
    );
    let stats = read_pinned_stats(&run.root).expect("stats");
    eprintln!("program counters {stats:?}");
    assert_eq!(
        stats[SPLICE_STAT_DROPPED as usize], 0,
        "no packet failed translation"
    );
    assert_eq!(
        stats[SPLICE_STAT_REDIRECTED as usize],
        to_server.packets + to_client.packets
    );
    if common::fastpath::xdp_on() {
        assert!(
            stats[SPLICE_STAT_XDP_REDIRECTED as usize] > 0,
            "packets were translated at XDP"
        );
    }
    let sockets = run
        .topo
        .lb
        .exec(&["ss", "-tanH", "sport", "= :8080", "or", "dport", "= :8000"]);
    assert!(
        !sockets.contains("ESTAB"),
        "the load balancer holds no connection of the flow: {sockets}"
    );
}

#[test]
fn requests_racing_the_hand_off_are_never_lost() {
    if !common::privileged() {
        return;
    }
    // The client sends each request as soon as the previous response is in: the hand-off is
    // armed before the response is written, so the next request completes it (and is
    // translated) instead of racing it. Every response must still be right.
    let run = run_scenario("fpr", 232, false, &[]);
    eprintln!(
        "relayed {} requests, spliced: {}, refusals: {:?}",
        run.relayed.requests,
        run.relayed.translation.is_some(),
        run.relayed.refusals
    );
    assert_eq!(
        run.served, run.verified,
        "every request reached the backend once"
    );
    eprintln!(
        "program counters {:?}",
        read_pinned_stats(&run.root).expect("stats")
    );
}

#[test]
fn legs_with_different_options_stay_in_userspace() {
    if !common::privileged() {
        return;
    }
    // The client does not do TCP timestamps, the server does: not translatable, so the relay
    // keeps the connection (and every request still works).
    let run = run_scenario(
        "fpm",
        233,
        true,
        &["sysctl", "-qw", "net.ipv4.tcp_timestamps=0"],
    );
    assert!(run.relayed.translation.is_none());
    assert_eq!(
        run.relayed.requests, run.verified,
        "all relayed in userspace"
    );
    assert_eq!(run.served, run.verified);
    // Attempts that got as far as comparing the legs refused them; others met the next request
    // already unread, or the client's FIN.
    assert!(
        run.relayed
            .refusals
            .iter()
            .any(|why| why.contains("different options")),
        "{:?}",
        run.relayed.refusals
    );
}
