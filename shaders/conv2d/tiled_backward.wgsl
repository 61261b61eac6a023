// conv2d/tiled_backward.wgsl: the backward kernels of the register-tiled convolution, NCHW,
// weights OIHW (backward data at stride 1 is the forward's tile: conv2d/tiled.wgsl).
//   backward data  : dx[n,i,ih,iw] += sum_{o,kh,kw} w[o,i,kh,kw] * dy[n,o,oh,ow]
//                    over the (kh,kw) with ih+ph-kh = oh*SH and iw+pw-kw = ow*SW, 0 <= oh < OH, 0 <= ow < OW
//                    (gather form: one thread owns a tile of dx; dy is read as if dilated by the stride)
//   backward weight: dw[o,i,kh,kw] += sum_{n,oh,ow} dy[n,o,oh,ow] * x[n,i,oh*SH-ph+kh, ow*SW-pw+kw]
//                    db[o]         += sum_{n,oh,ow} dy[n,o,oh,ow]
//                    split-K: pass 1 writes one partial sum per chunk of dy rows into `part`,
//                    pass 2 adds the partials in chunk order (deterministic, no atomics).
//   epilogue backward: dz = dy * (y > 0) / (1 - p)   (y > 0 exactly where z > 0 and the pixel is kept)
// What it adds over conv2d/textbook.wgsl (chosen by the tuned kernel set on every adapter): tiles of
// TM input channels x 2 rows x 8 columns a thread (backward data), 8 output channels a thread over
// a chunk of dy rows (backward weight); the sizes come from the tuning. Bindings, Params and the
// pipeline constants: conv2d/tiled_common.wgsl.
// #include conv2d/tiled_common.wgsl

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
