//! The results: medians per cell, ratios to HAProxy and to direct, the targets,
//! written as `BENCHMARKS.md` (see `markdown`) and `benchmarks.json` (every run's figures).

use std::{fs, path::Path, time::Duration};

use anyhow::Context as _;
use serde::Serialize;

use super::{
    cluster::ClusterReport,
    contender::Contender,
    machine::Machine,
    others::LIMIT_PERCENT as OTHERS_LIMIT_PERCENT,
    plan::Plan,
    profile::Profile,
    progcost::ProgramCost,
    scale::ScaleResult,
    splice_rate::SpliceRate,
    stats::{median, PairedRatio},
    workload::{Sample, Workload},
};

pub(crate) mod markdown;
mod svg;
mod targets;

pub(crate) const MARKDOWN_FILE: &str = "BENCHMARKS.md";
pub(crate) const JSON_FILE: &str = "benchmarks.json";
pub(crate) const SVG_FILE: &str = "benchmarks.svg";

/// The runs of one workload against one contender.
#[derive(Clone, Debug, Serialize)]
pub(super) struct Cell {
    pub(super) workload: Workload,
    pub(super) contender: Contender,
    pub(super) samples: Vec<Sample>,
}

impl Cell {
    pub(super) fn new(workload: Workload, contender: Contender) -> Self {
        Self {
            workload,
            contender,
            samples: Vec::new(),
        }
    }

    fn undisturbed(&self, run: usize) -> bool {
        self.samples.get(run).is_some_and(|s| {
            s.others_cpu_percent
                .is_none_or(|p| p <= OTHERS_LIMIT_PERCENT)
        })
    }
}

/// The repetitions the medians of `workload` are taken over: those in which other processes
/// disturbed no contender's run, or all of them when there is none. Whole repetitions, so that
/// every contender's median comes from the same moments as the others'.
fn counted_runs(cells: &[Cell], workload: Workload) -> Vec<usize> {
    let row: Vec<&Cell> = cells.iter().filter(|c| c.workload == workload).collect();
    let runs = row.iter().map(|c| c.samples.len()).min().unwrap_or(0);
    let undisturbed: Vec<usize> = (0..runs)
        .filter(|&run| row.iter().all(|c| c.undisturbed(run)))
        .collect();
    if undisturbed.is_empty() {
        (0..runs).collect()
    } else {
        undisturbed
    }
}

fn median_of(samples: &[&Sample], figure: impl Fn(&Sample) -> Option<f64>) -> Option<f64> {
    let values: Vec<f64> = samples.iter().copied().filter_map(figure).collect();
    median(&values)
}

/// Medians of a cell's runs, and its ratios.
#[derive(Clone, Debug, Serialize)]
pub(super) struct Summary {
    pub(super) workload: Workload,
    pub(super) contender: Contender,
    /// Runs the medians are taken over (see [`counted_runs`]).
    pub(super) runs: usize,
    /// Runs left out because other processes disturbed them.
    pub(super) disturbed_runs_left_out: usize,
    /// (max - min) / median of the figure of merit over the runs, in percent.
    pub(super) spread_percent: Option<f64>,
    pub(super) requests_per_s: Option<f64>,
    pub(super) p50_ms: Option<f64>,
    pub(super) p99_ms: Option<f64>,
    pub(super) megabytes_per_s: Option<f64>,
    pub(super) lb_cpu_us_per_request: Option<f64>,
    pub(super) lb_cpu_s_per_gb: Option<f64>,
    pub(super) lb_peak_rss_mb: Option<f64>,
    /// Failed requests over the counted runs.
    pub(super) errors: u64,
    /// The cell's figure of merit (req/s; MB/s for downloads) over HAProxy's.
    pub(super) vs_haproxy: Option<f64>,
    /// The same over the direct path's.
    pub(super) vs_direct: Option<f64>,
    /// The figure of merit against the baseline's run by run (see [`Contender::baseline`]).
    pub(super) paired: Option<Paired>,
}

