//! The servers' settings store for the daemon: the `SERVER_ADMIN` hash map, pinned beside the
//! stick table (`<pin_dir>/<instance>/v1/SERVER_ADMIN`), so that what the operator set outlives
//! the process like the table does. `bpftool map dump pinned ...` shows it decoded.

use std::path::{Path, PathBuf};

use aya::maps::{HashMap, Map, MapData, MapError, MapType};
use lb_common::{ServerAdminEntry, ServerAdminKey, SERVER_NAME_LEN};

use super::admin::{Admin, Settings, SettingsStore};
use crate::{
    dataplane::{self, LayoutMismatch, MapLayout},
    sys::bpf,
    table::{field_text, now_ms, to_field},
};

/// Errors opening the pinned settings map.
#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    #[error("the eBPF object has no map {name}")]
    MissingMap { name: &'static str },
    #[error("opening the pinned server settings {path}")]
    Open {
        path: PathBuf,
        #[source]
        source: MapError,
    },
    #[error(transparent)]
    Incompatible(#[from] LayoutMismatch),
    #[error("pinning the server settings at {path}")]
    Pin {
        path: PathBuf,
        #[source]
        source: aya::pin::PinError,
    },
    #[error("server settings map operation")]
    Map(#[from] MapError),
}

pub struct PinnedSettings {
    map: HashMap<MapData, ServerAdminKey, ServerAdminEntry>,
}

impl PinnedSettings {
    /// Adopts the map pinned at `path`, or pins `fresh` (made from the eBPF object) there.
    pub fn open(fresh: Map, path: &Path) -> Result<Self, SettingsError> {
        if path.exists() {
            return Self::open_existing(path);
        }
        let map = HashMap::try_from(fresh)?;
        aya::maps::IterableMap::map(&map)
            .pin(path)
            .map_err(|source| SettingsError::Pin {
                path: path.to_owned(),
                source,
            })?;
        Ok(Self { map })
    }

    /// Opens the map pinned at `path`, checking it has this version's layout.
    pub fn open_existing(path: &Path) -> Result<Self, SettingsError> {
        let data = MapData::from_pin(path).map_err(|source| SettingsError::Open {
            path: path.to_owned(),
            source,
        })?;
        let expected = MapLayout::of::<ServerAdminKey, ServerAdminEntry>(MapType::Hash);
        dataplane::check_layout(&data, path, "a server settings map", expected)??;
        Ok(Self {
            map: HashMap::try_from(Map::from_map_data(data)?)?,
        })
    }
}

fn key(backend_id: u32, server: &str) -> Option<ServerAdminKey> {
    Some(ServerAdminKey {
        backend_id,
        server: to_field::<SERVER_NAME_LEN>(server)?,
    })
}

impl SettingsStore for PinnedSettings {
    fn load(&self, backend_id: u32, server: &str) -> Option<Settings> {
        let entry = match bpf::lookup(&self.map, &key(backend_id, server)?) {
            Ok(entry) => entry?,
            Err(error) => {
                tracing::error!(%error, server, "reading the server settings failed");
                return None;
            }
        };
        let Some(admin) = Admin::from_stored(entry.admin) else {
            tracing::warn!(
                server,
                admin = entry.admin,
                "unknown admin state in the server settings; treating the server as ready"
            );
            return None;
        };
        let weight = |w: u32| u16::try_from(w).unwrap_or(crate::config::MAX_WEIGHT);
        Some(Settings {
            admin,
            weight: weight(entry.weight),
            config_weight: weight(entry.config_weight),
        })
    }

    fn save(&self, backend_id: u32, server: &str, settings: &Settings) -> Result<(), String> {
        let key = key(backend_id, server).ok_or("the server name is too long to keep")?;
        let entry = ServerAdminEntry {
            admin: settings.admin.to_stored(),
            weight: u32::from(settings.weight),
            config_weight: u32::from(settings.config_weight),
            flags: 0,
            changed_ms: now_ms(),
        };
        bpf::update(&self.map, &key, &entry, bpf::ANY)
            .map_err(|error| format!("writing the server settings failed: {error}"))
    }

    fn forget(&self, backend_id: u32, server: &str) {
        let Some(key) = key(backend_id, server) else {
            return;
        };
        if let Err(error) = bpf::delete(&self.map, &key) {
            tracing::error!(%error, server, "deleting the server settings failed");
        }
    }

    fn servers(&self) -> Vec<(u32, String)> {
        self.map
            .keys()
            .filter_map(Result::ok)
            .map(|key| (key.backend_id, field_text(&key.server)))
            .collect()
    }
}
