//! How the monitor shows a session cookie. A cookie value is a credential: whoever holds it is
//! the user it belongs to. The monitor may be reachable by people who must not hold it, so it
//! never shows one whole; it shows a short prefix and a keyed hash, enough to tell entries
//! apart and to match one against a cookie the operator already has (`stickylb table` shows the
//! whole value, to root only).
//!
//! `A1B2C3D4E5F6A7B8` is shown as `A1B2…#3f9a1c0e`: at most 4 characters and at most a quarter
//! of the value, then the first 32 bits of HMAC-SHA256 over the value with a key made at
//! start. The key is never shown, so the hash cannot be checked against guesses offline, and
//! it changes with every start.

use std::fmt;

use sha2::{Digest as _, Sha256};

/// The longest prefix shown, in characters.
const MAX_PREFIX: usize = 4;
/// HMAC-SHA256's block size.
const BLOCK: usize = 64;
/// Hex digits of the hash shown (32 bits: distinct tags for distinct cookies in practice).
const TAG_BYTES: usize = 4;

/// Masks cookie values with a key of its own; see the module documentation.
#[derive(Clone)]
pub struct CookieMask {
    key: [u8; 32],
}

impl fmt::Debug for CookieMask {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The key is what keeps the hashes from being checked against guesses.
        f.write_str("CookieMask { .. }")
    }
}

impl CookieMask {
    /// A mask with a random key, made once at daemon start.
    pub fn random() -> Self {
        Self::with_key(rand::random())
    }

    pub fn with_key(key: [u8; 32]) -> Self {
        Self { key }
    }

    /// `cookie` as the monitor shows it: a prefix of at most [`MAX_PREFIX`] characters and at
    /// most a quarter of the value, `…`, `#` and 8 hex digits of the keyed hash. Never contains
    /// `cookie` itself.
    pub fn mask(&self, cookie: &str) -> String {
        let prefix_len = (cookie.chars().count() / 4).min(MAX_PREFIX);
        let prefix: String = cookie.chars().take(prefix_len).collect();
        // A short value made of hex digits can turn up in the tag by chance (one digit does 4
        // times in 10); the next round gives another tag. 256 rounds never all fail in
        // practice; if they did, the prefix alone is shown.
        for round in 0..=u8::MAX {
            let shown = format!("{prefix}…#{}", Hex(&self.tag(round, cookie)));
            if !shown.contains(cookie) {
                return shown;
            }
        }
        format!("{prefix}…")
    }

    /// The first [`TAG_BYTES`] of HMAC-SHA256(key, round || cookie).
    fn tag(&self, round: u8, cookie: &str) -> [u8; TAG_BYTES] {
        let mut block = [0u8; BLOCK];
        block[..self.key.len()].copy_from_slice(&self.key);
        let inner = Sha256::new()
            .chain_update(block.map(|b| b ^ 0x36))
            .chain_update([round])
            .chain_update(cookie.as_bytes())
            .finalize();
        let outer = Sha256::new()
            .chain_update(block.map(|b| b ^ 0x5c))
            .chain_update(inner)
            .finalize();
        let mut tag = [0u8; TAG_BYTES];
        tag.copy_from_slice(&outer[..TAG_BYTES]);
        tag
    }
}

struct Hex<'a>(&'a [u8]);

impl fmt::Display for Hex<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.iter().try_for_each(|byte| write!(f, "{byte:02x}"))
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use rand::{distributions::Alphanumeric, Rng as _, SeedableRng as _};

    use super::*;

    fn mask() -> CookieMask {
        CookieMask::with_key([7; 32])
    }

    #[test]
    fn never_contains_the_value() {
        let mask = mask();
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        for len in 1..=64 {
            for _ in 0..200 {
                let cookie: String = (&mut rng)
                    .sample_iter(Alphanumeric)
                    .take(len)
                    .map(char::from)
                    .collect();
                let shown = mask.mask(&cookie);
                assert!(!shown.contains(&cookie), "{cookie:?} shown as {shown:?}");
            }
        }
        // Hex digits are the likeliest to turn up in the tag.
        for digit in "0123456789abcdef".chars() {
            let cookie = digit.to_string();
            assert!(!mask.mask(&cookie).contains(&cookie));
        }
    }

    #[test]
    fn prefix_is_at_most_four_and_a_quarter() {
        let mask = mask();
        let prefix = |cookie: &str| {
            let shown = mask.mask(cookie);
            let (prefix, tag) = shown.split_once('…').unwrap();
            assert_eq!(tag.len(), 9, "{shown}");
            assert!(tag.starts_with('#'));
            assert!(tag[1..].chars().all(|c| c.is_ascii_hexdigit()));
            prefix.to_owned()
        };
        assert_eq!(prefix("abc"), "");
        assert_eq!(prefix("abcd"), "a");
        assert_eq!(prefix("abcdefg"), "a");
        assert_eq!(prefix("abcdefgh"), "ab");
        assert_eq!(prefix("abcdefghijklmnop"), "abcd");
        assert_eq!(prefix(&"x".repeat(64)), "xxxx");
        assert_eq!(prefix("ééééé"), "é");
    }

    #[test]
    fn distinct_values_give_distinct_outputs() {
        let mask = mask();
        let shown: HashSet<String> = (0..10_000)
            .map(|n| mask.mask(&format!("{n:032x}")))
            .collect();
        assert_eq!(shown.len(), 10_000);
        assert_eq!(mask.mask("A1B2C3D4E5F6"), mask.mask("A1B2C3D4E5F6"));
    }

    #[test]
    fn the_key_changes_the_tag() {
        let cookie = "A1B2C3D4E5F6A7B8C9D0";
        let other = CookieMask::with_key([8; 32]);
        assert_ne!(mask().mask(cookie), other.mask(cookie));
        assert!(mask().mask(cookie).starts_with("A1B2…#"));
        assert_eq!(format!("{:?}", mask()), "CookieMask { .. }");
    }
}
