//! The pinned `SPLICE_FLOWS` map, seen from userspace.
//!
//! Every operation takes `&self`: the kernel serialises concurrent writers per element, so no
//! lock of ours ever sits between a worker's request path and the map (the hand-off, the
//! collector and the monitor all use it at once).

use std::io;

use aya::maps::{HashMap, Map, MapData, MapError};
use lb_common::{SpliceEntry, SpliceKey};

use crate::sys::bpf;

/// One entry per direction of every observed, held or spliced connection.
pub struct Flows {
    map: HashMap<MapData, SpliceKey, SpliceEntry>,
}

impl Flows {
    /// `map` is our own object's flow map or a pinned one whose layout was checked
    /// (`program::check_flows_layout`); aya checks its key and value sizes again here.
    pub(super) fn new(map: MapData) -> Result<Flows, MapError> {
        let map = HashMap::try_from(Map::HashMap(map))?;
        Ok(Flows { map })
    }

    pub fn get(&self, key: &SpliceKey) -> io::Result<Option<SpliceEntry>> {
        bpf::lookup(&self.map, key)
    }

    pub fn insert(&self, key: &SpliceKey, entry: &SpliceEntry) -> io::Result<()> {
        bpf::update(&self.map, key, entry, bpf::ANY)
    }

    /// Removes `key`; a missing key is not an error.
    pub fn remove(&self, key: &SpliceKey) -> io::Result<()> {
        bpf::delete(&self.map, key).map(drop)
    }

    /// Every entry, read in batches (a few syscalls for the whole map).
    pub fn entries(&self) -> io::Result<Vec<(SpliceKey, SpliceEntry)>> {
        let mut entries = Vec::new();
        bpf::lookup_batches(&self.map, &mut |batch| {
            entries.extend_from_slice(batch);
        })?;
        Ok(entries)
    }
}
