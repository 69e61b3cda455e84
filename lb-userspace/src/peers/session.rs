//! One open session with a peer: ask it for a full resync, teach it when it asks, push our
//! local changes as they happen, apply and acknowledge its updates, and keep the session alive
//! with heartbeats. Runs until the connection ends or the peer misbehaves.

use std::{
    collections::{HashMap, HashSet, VecDeque},
    sync::{atomic::Ordering::Relaxed, Arc},
    time::Duration,
};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
    sync::watch,
    time::{timeout, Instant},
};

use super::{
    connect::Opened,
    link::PeerLink,
    message::{DecodeError, Decoder, EncodeError, Encoder, Message, ServerKey, Update},
    stats::PeerStats,
    tables::SyncedTable,
};
use crate::table::{now_ms, RemoteOutcome};

/// Sent when nothing else was sent for this long.
const HEARTBEAT_INTERVAL: Duration = Duration::from_secs(3);
/// A peer silent for this long is dead.
const DEAD_AFTER: Duration = Duration::from_secs(5);
/// A peer that does not take our bytes within this is stuck.
const WRITE_TIMEOUT: Duration = Duration::from_secs(5);
/// Updates encoded per table before the buffer is flushed, so a large backlog or resync is
/// written in pieces and never held whole.
const PUSH_BATCH: usize = 512;
/// Pushed-but-unacknowledged updates remembered per table; beyond it the oldest are forgotten
/// (they will be acknowledged implicitly by later acks).
const MAX_IN_FLIGHT: usize = 1 << 16;
/// Largest read buffer: a full message of the maximum size plus its header.
const MAX_BUFFERED: usize = super::message::DEFAULT_MAX_LEN + 16;

