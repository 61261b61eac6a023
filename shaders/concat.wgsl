// concat.wgsl: the backward of channel concatenation of NCHW tensors, one part at a time.
//   forward : y[n, off + c, h, w] = part[n, c, h, w]        (y: [N, C_total, H, W], part: [N, C_part, H, W])
//             (no kernel: per image, the part is one contiguous run of C_part*H*W values in both
//             tensors, so src/ops/concat.rs copies it with a buffer copy, a memcpy)
//   backward: dpart[n, c, h, w] += dy[n, off + c, h, w]
//   concat(a, b) runs the backward twice: a at off = 0, b at off = C_a.
// group 0:  0 uniform Params {len = C_part*H*W (one image), part C_part, total C_total, plane H*W,
//             offset off}
//   concat_backward     : 2 read_write dpart   3 read dy
//   concat_backward_vec4: 4 read_write dpart   5 read dy, as vec4 (when H*W % 4 == 0, every run
//                         starts on a vec4; len then counts vec4s)
// One thread per element (or vec4) of one image's part, image n = workgroup z, so the index needs
// no division; neighbouring threads touch neighbouring addresses. Vec4s: on CPU drivers every
// access is a loop over the SIMD lanes, so 4 values an access cost far less than 1.
// 256 threads a group; the dispatch folds the group count of one image into x and y.
override WG: u32 = 256u;

struct Params { len: u32, part: u32, total: u32, plane: u32, offset: u32 }

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(2) var<storage, read_write> dpart: array<f32>;
@group(0) @binding(3) var<storage, read> dy: array<f32>;
@group(0) @binding(4) var<storage, read_write> dpart4: array<vec4<f32>>;
@group(0) @binding(5) var<storage, read> dy4: array<vec4<f32>>;

@compute @workgroup_size(WG)
fn concat_backward(@builtin(global_invocation_id) id: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>) {
    let i = id.x + id.y * groups.x * WG;
    if i >= p.len { return; } // the last group overhangs
    let n = id.z;
    // forward: y[n, off + c] = part[n, c]  =>  dpart[n, c] += dy[n, off + c]
    dpart[n * p.len + i] += dy[(n * p.total + p.offset) * p.plane + i];
}

@compute @workgroup_size(WG)
fn concat_backward_vec4(@builtin(global_invocation_id) id: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>) {
    let i = id.x + id.y * groups.x * WG;
    if i >= p.len { return; }
    let n = id.z;
    dpart4[n * p.len + i] += dy4[(n * p.total + p.offset) * (p.plane / 4u) + i];
}
