//! End to end, in network namespaces (client, lb, backends): the shield. A denied client
//! address cannot connect while another address of the same host can, `bpftool` shows the
//! pinned entry decoded, the list survives a daemon stop and start, a start with the shield off
//! detaches it, an upgrade keeps it applied, the list can be filled before any start, and an
//! IPv6 source is denied by its prefix. A SYN flood (hping3) from one address is limited to the
//! burst and rate while another address is served and an established keep-alive connection from
//! the flooding address keeps working; a reload changes the limit in place; a spliced download
//! passes the shield intact. Completed connections give their SYN back (the refund): a source
//! opening connections far beyond the rate is never limited, while a flood from another address
//! is; SYNs and connections to a port that is no frontend's are neither limited nor refunded.
//! A flood from spoofed sources, each within the limit, takes no bucket, while one source
//! beyond it, sending at the same time, gets one and is limited.
//! `stickylb detach` takes a stopped instance's links out of the kernel (refused while it runs
//! and, without `--force`, while a spliced connection is open) and keeps its maps.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test code: a failed setup step must fail the test loudly"
)]

mod common;

use std::{
    sync::mpsc,
    thread,
    time::{Duration, Instant},
};

use common::{
    netns::Exec as _, privileged, start_daemon, wait_until, write_temp, PinDir, Proc, Topology,
};
use lb_common::{SHIELD_STAT_DROPPED_RATE, SHIELD_STAT_PASSED, SHIELD_STAT_REFUNDED};
use stickylb::shield::{limit, program::read_pinned_stats};

/// A shield in front of one backend; `hook` as `[shield] hook` takes it.
fn config(topo: &Topology, pin: &PinDir, instance: &str, hook: &str) -> String {
    format!(
        r#"
{head}
[[backend]]
name = "web"
stick_cookie = "JSESSIONID"
health_check = {{ path = "/", interval = "200ms", timeout = "500ms", rise = 1, fall = 1 }}
servers = [ {{ name = "be1", addr = "{backend}:8081" }} ]

[shield]
enabled = true
hook = "{hook}"
"#,
        head = common::config_head(instance, pin, topo.lb_addr(), "web"),
        backend = topo.backend_addr(),
    )
}

/// Gives the client host a second address (the same host, another source): returns the first,
/// to deny, and the second.
fn two_client_addrs(topo: &Topology) -> (String, String) {
    let first = topo.client_addr();
    let (net, _) = first.rsplit_once('.').unwrap();
    let second = format!("{net}.3");
    let dev = interface_of(&topo.client, &first);
    topo.client
        .exec(&["ip", "addr", "add", &format!("{second}/24"), "dev", &dev]);
    (first, second)
}

/// The one backend server, answering `Backend 1`.
fn start_backend(topo: &Topology) -> Proc {
    let backend = Proc::spawn(
        "be1",
        topo.backends.name(),
        &[
            common::backend_bin(),
            "--listen",
            &format!("{}:8081=Backend 1", topo.backend_addr()),
        ],
    );
    backend.wait_for_output("ready", Duration::from_secs(10));
    backend
}

/// Whether a request from `source` (an address of the client host) gets an answer.
fn served_from(topo: &Topology, source: &str) -> bool {
    served_at(topo, &format!("http://{}:80/", topo.lb_addr()), source)
}

/// Whether a request for `url` from `source` (an address of the client host) gets an answer.
fn served_at(topo: &Topology, url: &str, source: &str) -> bool {
    let (ok, _) = topo.client.try_exec(&[
        "curl",
        "-s",
        "-o",
        "/dev/null",
        "--max-time",
        "2",
        "-g",
        "--interface",
        source,
        url,
    ]);
    ok
}

