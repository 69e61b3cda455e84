//! What XDP an interface's driver can do: the `xdp-features` of the generic netlink family
//! `netdev` (Linux 6.3+), what `ynl --family netdev --do dev-get` prints.
//!
//! One request and one answer per question, on a socket of the caller's network namespace.

use std::io;

use rustix::net::{
    netlink, recv, send, socket_with, AddressFamily, RecvFlags, SendFlags, SocketFlags, SocketType,
};

/// `xdp-features` bit: the driver transmits frames other interfaces' XDP programs redirect to
/// it (`NETDEV_XDP_ACT_NDO_XMIT`). A veth has it while its peer has an XDP program or GRO on.
pub const XDP_ACT_NDO_XMIT: u64 = 1 << 2;

const NLMSG_ERROR: u16 = 2;
const NLM_F_REQUEST: u16 = 1;
const GENL_ID_CTRL: u16 = 0x10;
const CTRL_CMD_GETFAMILY: u8 = 3;
const CTRL_ATTR_FAMILY_ID: u16 = 1;
const CTRL_ATTR_FAMILY_NAME: u16 = 2;
const NETDEV_CMD_DEV_GET: u8 = 1;
const NETDEV_A_DEV_IFINDEX: u16 = 1;
const NETDEV_A_DEV_XDP_FEATURES: u16 = 3;
const NLMSG_HDRLEN: usize = 16;
const GENL_HDRLEN: usize = 4;

/// The `xdp-features` of interface `ifindex` (`NETDEV_XDP_ACT_*` bits).
pub fn xdp_features(ifindex: u32) -> io::Result<u64> {
    let socket = socket_with(
        AddressFamily::NETLINK,
        SocketType::RAW,
        SocketFlags::CLOEXEC,
        Some(netlink::GENERIC),
    )?;
    let family = request(
        &socket,
        GENL_ID_CTRL,
        CTRL_CMD_GETFAMILY,
        CTRL_ATTR_FAMILY_NAME,
        b"netdev\0",
    )?;
    let id = attribute(&family, CTRL_ATTR_FAMILY_ID)
        .and_then(|v| Some(u16::from_ne_bytes(v.get(..2)?.try_into().ok()?)))
        .ok_or_else(|| invalid("no family id for netdev"))?;
    let device = request(
        &socket,
        id,
        NETDEV_CMD_DEV_GET,
        NETDEV_A_DEV_IFINDEX,
        &ifindex.to_ne_bytes(),
    )?;
    attribute(&device, NETDEV_A_DEV_XDP_FEATURES)
        .and_then(|v| Some(u64::from_ne_bytes(v.get(..8)?.try_into().ok()?)))
        .ok_or_else(|| invalid("no xdp-features in the answer"))
}

/// Sends a generic netlink request of family `family` and command `cmd` with one attribute,
/// and returns the answer's attributes (after the generic netlink header).
fn request(
    socket: &rustix::fd::OwnedFd,
    family: u16,
    cmd: u8,
    attr: u16,
    value: &[u8],
) -> io::Result<Vec<u8>> {
    let attr_len = 4 + value.len();
    let total = NLMSG_HDRLEN + GENL_HDRLEN + align4(attr_len);
    let mut message = Vec::with_capacity(total);
    message.extend_from_slice(&(total as u32).to_ne_bytes());
    message.extend_from_slice(&family.to_ne_bytes());
    message.extend_from_slice(&NLM_F_REQUEST.to_ne_bytes());
    message.extend_from_slice(&1u32.to_ne_bytes()); // sequence
    message.extend_from_slice(&0u32.to_ne_bytes()); // port: the kernel
    message.extend_from_slice(&[cmd, 1, 0, 0]); // command, version, reserved
    message.extend_from_slice(&(attr_len as u16).to_ne_bytes());
    message.extend_from_slice(&attr.to_ne_bytes());
    message.extend_from_slice(value);
    message.resize(total, 0);
    send(socket, &message, SendFlags::empty())?;

    let mut answer = vec![0u8; 8192];
    let (n, _) = recv(socket, &mut answer[..], RecvFlags::empty())?;
    answer.truncate(n);
    let header = answer
        .get(..NLMSG_HDRLEN)
        .ok_or_else(|| invalid("short netlink answer"))?;
    let kind = u16::from_ne_bytes([header[4], header[5]]);
    if kind == NLMSG_ERROR {
        let code = answer
            .get(NLMSG_HDRLEN..NLMSG_HDRLEN + 4)
            .map(|b| i32::from_ne_bytes([b[0], b[1], b[2], b[3]]))
            .unwrap_or(0);
        return Err(io::Error::from_raw_os_error(code.saturating_neg()));
    }
    Ok(answer
        .get(NLMSG_HDRLEN + GENL_HDRLEN..)
        .unwrap_or_default()
        .to_vec())
}

/// The value of the first attribute of type `kind` in `attrs`.
fn attribute(attrs: &[u8], kind: u16) -> Option<&[u8]> {
    let mut rest = attrs;
    while rest.len() >= 4 {
        let len = usize::from(u16::from_ne_bytes([rest[0], rest[1]]));
        // The top bits flag nested and byte-order attributes.
        let this = u16::from_ne_bytes([rest[2], rest[3]]) & 0x3fff;
        if len < 4 || len > rest.len() {
            return None;
        }
        if this == kind {
            return rest.get(4..len);
        }
        rest = rest.get(align4(len)..).unwrap_or_default();
    }
    None
}

fn align4(n: usize) -> usize {
    (n + 3) & !3
}

fn invalid(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attributes_are_found_past_others_and_padding() {
        // A 5-byte attribute (padded to 8), then an 8-byte one.
        let attrs = [
            5, 0, 1, 0, 7, 0, 0, 0, //
            12, 0, 3, 0, 1, 2, 3, 4, 5, 6, 7, 8,
        ];
        assert_eq!(attribute(&attrs, 1), Some(&[7u8][..]));
        assert_eq!(attribute(&attrs, 3), Some(&[1u8, 2, 3, 4, 5, 6, 7, 8][..]));
        assert_eq!(attribute(&attrs, 2), None);
        // A length past the end stops the walk.
        assert_eq!(attribute(&[40, 0, 1, 0, 0, 0], 1), None);
    }

    #[test]
    fn loopback_answers() {
        // Every interface has xdp-features (0 when the driver has none) on 6.3+.
        let lo = crate::sys::net::interface_index("lo").unwrap();
        assert!(xdp_features(lo).is_ok());
    }
}
