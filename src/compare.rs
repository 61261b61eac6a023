//! `compare-losses`: train the same model once per loss and seed, and compare the losses
//! without reading noise as a difference.
//!
//! Every run of a comparison sees the same data: the synthetic tiles and the
//! train/validation split come from one seed ([`TrainOptions::split_seed`], else the
//! base `seed`). What the seed of a run moves is the initialisation, the dropout masks,
//! the batch order and the augmentation. With `seeds` = K, each loss trains from seeds
//! `seed`, `seed + 1`, ..., `seed + K - 1` into `OUT/<loss>/seed-<s>/` (with K = 1,
//! into `OUT/<loss>/`, and everything is as it was before seeds existed).
//!
//! The table ([`table`], written to `OUT/compare.md`) gives, per loss, the best value of
//! each metric over a run's epochs, summarised over the seeds: mean ± standard deviation
//! and the range (min–max). A loss whose range overlaps the best loss's range is marked
//! as within the spread of the best: these seeds do not tell the two apart. The picture
//! (`OUT/compare.png`, [`plot_comparison`]) draws each loss's mean validation Jaccard per
//! epoch with a band from the minimum to the maximum over the seeds.

use std::fmt::Write;
use std::path::{Path, PathBuf};

use anyhow::Context;

use crate::history::{Goal, History};
use crate::nn::UNetConfig;
use crate::report::plot_comparison;
use crate::runtime::Gpu;
use crate::train::{train, LossName, TrainOptions};

/// The columns the table compares, each by its best value over a run's epochs.
pub const METRICS: [&str; 3] = ["val_jacard_coef", "val_mean_iou", "val_accuracy"];

/// The column the picture draws.
pub const PLOTTED: &str = "val_jacard_coef";

/// What to compare.
#[derive(Clone, Debug)]
pub struct CompareOptions {
    /// The run every loss and seed starts from: its `seed` is the first seed, its
    /// `split_seed` (else its `seed`) fixes the data and the split of every run, and its
    /// `out` is the folder of the comparison.
    pub base: TrainOptions,
    /// The losses, in table order.
    pub losses: Vec<LossName>,
    /// Seeds per loss, at least 1.
    pub seeds: usize,
}

/// The runs of one loss: one history per seed.
#[derive(Clone, Debug, PartialEq)]
pub struct LossRuns {
    /// The loss's name (`dice+ce`).
    pub name: String,
    /// The seed of each run.
    pub seeds: Vec<u64>,
    /// The history of each run, in the order of `seeds`.
    pub histories: Vec<History>,
}

impl LossRuns {
    /// The best value of `column` in each run (NaN for a run without any value).
    pub fn bests(&self, column: &str) -> Vec<f64> {
        let best = |h: &History| h.best(column, Goal::of(column)).map_or(f64::NAN, |b| b.value);
        self.histories.iter().map(best).collect()
    }
}

/// Mean, standard deviation and range of a few values (NaNs left out).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Spread {
    /// How many values.
    pub n: usize,
    /// Their mean.
    pub mean: f64,
    /// Their sample standard deviation (divided by `n - 1`; 0 for one value).
    pub std: f64,
    /// The smallest.
    pub min: f64,
    /// The largest.
    pub max: f64,
}

impl Spread {
    /// The spread of the values that are not NaN; `None` if none is.
    pub fn of(values: &[f64]) -> Option<Spread> {
        let values: Vec<f64> = values.iter().copied().filter(|v| !v.is_nan()).collect();
        let n = values.len();
        if n == 0 {
            return None;
        }
        let mean = values.iter().sum::<f64>() / n as f64;
        let squares = values.iter().map(|v| (v - mean) * (v - mean)).sum::<f64>();
        Some(Spread {
            n,
            mean,
            std: if n > 1 { (squares / (n - 1) as f64).sqrt() } else { 0.0 },
            min: values.iter().copied().fold(f64::INFINITY, f64::min),
            max: values.iter().copied().fold(f64::NEG_INFINITY, f64::max),
        })
    }

    /// Whether the two ranges (min to max) share a value.
    pub fn overlaps(&self, other: &Spread) -> bool {
        self.min <= other.max && other.min <= self.max
    }
}

