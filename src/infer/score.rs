//! Score predicted masks against ground-truth masks.
//!
//! Both sides are PNG masks: colour masks read through the [`Palette`]
//! (the no-class colour is the ignore label), or grayscale class-index masks
//! (255 = ignore), as [`mask_labels`] reads them. Files pair by stem; a
//! prediction's `_mask` suffix (what [`predict_files`](crate::infer::predict::predict_files)
//! writes) is dropped first, and its `_overlay` pictures are skipped.
//!
//! Pixels whose ground truth is ignore are not counted. A pixel with a class
//! in the truth but no class in the prediction (the no-class colour) cannot
//! sit in the confusion matrix; it is counted apart as `unpredicted` and
//! shown in the report, so it is not silently forgiven.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::data::tiles::{decode, mask_labels};
use crate::data::{DataError, Palette, Unknown, IGNORE};
use crate::metrics::Confusion;

/// What can go wrong scoring.
#[derive(Debug, thiserror::Error)]
pub enum ScoreError {
    /// A mask could not be read or has an unknown colour or value.
    #[error(transparent)]
    Data(#[from] DataError),
    /// A folder without PNG masks.
    #[error("no {what} masks (*.png) in {}", .dir.display())]
    NoMasks {
        /// "predicted" or "ground-truth".
        what: &'static str,
        /// The folder.
        dir: PathBuf,
    },
    /// Masks on one side without a partner on the other.
    #[error("{count} mask(s) have no partner: {list}; predictions pair with ground truth by file stem (`x_mask.png` or `x.png` with `x.png`)")]
    Unmatched {
        /// How many.
        count: usize,
        /// The first few, each with the side it is on.
        list: String,
    },
    /// A prediction of another size than its ground truth.
    #[error("prediction {} is {}x{} (WxH) but ground truth {} is {}x{}: predict at the image's full size", .prediction.display(), .got.0, .got.1, .truth.display(), .want.0, .want.1)]
    Size {
        /// The predicted mask.
        prediction: PathBuf,
        /// The ground-truth mask.
        truth: PathBuf,
        /// Prediction (width, height).
        got: (usize, usize),
        /// Truth (width, height).
        want: (usize, usize),
    },
}

/// The scores of one class.
#[derive(Clone, Debug, PartialEq)]
pub struct ClassScore {
    /// Class name.
    pub name: String,
    /// `TP / (TP + FP + FN)`; `None` when the class is absent from the truth.
    pub iou: Option<f64>,
    /// `2 TP / (2 TP + FP + FN)`; `None` when absent from the truth.
    pub dice: Option<f64>,
    /// Ground-truth pixels of the class (counted ones).
    pub pixels: u64,
    /// Pixels predicted as the class (where the truth has a class).
    pub predicted: u64,
}

/// Scores of a set of predictions.
#[derive(Clone, Debug, PartialEq)]
pub struct ScoreReport {
    /// Class names, by class id.
    pub names: Vec<String>,
    /// Truth x prediction counts over every scored pixel.
    pub confusion: Confusion,
    /// Mask pairs scored.
    pub files: usize,
    /// Pixels with a class in the truth but none in the prediction (not in `confusion`).
    pub unpredicted: u64,
}

impl ScoreReport {
    /// A report of a confusion matrix (e.g. one counted during validation).
    pub fn from_confusion(names: &[String], confusion: Confusion) -> ScoreReport {
        assert_eq!(names.len(), confusion.classes, "{} names for {} classes", names.len(), confusion.classes);
        ScoreReport { names: names.to_vec(), confusion, files: 0, unpredicted: 0 }
    }

    /// Per-class scores, by class id.
    pub fn classes(&self) -> Vec<ClassScore> {
        let m = &self.confusion;
        (0..m.classes)
            .map(|k| {
                let (tp, fp, fneg) = m.tp_fp_fn(k);
                ClassScore {
                    name: self.names[k].clone(),
                    iou: m.iou(k),
                    dice: m.dice(k),
                    pixels: tp + fneg,
                    predicted: tp + fp,
                }
            })
            .collect()
    }

    /// Pixel accuracy over the scored pixels (`None` if none).
    pub fn accuracy(&self) -> Option<f64> {
        self.confusion.accuracy()
    }

    /// Mean IoU over the classes present in the truth.
    pub fn mean_iou(&self) -> Option<f64> {
        self.confusion.mean_iou()
    }

