//! 2x2 transposed convolution with stride 2: the U-Net decoder's up-convolution, which
//! doubles height and width and (usually) halves the channels.
//!
//! x: `[N,I,H,W]`, w: `[I,O,2,2]` (PyTorch `ConvTranspose2d` layout), b: `[O]` (optional),
//! y: `[N,O,2H,2W]`:
//! ```text
//! y[n,o,2i+a,2j+b] = b[o] + sum_c x[n,c,i,j] w[c,o,a,b]
//! dx[n,c,i,j]  += sum_{o,a,b} dy[n,o,2i+a,2j+b] w[c,o,a,b]
//! dw[c,o,a,b]  += sum_{n,i,j} x[n,c,i,j] dy[n,o,2i+a,2j+b]
//! db[o]        += sum_{n,Y,X} dy[n,o,Y,X]
//! ```
//! With stride = kernel size the 2x2 windows do not overlap, so all three are GEMMs over
//! the pixels; `shaders/conv_transpose2d/tiled.wgsl` explains the register tiling. When W is a
//! multiple of 4 (every U-Net level) the kernels work on quads of 4 pixels loaded as one
//! vec4; other shapes take general kernels. The weight gradient reduces over all N*H*W
//! pixels: it is split into slices whose partial sums go to a pooled scratch buffer, then
//! summed in slice order by a second pass (deterministic).
//!
//! The U-Net concatenates the up-convolution's output with a skip tensor (upsampled
//! channels first). [`conv_transpose2d_concat`] fuses the two: the kernels write y straight
//! into channels `0..O` of the concatenation buffer (and read dy from there) through a
//! channel stride, so only the skip tensor is copied, and no slice of dy is.
//!
//! [`textbook`] holds the direct kernels (`shaders/conv_transpose2d/textbook.wgsl`: one invocation
//! per output element, the formulas above as loops): the oracle the tiled kernels are tested
//! against, and what every default wrapper here dispatches under [`Kernels::Reference`].

use crate::autograd::tape::{Accumulate, Step};
use crate::autograd::tensor::Tensor;
use crate::ops::concat::{concat_backward_b, concat_forward_part};
use crate::runtime::{groups_1d, Encoder, Gpu, Kernels, Shader};
use crate::shader;

pub mod gemm;
use gemm::Operands;
pub mod textbook;

pub use crate::tune::tiling::conv_transpose2d::Workgroups;

const SHADER: Shader = shader!("conv_transpose2d/tiled");
const QUADS_SHADER: Shader = shader!("conv_transpose2d/tiled_quads");
/// Register tile of the general kernels (the shader's `PX`, `TO`, `TC`; keep in step).
const PX: u32 = 4;
const TO: u32 = 4;
const TC: u32 = 4;
/// The general weight gradient uses about this many threads (blocks x slices), fewer when a
/// slice would cover less than [`MIN_SLICE`] pixels.
const TARGET_THREADS: u32 = 16384;
const MIN_SLICE: u32 = 64;

/// Tiles of the quad kernels (fixed in the shader; keep in step): a forward thread owns
/// [`QUADS_PER_THREAD`] quads x [`FORWARD_O`] output channels, a data thread as many quads x
/// [`DATA_C`] input channels, a weight thread [`WEIGHT_C`] x [`WEIGHT_O`] channels.
const QUADS_PER_THREAD: u32 = 4;
const FORWARD_O: u32 = 8;
const DATA_C: u32 = 16;
const WEIGHT_C: u32 = 16;
const WEIGHT_O: u32 = 4;
/// The quad weight gradient aims at this many threads (blocks x slices). Each slice writes a
/// partial sum of all of dw, so fewer, longer slices write less; 256 measured about 5% faster than
/// 1024 on lavapipe at the U-Net's levels, with work enough for every core.
const WEIGHT_THREADS: u32 = 256;
/// Most loop iterations a weight-gradient thread may run: lavapipe silently stops a loop after
/// 65535 (counted over the invocation), so slices are cut well below that.
const MAX_STEPS: u32 = 16384;

