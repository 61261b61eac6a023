// common/gemm_tile.wgsl: the workgroup tile of the convolution GEMMs, written once and included
// (`// #include common/gemm_tile.wgsl`) by conv2d/gemm.wgsl and conv_transpose2d/gemm.wgsl: the
// tile's pipeline constants, its slices of A and B in workgroup memory, and the multiply-add of a
// thread's register tile.
//   A workgroup of THREADS = (BM/TM) * (BN/TN) threads computes a BM x BN tile of C = A B, a
//   slice of BK along K at a time: the including kernel fills a_tile[kk][mm] (A's BM x BK slice)
//   and b_tile[kk][nn] (B's BK x BN slice), a barrier, then each thread calls multiply.
//   Thread t, with TX = t % (BN/TN) and TY = t / (BN/TN), holds C's rows TY + i*(BM/TM) (i < TM)
//   and columns TX + j*(BN/TN) (j < TN) of the tile in acc[i*TN + j]; multiply does
//     for kk = 0, 1, ..., BK-1:  acc[i*TN + j] = fma(a_tile[kk][TY + i*(BM/TM)],
//                                                    b_tile[kk][TX + j*(BN/TN)], acc[i*TN + j])
//   (one rounding per step, K in ascending order: the same sums on every run).
// Declares the overrides (the Rust side sets BM, BN, BK, TM, TN per tiling) and the workgroup
// arrays; the including kernel uses them for its loads and stores. No bindings.
// Include it after the including shader's own overrides: a_tile and b_tile are sized by
// overrides, and naga 30's process_overrides (which wgpu runs for every pipeline) panics when a
// named override is declared after such an array.

override BM: u32 = 64u; // rows of C a workgroup
override BN: u32 = 64u; // columns of C a workgroup
override BK: u32 = 8u; // K slice a step
override TM: u32 = 4u; // rows of C a thread (TM * TN <= 64 accumulators)
override TN: u32 = 4u; // columns of C a thread
override THREADS: u32 = (BM / TM) * (BN / TN);
// Loads a thread makes per slice: constant trip counts, so the loops unroll.
override A_LOADS: u32 = (BM * BK + THREADS - 1u) / THREADS;
override B_LOADS: u32 = (BK * BN + THREADS - 1u) / THREADS;

var<workgroup> a_tile: array<f32, BK * BM>; // [kk][mm]
var<workgroup> b_tile: array<f32, BK * BN>; // [kk][nn]

// acc[i*TN + j] += sum_kk a_tile[kk][row i] * b_tile[kk][column j] for this thread's tile.
fn multiply(acc: ptr<function, array<f32, 64>>, tid: u32) {
    let tx = tid % (BN / TN);
    let ty = tid / (BN / TN);
    for (var kk = 0u; kk < BK; kk++) {
        var a: array<f32, 8>;
        var b: array<f32, 8>;
        for (var i = 0u; i < TM; i++) {
            a[i] = a_tile[kk * BM + ty + i * (BM / TM)];
        }
        for (var j = 0u; j < TN; j++) {
            b[j] = b_tile[kk * BN + tx + j * (BN / TN)];
        }
        for (var i = 0u; i < TM; i++) {
            for (var j = 0u; j < TN; j++) {
                (*acc)[i * TN + j] = fma(a[i], b[j], (*acc)[i * TN + j]);
            }
        }
    }
}
