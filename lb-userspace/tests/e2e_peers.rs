//! Peers end to end, each load balancer a host of its own on one LAN (namespaces on a bridge):
//! sessions balanced on one node are served by the same backend through the others; a node
//! started late or cut off and healed ends with the same table; two nodes choosing for the same
//! new cookie at once converge; HAProxy 2.6 is a peer in both directions; garbage on the peers
//! port closes that connection and nothing else.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test code: a failed setup step must fail the test loudly"
)]

mod common;

use std::{
    collections::BTreeMap,
    io::{Read as _, Write as _},
    net::TcpStream,
    sync::{Arc, Barrier},
    thread,
    time::{Duration, Instant},
};

use common::{
    demo_cookie,
    haproxy::HaproxyPeer,
    http::{self, in_netns},
    peers::{node_name, server_of, Cluster, ClusterSpec, BACKEND, PEERS_PORT, SYNC},
    privileged, wait_until,
};

/// The cleartext cluster: seven backends, a monitor on every node, `extra_members` after the
/// nodes.
fn cleartext_cluster(tag: &str, net: u8, n: usize, extra_members: &[(&str, String)]) -> Cluster {
    let spec = ClusterSpec {
        servers: 7,
        monitor: true,
        extra_members: extra_members
            .iter()
            .map(|(name, addr)| ((*name).to_owned(), addr.clone()))
            .collect(),
        peers_extra: Vec::new(),
    };
    Cluster::new(tag, net, n, spec)
}

#[test]
fn a_session_balanced_on_one_node_is_served_by_the_same_backend_through_every_other() {
    if !privileged() {
        return;
    }
    let mut cluster = cleartext_cluster("pm", 220, 3, &[]);
    cluster.start_all();
    // Sessions are created round robin over the three nodes, then asked for through each.
    let sessions: Vec<String> = (1..=12).map(demo_cookie).collect();
    let mut first = BTreeMap::new();
    for (n, session) in sessions.iter().enumerate() {
        first.insert(session.clone(), cluster.served_by(n % 3, session));
    }
    let table = cluster.wait_same_tables(sessions.len());
    for (session, answer) in &first {
        assert_eq!(table[session], server_of(answer), "{session}");
        for node in 0..3 {
            assert_eq!(
                &cluster.served_by(node, session),
                answer,
                "{session} via node {node}"
            );
        }
    }
    // Two nodes are enough too: node 3 stops, the other two keep agreeing.
    drop(cluster.nodes[2].take());
    let late = demo_cookie(99);
    let answer = cluster.served_by(0, &late);
    assert!(wait_until(SYNC, || cluster.table(1).get(&late)
        == Some(&server_of(&answer))));
    assert_eq!(cluster.served_by(1, &late), answer);
    let metrics = cluster.metrics(0);
    assert!(
        metrics.contains("stickylb_peer_updates_sent_total{peer=\"lb-2\"}"),
        "{metrics}"
    );
}

#[test]
fn a_late_node_and_a_healed_partition_end_with_the_same_table() {
    if !privileged() {
        return;
    }
    let mut cluster = cleartext_cluster("pl", 221, 2, &[]);
    cluster.start(0);
    let early: Vec<String> = (1..=5).map(demo_cookie).collect();
    let answers: Vec<String> = early.iter().map(|s| cluster.served_by(0, s)).collect();
    // Node 2 starts after the sessions exist: its resync request brings them.
    cluster.start(1);
    let table = cluster.wait_same_tables(early.len());
    for (session, answer) in early.iter().zip(&answers) {
        assert_eq!(table[session], server_of(answer));
        assert_eq!(&cluster.served_by(1, session), answer);
    }

    // Partition: each side creates sessions the other does not see, and both balance one same
    // new cookie (most likely to different servers).
    cluster.cut(0, 1);
    let left: Vec<String> = (10..15).map(demo_cookie).collect();
    let right: Vec<String> = (20..25).map(demo_cookie).collect();
    left.iter().for_each(|s| {
        cluster.served_by(0, s);
    });
    right.iter().for_each(|s| {
        cluster.served_by(1, s);
    });
    let both = demo_cookie(30);
    cluster.served_by(0, &both);
    cluster.served_by(1, &both);
    assert!(!cluster.table(0).contains_key(&right[0]));
    cluster.mend(0, 1);
    let table = cluster.wait_same_tables(early.len() + left.len() + right.len() + 1);
    for session in early.iter().chain(&left).chain(&right).chain([&both]) {
        let expected = server_of(&cluster.served_by(0, session));
        assert_eq!(table[session], expected, "{session}");
        assert_eq!(
            server_of(&cluster.served_by(1, session)),
            expected,
            "{session}"
        );
    }
}

