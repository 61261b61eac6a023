//! 2x2 max pooling forward and backward: memory-bound (GB/s).

use crate::common::bench::Bench;
use unet_wgpu::ops::maxpool2d::{maxpool2d_backward, maxpool2d_forward, reference};
use unet_wgpu::testing::{assert_close_f32, random_vec, to_f64};

use crate::{shape_str, unet_levels};

pub fn run(b: &mut Bench) {
    if !b.wants("maxpool2d") {
        return;
    }
    let gpu = b.gpu;
    // Correctness first, on an odd shape.
    let dims = [2, 3, 5, 7];
    let x = random_vec(1, dims.iter().product());
    let (xt, y, argmax) = (gpu.upload(&x, &dims), gpu.empty(&[2, 3, 2, 3]), gpu.empty(&[2, 3, 2, 3]));
    let mut enc = gpu.encoder();
    maxpool2d_forward(gpu, &mut enc, &xt, &y, &argmax);
    gpu.submit(enc);
    let (want_y, want_argmax) = reference::maxpool2d_forward(&to_f64(&x), dims);
    assert_close_f32("maxpool2d", &gpu.read(&y), &want_y, 1e-6);
    assert_eq!(gpu.read_u32(&argmax), want_argmax, "maxpool2d argmax");

    for shape in unet_levels() {
        let [n, c, h, w] = shape;
        let out = [n, c, h / 2, w / 2];
        let len: usize = shape.iter().product();
        let x = gpu.upload(&random_vec(2, len), &shape);
        let (y, argmax, dx) = (gpu.empty(&out), gpu.empty(&out), gpu.empty(&shape));
        let (big, small) = (4.0 * len as f64, len as f64); // bytes of x, and of y (a quarter of x)
        b.case("maxpool2d_forward", &shape_str(&shape), None, Some(big + 2.0 * small), |gpu, enc| {
            maxpool2d_forward(gpu, enc, &x, &y, &argmax)
        });
        // Backward: argmax and dy read, and each window's winner in dx read and written.
        b.case("maxpool2d_backward", &shape_str(&shape), None, Some(4.0 * small), |gpu, enc| {
            maxpool2d_backward(gpu, enc, &argmax, &y, &dx)
        });
    }
}
