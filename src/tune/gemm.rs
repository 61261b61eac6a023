//! The autotune's side of the GPU family ([`ConvGemm`]): its candidates, the check of a
//! candidate against the f64 references, and the family that times them. The convolutions are
//! tuned as a whole (every direction of both convolutions as GEMMs, or all as register tiles),
//! after the register tilings, so that the register candidate runs the tilings chosen for them.

use super::families::{close, plus, shape_label, Family, Record};
use super::tiling::gemm::{ConvGemm, Gemm};
use super::tiling::{label_gemm, Tuning};
use crate::autograd::tape::Accumulate;
use crate::ops::conv2d::gemm::{
    conv2d_backward_data_gemm, conv2d_backward_weight_gemm, conv2d_forward_gemm, BackwardData, BackwardWeight, Forward,
};
use crate::ops::conv2d::{self, Conv2d, Epilogue};
use crate::ops::conv_transpose2d::gemm::{
    conv_transpose2d_backward_data_gemm, conv_transpose2d_backward_weight_gemm, conv_transpose2d_forward_gemm,
};
use crate::ops::conv_transpose2d::{self, reference as ct_reference};
use crate::runtime::{Encoder, Gpu};
use crate::testing::{random_vec, to_f64};

/// The candidates of the autotune besides the builtin: the register tiles, the default GEMM
/// tilings, and a few others (every one within WebGPU's default limits).
pub(super) fn candidates() -> Vec<Option<ConvGemm>> {
    let g = |bm, bn, bk, tm, tn| Gemm { bm, bn, bk, tm, tn };
    vec![
        None,
        Some(ConvGemm::default()),
        Some(ConvGemm::uniform(g(64, 64, 16, 4, 4))),
        Some(ConvGemm::uniform(g(32, 128, 8, 4, 4))),
        Some(ConvGemm { conv2d_backward_weight: g(64, 64, 8, 8, 8), ..ConvGemm::uniform(g(128, 128, 8, 8, 8)) }),
        Some(ConvGemm::uniform(g(32, 64, 16, 2, 4))),
    ]
}

