// bias_add.wgsl: adds a per-channel bias to an NCHW tensor.
//   forward : y[n,c,h,w] = x[n,c,h,w] + b[c]
//   backward: dx += dy               (elementwise.wgsl: elementwise_backward)
//             db[c] += sum_{n,h,w} dy[n,c,h,w]   (reduce.wgsl: a deterministic tree)
// group 0:  0 uniform Params {len = N*C*H*W, channels C, plane H*W}   1 read x   2 read_write y   3 read b
// 256 threads a group, one element each; the dispatch folds the group count into
// x and y (at most 65535 each), so the linear index is id.x + id.y * stride.
override WG: u32 = 256u;

struct Params { len: u32, channels: u32, plane: u32 }

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read_write> y: array<f32>;
@group(0) @binding(3) var<storage, read> b: array<f32>;

@compute @workgroup_size(WG)
fn bias_add_forward(@builtin(global_invocation_id) id: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>) {
    let i = id.x + id.y * groups.x * WG;
    if i >= p.len { return; } // the last group overhangs
    let c = (i / p.plane) % p.channels;
    y[i] = x[i] + b[c];
}
