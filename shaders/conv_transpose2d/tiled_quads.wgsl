// conv_transpose2d/tiled_quads.wgsl: the quad kernels of the 2x2, stride-2 transposed convolution,
// for W % 4 == 0 (every U-Net level): forward, backward data and the first pass of backward weight.
//   forward        : y[n,o,2i+a,2j+b] = b[o] + sum_c x[n,c,i,j] w[c,o,a,b]
//   backward_data  : dx[n,c,i,j] += sum_{o,a,b} dy[n,o,2i+a,2j+b] w[c,o,a,b]
//   backward_weight: dw[c,o,a,b] += sum_{n,i,j} x[n,c,i,j] dy[n,o,2i+a,2j+b]  (split-K partial sums)
// What they add over conv_transpose2d/textbook.wgsl (chosen by the tuned kernel set): the 4 pixels
// of a quad are one vec4 and its 16 outputs one mat4x4, and a thread owns a block of quads and
// channels in registers (conv_transpose2d/tiled.wgsl's header says why, and what was measured).
// Bindings, Params and the pipeline constants: conv_transpose2d/tiled_common.wgsl.
// #include conv_transpose2d/tiled_common.wgsl

// ---------------------------------------------------------------------------------------------
// Quad kernels (W % 4 == 0). Vec4 indices: x quad (n, c, i, q) is ((n*I + c)*H + i)*W/4 + q;
// row 2i+a of y / dy plane (n, o) starts at ((n*C + o)*2H + 2i + a)*W/2, and quad q's 8 outputs
// in it are the vec4s 2q and 2q+1.

// acc + the outer product of w (4 taps, rows) and x (4 pixels, columns): column k += x[k] * w.
fn outer_fma(wv: vec4<f32>, xv: vec4<f32>, acc: mat4x4<f32>) -> mat4x4<f32> {
    return mat4x4<f32>(
        fma(vec4(xv.x), wv, acc[0]),
        fma(vec4(xv.y), wv, acc[1]),
        fma(vec4(xv.z), wv, acc[2]),
        fma(vec4(xv.w), wv, acc[3]),
    );
}

// acc + sum_k m[k] * v[k]. With m's columns the taps of 4 pixels and v their x: the taps weighted
// by x (weight gradient). With m's columns the 4 pixels of each tap and v the taps of w: the dot
// of w with each pixel's taps (data gradient).
fn combine_fma(m: mat4x4<f32>, v: vec4<f32>, acc: vec4<f32>) -> vec4<f32> {
    return fma(m[3], vec4(v.w), fma(m[2], vec4(v.z), fma(m[1], vec4(v.y), fma(m[0], vec4(v.x), acc))));
}

// combine_fma for four matrices at once: column k of the result is combine_fma(mk, v, acc[k]).
fn combine4_fma(m0: mat4x4<f32>, m1: mat4x4<f32>, m2: mat4x4<f32>, m3: mat4x4<f32>, v: vec4<f32>, acc: mat4x4<f32>) -> mat4x4<f32> {
    return mat4x4<f32>(combine_fma(m0, v, acc[0]), combine_fma(m1, v, acc[1]), combine_fma(m2, v, acc[2]), combine_fma(m3, v, acc[3]));
}

// The 16 dy values of one quad, from the vec4 index `at` of its first pair in row 2i: column k
// holds the taps (00, 01, 10, 11) of pixel k.
fn dy_quad(at: u32) -> mat4x4<f32> {
    let half = p.w / 2u; // vec4s in a row of dy
    let r0a = dy4[at];
    let r0b = dy4[at + 1u];
    let r1a = dy4[at + half];
    let r1b = dy4[at + half + 1u];
    return mat4x4<f32>(vec4(r0a.xy, r1a.xy), vec4(r0a.zw, r1a.zw), vec4(r0b.xy, r1b.xy), vec4(r0b.zw, r1b.zw));
}

// The row (n, i) and first quad of thread t's tile of 4 quads: rows * tiles threads in all, the
// ones past the end (t >= rows * tiles: `live` false) compute a copy of the last tile and store
// nothing, so that every lane runs the same loop.
struct Tile { n: u32, i: u32, q0: u32, live: bool }

fn quad_tile(t: u32) -> Tile {
    let tiles = (p.w / 4u + 3u) / 4u; // tiles a row
    let count = p.n * p.h * tiles;
    let tc = min(t, count - 1u);
    let row = tc / tiles;
    return Tile(row / p.h, row % p.h, (tc % tiles) * 4u, t < count);
}

