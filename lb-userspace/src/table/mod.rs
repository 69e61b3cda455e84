//! The stick table: which server each session (cookie value) is stuck to.
//!
//! The entries live in the store (see [`store`]): for the daemon, the pinned BPF map, which
//! outlives the process. Each backend's [`StickTable`] keeps in memory only its most recently
//! used entries, with what the map does not hold: the last-seen time of hits not yet written
//! back (a hot session is written at most once a second), and when its server was decided
//! (for the peers' convergence rule). Every decision is in the map before the response leaves.
//!
//! Bounds. The map holds the sum of every backend's `table_size`; when it is full the kernel
//! evicts the entry least recently written, whichever backend it belongs to. Idle entries are
//! forgotten on lookup, swept from the recent ones every second, and from the map by a
//! periodic [`scan`].
//!
//! Parts: `edit` is what an operator changes by hand; [`key`] turns a cookie into a map key; [`store`] is what a store must do and the
//! handle every table shares; [`pinned`] is that store as a pinned BPF map (opened, adopted or
//! migrated); [`scan`] reads the whole store; `replica` is what peers need from a table. The
//! map's format and the table's lifecycle across reloads, restarts and crashes are in
//! `docs/TABLE.md`.

mod edit;
pub mod key;
#[cfg(test)]
pub mod memory;
pub mod pinned;
mod replica;
mod scan;
pub mod store;

use std::{
    num::NonZeroU32,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex, MutexGuard,
    },
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use lb_common::{StickEntry, StickKey};
use lru::LruCache;

use self::replica::UpdateLog;
pub use self::{
    edit::Cleared,
    key::{field_text, stick_key, to_field},
    replica::{rank, Pending, RemoteOutcome, TeachEntry, CONFLICT_WINDOW_MS},
    scan::{scan, ScanMode, ScanReport},
    store::{Storage, Store},
};

/// A sticky hit refreshes the stored last-seen time (and tells peers) at most this often, so
/// that hot sessions do not cost a map write and a peer update per request.
const TOUCH_PERSIST_INTERVAL_MS: u64 = 1_000;

/// The most entries a table keeps in memory: its working set, served without a map lookup.
/// About 150 bytes each.
const RECENT_ENTRIES: usize = 32_768;

#[derive(Clone, Debug)]
struct Slot {
    server: Arc<str>,
    last_seen_ms: u64,
    /// The last-seen time last written to the store.
    persisted_ms: u64,
    /// When the server was last chosen or changed, here or by a peer: the start of the window
    /// in which a differing choice from a peer is a concurrent decision (see [`replica`]).
    /// Zero (long ago) for an entry read back from the store.
    decided_ms: u64,
}

/// What [`StickTable::decide_cold`] did.
enum Cold<T> {
    /// Decided and stored as a new session: the pick.
    Decided(T),
    /// Left to the caller, with the stored entry (if any) among the recent ones.
    Stored,
}

/// One entry, as shown by the monitor and `stickylb table`.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct EntryView {
    pub cookie: String,
    pub server: String,
    pub last_seen_ms: u64,
}

/// The recently used entries, and the log of local changes that peers are sent.
struct Inner {
    recent: LruCache<StickKey, Slot>,
    log: UpdateLog,
}

/// The stick table of one backend.
pub struct StickTable {
    backend_id: u32,
    expire_ms: u64,
    capacity: u32,
    inner: Mutex<Inner>,
    store: Store,
    /// Entries of this backend in the store: counted at start, then up and down as this
    /// process adds and deletes them (see [`scan`] for when it is recounted).
    stored: AtomicU64,
}

impl StickTable {
    pub fn new(backend_id: u32, capacity: NonZeroU32, expire: Duration, store: Store) -> Self {
        let bound = usize::try_from(capacity.get()).unwrap_or(usize::MAX);
        let recent = std::num::NonZeroUsize::new(bound.min(RECENT_ENTRIES))
            .unwrap_or(std::num::NonZeroUsize::MIN);
        Self {
            backend_id,
            expire_ms: duration_ms(expire),
            capacity: capacity.get(),
            inner: Mutex::new(Inner {
                recent: LruCache::new(recent),
                log: UpdateLog::new(store.replicated(), bound),
            }),
            store,
            stored: AtomicU64::new(0),
        }
    }

    pub fn backend_id(&self) -> u32 {
        self.backend_id
    }

    pub fn expire_ms(&self) -> u64 {
        self.expire_ms
    }

    pub fn key(&self, cookie: &[u8]) -> StickKey {
        stick_key(self.backend_id, cookie)
    }