fn stickylb(args: &[&str]) -> (bool, String) {
    let out = std::process::Command::new(common::stickylb_bin())
        .args(args)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[test]
fn a_denied_source_is_dropped_and_the_list_survives_a_restart() {
    if !privileged() {
        return;
    }
    let topo = Topology::new("shld", 195);
    let pin = PinDir::new("shld");
    let _backend = start_backend(&topo);
    // At XDP, as asked (`auto` would take TC on a veth): veth has native XDP, and the log says
    // which mode each interface got.
    let cfg = write_temp("shld.toml", &config(&topo, &pin, "lb-shld", "xdp"));
    let cfg = cfg.to_str().unwrap().to_owned();
    let (denied, other) = two_client_addrs(&topo);

    let daemon = start_daemon(topo.lb.name(), std::path::Path::new(&cfg));
    assert!(
        daemon.output().contains("shield attached interface=")
            && daemon.output().contains("mode=native"),
        "{}",
        daemon.output()
    );
    assert!(served_from(&topo, &denied), "before the deny");
    assert!(served_from(&topo, &other), "before the deny");

    let (ok, text) = stickylb(&["deny", "add", &denied, "--config", &cfg]);
    assert!(ok, "{text}");
    assert!(text.contains(&format!("denied {denied}/32")), "{text}");
    assert!(!served_from(&topo, &denied), "the denied source was served");
    assert!(served_from(&topo, &other), "another source was not served");
    // Large segments (GRO on the veth) pass the program too: an upload of a few MB to a
    // listener that reads all of it before it answers (the test backend answers without
    // reading a body, which would race the upload).
    let body = write_temp("shld-body", &"x".repeat(4 << 20));
    let sink = upload_sink(&topo);
    let url = format!("http://{}:9000/", topo.lb_addr());
    let upload = format!("@{}", body.display());
    let (ok, text) = topo.client.try_exec(&[
        "curl",
        "-sS",
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        "--max-time",
        "10",
        "--interface",
        &other,
        "--data-binary",
        &upload,
        &url,
    ]);
    assert!(
        ok && text.starts_with('2'),
        "upload through the shield: {text}"
    );
    assert_eq!(
        sink.join().unwrap(),
        4 << 20,
        "bytes of the upload received"
    );

    let (ok, text) = stickylb(&["deny", "list", "--config", &cfg]);
    assert!(ok, "{text}");
    assert_eq!(text.trim(), format!("{denied}/32"));

    let map = pin.0.join("lb-shld/v1/SHIELD_DENY");
    let out = std::process::Command::new("bpftool")
        .args(["map", "dump", "pinned", map.to_str().unwrap()])
        .output()
        .unwrap();
    let dump = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(dump.contains("\"prefix_len\": 40"), "{dump}");
    // The family byte and the address octets, as bpftool prints byte arrays.
    assert!(dump.contains("\"family\": 0x4"), "{dump}");
    let octets: Vec<String> = denied
        .split('.')
        .map(|o| format!("{:#x}", o.parse::<u8>().unwrap()))
        .collect();
    let addr = format!("\"addr\": [{},0x0", octets.join(","));
    assert!(dump.contains(&addr), "{addr} not in {dump}");

    // Stop, start: the pinned list is adopted and still applied.
    let log = daemon.stop_with(libc::SIGTERM);
    let daemon = start_daemon(topo.lb.name(), std::path::Path::new(&cfg));
    assert!(
        !served_from(&topo, &denied),
        "the deny list was lost across a restart; first run:\n{log}\nsecond:\n{}",
        daemon.output()
    );
    assert!(served_from(&topo, &other));
    // The first run's pinned link was adopted, not a second one attached.
    assert!(
        daemon.output().contains("mode=adopted"),
        "{}",
        daemon.output()
    );

    let (ok, text) = stickylb(&["deny", "del", &denied, "--config", &cfg]);
    assert!(ok, "{text}");
    assert!(served_from(&topo, &denied), "served again after del");

    // With the shield turned off, a restart detaches the previous run's program: a source on
    // the (kept) list is served.
    let (ok, text) = stickylb(&["deny", "add", &denied, "--config", &cfg]);
    assert!(ok, "{text}");
    assert!(!served_from(&topo, &denied), "the denied source was served");
    daemon.stop_with(libc::SIGTERM);
    let off = std::fs::read_to_string(&cfg)
        .unwrap()
        .replace("enabled = true", "enabled = false");
    std::fs::write(&cfg, off).unwrap();
    let daemon = start_daemon(topo.lb.name(), std::path::Path::new(&cfg));
    assert!(
        served_from(&topo, &denied),
        "the shield stayed attached although it is off:\n{}",
        daemon.output()
    );
    let refund_link = pin
        .0
        .join("lb-shld/v1")
        .join(stickylb::shield::refund::LINK_NAME);
    assert!(
        !refund_link.exists(),
        "the refund stayed pinned although the shield is off"
    );
    let (ok, text) = stickylb(&["deny", "list", "--config", &cfg]);
    assert!(ok, "{text}");
    assert_eq!(text.trim(), format!("{denied}/32"), "the list was not kept");
    drop(daemon);
}

#[test]
fn the_list_is_filled_before_any_start_bad_cidrs_are_refused_and_ipv6_is_denied() {
    if !privileged() {
        return;
    }
    let topo = Topology::new("shbad", 196);
    let pin = PinDir::new("shbad");
    let cfg = write_temp("shbad.toml", &config(&topo, &pin, "lb-shbad", "auto"));
    let cfg = cfg.to_str().unwrap();
    for (bad, why) in [
        ("10.0.0.1/8", "bits are set after the prefix length"),
        ("10.0.0.0/33", "the prefix length is out of range"),
        ("nonsense", "not an IP address"),
    ] {
        let (ok, text) = stickylb(&["deny", "add", bad, "--config", cfg]);
        assert!(!ok, "{bad} was accepted: {text}");
        assert!(text.contains(why), "{bad}: {text}");
    }

    // No process has pinned the list yet: `list` says so, `add` creates it.
    let (ok, text) = stickylb(&["deny", "list", "--config", cfg]);
    assert!(!ok && text.contains("SHIELD_DENY"), "{text}");
    let (ok, text) = stickylb(&["deny", "add", "2001:db8::/32", "--config", cfg]);
    assert!(ok, "{text}");
    let (ok, text) = stickylb(&["deny", "add", "192.0.2.0/24", "--config", cfg]);
    assert!(ok, "{text}");
    let (ok, text) = stickylb(&["deny", "list", "--config", cfg]);
    assert!(ok, "{text}");
    assert_eq!(text, "192.0.2.0/24\n2001:db8::/32\n");
    let (ok, text) = stickylb(&["deny", "del", "192.0.2.0/25", "--config", cfg]);
    assert!(!ok && text.contains("not on the deny list"), "{text}");

    // IPv6: a frontend on an IPv6 address of the same interface; one client address denied by
    // its /128, another of the same /64 served.
    let _backend = start_backend(&topo);
    let (lb6, denied6, other6) = ("fd00:c4::1", "fd00:c4::2", "fd00:c4::3");
    let lb_dev = interface_of(&topo.lb, &topo.lb_addr());
    topo.lb.exec(&[
        "ip",
        "-6",
        "addr",
        "add",
        &format!("{lb6}/64"),
        "dev",
        &lb_dev,
        "nodad",
    ]);
    let client_dev = interface_of(&topo.client, &topo.client_addr());
    for addr in [denied6, other6] {
        let cidr = format!("{addr}/64");
        topo.client.exec(&[
            "ip",
            "-6",
            "addr",
            "add",
            &cidr,
            "dev",
            &client_dev,
            "nodad",
        ]);
    }
    let with_v6 = format!(
        "{}\n[[frontend]]\nname = \"www6\"\nbind = \"[{lb6}]:80\"\nbackend = \"web\"\n",
        std::fs::read_to_string(cfg).unwrap()
    );
    std::fs::write(cfg, with_v6).unwrap();
    let (ok, text) = stickylb(&["deny", "add", denied6, "--config", cfg]);
    assert!(ok, "{text}");
    let _daemon = start_daemon(topo.lb.name(), std::path::Path::new(cfg));
    let url = format!("http://[{lb6}]:80/");
    assert!(served_at(&topo, &url, other6), "{}", _daemon.output());
    assert!(
        !served_at(&topo, &url, denied6),
        "the denied IPv6 source was served"
    );
}

/// A listener on the lb's address, port 9000, for one HTTP request: reads its head and its
/// whole body (Content-Length), answers 200 and returns the body's length.
fn upload_sink(topo: &Topology) -> thread::JoinHandle<usize> {
    use std::io::{Read as _, Write as _};
    let addr = format!("{}:9000", topo.lb_addr());
    let ns = topo.lb.name().to_owned();
    let (bound, listening) = mpsc::channel();
    let sink = thread::spawn(move || {
        common::http::in_netns(&ns, move || {
            let listener = std::net::TcpListener::bind(&addr).unwrap();
            bound.send(()).unwrap();
            let (mut conn, _) = listener.accept().unwrap();
            conn.set_read_timeout(Some(Duration::from_secs(10)))
                .unwrap();
            let mut buf = Vec::new();
            let mut chunk = [0u8; 65536];
            let (head_len, body_len) = loop {
                let n = conn.read(&mut chunk).unwrap();
                assert!(n > 0, "the upload ended before its head");
                buf.extend_from_slice(&chunk[..n]);
                if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                    let head = String::from_utf8_lossy(&buf[..end]).into_owned();
                    let len: usize = head
                        .lines()
                        .find_map(|l| {
                            let (name, value) = l.split_once(':')?;
                            name.eq_ignore_ascii_case("content-length")
                                .then(|| value.trim().parse().ok())?
                        })
                        .expect("content-length");
                    break (end + 4, len);
                }
            };
            let mut received = buf.len() - head_len;
            while received < body_len {
                let n = conn.read(&mut chunk).unwrap();
                assert!(n > 0, "the upload ended after {received} bytes");
                received += n;
            }
            conn.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
                .unwrap();
            received
        })
    });
    listening.recv().unwrap();
    sink
}