#[test]
fn two_nodes_balancing_one_new_cookie_at_once_converge_within_two_seconds() {
    if !privileged() {
        return;
    }
    let mut cluster = cleartext_cluster("pc", 222, 2, &[]);
    cluster.start_all();
    // Wait for the session between the two to be up: a first session travels.
    let probe = demo_cookie(1);
    cluster.served_by(0, &probe);
    cluster.wait_same_tables(1);

    let sessions: Vec<String> = (100..120).map(demo_cookie).collect();
    let client = cluster.lan.client.name().to_owned();
    let addrs = [
        format!("{}:80", cluster.lan.lb_addr(0)),
        format!("{}:80", cluster.lan.lb_addr(1)),
    ];
    let mut differed = 0;
    for session in &sessions {
        // The same new cookie through both nodes at the same moment.
        let barrier = Arc::new(Barrier::new(2));
        let answers: Vec<String> = addrs
            .iter()
            .map(|addr| {
                let (addr, barrier, client) = (addr.clone(), Arc::clone(&barrier), client.clone());
                let cookie = format!("JSESSIONID={session}");
                thread::spawn(move || {
                    in_netns(&client, move || {
                        let request = format!("GET / HTTP/1.1\r\nHost: t\r\nCookie: {cookie}\r\nConnection: close\r\n\r\n");
                        let mut conn = TcpStream::connect(&addr).unwrap();
                        barrier.wait();
                        conn.write_all(request.as_bytes()).unwrap();
                        let mut out = Vec::new();
                        conn.read_to_end(&mut out).unwrap();
                        http::parse(&out).text()
                    })
                })
            })
            .collect::<Vec<_>>()
            .into_iter()
            .map(|t| t.join().unwrap())
            .collect();
        if answers[0] != answers[1] {
            differed += 1;
        }
    }
    let decided = Instant::now();
    let converged = wait_until(Duration::from_secs(2), || {
        let (a, b) = (cluster.table(0), cluster.table(1));
        sessions
            .iter()
            .all(|s| a.contains_key(s) && a.get(s) == b.get(s))
    });
    let took = decided.elapsed();
    eprintln!(
        "{differed} of {} sessions were first balanced differently; converged after {took:?}",
        sessions.len()
    );
    assert!(
        converged,
        "not converged 2 s after the last conflict:\n{:#?}\n{:#?}",
        cluster.table(0),
        cluster.table(1)
    );
    for session in &sessions {
        assert_eq!(
            cluster.served_by(0, session),
            cluster.served_by(1, session),
            "{session}"
        );
    }
}

/// HAProxy as a cleartext peer of `members` (itself included), in front of the cluster's servers.
fn start_haproxy(
    ns: &str,
    addr: &str,
    cluster: &Cluster,
    members: &[(String, String)],
) -> HaproxyPeer {
    let peers: String = members
        .iter()
        .map(|(name, addr)| format!("    peer {name} {addr}\n"))
        .collect();
    HaproxyPeer::start(ns, addr, BACKEND, &peers, &cluster.haproxy_servers())
}

#[test]
fn haproxy_2_6_is_a_peer_in_both_directions() {
    if !privileged() {
        return;
    }
    assert!(
        std::path::Path::new("/usr/sbin/haproxy").exists(),
        "HAProxy is needed (cargo xtask setup installs it)"
    );
    let hap_addr = "10.223.0.21".to_owned();
    let members = [
        (node_name(0), format!("10.223.0.11:{PEERS_PORT}")),
        (
            HaproxyPeer::NAME.to_owned(),
            format!("{hap_addr}:{PEERS_PORT}"),
        ),
    ];
    let mut cluster = cleartext_cluster("ph", 223, 1, &[(HaproxyPeer::NAME, members[1].1.clone())]);
    let hap_ns = cluster.lan.add_host("phh", 21).name().to_owned();
    let haproxy = start_haproxy(&hap_ns, &hap_addr, &cluster, &members);
    cluster.start(0);

    // Through HAProxy first: stickylb learns HAProxy's choices and routes by them.
    let via_haproxy: Vec<String> = (1..=5).map(demo_cookie).collect();
    let answers = cluster.learn_from_haproxy(0, &haproxy, &via_haproxy);
    for (session, answer) in via_haproxy.iter().zip(&answers) {
        assert_eq!(&cluster.served_by(0, session), answer, "{session}");
    }

    // Through stickylb: HAProxy's `show table` lists our choices by server name, and routes by them.
    let via_us: Vec<String> = (10..=14).map(demo_cookie).collect();
    cluster.teach_haproxy(0, &haproxy, &via_us);
    // Idle for longer than the 5 s dead-peer timeout: heartbeats keep the session alive. (At
    // start both sides dial; HAProxy counts a collision and may replace the session once.)
    let sessions = |metrics: &str| {
        metrics
            .lines()
            .find_map(|l| l.strip_prefix("stickylb_peer_sessions_total{peer=\"hap\"} "))
            .map(str::to_owned)
    };
    // HAProxy's own collision handling redials within 50-2050 ms of a collision (later on a
    // loaded machine): wait until the session count has held for 3 s.
    let mut before = sessions(&cluster.metrics(0));
    let mut held_since = Instant::now();
    let settled = wait_until(Duration::from_secs(30), || {
        let now = sessions(&cluster.metrics(0));
        if now != before {
            before = now;
            held_since = Instant::now();
        }
        held_since.elapsed() >= Duration::from_secs(3)
    });
    assert!(settled, "{}", cluster.node(0).output());
    thread::sleep(Duration::from_secs(7));
    let metrics = cluster.metrics(0);
    assert_eq!(sessions(&metrics), before, "{}", cluster.node(0).output());
    assert!(
        metrics
            .lines()
            .any(|l| l == "stickylb_peer_up{peer=\"hap\"} 1"),
        "{metrics}"
    );
}

