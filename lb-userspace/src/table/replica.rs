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

use std::{
    collections::{BTreeMap, HashMap},
    sync::{atomic::Ordering, Arc},
};

use lb_common::StickKey;

use super::{field_text, Slot, StickTable};

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

/// Local changes in the order they happened, one position per key (its latest change), as
/// HAProxy's update tree: a lagging peer gets each changed key once, with its current value.
/// Kept only when there are peers; bounded by the table's size (a peer further behind than
/// that has missed changes, as it would with HAProxy, until its next resync).
pub(super) struct UpdateLog {
    enabled: bool,
    bound: usize,
    order: BTreeMap<u64, StickKey>,
    position: HashMap<StickKey, u64>,
    last_seq: u64,
}

impl UpdateLog {
    pub(super) fn new(enabled: bool, bound: usize) -> Self {
        Self {
            enabled,
            bound: bound.max(1),
            order: BTreeMap::new(),
            position: HashMap::new(),
            last_seq: 0,
        }
    }

    /// Moves `key` to the end of the log. Returns its new position (None when not logging).
    pub(super) fn record(&mut self, key: StickKey) -> Option<u64> {
        if !self.enabled {
            return None;
        }
        self.last_seq += 1;
        let seq = self.last_seq;
        if let Some(old) = self.position.insert(key, seq) {
            self.order.remove(&old);
        }
        self.order.insert(seq, key);
        if self.order.len() > self.bound {
            if let Some((_, oldest)) = self.order.pop_first() {
                self.position.remove(&oldest);
            }
        }
        Some(seq)
    }

    pub(super) fn forget(&mut self, key: &StickKey) {
        if let Some(seq) = self.position.remove(key) {
            self.order.remove(&seq);
        }
    }
}

impl StickTable {
    /// The last update log position.
    pub fn last_seq(&self) -> u64 {
        self.lock().log.last_seq
    }

    /// Up to `limit` local changes after log position `after`, oldest first, each with the
    /// key's current server. Keys no longer in the table are left out.
    pub fn updates_after(&self, after: u64, limit: usize) -> Vec<Pending> {
        let logged: Vec<(u64, StickKey, Option<Arc<str>>)> = {
            let inner = self.lock();
            inner
                .log
                .order
                .range(after.saturating_add(1)..)
                .take(limit)
                .map(|(&seq, key)| {
                    let server = inner.recent.peek(key).map(|s| Arc::clone(&s.server));
                    (seq, *key, server)
                })
                .collect()
        };
        logged
            .into_iter()
            .filter_map(|(seq, key, server)| {
                let server = server.or_else(|| {
                    let entry = self.store.get(&key)?;
                    Some(Arc::from(field_text(&entry.server)))
                })?;
                Some(Pending { seq, key, server })
            })
            .collect()
    }

    /// Every live entry with its remaining lifetime, oldest first, and the update log position
    /// it reflects: after teaching these, a session pushes the changes after that position.
    pub fn teach_snapshot(&self, now_ms: u64) -> (u64, Vec<TeachEntry>) {
        let seq = self.last_seq();
        let mut stored = Vec::new();
        if let Err(error) = self.scan_own(&mut |key, entry| stored.push((*key, *entry))) {
            tracing::error!(%error, "reading the stick table for a resync failed");
        }
        let mut entries: Vec<(u64, TeachEntry)> = {
            let inner = self.lock();
            stored
                .into_iter()
                .filter_map(|(key, entry)| {
                    let (server, last_seen_ms) = match inner.recent.peek(&key) {
                        Some(slot) => (Arc::clone(&slot.server), slot.last_seen_ms),
                        None => (Arc::from(field_text(&entry.server)), entry.last_seen_ms),
                    };
                    let idle = now_ms.saturating_sub(last_seen_ms);
                    let remaining_ms = self.expire_ms.checked_sub(idle).filter(|&r| r > 0)?;
                    let teach = TeachEntry {
                        key,
                        server,
                        remaining_ms,
                    };
                    Some((last_seen_ms, teach))
                })
                .collect()
        };
        entries.sort_by_key(|(last_seen_ms, _)| *last_seen_ms);
        (seq, entries.into_iter().map(|(_, teach)| teach).collect())
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
        if let Some(outcome) = self.insert_unknown(&key, &server, last_seen, now_ms) {
            return outcome;
        }
        let mut guard = self.recall(&key);
        let inner = &mut *guard;
        let (outcome, log) = match self.live(inner, &key, now_ms) {
            None => {
                if self.store.put(&key, &server, last_seen) {
                    self.stored.fetch_add(1, Ordering::Relaxed);
                }
                inner
                    .recent
                    .push(key, Slot::decided(server, last_seen, now_ms));
                (RemoteOutcome::Inserted, false)
            }
            Some(slot) if slot.server == server => {
                if last_seen > slot.last_seen_ms {
                    self.touch(&key, slot, last_seen);
                }
                (RemoteOutcome::Refreshed, false)
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
                    (RemoteOutcome::KeptOurs, true)
                } else {
                    slot.last_seen_ms = slot.last_seen_ms.max(last_seen);
                    slot.persisted_ms = slot.last_seen_ms;
                    slot.decided_ms = now_ms;
                    self.store.put(&key, &server, slot.last_seen_ms);
                    slot.server = server;
                    (RemoteOutcome::Replaced, true)
                }
            }
        };
        let seq = if log { inner.log.record(key) } else { None };
        drop(guard);
        self.announce(seq);
        outcome
    }

    /// Applies a peer's entry for a key that is neither recent nor stored (a new session: most
    /// live updates) with one write that fails if the store has an entry, instead of a read
    /// that misses and a write: half the syscalls of a mirrored session. None when the key is
    /// known (or the write failed): the caller decides with the entry it has.
    fn insert_unknown(
        &self,
        key: &StickKey,
        server: &Arc<str>,
        last_seen: u64,
        now_ms: u64,
    ) -> Option<RemoteOutcome> {
        if self.lock().recent.contains(key) {
            return None;
        }
        if self.store.insert_new(key, server, last_seen) != Some(true) {
            return None;
        }
        self.stored.fetch_add(1, Ordering::Relaxed);
        let mut inner = self.lock();
        match inner.recent.peek_mut(key) {
            // A request for the key came in meanwhile and read ours back from the store.
            Some(slot) if slot.server == *server => slot.decided_ms = now_ms,
            // Another write replaced ours meanwhile; the recent entry is that one's.
            Some(_) => {}
            None => {
                inner
                    .recent
                    .push(*key, Slot::decided(Arc::clone(server), last_seen, now_ms));
            }
        }
        Some(RemoteOutcome::Inserted)
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
