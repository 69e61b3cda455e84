//! What the flow map holds, for `stickylb fastpath`, the monitor page and `/metrics`. Spliced
//! flows are invisible to `ss` and conntrack: their counters come from the map.

use std::net::{Ipv4Addr, SocketAddrV4};

use lb_common::{
    SpliceEntry, SpliceKey, SPLICE_SEEN_FIN, SPLICE_SEEN_RST, SPLICE_SEEN_SYN, SPLICE_STATE_ARMED,
    SPLICE_STATE_CLOSED, SPLICE_STATE_OBSERVE, SPLICE_STATE_SPLICE,
};
use serde::Serialize;

use super::collector::partner;

/// Totals over the map's entries.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Summary {
    /// Spliced connections (pairs of SPLICE entries, or a SPLICE and an ARMED one: a hand-off
    /// the client's next packet completes).
    pub spliced: u64,
    pub observe_entries: u64,
    pub armed_entries: u64,
    pub splice_entries: u64,
    pub closed_entries: u64,
    /// Packets and bytes the program translated for the entries in the map now.
    pub packets: u64,
    pub bytes: u64,
}

pub fn summary(entries: &[(SpliceKey, SpliceEntry)]) -> Summary {
    let mut s = Summary::default();
    for (_, e) in entries {
        match e.state {
            SPLICE_STATE_OBSERVE => s.observe_entries += 1,
            SPLICE_STATE_ARMED => s.armed_entries += 1,
            SPLICE_STATE_SPLICE => s.splice_entries += 1,
            SPLICE_STATE_CLOSED => s.closed_entries += 1,
            _ => {}
        }
        if matches!(
            e.state,
            SPLICE_STATE_SPLICE | SPLICE_STATE_CLOSED | SPLICE_STATE_ARMED
        ) {
            s.packets += e.packets;
            s.bytes += e.bytes;
        }
    }
    s.spliced = (s.splice_entries + s.armed_entries) / 2;
    s
}

/// One spliced connection: both directions.
#[derive(Clone, Debug, Serialize)]
pub struct Flow {
    pub client: String,
    pub frontend: String,
    pub proxy_source: String,
    pub server: String,
    pub state: &'static str,
    pub packets_to_server: u64,
    pub bytes_to_server: u64,
    pub packets_to_client: u64,
    pub bytes_to_client: u64,
    /// `fin`/`rst`/`syn` seen from the client, then from the server.
    pub seen: String,
    pub last_seen_ns: u64,
}

pub fn state_name(state: u32) -> &'static str {
    match state {
        SPLICE_STATE_OBSERVE => "observe",
        SPLICE_STATE_ARMED => "armed",
        SPLICE_STATE_SPLICE => "splice",
        SPLICE_STATE_CLOSED => "closed",
        _ => "unknown",
    }
}

fn addr(ip: u32, port: u16) -> SocketAddrV4 {
    SocketAddrV4::new(Ipv4Addr::from(ip.to_ne_bytes()), u16::from_be(port))
}

fn seen(bits: u32) -> String {
    let names = [
        (SPLICE_SEEN_FIN, "fin"),
        (SPLICE_SEEN_RST, "rst"),
        (SPLICE_SEEN_SYN, "syn"),
    ];
    let list: Vec<&str> = names
        .iter()
        .filter(|(bit, _)| bits & bit != 0)
        .map(|(_, n)| *n)
        .collect();
    if list.is_empty() {
        "-".to_owned()
    } else {
        list.join("+")
    }
}

/// The spliced connections. The client's direction is the entry whose translated source port
/// is one of the daemon's (`source_ports`).
pub fn flows(
    entries: &[(SpliceKey, SpliceEntry)],
    source_ports: &std::ops::RangeInclusive<u16>,
) -> Vec<Flow> {
    let by_key: std::collections::HashMap<SpliceKey, &SpliceEntry> =
        entries.iter().map(|(k, e)| (*k, e)).collect();
    let mut flows = Vec::new();
    for (key, to_server) in entries {
        if !matches!(
            to_server.state,
            SPLICE_STATE_SPLICE | SPLICE_STATE_CLOSED | SPLICE_STATE_ARMED
        ) {
            continue;
        }
        if !source_ports.contains(&u16::from_be(to_server.new_sport)) {
            continue;
        }
        let to_client = by_key.get(&partner(to_server)).copied();
        let empty = SpliceEntry::default();
        let back = to_client.unwrap_or(&empty);
        flows.push(Flow {
            client: addr(key.saddr, key.sport).to_string(),
            frontend: addr(key.daddr, key.dport).to_string(),
            proxy_source: addr(to_server.new_saddr, to_server.new_sport).to_string(),
            server: addr(to_server.new_daddr, to_server.new_dport).to_string(),
            state: state_name(to_server.state),
            packets_to_server: to_server.packets,
            bytes_to_server: to_server.bytes,
            packets_to_client: back.packets,
            bytes_to_client: back.bytes,
            seen: format!("{}/{}", seen(to_server.seen), seen(back.seen)),
            last_seen_ns: to_server.last_seen_ns.max(back.last_seen_ns),
        });
    }
    flows.sort_by(|a, b| a.client.cmp(&b.client));
    flows
}
