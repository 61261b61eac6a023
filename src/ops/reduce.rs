//! Sums: over all elements (`sum`, `mean`: x any shape -> y `[1]`) and per
//! channel (`sum_per_channel`: x `[N,C,H,W]` -> y `[C]`).
//!
//! - `sum`:  `y = sum_i x[i]`,            backward `dx[i] += dy[0]`
//! - `mean`: `y = (1/len) sum_i x[i]`,    backward `dx[i] += dy[0] / len`
//! - `sum_per_channel`: `y[c] = sum_{n,h,w} x[n,c,h,w]`, backward `dx[n,c,h,w] += dy[c]`
//!
//! All three are one kernel on x viewed as `[N, C, L]` (a full sum is `N = C = 1`).
//! The reduction is a tree: each pass turns every 8192 consecutive elements of a
//! channel into one partial sum (a workgroup tree in workgroup memory, see
//! `shaders/reduce.wgsl`), writing the partials to a pooled scratch tensor, and
//! passes repeat until one value per channel is left. No atomics, a fixed order:
//! results are identical bit for bit from run to run, and the error grows with
//! `log(len)`, not `len`. [`sum_per_channel_accumulate`] adds into its output
//! instead of overwriting it, for bias gradients.

use crate::autograd::tape::Step;
use crate::autograd::tensor::Tensor;
use crate::runtime::{groups_1d, Encoder, Gpu, Shader};
use crate::shader;

const SHADER: Shader = shader!("reduce");
const WG: u32 = 256;
/// Elements each thread adds before the workgroup tree.
const ITEMS: u32 = 32;
/// Elements of one channel that one workgroup turns into one partial sum.
const CHUNK: usize = (WG * ITEMS) as usize;

/// Mirrors `Params` in `shaders/reduce.wgsl`.
#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    outer: u32,
    channels: u32,
    inner: u32,
    groups: u32,
    scale: f32,
    accumulate: u32,
}

/// `y[c] (+)= scale * sum_{n,l} x[n,c,l]` for x viewed as `[outer, channels, inner]`.
/// Writes when `accumulate` is false, adds when true. y: `[channels]` elements.
fn reduce(
    gpu: &Gpu,
    enc: &mut Encoder,
    x: &Tensor,
    [outer, channels, inner]: [usize; 3],
    scale: f32,
    accumulate: bool,
    y: &Tensor,
) {
    assert!(channels <= 65535, "reduce: {channels} channels exceed one dispatch dimension");
    let kernel = gpu.kernel(&SHADER, "reduce_forward", &[("WG", WG as f64), ("ITEMS", ITEMS as f64)]);
    let (mut src, mut outer, mut inner) = (x.clone(), outer, inner);
    loop {
        let groups = (outer * inner).div_ceil(CHUNK).max(1);
        let last = groups == 1;
        // Partials live in a pooled scratch tensor; it returns to the pool only
        // after the step is submitted, so later passes can still read it.
        let dst = if last { y.clone() } else { gpu.empty(&[channels, groups]) };
        let params = Params {
            outer: outer as u32,
            channels: channels as u32,
            inner: inner as u32,
            groups: groups as u32,
            scale: if last { scale } else { 1.0 },
            accumulate: (last && accumulate) as u32,
        };
        gpu.dispatch(enc, &kernel, &params, &[(1, &src), (2, &dst)], [groups as u32, channels as u32, 1]);
        if last {
            return;
        }
        (src, outer, inner) = (dst, 1, groups);
    }
}

/// `dx[n,c,l] += scale * dy[c]` for dx viewed as `[outer, channels, inner]`.
fn broadcast(gpu: &Gpu, enc: &mut Encoder, dy: &Tensor, [outer, channels, inner]: [usize; 3], scale: f32, dx: &Tensor) {
    let kernel = gpu.kernel(&SHADER, "reduce_backward", &[("WG", WG as f64), ("ITEMS", ITEMS as f64)]);
    let params =
        Params { outer: outer as u32, channels: channels as u32, inner: inner as u32, groups: 0, scale, accumulate: 1 };
    gpu.dispatch(enc, &kernel, &params, &[(2, dx), (3, dy)], groups_1d(dx.len(), WG));
}

