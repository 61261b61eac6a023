//! 2x upsampling, the decoder's alternative to a transposed convolution.
//! x: `[N,C,H,W]` -> y: `[N,C,2H,2W]`.
//!
//! Both modes are separable, `y[Y,X] = sum_{r,s} a(Y,r) a(X,s) x[r,s]`, with 1-D weights:
//! - [`Upsample::Nearest`]: `a(Y,r) = (r == Y/2)`, so `y[Y,X] = x[Y/2, X/2]`;
//! - [`Upsample::Bilinear`], as PyTorch's `nn.Upsample(scale_factor=2, mode='bilinear',
//!   align_corners=False)`: half-pixel centres, source coordinate `src = max((Y + 0.5)/2 - 0.5, 0)`,
//!   `r0 = floor(src)`, `r1 = min(r0 + 1, H - 1)`, `l = src - r0`, and `a(Y,r0) += 1 - l`,
//!   `a(Y,r1) += l`. Away from the borders that is 0.25/0.75 of the two nearest input rows.
//!
//! Backward: `dx[r,s] += sum_{Y,X} a(Y,r) a(X,s) dy[Y,X]`, gathered (one thread per dx element).

use crate::autograd::tape::Step;
use crate::autograd::tensor::Tensor;
use crate::runtime::{groups_1d, Encoder, Gpu, Shader};
use crate::shader;

const SHADER: Shader = shader!("upsample");
const WG: u32 = 256;

/// How [`upsample`] fills in the new pixels.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Upsample {
    /// Each input pixel becomes a 2x2 block.
    Nearest,
    /// Bilinear interpolation with half-pixel centres (PyTorch `align_corners=False`).
    Bilinear,
}

impl Upsample {
    fn entry(self, backward: bool) -> &'static str {
        match (self, backward) {
            (Upsample::Nearest, false) => "upsample_nearest_forward",
            (Upsample::Nearest, true) => "upsample_nearest_backward",
            (Upsample::Bilinear, false) => "upsample_bilinear_forward",
            (Upsample::Bilinear, true) => "upsample_bilinear_backward",
        }
    }
}

/// Mirrors `Params` in `shaders/upsample.wgsl`: `n` input elements in planes of `h x w`.
#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    n: u32,
    h: u32,
    w: u32,
}

fn params(small: &Tensor, large: &Tensor, what: &str) -> Params {
    let [n, c, h, w] = small.dims4(what);
    assert_eq!(
        large.shape(),
        [n, c, 2 * h, 2 * w],
        "{what}: x {:?} needs y/dy of twice its height and width, got {:?}",
        small.shape(),
        large.shape()
    );
    Params { n: small.len() as u32, h: h as u32, w: w as u32 }
}

/// `y = upsample(x)`. x: `[N,C,H,W]`, y: `[N,C,2H,2W]`.
pub fn upsample_forward(gpu: &Gpu, enc: &mut Encoder, mode: Upsample, x: &Tensor, y: &Tensor) {
    let p = params(x, y, "upsample");
    let kernel = gpu.kernel(&SHADER, mode.entry(false), &[("WG", WG as f64)]);
    gpu.dispatch(enc, &kernel, &p, &[(1, x), (2, y)], groups_1d(x.len(), WG));
}

/// `dx += upsample^T(dy)`. dy: `[N,C,2H,2W]`, dx: `[N,C,H,W]`.
pub fn upsample_backward(gpu: &Gpu, enc: &mut Encoder, mode: Upsample, dy: &Tensor, dx: &Tensor) {
    let p = params(dx, dy, "upsample backward");
    let kernel = gpu.kernel(&SHADER, mode.entry(true), &[("WG", WG as f64)]);
    gpu.dispatch(enc, &kernel, &p, &[(1, dy), (2, dx)], groups_1d(dx.len(), WG));
}

