//! 2x2 stride-2 transposed convolution, forward and both backward GEMMs: compute-bound (GFLOP/s,
//! counting `2*N*I*O*4*H*W` for each); the backward data both adding into dx and overwriting a
//! fresh one (`_fresh`, what the tape runs for the U-Net). Then the fused up-convolution +
//! concatenation of the U-Net decoder (GFLOP/s of the convolution only, though the times include
//! the skip tensor's buffer copies): its forward (the kernel writing into the concatenation
//! buffer, and the copy of the skip tensor), and its backward (every gradient, dx and dskip fresh
//! as on the tape) next to the unfused backward it replaces (`concat`'s backward copying dy's
//! halves out, then the convolution's kernels on the first).
//!
//! `CT_LEVELS=0,3` times only those levels (0: the output at 16ch@256², ... 3: at 128ch@32²).

use crate::common::bench::Bench;
use unet_wgpu::ops::concat::{concat_backward_a, concat_backward_b, reference as concat_reference};
use unet_wgpu::ops::conv_transpose2d::{
    conv_transpose2d_backward_data, conv_transpose2d_backward_weight, conv_transpose2d_concat_backward,
    conv_transpose2d_concat_forward, conv_transpose2d_forward, reference, BackwardData, BackwardWeight, ConcatGrads,
    Forward,
};
use unet_wgpu::testing::{assert_close_f32, random_vec, to_f64};
use unet_wgpu::{Accumulate, Gpu};

use crate::{shape_str, unet_levels};

