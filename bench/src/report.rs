//! Figures, scenario outcomes and their rendering: a Markdown table (stdout and RESULTS.md) and
//! JSON for tracking.

use serde::Serialize;

use crate::stats::{paired_difference, paired_ratio, Spread};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ComparisonKind {
    /// Tandem minus baseline (added latency).
    Difference,
    /// Tandem divided by baseline.
    Ratio,
}

#[derive(Debug, Clone, Serialize)]
pub struct Comparison {
    pub kind: ComparisonKind,
    pub value: Spread,
}

/// A target another issue set, checked on the median.
#[derive(Debug, Clone, Copy, Serialize)]
#[serde(tag = "on", rename_all = "snake_case")]
pub enum Target {
    /// Tandem's own figure at most this.
    ValueAtMost { limit: f64 },
    /// Tandem's own figure at least this.
    ValueAtLeast { limit: f64 },
    /// The comparison (difference or ratio) at most this.
    ComparisonAtMost { limit: f64 },
    /// The comparison at least this.
    ComparisonAtLeast { limit: f64 },
}

#[derive(Debug, Clone, Serialize)]
pub struct Figure {
    pub metric: String,
    pub unit: String,
    pub tandem: Option<Spread>,
    pub baseline_name: Option<String>,
    pub baseline: Option<Spread>,
    pub comparison: Option<Comparison>,
    pub target: Option<Target>,
    pub target_text: Option<String>,
    pub target_met: Option<bool>,
    /// Dapr's published figure (other hardware; see shared/reference/dapr.md section 6).
    pub dapr: Option<String>,
    /// Why this row has no Tandem figure.
    pub unavailable: Option<String>,
}

impl Figure {
    pub fn new(metric: impl Into<String>, unit: &str) -> Figure {
        Figure {
            metric: metric.into(),
            unit: unit.to_string(),
            tandem: None,
            baseline_name: None,
            baseline: None,
            comparison: None,
            target: None,
            target_text: None,
            target_met: None,
            dapr: None,
            unavailable: None,
        }
    }

    /// Tandem's per-repetition values.
    pub fn tandem(mut self, reps: &[f64]) -> Figure {
        self.tandem = Spread::of(reps);
        self
    }

    /// The baseline's per-repetition values; `kind` compares Tandem with it per repetition.
    pub fn against(
        mut self,
        name: &str,
        tandem: &[f64],
        baseline: &[f64],
        kind: ComparisonKind,
    ) -> Figure {
        self.baseline_name = Some(name.to_string());
        self.baseline = Spread::of(baseline);
        let value = match kind {
            ComparisonKind::Difference => paired_difference(tandem, baseline),
            ComparisonKind::Ratio => paired_ratio(tandem, baseline),
        };
        self.comparison = value.map(|value| Comparison { kind, value });
        self
    }

    /// A baseline shown beside Tandem without a comparison.
    pub fn beside(mut self, name: &str, baseline: &[f64]) -> Figure {
        self.baseline_name = Some(name.to_string());
        self.baseline = Spread::of(baseline);
        self
    }

    pub fn target(mut self, target: Target, text: &str) -> Figure {
        self.target = Some(target);
        self.target_text = Some(text.to_string());
        self
    }

    pub fn dapr(mut self, text: &str) -> Figure {
        self.dapr = Some(text.to_string());
        self
    }

    pub fn unavailable(mut self, reason: &str) -> Figure {
        self.unavailable = Some(reason.to_string());
        self
    }

    /// Checks the target on the medians (after every figure is in).
    pub fn evaluate(mut self) -> Figure {
        self.target_met = match self.target {
            None => None,
            Some(Target::ValueAtMost { limit }) => self.tandem.map(|s| s.median <= limit),
            Some(Target::ValueAtLeast { limit }) => self.tandem.map(|s| s.median >= limit),
            Some(Target::ComparisonAtMost { limit }) => {
                self.comparison.as_ref().map(|c| c.value.median <= limit)
            }
            Some(Target::ComparisonAtLeast { limit }) => {
                self.comparison.as_ref().map(|c| c.value.median >= limit)
            }
        };
        self
    }
}

#[derive(Debug, Clone, Serialize)]
#[serde(tag = "status", content = "reason", rename_all = "lowercase")]
pub enum Status {
    Ran,
    Unavailable(String),
    Failed(String),
}

#[derive(Debug, Clone, Serialize)]
pub struct ScenarioReport {
    pub name: String,
    pub status: Status,
    pub figures: Vec<Figure>,
    pub notes: Vec<String>,
}

