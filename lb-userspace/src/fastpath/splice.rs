//! The hand-off protocol of SPLICE.md: OBSERVE, quiescence, HOLD, double snapshot, commit or
//! abort, silent close.
//!
//! Blocking (it polls socket queues for at most a few milliseconds); an async caller runs it in
//! `spawn_blocking`.

use std::{
    net::{SocketAddr, SocketAddrV4, TcpStream},
    os::fd::AsFd,
    thread,
    time::{Duration, Instant},
};

use aya::maps::MapError;
use lb_common::{SpliceEntry, SpliceKey, SPLICE_STATE_HOLD, SPLICE_STATE_OBSERVE};

use super::{
    flows::Flows,
    repair::{self, RepairError, Snapshot},
    translate::{self, tuple_key, Leg, Refusal, Translation},
};

/// Time between the two snapshots, for packets that passed the program just before the HOLD
/// to reach the sockets (the second snapshot then differs and the splice is aborted). Past the
/// program, a packet reaches its socket within the same softirq run, microseconds later. The
/// wait is spun, not slept: a request arriving while the connection is held is dropped and
/// costs its client a retransmission (200 ms or more), so the hold is kept as short as it can.
const SETTLE: Duration = Duration::from_micros(30);

/// A connection the proxy relays, with its OBSERVE entries in place.
pub struct Observed {
    pub client: TcpStream,
    pub server: TcpStream,
    client_key: SpliceKey,
    server_key: SpliceKey,
    client_addrs: (SocketAddrV4, SocketAddrV4),
    server_addrs: (SocketAddrV4, SocketAddrV4),
}

/// Why a splice attempt did not happen; the connection stays in userspace, OBSERVE entries in
/// place, both sockets out of repair mode.
#[derive(Debug, thiserror::Error)]
pub enum NotSpliced {
    #[error("not quiescent: unread bytes (client leg {client_inq}, server leg {server_inq})")]
    Unread { client_inq: u32, server_inq: u32 },
    #[error("peers did not acknowledge everything within {0:?}")]
    Unacked(Duration),
    #[error("a leg moved between the two snapshots")]
    Moved,
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
    Map(#[from] MapError),
}

/// The outcome of [`Observed::try_splice`].
pub enum Outcome {
    /// Both entries are in SPLICE state and both sockets were closed silently.
    Spliced(Translation),
    /// Still proxied.
    Kept(Observed, NotSpliced),
}

impl Observed {
    /// Inserts OBSERVE entries for both legs, so the program records each peer's TSval. Call it
    /// right after connecting to the server, before relaying anything.
    pub fn start(
        flows: &mut Flows,
        client: TcpStream,
        server: TcpStream,
    ) -> Result<Observed, SpliceError> {
        let client_addrs = addrs(&client)?;
        let server_addrs = addrs(&server)?;
        let client_key = tuple_key(client_addrs.1, client_addrs.0);
        let server_key = tuple_key(server_addrs.1, server_addrs.0);
        let observe = SpliceEntry {
            state: SPLICE_STATE_OBSERVE,
            ..SpliceEntry::default()
        };
        flows.insert(&client_key, &observe)?;
        flows.insert(&server_key, &observe)?;
        Ok(Observed {
            client,
            server,
            client_key,
            server_key,
            client_addrs,
            server_addrs,
        })
    }

    /// The keys of the two entries: (client -> proxy, server -> proxy).
    pub fn keys(&self) -> (SpliceKey, SpliceKey) {
        (self.client_key, self.server_key)
    }

