//! Our backends' stick tables as peers see them: one wire table per backend, named like it.

use std::sync::Arc;

use lb_common::StickKey;

use super::message::{DataTypes, KeyType, TableDefinition};
use crate::backend::BackendState;

/// A backend's table, shared with peers under the backend's name.
pub struct SyncedTable {
    pub backend: Arc<BackendState>,
    /// Our id for the table in every session: its position among the backends, from 1.
    pub table_id: u64,
    /// The key length announced, HAProxy's `len`; the definition says `key_len + 1`.
    pub key_len: u8,
}

/// Why a peer's table definition does not match ours, so its updates are ignored.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Mismatch {
    #[error("its key type is {found:?}, ours is a string")]
    KeyType { found: KeyType },
    #[error("its key length is {found} (HAProxy `len {len}`), ours is {ours}: set peer_key_len = {len} or change the peer's table", len = found.saturating_sub(1))]
    KeyLength { found: u64, ours: u64 },
    #[error("it stores neither server_key nor server_id")]
    NoServer,
}

impl SyncedTable {
    /// What we tell peers about this table.
    pub fn definition(&self) -> TableDefinition {
        TableDefinition::sticky_string(
            self.table_id,
            self.backend.name.clone(),
            u64::from(self.key_len),
            self.backend.table.expire_ms(),
        )
    }

    /// Whether a peer's table of the same name can be synced with ours: HAProxy ignores a
    /// definition whose key type or length differ, and so do we.
    pub fn check(&self, def: &TableDefinition) -> Result<(), Mismatch> {
        if def.key_type != KeyType::String {
            return Err(Mismatch::KeyType {
                found: def.key_type,
            });
        }
        let ours = u64::from(self.key_len) + 1;
        if def.key_len != ours {
            return Err(Mismatch::KeyLength {
                found: def.key_len,
                ours,
            });
        }
        if !def.data_types.contains(DataTypes::SERVER_KEY) {
            return Err(Mismatch::NoServer);
        }
        Ok(())
    }

    /// The key as sent: the stored cookie bytes, or `None` when longer than `key_len`.
    pub fn wire_key<'k>(&self, key: &'k StickKey) -> Option<&'k [u8]> {
        let end = key
            .cookie
            .iter()
            .position(|&b| b == 0)
            .unwrap_or(key.cookie.len());
        (end <= usize::from(self.key_len)).then(|| &key.cookie[..end])
    }

    /// HAProxy's default numeric id of a server: its position in the backend, from 1. Sent
    /// with the name for peers that look servers up by id; 0 (none) for a name we don't have.
    pub fn server_id(&self, name: &str) -> i64 {
        self.backend
            .servers()
            .iter()
            .position(|s| &*s.name == name)
            .and_then(|i| i64::try_from(i + 1).ok())
            .unwrap_or(0)
    }
}
