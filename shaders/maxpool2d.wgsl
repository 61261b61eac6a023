// maxpool2d.wgsl: 2x2 max pooling, stride 2, NCHW; x [N,C,H,W] -> y [N,C,H/2,W/2] (floor).
//   forward : y[n,c,i,j] = max of x[n,c,2i+a,2j+b] over a,b in {0,1}
//             argmax[n,c,i,j] = (2i+a)*W + (2j+b) of the winner: its index within
//             the input plane. Ties go to the first in row-major window order
//             (strict >), a NaN wins, as in PyTorch. With odd H or W the last row
//             or column belongs to no window.
//   backward: dx[n,c,argmax[n,c,i,j]] += dy[n,c,i,j]
//     (one thread per window, adding into its winner only; windows do not overlap,
//      so no two threads touch one dx element, and there are no atomics. The other
//      three elements of the window get nothing, so they are not touched at all)
// group 0:  0 uniform Params {planes N*C, h H, w W, ho H/2, wo W/2}
//   maxpool2d_forward : 1 read x    2 read_write y    3 read_write argmax (u32)
//   maxpool2d_backward: 2 read_write dx   4 read argmax (u32)   5 read dy
// 16x16 threads a group, one output pixel (window) each, and one plane (n, c) per z:
// a 3-D grid needs no integer division to find a thread's pixel (costly on CPU
// drivers), and a square tile keeps neighbouring rows in cache.
override TX: u32 = 16u;
override TY: u32 = 16u;

struct Params { planes: u32, h: u32, w: u32, ho: u32, wo: u32 }

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read_write> dst: array<f32>;
@group(0) @binding(3) var<storage, read_write> argmax_out: array<u32>;
@group(0) @binding(4) var<storage, read> argmax_in: array<u32>;
@group(0) @binding(5) var<storage, read> dy: array<f32>;

// Thread (j, i, plane): output pixel (i, j) of plane n*C + c.
@compute @workgroup_size(TX, TY)
fn maxpool2d_forward(@builtin(global_invocation_id) id: vec3<u32>) {
    let j = id.x;
    let i = id.y;
    let plane = id.z;
    if j >= p.wo || i >= p.ho { return; } // edge tiles overhang
    let base = plane * p.h * p.w;
    var best_at = 2u * i * p.w + 2u * j;
    var best = x[base + best_at];
    // The other three in row-major order; strict > keeps the first of equals.
    let others = array<u32, 3>(best_at + 1u, best_at + p.w, best_at + p.w + 1u);
    for (var k = 0u; k < 3u; k++) {
        let v = x[base + others[k]];
        if v > best || (v != v && best == best) { // a NaN wins (the first NaN)
            best = v;
            best_at = others[k];
        }
    }
    let o = (plane * p.ho + i) * p.wo + j;
    dst[o] = best;
    argmax_out[o] = best_at;
}

// Thread (j, i, plane): window (i, j) of plane n*C + c. dst = dx (accumulated into).
@compute @workgroup_size(TX, TY)
fn maxpool2d_backward(@builtin(global_invocation_id) id: vec3<u32>) {
    let j = id.x;
    let i = id.y;
    let plane = id.z;
    if j >= p.wo || i >= p.ho { return; } // edge tiles overhang
    let o = (plane * p.ho + i) * p.wo + j;
    // forward: y = x[argmax]  =>  dx[argmax] += dy
    dst[plane * p.h * p.w + argmax_in[o]] += dy[o];
}
