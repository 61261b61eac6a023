//! The backward kernels' dispatch: the gradient with respect to the input (`backward data`), to
//! the weights and bias (`backward weight`), and through a fused epilogue (bias, batch norm,
//! ReLU, dropout) back to the convolution's output.

use super::*;

const BACKWARD_SHADER: Shader = shader!("conv2d/tiled_backward");

/// `dx (+)= conv2d_backward_data(dy, w)`, into dx as `a.acc` says: added into, or overwritten
/// (every element is written, so a fresh gradient buffer needs no zeroing first; see
/// [`crate::autograd::tape::BackwardCtx::grad_to_fill`]). dy `[N,O,OH,OW]`, w `[O,I,KH,KW]`,
/// dx `[N,I,H,W]`. With `a.tiling` set, the register-tiled kernels with that tiling; otherwise
/// tiled as `gpu.tuning().conv2d_backward_data` says (or by the [`gemm`] kernels), or the
/// [`textbook`] kernel under [`Kernels::Reference`].
pub fn conv2d_backward_data(gpu: &Gpu, enc: &mut Encoder, a: &BackwardData) {
    let BackwardData { dy, w, dx, p, acc, tiling } = *a;
    match (tiling, gpu.kernels(), gpu.tuning().conv_gemm) {
        (Some(t), _, _) => backward_data(gpu, enc, a, &t),
        (None, Kernels::Tuned, Some(g)) => gemm::conv2d_backward_data_gemm(gpu, enc, a, &g.conv2d_backward_data),
        (None, Kernels::Tuned, None) => backward_data(gpu, enc, a, &gpu.tuning().conv2d_backward_data),
        (None, Kernels::Reference, _) => textbook::conv2d_backward_data(gpu, enc, dy, w, dx, p, acc),
    }
}

/// `dx (+)= conv2d_backward_data(dy, w)` with the register-tiled kernels.
pub(super) fn backward_data(gpu: &Gpu, enc: &mut Encoder, a: &BackwardData, t: &Tiling) {
    let BackwardData { dy, w, dx, p, acc, .. } = *a;
    let d = dims("conv2d backward data", dx, w, dy, &p);
    let [o, i, kh, kw] = d.w;
    if p.stride == [1, 1] && p.pad[0] < kh && p.pad[1] < kw {
        // forward: y = conv(x, w, pad p)  =>  dx += conv(dy, w', pad K-1-p), w'[i,o,a,b] = w[o,i,KH-1-a,KW-1-b]:
        // the forward kernel with the roles of the channels swapped, the taps flipped, adding into dx
        // (or, to overwrite it, the forward entry point itself, with no bias and no epilogue).
        let flipped = Conv2d { stride: [1, 1], pad: [kh - 1 - p.pad[0], kw - 1 - p.pad[1]] };
        let fd = Dims { x: d.y, w: [i, o, kh, kw], y: d.x };
        let mut params = fd.params(&flipped);
        (params.w_so, params.w_si, params.flip) = ((kh * kw) as u32, (i * kh * kw) as u32, 1);
        let entry = match acc {
            Accumulate::Add => "conv2d_backward_data_stride1",
            Accumulate::Overwrite => "conv2d_forward",
        };
        // The identity epilogue spelled out, so that the overwrite shares its pipeline with a
        // forward of the same shape and tiling (the head's 1x1, for one) instead of compiling
        // the same code again under another key.
        let f = Forward { x: dy, w, b: None, y: dx, p: flipped, epilogue: Epilogue::Identity, tiling: None };
        dispatch_tile(gpu, enc, entry, &fd, params, &f, t);
        return;
    }
    // The gather kernel only adds: overwriting is adding into zeros.
    if acc == Accumulate::Overwrite {
        enc.clear(dx);
    }
    let mut params = d.params(&p);
    params.tiles_w = params.w.div_ceil(TILE_COLS);
    params.tiles_h = params.h.div_ceil(GATHER_TILE_ROWS);
    params.tiles = params.n * params.tiles_w * params.tiles_h;
    let t = &t.for_tiles(params.tiles);
    let constants: Vec<_> = register_constants(t).into_iter().chain(d.kernel_constants(&p)).collect();
    let kernel = gpu.kernel(&BACKWARD_SHADER, "conv2d_backward_data", &constants);
    let groups = [params.tiles.div_ceil(t.wg), params.ci.div_ceil(2 * t.tm), 1];
    gpu.dispatch(enc, &kernel, &params, &[(1, dy), (2, w), (4, dx)], groups);
}

/// `dw += conv2d_backward_weight(x, dy)`, and `db += sum of dy over n, oh, ow` when `a.db` is
/// given. x `[N,I,H,W]`, dy `[N,O,OH,OW]`, dw `[O,I,KH,KW]`, db `[O]`. With `a.tiling` set, the
/// register-tiled kernels with that tiling; otherwise tiled as
/// `gpu.tuning().conv2d_backward_weight` says (or by the [`gemm`] kernels), or the [`textbook`]
/// kernel under [`Kernels::Reference`].
pub fn conv2d_backward_weight(gpu: &Gpu, enc: &mut Encoder, a: &BackwardWeight) {
    let BackwardWeight { x, dy, dw, db, p, tiling } = *a;
    match (tiling, gpu.kernels(), gpu.tuning().conv_gemm) {
        (Some(t), _, _) => backward_weight(gpu, enc, a, &t),
        (None, Kernels::Tuned, Some(g)) => gemm::conv2d_backward_weight_gemm(gpu, enc, a, &g.conv2d_backward_weight),
        (None, Kernels::Tuned, None) => backward_weight(gpu, enc, a, &gpu.tuning().conv2d_backward_weight),
        (None, Kernels::Reference, _) => textbook::conv2d_backward_weight(gpu, enc, x, dy, dw, db, p),
    }
}

