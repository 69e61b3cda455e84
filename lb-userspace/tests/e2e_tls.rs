//! End to end, in network namespaces (client, lb, backends): an HTTPS frontend with two
//! certificates made here (rcgen). curl over HTTP/1.1 and HTTP/2 to the same cookie reaches the
//! same server; two cookies on one HTTP/2 connection reach their two servers; SNI picks the
//! certificate; the server hears `X-Forwarded-Proto: https`; plaintext on the TLS port is
//! closed, a stalled handshake is closed after `timeouts.client`, and the daemon goes on
//! serving. After `--upgrade`, a renewed certificate at the same paths is served.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test code: a failed setup step must fail the test loudly"
)]

mod common;

use std::{
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use common::{
    http,
    netns::{Exec as _, NetNs},
    privileged, start_daemon, write_temp, PinDir, Proc, Topology,
};

const WWW: &str = "www.example.test";
const API: &str = "api.example.test";

/// A self-signed certificate for `name` and its key, written to `dir`.
struct Cert {
    cert: PathBuf,
    key: PathBuf,
}

fn make_cert(dir: &Path, name: &str) -> Cert {
    let made = rcgen::generate_simple_self_signed(vec![name.to_owned()]).unwrap();
    let cert = dir.join(format!("{name}.crt"));
    let key = dir.join(format!("{name}.key"));
    std::fs::write(&cert, made.cert.pem()).unwrap();
    std::fs::write(&key, made.key_pair.serialize_pem()).unwrap();
    Cert { cert, key }
}

fn start_backends(topo: &Topology) -> Vec<Proc> {
    (1..=3)
        .map(|n| {
            let listen = format!("{}:{}=Backend {n}", topo.backend_addr(), 8080 + n);
            let proc = Proc::spawn(
                &format!("be{n}"),
                topo.backends.name(),
                &[common::backend_bin(), "--listen", &listen],
            );
            proc.wait_for_output("ready", Duration::from_secs(10));
            proc
        })
        .collect()
}

fn config(topo: &Topology, pin: &PinDir, www: &Cert, api: &Cert) -> String {
    let be = topo.backend_addr();
    format!(
        r#"
[instance]
name = "lb-tls"
pin_dir = "{pin}"
control_socket = "{control}"

[[frontend]]
name = "https"
bind = "{lb}:443"
backend = "web"
tls.certificates = [
  {{ cert = "{www_cert}", key = "{www_key}" }},
  {{ cert = "{api_cert}", key = "{api_key}" }},
]

[[backend]]
name = "web"
balance = "roundrobin"
health_check = {{ enabled = false }}
servers = [
  {{ name = "be1", addr = "{be}:8081" }},
  {{ name = "be2", addr = "{be}:8082" }},
  {{ name = "be3", addr = "{be}:8083" }},
]

[timeouts]
client = "2s"
"#,
        pin = pin.0.display(),
        control = pin.control_socket().display(),
        lb = topo.lb_addr(),
        www_cert = www.cert.display(),
        www_key = www.key.display(),
        api_cert = api.cert.display(),
        api_key = api.key.display(),
    )
}

/// curl from the client host to `https://<name>/<path>` at the lb, trusting only `ca`, with
/// `args` before the URL; stdout and stderr together.
fn curl(client: &NetNs, lb: &str, name: &str, ca: &Path, path: &str, args: &[&str]) -> String {
    let resolve = format!("{name}:443:{lb}");
    let url = format!("https://{name}{path}");
    let ca = ca.to_str().unwrap();
    let mut argv = vec!["curl", "-sS", "--max-time", "10", "--cacert", ca];
    argv.extend(["--resolve", &resolve]);
    argv.extend(args);
    argv.push(&url);
    client.exec(&argv)
}

/// The argv of one transfer of a curl command line that reuses its connection (`--next`).
fn transfer<'a>(resolve: &'a str, ca: &'a str, cookie: &'a str, url: &'a str) -> Vec<&'a str> {
    vec![
        "--http2",
        "-sS",
        "--cacert",
        ca,
        "--resolve",
        resolve,
        "-b",
        cookie,
        "-w",
        " connects=%{num_connects} http=%{http_version}\n",
        url,
    ]
}

#[test]
fn https_frontend_keeps_sessions_over_http11_and_http2() {
    if !privileged() {
        return;
    }
    let topo = Topology::new("tls", 150);
    let pin = PinDir::new("tls");
    let _backends = start_backends(&topo);
    let certs = tempfile::tempdir().unwrap();
    let (www, api) = (make_cert(certs.path(), WWW), make_cert(certs.path(), API));
    let cfg = write_temp("tls.toml", &config(&topo, &pin, &www, &api));
    let daemon = start_daemon(topo.lb.name(), &cfg);
    let (client, lb) = (&topo.client, topo.lb_addr());

    // The same cookie over HTTP/1.1 then HTTP/2 (its Cookie split in two fields): one server.
    let mut servers = Vec::new();
    for session in ["tls-a", "tls-b", "tls-c"] {
        let cookie = format!("JSESSIONID={session}");
        let h1 = curl(
            client,
            &lb,
            WWW,
            &www.cert,
            "/",
            &["--http1.1", "-b", &cookie],
        );
        let h2 = curl(
            client,
            &lb,
            WWW,
            &www.cert,
            "/",
            &[
                "--http2",
                "-H",
                "cookie: theme=dark",
                "-H",
                &format!("cookie: {cookie}"),
            ],
        );
        assert!(h1.starts_with("Backend "), "{h1}");
        assert_eq!(
            h1, h2,
            "session {session}: HTTP/1.1 and HTTP/2 reach one server"
        );
        servers.push(h1);
    }
    let distinct: std::collections::HashSet<_> = servers.iter().collect();
    assert_eq!(
        distinct.len(),
        3,
        "round robin spread the sessions: {servers:?}"
    );

    // Two cookies on one HTTP/2 connection: each request goes to its own session's server.
    let (resolve, ca) = (format!("{WWW}:443:{lb}"), www.cert.to_str().unwrap());
    let url = format!("https://{WWW}/");
    let mut argv = vec!["curl"];
    argv.extend(transfer(&resolve, ca, "JSESSIONID=tls-a", &url));
    argv.push("--next");
    argv.extend(transfer(&resolve, ca, "JSESSIONID=tls-b", &url));
    let both = client.exec(&argv);
    let expected = format!(
        "{} connects=1 http=2\n{} connects=0 http=2\n",
        servers[0], servers[1]
    );
    assert_eq!(both, expected, "one connection, two sessions, two servers");

    // What the server hears: HTTPS said, the split cookies joined, the authority as Host.
    let headers = curl(
        client,
        &lb,
        WWW,
        &www.cert,
        "/headers",
        &[
            "--http2",
            "-H",
            "cookie: a=1",
            "-H",
            "cookie: JSESSIONID=tls-a",
        ],
    );
    assert!(headers.contains("x-forwarded-proto: https\n"), "{headers}");
    assert!(
        headers.contains("cookie: a=1; JSESSIONID=tls-a\n"),
        "{headers}"
    );
    assert!(headers.contains(&format!("host: {WWW}\n")), "{headers}");

    // A request slower than timeouts.client (2s) is not cut: only an idle connection is closed.
    let slow = curl(
        client,
        &lb,
        WWW,
        &www.cert,
        "/slow/3000",
        &["--http2", "-b", "JSESSIONID=tls-a"],
    );
    assert_eq!(slow, servers[0]);

    // Bodies both ways over HTTP/2: a chunked response from the server, a request body.
    let size = curl(
        client,
        &lb,
        WWW,
        &www.cert,
        "/chunked/100000",
        &[
            "--http2",
            "-o",
            "/dev/null",
            "-w",
            "%{size_download} %{http_version}",
        ],
    );
    assert_eq!(size, "100000 2");
    let posted = curl(
        client,
        &lb,
        WWW,
        &www.cert,
        "/headers",
        &["--http2", "--data-binary", "hello"],
    );
    assert!(posted.contains("content-length: 5\n"), "{posted}");

    // HTTP/1.1 over TLS is relayed; what the relay hands to hyper (HTTP/1.0, a chunked
    // body) is served there with the bytes already read, and says HTTPS to the server too.
    let h10 = curl(
        client,
        &lb,
        WWW,
        &www.cert,
        "/",
        &["--http1.0", "-b", "JSESSIONID=tls-a"],
    );
    assert_eq!(h10, servers[0], "HTTP/1.0 over TLS");
    let chunked = curl(
        client,
        &lb,
        WWW,
        &www.cert,
        "/headers",
        &[
            "--http1.1",
            "-H",
            "Transfer-Encoding: chunked",
            "-H",
            "X-Forwarded-Proto: http",
            "--data-binary",
            "hello",
        ],
    );
    assert!(chunked.contains("x-forwarded-proto: https\n"), "{chunked}");
    assert!(!chunked.contains("x-forwarded-proto: http\n"), "{chunked}");
    let relayed = curl(
        client,
        &lb,
        WWW,
        &www.cert,
        "/headers",
        &["--http1.1", "-H", "X-Forwarded-Proto: http"],
    );
    assert!(relayed.contains("x-forwarded-proto: https\n"), "{relayed}");
    assert!(!relayed.contains("x-forwarded-proto: http\n"), "{relayed}");

    // SNI picks the certificate: each name verifies against its own certificate only.
    let by_api = curl(client, &lb, API, &api.cert, "/", &["--http1.1"]);
    assert!(by_api.starts_with("Backend "), "{by_api}");
    let (ok, wrong) = client.try_exec(&[
        "curl",
        "-sS",
        "--max-time",
        "10",
        "--cacert",
        www.cert.to_str().unwrap(),
        "--resolve",
        &format!("{API}:443:{lb}"),
        &format!("https://{API}/"),
    ]);
    assert!(
        !ok,
        "the api name must not be served the www certificate: {wrong}"
    );

    // HTTP/2 clients that open every stream they may (128) for large downloads, with the
    // largest windows, then stop reading: what the proxy holds for them is bounded per stream
    // (with hyper's default, 400 KiB a stream, each such connection held about 50 MB).
    let pid = daemon.child.id();
    let before = rss_mib(pid);
    let stalled = stalled_h2_downloads(client.name(), &format!("{lb}:443"), &www.cert, 4);
    let held = rss_mib(pid) - before;
    assert!(
        held < 48.0,
        "4 stalled HTTP/2 connections of 128 downloads grew the daemon by {held:.1} MiB"
    );
    drop(stalled);

    // Plaintext on the TLS port: closed (no HTTP answer), well before any timeout.
    let addr = format!("{lb}:443");
    let started = Instant::now();
    let answer = http::in_netns(client.name(), move || {
        http::raw_exchange(
            &addr,
            b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
            Duration::from_secs(5),
        )
    });
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "not closed in time"
    );
    assert!(
        !answer.starts_with(b"HTTP/"),
        "{:?}",
        String::from_utf8_lossy(&answer)
    );
    // A handshake that stalls (a client that connects and says nothing): closed after
    // timeouts.client.
    let addr = format!("{lb}:443");
    let started = Instant::now();
    let silent = http::in_netns(client.name(), move || {
        http::raw_exchange(&addr, b"", Duration::from_secs(10))
    });
    let waited = started.elapsed();
    assert!(silent.is_empty(), "{silent:?}");
    assert!(
        (Duration::from_millis(1500)..Duration::from_secs(6)).contains(&waited),
        "closed after {waited:?}, not after timeouts.client"
    );

    let after = curl(
        client,
        &lb,
        WWW,
        &www.cert,
        "/",
        &["--http2", "-b", "JSESSIONID=tls-a"],
    );
    assert_eq!(
        after, servers[0],
        "still serving after the plaintext client"
    );

    let log = daemon.stop_with(libc::SIGTERM);
    assert!(log.contains("relay=\"tls\""), "{log}");
    assert!(log.contains("alpn=\"h2\""), "{log}");
    assert!(log.contains("alpn=\"http/1.1\""), "{log}");
    assert!(log.contains("tls=\"1.3\""), "{log}");
    assert!(!log.contains("panicked"), "{log}");
}

