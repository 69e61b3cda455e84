//! End to end, in network namespaces (client, lb, backends): the shield's deny list. A denied
//! client address cannot connect while another address of the same host can, `bpftool` shows
//! the pinned entry decoded, the list survives a daemon stop and start, a start with the shield
//! off detaches it, an upgrade keeps it applied, the list can be filled before any start, and an
//! IPv6 source is denied by its prefix.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test code: a failed setup step must fail the test loudly"
)]

mod common;

use std::time::Duration;

use common::{
    netns::Exec as _, privileged, start_daemon, wait_until, write_temp, PinDir, Proc, Topology,
};

fn config(topo: &Topology, pin: &PinDir, instance: &str) -> String {
    format!(
        r#"
[instance]
name = "{instance}"
pin_dir = "{pin}"
control_socket = "{control}"

[[frontend]]
name = "www"
bind = "{lb}:80"
backend = "web"

[[backend]]
name = "web"
stick_cookie = "JSESSIONID"
health_check = {{ path = "/", interval = "200ms", timeout = "500ms", rise = 1, fall = 1 }}
servers = [ {{ name = "be1", addr = "{backend}:8081" }} ]

[shield]
enabled = true
"#,
        pin = pin.0.display(),
        control = pin.control_socket().display(),
        lb = topo.lb_addr(),
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
    let cfg = write_temp("shld.toml", &config(&topo, &pin, "lb-shld"));
    let cfg = cfg.to_str().unwrap().to_owned();
    let (denied, other) = two_client_addrs(&topo);

    let daemon = start_daemon(topo.lb.name(), std::path::Path::new(&cfg));
    // veth has native XDP: the log says which mode each interface got.
    assert!(
        daemon.output().contains("shield attached (XDP) interface=")
            && daemon.output().contains("mode=Native"),
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
    // Large segments (GRO on the veth) pass the program too: an upload of a few MB.
    let body = write_temp("shld-body", &"x".repeat(4 << 20));
    let url = format!("http://{}:80/", topo.lb_addr());
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
        daemon.output().contains("mode=Adopted"),
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
    let cfg = write_temp("shbad.toml", &config(&topo, &pin, "lb-shbad"));
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

#[test]
fn an_upgrade_adopts_the_shield_and_keeps_the_list_applied() {
    if !privileged() {
        return;
    }
    let topo = Topology::new("shupg", 197);
    let pin = PinDir::new("shupg");
    let _backend = start_backend(&topo);
    let cfg = write_temp("shupg.toml", &config(&topo, &pin, "lb-shupg"));
    let cfg = cfg.to_str().unwrap().to_owned();
    let (denied, other) = two_client_addrs(&topo);
    let (ok, text) = stickylb(&["deny", "add", &denied, "--config", &cfg]);
    assert!(ok, "{text}");

    let _first = start_daemon(topo.lb.name(), std::path::Path::new(&cfg));
    let _stop = StopDaemon(pin.control_socket());
    assert!(!served_from(&topo, &denied), "the denied source was served");
    assert!(served_from(&topo, &other));

    let mut upgrade = Proc::spawn(
        "reload",
        topo.lb.name(),
        &[
            common::stickylb_bin(),
            "--log",
            "info",
            "reload",
            "--config",
            &cfg,
            "--upgrade",
        ],
    );
    assert!(
        wait_until(Duration::from_secs(60), || matches!(
            upgrade.child.try_wait(),
            Ok(Some(_))
        )),
        "reload --upgrade did not finish:\n{}",
        upgrade.output()
    );
    assert!(
        upgrade.child.try_wait().unwrap().unwrap().success(),
        "{}",
        upgrade.output()
    );
    upgrade.wait_for_output("mode=Adopted", Duration::from_secs(5));
    assert!(!served_from(&topo, &denied), "the denied source was served");
    assert!(served_from(&topo, &other), "{}", upgrade.output());
}
