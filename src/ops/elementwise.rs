//! Elementwise sum and scaling. All tensors: any shape, the same for every
//! argument of a call.
//!
//! - `add`:   `y = a + b`, backward `da += dy`, `db += dy`
//! - `scale`: `y = s * x` (s a constant), backward `dx += s * dy`
//!
//! Both backwards are one kernel, `dx += s * dy` ([`accumulate`]), which other
//! ops reuse wherever a gradient passes through unchanged.

use crate::autograd::tape::Step;
use crate::autograd::tensor::Tensor;
use crate::runtime::{groups_1d, Encoder, Gpu, Shader};
use crate::shader;

const SHADER: Shader = shader!("elementwise");
const WG: u32 = 256;

/// Mirrors `Params` in `shaders/elementwise.wgsl`.
#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    n: u32,
    s: f32,
}

/// `y = a + b`. a, b, y: same shape.
pub fn add_forward(gpu: &Gpu, enc: &mut Encoder, a: &Tensor, b: &Tensor, y: &Tensor) {
    assert!(
        a.shape() == b.shape() && b.shape() == y.shape(),
        "add: a {:?} b {:?} y {:?}",
        a.shape(),
        b.shape(),
        y.shape()
    );
    let kernel = gpu.kernel(&SHADER, "add_forward", &[("WG", WG as f64)]);
    let params = Params { n: y.len() as u32, s: 1.0 };
    gpu.dispatch(enc, &kernel, &params, &[(1, a), (2, y), (3, b)], groups_1d(y.len(), WG));
}

/// `y = s * x`. x, y: same shape.
pub fn scale_forward(gpu: &Gpu, enc: &mut Encoder, x: &Tensor, s: f32, y: &Tensor) {
    assert_eq!(x.shape(), y.shape(), "scale: x {:?} vs y {:?}", x.shape(), y.shape());
    let kernel = gpu.kernel(&SHADER, "scale_forward", &[("WG", WG as f64)]);
    let params = Params { n: y.len() as u32, s };
    gpu.dispatch(enc, &kernel, &params, &[(1, x), (2, y)], groups_1d(y.len(), WG));
}

/// `dx += s * dy`: the backward of `scale` and (with `s = 1`) of each input of
/// `add`. dy, dx: same shape.
pub fn accumulate(gpu: &Gpu, enc: &mut Encoder, dy: &Tensor, s: f32, dx: &Tensor) {
    assert_eq!(dy.shape(), dx.shape(), "elementwise backward: dy {:?} vs dx {:?}", dy.shape(), dx.shape());
    let kernel = gpu.kernel(&SHADER, "elementwise_backward", &[("WG", WG as f64)]);
    let params = Params { n: dx.len() as u32, s };
    gpu.dispatch(enc, &kernel, &params, &[(2, dx), (3, dy)], groups_1d(dx.len(), WG));
}

/// `da += dy` (call once per input of `add`). dy, da: same shape.
pub fn add_backward(gpu: &Gpu, enc: &mut Encoder, dy: &Tensor, da: &Tensor) {
    accumulate(gpu, enc, dy, 1.0, da);
}

/// `dx += s * dy`. dy, dx: same shape.
pub fn scale_backward(gpu: &Gpu, enc: &mut Encoder, dy: &Tensor, s: f32, dx: &Tensor) {
    accumulate(gpu, enc, dy, s, dx);
}

/// `a + b` on the tape. a, b: same shape.
pub fn add(step: &mut Step, a: &Tensor, b: &Tensor) -> Tensor {
    let y = step.output(a.shape(), &[a, b]);
    add_forward(step.gpu, &mut step.enc, a, b, &y);
    let (a, b) = (a.clone(), b.clone());
    step.record("add", &y, move |ctx, dy| {
        // `add(x, x)` asks for the same buffer twice and so adds dy twice, as it should.
        for input in [&a, &b] {
            if let Some(dx) = ctx.grad(input) {
                add_backward(ctx.gpu, ctx.enc, dy, &dx);
            }
        }
    });
    y
}

/// `s * x` on the tape. x: any shape.
pub fn scale(step: &mut Step, x: &Tensor, s: f32) -> Tensor {
    let y = step.output(x.shape(), &[x]);
    scale_forward(step.gpu, &mut step.enc, x, s, &y);
    let x = x.clone();
    step.record("scale", &y, move |ctx, dy| {
        if let Some(dx) = ctx.grad(&x) {
            scale_backward(ctx.gpu, ctx.enc, dy, s, &dx);
        }
    });
    y
}

/// Plain-Rust elementwise ops, the contract the shader is tested against.
pub mod reference {
    /// `y = a + b`.
    pub fn add_forward(a: &[f64], b: &[f64]) -> Vec<f64> {
        a.iter().zip(b).map(|(x, y)| x + y).collect()
    }

