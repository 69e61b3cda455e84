//! End to end, in network namespaces (client, lb, backends): servers reached over TLS
//! (`tls = true`), verified with a CA made here (rcgen), one by its SNI name and one by its IP
//! address. Sessions stick to a TLS server through a cleartext frontend that would splice and
//! through a TLS frontend; `Set-Cookie` is learned; health checks pass over TLS, and a server
//! whose certificate another CA signed goes down with the reason in the log; none of these
//! connections is spliced. A SIGHUP that gives that server the right CA applies in place.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test code: a failed setup step must fail the test loudly"
)]

mod common;

use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use common::{
    backend_bin,
    http::{in_netns, KeepAlive},
    netns::{Exec as _, NetNs},
    privileged, start_daemon, wait_until, write_temp, PinDir, Proc, Topology,
};

/// The name the servers' certificate carries (with the backends' IP address).
const SERVER_NAME: &str = "be.example.test";
/// The HTTPS frontend's name.
const WWW: &str = "www.example.test";

/// The files a test makes: two CAs, a server certificate signed by the first, a frontend one.
struct Pki {
    ca: PathBuf,
    other_ca: PathBuf,
    server_cert: PathBuf,
    server_key: PathBuf,
    front_cert: PathBuf,
    front_key: PathBuf,
}

fn make_ca(name: &str) -> (rcgen::Certificate, rcgen::KeyPair) {
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, name);
    let key = rcgen::KeyPair::generate().unwrap();
    (params.self_signed(&key).unwrap(), key)
}

fn make_pki(dir: &Path, backend_ip: &str) -> Pki {
    let path = |name: &str| dir.join(name);
    let (ca, ca_key) = make_ca("stickylb test servers CA");
    let (other_ca, _) = make_ca("stickylb test other CA");
    let server_key = rcgen::KeyPair::generate().unwrap();
    // rcgen makes an IP SAN of a name that parses as an address.
    let names = vec![SERVER_NAME.to_owned(), backend_ip.to_owned()];
    let server = rcgen::CertificateParams::new(names)
        .unwrap()
        .signed_by(&server_key, &ca, &ca_key)
        .unwrap();
    let front = rcgen::generate_simple_self_signed(vec![WWW.to_owned()]).unwrap();
    std::fs::write(path("ca.pem"), ca.pem()).unwrap();
    std::fs::write(path("other-ca.pem"), other_ca.pem()).unwrap();
    std::fs::write(path("server.crt"), server.pem()).unwrap();
    std::fs::write(path("server.key"), server_key.serialize_pem()).unwrap();
    std::fs::write(path("front.crt"), front.cert.pem()).unwrap();
    std::fs::write(path("front.key"), front.key_pair.serialize_pem()).unwrap();
    Pki {
        ca: path("ca.pem"),
        other_ca: path("other-ca.pem"),
        server_cert: path("server.crt"),
        server_key: path("server.key"),
        front_cert: path("front.crt"),
        front_key: path("front.key"),
    }
}

/// s1 is verified by name, s2 by address, s3 with `s3_ca`.
fn config(topo: &Topology, pin: &PinDir, pki: &Pki, s3_ca: &Path) -> String {
    let (be, ca) = (topo.backend_addr(), pki.ca.display());
    format!(
        r#"
[instance]
name = "lb-stls"
pin_dir = "{pin}"
control_socket = "{control}"

[[frontend]]
name = "www"
bind = "{lb}:80"
backend = "web"
fastpath = "splice"

[[frontend]]
name = "https"
bind = "{lb}:443"
backend = "web"
tls = {{ cert = "{front_cert}", key = "{front_key}" }}

[[backend]]
name = "web"
health_check = {{ interval = "200ms", timeout = "1s", rise = 1, fall = 2 }}
servers = [
  {{ name = "s1", addr = "{be}:8441", tls = true, sni = "{SERVER_NAME}", ca = "{ca}" }},
  {{ name = "s2", addr = "{be}:8442", tls = true, ca = "{ca}" }},
  {{ name = "s3", addr = "{be}:8443", tls = true, sni = "{SERVER_NAME}", ca = "{s3_ca}" }},
]

# A connection that the fast path would take soon: after its second exchange.
[fastpath]
after_requests = 2

[monitor]
bind = "{lb}:8404"
"#,
        pin = pin.0.display(),
        control = pin.control_socket().display(),
        lb = topo.lb_addr(),
        front_cert = pki.front_cert.display(),
        front_key = pki.front_key.display(),
        s3_ca = s3_ca.display(),
    )
}

