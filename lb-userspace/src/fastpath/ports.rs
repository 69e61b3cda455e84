//! The source ports of the connections to servers that may be spliced, allocated by the daemon
//! itself from a range the kernel never hands out (`[fastpath] source_ports`, 61000-64999 by
//! default, reserved with `ip_local_reserved_ports`).
//!
//! Why the daemon allocates them: once a connection is spliced, its proxy socket is gone and the
//! kernel considers the port free, while the program still translates the flow on that 4-tuple.
//! A new connection from that port to the same server would collide with the live flow.
//!
//! How long a port stays taken:
//! - a connection the proxy relays holds its port until it closes it (with an RST: no
//!   TIME_WAIT is left on the load balancer, so the port is free at once);
//! - a spliced flow holds its port while it is open, then for [`Ports::reuse_delay`] after it
//!   ended (FIN both ways, or an RST): the program-side TIME-WAIT. With TCP timestamps on both
//!   legs a second is as safe as Linux's own `tcp_tw_reuse` (PAWS rejects the old flow's stray
//!   segments; the server's TIME_WAIT accepts a SYN with a newer timestamp). A flow without
//!   timestamps keeps its port until the collector removes its entries (`splice_fin_grace`).
//!
//! Free ports are reused least recently freed first, so a port rests as long as the range allows.
//! The bound: with `N` ports per server and source address, `N / (lifetime + reuse_delay)` new
//! spliced connections per second to one server, sustained.

use std::{
    collections::{HashMap, HashSet, VecDeque},
    net::{Ipv4Addr, SocketAddrV4},
    ops::RangeInclusive,
    time::{Duration, Instant},
};

/// A source port toward one server from one source address.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Port {
    pub source: Ipv4Addr,
    pub server: SocketAddrV4,
    pub port: u16,
}

impl Port {
    /// The proxy socket's address.
    pub fn local(&self) -> SocketAddrV4 {
        SocketAddrV4::new(self.source, self.port)
    }
}

/// A port taken for one connection. The id tells this taking from a later one of the same
/// port, so that a late release never frees a port someone else holds by then.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Lease {
    pub port: Port,
    id: u64,
}

/// Who holds a port.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Holder {
    /// A connection the proxy relays (or is connecting).
    Relayed,
    /// A spliced flow.
    Spliced,
}

/// The ports toward one server from one source address.
struct Destination {
    /// Free ports, least recently freed first, each with when it may be used again.
    free: VecDeque<(u16, Instant)>,
    held: HashMap<u16, (Holder, u64)>,
}

impl Destination {
    fn new(range: &RangeInclusive<u16>, now: Instant) -> Self {
        Self {
            free: range.clone().map(|port| (port, now)).collect(),
            held: HashMap::new(),
        }
    }
}

/// Every destination's ports. In memory only: a new process rebuilds it from the flow map
/// ([`Ports::adopt`]).
pub struct Ports {
    range: RangeInclusive<u16>,
    reuse_delay: Duration,
    destinations: HashMap<(Ipv4Addr, SocketAddrV4), Destination>,
    next_id: u64,
}

impl Ports {
    pub fn new(range: RangeInclusive<u16>, reuse_delay: Duration) -> Self {
        Self {
            range,
            reuse_delay,
            destinations: HashMap::new(),
            next_id: 0,
        }
    }

    fn destination(
        &mut self,
        source: Ipv4Addr,
        server: SocketAddrV4,
        now: Instant,
    ) -> &mut Destination {
        let range = &self.range;
        self.destinations
            .entry((source, server))
            .or_insert_with(|| Destination::new(range, now))
    }

    fn next_id(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }

