//! The kernel fast path on ordinary traffic: which connections the hand-off policy
//! picks and what the others cost, port reuse by clients after spliced flows, a restart right
//! after traffic, the recycling of the servers' source ports, and a one-armed load balancer.
//! The real daemon, in namespaces (`common::fastpath::Rig`).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test code: a failed setup step must fail the test loudly"
)]

mod common;

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    thread,
    time::{Duration, Instant},
};

use common::{
    fastpath::{metric, outcome, proxied, Client, Rig},
    http::in_netns,
    netns::Exec as _,
    wait_until,
};
use lb_common::{
    SPLICE_STAT_ARMED_DROPPED, SPLICE_STAT_DROPPED, SPLICE_STAT_REDIRECTED, SPLICE_STAT_SYN_REUSE,
    SPLICE_STAT_XDP_REDIRECTED,
};
use stickylb::fastpath::program::read_pinned_stats;

/// A TCP counter of a namespace's stack (`/proc/net/snmp` or `/proc/net/netstat`, by the line
/// prefix: `Tcp:` or `TcpExt:`).
fn tcp_counter(ns: &common::netns::NetNs, prefix: &str, name: &str) -> u64 {
    let file = if prefix == "Tcp:" {
        "/proc/net/snmp"
    } else {
        "/proc/net/netstat"
    };
    let text = ns.try_exec(&["cat", file]).1;
    let mut lines = text.lines().filter(|l| l.starts_with(prefix));
    let names: Vec<&str> = lines.next().expect("names").split_whitespace().collect();
    let values: Vec<&str> = lines.next().expect("values").split_whitespace().collect();
    let at = names.iter().position(|n| *n == name).expect(name);
    values[at].parse().expect("a number")
}

/// `TcpExt: TCPSynRetrans`: SYNs and SYN-ACKs the stack sent again (a handshake whose last
/// packet never reached it).
fn syn_retransmits(ns: &common::netns::NetNs) -> u64 {
    tcp_counter(ns, "TcpExt:", "TCPSynRetrans")
}

/// TCP keepalive probes every second after a second of silence.
fn keepalive_every_second(conn: &std::net::TcpStream) {
    use std::os::fd::AsRawFd as _;
    for (level, option) in [
        (libc::SOL_SOCKET, libc::SO_KEEPALIVE),
        (libc::IPPROTO_TCP, libc::TCP_KEEPIDLE),
        (libc::IPPROTO_TCP, libc::TCP_KEEPINTVL),
    ] {
        let one: libc::c_int = 1;
        // SAFETY: a live socket, and a pointer to an int with its size.
        let rc = unsafe {
            libc::setsockopt(
                conn.as_raw_fd(),
                level,
                option,
                std::ptr::from_ref(&one).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        assert_eq!(rc, 0, "setsockopt {option}");
    }
}

/// Sockets of the lb bound to a port of the default source range (61000-64999).
fn reserved_port_sockets(rig: &Rig) -> usize {
    rig.lb_sockets(&["sport", ">=", ":61000", "and", "sport", "<=", ":64999"])
        .lines()
        .filter(|l| !l.trim().is_empty())
        .count()
}

/// The fast path's TC links pinned under the rig's pin root, by name.
fn splice_links(rig: &Rig) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(&rig.root)
        .expect("the pin root")
        .filter_map(Result::ok)
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|name| name.starts_with("splice_ingress_"))
        .collect();
    names.sort();
    names
}