/// The whole-convolution family: each candidate (register tiles with `registers`' sizes, or GEMM
/// tilings) runs all three directions of conv2d on `conv2d` shapes and of the transposed
/// convolution on `transposed` shapes.
pub(super) fn family<'a>(
    gpu: &'a Gpu,
    registers: Tuning,
    candidates: Vec<Option<ConvGemm>>,
    (conv2d, transposed): (&[[usize; 4]], &[[usize; 4]]),
) -> Family<'a, Option<ConvGemm>> {
    let mut shapes: Vec<(String, Record<Option<ConvGemm>>)> = Vec::new();
    for &xd in conv2d {
        let [n, c, h, wd] = xd;
        let p = Conv2d::new(1, 1);
        let (x, w) =
            (gpu.upload(&random_vec(6, n * c * h * wd), &xd), gpu.upload(&random_vec(7, c * c * 9), &[c, c, 3, 3]));
        let (b, y, dy) =
            (gpu.upload(&random_vec(8, c), &[c]), gpu.empty(&xd), gpu.upload(&random_vec(9, x.len()), &xd));
        let (dx, dw, db) = (gpu.empty(&xd), gpu.empty(&[c, c, 3, 3]), gpu.empty(&[c]));
        let record: Record<Option<ConvGemm>> = Box::new(move |gpu, enc, g| match g {
            Some(g) => {
                let f = Forward { x: &x, w: &w, b: Some(&b), y: &y, p, epilogue: Epilogue::Relu, tiling: None };
                conv2d_forward_gemm(gpu, enc, &f, &g.conv2d_forward);
                let a = BackwardData { dy: &dy, w: &w, dx: &dx, p, acc: Accumulate::Overwrite, tiling: None };
                conv2d_backward_data_gemm(gpu, enc, &a, &g.conv2d_backward_data);
                let a = BackwardWeight { x: &x, dy: &dy, dw: &dw, db: Some(&db), p, tiling: None };
                conv2d_backward_weight_gemm(gpu, enc, &a, &g.conv2d_backward_weight);
            }
            None => {
                let t = &registers;
                conv2d::conv2d_forward(
                    gpu,
                    enc,
                    &Forward {
                        x: &x,
                        w: &w,
                        b: Some(&b),
                        y: &y,
                        p,
                        epilogue: Epilogue::Relu,
                        tiling: Some(t.conv2d_forward),
                    },
                );
                conv2d::conv2d_backward_data(
                    gpu,
                    enc,
                    &BackwardData {
                        dy: &dy,
                        w: &w,
                        dx: &dx,
                        p,
                        acc: Accumulate::Add,
                        tiling: Some(t.conv2d_backward_data),
                    },
                );
                conv2d::conv2d_backward_weight(
                    gpu,
                    enc,
                    &BackwardWeight {
                        x: &x,
                        dy: &dy,
                        dw: &dw,
                        db: Some(&db),
                        p,
                        tiling: Some(t.conv2d_backward_weight),
                    },
                );
            }
        });
        shapes.push((format!("conv2d {} fwd+bwd", shape_label(&xd)), record));
    }
    for &xd in transposed {
        let [n, c, h, wd] = xd;
        let co = (c / 2).max(1);
        let big = [n, co, 2 * h, 2 * wd];
        let (x, w) = (
            gpu.upload(&random_vec(21, xd.iter().product()), &xd),
            gpu.upload(&random_vec(22, c * co * 4), &[c, co, 2, 2]),
        );
        let (b, y) = (gpu.upload(&random_vec(23, co), &[co]), gpu.empty(&big));
        let dy = gpu.upload(&random_vec(24, big.iter().product()), &big);
        let (dx, dw, db) = (gpu.empty(&xd), gpu.empty(&[c, co, 2, 2]), gpu.empty(&[co]));
        let record: Record<Option<ConvGemm>> = Box::new(move |gpu, enc, g| match g {
            Some(g) => transposed_gemm(gpu, enc, [&x, &w, &b, &y, &dy, &dx, &dw, &db], g),
            None => {
                let t = &registers.conv_transpose2d;
                conv_transpose2d::conv_transpose2d_forward(
                    gpu,
                    enc,
                    &conv_transpose2d::Forward { x: &x, w: &w, b: Some(&b), y: &y, workgroups: Some(*t) },
                );
                conv_transpose2d::conv_transpose2d_backward_data(
                    gpu,
                    enc,
                    &conv_transpose2d::BackwardData {
                        w: &w,
                        dy: &dy,
                        dx: &dx,
                        acc: Accumulate::Add,
                        workgroups: Some(*t),
                    },
                );
                conv_transpose2d::conv_transpose2d_backward_weight(
                    gpu,
                    enc,
                    &conv_transpose2d::BackwardWeight { x: &x, dy: &dy, dw: &dw, db: Some(&db), workgroups: Some(*t) },
                );
            }
        });
        shapes.push((format!("transposed {} fwd+bwd", shape_label(&xd)), record));
    }
    Family { kernel: "conv_gemm", candidates, label: label_gemm, check: Box::new(check), shapes }
}

/// The three transposed-convolution GEMMs: `[x, w, b, y, dy, dx, dw, db]`, dx overwritten.
fn transposed_gemm(gpu: &Gpu, enc: &mut Encoder, t: [&crate::autograd::tensor::Tensor; 8], g: &ConvGemm) {
    let [x, w, b, y, dy, dx, dw, db] = t;
    conv_transpose2d_forward_gemm(gpu, enc, x, w, Some(b), y, &g.conv_transpose2d_forward);
    let data = &g.conv_transpose2d_backward_data;
    conv_transpose2d_backward_data_gemm(gpu, enc, (w, dy, dx), Accumulate::Add, data);
    conv_transpose2d_backward_weight_gemm(gpu, enc, (x, dy), (dw, Some(db)), &g.conv_transpose2d_backward_weight);
}

