// conv2d/gemm.wgsl: 2-D convolution (cross-correlation, as PyTorch), NCHW, weights OIHW, as
// implicit GEMMs tiled through workgroup memory: the GPU-shaped kernels.
//   forward        : y[n,o,oh,ow] = epilogue(b[o] + sum_{i,kh,kw} w[o,i,kh,kw] * x[n,i,oh*SH-ph+kh, ow*SW-pw+kw])
//                    (x outside the image reads as 0; epilogue: ReLU, or ReLU then inverted dropout,
//                    as conv2d/tiled.wgsl's, with dropout.wgsl's mask bit for bit)
//   backward data  : dx[n,i,ih,iw] (+)= sum_{o,kh,kw} w[o,i,kh,kw] * dy[n,o,oh,ow]
//                    over the taps with ih+ph-kh = oh*SH, iw+pw-kw = ow*SW, 0 <= oh < OH, 0 <= ow < OW
//   backward weight: dw[o,i,kh,kw] += sum_{n,oh,ow} dy[n,o,oh,ow] * x[n,i,oh*SH-ph+kh, ow*SW-pw+kw]
//                    db[o]         += sum_{n,oh,ow} dy[n,o,oh,ow]
// Each is C[M,N] = A[M,K] B[K,N], with A and B read through index maps (no im2col matrix is stored):
//   forward : M = O, N = N*OH*OW (output pixels), K = I*KH*KW.  A = w as [O, I*KH*KW], B = im2col(x).
//   data    : M = I, N = N*H*W (input pixels),    K = O*KH*KW.  A[i,(o,tap)] = w[o,i,tap],
//             B[(o,tap),px] = dy at the output pixel that reads px through that tap, or 0.
//   weight  : M = O, N = I*KH*KW (+1),            K = N*OH*OW.  A = dy as [O, pixels],
//             B = im2col(x)^T; with db, column I*KH*KW of B is all ones, so that column of C is db.
//             K is long (131072 at the U-Net's top level at batch 2) and M x N small, so K is split
//             into `chunks` (grid z): each workgroup writes the partial C of its chunk into `part`,
//             and conv2d_gemm_reduce adds the chunks in order into dw and db (deterministic).
// What this adds over the textbook kernel (conv2d/textbook.wgsl, one invocation per output and every
// operand read from global memory once per multiply-add): a workgroup of THREADS threads computes a
// BM x BN tile of C. For each slice of BK along K, all its threads copy the BM x BK slice of A and
// the BK x BN slice of B into workgroup memory (consecutive threads read consecutive addresses along
// the operand's contiguous axis, with bounds checks: any shape, any edge), a barrier, and each thread
// multiplies its TM x TN register tile out of workgroup memory, so each value read from global
// memory feeds BM (or BN) multiply-adds and each read from workgroup memory TN (or TM). A thread's
// rows are TY + i*(BM/TM) and its columns TX + j*(BN/TN): neighbouring threads read neighbouring
// words of the B tile and store neighbouring pixels. The tile's pixel coordinates (a division
// each) are decoded once per tile (forward, data) or once per slice (weight: the pixels are K,
// decoded for the next slice while the current one is multiplied), into workgroup memory.
// Chosen for hardware adapters (Tuning::builtin, `--tiling gpu`); CPU drivers keep conv2d/tiled.wgsl's
// register tiles, as barriers and workgroup memory are slow there.
//
// group 0:  0 uniform Params   1 read x (forward, weight) | dy (data)   2 read w   3 read b
//   4 read_write y | dx   5 read dy (weight)   6 read_write part [chunks, O, cols]
//   7 read_write dw   8 read_write db
// Workgroup: THREADS = (BM/TM) * (BN/TN) threads, at most 256; workgroup memory 4*BK*(BM+BN) bytes
// of tiles plus 16 bytes a decoded pixel: the Rust side checks both against the device's limits.

// The kernel and stride: every tap decode divides by constants.
override KH: u32 = 3u;
override KW: u32 = 3u;
override SH: u32 = 1u;
override SW: u32 = 1u;
override RELU: bool = false; // forward epilogue
override DROPOUT: bool = false;
override ACCUMULATE: bool = true; // backward data: dx += (true) or dx = (false)

