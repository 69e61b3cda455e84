//! Applying a configuration in place, on SIGHUP or `stickylb reload`: servers added, removed or
//! readdressed, health checks, balance algorithms and timeouts change while the listeners, the
//! open connections and the stick tables stay.
//!
//! What cannot change in place (a frontend's address, a table's size, the peers, ...) refuses
//! the whole reload, naming each difference: those need `stickylb reload --upgrade`, which hands
//! over to a new process. A reload applies all of a file or none of it.

use std::{
    collections::HashMap,
    fmt,
    path::{Path, PathBuf},
    sync::{Arc, Mutex, MutexGuard, PoisonError},
};

use arc_swap::ArcSwap;
use tokio::runtime::Handle;

use crate::{
    backend::BackendState,
    balance::algorithm_name,
    config::{self, Balance, Config, ConfigError, Timeouts},
    error_chain, health,
    proxy::{listener::ConnSettings, Frontend, Proxy},
    shield::{self, ShieldError, SynLimit},
};

/// What a running daemon can change in place, and the configuration it last applied.
pub struct Live {
    backends: Vec<Arc<BackendState>>,
    /// For their certificates, which a reload re-reads.
    frontends: Vec<Arc<Frontend>>,
    proxy: Arc<Proxy>,
    settings: Arc<ArcSwap<ConnSettings>>,
    /// Where health checks run, so that a reload may be called from any thread.
    runtime: Handle,
    /// Held for a whole reload, so that two (SIGHUP and the control socket) never interleave.
    /// Requests never take it.
    applied: Mutex<Applied>,
    /// Where the running shield's settings map is pinned (`<pin_dir>/<instance>/v1`), when the
    /// shield is on: a reload writes a changed SYN limit there.
    shield_root: Option<PathBuf>,
}

struct Applied {
    config: Config,
    /// The running health checks by backend name; dropping one stops it.
    checks: HashMap<String, health::Checks>,
    stopped: bool,
}

/// Why a configuration was not applied. Nothing of it was.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    /// Differences that only a new process can apply, each described on its own
    /// (`frontend www: bind 0.0.0.0:80 -> 0.0.0.0:81`).
    #[error("cannot apply in place: {}; use `stickylb reload --upgrade` for these", what.join("; "))]
    NeedsUpgrade { what: Vec<String> },
    /// The shield's new SYN limit could not be written to its pinned settings map.
    #[error("cannot apply the shield's SYN limit")]
    Shield(#[source] ShieldError),
}

/// Why [`reload_from`] applied nothing.
#[derive(Debug, thiserror::Error)]
pub enum ReloadFailure {
    /// The file cannot be read or does not validate.
    #[error("invalid configuration")]
    Invalid {
        path: PathBuf,
        #[source]
        source: ConfigError,
    },
    #[error(transparent)]
    Refused(#[from] ReloadError),
}

/// What a reload changed, for one log line.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct ReloadSummary {
    /// The backends that changed, in the new configuration's order.
    pub backends: Vec<BackendChanges>,
    /// Each timeout that changed: `client 50s -> 2s`.
    pub timeouts: Vec<String>,
    /// The TLS frontends that serve new certificates from now on (renewed files, or others).
    pub certificates: Vec<String>,
    /// The shield's SYN limit, when it changed: `syn_rate 200 -> 500`.
    pub shield: Vec<String>,
}

/// What a reload changed in one backend.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct BackendChanges {
    pub backend: String,
    pub added: Vec<String>,
    pub removed: Vec<String>,
    /// Servers whose address changed.
    pub readdressed: Vec<String>,
    /// Servers whose TLS settings changed (`tls`, `sni`, `ca` or the CAs in it): like a new
    /// address, they start afresh with new connections.
    pub reverified: Vec<String>,
    /// The servers kept are in a new order (round robin follows it).
    pub reordered: bool,
    pub health_check: bool,
    /// The algorithm before and after.
    pub balance: Option<(Balance, Balance)>,
    /// Weights and limits that changed: `be1 weight 1 -> 3`, `queue_timeout 5s -> 1s`.
    pub tuned: Vec<String>,
}

