//! One open session with a peer, as a state machine without I/O (docs/PEERS.md, "The
//! session").
//!
//! The session is fed what happens — bytes received, timer ticks, our tables' local changes
//! and, when the peer asks for a full resync, their contents — and answers with bytes to send
//! ([`Session::poll_transmit`]), things to do ([`Session::poll_event`]: entries to apply to our
//! tables, acknowledged positions to remember) and counters ([`Session::take_tally`]). It never
//! touches a socket, a clock or a table, so it can be driven by recorded bytes; the peers
//! module's `driver` runs it over TCP.
//!
//! A process's first session with a peer asks it for a full resync, and so does a session whose
//! peer asks first (a peer that asks is new or restarted, and may hold entries we never got);
//! other sessions resume from the positions each side acknowledged. A session learns while
//! teaching the peer if it asks too; both are tracked separately: [`State`] says how far
//! learning and the session itself are, [`Teaching`] how far a lesson we give is.

mod io;
mod rx;
#[cfg(test)]
mod tests;
mod tx;

use std::{
    collections::{BTreeMap, HashMap, HashSet, VecDeque},
    time::{Duration, Instant},
};

pub use self::io::{Change, Event, Learned, Lesson, LocalEntry, Mismatch, NotSynced, Setup, Tally};
use super::message::{
    DecodeError, Decoder, EncodeError, Encoder, Message, TableDefinition, DEFAULT_MAX_LEN,
};

/// Sent when nothing else was sent for this long.
pub const HEARTBEAT_INTERVAL: Duration = Duration::from_secs(3);
/// A peer silent for this long is dead.
pub const DEAD_AFTER: Duration = Duration::from_secs(5);
/// Updates encoded per table before the driver is given bytes to write, so that a large
/// backlog or lesson is written in pieces and never held whole.
pub const PUSH_BATCH: usize = 512;
/// Pushed-but-unacknowledged updates remembered per table; beyond it the oldest are forgotten
/// (they will be acknowledged implicitly by later acks).
const MAX_IN_FLIGHT: usize = 1 << 16;
/// Largest read buffer: a full message of the maximum size plus its header.
const MAX_BUFFERED: usize = DEFAULT_MAX_LEN + 16;

/// Why a session ended, as far as the protocol is concerned (the driver adds I/O failures).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum End {
    #[error("the peer closed the connection")]
    Closed,
    #[error(
        "the peer closed the connection in the middle of a message ({bytes} bytes of it received)"
    )]
    ClosedMidMessage { bytes: usize },
    #[error("no message from the peer for {DEAD_AFTER:?}")]
    Silent,
    #[error("bad message from the peer")]
    Decode(#[from] DecodeError),
    #[error("cannot encode a message")]
    Encode(#[from] EncodeError),
    #[error("the peer reported a protocol error")]
    PeerProtocolError,
    #[error("the peer reported a message over its size limit")]
    PeerSizeLimit,
}

/// How far the session is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum State {
    /// We asked the peer for a full resync and its lesson is not over. Its entries are applied
    /// as they come, live updates flow both ways already.
    Learning,
    /// The peer said its lesson is over (finished or partial) and we confirmed, or we did not
    /// ask for one.
    Synced,
    /// The session ended; every further input is refused with this reason.
    Closed(End),
}

/// How far a lesson we give the peer is. Independent of [`State`]: the peer may ask at any
/// time, typically while it is teaching us.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Teaching {
    Idle,
    /// The peer asked for a full resync; waiting for [`Session::teach`].
    Asked,
    /// Sending the lesson, [`PUSH_BATCH`] entries per [`Session::poll_transmit`]; live pushes
    /// wait until it is over.
    Sending,
}

/// What we push of one of our tables in this session.
#[derive(Debug)]
struct TxTable {
    def: TableDefinition,
    /// Whether its definition went out in this session.
    defined: bool,
    /// Update log position pushed up to.
    pushed_seq: u64,
    /// (wire update id, update log position) of pushes not yet acknowledged, oldest first.
    in_flight: VecDeque<(u32, u64)>,
}

/// A lesson being sent: the tables left, the front one partly sent.
#[derive(Debug, Default)]
struct LessonQueue {
    tables: VecDeque<LessonTable>,
    taught: usize,
}

/// What is left to send of one table's part of a lesson.
#[derive(Debug)]
struct LessonTable {
    table: usize,
    /// The update log position the lesson reflects.
    seq: u64,
    /// Entries not yet sent, with their remaining lifetime in ms.
    entries: VecDeque<(LocalEntry, u64)>,
}

/// One peers session; see the module docs.
#[derive(Debug)]
pub struct Session {
    state: State,
    /// We asked the peer for a full resync in this session.
    asked: bool,
    teaching: Teaching,
    lesson: LessonQueue,
    timed: bool,
    encoder: Encoder,
    decoder: Decoder,
    inbuf: Vec<u8>,
    out: Vec<u8>,
    tx: Vec<TxTable>,
    /// The peer's table ids we apply updates of, mapped to our table's index.
    rx: HashMap<u64, usize>,
    /// The peer's tables already reported as not synced.
    reported: HashSet<u64>,
    /// Unacknowledged received updates: the peer's table id and its last update id. Ordered,
    /// so that the acks go out in the same order every time.
    acks_due: BTreeMap<u64, u32>,
    events: VecDeque<Event>,
    tally: Tally,
    last_sent: Instant,
    last_received: Instant,
}

