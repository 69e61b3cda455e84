//! End to end, in network namespaces (client, lb, backends): the operator's server controls.
//! `stickylb server ... drain|maint|ready|weight` against a running daemon, the routing that
//! follows, the settings kept across SIGHUP, `--upgrade`, a restart and `kill -9`, and
//! `maxconn` with its queue.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test code: a failed setup step must fail the test loudly"
)]

mod common;

use std::{
    collections::HashMap,
    path::PathBuf,
    process::{Command, Output},
    time::Duration,
};

use common::{
    backend_bin, http, privileged, start_daemon, stickylb_bin, wait_until, write_temp, PinDir,
    Proc, Topology,
};

const BACKEND: &str = "back-session";

/// Three hosts with `servers` (name, port, extra server keys) running, and the lb's config.
struct Rig {
    /// Kept alive for the test.
    _backends: Vec<Proc>,
    cfg: PathBuf,
    pin: PinDir,
    topo: Topology,
}

impl Rig {
    fn new(tag: &str, net: u8, servers: &[(&str, u16, &str)], backend_extra: &str) -> Rig {
        let topo = Topology::new(tag, net);
        let pin = PinDir::new(tag);
        let backends = servers
            .iter()
            .map(|(name, port, _)| {
                let listen = format!("{}:{port}={name}", topo.backend_addr());
                let proc = Proc::spawn(
                    name,
                    topo.backends.name(),
                    &[backend_bin(), "--listen", &listen],
                );
                proc.wait_for_output("ready", Duration::from_secs(10));
                proc
            })
            .collect();
        let cfg = write_temp(&format!("{tag}.toml"), "");
        let rig = Rig {
            _backends: backends,
            cfg,
            pin,
            topo,
        };
        rig.write_config(servers, backend_extra);
        rig
    }

    fn write_config(&self, servers: &[(&str, u16, &str)], backend_extra: &str) {
        let servers: String = servers
            .iter()
            .map(|(name, port, extra)| {
                format!(
                    "  {{ name = \"{name}\", addr = \"{}:{port}\"{extra} }},\n",
                    self.topo.backend_addr()
                )
            })
            .collect();
        let text = format!(
            r#"
[instance]
name = "lb-op"
pin_dir = "{pin}"
control_socket = "{control}"

[[frontend]]
name = "www"
bind = "{lb}:80"
backend = "{BACKEND}"

[[backend]]
name = "{BACKEND}"
balance = "roundrobin"
health_check = {{ path = "/", interval = "200ms", timeout = "500ms", rise = 1, fall = 1 }}
{backend_extra}
servers = [
{servers}]

[monitor]
bind = "{lb}:8404"
"#,
            pin = self.pin.0.display(),
            control = self.pin.control_socket().display(),
            lb = self.topo.lb_addr(),
        );
        std::fs::write(&self.cfg, text).unwrap();
    }

    fn start(&self) -> Proc {
        start_daemon(self.topo.lb.name(), &self.cfg)
    }

    /// `stickylb ARGS --config CFG`, from the host (the control socket is a file).
    fn cli(&self, args: &[&str]) -> Output {
        Command::new(stickylb_bin())
            .args(args)
            .arg("--config")
            .arg(&self.cfg)
            .output()
            .unwrap()
    }

    /// `stickylb server BACKEND/SERVER ACTION...`, which must succeed; its one line.
    fn server(&self, server: &str, action: &[&str]) -> String {
        let target = format!("{BACKEND}/{server}");
        let mut args = vec!["server", target.as_str()];
        args.extend_from_slice(action);
        let out = self.cli(&args);
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "stickylb {args:?} failed: {}{}",
            stdout,
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(stdout.lines().count(), 1, "{stdout}");
        stdout
    }

    /// The server that answers a request with `cookie` (`JSESSIONID`), or none.
    fn served_by(&self, cookie: Option<&str>) -> String {
        let addr = format!("{}:80", self.topo.lb_addr());
        let cookie = cookie.map(|c| format!("JSESSIONID={c}"));
        let response = http::in_netns(self.topo.client.name(), move || {
            http::get(&addr, "/", cookie.as_deref())
        });
        assert_eq!(response.status, 200, "{response:?}");
        response.text().trim().to_owned()
    }

    /// How many of `count` new sessions (cookies `tag-N`) each server took.
    fn new_sessions(&self, tag: &str, count: usize) -> HashMap<String, usize> {
        let addr = format!("{}:80", self.topo.lb_addr());
        let tag = tag.to_owned();
        http::in_netns(self.topo.client.name(), move || {
            let mut seen: HashMap<String, usize> = HashMap::new();
            for i in 0..count {
                let cookie = format!("JSESSIONID={tag}-{i}");
                let response = http::get(&addr, "/", Some(&cookie));
                assert_eq!(response.status, 200, "{response:?}");
                *seen.entry(response.text().trim().to_owned()).or_default() += 1;
            }
            seen
        })
    }

