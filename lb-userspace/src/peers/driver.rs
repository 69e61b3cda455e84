//! Runs one [`Session`] over its connection (TCP, or TLS over TCP): moves bytes between the socket and the
//! session, gives it the time, our tables' changes and, when asked, their contents, and
//! carries out what it decides (apply a learned entry, remember an acknowledged position,
//! count, log). The protocol itself is the session's (docs/PEERS.md, "The session").

use std::{
    collections::HashSet,
    pin::Pin,
    sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed},
    task::Poll,
    time::{Duration, Instant},
};

use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf},
    sync::watch,
    time::timeout,
};

use super::{
    connect::Opened,
    session::{self, Event, NotSynced, Session, Setup, Tally, PUSH_BATCH},
    stats::PeerStats,
    tables::SyncedTable,
    tls::PeerStream,
};
use crate::table::{now_ms, RemoteOutcome};

/// A peer that does not take our bytes within this is stuck.
const WRITE_TIMEOUT: Duration = Duration::from_secs(5);
/// How often the session is given the time, for its heartbeat and silence timers.
const TICK: Duration = Duration::from_millis(500);
/// Bytes read from the socket at once.
const READ_CHUNK: usize = 16 * 1024;
/// Local changes are pushed at most this often: changes that come sooner wait for the rest of
/// it and go out together. At thousands of new sessions a second, a write per session per peer
/// costs more than the sessions (each write also costs the receiving peer a wake-up and an
/// ack); at low rates a change still goes out at once.
const PUSH_INTERVAL: Duration = Duration::from_millis(1);

/// Why a session ended.
#[derive(Debug, thiserror::Error)]
pub enum SessionEnd {
    #[error(transparent)]
    Protocol(#[from] session::End),
    #[error("the peer did not take our data for {WRITE_TIMEOUT:?}")]
    WriteStuck,
    #[error("connection error")]
    Io(#[from] std::io::Error),
}

/// Per table: the update log position a peer acknowledged, where its next session resumes.
/// Outlives sessions.
pub struct Resume {
    acked: Vec<AtomicU64>,
    /// A full resync from the peer was learned by this process: later sessions resume.
    learned: AtomicBool,
}

impl Resume {
    pub fn new(tables: usize) -> Self {
        Self {
            acked: (0..tables).map(|_| AtomicU64::new(0)).collect(),
            learned: AtomicBool::new(false),
        }
    }

    /// Whether this process learned a full resync from the peer (a finished one).
    pub fn learned(&self) -> bool {
        self.learned.load(Relaxed)
    }

    pub fn get(&self, table: usize) -> u64 {
        self.acked.get(table).map_or(0, |a| a.load(Relaxed))
    }

    /// Moves `table`'s position forward to `seq` (never back).
    pub fn advance(&self, table: usize, seq: u64) {
        if let Some(acked) = self.acked.get(table) {
            acked.fetch_max(seq, Relaxed);
        }
    }
}

/// The peer a session is with: what outlives the session.
#[derive(Clone, Copy)]
pub struct Peer<'a> {
    pub name: &'a str,
    pub stats: &'a PeerStats,
    pub resume: &'a Resume,
}

/// Runs a session until it ends, returning why.
pub async fn run(
    opened: Opened,
    tables: &[SyncedTable],
    peer: Peer<'_>,
    mut changes: watch::Receiver<u64>,
) -> SessionEnd {
    let setup = Setup {
        tables: tables.iter().map(SyncedTable::definition).collect(),
        timed: opened.version.has_timed_updates(),
        resume: (0..tables.len()).map(|i| peer.resume.get(i)).collect(),
        ask_resync: !peer.resume.learned(),
    };
    let session = match Session::new(setup, Instant::now()) {
        Ok(session) => session,
        Err(end) => return end.into(),
    };
    let mut driver = Driver {
        stream: opened.stream,
        read_buf: vec![0u8; READ_CHUNK],
        session,
        tables,
        peer,
        unknown_reported: HashSet::new(),
    };
    match driver.serve(&opened.leftover, &mut changes).await {
        Ok(never) => match never {},
        Err(end) => end,
    }
}

/// What [`Driver::write_or_read`] got done.
enum Progress {
    Wrote(usize),
    Flushed,
    Read(usize),
}

struct Driver<'a> {
    stream: PeerStream,
    /// What is read while a flush waits for the peer to take our bytes.
    read_buf: Vec<u8>,
    session: Session,
    tables: &'a [SyncedTable],
    peer: Peer<'a>,
    /// `backend/server` names already warned about in this session.
    unknown_reported: HashSet<String>,
}