fn assert_scalar(what: &str, x: &Tensor, y: &Tensor) {
    assert_eq!(y.len(), 1, "{what}: x {:?} -> y {:?}, y must hold one element", x.shape(), y.shape());
}

fn channel_dims(what: &str, x: &Tensor, y: &Tensor) -> [usize; 3] {
    let [n, c, h, w] = x.dims4(what);
    assert_eq!(y.shape(), [c], "{what}: x {:?} -> y {:?}, y must be [C]", x.shape(), y.shape());
    [n, c, h * w]
}

/// `y[0] = sum_i x[i]`. x: any shape; y: `[1]`.
pub fn sum_forward(gpu: &Gpu, enc: &mut Encoder, x: &Tensor, y: &Tensor) {
    assert_scalar("sum", x, y);
    reduce(gpu, enc, x, [1, 1, x.len()], 1.0, false, y);
}

/// `y[0] = sum_i x[i] / len`. x: any shape, not empty; y: `[1]`.
pub fn mean_forward(gpu: &Gpu, enc: &mut Encoder, x: &Tensor, y: &Tensor) {
    assert_scalar("mean", x, y);
    assert!(!x.is_empty(), "mean of an empty tensor {:?}", x.shape());
    reduce(gpu, enc, x, [1, 1, x.len()], 1.0 / x.len() as f32, false, y);
}

/// `y[c] = sum_{n,h,w} x[n,c,h,w]`. x: `[N,C,H,W]`; y: `[C]` (overwritten).
pub fn sum_per_channel_forward(gpu: &Gpu, enc: &mut Encoder, x: &Tensor, y: &Tensor) {
    let dims = channel_dims("sum_per_channel", x, y);
    reduce(gpu, enc, x, dims, 1.0, false, y);
}

/// `y[c] += sum_{n,h,w} x[n,c,h,w]`. x: `[N,C,H,W]`; y: `[C]` (added into):
/// the gradient of a per-channel bias, `db[c] += sum dy[n,c,h,w]`.
pub fn sum_per_channel_accumulate(gpu: &Gpu, enc: &mut Encoder, x: &Tensor, y: &Tensor) {
    let dims = channel_dims("sum_per_channel_accumulate", x, y);
    reduce(gpu, enc, x, dims, 1.0, true, y);
}

/// `dx[i] += dy[0]`. dy: `[1]`; dx: any shape.
pub fn sum_backward(gpu: &Gpu, enc: &mut Encoder, dy: &Tensor, dx: &Tensor) {
    assert_scalar("sum backward", dx, dy);
    broadcast(gpu, enc, dy, [1, 1, dx.len()], 1.0, dx);
}

/// `dx[i] += dy[0] / len`. dy: `[1]`; dx: any shape, not empty.
pub fn mean_backward(gpu: &Gpu, enc: &mut Encoder, dy: &Tensor, dx: &Tensor) {
    assert_scalar("mean backward", dx, dy);
    broadcast(gpu, enc, dy, [1, 1, dx.len()], 1.0 / dx.len().max(1) as f32, dx);
}

/// `dx[n,c,h,w] += dy[c]`. dy: `[C]`; dx: `[N,C,H,W]`.
pub fn sum_per_channel_backward(gpu: &Gpu, enc: &mut Encoder, dy: &Tensor, dx: &Tensor) {
    let dims = channel_dims("sum_per_channel backward", dx, dy);
    broadcast(gpu, enc, dy, dims, 1.0, dx);
}

