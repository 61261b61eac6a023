// conv_transpose2d/gemm.wgsl: 2x2 transposed convolution with stride 2 (the U-Net's
// up-convolution) as GEMMs tiled through workgroup memory: the GPU-shaped kernels.
//   x [N,I,H,W], w [I,O,2,2] (PyTorch layout), b [O], y [N,C,2H,2W] with C >= O (channels 0..O;
//   C > O when y is a concatenation buffer, and dy is read the same way). ab = 2a + b is the tap.
//   forward        : y[n,o,2i+a,2j+b] = b[o] + sum_c x[n,c,i,j] w[c,o,a,b]
//   backward data  : dx[n,c,i,j] (+)= sum_{o,a,b} dy[n,o,2i+a,2j+b] w[c,o,a,b]
//   backward weight: dw[c,o,a,b] += sum_{n,i,j} x[n,c,i,j] dy[n,o,2i+a,2j+b];  db[o] += sum dy[n,o,..]
// The windows do not overlap, so each is a plain GEMM C[M,N] = A[M,K] B[K,N] over the pixels
// px = (n,i,j) of x:
//   forward : M = 4*O (o,ab), N = N*H*W, K = I.      A[(o,ab),c] = w[c, o*4+ab], B = x as [I, pixels]
//   data    : M = I,          N = N*H*W, K = 4*O.    A = w as [I, 4*O], B[(o,ab),px] = dy under px
//   weight  : M = I (+1),     N = 4*O,   K = N*H*W.  A = x as [I, pixels], B[px,(o,ab)] = dy under px;
//             with db, row I of A is all ones, so row I of C holds db's four taps. K is split
//             into `chunks` (grid z) whose partial C go to `part`; conv_transpose2d_gemm_reduce
//             adds them in chunk order into dw and db (deterministic, no atomics).
// What this adds over the textbook kernel (conv_transpose2d/textbook.wgsl, one invocation per
// output, every operand read from global memory once per multiply-add): a workgroup of THREADS
// threads computes a BM x BN tile of C, stepping through K in slices of BK. All threads copy the
// slices of A and B into workgroup memory (consecutive threads along the operand's contiguous
// axis, every access bounds-checked: any shape), a barrier, and each thread multiplies its
// TM x TN register tile out of workgroup memory. A thread's rows are TY + i*(BM/TM) and columns
// TX + j*(BN/TN), so neighbouring threads read neighbouring words. The pixels (n,i,j) are decoded
// once per tile (forward, data) or per slice (weight, the next slice while one is multiplied).
// Chosen for hardware adapters (Tuning::builtin, `--tiling gpu`); CPU drivers keep the register
// tiles of conv_transpose2d/tiled.wgsl.
//
// group 0:  0 uniform Params   1 read x   2 read w   3 read b   4 read_write y   5 read dy
//   6 read_write dx   7 read_write part [chunks, rows, 4*O]   8 read_write dw   9 read_write db
// Workgroup: THREADS = (BM/TM) * (BN/TN) threads, at most 256; workgroup memory 4*BK*(BM+BN) bytes
// of tiles plus 16 bytes a decoded pixel: the Rust side checks both against the device's limits.

override ACCUMULATE: bool = true; // backward data: dx += (true) or dx = (false)

// The GEMM tile, shared with conv2d/gemm.wgsl: the pipeline constants BM, BN, BK,
// TM, TN (THREADS, A_LOADS and B_LOADS follow), the tiles a_tile and b_tile, and multiply();
// included after the overrides above (the piece's header says why).
// #include common/gemm_tile.wgsl

