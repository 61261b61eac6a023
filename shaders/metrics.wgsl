// metrics.wgsl: confusion matrix of argmax predictions against labels, accumulated.
//   confusion[y * C + argmax_c z[n,c,h,w]] += 1   for every pixel with label y < C, y != ignore
// Integer counts, so the order of the additions does not matter and atomics are exact.
// Each workgroup first counts into a histogram in workgroup memory (C*C <= 256 cells),
// then adds each non-zero cell to the global matrix once: a handful of global atomics
// per workgroup instead of one per pixel on the same few addresses.
// group 0:  0 uniform Params {n, c, hw, ignore, pixels_per_thread}
//           1 read logits [N,C,H,W]   2 read labels [N,H,W] (u32)
//           3 read_write confusion [C*C] (atomic u32, row = truth, column = prediction)
// 256 threads a group; each counts a fixed run of pixels.
const MAX_C: u32 = 16u;
const WG: u32 = 256u; // a const: it must match the histogram clearing loop below

struct Params { n: u32, c: u32, hw: u32, ignore: u32, pixels_per_thread: u32 }

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> logits: array<f32>;
@group(0) @binding(2) var<storage, read> labels: array<u32>;
@group(0) @binding(3) var<storage, read_write> confusion: array<atomic<u32>>;

var<workgroup> histogram: array<atomic<u32>, 256>; // MAX_C * MAX_C

@compute @workgroup_size(WG)
fn confusion_update(@builtin(local_invocation_id) lid: vec3<u32>, @builtin(workgroup_id) wid: vec3<u32>,
                    @builtin(num_workgroups) groups: vec3<u32>) {
    atomicStore(&histogram[lid.x], 0u);
    workgroupBarrier();
    let group = wid.x + wid.y * groups.x;
    let pixels = p.n * p.hw;
    let first = (group * WG + lid.x) * p.pixels_per_thread;
    for (var k = 0u; k < p.pixels_per_thread; k++) {
        let i = first + k;
        if i >= pixels { break; }
        let y = labels[i];
        if y >= p.c || y == p.ignore { continue; }
        let b = i / p.hw;
        let base = b * p.c * p.hw + (i - b * p.hw);
        var best = logits[base];
        var arg = 0u;
        for (var c = 1u; c < p.c; c++) {
            let z = logits[base + c * p.hw];
            if z > best { best = z; arg = c; } // first maximum wins, as argmax does
        }
        atomicAdd(&histogram[y * p.c + arg], 1u);
    }
    workgroupBarrier();
    let count = atomicLoad(&histogram[lid.x]);
    if lid.x < p.c * p.c && count > 0u {
        atomicAdd(&confusion[lid.x], count);
    }
}
