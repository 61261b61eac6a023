//! Segmentation metrics from a confusion matrix counted on the GPU
//! (`shaders/metrics.wgsl`), accumulated over an epoch and read back once:
//! pixel accuracy, per-class IoU, mean IoU, per-class Dice (F1).
//!
//! Pixels with the ignore label (or any label >= C) are not counted. A class
//! absent from the ground truth has no IoU or Dice (`None`), not 0 or 1, and
//! mean IoU averages over the classes present. The soft Jaccard coefficient
//! (Keras' `jacard_coef`) comes with the loss values, see
//! [`LossValues::soft_jaccard`](crate::loss::LossValues::soft_jaccard).

use crate::autograd::tensor::Tensor;
use crate::runtime::{groups_1d, Encoder, Gpu, Shader};
use crate::shader;

const SHADER: Shader = shader!("metrics");
const WG: usize = 256;
/// Most classes the confusion kernel handles.
pub const MAX_CLASSES: usize = 16;
/// Pixels each thread counts (amortises the workgroup histogram).
const PIXELS_PER_THREAD: usize = 16;

/// Mirrors `Params` in `shaders/metrics.wgsl`.
#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    n: u32,
    c: u32,
    hw: u32,
    ignore: u32,
    pixels_per_thread: u32,
}

/// Add the argmax predictions of `logits` `[N,C,H,W]` against `labels` `[N,H,W]`
/// (u32) into `confusion` `[C,C]` (u32, row = truth, column = prediction).
/// Zero `confusion` (`enc.clear`) at the start of an epoch.
pub fn confusion_update(
    gpu: &Gpu,
    enc: &mut Encoder,
    logits: &Tensor,
    labels: &Tensor,
    ignore: Option<u32>,
    confusion: &Tensor,
) {
    let [n, c, h, w] = logits.dims4("metrics logits");
    assert!((1..=MAX_CLASSES).contains(&c), "the confusion matrix handles 1 to {MAX_CLASSES} classes, got {c}");
    assert_eq!(labels.shape(), [n, h, w], "labels {:?} for logits {:?}", labels.shape(), logits.shape());
    assert_eq!(confusion.shape(), [c, c], "confusion {:?} for {c} classes", confusion.shape());
    let params = Params {
        n: n as u32,
        c: c as u32,
        hw: (h * w) as u32,
        ignore: ignore.unwrap_or(u32::MAX),
        pixels_per_thread: PIXELS_PER_THREAD as u32,
    };
    let kernel = gpu.kernel(&SHADER, "confusion_update", &[]);
    let threads = (n * h * w).div_ceil(PIXELS_PER_THREAD);
    gpu.dispatch(enc, &kernel, &params, &[(1, logits), (2, labels), (3, confusion)], groups_1d(threads, WG as u32));
}

/// A confusion matrix and the metrics derived from it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Confusion {
    /// Number of classes.
    pub classes: usize,
    /// `counts[truth * classes + prediction]`.
    pub counts: Vec<u64>,
}

impl Confusion {
    /// An empty matrix for `classes` classes.
    pub fn new(classes: usize) -> Confusion {
        Confusion { classes, counts: vec![0; classes * classes] }
    }

    /// Read the GPU matrix back (blocking: once per epoch, never inside a step).
    #[cfg(not(target_arch = "wasm32"))]
    pub fn read(gpu: &Gpu, confusion: &Tensor) -> Confusion {
        pollster::block_on(Confusion::read_async(gpu, confusion))
    }

    /// [`Confusion::read`] as a future (a web page awaits it).
    pub async fn read_async(gpu: &Gpu, confusion: &Tensor) -> Confusion {
        let classes = confusion.shape()[0];
        Confusion { classes, counts: gpu.read_u32_async(confusion).await.into_iter().map(u64::from).collect() }
    }

    /// Add another matrix (e.g. of another batch).
    pub fn add(&mut self, other: &Confusion) {
        assert_eq!(self.classes, other.classes, "adding confusion matrices of different class counts");
        self.counts.iter_mut().zip(&other.counts).for_each(|(a, b)| *a += b);
    }

    fn at(&self, truth: usize, pred: usize) -> u64 {
        self.counts[truth * self.classes + pred]
    }

    /// Pixels counted.
    pub fn total(&self) -> u64 {
        self.counts.iter().sum()
    }

    /// Fraction of counted pixels predicted right (`None` if none were counted).
    pub fn accuracy(&self) -> Option<f64> {
        let total = self.total();
        (total > 0).then(|| (0..self.classes).map(|k| self.at(k, k)).sum::<u64>() as f64 / total as f64)
    }

