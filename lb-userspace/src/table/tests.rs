use std::sync::Arc;

use super::{memory::MemoryStorage, *};

/// A table of backend 1 on a store of its own, and that store.
pub(super) fn table(capacity: u32, expire: Duration) -> (StickTable, Arc<MemoryStorage>) {
    let storage = Arc::new(MemoryStorage::new(capacity as usize));
    let store = store_on(&storage);
    (on(&store, capacity, expire), storage)
}

/// A store (replicated: tables on it keep an update log) over `storage`.
pub(super) fn store_on(storage: &Arc<MemoryStorage>) -> Store {
    Store::new(Arc::clone(storage) as Arc<dyn Storage>, true)
}

pub(super) fn on(store: &Store, capacity: u32, expire: Duration) -> StickTable {
    StickTable::new(1, NonZeroU32::new(capacity).unwrap(), expire, store.clone())
}

/// Sticks `key` to `server`, whatever it was stuck to.
pub(super) fn set(table: &StickTable, key: StickKey, server: &str, now_ms: u64) {
    table.resolve(key, now_ms, |_| Some(((), Some(Arc::from(server)))));
}

/// Sticks `c0`..`c<count - 1>` to `s1`, `ci` last seen at `i` ms.
pub(super) fn fill(table: &StickTable, count: u32) {
    for i in 0..count {
        set(
            table,
            table.key(format!("c{i}").as_bytes()),
            "s1",
            u64::from(i),
        );
    }
}

/// The server `key` is stuck to, as a request would find it (a hit, refreshing it).
pub(super) fn get(table: &StickTable, key: &StickKey, now_ms: u64) -> Option<String> {
    table.resolve(*key, now_ms, |current| {
        current.map(|s| (s.to_owned(), None))
    })
}

/// What the store holds for `key`: server and last-seen time.
pub(super) fn stored(storage: &MemoryStorage, key: &StickKey) -> Option<(String, u64)> {
    let entry = storage.get(key).unwrap()?;
    Some((field_text(&entry.server), entry.last_seen_ms))
}

#[test]
fn a_decision_is_in_the_store_when_resolve_returns() {
    let (table, storage) = table(10, Duration::from_secs(60));
    let key = table.key(b"abc");
    set(&table, key, "web1", 1_000);
    assert_eq!(stored(&storage, &key), Some(("web1".into(), 1_000)));
    assert_eq!(get(&table, &key, 2_000).as_deref(), Some("web1"));
    assert_eq!(table.len(), 1);
}

#[test]
fn the_store_is_the_table_and_memory_holds_its_most_recent_entries() {
    let count = RECENT_ENTRIES as u32 + 1_000;
    let (table, storage) = table(count, Duration::from_secs(600));
    fill(&table, count);
    assert_eq!(storage.len(), count as usize);
    assert_eq!(table.len(), count as usize);
    assert_eq!(table.lock().recent.len(), RECENT_ENTRIES);
    // The oldest left memory but not the table: a request finds it in the store.
    let oldest = table.key(b"c0");
    assert!(!table.lock().recent.contains(&oldest));
    assert_eq!(get(&table, &oldest, 500_000).as_deref(), Some("s1"));
    // More entries than memory holds are listed from the store, newest first.
    let listed = table.snapshot_recent(RECENT_ENTRIES + 10);
    assert_eq!(listed.len(), RECENT_ENTRIES + 10);
    assert_eq!(listed[0].cookie, "c0", "just used");
    assert_eq!(listed[1].cookie, format!("c{}", count - 1));
    assert!(listed
        .windows(2)
        .skip(1)
        .all(|w| w[0].last_seen_ms >= w[1].last_seen_ms));
}

#[test]
fn beyond_its_capacity_the_store_evicts_the_least_recently_written_entry() {
    let (table, _storage) = table(2, Duration::from_secs(60));
    let (a, b, c) = (table.key(b"a"), table.key(b"b"), table.key(b"c"));
    set(&table, a, "s1", 1);
    set(&table, b, "s2", 2);
    set(&table, c, "s3", 4);
    assert_eq!(table.len(), 2);
    assert!(get(&table, &a, 5).is_none());
    assert!(get(&table, &b, 5).is_some());
}

