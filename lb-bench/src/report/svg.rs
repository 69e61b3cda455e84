//! `benchmarks.svg`: each workload's figure of merit (req/s; MB/s for downloads) as a ratio to
//! HAProxy's and to the direct path's, for stickylb with the fast path off and on: two panels
//! of horizontal bars with a line at 1.0. Plain SVG text, no dependency; the markdown report
//! links it.

use std::fmt::Write as _;

use super::{Report, Summary};
use crate::{contender::Contender, workload::Workload};

const WIDTH: f64 = 980.0;
const LABEL: f64 = 190.0;
const PANEL: f64 = 330.0;
const GAP: f64 = 60.0;
const TOP: f64 = 96.0;
const ROW: f64 = 34.0;
const BAR: f64 = 12.0;
const OFF_COLOUR: &str = "#8395a7";
const ON_COLOUR: &str = "#2e86de";

pub(super) fn render(report: &Report) -> String {
    let rows: Vec<Workload> = Workload::ALL
        .into_iter()
        .filter(|w| report.results.iter().any(|s| s.workload == *w))
        .collect();
    let height = TOP + ROW * rows.len() as f64 + 50.0;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{WIDTH}\" height=\"{height}\" \
         viewBox=\"0 0 {WIDTH} {height}\" font-family=\"sans-serif\" font-size=\"12\">\n\
         <rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n\
         <text x=\"10\" y=\"22\" font-size=\"15\" font-weight=\"bold\">stickylb, fast path off \
         and on: req/s (MB/s for downloads) as a ratio</text>\n\
         <text x=\"10\" y=\"40\" fill=\"#555\">Written by cargo xtask bench ({}, {} run(s) per \
         cell, medians).</text>\n\
         <text x=\"10\" y=\"56\" fill=\"#555\">paced-keep-alive offers a fixed rate: its ratios \
         are ~1 by design (its p99 is in BENCHMARKS.md).</text>",
        escape(&report.machine.date),
        report.plan.runs,
    );
    legend(&mut out);
    let panels = [
        ("vs HAProxy 2.6 (1.0 = HAProxy)", Contender::Haproxy),
        ("vs direct (1.0 = no load balancer)", Contender::Direct),
    ];
    for (i, (title, reference)) in panels.into_iter().enumerate() {
        let left = LABEL + i as f64 * (PANEL + GAP);
        panel(&mut out, report, &rows, left, title, reference);
    }
    for (i, workload) in rows.iter().enumerate() {
        let y = TOP + ROW * i as f64 + ROW / 2.0 + 4.0;
        let _ = writeln!(
            out,
            "<text x=\"{}\" y=\"{y}\" text-anchor=\"end\">{}</text>",
            LABEL - 10.0,
            escape(workload.id())
        );
    }
    out.push_str("</svg>\n");
    out
}

fn legend(out: &mut String) {
    for (i, (colour, name)) in [(OFF_COLOUR, "fast path off"), (ON_COLOUR, "fast path on")]
        .into_iter()
        .enumerate()
    {
        let x = WIDTH - 260.0 + 130.0 * i as f64;
        let _ = writeln!(
            out,
            "<rect x=\"{x}\" y=\"14\" width=\"14\" height=\"10\" fill=\"{colour}\"/>\
             <text x=\"{}\" y=\"23\">{name}</text>",
            x + 18.0
        );
    }
}

/// The ratio of `contender`'s merit to `reference`'s on `workload`.
fn ratio(
    report: &Report,
    workload: Workload,
    contender: Contender,
    reference: Contender,
) -> Option<f64> {
    let merit = |c: Contender| {
        report
            .results
            .iter()
            .find(|s| s.workload == workload && s.contender == c)
            .and_then(Summary::merit)
    };
    Some(merit(contender)? / merit(reference).filter(|m| *m > 0.0)?)
}

