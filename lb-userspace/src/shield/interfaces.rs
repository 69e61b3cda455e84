//! Which interfaces the shield goes on when `[shield] interfaces` is not set: those that carry
//! the frontends' addresses.

use std::net::IpAddr;

use super::error::ShieldError;
use crate::sys::{self, net::InterfaceAddr};

/// The interfaces found for the frontends' bind addresses.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Found {
    /// In the order the binds and `getifaddrs` name them, each once.
    pub names: Vec<String>,
    /// A frontend binds a wildcard address (`0.0.0.0`, `[::]`): every interface that is up,
    /// not loopback and carries an address is in `names`.
    pub wildcard: bool,
}

/// The interfaces of this namespace that carry `binds` (see [`choose`]).
pub fn of_binds(binds: &[IpAddr]) -> Result<Found, ShieldError> {
    let addrs = sys::net::interface_addrs().map_err(ShieldError::ListInterfaces)?;
    Ok(choose(binds, &addrs))
}

/// The interfaces among `addrs` that carry `binds`: for an address, the interfaces that have
/// it; for a wildcard, every interface that is up, not loopback and has an address other than
/// an IPv6 link-local one (which every IPv6 interface has): the interfaces a wildcard's
/// clients reach the host by, and not the address-less ports of bridges or the host ends of
/// containers' veths, which carry other hosts' traffic. Loopback binds and loopback interfaces
/// name none: nothing on them comes from the network.
pub fn choose(binds: &[IpAddr], addrs: &[InterfaceAddr]) -> Found {
    let mut found = Found::default();
    let mut add = |name: &str| {
        if !found.names.iter().any(|n| n == name) {
            found.names.push(name.to_owned());
        }
    };
    for bind in binds {
        if bind.is_loopback() {
            continue;
        }
        if bind.is_unspecified() {
            found.wildcard = true;
        }
        for entry in addrs.iter().filter(|a| !a.loopback) {
            let carries = if bind.is_unspecified() {
                entry.up && entry.addr.is_some_and(|a| !is_ipv6_link_local(a))
            } else {
                entry.addr.is_some_and(|a| same_address(a, *bind))
            };
            if carries {
                add(&entry.name);
            }
        }
    }
    found
}

/// Whether `addr` is IPv6 link-local (`fe80::/10`).
fn is_ipv6_link_local(addr: IpAddr) -> bool {
    matches!(addr, IpAddr::V6(v6) if v6.segments()[0] & 0xffc0 == 0xfe80)
}

/// Whether two addresses are the same, an IPv4-mapped IPv6 bind (`[::ffff:a.b.c.d]`) being its
/// IPv4 address.
fn same_address(a: IpAddr, b: IpAddr) -> bool {
    a.to_canonical() == b.to_canonical()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(name: &str, addr: Option<&str>, up: bool, loopback: bool) -> InterfaceAddr {
        InterfaceAddr {
            name: name.to_owned(),
            addr: addr.map(|a| a.parse().unwrap()),
            up,
            loopback,
        }
    }

    fn host() -> Vec<InterfaceAddr> {
        vec![
            entry("lo", Some("127.0.0.1"), true, true),
            entry("lo", Some("10.9.9.9"), true, true),
            entry("eth0", None, true, false),
            entry("eth0", Some("192.0.2.1"), true, false),
            entry("eth0", Some("2001:db8::1"), true, false),
            entry("eth1", Some("198.51.100.1"), true, false),
            entry("eth2", Some("203.0.113.1"), false, false),
            // A bridge port or a container's host-side veth: up, link-local only.
            entry("veth0", None, true, false),
            entry("veth0", Some("fe80::1"), true, false),
        ]
    }

    fn ips(list: &[&str]) -> Vec<IpAddr> {
        list.iter().map(|a| a.parse().unwrap()).collect()
    }

    #[test]
    fn an_address_names_the_interfaces_that_carry_it() {
        let found = choose(&ips(&["192.0.2.1", "2001:db8::1", "198.51.100.1"]), &host());
        assert_eq!(found.names, ["eth0", "eth1"]);
        assert!(!found.wildcard);
        let mapped = choose(&ips(&["::ffff:198.51.100.1"]), &host());
        assert_eq!(mapped.names, ["eth1"]);
    }

    #[test]
    fn a_wildcard_names_every_interface_up_with_an_address_but_loopback() {
        for wildcard in ["0.0.0.0", "::"] {
            let found = choose(&ips(&[wildcard]), &host());
            assert_eq!(found.names, ["eth0", "eth1"], "{wildcard}");
            assert!(found.wildcard);
        }
    }

    #[test]
    fn loopback_binds_and_interfaces_name_none() {
        let found = choose(&ips(&["127.0.0.1", "::1", "10.9.9.9"]), &host());
        assert_eq!(found, Found::default());
    }
}
