// elementwise.wgsl: sum of two tensors and scaling by a constant, elementwise over any shape.
//   add  : y[i] = a[i] + b[i]         backward: da[i] += dy[i],  db[i] += dy[i]
//   scale: y[i] = s * x[i]            backward: dx[i] += s * dy[i]
//   Both backwards are elementwise_backward, dx[i] += s * dy[i] (s = 1 for add).
// group 0:  0 uniform Params {n, s}
//   add_forward        : 1 read a   2 read_write y    3 read b
//   scale_forward      : 1 read x   2 read_write y
//   elementwise_backward: 2 read_write dx   3 read dy
// 256 threads a group, one element each; the dispatch folds the group count into
// x and y (at most 65535 each), so the linear index is id.x + id.y * stride.
override WG: u32 = 256u;

struct Params { n: u32, s: f32 }

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> src: array<f32>;
@group(0) @binding(2) var<storage, read_write> dst: array<f32>;
@group(0) @binding(3) var<storage, read> other: array<f32>;

@compute @workgroup_size(WG)
fn add_forward(@builtin(global_invocation_id) id: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>) {
    let i = id.x + id.y * groups.x * WG;
    if i >= p.n { return; } // the last group overhangs
    dst[i] = src[i] + other[i];
}

@compute @workgroup_size(WG)
fn scale_forward(@builtin(global_invocation_id) id: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>) {
    let i = id.x + id.y * groups.x * WG;
    if i >= p.n { return; }
    dst[i] = p.s * src[i];
}

// other = dy, dst = dx (accumulated into).
@compute @workgroup_size(WG)
fn elementwise_backward(@builtin(global_invocation_id) id: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>) {
    let i = id.x + id.y * groups.x * WG;
    if i >= p.n { return; }
    // forward: y = s * x  =>  dx += s * dy;   forward: y = a + b  =>  da += dy, db += dy (s = 1)
    dst[i] += p.s * other[i];
}
