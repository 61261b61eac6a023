//! Softmax over the channel axis (dim 1) of `x: [N,C,H,W]`, independently at
//! every pixel: `y[n,c,h,w] = exp(x[n,c,h,w] - m) / sum_c' exp(x[n,c',h,w] - m)`
//! with `m = max_c x[n,c,h,w]` (the shift cancels, and keeps every `exp` at
//! most 1, so no logit is too large). y: `[N,C,H,W]`.
//!
//! Backward (the Jacobian-vector product, reading the saved output):
//! `dx[c] += y[c] * (dy[c] - sum_c' dy[c'] * y[c'])`.

use crate::autograd::tape::Step;
use crate::autograd::tensor::Tensor;
use crate::runtime::{groups_1d, Encoder, Gpu, Shader};
use crate::shader;

const SHADER: Shader = shader!("softmax");
const WG: u32 = 256;

/// Mirrors `Params` in `shaders/softmax.wgsl`.
#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    n: u32,
    c: u32,
    hw: u32,
}

fn params(what: &str, x: &Tensor) -> (Params, usize) {
    let [n, c, h, w] = x.dims4(what);
    (Params { n: n as u32, c: c as u32, hw: (h * w) as u32 }, n * h * w)
}

/// Softmax over channels. x, y: `[N,C,H,W]`.
pub fn softmax_forward(gpu: &Gpu, enc: &mut Encoder, x: &Tensor, y: &Tensor) {
    assert_eq!(x.shape(), y.shape(), "softmax: x {:?} vs y {:?}", x.shape(), y.shape());
    let (params, pixels) = params("softmax x", x);
    let kernel = gpu.kernel(&SHADER, "softmax_forward", &[("WG", WG as f64)]);
    gpu.dispatch(enc, &kernel, &params, &[(1, x), (2, y)], groups_1d(pixels, WG));
}

/// `dx += y * (dy - sum_c dy * y)`. y (the forward output), dy, dx: `[N,C,H,W]`.
pub fn softmax_backward(gpu: &Gpu, enc: &mut Encoder, y: &Tensor, dy: &Tensor, dx: &Tensor) {
    assert!(
        y.shape() == dy.shape() && dy.shape() == dx.shape(),
        "softmax backward: y {:?} dy {:?} dx {:?}",
        y.shape(),
        dy.shape(),
        dx.shape()
    );
    let (params, pixels) = params("softmax y", y);
    let kernel = gpu.kernel(&SHADER, "softmax_backward", &[("WG", WG as f64)]);
    gpu.dispatch(enc, &kernel, &params, &[(1, y), (2, dx), (3, dy)], groups_1d(pixels, WG));
}

/// Softmax over channels on the tape. x: `[N,C,H,W]`; returns y: `[N,C,H,W]`.
pub fn softmax(step: &mut Step, x: &Tensor) -> Tensor {
    let y = step.output(x.shape(), &[x]);
    softmax_forward(step.gpu, &mut step.enc, x, &y);
    let (x, saved_y) = (x.clone(), y.clone());
    step.record("softmax", &y, move |ctx, dy| {
        if let Some(dx) = ctx.grad(&x) {
            softmax_backward(ctx.gpu, ctx.enc, &saved_y, dy, &dx);
        }
    });
    y
}

/// Plain-Rust softmax over channels, the contract the shader is tested against.
/// Slices are NCHW with dims `[n, c, h, w]`.
pub mod reference {
    /// `y = exp(x - max_c x) / sum_c exp(x - max_c x)` at every (n, h, w).
    pub fn softmax_forward(x: &[f64], [n, c, h, w]: [usize; 4]) -> Vec<f64> {
        let hw = h * w;
        let mut y = vec![0.0; x.len()];
        for b in 0..n {
            for p in 0..hw {
                let at = |ch: usize| (b * c + ch) * hw + p;
                let m = (0..c).map(|ch| x[at(ch)]).fold(f64::NEG_INFINITY, f64::max);
                let sum: f64 = (0..c).map(|ch| (x[at(ch)] - m).exp()).sum();
                for ch in 0..c {
                    y[at(ch)] = (x[at(ch)] - m).exp() / sum;
                }
            }
        }
        y
    }

