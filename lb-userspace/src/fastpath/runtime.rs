//! The fast path inside the daemon: the loaded program, the interfaces it is attached to, the
//! flow map, the servers' source ports, the collector and the counters the monitor shows. The
//! hand-off of one connection ([`Runtime::prepare`], [`Runtime::try_splice`]) is written in the
//! `handoff` module, which builds on this one.
//!
//! No lock here is ever held across a syscall that waits, a sleep or a map walk: the flow map
//! needs none (see [`Flows`]), and the in-memory state (ports, owned keys, attached interfaces)
//! is locked for a few instructions at a time. Worker event loops call into this on their
//! request paths.

use std::{
    collections::{HashMap, HashSet},
    io,
    net::{Ipv4Addr, SocketAddrV4},
    ops::RangeInclusive,
    path::{Path, PathBuf},
    sync::{
        atomic::{AtomicU64, Ordering::Relaxed},
        Arc, Mutex, MutexGuard, PoisonError,
    },
    time::{Duration, Instant},
};

use lb_common::{
    SpliceEntry, SpliceKey, SPLICE_FLOWS_DEFAULT_ENTRIES, SPLICE_F_TIMESTAMPS, SPLICE_SEEN_FIN,
    SPLICE_SEEN_RST, SPLICE_STATE_CLOSED, SPLICE_STATE_SPLICE,
};

use super::{
    collector::{self, partner, Memory, Reason, Rules},
    flows::Flows,
    interfaces::{self, Interface},
    policy::Policy,
    ports::{Held, Port, Ports},
    program::{FastPath, FastPathError, XdpAttachment},
};

const RESERVED_PORTS: &str = "/proc/sys/net/ipv4/ip_local_reserved_ports";

/// Counters of the hand-offs, for the monitor and `/metrics`.
#[derive(Default)]
pub struct Stats {
    /// Connections the policy chose: given a leg that can be spliced, and observed.
    pub candidates: AtomicU64,
    /// Hand-offs attempted.
    pub attempts: AtomicU64,
    /// Connections handed to the kernel.
    pub spliced: AtomicU64,
    /// Attempts that found a leg not quiet (a request already there, an answer not yet
    /// acknowledged by the server): nothing was done.
    pub kept_unread: AtomicU64,
    /// Armed hand-offs given up because the client did not acknowledge everything in time.
    pub kept_unacked: AtomicU64,
    /// Armed hand-offs given up because something reached a proxy socket after its snapshot
    /// (a request sent in that very instant, a close).
    pub kept_moved: AtomicU64,
    /// Attempts before the program had seen a timestamp of both peers.
    pub kept_no_tsval: AtomicU64,
    /// Connections whose legs cannot be translated (e.g. timestamps on one leg only): they stay
    /// in userspace for good.
    pub refused_options: AtomicU64,
    /// Candidates left in userspace because every source port toward their server was taken.
    pub no_port: AtomicU64,
    /// Candidates left in userspace because an interface is not one the program may use.
    pub other_interface: AtomicU64,
    /// Exchanges the relay could not frame (close-delimited): the rest is tunnelled.
    pub unframed: AtomicU64,
    /// Hand-offs or preparations that failed with an error (the connection was kept or closed).
    pub errors: AtomicU64,
    /// Entries removed by the collector.
    pub collected: AtomicU64,
}

impl Stats {
    /// Every hand-off outcome counter with its label for `/metrics`; `spliced` first.
    pub fn outcomes(&self) -> Vec<(&'static str, u64)> {
        [
            ("spliced", &self.spliced),
            ("kept_unread", &self.kept_unread),
            ("kept_unacked", &self.kept_unacked),
            ("kept_moved", &self.kept_moved),
            ("kept_no_tsval", &self.kept_no_tsval),
            ("refused_options", &self.refused_options),
            ("no_port", &self.no_port),
            ("other_interface", &self.other_interface),
            ("unframed", &self.unframed),
            ("error", &self.errors),
        ]
        .into_iter()
        .map(|(label, counter)| (label, counter.load(Relaxed)))
        .collect()
    }
}

pub struct Runtime {
    root: PathBuf,
    program: Mutex<FastPath>,
    pub(super) flows: Flows,
    attached: Mutex<HashMap<String, Attached>>,
    /// Keys of this process's hand-offs in progress (the collector leaves them alone).
    owned: Mutex<HashSet<SpliceKey>>,
    pub(super) ports: Mutex<Ports>,
    sources: Mutex<HashMap<SocketAddrV4, Ipv4Addr>>,
    memory: Mutex<Memory>,
    rules: Rules,
    pub(super) policy: Policy,
    source_ports: RangeInclusive<u16>,
    /// Interfaces whose XDP hook is the shield's (see [`Options::shielded`]).
    shielded: Mutex<Vec<String>>,
    /// Interfaces an attach failed on, each logged once (see [`Runtime::attach_for_candidate`]).
    unattachable: Mutex<HashSet<String>>,
    pub stats: Stats,
}

