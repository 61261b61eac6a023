//! ReLU forward and backward: memory-bound (GB/s).

use crate::common::bench::Bench;
use unet_wgpu::ops::relu::{reference, relu_backward, relu_forward};
use unet_wgpu::testing::{assert_close_f32, random_vec, to_f64};

use crate::{shape_str, unet_levels};

pub fn run(b: &mut Bench) {
    if !b.wants("relu") {
        return;
    }
    let gpu = b.gpu;
    // Correctness first, on an odd shape.
    let x = random_vec(1, 3 * 5 * 7);
    let (xt, y) = (gpu.upload(&x, &[3, 5, 7]), gpu.empty(&[3, 5, 7]));
    let mut enc = gpu.encoder();
    relu_forward(gpu, &mut enc, &xt, &y);
    gpu.submit(enc);
    assert_close_f32("relu", &gpu.read(&y), &reference::relu_forward(&to_f64(&x)), 1e-6);

    for shape in unet_levels() {
        let n: usize = shape.iter().product();
        let (x, y, dx) = (gpu.upload(&random_vec(2, n), &shape), gpu.empty(&shape), gpu.empty(&shape));
        let bytes = 4.0 * n as f64;
        b.case("relu_forward", &shape_str(&shape), None, Some(2.0 * bytes), |gpu, enc| relu_forward(gpu, enc, &x, &y));
        b.case("relu_backward", &shape_str(&shape), None, Some(4.0 * bytes), |gpu, enc| {
            relu_backward(gpu, enc, &y, &x, &dx)
        });
    }
}
