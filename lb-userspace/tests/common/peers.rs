//! A peers cluster for the e2e tests: backends on one host and `n` stickylb nodes, each a host
//! of its own on one LAN, sharing one peers section (cleartext or TLS, by the extra `[peers]`
//! lines the test gives each node). Read through `stickylb table --json` and the client host.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    time::Duration,
};

use super::{
    haproxy::HaproxyPeer,
    http::{self, in_netns},
    netns::{Exec as _, Lan, NetNs},
    start_daemon, wait_until, write_temp, PinDir, Proc,
};

pub const BACKEND: &str = "back-session";
pub const PEERS_PORT: u16 = 1024;
/// How long the tests give the peers to agree; the target is 2 s after a conflict, the
/// rest is slack for a loaded CI machine (and the resync after a heal, which first needs the
/// dead session to be noticed: 5 s without a message).
pub const SYNC: Duration = Duration::from_secs(15);

/// What differs between the clusters of the tests.
pub struct ClusterSpec {
    /// Backends `be1..be<servers>`.
    pub servers: u16,
    /// Whether each node has a monitor on port 8404 (`Cluster::metrics`).
    pub monitor: bool,
    /// `(name, addr)` added to the peers section after the nodes (e.g. an HAProxy).
    pub extra_members: Vec<(String, String)>,
    /// Node `i`'s extra `[peers]` lines (tls, allow) at index `i`; none past the end.
    pub peers_extra: Vec<String>,
}

/// Backends and `n` stickylb nodes (not started) on one LAN with one peers section. Dropped in
/// field order: the nodes and backends are killed before their namespaces go.
pub struct Cluster {
    pub nodes: Vec<Option<Proc>>,
    pub configs: Vec<PathBuf>,
    servers: u16,
    _pins: Vec<PinDir>,
    _backends: Vec<Proc>,
    pub lan: Lan,
}

/// Servers `be1..be<n>` on ports 8081.. of the backends host.
pub fn servers(n: u16) -> Vec<(String, u16)> {
    (1..=n).map(|i| (format!("be{i}"), 8080 + i)).collect()
}

/// Node `i`'s name among the peers.
pub fn node_name(i: usize) -> String {
    format!("lb-{}", i + 1)
}

impl Cluster {
    pub fn new(tag: &str, net: u8, n: usize, spec: ClusterSpec) -> Cluster {
        let lan = Lan::new(tag, net, n);
        let backends = start_backends(&lan.backends, &lan.backend_addr(), &servers(spec.servers));
        let mut members: Vec<(String, String)> = (0..n)
            .map(|i| (node_name(i), format!("{}:{PEERS_PORT}", lan.lb_addr(i))))
            .collect();
        members.extend(spec.extra_members.iter().cloned());
        let pins: Vec<PinDir> = (0..n).map(|i| PinDir::new(&format!("{tag}{i}"))).collect();
        let configs = (0..n)
            .map(|i| {
                let text = node_config(&lan, i, &pins[i], &members, &spec);
                write_temp(&format!("{tag}-{i}.toml"), &text)
            })
            .collect();
        Cluster {
            nodes: (0..n).map(|_| None).collect(),
            configs,
            servers: spec.servers,
            _pins: pins,
            _backends: backends,
            lan,
        }
    }

    pub fn start(&mut self, i: usize) {
        self.nodes[i] = Some(start_daemon(self.lan.lbs[i].name(), &self.configs[i]));
    }

    pub fn start_all(&mut self) {
        (0..self.nodes.len()).for_each(|i| self.start(i));
    }

    pub fn node(&self, i: usize) -> &Proc {
        self.nodes[i].as_ref().expect("node not started")
    }

    pub fn log(&self, i: usize) -> String {
        self.node(i).output()
    }

    /// The backend that answers `session` through node `i` ("Backend N").
    pub fn served_by(&self, i: usize, session: &str) -> String {
        let addr = format!("{}:80", self.lan.lb_addr(i));
        let cookie = format!("JSESSIONID={session}");
        let response = in_netns(self.lan.client.name(), move || {
            http::get(&addr, "/", Some(&cookie))
        });
        assert_eq!(response.status, 200, "{}", response.text());
        response.text().trim().to_owned()
    }

