//! The cluster workloads: stickylb and HAProxy 2.6 as a full mesh of peers on one LAN (see
//! [`mesh`]), measured the same way for both.
//!
//! - `cluster-mirror-lag` ([`lag`]): new sessions at a fixed rate on one node of five (a new
//!   connection each, then on kept-open connections), and how long a sample of them takes to appear in every other node's table; with the per-node
//!   costs of mirroring (peer connections, bytes on the wire, CPU per mirrored session).
//! - `cluster-partition` ([`partition`]): one node cut off its peers while clients create
//!   sessions on both sides, then healed: time until every node's table is the same.
//! - `cluster-resync` ([`resync`]): a node joining a cluster that holds many sessions: time
//!   until it holds them all.
//!
//! Tables are read from outside the processes ([`tables`]): stickylb's pinned maps, HAProxy's
//! stats socket. Nothing here asserts a speed; the report says which targets were met.

mod addrs;
mod cli;
mod config;
mod lag;
mod mesh;
mod partition;
mod probe;
pub(crate) mod render;
mod resync;
mod tables;

use std::time::{Duration, Instant};

use anyhow::bail;
use serde::Serialize;

pub(crate) use self::{lag::LagResult, partition::PartitionResult, resync::ResyncResult};
use self::{
    mesh::{Hosts, Mesh},
    probe::Prober,
    tables::Reader,
};
use crate::{
    args::BenchArgs,
    contender::Contender,
    env::Env,
    procs,
    wrk::{self, WrkSpec},
};

pub(crate) const MIRROR_LAG: &str = "cluster-mirror-lag";
pub(crate) const PARTITION: &str = "cluster-partition";
pub(crate) const RESYNC: &str = "cluster-resync";
pub(crate) const WORKLOADS: [&str; 3] = [MIRROR_LAG, PARTITION, RESYNC];

/// Connections of a fill (as the table-scale fill's).
const FILL_CONNECTIONS: u32 = 64;

/// The contenders that run as a cluster, HAProxy first as in the other workloads.
const CONTENDERS: [Contender; 2] = [Contender::Haproxy, Contender::Stickylb];

/// How big and how long the cluster workloads are: the full sizes, or `--quick`'s.
#[derive(Clone, Debug, Serialize)]
pub(crate) struct ClusterPlan {
    pub(crate) lag_nodes: usize,
    /// New sessions per second offered to the first node.
    pub(crate) lag_rate: f64,
    #[serde(rename = "lag_duration_s", serialize_with = "as_seconds")]
    pub(crate) lag_duration: Duration,
    /// Sample sessions per second whose lag is timed.
    pub(crate) lag_samples_per_s: f64,
    pub(crate) partition_nodes: usize,
    /// Sessions in the table after the partition heals, if the rate below is reached: those
    /// made during it, the rest filled in before it.
    pub(crate) partition_sessions: u64,
    /// New sessions per second during the partition, both sides together.
    pub(crate) partition_rate: f64,
    /// How long sessions are made during the partition.
    #[serde(rename = "partition_making_s", serialize_with = "as_seconds")]
    pub(crate) partition_making: Duration,
    /// How long the partition lasts at least: longer than a peer's 5 s of silence, so that
    /// both sides see their sessions end.
    #[serde(rename = "partition_hold_s", serialize_with = "as_seconds")]
    pub(crate) partition_hold: Duration,
    /// Sessions the cluster holds when a node joins (two nodes hold them).
    pub(crate) resync_entries: u64,
    /// The longest the bench waits for a table to fill or resync.
    #[serde(rename = "limit_s", serialize_with = "as_seconds")]
    pub(crate) limit: Duration,
    /// The longest it waits for the tables to agree after a partition (the target is 2 s).
    #[serde(rename = "converge_limit_s", serialize_with = "as_seconds")]
    pub(crate) converge_limit: Duration,
}

impl ClusterPlan {
    pub(crate) fn new(quick: bool) -> Self {
        Self {
            lag_nodes: 5,
            lag_rate: 10_000.0,
            lag_duration: Duration::from_secs(if quick { 3 } else { 20 }),
            lag_samples_per_s: if quick { 50.0 } else { 100.0 },
            partition_nodes: if quick { 3 } else { 5 },
            partition_sessions: if quick { 10_000 } else { 100_000 },
            partition_rate: if quick { 1000.0 } else { 5000.0 },
            partition_making: Duration::from_secs(5),
            partition_hold: Duration::from_secs(6),
            resync_entries: if quick { 20_000 } else { 1_000_000 },
            limit: Duration::from_secs(if quick { 30 } else { 300 }),
            converge_limit: Duration::from_secs(if quick { 20 } else { 60 }),
        }
    }

