//! The textbook kernels against the f64 reference, and every tiled kernel against the textbook
//! kernels on the GPU, on the odd shapes of conv2d's tests.

use super::super::tests::{cases, yd};
use super::super::{
    backward_data, conv2d, conv2d_forward_shared, reference, BackwardData, BackwardWeight, Forward, SharedTiling,
    Tiling,
};
use super::*;
use crate::autograd::tape::Step;
use crate::runtime::Kernels;
use crate::testing::{assert_close_f32, gpu, random_vec, to_f64, with_kernels};

/// One case's random inputs: x, w, b, dy, and the values dx, dw, db start from (the backward
/// adds into them).
struct Data {
    xd: [usize; 4],
    wd: [usize; 4],
    p: Conv2d,
    x: Vec<f32>,
    w: Vec<f32>,
    b: Vec<f32>,
    dy: Vec<f32>,
    dx0: Vec<f32>,
    dw0: Vec<f32>,
    db0: Vec<f32>,
}

impl Data {
    fn new(seed: u64, xd: [usize; 4], wd: [usize; 4], p: Conv2d) -> Data {
        let (nx, nw, ny) = (xd.iter().product(), wd.iter().product(), yd(xd, wd, &p).iter().product());
        Data {
            xd,
            wd,
            p,
            x: random_vec(seed, nx),
            w: random_vec(seed + 1, nw),
            b: random_vec(seed + 2, wd[0]),
            dy: random_vec(seed + 3, ny),
            dx0: random_vec(seed + 4, nx),
            dw0: random_vec(seed + 5, nw),
            db0: random_vec(seed + 6, wd[0]),
        }
    }
}

/// What one set of kernels computes on a case: y = conv(x, w) + b, dx0 + backward data, backward
/// data overwriting stale values, dw0 + backward weight, db0 + the bias sum.
struct Results {
    y: Vec<f32>,
    dx: Vec<f32>,
    dx_fresh: Vec<f32>,
    dw: Vec<f32>,
    db: Vec<f32>,
}

/// The tiled kernels with tiling `t` (`None`: the textbook kernels) on `d`.
fn run(d: &Data, t: Option<&Tiling>) -> Results {
    let gpu = gpu();
    let ydims = yd(d.xd, d.wd, &d.p);
    let (x, w, b, dy) =
        (gpu.upload(&d.x, &d.xd), gpu.upload(&d.w, &d.wd), gpu.upload(&d.b, &[d.wd[0]]), gpu.upload(&d.dy, &ydims));
    let (dx, dw, db) = (gpu.upload(&d.dx0, &d.xd), gpu.upload(&d.dw0, &d.wd), gpu.upload(&d.db0, &[d.wd[0]]));
    let (y, dx_fresh) = (gpu.empty(&ydims), gpu.upload(&d.dx0, &d.xd));
    let mut enc = gpu.encoder();
    match t {
        None => {
            conv2d_forward(gpu, &mut enc, &x, &w, Some(&b), &y, d.p);
            conv2d_backward_data(gpu, &mut enc, &dy, &w, &dx, d.p, Accumulate::Add);
            conv2d_backward_data(gpu, &mut enc, &dy, &w, &dx_fresh, d.p, Accumulate::Overwrite);
            conv2d_backward_weight(gpu, &mut enc, &x, &dy, &dw, Some(&db), d.p);
        }
        Some(t) => {
            super::super::conv2d_forward(
                gpu,
                &mut enc,
                &Forward { x: &x, w: &w, b: Some(&b), y: &y, p: d.p, epilogue: Epilogue::Identity, tiling: Some(*t) },
            );
            backward_data(
                gpu,
                &mut enc,
                &BackwardData { dy: &dy, w: &w, dx: &dx, p: d.p, acc: Accumulate::Add, tiling: None },
                t,
            );
            backward_data(
                gpu,
                &mut enc,
                &BackwardData { dy: &dy, w: &w, dx: &dx_fresh, p: d.p, acc: Accumulate::Overwrite, tiling: None },
                t,
            );
            super::super::conv2d_backward_weight(
                gpu,
                &mut enc,
                &BackwardWeight { x: &x, dy: &dy, dw: &dw, db: Some(&db), p: d.p, tiling: Some(*t) },
            );
        }
    }
    gpu.submit(enc);
    Results { y: gpu.read(&y), dx: gpu.read(&dx), dx_fresh: gpu.read(&dx_fresh), dw: gpu.read(&dw), db: gpu.read(&db) }
}

