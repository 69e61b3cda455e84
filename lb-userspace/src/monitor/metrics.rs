//! `/metrics`: the Prometheus text exposition format, version 0.0.4. Every family is written
//! whole (HELP, TYPE, then all its samples), as the format requires.

use std::fmt::{self, Write as _};

use super::view::{
    BackendCounters, BackendView, FastPathView, PeerView, ServerView, ShieldView, Snapshot,
    PROGRAM_COUNTERS,
};
use crate::backend::Decision;

#[derive(Clone, Copy)]
enum Kind {
    Gauge,
    Counter,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Self::Gauge => "gauge",
            Self::Counter => "counter",
        }
    }
}

type ServerValue = fn(&ServerView) -> u64;
type BackendValue = fn(&BackendView) -> u64;
type PeerValue = fn(&PeerView) -> u64;

const SERVER_FAMILIES: [(&str, Kind, &str, ServerValue); 11] = [
    (
        "stickylb_server_up",
        Kind::Gauge,
        "Whether the server is up (1) or down (0).",
        |s| u64::from(s.state == super::view::State::Up),
    ),
    (
        "stickylb_server_weight",
        Kind::Gauge,
        "The server's weight in force (configured, or set with `stickylb server ... weight`).",
        |s| u64::from(s.weight),
    ),
    (
        "stickylb_server_effective_weight",
        Kind::Gauge,
        "The weight balancing uses now, in 1/16: 0 when the server takes no new sessions, lower while it ramps up (slowstart).",
        |s| u64::from(s.effective_weight),
    ),
    (
        "stickylb_server_maxconn",
        Kind::Gauge,
        "Requests in flight the server takes at most (0: no limit).",
        |s| u64::from(s.maxconn),
    ),
    (
        "stickylb_server_in_flight",
        Kind::Gauge,
        "Requests in flight on the server.",
        |s| s.in_flight,
    ),
    (
        "stickylb_server_sessions_total",
        Kind::Counter,
        "Sessions stuck to the server (new cookies, redispatches, learned Set-Cookie).",
        |s| s.sessions_total,
    ),
    (
        "stickylb_server_requests_total",
        Kind::Counter,
        "Requests sent to the server.",
        |s| s.requests_total,
    ),
    (
        "stickylb_server_bytes_in_total",
        Kind::Counter,
        "Request body bytes forwarded to the server.",
        |s| s.bytes_in,
    ),
    (
        "stickylb_server_bytes_out_total",
        Kind::Counter,
        "Response body bytes received from the server.",
        |s| s.bytes_out,
    ),
    (
        "stickylb_server_failures_total",
        Kind::Counter,
        "Requests to the server that failed without a response.",
        |s| s.failures,
    ),
    (
        "stickylb_server_check_transitions_total",
        Kind::Counter,
        "UP/DOWN transitions of the server decided by health checks.",
        |s| s.check_transitions,
    ),
];

const BACKEND_FAMILIES: [(&str, Kind, &str, BackendValue); 7] = [
    (
        "stickylb_backend_table_entries",
        Kind::Gauge,
        "Entries in the backend's stick table.",
        |b| b.table_size as u64,
    ),
    (
        "stickylb_backend_table_capacity",
        Kind::Gauge,
        "Capacity of the backend's stick table.",
        |b| b.table_capacity as u64,
    ),
    (
        "stickylb_backend_no_server_total",
        Kind::Counter,
        "Requests answered 503 because no server of the backend was up.",
        |b| b.stats.no_server,
    ),
    (
        "stickylb_backend_learned_total",
        Kind::Counter,
        "Sessions learned from a server's Set-Cookie.",
        |b| b.stats.learned,
    ),
    (
        "stickylb_backend_queued",
        Kind::Gauge,
        "Requests waiting for a server below its maxconn.",
        |b| b.stats.queued,
    ),
    (
        "stickylb_backend_queued_total",
        Kind::Counter,
        "Requests that waited for a server below its maxconn.",
        |b| b.stats.queued_total,
    ),
    (
        "stickylb_backend_queue_timeouts_total",
        Kind::Counter,
        "Queued requests answered 503 after the backend's queue_timeout.",
        |b| b.stats.queue_timeouts,
    ),
];

