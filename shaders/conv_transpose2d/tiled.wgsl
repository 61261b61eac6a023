// conv_transpose2d/tiled.wgsl: 2x2 transposed convolution with stride 2 (the U-Net's up-convolution).
//   x [N,I,H,W], w [I,O,2,2] (PyTorch layout), b [O], y [N,C,2H,2W] with C >= O: the result fills
//   channels 0..O of y (C > O when y is a concatenation buffer whose other channels belong to
//   someone else; dy is read the same way). ab = 2a + b indexes the tap.
//   forward        : y[n,o,2i+a,2j+b] = b[o] + sum_c x[n,c,i,j] w[c,o,a,b]
//   backward_data  : dx[n,c,i,j] += sum_{o,a,b} dy[n,o,2i+a,2j+b] w[c,o,a,b]
//                    (dx = ... instead of dx += ... where the pipeline constant ACCUMULATE is false)
//   backward_weight: dw[c,o,a,b] += sum_{n,i,j} x[n,c,i,j] dy[n,o,2i+a,2j+b];  db[o] += sum dy[n,o,..]
// The windows do not overlap, so each is a plain GEMM over the pixels (n,i,j):
//   forward : Y[(o,ab), px] = W^T[(o,ab), c] X[c, px]      (reduce over I)
//   data    : DX[c, px]     = W[c, (o,ab)] DY[(o,ab), px]   (reduce over 4*O)
//   weight  : DW[c, (o,ab)] = X[c, px] DY[(o,ab), px]^T     (reduce over N*H*W, split-K)
// The four taps of one (c,o) are adjacent in w, so w is read as vec4 (ab = x,y,z,w).
//
// group 0:  0 uniform Params (below)
//   1 read x [N,I,H,W]        2 read w [I,O,2,2] as vec4   3 read b [O] (forward, when has_bias)
//   4 read_write y as vec2    5 read dy as vec2            6 read_write dx [N,I,H,W]
//   7 read_write partial: split-K partial sums of dw ([slices, I*O*4]) and db ([slices, O] after them)
//   8 read_write dst: dw or db, accumulated into by the final fixed-order sum over slices
//   9 read x as vec4   10 read_write y as vec4   11 read dy as vec4   12 read_write dx as vec4
//   13 read_write partial as vec4 (the quad weight gradient's dw partial sums)
// Two families of kernels share the bindings: the `*_quads` kernels (bindings 9-13) when W % 4 == 0,
// as in every U-Net level, and general ones for any shape (bindings 1, 4-6).
//
// Why the tiling is what it is. On lavapipe (the CPU driver this is tuned on) an invocation is one
// SIMD lane and every load or store of a storage buffer is a loop over the lanes, one scalar access
// per lane and component, whether or not the address is the same for all lanes. Measured: a scalar
// load costs as much as ~9 vec4 FMAs, a vec4 load ~18; so the speed is set by how many FMAs each
// loaded vec4 feeds, and by loading vec4s rather than scalars. Barriers and workgroup memory are
// slower still, so every thread keeps a large block of outputs in registers, with no barriers.
// - Quads: with W % 4 == 0, the 4 pixels (i, 4q..4q+3) of x are one aligned vec4, and so are their
//   8 outputs (taps (a, 0), (a, 1) of each) in row 2i+a of y or dy: two vec4s a row. A mat4x4 holds
//   a quad's 16 outputs (columns: pixels, rows: taps) or, for dy, its 16 inputs.
//   forward: a thread owns 4 quads (16 pixels of a row) x 8 output channels. Per input channel it
//     loads 4 vec4 of x and 8 vec4 of w and does 128 vec4 FMAs.
//   data: a thread owns 4 quads x 16 input channels. Per output channel: 16 vec4 of dy, 16 of w,
//     256 vec4 FMAs (dx needs the 4 taps of dy per pixel, so its tile is wider in channels).
//   weight: a thread owns 16 input x 4 output channels (64 vec4 of dw taps) and a slice of rows of
//     the reduction; per quad: 16 vec4 of dy, 16 of x, 256 vec4 FMAs.
//   Accumulators are arrays of 4 mat4x4 indexed only by loops of exactly 4 trips (constant), so
//   the driver unrolls them and keeps the accumulators in registers; measured, arrays of 8
//   indexed by a loop of 8 go to memory and run 3-5x slower, hence several arrays of 4.
//   The channel block is the fastest-varying workgroup index, so the workgroups that share a tile
//   of x (or dy) run one after another, while it is still in cache.
// - General kernels (any W): PX pixels (WG apart) x 4 channels a thread, scalar x, vec2 y / dy.
// Lavapipe also stops any loop after 65535 iterations of an invocation (nested loops add up): the
// Rust side cuts the weight kernels' slices well below that.
override WG: u32 = 64u;
// The backward data's dx: added into (dx += ..., the default), or overwritten (dx = ...) when the
// tape hands over a fresh, unzeroed gradient buffer (every element is written).
override ACCUMULATE: bool = true;
const PX: u32 = 4u; // pixels per thread (general forward, data)
const TO: u32 = 4u; // output channels per thread (general forward, weight)
const TC: u32 = 4u; // input channels per thread (general data, weight)