/// The interface of `ns` that has the IPv4 address `addr`.
fn interface_of(ns: &common::netns::NetNs, addr: &str) -> String {
    let script = format!("ip -o -4 addr show | awk '$4 ~ /^{addr}\\// {{print $2}}'");
    ns.exec(&["sh", "-c", &script]).trim().to_owned()
}

/// Stops the daemon answering on `control` (one an upgrade started, which no `Proc` owns).
struct StopDaemon(std::path::PathBuf);

impl Drop for StopDaemon {
    fn drop(&mut self) {
        if let Some(pid) =
            stickylb::control::running_pid(&self.0).and_then(|pid| i32::try_from(pid).ok())
        {
            // SAFETY: kill(2) takes plain integers; the pid is the daemon this test started.
            unsafe { libc::kill(pid, libc::SIGTERM) };
            wait_until(Duration::from_secs(10), || {
                stickylb::control::running_pid(&self.0).is_none()
            });
        }
    }
}

/// The shield's links pinned under `root` (`shieldtc_<dev>` at TC, `shield_<dev>` at XDP), and
/// whether `dev` in `ns` has an XDP program, as `ip link` shows it.
fn shield_links(
    root: &std::path::Path,
    ns: &common::netns::NetNs,
    dev: &str,
) -> (Vec<String>, bool) {
    let mut links: Vec<String> = std::fs::read_dir(root)
        .unwrap()
        .filter_map(|entry| entry.ok()?.file_name().into_string().ok())
        .filter(|name| name.starts_with("shield_") || name.starts_with("shieldtc_"))
        .collect();
    links.sort();
    let xdp = ns.exec(&["ip", "link", "show", "dev", dev]).contains("xdp");
    (links, xdp)
}

