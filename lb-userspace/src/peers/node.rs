//! This node's part in the peers section: the listener on the peers port and one
//! [`PeerLink`] task per other member.

use std::{io, net::SocketAddr, sync::Arc};

use tokio::{
    net::{TcpListener, TcpStream},
    sync::Semaphore,
    task::JoinHandle,
};

use super::{
    connect::{answer, ConnectError},
    link::PeerLink,
    tables::SyncedTable,
};
use crate::{backend::BackendState, config, error_chain, table::Store};

/// Handshakes in progress at once on the peers port; more connections wait in the backlog, so
/// a flood of idle connections cannot pin the daemon's memory.
const MAX_HANDSHAKES: usize = 32;

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
) -> Peers {
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
        let (link, incoming) = PeerLink::new(member.name.clone(), member.addr, tables.len());
        tasks.push(tokio::spawn(Arc::clone(&link).run(
            incoming,
            local_name.to_owned(),
            Arc::clone(&tables),
            store.watch_local_changes(),
        )));
        links.push(link);
    }
    let members: Vec<String> = peers.members.iter().map(|m| m.name.clone()).collect();
    tasks.push(tokio::spawn(accept(
        listener,
        local_name.to_owned(),
        members.into(),
        links.clone(),
    )));
    Peers { links, tasks }
}

async fn accept(
    listener: TcpListener,
    local_name: String,
    members: Arc<[String]>,
    links: Vec<Arc<PeerLink>>,
) {
    let links: Arc<[Arc<PeerLink>]> = links.into();
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
        let (local_name, members, links) =
            (local_name.clone(), Arc::clone(&members), Arc::clone(&links));
        tokio::spawn(async move {
            handshake(stream, remote, &local_name, &members, &links).await;
            drop(permit);
        });
    }
}

async fn handshake(
    stream: TcpStream,
    remote: SocketAddr,
    local_name: &str,
    members: &[String],
    links: &[Arc<PeerLink>],
) {
    let (caller, opened) = match answer(stream, remote, local_name, members).await {
        Ok(answered) => answered,
        Err(ConnectError::Refused(status)) => {
            tracing::info!(%remote, code = status.code(), "peers connection from our own name refused: try again later");
            return;
        }
        Err(error) => {
            tracing::warn!("refused a peers connection: {}", error_chain(&error));
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