/// The seeds of a comparison: `first`, `first + 1`, ... (`count` of them).
pub fn seeds(first: u64, count: usize) -> Vec<u64> {
    (0..count as u64).map(|i| first.wrapping_add(i)).collect()
}

/// Where the run of `loss` from `seed` goes: `out/<loss>/` when a comparison has one
/// seed per loss, else `out/<loss>/seed-<seed>/`; `+` in a loss name becomes `-`.
pub fn run_dir(out: &Path, loss: LossName, seed: u64, seeds: usize) -> PathBuf {
    let dir = out.join(loss.as_str().replace('+', "-"));
    if seeds == 1 {
        dir
    } else {
        dir.join(format!("seed-{seed}"))
    }
}

/// Train every loss from every seed, then write `compare.md` and `compare.png` into
/// `options.base.out`. Returns the table (also in `compare.md`).
pub fn compare_losses(gpu: &Gpu, options: &CompareOptions) -> anyhow::Result<String> {
    anyhow::ensure!(options.seeds >= 1, "--seeds {}: each loss needs at least 1 seed", options.seeds);
    let base = &options.base;
    let split_seed = base.data_seed();
    let seeds = seeds(base.seed, options.seeds);
    let mut runs = Vec::new();
    for &loss in &options.losses {
        let mut histories = Vec::new();
        for &seed in &seeds {
            if options.seeds == 1 {
                println!("== {}", loss.as_str());
            } else {
                println!("== {}, seed {seed} (split seed {split_seed})", loss.as_str());
            }
            let out = run_dir(&base.out, loss, seed, options.seeds);
            let model = UNetConfig { seed, ..base.model.clone() };
            let run =
                TrainOptions { loss, seed, split_seed: Some(split_seed), model, out: out.clone(), ..base.clone() };
            train(gpu, &run).with_context(|| format!("training with {} from seed {seed}", loss.as_str()))?;
            histories.push(History::read(&out.join("history.csv"))?);
        }
        runs.push(LossRuns { name: loss.as_str().to_string(), seeds: seeds.clone(), histories });
    }
    let table = table(&runs);
    std::fs::write(base.out.join("compare.md"), &table)
        .with_context(|| format!("cannot write {}", base.out.join("compare.md").display()))?;
    let plotted: Vec<(String, Vec<History>)> = runs.into_iter().map(|r| (r.name, r.histories)).collect();
    if let Err(e) = plot_comparison(&plotted, PLOTTED, &base.out.join("compare.png")) {
        eprintln!("warning: no comparison plot: {e}");
    }
    Ok(table)
}

/// The comparison as Markdown. With one run per loss: one row per loss with the best
/// value of each of [`METRICS`]. With more: per loss and metric, the mean ± standard
/// deviation and the range [min–max] of the best values over the seeds, the best mean
/// of each column in bold, `≈` on the losses within the spread of the best (their range
/// overlaps the best loss's), a footnote saying so per metric, then every run's values.
pub fn table(runs: &[LossRuns]) -> String {
    if runs.iter().all(|r| r.histories.len() <= 1) {
        one_run_table(runs)
    } else {
        seeds_table(runs)
    }
}

/// `| loss | best val_jacard_coef | ... |` and its rule.
fn header() -> String {
    let names = METRICS.map(|m| format!("best {m}"));
    format!("| loss | {} |\n|---|{}\n", names.join(" | "), "---|".repeat(METRICS.len()))
}

/// One row per loss: the best value of each metric in its one run.
fn one_run_table(runs: &[LossRuns]) -> String {
    let mut text = header();
    for run in runs {
        let best = |m: &&str| format!("{:.4}", run.bests(m).first().copied().unwrap_or(f64::NAN));
        let _ = writeln!(text, "| {} | {} |", run.name, METRICS.iter().map(best).collect::<Vec<_>>().join(" | "));
    }
    text
}

/// One metric over the losses: the spread of each loss's best values, and the best loss.
struct Column {
    spreads: Vec<Option<Spread>>,
    best: Option<usize>,
}