/// An interface the programs are attached to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Attached {
    pub name: String,
    pub index: u32,
    /// How the XDP translation came out on it (TC is always attached).
    pub xdp: XdpAttachment,
    /// Whether the XDP program may redirect translated frames to it (its driver transmits
    /// redirected frames; for a veth: its peer has GRO or an XDP program).
    pub xdp_target: bool,
}

/// How a [`Runtime`] behaves (the configuration's `[fastpath]` and splice timeouts).
#[derive(Clone, Debug)]
pub struct Options {
    pub rules: Rules,
    pub policy: Policy,
    /// Source ports of the server connections that may be spliced.
    pub source_ports: RangeInclusive<u16>,
    /// `[fastpath] xdp = "auto"`: translate at XDP too where the interfaces allow it.
    pub xdp: bool,
    /// Interfaces the shield attaches to: XDP there is the shield's, the translation stays in
    /// TC (docs/SPLICE.md, "At XDP").
    pub shielded: Vec<String>,
}

pub(super) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Runtime {
    /// Loads the program (adopting the maps and links pinned under `root`) and reserves the
    /// source ports. Entries a previous process left are adopted: the collector ages them, and
    /// the ports of their open flows stay taken.
    ///
    /// The program is attached to an interface when the first candidate needs it there
    /// (`Runtime::attach_for_candidate`, from the hand-off), not at start: until a connection has
    /// lived long enough to be handed over, the fast path costs its interfaces nothing, so a
    /// load balancer that only ever sees short connections runs as with `fastpath = "off"`
    /// (docs/FASTPATH.md, "Interfaces"). The interfaces a previous process attached (their links
    /// are pinned) are attached again at once: the flows it spliced run on this program.
    /// `interfaces`: the frontends' `fastpath_interfaces`, checked here so that a name the
    /// namespace lacks is an error at start rather than connections never spliced.
    pub fn start(
        root: &Path,
        interfaces: &[String],
        options: Options,
    ) -> Result<Runtime, FastPathError> {
        for name in interfaces {
            interface_index(name)?;
        }
        let Options {
            rules,
            policy,
            source_ports,
            xdp,
            shielded,
        } = options;
        let mut program = FastPath::load(root, xdp)?;
        let flows = program.flows()?;
        let entries = flows.entries().map_err(FastPathError::Read)?;
        let mut ports = Ports::new(source_ports.clone(), rules.port_reuse);
        ports.adopt(&open_ports(&entries, &source_ports), Instant::now());
        let inherited = inherited_links(&program);
        let runtime = Runtime {
            root: root.to_owned(),
            program: Mutex::new(program),
            flows,
            attached: Mutex::new(HashMap::new()),
            owned: Mutex::new(HashSet::new()),
            ports: Mutex::new(ports),
            sources: Mutex::new(HashMap::new()),
            memory: Mutex::new(Memory::default()),
            rules,
            policy,
            source_ports: source_ports.clone(),
            shielded: Mutex::new(shielded),
            unattachable: Mutex::new(HashSet::new()),
            stats: Stats::default(),
        };
        for interface in &inherited {
            runtime.ensure_attached(interface)?;
        }
        reserve_ports(&source_ports);
        tracing::info!(
            root = %root.display(),
            adopted = entries.len(),
            reattached = inherited.len(),
            "fast path loaded; attaching to an interface when the first connection there becomes a candidate"
        );
        Ok(runtime)
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn policy(&self) -> Policy {
        self.policy
    }

    /// Attaches the programs to `interface` unless this process already did: TC, then (with
    /// `[fastpath] xdp = "auto"`) XDP where the driver allows, and the interface becomes a
    /// redirect target of the XDP program where its driver transmits redirected frames.
    pub(super) fn ensure_attached(&self, interface: &Interface) -> Result<(), FastPathError> {
        if lock(&self.attached).contains_key(&interface.name) {
            return Ok(());
        }
        // Attaching takes a few syscalls, once per interface and process; the `attached` lock
        // is not held meanwhile (a second caller attaches again: an atomic replacement).
        let (how, xdp, xdp_target) = {
            let mut program = lock(&self.program);
            let how = program.attach(&interface.name)?;
            let xdp = if lock(&self.shielded).contains(&interface.name) {
                program.xdp_left_to_shield()
            } else {
                program.attach_xdp(&interface.name)?
            };
            let xdp_target = xdp != XdpAttachment::Off
                && match interfaces::transmits_xdp_redirects(interface.index) {
                    Ok(transmits) => transmits,
                    Err(error) => {
                        tracing::warn!(interface = %interface.name, %error, "cannot read the interface's XDP features; not redirecting to it at XDP");
                        false
                    }
                };
            if xdp_target {
                program.allow_xdp_redirect(interface.index)?;
            }
            (how, xdp, xdp_target)
        };
        tracing::info!(
            interface = %interface.name,
            ?how,
            translation = xdp.translation(),
            xdp = xdp.as_str(),
            xdp_redirect_target = xdp_target,
            "fast path attached"
        );
        lock(&self.attached).insert(
            interface.name.clone(),
            Attached {
                name: interface.name.clone(),
                index: interface.index,
                xdp,
                xdp_target,
            },
        );
        Ok(())
    }

    /// [`Runtime::ensure_attached`] for a candidate's interface. The program is attached here
    /// rather than at start, so a failure (another program in the way, a kernel without TCX)
    /// shows here: it is logged as a warning the first time for each interface, and the
    /// candidate stays in userspace (counted `error`); later candidates try again.
    pub(super) fn attach_for_candidate(&self, interface: &Interface) -> Result<(), FastPathError> {
        let attached = self.ensure_attached(interface);
        if let Err(error) = &attached {
            if lock(&self.unattachable).insert(interface.name.clone()) {
                tracing::warn!(
                    interface = %interface.name,
                    error = %crate::error_chain(error),
                    "fast path: cannot attach; connections there stay in userspace"
                );
            }
        }
        attached
    }

    /// The shield was to hold XDP on `names` and did not start after all (a shield on by
    /// default that could not load or attach): the translation takes XDP there as it would have
    /// without a shield, rather than staying at TC for the life of the process.
    pub fn take_back_xdp(&self, names: &[String]) -> Result<(), FastPathError> {
        lock(&self.shielded).retain(|name| !names.contains(name));
        let left: Vec<Interface> = lock(&self.attached)
            .values()
            .filter(|a| names.contains(&a.name) && a.xdp == XdpAttachment::Shield)
            .map(|a| Interface {
                name: a.name.clone(),
                index: a.index,
            })
            .collect();
        for interface in left {
            lock(&self.attached).remove(&interface.name);
            self.ensure_attached(&interface)?;
        }
        Ok(())
    }

    /// The interfaces the programs are attached to, by name.
    pub fn attached(&self) -> Vec<Attached> {
        let mut list: Vec<_> = lock(&self.attached).values().cloned().collect();
        list.sort_by(|a, b| a.name.cmp(&b.name));
        list
    }

    /// The local address the kernel uses toward `server` (cached).
    pub(super) fn source_for(&self, server: SocketAddrV4) -> io::Result<Ipv4Addr> {
        if let Some(source) = lock(&self.sources).get(&server) {
            return Ok(*source);
        }
        let source = interfaces::source_for(server)?;
        lock(&self.sources).insert(server, source);
        Ok(source)
    }

    pub(super) fn own(&self, keys: [SpliceKey; 2]) {
        lock(&self.owned).extend(keys);
    }

    pub(super) fn disown(&self, keys: [SpliceKey; 2]) {
        let mut owned = lock(&self.owned);
        for key in keys {
            owned.remove(&key);
        }
    }

    /// One sweep of the collector: walks the map (without any lock), removes what the rules
    /// say, and frees the source ports of flows that ended. Blocking: run it off the workers.
    pub fn collect(&self) -> Vec<(SpliceKey, Reason)> {
        let entries = match self.flows.entries() {
            Ok(entries) => entries,
            Err(error) => {
                tracing::warn!(%error, "fast path: reading the flow map");
                return Vec::new();
            }
        };
        let owned = lock(&self.owned).clone();
        // Half full: the flows that ended make room sooner (see `collector::sweep`).
        let crowded = entries.len() * 2 >= SPLICE_FLOWS_DEFAULT_ENTRIES as usize;
        let removed = collector::sweep(
            &entries,
            &owned,
            &mut lock(&self.memory),
            &self.rules,
            monotonic_ns(),
            crowded,
        );
        for (key, reason) in &removed {
            match self.flows.remove(key) {
                Ok(()) => {
                    self.stats.collected.fetch_add(1, Relaxed);
                    tracing::debug!(?key, reason = reason.as_str(), "fast path: entry collected");
                }
                Err(error) => tracing::warn!(%error, "fast path: collecting"),
            }
        }
        let gone: HashSet<SpliceKey> = removed.iter().map(|(key, _)| *key).collect();
        let remaining: Vec<(SpliceKey, SpliceEntry)> = entries
            .into_iter()
            .filter(|(key, _)| !gone.contains(key))
            .collect();
        let open = open_ports(&remaining, &self.source_ports);
        lock(&self.ports).sync(&open, Instant::now());
        removed
    }

    /// Every entry of the flow map (empty if it cannot be read).
    pub fn entries(&self) -> Vec<(SpliceKey, SpliceEntry)> {
        self.flows.entries().unwrap_or_default()
    }

    /// The source ports of server connections that may be spliced.
    pub fn source_ports(&self) -> RangeInclusive<u16> {
        self.source_ports.clone()
    }

    /// Source ports not free now (see [`Ports::held`]).
    pub fn ports_held(&self) -> Held {
        lock(&self.ports).held(Instant::now())
    }
}

/// The interfaces of this namespace whose link a previous process pinned (an interface that
/// went away meanwhile is not listed).
fn inherited_links(program: &FastPath) -> Vec<Interface> {
    let names = match crate::sys::net::interface_addrs() {
        Ok(addrs) => addrs.into_iter().map(|a| a.name).collect::<HashSet<_>>(),
        Err(error) => {
            tracing::warn!(%error, "fast path: cannot list the interfaces to adopt their links");
            return Vec::new();
        }
    };
    let mut found: Vec<Interface> = names
        .into_iter()
        .filter(|name| program.has_pinned_link(name))
        .filter_map(|name| {
            let index = interface_index(&name).ok()?;
            Some(Interface { name, index })
        })
        .collect();
    found.sort_by(|a, b| a.name.cmp(&b.name));
    found
}

/// The source ports of the spliced flows in `entries` that are still open, or closed without
/// timestamps (no PAWS to protect a reused port: they keep it until collected). A flow is
/// found by its server-side entry: the one that arrives on one of our source ports.
fn open_ports(entries: &[(SpliceKey, SpliceEntry)], range: &RangeInclusive<u16>) -> HashSet<Port> {
    let by_key: HashMap<SpliceKey, &SpliceEntry> = entries.iter().map(|(k, e)| (*k, e)).collect();
    let mut open = HashSet::new();
    for (key, entry) in entries {
        let port = u16::from_be(key.dport);
        if !range.contains(&port)
            || !matches!(entry.state, SPLICE_STATE_SPLICE | SPLICE_STATE_CLOSED)
        {
            continue;
        }
        let other = by_key.get(&partner(entry)).copied();
        let seen = entry.seen | other.map_or(0, |o| o.seen);
        let fin_both = entry.seen & SPLICE_SEEN_FIN != 0
            && other.is_some_and(|o| o.seen & SPLICE_SEEN_FIN != 0);
        let ended = seen & SPLICE_SEEN_RST != 0 || fin_both;
        if ended && entry.flags & SPLICE_F_TIMESTAMPS != 0 {
            continue;
        }
        open.insert(Port {
            source: Ipv4Addr::from(key.daddr.to_ne_bytes()),
            server: SocketAddrV4::new(
                Ipv4Addr::from(key.saddr.to_ne_bytes()),
                u16::from_be(key.sport),
            ),
            port,
        });
    }
    open
}

/// How often the collector sweeps. A flow's source port is free again this long (at most)
/// after the flow ended plus its rest, so the sweep is frequent: a few milliseconds of batch
/// reads of a map that holds a few thousand flows.
const COLLECT_EVERY: Duration = Duration::from_millis(250);

/// Runs the collector every [`COLLECT_EVERY`].
pub async fn collect_forever(runtime: Arc<Runtime>) {
    let mut ticker = tokio::time::interval(COLLECT_EVERY);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        let r = Arc::clone(&runtime);
        match tokio::task::spawn_blocking(move || r.collect()).await {
            Ok(removed) if !removed.is_empty() => {
                let mut reasons: HashMap<&str, usize> = HashMap::new();
                for (_, reason) in &removed {
                    *reasons.entry(reason.as_str()).or_default() += 1;
                }
                // Several times a second under churn: counted in /metrics, logged at debug.
                tracing::debug!(
                    removed = removed.len(),
                    ?reasons,
                    "fast path: collected entries"
                );
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "fast path collector task failed"),
        }
    }
}

