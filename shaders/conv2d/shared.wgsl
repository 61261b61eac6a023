// conv2d/shared.wgsl: the forward convolution as the classic GPU GEMM, tiled through workgroup
// memory, NCHW, weights OIHW.
//   y[n,o,oh,ow] = b[o] + sum_{i,kh,kw} w[o,i,kh,kw] * x[n,i,oh*SH-ph+kh, ow*SW-pw+kw]
// As a GEMM M = O, N = N*OH*OW, K = I*KH*KW, the im2col matrix read through the index map. What it
// adds over conv2d/textbook.wgsl: a workgroup of TX*TY threads computes a BM x BN block
// (BM = TY*SM output channels, BN = TX*SN output pixels), stepping through K in slices of BK: the
// whole group copies a BM x BK slice of w and a BK x BN slice of the virtual im2col matrix into
// workgroup memory, then each thread multiplies SM x SN outputs out of it. Many threads share each
// global load, which is what a hardware GPU needs; chosen when the tuning says so. Bindings,
// Params and the other pipeline constants: conv2d/tiled_common.wgsl.
// #include conv2d/tiled_common.wgsl

// Workgroup tiling (forward).
override TX: u32 = 16u; // threads along pixels
override TY: u32 = 16u; // threads along output channels
override SM: u32 = 4u; // output channels a thread (<= 8)
override SN: u32 = 4u; // pixels a thread (<= 8)
override BK: u32 = 16u; // K slice a step
const MAX_TILE: u32 = 2048u; // BM*BK and BK*BN must fit

var<workgroup> w_tile: array<f32, MAX_TILE>; // [BK][BM]
var<workgroup> x_tile: array<f32, MAX_TILE>; // [BK][BN]

@compute @workgroup_size(TX, TY)
fn conv2d_forward_shared(
    @builtin(local_invocation_id) lid: vec3<u32>,
    @builtin(workgroup_id) wid: vec3<u32>,
) {
    let bm = TY * SM;
    let bn = TX * SN;
    let o_base = wid.y * bm;
    let p_base = wid.x * bn;
    let taps = KH * KW;
    let k_len = p.ci * taps;
    let pixels = p.n * p.oh * p.ow;
    let plane_out = p.oh * p.ow;
    let tid = lid.y * TX + lid.x;
    let threads = TX * TY;
    var sacc: array<f32, 64>;
    for (var k0 = 0u; k0 < k_len; k0 += BK) {
        // Cooperative copy: thread tid fills elements tid, tid+threads, ... of each slice.
        for (var e = tid; e < BK * bm; e += threads) {
            let kk = e / bm;
            let mm = e % bm;
            let o = o_base + mm;
            let k = k0 + kk;
            let inside = o < p.co && k < k_len;
            w_tile[e] = select(0.0, wt[select(0u, o * k_len + k, inside)], inside);
        }
        for (var e = tid; e < BK * bn; e += threads) {
            let kk = e / bn;
            let nn = e % bn;
            let px = p_base + nn;
            let k = k0 + kk;
            // Virtual im2col element (k = (i, kh, kw), px = (n, oh, ow)).
            let i = k / taps;
            let kh = (k % taps) / KW;
            let kw = k % KW;
            let n = px / plane_out;
            let oh = (px % plane_out) / p.ow;
            let ow = px % p.ow;
            let ih = i32(oh * SH + kh) - i32(p.ph);
            let iw = i32(ow * SW + kw) - i32(p.pw);
            let v = read_padded((n * p.ci + i) * p.h * p.w, ih, iw, p.h, p.w);
            x_tile[e] = select(0.0, v, px < pixels && k < k_len);
        }
        workgroupBarrier();
        for (var kk = 0u; kk < BK; kk++) {
            var a: array<f32, 8>;
            var bv: array<f32, 8>;
            for (var m = 0u; m < SM; m++) {
                a[m] = w_tile[kk * bm + lid.y + m * TY];
            }
            for (var j = 0u; j < SN; j++) {
                bv[j] = x_tile[kk * bn + lid.x + j * TX];
            }
            for (var m = 0u; m < SM; m++) {
                for (var j = 0u; j < SN; j++) {
                    sacc[m * SN + j] = fma(a[m], bv[j], sacc[m * SN + j]);
                }
            }
        }
        workgroupBarrier(); // the next copy overwrites the tiles
    }
    // Thread (lid.x, lid.y) owns channels o_base + lid.y + m*TY and pixels p_base + lid.x + j*TX:
    // strided so that neighbouring threads touch neighbouring pixels (coalesced stores).
    for (var m = 0u; m < SM; m++) {
        let o = o_base + lid.y + m * TY;
        if o >= p.co { break; }
        for (var j = 0u; j < SN; j++) {
            let px = p_base + lid.x + j * TX;
            if px >= pixels { break; }
            let n = px / plane_out;
            let rest = px % plane_out;
            dst[(n * p.co + o) * plane_out + rest] = sacc[m * SN + j] + select(0.0, bias[o], p.has_bias != 0u);
        }
    }
}
