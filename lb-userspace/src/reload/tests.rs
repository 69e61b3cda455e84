use std::time::Duration;

use super::*;
use crate::{backend::admin::MemorySettings, routing, table};

/// `servers` and `extra` (appended) vary; the rest is fixed.
fn config(servers: &str, backend: &str, extra: &str) -> Config {
    let text = format!(
        r#"
[instance]
name = "t"

[[frontend]]
name = "www"
bind = "127.0.0.1:8080"
backend = "web"

[[backend]]
name = "web"
{backend}
health_check = {{ interval = "1h", fall = 3 }}
servers = [{servers}]

[monitor]
bind = "127.0.0.1:8404"
{extra}
"#
    );
    Config::from_toml(&text).unwrap_or_else(|e| panic!("{e}\n{text}"))
}

const THREE: &str = r#"
  { name = "be1", addr = "127.0.0.1:1" },
  { name = "be2", addr = "127.0.0.1:2" },
  { name = "be3", addr = "127.0.0.1:3" },"#;

/// be3 removed, be4 added, be2 moved to port 22.
const NEXT: &str = r#"
  { name = "be1", addr = "127.0.0.1:1" },
  { name = "be2", addr = "127.0.0.1:22" },
  { name = "be4", addr = "127.0.0.1:4" },"#;

fn needs_upgrade_list(old: &Config, new: &Config) -> Vec<String> {
    match compare(old, new) {
        Err(ReloadError::NeedsUpgrade { what }) => what,
        Err(other) => panic!("{other}"),
        Ok(summary) => panic!("applied in place: {summary}"),
    }
}

#[test]
fn the_same_configuration_changes_nothing() {
    let old = config(THREE, "", "");
    let summary = compare(&old, &old.clone()).unwrap();
    assert!(summary.is_empty());
    assert_eq!(summary.to_string(), "configuration unchanged");
}

#[test]
fn servers_health_checks_balance_and_timeouts_change_in_place() {
    let old = config(THREE, "", "");
    let new = config(
        NEXT,
        r#"balance = "leastconn""#,
        "[timeouts]\nclient = \"2s\"\n",
    );
    let summary = compare(&old, &new).unwrap();
    assert_eq!(
        summary.to_string(),
        "reloaded configuration: web: +be4 -be3 ~be2(addr), balance roundrobin -> leastconn; \
         timeouts changed (client 50s -> 2s)"
    );
    assert!(summary.backends[0].restarts_checks());

    let mut new = old.clone();
    new.backends[0].health_check.interval = Duration::from_secs(5);
    new.backends[0].servers.reverse();
    let summary = compare(&old, &new).unwrap();
    assert_eq!(
        summary.to_string(),
        "reloaded configuration: web: servers reordered, health check changed"
    );
    assert!(summary.backends[0].restarts_checks());
}

#[test]
fn reordering_servers_alone_keeps_the_checks_running() {
    let old = config(THREE, "", "");
    let mut new = old.clone();
    new.backends[0].servers.swap(0, 2);
    let summary = compare(&old, &new).unwrap();
    assert!(summary.backends[0].reordered);
    assert!(!summary.backends[0].restarts_checks());
}

#[test]
fn every_fixed_setting_is_named_and_refused() {
    let old = config(THREE, "", "");
    let new = config(
        NEXT,
        "table_size = 1000\nstick_cookie = \"SID\"",
        "[peers]\nbind = \"127.0.0.1:1024\"\nmembers = [{ name = \"t\", addr = \"127.0.0.1:1024\" }]\n",
    );
    let mut new = new;
    new.frontends[0].bind = "127.0.0.1:8081".parse().unwrap();
    new.monitor = None;
    new.instance.name = "u".into();
    let what = needs_upgrade_list(&old, &new);
    assert_eq!(
        what,
        [
            r#"instance: name "t" -> "u""#,
            "frontend www: bind 127.0.0.1:8080 -> 127.0.0.1:8081",
            r#"backend web: stick_cookie "JSESSIONID" -> "SID""#,
            "backend web: table_size 1048576 -> 1000",
            "monitor: 127.0.0.1:8404 -> none",
            "peers: none -> 127.0.0.1:1024",
        ]
    );
    let message = ReloadError::NeedsUpgrade { what }.to_string();
    assert!(message.contains("stickylb reload --upgrade"), "{message}");
}

#[test]
fn a_new_monitor_password_is_refused_without_showing_it() {
    let old = config(THREE, "", "");
    let mut new = old.clone();
    new.monitor.as_mut().unwrap().auth = Some(config::MonitorAuth {
        user: "ops".into(),
        password_file: "/etc/stickylb/monitor.pass".into(),
        password: config::Password::new("hunter2".into()),
    });
    let what = needs_upgrade_list(&old, &new);
    assert_eq!(
        what,
        ["monitor: auth (user, password_file or the password in it)"]
    );
    assert!(!ReloadError::NeedsUpgrade { what }
        .to_string()
        .contains("hunter2"));
}

