//! Writes [`Message`]s with our side's session state: the tables we defined (updates follow
//! the definition's data types), the table updates currently go to, the last update id pushed
//! per table, and the dictionary cache of server names we taught.

use std::collections::HashMap;

use super::{
    super::varint,
    dict::{TxDictionary, TxSlot},
    write_frame, DataTypes, KeyType, Message, ServerKey, TableDefinition, Update, UpdateKind,
    CLASS_CONTROL, CLASS_ERROR, CLASS_TABLE, CTRL_HEARTBEAT, CTRL_RESYNC_CONFIRM,
    CTRL_RESYNC_FINISHED, CTRL_RESYNC_PARTIAL, CTRL_RESYNC_REQUEST, DEFAULT_MAX_LEN, ERR_PROTOCOL,
    ERR_SIZE_LIMIT, MAX_TABLES, TABLE_ACK, TABLE_DEFINE, TABLE_SWITCH,
};

/// Why a message cannot be sent.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EncodeError {
    #[error("table {table_id} was not defined in this session")]
    UndefinedTable { table_id: u64 },
    #[error("table {table_id} has an empty name")]
    EmptyTableName { table_id: u64 },
    #[error("data type {data_type} cannot be sent: only server_id (0) and server_key (19) are supported")]
    UnsupportedDataType { data_type: u8 },
    #[error("tables with key type {key_type:?} cannot be sent")]
    UnsupportedKeyType { key_type: KeyType },
    #[error("key of {len} bytes does not fit the table's key length {key_len}")]
    KeyLength { len: usize, key_len: u64 },
    /// HAProxy keeps string keys as C strings: a NUL would cut the key.
    #[error("string key contains a NUL byte")]
    KeyHasNul,
    #[error("{kind:?} update needs an expire")]
    MissingExpire { kind: UpdateKind },
    #[error("incremental update must have id {expected}, not {found}")]
    NotIncremental { expected: u32, found: u32 },
    #[error("message payload of {len} bytes exceeds the {DEFAULT_MAX_LEN}-byte limit of peers")]
    TooLong { len: usize },
    #[error("more than {MAX_TABLES} tables defined")]
    TooManyTables,
}

/// A table we defined, and the last update id we pushed for it.
#[derive(Debug)]
struct TxTable {
    def: TableDefinition,
    last_pushed: Option<u32>,
}

/// Encodes one session's outgoing messages. Create one per session.
#[derive(Debug, Default)]
pub struct Encoder {
    tables: HashMap<u64, TxTable>,
    /// The table the peer applies updates to: the last one defined or switched to.
    current: Option<u64>,
    dict: TxDictionary,
}

impl Encoder {
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends `message` to `out`.
    ///
    /// A definition is remembered and makes its table current. An update is written exactly as
    /// given (kind and id), after re-sending its table's definition if another table is
    /// current, as HAProxy does; an incremental one must continue the table's ids.
    pub fn encode(&mut self, message: &Message, out: &mut Vec<u8>) -> Result<(), EncodeError> {
        match message {
            Message::ResyncRequest => out.extend([CLASS_CONTROL, CTRL_RESYNC_REQUEST]),
            Message::ResyncFinished => out.extend([CLASS_CONTROL, CTRL_RESYNC_FINISHED]),
            Message::ResyncPartial => out.extend([CLASS_CONTROL, CTRL_RESYNC_PARTIAL]),
            Message::ResyncConfirm => out.extend([CLASS_CONTROL, CTRL_RESYNC_CONFIRM]),
            Message::Heartbeat => out.extend([CLASS_CONTROL, CTRL_HEARTBEAT]),
            Message::ProtocolError => out.extend([CLASS_ERROR, ERR_PROTOCOL]),
            Message::SizeLimit => out.extend([CLASS_ERROR, ERR_SIZE_LIMIT]),
            Message::TableDefinition(def) => self.define(def, out)?,
            Message::Update(update) => self.update(update, out)?,
            Message::Ack {
                table_id,
                update_id,
            } => encode_ack(*table_id, *update_id, out),
            Message::SwitchTable { table_id } => self.switch(*table_id, out)?,
        }
        Ok(())
    }

