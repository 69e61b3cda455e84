//! Expiry of flow map entries (`docs/SPLICE.md`, "After the hand-off"): a pair goes after FIN
//! in both directions plus a TIME_WAIT-like grace, a few seconds after an RST, at once after a
//! SYN reused its 4-tuple, after a long idle time; an OBSERVE entry no live connection of this
//! process owns, idle for a while, goes too, and so does an entry in the retired HOLD state
//! (only an earlier build wrote it) once it is about a second old. Entries a previous process
//! left are adopted: they are collected by the same rules.

use std::{
    collections::{HashMap, HashSet},
    time::Duration,
};

use lb_common::{
    SpliceEntry, SpliceKey, SPLICE_SEEN_FIN, SPLICE_SEEN_RST, SPLICE_SEEN_SYN, SPLICE_STATE_ARMED,
    SPLICE_STATE_CLOSED, SPLICE_STATE_OBSERVE, SPLICE_STATE_RETIRED_HOLD, SPLICE_STATE_SPLICE,
};

/// The collector's rules.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rules {
    /// After FIN both ways (retransmitted FINs and last ACKs must still be translated).
    pub fin_grace: Duration,
    /// After an RST.
    pub rst_grace: Duration,
    /// An entry in the retired HOLD state (an earlier build's hand-off, which lasted about a
    /// millisecond) older than this is a dead hand-off.
    pub stale_hold: Duration,
    /// An OBSERVE entry no live connection owns (a previous process's).
    pub orphan_observe: Duration,
    /// A spliced flow that carried nothing for this long.
    pub idle: Duration,
    /// How long the source port of a flow that ended (FIN both ways or RST, with timestamps)
    /// rests before a new connection may use it (see `fastpath::ports`).
    pub port_reuse: Duration,
}

impl Default for Rules {
    fn default() -> Self {
        Rules {
            fin_grace: Duration::from_secs(60),
            rst_grace: Duration::from_secs(5),
            stale_hold: Duration::from_secs(1),
            orphan_observe: Duration::from_secs(120),
            idle: Duration::from_secs(2 * 3600),
            port_reuse: Duration::from_secs(1),
        }
    }
}

/// Why an entry was removed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Reason {
    Fin,
    Rst,
    SynReuse,
    Idle,
    StaleHold,
    OrphanObserve,
    Closed,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Fin => "fin",
            Reason::Rst => "rst",
            Reason::SynReuse => "syn_reuse",
            Reason::Idle => "idle",
            Reason::StaleHold => "stale_hold",
            Reason::OrphanObserve => "orphan_observe",
            Reason::Closed => "closed",
        }
    }
}

/// What the collector remembers between sweeps: when it first saw each entry with its current
/// packet count, so an entry the program never touched (or never touches again) still ages.
#[derive(Default)]
pub struct Memory {
    seen: HashMap<SpliceKey, (u64, u64)>,
}

/// The key of the other direction of a spliced flow: the reverse of this direction's
/// translated 4-tuple.
pub fn partner(entry: &SpliceEntry) -> SpliceKey {
    SpliceKey {
        saddr: entry.new_daddr,
        daddr: entry.new_saddr,
        sport: entry.new_dport,
        dport: entry.new_sport,
    }
}

/// An entry of a spliced flow (ARMED: the client's direction of a hand-off that its next packet
/// completes).
fn is_translated(entry: &SpliceEntry) -> bool {
    matches!(
        entry.state,
        SPLICE_STATE_SPLICE | SPLICE_STATE_CLOSED | SPLICE_STATE_ARMED
    )
}

