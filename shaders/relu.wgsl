// relu.wgsl: rectified linear unit, elementwise over a tensor of any shape.
//   forward : y[i] = max(x[i], 0)
//   backward: dx[i] += dy[i] * (y[i] > 0)      (y > 0 exactly where x > 0)
// group 0:  0 uniform Params {n}   1 read x | y   2 read_write y | dx   3 read dy
// 256 threads a group, one element each; the dispatch folds the group count into
// x and y (at most 65535 each), so the linear index is id.x + id.y * stride.
override WG: u32 = 256u;

struct Params { n: u32 }

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> src: array<f32>;
@group(0) @binding(2) var<storage, read_write> dst: array<f32>;
@group(0) @binding(3) var<storage, read> dy: array<f32>;

@compute @workgroup_size(WG)
fn relu_forward(@builtin(global_invocation_id) id: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>) {
    let i = id.x + id.y * groups.x * WG;
    if i >= p.n { return; } // the last group overhangs
    dst[i] = max(src[i], 0.0);
}

// src = y (the forward output), dst = dx (accumulated into).
@compute @workgroup_size(WG)
fn relu_backward(@builtin(global_invocation_id) id: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>) {
    let i = id.x + id.y * groups.x * WG;
    if i >= p.n { return; }
    // forward: y = max(x, 0)  =>  dx += dy * (x > 0)
    dst[i] += select(0.0, dy[i], src[i] > 0.0);
}
