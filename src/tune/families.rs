//! The kernel families the autotune measures: for each, its candidates, how one run is recorded
//! at each timing shape, and how its result is checked against the f64 reference.

use crate::autograd::tape::Accumulate;
use crate::ops::conv2d::{
    self, conv2d_backward_data, conv2d_backward_weight, conv2d_forward, BackwardData, BackwardWeight, Conv2d, Epilogue,
    Forward,
};
use crate::ops::conv_transpose2d::{
    self, conv_transpose2d_backward_data, conv_transpose2d_backward_weight, conv_transpose2d_forward, Workgroups,
};
use crate::ops::matmul::{self, matmul_forward, Tiles};
use crate::runtime::{Encoder, Gpu};
use crate::testing::{max_rel_error, random_vec, to_f64};

use super::tiling::{label_data, label_forward, label_tiles, label_weight, label_workgroups};

/// Runs a candidate on small shapes against the reference: `Err(what differs)`.
pub(super) type Check<'a, C> = Box<dyn Fn(&Gpu, &C) -> Result<(), String> + 'a>;
/// Records one run of a candidate on one timing shape.
pub(super) type Record<'a, C> = Box<dyn Fn(&Gpu, &mut Encoder, &C) + 'a>;

/// One kernel family under test: its candidates, how to check one, and how to run it on each
/// timing shape.
pub(super) struct Family<'a, C> {
    pub(super) kernel: &'static str,
    pub(super) candidates: Vec<C>,
    pub(super) label: fn(&C) -> String,
    pub(super) check: Check<'a, C>,
    /// `(shape label, record one run)` per timing shape.
    pub(super) shapes: Vec<(String, Record<'a, C>)>,
}

/// The three conv2d families: `kernel` says which of the three kernels a candidate tiles.
pub(super) fn conv2d_family<'a>(
    gpu: &'a Gpu,
    kernel: &'static str,
    candidates: Vec<conv2d::Tiling>,
    shapes: &[[usize; 4]],
) -> Family<'a, conv2d::Tiling> {
    let label: fn(&conv2d::Tiling) -> String = match kernel {
        "conv2d_forward" => label_forward,
        "conv2d_backward_data" => label_data,
        _ => label_weight,
    };
    let p = Conv2d::new(1, 1);
    // The check: W a multiple of 4 (the vec4 paths the U-Net takes) and 7 output channels (a
    // partly empty block of 8).
    let (xd, wd) = ([2, 5, 6, 12], [7, 5, 3, 3]);
    let (x, w, b) = (random_vec(1, 2 * 5 * 6 * 12), random_vec(2, 7 * 5 * 9), random_vec(3, 7));
    let (dy, start) = (random_vec(4, 2 * 7 * 6 * 12), random_vec(5, 2 * 5 * 6 * 12));
    let check = move |gpu: &Gpu, t: &conv2d::Tiling| -> Result<(), String> {
        let yd = [2, 7, 6, 12];
        let (xf, wf, dyf) = (to_f64(&x), to_f64(&w), to_f64(&dy));
        let (xt, wt, bt, dyt) = (gpu.upload(&x, &xd), gpu.upload(&w, &wd), gpu.upload(&b, &[7]), gpu.upload(&dy, &yd));
        let mut enc = gpu.encoder();
        match kernel {
            "conv2d_forward" => {
                let y = gpu.empty(&yd);
                conv2d_forward(
                    gpu,
                    &mut enc,
                    &Forward { x: &xt, w: &wt, b: Some(&bt), y: &y, p, epilogue: Epilogue::Identity, tiling: Some(*t) },
                );
                gpu.submit(enc);
                let want = conv2d::reference::conv2d_forward(&xf, xd, &wf, wd, Some(&to_f64(&b)), &p);
                close("y", &gpu.read(&y), &want, 1e-4)
            }
            "conv2d_backward_data" => {
                let dx = gpu.upload(&start, &xd);
                conv2d_backward_data(
                    gpu,
                    &mut enc,
                    &BackwardData { dy: &dyt, w: &wt, dx: &dx, p, acc: Accumulate::Add, tiling: Some(*t) },
                );
                gpu.submit(enc);
                let want = plus(&conv2d::reference::conv2d_backward_data(&dyf, &wf, xd, wd, &p), &start);
                close("dx", &gpu.read(&dx), &want, 1e-3)
            }
            _ => {
                let (dw, db) = (gpu.upload(&start[..w.len()], &wd), gpu.upload(&start[..7], &[7]));
                conv2d_backward_weight(
                    gpu,
                    &mut enc,
                    &BackwardWeight { x: &xt, dy: &dyt, dw: &dw, db: Some(&db), p, tiling: Some(*t) },
                );
                gpu.submit(enc);
                let (want_dw, want_db) = conv2d::reference::conv2d_backward_weight(&xf, &dyf, xd, wd, &p);
                close("dw", &gpu.read(&dw), &plus(&want_dw, &start), 1e-3)?;
                close("db", &gpu.read(&db), &plus(&want_db, &start), 1e-3)
            }
        }
    };
    let shapes = shapes
        .iter()
        .map(|&xd| {
            let [n, c, h, wd] = xd;
            let (x, w) =
                (gpu.upload(&random_vec(6, n * c * h * wd), &xd), gpu.upload(&random_vec(7, c * c * 9), &[c, c, 3, 3]));
            let (b, y, dy) =
                (gpu.upload(&random_vec(8, c), &[c]), gpu.empty(&xd), gpu.upload(&random_vec(9, x.len()), &xd));
            let (dx, dw, db) = (
                gpu.upload(&random_vec(10, x.len()), &xd),
                gpu.upload(&random_vec(11, w.len()), &[c, c, 3, 3]),
                gpu.upload(&random_vec(12, c), &[c]),
            );
            let record: Record<conv2d::Tiling> = match kernel {
                "conv2d_forward" => Box::new(move |gpu, enc, t| {
                    conv2d_forward(
                        gpu,
                        enc,
                        &Forward { x: &x, w: &w, b: Some(&b), y: &y, p, epilogue: Epilogue::Relu, tiling: Some(*t) },
                    )
                }),
                "conv2d_backward_data" => Box::new(move |gpu, enc, t| {
                    conv2d_backward_data(
                        gpu,
                        enc,
                        &BackwardData { dy: &dy, w: &w, dx: &dx, p, acc: Accumulate::Add, tiling: Some(*t) },
                    )
                }),
                _ => Box::new(move |gpu, enc, t| {
                    conv2d_backward_weight(
                        gpu,
                        enc,
                        &BackwardWeight { x: &x, dy: &dy, dw: &dw, db: Some(&db), p, tiling: Some(*t) },
                    )
                }),
            };
            (shape_label(&xd), record)
        })
        .collect();
    Family { kernel, candidates, label, check: Box::new(check), shapes }
}

