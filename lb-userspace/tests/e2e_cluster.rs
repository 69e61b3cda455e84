//! A cluster of five stickylb nodes behind a router that spreads connections over them by ECMP
//! (netns-kit's `Cluster`), every node a peer of every other (docs/PEERS.md, "A cluster"): the
//! original demo's sessions, made and learned through whichever node a connection lands on,
//! reach the same server through all of them; a node killed and restarted keeps its pinned
//! table and catches up; a node joins and one leaves by `reload --upgrade`; a partition heals
//! to identical tables; with `balance = "consistent"` two nodes that cannot talk choose alike.
//! Seven nodes started at once settle into a full mesh.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test code: a failed setup step must fail the test loudly"
)]

mod common;

use std::{
    collections::{BTreeMap, BTreeSet},
    path::PathBuf,
    time::{Duration, Instant},
};

use common::{
    demo_cookie,
    http::{self, in_netns},
    netns::Cluster,
    peers::{node_name, server_of, servers, start_backends, table_of, BACKEND, PEERS_PORT, SYNC},
    privileged, start_daemon, stickylb_bin, wait_until, write_temp, PinDir, Proc,
};

/// Backends `be1..be7`, as in the original demo.
const SERVERS: u16 = 7;
const MONITOR_PORT: u16 = 8404;

/// Nodes behind the router, their pinned tables, and the backends. Dropped in field order: the
/// processes before the namespaces.
struct Rig {
    nodes: Vec<Option<Proc>>,
    /// Node i's configuration, rewritten when the members change.
    configs: Vec<PathBuf>,
    pins: Vec<PinDir>,
    /// The nodes listed in `[peers].members` of the configurations written from now on.
    members: Vec<usize>,
    balance: &'static str,
    tag: &'static str,
    _backends: Vec<Proc>,
    net: Cluster,
}

impl Rig {
    /// `n` nodes, all routed to and all members; none started.
    fn new(tag: &'static str, net: u8, n: usize, balance: &'static str) -> Rig {
        let net = Cluster::new(tag, net, n);
        let backends = start_backends(&net.backends, &net.backend_addr(), &servers(SERVERS));
        let mut rig = Rig {
            nodes: Vec::new(),
            configs: Vec::new(),
            pins: Vec::new(),
            members: (0..n).collect(),
            balance,
            tag,
            _backends: backends,
            net,
        };
        for _ in 0..n {
            rig.add_config();
        }
        rig
    }

    /// The pin directory and configuration of the next node (the cluster has its namespace).
    fn add_config(&mut self) {
        let i = self.configs.len();
        self.pins.push(PinDir::new(&format!("{}{i}", self.tag)));
        self.configs.push(PathBuf::new());
        self.nodes.push(None);
        self.write_config(i);
    }

    /// Writes node `i`'s configuration with the current members.
    fn write_config(&mut self, i: usize) {
        let text = self.config_text(i);
        self.configs[i] = write_temp(&format!("{}-{i}.toml", self.tag), &text);
    }

    fn config_text(&self, i: usize) -> String {
        let servers: String = servers(SERVERS)
            .iter()
            .map(|(name, port)| {
                let addr = self.net.backend_addr();
                format!("  {{ name = \"{name}\", addr = \"{addr}:{port}\" }},\n")
            })
            .collect();
        let members: String = self
            .members
            .iter()
            .map(|&m| {
                let (name, addr) = (node_name(m), self.net.node_addr(m));
                format!("  {{ name = \"{name}\", addr = \"{addr}:{PEERS_PORT}\" }},\n")
            })
            .collect();
        let pin = &self.pins[i];
        format!(
            r#"
{head}
[[backend]]
name = "{BACKEND}"
balance = "{balance}"
health_check = {{ path = "/", interval = "200ms", timeout = "500ms", rise = 1, fall = 1 }}
servers = [
{servers}]

[monitor]
bind = "{node}:{MONITOR_PORT}"

[peers]
bind = "{node}:{PEERS_PORT}"
members = [
{members}]
"#,
            head = common::config_head(node_name(i), pin, self.net.service_addr(), BACKEND),
            node = self.net.node_addr(i),
            balance = self.balance,
        )
    }

