//! One reading of every counter, taken once per request and shared by the status page, the
//! metrics and the JSON API, so the three never disagree about what a field means.

use std::{net::SocketAddr, sync::atomic::Ordering::Relaxed};

use lb_common::{
    SHIELD_STATS_LEN, SHIELD_STAT_DROPPED_DENY, SHIELD_STAT_DROPPED_RATE, SHIELD_STAT_PASSED,
    SHIELD_STAT_REFUNDED, SPLICE_STATS_LEN,
};
use serde::{ser::SerializeMap as _, Serialize, Serializer};

use super::Shared;
use crate::{
    backend::{BackendState, ServerState},
    balance::algorithm_name,
    fastpath::{ports::Held, program::read_pinned_stats, report, Runtime},
    peers::{link::PeerLink, stats::PeerState},
    shield::{self, Attached},
};

/// Labels of [`Responses`] in index order: index 0 counts failed and odd statuses.
pub(super) const RESPONSE_CLASSES: [&str; 6] = ["other", "1xx", "2xx", "3xx", "4xx", "5xx"];

pub(super) struct Snapshot {
    pub(super) instance: String,
    pub(super) version: &'static str,
    pub(super) uptime_ms: u64,
    /// Log lines this process dropped ([`crate::logging::dropped_lines`]).
    pub(super) log_dropped: u64,
    pub(super) frontends: Vec<FrontendView>,
    pub(super) backends: Vec<BackendView>,
    pub(super) peers: Vec<PeerView>,
    pub(super) fastpath: Option<FastPathView>,
    pub(super) shield: Option<ShieldView>,
    /// Whether the pinned stick table outlives this process.
    pub(super) table_durable: bool,
}

/// The kernel fast path: the flow map's totals, the program's counters, the hand-offs.
pub(super) struct FastPathView {
    pub(super) interfaces: Vec<crate::fastpath::runtime::Attached>,
    pub(super) summary: report::Summary,
    /// `SPLICE_STAT_*` order; `None` when the stats map cannot be read.
    pub(super) program: Option<[u64; SPLICE_STATS_LEN as usize]>,
    pub(super) candidates: u64,
    pub(super) attempts: u64,
    pub(super) outcomes: Vec<(&'static str, u64)>,
    pub(super) collected: u64,
    /// Source ports of server connections that may be spliced, not free now, and how many
    /// there are per server.
    pub(super) ports: Held,
    pub(super) ports_per_server: usize,
}

impl FastPathView {
    fn read(runtime: &Runtime) -> Self {
        let stats = &runtime.stats;
        Self {
            interfaces: runtime.attached(),
            summary: report::summary(&runtime.entries()),
            program: read_pinned_stats(runtime.root()).ok(),
            candidates: stats.candidates.load(Relaxed),
            attempts: stats.attempts.load(Relaxed),
            outcomes: stats.outcomes(),
            collected: stats.collected.load(Relaxed),
            ports: runtime.ports_held(),
            ports_per_server: runtime.source_ports().len(),
        }
    }
}

/// The XDP shield: its interfaces and modes, its counters and the SYN limit in force, read
/// from its pinned maps (so they count every process's packets since the maps were created).
pub(super) struct ShieldView {
    /// Each interface and its attach mode (`native`, `generic`, `adopted`).
    pub(super) interfaces: Vec<(String, &'static str)>,
    /// `None` when the counters map cannot be read.
    pub(super) counters: Option<ShieldCounters>,
    /// SYNs per second and back to back, from the settings map; `None` when it cannot be read
    /// or holds no limit.
    pub(super) syn_limit: Option<(u64, u64)>,
}

/// The shield's packet counters, summed over CPUs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(super) struct ShieldCounters {
    pub(super) dropped_deny: u64,
    pub(super) dropped_rate: u64,
    pub(super) passed: u64,
    /// SYNs given back because their connection was established (not a packet verdict).
    pub(super) refunded: u64,
}

impl ShieldCounters {
    pub(super) fn from_slots(slots: &[u64; SHIELD_STATS_LEN as usize]) -> Self {
        let at = |i: u32| slots.get(i as usize).copied().unwrap_or(0);
        Self {
            dropped_deny: at(SHIELD_STAT_DROPPED_DENY),
            dropped_rate: at(SHIELD_STAT_DROPPED_RATE),
            passed: at(SHIELD_STAT_PASSED),
            refunded: at(SHIELD_STAT_REFUNDED),
        }
    }

