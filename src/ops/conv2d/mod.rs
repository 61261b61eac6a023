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
//! All three are implicit GEMMs (the im2col matrix is never stored): see `shaders/conv2d/tiled.wgsl`
//! for the tilings. The default kernels tile in registers only (no workgroup memory, no
//! barriers), which is what a CPU Vulkan driver runs fastest; [`conv2d_forward_shared`] is the
//! workgroup-memory tiling a real GPU wants. The weight gradient is a GEMM with a huge K
//! (`N*OH*OW`), so it is split into chunks whose partial sums go to a pooled scratch buffer
//! and are then added in a fixed order: results are deterministic.
//!
//! [`textbook`] holds the direct kernels (`shaders/conv2d/textbook.wgsl`: one invocation per output
//! element, the formulas above as loops): the oracle the tiled kernels are tested against, and what
//! every default wrapper here dispatches under [`Kernels::Reference`] (`--kernels reference`).

use crate::autograd::tape::{Accumulate, Mode, Step};
use crate::autograd::tensor::Tensor;
use crate::ops::dropout::keep_threshold;
use crate::runtime::{groups_1d, Encoder, Gpu, Kernels, Shader};
use crate::shader;

pub mod gemm;
pub use gemm::{BackwardData, BackwardWeight, Forward};
pub mod textbook;

pub use crate::tune::tiling::conv2d::{SharedTiling, Tiling};

const SHADER: Shader = shader!("conv2d/tiled");
const SHARED_SHADER: Shader = shader!("conv2d/shared");

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

// Bounds of the shader's private arrays (keep in step with `shaders/conv2d/tiled.wgsl`).
const MAX_TAPS: u32 = 25;
/// Output channels a thread of the weight gradient's first pass owns (two vec4s in the shader).
const BW_CHANNELS: u32 = 8;
const MAX_TILE: u32 = 2048;
/// Threads a workgroup of the elementwise epilogue backward.
const EPILOGUE_WG: u32 = 256;

/// Mirrors `Params` in `shaders/conv2d/tiled.wgsl`.
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
/// [`conv2d_backward_weight`]); leaves room for 16 loop iterations a pixel.
const MAX_CHUNK_PIXELS: u32 = 4096;

/// Rows of the gather backward data's register tile and columns of every register tile (fixed by
/// the shader's code; the forward tile's rows are [`Tiling::rows`]).
const GATHER_TILE_ROWS: u32 = 2;
const TILE_COLS: u32 = 8;

/// `y = epilogue(conv(x, w) + b)`, the operands and options in `f`. x `[N,I,H,W]`,
/// w `[O,I,KH,KW]`, b `[O]` or none, y `[N,O,OH,OW]`. With `f.tiling` set, the register-tiled
/// kernel with that tiling; otherwise tiled as `gpu.tuning().conv2d_forward` says (or by the
/// [`gemm`] kernels when the tuning has `conv_gemm`), or the [`textbook`] kernel under
/// [`Kernels::Reference`] (as every default wrapper here).
pub fn conv2d_forward(gpu: &Gpu, enc: &mut Encoder, f: &Forward) {
    let Forward { x, w, b, y, p, epilogue, tiling } = *f;
    if let Some(t) = tiling {
        return forward_tiled(gpu, enc, f, &t);
    }
    if gpu.kernels() == Kernels::Reference {
        // The textbook convolution into z, then the epilogue by the plain ReLU and dropout kernels.
        let z = if epilogue == Epilogue::Identity { y.clone() } else { gpu.empty(y.shape()) };
        textbook::conv2d_forward(gpu, enc, x, w, b, &z, p);
        return textbook::epilogue_forward(gpu, enc, &z, y, epilogue);
    }
    if let Some(g) = gpu.tuning().conv_gemm {
        return gemm::conv2d_forward_gemm(gpu, enc, f, &g.conv2d_forward);
    }
    forward_tiled(gpu, enc, f, &gpu.tuning().conv2d_forward);
}

/// The forward by the register-tiled kernel with tiling `t`.
fn forward_tiled(gpu: &Gpu, enc: &mut Encoder, f: &Forward, t: &Tiling) {
    let d = dims("conv2d forward", f.x, f.w, f.y, &f.p);
    let mut params = d.params(&f.p);
    f.epilogue.apply(&mut params);
    dispatch_tile(gpu, enc, "conv2d_forward", &d, params, f, t);
}

