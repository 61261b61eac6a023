//! Inverted dropout with probability `p`, elementwise: `y = x * mask / (1 - p)`,
//! where `mask[i]` in {0, 1} keeps element `i` with probability `1 - p`.
//! x, y: any shape (the same).
//!
//! The mask is a pure function of `(seed, i)`: a counter-based hash written in
//! plain u32 arithmetic (see `shaders/common/dropout_hash.wgsl` and [`reference::mask_bits`]),
//! so the same seed gives the same mask on every adapter, and the backward
//! recomputes it instead of saving it: `dx += dy * mask / (1 - p)`.
//! Callers pass a fresh seed per step (and per dropout layer).

use crate::autograd::tape::{Mode, Step};
use crate::autograd::tensor::Tensor;
use crate::runtime::{groups_1d, Encoder, Gpu, Shader};
use crate::shader;

const SHADER: Shader = shader!("dropout");
const WG: u32 = 256;

/// Mirrors `Params` in `shaders/dropout.wgsl`.
#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    n: u32,
    threshold: u32,
    seed_lo: u32,
    seed_hi: u32,
    scale: f32,
}

/// An element is kept when its 32 hash bits are at least `round(p * 2^32)`,
/// which happens with probability `1 - p` (to within 2^-33).
pub fn keep_threshold(p: f32) -> u32 {
    assert!((0.0..1.0).contains(&p), "dropout probability {p} is outside [0, 1)");
    (p as f64 * 4294967296.0).round().min(u32::MAX as f64) as u32
}

fn params(n: usize, p: f32, seed: u64) -> Params {
    Params {
        n: n as u32,
        threshold: keep_threshold(p),
        seed_lo: seed as u32,
        seed_hi: (seed >> 32) as u32,
        scale: 1.0 / (1.0 - p),
    }
}

/// `y = x * mask(seed) / (1 - p)`. x, y: same shape; `p` in [0, 1).
pub fn dropout_forward(gpu: &Gpu, enc: &mut Encoder, x: &Tensor, y: &Tensor, p: f32, seed: u64) {
    assert_eq!(x.shape(), y.shape(), "dropout: x {:?} vs y {:?}", x.shape(), y.shape());
    let kernel = gpu.kernel(&SHADER, "dropout_forward", &[("WG", WG as f64)]);
    gpu.dispatch(enc, &kernel, &params(x.len(), p, seed), &[(1, x), (2, y)], groups_1d(x.len(), WG));
}

/// `dx += dy * mask(seed) / (1 - p)`, with the `p` and `seed` of the forward.
/// dy, dx: same shape.
pub fn dropout_backward(gpu: &Gpu, enc: &mut Encoder, dy: &Tensor, dx: &Tensor, p: f32, seed: u64) {
    assert_eq!(dy.shape(), dx.shape(), "dropout backward: dy {:?} vs dx {:?}", dy.shape(), dx.shape());
    let kernel = gpu.kernel(&SHADER, "dropout_backward", &[("WG", WG as f64)]);
    gpu.dispatch(enc, &kernel, &params(dy.len(), p, seed), &[(1, dy), (2, dx)], groups_1d(dy.len(), WG));
}

/// Dropout on the tape. x: any shape; returns y of the same shape. In
/// [`Mode::Eval`], or when `p == 0`, it is the identity and returns `x` itself
/// (no kernel, no node).
pub fn dropout(step: &mut Step, x: &Tensor, p: f32, seed: u64) -> Tensor {
    if step.mode == Mode::Eval || p == 0.0 {
        return x.clone();
    }
    let y = step.output(x.shape(), &[x]);
    dropout_forward(step.gpu, &mut step.enc, x, &y, p, seed);
    let x = x.clone();
    step.record("dropout", &y, move |ctx, dy| {
        if let Some(dx) = ctx.grad(&x) {
            dropout_backward(ctx.gpu, ctx.enc, dy, &dx, p, seed);
        }
    });
    y
}