/// `start + g`, elementwise: what a kernel that adds `g` into `start` should leave.
fn plus(g: &[f64], start: &[f32]) -> Vec<f64> {
    g.iter().zip(start).map(|(g, &s)| g + s as f64).collect()
}

#[test]
fn textbook_kernels_match_the_f64_reference() {
    for (k, (xd, wd, p)) in cases().into_iter().enumerate() {
        let d = Data::new(1000 + 10 * k as u64, xd, wd, p);
        let got = run(&d, None);
        let (x, w, b, dy) = (to_f64(&d.x), to_f64(&d.w), to_f64(&d.b), to_f64(&d.dy));
        let what = format!("{xd:?} {wd:?} {p:?}");
        assert_close_f32(&format!("y {what}"), &got.y, &reference::conv2d_forward(&x, xd, &w, wd, Some(&b), &p), 1e-4);
        let dx = reference::conv2d_backward_data(&dy, &w, xd, wd, &p);
        assert_close_f32(&format!("dx {what}"), &got.dx, &plus(&dx, &d.dx0), 1e-3);
        assert_close_f32(&format!("dx (overwritten) {what}"), &got.dx_fresh, &dx, 1e-3);
        let (dw, db) = reference::conv2d_backward_weight(&x, &dy, xd, wd, &p);
        assert_close_f32(&format!("dw {what}"), &got.dw, &plus(&dw, &d.dw0), 1e-3);
        assert_close_f32(&format!("db {what}"), &got.db, &plus(&db, &d.db0), 1e-3);
    }
}

#[test]
fn textbook_weight_gradient_sums_runs_in_order() {
    // 2 x 150 rows of 120 output pixels: three runs of whole rows, the last one short.
    let (xd, wd, p) = ([2, 2, 150, 120], [3, 2, 3, 3], Conv2d::new(1, 1));
    assert_eq!(runs(2 * 150, 120), (135, 3));
    let d = Data::new(1200, xd, wd, p);
    let got = run(&d, None);
    let (dw, db) = reference::conv2d_backward_weight(&to_f64(&d.x), &to_f64(&d.dy), xd, wd, &p);
    assert_close_f32("dw", &got.dw, &plus(&dw, &d.dw0), 1e-3);
    assert_close_f32("db", &got.db, &plus(&db, &d.db0), 1e-3);
}

#[test]
fn tiled_kernels_match_the_textbook_kernels() {
    // The CPU drivers' tiling, the hardware GPUs' (2-row tiles, 128 threads), and an odd one whose
    // edge blocks of channels are partly empty and whose weight gradient walks long chunks of rows.
    let tilings = [
        Tiling::default(),
        Tiling { wg: 128, rows: 2, ..Tiling::default() },
        Tiling { wg: 24, rows: 4, tm: 5, bw_threads: 1 },
    ];
    let gpu = gpu();
    for (k, (xd, wd, p)) in cases().into_iter().enumerate() {
        let d = Data::new(1100 + 10 * k as u64, xd, wd, p);
        let want = run(&d, None);
        let f = |v: &[f32]| to_f64(v);
        for t in &tilings {
            let got = run(&d, Some(t));
            let what = format!("{xd:?} {wd:?} {p:?} {t:?}");
            assert_close_f32(&format!("y {what}"), &got.y, &f(&want.y), 1e-4);
            assert_close_f32(&format!("dx {what}"), &got.dx, &f(&want.dx), 1e-3);
            assert_close_f32(&format!("dx (overwritten) {what}"), &got.dx_fresh, &f(&want.dx_fresh), 1e-3);
            assert_close_f32(&format!("dw {what}"), &got.dw, &f(&want.dw), 1e-3);
            assert_close_f32(&format!("db {what}"), &got.db, &f(&want.db), 1e-3);
        }
        // The workgroup-memory forward.
        let (x, w, b) = (gpu.upload(&d.x, &xd), gpu.upload(&d.w, &wd), gpu.upload(&d.b, &[wd[0]]));
        let y = gpu.empty(&yd(xd, wd, &p));
        let mut enc = gpu.encoder();
        conv2d_forward_shared(
            gpu,
            &mut enc,
            &Forward { x: &x, w: &w, b: Some(&b), y: &y, p, epilogue: Epilogue::Identity, tiling: None },
            &SharedTiling::default(),
        );
        gpu.submit(enc);
        assert_close_f32(&format!("y (shared) {xd:?} {wd:?} {p:?}"), &gpu.read(&y), &f(&want.y), 1e-4);
    }
}

