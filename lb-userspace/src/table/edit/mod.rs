//! What an operator changes in a table by hand (`stickylb table del|set|clear`): forget one
//! session, stick one session to a server, forget every session of the backend or of one
//! server.
//!
//! A set is a decision like a balancer's: stored, logged for the peers, decided now. A delete
//! is local: it leaves the update log too, so that nothing re-teaches the key, but the peers
//! protocol has no delete message and peers keep their copies (`docs/PEERS.md`, "Deletes").

use std::{io, sync::Arc};

use lb_common::StickKey;

use super::{Inner, StickTable};

/// What [`StickTable::clear`] deleted.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Cleared {
    /// Entries deleted.
    pub deleted: usize,
    /// Store batches read (a few thousand entries each for the pinned map).
    pub batches: usize,
}

impl StickTable {
    /// Forgets `key`: its recent entry, its place in the update log and its stored entry.
    /// Returns the server it was stuck to; None when it had no live entry.
    pub fn delete(&self, key: &StickKey, now_ms: u64) -> Option<Arc<str>> {
        let mut guard = self.recall(key);
        let inner = &mut *guard;
        // An expired entry is already gone as far as requests see (and `live` deletes it).
        let server = Arc::clone(&self.live(inner, key, now_ms)?.server);
        self.remove(inner, key);
        Some(server)
    }

    /// Sticks `key` to `server` as a decision: stored, logged for the peers, decided now.
    /// Returns the server it was stuck to before (None when it had no live entry).
    pub fn set(&self, key: StickKey, server: Arc<str>, now_ms: u64) -> Option<Arc<str>> {
        self.resolve(key, now_ms, |current| {
            Some((current.map(Arc::from), Some(Arc::clone(&server))))
        })
        .flatten()
    }

    /// Forgets every entry of this backend, or only those stuck to `server`: reads the store a
    /// batch at a time, and deletes each matching entry under the table's lock, as the
    /// periodic scan does (requests wait at most one delete). Then forgets the recent entries
    /// the store no longer held.
    pub fn clear(&self, server: Option<&str>) -> io::Result<Cleared> {
        let matches = |name: &str| server.is_none_or(|wanted| wanted == name);
        let mut cleared = Cleared::default();
        self.store.scan(&mut |batch| {
            cleared.batches += 1;
            for (key, entry) in batch
                .iter()
                .filter(|(k, _)| k.backend_id == self.backend_id)
            {
                let mut inner = self.lock();
                // The recent copy, when there is one, is the newer word on the server.
                let stuck = match inner.recent.peek(key) {
                    Some(slot) => matches(&slot.server),
                    None => matches(&super::field_text(&entry.server)),
                };
                if stuck {
                    self.remove(&mut inner, key);
                    cleared.deleted += 1;
                }
            }
        })?;
        let mut inner = self.lock();
        let left: Vec<StickKey> = inner
            .recent
            .iter()
            .filter(|(_, slot)| matches(&slot.server))
            .map(|(key, _)| *key)
            .collect();
        for key in left {
            self.remove(&mut inner, &key);
            cleared.deleted += 1;
        }
        Ok(cleared)
    }

    /// Whether changes are sent to peers (a `[peers]` section is configured).
    pub fn replicated(&self) -> bool {
        self.store.replicated()
    }

    /// Deletes `key` everywhere (recent entries, update log, store) and counts it out of the
    /// store only when the store held it.
    fn remove(&self, inner: &mut Inner, key: &StickKey) {
        inner.recent.pop(key);
        inner.log.forget(key);
        if self.store.delete(key) {
            self.count_deleted();
        }
    }
}

#[cfg(test)]
mod tests;
