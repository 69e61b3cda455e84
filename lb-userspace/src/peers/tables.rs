//! Our backends' stick tables as peers see them: one wire table per backend, named like it
//! (docs/PEERS.md, "The stick table"). Turns table contents into the session's inputs and its
//! learned entries into table changes.

use std::sync::Arc;

use lb_common::StickKey;

use super::{
    message::TableDefinition,
    session::{Change, Learned, Lesson, LocalEntry},
};
use crate::{backend::BackendState, table::RemoteOutcome};

/// A backend's table, shared with peers under the backend's name.
pub struct SyncedTable {
    pub backend: Arc<BackendState>,
    /// Our id for the table in every session: its position among the backends, from 1.
    pub table_id: u64,
    /// The key length announced, HAProxy's `len`; the definition says `key_len + 1`.
    pub key_len: u8,
}

/// What applying a learned entry did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Applied {
    pub outcome: RemoteOutcome,
    /// Whether this node has the server the entry names. The entry is kept either way: a
    /// request for it here is redispatched as for a server that is down.
    pub known_server: bool,
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

    /// Up to `limit` local changes after update log position `seq`.
    pub fn changes_after(&self, seq: u64, limit: usize) -> Vec<Change> {
        self.backend
            .table
            .updates_after(seq, limit)
            .into_iter()
            .map(|pending| Change {
                seq: pending.seq,
                entry: self.entry(&pending.key, pending.server),
            })
            .collect()
    }

    /// Every live entry, oldest first, to teach as table number `table` of a session.
    pub fn lesson(&self, table: usize, now_ms: u64) -> Lesson {
        let (seq, entries) = self.backend.table.teach_snapshot(now_ms);
        Lesson {
            table,
            seq,
            entries: entries
                .into_iter()
                .map(|teach| (self.entry(&teach.key, teach.server), teach.remaining_ms))
                .collect(),
        }
    }

    /// Applies an entry a peer pushed, by the convergence rule of `crate::table`'s `replica`.
    pub fn apply(&self, learned: &Learned, now_ms: u64) -> Applied {
        let server = learned.server.as_str();
        let known_server = self.backend.server(server).is_some();
        let key = self.backend.table.key(&learned.key);
        let outcome = self.backend.table.apply_remote(
            key,
            Arc::from(server),
            learned.expire_ms.map(u64::from),
            now_ms,
        );
        Applied {
            outcome,
            known_server,
        }
    }

    /// An entry as the session sends it. The key is the stored cookie up to its first NUL;
    /// the session skips keys longer than [`SyncedTable::key_len`].
    fn entry(&self, key: &StickKey, server: Arc<str>) -> LocalEntry {
        let end = key
            .cookie
            .iter()
            .position(|&b| b == 0)
            .unwrap_or(key.cookie.len());
        LocalEntry {
            key: key.cookie[..end].to_vec(),
            server_id: self.server_id(&server),
            server,
        }
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
