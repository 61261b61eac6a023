// conv_transpose2d/tiled.wgsl: 2x2 transposed convolution with stride 2 (the U-Net's up-convolution).
// This file: the general kernels (any W) and the split-K sums; the quad kernels (W % 4 == 0) are
// in conv_transpose2d/tiled_quads.wgsl, the shared declarations in conv_transpose2d/tiled_common.wgsl.
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
// #include conv_transpose2d/tiled_common.wgsl

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
