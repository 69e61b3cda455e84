use super::*;

fn table(capacity: u32, expire: Duration) -> (StickTable, JournalReceiver) {
    let (tx, rx) = journal();
    let table = StickTable::new(1, NonZeroU32::new(capacity).unwrap(), expire, tx);
    (table, rx)
}

fn drain(rx: &mut JournalReceiver) -> Vec<JournalOp> {
    let mut ops = Vec::new();
    while let Some(op) = rx.try_recv() {
        ops.push(op);
    }
    ops
}

#[test]
fn set_then_get_returns_the_server_and_journals_the_entry() {
    let (table, mut rx) = table(10, Duration::from_secs(60));
    let key = table.key(b"abc");
    table.set(key, "web1".into(), 1_000);
    assert_eq!(table.get(&key, 2_000).as_deref(), Some("web1"));
    let ops = drain(&mut rx);
    assert!(
        matches!(ops[0], JournalOp::Put(k, e) if k == key && field_text(&e.server) == "web1" && e.last_seen_ms == 1_000)
    );
}

#[test]
fn least_recently_used_entry_is_evicted_beyond_capacity_and_deleted_durably() {
    let (table, mut rx) = table(2, Duration::from_secs(60));
    let (a, b, c) = (table.key(b"a"), table.key(b"b"), table.key(b"c"));
    table.set(a, "s1".into(), 1);
    table.set(b, "s2".into(), 2);
    assert!(table.get(&a, 3).is_some()); // a is now more recent than b
    table.set(c, "s3".into(), 4);
    assert_eq!(table.len(), 2);
    assert!(table.get(&b, 5).is_none());
    assert!(table.get(&a, 5).is_some());
    assert!(drain(&mut rx).contains(&JournalOp::Delete(b)));
}

#[test]
fn idle_entries_expire_on_lookup_and_on_sweep() {
    let (table, mut rx) = table(10, Duration::from_secs(1));
    let (a, b) = (table.key(b"a"), table.key(b"b"));
    table.set(a, "s1".into(), 0);
    table.set(b, "s1".into(), 500);
    assert!(table.get(&a, 1_001).is_none());
    assert_eq!(table.sweep_expired(1_400), 0);
    assert_eq!(table.sweep_expired(1_501), 1);
    assert!(table.is_empty());
    let ops = drain(&mut rx);
    assert!(ops.contains(&JournalOp::Delete(a)));
    assert!(ops.contains(&JournalOp::Delete(b)));
}

#[test]
fn a_hit_refreshes_expiry() {
    let (table, _rx) = table(10, Duration::from_secs(1));
    let a = table.key(b"a");
    table.set(a, "s1".into(), 0);
    assert!(table.get(&a, 900).is_some());
    assert!(table.get(&a, 1_800).is_some());
    assert_eq!(table.sweep_expired(2_000), 0);
}

#[test]
fn hot_hits_are_persisted_at_most_once_a_second() {
    let (table, mut rx) = table(10, Duration::from_secs(60));
    let a = table.key(b"a");
    table.set(a, "s1".into(), 0);
    for t in 1..100 {
        table.get(&a, t * 10);
    }
    assert_eq!(drain(&mut rx).len(), 1);
    table.get(&a, 1_000);
    assert_eq!(drain(&mut rx).len(), 1);
}

#[test]
fn adopt_skips_expired_entries_and_keeps_lru_order() {
    let (table, _rx) = table(2, Duration::from_secs(10));
    let (a, b, c) = (table.key(b"a"), table.key(b"b"), table.key(b"c"));
    assert!(!table.adopt(a, "s1".into(), 0, 20_000));
    assert!(table.adopt(b, "s1".into(), 15_000, 20_000));
    assert!(table.adopt(c, "s2".into(), 16_000, 20_000));
    assert_eq!(table.len(), 2);
    let views = table.snapshot();
    assert_eq!(views[0].cookie, "c");
    assert_eq!(views[1].cookie, "b");
}

#[test]
fn resolve_assigns_once_then_keeps_and_can_replace() {
    let (table, mut rx) = table(10, Duration::from_secs(60));
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
    assert_eq!(table.get(&key, 30).as_deref(), Some("web2"));
    let puts = drain(&mut rx)
        .into_iter()
        .filter(|op| matches!(op, JournalOp::Put(..)))
        .count();
    assert_eq!(puts, 2);
}

#[test]
fn resolve_sees_expired_entries_as_absent() {
    let (table, _rx) = table(10, Duration::from_secs(1));
    let key = table.key(b"s");
    table.set(key, "web1".into(), 0);
    table.resolve(key, 5_000, |current| {
        assert!(current.is_none());
        Some(((), Some(Arc::from("web2"))))
    });
    assert_eq!(table.get(&key, 5_001).as_deref(), Some("web2"));
}

#[test]
fn resolve_with_no_choice_changes_nothing() {
    let (table, mut rx) = table(10, Duration::from_secs(60));
    let key = table.key(b"s");
    assert_eq!(
        table.resolve(key, 0, |_| None::<((), Option<Arc<str>>)>),
        None
    );
    assert!(table.is_empty());
    assert!(drain(&mut rx).is_empty());
}

/// The servers of the update log entries after `after`, oldest first.
fn logged(table: &StickTable, after: u64) -> Vec<(String, String)> {
    table
        .updates_after(after, usize::MAX)
        .into_iter()
        .map(|p| (field_text(&p.key.cookie), p.server.to_string()))
        .collect()
}