impl Live {
    /// Starts the health checks of `backends`, which must be `config`'s like `frontends` (as
    /// [`crate::routing::build`] builds them), and the proxy settings the listeners share.
    ///
    /// # Panics
    ///
    /// Outside a Tokio runtime, as `tokio::spawn` does.
    pub fn start(
        config: Config,
        (backends, frontends): (Vec<Arc<BackendState>>, Vec<Arc<Frontend>>),
    ) -> Live {
        let checks = backends
            .iter()
            .map(|b| (b.name.clone(), health::Checks::start(b)))
            .collect();
        let timeouts = &config.timeouts;
        Live {
            proxy: Arc::new(Proxy::new(timeouts.connect, timeouts.server)),
            settings: Arc::new(ArcSwap::from_pointee(ConnSettings::from_timeouts(timeouts))),
            runtime: Handle::current(),
            backends,
            frontends,
            applied: Mutex::new(Applied {
                config,
                checks,
                stopped: false,
            }),
            shield_root: None,
        }
    }

    /// Has reloads write a changed SYN limit to the shield's settings pinned under `root`
    /// (the shield is on).
    pub fn set_shield_root(&mut self, root: PathBuf) {
        self.shield_root = Some(root);
    }

    /// The proxy every listener serves with.
    pub fn proxy(&self) -> &Arc<Proxy> {
        &self.proxy
    }

    /// The per-connection settings every listener reads when it accepts.
    pub fn conn_settings(&self) -> &Arc<ArcSwap<ConnSettings>> {
        &self.settings
    }

    /// The configuration in force.
    pub fn config(&self) -> Config {
        self.applied().config.clone()
    }

    /// Applies `new` in place, or nothing of it when any part needs an upgrade. Health checks
    /// restart only for the backends whose servers or check settings changed. TLS frontends
    /// serve `new`'s certificates (read from their files when it was loaded) to the
    /// connections that follow; open connections keep theirs.
    pub fn reload(&self, new: Config) -> Result<ReloadSummary, ReloadError> {
        let mut applied = self.applied();
        let mut summary = compare(&applied.config, &new)?;
        // The one step that can fail comes first, so that a failure applies nothing.
        if let (false, Some(root)) = (summary.shield.is_empty(), &self.shield_root) {
            let limit = SynLimit {
                rate: new.shield.syn_rate,
                burst: new.shield.syn_burst,
            };
            shield::limit::write_pinned(root, limit).map_err(ReloadError::Shield)?;
        }
        // Nothing below can fail, so all of `new` applies.
        let _runtime = self.runtime.enter();
        for changes in &summary.backends {
            self.apply_backend(&mut applied, changes, &new);
        }
        summary.certificates = self.replace_certificates(&new);
        if !summary.timeouts.is_empty() {
            self.proxy
                .set_timeouts(new.timeouts.connect, new.timeouts.server);
            self.settings
                .store(Arc::new(ConnSettings::from_timeouts(&new.timeouts)));
        }
        applied.config = new;
        Ok(summary)
    }

    /// Stops the health checks, for good: a later reload starts none.
    pub fn stop(&self) {
        let mut applied = self.applied();
        applied.stopped = true;
        applied.checks.clear();
    }

    fn apply_backend(&self, applied: &mut Applied, changes: &BackendChanges, new: &Config) {
        // `compare` names only backends both configurations have, and `start` was given the
        // states of the first, so both lookups succeed.
        let state = self.backends.iter().find(|b| b.name == changes.backend);
        let config = new.backends.iter().find(|b| b.name == changes.backend);
        let (Some(state), Some(config)) = (state, config) else {
            return;
        };
        state.reconfigure(config);
        if changes.restarts_checks() && !applied.stopped {
            applied
                .checks
                .insert(state.name.clone(), health::Checks::start(state));
        }
    }

