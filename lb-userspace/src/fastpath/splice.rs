//! The hand-off protocol: OBSERVE, then ARMED, then the program completes it.
//!
//! 1. OBSERVE: both legs have entries in which the program records each peer's latest TSval
//!    (Linux has no getsockopt for the peer's timestamp).
//! 2. Arm, at a message boundary where both legs are quiet: nothing unread on either socket,
//!    nothing unacknowledged toward the server, nothing unsent toward the client. The sockets'
//!    exact state is read in repair mode, the translation computed (`translate`), and written:
//!    the server's direction in SPLICE at once (the server has nothing to send), the client's
//!    ARMED. Bytes the proxy writes to the client right after arming (an answer held back for
//!    this) are counted in. From here on the client's packets never reach the proxy socket: the
//!    program completes the hand-off on the first one that acknowledges everything the proxy
//!    socket sent and starts where its receive stream ends, and drops the others (old
//!    duplicates, partial acknowledgements: what they carry comes again). The proxy socket stays
//!    open until then for what it still has to retransmit.
//! 3. Complete: once the program has completed it (or, when nothing was left unacknowledged,
//!    after a short settle), both sockets are closed in repair mode: no FIN, no RST, no
//!    TIME_WAIT.
//!
//! Nothing is ever frozen, so a request that arrives in the middle is never dropped: it either
//! reached the socket before the client's entry was armed (the hand-off is given up, found by
//! the socket having something to read), or it completes the hand-off and is translated.
//!
//! Every call here is a handful of non-blocking syscalls; waiting is the caller's (async).

use std::{
    net::{SocketAddr, SocketAddrV4, TcpStream},
    os::fd::AsFd,
};

use lb_common::{
    SpliceEntry, SpliceKey, SPLICE_STATE_ARMED, SPLICE_STATE_OBSERVE, SPLICE_STATE_SPLICE,
};

use super::{
    flows::Flows,
    repair::{self, RepairError, TCP_ESTABLISHED},
    translate::{self, tuple_key, Leg, Refusal, Translation},
};

/// A connection the proxy relays, with its OBSERVE entries in place.
pub struct Observed {
    pub client: TcpStream,
    pub server: TcpStream,
    client_key: SpliceKey,
    server_key: SpliceKey,
    client_addrs: (SocketAddrV4, SocketAddrV4),
    server_addrs: (SocketAddrV4, SocketAddrV4),
}

