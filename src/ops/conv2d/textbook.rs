//! The textbook convolution: `shaders/conv2d/textbook.wgsl`, one invocation per output element
//! running the loops of the formulas in [`super`]'s doc, no tiling and no workgroup memory. It is
//! the version to read first, the oracle the tiled kernels are tested against on the GPU, and what
//! the default wrappers ([`super::conv2d_forward`], ...) dispatch under
//! [`Kernels::Reference`](crate::runtime::Kernels) (`--kernels reference`).
//!
//! The weight and bias gradients sum over every output pixel, more than lavapipe lets one
//! invocation loop over (65,535 iterations in all): each sum is cut, in order, into runs of whole
//! rows (n, oh) of at most [`MAX_RUN`] loop iterations, whose sums a second pass adds in run order
//! (see the shader's header).

use super::{dims, Conv2d, Dims, Epilogue};
use crate::autograd::tape::Accumulate;
use crate::autograd::tensor::Tensor;
use crate::ops::{dropout, relu};
use crate::runtime::{groups_1d, Encoder, Gpu, Shader};
use crate::shader;

const SHADER: Shader = shader!("conv2d/textbook");
/// Threads a workgroup (the shader's `WG`).
const WG: u32 = 64;
/// Most loop iterations one invocation of the weight or bias sum runs: a quarter of lavapipe's loop
/// guard (65,535 in all), and long enough runs that the second pass has few to add.
pub const MAX_RUN: usize = 16384;

/// A sum over `rows` rows of `len` values, cut into runs of whole rows of at most [`MAX_RUN`] loop
/// iterations (a row costs `len + 1`: its values and a step of the row loop):
/// `(rows a run, runs)`. The textbook kernels of conv_transpose2d and batchnorm2d cut theirs alike.
pub(crate) fn runs(rows: usize, len: usize) -> (u32, u32) {
    assert!(len < 65_535, "a row of {len} values is past the loop guard of CPU drivers");
    let per_run = (MAX_RUN / (len + 1)).max(1);
    (per_run as u32, rows.div_ceil(per_run) as u32)
}

/// Mirrors `Conv` in `shaders/conv2d/textbook.wgsl`.
#[repr(C)]
#[derive(Clone, Copy, Default, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    n: u32,
    ci: u32,
    h: u32,
    w: u32,
    co: u32,
    kh: u32,
    kw: u32,
    oh: u32,
    ow: u32,
    sh: u32,
    sw: u32,
    ph: u32,
    pw: u32,
    has_bias: u32,
    accumulate: u32,
    rows: u32,
    runs: u32,
    len: u32,
}

impl Params {
    fn new(d: &Dims, p: &Conv2d) -> Params {
        let u = |v: usize| v as u32;
        let ([n, ci, h, w], [co, _, kh, kw], [_, _, oh, ow]) = (d.x, d.w, d.y);
        Params {
            n: u(n),
            ci: u(ci),
            h: u(h),
            w: u(w),
            co: u(co),
            kh: u(kh),
            kw: u(kw),
            oh: u(oh),
            ow: u(ow),
            sh: u(p.stride[0]),
            sw: u(p.stride[1]),
            ph: u(p.pad[0]),
            pw: u(p.pad[1]),
            ..Params::default()
        }
    }
}

fn dispatch(gpu: &Gpu, enc: &mut Encoder, entry: &'static str, params: &Params, buffers: &[(u32, &Tensor)], n: usize) {
    let kernel = gpu.kernel(&SHADER, entry, &[]);
    gpu.dispatch(enc, &kernel, params, buffers, groups_1d(n, WG));
}

/// `y = conv(x, w) + b`. x `[N,I,H,W]`, w `[O,I,KH,KW]`, b `[O]` or none, y `[N,O,OH,OW]`.
pub fn conv2d_forward(gpu: &Gpu, enc: &mut Encoder, x: &Tensor, w: &Tensor, b: Option<&Tensor>, y: &Tensor, p: Conv2d) {
    let d = dims("conv2d forward (textbook)", x, w, y, &p);
    let mut params = Params::new(&d, &p);
    if let Some(b) = b {
        assert_eq!(b.shape(), [d.w[0]], "conv2d forward: b {:?} for w {:?}", b.shape(), d.w);
        params.has_bias = 1;
    }
    // Without a bias the shader never reads binding 3: w stands in.
    dispatch(gpu, enc, "conv2d_forward", &params, &[(1, x), (2, w), (3, b.unwrap_or(w)), (4, y)], y.len());
}

