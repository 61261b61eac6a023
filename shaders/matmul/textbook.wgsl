// matmul/textbook.wgsl: dense matrix products, row-major f32, as the formulas read: one invocation
// per output element, one loop over the sum, no tiling, no workgroup memory. The oracle the tiled
// kernels of shaders/matmul/tiled.wgsl are tested against, and what `--kernels reference` runs.
//   forward : c[m,n]   = sum_k a[m,k] * b[k,n]          C = A . B
//   backward: da[m,k] += sum_n dc[m,n] * b[k,n]         dA += dC . B^T
//             db[k,n] += sum_m a[m,k] * dc[m,n]         dB += A^T . dC
// Each sum is one loop, so it must stay under lavapipe's loop guard (65,535 iterations an
// invocation): the Rust side checks K, N and M.
//
// group 0:  0 uniform Dims {m, k, n}
//   1 read a [M,K]   2 read b [K,N]   3 read_write c [M,N]   4 read dc [M,N]
//   5 read_write da [M,K]   6 read_write db [K,N]
// 8x8 threads a workgroup, one output element each (x: column, y: row): a square block, so that
// neighbouring threads read the same rows of one operand and columns of the other.
const WG: u32 = 8u;

struct Dims { m: u32, k: u32, n: u32 }

@group(0) @binding(0) var<uniform> d: Dims;
@group(0) @binding(1) var<storage, read> a: array<f32>;
@group(0) @binding(2) var<storage, read> b: array<f32>;
@group(0) @binding(3) var<storage, read_write> c: array<f32>;
@group(0) @binding(4) var<storage, read> dc: array<f32>;
@group(0) @binding(5) var<storage, read_write> da: array<f32>;
@group(0) @binding(6) var<storage, read_write> db: array<f32>;

@compute @workgroup_size(WG, WG)
fn matmul_forward(@builtin(global_invocation_id) id: vec3<u32>) {
    let m = id.y;
    let n = id.x;
    if m >= d.m || n >= d.n { return; } // edge groups overhang
    var sum = 0.0;
    for (var k = 0u; k < d.k; k++) {
        sum += a[m * d.k + k] * b[k * d.n + n];
    }
    c[m * d.n + n] = sum;
}

@compute @workgroup_size(WG, WG)
fn matmul_backward_a(@builtin(global_invocation_id) id: vec3<u32>) {
    let m = id.y;
    let k = id.x;
    if m >= d.m || k >= d.k { return; }
    // forward: c[m,n] += a[m,k] * b[k,n]  =>  da[m,k] += dc[m,n] * b[k,n]
    var sum = 0.0;
    for (var n = 0u; n < d.n; n++) {
        sum += dc[m * d.n + n] * b[k * d.n + n];
    }
    da[m * d.k + k] += sum;
}

@compute @workgroup_size(WG, WG)
fn matmul_backward_b(@builtin(global_invocation_id) id: vec3<u32>) {
    let k = id.y;
    let n = id.x;
    if k >= d.k || n >= d.n { return; }
    // forward: c[m,n] += a[m,k] * b[k,n]  =>  db[k,n] += a[m,k] * dc[m,n]
    var sum = 0.0;
    for (var m = 0u; m < d.m; m++) {
        sum += a[m * d.k + k] * dc[m * d.n + n];
    }
    db[k * d.n + n] += sum;
}
