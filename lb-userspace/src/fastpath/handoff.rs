//! Handing one relayed connection to the kernel: the dedicated server leg it needs, observing
//! both legs, and the attempt itself (the protocol is in [`super::splice`]).
//!
//! The relay calls [`Runtime::prepare`] when the policy ([`super::policy`]) says a connection
//! is a candidate, relays over the leg it gets, and calls [`Runtime::try_splice`] at message
//! boundaries. An attempt that finds a leg not quiet costs five `ioctl`s; arming costs a few
//! dozen non-blocking syscalls; the wait for completion is asynchronous. Nothing holds a lock
//! across a syscall or a wait.

use std::{
    io,
    net::{SocketAddr, SocketAddrV4},
    os::fd::AsFd as _,
    sync::{atomic::Ordering::Relaxed, Arc},
    time::{Duration, Instant},
};

use lb_common::{SpliceKey, SPLICE_STATE_CLOSED, SPLICE_STATE_SPLICE};
use tokio::{
    io::AsyncWriteExt as _,
    net::{TcpSocket, TcpStream},
};

use super::{
    interfaces,
    ports::Lease,
    program::FastPathError,
    repair,
    runtime::{lock, Runtime},
    splice::{self, NotSpliced, Observed, Progress, SpliceError},
    translate::{tuple_key, Refusal},
};

/// Before a completed hand-off's sockets are closed with nothing sent after arming: a packet
/// that passed the program just before the client's entry was armed reaches its socket within
/// microseconds, and would show here.
const SETTLE: Duration = Duration::from_millis(1);

/// How long a hand-off after a pause waits for the program to see both peers' timestamps.
const TSVAL_WAIT: Duration = Duration::from_millis(10);

/// The first look at an armed hand-off whose client has an answer to acknowledge; then the
/// looks are further apart, up to [`COMPLETE_MAX_PAUSE`].
const COMPLETE_FIRST: Duration = Duration::from_millis(1);
const COMPLETE_MAX_PAUSE: Duration = Duration::from_millis(50);

/// Ports tried when another socket holds the one the allocator gave.
const BIND_TRIES: usize = 8;

/// A connection being relayed with its OBSERVE entries in place.
pub struct Handoff {
    observed: Observed,
    client_ifindex: u32,
    server_ifindex: u32,
    /// The server leg's source port: held by the flow once spliced.
    lease: Lease,
}

impl Handoff {
    fn keys(&self) -> [SpliceKey; 2] {
        let (a, b) = self.observed.keys();
        [a, b]
    }
}

/// What became of a hand-off attempt. The bytes the caller gave to write have been written
/// when the hand-off was armed ([`Attempt::Spliced`], [`Attempt::Again`],
/// [`Attempt::Abandoned`]), not otherwise.
pub enum Attempt {
    /// Both sockets are closed (silently): the kernel carries the connection.
    Spliced,
    /// The legs were not quiet (a request was already there): the attempt cost a few `ioctl`s;
    /// the next message boundary may do. Nothing was written.
    Raced(Handoff),
    /// The attempt was armed, then given up: try again later.
    Again(Handoff),
    /// Never again on this connection (its legs cannot be translated); the entries are gone.
    /// Nothing was written.
    Never,
    /// Never again on this connection: the attempt was armed and the bytes were written, then
    /// completing it failed; the entries are gone. The caller must not write the bytes again.
    Abandoned,
    /// Writing to the client failed.
    Failed(io::Error),
}

/// A server connection from a reserved source port. Its port goes back to the allocator when
/// this is dropped (a no-op once the connection was spliced: the flow holds it then).
pub struct Reserved {
    runtime: Arc<Runtime>,
    lease: Lease,
}

impl Drop for Reserved {
    fn drop(&mut self) {
        // The socket was made to close with an RST: no TIME_WAIT holds the port.
        lock(&self.runtime.ports).release(self.lease, Duration::ZERO, Instant::now());
    }
}

/// A leg that can be spliced, ready: the server connection, its port, and the observation.
pub struct Prepared {
    pub stream: TcpStream,
    pub reserved: Reserved,
    pub handoff: Handoff,
}

