//! The cluster section of `BENCHMARKS.md`: each workload's table, ratios to HAProxy from the
//! same run, and the targets.

use std::fmt::Write as _;

use super::{ClusterReport, LagResult, PartitionResult, ResyncResult};
use crate::contender::Contender;

/// The mirror-lag target: p99 until visible on every other node, at this rate, in ms.
const LAG_TARGET_MS: f64 = 50.0;
const LAG_TARGET_RATE: f64 = 10_000.0;
/// Identical tables within this long of healing, with 100k sessions.
const CONVERGE_TARGET_S: f64 = 2.0;

pub(crate) fn section(out: &mut String, cluster: Option<&ClusterReport>) {
    let Some(cluster) = cluster else {
        return;
    };
    let plan = &cluster.plan;
    let _ = writeln!(
        out,
        "## Cluster (full mesh of peers)\n\n\
         Nodes of one contender on one LAN (a bridge), every node a peer of every other \
         (stickylb `[peers].members`, HAProxy `peers` with `stick-table ... peers`), clients \
         addressing nodes directly. Tables are read from outside: stickylb's pinned maps (a \
         lookup per key) and `/metrics`, HAProxy's `show table` on its stats socket.\n\n\
         - **mirror lag**: {nodes} nodes; `stickylb-load` makes new sessions on node 1 at \
         {rate:.0}/s for {secs:.0} s, twice: a new connection and cookie per request (as \
         browsers arrive), then a new cookie per request on 64 connections kept open (as \
         sessions arrive through a proxy or CDN tier; on a small machine the only shape that \
         reaches the rate, since opening connections costs the load generator and the kernel \
         more than mirroring costs the nodes); {samples:.0} \
         sample sessions a second, each timed from sending its request to the first poll (about \
         1 ms apart) that finds it on each other node. Costs per mirrored session are those of \
         the nodes that only receive: CPU from `/proc`, bytes their interface took in and sent \
         (peers traffic with headers).\n\
         - **partition**: {pnodes} nodes; {before} sessions filled in through node 1 \
         (keep-alive requests, a new cookie each) and mirrored, then the last node's peers \
         traffic is dropped (`ip rule ... blackhole` on the peers port in its namespace) for at \
         least {hold:.0} s while new sessions are made at {prate:.0}/s for {making:.0} s, half \
         on node 1 and half on the cut-off node (a new connection and cookie per request); then \
         healed. Time from the heal until every table is identical (sizes polled every 20 ms, \
         then dumps compared).\n\
         - **resync**: 3 nodes; {entries} sessions filled through node 1 (mirrored to node 2), \
         then node 3 starts empty; time from its start until it holds them all (size polled \
         every 50 ms). Both holders teach it (a full resync per peer session).\n",
        nodes = plan.lag_nodes,
        rate = plan.lag_rate,
        secs = plan.lag_duration.as_secs_f64(),
        samples = plan.lag_samples_per_s,
        pnodes = plan.partition_nodes,
        before = plan.partition_before(),
        prate = plan.partition_rate,
        making = plan.partition_making.as_secs_f64(),
        hold = plan.partition_hold.as_secs_f64(),
        entries = plan.resync_entries,
    );
    lag(out, &cluster.mirror_lag);
    partition(out, &cluster.partition);
    resync(out, &cluster.resync);
    failed(out, cluster);
    targets(out, cluster);
}

fn lag(out: &mut String, results: &[LagResult]) {
    if results.is_empty() {
        return;
    }
    out.push_str(
        "### Mirror lag and the cost of mirroring\n\n\
         | contender | sessions arrive on | nodes | new sessions/s (offered) | lag p50 ms | lag p99 ms | on all p50 ms | \
         on all p99 ms | missing | peer connections per node | sender CPU µs/session | \
         receiver CPU µs/mirrored session | bytes in/mirrored session | bytes out/mirrored session | \
         p99 on all vs HAProxy |\n|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n",
    );
    for r in results {
        let same_shape: Vec<&LagResult> = results.iter().filter(|o| o.shape == r.shape).collect();
        let haproxy = haproxy(&same_shape, |o| o.contender, |o| o.all_p99_ms);
        let c = &r.costs;
        let connections = match (
            c.peer_connections.iter().min(),
            c.peer_connections.iter().max(),
        ) {
            (Some(min), Some(max)) if min == max => min.to_string(),
            (Some(min), Some(max)) => format!("{min}-{max}"),
            _ => "-".to_owned(),
        };
        let _ = writeln!(
            out,
            "| {} | {} | {} | {:.0} ({:.0}) | {} | {} | {} | {} | {} of {} | {connections} | {} | {} | {} | {} | {} |",
            r.contender.label(),
            r.shape.label(),
            r.nodes,
            r.achieved_rate,
            r.target_rate,
            num(r.p50_ms, 1),
            num(r.p99_ms, 1),
            num(r.all_p50_ms, 1),
            num(r.all_p99_ms, 1),
            r.missing,
            r.samples * r.nodes.saturating_sub(1),
            num(c.sender_cpu_us_per_session, 1),
            num(c.receiver_cpu_us_per_session, 1),
            num(c.bytes_in_per_session, 0),
            num(c.bytes_out_per_session, 0),
            ratio(r.all_p99_ms, haproxy),
        );
    }
    out.push('\n');
}

