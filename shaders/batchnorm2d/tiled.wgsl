// batchnorm2d/tiled.wgsl: 2-D batch normalisation over NCHW (statistics per channel c over
// its M = N*H*W values), forward and backward, with deterministic tree reductions.
//   statistics (training): mean_c = sum x / M,  var_c = sum (x - mean_c)^2 / M  (biased),
//     invstd_c = 1 / sqrt(var_c + eps); running_mean = (1-momentum) running_mean + momentum mean,
//     running_var = (1-momentum) running_var + momentum var * M / (M - 1)   (unbiased, as PyTorch)
//   statistics (evaluation): mean_c = running_mean_c, invstd_c = 1 / sqrt(running_var_c + eps)
//   forward : xhat = (x - mean_c) * invstd_c,   z = gamma_c * xhat + beta_c,   y = epilogue(z)
//   epilogue (RELU, DROPOUT: pipeline constants, as in shaders/conv2d/tiled.wgsl): the identity y = z, ReLU
//     y = max(z, 0), or ReLU then inverted dropout y = keep(i) * max(z, 0) / (1 - p), with keep(i)
//     dropout.wgsl's hash of (seed, flat index i of y), bit for bit. The activation then makes
//     no round trip through memory, forward or backward.
//   backward through the epilogue, on the fly wherever dy is read:
//     dz = dy * (z > 0) * keep(i) * scale   (scale = 1 / (1 - p) with DROPOUT, else 1; keep
//     only with DROPOUT), or dz = dy for the identity. The gate is y > 0, but y is never read:
//     z comes from x (read anyway) by the forward's own function `affine`, so it has the same
//     bits, and keep(i) from the hash. Reading y cost 40% of the fused backward on lavapipe.
//     Then, with sums over channel c:
//   backward (training, the statistics depend on x):
//     dx += gamma_c invstd_c / M * (M dz - sum(dz) - xhat sum(dz xhat)),
//     dgamma_c += sum(dz xhat),  dbeta_c += sum(dz)
//   backward (evaluation, constant statistics): dx += dz gamma_c invstd_c
//   (dx = ... instead of dx += ... where the pipeline constant ACCUMULATE is false)
// Variance is never E[x^2] - E[x]^2 (which cancels catastrophically when |mean| >> std):
// each thread runs Welford's update over its values, and partial (count, mean, M2)
// triples merge with Chan's formula, exact in real arithmetic and stable in floats:
//   n = na + nb,  d = mean_b - mean_a,  mean = mean_a + d nb / n,  M2 = M2a + M2b + d^2 na nb / n
// (counts are f32: exact up to 2^24 values a channel, and only weights beyond that).
//
// Reductions run in two passes so that a channel with a large M (262144 at the top U-Net
// level, where there are only 16 channels) spreads over many workgroups:
//   pass 1 (`*_partial`): workgroup (s, c) reduces chunk s (values s*chunk .. (s+1)*chunk
//     of channel c in (n, h, w) order) to one partial; threads stride by WG through the
//     chunk (coalesced loads), then a shared-memory tree merges the WG threads' results.
//   pass 2 (`*_final`): one workgroup per channel merges its `splits` <= WG partials with
//     the same tree. Every merge happens in a fixed order: results are bit-for-bit
//     repeatable, with no atomics.
// Entry points and their bindings (group 0; 0 is always the uniform Params
// {n, c, hw, splits, chunk, momentum, eps, which, drop_threshold, drop_seed_lo, drop_seed_hi,
// drop_scale}):
//   batchnorm_stats_partial       1 x                                  9 partial (3 per split)
//   batchnorm_stats_final         5 mean 6 invstd 7 running_mean 8 running_var 9 partial
//   batchnorm_stats_running       5 mean 6 invstd 7 running_mean 8 running_var
//   batchnorm_forward             1 x 3 gamma 4 beta 5 mean 6 invstd   11 y
//   batchnorm_backward_partial    1 x 2 dy 3 gamma 4 beta 5 mean 6 invstd   9 partial (2 per split)
//   batchnorm_backward_final      9 partial                            10 sums [sum dz | sum dz xhat]
//   batchnorm_backward_data       1 x 2 dy 3 gamma 4 beta 5 mean 6 invstd 10 sums   11 dx
//   batchnorm_backward_data_eval  1 x 2 dy 3 gamma 4 beta 5 mean 6 invstd   11 dx
//   batchnorm_backward_param      10 sums                              11 dgamma | dbeta
// Where H*W is a multiple of 4 (every U-Net level), the host runs the `*_vec4` twins of
// the entry points that touch N*C*H*W values: the same math on aligned quads of 4
// neighbouring pixels of one plane, through vec4 views of the same buffers (13 x, 14 dy,
// 15 out, in place of 1, 2, 11). A CPU driver moves vec4s 2-3x faster than
// scalars, and the Welford update then divides once per quad (the quad's own mean and
// M2 merge in by Chan's formula). The scalar entry points serve every other shape.
// The backward entry points own bindings 3 and 4 (gamma, beta) whatever the constants
// (the layout is reflected before they are applied): the host binds them for the identity
// epilogue too, whose gate reads neither.
// WG = 256 threads (a power of two, for the tree) by default. Pass 1 gets fewer (down to
// 32) where a channel is too small to give 256 threads 64 values each, and pass 2 one
// thread per partial (rounded up to a power of two), so that no tree runs over idle
// threads. Elementwise entry points use one thread per element (or quad), a row of
// workgroups per (n, c) plane, of at most one plane's units (rounded up to 8); the
// per-channel ones (running, param) one thread per channel.
// #include batchnorm2d/tiled_common.wgsl

