//! What peers need from a stick table: the log of local changes to push, a full copy to teach
//! a peer that asks for a resync, and applying what a peer pushed.
//!
//! Convergence rule. A peer's entry that names another server than ours replaces ours, unless:
//! - both choices were made within [`CONFLICT_WINDOW_MS`] of each other (two nodes balanced the
//!   same new cookie at the same moment): then the server with the lower [`rank`] of
//!   (cookie, server) wins on every node, whoever decided it;
//! - or it comes with its remaining lifetime (a resync) and is older than ours by more than
//!   [`STALE_SLACK_MS`]: the more recently used entry wins.
//!
//! Whenever such a conflict changes or keeps our entry, the result is pushed again to every
//! peer. HAProxy overwrites blindly with whatever it receives last, so this re-push is what
//! brings an HAProxy peer to the same answer; between stickylb nodes it is a no-op.

use std::sync::Arc;

use lb_common::StickKey;

use super::{JournalOp, Slot, StickTable};

/// Two decisions for one key closer than this are concurrent.
pub const CONFLICT_WINDOW_MS: u64 = 2_000;

/// Last-seen times closer than this are too close to call (clocks and transit differ).
const STALE_SLACK_MS: u64 = 1_000;

/// A local change to push: the key and its current server.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pending {
    /// Position in the update log: push from the last position sent.
    pub seq: u64,
    pub key: StickKey,
    pub server: Arc<str>,
}

/// An entry to teach in a full resync, with its remaining lifetime.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TeachEntry {
    pub key: StickKey,
    pub server: Arc<str>,
    pub remaining_ms: u64,
}

/// What applying a peer's entry did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RemoteOutcome {
    /// We had no live entry for the key.
    Inserted,
    /// We had the same server; its last-seen time may have moved forward.
    Refreshed,
    /// We had another server and took the peer's (pushed again to every peer).
    Replaced,
    /// We had another server and kept it by the convergence rule (pushed again to every peer).
    KeptOurs,
    /// The entry had already expired.
    Expired,
}

impl StickTable {
    /// The last update log position.
    pub fn last_seq(&self) -> u64 {
        self.lock().last_seq
    }

    /// Up to `limit` local changes after log position `after`, oldest first, each with the
    /// key's current server.
    pub fn updates_after(&self, after: u64, limit: usize) -> Vec<Pending> {
        let inner = self.lock();
        inner
            .updates
            .range(after.saturating_add(1)..)
            .take(limit)
            .filter_map(|(&seq, key)| {
                let slot = inner.lru.peek(key)?;
                Some(Pending {
                    seq,
                    key: *key,
                    server: Arc::clone(&slot.server),
                })
            })
            .collect()
    }

    /// Every live entry with its remaining lifetime, and the update log position it reflects:
    /// after teaching these, a session pushes the changes after that position.
    pub fn teach_snapshot(&self, now_ms: u64) -> (u64, Vec<TeachEntry>) {
        let inner = self.lock();
        let entries = inner
            .lru
            .iter()
            .rev()
            .filter_map(|(key, slot)| {
                let idle = now_ms.saturating_sub(slot.last_seen_ms);
                let remaining_ms = self.expire_ms.checked_sub(idle).filter(|&r| r > 0)?;
                Some(TeachEntry {
                    key: *key,
                    server: Arc::clone(&slot.server),
                    remaining_ms,
                })
            })
            .collect();
        (inner.last_seq, entries)
    }

    /// Applies an entry pushed by a peer: `key` stuck to `server`, with `remaining_ms` of its
    /// lifetime left when the peer said so (resyncs), else a full lifetime (live updates).
    /// Not echoed back, except when the convergence rule (module docs) had to decide.
    pub fn apply_remote(
        &self,
        key: StickKey,
        server: Arc<str>,
        remaining_ms: Option<u64>,
        now_ms: u64,
    ) -> RemoteOutcome {
        let last_seen = match remaining_ms {
            Some(remaining) => now_ms.saturating_sub(self.expire_ms.saturating_sub(remaining)),
            None => now_ms,
        };
        if remaining_ms == Some(0) || self.is_expired(last_seen, now_ms) {
            return RemoteOutcome::Expired;
        }
        let mut inner = self.lock();
        let mut ops = Vec::new();
        if let Some(slot) = inner.lru.peek(&key) {
            if self.is_expired(slot.last_seen_ms, now_ms) {
                inner.remove(&key);
                ops.push(JournalOp::Delete(key));
            }
        }
        let (outcome, seq) = match inner.lru.peek_mut(&key) {
            None => {
                if let Some(evicted) =
                    inner.push(key, Slot::new(Arc::clone(&server), last_seen, now_ms))
                {
                    ops.push(JournalOp::Delete(evicted));
                }
                ops.extend(self.durable_put(&key, &server, last_seen));
                (RemoteOutcome::Inserted, None)
            }
            Some(slot) if slot.server == server => {
                if last_seen > slot.last_seen_ms {
                    slot.last_seen_ms = last_seen;
                    if last_seen.saturating_sub(slot.persisted_ms)
                        >= super::TOUCH_PERSIST_INTERVAL_MS
                    {
                        slot.persisted_ms = last_seen;
                        ops.extend(self.durable_put(&key, &server, last_seen));
                    }
                }
                (RemoteOutcome::Refreshed, None)
            }
            Some(slot) => {
                let concurrent = now_ms.saturating_sub(slot.decided_ms) < CONFLICT_WINDOW_MS;
                let keep_ours = if concurrent {
                    rank(&key, &slot.server) < rank(&key, &server)
                } else {
                    remaining_ms.is_some()
                        && last_seen.saturating_add(STALE_SLACK_MS) < slot.last_seen_ms
                };
                if keep_ours {
                    (RemoteOutcome::KeptOurs, inner.log_update(&key))
                } else {
                    slot.server = Arc::clone(&server);
                    slot.last_seen_ms = slot.last_seen_ms.max(last_seen);
                    slot.persisted_ms = slot.last_seen_ms;
                    slot.decided_ms = now_ms;
                    let last_seen = slot.last_seen_ms;
                    ops.extend(self.durable_put(&key, &server, last_seen));
                    (RemoteOutcome::Replaced, inner.log_update(&key))
                }
            }
        };
        drop(inner);
        ops.into_iter().for_each(|op| self.journal(op));
        self.announce(seq);
        outcome
    }
}

/// The order in which concurrent choices for one session win: the same on every node, and
/// spread over servers (a plain name order would favour low names). FNV-1a 64 of the cookie
/// field, a NUL, and the server name.
pub fn rank(key: &StickKey, server: &str) -> u64 {
    key.cookie
        .iter()
        .take_while(|&&b| b != 0)
        .chain(&[0])
        .chain(server.as_bytes())
        .fold(0xcbf2_9ce4_8422_2325, |hash, &byte| {
            (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3)
        })
}