/// A cell's figure of merit against its baseline's in the same repetitions.
#[derive(Clone, Debug, Serialize)]
pub(super) struct Paired {
    pub(super) baseline: Contender,
    #[serde(flatten)]
    pub(super) ratio: PairedRatio,
}

/// What a run is judged by: req/s, or MB/s for downloads.
fn merit_of_sample(workload: Workload, sample: &Sample) -> f64 {
    if workload.per_gigabyte() {
        sample.megabytes_per_s()
    } else {
        sample.requests_per_s()
    }
}

/// `cell` against its contender's baseline over the repetitions `runs`.
fn paired(cells: &[Cell], cell: &Cell, runs: &[usize]) -> Option<Paired> {
    let baseline = cell.contender.baseline()?;
    let base = cells
        .iter()
        .find(|c| c.workload == cell.workload && c.contender == baseline)?;
    let figures: Vec<(f64, f64)> = runs
        .iter()
        .filter_map(|&run| {
            let (ours, theirs) = (cell.samples.get(run)?, base.samples.get(run)?);
            Some((
                merit_of_sample(cell.workload, ours),
                merit_of_sample(cell.workload, theirs),
            ))
        })
        .collect();
    Some(Paired {
        baseline,
        ratio: PairedRatio::of(&figures)?,
    })
}

impl Summary {
    /// `cells`: the whole matrix, where the cell's baseline is found.
    fn of(cells: &[Cell], cell: &Cell, runs: &[usize]) -> Self {
        let per_gb = cell.workload.per_gigabyte();
        let counted: Vec<&Sample> = runs
            .iter()
            .filter_map(|&run| cell.samples.get(run))
            .collect();
        let merits: Vec<f64> = counted
            .iter()
            .map(|s| merit_of_sample(cell.workload, s))
            .collect();
        let spread_percent = median(&merits).filter(|m| *m > 0.0).map(|m| {
            let max = merits.iter().copied().fold(f64::MIN, f64::max);
            let min = merits.iter().copied().fold(f64::MAX, f64::min);
            100.0 * (max - min) / m
        });
        Self {
            workload: cell.workload,
            contender: cell.contender,
            runs: counted.len(),
            disturbed_runs_left_out: cell.samples.len() - counted.len(),
            spread_percent,
            requests_per_s: (!per_gb)
                .then(|| median_of(&counted, |s| Some(s.requests_per_s())))
                .flatten(),
            p50_ms: median_of(&counted, |s| s.p50_ms),
            p99_ms: median_of(&counted, |s| s.p99_ms),
            megabytes_per_s: median_of(&counted, |s| Some(s.megabytes_per_s())),
            lb_cpu_us_per_request: (!per_gb)
                .then(|| median_of(&counted, |s| Some(s.lb_cpu_s? * 1e6 / s.requests as f64)))
                .flatten(),
            lb_cpu_s_per_gb: per_gb
                .then(|| median_of(&counted, |s| Some(s.lb_cpu_s? / (s.bytes as f64 / 1e9))))
                .flatten(),
            lb_peak_rss_mb: median_of(&counted, |s| Some(s.lb_peak_rss_bytes? as f64 / 1e6)),
            errors: counted.iter().map(|s| s.errors).sum(),
            vs_haproxy: None,
            vs_direct: None,
            paired: paired(cells, cell, runs),
        }
    }

    /// What the ratios compare.
    pub(super) fn merit(&self) -> Option<f64> {
        if self.workload.per_gigabyte() {
            self.megabytes_per_s
        } else {
            self.requests_per_s
        }
    }
}

/// stickylb, HAProxy: table memory and restarts.
#[derive(Clone, Debug, Serialize)]
pub(super) struct ScaleSummary {
    pub(super) contender: Contender,
    pub(super) entries: u64,
    pub(super) fill_seconds: f64,
    pub(super) fill_entries_per_s: f64,
    pub(super) rss_mb: f64,
    pub(super) map_mb: Option<f64>,
    pub(super) total_mb: f64,
    pub(super) restart_seconds_median: Option<f64>,
    pub(super) entries_after_restart: u64,
    pub(super) rss_after_restart_mb: f64,
    pub(super) raw: ScaleResult,
}

