//! What a run produces: the one table (scenario, our figure, baseline, ratio), the exact
//! commands, the notes, the plot specifications for `scripts/bench-plot.py`, and their rendering
//! as text and as `docs/benchmarks.md`.

use std::fmt::Write as _;

use serde::Serialize;
use serde_json::{Value, json};

use crate::tools::Percentiles;

/// One line of the table.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Row {
    /// Scenario and measure, e.g. `1 cache-hit GET: requests/s`.
    pub(crate) scenario: String,
    /// Our figure.
    pub(crate) ours: Option<f64>,
    /// Baseline figure.
    pub(crate) baseline: Option<f64>,
    /// Unit of both figures.
    pub(crate) unit: String,
    /// What the baseline is.
    pub(crate) baseline_what: String,
}

impl Row {
    /// `ours / baseline`, when both exist.
    pub(crate) fn ratio(&self) -> Option<f64> {
        match (self.ours, self.baseline) {
            (Some(o), Some(b)) if b > 0.0 && o.is_finite() && b.is_finite() => Some(o / b),
            _ => None,
        }
    }
}

/// Everything a run collected.
#[derive(Debug, Default, Serialize)]
pub(crate) struct Report {
    /// The table.
    pub(crate) rows: Vec<Row>,
    /// `(scenario, command line)` in the order they ran.
    pub(crate) commands: Vec<(String, String)>,
    /// Caveats and observations.
    pub(crate) notes: Vec<String>,
    /// Plot specifications for `scripts/bench-plot.py`.
    pub(crate) plots: Vec<Value>,
    /// Whole Markdown sections (title and text), placed before the exact commands.
    pub(crate) sections: Vec<String>,
}

fn ratio(x: f64) -> String {
    if x >= 0.1 {
        format!("{x:.2}×")
    } else if x >= 0.001 {
        format!("{x:.3}×")
    } else {
        format!("{x:.1e}×")
    }
}

fn number(value: Option<f64>, unit: &str) -> String {
    match value {
        // A column that does not apply (no baseline, no ratio).
        None => "n/a".to_owned(),
        Some(v) if !v.is_finite() => "—".to_owned(),
        Some(v) => {
            let text = if v >= 1000.0 {
                format!("{v:.0}")
            } else if v >= 100.0 {
                format!("{v:.1}")
            } else if v >= 10.0 {
                format!("{v:.2}")
            } else {
                format!("{v:.3}")
            };
            if unit.is_empty() {
                text
            } else {
                format!("{text} {unit}")
            }
        }
    }
}

impl Report {
    /// Adds a table row.
    pub(crate) fn row(
        &mut self,
        scenario: &str,
        unit: &str,
        ours: Option<f64>,
        baseline: Option<f64>,
        baseline_what: &str,
    ) {
        self.rows.push(Row {
            scenario: scenario.to_owned(),
            ours,
            baseline,
            unit: unit.to_owned(),
            baseline_what: baseline_what.to_owned(),
        });
    }

    /// Records a command line that ran.
    pub(crate) fn command(&mut self, scenario: &str, line: String) {
        self.commands.push((scenario.to_owned(), line));
    }

    /// Adds a note.
    pub(crate) fn note(&mut self, text: impl Into<String>) {
        self.notes.push(text.into());
    }

    /// A latency plot: one line per series over the percentiles.
    pub(crate) fn latency_plot(
        &mut self,
        file: &str,
        title: &str,
        series: &[(&str, &Percentiles)],
    ) {
        let series: Vec<Value> = series
            .iter()
            .map(|(label, points)| json!({ "label": label, "points": points }))
            .collect();
        self.plots.push(json!({
            "file": file, "title": title, "kind": "percentiles", "series": series,
        }));
    }

    /// A bar plot.
    pub(crate) fn bar_plot(
        &mut self,
        file: &str,
        title: &str,
        ylabel: &str,
        bars: &[(String, f64)],
    ) {
        let bars: Vec<Value> = bars
            .iter()
            .map(|(label, value)| json!({ "label": label, "value": value }))
            .collect();
        self.plots.push(json!({
            "file": file, "title": title, "kind": "bars", "ylabel": ylabel, "bars": bars,
        }));
    }

    /// Rows ordered by scenario number (stable: the order within a scenario is kept).
    fn sorted(&self) -> Vec<&Row> {
        let mut rows: Vec<&Row> = self.rows.iter().collect();
        rows.sort_by_key(|r| {
            r.scenario
                .split_whitespace()
                .next()
                .and_then(|n| n.parse::<u32>().ok())
                .unwrap_or(u32::MAX)
        });
        rows
    }

