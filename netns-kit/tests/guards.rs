//! The guards remove what they made: at the end of a scope, while a panic unwinds, and (for a
//! process that died before its guards could run) on the next run's sweep. Needs root; skips
//! without it, except under `CI=true` or `STICKYLB_REQUIRE_PRIVILEGED=1`, where it fails.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test code: a failed setup step must fail the test loudly"
)]

use std::{
    panic::{self, AssertUnwindSafe},
    process::{Child, Stdio},
    thread,
    time::{Duration, Instant},
};

mod common;

use common::privileged;
use netns_kit::{exists, pids, Lan, LanAddrs, Names, NetNs, Routed, RoutedAddrs};

/// Not `slb-` or `slbbench-`: the sweep below must never meet the other users' namespaces.
const NAMES: Names = Names::new("slbkit-");

/// Whether `child` ends within a few seconds (reaped, so a zombie does not count as alive).
fn ends_soon(child: &mut Child) -> bool {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        if matches!(child.try_wait(), Ok(Some(_))) {
            return true;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            return false;
        }
        thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn a_panic_inside_the_scope_removes_the_namespace_and_its_processes() {
    if !privileged() {
        return;
    }
    let name = NAMES.unique("panic");
    let mut child = None;
    let mut seen = false;
    let outcome = panic::catch_unwind(AssertUnwindSafe(|| {
        let netns = NetNs::create(name.clone()).unwrap();
        child = Some(
            netns
                .command("sleep")
                .arg("60")
                .stdout(Stdio::null())
                .spawn()
                .unwrap(),
        );
        // nsenter joins, then execs sleep: wait until the namespace holds it.
        let deadline = Instant::now() + Duration::from_secs(5);
        while pids(netns.name()).unwrap().is_empty() && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(10));
        }
        seen = exists(netns.name()) && !pids(netns.name()).unwrap().is_empty();
        panic!("a test step fails while the guard is in scope");
    }));
    assert!(outcome.is_err(), "the closure panics");
    assert!(
        seen,
        "the namespace (with sleep in it) did not exist inside the scope"
    );
    assert!(!exists(&name), "{name} is still there after the panic");
    let mut child = child.unwrap();
    assert!(ends_soon(&mut child), "sleep outlived its namespace");
}

#[test]
fn a_kept_namespace_outlives_its_guard_until_removed() {
    if !privileged() {
        return;
    }
    let name = NetNs::create(NAMES.unique("kept")).unwrap().keep();
    assert!(exists(&name));
    netns_kit::remove(&name).unwrap();
    assert!(!exists(&name));
    // Removing what is not there is no error: a teardown may run twice.
    netns_kit::remove(&name).unwrap();
}

#[test]
fn the_sweep_removes_namespaces_of_processes_that_are_gone_and_only_those() {
    if !privileged() {
        return;
    }
    // pid_max is at most 2^22: no process has this pid.
    let stale = NetNs::create("slbkit-99999999-left").unwrap().keep();
    let live = NetNs::create(NAMES.unique("live")).unwrap();
    let removed = NAMES.remove_stale();
    assert!(
        removed
            .iter()
            .any(|s| s.name == stale && s.pid == 99_999_999),
        "{removed:?}"
    );
    assert!(!exists(&stale));
    assert!(
        exists(live.name()),
        "the sweep took a live process's namespace"
    );
}

#[test]
fn both_layouts_connect_their_hosts_and_go_away_whole() {
    if !privileged() {
        return;
    }
    let ping = |from: &NetNs, to: std::net::Ipv4Addr| {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let ok = from
                .command("ping")
                .args(["-c1", "-W1", &to.to_string()])
                .stdout(Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
            if ok || Instant::now() >= deadline {
                return ok;
            }
        }
    };
    let names;
    {
        let routed = Routed::create(RoutedAddrs::new(209), &|role| NAMES.unique(role)).unwrap();
        let lan = Lan::create(LanAddrs::new(209, 11), 2, &|role| NAMES.unique(role)).unwrap();
        assert!(ping(&routed.client, routed.addrs.lb()));
        assert!(ping(&routed.backends, routed.addrs.lb_backend_side()));
        assert!(ping(&lan.client, lan.addrs.lb(1)));
        lan.set_lb_attached(1, false).unwrap();
        assert!(!ping(&lan.lbs[0], lan.addrs.lb(1)));
        lan.set_lb_attached(1, true).unwrap();
        assert!(ping(&lan.lbs[0], lan.addrs.lb(1)));
        names = [
            routed.client.name(),
            routed.lb.name(),
            routed.backends.name(),
            lan.switch.netns().name(),
            lan.lbs[1].name(),
        ]
        .map(str::to_owned);
    }
    for name in names {
        assert!(!exists(&name), "{name} outlived its layout");
    }
    assert!(
        Lan::create(LanAddrs::new(209, 11), 90, &|role| NAMES.unique(role)).is_err(),
        "a LAN whose load balancers reach .100"
    );
}
