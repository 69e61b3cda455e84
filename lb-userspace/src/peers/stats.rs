//! What the monitor shows of each peer: its session state and counters.

use std::sync::{
    atomic::{AtomicU64, AtomicU8, Ordering::Relaxed},
    Mutex, PoisonError,
};

/// Where a peer's session stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PeerState {
    /// Dialling, or waiting for the handshake answer.
    Connecting,
    /// Session open, messages flowing.
    Established,
    /// No session; waiting before the next attempt (or for the peer to call).
    Down,
}

impl PeerState {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Connecting => "connecting",
            Self::Established => "established",
            Self::Down => "down",
        }
    }

    fn from_u8(value: u8) -> Self {
        match value {
            1 => Self::Established,
            2 => Self::Down,
            _ => Self::Connecting,
        }
    }

    fn to_u8(self) -> u8 {
        match self {
            Self::Connecting => 0,
            Self::Established => 1,
            Self::Down => 2,
        }
    }
}

/// Counters of one peer, across its sessions.
#[derive(Default)]
pub struct PeerStats {
    state: AtomicU8,
    /// Unix ms of the last message received (a heartbeat or anything else); 0 for never.
    pub last_received_ms: AtomicU64,
    /// Sessions established, dialled or accepted.
    pub sessions: AtomicU64,
    pub updates_sent: AtomicU64,
    pub updates_received: AtomicU64,
    /// Our updates the peer acknowledged.
    pub updates_acked: AtomicU64,
    /// Full resyncs we taught the peer (it asked).
    pub resyncs_taught: AtomicU64,
    /// Full resyncs the peer taught us (we asked).
    pub resyncs_learned: AtomicU64,
    /// Received entries naming a server this node does not have: kept, never routed to.
    pub unknown_servers: AtomicU64,
    /// Received entries that disagreed with a recent choice of ours and were settled by the
    /// convergence rule.
    pub conflicts: AtomicU64,
    /// Local entries not sent because their key is longer than the table's peer key length.
    pub keys_too_long: AtomicU64,
    last_error: Mutex<Option<String>>,
}

impl PeerStats {
    pub fn state(&self) -> PeerState {
        PeerState::from_u8(self.state.load(Relaxed))
    }

    pub fn set_state(&self, state: PeerState) {
        self.state.store(state.to_u8(), Relaxed);
    }

    /// Why the last session or attempt ended, if one did.
    pub fn last_error(&self) -> Option<String> {
        self.last_error
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    pub fn set_last_error(&self, error: String) {
        *self
            .last_error
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(error);
    }

    pub(super) fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Relaxed);
    }
}
