// conv_transpose2d/textbook.wgsl: 2x2 transposed convolution with stride 2 (the U-Net's
// up-convolution) as the formulas read: one invocation per output element, loops in the order of
// the sums, no tiling, no workgroup memory. The oracle the tiled kernels of shaders/conv_transpose2d/tiled.wgsl
// are tested against, and what `--kernels reference` runs.
//   x [N,I,H,W], w [I,O,2,2] (PyTorch layout), b [O], y [N,C,2H,2W] with C >= O: the result fills
//   channels 0..O of y (C > O when y is a concatenation buffer; dy is read the same way).
//   forward        : y[n,o,2i+a,2j+b] = b[o] + sum_c x[n,c,i,j] * w[c,o,a,b]
//   backward data  : dx[n,c,i,j] (+)= sum_{o,a,b} dy[n,o,2i+a,2j+b] * w[c,o,a,b]
//   backward weight: dw[c,o,a,b]  += sum_{n,i,j} x[n,c,i,j] * dy[n,o,2i+a,2j+b]
//   backward bias  : db[o]        += sum_{n,Y,X} dy[n,o,Y,X]
// The windows do not overlap (stride = kernel size), so every output element has exactly one input
// pixel and one tap. The weight and bias sums run over every pixel (N*H*W, N*2H*2W), more than
// lavapipe lets an invocation loop over (it ends a shader's loops once an invocation has run 65,535
// iterations in all): they are cut, in order, into `runs` runs of `rows` rows of pixels (of x for
// the weight, of dy for the bias), whose sums go to `part` and are added in run order by
// conv_transpose2d_add_runs.
//
// group 0:  0 uniform ConvT (below)
//   1 read x [N,I,H,W]   2 read w [I,O,2,2]   3 read b [O] (forward, when has_bias)
//   4 read_write y [N,C,2H,2W]   5 read dy [N,C,2H,2W]   6 read_write dx [N,I,H,W]
//   7 read_write part [runs, len]: the runs' sums   8 read_write dw | db, added into
// 64 threads a workgroup, one output element each: a multiple of the SIMD width of every GPU (32
// or 64) and of lavapipe (8); with no workgroup memory the size sets only how finely the dispatch
// is cut. The group count folds into x and y (at most 65535 each): the flat index of the output
// element is id.x + id.y * groups.x * WG.
const WG: u32 = 64u;

struct ConvT {
    n: u32, ci: u32, h: u32, w: u32, // x: [N, I, H, W]
    co: u32, // w: [I, O, 2, 2]
    yc: u32, // channels of y and dy: O, or more in a concatenation buffer
    has_bias: u32, // forward: 1 when b is bound
    accumulate: u32, // backward data: 1 for dx +=, 0 for dx = (every element is written)
    rows: u32, // weight and bias sums: rows of a run ((n, i) of x, or (n, Y) of dy)
    runs: u32, // runs of the sums
    len: u32, // conv_transpose2d_add_runs: elements of dw or db
}

@group(0) @binding(0) var<uniform> p: ConvT;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read> w: array<f32>;
@group(0) @binding(3) var<storage, read> b: array<f32>;
@group(0) @binding(4) var<storage, read_write> y: array<f32>;
@group(0) @binding(5) var<storage, read> dy: array<f32>;
@group(0) @binding(6) var<storage, read_write> dx: array<f32>;
@group(0) @binding(7) var<storage, read_write> part: array<f32>;
@group(0) @binding(8) var<storage, read_write> grad: array<f32>;

// Flat index of y[n,o,Y,X] (or dy's) in a tensor of yc channels.
fn y_index(n: u32, o: u32, row: u32, col: u32) -> u32 {
    return ((n * p.yc + o) * 2u * p.h + row) * 2u * p.w + col;
}

fn w_at(c: u32, o: u32, a: u32, b: u32) -> f32 {
    return w[((c * p.co + o) * 2u + a) * 2u + b];
}

fn x_at(n: u32, c: u32, i: u32, j: u32) -> f32 {
    return x[((n * p.ci + c) * p.h + i) * p.w + j];
}