    /// The pid answering on the control socket, if one does.
    fn daemon_pid(&self) -> Option<i32> {
        stickylb::control::running_pid(&self.pin.control_socket())
            .and_then(|pid| i32::try_from(pid).ok())
    }

    /// `/api/servers`: each server's name, admin state and weight.
    fn api_servers(&self) -> Vec<(String, String, u64)> {
        let addr = format!("{}:8404", self.topo.lb_addr());
        let response = http::in_netns(self.topo.client.name(), move || {
            http::get(&addr, "/api/servers", None)
        });
        let backends: serde_json::Value = serde_json::from_slice(&response.body).unwrap();
        backends[0]["servers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| {
                (
                    s["server"].as_str().unwrap().to_owned(),
                    s["admin"].as_str().unwrap().to_owned(),
                    s["weight"].as_u64().unwrap(),
                )
            })
            .collect()
    }
}

fn three() -> Vec<(&'static str, u16, &'static str)> {
    vec![("be1", 8081, ""), ("be2", 8082, ""), ("be3", 8083, "")]
}

#[test]
fn drain_keeps_sessions_maint_moves_them_ready_restores_and_weights_share_new_ones() {
    if !privileged() {
        return;
    }
    let rig = Rig::new("opd", 171, &three(), "");
    let daemon = rig.start();

    assert_eq!(rig.served_by(Some("kept")), "be1");
    let said = rig.server("be1", &["drain"]);
    assert!(said.contains("ready -> drain"), "{said}");
    for _ in 0..5 {
        assert_eq!(rig.served_by(Some("kept")), "be1");
    }
    let seen = rig.new_sessions("drained", 100);
    assert_eq!(seen.get("be1"), None, "{seen:?}");
    assert_eq!(seen.values().sum::<usize>(), 100);
    assert_ne!(rig.served_by(None), "be1");

    rig.server("be1", &["maint"]);
    let moved = rig.served_by(Some("kept"));
    assert_ne!(moved, "be1");
    assert_eq!(rig.served_by(Some("kept")), moved);
    assert_eq!(rig.new_sessions("maint", 20).get("be1"), None);

    rig.server("be1", &["ready"]);
    let seen = rig.new_sessions("ready", 30);
    assert_eq!(seen.get("be1"), Some(&10), "{seen:?}");

    // 3:1:1 by weight: be1 gets 3 of every 5 new sessions.
    let said = rig.server("be1", &["weight", "3"]);
    assert!(said.contains("weight 1 -> 3"), "{said}");
    let seen = rig.new_sessions("weighted", 500);
    let (be1, be2) = (seen["be1"] as f64, seen["be2"] as f64);
    assert!((be1 / be2 - 3.0).abs() <= 0.15, "{seen:?}");

    // What the command line says when it cannot.
    let out = rig.cli(&["server", &format!("{BACKEND}/nope"), "drain"]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("no server \"nope\""),
        "{out:?}"
    );
    let out = rig.cli(&["server", "nope/be1", "drain"]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("no backend \"nope\""),
        "{out:?}"
    );
    let out = rig.cli(&["server", &format!("{BACKEND}/be1"), "weight", "300"]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("0 to 256"),
        "{out:?}"
    );
    daemon.stop_with(libc::SIGTERM);
    let out = rig.cli(&["server", &format!("{BACKEND}/be1"), "ready"]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("no running instance"),
        "{out:?}"
    );
}