// y quad (n, o, i, q) = acc (columns: pixels; rows: taps), when it exists.
fn store_y_quad(tile: Tile, o: u32, q: u32, acc: mat4x4<f32>) {
    if !tile.live || o >= p.co || q >= p.w / 4u { return; }
    let half = p.w / 2u;
    let at = ((tile.n * p.yc + o) * 2u * p.h + 2u * tile.i) * half + 2u * q;
    y4[at] = vec4(acc[0].xy, acc[1].xy); // row 2i:   taps (0,0), (0,1) of pixels 0, 1
    y4[at + 1u] = vec4(acc[2].xy, acc[3].xy);
    y4[at + half] = vec4(acc[0].zw, acc[1].zw); // row 2i+1: taps (1,0), (1,1)
    y4[at + half + 1u] = vec4(acc[2].zw, acc[3].zw);
}

// Forward. groups: (ceil(O / 8), ceil(N*H*tiles / WG), 1); a thread: 4 quads x 8 output channels.
@compute @workgroup_size(WG)
fn conv_transpose2d_forward_quads(@builtin(workgroup_id) group: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let tile = quad_tile(group.y * WG + lid.x);
    let o0 = group.x * 8u;
    let quads = p.w / 4u;
    let plane = p.h * quads; // a channel of x, in vec4s
    // Quads past the row's end read its last quad (never stored), keeping the loop branch-free.
    let row = (tile.n * p.ci * p.h + tile.i) * quads;
    let xq0 = row + min(tile.q0, quads - 1u);
    let xq1 = row + min(tile.q0 + 1u, quads - 1u);
    let xq2 = row + min(tile.q0 + 2u, quads - 1u);
    let xq3 = row + min(tile.q0 + 3u, quads - 1u);
    // a<k>[m]: channel o0 + m, quad q0 + k; b<k>[m]: channel o0 + 4 + m. Channels past O
    // compute on channel O-1 and are not stored.
    var a0: array<mat4x4<f32>, 4>;
    var a1: array<mat4x4<f32>, 4>;
    var a2: array<mat4x4<f32>, 4>;
    var a3: array<mat4x4<f32>, 4>;
    var b0: array<mat4x4<f32>, 4>;
    var b1: array<mat4x4<f32>, 4>;
    var b2: array<mat4x4<f32>, 4>;
    var b3: array<mat4x4<f32>, 4>;
    let last_o = p.co - 1u;
    let has_bias = p.has_bias != 0u;
    for (var m = 0u; m < 4u; m++) {
        let ba = vec4(select(0.0, bias[min(o0 + m, last_o)], has_bias));
        let bb = vec4(select(0.0, bias[min(o0 + 4u + m, last_o)], has_bias));
        a0[m] = mat4x4<f32>(ba, ba, ba, ba);
        a1[m] = a0[m];
        a2[m] = a0[m];
        a3[m] = a0[m];
        b0[m] = mat4x4<f32>(bb, bb, bb, bb);
        b1[m] = b0[m];
        b2[m] = b0[m];
        b3[m] = b0[m];
    }
    for (var c = 0u; c < p.ci; c++) {
        let xc = c * plane;
        let x0 = x4[xq0 + xc];
        let x1 = x4[xq1 + xc];
        let x2 = x4[xq2 + xc];
        let x3 = x4[xq3 + xc];
        let wc = c * p.co;
        for (var m = 0u; m < 4u; m++) {
            let wv = w[wc + min(o0 + m, last_o)];
            a0[m] = outer_fma(wv, x0, a0[m]);
            a1[m] = outer_fma(wv, x1, a1[m]);
            a2[m] = outer_fma(wv, x2, a2[m]);
            a3[m] = outer_fma(wv, x3, a3[m]);
        }
        for (var m = 0u; m < 4u; m++) {
            let wv = w[wc + min(o0 + 4u + m, last_o)];
            b0[m] = outer_fma(wv, x0, b0[m]);
            b1[m] = outer_fma(wv, x1, b1[m]);
            b2[m] = outer_fma(wv, x2, b2[m]);
            b3[m] = outer_fma(wv, x3, b3[m]);
        }
    }
    for (var m = 0u; m < 4u; m++) {
        store_y_quad(tile, o0 + m, tile.q0, a0[m]);
        store_y_quad(tile, o0 + m, tile.q0 + 1u, a1[m]);
        store_y_quad(tile, o0 + m, tile.q0 + 2u, a2[m]);
        store_y_quad(tile, o0 + m, tile.q0 + 3u, a3[m]);
    }
    for (var m = 0u; m < 4u; m++) {
        store_y_quad(tile, o0 + 4u + m, tile.q0, b0[m]);
        store_y_quad(tile, o0 + 4u + m, tile.q0 + 1u, b1[m]);
        store_y_quad(tile, o0 + 4u + m, tile.q0 + 2u, b2[m]);
        store_y_quad(tile, o0 + 4u + m, tile.q0 + 3u, b3[m]);
    }
}