pub(super) fn conv_transpose2d_family<'a>(
    gpu: &'a Gpu,
    candidates: Vec<Workgroups>,
    shapes: &[[usize; 4]],
) -> Family<'a, Workgroups> {
    use conv_transpose2d::reference;
    let check = |gpu: &Gpu, wg: &Workgroups| -> Result<(), String> {
        // W = 8 takes the quad kernels, W = 5 the general ones; both need checking.
        for (seed, dims, co) in [(20, [2, 6, 3, 8], 5), (30, [1, 3, 3, 5], 4)] {
            let [n, ci, h, wd] = dims;
            let big = [n, co, 2 * h, 2 * wd];
            let (x, w, b) =
                (random_vec(seed, n * ci * h * wd), random_vec(seed + 1, ci * co * 4), random_vec(seed + 2, co));
            let dy = random_vec(seed + 3, big.iter().product());
            let start = random_vec(seed + 4, x.len().max(w.len()));
            let (xt, wt, bt, dyt) =
                (gpu.upload(&x, &dims), gpu.upload(&w, &[ci, co, 2, 2]), gpu.upload(&b, &[co]), gpu.upload(&dy, &big));
            let (y, dx) = (gpu.empty(&big), gpu.upload(&start[..x.len()], &dims));
            let (dw, db) = (gpu.upload(&start[..w.len()], &[ci, co, 2, 2]), gpu.upload(&start[..co], &[co]));
            let mut enc = gpu.encoder();
            conv_transpose2d_forward(
                gpu,
                &mut enc,
                &conv_transpose2d::Forward { x: &xt, w: &wt, b: Some(&bt), y: &y, workgroups: Some(*wg) },
            );
            conv_transpose2d_backward_data(
                gpu,
                &mut enc,
                &conv_transpose2d::BackwardData {
                    w: &wt,
                    dy: &dyt,
                    dx: &dx,
                    acc: Accumulate::Add,
                    workgroups: Some(*wg),
                },
            );
            conv_transpose2d_backward_weight(
                gpu,
                &mut enc,
                &conv_transpose2d::BackwardWeight { x: &xt, dy: &dyt, dw: &dw, db: Some(&db), workgroups: Some(*wg) },
            );
            gpu.submit(enc);
            let (xf, wf, dyf) = (to_f64(&x), to_f64(&w), to_f64(&dy));
            let want_y = reference::conv_transpose2d_forward(&xf, &wf, Some(&to_f64(&b)), dims, co);
            close("y", &gpu.read(&y), &want_y, 1e-4)?;
            let want_dx = reference::conv_transpose2d_backward_data(&dyf, &wf, dims, co);
            close("dx", &gpu.read(&dx), &plus(&want_dx, &start), 1e-3)?;
            let (want_dw, want_db) = reference::conv_transpose2d_backward_weight(&xf, &dyf, dims, co);
            close("dw", &gpu.read(&dw), &plus(&want_dw, &start), 1e-3)?;
            close("db", &gpu.read(&db), &plus(&want_db, &start), 1e-3)?;
        }
        Ok(())
    };
    let shapes = shapes
        .iter()
        .map(|&xd| {
            let [n, c, h, wd] = xd;
            let co = (c / 2).max(1);
            let big = [n, co, 2 * h, 2 * wd];
            let (x, w) = (
                gpu.upload(&random_vec(21, n * c * h * wd), &xd),
                gpu.upload(&random_vec(22, c * co * 4), &[c, co, 2, 2]),
            );
            let (b, y) = (gpu.upload(&random_vec(23, co), &[co]), gpu.empty(&big));
            let dy = gpu.upload(&random_vec(24, big.iter().product()), &big);
            let (dx, dw, db) = (
                gpu.upload(&random_vec(25, x.len()), &xd),
                gpu.upload(&random_vec(26, w.len()), &[c, co, 2, 2]),
                gpu.upload(&random_vec(27, co), &[co]),
            );
            let record: Record<Workgroups> = Box::new(move |gpu, enc, wg| {
                conv_transpose2d_forward(
                    gpu,
                    enc,
                    &conv_transpose2d::Forward { x: &x, w: &w, b: Some(&b), y: &y, workgroups: Some(*wg) },
                );
                conv_transpose2d_backward_data(
                    gpu,
                    enc,
                    &conv_transpose2d::BackwardData {
                        w: &w,
                        dy: &dy,
                        dx: &dx,
                        acc: Accumulate::Add,
                        workgroups: Some(*wg),
                    },
                );
                conv_transpose2d_backward_weight(
                    gpu,
                    enc,
                    &conv_transpose2d::BackwardWeight { x: &x, dy: &dy, dw: &dw, db: Some(&db), workgroups: Some(*wg) },
                );
            });
            (format!("{} fwd+bwd", shape_label(&xd)), record)
        })
        .collect();
    Family { kernel: "conv_transpose2d", candidates, label: label_workgroups, check: Box::new(check), shapes }
}

