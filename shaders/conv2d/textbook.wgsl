// conv2d/textbook.wgsl: 2-D convolution (cross-correlation, as PyTorch), NCHW, weights OIHW, as
// the formulas read: one invocation per output element, loops in the order of the sums, no tiling,
// no workgroup memory. The kernel a reader studies first, the oracle the tiled kernels of
// shaders/conv2d/tiled.wgsl are tested against, and what `--kernels reference` runs.
//   forward        : y[n,o,oh,ow]  = b[o] + sum_{i,kh,kw} w[o,i,kh,kw] * x[n,i, oh*sh-ph+kh, ow*sw-pw+kw]
//                    (x outside the image reads as 0: zero padding)
//   backward data  : dx[n,i,ih,iw] (+)= sum_{o,kh,kw} w[o,i,kh,kw] * dy[n,o,oh,ow]
//                    where the tap (kh,kw) of output pixel (oh,ow) reads x[n,i,ih,iw]:
//                    oh*sh = ih+ph-kh and ow*sw = iw+pw-kw (the gather form: no atomics)
//   backward weight: dw[o,i,kh,kw] += sum_{n,oh,ow} dy[n,o,oh,ow] * x[n,i, oh*sh-ph+kh, ow*sw-pw+kw]
//   backward bias  : db[o]         += sum_{n,oh,ow} dy[n,o,oh,ow]
// The weight and bias sums run over every output pixel: N*OH*OW = 131072 at the U-Net's top level
// at batch 2. Lavapipe ends a shader's loops for good once an invocation has run 65,535 iterations
// in all (nested loops add up), so these two sums are cut, in order, into `runs` runs of `rows`
// rows (n, oh) of dy: conv2d_backward_weight and conv2d_backward_bias write the sum of each run
// into `part`, and conv2d_add_runs adds the runs' sums in run order into dw or db. Below the top
// levels there is one run, and the second pass adds it as it is.
//
// group 0:  0 uniform Conv (below)
//   1 read x [N,I,H,W]      2 read w [O,I,KH,KW]   3 read b [O] (forward, when has_bias)
//   4 read_write y [N,O,OH,OW]   5 read dy [N,O,OH,OW]   6 read_write dx [N,I,H,W]
//   7 read_write part [runs, len]: the runs' sums   8 read_write dw | db, added into
// 64 threads a workgroup, one output element each: a multiple of the SIMD width of every GPU (32
// or 64) and of lavapipe (8). With no workgroup memory and no barriers the size sets only how
// finely the dispatch is cut. The group count folds into x and y (at most 65535 each), so the
// flat index of the output element is id.x + id.y * groups.x * WG.
const WG: u32 = 64u;

struct Conv {
    n: u32, ci: u32, h: u32, w: u32, // x: [N, I, H, W]
    co: u32, kh: u32, kw: u32, // w: [O, I, KH, KW]
    oh: u32, ow: u32, // y: [N, O, OH, OW]
    sh: u32, sw: u32, // stride
    ph: u32, pw: u32, // zero padding
    has_bias: u32, // forward: 1 when b is bound
    accumulate: u32, // backward data: 1 for dx +=, 0 for dx = (every element is written)
    rows: u32, // weight and bias sums: rows (n, oh) of a run
    runs: u32, // runs of the sums
    len: u32, // conv2d_add_runs: elements of dw or db
}

@group(0) @binding(0) var<uniform> p: Conv;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read> w: array<f32>;
@group(0) @binding(3) var<storage, read> b: array<f32>;
@group(0) @binding(4) var<storage, read_write> y: array<f32>;
@group(0) @binding(5) var<storage, read> dy: array<f32>;
@group(0) @binding(6) var<storage, read_write> dx: array<f32>;
@group(0) @binding(7) var<storage, read_write> part: array<f32>;
@group(0) @binding(8) var<storage, read_write> grad: array<f32>;

// x[n,i,ih,iw], or 0 in the padding.
fn x_at(n: u32, i: u32, ih: i32, iw: i32) -> f32 {
    if ih < 0 || iw < 0 || u32(ih) >= p.h || u32(iw) >= p.w {
        return 0.0;
    }
    return x[((n * p.ci + i) * p.h + u32(ih)) * p.w + u32(iw)];
}

// The output row (or column) o with o * stride = r, or -1 where none of the `size` sits there.
fn output_at(r: i32, stride: u32, size: u32) -> i32 {
    if r < 0 || u32(r) % stride != 0u || u32(r) / stride >= size {
        return -1;
    }
    return r / i32(stride);
}