    /// Gives each TLS frontend `new`'s certificates; the names of those whose chains changed.
    fn replace_certificates(&self, new: &Config) -> Vec<String> {
        let mut changed = Vec::new();
        for config in &new.frontends {
            let running = self.frontends.iter().find(|f| f.name == config.name);
            // `compare` refused a frontend added or removed, or TLS turned on or off.
            let (Some(certificates), Some(tls)) =
                (running.and_then(|f| f.tls.as_ref()), &config.tls)
            else {
                continue;
            };
            if certificates.replace(tls) {
                changed.push(config.name.clone());
            }
        }
        changed
    }

    fn applied(&self) -> MutexGuard<'_, Applied> {
        self.applied.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Reads and validates `path`, then applies it to `live` (see [`Live::reload`]).
pub fn reload_from(
    live: &Live,
    path: &Path,
    name: Option<&str>,
) -> Result<ReloadSummary, ReloadFailure> {
    let config = Config::load_as(path, name).map_err(|source| ReloadFailure::Invalid {
        path: path.to_owned(),
        source,
    })?;
    Ok(live.reload(config)?)
}

/// Logs a reload's outcome on one line: what changed (info), or why nothing did (error).
pub fn log_outcome(outcome: &Result<ReloadSummary, ReloadFailure>) {
    match outcome {
        Ok(summary) => tracing::info!("{summary}"),
        // A configuration's problems are one per line; the log keeps them on one.
        Err(failure) => tracing::error!(
            "reload rejected: {}",
            error_chain(failure).replace('\n', "; ")
        ),
    }
}

impl ReloadSummary {
    pub fn is_empty(&self) -> bool {
        self.backends.is_empty()
            && self.timeouts.is_empty()
            && self.certificates.is_empty()
            && self.shield.is_empty()
    }
}

impl fmt::Display for ReloadSummary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_empty() {
            return f.write_str("configuration unchanged");
        }
        let mut parts: Vec<String> = self.backends.iter().map(ToString::to_string).collect();
        if !self.timeouts.is_empty() {
            parts.push(format!("timeouts changed ({})", self.timeouts.join(", ")));
        }
        for frontend in &self.certificates {
            parts.push(format!("frontend {frontend}: new certificates"));
        }
        if !self.shield.is_empty() {
            parts.push(format!("shield: {}", self.shield.join(", ")));
        }
        write!(f, "reloaded configuration: {}", parts.join("; "))
    }
}

impl BackendChanges {
    fn is_empty(&self) -> bool {
        !self.servers_changed()
            && !self.reordered
            && !self.health_check
            && self.balance.is_none()
            && self.tuned.is_empty()
    }

    fn servers_changed(&self) -> bool {
        !(self.added.is_empty()
            && self.removed.is_empty()
            && self.readdressed.is_empty()
            && self.reverified.is_empty())
    }

    /// A checker task belongs to one server and runs with the settings it started with.
    fn restarts_checks(&self) -> bool {
        self.servers_changed() || self.health_check
    }
}

impl fmt::Display for BackendChanges {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let servers: Vec<String> = (self.added.iter().map(|s| format!("+{s}")))
            .chain(self.removed.iter().map(|s| format!("-{s}")))
            .chain(self.readdressed.iter().map(|s| format!("~{s}(addr)")))
            .chain(self.reverified.iter().map(|s| format!("~{s}(tls)")))
            .collect();
        let mut items = Vec::new();
        if !servers.is_empty() {
            items.push(servers.join(" "));
        }
        if self.reordered {
            items.push("servers reordered".to_owned());
        }
        if self.health_check {
            items.push("health check changed".to_owned());
        }
        if let Some((before, after)) = self.balance {
            let (before, after) = (algorithm_name(before), algorithm_name(after));
            items.push(format!("balance {before} -> {after}"));
        }
        items.extend(self.tuned.iter().cloned());
        write!(f, "{}: {}", self.backend, items.join(", "))
    }
}

