//! The ECMP cluster layout: the router spreads one client's connections over the nodes that
//! hold the service address, follows [`Cluster::route_to`], and a partition cuts only the
//! nodes' links to each other. Needs root; skips without it, except under `CI=true` or
//! `STICKYLB_REQUIRE_PRIVILEGED=1`, where it fails.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test code: a failed setup step must fail the test loudly"
)]

use std::{
    collections::BTreeSet,
    io::{ErrorKind, Read as _, Write as _},
    net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    thread::{self, JoinHandle},
    time::Duration,
};

mod common;

use common::privileged;
use netns_kit::{enter, Cluster, ClusterAddrs, Names, NetNs};

/// Not `slb-` or `slbbench-`: tests of the kit keep to their own names.
const NAMES: Names = Names::new("slbkit-");
/// 10.145.x.x: no other test's subnet.
const NET: u8 = 145;
const PORT: u16 = 7000;

/// Runs `f` on a thread inside `netns` and returns what it returns.
fn inside<T: Send + 'static>(netns: &NetNs, f: impl FnOnce() -> T + Send + 'static) -> T {
    spawn_in(netns, f).join().unwrap()
}

fn spawn_in<T: Send + 'static>(
    netns: &NetNs,
    f: impl FnOnce() -> T + Send + 'static,
) -> JoinHandle<T> {
    let name = netns.name().to_owned();
    thread::spawn(move || {
        enter(&name).unwrap();
        f()
    })
}

/// A server on `addr` in `netns` that writes `reply` to every connection, until `stop`.
fn serve(netns: &NetNs, addr: SocketAddr, reply: String, stop: Arc<AtomicBool>) -> JoinHandle<()> {
    let listener = inside(netns, move || TcpListener::bind(addr).unwrap());
    listener.set_nonblocking(true).unwrap();
    thread::spawn(move || {
        while !stop.load(Ordering::Relaxed) {
            match listener.accept() {
                Ok((mut stream, _)) => {
                    let _ = stream.write_all(reply.as_bytes());
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => {
                    thread::sleep(Duration::from_millis(5));
                }
                Err(e) => panic!("accept: {e}"),
            }
        }
    })
}

/// What `count` connections from the client to the service address were answered.
fn answers(cluster: &Cluster, count: usize) -> Vec<String> {
    let service = SocketAddr::from((cluster.addrs.service(), PORT));
    inside(&cluster.client, move || {
        (0..count)
            .map(|_| {
                let mut stream = TcpStream::connect_timeout(&service, Duration::from_secs(2))
                    .expect("connect to the service address");
                let mut reply = String::new();
                stream.read_to_string(&mut reply).unwrap();
                reply
            })
            .collect()
    })
}

/// Whether a TCP connection from `from` to `to` opens within half a second.
fn connects(from: &NetNs, to: Ipv4Addr, port: u16) -> bool {
    inside(from, move || {
        let to = SocketAddr::from((to, port));
        TcpStream::connect_timeout(&to, Duration::from_millis(500)).is_ok()
    })
}

#[test]
fn ecmp_spreads_one_clients_connections_over_the_nodes_and_follows_the_route() {
    if !privileged() {
        return;
    }
    let name = |role: &str| NAMES.unique(&format!("ecmp-{role}"));
    let mut cluster = Cluster::create(ClusterAddrs::new(NET), 3, &name).unwrap();
    let fourth = cluster.add_node(&name).unwrap();
    assert_eq!(fourth, 3);
    assert_eq!(cluster.routed(), [0, 1, 2]);
    let stop = Arc::new(AtomicBool::new(false));
    let service = SocketAddr::from((cluster.addrs.service(), PORT));
    let mut servers: Vec<_> = cluster
        .nodes
        .iter()
        .enumerate()
        .map(|(i, node)| serve(node, service, format!("node{i}"), Arc::clone(&stop)))
        .collect();
    // The nodes see each other and the backends on the LAN, and answer on the service address.
    let lan_port = SocketAddr::from((cluster.addrs.node(1), PORT + 1));
    servers.push(serve(
        &cluster.nodes[1],
        lan_port,
        "lan".into(),
        Arc::clone(&stop),
    ));
    assert!(connects(&cluster.nodes[0], cluster.addrs.node(1), PORT + 1));

    let spread: BTreeSet<String> = answers(&cluster, 48).into_iter().collect();
    assert!(
        spread.len() >= 2,
        "every connection on one node: {spread:?}"
    );
    assert!(
        !spread.contains("node3"),
        "the fourth node is not routed to yet"
    );

    cluster.route_to(&[3]).unwrap();
    let answers_now: BTreeSet<String> = answers(&cluster, 8).into_iter().collect();
    assert_eq!(answers_now, BTreeSet::from(["node3".to_owned()]));
    cluster.route_to(&[0, 1, 2, 3]).unwrap();
    assert_eq!(cluster.routed(), [0, 1, 2, 3]);

    cluster.set_partitioned(0, true).unwrap();
    assert!(!connects(
        &cluster.nodes[0],
        cluster.addrs.node(1),
        PORT + 1
    ));
    // The client still reaches the partitioned node through the router.
    cluster.route_to(&[0]).unwrap();
    assert_eq!(answers(&cluster, 2), ["node0", "node0"]);
    cluster.set_partitioned(0, false).unwrap();
    assert!(connects(&cluster.nodes[0], cluster.addrs.node(1), PORT + 1));

    stop.store(true, Ordering::Relaxed);
    for server in servers {
        server.join().unwrap();
    }
}
