//! Dropout forward and backward: memory-bound (GB/s).

use crate::common::bench::Bench;
use unet_wgpu::ops::dropout::{dropout_backward, dropout_forward, reference};
use unet_wgpu::testing::{assert_close_f32, random_vec, to_f64};

use crate::{shape_str, unet_levels};

pub fn run(b: &mut Bench) {
    if !b.wants("dropout") {
        return;
    }
    let gpu = b.gpu;
    let (p, seed) = (0.5, 1234);
    // Correctness first, on an odd shape.
    let x = random_vec(1, 3 * 5 * 7);
    let (xt, y) = (gpu.upload(&x, &[3, 5, 7]), gpu.empty(&[3, 5, 7]));
    let mut enc = gpu.encoder();
    dropout_forward(gpu, &mut enc, &xt, &y, p, seed);
    gpu.submit(enc);
    assert_close_f32("dropout", &gpu.read(&y), &reference::dropout_forward(&to_f64(&x), p, seed), 1e-6);

    for shape in unet_levels() {
        let n: usize = shape.iter().product();
        let (x, y, dx) = (gpu.upload(&random_vec(2, n), &shape), gpu.empty(&shape), gpu.empty(&shape));
        let bytes = 4.0 * n as f64;
        // Forward reads x, writes y; backward reads dy, reads and writes dx.
        b.case("dropout_forward", &shape_str(&shape), None, Some(2.0 * bytes), |gpu, enc| {
            dropout_forward(gpu, enc, &x, &y, p, seed)
        });
        b.case("dropout_backward", &shape_str(&shape), None, Some(3.0 * bytes), |gpu, enc| {
            dropout_backward(gpu, enc, &x, &dx, p, seed)
        });
    }
}