struct Params {
    n: u32, ci: u32, co: u32, h: u32, w: u32,
    yc: u32, // channels of y / dy: O, or more in a concatenation buffer
    has_bias: u32, // forward: b bound; weight: db wanted (A's row of ones)
    chunk: u32, // weight: pixels of K a chunk (a multiple of BK)
    chunks: u32, // weight: chunks of K
    rows: u32, // weight: rows of C, I (+1 with db)
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read> wt: array<f32>;
@group(0) @binding(3) var<storage, read> bias: array<f32>;
@group(0) @binding(4) var<storage, read_write> y: array<f32>;
@group(0) @binding(5) var<storage, read> dy: array<f32>;
@group(0) @binding(6) var<storage, read_write> dx: array<f32>;
@group(0) @binding(7) var<storage, read_write> part: array<f32>;
@group(0) @binding(8) var<storage, read_write> dw: array<f32>;
@group(0) @binding(9) var<storage, read_write> db: array<f32>;

var<workgroup> tile_pix: array<vec4<u32>, BN>; // forward, data: the tile's pixels
var<workgroup> slice_pix: array<vec4<u32>, 2u * BK>; // weight: two slices' pixels

// Pixel px of x: (n, i, j, 1), or zeros past `count`.
fn decode(px: u32, count: u32) -> vec4<u32> {
    if px >= count { return vec4<u32>(0u); }
    let plane = p.h * p.w;
    let rest = px % plane;
    return vec4<u32>(px / plane, rest / p.w, rest % p.w, 1u);
}

// Index of x[n, c, i, j] (q = (n, i, j, _)).
fn x_index(q: vec4<u32>, c: u32) -> u32 {
    return ((q.x * p.ci + c) * p.h + q.y) * p.w + q.z;
}

// Index of y[n, o, 2i+a, 2j+b] (or dy's), ab = 2a + b.
fn y_index(q: vec4<u32>, o: u32, ab: u32) -> u32 {
    return ((q.x * p.yc + o) * 2u * p.h + 2u * q.y + ab / 2u) * 2u * p.w + 2u * q.z + ab % 2u;
}

// Grid: (pixel tiles, tiles of (o, ab)). A[(o,ab), c] = w[c*4*O + o*4 + ab], B[c, px] = x[n,c,i,j].
@compute @workgroup_size(THREADS)
fn conv_transpose2d_gemm_forward(@builtin(local_invocation_index) tid: u32, @builtin(workgroup_id) wid: vec3<u32>) {
    let m0 = wid.y * BM;
    let n0 = wid.x * BN;
    let m_len = 4u * p.co;
    for (var e = tid; e < BN; e += THREADS) {
        tile_pix[e] = decode(n0 + e, p.n * p.h * p.w);
    }
    workgroupBarrier(); // the pixels are read by every thread below
    var acc: array<f32, 64>;
    for (var k0 = 0u; k0 < p.ci; k0 += BK) {
        for (var r = 0u; r < A_LOADS; r++) {
            let e = tid + r * THREADS; // along (o, ab): w's contiguous axis
            let kk = e / BM;
            let mm = e % BM;
            let inside = e < BM * BK && m0 + mm < m_len && k0 + kk < p.ci;
            if e < BM * BK {
                a_tile[e] = select(0.0, wt[select(0u, (k0 + kk) * m_len + m0 + mm, inside)], inside);
            }
        }
        for (var r = 0u; r < B_LOADS; r++) {
            let e = tid + r * THREADS; // along pixels
            let kk = e / BN;
            let q = tile_pix[e % BN];
            let inside = e < BK * BN && q.w != 0u && k0 + kk < p.ci;
            if e < BK * BN {
                b_tile[e] = select(0.0, x[select(0u, x_index(q, k0 + kk), inside)], inside);
            }
        }
        workgroupBarrier(); // the tiles are full
        multiply(&acc, tid);
        workgroupBarrier(); // the next slice overwrites them
    }
    let tx = tid % (BN / TN);
    let ty = tid / (BN / TN);
    for (var i = 0u; i < TM; i++) {
        let m = m0 + ty + i * (BM / TM);
        let o = m / 4u;
        let b = select(0.0, bias[select(0u, o, p.has_bias != 0u && m < m_len)], p.has_bias != 0u);
        for (var j = 0u; j < TN; j++) {
            let q = tile_pix[tx + j * (BN / TN)];
            if m < m_len && q.w != 0u {
                y[y_index(q, o, m % 4u)] = acc[i * TN + j] + b;
            }
        }
    }
}

// Grid: (pixel tiles, input-channel tiles). A[c, (o,ab)] = w[c*4*O + o*4 + ab],
// B[(o,ab), px] = dy[n,o,2i+a,2j+b].
@compute @workgroup_size(THREADS)
fn conv_transpose2d_gemm_backward_data(@builtin(local_invocation_index) tid: u32, @builtin(workgroup_id) wid: vec3<u32>) {
    let m0 = wid.y * BM;
    let n0 = wid.x * BN;
    let k_len = 4u * p.co;
    for (var e = tid; e < BN; e += THREADS) {
        tile_pix[e] = decode(n0 + e, p.n * p.h * p.w);
    }
    workgroupBarrier();
    var acc: array<f32, 64>;
    for (var k0 = 0u; k0 < k_len; k0 += BK) {
        for (var r = 0u; r < A_LOADS; r++) {
            let e = tid + r * THREADS; // along (o, ab): w's contiguous axis
            let mm = e / BK;
            let kk = e % BK;
            let inside = e < BM * BK && m0 + mm < p.ci && k0 + kk < k_len;
            if e < BM * BK {
                a_tile[kk * BM + mm] = select(0.0, wt[select(0u, (m0 + mm) * k_len + k0 + kk, inside)], inside);
            }
        }
        for (var r = 0u; r < B_LOADS; r++) {
            let e = tid + r * THREADS; // along pixels
            let k = k0 + e / BN;
            let q = tile_pix[e % BN];
            let inside = e < BK * BN && q.w != 0u && k < k_len;
            if e < BK * BN {
                b_tile[e] = select(0.0, dy[select(0u, y_index(q, k / 4u, k % 4u), inside)], inside);
            }
        }
        workgroupBarrier();
        multiply(&acc, tid);
        workgroupBarrier();
    }
    let tx = tid % (BN / TN);
    let ty = tid / (BN / TN);
    for (var i = 0u; i < TM; i++) {
        let c = m0 + ty + i * (BM / TM);
        for (var j = 0u; j < TN; j++) {
            let q = tile_pix[tx + j * (BN / TN)];
            if c < p.ci && q.w != 0u {
                if ACCUMULATE {
                    dx[x_index(q, c)] += acc[i * TN + j];
                } else {
                    dx[x_index(q, c)] = acc[i * TN + j];
                }
            }
        }
    }
}

// Decode the pixels k0 .. k0+BK of the chunk ending at k_end into half `half` of slice_pix.
fn decode_slice(tid: u32, k0: u32, k_end: u32, half: u32) {
    for (var e = tid; e < BK; e += THREADS) {
        slice_pix[half * BK + e] = decode(k0 + e, k_end);
    }
}

// Grid: (tiles of (o, ab), input-channel tiles, chunks of K). A[c, px] = x[n,c,i,j] (1 in row I,
// for db), B[px, (o,ab)] = dy[n,o,2i+a,2j+b].
@compute @workgroup_size(THREADS)
fn conv_transpose2d_gemm_backward_weight(@builtin(local_invocation_index) tid: u32, @builtin(workgroup_id) wid: vec3<u32>) {
    let m0 = wid.y * BM;
    let n0 = wid.x * BN;
    let n_len = 4u * p.co;
    let k_begin = wid.z * p.chunk;
    let k_end = min(k_begin + p.chunk, p.n * p.h * p.w);
    decode_slice(tid, k_begin, k_end, 0u);
    workgroupBarrier();
    var acc: array<f32, 64>;
    var half = 0u;
    for (var k0 = k_begin; k0 < k_end; k0 += BK) {
        for (var r = 0u; r < A_LOADS; r++) {
            let e = tid + r * THREADS; // along pixels: x's contiguous axis
            let mm = e / BK;
            let kk = e % BK;
            let c = m0 + mm;
            let q = slice_pix[half * BK + kk];
            let inside = e < BM * BK && c < p.ci && q.w != 0u;
            var v = select(0.0, x[select(0u, x_index(q, c), inside)], inside);
            if c == p.ci && c < p.rows && q.w != 0u {
                v = 1.0; // the row of ones: C[I, (o,ab)] = sum over pixels of dy = db's tap ab
            }
            if e < BM * BK {
                a_tile[kk * BM + mm] = v;
            }
        }
        for (var r = 0u; r < B_LOADS; r++) {
            let e = tid + r * THREADS; // along pixels
            let nn = e / BK;
            let kk = e % BK;
            let col = n0 + nn;
            let q = slice_pix[half * BK + kk];
            let inside = e < BK * BN && col < n_len && q.w != 0u;
            if e < BK * BN {
                b_tile[kk * BN + nn] = select(0.0, dy[select(0u, y_index(q, col / 4u, col % 4u), inside)], inside);
            }
        }
        workgroupBarrier();
        decode_slice(tid, k0 + BK, k_end, 1u - half); // read after the next barrier
        multiply(&acc, tid);
        workgroupBarrier();
        half = 1u - half;
    }
    let tx = tid % (BN / TN);
    let ty = tid / (BN / TN);
    for (var i = 0u; i < TM; i++) {
        let row = m0 + ty + i * (BM / TM);
        for (var j = 0u; j < TN; j++) {
            let col = n0 + tx + j * (BN / TN);
            if row < p.rows && col < n_len {
                part[(wid.z * p.rows + row) * n_len + col] = acc[i * TN + j];
            }
        }
    }
}

// dw[c, col] += sum over chunks of part[chunk, c, col], one thread an element of dw (I*4*O), in
// chunk order; then, with db, threads I*4*O.. add db[o] += the chunks' sums of its four taps.
@compute @workgroup_size(256)
fn conv_transpose2d_gemm_reduce(@builtin(global_invocation_id) id: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>) {
    let e = id.x + id.y * groups.x * 256u;
    let n_len = 4u * p.co;
    let len = p.ci * n_len;
    if e < len {
        var s = 0.0;
        for (var c = 0u; c < p.chunks; c++) {
            s += part[c * p.rows * n_len + e];
        }
        dw[e] += s;
    } else if e < len + p.co && p.rows > p.ci {
        let o = e - len;
        var s = 0.0;
        for (var c = 0u; c < p.chunks; c++) {
            let at = (c * p.rows + p.ci) * n_len + 4u * o;
            s += part[at] + part[at + 1u] + part[at + 2u] + part[at + 3u];
        }
        db[o] += s;
    }
}