#[test]
fn idle_entries_expire_on_lookup_and_on_sweep() {
    let (table, storage) = table(10, Duration::from_secs(1));
    let (a, b) = (table.key(b"a"), table.key(b"b"));
    set(&table, a, "s1", 0);
    set(&table, b, "s1", 500);
    assert!(get(&table, &a, 1_001).is_none());
    assert!(stored(&storage, &a).is_none());
    assert_eq!(table.sweep_expired(1_400), 0);
    assert_eq!(table.sweep_expired(1_501), 1);
    assert!(table.is_empty());
    assert_eq!(storage.len(), 0);
}

#[test]
fn a_hit_refreshes_expiry() {
    let (table, _storage) = table(10, Duration::from_secs(1));
    let a = table.key(b"a");
    set(&table, a, "s1", 0);
    assert!(get(&table, &a, 900).is_some());
    assert!(get(&table, &a, 1_800).is_some());
    assert_eq!(table.sweep_expired(2_000), 0);
}

#[test]
fn hot_hits_are_written_back_at_most_once_a_second() {
    let (table, storage) = table(10, Duration::from_secs(60));
    let a = table.key(b"a");
    set(&table, a, "s1", 0);
    for t in 1..100 {
        get(&table, &a, t * 10);
    }
    assert_eq!(stored(&storage, &a), Some(("s1".into(), 0)));
    get(&table, &a, 1_000);
    assert_eq!(stored(&storage, &a), Some(("s1".into(), 1_000)));
}

/// Writes an entry straight into the store, as a previous process left it.
pub(super) fn left_behind(
    storage: &MemoryStorage,
    backend_id: u32,
    cookie: &[u8],
    server: &str,
    seen: u64,
) {
    let entry = StickEntry {
        server: to_field(server).unwrap(),
        last_seen_ms: seen,
    };
    storage.put(&stick_key(backend_id, cookie), &entry).unwrap();
}

#[test]
fn the_start_scan_counts_forgets_expired_and_orphaned_entries_and_remembers_the_newest() {
    let (table, storage) = table(10, Duration::from_secs(10));
    left_behind(&storage, 1, b"a", "s1", 0);
    left_behind(&storage, 1, b"b", "s1", 15_000);
    left_behind(&storage, 1, b"c", "s2", 16_000);
    left_behind(&storage, 9, b"gone", "s1", 16_000);
    let store = store_on(&storage);
    let report = scan(&store, &[&table], 20_000, ScanMode::Start).unwrap();
    assert_eq!(
        report,
        ScanReport {
            live: 2,
            expired: 1,
            orphaned: 1
        }
    );
    assert_eq!(table.len(), 2);
    assert_eq!(storage.len(), 2);
    let views = table.snapshot_recent(10);
    assert_eq!(views[0].cookie, "c");
    assert_eq!(views[1].cookie, "b");
    assert!(
        logged(&table, 0).is_empty(),
        "adopted entries are not new decisions"
    );
}

#[test]
fn a_periodic_scan_deletes_what_expired_unless_memory_knows_a_later_use() {
    let (table, storage) = table(100, Duration::from_secs(10));
    let (kept, idle) = (table.key(b"kept"), table.key(b"idle"));
    set(&table, kept, "s1", 0);
    set(&table, idle, "s1", 0);
    // A hit at 0.9 s, not yet written back: only memory knows it.
    get(&table, &kept, 900);
    assert_eq!(stored(&storage, &kept), Some(("s1".into(), 0)));
    let store = store_on(&storage);
    let report = scan(
        &store,
        &[&table],
        10_500,
        ScanMode::Periodic { capacity: 100_000 },
    )
    .unwrap();
    assert_eq!((report.live, report.expired), (1, 1));
    assert!(stored(&storage, &idle).is_none());
    assert_eq!(get(&table, &kept, 10_500).as_deref(), Some("s1"));
    assert_eq!(table.len(), 1);
}

