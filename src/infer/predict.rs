//! Sliding-window inference on images of any size.
//!
//! The network sees `patch` x `patch` windows (what it was trained on) that
//! overlap by `overlap` pixels. Each window's softmax probabilities are
//! weighted by a smooth window `w(y) * w(x)` (a Hann window lifted above 0,
//! so that every pixel has weight, even at a patch border) and summed; the
//! label of a pixel is the class with the largest weighted sum. (Dividing by
//! the pixel's total weight would give the blended probabilities, but cannot
//! change the argmax, so labels need no division.) Windows near their borders
//! see less context and predict worse; the taper lets the window centre
//! decide wherever two windows overlap.
//!
//! ```text
//! padded image (reflection)         one band of patch rows
//! +--margin----------------+       rows still receiving contributions are
//! | +-image-------------+  |       kept; rows no later patch touches are
//! | |                   |  |       turned into labels and dropped
//! | +-------------------+  |
//! +------------------------+
//! ```
//!
//! # Geometry
//! Along each axis the image is padded by reflection (mirror without
//! repeating the edge pixel, numpy's `reflect`): `margin = overlap / 2` before
//! it, so that image borders are not patch borders, and as much as needed
//! after it to fill a whole number of strides (`stride = patch - overlap`).
//! An image smaller than a patch is padded to one patch.
//!
//! # Memory
//! Patches are processed in bands of whole patch rows. Only the probability
//! rows a later band can still touch are kept ([`PredictOptions::max_band_bytes`]
//! bounds them), and the network input is built per batch from the `u8`
//! image, so an image far larger than a GPU buffer, or than a full-size
//! `f32` probability canvas, is fine. The output is one byte per pixel.
//!
//! # Scaling
//! Inputs must be scaled exactly as in training: checkpoints record their
//! [`Scaling`] under `data.scaling` ([`Scaling::to_metadata`]); [`predict_files`]
//! reads it (`unit` when absent). Per-patch min-max scaling scales each window alone.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::autograd::tape::Step;
use crate::checkpoint::{self, CheckpointError};
use crate::data::tiles::read_image;
use crate::data::{DataError, Palette, Scaling};
use crate::nn::unet::UNet;
use crate::ops::softmax::softmax_forward;
use crate::report::{blend, colour_labels, write_png, ReportError};
use crate::runtime::Gpu;

/// How to predict.
#[derive(Clone, Debug, PartialEq)]
pub struct PredictOptions {
    /// Window side in pixels; a multiple of `2^depth` of the model. 256 by default.
    pub patch: usize,
    /// Overlap of neighbouring windows in pixels, below `patch`; `None`: a
    /// quarter of the patch.
    pub overlap: Option<usize>,
    /// Windows per forward pass.
    pub batch: usize,
    /// Byte-to-input mapping (must match training). [`predict_files`]
    /// replaces it with the checkpoint's.
    pub scaling: Scaling,
    /// Most bytes the kept probability rows may take; bands shrink to fit
    /// (one patch row at least). 256 MiB by default.
    pub max_band_bytes: usize,
    /// Class colours of the written masks ([`predict_files`]).
    pub palette: Palette,
    /// Opacity of the mask in the overlay pictures, in [0, 1].
    pub alpha: f32,
}

impl Default for PredictOptions {
    /// 256-pixel windows overlapping by 64, batches of 4, unit scaling,
    /// 256 MiB of bands, the Dubai palette, overlay opacity 0.5.
    fn default() -> PredictOptions {
        PredictOptions {
            patch: crate::data::DEFAULT_PATCH,
            overlap: None,
            batch: 4,
            scaling: Scaling::Unit,
            max_band_bytes: 256 << 20,
            palette: Palette::dubai(),
            alpha: 0.5,
        }
    }
}

impl PredictOptions {
    /// The overlap in pixels (the default resolved).
    pub fn overlap(&self) -> usize {
        self.overlap.unwrap_or(self.patch / 4)
    }

    /// Check the options against a model of depth `depth`.
    pub fn validate(&self, depth: usize) -> Result<(), DataError> {
        let option = |name: &'static str, value: String, reason: String| DataError::Option { name, value, reason };
        let multiple = 1usize << depth;
        if self.patch == 0 || !self.patch.is_multiple_of(multiple) {
            return Err(option(
                "patch",
                self.patch.to_string(),
                format!("the model (depth {depth}) needs a positive multiple of {multiple}"),
            ));
        }
        if self.overlap() >= self.patch {
            return Err(option(
                "overlap",
                self.overlap().to_string(),
                format!("it must be below the patch ({})", self.patch),
            ));
        }
        if self.batch == 0 {
            return Err(option("batch", "0".into(), "it must be at least 1".into()));
        }
        if !(0.0..=1.0).contains(&self.alpha) {
            return Err(option("alpha", self.alpha.to_string(), "it must be in [0, 1]".into()));
        }
        Ok(())
    }
}