/// Runs `reload --upgrade` with `cfg` in the load balancer's namespace; returns its output.
fn upgrade(topo: &Topology, cfg: &str) -> Proc {
    let mut upgrade = Proc::spawn(
        "reload",
        topo.lb.name(),
        &[
            common::stickylb_bin(),
            "--log",
            "info",
            "reload",
            "--config",
            cfg,
            "--upgrade",
        ],
    );
    upgrade.assert_exits_ok(Duration::from_secs(60), "reload --upgrade");
    upgrade
}

#[test]
fn an_upgrade_adopts_the_shield_and_keeps_the_list_applied() {
    if !privileged() {
        return;
    }
    let topo = Topology::new("shupg", 197);
    let pin = PinDir::new("shupg");
    let _backend = start_backend(&topo);
    let cfg = write_temp("shupg.toml", &config(&topo, &pin, "lb-shupg", "auto"));
    let cfg = cfg.to_str().unwrap().to_owned();
    let (denied, other) = two_client_addrs(&topo);
    let (ok, text) = stickylb(&["deny", "add", &denied, "--config", &cfg]);
    assert!(ok, "{text}");
    let dev = interface_of(&topo.lb, &topo.lb_addr());
    let root = pin.0.join("lb-shupg/v1");
    let tc = (vec![format!("shieldtc_{dev}")], false);

    // `auto` on a veth: TC, whose frames are socket buffers already.
    let first = start_daemon(topo.lb.name(), std::path::Path::new(&cfg));
    let _stop = StopDaemon(pin.control_socket());
    assert!(
        first.output().contains("driver=veth hook=auto mode=tc"),
        "{}",
        first.output()
    );
    assert_eq!(shield_links(&root, &topo.lb, &dev), tc);
    assert!(!served_from(&topo, &denied), "the denied source was served");
    assert!(served_from(&topo, &other));

    // The successor adopts the pinned TC link (the shield is never off meanwhile).
    let same = upgrade(&topo, &cfg);
    same.wait_for_output("mode=tc", Duration::from_secs(5));
    assert_eq!(shield_links(&root, &topo.lb, &dev), tc);
    assert!(!served_from(&topo, &denied), "the denied source was served");
    assert!(served_from(&topo, &other), "{}", same.output());

    // Another hook in the next process: XDP attached, then the TC link removed.
    std::fs::write(&cfg, config(&topo, &pin, "lb-shupg", "xdp")).unwrap();
    let moved = upgrade(&topo, &cfg);
    moved.wait_for_output("mode=native", Duration::from_secs(5));
    assert_eq!(
        shield_links(&root, &topo.lb, &dev),
        (vec![format!("shield_{dev}")], true)
    );
    assert!(!served_from(&topo, &denied), "the denied source was served");
    assert!(served_from(&topo, &other), "{}", moved.output());
}

/// SYNs dropped by the rate limit so far, from the counters pinned under `root`.
fn dropped_by_rate(root: &std::path::Path) -> u64 {
    read_pinned_stats(root).unwrap()[SHIELD_STAT_DROPPED_RATE as usize]
}

/// `count` SYNs from the client's address `source` to the lb's `port`, one every 100 µs (up
/// to 10000/s), with hping3: (sent, answered, seconds taken, hping3's output).
fn syn_flood(topo: &Topology, source: &str, port: u16, count: u32) -> (u64, u64, f64, String) {
    let started = Instant::now();
    let count = count.to_string();
    let port = port.to_string();
    let lb = topo.lb_addr();
    let (_, out) = topo.client.try_exec(&[
        "hping3", "-S", "-p", &port, "-c", &count, "-i", "u100", "-a", source, &lb,
    ]);
    let seconds = started.elapsed().as_secs_f64();
    let (sent, answered) = hping_counts(&out);
    (sent, answered, seconds, out)
}

/// What hping3 reports at its end: `N packets transmitted, M packets received`.
fn hping_counts(output: &str) -> (u64, u64) {
    let line = output
        .lines()
        .find(|l| l.contains("packets transmitted"))
        .unwrap_or_else(|| panic!("no statistics in hping3's output: {output}"));
    let numbers: Vec<u64> = line
        .split(|c: char| !c.is_ascii_digit())
        .filter_map(|w| w.parse().ok())
        .collect();
    (numbers[0], numbers[1])
}

