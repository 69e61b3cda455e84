//! This node's part in the peers section: the listener on the peers port and one
//! [`PeerLink`] task per other member.

use std::{
    collections::HashMap,
    io,
    net::{IpAddr, SocketAddr},
    sync::Arc,
    time::{Duration, Instant},
};

use tokio::{
    net::{TcpListener, TcpStream},
    sync::Semaphore,
    task::JoinHandle,
};

use super::{
    connect::{answer, ConnectError},
    link::PeerLink,
    tables::SyncedTable,
    tls::{PeerTls, TlsSetupError},
};
use crate::{
    backend::BackendState,
    config::{self, Cidr},
    error_chain,
    table::Store,
};

/// Handshakes in progress at once on the peers port; more connections wait in the backlog, so
/// a flood of idle connections cannot pin the daemon's memory.
const MAX_HANDSHAKES: usize = 32;
/// A source outside `allow` is logged at most once per this.
const REFUSAL_LOG_EVERY: Duration = Duration::from_secs(60);
/// Sources remembered for [`REFUSAL_LOG_EVERY`]; beyond this many, new ones are not logged
/// until old ones age out, so that a scan from many addresses holds no more memory than this.
const REFUSAL_LOG_SOURCES: usize = 1024;

/// The running peers machinery.
pub struct Peers {
    /// Every member but ourselves, in configuration order.
    pub links: Vec<Arc<PeerLink>>,
    pub tasks: Vec<JoinHandle<()>>,
}

/// Binds the peers port; fails when it cannot.
pub async fn bind(addr: SocketAddr) -> io::Result<TcpListener> {
    TcpListener::bind(addr).await
}

/// Starts accepting on `listener` and keeping a session with every other member.
pub fn start(
    listener: TcpListener,
    peers: &config::Peers,
    local_name: &str,
    backends: &[(Arc<BackendState>, u8)],
    store: &Store,
) -> Result<Peers, TlsSetupError> {
    let tls = peers.tls.as_ref().map(PeerTls::new).transpose()?;
    let tables: Arc<[SyncedTable]> = backends
        .iter()
        .enumerate()
        .map(|(i, (backend, key_len))| SyncedTable {
            backend: Arc::clone(backend),
            table_id: i as u64 + 1,
            key_len: *key_len,
        })
        .collect();
    let mut links = Vec::new();
    let mut tasks = Vec::new();
    for member in peers.members.iter().filter(|m| m.name != local_name) {
        let (link, incoming) =
            PeerLink::new(member.name.clone(), member.addr, tls.clone(), tables.len());
        tasks.push(tokio::spawn(Arc::clone(&link).run(
            incoming,
            local_name.to_owned(),
            Arc::clone(&tables),
            store.watch_local_changes(),
        )));
        links.push(link);
    }
    let members: Vec<String> = peers.members.iter().map(|m| m.name.clone()).collect();
    let answering = Answering {
        local_name: local_name.to_owned(),
        members: members.into(),
        links: links.clone().into(),
        tls,
    };
    tasks.push(tokio::spawn(accept(
        listener,
        peers.allow.clone(),
        Arc::new(answering),
    )));
    Ok(Peers { links, tasks })
}

/// What answering a connection on the peers port needs.
struct Answering {
    local_name: String,
    /// Every member's name, ours included.
    members: Arc<[String]>,
    links: Arc<[Arc<PeerLink>]>,
    tls: Option<PeerTls>,
}

async fn accept(listener: TcpListener, allow: Vec<Cidr>, answering: Arc<Answering>) {
    let mut refusals = RefusalLog::default();
    let handshakes = Arc::new(Semaphore::new(MAX_HANDSHAKES));
    loop {
        let Ok(permit) = Arc::clone(&handshakes).acquire_owned().await else {
            return;
        };
        let (stream, remote) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(error) => {
                // Out of file descriptors and the like: wait a little rather than spin.
                tracing::warn!("peers port: accept failed: {error}");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                continue;
            }
        };
        if !allow.iter().any(|cidr| cidr.contains(remote.ip())) {
            // Closed unread: not a byte of the protocol (or of TLS) for a stranger.
            drop(stream);
            refusals.refused(remote, Instant::now());
            continue;
        }
        let answering = Arc::clone(&answering);
        tokio::spawn(async move {
            handshake(stream, remote, &answering).await;
            drop(permit);
        });
    }
}

async fn handshake(stream: TcpStream, remote: SocketAddr, answering: &Answering) {
    let Answering {
        local_name,
        members,
        links,
        tls,
    } = answering;
    let (caller, opened) = match answer(stream, remote, local_name, members, tls.as_ref()).await {
        Ok(answered) => answered,
        Err(ConnectError::Refused(status)) => {
            tracing::info!(%remote, code = status.code(), "peers connection from our own name refused: try again later");
            return;
        }
        Err(error) => {
            tracing::warn!(%remote, "refused a peers connection: {}", error_chain(&error));
            return;
        }
    };
    match links.iter().find(|link| link.name == caller) {
        Some(link) => {
            if !link.offer(opened) {
                tracing::info!(peer = %caller, %remote, "peer is already opening a session; dropped the extra one");
            }
        }
        None => {
            tracing::warn!(peer = %caller, %remote, "peers connection from a member without a link")
        }
    }
}

/// When each source refused for not being in `allow` was last logged: a warning per source
/// per [`REFUSAL_LOG_EVERY`], so that a scan or a misconfigured peer cannot flood the log.
#[derive(Default)]
struct RefusalLog {
    logged: HashMap<IpAddr, Instant>,
    /// Refusals not logged since the last warning.
    quiet: u64,
}

impl RefusalLog {
    fn refused(&mut self, remote: SocketAddr, now: Instant) {
        if self.should_log(remote.ip(), now) {
            let quiet = std::mem::take(&mut self.quiet);
            tracing::warn!(
                %remote,
                other_refusals_not_logged = quiet,
                "refused a peers connection: the source is not in [peers] allow"
            );
        } else {
            self.quiet += 1;
        }
    }

    fn should_log(&mut self, ip: IpAddr, now: Instant) -> bool {
        let fresh = |at: &Instant| now.duration_since(*at) < REFUSAL_LOG_EVERY;
        if self.logged.get(&ip).is_some_and(fresh) {
            return false;
        }
        if self.logged.len() >= REFUSAL_LOG_SOURCES {
            self.logged.retain(|_, at| fresh(at));
            if self.logged.len() >= REFUSAL_LOG_SOURCES {
                return false;
            }
        }
        self.logged.insert(ip, now);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_source_is_logged_once_a_minute_and_a_scan_holds_bounded_memory() {
        let mut log = RefusalLog::default();
        let start = Instant::now();
        let ip = |n: u32| IpAddr::from(std::net::Ipv4Addr::from(0x0a00_0000 + n));
        assert!(log.should_log(ip(1), start));
        assert!(!log.should_log(ip(1), start + Duration::from_secs(59)));
        assert!(log.should_log(ip(1), start + REFUSAL_LOG_EVERY));
        let later = start + REFUSAL_LOG_EVERY;
        let logged = (2..5000).filter(|&n| log.should_log(ip(n), later)).count();
        assert_eq!(logged, REFUSAL_LOG_SOURCES - 1);
        assert!(log.logged.len() <= REFUSAL_LOG_SOURCES);
        // Once the first ones age out, new sources are logged again.
        assert!(log.should_log(ip(9999), later + REFUSAL_LOG_EVERY));
    }
}
