//! The shield on `/monitor` and `/metrics`: its section and families appear with the shield
//! only, its counters by verdict, its interfaces with their modes, escaped.

use lb_common::{
    SHIELD_STAT_DROPPED_DENY, SHIELD_STAT_DROPPED_RATE, SHIELD_STAT_PASSED, SHIELD_STAT_REFUNDED,
};

use super::{
    metrics, page,
    tests::{fixture, parse_metrics},
    view::{ShieldCounters, ShieldView, Snapshot},
};
use crate::table::now_ms;

fn with_shield() -> Snapshot {
    let mut snapshot = Snapshot::read(&fixture(), now_ms());
    snapshot.shield = Some(ShieldView {
        interfaces: vec![
            ("eth0".to_owned(), "native"),
            ("<i>eth1</i>".to_owned(), "generic"),
        ],
        counters: Some(ShieldCounters {
            dropped_deny: 7,
            dropped_rate: 123_456,
            passed: 9_876,
            refunded: 4_321,
        }),
        syn_limit: Some((200, 400)),
    });
    snapshot
}

#[test]
fn counters_come_from_their_slots() {
    let mut slots = [0u64; lb_common::SHIELD_STATS_LEN as usize];
    slots[SHIELD_STAT_DROPPED_DENY as usize] = 1;
    slots[SHIELD_STAT_DROPPED_RATE as usize] = 2;
    slots[SHIELD_STAT_PASSED as usize] = 3;
    slots[SHIELD_STAT_REFUNDED as usize] = 4;
    let counters = ShieldCounters::from_slots(&slots);
    assert_eq!(counters.refunded, 4);
    assert_eq!(
        counters.by_verdict(),
        [("dropped_deny", 1), ("dropped_rate", 2), ("passed", 3)]
    );
}

#[test]
fn metrics_show_packets_by_verdict_interfaces_and_the_limit() {
    let text = metrics::render(&with_shield());
    let samples = parse_metrics(&text);
    let value = |name: &str, label: (&str, &str)| {
        samples
            .iter()
            .find(|s| s.name == name && s.labels.get(label.0).map(String::as_str) == Some(label.1))
            .map(|s| s.value)
            .unwrap_or_else(|| panic!("no {name} {label:?} in\n{text}"))
    };
    let packets = "stickylb_shield_packets_total";
    assert_eq!(value(packets, ("verdict", "dropped_deny")), 7.0);
    assert_eq!(value(packets, ("verdict", "dropped_rate")), 123_456.0);
    assert_eq!(value(packets, ("verdict", "passed")), 9_876.0);
    let refunded = samples
        .iter()
        .find(|s| s.name == "stickylb_shield_syn_refunded_total")
        .map(|s| s.value);
    assert_eq!(refunded, Some(4_321.0));
    let interface = "stickylb_shield_interface";
    assert_eq!(value(interface, ("mode", "native")), 1.0);
    assert_eq!(value(interface, ("interface", "<i>eth1</i>")), 1.0);
    assert!(text.contains("stickylb_shield_syn_rate 200\n"), "{text}");
    assert!(text.contains("stickylb_shield_syn_burst 400\n"), "{text}");

    let without = metrics::render(&Snapshot::read(&fixture(), now_ms()));
    assert!(!without.contains("stickylb_shield"), "{without}");
}

#[test]
fn the_page_has_a_shield_section_with_modes_and_counters() {
    let html = page::render(&with_shield());
    let start = html.find("id=\"shield\"").expect("a shield section");
    let section = &html[start..];
    let section = &section[..section.find("</section>").unwrap()];
    for needle in [
        "SYN limit per source 200/s, 400 at once",
        "<span>Dropped by rule</span><b>7</b>",
        "<span>Dropped by rate</span><b>123456</b>",
        "<span>Passed</span><b>9876</b>",
        "<span>SYNs refunded</span><b>4321</b>",
        "<td class=\"l\">eth0</td><td class=\"l\">native</td>",
        "&lt;i&gt;eth1&lt;/i&gt;",
    ] {
        assert!(section.contains(needle), "{needle} not in {section}");
    }
    assert!(!section.contains("<i>eth1"), "unescaped: {section}");

    let without = page::render(&Snapshot::read(&fixture(), now_ms()));
    assert!(!without.contains("id=\"shield\""));
}
