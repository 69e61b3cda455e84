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
