//! The project's targets, judged from one run's medians: new connection per request >= 1.0x
//! HAProxy's req/s with p99 <= HAProxy's; keep-alive >= 1.0x HAProxy without the fast path;
//! 1M entries in <= 200 MB; over TLS, on each TLS workload, >= 1.0x HAProxy's req/s with p99 <=
//! HAProxy's. With the fast path: on every workload >= 0.95x the fast path off in
//! req/s (MB/s) with p99 <= 1.1x and no error; keep-alive >= 1.5x HAProxy; bulk >= 0.9x direct
//! with the load balancer's CPU per GB <= 0.25x HAProxy's; 2000 new connections per second to
//! one server for 2 minutes, >= 98% spliced, none left without a source port.

use serde::Serialize;

use super::{ScaleSummary, Summary};
use crate::{
    contender::{Contender, Frontend},
    plan::Plan,
    splice_rate::SpliceRate,
    workload::Workload,
};

/// One target, judged from this run's figures.
#[derive(Clone, Debug, Serialize)]
pub(crate) struct TargetCheck {
    pub(crate) target: String,
    pub(crate) stickylb: String,
    pub(crate) reference: String,
    /// `met`, `missed`, or `not measured`.
    pub(crate) result: &'static str,
}

pub(super) fn judge_all(
    results: &[Summary],
    scale: &[ScaleSummary],
    splice_rate: Option<&SpliceRate>,
    plan: &Plan,
) -> Vec<TargetCheck> {
    let find = |workload: Workload, contender: Contender| {
        results
            .iter()
            .find(|s| s.workload == workload && s.contender == contender)
    };
    let mut checks = Vec::new();
    for (workload, what) in [
        (
            Workload::NewConnUnique,
            "new connection per request, unique cookies",
        ),
        (
            Workload::NewConnRepeat,
            "new connection per request, repeating cookies",
        ),
        (Workload::KeepAlive, "keep-alive (no fast path)"),
    ] {
        let ours = find(workload, Contender::Stickylb);
        let theirs = find(workload, Contender::Haproxy);
        let rps = |s: Option<&Summary>| s.and_then(|s| s.requests_per_s);
        checks.push(judge(
            format!("{what}: req/s >= 1.0x HAProxy"),
            rps(ours),
            rps(theirs),
            |a, b| a >= b,
            |v| format!("{v:.0} req/s"),
        ));
        if workload != Workload::KeepAlive {
            let p99 = |s: Option<&Summary>| s.and_then(|s| s.p99_ms);
            checks.push(judge(
                format!("{what}: p99 <= HAProxy"),
                p99(ours),
                p99(theirs),
                |a, b| a <= b,
                |v| format!("{v:.2} ms"),
            ));
        }
    }
    checks.extend(judge_tls(&find));
    checks.extend(judge_fast_path(&find));
    for workload in Workload::ALL
        .into_iter()
        .filter(|w| w.runs_against(Contender::StickylbFastPath))
    {
        checks.push(judge_never_worse(
            workload,
            find(workload, Contender::StickylbFastPath),
            find(workload, Contender::Stickylb),
        ));
    }
    checks.push(judge_splice_rate(splice_rate, plan));
    let ours = scale.iter().find(|s| s.contender == Contender::Stickylb);
    let theirs = scale.iter().find(|s| s.contender == Contender::Haproxy);
    let memory = |s: &ScaleSummary| format!("{:.0} MB ({} entries)", s.total_mb, s.entries);
    checks.push(TargetCheck {
        target: "1M sticky entries: RSS + map <= 200 MB".into(),
        stickylb: ours.map_or("-".into(), |s| {
            format!(
                "{} = RSS {:.0} + map {:.0}",
                memory(s),
                s.rss_mb,
                s.map_mb.unwrap_or(0.0)
            )
        }),
        reference: theirs.map_or("-".into(), memory),
        result: match ours {
            Some(s) if plan.table_entries >= 1_000_000 => {
                if s.total_mb <= 200.0 {
                    "met"
                } else {
                    "missed"
                }
            }
            _ => "not measured",
        },
    });
    checks
}

