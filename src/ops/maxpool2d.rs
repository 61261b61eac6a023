//! 2x2 max pooling, stride 2: x `[N,C,H,W]` -> y `[N,C,H/2,W/2]` (floor, as
//! PyTorch: with odd H or W the last row or column is dropped).
//!
//! `y[n,c,i,j] = max_{a,b in {0,1}} x[n,c,2i+a,2j+b]`. The forward also writes
//! `argmax` `[N,C,H/2,W/2]` (u32): the winner's index **within its input plane**,
//! `h * W + w`. Ties go to the first element in row-major window order, and a NaN
//! wins, as in PyTorch (whose `return_indices` uses the same plane index).
//!
//! Backward: `dx[n,c,h,w] += dy[n,c,h/2,w/2]` where `(h, w)` is its window's
//! winner, else nothing. It runs in gather form, one thread per dx element
//! checking the argmax of its one window, so it needs no atomics.

use crate::autograd::tape::Step;
use crate::autograd::tensor::Tensor;
use crate::runtime::{Encoder, Gpu, Shader};
use crate::shader;

const SHADER: Shader = shader!("maxpool2d");
/// Threads of a workgroup along w and h (one plane per workgroup in z).
const TILE: [u32; 2] = [16, 16];

/// Mirrors `Params` in `shaders/maxpool2d.wgsl`.
#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    planes: u32,
    h: u32,
    w: u32,
    ho: u32,
    wo: u32,
}

/// The pooled shape `[N,C,H/2,W/2]` of x `[N,C,H,W]`.
pub fn pooled_shape(x: &Tensor) -> [usize; 4] {
    let [n, c, h, w] = x.dims4("maxpool2d x");
    [n, c, h / 2, w / 2]
}

fn params(x_shape: [usize; 4]) -> Params {
    let [n, c, h, w] = x_shape;
    assert!(n * c <= 65535, "maxpool2d: {x_shape:?} has more than 65535 planes (one dispatch row each)");
    Params { planes: (n * c) as u32, h: h as u32, w: w as u32, ho: (h / 2) as u32, wo: (w / 2) as u32 }
}

/// Workgroups for one thread per output pixel (window) of `[rows, cols]` in each of `planes` planes.
fn groups(planes: u32, rows: u32, cols: u32) -> [u32; 3] {
    [cols.div_ceil(TILE[0]).max(1), rows.div_ceil(TILE[1]).max(1), planes.max(1)]
}

