//! The textbook kernels against the f64 reference, and every tiled kernel against the textbook
//! kernels on the GPU: general shapes (W not a multiple of 4) and quad shapes, odd channel counts.

use super::super::{
    backward_data as tiled_backward_data, bias as tiled_bias,
    conv_transpose2d_backward_weight as backward_weight_default, conv_transpose2d_concat,
    conv_transpose2d_forward as forward_default, reference, BackwardWeight, Forward, Operands, Workgroups,
};
use super::*;
use crate::autograd::tape::Step;
use crate::runtime::Kernels;
use crate::testing::{assert_close_f32, gpu, random_vec, to_f64, with_kernels};

/// x dims and output channels: general kernels (W = 1, 7, 9, 13), quad kernels (W = 4, 8, 12, 20),
/// channel counts that are not multiples of the tiled kernels' blocks.
const SHAPES: [([usize; 4], usize); 9] = [
    ([1, 1, 1, 1], 1),
    ([2, 3, 5, 7], 5),
    ([1, 7, 1, 9], 3),
    ([1, 6, 11, 13], 2),
    ([1, 1, 1, 4], 1),
    ([2, 3, 5, 8], 5),
    ([3, 17, 3, 12], 9),
    ([1, 5, 2, 20], 13),
    ([2, 33, 7, 4], 3),
];

/// What one set of kernels computes from random inputs and gradient buffers that start at random
/// values: y (with and without bias), dx added into and overwritten, dw and db added into, and db
/// alone (the bias gradient without the weight's).
struct Results {
    y: Vec<f32>,
    y_nobias: Vec<f32>,
    dx: Vec<f32>,
    dx_fresh: Vec<f32>,
    dw: Vec<f32>,
    db: Vec<f32>,
    db_alone: Vec<f32>,
}

/// Inputs from `seed`: x, w, b, dy, and the start values of dx, dw, db.
fn inputs(seed: u64, [n, ci, h, w]: [usize; 4], co: usize) -> [Vec<f32>; 7] {
    let (nx, nw, ny) = (n * ci * h * w, ci * co * 4, n * co * 4 * h * w);
    [nx, nw, co, ny, nx, nw, co]
        .iter()
        .enumerate()
        .map(|(k, &len)| random_vec(seed + k as u64, len))
        .collect::<Vec<_>>()
        .try_into()
        .unwrap()
}

/// The tiled kernels at workgroups `wg` (`None`: the textbook kernels) on one shape.
fn run(seed: u64, dims: [usize; 4], co: usize, wg: Option<&Workgroups>) -> Results {
    let gpu = gpu();
    let [n, ci, h, w] = dims;
    let (wd, big) = ([ci, co, 2, 2], [n, co, 2 * h, 2 * w]);
    let [x, wv, b, dy, dx0, dw0, db0] = inputs(seed, dims, co);
    let (xt, wt, bt, dyt) = (gpu.upload(&x, &dims), gpu.upload(&wv, &wd), gpu.upload(&b, &[co]), gpu.upload(&dy, &big));
    let (dx, dx_fresh, dw) = (gpu.upload(&dx0, &dims), gpu.upload(&dx0, &dims), gpu.upload(&dw0, &wd));
    let (db, db_alone, y, y_nobias) =
        (gpu.upload(&db0, &[co]), gpu.upload(&db0, &[co]), gpu.empty(&big), gpu.empty(&big));
    let p = params("test", &xt, &wt, &dyt, false);
    let mut enc = gpu.encoder();
    match wg {
        None => {
            conv_transpose2d_forward(gpu, &mut enc, &xt, &wt, Some(&bt), &y);
            conv_transpose2d_forward(gpu, &mut enc, &xt, &wt, None, &y_nobias);
            conv_transpose2d_backward_data(gpu, &mut enc, &wt, &dyt, &dx, Accumulate::Add);
            conv_transpose2d_backward_data(gpu, &mut enc, &wt, &dyt, &dx_fresh, Accumulate::Overwrite);
            conv_transpose2d_backward_weight(gpu, &mut enc, &xt, &dyt, &dw, Some(&db));
            bias(gpu, &mut enc, p, &dyt, &db_alone);
        }
        Some(wg) => {
            forward_default(gpu, &mut enc, &Forward { x: &xt, w: &wt, b: Some(&bt), y: &y, workgroups: Some(*wg) });
            forward_default(gpu, &mut enc, &Forward { x: &xt, w: &wt, b: None, y: &y_nobias, workgroups: Some(*wg) });
            tiled_backward_data(gpu, &mut enc, p, Operands { x: &dx, w: &wt, b: None, y: &dyt }, Accumulate::Add, wg);
            let fresh = Operands { x: &dx_fresh, w: &wt, b: None, y: &dyt };
            tiled_backward_data(gpu, &mut enc, p, fresh, Accumulate::Overwrite, wg);
            backward_weight_default(
                gpu,
                &mut enc,
                &BackwardWeight { x: &xt, dy: &dyt, dw: &dw, db: Some(&db), workgroups: Some(*wg) },
            );
            tiled_bias(gpu, &mut enc, p, &dyt, &db_alone, wg);
        }
    }
    gpu.submit(enc);
    let [y, y_nobias, dx, dx_fresh, dw, db, db_alone] =
        [&y, &y_nobias, &dx, &dx_fresh, &dw, &db, &db_alone].map(|t| gpu.read(t));
    Results { y, y_nobias, dx, dx_fresh, dw, db, db_alone }
}

/// `start + g`, elementwise: what a kernel that adds `g` into `start` should leave.
fn plus(g: &[f64], start: &[f32]) -> Vec<f64> {
    g.iter().zip(start).map(|(g, &s)| g + s as f64).collect()
}