/// Sum of all elements on the tape. x: any shape -> `[1]`.
pub fn sum(step: &mut Step, x: &Tensor) -> Tensor {
    let y = step.output(&[1], &[x]);
    sum_forward(step.gpu, &mut step.enc, x, &y);
    let x = x.clone();
    step.record("sum", &y, move |ctx, dy| {
        if let Some(dx) = ctx.grad(&x) {
            sum_backward(ctx.gpu, ctx.enc, dy, &dx);
        }
    });
    y
}

/// Mean of all elements on the tape. x: any shape, not empty -> `[1]`.
pub fn mean(step: &mut Step, x: &Tensor) -> Tensor {
    let y = step.output(&[1], &[x]);
    mean_forward(step.gpu, &mut step.enc, x, &y);
    let x = x.clone();
    step.record("mean", &y, move |ctx, dy| {
        if let Some(dx) = ctx.grad(&x) {
            mean_backward(ctx.gpu, ctx.enc, dy, &dx);
        }
    });
    y
}

/// Per-channel sum on the tape. x: `[N,C,H,W]` -> `[C]`.
pub fn sum_per_channel(step: &mut Step, x: &Tensor) -> Tensor {
    let [_, c, _, _] = x.dims4("sum_per_channel");
    let y = step.output(&[c], &[x]);
    sum_per_channel_forward(step.gpu, &mut step.enc, x, &y);
    let x = x.clone();
    step.record("sum_per_channel", &y, move |ctx, dy| {
        if let Some(dx) = ctx.grad(&x) {
            sum_per_channel_backward(ctx.gpu, ctx.enc, dy, &dx);
        }
    });
    y
}

/// Plain-Rust sums, the contract the shader is tested against.
pub mod reference {
    /// `sum_i x[i]`.
    pub fn sum_forward(x: &[f64]) -> f64 {
        x.iter().sum()
    }

    /// `sum_i x[i] / len`.
    pub fn mean_forward(x: &[f64]) -> f64 {
        sum_forward(x) / x.len() as f64
    }

    /// `y[c] = sum_{n,h,w} x[n,c,h,w]`.
    pub fn sum_per_channel_forward(x: &[f64], [n, c, h, w]: [usize; 4]) -> Vec<f64> {
        let mut y = vec![0.0; c];
        for b in 0..n {
            for (ch, yc) in y.iter_mut().enumerate() {
                let plane = (b * c + ch) * h * w;
                *yc += x[plane..plane + h * w].iter().sum::<f64>();
            }
        }
        y
    }

    /// `dx[i] = dy` (not accumulated), for `len` elements.
    pub fn sum_backward(dy: f64, len: usize) -> Vec<f64> {
        vec![dy; len]
    }

    /// `dx[i] = dy / len` (not accumulated).
    pub fn mean_backward(dy: f64, len: usize) -> Vec<f64> {
        vec![dy / len as f64; len]
    }

