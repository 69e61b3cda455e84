//! The fast path inside the daemon: the loaded program, the interfaces it is attached to, the
//! flow map, the backend source ports, the hand-off of a proxied connection, the collector and
//! the counters the monitor shows.

use std::{
    collections::{HashMap, HashSet},
    io,
    net::{Ipv4Addr, SocketAddr, SocketAddrV4},
    ops::RangeInclusive,
    os::fd::AsFd as _,
    path::{Path, PathBuf},
    sync::{
        atomic::{AtomicU32, AtomicU64, Ordering::Relaxed},
        Arc, Mutex, MutexGuard, PoisonError,
    },
    time::{Duration, Instant},
};

use lb_common::SpliceKey;
use tokio::net::{TcpSocket, TcpStream};

use super::{
    collector::{self, Memory, Reason, Rules},
    interfaces::{self, Interface},
    repair,
    splice::{NotSpliced, Observed, Outcome, SpliceError},
    translate::{tuple_key, Refusal},
    FastPath, FastPathError, Flows,
};

/// Backend source ports the daemon allocates itself, outside Linux's default ephemeral range
/// (32768-60999) and reserved with `ip_local_reserved_ports` in case that range was widened.
pub const SOURCE_PORTS: RangeInclusive<u16> = 61000..=64999;
const RESERVED_PORTS: &str = "/proc/sys/net/ipv4/ip_local_reserved_ports";
/// How long the proxy waits for the peers to acknowledge everything before a hand-off.
const ACK_WAIT: Duration = Duration::from_secs(2);

/// Counters of the hand-offs, for the monitor and `/metrics`.
#[derive(Default)]
pub struct Stats {
    /// Connections served by the splicing relay.
    pub candidates: AtomicU64,
    /// Hand-offs attempted (HOLD reached or not).
    pub attempts: AtomicU64,
    /// Connections handed to the kernel.
    pub spliced: AtomicU64,
    /// Attempts that met unread bytes (a request racing the hand-off).
    pub kept_unread: AtomicU64,
    /// Attempts whose peers did not acknowledge everything in time.
    pub kept_unacked: AtomicU64,
    /// Attempts where a leg moved between the two snapshots.
    pub kept_moved: AtomicU64,
    /// Connections whose legs cannot be translated (e.g. timestamps on one leg only): they stay
    /// in userspace for good.
    pub refused_options: AtomicU64,
    /// Connections not spliced because their first exchange made no sticky session.
    pub not_sticky: AtomicU64,
    /// Connections not spliced because an interface is not one the program may use.
    pub other_interface: AtomicU64,
    /// Exchanges the relay could not frame (chunked, close-delimited): the rest is tunnelled.
    pub unframed: AtomicU64,
    /// Hand-offs that failed with an error (the connection was kept or closed).
    pub errors: AtomicU64,
    /// Entries removed by the collector.
    pub collected: AtomicU64,
}

