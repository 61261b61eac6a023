// matmul/tiled.wgsl: dense matrix product, row-major f32, C[M,N] (= or +=) opA[M,K] . opB[K,N].
//   forward : C = A . B                    A [M,K], B [K,N]
//   backward: dA += dC . B^T               (M, N, K) = (M, K, N), a = dC, b = B read transposed
//             dB += A^T . dC               (M, N, K) = (K, N, M), a = A read transposed, b = dC
//   opA(m,k) = a[m*lda + k], or a[k*lda + m] with TRANS_A (a stored [K,M]);
//   opB(k,n) = b[k*ldb + n], or b[n*ldb + k] with TRANS_B (b stored [N,K]).
// Every thread sums over k in increasing order: results are deterministic.
//
// group 0:  0 uniform Params   1 read a   2 read b   3 read_write c
//   (`matmul_forward` binds them as array<vec4<f32>> and needs M, N, K multiples of 4;
//   `matmul_forward_scalar` and `matmul_forward_shared` bind array<f32> and take any shape)
//
// Two tilings:
// * register tiles (`matmul_forward`: vec4 loads and stores; `matmul_forward_scalar`: the same
//   with scalar loads, for shapes that are not multiples of 4): no workgroup memory, no
//   barriers. A thread owns TM rows x TN columns of C, in groups of 4 rows x 4 columns (one
//   vec4 accumulator a row of a group). A workgroup is one row block (workgroup_id.x) and WG
//   neighbouring column blocks, so that consecutive workgroups share the columns of B (kept in
//   cache) and walk down A. Each step of 4 k loads a 4-k slice of the thread's TM rows of opA
//   and TN columns of opB, and does 4*TM*TN multiply-adds.
//   On lavapipe (SIMD across 8 invocations) every storage load is a loop over the 8 lanes,
//   several instructions per lane and component, while an FMA is one instruction for all 8:
//   the loads per FMA, (TM + TN) / (TM * TN), set the speed, so big tiles win. Measured there
//   (1024^3, 2 cores, benches/kernels/matmul.rs): 4x4 12, 8x8 25, 16x16 36 GFLOP/s; beyond
//   16x16 the accumulators spill and it gets no faster.
// * workgroup tiles (`matmul_forward_shared`): the classic GPU GEMM. A workgroup of TX x TY
//   threads computes a BM x BN block (BM = TY*SM, BN = TX*SN), stepping through K in slices of
//   BK: the group copies a BM x BK slice of opA and a BK x BN slice of opB into workgroup
//   memory, waits at a barrier, and each thread multiplies its SM x SN outputs out of it. Each
//   global load then feeds BN (or BM) multiply-adds of the group, which is what a real GPU
//   needs; on lavapipe a barrier is a coroutine switch of every 8-lane batch, and slow.
//
// Why the register tile is written out line by line, with `if TM > 4u` guards, instead of
// loops over rows and columns: Mesa (lavapipe) unrolls such small loops only sometimes, and a
// loop left rolled sends the arrays it indexes to memory (3-5x slower, measured) and counts
// against its loop guard: every shader loop stops silently once the loops of one invocation
// batch have run 65,535 iterations in total. Here each array is indexed by constants only, the
// guards on pipeline constants fold away, and the K loop is the only loop of the register
// kernels: K/4 iterations, which the Rust side keeps below the guard. The shared kernel's
// loops run 1 + BK + a few copy iterations per K slice of BK (also checked).

// Register tiling.
override WG: u32 = 16u; // threads a workgroup (1-D, over column blocks)
override TM: u32 = 16u; // rows of C a thread: 4, 8, ..., 32
override TN: u32 = 16u; // columns of C a thread: 4, 8, 12 or 16
// Operand layouts and accumulation are pipeline constants, not uniforms, so that their
// branches fold away at compile time.
override TRANS_A: bool = false;
override TRANS_B: bool = false;
override ACCUMULATE: bool = false;

// Workgroup tiling.
override TX: u32 = 16u; // threads along columns
override TY: u32 = 16u; // threads along rows
override SM: u32 = 4u; // rows a thread (at most 4)
override SN: u32 = 4u; // columns a thread (at most 4)
override BK: u32 = 8u; // K slice a step; BK*TY*SM and BK*TX*SN at most MAX_TILE, multiples of TX*TY

// Bound of the workgroup arrays (WGSL wants constant sizes; Rust asserts the tiling fits).
const MAX_TILE: u32 = 2048u;