/// What can go wrong predicting files.
#[derive(Debug, thiserror::Error)]
pub enum PredictError {
    /// The checkpoint could not be read or does not fit.
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    /// An input could not be read, or an option is invalid.
    #[error(transparent)]
    Data(#[from] DataError),
    /// The model predicts more classes than the palette can colour.
    #[error("the model predicts {model} classes but the palette has {palette} colours: pass the palette the model was trained with")]
    Classes {
        /// Classes of the model.
        model: usize,
        /// Classes of the palette.
        palette: usize,
    },
    /// Two inputs would write the same output files.
    #[error("inputs {} and {} share the stem `{stem}`, so their outputs would overwrite each other: predict them into different folders", .first.display(), .second.display())]
    SameStem {
        /// The stem.
        stem: String,
        /// The first input.
        first: PathBuf,
        /// The second input.
        second: PathBuf,
    },
    /// An output could not be written.
    #[error("cannot write {}: {reason}", .path.display())]
    Write {
        /// The file or folder.
        path: PathBuf,
        /// What went wrong.
        reason: String,
    },
}

/// The blending window of a `patch`-pixel side: `w[i] = 1e-3 + sin²(π (i + ½) / patch)`,
/// a Hann window sampled at pixel centres and lifted so no weight is 0.
pub fn window(patch: usize) -> Vec<f32> {
    (0..patch)
        .map(|i| {
            let s = (std::f64::consts::PI * (i as f64 + 0.5) / patch as f64).sin();
            (1e-3 + s * s) as f32
        })
        .collect()
}

/// Index into a row of `len` pixels for a position `i` outside it, mirrored
/// at the edges without repeating them (`-1 -> 1`, `len -> len - 2`),
/// repeatedly for positions far outside.
pub fn reflect(i: isize, len: usize) -> usize {
    if len == 1 {
        return 0;
    }
    let period = 2 * (len as isize - 1);
    let m = i.rem_euclid(period);
    (if m < len as isize { m } else { period - m }) as usize
}

/// The windows along one axis of `len` pixels.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Axis {
    /// Windows along the axis.
    count: usize,
    /// Padding before the image.
    margin: usize,
    /// Padded length, `(count - 1) * stride + patch`.
    padded: usize,
}

impl Axis {
    fn new(len: usize, patch: usize, overlap: usize) -> Axis {
        let stride = patch - overlap;
        let margin = overlap / 2;
        let need = len + 2 * margin;
        let count = if need <= patch { 1 } else { (need - patch).div_ceil(stride) + 1 };
        Axis { count, margin, padded: (count - 1) * stride + patch }
    }
}

/// Weighted probability sums of the padded rows `[top, top + rows)`, laid
/// out `[row][x][class]`, with each pixel's total weight `[row][x]`.
struct Accumulator {
    top: usize,
    width: usize,
    classes: usize,
    sums: Vec<f32>,
    weights: Vec<f32>,
}

impl Accumulator {
    fn new(width: usize, classes: usize) -> Accumulator {
        Accumulator { top: 0, width, classes, sums: Vec::new(), weights: Vec::new() }
    }

    fn rows(&self) -> usize {
        self.weights.len() / self.width
    }

    /// Grow (with zeros) to cover padded rows up to `bottom` (exclusive).
    fn extend_to(&mut self, bottom: usize) {
        let rows = bottom.saturating_sub(self.top).max(self.rows());
        self.sums.resize(rows * self.width * self.classes, 0.0);
        self.weights.resize(rows * self.width, 0.0);
    }

    /// Add one window's probabilities `probs` `[classes, p, p]` at padded
    /// position (`y0`, `x0`), weighted by `window[y] * window[x]`.
    fn add(&mut self, y0: usize, x0: usize, probs: &[f32], window: &[f32]) {
        let p = window.len();
        let (w, k) = (self.width, self.classes);
        assert!(y0 >= self.top && y0 + p <= self.top + self.rows(), "window rows {y0}.. outside the band");
        for (y, &wy) in window.iter().enumerate() {
            let row = y0 - self.top + y;
            for (x, &wx) in window.iter().enumerate() {
                let weight = wy * wx;
                let pixel = row * w + x0 + x;
                self.weights[pixel] += weight;
                let sums = &mut self.sums[pixel * k..(pixel + 1) * k];
                for (c, sum) in sums.iter_mut().enumerate() {
                    *sum += weight * probs[(c * p + y) * p + x];
                }
            }
        }
    }

