//! Tree sums (over everything, and per channel) and their broadcast backward:
//! memory-bound (GB/s, counting the input once; the later passes are small).

use crate::common::bench::Bench;
use unet_wgpu::ops::reduce::{reference, sum_backward, sum_forward, sum_per_channel_forward};
use unet_wgpu::testing::{assert_close_f32, random_vec, to_f64};

use crate::{shape_str, unet_levels};

pub fn run(b: &mut Bench) {
    if !["sum_forward", "sum_per_channel_forward", "sum_backward"].iter().any(|n| b.wants(n)) {
        return;
    }
    let gpu = b.gpu;
    // Correctness first, on an odd shape that needs two passes.
    let dims = [2, 3, 71, 61];
    let x = random_vec(1, dims.iter().product());
    let (xt, total, per) = (gpu.upload(&x, &dims), gpu.empty(&[1]), gpu.empty(&[3]));
    let mut enc = gpu.encoder();
    sum_forward(gpu, &mut enc, &xt, &total);
    sum_per_channel_forward(gpu, &mut enc, &xt, &per);
    gpu.submit(enc);
    assert_close_f32("sum", &gpu.read(&total), &[reference::sum_forward(&to_f64(&x))], 1e-4);
    assert_close_f32("sum_per_channel", &gpu.read(&per), &reference::sum_per_channel_forward(&to_f64(&x), dims), 1e-4);

    for shape in unet_levels() {
        let len: usize = shape.iter().product();
        let x = gpu.upload(&random_vec(2, len), &shape);
        let (total, per, dy) = (gpu.empty(&[1]), gpu.empty(&[shape[1]]), gpu.upload(&[1.0], &[1]));
        let bytes = 4.0 * len as f64;
        let name = shape_str(&shape);
        b.case("sum_forward", &name, None, Some(bytes), |gpu, enc| sum_forward(gpu, enc, &x, &total));
        b.case("sum_per_channel_forward", &name, None, Some(bytes), |gpu, enc| {
            sum_per_channel_forward(gpu, enc, &x, &per)
        });
        b.case("sum_backward", &name, None, Some(2.0 * bytes), |gpu, enc| sum_backward(gpu, enc, &dy, &x));
    }
}