#[test]
fn a_periodic_scan_recounts_only_a_nearly_full_map() {
    let (table, storage) = table(100, Duration::from_secs(600));
    set(&table, table.key(b"mine"), "s1", 0);
    // Written by another process (an upgrade's overlap): not counted here.
    left_behind(&storage, 1, b"theirs", "s1", 0);
    let store = store_on(&storage);
    scan(
        &store,
        &[&table],
        1_000,
        ScanMode::Periodic { capacity: 100_000 },
    )
    .unwrap();
    assert_eq!(table.len(), 1);
    scan(
        &store,
        &[&table],
        1_000,
        ScanMode::Periodic { capacity: 1_000 },
    )
    .unwrap();
    assert_eq!(table.len(), 2);
}

#[test]
fn resolve_assigns_once_then_keeps_and_can_replace() {
    let (table, storage) = table(10, Duration::from_secs(60));
    let key = table.key(b"s");
    let first = table.resolve(key, 0, |current| {
        assert!(current.is_none());
        Some(("new", Some(Arc::from("web1"))))
    });
    assert_eq!(first, Some("new"));
    let second = table.resolve(key, 10, |current| {
        assert_eq!(current, Some("web1"));
        Some(("hit", None))
    });
    assert_eq!(second, Some("hit"));
    table.resolve(key, 20, |_| Some(((), Some(Arc::from("web2")))));
    assert_eq!(get(&table, &key, 30).as_deref(), Some("web2"));
    assert_eq!(stored(&storage, &key), Some(("web2".into(), 20)));
    assert_eq!(table.len(), 1);
}

#[test]
fn resolve_sees_expired_entries_as_absent() {
    let (table, _storage) = table(10, Duration::from_secs(1));
    let key = table.key(b"s");
    set(&table, key, "web1", 0);
    table.resolve(key, 5_000, |current| {
        assert!(current.is_none());
        Some(((), Some(Arc::from("web2"))))
    });
    assert_eq!(get(&table, &key, 5_001).as_deref(), Some("web2"));
}

#[test]
fn resolve_with_no_choice_changes_nothing() {
    let (table, storage) = table(10, Duration::from_secs(60));
    let key = table.key(b"s");
    assert_eq!(
        table.resolve(key, 0, |_| None::<((), Option<Arc<str>>)>),
        None
    );
    assert!(table.is_empty());
    assert_eq!(storage.len(), 0);
}

#[test]
fn a_miss_is_read_from_the_store_another_process_writes() {
    // During an upgrade the old and the new process share the map.
    let storage = Arc::new(MemoryStorage::new(10));
    let store = store_on(&storage);
    let (old, new) = (
        on(&store, 10, Duration::from_secs(60)),
        on(&store, 10, Duration::from_secs(60)),
    );
    let (known, stale) = (old.key(b"known"), old.key(b"stale"));
    set(&old, known, "s7", 90_000);
    set(&old, stale, "s7", 1_000);
    // `choose` may first be asked as if the key were new: what counts is its last answer.
    let mut seen = Vec::new();
    new.resolve(known, 90_500, |current| {
        seen.push(current.map(str::to_owned));
        Some(((), None))
    });
    assert_eq!(seen.last(), Some(&Some("s7".to_owned())));
    seen.clear();
    new.resolve(stale, 90_500, |current| {
        seen.push(current.map(str::to_owned));
        Some(((), None))
    });
    assert_eq!(seen.last(), Some(&None), "an expired entry is no entry");
    assert!(stored(&storage, &stale).is_none());
    assert!(
        logged(&new, 0).is_empty(),
        "an entry read back is not a new decision"
    );
}

#[test]
fn two_processes_deciding_one_new_session_agree_on_the_first_stored_choice() {
    let storage = Arc::new(MemoryStorage::new(10));
    let store = store_on(&storage);
    let (left, right) = (
        on(&store, 10, Duration::from_secs(60)),
        on(&store, 10, Duration::from_secs(60)),
    );
    let key = left.key(b"new");
    // Each balances a new session to its own pick; the first stored wins on both.
    let balance = |pick: &'static str| {
        move |current: Option<&str>| {
            let server = current.unwrap_or(pick).to_owned();
            let stick = current.is_none().then(|| Arc::from(pick));
            Some((server, stick))
        }
    };
    assert_eq!(left.resolve(key, 0, balance("s1")).as_deref(), Some("s1"));
    assert_eq!(right.resolve(key, 1, balance("s2")).as_deref(), Some("s1"));
    assert_eq!(stored(&storage, &key), Some(("s1".into(), 0)));
    assert_eq!(
        logged(&right, 0),
        Vec::<(String, String)>::new(),
        "the loser decided nothing"
    );
}