    /// Each verdict's label (as on `/metrics`) and count.
    pub(super) fn by_verdict(&self) -> [(&'static str, u64); 3] {
        [
            ("dropped_deny", self.dropped_deny),
            ("dropped_rate", self.dropped_rate),
            ("passed", self.passed),
        ]
    }
}

impl ShieldView {
    fn read(attached: &Attached) -> Self {
        let settings = shield::limit::read_pinned(&attached.root).ok();
        Self {
            interfaces: attached
                .interfaces
                .iter()
                .map(|(name, mode)| (name.clone(), mode.as_str()))
                .collect(),
            counters: shield::program::read_pinned_stats(&attached.root)
                .ok()
                .map(|slots| ShieldCounters::from_slots(&slots)),
            syn_limit: settings.and_then(|s| {
                let rate = 1_000_000_000u64.checked_div(s.syn_interval_ns)?;
                let burst = s.syn_window_ns.checked_div(s.syn_interval_ns)?;
                Some((rate, burst))
            }),
        }
    }
}

/// Labels of the programs' counters, in `SPLICE_STAT_*` order.
pub(super) const PROGRAM_COUNTERS: [&str; 8] = [
    "redirected",
    "observed",
    "armed_dropped",
    "dropped",
    "syn_reuse",
    "sack",
    "completed",
    "xdp_redirected",
];

#[derive(Serialize)]
pub(super) struct FrontendView {
    #[serde(rename = "frontend")]
    pub(super) name: String,
    pub(super) backend: String,
    /// What the frontend speaks: `HTTP`, `HTTPS (N certificates)` or `308 to <origin>`.
    pub(super) serves: String,
    /// Connections accepted since the daemon started.
    pub(super) connections: u64,
    /// A TLS frontend's handshakes.
    pub(super) tls: Option<TlsCounts>,
}

/// How a TLS frontend's handshakes ended, and what ALPN chose (`proxy::ALPN_LABELS` order).
#[derive(Serialize)]
pub(super) struct TlsCounts {
    pub(super) handshakes: u64,
    pub(super) failed: u64,
    pub(super) timed_out: u64,
    /// `{"h2": N, "http/1.1": N, "http/1.0": N, "none": N}` in JSON.
    #[serde(serialize_with = "by_alpn")]
    pub(super) alpn: [u64; 4],
}

fn by_alpn<S: Serializer>(alpn: &[u64; 4], serializer: S) -> Result<S::Ok, S::Error> {
    serializer.collect_map(crate::proxy::ALPN_LABELS.iter().zip(alpn))
}

impl FrontendView {
    pub(super) fn read(frontend: &crate::proxy::Frontend) -> Self {
        let stats = &frontend.stats;
        Self {
            name: frontend.name.clone(),
            backend: frontend.backend.name.clone(),
            serves: serves(frontend),
            connections: stats.connections.load(Relaxed),
            tls: frontend.tls.is_some().then(|| TlsCounts {
                handshakes: stats.tls_handshakes.load(Relaxed),
                failed: stats.tls_failed.load(Relaxed),
                timed_out: stats.tls_timed_out.load(Relaxed),
                alpn: std::array::from_fn(|i| stats.tls_alpn[i].load(Relaxed)),
            }),
        }
    }
}

#[derive(Serialize)]
pub(super) struct BackendView {
    #[serde(rename = "backend")]
    pub(super) name: String,
    /// The balance algorithm as the configuration spells it.
    pub(super) balance: &'static str,
    pub(super) stick_cookie: String,
    pub(super) table_size: usize,
    pub(super) table_capacity: usize,
    pub(super) stats: BackendCounters,
    pub(super) servers: Vec<ServerView>,
}

#[derive(Serialize)]
pub(super) struct BackendCounters {
    pub(super) sticky_hits: u64,
    pub(super) new_sessions: u64,
    pub(super) redispatches: u64,
    pub(super) no_cookie: u64,
    /// Requests answered 503 because no server was up.
    pub(super) no_server: u64,
    /// Sessions learned from a server's `Set-Cookie`.
    pub(super) learned: u64,
    /// Requests waiting for a server below its `maxconn` now.
    pub(super) queued: u64,
    pub(super) queued_total: u64,
    /// Queued requests answered 503 after `queue_timeout`.
    pub(super) queue_timeouts: u64,
}

#[derive(Serialize)]
pub(super) struct ServerView {
    #[serde(rename = "server")]
    pub(super) name: String,
    pub(super) addr: SocketAddr,
    pub(super) state: State,
    /// The operator's admin state: `ready`, `drain` or `maint`.
    pub(super) admin: &'static str,
    /// The weight in force (configured or set at run time), and the share balancing uses now
    /// (0 when the server takes no new sessions; lower while it ramps up after `slowstart`),
    /// in units of 1/16.
    pub(super) weight: u16,
    pub(super) effective_weight: u32,
    pub(super) slowstart: bool,
    /// 0: no limit.
    pub(super) maxconn: u32,
    pub(super) in_flight: u64,
    pub(super) sessions_total: u64,
    pub(super) requests_total: u64,
    pub(super) bytes_in: u64,
    pub(super) bytes_out: u64,
    pub(super) responses: Responses,
    pub(super) failures: u64,
    pub(super) check_transitions: u64,
    pub(super) check: CheckView,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub(super) enum State {
    #[serde(rename = "UP")]
    Up,
    #[serde(rename = "DOWN")]
    Down,
}

impl State {
    pub(super) fn as_str(self) -> &'static str {
        match self {
            Self::Up => "UP",
            Self::Down => "DOWN",
        }
    }
}

/// Responses by status class, indexed as [`RESPONSE_CLASSES`]; serialized as an object keyed
/// by class.
pub(super) struct Responses(pub(super) [u64; 6]);

impl Responses {
    pub(super) fn by_class(&self) -> impl Iterator<Item = (&'static str, u64)> + '_ {
        RESPONSE_CLASSES.iter().copied().zip(self.0.iter().copied())
    }
}

impl Serialize for Responses {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(RESPONSE_CLASSES.len()))?;
        for (class, count) in self.by_class() {
            map.serialize_entry(class, &count)?;
        }
        map.end()
    }
}

#[derive(Serialize)]
pub(super) struct CheckView {
    pub(super) enabled: bool,
    /// Empty until the first check completed.
    pub(super) last_result: String,
    pub(super) consecutive_ok: u32,
    pub(super) consecutive_failed: u32,
}

/// One member of the peers section and its session with us.
#[derive(Serialize)]
pub(super) struct PeerView {
    #[serde(rename = "peer")]
    pub(super) name: String,
    pub(super) addr: SocketAddr,
    /// `connecting`, `established` or `down`.
    #[serde(serialize_with = "peer_state")]
    pub(super) state: PeerState,
    /// Unix ms of the last message received (heartbeats included); 0 for never.
    pub(super) last_received_ms: u64,
    /// Milliseconds since the last message received; `None` (null) for never.
    pub(super) last_heard_ms_ago: Option<u64>,
    pub(super) sessions: u64,
    pub(super) updates_sent: u64,
    pub(super) updates_received: u64,
    /// Our updates the peer acknowledged.
    pub(super) updates_acked: u64,
    /// Full resyncs we taught the peer.
    pub(super) resyncs_taught: u64,
    /// Full resyncs the peer taught us.
    pub(super) resyncs_learned: u64,
    /// Received entries naming a server this node does not have.
    pub(super) unknown_servers: u64,
    /// Received entries that disagreed with a recent choice of ours.
    pub(super) conflicts: u64,
    /// Local entries not sent because their key is too long for the peer table.
    pub(super) keys_too_long: u64,
    /// Why the last session or attempt ended, if one did.
    pub(super) last_error: Option<String>,
}

fn peer_state<S: Serializer>(state: &PeerState, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_str(state.as_str())
}

impl Snapshot {
    pub(super) fn read(shared: &Shared, now_ms: u64) -> Self {
        Self {
            instance: shared.instance.clone(),
            version: env!("CARGO_PKG_VERSION"),
            uptime_ms: now_ms.saturating_sub(shared.started_ms),
            log_dropped: crate::logging::dropped_lines(),
            frontends: shared
                .frontends
                .iter()
                .map(|f| FrontendView::read(f))
                .collect(),
            backends: shared
                .backends
                .iter()
                .map(|b| BackendView::read(b))
                .collect(),
            peers: shared
                .peers
                .iter()
                .map(|p| PeerView::read(p, now_ms))
                .collect(),
            fastpath: shared.fastpath.as_deref().map(FastPathView::read),
            shield: shared.shield.as_ref().map(ShieldView::read),
            table_durable: shared.table_durable,
        }
    }
}

impl PeerView {
    pub(super) fn read(link: &PeerLink, now_ms: u64) -> Self {
        let stats = &link.stats;
        let last_received_ms = stats.last_received_ms.load(Relaxed);
        Self {
            name: link.name.clone(),
            addr: link.addr,
            state: stats.state(),
            last_received_ms,
            // A message can land between reading the clock and this load: never negative.
            last_heard_ms_ago: (last_received_ms != 0)
                .then(|| now_ms.saturating_sub(last_received_ms)),
            sessions: stats.sessions.load(Relaxed),
            updates_sent: stats.updates_sent.load(Relaxed),
            updates_received: stats.updates_received.load(Relaxed),
            updates_acked: stats.updates_acked.load(Relaxed),
            resyncs_taught: stats.resyncs_taught.load(Relaxed),
            resyncs_learned: stats.resyncs_learned.load(Relaxed),
            unknown_servers: stats.unknown_servers.load(Relaxed),
            conflicts: stats.conflicts.load(Relaxed),
            keys_too_long: stats.keys_too_long.load(Relaxed),
            last_error: stats.last_error(),
        }
    }

