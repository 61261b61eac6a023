//! Per-channel bias: `y[n,c,h,w] = x[n,c,h,w] + b[c]`. x, y: `[N,C,H,W]`; b: `[C]`.
//!
//! Backward: `dx += dy` (the elementwise accumulate kernel) and
//! `db[c] += sum_{n,h,w} dy[n,c,h,w]` (the deterministic per-channel tree sum of
//! [`reduce`]), so only the forward has a shader of its own.

use crate::autograd::tape::Step;
use crate::autograd::tensor::Tensor;
use crate::ops::{elementwise, reduce};
use crate::runtime::{groups_1d, Encoder, Gpu, Shader};
use crate::shader;

const SHADER: Shader = shader!("bias_add");
const WG: u32 = 256;

/// Mirrors `Params` in `shaders/bias_add.wgsl`.
#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    len: u32,
    channels: u32,
    plane: u32,
}

/// `y[n,c,h,w] = x[n,c,h,w] + b[c]`. x, y: `[N,C,H,W]`; b: `[C]`.
pub fn bias_add_forward(gpu: &Gpu, enc: &mut Encoder, x: &Tensor, b: &Tensor, y: &Tensor) {
    let [_, c, h, w] = x.dims4("bias_add x");
    assert!(
        x.shape() == y.shape() && b.shape() == [c],
        "bias_add: x {:?} b {:?} y {:?}",
        x.shape(),
        b.shape(),
        y.shape()
    );
    let kernel = gpu.kernel(&SHADER, "bias_add_forward", &[("WG", WG as f64)]);
    let params = Params { len: x.len() as u32, channels: c as u32, plane: (h * w) as u32 };
    gpu.dispatch(enc, &kernel, &params, &[(1, x), (2, y), (3, b)], groups_1d(x.len(), WG));
}

/// `dx += dy`. dy, dx: `[N,C,H,W]`.
pub fn bias_add_backward_data(gpu: &Gpu, enc: &mut Encoder, dy: &Tensor, dx: &Tensor) {
    // forward: y = x + b[c]  =>  dx += dy
    elementwise::accumulate(gpu, enc, dy, 1.0, dx);
}

/// `db[c] += sum_{n,h,w} dy[n,c,h,w]`. dy: `[N,C,H,W]`; db: `[C]`.
pub fn bias_add_backward_bias(gpu: &Gpu, enc: &mut Encoder, dy: &Tensor, db: &Tensor) {
    // forward: y = x + b[c]  =>  db[c] += sum over every (n,h,w) that b[c] was added to
    reduce::sum_per_channel_accumulate(gpu, enc, dy, db);
}

/// `x + b[c]` on the tape. x: `[N,C,H,W]`; b: `[C]`.
pub fn bias_add(step: &mut Step, x: &Tensor, b: &Tensor) -> Tensor {
    let y = step.output(x.shape(), &[x, b]);
    bias_add_forward(step.gpu, &mut step.enc, x, b, &y);
    let (x, b) = (x.clone(), b.clone());
    step.record("bias_add", &y, move |ctx, dy| {
        if let Some(dx) = ctx.grad(&x) {
            bias_add_backward_data(ctx.gpu, ctx.enc, dy, &dx);
        }
        if let Some(db) = ctx.grad(&b) {
            bias_add_backward_bias(ctx.gpu, ctx.enc, dy, &db);
        }
    });
    y
}

/// Plain-Rust bias add, the contract the shader is tested against.
pub mod reference {
    /// `y[n,c,h,w] = x[n,c,h,w] + b[c]`.
    pub fn bias_add_forward(x: &[f64], b: &[f64], [n, c, h, w]: [usize; 4]) -> Vec<f64> {
        (0..n * c * h * w).map(|i| x[i] + b[(i / (h * w)) % c]).collect()
    }