/// CLOCK_MONOTONIC in ns: the clock of `bpf_ktime_get_ns`.
pub fn monotonic_ns() -> u64 {
    crate::sys::process::monotonic_ns()
}

fn interface_index(name: &str) -> Result<u32, FastPathError> {
    crate::sys::net::interface_index(name).map_err(|source| FastPathError::NoInterface {
        interface: name.to_owned(),
        source,
    })
}

/// Adds `range` to `ip_local_reserved_ports` (of this network namespace), keeping what is
/// there: the kernel then never picks one of them for a connection of its own. Best effort
/// (the default range is outside the default ephemeral range anyway).
fn reserve_ports(range: &RangeInclusive<u16>) {
    let range = format!("{}-{}", range.start(), range.end());
    let current = std::fs::read_to_string(RESERVED_PORTS).unwrap_or_default();
    let current = current.trim();
    if current.split(',').any(|r| r == range) {
        return;
    }
    let wanted = if current.is_empty() {
        range
    } else {
        format!("{current},{range}")
    };
    if let Err(error) = std::fs::write(RESERVED_PORTS, &wanted) {
        tracing::warn!(%error, ports = %wanted, "cannot reserve the fast path source ports");
    }
}

#[cfg(test)]
mod tests {
    use lb_common::SPLICE_STATE_OBSERVE;