/// Why a session ended.
#[derive(Debug, thiserror::Error)]
pub enum SessionEnd {
    #[error("the peer closed the connection")]
    Closed,
    #[error(
        "the peer closed the connection in the middle of a message ({bytes} bytes of it received)"
    )]
    ClosedMidMessage { bytes: usize },
    #[error("no message from the peer for {DEAD_AFTER:?}")]
    Silent,
    #[error("the peer did not take our data for {WRITE_TIMEOUT:?}")]
    WriteStuck,
    #[error("connection error")]
    Io(#[from] std::io::Error),
    #[error("bad message from the peer")]
    Decode(#[from] DecodeError),
    #[error("cannot encode a message")]
    Encode(#[from] EncodeError),
    #[error("the peer reported a protocol error")]
    PeerProtocolError,
    #[error("the peer reported a message over its size limit")]
    PeerSizeLimit,
}

/// What we push of one of our tables in this session.
#[derive(Default)]
struct TxTable {
    defined: bool,
    /// Update log position pushed up to.
    pushed_seq: u64,
    /// (wire update id, update log position) of pushes not yet acknowledged, oldest first.
    in_flight: VecDeque<(u32, u64)>,
}

pub struct Session<'a> {
    stream: TcpStream,
    inbuf: Vec<u8>,
    out: Vec<u8>,
    encoder: Encoder,
    decoder: Decoder,
    timed: bool,
    tables: &'a [SyncedTable],
    link: &'a PeerLink,
    tx: Vec<TxTable>,
    /// The peer's table ids we apply updates of, mapped to our table's index.
    rx: HashMap<u64, usize>,
    /// The peer's tables already reported as not synced (once per session).
    reported: HashSet<u64>,
    /// Unacknowledged received updates: the peer's table id and its last update id.
    acks_due: HashMap<u64, u32>,
    unknown_reported: HashSet<String>,
    /// The peer asked for a full resync; answered once the current read is handled.
    teach_requested: bool,
    last_sent: Instant,
    last_received: Instant,
}

impl<'a> Session<'a> {
    pub fn new(opened: Opened, tables: &'a [SyncedTable], link: &'a PeerLink) -> Self {
        let tx = (0..tables.len())
            .map(|i| TxTable {
                pushed_seq: link.acked_seq(i),
                ..TxTable::default()
            })
            .collect();
        let now = Instant::now();
        Self {
            stream: opened.stream,
            inbuf: opened.leftover,
            out: Vec::with_capacity(4096),
            encoder: Encoder::new(),
            decoder: Decoder::new(),
            timed: opened.version.has_timed_updates(),
            tables,
            link,
            tx,
            rx: HashMap::new(),
            reported: HashSet::new(),
            acks_due: HashMap::new(),
            unknown_reported: HashSet::new(),
            teach_requested: false,
            last_sent: now,
            last_received: now,
        }
    }

    /// Runs the session until it ends, returning why.
    pub async fn run(mut self, mut changes: watch::Receiver<u64>) -> SessionEnd {
        match self.serve(&mut changes).await {
            Ok(never) => match never {},
            Err(end) => end,
        }
    }

    async fn serve(
        &mut self,
        changes: &mut watch::Receiver<u64>,
    ) -> Result<std::convert::Infallible, SessionEnd> {
        // Every (re)connect asks for everything: a node that was down, partitioned or is new
        // catches up. HAProxy answers a resync request at any time.
        self.encoder
            .encode(&Message::ResyncRequest, &mut self.out)?;
        self.handle_received()?;
        self.teach_if_asked().await?;
        let mut chunk = vec![0u8; 16 * 1024];
        let mut tick = tokio::time::interval(Duration::from_millis(500));
        loop {
            changes.borrow_and_update();
            self.push_changes().await?;
            self.flush().await?;
            tokio::select! {
                read = self.stream.read(&mut chunk) => {
                    let n = read?;
                    if n == 0 {
                        return Err(match self.inbuf.len() {
                            0 => SessionEnd::Closed,
                            bytes => SessionEnd::ClosedMidMessage { bytes },
                        });
                    }
                    self.inbuf.extend_from_slice(&chunk[..n]);
                    self.last_received = Instant::now();
                    self.link.stats.last_received_ms.store(now_ms(), Relaxed);
                    self.handle_received()?;
                    self.send_acks()?;
                    self.teach_if_asked().await?;
                }
                _ = tick.tick() => self.keep_alive()?,
                _ = changes.changed() => {}
            }
        }
    }

    /// Applies every complete message in the read buffer.
    fn handle_received(&mut self) -> Result<(), SessionEnd> {
        let mut consumed = 0;
        while let Some((message, used)) = self.decoder.decode(&self.inbuf[consumed..])? {
            consumed += used;
            self.on_message(message)?;
        }
        self.inbuf.drain(..consumed);
        if self.inbuf.len() > MAX_BUFFERED {
            // `decode` refuses an announced length over the limit; this cannot be reached by a
            // well-framed stream and guards against anything that slips past.
            return Err(DecodeError::TooLong {
                len: self.inbuf.len() as u64,
                max: MAX_BUFFERED,
            }
            .into());
        }
        Ok(())
    }

    fn on_message(&mut self, message: Message) -> Result<(), SessionEnd> {
        match message {
            Message::Heartbeat | Message::ResyncConfirm | Message::SwitchTable { .. } => {}
            Message::ResyncRequest => self.teach_requested = true,
            Message::ResyncFinished | Message::ResyncPartial => {
                let partial = matches!(message, Message::ResyncPartial);
                PeerStats::add(&self.link.stats.resyncs_learned, 1);
                tracing::info!(peer = %self.link.name, partial, "full resync from peer done");
                self.encoder
                    .encode(&Message::ResyncConfirm, &mut self.out)?;
            }
            Message::ProtocolError => return Err(SessionEnd::PeerProtocolError),
            Message::SizeLimit => return Err(SessionEnd::PeerSizeLimit),
            Message::TableDefinition(def) => self.on_definition(&def),
            Message::Update(update) => self.on_update(update),
            Message::Ack {
                table_id,
                update_id,
            } => self.on_ack(table_id, update_id),
        }
        Ok(())
    }

    fn on_definition(&mut self, def: &super::message::TableDefinition) {
        let Some(index) = self.tables.iter().position(|t| t.backend.name == def.name) else {
            self.rx.remove(&def.table_id);
            if self.reported.insert(def.table_id) {
                tracing::debug!(peer = %self.link.name, table = %def.name, "peer shares a table we have no backend for");
            }
            return;
        };
        match self.tables[index].check(def) {
            Ok(()) => {
                self.rx.insert(def.table_id, index);
            }
            Err(mismatch) => {
                self.rx.remove(&def.table_id);
                if self.reported.insert(def.table_id) {
                    tracing::warn!(peer = %self.link.name, table = %def.name, "not syncing this table with the peer: {mismatch}");
                }
            }
        }
    }

    fn on_update(&mut self, update: Update) {
        let stats = &self.link.stats;
        PeerStats::add(&stats.updates_received, 1);
        self.acks_due.insert(update.table_id, update.update_id);
        let Some(&index) = self.rx.get(&update.table_id) else {
            return;
        };
        let table = &self.tables[index];
        let Some(server) = update.server_key.as_ref().map(ServerKey::as_str) else {
            // Without a name the numeric id would have to be trusted to mean the same server
            // here, which is exactly how HAProxy routes to wrong servers (its issue #814).
            self.report_unknown(table, &format!("id {}", update.server_id.unwrap_or(0)));
            return;
        };
        if table.backend.server(server).is_none() {
            self.report_unknown(table, server);
        }
        let key = table.backend.table.key(&update.key);
        let outcome = table.backend.table.apply_remote(
            key,
            Arc::from(server),
            update.expire_ms.map(u64::from),
            now_ms(),
        );
        if matches!(outcome, RemoteOutcome::KeptOurs | RemoteOutcome::Replaced) {
            PeerStats::add(&stats.conflicts, 1);
        }
    }

    /// Counts a received entry naming a server we don't have. The entry is kept (when it has a
    /// name): a request for it here is redispatched as for a server that is down.
    fn report_unknown(&mut self, table: &SyncedTable, server: &str) {
        PeerStats::add(&self.link.stats.unknown_servers, 1);
        if self
            .unknown_reported
            .insert(format!("{}/{server}", table.backend.name))
        {
            tracing::warn!(
                peer = %self.link.name,
                backend = %table.backend.name,
                server,
                "peer sent a session on a server this node does not have: kept, but requests for it here go to a live server"
            );
        }
    }

    fn on_ack(&mut self, table_id: u64, update_id: u32) {
        let Some(index) = self.tables.iter().position(|t| t.table_id == table_id) else {
            return;
        };
        let tx = &mut self.tx[index];
        let mut acked = 0;
        let mut acked_seq = None;
        // Wrapping order: ids after `update_id` are at most half the id space ahead.
        while let Some(&(id, seq)) = tx.in_flight.front() {
            if update_id.wrapping_sub(id) > u32::MAX / 2 {
                break;
            }
            tx.in_flight.pop_front();
            acked += 1;
            acked_seq = Some(seq);
        }
        if let Some(seq) = acked_seq {
            self.link.set_acked_seq(index, seq);
        }
        PeerStats::add(&self.link.stats.updates_acked, acked);
    }

    fn send_acks(&mut self) -> Result<(), SessionEnd> {
        for (table_id, update_id) in self.acks_due.drain() {
            self.encoder.encode(
                &Message::Ack {
                    table_id,
                    update_id,
                },
                &mut self.out,
            )?;
        }
        Ok(())
    }

    fn keep_alive(&mut self) -> Result<(), SessionEnd> {
        if self.last_received.elapsed() > DEAD_AFTER {
            return Err(SessionEnd::Silent);
        }
        if self.last_sent.elapsed() >= HEARTBEAT_INTERVAL && self.out.is_empty() {
            self.encoder.encode(&Message::Heartbeat, &mut self.out)?;
        }
        Ok(())
    }

    /// Pushes the local changes logged since the last push, table by table, in batches.
    async fn push_changes(&mut self) -> Result<(), SessionEnd> {
        for index in 0..self.tables.len() {
            loop {
                let pending = self.tables[index]
                    .backend
                    .table
                    .updates_after(self.tx[index].pushed_seq, PUSH_BATCH);
                let Some(last) = pending.last().map(|p| p.seq) else {
                    break;
                };
                for entry in &pending {
                    self.push(index, &entry.key, &entry.server, None, entry.seq)?;
                }
                self.tx[index].pushed_seq = last;
                self.flush().await?;
                if pending.len() < PUSH_BATCH {
                    break;
                }
            }
        }
        Ok(())
    }

    /// Answers a resync request: every live entry of every table, with its remaining
    /// lifetime, then "finished".
    async fn teach_if_asked(&mut self) -> Result<(), SessionEnd> {
        if !std::mem::take(&mut self.teach_requested) {
            return Ok(());
        }
        let mut taught = 0usize;
        for index in 0..self.tables.len() {
            let table = &self.tables[index].backend.table;
            let (seq, entries) = table.teach_snapshot(now_ms());
            for batch in entries.chunks(PUSH_BATCH) {
                for entry in batch {
                    let remaining = u32::try_from(entry.remaining_ms).unwrap_or(u32::MAX);
                    self.push(index, &entry.key, &entry.server, Some(remaining), seq)?;
                }
                self.flush().await?;
            }
            taught += entries.len();
            let tx = &mut self.tx[index];
            tx.pushed_seq = tx.pushed_seq.max(seq);
        }
        self.encoder
            .encode(&Message::ResyncFinished, &mut self.out)?;
        PeerStats::add(&self.link.stats.resyncs_taught, 1);
        tracing::info!(peer = %self.link.name, entries = taught, "taught the peer a full resync");
        Ok(())
    }

    /// Encodes one entry of table `index`; `seq` is the update log position it reflects.
    fn push(
        &mut self,
        index: usize,
        key: &lb_common::StickKey,
        server: &str,
        remaining_ms: Option<u32>,
        seq: u64,
    ) -> Result<(), SessionEnd> {
        let table = &self.tables[index];
        let Some(wire_key) = table.wire_key(key) else {
            PeerStats::add(&self.link.stats.keys_too_long, 1);
            return Ok(());
        };
        let Ok(server_key) = ServerKey::new(server) else {
            return Ok(());
        };
        let tx = &mut self.tx[index];
        if !tx.defined {
            self.encoder
                .encode(&Message::TableDefinition(table.definition()), &mut self.out)?;
            tx.defined = true;
        }
        let expire = if self.timed { remaining_ms } else { None };
        let id = self.encoder.push(
            table.table_id,
            wire_key,
            Some(table.server_id(server)),
            Some(&server_key),
            expire,
            &mut self.out,
        )?;
        if tx.in_flight.len() >= MAX_IN_FLIGHT {
            tx.in_flight.pop_front();
        }
        tx.in_flight.push_back((id, seq));
        PeerStats::add(&self.link.stats.updates_sent, 1);
        Ok(())
    }

    async fn flush(&mut self) -> Result<(), SessionEnd> {
        if self.out.is_empty() {
            return Ok(());
        }
        timeout(WRITE_TIMEOUT, self.stream.write_all(&self.out))
            .await
            .map_err(|_| SessionEnd::WriteStuck)??;
        self.out.clear();
        self.last_sent = Instant::now();
        Ok(())
    }
}