    /// Node `i`'s table: cookie -> server.
    pub fn table(&self, i: usize) -> BTreeMap<String, String> {
        table_of(&self.configs[i])
    }

    /// Waits until every running node has the same table with at least `min` entries.
    pub fn wait_same_tables(&self, min: usize) -> BTreeMap<String, String> {
        let running: Vec<usize> = (0..self.nodes.len())
            .filter(|&i| self.nodes[i].is_some())
            .collect();
        let mut last = Vec::new();
        let agreed = wait_until(SYNC, || {
            last = running.iter().map(|&i| self.table(i)).collect();
            last[0].len() >= min && last.iter().all(|t| *t == last[0])
        });
        if !agreed {
            for &i in &running {
                eprintln!("--- node {i} log ---\n{}", self.node(i).output());
            }
            panic!("tables did not converge within {SYNC:?}: {last:#?}");
        }
        last.swap_remove(0)
    }

    /// Cuts the peers link between nodes `a` and `b` (both directions); clients and backends
    /// still reach both.
    pub fn cut(&self, a: usize, b: usize) {
        self.prohibit_routes("add", a, b);
    }

    pub fn mend(&self, a: usize, b: usize) {
        self.prohibit_routes("del", a, b);
    }

    fn prohibit_routes(&self, action: &str, a: usize, b: usize) {
        for (from, to) in [(a, b), (b, a)] {
            let to = format!("{}/32", self.lan.lb_addr(to));
            self.lan.lbs[from].exec(&["ip", "route", action, "prohibit", &to]);
        }
    }

    /// Replaces node `i` by a new process (`stickylb reload --upgrade`) that takes its sockets;
    /// returns the finished reload command, whose output has the new process's log.
    pub fn upgrade(&self, i: usize) -> Proc {
        let config = self.configs[i].to_str().unwrap().to_owned();
        let mut upgrade = Proc::spawn(
            "reload",
            self.lan.lbs[i].name(),
            &[
                super::stickylb_bin(),
                "reload",
                "--upgrade",
                "--config",
                &config,
            ],
        );
        assert!(
            wait_until(Duration::from_secs(60), || matches!(
                upgrade.child.try_wait(),
                Ok(Some(_))
            )),
            "{}",
            upgrade.output()
        );
        // The pipe may still hold the last line when the process is gone.
        upgrade.wait_for_output("upgraded: pid", Duration::from_secs(5));
        upgrade
    }

    /// Balances `sessions` through `haproxy` (from the client host) and waits until node `i`
    /// has learned each choice; returns HAProxy's answers ("Backend N").
    pub fn learn_from_haproxy(
        &self,
        i: usize,
        haproxy: &HaproxyPeer,
        sessions: &[String],
    ) -> Vec<String> {
        let answers: Vec<String> = sessions
            .iter()
            .map(|s| haproxy.served_by(self.lan.client.name(), s))
            .collect();
        let learned = wait_until(SYNC, || {
            let ours = self.table(i);
            sessions
                .iter()
                .zip(&answers)
                .all(|(s, a)| ours.get(s) == Some(&server_of(a)))
        });
        assert!(
            learned,
            "stickylb did not learn HAProxy's sessions: {:#?}\n{}\n--- haproxy ---\n{}",
            self.table(i),
            self.log(i),
            haproxy.proc.output()
        );
        answers
    }