fn monitor(client: &NetNs, lb: &str, path: &str) -> String {
    let url = format!("http://{lb}:8404{path}");
    client.try_exec(&["curl", "-s", "--max-time", "5", &url]).1
}

/// The servers whose last health check passed, from `/api/servers`.
fn checks_passed(client: &NetNs, lb: &str) -> usize {
    monitor(client, lb, "/api/servers").matches("L7OK").count()
}

/// `count` requests with `cookie` on one keep-alive connection to the cleartext frontend,
/// pausing after each (a pause also asks for a hand-off); the servers that answered.
fn keep_alive(ns: &str, addr: String, cookie: String, count: usize) -> Vec<String> {
    in_netns(ns, move || {
        let mut conn = KeepAlive::connect(&addr);
        (0..count)
            .map(|_| {
                let response = conn.get("/", Some(&cookie));
                assert_eq!(response.status, 200, "{response:?}");
                std::thread::sleep(Duration::from_millis(120));
                response.text().trim().to_owned()
            })
            .collect()
    })
}

/// curl to the TLS frontend with `args` before the URL; the body.
fn curl_https(client: &NetNs, lb: &str, pki: &Pki, path: &str, args: &[&str]) -> String {
    let resolve = format!("{WWW}:443:{lb}");
    let url = format!("https://{WWW}{path}");
    let ca = pki.front_cert.to_str().unwrap();
    let mut argv = vec!["curl", "-sS", "--max-time", "10", "--cacert", ca];
    argv.extend(["--resolve", &resolve]);
    argv.extend(args);
    argv.push(&url);
    client.exec(&argv)
}

