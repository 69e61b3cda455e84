//! The multi-node LAN topology of the test harness: every host reaches every other over the
//! bridge, and a partitioned lb is cut off until healed.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test code: a failed setup step must fail the test loudly"
)]

mod common;

use std::time::Duration;

use common::{
    netns::{Exec as _, Lan, NetNs},
    privileged, wait_until,
};

fn ping(from: &NetNs, to: &str) -> bool {
    from.try_exec(&["ping", "-c1", "-W1", to]).0
}

/// Reachable within a few seconds: fresh veths take a moment to carry, and a loaded machine
/// may miss one ping.
fn reaches(from: &NetNs, to: &str) -> bool {
    wait_until(Duration::from_secs(5), || ping(from, to))
}

#[test]
fn lan_connects_partitions_and_heals() {
    if !privileged() {
        return;
    }
    let lan = Lan::new("lan", 219, 3);

    for i in 0..lan.lbs.len() {
        let addr = lan.lb_addr(i);
        assert!(
            reaches(&lan.client, &addr),
            "client cannot ping lb{i} {addr}"
        );
    }
    assert!(
        reaches(&lan.client, &lan.backend_addr()),
        "client cannot ping the backends"
    );
    assert!(reaches(&lan.lbs[0], &lan.lb_addr(2)), "lb0 cannot ping lb2");

    lan.partition(1);
    assert!(
        !ping(&lan.lbs[0], &lan.lb_addr(1)),
        "lb0 still pings the partitioned lb1"
    );
    assert!(
        reaches(&lan.lbs[0], &lan.lb_addr(2)),
        "lb0 lost lb2 while only lb1 is partitioned"
    );

    lan.heal(1);
    assert!(
        reaches(&lan.lbs[0], &lan.lb_addr(1)),
        "lb0 cannot ping lb1 after the heal"
    );
}
