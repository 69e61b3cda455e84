//! Second stage: [`RawConfig`] to [`Config`]. Every problem is collected, each with the dotted
//! key (`backend[0].servers[1].addr`) and the line it concerns, before any is returned.

use std::{
    collections::HashMap, fmt, io, net::SocketAddr, num::NonZeroU32, ops::Range, path::PathBuf,
    time::Duration,
};

use super::{
    backend_id,
    raw::{key_at, line_of, RawBackend, RawConfig, RawHealthCheck, RawInstance},
    Backend, Balance, Config, FastPathMode, FastPathPolicy, FastPathXdp, Frontend, HealthCheck,
    Instance, PortRange, Server, Timeouts, MAX_WEIGHT,
};

const DEFAULT_PIN_DIR: &str = "/sys/fs/bpf/stickylb";
const DEFAULT_RUN_DIR: &str = "/run/stickylb";
/// Server names are stored NUL-terminated in `StickEntry::server`.
const MAX_SERVER_NAME: usize = lb_common::SERVER_NAME_LEN - 1;
/// Backend names are held to the same length as server names.
const MAX_BACKEND_NAME: usize = 31;
/// Instance, frontend and peer names.
const MAX_NAME: usize = 63;
/// Longest key announced to peers: the longest cookie a `StickKey` holds verbatim.
const MAX_PEER_KEY_LEN: u8 = 43;
const MS: Duration = Duration::from_millis(1);
mod fastpath;
mod fields;
mod https;
mod monitor;
mod peers;
mod server_tls;
mod shield;
mod tls;

use self::fields::{check_cookie_name, check_name, check_path};
pub(super) use self::shield::{DEFAULT_SYN_BURST, DEFAULT_SYN_RATE};

const NAME_CHARSET: &str = "A-Z, a-z, 0-9, '.', '_' and '-'";

/// One thing wrong with a configuration file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    /// 1-based line, when the problem has one.
    pub line: Option<usize>,
    /// Dotted key with array indices, e.g. `backend[0].servers[1].addr`; empty when unknown.
    pub key: String,
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(line) = self.line {
            write!(f, "line {line}: ")?;
        }
        if !self.key.is_empty() {
            write!(f, "{}: ", self.key)?;
        }
        f.write_str(&self.message)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read configuration file {}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// Display prints each problem on its own line.
    #[error("{}", problems.iter().map(Problem::to_string).collect::<Vec<_>>().join("\n"))]
    Invalid { problems: Vec<Problem> },
}

/// Parses and validates `text`, taking the instance name from `host_name` when it is not set.
pub(super) fn from_toml_with(
    text: &str,
    host_name: impl FnOnce() -> io::Result<String>,
    name_override: Option<&str>,
) -> Result<Config, ConfigError> {
    let raw: RawConfig = toml::from_str(text).map_err(|e| {
        let span = e.span();
        ConfigError::Invalid {
            problems: vec![Problem {
                line: span.as_ref().map(|span| line_of(text, span.start)),
                key: span.map(|span| key_at(text, span)).unwrap_or_default(),
                message: e.message().trim_end().to_owned(),
            }],
        }
    })?;
    let mut checker = Checker {
        text,
        problems: Vec::new(),
    };
    let config = checker.config(&raw, host_name, name_override);
    match config {
        Some(config) if checker.problems.is_empty() => Ok(config),
        _ => {
            // Every `None` comes with a problem; this only guards against a missed report.
            if checker.problems.is_empty() {
                checker.report(
                    None,
                    "",
                    "internal error: refused without a reported problem",
                );
            }
            // Stable: problems on one line keep the order they were found in; those without
            // a line come first.
            checker.problems.sort_by_key(|problem| problem.line);
            Err(ConfigError::Invalid {
                problems: checker.problems,
            })
        }
    }
}

/// The host name, for the default instance name: from procfs, or uname(2) without it.
pub(super) fn host_name() -> io::Result<String> {
    if let Ok(name) = std::fs::read_to_string("/proc/sys/kernel/hostname") {
        return Ok(name.trim_end().to_owned());
    }
    crate::sys::process::host_name()
}

struct Checker<'t> {
    text: &'t str,
    problems: Vec<Problem>,
}

