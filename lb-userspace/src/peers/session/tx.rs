//! What the session sends of our tables: live pushes and lessons (docs/PEERS.md, "What we
//! send, on which event").

use super::{
    super::message::{Message, ServerKey},
    Change, End, Event, LessonQueue, LocalEntry, Session, Teaching, MAX_IN_FLIGHT, PUSH_BATCH,
};

impl Session {
    pub(super) fn push_changes(&mut self, table: usize, changes: &[Change]) -> Result<(), End> {
        for change in changes {
            self.push_entry(table, &change.entry, None, change.seq)?;
        }
        if let (Some(last), Some(tx)) = (changes.last(), self.tx.get_mut(table)) {
            tx.pushed_seq = last.seq;
        }
        Ok(())
    }

    /// Encodes up to [`PUSH_BATCH`] entries of the lesson; after the last one, "finished".
    pub(super) fn teach_batch(&mut self) -> Result<(), End> {
        let mut lesson = std::mem::take(&mut self.lesson);
        let result = self.teach_from(&mut lesson);
        self.lesson = lesson;
        result?;
        if self.lesson.tables.is_empty() {
            self.encoder
                .encode(&Message::ResyncFinished, &mut self.out)?;
            self.teaching = Teaching::Idle;
            let entries = std::mem::take(&mut self.lesson.taught);
            self.events.push_back(Event::LessonTaught { entries });
        }
        Ok(())
    }

    fn teach_from(&mut self, lesson: &mut LessonQueue) -> Result<(), End> {
        let mut sent = 0;
        while sent < PUSH_BATCH {
            let Some(front) = lesson.tables.front_mut() else {
                break;
            };
            let (table, seq) = (front.table, front.seq);
            match front.entries.pop_front() {
                Some((entry, remaining_ms)) => {
                    self.push_entry(table, &entry, Some(remaining_ms), seq)?;
                    lesson.taught += 1;
                    sent += 1;
                }
                None => {
                    // Live pushes continue after what the lesson reflected.
                    if let Some(tx) = self.tx.get_mut(table) {
                        tx.pushed_seq = tx.pushed_seq.max(seq);
                    }
                    lesson.tables.pop_front();
                }
            }
        }
        Ok(())
    }

    /// Encodes one entry of `table` (its definition first, once per session); `seq` is the
    /// update log position it reflects. Timed (with `remaining_ms`) only when the peer takes
    /// timed updates. A key longer than the table's is counted and skipped.
    fn push_entry(
        &mut self,
        table: usize,
        entry: &LocalEntry,
        remaining_ms: Option<u64>,
        seq: u64,
    ) -> Result<(), End> {
        let Some(tx) = self.tx.get_mut(table) else {
            return Ok(());
        };
        // The definition's key length counts HAProxy's NUL.
        if entry.key.len() as u64 >= tx.def.key_len {
            self.tally.keys_too_long += 1;
            return Ok(());
        }
        let Ok(server_key) = ServerKey::new(&*entry.server) else {
            return Ok(());
        };
        if !tx.defined {
            self.encoder
                .encode(&Message::TableDefinition(tx.def.clone()), &mut self.out)?;
            tx.defined = true;
        }
        let expire = match (self.timed, remaining_ms) {
            (true, Some(ms)) => Some(u32::try_from(ms).unwrap_or(u32::MAX)),
            _ => None,
        };
        let id = self.encoder.push(
            tx.def.table_id,
            &entry.key,
            Some(entry.server_id),
            Some(&server_key),
            expire,
            &mut self.out,
        )?;
        if tx.in_flight.len() >= MAX_IN_FLIGHT {
            tx.in_flight.pop_front();
        }
        tx.in_flight.push_back((id, seq));
        self.tally.updates_sent += 1;
        Ok(())
    }
}