    /// Sessions filled in before the partition.
    pub(crate) fn partition_before(&self) -> u64 {
        let during = self.partition_rate * self.partition_making.as_secs_f64();
        self.partition_sessions.saturating_sub(during as u64)
    }
}

fn as_seconds<S: serde::Serializer>(duration: &Duration, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_f64(duration.as_secs_f64())
}

/// What the cluster workloads measured.
#[derive(Clone, Debug, Serialize)]
pub(crate) struct ClusterReport {
    pub(crate) plan: ClusterPlan,
    pub(crate) mirror_lag: Vec<LagResult>,
    pub(crate) partition: Vec<PartitionResult>,
    pub(crate) resync: Vec<ResyncResult>,
    /// Workloads that did not finish, and why.
    pub(crate) failed: Vec<Failed>,
}

#[derive(Clone, Debug, Serialize)]
pub(crate) struct Failed {
    pub(crate) workload: &'static str,
    pub(crate) contender: Contender,
    pub(crate) error: String,
}

impl ClusterReport {
    fn is_empty(&self) -> bool {
        self.mirror_lag.is_empty()
            && self.partition.is_empty()
            && self.resync.is_empty()
            && self.failed.is_empty()
    }

    /// Keeps `result`, or records why the workload did not finish: one workload's failure (a
    /// node that stopped answering) is a finding, not a reason to lose the others'.
    fn record<T>(
        &mut self,
        workload: &'static str,
        contender: Contender,
        result: anyhow::Result<T>,
        progress: impl Fn(&T) -> String,
    ) -> Option<T> {
        match result {
            Ok(result) => {
                println!(
                    "bench: {workload} {}: {}",
                    contender.label(),
                    progress(&result)
                );
                Some(result)
            }
            Err(error) => {
                let error = format!("{error:#}");
                println!(
                    "bench: {workload} {}: did not finish: {error}",
                    contender.label()
                );
                self.failed.push(Failed {
                    workload,
                    contender,
                    error,
                });
                None
            }
        }
    }
}

/// Runs the cluster workloads the command line asks for, against HAProxy and stickylb.
pub(crate) fn measure(env: &Env, args: &BenchArgs) -> anyhow::Result<Option<ClusterReport>> {
    let wanted: Vec<&str> = WORKLOADS
        .into_iter()
        .filter(|id| args.wants_workload(id))
        .collect();
    let contenders: Vec<Contender> = CONTENDERS
        .into_iter()
        .filter(|&c| args.wants_contender(c))
        .collect();
    if wanted.is_empty() || contenders.is_empty() {
        return Ok(None);
    }
    let mut plan = ClusterPlan::new(env.plan.quick);
    if let Some(rate) = args.lag_rate {
        plan.lag_rate = f64::from(rate);
    }
    let hosts = Hosts::create(env)?;
    let mut report = ClusterReport {
        plan: plan.clone(),
        mirror_lag: Vec::new(),
        partition: Vec::new(),
        resync: Vec::new(),
        failed: Vec::new(),
    };
    for contender in contenders {
        if wanted.contains(&MIRROR_LAG) {
            for shape in lag::Shape::ALL {
                let result = lag::measure(env, &hosts, contender, &plan, shape);
                let kept = report.record(MIRROR_LAG, contender, result, LagResult::progress);
                report.mirror_lag.extend(kept);
            }
        }
        if wanted.contains(&PARTITION) {
            let result = partition::measure(env, &hosts, contender, &plan);
            let kept = report.record(PARTITION, contender, result, PartitionResult::progress);
            report.partition.extend(kept);
        }
        if wanted.contains(&RESYNC) {
            let result = resync::measure(env, &hosts, contender, &plan);
            let kept = report.record(RESYNC, contender, result, ResyncResult::progress);
            report.resync.extend(kept);
        }
        procs::check_interrupted()?;
    }
    Ok((!report.is_empty()).then_some(report))
}

