//! The stick table: which server each session (cookie value) is stuck to.
//!
//! Each backend has an in-memory table, exact in its LRU bound and expiry, that answers every
//! request. Every change is journaled to the durable copy, a pinned BPF map (see [`pinned`]),
//! so the table outlives the process.

pub mod key;
pub mod pinned;
mod replica;

use std::{
    collections::BTreeMap,
    num::NonZeroU32,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex, MutexGuard, OnceLock,
    },
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use lb_common::{StickEntry, StickKey, SERVER_NAME_LEN};
use lru::LruCache;
use tokio::sync::{mpsc, watch};

pub use self::{
    key::{field_text, stick_key, to_field},
    replica::{rank, Pending, RemoteOutcome, TeachEntry, CONFLICT_WINDOW_MS},
};

/// A change for the durable copy of the table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum JournalOp {
    Put(StickKey, StickEntry),
    Delete(StickKey),
}

/// Where table changes go: straight into the durable table ([`Journal::direct`], the daemon's:
/// a map update is one syscall of a microsecond or two, cheaper than waking a writer thread and
/// being woken back), or into a channel whose receiving end inspects them (tests); and, for
/// local changes, a signal that wakes peer sessions. Cloned into every table.
#[derive(Clone)]
pub struct Journal {
    sink: Arc<Sink>,
    progress: Arc<JournalProgress>,
    local_changes: Arc<watch::Sender<u64>>,
    /// Whether peers are sent local changes: only then do tables keep an update log.
    replicated: bool,
}

enum Sink {
    Channel(mpsc::UnboundedSender<JournalOp>),
    /// Applied by the sender, in the order senders take the lock.
    Direct(Mutex<pinned::DurableTable>),
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
    /// Woken after each applied op, for [`Journal::flushed`].
    notify: tokio::sync::Notify,
}

/// A new journal and its receiving end.
pub fn journal() -> (Journal, JournalReceiver) {
    let (tx, rx) = mpsc::unbounded_channel();
    let progress = Arc::new(JournalProgress::default());
    (
        Journal {
            sink: Arc::new(Sink::Channel(tx)),
            progress: Arc::clone(&progress),
            local_changes: Arc::new(watch::Sender::new(0)),
            replicated: true,
        },
        JournalReceiver { rx, progress },
    )
}

impl Journal {
    /// A journal that writes each change to `table` as it is sent: [`Journal::flushed`] is
    /// then always true. `replicated`: peers are sent local changes, so the tables keep an
    /// update log (a position per changed key, about 80 bytes an entry, only worth it then).
    pub fn direct(table: pinned::DurableTable, replicated: bool) -> Journal {
        Journal {
            sink: Arc::new(Sink::Direct(Mutex::new(table))),
            progress: Arc::default(),
            local_changes: Arc::new(watch::Sender::new(0)),
            replicated,
        }
    }

    pub fn send(&self, op: JournalOp) {
        match &*self.sink {
            Sink::Direct(table) => {
                let result = table
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .apply(op);
                if let Err(error) = result {
                    tracing::error!(%error, ?op, "writing the durable stick table failed");
                }
            }
            Sink::Channel(tx) => {
                self.progress.sent.fetch_add(1, Ordering::Relaxed);
                if tx.send(op).is_err() {
                    // The writer is gone (shutdown); nothing will apply this op.
                    self.progress.sent.fetch_sub(1, Ordering::Relaxed);
                }
            }
        }
    }

    /// Wakes when any table logs a local change for peers (see [`StickTable::updates_after`]).
    pub fn watch_local_changes(&self) -> watch::Receiver<u64> {
        self.local_changes.subscribe()
    }

    fn announce_local_change(&self) {
        self.local_changes
            .send_modify(|count| *count = count.wrapping_add(1));
    }

    /// Waits until every op sent so far has been applied, for at most `limit`. Returns whether
    /// it got there.
    pub async fn flushed(&self, limit: Duration) -> bool {
        let target = self.progress.sent.load(Ordering::Relaxed);
        tokio::time::timeout(limit, async {
            loop {
                let applied = self.progress.notify.notified();
                if self.progress.applied.load(Ordering::Relaxed) >= target {
                    return;
                }
                applied.await;
            }
        })
        .await
        .is_ok()
    }
}

impl JournalReceiver {
    /// The next op if one is waiting.
    pub fn try_recv(&mut self) -> Option<JournalOp> {
        self.rx.try_recv().ok()
    }

    /// Marks one received op as applied.
    pub fn applied(&self) {
        self.progress.applied.fetch_add(1, Ordering::Relaxed);
        self.progress.notify.notify_waiters();
    }
}

/// The longest a response waits for its new session to be durable.
const DURABLE_WAIT: Duration = Duration::from_millis(100);

/// A sticky hit refreshes the durable last-seen time (and tells peers) at most this often, so
/// that hot sessions do not cost a map write and a peer update per request.
const TOUCH_PERSIST_INTERVAL_MS: u64 = 1_000;