    /// The free port that rested longest among those that have rested enough.
    ///
    /// The queue is in the order ports were freed, and nearly always in the order they become
    /// usable too: the first usable port is at the front. A port that must rest longer (one
    /// that could not be bound rests a minute) breaks that order, so the search goes past it
    /// rather than stopping at it, which would leave every port behind it unused meanwhile.
    pub fn take(&mut self, source: Ipv4Addr, server: SocketAddrV4, now: Instant) -> Option<Lease> {
        let id = self.next_id();
        let destination = self.destination(source, server, now);
        let at = destination
            .free
            .iter()
            .position(|&(_, usable)| usable <= now)?;
        let (port, _) = destination.free.remove(at)?;
        destination.held.insert(port, (Holder::Relayed, id));
        Some(Lease {
            port: Port {
                source,
                server,
                port,
            },
            id,
        })
    }

    /// The lease's connection is closed (or never opened): its port may be used again after
    /// `rest`. Nothing happens if the lease was spliced meanwhile (the flow holds the port) or
    /// is no longer current.
    pub fn release(&mut self, lease: Lease, rest: Duration, now: Instant) {
        let Port {
            source,
            server,
            port,
        } = lease.port;
        let destination = self.destination(source, server, now);
        if destination.held.get(&port) == Some(&(Holder::Relayed, lease.id)) {
            destination.held.remove(&port);
            destination.free.push_back((port, now + rest));
        }
    }

    /// The lease's connection was spliced: the port is held until [`Ports::sync`] no longer
    /// finds its flow open.
    pub fn spliced(&mut self, lease: Lease, now: Instant) {
        let Port {
            source,
            server,
            port,
        } = lease.port;
        let destination = self.destination(source, server, now);
        if let Some(held) = destination.held.get_mut(&port) {
            if held.1 == lease.id {
                held.0 = Holder::Spliced;
            }
        }
    }

    /// Marks the ports of flows found in the map at start as held by spliced flows.
    pub fn adopt(&mut self, open: &HashSet<Port>, now: Instant) {
        for port in open {
            if !self.range.contains(&port.port) {
                continue;
            }
            let id = self.next_id();
            let destination = self.destination(port.source, port.server, now);
            destination.free.retain(|(free, _)| *free != port.port);
            destination.held.insert(port.port, (Holder::Spliced, id));
        }
    }

    /// Frees the ports of spliced flows that are no longer open (`open`: the ports of every
    /// flow the collector found open, or closed without timestamps); each rests the reuse
    /// delay. Returns how many were freed.
    pub fn sync(&mut self, open: &HashSet<Port>, now: Instant) -> usize {
        let reuse_at = now + self.reuse_delay;
        let mut freed = 0;
        for (&(source, server), destination) in &mut self.destinations {
            let ended: Vec<u16> = destination
                .held
                .iter()
                .filter(|(port, (holder, _))| {
                    *holder == Holder::Spliced
                        && !open.contains(&Port {
                            source,
                            server,
                            port: **port,
                        })
                })
                .map(|(port, _)| *port)
                .collect();
            for port in ended {
                destination.held.remove(&port);
                destination.free.push_back((port, reuse_at));
                freed += 1;
            }
        }
        freed
    }

    /// Ports not free at `now`, for the monitor: held by relayed connections, by open spliced
    /// flows, and resting after their flow ended.
    pub fn held(&self, now: Instant) -> Held {
        let mut held = Held::default();
        for destination in self.destinations.values() {
            for (holder, _) in destination.held.values() {
                match holder {
                    Holder::Relayed => held.relayed += 1,
                    Holder::Spliced => held.spliced += 1,
                }
            }
            held.resting += destination
                .free
                .iter()
                .filter(|(_, usable)| *usable > now)
                .count();
        }
        held
    }
}

