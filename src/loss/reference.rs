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
            * (f.w_ce + f.w_focal * f.focal.0 * focal_coef(f.focal.1) + f.w_uf * (1.0 - lambda) * d * focal_coef(g));
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
