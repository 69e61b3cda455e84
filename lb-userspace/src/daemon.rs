//! `stickylb run`: wires the configuration, the durable table, the backends, the listeners and
//! the monitor together, reloads the configuration in place on SIGHUP, and stops them in order.

use std::{
    io,
    net::SocketAddr,
    os::fd::AsFd as _,
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use lb_common::STICK_TABLE_MAP;
use tokio::{
    net::{TcpListener, UnixListener},
    signal::unix::{signal, SignalKind},
    sync::{watch, Notify},
    task::JoinHandle,
};

use crate::{
    backend::BackendState,
    config::{Config, FastPathMode},
    control::{self, systemd, Handover, Takeover},
    dataplane::{self, DataplaneError},
    error_chain,
    fastpath::{self, FastPathError},
    monitor,
    peers::{self, link::PeerLink},
    proxy::{drain::Drain, listener, workers::Workers, Frontend},
    reload::{self, Live},
    table::{
        self,
        pinned::{self, DurableError, DurableTable, Origin},
        ScanMode, Store,
    },
};

/// Why the daemon could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Dataplane(#[from] DataplaneError),
    #[error(transparent)]
    Durable(#[from] DurableError),
    #[error("cannot listen on {addr} for {what}")]
    Bind {
        what: String,
        addr: SocketAddr,
        #[source]
        source: io::Error,
    },
    #[error(transparent)]
    Control(#[from] control::BindError),
    #[error("upgrade: cannot take over from the running instance")]
    Upgrade(#[source] io::Error),
    #[error("cannot start the data plane's threads")]
    Workers(#[source] io::Error),
    #[error("cannot install the signal handlers")]
    Signals(#[source] io::Error),
    #[error("cannot start the kernel fast path (set fastpath = \"off\" to run without it)")]
    FastPath(#[source] FastPathError),
}

/// Everything the monitor shows.
pub struct Shared {
    pub instance: String,
    pub backends: Vec<Arc<BackendState>>,
    pub frontends: Vec<Arc<Frontend>>,
    /// The other members of the peers section.
    pub peers: Vec<Arc<PeerLink>>,
    pub started_ms: u64,
    /// The kernel fast path, when a frontend splices.
    pub fastpath: Option<Arc<fastpath::Runtime>>,
}

/// How `stickylb run` was asked to start.
#[derive(Clone, Debug)]
pub struct RunOptions {
    /// Re-read on SIGHUP and `stickylb reload`.
    pub config_path: PathBuf,
    /// `--name`: the instance name in place of the file's.
    pub name: Option<String>,
    /// `--upgrade`: take the listening sockets of the running instance, then let it go.
    pub upgrade: bool,
}

/// Runs the daemon until SIGINT or SIGTERM, or until a successor takes over; on SIGHUP,
/// applies the configuration file again in place.
pub async fn run(config: Config, options: RunOptions) -> Result<(), StartError> {
    // A fresh table's map and the fast path come from the eBPF object: a build without it
    // says so before it binds or mounts anything.
    dataplane::ebpf_object().map_err(DataplaneError::from)?;
    let mut signals = Signals::install().map_err(StartError::Signals)?;
    let control_path = config.instance.control_socket.clone();
    let mut sockets = Sockets::default();
    let mut control = None;
    if options.upgrade {
        sockets.takeover = take_over(&control_path).await?;
    } else {
        control = Some(control::bind(&control_path, false)?);
    }
    let pin_root = dataplane::pin_root(&config.instance.pin_dir, &config.instance.name);
    dataplane::prepare_pin_root(&pin_root)?;
    let durable = open_durable(&config, &pin_root, sockets.takeover.is_some())?;
    let map_capacity = durable.capacity()?;
    let store = Store::new(Arc::new(durable), config.peers.is_some());
    let (backends, frontends) = routing(&config, &store);
    adopt_table(&store, &backends)?;

    let live = Arc::new(Live::start(config.clone(), backends.clone()));
    let mut tasks: Vec<JoinHandle<()>> = Vec::new();
    let fastpath = start_fastpath(&config, &frontends)?;
    if let Some(runtime) = &fastpath {
        tasks.push(tokio::spawn(fastpath::runtime::collect_forever(
            Arc::clone(runtime),
        )));
    }
    let peer_links = match &config.peers {
        Some(peers) => {
            let listener = sockets.listen("peers", peers.bind, "the peers port")?;
            let running = start_peers(&config, peers, listener, &backends, &store);
            tasks.extend(running.tasks);
            running.links
        }
        None => Vec::new(),
    };
    let shared = Arc::new(Shared {
        instance: config.instance.name.clone(),
        backends: backends.clone(),
        frontends: frontends.clone(),
        peers: peer_links,
        started_ms: table::now_ms(),
        fastpath,
    });

    tasks.push(tokio::spawn(sweep_expired(
        store.clone(),
        backends.clone(),
        map_capacity,
    )));

    let (stop_tx, stop_rx) = watch::channel(false);
    let graceful = Arc::new(Drain::new());
    let workers = Arc::new(Workers::start().map_err(StartError::Workers)?);
    let servers = listen(
        &config,
        &frontends,
        (&live, &workers),
        &graceful,
        &stop_rx,
        &mut sockets,
    )?;
    if let Some(monitor) = &config.monitor {
        let socket = sockets.listen("monitor", monitor.bind, "the monitor")?;
        tracing::info!(addr = %monitor.bind, "monitor listening");
        tasks.push(tokio::spawn(monitor::serve(socket, Arc::clone(&shared))));
    }
    let control = match control {
        Some(control) => control,
        None => finish_takeover(sockets.takeover.take(), &control_path).await?,
    };
    let successor = Arc::new(Notify::new());
    let (stopped_tx, stopped_rx) = watch::channel(false);
    let context = control::Context {
        instance: config.instance.name.clone(),
        handover: std::mem::take(&mut sockets.handover),
        reload: reload_command(&live, &options),
        stop: Arc::clone(&successor),
        stopped_accepting: stopped_rx,
    };
    tasks.push(tokio::spawn(control::serve(control, Arc::new(context))));
    tracing::info!(instance = %config.instance.name, pid = std::process::id(), "stickylb started");
    systemd::ready();

    loop {
        tokio::select! {
            event = signals.next() => match event {
                Event::Reload => reload_in_place(&live, &options),
                Event::Stop => {
                    systemd::stopping();
                    break;
                }
            },
            // Not "stopping" for systemd: the service goes on in the successor, which has
            // already told systemd its MAINPID.
            () = successor.notified() => break,
        }
    }
    // The drain timeout is the one in force, which a reload may have changed.
    let drain_limit = live.config().timeouts.drain;
    tracing::info!(drain = ?drain_limit, "stopping: no new connections, draining requests in flight");
    let _ = stop_tx.send(true);
    for server in servers {
        let _ = server.await;
    }
    // Peers, monitor and control go now: a successor has its own, and a stopping node must not
    // be taught new sessions while it drains.
    tasks.iter().for_each(JoinHandle::abort);
    // Every table change is in the pinned map already: tables write as they decide.
    let _ = stopped_tx.send(true);
    drain(graceful, drain_limit).await;
    workers.stop();
    live.stop();
    drop((store, shared, frontends, backends, live));
    tracing::info!("stopped");
    Ok(())
}

/// Where listening sockets come from: the predecessor's when upgrading, else bound here. Every
/// one is also kept (duplicated) for a successor.
#[derive(Default)]
struct Sockets {
    takeover: Option<Takeover>,
    handover: Handover,
}

impl Sockets {
    fn listen(
        &mut self,
        role: &str,
        addr: SocketAddr,
        what: &str,
    ) -> Result<TcpListener, StartError> {
        let bind_error = |source| StartError::Bind {
            what: what.to_owned(),
            addr,
            source,
        };
        let listener = match self.takeover.as_mut().and_then(|t| t.listener(role, addr)) {
            Some(listener) => {
                tracing::info!(role, %addr, "took over the listening socket");
                listener
            }
            None => listener::bind(addr).map_err(bind_error)?,
        };
        self.handover
            .add(role.to_owned(), addr, listener.as_fd())
            .map_err(bind_error)?;
        Ok(listener)
    }
}

/// Asks the running instance for its sockets; `None` (start fresh) when none answers.
async fn take_over(path: &Path) -> Result<Option<Takeover>, StartError> {
    let owned = path.to_owned();
    let takeover = tokio::task::spawn_blocking(move || Takeover::request(&owned))
        .await
        .map_err(|e| StartError::Upgrade(io::Error::other(e)))?
        .map_err(StartError::Upgrade)?;
    match &takeover {
        Some(_) => {
            tracing::info!(control = %path.display(), "upgrading: took the listening sockets of the running instance")
        }
        None => {
            tracing::warn!(control = %path.display(), "--upgrade: no running instance answers; starting fresh")
        }
    }
    Ok(takeover)
}

/// Tells the predecessor we serve, waits until it stopped accepting, then takes the control
/// socket's path over.
async fn finish_takeover(
    takeover: Option<Takeover>,
    path: &Path,
) -> Result<UnixListener, StartError> {
    if let Some(takeover) = takeover {
        tokio::task::spawn_blocking(move || takeover.finish())
            .await
            .map_err(|e| StartError::Upgrade(io::Error::other(e)))?
            .map_err(StartError::Upgrade)?;
        tracing::info!("the previous instance stopped accepting; it drains and exits");
    }
    Ok(control::bind(path, true)?)
}

/// Opens the durable table. An upgrade adopts the pinned map as it is, whatever its capacity:
/// the running instance keeps writing to it until it exits, so it must not be migrated away.
fn open_durable(
    config: &Config,
    pin_root: &Path,
    upgrading: bool,
) -> Result<DurableTable, StartError> {
    let total: u64 = config
        .backends
        .iter()
        .map(|b| u64::from(b.table_size.get()))
        .sum();
    let capacity = pinned::durable_capacity(total);
    let path = pin_root.join(STICK_TABLE_MAP);
    if upgrading && path.exists() {
        let durable = DurableTable::open_existing(&path)?;
        let pinned = durable.capacity()?;
        if pinned != capacity {
            tracing::warn!(
                pinned,
                wanted = capacity,
                "table_size changed: the pinned table keeps its capacity until the next restart"
            );
        }
        log_origin(Origin::Adopted, &path, pinned);
        return Ok(durable);
    }
    let mut ebpf = dataplane::load(capacity)?;
    let fresh = ebpf
        .take_map(STICK_TABLE_MAP)
        .ok_or(DurableError::MissingMap {
            name: STICK_TABLE_MAP,
        })?;
    let (durable, origin) = DurableTable::open(fresh, &path, capacity)?;
    log_origin(origin, &path, capacity);
    Ok(durable)
}

/// What the control socket's `reload` does: the same as SIGHUP, answering the outcome.
fn reload_command(
    live: &Arc<Live>,
    options: &RunOptions,
) -> Box<dyn Fn() -> Result<String, String> + Send + Sync> {
    let (live, options) = (Arc::clone(live), options.clone());
    Box::new(move || {
        tracing::info!(path = %options.config_path.display(), "reload requested on the control socket");
        let outcome = reload::reload_from(&live, &options.config_path, options.name.as_deref());
        reload::log_outcome(&outcome);
        outcome
            .map(|summary| summary.to_string())
            .map_err(|failure| error_chain(&failure))
    })
}

/// Binds every frontend (or takes its socket over) and starts serving it with `live`'s proxy
/// and connection settings.
fn listen(
    config: &Config,
    frontends: &[Arc<Frontend>],
    (live, workers): (&Live, &Arc<Workers>),
    graceful: &Arc<Drain>,
    stop: &watch::Receiver<bool>,
    sockets: &mut Sockets,
) -> Result<Vec<JoinHandle<()>>, StartError> {
    let mut servers = Vec::new();
    for (frontend, cfg) in frontends.iter().zip(&config.frontends) {
        let socket = sockets.listen(
            &format!("frontend:{}", cfg.name),
            cfg.bind,
            &format!("frontend {}", cfg.name),
        )?;
        tracing::info!(frontend = %frontend.name, addr = %cfg.bind, backend = %frontend.backend.name, "listening");
        // The accept loop runs on a worker, whose event loop the listener joins there.
        let socket = socket.into_std().map_err(|source| StartError::Bind {
            what: format!("frontend {}", cfg.name),
            addr: cfg.bind,
            source,
        })?;
        let serve = listener::serve(
            socket,
            Arc::clone(frontend),
            Arc::clone(live.proxy()),
            (Arc::clone(live.conn_settings()), Arc::clone(workers)),
            Arc::clone(graceful),
            stop.clone(),
        );
        servers.push(workers.first().spawn(serve));
    }
    Ok(servers)
}

/// SIGHUP: re-reads `path` and applies it in place. An invalid file, or one that needs an
/// upgrade, is refused with a log line and the running configuration stays.
fn reload_in_place(live: &Live, options: &RunOptions) {
    tracing::info!(path = %options.config_path.display(), "SIGHUP received: reloading the configuration");
    reload::log_outcome(&reload::reload_from(
        live,
        &options.config_path,
        options.name.as_deref(),
    ));
}

/// The backends' runtime state (their tables in `store`) and the frontends that route to
/// them. Validation guarantees every frontend names a configured backend.
pub fn routing(config: &Config, store: &Store) -> (Vec<Arc<BackendState>>, Vec<Arc<Frontend>>) {
    let backends: Vec<Arc<BackendState>> = config
        .backends
        .iter()
        .map(|b| Arc::new(BackendState::new(b, store.clone())))
        .collect();
    let frontends = config
        .frontends
        .iter()
        .filter_map(|f| {
            let backend = backends.iter().find(|b| b.name == f.backend)?;
            let mut frontend = Frontend::new(f.name.clone(), Arc::clone(backend));
            frontend.fastpath_interfaces = f.fastpath_interfaces.clone();
            Some(Arc::new(frontend))
        })
        .collect();
    (backends, frontends)
}

/// Loads and attaches the kernel fast path when a frontend has `fastpath = "splice"`, and
/// gives it to those frontends. The pinned maps and links of a previous process are adopted.
fn start_fastpath(
    config: &Config,
    frontends: &[Arc<Frontend>],
) -> Result<Option<Arc<fastpath::Runtime>>, StartError> {
    if !config.splices() {
        return Ok(None);
    }
    raise_fd_limit();
    let splicing: Vec<&crate::config::Frontend> = config
        .frontends
        .iter()
        .filter(|f| f.fastpath == FastPathMode::Splice)
        .collect();
    let mut interfaces: Vec<String> = Vec::new();
    for name in splicing.iter().flat_map(|f| &f.fastpath_interfaces) {
        if !interfaces.contains(name) {
            interfaces.push(name.clone());
        }
    }
    let servers: Vec<SocketAddr> = config
        .backends
        .iter()
        .filter(|b| splicing.iter().any(|f| f.backend == b.name))
        .flat_map(|b| b.servers.iter().map(|s| s.addr))
        .collect();
    let root = dataplane::pin_root(&config.instance.pin_dir, &config.instance.name);
    let rules = fastpath::collector::Rules {
        fin_grace: config.timeouts.splice_fin_grace,
        idle: config.timeouts.splice_idle,
        port_reuse: config.fastpath.port_reuse,
        ..fastpath::collector::Rules::default()
    };
    let policy = fastpath::policy::Policy {
        exchanges: config.fastpath.after_requests,
        idle: config.fastpath.after_pause,
    };
    let options = fastpath::runtime::Options {
        rules,
        policy,
        source_ports: config.fastpath.source_ports.range(),
    };
    let runtime = fastpath::Runtime::start(&root, &interfaces, &servers, options)
        .map(Arc::new)
        .map_err(StartError::FastPath)?;
    for (frontend, cfg) in frontends.iter().zip(&config.frontends) {
        if cfg.fastpath == FastPathMode::Splice {
            let _ = frontend.fastpath.set(Arc::clone(&runtime));
        }
    }
    Ok(Some(runtime))
}

/// Each relayed connection holds four descriptors (two sockets and their duplicates for the
/// hand-off): raise the soft limit to the hard one.
fn raise_fd_limit() {
    if let Err(error) = crate::sys::process::raise_nofile_limit() {
        tracing::debug!(%error, "could not raise the open file limit");
    }
}

/// Starts accepting peers on `listener` and a session task per other member.
fn start_peers(
    config: &Config,
    peers: &crate::config::Peers,
    listener: TcpListener,
    backends: &[Arc<BackendState>],
    store: &Store,
) -> peers::node::Peers {
    let synced: Vec<(Arc<BackendState>, u8)> = backends
        .iter()
        .zip(&config.backends)
        .map(|(backend, cfg)| (Arc::clone(backend), cfg.peer_key_len))
        .collect();
    tracing::info!(addr = %peers.bind, members = peers.members.len(), "peers listening");
    peers::node::start(listener, peers, &config.instance.name, &synced, store)
}

/// Before idle connections are closed, a connection accepted just before we stopped gets this
/// long to send its first request: a graceful shutdown closes a connection that has not sent
/// one yet, which its client would see as a failed request.
const FIRST_REQUEST_GRACE: Duration = Duration::from_millis(500);

/// How often the whole pinned map is read for expired entries (lookups never return one, so
/// this only frees their room; a million entries take a few hundred milliseconds of one CPU).
const SCAN_INTERVAL: Duration = Duration::from_secs(60);

async fn drain(graceful: Arc<Drain>, limit: Duration) {
    let Ok(graceful) = Arc::try_unwrap(graceful) else {
        tracing::warn!("listeners still hold connections; not waiting for them");
        return;
    };
    let grace = FIRST_REQUEST_GRACE.min(limit);
    tokio::time::sleep(grace).await;
    if tokio::time::timeout(limit - grace, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!(?limit, "drain timeout: closing connections still busy");
    }
}

fn log_origin(origin: Origin, path: &std::path::Path, capacity: u32) {
    match origin {
        Origin::Created => {
            tracing::info!(path = %path.display(), capacity, "created the durable stick table")
        }
        Origin::Adopted => {
            tracing::info!(path = %path.display(), capacity, "adopted the pinned stick table")
        }
        Origin::Migrated { from_capacity } => tracing::info!(
            path = %path.display(),
            from_capacity,
            capacity,
            "migrated the pinned stick table to a new capacity"
        ),
    }
}

/// Takes the pinned table as it is: counts each backend's entries, forgets the ones that
/// expired meanwhile or whose backend is gone from the configuration, and brings each
/// backend's most recently used entries into memory.
fn adopt_table(store: &Store, backends: &[Arc<BackendState>]) -> Result<(), StartError> {
    let tables: Vec<&table::StickTable> = backends.iter().map(|b| &b.table).collect();
    let report = table::scan(store, &tables, table::now_ms(), ScanMode::Start)
        .map_err(DurableError::Read)?;
    tracing::info!(
        adopted = report.live,
        expired = report.expired,
        orphaned = report.orphaned,
        "adopted the stick table in the pinned map"
    );
    Ok(())
}

/// Every second, forgets the recent entries that expired; every [`SCAN_INTERVAL`], the stored
/// ones (a read of the whole map, off the runtime's threads).
async fn sweep_expired(store: Store, backends: Vec<Arc<BackendState>>, map_capacity: u32) {
    let mut ticker = tokio::time::interval(Duration::from_secs(1));
    let mut last_scan = tokio::time::Instant::now();
    loop {
        ticker.tick().await;
        let now = table::now_ms();
        for backend in &backends {
            let expired = backend.table.sweep_expired(now);
            if expired > 0 {
                tracing::debug!(backend = %backend.name, expired, "expired idle sessions");
            }
        }
        if last_scan.elapsed() < SCAN_INTERVAL {
            continue;
        }
        last_scan = tokio::time::Instant::now();
        let (store, backends) = (store.clone(), backends.clone());
        let scanned = tokio::task::spawn_blocking(move || {
            let tables: Vec<&table::StickTable> = backends.iter().map(|b| &b.table).collect();
            let mode = ScanMode::Periodic {
                capacity: map_capacity,
            };
            table::scan(&store, &tables, table::now_ms(), mode)
        })
        .await;
        match scanned {
            Ok(Ok(report)) if report.expired + report.orphaned > 0 => {
                tracing::debug!(?report, "expired idle sessions in the pinned map")
            }
            Ok(Ok(_)) => {}
            Ok(Err(error)) => tracing::error!(%error, "reading the stick table failed"),
            Err(error) => tracing::error!(%error, "the stick table scan panicked"),
        }
    }
}

struct Signals {
    interrupt: tokio::signal::unix::Signal,
    terminate: tokio::signal::unix::Signal,
    hangup: tokio::signal::unix::Signal,
}

enum Event {
    Stop,
    Reload,
}

impl Signals {
    /// Installed first thing, so that a SIGHUP arriving during start is a reload, never the
    /// default action (exit).
    fn install() -> io::Result<Self> {
        Ok(Self {
            interrupt: signal(SignalKind::interrupt())?,
            terminate: signal(SignalKind::terminate())?,
            hangup: signal(SignalKind::hangup())?,
        })
    }

    async fn next(&mut self) -> Event {
        tokio::select! {
            _ = self.interrupt.recv() => {
                tracing::info!("SIGINT received");
                Event::Stop
            }
            _ = self.terminate.recv() => {
                tracing::info!("SIGTERM received");
                Event::Stop
            }
            _ = self.hangup.recv() => Event::Reload,
        }
    }
}
