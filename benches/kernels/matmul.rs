//! The ceilings: the matrix product (compute-bound, GFLOP/s counting `2*M*N*K`) in both
//! tilings, and the vec4 copy (memory-bound, GB/s counting bytes read + written).
//!
//! Rows: register and workgroup-memory GEMM at 1024^3, the register backward (dA and dB) at
//! 1024^3, the register GEMM at 4096^3 (one run: ~137 GFLOP), and the copy at 64 and 128 MiB.
//! The workgroup-memory GEMM at 4096^3 takes minutes on a CPU driver: it is timed only when the
//! filter names it (`cargo bench --bench kernels matmul_forward_shared`).
//! `MATMUL_SWEEP=1` times a list of register tilings at 1024^3 instead (`MATMUL_TILING=wg,tm,tn`
//! just that one), and copies with several threads-per-group / vec4s-per-thread.

use crate::common::bench::Bench;
use crate::common::ceiling::{copy, copy_tiled};
use unet_wgpu::ops::matmul::{
    matmul_backward, matmul_forward, reference, Backward, Forward, SharedTiling, Tiles, Tiling,
};
use unet_wgpu::testing::{assert_close_f32, random_vec, to_f64};
use unet_wgpu::{Gpu, Tensor};

fn gemm_flops(n: usize) -> f64 {
    2.0 * (n as f64).powi(3)
}

/// Check a few entries of `c = a . b` (square, `n`) computed by the GPU against f64 sums.
fn check_entries(gpu: &Gpu, what: &str, a: &[f32], b: &[f32], c: &Tensor, n: usize) {
    let got = gpu.read(c);
    for (i, j) in [(0, 0), (1, n - 1), (n / 2, 7), (n - 1, n - 1), (n - 3, n / 3), (n / 5, n - 2)] {
        let terms = (0..n).map(|k| a[i * n + k] as f64 * b[k * n + j] as f64);
        let (want, scale) = terms.fold((0.0, 0.0), |(s, t), v| (s + v, t + v.abs()));
        let err = (got[i * n + j] as f64 - want).abs();
        assert!(err <= 1e-5 * scale, "{what}: c[{i},{j}] = {}, want {want}", got[i * n + j]);
    }
}

/// `MATMUL_SWEEP` or `MATMUL_TILING` set: time the register tilings at 1024^3 and nothing else.
fn sweeping() -> bool {
    std::env::var("MATMUL_SWEEP").is_ok() || std::env::var("MATMUL_TILING").is_ok()
}

fn register_tilings() -> Vec<Tiling> {
    if let Ok(s) = std::env::var("MATMUL_TILING") {
        let v: Vec<u32> = s.split(',').map(|t| t.trim().parse().expect("MATMUL_TILING=wg,tm,tn")).collect();
        assert_eq!(v.len(), 3, "MATMUL_TILING=wg,tm,tn");
        return vec![Tiling { wg: v[0], tm: v[1], tn: v[2] }];
    }
    if std::env::var("MATMUL_SWEEP").is_err() {
        return Vec::new();
    }
    let mut list = Vec::new();
    for (tm, tn) in [(4, 4), (8, 8), (16, 8), (8, 16), (16, 12), (24, 16), (32, 8), (32, 16)] {
        list.push(Tiling { wg: 16, tm, tn });
    }
    for wg in [4, 8, 32, 64] {
        list.push(Tiling { wg, ..Tiling::default() });
    }
    list
}