    /// `dx[n,c,h,w] = dy[c]` (not accumulated).
    pub fn sum_per_channel_backward(dy: &[f64], [n, c, h, w]: [usize; 4]) -> Vec<f64> {
        (0..n * c * h * w).map(|i| dy[(i / (h * w)) % c]).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;
    use crate::testing::{assert_close, assert_close_f32, dot, gpu, numeric_grad, random_vec, to_f64};

    #[test]
    fn reference_backward_matches_finite_differences() {
        let dims = [2, 3, 5, 7];
        let x = to_f64(&random_vec(1, dims.iter().product()));
        let r = to_f64(&random_vec(2, 3));
        let g = numeric_grad(|x| r[0] * reference::sum_forward(x), &x, 1e-6);
        assert_close("sum dx", &reference::sum_backward(r[0], x.len()), &g, 1e-6);
        let g = numeric_grad(|x| r[0] * reference::mean_forward(x), &x, 1e-6);
        assert_close("mean dx", &reference::mean_backward(r[0], x.len()), &g, 1e-6);
        let g = numeric_grad(|x| dot(&r, &reference::sum_per_channel_forward(x, dims)), &x, 1e-6);
        assert_close("sum_per_channel dx", &reference::sum_per_channel_backward(&r, dims), &g, 1e-6);
    }

    /// Values in `[-1, 1)` shifted by `offset` (a positive offset keeps the sums away from zero).
    fn data(seed: u64, n: usize, offset: f32) -> Vec<f32> {
        random_vec(seed, n).iter().map(|v| v + offset).collect()
    }

    fn plus(start: &[f32], grad: &[f64]) -> Vec<f64> {
        start.iter().zip(grad).map(|(&s, g)| s as f64 + g).collect()
    }

    #[test]
    fn sum_and_mean_match_reference_on_odd_shapes() {
        let gpu = gpu();
        // 8193 and 70001 overhang an 8192-element chunk and need two passes.
        for (seed, len) in [(3, 1), (4, 2 * 3 * 5 * 7), (5, 8193), (6, 70001)] {
            let x = data(seed, len, 0.25);
            let dy = random_vec(seed + 100, 2);
            let (dx0, dx1) = (random_vec(seed + 200, len), random_vec(seed + 300, len));
            let xt = gpu.upload(&x, &[len]);
            let (sum_dy, mean_dy) = (gpu.upload(&dy[..1], &[1]), gpu.upload(&dy[1..], &[1]));
            let (sum_dx, mean_dx) = (gpu.upload(&dx0, &[len]), gpu.upload(&dx1, &[len]));
            let (sum_y, mean_y) = (gpu.empty(&[1]), gpu.empty(&[1]));
            let mut enc = gpu.encoder();
            sum_forward(gpu, &mut enc, &xt, &sum_y);
            mean_forward(gpu, &mut enc, &xt, &mean_y);
            sum_backward(gpu, &mut enc, &sum_dy, &sum_dx);
            mean_backward(gpu, &mut enc, &mean_dy, &mean_dx);
            gpu.submit(enc);

            let x = to_f64(&x);
            assert_close_f32(&format!("sum y [{len}]"), &gpu.read(&sum_y), &[reference::sum_forward(&x)], 1e-4);
            assert_close_f32(&format!("mean y [{len}]"), &gpu.read(&mean_y), &[reference::mean_forward(&x)], 1e-4);
            let want = plus(&dx0, &reference::sum_backward(dy[0] as f64, len));
            assert_close_f32(&format!("sum dx [{len}]"), &gpu.read(&sum_dx), &want, 1e-3);
            let want = plus(&dx1, &reference::mean_backward(dy[1] as f64, len));
            assert_close_f32(&format!("mean dx [{len}]"), &gpu.read(&mean_dx), &want, 1e-3);
        }
    }

    #[test]
    fn sum_per_channel_matches_reference_on_odd_shapes() {
        let gpu = gpu();
        // [2,3,70,60]: 8400 elements a channel, two partials, a second pass.
        for (seed, dims) in [(7, [1, 1, 1, 1]), (8, [2, 3, 5, 7]), (9, [1, 5, 3, 1]), (10, [2, 3, 70, 60])] {
            let len: usize = dims.iter().product();
            let x = data(seed, len, 0.0);
            let dy = random_vec(seed + 100, dims[1]);
            let (acc0, dx0) = (random_vec(seed + 200, dims[1]), random_vec(seed + 300, len));
            let xt = gpu.upload(&x, &dims);
            let (dyt, dxt, acc) = (gpu.upload(&dy, &[dims[1]]), gpu.upload(&dx0, &dims), gpu.upload(&acc0, &[dims[1]]));
            let y = gpu.empty(&[dims[1]]);
            let mut enc = gpu.encoder();
            sum_per_channel_forward(gpu, &mut enc, &xt, &y);
            sum_per_channel_accumulate(gpu, &mut enc, &xt, &acc);
            sum_per_channel_backward(gpu, &mut enc, &dyt, &dxt);
            gpu.submit(enc);

            let want_y = reference::sum_per_channel_forward(&to_f64(&x), dims);
            assert_close_f32(&format!("sum_per_channel y {dims:?}"), &gpu.read(&y), &want_y, 1e-4);
            assert_close_f32(&format!("sum_per_channel += {dims:?}"), &gpu.read(&acc), &plus(&acc0, &want_y), 1e-4);
            let want_dx = plus(&dx0, &reference::sum_per_channel_backward(&to_f64(&dy), dims));
            assert_close_f32(&format!("sum_per_channel dx {dims:?}"), &gpu.read(&dxt), &want_dx, 1e-3);
        }
    }

    #[test]
    fn large_sums_are_accurate_and_identical_run_to_run() {
        // 4.2 million elements: two passes. Positive values, so that a
        // running f32 sum would be visibly off (its error grows with the length).
        let gpu = gpu();
        let len = 4 * 16 * 256 * 256 + 12345;
        let mut rng = Rng::new(11);
        let x: Vec<f32> = (0..len).map(|_| rng.uniform() as f32).collect();
        let xt = gpu.upload(&x, &[len]);
        let run = || {
            let y = gpu.empty(&[1]);
            let mut enc = gpu.encoder();
            sum_forward(gpu, &mut enc, &xt, &y);
            gpu.submit(enc);
            gpu.read(&y)[0]
        };
        let (first, second) = (run(), run());
        assert_eq!(first.to_bits(), second.to_bits(), "sum differs between runs: {first} vs {second}");
        assert_close_f32("large sum", &[first], &[reference::sum_forward(&to_f64(&x))], 1e-4);

        // Per channel over 4 x 16 channels of 256 x 256: two passes (32 partials a channel).
        let dims = [4, 16, 256, 256];
        let x4 = &x[..dims.iter().product::<usize>()];
        let x4t = gpu.upload(x4, &dims);
        let run = || {
            let y = gpu.empty(&[16]);
            let mut enc = gpu.encoder();
            sum_per_channel_forward(gpu, &mut enc, &x4t, &y);
            gpu.submit(enc);
            gpu.read(&y)
        };
        let (first, second) = (run(), run());
        assert!(first.iter().zip(&second).all(|(a, b)| a.to_bits() == b.to_bits()), "per-channel sums differ");
        assert_close_f32("large per-channel sum", &first, &reference::sum_per_channel_forward(&to_f64(x4), dims), 1e-4);
    }

    #[test]
    fn tape_gradients_match_wrappers() {
        let gpu = gpu();
        let dims = [2, 3, 5, 7];
        let x = random_vec(12, dims.iter().product());
        let xt = gpu.upload(&x, &dims).with_grad();
        let mut step = Step::train(gpu);
        let s = sum(&mut step, &xt);
        let m = mean(&mut step, &xt);
        let pc = sum_per_channel(&mut step, &xt);
        let (ds, dm, dpc) = (gpu.upload(&[0.5], &[1]), gpu.upload(&[-2.0], &[1]), gpu.upload(&[1.0, 2.0, 3.0], &[3]));
        let grads = step.backward(vec![(s.clone(), ds), (m.clone(), dm), (pc.clone(), dpc)]);
        let dx = grads.get(&xt).expect("x has a gradient").clone();
        step.submit();

        let xf = to_f64(&x);
        assert_close_f32("tape sum", &gpu.read(&s), &[reference::sum_forward(&xf)], 1e-4);
        assert_close_f32("tape mean", &gpu.read(&m), &[reference::mean_forward(&xf)], 1e-4);
        assert_close_f32("tape sum_per_channel", &gpu.read(&pc), &reference::sum_per_channel_forward(&xf, dims), 1e-4);
        let want: Vec<f64> = reference::sum_backward(0.5, x.len())
            .iter()
            .zip(reference::mean_backward(-2.0, x.len()))
            .zip(reference::sum_per_channel_backward(&[1.0, 2.0, 3.0], dims))
            .map(|((a, b), c)| a + b + c)
            .collect();
        assert_close_f32("tape dx", &gpu.read(&dx), &want, 1e-3);
    }
}