#[derive(Clone, Debug)]
struct Slot {
    server: Arc<str>,
    last_seen_ms: u64,
    persisted_ms: u64,
    /// When the server was last chosen or changed, here or by a peer: the start of the window
    /// in which a differing choice from a peer is a concurrent decision (see [`replica`]).
    decided_ms: u64,
    /// This entry's position in the update log, if it changed locally since the process started.
    update_seq: Option<u64>,
}

/// One entry, as shown by the monitor and `stickylb table`.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct EntryView {
    pub cookie: String,
    pub server: String,
    pub last_seen_ms: u64,
}

/// The entries, and the log of local changes that peers are sent.
struct Inner {
    lru: LruCache<StickKey, Slot>,
    /// Local changes in the order they happened, one position per key (its latest change), as
    /// HAProxy's update tree: a lagging peer gets each changed key once, with its latest value.
    updates: BTreeMap<u64, StickKey>,
    last_seq: u64,
    /// Whether local changes are logged at all (see [`Journal::direct`]).
    logging: bool,
}

impl Inner {
    /// Inserts or replaces `key`; returns the key evicted to make room, if any.
    fn push(&mut self, key: StickKey, mut slot: Slot) -> Option<StickKey> {
        if let Some(old) = self.lru.peek(&key) {
            slot.update_seq = slot.update_seq.or(old.update_seq);
        }
        match self.lru.push(key, slot) {
            Some((old_key, old)) if old_key != key => {
                self.forget_update(old.update_seq);
                Some(old_key)
            }
            _ => None,
        }
    }

    fn remove(&mut self, key: &StickKey) {
        if let Some(slot) = self.lru.pop(key) {
            self.forget_update(slot.update_seq);
        }
    }

    /// Records a local change of `key` in the update log.
    fn log_update(&mut self, key: &StickKey) -> Option<u64> {
        if !self.logging {
            return None;
        }
        let slot = self.lru.peek_mut(key)?;
        self.last_seq += 1;
        let seq = self.last_seq;
        if let Some(old) = slot.update_seq.replace(seq) {
            self.updates.remove(&old);
        }
        self.updates.insert(seq, *key);
        Some(seq)
    }

    fn forget_update(&mut self, seq: Option<u64>) {
        if let Some(seq) = seq {
            self.updates.remove(&seq);
        }
    }
}

/// Where a miss is looked up before it counts as a new session: the pinned map, which another
/// process of ours may have written to during an upgrade (old and new serve side by side for a
/// moment, and either may create a session the other is asked for next).
pub trait Fallback: Send + Sync {
    /// The server and last-seen time (Unix ms) stored for `key`.
    fn lookup(&self, key: &StickKey) -> Option<(Arc<str>, u64)>;
}