#[test]
fn short_connections_take_the_pooled_path_and_long_ones_are_spliced() {
    if !common::privileged() {
        return;
    }
    // The default policy: a connection is handed over after 8 requests, or a 50 ms pause.
    let rig = Rig::routed("fpp", 250, "");
    let _daemon = rig.start();
    let addr = rig.frontend();
    // Browser-like churn: 200 connections of 5 requests, the 5th closing, back to back.
    let churn = addr.clone();
    let answered = in_netns(rig.client().name(), move || {
        let mut answered = 0;
        for i in 0..200 {
            let mut client = Client::connect(&churn, &format!("churn{}", i % 20)).unwrap();
            for n in 0..5 {
                client.get("/", n == 4).unwrap();
                answered += 1;
            }
        }
        answered
    });
    assert_eq!(answered, 1000);
    let after_churn = rig.metrics();
    // What it cost is what it costs with the fast path off: pooled server connections, no
    // reserved port, no map entry, not even an attempt.
    assert_eq!(
        metric(&after_churn, "stickylb_fastpath_candidates_total "),
        0,
        "{after_churn}"
    );
    assert_eq!(metric(&after_churn, "stickylb_fastpath_attempts_total "), 0);
    assert!(rig.entries().is_empty(), "{:?}", rig.entries());
    assert_eq!(reserved_port_sockets(&rig), 0);
    assert_eq!(proxied(&after_churn), 1000);
    // Nor a program on any interface: the fast path attaches for its first candidate.
    assert_eq!(splice_links(&rig), Vec::<String>::new());
    assert!(
        !after_churn.contains("stickylb_fastpath_interface{"),
        "{after_churn}"
    );

    // A long connection: its 8th request goes over a leg that can be spliced and is handed
    // over with its answer; the proxy sees none of the 12 after it.
    let long = addr.clone();
    let servers = in_netns(rig.client().name(), move || {
        let mut client = Client::connect(&long, "long").unwrap();
        let servers: Vec<String> = (0..20).map(|_| client.get("/", false).unwrap()).collect();
        client.close().unwrap();
        servers
    });
    assert!(servers.iter().all(|s| *s == servers[0]), "{servers:?}");
    let after_long = rig.metrics();
    assert_eq!(proxied(&after_long) - proxied(&after_churn), 8);
    assert_eq!(outcome(&after_long, "spliced"), 1, "{after_long}");
    // Attached for it, to the client's interface and the servers'.
    assert_eq!(splice_links(&rig).len(), 2, "{:?}", splice_links(&rig));

    // A connection whose client pauses after its first answer is handed over in the pause. The
    // proxy closes its sockets at once: the client's next packet completes the hand-off. Here
    // that is a TCP keepalive probe (an old sequence number, no data), a second later.
    let paused = addr.clone();
    let resets_before = tcp_counter(rig.lb(), "Tcp:", "OutRsts");
    in_netns(rig.client().name(), move || {
        let mut client = Client::connect(&paused, "paused").unwrap();
        keepalive_every_second(&client.conn);
        let first = client.get("/", false).unwrap();
        thread::sleep(Duration::from_millis(2500));
        for _ in 0..5 {
            assert_eq!(client.get("/", false).unwrap(), first);
        }
        client.close().unwrap();
    });
    assert_eq!(
        tcp_counter(rig.lb(), "Tcp:", "OutRsts"),
        resets_before,
        "the load balancer's stack reset nothing"
    );
    let after_pause = rig.metrics();
    assert_eq!(proxied(&after_pause) - proxied(&after_long), 1);
    assert_eq!(outcome(&after_pause, "spliced"), 2, "{after_pause}");
    // Every attempt succeeded at once: nothing raced, nothing was given up.
    assert_eq!(
        metric(&after_pause, "stickylb_fastpath_attempts_total "),
        2,
        "{after_pause}"
    );
    let stats = read_pinned_stats(&rig.root).unwrap();
    assert_eq!(stats[SPLICE_STAT_DROPPED as usize], 0);
}

