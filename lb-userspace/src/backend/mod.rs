//! Runtime state of backends and their servers: liveness, the operator's settings (admin state,
//! weight, see [`admin`]), limits (maxconn, the queue), counters, and the routing decision
//! (sticky lookup first, then selection, then admission).

pub mod admin;
pub mod pinned;

use std::{
    net::{IpAddr, SocketAddr},
    sync::{
        atomic::{AtomicBool, AtomicU16, AtomicU32, AtomicU64, Ordering::Relaxed},
        Arc, Mutex, PoisonError,
    },
    time::Duration,
};

use arc_swap::ArcSwap;
use tokio::sync::Notify;

pub use self::admin::{Admin, Settings, SharedSettings};
use crate::{
    balance::{Affinity, Balancer, Candidate, Select as _, WEIGHT_SCALE},
    config,
    table::{now_ms, StickTable, Store},
};

/// One server of a backend, as the proxy, the health checker and the monitor see it.
pub struct ServerState {
    /// The server's stable identity: what stick entries point at.
    pub name: Arc<str>,
    pub addr: SocketAddr,
    /// Reached over TLS with these settings; `None`: cleartext. Fixed for the life of this
    /// state: other settings make a new one (see [`BackendState::set_servers`]).
    pub tls: Option<config::ServerTls>,
    up: AtomicBool,
    /// [`Admin`], as [`Admin::to_stored`] encodes it (the pinned map's encoding).
    admin: AtomicU32,
    /// The weight in force (the configuration's, or the operator's).
    weight: AtomicU16,
    /// The configuration's weight.
    config_weight: AtomicU16,
    /// Requests in flight at most; 0: no limit.
    maxconn: AtomicU32,
    /// The backend's `slowstart` in milliseconds, and when this server last became available
    /// (came up, or back to ready): its weight ramps up over that window.
    slowstart_ms: AtomicU64,
    available_since_ms: AtomicU64,
    /// Woken when a request of a server with a limit ends, or a server becomes available:
    /// the backend's queue waits on it (shared by the backend's servers).
    freed: Arc<Notify>,
    in_flight: OwnLine<AtomicU64>,
    pub stats: ServerStats,
    check: Mutex<CheckStatus>,
}

/// A value on a cache line of its own. The counters every request writes, from every worker,
/// are kept off the line of the fields every routing decision reads (name, address, up):
/// sharing one, each write would take that line from the other CPUs' caches.
#[derive(Default)]
#[repr(align(64))]
struct OwnLine<T>(T);

impl<T> std::ops::Deref for OwnLine<T> {
    type Target = T;

    fn deref(&self) -> &T {
        &self.0
    }
}

/// Monotonic counters of one server, on cache lines of their own (see [`OwnLine`]).
#[derive(Default)]
#[repr(align(64))]
pub struct ServerStats {
    /// Sessions newly stuck to this server (new cookies, redispatches, Set-Cookie learned).
    pub sessions_total: AtomicU64,
    pub requests_total: AtomicU64,
    pub bytes_in: AtomicU64,
    pub bytes_out: AtomicU64,
    /// Responses by status class: index 0 = other/failed, 1..=5 = 1xx..5xx.
    pub responses: [AtomicU64; 6],
    pub failures: AtomicU64,
    pub transitions: AtomicU64,
}

/// The last health check's outcome, for the monitor.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CheckStatus {
    pub last_result: String,
    pub consecutive_ok: u32,
    pub consecutive_failed: u32,
}

impl ServerState {
    /// A server with the defaults (weight 1, no limit, ready): for tests.
    pub fn new(name: &str, addr: SocketAddr) -> Self {
        let config = config::Server {
            name: name.to_owned(),
            addr,
            weight: 1,
            maxconn: 0,
            tls: None,
        };
        Self::from_config(&config, Arc::new(Notify::new()))
    }

