//! The pinned `SPLICE_FLOWS` map, seen from userspace.
//!
//! Every operation takes `&self`: the kernel serialises concurrent writers per element, so no
//! lock of ours ever sits between a worker's request path and the map (the hand-off, the
//! collector and the monitor all use it at once).

use std::{io, os::fd::AsFd as _};

use aya::maps::MapData;
use lb_common::{SpliceEntry, SpliceKey};

use crate::sys::bpf;

/// One entry per direction of every observed, held or spliced connection.
pub struct Flows {
    map: MapData,
}

// SAFETY (every `bpf::` call below): the map's key and value are a SpliceKey and a SpliceEntry;
// `Flows` is only made from our own object's map or a pinned one whose layout was checked
// (`program::check_flows_layout`).
impl Flows {
    /// `map` must be a splice flow map (see above).
    pub(super) fn new(map: MapData) -> Flows {
        Flows { map }
    }

    pub fn get(&self, key: &SpliceKey) -> io::Result<Option<SpliceEntry>> {
        // SAFETY: see above.
        unsafe { bpf::lookup(self.map.fd().as_fd(), key) }
    }

    pub fn insert(&self, key: &SpliceKey, entry: &SpliceEntry) -> io::Result<()> {
        // SAFETY: see above.
        unsafe { bpf::update(self.map.fd().as_fd(), key, entry, bpf::ANY) }
    }

    /// Removes `key`; a missing key is not an error.
    pub fn remove(&self, key: &SpliceKey) -> io::Result<()> {
        // SAFETY: see above.
        unsafe { bpf::delete(self.map.fd().as_fd(), key) }.map(drop)
    }

    /// Every entry, read in batches (a few syscalls for the whole map).
    pub fn entries(&self) -> io::Result<Vec<(SpliceKey, SpliceEntry)>> {
        let mut entries = Vec::new();
        // SAFETY: see above.
        unsafe {
            bpf::lookup_batches(self.map.fd().as_fd(), &mut |batch| {
                entries.extend_from_slice(batch);
            })
        }?;
        Ok(entries)
    }
}