/// Why a candidate could not be prepared; the connection goes on as it was.
#[derive(Debug, thiserror::Error)]
pub enum Unprepared {
    #[error("not an IPv4 connection")]
    NotIpv4,
    #[error("an interface the fast path may not use")]
    OtherInterface,
    #[error("every source port toward {0} is taken")]
    NoPort(SocketAddrV4),
    #[error("socket")]
    Io(#[source] io::Error),
    #[error(transparent)]
    Attach(#[from] FastPathError),
    #[error(transparent)]
    Splice(#[from] SpliceError),
}

impl Runtime {
    /// Opens a connection to `server` from a reserved source port and puts it and `client`
    /// under observation; the client is made to acknowledge at once (a window probe), since its
    /// last packet came before its entry was there. `allowed`: the interfaces the program may
    /// use (any when empty).
    pub async fn prepare(
        self: &Arc<Self>,
        client: &TcpStream,
        server: SocketAddr,
        allowed: &[String],
        timeout: Duration,
    ) -> Result<Prepared, Unprepared> {
        let prepared = self.try_prepare(client, server, allowed, timeout).await;
        match &prepared {
            Ok(_) => self.stats.candidates.fetch_add(1, Relaxed),
            Err(Unprepared::OtherInterface | Unprepared::NotIpv4) => {
                self.stats.other_interface.fetch_add(1, Relaxed)
            }
            Err(Unprepared::NoPort(_)) => self.stats.no_port.fetch_add(1, Relaxed),
            Err(_) => self.stats.errors.fetch_add(1, Relaxed),
        };
        prepared
    }

    async fn try_prepare(
        self: &Arc<Self>,
        client: &TcpStream,
        server: SocketAddr,
        allowed: &[String],
        timeout: Duration,
    ) -> Result<Prepared, Unprepared> {
        let (SocketAddr::V4(server), SocketAddr::V4(front), SocketAddr::V4(peer)) = (
            server,
            client.local_addr().map_err(Unprepared::Io)?,
            client.peer_addr().map_err(Unprepared::Io)?,
        ) else {
            return Err(Unprepared::NotIpv4);
        };
        let source = self.source_for(server).map_err(Unprepared::Io)?;
        let ifindexes = (
            self.usable_interface(*front.ip(), allowed)?,
            self.usable_interface(source, allowed)?,
        );
        // The client's entry first, then the window probe: the client's acknowledgement (and
        // its timestamp) arrives while the server connection is made.
        let client_key = tuple_key(peer, front);
        splice::observe(&self.flows, &client_key)?;
        let prepared = self
            .probe_and_connect(client, (source, server), ifindexes, timeout)
            .await;
        if prepared.is_err() {
            let _ = self.flows.remove(&client_key);
        }
        prepared
    }

    /// The rest of [`Runtime::prepare`], once the client's entry is in place.
    async fn probe_and_connect(
        self: &Arc<Self>,
        client: &TcpStream,
        (source, server): (std::net::Ipv4Addr, SocketAddrV4),
        (client_ifindex, server_ifindex): (u32, u32),
        timeout: Duration,
    ) -> Result<Prepared, Unprepared> {
        repair::probe(client).map_err(|e| Unprepared::Splice(e.into()))?;
        let (stream, reserved) = self.connect(source, server, timeout).await?;
        let dup = |socket: &TcpStream| -> Result<std::net::TcpStream, Unprepared> {
            let fd = socket
                .as_fd()
                .try_clone_to_owned()
                .map_err(Unprepared::Io)?;
            Ok(std::net::TcpStream::from(fd))
        };
        let observed = dup(client)
            .and_then(|client| Ok(Observed::new(client, dup(&stream)?)?))
            .inspect_err(|_| {
                let _ = self
                    .flows
                    .remove(&tuple_key(server, reserved.lease.port.local()));
            })?;
        let handoff = Handoff {
            observed,
            client_ifindex,
            server_ifindex,
            lease: reserved.lease,
        };
        self.own(handoff.keys());
        Ok(Prepared {
            stream,
            reserved,
            handoff,
        })
    }

    /// The index of the interface that owns `local`, attaching the program to it, if the fast
    /// path may use it (not loopback: no neighbour to redirect to).
    fn usable_interface(
        &self,
        local: std::net::Ipv4Addr,
        allowed: &[String],
    ) -> Result<u32, Unprepared> {
        let interface = interfaces::owning(local)
            .map_err(Unprepared::Io)?
            .ok_or(Unprepared::OtherInterface)?;
        let outside = !allowed.is_empty() && !allowed.contains(&interface.name);
        if outside || local.is_loopback() {
            return Err(Unprepared::OtherInterface);
        }
        self.attach_for_candidate(&interface)?;
        Ok(interface.index)
    }

    /// Connects to `server` from a reserved port, its OBSERVE entry in place before the SYN so
    /// that the program records the server's timestamp from its SYN-ACK.
    async fn connect(
        self: &Arc<Self>,
        source: std::net::Ipv4Addr,
        server: SocketAddrV4,
        timeout: Duration,
    ) -> Result<(TcpStream, Reserved), Unprepared> {
        for _ in 0..BIND_TRIES {
            let lease = lock(&self.ports)
                .take(source, server, Instant::now())
                .ok_or(Unprepared::NoPort(server))?;
            let socket = TcpSocket::new_v4().map_err(Unprepared::Io)?;
            socket.set_reuseaddr(true).map_err(Unprepared::Io)?;
            if let Err(error) = socket.bind(lease.port.local().into()) {
                // Another socket took it (an explicit bind of some other program): let it
                // rest a minute before trying it again.
                let rest = Duration::from_secs(60);
                lock(&self.ports).release(lease, rest, Instant::now());
                if error.kind() == io::ErrorKind::AddrInUse {
                    continue;
                }
                return Err(Unprepared::Io(error));
            }
            let reserved = Reserved {
                runtime: Arc::clone(self),
                lease,
            };
            socket.set_nodelay(true).map_err(Unprepared::Io)?;
            // Any close that is not a splice is an RST: no TIME_WAIT keeps the port.
            repair::reset_on_close(&socket).map_err(|e| Unprepared::Io(e.source))?;
            let server_key = tuple_key(server, lease.port.local());
            self.retire_stale(&server_key)?;
            splice::observe(&self.flows, &server_key)?;
            let connected = tokio::time::timeout(timeout, socket.connect(server.into())).await;
            return match connected {
                Ok(Ok(stream)) => Ok((stream, reserved)),
                Ok(Err(e)) => {
                    let _ = self.flows.remove(&server_key);
                    Err(Unprepared::Io(e))
                }
                Err(_) => {
                    let _ = self.flows.remove(&server_key);
                    Err(Unprepared::Io(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "connect timeout",
                    )))
                }
            };
        }
        Err(Unprepared::NoPort(server))
    }

    /// A reused port may still have its previous flow's entries (kept for late retransmissions
    /// after FIN): they go, both directions, before the new connection's SYN.
    fn retire_stale(&self, server_key: &SpliceKey) -> Result<(), SpliceError> {
        if let Some(old) = self.flows.get(server_key)? {
            if matches!(old.state, SPLICE_STATE_SPLICE | SPLICE_STATE_CLOSED) {
                self.flows.remove(&super::collector::partner(&old))?;
            }
            self.flows.remove(server_key)?;
        }
        Ok(())
    }

    /// Waits (asynchronously, at most [`TSVAL_WAIT`]) until the program has seen a timestamp
    /// from both peers: right after [`Runtime::prepare`] during a pause, the client's answer to
    /// the window probe may still be on its way. `false` if it has not.
    pub async fn wait_tsvals(&self, handoff: &Handoff) -> bool {
        let deadline = Instant::now() + TSVAL_WAIT;
        loop {
            let seen = self.tsvals_seen(handoff);
            if seen || Instant::now() >= deadline {
                return seen;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }

    /// Whether the program has seen a timestamp from both peers (two map lookups).
    fn tsvals_seen(&self, handoff: &Handoff) -> bool {
        let (client, server) = handoff.observed.keys();
        [client, server]
            .iter()
            .all(|key| matches!(self.flows.get(key), Ok(Some(entry)) if entry.last_tsval != 0))
    }

    /// Tries to hand the connection to the kernel at a message boundary with nothing buffered
    /// in userspace: arms it, writes `pending` to the client (an answer held back for this, or
    /// nothing; when the hand-off could not be armed, the caller writes it), and waits
    /// (asynchronously, at most `limit`) until the client has everything, then closes both
    /// sockets silently. Arming is a few dozen non-blocking syscalls; nothing
    /// here blocks the worker or holds a lock.
    pub async fn try_splice(
        self: &Arc<Self>,
        handoff: Handoff,
        client: &mut TcpStream,
        pending: &[u8],
        limit: Duration,
    ) -> Attempt {
        self.stats.attempts.fetch_add(1, Relaxed);
        let keys = handoff.keys();
        if !self.tsvals_seen(&handoff) {
            // The client's answer to the window probe (or the server's to the SYN) may be
            // arriving this instant: let the worker serve others once, then look again.
            tokio::task::yield_now().await;
        }
        let length = u32::try_from(pending.len()).unwrap_or(u32::MAX);
        let armed = handoff.observed.arm(
            &self.flows,
            handoff.client_ifindex,
            handoff.server_ifindex,
            length,
        );
        let why = match armed {
            Ok(Ok(_)) => None,
            Ok(Err(why)) => Some(Some(why)),
            Err(error) => {
                tracing::warn!(error = %crate::error_chain(&error), "fast path: arming failed");
                self.stats.errors.fetch_add(1, Relaxed);
                Some(None)
            }
        };
        if let Some(why) = why {
            return match why {
                Some(why) => self.kept(handoff, &why),
                None => {
                    self.remove_entries(keys);
                    Attempt::Never
                }
            };
        }
        if let Err(error) = client.write_all(pending).await {
            // The client is gone: the entries go too (they are owned, so the collector would
            // never remove them).
            let _ = handoff.observed.disarm(&self.flows);
            self.remove_entries(keys);
            return Attempt::Failed(error);
        }
        match self.complete(&handoff, !pending.is_empty(), limit).await {
            Ok(Progress::Complete) => {}
            Ok(progress) => {
                if progress == Progress::Broken {
                    self.stats.kept_moved.fetch_add(1, Relaxed);
                } else {
                    self.stats.kept_unacked.fetch_add(1, Relaxed);
                }
                if let Err(error) = handoff.observed.disarm(&self.flows) {
                    tracing::warn!(error = %crate::error_chain(&error), "fast path: disarming");
                }
                return Attempt::Again(handoff);
            }
            Err(error) => {
                tracing::warn!(error = %crate::error_chain(&error), "fast path: hand-off failed");
                self.stats.errors.fetch_add(1, Relaxed);
                let _ = handoff.observed.disarm(&self.flows);
                self.remove_entries(keys);
                return Attempt::Abandoned;
            }
        }
        let Handoff {
            observed, lease, ..
        } = handoff;
        if let Err(error) = observed.close_silently() {
            // The sockets close anyway (with the leg); the peers may see it, the flow is the
            // program's now.
            tracing::warn!(error = %crate::error_chain(&error), "fast path: closing silently");
        }
        self.disown(keys);
        lock(&self.ports).spliced(lease, Instant::now());
        self.stats.spliced.fetch_add(1, Relaxed);
        Attempt::Spliced
    }

    /// Waits until the armed hand-off completes, breaks, or `limit` passes (then `Waiting`).
    /// `sent`: the proxy wrote to the client after arming (its acknowledgement is awaited).
    async fn complete(
        &self,
        handoff: &Handoff,
        sent: bool,
        limit: Duration,
    ) -> Result<Progress, SpliceError> {
        let deadline = Instant::now() + limit;
        // The first look: after a round trip when something was sent, else after a settle.
        let mut pause = if sent { COMPLETE_FIRST } else { SETTLE };
        loop {
            tokio::time::sleep(pause).await;
            let progress = handoff.observed.progress(&self.flows, sent)?;
            if progress != Progress::Waiting || Instant::now() >= deadline {
                return Ok(progress);
            }
            pause = (pause * 2).min(COMPLETE_MAX_PAUSE);
        }
    }

    /// Counts why a connection was not armed, and says what the relay does next.
    fn kept(&self, handoff: Handoff, why: &NotSpliced) -> Attempt {
        match why {
            NotSpliced::Unread { .. }
            | NotSpliced::ServerUnacked { .. }
            | NotSpliced::ClientUnsent { .. }
            | NotSpliced::Refused(Refusal::Queued { .. } | Refusal::NotEstablished { .. }) => {
                tracing::trace!(reason = %why, "fast path: not yet");
                self.stats.kept_unread.fetch_add(1, Relaxed);
                Attempt::Raced(handoff)
            }
            NotSpliced::Refused(Refusal::NoTsval { .. }) => {
                tracing::trace!(reason = %why, "fast path: not yet");
                self.stats.kept_no_tsval.fetch_add(1, Relaxed);
                Attempt::Raced(handoff)
            }
            NotSpliced::Refused(refusal) => {
                tracing::info!(reason = %refusal, "fast path: connection stays in userspace");
                self.stats.refused_options.fetch_add(1, Relaxed);
                self.forget(handoff);
                Attempt::Never
            }
        }
    }

    /// Removes the entries of a connection that ends (or stays) in userspace.
    pub fn forget(&self, handoff: Handoff) {
        self.remove_entries(handoff.keys());
    }

    fn remove_entries(&self, keys: [SpliceKey; 2]) {
        for key in &keys {
            if let Err(error) = self.flows.remove(key) {
                tracing::warn!(%error, "fast path: removing entries");
            }
        }
        self.disown(keys);
    }
}