    /// Looks `key` up and lets `choose` decide what serves it: `choose` gets the server
    /// currently stuck (None when absent or expired) and returns its pick plus the server name
    /// to stick from now on (None keeps the entry as it is). A new or changed entry is in the
    /// store when this returns.
    ///
    /// Two concurrent first requests of a session agree on one server, also across processes
    /// sharing the store: a key that is not a recent entry (most often a new session) is
    /// decided as new and inserted only if the store has no entry for it (one syscall); when
    /// it has one, `choose` is asked again with it (so `choose` may be called twice, the first
    /// time with None; a round-robin balancer then advanced once for nothing). A recent key is
    /// decided under the table's lock.
    pub fn resolve<T>(
        &self,
        key: StickKey,
        now_ms: u64,
        mut choose: impl FnMut(Option<&str>) -> Option<(T, Option<Arc<str>>)>,
    ) -> Option<T> {
        let mut guard = self.lock();
        if !guard.recent.contains(&key) {
            drop(guard);
            if let Cold::Decided(pick) = self.decide_cold(key, now_ms, &mut choose) {
                return Some(pick);
            }
            guard = self.lock();
        }
        let inner = &mut *guard;
        let current = self
            .live(inner, &key, now_ms)
            .map(|slot| Arc::clone(&slot.server));
        let existed = current.is_some();
        let (pick, stick) = choose(current.as_deref())?;
        let changed = match stick {
            Some(server) => {
                if self.store.put(&key, &server, now_ms) && !existed {
                    self.stored.fetch_add(1, Ordering::Relaxed);
                }
                inner
                    .recent
                    .push(key, Slot::decided(server, now_ms, now_ms));
                true
            }
            None => inner
                .recent
                .peek_mut(&key)
                .is_some_and(|slot| self.touch(&key, slot, now_ms)),
        };
        let seq = if changed { inner.log.record(key) } else { None };
        drop(guard);
        self.announce(seq);
        Some(pick)
    }

    /// [`StickTable::resolve`] for a key that is not a recent entry: decides it as new and
    /// inserts it unless the store has an entry. Otherwise (the store has one, or `choose`
    /// stuck nothing) the stored entry, if any, becomes a recent one for the caller to decide
    /// with.
    fn decide_cold<T>(
        &self,
        key: StickKey,
        now_ms: u64,
        choose: &mut impl FnMut(Option<&str>) -> Option<(T, Option<Arc<str>>)>,
    ) -> Cold<T> {
        if let Some((pick, Some(server))) = choose(None) {
            let inserted = self.store.insert_new(&key, &server, now_ms);
            if inserted != Some(false) {
                if inserted == Some(true) {
                    self.stored.fetch_add(1, Ordering::Relaxed);
                }
                let mut inner = self.lock();
                // Between the insert and the lock, a peer's entry for the key may have been
                // applied (it read ours back from the store and replaced it there): then ours
                // lost, and the caller decides again with the peer's. A recent entry naming our
                // server is ours, read back by a request that came in meanwhile.
                let replaced = inner
                    .recent
                    .peek(&key)
                    .is_some_and(|slot| slot.server != server);
                if !replaced {
                    inner
                        .recent
                        .push(key, Slot::decided(server, now_ms, now_ms));
                    let seq = inner.log.record(key);
                    drop(inner);
                    self.announce(seq);
                    return Cold::Decided(pick);
                }
                drop(pick);
                return Cold::Stored;
            }
        }
        drop(self.recall(&key));
        Cold::Stored
    }

    /// Forgets every recent entry idle for longer than the backend's `expire`, here and in the
    /// store. Returns how many. (Idle entries that are not recent are the [`scan`]'s.)
    pub fn sweep_expired(&self, now_ms: u64) -> usize {
        let mut inner = self.lock();
        let mut expired = 0;
        while let Some((key, slot)) = inner.recent.peek_lru() {
            if !self.is_expired(slot.last_seen_ms, now_ms) {
                break;
            }
            let key = *key;
            self.forget(&mut inner, &key);
            expired += 1;
        }
        expired
    }