#[test]
fn a_client_reusing_the_ports_of_spliced_flows_opens_new_connections() {
    if !common::privileged() {
        return;
    }
    let rig = Rig::routed("fpr", 251, "[fastpath]\nafter_requests = 1\n");
    // The client has 64 ports: every connection after the first 64 reuses one of a spliced
    // flow, whose entries stay in the map after FIN (`splice_fin_grace`, 60 s).
    rig.client()
        .exec(&["sysctl", "-qw", "net.ipv4.ip_local_port_range=40000 40063"]);
    rig.client()
        .exec(&["sysctl", "-qw", "net.ipv4.tcp_tw_reuse=1"]);
    let _daemon = rig.start();
    let addr = rig.frontend();
    let sessions: Arc<Mutex<HashMap<String, String>>> = Arc::default();

    // 64 connections at once, each spliced with its first answer, a second request through the
    // kernel, then one that the server closes (so the client leaves no TIME_WAIT behind).
    let (ns, spliced_addr, record) = (
        rig.client().name().to_owned(),
        addr.clone(),
        Arc::clone(&sessions),
    );
    in_netns(&ns, move || {
        let threads: Vec<_> = (0..64)
            .map(|i| {
                let (addr, record) = (spliced_addr.clone(), Arc::clone(&record));
                thread::spawn(move || {
                    let session = format!("reuse{i}");
                    let mut client = Client::connect(&addr, &session).unwrap();
                    let server = client.get("/", false).unwrap();
                    assert_eq!(client.get("/", false).unwrap(), server);
                    assert_eq!(client.get("/", true).unwrap(), server);
                    client.finish().unwrap();
                    record.lock().unwrap().insert(session, server);
                })
            })
            .collect();
        for thread in threads {
            thread.join().unwrap();
        }
    });
    // A hand-off that meets a request in flight keeps its connection in userspace for now
    // (correct, and more likely on a loaded machine) and may be tried again at the next
    // answer: the outcomes count attempts, not connections. Every attempt ended as spliced or
    // kept, none failed, no connection was spliced twice, and most were spliced, so most ports
    // below carry a spliced flow.
    let metrics = rig.metrics();
    let spliced = outcome(&metrics, "spliced");
    let kept: u64 = ["kept_unread", "kept_unacked", "kept_moved", "kept_no_tsval"]
        .iter()
        .map(|kept| outcome(&metrics, kept))
        .sum();
    assert_eq!(
        spliced + kept,
        metric(&metrics, "stickylb_fastpath_attempts_total "),
        "{metrics}"
    );
    assert_eq!(outcome(&metrics, "error"), 0, "{metrics}");
    assert!((48..=64).contains(&spliced), "{metrics}");
    let reuse_before = read_pinned_stats(&rig.root).unwrap()[SPLICE_STAT_SYN_REUSE as usize];

    // Now 2000 connections, one request each, from the same 64 ports: each SYN meets a flow the
    // program still knows; each must be a new connection, answered by its session's server.
    let sessions = sessions.lock().unwrap().clone();
    let retransmits_before = syn_retransmits(rig.lb());
    let started = Instant::now();
    let failures = in_netns(rig.client().name(), move || {
        let mut failures = Vec::new();
        for n in 0..2000 {
            let session = format!("reuse{}", n % 64);
            // The load balancer closes first: the client's port is free again at once.
            let answer = Client::connect(&addr, &session).and_then(|mut client| {
                let server = client.get("/", true)?;
                client.finish().map(|()| server)
            });
            match answer {
                Ok(server) if server == sessions[&session] => {}
                other => failures.push(format!("{session}: {other:?}")),
            }
        }
        failures
    });
    eprintln!("2000 connections in {:?}", started.elapsed());
    assert!(
        failures.is_empty(),
        "{} failed: {:?}",
        failures.len(),
        &failures[..failures.len().min(10)]
    );
    // Each handshake's last ACK reached the load balancer's stack the first time: not one
    // SYN-ACK was sent again (the old flow's translation would have taken it away).
    assert_eq!(syn_retransmits(rig.lb()), retransmits_before);
    let stats = read_pinned_stats(&rig.root).unwrap();
    // connect() takes even ports first (Linux leaves the odd ones to bind()): every spliced
    // flow on an even port (all but at most the 32 odd ones) met a new SYN, and the program
    // retired each of them there.
    assert!(
        stats[SPLICE_STAT_SYN_REUSE as usize] >= reuse_before + spliced.saturating_sub(32),
        "the program retired the old flows on their ports' new SYNs: {stats:?}"
    );
    assert_eq!(stats[SPLICE_STAT_DROPPED as usize], 0, "{stats:?}");
}