@compute @workgroup_size(WG)
fn conv2d_forward(@builtin(global_invocation_id) id: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>) {
    let e = id.x + id.y * groups.x * WG; // y[n,o,oh,ow]
    if e >= p.n * p.co * p.oh * p.ow { return; } // the last group overhangs
    let ow = e % p.ow;
    let oh = e / p.ow % p.oh;
    let o = e / (p.ow * p.oh) % p.co;
    let n = e / (p.ow * p.oh * p.co);
    var sum = 0.0;
    for (var i = 0u; i < p.ci; i++) {
        for (var kh = 0u; kh < p.kh; kh++) {
            for (var kw = 0u; kw < p.kw; kw++) {
                let ih = i32(oh * p.sh + kh) - i32(p.ph);
                let iw = i32(ow * p.sw + kw) - i32(p.pw);
                sum += w[((o * p.ci + i) * p.kh + kh) * p.kw + kw] * x_at(n, i, ih, iw);
            }
        }
    }
    if p.has_bias != 0u {
        sum = b[o] + sum;
    }
    y[e] = sum;
}

@compute @workgroup_size(WG)
fn conv2d_backward_data(@builtin(global_invocation_id) id: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>) {
    let e = id.x + id.y * groups.x * WG; // dx[n,i,ih,iw]
    if e >= p.n * p.ci * p.h * p.w { return; }
    let iw = e % p.w;
    let ih = e / p.w % p.h;
    let i = e / (p.w * p.h) % p.ci;
    let n = e / (p.w * p.h * p.ci);
    // forward: y[n,o,oh,ow] += w[o,i,kh,kw] * x[n,i,ih,iw]  =>  dx[n,i,ih,iw] += w[o,i,kh,kw] * dy[n,o,oh,ow]
    // over the taps (kh, kw) whose output pixel (oh, ow) exists, and every o.
    var sum = 0.0;
    for (var kh = 0u; kh < p.kh; kh++) {
        let oh = output_at(i32(ih + p.ph) - i32(kh), p.sh, p.oh);
        if oh < 0 { continue; }
        for (var kw = 0u; kw < p.kw; kw++) {
            let ow = output_at(i32(iw + p.pw) - i32(kw), p.sw, p.ow);
            if ow < 0 { continue; }
            for (var o = 0u; o < p.co; o++) {
                sum += w[((o * p.ci + i) * p.kh + kh) * p.kw + kw] * dy[((n * p.co + o) * p.oh + u32(oh)) * p.ow + u32(ow)];
            }
        }
    }
    if p.accumulate != 0u {
        sum = dx[e] + sum;
    }
    dx[e] = sum;
}

@compute @workgroup_size(WG)
fn conv2d_backward_weight(@builtin(global_invocation_id) id: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>) {
    let len = p.co * p.ci * p.kh * p.kw;
    let t = id.x + id.y * groups.x * WG; // run `run` of dw[o,i,kh,kw]
    if t >= len * p.runs { return; }
    let e = t % len;
    let run = t / len;
    let kw = e % p.kw;
    let kh = e / p.kw % p.kh;
    let i = e / (p.kw * p.kh) % p.ci;
    let o = e / (p.kw * p.kh * p.ci);
    // forward: y[n,o,oh,ow] += w[o,i,kh,kw] * x[n,i,ih,iw]  =>  dw[o,i,kh,kw] += dy[n,o,oh,ow] * x[n,i,ih,iw]
    // over the rows (n, oh) of this run, in order.
    var sum = 0.0;
    for (var row = run * p.rows; row < min((run + 1u) * p.rows, p.n * p.oh); row++) {
        let n = row / p.oh;
        let oh = row % p.oh;
        for (var ow = 0u; ow < p.ow; ow++) {
            let ih = i32(oh * p.sh + kh) - i32(p.ph);
            let iw = i32(ow * p.sw + kw) - i32(p.pw);
            sum += dy[((n * p.co + o) * p.oh + oh) * p.ow + ow] * x_at(n, i, ih, iw);
        }
    }
    part[run * len + e] = sum;
}

@compute @workgroup_size(WG)
fn conv2d_backward_bias(@builtin(global_invocation_id) id: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>) {
    let t = id.x + id.y * groups.x * WG; // run `run` of db[o]
    if t >= p.co * p.runs { return; }
    let o = t % p.co;
    let run = t / p.co;
    // forward: y[n,o,oh,ow] = b[o] + ...  =>  db[o] += dy[n,o,oh,ow], over the run's rows in order.
    var sum = 0.0;
    for (var row = run * p.rows; row < min((run + 1u) * p.rows, p.n * p.oh); row++) {
        let n = row / p.oh;
        let oh = row % p.oh;
        for (var ow = 0u; ow < p.ow; ow++) {
            sum += dy[((n * p.co + o) * p.oh + oh) * p.ow + ow];
        }
    }
    part[run * p.co + o] = sum;
}

// grad[e] += sum over runs r, in order, of part[r * len + e] (grad: dw or db, len elements).
@compute @workgroup_size(WG)
fn conv2d_add_runs(@builtin(global_invocation_id) id: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>) {
    let e = id.x + id.y * groups.x * WG;
    if e >= p.len { return; }
    var sum = 0.0;
    for (var r = 0u; r < p.runs; r++) {
        sum += part[r * p.len + e];
    }
    grad[e] += sum;
}
