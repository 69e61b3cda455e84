//! The pinned deny list: CIDRs in, LPM trie keys out, and back for `list`.

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    path::{Path, PathBuf},
};

use aya::maps::{
    lpm_trie::{Key, LpmTrie},
    MapData, MapType,
};
use lb_common::{
    ShieldAddr, ShieldRule, SHIELD_DENY_MAP, SHIELD_FAMILY_BITS, SHIELD_FAMILY_V4, SHIELD_FAMILY_V6,
};

use super::error::ShieldError;
use crate::{
    config::Cidr,
    dataplane::{self, MapLayout},
};

/// What the pinned deny list must be.
pub fn layout() -> MapLayout {
    MapLayout::of::<Key<ShieldAddr>, ShieldRule>(MapType::LpmTrie)
}

/// The deny list pinned at `<root>/SHIELD_DENY`, opened for reading and writing.
pub struct DenyList {
    trie: LpmTrie<MapData, ShieldAddr, ShieldRule>,
    path: PathBuf,
}

impl DenyList {
    /// Opens the deny list pinned under `root` (`<pin_dir>/<instance>/v1`), checking that it is
    /// the map of this version.
    pub fn open_pinned(root: &Path) -> Result<DenyList, ShieldError> {
        let path = root.join(SHIELD_DENY_MAP);
        let open_err = |source| ShieldError::OpenPinned {
            path: path.clone(),
            source,
        };
        let data = MapData::from_pin(&path).map_err(open_err)?;
        dataplane::check_layout(&data, &path, "a shield deny list", layout())
            .map_err(open_err)??;
        let trie = LpmTrie::try_from(aya::maps::Map::LpmTrie(data)).map_err(open_err)?;
        Ok(DenyList { trie, path })
    }

    /// Adds `cidr`; adding one already there is not an error.
    pub fn add(&mut self, cidr: &Cidr) -> Result<(), ShieldError> {
        let key = key_of(cidr);
        self.trie
            .insert(&key, 0, 0)
            .map_err(|source| self.map_err(source))
    }

    /// Removes `cidr` (exactly that prefix, not the ones inside it); `false` when it was not
    /// on the list.
    pub fn remove(&mut self, cidr: &Cidr) -> Result<bool, ShieldError> {
        let key = key_of(cidr);
        match self.trie.remove(&key) {
            Ok(()) => Ok(true),
            Err(aya::maps::MapError::SyscallError(e))
                if e.io_error.raw_os_error() == Some(libc::ENOENT) =>
            {
                Ok(false)
            }
            Err(source) => Err(self.map_err(source)),
        }
    }

    /// Every prefix on the list. A key that is not one `add` writes (another writer's) is
    /// skipped.
    pub fn list(&self) -> Result<Vec<Cidr>, ShieldError> {
        let mut cidrs = Vec::new();
        for key in self.trie.keys() {
            let key = key.map_err(|source| self.map_err(source))?;
            if let Some(cidr) = cidr_of(&key) {
                cidrs.push(cidr);
            }
        }
        cidrs.sort_by_key(|c| (c.network().is_ipv6(), c.network(), c.prefix()));
        Ok(cidrs)
    }

    fn map_err(&self, source: aya::maps::MapError) -> ShieldError {
        ShieldError::Map {
            path: self.path.clone(),
            source,
        }
    }
}

/// The trie key of `cidr`: the family byte and the network address, the prefix covering the
/// family byte too.
pub fn key_of(cidr: &Cidr) -> Key<ShieldAddr> {
    let mut data = ShieldAddr::default();
    match cidr.network() {
        IpAddr::V4(v4) => {
            data.family = SHIELD_FAMILY_V4;
            data.addr[..4].copy_from_slice(&v4.octets());
        }
        IpAddr::V6(v6) => {
            data.family = SHIELD_FAMILY_V6;
            data.addr = v6.octets();
        }
    }
    Key::new(SHIELD_FAMILY_BITS + u32::from(cidr.prefix()), data)
}

/// The CIDR a trie key stands for, if it is one [`key_of`] makes.
pub fn cidr_of(key: &Key<ShieldAddr>) -> Option<Cidr> {
    let data = key.data();
    let bits = key.prefix_len().checked_sub(SHIELD_FAMILY_BITS)?;
    let addr = match data.family {
        SHIELD_FAMILY_V4 => {
            let mut octets = [0u8; 4];
            octets.copy_from_slice(&data.addr[..4]);
            IpAddr::V4(Ipv4Addr::from(octets))
        }
        SHIELD_FAMILY_V6 => IpAddr::V6(Ipv6Addr::from(data.addr)),
        _ => return None,
    };
    format!("{addr}/{bits}").parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cidr(text: &str) -> Cidr {
        text.parse().unwrap()
    }

    #[test]
    fn keys_tag_the_family_and_count_its_bits() {
        let key = key_of(&cidr("192.0.2.0/24"));
        assert_eq!(key.prefix_len(), 32);
        assert_eq!(key.data().family, SHIELD_FAMILY_V4);
        assert_eq!(key.data().addr[..4], [192, 0, 2, 0]);
        assert_eq!(key.data().addr[4..], [0; 12]);
        let key = key_of(&cidr("fd00::/64"));
        assert_eq!(key.prefix_len(), 72);
        assert_eq!(key.data().family, SHIELD_FAMILY_V6);
    }

    #[test]
    fn keys_decode_to_the_cidr_they_came_from() {
        for text in [
            "10.0.0.0/8",
            "198.51.100.7/32",
            "0.0.0.0/0",
            "fd00::/64",
            "::/0",
        ] {
            assert_eq!(cidr_of(&key_of(&cidr(text))), Some(cidr(text)), "{text}");
        }
    }

    #[test]
    fn foreign_keys_decode_to_nothing() {
        let data = ShieldAddr {
            family: 9,
            ..ShieldAddr::default()
        };
        assert_eq!(cidr_of(&Key::new(16, data)), None);
        assert_eq!(cidr_of(&Key::new(4, ShieldAddr::default())), None);
    }
}
