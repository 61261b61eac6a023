// batchnorm2d/tiled_common.wgsl: the declarations of the tiled batch-norm kernels
// (batchnorm2d/tiled.wgsl includes it): the pipeline constants, the uniform Params, the bindings,
// and the workgroup reduction they all use (the scratch, the walk over a channel's values, Chan's
// merge of Welford triples and the fixed-order tree). The math is in batchnorm2d/tiled.wgsl's
// header.
override WG: u32 = 256u;
// Epilogue of the forward, and the gate of dy in the backward (see the header). Pipeline
// constants rather than uniforms: the unfused kernels carry no branch and no extra load.
override RELU: bool = false;
override DROPOUT: bool = false;
// The backward's dx: added into (dx += ..., the default), or overwritten (dx = ...) when the
// tape hands over a fresh, unzeroed gradient buffer (every element is written).
override ACCUMULATE: bool = true;

struct Params {
    n: u32,
    c: u32,
    hw: u32,
    splits: u32,    // partials per channel (pass-1 workgroups along x)
    chunk: u32,     // values of a channel per partial
    momentum: f32,
    eps: f32,
    which: u32,     // batchnorm_backward_param: 0 adds sum dz (dbeta), 1 sum dz xhat (dgamma)
    // Epilogue dropout: keep when bits(i) >= drop_threshold; kept values are scaled by
    // drop_scale = 1 / (1 - p). The seed is split in two u32 halves (WGSL has no u64).
    drop_threshold: u32,
    drop_seed_lo: u32,
    drop_seed_hi: u32,
    drop_scale: f32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read> dy: array<f32>;
@group(0) @binding(3) var<storage, read> gamma: array<f32>;
@group(0) @binding(4) var<storage, read> beta: array<f32>;
@group(0) @binding(5) var<storage, read_write> mean: array<f32>;
@group(0) @binding(6) var<storage, read_write> invstd: array<f32>;
@group(0) @binding(7) var<storage, read_write> running_mean: array<f32>;
@group(0) @binding(8) var<storage, read_write> running_var: array<f32>;
@group(0) @binding(9) var<storage, read_write> partial: array<f32>;
@group(0) @binding(10) var<storage, read_write> sums: array<f32>;
@group(0) @binding(11) var<storage, read_write> out: array<f32>;
@group(0) @binding(13) var<storage, read> x4: array<vec4<f32>>;
@group(0) @binding(14) var<storage, read> dy4: array<vec4<f32>>;
@group(0) @binding(15) var<storage, read_write> out4: array<vec4<f32>>;

// Welford/Chan triples (count, mean, M2) and plain sums share this scratch.
var<workgroup> t0: array<f32, WG>;
var<workgroup> t1: array<f32, WG>;
var<workgroup> t2: array<f32, WG>;

// Walks the values m = first, first + WG, ... of channel c (in (n, h, w) order) and
// yields their indices in x without a division per value: the stride WG advances
// the image n by WG / hw and the pixel q by WG % hw, carrying into n when q passes hw.
// `hw` counts the plane's units: values, or quads of 4 values for the vec4 entry points.
struct Walk { n: u32, q: u32 }

fn walk_start(first: u32, hw: u32) -> Walk {
    let n = first / hw;
    return Walk(n, first - n * hw);
}

fn walk_index(w: Walk, c: u32, hw: u32) -> u32 {
    return (w.n * p.c + c) * hw + w.q;
}

fn walk_next(w: ptr<function, Walk>, hw: u32) {
    let dn = WG / hw;
    (*w).n += dn;
    (*w).q += WG - dn * hw;
    if (*w).q >= hw {
        (*w).q -= hw;
        (*w).n += 1u;
    }
}

// Chan's merge of triple b into triple a (slots i and j of the scratch), into slot i.
fn merge(i: u32, j: u32) {
    let na = t0[i];
    let nb = t0[j];
    let n = na + nb;
    if nb == 0.0 { return; } // also covers n == 0: nothing to divide
    let d = t1[j] - t1[i];
    let f = nb / n;
    t0[i] = n;
    t1[i] += d * f;
    t2[i] += t2[j] + d * d * na * f;
}

// Tree over the WG slots of t0..t2 (merge of triples when `triples`, else sums of
// t0 and t1); the result lands in slot 0. Same order every run.
fn tree(t: u32, triples: bool) {
    workgroupBarrier();
    for (var stride = WG / 2u; stride > 0u; stride >>= 1u) {
        if t < stride {
            if triples {
                merge(t, t + stride);
            } else {
                t0[t] += t0[t + stride];
                t1[t] += t1[t + stride];
            }
        }
        workgroupBarrier();
    }
}
