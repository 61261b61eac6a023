//! Every GEMM kernel against the textbook kernels on the GPU: conv2d's odd shapes, tilings whose
//! tiles divide none of them, long reductions, every epilogue and both ways of writing dx.

use super::super::tests::{cases, yd};
use super::super::textbook;
use super::*;
use crate::testing::{assert_close_f32, gpu, random_vec, to_f64};
use crate::tune::tiling::gemm::MAX_SLICES;

/// Tilings to test: the default, one that leaves partly empty tiles everywhere (odd sizes, threads
/// that own 3x5 outputs), a small one and the largest (8x8 tiles of 128x128).
fn tilings() -> [Gemm; 4] {
    [
        Gemm { bm: 64, bn: 128, bk: 8, tm: 4, tn: 8 },
        Gemm { bm: 12, bn: 20, bk: 3, tm: 3, tn: 5 },
        Gemm { bm: 8, bn: 16, bk: 4, tm: 2, tn: 4 },
        Gemm { bm: 128, bn: 128, bk: 8, tm: 8, tn: 8 },
    ]
}

/// The GEMM kernels with tiling `g` against the textbook kernels on one shape: forward (with
/// and without bias, each epilogue), backward data (added into, overwriting), backward weight
/// (with and without db).
fn check(seed: u64, (xd, wd, p): ([usize; 4], [usize; 4], Conv2d), g: &Gemm) {
    let gpu = gpu();
    let ydims = yd(xd, wd, &p);
    let what = format!("{xd:?} {wd:?} {p:?} {g}");
    let [nx, nw, ny] = [xd.iter().product(), wd.iter().product(), ydims.iter().product::<usize>()];
    let (x, w, b, dy) = (
        gpu.upload(&random_vec(seed, nx), &xd),
        gpu.upload(&random_vec(seed + 1, nw), &wd),
        gpu.upload(&random_vec(seed + 2, wd[0]), &[wd[0]]),
        gpu.upload(&random_vec(seed + 3, ny), &ydims),
    );
    let starts = (random_vec(seed + 4, nx), random_vec(seed + 5, nw), random_vec(seed + 6, wd[0]));
    let epilogues = [Epilogue::Identity, Epilogue::Relu, Epilogue::ReluDropout { p: 0.3, seed: seed + 7 }];
    // [gemm, textbook] of each output.
    let two = |shape: &[usize]| [gpu.empty(shape), gpu.empty(shape)];
    let ys: Vec<[Tensor; 2]> = (0..4).map(|_| two(&ydims)).collect();
    let start = |v: &[f32], shape: &[usize]| [gpu.upload(v, shape), gpu.upload(v, shape)];
    let (dx, dx_fresh) = (start(&starts.0, &xd), start(&starts.0, &xd));
    let (dw, db, dw_alone) = (start(&starts.1, &wd), start(&starts.2, &[wd[0]]), start(&starts.1, &wd));
    let z = gpu.empty(&ydims);
    let mut enc = gpu.encoder();
    for (k, (y, epilogue)) in ys.iter().zip([Epilogue::Identity].iter().chain(&epilogues)).enumerate() {
        let bias = (k != 0).then_some(&b);
        conv2d_forward_gemm(
            gpu,
            &mut enc,
            &Forward { x: &x, w: &w, b: bias, y: &y[0], p, epilogue: *epilogue, tiling: None },
            g,
        );
        match epilogue {
            Epilogue::Identity => textbook::conv2d_forward(gpu, &mut enc, &x, &w, bias, &y[1], p),
            e => {
                textbook::conv2d_forward(gpu, &mut enc, &x, &w, bias, &z, p);
                textbook::epilogue_forward(gpu, &mut enc, &z, &y[1], *e);
            }
        }
    }
    for (dx, acc) in [(&dx, Accumulate::Add), (&dx_fresh, Accumulate::Overwrite)] {
        conv2d_backward_data_gemm(gpu, &mut enc, &BackwardData { dy: &dy, w: &w, dx: &dx[0], p, acc, tiling: None }, g);
        textbook::conv2d_backward_data(gpu, &mut enc, &dy, &w, &dx[1], p, acc);
    }
    for (dw, db) in [(&dw, Some(&db)), (&dw_alone, None)] {
        let a = BackwardWeight { x: &x, dy: &dy, dw: &dw[0], db: db.map(|d| &d[0]), p, tiling: None };
        conv2d_backward_weight_gemm(gpu, &mut enc, &a, g);
        textbook::conv2d_backward_weight(gpu, &mut enc, &x, &dy, &dw[1], db.map(|d| &d[1]), p);
    }
    gpu.submit(enc);
    let same = |name: &str, pair: &[Tensor; 2], tol: f64| {
        assert_close_f32(&format!("{name} {what}"), &gpu.read(&pair[0]), &to_f64(&gpu.read(&pair[1])), tol);
    };
    for (y, name) in ys.iter().zip(["y", "y (bias)", "y (bias, relu)", "y (bias, relu, dropout)"]) {
        same(name, y, 1e-4);
    }
    same("dx", &dx, 1e-3);
    same("dx (overwritten)", &dx_fresh, 1e-3);
    same("dw", &dw, 1e-3);
    same("db", &db, 1e-3);
    same("dw (no db)", &dw_alone, 1e-3);
}

