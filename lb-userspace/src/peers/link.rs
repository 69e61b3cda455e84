//! One configured peer and the task that keeps a session with it: dial when there is none,
//! take over a session the peer opened to us (the newest wins, as in HAProxy), and back off
//! between failed attempts (docs/PEERS.md, "Reconnection").

use std::{
    net::SocketAddr,
    sync::{atomic::Ordering::Relaxed, Arc},
    time::Duration,
};

use rand::Rng as _;
use tokio::sync::{mpsc, watch};

use super::{
    connect::{dial, ConnectError, Opened},
    driver::{self, Peer, Resume},
    stats::{PeerState, PeerStats},
    tables::SyncedTable,
    tls::PeerTls,
};
use crate::{error_chain, table::now_ms};

/// The first retry after a failed connect; doubled per failure up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(250);
/// The longest wait between connects to an unreachable peer. HAProxy waits 5 s; 1 s bounds how
/// long a healed partition waits for its first session (tables identical within 2 s of the
/// heal is the goal), and a failed connect to each of N-1 peers once a second costs nothing.
const MAX_BACKOFF: Duration = Duration::from_secs(1);

/// A configured peer other than ourselves.
pub struct PeerLink {
    pub name: String,
    pub addr: SocketAddr,
    pub stats: PeerStats,
    /// Dial over mutual TLS when set.
    tls: Option<PeerTls>,
    /// Per table: the update log position the peer acknowledged, where a new session resumes.
    resume: Resume,
    /// Sessions the peer opened to us, handed to the link's task.
    incoming: mpsc::Sender<Opened>,
}

impl PeerLink {
    /// A link and the receiving end of its incoming sessions, for [`PeerLink::run`].
    pub fn new(
        name: String,
        addr: SocketAddr,
        tls: Option<PeerTls>,
        tables: usize,
    ) -> (Arc<Self>, mpsc::Receiver<Opened>) {
        let (incoming, rx) = mpsc::channel(2);
        let link = Self {
            name,
            addr,
            stats: PeerStats::default(),
            tls,
            resume: Resume::new(tables),
            incoming,
        };
        link.stats.set_state(PeerState::Down);
        (Arc::new(link), rx)
    }

    /// Hands a session the peer opened to the link's task. Returns false when the task is
    /// busy taking over another one (the peer will call again).
    pub fn offer(&self, opened: Opened) -> bool {
        self.incoming.try_send(opened).is_ok()
    }

    /// Keeps a session with the peer until the daemon stops.
    pub async fn run(
        self: Arc<Self>,
        mut incoming: mpsc::Receiver<Opened>,
        local_name: String,
        tables: Arc<[SyncedTable]>,
        changes: watch::Receiver<u64>,
    ) {
        let mut backoff = FIRST_BACKOFF;
        let mut delay = Duration::ZERO;
        loop {
            let opened = tokio::select! {
                Some(opened) = incoming.recv() => opened,
                () = tokio::time::sleep(delay) => {
                    self.stats.set_state(PeerState::Connecting);
                    match dial(self.addr, &self.name, &local_name, self.tls.as_ref()).await {
                        Ok(opened) => opened,
                        Err(error) => {
                            self.attempt_failed(&error, backoff);
                            delay = jitter(backoff);
                            backoff = (backoff * 2).min(MAX_BACKOFF);
                            continue;
                        }
                    }
                }
            };
            backoff = FIRST_BACKOFF;
            let mut opened = opened;
            // A session ends by itself, or is replaced by a newer one the peer opened.
            loop {
                self.established(&opened);
                let peer = Peer {
                    name: &self.name,
                    stats: &self.stats,
                    resume: &self.resume,
                };
                tokio::select! {
                    end = driver::run(opened, &tables, peer, changes.clone()) => {
                        let why = error_chain(&end);
                        tracing::warn!(peer = %self.name, "peer session closed: {why}");
                        self.stats.set_last_error(why);
                        self.stats.set_state(PeerState::Down);
                        break;
                    }
                    Some(newer) = incoming.recv() => {
                        tracing::info!(peer = %self.name, "peer opened a new session; closing the old one");
                        opened = newer;
                    }
                }
            }
            // HAProxy's pause before redialling a closed session: spreads the two sides'
            // attempts so that they don't keep replacing each other's sessions.
            delay = Duration::from_millis(rand::thread_rng().gen_range(50..2050));
        }
    }

    fn established(&self, opened: &Opened) {
        PeerStats::add(&self.stats.sessions, 1);
        self.stats.set_state(PeerState::Established);
        self.stats.last_received_ms.store(now_ms(), Relaxed);
        tracing::info!(peer = %self.name, remote = %opened.remote, version = %opened.version, "peer session established");
    }

    fn attempt_failed(&self, error: &ConnectError, backoff: Duration) {
        self.stats.set_state(PeerState::Down);
        let message = error_chain(error);
        // A peer that is simply not up yet is routine: log it once per change of reason.
        if self.stats.last_error().as_deref() != Some(message.as_str()) {
            tracing::warn!(peer = %self.name, addr = %self.addr, retry_in = ?backoff, "cannot open a session with the peer: {message}");
        }
        self.stats.set_last_error(message);
    }
}

/// `backoff` give or take a quarter, so that peers do not retry in lockstep.
fn jitter(backoff: Duration) -> Duration {
    let quarter = backoff / 4;
    backoff - quarter + quarter.mul_f64(2.0 * rand::thread_rng().gen::<f64>())
}
