//! Peers over mutual TLS and `[peers] allow`, end to end, each load balancer a host of its own
//! on one LAN, with a CA and certificates made here (rcgen, ECDSA P-256): two stickylb nodes
//! share a session over TLS; HAProxy 2.6 is a TLS peer in both directions; a peer whose
//! certificate is from another CA, or that has none, is refused and nothing crosses; a source
//! outside `allow` is closed before it is answered while the members are served; a SIGHUP
//! that changes the certificate files is refused and an upgrade serves the new certificate.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test code: a failed setup step must fail the test loudly"
)]

mod common;

use std::{
    io::{Read as _, Write as _},
    net::{IpAddr, TcpStream},
    path::{Path, PathBuf},
    sync::Arc,
    thread,
    time::Duration,
};

use common::{
    demo_cookie,
    haproxy::HaproxyPeer,
    http::in_netns,
    peers::{node_name, server_of, Cluster, ClusterSpec, BACKEND, PEERS_PORT, SYNC},
    privileged, wait_until,
};

/// A CA and the certificates it signs, as PEM files in a temporary directory.
struct Pki {
    dir: tempfile::TempDir,
    ca: rcgen::Certificate,
    ca_key: rcgen::KeyPair,
    ca_file: PathBuf,
    /// Leaves issued so far: each gets files of its own.
    issued: std::cell::Cell<u32>,
}

/// A member's files: chain, key, and both in one (HAProxy's `crt`), and the certificate.
struct Leaf {
    der: Vec<u8>,
    cert: PathBuf,
    key: PathBuf,
    combined: PathBuf,
}

impl Pki {
    fn new(tag: &str) -> Pki {
        let dir = tempfile::tempdir().unwrap();
        let ca_key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::new()).unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, format!("peers CA {tag}"));
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::CrlSign,
            rcgen::KeyUsagePurpose::DigitalSignature,
        ];
        let ca = params.self_signed(&ca_key).unwrap();
        let ca_file = dir.path().join("ca.pem");
        std::fs::write(&ca_file, ca.pem()).unwrap();
        Pki {
            dir,
            ca,
            ca_key,
            ca_file,
            issued: std::cell::Cell::new(0),
        }
    }

    /// A certificate for member `name` at `ip`: both as a DNS name and an IP address, for
    /// serving and for being a client.
    fn leaf(&self, name: &str, ip: &str) -> Leaf {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let mut params = rcgen::CertificateParams::new(vec![name.to_owned()]).unwrap();
        params
            .subject_alt_names
            .push(rcgen::SanType::IpAddress(ip.parse::<IpAddr>().unwrap()));
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        params.extended_key_usages = vec![
            rcgen::ExtendedKeyUsagePurpose::ServerAuth,
            rcgen::ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let cert = params.signed_by(&key, &self.ca, &self.ca_key).unwrap();
        let serial = self.issued.get() + 1;
        self.issued.set(serial);
        let path = |what: &str| self.dir.path().join(format!("{name}-{serial}-{what}.pem"));
        let leaf = Leaf {
            der: cert.der().to_vec(),
            cert: path("cert"),
            key: path("key"),
            combined: path("combined"),
        };
        std::fs::write(&leaf.cert, cert.pem()).unwrap();
        std::fs::write(&leaf.key, key.serialize_pem()).unwrap();
        std::fs::write(
            &leaf.combined,
            format!("{}{}", cert.pem(), key.serialize_pem()),
        )
        .unwrap();
        leaf
    }
}

fn tls_line(leaf: &Leaf, ca: &Path) -> String {
    format!(
        "tls = {{ cert = \"{}\", key = \"{}\", ca = \"{}\" }}",
        leaf.cert.display(),
        leaf.key.display(),
        ca.display()
    )
}

/// Each node's `tls` line, node `i` with `leaves[i]`.
fn per_node(leaves: &[Leaf], ca: &Path) -> Vec<String> {
    leaves.iter().map(|leaf| tls_line(leaf, ca)).collect()
}

/// The TLS tests' cluster: three backends, no monitor, node `i` with `peers_extra[i]` in its
/// `[peers]`.
fn tls_cluster(
    tag: &str,
    net: u8,
    n: usize,
    extra_members: Vec<(String, String)>,
    peers_extra: Vec<String>,
) -> Cluster {
    let spec = ClusterSpec {
        servers: 3,
        monitor: false,
        extra_members,
        peers_extra,
    };
    Cluster::new(tag, net, n, spec)
}