    fn from_config(config: &config::Server, freed: Arc<Notify>) -> Self {
        Self {
            name: Arc::from(config.name.as_str()),
            addr: config.addr,
            tls: config.tls.clone(),
            up: AtomicBool::new(true),
            admin: AtomicU32::new(Admin::Ready.to_stored()),
            weight: AtomicU16::new(config.weight),
            config_weight: AtomicU16::new(config.weight),
            maxconn: AtomicU32::new(config.maxconn),
            slowstart_ms: AtomicU64::new(0),
            available_since_ms: AtomicU64::new(0),
            freed,
            in_flight: OwnLine(AtomicU64::new(0)),
            stats: ServerStats::default(),
            check: Mutex::new(CheckStatus::default()),
        }
    }

    pub fn is_up(&self) -> bool {
        self.up.load(Relaxed)
    }

    /// Returns whether the state changed.
    pub fn set_up(&self, up: bool) -> bool {
        let changed = self.up.swap(up, Relaxed) != up;
        if changed {
            self.stats.transitions.fetch_add(1, Relaxed);
            if up {
                self.became_available();
            }
        }
        changed
    }

    pub fn admin(&self) -> Admin {
        Admin::from_stored(self.admin.load(Relaxed)).unwrap_or_default()
    }

    /// Sets the admin state; returns the previous one.
    pub fn set_admin(&self, admin: Admin) -> Admin {
        let before =
            Admin::from_stored(self.admin.swap(admin.to_stored(), Relaxed)).unwrap_or_default();
        if before != Admin::Ready && admin == Admin::Ready {
            self.became_available();
        }
        before
    }

    /// The weight in force (0..=256).
    pub fn weight(&self) -> u16 {
        self.weight.load(Relaxed)
    }

    pub fn config_weight(&self) -> u16 {
        self.config_weight.load(Relaxed)
    }

    pub fn set_weight(&self, weight: u16) {
        self.weight.store(weight, Relaxed);
        self.freed.notify_waiters();
    }

    /// Requests in flight at most; 0: no limit.
    pub fn maxconn(&self) -> u32 {
        self.maxconn.load(Relaxed)
    }

    /// Whether the server's sessions keep going to it: up and not in maintenance. (A drained
    /// server keeps them.)
    pub fn keeps_sessions(&self) -> bool {
        self.is_up() && self.admin() != Admin::Maint
    }

    /// The weight balancing uses, in [`WEIGHT_SCALE`] units: 0 when the server takes no new
    /// sessions (down, drained, in maintenance, weight 0); ramped up during `slowstart` after
    /// it became available.
    pub fn effective_weight(&self) -> u32 {
        if !self.is_up() || self.admin() != Admin::Ready {
            return 0;
        }
        let full = u32::from(self.weight()) * WEIGHT_SCALE;
        let window = self.slowstart_ms.load(Relaxed);
        let since = self.available_since_ms.load(Relaxed);
        if full == 0 || window == 0 || since == 0 {
            return full;
        }
        let elapsed = now_ms().saturating_sub(since);
        if elapsed >= window {
            return full;
        }
        let ramped = u64::from(full) * elapsed / window;
        u32::try_from(ramped).unwrap_or(full).max(1)
    }

    /// Whether the server is in its `slowstart` window.
    pub fn ramping(&self) -> bool {
        let window = self.slowstart_ms.load(Relaxed);
        let since = self.available_since_ms.load(Relaxed);
        window > 0 && since > 0 && now_ms().saturating_sub(since) < window
    }

    fn became_available(&self) {
        self.available_since_ms.store(now_ms(), Relaxed);
        self.freed.notify_waiters();
    }

    pub fn in_flight(&self) -> u64 {
        self.in_flight.load(Relaxed)
    }

    /// Whether a request may start now without exceeding `maxconn`.
    pub fn has_room(&self) -> bool {
        let limit = self.maxconn();
        limit == 0 || self.in_flight() < u64::from(limit)
    }