#[test]
fn frontends_and_backends_added_or_removed_are_refused() {
    let old = config(THREE, "", "");
    let mut new = old.clone();
    new.frontends[0].name = "api".into();
    new.backends[0].name = "web2".into();
    new.frontends[0].backend = "web2".into();
    assert_eq!(
        needs_upgrade_list(&old, &new),
        [
            "frontend www: removed",
            "frontend api: added",
            "backend web: removed",
            "backend web2: added",
        ]
    );
}

#[tokio::test]
async fn a_reload_keeps_server_state_and_applies_all_or_nothing() {
    let old = config(THREE, "", "");
    let store = table::memory::store(1024);
    let (backends, frontends) = routing::build(&old, &store, &MemorySettings::shared());
    let live = Live::start(old.clone(), (backends.clone(), frontends));
    let web = &backends[0];
    let before = web.servers();
    before[0].set_up(false);
    let _in_flight = before[0].start_request();

    // A server change beside a frontend change: refused, and nothing of it applied.
    let mut refused = config(NEXT, "", "[timeouts]\nconnect = \"1s\"\n");
    refused.frontends[0].bind = "127.0.0.1:9999".parse().unwrap();
    assert!(live.reload(refused).is_err());
    assert!(Arc::ptr_eq(&web.servers(), &before));
    assert_eq!(live.config(), old);
    assert_eq!(live.proxy().timeouts().0, old.timeouts.connect);

    let new = config(
        NEXT,
        r#"balance = "random""#,
        "[timeouts]\nconnect = \"1s\"\nclient = \"3s\"\nmax_header_bytes = 8192\n",
    );
    let summary = live.reload(new.clone()).unwrap();
    assert_eq!(summary.timeouts.len(), 3, "{summary}");
    let after = web.servers();
    let names: Vec<&str> = after.iter().map(|s| &*s.name).collect();
    assert_eq!(names, ["be1", "be2", "be4"]);
    assert!(Arc::ptr_eq(&after[0], &before[0]), "be1 kept its state");
    assert!(!after[0].is_up() && after[0].in_flight() == 1);
    assert!(
        !Arc::ptr_eq(&after[1], &before[1]),
        "be2 moved: fresh state"
    );
    assert_eq!(after[1].addr, "127.0.0.1:22".parse().unwrap());
    assert_eq!(web.balance(), Balance::Random);
    assert_eq!(live.proxy().timeouts().0, Duration::from_secs(1));
    let settings = live.conn_settings().load();
    assert_eq!(settings.client_timeout, Duration::from_secs(3));
    assert_eq!(settings.max_header_bytes, 8192);
    assert_eq!(live.config(), new);

    // Without checks nothing would bring be1 back up: turning them off marks servers up.
    let mut unchecked = new;
    unchecked.backends[0].health_check.enabled = false;
    let summary = live.reload(unchecked).unwrap();
    assert!(summary.backends[0].restarts_checks());
    assert!(web.servers().iter().all(|s| s.is_up()));
    live.stop();
}

/// New certificate files apply in place: new connections get them (`Live::reload`); only
/// turning TLS on or off needs an upgrade.
#[test]
fn new_tls_files_apply_in_place_and_tls_on_or_off_needs_an_upgrade() {
    let made = rcgen::generate_simple_self_signed(vec!["www.example.test".to_owned()]).unwrap();
    let key = rustls_pki_types::PrivateKeyDer::Pkcs8(made.key_pair.serialize_der().into());
    let provider = rustls::crypto::ring::default_provider();
    let loaded =
        rustls::sign::CertifiedKey::from_der(vec![made.cert.der().clone()], key, &provider)
            .unwrap();
    let tls = |cert: &str| config::Tls {
        certificates: vec![config::TlsCertificate {
            cert: cert.into(),
            key: "/k.pem".into(),
            loaded: Arc::new(loaded.clone()),
        }],
    };
    let mut old = config(THREE, "", "");
    old.frontends[0].tls = Some(tls("/a.pem"));
    let mut new = old.clone();
    assert!(compare(&old, &new).is_ok(), "the same files: nothing to do");
    new.frontends[0].tls = Some(tls("/b.pem"));
    assert!(compare(&old, &new).is_ok(), "other files apply in place");
    new.frontends[0].tls = None;
    assert_eq!(
        needs_upgrade_list(&old, &new),
        ["frontend www: tls true -> false"]
    );
    let mut new = old.clone();
    new.frontends[0].hsts = Some(std::time::Duration::from_secs(60));
    assert_eq!(
        needs_upgrade_list(&old, &new),
        ["frontend www: hsts None -> Some(60s)"]
    );
}

