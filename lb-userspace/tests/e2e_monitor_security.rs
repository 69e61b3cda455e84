//! The monitor end to end, in network namespaces (client, lb, backends): it never shows a
//! whole session cookie (the pinned table, read by root with `stickylb table`, still does);
//! `[monitor] auth` guards every route; and a daemon whose pin root is on a bpffs of its own
//! mount namespace (started with `ip netns exec`) says that its table is not durable, in its
//! log and on the monitor, while one started with `nsenter --net` says it is.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test code: a failed setup step must fail the test loudly"
)]

mod common;

use std::{path::PathBuf, time::Duration};

use common::{
    http::{self, in_netns},
    privileged, start_daemon, stickylb_bin, wait_until, write_temp, PinDir, Proc, Topology,
};
use rand::{distributions::Alphanumeric, Rng as _};

/// Every route the monitor serves.
const ROUTES: [&str; 8] = [
    "/",
    "/monitor",
    "/metrics",
    "/api/table",
    "/api/frontends",
    "/api/servers",
    "/api/peers",
    "/api/status",
];

/// One backend (`be1`, answering `Backend 1`) behind one lb, whose config is written with
/// `monitor_extra` in its `[monitor]` section. Torn down in field order.
struct Rig {
    _backend: Proc,
    cfg: PathBuf,
    pin: PinDir,
    topo: Topology,
}

fn rig(tag: &str, net: u8, monitor_extra: &str) -> Rig {
    let topo = Topology::new(tag, net);
    let pin = PinDir::new(tag);
    let listen = format!("{}:8081=Backend 1", topo.backend_addr());
    let backend = Proc::spawn(
        "be1",
        topo.backends.name(),
        &[common::backend_bin(), "--listen", &listen],
    );
    backend.wait_for_output("ready", Duration::from_secs(10));
    let config = format!(
        r#"
[instance]
name = "lb-{tag}"
pin_dir = "{pin}"
control_socket = "{control}"

[[frontend]]
name = "www"
bind = "{lb}:80"
backend = "web"
fastpath = "off"

[[backend]]
name = "web"
health_check = {{ enabled = false }}
servers = [ {{ name = "be1", addr = "{be}:8081" }} ]

[monitor]
bind = "{lb}:8404"
{monitor_extra}
"#,
        pin = pin.0.display(),
        control = pin.control_socket().display(),
        lb = topo.lb_addr(),
        be = topo.backend_addr(),
    );
    let cfg = write_temp(&format!("{tag}.toml"), &config);
    Rig {
        _backend: backend,
        cfg,
        pin,
        topo,
    }
}

impl Rig {
    fn monitor(&self) -> String {
        format!("{}:8404", self.topo.lb_addr())
    }

    /// `GET path` on the monitor from the client host, with `Authorization: <auth>` if given.
    fn get_monitor(&self, path: &str, auth: Option<&str>) -> http::Response {
        let addr = self.monitor();
        let request = format!(
            "GET {path} HTTP/1.1\r\nHost: test\r\n{}Connection: close\r\n\r\n",
            auth.map(|a| format!("Authorization: {a}\r\n"))
                .unwrap_or_default()
        );
        in_netns(self.topo.client.name(), move || {
            http::parse(&http::raw_exchange(
                &addr,
                request.as_bytes(),
                Duration::from_secs(10),
            ))
        })
    }

    /// Starts the daemon as `ip netns exec` does: in a mount namespace of its own whose /sys is
    /// fresh, so the daemon mounts a bpffs that only it sees.
    fn start_under_ip_netns_exec(&self) -> Proc {
        let ns = self.topo.lb.name();
        let cfg = self.cfg.to_str().unwrap();
        let proc = Proc::spawn(
            "stickylb (ip netns exec)",
            ns,
            &[
                "ip",
                "netns",
                "exec",
                ns,
                stickylb_bin(),
                "--log",
                "info",
                "run",
                "--config",
                cfg,
            ],
        );
        proc.wait_for_output("stickylb started", Duration::from_secs(20));
        proc
    }
}

fn random_cookie() -> String {
    rand::thread_rng()
        .sample_iter(Alphanumeric)
        .take(32)
        .map(char::from)
        .collect()
}

/// `stickylb_table_durable` of `/metrics`.
fn durable_gauge(metrics: &str) -> Option<&str> {
    metrics
        .lines()
        .find_map(|line| line.strip_prefix("stickylb_table_durable "))
}

