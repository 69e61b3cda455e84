//! Reading a table definition (`0a 82`), as HAProxy's `peer_treat_definemsg` does.

use super::{
    error::DecodeError,
    reader::Reader,
    types::{type_info, Layout, MAX_ARRAY_LEN},
    DataTypes, KeyType, TableDefinition, TypeParam,
};

/// Table id, name, key type and length, data types bitfield, then (from senders recent enough
/// to send them) the expire and the per-type parameters.
pub(super) fn read_definition(payload: &mut Reader<'_>) -> Result<TableDefinition, DecodeError> {
    let table_id = payload.varint("table id")?;
    let name = payload.prefixed("table name")?;
    let name = String::from_utf8(name.to_vec()).map_err(|_| DecodeError::NotUtf8 {
        field: "table name",
    })?;
    let key_type = KeyType::from_wire(payload.varint("key type")?);
    let key_len = payload.varint("key length")?;
    let data_types = DataTypes(payload.varint("data types")?);
    check_known_types(data_types)?;
    // Older senders stop here: no expire and no per-type parameters.
    let (expire_ms, params) = if payload.is_empty() {
        (0, Vec::new())
    } else {
        (payload.varint("expire")?, type_params(data_types, payload)?)
    };
    check_array_lens(data_types, &params)?;
    Ok(TableDefinition {
        table_id,
        name,
        key_type,
        key_len,
        data_types,
        expire_ms,
        params,
    })
}

/// Every type in the bitfield must be known: its parameters and values cannot be skipped
/// otherwise.
fn check_known_types(data_types: DataTypes) -> Result<(), DecodeError> {
    match data_types.iter().find(|&dt| type_info(dt).is_none()) {
        Some(data_type) => Err(DecodeError::UnknownDataType { data_type }),
        None => Ok(()),
    }
}

/// The parameters following the expire: for each array or frequency counter type, in order,
/// its type id again, then the array length and/or the period.
fn type_params(
    data_types: DataTypes,
    payload: &mut Reader<'_>,
) -> Result<Vec<TypeParam>, DecodeError> {
    let mut params = Vec::new();
    for data_type in data_types.iter() {
        let Some(info) = type_info(data_type) else {
            return Err(DecodeError::UnknownDataType { data_type });
        };
        let is_freq = info.layout == Layout::FreqCounter;
        if !info.is_array && !is_freq {
            continue;
        }
        let found = payload.varint("data type parameters")?;
        if found != u64::from(data_type) {
            return Err(DecodeError::ParamsMismatch {
                expected: data_type,
                name: info.name,
                found,
            });
        }
        let array_len = if info.is_array {
            Some(payload.varint("array length")?)
        } else {
            None
        };
        let period_ms = if is_freq {
            Some(payload.varint("period")?)
        } else {
            None
        };
        params.push(TypeParam {
            data_type,
            array_len,
            period_ms,
        });
    }
    Ok(params)
}

/// Array values cannot be sized without a length, which old-format definitions lack.
fn check_array_lens(data_types: DataTypes, params: &[TypeParam]) -> Result<(), DecodeError> {
    for data_type in data_types.iter() {
        let Some(info) = type_info(data_type).filter(|info| info.is_array) else {
            continue;
        };
        let len = params
            .iter()
            .find(|param| param.data_type == data_type)
            .and_then(|param| param.array_len)
            .ok_or(DecodeError::MissingArrayLen {
                data_type,
                name: info.name,
            })?;
        if !(1..=MAX_ARRAY_LEN).contains(&len) {
            return Err(DecodeError::BadArrayLen {
                data_type,
                name: info.name,
                len,
            });
        }
    }
    Ok(())
}
