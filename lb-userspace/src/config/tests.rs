use std::{
    io,
    net::SocketAddr,
    num::NonZeroU32,
    path::{Path, PathBuf},
    time::Duration,
};

use super::{validate::from_toml_with, *};

const FULL: &str = r#"[instance]
name = "lb-1"                       # peer name
pin_dir = "/sys/fs/bpf/test"

[[frontend]]
name = "www"
bind = "0.0.0.0:8080"
backend = "web"
fastpath = "splice"
fastpath_interfaces = ["eth0", "eth1"]

[[frontend]]
name = "api"
bind = "[::1]:8081"
backend = "api"
fastpath = "off"

[[backend]]
name = "web"
balance = "leastconn"
stick_cookie = "SESSIONID"
table_size = 4096
expire = "10m"
health_check = { path = "/health", interval = "500ms", timeout = "250ms", rise = 4, fall = 5 }
servers = [
  { name = "web1", addr = "10.20.0.2:8001" },
  { name = "web2", addr = "10.20.0.2:8002" },
]

[[backend]]
name = "api"
balance = "random"
health_check = { enabled = false }
servers = [ { name = "api1", addr = "[fd00::1]:9000" } ]

[monitor]
bind = "127.0.0.1:8404"

[timeouts]
connect = "3s"
client = "1m"
server = 40000
drain = "0s"
max_header_bytes = 8192
splice_fin_grace = "90s"
splice_idle = "1h"

[fastpath]
after_requests = 3
after_pause = "200ms"
port_reuse = "2s"
source_ports = "50000-50999"
xdp = "auto"

[peers]
bind = "0.0.0.0:1024"
members = [
  { name = "lb-1", addr = "10.30.0.11:1024" },
  { name = "lb-2", addr = "10.30.0.12:1024" },
]
"#;

/// A valid configuration; tests replace or append lines and expect problems at known lines.
pub(super) const BASE: &str = r#"[instance]
name = "lb-1"

[[frontend]]
name = "www"
bind = "0.0.0.0:8080"
backend = "web"

[[backend]]
name = "web"
servers = [
  { name = "web1", addr = "10.20.0.2:8001" },
  { name = "web2", addr = "10.20.0.2:8002" },
]
"#;

pub(super) fn parse(text: &str) -> Result<Config, ConfigError> {
    from_toml_with(text, || Ok("testhost".to_owned()), None)
}

pub(super) fn problems(text: &str) -> Vec<Problem> {
    match parse(text) {
        Ok(config) => panic!("expected problems, got {config:#?}\nfrom:\n{text}"),
        Err(ConfigError::Invalid { problems }) => problems,
        Err(e) => panic!("expected problems, got {e:?}"),
    }
}

/// `BASE` with its 1-based line `n` replaced by `with`.
fn replace(n: usize, with: &str) -> String {
    let mut lines: Vec<&str> = BASE.lines().collect();
    lines[n - 1] = with;
    lines.join("\n") + "\n"
}

fn append(extra: &str) -> String {
    format!("{BASE}{extra}")
}

/// Asserts that `text` has a problem at `line` for `key` whose message contains `needle`.
#[track_caller]
pub(super) fn assert_problem(text: &str, line: Option<usize>, key: &str, needle: &str) {
    let found = problems(text);
    assert!(
        found
            .iter()
            .any(|p| p.line == line && p.key == key && p.message.contains(needle)),
        "no problem at line {line:?} for {key} containing {needle:?} in:\n{}\n--- from:\n{text}",
        found.iter().map(|p| format!("{p:?}\n")).collect::<String>(),
    );
}

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

fn nz(n: u32) -> NonZeroU32 {
    NonZeroU32::new(n).unwrap()
}

#[test]
fn full_example_parses_with_every_value() {
    let config = Config::from_toml(FULL).unwrap();
    let expected = Config {
        instance: Instance {
            name: "lb-1".into(),
            pin_dir: PathBuf::from("/sys/fs/bpf/test"),
            control_socket: PathBuf::from("/run/stickylb/lb-1.sock"),
        },
        frontends: vec![
            Frontend {
                name: "www".into(),
                bind: addr("0.0.0.0:8080"),
                backend: "web".into(),
                fastpath: FastPathMode::Splice,
                fastpath_interfaces: vec!["eth0".into(), "eth1".into()],
                tls: None,
                redirect_http_to: None,
                hsts: None,
            },
            Frontend {
                name: "api".into(),
                bind: addr("[::1]:8081"),
                backend: "api".into(),
                fastpath: FastPathMode::Off,
                fastpath_interfaces: Vec::new(),
                tls: None,
                redirect_http_to: None,
                hsts: None,
            },
        ],
        backends: vec![
            Backend {
                name: "web".into(),
                balance: Balance::LeastConn,
                stick_cookie: "SESSIONID".into(),
                table_size: nz(4096),
                expire: Duration::from_secs(600),
                peer_key_len: 32,
                health_check: HealthCheck {
                    enabled: true,
                    path: "/health".into(),
                    interval: Duration::from_millis(500),
                    timeout: Duration::from_millis(250),
                    rise: nz(4),
                    fall: nz(5),
                },
                slowstart: Duration::ZERO,
                queue_timeout: Duration::from_secs(5),
                servers: vec![
                    Server {
                        name: "web1".into(),
                        addr: addr("10.20.0.2:8001"),
                        weight: 1,
                        maxconn: 0,
                        tls: None,
                    },
                    Server {
                        name: "web2".into(),
                        addr: addr("10.20.0.2:8002"),
                        weight: 1,
                        maxconn: 0,
                        tls: None,
                    },
                ],
            },
            Backend {
                name: "api".into(),
                balance: Balance::Random,
                stick_cookie: "JSESSIONID".into(),
                table_size: nz(1 << 20),
                expire: Duration::from_secs(30 * 60),
                peer_key_len: 32,
                health_check: HealthCheck {
                    enabled: false,
                    path: "/".into(),
                    interval: Duration::from_secs(2),
                    timeout: Duration::from_secs(1),
                    rise: nz(2),
                    fall: nz(3),
                },
                slowstart: Duration::ZERO,
                queue_timeout: Duration::from_secs(5),
                servers: vec![Server {
                    name: "api1".into(),
                    addr: addr("[fd00::1]:9000"),
                    weight: 1,
                    maxconn: 0,
                    tls: None,
                }],
            },
        ],
        monitor: Some(Monitor {
            bind: addr("127.0.0.1:8404"),
            auth: None,
        }),
        timeouts: Timeouts {
            connect: Duration::from_secs(3),
            client: Duration::from_secs(60),
            server: Duration::from_secs(40),
            drain: Duration::ZERO,
            max_header_bytes: 8192,
            splice_fin_grace: Duration::from_secs(90),
            splice_idle: Duration::from_secs(3600),
        },
        peers: Some(Peers {
            bind: addr("0.0.0.0:1024"),
            members: vec![
                PeerMember {
                    name: "lb-1".into(),
                    addr: addr("10.30.0.11:1024"),
                },
                PeerMember {
                    name: "lb-2".into(),
                    addr: addr("10.30.0.12:1024"),
                },
            ],
            tls: None,
            // Default: the members' addresses.
            allow: vec![
                Cidr::host(addr("10.30.0.11:1024").ip()),
                Cidr::host(addr("10.30.0.12:1024").ip()),
            ],
        }),
        fastpath: FastPathPolicy {
            after_requests: 3,
            after_pause: Duration::from_millis(200),
            port_reuse: Duration::from_secs(2),
            source_ports: PortRange {
                first: 50000,
                last: 50999,
            },
            xdp: FastPathXdp::Auto,
        },
        // On by default: the frontends bind wildcards, which the network reaches.
        shield: Shield {
            enabled: true,
            by_default: true,
            ..Shield::default()
        },
    };
    assert_eq!(config, expected);
}

