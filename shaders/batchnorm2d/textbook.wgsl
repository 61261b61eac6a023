// batchnorm2d/textbook.wgsl: 2-D batch normalisation over NCHW (statistics per channel c over its
// M = N*H*W values) as the formulas read: one invocation per output element (or per channel for the
// statistics), loops in the order of the sums, no tiling, no workgroup memory. The oracle the tiled
// kernels of shaders/batchnorm2d/tiled.wgsl are tested against, and what `--kernels reference` runs.
//   statistics (training): mean_c = sum x / M,  var_c = sum (x - mean_c)^2 / M  (biased),
//     invstd_c = 1 / sqrt(var_c + eps),  running_mean_c = (1 - momentum) running_mean_c + momentum mean_c,
//     running_var_c = (1 - momentum) running_var_c + momentum var_c M / (M - 1)   (unbiased, as PyTorch)
//   statistics (evaluation): mean_c = running_mean_c,  invstd_c = 1 / sqrt(running_var_c + eps)
//   forward : y = gamma_c * xhat + beta_c,  xhat = (x - mean_c) * invstd_c
//   backward (training, the statistics depend on x):
//     dx (+)= gamma_c invstd_c / M * (M dy - sum(dy) - xhat sum(dy xhat))
//   backward (evaluation, constant statistics): dx (+)= dy gamma_c invstd_c
//   both: dgamma_c += sum(dy xhat),  dbeta_c += sum(dy)
//   (sums over the M values of channel c; the ReLU and dropout that may follow are the plain
//   kernels' business: the host hands this file dz, the gradient before them)
// A channel's sums run over M values (131072 at the U-Net's top level at batch 2), more than
// lavapipe lets an invocation loop over (it ends a shader's loops once an invocation has run 65,535
// iterations in all): each is cut, in order, into `runs` runs of `rows` rows (n, h) of the
// channel. The `batchnorm_sum_*` entry points write one sum per (run, channel) into `part`,
// [runs, len] with len = C (or 2C for the backward's two sums); the next entry point adds the
// runs in run order.
//
// group 0:  0 uniform Norm (below)
//   1 read x [N,C,H,W]   2 read dy [N,C,H,W]   3 read gamma [C]   4 read beta [C]
//   5 read_write mean [C]   6 read_write invstd [C]   7 read_write running_mean [C]
//   8 read_write running_var [C]   9 read_write part [runs, len]
//   10 read_write sums [2C]: sum dy | sum dy xhat   11 read_write y | dx [N,C,H,W]
//   12 read_write dgamma | dbeta [C], added into
// 64 threads a workgroup, one output element (or channel) each: a multiple of the SIMD width of
// every GPU (32 or 64) and of lavapipe (8); with no workgroup memory the size sets only how finely
// the dispatch is cut. The group count folds into x and y (at most 65535 each): the flat index of
// the output element is id.x + id.y * groups.x * WG.
const WG: u32 = 64u;

struct Norm {
    n: u32, c: u32, h: u32, w: u32, // x: [N, C, H, W]
    rows: u32, // rows (n, h) of a run of a channel's sum
    runs: u32, // runs of a channel's sum
    momentum: f32,
    eps: f32,
    train: u32, // backward data: 1 when mean and invstd are the batch's statistics
    accumulate: u32, // backward data: 1 for dx +=, 0 for dx = (every element is written)
}

@group(0) @binding(0) var<uniform> p: Norm;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read> dy: array<f32>;
@group(0) @binding(3) var<storage, read> gamma: array<f32>;
@group(0) @binding(4) var<storage, read> beta: array<f32>;
@group(0) @binding(5) var<storage, read_write> mean: array<f32>;
@group(0) @binding(6) var<storage, read_write> invstd: array<f32>;
@group(0) @binding(7) var<storage, read_write> running_mean: array<f32>;
@group(0) @binding(8) var<storage, read_write> running_var: array<f32>;
@group(0) @binding(9) var<storage, read_write> part: array<f32>;
@group(0) @binding(10) var<storage, read_write> sums: array<f32>;
@group(0) @binding(11) var<storage, read_write> out: array<f32>;
@group(0) @binding(12) var<storage, read_write> dparam: array<f32>;

// The flat index in x of the first value of row `row` = (n, h) of channel c.
fn row_start(c: u32, row: u32) -> u32 {
    let n = row / p.h;
    let h = row % p.h;
    return ((n * p.c + c) * p.h + h) * p.w;
}

// Run `run` of channel c: rows first .. end.
struct Run { c: u32, run: u32, first: u32, end: u32 }

// The channel and run of invocation t (runs of one channel are C apart).
fn run_of(t: u32) -> Run {
    let c = t % p.c;
    let run = t / p.c;
    let first = run * p.rows;
    return Run(c, run, first, min(first + p.rows, p.n * p.h));
}

// The sum over runs, in order, of part[r * len + e].
fn add_runs(e: u32, len: u32) -> f32 {
    var sum = 0.0;
    for (var r = 0u; r < p.runs; r++) {
        sum += part[r * len + e];
    }
    return sum;
}

@compute @workgroup_size(WG)
fn batchnorm_sum_x(@builtin(global_invocation_id) id: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>) {
    let t = id.x + id.y * groups.x * WG;
    if t >= p.c * p.runs { return; } // the last group overhangs
    let r = run_of(t);
    var sum = 0.0;
    for (var row = r.first; row < r.end; row++) {
        for (var w = 0u; w < p.w; w++) {
            sum += x[row_start(r.c, row) + w];
        }
    }
    part[r.run * p.c + r.c] = sum;
}

