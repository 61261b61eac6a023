// upsample.wgsl: 2x upsampling of an NCHW tensor, nearest or bilinear (align_corners=False).
//   x [N,C,H,W] -> y [N,C,2H,2W]; both modes are separable, so the math is given per axis.
//   nearest : y[2r+a] = x[r]                                         (a in {0,1})
//   bilinear: source coordinate src(Y) = max((Y + 0.5)/2 - 0.5, 0) (PyTorch, clamped at 0), read
//             at floor(src) and the next row, clamped to H-1. For Y = 2r and 2r+1 that is
//               y[2r]   = 0.75 x[r] + 0.25 x[up]   up = max(r, 1) - 1   (r = 0: src = 0, so x[0])
//               y[2r+1] = 0.75 x[r] + 0.25 x[dn]   dn = min(r + 1, H - 1)
//   backward (gather, one thread per dx element, no atomics):
//   nearest : dx[r] += dy[2r] + dy[2r+1]
//   bilinear: x[r] is read with 0.75 by Y = 2r, 2r+1; with 0.25 by Y = 2r+2 (as its `up`) when
//             r < H-1 and by Y = 2r-1 (as its `dn`) when r > 0. At the borders the clamped reads
//             land on r itself: Y = 0 reads x[0] as `up`, Y = 2H-1 reads x[H-1] as `dn`. So
//               dx[r] += 0.25 dy[max(2r, 1) - 1] + 0.75 dy[2r] + 0.75 dy[2r+1] + 0.25 dy[min(2r+2, 2H-1)]
// group 0:  0 uniform Params {n = N*C*H*W, h, w}   1 read x | dy   2 read_write y | dx
// One thread per input element (it writes the 2x2 block it owns, or gathers its dx): 256 threads
// a group and a 1-D dispatch folded into x and y (index id.x + id.y * groups.x * WG), as relu.
// Full groups matter on lavapipe, where a row-shaped group of 64 wasted half its lanes at 16x16.
override WG: u32 = 256u;

struct Params { n: u32, h: u32, w: u32 }

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> src: array<f32>;
@group(0) @binding(2) var<storage, read_write> dst: array<f32>;

// (plane, r, s) of input element i, and the flat index of output (2r, 2s) in a [.., 2h, 2w] tensor.
struct Pos { r: u32, s: u32, plane: u32, top_left: u32 }

fn position(i: u32) -> Pos {
    let s = i % p.w;
    let t = i / p.w;
    let r = t % p.h;
    let plane = t / p.h;
    return Pos(r, s, plane, ((plane * 2u * p.h + 2u * r) * 2u * p.w) + 2u * s);
}

@compute @workgroup_size(WG)
fn upsample_nearest_forward(@builtin(global_invocation_id) id: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>) {
    let i = id.x + id.y * groups.x * WG;
    if i >= p.n { return; } // the last group overhangs
    let o = position(i).top_left;
    let ow = 2u * p.w;
    let v = src[i];
    dst[o] = v;
    dst[o + 1u] = v;
    dst[o + ow] = v;
    dst[o + ow + 1u] = v;
}

// src = dy [N,C,2H,2W], dst = dx (accumulated into).
@compute @workgroup_size(WG)
fn upsample_nearest_backward(@builtin(global_invocation_id) id: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>) {
    let i = id.x + id.y * groups.x * WG;
    if i >= p.n { return; }
    let o = position(i).top_left;
    let ow = 2u * p.w;
    // forward: y[2r+a, 2s+b] = x[r, s]  =>  dx[r, s] += sum of the 2x2 block of dy
    dst[i] += (src[o] + src[o + 1u]) + (src[o + ow] + src[o + ow + 1u]);
}

@compute @workgroup_size(WG)
fn upsample_bilinear_forward(@builtin(global_invocation_id) id: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>) {
    let i = id.x + id.y * groups.x * WG;
    if i >= p.n { return; }
    let q = position(i);
    let ow = 2u * p.w;
    // Neighbour offsets, clamped at the borders as in the header (0 where the neighbour is r itself).
    let up = select(p.w, 0u, q.r == 0u);
    let dn = select(p.w, 0u, q.r + 1u == p.h);
    let left = select(1u, 0u, q.s == 0u);
    let right = select(1u, 0u, q.s + 1u == p.w);
    // Interpolate along the row first, in the rows above, at and below r.
    var lo: array<vec2<f32>, 3>; // (column 2s, column 2s+1) of rows up, r, dn
    let rows = array<u32, 3>(i - up, i, i + dn);
    for (var k = 0u; k < 3u; k++) {
        let c = src[rows[k]];
        lo[k] = vec2(0.75 * c + 0.25 * src[rows[k] - left], 0.75 * c + 0.25 * src[rows[k] + right]);
    }
    let top = 0.75 * lo[1] + 0.25 * lo[0];
    let bottom = 0.75 * lo[1] + 0.25 * lo[2];
    let o = q.top_left;
    dst[o] = top.x;
    dst[o + 1u] = top.y;
    dst[o + ow] = bottom.x;
    dst[o + ow + 1u] = bottom.y;
}

// src = dy [N,C,2H,2W], dst = dx (accumulated into).
@compute @workgroup_size(WG)
fn upsample_bilinear_backward(@builtin(global_invocation_id) id: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>) {
    let i = id.x + id.y * groups.x * WG;
    if i >= p.n { return; }
    let q = position(i);
    let ow = 2u * p.w;
    // forward: y[2r] = 0.75 x[r] + 0.25 x[up], y[2r+1] = 0.75 x[r] + 0.25 x[dn] (per axis)
    //   =>  dx[r] += 0.25 dy[max(2r,1)-1] + 0.75 dy[2r] + 0.75 dy[2r+1] + 0.25 dy[min(2r+2,2H-1)]
    // Offsets of those four rows and columns from (2r, 2s), in elements of dy:
    let rows = array<i32, 4>(select(-i32(ow), 0, q.r == 0u), 0, i32(ow), select(2 * i32(ow), i32(ow), q.r + 1u == p.h));
    let cols = array<i32, 4>(select(-1, 0, q.s == 0u), 0, 1, select(2, 1, q.s + 1u == p.w));
    let wt = vec4(0.25, 0.75, 0.75, 0.25);
    var g = 0.0;
    for (var k = 0u; k < 4u; k++) {
        let o = i32(q.top_left) + rows[k];
        let row = vec4(src[o + cols[0]], src[o + cols[1]], src[o + cols[2]], src[o + cols[3]]);
        g += wt[k] * dot(wt, row);
    }
    dst[i] += g;
}
