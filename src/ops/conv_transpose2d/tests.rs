use super::*;
use crate::ops::concat::{concat, reference as concat_reference};
use crate::testing::{assert_close, assert_close_f32, dot, gpu, numeric_grad, random_vec, to_f64};

#[test]
fn reference_backward_matches_finite_differences() {
    let (dims, co) = ([2, 3, 2, 3], 5);
    let [n, ci, h, wd] = dims;
    let x = to_f64(&random_vec(1, n * ci * h * wd));
    let w = to_f64(&random_vec(2, ci * co * 4));
    let b = to_f64(&random_vec(3, co));
    let r = to_f64(&random_vec(4, n * co * 4 * h * wd));
    let fwd = |x: &[f64], w: &[f64], b: &[f64]| reference::conv_transpose2d_forward(x, w, Some(b), dims, co);
    let (dw, db) = reference::conv_transpose2d_backward_weight(&x, &r, dims, co);
    let dx = reference::conv_transpose2d_backward_data(&r, &w, dims, co);
    assert_close("dx", &dx, &numeric_grad(|x| dot(&r, &fwd(x, &w, &b)), &x, 1e-6), 1e-6);
    assert_close("dw", &dw, &numeric_grad(|w| dot(&r, &fwd(&x, w, &b)), &w, 1e-6), 1e-6);
    assert_close("db", &db, &numeric_grad(|b| dot(&r, &fwd(&x, &w, b)), &b, 1e-6), 1e-6);
}

/// `start + g`, elementwise: what a backward kernel that adds `g` should leave.
fn plus(g: &[f64], start: &[f32]) -> Vec<f64> {
    g.iter().zip(start).map(|(g, &s)| g + s as f64).collect()
}

/// Runs forward (with and without bias) and all backward kernels on one shape and
/// compares with the reference; gradients start at random values.
fn check_shape(seed: u64, dims: [usize; 4], co: usize) {
    check_shape_with(seed, dims, co, &Workgroups::default());
}

/// [`check_shape`] with the forward, data and weight kernels at workgroup sizes `wg`.
fn check_shape_with(seed: u64, dims: [usize; 4], co: usize, wg: &Workgroups) {
    let gpu = gpu();
    let [n, ci, h, wd] = dims;
    let big = [n, co, 2 * h, 2 * wd];
    let x = random_vec(seed, n * ci * h * wd);
    let w = random_vec(seed + 1, ci * co * 4);
    let b = random_vec(seed + 2, co);
    let dy = random_vec(seed + 3, big.iter().product());
    let (dx0, dw0, db0) = (random_vec(seed + 4, x.len()), random_vec(seed + 5, w.len()), random_vec(seed + 6, co));
    let (xt, wt, bt) = (gpu.upload(&x, &dims), gpu.upload(&w, &[ci, co, 2, 2]), gpu.upload(&b, &[co]));
    let dyt = gpu.upload(&dy, &big);
    let (dxt, dwt, dbt) = (gpu.upload(&dx0, &dims), gpu.upload(&dw0, &[ci, co, 2, 2]), gpu.upload(&db0, &[co]));
    let db_alone = gpu.upload(&db0, &[co]);
    let dx_fresh = gpu.upload(&dx0, &dims); // overwritten: its values must go
    let (y, y_nobias) = (gpu.empty(&big), gpu.empty(&big));
    let mut enc = gpu.encoder();
    conv_transpose2d_forward(gpu, &mut enc, &Forward { x: &xt, w: &wt, b: Some(&bt), y: &y, workgroups: Some(*wg) });
    conv_transpose2d_forward(gpu, &mut enc, &Forward { x: &xt, w: &wt, b: None, y: &y_nobias, workgroups: Some(*wg) });
    conv_transpose2d_backward_data(
        gpu,
        &mut enc,
        &BackwardData { w: &wt, dy: &dyt, dx: &dxt, acc: Accumulate::Add, workgroups: Some(*wg) },
    );
    let params = params("test", &dx_fresh, &wt, &dyt, false);
    let fresh = Operands { x: &dx_fresh, w: &wt, b: None, y: &dyt };
    backward_data(gpu, &mut enc, params, fresh, Accumulate::Overwrite, wg);
    conv_transpose2d_backward_weight(
        gpu,
        &mut enc,
        &BackwardWeight { x: &xt, dy: &dyt, dw: &dwt, db: Some(&dbt), workgroups: Some(*wg) },
    );
    conv_transpose2d_backward_bias(gpu, &mut enc, &dyt, &db_alone);
    gpu.submit(enc);

    let (xf, wf, bf, dyf) = (to_f64(&x), to_f64(&w), to_f64(&b), to_f64(&dy));
    let (dw, db) = reference::conv_transpose2d_backward_weight(&xf, &dyf, dims, co);
    let what = format!("{dims:?} -> {co}");
    let want_y = reference::conv_transpose2d_forward(&xf, &wf, Some(&bf), dims, co);
    assert_close_f32(&format!("y {what}"), &gpu.read(&y), &want_y, 1e-4);
    let want_y = reference::conv_transpose2d_forward(&xf, &wf, None, dims, co);
    assert_close_f32(&format!("y (no bias) {what}"), &gpu.read(&y_nobias), &want_y, 1e-4);
    let dx = reference::conv_transpose2d_backward_data(&dyf, &wf, dims, co);
    assert_close_f32(&format!("dx {what}"), &gpu.read(&dxt), &plus(&dx, &dx0), 1e-3);
    assert_close_f32(&format!("dx (overwritten) {what}"), &gpu.read(&dx_fresh), &dx, 1e-3);
    assert_close_f32(&format!("dw {what}"), &gpu.read(&dwt), &plus(&dw, &dw0), 1e-3);
    assert_close_f32(&format!("db {what}"), &gpu.read(&dbt), &plus(&db, &db0), 1e-3);
    assert_close_f32(&format!("db alone {what}"), &gpu.read(&db_alone), &plus(&db, &db0), 1e-3);
}