impl Column {
    fn of(metric: &str, runs: &[LossRuns]) -> Column {
        let spreads: Vec<Option<Spread>> = runs.iter().map(|r| Spread::of(&r.bests(metric))).collect();
        let better = |a: f64, b: f64| match Goal::of(metric) {
            Goal::Max => a > b,
            Goal::Min => a < b,
        };
        let mut best: Option<usize> = None; // the first on ties
        for (l, spread) in spreads.iter().enumerate() {
            if let Some(s) = spread {
                if best.is_none_or(|b| better(s.mean, spreads[b].expect("the best has values").mean)) {
                    best = Some(l);
                }
            }
        }
        Column { spreads, best }
    }

    /// Whether loss `l` is not the best but its range overlaps the best loss's.
    fn within_spread_of_best(&self, l: usize) -> bool {
        match (self.best, self.spreads[l]) {
            (Some(b), Some(s)) if b != l => self.spreads[b].is_some_and(|best| s.overlaps(&best)),
            _ => false,
        }
    }

    /// `0.4300 ± 0.0300 [0.4000–0.4600]`, the mean in bold for the best loss, `≈` after it
    /// within the spread of the best, `–` without values.
    fn cell(&self, l: usize) -> String {
        let Some(s) = self.spreads[l] else {
            return "–".to_string();
        };
        let mean = if self.best == Some(l) { format!("**{:.4}**", s.mean) } else { format!("{:.4}", s.mean) };
        let near = if self.within_spread_of_best(l) { " ≈" } else { "" };
        format!("{mean} ± {:.4} [{:.4}–{:.4}]{near}", s.std, s.min, s.max)
    }
}

