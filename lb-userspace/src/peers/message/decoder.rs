//! Turns frames into [`Message`]s, keeping what decoding updates needs: the sender's table
//! definitions and the dictionary cache of the session (`peer_treat_*msg` in HAProxy).

use std::collections::HashMap;

use super::{
    decode_frame,
    definition::read_definition,
    dict::RxDictionary,
    error::DecodeError,
    reader::Reader,
    types::{type_info, Layout},
    DataTypes, Frame, KeyType, Message, ServerKey, TableDefinition, Update, UpdateKind,
    CLASS_CONTROL, CLASS_ERROR, CLASS_TABLE, CTRL_HEARTBEAT, CTRL_RESYNC_CONFIRM,
    CTRL_RESYNC_FINISHED, CTRL_RESYNC_PARTIAL, CTRL_RESYNC_REQUEST, DEFAULT_MAX_LEN, ERR_PROTOCOL,
    ERR_SIZE_LIMIT, MAX_TABLES, TABLE_ACK, TABLE_DEFINE, TABLE_SWITCH,
};

/// A table the peer defined, and the last update id received for it.
#[derive(Debug)]
struct RxTable {
    def: TableDefinition,
    last_update_id: u32,
}

/// Decodes one session's incoming byte stream. Create one per session: the dictionary cache
/// and table ids are only meaningful within it.
#[derive(Debug)]
pub struct Decoder {
    max_len: usize,
    tables: HashMap<u64, RxTable>,
    /// The table updates are for: the last one defined or switched to.
    current: Option<u64>,
    dict: RxDictionary,
}

impl Default for Decoder {
    fn default() -> Self {
        Self::new()
    }
}

impl Decoder {
    /// A decoder accepting payloads up to [`DEFAULT_MAX_LEN`] bytes.
    pub fn new() -> Self {
        Self::with_max_len(DEFAULT_MAX_LEN)
    }

    pub fn with_max_len(max_len: usize) -> Self {
        Self {
            max_len,
            tables: HashMap::new(),
            current: None,
            dict: RxDictionary::new(),
        }
    }

    /// Decodes the first message of `buf`: `Ok(None)` while it is incomplete, else the message
    /// and the number of bytes to drop from the front of `buf`.
    pub fn decode(&mut self, buf: &[u8]) -> Result<Option<(Message, usize)>, DecodeError> {
        let Some((frame, used)) = decode_frame(buf, self.max_len)? else {
            return Ok(None);
        };
        Ok(Some((self.message(frame)?, used)))
    }

    /// The peer's definition of its table `table_id`, if it sent one.
    pub fn table(&self, table_id: u64) -> Option<&TableDefinition> {
        self.tables.get(&table_id).map(|table| &table.def)
    }

    /// The last update id received for the peer's table `table_id`: what to acknowledge.
    pub fn last_update_id(&self, table_id: u64) -> Option<u32> {
        self.tables.get(&table_id).map(|table| table.last_update_id)
    }

    fn message(&mut self, frame: Frame<'_>) -> Result<Message, DecodeError> {
        let mut payload = Reader::new(frame.payload);
        // `decode_frame` already refused codes outside these.
        let message = match (frame.class, frame.kind) {
            (CLASS_CONTROL, CTRL_RESYNC_REQUEST) => Message::ResyncRequest,
            (CLASS_CONTROL, CTRL_RESYNC_FINISHED) => Message::ResyncFinished,
            (CLASS_CONTROL, CTRL_RESYNC_PARTIAL) => Message::ResyncPartial,
            (CLASS_CONTROL, CTRL_RESYNC_CONFIRM) => Message::ResyncConfirm,
            (CLASS_CONTROL, CTRL_HEARTBEAT) => Message::Heartbeat,
            (CLASS_ERROR, ERR_PROTOCOL) => Message::ProtocolError,
            (CLASS_ERROR, ERR_SIZE_LIMIT) => Message::SizeLimit,
            (CLASS_TABLE, TABLE_DEFINE) => Message::TableDefinition(self.definition(&mut payload)?),
            (CLASS_TABLE, TABLE_SWITCH) => self.switch(&mut payload)?,
            (CLASS_TABLE, TABLE_ACK) => Message::Ack {
                table_id: payload.varint("ack table id")?,
                update_id: payload.u32_be("ack update id")?,
            },
            (class, kind) => match UpdateKind::from_type_byte(kind) {
                Some(kind) if class == CLASS_TABLE => {
                    Message::Update(self.update(kind, &mut payload)?)
                }
                _ => return Err(DecodeError::UnknownType { class, kind }),
            },
        };
        // Trailing bytes are ignored, as HAProxy does: later versions may append fields.
        Ok(message)
    }

    fn definition(&mut self, payload: &mut Reader<'_>) -> Result<TableDefinition, DecodeError> {
        let def = read_definition(payload)?;
        self.remember(def.clone())?;
        Ok(def)
    }