/// A candidate's GEMMs against the references on small odd shapes (the register tiles were
/// checked by their own families).
fn check(gpu: &Gpu, g: &Option<ConvGemm>) -> Result<(), String> {
    let Some(g) = g else { return Ok(()) };
    let (xd, wd, p) = ([2, 5, 6, 11], [7, 5, 3, 3], Conv2d::new(1, 1));
    let (x, w, b) = (random_vec(1, 2 * 5 * 66), random_vec(2, 7 * 45), random_vec(3, 7));
    let (dy, start) = (random_vec(4, 2 * 7 * 66), random_vec(5, 2 * 7 * 66));
    let yd = [2, 7, 6, 11];
    let (xt, wt, bt, dyt) = (gpu.upload(&x, &xd), gpu.upload(&w, &wd), gpu.upload(&b, &[7]), gpu.upload(&dy, &yd));
    let (y, dx) = (gpu.empty(&yd), gpu.upload(&start[..x.len()], &xd));
    let (dw, db) = (gpu.upload(&start[..w.len()], &wd), gpu.upload(&start[..7], &[7]));
    let mut enc = gpu.encoder();
    let f = Forward { x: &xt, w: &wt, b: Some(&bt), y: &y, p, epilogue: Epilogue::Identity, tiling: None };
    conv2d_forward_gemm(gpu, &mut enc, &f, &g.conv2d_forward);
    let a = BackwardData { dy: &dyt, w: &wt, dx: &dx, p, acc: Accumulate::Add, tiling: None };
    conv2d_backward_data_gemm(gpu, &mut enc, &a, &g.conv2d_backward_data);
    let a = BackwardWeight { x: &xt, dy: &dyt, dw: &dw, db: Some(&db), p, tiling: None };
    conv2d_backward_weight_gemm(gpu, &mut enc, &a, &g.conv2d_backward_weight);
    // The transposed convolution: x [2,6,3,5] -> y [2,5,6,10].
    let (cd, co) = ([2, 6, 3, 5], 5);
    let big = [2, co, 6, 10];
    let (cx, cw, cdy) = (random_vec(20, 180), random_vec(21, 6 * co * 4), random_vec(22, 600));
    let ts = (gpu.upload(&cx, &cd), gpu.upload(&cw, &[6, co, 2, 2]), gpu.upload(&b[..co], &[co]));
    let (cy, cdyt) = (gpu.empty(&big), gpu.upload(&cdy, &big));
    let (cdx, cdw, cdb) = (
        gpu.upload(&start[..180], &cd),
        gpu.upload(&start[..6 * co * 4], &[6, co, 2, 2]),
        gpu.upload(&start[..co], &[co]),
    );
    transposed_gemm(gpu, &mut enc, [&ts.0, &ts.1, &ts.2, &cy, &cdyt, &cdx, &cdw, &cdb], g);
    gpu.submit(enc);

    let (xf, wf, dyf) = (to_f64(&x), to_f64(&w), to_f64(&dy));
    close("y", &gpu.read(&y), &conv2d::reference::conv2d_forward(&xf, xd, &wf, wd, Some(&to_f64(&b)), &p), 1e-4)?;
    let want = plus(&conv2d::reference::conv2d_backward_data(&dyf, &wf, xd, wd, &p), &start);
    close("dx", &gpu.read(&dx), &want, 1e-3)?;
    let (want_dw, want_db) = conv2d::reference::conv2d_backward_weight(&xf, &dyf, xd, wd, &p);
    close("dw", &gpu.read(&dw), &plus(&want_dw, &start), 1e-3)?;
    close("db", &gpu.read(&db), &plus(&want_db, &start), 1e-3)?;
    let (cxf, cwf, cdyf) = (to_f64(&cx), to_f64(&cw), to_f64(&cdy));
    let want = ct_reference::conv_transpose2d_forward(&cxf, &cwf, Some(&to_f64(&b[..co])), cd, co);
    close("transposed y", &gpu.read(&cy), &want, 1e-4)?;
    let want = plus(&ct_reference::conv_transpose2d_backward_data(&cdyf, &cwf, cd, co), &start);
    close("transposed dx", &gpu.read(&cdx), &want, 1e-3)?;
    let (want_dw, want_db) = ct_reference::conv_transpose2d_backward_weight(&cxf, &cdyf, cd, co);
    close("transposed dw", &gpu.read(&cdw), &plus(&want_dw, &start), 1e-3)?;
    close("transposed db", &gpu.read(&cdb), &plus(&want_db, &start), 1e-3)
}
