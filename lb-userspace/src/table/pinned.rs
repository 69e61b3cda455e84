//! The stick table's store: a BTF-described LRU hash map pinned in bpffs.
//!
//! One map holds the entries of every backend (keys carry the backend id), as many as their
//! `table_size`s add up to (see [`durable_capacity`]). Its layout, and when it is created,
//! adopted or migrated, are described in `docs/TABLE.md`.

use std::{
    io,
    path::{Path, PathBuf},
};

use aya::maps::{HashMap, Map, MapData, MapError, MapType};
use lb_common::{StickEntry, StickKey};

use super::store::{Storage, Stored};
use crate::{
    dataplane::{self, LayoutMismatch, MapLayout},
    sys::bpf,
};

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
        bpf::lookup(&self.map, key)
    }

    fn put(&self, key: &StickKey, entry: &StickEntry) -> io::Result<()> {
        bpf::update(&self.map, key, entry, bpf::ANY)
    }

    fn insert_new(&self, key: &StickKey, entry: &StickEntry) -> io::Result<bool> {
        bpf::insert_new(&self.map, key, entry)
    }

    fn delete(&self, key: &StickKey) -> io::Result<bool> {
        bpf::delete(&self.map, key)
    }

    /// In batches of a few thousand entries, one syscall each; entry by entry on a kernel
    /// without batch lookups. Entries that vanish while iterating are skipped.
    fn scan(&self, visit: &mut dyn FnMut(&[Stored])) -> io::Result<()> {
        match bpf::lookup_batches(&self.map, visit) {
            // No batch lookups on this kernel.
            Err(error) if bpf::batches_unsupported(&error) => {
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
