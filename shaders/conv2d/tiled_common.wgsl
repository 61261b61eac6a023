// conv2d/tiled_common.wgsl: what the tiled convolution kernels share (conv2d/tiled.wgsl,
// conv2d/tiled_backward.wgsl, conv2d/shared.wgsl include it): the pipeline constants of the
// register tiling, the kernel geometry and the epilogue, the uniform Params, the bindings, and
// the helpers that read padded rows, store tiles and apply the ReLU / dropout epilogue.
// The math of each kernel is in the header of the file that holds it.
// #include common/dropout_hash.wgsl

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
        // bits(i) of common/dropout_hash.wgsl, on four indices at once
        let bits = hash_mix4(hash_mix4((vec4<u32>(idx) + vec4<u32>(0u, 1u, 2u, 3u)) ^ vec4<u32>(keys.x)) + vec4<u32>(keys.y));
        v = select(vec4<f32>(0.0), v * p.drop_scale, bits >= vec4<u32>(p.drop_threshold));
    }
    return v;
}

// The mask's two keys, from the seed (the same for every element: computed once a thread).
fn dropout_keys() -> vec2<u32> {
    return hash_keys(p.drop_seed_lo, p.drop_seed_hi);
}

// x[plane + r*W + c .. +4] as one vec4 (c a multiple of 4, W too), or 0 outside the image.
fn row4(plane: u32, r: i32, c: u32) -> vec4<f32> {
    let inside = r >= 0 && u32(r) < p.h && c < p.w;
    let idx = select(0u, (plane + u32(r) * p.w + c) / 4u, inside);
    return select(vec4<f32>(0.0), src_v4[idx], inside);
}