pub fn run(b: &mut Bench) {
    copies(b);
    let names = ["matmul_forward", "matmul_forward_shared", "matmul_backward"];
    if !names.iter().any(|n| b.wants(n)) {
        return;
    }
    let gpu = b.gpu;
    let (reg, shared) = (Tiles::default(), Tiles::Shared(SharedTiling::default()));

    // Correctness first, on odd shapes (scalar kernel) and multiples of 4 (vec4 kernel).
    for (seed, [m, k, n]) in [(1, [13, 21, 18]), (2, [20, 12, 36])] {
        let (a, bm, dc) = (random_vec(seed, m * k), random_vec(seed + 1, k * n), random_vec(seed + 2, m * n));
        let (at, bt, dct) = (gpu.upload(&a, &[m, k]), gpu.upload(&bm, &[k, n]), gpu.upload(&dc, &[m, n]));
        let (af, bf) = (to_f64(&a), to_f64(&bm));
        let want = reference::matmul_forward(&af, &bf, [m, k, n]);
        let (want_da, want_db) = reference::matmul_backward(&af, &bf, &to_f64(&dc), [m, k, n]);
        for tiles in [reg, shared] {
            let (c, da, db) = (gpu.empty(&[m, n]), gpu.empty(&[m, k]), gpu.empty(&[k, n]));
            let mut enc = gpu.encoder();
            enc.clear(&da);
            enc.clear(&db);
            matmul_forward(gpu, &mut enc, &Forward { a: &at, b: &bt, c: &c, tiles: Some(tiles) });
            matmul_backward(
                gpu,
                &mut enc,
                &Backward { a: &at, b: &bt, dc: &dct, da: Some(&da), db: Some(&db), tiles: Some(tiles) },
            );
            gpu.submit(enc);
            assert_close_f32(&format!("matmul {tiles:?}"), &gpu.read(&c), &want, 1e-4);
            assert_close_f32(&format!("matmul da {tiles:?}"), &gpu.read(&da), &want_da, 1e-3);
            assert_close_f32(&format!("matmul db {tiles:?}"), &gpu.read(&db), &want_db, 1e-3);
        }
    }

    let n = 1024;
    let shape = format!("{n}x{n}x{n}");
    let (a, bm) = (random_vec(3, n * n), random_vec(4, n * n));
    let (at, bt, c) = (gpu.upload(&a, &[n, n]), gpu.upload(&bm, &[n, n]), gpu.empty(&[n, n]));
    b.case("matmul_forward", &shape, Some(gemm_flops(n)), None, |gpu, enc| {
        matmul_forward(gpu, enc, &Forward { a: &at, b: &bt, c: &c, tiles: Some(reg) })
    });
    if b.wants("matmul_forward") {
        check_entries(gpu, "matmul_forward", &a, &bm, &c, n);
    }
    for t in register_tilings() {
        let tiles = Tiles::Register(t);
        let shape = format!("{shape} wg{} tm{} tn{}", t.wg, t.tm, t.tn);
        b.case("matmul_forward", &shape, Some(gemm_flops(n)), None, |gpu, enc| {
            matmul_forward(gpu, enc, &Forward { a: &at, b: &bt, c: &c, tiles: Some(tiles) })
        });
        check_entries(gpu, &format!("matmul_forward {t:?}"), &a, &bm, &c, n);
    }
    if sweeping() {
        return; // the sweep alone
    }
    let (da, db) = (gpu.empty(&[n, n]), gpu.empty(&[n, n]));
    b.case("matmul_backward", &format!("{shape} dA+dB"), Some(2.0 * gemm_flops(n)), None, |gpu, enc| {
        matmul_backward(gpu, enc, &Backward { a: &at, b: &bt, dc: &c, da: Some(&da), db: Some(&db), tiles: Some(reg) })
    });
    b.case_reps("matmul_forward_shared", &shape, Some(gemm_flops(n)), None, b.reps.min(3), |gpu, enc| {
        matmul_forward(gpu, enc, &Forward { a: &at, b: &bt, c: &c, tiles: Some(shared) })
    });
    if b.wants("matmul_forward_shared") {
        check_entries(gpu, "matmul_forward_shared", &a, &bm, &c, n);
    }
    drop((at, bt, c, da, db));

    // 4096^3: one run each; the entries checked afterwards catch a loop cut short.
    let n = 4096;
    let shape = format!("{n}x{n}x{n}");
    // Minutes on a CPU driver: only when the filter names it.
    let big_shared = b.filter.contains("shared") && b.wants("matmul_forward_shared");
    if !b.wants("matmul_forward") && !big_shared {
        return;
    }
    let (a, bm) = (random_vec(5, n * n), random_vec(6, n * n));
    let (at, bt, c) = (gpu.upload(&a, &[n, n]), gpu.upload(&bm, &[n, n]), gpu.empty(&[n, n]));
    if b.wants("matmul_forward") {
        b.case_reps("matmul_forward", &shape, Some(gemm_flops(n)), None, 1, |gpu, enc| {
            matmul_forward(gpu, enc, &Forward { a: &at, b: &bt, c: &c, tiles: Some(reg) })
        });
        check_entries(gpu, "matmul_forward 4096", &a, &bm, &c, n);
    }
    if big_shared {
        b.case_reps("matmul_forward_shared", &shape, Some(gemm_flops(n)), None, 1, |gpu, enc| {
            matmul_forward(gpu, enc, &Forward { a: &at, b: &bt, c: &c, tiles: Some(shared) })
        });
        check_entries(gpu, "matmul_forward_shared 4096", &a, &bm, &c, n);
    }
}

/// The copy at 64 and 128 MiB (and, with `MATMUL_SWEEP`, other group sizes).
fn copies(b: &mut Bench) {
    if !b.wants("copy") {
        return;
    }
    let gpu = b.gpu;
    let x = random_vec(7, 1003);
    let (xt, y) = (gpu.upload(&x, &[1003]), gpu.empty(&[1003]));
    let mut enc = gpu.encoder();
    copy(gpu, &mut enc, &xt, &y);
    gpu.submit(enc);
    assert!(gpu.read(&y) == x, "copy differs from its input");

    // 256 MiB would pass the binding limit of many adapters (lavapipe: 128 MiB).
    for mib in [64, 128] {
        let len = (mib << 20) / 4;
        if 4 * len as u64 > gpu.limits.max_storage_buffer_binding_size {
            continue;
        }
        let (x, y) = (gpu.upload(&random_vec(8, len), &[len]), gpu.empty(&[len]));
        let bytes = 8.0 * len as f64;
        b.case("copy", &format!("{mib} MiB"), None, Some(bytes), |gpu, enc| copy(gpu, enc, &x, &y));
        if std::env::var("MATMUL_SWEEP").is_ok() {
            for (wg, vpt) in [(256, 1), (256, 2), (256, 8), (64, 4)] {
                b.case("copy", &format!("{mib} MiB wg{wg} vpt{vpt}"), None, Some(bytes), |gpu, enc| {
                    copy_tiled(gpu, enc, &x, &y, wg, vpt)
                });
            }
        }
    }
}
