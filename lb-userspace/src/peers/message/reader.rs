//! A bounds-checked cursor over one message payload.

use super::{
    super::varint::{self, VarintError},
    error::DecodeError,
};

/// Reads fields front to back; every read names the field so a failure says what was cut.
pub(super) struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    pub(super) fn new(buf: &'a [u8]) -> Self {
        Self { buf }
    }

    pub(super) fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    pub(super) fn remaining(&self) -> usize {
        self.buf.len()
    }

    pub(super) fn varint(&mut self, field: &'static str) -> Result<u64, DecodeError> {
        match varint::decode(self.buf) {
            Ok((value, used)) => {
                self.buf = self.buf.get(used..).unwrap_or_default();
                Ok(value)
            }
            // The frame is complete, so a cut varint is a malformed payload, not "read more".
            Err(VarintError::Truncated { .. }) => Err(DecodeError::Truncated { field }),
            Err(source) => Err(DecodeError::BadVarint { field, source }),
        }
    }

    pub(super) fn bytes(&mut self, len: u64, field: &'static str) -> Result<&'a [u8], DecodeError> {
        let len = usize::try_from(len).map_err(|_| DecodeError::Truncated { field })?;
        if len > self.buf.len() {
            return Err(DecodeError::Truncated { field });
        }
        let (taken, rest) = self.buf.split_at(len);
        self.buf = rest;
        Ok(taken)
    }

    pub(super) fn u32_be(&mut self, field: &'static str) -> Result<u32, DecodeError> {
        let bytes = self.bytes(4, field)?;
        let array: [u8; 4] = bytes
            .try_into()
            .map_err(|_| DecodeError::Truncated { field })?;
        Ok(u32::from_be_bytes(array))
    }

    /// A varint length followed by that many bytes.
    pub(super) fn prefixed(&mut self, field: &'static str) -> Result<&'a [u8], DecodeError> {
        let len = self.varint(field)?;
        self.bytes(len, field)
    }
}
