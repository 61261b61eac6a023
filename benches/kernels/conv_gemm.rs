//! The convolutions as workgroup-memory GEMMs (the GPU family, `--tiling gpu`): every direction of
//! conv2d at the U-Net's 3x3 levels and of the up-convolution into each level, with the tilings of
//! `gpu.tuning().conv_gemm`, or `ConvGemm::default()` where the tuning has register tiles.
//! Compute-bound: GFLOP/s counting 2 flops a multiply-add of the GEMM. Timed only when the filter
//! names them (`gemm`, or `conv` on a hardware adapter): on a CPU driver they take minutes.

use crate::common::bench::Bench;
use unet_wgpu::ops::conv2d::gemm::{
    conv2d_backward_data_gemm, conv2d_backward_weight_gemm, conv2d_forward_gemm, BackwardData, BackwardWeight, Forward,
};
use unet_wgpu::ops::conv2d::{reference, Conv2d, Epilogue};
use unet_wgpu::ops::conv_transpose2d::gemm::{
    conv_transpose2d_backward_data_gemm, conv_transpose2d_backward_weight_gemm, conv_transpose2d_forward_gemm,
};
use unet_wgpu::ops::conv_transpose2d::reference as ct_reference;
use unet_wgpu::testing::{assert_close_f32, random_vec, to_f64};
use unet_wgpu::tune::is_software;
use unet_wgpu::Accumulate;

use crate::{shape_str, unet_levels};

