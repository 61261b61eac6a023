//! Segmentation losses, fused with the softmax: cross-entropy, focal, soft
//! Dice (per class or pooled), Tversky / focal Tversky, the Unified Focal
//! loss, and weighted sums of any of them. `shaders/loss.wgsl` holds the exact
//! formulas (repeated on [`LossConfig`] and [`Term`]).
//!
//! Inputs: `logits` `[N,C,H,W]` f32 (C <= 16), `labels` `[N,H,W]` u32. Pixels whose
//! label is the ignore label, or any value >= C, count in neither the loss nor
//! the gradient. If every pixel is ignored, every term is a defined zero and so
//! is the gradient.
//!
//! Three dispatches: per-pixel softmax and per-class sums with workgroup
//! reductions (`loss_stats`), a deterministic fixed-order second stage that
//! also computes the values and the gradient coefficients (`loss_finalize`),
//! and the gradient w.r.t. the logits (`loss_backward`). The softmax is never
//! written to memory. The loss is terminal: its gradient is computed at once
//! and seeds the tape's backward walk (`step.backward(vec![(logits, dlogits)])`).

use crate::autograd::tensor::Tensor;
use crate::ops::softmax::{softmax_backward, softmax_forward};
use crate::runtime::{groups_1d, Encoder, Gpu, Shader};
use crate::shader;

const SHADER: Shader = shader!("loss");
/// Most classes the fused kernels handle (per-pixel arrays live in registers).
pub const MAX_CLASSES: usize = 16;
const STATS_WG: usize = 64;
/// Aim for this many workgroups in the stats pass: enough to fill a GPU,
/// few enough that the second stage is short.
const TARGET_GROUPS: usize = 256;
const WG: u32 = 256;
/// Length of the values tensor (see [`LossValues`]).
pub const VALUES_LEN: usize = 16;
const NO_CLASS: u32 = u32::MAX;

/// One loss term.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Term {
    /// `CE = (1/W) sum_i w_y (-log p_iy)`: weighted mean of the negative
    /// log-likelihood of the true class (PyTorch's weighted `CrossEntropyLoss`).
    CrossEntropy,
    /// Soft Dice loss. Per class: `1 - (1/K) sum_c k_c (2 I_c + s) / (P_c + T_c + s)`
    /// with `I_c = sum_i p_ic t_ic`, `P_c = sum_i p_ic`, `T_c = sum_i t_ic`.
    /// `pooled`: one Dice over the sums of all classes, as the Keras /
    /// segmentation_models tutorials compute it (class weights then do not apply).
    Dice {
        /// One Dice over all classes pooled, instead of the mean of per-class Dice.
        pooled: bool,
    },
    /// Focal loss (Lin et al.): `(1/W) sum_i w_y alpha (1 - p_iy)^gamma (-log p_iy)`.
    Focal {
        /// Scale of the term (0.25 in the paper and in segmentation_models).
        alpha: f32,
        /// Focusing exponent (2 in the paper). 0 gives `alpha * CE`.
        gamma: f32,
    },
    /// Tversky loss `(1/K) sum_c k_c (1 - TI_c)^(1/gamma)` (gradient taken as 0 where
    /// `1 - TI_c < 1e-6`, where for `gamma > 1` it would grow without bound),
    /// `TI_c = (I_c + s) / (I_c + alpha FP_c + beta FN_c + s)`, `FP_c = P_c - I_c`,
    /// `FN_c = T_c - I_c`. `gamma = 1` is the Tversky loss (Salehi et al.), `gamma > 1`
    /// the focal Tversky loss (Abraham and Khan; 4/3 there).
    Tversky {
        /// Weight of false positives (0.3 in Salehi et al.).
        alpha: f32,
        /// Weight of false negatives (0.7).
        beta: f32,
        /// Focal parameter: the class term is raised to `1/gamma`.
        gamma: f32,
    },
    /// The Unified Focal loss (Yeung et al. 2022): `lambda mFT + (1 - lambda) mF`.
    /// `mF = (1/W) sum_i w_y d_y (1 - p_iy)^g_y (-log p_iy)` with `d_y = 1 - delta`
    /// for the background class and `delta` otherwise; `mFT = (1/K) sum_c k_c
    /// (1 - mTI_c)^e_c`, `mTI_c` the Tversky index with `alpha = 1 - delta`,
    /// `beta = delta`. Symmetric: `g_y = gamma`, `e_c = 1 - gamma` for every class.
    /// Asymmetric: foreground classes get `g = 0` in mF; the background class gets
    /// `e = 1` in mFT (the rare classes are not suppressed in either part).
    UnifiedFocal {
        /// Weight of the focal-Tversky part (paper default 0.5).
        lambda: f32,
        /// Balance of foreground against background (paper default 0.6).
        delta: f32,
        /// Focal parameter (paper default 0.5).
        gamma: f32,
        /// The asymmetric variant.
        asymmetric: bool,
        /// The background class, if the dataset has one; `None`: every class is foreground.
        background: Option<u32>,
    },
}

