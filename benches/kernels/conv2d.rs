//! Convolution forward (register and workgroup-memory tilings), backward data and backward
//! weight at the U-Net's 3x3 levels and its final 1x1: compute-bound (GFLOP/s, counting
//! `2*N*O*OH*OW*I*KH*KW` for each of the three).
//!
//! The register tilings are the GPU's tuning (`gpu.tuning()`: the tuning cache's entry for the
//! adapter, else the builtin one), one per kernel; `CONV_TILING=wg,rows,tm,bw_threads` sets all
//! three (for sweeps); `CONV_LEVELS=0,5` times
//! only those cases (0..=4: the 3x3 levels from 16ch@256² down, 5: the 1x1 head). The
//! workgroup-memory forward is timed only when the filter names it (`conv2d_forward_shared`):
//! it takes tens of seconds on a CPU driver.

use crate::common::bench::Bench;
use unet_wgpu::ops::conv2d::{
    conv2d_backward_data, conv2d_backward_weight, conv2d_forward, conv2d_forward_shared, reference, BackwardData,
    BackwardWeight, Conv2d, Epilogue, Forward, SharedTiling, Tiling,
};
use unet_wgpu::testing::{assert_close_f32, random_vec, to_f64};
use unet_wgpu::{Accumulate, Gpu};

use crate::{shape_str, unet_levels};

/// The tilings of forward, backward data and backward weight.
fn tilings(gpu: &Gpu) -> [Tiling; 3] {
    let Ok(s) = std::env::var("CONV_TILING") else {
        let t = gpu.tuning();
        return [t.conv2d_forward, t.conv2d_backward_data, t.conv2d_backward_weight];
    };
    let usage = "CONV_TILING=wg,rows,tm,bw_threads";
    let v: Vec<u32> = s.split(',').map(|t| t.trim().parse().expect(usage)).collect();
    assert_eq!(v.len(), 4, "{usage}");
    [Tiling { wg: v[0], rows: v[1], tm: v[2], bw_threads: v[3] }; 3]
}