    /// Pushes an entry of table `table_id` with the next update id, which it returns. The
    /// first push of a table carries its id (`0x80`, or `0x85` with `expire_ms`), later ones
    /// are incremental (`0x81` / `0x86`). Timed updates are for full resyncs, live ones for
    /// changes; never send timed updates to a peer that announced version 2.0.
    pub fn push(
        &mut self,
        table_id: u64,
        key: &[u8],
        server_id: Option<i64>,
        server_key: Option<&ServerKey>,
        expire_ms: Option<u32>,
        out: &mut Vec<u8>,
    ) -> Result<u32, EncodeError> {
        let table = self.table(table_id)?;
        let (update_id, has_id) = match table.last_pushed {
            Some(last) => (last.wrapping_add(1), false),
            None => (1, true),
        };
        let update = Update {
            table_id,
            kind: UpdateKind::new(has_id, expire_ms.is_some()),
            update_id,
            expire_ms,
            key: key.to_vec(),
            server_id,
            server_key: server_key.cloned(),
        };
        self.update(&update, out)?;
        Ok(update_id)
    }

    /// The last update id pushed for our table `table_id`.
    pub fn last_pushed(&self, table_id: u64) -> Option<u32> {
        self.tables
            .get(&table_id)
            .and_then(|table| table.last_pushed)
    }

    fn table(&self, table_id: u64) -> Result<&TxTable, EncodeError> {
        self.tables
            .get(&table_id)
            .ok_or(EncodeError::UndefinedTable { table_id })
    }

    fn define(&mut self, def: &TableDefinition, out: &mut Vec<u8>) -> Result<(), EncodeError> {
        check_definition(def)?;
        if !self.tables.contains_key(&def.table_id) && self.tables.len() >= MAX_TABLES {
            return Err(EncodeError::TooManyTables);
        }
        write_definition(def, out)?;
        let last_pushed = self.tables.get(&def.table_id).and_then(|t| t.last_pushed);
        self.tables.insert(
            def.table_id,
            TxTable {
                def: def.clone(),
                last_pushed,
            },
        );
        self.current = Some(def.table_id);
        Ok(())
    }

    fn switch(&mut self, table_id: u64, out: &mut Vec<u8>) -> Result<(), EncodeError> {
        self.table(table_id)?;
        let mut payload = Vec::new();
        varint::encode(table_id, &mut payload);
        write_frame(CLASS_TABLE, TABLE_SWITCH, &payload, out);
        self.current = Some(table_id);
        Ok(())
    }

    fn update(&mut self, update: &Update, out: &mut Vec<u8>) -> Result<(), EncodeError> {
        let table = self.table(update.table_id)?;
        check_update_id(update, table.last_pushed)?;
        let expire = match (update.kind.is_timed(), update.expire_ms) {
            (true, None) => return Err(EncodeError::MissingExpire { kind: update.kind }),
            (true, Some(expire)) => Some(expire),
            (false, _) => None,
        };
        let mut payload = Vec::new();
        if update.kind.has_id() {
            payload.extend(update.update_id.to_be_bytes());
        }
        if let Some(expire) = expire {
            payload.extend(expire.to_be_bytes());
        }
        write_key(&table.def, &update.key, &mut payload)?;
        write_values(table.def.data_types, update, &self.dict, &mut payload);
        check_len(&payload)?;
        // Only now is the update sure to go out, so only now may the dictionary record it.
        let sends_server_key = table.def.data_types.contains(DataTypes::SERVER_KEY);
        if let Some(key) = update.server_key.as_ref().filter(|_| sends_server_key) {
            self.dict.commit(key);
        }
        if self.current != Some(update.table_id) {
            let def = self.table(update.table_id)?.def.clone();
            self.define(&def, out)?;
        }
        write_frame(CLASS_TABLE, update.kind.type_byte(), &payload, out);
        if let Some(table) = self.tables.get_mut(&update.table_id) {
            table.last_pushed = Some(update.update_id);
        }
        Ok(())
    }
}

/// The values in data type order; `check_definition` admitted only these two types.
fn write_values(
    data_types: DataTypes,
    update: &Update,
    dict: &TxDictionary,
    payload: &mut Vec<u8>,
) {
    for data_type in data_types.iter() {
        match data_type {
            // HAProxy's int is sign-extended to 64 bits before encoding; do the same.
            DataTypes::SERVER_ID => varint::encode(update.server_id.unwrap_or(0) as u64, payload),
            DataTypes::SERVER_KEY => write_server_key(update.server_key.as_ref(), dict, payload),
            _ => {}
        }
    }
}