struct Params {
    n: u32, ci: u32, co: u32, h: u32, w: u32,
    // Channels of y / dy: O, or more when they are a concatenation buffer (channel stride).
    yc: u32,
    has_bias: u32,
    // Split-K of the weight gradient: `slices` partial sums. Quads: slice s reduces rows (n, i)
    // s * rows_per_slice .. (s + 1) * rows_per_slice. General: the pixel index k of a slice
    // advances by `slices` = step_n images + step_i rows + step_j columns each iteration.
    slices: u32, rows_per_slice: u32, step_n: u32, step_i: u32, step_j: u32,
    // sum_partials: elements of dst, and where the partial sums start in `partial`.
    len: u32, base: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read> w: array<vec4<f32>>;
@group(0) @binding(3) var<storage, read> bias: array<f32>;
@group(0) @binding(4) var<storage, read_write> y: array<vec2<f32>>;
@group(0) @binding(5) var<storage, read> dy: array<vec2<f32>>;
@group(0) @binding(6) var<storage, read_write> dx: array<f32>;
@group(0) @binding(7) var<storage, read_write> partial: array<f32>;
@group(0) @binding(8) var<storage, read_write> dst: array<f32>;
@group(0) @binding(9) var<storage, read> x4: array<vec4<f32>>;
@group(0) @binding(10) var<storage, read_write> y4: array<vec4<f32>>;
@group(0) @binding(11) var<storage, read> dy4: array<vec4<f32>>;
@group(0) @binding(12) var<storage, read_write> dx4: array<vec4<f32>>;
@group(0) @binding(13) var<storage, read_write> partial4: array<vec4<f32>>; // binding 7's buffer, as vec4s

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

// ---------------------------------------------------------------------------------------------
// General kernels (any W). y and dy are read and written as vec2 (one vec2 per input column j:
// row 2i+a of plane (n,o) is vec2 index ((n*C + o)*2H + 2i + a)*W + j).

// groups: (ceil(H*W / (WG*PX)), ceil(O / TO), N)
@compute @workgroup_size(WG)
fn conv_transpose2d_forward(@builtin(workgroup_id) group: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let hw = p.h * p.w;
    let n = group.z;
    let o0 = group.y * TO;
    // Overhanging pixels and channels compute on clamped (valid) indices and are not stored,
    // which keeps the inner loop free of branches.
    var px: array<u32, PX>;
    var x_at: array<u32, PX>;
    for (var t = 0u; t < PX; t++) {
        px[t] = group.x * WG * PX + t * WG + lid.x;
        x_at[t] = n * p.ci * hw + min(px[t], hw - 1u);
    }
    var w_at: array<u32, TO>;
    var acc: array<vec4<f32>, PX * TO>; // acc[t * TO + oo] holds the 4 taps
    for (var oo = 0u; oo < TO; oo++) {
        let o = min(o0 + oo, p.co - 1u);
        w_at[oo] = o;
        let b0 = select(0.0, bias[o], p.has_bias != 0u);
        for (var t = 0u; t < PX; t++) { acc[t * TO + oo] = vec4(b0); }
    }
    for (var c = 0u; c < p.ci; c++) {
        var xv: array<f32, PX>;
        for (var t = 0u; t < PX; t++) { xv[t] = x[x_at[t] + c * hw]; }
        for (var oo = 0u; oo < TO; oo++) {
            let wv = w[c * p.co + w_at[oo]];
            for (var t = 0u; t < PX; t++) { acc[t * TO + oo] = fma(vec4(xv[t]), wv, acc[t * TO + oo]); }
        }
    }
    for (var t = 0u; t < PX; t++) {
        if px[t] >= hw { continue; }
        let i = px[t] / p.w;
        let j = px[t] % p.w;
        for (var oo = 0u; oo < TO; oo++) {
            let o = o0 + oo;
            if o >= p.co { continue; }
            let at = ((n * p.yc + o) * 2u * p.h + 2u * i) * p.w + j;
            let v = acc[t * TO + oo];
            y[at] = v.xy; // row 2i:   taps (0,0), (0,1)
            y[at + p.w] = v.zw; // row 2i+1: taps (1,0), (1,1)
        }
    }
}

// groups: (ceil(H*W / (WG*PX)), ceil(I / TC), N)
@compute @workgroup_size(WG)
fn conv_transpose2d_backward_data(@builtin(workgroup_id) group: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let hw = p.h * p.w;
    let n = group.z;
    let c0 = group.y * TC;
    var px: array<u32, PX>;
    var dy_at: array<u32, PX>; // vec2 index of (n, o = 0, row 2i, column pair j)
    for (var t = 0u; t < PX; t++) {
        px[t] = group.x * WG * PX + t * WG + lid.x;
        let q = min(px[t], hw - 1u);
        dy_at[t] = n * p.yc * 2u * hw + 2u * (q / p.w) * p.w + q % p.w;
    }
    var w_at: array<u32, TC>;
    for (var cc = 0u; cc < TC; cc++) { w_at[cc] = min(c0 + cc, p.ci - 1u) * p.co; }
    // forward: y[n,o,2i+a,2j+b] += x[n,c,i,j] w[c,o,a,b]  =>  dx[n,c,i,j] += sum_{o,ab} dy w
    var acc: array<vec4<f32>, PX * TC>; // summed over the 4 taps at the end
    for (var o = 0u; o < p.co; o++) {
        var d: array<vec4<f32>, PX>;
        for (var t = 0u; t < PX; t++) {
            let at = dy_at[t] + o * 2u * hw;
            d[t] = vec4(dy[at], dy[at + p.w]);
        }
        for (var cc = 0u; cc < TC; cc++) {
            let wv = w[w_at[cc] + o];
            for (var t = 0u; t < PX; t++) { acc[t * TC + cc] = fma(wv, d[t], acc[t * TC + cc]); }
        }
    }
    for (var t = 0u; t < PX; t++) {
        if px[t] >= hw { continue; }
        for (var cc = 0u; cc < TC; cc++) {
            let c = c0 + cc;
            if c >= p.ci { continue; }
            let v = acc[t * TC + cc];
            let at = (n * p.ci + c) * hw + px[t];
            if ACCUMULATE {
                dx[at] += (v.x + v.y) + (v.z + v.w);
            } else {
                dx[at] = (v.x + v.y) + (v.z + v.w);
            }
        }
    }
}

// The pixel (n, i, j) a slice starts at, and its advance by p.slices pixels (with carries).
struct Pixel { n: u32, i: u32, j: u32 }

fn first_pixel(k: u32) -> Pixel {
    let hw = p.h * p.w;
    return Pixel(k / hw, (k % hw) / p.w, k % p.w);
}

fn next_pixel(q: Pixel) -> Pixel {
    var r = Pixel(q.n + p.step_n, q.i + p.step_i, q.j + p.step_j);
    if r.j >= p.w { r.j -= p.w; r.i += 1u; }
    if r.i >= p.h { r.i -= p.h; r.n += 1u; }
    return r;
}

// Thread g owns a TC x TO x 4 block of dw and one slice s of the reduction: the pixels
// k = s, s + S, s + 2S, ... (S = slices). Consecutive threads are consecutive slices, so their
// loads are contiguous. groups: groups_1d(slices * ceil(I/TC) * ceil(O/TO));
// thread g = s + slices * (tc + tiles_c * to).
@compute @workgroup_size(WG)
fn conv_transpose2d_backward_weight_partial(@builtin(global_invocation_id) id: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>) {
    let g = id.x + id.y * groups.x * WG;
    let tiles_c = (p.ci + TC - 1u) / TC;
    let tiles_o = (p.co + TO - 1u) / TO;
    if g >= p.slices * tiles_c * tiles_o { return; }
    let s = g % p.slices;
    let tile = g / p.slices;
    let c0 = (tile % tiles_c) * TC;
    let o0 = (tile / tiles_c) * TO;
    let hw = p.h * p.w;
    // Offsets of the block's channels (clamped: overhanging ones are computed, never stored).
    var x_ch: array<u32, TC>;
    for (var cc = 0u; cc < TC; cc++) { x_ch[cc] = min(c0 + cc, p.ci - 1u) * hw; }
    var dy_ch: array<u32, TO>;
    for (var oo = 0u; oo < TO; oo++) { dy_ch[oo] = min(o0 + oo, p.co - 1u) * 2u * hw; }

    // forward: y[n,o,2i+a,2j+b] += x[n,c,i,j] w[c,o,a,b]  =>  dw[c,o,a,b] += sum_{n,i,j} x dy
    var acc: array<vec4<f32>, TC * TO>;
    let total = p.n * hw;
    var q = first_pixel(s);
    for (var k = s; k < total; k += p.slices) {
        let x_at = q.n * p.ci * hw + q.i * p.w + q.j;
        let dy_at = q.n * p.yc * 2u * hw + 2u * q.i * p.w + q.j;
        var xv: array<f32, TC>;
        for (var cc = 0u; cc < TC; cc++) { xv[cc] = x[x_at + x_ch[cc]]; }
        for (var oo = 0u; oo < TO; oo++) {
            let d = vec4(dy[dy_at + dy_ch[oo]], dy[dy_at + dy_ch[oo] + p.w]);
            for (var cc = 0u; cc < TC; cc++) { acc[cc * TO + oo] = fma(vec4(xv[cc]), d, acc[cc * TO + oo]); }
        }
        q = next_pixel(q);
    }
    let block = p.ci * p.co * 4u;
    for (var cc = 0u; cc < TC; cc++) {
        let c = c0 + cc;
        if c >= p.ci { break; }
        for (var oo = 0u; oo < TO; oo++) {
            let o = o0 + oo;
            if o >= p.co { break; }
            let at = s * block + (c * p.co + o) * 4u;
            let v = acc[cc * TO + oo];
            partial[at] = v.x;
            partial[at + 1u] = v.y;
            partial[at + 2u] = v.z;
            partial[at + 3u] = v.w;
        }
    }
}

// Bias gradient alone (any W). groups: groups_1d(slices * O); thread g = s + slices * o.
@compute @workgroup_size(WG)
fn conv_transpose2d_backward_bias_partial(@builtin(global_invocation_id) id: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>) {
    let g = id.x + id.y * groups.x * WG;
    if g >= p.slices * p.co { return; }
    let s = g % p.slices;
    let o = g / p.slices;
    let hw = p.h * p.w;
    // forward: y[n,o,..] = b[o] + ...  =>  db[o] += sum over n and all 4HW outputs of dy[n,o,..]
    var acc = vec4(0.0);
    let total = p.n * hw;
    var q = first_pixel(s);
    for (var k = s; k < total; k += p.slices) {
        let at = (q.n * p.yc + o) * 2u * hw + 2u * q.i * p.w + q.j;
        acc += vec4(dy[at], dy[at + p.w]);
        q = next_pixel(q);
    }
    partial[s * p.co + o] = (acc.x + acc.y) + (acc.z + acc.w);
}

// Pass 2 of both reductions: dst[e] += sum_{s < slices} partial[base + s * len + e], in slice
// order (deterministic, no float atomics). groups: groups_1d(len).
@compute @workgroup_size(WG)
fn conv_transpose2d_sum_partials(@builtin(global_invocation_id) id: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>) {
    let e = id.x + id.y * groups.x * WG;
    if e >= p.len { return; }
    var sum = 0.0;
    for (var s = 0u; s < p.slices; s++) { sum += partial[p.base + s * p.len + e]; }
    dst[e] += sum;
}