#[test]
fn a_restart_right_after_traffic_listens_at_once() {
    if !common::privileged() {
        return;
    }
    // Every candidate goes through repair mode (the window probe, the snapshot) and stays in
    // userspace: the client has no TCP timestamps, the servers do. Each connection's last
    // request closes it, so the load balancer closes first and its sockets end in TIME_WAIT.
    let rig = Rig::routed("fpb", 252, "[fastpath]\nafter_requests = 2\n");
    rig.client()
        .exec(&["sysctl", "-qw", "net.ipv4.tcp_timestamps=0"]);
    let daemon = rig.start();
    let addr = rig.frontend();
    let churn = addr.clone();
    in_netns(rig.client().name(), move || {
        for i in 0..200 {
            let mut client = Client::connect(&churn, &format!("restart{i}")).unwrap();
            for n in 0..3 {
                client.get("/", n == 2).unwrap();
            }
            client.finish().unwrap();
        }
    });
    let metrics = rig.metrics();
    assert!(
        outcome(&metrics, "refused_options") >= 200,
        "every connection went through repair mode: {metrics}"
    );
    let time_wait = rig.lb_sockets(&["state", "time-wait", "sport", "=", ":8080"]);
    assert!(
        time_wait.lines().count() >= 100,
        "the load balancer closed first: {time_wait}"
    );
    daemon.stop_with(libc::SIGTERM);
    // The same listening address again, with every one of those TIME_WAIT sockets still there.
    let started = Instant::now();
    let daemon = rig.start();
    let frontend = addr.clone();
    let listening = in_netns(rig.client().name(), move || {
        wait_until(Duration::from_secs(5), || {
            std::net::TcpStream::connect(&frontend).is_ok()
        })
    });
    let took = started.elapsed();
    assert!(listening, "{}", daemon.output());
    assert!(
        took < Duration::from_secs(1),
        "listening {took:?} after the restart"
    );
    assert!(!daemon.output().contains("Address already in use"));
}

#[test]
fn source_ports_rest_after_their_flow_and_are_used_again() {
    if !common::privileged() {
        return;
    }
    // 16 source ports, each resting 1 s after its flow ends.
    let rig = Rig::routed(
        "fpq",
        254,
        "[fastpath]\nafter_requests = 1\nsource_ports = \"62000-62015\"\n",
    );
    let _daemon = rig.start();
    let addr = rig.frontend();
    let started = Instant::now();
    let answered = in_netns(rig.client().name(), move || {
        let mut answered = 0;
        for i in 0..80 {
            // Two connections to each server (round robin), one after another.
            let mut client = Client::connect(&addr, &format!("ports{i}")).unwrap();
            let server = client.get("/", false).unwrap();
            assert_eq!(client.get("/", false).unwrap(), server);
            client.close().unwrap();
            answered += 2;
            thread::sleep(Duration::from_millis(30));
        }
        answered
    });
    let took = started.elapsed();
    assert_eq!(answered, 160);
    let metrics = rig.metrics();
    let spliced = outcome(&metrics, "spliced");
    let no_port = outcome(&metrics, "no_port");
    eprintln!("{took:?}: {spliced} spliced, {no_port} without a free port");
    // 32 ports (16 per server) were used more than once: they came back after their rest.
    assert!(spliced > 40, "{metrics}");
    // The ones that found every port resting were served as without the fast path (and may
    // have been handed over at their second request).
    assert!(spliced + no_port >= 80, "{metrics}");
    assert_eq!(outcome(&metrics, "error"), 0, "{metrics}");
    let stats = read_pinned_stats(&rig.root).unwrap();
    assert_eq!(stats[SPLICE_STAT_DROPPED as usize], 0, "{stats:?}");
    assert_eq!(stats[SPLICE_STAT_ARMED_DROPPED as usize], 0, "{stats:?}");
}

