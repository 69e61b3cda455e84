//! HTTP basic authentication (RFC 7617) for every route of the monitor, when
//! `[monitor] auth` is set.
//!
//! Only a SHA-256 digest of `user:password` is kept, and the digest of what a request sends is
//! compared with it in constant time: how long a refusal takes says nothing about how much of
//! the password was right.

use std::fmt;

use hyper::header::HeaderValue;
use sha2::{Digest as _, Sha256};

/// The `WWW-Authenticate` challenge of a refusal.
pub(super) const CHALLENGE: &str = "Basic realm=\"stickylb\"";

/// The credentials every monitor request must carry.
#[derive(Clone)]
pub struct BasicAuth {
    digest: [u8; 32],
}

impl fmt::Debug for BasicAuth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("BasicAuth { .. }")
    }
}

impl BasicAuth {
    /// `user` has no `:` (the configuration refuses one): `user:password` splits one way only.
    pub fn new(user: &str, password: &str) -> Self {
        Self {
            digest: digest(format!("{user}:{password}").as_bytes()),
        }
    }

    /// Whether `authorization` (the request's header, if any) carries these credentials.
    pub(super) fn allows(&self, authorization: Option<&HeaderValue>) -> bool {
        let Some(sent) = authorization.and_then(|value| credentials(value.as_bytes())) else {
            return false;
        };
        let sent = digest(&sent);
        // Constant time: every byte is compared whatever the first difference.
        sent.iter()
            .zip(&self.digest)
            .fold(0u8, |diff, (a, b)| diff | (a ^ b))
            == 0
    }
}

fn digest(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

/// The decoded `user:password` of `Basic <base64>` (the scheme in any case), or `None`.
fn credentials(header: &[u8]) -> Option<Vec<u8>> {
    let text = std::str::from_utf8(header).ok()?.trim();
    let (scheme, token) = text.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    base64_decode(token.trim())
}

/// Standard base64 (RFC 4648 section 4), padding optional; `None` on any other byte.
fn base64_decode(text: &str) -> Option<Vec<u8>> {
    let text = text.trim_end_matches('=');
    let mut out = Vec::with_capacity(text.len() * 3 / 4);
    let (mut bits, mut held) = (0u32, 0u32);
    for byte in text.bytes() {
        let value = match byte {
            b'A'..=b'Z' => byte - b'A',
            b'a'..=b'z' => byte - b'a' + 26,
            b'0'..=b'9' => byte - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        };
        bits = (bits << 6) | u32::from(value);
        held += 6;
        if held >= 8 {
            held -= 8;
            out.push(u8::try_from((bits >> held) & 0xff).ok()?);
        }
    }
    // A lone sixth of a byte is not base64.
    (held < 6).then_some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(value: &str) -> HeaderValue {
        HeaderValue::from_str(value).unwrap()
    }

    #[test]
    fn decodes_base64() {
        assert_eq!(base64_decode("YWRtaW46czNjcjN0").unwrap(), b"admin:s3cr3t");
        assert_eq!(base64_decode("YQ==").unwrap(), b"a");
        assert_eq!(base64_decode("YQ").unwrap(), b"a");
        assert_eq!(base64_decode("YWI=").unwrap(), b"ab");
        assert_eq!(base64_decode("").unwrap(), b"");
        assert_eq!(base64_decode("Pz8/").unwrap(), b"???");
        assert!(base64_decode("Y").is_none());
        assert!(base64_decode("YW*=").is_none());
    }

    #[test]
    fn allows_only_the_configured_credentials() {
        let auth = BasicAuth::new("admin", "s3cr3t");
        // admin:s3cr3t
        assert!(auth.allows(Some(&header("Basic YWRtaW46czNjcjN0"))));
        assert!(auth.allows(Some(&header("basic  YWRtaW46czNjcjN0 "))));
        assert!(!auth.allows(None));
        // admin:s3cr3T
        assert!(!auth.allows(Some(&header("Basic YWRtaW46czNjcjNU"))));
        // admin:
        assert!(!auth.allows(Some(&header("Basic YWRtaW46"))));
        assert!(!auth.allows(Some(&header("Bearer YWRtaW46czNjcjN0"))));
        assert!(!auth.allows(Some(&header("Basic"))));
        assert!(!auth.allows(Some(&header("Basic !!!!"))));
        assert_eq!(format!("{auth:?}"), "BasicAuth { .. }");
    }
}
