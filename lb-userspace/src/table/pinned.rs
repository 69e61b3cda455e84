//! The stick table's store: a BTF-described LRU hash map pinned in bpffs.
//!
//! One map holds the entries of every backend (keys carry the backend id), as many as their
//! `table_size`s add up to (see [`durable_capacity`]).

use std::{
    io,
    os::fd::AsFd as _,
    path::{Path, PathBuf},
};

use aya::maps::{HashMap, Map, MapData, MapError, MapType};
use lb_common::{StickEntry, StickKey};

use super::store::{Storage, Stored};
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
    #[error("reading the stick table")]
    Read(#[source] io::Error),
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

/// Capacity of the durable map for tables whose sizes add up to `total`: exactly that. The
/// map is the table, and its LRU the bound. (The kernel keeps some free slots in per-CPU lists
/// and may evict a few hundred entries before the map is completely full.)
pub fn durable_capacity(total: u64) -> u32 {
    u32::try_from(total).unwrap_or(u32::MAX)
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

    /// Every entry, oldest first (see [`Storage::scan`]).
    pub fn entries(&self) -> Result<Vec<(StickKey, StickEntry)>, DurableError> {
        let mut entries = Vec::new();
        self.scan(&mut |batch| entries.extend_from_slice(batch))
            .map_err(DurableError::Read)?;
        entries.sort_by_key(|(_, entry)| entry.last_seen_ms);
        Ok(entries)
    }

    fn copy_newest_from(&mut self, old: &Self, capacity: u32) -> Result<(), DurableError> {
        let entries = old.entries()?;
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

impl Storage for DurableTable {
    fn get(&self, key: &StickKey) -> io::Result<Option<StickEntry>> {
        sys::lookup(self.map_data().fd().as_fd(), key)
    }

    fn put(&self, key: &StickKey, entry: &StickEntry) -> io::Result<()> {
        sys::update(self.map_data().fd().as_fd(), key, entry, sys::ANY)
    }

    fn insert_new(&self, key: &StickKey, entry: &StickEntry) -> io::Result<bool> {
        match sys::update(self.map_data().fd().as_fd(), key, entry, sys::NOEXIST) {
            Ok(()) => Ok(true),
            Err(e) if e.raw_os_error() == Some(libc::EEXIST) => Ok(false),
            Err(e) => Err(e),
        }
    }

    fn delete(&self, key: &StickKey) -> io::Result<()> {
        sys::delete(self.map_data().fd().as_fd(), key)
    }

    /// In batches of a few thousand entries, one syscall each; entry by entry on a kernel
    /// without batch lookups. Entries that vanish while iterating are skipped.
    fn scan(&self, visit: &mut dyn FnMut(&[Stored])) -> io::Result<()> {
        match sys::lookup_batches(self.map_data().fd().as_fd(), visit) {
            // No batch lookups on this kernel.
            Err(error) if matches!(error.raw_os_error(), Some(libc::EINVAL | libc::EOPNOTSUPP)) => {
                tracing::debug!(%error, "batch lookup unavailable; reading entry by entry");
                for entry in self.map.iter().filter_map(Result::ok) {
                    visit(&[entry]);
                }
                Ok(())
            }
            other => other,
        }
    }
}

/// The map syscalls the table makes, on `&self` (aya 0.14's writes take `&mut`, which would
/// serialise every request of a backend on one lock), and batch lookups (which aya 0.14 lacks).
mod sys {
    use std::{
        io,
        mem::{size_of, MaybeUninit},
        os::fd::{AsRawFd as _, BorrowedFd},
    };

    use lb_common::{StickEntry, StickKey};

    use super::Stored;

    const BPF_MAP_LOOKUP_ELEM: libc::c_long = 1;
    const BPF_MAP_UPDATE_ELEM: libc::c_long = 2;
    const BPF_MAP_DELETE_ELEM: libc::c_long = 3;
    const BPF_MAP_LOOKUP_BATCH: libc::c_long = 24;
    /// `BPF_ANY`: create or replace.
    pub(super) const ANY: u64 = 0;
    /// `BPF_NOEXIST`: create only.
    pub(super) const NOEXIST: u64 = 1;
    const BATCH: usize = 4096;

    /// The element-command member of `union bpf_attr`.
    #[repr(C)]
    #[derive(Default)]
    struct ElemAttr {
        map_fd: u32,
        _pad: u32,
        key: u64,
        value: u64,
        flags: u64,
    }

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

    pub(super) fn lookup(map: BorrowedFd<'_>, key: &StickKey) -> io::Result<Option<StickEntry>> {
        let mut value = MaybeUninit::<StickEntry>::uninit();
        let mut attr = ElemAttr {
            map_fd: fd(map)?,
            key: key as *const StickKey as u64,
            value: value.as_mut_ptr() as u64,
            ..ElemAttr::default()
        };
        // SAFETY: an element attr; key and value are a StickKey and a StickEntry, the map's
        // (the layout check made sure).
        match unsafe { bpf(BPF_MAP_LOOKUP_ELEM, &mut attr) } {
            // SAFETY: the kernel wrote a whole value (plain old data).
            Ok(()) => Ok(Some(unsafe { value.assume_init() })),
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(None),
            Err(e) => Err(e),
        }
    }

    pub(super) fn update(
        map: BorrowedFd<'_>,
        key: &StickKey,
        value: &StickEntry,
        flags: u64,
    ) -> io::Result<()> {
        let mut attr = ElemAttr {
            map_fd: fd(map)?,
            key: key as *const StickKey as u64,
            value: value as *const StickEntry as u64,
            flags,
            ..ElemAttr::default()
        };
        // SAFETY: as in `lookup`.
        unsafe { bpf(BPF_MAP_UPDATE_ELEM, &mut attr) }
    }

    pub(super) fn delete(map: BorrowedFd<'_>, key: &StickKey) -> io::Result<()> {
        let mut attr = ElemAttr {
            map_fd: fd(map)?,
            key: key as *const StickKey as u64,
            ..ElemAttr::default()
        };
        // SAFETY: as in `lookup`, with no value.
        match unsafe { bpf(BPF_MAP_DELETE_ELEM, &mut attr) } {
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(()),
            other => other,
        }
    }

    /// Visits the whole map, [`BATCH`] entries per syscall.
    pub(super) fn lookup_batches(
        map: BorrowedFd<'_>,
        visit: &mut dyn FnMut(&[Stored]),
    ) -> io::Result<()> {
        let fd = fd(map)?;
        let mut keys = vec![MaybeUninit::<StickKey>::uninit(); BATCH];
        let mut values = vec![MaybeUninit::<StickEntry>::uninit(); BATCH];
        // Hash maps use a bucket index as the position token; a key-sized buffer is ample.
        let (mut position, mut next) = ([0u8; size_of::<StickKey>()], [0u8; size_of::<StickKey>()]);
        let mut batch = Vec::with_capacity(BATCH);
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
            // ENOENT: this batch holds the last entries.
            // SAFETY: a batch attr; keys and values have room for `count` StickKeys and
            // StickEntries, the map's (the layout check made sure).
            let done = match unsafe { bpf(BPF_MAP_LOOKUP_BATCH, &mut attr) } {
                Ok(()) => false,
                Err(e) if e.raw_os_error() == Some(libc::ENOENT) => true,
                Err(e) => return Err(e),
            };
            let count = (attr.count as usize).min(BATCH);
            batch.clear();
            // SAFETY: the kernel wrote `count` keys and values (plain old data; the layout
            // check made sure they are StickKey and StickEntry).
            batch.extend(
                (0..count).map(|i| unsafe { (keys[i].assume_init(), values[i].assume_init()) }),
            );
            visit(&batch);
            if done {
                return Ok(());
            }
            position = next;
            first = false;
        }
    }

    fn fd(map: BorrowedFd<'_>) -> io::Result<u32> {
        u32::try_from(map.as_raw_fd()).map_err(|_| io::Error::other("bad map fd"))
    }

    /// # Safety
    ///
    /// `attr` is the `bpf_attr` member `command` reads, and its pointers point to buffers the
    /// size of the map's keys and values (`count` of them for batches).
    unsafe fn bpf<A>(command: libc::c_long, attr: &mut A) -> io::Result<()> {
        // SAFETY: see the function's contract.
        let rc = unsafe { libc::syscall(libc::SYS_bpf, command, attr as *mut A, size_of::<A>()) };
        if rc < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(())
        }
    }
}