#[test]
fn two_nodes_share_sessions_over_mutual_tls() {
    if !privileged() {
        return;
    }
    let pki = Pki::new("a");
    let leaves = [
        pki.leaf(&node_name(0), "10.180.0.11"),
        pki.leaf(&node_name(1), "10.180.0.12"),
    ];
    let mut cluster = tls_cluster("ptls", 180, 2, Vec::new(), per_node(&leaves, &pki.ca_file));
    cluster.start(0);
    cluster.start(1);
    let one = demo_cookie(1);
    let two = demo_cookie(2);
    let first = server_of(&cluster.served_by(0, &one));
    let second = server_of(&cluster.served_by(1, &two));
    let synced = wait_until(SYNC, || {
        let (a, b) = (cluster.table(0), cluster.table(1));
        a.get(&one) == Some(&first)
            && b.get(&one) == Some(&first)
            && a.get(&two) == Some(&second)
            && b.get(&two) == Some(&second)
    });
    assert!(
        synced,
        "{:#?}\n{:#?}\n{}\n{}",
        cluster.table(0),
        cluster.table(1),
        cluster.log(0),
        cluster.log(1)
    );
    assert_eq!(server_of(&cluster.served_by(1, &one)), first);
    assert!(cluster.log(0).contains("peer session established"));
}

/// HAProxy as a peer over mutual TLS (`bind ... ssl ... verify required`, `default-server ssl
/// verify required ...`) of `others`, in front of the cluster's servers.
fn start_haproxy(
    ns: &str,
    addr: &str,
    cluster: &Cluster,
    others: &[(String, String)],
    leaf: &Leaf,
    ca: &Path,
) -> HaproxyPeer {
    let (crt, ca) = (leaf.combined.display(), ca.display());
    let others: String = others
        .iter()
        .map(|(name, addr)| format!("    server {name} {addr}\n"))
        .collect();
    let peers = format!(
        "    bind {addr}:{PEERS_PORT} ssl crt {crt} ca-file {ca} verify required\n\
         \x20   default-server ssl verify required ca-file {ca} crt {crt}\n\
         \x20   server {name}\n{others}",
        name = HaproxyPeer::NAME,
    );
    HaproxyPeer::start(ns, addr, BACKEND, &peers, &cluster.haproxy_servers())
}

#[test]
fn haproxy_2_6_is_a_tls_peer_in_both_directions() {
    if !privileged() {
        return;
    }
    assert!(
        Path::new("/usr/sbin/haproxy").exists(),
        "HAProxy is needed (cargo xtask setup installs it)"
    );
    let pki = Pki::new("b");
    let hap_addr = "10.181.0.21";
    let ours = pki.leaf(&node_name(0), "10.181.0.11");
    let theirs = pki.leaf(HaproxyPeer::NAME, hap_addr);
    let hap_member = (
        HaproxyPeer::NAME.to_owned(),
        format!("{hap_addr}:{PEERS_PORT}"),
    );
    let mut cluster = tls_cluster(
        "ptlsh",
        181,
        1,
        vec![hap_member],
        vec![tls_line(&ours, &pki.ca_file)],
    );
    let hap_ns = cluster.lan.add_host("ptlshh", 21).name().to_owned();
    let others = [(node_name(0), format!("10.181.0.11:{PEERS_PORT}"))];
    let haproxy = start_haproxy(&hap_ns, hap_addr, &cluster, &others, &theirs, &pki.ca_file);
    cluster.start(0);

    // Made in HAProxy, learned by stickylb.
    let via_haproxy: Vec<String> = (1..=3).map(demo_cookie).collect();
    cluster.learn_from_haproxy(0, &haproxy, &via_haproxy);

    // Made in stickylb, in HAProxy's stick table.
    let via_us: Vec<String> = (10..=12).map(demo_cookie).collect();
    cluster.teach_haproxy(0, &haproxy, &via_us);
    let log = cluster.log(0);
    assert!(!log.contains("TLS handshake failed"), "{log}");
}

/// A TLS client without a certificate that says hello as `caller`: what it reads back.
fn hello_without_certificate(ns: &str, addr: &str, ca: &Path, caller: &str) -> Vec<u8> {
    tls_client_without_certificate(ns, addr, ca, caller).1
}