#[test]
fn garbage_on_the_peers_port_closes_that_connection_and_nothing_else() {
    if !privileged() {
        return;
    }
    // One node, and a member "lb-ghost" that never runs: the test speaks for it, from the client
    // host, at the address it is listed at (`[peers] allow` defaults to the members').
    let mut cluster = cleartext_cluster(
        "pg",
        224,
        1,
        &[("lb-ghost", "10.224.0.100:1024".to_owned())],
    );
    cluster.start(0);
    let peers_addr = format!("{}:{PEERS_PORT}", cluster.lan.lb_addr(0));
    let client = cluster.lan.client.name().to_owned();
    let exchange = |bytes: Vec<u8>| {
        let (addr, client) = (peers_addr.clone(), client.clone());
        in_netns(&client, move || {
            // Send, stop sending (as a peer that goes away would), read until the daemon closes.
            let started = Instant::now();
            let mut conn = TcpStream::connect(&addr).unwrap();
            conn.set_read_timeout(Some(Duration::from_secs(10)))
                .unwrap();
            conn.write_all(&bytes).unwrap();
            // The daemon may already have answered and closed: then there is nothing to stop.
            let _ = conn.shutdown(std::net::Shutdown::Write);
            let mut out = Vec::new();
            let _ = conn.read_to_end(&mut out);
            assert!(
                started.elapsed() < Duration::from_secs(4),
                "the daemon kept the connection open"
            );
            out
        })
    };
    let hello = |name: &str| format!("HAProxyS 2.1\nlb-1\n{name} 1 1\n").into_bytes();
    let with = |mut head: Vec<u8>, tail: &[u8]| {
        head.extend_from_slice(tail);
        head
    };

    assert_eq!(
        exchange(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec()),
        b"501\n"
    );
    assert_eq!(exchange(hello("nobody")), b"504\n");
    assert_eq!(
        exchange(b"HAProxyS 2.1\nsomeone-else\nlb-ghost 1 1\n".to_vec()),
        b"503\n"
    );
    assert_eq!(
        exchange(b"HAProxyS 3.0\nlb-1\nlb-ghost 1 1\n".to_vec()),
        b"502\n"
    );
    // A line longer than any hello (256 bytes), all of it read by the daemon before it answers, so
    // that its close is a FIN and not a reset that could overtake the answer.
    assert_eq!(exchange(vec![b'x'; 300]), b"501\n");
    // Past the handshake: a reserved message class, an oversized length, a truncated message.
    for tail in [
        &[0xff, 0x00][..],
        &[0x0a, 0x80, 0xff, 0xff, 0xff, 0xff, 0x0f],
        &[0x0a, 0x82, 0x20, 0x01],
    ] {
        let out = exchange(with(hello("lb-ghost"), tail));
        assert!(out.starts_with(b"200\n"), "{out:?}");
    }
    // The daemon is fine: it serves, and it said why it closed each connection.
    let session = demo_cookie(1);
    let answer = cluster.served_by(0, &session);
    assert_eq!(cluster.served_by(0, &session), answer);
    for needle in [
        "refused a peers connection",
        "not a peers hello",
        "is not a member of the peers section",
        "peer session closed: bad message from the peer: message class 255 (reserved)",
        "bytes exceeds the 16384-byte limit",
        "peer session closed: the peer closed the connection in the middle of a message (4 bytes of it received)",
    ] {
        // The log reaches the test through the daemon's log thread and a reader thread.
        cluster.node(0).wait_for_output(needle, Duration::from_secs(10));
    }
}