/// The servers of the update log entries after `after`, oldest first.
pub(super) fn logged(table: &StickTable, after: u64) -> Vec<(String, String)> {
    table
        .updates_after(after, usize::MAX)
        .into_iter()
        .map(|p| (field_text(&p.key.cookie), p.server.to_string()))
        .collect()
}

#[test]
fn local_changes_are_logged_once_per_key_with_the_latest_server() {
    let (table, _storage) = table(10, Duration::from_secs(60));
    let (a, b) = (table.key(b"a"), table.key(b"b"));
    set(&table, a, "s1", 0);
    set(&table, b, "s2", 0);
    set(&table, a, "s3", 0);
    assert_eq!(
        logged(&table, 0),
        [("b".into(), "s2".into()), ("a".into(), "s3".into())]
    );
    let seq = table.last_seq();
    assert!(logged(&table, seq).is_empty());
    // A hit is pushed again only once per touch interval.
    assert!(get(&table, &b, 500).is_some());
    assert!(logged(&table, seq).is_empty());
    assert!(get(&table, &b, 1_500).is_some());
    assert_eq!(logged(&table, seq), [("b".into(), "s2".into())]);
}

#[test]
fn a_logged_key_that_left_memory_is_pushed_with_its_stored_server() {
    let count = RECENT_ENTRIES as u32 + 10;
    let (table, _storage) = table(count, Duration::from_secs(600));
    fill(&table, count);
    let first = &table.updates_after(0, 1)[0];
    assert_eq!(field_text(&first.key.cookie), "c0");
    assert!(!table.lock().recent.contains(&first.key));
    assert_eq!(&*first.server, "s1");
}

#[test]
fn entries_from_peers_are_applied_but_not_logged_for_pushing() {
    let (table, storage) = table(10, Duration::from_secs(60));
    let key = table.key(b"p");
    assert_eq!(
        table.apply_remote(key, "s1".into(), None, 10_000),
        RemoteOutcome::Inserted
    );
    assert_eq!(get(&table, &key, 10_001).as_deref(), Some("s1"));
    assert!(logged(&table, 0).is_empty());
    assert_eq!(stored(&storage, &key), Some(("s1".into(), 10_000)));
    assert_eq!(
        table.apply_remote(key, "s1".into(), None, 20_000),
        RemoteOutcome::Refreshed
    );
    assert!(logged(&table, 0).is_empty());
    assert_eq!(stored(&storage, &key), Some(("s1".into(), 20_000)));
}

#[test]
fn remaining_lifetime_travels_with_an_entry() {
    let (table, _storage) = table(10, Duration::from_secs(60));
    let key = table.key(b"t");
    // 10 s left of 60: it was last seen 50 s ago and expires 10 s from now.
    table.apply_remote(key, "s1".into(), Some(10_000), 100_000);
    let entry = &table.snapshot_recent(10)[0];
    assert_eq!(entry.last_seen_ms, 50_000);
    let (_, taught) = table.teach_snapshot(105_000);
    assert_eq!(taught[0].remaining_ms, 5_000);
    assert_eq!(table.sweep_expired(110_001), 1);
    assert_eq!(
        table.apply_remote(key, "s1".into(), Some(0), 200_000),
        RemoteOutcome::Expired
    );
    assert!(table.is_empty());
}

#[test]
fn a_resync_teaches_every_stored_entry_oldest_first_with_what_memory_knows() {
    let (table, storage) = table(10, Duration::from_secs(60));
    left_behind(&storage, 1, b"old", "s2", 1_000);
    set(&table, table.key(b"new"), "s1", 2_000);
    // A hit not yet written back: the lifetime counts from it.
    get(&table, &table.key(b"new"), 2_500);
    left_behind(&storage, 2, b"other-backend", "s1", 2_000);
    let (seq, taught) = table.teach_snapshot(3_000);
    assert_eq!(seq, table.last_seq());
    let taught: Vec<_> = taught
        .iter()
        .map(|t| {
            (
                field_text(&t.key.cookie),
                t.server.to_string(),
                t.remaining_ms,
            )
        })
        .collect();
    assert_eq!(
        taught,
        [
            ("old".into(), "s2".into(), 58_000),
            ("new".into(), "s1".into(), 59_500)
        ]
    );
}