impl Stats {
    /// Every hand-off outcome counter with its label for `/metrics`.
    pub fn outcomes(&self) -> [(&'static str, u64); 9] {
        [
            ("spliced", self.spliced.load(Relaxed)),
            ("kept_unread", self.kept_unread.load(Relaxed)),
            ("kept_unacked", self.kept_unacked.load(Relaxed)),
            ("kept_moved", self.kept_moved.load(Relaxed)),
            ("refused_options", self.refused_options.load(Relaxed)),
            ("not_sticky", self.not_sticky.load(Relaxed)),
            ("other_interface", self.other_interface.load(Relaxed)),
            ("unframed", self.unframed.load(Relaxed)),
            ("error", self.errors.load(Relaxed)),
        ]
    }
}

/// A connection being relayed with its OBSERVE entries in place.
pub struct Handoff {
    observed: Observed,
    client_ifindex: u32,
    server_ifindex: u32,
}

/// What became of a hand-off attempt.
pub enum Attempt {
    Spliced,
    /// Try again after the next exchange.
    Again(Handoff),
    /// Never again on this connection (its legs cannot be translated).
    Never,
}

pub struct Runtime {
    root: PathBuf,
    program: Mutex<FastPath>,
    flows: Mutex<Flows>,
    attached: Mutex<HashMap<String, u32>>,
    /// Keys of this process's OBSERVE/HOLD entries (the collector leaves them alone).
    owned: Mutex<HashSet<SpliceKey>>,
    next_port: AtomicU32,
    sources: Mutex<HashMap<SocketAddrV4, Ipv4Addr>>,
    memory: Mutex<Memory>,
    rules: Rules,
    pub stats: Stats,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Runtime {
    /// Loads the program (adopting the maps and links pinned under `root`), attaches it to
    /// `interfaces` and to the interfaces of the routes to `servers`, and reserves the source
    /// ports. Entries a previous process left are adopted: the collector ages them.
    pub fn start(
        root: &Path,
        interfaces: &[String],
        servers: &[SocketAddr],
        rules: Rules,
    ) -> Result<Runtime, FastPathError> {
        let mut program = FastPath::load(root)?;
        let flows = program.flows()?;
        let adopted = flows.entries().len();
        let runtime = Runtime {
            root: root.to_owned(),
            program: Mutex::new(program),
            flows: Mutex::new(flows),
            attached: Mutex::new(HashMap::new()),
            owned: Mutex::new(HashSet::new()),
            next_port: AtomicU32::new(0),
            sources: Mutex::new(HashMap::new()),
            memory: Mutex::new(Memory::default()),
            rules,
            stats: Stats::default(),
        };
        for name in interfaces {
            let index = interface_index(name)?;
            runtime.ensure_attached(&Interface {
                name: name.clone(),
                index,
            })?;
        }
        if interfaces.is_empty() {
            for server in servers {
                let SocketAddr::V4(server) = server else {
                    continue;
                };
                match interfaces::toward(*server) {
                    Ok(Some(interface)) if server.ip().is_loopback() || interface.name == "lo" => {}
                    Ok(Some(interface)) => runtime.ensure_attached(&interface)?,
                    Ok(None) | Err(_) => {
                        tracing::warn!(%server, "no interface found toward the server yet; attaching when a connection uses it")
                    }
                }
            }
        }
        reserve_ports();
        tracing::info!(root = %root.display(), adopted, "fast path loaded");
        Ok(runtime)
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Attaches the program to `interface` unless this process already did.
    fn ensure_attached(&self, interface: &Interface) -> Result<(), FastPathError> {
        let mut attached = lock(&self.attached);
        if attached.contains_key(&interface.name) {
            return Ok(());
        }
        let how = lock(&self.program).attach(&interface.name)?;
        tracing::info!(interface = %interface.name, ?how, "fast path attached");
        attached.insert(interface.name.clone(), interface.index);
        Ok(())
    }

    /// The interfaces the program is attached to, with their indexes.
    pub fn attached(&self) -> Vec<(String, u32)> {
        let mut list: Vec<_> = lock(&self.attached)
            .iter()
            .map(|(n, i)| (n.clone(), *i))
            .collect();
        list.sort();
        list
    }

    /// Connects to `server` from a source port of [`SOURCE_PORTS`] that no live flow uses.
    pub async fn connect(&self, server: SocketAddrV4, timeout: Duration) -> io::Result<TcpStream> {
        let source = self.source_for(server)?;
        let span = u32::from(SOURCE_PORTS.end() - SOURCE_PORTS.start()) + 1;
        for _ in 0..span {
            let offset = self.next_port.fetch_add(1, Relaxed) % span;
            let Ok(port) = u16::try_from(u32::from(*SOURCE_PORTS.start()) + offset) else {
                continue;
            };
            let local = SocketAddrV4::new(source, port);
            if self.port_is_live(local, server) {
                continue;
            }
            let socket = TcpSocket::new_v4()?;
            match socket.bind(local.into()) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::AddrInUse => continue,
                Err(e) => return Err(e),
            }
            socket.set_nodelay(true)?;
            return match tokio::time::timeout(timeout, socket.connect(server.into())).await {
                Ok(connected) => connected,
                Err(_) => Err(io::Error::new(io::ErrorKind::TimedOut, "connect timeout")),
            };
        }
        Err(io::Error::new(
            io::ErrorKind::AddrNotAvailable,
            "every fast path source port is in use",
        ))
    }

    fn source_for(&self, server: SocketAddrV4) -> io::Result<Ipv4Addr> {
        if let Some(source) = lock(&self.sources).get(&server) {
            return Ok(*source);
        }
        let source = interfaces::source_for(server)?;
        lock(&self.sources).insert(server, source);
        Ok(source)
    }

    /// Whether a flow entry (spliced or not) uses `local` toward `server`.
    fn port_is_live(&self, local: SocketAddrV4, server: SocketAddrV4) -> bool {
        let key = tuple_key(server, local);
        !matches!(lock(&self.flows).get(&key), Ok(None))
    }

    /// Puts a relayed connection under observation, if both legs use interfaces the program may
    /// use (`allowed`, or any when empty). `None`: not a candidate (counted).
    pub fn observe(
        &self,
        client: &TcpStream,
        server: &TcpStream,
        allowed: &[String],
    ) -> Result<Option<Handoff>, ObserveError> {
        let mut ifindexes = [0u32; 2];
        for (socket, ifindex) in [client, server].into_iter().zip(&mut ifindexes) {
            let SocketAddr::V4(local) = socket.local_addr().map_err(ObserveError::Io)? else {
                return Ok(None);
            };
            let Some(interface) = interfaces::owning(*local.ip()).map_err(ObserveError::Io)? else {
                self.stats.other_interface.fetch_add(1, Relaxed);
                return Ok(None);
            };
            // Loopback connections are not spliced: there is no neighbour to redirect to.
            let outside = !allowed.is_empty() && !allowed.contains(&interface.name);
            if outside || local.ip().is_loopback() {
                self.stats.other_interface.fetch_add(1, Relaxed);
                return Ok(None);
            }
            self.ensure_attached(&interface)
                .map_err(ObserveError::Attach)?;
            *ifindex = interface.index;
        }
        let dup = |socket: &TcpStream| -> Result<std::net::TcpStream, ObserveError> {
            let fd = socket
                .as_fd()
                .try_clone_to_owned()
                .map_err(ObserveError::Io)?;
            Ok(std::net::TcpStream::from(fd))
        };
        let observed = Observed::start(&mut lock(&self.flows), dup(client)?, dup(server)?)
            .map_err(ObserveError::Splice)?;
        let (a, b) = observed.keys();
        lock(&self.owned).extend([a, b]);
        self.stats.candidates.fetch_add(1, Relaxed);
        Ok(Some(Handoff {
            observed,
            client_ifindex: ifindexes[0],
            server_ifindex: ifindexes[1],
        }))
    }

    /// Tries to hand the connection to the kernel. Call it at a message boundary with nothing
    /// buffered in userspace. Waits (asynchronously) until the peers acknowledged everything,
    /// then runs the HOLD/snapshot/commit in a blocking task. On [`Attempt::Spliced`] the
    /// caller drops its own handles of both sockets: they are in repair mode, closing them
    /// sends nothing.
    pub async fn try_splice(
        self: &Arc<Self>,
        handoff: Handoff,
        client_socket: &TcpStream,
    ) -> Attempt {
        self.stats.attempts.fetch_add(1, Relaxed);
        let deadline = Instant::now() + ACK_WAIT;
        loop {
            let queues = |s: &std::net::TcpStream| repair::queues(s.as_fd());
            let (client, server) = match (
                queues(&handoff.observed.client),
                queues(&handoff.observed.server),
            ) {
                (Ok(c), Ok(s)) => (c, s),
                (Err(e), _) | (_, Err(e)) => {
                    tracing::debug!(error = %crate::error_chain(&e), "fast path: queues");
                    self.stats.errors.fetch_add(1, Relaxed);
                    return Attempt::Again(handoff);
                }
            };
            if client.0 != 0 || server.0 != 0 {
                self.stats.kept_unread.fetch_add(1, Relaxed);
                return Attempt::Again(handoff);
            }
            if client.1 == 0 && server.1 == 0 {
                break;
            }
            if Instant::now() >= deadline {
                self.stats.kept_unacked.fetch_add(1, Relaxed);
                return Attempt::Again(handoff);
            }
            // The next request ends the wait at once: it is relayed, not delayed.
            tokio::select! {
                _ = client_socket.readable() => {
                    self.stats.kept_unread.fetch_add(1, Relaxed);
                    return Attempt::Again(handoff);
                }
                () = tokio::time::sleep(Duration::from_millis(1)) => {}
            }
        }
        let this = Arc::clone(self);
        let keys = handoff.observed.keys();
        let joined = tokio::task::spawn_blocking(move || {
            let Handoff {
                observed,
                client_ifindex,
                server_ifindex,
            } = handoff;
            let mut flows = lock(&this.flows);
            let outcome = observed.try_splice(
                &mut flows,
                client_ifindex,
                server_ifindex,
                Duration::from_millis(5),
            );
            (outcome, client_ifindex, server_ifindex)
        })
        .await;
        let (outcome, client_ifindex, server_ifindex) = match joined {
            Ok(done) => done,
            Err(e) => {
                tracing::warn!(error = %e, "fast path: the hand-off task failed");
                self.stats.errors.fetch_add(1, Relaxed);
                self.disown(keys);
                return Attempt::Never;
            }
        };
        let handoff = |observed| Handoff {
            observed,
            client_ifindex,
            server_ifindex,
        };
        match outcome {
            Ok(Outcome::Spliced(_)) => {
                self.disown(keys);
                self.stats.spliced.fetch_add(1, Relaxed);
                Attempt::Spliced
            }
            Ok(Outcome::Kept(observed, why)) => match why {
                NotSpliced::Unread { .. } => {
                    self.stats.kept_unread.fetch_add(1, Relaxed);
                    Attempt::Again(handoff(observed))
                }
                NotSpliced::Unacked(_) => {
                    self.stats.kept_unacked.fetch_add(1, Relaxed);
                    Attempt::Again(handoff(observed))
                }
                NotSpliced::Moved => {
                    self.stats.kept_moved.fetch_add(1, Relaxed);
                    Attempt::Again(handoff(observed))
                }
                NotSpliced::Refused(Refusal::Queued { .. } | Refusal::NotEstablished { .. }) => {
                    self.stats.kept_unread.fetch_add(1, Relaxed);
                    Attempt::Again(handoff(observed))
                }
                NotSpliced::Refused(refusal) => {
                    tracing::info!(reason = %refusal, "fast path: connection stays in userspace");
                    self.stats.refused_options.fetch_add(1, Relaxed);
                    self.forget(handoff(observed));
                    Attempt::Never
                }
            },
            Err(error) => {
                // try_splice aborted to OBSERVE and took the repair mode off as best it could;
                // the sockets are gone with the Observed, the caller's handles keep working or
                // fail visibly.
                tracing::warn!(error = %crate::error_chain(&error), "fast path: hand-off failed");
                self.stats.errors.fetch_add(1, Relaxed);
                if let Err(e) = self.remove_keys(keys) {
                    tracing::warn!(error = %crate::error_chain(&e), "fast path: removing entries");
                }
                self.disown(keys);
                Attempt::Never
            }
        }
    }

    /// Removes the entries of a connection that ends (or stays) in userspace.
    pub fn forget(&self, handoff: Handoff) {
        let keys = handoff.observed.keys();
        if let Err(e) = handoff.observed.forget(&mut lock(&self.flows)) {
            tracing::warn!(error = %crate::error_chain(&e), "fast path: removing entries");
        }
        self.disown(keys);
    }

    fn remove_keys(&self, (a, b): (SpliceKey, SpliceKey)) -> Result<(), aya::maps::MapError> {
        let mut flows = lock(&self.flows);
        flows.remove(&a)?;
        flows.remove(&b)
    }

    fn disown(&self, (a, b): (SpliceKey, SpliceKey)) {
        let mut owned = lock(&self.owned);
        owned.remove(&a);
        owned.remove(&b);
    }

    /// One sweep of the collector (blocking: it walks the whole map).
    pub fn collect(&self) -> Vec<(SpliceKey, Reason)> {
        let entries = lock(&self.flows).entries();
        let owned = lock(&self.owned).clone();
        let removed = collector::sweep(
            &entries,
            &owned,
            &mut lock(&self.memory),
            &self.rules,
            monotonic_ns(),
        );
        let mut flows = lock(&self.flows);
        for (key, reason) in &removed {
            match flows.remove(key) {
                Ok(()) => {
                    self.stats.collected.fetch_add(1, Relaxed);
                    tracing::debug!(?key, reason = reason.as_str(), "fast path: entry collected");
                }
                Err(e) => tracing::warn!(error = %crate::error_chain(&e), "fast path: collecting"),
            }
        }
        removed
    }

    /// Every entry of the flow map.
    pub fn entries(&self) -> Vec<(SpliceKey, lb_common::SpliceEntry)> {
        lock(&self.flows).entries()
    }
}

/// Runs the collector every second.
pub async fn collect_forever(runtime: Arc<Runtime>) {
    let mut ticker = tokio::time::interval(Duration::from_secs(1));
    loop {
        ticker.tick().await;
        let r = Arc::clone(&runtime);
        match tokio::task::spawn_blocking(move || r.collect()).await {
            Ok(removed) if !removed.is_empty() => {
                let reasons: Vec<&str> = removed.iter().map(|(_, r)| r.as_str()).collect();
                tracing::info!(
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

#[derive(Debug, thiserror::Error)]
pub enum ObserveError {
    #[error("socket")]
    Io(#[source] io::Error),
    #[error(transparent)]
    Attach(FastPathError),
    #[error(transparent)]
    Splice(SpliceError),
}

/// CLOCK_MONOTONIC in ns: the clock of `bpf_ktime_get_ns`.
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid timespec to fill.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    u64::try_from(ts.tv_sec).unwrap_or(0) * 1_000_000_000 + u64::try_from(ts.tv_nsec).unwrap_or(0)
}

fn interface_index(name: &str) -> Result<u32, FastPathError> {
    let missing = || FastPathError::Attach {
        interface: name.to_owned(),
        source: aya::programs::ProgramError::UnexpectedProgramType,
    };
    let c = std::ffi::CString::new(name).map_err(|_| missing())?;
    // SAFETY: a NUL-terminated name.
    let index = unsafe { libc::if_nametoindex(c.as_ptr()) };
    if index == 0 {
        return Err(missing());
    }
    Ok(index)
}

/// Adds [`SOURCE_PORTS`] to `ip_local_reserved_ports` (of this network namespace), keeping
/// what is there. Best effort: the range is outside the default ephemeral range anyway.
fn reserve_ports() {
    let range = format!("{}-{}", SOURCE_PORTS.start(), SOURCE_PORTS.end());
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