/// Mirrors `Params` in `shaders/conv_transpose2d/tiled.wgsl`.
#[repr(C)]
#[derive(Clone, Copy, Default, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    n: u32,
    ci: u32,
    co: u32,
    h: u32,
    w: u32,
    yc: u32,
    has_bias: u32,
    slices: u32,
    rows_per_slice: u32,
    step_n: u32,
    step_i: u32,
    step_j: u32,
    len: u32,
    base: u32,
}

impl Params {
    /// x (or dx) `[n, ci, h, w]`, `co` output channels, y (or dy) with `yc` >= `co` channels.
    fn new([n, ci, h, w]: [usize; 4], co: usize, yc: usize) -> Params {
        let u = |v: usize| v as u32;
        Params { n: u(n), ci: u(ci), co: u(co), h: u(h), w: u(w), yc: u(yc), ..Default::default() }
    }

    /// True when the quad kernels apply: whole quads of 4 pixels in every row.
    fn quads(&self) -> bool {
        self.w.is_multiple_of(4)
    }

    /// General kernels: split the N*H*W pixels of the weight (or bias) gradient into
    /// interleaved slices, for `blocks` thread blocks of output.
    fn with_pixel_slices(mut self, blocks: u32) -> Params {
        let pixels = self.n * self.h * self.w;
        let slices = TARGET_THREADS.div_ceil(blocks).min(pixels / MIN_SLICE).max(pixels.div_ceil(MAX_STEPS)).max(1);
        let hw = self.h * self.w;
        self.slices = slices;
        self.step_n = slices / hw;
        self.step_i = slices % hw / self.w;
        self.step_j = slices % self.w;
        self
    }

    /// Quad kernels: split the N*H rows of the weight gradient into slices of whole rows,
    /// for `blocks` thread blocks, each slice at most [`MAX_STEPS`] loop iterations.
    fn with_row_slices(mut self, blocks: u32) -> Params {
        let rows = self.n * self.h;
        let steps_per_row = self.w / 4 + 1; // the quads, and the row loop itself
        assert!(
            steps_per_row <= MAX_STEPS,
            "conv_transpose2d: rows of {} pixels are too long for one weight-gradient thread",
            self.w
        );
        let max_rows = MAX_STEPS / steps_per_row;
        let slices = WEIGHT_THREADS.div_ceil(blocks).min(rows).max(rows.div_ceil(max_rows)).max(1);
        self.rows_per_slice = rows.div_ceil(slices);
        self.slices = rows.div_ceil(self.rows_per_slice);
        self
    }
}

/// Check x (or dx) `[N,I,H,W]`, w `[I,O,2,2]` and the tensor `big` (y or dy), which must be
/// `[N,O,2H,2W]`, or `[N,C,2H,2W]` with C >= O when `concat` (channels 0..O are the op's).
fn params(what: &str, x: &Tensor, w: &Tensor, big: &Tensor, concat: bool) -> Params {
    let [n, ci, h, wd] = x.dims4(what);
    let [wi, co, kh, kw] = w.dims4(what);
    assert!(
        wi == ci && kh == 2 && kw == 2,
        "{what}: w {:?} must be [I,O,2,2] with I from x {:?}",
        w.shape(),
        x.shape()
    );
    let [bn, yc, bh, bw] = big.dims4(what);
    assert!(
        [bn, bh, bw] == [n, 2 * h, 2 * wd] && (yc == co || concat && yc > co),
        "{what}: x {:?} and w {:?} need y/dy of shape [N,{},2H,2W], got {:?}",
        x.shape(),
        w.shape(),
        if concat { "C>O" } else { "O" },
        big.shape()
    );
    Params::new([n, ci, h, wd], co, yc)
}