impl ScaleSummary {
    fn of(result: &ScaleResult) -> Self {
        Self {
            contender: result.contender,
            entries: result.entries,
            fill_seconds: result.fill_seconds,
            fill_entries_per_s: result.fill_rate(),
            rss_mb: result.rss_bytes as f64 / 1e6,
            map_mb: result.map_bytes.map(|bytes| bytes as f64 / 1e6),
            total_mb: result.total_bytes() as f64 / 1e6,
            restart_seconds_median: result.restart_median(),
            entries_after_restart: result.entries_after_restart,
            rss_after_restart_mb: result.rss_after_restart_bytes as f64 / 1e6,
            raw: result.clone(),
        }
    }
}

#[derive(Clone, Debug, Serialize)]
pub(super) struct NotRun {
    pub(super) contender: Contender,
    pub(super) reason: &'static str,
}

#[derive(Clone, Debug, Serialize)]
pub(super) struct Report {
    pub(super) machine: Machine,
    pub(super) plan: Plan,
    pub(super) duration_s: f64,
    pub(super) not_run: Vec<NotRun>,
    pub(super) results: Vec<Summary>,
    pub(super) table_scale: Vec<ScaleSummary>,
    /// New spliced connections per second to one server (stickylb with the fast path).
    pub(super) splice_rate: Option<SpliceRate>,
    pub(super) targets: Vec<targets::TargetCheck>,
    pub(super) profiles: Vec<Profile>,
    /// Whether the fast path's LB CPU includes its TC program's run time (BPF statistics).
    pub(super) fastpath_program_time_counted: bool,
    /// The cluster workloads (full mesh of peers), when they ran.
    pub(super) cluster: Option<ClusterReport>,
    /// The default configuration's kernel programs, per packet (see `progcost`).
    pub(super) program_costs: Vec<ProgramCost>,
    /// Every run of every cell.
    pub(super) runs: Vec<Cell>,
}

impl Report {
    pub(super) fn new(
        machine: Machine,
        plan: Plan,
        cells: Vec<Cell>,
        (scale, splice_rate): (Vec<ScaleResult>, Option<SpliceRate>),
        profiles: Vec<Profile>,
        duration: Duration,
    ) -> Self {
        let mut results: Vec<Summary> = cells
            .iter()
            .map(|cell| Summary::of(&cells, cell, &counted_runs(&cells, cell.workload)))
            .collect();
        let merits: Vec<(Workload, Contender, Option<f64>)> = results
            .iter()
            .map(|s| (s.workload, s.contender, s.merit()))
            .collect();
        let merit_of = |workload: Workload, contender: Contender| {
            merits
                .iter()
                .find(|(w, c, _)| *w == workload && *c == contender)
                .and_then(|(_, _, merit)| *merit)
        };
        for summary in &mut results {
            let merit = summary.merit();
            let ratio = |reference: Option<f64>| Some(merit? / reference.filter(|r| *r > 0.0)?);
            summary.vs_haproxy = ratio(merit_of(summary.workload, Contender::Haproxy));
            summary.vs_direct = ratio(merit_of(summary.workload, Contender::Direct));
        }
        let table_scale: Vec<ScaleSummary> = scale.iter().map(ScaleSummary::of).collect();
        let targets = targets::judge_all(&results, &table_scale, splice_rate.as_ref(), &plan);
        Self {
            machine,
            plan,
            duration_s: duration.as_secs_f64(),
            not_run: Contender::ALL
                .into_iter()
                .filter_map(|contender| {
                    Some(NotRun {
                        contender,
                        reason: contender.unavailable()?,
                    })
                })
                .collect(),
            results,
            table_scale,
            splice_rate,
            targets,
            profiles,
            fastpath_program_time_counted: false,
            cluster: None,
            program_costs: Vec::new(),
            runs: cells,
        }
    }
}