/// What [`Ports::held`] counts.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Held {
    pub relayed: usize,
    pub spliced: usize,
    pub resting: usize,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server() -> SocketAddrV4 {
        SocketAddrV4::new(Ipv4Addr::new(10, 0, 0, 2), 80)
    }

    const SOURCE: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);

    #[test]
    fn ports_are_reused_least_recently_freed_first() {
        let now = Instant::now();
        let mut ports = Ports::new(100..=102, Duration::from_secs(1));
        let a = ports.take(SOURCE, server(), now).unwrap();
        let b = ports.take(SOURCE, server(), now).unwrap();
        assert_eq!((a.port.port, b.port.port), (100, 101));
        ports.release(b, Duration::ZERO, now);
        ports.release(a, Duration::ZERO, now);
        let order: Vec<u16> = (0..3)
            .map(|_| ports.take(SOURCE, server(), now).unwrap().port.port)
            .collect();
        assert_eq!(order, [102, 101, 100]);
        assert_eq!(ports.take(SOURCE, server(), now), None);
        // Another server has its own ports.
        let other = SocketAddrV4::new(Ipv4Addr::new(10, 0, 0, 3), 80);
        assert_eq!(ports.take(SOURCE, other, now).unwrap().port.port, 100);
    }

    #[test]
    fn a_spliced_port_rests_after_its_flow_ends() {
        let now = Instant::now();
        let mut ports = Ports::new(100..=100, Duration::from_secs(1));
        let lease = ports.take(SOURCE, server(), now).unwrap();
        ports.spliced(lease, now);
        // The relay lets go of its socket: the flow holds the port.
        ports.release(lease, Duration::ZERO, now);
        let open: HashSet<Port> = [lease.port].into();
        assert_eq!(ports.sync(&open, now), 0);
        let held = ports.held(now);
        assert_eq!((held.relayed, held.spliced, held.resting), (0, 1, 0));
        // The flow ended: free after the delay, not before.
        assert_eq!(ports.sync(&HashSet::new(), now), 1);
        assert_eq!(ports.held(now).resting, 1);
        assert_eq!(
            ports.take(SOURCE, server(), now + Duration::from_millis(999)),
            None
        );
        let again = ports
            .take(SOURCE, server(), now + Duration::from_secs(1))
            .unwrap();
        assert_eq!(again.port.port, 100);
        // A relayed port is never freed by a sync, nor by an old lease of the same port.
        assert_eq!(ports.sync(&HashSet::new(), now), 0);
        ports.release(lease, Duration::ZERO, now);
        assert_eq!(ports.held(now).relayed, 1);
        ports.release(again, Duration::ZERO, now);
        assert_eq!(ports.held(now), Held::default());
    }

    #[test]
    fn a_port_resting_long_does_not_hold_up_the_ports_behind_it() {
        let now = Instant::now();
        let mut ports = Ports::new(100..=101, Duration::from_secs(1));
        let a = ports.take(SOURCE, server(), now).unwrap();
        let b = ports.take(SOURCE, server(), now).unwrap();
        // 100 could not be bound: it rests a minute; 101 closed normally after it.
        ports.release(a, Duration::from_secs(60), now);
        ports.release(b, Duration::ZERO, now);
        let taken = ports.take(SOURCE, server(), now).map(|l| l.port.port);
        assert_eq!(taken, Some(101));
        assert_eq!(ports.take(SOURCE, server(), now), None);
        let later = now + Duration::from_secs(60);
        assert_eq!(
            ports.take(SOURCE, server(), later).map(|l| l.port.port),
            Some(100)
        );
    }

    #[test]
    fn adopted_flows_hold_their_ports() {
        let now = Instant::now();
        let mut ports = Ports::new(100..=101, Duration::ZERO);
        let port = Port {
            source: SOURCE,
            server: server(),
            port: 100,
        };
        ports.adopt(&[port].into(), now);
        let taken = ports.take(SOURCE, server(), now).map(|l| l.port.port);
        assert_eq!(taken, Some(101));
        assert_eq!(ports.take(SOURCE, server(), now), None);
        ports.sync(&HashSet::new(), now);
        let taken = ports.take(SOURCE, server(), now).map(|l| l.port.port);
        assert_eq!(taken, Some(100));
    }
}