/// Dispatch the register-tiled forward tile on `d` (params from `d`, with the weight layout and
/// the epilogue's uniforms set by the caller; `f.epilogue` gives the override constants):
/// `entry` is `conv2d_forward` (which also overwrites dx for backward data), or
/// `conv2d_backward_data_stride1`, which adds into y.
fn dispatch_tile(
    gpu: &Gpu,
    enc: &mut Encoder,
    entry: &'static str,
    d: &Dims,
    mut params: Params,
    f: &Forward,
    t: &Tiling,
) {
    let Forward { x, w, b, y, ref p, epilogue, .. } = *f;
    let epilogue = epilogue.constants();
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
/// [`conv2d_forward`], no epilogue). x `[N,I,H,W]`, w `[O,I,KH,KW]`, b `[O]` or none,
/// y `[N,O,OH,OW]`.
pub fn conv2d_forward_shared(gpu: &Gpu, enc: &mut Encoder, f: &Forward, t: &SharedTiling) {
    let Forward { x, w, b, y, p, epilogue, .. } = *f;
    assert_eq!(
        epilogue,
        Epilogue::Identity,
        "conv2d forward (shared): epilogue {epilogue:?} is not fused by this kernel; use conv2d_forward"
    );
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
    let kernel = gpu.kernel(&SHARED_SHADER, "conv2d_forward_shared", &constants);
    let pixels = (d.y[0] * d.y[2] * d.y[3]) as u32;
    let groups = [pixels.div_ceil(bn), params.co.div_ceil(bm), 1];
    gpu.dispatch(enc, &kernel, &params, &[(1, x), (2, w), (3, b), (4, y)], groups);
}

/// Convolution with an epilogue on the tape: `epilogue(conv(x, w) + b)` (`Epilogue::Identity`:
/// the plain convolution). x `[N,I,H,W]`, w `[O,I,KH,KW]`, b `[O]` or none; returns y
/// `[N,O,OH,OW]`. In [`Mode::Eval`] the dropout of [`Epilogue::ReluDropout`] is off (plain ReLU),
/// as is one with `p == 0`.
pub fn conv2d(step: &mut Step, x: &Tensor, w: &Tensor, b: Option<&Tensor>, p: Conv2d, epilogue: Epilogue) -> Tensor {
    let epilogue = match epilogue {
        Epilogue::ReluDropout { p, .. } if step.mode == Mode::Eval || p == 0.0 => Epilogue::Relu,
        e => e,
    };
    let (xd, wd) = (x.dims4("conv2d x"), w.dims4("conv2d w"));
    let [oh, ow] = p.out_size([xd[2], xd[3]], [wd[2], wd[3]]);
    let inputs: Vec<&Tensor> = [Some(x), Some(w), b].into_iter().flatten().collect();
    let y = step.output(&[xd[0], wd[0], oh, ow], &inputs);
    conv2d_forward(step.gpu, &mut step.enc, &Forward { x, w, b, y: &y, p, epilogue, tiling: None });
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
            conv2d_backward_data(ctx.gpu, ctx.enc, &BackwardData { dy, w: &w, dx: &dx, p, acc, tiling: None });
        }
        let dw = ctx.grad(&w);
        let db = b.as_ref().and_then(|b| ctx.grad(b));
        match (dw, db) {
            (Some(dw), db) => {
                let a = BackwardWeight { x: &x, dy, dw: &dw, db: db.as_ref(), p, tiling: None };
                conv2d_backward_weight(ctx.gpu, ctx.enc, &a)
            }
            (None, Some(db)) => {
                // Only the bias learns: the weight pass still gives the dy sums; its dw goes to scratch.
                let scratch = ctx.gpu.empty(w.shape());
                let a = BackwardWeight { x: &x, dy, dw: &scratch, db: Some(&db), p, tiling: None };
                conv2d_backward_weight(ctx.gpu, ctx.enc, &a);
            }
            (None, None) => {}
        }
    });
    y
}

/// Plain-Rust convolution on `f64`, the contract the shaders are tested against. Shapes are
/// passed as `[N,I,H,W]` for x and `[O,I,KH,KW]` for w.
mod backward;
pub use backward::*;

pub mod reference;

#[cfg(test)]
mod tests;