#[test]
fn concurrent_choices_converge_on_the_lower_rank_on_both_sides() {
    // Two nodes choose different servers for one new cookie, then receive each other's choice.
    let (left, _l) = table(10, Duration::from_secs(60));
    let (right, _r) = table(10, Duration::from_secs(60));
    let key = left.key(b"new-cookie");
    let (ours, theirs) = ("s1", "s2");
    set(&left, key, ours, 1_000);
    set(&right, key, theirs, 1_000);
    let l = left.apply_remote(key, theirs.into(), None, 1_050);
    let r = right.apply_remote(key, ours.into(), None, 1_050);
    let winner = if rank(&key, ours) < rank(&key, theirs) {
        ours
    } else {
        theirs
    };
    assert_eq!(get(&left, &key, 1_100).as_deref(), Some(winner));
    assert_eq!(get(&right, &key, 1_100).as_deref(), Some(winner));
    // One side kept its choice, the other took the peer's; both push the result again so that
    // a peer which overwrites blindly (HAProxy) ends on it too.
    let mut outcomes = [l, r];
    outcomes.sort_by_key(|o| format!("{o:?}"));
    assert_eq!(outcomes, [RemoteOutcome::KeptOurs, RemoteOutcome::Replaced]);
    assert_eq!(logged(&left, 1), [("new-cookie".into(), winner.into())]);
    assert_eq!(logged(&right, 1), [("new-cookie".into(), winner.into())]);
}

#[test]
fn outside_the_conflict_window_a_live_update_wins_and_a_stale_resync_entry_loses() {
    let (table, storage) = table(10, Duration::from_secs(600));
    let key = table.key(b"old");
    set(&table, key, "s1", 0);
    let later = CONFLICT_WINDOW_MS + 10;
    // A resync entry last used 100 s before ours: ours is the current one.
    assert!(get(&table, &key, 200_000).is_some());
    assert_eq!(
        table.apply_remote(key, "s2".into(), Some(500_000), 200_000),
        RemoteOutcome::KeptOurs
    );
    assert_eq!(get(&table, &key, 200_001).as_deref(), Some("s1"));
    // A live update (a redispatch on the peer) replaces ours.
    assert_eq!(
        table.apply_remote(key, "s2".into(), None, 200_000 + later),
        RemoteOutcome::Replaced
    );
    assert_eq!(get(&table, &key, 200_000 + later).as_deref(), Some("s2"));
    assert_eq!(
        stored(&storage, &key).map(|(s, _)| s).as_deref(),
        Some("s2")
    );
}

#[test]
fn the_update_log_is_bounded_and_expired_entries_leave_it() {
    let (table, _storage) = table(2, Duration::from_secs(1));
    for (i, cookie) in [b"a", b"b", b"c"].iter().enumerate() {
        set(&table, table.key(*cookie), "s1", i as u64);
    }
    assert_eq!(logged(&table, 0).len(), 2);
    table.sweep_expired(10_000);
    assert!(logged(&table, 0).is_empty());
}

/// A store that lets a peer's entry for a key arrive right after a new session's insert, before
/// the table records its decision: the window `decide_cold` leaves between the two.
struct PeerArrivesAfterInsert {
    inner: MemoryStorage,
    table: std::sync::OnceLock<Arc<StickTable>>,
    /// The peer's entry arrives once (applying it inserts too).
    arrived: std::sync::atomic::AtomicBool,
}

