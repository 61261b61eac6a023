//! Per-channel bias forward and backward (data and bias): memory-bound (GB/s).

use crate::common::bench::Bench;
use unet_wgpu::ops::bias_add::{bias_add_backward_bias, bias_add_backward_data, bias_add_forward, reference};
use unet_wgpu::testing::{assert_close_f32, random_vec, to_f64};

use crate::{shape_str, unet_levels};

pub fn run(b: &mut Bench) {
    if !b.wants("bias_add") {
        return;
    }
    let gpu = b.gpu;
    // Correctness first, on an odd shape.
    let dims = [2, 3, 5, 7];
    let (x, bias) = (random_vec(1, dims.iter().product()), random_vec(2, 3));
    let (xt, bt, y) = (gpu.upload(&x, &dims), gpu.upload(&bias, &[3]), gpu.empty(&dims));
    let db = gpu.zeros(&mut gpu.encoder(), &[3]);
    let mut enc = gpu.encoder();
    enc.clear(&db);
    bias_add_forward(gpu, &mut enc, &xt, &bt, &y);
    bias_add_backward_bias(gpu, &mut enc, &xt, &db);
    gpu.submit(enc);
    let want = reference::bias_add_forward(&to_f64(&x), &to_f64(&bias), dims);
    assert_close_f32("bias_add", &gpu.read(&y), &want, 1e-6);
    assert_close_f32("bias_add db", &gpu.read(&db), &reference::bias_add_backward(&to_f64(&x), dims).1, 1e-5);

    for shape in unet_levels() {
        let len: usize = shape.iter().product();
        let c = shape[1];
        let x = gpu.upload(&random_vec(3, len), &shape);
        let (bias, db) = (gpu.upload(&random_vec(4, c), &[c]), gpu.empty(&[c]));
        let (y, dx) = (gpu.empty(&shape), gpu.empty(&shape));
        let bytes = 4.0 * len as f64;
        b.case("bias_add_forward", &shape_str(&shape), None, Some(2.0 * bytes), |gpu, enc| {
            bias_add_forward(gpu, enc, &x, &bias, &y)
        });
        b.case("bias_add_backward_data", &shape_str(&shape), None, Some(3.0 * bytes), |gpu, enc| {
            bias_add_backward_data(gpu, enc, &x, &dx)
        });
        b.case("bias_add_backward_bias", &shape_str(&shape), None, Some(bytes), |gpu, enc| {
            bias_add_backward_bias(gpu, enc, &x, &db)
        });
    }
}