/// HTTPS frontends: on each TLS workload, req/s >= 1.0x HAProxy's and p99 <= HAProxy's; on a
/// download, MB/s >= 1.0x HAProxy's.
fn judge_tls<'a>(find: &impl Fn(Workload, Contender) -> Option<&'a Summary>) -> Vec<TargetCheck> {
    let mut checks = Vec::new();
    for workload in Workload::ALL
        .into_iter()
        .filter(|w| w.frontend() == Frontend::Https)
    {
        let (ours, theirs) = (
            find(workload, Contender::Stickylb),
            find(workload, Contender::Haproxy),
        );
        if workload.per_gigabyte() {
            // A download has no request latency: its figure is MB/s.
            let mbps = |s: Option<&Summary>| s.and_then(|s| s.megabytes_per_s);
            checks.push(judge(
                format!("{}: MB/s >= 1.0x HAProxy", workload.id()),
                mbps(ours),
                mbps(theirs),
                |a, b| a >= b,
                |v| format!("{v:.0} MB/s"),
            ));
            continue;
        }
        let rps = |s: Option<&Summary>| s.and_then(|s| s.requests_per_s);
        let p99 = |s: Option<&Summary>| s.and_then(|s| s.p99_ms);
        checks.push(judge(
            format!("{}: req/s >= 1.0x HAProxy", workload.id()),
            rps(ours),
            rps(theirs),
            |a, b| a >= b,
            |v| format!("{v:.0} req/s"),
        ));
        checks.push(judge(
            format!("{}: p99 <= HAProxy", workload.id()),
            p99(ours),
            p99(theirs),
            |a, b| a <= b,
            |v| format!("{v:.2} ms"),
        ));
    }
    checks
}

/// The fast path's goals: keep-alive, downloads, CPU per GB.
fn judge_fast_path<'a>(
    find: &impl Fn(Workload, Contender) -> Option<&'a Summary>,
) -> Vec<TargetCheck> {
    let fast = |workload| find(workload, Contender::StickylbFastPath);
    let haproxy = |workload| find(workload, Contender::Haproxy);
    let rps = |s: Option<&Summary>| s.and_then(|s| s.requests_per_s);
    let mbps = |s: Option<&Summary>| s.and_then(|s| s.megabytes_per_s);
    let cpu = |s: Option<&Summary>| s.and_then(|s| s.lb_cpu_s_per_gb);
    vec![
        judge(
            "keep-alive with the fast path: req/s >= 1.5x HAProxy".into(),
            rps(fast(Workload::KeepAlive)),
            rps(haproxy(Workload::KeepAlive)),
            |a, b| a >= 1.5 * b,
            |v| format!("{v:.0} req/s"),
        ),
        judge(
            "download with the fast path: MB/s >= 0.9x direct".into(),
            mbps(fast(Workload::Download)),
            mbps(find(Workload::Download, Contender::Direct)),
            |a, b| a >= 0.9 * b,
            |v| format!("{v:.0} MB/s"),
        ),
        judge(
            "download with the fast path: LB CPU per GB <= 0.25x HAProxy's".into(),
            cpu(fast(Workload::Download)),
            cpu(haproxy(Workload::Download)),
            |a, b| a <= 0.25 * b,
            |v| format!("{v:.2} s/GB"),
        ),
    ]
}