    /// Balances `sessions` through node `i` and waits until `haproxy`'s stick table has each
    /// choice by server name; then HAProxy must route each session by it.
    pub fn teach_haproxy(&self, i: usize, haproxy: &HaproxyPeer, sessions: &[String]) {
        let chosen: Vec<String> = sessions.iter().map(|s| self.served_by(i, s)).collect();
        let taught = wait_until(SYNC, || {
            let theirs = haproxy.table();
            sessions
                .iter()
                .zip(&chosen)
                .all(|(s, a)| theirs.get(s) == Some(&server_of(a)))
        });
        assert!(
            taught,
            "HAProxy did not learn our sessions: {:#?}\n{}\n--- haproxy ---\n{}",
            haproxy.table(),
            self.log(i),
            haproxy.proc.output()
        );
        for (session, answer) in sessions.iter().zip(&chosen) {
            assert_eq!(
                &haproxy.served_by(self.lan.client.name(), session),
                answer,
                "{session}"
            );
        }
    }

    /// Node `i`'s `/metrics` (the cluster needs `monitor`).
    pub fn metrics(&self, i: usize) -> String {
        let addr = format!("{}:8404", self.lan.lb_addr(i));
        in_netns(self.lan.client.name(), move || {
            http::get(&addr, "/metrics", None)
        })
        .text()
    }

    /// The cluster's backends as `server` lines of an HAProxy backend.
    pub fn haproxy_servers(&self) -> String {
        servers(self.servers)
            .iter()
            .map(|(name, port)| format!("    server {name} {}:{port}\n", self.lan.backend_addr()))
            .collect()
    }
}

fn node_config(
    lan: &Lan,
    i: usize,
    pin: &PinDir,
    members: &[(String, String)],
    spec: &ClusterSpec,
) -> String {
    let servers: String = servers(spec.servers)
        .iter()
        .map(|(name, port)| {
            format!(
                "  {{ name = \"{name}\", addr = \"{}:{port}\" }},\n",
                lan.backend_addr()
            )
        })
        .collect();
    let members: String = members
        .iter()
        .map(|(name, addr)| format!("  {{ name = \"{name}\", addr = \"{addr}\" }},\n"))
        .collect();
    let lb = lan.lb_addr(i);
    let monitor = if spec.monitor {
        format!("[monitor]\nbind = \"{lb}:8404\"\n\n")
    } else {
        String::new()
    };
    let peers_extra = spec
        .peers_extra
        .get(i)
        .map(|lines| format!("{lines}\n"))
        .unwrap_or_default();
    format!(
        r#"
{head}
[[backend]]
name = "{BACKEND}"
expire = "30m"
health_check = {{ path = "/", interval = "200ms", timeout = "500ms", rise = 1, fall = 1 }}
servers = [
{servers}]

{monitor}[peers]
bind = "{lb}:{PEERS_PORT}"
{peers_extra}members = [
{members}]
"#,
        head = super::config_head(node_name(i), pin, &lb, BACKEND),
    )
}

/// One backend process per server in `ns`, answering `Backend N`.
pub fn start_backends(ns: &NetNs, addr: &str, servers: &[(String, u16)]) -> Vec<Proc> {
    servers
        .iter()
        .map(|(name, port)| {
            let listen = format!("{addr}:{port}=Backend {}", &name[2..]);
            let proc = Proc::spawn(
                name,
                ns.name(),
                &[super::backend_bin(), "--listen", &listen],
            );
            proc.wait_for_output("ready", Duration::from_secs(10));
            proc
        })
        .collect()
}

/// The pinned table of the node configured by `config` (`stickylb table --json`, which shows
/// whole cookies; the monitor's `/api/table` masks them), as cookie -> server.
pub fn table_of(config: &Path) -> BTreeMap<String, String> {
    let out = std::process::Command::new(super::stickylb_bin())
        .args(["table", "--json", "--config"])
        .arg(config)
        .output()
        .unwrap();
    let body = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "stickylb table: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let entries: serde_json::Value =
        serde_json::from_str(&body).unwrap_or_else(|e| panic!("{e}: {body}"));
    entries
        .as_array()
        .into_iter()
        .flatten()
        .filter(|e| e["backend"] == BACKEND)
        .map(|e| {
            (
                e["cookie"].as_str().unwrap().to_owned(),
                e["server"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

/// "Backend 3" -> "be3".
pub fn server_of(answer: &str) -> String {
    format!("be{}", answer.trim_start_matches("Backend "))
}