    /// (true positives, false positives, false negatives) of class `k`.
    pub fn tp_fp_fn(&self, k: usize) -> (u64, u64, u64) {
        let tp = self.at(k, k);
        let predicted: u64 = (0..self.classes).map(|t| self.at(t, k)).sum();
        let actual: u64 = (0..self.classes).map(|p| self.at(k, p)).sum();
        (tp, predicted - tp, actual - tp)
    }

    /// Whether class `k` occurs in the ground truth.
    pub fn present(&self, k: usize) -> bool {
        let (tp, _, fneg) = self.tp_fp_fn(k);
        tp + fneg > 0
    }

    /// IoU of class `k`: `TP / (TP + FP + FN)`; `None` when absent from the ground truth.
    pub fn iou(&self, k: usize) -> Option<f64> {
        let (tp, fp, fneg) = self.tp_fp_fn(k);
        self.present(k).then(|| tp as f64 / (tp + fp + fneg) as f64)
    }

    /// Dice / F1 of class `k`: `2 TP / (2 TP + FP + FN)`; `None` when absent from the ground truth.
    pub fn dice(&self, k: usize) -> Option<f64> {
        let (tp, fp, fneg) = self.tp_fp_fn(k);
        self.present(k).then(|| 2.0 * tp as f64 / (2 * tp + fp + fneg) as f64)
    }

    /// Mean IoU over the classes present in the ground truth (`None` if none is).
    pub fn mean_iou(&self) -> Option<f64> {
        let ious: Vec<f64> = (0..self.classes).filter_map(|k| self.iou(k)).collect();
        (!ious.is_empty()).then(|| ious.iter().sum::<f64>() / ious.len() as f64)
    }
}

/// Plain-Rust confusion counting, the contract the shader is tested against.
pub mod reference {
    use super::Confusion;

    /// Count argmax predictions of `logits` `[N,C,H,W]` against `labels` `[N,H,W]`.
    pub fn confusion(logits: &[f32], labels: &[u32], [n, c, h, w]: [usize; 4], ignore: Option<u32>) -> Confusion {
        let mut m = Confusion::new(c);
        let hw = h * w;
        for (i, &y) in labels.iter().enumerate().take(n * hw) {
            if y as usize >= c || Some(y) == ignore {
                continue;
            }
            let (b, pos) = (i / hw, i % hw);
            let z = |k: usize| logits[(b * c + k) * hw + pos];
            let pred = (1..c).fold(0, |best, k| if z(k) > z(best) { k } else { best });
            m.counts[y as usize * c + pred] += 1;
        }
        m
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;
    use crate::testing::{gpu, random_vec};

    #[test]
    fn gpu_counts_match_the_reference_and_accumulate() {
        let gpu = gpu();
        for (seed, dims) in [(1u64, [1, 1, 1, 1]), (2, [2, 6, 7, 9]), (3, [3, 16, 33, 65]), (4, [1, 5, 200, 101])] {
            let [n, c, h, w] = dims;
            let logits = random_vec(seed, n * c * h * w);
            let mut rng = Rng::new(seed);
            let labels: Vec<u32> = (0..n * h * w).map(|_| rng.below(c + 2) as u32).collect(); // some out of range
            let ignore = Some(0);
            let (lt, yt) = (gpu.upload(&logits, &dims), gpu.upload_u32(&labels, &[n, h, w]));
            let confusion = gpu.empty(&[c, c]);
            let mut enc = gpu.encoder();
            enc.clear(&confusion);
            confusion_update(gpu, &mut enc, &lt, &yt, ignore, &confusion);
            confusion_update(gpu, &mut enc, &lt, &yt, ignore, &confusion); // accumulates
            gpu.submit(enc);
            let mut want = reference::confusion(&logits, &labels, dims, ignore);
            want.add(&want.clone());
            assert_eq!(Confusion::read(gpu, &confusion), want, "{dims:?}");
        }
    }

    #[test]
    fn metrics_from_a_known_matrix() {
        // truth rows, prediction columns; class 2 never occurs in the truth.
        let m = Confusion { classes: 3, counts: vec![5, 1, 2, 0, 3, 0, 0, 0, 0] };
        assert_eq!(m.accuracy(), Some(8.0 / 11.0));
        assert_eq!(m.iou(0), Some(5.0 / 8.0)); // tp 5, fp 0, fn 3
        assert_eq!(m.iou(1), Some(3.0 / 4.0)); // tp 3, fp 1, fn 0
        assert_eq!(m.iou(2), None); // absent from the truth, though predicted twice
        assert_eq!(m.dice(1), Some(6.0 / 7.0));
        assert_eq!(m.mean_iou(), Some((5.0 / 8.0 + 3.0 / 4.0) / 2.0));
        assert_eq!(Confusion::new(2).mean_iou(), None);
        assert_eq!(Confusion::new(2).accuracy(), None);
    }
}