impl Term {
    /// Focal loss with the paper's parameters (alpha 0.25, gamma 2).
    pub const FOCAL: Term = Term::Focal { alpha: 0.25, gamma: 2.0 };
    /// Tversky loss (alpha 0.3, beta 0.7).
    pub const TVERSKY: Term = Term::Tversky { alpha: 0.3, beta: 0.7, gamma: 1.0 };
    /// Focal Tversky loss (alpha 0.3, beta 0.7, gamma 4/3).
    pub const FOCAL_TVERSKY: Term = Term::Tversky { alpha: 0.3, beta: 0.7, gamma: 4.0 / 3.0 };
    /// Symmetric Unified Focal loss with the paper's defaults (lambda 0.5, delta 0.6, gamma 0.5).
    pub const UNIFIED_FOCAL: Term =
        Term::UnifiedFocal { lambda: 0.5, delta: 0.6, gamma: 0.5, asymmetric: false, background: None };
}

/// What to train with: a weighted sum of terms, and how pixels and classes count.
///
/// `k_c`, the weight of class `c` in the class means of Dice, Tversky and mFT,
/// is its class weight, or 0 when `skip_absent` is set and the class is absent
/// from both the target and the (argmax) prediction of the batch: such a class
/// would otherwise count as a perfect score of about 1 (through the smoothing)
/// and dilute the mean.
#[derive(Clone, Debug, PartialEq)]
pub struct LossConfig {
    /// `(weight, term)` pairs; the loss is their weighted sum. A term may appear once.
    pub terms: Vec<(f32, Term)>,
    /// Per-class weights `w_c` (length C), or `None` for all ones.
    pub class_weights: Option<Vec<f32>>,
    /// Label of pixels that count nowhere (e.g. unlabeled gaps), if any.
    pub ignore_index: Option<u32>,
    /// Smoothing `s` of Dice and Tversky (default 1, as in the Keras tutorials).
    pub smooth: f32,
    /// Leave classes absent from target and prediction out of the class means.
    pub skip_absent: bool,
}

impl LossConfig {
    /// One term with weight 1, no class weights, no ignore label, smoothing 1,
    /// absent classes counted.
    pub fn new(term: Term) -> LossConfig {
        LossConfig {
            terms: vec![(1.0, term)],
            class_weights: None,
            ignore_index: None,
            smooth: 1.0,
            skip_absent: false,
        }
    }

    /// A weighted sum of terms, otherwise as [`LossConfig::new`].
    pub fn sum(terms: &[(f32, Term)]) -> LossConfig {
        LossConfig { terms: terms.to_vec(), ..LossConfig::new(Term::CrossEntropy) }
    }
}

/// The numbers the loss pass produces (read back from the `values` tensor).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct LossValues {
    /// The weighted sum that is trained on.
    pub total: f32,
    /// Cross-entropy (whether or not it is a term).
    pub ce: f32,
    /// Dice loss as configured (per class or pooled).
    pub dice: f32,
    /// Focal loss with the configured (or default) parameters.
    pub focal: f32,
    /// Tversky loss with the configured (or default) parameters.
    pub tversky: f32,
    /// Unified Focal loss with the configured (or default) parameters.
    pub unified_focal: f32,
    /// Keras' `jacard_coef` over valid pixels: `(I + 1) / (T + P - I + 1)` on
    /// flattened one-hot targets and softmax outputs.
    pub soft_jaccard: f32,
    /// Fraction of valid pixels whose argmax is the label.
    pub accuracy: f32,
    /// Number of pixels that counted.
    pub valid_pixels: f32,
}

impl LossValues {
    /// Unpack the values tensor's contents.
    pub fn from_slice(v: &[f32]) -> LossValues {
        LossValues {
            total: v[0],
            ce: v[1],
            dice: v[2],
            focal: v[3],
            tversky: v[4],
            unified_focal: v[5],
            soft_jaccard: v[6],
            accuracy: v[7],
            valid_pixels: v[8],
        }
    }
}

/// Mirrors `Params` in `shaders/loss.wgsl`.
#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    n: u32,
    c: u32,
    hw: u32,
    ignore: u32,
    pixels_per_thread: u32,
    groups: u32,
    stats: u32,
    flags: u32,
    w_ce: f32,
    w_dice: f32,
    w_focal: f32,
    w_tversky: f32,
    w_uf: f32,
    smoothing: f32,
    focal_alpha: f32,
    focal_gamma: f32,
    tv_alpha: f32,
    tv_beta: f32,
    tv_exponent: f32,
    uf_lambda: f32,
    uf_delta: f32,
    uf_gamma: f32,
    uf_background: u32,
    _pad: u32,
}

