//! Resync: two nodes of a three-node mesh hold the sessions (filled through node 1 by
//! keep-alive requests, a new cookie each, as the table-scale workload fills its table, and
//! mirrored to node 2); then node 3 starts with an empty table and asks its peers for a full
//! resync. Timed: from starting node 3's process until its table holds every session (its size
//! polled every 50 ms).

use std::time::{Duration, Instant};

use anyhow::Context as _;
use serde::Serialize;

use super::{
    all_at_least, counts, fill, linked_readers,
    mesh::{self, Hosts, Mesh},
    per, poll_until,
    tables::Reader,
    ClusterPlan,
};
use crate::{contender::Contender, env::Env};

const NODES: usize = 3;
const JOINER: usize = 2;

#[derive(Clone, Debug, Serialize)]
pub(crate) struct ResyncResult {
    pub(crate) contender: Contender,
    /// Sessions the two nodes held.
    pub(crate) entries: u64,
    pub(crate) fill_s: f64,
    /// After the fill, until node 2 had every session too.
    pub(crate) mirror_catch_up_s: f64,
    /// From starting node 3 until it held every session; None: not within the limit.
    pub(crate) resync_s: Option<f64>,
    /// Node 3's entries at the end.
    pub(crate) joiner_entries: u64,
    /// Bytes node 3's interface took in during the resync, per session (two peers teach).
    pub(crate) bytes_in_per_entry: Option<f64>,
    /// CPU of node 3, and of the two teachers together, per session.
    pub(crate) joiner_cpu_us_per_entry: Option<f64>,
    pub(crate) teachers_cpu_us_per_entry: Option<f64>,
}

impl ResyncResult {
    pub(crate) fn progress(&self) -> String {
        let resync = self
            .resync_s
            .map_or("not within the limit".to_owned(), |s| format!("{s:.2} s"));
        format!(
            "{} sessions filled in {:.1} s (+{:.1} s until mirrored); joiner resynced in \
             {resync} ({} entries, {:.0} bytes in per entry)",
            self.entries,
            self.fill_s,
            self.mirror_catch_up_s,
            self.joiner_entries,
            self.bytes_in_per_entry.unwrap_or(0.0)
        )
    }

    /// Sessions the joiner learned per second.
    pub(crate) fn rate(&self) -> Option<f64> {
        per(self.joiner_entries as f64, self.resync_s?)
    }
}

pub(crate) fn measure(
    env: &Env,
    hosts: &Hosts,
    contender: Contender,
    plan: &ClusterPlan,
) -> anyhow::Result<ResyncResult> {
    let mesh = Mesh::new(env, hosts, contender, NODES)?;
    mesh.run_then_stop(|mesh| run(env, hosts, mesh, plan))
}

fn run(
    env: &Env,
    hosts: &Hosts,
    mesh: &mut Mesh<'_>,
    plan: &ClusterPlan,
) -> anyhow::Result<ResyncResult> {
    mesh.start(0)?;
    mesh.start(1)?;
    let (probe, mut holders) = linked_readers(hosts, mesh, JOINER, plan.limit)?;
    let target = plan.resync_entries;
    let fill_s = fill(env, hosts, &mut holders[..1], &probe, target, plan.limit)?.as_secs_f64();
    let caught_up = poll_until(plan.limit, Duration::from_millis(50), || {
        Ok(all_at_least(&counts(&mut holders[1..], &probe), target))
    })?
    .with_context(|| {
        format!(
            "node 2 did not mirror {target} sessions within {:?}",
            plan.limit
        )
    })?;
    let entries = counts(&mut holders, &probe)
        .into_iter()
        .flatten()
        .min()
        .unwrap_or(target);
    let (cpu_before, wire_before) = (mesh.cpu_seconds()?, mesh::wire_bytes(hosts, JOINER)?);
    let started = Instant::now();
    mesh.start(JOINER)?;
    let mut joiner = [(JOINER, Reader::open(mesh, JOINER)?)];
    let mut joiner_entries = 0;
    let resynced = poll_until(plan.limit, Duration::from_millis(50), || {
        if let Some(count) = counts(&mut joiner, &probe)[0] {
            joiner_entries = count;
        }
        Ok(joiner_entries >= entries)
    })?
    .map(|_| started.elapsed().as_secs_f64());
    let (cpu_after, wire_after) = (mesh.cpu_seconds()?, mesh::wire_bytes(hosts, JOINER)?);
    let cpu = |i: usize| cpu_after[i] - cpu_before[i];
    let learned = joiner_entries as f64;
    Ok(ResyncResult {
        contender: mesh.contender,
        entries,
        fill_s,
        mirror_catch_up_s: caught_up.as_secs_f64(),
        resync_s: resynced,
        joiner_entries,
        bytes_in_per_entry: per(wire_after.0.saturating_sub(wire_before.0) as f64, learned),
        joiner_cpu_us_per_entry: per(cpu(JOINER) * 1e6, learned),
        teachers_cpu_us_per_entry: per((cpu(0) + cpu(1)) * 1e6, learned),
    })
}