    /// `dx = y * (dy - sum_c dy * y)` (not accumulated), from the forward output `y`.
    pub fn softmax_backward(y: &[f64], dy: &[f64], [n, c, h, w]: [usize; 4]) -> Vec<f64> {
        let hw = h * w;
        let mut dx = vec![0.0; y.len()];
        for b in 0..n {
            for p in 0..hw {
                let at = |ch: usize| (b * c + ch) * hw + p;
                let s: f64 = (0..c).map(|ch| dy[at(ch)] * y[at(ch)]).sum();
                for ch in 0..c {
                    dx[at(ch)] = y[at(ch)] * (dy[at(ch)] - s);
                }
            }
        }
        dx
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{assert_close, assert_close_f32, dot, gpu, numeric_grad, random_vec, to_f64};

    /// Random logits with spread `scale`.
    fn logits(seed: u64, n: usize, scale: f32) -> Vec<f32> {
        random_vec(seed, n).iter().map(|v| v * scale).collect()
    }

    #[test]
    fn reference_backward_matches_finite_differences() {
        let dims = [2, 5, 3, 7];
        let x = to_f64(&logits(1, dims.iter().product(), 3.0));
        let r = to_f64(&random_vec(2, x.len()));
        let loss = |x: &[f64]| dot(&r, &reference::softmax_forward(x, dims));
        let y = reference::softmax_forward(&x, dims);
        assert_close("softmax dx", &reference::softmax_backward(&y, &r, dims), &numeric_grad(loss, &x, 1e-6), 1e-6);
    }

    /// Run forward and backward on the GPU (dx starting at `dx0`) and return (y, dx).
    fn run_gpu(x: &[f32], dy: &[f32], dx0: &[f32], dims: [usize; 4]) -> (Vec<f32>, Vec<f32>) {
        let gpu = gpu();
        let (xt, dyt, dxt) = (gpu.upload(x, &dims), gpu.upload(dy, &dims), gpu.upload(dx0, &dims));
        let y = gpu.empty(&dims);
        let mut enc = gpu.encoder();
        softmax_forward(gpu, &mut enc, &xt, &y);
        softmax_backward(gpu, &mut enc, &y, &dyt, &dxt);
        gpu.submit(enc);
        (gpu.read(&y), gpu.read(&dxt))
    }

    fn check_against_reference(what: &str, x: &[f32], seed: u64, dims: [usize; 4]) {
        let dy = random_vec(seed + 100, x.len());
        let dx0 = random_vec(seed + 200, x.len()); // backward accumulates into this
        let (y, dx) = run_gpu(x, &dy, &dx0, dims);
        assert!(y.iter().chain(&dx).all(|v| v.is_finite()), "{what} {dims:?}: NaN or Inf");
        let want_y = reference::softmax_forward(&to_f64(x), dims);
        let want_dx: Vec<f64> = reference::softmax_backward(&want_y, &to_f64(&dy), dims)
            .iter()
            .zip(&dx0)
            .map(|(g, &d)| g + d as f64)
            .collect();
        assert_close_f32(&format!("{what} y {dims:?}"), &y, &want_y, 1e-4);
        assert_close_f32(&format!("{what} dx {dims:?}"), &dx, &want_dx, 1e-3);
    }

    #[test]
    fn gpu_matches_reference_on_odd_shapes() {
        for (seed, dims) in
            [(3, [1, 1, 1, 1]), (4, [2, 3, 5, 7]), (5, [1, 5, 5, 7]), (6, [2, 5, 1, 1]), (7, [3, 6, 17, 19])]
        {
            check_against_reference("softmax", &logits(seed, dims.iter().product(), 4.0), seed, dims);
        }
    }

    #[test]
    fn extreme_logits_stay_finite() {
        // Channel values at +-80 (exp(80) overflows f32), and pixels where every
        // channel is equal (the softmax must be exactly uniform there).
        let dims = [2, 5, 5, 7];
        let hw = 35;
        let mut x = logits(8, dims.iter().product(), 80.0);
        for (i, v) in x.iter_mut().enumerate() {
            let (ch, p) = ((i / hw) % 5, i % hw);
            match p % 5 {
                0 => *v = 80.0,                                   // all equal, large
                1 => *v = -80.0,                                  // all equal, very negative
                2 => *v = if ch == 2 { 80.0 } else { -80.0 },     // one winner
                3 => *v = if ch % 2 == 0 { 80.0 } else { -80.0 }, // ties at the top
                _ => {}
            }
        }
        check_against_reference("softmax extreme", &x, 8, dims);
        let (y, _) = run_gpu(&x, &vec![0.0; x.len()], &vec![0.0; x.len()], dims);
        for p in (0..hw).filter(|p| p % 5 < 2) {
            for b in 0..2 {
                for ch in 0..5 {
                    assert_eq!(y[(b * 5 + ch) * hw + p], 0.2, "equal logits at pixel {p} channel {ch}");
                }
            }
        }
    }

    #[test]
    fn tape_matches_wrappers() {
        let gpu = gpu();
        let dims = [2, 3, 2, 3];
        let x = logits(9, dims.iter().product(), 2.0);
        let dy = random_vec(10, x.len());
        let mut step = Step::train(gpu);
        let xt = gpu.upload(&x, &dims).with_grad();
        let y = softmax(&mut step, &xt);
        let mut grads = step.backward(vec![(y.clone(), gpu.upload(&dy, &dims))]);
        let dx = grads.take(&xt).expect("x has a gradient");
        step.submit();
        let (want_y, want_dx) = run_gpu(&x, &dy, &vec![0.0; x.len()], dims);
        assert_eq!(gpu.read(&y), want_y);
        assert_eq!(gpu.read(&dx), want_dx);
    }
}
