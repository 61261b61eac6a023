//! 2x2 stride-2 transposed convolution, forward and both backward GEMMs: compute-bound (GFLOP/s).

use unet_wgpu::bench::Bench;
use unet_wgpu::ops::conv_transpose2d::{
    conv_transpose2d_backward_data, conv_transpose2d_backward_weight, conv_transpose2d_forward, reference,
};
use unet_wgpu::testing::{assert_close_f32, random_vec, to_f64};

use crate::{shape_str, UNET_LEVELS};

pub fn run(b: &mut Bench) {
    let kernels = ["forward", "backward_data", "backward_weight"];
    if !kernels.iter().any(|k| b.wants(&format!("conv_transpose2d_{k}"))) {
        return;
    }
    let gpu = b.gpu;
    // Correctness first, on an odd shape.
    let (dims, co) = ([2, 3, 5, 7], 5);
    let (x, w, dy) = (random_vec(1, 2 * 3 * 5 * 7), random_vec(2, 3 * co * 4), random_vec(3, 2 * co * 10 * 14));
    let (xt, wt, dyt) = (gpu.upload(&x, &dims), gpu.upload(&w, &[3, co, 2, 2]), gpu.upload(&dy, &[2, co, 10, 14]));
    let (y, dx, dw) = (gpu.empty(&[2, co, 10, 14]), gpu.empty(&dims), gpu.empty(&[3, co, 2, 2]));
    let mut enc = gpu.encoder();
    enc.clear(&dx);
    enc.clear(&dw);
    conv_transpose2d_forward(gpu, &mut enc, &xt, &wt, None, &y);
    conv_transpose2d_backward_data(gpu, &mut enc, &wt, &dyt, &dx);
    conv_transpose2d_backward_weight(gpu, &mut enc, &xt, &dyt, &dw, None);
    gpu.submit(enc);
    let (xf, wf, dyf) = (to_f64(&x), to_f64(&w), to_f64(&dy));
    assert_close_f32("y", &gpu.read(&y), &reference::conv_transpose2d_forward(&xf, &wf, None, dims, co), 1e-4);
    assert_close_f32("dx", &gpu.read(&dx), &reference::conv_transpose2d_backward_data(&dyf, &wf, dims, co), 1e-3);
    let want_dw = reference::conv_transpose2d_backward_weight(&xf, &dyf, dims, co).0;
    assert_close_f32("dw", &gpu.read(&dw), &want_dw, 1e-3);

    // The decoder's up-convolutions: level l+1 (x) to level l (y), channels halving.
    for pair in UNET_LEVELS.windows(2).rev() {
        let ([n, co, h2, w2], [_, ci, h, wd]) = (pair[0], pair[1]);
        let (xs, ys, ws) = ([n, ci, h, wd], [n, co, h2, w2], [ci, co, 2, 2]);
        let x = gpu.upload(&random_vec(4, xs.iter().product()), &xs);
        let w = gpu.upload(&random_vec(5, ws.iter().product()), &ws);
        let bias = gpu.upload(&random_vec(6, co), &[co]);
        let dy = gpu.upload(&random_vec(7, ys.iter().product()), &ys);
        let (y, dx, dw, db) = (gpu.empty(&ys), gpu.empty(&xs), gpu.empty(&ws), gpu.empty(&[co]));
        let flops = Some(2.0 * (n * ci * co * 4 * h * wd) as f64);
        let shape = format!("{} -> {co}", shape_str(&xs));
        b.case("conv_transpose2d_forward", &shape, flops, None, |gpu, enc| {
            conv_transpose2d_forward(gpu, enc, &x, &w, Some(&bias), &y)
        });
        b.case("conv_transpose2d_backward_data", &shape, flops, None, |gpu, enc| {
            conv_transpose2d_backward_data(gpu, enc, &w, &dy, &dx)
        });
        b.case("conv_transpose2d_backward_weight", &shape, flops, None, |gpu, enc| {
            conv_transpose2d_backward_weight(gpu, enc, &x, &dy, &dw, Some(&db))
        });
    }
}
