// loss.wgsl: fused softmax + segmentation losses (cross-entropy, focal, soft Dice,
// Tversky / focal Tversky, Unified Focal), the loss value and its gradient w.r.t. the logits.
//
// Notation, per valid pixel i (label y_i < C and not the ignore label):
//   p_ic = softmax_c(z_i)          t_ic = [y_i == c]        q_i = p_{i,y_i}
//   u_i  = 1 - q_i, computed as sum_{c != y} p_ic (exact even when q is close to 1)
//   w_y  = class weight of the pixel's class (1 without weights), W = sum_i w_{y_i}
// Pixel-wise terms (weighted means over pixels):
//   CE    = (1/W) sum_i w_y * (-log q_i)
//   focal = (1/W) sum_i w_y * alpha * u_i^gamma * (-log q_i)
//   mF    = (1/W) sum_i w_y * d_y * u_i^g_y * (-log q_i)      (Unified Focal's focal part:
//           d_y = 1-delta for the background class, delta otherwise; g_y = 0 for foreground
//           classes in the asymmetric variant, gamma otherwise)
//   gradient: dz_ic = k_i * (p_ic - t_ic),  k_i = w_y a (u^g + g u^(g-1) q (-log q)) / W
// Region terms, from per-class sums over valid pixels:
//   I_c = sum_i p_ic t_ic    P_c = sum_i p_ic    T_c = sum_i t_ic    H_c = #{i: argmax p_i = c}
//   counted class: k_c = w_c if (not skip_absent) or T_c > 0 or H_c > 0, else 0; K = sum k_c
//   Dice    = 1 - (1/K) sum_c k_c (2 I_c + s) / (P_c + T_c + s)       (pooled: one Dice over sums)
//   Tversky = (1/K) sum_c k_c (1 - TI_c)^e   (its gradient is taken as 0 where 1 - TI_c < EPS),
//             TI_c = (I_c + s) / (I_c + a (P_c - I_c) + b (T_c - I_c) + s)
//   mFT     = the same with a = 1-delta, b = delta, e = 1-gamma (e = 1 for the background
//             class in the asymmetric variant)
//   UF      = lambda * mFT + (1 - lambda) * mF
//   gradient: dL/dp_ic = A_c t_ic + B_c  (each region term is a function of I_c and P_c),
//             then through the softmax: dz_ic = p_ic (g_ic - sum_k p_ik g_ik)
// Total = w_ce CE + w_dice Dice + w_focal focal + w_tversky Tversky + w_uf UF.
//
// Three dispatches:
//   loss_stats    : G groups x 64 threads; each thread sums a fixed run of pixels in
//                   registers, then a workgroup tree writes one row of S partial sums
//   loss_finalize : 1 group; thread s sums column s over the G rows in order (deterministic),
//                   then thread 0 computes the values and the gradient coefficients
//   loss_backward : one thread per pixel; recomputes the softmax (it is never stored) and
//                   writes dlogits (a seed, so it is assigned, not accumulated)
// Stats row layout (S = 4C + 6): I_c | P_c | T_c | H_c | ce, W, focal, mF, valid, correct.
// values: total, ce, dice, focal, tversky, unified_focal, soft_jaccard, accuracy, valid_pixels.
// coef  : A_c (C) | B_c (C) | ce_scale, focal_scale, mf_scale.
//
// group 0:  0 uniform Params   1 read logits [N,C,H,W]   2 read labels [N,H,W] (u32)
//           3 read class_weights [C]   4 read_write partials [G,S] (stats) | read (finalize)
//           5 read_write values [16]   6 read_write coef [2C+3] | read (backward)
//           7 read_write dlogits [N,C,H,W]
const MAX_C: u32 = 16u;
const MAX_S: u32 = 70u;            // 4 * MAX_C + 6
const STATS_WG: u32 = 64u;         // a const, not an override: it sizes workgroup memory
const CHUNK: u32 = 16u;            // stats reduced per workgroup tree: 64 x 16 floats = 4 KiB
const EPS: f32 = 1e-6;
override WG: u32 = 256u;
// The unfused baseline (benchmarks and a cross-check only): binding 1 holds softmax
// probabilities written by shaders/softmax.wgsl, and loss_backward writes dL/dp
// (binding 7), which softmax_backward turns into dL/dz. CE and region terms only.
override FROM_PROBS: bool = false;

const SKIP_ABSENT: u32 = 1u;
const DICE_POOLED: u32 = 2u;
const UF_ASYMMETRIC: u32 = 4u;