    use super::*;
    use crate::fastpath::translate::tuple_key;

    /// A spliced pair: client 10.0.0.9:40000 -> lb 10.0.0.1:80, lb 10.0.1.1:61005 -> server
    /// 10.0.1.2:8080; (client entry, server entry) with their `seen` bits.
    fn pair(seen_client: u32, seen_server: u32, flags: u32) -> Vec<(SpliceKey, SpliceEntry)> {
        let client = SocketAddrV4::new(Ipv4Addr::new(10, 0, 0, 9), 40000);
        let front = SocketAddrV4::new(Ipv4Addr::new(10, 0, 0, 1), 80);
        let local = SocketAddrV4::new(Ipv4Addr::new(10, 0, 1, 1), 61005);
        let server = SocketAddrV4::new(Ipv4Addr::new(10, 0, 1, 2), 8080);
        let rewrite = |from: SocketAddrV4, to: SocketAddrV4, seen| SpliceEntry {
            state: SPLICE_STATE_SPLICE,
            flags,
            new_saddr: u32::from_ne_bytes(from.ip().octets()),
            new_daddr: u32::from_ne_bytes(to.ip().octets()),
            new_sport: from.port().to_be(),
            new_dport: to.port().to_be(),
            seen,
            ..SpliceEntry::default()
        };
        vec![
            (
                tuple_key(client, front),
                rewrite(local, server, seen_client),
            ),
            (
                tuple_key(server, local),
                rewrite(front, client, seen_server),
            ),
        ]
    }

