//! The 2x2 stride-2 transposed convolution as GEMMs tiled through workgroup memory
//! (`shaders/conv_transpose2d/gemm.wgsl`): the GPU-shaped kernels, which the default wrappers
//! dispatch when [`Gpu::tuning`] has [`ConvGemm`](crate::ops::conv2d::gemm::ConvGemm) tilings.
//! Same contracts as the tiled kernels in [`super`]: y and dy may be concatenation buffers
//! `[N,C,2H,2W]` with C >= O (the op owns channels 0..O), dx is added into or overwritten, dw and
//! db are added into.

use super::{params, Params};
use crate::autograd::tape::Accumulate;
use crate::autograd::tensor::Tensor;
use crate::ops::conv2d::gemm::Gemm;
use crate::runtime::{groups_1d, Encoder, Gpu, Shader};
use crate::shader;

const SHADER: Shader = shader!("conv_transpose2d/gemm");
/// Threads a workgroup of the split-K reduction (the shader's literal 256).
const REDUCE_WG: u32 = 256;

/// Mirrors `Params` in `shaders/conv_transpose2d/gemm.wgsl`.
#[repr(C)]
#[derive(Clone, Copy, Default, bytemuck::Pod, bytemuck::Zeroable)]
struct Dims {
    n: u32,
    ci: u32,
    co: u32,
    h: u32,
    w: u32,
    yc: u32,
    has_bias: u32,
    chunk: u32,
    chunks: u32,
    rows: u32,
}

impl Dims {
    fn of(p: &Params) -> Dims {
        Dims { n: p.n, ci: p.ci, co: p.co, h: p.h, w: p.w, yc: p.yc, ..Dims::default() }
    }

    fn pixels(&self) -> u32 {
        self.n * self.h * self.w
    }
}

/// The tensors of one call: which are read and written depends on the direction.
#[derive(Clone, Copy, Debug)]
pub(super) struct Operands<'a> {
    /// x `[N,I,H,W]` (forward, weight) or dx (data).
    pub x: &'a Tensor,
    /// w `[I,O,2,2]` (forward, data) or dw (weight).
    pub w: &'a Tensor,
    /// b or db `[O]`, when given.
    pub b: Option<&'a Tensor>,
    /// y or dy `[N,C,2H,2W]`, C >= O.
    pub y: &'a Tensor,
}

/// `y[:, 0..O] = conv_transpose2d(x, w) + b` with tiling `g`.
pub(super) fn forward(gpu: &Gpu, enc: &mut Encoder, p: Params, t: Operands, g: &Gemm) {
    let mut dims = Dims::of(&p);
    if let Some(b) = t.b {
        assert_eq!(b.len(), p.co as usize, "conv_transpose2d: b {:?} vs w {:?}", b.shape(), t.w.shape());
        dims.has_bias = 1;
    }
    if dims.pixels() == 0 || p.co == 0 {
        return; // y has no element of ours
    }
    let kernel = gpu.kernel(&SHADER, "conv_transpose2d_gemm_forward", &g.constants(&gpu.limits));
    let groups = [dims.pixels().div_ceil(g.bn), (4 * p.co).div_ceil(g.bm), 1];
    // Without a bias the shader never reads binding 3: w stands in.
    let b = t.b.unwrap_or(t.w);
    gpu.dispatch(enc, &kernel, &dims, &[(1, t.x), (2, t.w), (3, b), (4, t.y)], groups);
}

/// `dx (+)= conv_transpose2d^T(dy[:, 0..O])` with tiling `g` (t.x is dx, t.y is dy).
pub(super) fn backward_data(gpu: &Gpu, enc: &mut Encoder, p: Params, t: Operands, acc: Accumulate, g: &Gemm) {
    let dims = Dims::of(&p);
    if dims.pixels() == 0 || p.ci == 0 {
        return; // nothing to write
    }
    if p.co == 0 {
        // An empty sum: nothing to add, or zeros to write.
        if acc == Accumulate::Overwrite {
            enc.clear(t.x);
        }
        return;
    }
    let constants: Vec<_> = g.constants(&gpu.limits).into_iter().chain([acc.constant()]).collect();
    let kernel = gpu.kernel(&SHADER, "conv_transpose2d_gemm_backward_data", &constants);
    let groups = [dims.pixels().div_ceil(g.bn), p.ci.div_ceil(g.bm), 1];
    gpu.dispatch(enc, &kernel, &dims, &[(2, t.w), (5, t.y), (6, t.x)], groups);
}