struct Params {
    n: u32, c: u32, hw: u32, ignore: u32,
    pixels_per_thread: u32, groups: u32, stats: u32, flags: u32,
    w_ce: f32, w_dice: f32, w_focal: f32, w_tversky: f32,
    w_uf: f32, smoothing: f32, focal_alpha: f32, focal_gamma: f32,
    tv_alpha: f32, tv_beta: f32, tv_exponent: f32, uf_lambda: f32,
    uf_delta: f32, uf_gamma: f32, uf_background: u32, _pad: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> logits: array<f32>;
@group(0) @binding(2) var<storage, read> labels: array<u32>;
@group(0) @binding(3) var<storage, read> class_weights: array<f32>;
@group(0) @binding(4) var<storage, read_write> partials: array<f32>;
@group(0) @binding(5) var<storage, read_write> values: array<f32>;
@group(0) @binding(6) var<storage, read_write> coef: array<f32>;
@group(0) @binding(7) var<storage, read_write> dlogits: array<f32>;

var<workgroup> tree: array<f32, 1024>; // STATS_WG * CHUNK
var<workgroup> totals: array<f32, MAX_S>;

/// x^e with the limits the losses need: x^0 = 1 (also for x = 0), 0^e = 0 for e > 0.
fn safe_pow(x: f32, e: f32) -> f32 {
    if e == 0.0 { return 1.0; }
    if x <= 0.0 { return 0.0; }
    return pow(x, e);
}

/// What one pixel contributes, from its logits.
struct Pixel {
    q: f32,        // probability of the true class
    u: f32,        // 1 - q, summed from the other classes
    nll: f32,      // -log q, from log-sum-exp (finite even when q underflows)
    argmax: u32,
}

/// Stable softmax of pixel `i` into `prob`; `y` is its (valid) label.
fn softmax_pixel(i: u32, y: u32, prob: ptr<function, array<f32, MAX_C>>) -> Pixel {
    let b = i / p.hw;
    let base = b * p.c * p.hw + (i - b * p.hw);
    if FROM_PROBS { return stored_probs(base, y, prob); }
    var m = logits[base];
    var arg = 0u;
    for (var c = 1u; c < p.c; c++) {
        let z = logits[base + c * p.hw];
        if z > m { m = z; arg = c; } // first maximum wins, as argmax does
    }
    var s = 0.0;
    for (var c = 0u; c < p.c; c++) {
        let e = exp(logits[base + c * p.hw] - m);
        (*prob)[c] = e;
        s += e;
    }
    var u = 0.0;
    for (var c = 0u; c < p.c; c++) {
        (*prob)[c] /= s;
        if c != y { u += (*prob)[c]; }
    }
    let nll = log(s) - (logits[base + y * p.hw] - m);
    return Pixel((*prob)[y], u, nll, arg);
}

/// The unfused baseline's view of a pixel: probabilities written by a separate
/// softmax kernel, read back from binding 1. -log q loses the log-sum-exp's
/// accuracy for tiny q: one of the reasons the fused path exists.
fn stored_probs(base: u32, y: u32, prob: ptr<function, array<f32, MAX_C>>) -> Pixel {
    var arg = 0u;
    var u = 0.0;
    for (var c = 0u; c < p.c; c++) {
        let v = logits[base + c * p.hw];
        (*prob)[c] = v;
        if v > (*prob)[arg] { arg = c; }
        if c != y { u += v; }
    }
    return Pixel((*prob)[y], u, -log((*prob)[y]), arg);
}

/// Unified Focal's focal part for class y: (weight d_y, exponent g_y).
fn uf_pixel_params(y: u32) -> vec2<f32> {
    let background = y == p.uf_background;
    let d = select(p.uf_delta, 1.0 - p.uf_delta, background);
    let asym_foreground = (p.flags & UF_ASYMMETRIC) != 0u && !background;
    return vec2(d, select(p.uf_gamma, 0.0, asym_foreground));
}

/// Coefficient of (p_c - t_c) in d/dz of u^g (-log q):  u^g + g u^(g-1) q (-log q).
fn focal_coefficient(px: Pixel, g: f32) -> f32 {
    var second = 0.0;
    if g != 0.0 && px.u > 0.0 { second = g * pow(px.u, g - 1.0) * px.q * px.nll; }
    return safe_pow(px.u, g) + second;
}

@compute @workgroup_size(STATS_WG)
fn loss_stats(@builtin(local_invocation_id) lid: vec3<u32>, @builtin(workgroup_id) wid: vec3<u32>) {
    var acc: array<f32, MAX_S>;
    var prob: array<f32, MAX_C>;
    let c4 = 4u * p.c;
    let pixels = p.n * p.hw;
    let first = (wid.x * STATS_WG + lid.x) * p.pixels_per_thread;
    for (var k = 0u; k < p.pixels_per_thread; k++) {
        let i = first + k;
        if i >= pixels { break; }
        let y = labels[i];
        if y >= p.c || y == p.ignore { continue; } // ignored pixels count nowhere
        let px = softmax_pixel(i, y, &prob);
        let w = class_weights[y];
        acc[y] += px.q;                                   // I_y
        for (var c = 0u; c < p.c; c++) { acc[p.c + c] += prob[c]; } // P_c
        acc[2u * p.c + y] += 1.0;                         // T_y
        acc[3u * p.c + px.argmax] += 1.0;                 // H_argmax
        acc[c4] += w * px.nll;
        acc[c4 + 1u] += w;
        acc[c4 + 2u] += w * p.focal_alpha * safe_pow(px.u, p.focal_gamma) * px.nll;
        let uf = uf_pixel_params(y);
        acc[c4 + 3u] += w * uf.x * safe_pow(px.u, uf.y) * px.nll;
        acc[c4 + 4u] += 1.0;
        acc[c4 + 5u] += select(0.0, 1.0, px.argmax == y);
    }
    // Sum each stat over the workgroup, CHUNK stats per tree. The loop bounds are
    // uniform, so every thread reaches every barrier.
    for (var start = 0u; start < p.stats; start += CHUNK) {
        for (var j = 0u; j < CHUNK; j++) {
            tree[j * STATS_WG + lid.x] = select(0.0, acc[min(start + j, MAX_S - 1u)], start + j < p.stats);
        }
        workgroupBarrier();
        for (var stride = STATS_WG / 2u; stride > 0u; stride /= 2u) {
            if lid.x < stride {
                for (var j = 0u; j < CHUNK; j++) {
                    tree[j * STATS_WG + lid.x] += tree[j * STATS_WG + lid.x + stride];
                }
            }
            workgroupBarrier();
        }
        if lid.x < CHUNK && start + lid.x < p.stats {
            partials[wid.x * p.stats + start + lid.x] = tree[lid.x * STATS_WG];
        }
        workgroupBarrier(); // the next chunk overwrites the tree
    }
}

/// The Tversky-type class term (1 - TI)^e and its derivatives w.r.t. I and P.
fn tversky_term(i: f32, pr: f32, t: f32, a: f32, b: f32, e: f32) -> vec3<f32> {
    let s = p.smoothing;
    let num = i + s;
    let den = (1.0 - a - b) * i + a * pr + b * t + s;
    let ti = num / den;
    let base = max(1.0 - ti, 0.0);
    // forward: L = base^e, base = 1 - TI  =>  dL/dTI = -e base^(e-1); taken as 0 once
    // base < EPS, where for e < 1 it would grow without bound (a class scored perfectly)
    let dl_dti = select(-e * safe_pow(base, e - 1.0), 0.0, base < EPS);
    let dti_di = (den - num * (1.0 - a - b)) / (den * den);
    let dti_dp = -num * a / (den * den);
    return vec3(safe_pow(base, e), dl_dti * dti_di, dl_dti * dti_dp);
}

@compute @workgroup_size(128)
fn loss_finalize(@builtin(local_invocation_id) lid: vec3<u32>) {
    if lid.x < p.stats {
        var sum = 0.0;
        for (var g = 0u; g < p.groups; g++) { sum += partials[g * p.stats + lid.x]; }
        totals[lid.x] = sum;
    }
    workgroupBarrier();
    if lid.x != 0u { return; }

    let nc = p.c;
    let c4 = 4u * nc;
    let s = p.smoothing;
    let w_sum = totals[c4 + 1u];
    let inv_w = select(0.0, 1.0 / w_sum, w_sum > 0.0);
    let ce = totals[c4] * inv_w;
    let focal = totals[c4 + 2u] * inv_w;
    let mf = totals[c4 + 3u] * inv_w;

    var a: array<f32, MAX_C>;
    var b: array<f32, MAX_C>;
    var k: array<f32, MAX_C>;
    var k_sum = 0.0;
    var pooled = vec3(0.0); // I, P, T over all classes
    for (var c = 0u; c < nc; c++) {
        let counted = (p.flags & SKIP_ABSENT) == 0u || totals[2u * nc + c] > 0.0 || totals[3u * nc + c] > 0.0;
        k[c] = select(0.0, class_weights[c], counted);
        k_sum += k[c];
        pooled += vec3(totals[c], totals[nc + c], totals[2u * nc + c]);
    }
    let inv_k = select(0.0, 1.0 / k_sum, k_sum > 0.0);

    // Dice
    var dice = 0.0;
    if (p.flags & DICE_POOLED) != 0u {
        let den = pooled.y + pooled.z + s;
        dice = 1.0 - (2.0 * pooled.x + s) / den;
        for (var c = 0u; c < nc; c++) {
            a[c] += p.w_dice * (-2.0 / den);
            b[c] += p.w_dice * (2.0 * pooled.x + s) / (den * den);
        }
    } else {
        var mean = 0.0;
        for (var c = 0u; c < nc; c++) {
            let den = totals[nc + c] + totals[2u * nc + c] + s;
            let num = 2.0 * totals[c] + s;
            mean += k[c] * inv_k * num / den;
            // forward: D_c = (2 I_c + s) / (P_c + T_c + s), loss = 1 - mean_k D_c
            a[c] += p.w_dice * k[c] * inv_k * (-2.0 / den);
            b[c] += p.w_dice * k[c] * inv_k * num / (den * den);
        }
        dice = select(0.0, 1.0 - mean, k_sum > 0.0);
    }

    // Tversky and Unified Focal's focal-Tversky part
    var tversky = 0.0;
    var mft = 0.0;
    for (var c = 0u; c < nc; c++) {
        let ic = totals[c];
        let pc = totals[nc + c];
        let tc = totals[2u * nc + c];
        let tv = tversky_term(ic, pc, tc, p.tv_alpha, p.tv_beta, p.tv_exponent);
        tversky += k[c] * inv_k * tv.x;
        a[c] += p.w_tversky * k[c] * inv_k * tv.y;
        b[c] += p.w_tversky * k[c] * inv_k * tv.z;
        let asym_bg = (p.flags & UF_ASYMMETRIC) != 0u && c == p.uf_background;
        let e = select(1.0 - p.uf_gamma, 1.0, asym_bg);
        let ft = tversky_term(ic, pc, tc, 1.0 - p.uf_delta, p.uf_delta, e);
        mft += k[c] * inv_k * ft.x;
        let w = p.w_uf * p.uf_lambda * k[c] * inv_k;
        a[c] += w * ft.y;
        b[c] += w * ft.z;
    }
    let uf = p.uf_lambda * mft + (1.0 - p.uf_lambda) * mf;

    let valid = totals[c4 + 4u];
    values[0] = p.w_ce * ce + p.w_dice * dice + p.w_focal * focal + p.w_tversky * tversky + p.w_uf * uf;
    values[1] = ce;
    values[2] = dice;
    values[3] = focal;
    values[4] = tversky;
    values[5] = uf;
    // Keras' jacard_coef: smooth 1, over flattened one-hot targets and softmax outputs
    values[6] = (pooled.x + 1.0) / (pooled.z + pooled.y - pooled.x + 1.0);
    values[7] = select(0.0, totals[c4 + 5u] / valid, valid > 0.0);
    values[8] = valid;
    for (var c = 0u; c < nc; c++) {
        coef[c] = a[c];
        coef[nc + c] = b[c];
    }
    coef[2u * nc] = p.w_ce * inv_w;
    coef[2u * nc + 1u] = p.w_focal * inv_w;
    coef[2u * nc + 2u] = p.w_uf * (1.0 - p.uf_lambda) * inv_w;
}

@compute @workgroup_size(WG)
fn loss_backward(@builtin(global_invocation_id) id: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>) {
    let i = id.x + id.y * groups.x * WG;
    if i >= p.n * p.hw { return; }
    let b = i / p.hw;
    let base = b * p.c * p.hw + (i - b * p.hw);
    let y = labels[i];
    if y >= p.c || y == p.ignore {
        for (var c = 0u; c < p.c; c++) { dlogits[base + c * p.hw] = 0.0; }
        return;
    }
    var prob: array<f32, MAX_C>;
    let px = softmax_pixel(i, y, &prob);
    let nc = p.c;
    // region terms: g_c = A_c t_c + B_c, then through the softmax Jacobian
    var dot = 0.0;
    for (var c = 0u; c < nc; c++) {
        let g = coef[nc + c] + select(0.0, coef[c], c == y);
        dot += prob[c] * g;
    }
    // pixel terms: coefficient of (p_c - t_c)
    let w = class_weights[y];
    let uf = uf_pixel_params(y);
    let k = w * (coef[2u * nc]
        + coef[2u * nc + 1u] * p.focal_alpha * focal_coefficient(px, p.focal_gamma)
        + coef[2u * nc + 2u] * uf.x * focal_coefficient(px, uf.y));
    for (var c = 0u; c < nc; c++) {
        let t = select(0.0, 1.0, c == y);
        let g = coef[nc + c] + select(0.0, coef[c], c == y);
        if FROM_PROBS {
            // unfused: dL/dp, for a separate softmax backward (CE and region terms only)
            dlogits[base + c * p.hw] = g - w * coef[2u * nc] * t / px.q;
        } else {
            dlogits[base + c * p.hw] = prob[c] * (g - dot) + k * (prob[c] - t);
        }
    }
}
