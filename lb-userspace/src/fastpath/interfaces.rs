//! Which interface carries an address: the one a connection's local address belongs to is the
//! one its packets leave by (source address selection picks the outgoing interface's address).

use std::{
    ffi::CStr,
    io,
    net::{Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket},
};

/// An interface with an IPv4 address.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Interface {
    pub name: String,
    pub index: u32,
}

/// The interface that has `addr` as one of its IPv4 addresses (getifaddrs).
pub fn owning(addr: Ipv4Addr) -> io::Result<Option<Interface>> {
    let mut list: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills `list`, freed below with freeifaddrs.
    if unsafe { libc::getifaddrs(&mut list) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let mut found = None;
    let mut cursor = list;
    while !cursor.is_null() {
        // SAFETY: a node of the list getifaddrs returned, alive until freeifaddrs.
        let entry = unsafe { &*cursor };
        cursor = entry.ifa_next;
        if entry.ifa_addr.is_null() {
            continue;
        }
        // SAFETY: ifa_addr points at a sockaddr whose family says its type.
        let family = unsafe { (*entry.ifa_addr).sa_family };
        if i32::from(family) != libc::AF_INET {
            continue;
        }
        // SAFETY: an AF_INET sockaddr is a sockaddr_in.
        let sin = unsafe { &*entry.ifa_addr.cast::<libc::sockaddr_in>() };
        if Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr)) != addr {
            continue;
        }
        // SAFETY: ifa_name is a NUL-terminated string owned by the list.
        let name = unsafe { CStr::from_ptr(entry.ifa_name) };
        // SAFETY: as above.
        let index = unsafe { libc::if_nametoindex(entry.ifa_name) };
        if index != 0 {
            found = Some(Interface {
                name: name.to_string_lossy().into_owned(),
                index,
            });
            break;
        }
    }
    // SAFETY: the list getifaddrs returned, freed once.
    unsafe { libc::freeifaddrs(list) };
    Ok(found)
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

/// The interface the route to `peer` uses.
pub fn toward(peer: SocketAddrV4) -> io::Result<Option<Interface>> {
    owning(source_for(peer)?)
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
