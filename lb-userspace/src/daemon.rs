//! `stickylb run`: wires the configuration, the durable table, the backends, the listeners and
//! the monitor together, reloads the configuration in place on SIGHUP, and stops them in order.

use std::{
    collections::HashMap,
    io,
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use hyper_util::server::graceful::GracefulShutdown;
use lb_common::STICK_TABLE_MAP;
use tokio::{
    signal::unix::{signal, SignalKind},
    sync::watch,
    task::JoinHandle,
};

use crate::{
    backend::BackendState,
    config::Config,
    dataplane::{self, DataplaneError},
    monitor,
    peers::{self, link::PeerLink},
    proxy::{listener, Frontend},
    reload::{self, Live},
    table::{
        self, field_text,
        pinned::{self, DurableError, DurableTable, Origin},
        Journal, JournalOp,
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
    #[error("cannot start the table writer thread")]
    Writer(#[source] io::Error),
    #[error("cannot install the signal handlers")]
    Signals(#[source] io::Error),
}

/// Everything the monitor shows.
pub struct Shared {
    pub instance: String,
    pub backends: Vec<Arc<BackendState>>,
    pub frontends: Vec<Arc<Frontend>>,
    /// The other members of the peers section.
    pub peers: Vec<Arc<PeerLink>>,
    pub started_ms: u64,
}

/// Runs the daemon until SIGINT or SIGTERM; on SIGHUP, applies `config_path` again in place.
pub async fn run(config: Config, config_path: PathBuf) -> Result<(), StartError> {
    let mut signals = Signals::install().map_err(StartError::Signals)?;
    let pin_root = dataplane::pin_root(&config.instance.pin_dir, &config.instance.name);
    dataplane::prepare_pin_root(&pin_root)?;
    let total: u64 = config
        .backends
        .iter()
        .map(|b| u64::from(b.table_size.get()))
        .sum();
    let capacity = pinned::durable_capacity(total);
    let mut ebpf = dataplane::load(capacity)?;
    let fresh = ebpf
        .take_map(STICK_TABLE_MAP)
        .ok_or(DurableError::MissingMap {
            name: STICK_TABLE_MAP,
        })?;
    let path = pin_root.join(STICK_TABLE_MAP);
    let (durable, origin) = DurableTable::open(fresh, &path, capacity)?;
    log_origin(origin, &path, capacity);

    let (journal, receiver) = table::journal();
    let (backends, frontends) = routing(&config, &journal);
    adopt_entries(&durable, &backends, &journal);
    let writer = pinned::spawn_writer(durable, receiver).map_err(StartError::Writer)?;

    let live = Live::start(config.clone(), backends.clone());
    let mut tasks: Vec<JoinHandle<()>> = Vec::new();
    let peer_links = match &config.peers {
        Some(peers) => {
            let running = start_peers(&config, peers, &backends, &journal).await?;
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
    });

    tasks.push(tokio::spawn(sweep_expired(backends.clone())));

    let (stop_tx, stop_rx) = watch::channel(false);
    let graceful = Arc::new(GracefulShutdown::new());
    let servers = listen(&config, &frontends, &live, &graceful, &stop_rx)?;
    if let Some(monitor) = &config.monitor {
        let socket = listener::bind(monitor.bind).map_err(|source| StartError::Bind {
            what: "the monitor".into(),
            addr: monitor.bind,
            source,
        })?;
        tracing::info!(addr = %monitor.bind, "monitor listening");
        tasks.push(tokio::spawn(monitor::serve(socket, Arc::clone(&shared))));
    }
    tracing::info!(instance = %config.instance.name, "stickylb started");

    while let Event::Reload = signals.next().await {
        reload_in_place(&live, &config_path);
    }
    // The drain timeout is the one in force, which a reload may have changed.
    let drain_limit = live.config().timeouts.drain;
    tracing::info!(drain = ?drain_limit, "stopping: no new connections, draining requests in flight");
    let _ = stop_tx.send(true);
    for server in servers {
        let _ = server.await;
    }
    drain(graceful, drain_limit).await;
    live.stop();
    tasks.iter().for_each(JoinHandle::abort);
    if !journal.flushed(Duration::from_secs(2)).await {
        tracing::warn!("the durable table writer did not catch up within 2 s");
    }
    // Every holder of a journal sender goes before the writer is joined: it stops when they do.
    drop((journal, shared, frontends, backends, live));
    let _ = tokio::task::spawn_blocking(move || writer.join()).await;
    tracing::info!("stopped");
    Ok(())
}

/// Binds every frontend and starts serving it with `live`'s proxy and connection settings.
fn listen(
    config: &Config,
    frontends: &[Arc<Frontend>],
    live: &Live,
    graceful: &Arc<GracefulShutdown>,
    stop: &watch::Receiver<bool>,
) -> Result<Vec<JoinHandle<()>>, StartError> {
    let mut servers = Vec::new();
    for (frontend, cfg) in frontends.iter().zip(&config.frontends) {
        let socket = listener::bind(cfg.bind).map_err(|source| StartError::Bind {
            what: format!("frontend {}", cfg.name),
            addr: cfg.bind,
            source,
        })?;
        tracing::info!(frontend = %frontend.name, addr = %cfg.bind, backend = %frontend.backend.name, "listening");
        servers.push(tokio::spawn(listener::serve(
            socket,
            Arc::clone(frontend),
            Arc::clone(live.proxy()),
            Arc::clone(live.conn_settings()),
            Arc::clone(graceful),
            stop.clone(),
        )));
    }
    Ok(servers)
}

/// SIGHUP: re-reads `path` and applies it in place. An invalid file, or one that needs an
/// upgrade, is refused with a log line and the running configuration stays.
fn reload_in_place(live: &Live, path: &Path) {
    tracing::info!(path = %path.display(), "SIGHUP received: reloading the configuration");
    reload::log_outcome(&reload::reload_from(live, path));
}

/// The backends' runtime state (their tables journaling to `journal`) and the frontends that
/// route to them. Validation guarantees every frontend names a configured backend.
pub fn routing(config: &Config, journal: &Journal) -> (Vec<Arc<BackendState>>, Vec<Arc<Frontend>>) {
    let backends: Vec<Arc<BackendState>> = config
        .backends
        .iter()
        .map(|b| Arc::new(BackendState::new(b, journal.clone())))
        .collect();
    let frontends = config
        .frontends
        .iter()
        .filter_map(|f| {
            let backend = backends.iter().find(|b| b.name == f.backend)?;
            Some(Arc::new(Frontend {
                name: f.name.clone(),
                backend: Arc::clone(backend),
            }))
        })
        .collect();
    (backends, frontends)
}

/// Binds the peers port and starts a session task per other member.
async fn start_peers(
    config: &Config,
    peers: &crate::config::Peers,
    backends: &[Arc<BackendState>],
    journal: &Journal,
) -> Result<peers::node::Peers, StartError> {
    let listener = peers::node::bind(peers.bind)
        .await
        .map_err(|source| StartError::Bind {
            what: "the peers port".into(),
            addr: peers.bind,
            source,
        })?;
    let synced: Vec<(Arc<BackendState>, u8)> = backends
        .iter()
        .zip(&config.backends)
        .map(|(backend, cfg)| (Arc::clone(backend), cfg.peer_key_len))
        .collect();
    tracing::info!(addr = %peers.bind, members = peers.members.len(), "peers listening");
    Ok(peers::node::start(
        listener,
        peers,
        &config.instance.name,
        &synced,
        journal,
    ))
}

async fn drain(graceful: Arc<GracefulShutdown>, limit: Duration) {
    let Ok(graceful) = Arc::try_unwrap(graceful) else {
        tracing::warn!("listeners still hold connections; not waiting for them");
        return;
    };
    if tokio::time::timeout(limit, graceful.shutdown())
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

/// Loads the durable entries into the backends' in-memory tables, oldest first, and forgets
/// the ones that expired meanwhile or whose backend is gone from the configuration.
fn adopt_entries(durable: &DurableTable, backends: &[Arc<BackendState>], journal: &Journal) {
    let by_id: HashMap<u32, &Arc<BackendState>> = backends.iter().map(|b| (b.id, b)).collect();
    let now = table::now_ms();
    let (mut adopted, mut expired, mut orphaned) = (0usize, 0usize, 0usize);
    for (key, entry) in durable.entries() {
        let Some(backend) = by_id.get(&key.backend_id) else {
            orphaned += 1;
            journal.send(JournalOp::Delete(key));
            continue;
        };
        let server: Arc<str> = Arc::from(field_text(&entry.server));
        if backend.table.adopt(key, server, entry.last_seen_ms, now) {
            adopted += 1;
        } else {
            expired += 1;
            journal.send(JournalOp::Delete(key));
        }
    }
    tracing::info!(
        adopted,
        expired,
        orphaned,
        "loaded the stick table from the pinned map"
    );
}

async fn sweep_expired(backends: Vec<Arc<BackendState>>) {
    let mut ticker = tokio::time::interval(Duration::from_secs(1));
    loop {
        ticker.tick().await;
        let now = table::now_ms();
        for backend in &backends {
            let expired = backend.table.sweep_expired(now);
            if expired > 0 {
                tracing::debug!(backend = %backend.name, expired, "expired idle sessions");
            }
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
