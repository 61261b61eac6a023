//! ReLU, elementwise: `y = max(x, 0)`. x, y: any shape (the same).
//! Backward: `dx += dy * (y > 0)`; it reads the saved output, since `y > 0`
//! exactly where `x > 0`.

use crate::autograd::tape::Step;
use crate::autograd::tensor::Tensor;
use crate::runtime::{groups_1d, Encoder, Gpu, Shader};
use crate::shader;

const SHADER: Shader = shader!("relu");
const WG: u32 = 256;

/// Mirrors `Params` in `shaders/relu.wgsl`.
#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    n: u32,
}

/// `y = max(x, 0)`. x, y: same shape.
pub fn relu_forward(gpu: &Gpu, enc: &mut Encoder, x: &Tensor, y: &Tensor) {
    assert_eq!(x.shape(), y.shape(), "relu: x {:?} vs y {:?}", x.shape(), y.shape());
    let kernel = gpu.kernel(&SHADER, "relu_forward", &[("WG", WG as f64)]);
    let params = Params { n: x.len() as u32 };
    gpu.dispatch(enc, &kernel, &params, &[(1, x), (2, y)], groups_1d(x.len(), WG));
}

/// `dx += dy * (y > 0)`. y (the forward output), dy, dx: same shape.
pub fn relu_backward(gpu: &Gpu, enc: &mut Encoder, y: &Tensor, dy: &Tensor, dx: &Tensor) {
    assert!(
        y.shape() == dy.shape() && dy.shape() == dx.shape(),
        "relu backward: y {:?} dy {:?} dx {:?}",
        y.shape(),
        dy.shape(),
        dx.shape()
    );
    let kernel = gpu.kernel(&SHADER, "relu_backward", &[("WG", WG as f64)]);
    let params = Params { n: y.len() as u32 };
    gpu.dispatch(enc, &kernel, &params, &[(1, y), (2, dx), (3, dy)], groups_1d(y.len(), WG));
}

/// ReLU on the tape.
pub fn relu(step: &mut Step, x: &Tensor) -> Tensor {
    let y = step.output(x.shape(), &[x]);
    relu_forward(step.gpu, &mut step.enc, x, &y);
    let (x, saved_y) = (x.clone(), y.clone());
    step.record("relu", &y, move |ctx, dy| {
        if let Some(dx) = ctx.grad(&x) {
            relu_backward(ctx.gpu, ctx.enc, &saved_y, dy, &dx);
        }
    });
    y
}

/// Plain-Rust ReLU, the contract the shader is tested against.
pub mod reference {
    /// `y = max(x, 0)`.
    pub fn relu_forward(x: &[f64]) -> Vec<f64> {
        x.iter().map(|&v| v.max(0.0)).collect()
    }

    /// `dx = dy * (x > 0)` (not accumulated).
    pub fn relu_backward(x: &[f64], dy: &[f64]) -> Vec<f64> {
        x.iter().zip(dy).map(|(&v, &g)| if v > 0.0 { g } else { 0.0 }).collect()
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
        let loss = |x: &[f64]| dot(&r, &reference::relu_forward(x));
        assert_close("relu dx", &reference::relu_backward(&x, &r), &numeric_grad(loss, &x, 1e-6), 1e-6);
    }

    #[test]
    fn gpu_matches_reference_on_odd_shapes() {
        let gpu = gpu();
        for (seed, shape) in
            [(3, vec![1, 1, 1, 1]), (4, vec![2, 3, 5, 7]), (5, vec![1, 16, 33, 31]), (6, vec![3, 70001])]
        {
            let x = random_vec(seed, shape.iter().product());
            let dy = random_vec(seed + 100, x.len());
            let dx0 = random_vec(seed + 200, x.len()); // backward accumulates into this
            let (xt, dyt, dxt) = (gpu.upload(&x, &shape), gpu.upload(&dy, &shape), gpu.upload(&dx0, &shape));
            let y = gpu.empty(&shape);
            let mut enc = gpu.encoder();
            relu_forward(gpu, &mut enc, &xt, &y);
            relu_backward(gpu, &mut enc, &y, &dyt, &dxt);
            gpu.submit(enc);

            let want_y = reference::relu_forward(&to_f64(&x));
            let want_dx: Vec<f64> = reference::relu_backward(&to_f64(&x), &to_f64(&dy))
                .iter()
                .zip(&dx0)
                .map(|(g, &d)| g + d as f64)
                .collect();
            assert_close_f32(&format!("relu y {shape:?}"), &gpu.read(&y), &want_y, 1e-6);
            assert_close_f32(&format!("relu dx {shape:?}"), &gpu.read(&dxt), &want_dx, 1e-6);
        }
    }

    #[test]
    fn groups_fold_past_65535() {
        // 65536 * 256 + 3 elements need more than 65535 groups in x.
        let n = 65536 * 256 + 3;
        let gpu = gpu();
        let x: Vec<f32> = (0..n).map(|i| if i % 2 == 0 { -1.0 } else { i as f32 }).collect();
        let xt = gpu.upload(&x, &[n]);
        let y = gpu.empty(&[n]);
        let mut enc = gpu.encoder();
        relu_forward(gpu, &mut enc, &xt, &y);
        gpu.submit(enc);
        assert_close_f32("relu y", &gpu.read(&y), &reference::relu_forward(&to_f64(&x)), 0.0);
    }
}
