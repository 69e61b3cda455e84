//! Checks that a bench run produced a well-formed report: `BENCHMARKS.md` has the results table
//! with the expected columns, one row per workload and contender that ran, figures that parse,
//! the table-scale table, and a `benchmarks.json` that parses. Shape only, never speed: `cargo xtask
//! test` runs `bench --quick` and then this (`lb-bench verify`).

use std::{collections::HashSet, fs, path::Path};

use anyhow::{bail, ensure, Context as _};

use super::{
    contender::Contender,
    report::{
        markdown::{NONE, RESULTS_HEADING, RESULT_COLUMNS, SCALE_COLUMNS, SCALE_HEADING},
        JSON_FILE, MARKDOWN_FILE, SVG_FILE,
    },
    workload::Workload,
};

/// Checks the report that a run wrote into `dir`.
pub(crate) fn verify(dir: &Path) -> anyhow::Result<()> {
    let markdown_path = dir.join(MARKDOWN_FILE);
    let markdown = fs::read_to_string(&markdown_path)
        .with_context(|| format!("could not read {}", markdown_path.display()))?;
    verify_markdown(&markdown)
        .with_context(|| format!("{} is malformed", markdown_path.display()))?;
    let json_path = dir.join(JSON_FILE);
    let json = fs::read_to_string(&json_path)
        .with_context(|| format!("could not read {}", json_path.display()))?;
    verify_json(&json).with_context(|| format!("{} is malformed", json_path.display()))?;
    let svg_path = dir.join(SVG_FILE);
    let svg = fs::read_to_string(&svg_path)
        .with_context(|| format!("could not read {}", svg_path.display()))?;
    verify_svg(&svg).with_context(|| format!("{} is malformed", svg_path.display()))?;
    println!(
        "bench: {}, {} and {} are well-formed",
        markdown_path.display(),
        json_path.display(),
        svg_path.display()
    );
    Ok(())
}

/// An SVG document with a row label for every workload.
fn verify_svg(svg: &str) -> anyhow::Result<()> {
    ensure!(
        svg.starts_with("<svg ") && svg.trim_end().ends_with("</svg>"),
        "not an SVG document"
    );
    for workload in Workload::ALL {
        ensure!(
            svg.contains(&format!(">{}</text>", workload.id())),
            "no row for {}",
            workload.id()
        );
    }
    Ok(())
}

fn verify_markdown(markdown: &str) -> anyhow::Result<()> {
    let contenders = Contender::available();

    let rows = table_after(markdown, RESULTS_HEADING, &RESULT_COLUMNS)?;
    let mut seen = HashSet::new();
    for row in &rows {
        let workload =
            Workload::from_id(&row[0]).with_context(|| format!("unknown workload `{}`", row[0]))?;
        let contender = contenders
            .iter()
            .copied()
            .find(|c| c.label() == row[1])
            .with_context(|| format!("unknown contender `{}`", row[1]))?;
        ensure!(
            seen.insert((workload.id(), row[1].clone())),
            "row {} / {} twice",
            row[0],
            row[1]
        );
        let runs: u32 = column(row, "runs").parse().context("runs")?;
        ensure!(runs >= 1, "no runs in {} / {}", row[0], row[1]);
        for (name, value) in RESULT_COLUMNS.iter().zip(row).skip(3) {
            figure(value).with_context(|| format!("{name} of {} / {}", row[0], row[1]))?;
        }
        // Every run measures something: a rate for requests, a throughput for downloads; and
        // the load balancer's CPU per request or per GB, which the direct path has none of.
        let (merit, lb_cpu) = if workload.per_gigabyte() {
            ("MB/s", "LB CPU s/GB")
        } else {
            ("req/s", "LB CPU µs/req")
        };
        ensure!(
            figure(column(row, merit))?.is_some_and(|v| v > 0.0),
            "no {merit} for {} / {}",
            row[0],
            row[1]
        );
        ensure!(
            (contender == Contender::Direct) == figure(column(row, lb_cpu))?.is_none(),
            "{lb_cpu} of {} / {}: a figure for load balancers only",
            row[0],
            row[1]
        );
    }
    for workload in Workload::ALL {
        for contender in contenders.iter().filter(|&&c| workload.runs_against(c)) {
            ensure!(
                seen.contains(&(workload.id(), contender.label().to_owned())),
                "no row for {} / {}",
                workload.id(),
                contender.label()
            );
        }
    }

    let scale = table_after(markdown, SCALE_HEADING, &SCALE_COLUMNS)?;
    for name in [Contender::Haproxy, Contender::Stickylb].map(Contender::label) {
        let row = scale
            .iter()
            .find(|row| row[0] == name)
            .with_context(|| format!("no table-scale row for {name}"))?;
        for (column, value) in SCALE_COLUMNS.iter().zip(row).skip(1) {
            figure(value).with_context(|| format!("{column} of {name}"))?;
        }
        ensure!(
            figure(&row[1])?.is_some_and(|entries| entries > 0.0),
            "no entries for {name}"
        );
    }
    Ok(())
}

