//! The splice translation at XDP (docs/SPLICE.md, "At XDP"): with `[fastpath] xdp = "auto"`
//! on veths whose far ends take redirected frames (GRO on), the daemon attaches `splice_xdp` in
//! native mode, and the packets of a spliced keep-alive connection and of a spliced download
//! are translated at XDP and arrive intact; with the shield on the frontend's interface, the
//! shield's own program (`shield_splice`) translates there after its verdict, and both flows
//! are still translated at XDP;
//! where the far ends have GRO off (no interface takes redirected frames), XDP translates
//! nothing and TC everything; a shield on by default that cannot start leaves XDP to the fast
//! path's own program. The real daemon, in
//! namespaces (`common::fastpath::Rig`).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test code: a failed setup step must fail the test loudly"
)]

mod common;

use common::{
    fastpath::{backend_body_sha256, metric, outcome, Client, Rig},
    http::in_netns,
};
use lb_common::{
    SHIELD_STAT_PASSED, SPLICE_STAT_DROPPED, SPLICE_STAT_REDIRECTED, SPLICE_STAT_XDP_REDIRECTED,
};
use stickylb::{
    fastpath::program::read_pinned_stats, shield::program::read_pinned_stats as read_shield_stats,
};

const DOWNLOAD: usize = 20 * 1024 * 1024;

/// (translated in all, translated at XDP), from the pinned counters.
fn translated(rig: &Rig) -> (u64, u64) {
    let stats = read_pinned_stats(&rig.root).unwrap();
    assert_eq!(stats[SPLICE_STAT_DROPPED as usize], 0, "{stats:?}");
    (
        stats[SPLICE_STAT_REDIRECTED as usize],
        stats[SPLICE_STAT_XDP_REDIRECTED as usize],
    )
}

/// The `/metrics` line of a fast path interface that takes redirected frames.
fn interface_line(interface: &str, translation: &str, xdp: &str) -> String {
    interface_line_target(interface, translation, xdp, "yes")
}

fn interface_line_target(interface: &str, translation: &str, xdp: &str, target: &str) -> String {
    format!(
        "stickylb_fastpath_interface{{interface=\"{interface}\",translation=\"{translation}\",\
         xdp=\"{xdp}\",xdp_redirect_target=\"{target}\"}} 1"
    )
}

/// A keep-alive connection of 50 requests, handed over after its first, then a connection that
/// downloads `DOWNLOAD` bytes after its first request. Returns each flow's (translated,
/// translated at XDP) packets, and the download's sha256.
fn keep_alive_then_download(rig: &Rig) -> [(u64, u64); 2] {
    let start = translated(rig);
    let addr = rig.frontend();
    let servers = in_netns(rig.client().name(), move || {
        let mut client = Client::connect(&addr, "xdp-keepalive").unwrap();
        let servers: Vec<String> = (0..50).map(|_| client.get("/", false).unwrap()).collect();
        client.close().unwrap();
        servers
    });
    assert!(servers.iter().all(|s| *s == servers[0]), "{servers:?}");
    let keep_alive = translated(rig);

    let addr = rig.frontend();
    let (first, (server, digest)) = in_netns(rig.client().name(), move || {
        let mut client = Client::connect(&addr, "xdp-download").unwrap();
        let first = client.get("/", false).unwrap();
        let download = client.get_sha256(&format!("/bytes/{DOWNLOAD}")).unwrap();
        client.close().unwrap();
        (first, download)
    });
    assert_eq!(server, first, "the download came from the sticky server");
    assert_eq!(
        digest,
        backend_body_sha256(DOWNLOAD as u64),
        "the spliced download arrived changed"
    );
    let download = translated(rig);
    let metrics = rig.metrics();
    assert_eq!(outcome(&metrics, "spliced"), 2, "{metrics}");
    [
        (keep_alive.0 - start.0, keep_alive.1 - start.1),
        (download.0 - keep_alive.0, download.1 - keep_alive.1),
    ]
}

#[test]
fn spliced_keep_alive_and_download_flows_are_translated_at_xdp() {
    if !common::privileged() {
        return;
    }
    // The shield off (it is on by default here): the fast path's own XDP program on every
    // interface. The shield's program translating is the next test's.
    let rig = Rig::routed_xdp(
        "fpx",
        244,
        "[fastpath]\nafter_requests = 1\n\n[shield]\nenabled = false\n",
    );
    let daemon = rig.start();
    let [keep_alive, download] = keep_alive_then_download(&rig);
    eprintln!("translated (all, at XDP): keep-alive {keep_alive:?}, download {download:?}");
    // A flow's first packets in each direction go through TC, until the other direction's
    // packets have shown the XDP program the MAC addresses; the rest is translated at XDP.
    for (flow, (all, xdp)) in [("keep-alive", keep_alive), ("download", download)] {
        assert!(all > 0, "{flow}: nothing translated");
        assert!(
            xdp * 10 >= all * 9,
            "{flow}: {xdp} of {all} packets translated at XDP"
        );
    }
    // 20 MiB in packets of at most the MTU (the XDP program is not multi-buffer aware, so the
    // senders' veths do not aggregate).
    assert!(download.1 > (DOWNLOAD / 1500) as u64, "{download:?}");
    let metrics = rig.metrics();
    for interface in ["veth-client", "veth-backends"] {
        assert!(
            metrics.contains(&interface_line(interface, "xdp", "native")),
            "{interface} at XDP: {metrics}"
        );
    }
    assert!(
        metric(
            &metrics,
            "stickylb_fastpath_program_packets_total{counter=\"xdp_redirected\"}"
        ) >= download.1,
        "{metrics}"
    );
    let log = daemon.output();
    assert!(
        log.contains("translation=\"xdp\"") || log.contains("translation=xdp"),
        "the log says where the translation runs: {log}"
    );
}

