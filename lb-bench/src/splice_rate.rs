//! The source-port budget of the fast path: new spliced connections per second to ONE server,
//! sustained. Each connection is a tunnel (an upgrade the server accepts, handed to the kernel
//! with the `101`, a few bytes echoed through the kernel, a close), all with one session's
//! cookie, so all to one server, at a fixed rate; stickylb with the fast path only (the others
//! splice nothing). The metrics are sampled every second for the source ports held.
//!
//! Each spliced connection holds one of the `source_ports` toward its server while it is open
//! and for the reuse delay after it ended (and until the next collector sweep notices the end):
//! the sustainable rate is about `ports / (lifetime + reuse delay + sweep period / 2)`.

use std::time::{Duration, Instant};

use serde::Serialize;

use super::{
    contender::{self, Contender},
    env::{Env, FastPathCounters, Layout},
    load::{self, LoadSpec},
    metrics::metric_value,
    procs,
};

/// The default `[fastpath] source_ports` (61000-64999), which the bench's stickylb uses.
pub(super) const PORTS_PER_SERVER: u64 = 4000;

#[derive(Clone, Debug, Serialize)]
pub(super) struct SpliceRate {
    /// New connections per second offered.
    pub(super) offered_per_s: f64,
    pub(super) seconds: f64,
    /// Tunnels that completed (upgrade, echo, close).
    pub(super) completed: u64,
    pub(super) errors: u64,
    pub(super) p99_ms: f64,
    pub(super) fastpath: FastPathCounters,
    /// The most source ports held by spliced flows (open, or resting after they ended) at a
    /// sample.
    pub(super) max_ports_spliced: u64,
    pub(super) ports_per_server: u64,
}

impl SpliceRate {
    /// Connections spliced per second.
    pub(super) fn spliced_per_s(&self) -> f64 {
        self.fastpath.outcome("spliced") as f64 / self.seconds
    }

    /// How long a spliced connection held its port, on average (Little's law).
    pub(super) fn hold_seconds(&self) -> f64 {
        self.max_ports_spliced as f64 / self.spliced_per_s().max(1.0)
    }

    /// The rate the ports allow at this hold time.
    pub(super) fn bound_per_s(&self) -> f64 {
        self.ports_per_server as f64 / self.hold_seconds().max(1e-3)
    }
}

pub(super) fn measure(env: &Env) -> anyhow::Result<SpliceRate> {
    let plan = &env.plan;
    let contender = Contender::StickylbFastPath;
    env.reset_table()?;
    let (mut lb, _) = env.start(contender, Layout::Routed)?;
    let topology = env.topology(Layout::Routed);
    let base = contender.base_url(&topology.addrs);
    let metrics_url = format!("{}/metrics", contender::monitor_url(&topology.addrs));
    let spec = LoadSpec {
        pool: 1,
        rate: plan.splice_rate,
        tunnel: true,
        ..LoadSpec::new(
            base.trim_start_matches("http://"),
            128,
            plan.splice_rate_duration,
            "5p11ce00",
        )
    };
    let started = Instant::now();
    let child = load::start(&topology.client, &env.load, &spec)?;
    let mut max_ports_spliced = 0;
    while started.elapsed() < plan.splice_rate_duration {
        procs::sleep(Duration::from_secs(1))?;
        if let Ok(metrics) = env.client_get(&metrics_url, Layout::Routed) {
            let held = |holder: &str| {
                let name = format!("stickylb_fastpath_source_ports{{holder=\"{holder}\"}}");
                metric_value(&metrics, &name).unwrap_or(0)
            };
            max_ports_spliced = max_ports_spliced.max(held("spliced") + held("resting"));
        }
    }
    let result = load::finish(child, plan.splice_rate_duration)?;
    lb.check_running()?;
    let fastpath = env.fastpath_counters(Layout::Routed)?;
    lb.stop()?;
    env.reset_table()?;
    let measured = SpliceRate {
        offered_per_s: plan.splice_rate,
        seconds: result.seconds,
        completed: result.requests,
        errors: result.errors + result.status_errors,
        p99_ms: result.p99_us as f64 / 1e3,
        fastpath,
        max_ports_spliced,
        ports_per_server: PORTS_PER_SERVER,
    };
    println!(
        "bench: splice-rate: {:.0} connections/s offered for {:.0} s, {:.0}/s spliced, {} without a \
         free port, {} errors, at most {} of {} ports held",
        measured.offered_per_s,
        measured.seconds,
        measured.spliced_per_s(),
        measured.fastpath.outcome("no_port"),
        measured.errors,
        measured.max_ports_spliced,
        measured.ports_per_server,
    );
    Ok(measured)
}
