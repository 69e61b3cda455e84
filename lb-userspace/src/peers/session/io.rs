//! What goes into a session and what comes out of it, besides bytes: its setup, our entries
//! and lessons, and the events and counters it reports.

use std::sync::Arc;

use super::super::message::{KeyType, ServerKey, TableDefinition};

/// What the session is set up with.
#[derive(Debug, Clone)]
pub struct Setup {
    /// Our tables, by index, as we define them to the peer.
    pub tables: Vec<TableDefinition>,
    /// Whether the peer takes timed updates (it announced protocol 2.1).
    pub timed: bool,
    /// Per table: the update log position the peer acknowledged in an earlier session; live
    /// pushes resume after it. Missing tables start at 0.
    pub resume: Vec<u64>,
    /// Whether to ask the peer for a full resync first: when this process has not learned one
    /// from it yet. Later sessions (after a partition, a peer's silence) only resume.
    pub ask_resync: bool,
}

/// One of our entries, as sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalEntry {
    /// The key: the cookie's bytes, without NUL.
    pub key: Vec<u8>,
    /// The server it is stuck to, by name.
    pub server: Arc<str>,
    /// HAProxy's numeric id of that server here, 0 for none.
    pub server_id: i64,
}

/// A local change to push live: an entry and its position in its table's update log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    pub seq: u64,
    pub entry: LocalEntry,
}

/// One table's part of a lesson: every live entry with its remaining lifetime, and the update
/// log position the copy reflects (live pushes continue after it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lesson {
    pub table: usize,
    pub seq: u64,
    pub entries: Vec<(LocalEntry, u64)>,
}

/// An entry the peer pushed, to apply to our table `table`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Learned {
    pub table: usize,
    pub key: Vec<u8>,
    pub server: ServerKey,
    /// Its remaining lifetime in ms when the peer sent one (lessons); else a full lifetime.
    pub expire_ms: Option<u32>,
}

/// Something for the driver to act on or report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// Apply this entry to our table.
    Learned(Learned),
    /// An entry of a synced table without a server name (the peer stores only a numeric id,
    /// e.g. set from its CLI): not applied, since ids need not name the same server here.
    Nameless {
        table: usize,
        server_id: Option<i64>,
    },
    /// The peer acknowledged our pushes of `table` up to update log position `seq`: a later
    /// session resumes there.
    Acked { table: usize, seq: u64 },
    /// The peer's lesson is over; we confirmed it.
    LessonLearned { partial: bool },
    /// Our lesson is over: `entries` entries sent, then "finished".
    LessonTaught { entries: usize },
    /// A table of the peer whose updates are ignored; reported once per table and session.
    NotSynced { name: String, why: NotSynced },
}

/// Why a table of the peer is not synced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NotSynced {
    /// We have no table of that name.
    NoSuchTable,
    /// Ours has that name but another shape.
    Mismatch(Mismatch),
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

/// Counters since the last `Session::take_tally`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Tally {
    pub updates_sent: u64,
    pub updates_received: u64,
    /// Our updates the peer acknowledged.
    pub updates_acked: u64,
    /// Local entries not sent because their key is longer than the table's key length.
    pub keys_too_long: u64,
}
