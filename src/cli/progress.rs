//! The progress of a training loop on the terminal: a bar over optimizer steps with the loss
//! and throughput, validations and messages printed above it. Without a terminal (a log file,
//! a CI job) the bar is hidden, so the same reports go to stderr as lines instead: every
//! validation and message, and a step line at most once a minute and after the last step.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};

use crate::lm::observe::{EvalLog, Observer, StepLog};

/// How often a step line is printed when there is no terminal for the bar.
const LINE_EVERY: Duration = Duration::from_secs(60);

pub struct TrainProgress {
    pub bar: ProgressBar,
    quiet: bool,
    /// Without a terminal: (when the loop started, its steps, when the last line was printed).
    lines: Mutex<(Instant, usize, Option<Instant>)>,
}

impl TrainProgress {
    pub fn new(quiet: bool) -> TrainProgress {
        let bar = if quiet { ProgressBar::hidden() } else { ProgressBar::new(0) };
        if let Ok(style) =
            ProgressStyle::with_template("{prefix} [{bar:30}] {pos}/{len} steps  {msg}  ETA {eta}")
        {
            bar.set_style(style.progress_chars("=> "));
        }
        bar.set_prefix("training");
        TrainProgress { bar, quiet, lines: Mutex::new((Instant::now(), 0, None)) }
    }

    pub fn println(&self, text: String) {
        if self.quiet {
            return;
        }
        if self.bar.is_hidden() {
            eprintln!("{text}");
        } else {
            self.bar.println(text);
        }
    }
}

/// `key value, key value`, three decimals each.
pub fn metrics_line(m: &BTreeMap<String, f64>) -> String {
    m.iter().map(|(k, v)| format!("{k} {v:.3}")).collect::<Vec<_>>().join(", ")
}

/// `1h02m`, `4m05s`, `12s`.
fn duration(secs: f64) -> String {
    let s = secs.max(0.0).round() as u64;
    match (s / 3600, s / 60 % 60, s % 60) {
        (0, 0, s) => format!("{s}s"),
        (0, m, s) => format!("{m}m{s:02}s"),
        (h, m, _) => format!("{h}h{m:02}m"),
    }
}

/// What a step line says after the step count: the loss, the reward accuracy (DPO), and the
/// throughput (pairs/s where the loop reports its pairs, tokens/s always).
fn step_summary(log: &StepLog) -> String {
    let secs = log.seconds.max(1e-9);
    let acc = log.metrics.get("reward_accuracy").map_or(String::new(), |a| format!(" acc {a:.2}"));
    let pairs =
        log.metrics.get("pairs").map_or(String::new(), |p| format!(" {:.2} pairs/s", p / secs));
    format!(
        "loss {:.4}{acc} |g| {:.2} lr {:.1e}{pairs} {:.0} tok/s",
        log.loss,
        log.grad_norm,
        log.lr,
        log.tokens as f64 / secs
    )
}

impl Observer for TrainProgress {
    fn started(&self, total: usize, resumed_from: Option<usize>) {
        self.bar.set_length(total as u64);
        self.bar.set_position(resumed_from.unwrap_or(0) as u64);
        if let Ok(mut lines) = self.lines.lock() {
            *lines = (Instant::now(), total.saturating_sub(resumed_from.unwrap_or(0)), None);
        }
        if let Some(s) = resumed_from {
            self.println(format!("resumed from the checkpoint at step {s}"));
        }
    }
    fn step(&self, log: &StepLog) {
        self.bar.set_position(log.step as u64);
        let summary = step_summary(log);
        tracing::info!(step = log.step, loss = log.loss, "step");
        if self.quiet || !self.bar.is_hidden() {
            self.bar.set_message(summary);
            return;
        }
        let Ok(mut lines) = self.lines.lock() else { return };
        let (started, steps, last) = &mut *lines;
        let total = self.bar.length().unwrap_or(0) as usize;
        let now = Instant::now();
        let due = last.is_none_or(|t| now.duration_since(t) >= LINE_EVERY);
        if due || log.step >= total {
            // Steps done in this run (a resumed run started part-way).
            let done = (*steps).saturating_sub(total.saturating_sub(log.step)).max(1);
            let elapsed = now.duration_since(*started).as_secs_f64();
            let left = elapsed / done as f64 * total.saturating_sub(log.step) as f64;
            eprintln!(
                "step {}/{total} (epoch {}): {summary}, {} elapsed, ETA {}",
                log.step,
                log.epoch,
                duration(elapsed),
                duration(left)
            );
            *last = Some(now);
        }
    }
    fn eval(&self, log: &EvalLog) {
        self.println(format!(
            "validation at step {} (epoch {}): {}",
            log.step,
            log.epoch,
            metrics_line(&log.metrics)
        ));
    }
    fn message(&self, text: &str) {
        self.println(text.to_string());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_at_a_glance() {
        assert_eq!(duration(0.4), "0s");
        assert_eq!(duration(59.0), "59s");
        assert_eq!(duration(245.0), "4m05s");
        assert_eq!(duration(3725.0), "1h02m");
        assert_eq!(duration(-3.0), "0s");
    }

    #[test]
    fn step_lines_name_pairs_per_second_only_where_the_loop_counts_pairs() {
        let mut log = StepLog {
            step: 3,
            epoch: 0,
            lr: 2e-4,
            loss: 0.5125,
            grad_norm: 1.5,
            tokens: 4000,
            seconds: 2.0,
            metrics: BTreeMap::new(),
        };
        let plain = step_summary(&log);
        assert_eq!(plain, "loss 0.5125 |g| 1.50 lr 2.0e-4 2000 tok/s");
        log.metrics.insert("pairs".into(), 4.0);
        log.metrics.insert("reward_accuracy".into(), 0.75);
        assert_eq!(
            step_summary(&log),
            "loss 0.5125 acc 0.75 |g| 1.50 lr 2.0e-4 2.00 pairs/s 2000 tok/s"
        );
    }
}
