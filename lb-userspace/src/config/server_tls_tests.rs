//! A server's `tls`, `sni` and `ca`: the CA bundle read, the identity verified, the problems
//! named with their lines.

use std::path::PathBuf;

use rustls_pki_types::ServerName;

use super::{tests::parse, ServerTls};

/// CA bundles made for these tests.
struct Files {
    _dir: tempfile::TempDir,
    ca: PathBuf,
    /// Another CA, in a file of its own.
    other_ca: PathBuf,
    /// Text that is no PEM.
    garbage: PathBuf,
}

fn ca_pem() -> String {
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let key = rcgen::KeyPair::generate().unwrap();
    params.self_signed(&key).unwrap().pem()
}

fn files() -> Files {
    let dir = tempfile::tempdir().unwrap();
    let path = |name: &str| dir.path().join(name);
    std::fs::write(path("ca.pem"), ca_pem()).unwrap();
    std::fs::write(path("other.pem"), ca_pem()).unwrap();
    std::fs::write(path("garbage.pem"), "not a certificate\n").unwrap();
    Files {
        ca: path("ca.pem"),
        other_ca: path("other.pem"),
        garbage: path("garbage.pem"),
        _dir: dir,
    }
}

/// A configuration whose one server (line 9) is `{ name = "s1", addr = "10.0.0.2:443", ... }`
/// with `keys` appended.
fn config(keys: &str) -> String {
    format!(
        "[instance]\nname = \"lb\"\n\n[[frontend]]\nname = \"www\"\nbind = \"0.0.0.0:80\"\n\
         backend = \"web\"\n\n[[backend]]\nname = \"web\"\nservers = [\n  \
         {{ name = \"s1\", addr = \"10.0.0.2:443\"{keys} }},\n]\n"
    )
}

fn server_tls(keys: &str) -> Option<ServerTls> {
    let text = config(keys);
    let config = parse(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
    config.backends[0].servers[0].tls.clone()
}

#[track_caller]
fn assert_problem(keys: &str, key: &str, needle: &str) {
    super::tests::assert_problem(&config(keys), Some(12), key, needle);
}

#[test]
fn a_server_is_cleartext_unless_it_says_tls() {
    assert_eq!(server_tls(""), None);
    assert_eq!(server_tls(", tls = false"), None);
}

#[test]
fn sni_names_the_identity_and_ca_the_roots() {
    let f = files();
    let keys = format!(
        ", tls = true, sni = \"app.internal\", ca = \"{}\"",
        f.ca.display()
    );
    let tls = server_tls(&keys).unwrap();
    assert_eq!(tls.sni.as_deref(), Some("app.internal"));
    assert_eq!(tls.ca, f.ca);
    assert_eq!(tls.name, ServerName::try_from("app.internal").unwrap());
    assert_eq!(tls.client.alpn_protocols, [b"http/1.1".to_vec()]);
}

#[test]
fn without_sni_the_address_is_verified_and_the_system_bundle_is_the_default() {
    let tls = server_tls(", tls = true").unwrap();
    assert_eq!(tls.sni, None);
    assert_eq!(tls.name, ServerName::try_from("10.0.0.2").unwrap());
    assert_eq!(tls.ca, PathBuf::from(ServerTls::SYSTEM_CA));
}

#[test]
fn other_cas_in_the_same_file_are_other_settings() {
    let f = files();
    let keys = format!(", tls = true, ca = \"{}\"", f.ca.display());
    let before = server_tls(&keys).unwrap();
    assert_eq!(before, server_tls(&keys).unwrap());
    std::fs::copy(&f.other_ca, &f.ca).unwrap();
    assert_ne!(before, server_tls(&keys).unwrap());
}

#[test]
fn bad_tls_settings_are_named_with_their_line() {
    let f = files();
    assert_problem(
        ", sni = \"app.internal\"",
        "backend[0].servers[0].sni",
        "tls = true",
    );
    let ca = format!(", tls = false, ca = \"{}\"", f.ca.display());
    assert_problem(&ca, "backend[0].servers[0].ca", "tls = true");
    let sni = ", tls = true, sni = \"not a name\"";
    assert_problem(sni, "backend[0].servers[0].sni", "not a DNS name");
    let relative = ", tls = true, ca = \"ca.pem\"";
    assert_problem(relative, "backend[0].servers[0].ca", "absolute");
    let missing = ", tls = true, ca = \"/nonexistent/ca.pem\"";
    assert_problem(
        missing,
        "backend[0].servers[0].ca",
        "cannot read /nonexistent/ca.pem",
    );
    let garbage = format!(", tls = true, ca = \"{}\"", f.garbage.display());
    assert_problem(
        &garbage,
        "backend[0].servers[0].ca",
        "holds no PEM CERTIFICATE",
    );
    assert_problem(
        ", tls = \"yes\"",
        "backend[0].servers[0].tls",
        "invalid type",
    );
}
