//! The evaluation report: one HTML page with every figure (SVG) and the data of each as CSV
//! beside it, written into a folder:
//!
//! ```text
//! DIR/index.html
//! DIR/<figure>.svg, DIR/<figure>.csv   (one pair per figure that has data)
//! ```
//!
//! Figures: the reward models' learning curve and calibration, best-of-N over-optimization,
//! the runs' ROUGE and labeler score with 95% intervals (and their paired differences), the
//! decompositions' Pk and WindowDiff per book, and policy training curves. A figure whose data
//! does not exist yet is a paragraph saying so and which command produces it.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::bootstrap::{mean_interval, PairedDiff};
use super::curves::{BestOfN, LearningCurve};
use super::plot::{self, BarPanel, DotPanel, LinePanel, Panel, Series};
use super::runs::{self, BootstrapOptions, EvalRun};
use super::EvalError;
use crate::decompose::learned::EvalRow;

/// Where imported decomposition results are kept in `Table::Meta`.
pub const DECOMPOSITION_KEY: &str = "eval/decomposition";
/// Prefix of imported policy-training logs in `Table::Meta`.
pub const POLICY_PREFIX: &str = "eval/policy/";

/// One logged step (or round) of policy training; any of the values may be missing.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PolicyPoint {
    #[serde(alias = "round")]
    pub step: f64,
    #[serde(default)]
    pub loss: Option<f64>,
    #[serde(default)]
    pub kl: Option<f64>,
    #[serde(default)]
    pub reward: Option<f64>,
}

/// A named policy-training log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PolicyLog {
    pub name: String,
    pub points: Vec<PolicyPoint>,
}

/// Parses a policy log: JSONL of `{"step"|"round", "loss"?, "kl"?, "reward"?}`; bad lines by
/// number, all or nothing.
pub fn parse_policy_log(name: &str, text: &str) -> Result<PolicyLog, EvalError> {
    let mut points = Vec::new();
    let mut bad = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        match serde_json::from_str::<PolicyPoint>(line) {
            Ok(p) => points.push(p),
            Err(e) => bad.push((i + 1, format!("not a policy log point: {e}"))),
        }
    }
    if !bad.is_empty() {
        return Err(EvalError::BadLines { path: name.into(), lines: bad });
    }
    if points.is_empty() {
        return Err(EvalError::NoDocuments { path: name.into() });
    }
    Ok(PolicyLog { name: name.into(), points })
}

/// Everything the report draws.
#[derive(Debug, Clone, Default)]
pub struct ReportData {
    pub runs: Vec<EvalRun>,
    /// Pairs of run names to compare (A − B).
    pub comparisons: Vec<(String, String)>,
    pub learning_curve: Option<LearningCurve>,
    pub best_of_n: Option<BestOfN>,
    pub decomposition: Vec<EvalRow>,
    pub policy: Vec<PolicyLog>,
    pub bootstrap: BootstrapOptions,
}

/// What was written.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Written {
    pub index: PathBuf,
    pub figures: Vec<PathBuf>,
    pub csvs: Vec<PathBuf>,
    pub missing: Vec<String>,
}

struct Figure {
    id: &'static str,
    title: &'static str,
    caption: String,
    body: Result<(String, String), String>,
}

const WIDTH: u32 = 860;
const PANEL: u32 = 420;