fn verify_json(json: &str) -> anyhow::Result<()> {
    let value: serde_json::Value = serde_json::from_str(json).context("not JSON")?;
    for key in [
        "machine",
        "plan",
        "results",
        "table_scale",
        "targets",
        "runs",
    ] {
        ensure!(value.get(key).is_some(), "no `{key}`");
    }
    let results = value
        .get("results")
        .and_then(serde_json::Value::as_array)
        .context("`results` is not an array")?;
    ensure!(!results.is_empty(), "`results` is empty");
    Ok(())
}

/// The rows of the first table after the line starting with `heading`, whose header must be
/// exactly `columns`; each row has as many cells.
fn table_after(
    markdown: &str,
    heading: &str,
    columns: &[&str],
) -> anyhow::Result<Vec<Vec<String>>> {
    let mut lines = markdown
        .lines()
        .skip_while(|line| !line.starts_with(heading))
        .skip(1)
        .skip_while(|line| !line.starts_with('|'));
    let header = lines
        .next()
        .with_context(|| format!("no table under `{heading}`"))?;
    let found = cells(header);
    ensure!(
        found == columns,
        "the table under `{heading}` has columns {found:?}, expected {columns:?}"
    );
    let separator = lines.next().unwrap_or_default();
    ensure!(
        cells(separator)
            .iter()
            .all(|cell| cell.trim_matches(':').starts_with("---")),
        "no separator line under the header of `{heading}`"
    );
    let mut rows = Vec::new();
    for line in lines.take_while(|line| line.starts_with('|')) {
        let row = cells(line);
        ensure!(
            row.len() == columns.len(),
            "a row under `{heading}` has {} cells, expected {}: {line}",
            row.len(),
            columns.len()
        );
        rows.push(row);
    }
    if rows.is_empty() {
        bail!("the table under `{heading}` has no rows");
    }
    Ok(rows)
}

/// The cell of a results row under the column named `name`.
fn column<'a>(row: &'a [String], name: &str) -> &'a str {
    RESULT_COLUMNS
        .iter()
        .position(|column| *column == name)
        .and_then(|i| row.get(i))
        .map_or("", String::as_str)
}

fn cells(line: &str) -> Vec<String> {
    let inner = line.trim().trim_start_matches('|').trim_end_matches('|');
    inner
        .split('|')
        .map(|cell| cell.trim().to_owned())
        .collect()
}

/// A figure: a number (a ratio may end in `x`), or [`NONE`] where there is none.
fn figure(value: &str) -> anyhow::Result<Option<f64>> {
    if value == NONE {
        return Ok(None);
    }
    let number: f64 = value
        .trim_end_matches('x')
        .parse()
        .with_context(|| format!("`{value}` is not a number"))?;
    ensure!(
        number.is_finite() && number >= 0.0,
        "`{value}` is not a figure"
    );
    Ok(Some(number))
}

#[cfg(test)]
mod tests {
    use super::{figure, verify_json, verify_markdown};
    use crate::report::{markdown::render, tests::sample_report};

    #[test]
    fn a_rendered_report_is_well_formed() {
        let report = sample_report();
        verify_markdown(&render(&report)).unwrap();
        verify_json(&serde_json::to_string(&report).unwrap()).unwrap();
    }

    #[test]
    fn a_missing_row_a_bad_figure_or_a_changed_column_is_caught() {
        let markdown = render(&sample_report());
        let without_row: String = markdown
            .lines()
            .filter(|line| !line.starts_with("| keep-alive | HAProxy"))
            .map(|line| format!("{line}\n"))
            .collect();
        assert!(verify_markdown(&without_row).is_err());
        let bad_figure = markdown.replacen("| 15000 |", "| fast |", 1);
        assert_ne!(bad_figure, markdown);
        assert!(verify_markdown(&bad_figure).is_err());
        let renamed = markdown.replacen("| p99 ms |", "| p99.9 ms |", 1);
        assert!(verify_markdown(&renamed).is_err());
        assert!(verify_json("{}").is_err());
    }

    #[test]
    fn figures_are_numbers_ratios_or_none() {
        assert_eq!(figure("12.5").unwrap(), Some(12.5));
        assert_eq!(figure("0.91x").unwrap(), Some(0.91));
        assert_eq!(figure("-").unwrap(), None);
        assert!(figure("NaN").is_err());
        assert!(figure("n/a").is_err());
    }
}