/// A TLS client without a certificate that says hello as `caller`: the certificate the
/// server presented (the handshake completes on the client's side before the server refuses
/// it), and what it reads back.
fn tls_client_without_certificate(
    ns: &str,
    addr: &str,
    ca: &Path,
    caller: &str,
) -> (Vec<u8>, Vec<u8>) {
    let mut roots = rustls::RootCertStore::empty();
    let ca_pem = std::fs::read(ca).unwrap();
    for cert in pem_certs(&ca_pem) {
        roots.add(cert).unwrap();
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let (addr, hello) = (
        addr.to_owned(),
        format!("HAProxyS 2.1\nlb-1\n{caller} 1 1\n"),
    );
    in_netns(ns, move || {
        let name = rustls::pki_types::ServerName::try_from("lb-1").unwrap();
        let conn = rustls::ClientConnection::new(Arc::new(config), name).unwrap();
        let tcp = TcpStream::connect(&addr).unwrap();
        tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut tls = rustls::StreamOwned::new(conn, tcp);
        let mut out = Vec::new();
        // Either side may fail: the server refuses during or right after the handshake.
        if tls.write_all(hello.as_bytes()).is_ok() {
            let _ = tls.read_to_end(&mut out);
        }
        let presented = tls
            .conn
            .peer_certificates()
            .and_then(|chain| chain.first())
            .map(|cert| cert.to_vec())
            .unwrap_or_default();
        (presented, out)
    })
}

fn pem_certs(pem: &[u8]) -> Vec<rustls::pki_types::CertificateDer<'static>> {
    use rustls::pki_types::pem::PemObject as _;
    rustls::pki_types::CertificateDer::pem_slice_iter(pem)
        .collect::<Result<_, _>>()
        .unwrap()
}

#[test]
fn a_peer_with_a_certificate_from_another_ca_or_none_is_refused() {
    if !privileged() {
        return;
    }
    let pki = Pki::new("c");
    let rogue_pki = Pki::new("rogue");
    let good = pki.leaf(&node_name(0), "10.182.0.11");
    let rogue = rogue_pki.leaf(&node_name(1), "10.182.0.12");
    // Node 2 (lb-2) trusts our CA but presents a certificate from another.
    let mut cluster = tls_cluster(
        "ptlsc",
        182,
        2,
        Vec::new(),
        vec![
            tls_line(&good, &pki.ca_file),
            tls_line(&rogue, &pki.ca_file),
        ],
    );
    cluster.start(0);
    cluster.start(1);
    let one = demo_cookie(1);
    let two = demo_cookie(2);
    cluster.served_by(0, &one);
    cluster.served_by(1, &two);
    let refused = wait_until(SYNC, || {
        let (a, b) = (cluster.log(0), cluster.log(1));
        a.contains("refused a peers connection")
            && a.contains("remote=10.182.0.12")
            && a.contains("TLS handshake failed: invalid peer certificate: UnknownIssuer")
            && b.contains(
                "cannot open a session with the peer: TLS handshake failed: received fatal \
                 alert: UnknownCA",
            )
    });
    assert!(
        refused,
        "{}\n--- lb-2 ---\n{}",
        cluster.log(0),
        cluster.log(1)
    );
    // No certificate at all, from a member's address: refused too, and never answered.
    let peers_addr = format!("{}:{PEERS_PORT}", cluster.lan.lb_addr(0));
    let rogue_ns = cluster.lan.lbs[1].name().to_owned();
    let out = hello_without_certificate(&rogue_ns, &peers_addr, &pki.ca_file, &node_name(1));
    assert!(
        out.is_empty(),
        "answered: {:?}",
        String::from_utf8_lossy(&out)
    );
    assert!(
        wait_until(SYNC, || cluster
            .log(0)
            .contains("TLS handshake failed: peer sent no certificates")),
        "{}",
        cluster.log(0)
    );
    // Dialling lb-2, lb-1 refuses its certificate too.
    assert!(
        wait_until(SYNC, || cluster.log(0).contains(
            "cannot open a session with the peer: TLS handshake failed: invalid peer \
             certificate: UnknownIssuer"
        )),
        "{}",
        cluster.log(0)
    );
    // Nothing crossed, either way.
    thread::sleep(Duration::from_secs(2));
    assert!(
        !cluster.table(0).contains_key(&two),
        "{:#?}",
        cluster.table(0)
    );
    assert!(
        !cluster.table(1).contains_key(&one),
        "{:#?}",
        cluster.table(1)
    );
    assert!(!cluster.log(0).contains("peer session established"));
    assert!(!cluster.log(1).contains("peer session established"));
}