/// `0` for none; the slot alone (`1`, slot + 1) when the peer has the name; else the length
/// of what follows, slot + 1, the name's length and the name.
fn write_server_key(key: Option<&ServerKey>, dict: &TxDictionary, payload: &mut Vec<u8>) {
    let Some(key) = key else {
        payload.push(0);
        return;
    };
    match dict.slot(key) {
        TxSlot::Known(slot) => {
            payload.push(1);
            varint::encode(slot as u64 + 1, payload);
        }
        TxSlot::New(slot) => {
            let mut entry = Vec::new();
            varint::encode(slot as u64 + 1, &mut entry);
            varint::encode(key.as_str().len() as u64, &mut entry);
            entry.extend_from_slice(key.as_str().as_bytes());
            varint::encode(entry.len() as u64, payload);
            payload.extend_from_slice(&entry);
        }
    }
}

/// `0a 84`: varint table id (the receiver's id, from its definition), u32 BE update id.
fn encode_ack(table_id: u64, update_id: u32, out: &mut Vec<u8>) {
    let mut payload = Vec::new();
    varint::encode(table_id, &mut payload);
    payload.extend(update_id.to_be_bytes());
    write_frame(CLASS_TABLE, TABLE_ACK, &payload, out);
}

/// We can only produce values for `server_id` and `server_key`, and keys we can lay out.
fn check_definition(def: &TableDefinition) -> Result<(), EncodeError> {
    if def.name.is_empty() {
        return Err(EncodeError::EmptyTableName {
            table_id: def.table_id,
        });
    }
    if let Some(data_type) = def
        .data_types
        .iter()
        .find(|&dt| dt != DataTypes::SERVER_ID && dt != DataTypes::SERVER_KEY)
    {
        return Err(EncodeError::UnsupportedDataType { data_type });
    }
    if let KeyType::Other(_) = def.key_type {
        return Err(EncodeError::UnsupportedKeyType {
            key_type: def.key_type,
        });
    }
    Ok(())
}

/// The definition as HAProxy's `peer_prepare_switchmsg` lays it out. Neither type we send
/// has parameters, so none follow the expire.
fn write_definition(def: &TableDefinition, out: &mut Vec<u8>) -> Result<(), EncodeError> {
    let mut payload = Vec::new();
    varint::encode(def.table_id, &mut payload);
    varint::encode(def.name.len() as u64, &mut payload);
    payload.extend_from_slice(def.name.as_bytes());
    varint::encode(def.key_type.to_wire(), &mut payload);
    varint::encode(def.key_len, &mut payload);
    varint::encode(def.data_types.0, &mut payload);
    varint::encode(def.expire_ms, &mut payload);
    check_len(&payload)?;
    write_frame(CLASS_TABLE, TABLE_DEFINE, &payload, out);
    Ok(())
}

fn check_update_id(update: &Update, last_pushed: Option<u32>) -> Result<(), EncodeError> {
    if update.kind.has_id() {
        return Ok(());
    }
    // The receiver counts from 0 at session start.
    let expected = last_pushed.unwrap_or(0).wrapping_add(1);
    if update.update_id == expected {
        Ok(())
    } else {
        Err(EncodeError::NotIncremental {
            expected,
            found: update.update_id,
        })
    }
}

fn write_key(def: &TableDefinition, key: &[u8], payload: &mut Vec<u8>) -> Result<(), EncodeError> {
    let wrong_len = || EncodeError::KeyLength {
        len: key.len(),
        key_len: def.key_len,
    };
    match def.key_type {
        KeyType::String => {
            // HAProxy silently cuts a key to `key_len - 1` bytes; refuse instead.
            if key.len() as u64 >= def.key_len {
                return Err(wrong_len());
            }
            if key.contains(&0) {
                return Err(EncodeError::KeyHasNul);
            }
            varint::encode(key.len() as u64, payload);
        }
        KeyType::SignedInt if key.len() != 4 => return Err(wrong_len()),
        KeyType::Ipv4 | KeyType::Ipv6 | KeyType::Binary if key.len() as u64 != def.key_len => {
            return Err(wrong_len())
        }
        KeyType::Other(_) => {
            return Err(EncodeError::UnsupportedKeyType {
                key_type: def.key_type,
            })
        }
        KeyType::SignedInt | KeyType::Ipv4 | KeyType::Ipv6 | KeyType::Binary => {}
    }
    payload.extend_from_slice(key);
    Ok(())
}

fn check_len(payload: &[u8]) -> Result<(), EncodeError> {
    if payload.len() > DEFAULT_MAX_LEN {
        Err(EncodeError::TooLong { len: payload.len() })
    } else {
        Ok(())
    }
}
