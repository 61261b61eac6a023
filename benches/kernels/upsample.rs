//! 2x upsampling (nearest, bilinear), forward and backward: memory-bound (GB/s).

use crate::common::bench::Bench;
use unet_wgpu::ops::upsample::{reference, upsample_backward, upsample_forward, Upsample};
use unet_wgpu::testing::{assert_close_f32, random_vec, to_f64};

use crate::{shape_str, unet_levels};

pub fn run(b: &mut Bench) {
    let kernels = ["nearest_forward", "nearest_backward", "bilinear_forward", "bilinear_backward"];
    if !kernels.iter().any(|k| b.wants(&format!("upsample_{k}"))) {
        return;
    }
    let gpu = b.gpu;
    for mode in [Upsample::Nearest, Upsample::Bilinear] {
        // Correctness first, on an odd shape.
        let dims = [2, 3, 5, 7];
        let x = random_vec(1, dims.iter().product());
        let dy = random_vec(2, 4 * x.len());
        let (xt, y) = (gpu.upload(&x, &dims), gpu.empty(&[2, 3, 10, 14]));
        let (dyt, dx) = (gpu.upload(&dy, &[2, 3, 10, 14]), gpu.empty(&dims));
        let mut enc = gpu.encoder();
        enc.clear(&dx);
        upsample_forward(gpu, &mut enc, mode, &xt, &y);
        upsample_backward(gpu, &mut enc, mode, &dyt, &dx);
        gpu.submit(enc);
        assert_close_f32("upsample", &gpu.read(&y), &reference::upsample_forward(mode, &to_f64(&x), dims), 1e-4);
        assert_close_f32("upsample dx", &gpu.read(&dx), &reference::upsample_backward(mode, &to_f64(&dy), dims), 1e-3);
    }

    // The decoder upsamples every level but the top one: x is that level's shape.
    for [n, c, h, w] in &unet_levels()[1..] {
        let (small, big) = ([*n, *c, *h, *w], [*n, *c, 2 * h, 2 * w]);
        let len: usize = small.iter().product();
        let x = gpu.upload(&random_vec(3, len), &small);
        let (y, dy, dx) = (gpu.empty(&big), gpu.upload(&random_vec(4, 4 * len), &big), gpu.empty(&small));
        // Minimum traffic: read x, write y (4x); backward also reads and writes dx.
        let fwd_bytes = 4.0 * 5.0 * len as f64;
        let bwd_bytes = 4.0 * 6.0 * len as f64;
        for (mode, name) in [(Upsample::Nearest, "nearest"), (Upsample::Bilinear, "bilinear")] {
            let shape = shape_str(&small);
            b.case(&format!("upsample_{name}_forward"), &shape, None, Some(fwd_bytes), |gpu, enc| {
                upsample_forward(gpu, enc, mode, &x, &y)
            });
            b.case(&format!("upsample_{name}_backward"), &shape, None, Some(bwd_bytes), |gpu, enc| {
                upsample_backward(gpu, enc, mode, &dy, &dx)
            });
        }
    }
}