    fn start(&mut self, i: usize) {
        self.nodes[i] = Some(start_daemon(self.net.nodes[i].name(), &self.configs[i]));
    }

    fn start_all(&mut self) {
        (0..self.nodes.len()).for_each(|i| self.start(i));
    }

    /// Starts every node without waiting for one before the next.
    fn start_all_at_once(&mut self) {
        for i in 0..self.nodes.len() {
            let config = self.configs[i].to_str().unwrap();
            let argv = [stickylb_bin(), "--log", "info", "run", "--config", config];
            self.nodes[i] = Some(Proc::spawn("stickylb", self.net.nodes[i].name(), &argv));
        }
        for i in 0..self.nodes.len() {
            self.node(i)
                .wait_for_output("stickylb started", Duration::from_secs(30));
        }
    }

    fn node(&self, i: usize) -> &Proc {
        self.nodes[i].as_ref().expect("node not started")
    }

    /// `kill -9`: nothing of the daemon runs after it (its pinned maps stay).
    fn kill(&mut self, i: usize) {
        let proc = self.nodes[i].take().expect("node not started");
        proc.stop_with(libc::SIGKILL);
    }

    /// Stops node `i` as an operator would (SIGTERM).
    fn stop(&mut self, i: usize) {
        let proc = self.nodes[i].take().expect("node not started");
        proc.stop_with(libc::SIGTERM);
    }

    /// Node `i` replaced by a new process with the configuration now written
    /// (`stickylb reload --upgrade`).
    fn upgrade(&mut self, i: usize) {
        let config = self.configs[i].to_str().unwrap().to_owned();
        let argv = [stickylb_bin(), "reload", "--upgrade", "--config", &config];
        let mut upgrade = Proc::spawn("reload", self.net.nodes[i].name(), &argv);
        let done = wait_until(Duration::from_secs(60), || {
            matches!(upgrade.child.try_wait(), Ok(Some(_)))
        });
        assert!(done, "{}", upgrade.output());
        // The pipe may still hold the last line when the process is gone.
        upgrade.wait_for_output("upgraded: pid", Duration::from_secs(5));
    }

    /// Node `i`'s pinned table: cookie -> server (readable with the daemon dead too).
    fn table(&self, i: usize) -> BTreeMap<String, String> {
        table_of(&self.configs[i])
    }

    /// Waits until `nodes` have the same table holding every one of `sessions`; returns it.
    fn wait_same_tables(&self, nodes: &[usize], sessions: &[String]) -> BTreeMap<String, String> {
        let mut last = Vec::new();
        let agreed = wait_until(SYNC, || {
            last = nodes.iter().map(|&i| self.table(i)).collect();
            sessions.iter().all(|s| last[0].contains_key(s)) && last.iter().all(|t| *t == last[0])
        });
        if !agreed {
            for &i in nodes.iter().filter(|&&i| self.nodes[i].is_some()) {
                eprintln!("--- node {i} log ---\n{}", self.node(i).output());
            }
            panic!("tables of {nodes:?} did not converge within {SYNC:?}: {last:#?}");
        }
        last.swap_remove(0)
    }

    /// The client's `GET path` with `session` (if any) to the service address: each on a new
    /// connection, which the router puts on a node by its ports. The answers ("Backend N").
    fn through_router(&self, requests: &[(&str, Option<String>)]) -> Vec<http::Response> {
        let addr = format!("{}:80", self.net.service_addr());
        let requests: Vec<(String, Option<String>)> = requests
            .iter()
            .map(|(path, s)| ((*path).to_owned(), s.clone()))
            .collect();
        in_netns(self.net.client.name(), move || {
            requests
                .iter()
                .map(|(path, session)| {
                    let cookie = session.as_ref().map(|s| format!("JSESSIONID={s}"));
                    http::get(&addr, path, cookie.as_deref())
                })
                .collect()
        })
    }

