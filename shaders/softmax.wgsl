// softmax.wgsl: softmax over the channel axis of an NCHW tensor, forward and backward.
//   forward : m = max_c x[n,c,p];  y[n,c,p] = exp(x[n,c,p] - m) / sum_c' exp(x[n,c',p] - m)
//             (subtracting the max keeps every exp in (0, 1], so logits of any size
//             give no overflow, and the sum is at least 1, so no division by zero)
//   backward: s = sum_c dy[n,c,p] * y[n,c,p];  dx[n,c,p] += y[n,c,p] * (dy[n,c,p] - s)
//             (p is the pixel h*W + w; the backward reads the saved output y)
// group 0:  0 uniform Params {n, c, hw}   1 read x | y   2 read_write y | dx   3 read dy
// 256 threads a group, one thread per (n, pixel), looping over the C channels in a
// fixed order (deterministic). Neighbouring threads read neighbouring pixels of the
// same channel, so every load of the loop is coalesced. Softmax runs over the class
// logits (C small) at full resolution, where N*H*W threads are plenty.
override WG: u32 = 256u;

struct Params { n: u32, c: u32, hw: u32 }

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> src: array<f32>;
@group(0) @binding(2) var<storage, read_write> dst: array<f32>;
@group(0) @binding(3) var<storage, read> dy: array<f32>;

// Index of channel 0 at thread i's (n, pixel): i = n * hw + pixel.
fn base_of(i: u32) -> u32 {
    let n = i / p.hw;
    return n * p.c * p.hw + (i - n * p.hw);
}

@compute @workgroup_size(WG)
fn softmax_forward(@builtin(global_invocation_id) id: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>) {
    let i = id.x + id.y * groups.x * WG;
    if i >= p.n * p.hw { return; } // the last group overhangs
    let base = base_of(i);
    var m = src[base];
    for (var c = 1u; c < p.c; c++) {
        m = max(m, src[base + c * p.hw]);
    }
    var sum = 0.0;
    for (var c = 0u; c < p.c; c++) {
        sum += exp(src[base + c * p.hw] - m);
    }
    let inv = 1.0 / sum; // sum >= 1: the max channel contributes exp(0)
    for (var c = 0u; c < p.c; c++) {
        let k = base + c * p.hw;
        dst[k] = exp(src[k] - m) * inv;
    }
}

// src = y (the forward output), dst = dx (accumulated into).
@compute @workgroup_size(WG)
fn softmax_backward(@builtin(global_invocation_id) id: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>) {
    let i = id.x + id.y * groups.x * WG;
    if i >= p.n * p.hw { return; }
    let base = base_of(i);
    var s = 0.0;
    for (var c = 0u; c < p.c; c++) {
        let k = base + c * p.hw;
        s += dy[k] * src[k];
    }
    // forward: y_c = exp(x_c) / sum_c' exp(x_c')  =>  dy_c/dx_k = y_c (delta_ck - y_k)
    //   =>  dx_k += sum_c dy_c y_c (delta_ck - y_k) = y_k (dy_k - sum_c dy_c y_c)
    for (var c = 0u; c < p.c; c++) {
        let k = base + c * p.hw;
        dst[k] += src[k] * (dy[k] - s);
    }
}