/// 2x upsampling on the tape. x: `[N,C,H,W]` -> `[N,C,2H,2W]`.
pub fn upsample(step: &mut Step, x: &Tensor, mode: Upsample) -> Tensor {
    let [n, c, h, w] = x.dims4("upsample input");
    let y = step.output(&[n, c, 2 * h, 2 * w], &[x]);
    upsample_forward(step.gpu, &mut step.enc, mode, x, &y);
    let x = x.clone();
    step.record("upsample", &y, move |ctx, dy| {
        if let Some(dx) = ctx.grad(&x) {
            upsample_backward(ctx.gpu, ctx.enc, mode, dy, &dx);
        }
    });
    y
}

/// Plain-Rust upsampling, the contract the shader is tested against. The
/// backward here scatters (each output adds into the inputs it read), the
/// adjoint written the direct way; the shader gathers.
pub mod reference {
    use super::Upsample;

    /// The forward's taps along one axis of `len` inputs for output `o`:
    /// `(r0, r1, l)` with `y[o] = (1 - l) x[r0] + l x[r1]`.
    pub fn taps(mode: Upsample, o: usize, len: usize) -> (usize, usize, f64) {
        match mode {
            Upsample::Nearest => (o / 2, o / 2, 0.0),
            Upsample::Bilinear => {
                // PyTorch: src = scale * (o + 0.5) - 0.5 with scale = 1/2, negative clamped to 0.
                let src = (0.5 * (o as f64 + 0.5) - 0.5).max(0.0);
                let r0 = src.floor() as usize;
                (r0, (r0 + 1).min(len - 1), src - r0 as f64)
            }
        }
    }

    /// `y = upsample(x)`. x: `[n,c,h,w]` -> `[n,c,2h,2w]`.
    pub fn upsample_forward(mode: Upsample, x: &[f64], [n, c, h, w]: [usize; 4]) -> Vec<f64> {
        let (oh, ow) = (2 * h, 2 * w);
        let mut y = vec![0.0; n * c * oh * ow];
        for plane in 0..n * c {
            let xp = &x[plane * h * w..][..h * w];
            for oy in 0..oh {
                let (r0, r1, ly) = taps(mode, oy, h);
                for ox in 0..ow {
                    let (s0, s1, lx) = taps(mode, ox, w);
                    let top = (1.0 - lx) * xp[r0 * w + s0] + lx * xp[r0 * w + s1];
                    let bottom = (1.0 - lx) * xp[r1 * w + s0] + lx * xp[r1 * w + s1];
                    y[(plane * oh + oy) * ow + ox] = (1.0 - ly) * top + ly * bottom;
                }
            }
        }
        y
    }

