//! 2-D convolution (cross-correlation, as PyTorch's `Conv2d`), with zero padding and stride.
//!
//! Shapes: x `[N,I,H,W]`, w `[O,I,KH,KW]` (OIHW), optional bias b `[O]`,
//! y `[N,O,OH,OW]` with `OH = (H + 2*ph - KH) / sh + 1` (likewise OW).
//!
//! ```text
//! forward:         y[n,o,oh,ow] = b[o] + sum_{i,kh,kw} w[o,i,kh,kw] * x[n,i, oh*sh-ph+kh, ow*sw-pw+kw]
//! backward data:   dx[n,i,ih,iw] += sum_{o,kh,kw} w[o,i,kh,kw] * dy[n,o,oh,ow]   (ih = oh*sh-ph+kh, ...)
//! backward weight: dw[o,i,kh,kw] += sum_{n,oh,ow} dy[n,o,oh,ow] * x[n,i, oh*sh-ph+kh, ow*sw-pw+kw]
//!                  db[o]         += sum_{n,oh,ow} dy[n,o,oh,ow]
//! ```
//!
//! The forward can end in an [`Epilogue`], ReLU or ReLU then inverted dropout, applied as each
//! output is stored; its backward needs only y: `dz = dy * (y > 0) / (1 - p)`.
//!
//! All three are implicit GEMMs (the im2col matrix is never stored): see `shaders/conv2d.wgsl`
//! for the tilings. The default kernels tile in registers only (no workgroup memory, no
//! barriers), which is what a CPU Vulkan driver runs fastest; [`conv2d_forward_shared`] is the
//! workgroup-memory tiling a real GPU wants. The weight gradient is a GEMM with a huge K
//! (`N*OH*OW`), so it is split into chunks whose partial sums go to a pooled scratch buffer
//! and are then added in a fixed order: results are deterministic.
//!
//! [`textbook`] holds the direct kernels (`shaders/conv2d_textbook.wgsl`: one invocation per output
//! element, the formulas above as loops): the oracle the tiled kernels are tested against, and what
//! every default wrapper here dispatches under [`Kernels::Reference`] (`--kernels reference`).

use crate::autograd::tape::{Accumulate, Mode, Step};
use crate::autograd::tensor::Tensor;
use crate::ops::dropout::keep_threshold;
use crate::runtime::{groups_1d, Encoder, Gpu, Kernels, Shader};
use crate::shader;

pub mod textbook;

pub use crate::tune::tiling::conv2d::{SharedTiling, Tiling};

const SHADER: Shader = shader!("conv2d/tiled");

/// Stride and zero padding of a convolution, per axis `[rows, columns]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Conv2d {
    /// Step between output pixels, in input pixels: `[sh, sw]`.
    pub stride: [usize; 2],
    /// Zeros added on each side of the input: `[ph, pw]`.
    pub pad: [usize; 2],
}

impl Conv2d {
    /// The same stride and padding on both axes (`Conv2d::new(1, 1)`: the 3x3 "same" conv).
    pub fn new(stride: usize, pad: usize) -> Conv2d {
        Conv2d { stride: [stride, stride], pad: [pad, pad] }
    }

    /// Output size `[OH, OW]` for an input of `[h, w]` and a kernel of `[kh, kw]`
    /// (PyTorch's rule: `(h + 2*ph - kh) / sh + 1`). Panics when the kernel does not fit.
    pub fn out_size(&self, [h, w]: [usize; 2], [kh, kw]: [usize; 2]) -> [usize; 2] {
        assert!(self.stride[0] > 0 && self.stride[1] > 0, "conv2d: stride {:?} must be positive", self.stride);
        assert!(
            h + 2 * self.pad[0] >= kh && w + 2 * self.pad[1] >= kw,
            "conv2d: kernel {kh}x{kw} larger than the padded input {}x{}",
            h + 2 * self.pad[0],
            w + 2 * self.pad[1]
        );
        [(h + 2 * self.pad[0] - kh) / self.stride[0] + 1, (w + 2 * self.pad[1] - kw) / self.stride[1] + 1]
    }
}

/// What the forward does to `z = conv(x, w) + b` as it stores it: fused into the store, so the
/// activation makes no round trip through memory.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub enum Epilogue {
    /// `y = z`.
    #[default]
    Identity,
    /// `y = max(z, 0)`.
    Relu,
    /// `y = mask(seed) * max(z, 0) / (1 - p)`: ReLU, then [`crate::ops::dropout`]'s inverted
    /// dropout with the same mask, bit for bit (a hash of the seed and y's flat index).
    ReluDropout {
        /// Probability of dropping an element, in [0, 1).
        p: f32,
        /// This step's mask seed.
        seed: u64,
    },
}