/// `dx (+)= conv2d_backward_data(dy, w)`, added into dx or overwriting it as `acc` says.
/// dy `[N,O,OH,OW]`, w `[O,I,KH,KW]`, dx `[N,I,H,W]`.
pub fn conv2d_backward_data(
    gpu: &Gpu,
    enc: &mut Encoder,
    dy: &Tensor,
    w: &Tensor,
    dx: &Tensor,
    p: Conv2d,
    acc: Accumulate,
) {
    let d = dims("conv2d backward data (textbook)", dx, w, dy, &p);
    let params = Params { accumulate: (acc == Accumulate::Add) as u32, ..Params::new(&d, &p) };
    dispatch(gpu, enc, "conv2d_backward_data", &params, &[(2, w), (5, dy), (6, dx)], dx.len());
}

/// `dw += conv2d_backward_weight(x, dy)`, and `db += sum of dy over n, oh, ow` when `db` is given.
/// x `[N,I,H,W]`, dy `[N,O,OH,OW]`, dw `[O,I,KH,KW]`, db `[O]`.
pub fn conv2d_backward_weight(
    gpu: &Gpu,
    enc: &mut Encoder,
    x: &Tensor,
    dy: &Tensor,
    dw: &Tensor,
    db: Option<&Tensor>,
    p: Conv2d,
) {
    let d = dims("conv2d backward weight (textbook)", x, dw, dy, &p);
    let (rows, runs) = runs(d.y[0] * d.y[2], d.y[3]);
    let params = Params { rows, runs, ..Params::new(&d, &p) };
    let runs = runs as usize;
    let part = gpu.empty(&[runs * dw.len()]);
    dispatch(gpu, enc, "conv2d_backward_weight", &params, &[(1, x), (5, dy), (7, &part)], runs * dw.len());
    let add = Params { len: dw.len() as u32, ..params };
    dispatch(gpu, enc, "conv2d_add_runs", &add, &[(7, &part), (8, dw)], dw.len());
    if let Some(db) = db {
        assert_eq!(db.shape(), [d.w[0]], "conv2d backward weight: db {:?} for dw {:?}", db.shape(), d.w);
        let part = gpu.empty(&[runs * db.len()]);
        dispatch(gpu, enc, "conv2d_backward_bias", &params, &[(5, dy), (7, &part)], runs * db.len());
        let add = Params { len: db.len() as u32, ..params };
        dispatch(gpu, enc, "conv2d_add_runs", &add, &[(7, &part), (8, db)], db.len());
    }
}

/// `y = epilogue(z)` by the plain kernels: [`relu::relu_forward`], then
/// [`dropout::dropout_forward`] (whose mask the tiled kernels' fused epilogue reproduces bit for
/// bit). z, y: the same shape, different tensors; nothing is dispatched for the identity, whose
/// caller writes y itself.
pub fn epilogue_forward(gpu: &Gpu, enc: &mut Encoder, z: &Tensor, y: &Tensor, epilogue: Epilogue) {
    match epilogue {
        Epilogue::Identity => {}
        Epilogue::Relu => relu::relu_forward(gpu, enc, z, y),
        Epilogue::ReluDropout { p, seed } => {
            let r = gpu.empty(z.shape());
            relu::relu_forward(gpu, enc, z, &r);
            dropout::dropout_forward(gpu, enc, &r, y, p, seed);
        }
    }
}

/// `dz`, the gradient before the epilogue, given dy after it and the pre-activation z, by the
/// plain kernels and the chain rule: through [`dropout::dropout_backward`], then
/// [`relu::relu_backward`] (`dz = dy * keep * scale * (z > 0)`). For the identity, dy itself.
/// z, dy: the same shape.
pub fn epilogue_backward(gpu: &Gpu, enc: &mut Encoder, z: &Tensor, dy: &Tensor, epilogue: Epilogue) -> Tensor {
    let dy = match epilogue {
        Epilogue::Identity => return dy.clone(),
        Epilogue::Relu => dy.clone(),
        Epilogue::ReluDropout { p, seed } => {
            let d = gpu.zeros(enc, dy.shape());
            dropout::dropout_backward(gpu, enc, dy, &d, p, seed);
            d
        }
    };
    let dz = gpu.zeros(enc, z.shape());
    relu::relu_backward(gpu, enc, z, &dy, &dz);
    dz
}

#[cfg(test)]
mod tests;