    /// What serves `session` through the router, once per request, `times` requests.
    fn answers(&self, session: &str, times: usize) -> Vec<String> {
        let requests = vec![("/", Some(session.to_owned())); times];
        self.through_router(&requests)
            .iter()
            .map(|r| {
                assert_eq!(r.status, 200, "{}", r.text());
                r.text().trim().to_owned()
            })
            .collect()
    }

    /// What serves `session` through node `i` itself (a request made on the node, to the
    /// service address: no router, no other node).
    fn served_by(&self, i: usize, session: &str) -> String {
        let addr = format!("{}:80", self.net.service_addr());
        let cookie = format!("JSESSIONID={session}");
        let response = in_netns(self.net.nodes[i].name(), move || {
            http::get(&addr, "/", Some(&cookie))
        });
        assert_eq!(response.status, 200, "{}", response.text());
        response.text().trim().to_owned()
    }

    /// Requests node `i` has routed since it started (its monitor's counters).
    fn routed(&self, i: usize) -> u64 {
        let addr = format!("{}:{MONITOR_PORT}", self.net.node_addr(i));
        let body = in_netns(self.net.client.name(), move || {
            http::get(&addr, "/api/servers", None)
        })
        .text();
        let backends: serde_json::Value = serde_json::from_str(&body).unwrap();
        let stats = &backends[0]["stats"];
        ["sticky_hits", "new_sessions", "redispatches", "no_cookie"]
            .iter()
            .map(|k| stats[*k].as_u64().unwrap())
            .sum()
    }

    /// The nodes that have routed a request, among `nodes`.
    fn landed_on(&self, nodes: &[usize]) -> BTreeSet<usize> {
        nodes
            .iter()
            .copied()
            .filter(|&i| self.routed(i) > 0)
            .collect()
    }
}

/// Every answer is `expected`.
fn assert_sticky(answers: &[String], expected: &str, session: &str) {
    assert!(
        answers.iter().all(|a| a == expected),
        "{session}: {answers:?}, expected {expected}"
    );
}

#[test]
fn sessions_made_and_learned_on_any_node_reach_the_same_server_through_every_node() {
    if !privileged() {
        return;
    }
    let mut rig = Rig::new("cls", 140, 5, "roundrobin");
    rig.start_all();
    let all: Vec<usize> = (0..5).collect();

    // The original demo's sessions: a client cookie no node knows yet, balanced where the
    // connection lands; then asked for on new connections, which land all over the cluster.
    let sessions: Vec<String> = (1..=14).map(demo_cookie).collect();
    let first: Vec<String> = sessions
        .iter()
        .map(|s| rig.answers(s, 1).remove(0))
        .collect();
    // Sessions learned from the servers' Set-Cookie: the login has no cookie.
    let learned: Vec<String> = (1..=6).map(|n| format!("learned-{n}")).collect();
    let paths: Vec<String> = learned
        .iter()
        .map(|c| format!("/login?setcookie={c}"))
        .collect();
    let logins: Vec<(&str, Option<String>)> = paths.iter().map(|p| (p.as_str(), None)).collect();
    let login_answers = rig.through_router(&logins);
    for (response, cookie) in login_answers.iter().zip(&learned) {
        let set = response.header("set-cookie").unwrap_or_default();
        assert!(set.starts_with(&format!("JSESSIONID={cookie}")), "{set}");
    }

    let everything: Vec<String> = sessions.iter().chain(&learned).cloned().collect();
    let table = rig.wait_same_tables(&all, &everything);
    let logged_in = login_answers.iter().map(|r| r.text().trim().to_owned());
    let expected: Vec<String> = first.iter().cloned().chain(logged_in).collect();
    for (session, answer) in everything.iter().zip(&expected) {
        assert_eq!(table[session], server_of(answer), "{session}");
        assert_sticky(&rig.answers(session, 5), answer, session);
    }
    // Round robin on five nodes still spreads the original demo's sessions over the servers.
    let used: BTreeSet<&String> = table.values().collect();
    assert!(used.len() >= 3, "{table:#?}");
    let landed = rig.landed_on(&all);
    assert!(landed.len() >= 2, "every connection landed on {landed:?}");
    eprintln!("connections landed on nodes {landed:?}");
}