/// What `new` changes in place relative to `old`, or every difference that needs an upgrade.
fn compare(old: &Config, new: &Config) -> Result<ReloadSummary, ReloadError> {
    let what = needs_upgrade(old, new);
    if !what.is_empty() {
        return Err(ReloadError::NeedsUpgrade { what });
    }
    let backends = new
        .backends
        .iter()
        .filter_map(|after| {
            let before = old.backends.iter().find(|b| b.name == after.name)?;
            Some(backend_changes(before, after)).filter(|c| !c.is_empty())
        })
        .collect();
    Ok(ReloadSummary {
        backends,
        timeouts: timeout_changes(&old.timeouts, &new.timeouts),
        certificates: Vec::new(),
        shield: shield_changes(&old.shield, &new.shield),
    })
}

fn backend_changes(old: &config::Backend, new: &config::Backend) -> BackendChanges {
    let find = |servers: &'_ [config::Server], name: &str| -> Option<std::net::SocketAddr> {
        servers.iter().find(|s| s.name == name).map(|s| s.addr)
    };
    let names = |servers: &[config::Server], keep: &dyn Fn(&config::Server) -> bool| {
        servers
            .iter()
            .filter(|s| keep(s))
            .map(|s| s.name.clone())
            .collect::<Vec<_>>()
    };
    BackendChanges {
        backend: new.name.clone(),
        added: names(&new.servers, &|s| find(&old.servers, &s.name).is_none()),
        removed: names(&old.servers, &|s| find(&new.servers, &s.name).is_none()),
        readdressed: names(&new.servers, &|s| {
            find(&old.servers, &s.name).is_some_and(|addr| addr != s.addr)
        }),
        reverified: names(&new.servers, &|s| {
            let before = old.servers.iter().find(|o| o.name == s.name);
            before.is_some_and(|before| before.tls != s.tls)
        }),
        reordered: names(&old.servers, &|s| find(&new.servers, &s.name).is_some())
            != names(&new.servers, &|s| find(&old.servers, &s.name).is_some()),
        health_check: old.health_check != new.health_check,
        balance: (old.balance != new.balance).then_some((old.balance, new.balance)),
        tuned: tuning_changes(old, new),
    }
}

/// The shield's SYN limit changes: `syn_rate 200 -> 500`.
fn shield_changes(old: &config::Shield, new: &config::Shield) -> Vec<String> {
    let mut changes = Vec::new();
    for (name, before, after) in [
        ("syn_rate", old.syn_rate, new.syn_rate),
        ("syn_burst", old.syn_burst, new.syn_burst),
    ] {
        if before != after {
            changes.push(format!("{name} {before} -> {after}"));
        }
    }
    changes
}

fn timeout_changes(old: &Timeouts, new: &Timeouts) -> Vec<String> {
    let mut changes = Vec::new();
    differ(&mut changes, "connect", old.connect, new.connect);
    differ(&mut changes, "client", old.client, new.client);
    differ(&mut changes, "server", old.server, new.server);
    differ(&mut changes, "drain", old.drain, new.drain);
    let (before, after) = (old.max_header_bytes, new.max_header_bytes);
    differ(&mut changes, "max_header_bytes", before, after);
    changes
}