    /// Counts a request in flight until the returned guard is dropped, whatever the limit: for
    /// tests, which hold places on a server without routing.
    #[cfg(test)]
    pub fn start_request(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Relaxed);
        self.stats.requests_total.fetch_add(1, Relaxed);
        InFlight(Arc::clone(self))
    }

    /// Admits one more request in flight unless that would exceed `maxconn`. The request is
    /// not counted yet (see [`InFlight::count`]): a pick may be dropped unused.
    pub fn try_admit(self: &Arc<Self>) -> Option<InFlight> {
        let limit = u64::from(self.maxconn());
        if limit == 0 {
            self.in_flight.fetch_add(1, Relaxed);
        } else {
            self.in_flight
                .fetch_update(Relaxed, Relaxed, |n| (n < limit).then_some(n + 1))
                .ok()?;
        }
        Some(InFlight(Arc::clone(self)))
    }

    /// Applies the configuration's weight and limit, and the operator's `settings` (if any)
    /// over them.
    fn configure(&self, config: &config::Server, settings: Option<Settings>) {
        self.config_weight.store(config.weight, Relaxed);
        let weight = settings.map_or(config.weight, |s| s.weight_under(config.weight));
        self.weight.store(weight, Relaxed);
        if let Some(settings) = settings {
            self.admin.store(settings.admin.to_stored(), Relaxed);
        }
        if self.maxconn.swap(config.maxconn, Relaxed) != config.maxconn {
            self.freed.notify_waiters();
        }
    }

    pub fn check_status(&self) -> CheckStatus {
        self.check
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    pub fn update_check(&self, update: impl FnOnce(&mut CheckStatus)) {
        update(&mut self.check.lock().unwrap_or_else(PoisonError::into_inner));
    }
}

impl Candidate for ServerState {
    fn weight(&self) -> u32 {
        self.effective_weight()
    }

    fn has_room(&self) -> bool {
        ServerState::has_room(self)
    }

    fn in_flight(&self) -> u64 {
        ServerState::in_flight(self)
    }

    fn identity(&self) -> &[u8] {
        self.name.as_bytes()
    }
}

/// A request in flight on a server (see [`ServerState::try_admit`]).
pub struct InFlight(Arc<ServerState>);

impl InFlight {
    pub fn server(&self) -> &Arc<ServerState> {
        &self.0
    }

    /// Counts the admitted request in the server's total.
    fn count(&self) {
        self.0.stats.requests_total.fetch_add(1, Relaxed);
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Relaxed);
        // Only a limited server has requests waiting for it to finish one.
        if self.0.maxconn() != 0 {
            self.0.freed.notify_waiters();
        }
    }
}

/// How a request found its server; logged on every request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    /// The cookie was in the table and its server is up.
    StickyHit,
    /// The cookie was new: balanced and recorded.
    NewSession,
    /// The cookie's server is down or gone: balanced again and the entry updated.
    Redispatch,
    /// No stickiness cookie: balanced, not recorded.
    NoCookie,
}

impl Pick {
    /// A balanced pick, with how the request came to be balanced.
    fn decided(self, decision: Decision) -> Self {
        match self {
            Self::Admitted(admitted, _) => Self::Admitted(admitted, decision),
            Self::Full => Self::Full,
        }
    }
}

impl Decision {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::StickyHit => "sticky",
            Self::NewSession => "new-session",
            Self::Redispatch => "redispatch",
            Self::NoCookie => "no-cookie",
        }
    }
}

/// Counters of one backend.
#[derive(Default)]
pub struct BackendStats {
    pub sticky_hits: AtomicU64,
    pub new_sessions: AtomicU64,
    pub redispatches: AtomicU64,
    pub no_cookie: AtomicU64,
    pub no_server: AtomicU64,
    pub learned: AtomicU64,
    /// Requests that had to wait for a server below its `maxconn`.
    pub queued_total: AtomicU64,
    /// Requests waiting now.
    pub queued: AtomicU64,
    /// Queued requests answered 503 after `queue_timeout`.
    pub queue_timeouts: AtomicU64,
}

/// What [`BackendState::route`] decided for a request.
pub enum Route {
    /// Its server, holding its place there until the guard is dropped.
    Admitted(InFlight, Decision),
    /// Every server that could take it is at its `maxconn` (for a sticky request, its own
    /// server is): wait for [`BackendState::freed`] and ask again.
    Queued,
    /// No server can take it.
    NoServer,
}

/// What a request picked inside the table's decision (see [`BackendState::route`]).
enum Pick {
    Admitted(InFlight, Decision),
    Full,
}

