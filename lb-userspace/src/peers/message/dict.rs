//! The per-session dictionary caches through which `server_key` values travel.
//!
//! A sender gives each new server name a slot, round robin over [`DICTIONARY_ENTRIES`], and
//! sends the name with its slot; later it sends the slot alone. Slots are numbered from 1 on the
//! wire (0 means "no server key"). Both caches are forgotten when the session ends.

use std::collections::HashMap;

use super::{error::DecodeError, ServerKey};

/// Slots per session and direction (HAProxy's `PEER_STKT_CACHE_MAX_ENTRIES`).
pub const DICTIONARY_ENTRIES: usize = 128;

/// What the peer taught us: slot -> server name.
#[derive(Debug)]
pub(super) struct RxDictionary {
    slots: Vec<Option<ServerKey>>,
}

impl RxDictionary {
    pub(super) fn new() -> Self {
        Self {
            slots: vec![None; DICTIONARY_ENTRIES],
        }
    }

    /// The name the peer stored in `wire_id`.
    pub(super) fn get(&self, wire_id: u64) -> Result<&ServerKey, DecodeError> {
        let slot = slot_index(wire_id)?;
        self.slots
            .get(slot)
            .and_then(Option::as_ref)
            .ok_or(DecodeError::UnknownDictionaryId { id: wire_id })
    }

    pub(super) fn set(&mut self, wire_id: u64, key: ServerKey) -> Result<(), DecodeError> {
        let slot = slot_index(wire_id)?;
        let entry = self
            .slots
            .get_mut(slot)
            .ok_or(DecodeError::BadDictionaryId { id: wire_id })?;
        *entry = Some(key);
        Ok(())
    }
}

/// Wire ids are 1-based; HAProxy itself only checks the upper bound on one of its two paths.
fn slot_index(wire_id: u64) -> Result<usize, DecodeError> {
    usize::try_from(wire_id)
        .ok()
        .filter(|id| (1..=DICTIONARY_ENTRIES).contains(id))
        .map(|id| id - 1)
        .ok_or(DecodeError::BadDictionaryId { id: wire_id })
}

/// Whether a name must be sent in full or by slot alone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum TxSlot {
    /// Already taught in this slot (0-based): send the slot alone.
    Known(usize),
    /// Newly given this slot (0-based), evicting its previous name: send the name too.
    New(usize),
}

/// What we taught the peer: name -> slot, and the slot to hand out next.
#[derive(Debug)]
pub(super) struct TxDictionary {
    slots: Vec<Option<ServerKey>>,
    by_name: HashMap<ServerKey, usize>,
    next: usize,
}

impl Default for TxDictionary {
    fn default() -> Self {
        Self::new()
    }
}

impl TxDictionary {
    pub(super) fn new() -> Self {
        Self {
            slots: vec![None; DICTIONARY_ENTRIES],
            by_name: HashMap::new(),
            next: 0,
        }
    }

    /// The slot `key` has, or the one it would be given by [`TxDictionary::commit`].
    pub(super) fn slot(&self, key: &ServerKey) -> TxSlot {
        match self.by_name.get(key) {
            Some(&slot) => TxSlot::Known(slot),
            None => TxSlot::New(self.next),
        }
    }

    /// Records that `key` was sent: a new name takes the next slot round robin, evicting the
    /// name that held it. Done only once the message is sure to go out, so that both ends of
    /// the session agree on every slot.
    pub(super) fn commit(&mut self, key: &ServerKey) {
        if self.by_name.contains_key(key) {
            return;
        }
        let slot = self.next;
        self.next = (self.next + 1) % DICTIONARY_ENTRIES;
        if let Some(evicted) = self.slots.get_mut(slot).and_then(Option::take) {
            self.by_name.remove(&evicted);
        }
        if let Some(entry) = self.slots.get_mut(slot) {
            *entry = Some(key.clone());
        }
        self.by_name.insert(key.clone(), slot);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(name: &str) -> ServerKey {
        ServerKey::new(name).unwrap()
    }

    /// Looks `name` up and records it as sent.
    fn send(tx: &mut TxDictionary, name: &str) -> TxSlot {
        let slot = tx.slot(&key(name));
        tx.commit(&key(name));
        slot
    }

    #[test]
    fn tx_hands_out_slots_round_robin_and_evicts() {
        let mut tx = TxDictionary::new();
        assert_eq!(
            tx.slot(&key("unsent")),
            TxSlot::New(0),
            "a look-up alone takes no slot"
        );
        assert_eq!(send(&mut tx, "be1"), TxSlot::New(0));
        assert_eq!(send(&mut tx, "be2"), TxSlot::New(1));
        assert_eq!(send(&mut tx, "be1"), TxSlot::Known(0));
        for i in 2..DICTIONARY_ENTRIES {
            assert_eq!(send(&mut tx, &format!("s{i}")), TxSlot::New(i));
        }
        // Full: the next new name takes slot 0 and "be1" must be sent in full again.
        assert_eq!(send(&mut tx, "late"), TxSlot::New(0));
        assert_eq!(send(&mut tx, "be2"), TxSlot::Known(1));
        assert_eq!(send(&mut tx, "be1"), TxSlot::New(1));
        assert_eq!(send(&mut tx, "be2"), TxSlot::New(2));
    }

    #[test]
    fn rx_checks_ids() {
        let mut rx = RxDictionary::new();
        assert_eq!(rx.get(1), Err(DecodeError::UnknownDictionaryId { id: 1 }));
        rx.set(128, key("be9")).unwrap();
        assert_eq!(rx.get(128), Ok(&key("be9")));
        assert_eq!(
            rx.set(0, key("x")),
            Err(DecodeError::BadDictionaryId { id: 0 })
        );
        assert_eq!(
            rx.set(129, key("x")),
            Err(DecodeError::BadDictionaryId { id: 129 })
        );
        assert_eq!(
            rx.get(u64::MAX),
            Err(DecodeError::BadDictionaryId { id: u64::MAX })
        );
    }
}
