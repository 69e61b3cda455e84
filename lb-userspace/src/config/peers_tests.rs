//! `[peers]`: `allow` (its default and bad blocks) and `tls` (the files read and checked).

use std::path::{Path, PathBuf};

use super::{tests::parse, Cidr};

/// A CA, a leaf it signed (with its key) and other files that must be refused.
struct Files {
    _dir: tempfile::TempDir,
    ca: PathBuf,
    cert: PathBuf,
    key: PathBuf,
    /// A key that is not the leaf's.
    other_key: PathBuf,
    garbage: PathBuf,
}

fn files() -> Files {
    let dir = tempfile::tempdir().unwrap();
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(Vec::new()).unwrap();
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca = params.self_signed(&ca_key).unwrap();
    let leaf_key = rcgen::KeyPair::generate().unwrap();
    let leaf = rcgen::CertificateParams::new(vec!["lb-1".to_owned()])
        .unwrap()
        .signed_by(&leaf_key, &ca, &ca_key)
        .unwrap();
    let path = |name: &str| dir.path().join(name);
    std::fs::write(path("ca.pem"), ca.pem()).unwrap();
    std::fs::write(path("cert.pem"), leaf.pem()).unwrap();
    std::fs::write(path("key.pem"), leaf_key.serialize_pem()).unwrap();
    let other = rcgen::KeyPair::generate().unwrap();
    std::fs::write(path("other.pem"), other.serialize_pem()).unwrap();
    std::fs::write(path("garbage.pem"), "not a certificate\n").unwrap();
    Files {
        ca: path("ca.pem"),
        cert: path("cert.pem"),
        key: path("key.pem"),
        other_key: path("other.pem"),
        garbage: path("garbage.pem"),
        _dir: dir,
    }
}

/// A configuration whose `[peers]` section has `extra` as its line 10.
fn config(extra: &str) -> String {
    format!(
        "[instance]\nname = \"lb-1\"\n\n[[backend]]\nname = \"web\"\n\
         servers = [ {{ name = \"s1\", addr = \"10.0.0.2:80\" }} ]\n\n[peers]\n\
         bind = \"0.0.0.0:1024\"\n{extra}\n\
         members = [ {{ name = \"lb-1\", addr = \"10.0.0.11:1024\" }}, \
         {{ name = \"lb-2\", addr = \"[fd00::12]:1024\" }} ]\n\n\
         [[frontend]]\nname = \"www\"\nbind = \"0.0.0.0:80\"\nbackend = \"web\"\n"
    )
}

fn tls_line(cert: &Path, key: &Path, ca: &Path) -> String {
    format!(
        "tls = {{ cert = \"{}\", key = \"{}\", ca = \"{}\" }}",
        cert.display(),
        key.display(),
        ca.display()
    )
}

#[track_caller]
fn assert_problem(text: &str, line: usize, key: &str, needle: &str) {
    super::tests::assert_problem(text, Some(line), key, needle);
}

#[test]
fn allow_defaults_to_the_members_addresses() {
    let peers = parse(&config("")).unwrap().peers.unwrap();
    let hosts: Vec<String> = peers.allow.iter().map(ToString::to_string).collect();
    assert_eq!(hosts, ["10.0.0.11/32", "fd00::12/128"]);
    assert!(peers.tls.is_none());
}

#[test]
fn allow_takes_blocks_and_names_the_bad_ones() {
    let peers = parse(&config(r#"allow = ["10.0.0.0/24", "192.0.2.7"]"#))
        .unwrap()
        .peers
        .unwrap();
    assert_eq!(
        peers.allow,
        [
            "10.0.0.0/24".parse::<Cidr>().unwrap(),
            "192.0.2.7/32".parse().unwrap()
        ]
    );
    assert_problem(
        &config(r#"allow = ["10.0.0.0/24", "10.0.0.0/40"]"#),
        10,
        "peers.allow[1]",
        "prefix length is out of range",
    );
    assert_problem(
        &config(r#"allow = ["lb-2"]"#),
        10,
        "peers.allow[0]",
        "not an IP address",
    );
    assert_problem(
        &config("allow = []"),
        10,
        "peers.allow",
        "must not be empty",
    );
}

#[test]
fn tls_loads_the_certificate_and_the_ca() {
    let f = files();
    let peers = parse(&config(&tls_line(&f.cert, &f.key, &f.ca)))
        .unwrap()
        .peers
        .unwrap();
    let tls = peers.tls.unwrap();
    assert_eq!(tls.certificate.cert, f.cert);
    assert_eq!(tls.ca, f.ca);
    assert_eq!(tls.roots.len(), 1);
    // `allow` keeps its default with TLS on.
    assert_eq!(peers.allow.len(), 2);
}

#[test]
fn bad_tls_files_are_refused_naming_the_key_and_the_file() {
    let f = files();
    let missing = f.ca.with_file_name("missing.pem");
    let cases = [
        (
            tls_line(&f.cert, &f.key, &missing),
            "peers.tls.ca",
            "missing.pem",
        ),
        (
            tls_line(&f.cert, &f.key, &f.garbage),
            "peers.tls.ca",
            "garbage.pem holds no PEM CERTIFICATE",
        ),
        (
            tls_line(&f.garbage, &f.key, &f.ca),
            "peers.tls.cert",
            "garbage.pem holds no PEM CERTIFICATE",
        ),
        (
            tls_line(&f.cert, &f.other_key, &f.ca),
            "peers.tls.key",
            "other.pem is not the key of the certificate in",
        ),
        (
            tls_line(&f.cert, &f.key, Path::new("ca.pem")),
            "peers.tls.ca",
            "must be an absolute path",
        ),
        (
            format!(
                "tls = {{ cert = \"{}\", key = \"{}\" }}",
                f.cert.display(),
                f.key.display()
            ),
            "peers.tls.ca",
            "missing required key",
        ),
        (
            format!(
                "tls = {{ key = \"{}\", ca = \"{}\" }}",
                f.key.display(),
                f.ca.display()
            ),
            "peers.tls.cert",
            "missing required key",
        ),
    ];
    for (line, key, needle) in cases {
        assert_problem(&config(&line), 10, key, needle);
    }
    // An unknown key in the table is a parse error like any other.
    assert_problem(
        &config(&format!("tls = {{ crt = \"{}\" }}", f.cert.display())),
        10,
        "peers.tls.crt",
        "unknown field",
    );
}
