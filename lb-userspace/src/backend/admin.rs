//! The operator's settings of a server (admin state, runtime weight) and where they are kept:
//! a [`SettingsStore`], the pinned `SERVER_ADMIN` map for the daemon (see [`super::pinned`]) and
//! memory for unit tests. They are read when a server's state is made (start, reload, a server
//! added back) and written when the operator changes them, so that reloads, upgrades, restarts
//! and crashes keep them (docs/OPERATIONS.md).

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, PoisonError},
};

use lb_common::{SERVER_ADMIN_DRAIN, SERVER_ADMIN_MAINT, SERVER_ADMIN_READY};

/// A server's admin state: the operator's say, beside the health checks' (up or down).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Admin {
    /// Serves as usual.
    #[default]
    Ready,
    /// Keeps its sessions; no new session and no cookie-less request lands there.
    Drain,
    /// No traffic; its sessions are redispatched on their next request.
    Maint,
}

impl Admin {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ready => "ready",
            Self::Drain => "drain",
            Self::Maint => "maint",
        }
    }

    /// As the pinned map stores it.
    pub fn to_stored(self) -> u32 {
        match self {
            Self::Ready => SERVER_ADMIN_READY,
            Self::Drain => SERVER_ADMIN_DRAIN,
            Self::Maint => SERVER_ADMIN_MAINT,
        }
    }

    /// From the pinned map; `None` for a value this version does not know.
    pub fn from_stored(value: u32) -> Option<Self> {
        match value {
            SERVER_ADMIN_READY => Some(Self::Ready),
            SERVER_ADMIN_DRAIN => Some(Self::Drain),
            SERVER_ADMIN_MAINT => Some(Self::Maint),
            _ => None,
        }
    }
}

/// What the operator set for one server.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Settings {
    pub admin: Admin,
    /// The weight set at run time.
    pub weight: u16,
    /// The configuration's weight when `weight` was set: once the configuration says otherwise,
    /// the configuration wins (the operator edited the file after the command).
    pub config_weight: u16,
}

impl Settings {
    /// The weight in force under a configuration that gives `config_weight`.
    pub fn weight_under(&self, config_weight: u16) -> u16 {
        if self.config_weight == config_weight {
            self.weight
        } else {
            config_weight
        }
    }

    /// Whether these are the defaults under `config_weight` (nothing worth keeping).
    pub fn is_default(&self, config_weight: u16) -> bool {
        self.admin == Admin::Ready && self.weight_under(config_weight) == config_weight
    }
}

/// Where settings are kept, by backend id and server name.
pub trait SettingsStore: Send + Sync {
    fn load(&self, backend_id: u32, server: &str) -> Option<Settings>;
    /// Keeps `settings`; the error says why they could not be kept.
    fn save(&self, backend_id: u32, server: &str, settings: &Settings) -> Result<(), String>;
    fn forget(&self, backend_id: u32, server: &str);
    /// Every server that has settings.
    fn servers(&self) -> Vec<(u32, String)>;
}

/// A shared handle on the daemon's settings store.
pub type SharedSettings = Arc<dyn SettingsStore>;

/// Settings in memory: unit tests, and a daemon whose map could not be opened.
#[derive(Default)]
pub struct MemorySettings {
    entries: Mutex<HashMap<(u32, String), Settings>>,
}

impl MemorySettings {
    pub fn shared() -> SharedSettings {
        Arc::new(Self::default())
    }

    fn entries(&self) -> std::sync::MutexGuard<'_, HashMap<(u32, String), Settings>> {
        self.entries.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl SettingsStore for MemorySettings {
    fn load(&self, backend_id: u32, server: &str) -> Option<Settings> {
        self.entries()
            .get(&(backend_id, server.to_owned()))
            .copied()
    }

    fn save(&self, backend_id: u32, server: &str, settings: &Settings) -> Result<(), String> {
        self.entries()
            .insert((backend_id, server.to_owned()), *settings);
        Ok(())
    }

    fn forget(&self, backend_id: u32, server: &str) {
        self.entries().remove(&(backend_id, server.to_owned()));
    }

    fn servers(&self) -> Vec<(u32, String)> {
        self.entries().keys().cloned().collect()
    }
}
