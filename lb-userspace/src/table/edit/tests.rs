use std::time::Duration;

use super::super::{
    memory::MemoryStorage,
    scan,
    tests::{get, left_behind, logged, on, set, store_on, stored, table},
    ScanMode, StickTable, Storage as _, Store, CONFLICT_WINDOW_MS,
};

const MINUTE: Duration = Duration::from_secs(60);

/// Resolves `cookie` as a request would, and says whether it was balanced anew (the choice
/// was asked with no current server) and where it went.
fn request(table: &StickTable, cookie: &[u8], server_if_new: &str, now_ms: u64) -> (bool, String) {
    let mut balanced = false;
    let server = table
        .resolve(table.key(cookie), now_ms, |current| match current {
            Some(server) => Some((server.to_owned(), None)),
            None => {
                balanced = true;
                Some((server_if_new.to_owned(), Some(server_if_new.into())))
            }
        })
        .unwrap();
    (balanced, server)
}

#[test]
fn a_delete_forgets_the_entry_everywhere_and_its_next_request_is_balanced_anew() {
    let (table, storage) = table(10, MINUTE);
    let (a, b) = (table.key(b"a"), table.key(b"b"));
    set(&table, a, "s1", 1_000);
    set(&table, b, "s2", 1_000);
    assert_eq!(table.delete(&a, 2_000).as_deref(), Some("s1"));
    assert!(stored(&storage, &a).is_none());
    assert!(!table.lock().recent.contains(&a));
    assert_eq!(table.len(), 1);
    // Not re-taught by our own update log: only `b` is left there.
    assert_eq!(logged(&table, 0), [("b".into(), "s2".into())]);
    assert_eq!(request(&table, b"a", "s3", 3_000), (true, "s3".into()));
    assert_eq!(stored(&storage, &a), Some(("s3".into(), 3_000)));
}

#[test]
fn a_delete_of_an_absent_or_expired_entry_finds_nothing_and_keeps_the_count() {
    let (table, storage) = table(10, Duration::from_secs(1));
    let (a, b) = (table.key(b"a"), table.key(b"b"));
    set(&table, b, "s1", 0);
    set(&table, a, "s1", 5_000);
    assert_eq!(table.delete(&table.key(b"nobody"), 5_000), None);
    assert_eq!(table.len(), 2);
    // `b` expired: gone as far as requests see, and deleted on the way.
    assert_eq!(table.delete(&b, 5_000), None);
    assert!(stored(&storage, &b).is_none());
    assert_eq!(table.len(), 1);
}

#[test]
fn a_delete_finds_an_entry_that_is_only_in_the_store() {
    let (table, storage) = table(10, MINUTE);
    left_behind(&storage, 1, b"old", "s2", 1_000);
    let store = store_on(&storage);
    scan(&store, &[&table], 1_000, ScanMode::Start).unwrap();
    table.lock().recent.clear();
    let key = table.key(b"old");
    assert_eq!(table.delete(&key, 2_000).as_deref(), Some("s2"));
    assert!(stored(&storage, &key).is_none());
    assert!(table.is_empty());
}

#[test]
fn a_set_is_a_decision_stored_logged_for_peers_and_decided_now() {
    let (table, storage) = table(10, MINUTE);
    let key = table.key(b"a");
    assert_eq!(table.set(key, "s2".into(), 1_000), None);
    assert_eq!(stored(&storage, &key), Some(("s2".into(), 1_000)));
    assert_eq!(table.len(), 1);
    set(&table, key, "s1", 2_000);
    let seq = table.last_seq();
    assert_eq!(table.set(key, "s3".into(), 50_000).as_deref(), Some("s1"));
    assert_eq!(stored(&storage, &key), Some(("s3".into(), 50_000)));
    assert_eq!(get(&table, &key, 50_001).as_deref(), Some("s3"));
    assert_eq!(logged(&table, seq), [("a".into(), "s3".into())]);
    assert_eq!(table.len(), 1);
    // Decided now: a peer's other choice within the conflict window is a concurrent one.
    let decided = table.lock().recent.peek(&key).unwrap().decided_ms;
    assert_eq!(decided, 50_000);
    assert!(50_000 - decided < CONFLICT_WINDOW_MS);
}

#[test]
fn a_set_overwrites_an_entry_that_is_only_in_the_store() {
    let (table, storage) = table(10, MINUTE);
    left_behind(&storage, 1, b"old", "s1", 1_000);
    let key = table.key(b"old");
    assert_eq!(table.set(key, "s2".into(), 2_000).as_deref(), Some("s1"));
    assert_eq!(stored(&storage, &key), Some(("s2".into(), 2_000)));
}

#[test]
fn a_clear_of_one_server_deletes_only_its_entries_and_only_in_this_backend() {
    let (table, storage) = table(100, MINUTE);
    let store = store_on(&storage);
    let other = StickTable::new(2, std::num::NonZeroU32::new(100).unwrap(), MINUTE, store);
    for i in 0..30u64 {
        let server = if i % 3 == 0 { "s2" } else { "s1" };
        set(&table, table.key(format!("c{i}").as_bytes()), server, i);
        set(&other, other.key(format!("c{i}").as_bytes()), "s2", i);
    }
    // One entry of s2 only in the store (another process wrote it), one only in memory (the
    // store lost it).
    left_behind(&storage, 1, b"elsewhere", "s2", 40);
    let memory_only = table.key(b"c3");
    storage.delete(&memory_only).unwrap();
    let cleared = table.clear(Some("s2")).unwrap();
    // Ten in memory and the store (one of them only in memory now), and one only in the store.
    assert_eq!(cleared.deleted, 11);
    assert!(
        cleared.batches > 1,
        "the memory store hands out batches of 3"
    );
    assert!(!table.lock().recent.contains(&memory_only));
    let left: Vec<String> = table
        .snapshot_recent(100)
        .into_iter()
        .map(|e| e.server)
        .collect();
    assert_eq!(left.len(), 20);
    assert!(left.iter().all(|s| s == "s1"));
    assert!(stored(&storage, &table.key(b"elsewhere")).is_none());
    assert_eq!(other.snapshot_recent(100).len(), 30);
    assert_eq!(storage.len(), 20 + 30);
    // Deleted sessions are not pushed to peers.
    assert!(logged(&table, 0).iter().all(|(_, server)| server == "s1"));
}

#[test]
fn a_clear_of_the_backend_deletes_every_entry_and_counts_them() {
    let (table, storage) = table(100, MINUTE);
    for i in 0..25u64 {
        set(&table, table.key(format!("c{i}").as_bytes()), "s1", i);
    }
    let cleared = table.clear(None).unwrap();
    assert_eq!(cleared.deleted, 25);
    assert!(table.is_empty());
    assert_eq!(storage.len(), 0);
    assert!(logged(&table, 0).is_empty());
    assert_eq!(request(&table, b"c1", "s2", 100), (true, "s2".into()));
}

#[test]
fn a_table_says_whether_peers_are_told() {
    let store = Store::new(std::sync::Arc::new(MemoryStorage::new(4)), false);
    assert!(!on(&store, 4, MINUTE).replicated());
    let (replicated, _storage) = table(4, MINUTE);
    assert!(replicated.replicated());
}