// mean_c = sum x / M
@compute @workgroup_size(WG)
fn batchnorm_mean(@builtin(global_invocation_id) id: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>) {
    let c = id.x + id.y * groups.x * WG;
    if c >= p.c { return; }
    mean[c] = add_runs(c, p.c) / f32(p.n * p.h * p.w);
}

@compute @workgroup_size(WG)
fn batchnorm_sum_squares(@builtin(global_invocation_id) id: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>) {
    let t = id.x + id.y * groups.x * WG;
    if t >= p.c * p.runs { return; }
    let r = run_of(t);
    var sum = 0.0;
    for (var row = r.first; row < r.end; row++) {
        for (var w = 0u; w < p.w; w++) {
            let d = x[row_start(r.c, row) + w] - mean[r.c];
            sum += d * d;
        }
    }
    part[r.run * p.c + r.c] = sum;
}

// var_c = sum (x - mean_c)^2 / M, invstd_c, and the running statistics' step.
@compute @workgroup_size(WG)
fn batchnorm_stats(@builtin(global_invocation_id) id: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>) {
    let c = id.x + id.y * groups.x * WG;
    if c >= p.c { return; }
    let m = f32(p.n * p.h * p.w);
    let v = add_runs(c, p.c) / m;
    invstd[c] = 1.0 / sqrt(v + p.eps);
    running_mean[c] = (1.0 - p.momentum) * running_mean[c] + p.momentum * mean[c];
    running_var[c] = (1.0 - p.momentum) * running_var[c] + p.momentum * v * m / (m - 1.0);
}

@compute @workgroup_size(WG)
fn batchnorm_stats_running(@builtin(global_invocation_id) id: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>) {
    let c = id.x + id.y * groups.x * WG;
    if c >= p.c { return; }
    mean[c] = running_mean[c];
    invstd[c] = 1.0 / sqrt(running_var[c] + p.eps);
}

@compute @workgroup_size(WG)
fn batchnorm_forward(@builtin(global_invocation_id) id: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>) {
    let e = id.x + id.y * groups.x * WG; // y[n,c,h,w]
    if e >= p.n * p.c * p.h * p.w { return; }
    let c = e / (p.h * p.w) % p.c;
    let xhat = (x[e] - mean[c]) * invstd[c];
    out[e] = gamma[c] * xhat + beta[c];
}

// part[run, c] = sum dy and part[run, C + c] = sum dy xhat over the run (len = 2C).
@compute @workgroup_size(WG)
fn batchnorm_sum_backward(@builtin(global_invocation_id) id: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>) {
    let t = id.x + id.y * groups.x * WG;
    if t >= p.c * p.runs { return; }
    let r = run_of(t);
    var sum_dy = 0.0;
    var sum_dy_xhat = 0.0;
    for (var row = r.first; row < r.end; row++) {
        for (var w = 0u; w < p.w; w++) {
            let e = row_start(r.c, row) + w;
            let xhat = (x[e] - mean[r.c]) * invstd[r.c];
            sum_dy += dy[e];
            sum_dy_xhat += dy[e] * xhat;
        }
    }
    part[r.run * 2u * p.c + r.c] = sum_dy;
    part[r.run * 2u * p.c + p.c + r.c] = sum_dy_xhat;
}

// sums[e] = the runs' sums of the backward, added in run order (e < 2C).
@compute @workgroup_size(WG)
fn batchnorm_backward_sums(@builtin(global_invocation_id) id: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>) {
    let e = id.x + id.y * groups.x * WG;
    if e >= 2u * p.c { return; }
    sums[e] = add_runs(e, 2u * p.c);
}

@compute @workgroup_size(WG)
fn batchnorm_backward_data(@builtin(global_invocation_id) id: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>) {
    let e = id.x + id.y * groups.x * WG; // dx[n,c,h,w]
    if e >= p.n * p.c * p.h * p.w { return; }
    let c = e / (p.h * p.w) % p.c;
    var g: f32;
    if p.train != 0u {
        // The statistics are functions of x: dx = gamma invstd / M (M dy - sum(dy) - xhat sum(dy xhat)).
        let m = f32(p.n * p.h * p.w);
        let xhat = (x[e] - mean[c]) * invstd[c];
        g = gamma[c] * invstd[c] / m * (m * dy[e] - sums[c] - xhat * sums[p.c + c]);
    } else {
        // Constant statistics: y = gamma (x - mean) invstd + beta  =>  dx = dy gamma invstd.
        g = dy[e] * gamma[c] * invstd[c];
    }
    if p.accumulate != 0u {
        g = out[e] + g;
    }
    out[e] = g;
}

// forward: y = gamma xhat + beta  =>  dgamma_c += sum(dy xhat)
@compute @workgroup_size(WG)
fn batchnorm_backward_gamma(@builtin(global_invocation_id) id: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>) {
    let c = id.x + id.y * groups.x * WG;
    if c >= p.c { return; }
    dparam[c] += sums[p.c + c];
}

// forward: y = gamma xhat + beta  =>  dbeta_c += sum(dy)
@compute @workgroup_size(WG)
fn batchnorm_backward_beta(@builtin(global_invocation_id) id: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>) {
    let c = id.x + id.y * groups.x * WG;
    if c >= p.c { return; }
    dparam[c] += sums[c];
}