    /// Label the rows above `bottom` (padded coordinates) into `labels`
    /// (`[height, width]` of the image, placed at `margin` in the padded
    /// image), then drop them.
    fn finish(&mut self, bottom: usize, margin: usize, labels: &mut [u8], (width, height): (usize, usize)) {
        let done = bottom.saturating_sub(self.top).min(self.rows());
        let k = self.classes;
        for row in 0..done {
            let Some(y) = (self.top + row).checked_sub(margin).filter(|&y| y < height) else {
                continue;
            };
            for x in 0..width {
                let pixel = row * self.width + x + margin;
                let sums = &self.sums[pixel * k..(pixel + 1) * k];
                // The first largest wins ties, as in the metrics' argmax.
                let best = (1..k).fold(0, |best, c| if sums[c] > sums[best] { c } else { best });
                labels[y * width + x] = best as u8;
            }
        }
        self.sums.drain(..done * self.width * k);
        self.weights.drain(..done * self.width);
        self.top += done;
    }
}

/// Softmax probabilities `[n, classes, p, p]` of the windows `input` `[n, 3, p, p]`.
fn probabilities(gpu: &Gpu, model: &UNet, input: &[f32], n: usize, p: usize) -> Vec<f32> {
    let x = gpu.upload(input, &[n, model.config.in_channels, p, p]);
    let mut step = Step::eval(gpu);
    let logits = model.forward(&mut step, &x, 0);
    let probs = gpu.empty(logits.shape());
    softmax_forward(gpu, &mut step.enc, &logits, &probs);
    step.submit();
    gpu.read(&probs)
}

/// Class ids `[height, width]` predicted for the interleaved RGB image `rgb`
/// `[height, width, 3]` of any size (see the module doc for the method).
/// Fails on invalid options, or a model that does not take 3 channels or
/// has more than 255 classes.
pub fn predict_image(
    gpu: &Gpu,
    model: &UNet,
    rgb: &[u8],
    width: usize,
    height: usize,
    options: &PredictOptions,
) -> Result<Vec<u8>, DataError> {
    assert_eq!(
        rgb.len(),
        width * height * 3,
        "a {width}x{height} RGB image has {} bytes, got {}",
        width * height * 3,
        rgb.len()
    );
    let config = &model.config;
    options.validate(config.depth)?;
    if config.in_channels != 3 || config.classes > 255 {
        return Err(DataError::Option {
            name: "model",
            value: format!("{} input channels, {} classes", config.in_channels, config.classes),
            reason: "prediction takes RGB images and at most 255 classes".into(),
        });
    }
    let mut labels = vec![0u8; width * height];
    if width == 0 || height == 0 {
        return Ok(labels);
    }
    let (p, overlap, k) = (options.patch, options.overlap(), config.classes);
    let stride = p - overlap;
    let (across, down) = (Axis::new(width, p, overlap), Axis::new(height, p, overlap));
    // Band of b patch rows keeps (b - 1) * stride + p padded rows.
    let row_bytes = across.padded * (k + 1) * 4;
    let band = ((options.max_band_bytes / row_bytes).saturating_sub(p) / stride + 1).max(1);
    let window = window(p);
    // Source column of each padded column: reflection is computed once.
    let source_x: Vec<usize> =
        (0..across.padded).map(|x| reflect(x as isize - across.margin as isize, width)).collect();

    let mut acc = Accumulator::new(across.padded, k);
    let mut input = Vec::with_capacity(options.batch * 3 * p * p);
    let mut patch = Vec::with_capacity(3 * p * p);
    for first in (0..down.count).step_by(band) {
        let last = (first + band).min(down.count);
        acc.extend_to((last - 1) * stride + p);
        let windows: Vec<(usize, usize)> =
            (first..last).flat_map(|r| (0..across.count).map(move |c| (r * stride, c * stride))).collect();
        for chunk in windows.chunks(options.batch) {
            input.clear();
            for &(y0, x0) in chunk {
                patch.clear(); // the window's RGB bytes, [P,P,3], then scaled as a training patch is
                for y in y0..y0 + p {
                    let sy = reflect(y as isize - down.margin as isize, height);
                    let row = &rgb[sy * width * 3..(sy + 1) * width * 3];
                    patch.extend(source_x[x0..x0 + p].iter().flat_map(|&sx| &row[sx * 3..sx * 3 + 3]));
                }
                for (c, table) in options.scaling.table(&patch).iter().enumerate() {
                    input.extend(patch.chunks_exact(3).map(|px| table[px[c] as usize]));
                }
            }
            let probs = probabilities(gpu, model, &input, chunk.len(), p);
            for (i, &(y0, x0)) in chunk.iter().enumerate() {
                acc.add(y0, x0, &probs[i * k * p * p..(i + 1) * k * p * p], &window);
            }
        }
        // Rows above the next band's first window are final.
        let bottom = if last == down.count { down.padded } else { last * stride };
        acc.finish(bottom, down.margin, &mut labels, (width, height));
    }
    Ok(labels)
}