/// Writes `BENCHMARKS.md`, `benchmarks.json` and `benchmarks.svg` into `dir`.
pub(super) fn write(report: &Report, dir: &Path) -> anyhow::Result<()> {
    fs::create_dir_all(dir).with_context(|| format!("could not create {}", dir.display()))?;
    let svg_path = dir.join(SVG_FILE);
    fs::write(&svg_path, svg::render(report))
        .with_context(|| format!("could not write {}", svg_path.display()))?;
    let json = serde_json::to_string_pretty(report).context("serialising the report")?;
    let json_path = dir.join(JSON_FILE);
    fs::write(&json_path, json + "\n")
        .with_context(|| format!("could not write {}", json_path.display()))?;
    let markdown_path = dir.join(MARKDOWN_FILE);
    fs::write(&markdown_path, markdown::render(report))
        .with_context(|| format!("could not write {}", markdown_path.display()))
}

#[cfg(test)]
pub(super) mod tests {
    use std::time::Duration;

    use super::{counted_runs, Cell, Report, Summary};
    use crate::{
        contender::Contender,
        machine::Machine,
        plan::Plan,
        scale::ScaleResult,
        workload::{Sample, Workload},
    };

    /// A report with made-up figures for every cell, as a quick run would produce.
    pub(crate) fn sample_report() -> Report {
        let plan = Plan::new(true, None);
        let mut cells = Vec::new();
        for workload in Workload::ALL {
            for (i, contender) in Contender::available().into_iter().enumerate() {
                if !workload.runs_against(contender) {
                    continue;
                }
                let mut cell = Cell::new(workload, contender);
                cell.samples.push(Sample {
                    requests: 10_000 * (4 - i as u64),
                    seconds: 2.0,
                    bytes: 1_000_000_000,
                    errors: 0,
                    p50_ms: (!workload.per_gigabyte()).then_some(1.0),
                    p99_ms: (!workload.per_gigabyte()).then_some(3.0 + i as f64),
                    lb_cpu_s: (contender != Contender::Direct).then_some(1.5),
                    lb_peak_rss_bytes: (contender != Contender::Direct).then_some(20_000_000),
                    others_cpu_percent: Some(0.5),
                    attempts: 1,
                    fastpath: None,
                    negotiated: None,
                });
                cells.push(cell);
            }
        }
        let scale = [Contender::Haproxy, Contender::Stickylb]
            .into_iter()
            .map(|contender| ScaleResult {
                contender,
                entries: 100_000,
                fill_seconds: 5.0,
                rss_bytes: 30_000_000,
                map_bytes: (contender == Contender::Stickylb).then_some(185_000_000),
                restart_seconds: vec![0.5],
                entries_after_restart: if contender == Contender::Stickylb {
                    100_000
                } else {
                    0
                },
                rss_after_restart_bytes: 25_000_000,
            })
            .collect();
        let machine = Machine {
            date: "2026-01-01 00:00 UTC".into(),
            cpu_model: "Test CPU".into(),
            cpus: 2,
            memory_gib: 4.0,
            kernel: "6.18.0".into(),
            os: "Debian".into(),
            stickylb: "stickylb 0.1.0".into(),
            haproxy: "HAProxy version 2.6.12".into(),
            wrk: "wrk 4.1.0".into(),
            h2load: "h2load nghttp2/1.52.0".into(),
            curl: "curl 7.88.1".into(),
            rustc: "rustc 1.95.0".into(),
            load_average: "0.00 0.00 0.00".into(),
        };
        Report::new(
            machine,
            plan,
            cells,
            (scale, None),
            Vec::new(),
            Duration::from_secs(60),
        )
    }

