//! SIGHUP reloads the configuration in place, end to end in network namespaces (client, lb,
//! backends): a server added and one removed, a new client timeout; the sessions of the servers
//! kept stay, the removed server's session is redispatched once and stays, new sessions reach
//! the new server, and a keep-alive connection opened before the reload goes on. An invalid file
//! and one that needs an upgrade are refused and change nothing.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test code: a failed setup step must fail the test loudly"
)]

mod common;

use std::time::Duration;

use common::{
    demo_cookie, http, privileged, start_daemon, wait_until, write_temp, PinDir, Proc, Topology,
};

const TAG: &str = "rip";
const NET: u8 = 226;

/// Servers named `beN` answer `Backend N` on port 8080+N.
fn servers(numbers: &[u16]) -> Vec<(String, u16)> {
    numbers
        .iter()
        .map(|n| (format!("be{n}"), 8080 + n))
        .collect()
}

fn config(
    topo: &Topology,
    pin: &PinDir,
    servers: &[(String, u16)],
    port: u16,
    client: &str,
) -> String {
    let servers: String = servers
        .iter()
        .map(|(name, port)| {
            format!(
                "  {{ name = \"{name}\", addr = \"{}:{port}\" }},\n",
                topo.backend_addr()
            )
        })
        .collect();
    format!(
        r#"
[instance]
name = "lb-{TAG}"
pin_dir = "{pin}"
control_socket = "{control}"

[[frontend]]
name = "www"
bind = "{lb}:{port}"
backend = "back-session"
# The keep-alive connection `kept` asks for other sessions after its first request: that is L7
# routing per request, which a spliced connection does not do.
fastpath = "off"

[[backend]]
name = "back-session"
health_check = {{ path = "/", interval = "200ms", timeout = "500ms", rise = 1, fall = 1 }}
servers = [
{servers}]

[timeouts]
client = "{client}"
"#,
        pin = pin.0.display(),
        control = pin.control_socket().display(),
        lb = topo.lb_addr(),
    )
}

fn start_backends(topo: &Topology, servers: &[(String, u16)]) -> Vec<Proc> {
    servers
        .iter()
        .map(|(name, port)| {
            let listen = format!("{}:{port}=Backend {}", topo.backend_addr(), &name[2..]);
            let argv = [common::backend_bin(), "--listen", &listen];
            let proc = Proc::spawn(name, topo.backends.name(), &argv);
            proc.wait_for_output("ready", Duration::from_secs(10));
            proc
        })
        .collect()
}

fn cookie(session: u32) -> String {
    format!("JSESSIONID={}", demo_cookie(session))
}

/// The server (`Backend N`) that answers each session, one connection per request.
fn served(topo: &Topology, sessions: &[u32]) -> Vec<String> {
    let addr = format!("{}:80", topo.lb_addr());
    let cookies: Vec<String> = sessions.iter().map(|&n| cookie(n)).collect();
    http::in_netns(topo.client.name(), move || {
        cookies
            .iter()
            .map(|c| http::get(&addr, "/", Some(c)).text().trim_end().to_owned())
            .collect()
    })
}

fn backends(numbers: &[u16]) -> Vec<String> {
    numbers.iter().map(|n| format!("Backend {n}")).collect()
}

/// Sends SIGHUP and waits for one more log line containing `needle`; returns that line.
fn sighup(daemon: &Proc, needle: &str) -> String {
    let before = daemon.output().matches(needle).count();
    daemon.signal(libc::SIGHUP);
    let logged = wait_until(Duration::from_secs(10), || {
        daemon.output().matches(needle).count() > before
    });
    assert!(logged, "no {needle:?} after SIGHUP:\n{}", daemon.output());
    let output = daemon.output();
    let line = output.lines().filter(|l| l.contains(needle)).nth(before);
    line.unwrap().to_owned()
}

