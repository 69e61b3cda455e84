//! What the session does with the peer's messages (docs/PEERS.md, "What we accept").

use super::{
    super::message::{DataTypes, DecodeError, KeyType, Message, TableDefinition, Update},
    End, Event, Learned, Mismatch, NotSynced, Session, State, Teaching, MAX_BUFFERED,
};

impl Session {
    /// Applies every complete message in the read buffer.
    pub(super) fn handle_received(&mut self) -> Result<(), End> {
        let mut consumed = 0;
        let mut result = Ok(());
        loop {
            let rest = self.inbuf.get(consumed..).unwrap_or_default();
            match self.decoder.decode(rest) {
                Ok(Some((message, used))) => {
                    consumed += used;
                    if let Err(end) = self.on_message(message) {
                        result = Err(end);
                        break;
                    }
                }
                Ok(None) => break,
                Err(error) => {
                    result = Err(error.into());
                    break;
                }
            }
        }
        self.inbuf.drain(..consumed);
        result?;
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

    /// One ack per table updated since the last acks: its last update id.
    pub(super) fn queue_acks(&mut self) -> Result<(), End> {
        for (table_id, update_id) in std::mem::take(&mut self.acks_due) {
            let ack = Message::Ack {
                table_id,
                update_id,
            };
            self.encoder.encode(&ack, &mut self.out)?;
        }
        Ok(())
    }

    fn on_message(&mut self, message: Message) -> Result<(), End> {
        match message {
            Message::Heartbeat | Message::ResyncConfirm | Message::SwitchTable { .. } => {}
            Message::ResyncRequest => {
                if self.teaching == Teaching::Idle {
                    self.teaching = Teaching::Asked;
                }
                // A peer that asks is new or restarted: what it made before (and never pushed)
                // may be missing here, so ask in turn.
                if matches!(self.state, State::Synced) {
                    self.ask_resync()?;
                }
            }
            Message::ResyncFinished | Message::ResyncPartial => {
                let partial = matches!(message, Message::ResyncPartial);
                self.encoder
                    .encode(&Message::ResyncConfirm, &mut self.out)?;
                self.state = State::Synced;
                self.events.push_back(Event::LessonLearned { partial });
            }
            Message::ProtocolError => return Err(End::PeerProtocolError),
            Message::SizeLimit => return Err(End::PeerSizeLimit),
            Message::TableDefinition(def) => self.on_definition(&def),
            Message::Update(update) => self.on_update(update),
            Message::Ack {
                table_id,
                update_id,
            } => self.on_ack(table_id, update_id),
        }
        Ok(())
    }

    /// Matches a table of the peer with ours by name; following updates of it are applied
    /// only when the shapes agree.
    fn on_definition(&mut self, def: &TableDefinition) {
        let ours = self.tx.iter().position(|tx| tx.def.name == def.name);
        let verdict = match ours {
            None => Err(NotSynced::NoSuchTable),
            Some(index) => match check(&self.tx[index].def, def) {
                Ok(()) => Ok(index),
                Err(mismatch) => Err(NotSynced::Mismatch(mismatch)),
            },
        };
        match verdict {
            Ok(index) => {
                self.rx.insert(def.table_id, index);
            }
            Err(why) => {
                self.rx.remove(&def.table_id);
                if self.reported.insert(def.table_id) {
                    self.events.push_back(Event::NotSynced {
                        name: def.name.clone(),
                        why,
                    });
                }
            }
        }
    }

    fn on_update(&mut self, update: Update) {
        self.tally.updates_received += 1;
        // Acknowledged even when the table is not synced here: a peer resumes from our last
        // ack on its next session, and would otherwise push these again each time.
        self.acks_due.insert(update.table_id, update.update_id);
        let Some(&table) = self.rx.get(&update.table_id) else {
            return;
        };
        let event = match update.server_key {
            Some(server) => Event::Learned(Learned {
                table,
                key: update.key,
                server,
                expire_ms: update.expire_ms,
            }),
            None => Event::Nameless {
                table,
                server_id: update.server_id,
            },
        };
        self.events.push_back(event);
    }

    /// Forgets our pushes up to `update_id` (in wrapping order) and reports the update log
    /// position they reached.
    fn on_ack(&mut self, table_id: u64, update_id: u32) {
        let Some(table) = self.tx.iter().position(|tx| tx.def.table_id == table_id) else {
            return;
        };
        let tx = &mut self.tx[table];
        let mut acked = 0;
        let mut acked_seq = None;
        // Ids after `update_id` are at most half the id space ahead.
        while let Some(&(id, seq)) = tx.in_flight.front() {
            if update_id.wrapping_sub(id) > u32::MAX / 2 {
                break;
            }
            tx.in_flight.pop_front();
            acked += 1;
            acked_seq = Some(seq);
        }
        if let Some(seq) = acked_seq {
            self.events.push_back(Event::Acked { table, seq });
        }
        self.tally.updates_acked += acked;
    }
}

/// Whether a peer's table of the same name can be synced with ours: HAProxy ignores a
/// definition whose key type or length differ, and so do we.
pub(super) fn check(ours: &TableDefinition, theirs: &TableDefinition) -> Result<(), Mismatch> {
    if theirs.key_type != KeyType::String {
        return Err(Mismatch::KeyType {
            found: theirs.key_type,
        });
    }
    if theirs.key_len != ours.key_len {
        return Err(Mismatch::KeyLength {
            found: theirs.key_len,
            ours: ours.key_len,
        });
    }
    if !theirs.data_types.contains(DataTypes::SERVER_KEY) {
        return Err(Mismatch::NoServer);
    }
    Ok(())
}