#[test]
fn local_changes_are_logged_once_per_key_with_the_latest_server() {
    let (table, _rx) = table(10, Duration::from_secs(60));
    let (a, b) = (table.key(b"a"), table.key(b"b"));
    table.set(a, "s1".into(), 0);
    table.set(b, "s2".into(), 0);
    table.set(a, "s3".into(), 0);
    assert_eq!(
        logged(&table, 0),
        [("b".into(), "s2".into()), ("a".into(), "s3".into())]
    );
    let seq = table.last_seq();
    assert!(logged(&table, seq).is_empty());
    // A hit is pushed again only once per touch interval.
    assert!(table.get(&b, 500).is_some());
    assert!(logged(&table, seq).is_empty());
    assert!(table.get(&b, 1_500).is_some());
    assert_eq!(logged(&table, seq), [("b".into(), "s2".into())]);
}

#[test]
fn entries_from_peers_are_applied_but_not_logged_for_pushing() {
    let (table, mut rx) = table(10, Duration::from_secs(60));
    let key = table.key(b"p");
    assert_eq!(
        table.apply_remote(key, "s1".into(), None, 10_000),
        RemoteOutcome::Inserted
    );
    assert_eq!(table.get(&key, 10_001).as_deref(), Some("s1"));
    assert!(logged(&table, 0).is_empty());
    assert!(drain(&mut rx).iter().any(
        |op| matches!(op, JournalOp::Put(k, e) if *k == key && field_text(&e.server) == "s1")
    ));
    assert_eq!(
        table.apply_remote(key, "s1".into(), None, 20_000),
        RemoteOutcome::Refreshed
    );
    assert!(logged(&table, 0).is_empty());
}

#[test]
fn remaining_lifetime_travels_with_an_entry() {
    let (table, _rx) = table(10, Duration::from_secs(60));
    let key = table.key(b"t");
    // 10 s left of 60: it was last seen 50 s ago and expires 10 s from now.
    table.apply_remote(key, "s1".into(), Some(10_000), 100_000);
    let entry = &table.snapshot()[0];
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
fn concurrent_choices_converge_on_the_lower_rank_on_both_sides() {
    // Two nodes choose different servers for one new cookie, then receive each other's choice.
    let (left, _l) = table(10, Duration::from_secs(60));
    let (right, _r) = table(10, Duration::from_secs(60));
    let key = left.key(b"new-cookie");
    let (ours, theirs) = ("s1", "s2");
    left.set(key, ours.into(), 1_000);
    right.set(key, theirs.into(), 1_000);
    let l = left.apply_remote(key, theirs.into(), None, 1_050);
    let r = right.apply_remote(key, ours.into(), None, 1_050);
    let winner = if rank(&key, ours) < rank(&key, theirs) {
        ours
    } else {
        theirs
    };
    assert_eq!(left.get(&key, 1_100).as_deref(), Some(winner));
    assert_eq!(right.get(&key, 1_100).as_deref(), Some(winner));
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
    let (table, _rx) = table(10, Duration::from_secs(600));
    let key = table.key(b"old");
    table.set(key, "s1".into(), 0);
    let later = CONFLICT_WINDOW_MS + 10;
    // A resync entry last used 100 s before ours: ours is the current one.
    assert!(table.get(&key, 200_000).is_some());
    assert_eq!(
        table.apply_remote(key, "s2".into(), Some(500_000), 200_000),
        RemoteOutcome::KeptOurs
    );
    assert_eq!(table.get(&key, 200_001).as_deref(), Some("s1"));
    // A live update (a redispatch on the peer) replaces ours.
    assert_eq!(
        table.apply_remote(key, "s2".into(), None, 200_000 + later),
        RemoteOutcome::Replaced
    );
    assert_eq!(table.get(&key, 200_000 + later).as_deref(), Some("s2"));
}

#[test]
fn evicted_and_expired_entries_leave_the_update_log() {
    let (table, _rx) = table(2, Duration::from_secs(1));
    for (i, cookie) in [b"a", b"b", b"c"].iter().enumerate() {
        table.set(table.key(*cookie), "s1".into(), i as u64);
    }
    assert_eq!(logged(&table, 0).len(), 2);
    table.sweep_expired(10_000);
    assert!(logged(&table, 0).is_empty());
}

struct Shared(Vec<(StickKey, &'static str, u64)>);

impl Fallback for Shared {
    fn lookup(&self, key: &StickKey) -> Option<(Arc<str>, u64)> {
        let (_, server, seen) = self.0.iter().find(|(k, _, _)| k == key)?;
        Some((Arc::from(*server), *seen))
    }
}

#[test]
fn a_miss_is_looked_up_in_the_fallback_before_it_is_a_new_session() {
    let (table, mut rx) = table(10, Duration::from_secs(60));
    let (known, stale) = (table.key(b"known"), table.key(b"stale"));
    table.set_fallback(Arc::new(Shared(vec![
        (known, "s7", 90_000),
        (stale, "s7", 1_000),
    ])));
    table.resolve(known, 90_500, |current| {
        assert_eq!(current, Some("s7"));
        Some(((), None))
    });
    table.resolve(stale, 90_500, |current| {
        assert_eq!(current, None, "an expired entry is no entry");
        Some(((), None))
    });
    assert_eq!(table.len(), 1);
    assert!(
        logged(&table, 0).is_empty(),
        "an adopted entry is not a new decision"
    );
    assert!(drain(&mut rx).is_empty());
}
