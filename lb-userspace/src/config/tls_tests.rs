//! A frontend's `tls`: both forms, the files read and checked, the fast path it rules out.

use std::path::{Path, PathBuf};

use super::{tests::parse, FastPathMode};

/// Certificate and key files made for these tests, for `names`.
struct Files {
    _dir: tempfile::TempDir,
    cert: PathBuf,
    key: PathBuf,
    /// A second, unrelated key: not the certificate's.
    other_key: PathBuf,
    /// Text that is no PEM.
    garbage: PathBuf,
}

fn files(names: &[&str]) -> Files {
    let dir = tempfile::tempdir().unwrap();
    let made = rcgen::generate_simple_self_signed(
        names.iter().map(|n| (*n).to_owned()).collect::<Vec<_>>(),
    )
    .unwrap();
    let other = rcgen::KeyPair::generate().unwrap();
    let path = |name: &str| dir.path().join(name);
    std::fs::write(path("cert.pem"), made.cert.pem()).unwrap();
    std::fs::write(path("key.pem"), made.key_pair.serialize_pem()).unwrap();
    std::fs::write(path("other.pem"), other.serialize_pem()).unwrap();
    std::fs::write(path("garbage.pem"), "not a certificate\n").unwrap();
    Files {
        cert: path("cert.pem"),
        key: path("key.pem"),
        other_key: path("other.pem"),
        garbage: path("garbage.pem"),
        _dir: dir,
    }
}

/// A configuration whose frontend (line 4) has `tls_line` as its line 8.
fn config(tls_line: &str) -> String {
    format!(
        "[instance]\nname = \"lb\"\n\n[[frontend]]\nname = \"www\"\nbind = \"0.0.0.0:8443\"\n\
         backend = \"web\"\n{tls_line}\n\n[[backend]]\nname = \"web\"\n\
         servers = [ {{ name = \"s1\", addr = \"10.0.0.2:80\" }} ]\n"
    )
}

fn tls_line(cert: &Path, key: &Path) -> String {
    format!(
        "tls = {{ cert = \"{}\", key = \"{}\" }}",
        cert.display(),
        key.display()
    )
}

#[track_caller]
fn assert_problem(text: &str, line: usize, key: &str, needle: &str) {
    super::tests::assert_problem(text, Some(line), key, needle);
}

#[test]
fn one_certificate_loads_and_turns_the_fast_path_off() {
    let f = files(&["www.example.test"]);
    let config = parse(&config(&tls_line(&f.cert, &f.key))).unwrap();
    let frontend = &config.frontends[0];
    assert_eq!(frontend.fastpath, FastPathMode::Off);
    let tls = frontend.tls.as_ref().unwrap();
    assert_eq!(tls.certificates.len(), 1);
    assert_eq!(tls.certificates[0].cert, f.cert);
    assert_eq!(tls.certificates[0].key, f.key);
    assert_eq!(tls.certificates[0].loaded.cert.len(), 1);
    assert!(!config.splices());
    // Debug names the files and never the key.
    let debug = format!("{:?}", tls.certificates[0]);
    assert!(
        debug.contains("key.pem") && !debug.contains("PRIVATE"),
        "{debug}"
    );
}

#[test]
fn several_certificates_keep_their_order_the_first_being_the_default() {
    let (a, b) = (files(&["a.test"]), files(&["b.test"]));
    let text = format!(
        "[instance]\nname = \"lb\"\n\n[[frontend]]\nname = \"www\"\nbind = \"0.0.0.0:8443\"\n\
         backend = \"web\"\ntls.certificates = [\n  {{ cert = \"{}\", key = \"{}\" }},\n  \
         {{ cert = \"{}\", key = \"{}\" }},\n]\n\n[[backend]]\nname = \"web\"\n\
         servers = [ {{ name = \"s1\", addr = \"10.0.0.2:80\" }} ]\n",
        a.cert.display(),
        a.key.display(),
        b.cert.display(),
        b.key.display()
    );
    let parsed = parse(&text).unwrap();
    let tls = parsed.frontends[0].tls.as_ref().unwrap();
    let certs: Vec<_> = tls.certificates.iter().map(|c| c.cert.clone()).collect();
    assert_eq!(certs, [a.cert.clone(), b.cert.clone()]);

    // A bad second file is named with its index and line.
    let bad = text.replace(&b.key.display().to_string(), &a.key.display().to_string());
    assert_problem(
        &bad,
        10,
        "frontend[0].tls.certificates[1].key",
        "is not the key of the certificate",
    );
    let empty = config("tls.certificates = []");
    assert_problem(
        &empty,
        8,
        "frontend[0].tls.certificates",
        "must not be empty",
    );
}