#[test]
fn admin_states_and_weights_survive_sighup_upgrade_restart_and_kill_9() {
    if !privileged() {
        return;
    }
    let rig = Rig::new("opk", 172, &three(), "");
    let daemon = rig.start();
    rig.server("be1", &["drain"]);
    rig.server("be2", &["maint"]);
    rig.server("be3", &["weight", "5"]);
    let expected = vec![
        ("be1".to_owned(), "drain".to_owned(), 1),
        ("be2".to_owned(), "maint".to_owned(), 1),
        ("be3".to_owned(), "ready".to_owned(), 5),
    ];
    let holds = |rig: &Rig, when: &str| {
        assert_eq!(rig.api_servers(), expected, "after {when}");
        let seen = rig.new_sessions(when, 6);
        assert_eq!(seen.get("be3"), Some(&6), "after {when}: {seen:?}");
    };
    holds(&rig, "commands");

    daemon.signal(libc::SIGHUP);
    assert!(wait_until(Duration::from_secs(10), || daemon
        .output()
        .contains("configuration unchanged")));
    holds(&rig, "sighup");

    let mut upgrade = Proc::spawn(
        "upgrade",
        rig.topo.lb.name(),
        &[
            stickylb_bin(),
            "--log",
            "info",
            "reload",
            "--upgrade",
            "--config",
            rig.cfg.to_str().unwrap(),
        ],
    );
    assert!(
        wait_until(Duration::from_secs(60), || matches!(
            upgrade.child.try_wait(),
            Ok(Some(status)) if status.success()
        )),
        "reload --upgrade did not succeed:\n{}",
        upgrade.output()
    );
    assert!(wait_until(Duration::from_secs(30), || daemon
        .output()
        .contains("stopped")));
    drop(daemon);
    holds(&rig, "upgrade");

    // kill -9 of the upgraded daemon: no drain, no goodbye.
    let pid = rig.daemon_pid().expect("the upgraded daemon answers");
    // SAFETY: kill(2) takes plain integers; the pid is the daemon this test started.
    unsafe { libc::kill(pid, libc::SIGKILL) };
    assert!(wait_until(Duration::from_secs(10), || rig
        .daemon_pid()
        .is_none()));
    drop(upgrade);
    let daemon = rig.start();
    holds(&rig, "kill9");
    daemon.stop_with(libc::SIGTERM);
    let daemon = rig.start();
    holds(&rig, "restart");

    // The map is readable with bpftool, decoded.
    let map = rig.pin.0.join("lb-op/v1/SERVER_ADMIN");
    let dump = Command::new("bpftool")
        .args(["map", "dump", "pinned"])
        .arg(&map)
        .output()
        .unwrap();
    let dump = String::from_utf8_lossy(&dump.stdout);
    assert!(dump.contains("\"server\": \"be2\""), "{dump}");

    // A server removed from the configuration forgets its state; added back, it is ready.
    let without_be2 = [("be1", 8081, ""), ("be3", 8083, "")];
    rig.write_config(&without_be2, "");
    daemon.signal(libc::SIGHUP);
    assert!(wait_until(Duration::from_secs(10), || daemon
        .output()
        .contains("-be2")));
    rig.write_config(&three(), "");
    daemon.signal(libc::SIGHUP);
    assert!(wait_until(Duration::from_secs(10), || daemon
        .output()
        .contains("+be2")));
    let states = rig.api_servers();
    assert_eq!(
        states[1],
        ("be2".to_owned(), "ready".to_owned(), 1),
        "{states:?}"
    );
    assert_eq!(states[0].1, "drain");
}

#[test]
fn maxconn_holds_requests_in_a_queue_and_a_queue_timeout_answers_503() {
    if !privileged() {
        return;
    }
    let rig = Rig::new(
        "opm",
        173,
        &[("be1", 8081, ", maxconn = 2")],
        "queue_timeout = \"20s\"",
    );
    let daemon = rig.start();
    let addr = format!("{}:80", rig.topo.lb_addr());

    let slow = |count: usize, ms: u64| -> Vec<http::Response> {
        let addr = addr.clone();
        http::in_netns(rig.topo.client.name(), move || {
            let threads: Vec<_> = (0..count)
                .map(|i| {
                    let addr = addr.clone();
                    std::thread::spawn(move || {
                        let cookie = format!("JSESSIONID=slow-{ms}-{i}");
                        http::get(&addr, &format!("/slow/{ms}"), Some(&cookie))
                    })
                })
                .collect();
            threads.into_iter().map(|t| t.join().unwrap()).collect()
        })
    };

    let responses = slow(10, 300);
    let statuses: Vec<u16> = responses.iter().map(|r| r.status).collect();
    assert_eq!(statuses, vec![200; 10], "{responses:?}");
    let most = responses
        .iter()
        .map(|r| r.header("x-in-flight").unwrap().parse::<u64>().unwrap())
        .max()
        .unwrap();
    assert!(most <= 2, "the server had {most} requests at once");
    let metrics_addr = format!("{}:8404", rig.topo.lb_addr());
    let metrics = http::in_netns(rig.topo.client.name(), move || {
        http::get(&metrics_addr, "/metrics", None).text()
    });
    let queued: u64 = metrics
        .lines()
        .find(|l| l.starts_with("stickylb_backend_queued_total{"))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
        .unwrap();
    assert!(queued >= 8, "{queued} queued:\n{metrics}");

    // A queue timeout of 500 ms (reloaded in place): two of four 3-second requests are served,
    // the two that wait get 503.
    rig.write_config(
        &[("be1", 8081, ", maxconn = 2")],
        "queue_timeout = \"500ms\"",
    );
    daemon.signal(libc::SIGHUP);
    assert!(wait_until(Duration::from_secs(10), || daemon
        .output()
        .contains("queue_timeout 20s -> 500ms")));
    let mut statuses: Vec<u16> = slow(4, 3000).iter().map(|r| r.status).collect();
    statuses.sort_unstable();
    assert_eq!(statuses, [200, 200, 503, 503]);
    daemon.wait_for_output("queued for", Duration::from_secs(10));
}