/// Every difference between `old` and `new` that cannot be applied in place.
fn needs_upgrade(old: &Config, new: &Config) -> Vec<String> {
    let mut what = Vec::new();
    differ(
        &mut what,
        "instance: name",
        &old.instance.name,
        &new.instance.name,
    );
    let (before, after) = (&old.instance.pin_dir, &new.instance.pin_dir);
    differ(&mut what, "instance: pin_dir", before, after);
    if what.is_empty() && old.instance != new.instance {
        what.push(format!(
            "instance: {:?} -> {:?}",
            old.instance, new.instance
        ));
    }
    frontend_differences(&old.frontends, &new.frontends, &mut what);
    let (t, u) = (&old.timeouts, &new.timeouts);
    differ(
        &mut what,
        "timeouts: splice_fin_grace",
        t.splice_fin_grace,
        u.splice_fin_grace,
    );
    differ(
        &mut what,
        "timeouts: splice_idle",
        t.splice_idle,
        u.splice_idle,
    );
    differ(&mut what, "fastpath:", old.fastpath, new.fastpath);
    let (before, after) = (&old.shield, &new.shield);
    differ(&mut what, "shield: enabled", before.enabled, after.enabled);
    differ(
        &mut what,
        "shield: interfaces",
        &before.interfaces,
        &after.interfaces,
    );
    differ(&mut what, "shield: hook", before.hook, after.hook);
    backend_differences(&old.backends, &new.backends, &mut what);
    if old.monitor != new.monitor {
        let bind =
            |m: Option<&config::Monitor>| m.map_or("none".to_owned(), |m| m.bind.to_string());
        let (before, after) = (bind(old.monitor.as_ref()), bind(new.monitor.as_ref()));
        if before == after {
            // Never the password itself: the user, the file, or that its content changed.
            what.push("monitor: auth (user, password_file or the password in it)".to_owned());
        } else {
            what.push(format!("monitor: {before} -> {after}"));
        }
    }
    peers_differences(old.peers.as_ref(), new.peers.as_ref(), &mut what);
    // A setting the lists above do not know of yet is refused rather than ignored.
    if what.is_empty() && fixed_part(old, old) != fixed_part(new, old) {
        what.push("settings other than servers, health checks, balance and timeouts".to_owned());
    }
    what
}

fn frontend_differences(
    old: &[config::Frontend],
    new: &[config::Frontend],
    what: &mut Vec<String>,
) {
    for before in old {
        let Some(after) = new.iter().find(|f| f.name == before.name) else {
            what.push(format!("frontend {}: removed", before.name));
            continue;
        };
        let name = &before.name;
        differ(
            what,
            format_args!("frontend {name}: bind"),
            before.bind,
            after.bind,
        );
        let (from, to) = (&before.backend, &after.backend);
        differ(what, format_args!("frontend {name}: backend"), from, to);
        let (from, to) = (before.fastpath.as_str(), after.fastpath.as_str());
        differ(what, format_args!("frontend {name}: fastpath"), from, to);
        let (from, to) = (&before.fastpath_interfaces, &after.fastpath_interfaces);
        differ(
            what,
            format_args!("frontend {name}: fastpath_interfaces"),
            from,
            to,
        );
        // Certificates change in place (`Live::reload`); TLS on or off changes the transport.
        let (from, to) = (before.tls.is_some(), after.tls.is_some());
        differ(what, format_args!("frontend {name}: tls"), from, to);
        let (from, to) = (&before.redirect_http_to, &after.redirect_http_to);
        differ(
            what,
            format_args!("frontend {name}: redirect_http_to"),
            from,
            to,
        );
        differ(
            what,
            format_args!("frontend {name}: hsts"),
            before.hsts,
            after.hsts,
        );
    }
    for after in new.iter().filter(|f| !old.iter().any(|b| b.name == f.name)) {
        what.push(format!("frontend {}: added", after.name));
    }
}

fn backend_differences(old: &[config::Backend], new: &[config::Backend], what: &mut Vec<String>) {
    for before in old {
        let Some(after) = new.iter().find(|b| b.name == before.name) else {
            what.push(format!("backend {}: removed", before.name));
            continue;
        };
        let name = &before.name;
        let (from, to) = (&before.stick_cookie, &after.stick_cookie);
        differ(what, format_args!("backend {name}: stick_cookie"), from, to);
        let (from, to) = (before.table_size, after.table_size);
        differ(what, format_args!("backend {name}: table_size"), from, to);
        differ(
            what,
            format_args!("backend {name}: expire"),
            before.expire,
            after.expire,
        );
        let (from, to) = (before.peer_key_len, after.peer_key_len);
        differ(what, format_args!("backend {name}: peer_key_len"), from, to);
    }
    for after in new.iter().filter(|b| !old.iter().any(|o| o.name == b.name)) {
        what.push(format!("backend {}: added", after.name));
    }
}