/// The resident memory of process `pid`, in MiB.
fn rss_mib(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kib: f64 = status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|value| value.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no VmRSS in {status}"));
    kib / 1024.0
}

/// One HTTP/2 frame: its 9-byte head, then `payload`.
fn h2_frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = u32::try_from(payload.len()).unwrap().to_be_bytes();
    let mut frame = vec![len[1], len[2], len[3], kind, flags];
    frame.extend(stream.to_be_bytes());
    frame.extend(payload);
    frame
}

/// `connections` HTTP/2 connections (ALPN `h2`, from `ns`) that announce the largest windows,
/// open 128 streams each for a 50 MB download, then read nothing; given back open, after 3 s.
fn stalled_h2_downloads(
    ns: &str,
    addr: &str,
    ca: &Path,
    connections: usize,
) -> Vec<rustls::StreamOwned<rustls::ClientConnection, std::net::TcpStream>> {
    use std::io::Write as _;

    use rustls::pki_types::pem::PemObject as _;

    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls::pki_types::CertificateDer::pem_file_iter(ca).unwrap() {
        roots.add(cert.unwrap()).unwrap();
    }
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec()];
    let config = std::sync::Arc::new(config);
    let addr = addr.to_owned();
    http::in_netns(ns, move || {
        // HPACK: GET, https, then :path and :authority as literals with indexed names.
        let mut block = vec![0x82, 0x87, 0x04, 15];
        block.extend(b"/bytes/50000000");
        block.extend([0x01, u8::try_from(WWW.len()).unwrap()]);
        block.extend(WWW.as_bytes());
        let mut opening = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
        let largest: u32 = (1 << 31) - 1;
        let mut settings = 4u16.to_be_bytes().to_vec();
        settings.extend(largest.to_be_bytes());
        opening.extend(h2_frame(0x4, 0, 0, &settings));
        opening.extend(h2_frame(0x8, 0, 0, &(largest - 65_535).to_be_bytes()));
        for stream in 0..128u32 {
            // END_STREAM | END_HEADERS
            opening.extend(h2_frame(0x1, 0x5, 1 + 2 * stream, &block));
        }
        let stalled: Vec<_> = (0..connections)
            .map(|_| {
                let name = rustls::pki_types::ServerName::try_from(WWW).unwrap();
                let conn =
                    rustls::ClientConnection::new(std::sync::Arc::clone(&config), name).unwrap();
                let tcp = std::net::TcpStream::connect(&addr).unwrap();
                let mut tls = rustls::StreamOwned::new(conn, tcp);
                tls.write_all(&opening).unwrap();
                tls.flush().unwrap();
                tls
            })
            .collect();
        std::thread::sleep(Duration::from_secs(3));
        stalled
    })
}