fn csv_escape(s: &str) -> String {
    if s.contains([',', '"', '\n']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

fn html_escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

fn opt(v: Option<f64>) -> String {
    v.map(|x| format!("{x:.6}")).unwrap_or_default()
}

fn learning_curve_figure(lc: &LearningCurve) -> Result<(String, String), EvalError> {
    let mut by_h: BTreeMap<u32, BTreeMap<usize, Vec<f64>>> = BTreeMap::new();
    let mut csv = String::from("height,train_pairs,repeat,accuracy,log_loss,test_pairs\n");
    for p in &lc.points {
        by_h.entry(p.height).or_default().entry(p.n).or_default().push(100.0 * p.accuracy);
        let _ = writeln!(
            csv,
            "{},{},{},{:.6},{:.6},{}",
            p.height, p.n, p.repeat, p.accuracy, p.log_loss, p.test_pairs
        );
    }
    let series: Vec<Series> = by_h
        .iter()
        .map(|(h, sizes)| {
            let mut points = Vec::new();
            let mut errors = Vec::new();
            let mut scatter = Vec::new();
            for (&n, accs) in sizes {
                let k = accs.len() as f64;
                let mean = accs.iter().sum::<f64>() / k;
                let sd = if accs.len() > 1 {
                    (accs.iter().map(|a| (a - mean).powi(2)).sum::<f64>() / (k - 1.0)).sqrt()
                } else {
                    0.0
                };
                points.push((n as f64, mean));
                errors.push(sd);
                if accs.len() > 1 {
                    scatter.extend(accs.iter().map(|&a| (n as f64, a)));
                }
            }
            let test = lc.points.iter().find(|p| p.height == *h).map_or(0, |p| p.test_pairs);
            Series {
                name: format!("height {h} ({test} held-out pairs)"),
                points,
                errors: Some(errors),
                scatter,
                dashed: false,
            }
        })
        .collect();
    let panel = Panel::Line(LinePanel {
        title: format!(
            "Reward model learning curve ({} held-out {} groups)",
            lc.test_groups, lc.split
        ),
        x_label: "training comparisons (log scale)".into(),
        y_label: "held-out accuracy (%)".into(),
        series,
        x_log: true,
        hline: Some((50.0, "chance (50%)".into())),
        legend_lower_right: true,
        ..LinePanel::default()
    });
    Ok((plot::svg("learning_curve.svg", &[panel], WIDTH, PANEL + 60)?, csv))
}

fn calibration_figure(lc: &LearningCurve) -> Result<(String, String), EvalError> {
    let mut csv = String::from("height,bin_low,bin_high,count,predicted,observed\n");
    let mut by_h: BTreeMap<u32, Vec<(f64, f64)>> = BTreeMap::new();
    for b in &lc.calibration {
        let _ = writeln!(
            csv,
            "{},{:.2},{:.2},{},{:.6},{:.6}",
            b.height, b.low, b.high, b.count, b.predicted, b.observed
        );
        by_h.entry(b.height).or_default().push((b.predicted, b.observed));
    }
    let series = by_h
        .into_iter()
        .map(|(h, points)| Series {
            name: format!("height {h} (ECE {:.3})", lc.ece.get(&h).copied().unwrap_or(f64::NAN)),
            points,
            ..Series::default()
        })
        .collect();
    let panel = Panel::Line(LinePanel {
        title: "Reward model calibration on held-out pairs".into(),
        x_label: "predicted probability that the first summary is preferred".into(),
        y_label: "observed frequency".into(),
        series,
        x_range: Some((0.0, 1.0)),
        y_range: Some((0.0, 1.0)),
        diagonal: true,
        legend_lower_right: true,
        ..LinePanel::default()
    });
    Ok((plot::svg("calibration.svg", &[panel], 640, 600)?, csv))
}

fn best_of_n_figure(b: &BestOfN) -> Result<(String, String), EvalError> {
    let mut csv = String::from("n,kl_nats,proxy_reward,proxy_se,labeler_score,labeler_se\n");
    for p in &b.points {
        let _ = writeln!(
            csv,
            "{},{:.6},{:.6},{:.6},{:.6},{:.6}",
            p.n, p.kl, p.proxy, p.proxy_se, p.gold, p.gold_se
        );
    }
    let labels: Vec<String> = b.points.iter().map(|p| format!("  N={}", p.n)).collect();
    let proxy = Panel::Line(LinePanel {
        title: format!(
            "Best-of-N: proxy reward ({} held-out nodes, {} candidates each)",
            b.nodes, b.candidates
        ),
        x_label: "KL(best-of-N ‖ base) = log N − (N−1)/N (nats)".into(),
        y_label: "reward ensemble mean (logit units)".into(),
        series: vec![Series {
            name: format!("proxy: reward model {}", b.model),
            points: b.points.iter().map(|p| (p.kl, p.proxy)).collect(),
            errors: Some(b.points.iter().map(|p| p.proxy_se).collect()),
            ..Series::default()
        }],
        point_labels: labels.clone(),
        legend_lower_right: true,
        ..LinePanel::default()
    });
    let gold = Panel::Line(LinePanel {
        title: "Best-of-N: independent judge (simulated labeler)".into(),
        x_label: "KL(best-of-N ‖ base) = log N − (N−1)/N (nats)".into(),
        y_label: "labeler score (coverage − length penalty)".into(),
        series: vec![Series {
            name: format!("judge: {}", b.labeler),
            points: b.points.iter().map(|p| (p.kl, p.gold)).collect(),
            errors: Some(b.points.iter().map(|p| p.gold_se).collect()),
            ..Series::default()
        }],
        point_labels: labels,
        legend_lower_right: true,
        ..LinePanel::default()
    });
    Ok((plot::svg("best_of_n.svg", &[proxy, gold], WIDTH, PANEL)?, csv))
}

fn mean_ci(values: &[f64], opts: BootstrapOptions) -> Option<(f64, f64, f64)> {
    if values.is_empty() {
        return None;
    }
    let mean = values.iter().sum::<f64>() / values.len() as f64;
    let (lo, hi) = mean_interval(values, opts.resamples, opts.level, opts.seed)?;
    Some((mean, lo, hi))
}

/// Per run and metric: mean with its bootstrap interval, or nothing when not measured.
fn run_stat(run: &EvalRun, metric: &str, opts: BootstrapOptions) -> Option<(f64, f64, f64)> {
    let values: Option<Vec<f64>> = run.documents.iter().map(|d| runs::metric(d, metric)).collect();
    mean_ci(&values?, opts)
}

fn runs_figure(data: &ReportData) -> Result<(String, String), EvalError> {
    let opts = data.bootstrap;
    let mut csv = String::from("run,metric,documents,mean,ci_low,ci_high\n");
    let metrics = [
        ("rouge1", "lead_rouge1", "ROUGE-1"),
        ("rouge2", "lead_rouge2", "ROUGE-2"),
        ("rougeL", "lead_rougeL", "ROUGE-L"),
    ];
    let mut series = Vec::new();
    let mut lead_series = Vec::new();
    let mut labeler = Vec::new();
    for run in &data.runs {
        let stats: Vec<Option<(f64, f64, f64)>> =
            metrics.iter().map(|(m, _, _)| run_stat(run, m, opts)).collect();
        let leads: Vec<Option<(f64, f64, f64)>> =
            metrics.iter().map(|(_, l, _)| run_stat(run, l, opts)).collect();
        for ((m, l, _), (s, ls)) in metrics.iter().zip(stats.iter().zip(&leads)) {
            for (name, v) in [(*m, s), (*l, ls)] {
                if let Some((mean, lo, hi)) = v {
                    let _ = writeln!(
                        csv,
                        "{},{},{},{mean:.6},{lo:.6},{hi:.6}",
                        csv_escape(&run.name),
                        name,
                        run.documents.len()
                    );
                }
            }
        }
        for (name, metric) in [("labeler", "labeler"), ("lead_labeler", "lead_labeler")] {
            if let Some((mean, lo, hi)) = run_stat(run, metric, opts) {
                let _ = writeln!(
                    csv,
                    "{},{},{},{mean:.6},{lo:.6},{hi:.6}",
                    csv_escape(&run.name),
                    name,
                    run.documents.len()
                );
            }
        }
        series.push((format!("{} (n={})", run.name, run.documents.len()), stats));
        lead_series.push((format!("lead baseline, length of {}", run.name), leads));
        labeler.push((
            run.name.clone(),
            run_stat(run, "labeler", opts),
            run_stat(run, "lead_labeler", opts),
        ));
    }
    series.extend(lead_series);
    let categories: Vec<String> = metrics.iter().map(|m| m.2.to_string()).collect();
    let rouge = Panel::Dots(DotPanel {
        title: "ROUGE F1 (best reference) with 95% bootstrap intervals".into(),
        y_label: "F1".into(),
        categories,
        series,
        zero_line: false,
    });
    let mut panels = vec![rouge];
    if labeler.iter().any(|(_, s, _)| s.is_some()) {
        let cats: Vec<String> = labeler.iter().map(|(n, _, _)| n.clone()).collect();
        panels.push(Panel::Dots(DotPanel {
            title: "Simulated labeler score of the summary (95% intervals)".into(),
            y_label: "labeler score (coverage − length penalty)".into(),
            categories: cats,
            series: vec![
                ("summary".into(), labeler.iter().map(|l| l.1).collect()),
                ("lead baseline".into(), labeler.iter().map(|l| l.2).collect()),
            ],
            zero_line: false,
        }));
    }
    Ok((plot::svg("runs.svg", &panels, WIDTH, PANEL)?, csv))
}

fn compare_figure(data: &ReportData) -> Result<Option<(String, String)>, EvalError> {
    let by_name: BTreeMap<&str, &EvalRun> =
        data.runs.iter().map(|r| (r.name.as_str(), r)).collect();
    let mut csv =
        String::from("a,b,metric,documents,mean_a,mean_b,diff,ci_low,ci_high,win_rate_a\n");
    let shown = ["rouge1", "rouge2", "rougeL", "labeler"];
    let mut series = Vec::new();
    for (a, b) in &data.comparisons {
        let (Some(ra), Some(rb)) = (by_name.get(a.as_str()), by_name.get(b.as_str())) else {
            continue;
        };
        let c = runs::compare(ra, rb, data.bootstrap)?;
        for name in &c.order {
            let d: &PairedDiff = &c.metrics[name];
            let _ = writeln!(
                csv,
                "{},{},{},{},{:.6},{:.6},{:.6},{:.6},{:.6},{:.4}",
                csv_escape(a),
                csv_escape(b),
                name,
                d.n,
                d.mean_a,
                d.mean_b,
                d.diff,
                d.low,
                d.high,
                d.win_rate
            );
        }
        series.push((
            format!("{a} − {b} (n={})", c.documents),
            shown.iter().map(|m| c.metrics.get(*m).map(|d| (d.diff, d.low, d.high))).collect(),
        ));
    }
    if series.is_empty() {
        return Ok(None);
    }
    let panel = Panel::Dots(DotPanel {
        title: "Paired differences between runs (95% bootstrap intervals)".into(),
        y_label: "difference in mean (A − B)".into(),
        categories: vec!["ROUGE-1".into(), "ROUGE-2".into(), "ROUGE-L".into(), "labeler".into()],
        series,
        zero_line: true,
    });
    Ok(Some((plot::svg("compare.svg", &[panel], WIDTH, PANEL)?, csv)))
}

fn decomposition_figure(rows: &[EvalRow]) -> Result<(String, String), EvalError> {
    let mut csv = String::from(
        "book,method,sentences,reference_boundaries,hypothesis_boundaries,pk,window_diff,\
         self_contained_starts,paragraph_ends,scene_ends,median_judge_ms\n",
    );
    let cell = |x: Option<f64>| x.map_or(String::new(), |v| format!("{v:.6}"));
    for r in rows {
        let _ = writeln!(
            csv,
            "{},{},{},{},{},{},{},{},{},{},{}",
            csv_escape(&r.book),
            r.method,
            r.sentences,
            r.reference_boundaries,
            r.hypothesis_boundaries,
            // Undefined (too few sentences for the window) is an empty cell, not a zero.
            r.pk.map_or(String::new(), |v| format!("{v:.6}")),
            r.window_diff.map_or(String::new(), |v| format!("{v:.6}")),
            // Overseeability (rows from before it was measured leave these empty).
            cell(r.self_contained_starts),
            cell(r.paragraph_ends),
            cell(r.scene_ends),
            r.median_judge_ms.map_or(String::new(), |v| format!("{v:.0}"))
        );
    }
    let mut books: Vec<String> = Vec::new();
    for r in rows {
        if !books.contains(&r.book) {
            books.push(r.book.clone());
        }
    }
    let methods = ["fixed", "similarity", "learned"];
    let table = |f: fn(&EvalRow) -> Option<f64>| -> Vec<(String, Vec<Option<f64>>)> {
        methods
            .iter()
            .map(|m| {
                let vals = books
                    .iter()
                    .map(|b| rows.iter().find(|r| &r.book == b && r.method == *m).and_then(f))
                    .collect();
                (m.to_string(), vals)
            })
            .collect()
    };
    let pk = Panel::Bars(BarPanel {
        title: "Decomposition: Pk against held-out chapter starts (lower is better)".into(),
        y_label: "Pk".into(),
        groups: books.clone(),
        series: table(|r| r.pk),
    });
    let wd = Panel::Bars(BarPanel {
        title: "Decomposition: WindowDiff (lower is better)".into(),
        y_label: "WindowDiff".into(),
        groups: books.clone(),
        series: table(|r| r.window_diff),
    });
    let mut panels = vec![pk, wd];
    if rows.iter().any(|r| r.self_contained_starts.is_some()) {
        panels.push(Panel::Bars(BarPanel {
            title: "Overseeability: share of leaves that start self-contained (higher is better)"
                .into(),
            y_label: "share".into(),
            groups: books.clone(),
            series: table(|r| r.self_contained_starts),
        }));
    }
    Ok((plot::svg("decomposition.svg", &panels, WIDTH, PANEL)?, csv))
}

fn policy_figure(logs: &[PolicyLog]) -> Result<(String, String), EvalError> {
    let mut csv = String::from("log,step,loss,kl,reward\n");
    for l in logs {
        for p in &l.points {
            let _ = writeln!(
                csv,
                "{},{},{},{},{}",
                csv_escape(&l.name),
                p.step,
                opt(p.loss),
                opt(p.kl),
                opt(p.reward)
            );
        }
    }
    let panel = |title: &str, y: &str, f: fn(&PolicyPoint) -> Option<f64>| {
        Panel::Line(LinePanel {
            title: title.into(),
            x_label: "step (or round)".into(),
            y_label: y.into(),
            series: logs
                .iter()
                .map(|l| Series {
                    name: l.name.clone(),
                    points: l.points.iter().filter_map(|p| Some((p.step, f(p)?))).collect(),
                    ..Series::default()
                })
                .collect(),
            ..LinePanel::default()
        })
    };
    let panels = [
        panel("Policy training: loss", "loss", |p| p.loss),
        panel("Policy training: KL to the reference policy", "KL (nats)", |p| p.kl),
        panel("Policy training: reward", "reward", |p| p.reward),
    ];
    Ok((plot::svg("policy.svg", &panels, WIDTH, 340)?, csv))
}

fn runs_table(data: &ReportData) -> String {
    let opts = data.bootstrap;
    let mut h = String::from(
        "<table><tr><th>run</th><th>docs</th><th>ROUGE-1</th><th>ROUGE-2</th><th>ROUGE-L</th>\
         <th>lead R-1</th><th>lead R-2</th><th>lead R-L</th><th>length ratio</th><th>reward</th>\
         <th>labeler</th></tr>\n",
    );
    let cell = |v: Option<(f64, f64, f64)>| match v {
        Some((m, lo, hi)) => format!("<td>{m:.4}<br><small>[{lo:.4}, {hi:.4}]</small></td>"),
        None => "<td>–</td>".into(),
    };
    for run in &data.runs {
        let _ =
            write!(h, "<tr><td>{}</td><td>{}</td>", html_escape(&run.name), run.documents.len());
        for m in [
            "rouge1",
            "rouge2",
            "rougeL",
            "lead_rouge1",
            "lead_rouge2",
            "lead_rougeL",
            "length_ratio",
            "reward",
            "labeler",
        ] {
            h.push_str(&cell(run_stat(run, m, opts)));
        }
        h.push_str("</tr>\n");
    }
    h.push_str("</table>\n");
    h
}

fn settings_list(data: &ReportData) -> String {
    let mut h = String::from("<ul>\n");
    for run in &data.runs {
        let s = &run.settings;
        let _ = writeln!(
            h,
            "<li><b>{}</b>: model {}, selector {}, best-of {}, references {}</li>",
            html_escape(&run.name),
            html_escape(s.pointer("/model/name").and_then(|v| v.as_str()).unwrap_or("?")),
            html_escape(s.get("selector").and_then(|v| v.as_str()).unwrap_or("?")),
            s.pointer("/compose/best_of").map(|v| v.to_string()).unwrap_or_else(|| "?".into()),
            html_escape(s.get("references").and_then(|v| v.as_str()).unwrap_or("?")),
        );
    }
    h.push_str("</ul>\n");
    h
}

/// Draws every figure with data and writes the page into `dir`.
pub fn write(dir: &Path, data: &ReportData) -> Result<Written, EvalError> {
    let io = |p: &Path, source| EvalError::Io { path: p.display().to_string(), source };
    std::fs::create_dir_all(dir).map_err(|e| io(dir, e))?;
    let mut figures: Vec<Figure> = Vec::new();
    let lc = data.learning_curve.as_ref();
    figures.push(Figure {
        id: "learning_curve",
        title: "Reward models: learning curve",
        caption: lc.map_or(String::new(), |lc| format!(
            "Held-out accuracy of reward models trained on random subsets of the stored comparisons, per tree height; \
             the dot is the mean over repeats, small dots single repeats, bars ±1 sd. Test pairs: those of a quarter \
             of the split groups ({} {} groups: books, or nodes where the feedback names no book), never trained on.",
            lc.test_groups, lc.split
        )),
        body: lc.map(learning_curve_figure).transpose().map_err(|e| e.to_string()).and_then(|o| {
            o.ok_or_else(|| "no data yet: run `rrm eval learning-curve` (after `rrm feedback simulate`)".to_string())
        }),
    });
    figures.push(Figure {
        id: "calibration",
        title: "Reward models: calibration",
        caption: "Each held-out pair in random order; the model's predicted probability that the first summary \
                  wins (σ of the ensemble-mean margin), binned, against how often it did. On the diagonal: calibrated."
            .into(),
        body: lc
            .filter(|l| !l.calibration.is_empty())
            .map(calibration_figure)
            .transpose()
            .map_err(|e| e.to_string())
            .and_then(|o| o.ok_or_else(|| "no data yet: run `rrm eval learning-curve`".to_string())),
    });
    let bon = data.best_of_n.as_ref();
    figures.push(Figure {
        id: "best_of_n",
        title: "Best-of-N: over-optimization",
        caption: bon.map_or(String::new(), |b| format!(
            "Expected score of the candidate the reward model ranks best among N drawn from {} per node, on {} nodes \
             the reward model never saw (exact estimator over all N-subsets; bars ±1 standard error over nodes). \
             Top: the proxy (reward ensemble mean); bottom: an independent judge. Over-optimization shows as the \
             judge flattening or falling while the proxy keeps rising.",
            b.candidates, b.nodes
        )),
        body: bon.map(best_of_n_figure).transpose().map_err(|e| e.to_string()).and_then(|o| {
            o.ok_or_else(|| "no data yet: run `rrm eval best-of-n` (needs a reward model and nodes summarized with --best-of K)".to_string())
        }),
    });
    figures.push(Figure {
        id: "runs",
        title: "Runs: ROUGE and labeler score",
        caption: "Mean over documents with 95% percentile-bootstrap intervals; the lead baseline of each run takes the \
                  document's first words, as many as that run's summary has."
            .into(),
        body: if data.runs.is_empty() {
            Err("no data yet: run `rrm eval summaries --references FILE --run NAME`".into())
        } else {
            runs_figure(data).map_err(|e| e.to_string())
        },
    });
    figures.push(Figure {
        id: "compare",
        title: "Runs: paired differences",
        caption: "Mean difference A − B over the documents both runs scored, with a paired bootstrap 95% interval; an \
                  interval that excludes zero is a difference the data support."
            .into(),
        body: compare_figure(data).map_err(|e| e.to_string()).and_then(|o| {
            o.ok_or_else(|| "no data yet: needs two stored runs over the same documents".to_string())
        }),
    });
    figures.push(Figure {
        id: "decomposition",
        title: "Decomposition: Pk and WindowDiff per book, and self-contained leaf starts",
        caption: "Parents' boundaries against each book's hidden chapter starts (headings removed), for fixed chunking, \
                  the similarity baseline and the learned decomposer."
            .into(),
        body: if data.decomposition.is_empty() {
            Err("no data yet: `rrm decomposer eval --books … --json > d.jsonl`, then `rrm eval report --decomposition d.jsonl`".into())
        } else {
            decomposition_figure(&data.decomposition).map_err(|e| e.to_string())
        },
    });
    figures.push(Figure {
        id: "policy",
        title: "Policy training",
        caption: "Loss, KL to the reference policy and reward per step or round, from the imported training logs.".into(),
        body: if data.policy.is_empty() {
            Err("no data yet: policy training has not logged anything here (`rrm eval report --policy-log NAME=FILE.jsonl`)".into())
        } else {
            policy_figure(&data.policy).map_err(|e| e.to_string())
        },
    });

    let mut written = Written { index: dir.join("index.html"), ..Written::default() };
    let mut html = String::from(
        "<!doctype html>\n<html><head><meta charset=\"utf-8\"><title>rrm evaluation report</title>\n<style>\
         body{font-family:sans-serif;max-width:920px;margin:2em auto;color:#222}\
         table{border-collapse:collapse;font-size:14px}td,th{border:1px solid #ccc;padding:4px 6px;text-align:right}\
         td:first-child,th:first-child{text-align:left}.missing{color:#a33;font-style:italic}\
         figure{margin:1.5em 0}figcaption{font-size:14px;color:#444}</style></head><body>\n\
         <h1>rrm evaluation report</h1>\n",
    );
    if !data.runs.is_empty() {
        html.push_str("<h2>Runs</h2>\n");
        html.push_str(&runs_table(data));
        html.push_str(&settings_list(data));
    }
    for f in &figures {
        let _ = writeln!(html, "<h2 id=\"{}\">{}</h2>", f.id, html_escape(f.title));
        match &f.body {
            Ok((svg, csv)) => {
                let svg_path = dir.join(format!("{}.svg", f.id));
                let csv_path = dir.join(format!("{}.csv", f.id));
                std::fs::write(&svg_path, svg).map_err(|e| io(&svg_path, e))?;
                std::fs::write(&csv_path, csv).map_err(|e| io(&csv_path, e))?;
                let _ = writeln!(
                    html,
                    "<figure><img src=\"{0}.svg\" alt=\"{1}\" width=\"100%\"><figcaption>{2} \
                     <a href=\"{0}.csv\">data (CSV)</a></figcaption></figure>",
                    f.id,
                    html_escape(f.title),
                    html_escape(&f.caption)
                );
                written.figures.push(svg_path);
                written.csvs.push(csv_path);
            }
            Err(why) => {
                let _ = writeln!(html, "<p class=\"missing\">{}</p>", html_escape(why));
                written.missing.push(format!("{}: {why}", f.id));
            }
        }
    }
    html.push_str("</body></html>\n");
    std::fs::write(&written.index, html).map_err(|e| io(&written.index, e))?;
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::eval::curves::{BestOfNPoint, CalibrationBin, CurvePoint};
    use crate::eval::runs::tests::{doc, run};

    #[test]
    fn report_with_no_data_says_so_for_every_figure() {
        let dir = tempfile::tempdir().unwrap();
        let w = write(dir.path(), &ReportData::default()).unwrap();
        assert!(w.figures.is_empty());
        assert_eq!(w.missing.len(), 7);
        let html = std::fs::read_to_string(&w.index).unwrap();
        assert_eq!(html.matches("no data yet").count(), 7);
    }

    #[test]
    fn report_with_data_writes_svgs_and_csvs() {
        let dir = tempfile::tempdir().unwrap();
        let a = run("greedy", vec![doc("x", 0.3, Some(0.1)), doc("y", 0.35, Some(0.2))]);
        let b = run("bo4", vec![doc("x", 0.32, Some(0.3)), doc("y", 0.36, Some(0.4))]);
        let lc = LearningCurve {
            split: "book".into(),
            test_groups: 1,
            train_pool: [(0, 100)].into_iter().collect(),
            points: vec![
                CurvePoint {
                    height: 0,
                    n: 25,
                    repeat: 0,
                    accuracy: 0.6,
                    log_loss: 0.7,
                    test_pairs: 40,
                },
                CurvePoint {
                    height: 0,
                    n: 25,
                    repeat: 1,
                    accuracy: 0.64,
                    log_loss: 0.69,
                    test_pairs: 40,
                },
                CurvePoint {
                    height: 0,
                    n: 100,
                    repeat: 0,
                    accuracy: 0.75,
                    log_loss: 0.6,
                    test_pairs: 40,
                },
            ],
            calibration: vec![CalibrationBin {
                height: 0,
                low: 0.5,
                high: 0.6,
                count: 10,
                predicted: 0.55,
                observed: 0.6,
            }],
            ece: [(0, 0.05)].into_iter().collect(),
            config: Default::default(),
            created_unix: 0,
        };
        let bon = BestOfN {
            model: "abc".into(),
            labeler: "sim".into(),
            candidates: 2,
            nodes: 3,
            excluded_seen: 0,
            by_height: Default::default(),
            points: vec![
                BestOfNPoint {
                    n: 1,
                    kl: 0.0,
                    proxy: 0.0,
                    gold: 0.1,
                    proxy_se: 0.01,
                    gold_se: 0.01,
                },
                BestOfNPoint {
                    n: 2,
                    kl: 0.19,
                    proxy: 0.5,
                    gold: 0.12,
                    proxy_se: 0.01,
                    gold_se: 0.01,
                },
            ],
            created_unix: 0,
        };
        let data = ReportData {
            runs: vec![a, b],
            comparisons: vec![("bo4".into(), "greedy".into())],
            learning_curve: Some(lc),
            best_of_n: Some(bon),
            decomposition: vec![],
            policy: vec![parse_policy_log(
                "dpo",
                "{\"step\": 1, \"loss\": 0.7}\n{\"round\": 2, \"kl\": 0.1}\n",
            )
            .unwrap()],
            bootstrap: BootstrapOptions { resamples: 200, ..Default::default() },
        };
        let w = write(dir.path(), &data).unwrap();
        assert_eq!(w.figures.len(), 6, "{:?}", w.missing);
        assert_eq!(w.missing.len(), 1);
        let csv = std::fs::read_to_string(dir.path().join("compare.csv")).unwrap();
        assert!(csv.lines().any(|l| l.starts_with("bo4,greedy,rouge1,2,")), "{csv}");
        let html = std::fs::read_to_string(&w.index).unwrap();
        assert!(html.contains("learning_curve.svg") && html.contains("greedy"));
        assert!(parse_policy_log("p", "{\"loss\": 1}\n").is_err());
        assert!(parse_policy_log("p", "").is_err());
    }
}