// dx quads (n, c, i, q0 + k) += column k of acc (= without ACCUMULATE), for those that exist.
fn store_dx_quads(tile: Tile, c: u32, acc: mat4x4<f32>) {
    if !tile.live || c >= p.ci { return; }
    let quads = p.w / 4u;
    let at = ((tile.n * p.ci + c) * p.h + tile.i) * quads + tile.q0;
    for (var k = 0u; k < 4u; k++) {
        if tile.q0 + k >= quads { continue; }
        if ACCUMULATE {
            dx4[at + k] += acc[k];
        } else {
            dx4[at + k] = acc[k];
        }
    }
}

// Backward data. groups: (ceil(I / 16), ceil(N*H*tiles / WG), 1); a thread: 4 quads x 16 input
// channels.
@compute @workgroup_size(WG)
fn conv_transpose2d_backward_data_quads(@builtin(workgroup_id) group: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let tile = quad_tile(group.y * WG + lid.x);
    let c0 = group.x * 16u;
    let quads = p.w / 4u;
    let plane = p.h * p.w; // a channel of dy (2H x 2W), in vec4s
    let row = (tile.n * p.yc * 2u * p.h + 2u * tile.i) * (p.w / 2u);
    let dq0 = row + 2u * min(tile.q0, quads - 1u);
    let dq1 = row + 2u * min(tile.q0 + 1u, quads - 1u);
    let dq2 = row + 2u * min(tile.q0 + 2u, quads - 1u);
    let dq3 = row + 2u * min(tile.q0 + 3u, quads - 1u);
    // a<k>[m]: input channel c0 + 4k + m; column q: the 4 pixels of quad q0 + q.
    var a0: array<mat4x4<f32>, 4>;
    var a1: array<mat4x4<f32>, 4>;
    var a2: array<mat4x4<f32>, 4>;
    var a3: array<mat4x4<f32>, 4>;
    let last_c = p.ci - 1u;
    // forward: y[n,o,2i+a,2j+b] += x[n,c,i,j] w[c,o,a,b]  =>  dx[n,c,i,j] += sum_{o,ab} dy w
    for (var o = 0u; o < p.co; o++) {
        // Transposed: column ab holds tap ab of the quad's 4 pixels.
        let t0 = transpose(dy_quad(dq0 + o * plane));
        let t1 = transpose(dy_quad(dq1 + o * plane));
        let t2 = transpose(dy_quad(dq2 + o * plane));
        let t3 = transpose(dy_quad(dq3 + o * plane));
        for (var m = 0u; m < 4u; m++) {
            a0[m] = combine4_fma(t0, t1, t2, t3, w[min(c0 + m, last_c) * p.co + o], a0[m]);
        }
        for (var m = 0u; m < 4u; m++) {
            a1[m] = combine4_fma(t0, t1, t2, t3, w[min(c0 + 4u + m, last_c) * p.co + o], a1[m]);
        }
        for (var m = 0u; m < 4u; m++) {
            a2[m] = combine4_fma(t0, t1, t2, t3, w[min(c0 + 8u + m, last_c) * p.co + o], a2[m]);
        }
        for (var m = 0u; m < 4u; m++) {
            a3[m] = combine4_fma(t0, t1, t2, t3, w[min(c0 + 12u + m, last_c) * p.co + o], a3[m]);
        }
    }
    for (var m = 0u; m < 4u; m++) { store_dx_quads(tile, c0 + m, a0[m]); }
    for (var m = 0u; m < 4u; m++) { store_dx_quads(tile, c0 + 4u + m, a1[m]); }
    for (var m = 0u; m < 4u; m++) { store_dx_quads(tile, c0 + 8u + m, a2[m]); }
    for (var m = 0u; m < 4u; m++) { store_dx_quads(tile, c0 + 12u + m, a3[m]); }
}

// partial[base + (c*O + o)*4 + ab] = tap ab of column oo of acc (output channel o = o0 + oo).
// The 4 taps are one aligned vec4 (base is a multiple of len = I*O*4): one vector store rather
// than 4 scalar ones (on lavapipe each store is a loop over the SIMD lanes).
fn store_dw_partial(base: u32, c: u32, o0: u32, acc: mat4x4<f32>, live: bool) {
    if !live || c >= p.ci { return; }
    for (var oo = 0u; oo < 4u; oo++) {
        if o0 + oo < p.co {
            partial4[(base + (c * p.co + o0 + oo) * 4u) / 4u] = acc[oo];
        }
    }
}

