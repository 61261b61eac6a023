use super::*;
use crate::testing::{assert_close, assert_close_f32, dot, gpu, numeric_grad, random_vec, to_f64};

#[test]
fn workgroups_shrink_to_the_tiles() {
    let t = Tiling::default();
    assert_eq!(t.wg, 64);
    // The 16x16 level at batch 2: 2 x 4 x 2 tiles of 4 rows x 8 columns.
    assert_eq!(t.for_tiles(16), Tiling { wg: 16, ..t });
    assert_eq!(t.for_tiles(5).wg, 8);
    assert_eq!(t.for_tiles(1000).wg, 64);
}

/// (x dims, w dims, params) of the odd shapes every test runs.
pub(super) fn cases() -> Vec<([usize; 4], [usize; 4], Conv2d)> {
    vec![
        ([1, 3, 7, 9], [5, 3, 3, 3], Conv2d::new(1, 1)),
        ([2, 3, 7, 9], [5, 3, 3, 3], Conv2d::new(2, 1)),
        ([2, 3, 7, 9], [5, 3, 1, 1], Conv2d::new(1, 0)),
        ([1, 2, 9, 7], [3, 2, 5, 5], Conv2d::new(1, 2)),
        ([2, 3, 7, 9], [5, 3, 3, 1], Conv2d { stride: [1, 1], pad: [1, 0] }),
        ([2, 4, 8, 10], [6, 4, 2, 2], Conv2d::new(2, 0)),
        ([1, 1, 1, 1], [1, 1, 1, 1], Conv2d::new(1, 0)),
        ([2, 17, 6, 5], [19, 17, 3, 3], Conv2d::new(1, 1)),
        ([1, 3, 8, 8], [4, 3, 3, 3], Conv2d::new(3, 2)),
        // W a multiple of 4: the forward tile reads rows of x as vec4s (one partial tile of
        // 4 columns; then 12 columns, one and a half tiles).
        ([1, 3, 5, 4], [5, 3, 3, 3], Conv2d::new(1, 1)),
        ([2, 6, 7, 12], [9, 6, 3, 3], Conv2d::new(1, 1)),
        // 1x1 with W a multiple of 4 (the head's path: vec4 rows of x and y in the forward
        // and backward data, quads in the weight gradient), 6 and 9 output channels.
        ([2, 5, 7, 12], [6, 5, 1, 1], Conv2d::new(1, 0)),
        ([1, 3, 7, 8], [9, 3, 1, 1], Conv2d { stride: [2, 1], pad: [0, 0] }),
        // Row stride 2 with vec4 rows (OW = W = 8).
        ([1, 4, 9, 8], [5, 4, 3, 3], Conv2d { stride: [2, 1], pad: [1, 1] }),
    ]
}

pub(super) fn yd(xd: [usize; 4], wd: [usize; 4], p: &Conv2d) -> [usize; 4] {
    let [oh, ow] = p.out_size([xd[2], xd[3]], [wd[2], wd[3]]);
    [xd[0], wd[0], oh, ow]
}

#[test]
fn reference_backward_matches_finite_differences() {
    for (seed, (xd, wd, p)) in cases().into_iter().enumerate().take(6) {
        let seed = 10 * seed as u64;
        let x = to_f64(&random_vec(seed, xd.iter().product()));
        let w = to_f64(&random_vec(seed + 1, wd.iter().product()));
        let b = to_f64(&random_vec(seed + 2, wd[0]));
        let r = to_f64(&random_vec(seed + 3, yd(xd, wd, &p).iter().product()));
        let f = reference::conv2d_forward;
        let want_dx = numeric_grad(|x| dot(&r, &f(x, xd, &w, wd, Some(&b), &p)), &x, 1e-6);
        let want_dw = numeric_grad(|w| dot(&r, &f(&x, xd, w, wd, Some(&b), &p)), &w, 1e-6);
        let want_db = numeric_grad(|b| dot(&r, &f(&x, xd, &w, wd, Some(b), &p)), &b, 1e-6);
        let dx = reference::conv2d_backward_data(&r, &w, xd, wd, &p);
        let (dw, db) = reference::conv2d_backward_weight(&x, &r, xd, wd, &p);
        assert_close(&format!("dx {xd:?} {wd:?} {p:?}"), &dx, &want_dx, 1e-6);
        assert_close(&format!("dw {xd:?} {wd:?} {p:?}"), &dw, &want_dw, 1e-6);
        assert_close(&format!("db {xd:?} {wd:?} {p:?}"), &db, &want_db, 1e-6);
    }
}