    fn cells(&self) -> Vec<[String; 5]> {
        self.sorted()
            .into_iter()
            .map(|r| {
                [
                    r.scenario.clone(),
                    number(r.ours, &r.unit),
                    number(r.baseline, &r.unit),
                    r.ratio().map_or("n/a".to_owned(), ratio),
                    r.baseline_what.clone(),
                ]
            })
            .collect()
    }

    const HEADER: [&'static str; 5] = ["scenario", "ours", "baseline", "ratio", "baseline is"];

    /// The table as aligned plain text.
    pub(crate) fn text_table(&self) -> String {
        let cells = self.cells();
        let mut widths = Self::HEADER.map(|h| h.chars().count());
        for row in &cells {
            for (w, c) in widths.iter_mut().zip(row) {
                *w = (*w).max(c.chars().count());
            }
        }
        let line = |row: &[String]| {
            row.iter()
                .zip(widths)
                .map(|(c, w)| format!("{c:<w$}"))
                .collect::<Vec<_>>()
                .join("  ")
                .trim_end()
                .to_owned()
        };
        let header: Vec<String> = Self::HEADER.iter().map(|s| (*s).to_owned()).collect();
        let mut out = line(&header);
        out.push('\n');
        out.push_str(&"-".repeat(widths.iter().sum::<usize>() + 2 * (widths.len() - 1)));
        out.push('\n');
        for row in &cells {
            out.push_str(&line(row));
            out.push('\n');
        }
        out
    }

    /// `docs/benchmarks.md`.
    pub(crate) fn markdown(
        &self,
        machine: &[(String, String)],
        plots: &[String],
        took: &str,
    ) -> String {
        let mut md = String::new();
        let _ = writeln!(md, "# Benchmarks\n");
        let _ = writeln!(
            md,
            "Written by `make bench` (`scripts/bench` → `statecast-bench`); do not edit by hand. \
             The figures describe one run on one machine: they report, they do not gate.\n"
        );
        let _ = writeln!(md, "## Machine and run\n");
        for (k, v) in machine {
            let _ = writeln!(md, "- {k}: {v}");
        }
        let _ = writeln!(md, "- the whole command took: {took}\n");
        let _ = writeln!(md, "## Results\n");
        let _ = writeln!(
            md,
            "Ratio is ours ÷ baseline: above 1 means more for throughputs and slower for latencies.\n"
        );
        let _ = writeln!(md, "| {} |", Self::HEADER.join(" | "));
        let _ = writeln!(md, "|{}", "---|".repeat(Self::HEADER.len()));
        for row in self.cells() {
            let _ = writeln!(md, "| {} |", row.join(" | ").replace('\n', " "));
        }
        let _ = writeln!(md, "\n## Notes and caveats\n");
        for note in &self.notes {
            let _ = writeln!(md, "- {note}");
        }
        if !plots.is_empty() {
            let _ = writeln!(md, "\n## Plots\n");
            for file in plots {
                let _ = writeln!(md, "![{file}](bench/{file})\n");
            }
        }
        for section in &self.sections {
            let _ = writeln!(md, "{}\n", section.trim_end());
        }
        let _ = writeln!(md, "## Exact commands\n");
        let _ = writeln!(
            md,
            "Run from the repository root; ports, database and topic names are the ones of this run \
             (each run makes fresh ones).\n"
        );
        let mut last = "";
        for (scenario, line) in &self.commands {
            if scenario != last {
                let _ = writeln!(md, "\n{scenario}:\n");
                last = scenario;
            }
            let _ = writeln!(md, "```sh\n{line}\n```");
        }
        md
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn table_has_ratio_and_dashes() {
        let mut report = Report::default();
        report.row(
            "1 GET: requests/s",
            "req/s",
            Some(200.0),
            Some(100.0),
            "redis",
        );
        report.row("6 RSS", "MiB", Some(20.0), None, "none");
        let text = report.text_table();
        assert!(text.contains("2.00×"), "{text}");
        assert!(text.contains("n/a"), "{text}");
        let md = report.markdown(&[("cpu".into(), "x".into())], &[], "1 s");
        assert!(md.contains("| 1 GET: requests/s | 200.0 req/s | 100.0 req/s | 2.00× | redis |"));
    }
}