#[test]
fn the_monitor_never_shows_a_whole_cookie() {
    if !privileged() {
        return;
    }
    let rig = rig("mask", 164, "");
    let daemon = start_daemon(rig.topo.lb.name(), &rig.cfg);
    let cookies: Vec<String> = (0..8).map(|_| random_cookie()).collect();
    let addr = format!("{}:80", rig.topo.lb_addr());
    let sent = cookies.clone();
    in_netns(rig.topo.client.name(), move || {
        for cookie in &sent {
            let response = http::get(&addr, "/", Some(&format!("JSESSIONID={cookie}")));
            assert_eq!(response.status, 200, "{}", response.text());
        }
    });

    for path in ROUTES.iter().chain(&["/api/table?backend=web&limit=100"]) {
        let response = rig.get_monitor(path, None);
        let text = format!("{}\r\n\r\n{}", response.head, response.text());
        for cookie in &cookies {
            assert!(
                !text.contains(cookie.as_str()),
                "{path} shows {cookie}:\n{text}"
            );
        }
    }
    // Every session is listed, by its masked form: at most 4 characters of the 32, then a tag.
    let tables: serde_json::Value =
        serde_json::from_str(&rig.get_monitor("/api/table", None).text()).unwrap();
    let shown: Vec<&str> = tables[0]["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["cookie"].as_str().unwrap())
        .collect();
    assert_eq!(shown.len(), cookies.len(), "{tables:#}");
    for cookie in &cookies {
        let prefix: String = cookie.chars().take(4).collect();
        assert!(
            shown.iter().any(|s| s.starts_with(&format!("{prefix}…#"))),
            "{cookie} not among {shown:?}"
        );
    }
    let distinct: std::collections::HashSet<&&str> = shown.iter().collect();
    assert_eq!(distinct.len(), shown.len(), "{shown:?}");

    // The whole table stays available to root, from the pinned map.
    let out = std::process::Command::new(stickylb_bin())
        .args(["table", "--json", "--config"])
        .arg(&rig.cfg)
        .output()
        .unwrap();
    let table = String::from_utf8_lossy(&out.stdout);
    for cookie in &cookies {
        assert!(table.contains(cookie.as_str()), "{table}");
    }
    drop(daemon);
}

#[test]
fn monitor_auth_guards_every_route() {
    if !privileged() {
        return;
    }
    let password = write_temp("auth-monitor.pass", "pa55 w0rd\n");
    let rig = rig(
        "auth",
        165,
        &format!(
            "auth = {{ user = \"ops\", password_file = \"{}\" }}",
            password.display()
        ),
    );
    let daemon = start_daemon(rig.topo.lb.name(), &rig.cfg);
    // ops:pa55 w0rd, ops:wrong, and the right password for another user (nobody:pa55 w0rd).
    let right = "Basic b3BzOnBhNTUgdzByZA==";
    let wrong = [
        "Basic b3BzOndyb25n",
        "Basic bm9ib2R5OnBhNTUgdzByZA==",
        "Bearer b3BzOnBhNTUgdzByZA==",
    ];
    for path in ROUTES {
        let refused = rig.get_monitor(path, None);
        assert_eq!(refused.status, 401, "{path} without credentials");
        assert_eq!(
            refused.header("www-authenticate").as_deref(),
            Some("Basic realm=\"stickylb\""),
            "{path}"
        );
        for auth in wrong {
            assert_eq!(
                rig.get_monitor(path, Some(auth)).status,
                401,
                "{path} {auth}"
            );
        }
        let expected = if path == "/" { 302 } else { 200 };
        assert_eq!(
            rig.get_monitor(path, Some(right)).status,
            expected,
            "{path}"
        );
    }
    let metrics = rig.get_monitor("/metrics", Some(right));
    assert_eq!(metrics.status, 200);
    assert!(
        metrics.text().contains("stickylb_build_info"),
        "{}",
        metrics.text()
    );
    drop(daemon);
}

#[test]
fn a_table_on_a_private_bpffs_is_reported_not_durable() {
    if !privileged() {
        return;
    }
    let rig = rig("durno", 166, "");
    let not_durable = "THE STICK TABLE IS NOT DURABLE";

    // First under `ip netns exec`: the pin root does not exist in PID 1's view at all.
    let daemon = rig.start_under_ip_netns_exec();
    daemon.wait_for_output(not_durable, Duration::from_secs(5));
    daemon.wait_for_output("nsenter --net=/run/netns/NAME", Duration::from_secs(5));
    let metrics = rig.get_monitor("/metrics", None).text();
    assert_eq!(durable_gauge(&metrics), Some("0"), "{metrics}");
    let status: serde_json::Value =
        serde_json::from_str(&rig.get_monitor("/api/status", None).text()).unwrap();
    assert_eq!(status["table_durable"], false, "{status}");
    let page = rig.get_monitor("/monitor", None).text();
    assert!(
        page.contains("<dt>Durable</dt><dd id=\"durable\" class=\"bad\">no</dd>"),
        "{page}"
    );
    daemon.stop_with(libc::SIGTERM);
    // Its bpffs went with its mount namespace: nothing of it is on the host's.
    assert!(!rig.pin.0.exists(), "{} exists", rig.pin.0.display());

    // A normal start (`nsenter --net`, as the kit does) pins on the host's bpffs.
    let daemon = start_daemon(rig.topo.lb.name(), &rig.cfg);
    let metrics = rig.get_monitor("/metrics", None).text();
    assert_eq!(durable_gauge(&metrics), Some("1"), "{metrics}");
    let status: serde_json::Value =
        serde_json::from_str(&rig.get_monitor("/api/status", None).text()).unwrap();
    assert_eq!(status["table_durable"], true, "{status}");
    assert!(rig
        .get_monitor("/monitor", None)
        .text()
        .contains("<dt>Durable</dt><dd id=\"durable\">yes</dd>"));
    let log = daemon.stop_with(libc::SIGTERM);
    assert!(!log.contains(not_durable), "{log}");
    assert!(rig.pin.0.exists());

    // Again under `ip netns exec`, now that the host's bpffs has the pin root: the daemon's
    // own bpffs is another one.
    let daemon = rig.start_under_ip_netns_exec();
    daemon.wait_for_output(not_durable, Duration::from_secs(5));
    assert!(wait_until(Duration::from_secs(5), || durable_gauge(
        &rig.get_monitor("/metrics", None).text()
    ) == Some("0")));
    daemon.stop_with(libc::SIGTERM);
}