    /// `(da, db) = (dy, dy)` (not accumulated).
    pub fn add_backward(dy: &[f64]) -> (Vec<f64>, Vec<f64>) {
        (dy.to_vec(), dy.to_vec())
    }

    /// `y = s * x`.
    pub fn scale_forward(x: &[f64], s: f64) -> Vec<f64> {
        x.iter().map(|v| s * v).collect()
    }

    /// `dx = s * dy` (not accumulated).
    pub fn scale_backward(dy: &[f64], s: f64) -> Vec<f64> {
        dy.iter().map(|g| s * g).collect()
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
        let n = 2 * 3 * 5 * 7;
        let (a, b) = (to_f64(&random_vec(1, n)), to_f64(&random_vec(2, n)));
        let r = to_f64(&random_vec(3, n));
        let (da, db) = reference::add_backward(&r);
        assert_close("add da", &da, &numeric_grad(|a| dot(&r, &reference::add_forward(a, &b)), &a, 1e-6), 1e-6);
        assert_close("add db", &db, &numeric_grad(|b| dot(&r, &reference::add_forward(&a, b)), &b, 1e-6), 1e-6);
        let s = -1.7;
        let g = numeric_grad(|x| dot(&r, &reference::scale_forward(x, s)), &a, 1e-6);
        assert_close("scale dx", &reference::scale_backward(&r, s), &g, 1e-6);
    }

    #[test]
    fn gpu_matches_reference_on_odd_shapes() {
        let gpu = gpu();
        for (seed, shape) in [(4, vec![1, 1, 1, 1]), (5, vec![2, 3, 5, 7]), (6, vec![1, 3, 33, 31]), (7, vec![70001])] {
            let n: usize = shape.iter().product();
            let (a, b, dy) = (random_vec(seed, n), random_vec(seed + 100, n), random_vec(seed + 200, n));
            let (da0, dx0) = (random_vec(seed + 300, n), random_vec(seed + 400, n));
            let (at, bt, dyt) = (gpu.upload(&a, &shape), gpu.upload(&b, &shape), gpu.upload(&dy, &shape));
            let (dat, dxt) = (gpu.upload(&da0, &shape), gpu.upload(&dx0, &shape));
            let (sum, scaled) = (gpu.empty(&shape), gpu.empty(&shape));
            let s = 0.37;
            let mut enc = gpu.encoder();
            add_forward(gpu, &mut enc, &at, &bt, &sum);
            scale_forward(gpu, &mut enc, &at, s, &scaled);
            add_backward(gpu, &mut enc, &dyt, &dat);
            scale_backward(gpu, &mut enc, &dyt, s, &dxt);
            gpu.submit(enc);

            let (a, b, dy) = (to_f64(&a), to_f64(&b), to_f64(&dy));
            assert_close_f32(&format!("add y {shape:?}"), &gpu.read(&sum), &reference::add_forward(&a, &b), 1e-4);
            let want = reference::scale_forward(&a, s as f64);
            assert_close_f32(&format!("scale y {shape:?}"), &gpu.read(&scaled), &want, 1e-4);
            let want = plus(&da0, &reference::add_backward(&dy).0);
            assert_close_f32(&format!("add da {shape:?}"), &gpu.read(&dat), &want, 1e-3);
            let want = plus(&dx0, &reference::scale_backward(&dy, s as f64));
            assert_close_f32(&format!("scale dx {shape:?}"), &gpu.read(&dxt), &want, 1e-3);
        }
    }

    #[test]
    fn tape_gradients_match_reference() {
        // y = 2 * (a + b) + a: a gets 2 + 1 = 3 dy, b gets 2 dy.
        let gpu = gpu();
        let shape = [2, 3, 5, 7];
        let n: usize = shape.iter().product();
        let (a, b, dy) = (random_vec(8, n), random_vec(9, n), random_vec(10, n));
        let at = gpu.upload(&a, &shape).with_grad();
        let bt = gpu.upload(&b, &shape).with_grad();
        let mut step = Step::train(gpu);
        let s = add(&mut step, &at, &bt);
        let s2 = scale(&mut step, &s, 2.0);
        let y = add(&mut step, &s2, &at);
        let grads = step.backward(vec![(y.clone(), gpu.upload(&dy, &shape))]);
        let (da, db) = (grads.get(&at).unwrap().clone(), grads.get(&bt).unwrap().clone());
        step.submit();

        let (af, bf, dyf) = (to_f64(&a), to_f64(&b), to_f64(&dy));
        let want_y: Vec<f64> = af.iter().zip(&bf).map(|(a, b)| 2.0 * (a + b) + a).collect();
        assert_close_f32("tape y", &gpu.read(&y), &want_y, 1e-4);
        assert_close_f32("tape da", &gpu.read(&da), &reference::scale_backward(&dyf, 3.0), 1e-3);
        assert_close_f32("tape db", &gpu.read(&db), &reference::scale_backward(&dyf, 2.0), 1e-3);
    }
}