/// `dw += x (*) dy[:, 0..O]`, and `db += sum dy[:, 0..O]` when given, with tiling `g` (t.w is dw,
/// t.b is db, t.y is dy): split over the pixels into chunks whose partial sums a second pass adds
/// in order.
pub(super) fn backward_weight(gpu: &Gpu, enc: &mut Encoder, p: Params, t: Operands, g: &Gemm) {
    let mut dims = Dims::of(&p);
    if let Some(db) = t.b {
        assert_eq!(db.len(), p.co as usize, "conv_transpose2d: db {:?} vs dw {:?}", db.shape(), t.w.shape());
        dims.has_bias = 1;
    }
    dims.rows = p.ci + dims.has_bias;
    if dims.pixels() == 0 || p.co == 0 || dims.rows == 0 {
        return; // empty sums, or no gradient to add to
    }
    let tiles = [(4 * p.co).div_ceil(g.bn), dims.rows.div_ceil(g.bm)];
    (dims.chunk, dims.chunks) = g.split_k(dims.pixels(), tiles[0] * tiles[1]);
    let part = gpu.empty(&[(dims.chunks * dims.rows * 4 * p.co) as usize]);
    let kernel = gpu.kernel(&SHADER, "conv_transpose2d_gemm_backward_weight", &g.constants(&gpu.limits));
    let groups = [tiles[0], tiles[1], dims.chunks];
    gpu.dispatch(enc, &kernel, &dims, &[(1, t.x), (5, t.y), (7, &part)], groups);
    let kernel = gpu.kernel(&SHADER, "conv_transpose2d_gemm_reduce", &[]);
    // Without db the shader writes no element of binding 9: dw stands in.
    let db = t.b.unwrap_or(t.w);
    let len = (p.ci * 4 * p.co + p.co) as usize;
    gpu.dispatch(enc, &kernel, &dims, &[(7, &part), (8, t.w), (9, db)], groups_1d(len, REDUCE_WG));
}

/// [`forward`] on tensors: x `[N,I,H,W]`, w `[I,O,2,2]`, b `[O]` or none, y `[N,O,2H,2W]`.
pub fn conv_transpose2d_forward_gemm(
    gpu: &Gpu,
    enc: &mut Encoder,
    x: &Tensor,
    w: &Tensor,
    b: Option<&Tensor>,
    y: &Tensor,
    g: &Gemm,
) {
    let p = params("conv_transpose2d (gemm)", x, w, y, false);
    forward(gpu, enc, p, Operands { x, w, b, y }, g);
}

/// [`backward_data`] on tensors: `dx (+)= ...` as `acc` says. w `[I,O,2,2]`, dy `[N,O,2H,2W]`,
/// dx `[N,I,H,W]`.
pub fn conv_transpose2d_backward_data_gemm(
    gpu: &Gpu,
    enc: &mut Encoder,
    (w, dy, dx): (&Tensor, &Tensor, &Tensor),
    acc: Accumulate,
    g: &Gemm,
) {
    let p = params("conv_transpose2d backward_data (gemm)", dx, w, dy, false);
    backward_data(gpu, enc, p, Operands { x: dx, w, b: None, y: dy }, acc, g);
}

/// [`backward_weight`] on tensors: `dw += ...`, `db += ...` when given. x `[N,I,H,W]`,
/// dy `[N,O,2H,2W]`, dw `[I,O,2,2]`, db `[O]`.
pub fn conv_transpose2d_backward_weight_gemm(
    gpu: &Gpu,
    enc: &mut Encoder,
    (x, dy): (&Tensor, &Tensor),
    (dw, db): (&Tensor, Option<&Tensor>),
    g: &Gemm,
) {
    let p = params("conv_transpose2d backward_weight (gemm)", x, dw, dy, false);
    backward_weight(gpu, enc, p, Operands { x, w: dw, b: db, y: dy }, g);
}

#[cfg(test)]
mod tests;
