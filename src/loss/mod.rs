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
    dispatch(gpu, enc, cfg, logits, labels, class_weights, out, false);
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
    dispatch(
        gpu,
        enc,
        cfg,
        &probs,
        labels,
        class_weights,
        &LossOutput { values: out.values.clone(), dlogits: dprobs.clone() },
        true,
    );
    enc.clear(&out.dlogits);
    softmax_backward(gpu, enc, &probs, &dprobs, &out.dlogits);
}

/// Record the three loss dispatches. `input` holds logits, or probabilities
/// when `from_probs` (the unfused baseline, which then writes dL/dp).
#[allow(clippy::too_many_arguments)]
fn dispatch(
    gpu: &Gpu,
    enc: &mut Encoder,
    cfg: &LossConfig,
    logits: &Tensor,
    labels: &Tensor,
    class_weights: &Tensor,
    out: &LossOutput,
    from_probs: bool,
) {
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
pub mod reference {
    use super::{class_weights, flatten, LossConfig, LossValues, NO_CLASS};

    const EPS: f64 = 1e-6;

    /// `x^e`, with `x^0 = 1` and `0^e = 0` for `e > 0`, as in the shader.
    fn safe_pow(x: f64, e: f64) -> f64 {
        if e == 0.0 {
            1.0
        } else if x <= 0.0 {
            0.0
        } else {
            x.powf(e)
        }
    }

    /// Softmax of every pixel: `p[n][pixel][c]`.
    fn softmax(logits: &[f64], [n, c, h, w]: [usize; 4]) -> Vec<Vec<f64>> {
        let hw = h * w;
        (0..n * hw)
            .map(|i| {
                let (b, pos) = (i / hw, i % hw);
                let z: Vec<f64> = (0..c).map(|k| logits[(b * c + k) * hw + pos]).collect();
                let m = z.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let e: Vec<f64> = z.iter().map(|v| (v - m).exp()).collect();
                let s: f64 = e.iter().sum();
                e.iter().map(|v| v / s).collect()
            })
            .collect()
    }

    fn argmax(p: &[f64]) -> usize {
        (1..p.len()).fold(0, |best, k| if p[k] > p[best] { k } else { best })
    }

    /// `(1 - TI)^e` and its derivatives w.r.t. `I` and `P` (taken as 0 where
    /// `1 - TI < EPS`: for `e < 1` they grow without bound as a class becomes perfect).
    fn tversky_term(i: f64, p: f64, t: f64, a: f64, b: f64, e: f64, s: f64) -> (f64, f64, f64) {
        let num = i + s;
        let den = (1.0 - a - b) * i + a * p + b * t + s;
        let ti = num / den;
        let base = (1.0 - ti).max(0.0);
        let dl_dti = if base < EPS { 0.0 } else { -e * safe_pow(base, e - 1.0) };
        (safe_pow(base, e), dl_dti * (den - num * (1.0 - a - b)) / (den * den), dl_dti * (-num * a) / (den * den))
    }

    /// What the reference computes.
    pub struct Loss {
        /// The values, rounded to f32 as the GPU reports them.
        pub values: LossValues,
        /// The trained value in f64.
        pub total: f64,
        /// Gradient of `total` w.r.t. the logits (analytic).
        pub grad: Vec<f64>,
    }

    /// The loss values and the gradient of the total w.r.t. the logits
    /// (analytic; checked against finite differences in the tests).
    pub fn loss(cfg: &LossConfig, logits: &[f64], labels: &[u32], dims: [usize; 4]) -> Loss {
        let [_, c, h, w] = dims;
        let hw = h * w;
        let f = flatten(cfg);
        let cw: Vec<f64> = class_weights(cfg, c).iter().map(|&v| v as f64).collect();
        let ignore = cfg.ignore_index.unwrap_or(NO_CLASS);
        let s = cfg.smooth as f64;
        let valid = |y: u32| (y as usize) < c && y != ignore;
        let probs = softmax(logits, dims);
        let (lambda, delta, uf_gamma, asym, bg) = f.uf;
        let uf_pixel = |y: usize| {
            let background = y as u32 == bg;
            (if background { 1.0 - delta } else { delta }, if asym && !background { 0.0 } else { uf_gamma })
        };

        // Pass 1: per-class sums and pixel terms.
        let (mut ic, mut pc, mut tc, mut hc) = (vec![0.0; c], vec![0.0; c], vec![0.0; c], vec![0.0; c]);
        let (mut ce, mut wsum, mut focal, mut mf, mut count, mut correct) = (0.0, 0.0, 0.0, 0.0, 0.0, 0.0);
        for (i, p) in probs.iter().enumerate() {
            if !valid(labels[i]) {
                continue;
            }
            let y = labels[i] as usize;
            let u: f64 = (0..c).filter(|&k| k != y).map(|k| p[k]).sum();
            let nll = -p[y].ln();
            ic[y] += p[y];
            for k in 0..c {
                pc[k] += p[k];
            }
            tc[y] += 1.0;
            hc[argmax(p)] += 1.0;
            ce += cw[y] * nll;
            wsum += cw[y];
            focal += cw[y] * f.focal.0 * safe_pow(u, f.focal.1) * nll;
            let (d, g) = uf_pixel(y);
            mf += cw[y] * d * safe_pow(u, g) * nll;
            count += 1.0;
            correct += (argmax(p) == y) as u8 as f64;
        }
        let inv_w = if wsum > 0.0 { 1.0 / wsum } else { 0.0 };
        let (ce, focal, mf) = (ce * inv_w, focal * inv_w, mf * inv_w);

        // Region terms: loss values and dL/dp_ic = a_c t_ic + b_c.
        let k: Vec<f64> =
            (0..c).map(|j| if !cfg.skip_absent || tc[j] > 0.0 || hc[j] > 0.0 { cw[j] } else { 0.0 }).collect();
        let ksum: f64 = k.iter().sum();
        let inv_k = if ksum > 0.0 { 1.0 / ksum } else { 0.0 };
        let (mut a, mut b) = (vec![0.0; c], vec![0.0; c]);
        let (isum, psum, tsum) = (ic.iter().sum::<f64>(), pc.iter().sum::<f64>(), tc.iter().sum::<f64>());
        let dice = if f.dice_pooled {
            let den = psum + tsum + s;
            for j in 0..c {
                a[j] += f.w_dice * (-2.0 / den);
                b[j] += f.w_dice * (2.0 * isum + s) / (den * den);
            }
            1.0 - (2.0 * isum + s) / den
        } else {
            let mut mean = 0.0;
            for j in 0..c {
                let (num, den) = (2.0 * ic[j] + s, pc[j] + tc[j] + s);
                mean += k[j] * inv_k * num / den;
                a[j] += f.w_dice * k[j] * inv_k * (-2.0 / den);
                b[j] += f.w_dice * k[j] * inv_k * num / (den * den);
            }
            if ksum > 0.0 {
                1.0 - mean
            } else {
                0.0
            }
        };
        let (mut tversky, mut mft) = (0.0, 0.0);
        for j in 0..c {
            let (ta, tb, te) = f.tversky;
            let (v, di, dp) = tversky_term(ic[j], pc[j], tc[j], ta, tb, te, s);
            tversky += k[j] * inv_k * v;
            a[j] += f.w_tversky * k[j] * inv_k * di;
            b[j] += f.w_tversky * k[j] * inv_k * dp;
            let e = if asym && j as u32 == bg { 1.0 } else { 1.0 - uf_gamma };
            let (v, di, dp) = tversky_term(ic[j], pc[j], tc[j], 1.0 - delta, delta, e, s);
            mft += k[j] * inv_k * v;
            a[j] += f.w_uf * lambda * k[j] * inv_k * di;
            b[j] += f.w_uf * lambda * k[j] * inv_k * dp;
        }
        let uf = lambda * mft + (1.0 - lambda) * mf;
        let total = f.w_ce * ce + f.w_dice * dice + f.w_focal * focal + f.w_tversky * tversky + f.w_uf * uf;

        // Pass 2: the gradient w.r.t. the logits.
        let mut grad = vec![0.0; logits.len()];
        for (i, p) in probs.iter().enumerate() {
            if !valid(labels[i]) {
                continue;
            }
            let y = labels[i] as usize;
            let u: f64 = (0..c).filter(|&j| j != y).map(|j| p[j]).sum();
            let nll = -p[y].ln();
            // d/dz_c of u^g (-log q) = (u^g + g u^(g-1) q (-log q)) (p_c - t_c)
            let focal_coef =
                |g: f64| safe_pow(u, g) + if g != 0.0 && u > 0.0 { g * u.powf(g - 1.0) * p[y] * nll } else { 0.0 };
            let (d, g) = uf_pixel(y);
            let kpix = cw[y]
                * inv_w
                * (f.w_ce
                    + f.w_focal * f.focal.0 * focal_coef(f.focal.1)
                    + f.w_uf * (1.0 - lambda) * d * focal_coef(g));
            let gc: Vec<f64> = (0..c).map(|j| b[j] + if j == y { a[j] } else { 0.0 }).collect();
            let dot: f64 = (0..c).map(|j| p[j] * gc[j]).sum();
            let (bn, pos) = (i / hw, i % hw);
            for j in 0..c {
                let t = if j == y { 1.0 } else { 0.0 };
                grad[(bn * c + j) * hw + pos] = p[j] * (gc[j] - dot) + kpix * (p[j] - t);
            }
        }
        let values = LossValues {
            total: total as f32,
            ce: ce as f32,
            dice: dice as f32,
            focal: focal as f32,
            tversky: tversky as f32,
            unified_focal: uf as f32,
            soft_jaccard: ((isum + 1.0) / (tsum + psum - isum + 1.0)) as f32,
            accuracy: if count > 0.0 { (correct / count) as f32 } else { 0.0 },
            valid_pixels: count as f32,
        };
        Loss { values, total, grad }
    }

    /// Only the trained value, unrounded, for finite differences.
    pub fn total(cfg: &LossConfig, logits: &[f64], labels: &[u32], dims: [usize; 4]) -> f64 {
        loss(cfg, logits, labels, dims).total
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;
    use crate::testing::{assert_close, assert_close_f32, assert_close_floor, gpu, numeric_grad, to_f64};

    /// Every configuration the tests sweep: each term alone, the sums people
    /// train with, and the options that change which pixels and classes count.
    fn configs(c: usize) -> Vec<(&'static str, LossConfig)> {
        let weights: Vec<f32> = (0..c).map(|k| 0.5 + k as f32 * 0.25).collect();
        let with = |mut cfg: LossConfig, f: &dyn Fn(&mut LossConfig)| {
            f(&mut cfg);
            cfg
        };
        vec![
            ("ce", LossConfig::new(Term::CrossEntropy)),
            ("ce weighted", with(LossConfig::new(Term::CrossEntropy), &|c| c.class_weights = Some(weights.clone()))),
            ("dice", LossConfig::new(Term::Dice { pooled: false })),
            (
                "dice weighted",
                with(LossConfig::new(Term::Dice { pooled: false }), &|c| c.class_weights = Some(weights.clone())),
            ),
            ("dice pooled", LossConfig::new(Term::Dice { pooled: true })),
            ("dice skip absent", with(LossConfig::new(Term::Dice { pooled: false }), &|c| c.skip_absent = true)),
            ("dice small smooth", with(LossConfig::new(Term::Dice { pooled: false }), &|c| c.smooth = 1e-3)),
            ("focal", LossConfig::new(Term::FOCAL)),
            ("focal gamma 0.5", LossConfig::new(Term::Focal { alpha: 0.7, gamma: 0.5 })),
            ("tversky", LossConfig::new(Term::TVERSKY)),
            ("focal tversky", LossConfig::new(Term::FOCAL_TVERSKY)),
            ("unified focal", LossConfig::new(Term::UNIFIED_FOCAL)),
            (
                "unified focal asymmetric",
                LossConfig::new(Term::UnifiedFocal {
                    lambda: 0.4,
                    delta: 0.7,
                    gamma: 0.5,
                    asymmetric: true,
                    background: Some(1),
                }),
            ),
            ("dice + ce", LossConfig::sum(&[(1.0, Term::Dice { pooled: false }), (1.0, Term::CrossEntropy)])),
            ("dice + focal", LossConfig::sum(&[(1.0, Term::Dice { pooled: false }), (1.0, Term::FOCAL)])),
            (
                "everything, ignore label",
                with(
                    LossConfig::sum(&[
                        (0.5, Term::CrossEntropy),
                        (1.0, Term::Dice { pooled: false }),
                        (0.25, Term::FOCAL),
                        (0.5, Term::FOCAL_TVERSKY),
                        (0.75, Term::UNIFIED_FOCAL),
                    ]),
                    &|cfg| {
                        cfg.ignore_index = Some(0);
                        cfg.class_weights = Some(weights.clone());
                    },
                ),
            ),
        ]
    }

    /// Random logits (scale `spread`) and labels in `0..c`, a few set to `c`
    /// (out of range: ignored) unless `all_valid`.
    fn problem(seed: u64, dims: [usize; 4], spread: f64) -> (Vec<f64>, Vec<u32>) {
        let [n, c, h, w] = dims;
        let mut rng = Rng::new(seed);
        let logits = (0..n * c * h * w).map(|_| rng.range(-spread, spread)).collect();
        let labels = (0..n * h * w).map(|_| if rng.uniform() < 0.1 { c as u32 } else { rng.below(c) as u32 }).collect();
        (logits, labels)
    }

    fn run_gpu(cfg: &LossConfig, logits: &[f64], labels: &[u32], dims: [usize; 4]) -> (Vec<f32>, Vec<f32>) {
        let gpu = gpu();
        let [n, _, h, w] = dims;
        let z: Vec<f32> = logits.iter().map(|&v| v as f32).collect();
        let (zt, yt) = (gpu.upload(&z, &dims), gpu.upload_u32(labels, &[n, h, w]));
        let mut enc = gpu.encoder();
        let out = loss(gpu, &mut enc, cfg, &zt, &yt);
        gpu.submit(enc);
        (gpu.read(&out.values), gpu.read(&out.dlogits))
    }

    fn values_vec(v: &LossValues) -> Vec<f64> {
        [v.total, v.ce, v.dice, v.focal, v.tversky, v.unified_focal, v.soft_jaccard, v.accuracy, v.valid_pixels]
            .iter()
            .map(|&x| x as f64)
            .collect()
    }

    #[test]
    fn reference_gradients_match_finite_differences() {
        let dims = [2, 4, 3, 5];
        for (name, cfg) in configs(4) {
            let (logits, labels) = problem(7, dims, 3.0);
            let analytic = reference::loss(&cfg, &logits, &labels, dims).grad;
            let numeric = numeric_grad(|z| reference::total(&cfg, z, &labels, dims), &logits, 1e-6);
            assert_close(&format!("{name}: dlogits"), &analytic, &numeric, 1e-5);
        }
    }

    #[test]
    fn gpu_matches_reference_on_odd_shapes() {
        for (seed, dims) in [(1, [1, 6, 1, 1]), (2, [2, 6, 7, 9]), (3, [1, 3, 33, 17]), (4, [3, 5, 64, 61])] {
            for (name, cfg) in configs(dims[1]) {
                let (logits, labels) = problem(seed, dims, 4.0);
                let want = reference::loss(&cfg, &logits, &labels, dims);
                let (values, dlogits) = run_gpu(&cfg, &logits, &labels, dims);
                assert_close_f32(&format!("{name} {dims:?}: values"), &values[..9], &values_vec(&want.values), 1e-4);
                assert_close_f32(&format!("{name} {dims:?}: dlogits"), &dlogits, &want.grad, 1e-3);
            }
        }
    }

    #[test]
    fn the_unfused_baseline_computes_the_same_loss() {
        let gpu = gpu();
        let dims = [2, 6, 19, 23];
        let (logits, labels) = problem(12, dims, 3.0);
        for (name, cfg) in
            configs(6).into_iter().filter(|(n, _)| ["ce weighted", "dice", "dice + ce", "tversky"].contains(n))
        {
            let want = reference::loss(&cfg, &logits, &labels, dims);
            let z: Vec<f32> = logits.iter().map(|&v| v as f32).collect();
            let (zt, yt) = (gpu.upload(&z, &dims), gpu.upload_u32(&labels, &[2, 19, 23]));
            let weights = gpu.upload(&class_weights(&cfg, 6), &[6]);
            let out = LossOutput { values: gpu.empty(&[VALUES_LEN]), dlogits: gpu.empty(&dims) };
            let mut enc = gpu.encoder();
            loss_unfused(gpu, &mut enc, &cfg, &zt, &yt, &weights, &out);
            gpu.submit(enc);
            assert_close_f32(
                &format!("unfused {name}: values"),
                &gpu.read(&out.values)[..9],
                &values_vec(&want.values),
                1e-4,
            );
            assert_close_f32(&format!("unfused {name}: dlogits"), &gpu.read(&out.dlogits), &want.grad, 1e-3);
        }
    }

    #[test]
    fn results_are_bit_for_bit_repeatable() {
        let dims = [2, 6, 40, 37];
        let (logits, labels) = problem(5, dims, 4.0);
        let cfg = &configs(6)[15].1;
        assert_eq!(run_gpu(cfg, &logits, &labels, dims), run_gpu(cfg, &logits, &labels, dims));
    }

    #[test]
    fn edge_cases_stay_finite_and_match_the_reference() {
        let dims = [1, 4, 5, 7];
        let (mut logits, labels) = problem(9, dims, 1.0);
        let one_class = vec![2u32; 35];
        let absent = labels.iter().map(|&y| if y == 3 { 0 } else { y }).collect::<Vec<_>>();
        // extreme logits: +-80, including pixels whose true class gets -80
        for (i, z) in logits.iter_mut().enumerate() {
            *z = if i % 3 == 0 { 80.0 } else { -80.0 };
        }
        for (what, labels) in [("one class", &one_class), ("class 3 absent", &absent), ("extreme", &labels)] {
            for (name, cfg) in configs(4) {
                let want = reference::loss(&cfg, &logits, labels, dims);
                let (values, dlogits) = run_gpu(&cfg, &logits, labels, dims);
                assert!(values.iter().chain(&dlogits).all(|v| v.is_finite()), "{what}, {name}: NaN or Inf");
                assert_close_f32(&format!("{what}, {name}: values"), &values[..9], &values_vec(&want.values), 1e-4);
                // With +-80 logits most exact gradients are below 1e-30, which f32's
                // exp flushes to 0: judge errors against the scale of a visible gradient.
                assert_close_floor(&format!("{what}, {name}: dlogits"), &to_f64(&dlogits), &want.grad, 1e-3, 1e-6);
            }
        }
    }

    #[test]
    fn all_pixels_ignored_gives_a_defined_zero() {
        let dims = [2, 3, 4, 4];
        let (logits, _) = problem(11, dims, 2.0);
        let labels = vec![255u32; 32];
        for (name, mut cfg) in configs(3) {
            cfg.ignore_index = Some(255);
            let (values, dlogits) = run_gpu(&cfg, &logits, &labels, dims);
            assert_eq!(values[0], 0.0, "{name}: total");
            assert_eq!(values[8], 0.0, "{name}: valid pixels");
            assert!(dlogits.iter().all(|&g| g == 0.0), "{name}: gradient");
        }
    }

    #[test]
    fn one_wrong_pixel_moves_dice_for_a_small_object_and_not_for_a_large_one() {
        // Two 32x32 scenes of background (class 0) with one object (class 1):
        // 16x16 pixels in one, 2x2 in the other. Predictions are confident and
        // right, except one object pixel predicted as background.
        let side = 32;
        let scene = |object: usize, wrong: bool| {
            let mut labels = vec![0u32; side * side];
            for r in 0..object {
                for c in 0..object {
                    labels[r * side + c] = 1;
                }
            }
            let mut logits = vec![0.0; 2 * side * side];
            for (i, &y) in labels.iter().enumerate() {
                let predicted = if wrong && i == 0 { 0 } else { y as usize };
                logits[predicted * side * side + i] = 8.0;
            }
            (logits, labels)
        };
        let dims = [1, 2, side, side];
        let eval = |cfg: &LossConfig, object: usize, wrong: bool| {
            let (logits, labels) = scene(object, wrong);
            let values = run_gpu(cfg, &logits, &labels, dims).0;
            let want = reference::loss(cfg, &logits, &labels, dims).values;
            assert_close_f32("values", &values[..9], &values_vec(&want), 1e-4);
            values
        };
        // Dice of the object class alone: class weights (0, 1).
        let mut dice = LossConfig::new(Term::Dice { pooled: false });
        (dice.class_weights, dice.smooth) = (Some(vec![0.0, 1.0]), 1e-3);
        let ce = LossConfig::new(Term::CrossEntropy);
        let moved = |cfg: &LossConfig, object| (eval(cfg, object, true)[0] - eval(cfg, object, false)[0]).abs();
        let (dice_small, dice_large) = (moved(&dice, 2), moved(&dice, 16));
        let (ce_small, ce_large) = (moved(&ce, 2), moved(&ce, 16));
        // One of 4 object pixels lost: Dice drops by about 1/7; one of 256: by about 1/511.
        assert!(dice_small > 0.1 && dice_large < 0.003, "dice moved {dice_small} (small) and {dice_large} (large)");
        assert!(dice_small > 50.0 * dice_large);
        // CE is a mean over all 1024 pixels: the same one pixel moves it the same.
        assert!((ce_small - ce_large).abs() < 1e-3 * ce_small, "ce moved {ce_small} and {ce_large}");
    }
}