/// Runs forward (bias or not), backward data and backward weight on the GPU for one case and
/// checks all against the reference; `t` picks the register tiling.
fn check_gpu(seed: u64, xd: [usize; 4], wd: [usize; 4], p: Conv2d, bias: bool, t: &Tiling) {
    let gpu = gpu();
    let ydims = yd(xd, wd, &p);
    let x = random_vec(seed, xd.iter().product());
    let w = random_vec(seed + 1, wd.iter().product());
    let b = random_vec(seed + 2, wd[0]);
    let dy = random_vec(seed + 3, ydims.iter().product());
    let (dx0, dw0, db0) = (random_vec(seed + 4, x.len()), random_vec(seed + 5, w.len()), random_vec(seed + 6, wd[0]));
    let (xt, wt, bt, dyt) =
        (gpu.upload(&x, &xd), gpu.upload(&w, &wd), gpu.upload(&b, &[wd[0]]), gpu.upload(&dy, &ydims));
    let (dxt, dwt, dbt) = (gpu.upload(&dx0, &xd), gpu.upload(&dw0, &wd), gpu.upload(&db0, &[wd[0]]));
    let y = gpu.empty(&ydims);
    let y_shared = gpu.empty(&ydims);
    let mut enc = gpu.encoder();
    let bopt = bias.then_some(&bt);
    conv2d_forward(
        gpu,
        &mut enc,
        &Forward { x: &xt, w: &wt, b: bopt, y: &y, p, epilogue: Epilogue::Identity, tiling: Some(*t) },
    );
    conv2d_forward_shared(
        gpu,
        &mut enc,
        &Forward { x: &xt, w: &wt, b: bopt, y: &y_shared, p, epilogue: Epilogue::Identity, tiling: None },
        &SharedTiling::default(),
    );
    conv2d_backward_data(
        gpu,
        &mut enc,
        &BackwardData { dy: &dyt, w: &wt, dx: &dxt, p, acc: Accumulate::Add, tiling: Some(*t) },
    );
    conv2d_backward_weight(
        gpu,
        &mut enc,
        &BackwardWeight { x: &xt, dy: &dyt, dw: &dwt, db: bias.then_some(&dbt), p, tiling: Some(*t) },
    );
    gpu.submit(enc);

    let what = format!("{xd:?} {wd:?} {p:?} bias {bias} {t:?}");
    let (xf, wf, bf, dyf) = (to_f64(&x), to_f64(&w), to_f64(&b), to_f64(&dy));
    let want_y = reference::conv2d_forward(&xf, xd, &wf, wd, bias.then_some(&bf[..]), &p);
    assert_close_f32(&format!("y {what}"), &gpu.read(&y), &want_y, 1e-4);
    assert_close_f32(&format!("y (shared) {what}"), &gpu.read(&y_shared), &want_y, 1e-4);
    let plus = |g: Vec<f64>, start: &[f32]| -> Vec<f64> { g.iter().zip(start).map(|(g, &s)| g + s as f64).collect() };
    let want_dx = plus(reference::conv2d_backward_data(&dyf, &wf, xd, wd, &p), &dx0);
    assert_close_f32(&format!("dx {what}"), &gpu.read(&dxt), &want_dx, 1e-3);
    let (dw, db) = reference::conv2d_backward_weight(&xf, &dyf, xd, wd, &p);
    assert_close_f32(&format!("dw {what}"), &gpu.read(&dwt), &plus(dw, &dw0), 1e-3);
    let want_db = if bias { plus(db, &db0) } else { to_f64(&db0) };
    assert_close_f32(&format!("db {what}"), &gpu.read(&dbt), &want_db, 1e-3);
}

