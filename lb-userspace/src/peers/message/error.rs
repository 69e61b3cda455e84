//! Why bytes from a peer are not a valid message.

use super::{
    super::varint::VarintError,
    types::{ServerKeyError, MAX_ARRAY_LEN},
    MAX_TABLES,
};

/// Why bytes from a peer are not a valid message. Every variant ends the session.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("message class 255 (reserved), type {kind:#04x}")]
    Reserved { kind: u8 },
    #[error("unknown message class {class}, type {kind:#04x}")]
    UnknownClass { class: u8, kind: u8 },
    #[error("unknown message type {kind:#04x} in class {class}")]
    UnknownType { class: u8, kind: u8 },
    #[error("unreadable message length")]
    BadLength {
        #[source]
        source: VarintError,
    },
    #[error("message of {len} bytes exceeds the {max}-byte limit")]
    TooLong { len: u64, max: usize },
    #[error("message ends inside field {field}")]
    Truncated { field: &'static str },
    #[error("unreadable varint in field {field}")]
    BadVarint {
        field: &'static str,
        #[source]
        source: VarintError,
    },
    #[error("field {field} is not UTF-8")]
    NotUtf8 { field: &'static str },
    #[error(
        "table definition uses data type {data_type}, unknown here, so updates cannot be sized"
    )]
    UnknownDataType { data_type: u8 },
    #[error(
        "table definition gives parameters of data type {found} where {expected} ({name}) was due"
    )]
    ParamsMismatch {
        expected: u8,
        name: &'static str,
        found: u64,
    },
    #[error("table definition lacks the array length of data type {data_type} ({name})")]
    MissingArrayLen { data_type: u8, name: &'static str },
    #[error(
        "array data type {data_type} ({name}) has {len} elements (1 to {MAX_ARRAY_LEN} allowed)"
    )]
    BadArrayLen {
        data_type: u8,
        name: &'static str,
        len: u64,
    },
    #[error("peer defines more than {MAX_TABLES} tables")]
    TooManyTables,
    #[error("update received before any table definition")]
    NoTable,
    #[error("switch to table {table_id}, never defined")]
    UnknownTable { table_id: u64 },
    #[error("updates of tables with key type {key_type} cannot be decoded")]
    UnsupportedKeyType { key_type: u64 },
    #[error("dictionary id {id} is outside 1..=128")]
    BadDictionaryId { id: u64 },
    #[error("dictionary id {id} was never taught in this session")]
    UnknownDictionaryId { id: u64 },
    #[error("dictionary entry declares {declared} bytes but its content takes {used}")]
    DictionaryLength { declared: u64, used: u64 },
    #[error("invalid server key")]
    BadServerKey(#[source] ServerKeyError),
}