/// One backend. Its servers, health check settings and balancer sit behind `ArcSwap`s so that a
/// reload replaces them while requests keep routing, never waiting on a lock.
pub struct BackendState {
    pub name: String,
    pub id: u32,
    pub stick_cookie: String,
    health_check: ArcSwap<config::HealthCheck>,
    servers: ArcSwap<Vec<Arc<ServerState>>>,
    pub table: StickTable,
    balancer: ArcSwap<Balancer<ServerState>>,
    pub stats: BackendStats,
    /// Where the operator's server settings are kept.
    settings: SharedSettings,
    slowstart_ms: AtomicU64,
    queue_timeout_ms: AtomicU64,
    /// Whether a server of `servers` is reached over TLS (kept with them: read per request).
    tls_servers: AtomicBool,
    /// See [`ServerState::freed`].
    freed: Arc<Notify>,
}

impl BackendState {
    /// The backend `config` describes, its table in `store`, its servers' operator settings
    /// read from `settings`.
    pub fn new(config: &config::Backend, store: Store, settings: SharedSettings) -> Self {
        let id = config::backend_id(&config.name);
        let backend = Self {
            name: config.name.clone(),
            id,
            stick_cookie: config.stick_cookie.clone(),
            health_check: ArcSwap::from_pointee(config.health_check.clone()),
            servers: ArcSwap::from_pointee(Vec::new()),
            table: StickTable::new(id, config.table_size, config.expire, store),
            balancer: ArcSwap::from_pointee(Balancer::new(config.balance)),
            stats: BackendStats::default(),
            settings,
            slowstart_ms: AtomicU64::new(0),
            queue_timeout_ms: AtomicU64::new(0),
            tls_servers: AtomicBool::new(false),
            freed: Arc::new(Notify::new()),
        };
        backend.set_limits(config);
        backend.set_servers(&config.servers);
        backend
    }

    /// A backend whose operator settings are kept in memory only: for tests.
    pub fn in_memory(config: &config::Backend, store: Store) -> Self {
        Self::new(config, store, admin::MemorySettings::shared())
    }

    /// The health check settings in force.
    pub fn health_check(&self) -> Arc<config::HealthCheck> {
        self.health_check.load_full()
    }

    /// Applies `config`'s servers, health check and balance algorithm in place. Its name, cookie
    /// and table settings are those of this backend (a reload refuses other changes).
    pub fn reconfigure(&self, config: &config::Backend) {
        self.set_limits(config);
        self.set_servers(&config.servers);
        self.set_health_check(config.health_check.clone());
        self.set_balance(config.balance);
    }

    /// Swaps in `servers`. One whose name, address and TLS settings are unchanged keeps its
    /// state (up or down, counters, requests in flight); a new name, address or TLS setting
    /// starts afresh (connections made with the old settings are not reused). Requests
    /// already sent to a replaced or removed server finish on it; stick entries naming a removed
    /// server stay and are redispatched on their next request (see [`Self::route`]).
    ///
    /// Each server gets the configuration's weight and `maxconn`, with the operator's settings
    /// over them; a server gone from the configuration forgets its settings.
    pub fn set_servers(&self, servers: &[config::Server]) {
        let current = self.servers.load();
        let slowstart_ms = self.slowstart_ms.load(Relaxed);
        let next: Vec<Arc<ServerState>> = servers
            .iter()
            .map(|wanted| {
                let server = current
                    .iter()
                    .find(|s| {
                        *s.name == wanted.name && s.addr == wanted.addr && s.tls == wanted.tls
                    })
                    .cloned()
                    .unwrap_or_else(|| {
                        Arc::new(ServerState::from_config(wanted, Arc::clone(&self.freed)))
                    });
                server.configure(wanted, self.settings.load(self.id, &wanted.name));
                server.slowstart_ms.store(slowstart_ms, Relaxed);
                server
            })
            .collect();
        for (backend_id, name) in self.settings.servers() {
            if backend_id == self.id && !servers.iter().any(|s| s.name == name) {
                tracing::info!(backend = %self.name, server = %name, "server removed from the configuration: forgetting its admin state and weight");
                self.settings.forget(self.id, &name);
            }
        }
        self.tls_servers
            .store(next.iter().any(|s| s.tls.is_some()), Relaxed);
        self.servers.store(Arc::new(next));
        self.freed.notify_waiters();
    }

