// dropout.wgsl: inverted dropout, elementwise over a tensor of any shape, with the
// mask drawn by a counter-based hash of (seed, element index), so nothing is saved.
//   keep(i)  : bits(i) >= threshold, threshold = round(p * 2^32)  =>  P(keep) = 1 - p
//   forward  : y[i] = keep(i) ? x[i] * scale : 0          scale = 1 / (1 - p)
//   backward : dx[i] += keep(i) ? dy[i] * scale : 0       (the mask is recomputed)
// The hash is common/dropout_hash.wgsl's (mirrored bit for bit by `reference::mask_bits` in
// src/ops/dropout.rs), shared with the fused epilogues of conv2d and batch norm.
// group 0:  0 uniform Params {n, threshold, seed_lo, seed_hi, scale}
//           1 read x | dy   2 read_write y | dx
// 256 threads a group, one element each; the dispatch folds the group count into
// x and y (at most 65535 each), so the linear index is id.x + id.y * stride.
override WG: u32 = 256u;

struct Params { n: u32, threshold: u32, seed_lo: u32, seed_hi: u32, scale: f32 }

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> src: array<f32>;
@group(0) @binding(2) var<storage, read_write> dst: array<f32>;

// Whether element i survives: bits(i) >= threshold.
fn keep(i: u32) -> bool {
    return hash_bits(hash_keys(p.seed_lo, p.seed_hi), i) >= p.threshold;
}

@compute @workgroup_size(WG)
fn dropout_forward(@builtin(global_invocation_id) id: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>) {
    let i = id.x + id.y * groups.x * WG;
    if i >= p.n { return; } // the last group overhangs
    dst[i] = select(0.0, src[i] * p.scale, keep(i));
}

// src = dy, dst = dx (accumulated into).
@compute @workgroup_size(WG)
fn dropout_backward(@builtin(global_invocation_id) id: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>) {
    let i = id.x + id.y * groups.x * WG;
    if i >= p.n { return; }
    // forward: y = x * mask * scale  =>  dx += dy * mask * scale
    dst[i] += select(0.0, src[i] * p.scale, keep(i));
}

// #include common/dropout_hash.wgsl