#[test]
fn gpu_matches_reference_on_odd_shapes() {
    // W not a multiple of 4: the general kernels.
    check_shape(10, [1, 1, 1, 1], 1);
    check_shape(20, [2, 3, 5, 7], 5);
    check_shape(30, [1, 7, 1, 9], 3);
    check_shape(40, [2, 5, 6, 1], 9);
    check_shape(50, [1, 6, 11, 13], 2);
}

#[test]
fn quad_kernels_match_reference_on_odd_shapes() {
    // W a multiple of 4: the quad kernels. Channel counts that are not multiples of their
    // blocks (8 and 16 in the forward and data, 16 x 4 in the weight gradient), rows of 1, 3
    // and 5 quads (tiles of 4 quads that overhang), batch 1 and > 1.
    check_shape(110, [1, 1, 1, 4], 1);
    check_shape(120, [2, 3, 5, 8], 5);
    check_shape(130, [3, 17, 3, 12], 9);
    check_shape(140, [1, 5, 2, 20], 13);
    check_shape(150, [2, 33, 7, 4], 3);
}

#[test]
fn other_workgroup_sizes_match_reference() {
    // Odd and large groups, on general (W = 7, 29) and quad (W = 8, 28) shapes.
    for (k, wg) in [Workgroups { general: 48, quads: 8 }, Workgroups { general: 256, quads: 128 }].iter().enumerate() {
        let seed = 200 + 10 * k as u64;
        check_shape_with(seed, [2, 3, 5, 7], 5, wg);
        check_shape_with(seed + 1, [2, 3, 5, 8], 5, wg);
        check_shape_with(seed + 2, [3, 5, 23, 29], 6, wg);
        check_shape_with(seed + 3, [3, 17, 3, 28], 9, wg);
    }
}

#[test]
fn no_output_channels_overwrite_dx_with_zeros() {
    // O = 0: dx is an empty sum. Added into, it keeps its values; overwritten, it is zero.
    let gpu = gpu();
    let (dims, big) = ([2, 3, 2, 4], [2, 0, 4, 8]);
    let start = random_vec(400, 2 * 3 * 2 * 4);
    let (wt, dyt) = (gpu.upload(&[], &[3, 0, 2, 2]), gpu.upload(&[], &big));
    let (kept, fresh) = (gpu.upload(&start, &dims), gpu.upload(&start, &dims));
    let mut enc = gpu.encoder();
    conv_transpose2d_backward_data(
        gpu,
        &mut enc,
        &BackwardData { w: &wt, dy: &dyt, dx: &kept, acc: Accumulate::Add, workgroups: None },
    );
    conv_transpose2d_backward_data(
        gpu,
        &mut enc,
        &BackwardData { w: &wt, dy: &dyt, dx: &fresh, acc: Accumulate::Overwrite, workgroups: None },
    );
    gpu.submit(enc);
    assert_close_f32("dx added into", &gpu.read(&kept), &to_f64(&start), 0.0);
    assert_close_f32("dx overwritten", &gpu.read(&fresh), &vec![0.0; start.len()], 0.0);
}

