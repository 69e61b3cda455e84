//! `[shield]`: `enabled`, `interfaces`, `syn_rate`, `syn_burst` and `hook`.

use super::{fastpath::check_ifname, Checker, Seen};
use crate::config::{raw::RawShield, Frontend, Shield, ShieldHook};

/// SYNs per second per source, and back to back, when the file does not say.
pub(in crate::config) const DEFAULT_SYN_RATE: u32 = 200;
pub(in crate::config) const DEFAULT_SYN_BURST: u32 = 400;
/// Far above any real client's connection rate, and small enough that the program's window
/// (`1e9 / rate * burst` ns) cannot overflow.
const MAX_SYN: i64 = 1_000_000;

impl Checker<'_> {
    /// `[shield]`: `enabled` (default: [`on_by_default`] of the frontends), `interfaces`
    /// (default: those of the frontends' addresses, found at start), the SYN limit
    /// (`syn_rate`, `syn_burst`, each 1..=1000000) and `hook`.
    ///
    /// `syn_burst` may be below `syn_rate`: the bucket refills continuously (one SYN every
    /// `1/syn_rate` s), so a burst of 50 at a rate of 200/s still lets 200 SYNs through each
    /// second, only never more than 50 at once. Hence no rule between the two.
    pub(super) fn shield(
        &mut self,
        raw: &RawShield,
        frontends: Option<&[Frontend]>,
    ) -> Option<Shield> {
        let rate = self.syn_setting(raw, "syn_rate", DEFAULT_SYN_RATE);
        let burst = self.syn_setting(raw, "syn_burst", DEFAULT_SYN_BURST);
        let interfaces = self.shield_interfaces(raw);
        let hook = self.shield_hook(raw);
        let (enabled, by_default) = match &raw.enabled {
            Some(enabled) => (*enabled.get_ref(), false),
            None => (on_by_default(frontends.unwrap_or_default()), true),
        };
        Some(Shield {
            enabled,
            by_default: by_default && enabled,
            interfaces: interfaces?,
            syn_rate: rate?,
            syn_burst: burst?,
            hook: hook?,
        })
    }

    /// `hook`: `auto` (the default), `xdp` or `tc`.
    fn shield_hook(&mut self, raw: &RawShield) -> Option<ShieldHook> {
        let Some(text) = &raw.hook else {
            return Some(ShieldHook::Auto);
        };
        match text.get_ref().as_str() {
            "auto" => Some(ShieldHook::Auto),
            "xdp" => Some(ShieldHook::Xdp),
            "tc" => Some(ShieldHook::Tc),
            other => {
                let msg = format!("unknown hook {other:?} (valid: auto, xdp, tc)");
                self.report(Some(text.span()), "shield.hook", msg);
                None
            }
        }
    }

    fn syn_setting(&mut self, raw: &RawShield, name: &str, default: u32) -> Option<u32> {
        let value = match name {
            "syn_rate" => raw.syn_rate.as_ref(),
            _ => raw.syn_burst.as_ref(),
        };
        let key = format!("shield.{name}");
        let n = self.integer(value, &key, i64::from(default), 1..=MAX_SYN)?;
        u32::try_from(n).ok()
    }

    /// `interfaces`: names given once each; absent (empty result) for the interfaces of the
    /// frontends' addresses.
    fn shield_interfaces(&mut self, raw: &RawShield) -> Option<Vec<String>> {
        let Some(list) = &raw.interfaces else {
            return Some(Vec::new());
        };
        if list.get_ref().is_empty() {
            let msg = "must not be empty; omit it for the interfaces of the frontends' addresses";
            self.report(Some(list.span()), "shield.interfaces", msg);
            return None;
        }
        let mut seen = Seen::new();
        let mut names = Vec::new();
        let mut complete = true;
        for (i, name) in list.get_ref().iter().enumerate() {
            let key = format!("shield.interfaces[{i}]");
            match self.text(name, &key, check_ifname) {
                Some(ok) => {
                    self.unique(&mut seen, ok.clone(), name, &key, &key);
                    names.push(ok);
                }
                None => complete = false,
            }
        }
        let unique = seen.len() == names.len();
        (complete && unique).then_some(names)
    }
}

/// Whether the shield is on when the file does not say: when a frontend binds an address that
/// is not loopback, a wildcard (`0.0.0.0`, `::`, as the seed's HAProxy binds `*:80`) included:
/// the network reaches it. Only loopback frontends leave it off. On a wildcard it goes on the
/// interfaces that carry an address (`shield::interfaces`); its SYN limit counts only SYNs to
/// the frontends' ports, so the host's other services are not limited by it.
pub(in crate::config) fn on_by_default(frontends: &[Frontend]) -> bool {
    frontends
        .iter()
        .any(|frontend| !frontend.bind.ip().is_loopback())
}
