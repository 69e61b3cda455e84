//! How a cookie value becomes a [`StickKey`], and how text fields are stored in the map.

use lb_common::{StickKey, COOKIE_LEN};
use sha2::{Digest, Sha256};

/// Marks a key that holds a digest of a cookie too long to store verbatim. A short cookie that
/// happens to spell a digest could only meet a long one whose 128-bit digest it equals.
const DIGEST_MARK: u8 = b'~';

/// Hex digits of the digest kept in a key (128 bits).
const DIGEST_HEX_LEN: usize = 32;

/// The stick table key of `cookie` in backend `backend_id`.
///
/// Values up to `COOKIE_LEN - 1` bytes are stored verbatim (NUL-padded). Longer values are stored
/// as `~` followed by the first 128 bits of their SHA-256 in lowercase hex.
pub fn stick_key(backend_id: u32, cookie: &[u8]) -> StickKey {
    let mut key = StickKey {
        backend_id,
        cookie: [0; COOKIE_LEN],
    };
    if cookie.len() < COOKIE_LEN {
        key.cookie[..cookie.len()].copy_from_slice(cookie);
    } else {
        key.cookie[0] = DIGEST_MARK;
        let digest = Sha256::digest(cookie);
        write_hex(
            &digest[..DIGEST_HEX_LEN / 2],
            &mut key.cookie[1..=DIGEST_HEX_LEN],
        );
    }
    key
}

fn write_hex(bytes: &[u8], out: &mut [u8]) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    for (byte, pair) in bytes.iter().zip(out.chunks_exact_mut(2)) {
        pair[0] = HEX[usize::from(byte >> 4)];
        pair[1] = HEX[usize::from(byte & 0x0f)];
    }
}

/// The text stored in a NUL-padded field, lossily decoded for display.
pub fn field_text(field: &[u8]) -> String {
    let end = field.iter().position(|&b| b == 0).unwrap_or(field.len());
    String::from_utf8_lossy(&field[..end]).into_owned()
}

/// Copies `text` into a NUL-padded field. Returns `None` when it does not fit with its NUL.
pub fn to_field<const N: usize>(text: &str) -> Option<[u8; N]> {
    let bytes = text.as_bytes();
    if bytes.len() >= N {
        return None;
    }
    let mut field = [0; N];
    field[..bytes.len()].copy_from_slice(bytes);
    Some(field)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_cookie_is_stored_verbatim() {
        let key = stick_key(7, b"e2a0b5a1c0ffee");
        assert_eq!(key.backend_id, 7);
        assert_eq!(field_text(&key.cookie), "e2a0b5a1c0ffee");
    }

    #[test]
    fn longest_verbatim_cookie_keeps_a_nul() {
        let cookie = vec![b'a'; COOKIE_LEN - 1];
        let key = stick_key(1, &cookie);
        assert_eq!(key.cookie[COOKIE_LEN - 1], 0);
        assert_eq!(field_text(&key.cookie).len(), COOKIE_LEN - 1);
    }

    #[test]
    fn long_cookie_is_stored_as_a_digest_that_still_distinguishes_sessions() {
        let a = stick_key(1, &[b'a'; 200]);
        let b = stick_key(1, &[b'b'; 200]);
        let a_again = stick_key(1, &[b'a'; 200]);
        assert_ne!(a, b);
        assert_eq!(a, a_again);
        let text = field_text(&a.cookie);
        assert!(text.starts_with('~'));
        assert_eq!(text.len(), 1 + DIGEST_HEX_LEN);
        assert!(text[1..].bytes().all(|c| c.is_ascii_hexdigit()));
    }

    #[test]
    fn same_cookie_in_two_backends_gives_two_keys() {
        assert_ne!(stick_key(1, b"x"), stick_key(2, b"x"));
    }

    #[test]
    fn fields_round_trip_and_reject_what_does_not_fit() {
        let field: [u8; 8] = to_field("web1").unwrap();
        assert_eq!(field_text(&field), "web1");
        assert!(to_field::<4>("web1").is_none());
    }
}