#[test]
fn gpu_matches_reference_with_many_slices() {
    // Enough pixels that the weight gradient splits its reduction into many slices: with a
    // slice step that carries across rows and images (general), or slices of rows (quads).
    check_shape(60, [3, 5, 23, 29], 6);
    check_shape(70, [2, 16, 16, 16], 8);
    check_shape(80, [3, 5, 23, 28], 6);
}

#[test]
fn weight_gradient_slices_keep_loops_short() {
    // Large images and many channels: every thread's loop stays under MAX_STEPS iterations.
    for (dims, co) in [([16, 256, 256, 256], 256), ([1, 1, 2048, 4096], 1), ([64, 3, 512, 508], 2)] {
        let p = Params::new(dims, co, co);
        let blocks = p.ci.div_ceil(WEIGHT_C) * p.co.div_ceil(WEIGHT_O);
        if p.quads() {
            let s = p.with_row_slices(blocks);
            assert!(s.rows_per_slice * (p.w / 4 + 1) <= MAX_STEPS, "{dims:?}: {} rows a slice", s.rows_per_slice);
            assert!(s.slices * s.rows_per_slice >= p.n * p.h, "{dims:?}: slices miss rows");
        }
        let s = p.with_pixel_slices(p.ci.div_ceil(TC) * p.co.div_ceil(TO));
        assert!((p.n * p.h * p.w).div_ceil(s.slices) <= MAX_STEPS, "{dims:?}: {} slices", s.slices);
    }
}

#[test]
fn tape_gives_the_reference_gradients() {
    let gpu = gpu();
    for (dims, co) in [([2, 3, 5, 7], 4), ([2, 3, 5, 8], 4)] {
        let [n, ci, h, wd] = dims;
        let x = random_vec(80, n * ci * h * wd);
        let w = random_vec(81, ci * co * 4);
        let b = random_vec(82, co);
        let dy = random_vec(83, n * co * 4 * h * wd);
        for with_bias in [true, false] {
            let xt = gpu.upload(&x, &dims).with_grad();
            let wt = gpu.upload(&w, &[ci, co, 2, 2]).with_grad();
            let bt = gpu.upload(&b, &[co]).with_grad();
            let mut step = Step::train(gpu);
            let y = conv_transpose2d(&mut step, &xt, &wt, with_bias.then_some(&bt));
            assert_eq!(y.shape(), [n, co, 2 * h, 2 * wd]);
            let dyt = gpu.upload(&dy, y.shape());
            let grads = step.backward(vec![(y.clone(), dyt)]);
            step.submit();

            let (xf, wf, bf, dyf) = (to_f64(&x), to_f64(&w), to_f64(&b), to_f64(&dy));
            let bias = with_bias.then_some(bf.as_slice());
            let want_y = reference::conv_transpose2d_forward(&xf, &wf, bias, dims, co);
            assert_close_f32("tape y", &gpu.read(&y), &want_y, 1e-4);
            let want_dx = reference::conv_transpose2d_backward_data(&dyf, &wf, dims, co);
            assert_close_f32("tape dx", &gpu.read(grads.get(&xt).unwrap()), &want_dx, 1e-3);
            let (dw, db) = reference::conv_transpose2d_backward_weight(&xf, &dyf, dims, co);
            assert_close_f32("tape dw", &gpu.read(grads.get(&wt).unwrap()), &dw, 1e-3);
            match with_bias {
                true => assert_close_f32("tape db", &gpu.read(grads.get(&bt).unwrap()), &db, 1e-3),
                false => assert!(grads.get(&bt).is_none(), "an unused bias got a gradient"),
            }
        }
    }
}