impl Session {
    /// A session that has just been opened at `now`; its first bytes ask for a full resync when
    /// `setup.ask_resync`.
    pub fn new(setup: Setup, now: Instant) -> Result<Self, End> {
        let ask_resync = setup.ask_resync;
        let tx = setup
            .tables
            .into_iter()
            .enumerate()
            .map(|(index, def)| TxTable {
                def,
                defined: false,
                pushed_seq: setup.resume.get(index).copied().unwrap_or(0),
                in_flight: VecDeque::new(),
            })
            .collect();
        let mut session = Self {
            state: State::Synced,
            asked: false,
            teaching: Teaching::Idle,
            lesson: LessonQueue::default(),
            timed: setup.timed,
            encoder: Encoder::new(),
            decoder: Decoder::new(),
            inbuf: Vec::new(),
            out: Vec::with_capacity(4096),
            tx,
            rx: HashMap::new(),
            reported: HashSet::new(),
            acks_due: BTreeMap::new(),
            events: VecDeque::new(),
            tally: Tally::default(),
            last_sent: now,
            last_received: now,
        };
        if ask_resync {
            session.ask_resync()?;
        }
        Ok(session)
    }

    /// Asks the peer for a full resync (HAProxy answers one at any time); once per session.
    fn ask_resync(&mut self) -> Result<(), End> {
        if !self.asked {
            self.asked = true;
            self.state = State::Learning;
            self.encoder
                .encode(&Message::ResyncRequest, &mut self.out)?;
        }
        Ok(())
    }

    pub fn state(&self) -> &State {
        &self.state
    }

    pub fn teaching(&self) -> Teaching {
        self.teaching
    }

    /// Whether the peer asked for a full resync: answer with [`Session::teach`].
    pub fn wants_lesson(&self) -> bool {
        self.teaching == Teaching::Asked
    }

    /// The update log position of `table` pushed up to: give [`Session::push`] the changes
    /// after it.
    pub fn pushed_seq(&self, table: usize) -> u64 {
        self.tx.get(table).map_or(0, |tx| tx.pushed_seq)
    }

    /// Bytes the peer sent at `now`: applies every complete message and queues the answers
    /// (confirms, then acks). Events of the messages before a bad one are still queued.
    pub fn received(&mut self, bytes: &[u8], now: Instant) -> Result<(), End> {
        self.ensure_open()?;
        self.inbuf.extend_from_slice(bytes);
        self.last_received = now;
        let result = self.handle_received().and_then(|()| self.queue_acks());
        result.map_err(|end| self.close(end))
    }

    /// The peer closed the connection: why, as far as the protocol can tell.
    pub fn closed_by_peer(&mut self) -> End {
        let end = match self.inbuf.len() {
            0 => End::Closed,
            bytes => End::ClosedMidMessage { bytes },
        };
        self.close(end)
    }

    /// The clock at `now`: ends a silent session, or queues a heartbeat after
    /// [`HEARTBEAT_INTERVAL`] without sending.
    pub fn tick(&mut self, now: Instant) -> Result<(), End> {
        self.ensure_open()?;
        if now.saturating_duration_since(self.last_received) > DEAD_AFTER {
            return Err(self.close(End::Silent));
        }
        if now.saturating_duration_since(self.last_sent) >= HEARTBEAT_INTERVAL
            && self.out.is_empty()
        {
            self.encoder
                .encode(&Message::Heartbeat, &mut self.out)
                .map_err(|e| self.close(e.into()))?;
        }
        Ok(())
    }

    /// Local changes of `table` to push live, oldest first, after [`Session::pushed_seq`].
    /// Ignored while a lesson is being sent (they stay in the table's log and come again).
    pub fn push(&mut self, table: usize, changes: &[Change]) -> Result<(), End> {
        self.ensure_open()?;
        if self.teaching == Teaching::Sending {
            return Ok(());
        }
        let result = self.push_changes(table, changes);
        result.map_err(|end| self.close(end))
    }

    /// Answers the peer's resync request with the contents of our tables. The lesson goes
    /// out over the following [`Session::poll_transmit`] calls, then "finished".
    pub fn teach(&mut self, lessons: Vec<Lesson>) {
        if self.teaching != Teaching::Asked {
            return;
        }
        self.lesson = LessonQueue {
            tables: lessons
                .into_iter()
                .map(|lesson| LessonTable {
                    table: lesson.table,
                    seq: lesson.seq,
                    entries: lesson.entries.into(),
                })
                .collect(),
            taught: 0,
        };
        self.teaching = Teaching::Sending;
    }

    /// The next bytes to send at `now`, if any. Call until `None` before feeding more input,
    /// so that a lesson is sent whole before anything else.
    pub fn poll_transmit(&mut self, now: Instant) -> Result<Option<Vec<u8>>, End> {
        self.ensure_open()?;
        if self.teaching == Teaching::Sending {
            self.teach_batch().map_err(|end| self.close(end))?;
        }
        if self.out.is_empty() {
            return Ok(None);
        }
        self.last_sent = now;
        Ok(Some(std::mem::replace(
            &mut self.out,
            Vec::with_capacity(4096),
        )))
    }

    /// The next thing to act on, oldest first.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// The counters since the last call, which are reset.
    pub fn take_tally(&mut self) -> Tally {
        std::mem::take(&mut self.tally)
    }

    fn ensure_open(&self) -> Result<(), End> {
        match &self.state {
            State::Closed(end) => Err(end.clone()),
            State::Learning | State::Synced => Ok(()),
        }
    }

    fn close(&mut self, end: End) -> End {
        self.state = State::Closed(end.clone());
        end
    }
}
