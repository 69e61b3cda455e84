//! HAProxy's variable-length integer, used for lengths, ids and most values in peers messages.
//!
//! It is not LEB128: values below 240 are one byte; otherwise the first byte keeps the low 4 bits
//! with the top 4 set (`0xf0..=0xff`), and each following byte adds 7 bits, shifted by what came
//! before, with bit 7 meaning "more follows". Every `u64` fits in [`MAX_LEN`] bytes.

/// Values below this are written as a single byte.
const ONE_BYTE_LIMIT: u64 = 0xf0;
/// Bits carried by the first byte of a multi-byte varint.
const FIRST_BYTE_BITS: u32 = 4;
/// Set on every byte after the first except the last.
const CONTINUE: u64 = 0x80;
/// Bits carried by each byte after the first.
const NEXT_BYTE_BITS: u32 = 7;

/// The longest encoding of a `u64` (`u64::MAX` takes all ten bytes).
pub const MAX_LEN: usize = 10;

/// Why bytes are not a varint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum VarintError {
    /// The input ended inside the varint; more bytes may complete it.
    #[error("varint truncated after {have} byte(s)")]
    Truncated { have: usize },
    /// Still continuing after [`MAX_LEN`] bytes: no `u64` is encoded like this.
    #[error("varint longer than {MAX_LEN} bytes")]
    TooLong,
    /// The bytes add up to more than `u64::MAX`.
    #[error("varint value exceeds 64 bits")]
    Overflow,
}

/// Appends the encoding of `value` to `out`.
pub fn encode(value: u64, out: &mut Vec<u8>) {
    if value < ONE_BYTE_LIMIT {
        out.push(low_byte(value));
        return;
    }
    // The first byte keeps the low 4 bits; its top 4 bits (all set) are worth 240, which is why
    // 240 is subtracted before shifting. Each continuation byte likewise carries 128.
    out.push(low_byte(value) | 0xf0);
    let mut rest = (value - ONE_BYTE_LIMIT) >> FIRST_BYTE_BITS;
    while rest >= CONTINUE {
        out.push(low_byte(rest) | 0x80);
        rest = (rest - CONTINUE) >> NEXT_BYTE_BITS;
    }
    out.push(low_byte(rest));
}

/// The number of bytes [`encode`] writes for `value`.
pub fn encoded_len(value: u64) -> usize {
    if value < ONE_BYTE_LIMIT {
        return 1;
    }
    let mut len = 2;
    let mut rest = (value - ONE_BYTE_LIMIT) >> FIRST_BYTE_BITS;
    while rest >= CONTINUE {
        len += 1;
        rest = (rest - CONTINUE) >> NEXT_BYTE_BITS;
    }
    len
}

/// Decodes the varint at the start of `buf`: its value and the number of bytes it took.
pub fn decode(buf: &[u8]) -> Result<(u64, usize), VarintError> {
    let Some(&first) = buf.first() else {
        return Err(VarintError::Truncated { have: 0 });
    };
    if u64::from(first) < ONE_BYTE_LIMIT {
        return Ok((u64::from(first), 1));
    }
    // Summed in 128 bits: ten bytes can describe up to about 2^74, and a sum past u64::MAX must
    // be reported, not wrapped as HAProxy's C does.
    let mut value = u128::from(first);
    let mut shift = FIRST_BYTE_BITS;
    for (index, &byte) in buf.iter().enumerate().skip(1).take(MAX_LEN - 1) {
        value += u128::from(byte) << shift;
        shift += NEXT_BYTE_BITS;
        if u64::from(byte) < CONTINUE {
            let value = u64::try_from(value).map_err(|_| VarintError::Overflow)?;
            return Ok((value, index + 1));
        }
    }
    if buf.len() >= MAX_LEN {
        Err(VarintError::TooLong)
    } else {
        Err(VarintError::Truncated { have: buf.len() })
    }
}