    /// `dx = upsample^T(dy)` (not accumulated). dy: `[n,c,2h,2w]` -> `[n,c,h,w]`.
    pub fn upsample_backward(mode: Upsample, dy: &[f64], [n, c, h, w]: [usize; 4]) -> Vec<f64> {
        let (oh, ow) = (2 * h, 2 * w);
        let mut dx = vec![0.0; n * c * h * w];
        for plane in 0..n * c {
            let dxp = &mut dx[plane * h * w..][..h * w];
            for oy in 0..oh {
                let (r0, r1, ly) = taps(mode, oy, h);
                for ox in 0..ow {
                    let (s0, s1, lx) = taps(mode, ox, w);
                    let g = dy[(plane * oh + oy) * ow + ox];
                    // forward: y = sum over the four taps of (row weight)(column weight) x[tap]
                    for (r, wr) in [(r0, 1.0 - ly), (r1, ly)] {
                        for (s, ws) in [(s0, 1.0 - lx), (s1, lx)] {
                            dxp[r * w + s] += wr * ws * g;
                        }
                    }
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

    const MODES: [Upsample; 2] = [Upsample::Nearest, Upsample::Bilinear];

    #[test]
    fn reference_backward_matches_finite_differences() {
        for mode in MODES {
            for dims in [[2, 3, 5, 7], [1, 2, 1, 1], [1, 1, 1, 4], [1, 1, 2, 3]] {
                let x = to_f64(&random_vec(1, dims.iter().product()));
                let r = to_f64(&random_vec(2, 4 * x.len()));
                let loss = |x: &[f64]| dot(&r, &reference::upsample_forward(mode, x, dims));
                assert_close(
                    &format!("upsample {mode:?} dx {dims:?}"),
                    &reference::upsample_backward(mode, &r, dims),
                    &numeric_grad(loss, &x, 1e-6),
                    1e-6,
                );
            }
        }
    }

    #[test]
    fn bilinear_reference_matches_pytorch_values() {
        // torch.nn.Upsample(scale_factor=2, mode='bilinear', align_corners=False) on
        // [[1, 2], [3, 4]] gives these rows (values worked out by hand from its formula).
        let y = reference::upsample_forward(Upsample::Bilinear, &[1.0, 2.0, 3.0, 4.0], [1, 1, 2, 2]);
        let want = [
            1.0, 1.25, 1.75, 2.0, //
            1.5, 1.75, 2.25, 2.5, //
            2.5, 2.75, 3.25, 3.5, //
            3.0, 3.25, 3.75, 4.0,
        ];
        assert_close("bilinear 2x2", &y, &want, 1e-12);
    }

    #[test]
    fn gpu_matches_reference_on_odd_shapes() {
        let gpu = gpu();
        for mode in MODES {
            for (seed, dims) in
                [(3, [1, 1, 1, 1]), (4, [2, 3, 5, 7]), (5, [1, 2, 1, 9]), (6, [2, 1, 6, 1]), (7, [1, 3, 33, 70])]
            {
                let [n, c, h, w] = dims;
                let big = [n, c, 2 * h, 2 * w];
                let x = random_vec(seed, dims.iter().product());
                let dy = random_vec(seed + 100, 4 * x.len());
                let dx0 = random_vec(seed + 200, x.len()); // backward accumulates into this
                let (xt, dyt, dxt) = (gpu.upload(&x, &dims), gpu.upload(&dy, &big), gpu.upload(&dx0, &dims));
                let y = gpu.empty(&big);
                let mut enc = gpu.encoder();
                upsample_forward(gpu, &mut enc, mode, &xt, &y);
                upsample_backward(gpu, &mut enc, mode, &dyt, &dxt);
                gpu.submit(enc);

                let want_y = reference::upsample_forward(mode, &to_f64(&x), dims);
                let want_dx: Vec<f64> = reference::upsample_backward(mode, &to_f64(&dy), dims)
                    .iter()
                    .zip(&dx0)
                    .map(|(g, &d)| g + d as f64)
                    .collect();
                assert_close_f32(&format!("upsample {mode:?} y {dims:?}"), &gpu.read(&y), &want_y, 1e-4);
                assert_close_f32(&format!("upsample {mode:?} dx {dims:?}"), &gpu.read(&dxt), &want_dx, 1e-3);
            }
        }
    }

    #[test]
    fn tape_gives_the_reference_gradient() {
        let gpu = gpu();
        let dims = [2, 3, 5, 7];
        for mode in MODES {
            let x = random_vec(8, dims.iter().product());
            let dy = random_vec(9, 4 * x.len());
            let xt = gpu.upload(&x, &dims).with_grad();
            let mut step = Step::train(gpu);
            let y = upsample(&mut step, &xt, mode);
            assert_eq!(y.shape(), [2, 3, 10, 14]);
            let dyt = gpu.upload(&dy, y.shape());
            let grads = step.backward(vec![(y.clone(), dyt)]);
            step.submit();
            let dx = grads.get(&xt).expect("x has a gradient");
            assert_close_f32(
                &format!("tape upsample {mode:?} y"),
                &gpu.read(&y),
                &reference::upsample_forward(mode, &to_f64(&x), dims),
                1e-4,
            );
            assert_close_f32(
                &format!("tape upsample {mode:?} dx"),
                &gpu.read(dx),
                &reference::upsample_backward(mode, &to_f64(&dy), dims),
                1e-3,
            );
        }
    }
}
