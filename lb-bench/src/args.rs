//! The bench's command line: how long, where to write, and which part of the matrix.

use std::path::PathBuf;

use crate::{cluster, contender::Contender, workload::Workload};

#[derive(Debug, clap::Args)]
pub(crate) struct BenchArgs {
    /// Short runs, one repetition, 100k table entries: under two minutes, for development.
    #[arg(long)]
    pub(crate) quick: bool,
    /// Directory for BENCHMARKS.md and benchmarks.json [default: docs/].
    #[arg(long, value_name = "DIR")]
    pub(crate) output: Option<PathBuf>,
    /// Repetitions of each cell [default: 3; --quick: 1].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub(crate) runs: Option<u32>,
    /// Also profile each workload with perf (one extra, unmeasured run per load balancer) and
    /// add where the CPU time goes to the report; perf data under target/bench/.
    #[arg(long)]
    pub(crate) perf: bool,
    /// Only these workloads (new-conn-unique, new-conn-repeat, keep-alive, download, churn,
    /// churn-16-clients, port-reuse, paced-keep-alive, one-armed-keep-alive, one-armed-churn,
    /// tls-new-conn, tls-keep-alive, tls-h2-keep-alive, tls-churn, tls-h2-churn, tls-download,
    /// tls-h2-download, table-scale, splice-rate, cluster-mirror-lag, cluster-partition,
    /// cluster-resync, syn-flood, syn-flood-spoofed); a partial run writes to
    /// target/bench/partial/ unless --output says otherwise. The tls- and cluster- workloads run
    /// against haproxy and stickylb only.
    #[arg(long = "workload", value_name = "ID", value_parser = parse_workload_filter)]
    pub(crate) workloads: Vec<String>,
    /// New sessions per second that cluster-mirror-lag offers to its first node [default:
    /// 10000]; a lower rate compares the contenders' lag at a load both sustain.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub(crate) lag_rate: Option<u32>,
    /// Only these contenders (direct, haproxy, stickylb, stickylb-fast-path; and
    /// stickylb-fast-path-xdp and stickylb-shield, which run only when named); see --workload.
    #[arg(long = "contender", value_name = "ID", value_parser = parse_contender)]
    pub(crate) contenders: Vec<Contender>,
    /// Both load balancers log every request, as operators run them: stickylb with its default
    /// `--log info`, HAProxy with `option httplog` to stderr (`log stderr format raw`). The bench
    /// reads both into files. Without it neither logs requests.
    #[arg(long)]
    pub(crate) access_log: bool,
}

/// The table-scale, splice-rate, SYN flood (one source, spoofed) and program-cost measurements
/// are not request workloads, but they can be chosen like one.
pub(crate) const TABLE_SCALE: &str = "table-scale";
pub(crate) const SPLICE_RATE: &str = "splice-rate";
pub(crate) const SYN_FLOOD: &str = "syn-flood";
pub(crate) const SYN_FLOOD_SPOOFED: &str = "syn-flood-spoofed";
pub(crate) const PROGRAM_COST: &str = "program-cost";

fn parse_workload_filter(id: &str) -> Result<String, String> {
    if [
        TABLE_SCALE,
        SPLICE_RATE,
        SYN_FLOOD,
        SYN_FLOOD_SPOOFED,
        PROGRAM_COST,
    ]
    .contains(&id)
        || cluster::WORKLOADS.contains(&id)
        || Workload::from_id(id).is_some()
    {
        Ok(id.to_owned())
    } else {
        Err(format!(
            "unknown workload {id:?}; one of: {}, {TABLE_SCALE}, {SPLICE_RATE}, {SYN_FLOOD}, \
             {SYN_FLOOD_SPOOFED}, {PROGRAM_COST}, {}",
            Workload::ALL.map(Workload::id).join(", "),
            cluster::WORKLOADS.join(", ")
        ))
    }
}

fn parse_contender(id: &str) -> Result<Contender, String> {
    Contender::from_id(id).ok_or_else(|| {
        format!(
            "unknown contender {id:?}; one of: {}",
            Contender::ALL.map(Contender::id).join(", ")
        )
    })
}

impl BenchArgs {
    pub(crate) fn partial(&self) -> bool {
        !self.workloads.is_empty() || !self.contenders.is_empty()
    }

    pub(crate) fn wants_workload(&self, id: &str) -> bool {
        self.workloads.is_empty() || self.workloads.iter().any(|w| w == id)
    }

    /// Named, or (when none is named) one of the default ones.
    pub(crate) fn wants_contender(&self, contender: Contender) -> bool {
        if self.contenders.is_empty() {
            return !Contender::EXTRA.contains(&contender);
        }
        self.contenders.contains(&contender)
    }
}