#[test]
fn a_node_killed_and_restarted_keeps_its_table_and_catches_up() {
    if !privileged() {
        return;
    }
    let mut rig = Rig::new("clk", 141, 5, "roundrobin");
    rig.start_all();
    let all: Vec<usize> = (0..5).collect();
    let before: Vec<String> = (1..=8).map(demo_cookie).collect();
    let answers: Vec<String> = before.iter().map(|s| rig.answers(s, 1).remove(0)).collect();
    let table = rig.wait_same_tables(&all, &before);

    // kill -9 node 3; the router stops sending it connections (as its routing daemon would
    // withdraw it). Its pinned table is still there.
    rig.kill(2);
    rig.net.route_to(&[0, 1, 3, 4]);
    assert_eq!(rig.table(2), table);
    let during: Vec<String> = (20..=27).map(demo_cookie).collect();
    for session in &during {
        rig.answers(session, 1);
    }
    rig.wait_same_tables(&[0, 1, 3, 4], &during);

    // Restarted, it serves its old sessions from its table and learns the new ones.
    rig.start(2);
    for (session, answer) in before.iter().zip(&answers) {
        assert_eq!(&rig.served_by(2, session), answer, "{session}");
    }
    let everything: Vec<String> = before.iter().chain(&during).cloned().collect();
    let table = rig.wait_same_tables(&all, &everything);
    rig.net.route_to(&all);
    for session in &during {
        let expected = table[session].trim_start_matches("be").to_owned();
        assert_sticky(
            &rig.answers(session, 4),
            &format!("Backend {expected}"),
            session,
        );
        assert_eq!(server_of(&rig.served_by(2, session)), table[session]);
    }
}

#[test]
fn a_node_joins_and_one_leaves_by_reload_upgrade() {
    if !privileged() {
        return;
    }
    let mut rig = Rig::new("clj", 142, 4, "roundrobin");
    rig.start_all();
    let four: Vec<usize> = (0..4).collect();
    let early: Vec<String> = (1..=10).map(demo_cookie).collect();
    for session in &early {
        rig.answers(session, 1);
    }
    let table = rig.wait_same_tables(&four, &early);

    // A fifth node: every configuration lists it; the new node starts, the others are
    // upgraded; it learns the whole table from them, then gets connections.
    let fifth = rig.net.add_node();
    rig.members.push(fifth);
    rig.add_config();
    for i in 0..4 {
        rig.write_config(i);
    }
    rig.start(fifth);
    for i in 0..4 {
        rig.upgrade(i);
    }
    let five: Vec<usize> = (0..5).collect();
    let joined = rig.wait_same_tables(&five, &early);
    assert_eq!(joined, table);
    rig.node(fifth)
        .wait_for_output("full resync from peer done", Duration::from_secs(10));
    rig.net.route_to(&five);
    for session in &early {
        assert_eq!(server_of(&rig.served_by(fifth, session)), table[session]);
    }

    // Node 1 leaves: the router stops sending it connections, it stops, the others forget it
    // as a member. The sessions it made stay with them.
    let made_on_first: Vec<String> = (40..=45).map(demo_cookie).collect();
    let on_first: Vec<String> = made_on_first.iter().map(|s| rig.served_by(0, s)).collect();
    let mut everything = early.clone();
    everything.extend(made_on_first.iter().cloned());
    rig.wait_same_tables(&five, &everything);
    rig.net.route_to(&[1, 2, 3, 4]);
    rig.stop(0);
    rig.members.retain(|&m| m != 0);
    let rest: Vec<usize> = (1..5).collect();
    for &i in &rest {
        rig.write_config(i);
        rig.upgrade(i);
    }
    let late = demo_cookie(60);
    rig.answers(&late, 1);
    everything.push(late);
    rig.wait_same_tables(&rest, &everything);
    for (session, answer) in made_on_first.iter().zip(&on_first) {
        assert_sticky(&rig.answers(session, 4), answer, session);
    }
    assert!(!rig.node(1).output().contains("panicked"));
}