    /// Hands the connection to the kernel if it is quiescent and both legs are compatible.
    ///
    /// Call it at a message boundary with nothing buffered in userspace. `client_ifindex` and
    /// `server_ifindex` are the interfaces toward the client and the server.
    pub fn try_splice(
        self,
        flows: &mut Flows,
        client_ifindex: u32,
        server_ifindex: u32,
        ack_timeout: Duration,
    ) -> Result<Outcome, SpliceError> {
        // 1. Quiescence: nothing unread, everything acknowledged.
        let deadline = Instant::now() + ack_timeout;
        loop {
            let (client_inq, client_outq) = repair::queues(self.client.as_fd())?;
            let (server_inq, server_outq) = repair::queues(self.server.as_fd())?;
            if client_inq != 0 || server_inq != 0 {
                let why = NotSpliced::Unread {
                    client_inq,
                    server_inq,
                };
                return Ok(Outcome::Kept(self, why));
            }
            if client_outq == 0 && server_outq == 0 {
                break;
            }
            if Instant::now() >= deadline {
                return Ok(Outcome::Kept(self, NotSpliced::Unacked(ack_timeout)));
            }
            thread::sleep(Duration::from_micros(200));
        }
        // 2. Freeze: the program drops data, FIN and RST of both flows; the peers retransmit.
        // The entries are read first, so the hold starts with two writes.
        let held = |key| -> Result<SpliceEntry, SpliceError> {
            let entry = flows.get(key)?.unwrap_or_default();
            Ok(SpliceEntry {
                state: SPLICE_STATE_HOLD,
                ..entry
            })
        };
        let (server_held, client_held) = (held(&self.server_key)?, held(&self.client_key)?);
        flows.insert(&self.server_key, &server_held)?;
        flows.insert(&self.client_key, &client_held)?;
        match self.snapshot_and_commit(flows, client_ifindex, server_ifindex) {
            Ok(Ok(translation)) => {
                // 4. Close both sockets still in repair mode: nothing is sent.
                drop(self);
                Ok(Outcome::Spliced(translation))
            }
            Ok(Err(why)) => {
                self.abort(flows)?;
                Ok(Outcome::Kept(self, why))
            }
            Err(e) => {
                // Best effort: leave the connection usable in userspace.
                let _ = self.abort(flows);
                Err(e)
            }
        }
    }

    /// 3. Snapshot twice in repair mode; commit both SPLICE entries if nothing moved.
    fn snapshot_and_commit(
        &self,
        flows: &mut Flows,
        client_ifindex: u32,
        server_ifindex: u32,
    ) -> Result<Result<Translation, NotSpliced>, SpliceError> {
        repair::set_repair(&self.client, true)?;
        repair::set_repair(&self.server, true)?;
        let first = self.snapshots()?;
        let settled = Instant::now() + SETTLE;
        while Instant::now() < settled {
            std::hint::spin_loop();
        }
        let second = self.snapshots()?;
        if !same_position(&first.0, &second.0) || !same_position(&first.1, &second.1) {
            return Ok(Err(NotSpliced::Moved));
        }
        let (a, b) = second;
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
        // The server's direction first: once the client's entry is live, the server's answers
        // must already be translated.
        flows.insert(&translation.server_key, &translation.server_entry)?;
        flows.insert(&translation.client_key, &translation.client_entry)?;
        Ok(Ok(translation))
    }

    fn snapshots(&self) -> Result<(Snapshot, Snapshot), RepairError> {
        Ok((
            repair::snapshot(&self.client)?,
            repair::snapshot(&self.server)?,
        ))
    }

    fn abort(&self, flows: &mut Flows) -> Result<(), SpliceError> {
        repair::set_repair(&self.client, false)?;
        repair::set_repair(&self.server, false)?;
        flows.set_state(&self.client_key, SPLICE_STATE_OBSERVE)?;
        flows.set_state(&self.server_key, SPLICE_STATE_OBSERVE)?;
        Ok(())
    }

    /// Removes both entries (the connection ends in userspace).
    pub fn forget(self, flows: &mut Flows) -> Result<(TcpStream, TcpStream), MapError> {
        flows.remove(&self.client_key)?;
        flows.remove(&self.server_key)?;
        Ok((self.client, self.server))
    }
}

/// Whether nothing moved between two snapshots of one socket (its timestamp clock runs on).
fn same_position(first: &Snapshot, second: &Snapshot) -> bool {
    let position = |s: &Snapshot| (s.snd_nxt, s.rcv_nxt, s.inq, s.outq, s.state);
    position(first) == position(second)
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
