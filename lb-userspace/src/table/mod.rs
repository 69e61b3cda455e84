//! The stick table: which server each session (cookie value) is stuck to.
//!
//! Each backend has an in-memory table, exact in its LRU bound and expiry, that answers every
//! request. Every change is journaled to the durable copy, a pinned BPF map (see [`pinned`]),
//! so the table outlives the process.

pub mod key;
pub mod pinned;

use std::{
    num::NonZeroU32,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex, MutexGuard,
    },
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use lb_common::{StickEntry, StickKey, SERVER_NAME_LEN};
use lru::LruCache;
use tokio::sync::mpsc;

pub use self::key::{field_text, stick_key, to_field};

/// A change for the durable copy of the table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum JournalOp {
    Put(StickKey, StickEntry),
    Delete(StickKey),
}

/// Where table changes go to become durable. Cloned into every table; the receiving end is
/// drained by the durable writer ([`pinned::spawn_writer`]).
#[derive(Clone)]
pub struct Journal {
    tx: mpsc::UnboundedSender<JournalOp>,
    progress: Arc<JournalProgress>,
}

/// The receiving end of a [`Journal`].
pub struct JournalReceiver {
    rx: mpsc::UnboundedReceiver<JournalOp>,
    progress: Arc<JournalProgress>,
}

#[derive(Default)]
struct JournalProgress {
    sent: AtomicU64,
    applied: AtomicU64,
}

/// A new journal and its receiving end.
pub fn journal() -> (Journal, JournalReceiver) {
    let (tx, rx) = mpsc::unbounded_channel();
    let progress = Arc::new(JournalProgress::default());
    (
        Journal {
            tx,
            progress: Arc::clone(&progress),
        },
        JournalReceiver { rx, progress },
    )
}

impl Journal {
    pub fn send(&self, op: JournalOp) {
        self.progress.sent.fetch_add(1, Ordering::Relaxed);
        if self.tx.send(op).is_err() {
            // The writer is gone (shutdown); nothing will apply this op.
            self.progress.sent.fetch_sub(1, Ordering::Relaxed);
        }
    }

    /// Waits until every op sent so far has been applied, for at most `limit`. Returns whether
    /// it got there.
    pub async fn flushed(&self, limit: Duration) -> bool {
        let target = self.progress.sent.load(Ordering::Relaxed);
        let deadline = tokio::time::Instant::now() + limit;
        while self.progress.applied.load(Ordering::Relaxed) < target {
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        true
    }
}

impl JournalReceiver {
    /// The next op, blocking the calling (non-async) thread; `None` once every sender is gone.
    pub fn blocking_recv(&mut self) -> Option<JournalOp> {
        self.rx.blocking_recv()
    }

    /// The next op if one is waiting.
    pub fn try_recv(&mut self) -> Option<JournalOp> {
        self.rx.try_recv().ok()
    }

    /// Marks one received op as applied.
    pub fn applied(&self) {
        self.progress.applied.fetch_add(1, Ordering::Relaxed);
    }
}

/// A sticky hit refreshes the durable last-seen time at most this often, so that hot sessions
/// do not cost a map write per request.
const TOUCH_PERSIST_INTERVAL_MS: u64 = 1_000;

#[derive(Clone, Debug)]
struct Slot {
    server: Arc<str>,
    last_seen_ms: u64,
    persisted_ms: u64,
}

/// One entry, as shown by the monitor and `stickylb table`.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct EntryView {
    pub cookie: String,
    pub server: String,
    pub last_seen_ms: u64,
}

/// The stick table of one backend.
pub struct StickTable {
    backend_id: u32,
    expire_ms: u64,
    slots: Mutex<LruCache<StickKey, Slot>>,
    journal: Journal,
}

impl StickTable {
    pub fn new(backend_id: u32, capacity: NonZeroU32, expire: Duration, journal: Journal) -> Self {
        let capacity = usize::try_from(capacity.get())
            .ok()
            .and_then(std::num::NonZeroUsize::new)
            .unwrap_or(std::num::NonZeroUsize::MIN);
        Self {
            backend_id,
            expire_ms: duration_ms(expire),
            slots: Mutex::new(LruCache::new(capacity)),
            journal,
        }
    }

    pub fn backend_id(&self) -> u32 {
        self.backend_id
    }

    pub fn key(&self, cookie: &[u8]) -> StickKey {
        stick_key(self.backend_id, cookie)
    }

    /// The server `key` is stuck to, refreshing its last-seen time. An expired entry is forgotten.
    pub fn get(&self, key: &StickKey, now_ms: u64) -> Option<Arc<str>> {
        let mut slots = self.lock();
        let slot = slots.get_mut(key)?;
        if self.is_expired(slot.last_seen_ms, now_ms) {
            slots.pop(key);
            drop(slots);
            self.journal(JournalOp::Delete(*key));
            return None;
        }
        slot.last_seen_ms = now_ms;
        let server = Arc::clone(&slot.server);
        let persist = now_ms.saturating_sub(slot.persisted_ms) >= TOUCH_PERSIST_INTERVAL_MS;
        if persist {
            slot.persisted_ms = now_ms;
        }
        drop(slots);
        if persist {
            self.put_durable(key, &server, now_ms);
        }
        Some(server)
    }