#[test]
fn bad_files_are_refused_naming_the_file() {
    let f = files(&["www.example.test"]);
    let missing = f.cert.with_file_name("missing.pem");
    let cases = [
        (
            tls_line(&missing, &f.key),
            "frontend[0].tls.cert",
            "missing.pem",
        ),
        (
            tls_line(&f.garbage, &f.key),
            "frontend[0].tls.cert",
            "garbage.pem holds no PEM CERTIFICATE",
        ),
        (
            tls_line(&f.cert, &f.garbage),
            "frontend[0].tls.key",
            "garbage.pem holds no PEM PRIVATE KEY",
        ),
        (
            tls_line(&f.key, &f.key),
            "frontend[0].tls.cert",
            "key.pem holds no PEM CERTIFICATE",
        ),
        (
            tls_line(&f.cert, &f.other_key),
            "frontend[0].tls.key",
            "other.pem is not the key of the certificate in",
        ),
        (
            "tls = { cert = \"cert.pem\", key = \"/k.pem\" }".to_owned(),
            "frontend[0].tls.cert",
            "must be an absolute path",
        ),
        (
            format!("tls = {{ cert = \"{}\" }}", f.cert.display()),
            "frontend[0].tls.key",
            "missing required key",
        ),
    ];
    for (line, key, needle) in cases {
        assert_problem(&config(&line), 8, key, needle);
    }
}

#[test]
fn both_forms_at_once_and_an_empty_table_are_refused() {
    let f = files(&["www.example.test"]);
    let both = format!(
        "tls = {{ cert = \"{0}\", key = \"{1}\", certificates = [{{ cert = \"{0}\", key = \"{1}\" }}] }}",
        f.cert.display(),
        f.key.display()
    );
    assert_problem(
        &config(&both),
        8,
        "frontend[0].tls",
        "has both cert/key and certificates",
    );
    assert_problem(
        &config("tls = {}"),
        4,
        "frontend[0].tls",
        "needs cert and key",
    );
}

#[test]
fn a_tls_frontend_cannot_splice() {
    let f = files(&["www.example.test"]);
    let text = config(&format!(
        "fastpath = \"splice\"\n{}",
        tls_line(&f.cert, &f.key)
    ));
    assert_problem(&text, 8, "frontend[0].fastpath", "served in userspace");
    let off = config(&format!(
        "fastpath = \"off\"\n{}",
        tls_line(&f.cert, &f.key)
    ));
    assert_eq!(
        parse(&off).unwrap().frontends[0].fastpath,
        FastPathMode::Off
    );
}

/// `hsts` belongs to a TLS frontend, `redirect_http_to` to a cleartext one; both are checked
/// with their line.
#[test]
fn hsts_and_redirect_http_to_go_on_the_right_frontend() {
    let f = files(&["www.example.test"]);
    let tls = tls_line(&f.cert, &f.key);
    let config_ok = parse(&config(&format!("{tls}\nhsts = \"1y\""))).unwrap();
    assert_eq!(
        config_ok.frontends[0].hsts,
        Some(std::time::Duration::from_secs(365 * 24 * 3600))
    );
    let redirect = parse(&config("redirect_http_to = \"https://www.example.test/\"")).unwrap();
    let frontend = &redirect.frontends[0];
    assert_eq!(
        frontend.redirect_http_to.as_deref(),
        Some("https://www.example.test")
    );
    assert_eq!(frontend.fastpath, FastPathMode::Off, "nothing to splice");

    assert_problem(
        &config("hsts = \"1y\""),
        8,
        "frontend[0].hsts",
        "set it on the TLS frontend",
    );
    assert_problem(
        &config(&format!("{tls}\nhsts = \"soon\"")),
        9,
        "frontend[0].hsts",
        "does not start with a number",
    );
    assert_problem(
        &config(&format!("{tls}\nredirect_http_to = \"https://x.test\"")),
        9,
        "frontend[0].redirect_http_to",
        "this one has tls",
    );
    assert_problem(
        &config("redirect_http_to = \"http://www.example.test\""),
        8,
        "frontend[0].redirect_http_to",
        "not an https:// URL",
    );
    assert_problem(
        &config("redirect_http_to = \"https://www.example.test\"\nfastpath = \"splice\""),
        9,
        "frontend[0].fastpath",
        "redirect_http_to",
    );
}
