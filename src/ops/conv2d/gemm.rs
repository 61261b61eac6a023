//! The convolutions as implicit GEMMs tiled through workgroup memory (`shaders/conv2d/gemm.wgsl`):
//! the GPU-shaped kernels, which the default wrappers dispatch when [`Gpu::tuning`] has
//! [`ConvGemm`] tilings (hardware adapters, or `--tiling gpu`). Same contracts as the wrappers in
//! [`super`]: forward with bias and [`Epilogue`], backward data added or overwritten, backward
//! weight with the bias gradient.
//!
//! A [`Gemm`] is plain data, passed to the shader as pipeline constants: a workgroup computes a
//! `bm x bn` tile of the GEMM's output, stepping through K in slices of `bk`, each of its
//! `(bm/tm) * (bn/tn)` threads a `tm x tn` register tile. [`ConvGemm`] holds one per direction of
//! both convolutions (conv2d and the 2x2 transposed one, `conv_transpose2d::gemm`).

use super::{dims, Conv2d, Epilogue, Tiling};
use crate::autograd::tape::Accumulate;
use crate::autograd::tensor::Tensor;
use crate::runtime::{groups_1d, Encoder, Gpu, Shader};
use crate::shader;

const SHADER: Shader = shader!("conv2d/gemm");
/// Threads a workgroup of the split-K reduction (the shader's literal 256).
const REDUCE_WG: u32 = 256;

pub use crate::tune::tiling::gemm::{ConvGemm, Gemm};

/// Mirrors `Params` in `shaders/conv2d/gemm.wgsl`.
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
    has_bias: u32,
    chunk: u32,
    chunks: u32,
    cols: u32,
    drop_threshold: u32,
    drop_seed_lo: u32,
    drop_seed_hi: u32,
    drop_scale: f32,
}

impl Params {
    /// x (or dx) `[N,I,H,W]`, y (or dy) `[N,O,OH,OW]`.
    fn new(x: [usize; 4], y: [usize; 4], p: &Conv2d) -> Params {
        let u = |v: usize| v as u32;
        Params {
            n: u(x[0]),
            ci: u(x[1]),
            h: u(x[2]),
            w: u(x[3]),
            co: u(y[1]),
            oh: u(y[2]),
            ow: u(y[3]),
            ph: u(p.pad[0]),
            pw: u(p.pad[1]),
            ..Params::default()
        }
    }
}

/// KH, KW, SH, SW.
fn geometry(w: [usize; 4], p: &Conv2d) -> [(&'static str, f64); 4] {
    [("KH", w[2] as f64), ("KW", w[3] as f64), ("SH", p.stride[0] as f64), ("SW", p.stride[1] as f64)]
}

/// The operands of a forward: y `[N,O,OH,OW]` `= epilogue(conv(x, w) + b)`, x `[N,I,H,W]`,
/// w `[O,I,KH,KW]`, b `[O]` or none.
#[derive(Clone, Copy, Debug)]
pub struct Forward<'a> {
    /// `[N,I,H,W]`.
    pub x: &'a Tensor,
    /// `[O,I,KH,KW]`.
    pub w: &'a Tensor,
    /// `[O]`, or none.
    pub b: Option<&'a Tensor>,
    /// `[N,O,OH,OW]`, written.
    pub y: &'a Tensor,
    /// Stride and padding.
    pub p: Conv2d,
    /// What is applied to each output as it is stored.
    pub epilogue: Epilogue,
    /// A register tiling that overrides the tuned dispatch (benchmarks and the autotuner sweep
    /// it); `None`: the kernel and tiling [`Gpu::tuning`] and [`Gpu::kernels`] choose.
    pub tiling: Option<Tiling>,
}

/// `y = epilogue(conv(x, w) + b)` by the GEMM kernel with tiling `g`.
pub fn conv2d_forward_gemm(gpu: &Gpu, enc: &mut Encoder, f: &Forward, g: &Gemm) {
    let d = dims("conv2d forward (gemm)", f.x, f.w, f.y, &f.p);
    let mut params = Params::new(d.x, d.y, &f.p);
    if let Some(b) = f.b {
        assert_eq!(b.shape(), [d.w[0]], "conv2d forward: b {:?} for w {:?}", b.shape(), d.w);
        params.has_bias = 1;
    }
    let ([threshold, lo, hi], scale) = f.epilogue.dropout_uniforms();
    (params.drop_threshold, params.drop_seed_lo, params.drop_seed_hi, params.drop_scale) = (threshold, lo, hi, scale);
    let constants: Vec<_> =
        g.constants(&gpu.limits).into_iter().chain(geometry(d.w, &f.p)).chain(f.epilogue.constants()).collect();
    let kernel = gpu.kernel(&SHADER, "conv2d_gemm_forward", &constants);
    let pixels = (d.y[0] * d.y[2] * d.y[3]) as u32;
    let groups = [pixels.div_ceil(g.bn).max(1), params.co.div_ceil(g.bm).max(1), 1];
    // Without a bias the shader never reads binding 3: w stands in.
    let b = f.b.unwrap_or(f.w);
    gpu.dispatch(enc, &kernel, &params, &[(1, f.x), (2, f.w), (3, b), (4, f.y)], groups);
}