fn panel(
    out: &mut String,
    report: &Report,
    rows: &[Workload],
    left: f64,
    title: &str,
    reference: Contender,
) {
    let values: Vec<[Option<f64>; 2]> = rows
        .iter()
        .map(|&w| {
            [Contender::Stickylb, Contender::StickylbFastPath]
                .map(|c| ratio(report, w, c, reference))
        })
        .collect();
    let max = values
        .iter()
        .flatten()
        .flatten()
        .fold(1.2f64, |m, v| m.max(*v));
    let scale_max = (max * 2.0).ceil() / 2.0;
    let x = |v: f64| left + PANEL * (v / scale_max).min(1.0);
    let bottom = TOP + ROW * rows.len() as f64;
    let _ = writeln!(
        out,
        "<text x=\"{left}\" y=\"{}\" font-weight=\"bold\">{}</text>",
        TOP - 8.0,
        escape(title)
    );
    // Gridlines every 0.5, the 1.0 line darker.
    let mut tick = 0.0;
    while tick <= scale_max + 1e-9 {
        let (colour, width) = if (tick - 1.0).abs() < 1e-9 {
            ("#222", 1.5)
        } else {
            ("#ddd", 1.0)
        };
        let _ = writeln!(
            out,
            "<line x1=\"{0}\" y1=\"{TOP}\" x2=\"{0}\" y2=\"{bottom}\" stroke=\"{colour}\" \
             stroke-width=\"{width}\"/><text x=\"{0}\" y=\"{1}\" text-anchor=\"middle\" \
             fill=\"#555\">{tick:.1}</text>",
            x(tick),
            bottom + 16.0
        );
        tick += 0.5;
    }
    for (i, pair) in values.iter().enumerate() {
        for (j, (value, colour)) in pair.iter().zip([OFF_COLOUR, ON_COLOUR]).enumerate() {
            let y = TOP + ROW * i as f64 + 4.0 + j as f64 * (BAR + 2.0);
            match value {
                Some(v) => {
                    let _ = writeln!(
                        out,
                        "<rect x=\"{left}\" y=\"{y}\" width=\"{:.1}\" height=\"{BAR}\" \
                         fill=\"{colour}\"/><text x=\"{:.1}\" y=\"{:.1}\" font-size=\"10\">\
                         {v:.2}x</text>",
                        x(*v) - left,
                        x(*v) + 3.0,
                        y + BAR - 2.0
                    );
                }
                None => {
                    // Over TLS the fast path and the direct path do not apply.
                    let contender = [Contender::Stickylb, Contender::StickylbFastPath][j];
                    let applies = rows
                        .get(i)
                        .is_some_and(|w| w.runs_against(contender) && w.runs_against(reference));
                    let _ = writeln!(
                        out,
                        "<text x=\"{}\" y=\"{:.1}\" font-size=\"10\" fill=\"#999\">{}</text>",
                        left + 3.0,
                        y + BAR - 2.0,
                        if applies { "not run" } else { "n/a" }
                    );
                }
            }
        }
    }
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

#[cfg(test)]
mod tests {
    use super::render;
    use crate::{contender::Contender, report::tests::sample_report, workload::Workload};

    #[test]
    fn every_workload_has_a_row_and_bars_in_both_panels() {
        let svg = render(&sample_report());
        assert!(svg.starts_with("<svg ") && svg.trim_end().ends_with("</svg>"));
        for workload in Workload::ALL {
            assert!(
                svg.contains(&format!(">{}</text>", workload.id())),
                "{}",
                workload.id()
            );
        }
        // Two contenders, two panels, every workload: one bar each, but over TLS only stickylb
        // (fast path off) against HAProxy.
        let tls = Workload::ALL
            .into_iter()
            .filter(|w| !w.runs_against(Contender::Direct))
            .count();
        assert_eq!(
            svg.matches("<rect x=").count() - 2,
            4 * (Workload::ALL.len() - tls) + tls,
            "{svg}"
        );
    }
}
