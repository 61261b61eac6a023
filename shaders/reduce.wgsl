// reduce.wgsl: deterministic sums of x viewed as [N, C, L] over N and L, one per channel c.
//   forward : y[c] = scale * sum_{n,l} x[n, c, l]
//     sum over everything: C = 1, N = 1, L = len;  mean: scale = 1 / len
//     sum per channel of [N,C,H,W]: L = H*W (bias gradients, batch-norm statistics)
//   backward: dx[n, c, l] += scale * dy[c]         (a broadcast; one thread per dx element)
//
// One pass of reduce_forward turns each run of CHUNK = WG * ITEMS consecutive (n, l)
// elements of a channel into one partial sum: every thread adds ITEMS elements
// spaced WG apart (neighbouring threads read neighbouring addresses), then the
// workgroup adds its WG values as a binary tree in workgroup memory. The partials
// [C, G] (G = ceil(N*L / CHUNK)) go to a pooled scratch buffer and the same entry
// point runs again over them (N = 1, L = G) until G = 1; 4*16*256*256 elements take
// two passes. Every sum is in a fixed order, with no atomics, so the result is the
// same bit for bit on every run; and the tree keeps the rounding error near
// log2(len) ulps instead of the len ulps of a running sum.
//
// group 0:  0 uniform Params {outer N, channels C, inner L, groups G, scale, accumulate}
//   reduce_forward : 1 read x (this pass's input)   2 read_write y (partials [C, G], or the
//                    result [C] when G = 1; added into when accumulate != 0)
//   reduce_backward: 2 read_write dx [N, C, L]       3 read dy [C]
// 256 threads a group: the tree then has 8 levels. ITEMS = 32 (a group sums 8192
// elements) measured about twice as fast as 8 on lavapipe, where barriers are
// costly; 4*16*256*256 elements leave 512 partials, one group's work in pass two.
override WG: u32 = 256u;
override ITEMS: u32 = 32u;

struct Params {
    outer: u32,
    channels: u32,
    inner: u32,
    groups: u32,
    scale: f32,
    accumulate: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> src: array<f32>;
@group(0) @binding(2) var<storage, read_write> dst: array<f32>;
@group(0) @binding(3) var<storage, read> dy: array<f32>;

var<workgroup> tree: array<f32, WG>;

// Workgroup (g, c): partial sum number g of channel c.
@compute @workgroup_size(WG)
fn reduce_forward(@builtin(local_invocation_id) lid: vec3<u32>, @builtin(workgroup_id) wid: vec3<u32>) {
    let t = lid.x;
    let g = wid.x;
    let c = wid.y;
    let count = p.outer * p.inner; // elements of one channel
    let base = g * WG * ITEMS;
    var acc = 0.0;
    for (var j = 0u; j < ITEMS; j++) {
        let k = base + j * WG + t;
        if k < count { // the channel's last group overhangs
            let n = k / p.inner;
            let l = k - n * p.inner;
            acc += src[(n * p.channels + c) * p.inner + l];
        }
    }
    tree[t] = acc;
    workgroupBarrier();
    // Halve the live threads each level; the barrier makes each level's sums
    // visible before the next level reads them.
    for (var s = WG / 2u; s > 0u; s = s / 2u) {
        if t < s {
            tree[t] += tree[t + s];
        }
        workgroupBarrier();
    }
    if t == 0u {
        let total = tree[0] * p.scale;
        let o = c * p.groups + g;
        if p.accumulate != 0u {
            dst[o] += total;
        } else {
            dst[o] = total;
        }
    }
}

@compute @workgroup_size(WG)
fn reduce_backward(@builtin(global_invocation_id) id: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>) {
    let i = id.x + id.y * groups.x * WG;
    if i >= p.outer * p.channels * p.inner { return; } // the last group overhangs
    // forward: y[c] = scale * sum_{n,l} x[n,c,l]  =>  dx[n,c,l] += scale * dy[c]
    let c = (i / p.inner) % p.channels;
    dst[i] += p.scale * dy[c];
}