    const RANGE: RangeInclusive<u16> = 61000..=64999;

    fn port() -> Port {
        Port {
            source: Ipv4Addr::new(10, 0, 1, 1),
            server: SocketAddrV4::new(Ipv4Addr::new(10, 0, 1, 2), 8080),
            port: 61005,
        }
    }

    #[test]
    fn an_open_flow_holds_its_source_port_until_it_ends() {
        let ts = SPLICE_F_TIMESTAMPS;
        assert_eq!(open_ports(&pair(0, 0, ts), &RANGE), [port()].into());
        // Half closed: still open.
        assert_eq!(
            open_ports(&pair(SPLICE_SEEN_FIN, 0, ts), &RANGE),
            [port()].into()
        );
        // FIN both ways, or an RST: ended (the port rests for the reuse delay).
        assert!(open_ports(&pair(SPLICE_SEEN_FIN, SPLICE_SEEN_FIN, ts), &RANGE).is_empty());
        assert!(open_ports(&pair(0, SPLICE_SEEN_RST, ts), &RANGE).is_empty());
        // Without timestamps nothing guards a reused port: held until collected.
        assert_eq!(
            open_ports(&pair(SPLICE_SEEN_FIN, SPLICE_SEEN_FIN, 0), &RANGE),
            [port()].into()
        );
        // OBSERVE entries belong to relayed connections, whose ports the relay holds.
        let mut observed = pair(0, 0, ts);
        for (_, entry) in &mut observed {
            entry.state = SPLICE_STATE_OBSERVE;
        }
        assert!(open_ports(&observed, &RANGE).is_empty());
    }
}