const EPILOGUES: [Epilogue; 3] =
    [Epilogue::Identity, Epilogue::Relu, Epilogue::ReluDropout { p: 0.3, seed: 0x1234_5678_9abc }];

/// `conv2d_forward` with `kernels`: y for x `xd`, w `wd`, 3x3 "same".
fn fused(kernels: Kernels, d: &Data, e: Epilogue) -> Vec<f32> {
    let gpu = gpu();
    let (x, w, b) = (gpu.upload(&d.x, &d.xd), gpu.upload(&d.w, &d.wd), gpu.upload(&d.b, &[d.wd[0]]));
    let y = gpu.empty(&yd(d.xd, d.wd, &d.p));
    with_kernels(gpu, kernels, || {
        let mut enc = gpu.encoder();
        super::super::conv2d_forward(
            gpu,
            &mut enc,
            &Forward { x: &x, w: &w, b: Some(&b), y: &y, p: d.p, epilogue: e, tiling: None },
        );
        gpu.submit(enc);
    });
    gpu.read(&y)
}

#[test]
fn the_reference_epilogue_drops_the_same_elements() {
    // Fused into the tiled kernels' stores, or the textbook convolution then the plain ReLU and
    // dropout kernels: the same values, and exactly the same zeros (the dropout mask, bit for bit).
    let d = Data::new(1300, [2, 5, 9, 12], [7, 5, 3, 3], Conv2d::new(1, 1));
    for e in EPILOGUES {
        let (tuned, textbook) = (fused(Kernels::Tuned, &d, e), fused(Kernels::Reference, &d, e));
        assert_close_f32(&format!("y {e:?}"), &tuned, &to_f64(&textbook), 1e-4);
        let zeros = |y: &[f32]| y.iter().map(|&v| v == 0.0).collect::<Vec<_>>();
        assert_eq!(zeros(&tuned), zeros(&textbook), "zeros of y {e:?}");
    }
}

#[test]
fn the_tape_on_the_textbook_kernels_gives_the_tuned_gradients() {
    let gpu = gpu();
    let d = Data::new(1400, [2, 3, 6, 8], [4, 3, 3, 3], Conv2d::new(1, 1));
    let e = Epilogue::ReluDropout { p: 0.25, seed: 77 };
    let (x, w, b) =
        (gpu.upload(&d.x, &d.xd).with_grad(), gpu.upload(&d.w, &d.wd).with_grad(), gpu.upload(&d.b, &[4]).with_grad());
    let dy = gpu.upload(&d.dy, &yd(d.xd, d.wd, &d.p));
    let step = |kernels| {
        with_kernels(gpu, kernels, || {
            let mut step = Step::train(gpu);
            let y = conv2d(&mut step, &x, &w, Some(&b), d.p, e);
            let grads = step.backward(vec![(y.clone(), dy.clone())]);
            step.submit();
            [&y, grads.get(&x).unwrap(), grads.get(&w).unwrap(), grads.get(&b).unwrap()].map(|t| gpu.read(t))
        })
    };
    let (tuned, textbook) = (step(Kernels::Tuned), step(Kernels::Reference));
    for (k, name) in ["y", "dx", "dw", "db"].iter().enumerate() {
        let tol = if k == 0 { 1e-4 } else { 1e-3 };
        assert_close_f32(name, &tuned[k], &to_f64(&textbook[k]), tol);
    }
    assert!(!gpu.compiled_constants("conv2d/textbook", "conv2d_backward_weight").is_empty());
}