/// The fast path's default must never be worse than turning it off: on `workload`, req/s
/// (MB/s) >= 0.95x, p99 <= 1.1x, and no error.
fn judge_never_worse(
    workload: Workload,
    on: Option<&Summary>,
    off: Option<&Summary>,
) -> TargetCheck {
    let target = format!(
        "{}: fast path on >= 0.95x off, p99 <= 1.1x, 0 errors",
        workload.id()
    );
    let (Some(on), Some(off)) = (on, off) else {
        return TargetCheck {
            target,
            stickylb: "-".into(),
            reference: "-".into(),
            result: "not measured",
        };
    };
    let unit = if workload.per_gigabyte() {
        "MB/s"
    } else {
        "req/s"
    };
    let show = |s: &Summary| {
        let p99 = s
            .p99_ms
            .map_or(String::new(), |p| format!(", p99 {p:.2} ms"));
        format!(
            "{:.0} {unit}{p99}, {} errors",
            s.merit().unwrap_or(0.0),
            s.errors
        )
    };
    let ratio = match (on.merit(), off.merit()) {
        (Some(a), Some(b)) if b > 0.0 => Some(a / b),
        _ => None,
    };
    let p99_ratio = match (on.p99_ms, off.p99_ms) {
        (Some(a), Some(b)) if b > 0.0 => Some(a / b),
        _ => None,
    };
    let met =
        ratio.is_some_and(|r| r >= 0.95) && p99_ratio.is_none_or(|r| r <= 1.1) && on.errors == 0;
    TargetCheck {
        target,
        stickylb: format!(
            "{} ({}{})",
            show(on),
            ratio.map_or("-".into(), |r| format!("{r:.2}x")),
            p99_ratio.map_or(String::new(), |r| format!(", p99 {r:.2}x")),
        ) + &on.paired.as_ref().map_or(String::new(), |p| {
            format!(
                "; run by run {} ({})",
                super::markdown::paired_ratio(&p.ratio),
                p.ratio.verdict()
            )
        }),
        reference: format!("fast path off: {}", show(off)),
        result: if met { "met" } else { "missed" },
    }
}

/// 2000 new connections per second to one server for 2 minutes, at least 98% of them spliced
/// (a short tunnel whose client speaks at once may end before a hand-off wins its race; that is
/// the policy, not the port budget), none left without a free source port (only a full run
/// measures it). Strictly, 98% of 2000/s is below 2000 spliced/s: the report says both numbers.
fn judge_splice_rate(measured: Option<&SpliceRate>, plan: &Plan) -> TargetCheck {
    let target = "new connections to one server at 2000/s for 2 minutes: >= 98% spliced, none \
                  without a free source port, 0 errors"
        .to_owned();
    let full = plan.splice_rate >= 2000.0 && plan.splice_rate_duration.as_secs() >= 120;
    let Some(m) = measured else {
        return TargetCheck {
            target,
            stickylb: "-".into(),
            reference: "-".into(),
            result: "not measured",
        };
    };
    let no_port = m.fastpath.outcome("no_port");
    let stickylb = format!(
        "{:.0}/s spliced of {:.0}/s offered ({:.1}%) for {:.0} s, {no_port} without a port, {} \
         errors",
        m.spliced_per_s(),
        m.offered_per_s,
        100.0 * m.spliced_per_s() / m.offered_per_s.max(1.0),
        m.seconds,
        m.errors
    );
    let met = m.offered_per_s >= 2000.0
        && m.spliced_per_s() >= 0.98 * m.offered_per_s
        && no_port == 0
        && m.errors == 0;
    TargetCheck {
        target,
        stickylb,
        reference: format!(
            "at most {} of {} ports held",
            m.max_ports_spliced, m.ports_per_server
        ),
        result: match (full, met) {
            (false, _) => "not measured",
            (true, true) => "met",
            (true, false) => "missed",
        },
    }
}

fn judge(
    target: String,
    ours: Option<f64>,
    theirs: Option<f64>,
    holds: impl Fn(f64, f64) -> bool,
    show: impl Fn(f64) -> String,
) -> TargetCheck {
    match (ours, theirs) {
        (Some(a), Some(b)) => TargetCheck {
            target,
            stickylb: format!("{} ({:.2}x)", show(a), a / b),
            reference: show(b),
            result: if holds(a, b) { "met" } else { "missed" },
        },
        _ => TargetCheck {
            target,
            stickylb: ours.map_or("-".into(), &show),
            reference: theirs.map_or("-".into(), &show),
            result: "not measured",
        },
    }
}