#[test]
fn textbook_kernels_match_the_f64_reference() {
    for (k, (dims, co)) in SHAPES.into_iter().enumerate() {
        let seed = 2000 + 10 * k as u64;
        let got = run(seed, dims, co, None);
        let [x, w, b, dy, dx0, dw0, db0] = inputs(seed, dims, co);
        let (x, w, b, dy) = (to_f64(&x), to_f64(&w), to_f64(&b), to_f64(&dy));
        let what = format!("{dims:?} -> {co}");
        let y = reference::conv_transpose2d_forward(&x, &w, Some(&b), dims, co);
        assert_close_f32(&format!("y {what}"), &got.y, &y, 1e-4);
        let y = reference::conv_transpose2d_forward(&x, &w, None, dims, co);
        assert_close_f32(&format!("y (no bias) {what}"), &got.y_nobias, &y, 1e-4);
        let dx = reference::conv_transpose2d_backward_data(&dy, &w, dims, co);
        assert_close_f32(&format!("dx {what}"), &got.dx, &plus(&dx, &dx0), 1e-3);
        assert_close_f32(&format!("dx (overwritten) {what}"), &got.dx_fresh, &dx, 1e-3);
        let (dw, db) = reference::conv_transpose2d_backward_weight(&x, &dy, dims, co);
        assert_close_f32(&format!("dw {what}"), &got.dw, &plus(&dw, &dw0), 1e-3);
        assert_close_f32(&format!("db {what}"), &got.db, &plus(&db, &db0), 1e-3);
        assert_close_f32(&format!("db alone {what}"), &got.db_alone, &plus(&db, &db0), 1e-3);
    }
}

#[test]
fn textbook_sums_run_in_order_past_one_run() {
    // 2 x 100 rows of 90 input pixels and 2 x 200 rows of 180 output pixels: 2 and 5 runs.
    let (dims, co) = ([2, 2, 100, 90], 3);
    let got = run(2100, dims, co, None);
    let [x, _, _, dy, _, dw0, db0] = inputs(2100, dims, co);
    let (dw, db) = reference::conv_transpose2d_backward_weight(&to_f64(&x), &to_f64(&dy), dims, co);
    assert_close_f32("dw", &got.dw, &plus(&dw, &dw0), 1e-3);
    assert_close_f32("db", &got.db, &plus(&db, &db0), 1e-3);
}

#[test]
fn tiled_kernels_match_the_textbook_kernels() {
    // The CPU drivers' workgroups, the hardware GPUs', and odd ones.
    let wgs = [Workgroups::default(), Workgroups { general: 256, quads: 64 }, Workgroups { general: 48, quads: 8 }];
    for (k, (dims, co)) in SHAPES.into_iter().enumerate() {
        let seed = 2200 + 10 * k as u64;
        let want = run(seed, dims, co, None);
        let f = |v: &[f32]| to_f64(v);
        for wg in &wgs {
            let got = run(seed, dims, co, Some(wg));
            let what = format!("{dims:?} -> {co} {wg:?}");
            assert_close_f32(&format!("y {what}"), &got.y, &f(&want.y), 1e-4);
            assert_close_f32(&format!("y (no bias) {what}"), &got.y_nobias, &f(&want.y_nobias), 1e-4);
            assert_close_f32(&format!("dx {what}"), &got.dx, &f(&want.dx), 1e-3);
            assert_close_f32(&format!("dx (overwritten) {what}"), &got.dx_fresh, &f(&want.dx_fresh), 1e-3);
            assert_close_f32(&format!("dw {what}"), &got.dw, &f(&want.dw), 1e-3);
            assert_close_f32(&format!("db {what}"), &got.db, &f(&want.db), 1e-3);
            assert_close_f32(&format!("db alone {what}"), &got.db_alone, &f(&want.db_alone), 1e-3);
        }
    }
}

#[test]
fn the_fused_concatenation_on_the_textbook_kernels_gives_the_tuned_results() {
    // The up-convolution writes channels 0..O of the concatenation and reads its dy from there.
    let gpu = gpu();
    let ([n, ci, h, w], co, s) = ([2, 5, 3, 8], 3, 4);
    let (big, skip_dims) = ([n, co + s, 2 * h, 2 * w], [n, s, 2 * h, 2 * w]);
    let x = gpu.upload(&random_vec(2300, n * ci * h * w), &[n, ci, h, w]).with_grad();
    let wt = gpu.upload(&random_vec(2301, ci * co * 4), &[ci, co, 2, 2]).with_grad();
    let b = gpu.upload(&random_vec(2302, co), &[co]).with_grad();
    let skip = gpu.upload(&random_vec(2303, skip_dims.iter().product()), &skip_dims).with_grad();
    let dy = gpu.upload(&random_vec(2304, big.iter().product()), &big);
    let step = |kernels| {
        with_kernels(gpu, kernels, || {
            let mut step = Step::train(gpu);
            let y = conv_transpose2d_concat(&mut step, &x, &wt, Some(&b), &skip);
            let grads = step.backward(vec![(y.clone(), dy.clone())]);
            step.submit();
            [&y, grads.get(&x).unwrap(), grads.get(&wt).unwrap(), grads.get(&b).unwrap(), grads.get(&skip).unwrap()]
                .map(|t| gpu.read(t))
        })
    };
    let (tuned, textbook) = (step(Kernels::Tuned), step(Kernels::Reference));
    for (k, name) in ["y", "dx", "dw", "db", "dskip"].iter().enumerate() {
        let tol = if k == 0 { 1e-4 } else { 1e-3 };
        assert_close_f32(name, &tuned[k], &to_f64(&textbook[k]), tol);
    }
    assert!(!gpu.compiled_constants("conv_transpose2d/textbook", "conv_transpose2d_backward_weight").is_empty());
}