    /// Looks `key` up and lets `choose` decide, under the table's lock, what serves it: `choose`
    /// gets the server currently stuck (None when absent or expired) and returns its pick plus
    /// the server name to stick from now on (None keeps the entry as it is). Doing both under one
    /// lock makes two concurrent first requests of a session agree on one server.
    pub fn resolve<T>(
        &self,
        key: StickKey,
        now_ms: u64,
        choose: impl FnOnce(Option<&str>) -> Option<(T, Option<Arc<str>>)>,
    ) -> Option<T> {
        let mut slots = self.lock();
        let mut ops = Vec::new();
        let current = match slots.get(&key) {
            Some(slot) if self.is_expired(slot.last_seen_ms, now_ms) => {
                slots.pop(&key);
                ops.push(JournalOp::Delete(key));
                None
            }
            Some(slot) => Some(Arc::clone(&slot.server)),
            None => None,
        };
        let picked = choose(current.as_deref());
        match &picked {
            Some((_, Some(server))) => {
                let slot = Slot {
                    server: Arc::clone(server),
                    last_seen_ms: now_ms,
                    persisted_ms: now_ms,
                };
                if let Some((evicted, _)) = slots.push(key, slot).filter(|(k, _)| *k != key) {
                    ops.push(JournalOp::Delete(evicted));
                }
                ops.extend(self.durable_put(&key, server, now_ms));
            }
            Some((_, None)) => {
                if let Some(slot) = slots.get_mut(&key) {
                    slot.last_seen_ms = now_ms;
                    if now_ms.saturating_sub(slot.persisted_ms) >= TOUCH_PERSIST_INTERVAL_MS {
                        slot.persisted_ms = now_ms;
                        let server = Arc::clone(&slot.server);
                        ops.extend(self.durable_put(&key, &server, now_ms));
                    }
                }
            }
            None => {}
        }
        drop(slots);
        ops.into_iter().for_each(|op| self.journal(op));
        picked.map(|(pick, _)| pick)
    }

    /// Sticks `key` to `server`, evicting the least recently used entry when the table is full.
    pub fn set(&self, key: StickKey, server: Arc<str>, now_ms: u64) {
        let evicted = self.insert(key, Arc::clone(&server), now_ms, now_ms);
        self.put_durable(&key, &server, now_ms);
        if let Some(evicted) = evicted {
            self.journal(JournalOp::Delete(evicted));
        }
    }

    /// Loads an entry found in the durable copy at start. Call in ascending `last_seen_ms` order
    /// so the LRU order is rebuilt. Returns false (and loads nothing) for an expired entry.
    pub fn adopt(&self, key: StickKey, server: Arc<str>, last_seen_ms: u64, now_ms: u64) -> bool {
        if self.is_expired(last_seen_ms, now_ms) {
            return false;
        }
        if let Some(evicted) = self.insert(key, server, last_seen_ms, last_seen_ms) {
            self.journal(JournalOp::Delete(evicted));
        }
        true
    }

    /// Forgets every entry idle for longer than the backend's `expire`. Returns how many.
    pub fn sweep_expired(&self, now_ms: u64) -> usize {
        let mut expired = Vec::new();
        {
            let mut slots = self.lock();
            while let Some((key, slot)) = slots.peek_lru() {
                if !self.is_expired(slot.last_seen_ms, now_ms) {
                    break;
                }
                expired.push(*key);
                slots.pop_lru();
            }
        }
        for key in &expired {
            self.journal(JournalOp::Delete(*key));
        }
        expired.len()
    }

    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn capacity(&self) -> usize {
        self.lock().cap().get()
    }

    /// Every live entry, most recently used first.
    pub fn snapshot(&self) -> Vec<EntryView> {
        self.snapshot_recent(usize::MAX)
    }

    /// The `limit` most recently used entries, most recent first; the lock is held only for
    /// those.
    pub fn snapshot_recent(&self, limit: usize) -> Vec<EntryView> {
        self.lock()
            .iter()
            .take(limit)
            .map(|(key, slot)| EntryView {
                cookie: field_text(&key.cookie),
                server: slot.server.to_string(),
                last_seen_ms: slot.last_seen_ms,
            })
            .collect()
    }

    /// Returns the key evicted to make room, if any.
    fn insert(
        &self,
        key: StickKey,
        server: Arc<str>,
        last_seen_ms: u64,
        persisted_ms: u64,
    ) -> Option<StickKey> {
        let slot = Slot {
            server,
            last_seen_ms,
            persisted_ms,
        };
        match self.lock().push(key, slot) {
            Some((old_key, _)) if old_key != key => Some(old_key),
            _ => None,
        }
    }

    fn is_expired(&self, last_seen_ms: u64, now_ms: u64) -> bool {
        now_ms.saturating_sub(last_seen_ms) > self.expire_ms
    }

    fn put_durable(&self, key: &StickKey, server: &str, now_ms: u64) {
        if let Some(op) = self.durable_put(key, server, now_ms) {
            self.journal(op);
        }
    }

    fn durable_put(&self, key: &StickKey, server: &str, now_ms: u64) -> Option<JournalOp> {
        let Some(server_field) = to_field::<SERVER_NAME_LEN>(server) else {
            tracing::warn!(
                server,
                "server name does not fit the durable table; entry kept in memory only"
            );
            return None;
        };
        Some(JournalOp::Put(
            *key,
            StickEntry {
                server: server_field,
                last_seen_ms: now_ms,
            },
        ))
    }

    fn journal(&self, op: JournalOp) {
        self.journal.send(op);
    }

    fn lock(&self) -> MutexGuard<'_, LruCache<StickKey, Slot>> {
        // A panic while holding the lock cannot leave the cache half-updated in a way that
        // matters (every operation is a single LruCache call), so poisoning is ignored.
        self.slots
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

fn duration_ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests;