#[test]
fn a_syn_flood_is_limited_per_source_while_others_and_established_connections_are_served() {
    if !privileged() {
        return;
    }
    let topo = Topology::new("shsyn", 198);
    let pin = PinDir::new("shsyn");
    let _backend = start_backend(&topo);
    let cfg = write_temp("shsyn.toml", &config(&topo, &pin, "lb-shsyn", "auto"));
    let cfg = cfg.to_str().unwrap().to_owned();
    // The flood comes from the client's first address (its default source), the other
    // client from the second.
    let (flooder, other) = two_client_addrs(&topo);
    let daemon = start_daemon(topo.lb.name(), std::path::Path::new(&cfg));
    let root = pin.0.join("lb-shsyn/v1");
    let settings = limit::read_pinned(&root).unwrap();
    assert_eq!(
        (settings.syn_interval_ns, settings.syn_window_ns),
        (5_000_000, 2_000_000_000),
        "the default limit, 200/s and 400 at once"
    );

    // An established keep-alive connection from the flooding address, used during the flood.
    let (to_main, ready) = mpsc::channel();
    let (go, from_main) = mpsc::channel::<()>();
    let frontend = format!("{}:80", topo.lb_addr());
    let ns = topo.client.name().to_owned();
    let keep_alive = thread::spawn(move || {
        common::http::in_netns(&ns, move || {
            let mut conn = common::http::KeepAlive::connect(&frontend);
            assert_eq!(conn.get("/", None).status, 200);
            to_main.send(()).unwrap();
            from_main.recv().unwrap();
            let started = Instant::now();
            let mut ok = 0u32;
            for _ in 0..2000 {
                if conn.get("/", None).status == 200 {
                    ok += 1;
                }
            }
            (ok, started.elapsed())
        })
    });
    ready.recv().unwrap();

    // 3000 SYNs at up to 10000/s: the burst (400) and the rate (200/s) pass, no more.
    let before = dropped_by_rate(&root);
    let (sent, answered, seconds, out) = syn_flood(&topo, &flooder, 80, 3000);
    let dropped = dropped_by_rate(&root) - before;
    assert_eq!(sent, 3000, "{out}");
    // hping3 waits about a second for late answers; the burst plus the rate over the whole
    // run bounds what reached the listener (a SYN-ACK each).
    let allowed = 400 + (200.0 * seconds).ceil() as u64;
    assert!(
        answered <= allowed && answered >= 300,
        "{answered} SYNs answered in {seconds:.2} s (at most {allowed} allowed): {out}"
    );
    assert!(
        dropped >= sent - allowed,
        "only {dropped} SYNs dropped by rate of {sent} ({answered} answered)"
    );

    // The limit is the frontends': SYNs from the same source, its bucket empty, to a port no
    // frontend listens on (another service's, here closed: each is answered with a reset)
    // are not counted, let alone dropped.
    // The shield's counter is the exact check; hping3 reads the resets through a capture,
    // which on a loaded machine can miss a few (CI once saw 995 of 1000), so its count only
    // has to show that the SYNs went through.
    let before = dropped_by_rate(&root);
    let (sent, answered, _, out) = syn_flood(&topo, &flooder, 81, 1000);
    assert_eq!(sent, 1000, "{out}");
    assert_eq!(
        dropped_by_rate(&root),
        before,
        "SYNs to port 81 were dropped by rate"
    );
    assert!(answered >= 980, "{answered} of 1000 SYNs answered: {out}");

    // The buckets are pinned beside the list, and bpftool decodes them (BTF).
    let buckets = root.join("SHIELD_SYN");
    let out = std::process::Command::new("bpftool")
        .args(["map", "dump", "pinned", buckets.to_str().unwrap()])
        .output()
        .unwrap();
    let dump = String::from_utf8_lossy(&out.stdout);
    assert!(
        dump.contains("\"tat_ns\":") && dump.contains("\"family\": 0x4"),
        "{dump}"
    );

    // A flood as fast as hping3 sends: the other address is served, the established
    // connection from the flooding address keeps working, the counter grows.
    let _flood = Proc::spawn(
        "hping3",
        topo.client.name(),
        &[
            "hping3",
            "-S",
            "-p",
            "80",
            "--flood",
            "-a",
            &flooder,
            &topo.lb_addr(),
        ],
    );
    let before = dropped_by_rate(&root);
    assert!(
        wait_until(Duration::from_secs(5), || dropped_by_rate(&root)
            > before + 10_000),
        "the flood is not dropped by rate"
    );
    for _ in 0..5 {
        assert!(
            served_from(&topo, &other),
            "another address was not served during the flood"
        );
    }
    go.send(()).unwrap();
    let (ok, took) = keep_alive.join().unwrap();
    assert_eq!(
        ok, 2000,
        "requests on the established connection during the flood"
    );
    eprintln!("2000 keep-alive requests from the flooding address during the flood in {took:?}");
    let passed = read_pinned_stats(&root).unwrap()[SHIELD_STAT_PASSED as usize];
    assert!(passed > 2000, "passed {passed}");
    drop(_flood);

    // A reload changes the limit in place.
    let text = std::fs::read_to_string(&cfg).unwrap().replace(
        "enabled = true",
        "enabled = true\nsyn_rate = 1000\nsyn_burst = 50",
    );
    std::fs::write(&cfg, text).unwrap();
    daemon.signal(libc::SIGHUP);
    daemon.wait_for_output(
        "shield: syn_rate 200 -> 1000, syn_burst 400 -> 50",
        Duration::from_secs(10),
    );
    let settings = limit::read_pinned(&root).unwrap();
    assert_eq!(
        (settings.syn_interval_ns, settings.syn_window_ns),
        (1_000_000, 50_000_000)
    );
}

