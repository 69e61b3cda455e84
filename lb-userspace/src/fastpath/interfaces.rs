//! Which interface carries an address: the one a connection's local address belongs to is the
//! one its packets leave by (source address selection picks the outgoing interface's address);
//! and whether an interface takes frames redirected at XDP.

use std::{
    io,
    net::{Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket},
};

use crate::sys;

/// An interface with an IPv4 address.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Interface {
    pub name: String,
    pub index: u32,
}

/// The interface that has `addr` as one of its IPv4 addresses (getifaddrs).
pub fn owning(addr: Ipv4Addr) -> io::Result<Option<Interface>> {
    let found = sys::net::interface_with_ipv4(addr)?;
    Ok(found.map(|(name, index)| Interface { name, index }))
}

/// The local address the kernel picks to reach `peer` (a connected UDP socket sends nothing).
pub fn source_for(peer: SocketAddrV4) -> io::Result<Ipv4Addr> {
    let socket = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0))?;
    socket.connect(peer)?;
    match socket.local_addr()? {
        SocketAddr::V4(local) => Ok(*local.ip()),
        SocketAddr::V6(_) => Err(io::Error::other("IPv6 source for an IPv4 peer")),
    }
}

/// Whether the driver of interface `index` transmits frames an XDP program redirects to it
/// (`xdp-features` has `ndo-xmit`). A veth does while its peer has GRO or an XDP program on:
/// the frames are queued to the peer's NAPI, which otherwise does not run.
pub fn transmits_xdp_redirects(index: u32) -> io::Result<bool> {
    let features = sys::netdev::xdp_features(index)?;
    Ok(features & sys::netdev::XDP_ACT_NDO_XMIT != 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_is_found() {
        let lo = owning(Ipv4Addr::LOCALHOST).unwrap();
        assert_eq!(lo.map(|i| i.name), Some("lo".to_owned()));
        assert_eq!(owning(Ipv4Addr::new(192, 0, 2, 77)).unwrap(), None);
        let peer = SocketAddrV4::new(Ipv4Addr::LOCALHOST, 9);
        assert_eq!(source_for(peer).unwrap(), Ipv4Addr::LOCALHOST);
    }
}