pub fn run(b: &mut Bench) {
    let gpu = b.gpu;
    let named = b.filter.contains("gemm") || (b.filter.contains("conv") && !is_software(&gpu.info));
    if !named {
        return;
    }
    let g = gpu.tuning().conv_gemm.unwrap_or_default();
    println!("conv gemm tilings: {g}");

    // Correctness first, on odd shapes, for every kernel timed below.
    let (xd, wd, p) = ([2, 5, 7, 9], [6, 5, 3, 3], Conv2d::new(1, 1));
    let (x, w, dy) = (random_vec(1, 2 * 5 * 63), random_vec(2, 6 * 45), random_vec(3, 2 * 6 * 63));
    let (xt, wt, dyt) = (gpu.upload(&x, &xd), gpu.upload(&w, &wd), gpu.upload(&dy, &[2, 6, 7, 9]));
    let (y, dx, dw) = (gpu.empty(&[2, 6, 7, 9]), gpu.empty(&xd), gpu.empty(&wd));
    let (cx, cw, cdy) = (random_vec(4, 2 * 5 * 12), random_vec(5, 5 * 3 * 4), random_vec(6, 2 * 3 * 48));
    let (cxt, cwt, cdyt) =
        (gpu.upload(&cx, &[2, 5, 3, 4]), gpu.upload(&cw, &[5, 3, 2, 2]), gpu.upload(&cdy, &[2, 3, 6, 8]));
    let (cy, cdx, cdw) = (gpu.empty(&[2, 3, 6, 8]), gpu.empty(&[2, 5, 3, 4]), gpu.empty(&[5, 3, 2, 2]));
    let mut enc = gpu.encoder();
    enc.clear(&dw);
    enc.clear(&cdw);
    let f = Forward { x: &xt, w: &wt, b: None, y: &y, p, epilogue: Epilogue::Identity, tiling: None };
    conv2d_forward_gemm(gpu, &mut enc, &f, &g.conv2d_forward);
    let a = BackwardData { dy: &dyt, w: &wt, dx: &dx, p, acc: Accumulate::Overwrite, tiling: None };
    conv2d_backward_data_gemm(gpu, &mut enc, &a, &g.conv2d_backward_data);
    let a = BackwardWeight { x: &xt, dy: &dyt, dw: &dw, db: None, p, tiling: None };
    conv2d_backward_weight_gemm(gpu, &mut enc, &a, &g.conv2d_backward_weight);
    conv_transpose2d_forward_gemm(gpu, &mut enc, &cxt, &cwt, None, &cy, &g.conv_transpose2d_forward);
    let data = &g.conv_transpose2d_backward_data;
    conv_transpose2d_backward_data_gemm(gpu, &mut enc, (&cwt, &cdyt, &cdx), Accumulate::Overwrite, data);
    let weight = &g.conv_transpose2d_backward_weight;
    conv_transpose2d_backward_weight_gemm(gpu, &mut enc, (&cxt, &cdyt), (&cdw, None), weight);
    gpu.submit(enc);
    let (xf, wf, dyf) = (to_f64(&x), to_f64(&w), to_f64(&dy));
    assert_close_f32("gemm forward", &gpu.read(&y), &reference::conv2d_forward(&xf, xd, &wf, wd, None, &p), 1e-4);
    let want = reference::conv2d_backward_data(&dyf, &wf, xd, wd, &p);
    assert_close_f32("gemm backward data", &gpu.read(&dx), &want, 1e-3);
    let want = reference::conv2d_backward_weight(&xf, &dyf, xd, wd, &p).0;
    assert_close_f32("gemm backward weight", &gpu.read(&dw), &want, 1e-3);
    let (cxf, cwf, cdyf) = (to_f64(&cx), to_f64(&cw), to_f64(&cdy));
    let want = ct_reference::conv_transpose2d_forward(&cxf, &cwf, None, [2, 5, 3, 4], 3);
    assert_close_f32("gemm transposed forward", &gpu.read(&cy), &want, 1e-4);
    let want = ct_reference::conv_transpose2d_backward_data(&cdyf, &cwf, [2, 5, 3, 4], 3);
    assert_close_f32("gemm transposed backward data", &gpu.read(&cdx), &want, 1e-3);
    let want = ct_reference::conv_transpose2d_backward_weight(&cxf, &cdyf, [2, 5, 3, 4], 3).0;
    assert_close_f32("gemm transposed backward weight", &gpu.read(&cdw), &want, 1e-3);

    // The 3x3 "same" convolutions of each level, and the up-convolution from the level below
    // (2C channels at half the size) into it.
    for [n, c, h, wd] in unet_levels() {
        let p = Conv2d::new(1, 1);
        let xd = [n, c, h, wd];
        let flops = 2.0 * (n * c * h * wd * c * 9) as f64;
        let x = gpu.upload(&random_vec(7, xd.iter().product()), &xd);
        let w = gpu.upload(&random_vec(8, c * c * 9), &[c, c, 3, 3]);
        let bias = gpu.upload(&random_vec(9, c), &[c]);
        let dy = gpu.upload(&random_vec(10, xd.iter().product()), &xd);
        let (y, dx, dw, db) = (gpu.empty(&xd), gpu.empty(&xd), gpu.empty(&[c, c, 3, 3]), gpu.empty(&[c]));
        let shape = format!("{} k3x3 o{c}", shape_str(&xd));
        b.case("conv2d_gemm_forward_relu", &shape, Some(flops), None, |gpu, enc| {
            let f = Forward { x: &x, w: &w, b: Some(&bias), y: &y, p, epilogue: Epilogue::Relu, tiling: None };
            conv2d_forward_gemm(gpu, enc, &f, &g.conv2d_forward)
        });
        b.case("conv2d_gemm_backward_data", &shape, Some(flops), None, |gpu, enc| {
            let a = BackwardData { dy: &dy, w: &w, dx: &dx, p, acc: Accumulate::Overwrite, tiling: None };
            conv2d_backward_data_gemm(gpu, enc, &a, &g.conv2d_backward_data)
        });
        b.case("conv2d_gemm_backward_weight", &shape, Some(flops), None, |gpu, enc| {
            let a = BackwardWeight { x: &x, dy: &dy, dw: &dw, db: Some(&db), p, tiling: None };
            conv2d_backward_weight_gemm(gpu, enc, &a, &g.conv2d_backward_weight)
        });
        if h < 2 || wd < 2 {
            continue;
        }
        let small = [n, 2 * c, h / 2, wd / 2];
        let flops = 2.0 * (n * 2 * c * (h / 2) * (wd / 2) * c * 4) as f64;
        let x = gpu.upload(&random_vec(11, small.iter().product()), &small);
        let w = gpu.upload(&random_vec(12, 2 * c * c * 4), &[2 * c, c, 2, 2]);
        let (dx, dw) = (gpu.empty(&small), gpu.empty(&[2 * c, c, 2, 2]));
        let shape = format!("{} -> {c}", shape_str(&small));
        b.case("conv_transpose2d_gemm_forward", &shape, Some(flops), None, |gpu, enc| {
            conv_transpose2d_forward_gemm(gpu, enc, &x, &w, Some(&bias), &y, &g.conv_transpose2d_forward)
        });
        b.case("conv_transpose2d_gemm_backward_data", &shape, Some(flops), None, |gpu, enc| {
            let data = &g.conv_transpose2d_backward_data;
            conv_transpose2d_backward_data_gemm(gpu, enc, (&w, &dy, &dx), Accumulate::Overwrite, data)
        });
        b.case("conv_transpose2d_gemm_backward_weight", &shape, Some(flops), None, |gpu, enc| {
            let weight = &g.conv_transpose2d_backward_weight;
            conv_transpose2d_backward_weight_gemm(gpu, enc, (&x, &dy), (&dw, Some(&db)), weight)
        });
    }
}
