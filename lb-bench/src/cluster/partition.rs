//! Convergence after a partition: most sessions are filled in through node 1 and mirrored; then
//! the last node is cut off its peers ([`Mesh::partition`]) while clients make new sessions at
//! a fixed rate, half on node 1 and half on the cut-off node; then the cut heals. Timed: from the
//! heal until every node's table is the same (cookie -> server, compared in full).
//!
//! The tables' sizes are polled every 20 ms; once they agree, every table is dumped and
//! compared. The time is that of the poll whose sizes agreed, when the dumps agree too (else
//! polling goes on).

use std::time::{Duration, Instant};

use anyhow::bail;
use serde::Serialize;

use super::{
    addrs, all_at_least, counts, fill, linked_readers,
    mesh::{Hosts, Mesh},
    poll_until,
    probe::Prober,
    tables::{Dump, Reader},
    ClusterPlan,
};
use crate::{
    contender::Contender,
    env::Env,
    load::{self, LoadResult, LoadSpec},
    procs,
};

/// Concurrent connections of each load generator.
const CONNECTIONS: u32 = 32;

#[derive(Clone, Debug, Serialize)]
pub(crate) struct PartitionResult {
    pub(crate) contender: Contender,
    pub(crate) nodes: usize,
    /// Sessions made before the partition, and during it on each side.
    pub(crate) made_before: u64,
    pub(crate) made_majority: u64,
    pub(crate) made_isolated: u64,
    pub(crate) partition_s: f64,
    /// Each node's table size when the partition healed (None: it did not answer).
    pub(crate) entries_at_heal: Vec<Option<u64>>,
    /// Entries of every table once they agreed.
    pub(crate) entries: u64,
    /// From the heal until every table was the same; None: not within the limit.
    pub(crate) converged_s: Option<f64>,
}

impl PartitionResult {
    /// Each node's table size at the heal, `?` for a node that did not answer.
    pub(crate) fn tables_at_heal(&self) -> String {
        let sizes: Vec<String> = self
            .entries_at_heal
            .iter()
            .map(|size| size.map_or("?".to_owned(), |s| s.to_string()))
            .collect();
        sizes.join(" / ")
    }

    pub(crate) fn progress(&self) -> String {
        let converged = self.converged_s.map_or("did not converge".to_owned(), |s| {
            format!("converged in {s:.2} s")
        });
        format!(
            "{} nodes, {} + {} sessions during a {:.1} s partition, tables at heal {}, \
             {converged} with {} entries",
            self.nodes,
            self.made_majority,
            self.made_isolated,
            self.partition_s,
            self.tables_at_heal(),
            self.entries
        )
    }
}

pub(crate) fn measure(
    env: &Env,
    hosts: &Hosts,
    contender: Contender,
    plan: &ClusterPlan,
) -> anyhow::Result<PartitionResult> {
    let mut mesh = Mesh::new(env, hosts, contender, plan.partition_nodes)?;
    mesh.start_all()?;
    mesh.run_then_stop(|mesh| run(env, hosts, mesh, plan))
}

fn run(
    env: &Env,
    hosts: &Hosts,
    mesh: &Mesh<'_>,
    plan: &ClusterPlan,
) -> anyhow::Result<PartitionResult> {
    let (probe, mut readers) = linked_readers(hosts, mesh, mesh.size, plan.limit)?;
    let linked = mesh.size as u64;
    let isolated = mesh.size - 1;
    fill(
        env,
        hosts,
        &mut readers[..1],
        &probe,
        plan.partition_before(),
        plan.limit,
    )?;
    // Everyone has them before the cut (the link checks' sessions included).
    let mut before = 0;
    let mirrored = poll_until(plan.limit, Duration::from_millis(50), || {
        let sizes = counts(&mut readers, &probe);
        before = sizes[0].unwrap_or(u64::MAX);
        Ok(all_at_least(&sizes, before))
    })?;
    if mirrored.is_none() {
        bail!(
            "the sessions made before the partition were not everywhere within {:?}",
            plan.limit
        );
    }
    mesh.partition(isolated)?;
    let cut = Instant::now();
    let during = make(
        env,
        hosts,
        &[(0, "pa"), (isolated, "pb")],
        plan.partition_rate / 2.0,
        plan.partition_making,
    )?;
    procs::sleep(plan.partition_hold.saturating_sub(cut.elapsed()))?;
    let entries_at_heal = counts(&mut readers, &probe);
    let partition_s = cut.elapsed().as_secs_f64();
    mesh.heal()?;
    let expected = before + total(&during);
    let (converged, entries) = converge(&mut readers, &probe, expected, plan.converge_limit)?;
    Ok(PartitionResult {
        contender: mesh.contender,
        nodes: mesh.size,
        made_before: before - linked,
        made_majority: during.first().map_or(0, |r| r.requests),
        made_isolated: during.get(1).map_or(0, |r| r.requests),
        partition_s,
        entries_at_heal,
        entries,
        converged_s: converged.map(|d| d.as_secs_f64()),
    })
}

/// New sessions through each `(node, cookie prefix)` at `rate` each, for `duration`, all at once.
fn make(
    env: &Env,
    hosts: &Hosts,
    sides: &[(usize, &str)],
    rate: f64,
    duration: Duration,
) -> anyhow::Result<Vec<LoadResult>> {
    let targets: Vec<String> = sides
        .iter()
        .map(|(node, _)| addrs::frontend(*node).to_string())
        .collect();
    let mut running = Vec::new();
    for ((_, prefix), target) in sides.iter().zip(&targets) {
        let spec = LoadSpec {
            per_connection: 1,
            pool: 0,
            rate,
            ..LoadSpec::new(target, CONNECTIONS, duration, prefix)
        };
        running.push(load::start(hosts.client(), &env.load, &spec)?);
    }
    running
        .into_iter()
        .map(|child| load::finish(child, duration))
        .collect()
}

fn total(results: &[LoadResult]) -> u64 {
    results.iter().map(|r| r.requests).sum()
}

/// Polls until every table holds the same entries, at least `expected` of them: how long that
/// took (None: not within `limit`) and how many entries the tables had at the end.
fn converge(
    readers: &mut [(usize, Reader)],
    probe: &Prober,
    expected: u64,
    limit: Duration,
) -> anyhow::Result<(Option<Duration>, u64)> {
    let healed = Instant::now();
    let mut entries = 0;
    loop {
        procs::check_interrupted()?;
        let at = healed.elapsed();
        let sizes = counts(readers, probe);
        entries = sizes.iter().copied().flatten().max().unwrap_or(entries);
        if all_at_least(&sizes, expected) && sizes.iter().all(|&c| c == sizes[0]) {
            let dumps = readers
                .iter_mut()
                .map(|(_, reader)| reader.dump())
                .collect::<anyhow::Result<Vec<Dump>>>()?;
            if dumps.iter().all(|d| *d == dumps[0]) {
                return Ok((Some(at), dumps[0].len() as u64));
            }
        }
        if at >= limit {
            return Ok((None, entries));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}