/// The flattened form of a config, shared by the shader parameters and the reference.
#[derive(Clone, Copy, Debug)]
struct Flat {
    w_ce: f64,
    w_dice: f64,
    w_focal: f64,
    w_tversky: f64,
    w_uf: f64,
    dice_pooled: bool,
    focal: (f64, f64),
    tversky: (f64, f64, f64),
    uf: (f64, f64, f64, bool, u32),
}

fn flatten(cfg: &LossConfig) -> Flat {
    let mut f = Flat {
        w_ce: 0.0,
        w_dice: 0.0,
        w_focal: 0.0,
        w_tversky: 0.0,
        w_uf: 0.0,
        dice_pooled: false,
        focal: (0.25, 2.0),
        tversky: (0.3, 0.7, 1.0),
        uf: (0.5, 0.6, 0.5, false, NO_CLASS),
    };
    for &(w, term) in &cfg.terms {
        let w = w as f64;
        match term {
            Term::CrossEntropy => f.w_ce += w,
            Term::Dice { pooled } => (f.w_dice, f.dice_pooled) = (f.w_dice + w, pooled),
            Term::Focal { alpha, gamma } => (f.w_focal, f.focal) = (f.w_focal + w, (alpha as f64, gamma as f64)),
            Term::Tversky { alpha, beta, gamma } => {
                assert!(gamma > 0.0, "Tversky gamma must be > 0, got {gamma}");
                (f.w_tversky, f.tversky) = (f.w_tversky + w, (alpha as f64, beta as f64, 1.0 / gamma as f64))
            }
            Term::UnifiedFocal { lambda, delta, gamma, asymmetric, background } => {
                let bg = background.unwrap_or(NO_CLASS);
                (f.w_uf, f.uf) = (f.w_uf + w, (lambda as f64, delta as f64, gamma as f64, asymmetric, bg))
            }
        }
    }
    f
}

fn class_weights(cfg: &LossConfig, c: usize) -> Vec<f32> {
    match &cfg.class_weights {
        Some(w) => {
            assert_eq!(w.len(), c, "{} class weights given for {c} classes", w.len());
            w.clone()
        }
        None => vec![1.0; c],
    }
}

/// Stats-pass geometry for `pixels` pixels: (pixels per thread, workgroups).
fn stats_grid(pixels: usize) -> (usize, usize) {
    let per_thread = pixels.div_ceil(STATS_WG * TARGET_GROUPS).max(1);
    (per_thread, pixels.div_ceil(STATS_WG * per_thread).max(1))
}

/// Where the fused loss writes.
pub struct LossOutput {
    /// [`VALUES_LEN`] floats, see [`LossValues`].
    pub values: Tensor,
    /// Gradient of the total w.r.t. the logits, `[N,C,H,W]` (assigned, not accumulated).
    pub dlogits: Tensor,
}

/// The fused loss of `logits` `[N,C,H,W]` against `labels` `[N,H,W]` (u32), with
/// `class_weights` `[C]` (all ones when the config has none), into `out`.
pub fn loss_forward_backward(
    gpu: &Gpu,
    enc: &mut Encoder,
    cfg: &LossConfig,
    logits: &Tensor,
    labels: &Tensor,
    class_weights: &Tensor,
    out: &LossOutput,
) {
    dispatch(gpu, enc, cfg, Inputs { scores: logits, from_probs: false, labels, class_weights }, out);
}

/// The same loss (cross-entropy, Dice and Tversky terms only) built the
/// unfused way, as a framework would run it: a softmax kernel writes the
/// probabilities, the loss kernels read them and write dL/dp, and the softmax
/// backward kernel turns that into `out.dlogits`. Kept as the baseline of the
/// fused kernels' benchmark and as a cross-check in the tests.
pub fn loss_unfused(
    gpu: &Gpu,
    enc: &mut Encoder,
    cfg: &LossConfig,
    logits: &Tensor,
    labels: &Tensor,
    class_weights: &Tensor,
    out: &LossOutput,
) {
    let f = flatten(cfg);
    assert!(f.w_focal == 0.0 && f.w_uf == 0.0, "the unfused baseline has no focal or Unified Focal terms");
    let probs = gpu.empty(logits.shape());
    let dprobs = gpu.empty(logits.shape());
    softmax_forward(gpu, enc, logits, &probs);
    let inputs = Inputs { scores: &probs, from_probs: true, labels, class_weights };
    dispatch(gpu, enc, cfg, inputs, &LossOutput { values: out.values.clone(), dlogits: dprobs.clone() });
    enc.clear(&out.dlogits);
    softmax_backward(gpu, enc, &probs, &dprobs, &out.dlogits);
}

