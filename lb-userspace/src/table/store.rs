//! Where the entries live: one store for every backend's table (keys carry the backend id).
//!
//! [`Storage`] is what a store must do; the pinned BPF map implements it for the daemon and an
//! LRU in memory for unit tests. The map is the table, and a [`super::StickTable`] keeps in
//! memory only its most recently used entries. One copy of each entry means a table of a
//! million sessions costs the map's memory and little more, and a restart has nothing to load
//! (`docs/TABLE.md`).

use std::{io, sync::Arc};

use lb_common::{StickEntry, StickKey, SERVER_NAME_LEN};
use tokio::sync::watch;

use super::key::to_field;

/// A stored entry: its key and its value.
pub type Stored = (StickKey, StickEntry);

/// Reads and writes entries. Errors are the store's own (the kernel's, for the pinned map).
pub trait Storage: Send + Sync {
    fn get(&self, key: &StickKey) -> io::Result<Option<StickEntry>>;
    fn put(&self, key: &StickKey, entry: &StickEntry) -> io::Result<()>;
    /// Stores `entry` only if `key` has none: `Ok(false)` when it has one (atomically, also
    /// against other processes writing the store).
    fn insert_new(&self, key: &StickKey, entry: &StickEntry) -> io::Result<bool>;
    /// Deleting an absent key is not an error: `Ok(false)`.
    fn delete(&self, key: &StickKey) -> io::Result<bool>;
    /// Every entry, a batch at a time, in no particular order. Entries written meanwhile may or
    /// may not be seen.
    fn scan(&self, visit: &mut dyn FnMut(&[Stored])) -> io::Result<()>;
}

/// The store shared by every table, and the signal that wakes peer sessions when a table
/// logs a local change. Cloned into every table.
#[derive(Clone)]
pub struct Store {
    storage: Arc<dyn Storage>,
    local_changes: Arc<watch::Sender<u64>>,
    /// Whether peers are sent local changes: only then do tables keep an update log.
    replicated: bool,
}

impl Store {
    pub fn new(storage: Arc<dyn Storage>, replicated: bool) -> Self {
        Self {
            storage,
            local_changes: Arc::new(watch::Sender::new(0)),
            replicated,
        }
    }

    pub(super) fn replicated(&self) -> bool {
        self.replicated
    }

    /// Wakes when any table logs a local change for peers (see
    /// [`super::StickTable::updates_after`]).
    pub fn watch_local_changes(&self) -> watch::Receiver<u64> {
        self.local_changes.subscribe()
    }

    pub(super) fn announce_local_change(&self) {
        self.local_changes
            .send_modify(|count| *count = count.wrapping_add(1));
    }

    /// The stored entry of `key`. A failing store is logged and reads as a miss: the request
    /// is then balanced as a new session rather than refused.
    pub(super) fn get(&self, key: &StickKey) -> Option<StickEntry> {
        self.storage.get(key).unwrap_or_else(|error| {
            tracing::error!(%error, "reading the stick table failed");
            None
        })
    }

    /// Stores `key` stuck to `server`. Returns false when it could not be stored (logged).
    pub(super) fn put(&self, key: &StickKey, server: &str, last_seen_ms: u64) -> bool {
        let Some(entry) = entry(server, last_seen_ms) else {
            return false;
        };
        match self.storage.put(key, &entry) {
            Ok(()) => true,
            Err(error) => {
                tracing::error!(%error, server, "writing the stick table failed");
                false
            }
        }
    }

    /// Stores `key` stuck to `server` if it has no entry yet: `Some(false)` when it has one,
    /// `None` when it could not be stored (logged).
    pub(super) fn insert_new(
        &self,
        key: &StickKey,
        server: &str,
        last_seen_ms: u64,
    ) -> Option<bool> {
        let entry = entry(server, last_seen_ms)?;
        self.storage
            .insert_new(key, &entry)
            .map_err(|error| tracing::error!(%error, server, "writing the stick table failed"))
            .ok()
    }

    /// Deletes `key`'s entry. Returns whether the store held one (false also when the delete
    /// failed, logged).
    pub(super) fn delete(&self, key: &StickKey) -> bool {
        self.storage.delete(key).unwrap_or_else(|error| {
            tracing::error!(%error, "deleting from the stick table failed");
            false
        })
    }

    /// Every stored entry, a batch at a time (see [`Storage::scan`]).
    pub fn scan(&self, visit: &mut dyn FnMut(&[Stored])) -> io::Result<()> {
        self.storage.scan(visit)
    }
}

fn entry(server: &str, last_seen_ms: u64) -> Option<StickEntry> {
    let Some(server_field) = to_field::<SERVER_NAME_LEN>(server) else {
        tracing::warn!(
            server,
            "server name does not fit the stick table; not stored"
        );
        return None;
    };
    Some(StickEntry {
        server: server_field,
        last_seen_ms,
    })
}
