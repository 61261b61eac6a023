// copy.wgsl: y = x, elementwise over a tensor of any shape: the memory-bandwidth ceiling that
// memory-bound kernels are measured against (not an op of the model).
//   copy_forward: y4[i] = x4[i] for the first n/4 vec4s, VPT vec4s a thread
//   copy_tail   : y[i] = x[i] for the last n % 4 scalars (i from 4*(n/4) to n)
// group 0:  0 uniform Params {n, n4}   1 read x   2 read_write y
//   (`copy_forward` binds them as array<vec4<f32>>, `copy_tail` as array<f32>)
// WG threads a group (256); the dispatch folds the group count into x and y (at most 65535 each), so
// the linear index is id.x + id.y * stride. A thread copies VPT vec4s, WG*VPT apart, so that
// neighbouring threads always touch neighbouring addresses.
override WG: u32 = 256u;
override VPT: u32 = 1u;

struct Params {
    n: u32, // scalars
    n4: u32, // whole vec4s: n / 4
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x4: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read_write> y4: array<vec4<f32>>;
@group(0) @binding(1) var<storage, read> x1: array<f32>;
@group(0) @binding(2) var<storage, read_write> y1: array<f32>;

@compute @workgroup_size(WG)
fn copy_forward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>) {
    let first = (wid.x + wid.y * groups.x) * WG * VPT + lid.x;
    for (var v = 0u; v < VPT; v++) {
        let i = first + v * WG;
        if i < p.n4 { // the last group overhangs
            y4[i] = x4[i];
        }
    }
}

@compute @workgroup_size(WG)
fn copy_tail(@builtin(local_invocation_id) lid: vec3<u32>) {
    let i = 4u * p.n4 + lid.x;
    if i < p.n {
        y1[i] = x1[i];
    }
}