    /// An aligned text table: one line per class (IoU, Dice, pixel counts;
    /// `-` and `absent` for a class the truth lacks), then accuracy and mIoU.
    pub fn to_table(&self) -> String {
        let rows = self.classes();
        let width = rows.iter().map(|r| r.name.len()).max().unwrap_or(0).max(5);
        let num = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.4}"));
        let mut out =
            format!("{:<width$}  {:>7}  {:>7}  {:>12}  {:>12}\n", "class", "IoU", "Dice", "pixels", "predicted");
        for r in &rows {
            let note = if r.iou.is_none() { "  absent" } else { "" };
            out += &format!(
                "{:<width$}  {:>7}  {:>7}  {:>12}  {:>12}{note}\n",
                r.name,
                num(r.iou),
                num(r.dice),
                r.pixels,
                r.predicted
            );
        }
        let present = rows.iter().filter(|r| r.iou.is_some()).count();
        out += &format!(
            "accuracy {}   mean IoU {} (over {present} of {} classes)   {} pixels",
            num(self.accuracy()),
            num(self.mean_iou()),
            rows.len(),
            self.confusion.total()
        );
        if self.files > 0 {
            out += &format!(" in {} files", self.files);
        }
        out.push('\n');
        if self.unpredicted > 0 {
            out +=
                &format!("{} labelled pixels have no class in the prediction (not counted above)\n", self.unpredicted);
        }
        out
    }

    /// The report as JSON: `files`, `pixels`, `unpredicted`, `accuracy`,
    /// `mean_iou` and a `classes` list of `{name, iou, dice, pixels,
    /// predicted}`; absent values are `null`.
    pub fn to_json(&self) -> String {
        let num = |v: Option<f64>| v.filter(|v| v.is_finite()).map_or("null".to_string(), |v| v.to_string());
        let classes: Vec<String> = self
            .classes()
            .iter()
            .map(|c| {
                format!(
                    "{{\"name\": {}, \"iou\": {}, \"dice\": {}, \"pixels\": {}, \"predicted\": {}}}",
                    json_string(&c.name),
                    num(c.iou),
                    num(c.dice),
                    c.pixels,
                    c.predicted
                )
            })
            .collect();
        format!(
            "{{\n  \"files\": {},\n  \"pixels\": {},\n  \"unpredicted\": {},\n  \"accuracy\": {},\n  \"mean_iou\": {},\n  \"classes\": [\n    {}\n  ]\n}}\n",
            self.files,
            self.confusion.total(),
            self.unpredicted,
            num(self.accuracy()),
            num(self.mean_iou()),
            classes.join(",\n    ")
        )
    }
}