fn constants() -> [(&'static str, f64); 2] {
    [("TX", TILE[0] as f64), ("TY", TILE[1] as f64)]
}

/// `y = 2x2 max of x`, `argmax` = winner's index within its input plane.
/// x: `[N,C,H,W]`; y: `[N,C,H/2,W/2]`; argmax: `[N,C,H/2,W/2]` (u32).
pub fn maxpool2d_forward(gpu: &Gpu, enc: &mut Encoder, x: &Tensor, y: &Tensor, argmax: &Tensor) {
    let want = pooled_shape(x);
    assert!(
        y.shape() == want && argmax.shape() == want,
        "maxpool2d: x {:?} y {:?} argmax {:?}, want y and argmax {want:?}",
        x.shape(),
        y.shape(),
        argmax.shape()
    );
    let kernel = gpu.kernel(&SHADER, "maxpool2d_forward", &constants());
    let p = params(x.dims4("maxpool2d x"));
    gpu.dispatch(enc, &kernel, &p, &[(1, x), (2, y), (3, argmax)], groups(p.planes, p.ho, p.wo));
}

/// `dx[winner] += dy`. argmax, dy: `[N,C,H/2,W/2]` (argmax u32, from the forward);
/// dx: `[N,C,H,W]` (added into).
pub fn maxpool2d_backward(gpu: &Gpu, enc: &mut Encoder, argmax: &Tensor, dy: &Tensor, dx: &Tensor) {
    let want = pooled_shape(dx);
    assert!(
        dy.shape() == want && argmax.shape() == want,
        "maxpool2d backward: dx {:?} dy {:?} argmax {:?}, want dy and argmax {want:?}",
        dx.shape(),
        dy.shape(),
        argmax.shape()
    );
    let kernel = gpu.kernel(&SHADER, "maxpool2d_backward", &constants());
    let p = params(dx.dims4("maxpool2d dx"));
    gpu.dispatch(enc, &kernel, &p, &[(2, dx), (4, argmax), (5, dy)], groups(p.planes, p.ho, p.wo));
}

/// 2x2 max pooling on the tape. x: `[N,C,H,W]` -> `[N,C,H/2,W/2]`. The argmax
/// is kept for the backward only when the step records (else it returns to the pool).
pub fn maxpool2d(step: &mut Step, x: &Tensor) -> Tensor {
    let shape = pooled_shape(x);
    let y = step.output(&shape, &[x]);
    let argmax = step.gpu.empty(&shape);
    maxpool2d_forward(step.gpu, &mut step.enc, x, &y, &argmax);
    let x = x.clone();
    step.record("maxpool2d", &y, move |ctx, dy| {
        if let Some(dx) = ctx.grad(&x) {
            maxpool2d_backward(ctx.gpu, ctx.enc, &argmax, dy, &dx);
        }
    });
    y
}

/// Plain-Rust max pooling, the contract the shader is tested against.
pub mod reference {
    /// `(y, argmax)` for x `[n, c, h, w]`; argmax indexes within the input plane.
    pub fn maxpool2d_forward(x: &[f64], [n, c, h, w]: [usize; 4]) -> (Vec<f64>, Vec<u32>) {
        let (ho, wo) = (h / 2, w / 2);
        let (mut y, mut argmax) = (Vec::new(), Vec::new());
        for plane in x.chunks(h * w).take(n * c) {
            for i in 0..ho {
                for j in 0..wo {
                    let mut best_at = 2 * i * w + 2 * j;
                    for at in [2 * i * w + 2 * j + 1, (2 * i + 1) * w + 2 * j, (2 * i + 1) * w + 2 * j + 1] {
                        if plane[at] > plane[best_at] {
                            best_at = at; // strict: the first of equals stays
                        }
                    }
                    y.push(plane[best_at]);
                    argmax.push(best_at as u32);
                }
            }
        }
        (y, argmax)
    }

    /// `dx` (not accumulated): each dy goes to its window's winner.
    pub fn maxpool2d_backward(dy: &[f64], argmax: &[u32], [n, c, h, w]: [usize; 4]) -> Vec<f64> {
        let out_plane = (h / 2) * (w / 2);
        let mut dx = vec![0.0; n * c * h * w];
        for (o, (&g, &at)) in dy.iter().zip(argmax).enumerate() {
            dx[(o / out_plane) * h * w + at as usize] += g;
        }
        dx
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{assert_close, assert_close_f32, dot, gpu, numeric_grad, random_vec, to_f64};

    fn plus(start: &[f32], grad: &[f64]) -> Vec<f64> {
        start.iter().zip(grad).map(|(&s, g)| s as f64 + g).collect()
    }

    #[test]
    fn reference_backward_matches_finite_differences() {
        let dims = [2, 3, 5, 7]; // odd: the last row and column are dropped
        let x = to_f64(&random_vec(1, dims.iter().product()));
        let (y, argmax) = reference::maxpool2d_forward(&x, dims);
        let r = to_f64(&random_vec(2, y.len()));
        let g = numeric_grad(|x| dot(&r, &reference::maxpool2d_forward(x, dims).0), &x, 1e-6);
        assert_close("maxpool2d dx", &reference::maxpool2d_backward(&r, &argmax, dims), &g, 1e-6);
    }

    fn check(gpu: &Gpu, seed: u64, dims: [usize; 4], x: &[f32]) {
        let out = [dims[0], dims[1], dims[2] / 2, dims[3] / 2];
        let dy = random_vec(seed + 100, out.iter().product());
        let dx0 = random_vec(seed + 200, x.len());
        let (xt, dyt, dxt) = (gpu.upload(x, &dims), gpu.upload(&dy, &out), gpu.upload(&dx0, &dims));
        let (y, argmax) = (gpu.empty(&out), gpu.empty(&out));
        let mut enc = gpu.encoder();
        maxpool2d_forward(gpu, &mut enc, &xt, &y, &argmax);
        maxpool2d_backward(gpu, &mut enc, &argmax, &dyt, &dxt);
        gpu.submit(enc);

        let (want_y, want_argmax) = reference::maxpool2d_forward(&to_f64(x), dims);
        // A 1-pixel input pools to nothing (and `Gpu::read` of an empty tensor panics).
        if !y.is_empty() {
            assert_close_f32(&format!("maxpool2d y {dims:?}"), &gpu.read(&y), &want_y, 1e-4);
            assert_eq!(gpu.read_u32(&argmax), want_argmax, "maxpool2d argmax {dims:?}");
        }
        let want_dx = plus(&dx0, &reference::maxpool2d_backward(&to_f64(&dy), &want_argmax, dims));
        assert_close_f32(&format!("maxpool2d dx {dims:?}"), &gpu.read(&dxt), &want_dx, 1e-3);
    }

    #[test]
    fn gpu_matches_reference_on_odd_shapes() {
        let gpu = gpu();
        for (seed, dims) in
            [(3, [1, 1, 1, 1]), (4, [1, 1, 2, 2]), (5, [2, 3, 5, 7]), (6, [1, 3, 6, 8]), (7, [2, 5, 33, 18])]
        {
            check(gpu, seed, dims, &random_vec(seed, dims.iter().product()));
        }
    }

    #[test]
    fn ties_go_to_the_first_in_row_major_order() {
        // Values from {0, 1, 2}: most windows hold ties.
        let dims = [2, 3, 9, 11];
        let x: Vec<f32> = random_vec(8, dims.iter().product()).iter().map(|v| ((v + 1.0) * 1.5).floor()).collect();
        check(gpu(), 8, dims, &x);
        // All equal: every winner is the window's top-left element.
        let (y, argmax) = reference::maxpool2d_forward(&[1.0; 16], [1, 1, 4, 4]);
        assert_eq!((y, argmax), (vec![1.0; 4], vec![0, 2, 8, 10]));
    }

    #[test]
    fn tape_gradients_match_reference() {
        let gpu = gpu();
        let dims = [2, 3, 5, 7];
        let x = random_vec(9, dims.iter().product());
        let xt = gpu.upload(&x, &dims).with_grad();
        let mut step = Step::train(gpu);
        let y = maxpool2d(&mut step, &xt);
        assert_eq!(y.shape(), [2, 3, 2, 3]);
        let dy = random_vec(10, y.len());
        let grads = step.backward(vec![(y.clone(), gpu.upload(&dy, y.shape()))]);
        let dx = grads.get(&xt).unwrap().clone();
        step.submit();

        let (want_y, argmax) = reference::maxpool2d_forward(&to_f64(&x), dims);
        assert_close_f32("tape y", &gpu.read(&y), &want_y, 1e-4);
        assert_close_f32("tape dx", &gpu.read(&dx), &reference::maxpool2d_backward(&to_f64(&dy), &argmax, dims), 1e-3);
    }
}