pub fn run(b: &mut Bench) {
    let names = ["conv2d_forward", "conv2d_forward_shared", "conv2d_backward_data", "conv2d_backward_weight"];
    if !names.iter().any(|n| b.wants(n)) {
        return;
    }
    let gpu = b.gpu;
    let [t, td, tw] = tilings(gpu);
    let st = SharedTiling::default();

    // Correctness first, on an odd shape, for every kernel timed below.
    let (xd, wd, p) = ([2, 5, 7, 9], [6, 5, 3, 3], Conv2d::new(1, 1));
    let (x, w, dy) = (random_vec(1, 2 * 5 * 7 * 9), random_vec(2, 6 * 5 * 9), random_vec(3, 2 * 6 * 7 * 9));
    let (xt, wt, dyt) = (gpu.upload(&x, &xd), gpu.upload(&w, &wd), gpu.upload(&dy, &[2, 6, 7, 9]));
    let (y, ys) = (gpu.empty(&[2, 6, 7, 9]), gpu.empty(&[2, 6, 7, 9]));
    let (dx, dw) = (gpu.empty(&xd), gpu.empty(&wd));
    let mut enc = gpu.encoder();
    enc.clear(&dx);
    enc.clear(&dw);
    conv2d_forward(
        gpu,
        &mut enc,
        &Forward { x: &xt, w: &wt, b: None, y: &y, p, epilogue: Epilogue::Identity, tiling: Some(t) },
    );
    conv2d_forward_shared(
        gpu,
        &mut enc,
        &Forward { x: &xt, w: &wt, b: None, y: &ys, p, epilogue: Epilogue::Identity, tiling: None },
        &st,
    );
    conv2d_backward_data(
        gpu,
        &mut enc,
        &BackwardData { dy: &dyt, w: &wt, dx: &dx, p, acc: Accumulate::Add, tiling: Some(td) },
    );
    conv2d_backward_weight(gpu, &mut enc, &BackwardWeight { x: &xt, dy: &dyt, dw: &dw, db: None, p, tiling: Some(tw) });
    gpu.submit(enc);
    let (xf, wf, dyf) = (to_f64(&x), to_f64(&w), to_f64(&dy));
    let want_y = reference::conv2d_forward(&xf, xd, &wf, wd, None, &p);
    assert_close_f32("conv2d forward", &gpu.read(&y), &want_y, 1e-4);
    assert_close_f32("conv2d forward (shared)", &gpu.read(&ys), &want_y, 1e-4);
    assert_close_f32(
        "conv2d backward data",
        &gpu.read(&dx),
        &reference::conv2d_backward_data(&dyf, &wf, xd, wd, &p),
        1e-3,
    );
    let (want_dw, _) = reference::conv2d_backward_weight(&xf, &dyf, xd, wd, &p);
    assert_close_f32("conv2d backward weight", &gpu.read(&dw), &want_dw, 1e-3);

    // The weight gradient once more on larger shapes, where a thread walks many dy rows.
    for (xd, wd) in [([2, 16, 96, 96], [16, 16, 3, 3]), ([1, 64, 24, 24], [64, 64, 3, 3])] {
        let p = Conv2d::new(1, 1);
        let yd = [xd[0], wd[0], xd[2], xd[3]];
        let (x, dy) = (random_vec(8, xd.iter().product()), random_vec(9, yd.iter().product()));
        let (xt, dyt, dw) = (gpu.upload(&x, &xd), gpu.upload(&dy, &yd), gpu.empty(&wd));
        let mut enc = gpu.encoder();
        enc.clear(&dw);
        conv2d_backward_weight(
            gpu,
            &mut enc,
            &BackwardWeight { x: &xt, dy: &dyt, dw: &dw, db: None, p, tiling: Some(tw) },
        );
        gpu.submit(enc);
        let (want_dw, _) = reference::conv2d_backward_weight(&to_f64(&x), &to_f64(&dy), xd, wd, &p);
        assert_close_f32(&format!("conv2d backward weight {xd:?}"), &gpu.read(&dw), &want_dw, 1e-3);
    }

    // The 3x3 "same" convs of each level (channels in = out), then the final 1x1 16 -> 6.
    let mut cases: Vec<([usize; 4], [usize; 4], Conv2d)> =
        unet_levels().iter().map(|&[n, c, h, w]| ([n, c, h, w], [c, c, 3, 3], Conv2d::new(1, 1))).collect();
    cases.push(([4, 16, 256, 256], [6, 16, 1, 1], Conv2d::new(1, 0)));
    let levels: Option<Vec<usize>> = std::env::var("CONV_LEVELS")
        .ok()
        .map(|s| s.split(',').map(|v| v.trim().parse().expect("CONV_LEVELS=0,1,..")).collect());
    let shared = b.filter.contains("shared");
    for (k, (xd, wd, p)) in cases.into_iter().enumerate() {
        if levels.as_ref().is_some_and(|l| !l.contains(&k)) {
            continue;
        }
        let [oh, ow] = p.out_size([xd[2], xd[3]], [wd[2], wd[3]]);
        let yd = [xd[0], wd[0], oh, ow];
        let flops = 2.0 * (yd.iter().product::<usize>() * wd[1] * wd[2] * wd[3]) as f64;
        let x = gpu.upload(&random_vec(4, xd.iter().product()), &xd);
        let w = gpu.upload(&random_vec(5, wd.iter().product()), &wd);
        let bias = gpu.upload(&random_vec(6, wd[0]), &[wd[0]]);
        let dy = gpu.upload(&random_vec(7, yd.iter().product()), &yd);
        let (y, dx, dw, db) = (gpu.empty(&yd), gpu.empty(&xd), gpu.empty(&wd), gpu.empty(&[wd[0]]));
        let shape = format!("{} k{}x{} o{}", shape_str(&xd), wd[2], wd[3], wd[0]);
        b.case("conv2d_forward", &shape, Some(flops), None, |gpu, enc| {
            conv2d_forward(
                gpu,
                enc,
                &Forward { x: &x, w: &w, b: Some(&bias), y: &y, p, epilogue: Epilogue::Identity, tiling: Some(t) },
            )
        });
        let relu_dropout = Epilogue::ReluDropout { p: 0.1, seed: 1 };
        b.case("conv2d_forward_relu_dropout", &shape, Some(flops), None, |gpu, enc| {
            conv2d_forward(
                gpu,
                enc,
                &Forward { x: &x, w: &w, b: Some(&bias), y: &y, p, epilogue: relu_dropout, tiling: Some(t) },
            )
        });
        if shared {
            b.case("conv2d_forward_shared", &shape, Some(flops), None, |gpu, enc| {
                conv2d_forward_shared(
                    gpu,
                    enc,
                    &Forward { x: &x, w: &w, b: Some(&bias), y: &y, p, epilogue: Epilogue::Identity, tiling: None },
                    &st,
                )
            });
        }
        b.case("conv2d_backward_data", &shape, Some(flops), None, |gpu, enc| {
            conv2d_backward_data(
                gpu,
                enc,
                &BackwardData { dy: &dy, w: &w, dx: &dx, p, acc: Accumulate::Add, tiling: Some(td) },
            )
        });
        b.case("conv2d_backward_weight", &shape, Some(flops), None, |gpu, enc| {
            conv2d_backward_weight(
                gpu,
                enc,
                &BackwardWeight { x: &x, dy: &dy, dw: &dw, db: Some(&db), p, tiling: Some(tw) },
            )
        });
    }
}