/// A server's TLS settings change in place like its address: a fresh state (new connections,
/// new checks), the backend then served by hyper only.
#[tokio::test]
async fn a_servers_tls_settings_change_in_place_like_its_address() {
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca.pem");
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let key = rcgen::KeyPair::generate().unwrap();
    std::fs::write(&ca, params.self_signed(&key).unwrap().pem()).unwrap();
    let be1 = |keys: &str| format!(r#"{{ name = "be1", addr = "127.0.0.1:1"{keys} }},"#);
    let tls = format!(r#", tls = true, ca = "{}""#, ca.display());
    let plain = config(&be1(""), "", "");
    let verified = config(&be1(&tls), "", "");
    let by_name = config(&be1(&format!(r#"{tls}, sni = "be1.internal""#)), "", "");
    for (old, new) in [
        (&plain, &verified),
        (&verified, &by_name),
        (&by_name, &plain),
    ] {
        let summary = compare(old, new).unwrap();
        assert_eq!(
            summary.to_string(),
            "reloaded configuration: web: ~be1(tls)"
        );
        assert!(summary.backends[0].restarts_checks());
    }

    let store = table::memory::store(64);
    let (backends, frontends) = routing::build(&plain, &store, &MemorySettings::shared());
    let live = Live::start(plain.clone(), (backends.clone(), frontends));
    let before = backends[0].servers();
    assert!(!backends[0].has_tls_servers());
    live.reload(verified.clone()).unwrap();
    let after = backends[0].servers();
    assert!(!Arc::ptr_eq(&after[0], &before[0]), "fresh state");
    assert!(after[0].tls.is_some() && backends[0].has_tls_servers());
    live.reload(verified).unwrap();
    assert!(
        Arc::ptr_eq(&backends[0].servers()[0], &after[0]),
        "unchanged: kept"
    );
    live.stop();
}

/// A `[peers]` section for [`config`]'s `extra`, with `more` after the members.
fn peers_section(more: &str) -> String {
    format!(
        "[peers]\nbind = \"127.0.0.1:1024\"\nmembers = [{{ name = \"t\", addr = \"127.0.0.1:1024\" }}]\n{more}\n"
    )
}

/// A CA-signed certificate and key, and the CA, written to `dir` as `{prefix}cert.pem`, ...
fn peers_tls_files(dir: &Path, prefix: &str) -> String {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(Vec::new()).unwrap();
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca = params.self_signed(&ca_key).unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["t".to_owned()])
        .unwrap()
        .signed_by(&key, &ca, &ca_key)
        .unwrap();
    let path = |name: &str| dir.join(format!("{prefix}{name}"));
    std::fs::write(path("ca.pem"), ca.pem()).unwrap();
    std::fs::write(path("cert.pem"), cert.pem()).unwrap();
    std::fs::write(path("key.pem"), key.serialize_pem()).unwrap();
    format!(
        "tls = {{ cert = \"{}\", key = \"{}\", ca = \"{}\" }}",
        path("cert.pem").display(),
        path("key.pem").display(),
        path("ca.pem").display()
    )
}

#[test]
fn peers_tls_and_allow_changes_need_an_upgrade() {
    let dir = tempfile::tempdir().unwrap();
    let (first, second) = (
        peers_tls_files(dir.path(), "a-"),
        peers_tls_files(dir.path(), "b-"),
    );
    let plain = config(THREE, "", &peers_section(""));
    let with_tls = config(THREE, "", &peers_section(&first));
    let moved = config(THREE, "", &peers_section(&second));
    let wider = config(THREE, "", &peers_section("allow = [\"127.0.0.0/8\"]"));
    let what = needs_upgrade_list(&plain, &with_tls);
    assert_eq!(what.len(), 1, "{what:?}");
    assert!(
        what[0].starts_with("peers: tls none -> { cert = /"),
        "{what:?}"
    );
    let what = needs_upgrade_list(&with_tls, &moved);
    assert!(what[0].contains("b-cert.pem"), "{what:?}");
    assert_eq!(
        needs_upgrade_list(&plain, &wider),
        ["peers: allow [127.0.0.1/32] -> [127.0.0.0/8]"]
    );
    // The same paths (new contents or not) are no difference: nothing is re-read in place,
    // an upgrade reads them.
    let again = config(THREE, "", &peers_section(&first));
    assert!(compare(&with_tls, &again).unwrap().is_empty());
}

#[test]
fn turning_the_shield_on_needs_an_upgrade() {
    let old = config(THREE, "", "");
    let new = config(THREE, "", "[shield]\nenabled = true\n");
    assert_eq!(
        needs_upgrade_list(&old, &new),
        ["shield: enabled false -> true"]
    );
    let eth1 = config(
        THREE,
        "",
        "[shield]\nenabled = true\ninterfaces = [\"eth1\"]\n",
    );
    assert_eq!(
        needs_upgrade_list(&new, &eth1),
        ["shield: interfaces [] -> [\"eth1\"]"]
    );
}

#[test]
fn the_shield_syn_limit_changes_in_place() {
    let old = config(THREE, "", "[shield]\nenabled = true\n");
    let new = config(
        THREE,
        "",
        "[shield]\nenabled = true\nsyn_rate = 50\nsyn_burst = 60\n",
    );
    let summary = compare(&old, &new).unwrap();
    assert_eq!(
        summary.shield,
        ["syn_rate 200 -> 50", "syn_burst 400 -> 60"]
    );
    assert_eq!(
        summary.to_string(),
        "reloaded configuration: shield: syn_rate 200 -> 50, syn_burst 400 -> 60"
    );
}
