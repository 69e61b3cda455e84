//! The durable copy of the stick table: a BTF-described LRU hash map pinned in bpffs.
//!
//! One map holds the entries of every backend (keys carry the backend id). The in-memory tables
//! enforce each backend's exact bound; the map is sized with slack (see [`durable_capacity`]) so
//! the kernel's approximate LRU never evicts an entry the in-memory table still holds.

use std::{
    io,
    os::fd::AsFd as _,
    path::{Path, PathBuf},
};

use aya::maps::{HashMap, Map, MapData, MapError, MapType};
use lb_common::{StickEntry, StickKey};

use super::JournalOp;
use crate::dataplane::{self, LayoutMismatch, MapLayout};

/// Errors opening, adopting or writing the durable table.
#[derive(Debug, thiserror::Error)]
pub enum DurableError {
    #[error("the eBPF object has no map {name}")]
    MissingMap { name: &'static str },
    #[error("opening the pinned table {path}")]
    OpenPinned {
        path: PathBuf,
        #[source]
        source: MapError,
    },
    #[error(transparent)]
    Incompatible(#[from] LayoutMismatch),
    #[error("pinning the table at {path}")]
    Pin {
        path: PathBuf,
        #[source]
        source: aya::pin::PinError,
    },
    #[error("replacing the pinned table at {path}")]
    Replace {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("stick table map operation")]
    Map(#[from] MapError),
}

/// What opening the durable table found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Origin {
    /// No pinned table was there; a new one was pinned.
    Created,
    /// The pinned table was adopted as it was.
    Adopted,
    /// The pinned table had another capacity; its entries were copied into a new one.
    Migrated { from_capacity: u32 },
}

/// Capacity of the durable map for tables whose sizes add up to `total`.
///
/// The kernel's LRU keeps free nodes in per-CPU lists and may evict before the map is full;
/// a sixteenth more plus a fixed margin keeps that from ever touching a live entry.
pub fn durable_capacity(total: u64) -> u32 {
    let with_slack = total.saturating_add(total / 16).saturating_add(4096);
    u32::try_from(with_slack).unwrap_or(u32::MAX)
}

pub struct DurableTable {
    map: HashMap<MapData, StickKey, StickEntry>,
}

impl DurableTable {
    /// Adopts the table pinned at `path`, or pins `fresh` (the map just created from the eBPF
    /// object with `capacity` entries) there. A pinned table of another capacity is migrated.
    pub fn open(fresh: Map, path: &Path, capacity: u32) -> Result<(Self, Origin), DurableError> {
        let fresh = HashMap::<MapData, StickKey, StickEntry>::try_from(fresh)?;
        if !path.exists() {
            pin(&fresh, path)?;
            return Ok((Self { map: fresh }, Origin::Created));
        }
        let pinned = Self::open_existing(path)?;
        let pinned_capacity = pinned.capacity()?;
        if pinned_capacity == capacity {
            return Ok((pinned, Origin::Adopted));
        }
        let mut migrated = Self { map: fresh };
        migrated.copy_newest_from(&pinned, capacity)?;
        replace_pin(&migrated.map, path)?;
        Ok((
            migrated,
            Origin::Migrated {
                from_capacity: pinned_capacity,
            },
        ))
    }

    /// Opens the table pinned at `path`, checking it has this version's layout.
    pub fn open_existing(path: &Path) -> Result<Self, DurableError> {
        let data = MapData::from_pin(path).map_err(|source| DurableError::OpenPinned {
            path: path.to_owned(),
            source,
        })?;
        check_layout(&data, path)?;
        let map = HashMap::try_from(Map::from_map_data(data)?)?;
        Ok(Self { map })
    }

    pub fn capacity(&self) -> Result<u32, DurableError> {
        Ok(self.map_data_info()?.max_entries())
    }

    /// Every entry, oldest first. Read in batches (one syscall per few thousand entries: a
    /// restart adopts a million in well under a second); entry by entry on a kernel without
    /// batch lookups. Entries that vanish while iterating are skipped.
    pub fn entries(&self) -> Vec<(StickKey, StickEntry)> {
        let mut entries = match batch::read_all(self.map_data().fd().as_fd()) {
            Ok(entries) => entries,
            Err(error) => {
                tracing::debug!(%error, "batch lookup unavailable; reading entry by entry");
                self.map.iter().filter_map(Result::ok).collect()
            }
        };
        entries.sort_by_key(|(_, entry)| entry.last_seen_ms);
        entries
    }

    pub fn apply(&mut self, op: JournalOp) -> Result<(), MapError> {
        match op {
            JournalOp::Put(key, entry) => self.map.insert(key, entry, 0),
            JournalOp::Delete(key) => match self.map.remove(&key) {
                Err(MapError::KeyNotFound) => Ok(()),
                other => other,
            },
        }
    }

    fn copy_newest_from(&mut self, old: &Self, capacity: u32) -> Result<(), MapError> {
        let entries = old.entries();
        let keep = usize::try_from(capacity).unwrap_or(usize::MAX);
        let skip = entries.len().saturating_sub(keep);
        for (key, entry) in entries.into_iter().skip(skip) {
            self.map.insert(key, entry, 0)?;
        }
        Ok(())
    }

    fn map_data_info(&self) -> Result<aya::maps::MapInfo, MapError> {
        self.map_data().info()
    }

    fn map_data(&self) -> &MapData {
        aya::maps::IterableMap::map(&self.map)
    }
}

fn check_layout(data: &MapData, path: &Path) -> Result<(), DurableError> {
    let expected = MapLayout::of::<StickKey, StickEntry>(MapType::LruHash);
    Ok(dataplane::check_layout(
        data,
        path,
        "a stick table",
        expected,
    )??)
}

fn pin(map: &HashMap<MapData, StickKey, StickEntry>, path: &Path) -> Result<(), DurableError> {
    aya::maps::IterableMap::map(map)
        .pin(path)
        .map_err(|source| DurableError::Pin {
            path: path.to_owned(),
            source,
        })
}

/// Pins `map` beside `path`, then renames it over `path`, so a crash leaves either the old or
/// the new table pinned, never none.
fn replace_pin(
    map: &HashMap<MapData, StickKey, StickEntry>,
    path: &Path,
) -> Result<(), DurableError> {
    // bpffs refuses names with a dot, so the staging name uses a suffix instead of an extension.
    let mut staging_name = path.file_name().unwrap_or_default().to_owned();
    staging_name.push("_migrating");
    let staging = path.with_file_name(staging_name);
    let _ = std::fs::remove_file(&staging);
    pin(map, &staging)?;
    std::fs::rename(&staging, path).map_err(|source| DurableError::Replace {
        path: path.to_owned(),
        source,
    })
}

/// Reads the pinned table from another file descriptor than the writer's, for lookups on a miss
/// (see [`super::Fallback`]): during an upgrade the old and the new process share the map.
pub struct DurableReader {
    map: HashMap<MapData, StickKey, StickEntry>,
}

impl DurableReader {
    pub fn open(path: &Path) -> Result<Self, DurableError> {
        Ok(Self {
            map: DurableTable::open_existing(path)?.map,
        })
    }
}

/// A [`DurableReader`] consulted only while another process of ours writes the same map
/// (an upgrade's overlap): otherwise every miss would cost a syscall for nothing, since the
/// in-memory table holds everything this process wrote or adopted.
pub struct SharedTableReader {
    reader: DurableReader,
    sharing: std::sync::atomic::AtomicBool,
}

impl SharedTableReader {
    pub fn new(reader: DurableReader, sharing: bool) -> Self {
        Self {
            reader,
            sharing: std::sync::atomic::AtomicBool::new(sharing),
        }
    }

    /// Whether another process writes the map from now on.
    pub fn set_sharing(&self, sharing: bool) {
        self.sharing
            .store(sharing, std::sync::atomic::Ordering::Relaxed);
    }
}

impl super::Fallback for SharedTableReader {
    fn lookup(&self, key: &StickKey) -> Option<(std::sync::Arc<str>, u64)> {
        if !self.sharing.load(std::sync::atomic::Ordering::Relaxed) {
            return None;
        }
        super::Fallback::lookup(&self.reader, key)
    }
}

impl super::Fallback for DurableReader {
    fn lookup(&self, key: &StickKey) -> Option<(std::sync::Arc<str>, u64)> {
        let entry = self.map.get(key, 0).ok()?;
        Some((
            std::sync::Arc::from(super::field_text(&entry.server)),
            entry.last_seen_ms,
        ))
    }
}

/// `BPF_MAP_LOOKUP_BATCH` over the whole map (aya 0.14 has no batch operations).
mod batch {
    use std::{
        io,
        mem::{size_of, MaybeUninit},
        os::fd::{AsRawFd as _, BorrowedFd},
    };

    use lb_common::{StickEntry, StickKey};

    const BPF_MAP_LOOKUP_BATCH: libc::c_long = 24;
    const BATCH: usize = 4096;

    /// The `batch` member of `union bpf_attr`.
    #[repr(C)]
    #[derive(Default)]
    struct BatchAttr {
        in_batch: u64,
        out_batch: u64,
        keys: u64,
        values: u64,
        count: u32,
        map_fd: u32,
        elem_flags: u64,
        flags: u64,
    }

    pub(super) fn read_all(map: BorrowedFd<'_>) -> io::Result<Vec<(StickKey, StickEntry)>> {
        let fd = u32::try_from(map.as_raw_fd()).map_err(|_| io::Error::other("bad map fd"))?;
        let mut keys = vec![MaybeUninit::<StickKey>::uninit(); BATCH];
        let mut values = vec![MaybeUninit::<StickEntry>::uninit(); BATCH];
        // Hash maps use a bucket index as the position token; a key-sized buffer is ample.
        let (mut position, mut next) = ([0u8; size_of::<StickKey>()], [0u8; size_of::<StickKey>()]);
        let mut out = Vec::new();
        let mut first = true;
        loop {
            let mut attr = BatchAttr {
                in_batch: if first { 0 } else { position.as_ptr() as u64 },
                out_batch: next.as_mut_ptr() as u64,
                keys: keys.as_mut_ptr() as u64,
                values: values.as_mut_ptr() as u64,
                count: BATCH as u32,
                map_fd: fd,
                ..BatchAttr::default()
            };
            // SAFETY: attr points to a valid bpf_attr prefix for this command; keys and values
            // have room for `count` elements of the map's key and value sizes (the layout
            // check made sure they are StickKey and StickEntry); the kernel writes at most that.
            let rc = unsafe {
                libc::syscall(
                    libc::SYS_bpf,
                    BPF_MAP_LOOKUP_BATCH,
                    &mut attr as *mut BatchAttr,
                    size_of::<BatchAttr>(),
                )
            };
            // ENOENT: this batch holds the last entries.
            let done = match (rc < 0).then(io::Error::last_os_error) {
                None => false,
                Some(e) if e.raw_os_error() == Some(libc::ENOENT) => true,
                Some(e) => return Err(e),
            };
            let count = (attr.count as usize).min(BATCH);
            for i in 0..count {
                // SAFETY: the kernel wrote `count` keys and values (plain old data).
                out.push(unsafe { (keys[i].assume_init(), values[i].assume_init()) });
            }
            if done {
                return Ok(out);
            }
            position = next;
            first = false;
        }
    }
}
