//! The training history: one row per epoch, one named column per metric,
//! kept as `history.csv` beside the checkpoints (the columns of Keras'
//! `History.history`, plus the learning rate and the epoch's duration).
//!
//! ```text
//! epoch,loss,accuracy,jacard_coef,mean_iou,val_loss,val_accuracy,val_jacard_coef,val_mean_iou,lr,seconds
//! 1,0.9812,0.61,0.42,0.31,0.9533,0.64,0.45,0.33,0.001,41.2
//! ```
//!
//! Values are `f64`. A missing value (a metric not computed that epoch, or a
//! column added later) is NaN in memory and an empty cell in the file. Numbers
//! are written in Rust's shortest round-trip form, so a history read back for
//! a resumed run equals the one written.

use std::path::{Path, PathBuf};

use crate::checkpoint::{write_atomically, CheckpointError};

/// The standard columns, in file order. [`History::push`] adds any other
/// column it is given after these.
pub const COLUMNS: [&str; 11] = [
    "epoch",
    "loss",
    "accuracy",
    "jacard_coef",
    "mean_iou",
    "val_loss",
    "val_accuracy",
    "val_jacard_coef",
    "val_mean_iou",
    "lr",
    "seconds",
];

/// What can go wrong reading or writing a history file.
#[derive(Debug, thiserror::Error)]
pub enum HistoryError {
    /// The file could not be read.
    #[error("cannot read history {}: {cause}", .path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// What the OS said.
        cause: std::io::Error,
    },
    /// The file is not a history CSV as [`History::write`] writes it.
    #[error("history {} line {line}: {reason}; delete the file to start a fresh history", .path.display())]
    Format {
        /// The file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// What is wrong.
        reason: String,
    },
    /// Writing failed.
    #[error(transparent)]
    Write(#[from] CheckpointError),
}

/// Whether a column improves downwards (losses) or upwards (scores).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Goal {
    /// Smaller is better.
    Min,
    /// Larger is better.
    Max,
}

impl Goal {
    /// The usual goal of a column: [`Goal::Min`] for names containing `loss`,
    /// [`Goal::Max`] for the rest (accuracy, IoU, Jaccard).
    pub fn of(column: &str) -> Goal {
        if column.contains("loss") {
            Goal::Min
        } else {
            Goal::Max
        }
    }
}

/// The best value of a column and where it is.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Best {
    /// Row index (0-based).
    pub row: usize,
    /// The row's `epoch` value (NaN if the history has no epoch column).
    pub epoch: f64,
    /// The best value.
    pub value: f64,
}

/// Per-epoch metrics as named columns.
#[derive(Clone, Debug, PartialEq)]
pub struct History {
    columns: Vec<String>,
    /// `rows[r][c]` is column `c` of row `r`; NaN where missing.
    rows: Vec<Vec<f64>>,
}

impl Default for History {
    /// An empty history with the standard [`COLUMNS`].
    fn default() -> History {
        History::new()
    }
}

impl History {
    /// An empty history with the standard [`COLUMNS`].
    pub fn new() -> History {
        History::with_columns(&COLUMNS)
    }

    /// An empty history with the given columns (duplicates are dropped).
    pub fn with_columns(columns: &[&str]) -> History {
        let mut history = History { columns: Vec::new(), rows: Vec::new() };
        for name in columns {
            history.column_index_or_add(name);
        }
        history
    }

    /// Column names, in file order.
    pub fn columns(&self) -> &[String] {
        &self.columns
    }

    /// Number of rows (epochs recorded).
    pub fn len(&self) -> usize {
        self.rows.len()
    }

    /// Whether no row was recorded yet.
    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    fn index(&self, name: &str) -> Option<usize> {
        self.columns.iter().position(|c| c == name)
    }

    fn column_index_or_add(&mut self, name: &str) -> usize {
        if let Some(i) = self.index(name) {
            return i;
        }
        self.columns.push(name.to_string());
        self.rows.iter_mut().for_each(|row| row.push(f64::NAN));
        self.columns.len() - 1
    }

    /// Append a row of `(column, value)` pairs. Columns not given are missing
    /// (NaN) in this row; a column not seen before is added (missing in the
    /// earlier rows).
    /// ```
    /// # use unet_wgpu::history::History;
    /// let mut h = History::new();
    /// h.push(&[("epoch", 1.0), ("loss", 0.9), ("val_loss", 0.95)]);
    /// assert_eq!(h.get(0, "loss"), Some(0.9));
    /// ```
    pub fn push(&mut self, values: &[(&str, f64)]) {
        let indices: Vec<usize> = values.iter().map(|(name, _)| self.column_index_or_add(name)).collect();
        let mut row = vec![f64::NAN; self.columns.len()];
        for (i, (_, v)) in indices.into_iter().zip(values) {
            row[i] = *v;
        }
        self.rows.push(row);
    }