/// The files [`predict_files`] wrote for one input.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Predicted {
    /// The input image.
    pub input: PathBuf,
    /// `<stem>_mask.png`: class colours of the palette.
    pub mask: PathBuf,
    /// `<stem>_overlay.png`: the mask blended over the image.
    pub overlay: PathBuf,
    /// Image width.
    pub width: usize,
    /// Image height.
    pub height: usize,
}

fn is_image(path: &Path) -> bool {
    let ext = path.extension().map(|e| e.to_string_lossy().to_ascii_lowercase()).unwrap_or_default();
    path.is_file() && ["jpg", "jpeg", "png"].contains(&ext.as_str())
}

/// The image files of `inputs`: files as given, folders as their `.jpg`,
/// `.jpeg` and `.png` files (not recursive, sorted by name).
pub fn expand_inputs(inputs: &[PathBuf]) -> Result<Vec<PathBuf>, DataError> {
    let mut files = Vec::new();
    for input in inputs {
        if input.is_dir() {
            let io = |cause| DataError::Io { path: input.clone(), cause };
            let mut found = Vec::new();
            for entry in std::fs::read_dir(input).map_err(io)? {
                let path = entry.map_err(io)?.path();
                if is_image(&path) {
                    found.push(path);
                }
            }
            found.sort();
            files.extend(found);
        } else {
            files.push(input.clone());
        }
    }
    Ok(files)
}

/// Predict every image of `inputs` (files, or folders of `.jpg`/`.png`)
/// with the model of the checkpoint at `checkpoint`, and write
/// `<stem>_mask.png` and `<stem>_overlay.png` into `out_dir` (created if
/// needed). The input scaling is the checkpoint's (`data.scaling`, `unit`
/// when absent); `options.scaling` is ignored.
pub fn predict_files(
    gpu: &Gpu,
    checkpoint: &Path,
    inputs: &[PathBuf],
    out_dir: &Path,
    options: &PredictOptions,
) -> Result<Vec<Predicted>, PredictError> {
    let ckpt = checkpoint::load(checkpoint)?;
    let scaling = Scaling::from_metadata(&ckpt.metadata)
        .map_err(|reason| CheckpointError::Metadata { path: checkpoint.to_path_buf(), reason })?;
    let model = UNet::from_checkpoint(gpu, &ckpt)?;
    let options = PredictOptions { scaling, ..options.clone() };
    options.validate(model.config.depth)?;
    if model.config.classes > options.palette.len() {
        return Err(PredictError::Classes { model: model.config.classes, palette: options.palette.len() });
    }
    let files = expand_inputs(inputs)?;
    let stem_of = |file: &Path| file.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
    let mut seen: BTreeMap<String, &PathBuf> = BTreeMap::new();
    for file in &files {
        if let Some(first) = seen.insert(stem_of(file), file) {
            return Err(PredictError::SameStem { stem: stem_of(file), first: first.clone(), second: file.clone() });
        }
    }
    std::fs::create_dir_all(out_dir)
        .map_err(|e| PredictError::Write { path: out_dir.to_path_buf(), reason: e.to_string() })?;
    let write = |e: ReportError| match e {
        ReportError::Write { path, reason } => PredictError::Write { path, reason },
        other => PredictError::Write { path: out_dir.to_path_buf(), reason: other.to_string() },
    };
    let mut written = Vec::new();
    for input in files {
        let (width, height, rgb) = read_image(&input)?;
        let labels = predict_image(gpu, &model, &rgb, width, height, &options)?;
        let stem = stem_of(&input);
        let mask = out_dir.join(format!("{stem}_mask.png"));
        let overlay = out_dir.join(format!("{stem}_overlay.png"));
        write_png(&mask, &colour_labels(&labels, &options.palette), width, height).map_err(write)?;
        write_png(&overlay, &blend(&rgb, &labels, &options.palette, options.alpha), width, height).map_err(write)?;
        written.push(Predicted { input, mask, overlay, width, height });
    }
    Ok(written)
}

#[cfg(test)]
mod tests;
