//! A frontend's `fastpath` and `fastpath_interfaces`.

use std::net::SocketAddr;

use super::{Checker, FastPathMode, Seen};
use crate::config::raw::RawFrontend;

/// Linux interface names: at most `IFNAMSIZ - 1` bytes.
const MAX_IFNAME: usize = 15;

impl Checker<'_> {
    /// The mode (default [`FastPathMode::DEFAULT`]) and the interfaces of frontend `key`.
    pub(super) fn fastpath(
        &mut self,
        key: &str,
        raw: &RawFrontend,
        bind: Option<SocketAddr>,
    ) -> (Option<FastPathMode>, Option<Vec<String>>) {
        let mode = match &raw.fastpath {
            // The kernel cannot splice a TLS connection without kTLS: served in userspace.
            None if raw.tls.is_some() => Some(FastPathMode::Off),
            // A redirecting frontend answers every request itself: nothing to splice.
            None if raw.redirect_http_to.is_some() => Some(FastPathMode::Off),
            None if matches!(bind, Some(SocketAddr::V6(_))) => Some(FastPathMode::Off),
            None => Some(FastPathMode::DEFAULT),
            Some(mode) => match mode.get_ref().as_str() {
                "splice" => Some(FastPathMode::Splice),
                "off" => Some(FastPathMode::Off),
                other => {
                    let msg = format!("unknown fastpath {other:?} (valid: splice, off)");
                    self.report(Some(mode.span()), &format!("{key}.fastpath"), msg);
                    None
                }
            },
        };
        if let (Some(FastPathMode::Splice), Some(SocketAddr::V6(_)), Some(raw_mode)) =
            (mode, bind, &raw.fastpath)
        {
            let msg = "the kernel fast path splices IPv4 connections only; bind an IPv4 \
                       address or set fastpath = \"off\"";
            self.report(Some(raw_mode.span()), &format!("{key}.fastpath"), msg);
        }
        if let (Some(FastPathMode::Splice), Some(_), Some(raw_mode)) =
            (mode, &raw.tls, &raw.fastpath)
        {
            let msg = "a TLS frontend is served in userspace (the kernel fast path cannot \
                       splice TLS without kTLS); remove fastpath or set fastpath = \"off\"";
            self.report(Some(raw_mode.span()), &format!("{key}.fastpath"), msg);
        }
        if let (Some(FastPathMode::Splice), Some(_), Some(raw_mode)) =
            (mode, &raw.redirect_http_to, &raw.fastpath)
        {
            let msg = "a frontend with redirect_http_to answers every request itself and \
                       routes nothing to splice; remove fastpath or set fastpath = \"off\"";
            self.report(Some(raw_mode.span()), &format!("{key}.fastpath"), msg);
        }
        let Some(list) = &raw.fastpath_interfaces else {
            return (mode, Some(Vec::new()));
        };
        let list_key = format!("{key}.fastpath_interfaces");
        if mode == Some(FastPathMode::Off) {
            let msg =
                "has no effect with fastpath = \"off\"; remove it or set fastpath = \"splice\"";
            self.report(Some(list.span()), &list_key, msg);
        }
        if list.get_ref().is_empty() {
            let msg = "must not be empty; omit it for the routes' interfaces";
            self.report(Some(list.span()), &list_key, msg);
            return (mode, None);
        }
        let mut seen = Seen::new();
        let mut complete = true;
        let mut names = Vec::new();
        for (i, name) in list.get_ref().iter().enumerate() {
            let item_key = format!("{list_key}[{i}]");
            match self.text(name, &item_key, check_ifname) {
                Some(ok) => {
                    self.unique(&mut seen, ok.clone(), name, &item_key, &item_key);
                    names.push(ok);
                }
                None => complete = false,
            }
        }
        let unique = seen.len() == names.len();
        (mode, (complete && unique).then_some(names))
    }
}

/// A name `ip link` would accept: 1 to 15 bytes, no `/`, `:` or whitespace, not `.` or `..`.
pub(super) fn check_ifname(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > MAX_IFNAME {
        return Err(format!(
            "interface name {name:?} must be 1 to {MAX_IFNAME} bytes"
        ));
    }
    if name == "." || name == ".." {
        return Err(format!("{name:?} is not an interface name"));
    }
    if name
        .chars()
        .any(|c| c == '/' || c == ':' || c.is_whitespace() || c.is_control())
    {
        return Err(format!(
            "interface name {name:?} must not contain '/', ':' or whitespace"
        ));
    }
    Ok(())
}