/// `y = conv_transpose2d(x, w) + b`, the operands and options in `f`. x: `[N,I,H,W]`,
/// w: `[I,O,2,2]`, b: `[O]`, y: `[N,O,2H,2W]`. With `f.workgroups` set, the register-tiled
/// kernels with those workgroups; otherwise the kernels of `gpu.tuning()` (tiled, or the [`gemm`]
/// ones), or the [`textbook`] kernel under [`Kernels::Reference`] (as every default wrapper here).
pub fn conv_transpose2d_forward(gpu: &Gpu, enc: &mut Encoder, f: &Forward) {
    let Forward { x, w, b, y, workgroups } = *f;
    let p = params("conv_transpose2d", x, w, y, false);
    match workgroups {
        Some(wg) => forward(gpu, enc, p, Operands { x, w, b, y }, &wg),
        None => forward_default(gpu, enc, p, x, w, b, y),
    }
}

/// The forward of the default wrappers: tiled as `gpu.tuning()` says, or textbook.
fn forward_default(gpu: &Gpu, enc: &mut Encoder, p: Params, x: &Tensor, w: &Tensor, b: Option<&Tensor>, y: &Tensor) {
    match (gpu.kernels(), gpu.tuning().conv_gemm) {
        (Kernels::Tuned, Some(g)) => gemm::forward(gpu, enc, p, Operands { x, w, b, y }, &g.conv_transpose2d_forward),
        (Kernels::Tuned, None) => forward(gpu, enc, p, Operands { x, w, b, y }, &gpu.tuning().conv_transpose2d),
        (Kernels::Reference, _) => textbook::forward(gpu, enc, p, x, w, b, y),
    }
}

/// The forward with the register-tiled kernels: y = conv_transpose2d(x, w) + b.
fn forward(gpu: &Gpu, enc: &mut Encoder, mut params: Params, t: Operands, wg: &Workgroups) {
    let Operands { x, w, b, y } = t;
    wg.assert_valid();
    if let Some(b) = b {
        assert_eq!(b.len(), params.co as usize, "conv_transpose2d: b {:?} vs w {:?}", b.shape(), w.shape());
    }
    if params.n * params.h * params.w == 0 || params.co == 0 {
        return; // y has no element of ours
    }
    params.has_bias = b.is_some() as u32;
    // Without a bias the shader never reads binding 3; w stands in for it.
    let b = b.unwrap_or(w);
    if params.quads() {
        let kernel = gpu.kernel(&QUADS_SHADER, "conv_transpose2d_forward_quads", &[("WG", wg.quads as f64)]);
        let groups = [params.co.div_ceil(FORWARD_O), quad_threads(&params).div_ceil(wg.quads), 1];
        gpu.dispatch(enc, &kernel, &params, &[(9, x), (2, w), (3, b), (10, y)], groups);
    } else {
        let kernel = gpu.kernel(&SHADER, "conv_transpose2d_forward", &[("WG", wg.general as f64)]);
        let groups = [(params.h * params.w).div_ceil(wg.general * PX), params.co.div_ceil(TO), params.n];
        gpu.dispatch(enc, &kernel, &params, &[(1, x), (2, w), (3, b), (4, y)], groups);
    }
}

/// Threads of the forward and data quad kernels: one per tile of 4 quads of a row.
fn quad_threads(p: &Params) -> u32 {
    p.n * p.h * (p.w / 4).div_ceil(QUADS_PER_THREAD)
}

/// `dx (+)= conv_transpose2d^T(dy)`, into dx as `a.acc` says: added into, or overwritten (every
/// element is written, so a fresh gradient buffer needs no zeroing first; see
/// [`crate::autograd::tape::BackwardCtx::grad_to_fill`]). w: `[I,O,2,2]`, dy: `[N,O,2H,2W]`,
/// dx: `[N,I,H,W]`. With `a.workgroups` set, the register-tiled kernels with those workgroups.
pub fn conv_transpose2d_backward_data(gpu: &Gpu, enc: &mut Encoder, a: &BackwardData) {
    let BackwardData { w, dy, dx, acc, workgroups } = *a;
    let params = params("conv_transpose2d backward_data", dx, w, dy, false);
    match workgroups {
        Some(wg) => backward_data(gpu, enc, params, Operands { x: dx, w, b: None, y: dy }, acc, &wg),
        None => backward_data_default(gpu, enc, params, w, dy, dx, acc),
    }
}

