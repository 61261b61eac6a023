//! The textbook transposed convolution: `shaders/conv_transpose2d/textbook.wgsl`, one invocation
//! per output element running the loops of the formulas in [`super`]'s doc, no tiling and no
//! workgroup memory. The oracle the tiled kernels are tested against on the GPU, and what the
//! default wrappers ([`super::conv_transpose2d_forward`], the fused up-convolution and
//! concatenation, ...) dispatch under [`Kernels::Reference`](crate::runtime::Kernels).
//!
//! As in the fused op, y and dy may be concatenation buffers `[N,C,2H,2W]` with C >= O: the
//! convolution owns channels 0..O. The weight and bias sums are cut into runs of whole rows under
//! lavapipe's loop guard (as conv2d's, see [`conv2d::textbook::MAX_RUN`]), added in run order by a
//! second pass.

use super::{params, Params};
use crate::autograd::tape::Accumulate;
use crate::autograd::tensor::Tensor;
use crate::ops::conv2d;
use crate::runtime::{groups_1d, Encoder, Gpu, Shader};
use crate::shader;

const SHADER: Shader = shader!("conv_transpose2d/textbook");
/// Threads a workgroup (the shader's `WG`).
const WG: u32 = 64;

/// Mirrors `ConvT` in `shaders/conv_transpose2d/textbook.wgsl`.
#[repr(C)]
#[derive(Clone, Copy, Default, bytemuck::Pod, bytemuck::Zeroable)]
struct Dims {
    n: u32,
    ci: u32,
    h: u32,
    w: u32,
    co: u32,
    yc: u32,
    has_bias: u32,
    accumulate: u32,
    rows: u32,
    runs: u32,
    len: u32,
}

impl Dims {
    fn of(p: &Params) -> Dims {
        Dims { n: p.n, ci: p.ci, h: p.h, w: p.w, co: p.co, yc: p.yc, ..Dims::default() }
    }

    /// The weight or bias sum over `rows` rows of `len` pixels, cut into runs.
    fn with_runs(self, rows: u32, len: u32) -> Dims {
        let (rows, runs) = conv2d::textbook::runs(rows as usize, len as usize);
        Dims { rows, runs, ..self }
    }
}

fn dispatch(gpu: &Gpu, enc: &mut Encoder, entry: &'static str, dims: &Dims, buffers: &[(u32, &Tensor)], n: usize) {
    let kernel = gpu.kernel(&SHADER, entry, &[]);
    gpu.dispatch(enc, &kernel, dims, buffers, groups_1d(n, WG));
}

/// `y[:, 0..O] = conv_transpose2d(x, w) + b`. x `[N,I,H,W]`, w `[I,O,2,2]`, b `[O]` or none,
/// y `[N,C,2H,2W]` with C >= O (channels O.. are left as they are).
pub fn conv_transpose2d_forward(gpu: &Gpu, enc: &mut Encoder, x: &Tensor, w: &Tensor, b: Option<&Tensor>, y: &Tensor) {
    forward(gpu, enc, params("conv_transpose2d (textbook)", x, w, y, true), x, w, b, y);
}

pub(super) fn forward(gpu: &Gpu, enc: &mut Encoder, p: Params, x: &Tensor, w: &Tensor, b: Option<&Tensor>, y: &Tensor) {
    let mut dims = Dims::of(&p);
    if let Some(b) = b {
        assert_eq!(b.len(), p.co as usize, "conv_transpose2d: b {:?} vs w {:?}", b.shape(), w.shape());
        dims.has_bias = 1;
    }
    let outputs = (p.n * p.co * 4 * p.h * p.w) as usize;
    // Without a bias the shader never reads binding 3: w stands in.
    dispatch(gpu, enc, "conv_transpose2d_forward", &dims, &[(1, x), (2, w), (3, b.unwrap_or(w)), (4, y)], outputs);
}

/// `dx (+)= conv_transpose2d^T(dy[:, 0..O])`, added into dx or overwriting it as `acc` says.
/// w `[I,O,2,2]`, dy `[N,C,2H,2W]` with C >= O, dx `[N,I,H,W]`.
pub fn conv_transpose2d_backward_data(
    gpu: &Gpu,
    enc: &mut Encoder,
    w: &Tensor,
    dy: &Tensor,
    dx: &Tensor,
    acc: Accumulate,
) {
    backward_data(gpu, enc, params("conv_transpose2d backward_data (textbook)", dx, w, dy, true), w, dy, dx, acc);
}

pub(super) fn backward_data(
    gpu: &Gpu,
    enc: &mut Encoder,
    p: Params,
    w: &Tensor,
    dy: &Tensor,
    dx: &Tensor,
    acc: Accumulate,
) {
    let dims = Dims { accumulate: (acc == Accumulate::Add) as u32, ..Dims::of(&p) };
    dispatch(gpu, enc, "conv_transpose2d_backward_data", &dims, &[(2, w), (5, dy), (6, dx)], dx.len());
}

/// `dw += x (*) dy[:, 0..O]` and `db += sum of dy[:, 0..O]` over batch and pixels, each when
/// given. x `[N,I,H,W]`, dy `[N,C,2H,2W]` with C >= O, dw `[I,O,2,2]`, db `[O]`.
pub fn conv_transpose2d_backward_weight(
    gpu: &Gpu,
    enc: &mut Encoder,
    x: &Tensor,
    dy: &Tensor,
    dw: &Tensor,
    db: Option<&Tensor>,
) {
    let p = params("conv_transpose2d backward_weight (textbook)", x, dw, dy, true);
    backward_weight(gpu, enc, p, x, dy, dw, db);
}

pub(super) fn backward_weight(
    gpu: &Gpu,
    enc: &mut Encoder,
    p: Params,
    x: &Tensor,
    dy: &Tensor,
    dw: &Tensor,
    db: Option<&Tensor>,
) {
    let dims = Dims::of(&p).with_runs(p.n * p.h, p.w);
    let part = gpu.empty(&[dims.runs as usize * dw.len()]);
    let threads = dims.runs as usize * dw.len();
    dispatch(gpu, enc, "conv_transpose2d_backward_weight", &dims, &[(1, x), (5, dy), (7, &part)], threads);
    add_runs(gpu, enc, dims, &part, dw);
    if let Some(db) = db {
        bias(gpu, enc, p, dy, db);
    }
}

/// `db += sum of dy[:, 0..O]` over batch and pixels; `p` gives dy's shape.
pub(super) fn bias(gpu: &Gpu, enc: &mut Encoder, p: Params, dy: &Tensor, db: &Tensor) {
    assert_eq!(db.len(), p.co as usize, "conv_transpose2d: db {:?} for {} output channels", db.shape(), p.co);
    let dims = Dims::of(&p).with_runs(p.n * 2 * p.h, 2 * p.w);
    let part = gpu.empty(&[dims.runs as usize * db.len()]);
    let threads = dims.runs as usize * db.len();
    dispatch(gpu, enc, "conv_transpose2d_backward_bias", &dims, &[(5, dy), (7, &part)], threads);
    add_runs(gpu, enc, dims, &part, db);
}

/// `grad += sum over runs of part` (`[runs, len]` -> `[len]`), in run order.
fn add_runs(gpu: &Gpu, enc: &mut Encoder, dims: Dims, part: &Tensor, grad: &Tensor) {
    let dims = Dims { len: grad.len() as u32, ..dims };
    dispatch(gpu, enc, "conv_transpose2d_add_runs", &dims, &[(7, part), (8, grad)], grad.len());
}

#[cfg(test)]
mod tests;
