//! `[peers]`: the bind address, the members, and who may connect (`allow`, `tls`).

use std::net::SocketAddr;

use toml::Spanned;

use super::{tls::load_roots, Checker, Seen, MAX_NAME};
use crate::config::{
    raw::{RawConfig, RawPeerMember, RawPeersTls},
    Cidr, Instance, PeerMember, Peers, PeersTls,
};

impl Checker<'_> {
    /// Checks `[peers]`: addresses, unique names, and that this instance is a member, as the
    /// one-file-for-every-node model requires. `Some(None)` when there is no such section.
    pub(super) fn peers(
        &mut self,
        raw: &RawConfig,
        instance: Option<&Instance>,
        binds: &mut Seen<SocketAddr>,
    ) -> Option<Option<Peers>> {
        let Some(peers) = &raw.peers else {
            return Some(None);
        };
        let bind = self
            .required(&peers.bind, None, "peers", "bind")
            .and_then(|b| Some((b, self.addr(b, "peers.bind")?)))
            .map(|(b, addr)| {
                self.unique(binds, addr, b, "peers.bind", "peers");
                addr
            });
        let members = self.peer_members(&peers.members);
        let tls = peers.tls.as_ref().map(|raw| self.peers_tls(raw));
        let allow = match &peers.allow {
            Some(list) => self.allow(list),
            // Only the members: a peers port open to anyone who can reach it would take
            // sessions (and their cookies) from whoever says a member's name.
            None => members
                .as_ref()
                .map(|members| members.iter().map(|m| Cidr::host(m.addr.ip())).collect()),
        };
        if let (Some(instance), Some(members)) = (instance, &members) {
            if !members.iter().any(|m| m.name == instance.name) {
                let msg = format!(
                    "instance name {:?} is not among the members: the same [peers] section is \
                     meant for every node, each finding itself by its instance name",
                    instance.name
                );
                self.report(None, "peers.members", msg);
                return None;
            }
        }
        let tls = match tls {
            Some(None) => return None,
            checked => checked.flatten(),
        };
        Some(Some(Peers {
            bind: bind?,
            members: members?,
            tls,
            allow: allow?,
        }))
    }

    /// Every member with a valid, unique name and an address; `None` if any is not.
    fn peer_members(&mut self, raw: &[Spanned<RawPeerMember>]) -> Option<Vec<PeerMember>> {
        let mut names = Seen::new();
        let mut members = Vec::new();
        let mut complete = true;
        for (i, member) in raw.iter().enumerate() {
            let key = format!("peers.members[{i}]");
            let span = member.span();
            let member = member.get_ref();
            let name = self
                .required(&member.name, Some(&span), &key, "name")
                .and_then(|n| {
                    let name_key = format!("{key}.name");
                    let name = self.name(n, &name_key, MAX_NAME)?;
                    self.unique(&mut names, name.clone(), n, &name_key, &key);
                    Some(name)
                });
            let addr = self
                .required(&member.addr, Some(&span), &key, "addr")
                .and_then(|addr| self.addr(addr, &format!("{key}.addr")));
            match (name, addr) {
                (Some(name), Some(addr)) => members.push(PeerMember { name, addr }),
                _ => complete = false,
            }
        }
        complete.then_some(members)
    }

    /// `peers.allow`: a non-empty list of CIDRs (a bare address is one host).
    fn allow(&mut self, list: &Spanned<Vec<Spanned<String>>>) -> Option<Vec<Cidr>> {
        if list.get_ref().is_empty() {
            let msg =
                "must not be empty (nothing could connect); leave it out to allow the members";
            self.report(Some(list.span()), "peers.allow", msg);
            return None;
        }
        let parsed: Vec<Option<Cidr>> = list
            .get_ref()
            .iter()
            .enumerate()
            .map(|(i, text)| match text.get_ref().parse::<Cidr>() {
                Ok(cidr) => Some(cidr),
                Err(error) => {
                    let key = format!("peers.allow[{i}]");
                    self.report(Some(text.span()), &key, error.to_string());
                    None
                }
            })
            .collect();
        parsed.into_iter().collect()
    }

    /// `peers.tls = { cert, key, ca }`: our chain and key checked as a frontend's are, and the
    /// CA read.
    fn peers_tls(&mut self, raw: &RawPeersTls) -> Option<PeersTls> {
        const KEY: &str = "peers.tls";
        let certificate = self.certificate(KEY, None, &raw.cert, &raw.key);
        // An inline table has no span of its own: a missing `ca` is reported on the line of
        // `cert` or `key`.
        let near = raw.cert.as_ref().or(raw.key.as_ref()).map(Spanned::span);
        let ca = self
            .required(&raw.ca, near.as_ref(), KEY, "ca")
            .and_then(|ca| self.absolute(ca, "peers.tls.ca"))
            .and_then(|(ca, span)| match load_roots(&ca) {
                Ok(roots) => Some((ca, roots)),
                Err(msg) => {
                    self.report(Some(span), "peers.tls.ca", msg);
                    None
                }
            });
        let (ca, roots) = ca?;
        Some(PeersTls {
            certificate: certificate?,
            ca,
            roots,
        })
    }
}