/// The backward data of the default wrappers: tiled as `gpu.tuning()` says, or textbook.
fn backward_data_default(
    gpu: &Gpu,
    enc: &mut Encoder,
    p: Params,
    w: &Tensor,
    dy: &Tensor,
    dx: &Tensor,
    acc: Accumulate,
) {
    match (gpu.kernels(), gpu.tuning().conv_gemm) {
        (Kernels::Tuned, Some(g)) => {
            let t = Operands { x: dx, w, b: None, y: dy };
            gemm::backward_data(gpu, enc, p, t, acc, &g.conv_transpose2d_backward_data)
        }
        (Kernels::Tuned, None) => {
            let t = Operands { x: dx, w, b: None, y: dy };
            backward_data(gpu, enc, p, t, acc, &gpu.tuning().conv_transpose2d)
        }
        (Kernels::Reference, _) => textbook::backward_data(gpu, enc, p, w, dy, dx, acc),
    }
}

/// `dx (+)= conv_transpose2d^T(dy)` with the register-tiled kernels; `t` holds dx as x and dy as y.
fn backward_data(gpu: &Gpu, enc: &mut Encoder, params: Params, t: Operands, acc: Accumulate, wg: &Workgroups) {
    let Operands { x: dx, w, y: dy, .. } = t;
    wg.assert_valid();
    if dx.is_empty() {
        return; // nothing to write
    }
    if params.co == 0 {
        // An empty sum: nothing to add, or zeros to write.
        if acc == Accumulate::Overwrite {
            enc.clear(dx);
        }
        return;
    }
    let accumulate = acc.constant();
    if params.quads() {
        let constants = [("WG", wg.quads as f64), accumulate];
        let kernel = gpu.kernel(&QUADS_SHADER, "conv_transpose2d_backward_data_quads", &constants);
        let groups = [params.ci.div_ceil(DATA_C), quad_threads(&params).div_ceil(wg.quads), 1];
        gpu.dispatch(enc, &kernel, &params, &[(2, w), (11, dy), (12, dx)], groups);
    } else {
        let constants = [("WG", wg.general as f64), accumulate];
        let kernel = gpu.kernel(&SHADER, "conv_transpose2d_backward_data", &constants);
        let groups = [(params.h * params.w).div_ceil(wg.general * PX), params.ci.div_ceil(TC), params.n];
        gpu.dispatch(enc, &kernel, &params, &[(2, w), (5, dy), (6, dx)], groups);
    }
}

/// `dw += x (*) dy` and, when given, `db += sum dy`. x: `[N,I,H,W]`, dy: `[N,O,2H,2W]`,
/// dw: `[I,O,2,2]`, db: `[O]`. With `a.workgroups` set, the register-tiled kernels with those
/// workgroups.
pub fn conv_transpose2d_backward_weight(gpu: &Gpu, enc: &mut Encoder, a: &BackwardWeight) {
    let BackwardWeight { x, dy, dw, db, workgroups } = *a;
    let params = params("conv_transpose2d backward_weight", x, dw, dy, false);
    match workgroups {
        Some(wg) => backward_weight(gpu, enc, params, Operands { x, w: dw, b: db, y: dy }, &wg),
        None => backward_weight_default(gpu, enc, params, x, dy, Some(dw), db),
    }
}