impl Driver<'_> {
    async fn serve(
        &mut self,
        leftover: &[u8],
        changes: &mut watch::Receiver<u64>,
    ) -> Result<std::convert::Infallible, SessionEnd> {
        if !leftover.is_empty() {
            self.received(leftover)?;
        }
        self.teach_if_asked().await?;
        let mut chunk = vec![0u8; READ_CHUNK];
        let mut tick = tokio::time::interval(TICK);
        let mut last_push: Option<Instant> = None;
        loop {
            // A resync request may have been read while a flush waited.
            self.teach_if_asked().await?;
            changes.borrow_and_update();
            if self.push_changes().await? {
                last_push = Some(Instant::now());
            }
            self.flush().await?;
            tokio::select! {
                read = self.stream.read(&mut chunk) => {
                    let n = read?;
                    let Some(bytes) = chunk.get(..n).filter(|bytes| !bytes.is_empty()) else {
                        return Err(self.session.closed_by_peer().into());
                    };
                    self.peer.stats.last_received_ms.store(now_ms(), Relaxed);
                    self.received(bytes)?;
                    self.teach_if_asked().await?;
                }
                _ = tick.tick() => {
                    let ticked = self.session.tick(Instant::now());
                    self.absorb();
                    ticked?;
                }
                _ = changes.changed() => {
                    if let Some(due) = last_push.map(|at| at + PUSH_INTERVAL) {
                        tokio::time::sleep_until(due.into()).await;
                    }
                }
            }
        }
    }

    /// Feeds received bytes; what the messages before a bad one did is still carried out.
    fn received(&mut self, bytes: &[u8]) -> Result<(), SessionEnd> {
        let result = self.session.received(bytes, Instant::now());
        self.absorb();
        Ok(result?)
    }

    /// Gives the session each table's changes since what it pushed, in batches. Returns
    /// whether there were any.
    async fn push_changes(&mut self) -> Result<bool, SessionEnd> {
        let mut pushed = false;
        for (index, table) in self.tables.iter().enumerate() {
            loop {
                let from = self.session.pushed_seq(index);
                let changes = table.changes_after(from, PUSH_BATCH);
                if changes.is_empty() {
                    break;
                }
                self.session.push(index, &changes)?;
                pushed = true;
                self.flush().await?;
                if changes.len() < PUSH_BATCH || self.session.pushed_seq(index) == from {
                    break;
                }
            }
        }
        Ok(pushed)
    }

    /// Answers a resync request with every table's live entries; the lesson is written by
    /// the flush, batch by batch.
    async fn teach_if_asked(&mut self) -> Result<(), SessionEnd> {
        if !self.session.wants_lesson() {
            return Ok(());
        }
        let now = now_ms();
        let lessons = self
            .tables
            .iter()
            .enumerate()
            .map(|(index, table)| table.lesson(index, now))
            .collect();
        self.session.teach(lessons);
        self.flush().await
    }

    /// Writes everything the session has to send, reading what the peer sends meanwhile.
    ///
    /// Reading while writing matters when both sides send much at once, as after a partition
    /// heals: each side's full resync is megabytes, and two peers that only wrote would fill
    /// both sockets' buffers and wait on each other until the write timeout ended the session,
    /// every time.
    async fn flush(&mut self) -> Result<(), SessionEnd> {
        while let Some(bytes) = self.session.poll_transmit(Instant::now())? {
            self.absorb();
            let mut written = 0;
            // Flushed too: over TLS, bytes may otherwise wait in rustls for the next write.
            let mut flushed = false;
            while !flushed {
                let progress = timeout(WRITE_TIMEOUT, self.write_or_read(&bytes[written..]))
                    .await
                    .map_err(|_| SessionEnd::WriteStuck)??;
                match progress {
                    Progress::Wrote(0) => {
                        let zero = std::io::Error::from(std::io::ErrorKind::WriteZero);
                        return Err(zero.into());
                    }
                    Progress::Wrote(n) => written += n,
                    Progress::Flushed => flushed = true,
                    Progress::Read(0) => return Err(self.session.closed_by_peer().into()),
                    Progress::Read(n) => {
                        self.peer.stats.last_received_ms.store(now_ms(), Relaxed);
                        let read = std::mem::take(&mut self.read_buf);
                        let result = self.received(read.get(..n).unwrap_or_default());
                        self.read_buf = read;
                        result?;
                    }
                }
            }
        }
        self.absorb();
        Ok(())
    }

    /// Writes some of `pending` (or, with nothing pending, flushes the stream) or, while the
    /// peer does not take more, reads what it sent: whichever can go on first.
    async fn write_or_read(&mut self, pending: &[u8]) -> std::io::Result<Progress> {
        std::future::poll_fn(|cx| {
            let stream = Pin::new(&mut self.stream);
            let wrote = if pending.is_empty() {
                stream.poll_flush(cx).map_ok(|()| Progress::Flushed)
            } else {
                stream.poll_write(cx, pending).map_ok(Progress::Wrote)
            };
            if wrote.is_ready() {
                return wrote;
            }
            let mut buf = ReadBuf::new(&mut self.read_buf);
            match Pin::new(&mut self.stream).poll_read(cx, &mut buf) {
                Poll::Ready(Ok(())) => Poll::Ready(Ok(Progress::Read(buf.filled().len()))),
                Poll::Ready(Err(error)) => Poll::Ready(Err(error)),
                Poll::Pending => Poll::Pending,
            }
        })
        .await
    }

    /// Carries out the session's events and adds its counters to the peer's.
    fn absorb(&mut self) {
        while let Some(event) = self.session.poll_event() {
            self.on_event(event);
        }
        let Tally {
            updates_sent,
            updates_received,
            updates_acked,
            keys_too_long,
        } = self.session.take_tally();
        let stats = self.peer.stats;
        for (counter, n) in [
            (&stats.updates_sent, updates_sent),
            (&stats.updates_received, updates_received),
            (&stats.updates_acked, updates_acked),
            (&stats.keys_too_long, keys_too_long),
        ] {
            if n > 0 {
                PeerStats::add(counter, n);
            }
        }
    }

    fn on_event(&mut self, event: Event) {
        let peer = self.peer.name;
        let stats = self.peer.stats;
        match event {
            Event::Learned(learned) => {
                let Some(table) = self.tables.get(learned.table) else {
                    return;
                };
                let applied = table.apply(&learned, now_ms());
                if !applied.known_server {
                    self.report_unknown(learned.table, learned.server.as_str());
                }
                if matches!(
                    applied.outcome,
                    RemoteOutcome::KeptOurs | RemoteOutcome::Replaced
                ) {
                    PeerStats::add(&stats.conflicts, 1);
                }
            }
            Event::Nameless { table, server_id } => {
                // Without a name the numeric id would have to be trusted to mean the same
                // server here, which is how HAProxy ends up routing to wrong servers.
                self.report_unknown(table, &format!("id {}", server_id.unwrap_or(0)));
            }
            Event::Acked { table, seq } => self.peer.resume.advance(table, seq),
            Event::LessonLearned { partial } => {
                PeerStats::add(&stats.resyncs_learned, 1);
                if !partial {
                    self.peer.resume.learned.store(true, Relaxed);
                }
                tracing::info!(peer = %peer, partial, "full resync from peer done");
            }
            Event::LessonTaught { entries } => {
                PeerStats::add(&stats.resyncs_taught, 1);
                tracing::info!(peer = %peer, entries, "taught the peer a full resync");
            }
            Event::NotSynced {
                name,
                why: NotSynced::NoSuchTable,
            } => {
                tracing::debug!(peer = %peer, table = %name, "peer shares a table we have no backend for");
            }
            Event::NotSynced {
                name,
                why: NotSynced::Mismatch(mismatch),
            } => {
                tracing::warn!(peer = %peer, table = %name, "not syncing this table with the peer: {mismatch}");
            }
        }
    }

    /// Counts a received entry naming a server we don't have, and warns once per server and
    /// session. The entry is kept when it has a name: a request for it here is redispatched
    /// as for a server that is down.
    fn report_unknown(&mut self, table: usize, server: &str) {
        PeerStats::add(&self.peer.stats.unknown_servers, 1);
        let Some(backend) = self.tables.get(table).map(|t| &t.backend.name) else {
            return;
        };
        if self.unknown_reported.insert(format!("{backend}/{server}")) {
            tracing::warn!(
                peer = %self.peer.name,
                backend = %backend,
                server,
                "peer sent a session on a server this node does not have: kept, but requests for it here go to a live server"
            );
        }
    }
}
