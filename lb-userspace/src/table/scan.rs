//! Reading the whole store: at start, to count each table's entries, forget what expired or
//! belongs to no backend any more, and bring each table's most recently used entries into
//! memory; then periodically, to forget what expired since.
//!
//! Between scans each table counts the entries it adds and deletes. The kernel's LRU may also
//! evict, silently, but only when the map is full: a periodic scan recounts when the counts add
//! up to nearly the map's capacity, and trusts them otherwise (a recount races with the entries
//! added while it reads, so it is only done when it is needed).

use std::{
    cmp::{Ordering, Reverse},
    collections::{BinaryHeap, HashMap},
    io,
};

use lb_common::{StickEntry, StickKey};

use super::{Slot, StickTable, Store};

/// When counts reach the map's capacity less this share of it (or the per-CPU margin below),
/// the kernel may have evicted: recount.
const NEARLY_FULL_SHARE: u64 = 32;
const NEARLY_FULL_MARGIN: u64 = 4096;

/// What a scan found.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ScanReport {
    /// Live entries of a configured backend.
    pub live: usize,
    /// Entries idle for longer than their backend's `expire`: deleted.
    pub expired: usize,
    /// Entries of a backend that is no longer configured: deleted.
    pub orphaned: usize,
}

/// How a scan treats the tables.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ScanMode {
    /// At start: count, and fill each table's recent entries with its newest stored ones.
    Start,
    /// Later: delete what expired; recount only when the map of `capacity` entries may have
    /// evicted.
    Periodic { capacity: u32 },
}

/// Reads every stored entry once (see the module docs).
pub fn scan(
    store: &Store,
    tables: &[&StickTable],
    now_ms: u64,
    mode: ScanMode,
) -> io::Result<ScanReport> {
    let by_id: HashMap<u32, usize> = tables
        .iter()
        .enumerate()
        .map(|(i, t)| (t.backend_id, i))
        .collect();
    let mut counts = vec![0u64; tables.len()];
    let mut newest: Vec<Newest> = match mode {
        ScanMode::Start => tables
            .iter()
            .map(|t| Newest::new(t.lock().recent.cap().get()))
            .collect(),
        ScanMode::Periodic { .. } => Vec::new(),
    };
    let mut report = ScanReport::default();
    store.scan(&mut |batch| {
        for (key, entry) in batch {
            let Some(&i) = by_id.get(&key.backend_id) else {
                report.orphaned += 1;
                store.delete(key);
                continue;
            };
            if tables[i].retire_if_expired(key, entry, now_ms) {
                report.expired += 1;
                continue;
            }
            report.live += 1;
            counts[i] += 1;
            if let Some(newest) = newest.get_mut(i) {
                newest.offer(key, entry);
            }
        }
    })?;
    let recount = match mode {
        ScanMode::Start => true,
        ScanMode::Periodic { capacity } => {
            let counted: u64 = tables.iter().map(|t| t.stored()).sum();
            let capacity = u64::from(capacity);
            counted + capacity / NEARLY_FULL_SHARE + NEARLY_FULL_MARGIN >= capacity
        }
    };
    for (i, table) in tables.iter().enumerate() {
        if recount {
            table.set_stored(counts[i]);
        }
        if let Some(newest) = newest.get_mut(i) {
            table.remember(std::mem::take(newest).into_ascending());
        }
    }
    Ok(report)
}

impl StickTable {
    /// Entries of this backend in the store, as counted.
    fn stored(&self) -> u64 {
        self.stored.load(std::sync::atomic::Ordering::Relaxed)
    }

    fn set_stored(&self, count: u64) {
        self.stored
            .store(count, std::sync::atomic::Ordering::Relaxed);
    }

    /// Deletes a stored entry a scan found idle for too long, unless its recent copy knows a
    /// later use. Returns whether it was deleted.
    fn retire_if_expired(&self, key: &StickKey, entry: &StickEntry, now_ms: u64) -> bool {
        let mut inner = self.lock();
        let last_seen_ms = inner.recent.peek(key).map_or(entry.last_seen_ms, |slot| {
            slot.last_seen_ms.max(entry.last_seen_ms)
        });
        if !self.is_expired(last_seen_ms, now_ms) {
            return false;
        }
        self.forget(&mut inner, key);
        true
    }

    /// Makes `entries` (oldest first) recent entries, unless this process already has them.
    fn remember(&self, entries: Vec<(StickKey, StickEntry)>) {
        let mut inner = self.lock();
        for (key, entry) in entries {
            if !inner.recent.contains(&key) {
                inner.recent.push(key, Slot::stored(&entry));
            }
        }
    }
}

/// The `limit` most recently used of the entries offered.
#[derive(Default)]
pub(super) struct Newest {
    limit: usize,
    heap: BinaryHeap<Reverse<ByLastSeen>>,
}

impl Newest {
    pub(super) fn new(limit: usize) -> Self {
        Self {
            limit,
            heap: BinaryHeap::new(),
        }
    }

    pub(super) fn offer(&mut self, key: &StickKey, entry: &StickEntry) {
        if self.limit == 0 {
            return;
        }
        if self.heap.len() == self.limit {
            match self.heap.peek() {
                Some(Reverse(oldest)) if oldest.1.last_seen_ms < entry.last_seen_ms => {
                    self.heap.pop();
                }
                _ => return,
            }
        }
        self.heap.push(Reverse(ByLastSeen(*key, *entry)));
    }

    /// The entries kept, oldest first.
    pub(super) fn into_ascending(self) -> Vec<(StickKey, StickEntry)> {
        self.heap
            .into_sorted_vec()
            .into_iter()
            .rev()
            .map(|Reverse(ByLastSeen(key, entry))| (key, entry))
            .collect()
    }
}

/// An entry ordered by its last-seen time only.
struct ByLastSeen(StickKey, StickEntry);

impl PartialEq for ByLastSeen {
    fn eq(&self, other: &Self) -> bool {
        self.1.last_seen_ms == other.1.last_seen_ms
    }
}

impl Eq for ByLastSeen {}

impl PartialOrd for ByLastSeen {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for ByLastSeen {
    fn cmp(&self, other: &Self) -> Ordering {
        self.1.last_seen_ms.cmp(&other.1.last_seen_ms)
    }
}