/// A prober in the client's namespace and a reader of each table of nodes `0..nodes`, once
/// every peers link among those nodes carried a session (see [`wait_linked`]).
fn linked_readers(
    hosts: &Hosts,
    mesh: &Mesh<'_>,
    nodes: usize,
    limit: Duration,
) -> anyhow::Result<(Prober, Vec<(usize, Reader)>)> {
    let probe = Prober::new(hosts.client().name())?;
    let mut readers = (0..nodes)
        .map(|i| Ok((i, Reader::open(mesh, i)?)))
        .collect::<anyhow::Result<Vec<_>>>()?;
    wait_linked(&probe, &mut readers, limit)?;
    Ok((probe, readers))
}

/// Creates a session on every running node in turn and waits until each other node has it:
/// every directed peers link carried an update (sessions open at their own pace, HAProxy's
/// after a collision or two).
fn wait_linked(
    probe: &Prober,
    readers: &mut [(usize, Reader)],
    limit: Duration,
) -> anyhow::Result<()> {
    for k in 0..readers.len() {
        let node = readers[k].0;
        let cookie = format!("link{node}");
        create_session(probe, node, &cookie)?;
        let linked = poll_until(limit, Duration::from_millis(20), || {
            for (other, reader) in readers.iter_mut() {
                if *other != node && !reader.has(&cookie)? {
                    return Ok(false);
                }
            }
            Ok(true)
        })?;
        if linked.is_none() {
            bail!("a session made on node {node} did not reach every peer within {limit:?}");
        }
    }
    Ok(())
}

/// One request with a new cookie through node `node`: a new session there.
fn create_session(probe: &Prober, node: usize, cookie: &str) -> anyhow::Result<()> {
    let (status, _) = probe.get(addrs::frontend(node), "/", Some(cookie))?;
    if status != 200 {
        bail!("node {node} answered {status} to a new session");
    }
    Ok(())
}

/// Calls `done` every `period` until it says true (returns how long that took) or `limit`
/// passes (None).
fn poll_until(
    limit: Duration,
    period: Duration,
    mut done: impl FnMut() -> anyhow::Result<bool>,
) -> anyhow::Result<Option<Duration>> {
    let started = Instant::now();
    loop {
        procs::check_interrupted()?;
        if done()? {
            return Ok(Some(started.elapsed()));
        }
        if started.elapsed() >= limit {
            return Ok(None);
        }
        std::thread::sleep(period);
    }
}

/// The tables' sizes, read through `probe` where needed; None for a node that did not answer
/// (a stickylb node busy applying a resync may leave its monitor unanswered for seconds):
/// polls go on, and a node that never answers shows as not converged.
fn counts(readers: &mut [(usize, Reader)], probe: &Prober) -> Vec<Option<u64>> {
    readers
        .iter_mut()
        .map(|(_, reader)| reader.count(probe).ok())
        .collect()
}

/// Whether every size is known and at least `least`.
fn all_at_least(sizes: &[Option<u64>], least: u64) -> bool {
    sizes.iter().all(|size| size.is_some_and(|s| s >= least))
}

/// `part / whole`, or None when `whole` is 0.
fn per(part: f64, whole: f64) -> Option<f64> {
    (whole > 0.0).then(|| part / whole)
}

/// Keep-alive requests through the node of `reader` (the first), cookies cycling through
/// `target` values, until its table holds `target` entries (as the table-scale workload fills
/// its table): the time it took.
fn fill(
    env: &Env,
    hosts: &Hosts,
    reader: &mut [(usize, Reader)],
    probe: &Prober,
    target: u64,
    limit: Duration,
) -> anyhow::Result<Duration> {
    let Some(&(node, _)) = reader.first() else {
        bail!("no node to fill");
    };
    let url = format!("http://{}", addrs::frontend(node));
    let spec = WrkSpec {
        threads: env.plan.wrk_threads,
        connections: FILL_CONNECTIONS,
        duration: limit,
        url: &url,
        prefix: "c1a55e00",
        pool: target,
        close: false,
    };
    let started = Instant::now();
    let mut load = wrk::start(hosts.client(), &env.script, &spec)?;
    let filled = poll_until(limit, Duration::from_millis(100), || {
        if let Ok(Some(status)) = load.try_wait() {
            bail!("wrk stopped ({status}) before the table held {target} entries");
        }
        Ok(all_at_least(&counts(&mut reader[..1], probe), target))
    });
    procs::kill(&mut load);
    match filled? {
        Some(_) => Ok(started.elapsed()),
        None => bail!("the table did not reach {target} entries within {limit:?}"),
    }
}
