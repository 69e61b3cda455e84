//! Runtime state of backends and their servers: liveness, counters, and the routing decision
//! (sticky lookup first, then selection).

use std::{
    net::SocketAddr,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering::Relaxed},
        Arc, Mutex, PoisonError,
    },
};

use arc_swap::ArcSwap;

use crate::{
    balance::{Balancer, Candidate, Select as _},
    config,
    table::{StickTable, Store},
};

/// One server of a backend, as the proxy, the health checker and the monitor see it.
pub struct ServerState {
    /// The server's stable identity: what stick entries point at.
    pub name: Arc<str>,
    pub addr: SocketAddr,
    up: AtomicBool,
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
    pub fn new(name: &str, addr: SocketAddr) -> Self {
        Self {
            name: Arc::from(name),
            addr,
            up: AtomicBool::new(true),
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
        }
        changed
    }

    pub fn in_flight(&self) -> u64 {
        self.in_flight.load(Relaxed)
    }

    /// Counts a request in flight until the returned guard is dropped.
    pub fn start_request(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Relaxed);
        self.stats.requests_total.fetch_add(1, Relaxed);
        InFlight(Arc::clone(self))
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
    fn is_up(&self) -> bool {
        ServerState::is_up(self)
    }

    fn in_flight(&self) -> u64 {
        ServerState::in_flight(self)
    }
}

/// A request in flight on a server (see [`ServerState::start_request`]).
pub struct InFlight(Arc<ServerState>);

impl InFlight {
    pub fn server(&self) -> &Arc<ServerState> {
        &self.0
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Relaxed);
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
}

impl BackendState {
    pub fn new(config: &config::Backend, store: Store) -> Self {
        let id = config::backend_id(&config.name);
        let servers = config
            .servers
            .iter()
            .map(|s| Arc::new(ServerState::new(&s.name, s.addr)))
            .collect();
        Self {
            name: config.name.clone(),
            id,
            stick_cookie: config.stick_cookie.clone(),
            health_check: ArcSwap::from_pointee(config.health_check.clone()),
            servers: ArcSwap::from_pointee(servers),
            table: StickTable::new(id, config.table_size, config.expire, store),
            balancer: ArcSwap::from_pointee(Balancer::new(config.balance)),
            stats: BackendStats::default(),
        }
    }

    /// The health check settings in force.
    pub fn health_check(&self) -> Arc<config::HealthCheck> {
        self.health_check.load_full()
    }

    /// Applies `config`'s servers, health check and balance algorithm in place. Its name, cookie
    /// and table settings are those of this backend (a reload refuses other changes).
    pub fn reconfigure(&self, config: &config::Backend) {
        self.set_servers(&config.servers);
        self.set_health_check(config.health_check.clone());
        self.set_balance(config.balance);
    }

    /// Swaps in `servers`. One whose name and address are unchanged keeps its state (up or
    /// down, counters, requests in flight); a new name or a new address starts afresh. Requests
    /// already sent to a replaced or removed server finish on it; stick entries naming a removed
    /// server stay and are redispatched on their next request (see [`Self::route`]).
    pub fn set_servers(&self, servers: &[config::Server]) {
        let current = self.servers.load();
        let next = servers
            .iter()
            .map(|wanted| {
                current
                    .iter()
                    .find(|s| *s.name == wanted.name && s.addr == wanted.addr)
                    .cloned()
                    .unwrap_or_else(|| Arc::new(ServerState::new(&wanted.name, wanted.addr)))
            })
            .collect();
        self.servers.store(Arc::new(next));
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

    pub fn server(&self, name: &str) -> Option<Arc<ServerState>> {
        self.servers
            .load()
            .iter()
            .find(|s| &*s.name == name)
            .cloned()
    }

    /// Picks the server for a request carrying `cookie` (the stickiness cookie's value, if any).
    /// `None` when no server is up.
    pub fn route(
        &self,
        cookie: Option<&[u8]>,
        now_ms: u64,
    ) -> Option<(Arc<ServerState>, Decision)> {
        let servers = self.servers.load();
        let balancer = self.balancer.load();
        let routed = match cookie {
            None => balancer.select(&servers).map(|s| (s, Decision::NoCookie)),
            Some(cookie) => self
                .table
                .resolve(self.table.key(cookie), now_ms, |current| {
                    let stuck = current.and_then(|name| servers.iter().find(|s| &*s.name == name));
                    match stuck {
                        Some(server) if server.is_up() => {
                            Some(((Arc::clone(server), Decision::StickyHit), None))
                        }
                        _ => {
                            let decision = if current.is_some() {
                                Decision::Redispatch
                            } else {
                                Decision::NewSession
                            };
                            let server = balancer.select(&servers)?;
                            let name = Arc::clone(&server.name);
                            Some(((server, decision), Some(name)))
                        }
                    }
                }),
        };
        self.count(
            routed
                .as_ref()
                .map(|(server, decision)| (server.as_ref(), *decision)),
        );
        routed
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

    fn count(&self, routed: Option<(&ServerState, Decision)>) {
        let Some((server, decision)) = routed else {
            self.stats.no_server.fetch_add(1, Relaxed);
            return;
        };
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