struct Params {
    m: u32,
    n: u32,
    k: u32,
    lda: u32, // row stride of a as stored (K, or M with TRANS_A)
    ldb: u32, // row stride of b as stored (N, or K with TRANS_B)
    col_blocks: u32, // ceil(N / TN): register tiling
    _pad0: u32,
    _pad1: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> a4: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read> b4: array<vec4<f32>>;
@group(0) @binding(3) var<storage, read_write> c4: array<vec4<f32>>;
// The same bindings as scalars, for the other two entry points.
@group(0) @binding(1) var<storage, read> a1: array<f32>;
@group(0) @binding(2) var<storage, read> b1: array<f32>;
@group(0) @binding(3) var<storage, read_write> c1: array<f32>;

var<workgroup> a_tile: array<f32, MAX_TILE>; // [kk * BM + mm]
var<workgroup> b_tile: array<f32, MAX_TILE>; // [kk * BN + nn]

// ---- register tiles -------------------------------------------------------------------------

// A 4 x 4 block of opA or opB as 4 vec4s, each along the dimension the product needs:
// rows[r] = opA(row r, k..k+3) (a vec4 over k); cols[kk] = opB(k+kk, col..col+3) (a vec4 over n).
// On lavapipe a vec4 is 4 SIMD registers, so the transposes below cost nothing.
fn transpose4(q0: vec4<f32>, q1: vec4<f32>, q2: vec4<f32>, q3: vec4<f32>) -> array<vec4<f32>, 4> {
    return array<vec4<f32>, 4>(
        vec4<f32>(q0.x, q1.x, q2.x, q3.x),
        vec4<f32>(q0.y, q1.y, q2.y, q3.y),
        vec4<f32>(q0.z, q1.z, q2.z, q3.z),
        vec4<f32>(q0.w, q1.w, q2.w, q3.w),
    );
}

// Rows r..r+3 of opA at k..k+3, vec4 loads (r, k multiples of 4 and in range; M, K multiples of 4).
fn a_rows4(r: u32, k: u32) -> array<vec4<f32>, 4> {
    let l4 = p.lda / 4u;
    if TRANS_A {
        // a stored [K,M]: a vec4 holds 4 rows at one k.
        let at = (k * p.lda + r) / 4u;
        return transpose4(a4[at], a4[at + l4], a4[at + 2u * l4], a4[at + 3u * l4]);
    }
    let at = (r * p.lda + k) / 4u;
    return array<vec4<f32>, 4>(a4[at], a4[at + l4], a4[at + 2u * l4], a4[at + 3u * l4]);
}

// opB at k..k+3 (one vec4 per k) and columns c..c+3, vec4 loads (c, k multiples of 4, in range).
fn b_cols4(k: u32, c: u32) -> array<vec4<f32>, 4> {
    let l4 = p.ldb / 4u;
    if TRANS_B {
        // b stored [N,K]: a vec4 holds 4 k at one column.
        let at = (c * p.ldb + k) / 4u;
        return transpose4(b4[at], b4[at + l4], b4[at + 2u * l4], b4[at + 3u * l4]);
    }
    let at = (k * p.ldb + c) / 4u;
    return array<vec4<f32>, 4>(b4[at], b4[at + l4], b4[at + 2u * l4], b4[at + 3u * l4]);
}

// The scalar versions: any r, c, k; rows past M and columns past N read clamped addresses (their
// results are never stored), k past K reads 0 (it must not add to the sum).
fn op_a(r: u32, k: u32) -> f32 {
    let rr = min(r, p.m - 1u);
    let kk = min(k, p.k - 1u);
    return select(0.0, a1[select(rr * p.lda + kk, kk * p.lda + rr, TRANS_A)], k < p.k);
}

fn op_b(k: u32, c: u32) -> f32 {
    let cc = min(c, p.n - 1u);
    let kk = min(k, p.k - 1u);
    return select(0.0, b1[select(kk * p.ldb + cc, cc * p.ldb + kk, TRANS_B)], k < p.k);
}

fn a_rows1(r: u32, k: u32) -> array<vec4<f32>, 4> {
    var rows: array<vec4<f32>, 4>;
    rows[0] = vec4<f32>(op_a(r, k), op_a(r, k + 1u), op_a(r, k + 2u), op_a(r, k + 3u));
    rows[1] = vec4<f32>(op_a(r + 1u, k), op_a(r + 1u, k + 1u), op_a(r + 1u, k + 2u), op_a(r + 1u, k + 3u));
    rows[2] = vec4<f32>(op_a(r + 2u, k), op_a(r + 2u, k + 1u), op_a(r + 2u, k + 2u), op_a(r + 2u, k + 3u));
    rows[3] = vec4<f32>(op_a(r + 3u, k), op_a(r + 3u, k + 1u), op_a(r + 3u, k + 2u), op_a(r + 3u, k + 3u));
    return rows;
}

fn b_cols1(k: u32, c: u32) -> array<vec4<f32>, 4> {
    var cols: array<vec4<f32>, 4>;
    cols[0] = vec4<f32>(op_b(k, c), op_b(k, c + 1u), op_b(k, c + 2u), op_b(k, c + 3u));
    cols[1] = vec4<f32>(op_b(k + 1u, c), op_b(k + 1u, c + 1u), op_b(k + 1u, c + 2u), op_b(k + 1u, c + 3u));
    cols[2] = vec4<f32>(op_b(k + 2u, c), op_b(k + 2u, c + 1u), op_b(k + 2u, c + 2u), op_b(k + 2u, c + 3u));
    cols[3] = vec4<f32>(op_b(k + 3u, c), op_b(k + 3u, c + 1u), op_b(k + 3u, c + 2u), op_b(k + 3u, c + 3u));
    return cols;
}

// A group of 4 rows x up to 16 columns: acc[4*r + j] = C(row r, columns 4j..4j+3).
// rows[r] = opA(row r, k..k+3); b[4*j + kk] = opB(k+kk, columns 4j..4j+3).
fn fma_row(acc: ptr<function, array<vec4<f32>, 16>>, r: u32, a: vec4<f32>, b: ptr<function, array<vec4<f32>, 16>>) {
    (*acc)[4u * r] = fma(vec4<f32>(a.x), (*b)[0], (*acc)[4u * r]);
    (*acc)[4u * r] = fma(vec4<f32>(a.y), (*b)[1], (*acc)[4u * r]);
    (*acc)[4u * r] = fma(vec4<f32>(a.z), (*b)[2], (*acc)[4u * r]);
    (*acc)[4u * r] = fma(vec4<f32>(a.w), (*b)[3], (*acc)[4u * r]);
    if TN > 4u {
        (*acc)[4u * r + 1u] = fma(vec4<f32>(a.x), (*b)[4], (*acc)[4u * r + 1u]);
        (*acc)[4u * r + 1u] = fma(vec4<f32>(a.y), (*b)[5], (*acc)[4u * r + 1u]);
        (*acc)[4u * r + 1u] = fma(vec4<f32>(a.z), (*b)[6], (*acc)[4u * r + 1u]);
        (*acc)[4u * r + 1u] = fma(vec4<f32>(a.w), (*b)[7], (*acc)[4u * r + 1u]);
    }
    if TN > 8u {
        (*acc)[4u * r + 2u] = fma(vec4<f32>(a.x), (*b)[8], (*acc)[4u * r + 2u]);
        (*acc)[4u * r + 2u] = fma(vec4<f32>(a.y), (*b)[9], (*acc)[4u * r + 2u]);
        (*acc)[4u * r + 2u] = fma(vec4<f32>(a.z), (*b)[10], (*acc)[4u * r + 2u]);
        (*acc)[4u * r + 2u] = fma(vec4<f32>(a.w), (*b)[11], (*acc)[4u * r + 2u]);
    }
    if TN > 12u {
        (*acc)[4u * r + 3u] = fma(vec4<f32>(a.x), (*b)[12], (*acc)[4u * r + 3u]);
        (*acc)[4u * r + 3u] = fma(vec4<f32>(a.y), (*b)[13], (*acc)[4u * r + 3u]);
        (*acc)[4u * r + 3u] = fma(vec4<f32>(a.z), (*b)[14], (*acc)[4u * r + 3u]);
        (*acc)[4u * r + 3u] = fma(vec4<f32>(a.w), (*b)[15], (*acc)[4u * r + 3u]);
    }
}

fn fma_group(acc: ptr<function, array<vec4<f32>, 16>>, rows: array<vec4<f32>, 4>, b: ptr<function, array<vec4<f32>, 16>>) {
    fma_row(acc, 0u, rows[0], b);
    fma_row(acc, 1u, rows[1], b);
    fma_row(acc, 2u, rows[2], b);
    fma_row(acc, 3u, rows[3], b);
}

// The thread's B slice at k..k+3, vec4 loads: b[4*j + kk] = opB(k+kk, c0+4j..c0+4j+3). Column
// blocks past N read the last block (never stored).
fn b_slice4(k: u32, c0: u32) -> array<vec4<f32>, 16> {
    var b: array<vec4<f32>, 16>;
    let last = p.n - 4u;
    let q0 = b_cols4(k, min(c0, last));
    b[0] = q0[0];
    b[1] = q0[1];
    b[2] = q0[2];
    b[3] = q0[3];
    if TN > 4u {
        let q = b_cols4(k, min(c0 + 4u, last));
        b[4] = q[0];
        b[5] = q[1];
        b[6] = q[2];
        b[7] = q[3];
    }
    if TN > 8u {
        let q = b_cols4(k, min(c0 + 8u, last));
        b[8] = q[0];
        b[9] = q[1];
        b[10] = q[2];
        b[11] = q[3];
    }
    if TN > 12u {
        let q = b_cols4(k, min(c0 + 12u, last));
        b[12] = q[0];
        b[13] = q[1];
        b[14] = q[2];
        b[15] = q[3];
    }
    return b;
}

fn b_slice1(k: u32, c0: u32) -> array<vec4<f32>, 16> {
    var b: array<vec4<f32>, 16>;
    let q0 = b_cols1(k, c0);
    b[0] = q0[0];
    b[1] = q0[1];
    b[2] = q0[2];
    b[3] = q0[3];
    if TN > 4u {
        let q = b_cols1(k, c0 + 4u);
        b[4] = q[0];
        b[5] = q[1];
        b[6] = q[2];
        b[7] = q[3];
    }
    if TN > 8u {
        let q = b_cols1(k, c0 + 8u);
        b[8] = q[0];
        b[9] = q[1];
        b[10] = q[2];
        b[11] = q[3];
    }
    if TN > 12u {
        let q = b_cols1(k, c0 + 12u);
        b[12] = q[0];
        b[13] = q[1];
        b[14] = q[2];
        b[15] = q[3];
    }
    return b;
}

// Row group g (rows r0+4g..r0+4g+3) of the thread's A slice at k..k+3, clamped into range.
fn a_group4(r0: u32, g: u32, k: u32) -> array<vec4<f32>, 4> {
    return a_rows4(min(r0 + 4u * g, p.m - 4u), k);
}

// Store (or add) a row group of the tile: C(r+i, c0+4j..c0+4j+3) = acc[4i+j]. acc is a copy,
// so its dynamic indices here do not touch the accumulators of the K loop.
fn store_group4(acc: array<vec4<f32>, 16>, r: u32, c0: u32, owner: bool) {
    for (var i = 0u; i < 16u; i++) {
        let row = r + i / 4u;
        let col = c0 + 4u * (i % 4u);
        if owner && 4u * (i % 4u) < TN && row < p.m && col < p.n {
            let at = (row * p.n + col) / 4u;
            if ACCUMULATE {
                c4[at] += acc[i];
            } else {
                c4[at] = acc[i];
            }
        }
    }
}

fn store_group1(acc: array<vec4<f32>, 16>, r: u32, c0: u32, owner: bool) {
    for (var i = 0u; i < 64u; i++) {
        let row = r + i / 16u;
        let col = c0 + i % 16u;
        if owner && i % 16u < TN && row < p.m && col < p.n {
            let v = acc[i / 4u][i % 4u];
            if ACCUMULATE {
                c1[row * p.n + col] += v;
            } else {
                c1[row * p.n + col] = v;
            }
        }
    }
}

// Which block a thread owns: rows r0.., columns c0... Threads past the last column block
// compute a copy of it and skip the store, so no lane leaves the K loop early.
fn block_origin(lid: vec3<u32>, wid: vec3<u32>) -> vec2<u32> {
    let col_block = min(wid.y * WG + lid.x, p.col_blocks - 1u);
    return vec2<u32>(wid.x * TM, col_block * TN);
}

@compute @workgroup_size(WG)
fn matmul_forward(@builtin(local_invocation_id) lid: vec3<u32>, @builtin(workgroup_id) wid: vec3<u32>) {
    let org = block_origin(lid, wid);
    let r0 = org.x;
    let c0 = org.y;
    // Named variables, not one array of groups: naga cannot pass a pointer into an array.
    var acc0: array<vec4<f32>, 16>;
    var acc1: array<vec4<f32>, 16>;
    var acc2: array<vec4<f32>, 16>;
    var acc3: array<vec4<f32>, 16>;
    var acc4: array<vec4<f32>, 16>;
    var acc5: array<vec4<f32>, 16>;
    var acc6: array<vec4<f32>, 16>;
    var acc7: array<vec4<f32>, 16>;
    for (var k = 0u; k < p.k; k += 4u) {
        var b = b_slice4(k, c0);
        fma_group(&acc0, a_group4(r0, 0u, k), &b);
        if TM > 4u { fma_group(&acc1, a_group4(r0, 1u, k), &b); }
        if TM > 8u { fma_group(&acc2, a_group4(r0, 2u, k), &b); }
        if TM > 12u { fma_group(&acc3, a_group4(r0, 3u, k), &b); }
        if TM > 16u { fma_group(&acc4, a_group4(r0, 4u, k), &b); }
        if TM > 20u { fma_group(&acc5, a_group4(r0, 5u, k), &b); }
        if TM > 24u { fma_group(&acc6, a_group4(r0, 6u, k), &b); }
        if TM > 28u { fma_group(&acc7, a_group4(r0, 7u, k), &b); }
    }
    // Constant indices here too: one dynamic index anywhere sends all of acc to memory.
    let owner = wid.y * WG + lid.x < p.col_blocks;
    store_group4(acc0, r0, c0, owner);
    if TM > 4u { store_group4(acc1, r0 + 4u, c0, owner); }
    if TM > 8u { store_group4(acc2, r0 + 8u, c0, owner); }
    if TM > 12u { store_group4(acc3, r0 + 12u, c0, owner); }
    if TM > 16u { store_group4(acc4, r0 + 16u, c0, owner); }
    if TM > 20u { store_group4(acc5, r0 + 20u, c0, owner); }
    if TM > 24u { store_group4(acc6, r0 + 24u, c0, owner); }
    if TM > 28u { store_group4(acc7, r0 + 28u, c0, owner); }
}

@compute @workgroup_size(WG)
fn matmul_forward_scalar(@builtin(local_invocation_id) lid: vec3<u32>, @builtin(workgroup_id) wid: vec3<u32>) {
    let org = block_origin(lid, wid);
    let r0 = org.x;
    let c0 = org.y;
    // Named variables, not one array of groups: naga cannot pass a pointer into an array.
    var acc0: array<vec4<f32>, 16>;
    var acc1: array<vec4<f32>, 16>;
    var acc2: array<vec4<f32>, 16>;
    var acc3: array<vec4<f32>, 16>;
    var acc4: array<vec4<f32>, 16>;
    var acc5: array<vec4<f32>, 16>;
    var acc6: array<vec4<f32>, 16>;
    var acc7: array<vec4<f32>, 16>;
    for (var k = 0u; k < p.k; k += 4u) {
        var b = b_slice1(k, c0);
        fma_group(&acc0, a_rows1(r0, k), &b);
        if TM > 4u { fma_group(&acc1, a_rows1(r0 + 4u, k), &b); }
        if TM > 8u { fma_group(&acc2, a_rows1(r0 + 8u, k), &b); }
        if TM > 12u { fma_group(&acc3, a_rows1(r0 + 12u, k), &b); }
        if TM > 16u { fma_group(&acc4, a_rows1(r0 + 16u, k), &b); }
        if TM > 20u { fma_group(&acc5, a_rows1(r0 + 20u, k), &b); }
        if TM > 24u { fma_group(&acc6, a_rows1(r0 + 24u, k), &b); }
        if TM > 28u { fma_group(&acc7, a_rows1(r0 + 28u, k), &b); }
    }
    // Constant indices here too: one dynamic index anywhere sends all of acc to memory.
    let owner = wid.y * WG + lid.x < p.col_blocks;
    store_group1(acc0, r0, c0, owner);
    if TM > 4u { store_group1(acc1, r0 + 4u, c0, owner); }
    if TM > 8u { store_group1(acc2, r0 + 8u, c0, owner); }
    if TM > 12u { store_group1(acc3, r0 + 12u, c0, owner); }
    if TM > 16u { store_group1(acc4, r0 + 16u, c0, owner); }
    if TM > 20u { store_group1(acc5, r0 + 20u, c0, owner); }
    if TM > 24u { store_group1(acc6, r0 + 24u, c0, owner); }
    if TM > 28u { store_group1(acc7, r0 + 28u, c0, owner); }
}

// ---- workgroup tiles ------------------------------------------------------------------------

@compute @workgroup_size(TX, TY)
fn matmul_forward_shared(@builtin(local_invocation_id) lid: vec3<u32>, @builtin(workgroup_id) wid: vec3<u32>) {
    let bm = TY * SM;
    let bn = TX * SN;
    let row_base = wid.y * bm;
    let col_base = wid.x * bn;
    let tid = lid.y * TX + lid.x;
    let threads = TX * TY;
    // Thread (lid.x, lid.y) owns rows row_base + lid.y + m*TY and columns col_base + lid.x + j*TX
    // (m < SM, j < SN): strided, so that neighbouring threads read neighbouring tile entries and
    // store neighbouring columns. Row m is accumulated in acc[m], a vec4 over j; entries with
    // m >= SM or j >= SN are computed from clamped tile reads and never stored.
    var acc: array<vec4<f32>, 4>;
    for (var k0 = 0u; k0 < p.k; k0 += BK) {
        // Cooperative copy, a constant number of elements a thread (BK*BM and BK*BN are
        // multiples of the thread count). Neighbouring threads take neighbouring addresses of
        // the operand as stored: along k when it is contiguous in k, else along rows/columns.
        // Elements outside the matrices are 0, so they add nothing.
        for (var t = 0u; t < BK * bm / threads; t++) {
            let e = tid + t * threads;
            let kk = select(e / bm, e % BK, !TRANS_A);
            let mm = select(e % bm, e / BK, !TRANS_A);
            let inside = row_base + mm < p.m && k0 + kk < p.k;
            a_tile[kk * bm + mm] = select(0.0, op_a(row_base + mm, k0 + kk), inside);
        }
        for (var t = 0u; t < BK * bn / threads; t++) {
            let e = tid + t * threads;
            let kk = select(e / bn, e % BK, TRANS_B);
            let nn = select(e % bn, e / BK, TRANS_B);
            let inside = col_base + nn < p.n && k0 + kk < p.k;
            b_tile[kk * bn + nn] = select(0.0, op_b(k0 + kk, col_base + nn), inside);
        }
        workgroupBarrier();
        // The only loop inside the K loop; its body has no loops (see the header).
        for (var kk = 0u; kk < BK; kk++) {
            let ta = kk * bm + lid.y;
            let tb = kk * bn + lid.x;
            let last_a = kk * bm + bm - 1u;
            let last_b = kk * bn + bn - 1u;
            let bv = vec4<f32>(
                b_tile[tb],
                b_tile[min(tb + TX, last_b)],
                b_tile[min(tb + 2u * TX, last_b)],
                b_tile[min(tb + 3u * TX, last_b)],
            );
            acc[0] = fma(vec4<f32>(a_tile[ta]), bv, acc[0]);
            if SM > 1u { acc[1] = fma(vec4<f32>(a_tile[min(ta + TY, last_a)]), bv, acc[1]); }
            if SM > 2u { acc[2] = fma(vec4<f32>(a_tile[min(ta + 2u * TY, last_a)]), bv, acc[2]); }
            if SM > 3u { acc[3] = fma(vec4<f32>(a_tile[min(ta + 3u * TY, last_a)]), bv, acc[3]); }
        }
        workgroupBarrier(); // the next copy overwrites the tiles
    }
    let r = row_base + lid.y;
    let c = col_base + lid.x;
    store_shared(acc[0], r, c);
    if SM > 1u { store_shared(acc[1], r + TY, c); }
    if SM > 2u { store_shared(acc[2], r + 2u * TY, c); }
    if SM > 3u { store_shared(acc[3], r + 3u * TY, c); }
}

// Row r of the thread's outputs: C(r, c + j*TX) = v[j] for j < SN.
fn store_shared(v: vec4<f32>, r: u32, c: u32) {
    for (var j = 0u; j < SN; j++) {
        let col = c + j * TX;
        if r < p.m && col < p.n {
            if ACCUMULATE {
                c1[r * p.n + col] += v[j];
            } else {
                c1[r * p.n + col] = v[j];
            }
        }
    }
}
