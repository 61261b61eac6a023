// concat.wgsl: channel concatenation of NCHW tensors, one part at a time.
//   forward : y[n, off + c, h, w] = part[n, c, h, w]        (y: [N, C_total, H, W], part: [N, C_part, H, W])
//   backward: dpart[n, c, h, w] += dy[n, off + c, h, w]
//   concat(a, b) runs each entry twice: a at off = 0, b at off = C_a.
// group 0:  0 uniform Params {len = N*C_part*H*W, part C_part, total C_total, plane H*W, offset off}
//   concat_forward : 1 read part    2 read_write y
//   concat_backward: 2 read_write dpart   3 read dy
// One thread per element of the part (a copy: both sides are contiguous runs of
// C_part*H*W per image, so neighbouring threads touch neighbouring addresses).
// 256 threads a group; the dispatch folds the group count into x and y.
override WG: u32 = 256u;

struct Params { len: u32, part: u32, total: u32, plane: u32, offset: u32 }

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> part: array<f32>;
@group(0) @binding(2) var<storage, read_write> dst: array<f32>;
@group(0) @binding(3) var<storage, read> dy: array<f32>;

// Index in the concatenated tensor of element i of the part.
fn whole_index(i: u32) -> u32 {
    let image = p.part * p.plane;
    let n = i / image;
    return (n * p.total + p.offset) * p.plane + (i - n * image);
}

@compute @workgroup_size(WG)
fn concat_forward(@builtin(global_invocation_id) id: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>) {
    let i = id.x + id.y * groups.x * WG;
    if i >= p.len { return; } // the last group overhangs
    dst[whole_index(i)] = part[i];
}

// dst = dpart (accumulated into).
@compute @workgroup_size(WG)
fn concat_backward(@builtin(global_invocation_id) id: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>) {
    let i = id.x + id.y * groups.x * WG;
    if i >= p.len { return; }
    // forward: y[n, off + c] = part[n, c]  =>  dpart[n, c] += dy[n, off + c]
    dst[i] += dy[whole_index(i)];
}
