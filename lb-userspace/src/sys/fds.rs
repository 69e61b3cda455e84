//! Passing open file descriptors between processes over a unix socket (`SCM_RIGHTS`): how a new
//! process takes the listening sockets of the old one, so that no connection is refused while
//! one replaces the other. rustix builds and walks the control messages.

use std::{
    io::{self, IoSlice, IoSliceMut},
    mem::MaybeUninit,
    os::{
        fd::{BorrowedFd, OwnedFd},
        unix::net::UnixStream,
    },
};

use rustix::net::{
    RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, ReturnFlags, SendAncillaryBuffer,
    SendAncillaryMessage, SendFlags,
};

/// The most descriptors one message carries: every frontend, the monitor and the peers port.
pub const MAX_FDS: usize = 64;

/// Sends `data` with `fds` attached, in one message.
pub fn send_with_fds(socket: &UnixStream, data: &[u8], fds: &[BorrowedFd<'_>]) -> io::Result<()> {
    if fds.len() > MAX_FDS || data.is_empty() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "fd message needs data and at most MAX_FDS descriptors",
        ));
    }
    let mut space = vec![MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(fds.len()))];
    let mut control = SendAncillaryBuffer::new(&mut space);
    // The buffer was sized for these descriptors, so the push fits.
    if !fds.is_empty() && !control.push(SendAncillaryMessage::ScmRights(fds)) {
        return Err(io::Error::other("fd message: no room for the descriptors"));
    }
    let sent = rustix::net::sendmsg(
        socket,
        &[IoSlice::new(data)],
        &mut control,
        SendFlags::NOSIGNAL,
    )?;
    if sent != data.len() {
        return Err(io::Error::new(
            io::ErrorKind::WriteZero,
            "fd message sent in part",
        ));
    }
    Ok(())
}

/// Receives one message into `buf`, returning its length and the descriptors attached. The
/// descriptors are owned: dropping them closes them.
pub fn recv_with_fds(socket: &UnixStream, buf: &mut [u8]) -> io::Result<(usize, Vec<OwnedFd>)> {
    let mut space = vec![MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(MAX_FDS))];
    let mut control = RecvAncillaryBuffer::new(&mut space);
    // MSG_CMSG_CLOEXEC keeps the descriptors from leaking into children.
    let received = rustix::net::recvmsg(
        socket,
        &mut [IoSliceMut::new(buf)],
        &mut control,
        RecvFlags::CMSG_CLOEXEC,
    )?;
    let mut fds = Vec::new();
    for message in control.drain() {
        if let RecvAncillaryMessage::ScmRights(received) = message {
            fds.extend(received);
        }
    }
    if received.flags.contains(ReturnFlags::CTRUNC) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "more descriptors than expected were sent",
        ));
    }
    Ok((received.bytes, fds))
}

#[cfg(test)]
mod tests {
    use std::{
        io::{Read as _, Write as _},
        os::fd::AsFd as _,
    };

    use super::*;

    #[test]
    fn descriptors_arrive_open_and_usable() {
        let (a, b) = UnixStream::pair().unwrap();
        let (mut left, right) = UnixStream::pair().unwrap();
        send_with_fds(&a, b"here", &[right.as_fd()]).unwrap();
        drop(right);
        let mut buf = [0u8; 16];
        let (n, fds) = recv_with_fds(&b, &mut buf).unwrap();
        assert_eq!(&buf[..n], b"here");
        assert_eq!(fds.len(), 1);
        let mut received = UnixStream::from(fds.into_iter().next().unwrap());
        left.write_all(b"ping").unwrap();
        let mut got = [0u8; 4];
        received.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"ping");
    }

    #[test]
    fn a_message_without_descriptors_is_just_data() {
        let (a, b) = UnixStream::pair().unwrap();
        send_with_fds(&a, b"none", &[]).unwrap();
        let mut buf = [0u8; 16];
        let (n, fds) = recv_with_fds(&b, &mut buf).unwrap();
        assert_eq!((&buf[..n], fds.len()), (&b"none"[..], 0));
    }
}