/// A JSON string literal.
fn json_string(s: &str) -> String {
    let mut out = String::from("\"");
    for ch in s.chars() {
        match ch {
            '"' => out += "\\\"",
            '\\' => out += "\\\\",
            '\n' => out += "\\n",
            '\r' => out += "\\r",
            '\t' => out += "\\t",
            c if (c as u32) < 0x20 => out += &format!("\\u{:04x}", c as u32),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// Add the pixels of one pair to `confusion`; returns the unpredicted count.
/// `truth` and `prediction` are class ids `[H,W]` ([`IGNORE`] = no class).
pub fn count(confusion: &mut Confusion, truth: &[u8], prediction: &[u8]) -> u64 {
    assert_eq!(truth.len(), prediction.len(), "{} truth labels, {} predicted", truth.len(), prediction.len());
    let k = confusion.classes;
    let mut unpredicted = 0;
    for (&t, &p) in truth.iter().zip(prediction) {
        let (t, p) = (t as usize, p as usize);
        if t as u32 == IGNORE || t >= k {
            continue;
        }
        if p >= k {
            unpredicted += 1;
        } else {
            confusion.counts[t * k + p] += 1;
        }
    }
    unpredicted
}

/// `stem -> file` for the PNG masks in `dir` (or `dir/masks` when it has
/// one); `strip_mask` drops a `_mask` suffix and skips `_overlay` files.
fn masks_in(dir: &Path, strip_mask: bool, what: &'static str) -> Result<BTreeMap<String, PathBuf>, ScoreError> {
    let dir = if dir.join("masks").is_dir() { dir.join("masks") } else { dir.to_path_buf() };
    let io = |cause| DataError::Io { path: dir.clone(), cause };
    let mut masks = BTreeMap::new();
    for entry in std::fs::read_dir(&dir).map_err(io)? {
        let path = entry.map_err(io)?.path();
        let is_png = path.extension().is_some_and(|e| e.eq_ignore_ascii_case("png"));
        if !path.is_file() || !is_png {
            continue;
        }
        let stem = path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
        let stem = if strip_mask {
            if stem.ends_with("_overlay") {
                continue;
            }
            stem.strip_suffix("_mask").map(str::to_string).unwrap_or(stem)
        } else {
            stem
        };
        masks.insert(stem, path);
    }
    if masks.is_empty() {
        return Err(ScoreError::NoMasks { what, dir });
    }
    Ok(masks)
}

/// Score the predicted masks in `predictions` against the ground-truth
/// masks in `truth` (folders, each possibly with a `masks/` subfolder),
/// pairing files by stem. `unknown` decides what an unknown colour does
/// (either side).
pub fn score_dirs(
    predictions: &Path,
    truth: &Path,
    palette: &Palette,
    unknown: Unknown,
) -> Result<ScoreReport, ScoreError> {
    let predicted = masks_in(predictions, true, "predicted")?;
    let truths = masks_in(truth, false, "ground-truth")?;
    let mut missing: Vec<String> = truths
        .iter()
        .filter(|(s, _)| !predicted.contains_key(*s))
        .map(|(_, p)| format!("ground truth {} (no prediction)", p.display()))
        .collect();
    missing.extend(
        predicted
            .iter()
            .filter(|(s, _)| !truths.contains_key(*s))
            .map(|(_, p)| format!("prediction {} (no ground truth)", p.display())),
    );
    if !missing.is_empty() {
        let count = missing.len();
        let mut list = missing.into_iter().take(5).collect::<Vec<_>>().join(", ");
        if count > 5 {
            list += &format!(" and {} more", count - 5);
        }
        return Err(ScoreError::Unmatched { count, list });
    }
    let mut report = ScoreReport::from_confusion(palette.names(), Confusion::new(palette.len()));
    for (stem, truth_path) in &truths {
        let pred_path = &predicted[stem];
        let (t, p) = (decode(truth_path)?, decode(pred_path)?);
        let (want, got) = ((t.width() as usize, t.height() as usize), (p.width() as usize, p.height() as usize));
        if want != got {
            return Err(ScoreError::Size { prediction: pred_path.clone(), truth: truth_path.clone(), got, want });
        }
        let t = mask_labels(t, palette, unknown, truth_path)?;
        let p = mask_labels(p, palette, unknown, pred_path)?;
        report.unpredicted += count(&mut report.confusion, &t, &p);
        report.files += 1;
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::test_dir::TempDir;
    use image::{GrayImage, RgbImage};

    /// Write class ids `labels` (`[h, w]`) as a colour mask.
    fn write_mask(path: &Path, labels: &[u8], w: usize, h: usize) {
        let palette = Palette::dubai();
        let rgb = palette.labels_to_rgb(&labels.iter().map(|&l| l as u32).collect::<Vec<_>>());
        RgbImage::from_raw(w as u32, h as u32, rgb).unwrap().save(path).unwrap();
    }

    fn dirs(tmp: &TempDir) -> (PathBuf, PathBuf) {
        let (pred, truth) = (tmp.0.join("pred"), tmp.0.join("truth/masks"));
        std::fs::create_dir_all(&pred).unwrap();
        std::fs::create_dir_all(&truth).unwrap();
        (pred, truth)
    }

    #[test]
    fn colour_and_index_masks_pair_by_stem_into_a_confusion_matrix() {
        let tmp = TempDir::new("score");
        let (pred, truth) = dirs(&tmp);
        // a: colour masks; 255 in the truth is skipped, 255 in the prediction is unpredicted.
        write_mask(&truth.join("a.png"), &[0, 0, 1, 255, 1, 2], 3, 2);
        write_mask(&pred.join("a_mask.png"), &[0, 1, 1, 0, 255, 2], 3, 2);
        std::fs::write(pred.join("a_overlay.png"), b"skipped").unwrap();
        // b: grayscale class-index masks, no `_mask` suffix.
        GrayImage::from_raw(2, 1, vec![2, 0]).unwrap().save(truth.join("b.png")).unwrap();
        GrayImage::from_raw(2, 1, vec![2, 2]).unwrap().save(pred.join("b.png")).unwrap();
        let report = score_dirs(&pred, &tmp.0.join("truth"), &Palette::dubai(), Unknown::Error).unwrap();
        assert_eq!(report.files, 2);
        assert_eq!(report.unpredicted, 1);
        let m = &report.confusion;
        // truth 0: predicted 0, 1, 2 (from b); truth 1: predicted 1; truth 2: predicted 2 twice.
        let at = |t: usize, p: usize| m.counts[t * 6 + p];
        assert_eq!((at(0, 0), at(0, 1), at(0, 2), at(1, 1), at(2, 2)), (1, 1, 1, 1, 2));
        assert_eq!(m.total(), 6);
        let classes = report.classes();
        assert_eq!(classes[0].iou, Some(1.0 / 3.0));
        assert_eq!(classes[2].iou, Some(2.0 / 3.0));
        assert_eq!((classes[2].pixels, classes[2].predicted), (2, 3));
        assert_eq!(classes[4].iou, None);
        assert_eq!(report.accuracy(), Some(4.0 / 6.0));
        assert_eq!(report.mean_iou(), Some((1.0 / 3.0 + 0.5 + 2.0 / 3.0) / 3.0));
    }

    #[test]
    fn table_and_json_show_absent_classes() {
        let names: Vec<String> = ["Building", "Water \"deep\""].iter().map(|s| s.to_string()).collect();
        let report = ScoreReport::from_confusion(&names, Confusion { classes: 2, counts: vec![3, 1, 0, 0] });
        let table = report.to_table();
        let lines: Vec<&str> = table.lines().collect();
        assert!(lines[0].starts_with("class") && lines[0].contains("IoU") && lines[0].contains("Dice"), "{table}");
        assert!(
            lines[1].starts_with("Building") && lines[1].contains("0.7500") && lines[1].contains("0.8571"),
            "{table}"
        );
        assert!(lines[2].contains(" - ") && lines[2].ends_with("absent"), "{table}");
        let end = |line: &str, word: &str| line.find(word).map(|i| i + word.len());
        assert_eq!(end(lines[1], "0.7500"), end(lines[0], "IoU"), "columns align right: {table}");
        assert_eq!(end(lines[2], " - "), end(lines[0], "IoU").map(|e| e + 1), "{table}");
        assert!(lines[3].contains("mean IoU 0.7500 (over 1 of 2 classes)"), "{table}");
        let json = report.to_json();
        for part in [
            "\"accuracy\": 0.75",
            "\"mean_iou\": 0.75",
            "\"name\": \"Water \\\"deep\\\"\", \"iou\": null, \"dice\": null, \"pixels\": 0, \"predicted\": 1",
            "\"pixels\": 4",
        ] {
            assert!(json.contains(part), "missing {part} in {json}");
        }
        let empty = ScoreReport::from_confusion(&names, Confusion::new(2)).to_json();
        assert!(empty.contains("\"accuracy\": null"), "{empty}");
    }

    #[test]
    fn clear_errors() {
        let tmp = TempDir::new("score-errors");
        let (pred, truth) = dirs(&tmp);
        let palette = Palette::dubai();
        let err = |p: &Path| score_dirs(p, &truth, &palette, Unknown::Error).unwrap_err().to_string();
        assert!(err(&pred).contains("no predicted masks (*.png) in"), "{}", err(&pred));

        write_mask(&truth.join("a.png"), &[0, 1], 2, 1);
        write_mask(&pred.join("b_mask.png"), &[0, 1], 2, 1);
        let msg = err(&pred);
        assert!(msg.contains("2 mask(s) have no partner") && msg.contains("a.png (no prediction)"), "{msg}");
        assert!(msg.contains("b_mask.png (no ground truth)"), "{msg}");

        std::fs::remove_file(pred.join("b_mask.png")).unwrap();
        write_mask(&pred.join("a_mask.png"), &[0, 1, 1], 3, 1);
        let msg = err(&pred);
        assert!(msg.contains("a_mask.png is 3x1") && msg.contains("truth") && msg.contains("2x1"), "{msg}");

        RgbImage::from_raw(2, 1, vec![1, 2, 3, 60, 16, 152]).unwrap().save(pred.join("a_mask.png")).unwrap();
        let msg = err(&pred);
        assert!(msg.contains("a_mask.png") && msg.contains("#010203"), "{msg}");
        let report = score_dirs(&pred, &truth, &palette, Unknown::Ignore).unwrap();
        assert_eq!((report.unpredicted, report.confusion.total()), (1, 1));
    }
}