pub(super) fn matmul_family<'a>(gpu: &'a Gpu, candidates: Vec<Tiles>, shapes: &[[usize; 3]]) -> Family<'a, Tiles> {
    let check = |gpu: &Gpu, tiles: &Tiles| -> Result<(), String> {
        // Multiples of 4 (the vec4 kernel, partial tiles) and not (the scalar one).
        for (seed, [m, k, n]) in [(40, [20, 36, 44]), (50, [13, 37, 21])] {
            let (a, b) = (random_vec(seed, m * k), random_vec(seed + 1, k * n));
            let (at, bt, c) = (gpu.upload(&a, &[m, k]), gpu.upload(&b, &[k, n]), gpu.empty(&[m, n]));
            let mut enc = gpu.encoder();
            matmul_forward(gpu, &mut enc, &matmul::Forward { a: &at, b: &bt, c: &c, tiles: Some(*tiles) });
            gpu.submit(enc);
            let want = matmul::reference::matmul_forward(&to_f64(&a), &to_f64(&b), [m, k, n]);
            close(&format!("c {m}x{k}x{n}"), &gpu.read(&c), &want, 1e-4)?;
        }
        Ok(())
    };
    let shapes = shapes
        .iter()
        .map(|&[m, k, n]| {
            let (a, b, c) = (
                gpu.upload(&random_vec(41, m * k), &[m, k]),
                gpu.upload(&random_vec(42, k * n), &[k, n]),
                gpu.empty(&[m, n]),
            );
            let record: Record<Tiles> = Box::new(move |gpu, enc, tiles| {
                matmul_forward(gpu, enc, &matmul::Forward { a: &a, b: &b, c: &c, tiles: Some(*tiles) })
            });
            (format!("{m}x{k}x{n}"), record)
        })
        .collect();
    Family { kernel: "matmul", candidates, label: label_tiles, check: Box::new(check), shapes }
}

/// `Err` naming `what` when `got` is not within `tol` of `want` (the tests' closeness rule).
pub(super) fn close(what: &str, got: &[f32], want: &[f64], tol: f64) -> Result<(), String> {
    let (err, i) = max_rel_error(&to_f64(got), want);
    (err <= tol).then_some(()).ok_or_else(|| format!("{what}: relative error {err:.1e} at {i}"))
}

/// `start + g`, what a backward kernel that adds `g` into `start` should leave.
pub(super) fn plus(g: &[f64], start: &[f32]) -> Vec<f64> {
    g.iter().zip(start).map(|(g, &s)| g + s as f64).collect()
}

pub(super) fn shape_label(s: &[usize]) -> String {
    s.iter().map(|d| d.to_string()).collect::<Vec<_>>().join("x")
}