/// The weight and bias gradients of the default wrappers, each when given: tiled as
/// `gpu.tuning()` says, or textbook.
fn backward_weight_default(
    gpu: &Gpu,
    enc: &mut Encoder,
    p: Params,
    x: &Tensor,
    dy: &Tensor,
    dw: Option<&Tensor>,
    db: Option<&Tensor>,
) {
    let wg = gpu.tuning().conv_transpose2d;
    match (gpu.kernels(), dw, db) {
        (Kernels::Tuned, Some(dw), db) => match gpu.tuning().conv_gemm {
            Some(g) => {
                let t = Operands { x, w: dw, b: db, y: dy };
                gemm::backward_weight(gpu, enc, p, t, &g.conv_transpose2d_backward_weight)
            }
            None => backward_weight(gpu, enc, p, Operands { x, w: dw, b: db, y: dy }, &wg),
        },
        (Kernels::Tuned, None, Some(db)) => bias(gpu, enc, p, dy, db, &wg),
        (Kernels::Reference, Some(dw), db) => textbook::backward_weight(gpu, enc, p, x, dy, dw, db),
        (Kernels::Reference, None, Some(db)) => textbook::bias(gpu, enc, p, dy, db),
        (_, None, None) => {}
    }
}

/// `dw += x (*) dy`, `db += sum dy` with the register-tiled kernels; `t` holds dw as w, db as b
/// and dy as y.
fn backward_weight(gpu: &Gpu, enc: &mut Encoder, params: Params, t: Operands, wg: &Workgroups) {
    let Operands { x, w: dw, b: db, y: dy } = t;
    wg.assert_valid();
    let (ci, co) = (params.ci, params.co);
    if let Some(db) = db {
        assert_eq!(db.len(), co as usize, "conv_transpose2d: db {:?} vs dw {:?}", db.shape(), dw.shape());
    }
    if params.n * params.h * params.w == 0 || co == 0 {
        return; // empty sums, or no gradient to add to
    }
    if ci == 0 {
        if let Some(db) = db {
            bias(gpu, enc, params, dy, db, wg);
        }
        return;
    }
    let len = ci * co * 4;
    if params.quads() {
        // Pass 1: partial sums of dw, then of db, per slice of rows.
        let blocks = ci.div_ceil(WEIGHT_C) * co.div_ceil(WEIGHT_O);
        let params = Params { len, ..params.with_row_slices(blocks) };
        let partial = gpu.empty(&[params.slices as usize * (len + co) as usize]);
        let kernel = gpu.kernel(&QUADS_SHADER, "conv_transpose2d_backward_weight_quads", &[("WG", wg.quads as f64)]);
        let threads = (params.slices * blocks) as usize;
        // The partial sums bound twice: as vec4s for dw (binding 13), as scalars for db.
        gpu.dispatch(
            enc,
            &kernel,
            &params,
            &[(9, x), (11, dy), (7, &partial), (13, &partial)],
            groups_1d(threads, wg.quads),
        );
        // Pass 2, in slice order.
        sum_partials(gpu, enc, params, &partial, 0, dw, wg);
        if let Some(db) = db {
            sum_partials(gpu, enc, params, &partial, params.slices * len, db, wg);
        }
    } else {
        let blocks = ci.div_ceil(TC) * co.div_ceil(TO);
        let params = params.with_pixel_slices(blocks);
        let partial = gpu.empty(&[params.slices as usize * len as usize]);
        let kernel = gpu.kernel(&SHADER, "conv_transpose2d_backward_weight_partial", &[("WG", wg.general as f64)]);
        let threads = (params.slices * blocks) as usize;
        gpu.dispatch(enc, &kernel, &params, &[(1, x), (5, dy), (7, &partial)], groups_1d(threads, wg.general));
        sum_partials(gpu, enc, params, &partial, 0, dw, wg);
        if let Some(db) = db {
            bias(gpu, enc, params, dy, db, wg);
        }
    }
}