    /// The value of `column` in row `row`; `None` if the row or column does
    /// not exist or the value is missing.
    pub fn get(&self, row: usize, column: &str) -> Option<f64> {
        let c = self.index(column)?;
        self.rows.get(row).map(|r| r[c]).filter(|v| !v.is_nan())
    }

    /// Every value of `column` (NaN where missing); `None` for an unknown column.
    pub fn column(&self, column: &str) -> Option<Vec<f64>> {
        let c = self.index(column)?;
        Some(self.rows.iter().map(|r| r[c]).collect())
    }

    /// `(epoch, value)` points of `column`, skipping missing values; the
    /// epoch is the row's `epoch` value, or its 1-based row number when the
    /// history has no epoch column.
    pub fn series(&self, column: &str) -> Vec<(f64, f64)> {
        let Some(values) = self.column(column) else {
            return Vec::new();
        };
        let epochs = self.column("epoch").unwrap_or_else(|| (1..=self.len()).map(|e| e as f64).collect());
        epochs.into_iter().zip(values).filter(|(e, v)| !e.is_nan() && !v.is_nan()).collect()
    }

    /// The best value of `column` by `goal` (the first row on ties), skipping
    /// missing values; `None` if the column has no value.
    pub fn best(&self, column: &str, goal: Goal) -> Option<Best> {
        let values = self.column(column)?;
        let mut best: Option<Best> = None;
        for (row, value) in values.into_iter().enumerate().filter(|(_, v)| !v.is_nan()) {
            let better = match (best, goal) {
                (None, _) => true,
                (Some(b), Goal::Min) => value < b.value,
                (Some(b), Goal::Max) => value > b.value,
            };
            if better {
                let epoch = self.get(row, "epoch").unwrap_or(f64::NAN);
                best = Some(Best { row, epoch, value });
            }
        }
        best
    }

    /// Drop the rows whose `epoch` is above `epoch`: resuming from the
    /// checkpoint of epoch 5 must forget epochs 6 and 7 of the interrupted run.
    pub fn truncate_after_epoch(&mut self, epoch: f64) {
        if let Some(c) = self.index("epoch") {
            self.rows.retain(|r| r[c].is_nan() || r[c] <= epoch);
        }
    }

    /// The history as CSV text: a header line, then one line per row.
    pub fn to_csv(&self) -> String {
        let mut text = self.columns.join(",");
        text.push('\n');
        for row in &self.rows {
            let cells: Vec<String> =
                row.iter().map(|v| if v.is_nan() { String::new() } else { v.to_string() }).collect();
            text += &cells.join(",");
            text.push('\n');
        }
        text
    }

