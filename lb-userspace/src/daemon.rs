//! `stickylb run`: wires the configuration, the durable table, the backends, the listeners and
//! the monitor together, reloads the configuration in place on SIGHUP, and stops them in order.
//!
//! This is the wiring: it depends on every other module, and none depends on it (what the
//! monitor shows is the monitor's [`Shared`]; what routes where is [`crate::routing`]). Its
//! parts: `durable` opens the pinned table and sweeps it, `sockets` binds the listening
//! sockets or takes them over, `signals` turns signals into events, `error` says why a start
//! failed.

mod durable;
mod error;
mod memory;
mod signals;
mod sockets;

use std::{path::PathBuf, sync::Arc, time::Duration};

use tokio::{
    net::TcpListener,
    sync::{watch, Notify},
    task::JoinHandle,
};

pub use self::error::StartError;
use self::{
    durable::{
        adopt_table, check_durability, forget_orphaned_settings, open_durable, open_settings,
        sweep_expired,
    },
    signals::{Event, Signals},
    sockets::{finish_takeover, take_over, Sockets},
};
use crate::{
    backend::BackendState,
    config::{Config, FastPathMode, FastPathXdp, ShieldHook},
    control::{self, systemd},
    dataplane::{self, DataplaneError},
    error_chain, fastpath,
    monitor::{self, Shared},
    operate::Operator,
    peers,
    proxy::{drain::Drain, listener, workers::Workers, Frontend},
    reload::{self, Live},
    routing, shield,
    table::{self, Store},
};

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
    let origin = dataplane::prepare_pin_root(&pin_root)?;
    let table_durable = check_durability(&pin_root, origin);
    let durable = open_durable(&config, &pin_root, sockets.takeover.is_some())?;
    let map_capacity = durable.capacity()?;
    let store = Store::new(Arc::new(durable), config.peers.is_some());
    let settings = open_settings(&pin_root)?;
    let (backends, frontends) = routing::build(&config, &store, &settings);
    forget_orphaned_settings(&settings, &backends);
    adopt_table(&store, &backends)?;

    let mut live = Live::start(config.clone(), (backends.clone(), frontends.clone()));
    let mut tasks: Vec<JoinHandle<()>> = Vec::new();
    // Known before the fast path starts: it leaves XDP on these interfaces to the shield,
    // unless the shield keeps to TC (`hook = "tc"`).
    let shielded = if config.shield.enabled {
        match shield_interfaces(&config) {
            Ok(interfaces) => interfaces,
            Err(error) if config.shield.by_default => {
                shield_not_started(&error);
                Vec::new()
            }
            Err(error) => return Err(error),
        }
    } else {
        Vec::new()
    };
    let xdp_shielded = match config.shield.hook {
        ShieldHook::Tc => &[][..],
        ShieldHook::Auto | ShieldHook::Xdp => &shielded[..],
    };
    let fastpath = start_fastpath(&config, &frontends, xdp_shielded)?;
    let shield = match start_shield(&config, &pin_root, shielded.clone()) {
        Ok(shield) => shield,
        Err(error) if config.shield.by_default => {
            shield_not_started(&error);
            // What did attach before the failure goes too: a shield is whole or absent.
            let _ = start_shield(&config, &pin_root, Vec::new());
            if let Some(runtime) = &fastpath {
                runtime
                    .take_back_xdp(&shielded)
                    .map_err(StartError::FastPath)?;
            }
            None
        }
        Err(error) => return Err(error),
    };
    if shield.is_some() {
        live.set_shield_root(pin_root.clone());
    }
    let live = Arc::new(live);
    if let Some(runtime) = &fastpath {
        tasks.push(tokio::spawn(fastpath::runtime::collect_forever(
            Arc::clone(runtime),
        )));
    }
    let peer_links = match &config.peers {
        Some(peers) => {
            let listener = sockets.listen("peers", peers.bind, "the peers port")?;
            let running = start_peers(&config, peers, listener, &backends, &store)?;
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
        shield,
        cookie_mask: monitor::CookieMask::random(),
        auth: monitor_auth(&config),
        table_durable,
    });

    tasks.push(tokio::spawn(memory::give_back_freed_memory()));
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
        operate: {
            let operator = Operator::new(backends.clone());
            Box::new(move |operation| operator.apply(operation))
        },
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

/// `[monitor] auth`, as the monitor checks it.
fn monitor_auth(config: &Config) -> Option<monitor::BasicAuth> {
    let auth = config.monitor.as_ref()?.auth.as_ref()?;
    Some(monitor::BasicAuth::new(&auth.user, auth.password.reveal()))
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

/// Loads and attaches the kernel fast path when a frontend has `fastpath = "splice"`, and
/// gives it to those frontends. The pinned maps and links of a previous process are adopted.
fn start_fastpath(
    config: &Config,
    frontends: &[Arc<Frontend>],
    shielded: &[String],
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
        xdp: config.fastpath.xdp == FastPathXdp::Auto,
        shielded: shielded.to_vec(),
    };
    let runtime = fastpath::Runtime::start(&root, &interfaces, options)
        .map(Arc::new)
        .map_err(StartError::FastPath)?;
    for (frontend, cfg) in frontends.iter().zip(&config.frontends) {
        if cfg.fastpath == FastPathMode::Splice {
            let _ = frontend.fastpath.set(Arc::clone(&runtime));
        }
    }
    Ok(Some(runtime))
}

