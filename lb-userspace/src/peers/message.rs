//! Binary messages exchanged after the handshake, and their framing (docs/PEERS.md, "Messages
//! and encodings").
//!
//! Every message starts with a class byte and a type byte. When bit 7 of the type is set (all
//! stick-table messages), a varint payload length and the payload follow; otherwise the message
//! is those two bytes. [`decode_frame`] cuts frames out of a byte stream; a [`Decoder`] turns
//! them into [`Message`]s, which for updates needs the sender's table definitions and the
//! session's dictionary cache; an [`Encoder`] writes messages with our own session state.

mod decoder;
mod definition;
mod dict;
mod encoder;
mod error;
mod reader;
#[cfg(test)]
mod tests;
mod types;

pub use self::{
    decoder::Decoder,
    dict::DICTIONARY_ENTRIES,
    encoder::{EncodeError, Encoder},
    error::DecodeError,
    types::{
        DataTypes, KeyType, ServerKey, ServerKeyError, TableDefinition, TypeParam, Update,
        UpdateKind, MAX_SERVER_KEY_LEN,
    },
};
use super::varint::{self, VarintError};

/// The largest payload accepted by default: HAProxy's buffer size (`tune.bufsize`, 16 KiB),
/// beyond which HAProxy answers a size-limit error and closes.
pub const DEFAULT_MAX_LEN: usize = 16384;

/// Tables one side may define in a session, whether we send or receive them. A peers section
/// syncs a handful; the bound keeps a misbehaving peer from growing our state without end.
const MAX_TABLES: usize = 1024;

/// Message classes (first byte).
const CLASS_CONTROL: u8 = 0;
const CLASS_ERROR: u8 = 1;
const CLASS_TABLE: u8 = 10;
const CLASS_RESERVED: u8 = 255;

/// Control types (class 0).
const CTRL_RESYNC_REQUEST: u8 = 0;
const CTRL_RESYNC_FINISHED: u8 = 1;
const CTRL_RESYNC_PARTIAL: u8 = 2;
const CTRL_RESYNC_CONFIRM: u8 = 3;
const CTRL_HEARTBEAT: u8 = 4;

/// Error types (class 1).
const ERR_PROTOCOL: u8 = 0;
const ERR_SIZE_LIMIT: u8 = 1;

/// Stick-table types (class 10); bit 7 says a payload follows.
const HAS_PAYLOAD: u8 = 0x80;
const TABLE_UPDATE: u8 = 0x80;
const TABLE_INC_UPDATE: u8 = 0x81;
const TABLE_DEFINE: u8 = 0x82;
const TABLE_SWITCH: u8 = 0x83;
const TABLE_ACK: u8 = 0x84;
const TABLE_TIMED_UPDATE: u8 = 0x85;
const TABLE_TIMED_INC_UPDATE: u8 = 0x86;

/// One peers message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    /// Control `00 00`: "teach me everything you have".
    ResyncRequest,
    /// Control `00 01`: the full resync is over and the teacher was up to date.
    ResyncFinished,
    /// Control `00 02`: the full resync is over but the teacher itself was not fully synced.
    ResyncPartial,
    /// Control `00 03`: the learner acknowledges a finished or partial resync.
    ResyncConfirm,
    /// Control `00 04`: sent when idle so the session is not timed out.
    Heartbeat,
    /// Error `01 00`: the sender saw a protocol error and closes.
    ProtocolError,
    /// Error `01 01`: a message exceeded the sender's buffer; it closes.
    SizeLimit,
    /// `0a 82`: the sender describes one of its tables; following updates are for it.
    TableDefinition(TableDefinition),
    /// `0a 80`/`81`/`85`/`86`: one entry of the current table.
    Update(Update),
    /// `0a 84`: the sender has received the receiver's updates of a table up to `update_id`.
    /// `table_id` is the *receiver's* id for that table (from the receiver's definition).
    Ack { table_id: u64, update_id: u32 },
    /// `0a 83`: following updates are for the already defined table `table_id`. HAProxy 2.6
    /// parses it but sends a definition instead.
    SwitchTable { table_id: u64 },
}

/// One framed message, payload not yet interpreted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Frame<'a> {
    pub class: u8,
    pub kind: u8,
    /// Empty for two-byte messages.
    pub payload: &'a [u8],
}

/// Cuts the first frame out of `buf`.
///
/// Returns `Ok(None)` while the frame is incomplete (read more and call again), or the frame
/// and the bytes it took. Fails on the reserved class 255, on a class or type this protocol
/// version does not define, and on a payload longer than `max_len`, which is reported as soon
/// as the length is readable so that such a payload is never buffered.
pub fn decode_frame(buf: &[u8], max_len: usize) -> Result<Option<(Frame<'_>, usize)>, DecodeError> {
    let [class, kind, rest @ ..] = buf else {
        return Ok(None);
    };
    let (class, kind) = (*class, *kind);
    check_code(class, kind)?;
    if kind & HAS_PAYLOAD == 0 {
        return Ok(Some((
            Frame {
                class,
                kind,
                payload: &[],
            },
            2,
        )));
    }
    let (len, len_bytes) = match varint::decode(rest) {
        Ok(decoded) => decoded,
        Err(VarintError::Truncated { .. }) => return Ok(None),
        Err(source) => return Err(DecodeError::BadLength { source }),
    };
    let len = usize::try_from(len)
        .ok()
        .filter(|&len| len <= max_len)
        .ok_or(DecodeError::TooLong { len, max: max_len })?;
    let Some(payload) = rest.get(len_bytes..len_bytes + len) else {
        return Ok(None);
    };
    Ok(Some((
        Frame {
            class,
            kind,
            payload,
        },
        2 + len_bytes + len,
    )))
}

/// Refuses the reserved class and codes this protocol version does not define.
fn check_code(class: u8, kind: u8) -> Result<(), DecodeError> {
    let known = match class {
        CLASS_CONTROL => kind <= CTRL_HEARTBEAT,
        CLASS_ERROR => kind <= ERR_SIZE_LIMIT,
        CLASS_TABLE => (TABLE_UPDATE..=TABLE_TIMED_INC_UPDATE).contains(&kind),
        CLASS_RESERVED => return Err(DecodeError::Reserved { kind }),
        _ => return Err(DecodeError::UnknownClass { class, kind }),
    };
    if known {
        Ok(())
    } else {
        Err(DecodeError::UnknownType { class, kind })
    }
}

/// Appends a frame with a payload: class, type, varint length, payload.
fn write_frame(class: u8, kind: u8, payload: &[u8], out: &mut Vec<u8>) {
    out.extend([class, kind]);
    varint::encode(payload.len() as u64, out);
    out.extend_from_slice(payload);
}