pub fn run(b: &mut Bench) {
    let kernels = ["forward", "backward_data", "backward_weight", "concat_forward", "concat_backward"];
    if !kernels.iter().any(|k| b.wants(&format!("conv_transpose2d_{k}"))) {
        return;
    }
    let gpu = b.gpu;
    // Correctness first, on odd shapes: W = 7 takes the general kernels, W = 8 the quad ones.
    for (dims, co) in [([2, 3, 5, 7], 5), ([2, 3, 5, 8], 5)] {
        check(gpu, dims, co);
        check_concat(gpu, dims, co, 4);
    }

    let levels: Option<Vec<usize>> = std::env::var("CT_LEVELS")
        .ok()
        .map(|s| s.split(',').map(|v| v.trim().parse().expect("CT_LEVELS=0,1,..")).collect());
    // The decoder's up-convolutions: level l+1 (x) to level l (y), channels halving; the skip
    // tensor of level l has as many channels as y.
    for (level, pair) in unet_levels().windows(2).enumerate().rev() {
        if levels.as_ref().is_some_and(|l| !l.contains(&level)) {
            continue;
        }
        let ([n, co, h2, w2], [_, ci, h, wd]) = (pair[0], pair[1]);
        let (xs, ys, ws) = ([n, ci, h, wd], [n, co, h2, w2], [ci, co, 2, 2]);
        let x = gpu.upload(&random_vec(4, xs.iter().product()), &xs);
        let w = gpu.upload(&random_vec(5, ws.iter().product()), &ws);
        let bias = gpu.upload(&random_vec(6, co), &[co]);
        let dy = gpu.upload(&random_vec(7, ys.iter().product()), &ys);
        let (y, dx, dw, db) = (gpu.empty(&ys), gpu.empty(&xs), gpu.empty(&ws), gpu.empty(&[co]));
        let conv_flops = 2.0 * (n * ci * co * 4 * h * wd) as f64;
        let flops = Some(conv_flops);
        let shape = format!("{} -> {co}", shape_str(&xs));
        b.case("conv_transpose2d_forward", &shape, flops, None, |gpu, enc| {
            conv_transpose2d_forward(gpu, enc, &Forward { x: &x, w: &w, b: Some(&bias), y: &y, workgroups: None })
        });
        b.case("conv_transpose2d_backward_data", &shape, flops, None, |gpu, enc| {
            conv_transpose2d_backward_data(
                gpu,
                enc,
                &BackwardData { w: &w, dy: &dy, dx: &dx, acc: Accumulate::Add, workgroups: None },
            )
        });
        b.case("conv_transpose2d_backward_data_fresh", &shape, flops, None, |gpu, enc| {
            conv_transpose2d_backward_data(
                gpu,
                enc,
                &BackwardData { w: &w, dy: &dy, dx: &dx, acc: Accumulate::Overwrite, workgroups: None },
            )
        });
        b.case("conv_transpose2d_backward_weight", &shape, flops, None, |gpu, enc| {
            conv_transpose2d_backward_weight(
                gpu,
                enc,
                &BackwardWeight { x: &x, dy: &dy, dw: &dw, db: Some(&db), workgroups: None },
            )
        });

        if !b.wants("conv_transpose2d_concat") {
            continue;
        }
        let merged = [n, 2 * co, h2, w2];
        let skip = gpu.upload(&random_vec(8, ys.iter().product()), &ys);
        let dmerged = gpu.upload(&random_vec(9, merged.iter().product()), &merged);
        let (y2, dskip, dup) = (gpu.empty(&merged), gpu.empty(&ys), gpu.empty(&ys));
        let shape = format!("{} -> {co} + {co}", shape_str(&xs));
        b.case("conv_transpose2d_concat_forward", &shape, flops, None, |gpu, enc| {
            conv_transpose2d_concat_forward(gpu, enc, &x, &w, Some(&bias), &skip, &y2)
        });
        // As on the tape: dx and dskip are fresh (their first contribution), dw and db sums.
        let fresh = Accumulate::Overwrite;
        let grads = ConcatGrads { dx: Some((&dx, fresh)), dw: Some(&dw), db: Some(&db), dskip: Some((&dskip, fresh)) };
        b.case("conv_transpose2d_concat_backward", &shape, Some(2.0 * conv_flops), None, |gpu, enc| {
            conv_transpose2d_concat_backward(gpu, enc, &x, &w, &skip, &dmerged, grads)
        });
        b.case("conv_transpose2d_concat_backward_unfused", &shape, Some(2.0 * conv_flops), None, |gpu, enc| {
            // The unfused tape: concat's backward copies dy's halves out into fresh gradient
            // buffers, then the up-convolution's kernels read the first.
            concat_backward_a(gpu, enc, &dmerged, &dup, fresh);
            concat_backward_b(gpu, enc, &dmerged, &dskip, fresh);
            conv_transpose2d_backward_data(
                gpu,
                enc,
                &BackwardData { w: &w, dy: &dup, dx: &dx, acc: fresh, workgroups: None },
            );
            conv_transpose2d_backward_weight(
                gpu,
                enc,
                &BackwardWeight { x: &x, dy: &dup, dw: &dw, db: Some(&db), workgroups: None },
            );
        });
    }
}