/// Loads the shield, writes its SYN limit and attaches it to its interfaces when `[shield]
/// enabled`; the pinned maps and links of a previous process are adopted. The attachment
/// outlives this process (its links are pinned), so the shield keeps working across a restart
/// or an upgrade. What is attached, when it is on.
///
/// A shield the file enables must start, or the daemon does not. One the default enables is
/// an extra: where it cannot attach (another XDP program holds an interface) or load, the
/// daemon says so and serves without it, as it did before the shield existed.
fn start_shield(
    config: &Config,
    pin_root: &std::path::Path,
    interfaces: Vec<String>,
) -> Result<Option<shield::Attached>, StartError> {
    if interfaces.is_empty() {
        detach_shield_links(pin_root, &[])?;
        if shield::refund::detach(pin_root).map_err(StartError::Shield)? {
            tracing::info!("shield: detached the refund (sock_ops)");
        }
        return Ok(None);
    }
    // With the fast path translating at XDP, the shield's program translates too on the
    // interfaces it holds (one XDP program per interface); the fast path has pinned its maps.
    // Not when the shield keeps to TC: the fast path's own XDP program translates then.
    let program = if config.splices()
        && config.fastpath.xdp == FastPathXdp::Auto
        && config.shield.hook != ShieldHook::Tc
    {
        shield::program::Program::WithTranslation
    } else {
        shield::program::Program::Shield
    };
    let mut loaded = shield::Shield::load_program(pin_root, program).map_err(StartError::Shield)?;
    let limit = shield::SynLimit {
        rate: config.shield.syn_rate,
        burst: config.shield.syn_burst,
    };
    // Before attaching: the first packet already meets the limit of this configuration.
    shield::limit::write_pinned(pin_root, limit).map_err(StartError::Shield)?;
    let mut attached = shield::Attached {
        root: pin_root.to_owned(),
        interfaces: Vec::new(),
        refund: None,
    };
    // Before the XDP program: a connection established from here on gives its SYN back, and
    // only SYNs to the frontends count against the limit.
    let ports: Vec<u16> = config.frontends.iter().map(|f| f.bind.port()).collect();
    loaded.limit_ports(&ports).map_err(StartError::Shield)?;
    // Without the refund the shield still works as it did before the refund existed (every
    // SYN counts): a host where no cgroup v2 can be mounted (a container without the privilege)
    // keeps its shield rather than failing the start.
    match loaded.attach_refund(&ports) {
        Ok(refund) => {
            tracing::info!(
                ?refund,
                ?ports,
                "shield: refund attached (sock_ops): SYNs that become connections are not limited"
            );
            attached.refund = Some(refund);
        }
        Err(error) => tracing::warn!(
            error = %crate::error_chain(&error),
            "shield: the refund could not attach; every SYN counts against the limit, completed \
             connections included"
        ),
    }
    if config.shield.by_default {
        tracing::info!(
            "shield: on by default, as a frontend binds an address the network reaches \
             (`[shield] enabled = false` turns it off)"
        );
    }
    let mut links = Vec::new();
    for interface in interfaces {
        let driver = crate::sys::net::driver_name(&interface)
            .inspect_err(|error| tracing::debug!(%interface, %error, "no driver name"))
            .ok();
        let hook = shield::program::choose_hook(config.shield.hook, program, driver.as_deref());
        let (mode, link) = loaded
            .attach(&interface, hook)
            .map_err(StartError::Shield)?;
        tracing::info!(
            %interface,
            driver = %driver.as_deref().unwrap_or("unknown"),
            hook = %config.shield.hook.as_str(),
            mode = %mode.as_str(),
            ?program,
            syn_rate = limit.rate,
            syn_burst = limit.burst,
            "shield attached"
        );
        attached.interfaces.push((interface, mode));
        links.push(link);
    }
    // After attaching, so that an interface moving between XDP and TC is never unshielded.
    detach_shield_links(pin_root, &links)?;
    Ok((!attached.interfaces.is_empty()).then_some(attached))
}

/// A shield on by default that could not start: the daemon serves without it, as it did before
/// the shield existed, and says so.
fn shield_not_started(error: &StartError) {
    tracing::warn!(
        error = %crate::error_chain(error),
        "shield: on by default but could not start; serving without it (`[shield] enabled = \
         true` makes this an error, `enabled = false` silences it)"
    );
}

/// Removes the shield's pinned links under `pin_root` but `keep`: a previous process's
/// attachments outlive it.
fn detach_shield_links(
    pin_root: &std::path::Path,
    keep: &[std::path::PathBuf],
) -> Result<(), StartError> {
    let detached = shield::program::detach_others(pin_root, keep).map_err(StartError::Shield)?;
    for link in detached {
        tracing::info!(link = %link.display(), "shield: detached a link no longer in use");
    }
    Ok(())
}

/// `[shield] interfaces`, or those carrying the frontends' addresses; none found is an error.
fn shield_interfaces(config: &Config) -> Result<Vec<String>, StartError> {
    if !config.shield.interfaces.is_empty() {
        return Ok(config.shield.interfaces.clone());
    }
    let binds: Vec<_> = config.frontends.iter().map(|f| f.bind.ip()).collect();
    let found = shield::interfaces::of_binds(&binds).map_err(StartError::Shield)?;
    if found.wildcard {
        tracing::info!(
            interfaces = ?found.names,
            "shield: a frontend binds a wildcard address; shielding every interface that is up, \
             not loopback and has an address"
        );
    }
    if found.names.is_empty() {
        return Err(StartError::Shield(shield::ShieldError::NoInterface));
    }
    Ok(found.names)
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
) -> Result<peers::node::Peers, peers::tls::TlsSetupError> {
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
