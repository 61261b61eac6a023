//! Channel concatenation of two equal halves (a U-Net decoder's skip and
//! up-sampled tensors) forward and backward: memory-bound (GB/s). The forward and
//! the backward into fresh gradients are buffer copies (timed between timestamps
//! like a dispatch); the backward into gradients that already hold a sum is a kernel.

use crate::common::bench::Bench;
use unet_wgpu::ops::concat::{concat_backward_a, concat_backward_b, concat_forward, reference};
use unet_wgpu::testing::{assert_close_f32, random_vec, to_f64};
use unet_wgpu::Accumulate;

use crate::{shape_str, unet_levels};

pub fn run(b: &mut Bench) {
    if !b.wants("concat") {
        return;
    }
    let gpu = b.gpu;
    // Correctness first, on an odd shape.
    let (a, bb) = (random_vec(1, 2 * 3 * 35), random_vec(2, 2 * 2 * 35));
    let (at, bt, y) = (gpu.upload(&a, &[2, 3, 5, 7]), gpu.upload(&bb, &[2, 2, 5, 7]), gpu.empty(&[2, 5, 5, 7]));
    let mut enc = gpu.encoder();
    concat_forward(gpu, &mut enc, &at, &bt, &y);
    gpu.submit(enc);
    assert_close_f32("concat", &gpu.read(&y), &reference::concat_forward(&to_f64(&a), &to_f64(&bb), 2, 3, 2, 35), 0.0);

    for shape in unet_levels() {
        let [n, c, h, w] = shape;
        let len: usize = shape.iter().product();
        let (a, bb) = (gpu.upload(&random_vec(3, len), &shape), gpu.upload(&random_vec(4, len), &shape));
        let y = gpu.empty(&[n, 2 * c, h, w]);
        let bytes = 4.0 * len as f64; // one half
        let name = shape_str(&[n, 2 * c, h, w]);
        b.case("concat_forward", &name, None, Some(4.0 * bytes), |gpu, enc| concat_forward(gpu, enc, &a, &bb, &y));
        b.case("concat_backward", &name, None, Some(6.0 * bytes), |gpu, enc| {
            concat_backward_a(gpu, enc, &y, &a, Accumulate::Add);
            concat_backward_b(gpu, enc, &y, &bb, Accumulate::Add);
        });
        b.case("concat_backward_fresh", &name, None, Some(4.0 * bytes), |gpu, enc| {
            concat_backward_a(gpu, enc, &y, &a, Accumulate::Overwrite);
            concat_backward_b(gpu, enc, &y, &bb, Accumulate::Overwrite);
        });
    }
}