    #[test]
    fn ratios_are_against_haproxy_and_direct() {
        let report = sample_report();
        let stickylb = report
            .results
            .iter()
            .find(|s| s.workload == Workload::KeepAlive && s.contender == Contender::Stickylb)
            .unwrap();
        assert_eq!(stickylb.requests_per_s, Some(10_000.0));
        assert!((stickylb.vs_haproxy.unwrap() - 2.0 / 3.0).abs() < 1e-9);
        assert_eq!(stickylb.vs_direct, Some(0.5));
        assert_eq!(stickylb.lb_cpu_us_per_request, Some(75.0));
        // One repetition: stickylb against HAProxy's run in it, without an interval.
        let paired = stickylb.paired.as_ref().unwrap();
        assert_eq!(paired.baseline, Contender::Haproxy);
        assert_eq!(paired.ratio.runs, 1);
        assert!((paired.ratio.geomean - 2.0 / 3.0).abs() < 1e-9);
        assert_eq!(paired.ratio.high, None);
        let haproxy = report
            .results
            .iter()
            .find(|s| s.workload == Workload::KeepAlive && s.contender == Contender::Haproxy)
            .unwrap();
        assert!(haproxy.paired.is_none(), "HAProxy is the baseline");
        let download = report
            .results
            .iter()
            .find(|s| s.workload == Workload::Download && s.contender == Contender::Haproxy)
            .unwrap();
        assert_eq!(download.requests_per_s, None);
        assert_eq!(download.lb_cpu_s_per_gb, Some(1.5));
    }

    #[test]
    fn medians_leave_out_repetitions_disturbed_for_any_contender() {
        let mut report = sample_report();
        for cell in report
            .runs
            .iter_mut()
            .filter(|c| c.workload == Workload::KeepAlive)
        {
            let second = cell.samples[0].clone();
            cell.samples.push(second);
        }
        let disturb = |cells: &mut Vec<Cell>, contender: Contender, run: usize| {
            let cell = cells
                .iter_mut()
                .find(|c| c.workload == Workload::KeepAlive && c.contender == contender)
                .unwrap();
            cell.samples[run].others_cpu_percent = Some(40.0);
        };
        // Run 0 is disturbed for HAProxy only: it is left out for every contender.
        disturb(&mut report.runs, Contender::Haproxy, 0);
        assert_eq!(counted_runs(&report.runs, Workload::KeepAlive), [1]);
        let stickylb = report
            .runs
            .iter()
            .find(|c| c.workload == Workload::KeepAlive && c.contender == Contender::Stickylb)
            .unwrap();
        let summary = Summary::of(&report.runs, stickylb, &[1]);
        assert_eq!((summary.runs, summary.disturbed_runs_left_out), (1, 1));
        // Every run disturbed somewhere: all are counted.
        disturb(&mut report.runs, Contender::Direct, 1);
        assert_eq!(counted_runs(&report.runs, Workload::KeepAlive), [0, 1]);
    }

    #[test]
    fn targets_are_judged_and_quick_memory_is_not_measured() {
        let report = sample_report();
        let results: Vec<&str> = report.targets.iter().map(|t| t.result).collect();
        // stickylb has half HAProxy's rate and a higher p99 in the made-up figures.
        assert_eq!(
            results,
            [
                "missed",
                "missed",
                "missed",
                "missed",
                "missed",
                // Over TLS, req/s and p99 on each of the five request workloads: HAProxy is
                // faster in the made-up figures.
                "missed",
                "missed",
                "missed",
                "missed",
                "missed",
                "missed",
                "missed",
                "missed",
                "missed",
                "missed",
                // The TLS downloads' MB/s: every made-up download takes as long.
                "met",
                "met",
                // The fast path's: keep-alive 0.5x HAProxy, bulk as fast as direct (every
                // made-up download is 1 GB in 2 s), CPU per GB equal to HAProxy's.
                "missed",
                "met",
                "missed",
                // Never worse than off, per workload: half its rate everywhere but the
                // downloads, which all take as long.
                "missed",
                "missed",
                "missed",
                "met",
                "missed",
                "missed",
                "missed",
                "missed",
                "missed",
                "missed",
                // Splice rate: not in the report; 1M entries: not at quick size.
                "not measured",
                "not measured"
            ]
        );
    }
}