#[test]
fn with_the_shield_on_the_frontend_interface_its_program_translates_too() {
    if !common::privileged() {
        return;
    }
    let rig = Rig::routed_xdp(
        "fpxs",
        245,
        "[fastpath]\nafter_requests = 1\n\n[shield]\nenabled = true\n",
    );
    let daemon = rig.start();
    let shield_before = read_shield_stats(&rig.root).unwrap();
    let [keep_alive, download] = keep_alive_then_download(&rig);
    eprintln!("translated (all, at XDP): keep-alive {keep_alive:?}, download {download:?}");
    let metrics = rig.metrics();
    // One XDP program on the client's side: the shield's, translating as `splice_xdp` does.
    assert!(
        metrics.contains(&interface_line("veth-client", "xdp", "shield")),
        "{metrics}"
    );
    assert!(
        metrics.contains(&interface_line("veth-backends", "xdp", "native")),
        "{metrics}"
    );
    assert!(
        metrics.contains("stickylb_shield_interface{interface=\"veth-client\",mode=\"native\"} 1"),
        "{metrics}"
    );
    assert!(
        daemon.output().contains("WithTranslation"),
        "the log names the shield's program: {}",
        daemon.output()
    );
    // Both directions at XDP (as without the shield): the client's packets, which arrive
    // through the shield's program, showed the backends' side the client's MAC addresses.
    for (flow, (all, xdp)) in [("keep-alive", keep_alive), ("download", download)] {
        assert!(all > 0, "{flow}: nothing translated");
        assert!(
            xdp * 10 >= all * 9,
            "{flow}: {xdp} of {all} packets translated at XDP"
        );
    }
    // And every one of the client's packets met the shield first.
    let shield_after = read_shield_stats(&rig.root).unwrap();
    let passed = SHIELD_STAT_PASSED as usize;
    assert!(
        shield_after[passed] - shield_before[passed] >= keep_alive.0 / 2,
        "the shield passed {} packets, {keep_alive:?} translated",
        shield_after[passed] - shield_before[passed]
    );
}

#[test]
fn without_gro_at_the_far_ends_no_interface_is_a_redirect_target_and_tc_translates() {
    if !common::privileged() {
        return;
    }
    let rig = Rig::routed_xdp_without_gro(
        "fpxg",
        246,
        "[fastpath]\nafter_requests = 1\n\n[shield]\nenabled = false\n",
    );
    let _daemon = rig.start();
    let [keep_alive, download] = keep_alive_then_download(&rig);
    let metrics = rig.metrics();
    for interface in ["veth-client", "veth-backends"] {
        assert!(
            metrics.contains(&interface_line_target(interface, "xdp", "native", "no")),
            "{interface}: {metrics}"
        );
    }
    // Redirecting there would lose the frames: every packet passed to TC.
    assert_eq!((keep_alive.1, download.1), (0, 0));
    assert!(
        keep_alive.0 > 0 && download.0 > 0,
        "{keep_alive:?} {download:?}"
    );
}

#[test]
fn a_default_shield_that_cannot_start_leaves_xdp_to_the_fast_paths_own_program() {
    if !common::privileged() {
        return;
    }
    // No `[shield]` section: the shield is on by default (the frontend binds the lb's address)
    // and, with the translation at XDP, would take XDP on the client's side with its own
    // translating program. A map of the wrong layout where its counters are pinned (what a
    // stale or foreign pin looks like) makes its start fail.
    let rig = Rig::routed_xdp("fpxd", 247, "[fastpath]\nafter_requests = 1\n");
    std::fs::create_dir_all(&rig.root).unwrap();
    let bogus = rig.root.join(lb_common::SHIELD_STATS_MAP);
    let out = std::process::Command::new("bpftool")
        .args(["map", "create"])
        .arg(&bogus)
        .args(["type", "array", "key", "4", "value", "4", "entries", "1"])
        .args(["name", "bogus"])
        .output()
        .unwrap();
    assert!(out.status.success(), "bpftool map create: {out:?}");
    let daemon = rig.start();
    let log = daemon.output();
    assert!(
        log.contains("on by default but could not start"),
        "the log says the default shield did not start: {log}"
    );
    let [keep_alive, download] = keep_alive_then_download(&rig);
    let metrics = rig.metrics();
    // Both sides at XDP with the fast path's own program, as with the shield off, rather than
    // left to a shield that is not there.
    for interface in ["veth-client", "veth-backends"] {
        assert!(
            metrics.contains(&interface_line(interface, "xdp", "native")),
            "{interface} at XDP: {metrics}"
        );
    }
    assert!(!metrics.contains("stickylb_shield_interface{"), "{metrics}");
    for (flow, (all, xdp)) in [("keep-alive", keep_alive), ("download", download)] {
        assert!(all > 0, "{flow}: nothing translated");
        assert!(
            xdp * 10 >= all * 9,
            "{flow}: {xdp} of {all} packets translated at XDP"
        );
    }
}
