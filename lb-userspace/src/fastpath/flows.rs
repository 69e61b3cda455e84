//! The pinned `SPLICE_FLOWS` map, seen from userspace.

use aya::maps::{HashMap, MapData, MapError};
use lb_common::{SpliceEntry, SpliceKey};

/// One entry per direction of every observed, held or spliced connection.
pub struct Flows {
    map: HashMap<MapData, SpliceKey, SpliceEntry>,
}

impl Flows {
    pub(super) fn new(map: HashMap<MapData, SpliceKey, SpliceEntry>) -> Flows {
        Flows { map }
    }

    pub fn get(&self, key: &SpliceKey) -> Result<Option<SpliceEntry>, MapError> {
        match self.map.get(key, 0) {
            Ok(entry) => Ok(Some(entry)),
            Err(MapError::KeyNotFound) => Ok(None),
            Err(e) => Err(e),
        }
    }

    pub fn insert(&mut self, key: &SpliceKey, entry: &SpliceEntry) -> Result<(), MapError> {
        self.map.insert(key, entry, 0)
    }

    /// Removes `key`; a missing key is not an error.
    pub fn remove(&mut self, key: &SpliceKey) -> Result<(), MapError> {
        match self.map.remove(key) {
            Err(MapError::KeyNotFound) => Ok(()),
            other => other,
        }
    }

    /// Sets the state of an existing entry, keeping what the program recorded in it.
    ///
    /// Read-modify-write: a packet processed between the read and the write loses its update of
    /// the entry's TSval/time fields, which only matters for the next snapshot's TSval, and
    /// [`super::splice`] reads that after the HOLD is in place.
    pub fn set_state(&mut self, key: &SpliceKey, state: u32) -> Result<(), MapError> {
        let mut entry = self.get(key)?.unwrap_or_default();
        entry.state = state;
        self.insert(key, &entry)
    }

    /// Every entry. Entries that vanish while iterating are skipped.
    pub fn entries(&self) -> Vec<(SpliceKey, SpliceEntry)> {
        self.map.iter().filter_map(Result::ok).collect()
    }
}