/// The stick table of one backend.
pub struct StickTable {
    backend_id: u32,
    expire_ms: u64,
    inner: Mutex<Inner>,
    journal: Journal,
    fallback: OnceLock<Arc<dyn Fallback>>,
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
            inner: Mutex::new(Inner {
                lru: LruCache::new(capacity),
                updates: BTreeMap::new(),
                last_seq: 0,
                logging: journal.replicated,
            }),
            journal,
            fallback: OnceLock::new(),
        }
    }

    /// Waits until every change made so far is in the durable copy (bounded: a stuck writer
    /// costs at most [`DURABLE_WAIT`]). A response waits for its session's entry this way, so
    /// a crash right after it cannot lose the session it announced.
    pub async fn durable(&self) {
        if !self.journal.flushed(DURABLE_WAIT).await {
            tracing::warn!(limit = ?DURABLE_WAIT, "the durable table writer is behind; answering anyway");
        }
    }

    /// Looks misses up in `fallback` from now on (set once, at start).
    pub fn set_fallback(&self, fallback: Arc<dyn Fallback>) {
        let _ = self.fallback.set(fallback);
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

    /// The server `key` is stuck to, refreshing its last-seen time. An expired entry is forgotten.
    pub fn get(&self, key: &StickKey, now_ms: u64) -> Option<Arc<str>> {
        let mut inner = self.lock();
        let slot = inner.lru.get_mut(key)?;
        if self.is_expired(slot.last_seen_ms, now_ms) {
            inner.remove(key);
            drop(inner);
            self.journal(JournalOp::Delete(*key));
            return None;
        }
        slot.last_seen_ms = now_ms;
        let server = Arc::clone(&slot.server);
        let persist = now_ms.saturating_sub(slot.persisted_ms) >= TOUCH_PERSIST_INTERVAL_MS;
        if persist {
            slot.persisted_ms = now_ms;
        }
        let seq = persist.then(|| inner.log_update(key)).flatten();
        drop(inner);
        if persist {
            self.put_durable(key, &server, now_ms);
        }
        self.announce(seq);
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
        let mut inner = self.lock();
        let mut ops = Vec::new();
        let current = match inner.lru.get(&key) {
            Some(slot) if self.is_expired(slot.last_seen_ms, now_ms) => {
                inner.remove(&key);
                ops.push(JournalOp::Delete(key));
                None
            }
            Some(slot) => Some(Arc::clone(&slot.server)),
            None => self.adopt_from_fallback(&mut inner, key, now_ms),
        };
        let picked = choose(current.as_deref());
        let mut seq = None;
        match &picked {
            Some((_, Some(server))) => {
                let slot = Slot {
                    server: Arc::clone(server),
                    last_seen_ms: now_ms,
                    persisted_ms: now_ms,
                    decided_ms: now_ms,
                    update_seq: None,
                };
                if let Some(evicted) = inner.push(key, slot) {
                    ops.push(JournalOp::Delete(evicted));
                }
                seq = inner.log_update(&key);
                ops.extend(self.durable_put(&key, server, now_ms));
            }
            Some((_, None)) => {
                let mut touched = None;
                if let Some(slot) = inner.lru.get_mut(&key) {
                    slot.last_seen_ms = now_ms;
                    if now_ms.saturating_sub(slot.persisted_ms) >= TOUCH_PERSIST_INTERVAL_MS {
                        slot.persisted_ms = now_ms;
                        touched = Some(Arc::clone(&slot.server));
                    }
                }
                if let Some(server) = touched {
                    seq = inner.log_update(&key);
                    ops.extend(self.durable_put(&key, &server, now_ms));
                }
            }
            None => {}
        }
        drop(inner);
        ops.into_iter().for_each(|op| self.journal(op));
        self.announce(seq);
        picked.map(|(pick, _)| pick)
    }

    /// Sticks `key` to `server`, evicting the least recently used entry when the table is full.
    pub fn set(&self, key: StickKey, server: Arc<str>, now_ms: u64) {
        let (evicted, seq) = {
            let mut inner = self.lock();
            let evicted = inner.push(key, Slot::new(Arc::clone(&server), now_ms, now_ms));
            (evicted, inner.log_update(&key))
        };
        self.put_durable(&key, &server, now_ms);
        if let Some(evicted) = evicted {
            self.journal(JournalOp::Delete(evicted));
        }
        self.announce(seq);
    }

    /// Loads an entry found in the durable copy at start. Call in ascending `last_seen_ms` order
    /// so the LRU order is rebuilt. Returns false (and loads nothing) for an expired entry.
    /// Adopted entries are not pushed to peers: those that ask for a resync get them.
    pub fn adopt(&self, key: StickKey, server: Arc<str>, last_seen_ms: u64, now_ms: u64) -> bool {
        if self.is_expired(last_seen_ms, now_ms) {
            return false;
        }
        let evicted = self
            .lock()
            .push(key, Slot::new(server, last_seen_ms, last_seen_ms));
        if let Some(evicted) = evicted {
            self.journal(JournalOp::Delete(evicted));
        }
        true
    }

    /// Forgets every entry idle for longer than the backend's `expire`. Returns how many.
    pub fn sweep_expired(&self, now_ms: u64) -> usize {
        let mut expired = Vec::new();
        {
            let mut inner = self.lock();
            while let Some((key, slot)) = inner.lru.peek_lru() {
                if !self.is_expired(slot.last_seen_ms, now_ms) {
                    break;
                }
                let key = *key;
                inner.remove(&key);
                expired.push(key);
            }
        }
        for key in &expired {
            self.journal(JournalOp::Delete(*key));
        }
        expired.len()
    }

    pub fn len(&self) -> usize {
        self.lock().lru.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn capacity(&self) -> usize {
        self.lock().lru.cap().get()
    }

    /// Every live entry, most recently used first.
    pub fn snapshot(&self) -> Vec<EntryView> {
        self.snapshot_recent(usize::MAX)
    }

    /// The `limit` most recently used entries, most recent first; the lock is held only for
    /// those.
    pub fn snapshot_recent(&self, limit: usize) -> Vec<EntryView> {
        self.lock()
            .lru
            .iter()
            .take(limit)
            .map(|(key, slot)| EntryView {
                cookie: field_text(&key.cookie),
                server: slot.server.to_string(),
                last_seen_ms: slot.last_seen_ms,
            })
            .collect()
    }

    /// A miss found in the fallback (written by the other process during an upgrade) is taken
    /// into memory as it is: not a new decision, nothing to push or persist.
    fn adopt_from_fallback(
        &self,
        inner: &mut Inner,
        key: StickKey,
        now_ms: u64,
    ) -> Option<Arc<str>> {
        let (server, last_seen_ms) = self.fallback.get()?.lookup(&key)?;
        if self.is_expired(last_seen_ms, now_ms) {
            return None;
        }
        if let Some(evicted) = inner.push(
            key,
            Slot::new(Arc::clone(&server), last_seen_ms, last_seen_ms),
        ) {
            self.journal(JournalOp::Delete(evicted));
        }
        Some(server)
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

    /// Wakes the peer sessions when a local change was logged.
    fn announce(&self, seq: Option<u64>) {
        if seq.is_some() {
            self.journal.announce_local_change();
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock cannot leave the table half-updated in a way that
        // matters (each step keeps the LRU and the update log consistent), so poisoning is
        // ignored.
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl Slot {
    fn new(server: Arc<str>, last_seen_ms: u64, decided_ms: u64) -> Self {
        Self {
            server,
            last_seen_ms,
            persisted_ms: last_seen_ms,
            decided_ms,
            update_seq: None,
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