/// The low 8 bits of `value`: the encoding masks and shifts so exactly these are wanted.
fn low_byte(value: u64) -> u8 {
    (value & 0xff) as u8
}

#[cfg(test)]
mod tests {
    use super::*;

    fn enc(value: u64) -> Vec<u8> {
        let mut out = Vec::new();
        encode(value, &mut out);
        out
    }

    #[test]
    fn vectors_from_the_protocol_notes() {
        assert_eq!(enc(0), [0x00]);
        assert_eq!(enc(239), [0xef]);
        assert_eq!(enc(240), [0xf0, 0x00]);
        assert_eq!(enc(300), [0xfc, 0x03]);
        assert_eq!(enc(2287), [0xff, 0x7f]);
        assert_eq!(enc(2288), [0xf0, 0x80, 0x00]);
        assert_eq!(enc(u64::from(u32::MAX)), [0xff, 0xf0, 0xfe, 0xfe, 0x7e]);
    }

    #[test]
    fn values_seen_from_haproxy() {
        // Bitfield server_id + server_key and `expire 30m`, from HAProxy 2.6.12's definition.
        assert_eq!(enc(0x80001), [0xf1, 0xf1, 0xfe, 0x00]);
        assert_eq!(enc(1_800_000), [0xf0, 0xe5, 0xed, 0x05]);
    }

    #[test]
    fn length_boundaries_match_haproxy() {
        // HAProxy's PEER_ENC_<n>BYTES_MIN constants: the smallest value taking n bytes.
        let mins: [u64; 9] = [
            0xf0,
            0x8f0,
            0x408f0,
            0x2_0408f0,
            0x1_0204_08f0,
            0x81_0204_08f0,
            0x4081_0204_08f0,
            0x20_4081_0204_08f0,
            0x1020_4081_0204_08f0,
        ];
        for (i, &min) in mins.iter().enumerate() {
            assert_eq!(encoded_len(min - 1), i + 1, "{min:#x} - 1");
            assert_eq!(encoded_len(min), i + 2, "{min:#x}");
        }
        assert_eq!(encoded_len(u64::MAX), MAX_LEN);
    }

    #[test]
    fn round_trips() {
        let mut values: Vec<u64> = (0..5000).collect();
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        for _ in 0..20_000 {
            // xorshift: a fixed, reproducible spread over all magnitudes.
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            values.push(x >> (x % 64));
        }
        for shift in 0..64 {
            let p = 1u64 << shift;
            values.extend([p - 1, p, p + 1, u64::MAX >> shift]);
        }
        values.push(u64::MAX);
        for value in values {
            let bytes = enc(value);
            assert_eq!(bytes.len(), encoded_len(value), "{value}");
            assert_eq!(decode(&bytes), Ok((value, bytes.len())), "{value}");
            let mut padded = bytes.clone();
            padded.extend([0xff, 0x01]);
            assert_eq!(
                decode(&padded),
                Ok((value, bytes.len())),
                "{value} followed by more"
            );
            for cut in 0..bytes.len() {
                assert_eq!(
                    decode(&bytes[..cut]),
                    Err(VarintError::Truncated { have: cut }),
                    "{value} cut at {cut}"
                );
            }
        }
    }

    #[test]
    fn rejects_over_long_and_overflowing_input() {
        assert_eq!(decode(&[0xff; 10]), Err(VarintError::TooLong));
        assert_eq!(decode(&[0xff; 11]), Err(VarintError::TooLong));
        assert_eq!(decode(&[0xff; 9]), Err(VarintError::Truncated { have: 9 }));
        // u64::MAX ends in 0x0e; any larger last byte goes past 64 bits.
        let mut max = enc(u64::MAX);
        assert_eq!(max.last(), Some(&0x0e));
        if let Some(last) = max.last_mut() {
            *last = 0x0f;
        }
        assert_eq!(decode(&max), Err(VarintError::Overflow));
        let mut big = vec![0xff; 9];
        big.push(0x7f);
        assert_eq!(decode(&big), Err(VarintError::Overflow));
    }
}