impl Epilogue {
    /// The override constants (RELU, DROPOUT) of the shaders that fuse it (conv2d, batchnorm2d).
    pub(crate) fn constants(&self) -> [(&'static str, f64); 2] {
        match self {
            Epilogue::Identity => [("RELU", 0.0), ("DROPOUT", 0.0)],
            Epilogue::Relu => [("RELU", 1.0), ("DROPOUT", 0.0)],
            Epilogue::ReluDropout { .. } => [("RELU", 1.0), ("DROPOUT", 1.0)],
        }
    }

    /// The uniform fields of its dropout: `[threshold, seed_lo, seed_hi]` (keep when the hash
    /// is `>= threshold`) and the scale `1 / (1 - p)`; zeros and 1 without dropout.
    pub(crate) fn dropout_uniforms(&self) -> ([u32; 3], f32) {
        match *self {
            Epilogue::ReluDropout { p, seed } => {
                ([keep_threshold(p), seed as u32, (seed >> 32) as u32], 1.0 / (1.0 - p))
            }
            _ => ([0; 3], 1.0),
        }
    }

    /// The override constants, with the uniform's dropout fields set in `params`.
    fn apply(&self, params: &mut Params) -> [(&'static str, f64); 2] {
        let ([threshold, lo, hi], scale) = self.dropout_uniforms();
        (params.drop_threshold, params.drop_seed_lo, params.drop_seed_hi, params.drop_scale) =
            (threshold, lo, hi, scale);
        self.constants()
    }
}

// Bounds of the shader's private arrays (keep in step with `shaders/conv2d.wgsl`).
const MAX_TAPS: u32 = 25;
/// Output channels a thread of the weight gradient's first pass owns (two vec4s in the shader).
const BW_CHANNELS: u32 = 8;
const MAX_TILE: u32 = 2048;
/// Threads a workgroup of the elementwise epilogue backward.
const EPILOGUE_WG: u32 = 256;

/// Mirrors `Params` in `shaders/conv2d.wgsl`.
#[repr(C)]
#[derive(Clone, Copy, Default, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    n: u32,
    ci: u32,
    h: u32,
    w: u32,
    co: u32,
    oh: u32,
    ow: u32,
    ph: u32,
    pw: u32,
    tiles_w: u32,
    tiles_h: u32,
    tiles: u32,
    chunks: u32,
    rows_per_chunk: u32,
    len: u32,
    has_bias: u32,
    w_so: u32,
    w_si: u32,
    flip: u32,
    drop_threshold: u32,
    drop_seed_lo: u32,
    drop_seed_hi: u32,
    drop_scale: f32,
    co_pad: u32,
}

/// The dimensions of one convolution, checked against each other.
struct Dims {
    x: [usize; 4],
    w: [usize; 4],
    y: [usize; 4],
}

fn dims(what: &str, x: &Tensor, w: &Tensor, y: &Tensor, p: &Conv2d) -> Dims {
    let (xd, wd, yd) = (x.dims4("conv2d x"), w.dims4("conv2d w"), y.dims4("conv2d y"));
    assert_eq!(xd[1], wd[1], "{what}: x {:?} has {} channels, w {:?} expects {}", xd, xd[1], wd, wd[1]);
    let [oh, ow] = p.out_size([xd[2], xd[3]], [wd[2], wd[3]]);
    assert_eq!(yd, [xd[0], wd[0], oh, ow], "{what}: y {yd:?} for x {xd:?}, w {wd:?}, {p:?}");
    Dims { x: xd, w: wd, y: yd }
}

impl Dims {
    fn params(&self, p: &Conv2d) -> Params {
        let [n, ci, h, w] = self.x.map(|v| v as u32);
        Params {
            n,
            ci,
            h,
            w,
            co: self.w[0] as u32,
            oh: self.y[2] as u32,
            ow: self.y[3] as u32,
            ph: p.pad[0] as u32,
            pw: p.pad[1] as u32,
            w_so: (self.w[1] * self.w[2] * self.w[3]) as u32,
            w_si: (self.w[2] * self.w[3]) as u32,
            ..Params::default()
        }
    }