/// `made`'s files copied over `live`'s: a renewed certificate at the same paths.
fn install(made: &Cert, live: &Cert) {
    std::fs::copy(&made.cert, &live.cert).unwrap();
    std::fs::copy(&made.key, &live.key).unwrap();
}

/// The certificates of a renewal: `first` installed at `live`'s paths (what the daemon is
/// configured with), `renewed` to install later, and the api name's. The files live as long as
/// `_dirs`.
struct Renewal {
    _dirs: Vec<tempfile::TempDir>,
    first: Cert,
    renewed: Cert,
    live: Cert,
    api: Cert,
}

fn renewal() -> Renewal {
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let (first, renewed) = (
        make_cert(dirs[0].path(), WWW),
        make_cert(dirs[1].path(), WWW),
    );
    let (live, api) = (
        make_cert(dirs[2].path(), WWW),
        make_cert(dirs[2].path(), API),
    );
    install(&first, &live);
    Renewal {
        _dirs: dirs,
        first,
        renewed,
        live,
        api,
    }
}

/// Certificates are read when a process loads the configuration: after `--upgrade`, new
/// connections get the certificate now in the files.
#[test]
fn an_upgrade_serves_the_certificate_now_in_the_files() {
    if !privileged() {
        return;
    }
    let topo = Topology::new("tlsup", 151);
    let pin = PinDir::new("tlsup");
    let _backends = start_backends(&topo);
    let Renewal {
        _dirs,
        first,
        renewed,
        live,
        api,
    } = renewal();
    let cfg = write_temp("tlsup.toml", &config(&topo, &pin, &live, &api));
    let daemon = start_daemon(topo.lb.name(), &cfg);
    let (client, lb) = (&topo.client, topo.lb_addr());
    let served = curl(client, &lb, WWW, &first.cert, "/", &["--http2"]);
    assert!(served.starts_with("Backend "), "{served}");

    install(&renewed, &live);
    let argv = [
        common::stickylb_bin(),
        "--log",
        "info",
        "reload",
        "--config",
        cfg.to_str().unwrap(),
        "--upgrade",
    ];
    let mut upgrade = Proc::spawn("upgrade", topo.lb.name(), &argv);
    let done = common::wait_until(Duration::from_secs(60), || {
        matches!(upgrade.child.try_wait(), Ok(Some(_)))
    });
    assert!(done, "upgrade did not finish:\n{}", upgrade.output());
    let successor = stickylb::control::running_pid(&pin.control_socket())
        .and_then(|pid| i32::try_from(pid).ok())
        .expect("a daemon answers after the upgrade");
    // Stopped however the test ends: the successor is no child of this test.
    struct Successor(i32);
    impl Drop for Successor {
        fn drop(&mut self) {
            // SAFETY: kill(2) takes plain integers; the pid is the daemon this test upgraded to.
            unsafe { libc::kill(self.0, libc::SIGTERM) };
            let gone = || !Path::new(&format!("/proc/{}", self.0)).exists();
            common::wait_until(Duration::from_secs(15), gone);
        }
    }
    let successor = Successor(successor);
    assert_ne!(
        u32::try_from(successor.0).unwrap(),
        daemon.child.id(),
        "{}",
        upgrade.output()
    );

    let served = curl(client, &lb, WWW, &renewed.cert, "/", &["--http2"]);
    assert!(served.starts_with("Backend "), "{served}");
    assert!(
        !verifies(client, &lb, &first.cert),
        "the old certificate is still served"
    );
    drop(successor);
    drop(daemon);
}