#[test]
fn omitted_keys_take_their_defaults() {
    let text = r#"
[[frontend]]
name = "www"
bind = "0.0.0.0:8080"
backend = "web"

[[backend]]
name = "web"
servers = [ { name = "web1", addr = "10.20.0.2:8001" } ]
"#;
    let config = parse(text).unwrap();
    assert_eq!(
        config.instance,
        Instance {
            name: "testhost".into(),
            pin_dir: PathBuf::from("/sys/fs/bpf/stickylb"),
            control_socket: PathBuf::from("/run/stickylb/testhost.sock"),
        }
    );
    assert_eq!(config.monitor, None);
    assert_eq!(config.fastpath, FastPathPolicy::default());
    assert_eq!(
        config.timeouts,
        Timeouts {
            connect: Duration::from_secs(5),
            client: Duration::from_secs(50),
            server: Duration::from_secs(50),
            drain: Duration::from_secs(10),
            max_header_bytes: 16384,
            splice_fin_grace: Duration::from_secs(60),
            splice_idle: Duration::from_secs(7200),
        }
    );
    let backend = &config.backends[0];
    assert_eq!(backend.balance, Balance::RoundRobin);
    assert_eq!(backend.stick_cookie, "JSESSIONID");
    assert_eq!(backend.table_size, nz(1_048_576));
    assert_eq!(backend.expire, Duration::from_secs(1800));
    assert_eq!(
        backend.health_check,
        HealthCheck {
            enabled: true,
            path: "/".into(),
            interval: Duration::from_secs(2),
            timeout: Duration::from_secs(1),
            rise: nz(2),
            fall: nz(3),
        }
    );

    // Each health check field may be given alone; the others keep their defaults.
    let one_field = text.replace(
        "servers =",
        "health_check = { timeout = \"3s\" }\nservers =",
    );
    let check = &parse(&one_field).unwrap().backends[0].health_check;
    assert_eq!(check.timeout, Duration::from_secs(3));
    assert_eq!(check.interval, Duration::from_secs(2));
    assert!(check.enabled);

    // Empty optional sections are fine too.
    let empty_sections = format!("[instance]\n[timeouts]\n{text}");
    assert_eq!(parse(&empty_sections).unwrap(), config);
}

#[test]
fn instance_name_defaults_to_the_host_name() {
    let host = validate::host_name().unwrap();
    let config = Config::from_toml(&BASE.replace("name = \"lb-1\"\n", "")).unwrap();
    assert_eq!(config.instance.name, host);
}

#[test]
fn unusable_host_name_is_a_problem_without_a_line() {
    let text = BASE.replace("name = \"lb-1\"\n", "");
    let found = match from_toml_with(&text, || Ok("bad host".to_owned()), None) {
        Err(ConfigError::Invalid { problems }) => problems,
        other => panic!("{other:?}"),
    };
    assert_eq!(found.len(), 1);
    assert_eq!(
        (found[0].line, found[0].key.as_str()),
        (None, "instance.name")
    );
    assert!(
        found[0].message.contains("host name is unusable"),
        "{}",
        found[0]
    );

    let found = match from_toml_with(&text, || Err(io::Error::other("no uts")), None) {
        Err(ConfigError::Invalid { problems }) => problems,
        other => panic!("{other:?}"),
    };
    assert!(
        found[0].message.contains("cannot be read: no uts"),
        "{}",
        found[0]
    );
}

#[test]
fn problem_and_error_display() {
    let p = Problem {
        line: Some(12),
        key: "backend[0].servers[1].addr".into(),
        message: "invalid socket address \"10.20.0.2:80x\"".into(),
    };
    assert_eq!(
        p.to_string(),
        "line 12: backend[0].servers[1].addr: invalid socket address \"10.20.0.2:80x\""
    );
    let q = Problem {
        line: None,
        key: "frontend".into(),
        message: "missing".into(),
    };
    assert_eq!(q.to_string(), "frontend: missing");
    let e = ConfigError::Invalid {
        problems: vec![q, p],
    };
    assert_eq!(
        e.to_string(),
        "frontend: missing\nline 12: backend[0].servers[1].addr: invalid socket address \"10.20.0.2:80x\""
    );
}

