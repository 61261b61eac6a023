//! Softmax over channels, forward and backward: memory-bound (GB/s).

use crate::common::bench::Bench;
use unet_wgpu::ops::softmax::{reference, softmax_backward, softmax_forward};
use unet_wgpu::testing::{assert_close_f32, random_vec, to_f64};

use crate::{shape_str, unet_levels};

pub fn run(b: &mut Bench) {
    if !b.wants("softmax") {
        return;
    }
    let gpu = b.gpu;
    // Correctness first, on an odd shape.
    let dims = [2, 5, 3, 7];
    let x: Vec<f32> = random_vec(1, dims.iter().product()).iter().map(|v| v * 10.0).collect();
    let (xt, y) = (gpu.upload(&x, &dims), gpu.empty(&dims));
    let mut enc = gpu.encoder();
    softmax_forward(gpu, &mut enc, &xt, &y);
    gpu.submit(enc);
    assert_close_f32("softmax", &gpu.read(&y), &reference::softmax_forward(&to_f64(&x), dims), 1e-4);

    for shape in unet_levels() {
        let n: usize = shape.iter().product();
        let (x, y, dx) = (gpu.upload(&random_vec(2, n), &shape), gpu.empty(&shape), gpu.empty(&shape));
        let bytes = 4.0 * n as f64;
        // Minimum traffic: forward reads x and writes y; backward reads y and dy,
        // reads and writes dx.
        b.case("softmax_forward", &shape_str(&shape), None, Some(2.0 * bytes), |gpu, enc| {
            softmax_forward(gpu, enc, &x, &y)
        });
        b.case("softmax_backward", &shape_str(&shape), None, Some(4.0 * bytes), |gpu, enc| {
            softmax_backward(gpu, enc, &y, &x, &dx)
        });
    }
}
