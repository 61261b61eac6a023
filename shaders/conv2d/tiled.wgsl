// conv2d/tiled.wgsl: 2-D convolution (cross-correlation, as PyTorch), NCHW, weights OIHW, as implicit GEMM.
//   forward        : y[n,o,oh,ow] = b[o] + sum_{i,kh,kw} w[o,i,kh,kw] * x[n,i,oh*SH-ph+kh, ow*SW-pw+kw]
//                    (x outside the image reads as 0: zero padding)
//   backward data  : dx[n,i,ih,iw] += sum_{o,kh,kw} w[o,i,kh,kw] * dy[n,o,oh,ow]
//                    over the (kh,kw) with ih+ph-kh = oh*SH and iw+pw-kw = ow*SW, 0 <= oh < OH, 0 <= ow < OW
//                    (gather form: one thread owns a tile of dx; dy is read as if dilated by the stride)
//   backward weight: dw[o,i,kh,kw] += sum_{n,oh,ow} dy[n,o,oh,ow] * x[n,i,oh*SH-ph+kh, ow*SW-pw+kw]
//                    db[o]         += sum_{n,oh,ow} dy[n,o,oh,ow]
//                    split-K: pass 1 writes one partial sum per chunk of dy rows into `part`,
//                    pass 2 adds the partials in chunk order (deterministic, no atomics).
//   epilogue       : the forward may apply ReLU, or ReLU then inverted dropout, to b + sum before
//                    storing (RELU, DROPOUT: pipeline constants), so the activation never makes a
//                    round trip through memory:  y = keep(idx) * max(z, 0) / (1 - p), z = b + sum.
//                    Its backward (conv2d_epilogue_backward) needs only y:
//                    dz = dy * (y > 0) / (1 - p)   (y > 0 exactly where z > 0 and the pixel is kept).
//                    keep(idx) is dropout.wgsl's hash of (seed, flat index of y), bit for bit.
// As a GEMM: forward M = O, N = N*OH*OW, K = I*KH*KW; backward data M = I, N = N*H*W, K = O*KH*KW;
// backward weight M = O, N = I*KH*KW, K = N*OH*OW. None of them builds the im2col matrix: operands
// are read from x / dy through the index maps above.
//
// group 0 (every entry point uses a subset):
//   0 uniform Params   1 read x | dy (the "image" operand) | y (epilogue backward)   2 read w
//   3 read b   4 read_write y | dx | dz   5 read dy (backward weight, epilogue backward)
//   6 read_write part (split-K scratch)   7 read_write dw   8 read_write db
//
// Two tilings:
// * register tiles (default, `*_forward`, `*_backward_data`, `*_backward_weight`): no workgroup
//   memory and no barriers. In the forward (and backward data at stride 1, which runs the same
//   tile) a thread owns 2 blocks of 4 output channels x ROWS rows x 8 columns (a vec4 per
//   channel, row and half row). Per input channel and kernel row it loads the 8 input columns
//   under each of the tile's rows; with stride 1 each further tap kw shifts that window by one
//   column and needs one new load per row. With rows read as vec4s (VEC_X) at stride 1, the
//   tile's rows 1.. under kernel row kh are its rows ..ROWS-2 under kh + 1, so each of the
//   KH + ROWS - 1 input rows is loaded once per input channel. The weights are first packed
//   (conv2d_pack_weights) so that the 8 channels' weights at a tap are two vec4 loads, each
//   feeding 8 * ROWS vec4 FMAs. On lavapipe (CPU SIMD across invocations) every load of a storage
//   buffer is a per-lane loop (a vec4 costs about twice a scalar) and a barrier is a coroutine
//   switch, so the FMA-per-loaded-value ratio of register tiles is what sets the speed: measured
//   there, 4 rows beat 2 by 11-26% at the 128x128 and 32x32 levels and 1-2% at the top one
//   (loading rows once, not per kernel row: 6-9%). But 4 rows hold 256 sums a thread, more than
//   a GPU thread's registers: the tuning picks ROWS (4 on CPU drivers, 2 on GPUs). A channel loop
//   of more than about 4 iterations of this body is not unrolled, and then the accumulator arrays
//   go to memory (3x slower); hence two blocks of 4 rather than one block of 8, held in 16 arrays
//   (block x row x half row) of 4 vec4s. The gather backward data (stride > 1) keeps scalar
//   weights, 2-row tiles and blocks of TM input channels.
// * workgroup tiles (`conv2d_forward_shared`): the classic GPU GEMM. A workgroup of TX*TY threads
//   computes a BM x BN block (BM = TY*SM output channels, BN = TX*SN output pixels), stepping
//   through K in slices of BK: the whole group copies a BM x BK slice of w and a BK x BN slice of
//   the virtual im2col matrix into workgroup memory, then each thread multiplies SM x SN outputs
//   out of it. Many threads share each global load, which is what a real GPU needs.

// Register tiling.
override WG: u32 = 64u; // threads a workgroup (1-D over output tiles)
override TM: u32 = 4u; // gather backward data: input channels a block (2 blocks a thread)
// Rows of the forward tile: 4 (lavapipe's choice) or 2 (where registers are scarce: a GPU). The
// gather backward data's tile always has 2.
override ROWS: u32 = 4u;
// The kernel and stride are pipeline constants: every tap loop has a fixed trip count.
override KH: u32 = 3u;
override KW: u32 = 3u;
override SH: u32 = 1u;
override SW: u32 = 1u;
// Forward epilogue (see the header). Pipeline constants, not uniforms: a runtime branch in the
// store loop stops its unrolling, and then the accumulators go to memory for the whole kernel
// (3x slower). For the same reason `add` (backward data through the forward kernel) is a literal
// argument of `conv_tile`, constant once the call is inlined.
// The forward tile reads x rows as aligned vec4s: set for a 3-wide kernel at stride 1 with
// column padding 1 (the U-Net's 3x3 "same" convolutions) when W % 4 == 0.
override VEC_X: bool = false;
// The weight gradient walks four pixels at a time with vec4 loads of dy and x: the same case,
// OW % 4 == 0.
override VEC_DY: bool = false;
// The forward tile stores (or, in backward data, adds) its rows as aligned vec4s: OW % 4 == 0 and
// y starts on a vec4. A scalar store is a loop over the SIMD lanes on lavapipe, as a load is, and
// at 16 channels (K = 144) the tile's 128 scalar stores (256 accesses when adding) cost about a
// tenth of its FMAs.
override VEC_Y: bool = false;
override RELU: bool = false;
override DROPOUT: bool = false;

// Bound of the backward weight's per-tap arrays (WGSL wants constant sizes; the Rust side asserts
// the kernel fits). Only the first KH*KW entries are used.
const MAX_TAPS: u32 = 25u;