#[test]
fn bad_server_address_names_key_and_line() {
    let text = replace(13, r#"  { name = "web2", addr = "10.20.0.2:80x" },"#);
    let found = problems(&text);
    assert_eq!(found.len(), 1);
    assert_eq!(
        found[0].to_string(),
        "line 13: backend[0].servers[1].addr: invalid socket address \"10.20.0.2:80x\" \
         (expected IP:port; names are not resolved)"
    );
    // No DNS: host names are refused.
    let text = replace(6, r#"bind = "localhost:8080""#);
    assert_problem(&text, Some(6), "frontend[0].bind", "invalid socket address");
    let text = replace(6, r#"bind = "0.0.0.0""#);
    assert_problem(&text, Some(6), "frontend[0].bind", "invalid socket address");
}

#[test]
fn frontends_and_backends_are_required() {
    let only_instance = "[instance]\nname = \"lb-1\"\n";
    assert_problem(only_instance, None, "frontend", "at least one");
    assert_problem(only_instance, None, "backend", "at least one");
    let no_backend = BASE.split("[[backend]]").next().unwrap();
    assert_problem(no_backend, None, "backend", "at least one");
    assert_problem(
        no_backend,
        Some(7),
        "frontend[0].backend",
        "no backend named \"web\"",
    );
}

#[test]
fn frontend_backend_must_exist() {
    let text = replace(7, r#"backend = "nope""#);
    assert_problem(
        &text,
        Some(7),
        "frontend[0].backend",
        r#"no backend named "nope" (defined: web)"#,
    );
}

#[test]
fn missing_required_keys_point_at_their_table() {
    let text = replace(5, "");
    assert_problem(&text, Some(4), "frontend[0].name", "missing required key");
    let text = replace(10, "");
    assert_problem(&text, Some(9), "backend[0].name", "missing required key");
    let text = replace(12, r#"  { name = "web1" },"#);
    assert_problem(
        &text,
        Some(12),
        "backend[0].servers[0].addr",
        "missing required key",
    );
    let text = BASE.lines().take(10).collect::<Vec<_>>().join("\n");
    assert_problem(&text, Some(9), "backend[0].servers", "missing required key");
}

#[test]
fn names_are_unique() {
    let dup_frontend =
        append("\n[[frontend]]\nname = \"www\"\nbind = \"0.0.0.0:8081\"\nbackend = \"web\"\n");
    assert_problem(
        &dup_frontend,
        Some(17),
        "frontend[1].name",
        "\"www\" is already used by frontend[0] (line 5)",
    );

    let dup_backend = append(
        "\n[[backend]]\nname = \"web\"\nservers = [ { name = \"a\", addr = \"10.0.0.1:80\" } ]\n",
    );
    assert_problem(
        &dup_backend,
        Some(17),
        "backend[1].name",
        "\"web\" is already used by backend[0] (line 10)",
    );

    let dup_server = replace(13, r#"  { name = "web1", addr = "10.20.0.2:8002" },"#);
    assert_problem(
        &dup_server,
        Some(13),
        "backend[0].servers[1].name",
        "\"web1\" is already used",
    );

    // Reported even when the duplicate has other problems.
    let dup_bad = dup_backend.replace("10.0.0.1:80", "10.0.0.1");
    assert_problem(
        &dup_bad,
        Some(17),
        "backend[1].name",
        "\"web\" is already used",
    );
    assert_problem(
        &dup_bad,
        Some(18),
        "backend[1].servers[0].addr",
        "invalid socket address",
    );

    // The same server name in two backends is fine.
    let other_backend = append("\n[[backend]]\nname = \"api\"\nservers = [ { name = \"web1\", addr = \"10.0.0.1:80\" } ]\n");
    assert_eq!(parse(&other_backend).unwrap().backends.len(), 2);
}

#[test]
fn bind_addresses_are_unique() {
    let dup_bind =
        append("\n[[frontend]]\nname = \"w2\"\nbind = \"0.0.0.0:8080\"\nbackend = \"web\"\n");
    assert_problem(
        &dup_bind,
        Some(18),
        "frontend[1].bind",
        "0.0.0.0:8080 is already used by frontend[0] (line 6)",
    );
    let monitor = append("\n[monitor]\nbind = \"0.0.0.0:8080\"\n");
    assert_problem(
        &monitor,
        Some(17),
        "monitor.bind",
        "already used by frontend[0]",
    );
}

#[test]
fn name_length_and_charset() {
    let name31 = "s".repeat(31);
    let ok = replace(
        12,
        &format!(r#"  {{ name = "{name31}", addr = "10.20.0.2:8001" }},"#),
    );
    assert_eq!(parse(&ok).unwrap().backends[0].servers[0].name, name31);

    let name32 = "s".repeat(32);
    let long = replace(
        12,
        &format!(r#"  {{ name = "{name32}", addr = "10.20.0.2:8001" }},"#),
    );
    assert_problem(
        &long,
        Some(12),
        "backend[0].servers[0].name",
        "32 bytes long, more than 31",
    );
    let empty = replace(12, r#"  { name = "", addr = "10.20.0.2:8001" },"#);
    assert_problem(
        &empty,
        Some(12),
        "backend[0].servers[0].name",
        "must not be empty",
    );
    let bad = replace(12, r#"  { name = "web 1", addr = "10.20.0.2:8001" },"#);
    assert_problem(&bad, Some(12), "backend[0].servers[0].name", "contains ' '");
    let unicode = replace(12, r#"  { name = "wéb", addr = "10.20.0.2:8001" },"#);
    assert_problem(
        &unicode,
        Some(12),
        "backend[0].servers[0].name",
        "contains 'é'",
    );
    let ok = replace(12, r#"  { name = "A-z_0.9", addr = "10.20.0.2:8001" },"#);
    assert!(parse(&ok).is_ok());

    let backend32 = BASE.replace("\"web\"", &format!("\"{name32}\""));
    assert_problem(&backend32, Some(10), "backend[0].name", "more than 31");
    let backend_bad = replace(10, r#"name = "web/1""#);
    assert_problem(&backend_bad, Some(10), "backend[0].name", "contains '/'");

    let name63 = "i".repeat(63);
    let ok = replace(2, &format!("name = \"{name63}\""));
    assert_eq!(parse(&ok).unwrap().instance.name, name63);
    let long = replace(2, &format!("name = \"{}\"", "i".repeat(64)));
    assert_problem(
        &long,
        Some(2),
        "instance.name",
        "64 bytes long, more than 63",
    );
    assert_problem(
        &replace(2, "name = \"\""),
        Some(2),
        "instance.name",
        "must not be empty",
    );
    assert_problem(
        &replace(2, "name = \"lb:1\""),
        Some(2),
        "instance.name",
        "contains ':'",
    );
}

#[test]
fn backend_id_is_fnv1a_32() {
    assert_eq!(backend_id(""), 0x811c_9dc5);
    assert_eq!(backend_id("a"), 0xe40c_292c);
    assert_eq!(backend_id("foobar"), 0xbf9c_f968);
    assert_eq!(backend_id("costarring"), backend_id("liquid"));
}

#[test]
fn colliding_backend_ids_are_refused() {
    let text = BASE.replace("\"web\"", "\"costarring\"")
        + "\n[[backend]]\nname = \"liquid\"\nservers = [ { name = \"a\", addr = \"10.0.0.1:80\" } ]\n";
    assert_problem(
        &text,
        Some(17),
        "backend[1].name",
        "backend \"liquid\" has the same id (0x5e4daa9d, FNV-1a of the name) as backend \"costarring\" (line 10)",
    );
}

#[test]
fn peer_key_len_defaults_to_haproxy_len_32_and_is_bounded_by_the_stick_key() {
    assert_eq!(parse(BASE).unwrap().backends[0].peer_key_len, 32);
    let text = replace(10, "name = \"web\"\npeer_key_len = 43");
    assert_eq!(parse(&text).unwrap().backends[0].peer_key_len, 43);
    for bad in ["0", "44"] {
        let text = replace(10, &format!("name = \"web\"\npeer_key_len = {bad}"));
        assert_problem(
            &text,
            Some(11),
            "backend[0].peer_key_len",
            "out of range 1..=43",
        );
    }
}

#[test]
fn table_size_range() {
    for (value, ok) in [
        ("1", true),
        ("16777216", true),
        ("0", false),
        ("16777217", false),
        ("-5", false),
    ] {
        let text = replace(10, &format!("name = \"web\"\ntable_size = {value}"));
        if ok {
            assert_eq!(
                parse(&text).unwrap().backends[0]
                    .table_size
                    .get()
                    .to_string(),
                value
            );
        } else {
            assert_problem(
                &text,
                Some(11),
                "backend[0].table_size",
                "out of range 1..=16777216",
            );
        }
    }
    let text = replace(10, "name = \"web\"\ntable_size = \"big\"");
    assert_problem(
        &text,
        Some(11),
        "backend[0].table_size",
        "invalid type: string \"big\", expected i64",
    );
}

#[test]
fn expire_is_at_least_one_second() {
    let with = |v: &str| replace(10, &format!("name = \"web\"\nexpire = {v}"));
    assert_eq!(
        parse(&with("\"1s\"")).unwrap().backends[0].expire,
        Duration::from_secs(1)
    );
    assert_eq!(
        parse(&with("60000")).unwrap().backends[0].expire,
        Duration::from_secs(60)
    );
    assert_problem(
        &with("\"999ms\""),
        Some(11),
        "backend[0].expire",
        "999ms is too short: must be at least 1s",
    );
    assert_problem(
        &with("\"5x\""),
        Some(11),
        "backend[0].expire",
        "unknown unit \"x\"",
    );
    assert_problem(
        &with("-1"),
        Some(11),
        "backend[0].expire",
        "negative duration -1",
    );
    assert_problem(
        &with("true"),
        Some(11),
        "backend[0].expire",
        "invalid type: boolean `true`",
    );
}

#[test]
fn health_check_rules() {
    let with = |hc: &str| replace(10, &format!("name = \"web\"\nhealth_check = {{ {hc} }}"));
    let key = |f: &str| format!("backend[0].health_check.{f}");
    assert_problem(
        &with(r#"path = "health""#),
        Some(11),
        &key("path"),
        "must start with '/'",
    );
    assert_problem(
        &with(r#"path = "/a b""#),
        Some(11),
        &key("path"),
        "printable ASCII",
    );
    assert_problem(
        &with(r#"interval = "0s""#),
        Some(11),
        &key("interval"),
        "must be more than 0",
    );
    assert_problem(
        &with("timeout = 0"),
        Some(11),
        &key("timeout"),
        "must be more than 0",
    );
    assert_problem(
        &with("rise = 0"),
        Some(11),
        &key("rise"),
        "out of range 1..=",
    );
    assert_problem(
        &with("fall = 0"),
        Some(11),
        &key("fall"),
        "out of range 1..=",
    );
    assert_problem(
        &with("enabled = \"no\""),
        Some(11),
        &key("enabled"),
        "expected a boolean",
    );
    assert_problem(
        &with("port = 80"),
        Some(11),
        &key("port"),
        "unknown field `port`",
    );
    let disabled = parse(&with("enabled = false")).unwrap();
    assert!(!disabled.backends[0].health_check.enabled);

    // As a table of its own, problems point at the line of the key inside it.
    let table = BASE.replace("servers = [", "[backend.health_check]\nrise = 0\n");
    let table = table.split("\n  {").next().unwrap().to_owned();
    let table = table + "\n";
    let found = problems(&table);
    assert!(
        found
            .iter()
            .any(|p| p.line == Some(12) && p.key == key("rise")),
        "{found:?}"
    );
}

#[test]
fn balance_values() {
    let with = |v: &str| replace(10, &format!("name = \"web\"\nbalance = \"{v}\""));
    for (text, balance) in [
        ("roundrobin", Balance::RoundRobin),
        ("leastconn", Balance::LeastConn),
        ("random", Balance::Random),
        ("consistent", Balance::Consistent),
    ] {
        assert_eq!(parse(&with(text)).unwrap().backends[0].balance, balance);
    }
    assert_problem(
        &with("fastest"),
        Some(11),
        "backend[0].balance",
        "unknown balance \"fastest\" (valid: roundrobin, leastconn, random, consistent)",
    );
    assert_problem(
        &with("RoundRobin"),
        Some(11),
        "backend[0].balance",
        "valid: roundrobin",
    );
}

#[test]
fn stick_cookie_is_a_token() {
    let with = |v: &str| replace(10, &format!("name = \"web\"\nstick_cookie = \"{v}\""));
    assert_eq!(
        parse(&with("SERVERID_1.x-y!")).unwrap().backends[0].stick_cookie,
        "SERVERID_1.x-y!"
    );
    assert_problem(
        &with(""),
        Some(11),
        "backend[0].stick_cookie",
        "must not be empty",
    );
    for bad in ["a b", "a;b", "a=b", "a,b", "(a)", "\\t"] {
        assert_problem(
            &with(bad),
            Some(11),
            "backend[0].stick_cookie",
            "is not a cookie name",
        );
    }
}

#[test]
fn servers_must_not_be_empty() {
    let text = BASE.split("\n  {").next().unwrap().to_owned() + "]\n";
    assert_problem(
        &text,
        Some(11),
        "backend[0].servers",
        "at least one server is required",
    );
}

#[test]
fn timeouts_rules() {
    let with = |t: &str| append(&format!("\n[timeouts]\n{t}\n"));
    assert_problem(
        &with("max_header_bytes = 8191"),
        Some(17),
        "timeouts.max_header_bytes",
        "out of range 8192..=1048576",
    );
    assert_problem(
        &with("max_header_bytes = 1048577"),
        Some(17),
        "timeouts.max_header_bytes",
        "out of range",
    );
    assert_eq!(
        parse(&with("max_header_bytes = 8192"))
            .unwrap()
            .timeouts
            .max_header_bytes,
        8192
    );
    assert_eq!(
        parse(&with("max_header_bytes = 1048576"))
            .unwrap()
            .timeouts
            .max_header_bytes,
        1_048_576
    );
    assert_problem(
        &with("connect = \"0s\""),
        Some(17),
        "timeouts.connect",
        "must be more than 0",
    );
    assert_problem(
        &with("client = \"\""),
        Some(17),
        "timeouts.client",
        "empty duration",
    );
    assert_problem(
        &with("server = \"-5s\""),
        Some(17),
        "timeouts.server",
        "negative duration",
    );
    assert_eq!(
        parse(&with("drain = 0")).unwrap().timeouts.drain,
        Duration::ZERO
    );
    assert_problem(
        &with("idle = \"5s\""),
        Some(17),
        "timeouts.idle",
        "unknown field `idle`",
    );
}

#[test]
fn monitor_section() {
    assert_eq!(parse(BASE).unwrap().monitor, None);
    let m = parse(&append("\n[monitor]\nbind = \"0.0.0.0:8404\"\n"))
        .unwrap()
        .monitor;
    assert_eq!(
        m,
        Some(Monitor {
            bind: addr("0.0.0.0:8404"),
            auth: None,
        })
    );
    assert_problem(
        &append("\n[monitor]\n"),
        None,
        "monitor.bind",
        "missing required key",
    );
    assert_problem(
        &append("\n[monitor]\nbind = \"*:8404\"\n"),
        Some(17),
        "monitor.bind",
        "invalid socket address",
    );
}

/// The 1-based line of the first line of `text` that contains `needle`.
fn line_with(text: &str, needle: &str) -> usize {
    text.lines().position(|l| l.contains(needle)).unwrap() + 1
}

#[test]
fn monitor_auth_reads_the_password_file() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("monitor.pass");
    std::fs::write(&file, "s3cr3t: with spaces\nsecond line ignored\n").unwrap();
    let auth = |user: &str, file: &Path| {
        append(&format!(
            "\n[monitor]\nbind = \"127.0.0.1:8404\"\nauth = {{ user = \"{user}\", password_file = \"{}\" }}\n",
            file.display()
        ))
    };
    let m = parse(&auth("admin", &file)).unwrap().monitor.unwrap();
    let a = m.auth.unwrap();
    assert_eq!(a.user, "admin");
    assert_eq!(a.password_file, file);
    assert_eq!(a.password.reveal(), "s3cr3t: with spaces");
    assert_eq!(format!("{:?}", a.password), "Password(..)");

    // Windows line ending, no final newline; a header sub-table works too.
    std::fs::write(&file, "pw\r\n").unwrap();
    let text = append(&format!(
        "\n[monitor]\nbind = \"127.0.0.1:8404\"\n\n[monitor.auth]\nuser = \"ops\"\npassword_file = \"{}\"\n",
        file.display()
    ));
    let a = parse(&text).unwrap().monitor.unwrap().auth.unwrap();
    assert_eq!((a.user.as_str(), a.password.reveal()), ("ops", "pw"));

    let text = auth("admin", &dir.path().join("missing"));
    assert_problem(
        &text,
        Some(line_with(&text, "auth =")),
        "monitor.auth.password_file",
        "cannot read",
    );
    for empty in ["", "\n", "\nsecond\n"] {
        std::fs::write(&file, empty).unwrap();
        let text = auth("admin", &file);
        assert_problem(
            &text,
            Some(line_with(&text, "auth =")),
            "monitor.auth.password_file",
            "is empty",
        );
    }
    std::fs::write(&file, "pw\n").unwrap();
    let text = auth("ad:min", &file);
    assert_problem(
        &text,
        Some(line_with(&text, "auth =")),
        "monitor.auth.user",
        "contains ':'",
    );
    let text = auth("", &file);
    assert_problem(
        &text,
        Some(line_with(&text, "auth =")),
        "monitor.auth.user",
        "must not be empty",
    );
    assert_problem(
        &auth("admin", Path::new("monitor.pass")),
        Some(line_with(&auth("admin", &file), "auth =")),
        "monitor.auth.password_file",
        "must be an absolute path",
    );

    let text = append(&format!(
        "\n[monitor]\nbind = \"127.0.0.1:8404\"\nauth = {{ password_file = \"{}\" }}\n",
        file.display()
    ));
    assert_problem(
        &text,
        Some(line_with(&text, "auth =")),
        "monitor.auth.user",
        "missing required key",
    );
    let text = append("\n[monitor]\nbind = \"127.0.0.1:8404\"\nauth = { user = \"admin\" }\n");
    assert_problem(
        &text,
        Some(line_with(&text, "auth =")),
        "monitor.auth.password_file",
        "missing required key",
    );
    let text =
        append("\n[monitor]\nbind = \"127.0.0.1:8404\"\nauth = { user = \"a\", pass = \"x\" }\n");
    assert_problem(
        &text,
        Some(line_with(&text, "auth =")),
        "monitor.auth.pass",
        "unknown field `pass`",
    );
}

#[test]
fn peers_are_checked_and_this_instance_must_be_a_member() {
    let ok = append("\n[peers]\nbind = \"0.0.0.0:1024\"\nmembers = [ { name = \"lb-1\", addr = \"10.30.0.11:1024\" } ]\n");
    let peers = parse(&ok).unwrap().peers.unwrap();
    assert_eq!(peers.bind, addr("0.0.0.0:1024"));
    assert_eq!(peers.members[0].name, "lb-1");
    assert_eq!(parse(BASE).unwrap().peers, None);
    assert_problem(
        &ok.replace("name = \"lb-1\", addr", "name = \"lb-9\", addr"),
        None,
        "peers.members",
        "instance name \"lb-1\" is not among the members",
    );
    assert_problem(
        &append("\n[peers]\nbind = \"0.0.0.0:8080\"\nmembers = [ { name = \"lb-1\", addr = \"10.30.0.11:1024\" } ]\n"),
        Some(17),
        "peers.bind",
        "already used",
    );
    let bad = append(
        "\n[peers]\nbind = \"0.0.0.0\"\nmembers = [\n  { name = \"lb-1\", addr = \"10.30.0.11:1024\" },\n  { name = \"lb-1\", addr = \"nowhere\" },\n  { addr = \"10.30.0.13:1024\" },\n]\n",
    );
    let found = problems(&bad);
    let summary: Vec<_> = found.iter().map(|p| (p.line, p.key.as_str())).collect();
    assert_eq!(
        summary,
        [
            (Some(17), "peers.bind"),
            (Some(20), "peers.members[1].name"),
            (Some(20), "peers.members[1].addr"),
            (Some(21), "peers.members[2].name"),
        ]
    );
    assert_problem(
        &append("\n[peers]\n"),
        None,
        "peers.bind",
        "missing required key",
    );
    let unknown = append(
        "\n[peers]\nbind = \"0.0.0.0:1024\"\nmembers = [ { name = \"a\", adr = \"1.2.3.4:5\" } ]\n",
    );
    assert_problem(
        &unknown,
        Some(18),
        "peers.members[0].adr",
        "unknown field `adr`",
    );
}

#[test]
fn unknown_keys_name_the_key_and_line() {
    let top = format!("listen = 80\n{BASE}");
    assert_problem(
        &top,
        Some(1),
        "listen",
        "unknown field `listen`, expected one of `instance`",
    );
    let top_table = format!("[global]\nmaxconn = 1\n{BASE}");
    assert_problem(&top_table, Some(1), "global", "unknown field `global`");
    let instance = replace(2, "name = \"lb-1\"\nnmae = \"x\"");
    assert_problem(&instance, Some(3), "instance.nmae", "unknown field `nmae`");
    let backend = replace(10, "name = \"web\"\nstick_cokie = \"SID\"");
    assert_problem(
        &backend,
        Some(11),
        "backend[0].stick_cokie",
        "unknown field `stick_cokie`, expected one of `name`",
    );
    let server = replace(
        13,
        r#"  { name = "web2", addr = "10.20.0.2:8002", wieght = 3 },"#,
    );
    assert_problem(
        &server,
        Some(13),
        "backend[0].servers[1].wieght",
        "unknown field `wieght`, expected one of `name`, `addr`, `weight`, `maxconn`",
    );
    let second_frontend = append(
        "\n[[frontend]]\nname = \"b\"\nbind = \"0.0.0.0:1\"\nbackend = \"web\"\nmode = \"http\"\n",
    );
    assert_problem(
        &second_frontend,
        Some(20),
        "frontend[1].mode",
        "unknown field `mode`",
    );
}

#[test]
fn dotted_keys_and_header_sub_tables_work() {
    let text = format!(
        "monitor.bind = \"0.0.0.0:8404\"\ntimeouts.connect = \"1s\"\n{}",
        replace(
            10,
            "name = \"web\"\nhealth_check.path = \"/ping\"\nhealth_check.rise = 7"
        )
    );
    let config = parse(&text).unwrap();
    assert_eq!(
        config.monitor,
        Some(Monitor {
            bind: addr("0.0.0.0:8404"),
            auth: None,
        })
    );
    assert_eq!(config.timeouts.connect, Duration::from_secs(1));
    assert_eq!(config.backends[0].health_check.path, "/ping");
    assert_eq!(config.backends[0].health_check.rise, nz(7));

    let bad = text.replace("\"/ping\"", "\"ping\"");
    assert_problem(
        &bad,
        Some(13),
        "backend[0].health_check.path",
        "must start with '/'",
    );
    // A table made by dotted keys has no span, so the key stops at the nearest table that has
    // one; the line and the message are still exact.
    let typo = text.replace("health_check.rise", "health_check.raise");
    assert_problem(&typo, Some(14), "backend[0]", "unknown field `raise`");
    let top = "instance.nmae = \"x\"\n";
    assert_problem(top, Some(1), "nmae", "unknown field `nmae`");

    let header = BASE.replace("servers = [", "[backend.health_check]\nfall = 9\n\n[[backend.servers]]\nname = \"web1\"\naddr = \"10.20.0.2:8001\"\n");
    let header: String = header.split("\n  {").next().unwrap().to_owned() + "\n";
    let config = parse(&header).unwrap();
    assert_eq!(config.backends[0].health_check.fall, nz(9));
    assert_eq!(
        config.backends[0].servers,
        [Server {
            name: "web1".into(),
            addr: addr("10.20.0.2:8001"),
            weight: 1,
            maxconn: 0,
            tls: None,
        }]
    );
    let port = header.replace(
        "addr = \"10.20.0.2:8001\"",
        "addr = \"10.20.0.2:8001\"\nport = 1",
    );
    assert_problem(
        &port,
        Some(17),
        "backend[0].servers[0].port",
        "unknown field `port`",
    );
}

#[test]
fn syntax_errors_have_a_line() {
    let found = problems(&replace(6, "bind = \"0.0.0.0:8080"));
    assert_eq!(found.len(), 1);
    assert_eq!(found[0].line, Some(6));
    let found = problems(&replace(6, "name = \"again\""));
    assert_eq!(found[0].line, Some(6));
    assert!(
        found[0].message.contains("duplicate key `name`"),
        "{}",
        found[0]
    );
}

#[test]
fn every_semantic_problem_is_reported_in_line_order() {
    let text = r#"[instance]
name = "lb 1"

[[frontend]]
name = "www"
bind = "0.0.0.0:80x"
backend = "nope"

[[backend]]
name = "web"
balance = "fair"
table_size = 0
expire = "1ms"
health_check = { path = "x", rise = 0 }
servers = [
  { name = "web1", addr = "10.20.0.2" },
  { name = "web1", addr = "10.20.0.2:8002" },
]

[timeouts]
max_header_bytes = 10
"#;
    let found = problems(text);
    let summary: Vec<_> = found.iter().map(|p| (p.line, p.key.as_str())).collect();
    assert_eq!(
        summary,
        [
            (Some(2), "instance.name"),
            (Some(6), "frontend[0].bind"),
            (Some(7), "frontend[0].backend"),
            (Some(11), "backend[0].balance"),
            (Some(12), "backend[0].table_size"),
            (Some(13), "backend[0].expire"),
            (Some(14), "backend[0].health_check.path"),
            (Some(14), "backend[0].health_check.rise"),
            (Some(16), "backend[0].servers[0].addr"),
            (Some(17), "backend[0].servers[1].name"),
            (Some(21), "timeouts.max_header_bytes"),
        ]
    );
    let shown = ConfigError::Invalid { problems: found }.to_string();
    assert_eq!(shown.lines().count(), 11);
    assert!(
        shown.starts_with("line 2: instance.name: \"lb 1\" contains ' '"),
        "{shown}"
    );
}

#[test]
fn load_reads_a_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("stickylb.toml");
    std::fs::write(&path, FULL).unwrap();
    assert_eq!(
        Config::load(&path).unwrap(),
        Config::from_toml(FULL).unwrap()
    );

    let missing = dir.path().join("missing.toml");
    match Config::load(&missing) {
        Err(e @ ConfigError::Read { .. }) => {
            let ConfigError::Read { path, source } = &e else {
                unreachable!()
            };
            assert_eq!(path, &missing);
            assert_eq!(source.kind(), io::ErrorKind::NotFound);
            assert!(std::error::Error::source(&e).is_some());
            assert!(e.to_string().contains("missing.toml"), "{e}");
        }
        other => panic!("{other:?}"),
    }
    std::fs::write(&path, "[[frontend]]\nbind = 1\n").unwrap();
    assert!(matches!(
        Config::load(Path::new(&path)),
        Err(ConfigError::Invalid { .. })
    ));
}

#[test]
fn duration_vectors() {
    let ok = [
        ("0", Duration::ZERO),
        ("500", Duration::from_millis(500)),
        ("500ms", Duration::from_millis(500)),
        ("0ms", Duration::ZERO),
        ("2s", Duration::from_secs(2)),
        ("30m", Duration::from_secs(1800)),
        ("1h", Duration::from_secs(3600)),
        ("1d", Duration::from_secs(86_400)),
        ("007s", Duration::from_secs(7)),
        ("18446744073709551615", Duration::from_millis(u64::MAX)),
        ("18446744073709551615s", Duration::from_secs(u64::MAX)),
    ];
    for (text, expected) in ok {
        assert_eq!(parse_duration(text), Ok(expected), "{text}");
    }
    let err = |text: &str| parse_duration(text).unwrap_err();
    assert_eq!(err(""), DurationError::Empty);
    assert!(matches!(err("-1s"), DurationError::Negative { .. }));
    assert!(matches!(err("-0"), DurationError::Negative { .. }));
    for text in ["s", "ms", "+5s", " 5s", ".5s"] {
        assert!(
            matches!(err(text), DurationError::MissingNumber { .. }),
            "{text}"
        );
    }
    for (text, unit) in [
        ("5x", "x"),
        ("5 s", " s"),
        ("1.5s", ".5s"),
        ("5S", "S"),
        ("5sec", "sec"),
        ("5s ", "s "),
    ] {
        assert_eq!(
            err(text),
            DurationError::UnknownUnit {
                input: text.into(),
                unit: unit.into()
            },
            "{text}"
        );
    }
    for text in [
        "18446744073709551616",
        "18446744073709551615m",
        "213503982334602d",
    ] {
        assert!(
            matches!(err(text), DurationError::Overflow { .. }),
            "{text}"
        );
    }
    assert_eq!(
        err("5x").to_string(),
        "unknown unit \"x\" in duration \"5x\" (valid: ms, s, m, h, d, y; no unit means ms)"
    );
}

#[test]
fn shipped_example_is_valid() {
    let config = Config::from_toml(include_str!("../../../examples/local.toml")).unwrap();
    assert_eq!(config.instance.name, "lb-local");
    assert_eq!(config.backends[0].servers.len(), 7);
}

#[test]
fn a_name_given_on_the_command_line_replaces_the_instance_name() {
    let text = BASE.replace("name = \"lb-1\"\n", "");
    let config = from_toml_with(&text, || Ok("host".to_owned()), Some("lb-2")).unwrap();
    assert_eq!(config.instance.name, "lb-2");
    assert_eq!(
        config.instance.control_socket,
        PathBuf::from("/run/stickylb/lb-2.sock")
    );
    let config = from_toml_with(BASE, || Ok("host".to_owned()), Some("lb-3")).unwrap();
    assert_eq!(config.instance.name, "lb-3");
    let Err(ConfigError::Invalid { problems }) =
        from_toml_with(BASE, || Ok("host".to_owned()), Some("bad name"))
    else {
        panic!("a bad --name must be refused");
    };
    assert_eq!(problems[0].key, "instance.name");
    assert_problem(
        &BASE.replace(
            "name = \"lb-1\"\n",
            "name = \"lb-1\"\ncontrol_socket = \"relative.sock\"\n",
        ),
        Some(3),
        "instance.control_socket",
        "must be an absolute path",
    );
}

const FASTPATH_BASE: &str = r#"[[frontend]]
name = "www"
bind = "10.0.0.1:8080"
backend = "web"
FASTPATH

[[backend]]
name = "web"
servers = [ { name = "web1", addr = "10.20.0.2:8001" } ]
"#;

fn fastpath_text(lines: &str) -> String {
    FASTPATH_BASE.replace("FASTPATH", lines)
}

#[test]
fn fastpath_defaults_and_values() {
    let config = parse(&fastpath_text("")).unwrap();
    let frontend = &config.frontends[0];
    assert_eq!(
        frontend.fastpath,
        FastPathMode::Splice,
        "the default on an IPv4 frontend"
    );
    assert!(frontend.fastpath_interfaces.is_empty());
    assert!(config.splices());
    // The program splices IPv4 only: an IPv6 frontend without the key is not spliced.
    let v6 = parse(&fastpath_text("").replace("10.0.0.1:8080", "[::1]:8080")).unwrap();
    assert_eq!(v6.frontends[0].fastpath, FastPathMode::Off);
    assert!(!v6.splices());

    let config = parse(&fastpath_text("fastpath = \"splice\"")).unwrap();
    assert_eq!(config.frontends[0].fastpath, FastPathMode::Splice);
    assert!(config.splices());

    let config = parse(&fastpath_text("fastpath = \"off\"")).unwrap();
    assert_eq!(config.frontends[0].fastpath, FastPathMode::Off);
    assert!(!config.splices());

    let text = fastpath_text("fastpath = \"splice\"\nfastpath_interfaces = [\"veth-c\", \"eth1\"]");
    let config = parse(&text).unwrap();
    assert_eq!(config.frontends[0].fastpath_interfaces, ["veth-c", "eth1"]);
}

#[test]
fn fastpath_policy_bounds() {
    let text = |lines: &str| format!("{BASE}\n[fastpath]\n{lines}\n");
    let config = parse(&text("after_requests = 1\nafter_pause = 1")).unwrap();
    assert_eq!(config.fastpath.after_requests, 1);
    assert_eq!(config.fastpath.after_pause, Duration::from_millis(1));
    for (line, key) in [
        ("after_requests = 0", "fastpath.after_requests"),
        ("after_pause = \"0s\"", "fastpath.after_pause"),
        ("port_reuse = \"10ms\"", "fastpath.port_reuse"),
        ("source_ports = \"61000\"", "fastpath.source_ports"),
        ("source_ports = \"80-2000\"", "fastpath.source_ports"),
        ("source_ports = \"61000-61010\"", "fastpath.source_ports"),
        ("source_ports = \"64999-61000\"", "fastpath.source_ports"),
        ("xdp = \"on\"", "fastpath.xdp"),
    ] {
        let error = parse(&text(line)).unwrap_err().to_string();
        assert!(error.contains(key), "{line}: {error}");
    }
    let unknown = parse(&text("after = 3")).unwrap_err().to_string();
    assert!(unknown.contains("after"), "{unknown}");
}

#[test]
fn fastpath_rules() {
    assert_problem(
        &fastpath_text("fastpath = \"kernel\""),
        Some(5),
        "frontend[0].fastpath",
        "unknown fastpath \"kernel\" (valid: splice, off)",
    );
    let v6 = fastpath_text("fastpath = \"splice\"").replace("10.0.0.1:8080", "[::1]:8080");
    assert_problem(
        &v6,
        Some(5),
        "frontend[0].fastpath",
        "IPv4 connections only",
    );
    // An IPv6 frontend is fine with an explicit off (and without the key, above).
    let v6_off = fastpath_text("fastpath = \"off\"").replace("10.0.0.1:8080", "[::1]:8080");
    assert!(parse(&v6_off).is_ok());
    assert_problem(
        &fastpath_text("fastpath = \"off\"\nfastpath_interfaces = [\"eth0\"]"),
        Some(6),
        "frontend[0].fastpath_interfaces",
        "no effect with fastpath = \"off\"",
    );
    assert_problem(
        &fastpath_text("fastpath = \"splice\"\nfastpath_interfaces = []"),
        Some(6),
        "frontend[0].fastpath_interfaces",
        "must not be empty",
    );
    for bad in ["", "a-name-far-too-long", "a/b", "eth0:1", "a b", ".."] {
        let text = fastpath_text(&format!(
            "fastpath = \"splice\"\nfastpath_interfaces = [\"eth0\", {bad:?}]"
        ));
        let found = problems(&text);
        assert!(
            found
                .iter()
                .any(|p| p.key == "frontend[0].fastpath_interfaces[1]" && p.line == Some(6)),
            "{bad:?}: {found:?}"
        );
    }
    assert_problem(
        &fastpath_text("fastpath = \"splice\"\nfastpath_interfaces = [\"eth0\", \"eth0\"]"),
        Some(6),
        "frontend[0].fastpath_interfaces[1]",
        "already used by frontend[0].fastpath_interfaces[0]",
    );
}

#[test]
fn weights_limits_and_slowstart_are_read_and_checked() {
    let tuned = replace(
        13,
        r#"  { name = "web2", addr = "10.20.0.2:8002", weight = 3, maxconn = 20 },"#,
    )
    .replace(
        "name = \"web\"\n",
        "name = \"web\"\nslowstart = \"30s\"\nqueue_timeout = \"2s\"\n",
    );
    let config = parse(&tuned).unwrap();
    let web = &config.backends[0];
    assert_eq!(web.slowstart, Duration::from_secs(30));
    assert_eq!(web.queue_timeout, Duration::from_secs(2));
    assert_eq!((web.servers[0].weight, web.servers[0].maxconn), (1, 0));
    assert_eq!((web.servers[1].weight, web.servers[1].maxconn), (3, 20));
    let defaults = parse(BASE).unwrap();
    assert_eq!(defaults.backends[0].slowstart, Duration::ZERO);
    assert_eq!(defaults.backends[0].queue_timeout, Duration::from_secs(5));

    let heavy = replace(
        13,
        r#"  { name = "web2", addr = "10.20.0.2:8002", weight = 257 },"#,
    );
    assert_problem(&heavy, Some(13), "backend[0].servers[1].weight", "0..=256");
    let negative = replace(
        13,
        r#"  { name = "web2", addr = "10.20.0.2:8002", maxconn = -1 },"#,
    );
    assert_problem(&negative, Some(13), "backend[0].servers[1].maxconn", "");
    let queue = append("").replace(
        "name = \"web\"\n",
        "name = \"web\"\nqueue_timeout = \"0s\"\n",
    );
    assert_problem(&queue, Some(11), "backend[0].queue_timeout", "more than 0");
}