/// `db += sum dy` over batch and pixels. dy: `[N,O,2H,2W]`, db: `[O]`.
pub fn conv_transpose2d_backward_bias(gpu: &Gpu, enc: &mut Encoder, dy: &Tensor, db: &Tensor) {
    let [n, co, h2, w2] = dy.dims4("conv_transpose2d backward_bias dy");
    assert!(h2 % 2 == 0 && w2 % 2 == 0, "conv_transpose2d backward_bias: dy {:?} must have even H, W", dy.shape());
    assert_eq!(db.shape(), [co], "conv_transpose2d backward_bias: db {:?} vs dy {:?}", db.shape(), dy.shape());
    let p = Params::new([n, 0, h2 / 2, w2 / 2], co, co);
    match gpu.kernels() {
        Kernels::Tuned => bias(gpu, enc, p, dy, db, &gpu.tuning().conv_transpose2d),
        Kernels::Reference => textbook::bias(gpu, enc, p, dy, db),
    }
}

/// `db += sum dy[:, 0..O]` with the general kernel (any W); `params` gives dy's shape.
fn bias(gpu: &Gpu, enc: &mut Encoder, params: Params, dy: &Tensor, db: &Tensor, wg: &Workgroups) {
    let co = params.co;
    if co == 0 || params.n * params.h * params.w == 0 {
        return;
    }
    let params = params.with_pixel_slices(co.div_ceil(TO));
    let partial = gpu.empty(&[params.slices as usize, co as usize]);
    let kernel = gpu.kernel(&SHADER, "conv_transpose2d_backward_bias_partial", &[("WG", wg.general as f64)]);
    let threads = (params.slices * co) as usize;
    gpu.dispatch(enc, &kernel, &params, &[(5, dy), (7, &partial)], groups_1d(threads, wg.general));
    sum_partials(gpu, enc, params, &partial, 0, db, wg);
}

/// `dst += sum over slices of partial[base..]` (`[slices, len]` -> `[len]`), in slice order.
fn sum_partials(
    gpu: &Gpu,
    enc: &mut Encoder,
    params: Params,
    partial: &Tensor,
    base: u32,
    dst: &Tensor,
    wg: &Workgroups,
) {
    let params = Params { len: dst.len() as u32, base, ..params };
    let kernel = gpu.kernel(&SHADER, "conv_transpose2d_sum_partials", &[("WG", wg.general as f64)]);
    gpu.dispatch(enc, &kernel, &params, &[(7, partial), (8, dst)], groups_1d(dst.len(), wg.general));
}

/// Transposed 2x2 stride-2 convolution on the tape. x: `[N,I,H,W]`, w: `[I,O,2,2]`,
/// b: `[O]` or `None`; returns y: `[N,O,2H,2W]`.
pub fn conv_transpose2d(step: &mut Step, x: &Tensor, w: &Tensor, b: Option<&Tensor>) -> Tensor {
    let [n, _, h, wd] = x.dims4("conv_transpose2d x");
    let co = w.dims4("conv_transpose2d w")[1];
    let inputs: Vec<&Tensor> = [Some(x), Some(w), b].into_iter().flatten().collect();
    let y = step.output(&[n, co, 2 * h, 2 * wd], &inputs);
    conv_transpose2d_forward(step.gpu, &mut step.enc, &Forward { x, w, b, y: &y, workgroups: None });
    let (x, w, b) = (x.clone(), w.clone(), b.cloned());
    step.record("conv_transpose2d", &y, move |ctx, dy| {
        let grads = OwnedGrads {
            dx: ctx.grad_to_fill(&x),
            dw: ctx.grad(&w),
            db: b.as_ref().and_then(|b| ctx.grad(b)),
            dskip: None,
        };
        let params = params("conv_transpose2d backward", &x, &w, dy, false);
        backward(ctx.gpu, ctx.enc, params, &x, &w, dy, &grads);
    });
    y
}

/// Plain-Rust transposed convolution on `f64`, the contract the shaders are tested against.
mod concat;
pub use concat::*;
mod operands;
pub use operands::{BackwardData, BackwardWeight, Forward};

pub mod reference;

#[cfg(test)]
mod tests;