fn metric(text: &str, line_start: &str) -> Option<u64> {
    text.lines()
        .find(|l| l.starts_with(line_start))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

#[test]
fn tls_servers_keep_sessions_are_checked_over_tls_and_never_spliced() {
    if !privileged() {
        return;
    }
    let topo = Topology::new("stls", 190);
    let pin = PinDir::new("stls");
    let dir = tempfile::tempdir().unwrap();
    let pki = make_pki(dir.path(), &topo.backend_addr());
    let be = topo.backend_addr();
    let listen: Vec<String> = (1..=3)
        .map(|n| format!("{be}:844{n}=Backend {n}"))
        .collect();
    let (cert, key) = (
        pki.server_cert.to_str().unwrap(),
        pki.server_key.to_str().unwrap(),
    );
    let mut argv = vec![backend_bin(), "--tls", cert, key];
    for spec in &listen {
        argv.extend(["--listen", spec.as_str()]);
    }
    let backend = Proc::spawn("backend", topo.backends.name(), &argv);
    backend.wait_for_output("ready", Duration::from_secs(10));
    let cfg = write_temp("server-tls.toml", &config(&topo, &pin, &pki, &pki.other_ca));
    let daemon = start_daemon(topo.lb.name(), &cfg);
    let (client, lb) = (&topo.client, topo.lb_addr());

    // s3's certificate does not lead to its CA: down, the log says which server and why.
    daemon.wait_for_output("server is DOWN", Duration::from_secs(15));
    let log = daemon.output();
    let down: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("server is DOWN"))
        .collect();
    assert!(
        down.len() == 1
            && down[0].contains("server=s3")
            && down[0].contains("TLS handshake")
            && down[0].contains("UnknownIssuer"),
        "{log}"
    );
    // s1 (verified by name) and s2 (by address) pass their checks over TLS.
    let passed = wait_until(Duration::from_secs(10), || checks_passed(client, &lb) == 2);
    assert!(passed, "{}", monitor(client, &lb, "/api/servers"));

    // Sessions stick to one TLS server, on connections the fast path would have taken.
    let addr = format!("{lb}:80");
    let mut seen = Vec::new();
    for session in ["stls-a", "stls-b", "stls-c", "stls-d"] {
        let cookie = format!("JSESSIONID={session}");
        let servers = keep_alive(client.name(), addr.clone(), cookie, 6);
        assert!(
            servers.iter().all(|s| *s == servers[0]),
            "{session}: {servers:?}"
        );
        assert!(
            ["Backend 1", "Backend 2"].contains(&servers[0].as_str()),
            "{servers:?}"
        );
        seen.push(servers[0].clone());
    }
    assert!(seen.contains(&"Backend 1".to_owned()) && seen.contains(&"Backend 2".to_owned()));

    // A session the server sets is learned, then sticks.
    let learned = in_netns(client.name(), {
        let addr = addr.clone();
        move || {
            let mut conn = KeepAlive::connect(&addr);
            let set = conn.get("/?setcookie=stls-learned", None);
            let first = set.header("x-served-by").unwrap();
            let then: Vec<String> = (0..4)
                .map(|_| {
                    let r = conn.get("/", Some("JSESSIONID=stls-learned"));
                    r.text().trim().to_owned()
                })
                .collect();
            (first, then)
        }
    });
    assert!(learned.1.iter().all(|s| *s == learned.0), "{learned:?}");

    // A TLS frontend to the TLS servers: the same session, the same server; the server hears
    // who the client is and that it came over HTTPS.
    let over_https = curl_https(client, &lb, &pki, "/", &["-b", "JSESSIONID=stls-a"]);
    assert_eq!(over_https.trim(), seen[0]);
    let headers = curl_https(client, &lb, &pki, "/headers", &[]);
    assert!(
        headers.contains("x-forwarded-proto: https")
            && headers.contains(&format!("x-forwarded-for: {}", topo.client_addr())),
        "{headers}"
    );

    // Served by hyper, never relayed in userspace or spliced by the kernel, though the fast
    // path is loaded for the cleartext frontend.
    let metrics = monitor(client, &lb, "/metrics");
    assert!(
        metrics.contains("stickylb_fastpath_spliced_flows"),
        "the fast path is loaded: {metrics}"
    );
    let spliced = metric(
        &metrics,
        "stickylb_fastpath_handoffs_total{outcome=\"spliced\"}",
    );
    assert_eq!(spliced.unwrap_or(0), 0, "{metrics}");
    assert_eq!(
        metric(&metrics, "stickylb_fastpath_spliced_flows "),
        Some(0)
    );
    // The daemon's output reaches the test through a reader thread: wait for the 24 lines.
    let hyper_lines = || daemon.output().matches("relay=\"hyper\"").count();
    wait_until(Duration::from_secs(5), || hyper_lines() >= 24);
    let log = daemon.output();
    assert!(log.matches("relay=\"hyper\"").count() >= 24, "{log}");
    assert!(
        !log.contains("relay=\"pooled\"") && !log.contains("relay=\"fastpath\""),
        "{log}"
    );

    // A SIGHUP gives s3 the right CA: applied in place, and its checks pass.
    std::fs::write(&cfg, config(&topo, &pin, &pki, &pki.ca)).unwrap();
    daemon.signal(libc::SIGHUP);
    daemon.wait_for_output("~s3(tls)", Duration::from_secs(10));
    let passed = wait_until(Duration::from_secs(10), || checks_passed(client, &lb) == 3);
    assert!(passed, "{}", monitor(client, &lb, "/api/servers"));
    let reached_s3 = (0..9).any(|n| {
        let cookie = format!("JSESSIONID=stls-after-{n}");
        keep_alive(client.name(), addr.clone(), cookie, 1)[0] == "Backend 3"
    });
    assert!(reached_s3, "{}", daemon.output());
    drop(daemon);
}