struct Params {
    n: u32,
    ci: u32, // I
    h: u32,
    w: u32,
    co: u32, // O
    oh: u32,
    ow: u32,
    ph: u32, // padding, rows
    pw: u32, // padding, columns
    tiles_w: u32, // column tiles of the thread's output (8 columns each)
    tiles_h: u32, // row tiles (ROWS rows each; the gather backward data's: 2)
    tiles: u32, // n * tiles_h * tiles_w (backward weight: o-blocks * I)
    chunks: u32, // backward weight: number of K chunks
    rows_per_chunk: u32, // backward weight: dy rows (n, oh) a chunk
    len: u32, // reduce passes: elements of dw; epilogue backward: elements of y
    has_bias: u32, // forward: 1 when binding 3 holds a bias
    // Forward: where w[o, i, tap] lives (w_so * o + w_si * i + tap, tap flipped to taps-1-tap when
    // flip = 1). conv2d_backward_data_stride1 sets them for (o, i) swapped and the taps flipped.
    w_so: u32,
    w_si: u32,
    flip: u32,
    // Epilogue dropout: keep when bits(idx) >= drop_threshold; kept values are scaled by
    // drop_scale = 1 / (1 - p).
    drop_threshold: u32,
    drop_seed_lo: u32,
    drop_seed_hi: u32,
    drop_scale: f32,
    co_pad: u32, // forward: O rounded up to 8, the row length of the packed weights
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
@group(0) @binding(9) var<storage, read> wq: array<vec4<f32>>;
@group(0) @binding(11) var<storage, read> src_v4: array<vec4<f32>>; // binding 1's buffer, as vec4s
@group(0) @binding(12) var<storage, read> dy_v4: array<vec4<f32>>; // binding 5's buffer, as vec4s
@group(0) @binding(10) var<storage, read_write> wq_out: array<f32>;
@group(0) @binding(13) var<storage, read_write> dst_v4: array<vec4<f32>>; // binding 4's buffer, as vec4s

// src[plane + r * cols + c] for (r, c) inside [0,rows) x [0,cols), else 0 (padding). The index is
// clamped before the read so no lane ever reads outside the buffer.
fn read_padded(plane: u32, r: i32, c: i32, rows: u32, cols: u32) -> f32 {
    let inside = r >= 0 && c >= 0 && u32(r) < rows && u32(c) < cols;
    let idx = select(0u, plane + u32(r) * cols + u32(c), inside);
    return select(0.0, src[idx], inside);
}

// Which output tile thread `t` owns: (n, first row, first column), tiles of `rows` rows x 8
// columns. Threads past the end compute a duplicate of the last tile and skip the store, so no
// lane leaves the loops early.
fn tile_origin(t: u32, rows: u32) -> vec3<u32> {
    let tile = min(t, p.tiles - 1u);
    let tw = tile % p.tiles_w;
    let th = (tile / p.tiles_w) % p.tiles_h;
    return vec3<u32>(tile / (p.tiles_w * p.tiles_h), th * rows, tw * 8u);
}

// src at row r, columns c, c+step, c+2*step, c+3*step of a plane (zero outside).
fn src4(plane: u32, r: i32, c: i32, step: u32, rows: u32, cols: u32) -> vec4<f32> {
    let s = i32(step);
    return vec4<f32>(
        read_padded(plane, r, c, rows, cols),
        read_padded(plane, r, c + s, rows, cols),
        read_padded(plane, r, c + 2 * s, rows, cols),
        read_padded(plane, r, c + 3 * s, rows, cols),
    );
}

// dst[base + t] (= v[t], or += v[t] when add) for the t with col + t < cols; nothing when !ok.
fn store4(v: vec4<f32>, base: u32, col: u32, cols: u32, ok: bool, add: bool) {
    for (var t = 0u; t < 4u; t++) {
        if ok && col + t < cols {
            if add {
                dst[base + t] += v[t];
            } else {
                dst[base + t] = v[t];
            }
        }
    }
}

// store4 for the forward tile: with VEC_Y, base is a multiple of 4 (org.z is one of 8, OW one of
// 4) and the 4 columns are inside or outside together, so they are one vec4 access.
fn store_tile4(v: vec4<f32>, base: u32, col: u32, cols: u32, ok: bool, add: bool) {
    if VEC_Y {
        if ok && col < cols {
            if add {
                dst_v4[base / 4u] += v;
            } else {
                dst_v4[base / 4u] = v;
            }
        }
    } else {
        store4(v, base, col, cols, ok, add);
    }
}

// ReLU, then inverted dropout, as the pipeline constants ask, of the values z bound for
// y[idx .. idx+4]. Vector operations only: a loop or branch here, inside the store loops, would
// stop their unrolling (measured: 4x slower).
fn epilogue4(z: vec4<f32>, idx: u32, keys: vec2<u32>) -> vec4<f32> {
    var v = z;
    if RELU {
        v = max(v, vec4<f32>(0.0));
    }
    if DROPOUT {
        let bits = mix4(mix4((vec4<u32>(idx) + vec4<u32>(0u, 1u, 2u, 3u)) ^ vec4<u32>(keys.x)) + vec4<u32>(keys.y));
        v = select(vec4<f32>(0.0), v * p.drop_scale, bits >= vec4<u32>(p.drop_threshold));
    }
    return v;
}

// dropout.wgsl's mask, bit for bit, on four indices at once (the tests compare the fused op
// with relu then dropout).
fn mix4(x: vec4<u32>) -> vec4<u32> {
    var z = x;
    z ^= z >> vec4<u32>(16u);
    z *= vec4<u32>(0x21f0aaadu);
    z ^= z >> vec4<u32>(15u);
    z *= vec4<u32>(0x735a2d97u);
    z ^= z >> vec4<u32>(15u);
    return z;
}

fn hash_mix(x: u32) -> u32 {
    return mix4(vec4<u32>(x)).x;
}

// The mask's two keys, from the seed (the same for every element: computed once a thread).
fn dropout_keys() -> vec2<u32> {
    let key0 = hash_mix(p.drop_seed_lo ^ hash_mix(p.drop_seed_hi ^ 0x85ebca6bu));
    let key1 = hash_mix(p.drop_seed_hi ^ hash_mix(p.drop_seed_lo ^ 0xc2b2ae35u));
    return vec2<u32>(key0, key1);
}

// x[plane + r*W + c .. +4] as one vec4 (c a multiple of 4, W too), or 0 outside the image.
fn row4(plane: u32, r: i32, c: u32) -> vec4<f32> {
    let inside = r >= 0 && u32(r) < p.h && c < p.w;
    let idx = select(0u, (plane + u32(r) * p.w + c) / 4u, inside);
    return select(vec4<f32>(0.0), src_v4[idx], inside);
}

// The register tile of forward and backward data: 8 channels x ROWS rows x 8 columns, held as
// function-local arrays of 4 vec4s, one per (block of 4 channels, row, half row): a<r> and b<r>
// hold channels o0..o0+3 of row r, columns 0-3 and 4-7; c<r> and d<r> channels o0+4..o0+7. They
// are indexed only by loops of exactly 4 trips, so the driver unrolls them and keeps them in
// registers (a `var<private>` array, or an index that depends on an outer loop, sends them to
// memory on lavapipe, which costs 3x). Rows 2 and 3 exist only when ROWS is 4: a pipeline
// constant, so with 2 their code is gone. `add`: add into dst instead of storing the epilogue's
// value.
fn conv_tile(id: vec3<u32>, wid: vec3<u32>, add: bool) {
    let org = tile_origin(id.x, ROWS);
    let four = ROWS == 4u;
    let o0 = wid.y * 8u;
    var a0: array<vec4<f32>, 4>;
    var b0: array<vec4<f32>, 4>;
    var a1: array<vec4<f32>, 4>;
    var b1: array<vec4<f32>, 4>;
    var a2: array<vec4<f32>, 4>;
    var b2: array<vec4<f32>, 4>;
    var a3: array<vec4<f32>, 4>;
    var b3: array<vec4<f32>, 4>;
    var c0: array<vec4<f32>, 4>;
    var d0: array<vec4<f32>, 4>;
    var c1: array<vec4<f32>, 4>;
    var d1: array<vec4<f32>, 4>;
    var c2: array<vec4<f32>, 4>;
    var d2: array<vec4<f32>, 4>;
    var c3: array<vec4<f32>, 4>;
    var d3: array<vec4<f32>, 4>;
    let ih0 = i32(org.y * SH) - i32(p.ph);
    let iw0 = i32(org.z * SW) - i32(p.pw);
    let sh = i32(SH);
    for (var i = 0u; i < p.ci; i++) {
        let plane = (org.x * p.ci + i) * p.h * p.w;
        // VEC_X: the 8 columns under the tile of each of its rows as two aligned vec4s, and the
        // columns on either side as scalars; every tap's window is a shuffle of them. At stride 1
        // the tile's rows 1.. under kernel row kh are its rows ..ROWS-2 under kh + 1, so each
        // input row loads once: kernel row kh > 0 loads only the tile's last row.
        var r0: Row;
        var r1: Row;
        var r2: Row;
        var r3: Row;
        for (var kh = 0u; kh < KH; kh++) {
            let y0 = ih0 + i32(kh);
            var x0: Window;
            var x1: Window;
            var x2: Window;
            var x3: Window;
            if VEC_X && KW == 1u {
                // 1x1 kernel, no column padding (the U-Net's head): the 8 columns are the window.
                x0 = Window(row4(plane, y0, org.z), row4(plane, y0, org.z + 4u));
                x1 = Window(row4(plane, y0 + sh, org.z), row4(plane, y0 + sh, org.z + 4u));
                if four {
                    x2 = Window(row4(plane, y0 + 2 * sh, org.z), row4(plane, y0 + 2 * sh, org.z + 4u));
                    x3 = Window(row4(plane, y0 + 3 * sh, org.z), row4(plane, y0 + 3 * sh, org.z + 4u));
                }
            } else if VEC_X {
                if kh > 0u && SH == 1u {
                    r0 = r1;
                    if four {
                        r1 = r2;
                        r2 = r3;
                    }
                } else {
                    r0 = load_row(plane, y0, org.z, iw0);
                    if four {
                        r1 = load_row(plane, y0 + sh, org.z, iw0);
                        r2 = load_row(plane, y0 + 2 * sh, org.z, iw0);
                    }
                }
                // The tile's last row.
                if four {
                    r3 = load_row(plane, y0 + 3 * sh, org.z, iw0);
                } else {
                    r1 = load_row(plane, y0 + sh, org.z, iw0);
                }
                x0 = first_window(r0);
                x1 = first_window(r1);
                x2 = first_window(r2);
                x3 = first_window(r3);
            } else {
                x0 = src_window(plane, y0, iw0);
                x1 = src_window(plane, y0 + sh, iw0);
                if four {
                    x2 = src_window(plane, y0 + 2 * sh, iw0);
                    x3 = src_window(plane, y0 + 3 * sh, iw0);
                }
            }
            for (var kw = 0u; kw < KW; kw++) {
                if kw > 0u {
                    if VEC_X {
                        x0 = shifted_window(r0, kw);
                        x1 = shifted_window(r1, kw);
                        x2 = shifted_window(r2, kw);
                        x3 = shifted_window(r3, kw);
                    } else if SW == 1u {
                        // Stride 1: the 8 input columns under tap kw are those of kw-1 shifted by
                        // one, so each row needs one new load, not eight.
                        let c = iw0 + 7 + i32(kw);
                        x0 = slide(x0, read_padded(plane, y0, c, p.h, p.w));
                        x1 = slide(x1, read_padded(plane, y0 + sh, c, p.h, p.w));
                        if four {
                            x2 = slide(x2, read_padded(plane, y0 + 2 * sh, c, p.h, p.w));
                            x3 = slide(x3, read_padded(plane, y0 + 3 * sh, c, p.h, p.w));
                        }
                    } else {
                        let c = iw0 + i32(kw);
                        x0 = src_window(plane, y0, c);
                        x1 = src_window(plane, y0 + sh, c);
                        if four {
                            x2 = src_window(plane, y0 + 2 * sh, c);
                            x3 = src_window(plane, y0 + 3 * sh, c);
                        }
                    }
                }
                // The 8 channels' weights at this tap: two vec4 loads from the packed copy.
                let wrow = (i * KH * KW + kh * KW + kw) * (p.co_pad / 4u) + o0 / 4u;
                let w_lo = wq[wrow];
                let w_hi = wq[wrow + 1u];
                for (var m = 0u; m < 4u; m++) {
                    let wv = vec4<f32>(w_lo[m]);
                    a0[m] = fma(wv, x0.lo, a0[m]);
                    b0[m] = fma(wv, x0.hi, b0[m]);
                    a1[m] = fma(wv, x1.lo, a1[m]);
                    b1[m] = fma(wv, x1.hi, b1[m]);
                    if four {
                        a2[m] = fma(wv, x2.lo, a2[m]);
                        b2[m] = fma(wv, x2.hi, b2[m]);
                        a3[m] = fma(wv, x3.lo, a3[m]);
                        b3[m] = fma(wv, x3.hi, b3[m]);
                    }
                }
                for (var m = 0u; m < 4u; m++) {
                    let wv = vec4<f32>(w_hi[m]);
                    c0[m] = fma(wv, x0.lo, c0[m]);
                    d0[m] = fma(wv, x0.hi, d0[m]);
                    c1[m] = fma(wv, x1.lo, c1[m]);
                    d1[m] = fma(wv, x1.hi, d1[m]);
                    if four {
                        c2[m] = fma(wv, x2.lo, c2[m]);
                        d2[m] = fma(wv, x2.hi, d2[m]);
                        c3[m] = fma(wv, x3.lo, c3[m]);
                        d3[m] = fma(wv, x3.hi, d3[m]);
                    }
                }
            }
        }
    }
    let at = Store(org, id.x < p.tiles, dropout_keys(), add);
    // One call per accumulator array, so each store loop stays small enough to unroll.
    store_block(a0, at, o0, 0u, 0u);
    store_block(b0, at, o0, 0u, 4u);
    store_block(a1, at, o0, 1u, 0u);
    store_block(b1, at, o0, 1u, 4u);
    store_block(c0, at, o0 + 4u, 0u, 0u);
    store_block(d0, at, o0 + 4u, 0u, 4u);
    store_block(c1, at, o0 + 4u, 1u, 0u);
    store_block(d1, at, o0 + 4u, 1u, 4u);
    if four {
        store_block(a2, at, o0, 2u, 0u);
        store_block(b2, at, o0, 2u, 4u);
        store_block(a3, at, o0, 3u, 0u);
        store_block(b3, at, o0, 3u, 4u);
        store_block(c2, at, o0 + 4u, 2u, 0u);
        store_block(d2, at, o0 + 4u, 2u, 4u);
        store_block(c3, at, o0 + 4u, 3u, 0u);
        store_block(d3, at, o0 + 4u, 3u, 4u);
    }
}

// One input row under the tile (VEC_X): columns org.z .. org.z+7 as two aligned vec4s, and the
// columns org.z-1 (left) and org.z+8 (right) as scalars; zeros outside the image.
struct Row { lo: vec4<f32>, hi: vec4<f32>, left: f32, right: f32 }

// The 8 input columns under one tap of one output row: lo feeds output columns 0-3, hi 4-7.
struct Window { lo: vec4<f32>, hi: vec4<f32> }

fn load_row(plane: u32, r: i32, col: u32, iw0: i32) -> Row {
    return Row(
        row4(plane, r, col),
        row4(plane, r, col + 4u),
        read_padded(plane, r, iw0, p.h, p.w),
        read_padded(plane, r, iw0 + 9, p.h, p.w),
    );
}

// The window of tap kw = 0 (columns org.z-1 .. org.z+6) of a 3-wide kernel with column padding 1.
fn first_window(r: Row) -> Window {
    return Window(vec4<f32>(r.left, r.lo.xyz), vec4<f32>(r.lo.w, r.hi.xyz));
}

// The window of tap kw = 1 or 2 (VEC_X: KW is 3).
fn shifted_window(r: Row, kw: u32) -> Window {
    if kw == 1u {
        return Window(r.lo, r.hi);
    }
    return Window(vec4<f32>(r.lo.yzw, r.hi.x), vec4<f32>(r.hi.yzw, r.right));
}

// The window one column to the right: the old one shifted, and the new column `next`.
fn slide(x: Window, next: f32) -> Window {
    return Window(vec4<f32>(x.lo.yzw, x.hi.x), vec4<f32>(x.hi.yzw, next));
}

// The window of 8 output columns at input row r, starting at input column c (stride SW).
fn src_window(plane: u32, r: i32, c: i32) -> Window {
    return Window(src4(plane, r, c, SW, p.h, p.w), src4(plane, r, c + 4 * i32(SW), SW, p.h, p.w));
}

// Where and how the tile stores: its origin, whether it is a real tile (threads past the end
// compute a copy of the last one), the dropout keys, and whether it adds (backward data).
struct Store { org: vec3<u32>, live: bool, keys: vec2<u32>, add: bool }

// Channels o_first .. o_first+3 of the tile's row `row`, columns col .. col+3 (col 0 or 4): bias,
// epilogue and store (or add), for the channels, row and columns that exist. Backward data binds
// no bias and sets no epilogue: it adds the plain sums.
fn store_block(acc: array<vec4<f32>, 4>, at: Store, o_first: u32, row: u32, col: u32) {
    let has_bias = p.has_bias != 0u;
    let r = at.org.y + row;
    let ok = at.live && r < p.oh;
    for (var m = 0u; m < 4u; m++) {
        let c = min(o_first + m, p.co - 1u);
        let base = ((at.org.x * p.co + c) * p.oh + r) * p.ow + at.org.z + col;
        let z = acc[m] + vec4<f32>(select(0.0, bias[c], has_bias));
        store_tile4(epilogue4(z, base, at.keys), base, at.org.z + col, p.ow, ok && o_first + m < p.co, at.add);
    }
}

// The forward tile's packed weights (src = w as bound at 2, dst = wq_out, p.len elements):
// wq[(i*KH*KW + tap) * co_pad + o] = w[o*w_so + i*w_si + (flip ? KH*KW-1-tap : tap)] for o < O,
// 0 for O <= o < co_pad (co_pad: O rounded up to 8). Output channels are contiguous, so the tile
// loads the weights of its 8 channels at a tap as two vec4s (8 scalar loads before).
@compute @workgroup_size(WG)
fn conv2d_pack_weights(@builtin(global_invocation_id) id: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>) {
    let e = id.x + id.y * groups.x * WG;
    if e >= p.len { return; }
    let taps = KH * KW;
    let o = e % p.co_pad;
    let tap = (e / p.co_pad) % taps;
    let i = e / (p.co_pad * taps);
    let t = select(tap, taps - 1u - tap, p.flip != 0u);
    wq_out[e] = select(0.0, wt[min(o, p.co - 1u) * p.w_so + i * p.w_si + t], o < p.co);
}

@compute @workgroup_size(WG)
fn conv2d_forward(@builtin(global_invocation_id) id: vec3<u32>, @builtin(workgroup_id) wid: vec3<u32>) {
    conv_tile(id, wid, false);
}

// Backward data at stride 1 (padding < kernel): dx += conv(dy, w', padding K-1-p) with
// w'[i,o,kh,kw] = w[o,i,KH-1-kh,KW-1-kw], the forward's tile with the roles of the channels
// swapped (w_so, w_si) and the taps flipped (flip = 1), adding into dx.
@compute @workgroup_size(WG)
fn conv2d_backward_data_stride1(@builtin(global_invocation_id) id: vec3<u32>, @builtin(workgroup_id) wid: vec3<u32>) {
    conv_tile(id, wid, true);
}

// The epilogue's backward (src = y, dy at binding 5, dst = dz, stored; p.len elements):
// forward: y = keep * max(z, 0) * scale  =>  dz = dy * scale where y > 0, else 0.
// Without DROPOUT the scale is 1.
@compute @workgroup_size(WG)
fn conv2d_epilogue_backward(@builtin(global_invocation_id) id: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>) {
    let i = id.x + id.y * groups.x * WG;
    if i >= p.len { return; }
    let scale = select(1.0, p.drop_scale, DROPOUT);
    dst[i] = select(0.0, dy[i] * scale, src[i] > 0.0);
}

// dy at "numerators" (nh, nw): the dy pixel (nh/SH, nw/SW) where both divide exactly and land
// inside dy, else 0 (dy read as if dilated by the stride and padded).
fn dy1(plane: u32, nh: i32, nw: i32) -> f32 {
    if SH == 1u && SW == 1u {
        return read_padded(plane, nh, nw, p.oh, p.ow);
    }
    // A negative numerator is never a real row or column: i32 % keeps the sign, and read_padded
    // rejects negative indices.
    let on_grid = nh >= 0 && nw >= 0 && nh % i32(SH) == 0 && nw % i32(SW) == 0;
    return select(0.0, read_padded(plane, nh / i32(SH), nw / i32(SW), p.oh, p.ow), on_grid);
}

// dy1 at numerators nw .. nw+3 (no loop: a loop indexing a vector would not be unrolled).
fn dy4(plane: u32, nh: i32, nw: i32) -> vec4<f32> {
    return vec4<f32>(dy1(plane, nh, nw), dy1(plane, nh, nw + 1), dy1(plane, nh, nw + 2), dy1(plane, nh, nw + 3));
}

// dx tile: input channels i0 .. i0+TM, rows org.y, org.y+1, columns org.z .. org.z+7 of image
// org.x (src = dy here, and tiles_w, tiles_h count dx tiles).
@compute @workgroup_size(WG)
fn conv2d_backward_data(@builtin(global_invocation_id) id: vec3<u32>, @builtin(workgroup_id) wid: vec3<u32>) {
    let org = tile_origin(id.x, 2u);
    let i0 = wid.y * 2u * TM;
    var a0: array<vec4<f32>, 16>;
    var b0: array<vec4<f32>, 16>;
    var a1: array<vec4<f32>, 16>;
    var b1: array<vec4<f32>, 16>;
    var c0: array<vec4<f32>, 16>;
    var d0: array<vec4<f32>, 16>;
    var c1: array<vec4<f32>, 16>;
    var d1: array<vec4<f32>, 16>;
    let taps = KH * KW;
    // forward: y[oh,ow] += w[o,i,kh,kw] * x[oh*SH-ph+kh, ow*SW-pw+kw]
    //   =>  dx[ih,iw] += w[o,i,kh,kw] * dy[oh,ow]  where oh*SH = ih+ph-kh, ow*SW = iw+pw-kw.
    // Walk the taps with j = KW-1-kw so that the dy columns move right as j grows, as in the forward.
    let nw0 = i32(org.z + p.pw) - i32(KW - 1u);
    for (var o = 0u; o < p.co; o++) {
        let plane = (org.x * p.co + o) * p.oh * p.ow;
        for (var kh = 0u; kh < KH; kh++) {
            let r0 = i32(org.y + p.ph) - i32(kh);
            let r1 = r0 + 1;
            var da0 = dy4(plane, r0, nw0);
            var db0 = dy4(plane, r0, nw0 + 4);
            var da1 = dy4(plane, r1, nw0);
            var db1 = dy4(plane, r1, nw0 + 4);
            for (var j = 0u; j < KW; j++) {
                if j > 0u {
                    if SW == 1u && SH == 1u {
                        let c = nw0 + 7 + i32(j);
                        da0 = vec4<f32>(da0.yzw, db0.x);
                        db0 = vec4<f32>(db0.yzw, read_padded(plane, r0, c, p.oh, p.ow));
                        da1 = vec4<f32>(da1.yzw, db1.x);
                        db1 = vec4<f32>(db1.yzw, read_padded(plane, r1, c, p.oh, p.ow));
                    } else {
                        let c = nw0 + i32(j);
                        da0 = dy4(plane, r0, c);
                        db0 = dy4(plane, r0, c + 4);
                        da1 = dy4(plane, r1, c);
                        db1 = dy4(plane, r1, c + 4);
                    }
                }
                let wb = kh * KW + KW - 1u - j;
                for (var m = 0u; m < TM; m++) {
                    let wv = vec4<f32>(wt[(o * p.ci + min(i0 + m, p.ci - 1u)) * taps + wb]);
                    a0[m] = fma(wv, da0, a0[m]);
                    b0[m] = fma(wv, db0, b0[m]);
                    a1[m] = fma(wv, da1, a1[m]);
                    b1[m] = fma(wv, db1, b1[m]);
                }
                for (var m = 0u; m < TM; m++) {
                    let wv = vec4<f32>(wt[(o * p.ci + min(i0 + TM + m, p.ci - 1u)) * taps + wb]);
                    c0[m] = fma(wv, da0, c0[m]);
                    d0[m] = fma(wv, db0, d0[m]);
                    c1[m] = fma(wv, da1, c1[m]);
                    d1[m] = fma(wv, db1, d1[m]);
                }
            }
        }
    }
    let ok = id.x < p.tiles;
    let row1 = org.y + 1u < p.h;
    // One loop per accumulator array, so each stays small enough to unroll (see the header).
    for (var m = 0u; m < TM; m++) {
        let c = min(i0 + m, p.ci - 1u);
        let base = ((org.x * p.ci + c) * p.h + org.y) * p.w + org.z + 0u;
        store4(a0[m], base, org.z + 0u, p.w, ok && i0 + m < p.ci, true);
    }
    for (var m = 0u; m < TM; m++) {
        let c = min(i0 + m, p.ci - 1u);
        let base = ((org.x * p.ci + c) * p.h + org.y) * p.w + org.z + 4u;
        store4(b0[m], base, org.z + 4u, p.w, ok && i0 + m < p.ci, true);
    }
    for (var m = 0u; m < TM; m++) {
        let c = min(i0 + m, p.ci - 1u);
        let base = ((org.x * p.ci + c) * p.h + org.y + 1u) * p.w + org.z + 0u;
        store4(a1[m], base, org.z + 0u, p.w, ok && i0 + m < p.ci && row1, true);
    }
    for (var m = 0u; m < TM; m++) {
        let c = min(i0 + m, p.ci - 1u);
        let base = ((org.x * p.ci + c) * p.h + org.y + 1u) * p.w + org.z + 4u;
        store4(b1[m], base, org.z + 4u, p.w, ok && i0 + m < p.ci && row1, true);
    }
    for (var m = 0u; m < TM; m++) {
        let c = min(i0 + TM + m, p.ci - 1u);
        let base = ((org.x * p.ci + c) * p.h + org.y) * p.w + org.z + 0u;
        store4(c0[m], base, org.z + 0u, p.w, ok && i0 + TM + m < p.ci, true);
    }
    for (var m = 0u; m < TM; m++) {
        let c = min(i0 + TM + m, p.ci - 1u);
        let base = ((org.x * p.ci + c) * p.h + org.y) * p.w + org.z + 4u;
        store4(d0[m], base, org.z + 4u, p.w, ok && i0 + TM + m < p.ci, true);
    }
    for (var m = 0u; m < TM; m++) {
        let c = min(i0 + TM + m, p.ci - 1u);
        let base = ((org.x * p.ci + c) * p.h + org.y + 1u) * p.w + org.z + 0u;
        store4(c1[m], base, org.z + 0u, p.w, ok && i0 + TM + m < p.ci && row1, true);
    }
    for (var m = 0u; m < TM; m++) {
        let c = min(i0 + TM + m, p.ci - 1u);
        let base = ((org.x * p.ci + c) * p.h + org.y + 1u) * p.w + org.z + 4u;
        store4(d1[m], base, org.z + 4u, p.w, ok && i0 + TM + m < p.ci && row1, true);
    }
}

// Backward weight, pass 1. Thread = (8 output channels x 1 input channel, chunk of dy rows). It
// walks its rows pixel by pixel: per pixel 8 loads of dy (two vec4s of channels) and, at stride 1,
// KH new loads of x (the window slides one column), then 2*KH*KW vec4 FMAs:
// acc[tap] += dy(4 channels) * x under the tap. The accumulators are arrays of vec4 indexed only by
// the tap loop, whose trip count is a pipeline constant: unrolled, they stay in registers.
// Measured on lavapipe: 19 GFLOP/s at 16ch@256², where a tile of 8 channels x 2 inputs, or of 16
// channels x 1 input, is not unrolled and runs at 4. With VEC_DY (3x3, stride 1, padding 1,
// OW % 4 == 0: the U-Net's convolutions) it walks four pixels at a time: 8 vec4 loads of dy and
// 3 of x feed 72 vec4 FMAs (per pixel: 8 + 3 scalar loads for 18), another 1.5-2x.
// part[chunk, o, i, kh, kw] = its sum; part[chunks*O*I*KH*KW + chunk*O + o] = the chunk's sum of dy
// (the bias gradient), written by the threads of input 0.
@compute @workgroup_size(WG)
fn conv2d_backward_weight(@builtin(global_invocation_id) id: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>) {
    let g = id.x + id.y * groups.x * WG;
    let valid = g < p.tiles * p.chunks;
    let gc = min(g, p.tiles * p.chunks - 1u);
    let tile = gc % p.tiles;
    let chunk = gc / p.tiles;
    let o_blocks = (p.co + 7u) / 8u;
    let o0 = (tile % o_blocks) * 8u;
    let i = tile / o_blocks;
    let rows = p.n * p.oh;
    let plane_out = p.oh * p.ow;
    // Channels past O read channel O-1 (never stored), so every lane runs the same loads.
    let last_o = p.co - 1u;
    let oa = vec4<u32>(min(o0, last_o), min(o0 + 1u, last_o), min(o0 + 2u, last_o), min(o0 + 3u, last_o)) * plane_out;
    let ob = vec4<u32>(min(o0 + 4u, last_o), min(o0 + 5u, last_o), min(o0 + 6u, last_o), min(o0 + 7u, last_o)) * plane_out;
    var acc_a: array<vec4<f32>, MAX_TAPS>; // channels o0..o0+3, per tap
    var acc_b: array<vec4<f32>, MAX_TAPS>; // channels o0+4..o0+7
    var sum_a = vec4<f32>(0.0);
    var sum_b = vec4<f32>(0.0);
    var win: array<f32, MAX_TAPS>; // [kh][kw]: x under tap (kh, kw) at the current pixel
    for (var rr = 0u; rr < p.rows_per_chunk; rr++) {
        let row_raw = chunk * p.rows_per_chunk + rr;
        // The last chunk may overhang: it runs on a clamped row with dy scaled by 0, so every lane
        // runs the same trip count.
        let live = select(0.0, 1.0, row_raw < rows);
        let row = min(row_raw, rows - 1u);
        let n = row / p.oh;
        let oh = row % p.oh;
        let ih0 = i32(oh * SH) - i32(p.ph);
        let plane = (n * p.ci + i) * p.h * p.w;
        let dy_row = n * p.co * plane_out + oh * p.ow;
        if VEC_DY && KH == 1u && KW == 1u {
            // 1x1 kernel, stride 1, no column padding (the U-Net's head): pixel ow reads x column
            // ow, so a quad of dy pixels meets one aligned vec4 of x (9 vec4 loads for 8 vec4
            // FMAs, where the scalar walk below loads 36 scalars). acc_a[k], k < 4, holds channel
            // o0 + k's sums per pixel of the quad; they are added across the quad after the loop.
            let d_row = dy_row / 4u;
            for (var q = 0u; q < p.ow / 4u; q++) {
                let d = d_row + q;
                let qa0 = live * dy_v4[d + oa.x / 4u];
                let qa1 = live * dy_v4[d + oa.y / 4u];
                let qa2 = live * dy_v4[d + oa.z / 4u];
                let qa3 = live * dy_v4[d + oa.w / 4u];
                let qb0 = live * dy_v4[d + ob.x / 4u];
                let qb1 = live * dy_v4[d + ob.y / 4u];
                let qb2 = live * dy_v4[d + ob.z / 4u];
                let qb3 = live * dy_v4[d + ob.w / 4u];
                let one = vec4<f32>(1.0);
                sum_a += vec4<f32>(dot(qa0, one), dot(qa1, one), dot(qa2, one), dot(qa3, one));
                sum_b += vec4<f32>(dot(qb0, one), dot(qb1, one), dot(qb2, one), dot(qb3, one));
                // forward: y[o,oh,ow] += w[o,i] * x[i,ih,ow]  =>  dw[o,i] += dy[o,oh,ow] * x[i,ih,ow]
                let xv = row4(plane, ih0, 4u * q);
                acc_a[0] = fma(qa0, xv, acc_a[0]);
                acc_a[1] = fma(qa1, xv, acc_a[1]);
                acc_a[2] = fma(qa2, xv, acc_a[2]);
                acc_a[3] = fma(qa3, xv, acc_a[3]);
                acc_b[0] = fma(qb0, xv, acc_b[0]);
                acc_b[1] = fma(qb1, xv, acc_b[1]);
                acc_b[2] = fma(qb2, xv, acc_b[2]);
                acc_b[3] = fma(qb3, xv, acc_b[3]);
            }
        } else if VEC_DY {
            // Four pixels at a time (OW % 4 == 0, 3-wide taps, stride 1, column padding 1): dy
            // of each channel and x of each row arrive as aligned vec4s, 2.5x fewer loaded
            // values per FMA. Pixel ow + j, tap (kh, kw) reads x column ow + j - 1 + kw: one of
            // [last column of the previous quad, this quad, first column of the next].
            var left: array<f32, 3>; // per kernel row
            var cur: array<vec4<f32>, 3>;
            for (var kh = 0u; kh < 3u; kh++) {
                left[kh] = 0.0;
                cur[kh] = row4(plane, ih0 + i32(kh), 0u);
            }
            let d_row = dy_row / 4u;
            for (var q = 0u; q < p.ow / 4u; q++) {
                let d = d_row + q;
                let qa0 = live * dy_v4[d + oa.x / 4u];
                let qa1 = live * dy_v4[d + oa.y / 4u];
                let qa2 = live * dy_v4[d + oa.z / 4u];
                let qa3 = live * dy_v4[d + oa.w / 4u];
                let qb0 = live * dy_v4[d + ob.x / 4u];
                let qb1 = live * dy_v4[d + ob.y / 4u];
                let qb2 = live * dy_v4[d + ob.z / 4u];
                let qb3 = live * dy_v4[d + ob.w / 4u];
                let one = vec4<f32>(1.0);
                sum_a += vec4<f32>(dot(qa0, one), dot(qa1, one), dot(qa2, one), dot(qa3, one));
                sum_b += vec4<f32>(dot(qb0, one), dot(qb1, one), dot(qb2, one), dot(qb3, one));
                // x columns ow-1 .. ow+4 of the KH rows: xs[kh*6 + c] = column ow - 1 + c.
                var xs: array<f32, 18>;
                for (var kh = 0u; kh < 3u; kh++) {
                    let next = row4(plane, ih0 + i32(kh), 4u * q + 4u);
                    let c = cur[kh];
                    xs[kh * 6u] = left[kh];
                    xs[kh * 6u + 1u] = c.x;
                    xs[kh * 6u + 2u] = c.y;
                    xs[kh * 6u + 3u] = c.z;
                    xs[kh * 6u + 4u] = c.w;
                    xs[kh * 6u + 5u] = next.x;
                    left[kh] = c.w;
                    cur[kh] = next;
                }
                // One flat 9-tap loop per pixel (a nest of kh, pixel and kw loops is not
                // unrolled, and then the accumulators live in memory: 6x slower).
                accumulate_quad_pixel(&acc_a, &acc_b, vec4<f32>(qa0.x, qa1.x, qa2.x, qa3.x), vec4<f32>(qb0.x, qb1.x, qb2.x, qb3.x), xs, 0u);
                accumulate_quad_pixel(&acc_a, &acc_b, vec4<f32>(qa0.y, qa1.y, qa2.y, qa3.y), vec4<f32>(qb0.y, qb1.y, qb2.y, qb3.y), xs, 1u);
                accumulate_quad_pixel(&acc_a, &acc_b, vec4<f32>(qa0.z, qa1.z, qa2.z, qa3.z), vec4<f32>(qb0.z, qb1.z, qb2.z, qb3.z), xs, 2u);
                accumulate_quad_pixel(&acc_a, &acc_b, vec4<f32>(qa0.w, qa1.w, qa2.w, qa3.w), vec4<f32>(qb0.w, qb1.w, qb2.w, qb3.w), xs, 3u);
            }
        } else {
            // Stride 1: prime the window for ow = 0 with columns -pw .. -pw+KW-2 in slots 1 .. KW-1;
            // the first step shifts them down and loads slot KW-1.
            if SW == 1u {
                for (var kh = 0u; kh < KH; kh++) {
                    for (var kw = 1u; kw < KW; kw++) {
                        let c = i32(kw) - 1 - i32(p.pw);
                        win[kh * KW + kw] = read_padded(plane, ih0 + i32(kh), c, p.h, p.w);
                    }
                }
            }
            for (var ow = 0u; ow < p.ow; ow++) {
                let d = dy_row + ow;
                let da = live * vec4<f32>(dy[d + oa.x], dy[d + oa.y], dy[d + oa.z], dy[d + oa.w]);
                let db = live * vec4<f32>(dy[d + ob.x], dy[d + ob.y], dy[d + ob.z], dy[d + ob.w]);
                sum_a += da;
                sum_b += db;
                let iw0 = i32(ow * SW) - i32(p.pw);
                for (var kh = 0u; kh < KH; kh++) {
                    let r = ih0 + i32(kh);
                    let s = kh * KW;
                    if SW == 1u {
                        // The window slides by one column: keep KW-1 values, load one.
                        for (var kw = 1u; kw < KW; kw++) {
                            win[s + kw - 1u] = win[s + kw];
                        }
                        let c = iw0 + i32(KW - 1u);
                        win[s + KW - 1u] = read_padded(plane, r, c, p.h, p.w);
                    } else {
                        for (var kw = 0u; kw < KW; kw++) {
                            win[s + kw] = read_padded(plane, r, iw0 + i32(kw), p.h, p.w);
                        }
                    }
                }
                // forward: y[o,oh,ow] += w[o,i,kh,kw] * x[i, ..]  =>  dw[o,i,kh,kw] += dy[o,oh,ow] * x[i, ..]
                for (var t = 0u; t < KH * KW; t++) {
                    acc_a[t] = fma(da, vec4<f32>(win[t]), acc_a[t]);
                    acc_b[t] = fma(db, vec4<f32>(win[t]), acc_b[t]);
                }
            }
        }
    }
    // len from the shape, not the uniform's p.len: reading p.len here made the whole kernel 2x
    // slower on lavapipe (measured; the loop above is compiled differently).
    let len = p.co * p.ci * KH * KW;
    let base = chunk * len;
    if VEC_DY && KH == 1u && KW == 1u {
        let one = vec4<f32>(1.0);
        acc_a[0] = vec4<f32>(dot(acc_a[0], one), dot(acc_a[1], one), dot(acc_a[2], one), dot(acc_a[3], one));
        acc_b[0] = vec4<f32>(dot(acc_b[0], one), dot(acc_b[1], one), dot(acc_b[2], one), dot(acc_b[3], one));
    }
    for (var t = 0u; t < KH * KW; t++) {
        store_dw_part(base, o0, i, t, acc_a[t], valid);
        store_dw_part(base, o0 + 4u, i, t, acc_b[t], valid);
    }
    if valid && i == 0u {
        store_db_part(p.chunks * len + chunk * p.co, o0, sum_a);
        store_db_part(p.chunks * len + chunk * p.co, o0 + 4u, sum_b);
    }
}

// acc[kh*3 + kw] += d * x at column j + kw of row kh in xs (pixel j of a quad, 3x3 taps).
fn accumulate_quad_pixel(
    acc_a: ptr<function, array<vec4<f32>, MAX_TAPS>>,
    acc_b: ptr<function, array<vec4<f32>, MAX_TAPS>>,
    da: vec4<f32>,
    db: vec4<f32>,
    xs: array<f32, 18>,
    j: u32,
) {
    for (var t = 0u; t < 9u; t++) {
        let xv = vec4<f32>(xs[(t / 3u) * 6u + j + t % 3u]);
        (*acc_a)[t] = fma(da, xv, (*acc_a)[t]);
        (*acc_b)[t] = fma(db, xv, (*acc_b)[t]);
    }
}

// part[base + (o*I + i)*taps + tap] = v[c] for the 4 channels o = o0 + c that exist.
fn store_dw_part(base: u32, o0: u32, i: u32, tap: u32, v: vec4<f32>, ok: bool) {
    let taps = KH * KW;
    if ok && o0 < p.co { part[base + (o0 * p.ci + i) * taps + tap] = v.x; }
    if ok && o0 + 1u < p.co { part[base + ((o0 + 1u) * p.ci + i) * taps + tap] = v.y; }
    if ok && o0 + 2u < p.co { part[base + ((o0 + 2u) * p.ci + i) * taps + tap] = v.z; }
    if ok && o0 + 3u < p.co { part[base + ((o0 + 3u) * p.ci + i) * taps + tap] = v.w; }
}

// part[base + o] = v[c] for the 4 channels o = o0 + c that exist.
fn store_db_part(base: u32, o0: u32, v: vec4<f32>) {
    if o0 < p.co { part[base + o0] = v.x; }
    if o0 + 1u < p.co { part[base + o0 + 1u] = v.y; }
    if o0 + 2u < p.co { part[base + o0 + 2u] = v.z; }
    if o0 + 3u < p.co { part[base + o0 + 3u] = v.w; }
}

// Backward weight, pass 2: dw[e] += sum over chunks, in chunk order, of part[chunk, e].
@compute @workgroup_size(WG)
fn conv2d_reduce_dw(@builtin(global_invocation_id) id: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>) {
    let e = id.x + id.y * groups.x * WG;
    if e >= p.len { return; }
    var s = 0.0;
    for (var c = 0u; c < p.chunks; c++) {
        s += part[c * p.len + e];
    }
    dw[e] += s;
}

// db[o] += sum over chunks, in chunk order, of the chunk sums after the dw partials.
@compute @workgroup_size(WG)
fn conv2d_reduce_db(@builtin(global_invocation_id) id: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>) {
    let o = id.x + id.y * groups.x * WG;
    if o >= p.co { return; }
    let base = p.chunks * p.len; // p.len = O*I*KH*KW here too
    var s = 0.0;
    for (var c = 0u; c < p.chunks; c++) {
        s += part[base + c * p.co + o];
    }
    db[o] += s;
}

// Workgroup tiling (forward).
override TX: u32 = 16u; // threads along pixels
override TY: u32 = 16u; // threads along output channels
override SM: u32 = 4u; // output channels a thread (<= 8)
override SN: u32 = 4u; // pixels a thread (<= 8)
override BK: u32 = 16u; // K slice a step
const MAX_TILE: u32 = 2048u; // BM*BK and BK*BN must fit

var<workgroup> w_tile: array<f32, MAX_TILE>; // [BK][BM]
var<workgroup> x_tile: array<f32, MAX_TILE>; // [BK][BN]

@compute @workgroup_size(TX, TY)
fn conv2d_forward_shared(
    @builtin(local_invocation_id) lid: vec3<u32>,
    @builtin(workgroup_id) wid: vec3<u32>,
) {
    let bm = TY * SM;
    let bn = TX * SN;
    let o_base = wid.y * bm;
    let p_base = wid.x * bn;
    let taps = KH * KW;
    let k_len = p.ci * taps;
    let pixels = p.n * p.oh * p.ow;
    let plane_out = p.oh * p.ow;
    let tid = lid.y * TX + lid.x;
    let threads = TX * TY;
    var sacc: array<f32, 64>;
    for (var k0 = 0u; k0 < k_len; k0 += BK) {
        // Cooperative copy: thread tid fills elements tid, tid+threads, ... of each slice.
        for (var e = tid; e < BK * bm; e += threads) {
            let kk = e / bm;
            let mm = e % bm;
            let o = o_base + mm;
            let k = k0 + kk;
            let inside = o < p.co && k < k_len;
            w_tile[e] = select(0.0, wt[select(0u, o * k_len + k, inside)], inside);
        }
        for (var e = tid; e < BK * bn; e += threads) {
            let kk = e / bn;
            let nn = e % bn;
            let px = p_base + nn;
            let k = k0 + kk;
            // Virtual im2col element (k = (i, kh, kw), px = (n, oh, ow)).
            let i = k / taps;
            let kh = (k % taps) / KW;
            let kw = k % KW;
            let n = px / plane_out;
            let oh = (px % plane_out) / p.ow;
            let ow = px % p.ow;
            let ih = i32(oh * SH + kh) - i32(p.ph);
            let iw = i32(ow * SW + kw) - i32(p.pw);
            let v = read_padded((n * p.ci + i) * p.h * p.w, ih, iw, p.h, p.w);
            x_tile[e] = select(0.0, v, px < pixels && k < k_len);
        }
        workgroupBarrier();
        for (var kk = 0u; kk < BK; kk++) {
            var a: array<f32, 8>;
            var bv: array<f32, 8>;
            for (var m = 0u; m < SM; m++) {
                a[m] = w_tile[kk * bm + lid.y + m * TY];
            }
            for (var j = 0u; j < SN; j++) {
                bv[j] = x_tile[kk * bn + lid.x + j * TX];
            }
            for (var m = 0u; m < SM; m++) {
                for (var j = 0u; j < SN; j++) {
                    sacc[m * SN + j] = fma(a[m], bv[j], sacc[m * SN + j]);
                }
            }
        }
        workgroupBarrier(); // the next copy overwrites the tiles
    }
    // Thread (lid.x, lid.y) owns channels o_base + lid.y + m*TY and pixels p_base + lid.x + j*TX:
    // strided so that neighbouring threads touch neighbouring pixels (coalesced stores).
    for (var m = 0u; m < SM; m++) {
        let o = o_base + lid.y + m * TY;
        if o >= p.co { break; }
        for (var j = 0u; j < SN; j++) {
            let px = p_base + lid.x + j * TX;
            if px >= pixels { break; }
            let n = px / plane_out;
            let rest = px % plane_out;
            dst[(n * p.co + o) * plane_out + rest] = sacc[m * SN + j] + select(0.0, bias[o], p.has_bias != 0u);
        }
    }
}