#[test]
fn a_one_armed_load_balancer_splices_through_its_one_interface() {
    if !common::privileged() {
        return;
    }
    // Client, load balancer and servers on one LAN, as in `vagrant/`'s network: both
    // legs of every connection cross the same interface.
    let rig = Rig::one_armed("fpo", 253, "");
    let _daemon = rig.start();
    let addr = rig.frontend();
    let servers = in_netns(rig.client().name(), move || {
        let threads: Vec<_> = (0..16)
            .map(|i| {
                let addr = addr.clone();
                thread::spawn(move || {
                    let mut client = Client::connect(&addr, &format!("arm{i}")).unwrap();
                    let first = client.get("/", false).unwrap();
                    // A pause: the connection is handed over.
                    thread::sleep(Duration::from_millis(200));
                    for _ in 0..20 {
                        assert_eq!(client.get("/", false).unwrap(), first);
                    }
                    assert_eq!(client.get("/bytes/20000000", false).unwrap(), first);
                    client.close().unwrap();
                    first
                })
            })
            .collect();
        threads
            .into_iter()
            .map(|t| t.join().unwrap())
            .collect::<Vec<_>>()
    });
    assert_eq!(servers.len(), 16);
    let metrics = rig.metrics();
    assert_eq!(outcome(&metrics, "spliced"), 16, "{metrics}");
    assert_eq!(proxied(&metrics), 16, "only the first request of each");
    let stats = read_pinned_stats(&rig.root).unwrap();
    assert_eq!(stats[SPLICE_STAT_DROPPED as usize], 0, "{stats:?}");
    if common::fastpath::xdp_on() {
        // In and out by the one interface: both directions learn from each other at XDP.
        assert!(
            stats[SPLICE_STAT_XDP_REDIRECTED as usize] * 2 > stats[SPLICE_STAT_REDIRECTED as usize],
            "{stats:?}"
        );
    }
}

#[test]
fn a_fastpath_interface_the_namespace_lacks_refuses_the_start() {
    if !common::privileged() {
        return;
    }
    // The program is attached for the first candidate, not at start: a misspelt interface
    // must still stop the daemon at start rather than leave every connection relayed.
    let extra = "[[frontend]]\nname = \"typo\"\nbind = \"0.0.0.0:8081\"\nbackend = \"web\"\n\
                 fastpath = \"splice\"\nfastpath_interfaces = [\"nosuch0\"]\n";
    let rig = Rig::routed("fpn", 233, extra);
    let config = rig.config.to_str().unwrap();
    let mut daemon = common::Proc::spawn(
        "stickylb",
        rig.lb().name(),
        &[
            common::stickylb_bin(),
            "--log",
            "info",
            "run",
            "--config",
            config,
        ],
    );
    let exited = wait_until(Duration::from_secs(20), || {
        matches!(daemon.child.try_wait(), Ok(Some(_)))
    });
    assert!(exited, "the daemon kept running:\n{}", daemon.output());
    let status = daemon.child.try_wait().unwrap().unwrap();
    // The output threads may still be copying the last lines.
    let said = wait_until(Duration::from_secs(2), || {
        daemon.output().contains(
            "fastpath_interfaces names nosuch0, which this network namespace does not have",
        )
    });
    assert!(!status.success() && said, "{status}:\n{}", daemon.output());
    assert!(
        !daemon.output().contains("stickylb started"),
        "{}",
        daemon.output()
    );
}