/// The count of `needle` in the daemon's output.
fn count(daemon: &Proc, needle: &str) -> usize {
    daemon.output().matches(needle).count()
}

/// curl to `https://www.example.test/` trusting only `ca`: whether the handshake verified.
fn verifies(client: &NetNs, lb: &str, ca: &Path) -> bool {
    client
        .try_exec(&[
            "curl",
            "-sS",
            "--max-time",
            "10",
            "--cacert",
            ca.to_str().unwrap(),
            "--resolve",
            &format!("{WWW}:443:{lb}"),
            &format!("https://{WWW}/"),
        ])
        .0
}

/// SIGHUP re-reads the certificate files: new connections get the renewed certificate while a
/// request that began on the old one finishes; a broken file is refused, named in the log, and
/// the certificate in force stays. The same daemon adds `Strict-Transport-Security` (`hsts`),
/// redirects its cleartext frontend to HTTPS (`redirect_http_to`), learns a cookie the server
/// sets over HTTP/2, redispatches it when its server dies, and counts both on `/metrics`.
#[test]
fn a_sighup_serves_renewed_certificates_to_new_connections_only() {
    if !privileged() {
        return;
    }
    let topo = Topology::new("tlshup", 152);
    let pin = PinDir::new("tlshup");
    let mut backends = start_backends(&topo);
    let Renewal {
        _dirs,
        first,
        renewed,
        live,
        api,
    } = renewal();
    let text = config(&topo, &pin, &live, &api)
        .replace(
            "health_check = { enabled = false }",
            "health_check = { interval = \"300ms\", timeout = \"200ms\", fall = 1, rise = 1 }",
        )
        .replace(
            "backend = \"web\"\ntls.certificates",
            "backend = \"web\"\nhsts = \"1y\"\ntls.certificates",
        )
        .replace(
            "[[backend]]",
            &format!(
                "[[frontend]]\nname = \"http\"\nbind = \"{}:80\"\nbackend = \"web\"\n\
                 redirect_http_to = \"https://{WWW}/\"\n\n[monitor]\nbind = \"{}:8404\"\n\n[[backend]]",
                topo.lb_addr(),
                topo.lb_addr()
            ),
        );
    let cfg = write_temp("tlshup.toml", &text);
    let daemon = start_daemon(topo.lb.name(), &cfg);
    let (client, lb) = (&topo.client, topo.lb_addr());
    assert!(verifies(client, &lb, &first.cert));

    // HSTS on the TLS frontend; a redirect with path and query on the cleartext one.
    let head = curl(client, &lb, WWW, &first.cert, "/", &["--http2", "-i"]);
    assert!(
        head.contains("strict-transport-security: max-age=31536000\r\n"),
        "{head}"
    );
    let redirected = client.exec(&[
        "curl",
        "-sS",
        "-i",
        "--max-time",
        "10",
        &format!("http://{lb}/cart?step=2"),
    ]);
    assert!(redirected.starts_with("HTTP/1.1 308 "), "{redirected}");
    assert!(
        redirected.contains(&format!("location: https://{WWW}/cart?step=2\r\n")),
        "{redirected}"
    );
    // The daemon's output reaches the test through a reader thread, after curl may be done.
    daemon.wait_for_output("relay=\"redirect\"", Duration::from_secs(5));
    let log = daemon.output();
    let line = log.lines().find(|l| l.contains("relay=\"redirect\""));
    assert!(
        line.is_some_and(|l| l.contains("status=308") && l.contains("path=\"/cart\"")),
        "{log}"
    );

    // A cookie the server sets over HTTP/2 is learned, and redispatched when its server dies.
    let h2 = |path: &str, cookie: &str| {
        let cookie = format!("JSESSIONID={cookie}");
        curl(
            client,
            &lb,
            WWW,
            &first.cert,
            path,
            &["--http2", "-b", &cookie],
        )
    };
    let learned = curl(
        client,
        &lb,
        WWW,
        &first.cert,
        "/login?setcookie=tls-learned",
        &["--http2"],
    );
    assert!(learned.starts_with("Backend "), "{learned}");
    for _ in 0..3 {
        assert_eq!(
            h2("/", "tls-learned"),
            learned,
            "the learned session sticks"
        );
    }
    let n: usize = learned
        .trim()
        .trim_start_matches("Backend ")
        .parse()
        .unwrap();
    drop(backends.remove(n - 1));
    daemon.wait_for_output("server is DOWN", Duration::from_secs(10));
    let moved = h2("/", "tls-learned");
    assert!(moved.starts_with("Backend ") && moved != learned, "{moved}");
    assert_eq!(h2("/", "tls-learned"), moved, "stuck to its new server");
    daemon.wait_for_output("decision=\"redispatch\"", Duration::from_secs(10));
    // Counted as on HTTP/1.1: the learned session, the redispatch, the server's requests.
    let monitor = format!("{lb}:8404");
    let metrics = http::in_netns(client.name(), move || {
        http::get(&monitor, "/metrics", None).text()
    });
    let counter = |line_start: &str| -> u64 {
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(line_start))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("no {line_start} in\n{metrics}"))
    };
    assert_eq!(
        counter("stickylb_backend_learned_total{backend=\"web\"} "),
        1
    );
    let redispatched = "stickylb_backend_decisions_total{backend=\"web\",decision=\"redispatch\"} ";
    assert!(counter(redispatched) >= 1, "{metrics}");
    let served = format!("stickylb_server_requests_total{{backend=\"web\",server=\"be{n}\"}} ");
    assert!(counter(&served) >= 4, "{metrics}");
    // Every connection to the TLS frontend was a handshake, all done, each curl's over h2 (curl
    // offers it by default); the cleartext frontend had the one redirected request.
    let handshakes = |result: &str| {
        counter(&format!(
            "stickylb_frontend_tls_handshakes_total{{frontend=\"https\",result=\"{result}\"}} "
        ))
    };
    let done = handshakes("done");
    assert!(done >= 8, "{metrics}");
    assert_eq!(
        (handshakes("failed"), handshakes("timeout")),
        (0, 0),
        "{metrics}"
    );
    assert_eq!(
        counter("stickylb_frontend_connections_total{frontend=\"https\"} "),
        done,
        "{metrics}"
    );
    let h2_chosen = "stickylb_frontend_tls_alpn_total{frontend=\"https\",alpn=\"h2\"} ";
    assert_eq!(counter(h2_chosen), done, "{metrics}");
    assert_eq!(
        counter("stickylb_frontend_connections_total{frontend=\"http\"} "),
        1,
        "{metrics}"
    );

    // A request in progress on a connection made with the first certificate...
    let (ca, resolve) = (first.cert.clone(), format!("{WWW}:443:{lb}"));
    let client_name = client.name().to_owned();
    let slow = std::thread::spawn(move || {
        let output = std::process::Command::new("nsenter")
            .arg(format!("--net=/var/run/netns/{client_name}"))
            .args([
                "curl",
                "-sS",
                "--max-time",
                "20",
                "--cacert",
                ca.to_str().unwrap(),
                "--resolve",
                &resolve,
                "--http2",
                &format!("https://{WWW}/slow/3000"),
            ])
            .output()
            .unwrap();
        String::from_utf8_lossy(&output.stdout).into_owned()
    });
    std::thread::sleep(Duration::from_millis(800));
    // ...goes on while the renewed one is installed and the daemon told.
    install(&renewed, &live);
    daemon.signal(libc::SIGHUP);
    daemon.wait_for_output("frontend https: new certificates", Duration::from_secs(10));
    assert!(
        verifies(client, &lb, &renewed.cert),
        "the renewed certificate is served"
    );
    assert!(
        !verifies(client, &lb, &first.cert),
        "the first is still served"
    );
    let finished = slow.join().unwrap();
    assert!(
        finished.starts_with("Backend "),
        "the old connection: {finished}"
    );

    // A broken file: refused, named, and the renewed certificate stays.
    let rejected = count(&daemon, "reload rejected");
    std::fs::write(&live.cert, "-----BEGIN CERTIFICATE-----\nnot base64\n").unwrap();
    daemon.signal(libc::SIGHUP);
    let logged = common::wait_until(Duration::from_secs(10), || {
        count(&daemon, "reload rejected") > rejected
    });
    assert!(logged, "{}", daemon.output());
    let log = daemon.output();
    let line = log
        .lines()
        .rfind(|l| l.contains("reload rejected"))
        .unwrap();
    assert!(line.contains(live.cert.to_str().unwrap()), "{line}");
    assert!(
        verifies(client, &lb, &renewed.cert),
        "the renewed certificate stays"
    );

    let log = daemon.stop_with(libc::SIGTERM);
    assert!(!log.contains("panicked"), "{log}");
}