/// Why a connection could not be armed; it stays in userspace, OBSERVE entries in place.
#[derive(Debug, thiserror::Error)]
pub enum NotSpliced {
    #[error("not quiet: unread bytes (client leg {client_inq}, server leg {server_inq})")]
    Unread { client_inq: u32, server_inq: u32 },
    #[error("not quiet: {unacked} bytes not yet acknowledged by the server")]
    ServerUnacked { unacked: u32 },
    #[error("not quiet: {unsent} bytes not yet sent to the client")]
    ClientUnsent { unsent: u32 },
    #[error(transparent)]
    Refused(#[from] Refusal),
}

#[derive(Debug, thiserror::Error)]
pub enum SpliceError {
    #[error("only IPv4 connections can be spliced ({0})")]
    NotIpv4(SocketAddr),
    #[error("socket address")]
    Address(#[source] std::io::Error),
    #[error(transparent)]
    Repair(#[from] RepairError),
    #[error("splice flow map")]
    Map(#[from] std::io::Error),
}

/// Where an armed hand-off stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Progress {
    /// The client has everything the proxy sent: the sockets can go.
    Complete,
    /// The client has not acknowledged everything yet.
    Waiting,
    /// Something reached a proxy socket after its snapshot (a request sent at that very instant,
    /// a close): the translation is wrong; give the hand-off up.
    Broken,
}

impl Observed {
    /// A relayed connection's two sockets, with no entries yet (see [`observe`]).
    pub fn new(client: TcpStream, server: TcpStream) -> Result<Observed, SpliceError> {
        let client_addrs = addrs(&client)?;
        let server_addrs = addrs(&server)?;
        Ok(Observed {
            client_key: tuple_key(client_addrs.1, client_addrs.0),
            server_key: tuple_key(server_addrs.1, server_addrs.0),
            client,
            server,
            client_addrs,
            server_addrs,
        })
    }

    /// Inserts OBSERVE entries for both legs, so the program records each peer's TSval. Call it
    /// right after connecting to the server, before relaying anything.
    pub fn start(
        flows: &Flows,
        client: TcpStream,
        server: TcpStream,
    ) -> Result<Observed, SpliceError> {
        let observed = Observed::new(client, server)?;
        observe(flows, &observed.client_key)?;
        observe(flows, &observed.server_key)?;
        Ok(observed)
    }

    /// The keys of the two entries: (client -> proxy, server -> proxy).
    pub fn keys(&self) -> (SpliceKey, SpliceKey) {
        (self.client_key, self.server_key)
    }

    /// Arms the hand-off (step 2 of the module documentation) if both legs are quiet and can be
    /// translated. `pending`: bytes the caller writes to the client right after. The interfaces
    /// are those toward the client and the server.
    pub fn arm(
        &self,
        flows: &Flows,
        client_ifindex: u32,
        server_ifindex: u32,
        pending: u32,
    ) -> Result<Result<Translation, NotSpliced>, SpliceError> {
        if let Err(why) = self.quiet()? {
            return Ok(Err(why));
        }
        repair::enter(&self.client)?;
        let snapshots = repair::enter(&self.server).and_then(|()| {
            Ok((
                repair::snapshot(&self.client)?,
                repair::snapshot(&self.server)?,
            ))
        });
        // Out of repair mode whatever happened: the sockets go on relaying until completion.
        let left = repair::leave(&self.client).and(repair::leave(&self.server));
        let (mut a, b) = snapshots?;
        left?;
        // The proxy socket will have sent `pending` more when the client's entry matters.
        let received = a.rcv_nxt;
        a.snd_nxt = a.snd_nxt.wrapping_add(pending);
        a.outq = 0;
        let tsval = |key| -> Result<u32, SpliceError> {
            Ok(flows.get(key)?.map_or(0, |entry| entry.last_tsval))
        };
        let client_leg = Leg {
            local: self.client_addrs.0,
            peer: self.client_addrs.1,
            ifindex: client_ifindex,
            snapshot: a,
            peer_last_tsval: tsval(&self.client_key)?,
        };
        let server_leg = Leg {
            local: self.server_addrs.0,
            peer: self.server_addrs.1,
            ifindex: server_ifindex,
            snapshot: b,
            peer_last_tsval: tsval(&self.server_key)?,
        };
        let translation = match translate::translate(&client_leg, &server_leg) {
            Ok(t) => t,
            Err(refusal) => return Ok(Err(refusal.into())),
        };
        let armed = SpliceEntry {
            state: SPLICE_STATE_ARMED,
            armed_seq: received,
            armed_ack: a.snd_nxt,
            ..translation.client_entry
        };
        // The server's direction first: once the client's packets are translated, the server's
        // answers must be too.
        flows.insert(&translation.server_key, &translation.server_entry)?;
        flows.insert(&translation.client_key, &armed)?;
        Ok(Ok(translation))
    }

    /// Nothing unread on either leg, nothing unacknowledged toward the server, nothing unsent
    /// toward the client (what is sent but unacknowledged is covered by the armed entry, and
    /// stays the proxy socket's to retransmit until the client acknowledges it).
    fn quiet(&self) -> Result<Result<(), NotSpliced>, SpliceError> {
        let (client_inq, _) = repair::queues(self.client.as_fd())?;
        let (server_inq, server_outq) = repair::queues(self.server.as_fd())?;
        if client_inq != 0 || server_inq != 0 {
            return Ok(Err(NotSpliced::Unread {
                client_inq,
                server_inq,
            }));
        }
        if server_outq != 0 {
            return Ok(Err(NotSpliced::ServerUnacked {
                unacked: server_outq,
            }));
        }
        let unsent = repair::unsent(self.client.as_fd())?;
        if unsent != 0 {
            return Ok(Err(NotSpliced::ClientUnsent { unsent }));
        }
        Ok(Ok(()))
    }

    /// Where the armed hand-off stands (see [`Progress`]). Call it a little after arming: a
    /// packet that passed the program just before the entry was armed reaches its socket
    /// within microseconds, and shows here. `sent`: the proxy wrote to the client after
    /// arming; the hand-off is complete when the program has seen the client acknowledge it.
    /// Without it, the client already has everything (nothing unacknowledged): the program
    /// completes the hand-off on the client's next packet, the sockets are no longer needed.
    pub fn progress(&self, flows: &Flows, sent: bool) -> Result<Progress, SpliceError> {
        let (client_inq, client_outq) = repair::queues(self.client.as_fd())?;
        let (server_inq, _) = repair::queues(self.server.as_fd())?;
        let established = repair::state(self.client.as_fd())? == TCP_ESTABLISHED
            && repair::state(self.server.as_fd())? == TCP_ESTABLISHED;
        if client_inq != 0 || server_inq != 0 || !established {
            return Ok(Progress::Broken);
        }
        let completed = flows
            .get(&self.client_key)?
            .is_some_and(|entry| entry.state == SPLICE_STATE_SPLICE);
        Ok(if completed || (!sent && client_outq == 0) {
            Progress::Complete
        } else {
            Progress::Waiting
        })
    }

    /// Gives an armed hand-off up: both entries back to OBSERVE (the program hands the
    /// connection's packets to the sockets again).
    pub fn disarm(&self, flows: &Flows) -> Result<(), SpliceError> {
        observe(flows, &self.client_key)?;
        observe(flows, &self.server_key)?;
        Ok(())
    }

    /// Closes both sockets in repair mode: nothing is sent, nothing is left in TIME_WAIT.
    pub fn close_silently(self) -> Result<(), SpliceError> {
        repair::enter(&self.client)?;
        repair::enter(&self.server)?;
        Ok(())
    }

    /// Removes both entries (the connection ends in userspace).
    pub fn forget(self, flows: &Flows) -> Result<(TcpStream, TcpStream), std::io::Error> {
        flows.remove(&self.client_key)?;
        flows.remove(&self.server_key)?;
        Ok((self.client, self.server))
    }
}

/// Inserts an OBSERVE entry under `key` (replacing whatever was there).
pub fn observe(flows: &Flows, key: &SpliceKey) -> Result<(), SpliceError> {
    let observe = SpliceEntry {
        state: SPLICE_STATE_OBSERVE,
        ..SpliceEntry::default()
    };
    flows.insert(key, &observe)?;
    Ok(())
}

/// (local, peer) of an IPv4 socket.
fn addrs(socket: &TcpStream) -> Result<(SocketAddrV4, SocketAddrV4), SpliceError> {
    let local = socket.local_addr().map_err(SpliceError::Address)?;
    let peer = socket.peer_addr().map_err(SpliceError::Address)?;
    match (local, peer) {
        (SocketAddr::V4(local), SocketAddr::V4(peer)) => Ok((local, peer)),
        (SocketAddr::V6(_), _) => Err(SpliceError::NotIpv4(local)),
        (_, SocketAddr::V6(_)) => Err(SpliceError::NotIpv4(peer)),
    }
}
