//! Network interfaces: an interface's index by name, and which interface has an IPv4 address.

use std::{ffi::CStr, io, net::Ipv4Addr};

use rustix::net::{netdevice, AddressFamily, SocketFlags, SocketType};

/// The index of the interface named `name` (`if_nametoindex`, through a socket's
/// `SIOCGIFINDEX` as the C library does).
pub fn interface_index(name: &str) -> io::Result<u32> {
    let socket = rustix::net::socket_with(
        AddressFamily::INET,
        SocketType::DGRAM,
        SocketFlags::CLOEXEC,
        None,
    )?;
    Ok(netdevice::name_to_index(&socket, name)?)
}

/// The name and index of the first interface that has `addr` as one of its IPv4 addresses
/// (`getifaddrs`; rustix has no wrapper for it).
pub fn interface_with_ipv4(addr: Ipv4Addr) -> io::Result<Option<(String, u32)>> {
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
        let name = name.to_string_lossy().into_owned();
        if let Ok(index) = interface_index(&name) {
            found = Some((name, index));
            break;
        }
    }
    // SAFETY: the list getifaddrs returned, freed once.
    unsafe { libc::freeifaddrs(list) };
    Ok(found)
}