// The GEMM tile, shared with conv_transpose2d/gemm.wgsl: the pipeline constants BM, BN, BK,
// TM, TN (THREADS, A_LOADS and B_LOADS follow), the tiles a_tile and b_tile, and multiply();
// included after the overrides above (the piece's header says why).
// #include common/gemm_tile.wgsl

struct Params {
    n: u32, ci: u32, h: u32, w: u32, // x | dx
    co: u32, oh: u32, ow: u32, // y | dy: [N, O, OH, OW]
    ph: u32, pw: u32,
    has_bias: u32, // forward: b bound; weight: db wanted (B's column of ones)
    chunk: u32, // weight: pixels of K a chunk (a multiple of BK)
    chunks: u32, // weight: chunks of K
    cols: u32, // weight: columns of C, I*KH*KW (+1 with db)
    drop_threshold: u32, drop_seed_lo: u32, drop_seed_hi: u32, drop_scale: f32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> src: array<f32>;
@group(0) @binding(2) var<storage, read> wt: array<f32>;
@group(0) @binding(3) var<storage, read> bias: array<f32>;
@group(0) @binding(4) var<storage, read_write> dst: array<f32>;
@group(0) @binding(5) var<storage, read> dy: array<f32>;
@group(0) @binding(6) var<storage, read_write> part: array<f32>;
@group(0) @binding(7) var<storage, read_write> dw: array<f32>;
@group(0) @binding(8) var<storage, read_write> db: array<f32>;

var<workgroup> tile_pix: array<vec4<i32>, BN>; // forward, data: the tile's pixels
var<workgroup> slice_pix: array<vec4<i32>, 2u * BK>; // weight: two slices' pixels

// Pixel `px` of N planes of rows x cols: (n, row, column, 1), or (0, 0, 0, 0) past `count`.
fn decode(px: u32, rows: u32, cols: u32, count: u32) -> vec4<i32> {
    if px >= count { return vec4<i32>(0); }
    let plane = rows * cols;
    let rest = px % plane;
    return vec4<i32>(i32(px / plane), i32(rest / cols), i32(rest % cols), 1);
}

// x[n, i, r, c], or 0 outside the image (padding) or where `ok` is false. The index is clamped
// before the read so that no lane reads past the buffer.
fn x_at(n: i32, i: u32, r: i32, c: i32, ok: bool) -> f32 {
    let inside = ok && r >= 0 && c >= 0 && u32(r) < p.h && u32(c) < p.w;
    let idx = ((u32(n) * p.ci + i) * p.h + u32(r)) * p.w + u32(c);
    return select(0.0, src[select(0u, idx, inside)], inside);
}

// Inverted dropout's mask: dropout.wgsl's, bit for bit (the hash is written once, included).
// #include common/dropout_hash.wgsl

fn keep(idx: u32) -> bool {
    return hash_bits(hash_keys(p.drop_seed_lo, p.drop_seed_hi), idx) >= p.drop_threshold;
}

// Grid: (pixel tiles, channel tiles). A[o, k] = w[o*K + k], B[k, px] = x under tap k of pixel px.
@compute @workgroup_size(THREADS)
fn conv2d_gemm_forward(@builtin(local_invocation_index) tid: u32, @builtin(workgroup_id) wid: vec3<u32>) {
    let m0 = wid.y * BM;
    let n0 = wid.x * BN;
    let taps = KH * KW;
    let k_len = p.ci * taps;
    for (var e = tid; e < BN; e += THREADS) {
        tile_pix[e] = decode(n0 + e, p.oh, p.ow, p.n * p.oh * p.ow);
    }
    workgroupBarrier(); // the pixels are read by every thread below
    var acc: array<f32, 64>;
    for (var k0 = 0u; k0 < k_len; k0 += BK) {
        for (var r = 0u; r < A_LOADS; r++) {
            let e = tid + r * THREADS; // along k: w's contiguous axis
            let mm = e / BK;
            let kk = e % BK;
            let o = m0 + mm;
            let k = k0 + kk;
            let inside = e < BM * BK && o < p.co && k < k_len;
            if e < BM * BK {
                a_tile[kk * BM + mm] = select(0.0, wt[select(0u, o * k_len + k, inside)], inside);
            }
        }
        for (var r = 0u; r < B_LOADS; r++) {
            let e = tid + r * THREADS; // along pixels: x's contiguous axis
            let kk = e / BN;
            let nn = e % BN;
            let k = k0 + kk;
            let q = tile_pix[nn];
            let tap = k % taps;
            let ih = q.y * i32(SH) - i32(p.ph) + i32(tap / KW);
            let iw = q.z * i32(SW) - i32(p.pw) + i32(tap % KW);
            if e < BK * BN {
                b_tile[e] = x_at(q.x, k / taps, ih, iw, q.w != 0 && k < k_len);
            }
        }
        workgroupBarrier(); // the tiles are full
        multiply(&acc, tid);
        workgroupBarrier(); // the next slice overwrites the tiles
    }
    let tx = tid % (BN / TN);
    let ty = tid / (BN / TN);
    for (var i = 0u; i < TM; i++) {
        let o = m0 + ty + i * (BM / TM);
        let b = select(0.0, bias[select(0u, o, p.has_bias != 0u && o < p.co)], p.has_bias != 0u);
        for (var j = 0u; j < TN; j++) {
            let q = tile_pix[tx + j * (BN / TN)];
            if o < p.co && q.w != 0 {
                let idx = ((u32(q.x) * p.co + o) * p.oh + u32(q.y)) * p.ow + u32(q.z);
                var v = acc[i * TN + j] + b;
                if RELU {
                    v = max(v, 0.0);
                }
                if DROPOUT {
                    v = select(0.0, v * p.drop_scale, keep(idx));
                }
                dst[idx] = v;
            }
        }
    }
}

// Grid: (pixel tiles of dx, input-channel tiles). src = dy. A[i, (o,tap)] = w[o,i,tap];
// B[(o,tap), px] = dy[n,o,oh,ow] where pixel px of dx is read by output pixel (oh,ow) at that tap.
@compute @workgroup_size(THREADS)
fn conv2d_gemm_backward_data(@builtin(local_invocation_index) tid: u32, @builtin(workgroup_id) wid: vec3<u32>) {
    let m0 = wid.y * BM;
    let n0 = wid.x * BN;
    let taps = KH * KW;
    let k_len = p.co * taps;
    for (var e = tid; e < BN; e += THREADS) {
        tile_pix[e] = decode(n0 + e, p.h, p.w, p.n * p.h * p.w);
    }
    workgroupBarrier();
    var acc: array<f32, 64>;
    for (var k0 = 0u; k0 < k_len; k0 += BK) {
        for (var r = 0u; r < A_LOADS; r++) {
            let e = tid + r * THREADS; // along k: the taps of w are contiguous
            let mm = e / BK;
            let kk = e % BK;
            let i = m0 + mm;
            let k = k0 + kk;
            let inside = e < BM * BK && i < p.ci && k < k_len;
            let idx = ((k / taps) * p.ci + i) * taps + k % taps;
            if e < BM * BK {
                a_tile[kk * BM + mm] = select(0.0, wt[select(0u, idx, inside)], inside);
            }
        }
        for (var r = 0u; r < B_LOADS; r++) {
            let e = tid + r * THREADS; // along pixels
            let kk = e / BN;
            let nn = e % BN;
            let k = k0 + kk;
            let q = tile_pix[nn];
            let tap = k % taps;
            // forward: pixel (ih, iw) = (oh*SH - ph + kh, ow*SW - pw + kw)  =>  oh = (ih + ph - kh) / SH
            let th = q.y + i32(p.ph) - i32(tap / KW);
            let tw = q.z + i32(p.pw) - i32(tap % KW);
            let oh = th / i32(SH);
            let ow = tw / i32(SW);
            let inside = e < BK * BN && q.w != 0 && k < k_len && th >= 0 && tw >= 0
                && th % i32(SH) == 0 && tw % i32(SW) == 0 && u32(oh) < p.oh && u32(ow) < p.ow;
            let idx = ((u32(q.x) * p.co + k / taps) * p.oh + u32(oh)) * p.ow + u32(ow);
            if e < BK * BN {
                b_tile[e] = select(0.0, src[select(0u, idx, inside)], inside);
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
            if c < p.ci && q.w != 0 {
                let idx = ((u32(q.x) * p.ci + c) * p.h + u32(q.y)) * p.w + u32(q.z);
                if ACCUMULATE {
                    dst[idx] += acc[i * TN + j];
                } else {
                    dst[idx] = acc[i * TN + j];
                }
            }
        }
    }
}

// Decode the output pixels k0 .. k0+BK of the chunk ending at k_end into half `half` of slice_pix.
fn decode_slice(tid: u32, k0: u32, k_end: u32, half: u32) {
    for (var e = tid; e < BK; e += THREADS) {
        slice_pix[half * BK + e] = decode(k0 + e, p.oh, p.ow, k_end);
    }
}

// Grid: (column tiles, channel tiles, chunks of K). A[o, px] = dy[n,o,oh,ow];
// B[px, (i,tap)] = x under that tap of px, or 1 in column I*KH*KW (db).
@compute @workgroup_size(THREADS)
fn conv2d_gemm_backward_weight(@builtin(local_invocation_index) tid: u32, @builtin(workgroup_id) wid: vec3<u32>) {
    let m0 = wid.y * BM;
    let n0 = wid.x * BN;
    let taps = KH * KW;
    let wcols = p.ci * taps; // columns of dw
    let k_begin = wid.z * p.chunk;
    let k_end = min(k_begin + p.chunk, p.n * p.oh * p.ow);
    decode_slice(tid, k_begin, k_end, 0u);
    workgroupBarrier();
    var acc: array<f32, 64>;
    var half = 0u;
    for (var k0 = k_begin; k0 < k_end; k0 += BK) {
        for (var r = 0u; r < A_LOADS; r++) {
            let e = tid + r * THREADS; // along pixels: dy's contiguous axis
            let mm = e / BK;
            let kk = e % BK;
            let o = m0 + mm;
            let q = slice_pix[half * BK + kk];
            let inside = e < BM * BK && o < p.co && q.w != 0;
            let idx = ((u32(q.x) * p.co + o) * p.oh + u32(q.y)) * p.ow + u32(q.z);
            if e < BM * BK {
                a_tile[kk * BM + mm] = select(0.0, dy[select(0u, idx, inside)], inside);
            }
        }
        for (var r = 0u; r < B_LOADS; r++) {
            let e = tid + r * THREADS; // along pixels: x's contiguous axis
            let nn = e / BK;
            let kk = e % BK;
            let col = n0 + nn;
            let q = slice_pix[half * BK + kk];
            let tap = col % taps;
            let ih = q.y * i32(SH) - i32(p.ph) + i32(tap / KW);
            let iw = q.z * i32(SW) - i32(p.pw) + i32(tap % KW);
            var v = x_at(q.x, min(col / taps, p.ci - 1u), ih, iw, q.w != 0 && col < wcols);
            if col == wcols && col < p.cols && q.w != 0 {
                v = 1.0; // the column of ones: C[o, wcols] = sum over pixels of dy = db[o]
            }
            if e < BK * BN {
                b_tile[kk * BN + nn] = v;
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
        let o = m0 + ty + i * (BM / TM);
        for (var j = 0u; j < TN; j++) {
            let col = n0 + tx + j * (BN / TN);
            if o < p.co && col < p.cols {
                part[(wid.z * p.co + o) * p.cols + col] = acc[i * TN + j];
            }
        }
    }
}

// dw[o, col] += sum over chunks of part[chunk, o, col] (col < I*KH*KW), db[o] likewise from the
// last column when it is there: in chunk order, one thread an element of [O, cols].
@compute @workgroup_size(256)
fn conv2d_gemm_reduce(@builtin(global_invocation_id) id: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>) {
    let e = id.x + id.y * groups.x * 256u;
    if e >= p.co * p.cols { return; }
    var s = 0.0;
    for (var c = 0u; c < p.chunks; c++) {
        s += part[c * p.co * p.cols + e];
    }
    let o = e / p.cols;
    let col = e % p.cols;
    let wcols = p.ci * KH * KW;
    if col < wcols {
        dw[o * wcols + col] += s;
    } else {
        db[o] += s;
    }
}