/// Plain-Rust dropout: the same hash as the shader, bit for bit.
pub mod reference {
    /// lowbias32 (Chris Wellons' hash-prospector): a bijection on u32.
    pub fn mix(x: u32) -> u32 {
        let mut z = x;
        z ^= z >> 16;
        z = z.wrapping_mul(0x21f0_aaad);
        z ^= z >> 15;
        z = z.wrapping_mul(0x735a_2d97);
        z ^= z >> 15;
        z
    }

    /// The 32 random bits of element `i` under `seed`.
    pub fn mask_bits(seed: u64, i: u32) -> u32 {
        let (lo, hi) = (seed as u32, (seed >> 32) as u32);
        let key0 = mix(lo ^ mix(hi ^ 0x85eb_ca6b));
        let key1 = mix(hi ^ mix(lo ^ 0xc2b2_ae35));
        mix(mix(i ^ key0).wrapping_add(key1))
    }

    /// Whether element `i` is kept (probability `1 - p`).
    pub fn keep(seed: u64, p: f32, i: usize) -> bool {
        mask_bits(seed, i as u32) >= super::keep_threshold(p)
    }

    /// `y = x * mask / (1 - p)`.
    pub fn dropout_forward(x: &[f64], p: f32, seed: u64) -> Vec<f64> {
        let scale = 1.0 / (1.0 - p as f64);
        x.iter().enumerate().map(|(i, &v)| if keep(seed, p, i) { v * scale } else { 0.0 }).collect()
    }

