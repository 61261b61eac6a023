//! The textbook kernels against the f64 reference, and the tiled kernels against the textbook
//! kernels on the GPU, through the default wrappers switched with [`with_kernels`]: statistics,
//! forward and backward, training and evaluation, every epilogue.

use super::super::{
    batchnorm2d, batchnorm2d_backward as backward_default, batchnorm2d_forward as forward_default,
    batchnorm2d_running_stats, batchnorm2d_stats as stats_default, reference, Backward, Forward,
};
use super::*;
use crate::autograd::tape::Step;
use crate::ops::conv2d::Epilogue;
use crate::runtime::Kernels;
use crate::testing::{assert_close_f32, gpu, random_vec, to_f64, with_kernels};

/// Odd planes, planes of whole quads (the tiled vec4 entry points), one pixel a plane, and
/// 2 x 130 rows of 130 values a channel: three runs.
const SHAPES: [[usize; 4]; 5] = [[2, 3, 5, 7], [1, 4, 4, 4], [3, 5, 1, 1], [2, 17, 6, 6], [2, 2, 130, 130]];

const EPILOGUES: [Epilogue; 3] =
    [Epilogue::Identity, Epilogue::Relu, Epilogue::ReluDropout { p: 0.3, seed: 0x1234_5678_9abc }];

/// Random inputs of one shape: x (off centre, so that the mean matters), gamma, beta, the running
/// statistics, dy, and the start values of dx, dgamma, dbeta.
fn inputs(seed: u64, dims: [usize; 4]) -> [Vec<f32>; 9] {
    let (len, c) = (dims.iter().product(), dims[1]);
    let shifted = |v: Vec<f32>, by: f32, scale: f32| v.iter().map(|x| by + scale * x).collect::<Vec<f32>>();
    [
        shifted(random_vec(seed, len), 3.0, 2.0),
        shifted(random_vec(seed + 1, c), 1.25, 0.75),
        random_vec(seed + 2, c),
        random_vec(seed + 3, c),
        shifted(random_vec(seed + 4, c), 1.5, 0.5),
        random_vec(seed + 5, len),
        random_vec(seed + 6, len),
        random_vec(seed + 7, c),
        random_vec(seed + 8, c),
    ]
}

/// With `kernels`, through the default wrappers: in `mode`, the statistics (and the running ones
/// after a training step), y = epilogue(batch norm), and the backward's dx (added into), dx
/// overwritten, dgamma and dbeta (added into). In that order.
fn run(kernels: Kernels, seed: u64, dims: [usize; 4], mode: Mode, e: Epilogue) -> Vec<Vec<f32>> {
    let gpu = gpu();
    let c = dims[1];
    let [x, gamma, beta, rm, rv, dy, dx0, dg0, db0] = inputs(seed, dims);
    let (xt, dyt) = (gpu.upload(&x, &dims), gpu.upload(&dy, &dims));
    let [gamma, beta, rm, rv, dg, db] = [&gamma, &beta, &rm, &rv, &dg0, &db0].map(|v| gpu.upload(v, &[c]));
    let (dx, dx_fresh, y, mean, invstd) =
        (gpu.upload(&dx0, &dims), gpu.upload(&dx0, &dims), gpu.empty(&dims), gpu.empty(&[c]), gpu.empty(&[c]));
    with_kernels(gpu, kernels, || {
        let mut enc = gpu.encoder();
        match mode {
            Mode::Train => stats_default(gpu, &mut enc, &xt, &rm, &rv, &mean, &invstd),
            Mode::Eval => batchnorm2d_running_stats(gpu, &mut enc, &rm, &rv, &mean, &invstd),
        }
        let ch = Channels { mean: &mean, invstd: &invstd, gamma: &gamma, beta: &beta };
        forward_default(gpu, &mut enc, &Forward { x: &xt, ch, y: &y, epilogue: e });
        let backward = |enc: &mut Encoder, dx: (&Tensor, Accumulate), dparams: Option<(&Tensor, &Tensor)>| {
            let grads = Grads { dx: Some(dx), dgamma: dparams.map(|d| d.0), dbeta: dparams.map(|d| d.1) };
            backward_default(gpu, enc, &Backward { mode, x: &xt, dy: &dyt, ch, grads, epilogue: e });
        };
        backward(&mut enc, (&dx, Accumulate::Add), Some((&dg, &db)));
        backward(&mut enc, (&dx_fresh, Accumulate::Overwrite), None);
        gpu.submit(enc);
    });
    [&mean, &invstd, &rm, &rv, &y, &dx, &dx_fresh, &dg, &db].iter().map(|t| gpu.read(t)).collect()
}

const NAMES: [&str; 9] =
    ["mean", "invstd", "running_mean", "running_var", "y", "dx", "dx (overwritten)", "dgamma", "dbeta"];