#[test]
fn gpu_matches_reference_on_odd_shapes() {
    for (k, (xd, wd, p)) in cases().into_iter().enumerate() {
        check_gpu(100 + 10 * k as u64, xd, wd, p, k % 2 == 0, &Tiling::default());
        check_gpu(200 + 10 * k as u64, xd, wd, p, k % 2 == 1, &Tiling::default());
    }
}

#[test]
fn backward_data_overwrites_stale_values() {
    // Accumulate::Overwrite: dx starts at random values it must lose, on every case (the
    // stride-1 path runs the forward entry point, the gather path clears dx first).
    let gpu = gpu();
    for (k, (xd, wd, p)) in cases().into_iter().enumerate() {
        let seed = 400 + 10 * k as u64;
        let (w, dy) = (random_vec(seed, wd.iter().product()), random_vec(seed + 1, yd(xd, wd, &p).iter().product()));
        let (wt, dyt) = (gpu.upload(&w, &wd), gpu.upload(&dy, &yd(xd, wd, &p)));
        let dx = gpu.upload(&random_vec(seed + 2, xd.iter().product()), &xd);
        let mut enc = gpu.encoder();
        conv2d_backward_data(
            gpu,
            &mut enc,
            &BackwardData { dy: &dyt, w: &wt, dx: &dx, p, acc: Accumulate::Overwrite, tiling: None },
        );
        gpu.submit(enc);
        let want = reference::conv2d_backward_data(&to_f64(&dy), &to_f64(&w), xd, wd, &p);
        assert_close_f32(&format!("dx {xd:?} {wd:?} {p:?}"), &gpu.read(&dx), &want, 1e-3);
    }
}

#[test]
fn gpu_matches_reference_with_other_tilings() {
    // Odd block sizes, so edge blocks of channels are partly empty.
    let tilings =
        [Tiling { wg: 16, rows: 2, tm: 3, bw_threads: 4096 }, Tiling { wg: 24, rows: 4, tm: 5, bw_threads: 64 }];
    for (k, t) in tilings.iter().enumerate() {
        check_gpu(300 + k as u64, [2, 5, 11, 6], [7, 5, 3, 3], Conv2d::new(1, 1), true, t);
        // W % 4 == 0: rows read as vec4s, and 9 rows: a last tile of 1 row (of 2 or 4).
        check_gpu(305 + k as u64, [2, 5, 9, 8], [7, 5, 3, 3], Conv2d::new(1, 1), true, t);
        check_gpu(310 + k as u64, [1, 6, 9, 13], [3, 6, 1, 1], Conv2d::new(1, 0), false, t);
    }
}

#[test]
fn backward_weight_with_long_chunks() {
    // One chunk (bw_threads 1) walks every dy row, so the window priming and the row loop of
    // the first pass run many times per thread; the other tests have one row per chunk.
    let t = Tiling { bw_threads: 1, ..Tiling::default() };
    check_gpu(320, [2, 17, 6, 5], [19, 17, 3, 3], Conv2d::new(1, 1), true, &t);
    check_gpu(330, [1, 16, 9, 11], [16, 16, 3, 3], Conv2d::new(1, 1), false, &t);
    // 2*100*100 = 20000 pixels: more loop iterations than lavapipe lets one invocation
    // run, unless the chunks are capped.
    check_gpu(340, [2, 4, 100, 100], [4, 4, 3, 3], Conv2d::new(1, 1), false, &t);
    // The 1x1 quad walk over many rows.
    check_gpu(350, [2, 5, 40, 36], [6, 5, 1, 1], Conv2d::new(1, 0), true, &t);
}