const PEER_FAMILIES: [(&str, Kind, &str, PeerValue); 8] = [
    (
        "stickylb_peer_up",
        Kind::Gauge,
        "Whether a session with the peer is established (1) or not (0).",
        |p| u64::from(p.is_up()),
    ),
    (
        "stickylb_peer_sessions_total",
        Kind::Counter,
        "Sessions established with the peer, dialled or accepted.",
        |p| p.sessions,
    ),
    (
        "stickylb_peer_updates_sent_total",
        Kind::Counter,
        "Stick table updates sent to the peer.",
        |p| p.updates_sent,
    ),
    (
        "stickylb_peer_updates_received_total",
        Kind::Counter,
        "Stick table updates received from the peer.",
        |p| p.updates_received,
    ),
    (
        "stickylb_peer_updates_acked_total",
        Kind::Counter,
        "Updates sent to the peer that it acknowledged.",
        |p| p.updates_acked,
    ),
    (
        "stickylb_peer_unknown_servers_total",
        Kind::Counter,
        "Entries received from the peer naming a server this node does not have.",
        |p| p.unknown_servers,
    ),
    (
        "stickylb_peer_conflicts_total",
        Kind::Counter,
        "Entries received from the peer that disagreed with a recent local choice.",
        |p| p.conflicts,
    ),
    (
        "stickylb_peer_keys_too_long_total",
        Kind::Counter,
        "Local entries not sent to the peer because their key is longer than its table's key length.",
        |p| p.keys_too_long,
    ),
];

fn decisions(c: &BackendCounters) -> [(Decision, u64); 4] {
    [
        (Decision::StickyHit, c.sticky_hits),
        (Decision::NewSession, c.new_sessions),
        (Decision::Redispatch, c.redispatches),
        (Decision::NoCookie, c.no_cookie),
    ]
}

/// Connections per frontend; a TLS frontend's handshakes by outcome and by ALPN.
fn write_frontends(out: &mut String, snapshot: &Snapshot) -> fmt::Result {
    let name = "stickylb_frontend_connections_total";
    header(
        out,
        name,
        Kind::Counter,
        "Connections the frontend accepted.",
    )?;
    for f in &snapshot.frontends {
        writeln!(
            out,
            "{name}{{frontend=\"{}\"}} {}",
            LabelValue(&f.name),
            f.connections
        )?;
    }
    let tls: Vec<_> = snapshot
        .frontends
        .iter()
        .filter_map(|f| Some((f, f.tls.as_ref()?)))
        .collect();
    if tls.is_empty() {
        return Ok(());
    }
    let name = "stickylb_frontend_tls_handshakes_total";
    header(
        out,
        name,
        Kind::Counter,
        "TLS handshakes on the frontend by how they ended: done, failed (plaintext, garbage, a protocol error), timeout (not done within timeouts.client).",
    )?;
    for (f, counts) in &tls {
        for (result, count) in [
            ("done", counts.handshakes),
            ("failed", counts.failed),
            ("timeout", counts.timed_out),
        ] {
            writeln!(
                out,
                "{name}{{frontend=\"{}\",result=\"{result}\"}} {count}",
                LabelValue(&f.name)
            )?;
        }
    }
    let name = "stickylb_frontend_tls_alpn_total";
    header(
        out,
        name,
        Kind::Counter,
        "Completed TLS handshakes on the frontend by the protocol ALPN chose (none: no ALPN).",
    )?;
    for (f, counts) in &tls {
        for (alpn, count) in crate::proxy::ALPN_LABELS.iter().zip(counts.alpn) {
            writeln!(
                out,
                "{name}{{frontend=\"{}\",alpn=\"{alpn}\"}} {count}",
                LabelValue(&f.name)
            )?;
        }
    }
    Ok(())
}

pub(super) fn render(snapshot: &Snapshot) -> String {
    let mut out = String::with_capacity(4096);
    // Writing to a String cannot fail.
    let _ = write_all(&mut out, snapshot);
    out
}

