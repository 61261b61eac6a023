// optim.wgsl: optimizer updates over the whole parameter arena in one dispatch,
// and the global gradient norm for clipping.
//   clipping : norm = sqrt(sum_i g_i^2),  scale = min(1, max_norm / (norm + 1e-6)),  g_i *= scale
//   sgd      : g += wd * w;  b = momentum * b + g;  w -= lr * b                (PyTorch SGD, dampening 0)
//   adam     : g += wd * w (L2, Adam only);  w -= lr * wd * w (decoupled, AdamW only)
//              m = b1 m + (1 - b1) g;  v = b2 v + (1 - b2) g^2
//              w -= lr * (m / c1) / (sqrt(v / c2) + eps),   c1 = 1 - b1^t, c2 = 1 - b2^t
// The step's learning rate and bias corrections arrive in the uniform (computed on the CPU
// from the step number, so no readback is needed). The clip scale is read from a buffer
// that the norm passes write on the GPU (or that holds 1 when clipping is off).
// group 0:  0 uniform Params   1 read_write w   2 read g   3 read_write m | momentum buffer
//           4 read_write v   5 read_write clip [scale, norm]   6 read_write partials [G]
// 256 threads a group, one element each (folded into x, y above 65535 groups).
override WG: u32 = 256u;
const NORM_WG: u32 = 256u; // a const: it sizes workgroup memory

struct Params {
    n: u32, adamw: u32, groups: u32, per_thread: u32,
    lr: f32, weight_decay: f32, beta1: f32, beta2: f32,
    eps: f32, c1: f32, c2: f32, max_norm: f32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read_write> w: array<f32>;
@group(0) @binding(2) var<storage, read> g: array<f32>;
@group(0) @binding(3) var<storage, read_write> m: array<f32>;
@group(0) @binding(4) var<storage, read_write> v: array<f32>;
@group(0) @binding(5) var<storage, read_write> clip: array<f32>;
@group(0) @binding(6) var<storage, read_write> partials: array<f32>;

var<workgroup> tree: array<f32, NORM_WG>;

@compute @workgroup_size(WG)
fn sgd_update(@builtin(global_invocation_id) id: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>) {
    let i = id.x + id.y * groups.x * WG;
    if i >= p.n { return; }
    let grad = g[i] * clip[0] + p.weight_decay * w[i];
    m[i] = p.beta1 * m[i] + grad; // beta1 carries the momentum
    w[i] -= p.lr * m[i];
}

@compute @workgroup_size(WG)
fn adam_update(@builtin(global_invocation_id) id: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>) {
    let i = id.x + id.y * groups.x * WG;
    if i >= p.n { return; }
    var weight = w[i];
    var grad = g[i] * clip[0];
    if p.adamw != 0u {
        weight -= p.lr * p.weight_decay * weight;
    } else {
        grad += p.weight_decay * weight;
    }
    let mi = p.beta1 * m[i] + (1.0 - p.beta1) * grad;
    let vi = p.beta2 * v[i] + (1.0 - p.beta2) * grad * grad;
    m[i] = mi;
    v[i] = vi;
    w[i] = weight - p.lr * (mi / p.c1) / (sqrt(vi / p.c2) + p.eps);
}

// Each thread sums the squares of a fixed run of gradients; a workgroup tree
// writes one partial per group.
@compute @workgroup_size(NORM_WG)
fn grad_norm_partial(@builtin(local_invocation_id) lid: vec3<u32>, @builtin(workgroup_id) wid: vec3<u32>) {
    var sum = 0.0;
    let first = (wid.x * NORM_WG + lid.x) * p.per_thread;
    for (var k = 0u; k < p.per_thread; k++) {
        let i = first + k;
        if i < p.n { sum += g[i] * g[i]; }
    }
    tree[lid.x] = sum;
    workgroupBarrier();
    for (var stride = NORM_WG / 2u; stride > 0u; stride /= 2u) {
        if lid.x < stride { tree[lid.x] += tree[lid.x + stride]; }
        workgroupBarrier();
    }
    if lid.x == 0u { partials[wid.x] = tree[0]; }
}

// One thread: sums the partials in order (deterministic) and writes the scale.
@compute @workgroup_size(1)
fn grad_norm_finalize() {
    var sum = 0.0;
    for (var k = 0u; k < p.groups; k++) { sum += partials[k]; }
    let norm = sqrt(sum);
    clip[0] = min(1.0, p.max_norm / (norm + 1e-6));
    clip[1] = norm;
}