#[test]
fn bias_gradient_alone() {
    // Only the bias needs a gradient: the tape takes the bias-only path.
    let gpu = gpu();
    let (dims, co) = ([2, 3, 4, 5], 3);
    let dy = random_vec(90, 2 * co * 8 * 10);
    let xt = gpu.upload(&random_vec(91, 2 * 3 * 4 * 5), &dims);
    let wt = gpu.upload(&random_vec(92, 3 * co * 4), &[3, co, 2, 2]);
    let bt = gpu.upload(&random_vec(93, co), &[co]).with_grad();
    let mut step = Step::train(gpu);
    let y = conv_transpose2d(&mut step, &xt, &wt, Some(&bt));
    let grads = step.backward(vec![(y.clone(), gpu.upload(&dy, y.shape()))]);
    step.submit();
    assert_eq!(grads.len(), 1, "only the bias should have a gradient");
    let (_, db) = reference::conv_transpose2d_backward_weight(&to_f64(&random_vec(91, 120)), &to_f64(&dy), dims, co);
    assert_close_f32("db", &gpu.read(grads.get(&bt).unwrap()), &db, 1e-3);
}

/// The fused op's wrappers against concat(conv_transpose2d(x, w, b), skip) in f64: forward,
/// and every gradient from random starting values. `s` skip channels.
fn check_concat(seed: u64, dims: [usize; 4], co: usize, s: usize) {
    let gpu = gpu();
    let [n, ci, h, wd] = dims;
    let (plane, ct) = (4 * h * wd, co + s);
    let (skip_dims, big) = ([n, s, 2 * h, 2 * wd], [n, ct, 2 * h, 2 * wd]);
    let x = random_vec(seed, n * ci * h * wd);
    let w = random_vec(seed + 1, ci * co * 4);
    let b = random_vec(seed + 2, co);
    let skip = random_vec(seed + 3, n * s * plane);
    let dy = random_vec(seed + 4, n * ct * plane);
    let start = |k: u64, len: usize| random_vec(seed + 10 + k, len);
    let (dx0, dw0, db0, dskip0) = (start(0, x.len()), start(1, w.len()), start(2, co), start(3, skip.len()));
    let (xt, wt, bt) = (gpu.upload(&x, &dims), gpu.upload(&w, &[ci, co, 2, 2]), gpu.upload(&b, &[co]));
    let (skipt, dyt) = (gpu.upload(&skip, &skip_dims), gpu.upload(&dy, &big));
    let (dxt, dwt) = (gpu.upload(&dx0, &dims), gpu.upload(&dw0, &[ci, co, 2, 2]));
    let (dbt, dskipt) = (gpu.upload(&db0, &[co]), gpu.upload(&dskip0, &skip_dims));
    let db_alone = gpu.upload(&db0, &[co]);
    // Overwritten: their values must go.
    let (dx_fresh, dskip_fresh) = (gpu.upload(&dx0, &dims), gpu.upload(&dskip0, &skip_dims));
    let y = gpu.empty(&big);
    let mut enc = gpu.encoder();
    conv_transpose2d_concat_forward(gpu, &mut enc, &xt, &wt, Some(&bt), &skipt, &y);
    let add = Accumulate::Add;
    let all = ConcatGrads { dx: Some((&dxt, add)), dw: Some(&dwt), db: Some(&dbt), dskip: Some((&dskipt, add)) };
    conv_transpose2d_concat_backward(gpu, &mut enc, &xt, &wt, &skipt, &dyt, all);
    let fill = Accumulate::Overwrite;
    let fresh = ConcatGrads { dx: Some((&dx_fresh, fill)), dskip: Some((&dskip_fresh, fill)), ..Default::default() };
    conv_transpose2d_concat_backward(gpu, &mut enc, &xt, &wt, &skipt, &dyt, fresh);
    let bias_only = ConcatGrads { db: Some(&db_alone), ..Default::default() };
    conv_transpose2d_concat_backward(gpu, &mut enc, &xt, &wt, &skipt, &dyt, bias_only);
    gpu.submit(enc);

    let (xf, wf, bf, dyf) = (to_f64(&x), to_f64(&w), to_f64(&b), to_f64(&dy));
    let up = reference::conv_transpose2d_forward(&xf, &wf, Some(&bf), dims, co);
    let want_y = concat_reference::concat_forward(&up, &to_f64(&skip), n, co, s, plane);
    let what = format!("{dims:?} -> {co} + {s}");
    assert_close_f32(&format!("fused y {what}"), &gpu.read(&y), &want_y, 1e-4);
    let (dup, dskip) = concat_reference::concat_backward(&dyf, n, co, s, plane);
    let want_dx = reference::conv_transpose2d_backward_data(&dup, &wf, dims, co);
    let (dw, db) = reference::conv_transpose2d_backward_weight(&xf, &dup, dims, co);
    assert_close_f32(&format!("fused dx {what}"), &gpu.read(&dxt), &plus(&want_dx, &dx0), 1e-3);
    assert_close_f32(&format!("fused dw {what}"), &gpu.read(&dwt), &plus(&dw, &dw0), 1e-3);
    assert_close_f32(&format!("fused db {what}"), &gpu.read(&dbt), &plus(&db, &db0), 1e-3);
    assert_close_f32(&format!("fused db alone {what}"), &gpu.read(&db_alone), &plus(&db, &db0), 1e-3);
    assert_close_f32(&format!("fused dskip {what}"), &gpu.read(&dskipt), &plus(&dskip, &dskip0), 1e-3);
    assert_close_f32(&format!("fused dx (overwritten) {what}"), &gpu.read(&dx_fresh), &want_dx, 1e-3);
    assert_close_f32(&format!("fused dskip (overwritten) {what}"), &gpu.read(&dskip_fresh), &dskip, 0.0);
}