#[test]
fn gemm_kernels_match_the_textbook_kernels_on_odd_shapes() {
    for (k, case) in cases().into_iter().enumerate() {
        check(1000 + 10 * k as u64, case, &tilings()[0]);
        check(1500 + 10 * k as u64, case, &tilings()[1]);
    }
}

#[test]
fn gemm_kernels_match_the_textbook_kernels_with_other_tilings() {
    let picks = [0, 1, 3, 5, 7, 13];
    for (k, case) in cases().into_iter().enumerate().filter(|(k, _)| picks.contains(k)) {
        for (j, g) in tilings()[2..].iter().enumerate() {
            check(2000 + 10 * k as u64 + j as u64, case, g);
        }
    }
}

#[test]
fn gemm_kernels_match_the_textbook_kernels_on_long_reductions() {
    // K = 300 * 9 = 2700 in the forward and backward data (hundreds of slices: a CPU driver's
    // loop guard stops an invocation after 65,535 loop iterations in all), and 2 * 100 * 100
    // pixels in the weight gradient (many chunks).
    check(3000, ([1, 300, 5, 6], [7, 300, 3, 3], Conv2d::new(1, 1)), &tilings()[0]);
    check(3010, ([1, 7, 5, 6], [300, 7, 3, 3], Conv2d::new(1, 1)), &tilings()[0]);
    check(3020, ([2, 3, 100, 100], [4, 3, 3, 3], Conv2d::new(1, 1)), &tilings()[0]);
}

#[test]
fn the_split_covers_k_in_whole_slices() {
    let g = Gemm { bm: 64, bn: 64, bk: 16, tm: 4, tn: 4 };
    for (k_len, tiles) in [(1, 1), (15, 1), (131072, 3), (512, 72), (100_000, 1), (17, 2000)] {
        let (chunk, chunks) = g.split_k(k_len, tiles);
        assert!(
            chunk.is_multiple_of(g.bk) && chunk * chunks >= k_len && chunk * (chunks - 1) < k_len,
            "{k_len} {tiles}"
        );
        assert!(chunk / g.bk <= MAX_SLICES, "{k_len}: {chunk}");
    }
}

#[test]
fn tilings_are_checked_against_the_limits() {
    let limits = wgpu::Limits::default();
    ConvGemm::default().check(&limits).unwrap();
    assert_eq!(ConvGemm::default().conv2d_forward.accumulators(), 32);
    let too_many = Gemm { bm: 128, bn: 128, bk: 8, tm: 4, tn: 4 }; // 1024 threads
    assert!(too_many.check(&limits).unwrap_err().contains("1024 threads"));
    let too_big = Gemm { bm: 128, bn: 128, bk: 32, tm: 8, tn: 8 }; // 32 KiB of tiles
    assert!(too_big.check(&limits).unwrap_err().contains("workgroup memory"));
    assert!(Gemm { bm: 10, bn: 16, bk: 8, tm: 4, tn: 4 }.check(&limits).is_err(), "tm must divide bm");
    assert!(Gemm { bm: 64, bn: 64, bk: 8, tm: 16, tn: 4 }.check(&limits).is_err(), "at most 8 rows a thread");
}