    pub(super) fn is_up(&self) -> bool {
        self.state == PeerState::Established
    }
}

impl BackendView {
    pub(super) fn read(backend: &BackendState) -> Self {
        let stats = &backend.stats;
        Self {
            name: backend.name.clone(),
            balance: algorithm_name(backend.balance()),
            stick_cookie: backend.stick_cookie.clone(),
            table_size: backend.table.len(),
            table_capacity: backend.table.capacity(),
            stats: BackendCounters {
                sticky_hits: stats.sticky_hits.load(Relaxed),
                new_sessions: stats.new_sessions.load(Relaxed),
                redispatches: stats.redispatches.load(Relaxed),
                no_cookie: stats.no_cookie.load(Relaxed),
                no_server: stats.no_server.load(Relaxed),
                learned: stats.learned.load(Relaxed),
                queued: stats.queued.load(Relaxed),
                queued_total: stats.queued_total.load(Relaxed),
                queue_timeouts: stats.queue_timeouts.load(Relaxed),
            },
            servers: backend
                .servers()
                .iter()
                .map(|s| ServerView::read(s, backend.health_check().enabled))
                .collect(),
        }
    }

    pub(super) fn servers_up(&self) -> usize {
        self.servers.iter().filter(|s| s.state == State::Up).count()
    }
}

impl ServerView {
    fn read(server: &ServerState, checks_enabled: bool) -> Self {
        let stats = &server.stats;
        let check = server.check_status();
        Self {
            name: server.name.to_string(),
            addr: server.addr,
            state: if server.is_up() {
                State::Up
            } else {
                State::Down
            },
            admin: server.admin().as_str(),
            weight: server.weight(),
            effective_weight: server.effective_weight(),
            slowstart: server.ramping(),
            maxconn: server.maxconn(),
            in_flight: server.in_flight(),
            sessions_total: stats.sessions_total.load(Relaxed),
            requests_total: stats.requests_total.load(Relaxed),
            bytes_in: stats.bytes_in.load(Relaxed),
            bytes_out: stats.bytes_out.load(Relaxed),
            responses: Responses(stats.responses.each_ref().map(|count| count.load(Relaxed))),
            failures: stats.failures.load(Relaxed),
            check_transitions: stats.transitions.load(Relaxed),
            check: CheckView {
                enabled: checks_enabled,
                last_result: check.last_result,
                consecutive_ok: check.consecutive_ok,
                consecutive_failed: check.consecutive_failed,
            },
        }
    }
}

/// What `frontend` speaks, in the monitor's words.
fn serves(frontend: &crate::proxy::Frontend) -> String {
    if let Some(base) = &frontend.redirect {
        return format!("308 to {base}");
    }
    match &frontend.tls {
        Some(certificates) => match certificates.count() {
            1 => "HTTPS (1 certificate)".to_owned(),
            n => format!("HTTPS ({n} certificates)"),
        },
        None => "HTTP".to_owned(),
    }
}