/// A peer session opened by the test itself, as member `lb-ghost`.
fn ghost_session(client_ns: &str, peers_addr: &str) -> TcpStream {
    let (ns, addr) = (client_ns.to_owned(), peers_addr.to_owned());
    in_netns(&ns, move || {
        let mut conn = TcpStream::connect(&addr).unwrap();
        conn.set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        conn.write_all(b"HAProxyS 2.1\nlb-1\nlb-ghost 1 1\n")
            .unwrap();
        let mut status = [0u8; 4];
        conn.read_exact(&mut status).unwrap();
        assert_eq!(&status, b"200\n");
        conn
    })
}

#[test]
fn an_entry_on_a_server_we_lack_is_kept_and_reported_and_a_stuck_peer_slows_nothing() {
    use stickylb::peers::{Encoder, Message, ServerKey, TableDefinition};

    if !privileged() {
        return;
    }
    let mut cluster = cleartext_cluster(
        "pu",
        225,
        1,
        &[("lb-ghost", "10.225.0.100:1024".to_owned())],
    );
    cluster.start(0);
    let peers_addr = format!("{}:{PEERS_PORT}", cluster.lan.lb_addr(0));
    let client = cluster.lan.client.name().to_owned();

    // The ghost teaches one session on "be99", which this node does not have.
    let mut conn = ghost_session(&client, &peers_addr);
    let mut encoder = Encoder::new();
    let mut out = Vec::new();
    let def = TableDefinition::sticky_string(1, BACKEND, 32, 30 * 60 * 1000);
    encoder
        .encode(&Message::TableDefinition(def), &mut out)
        .unwrap();
    let be99 = ServerKey::new("be99").unwrap();
    encoder
        .push(1, b"ghost-session", Some(99), Some(&be99), None, &mut out)
        .unwrap();
    conn.write_all(&out).unwrap();
    assert!(
        wait_until(SYNC, || cluster
            .table(0)
            .get("ghost-session")
            .map(String::as_str)
            == Some("be99")),
        "the entry was not kept: {:#?}\n{}",
        cluster.table(0),
        cluster.node(0).output()
    );
    assert!(cluster
        .metrics(0)
        .contains("stickylb_peer_unknown_servers_total{peer=\"lb-ghost\"} 1"));
    // Here, a request for it goes to a live server, and sticks there from now on.
    let answer = cluster.served_by(0, "ghost-session");
    assert!(answer.starts_with("Backend "), "{answer}");
    assert_eq!(cluster.table(0)["ghost-session"], server_of(&answer));
    cluster.node(0).wait_for_output(
        "peer sent a session on a server this node does not have",
        Duration::from_secs(10),
    );

    // Now the ghost stops reading (and talking). Requests, new sessions included, are served
    // as before while the daemon's pushes pile up against it, until it is dropped as silent.
    let started = Instant::now();
    for n in 0..300 {
        let session = format!("stuck-{n}");
        let answer = cluster.served_by(0, &session);
        assert!(answer.starts_with("Backend "));
    }
    let took = started.elapsed();
    assert!(took < Duration::from_secs(30), "300 requests took {took:?}");
    assert!(
        wait_until(SYNC, || cluster
            .node(0)
            .output()
            .contains("no message from the peer for 5s")),
        "{}",
        cluster.node(0).output()
    );
    drop(conn);
}

#[test]
fn peers_stay_in_sync_across_an_upgrade_of_one_node() {
    if !privileged() {
        return;
    }
    let mut cluster = cleartext_cluster("pr", 228, 2, &[]);
    cluster.start_all();
    let before = demo_cookie(1);
    let answer = cluster.served_by(0, &before);
    cluster.wait_same_tables(1);

    // Node 1 is replaced by a new process that takes its sockets; the peer session moves to it.
    let upgrade = cluster.upgrade(0);
    assert_eq!(cluster.served_by(0, &before), answer);

    // New sessions travel both ways with the new process.
    let via_new = demo_cookie(2);
    let via_other = demo_cookie(3);
    cluster.served_by(0, &via_new);
    cluster.served_by(1, &via_other);
    let table = cluster.wait_same_tables(3);
    assert!(table.contains_key(&via_new) && table.contains_key(&via_other));
    assert!(
        upgrade.output().contains("peer session established"),
        "{}",
        upgrade.output()
    );
}