/// Where a name was first seen, to report duplicates.
type Seen<K> = HashMap<K, (String, usize)>;

impl Checker<'_> {
    fn config(
        &mut self,
        raw: &RawConfig,
        host_name: impl FnOnce() -> io::Result<String>,
        name_override: Option<&str>,
    ) -> Option<Config> {
        let instance = self.instance(&raw.instance, host_name, name_override);
        let mut binds = Seen::new();
        let frontends = self.frontends(raw, &mut binds);
        let backends = self.backends(raw);
        let monitor = raw.monitor.as_ref().map(|m| self.monitor(m, &mut binds));
        let timeouts = self.timeouts(raw);
        let peers = self.peers(raw, instance.as_ref(), &mut binds);
        let fastpath = self.fastpath_policy(raw);
        let shield = self.shield(&raw.shield, frontends.as_deref());
        Some(Config {
            fastpath: fastpath?,
            shield: shield?,
            peers: peers?,
            instance: instance?,
            frontends: frontends?,
            backends: backends?,
            monitor: monitor.map_or(Some(None), |m| m.map(Some))?,
            timeouts: timeouts?,
        })
    }

    fn frontends(
        &mut self,
        raw: &RawConfig,
        binds: &mut Seen<SocketAddr>,
    ) -> Option<Vec<Frontend>> {
        if raw.frontend.is_empty() {
            self.report(None, "frontend", "at least one [[frontend]] is required");
        }
        let backend_names: Vec<&str> = raw
            .backend
            .iter()
            .filter_map(|b| b.get_ref().name.as_ref().map(|n| n.get_ref().as_str()))
            .collect();
        let mut names = Seen::new();
        let frontends: Vec<_> = raw
            .frontend
            .iter()
            .enumerate()
            .map(|(i, fe)| {
                let key = format!("frontend[{i}]");
                let span = fe.span();
                let fe = fe.get_ref();
                let name = self.required(&fe.name, Some(&span), &key, "name");
                let name = name.and_then(|n| self.name(n, &format!("{key}.name"), MAX_NAME));
                if let (Some(name), Some(n)) = (&name, &fe.name) {
                    self.unique(&mut names, name.clone(), n, &format!("{key}.name"), &key);
                }
                let bind = self.required(&fe.bind, Some(&span), &key, "bind");
                let bind = bind.and_then(|b| self.addr(b, &format!("{key}.bind")));
                if let (Some(bind), Some(b)) = (bind, &fe.bind) {
                    self.unique(binds, bind, b, &format!("{key}.bind"), &key);
                }
                let backend = self.required(&fe.backend, Some(&span), &key, "backend");
                let backend = backend.and_then(|b| {
                    if backend_names.contains(&b.get_ref().as_str()) {
                        return Some(b.get_ref().clone());
                    }
                    let known = if backend_names.is_empty() {
                        "none is defined".to_owned()
                    } else {
                        format!("defined: {}", backend_names.join(", "))
                    };
                    let msg = format!("no backend named {:?} ({known})", b.get_ref());
                    self.report(Some(b.span()), &format!("{key}.backend"), msg);
                    None
                });
                let (fastpath, fastpath_interfaces) = self.fastpath(&key, fe, bind);
                let tls = match &fe.tls {
                    None => Some(None),
                    Some(tls) => self.tls(&key, span.clone(), tls).map(Some),
                };
                let redirect_http_to = self.redirect_http_to(&key, fe);
                let hsts = self.hsts(&key, fe);
                Some(Frontend {
                    name: name?,
                    bind: bind?,
                    backend: backend?,
                    fastpath: fastpath?,
                    fastpath_interfaces: fastpath_interfaces?,
                    tls: tls?,
                    redirect_http_to: redirect_http_to?,
                    hsts: hsts?,
                })
            })
            .collect();
        frontends.into_iter().collect()
    }

    fn backends(&mut self, raw: &RawConfig) -> Option<Vec<Backend>> {
        if raw.backend.is_empty() {
            self.report(None, "backend", "at least one [[backend]] is required");
        }
        let mut names = Seen::new();
        let mut ids = Seen::new();
        let backends: Vec<_> = raw
            .backend
            .iter()
            .enumerate()
            .map(|(i, be)| {
                let key = format!("backend[{i}]");
                let backend = self.backend(&key, be.span(), be.get_ref());
                // Names are compared even when something else in the backend is wrong.
                let Some(n) = &be.get_ref().name else {
                    return backend;
                };
                let name = n.get_ref();
                if check_name(name, MAX_BACKEND_NAME).is_err() {
                    return backend;
                }
                let name_key = format!("{key}.name");
                self.unique(&mut names, name.clone(), n, &name_key, &key);
                let id = backend_id(name);
                match ids.get(&id) {
                    Some((other, line)) if other != name => {
                        let msg = format!(
                            "backend {name:?} has the same id ({id:#010x}, FNV-1a of the name) \
                             as backend {other:?} (line {line}); rename one"
                        );
                        self.report(Some(n.span()), &name_key, msg);
                    }
                    _ => {
                        ids.insert(id, (name.clone(), self.line(&n.span())));
                    }
                }
                backend
            })
            .collect();
        backends.into_iter().collect()
    }

    fn instance(
        &mut self,
        raw: &RawInstance,
        host_name: impl FnOnce() -> io::Result<String>,
        name_override: Option<&str>,
    ) -> Option<Instance> {
        let name = match (name_override, &raw.name) {
            (Some(name), _) => match check_name(name, MAX_NAME) {
                Ok(()) => Some(name.to_owned()),
                Err(msg) => {
                    self.report(None, "instance.name", format!("--name {name:?}: {msg}"));
                    None
                }
            },
            (None, Some(name)) => self.name(name, "instance.name", MAX_NAME),
            (None, None) => {
                let host = host_name()
                    .map_err(|e| format!("not set, and the host name cannot be read: {e}"))
                    .and_then(|host| match check_name(&host, MAX_NAME) {
                        Ok(()) => Ok(host),
                        Err(msg) => Err(format!("not set, and the host name is unusable: {msg}")),
                    });
                host.map_err(|msg| self.report(None, "instance.name", msg))
                    .ok()
            }
        };
        let pin_dir = match &raw.pin_dir {
            None => Some(DEFAULT_PIN_DIR.to_owned()),
            Some(dir) => self.text(dir, "instance.pin_dir", |dir| {
                if dir.is_empty() {
                    Err("must not be empty".to_owned())
                } else {
                    Ok(())
                }
            }),
        };
        let control_socket = match &raw.control_socket {
            None => Some(None),
            Some(path) => self
                .text(path, "instance.control_socket", |path| {
                    if path.starts_with('/') {
                        Ok(())
                    } else {
                        Err("must be an absolute path".to_owned())
                    }
                })
                .map(Some),
        };
        let name = name?;
        Some(Instance {
            control_socket: control_socket?.map_or_else(
                || PathBuf::from(format!("{DEFAULT_RUN_DIR}/{name}.sock")),
                PathBuf::from,
            ),
            name,
            pin_dir: PathBuf::from(pin_dir?),
        })
    }

    fn backend(&mut self, key: &str, span: Range<usize>, raw: &RawBackend) -> Option<Backend> {
        let name = self.required(&raw.name, Some(&span), key, "name");
        let name = name.and_then(|n| self.name(n, &format!("{key}.name"), MAX_BACKEND_NAME));
        let balance = match &raw.balance {
            None => Some(Balance::RoundRobin),
            Some(b) => match b.get_ref().as_str() {
                "roundrobin" => Some(Balance::RoundRobin),
                "leastconn" => Some(Balance::LeastConn),
                "random" => Some(Balance::Random),
                "consistent" => Some(Balance::Consistent),
                other => {
                    let msg = format!(
                        "unknown balance {other:?} (valid: roundrobin, leastconn, random, \
                         consistent)"
                    );
                    self.report(Some(b.span()), &format!("{key}.balance"), msg);
                    None
                }
            },
        };
        let stick_cookie = match &raw.stick_cookie {
            None => Some("JSESSIONID".to_owned()),
            Some(c) => self.text(c, &format!("{key}.stick_cookie"), check_cookie_name),
        };
        let table_size = self.integer(
            raw.table_size.as_ref(),
            &format!("{key}.table_size"),
            1 << 20,
            1..=16_777_216,
        );
        let expire = self.duration(
            raw.expire.as_ref(),
            &format!("{key}.expire"),
            Duration::from_secs(30 * 60),
            Duration::from_secs(1),
        );
        let peer_key_len = self.integer(
            raw.peer_key_len.as_ref(),
            &format!("{key}.peer_key_len"),
            32,
            1..=i64::from(MAX_PEER_KEY_LEN),
        );
        let health_check = self.health_check(key, raw.health_check.as_ref());
        let slowstart = self.duration(
            raw.slowstart.as_ref(),
            &format!("{key}.slowstart"),
            Duration::ZERO,
            Duration::ZERO,
        );
        let queue_timeout = self.duration(
            raw.queue_timeout.as_ref(),
            &format!("{key}.queue_timeout"),
            Duration::from_secs(5),
            MS,
        );
        let servers = self.servers(key, &span, raw);
        Some(Backend {
            name: name?,
            balance: balance?,
            stick_cookie: stick_cookie?,
            table_size: NonZeroU32::new(u32::try_from(table_size?).ok()?)?,
            expire: expire?,
            peer_key_len: u8::try_from(peer_key_len?).ok()?,
            health_check: health_check?,
            slowstart: slowstart?,
            queue_timeout: queue_timeout?,
            servers: servers?,
        })
    }

    fn health_check(&mut self, backend: &str, raw: Option<&RawHealthCheck>) -> Option<HealthCheck> {
        let default = RawHealthCheck::default();
        let raw = raw.unwrap_or(&default);
        let key = |field: &str| format!("{backend}.health_check.{field}");
        let path = match &raw.path {
            None => Some("/".to_owned()),
            Some(p) => self.text(p, &key("path"), check_path),
        };
        let interval = self.duration(
            raw.interval.as_ref(),
            &key("interval"),
            Duration::from_secs(2),
            MS,
        );
        let timeout = self.duration(
            raw.timeout.as_ref(),
            &key("timeout"),
            Duration::from_secs(1),
            MS,
        );
        let rise = self.integer(raw.rise.as_ref(), &key("rise"), 2, 1..=u32::MAX.into());
        let fall = self.integer(raw.fall.as_ref(), &key("fall"), 3, 1..=u32::MAX.into());
        Some(HealthCheck {
            enabled: raw.enabled.unwrap_or(true),
            path: path?,
            interval: interval?,
            timeout: timeout?,
            rise: NonZeroU32::new(u32::try_from(rise?).ok()?)?,
            fall: NonZeroU32::new(u32::try_from(fall?).ok()?)?,
        })
    }

    fn servers(&mut self, key: &str, span: &Range<usize>, raw: &RawBackend) -> Option<Vec<Server>> {
        let list = self.required(&raw.servers, Some(span), key, "servers")?;
        if list.get_ref().is_empty() {
            self.report(
                Some(list.span()),
                &format!("{key}.servers"),
                "at least one server is required",
            );
            return None;
        }
        let mut names = Seen::new();
        let servers: Vec<_> = list
            .get_ref()
            .iter()
            .enumerate()
            .map(|(j, server)| {
                let key = format!("{key}.servers[{j}]");
                let span = server.span();
                let server = server.get_ref();
                let name = self.required(&server.name, Some(&span), &key, "name");
                let name_key = format!("{key}.name");
                let name = name.and_then(|n| self.name(n, &name_key, MAX_SERVER_NAME));
                if let (Some(name), Some(n)) = (&name, &server.name) {
                    self.unique(&mut names, name.clone(), n, &name_key, &key);
                }
                let addr = self.required(&server.addr, Some(&span), &key, "addr");
                let addr = addr.and_then(|a| self.addr(a, &format!("{key}.addr")));
                let tls = self.server_tls(&key, server, addr);
                let weight = self.integer(
                    server.weight.as_ref(),
                    &format!("{key}.weight"),
                    1,
                    0..=i64::from(MAX_WEIGHT),
                );
                let maxconn = self.integer(
                    server.maxconn.as_ref(),
                    &format!("{key}.maxconn"),
                    0,
                    0..=1_000_000,
                );
                Some(Server {
                    name: name?,
                    addr: addr?,
                    weight: u16::try_from(weight?).ok()?,
                    maxconn: u32::try_from(maxconn?).ok()?,
                    tls: tls?,
                })
            })
            .collect();
        servers.into_iter().collect()
    }

    fn timeouts(&mut self, raw: &RawConfig) -> Option<Timeouts> {
        let t = &raw.timeouts;
        let secs = Duration::from_secs;
        let connect = self.duration(t.connect.as_ref(), "timeouts.connect", secs(5), MS);
        let client = self.duration(t.client.as_ref(), "timeouts.client", secs(50), MS);
        let server = self.duration(t.server.as_ref(), "timeouts.server", secs(50), MS);
        let drain = self.duration(t.drain.as_ref(), "timeouts.drain", secs(10), Duration::ZERO);
        let max_header_bytes = self.integer(
            t.max_header_bytes.as_ref(),
            "timeouts.max_header_bytes",
            16 * 1024,
            8192..=1024 * 1024,
        );
        let splice_fin_grace = self.duration(
            t.splice_fin_grace.as_ref(),
            "timeouts.splice_fin_grace",
            secs(60),
            secs(1),
        );
        let splice_idle = self.duration(
            t.splice_idle.as_ref(),
            "timeouts.splice_idle",
            secs(2 * 3600),
            secs(60),
        );
        Some(Timeouts {
            splice_fin_grace: splice_fin_grace?,
            splice_idle: splice_idle?,
            connect: connect?,
            client: client?,
            server: server?,
            drain: drain?,
            max_header_bytes: usize::try_from(max_header_bytes?).ok()?,
        })
    }

    /// `[fastpath]`, each key with its default.
    fn fastpath_policy(&mut self, raw: &RawConfig) -> Option<FastPathPolicy> {
        let f = &raw.fastpath;
        let default = FastPathPolicy::default();
        let after_requests = self.integer(
            f.after_requests.as_ref(),
            "fastpath.after_requests",
            i64::from(default.after_requests),
            1..=1_000_000,
        );
        let after_pause = self.duration(
            f.after_pause.as_ref(),
            "fastpath.after_pause",
            default.after_pause,
            MS,
        );
        let port_reuse = self.duration(
            f.port_reuse.as_ref(),
            "fastpath.port_reuse",
            default.port_reuse,
            Duration::from_millis(100),
        );
        let source_ports = match &f.source_ports {
            None => Some(default.source_ports),
            Some(text) => match parse_port_range(text.get_ref()) {
                Ok(range) => Some(range),
                Err(msg) => {
                    self.report(Some(text.span()), "fastpath.source_ports", msg);
                    None
                }
            },
        };
        let xdp = match &f.xdp {
            None => Some(default.xdp),
            Some(text) => match text.get_ref().as_str() {
                "off" => Some(FastPathXdp::Off),
                "auto" => Some(FastPathXdp::Auto),
                other => {
                    let msg = format!("unknown xdp {other:?} (valid: auto, off)");
                    self.report(Some(text.span()), "fastpath.xdp", msg);
                    None
                }
            },
        };
        Some(FastPathPolicy {
            after_requests: u32::try_from(after_requests?).ok()?,
            after_pause: after_pause?,
            port_reuse: port_reuse?,
            source_ports: source_ports?,
            xdp: xdp?,
        })
    }
}

/// `first-last`: at least 16 ports, none below 1024 (they belong to services).
fn parse_port_range(text: &str) -> Result<PortRange, String> {
    let bad = || format!("{text:?} is not a port range like \"61000-64999\"");
    let (first, last) = text.split_once('-').ok_or_else(bad)?;
    let (first, last): (u16, u16) = (
        first.trim().parse().map_err(|_| bad())?,
        last.trim().parse().map_err(|_| bad())?,
    );
    if first < 1024 || last < first {
        return Err(format!(
            "{text:?}: the range must start at 1024 or above and not end before it starts"
        ));
    }
    if last - first < 15 {
        return Err(format!("{text:?}: at least 16 ports"));
    }
    Ok(PortRange { first, last })
}