fn partition(out: &mut String, results: &[PartitionResult]) {
    if results.is_empty() {
        return;
    }
    out.push_str(
        "### Convergence after a partition\n\n\
         | contender | nodes | sessions before | during: majority + isolated | partition s | \
         tables at heal | entries after | identical after s | vs HAProxy |\n\
         |---|---|---|---|---|---|---|---|---|\n",
    );
    let haproxy = haproxy(results, |r| r.contender, |r| r.converged_s);
    for r in results {
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} + {} | {:.1} | {} | {} | {} | {} |",
            r.contender.label(),
            r.nodes,
            r.made_before,
            r.made_majority,
            r.made_isolated,
            r.partition_s,
            r.tables_at_heal(),
            r.entries,
            r.converged_s
                .map_or("not within the limit".to_owned(), |s| format!("{s:.2}")),
            ratio(r.converged_s, haproxy),
        );
    }
    out.push('\n');
}

fn resync(out: &mut String, results: &[ResyncResult]) {
    if results.is_empty() {
        return;
    }
    out.push_str(
        "### A node joining\n\n\
         | contender | sessions held | fill s | mirrored to node 2 after s | resync s | sessions/s | \
         entries learned | bytes in/session | joiner CPU µs/session | teachers' CPU µs/session | \
         vs HAProxy |\n|---|---|---|---|---|---|---|---|---|---|---|\n",
    );
    let haproxy = haproxy(results, |r| r.contender, |r| r.resync_s);
    for r in results {
        let _ = writeln!(
            out,
            "| {} | {} | {:.1} | {:.1} | {} | {} | {} | {} | {} | {} | {} |",
            r.contender.label(),
            r.entries,
            r.fill_s,
            r.mirror_catch_up_s,
            r.resync_s
                .map_or("not within the limit".to_owned(), |s| format!("{s:.2}")),
            num(r.rate(), 0),
            r.joiner_entries,
            num(r.bytes_in_per_entry, 0),
            num(r.joiner_cpu_us_per_entry, 2),
            num(r.teachers_cpu_us_per_entry, 2),
            ratio(r.resync_s, haproxy),
        );
    }
    out.push_str(
        "\nRatios are stickylb's time over HAProxy's from the same run: below 1 is faster.\n\n",
    );
}

fn failed(out: &mut String, cluster: &ClusterReport) {
    if cluster.failed.is_empty() {
        return;
    }
    out.push_str("### Did not finish\n\n");
    for f in &cluster.failed {
        let _ = writeln!(
            out,
            "- {} against {}: {}",
            f.workload,
            f.contender.label(),
            f.error
        );
    }
    out.push('\n');
}

fn targets(out: &mut String, cluster: &ClusterReport) {
    let mut lines = Vec::new();
    for r in &cluster.mirror_lag {
        let rate = if r.achieved_rate < 0.95 * LAG_TARGET_RATE {
            format!(
                " (but only {:.0} new sessions/s were reached of the {LAG_TARGET_RATE:.0} asked)",
                r.achieved_rate
            )
        } else {
            String::new()
        };
        lines.push(format!(
            "- mirror lag p99 (visible on every other node) < {LAG_TARGET_MS:.0} ms at \
             {LAG_TARGET_RATE:.0} new sessions/s across {} nodes, {}, {}: {}{rate}",
            r.nodes,
            r.contender.label(),
            r.shape.label(),
            verdict(r.all_p99_ms.filter(|_| r.missing == 0), LAG_TARGET_MS, "ms"),
        ));
    }
    for r in &cluster.partition {
        lines.push(format!(
            "- identical tables within {CONVERGE_TARGET_S:.0} s of healing ({} entries here; the \
             target is for 100k), {}: {}",
            r.entries,
            r.contender.label(),
            verdict(r.converged_s, CONVERGE_TARGET_S, "s"),
        ));
    }
    if lines.is_empty() {
        return;
    }
    out.push_str("### Cluster targets\n\n");
    for line in lines {
        out.push_str(&line);
        out.push('\n');
    }
    out.push('\n');
}

fn verdict(value: Option<f64>, limit: f64, unit: &str) -> String {
    match value {
        Some(v) if v < limit => format!("met ({v:.2} {unit})"),
        Some(v) => format!("**missed** ({v:.2} {unit})"),
        None => {
            "**missed** (not measured to the end: missing samples or no convergence)".to_owned()
        }
    }
}

/// HAProxy's `value` in `results`, the baseline of the ratios.
fn haproxy<T>(
    results: &[T],
    contender: impl Fn(&T) -> Contender,
    value: impl Fn(&T) -> Option<f64>,
) -> Option<f64> {
    results
        .iter()
        .find(|r| contender(r) == Contender::Haproxy)
        .and_then(value)
}

fn num(value: Option<f64>, decimals: usize) -> String {
    value.map_or("-".to_owned(), |v| format!("{v:.decimals$}"))
}

fn ratio(value: Option<f64>, haproxy: Option<f64>) -> String {
    match (value, haproxy) {
        (Some(v), Some(h)) if h > 0.0 => format!("{:.2}x", v / h),
        _ => "-".to_owned(),
    }
}