@compute @workgroup_size(WG)
fn batchnorm_stats_partial(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) t: u32) {
    let s = wid.x;
    let c = wid.y;
    let start = s * p.chunk;
    let end = min(start + p.chunk, p.n * p.hw);
    // Welford over this thread's values of the chunk.
    var count = 0.0;
    var mu = 0.0;
    var m2 = 0.0;
    var w = walk_start(start + t, p.hw);
    for (var m = start + t; m < end; m += WG) {
        let v = x[walk_index(w, c, p.hw)];
        walk_next(&w, p.hw);
        count += 1.0;
        let d = v - mu;
        mu += d / count;
        m2 += d * (v - mu);
    }
    store_triple(t, c, s, count, mu, m2);
}

// Merges the workgroup's per-thread triples and stores the result as partial s of channel c.
fn store_triple(t: u32, c: u32, s: u32, count: f32, mu: f32, m2: f32) {
    t0[t] = count;
    t1[t] = mu;
    t2[t] = m2;
    tree(t, true);
    if t == 0u {
        let k = 3u * (c * p.splits + s);
        partial[k] = t0[0];
        partial[k + 1u] = t1[0];
        partial[k + 2u] = t2[0];
    }
}

@compute @workgroup_size(WG)
fn batchnorm_stats_partial_vec4(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) t: u32) {
    let s = wid.x;
    let c = wid.y;
    let hw4 = p.hw / 4u;
    let start = s * (p.chunk / 4u); // the host keeps chunks a multiple of 4 values
    let end = min(start + p.chunk / 4u, p.n * hw4);
    var count = 0.0;
    var mu = 0.0;
    var m2 = 0.0;
    var w = walk_start(start + t, hw4);
    for (var m = start + t; m < end; m += WG) {
        let v = x4[walk_index(w, c, hw4)];
        walk_next(&w, hw4);
        // The quad's (4, mean, M2), merged into the thread's triple by Chan's formula.
        let quad_mean = (v.x + v.y + v.z + v.w) * 0.25;
        let e = v - quad_mean;
        count += 4.0;
        let d = quad_mean - mu;
        let f = 4.0 / count;
        mu += d * f;
        m2 += dot(e, e) + d * d * (count - 4.0) * f;
    }
    store_triple(t, c, s, count, mu, m2);
}

@compute @workgroup_size(WG)
fn batchnorm_stats_final(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) t: u32) {
    let c = wid.x;
    if t < p.splits {
        let k = 3u * (c * p.splits + t);
        t0[t] = partial[k];
        t1[t] = partial[k + 1u];
        t2[t] = partial[k + 2u];
    } else {
        t0[t] = 0.0;
        t1[t] = 0.0;
        t2[t] = 0.0;
    }
    tree(t, true);
    if t == 0u {
        let count = f32(p.n * p.hw);
        let var_biased = t2[0] / count;
        mean[c] = t1[0];
        invstd[c] = 1.0 / sqrt(var_biased + p.eps);
        // The host refuses M = 1 in training (as PyTorch does): M - 1 > 0 here.
        let var_unbiased = t2[0] / (count - 1.0);
        running_mean[c] = (1.0 - p.momentum) * running_mean[c] + p.momentum * t1[0];
        running_var[c] = (1.0 - p.momentum) * running_var[c] + p.momentum * var_unbiased;
    }
}

@compute @workgroup_size(WG)
fn batchnorm_stats_running(@builtin(global_invocation_id) id: vec3<u32>) {
    let c = id.x;
    if c >= p.c { return; }
    mean[c] = running_mean[c];
    invstd[c] = 1.0 / sqrt(running_var[c] + p.eps);
}

// The two round keys from the seed, the same for every element.
fn drop_keys() -> vec2<u32> {
    return hash_keys(p.drop_seed_lo, p.drop_seed_hi);
}