/// The weights, `maxconn`s, `slowstart` and `queue_timeout` that differ, applied in place.
fn tuning_changes(old: &config::Backend, new: &config::Backend) -> Vec<String> {
    let mut tuned = Vec::new();
    for after in &new.servers {
        if let Some(before) = old.servers.iter().find(|s| s.name == after.name) {
            let name = &after.name;
            differ(
                &mut tuned,
                format_args!("{name} weight"),
                before.weight,
                after.weight,
            );
            differ(
                &mut tuned,
                format_args!("{name} maxconn"),
                before.maxconn,
                after.maxconn,
            );
        }
    }
    differ(&mut tuned, "slowstart", old.slowstart, new.slowstart);
    differ(
        &mut tuned,
        "queue_timeout",
        old.queue_timeout,
        new.queue_timeout,
    );
    tuned
}

fn peers_differences(
    old: Option<&config::Peers>,
    new: Option<&config::Peers>,
    what: &mut Vec<String>,
) {
    let members = |p: &config::Peers| {
        let list: Vec<String> = p
            .members
            .iter()
            .map(|m| format!("{} {}", m.name, m.addr))
            .collect();
        format!("[{}]", list.join(", "))
    };
    match (old, new) {
        (Some(before), Some(after)) => {
            differ(what, "peers: bind", before.bind, after.bind);
            if before.members != after.members {
                what.push(format!(
                    "peers: members {} -> {}",
                    members(before),
                    members(after)
                ));
            }
            if before.allow != after.allow {
                let allow = |p: &config::Peers| {
                    let list: Vec<String> = p.allow.iter().map(ToString::to_string).collect();
                    format!("[{}]", list.join(", "))
                };
                what.push(format!(
                    "peers: allow {} -> {}",
                    allow(before),
                    allow(after)
                ));
            }
            // The peers' TLS set-up is built when the peers start, like the rest of them; an
            // upgrade reads the files again (docs/PEERS.md, "Peers over TLS").
            if before.tls != after.tls {
                let files = |p: &config::Peers| {
                    p.tls.as_ref().map_or("none".to_owned(), |t| {
                        let (cert, key) = (&t.certificate.cert, &t.certificate.key);
                        format!(
                            "{{ cert = {}, key = {}, ca = {} }}",
                            cert.display(),
                            key.display(),
                            t.ca.display()
                        )
                    })
                };
                what.push(format!("peers: tls {} -> {}", files(before), files(after)));
            }
        }
        (None, None) => {}
        (before, after) => {
            let bind =
                |p: Option<&config::Peers>| p.map_or("none".to_owned(), |p| p.bind.to_string());
            what.push(format!("peers: {} -> {}", bind(before), bind(after)));
        }
    }
}

/// `config` with what a reload changes in place taken from `base`, and frontends and backends
/// in name order (their order means nothing): equal for two configurations exactly when a
/// reload from one to the other needs no upgrade.
fn fixed_part(config: &Config, base: &Config) -> Config {
    let mut fixed = config.clone();
    fixed.timeouts = base.timeouts.clone();
    fixed.shield.syn_rate = base.shield.syn_rate;
    fixed.shield.syn_burst = base.shield.syn_burst;
    for backend in &mut fixed.backends {
        if let Some(from) = base.backends.iter().find(|b| b.name == backend.name) {
            backend.servers = from.servers.clone();
            backend.health_check = from.health_check.clone();
            backend.balance = from.balance;
            backend.slowstart = from.slowstart;
            backend.queue_timeout = from.queue_timeout;
        }
    }
    for frontend in &mut fixed.frontends {
        if let Some(from) = base.frontends.iter().find(|f| f.name == frontend.name) {
            if frontend.tls.is_some() && from.tls.is_some() {
                frontend.tls.clone_from(&from.tls);
            }
        }
    }
    fixed.frontends.sort_by(|a, b| a.name.cmp(&b.name));
    fixed.backends.sort_by(|a, b| a.name.cmp(&b.name));
    fixed
}

/// Notes `label before -> after` when the two differ.
fn differ<T: PartialEq + fmt::Debug>(
    what: &mut Vec<String>,
    label: impl fmt::Display,
    before: T,
    after: T,
) {
    if before != after {
        what.push(format!("{label} {before:?} -> {after:?}"));
    }
}

#[cfg(test)]
mod tests;