fn write_all(out: &mut String, snapshot: &Snapshot) -> fmt::Result {
    header(
        out,
        "stickylb_build_info",
        Kind::Gauge,
        "Always 1; labelled with the version and instance name.",
    )?;
    writeln!(
        out,
        "stickylb_build_info{{version=\"{}\",instance=\"{}\"}} 1",
        LabelValue(snapshot.version),
        LabelValue(&snapshot.instance)
    )?;
    header(
        out,
        "stickylb_uptime_seconds",
        Kind::Gauge,
        "Seconds since the daemon started.",
    )?;
    writeln!(
        out,
        "stickylb_uptime_seconds {}.{:03}",
        snapshot.uptime_ms / 1000,
        snapshot.uptime_ms % 1000
    )?;
    header(
        out,
        "stickylb_log_lines_dropped_total",
        Kind::Counter,
        "Log lines dropped because standard error was read slower than they were written (the \
         traffic never waits for the log), or could not be written at all.",
    )?;
    writeln!(
        out,
        "stickylb_log_lines_dropped_total {}",
        snapshot.log_dropped
    )?;
    header(
        out,
        "stickylb_table_durable",
        Kind::Gauge,
        "1 when the pinned stick table outlives the process (its bpffs is the host's), 0 when a restart would start with an empty table.",
    )?;
    writeln!(
        out,
        "stickylb_table_durable {}",
        u8::from(snapshot.table_durable)
    )?;

    write_frontends(out, snapshot)?;

    for (name, kind, help, value) in SERVER_FAMILIES {
        header(out, name, kind, help)?;
        for (backend, server) in servers(snapshot) {
            writeln!(
                out,
                "{name}{{{}}} {}",
                ServerLabels(backend, server),
                value(server)
            )?;
        }
    }
    let name = "stickylb_server_admin_state";
    header(
        out,
        name,
        Kind::Gauge,
        "The operator's admin state of the server: 1 for the state it is in (ready, drain, maint).",
    )?;
    for (backend, server) in servers(snapshot) {
        for state in ["ready", "drain", "maint"] {
            writeln!(
                out,
                "{name}{{{},state=\"{state}\"}} {}",
                ServerLabels(backend, server),
                u64::from(server.admin == state)
            )?;
        }
    }
    let name = "stickylb_server_responses_total";
    header(
        out,
        name,
        Kind::Counter,
        "Responses from the server by status class (other: failed or unusual).",
    )?;
    for (backend, server) in servers(snapshot) {
        for (class, count) in server.responses.by_class() {
            writeln!(
                out,
                "{name}{{{},code=\"{class}\"}} {count}",
                ServerLabels(backend, server)
            )?;
        }
    }

    for (name, kind, help, value) in BACKEND_FAMILIES {
        header(out, name, kind, help)?;
        for backend in &snapshot.backends {
            writeln!(
                out,
                "{name}{{backend=\"{}\"}} {}",
                LabelValue(&backend.name),
                value(backend)
            )?;
        }
    }
    let name = "stickylb_backend_decisions_total";
    header(
        out,
        name,
        Kind::Counter,
        "Routing decisions of the backend.",
    )?;
    for backend in &snapshot.backends {
        for (decision, count) in decisions(&backend.stats) {
            writeln!(
                out,
                "{name}{{backend=\"{}\",decision=\"{}\"}} {count}",
                LabelValue(&backend.name),
                decision.as_str(),
            )?;
        }
    }
    write_peers(out, &snapshot.peers)?;
    if let Some(fastpath) = &snapshot.fastpath {
        write_fastpath(out, fastpath)?;
    }
    if let Some(shield) = &snapshot.shield {
        write_shield(out, shield)?;
    }
    Ok(())
}