    /// `dx = dy * mask / (1 - p)` (not accumulated).
    pub fn dropout_backward(dy: &[f64], p: f32, seed: u64) -> Vec<f64> {
        dropout_forward(dy, p, seed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{assert_close, assert_close_f32, dot, gpu, numeric_grad, random_vec, to_f64};

    #[test]
    fn reference_backward_matches_finite_differences() {
        let x = to_f64(&random_vec(1, 2 * 3 * 5 * 7));
        let r = to_f64(&random_vec(2, x.len()));
        let (p, seed) = (0.3, 42);
        let loss = |x: &[f64]| dot(&r, &reference::dropout_forward(x, p, seed));
        let want = numeric_grad(loss, &x, 1e-6);
        assert_close("dropout dx", &reference::dropout_backward(&r, p, seed), &want, 1e-6);
    }

    #[test]
    fn hash_is_pinned() {
        // The mask must not change silently: these bits are the contract with
        // saved runs and with every adapter.
        assert_eq!(reference::mix(0), 0);
        assert_eq!(reference::mix(1), 0x86d2_fa73, "mix(1) = {:#x}", reference::mix(1));
        let got: Vec<u32> = (0..4).map(|i| reference::mask_bits(0x0123_4567_89ab_cdef, i)).collect();
        assert_eq!(got, PINNED, "mask_bits: {got:#x?}");
    }
    // Computed independently (Python) from the constants in the shader header.
    const PINNED: [u32; 4] = [0x5d92_b6ca, 0xdb41_ed88, 0x733e_652d, 0xa6e0_a18e];

    #[test]
    fn gpu_matches_reference_on_odd_shapes() {
        let gpu = gpu();
        for (seed, p, shape) in [
            (3u64, 0.5f32, vec![1, 1, 1, 1]),
            (4, 0.3, vec![2, 3, 5, 7]),
            (0xdead_beef_0000_0005, 0.1, vec![1, 5, 5, 7]),
            (6, 0.9, vec![3, 70001]),
        ] {
            let x = random_vec(seed, shape.iter().product());
            let dy = random_vec(seed + 100, x.len());
            let dx0 = random_vec(seed + 200, x.len()); // backward accumulates into this
            let (xt, dyt, dxt) = (gpu.upload(&x, &shape), gpu.upload(&dy, &shape), gpu.upload(&dx0, &shape));
            let y = gpu.empty(&shape);
            let mut enc = gpu.encoder();
            dropout_forward(gpu, &mut enc, &xt, &y, p, seed);
            dropout_backward(gpu, &mut enc, &dyt, &dxt, p, seed);
            gpu.submit(enc);

            let want_y = reference::dropout_forward(&to_f64(&x), p, seed);
            let want_dx: Vec<f64> = reference::dropout_backward(&to_f64(&dy), p, seed)
                .iter()
                .zip(&dx0)
                .map(|(g, &d)| g + d as f64)
                .collect();
            assert_close_f32(&format!("dropout y {shape:?}"), &gpu.read(&y), &want_y, 1e-6);
            assert_close_f32(&format!("dropout dx {shape:?}"), &gpu.read(&dxt), &want_dx, 1e-6);
        }
    }

    /// The GPU mask of `n` elements (x = 1 everywhere, so y != 0 exactly where kept).
    fn gpu_mask(n: usize, p: f32, seed: u64) -> Vec<bool> {
        let gpu = gpu();
        let (xt, y) = (gpu.upload(&vec![1.0; n], &[n]), gpu.empty(&[n]));
        let mut enc = gpu.encoder();
        dropout_forward(gpu, &mut enc, &xt, &y, p, seed);
        gpu.submit(enc);
        let scale = 1.0 / (1.0 - p);
        gpu.read(&y)
            .iter()
            .map(|&v| {
                assert!(v == 0.0 || v == scale, "dropout of 1 gave {v}, want 0 or {scale}");
                v != 0.0
            })
            .collect()
    }

    #[test]
    fn gpu_mask_equals_reference_bit_for_bit_and_keeps_one_minus_p() {
        let n = 1 << 20;
        for (p, seed) in [(0.5f32, 7u64), (0.2, 1 << 40), (0.9, u64::MAX)] {
            let mask = gpu_mask(n, p, seed);
            for (i, &m) in mask.iter().enumerate() {
                assert_eq!(m, reference::keep(seed, p, i), "element {i}, p {p}, seed {seed:#x}");
            }
            // Binomial: the kept fraction has standard deviation sqrt(p(1-p)/n) < 5e-4.
            let kept = mask.iter().filter(|&&m| m).count() as f64 / n as f64;
            assert!((kept - (1.0 - p as f64)).abs() < 3e-3, "kept {kept}, want {}", 1.0 - p);
            // Neighbours and neighbouring seeds must look independent: both kept
            // with probability (1-p)^2.
            let other = gpu_mask(n, p, seed.wrapping_add(1));
            let both_seeds = mask.iter().zip(&other).filter(|(a, b)| **a && **b).count() as f64 / n as f64;
            let both_next = mask.windows(2).filter(|w| w[0] && w[1]).count() as f64 / (n - 1) as f64;
            let want = (1.0 - p as f64).powi(2);
            assert!((both_seeds - want).abs() < 3e-3, "seeds {seed} and +1 both keep {both_seeds}, want {want}");
            assert!((both_next - want).abs() < 3e-3, "neighbours both kept {both_next}, want {want}");
        }
    }

    #[test]
    fn tape_matches_wrappers_and_eval_is_identity() {
        let gpu = gpu();
        let shape = [2, 3, 2, 3];
        let x = random_vec(9, 36);
        let dy = random_vec(10, 36);
        let (p, seed) = (0.4, 99);
        let mut step = Step::train(gpu);
        let xt = gpu.upload(&x, &shape).with_grad();
        let y = dropout(&mut step, &xt, p, seed);
        let mut grads = step.backward(vec![(y.clone(), gpu.upload(&dy, &shape))]);
        let dx = grads.take(&xt).expect("x has a gradient");
        step.submit();
        assert_close_f32("tape y", &gpu.read(&y), &reference::dropout_forward(&to_f64(&x), p, seed), 1e-6);
        assert_close_f32("tape dx", &gpu.read(&dx), &reference::dropout_backward(&to_f64(&dy), p, seed), 1e-6);

        let mut step = Step::eval(gpu);
        assert_eq!(dropout(&mut step, &xt, p, seed).id(), xt.id(), "eval dropout returns x itself");
        let mut step = Step::train(gpu);
        assert_eq!(dropout(&mut step, &xt, 0.0, seed).id(), xt.id(), "p = 0 returns x itself");
        assert_eq!(step.tape_len(), 0);
    }
}
