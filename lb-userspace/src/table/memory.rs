//! A store in memory, for unit tests: the pinned map's semantics (a bounded LRU hash keyed by
//! backend and cookie) without the kernel.

use std::{io, sync::Mutex};

use lb_common::{StickEntry, StickKey};
use lru::LruCache;

use super::store::{Storage, Store, Stored};

/// A store of `capacity` entries in memory, replicated (tables keep an update log).
pub fn store(capacity: usize) -> Store {
    Store::new(std::sync::Arc::new(MemoryStorage::new(capacity)), true)
}

pub struct MemoryStorage {
    entries: Mutex<LruCache<StickKey, StickEntry>>,
}

impl MemoryStorage {
    pub fn new(capacity: usize) -> Self {
        let capacity = std::num::NonZeroUsize::new(capacity).unwrap_or(std::num::NonZeroUsize::MIN);
        Self {
            entries: Mutex::new(LruCache::new(capacity)),
        }
    }

    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, LruCache<StickKey, StickEntry>> {
        self.entries
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl Storage for MemoryStorage {
    fn get(&self, key: &StickKey) -> io::Result<Option<StickEntry>> {
        // As the kernel's, a lookup from userspace does not count as a use.
        Ok(self.lock().peek(key).copied())
    }

    fn put(&self, key: &StickKey, entry: &StickEntry) -> io::Result<()> {
        self.lock().put(*key, *entry);
        Ok(())
    }

    fn insert_new(&self, key: &StickKey, entry: &StickEntry) -> io::Result<bool> {
        let mut entries = self.lock();
        if entries.contains(key) {
            return Ok(false);
        }
        entries.put(*key, *entry);
        Ok(true)
    }

    fn delete(&self, key: &StickKey) -> io::Result<bool> {
        Ok(self.lock().pop(key).is_some())
    }

    fn scan(&self, visit: &mut dyn FnMut(&[Stored])) -> io::Result<()> {
        let entries: Vec<_> = self.lock().iter().map(|(k, e)| (*k, *e)).collect();
        entries.chunks(3).for_each(visit);
        Ok(())
    }
}
