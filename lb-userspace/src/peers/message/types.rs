//! The values carried by stick-table messages, and what HAProxy's data types look like on the
//! wire (HAProxy's `stktable_data_types[]`; docs/PEERS.md, "Messages and encodings").

use std::fmt;

use super::{TABLE_INC_UPDATE, TABLE_TIMED_INC_UPDATE, TABLE_TIMED_UPDATE, TABLE_UPDATE};

/// The longest server key (server name) accepted. HAProxy only bounds it by its buffer; 1 KiB
/// bounds the dictionary cache at 128 KiB while no real server name comes close.
pub const MAX_SERVER_KEY_LEN: usize = 1024;

/// Elements of an array data type (HAProxy's `STKTABLE_MAX_DT_ARRAY_SIZE`).
pub(super) const MAX_ARRAY_LEN: u64 = 100;

/// A table's key type, as numbered on the wire (HAProxy's `PEER_KT_*`, not its sample types).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyType {
    /// 2: a 32-bit integer, sent as 4 bytes big-endian.
    SignedInt,
    /// 4: an IPv4 address, `key_len` (4) bytes.
    Ipv4,
    /// 5: an IPv6 address, `key_len` (16) bytes.
    Ipv6,
    /// 6: a string, sent as varint length + bytes, no NUL. `key_len` counts the NUL.
    String,
    /// 7: binary, `key_len` bytes.
    Binary,
    /// Anything else; updates of such a table cannot be decoded.
    Other(u64),
}

impl KeyType {
    pub fn from_wire(value: u64) -> Self {
        match value {
            2 => Self::SignedInt,
            4 => Self::Ipv4,
            5 => Self::Ipv6,
            6 => Self::String,
            7 => Self::Binary,
            other => Self::Other(other),
        }
    }

    pub fn to_wire(self) -> u64 {
        match self {
            Self::SignedInt => 2,
            Self::Ipv4 => 4,
            Self::Ipv6 => 5,
            Self::String => 6,
            Self::Binary => 7,
            Self::Other(other) => other,
        }
    }
}

/// The set of data types a table stores: bit `1 << dt` per type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct DataTypes(pub u64);

impl DataTypes {
    /// `server_id`: the server's numeric id, a signed int.
    pub const SERVER_ID: u8 = 0;
    /// `server_key`: the server's name, sent through the session's dictionary cache.
    pub const SERVER_KEY: u8 = 19;

    /// What `stick on` / `stick store-*` tables hold.
    pub fn sticky() -> Self {
        Self((1 << Self::SERVER_ID) | (1 << Self::SERVER_KEY))
    }

    pub fn contains(self, data_type: u8) -> bool {
        data_type < 64 && self.0 & (1 << data_type) != 0
    }

    /// The data types present, in the order their values are sent (ascending).
    pub fn iter(self) -> impl Iterator<Item = u8> {
        (0..64u8).filter(move |&dt| self.contains(dt))
    }
}

/// The parameters a definition gives for one data type: arrays give their length, frequency
/// counters their period. Kept so a decoder can size array values and a caller can inspect them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TypeParam {
    pub data_type: u8,
    /// Number of elements, for array types (`gpt`, `gpc`, `gpc_rate`).
    pub array_len: Option<u64>,
    /// Period in ms, for frequency counters.
    pub period_ms: Option<u64>,
}

/// A table as described by its sender (`0a 82`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableDefinition {
    /// The sender's id for this table in this session, from 1. Acks name it.
    pub table_id: u64,
    /// Tables are matched by this name: the backend's name.
    pub name: String,
    pub key_type: KeyType,
    /// For string keys, the configured `len` + 1 (the NUL counts): `len 32` sends 33.
    pub key_len: u64,
    pub data_types: DataTypes,
    /// The table's `expire` in ms, 0 for none (also when an old sender omits it).
    pub expire_ms: u64,
    /// Per-type parameters, in data type order.
    pub params: Vec<TypeParam>,
}

impl TableDefinition {
    /// A `stick-table type string len <len>` table holding `server_id` and `server_key`,
    /// which is what `stick on` / `stick store-response` tables are.
    pub fn sticky_string(table_id: u64, name: impl Into<String>, len: u64, expire_ms: u64) -> Self {
        Self {
            table_id,
            name: name.into(),
            key_type: KeyType::String,
            key_len: len.saturating_add(1),
            data_types: DataTypes::sticky(),
            expire_ms,
            params: Vec::new(),
        }
    }

    pub(super) fn param(&self, data_type: u8) -> Option<&TypeParam> {
        self.params
            .iter()
            .find(|param| param.data_type == data_type)
    }
}

/// The wire form of an update.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpdateKind {
    /// `0x80`: carries its update id.
    Explicit,
    /// `0x81`: its id is the previous one of the table + 1.
    Incremental,
    /// `0x85`: carries its update id and the entry's remaining lifetime.
    Timed,
    /// `0x86`: previous id + 1, and the entry's remaining lifetime.
    TimedIncremental,
}

impl UpdateKind {
    pub fn from_type_byte(kind: u8) -> Option<Self> {
        match kind {
            TABLE_UPDATE => Some(Self::Explicit),
            TABLE_INC_UPDATE => Some(Self::Incremental),
            TABLE_TIMED_UPDATE => Some(Self::Timed),
            TABLE_TIMED_INC_UPDATE => Some(Self::TimedIncremental),
            _ => None,
        }
    }

