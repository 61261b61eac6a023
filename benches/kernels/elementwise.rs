//! Elementwise add and scale, forward and backward: memory-bound (GB/s).

use crate::common::bench::Bench;
use unet_wgpu::ops::elementwise::{accumulate, add_forward, reference, scale_forward};
use unet_wgpu::testing::{assert_close_f32, random_vec, to_f64};

use crate::{shape_str, unet_levels};

pub fn run(b: &mut Bench) {
    if !["add_forward", "scale_forward", "elementwise_backward"].iter().any(|n| b.wants(n)) {
        return;
    }
    let gpu = b.gpu;
    // Correctness first, on an odd shape.
    let (x, z) = (random_vec(1, 3 * 5 * 7), random_vec(2, 3 * 5 * 7));
    let (xt, zt, y) = (gpu.upload(&x, &[3, 5, 7]), gpu.upload(&z, &[3, 5, 7]), gpu.empty(&[3, 5, 7]));
    let mut enc = gpu.encoder();
    add_forward(gpu, &mut enc, &xt, &zt, &y);
    gpu.submit(enc);
    assert_close_f32("add", &gpu.read(&y), &reference::add_forward(&to_f64(&x), &to_f64(&z)), 1e-6);

    for shape in unet_levels() {
        let len: usize = shape.iter().product();
        let (x, z) = (gpu.upload(&random_vec(3, len), &shape), gpu.upload(&random_vec(4, len), &shape));
        let (y, dx) = (gpu.empty(&shape), gpu.empty(&shape));
        let bytes = 4.0 * len as f64;
        let name = shape_str(&shape);
        b.case("add_forward", &name, None, Some(3.0 * bytes), |gpu, enc| add_forward(gpu, enc, &x, &z, &y));
        b.case("scale_forward", &name, None, Some(2.0 * bytes), |gpu, enc| scale_forward(gpu, enc, &x, 0.5, &y));
        b.case("elementwise_backward", &name, None, Some(3.0 * bytes), |gpu, enc| accumulate(gpu, enc, &x, 0.5, &dx));
    }
}