@compute @workgroup_size(WG)
fn conv_transpose2d_forward(@builtin(global_invocation_id) id: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>) {
    let e = id.x + id.y * groups.x * WG; // y[n,o,Y,X] over channels 0..O
    let h2 = 2u * p.h;
    let w2 = 2u * p.w;
    if e >= p.n * p.co * h2 * w2 { return; } // the last group overhangs
    let col = e % w2;
    let row = e / w2 % h2;
    let o = e / (w2 * h2) % p.co;
    let n = e / (w2 * h2 * p.co);
    let i = row / 2u;
    let a = row % 2u;
    let j = col / 2u;
    let bb = col % 2u;
    var sum = 0.0;
    for (var c = 0u; c < p.ci; c++) {
        sum += x_at(n, c, i, j) * w_at(c, o, a, bb);
    }
    if p.has_bias != 0u {
        sum = b[o] + sum;
    }
    y[y_index(n, o, row, col)] = sum;
}

@compute @workgroup_size(WG)
fn conv_transpose2d_backward_data(@builtin(global_invocation_id) id: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>) {
    let e = id.x + id.y * groups.x * WG; // dx[n,c,i,j]
    if e >= p.n * p.ci * p.h * p.w { return; }
    let j = e % p.w;
    let i = e / p.w % p.h;
    let c = e / (p.w * p.h) % p.ci;
    let n = e / (p.w * p.h * p.ci);
    // forward: y[n,o,2i+a,2j+b] += x[n,c,i,j] * w[c,o,a,b]  =>  dx[n,c,i,j] += dy[n,o,2i+a,2j+b] * w[c,o,a,b]
    var sum = 0.0;
    for (var o = 0u; o < p.co; o++) {
        for (var a = 0u; a < 2u; a++) {
            for (var bb = 0u; bb < 2u; bb++) {
                sum += dy[y_index(n, o, 2u * i + a, 2u * j + bb)] * w_at(c, o, a, bb);
            }
        }
    }
    if p.accumulate != 0u {
        sum = dx[e] + sum;
    }
    dx[e] = sum;
}

@compute @workgroup_size(WG)
fn conv_transpose2d_backward_weight(@builtin(global_invocation_id) id: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>) {
    let len = p.ci * p.co * 4u;
    let t = id.x + id.y * groups.x * WG; // run `run` of dw[c,o,a,b]
    if t >= len * p.runs { return; }
    let e = t % len;
    let run = t / len;
    let bb = e % 2u;
    let a = e / 2u % 2u;
    let o = e / 4u % p.co;
    let c = e / (4u * p.co);
    // forward: y[n,o,2i+a,2j+b] += x[n,c,i,j] * w[c,o,a,b]  =>  dw[c,o,a,b] += x[n,c,i,j] * dy[n,o,2i+a,2j+b]
    // over the rows (n, i) of x in this run, in order.
    var sum = 0.0;
    for (var row = run * p.rows; row < min((run + 1u) * p.rows, p.n * p.h); row++) {
        let n = row / p.h;
        let i = row % p.h;
        for (var j = 0u; j < p.w; j++) {
            sum += x_at(n, c, i, j) * dy[y_index(n, o, 2u * i + a, 2u * j + bb)];
        }
    }
    part[run * len + e] = sum;
}

@compute @workgroup_size(WG)
fn conv_transpose2d_backward_bias(@builtin(global_invocation_id) id: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>) {
    let t = id.x + id.y * groups.x * WG; // run `run` of db[o]
    if t >= p.co * p.runs { return; }
    let o = t % p.co;
    let run = t / p.co;
    // forward: y[n,o,Y,X] = b[o] + ...  =>  db[o] += dy[n,o,Y,X], over the rows (n, Y) of dy in
    // this run, in order.
    var sum = 0.0;
    for (var r = run * p.rows; r < min((run + 1u) * p.rows, p.n * 2u * p.h); r++) {
        let n = r / (2u * p.h);
        let row = r % (2u * p.h);
        for (var col = 0u; col < 2u * p.w; col++) {
            sum += dy[y_index(n, o, row, col)];
        }
    }
    part[run * p.co + o] = sum;
}

// grad[e] += sum over runs r, in order, of part[r * len + e] (grad: dw or db, len elements).
@compute @workgroup_size(WG)
fn conv_transpose2d_add_runs(@builtin(global_invocation_id) id: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>) {
    let e = id.x + id.y * groups.x * WG;
    if e >= p.len { return; }
    var sum = 0.0;
    for (var r = 0u; r < p.runs; r++) {
        sum += part[r * p.len + e];
    }
    grad[e] += sum;
}