/// Forward and both backward kernels against the reference (gradients from zero).
fn check(gpu: &Gpu, dims: [usize; 4], co: usize) {
    let [n, ci, h, wd] = dims;
    let ys = [n, co, 2 * h, 2 * wd];
    let (x, w, dy) = (random_vec(1, n * ci * h * wd), random_vec(2, ci * co * 4), random_vec(3, ys.iter().product()));
    let (xt, wt, dyt) = (gpu.upload(&x, &dims), gpu.upload(&w, &[ci, co, 2, 2]), gpu.upload(&dy, &ys));
    let (y, dx, dw) = (gpu.empty(&ys), gpu.empty(&dims), gpu.empty(&[ci, co, 2, 2]));
    let mut enc = gpu.encoder();
    enc.clear(&dx);
    enc.clear(&dw);
    conv_transpose2d_forward(gpu, &mut enc, &Forward { x: &xt, w: &wt, b: None, y: &y, workgroups: None });
    conv_transpose2d_backward_data(
        gpu,
        &mut enc,
        &BackwardData { w: &wt, dy: &dyt, dx: &dx, acc: Accumulate::Add, workgroups: None },
    );
    conv_transpose2d_backward_weight(
        gpu,
        &mut enc,
        &BackwardWeight { x: &xt, dy: &dyt, dw: &dw, db: None, workgroups: None },
    );
    gpu.submit(enc);
    let (xf, wf, dyf) = (to_f64(&x), to_f64(&w), to_f64(&dy));
    let what = format!("{dims:?} -> {co}");
    let want_y = reference::conv_transpose2d_forward(&xf, &wf, None, dims, co);
    assert_close_f32(&format!("y {what}"), &gpu.read(&y), &want_y, 1e-4);
    let want_dx = reference::conv_transpose2d_backward_data(&dyf, &wf, dims, co);
    assert_close_f32(&format!("dx {what}"), &gpu.read(&dx), &want_dx, 1e-3);
    let want_dw = reference::conv_transpose2d_backward_weight(&xf, &dyf, dims, co).0;
    assert_close_f32(&format!("dw {what}"), &gpu.read(&dw), &want_dw, 1e-3);
}

/// The fused op against concat(conv_transpose2d(x, w), skip): output, dx, dw and dskip.
fn check_concat(gpu: &Gpu, dims: [usize; 4], co: usize, s: usize) {
    let [n, ci, h, wd] = dims;
    let (plane, skip_dims, merged) = (4 * h * wd, [n, s, 2 * h, 2 * wd], [n, co + s, 2 * h, 2 * wd]);
    let (x, w) = (random_vec(1, n * ci * h * wd), random_vec(2, ci * co * 4));
    let (skip, dy) = (random_vec(3, n * s * plane), random_vec(4, n * (co + s) * plane));
    let (xt, wt) = (gpu.upload(&x, &dims), gpu.upload(&w, &[ci, co, 2, 2]));
    let (skipt, dyt) = (gpu.upload(&skip, &skip_dims), gpu.upload(&dy, &merged));
    let (y, dx, dw, dskip) = (gpu.empty(&merged), gpu.empty(&dims), gpu.empty(&[ci, co, 2, 2]), gpu.empty(&skip_dims));
    let mut enc = gpu.encoder();
    for t in [&dx, &dw, &dskip] {
        enc.clear(t);
    }
    conv_transpose2d_concat_forward(gpu, &mut enc, &xt, &wt, None, &skipt, &y);
    let add = Accumulate::Add;
    let grads = ConcatGrads { dx: Some((&dx, add)), dw: Some(&dw), db: None, dskip: Some((&dskip, add)) };
    conv_transpose2d_concat_backward(gpu, &mut enc, &xt, &wt, &skipt, &dyt, grads);
    gpu.submit(enc);
    let (xf, wf) = (to_f64(&x), to_f64(&w));
    let what = format!("{dims:?} -> {co} + {s}");
    let up = reference::conv_transpose2d_forward(&xf, &wf, None, dims, co);
    let want_y = concat_reference::concat_forward(&up, &to_f64(&skip), n, co, s, plane);
    assert_close_f32(&format!("fused y {what}"), &gpu.read(&y), &want_y, 1e-4);
    let (dup, want_dskip) = concat_reference::concat_backward(&to_f64(&dy), n, co, s, plane);
    let want_dx = reference::conv_transpose2d_backward_data(&dup, &wf, dims, co);
    assert_close_f32(&format!("fused dx {what}"), &gpu.read(&dx), &want_dx, 1e-3);
    let want_dw = reference::conv_transpose2d_backward_weight(&xf, &dup, dims, co).0;
    assert_close_f32(&format!("fused dw {what}"), &gpu.read(&dw), &want_dw, 1e-3);
    assert_close_f32(&format!("fused dskip {what}"), &gpu.read(&dskip), &want_dskip, 1e-3);
}