#[test]
fn fused_concat_matches_concat_of_conv_transpose2d() {
    // General kernels (W % 4 != 0) and quad kernels, with skips narrower, as wide and wider.
    check_concat(200, [1, 1, 1, 1], 1, 1);
    check_concat(210, [2, 3, 5, 7], 5, 4);
    check_concat(220, [2, 6, 3, 4], 3, 3);
    check_concat(230, [3, 17, 2, 12], 9, 11);
    check_concat(240, [1, 5, 9, 20], 2, 1);
}

#[test]
fn fused_concat_on_the_tape_equals_concat_of_conv_transpose2d() {
    // The fused op and the two-op chain on the same inputs: same output, same gradients
    // (also when some inputs need none).
    let gpu = gpu();
    for (dims, co, s) in [([2, 3, 5, 7], 4, 3), ([2, 5, 3, 8], 6, 6)] {
        let [n, ci, h, wd] = dims;
        let skip_dims = [n, s, 2 * h, 2 * wd];
        let x = random_vec(300, n * ci * h * wd);
        let w = random_vec(301, ci * co * 4);
        let b = random_vec(302, co);
        let skip = random_vec(303, skip_dims.iter().product());
        let dy = random_vec(304, n * (co + s) * 4 * h * wd);
        for (x_grad, w_grad, skip_grad) in [(true, true, true), (false, false, true), (true, false, false)] {
            let run = |fused: bool| {
                let grad = |t: Tensor, on: bool| if on { t.with_grad() } else { t };
                let xt = grad(gpu.upload(&x, &dims), x_grad);
                let wt = grad(gpu.upload(&w, &[ci, co, 2, 2]), w_grad);
                let bt = gpu.upload(&b, &[co]).with_grad();
                let skipt = grad(gpu.upload(&skip, &skip_dims), skip_grad);
                let mut step = Step::train(gpu);
                let y = if fused {
                    conv_transpose2d_concat(&mut step, &xt, &wt, Some(&bt), &skipt)
                } else {
                    let up = conv_transpose2d(&mut step, &xt, &wt, Some(&bt));
                    concat(&mut step, &up, &skipt)
                };
                assert_eq!(y.shape(), [n, co + s, 2 * h, 2 * wd]);
                let grads = step.backward(vec![(y.clone(), gpu.upload(&dy, y.shape()))]);
                step.submit();
                let read = |t: &Tensor| grads.get(t).map(|g| gpu.read(g));
                (gpu.read(&y), [read(&xt), read(&wt), read(&bt), read(&skipt)])
            };
            let ((y, got), (want_y, want)) = (run(true), run(false));
            let what = format!("{dims:?} -> {co} + {s}, grads of x {x_grad} w {w_grad} skip {skip_grad}");
            assert_close_f32(&format!("tape y {what}"), &y, &to_f64(&want_y), 1e-5);
            for (name, (g, want)) in ["dx", "dw", "db", "dskip"].iter().zip(got.iter().zip(&want)) {
                match (g, want) {
                    (Some(g), Some(want)) => assert_close_f32(&format!("tape {name} {what}"), g, &to_f64(want), 1e-5),
                    (None, None) => {}
                    _ => panic!("{name} {what}: gradient present in one op and not the other"),
                }
            }
        }
    }
}