    /// `(dx, db)` with `dx = dy`, `db[c] = sum_{n,h,w} dy[n,c,h,w]` (not accumulated).
    pub fn bias_add_backward(dy: &[f64], [n, c, h, w]: [usize; 4]) -> (Vec<f64>, Vec<f64>) {
        let mut db = vec![0.0; c];
        for (i, g) in dy.iter().enumerate().take(n * c * h * w) {
            db[(i / (h * w)) % c] += g;
        }
        (dy.to_vec(), db)
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
        let dims = [2, 3, 5, 7];
        let x = to_f64(&random_vec(1, dims.iter().product()));
        let b = to_f64(&random_vec(2, 3));
        let r = to_f64(&random_vec(3, x.len()));
        let (dx, db) = reference::bias_add_backward(&r, dims);
        let g = numeric_grad(|x| dot(&r, &reference::bias_add_forward(x, &b, dims)), &x, 1e-6);
        assert_close("bias_add dx", &dx, &g, 1e-6);
        let g = numeric_grad(|b| dot(&r, &reference::bias_add_forward(&x, b, dims)), &b, 1e-6);
        assert_close("bias_add db", &db, &g, 1e-6);
    }

    #[test]
    fn gpu_matches_reference_on_odd_shapes() {
        let gpu = gpu();
        // [2,3,70,60] has 8400 elements a channel: the bias gradient takes two passes.
        for (seed, dims) in [(4, [1, 1, 1, 1]), (5, [2, 3, 5, 7]), (6, [1, 17, 9, 11]), (7, [2, 3, 70, 60])] {
            let n: usize = dims.iter().product();
            let (x, b, dy) = (random_vec(seed, n), random_vec(seed + 100, dims[1]), random_vec(seed + 200, n));
            let (dx0, db0) = (random_vec(seed + 300, n), random_vec(seed + 400, dims[1]));
            let (xt, bt, dyt) = (gpu.upload(&x, &dims), gpu.upload(&b, &[dims[1]]), gpu.upload(&dy, &dims));
            let (dxt, dbt) = (gpu.upload(&dx0, &dims), gpu.upload(&db0, &[dims[1]]));
            let y = gpu.empty(&dims);
            let mut enc = gpu.encoder();
            bias_add_forward(gpu, &mut enc, &xt, &bt, &y);
            bias_add_backward_data(gpu, &mut enc, &dyt, &dxt);
            bias_add_backward_bias(gpu, &mut enc, &dyt, &dbt);
            gpu.submit(enc);

            let want_y = reference::bias_add_forward(&to_f64(&x), &to_f64(&b), dims);
            assert_close_f32(&format!("bias_add y {dims:?}"), &gpu.read(&y), &want_y, 1e-4);
            let (dx, db) = reference::bias_add_backward(&to_f64(&dy), dims);
            assert_close_f32(&format!("bias_add dx {dims:?}"), &gpu.read(&dxt), &plus(&dx0, &dx), 1e-3);
            assert_close_f32(&format!("bias_add db {dims:?}"), &gpu.read(&dbt), &plus(&db0, &db), 1e-3);
        }
    }

    #[test]
    fn tape_gradients_match_reference() {
        let gpu = gpu();
        let dims = [2, 3, 5, 7];
        let n: usize = dims.iter().product();
        let (x, b, dy) = (random_vec(8, n), random_vec(9, 3), random_vec(10, n));
        let xt = gpu.upload(&x, &dims).with_grad();
        let bt = gpu.upload(&b, &[3]).with_grad();
        let mut step = Step::train(gpu);
        let y = bias_add(&mut step, &xt, &bt);
        let grads = step.backward(vec![(y.clone(), gpu.upload(&dy, &dims))]);
        let (dx, db) = (grads.get(&xt).unwrap().clone(), grads.get(&bt).unwrap().clone());
        step.submit();

        let want_y = reference::bias_add_forward(&to_f64(&x), &to_f64(&b), dims);
        assert_close_f32("tape y", &gpu.read(&y), &want_y, 1e-4);
        let (want_dx, want_db) = reference::bias_add_backward(&to_f64(&dy), dims);
        assert_close_f32("tape dx", &gpu.read(&dx), &want_dx, 1e-3);
        assert_close_f32("tape db", &gpu.read(&db), &want_db, 1e-3);
    }
}