    fn set_limits(&self, config: &config::Backend) {
        let ms = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        self.slowstart_ms.store(ms(config.slowstart), Relaxed);
        self.queue_timeout_ms
            .store(ms(config.queue_timeout), Relaxed);
    }

    /// How long a request may wait in the queue.
    pub fn queue_timeout(&self) -> Duration {
        Duration::from_millis(self.queue_timeout_ms.load(Relaxed))
    }

    /// Woken when a place may have freed up for a queued request (see [`Route::Queued`]).
    pub fn freed(&self) -> &Arc<Notify> {
        &self.freed
    }

    /// Sets `server`'s admin state and keeps it (see [`admin`]). Returns the state before, or
    /// why it failed (an unknown server; a store that could not keep it, after applying it).
    pub fn set_admin(&self, server: &str, admin: Admin) -> Result<Admin, String> {
        let state = self.known_server(server)?;
        let before = state.set_admin(admin);
        self.freed.notify_waiters();
        self.keep_settings(&state).map(|()| before)
    }

    /// Sets `server`'s weight and keeps it. Returns the weight before.
    pub fn set_weight(&self, server: &str, weight: u16) -> Result<u16, String> {
        let state = self.known_server(server)?;
        let before = state.weight();
        state.set_weight(weight);
        self.keep_settings(&state).map(|()| before)
    }

    fn known_server(&self, name: &str) -> Result<Arc<ServerState>, String> {
        self.server(name).ok_or_else(|| {
            let known: Vec<String> = self.servers().iter().map(|s| s.name.to_string()).collect();
            format!(
                "no server {name:?} in backend {} (servers: {})",
                self.name,
                known.join(", ")
            )
        })
    }

    /// Writes `server`'s settings to the store, or forgets them there when they are the
    /// defaults.
    fn keep_settings(&self, server: &ServerState) -> Result<(), String> {
        let settings = Settings {
            admin: server.admin(),
            weight: server.weight(),
            config_weight: server.config_weight(),
        };
        if settings.is_default(server.config_weight()) {
            self.settings.forget(self.id, &server.name);
            return Ok(());
        }
        self.settings
            .save(self.id, &server.name, &settings)
            .map_err(|why| format!("applied, but not kept across restarts: {why}"))
    }

    pub fn set_health_check(&self, health_check: config::HealthCheck) {
        if !health_check.enabled {
            // Nothing would ever bring a server marked down back up.
            for server in self.servers.load().iter() {
                server.set_up(true);
            }
        }
        self.health_check.store(Arc::new(health_check));
    }

    /// Replaces the balancer when the algorithm changes; the same algorithm keeps its rotation.
    pub fn set_balance(&self, balance: config::Balance) {
        if self.balancer.load().algorithm() != balance {
            self.balancer.store(Arc::new(Balancer::new(balance)));
        }
    }

    pub fn balance(&self) -> config::Balance {
        self.balancer.load().algorithm()
    }

    pub fn servers(&self) -> Arc<Vec<Arc<ServerState>>> {
        self.servers.load_full()
    }

    /// Whether a server of the backend is reached over TLS: its connections are then served by
    /// hyper, never by the relay or the kernel fast path (which speak cleartext).
    pub fn has_tls_servers(&self) -> bool {
        self.tls_servers.load(Relaxed)
    }

    pub fn server(&self, name: &str) -> Option<Arc<ServerState>> {
        self.servers
            .load()
            .iter()
            .find(|s| &*s.name == name)
            .cloned()
    }

    /// [`Self::route_from`] for a request whose client is not known (tests).
    #[cfg(test)]
    pub fn route(&self, cookie: Option<&[u8]>, now_ms: u64) -> Route {
        self.route_from(None, cookie, now_ms)
    }