// Whether element i of y survives the dropout: bits(i) >= threshold.
fn kept(keys: vec2<u32>, i: u32) -> bool {
    return hash_bits(keys, i) >= p.drop_threshold;
}

// kept() for the quad of elements i .. i + 3 (the keys hashed once).
fn kept4(i: u32) -> vec4<bool> {
    let k = drop_keys();
    return vec4(kept(k, i), kept(k, i + 1u), kept(k, i + 2u), kept(k, i + 3u));
}

// y[i] from z = gamma xhat + beta: ReLU, then inverted dropout, as the constants ask. The same
// operations as relu.wgsl then dropout.wgsl, so the same bits.
fn epilogue(z: f32, i: u32) -> f32 {
    var v = z;
    if RELU {
        v = max(v, 0.0);
    }
    if DROPOUT {
        v = select(0.0, v * p.drop_scale, kept(drop_keys(), i));
    }
    return v;
}

// epilogue() on the quad of elements i .. i + 3.
fn epilogue4(z: vec4<f32>, i: u32) -> vec4<f32> {
    var v = z;
    if RELU {
        v = max(v, vec4(0.0));
    }
    if DROPOUT {
        v = select(vec4(0.0), v * p.drop_scale, kept4(i));
    }
    return v;
}

// z = gamma_c xhat + beta_c from x: the forward's expression, shared so that the backward's
// gate sees the same bits.
fn affine(v: f32, c: u32) -> f32 {
    return (v - mean[c]) * (invstd[c] * gamma[c]) + beta[c];
}

fn affine4(v: vec4<f32>, c: u32) -> vec4<f32> {
    return (v - mean[c]) * (invstd[c] * gamma[c]) + beta[c];
}

// dz[i] from dy[i] (g) and x[i] (v) of channel c, through the epilogue:
// forward: y = keep(i) * max(z, 0) * scale  =>  dz = dy * scale where z > 0 and keep(i), else 0
// (scale 1 and no keep without DROPOUT; the identity passes dy through).
fn gate(g: f32, v: f32, c: u32, i: u32) -> f32 {
    if RELU {
        var open = affine(v, c) > 0.0;
        if DROPOUT {
            open = open && kept(drop_keys(), i);
        }
        return select(0.0, g * select(1.0, p.drop_scale, DROPOUT), open);
    }
    return g;
}

// gate() on quad q (elements 4q .. 4q + 3).
fn gate4(g: vec4<f32>, v: vec4<f32>, c: u32, q: u32) -> vec4<f32> {
    if RELU {
        var open = affine4(v, c) > vec4(0.0);
        if DROPOUT {
            open = open & kept4(4u * q);
        }
        return select(vec4(0.0), g * select(1.0, p.drop_scale, DROPOUT), open);
    }
    return g;
}

// Elementwise entry points run on a 2-D grid: y = the (n, c) plane, x = WG pixels of
// it. The channel is then the same for the whole workgroup (its parameters are
// uniform loads) and no thread divides to find it.
@compute @workgroup_size(WG)
fn batchnorm_forward(@builtin(global_invocation_id) id: vec3<u32>) {
    if id.x >= p.hw { return; } // the last group of a plane overhangs
    let c = id.y % p.c;
    let i = id.y * p.hw + id.x;
    out[i] = epilogue(affine(x[i], c), i);
}

// batchnorm_forward on quads: x = the quads of the plane.
@compute @workgroup_size(WG)
fn batchnorm_forward_vec4(@builtin(global_invocation_id) id: vec3<u32>) {
    let hw4 = p.hw / 4u;
    if id.x >= hw4 { return; }
    let c = id.y % p.c;
    let q = id.y * hw4 + id.x;
    out4[q] = epilogue4(affine4(x4[q], c), 4u * q);
}

@compute @workgroup_size(WG)
fn batchnorm_backward_partial(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) t: u32) {
    let s = wid.x;
    let c = wid.y;
    let start = s * p.chunk;
    let end = min(start + p.chunk, p.n * p.hw);
    let mu = mean[c];
    let r = invstd[c];
    var sum_dz = 0.0;
    var sum_dz_xhat = 0.0;
    var w = walk_start(start + t, p.hw);
    for (var m = start + t; m < end; m += WG) {
        let k = walk_index(w, c, p.hw);
        walk_next(&w, p.hw);
        let v = x[k];
        let dz = gate(dy[k], v, c, k);
        sum_dz += dz;
        sum_dz_xhat += dz * (v - mu) * r;
    }
    store_sums(t, c, s, sum_dz, sum_dz_xhat);
}

// Adds up the workgroup's per-thread sums and stores them as partial s of channel c.
fn store_sums(t: u32, c: u32, s: u32, sum_dz: f32, sum_dz_xhat: f32) {
    t0[t] = sum_dz;
    t1[t] = sum_dz_xhat;
    tree(t, false);
    if t == 0u {
        let k = 2u * (c * p.splits + s);
        partial[k] = t0[0];
        partial[k + 1u] = t1[0];
    }
}