#[test]
fn a_healed_partition_ends_with_identical_tables_on_every_node() {
    if !privileged() {
        return;
    }
    let mut rig = Rig::new("clp", 143, 5, "roundrobin");
    rig.start_all();
    let all: Vec<usize> = (0..5).collect();
    let probe = vec![demo_cookie(1)];
    rig.answers(&probe[0], 1);
    rig.wait_same_tables(&all, &probe);

    // Node 5 is cut off from its peers; the router still sends it its share of connections,
    // so sessions are made on both sides (and a few on both, differently).
    rig.net.partition(4);
    let during: Vec<String> = (100..140).map(demo_cookie).collect();
    for session in &during {
        rig.answers(session, 2);
    }
    // Long enough for both sides to give their sessions up as dead: healing then needs new
    // sessions and resyncs, not only TCP's retransmissions.
    let gave_up = wait_until(SYNC, || {
        rig.node(4)
            .output()
            .contains("peer session closed: no message from the peer")
    });
    assert!(gave_up, "{}", rig.node(4).output());
    let cut_off = rig.table(4);
    let rest = rig.table(0);
    assert!(
        during
            .iter()
            .any(|s| cut_off.contains_key(s) != rest.contains_key(s)),
        "no session was made on one side only"
    );

    rig.net.heal(4);
    let healed = Instant::now();
    let mut everything = probe.clone();
    everything.extend(during.iter().cloned());
    let table = rig.wait_same_tables(&all, &everything);
    eprintln!(
        "identical tables ({} entries) {:?} after healing",
        table.len(),
        healed.elapsed()
    );
    for session in &during {
        let expected = format!("Backend {}", table[session].trim_start_matches("be"));
        assert_sticky(&rig.answers(session, 3), &expected, session);
    }
}

#[test]
fn consistent_balance_makes_two_nodes_that_cannot_talk_choose_the_same_server() {
    if !privileged() {
        return;
    }
    let mut rig = Rig::new("clc", 144, 5, "consistent");
    rig.start_all();
    rig.net.partition(0);
    // The same new cookies through node 1 and node 2, which cannot tell each other.
    let sessions: Vec<String> = (200..230).map(demo_cookie).collect();
    let mut chosen = BTreeSet::new();
    for session in &sessions {
        let (a, b) = (rig.served_by(0, session), rig.served_by(1, session));
        assert_eq!(a, b, "{session}");
        chosen.insert(a);
    }
    assert!(chosen.len() >= 4, "30 cookies over 7 servers: {chosen:?}");
    // Both tables hold them alike, with nothing to reconcile once the link is back.
    let (cut_off, other) = (rig.table(0), rig.table(1));
    for session in &sessions {
        assert_eq!(cut_off.get(session), other.get(session), "{session}");
    }
    rig.net.heal(0);
    let all: Vec<usize> = (0..5).collect();
    rig.wait_same_tables(&all, &sessions);
}

#[test]
fn seven_nodes_in_a_full_mesh_share_every_session() {
    if !privileged() {
        return;
    }
    let mut rig = Rig::new("cl7", 146, 7, "roundrobin");
    // All at once: each pair dials both ways and must settle on one session.
    rig.start_all_at_once();
    let all: Vec<usize> = (0..7).collect();
    let sessions: Vec<String> = (1..=21).map(demo_cookie).collect();
    let answers: Vec<String> = sessions
        .iter()
        .map(|s| rig.answers(s, 1).remove(0))
        .collect();
    let table = rig.wait_same_tables(&all, &sessions);
    for (session, answer) in sessions.iter().zip(&answers) {
        assert_eq!(table[session], server_of(answer), "{session}");
    }
    // Every node holds a session with each of the six others.
    for i in all {
        let addr = format!("{}:{MONITOR_PORT}", rig.net.node_addr(i));
        let peers = in_netns(rig.net.client.name(), move || {
            http::get(&addr, "/metrics", None)
        })
        .text();
        let up = peers
            .lines()
            .filter(|l| l.starts_with("stickylb_peer_up{") && l.ends_with(" 1"))
            .count();
        assert_eq!(up, 6, "node {i}:\n{peers}");
    }
}