/// The operands of a backward data: dx `[N,I,H,W]` (+)= the data gradient of dy `[N,O,OH,OW]`
/// through w `[O,I,KH,KW]`.
#[derive(Clone, Copy, Debug)]
pub struct BackwardData<'a> {
    /// `[N,O,OH,OW]`.
    pub dy: &'a Tensor,
    /// `[O,I,KH,KW]`.
    pub w: &'a Tensor,
    /// `[N,I,H,W]`, added into or overwritten (every element written) as `acc` says.
    pub dx: &'a Tensor,
    /// Stride and padding of the forward.
    pub p: Conv2d,
    /// `+=` or `=`.
    pub acc: Accumulate,
    /// A register tiling that overrides the tuned dispatch, as [`Forward::tiling`].
    pub tiling: Option<Tiling>,
}

/// `dx (+)= conv2d_backward_data(dy, w)` by the GEMM kernel with tiling `g` (any stride).
pub fn conv2d_backward_data_gemm(gpu: &Gpu, enc: &mut Encoder, a: &BackwardData, g: &Gemm) {
    let d = dims("conv2d backward data (gemm)", a.dx, a.w, a.dy, &a.p);
    let params = Params::new(d.x, d.y, &a.p);
    let constants: Vec<_> =
        g.constants(&gpu.limits).into_iter().chain(geometry(d.w, &a.p)).chain([a.acc.constant()]).collect();
    let kernel = gpu.kernel(&SHADER, "conv2d_gemm_backward_data", &constants);
    let pixels = (d.x[0] * d.x[2] * d.x[3]) as u32;
    let groups = [pixels.div_ceil(g.bn).max(1), params.ci.div_ceil(g.bm).max(1), 1];
    gpu.dispatch(enc, &kernel, &params, &[(1, a.dy), (2, a.w), (4, a.dx)], groups);
}

/// The operands of a backward weight: dw `[O,I,KH,KW]` += the weight gradient of x `[N,I,H,W]`
/// and dy `[N,O,OH,OW]`, db `[O]` += the sums of dy when given.
#[derive(Clone, Copy, Debug)]
pub struct BackwardWeight<'a> {
    /// `[N,I,H,W]`.
    pub x: &'a Tensor,
    /// `[N,O,OH,OW]`.
    pub dy: &'a Tensor,
    /// `[O,I,KH,KW]`, added into.
    pub dw: &'a Tensor,
    /// `[O]`, added into, or none.
    pub db: Option<&'a Tensor>,
    /// Stride and padding of the forward.
    pub p: Conv2d,
    /// A register tiling that overrides the tuned dispatch, as [`Forward::tiling`].
    pub tiling: Option<Tiling>,
}

/// `dw += conv2d_backward_weight(x, dy)` (and `db += sum dy`) by the GEMM kernel with tiling `g`,
/// split over K into chunks whose partial sums a second pass adds in order.
pub fn conv2d_backward_weight_gemm(gpu: &Gpu, enc: &mut Encoder, a: &BackwardWeight, g: &Gemm) {
    let d = dims("conv2d backward weight (gemm)", a.x, a.dw, a.dy, &a.p);
    let mut params = Params::new(d.x, d.y, &a.p);
    let wcols = (d.w[1] * d.w[2] * d.w[3]) as u32;
    if let Some(db) = a.db {
        assert_eq!(db.shape(), [d.w[0]], "conv2d backward weight: db {:?} for dw {:?}", db.shape(), d.w);
        params.has_bias = 1;
    }
    params.cols = wcols + params.has_bias;
    let pixels = (d.y[0] * d.y[2] * d.y[3]) as u32;
    if pixels == 0 || params.co == 0 || params.cols == 0 {
        return; // empty sums: nothing to add
    }
    let tiles = [params.cols.div_ceil(g.bn), params.co.div_ceil(g.bm)];
    (params.chunk, params.chunks) = g.split_k(pixels, tiles[0] * tiles[1]);
    let part = gpu.empty(&[(params.chunks * params.co * params.cols) as usize]);
    let constants: Vec<_> = g.constants(&gpu.limits).into_iter().chain(geometry(d.w, &a.p)).collect();
    let kernel = gpu.kernel(&SHADER, "conv2d_gemm_backward_weight", &constants);
    let groups = [tiles[0], tiles[1], params.chunks];
    gpu.dispatch(enc, &kernel, &params, &[(1, a.x), (5, a.dy), (6, &part)], groups);
    let kernel = gpu.kernel(&SHADER, "conv2d_gemm_reduce", &geometry(d.w, &a.p)[..2]);
    // Without db the shader writes no element of binding 8 (no column of ones): dw stands in.
    let db = a.db.unwrap_or(a.dw);
    let len = (params.co * params.cols) as usize;
    gpu.dispatch(enc, &kernel, &params, &[(6, &part), (7, a.dw), (8, db)], groups_1d(len, REDUCE_WG));
}

#[cfg(test)]
mod tests;