/// What the three loss dispatches read.
struct Inputs<'a> {
    /// `[N,C,H,W]`: logits, or probabilities when `from_probs` (the unfused baseline, which then
    /// writes dL/dp).
    scores: &'a Tensor,
    from_probs: bool,
    /// `[N,H,W]` (u32).
    labels: &'a Tensor,
    /// `[C]`.
    class_weights: &'a Tensor,
}

/// Record the three loss dispatches.
fn dispatch(gpu: &Gpu, enc: &mut Encoder, cfg: &LossConfig, inputs: Inputs, out: &LossOutput) {
    let Inputs { scores: logits, from_probs, labels, class_weights } = inputs;
    let LossOutput { values, dlogits } = out;
    let [n, c, h, w] = logits.dims4("loss logits");
    assert!((1..=MAX_CLASSES).contains(&c), "the fused loss handles 1 to {MAX_CLASSES} classes, got {c}");
    assert_eq!(labels.shape(), [n, h, w], "labels {:?} for logits {:?}", labels.shape(), logits.shape());
    assert_eq!(class_weights.shape(), [c], "class weights {:?} for {c} classes", class_weights.shape());
    assert_eq!(values.len(), VALUES_LEN, "values tensor {:?}", values.shape());
    assert_eq!(dlogits.shape(), logits.shape(), "dlogits {:?} vs logits {:?}", dlogits.shape(), logits.shape());
    let f = flatten(cfg);
    let (per_thread, groups) = stats_grid(n * h * w);
    let stats = 4 * c + 6;
    let flags = (cfg.skip_absent as u32) | (f.dice_pooled as u32) << 1 | (f.uf.3 as u32) << 2;
    let params = Params {
        n: n as u32,
        c: c as u32,
        hw: (h * w) as u32,
        ignore: cfg.ignore_index.unwrap_or(NO_CLASS),
        pixels_per_thread: per_thread as u32,
        groups: groups as u32,
        stats: stats as u32,
        flags,
        w_ce: f.w_ce as f32,
        w_dice: f.w_dice as f32,
        w_focal: f.w_focal as f32,
        w_tversky: f.w_tversky as f32,
        w_uf: f.w_uf as f32,
        smoothing: cfg.smooth,
        focal_alpha: f.focal.0 as f32,
        focal_gamma: f.focal.1 as f32,
        tv_alpha: f.tversky.0 as f32,
        tv_beta: f.tversky.1 as f32,
        tv_exponent: f.tversky.2 as f32,
        uf_lambda: f.uf.0 as f32,
        uf_delta: f.uf.1 as f32,
        uf_gamma: f.uf.2 as f32,
        uf_background: f.uf.4,
        _pad: 0,
    };
    let partials = gpu.empty(&[groups, stats]);
    let coef = gpu.empty(&[2 * c + 3]);
    let unfused = ("FROM_PROBS", from_probs as u8 as f64);
    let stats_kernel = gpu.kernel(&SHADER, "loss_stats", &[unfused]);
    gpu.dispatch(
        enc,
        &stats_kernel,
        &params,
        &[(1, logits), (2, labels), (3, class_weights), (4, &partials)],
        [groups as u32, 1, 1],
    );
    let finalize = gpu.kernel(&SHADER, "loss_finalize", &[unfused]);
    gpu.dispatch(enc, &finalize, &params, &[(3, class_weights), (4, &partials), (5, values), (6, &coef)], [1, 1, 1]);
    let backward = gpu.kernel(&SHADER, "loss_backward", &[("WG", WG as f64), unfused]);
    gpu.dispatch(
        enc,
        &backward,
        &params,
        &[(1, logits), (2, labels), (3, class_weights), (6, &coef), (7, dlogits)],
        groups_1d(n * h * w, WG),
    );
}

/// The loss of `logits` `[N,C,H,W]` against `labels` `[N,H,W]`, allocating its
/// outputs (from the pool). Seed the backward walk with `(logits, out.dlogits)`.
pub fn loss(gpu: &Gpu, enc: &mut Encoder, cfg: &LossConfig, logits: &Tensor, labels: &Tensor) -> LossOutput {
    let c = logits.dims4("loss logits")[1];
    let weights = gpu.upload(&class_weights(cfg, c), &[c]);
    let out = LossOutput { values: gpu.empty(&[VALUES_LEN]), dlogits: gpu.empty(logits.shape()) };
    loss_forward_backward(gpu, enc, cfg, logits, labels, &weights, &out);
    out
}

/// Plain-Rust losses in f64, term by term as the doc comments state them.
pub mod reference;

#[cfg(test)]
mod tests;