/// The weight gradient by the register-tiled kernels with tiling `t`.
fn backward_weight(gpu: &Gpu, enc: &mut Encoder, a: &BackwardWeight, t: &Tiling) {
    let BackwardWeight { x, dy, dw, db, p, .. } = *a;
    if let Err(e) = t.check() {
        panic!("conv2d backward weight: {e}");
    }
    let d = dims("conv2d backward weight", x, dw, dy, &p);
    let taps = (d.w[2] * d.w[3]) as u32;
    assert!(
        taps <= MAX_TAPS,
        "conv2d: a {}x{} kernel has more than {MAX_TAPS} taps, the most the weight gradient's registers hold",
        d.w[2],
        d.w[3]
    );
    let mut params = d.params(&p);
    params.tiles = params.co.div_ceil(BW_CHANNELS) * params.ci;
    let rows = params.n * params.oh;
    // lavapipe (gallivm) stops every loop of an invocation for good once the invocation has run
    // 65535 loop iterations in all (its guard against endless loops): a chunk longer than that
    // silently drops the rest of its rows. Cap a chunk's pixels well below it.
    let rows_cap = (MAX_CHUNK_PIXELS / params.ow.max(1)).max(1);
    let chunks = t.bw_threads.div_ceil(params.tiles).max(rows.div_ceil(rows_cap)).clamp(1, rows);
    params.rows_per_chunk = rows.div_ceil(chunks);
    params.chunks = rows.div_ceil(params.rows_per_chunk);
    params.len = params.co * params.ci * taps;
    // Four pixels at a time with vec4 loads: 3x3 taps with column padding 1, or 1x1 taps with
    // none; stride 1 along rows of pixels, OW and W multiples of 4 (then OW = W), both tensors
    // 16-byte aligned.
    let taps_ok = (d.w[2] == 3 && d.w[3] == 3 && p.pad[1] == 1) || (d.w[2] == 1 && d.w[3] == 1 && p.pad[1] == 0);
    let vec_dy = taps_ok
        && p.stride[1] == 1
        && d.y[3].is_multiple_of(4)
        && x.offset().is_multiple_of(16)
        && dy.offset().is_multiple_of(16);
    let constants: Vec<_> = [("WG", t.wg as f64), ("VEC_DY", if vec_dy { 1.0 } else { 0.0 })]
        .into_iter()
        .chain(d.kernel_constants(&p))
        .collect();
    let part = gpu.empty(&[(params.chunks * (params.len + params.co)) as usize]);
    let kernel = gpu.kernel(&BACKWARD_SHADER, "conv2d_backward_weight", &constants);
    let threads = (params.tiles * params.chunks) as usize;
    // Bindings 11 and 12 are x and dy as vec4s; unread without VEC_DY, where either may be
    // shorter than one vec4: then a pooled vec4 stands in.
    let stand_in;
    let (x_v4, dy_v4) = if vec_dy {
        (x, dy)
    } else {
        stand_in = gpu.empty(&[4]);
        (&stand_in, &stand_in)
    };
    gpu.dispatch(
        enc,
        &kernel,
        &params,
        &[(1, x), (5, dy), (6, &part), (11, x_v4), (12, dy_v4)],
        groups_1d(threads, t.wg),
    );

    let reduce_constants = [("WG", t.wg as f64)];
    let kernel = gpu.kernel(&BACKWARD_SHADER, "conv2d_reduce_dw", &reduce_constants);
    gpu.dispatch(enc, &kernel, &params, &[(6, &part), (7, dw)], groups_1d(params.len as usize, t.wg));
    if let Some(db) = db {
        assert_eq!(db.shape(), [d.w[0]], "conv2d backward weight: db {:?} for dw {:?}", db.shape(), d.w);
        let kernel = gpu.kernel(&BACKWARD_SHADER, "conv2d_reduce_db", &reduce_constants);
        gpu.dispatch(enc, &kernel, &params, &[(6, &part), (8, db)], groups_1d(d.w[0], t.wg));
    }
}

/// `dz = dy * (y > 0) * scale` (stored, not accumulated), the backward of a ReLU epilogue
/// (scale 1) or a ReLU + dropout one (scale `1 / (1 - p)`; y is 0 where the mask dropped).
/// y (the fused forward's output), dy, dz: the same shape.
pub fn conv2d_epilogue_backward(
    gpu: &Gpu,
    enc: &mut Encoder,
    y: &Tensor,
    dy: &Tensor,
    dz: &Tensor,
    epilogue: Epilogue,
) {
    assert!(
        y.shape() == dy.shape() && dy.shape() == dz.shape(),
        "conv2d epilogue backward: y {:?} dy {:?} dz {:?}",
        y.shape(),
        dy.shape(),
        dz.shape()
    );
    assert!(epilogue != Epilogue::Identity, "conv2d epilogue backward: the identity has none (dz = dy)");
    let mut params = Params { len: y.len() as u32, ..Params::default() };
    let constants: Vec<_> = [("WG", EPILOGUE_WG as f64)].into_iter().chain(epilogue.apply(&mut params)).collect();
    let kernel = gpu.kernel(&BACKWARD_SHADER, "conv2d_epilogue_backward", &constants);
    gpu.dispatch(enc, &kernel, &params, &[(1, y), (4, dz), (5, dy)], groups_1d(y.len(), EPILOGUE_WG));
}
