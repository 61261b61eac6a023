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
//                    keep(idx) is the hash of common/dropout_hash.wgsl of (seed, flat index of y).
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
// * register tiles (default; `*_forward` here, `*_backward_data` and `*_backward_weight`
//   in conv2d/tiled_backward.wgsl): no workgroup
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
// * workgroup tiles (`conv2d_forward_shared`, in conv2d/shared.wgsl): the classic GPU GEMM. A workgroup of TX*TY threads
//   computes a BM x BN block (BM = TY*SM output channels, BN = TX*SN output pixels), stepping
//   through K in slices of BK: the whole group copies a BM x BK slice of w and a BK x BN slice of
//   the virtual im2col matrix into workgroup memory, then each thread multiplies SM x SN outputs
//   out of it. Many threads share each global load, which is what a real GPU needs.

//
// This file: the forward's register tile (conv2d_pack_weights, conv2d_forward) and backward data
// at stride 1, which runs the same tile; the shared declarations are in conv2d/tiled_common.wgsl.
// #include conv2d/tiled_common.wgsl

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