/// The table over several seeds per loss (see [`table`]).
fn seeds_table(runs: &[LossRuns]) -> String {
    let columns: Vec<Column> = METRICS.iter().map(|m| Column::of(m, runs)).collect();
    let seeds = &runs[0].seeds;
    let seed_list: Vec<String> = seeds.iter().map(u64::to_string).collect();
    let mut text = format!(
        "Best value of each metric over a run's epochs, summarised over {} seeds per loss ({}): \
         mean ± standard deviation [min–max].\n\n{}",
        seeds.len(),
        seed_list.join(", "),
        header()
    );
    for (l, run) in runs.iter().enumerate() {
        let cells: Vec<String> = columns.iter().map(|c| c.cell(l)).collect();
        let _ = writeln!(text, "| {} | {} |", run.name, cells.join(" | "));
    }
    text += "\n**Bold**: the best mean of the column. ≈: within the spread of the best: the loss's range over \
             the seeds overlaps the best loss's range, so these seeds do not tell the two apart. Standard \
             deviation: sample (n − 1).\n\nWithin the spread of the best:\n";
    for (metric, column) in METRICS.iter().zip(&columns) {
        let Some(b) = column.best else {
            let _ = writeln!(text, "- {metric}: no run has a value");
            continue;
        };
        let near: Vec<&str> =
            (0..runs.len()).filter(|&l| column.within_spread_of_best(l)).map(|l| runs[l].name.as_str()).collect();
        let near = if near.is_empty() { "no other loss".to_string() } else { near.join(", ") };
        let _ = writeln!(text, "- {metric}: {} (best); {near}", runs[b].name);
    }
    let _ = write!(text, "\nEvery run:\n\n| loss | seed | {} |\n|---|---|{}\n", METRICS.join(" | "), "---|".repeat(3));
    for run in runs {
        let bests: Vec<Vec<f64>> = METRICS.iter().map(|m| run.bests(m)).collect();
        for (i, seed) in run.seeds.iter().enumerate() {
            let cells: Vec<String> =
                bests.iter().map(|b| format!("{:.4}", b.get(i).copied().unwrap_or(f64::NAN))).collect();
            let _ = writeln!(text, "| {} | {seed} | {} |", run.name, cells.join(" | "));
        }
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A history of `epochs` epochs whose validation metrics climb to `top` at the last one.
    fn run(epochs: usize, top: f64) -> History {
        let mut h = History::new();
        for e in 1..=epochs {
            let f = e as f64 / epochs as f64;
            h.push(&[
                ("epoch", e as f64),
                ("val_jacard_coef", top * f),
                ("val_mean_iou", 0.5 * top * f),
                ("val_accuracy", 0.5 + 0.25 * f),
            ]);
        }
        h
    }

    fn loss(name: &str, tops: &[f64]) -> LossRuns {
        LossRuns {
            name: name.to_string(),
            seeds: seeds(7, tops.len()),
            histories: tops.iter().map(|&t| run(3, t)).collect(),
        }
    }

    #[test]
    fn spreads_use_the_sample_deviation_and_skip_missing_values() {
        let s = Spread::of(&[0.2, 0.4, f64::NAN, 0.6]).unwrap();
        assert_eq!((s.n, s.min, s.max), (3, 0.2, 0.6));
        assert!((s.mean - 0.4).abs() < 1e-12 && (s.std - 0.2).abs() < 1e-12, "{s:?}");
        assert_eq!(Spread::of(&[0.5]).map(|s| s.std), Some(0.0));
        assert_eq!(Spread::of(&[f64::NAN]), None);
        let t = Spread::of(&[0.6, 0.9]).unwrap();
        assert!(s.overlaps(&t) && t.overlaps(&s), "they share 0.6");
        assert!(!Spread::of(&[0.61]).unwrap().overlaps(&Spread::of(&[0.2, 0.6]).unwrap()));
        assert_eq!(seeds(u64::MAX, 2), [u64::MAX, 0]);
        assert_eq!(run_dir(Path::new("o"), LossName::DiceCe, 3, 1), Path::new("o/dice-ce"));
        assert_eq!(run_dir(Path::new("o"), LossName::DiceCe, 3, 2), Path::new("o/dice-ce/seed-3"));
    }

    #[test]
    fn one_seed_gives_the_table_of_one_run_per_loss() {
        let text = table(&[loss("ce", &[0.4]), loss("dice", &[0.45678])]);
        assert_eq!(
            text,
            "| loss | best val_jacard_coef | best val_mean_iou | best val_accuracy |\n|---|---|---|---|\n\
             | ce | 0.4000 | 0.2000 | 0.7500 |\n| dice | 0.4568 | 0.2284 | 0.7500 |\n"
        );
    }

    #[test]
    fn seeds_give_mean_deviation_range_and_mark_what_lies_within_the_spread() {
        // dice is best on Jaccard (mean 0.50, range 0.45–0.55); ce (0.40–0.46) overlaps it,
        // focal (0.20–0.30) does not. Accuracy is the same for every run: all within.
        let runs =
            [loss("ce", &[0.40, 0.46, 0.43]), loss("dice", &[0.45, 0.50, 0.55]), loss("focal", &[0.2, 0.3, 0.25])];
        let text = table(&runs);
        println!("{text}");
        assert!(text
            .starts_with("Best value of each metric over a run's epochs, summarised over 3 seeds per loss (7, 8, 9)"));
        assert!(text
            .contains("| loss | best val_jacard_coef | best val_mean_iou | best val_accuracy |\n|---|---|---|---|\n"));
        assert!(
            text.contains("| dice | **0.5000** ± 0.0500 [0.4500–0.5500] | **0.2500** ± 0.0250 [0.2250–0.2750] |"),
            "{text}"
        );
        assert!(
            text.contains("| ce | 0.4300 ± 0.0300 [0.4000–0.4600] ≈ | 0.2150 ± 0.0150 [0.2000–0.2300] ≈ |"),
            "{text}"
        );
        assert!(
            text.contains("| focal | 0.2500 ± 0.0500 [0.2000–0.3000] | 0.1250 ± 0.0250 [0.1000–0.1500] |"),
            "{text}"
        );
        assert!(text.contains("- val_jacard_coef: dice (best); ce\n"), "{text}");
        assert!(text.contains("- val_accuracy: ce (best); dice, focal\n"), "ties go to the first: {text}");
        assert!(text.contains("| focal | 8 | 0.3000 |") && text.contains("| ce | 7 | 0.4000 |"), "{text}");
        // A loss without validation values shows a dash and is never the best.
        let mut none = loss("tversky", &[0.9, 0.9]);
        none.histories = vec![History::new(), History::new()];
        let text = table(&[none, loss("dice", &[0.45, 0.5])]);
        assert!(
            text.contains("| tversky | – | – | – |") && text.contains("- val_mean_iou: dice (best); no other loss")
        );
    }
}