    /// Picks the server for a request from `client` carrying `cookie` (the stickiness cookie's
    /// value, if any) and admits the request there: a sticky session goes to its server while
    /// that server keeps sessions (up, not in maintenance; a drained one does), waiting for a
    /// place below its `maxconn`; the others are balanced over the servers that take new
    /// sessions (a consistent balance hashes the cookie, else the client's address).
    pub fn route_from(&self, client: Option<IpAddr>, cookie: Option<&[u8]>, now_ms: u64) -> Route {
        let servers = self.servers.load();
        let balancer = self.balancer.load();
        let picked = match cookie {
            None => {
                let affinity = client.map_or(Affinity::Nothing, Affinity::Client);
                self.admit_balanced(&servers, &balancer, affinity)
                    .map(|pick| pick.decided(Decision::NoCookie))
            }
            Some(cookie) => self
                .table
                .resolve(self.table.key(cookie), now_ms, |current| {
                    let stuck = current.and_then(|name| servers.iter().find(|s| &*s.name == name));
                    match stuck {
                        Some(server) if server.keeps_sessions() => {
                            let pick = match server.try_admit() {
                                Some(admitted) => Pick::Admitted(admitted, Decision::StickyHit),
                                None => Pick::Full,
                            };
                            Some((pick, None))
                        }
                        _ => {
                            let decision = if current.is_some() {
                                Decision::Redispatch
                            } else {
                                Decision::NewSession
                            };
                            let affinity = Affinity::Cookie(cookie);
                            match self.admit_balanced(&servers, &balancer, affinity)? {
                                Pick::Admitted(admitted, _) => {
                                    let name = Arc::clone(&admitted.server().name);
                                    Some((Pick::Admitted(admitted, decision), Some(name)))
                                }
                                Pick::Full => Some((Pick::Full, None)),
                            }
                        }
                    }
                }),
        };
        match picked {
            Some(Pick::Admitted(admitted, decision)) => {
                admitted.count();
                self.count(&admitted, decision);
                Route::Admitted(admitted, decision)
            }
            Some(Pick::Full) => Route::Queued,
            None => {
                self.stats.no_server.fetch_add(1, Relaxed);
                Route::NoServer
            }
        }
    }

    /// Balances over the servers that take new sessions and admits the request on the one
    /// chosen: `Full` when they are all at their `maxconn`, `None` when there is none.
    fn admit_balanced(
        &self,
        servers: &[Arc<ServerState>],
        balancer: &Balancer<ServerState>,
        affinity: Affinity<'_>,
    ) -> Option<Pick> {
        // A server chosen below its limit may reach it before we take our place (another
        // request took the last one): choose again, a bounded number of times.
        for _ in 0..=servers.len() {
            let Some(server) = balancer.select(servers, affinity) else {
                let any = servers.iter().any(|s| s.effective_weight() > 0);
                return any.then_some(Pick::Full);
            };
            if let Some(admitted) = server.try_admit() {
                return Some(Pick::Admitted(admitted, Decision::NoCookie));
            }
        }
        Some(Pick::Full)
    }

    /// Records the session a server set in its response (`Set-Cookie`), unless it is already
    /// stuck to that server.
    pub fn learn(&self, cookie: &[u8], server: &ServerState, now_ms: u64) {
        let key = self.table.key(cookie);
        let learned = self.table.resolve(key, now_ms, |current| {
            if current == Some(&*server.name) {
                Some((false, None))
            } else {
                Some((true, Some(Arc::clone(&server.name))))
            }
        });
        if learned == Some(true) {
            self.stats.learned.fetch_add(1, Relaxed);
            server.stats.sessions_total.fetch_add(1, Relaxed);
        }
    }

    fn count(&self, admitted: &InFlight, decision: Decision) {
        let server = admitted.server();
        let counter = match decision {
            Decision::StickyHit => &self.stats.sticky_hits,
            Decision::NewSession => &self.stats.new_sessions,
            Decision::Redispatch => &self.stats.redispatches,
            Decision::NoCookie => &self.stats.no_cookie,
        };
        counter.fetch_add(1, Relaxed);
        if matches!(decision, Decision::NewSession | Decision::Redispatch) {
            server.stats.sessions_total.fetch_add(1, Relaxed);
        }
    }
}

#[cfg(test)]
mod tests;