    pub fn type_byte(self) -> u8 {
        match self {
            Self::Explicit => TABLE_UPDATE,
            Self::Incremental => TABLE_INC_UPDATE,
            Self::Timed => TABLE_TIMED_UPDATE,
            Self::TimedIncremental => TABLE_TIMED_INC_UPDATE,
        }
    }

    /// Whether the update id is on the wire.
    pub fn has_id(self) -> bool {
        matches!(self, Self::Explicit | Self::Timed)
    }

    /// Whether an expire is on the wire.
    pub fn is_timed(self) -> bool {
        matches!(self, Self::Timed | Self::TimedIncremental)
    }

    /// The kind with these properties.
    pub fn new(has_id: bool, timed: bool) -> Self {
        match (has_id, timed) {
            (true, false) => Self::Explicit,
            (false, false) => Self::Incremental,
            (true, true) => Self::Timed,
            (false, true) => Self::TimedIncremental,
        }
    }
}

/// One stick-table entry pushed by a peer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Update {
    /// The sender's id of the table this update is for (the last defined or switched to).
    pub table_id: u64,
    pub kind: UpdateKind,
    /// The update id: read from the wire for explicit kinds, previous + 1 for incremental ones
    /// (as HAProxy's receiver counts). Ack the last one received.
    pub update_id: u32,
    /// The entry's remaining lifetime in ms, for timed kinds; otherwise the receiver applies
    /// its own table's expire.
    pub expire_ms: Option<u32>,
    /// The key: for string tables the bytes without NUL; for integer tables 4 bytes big-endian;
    /// otherwise `key_len` raw bytes.
    pub key: Vec<u8>,
    /// `server_id`, when the table stores it.
    pub server_id: Option<i64>,
    /// `server_key`, when the table stores it and the entry has one.
    pub server_key: Option<ServerKey>,
}

/// A server name as stored in `server_key`: non-empty UTF-8 without NUL, at most
/// [`MAX_SERVER_KEY_LEN`] bytes.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ServerKey(String);

/// Why a name cannot be a [`ServerKey`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ServerKeyError {
    #[error("server key is empty")]
    Empty,
    #[error("server key is {len} bytes, over {MAX_SERVER_KEY_LEN}")]
    TooLong { len: usize },
    /// HAProxy stores it as a C string, so it would silently be cut at the NUL.
    #[error("server key contains a NUL byte")]
    HasNul,
    #[error("server key is not UTF-8")]
    NotUtf8,
}

impl ServerKey {
    pub fn new(name: impl Into<String>) -> Result<Self, ServerKeyError> {
        let name = name.into();
        if name.is_empty() {
            return Err(ServerKeyError::Empty);
        }
        if name.len() > MAX_SERVER_KEY_LEN {
            return Err(ServerKeyError::TooLong { len: name.len() });
        }
        if name.contains('\0') {
            return Err(ServerKeyError::HasNul);
        }
        Ok(Self(name))
    }

    pub fn from_bytes(bytes: &[u8]) -> Result<Self, ServerKeyError> {
        if bytes.len() > MAX_SERVER_KEY_LEN {
            return Err(ServerKeyError::TooLong { len: bytes.len() });
        }
        let name = std::str::from_utf8(bytes).map_err(|_| ServerKeyError::NotUtf8)?;
        Self::new(name)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ServerKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// How the values of a data type are laid out in an update.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Layout {
    /// One varint: signed (sign-extended to 64 bits), unsigned int or unsigned long long.
    Int,
    /// Three varints: ms since the current period began, current and previous counts.
    FreqCounter,
    /// The dictionary form of `server_key`.
    Dict,
}

/// A known data type: its name, layout, and whether it is an array.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct TypeInfo {
    pub(super) name: &'static str,
    pub(super) layout: Layout,
    pub(super) is_array: bool,
}

/// HAProxy's data types up to 3.x (`glitch_*` arrived after 2.6). A type missing here cannot
/// be sized, so a definition using it cannot be followed.
pub(super) fn type_info(data_type: u8) -> Option<TypeInfo> {
    use Layout::{Dict, FreqCounter as Frq, Int};
    let (name, layout, is_array) = match data_type {
        0 => ("server_id", Int, false),
        1 => ("gpt0", Int, false),
        2 => ("gpc0", Int, false),
        3 => ("gpc0_rate", Frq, false),
        4 => ("conn_cnt", Int, false),
        5 => ("conn_rate", Frq, false),
        6 => ("conn_cur", Int, false),
        7 => ("sess_cnt", Int, false),
        8 => ("sess_rate", Frq, false),
        9 => ("http_req_cnt", Int, false),
        10 => ("http_req_rate", Frq, false),
        11 => ("http_err_cnt", Int, false),
        12 => ("http_err_rate", Frq, false),
        13 => ("bytes_in_cnt", Int, false),
        14 => ("bytes_in_rate", Frq, false),
        15 => ("bytes_out_cnt", Int, false),
        16 => ("bytes_out_rate", Frq, false),
        17 => ("gpc1", Int, false),
        18 => ("gpc1_rate", Frq, false),
        19 => ("server_key", Dict, false),
        20 => ("http_fail_cnt", Int, false),
        21 => ("http_fail_rate", Frq, false),
        22 => ("gpt", Int, true),
        23 => ("gpc", Int, true),
        24 => ("gpc_rate", Frq, true),
        25 => ("glitch_cnt", Int, false),
        26 => ("glitch_rate", Frq, false),
        _ => return None,
    };
    Some(TypeInfo {
        name,
        layout,
        is_array,
    })
}