impl ScenarioReport {
    pub fn new(name: &str) -> ScenarioReport {
        ScenarioReport {
            name: name.to_string(),
            status: Status::Ran,
            figures: Vec::new(),
            notes: Vec::new(),
        }
    }

    pub fn push(&mut self, f: Figure) {
        self.figures.push(f.evaluate());
    }

    /// Marks the scenario unavailable (keeps the first reason; a failure wins over it).
    pub fn mark_unavailable(&mut self, reason: String) {
        if matches!(self.status, Status::Ran) {
            self.status = Status::Unavailable(reason);
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Machine {
    pub cores: usize,
    pub memory_mb: u64,
    pub cpu_model: String,
    pub kernel: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct RunInfo {
    pub date: String,
    pub machine: Machine,
    pub commit: String,
    pub command: String,
    pub mode: String,
    pub generator: String,
    pub tandem_binary: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub run: RunInfo,
    pub scenarios: Vec<ScenarioReport>,
}

/// A number with as many decimals as its size deserves.
pub fn number(x: f64) -> String {
    let a = x.abs();
    if a == 0.0 {
        "0".into()
    } else if a >= 1000.0 {
        format!("{x:.0}")
    } else if a >= 100.0 {
        format!("{x:.1}")
    } else if a >= 1.0 {
        format!("{x:.2}")
    } else if a >= 0.01 {
        format!("{x:.3}")
    } else {
        format!("{x:.4}")
    }
}

fn signed(x: f64) -> String {
    if x > 0.0 {
        format!("+{}", number(x))
    } else {
        number(x)
    }
}

pub fn spread_text(s: &Spread, unit: &str, sign: bool) -> String {
    let f = |x: f64| if sign { signed(x) } else { number(x) };
    let unit = if unit.is_empty() {
        String::new()
    } else {
        format!(" {unit}")
    };
    if s.n <= 1 || (s.min == s.max) {
        format!("{}{unit}", f(s.median))
    } else {
        format!("{}{unit} ({}…{})", f(s.median), f(s.min), f(s.max))
    }
}

fn comparison_text(c: &Comparison, unit: &str) -> String {
    match c.kind {
        ComparisonKind::Difference => spread_text(&c.value, unit, true),
        ComparisonKind::Ratio => spread_text(&c.value, "×", false),
    }
}

fn cell(s: &str) -> String {
    s.replace('|', "\\|").replace('\n', " ")
}

impl Report {
    /// The Markdown table of every figure.
    pub fn table(&self) -> String {
        let mut out = String::new();
        out.push_str("| Scenario | Metric | Tandem | Baseline | Tandem vs baseline | Target | Dapr (published, other hardware) |\n");
        out.push_str("|---|---|---|---|---|---|---|\n");
        for sc in &self.scenarios {
            match &sc.status {
                Status::Failed(reason) if sc.figures.is_empty() => {
                    out.push_str(&format!(
                        "| {} | — | **error**: {} | | | | |\n",
                        sc.name,
                        cell(reason)
                    ));
                }
                Status::Unavailable(reason) if sc.figures.is_empty() => {
                    out.push_str(&format!(
                        "| {} | — | unavailable: {} | | | | |\n",
                        sc.name,
                        cell(reason)
                    ));
                }
                _ => {}
            }
            for f in &sc.figures {
                let tandem = match (&f.unavailable, &f.tandem) {
                    (Some(r), _) => format!("unavailable: {}", cell(r)),
                    (None, Some(s)) => spread_text(s, &f.unit, false),
                    (None, None) => "—".into(),
                };
                let baseline = match (&f.baseline_name, &f.baseline) {
                    (Some(n), Some(s)) => format!("{}: {}", n, spread_text(s, &f.unit, false)),
                    (Some(n), None) => format!("{n}: —"),
                    _ => String::new(),
                };
                let cmp = f
                    .comparison
                    .as_ref()
                    .filter(|_| f.unavailable.is_none())
                    .map(|c| comparison_text(c, &f.unit))
                    .unwrap_or_default();
                let target = match (&f.target_text, f.target_met) {
                    (Some(t), Some(true)) => format!("{t} ✅"),
                    (Some(t), Some(false)) => format!("{t} ❌"),
                    (Some(t), None) => t.clone(),
                    (None, _) => String::new(),
                };
                out.push_str(&format!(
                    "| {} | {} | {} | {} | {} | {} | {} |\n",
                    sc.name,
                    cell(&f.metric),
                    tandem,
                    cell(&baseline),
                    cmp,
                    cell(&target),
                    cell(f.dapr.as_deref().unwrap_or("")),
                ));
            }
            if let Status::Failed(reason) = &sc.status {
                if !sc.figures.is_empty() {
                    out.push_str(&format!(
                        "| {} | — | **error**: {} | | | | |\n",
                        sc.name,
                        cell(reason)
                    ));
                }
            }
        }
        out
    }

    /// The whole report as Markdown: run information, the table and the notes.
    pub fn markdown(&self) -> String {
        let r = &self.run;
        let mut out = String::new();
        out.push_str(&format!(
            "- Date: {}\n- Machine: {} cores, {} MB memory, {}, Linux {}\n- Commit: {}\n- Command: `{}`\n- Mode: {}\n- Generator: {}\n- Tandem binary: {}\n\n",
            r.date, r.machine.cores, r.machine.memory_mb, r.machine.cpu_model, r.machine.kernel,
            r.commit, r.command, r.mode, r.generator, r.tandem_binary
        ));
        out.push_str(
            "Each cell is the median of the repetitions, with min…max in parentheses. \
             \"Tandem vs baseline\" is taken per repetition (both measured back to back) before \
             the median. Dapr's figures were taken on other hardware (Kubernetes, 4-core nodes) \
             and are shown for orientation only.\n\n",
        );
        out.push_str(&self.table());
        let notes: Vec<String> = self
            .scenarios
            .iter()
            .flat_map(|s| s.notes.iter().map(move |n| format!("- {}: {}", s.name, n)))
            .collect();
        if !notes.is_empty() {
            out.push_str("\nNotes:\n\n");
            out.push_str(&notes.join("\n"));
            out.push('\n');
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_keep_meaningful_digits() {
        assert_eq!(number(0.0), "0");
        assert_eq!(number(0.0432), "0.043");
        assert_eq!(number(0.004321), "0.0043");
        assert_eq!(number(1.234), "1.23");
        assert_eq!(number(123.45), "123.5");
        assert_eq!(number(21_345.6), "21346");
    }

    #[test]
    fn differences_are_signed_and_ratios_marked() {
        let d = Comparison {
            kind: ComparisonKind::Difference,
            value: Spread::of(&[0.1, 0.12, 0.2]).unwrap(),
        };
        assert_eq!(comparison_text(&d, "ms"), "+0.120 ms (+0.100…+0.200)");
        let r = Comparison {
            kind: ComparisonKind::Ratio,
            value: Spread::of(&[1.5]).unwrap(),
        };
        assert_eq!(comparison_text(&r, "ms"), "1.50 ×");
    }

    #[test]
    fn targets_are_checked_on_the_median() {
        let f = Figure::new("p50", "ms")
            .tandem(&[1.1, 1.2, 1.3])
            .against(
                "direct",
                &[1.1, 1.2, 1.3],
                &[1.0, 1.0, 1.0],
                ComparisonKind::Difference,
            )
            .target(Target::ComparisonAtMost { limit: 0.15 }, "≤ +0.15 ms")
            .evaluate();
        assert_eq!(f.target_met, Some(false));
        let f = Figure::new("rss", "MB")
            .tandem(&[7.0, 9.0, 7.5])
            .target(Target::ValueAtMost { limit: 8.0 }, "< 8 MB")
            .evaluate();
        assert_eq!(f.target_met, Some(true));
        let f = Figure::new("rate", "msg/s")
            .target(Target::ValueAtLeast { limit: 1.0 }, "")
            .evaluate();
        assert_eq!(f.target_met, None);
    }

    #[test]
    fn unavailable_rows_say_why() {
        let mut sc = ScenarioReport::new("state");
        sc.push(Figure::new("GET p50", "ms").unavailable("route not served"));
        sc.mark_unavailable("route not served".into());
        let report = Report {
            run: RunInfo {
                date: "d".into(),
                machine: Machine {
                    cores: 2,
                    memory_mb: 1,
                    cpu_model: "cpu".into(),
                    kernel: "k".into(),
                },
                commit: "c".into(),
                command: "x".into(),
                mode: "quick".into(),
                generator: "g".into(),
                tandem_binary: "t".into(),
            },
            scenarios: vec![sc],
        };
        let t = report.table();
        assert!(t.contains("| state | GET p50 | unavailable: route not served |"));
        let json = serde_json::to_value(&report).unwrap();
        assert_eq!(json["scenarios"][0]["status"]["status"], "unavailable");
    }
}