#[test]
fn sighup_applies_servers_and_timeouts_in_place_and_refuses_the_rest() {
    if !privileged() {
        return;
    }
    let topo = Topology::new(TAG, NET);
    let pin = PinDir::new(TAG);
    let _backends = start_backends(&topo, &servers(&[1, 2, 3, 4]));
    let write = |text: String| write_temp(&format!("{TAG}.toml"), &text);
    let cfg = write(config(&topo, &pin, &servers(&[1, 2, 3]), 80, "50s"));
    let daemon = start_daemon(topo.lb.name(), &cfg);
    let addr = format!("{}:80", topo.lb_addr());

    assert_eq!(served(&topo, &[1, 2, 3]), backends(&[1, 2, 3]));
    let a = addr.clone();
    let mut kept = http::in_netns(topo.client.name(), move || http::KeepAlive::connect(&a));
    assert_eq!(kept.get("/", Some(&cookie(1))).text(), "Backend 1\n");

    // be4 added, be3 removed, a shorter client timeout.
    let reloaded = config(&topo, &pin, &servers(&[1, 2, 4]), 80, "1s");
    write(reloaded.clone());
    let line = sighup(&daemon, "reloaded configuration");
    assert!(line.contains("back-session: +be4 -be3"), "{line}");
    assert!(
        line.contains("timeouts changed (client 50s -> 1s)"),
        "{line}"
    );

    assert_eq!(
        served(&topo, &[1, 2]),
        backends(&[1, 2]),
        "kept servers keep their sessions"
    );
    let moved = served(&topo, &[3]);
    assert_ne!(moved, backends(&[3]), "be3 is no longer configured");
    assert_eq!(served(&topo, &[3]), moved, "the redispatched session stays");
    let fresh = served(&topo, &[10, 11, 12, 13]);
    assert!(fresh.iter().any(|b| b == "Backend 4"), "{fresh:?}");
    assert!(fresh.iter().all(|b| b != "Backend 3"), "{fresh:?}");

    // A new connection gets the new client timeout; the one opened before keeps its own and
    // serves on after being idle longer than the new timeout.
    let a = addr.clone();
    let slow = http::in_netns(topo.client.name(), move || {
        http::raw_exchange(&a, b"GET / HTTP/1.1\r\nHost: x\r\n", Duration::from_secs(5))
    });
    assert_eq!(http::parse(&slow).status, 408);
    assert_eq!(kept.get("/", Some(&cookie(1))).text(), "Backend 1\n");
    assert_eq!(kept.get("/", Some(&cookie(3))).text().trim_end(), moved[0]);

    // An invalid file: refused with its problem, and the running configuration stays.
    write(reloaded.replace("client = \"1s\"", "client = \"soon\""));
    let line = sighup(&daemon, "reload rejected");
    assert!(line.contains("timeouts.client"), "{line}");
    assert_eq!(
        served(&topo, &[1, 2, 3]),
        [&backends(&[1, 2])[..], &moved].concat()
    );
    assert_eq!(kept.get("/", Some(&cookie(2))).text(), "Backend 2\n");

    // A new frontend address needs an upgrade: refused as a whole, so be2 stays too.
    write(config(&topo, &pin, &servers(&[1, 4]), 81, "1s"));
    let line = sighup(&daemon, "--upgrade");
    let lb = topo.lb_addr();
    assert!(
        line.contains(&format!("frontend www: bind {lb}:80 -> {lb}:81")),
        "{line}"
    );
    assert!(
        !line.contains("be2"),
        "server changes are not what needs the upgrade: {line}"
    );
    assert_eq!(
        served(&topo, &[1, 2, 3]),
        [&backends(&[1, 2])[..], &moved].concat()
    );
    let refused = http::in_netns(topo.client.name(), move || {
        std::net::TcpStream::connect(format!("{lb}:81")).is_err()
    });
    assert!(refused, "nothing listens on the refused address");
    assert_eq!(kept.get("/", Some(&cookie(1))).text(), "Backend 1\n");

    let log = daemon.stop_with(libc::SIGTERM);
    assert!(log.contains("stopped"), "{log}");
}