#[test]
fn shared_tilings_match_reference() {
    let gpu = gpu();
    let (xd, wd, p) = ([2, 5, 9, 11], [21, 5, 3, 3], Conv2d::new(1, 1));
    let x = random_vec(400, xd.iter().product());
    let w = random_vec(401, wd.iter().product());
    let want = reference::conv2d_forward(&to_f64(&x), xd, &to_f64(&w), wd, None, &p);
    let (xt, wt) = (gpu.upload(&x, &xd), gpu.upload(&w, &wd));
    for t in [SharedTiling { tx: 8, ty: 4, sm: 3, sn: 2, bk: 5 }, SharedTiling { tx: 16, ty: 8, sm: 8, sn: 8, bk: 16 }]
    {
        let y = gpu.empty(&yd(xd, wd, &p));
        let mut enc = gpu.encoder();
        conv2d_forward_shared(
            gpu,
            &mut enc,
            &Forward { x: &xt, w: &wt, b: None, y: &y, p, epilogue: Epilogue::Identity, tiling: None },
            &t,
        );
        gpu.submit(enc);
        assert_close_f32(&format!("y (shared) {t:?}"), &gpu.read(&y), &want, 1e-4);
    }
}

const EPILOGUES: [Epilogue; 3] =
    [Epilogue::Identity, Epilogue::Relu, Epilogue::ReluDropout { p: 0.3, seed: 0x1234_5678_9abc }];

#[test]
fn reference_epilogue_backward_matches_finite_differences() {
    let z = to_f64(&random_vec(600, 5 * 7 * 3));
    let r = to_f64(&random_vec(601, z.len()));
    for e in EPILOGUES {
        let want = numeric_grad(|z| dot(&r, &reference::epilogue_forward(z, e)), &z, 1e-6);
        assert_close(&format!("dz {e:?}"), &reference::epilogue_backward(&z, &r, e), &want, 1e-6);
    }
}

#[test]
fn fused_epilogue_matches_reference() {
    let gpu = gpu();
    let shapes = [([2, 3, 7, 9], [5, 3, 3, 3], Conv2d::new(1, 1)), ([1, 6, 9, 13], [3, 6, 1, 1], Conv2d::new(1, 0))];
    for (k, (xd, wd, p)) in shapes.into_iter().enumerate() {
        let seed = 610 + 10 * k as u64;
        let ydims = yd(xd, wd, &p);
        let (x, w, b) = (
            random_vec(seed, xd.iter().product()),
            random_vec(seed + 1, wd.iter().product()),
            random_vec(seed + 2, wd[0]),
        );
        let dy = random_vec(seed + 3, ydims.iter().product());
        let (xt, wt, bt, dyt) =
            (gpu.upload(&x, &xd), gpu.upload(&w, &wd), gpu.upload(&b, &[wd[0]]), gpu.upload(&dy, &ydims));
        let z = reference::conv2d_forward(&to_f64(&x), xd, &to_f64(&w), wd, Some(&to_f64(&b)), &p);
        for e in &EPILOGUES[1..] {
            let (y, dz) = (gpu.empty(&ydims), gpu.empty(&ydims));
            let mut enc = gpu.encoder();
            conv2d_forward(
                gpu,
                &mut enc,
                &Forward { x: &xt, w: &wt, b: Some(&bt), y: &y, p, epilogue: *e, tiling: None },
            );
            conv2d_epilogue_backward(gpu, &mut enc, &y, &dyt, &dz, *e);
            gpu.submit(enc);
            let what = format!("{xd:?} {wd:?} {e:?}");
            assert_close_f32(&format!("y {what}"), &gpu.read(&y), &reference::epilogue_forward(&z, *e), 1e-4);
            let want_dz = reference::epilogue_backward(&z, &to_f64(&dy), *e);
            assert_close_f32(&format!("dz {what}"), &gpu.read(&dz), &want_dz, 1e-3);
        }
    }
}