fn write_shield(out: &mut String, shield: &ShieldView) -> fmt::Result {
    let name = "stickylb_shield_interface";
    header(
        out,
        name,
        Kind::Gauge,
        "Interfaces the shield is attached to, with the mode each got (native or generic XDP, \
         tc, or adopted from the previous process at XDP); always 1.",
    )?;
    for (interface, mode) in &shield.interfaces {
        writeln!(
            out,
            "{name}{{interface=\"{}\",mode=\"{mode}\"}} 1",
            LabelValue(interface)
        )?;
    }
    if let Some(counters) = &shield.counters {
        let name = "stickylb_shield_packets_total";
        header(
            out,
            name,
            Kind::Counter,
            "Packets the XDP shield judged, by verdict: dropped by the deny list, SYNs dropped by \
             the rate limit, passed (all processes, since its maps were created).",
        )?;
        for (verdict, count) in counters.by_verdict() {
            writeln!(out, "{name}{{verdict=\"{verdict}\"}} {count}")?;
        }
        let name = "stickylb_shield_syn_refunded_total";
        header(
            out,
            name,
            Kind::Counter,
            "SYNs given back to their source's bucket because the connection they opened on a \
             frontend was established: only SYNs that never become connections count against \
             the limit (all processes, since its maps were created).",
        )?;
        writeln!(out, "{name} {}", counters.refunded)?;
    }
    if let Some((rate, burst)) = shield.syn_limit {
        for (name, help, value) in [
            (
                "stickylb_shield_syn_rate",
                "SYNs per second a source may send, sustained (the limit in force).",
                rate,
            ),
            (
                "stickylb_shield_syn_burst",
                "SYNs a source may send back to back (the limit in force).",
                burst,
            ),
        ] {
            header(out, name, Kind::Gauge, help)?;
            writeln!(out, "{name} {value}")?;
        }
    }
    Ok(())
}

fn write_fastpath(out: &mut String, f: &FastPathView) -> fmt::Result {
    let s = &f.summary;
    let gauges = [
        (
            "stickylb_fastpath_spliced_flows",
            "Connections spliced by the kernel now (pairs of SPLICE entries).",
            s.spliced,
        ),
        (
            "stickylb_fastpath_flow_packets",
            "Packets the program translated for the spliced flows in the map now.",
            s.packets,
        ),
        (
            "stickylb_fastpath_flow_bytes",
            "Bytes the program translated for the spliced flows in the map now.",
            s.bytes,
        ),
    ];
    for (name, help, value) in gauges {
        header(out, name, Kind::Gauge, help)?;
        writeln!(out, "{name} {value}")?;
    }
    let name = "stickylb_fastpath_interface";
    header(
        out,
        name,
        Kind::Gauge,
        "Interfaces the fast path is attached to: where the translation of the packets arriving \
         there runs (xdp, in front of tc; or tc only), the XDP attach outcome (native, off, \
         unsupported, occupied, shield), and whether the XDP program may redirect to it; always 1.",
    )?;
    for i in &f.interfaces {
        writeln!(
            out,
            "{name}{{interface=\"{}\",translation=\"{}\",xdp=\"{}\",xdp_redirect_target=\"{}\"}} 1",
            LabelValue(&i.name),
            i.xdp.translation(),
            i.xdp.as_str(),
            if i.xdp_target { "yes" } else { "no" },
        )?;
    }
    let name = "stickylb_fastpath_source_ports";
    header(
        out,
        name,
        Kind::Gauge,
        "Source ports of server connections that may be spliced, not free now: held by \
         connections the proxy relays, by open spliced flows, resting after their flow ended; per \
         server and source address there are stickylb_fastpath_source_ports_per_server.",
    )?;
    for (holder, count) in [
        ("relayed", f.ports.relayed),
        ("spliced", f.ports.spliced),
        ("resting", f.ports.resting),
    ] {
        writeln!(out, "{name}{{holder=\"{holder}\"}} {count}")?;
    }
    let name = "stickylb_fastpath_source_ports_per_server";
    header(
        out,
        name,
        Kind::Gauge,
        "Size of [fastpath] source_ports: the ports toward each server from each source address.",
    )?;
    writeln!(out, "{name} {}", f.ports_per_server)?;
    let name = "stickylb_fastpath_entries";
    header(out, name, Kind::Gauge, "Flow map entries by state.")?;
    for (state, count) in [
        ("observe", s.observe_entries),
        ("armed", s.armed_entries),
        ("splice", s.splice_entries),
        ("closed", s.closed_entries),
    ] {
        writeln!(out, "{name}{{state=\"{state}\"}} {count}")?;
    }
    if let Some(program) = &f.program {
        let name = "stickylb_fastpath_program_packets_total";
        header(
            out,
            name,
            Kind::Counter,
            "The TC and XDP programs' packet counters (all processes, since the maps were \
             created); xdp_redirected counts the packets of redirected translated at XDP.",
        )?;
        for (label, value) in PROGRAM_COUNTERS.iter().zip(program) {
            writeln!(out, "{name}{{counter=\"{label}\"}} {value}")?;
        }
    }
    let name = "stickylb_fastpath_handoffs_total";
    header(
        out,
        name,
        Kind::Counter,
        "Hand-off attempts and connections kept in userspace, by outcome.",
    )?;
    for (outcome, value) in &f.outcomes {
        writeln!(out, "{name}{{outcome=\"{outcome}\"}} {value}")?;
    }
    let counters = [
        (
            "stickylb_fastpath_candidates_total",
            "Connections the hand-off policy picked: given a server leg that can be spliced, and observed.",
            f.candidates,
        ),
        (
            "stickylb_fastpath_attempts_total",
            "Hand-offs attempted.",
            f.attempts,
        ),
        (
            "stickylb_fastpath_collected_total",
            "Flow map entries removed by the collector.",
            f.collected,
        ),
    ];
    for (name, help, value) in counters {
        header(out, name, Kind::Counter, help)?;
        writeln!(out, "{name} {value}")?;
    }
    Ok(())
}