    /// Entries in the table, as far as this process knows (see [`StickTable::stored`]).
    pub fn len(&self) -> usize {
        let stored = self
            .stored
            .load(Ordering::Relaxed)
            .min(u64::from(self.capacity));
        usize::try_from(stored).unwrap_or(usize::MAX)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn capacity(&self) -> usize {
        usize::try_from(self.capacity).unwrap_or(usize::MAX)
    }

    /// The `limit` most recently used entries, most recent first: from memory when it holds
    /// them, else from a read of the store.
    pub fn snapshot_recent(&self, limit: usize) -> Vec<EntryView> {
        {
            let inner = self.lock();
            let held = inner.recent.len();
            if limit <= held || held >= self.len() {
                return inner
                    .recent
                    .iter()
                    .take(limit)
                    .map(|(key, slot)| slot.view(key))
                    .collect();
            }
        }
        let mut newest = scan::Newest::new(limit);
        let read = self.scan_own(&mut |key, entry| newest.offer(key, entry));
        if let Err(error) = read {
            tracing::error!(%error, "reading the stick table failed");
        }
        let mut entries = newest.into_ascending();
        entries.reverse();
        let inner = self.lock();
        entries
            .iter()
            .map(|(key, entry)| match inner.recent.peek(key) {
                Some(slot) => slot.view(key),
                None => Slot::stored(entry).view(key),
            })
            .collect()
    }

    /// Makes `key`'s stored entry, if it has one, a recent entry, and returns the locked table.
    /// The store is read without the lock: the table serves other requests meanwhile.
    fn recall(&self, key: &StickKey) -> MutexGuard<'_, Inner> {
        {
            let inner = self.lock();
            if inner.recent.contains(key) {
                return inner;
            }
        }
        let stored = self.store.get(key);
        let mut inner = self.lock();
        if let Some(entry) = stored {
            if !inner.recent.contains(key) {
                inner.recent.push(*key, Slot::stored(&entry));
            }
        }
        inner
    }

    /// The live entry of `key` among the recent ones (call [`StickTable::recall`] first),
    /// marked as just used. An expired one is forgotten, here and in the store.
    fn live<'a>(&self, inner: &'a mut Inner, key: &StickKey, now_ms: u64) -> Option<&'a mut Slot> {
        let last_seen_ms = inner.recent.peek(key)?.last_seen_ms;
        if self.is_expired(last_seen_ms, now_ms) {
            self.forget(inner, key);
            return None;
        }
        inner.recent.get_mut(key)
    }

    /// Refreshes a hit's last-seen time; writes it back when the last write is a touch
    /// interval old. Returns whether it wrote.
    fn touch(&self, key: &StickKey, slot: &mut Slot, now_ms: u64) -> bool {
        slot.last_seen_ms = slot.last_seen_ms.max(now_ms);
        if now_ms.saturating_sub(slot.persisted_ms) < TOUCH_PERSIST_INTERVAL_MS {
            return false;
        }
        slot.persisted_ms = now_ms;
        self.store.put(key, &slot.server, now_ms);
        true
    }

    /// Deletes `key` everywhere: recent entries, update log, store.
    fn forget(&self, inner: &mut Inner, key: &StickKey) {
        inner.recent.pop(key);
        inner.log.forget(key);
        self.store.delete(key);
        self.count_deleted();
    }

    fn count_deleted(&self) {
        let _ = self
            .stored
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1));
    }

    /// Visits this backend's stored entries.
    fn scan_own(&self, visit: &mut dyn FnMut(&StickKey, &StickEntry)) -> std::io::Result<()> {
        self.store.scan(&mut |batch| {
            batch
                .iter()
                .filter(|(key, _)| key.backend_id == self.backend_id)
                .for_each(|(key, entry)| visit(key, entry));
        })
    }

    fn is_expired(&self, last_seen_ms: u64, now_ms: u64) -> bool {
        now_ms.saturating_sub(last_seen_ms) > self.expire_ms
    }

    /// Wakes the peer sessions when a local change was logged.
    fn announce(&self, seq: Option<u64>) {
        if seq.is_some() {
            self.store.announce_local_change();
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock cannot leave the table half-updated in a way that
        // matters (each step keeps the recent entries and the update log consistent), so
        // poisoning is ignored.
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl Slot {
    fn decided(server: Arc<str>, last_seen_ms: u64, decided_ms: u64) -> Self {
        Self {
            server,
            last_seen_ms,
            persisted_ms: last_seen_ms,
            decided_ms,
        }
    }

    /// An entry read back from the store: decided long ago, as far as this process knows.
    fn stored(entry: &StickEntry) -> Self {
        Self::decided(Arc::from(field_text(&entry.server)), entry.last_seen_ms, 0)
    }

    fn view(&self, key: &StickKey) -> EntryView {
        EntryView {
            cookie: field_text(&key.cookie),
            server: self.server.to_string(),
            last_seen_ms: self.last_seen_ms,
        }
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