/// The keys to remove at `now_ns` (CLOCK_MONOTONIC, the program's `bpf_ktime_get_ns`), with
/// why. `owned`: OBSERVE entries of this process's live connections. `crowded`: the map is
/// filling up; flows that ended keep their entries only for the port's reuse delay instead of
/// the whole FIN grace (a late retransmitted FIN then meets the stack, which resets the peer
/// that sent it: a peer that had closed anyway), so that new flows always find room.
pub fn sweep(
    entries: &[(SpliceKey, SpliceEntry)],
    owned: &HashSet<SpliceKey>,
    memory: &mut Memory,
    rules: &Rules,
    now_ns: u64,
    crowded: bool,
) -> Vec<(SpliceKey, Reason)> {
    let fin_grace = if crowded {
        rules.fin_grace.min(rules.port_reuse)
    } else {
        rules.fin_grace
    };
    let by_key: HashMap<SpliceKey, &SpliceEntry> = entries.iter().map(|(k, e)| (*k, e)).collect();
    // Last activity: the program's time, or when the collector first saw the current count.
    let mut active = HashMap::new();
    for (key, entry) in entries {
        let first = memory
            .seen
            .entry(*key)
            .and_modify(|(packets, at)| {
                if *packets != entry.packets {
                    *packets = entry.packets;
                    *at = now_ns;
                }
            })
            .or_insert((entry.packets, now_ns))
            .1;
        active.insert(*key, entry.last_seen_ns.max(first));
    }
    memory.seen.retain(|key, _| by_key.contains_key(key));
    let age = |key: &SpliceKey| Duration::from_nanos(now_ns.saturating_sub(active[key]));
    let mut removed: Vec<(SpliceKey, Reason)> = Vec::new();
    let mut done = HashSet::new();
    for (key, entry) in entries {
        if done.contains(key) {
            continue;
        }
        let reason = match entry.state {
            SPLICE_STATE_SPLICE | SPLICE_STATE_CLOSED | SPLICE_STATE_ARMED => {
                let other_key = partner(entry);
                // The partner only if it is this flow's other direction: a reused port's new
                // connection may have an OBSERVE entry under that key by now.
                let other = by_key
                    .get(&other_key)
                    .filter(|o| is_translated(o) && partner(o) == *key);
                let seen = entry.seen | other.map_or(0, |o| o.seen);
                let fin_both = entry.seen & SPLICE_SEEN_FIN != 0
                    && other.is_some_and(|o| o.seen & SPLICE_SEEN_FIN != 0);
                let idle = age(key).min(other.map_or(Duration::MAX, |_| age(&other_key)));
                let reason = if seen & SPLICE_SEEN_SYN != 0 {
                    Some(Reason::SynReuse)
                } else if seen & SPLICE_SEEN_RST != 0 && idle >= rules.rst_grace {
                    Some(Reason::Rst)
                } else if fin_both && idle >= fin_grace {
                    Some(Reason::Fin)
                } else if idle >= rules.idle {
                    Some(Reason::Idle)
                } else if entry.state == SPLICE_STATE_CLOSED && idle >= rules.rst_grace {
                    Some(Reason::Closed)
                } else {
                    None
                };
                if let (Some(reason), Some(_)) = (reason, other) {
                    done.insert(other_key);
                    removed.push((other_key, reason));
                }
                reason
            }
            SPLICE_STATE_RETIRED_HOLD if !owned.contains(key) && age(key) >= rules.stale_hold => {
                Some(Reason::StaleHold)
            }
            SPLICE_STATE_OBSERVE if !owned.contains(key) && age(key) >= rules.orphan_observe => {
                Some(Reason::OrphanObserve)
            }
            SPLICE_STATE_RETIRED_HOLD | SPLICE_STATE_OBSERVE => None,
            // An unknown state: left alone (a newer program's?), but idle ones go.
            _ if age(key) >= rules.idle => Some(Reason::Idle),
            _ => None,
        };
        if let Some(reason) = reason {
            done.insert(*key);
            removed.push((*key, reason));
        }
    }
    removed
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = 1_000_000_000;

    fn pair(seen_a: u32, seen_b: u32, last_ns: u64) -> Vec<(SpliceKey, SpliceEntry)> {
        let a_key = SpliceKey {
            saddr: 1,
            daddr: 2,
            sport: 10,
            dport: 20,
        };
        let b_key = SpliceKey {
            saddr: 4,
            daddr: 3,
            sport: 40,
            dport: 30,
        };
        let a = SpliceEntry {
            state: SPLICE_STATE_SPLICE,
            new_saddr: 3,
            new_daddr: 4,
            new_sport: 30,
            new_dport: 40,
            seen: seen_a,
            packets: 5,
            last_seen_ns: last_ns,
            ..SpliceEntry::default()
        };
        let b = SpliceEntry {
            state: SPLICE_STATE_SPLICE,
            new_saddr: 2,
            new_daddr: 1,
            new_sport: 20,
            new_dport: 10,
            seen: seen_b,
            packets: 7,
            last_seen_ns: last_ns,
            ..SpliceEntry::default()
        };
        assert_eq!(partner(&a), b_key);
        assert_eq!(partner(&b), a_key);
        vec![(a_key, a), (b_key, b)]
    }

    fn reasons_when(entries: &[(SpliceKey, SpliceEntry)], now: u64, crowded: bool) -> Vec<Reason> {
        let mut memory = Memory::default();
        let (rules, none) = (Rules::default(), HashSet::new());
        // The collector first saw the entries when the program last did.
        sweep(entries, &none, &mut memory, &rules, 0, crowded);
        sweep(entries, &none, &mut memory, &rules, now, crowded)
            .into_iter()
            .map(|(_, r)| r)
            .collect()
    }

    fn reasons(entries: &[(SpliceKey, SpliceEntry)], now: u64) -> Vec<Reason> {
        reasons_when(entries, now, false)
    }

    #[test]
    fn fin_both_ways_waits_for_the_grace() {
        let fin = pair(SPLICE_SEEN_FIN, SPLICE_SEEN_FIN, 100 * S);
        assert!(reasons(&fin, 159 * S).is_empty());
        assert_eq!(reasons(&fin, 160 * S), [Reason::Fin, Reason::Fin]);
        // A crowded map keeps them only as long as their port rests.
        assert_eq!(
            reasons_when(&fin, 101 * S, true),
            [Reason::Fin, Reason::Fin]
        );
        // FIN one way only: a half-closed flow lives on.
        let half = pair(SPLICE_SEEN_FIN, 0, 100 * S);
        assert!(reasons(&half, 1000 * S).is_empty());
    }

    #[test]
    fn rst_syn_and_idle() {
        let rst = pair(0, SPLICE_SEEN_RST, 100 * S);
        assert!(reasons(&rst, 104 * S).is_empty());
        assert_eq!(reasons(&rst, 105 * S), [Reason::Rst, Reason::Rst]);
        let syn = pair(SPLICE_SEEN_SYN, 0, 100 * S);
        assert_eq!(reasons(&syn, 100 * S), [Reason::SynReuse, Reason::SynReuse]);
        let live = pair(0, 0, 100 * S);
        assert!(reasons(&live, 3600 * S).is_empty());
        assert_eq!(reasons(&live, 7300 * S), [Reason::Idle, Reason::Idle]);
    }

    #[test]
    fn an_observed_entry_under_the_partners_key_is_not_the_partner() {
        // The server side's port was reused: its key now holds a new connection's OBSERVE.
        let mut entries = pair(SPLICE_SEEN_FIN, SPLICE_SEEN_FIN, 100 * S);
        entries[1].1 = SpliceEntry {
            state: SPLICE_STATE_OBSERVE,
            ..SpliceEntry::default()
        };
        let owned: HashSet<_> = [entries[1].0].into();
        let mut memory = Memory::default();
        let rules = Rules::default();
        sweep(&entries, &owned, &mut memory, &rules, 0, false);
        let removed = sweep(&entries, &owned, &mut memory, &rules, 7300 * S, false);
        assert_eq!(removed, [(entries[0].0, Reason::Idle)]);
    }

    #[test]
    fn hold_and_observe_age_unless_owned() {
        let key = SpliceKey {
            saddr: 9,
            daddr: 8,
            sport: 7,
            dport: 6,
        };
        let hold = vec![(
            key,
            SpliceEntry {
                state: SPLICE_STATE_RETIRED_HOLD,
                ..SpliceEntry::default()
            },
        )];
        let mut memory = Memory::default();
        let rules = Rules::default();
        let none = HashSet::new();
        assert!(sweep(&hold, &none, &mut memory, &rules, 10 * S, false).is_empty());
        let owned: HashSet<_> = [key].into();
        assert!(sweep(&hold, &owned, &mut memory, &rules, 12 * S, false).is_empty());
        assert_eq!(
            sweep(&hold, &none, &mut memory, &rules, 12 * S, false),
            [(key, Reason::StaleHold)]
        );
        let observe = vec![(key, SpliceEntry::default())];
        let mut memory = Memory::default();
        assert!(sweep(&observe, &none, &mut memory, &rules, 10 * S, false).is_empty());
        assert!(sweep(&observe, &none, &mut memory, &rules, 100 * S, false).is_empty());
        assert_eq!(
            sweep(&observe, &none, &mut memory, &rules, 130 * S, false),
            [(key, Reason::OrphanObserve)]
        );
    }
}