// Backward weight, pass 1. groups: groups_1d(slices * blocks); thread g = block + blocks * slice,
// block = (16 input channels) x (4 output channels). Thread g sums its block over the rows of its
// slice and writes the partial sum; the threads of the first input block also sum dy for db.
@compute @workgroup_size(WG)
fn conv_transpose2d_backward_weight_quads(@builtin(global_invocation_id) id: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>) {
    let tiles_c = (p.ci + 15u) / 16u;
    let blocks = tiles_c * ((p.co + 3u) / 4u);
    let count = blocks * p.slices;
    let g_raw = id.x + id.y * groups.x * WG;
    let live = g_raw < count;
    let g = min(g_raw, count - 1u);
    let block = g % blocks;
    let slice = g / blocks;
    let c0 = (block % tiles_c) * 16u;
    let o0 = (block / tiles_c) * 4u;
    let quads = p.w / 4u;
    let r_begin = slice * p.rows_per_slice;
    let r_end = min(r_begin + p.rows_per_slice, p.n * p.h);
    // Offsets of the block's channels; those past I or O repeat the last one (never stored).
    let last_o = p.co - 1u;
    let last_c = p.ci - 1u;
    let dy_plane = p.h * p.w;
    let od0 = min(o0, last_o) * dy_plane;
    let od1 = min(o0 + 1u, last_o) * dy_plane;
    let od2 = min(o0 + 2u, last_o) * dy_plane;
    let od3 = min(o0 + 3u, last_o) * dy_plane;
    let x_plane = p.h * quads;
    // a<k>[m]: input channel c0 + 4k + m; column oo: the 4 taps of output channel o0 + oo.
    var a0: array<mat4x4<f32>, 4>;
    var a1: array<mat4x4<f32>, 4>;
    var a2: array<mat4x4<f32>, 4>;
    var a3: array<mat4x4<f32>, 4>;
    var dy_sum = mat4x4<f32>(); // column oo: the taps of output channel o0 + oo, summed (db)
    // forward: y[n,o,2i+a,2j+b] += x[n,c,i,j] w[c,o,a,b]  =>  dw[c,o,a,b] += sum_{n,i,j} x dy
    for (var r = r_begin; r < r_end; r++) {
        let n = r / p.h;
        let i = r % p.h;
        let dy_row = (n * p.yc * 2u * p.h + 2u * i) * (p.w / 2u);
        let x_row = (n * p.ci * p.h + i) * quads;
        for (var q = 0u; q < quads; q++) {
            let d0 = dy_quad(dy_row + od0 + 2u * q);
            let d1 = dy_quad(dy_row + od1 + 2u * q);
            let d2 = dy_quad(dy_row + od2 + 2u * q);
            let d3 = dy_quad(dy_row + od3 + 2u * q);
            dy_sum += mat4x4<f32>(d0 * vec4(1.0), d1 * vec4(1.0), d2 * vec4(1.0), d3 * vec4(1.0));
            let xq = x_row + q;
            for (var m = 0u; m < 4u; m++) {
                a0[m] = combine4_fma(d0, d1, d2, d3, x4[xq + min(c0 + m, last_c) * x_plane], a0[m]);
            }
            for (var m = 0u; m < 4u; m++) {
                a1[m] = combine4_fma(d0, d1, d2, d3, x4[xq + min(c0 + 4u + m, last_c) * x_plane], a1[m]);
            }
            for (var m = 0u; m < 4u; m++) {
                a2[m] = combine4_fma(d0, d1, d2, d3, x4[xq + min(c0 + 8u + m, last_c) * x_plane], a2[m]);
            }
            for (var m = 0u; m < 4u; m++) {
                a3[m] = combine4_fma(d0, d1, d2, d3, x4[xq + min(c0 + 12u + m, last_c) * x_plane], a3[m]);
            }
        }
    }
    let base = slice * p.len;
    for (var m = 0u; m < 4u; m++) { store_dw_partial(base, c0 + m, o0, a0[m], live); }
    for (var m = 0u; m < 4u; m++) { store_dw_partial(base, c0 + 4u + m, o0, a1[m], live); }
    for (var m = 0u; m < 4u; m++) { store_dw_partial(base, c0 + 8u + m, o0, a2[m], live); }
    for (var m = 0u; m < 4u; m++) { store_dw_partial(base, c0 + 12u + m, o0, a3[m], live); }
    // forward: y[n,o,..] = b[o] + ...  =>  db[o] += sum over n and all 4HW outputs of dy[n,o,..]
    if live && c0 == 0u {
        let at = p.slices * p.len + slice * p.co + o0;
        for (var oo = 0u; oo < 4u; oo++) {
            if o0 + oo < p.co { partial[at + oo] = dot(dy_sum[oo], vec4(1.0)); }
        }
    }
}