#[test]
fn textbook_kernels_match_the_f64_reference() {
    for (k, dims) in SHAPES.into_iter().enumerate() {
        for (mode, e) in [(Mode::Train, EPILOGUES[0]), (Mode::Train, EPILOGUES[2]), (Mode::Eval, EPILOGUES[1])] {
            let seed = 4000 + 20 * k as u64;
            let got = run(Kernels::Reference, seed, dims, mode, e);
            let [x, gamma, beta, rm, rv, dy, dx0, dg0, db0] = inputs(seed, dims).map(|v| to_f64(&v));
            let m = dims[0] * dims[2] * dims[3];
            let (mean, invstd, rm, rv) = match mode {
                Mode::Train => {
                    let (mean, var) = reference::batch_stats(&x, dims);
                    let (rm, rv) = reference::update_running(&rm, &rv, &mean, &var, m);
                    (mean, reference::invstd(&var), rm, rv)
                }
                Mode::Eval => (rm.clone(), reference::invstd(&rv), rm, rv),
            };
            let y = reference::batchnorm2d_forward(
                &x,
                reference::Channels { mean: &mean, invstd: &invstd, gamma: &gamma, beta: &beta },
                dims,
                e,
            );
            let train = mode == Mode::Train;
            let ch = reference::Channels { mean: &mean, invstd: &invstd, gamma: &gamma, beta: &beta };
            let (dx, dg, db) = reference::batchnorm2d_backward(&x, &dy, ch, dims, train, e);
            let plus = |g: &[f64], s: &[f64]| g.iter().zip(s).map(|(g, s)| g + s).collect::<Vec<f64>>();
            let want = [mean, invstd, rm, rv, y, plus(&dx, &dx0), dx, plus(&dg, &dg0), plus(&db, &db0)];
            for (i, name) in NAMES.iter().enumerate() {
                let tol = if i < 5 { 1e-4 } else { 1e-3 };
                assert_close_f32(&format!("{name} {dims:?} {mode:?} {e:?}"), &got[i], &want[i], tol);
            }
        }
    }
}

#[test]
fn tiled_kernels_match_the_textbook_kernels() {
    for (k, dims) in SHAPES.into_iter().enumerate() {
        for mode in [Mode::Train, Mode::Eval] {
            for e in EPILOGUES {
                let seed = 4100 + 20 * k as u64;
                let (tuned, textbook) =
                    (run(Kernels::Tuned, seed, dims, mode, e), run(Kernels::Reference, seed, dims, mode, e));
                for (i, name) in NAMES.iter().enumerate() {
                    let tol = if i < 5 { 1e-4 } else { 1e-3 };
                    let what = format!("{name} {dims:?} {mode:?} {e:?}");
                    assert_close_f32(&what, &tuned[i], &to_f64(&textbook[i]), tol);
                }
                // The dropout mask, bit for bit: the same zeros in y.
                let zeros = |y: &[f32]| y.iter().map(|&v| v == 0.0).collect::<Vec<_>>();
                assert_eq!(zeros(&tuned[4]), zeros(&textbook[4]), "zeros of y {dims:?} {mode:?} {e:?}");
            }
        }
    }
}

#[test]
fn the_tape_on_the_textbook_kernels_gives_the_tuned_gradients() {
    let gpu = gpu();
    let dims = [2, 3, 6, 8];
    let [x, gamma, beta, rm, rv, dy, ..] = inputs(4200, dims);
    let x = gpu.upload(&x, &dims).with_grad();
    let (gamma, beta) = (gpu.upload(&gamma, &[3]).with_grad(), gpu.upload(&beta, &[3]).with_grad());
    let dy = gpu.upload(&dy, &dims);
    let e = Epilogue::ReluDropout { p: 0.25, seed: 77 };
    let step = |kernels| {
        // Fresh running statistics each time: the step updates them in place.
        let (rm, rv) = (gpu.upload(&rm, &[3]), gpu.upload(&rv, &[3]));
        with_kernels(gpu, kernels, || {
            let mut step = Step::train(gpu);
            let y = batchnorm2d(&mut step, &x, &gamma, &beta, &rm, &rv, e);
            let grads = step.backward(vec![(y.clone(), dy.clone())]);
            step.submit();
            [&y, &rm, &rv, grads.get(&x).unwrap(), grads.get(&gamma).unwrap(), grads.get(&beta).unwrap()]
                .map(|t| gpu.read(t))
        })
    };
    let (tuned, textbook) = (step(Kernels::Tuned), step(Kernels::Reference));
    for (k, name) in ["y", "running_mean", "running_var", "dx", "dgamma", "dbeta"].iter().enumerate() {
        let tol = if k < 3 { 1e-4 } else { 1e-3 };
        assert_close_f32(name, &tuned[k], &to_f64(&textbook[k]), tol);
    }
    assert!(!gpu.compiled_constants("batchnorm2d/textbook", "batchnorm_backward_data").is_empty());
}