@compute @workgroup_size(WG)
fn batchnorm_backward_partial_vec4(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) t: u32) {
    let s = wid.x;
    let c = wid.y;
    let hw4 = p.hw / 4u;
    let start = s * (p.chunk / 4u);
    let end = min(start + p.chunk / 4u, p.n * hw4);
    let mu = mean[c];
    let r = invstd[c];
    var sum_dz = vec4(0.0);
    var sum_dz_xhat = vec4(0.0);
    var w = walk_start(start + t, hw4);
    for (var m = start + t; m < end; m += WG) {
        let k = walk_index(w, c, hw4);
        walk_next(&w, hw4);
        let v = x4[k];
        let dz = gate4(dy4[k], v, c, k);
        sum_dz += dz;
        sum_dz_xhat += dz * (v - mu) * r;
    }
    let ones = vec4(1.0);
    store_sums(t, c, s, dot(sum_dz, ones), dot(sum_dz_xhat, ones));
}

@compute @workgroup_size(WG)
fn batchnorm_backward_final(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) t: u32) {
    let c = wid.x;
    if t < p.splits {
        let k = 2u * (c * p.splits + t);
        t0[t] = partial[k];
        t1[t] = partial[k + 1u];
    } else {
        t0[t] = 0.0;
        t1[t] = 0.0;
    }
    tree(t, false);
    if t == 0u {
        sums[c] = t0[0];
        sums[p.c + c] = t1[0];
    }
}

@compute @workgroup_size(WG)
fn batchnorm_backward_data(@builtin(global_invocation_id) id: vec3<u32>) {
    if id.x >= p.hw { return; }
    let c = id.y % p.c;
    let i = id.y * p.hw + id.x;
    let inv_m = 1.0 / f32(p.n * p.hw);
    let v = x[i];
    let xhat = (v - mean[c]) * invstd[c];
    // forward: z = gamma (x - mean(x)) / sqrt(var(x) + eps) + beta, with mean and var
    // over the channel's M values  =>  dx += gamma invstd / M (M dz - sum dz - xhat sum dz xhat)
    store_dx(i, gamma[c] * invstd[c] * (gate(dy[i], v, c, i) - sums[c] * inv_m - xhat * (sums[p.c + c] * inv_m)));
}

// dx[i] += g, or dx[i] = g without ACCUMULATE; dx4 likewise for quad q.
fn store_dx(i: u32, g: f32) {
    if ACCUMULATE {
        out[i] += g;
    } else {
        out[i] = g;
    }
}

fn store_dx4(q: u32, g: vec4<f32>) {
    if ACCUMULATE {
        out4[q] += g;
    } else {
        out4[q] = g;
    }
}

@compute @workgroup_size(WG)
fn batchnorm_backward_data_vec4(@builtin(global_invocation_id) id: vec3<u32>) {
    let hw4 = p.hw / 4u;
    if id.x >= hw4 { return; }
    let c = id.y % p.c;
    let q = id.y * hw4 + id.x;
    let inv_m = 1.0 / f32(p.n * p.hw);
    let v = x4[q];
    let xhat = (v - mean[c]) * invstd[c];
    store_dx4(q, gamma[c] * invstd[c] * (gate4(dy4[q], v, c, q) - sums[c] * inv_m - xhat * (sums[p.c + c] * inv_m)));
}

@compute @workgroup_size(WG)
fn batchnorm_backward_data_eval(@builtin(global_invocation_id) id: vec3<u32>) {
    if id.x >= p.hw { return; }
    let c = id.y % p.c;
    let i = id.y * p.hw + id.x;
    // forward: z = gamma (x - running_mean) invstd + beta  =>  dx += dz gamma invstd
    store_dx(i, gate(dy[i], x[i], c, i) * gamma[c] * invstd[c]);
}

@compute @workgroup_size(WG)
fn batchnorm_backward_data_eval_vec4(@builtin(global_invocation_id) id: vec3<u32>) {
    let hw4 = p.hw / 4u;
    if id.x >= hw4 { return; }
    let c = id.y % p.c;
    let q = id.y * hw4 + id.x;
    store_dx4(q, gate4(dy4[q], x4[q], c, q) * gamma[c] * invstd[c]);
}

@compute @workgroup_size(WG)
fn batchnorm_backward_param(@builtin(global_invocation_id) id: vec3<u32>) {
    let c = id.x;
    if c >= p.c { return; }
    // forward: z = gamma xhat + beta  =>  dgamma += sum dz xhat,  dbeta += sum dz
    out[c] += sums[p.which * p.c + c];
}

// #include common/dropout_hash.wgsl