fn write_peers(out: &mut String, peers: &[PeerView]) -> fmt::Result {
    for (name, kind, help, value) in PEER_FAMILIES {
        header(out, name, kind, help)?;
        for peer in peers {
            writeln!(out, "{name}{{{}}} {}", PeerLabel(peer), value(peer))?;
        }
    }
    let name = "stickylb_peer_last_heard_seconds";
    header(
        out,
        name,
        Kind::Gauge,
        "Seconds since the last message from the peer, heartbeats included (absent: never).",
    )?;
    for peer in peers {
        if let Some(ago) = peer.last_heard_ms_ago {
            writeln!(
                out,
                "{name}{{{}}} {}.{:03}",
                PeerLabel(peer),
                ago / 1000,
                ago % 1000
            )?;
        }
    }
    let name = "stickylb_peer_resyncs_total";
    header(
        out,
        name,
        Kind::Counter,
        "Full resyncs with the peer (taught: we taught the peer; learned: the peer taught us).",
    )?;
    for peer in peers {
        for (direction, count) in [
            ("taught", peer.resyncs_taught),
            ("learned", peer.resyncs_learned),
        ] {
            writeln!(
                out,
                "{name}{{{},direction=\"{direction}\"}} {count}",
                PeerLabel(peer)
            )?;
        }
    }
    Ok(())
}

fn header(out: &mut String, name: &str, kind: Kind, help: &str) -> fmt::Result {
    writeln!(out, "# HELP {name} {help}")?;
    writeln!(out, "# TYPE {name} {}", kind.as_str())
}

fn servers(snapshot: &Snapshot) -> impl Iterator<Item = (&BackendView, &ServerView)> {
    snapshot
        .backends
        .iter()
        .flat_map(|b| b.servers.iter().map(move |s| (b, s)))
}

struct ServerLabels<'a>(&'a BackendView, &'a ServerView);

impl fmt::Display for ServerLabels<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "backend=\"{}\",server=\"{}\"",
            LabelValue(&self.0.name),
            LabelValue(&self.1.name)
        )
    }
}

struct PeerLabel<'a>(&'a PeerView);

impl fmt::Display for PeerLabel<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "peer=\"{}\"", LabelValue(&self.0.name))
    }
}

/// A label value escaped for the text format: backslash, double quote and line feed.
pub(super) struct LabelValue<'a>(pub(super) &'a str);

impl fmt::Display for LabelValue<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for c in self.0.chars() {
            match c {
                '\\' => f.write_str("\\\\")?,
                '"' => f.write_str("\\\"")?,
                '\n' => f.write_str("\\n")?,
                c => f.write_char(c)?,
            }
        }
        Ok(())
    }
}