#[test]
fn a_source_outside_allow_is_closed_unanswered_while_members_are_served() {
    if !privileged() {
        return;
    }
    // Cleartext, `allow` left to its default: the members' addresses.
    let mut cluster = tls_cluster("pallow", 183, 2, Vec::new(), Vec::new());
    cluster.start(0);
    cluster.start(1);
    let peers_addr = format!("{}:{PEERS_PORT}", cluster.lan.lb_addr(0));
    let client = cluster.lan.client.name().to_owned();
    // The client (10.183.0.100) is no member: a well-formed hello from it gets nothing back.
    let (addr, hello) = (peers_addr.clone(), b"HAProxyS 2.1\nlb-1\nlb-2 1 1\n");
    let answer = in_netns(&client, move || {
        let mut conn = TcpStream::connect(&addr).unwrap();
        conn.set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let _ = conn.write_all(hello);
        let mut out = Vec::new();
        // A reset (the daemon closed before reading) or an end: either way, no bytes.
        let _ = conn.read_to_end(&mut out);
        out
    });
    assert!(answer.is_empty(), "answered: {answer:?}");
    assert!(
        wait_until(SYNC, || cluster
            .log(0)
            .contains("the source is not in [peers] allow")),
        "{}",
        cluster.log(0)
    );
    assert!(cluster.log(0).contains("remote=10.183.0.100:"));
    // The member is served: a session made on one node reaches the other.
    let session = demo_cookie(7);
    let chosen = server_of(&cluster.served_by(1, &session));
    assert!(
        wait_until(SYNC, || cluster.table(0).get(&session) == Some(&chosen)),
        "{:#?}\n{}",
        cluster.table(0),
        cluster.log(0)
    );
}

#[test]
fn a_new_peers_certificate_is_refused_by_sighup_and_served_after_an_upgrade() {
    if !privileged() {
        return;
    }
    let pki = Pki::new("u");
    let leaves = [
        pki.leaf(&node_name(0), "10.184.0.11"),
        pki.leaf(&node_name(1), "10.184.0.12"),
    ];
    let mut cluster = tls_cluster("ptlsu", 184, 2, Vec::new(), per_node(&leaves, &pki.ca_file));
    cluster.start(0);
    cluster.start(1);
    let peers_addr = format!("{}:{PEERS_PORT}", cluster.lan.lb_addr(0));
    let member_ns = cluster.lan.lbs[1].name().to_owned();
    let presented =
        || tls_client_without_certificate(&member_ns, &peers_addr, &pki.ca_file, "lb-2").0;
    assert_eq!(presented(), leaves[0].der);

    // lb-1's configuration now names renewed files: SIGHUP refuses it, naming the change,
    // and the old certificate stays.
    let renewed = pki.leaf(&node_name(0), "10.184.0.11");
    let text = std::fs::read_to_string(&cluster.configs[0]).unwrap();
    let text = text.replace(
        &tls_line(&leaves[0], &pki.ca_file),
        &tls_line(&renewed, &pki.ca_file),
    );
    std::fs::write(&cluster.configs[0], text).unwrap();
    cluster.node(0).signal(libc::SIGHUP);
    assert!(
        wait_until(SYNC, || cluster.log(0).contains("reload rejected")),
        "{}",
        cluster.log(0)
    );
    let log = cluster.log(0);
    let line = log.lines().find(|l| l.contains("reload rejected")).unwrap();
    assert!(line.contains("peers: tls {"), "{line}");
    assert!(line.contains("--upgrade"), "{line}");
    assert_eq!(presented(), leaves[0].der);

    // An upgrade takes it: the new process presents the renewed certificate, and its
    // sessions with the other node carry entries both ways.
    let upgrade = cluster.upgrade(0);
    assert_eq!(presented(), renewed.der);
    let (one, two) = (demo_cookie(21), demo_cookie(22));
    let first = server_of(&cluster.served_by(0, &one));
    let second = server_of(&cluster.served_by(1, &two));
    let synced = wait_until(SYNC, || {
        let (a, b) = (cluster.table(0), cluster.table(1));
        a.get(&two) == Some(&second) && b.get(&one) == Some(&first)
    });
    assert!(
        synced,
        "{:#?}\n{:#?}\n{}\n{}",
        cluster.table(0),
        cluster.table(1),
        upgrade.output(),
        cluster.log(1)
    );
}