    fn kernel_constants(&self, p: &Conv2d) -> [(&'static str, f64); 4] {
        [("KH", self.w[2] as f64), ("KW", self.w[3] as f64), ("SH", p.stride[0] as f64), ("SW", p.stride[1] as f64)]
    }
}

fn register_constants(t: &Tiling) -> [(&'static str, f64); 3] {
    if let Err(e) = t.check() {
        panic!("conv2d: {e}");
    }
    [("WG", t.wg as f64), ("ROWS", t.rows as f64), ("TM", t.tm as f64)]
}

/// Most dy pixels one thread of the weight gradient's first pass walks (see the loop guard in
/// [`conv2d_backward_weight_tiled`]); leaves room for 16 loop iterations a pixel.
const MAX_CHUNK_PIXELS: u32 = 4096;

/// Rows of the gather backward data's register tile and columns of every register tile (fixed by
/// the shader's code; the forward tile's rows are [`Tiling::rows`]).
const GATHER_TILE_ROWS: u32 = 2;
const TILE_COLS: u32 = 8;

/// `y = conv(x, w) + b`. x `[N,I,H,W]`, w `[O,I,KH,KW]`, b `[O]` or none, y `[N,O,OH,OW]`.
/// Tiled as `gpu.tuning().conv2d_forward` says, or the [`textbook`] kernel under
/// [`Kernels::Reference`] (as every default wrapper here).
pub fn conv2d_forward(gpu: &Gpu, enc: &mut Encoder, x: &Tensor, w: &Tensor, b: Option<&Tensor>, y: &Tensor, p: Conv2d) {
    conv2d_forward_fused(gpu, enc, x, w, b, y, p, Epilogue::Identity);
}

/// `y = epilogue(conv(x, w) + b)`. Shapes as [`conv2d_forward`].
#[allow(clippy::too_many_arguments)]
pub fn conv2d_forward_fused(
    gpu: &Gpu,
    enc: &mut Encoder,
    x: &Tensor,
    w: &Tensor,
    b: Option<&Tensor>,
    y: &Tensor,
    p: Conv2d,
    epilogue: Epilogue,
) {
    if gpu.kernels() == Kernels::Reference {
        // The textbook convolution into z, then the epilogue by the plain ReLU and dropout kernels.
        let z = if epilogue == Epilogue::Identity { y.clone() } else { gpu.empty(y.shape()) };
        textbook::conv2d_forward(gpu, enc, x, w, b, &z, p);
        return textbook::epilogue_forward(gpu, enc, &z, y, epilogue);
    }
    conv2d_forward_tiled(gpu, enc, x, w, b, y, p, epilogue, &gpu.tuning().conv2d_forward);
}

/// [`conv2d_forward_fused`] with a chosen register tiling (benchmarks sweep it).
#[allow(clippy::too_many_arguments)]
pub fn conv2d_forward_tiled(
    gpu: &Gpu,
    enc: &mut Encoder,
    x: &Tensor,
    w: &Tensor,
    b: Option<&Tensor>,
    y: &Tensor,
    p: Conv2d,
    epilogue: Epilogue,
    t: &Tiling,
) {
    let d = dims("conv2d forward", x, w, y, &p);
    let mut params = d.params(&p);
    let epilogue = epilogue.apply(&mut params);
    dispatch_tile(gpu, enc, "conv2d_forward", &d, params, &epilogue, &p, x, w, b, y, t);
}

/// Dispatch the register-tiled forward tile on `d` (params from `d`, weight layout set by the
/// caller): `entry` is `conv2d_forward` (which also overwrites dx for backward data), or
/// `conv2d_backward_data_stride1`, which adds into y.
#[allow(clippy::too_many_arguments)]
fn dispatch_tile(
    gpu: &Gpu,
    enc: &mut Encoder,
    entry: &'static str,
    d: &Dims,
    mut params: Params,
    epilogue: &[(&'static str, f64)],
    p: &Conv2d,
    x: &Tensor,
    w: &Tensor,
    b: Option<&Tensor>,
    y: &Tensor,
    t: &Tiling,
) {
    params.tiles_w = params.ow.div_ceil(TILE_COLS);
    params.tiles_h = params.oh.div_ceil(t.rows);
    params.tiles = params.n * params.tiles_w * params.tiles_h;
    params.co_pad = params.co.div_ceil(8) * 8;
    params.len = params.ci * params.co_pad * (d.w[2] * d.w[3]) as u32;
    // The weights, packed so that the tile's 8 output channels at one tap are two vec4s.
    let wq = gpu.empty(&[params.len as usize]);
    let kernel = gpu.kernel(
        &SHADER,
        "conv2d_pack_weights",
        &[("WG", t.wg as f64), ("KH", d.w[2] as f64), ("KW", d.w[3] as f64)],
    );
    gpu.dispatch(enc, &kernel, &params, &[(2, w), (10, &wq)], groups_1d(params.len as usize, t.wg));
    let b = bias_or_x(&mut params, b, x, d);
    let t = &t.for_tiles(params.tiles);
    // Rows of x as aligned vec4s: stride 1 and W a multiple of 4, with the 3-wide kernel and
    // column padding 1 (the U-Net's 3x3 "same" convolutions) or the 1x1 kernel and no padding.
    let window = (d.w[3] == 3 && p.pad[1] == 1) || (d.w[3] == 1 && p.pad[1] == 0);
    let vec_x = window && p.stride[1] == 1 && d.x[3].is_multiple_of(4) && x.offset().is_multiple_of(16);
    // Rows of y as aligned vec4s.
    let vec_y = d.y[3].is_multiple_of(4) && y.offset().is_multiple_of(16);
    let flag = |on: bool| if on { 1.0 } else { 0.0 };
    let constants: Vec<_> = register_constants(t)
        .into_iter()
        .chain(d.kernel_constants(p))
        .chain(epilogue.iter().copied())
        .chain([("VEC_X", flag(vec_x)), ("VEC_Y", flag(vec_y))])
        .collect();
    let kernel = gpu.kernel(&SHADER, entry, &constants);
    let groups = [params.tiles.div_ceil(t.wg), params.co.div_ceil(8), 1];
    // Binding 11 is x as vec4s; unread without VEC_X, where x may be shorter than one vec4.
    let x_v4 = if vec_x { x } else { &wq };
    // Binding 13 is y as vec4s (bound twice, read-write both times); unwritten without VEC_Y,
    // where y may be shorter than one vec4: a scratch vec4 stands in.
    let spare;
    let y_v4 = if vec_y {
        y
    } else {
        spare = gpu.empty(&[4]);
        &spare
    };
    gpu.dispatch(enc, &kernel, &params, &[(1, x), (3, b), (4, y), (9, &wq), (11, x_v4), (13, y_v4)], groups);
}

/// The tensor to bind as the bias: `b`, or (flagged off in `params`) x, which is bound anyway.
fn bias_or_x<'a>(params: &mut Params, b: Option<&'a Tensor>, x: &'a Tensor, d: &Dims) -> &'a Tensor {
    match b {
        Some(b) => {
            assert_eq!(b.shape(), [d.w[0]], "conv2d forward: b {:?} for w {:?}", b.shape(), d.w);
            params.has_bias = 1;
            b
        }
        None => x,
    }
}

/// The forward with workgroup-memory tiles (the GPU-shaped variant; same contract as
/// [`conv2d_forward`]). x `[N,I,H,W]`, w `[O,I,KH,KW]`, b `[O]` or none, y `[N,O,OH,OW]`.
#[allow(clippy::too_many_arguments)]
pub fn conv2d_forward_shared(
    gpu: &Gpu,
    enc: &mut Encoder,
    x: &Tensor,
    w: &Tensor,
    b: Option<&Tensor>,
    y: &Tensor,
    p: Conv2d,
    t: &SharedTiling,
) {
    let d = dims("conv2d forward (shared)", x, w, y, &p);
    let (bm, bn) = (t.ty * t.sm, t.tx * t.sn);
    assert!(
        t.sm <= 8 && t.sn <= 8 && t.bk * bm <= MAX_TILE && t.bk * bn <= MAX_TILE,
        "conv2d: shared tiling {t:?} exceeds the shader's tiles"
    );
    let mut params = d.params(&p);
    let b = bias_or_x(&mut params, b, x, &d);
    let constants: Vec<_> =
        [("TX", t.tx as f64), ("TY", t.ty as f64), ("SM", t.sm as f64), ("SN", t.sn as f64), ("BK", t.bk as f64)]
            .into_iter()
            .chain(d.kernel_constants(&p))
            .collect();
    let kernel = gpu.kernel(&SHADER, "conv2d_forward_shared", &constants);
    let pixels = (d.y[0] * d.y[2] * d.y[3]) as u32;
    let groups = [pixels.div_ceil(bn), params.co.div_ceil(bm), 1];
    gpu.dispatch(enc, &kernel, &params, &[(1, x), (2, w), (3, b), (4, y)], groups);
}

/// `dx += conv2d_backward_data(dy, w)`. dy `[N,O,OH,OW]`, w `[O,I,KH,KW]`, dx `[N,I,H,W]`.
/// Tiled as `gpu.tuning().conv2d_backward_data` says.
pub fn conv2d_backward_data(gpu: &Gpu, enc: &mut Encoder, dy: &Tensor, w: &Tensor, dx: &Tensor, p: Conv2d) {
    conv2d_backward_data_into(gpu, enc, dy, w, dx, p, Accumulate::Add);
}

/// [`conv2d_backward_data`] with a chosen register tiling.
pub fn conv2d_backward_data_tiled(
    gpu: &Gpu,
    enc: &mut Encoder,
    dy: &Tensor,
    w: &Tensor,
    dx: &Tensor,
    p: Conv2d,
    t: &Tiling,
) {
    backward_data(gpu, enc, dy, w, dx, p, t, Accumulate::Add);
}

/// [`conv2d_backward_data`] into dx as `acc` says: added into, or overwritten (every element
/// is written, so a fresh gradient buffer needs no zeroing first; see
/// [`crate::autograd::tape::BackwardCtx::grad_to_fill`]).
pub fn conv2d_backward_data_into(
    gpu: &Gpu,
    enc: &mut Encoder,
    dy: &Tensor,
    w: &Tensor,
    dx: &Tensor,
    p: Conv2d,
    acc: Accumulate,
) {
    match gpu.kernels() {
        Kernels::Tuned => backward_data(gpu, enc, dy, w, dx, p, &gpu.tuning().conv2d_backward_data, acc),
        Kernels::Reference => textbook::conv2d_backward_data(gpu, enc, dy, w, dx, p, acc),
    }
}

#[allow(clippy::too_many_arguments)]
fn backward_data(
    gpu: &Gpu,
    enc: &mut Encoder,
    dy: &Tensor,
    w: &Tensor,
    dx: &Tensor,
    p: Conv2d,
    t: &Tiling,
    acc: Accumulate,
) {
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
        let epilogue = Epilogue::Identity.constants();
        dispatch_tile(gpu, enc, entry, &fd, params, &epilogue, &flipped, dy, w, None, dx, t);
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
    let kernel = gpu.kernel(&SHADER, "conv2d_backward_data", &constants);
    let groups = [params.tiles.div_ceil(t.wg), params.ci.div_ceil(2 * t.tm), 1];
    gpu.dispatch(enc, &kernel, &params, &[(1, dy), (2, w), (4, dx)], groups);
}

/// `dw += conv2d_backward_weight(x, dy)`, and `db += sum of dy over n, oh, ow` when `db` is given.
/// x `[N,I,H,W]`, dy `[N,O,OH,OW]`, dw `[O,I,KH,KW]`, db `[O]`. Tiled as
/// `gpu.tuning().conv2d_backward_weight` says.
pub fn conv2d_backward_weight(
    gpu: &Gpu,
    enc: &mut Encoder,
    x: &Tensor,
    dy: &Tensor,
    dw: &Tensor,
    db: Option<&Tensor>,
    p: Conv2d,
) {
    match gpu.kernels() {
        Kernels::Tuned => {
            conv2d_backward_weight_tiled(gpu, enc, x, dy, dw, db, p, &gpu.tuning().conv2d_backward_weight)
        }
        Kernels::Reference => textbook::conv2d_backward_weight(gpu, enc, x, dy, dw, db, p),
    }
}

/// [`conv2d_backward_weight`] with a chosen register tiling.
#[allow(clippy::too_many_arguments)]
pub fn conv2d_backward_weight_tiled(
    gpu: &Gpu,
    enc: &mut Encoder,
    x: &Tensor,
    dy: &Tensor,
    dw: &Tensor,
    db: Option<&Tensor>,
    p: Conv2d,
    t: &Tiling,
) {
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
    let kernel = gpu.kernel(&SHADER, "conv2d_backward_weight", &constants);
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
    let kernel = gpu.kernel(&SHADER, "conv2d_reduce_dw", &reduce_constants);
    gpu.dispatch(enc, &kernel, &params, &[(6, &part), (7, dw)], groups_1d(params.len as usize, t.wg));
    if let Some(db) = db {
        assert_eq!(db.shape(), [d.w[0]], "conv2d backward weight: db {:?} for dw {:?}", db.shape(), d.w);
        let kernel = gpu.kernel(&SHADER, "conv2d_reduce_db", &reduce_constants);
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
    let kernel = gpu.kernel(&SHADER, "conv2d_epilogue_backward", &constants);
    gpu.dispatch(enc, &kernel, &params, &[(1, y), (4, dz), (5, dy)], groups_1d(y.len(), EPILOGUE_WG));
}

/// Convolution on the tape. x `[N,I,H,W]`, w `[O,I,KH,KW]`, b `[O]` or none; returns y `[N,O,OH,OW]`.
pub fn conv2d(step: &mut Step, x: &Tensor, w: &Tensor, b: Option<&Tensor>, p: Conv2d) -> Tensor {
    conv2d_fused(step, x, w, b, p, Epilogue::Identity)
}

/// Convolution with an epilogue on the tape: `epilogue(conv(x, w) + b)`. In [`Mode::Eval`] the
/// dropout of [`Epilogue::ReluDropout`] is off (plain ReLU), as is one with `p == 0`. Shapes as
/// [`conv2d`].
pub fn conv2d_fused(
    step: &mut Step,
    x: &Tensor,
    w: &Tensor,
    b: Option<&Tensor>,
    p: Conv2d,
    epilogue: Epilogue,
) -> Tensor {
    let epilogue = match epilogue {
        Epilogue::ReluDropout { p, .. } if step.mode == Mode::Eval || p == 0.0 => Epilogue::Relu,
        e => e,
    };
    let (xd, wd) = (x.dims4("conv2d x"), w.dims4("conv2d w"));
    let [oh, ow] = p.out_size([xd[2], xd[3]], [wd[2], wd[3]]);
    let inputs: Vec<&Tensor> = [Some(x), Some(w), b].into_iter().flatten().collect();
    let y = step.output(&[xd[0], wd[0], oh, ow], &inputs);
    conv2d_forward_fused(step.gpu, &mut step.enc, x, w, b, &y, p, epilogue);
    let (x, w, b) = (x.clone(), w.clone(), b.cloned());
    let saved_y = (epilogue != Epilogue::Identity).then(|| y.clone());
    step.record("conv2d", &y, move |ctx, dy| {
        // Through the epilogue first: dz = dy * (y > 0) * scale, into a pooled scratch tensor.
        let dz;
        let dy = match &saved_y {
            None => dy,
            Some(y) => {
                dz = ctx.gpu.empty(y.shape());
                conv2d_epilogue_backward(ctx.gpu, ctx.enc, y, dy, &dz, epilogue);
                &dz
            }
        };
        if let Some((dx, acc)) = ctx.grad_to_fill(&x) {
            conv2d_backward_data_into(ctx.gpu, ctx.enc, dy, &w, &dx, p, acc);
        }
        let dw = ctx.grad(&w);
        let db = b.as_ref().and_then(|b| ctx.grad(b));
        match (dw, db) {
            (Some(dw), db) => conv2d_backward_weight(ctx.gpu, ctx.enc, &x, dy, &dw, db.as_ref(), p),
            (None, Some(db)) => {
                // Only the bias learns: the weight pass still gives the dy sums; its dw goes to scratch.
                let scratch = ctx.gpu.empty(w.shape());
                conv2d_backward_weight(ctx.gpu, ctx.enc, &x, dy, &scratch, Some(&db), p);
            }
            (None, None) => {}
        }
    });
    y
}

/// Plain-Rust convolution on `f64`, the contract the shaders are tested against. Shapes are
/// passed as `[N,I,H,W]` for x and `[O,I,KH,KW]` for w.
pub mod reference;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{assert_close, assert_close_f32, dot, gpu, numeric_grad, random_vec, to_f64};

    #[test]
    fn workgroups_shrink_to_the_tiles() {
        let t = Tiling::default();
        assert_eq!(t.wg, 64);
        // The 16x16 level at batch 2: 2 x 4 x 2 tiles of 4 rows x 8 columns.
        assert_eq!(t.for_tiles(16), Tiling { wg: 16, ..t });
        assert_eq!(t.for_tiles(5).wg, 8);
        assert_eq!(t.for_tiles(1000).wg, 64);
    }

    /// (x dims, w dims, params) of the odd shapes every test runs.
    pub(super) fn cases() -> Vec<([usize; 4], [usize; 4], Conv2d)> {
        vec![
            ([1, 3, 7, 9], [5, 3, 3, 3], Conv2d::new(1, 1)),
            ([2, 3, 7, 9], [5, 3, 3, 3], Conv2d::new(2, 1)),
            ([2, 3, 7, 9], [5, 3, 1, 1], Conv2d::new(1, 0)),
            ([1, 2, 9, 7], [3, 2, 5, 5], Conv2d::new(1, 2)),
            ([2, 3, 7, 9], [5, 3, 3, 1], Conv2d { stride: [1, 1], pad: [1, 0] }),
            ([2, 4, 8, 10], [6, 4, 2, 2], Conv2d::new(2, 0)),
            ([1, 1, 1, 1], [1, 1, 1, 1], Conv2d::new(1, 0)),
            ([2, 17, 6, 5], [19, 17, 3, 3], Conv2d::new(1, 1)),
            ([1, 3, 8, 8], [4, 3, 3, 3], Conv2d::new(3, 2)),
            // W a multiple of 4: the forward tile reads rows of x as vec4s (one partial tile of
            // 4 columns; then 12 columns, one and a half tiles).
            ([1, 3, 5, 4], [5, 3, 3, 3], Conv2d::new(1, 1)),
            ([2, 6, 7, 12], [9, 6, 3, 3], Conv2d::new(1, 1)),
            // 1x1 with W a multiple of 4 (the head's path: vec4 rows of x and y in the forward
            // and backward data, quads in the weight gradient), 6 and 9 output channels.
            ([2, 5, 7, 12], [6, 5, 1, 1], Conv2d::new(1, 0)),
            ([1, 3, 7, 8], [9, 3, 1, 1], Conv2d { stride: [2, 1], pad: [0, 0] }),
            // Row stride 2 with vec4 rows (OW = W = 8).
            ([1, 4, 9, 8], [5, 4, 3, 3], Conv2d { stride: [2, 1], pad: [1, 1] }),
        ]
    }

    pub(super) fn yd(xd: [usize; 4], wd: [usize; 4], p: &Conv2d) -> [usize; 4] {
        let [oh, ow] = p.out_size([xd[2], xd[3]], [wd[2], wd[3]]);
        [xd[0], wd[0], oh, ow]
    }

    #[test]
    fn reference_backward_matches_finite_differences() {
        for (seed, (xd, wd, p)) in cases().into_iter().enumerate().take(6) {
            let seed = 10 * seed as u64;
            let x = to_f64(&random_vec(seed, xd.iter().product()));
            let w = to_f64(&random_vec(seed + 1, wd.iter().product()));
            let b = to_f64(&random_vec(seed + 2, wd[0]));
            let r = to_f64(&random_vec(seed + 3, yd(xd, wd, &p).iter().product()));
            let f = reference::conv2d_forward;
            let want_dx = numeric_grad(|x| dot(&r, &f(x, xd, &w, wd, Some(&b), &p)), &x, 1e-6);
            let want_dw = numeric_grad(|w| dot(&r, &f(&x, xd, w, wd, Some(&b), &p)), &w, 1e-6);
            let want_db = numeric_grad(|b| dot(&r, &f(&x, xd, &w, wd, Some(b), &p)), &b, 1e-6);
            let dx = reference::conv2d_backward_data(&r, &w, xd, wd, &p);
            let (dw, db) = reference::conv2d_backward_weight(&x, &r, xd, wd, &p);
            assert_close(&format!("dx {xd:?} {wd:?} {p:?}"), &dx, &want_dx, 1e-6);
            assert_close(&format!("dw {xd:?} {wd:?} {p:?}"), &dw, &want_dw, 1e-6);
            assert_close(&format!("db {xd:?} {wd:?} {p:?}"), &db, &want_db, 1e-6);
        }
    }

    /// Runs forward (bias or not), backward data and backward weight on the GPU for one case and
    /// checks all against the reference; `t` picks the register tiling.
    fn check_gpu(seed: u64, xd: [usize; 4], wd: [usize; 4], p: Conv2d, bias: bool, t: &Tiling) {
        let gpu = gpu();
        let ydims = yd(xd, wd, &p);
        let x = random_vec(seed, xd.iter().product());
        let w = random_vec(seed + 1, wd.iter().product());
        let b = random_vec(seed + 2, wd[0]);
        let dy = random_vec(seed + 3, ydims.iter().product());
        let (dx0, dw0, db0) =
            (random_vec(seed + 4, x.len()), random_vec(seed + 5, w.len()), random_vec(seed + 6, wd[0]));
        let (xt, wt, bt, dyt) =
            (gpu.upload(&x, &xd), gpu.upload(&w, &wd), gpu.upload(&b, &[wd[0]]), gpu.upload(&dy, &ydims));
        let (dxt, dwt, dbt) = (gpu.upload(&dx0, &xd), gpu.upload(&dw0, &wd), gpu.upload(&db0, &[wd[0]]));
        let y = gpu.empty(&ydims);
        let y_shared = gpu.empty(&ydims);
        let mut enc = gpu.encoder();
        let bopt = bias.then_some(&bt);
        conv2d_forward_tiled(gpu, &mut enc, &xt, &wt, bopt, &y, p, Epilogue::Identity, t);
        conv2d_forward_shared(gpu, &mut enc, &xt, &wt, bopt, &y_shared, p, &SharedTiling::default());
        conv2d_backward_data_tiled(gpu, &mut enc, &dyt, &wt, &dxt, p, t);
        conv2d_backward_weight_tiled(gpu, &mut enc, &xt, &dyt, &dwt, bias.then_some(&dbt), p, t);
        gpu.submit(enc);

        let what = format!("{xd:?} {wd:?} {p:?} bias {bias} {t:?}");
        let (xf, wf, bf, dyf) = (to_f64(&x), to_f64(&w), to_f64(&b), to_f64(&dy));
        let want_y = reference::conv2d_forward(&xf, xd, &wf, wd, bias.then_some(&bf[..]), &p);
        assert_close_f32(&format!("y {what}"), &gpu.read(&y), &want_y, 1e-4);
        assert_close_f32(&format!("y (shared) {what}"), &gpu.read(&y_shared), &want_y, 1e-4);
        let plus =
            |g: Vec<f64>, start: &[f32]| -> Vec<f64> { g.iter().zip(start).map(|(g, &s)| g + s as f64).collect() };
        let want_dx = plus(reference::conv2d_backward_data(&dyf, &wf, xd, wd, &p), &dx0);
        assert_close_f32(&format!("dx {what}"), &gpu.read(&dxt), &want_dx, 1e-3);
        let (dw, db) = reference::conv2d_backward_weight(&xf, &dyf, xd, wd, &p);
        assert_close_f32(&format!("dw {what}"), &gpu.read(&dwt), &plus(dw, &dw0), 1e-3);
        let want_db = if bias { plus(db, &db0) } else { to_f64(&db0) };
        assert_close_f32(&format!("db {what}"), &gpu.read(&dbt), &want_db, 1e-3);
    }

    #[test]
    fn gpu_matches_reference_on_odd_shapes() {
        for (k, (xd, wd, p)) in cases().into_iter().enumerate() {
            check_gpu(100 + 10 * k as u64, xd, wd, p, k % 2 == 0, &Tiling::default());
            check_gpu(200 + 10 * k as u64, xd, wd, p, k % 2 == 1, &Tiling::default());
        }
    }

    #[test]
    fn backward_data_overwrites_stale_values() {
        // Accumulate::Overwrite: dx starts at random values it must lose, on every case (the
        // stride-1 path runs the forward entry point, the gather path clears dx first).
        let gpu = gpu();
        for (k, (xd, wd, p)) in cases().into_iter().enumerate() {
            let seed = 400 + 10 * k as u64;
            let (w, dy) =
                (random_vec(seed, wd.iter().product()), random_vec(seed + 1, yd(xd, wd, &p).iter().product()));
            let (wt, dyt) = (gpu.upload(&w, &wd), gpu.upload(&dy, &yd(xd, wd, &p)));
            let dx = gpu.upload(&random_vec(seed + 2, xd.iter().product()), &xd);
            let mut enc = gpu.encoder();
            conv2d_backward_data_into(gpu, &mut enc, &dyt, &wt, &dx, p, Accumulate::Overwrite);
            gpu.submit(enc);
            let want = reference::conv2d_backward_data(&to_f64(&dy), &to_f64(&w), xd, wd, &p);
            assert_close_f32(&format!("dx {xd:?} {wd:?} {p:?}"), &gpu.read(&dx), &want, 1e-3);
        }
    }

    #[test]
    fn gpu_matches_reference_with_other_tilings() {
        // Odd block sizes, so edge blocks of channels are partly empty.
        let tilings =
            [Tiling { wg: 16, rows: 2, tm: 3, bw_threads: 4096 }, Tiling { wg: 24, rows: 4, tm: 5, bw_threads: 64 }];
        for (k, t) in tilings.iter().enumerate() {
            check_gpu(300 + k as u64, [2, 5, 11, 6], [7, 5, 3, 3], Conv2d::new(1, 1), true, t);
            // W % 4 == 0: rows read as vec4s, and 9 rows: a last tile of 1 row (of 2 or 4).
            check_gpu(305 + k as u64, [2, 5, 9, 8], [7, 5, 3, 3], Conv2d::new(1, 1), true, t);
            check_gpu(310 + k as u64, [1, 6, 9, 13], [3, 6, 1, 1], Conv2d::new(1, 0), false, t);
        }
    }

    #[test]
    fn backward_weight_with_long_chunks() {
        // One chunk (bw_threads 1) walks every dy row, so the window priming and the row loop of
        // the first pass run many times per thread; the other tests have one row per chunk.
        let t = Tiling { bw_threads: 1, ..Tiling::default() };
        check_gpu(320, [2, 17, 6, 5], [19, 17, 3, 3], Conv2d::new(1, 1), true, &t);
        check_gpu(330, [1, 16, 9, 11], [16, 16, 3, 3], Conv2d::new(1, 1), false, &t);
        // 2*100*100 = 20000 pixels: more loop iterations than lavapipe lets one invocation
        // run, unless the chunks are capped.
        check_gpu(340, [2, 4, 100, 100], [4, 4, 3, 3], Conv2d::new(1, 1), false, &t);
        // The 1x1 quad walk over many rows.
        check_gpu(350, [2, 5, 40, 36], [6, 5, 1, 1], Conv2d::new(1, 0), true, &t);
    }

    #[test]
    fn shared_tilings_match_reference() {
        let gpu = gpu();
        let (xd, wd, p) = ([2, 5, 9, 11], [21, 5, 3, 3], Conv2d::new(1, 1));
        let x = random_vec(400, xd.iter().product());
        let w = random_vec(401, wd.iter().product());
        let want = reference::conv2d_forward(&to_f64(&x), xd, &to_f64(&w), wd, None, &p);
        let (xt, wt) = (gpu.upload(&x, &xd), gpu.upload(&w, &wd));
        for t in
            [SharedTiling { tx: 8, ty: 4, sm: 3, sn: 2, bk: 5 }, SharedTiling { tx: 16, ty: 8, sm: 8, sn: 8, bk: 16 }]
        {
            let y = gpu.empty(&yd(xd, wd, &p));
            let mut enc = gpu.encoder();
            conv2d_forward_shared(gpu, &mut enc, &xt, &wt, None, &y, p, &t);
            gpu.submit(enc);
            assert_close_f32(&format!("y (shared) {t:?}"), &gpu.read(&y), &want, 1e-4);
        }
    }

    const EPILOGUES: [Epilogue; 3] =
        [Epilogue::Identity, Epilogue::Relu, Epilogue::ReluDropout { p: 0.3, seed: 0x1234_5678_9abc }];

    #[test]
    fn reference_epilogue_backward_matches_finite_differences() {
        let z = to_f64(&random_vec(600, 5 * 7 * 3));
        let r = to_f64(&random_vec(601, z.len()));
        for e in EPILOGUES {
            let want = numeric_grad(|z| dot(&r, &reference::epilogue_forward(z, e)), &z, 1e-6);
            assert_close(&format!("dz {e:?}"), &reference::epilogue_backward(&z, &r, e), &want, 1e-6);
        }
    }

    #[test]
    fn fused_epilogue_matches_reference() {
        let gpu = gpu();
        let shapes =
            [([2, 3, 7, 9], [5, 3, 3, 3], Conv2d::new(1, 1)), ([1, 6, 9, 13], [3, 6, 1, 1], Conv2d::new(1, 0))];
        for (k, (xd, wd, p)) in shapes.into_iter().enumerate() {
            let seed = 610 + 10 * k as u64;
            let ydims = yd(xd, wd, &p);
            let (x, w, b) = (
                random_vec(seed, xd.iter().product()),
                random_vec(seed + 1, wd.iter().product()),
                random_vec(seed + 2, wd[0]),
            );
            let dy = random_vec(seed + 3, ydims.iter().product());
            let (xt, wt, bt, dyt) =
                (gpu.upload(&x, &xd), gpu.upload(&w, &wd), gpu.upload(&b, &[wd[0]]), gpu.upload(&dy, &ydims));
            let z = reference::conv2d_forward(&to_f64(&x), xd, &to_f64(&w), wd, Some(&to_f64(&b)), &p);
            for e in &EPILOGUES[1..] {
                let (y, dz) = (gpu.empty(&ydims), gpu.empty(&ydims));
                let mut enc = gpu.encoder();
                conv2d_forward_fused(gpu, &mut enc, &xt, &wt, Some(&bt), &y, p, *e);
                conv2d_epilogue_backward(gpu, &mut enc, &y, &dyt, &dz, *e);
                gpu.submit(enc);
                let what = format!("{xd:?} {wd:?} {e:?}");
                assert_close_f32(&format!("y {what}"), &gpu.read(&y), &reference::epilogue_forward(&z, *e), 1e-4);
                let want_dz = reference::epilogue_backward(&z, &to_f64(&dy), *e);
                assert_close_f32(&format!("dz {what}"), &gpu.read(&dz), &want_dz, 1e-3);
            }
        }
    }

    #[test]
    fn fused_tape_gives_the_chain_rules_gradients() {
        let gpu = gpu();
        let (xd, wd, p) = ([2, 3, 6, 5], [4, 3, 3, 3], Conv2d::new(1, 1));
        let e = Epilogue::ReluDropout { p: 0.25, seed: 77 };
        let ydims = yd(xd, wd, &p);
        let (x, w, b) =
            (random_vec(700, xd.iter().product()), random_vec(701, wd.iter().product()), random_vec(702, 4));
        let dy = random_vec(703, ydims.iter().product());
        let (xt, wt, bt) =
            (gpu.upload(&x, &xd).with_grad(), gpu.upload(&w, &wd).with_grad(), gpu.upload(&b, &[4]).with_grad());
        let mut step = Step::train(gpu);
        let y = conv2d_fused(&mut step, &xt, &wt, Some(&bt), p, e);
        let grads = step.backward(vec![(y.clone(), gpu.upload(&dy, &ydims))]);
        step.submit();

        let (xf, wf) = (to_f64(&x), to_f64(&w));
        let z = reference::conv2d_forward(&xf, xd, &wf, wd, Some(&to_f64(&b)), &p);
        assert_close_f32("fused tape y", &gpu.read(&y), &reference::epilogue_forward(&z, e), 1e-4);
        let dz = reference::epilogue_backward(&z, &to_f64(&dy), e);
        let (dw, db) = reference::conv2d_backward_weight(&xf, &dz, xd, wd, &p);
        let dx = reference::conv2d_backward_data(&dz, &wf, xd, wd, &p);
        assert_close_f32("fused tape dx", &gpu.read(grads.get(&xt).unwrap()), &dx, 1e-3);
        assert_close_f32("fused tape dw", &gpu.read(grads.get(&wt).unwrap()), &dw, 1e-3);
        assert_close_f32("fused tape db", &gpu.read(grads.get(&bt).unwrap()), &db, 1e-3);

        // In eval mode the dropout is off: plain ReLU.
        let mut step = Step::eval(gpu);
        let y = conv2d_fused(&mut step, &xt, &wt, Some(&bt), p, e);
        step.submit();
        assert_close_f32("fused eval y", &gpu.read(&y), &reference::epilogue_forward(&z, Epilogue::Relu), 1e-4);
    }

    #[test]
    fn tape_gives_the_wrappers_gradients() {
        let gpu = gpu();
        let (xd, wd, p) = ([2, 3, 5, 6], [4, 3, 3, 3], Conv2d::new(1, 1));
        let ydims = yd(xd, wd, &p);
        let (x, w, b) =
            (random_vec(500, xd.iter().product()), random_vec(501, wd.iter().product()), random_vec(502, 4));
        let dy = random_vec(503, ydims.iter().product());
        let xt = gpu.upload(&x, &xd).with_grad();
        let wt = gpu.upload(&w, &wd).with_grad();
        let bt = gpu.upload(&b, &[4]).with_grad();
        let mut step = Step::train(gpu);
        let y = conv2d(&mut step, &xt, &wt, Some(&bt), p);
        let dyt = gpu.upload(&dy, &ydims);
        let grads = step.backward(vec![(y.clone(), dyt)]);
        step.submit();

        let (xf, wf, bf, dyf) = (to_f64(&x), to_f64(&w), to_f64(&b), to_f64(&dy));
        let want_y = reference::conv2d_forward(&xf, xd, &wf, wd, Some(&bf), &p);
        assert_close_f32("tape y", &gpu.read(&y), &want_y, 1e-4);
        let (dw, db) = reference::conv2d_backward_weight(&xf, &dyf, xd, wd, &p);
        assert_close_f32(
            "tape dx",
            &gpu.read(grads.get(&xt).unwrap()),
            &reference::conv2d_backward_data(&dyf, &wf, xd, wd, &p),
            1e-3,
        );
        assert_close_f32("tape dw", &gpu.read(grads.get(&wt).unwrap()), &dw, 1e-3);
        assert_close_f32("tape db", &gpu.read(grads.get(&bt).unwrap()), &db, 1e-3);
    }
}