    /// Stores a definition; a redefinition keeps the update count, since HAProxy redefines a
    /// table each time it switches back to it and its incremental ids continue.
    fn remember(&mut self, def: TableDefinition) -> Result<(), DecodeError> {
        let table_id = def.table_id;
        if let Some(table) = self.tables.get_mut(&table_id) {
            table.def = def;
        } else {
            if self.tables.len() >= MAX_TABLES {
                return Err(DecodeError::TooManyTables);
            }
            self.tables.insert(
                table_id,
                RxTable {
                    def,
                    last_update_id: 0,
                },
            );
        }
        self.current = Some(table_id);
        Ok(())
    }

    fn switch(&mut self, payload: &mut Reader<'_>) -> Result<Message, DecodeError> {
        let table_id = payload.varint("switch table id")?;
        if !self.tables.contains_key(&table_id) {
            return Err(DecodeError::UnknownTable { table_id });
        }
        self.current = Some(table_id);
        Ok(Message::SwitchTable { table_id })
    }

    fn update(
        &mut self,
        kind: UpdateKind,
        payload: &mut Reader<'_>,
    ) -> Result<Update, DecodeError> {
        let table_id = self.current.ok_or(DecodeError::NoTable)?;
        let table = self.tables.get(&table_id).ok_or(DecodeError::NoTable)?;
        let update_id = if kind.has_id() {
            payload.u32_be("update id")?
        } else {
            table.last_update_id.wrapping_add(1)
        };
        let expire_ms = if kind.is_timed() {
            Some(payload.u32_be("expire")?)
        } else {
            None
        };
        let key = read_key(&table.def, payload)?;
        let values = read_values(&table.def, payload, &mut self.dict)?;
        if let Some(table) = self.tables.get_mut(&table_id) {
            table.last_update_id = update_id;
        }
        Ok(Update {
            table_id,
            kind,
            update_id,
            expire_ms,
            key,
            server_id: values.server_id,
            server_key: values.server_key,
        })
    }
}

fn read_key(def: &TableDefinition, payload: &mut Reader<'_>) -> Result<Vec<u8>, DecodeError> {
    let key = match def.key_type {
        KeyType::String => payload.prefixed("key")?,
        KeyType::SignedInt => payload.bytes(4, "key")?,
        KeyType::Ipv4 | KeyType::Ipv6 | KeyType::Binary => payload.bytes(def.key_len, "key")?,
        KeyType::Other(key_type) => return Err(DecodeError::UnsupportedKeyType { key_type }),
    };
    Ok(key.to_vec())
}

/// The values of an update that we keep.
#[derive(Default)]
struct Values {
    server_id: Option<i64>,
    server_key: Option<ServerKey>,
}

/// Reads every value in data type order, keeping `server_id` and `server_key`.
fn read_values(
    def: &TableDefinition,
    payload: &mut Reader<'_>,
    dict: &mut RxDictionary,
) -> Result<Values, DecodeError> {
    let mut values = Values::default();
    for data_type in def.data_types.iter() {
        let Some(info) = type_info(data_type) else {
            return Err(DecodeError::UnknownDataType { data_type });
        };
        let count = match def.param(data_type).and_then(|param| param.array_len) {
            Some(len) if info.is_array => len,
            _ => 1,
        };
        for _ in 0..count {
            match info.layout {
                // HAProxy sign-extends its int to 64 bits, so reading back as i64 keeps the sign.
                Layout::Int if data_type == DataTypes::SERVER_ID => {
                    values.server_id = Some(payload.varint(info.name)? as i64);
                }
                Layout::Int => {
                    payload.varint(info.name)?;
                }
                Layout::FreqCounter => {
                    for _ in 0..3 {
                        payload.varint(info.name)?;
                    }
                }
                Layout::Dict => values.server_key = read_server_key(payload, dict)?,
            }
        }
    }
    Ok(values)
}

/// `server_key`: `0` for none; else a length, then the slot (1-based) and, when the name is
/// new, the name's length and bytes.
fn read_server_key(
    payload: &mut Reader<'_>,
    dict: &mut RxDictionary,
) -> Result<Option<ServerKey>, DecodeError> {
    let declared = payload.varint("server_key")?;
    if declared == 0 {
        return Ok(None);
    }
    let mut entry = Reader::new(payload.bytes(declared, "server_key")?);
    // Within the declared length: the slot, then (for a new name) the name.
    let id = entry.varint("server_key id")?;
    if entry.is_empty() {
        return dict.get(id).cloned().map(Some);
    }
    let name = entry.prefixed("server_key name")?;
    if !entry.is_empty() {
        // HAProxy would read the slack as the next values; refuse rather than misalign.
        let used = declared.saturating_sub(entry.remaining() as u64);
        return Err(DecodeError::DictionaryLength { declared, used });
    }
    let key = ServerKey::from_bytes(name).map_err(DecodeError::BadServerKey)?;
    dict.set(id, key.clone())?;
    Ok(Some(key))
}
