//! Every GEMM kernel of the transposed convolution against the textbook kernels on the GPU: odd
//! shapes, tilings whose tiles divide none of them, many chunks, concatenation buffers (C > O).

use super::super::textbook;
use super::*;
use crate::ops::conv2d::gemm::Gemm;
use crate::testing::{assert_close_f32, gpu, random_vec, to_f64};

fn tilings() -> [Gemm; 4] {
    [
        Gemm { bm: 64, bn: 128, bk: 8, tm: 4, tn: 8 },
        Gemm { bm: 12, bn: 20, bk: 3, tm: 3, tn: 5 },
        Gemm { bm: 8, bn: 16, bk: 4, tm: 2, tn: 4 },
        Gemm { bm: 64, bn: 64, bk: 16, tm: 4, tn: 4 },
    ]
}

/// x `[N,I,H,W]` up to `co` channels of y `[N,yc,2H,2W]` (yc >= co: channels co.. are someone
/// else's and must be left alone): the GEMM kernels with tiling `g` against the textbook ones.
fn check(seed: u64, dims: [usize; 4], co: usize, yc: usize, g: &Gemm) {
    let gpu = gpu();
    let [n, ci, h, w] = dims;
    let big = [n, yc, 2 * h, 2 * w];
    let wd = [ci, co, 2, 2];
    let what = format!("{dims:?} -> {co} of {yc} {g}");
    let (x, wt, b, dy) = (
        gpu.upload(&random_vec(seed, dims.iter().product()), &dims),
        gpu.upload(&random_vec(seed + 1, ci * co * 4), &wd),
        gpu.upload(&random_vec(seed + 2, co), &[co]),
        gpu.upload(&random_vec(seed + 3, big.iter().product()), &big),
    );
    let start = |seed: u64, shape: &[usize]| {
        let v = random_vec(seed, shape.iter().product());
        [gpu.upload(&v, shape), gpu.upload(&v, shape)]
    };
    // [gemm, textbook] of each output; y starts random so that the channels past co are checked.
    let (y, y_nobias) = (start(seed + 4, &big), start(seed + 5, &big));
    let (dx, dx_fresh) = (start(seed + 6, &dims), start(seed + 7, &dims));
    let (dw, db, dw_alone) = (start(seed + 8, &wd), start(seed + 9, &[co]), start(seed + 10, &wd));
    let p = params("test", &x, &wt, &dy, true);
    let mut enc = gpu.encoder();
    for (y, bias) in [(&y, Some(&b)), (&y_nobias, None)] {
        forward(gpu, &mut enc, p, Operands { x: &x, w: &wt, b: bias, y: &y[0] }, g);
        textbook::forward(gpu, &mut enc, p, &x, &wt, bias, &y[1]);
    }
    for (dx, acc) in [(&dx, Accumulate::Add), (&dx_fresh, Accumulate::Overwrite)] {
        backward_data(gpu, &mut enc, p, Operands { x: &dx[0], w: &wt, b: None, y: &dy }, acc, g);
        textbook::backward_data(gpu, &mut enc, p, &wt, &dy, &dx[1], acc);
    }
    for (dw, db) in [(&dw, Some(&db)), (&dw_alone, None)] {
        backward_weight(gpu, &mut enc, p, Operands { x: &x, w: &dw[0], b: db.map(|d| &d[0]), y: &dy }, g);
        textbook::backward_weight(gpu, &mut enc, p, &x, &dy, &dw[1], db.map(|d| &d[1]));
    }
    gpu.submit(enc);
    let same = |name: &str, pair: &[Tensor; 2], tol: f64| {
        assert_close_f32(&format!("{name} {what}"), &gpu.read(&pair[0]), &to_f64(&gpu.read(&pair[1])), tol);
    };
    same("y", &y, 1e-4);
    same("y (no bias)", &y_nobias, 1e-4);
    same("dx", &dx, 1e-3);
    same("dx (overwritten)", &dx_fresh, 1e-3);
    same("dw", &dw, 1e-3);
    same("db", &db, 1e-3);
    same("dw (no db)", &dw_alone, 1e-3);
}

#[test]
fn gemm_kernels_match_the_textbook_kernels_on_odd_shapes() {
    let shapes: [([usize; 4], usize); 8] = [
        ([1, 1, 1, 1], 1),
        ([2, 3, 5, 7], 5),
        ([1, 7, 1, 9], 3),
        ([2, 5, 6, 1], 9),
        ([1, 6, 11, 13], 2),
        ([2, 3, 5, 8], 5),
        ([3, 17, 3, 12], 9),
        ([2, 33, 7, 4], 3),
    ];
    for (k, (dims, co)) in shapes.into_iter().enumerate() {
        for (j, g) in tilings().iter().enumerate() {
            check(100 * k as u64 + 10 * j as u64, dims, co, co, g);
        }
    }
}

#[test]
fn gemm_kernels_fill_their_channels_of_a_concatenation() {
    check(5000, [2, 5, 3, 8], 3, 7, &tilings()[0]);
    check(5010, [1, 4, 5, 3], 6, 9, &tilings()[1]);
}

#[test]
fn gemm_kernels_match_the_textbook_kernels_on_long_reductions() {
    // 2 x 70 x 70 pixels: the weight gradient in many chunks; 300 input channels in the forward.
    check(6000, [2, 3, 70, 70], 4, 4, &tilings()[0]);
    check(6010, [1, 300, 4, 5], 7, 7, &tilings()[0]);
    check(6020, [1, 5, 4, 5], 200, 200, &tilings()[3]);
}