    /// Parse CSV text as [`History::to_csv`] writes it; `path` only names
    /// the source in errors.
    pub fn parse(text: &str, path: &Path) -> Result<History, HistoryError> {
        let format = |line: usize, reason: String| HistoryError::Format { path: path.to_path_buf(), line, reason };
        let mut lines = text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty());
        let Some((_, header)) = lines.next() else {
            return Err(format(1, "the file is empty, it should start with a header line of column names".into()));
        };
        let columns: Vec<String> = header.split(',').map(|c| c.trim().to_string()).collect();
        for (i, name) in columns.iter().enumerate() {
            if name.is_empty() {
                return Err(format(1, format!("column {} of the header has no name", i + 1)));
            }
            if columns[..i].contains(name) {
                return Err(format(1, format!("column `{name}` appears twice in the header")));
            }
        }
        let mut rows = Vec::new();
        for (i, line) in lines {
            let cells: Vec<&str> = line.split(',').map(str::trim).collect();
            if cells.len() != columns.len() {
                return Err(format(i + 1, format!("{} values for {} columns", cells.len(), columns.len())));
            }
            let row = cells
                .iter()
                .zip(&columns)
                .map(|(cell, name)| match *cell {
                    "" => Ok(f64::NAN),
                    text => {
                        text.parse().map_err(|_| format(i + 1, format!("`{text}` in column `{name}` is not a number")))
                    }
                })
                .collect::<Result<Vec<f64>, _>>()?;
            rows.push(row);
        }
        Ok(History { columns, rows })
    }

    /// Write `history.csv` (or any `path`) atomically: a crash mid-write
    /// leaves the previous file.
    pub fn write(&self, path: &Path) -> Result<(), HistoryError> {
        Ok(write_atomically(path, self.to_csv().as_bytes())?)
    }

    /// Read a history file back (to resume training).
    pub fn read(path: &Path) -> Result<History, HistoryError> {
        let text =
            std::fs::read_to_string(path).map_err(|cause| HistoryError::Read { path: path.to_path_buf(), cause })?;
        History::parse(&text, path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::test_dir::TempDir;

    fn sample() -> History {
        let mut h = History::new();
        h.push(&[("epoch", 1.0), ("loss", 0.9), ("val_loss", 0.8), ("val_jacard_coef", 0.3), ("lr", 1e-3)]);
        h.push(&[("epoch", 2.0), ("loss", 0.7), ("val_loss", 0.85), ("val_jacard_coef", 0.1 + 0.2)]);
        h.push(&[("epoch", 3.0), ("loss", 0.5), ("val_loss", 0.6), ("val_jacard_coef", 0.45), ("dice", 0.5)]);
        h
    }

    #[test]
    fn rows_columns_and_missing_values() {
        let h = sample();
        assert_eq!(h.len(), 3);
        assert_eq!(&h.columns()[..COLUMNS.len()], COLUMNS);
        assert_eq!(h.columns().last().map(String::as_str), Some("dice"), "new columns go last");
        assert_eq!(h.get(0, "dice"), None, "added later: missing in earlier rows");
        assert_eq!(h.get(2, "dice"), Some(0.5));
        assert_eq!(h.get(1, "lr"), None);
        assert_eq!(h.get(7, "loss"), None);
        assert_eq!(h.series("lr"), [(1.0, 1e-3)]);
        assert_eq!(h.series("loss"), [(1.0, 0.9), (2.0, 0.7), (3.0, 0.5)]);
        assert!(h.series("nope").is_empty());
    }

    #[test]
    fn best_values_by_goal() {
        let h = sample();
        assert_eq!(h.best("val_loss", Goal::of("val_loss")), Some(Best { row: 2, epoch: 3.0, value: 0.6 }));
        assert_eq!(h.best("val_jacard_coef", Goal::Max).map(|b| b.epoch), Some(3.0));
        assert_eq!(h.best("val_jacard_coef", Goal::Min).map(|b| b.row), Some(0));
        let mut tie = History::with_columns(&["a"]);
        tie.push(&[("a", 2.0)]);
        tie.push(&[("a", 2.0)]);
        assert_eq!(tie.best("a", Goal::Max).map(|b| (b.row, b.epoch.is_nan())), Some((0, true)), "first on ties");
        assert_eq!(h.best("lr", Goal::Max).map(|b| b.value), Some(1e-3));
        assert_eq!(h.best("missing", Goal::Max), None);
        assert_eq!(Goal::of("val_accuracy"), Goal::Max);
    }

    #[test]
    fn csv_round_trips_exactly_through_a_file() {
        let h = sample();
        let csv = h.to_csv();
        assert!(csv.starts_with("epoch,loss,accuracy,"), "{csv}");
        assert!(csv.contains("\n2,0.7,,,,0.85,,0.30000000000000004,,,,\n"), "{csv}");
        let tmp = TempDir::new("history");
        let path = tmp.0.join("history.csv");
        h.write(&path).unwrap();
        let back = History::read(&path).unwrap();
        // NaN != NaN, so compare the text and the values that exist.
        assert_eq!(back.to_csv(), csv);
        assert_eq!(back.columns(), h.columns());
        assert_eq!(back.get(1, "val_jacard_coef"), Some(0.1 + 0.2));
        let mut resumed = back;
        resumed.truncate_after_epoch(2.0);
        assert_eq!(resumed.len(), 2);
        resumed.push(&[("epoch", 3.0)]);
        assert_eq!(resumed.len(), 3);
    }

    #[test]
    fn bad_files_name_the_line_and_reason() {
        let p = Path::new("h.csv");
        let cases = [
            ("", "line 1", "empty"),
            ("epoch,loss\n1,0.5\n2\n", "line 3", "1 values for 2 columns"),
            ("epoch,loss\n1,abc\n", "line 2", "`abc` in column `loss`"),
            ("epoch,loss,epoch\n", "line 1", "appears twice"),
        ];
        for (text, line, reason) in cases {
            let msg = History::parse(text, p).unwrap_err().to_string();
            assert!(msg.contains("h.csv") && msg.contains(line) && msg.contains(reason), "{text:?}: {msg}");
        }
        let msg = History::read(Path::new("/nonexistent/history.csv")).unwrap_err().to_string();
        assert!(msg.contains("/nonexistent/history.csv"), "{msg}");
    }
}