/// Sources with a bucket of their own in the pinned `SHIELD_SYN` under `root`: the entries of
/// bpftool's JSON dump, counted in its text (bpftool 7.1 does not escape a backslash in the
/// address bytes it prints as characters, so the dump does not always parse).
fn tracked_sources(root: &std::path::Path) -> usize {
    let buckets = root.join("SHIELD_SYN");
    let out = std::process::Command::new("bpftool")
        .args(["-j", "map", "dump", "pinned", buckets.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    String::from_utf8_lossy(&out.stdout)
        .matches("{\"key\":[")
        .count()
}

#[test]
fn a_flood_from_spoofed_sources_takes_no_buckets_while_a_source_over_its_limit_gets_one() {
    if !privileged() {
        return;
    }
    let topo = Topology::new("shspf", 194);
    let pin = PinDir::new("shspf");
    let _backend = start_backend(&topo);
    let cfg = write_temp("shspf.toml", &config(&topo, &pin, "lb-shspf", "auto"));
    let (flooder, _) = two_client_addrs(&topo);
    let _daemon = start_daemon(topo.lb.name(), &cfg);
    let root = pin.0.join("lb-shspf/v1");

    // 20000 SYNs from random sources (about 20000 sources, each far below the burst of 400)
    // at up to 10000/s, and meanwhile 3000 from one address: only that one gets a bucket of
    // its own, and only its SYNs beyond the limit are dropped. (The spoofed sources get no
    // answer: the lb has no route back to them.)
    let lb = topo.lb_addr();
    let before = dropped_by_rate(&root);
    let ((sent, _, seconds, out), spoofed) = thread::scope(|scope| {
        let spoofed = scope.spawn(|| {
            topo.client
                .try_exec(&[
                    "hping3",
                    "-S",
                    "-p",
                    "80",
                    "-c",
                    "20000",
                    "-i",
                    "u100",
                    "--rand-source",
                    &lb,
                ])
                .1
        });
        let one = syn_flood(&topo, &flooder, 80, 3000);
        (one, spoofed.join().unwrap())
    });
    let (spoofed_sent, _) = hping_counts(&spoofed);
    assert_eq!((sent, spoofed_sent), (3000, 20000), "{out}\n{spoofed}");
    let dropped = dropped_by_rate(&root) - before;
    let allowed = 400 + (200.0 * seconds).ceil() as u64;
    assert!(
        dropped >= sent - allowed && dropped <= sent,
        "{dropped} SYNs dropped by rate: the one source sent {sent} (at most {allowed} allowed), \
         the spoofed ones must lose none"
    );
    let tracked = tracked_sources(&root);
    assert_eq!(tracked, 1, "sources with a bucket of their own");
}

#[test]
fn a_spliced_download_passes_the_shield_intact() {
    if !privileged() {
        return;
    }
    let rig = common::fastpath::Rig::routed(
        "shsp",
        199,
        "[fastpath]\nafter_requests = 1\n\n[shield]\nenabled = true\n",
    );
    let daemon = rig.start();
    // On a veth `auto` takes TC: the shield runs first at TCX ingress and passes the flow's
    // packets on to the fast path's program behind it.
    assert!(daemon.output().contains("mode=tc"), "{}", daemon.output());
    // One connection of a session: after its first answer and a pause, the proxy hands it to
    // the kernel, and the download is spliced.
    let frontend = rig.frontend();
    let body = common::http::in_netns(rig.client().name(), move || {
        let mut conn = common::http::KeepAlive::connect(&frontend);
        let session = Some("JSESSIONID=shsp");
        assert_eq!(conn.get("/", session).status, 200);
        thread::sleep(Duration::from_millis(300));
        conn.get("/bytes/20000000", session).body
    });
    assert_eq!(body.len(), 20_000_000);
    assert_eq!(
        sha256_hex(&body),
        expected_sha256(20_000_000),
        "the spliced download arrived changed"
    );
    let metrics = rig.metrics();
    assert_eq!(
        common::fastpath::outcome(&metrics, "spliced"),
        1,
        "the connection was not spliced: {metrics}"
    );
    // GSO packets count once: 20 MB is a few hundred of them.
    let redirected = common::fastpath::metric(
        &metrics,
        "stickylb_fastpath_program_packets_total{counter=\"redirected\"}",
    );
    assert!(
        redirected > 100,
        "the download did not go through the kernel: {metrics}"
    );
    // The monitor shows the shield: its mode and its counters.
    assert!(
        metrics.contains("mode=\"tc\"} 1"),
        "no TC shield interface on /metrics: {metrics}"
    );
    assert!(
        common::fastpath::metric(
            &metrics,
            "stickylb_shield_packets_total{verdict=\"passed\"}"
        ) > 0,
        "{metrics}"
    );
    let stats = read_pinned_stats(&rig.root).unwrap();
    // The client's packets (its ACKs, aggregated by GRO) went through the shield.
    assert!(stats[SHIELD_STAT_PASSED as usize] > 20, "{stats:?}");
}

/// Hex sha256 of the backend's `/bytes/N` body: 64 KiB frames of `i % 251`.
fn expected_sha256(len: usize) -> String {
    let body: Vec<u8> = (0..len).map(|i| (i % 65536 % 251) as u8).collect();
    sha256_hex(&body)
}

fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::{Digest as _, Sha256};
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// How long one connection of [`connect_many`] may take: time for one retransmitted SYN.
const SETTLE: Duration = Duration::from_secs(3);

fn refunded(root: &std::path::Path) -> u64 {
    read_pinned_stats(root).unwrap()[SHIELD_STAT_REFUNDED as usize]
}

/// Opens `count` TCP connections one after another from the client namespace's default
/// source to `addr`, each closed once established; returns how many connected within
/// `timeout` each.
///
/// The tests give each [`SETTLE`]: whether the shield dropped a SYN is read from its counter,
/// and a connection that needs a second SYN on a loaded machine (its first lost elsewhere,
/// retransmitted after 1 s) must still count. With 500 ms, 299 of 300 connected in 2 of 5 runs
/// beside two busy loops, and once in a run of the whole file; with this, none failed.
fn connect_many(topo: &Topology, addr: &str, count: u32, timeout: Duration) -> u32 {
    let addr: std::net::SocketAddr = addr.parse().unwrap();
    common::http::in_netns(topo.client.name(), move || {
        (0..count)
            .filter(|_| std::net::TcpStream::connect_timeout(&addr, timeout).is_ok())
            .count() as u32
    })
}

#[test]
fn completed_connections_beyond_the_rate_are_not_limited_while_a_flood_is() {
    if !privileged() {
        return;
    }
    let topo = Topology::new("shref", 199);
    let pin = PinDir::new("shref");
    let _backend = start_backend(&topo);
    // A low limit: 50/s and 100 at once, so that 1500 connections far exceed it.
    let text = config(&topo, &pin, "lb-shref", "auto").replace(
        "enabled = true",
        "enabled = true\nsyn_rate = 50\nsyn_burst = 100",
    );
    let cfg = write_temp("shref.toml", &text);
    // The connections come from the client's first address (its default source), the flood
    // from the second.
    let (_, flooder) = two_client_addrs(&topo);
    let daemon = start_daemon(topo.lb.name(), &cfg);
    daemon.wait_for_output("shield: refund attached", Duration::from_secs(10));
    let root = pin.0.join("lb-shref/v1");
    assert!(root.join(stickylb::shield::refund::LINK_NAME).exists());

    // 1500 completed connections as fast as one client opens them: every one connects, none
    // is dropped by rate, each gives its SYN back.
    let (rate_before, refunded_before) = (dropped_by_rate(&root), refunded(&root));
    let started = Instant::now();
    let frontend = format!("{}:80", topo.lb_addr());
    let connected = connect_many(&topo, &frontend, 1500, SETTLE);
    let took = started.elapsed();
    assert_eq!(connected, 1500, "completed connections in {took:?}");
    assert_eq!(
        dropped_by_rate(&root),
        rate_before,
        "a completed connection's SYN was dropped"
    );
    assert!(
        wait_until(Duration::from_secs(5), || refunded(&root)
            >= refunded_before + 1500),
        "refunded {} of 1500",
        refunded(&root) - refunded_before
    );
    eprintln!(
        "1500 connections at {:.0}/s, none limited",
        1500.0 / took.as_secs_f64()
    );

    // A flood from the other address meets the limit as before: the burst and the rate pass.
    let before = dropped_by_rate(&root);
    let (sent, answered, seconds, out) = syn_flood(&topo, &flooder, 80, 2000);
    let allowed = 100 + (50.0 * seconds).ceil() as u64;
    assert_eq!(sent, 2000, "{out}");
    assert!(
        answered <= allowed,
        "{answered} flood SYNs answered in {seconds:.2} s (at most {allowed} allowed): {out}"
    );
    let dropped = dropped_by_rate(&root) - before;
    assert!(
        dropped >= sent - allowed,
        "{dropped} flood SYNs dropped by rate of {sent} ({answered} answered, at most {allowed} \
         allowed in {seconds:.2} s): {out}"
    );

    // Connections to a port of the lb host that is no frontend of the daemon (another
    // service's) are outside the limit: none is dropped, and none gives anything back.
    let ns = topo.lb.name().to_owned();
    let lb_addr = topo.lb_addr();
    let (stop, stopped) = mpsc::channel::<()>();
    let listener = thread::spawn(move || {
        netns_kit::enter(&ns).unwrap();
        let listener = std::net::TcpListener::bind(format!("{lb_addr}:9099")).unwrap();
        listener.set_nonblocking(true).unwrap();
        // Accepts (and closes) until the test drops `stop`, so the accept queue never fills.
        while let Err(mpsc::TryRecvError::Empty) = stopped.try_recv() {
            if listener.accept().is_err() {
                thread::sleep(Duration::from_millis(1));
            }
        }
    });
    let other_port = format!("{}:9099", topo.lb_addr());
    assert!(wait_until(Duration::from_secs(5), || connect_many(
        &topo,
        &other_port,
        1,
        Duration::from_millis(500)
    ) == 1));
    let (rate_before, refunded_before) = (dropped_by_rate(&root), refunded(&root));
    let connected = connect_many(&topo, &other_port, 300, SETTLE);
    assert_eq!(connected, 300, "connections to another port");
    assert_eq!(
        dropped_by_rate(&root),
        rate_before,
        "another port's SYNs were limited"
    );
    assert_eq!(
        refunded(&root),
        refunded_before,
        "another port's connections refunded"
    );
    drop(stop);
    listener.join().unwrap();
    drop(daemon);
}

/// The link files pinned under `root` whose names start with one of `prefixes`, sorted.
fn pinned_links(root: &std::path::Path, prefixes: &[&str]) -> Vec<String> {
    let mut links: Vec<String> = std::fs::read_dir(root)
        .unwrap()
        .filter_map(|entry| entry.ok()?.file_name().into_string().ok())
        .filter(|name| prefixes.iter().any(|p| name.starts_with(p)))
        .collect();
    links.sort();
    links
}

#[test]
fn detach_takes_a_stopped_instances_programs_out_and_keeps_its_maps() {
    if !privileged() {
        return;
    }
    let rig = common::fastpath::Rig::routed(
        "shdt",
        245,
        "[fastpath]\nafter_requests = 1\n\n[shield]\nenabled = true\n",
    );
    let cfg = rig.config.to_str().unwrap().to_owned();
    let daemon = rig.start();
    // One spliced keep-alive connection, held open across everything below.
    let frontend = rig.frontend();
    let mut client = common::http::in_netns(rig.client().name(), move || {
        let mut client = common::fastpath::Client::connect(&frontend, "shdt").unwrap();
        client.get("/", false).unwrap();
        client
    });
    assert!(rig.wait_spliced(2), "not spliced: {:?}", rig.entries());
    client.get("/", false).unwrap();

    let (ok, text) = stickylb(&["detach", "--config", &cfg]);
    assert!(!ok && text.contains("is running (pid"), "{text}");

    // Stopped hard: everything stays attached, the spliced flow goes on in the kernel.
    daemon.stop_with(libc::SIGKILL);
    let prefixes = [
        "shield_",
        "shieldtc_",
        "splice_ingress_",
        "splice_xdp_",
        "sockops_",
    ];
    let before = pinned_links(&rig.root, &prefixes);
    let ingress = before
        .iter()
        .filter(|l| l.starts_with("splice_ingress_"))
        .count();
    assert_eq!(ingress, 2, "{before:?}");
    assert!(
        before.iter().any(|l| l.starts_with("shieldtc_")),
        "{before:?}"
    );
    assert!(
        before.contains(&"sockops_shield_refund".to_owned()),
        "{before:?}"
    );
    // The kernel's ids of those links (bpftool 7.1 does not list TCX attachments by device).
    let ids: Vec<String> = before
        .iter()
        .map(|name| {
            let path = rig.root.join(name);
            let link = rig.lb().exec(&[
                "bpftool",
                "-j",
                "link",
                "show",
                "pinned",
                path.to_str().unwrap(),
            ]);
            let link: serde_json::Value = serde_json::from_str(&link).unwrap();
            link["id"].as_u64().unwrap().to_string()
        })
        .collect();
    let live = |id: &String| rig.lb().try_exec(&["bpftool", "link", "show", "id", id]).0;
    assert!(ids.iter().all(live), "{ids:?}");
    assert!(client.get("/", false).is_ok(), "the spliced flow stopped");

    // A process that holds the control socket without answering (a hung daemon, here a
    // listener that never accepts) is not taken for stopped: it would keep the links.
    let control = rig.pins.control_socket();
    std::fs::remove_file(&control).unwrap();
    let silent = std::os::unix::net::UnixListener::bind(&control).unwrap();
    let (ok, text) = stickylb(&["detach", "--config", &cfg, "--force"]);
    assert!(!ok && text.contains("does not answer"), "{text}");
    assert_eq!(pinned_links(&rig.root, &prefixes), before);
    drop(silent);

    // An open spliced connection would break: refused without --force.
    let (ok, text) = stickylb(&["detach", "--config", &cfg]);
    assert!(
        !ok && text.contains("1 spliced connection(s) are open"),
        "{text}"
    );
    assert_eq!(pinned_links(&rig.root, &prefixes), before);

    let (ok, text) = stickylb(&["detach", "--config", &cfg, "--force"]);
    assert!(ok, "{text}");
    assert_eq!(text.matches("detached ").count(), before.len(), "{text}");
    assert!(
        text.contains("1 spliced connection(s) no longer pass"),
        "{text}"
    );
    assert_eq!(pinned_links(&rig.root, &prefixes), Vec::<String>::new());
    let left: Vec<&String> = ids.iter().filter(|id| live(id)).collect();
    assert!(
        left.is_empty(),
        "links still in the kernel: {left:?} of {ids:?}"
    );

    // The maps stay: the session, the deny list, the flow map.
    let (ok, table) = stickylb(&["table", "--config", &cfg]);
    assert!(ok && table.contains("shdt"), "{table}");
    assert!(rig.root.join(lb_common::SHIELD_DENY_MAP).exists());
    assert!(rig.root.join(lb_common::SPLICE_FLOWS_MAP).exists());
    let (ok, text) = stickylb(&["detach", "--config", &cfg]);
    assert!(ok && text.contains("nothing attached under"), "{text}");
}