#[test]
fn fused_tape_gives_the_chain_rules_gradients() {
    let gpu = gpu();
    let (xd, wd, p) = ([2, 3, 6, 5], [4, 3, 3, 3], Conv2d::new(1, 1));
    let e = Epilogue::ReluDropout { p: 0.25, seed: 77 };
    let ydims = yd(xd, wd, &p);
    let (x, w, b) = (random_vec(700, xd.iter().product()), random_vec(701, wd.iter().product()), random_vec(702, 4));
    let dy = random_vec(703, ydims.iter().product());
    let (xt, wt, bt) =
        (gpu.upload(&x, &xd).with_grad(), gpu.upload(&w, &wd).with_grad(), gpu.upload(&b, &[4]).with_grad());
    let mut step = Step::train(gpu);
    let y = conv2d(&mut step, &xt, &wt, Some(&bt), p, e);
    let grads = step.backward(vec![(y.clone(), gpu.upload(&dy, &ydims))]);
    step.submit();

    let (xf, wf) = (to_f64(&x), to_f64(&w));
    let z = reference::conv2d_forward(&xf, xd, &wf, wd, Some(&to_f64(&b)), &p);
    assert_close_f32("fused tape y", &gpu.read(&y), &reference::epilogue_forward(&z, e), 1e-4);
    let dz = reference::epilogue_backward(&z, &to_f64(&dy), e);
    let (dw, db) = reference::conv2d_backward_weight(&xf, &dz, xd, wd, &p);
    let dx = reference::conv2d_backward_data(&dz, &wf, xd, wd, &p);
    assert_close_f32("fused tape dx", &gpu.read(grads.get(&xt).unwrap()), &dx, 1e-3);
    assert_close_f32("fused tape dw", &gpu.read(grads.get(&wt).unwrap()), &dw, 1e-3);
    assert_close_f32("fused tape db", &gpu.read(grads.get(&bt).unwrap()), &db, 1e-3);

    // In eval mode the dropout is off: plain ReLU.
    let mut step = Step::eval(gpu);
    let y = conv2d(&mut step, &xt, &wt, Some(&bt), p, e);
    step.submit();
    assert_close_f32("fused eval y", &gpu.read(&y), &reference::epilogue_forward(&z, Epilogue::Relu), 1e-4);
}

#[test]
fn tape_gives_the_wrappers_gradients() {
    let gpu = gpu();
    let (xd, wd, p) = ([2, 3, 5, 6], [4, 3, 3, 3], Conv2d::new(1, 1));
    let ydims = yd(xd, wd, &p);
    let (x, w, b) = (random_vec(500, xd.iter().product()), random_vec(501, wd.iter().product()), random_vec(502, 4));
    let dy = random_vec(503, ydims.iter().product());
    let xt = gpu.upload(&x, &xd).with_grad();
    let wt = gpu.upload(&w, &wd).with_grad();
    let bt = gpu.upload(&b, &[4]).with_grad();
    let mut step = Step::train(gpu);
    let y = conv2d(&mut step, &xt, &wt, Some(&bt), p, Epilogue::Identity);
    let dyt = gpu.upload(&dy, &ydims);
    let grads = step.backward(vec![(y.clone(), dyt)]);
    step.submit();

    let (xf, wf, bf, dyf) = (to_f64(&x), to_f64(&w), to_f64(&b), to_f64(&dy));
    let want_y = reference::conv2d_forward(&xf, xd, &wf, wd, Some(&bf), &p);
    assert_close_f32("tape y", &gpu.read(&y), &want_y, 1e-4);
    let (dw, db) = reference::conv2d_backward_weight(&xf, &dyf, xd, wd, &p);
    assert_close_f32(
        "tape dx",
        &gpu.read(grads.get(&xt).unwrap()),
        &reference::conv2d_backward_data(&dyf, &wf, xd, wd, &p),
        1e-3,
    );
    assert_close_f32("tape dw", &gpu.read(grads.get(&wt).unwrap()), &dw, 1e-3);
    assert_close_f32("tape db", &gpu.read(grads.get(&bt).unwrap()), &db, 1e-3);
}