impl Storage for PeerArrivesAfterInsert {
    fn get(&self, key: &StickKey) -> std::io::Result<Option<StickEntry>> {
        self.inner.get(key)
    }
    fn put(&self, key: &StickKey, entry: &StickEntry) -> std::io::Result<()> {
        self.inner.put(key, entry)
    }
    fn insert_new(&self, key: &StickKey, entry: &StickEntry) -> std::io::Result<bool> {
        let inserted = self.inner.insert_new(key, entry)?;
        let first = !self
            .arrived
            .swap(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(table) = self.table.get().filter(|_| first) {
            table.apply_remote(*key, Arc::from("peers-pick"), None, 1_000);
        }
        Ok(inserted)
    }
    fn delete(&self, key: &StickKey) -> std::io::Result<bool> {
        self.inner.delete(key)
    }
    fn scan(&self, visit: &mut dyn FnMut(&[super::store::Stored])) -> std::io::Result<()> {
        self.inner.scan(visit)
    }
}

#[test]
fn a_peers_entry_applied_during_a_new_sessions_insert_is_what_memory_and_store_agree_on() {
    let storage = Arc::new(PeerArrivesAfterInsert {
        inner: MemoryStorage::new(16),
        table: std::sync::OnceLock::new(),
        arrived: std::sync::atomic::AtomicBool::new(false),
    });
    let store = Store::new(Arc::clone(&storage) as Arc<dyn Storage>, true);
    let table = Arc::new(on(&store, 16, Duration::from_secs(60)));
    let _ = storage.table.set(Arc::clone(&table));
    let key = table.key(b"raced");
    let served = table.resolve(key, 1_000, |current| match current {
        None => Some(("ours".to_owned(), Some(Arc::from("ours")))),
        Some(server) => Some((server.to_owned(), None)),
    });
    let in_store = storage
        .inner
        .get(&key)
        .unwrap()
        .map(|e| field_text(&e.server));
    assert_eq!(in_store.as_deref(), Some("peers-pick"));
    assert_eq!(served.as_deref(), Some("peers-pick"));
    // (The store and the table hold each other: both leak when the test ends.)
    assert_eq!(get(&table, &key, 1_100).as_deref(), Some("peers-pick"));
}

/// A memory store that counts its reads.
struct CountingReads {
    inner: MemoryStorage,
    gets: std::sync::atomic::AtomicU64,
}

impl Storage for CountingReads {
    fn get(&self, key: &StickKey) -> std::io::Result<Option<StickEntry>> {
        self.gets.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.inner.get(key)
    }
    fn put(&self, key: &StickKey, entry: &StickEntry) -> std::io::Result<()> {
        self.inner.put(key, entry)
    }
    fn insert_new(&self, key: &StickKey, entry: &StickEntry) -> std::io::Result<bool> {
        self.inner.insert_new(key, entry)
    }
    fn delete(&self, key: &StickKey) -> std::io::Result<bool> {
        self.inner.delete(key)
    }
    fn scan(&self, visit: &mut dyn FnMut(&[super::store::Stored])) -> std::io::Result<()> {
        self.inner.scan(visit)
    }
}

#[test]
fn a_peers_new_session_is_stored_without_a_read_and_a_known_one_is_still_compared() {
    let storage = Arc::new(CountingReads {
        inner: MemoryStorage::new(16),
        gets: std::sync::atomic::AtomicU64::new(0),
    });
    let store = Store::new(Arc::clone(&storage) as Arc<dyn Storage>, true);
    let table = on(&store, 16, Duration::from_secs(60));
    let reads = || storage.gets.load(std::sync::atomic::Ordering::Relaxed);

    let new = table.key(b"new-session");
    assert!(matches!(
        table.apply_remote(new, "s1".into(), None, 1_000),
        RemoteOutcome::Inserted
    ));
    assert_eq!(reads(), 0, "a new session is one conditional write");
    assert_eq!(get(&table, &new, 1_100).as_deref(), Some("s1"));

    // Another process sharing the store stuck a session this table never saw: the peer's
    // entry is weighed against it by the convergence rule (here it replaces it), not taken
    // for a new session.
    let other = on(&store, 16, Duration::from_secs(60));
    let known = table.key(b"known-elsewhere");
    set(&other, known, "s2", 1_000);
    let outcome = table.apply_remote(known, "s3".into(), None, 2_000);
    assert!(matches!(outcome, RemoteOutcome::Replaced), "{outcome:?}");
    assert!(reads() > 0);
    assert_eq!(get(&table, &known, 2_100).as_deref(), Some("s3"));
}
