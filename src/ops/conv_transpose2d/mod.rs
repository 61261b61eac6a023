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
//! the pixels; `shaders/conv_transpose2d.wgsl` explains the register tiling. When W is a
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
//! [`textbook`] holds the direct kernels (`shaders/conv_transpose2d_textbook.wgsl`: one invocation
//! per output element, the formulas above as loops): the oracle the tiled kernels are tested
//! against, and what every default wrapper here dispatches under [`Kernels::Reference`].

use crate::autograd::tape::{Accumulate, Step};
use crate::autograd::tensor::Tensor;
use crate::ops::concat::{concat_backward_b, concat_forward_part};
use crate::runtime::{groups_1d, Encoder, Gpu, Kernels, Shader};
use crate::shader;

pub mod textbook;

pub use crate::tune::tiling::conv_transpose2d::Workgroups;

const SHADER: Shader = shader!("conv_transpose2d/tiled");
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

/// Mirrors `Params` in `shaders/conv_transpose2d.wgsl`.
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

/// `y = conv_transpose2d(x, w) + b`. x: `[N,I,H,W]`, w: `[I,O,2,2]`, b: `[O]`, y: `[N,O,2H,2W]`.
/// The tiled kernels with the workgroups of `gpu.tuning()`, or the [`textbook`] kernel under
/// [`Kernels::Reference`] (as every default wrapper here).
pub fn conv_transpose2d_forward(gpu: &Gpu, enc: &mut Encoder, x: &Tensor, w: &Tensor, b: Option<&Tensor>, y: &Tensor) {
    forward_default(gpu, enc, params("conv_transpose2d", x, w, y, false), x, w, b, y);
}

/// The forward of the default wrappers: tiled as `gpu.tuning()` says, or textbook.
fn forward_default(gpu: &Gpu, enc: &mut Encoder, p: Params, x: &Tensor, w: &Tensor, b: Option<&Tensor>, y: &Tensor) {
    match gpu.kernels() {
        Kernels::Tuned => forward(gpu, enc, p, x, w, b, y, &gpu.tuning().conv_transpose2d),
        Kernels::Reference => textbook::forward(gpu, enc, p, x, w, b, y),
    }
}

/// [`conv_transpose2d_forward`] with chosen workgroup sizes.
pub fn conv_transpose2d_forward_tiled(
    gpu: &Gpu,
    enc: &mut Encoder,
    x: &Tensor,
    w: &Tensor,
    b: Option<&Tensor>,
    y: &Tensor,
    wg: &Workgroups,
) {
    forward(gpu, enc, params("conv_transpose2d", x, w, y, false), x, w, b, y, wg);
}

#[allow(clippy::too_many_arguments)]
fn forward(
    gpu: &Gpu,
    enc: &mut Encoder,
    mut params: Params,
    x: &Tensor,
    w: &Tensor,
    b: Option<&Tensor>,
    y: &Tensor,
    wg: &Workgroups,
) {
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
        let kernel = gpu.kernel(&SHADER, "conv_transpose2d_forward_quads", &[("WG", wg.quads as f64)]);
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

/// `dx += conv_transpose2d^T(dy)`. w: `[I,O,2,2]`, dy: `[N,O,2H,2W]`, dx: `[N,I,H,W]`.
pub fn conv_transpose2d_backward_data(gpu: &Gpu, enc: &mut Encoder, w: &Tensor, dy: &Tensor, dx: &Tensor) {
    conv_transpose2d_backward_data_into(gpu, enc, w, dy, dx, Accumulate::Add);
}

/// [`conv_transpose2d_backward_data`] with chosen workgroup sizes.
pub fn conv_transpose2d_backward_data_tiled(
    gpu: &Gpu,
    enc: &mut Encoder,
    w: &Tensor,
    dy: &Tensor,
    dx: &Tensor,
    wg: &Workgroups,
) {
    let params = params("conv_transpose2d backward_data", dx, w, dy, false);
    backward_data(gpu, enc, params, w, dy, dx, Accumulate::Add, wg);
}

/// [`conv_transpose2d_backward_data`] into dx as `acc` says: added into, or overwritten (every
/// element is written, so a fresh gradient buffer needs no zeroing first; see
/// [`crate::autograd::tape::BackwardCtx::grad_to_fill`]).
pub fn conv_transpose2d_backward_data_into(
    gpu: &Gpu,
    enc: &mut Encoder,
    w: &Tensor,
    dy: &Tensor,
    dx: &Tensor,
    acc: Accumulate,
) {
    let params = params("conv_transpose2d backward_data", dx, w, dy, false);
    backward_data_default(gpu, enc, params, w, dy, dx, acc);
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
    match gpu.kernels() {
        Kernels::Tuned => backward_data(gpu, enc, p, w, dy, dx, acc, &gpu.tuning().conv_transpose2d),
        Kernels::Reference => textbook::backward_data(gpu, enc, p, w, dy, dx, acc),
    }
}

#[allow(clippy::too_many_arguments)]
fn backward_data(
    gpu: &Gpu,
    enc: &mut Encoder,
    params: Params,
    w: &Tensor,
    dy: &Tensor,
    dx: &Tensor,
    acc: Accumulate,
    wg: &Workgroups,
) {
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
        let kernel = gpu.kernel(&SHADER, "conv_transpose2d_backward_data_quads", &constants);
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
/// dw: `[I,O,2,2]`, db: `[O]`.
pub fn conv_transpose2d_backward_weight(
    gpu: &Gpu,
    enc: &mut Encoder,
    x: &Tensor,
    dy: &Tensor,
    dw: &Tensor,
    db: Option<&Tensor>,
) {
    let params = params("conv_transpose2d backward_weight", x, dw, dy, false);
    backward_weight_default(gpu, enc, params, x, dy, Some(dw), db);
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
        (Kernels::Tuned, Some(dw), db) => backward_weight(gpu, enc, p, x, dy, dw, db, &wg),
        (Kernels::Tuned, None, Some(db)) => bias(gpu, enc, p, dy, db, &wg),
        (Kernels::Reference, Some(dw), db) => textbook::backward_weight(gpu, enc, p, x, dy, dw, db),
        (Kernels::Reference, None, Some(db)) => textbook::bias(gpu, enc, p, dy, db),
        (_, None, None) => {}
    }
}

/// [`conv_transpose2d_backward_weight`] with chosen workgroup sizes.
#[allow(clippy::too_many_arguments)]
pub fn conv_transpose2d_backward_weight_tiled(
    gpu: &Gpu,
    enc: &mut Encoder,
    x: &Tensor,
    dy: &Tensor,
    dw: &Tensor,
    db: Option<&Tensor>,
    wg: &Workgroups,
) {
    let params = params("conv_transpose2d backward_weight", x, dw, dy, false);
    backward_weight(gpu, enc, params, x, dy, dw, db, wg);
}

#[allow(clippy::too_many_arguments)]
fn backward_weight(
    gpu: &Gpu,
    enc: &mut Encoder,
    params: Params,
    x: &Tensor,
    dy: &Tensor,
    dw: &Tensor,
    db: Option<&Tensor>,
    wg: &Workgroups,
) {
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
        let kernel = gpu.kernel(&SHADER, "conv_transpose2d_backward_weight_quads", &[("WG", wg.quads as f64)]);
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
#[allow(clippy::too_many_arguments)]
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
    conv_transpose2d_forward(step.gpu, &mut step.enc, x, w, b, &y);
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

/// Gradient buffers of the fused op (`None`: not wanted). dw and db are added into; dx and dskip
/// are added into or overwritten, as their [`Accumulate`] says.
#[derive(Clone, Copy, Debug, Default)]
pub struct ConcatGrads<'a> {
    /// `[N,I,H,W]`, of x.
    pub dx: Option<(&'a Tensor, Accumulate)>,
    /// `[I,O,2,2]`, of w.
    pub dw: Option<&'a Tensor>,
    /// `[O]`, of b.
    pub db: Option<&'a Tensor>,
    /// `[N,S,2H,2W]`, of the skip tensor.
    pub dskip: Option<(&'a Tensor, Accumulate)>,
}

/// Owned gradient buffers, as the tape hands them out.
struct OwnedGrads {
    dx: Option<(Tensor, Accumulate)>,
    dw: Option<Tensor>,
    db: Option<Tensor>,
    dskip: Option<(Tensor, Accumulate)>,
}

/// The backward kernels of both tape ops; dy has the channels `params.yc` (O, or O + S).
fn backward(gpu: &Gpu, enc: &mut Encoder, params: Params, x: &Tensor, w: &Tensor, dy: &Tensor, g: &OwnedGrads) {
    if let Some((dx, acc)) = &g.dx {
        backward_data_default(gpu, enc, params, w, dy, dx, *acc);
    }
    backward_weight_default(gpu, enc, params, x, dy, g.dw.as_ref(), g.db.as_ref());
    if let Some((dskip, acc)) = &g.dskip {
        // forward: y[:, O..] = skip  =>  dskip += dy[:, O..]
        concat_backward_b(gpu, enc, dy, dskip, *acc);
    }
}

/// The fused up-convolution and concatenation, forward:
/// `y = [conv_transpose2d(x, w) + b, skip]` along channels, the convolution written straight into
/// channels 0..O of y and the skip tensor copied after it. x: `[N,I,H,W]`, w: `[I,O,2,2]`, b: `[O]`,
/// skip: `[N,S,2H,2W]`, y: `[N,O+S,2H,2W]`.
#[allow(clippy::too_many_arguments)]
pub fn conv_transpose2d_concat_forward(
    gpu: &Gpu,
    enc: &mut Encoder,
    x: &Tensor,
    w: &Tensor,
    b: Option<&Tensor>,
    skip: &Tensor,
    y: &Tensor,
) {
    let params = concat_params("conv_transpose2d_concat", x, w, skip, y);
    forward_default(gpu, enc, params, x, w, b, y);
    concat_forward_part(gpu, enc, skip, y, params.co as usize);
}

/// The fused op's backward: from dy `[N,O+S,2H,2W]` (x, w, skip as in the forward), into each
/// buffer `grads` names; channels 0..O of dy are read in place by the convolution's kernels.
pub fn conv_transpose2d_concat_backward(
    gpu: &Gpu,
    enc: &mut Encoder,
    x: &Tensor,
    w: &Tensor,
    skip: &Tensor,
    dy: &Tensor,
    grads: ConcatGrads,
) {
    let params = concat_params("conv_transpose2d_concat backward", x, w, skip, dy);
    let owned = OwnedGrads {
        dx: grads.dx.map(|(t, acc)| (t.clone(), acc)),
        dw: grads.dw.cloned(),
        db: grads.db.cloned(),
        dskip: grads.dskip.map(|(t, acc)| (t.clone(), acc)),
    };
    backward(gpu, enc, params, x, w, dy, &owned);
}

/// Params of the fused op: checks skip `[N,S,2H,2W]` and y / dy `[N,O+S,2H,2W]` against x and w.
fn concat_params(what: &str, x: &Tensor, w: &Tensor, skip: &Tensor, big: &Tensor) -> Params {
    let params = params(what, x, w, big, true);
    let [n, s, sh, sw] = skip.dims4(what);
    assert!(
        [n, params.co as usize + s, sh, sw] == big.dims4(what),
        "{what}: skip {:?} does not fill channels {}.. of {:?}",
        skip.shape(),
        params.co,
        big.shape()
    );
    params
}

/// The U-Net's up-convolution and skip connection in one op on the tape (Keras'
/// `concatenate([Conv2DTranspose(x), skip])`): equal to `concat(conv_transpose2d(x, w, b), skip)`
/// without the copy of the convolution's output. x: `[N,I,H,W]`, w: `[I,O,2,2]`, b: `[O]` or `None`,
/// skip: `[N,S,2H,2W]`; returns `[N,O+S,2H,2W]`.
pub fn conv_transpose2d_concat(step: &mut Step, x: &Tensor, w: &Tensor, b: Option<&Tensor>, skip: &Tensor) -> Tensor {
    let [n, _, h, wd] = x.dims4("conv_transpose2d_concat x");
    let co = w.dims4("conv_transpose2d_concat w")[1];
    let s = skip.dims4("conv_transpose2d_concat skip")[1];
    let inputs: Vec<&Tensor> = [Some(x), Some(w), b, Some(skip)].into_iter().flatten().collect();
    let y = step.output(&[n, co + s, 2 * h, 2 * wd], &inputs);
    conv_transpose2d_concat_forward(step.gpu, &mut step.enc, x, w, b, skip, &y);
    let (x, w, b, skip) = (x.clone(), w.clone(), b.cloned(), skip.clone());
    step.record("conv_transpose2d_concat", &y, move |ctx, dy| {
        let grads = OwnedGrads {
            dx: ctx.grad_to_fill(&x),
            dw: ctx.grad(&w),
            db: b.as_ref().and_then(|b| ctx.grad(b)),
            dskip: ctx.grad_to_fill(&skip),
        };
        let params = concat_params("conv_transpose2d_concat backward", &x, &w, &skip, dy);
        backward(ctx.gpu, ctx.enc, params, &x, &w, dy, &grads);
    });
    y
}

/// Plain-Rust transposed convolution on `f64`, the contract the shaders are tested against.
pub mod reference;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::concat::{concat, reference as concat_reference};
    use crate::testing::{assert_close, assert_close_f32, dot, gpu, numeric_grad, random_vec, to_f64};

    #[test]
    fn reference_backward_matches_finite_differences() {
        let (dims, co) = ([2, 3, 2, 3], 5);
        let [n, ci, h, wd] = dims;
        let x = to_f64(&random_vec(1, n * ci * h * wd));
        let w = to_f64(&random_vec(2, ci * co * 4));
        let b = to_f64(&random_vec(3, co));
        let r = to_f64(&random_vec(4, n * co * 4 * h * wd));
        let fwd = |x: &[f64], w: &[f64], b: &[f64]| reference::conv_transpose2d_forward(x, w, Some(b), dims, co);
        let (dw, db) = reference::conv_transpose2d_backward_weight(&x, &r, dims, co);
        let dx = reference::conv_transpose2d_backward_data(&r, &w, dims, co);
        assert_close("dx", &dx, &numeric_grad(|x| dot(&r, &fwd(x, &w, &b)), &x, 1e-6), 1e-6);
        assert_close("dw", &dw, &numeric_grad(|w| dot(&r, &fwd(&x, w, &b)), &w, 1e-6), 1e-6);
        assert_close("db", &db, &numeric_grad(|b| dot(&r, &fwd(&x, &w, b)), &b, 1e-6), 1e-6);
    }

    /// `start + g`, elementwise: what a backward kernel that adds `g` should leave.
    fn plus(g: &[f64], start: &[f32]) -> Vec<f64> {
        g.iter().zip(start).map(|(g, &s)| g + s as f64).collect()
    }

    /// Runs forward (with and without bias) and all backward kernels on one shape and
    /// compares with the reference; gradients start at random values.
    fn check_shape(seed: u64, dims: [usize; 4], co: usize) {
        check_shape_with(seed, dims, co, &Workgroups::default());
    }

    /// [`check_shape`] with the forward, data and weight kernels at workgroup sizes `wg`.
    fn check_shape_with(seed: u64, dims: [usize; 4], co: usize, wg: &Workgroups) {
        let gpu = gpu();
        let [n, ci, h, wd] = dims;
        let big = [n, co, 2 * h, 2 * wd];
        let x = random_vec(seed, n * ci * h * wd);
        let w = random_vec(seed + 1, ci * co * 4);
        let b = random_vec(seed + 2, co);
        let dy = random_vec(seed + 3, big.iter().product());
        let (dx0, dw0, db0) = (random_vec(seed + 4, x.len()), random_vec(seed + 5, w.len()), random_vec(seed + 6, co));
        let (xt, wt, bt) = (gpu.upload(&x, &dims), gpu.upload(&w, &[ci, co, 2, 2]), gpu.upload(&b, &[co]));
        let dyt = gpu.upload(&dy, &big);
        let (dxt, dwt, dbt) = (gpu.upload(&dx0, &dims), gpu.upload(&dw0, &[ci, co, 2, 2]), gpu.upload(&db0, &[co]));
        let db_alone = gpu.upload(&db0, &[co]);
        let dx_fresh = gpu.upload(&dx0, &dims); // overwritten: its values must go
        let (y, y_nobias) = (gpu.empty(&big), gpu.empty(&big));
        let mut enc = gpu.encoder();
        conv_transpose2d_forward_tiled(gpu, &mut enc, &xt, &wt, Some(&bt), &y, wg);
        conv_transpose2d_forward_tiled(gpu, &mut enc, &xt, &wt, None, &y_nobias, wg);
        conv_transpose2d_backward_data_tiled(gpu, &mut enc, &wt, &dyt, &dxt, wg);
        let params = params("test", &dx_fresh, &wt, &dyt, false);
        backward_data(gpu, &mut enc, params, &wt, &dyt, &dx_fresh, Accumulate::Overwrite, wg);
        conv_transpose2d_backward_weight_tiled(gpu, &mut enc, &xt, &dyt, &dwt, Some(&dbt), wg);
        conv_transpose2d_backward_bias(gpu, &mut enc, &dyt, &db_alone);
        gpu.submit(enc);

        let (xf, wf, bf, dyf) = (to_f64(&x), to_f64(&w), to_f64(&b), to_f64(&dy));
        let (dw, db) = reference::conv_transpose2d_backward_weight(&xf, &dyf, dims, co);
        let what = format!("{dims:?} -> {co}");
        let want_y = reference::conv_transpose2d_forward(&xf, &wf, Some(&bf), dims, co);
        assert_close_f32(&format!("y {what}"), &gpu.read(&y), &want_y, 1e-4);
        let want_y = reference::conv_transpose2d_forward(&xf, &wf, None, dims, co);
        assert_close_f32(&format!("y (no bias) {what}"), &gpu.read(&y_nobias), &want_y, 1e-4);
        let dx = reference::conv_transpose2d_backward_data(&dyf, &wf, dims, co);
        assert_close_f32(&format!("dx {what}"), &gpu.read(&dxt), &plus(&dx, &dx0), 1e-3);
        assert_close_f32(&format!("dx (overwritten) {what}"), &gpu.read(&dx_fresh), &dx, 1e-3);
        assert_close_f32(&format!("dw {what}"), &gpu.read(&dwt), &plus(&dw, &dw0), 1e-3);
        assert_close_f32(&format!("db {what}"), &gpu.read(&dbt), &plus(&db, &db0), 1e-3);
        assert_close_f32(&format!("db alone {what}"), &gpu.read(&db_alone), &plus(&db, &db0), 1e-3);
    }

    #[test]
    fn gpu_matches_reference_on_odd_shapes() {
        // W not a multiple of 4: the general kernels.
        check_shape(10, [1, 1, 1, 1], 1);
        check_shape(20, [2, 3, 5, 7], 5);
        check_shape(30, [1, 7, 1, 9], 3);
        check_shape(40, [2, 5, 6, 1], 9);
        check_shape(50, [1, 6, 11, 13], 2);
    }

    #[test]
    fn quad_kernels_match_reference_on_odd_shapes() {
        // W a multiple of 4: the quad kernels. Channel counts that are not multiples of their
        // blocks (8 and 16 in the forward and data, 16 x 4 in the weight gradient), rows of 1, 3
        // and 5 quads (tiles of 4 quads that overhang), batch 1 and > 1.
        check_shape(110, [1, 1, 1, 4], 1);
        check_shape(120, [2, 3, 5, 8], 5);
        check_shape(130, [3, 17, 3, 12], 9);
        check_shape(140, [1, 5, 2, 20], 13);
        check_shape(150, [2, 33, 7, 4], 3);
    }

    #[test]
    fn other_workgroup_sizes_match_reference() {
        // Odd and large groups, on general (W = 7, 29) and quad (W = 8, 28) shapes.
        for (k, wg) in
            [Workgroups { general: 48, quads: 8 }, Workgroups { general: 256, quads: 128 }].iter().enumerate()
        {
            let seed = 200 + 10 * k as u64;
            check_shape_with(seed, [2, 3, 5, 7], 5, wg);
            check_shape_with(seed + 1, [2, 3, 5, 8], 5, wg);
            check_shape_with(seed + 2, [3, 5, 23, 29], 6, wg);
            check_shape_with(seed + 3, [3, 17, 3, 28], 9, wg);
        }
    }

    #[test]
    fn no_output_channels_overwrite_dx_with_zeros() {
        // O = 0: dx is an empty sum. Added into, it keeps its values; overwritten, it is zero.
        let gpu = gpu();
        let (dims, big) = ([2, 3, 2, 4], [2, 0, 4, 8]);
        let start = random_vec(400, 2 * 3 * 2 * 4);
        let (wt, dyt) = (gpu.upload(&[], &[3, 0, 2, 2]), gpu.upload(&[], &big));
        let (kept, fresh) = (gpu.upload(&start, &dims), gpu.upload(&start, &dims));
        let mut enc = gpu.encoder();
        conv_transpose2d_backward_data_into(gpu, &mut enc, &wt, &dyt, &kept, Accumulate::Add);
        conv_transpose2d_backward_data_into(gpu, &mut enc, &wt, &dyt, &fresh, Accumulate::Overwrite);
        gpu.submit(enc);
        assert_close_f32("dx added into", &gpu.read(&kept), &to_f64(&start), 0.0);
        assert_close_f32("dx overwritten", &gpu.read(&fresh), &vec![0.0; start.len()], 0.0);
    }

    #[test]
    fn gpu_matches_reference_with_many_slices() {
        // Enough pixels that the weight gradient splits its reduction into many slices: with a
        // slice step that carries across rows and images (general), or slices of rows (quads).
        check_shape(60, [3, 5, 23, 29], 6);
        check_shape(70, [2, 16, 16, 16], 8);
        check_shape(80, [3, 5, 23, 28], 6);
    }

    #[test]
    fn weight_gradient_slices_keep_loops_short() {
        // Large images and many channels: every thread's loop stays under MAX_STEPS iterations.
        for (dims, co) in [([16, 256, 256, 256], 256), ([1, 1, 2048, 4096], 1), ([64, 3, 512, 508], 2)] {
            let p = Params::new(dims, co, co);
            let blocks = p.ci.div_ceil(WEIGHT_C) * p.co.div_ceil(WEIGHT_O);
            if p.quads() {
                let s = p.with_row_slices(blocks);
                assert!(s.rows_per_slice * (p.w / 4 + 1) <= MAX_STEPS, "{dims:?}: {} rows a slice", s.rows_per_slice);
                assert!(s.slices * s.rows_per_slice >= p.n * p.h, "{dims:?}: slices miss rows");
            }
            let s = p.with_pixel_slices(p.ci.div_ceil(TC) * p.co.div_ceil(TO));
            assert!((p.n * p.h * p.w).div_ceil(s.slices) <= MAX_STEPS, "{dims:?}: {} slices", s.slices);
        }
    }

    #[test]
    fn tape_gives_the_reference_gradients() {
        let gpu = gpu();
        for (dims, co) in [([2, 3, 5, 7], 4), ([2, 3, 5, 8], 4)] {
            let [n, ci, h, wd] = dims;
            let x = random_vec(80, n * ci * h * wd);
            let w = random_vec(81, ci * co * 4);
            let b = random_vec(82, co);
            let dy = random_vec(83, n * co * 4 * h * wd);
            for with_bias in [true, false] {
                let xt = gpu.upload(&x, &dims).with_grad();
                let wt = gpu.upload(&w, &[ci, co, 2, 2]).with_grad();
                let bt = gpu.upload(&b, &[co]).with_grad();
                let mut step = Step::train(gpu);
                let y = conv_transpose2d(&mut step, &xt, &wt, with_bias.then_some(&bt));
                assert_eq!(y.shape(), [n, co, 2 * h, 2 * wd]);
                let dyt = gpu.upload(&dy, y.shape());
                let grads = step.backward(vec![(y.clone(), dyt)]);
                step.submit();

                let (xf, wf, bf, dyf) = (to_f64(&x), to_f64(&w), to_f64(&b), to_f64(&dy));
                let bias = with_bias.then_some(bf.as_slice());
                let want_y = reference::conv_transpose2d_forward(&xf, &wf, bias, dims, co);
                assert_close_f32("tape y", &gpu.read(&y), &want_y, 1e-4);
                let want_dx = reference::conv_transpose2d_backward_data(&dyf, &wf, dims, co);
                assert_close_f32("tape dx", &gpu.read(grads.get(&xt).unwrap()), &want_dx, 1e-3);
                let (dw, db) = reference::conv_transpose2d_backward_weight(&xf, &dyf, dims, co);
                assert_close_f32("tape dw", &gpu.read(grads.get(&wt).unwrap()), &dw, 1e-3);
                match with_bias {
                    true => assert_close_f32("tape db", &gpu.read(grads.get(&bt).unwrap()), &db, 1e-3),
                    false => assert!(grads.get(&bt).is_none(), "an unused bias got a gradient"),
                }
            }
        }
    }

    #[test]
    fn bias_gradient_alone() {
        // Only the bias needs a gradient: the tape takes the bias-only path.
        let gpu = gpu();
        let (dims, co) = ([2, 3, 4, 5], 3);
        let dy = random_vec(90, 2 * co * 8 * 10);
        let xt = gpu.upload(&random_vec(91, 2 * 3 * 4 * 5), &dims);
        let wt = gpu.upload(&random_vec(92, 3 * co * 4), &[3, co, 2, 2]);
        let bt = gpu.upload(&random_vec(93, co), &[co]).with_grad();
        let mut step = Step::train(gpu);
        let y = conv_transpose2d(&mut step, &xt, &wt, Some(&bt));
        let grads = step.backward(vec![(y.clone(), gpu.upload(&dy, y.shape()))]);
        step.submit();
        assert_eq!(grads.len(), 1, "only the bias should have a gradient");
        let (_, db) =
            reference::conv_transpose2d_backward_weight(&to_f64(&random_vec(91, 120)), &to_f64(&dy), dims, co);
        assert_close_f32("db", &gpu.read(grads.get(&bt).unwrap()), &db, 1e-3);
    }

    /// The fused op's wrappers against concat(conv_transpose2d(x, w, b), skip) in f64: forward,
    /// and every gradient from random starting values. `s` skip channels.
    fn check_concat(seed: u64, dims: [usize; 4], co: usize, s: usize) {
        let gpu = gpu();
        let [n, ci, h, wd] = dims;
        let (plane, ct) = (4 * h * wd, co + s);
        let (skip_dims, big) = ([n, s, 2 * h, 2 * wd], [n, ct, 2 * h, 2 * wd]);
        let x = random_vec(seed, n * ci * h * wd);
        let w = random_vec(seed + 1, ci * co * 4);
        let b = random_vec(seed + 2, co);
        let skip = random_vec(seed + 3, n * s * plane);
        let dy = random_vec(seed + 4, n * ct * plane);
        let start = |k: u64, len: usize| random_vec(seed + 10 + k, len);
        let (dx0, dw0, db0, dskip0) = (start(0, x.len()), start(1, w.len()), start(2, co), start(3, skip.len()));
        let (xt, wt, bt) = (gpu.upload(&x, &dims), gpu.upload(&w, &[ci, co, 2, 2]), gpu.upload(&b, &[co]));
        let (skipt, dyt) = (gpu.upload(&skip, &skip_dims), gpu.upload(&dy, &big));
        let (dxt, dwt) = (gpu.upload(&dx0, &dims), gpu.upload(&dw0, &[ci, co, 2, 2]));
        let (dbt, dskipt) = (gpu.upload(&db0, &[co]), gpu.upload(&dskip0, &skip_dims));
        let db_alone = gpu.upload(&db0, &[co]);
        // Overwritten: their values must go.
        let (dx_fresh, dskip_fresh) = (gpu.upload(&dx0, &dims), gpu.upload(&dskip0, &skip_dims));
        let y = gpu.empty(&big);
        let mut enc = gpu.encoder();
        conv_transpose2d_concat_forward(gpu, &mut enc, &xt, &wt, Some(&bt), &skipt, &y);
        let add = Accumulate::Add;
        let all = ConcatGrads { dx: Some((&dxt, add)), dw: Some(&dwt), db: Some(&dbt), dskip: Some((&dskipt, add)) };
        conv_transpose2d_concat_backward(gpu, &mut enc, &xt, &wt, &skipt, &dyt, all);
        let fill = Accumulate::Overwrite;
        let fresh =
            ConcatGrads { dx: Some((&dx_fresh, fill)), dskip: Some((&dskip_fresh, fill)), ..Default::default() };
        conv_transpose2d_concat_backward(gpu, &mut enc, &xt, &wt, &skipt, &dyt, fresh);
        let bias_only = ConcatGrads { db: Some(&db_alone), ..Default::default() };
        conv_transpose2d_concat_backward(gpu, &mut enc, &xt, &wt, &skipt, &dyt, bias_only);
        gpu.submit(enc);

        let (xf, wf, bf, dyf) = (to_f64(&x), to_f64(&w), to_f64(&b), to_f64(&dy));
        let up = reference::conv_transpose2d_forward(&xf, &wf, Some(&bf), dims, co);
        let want_y = concat_reference::concat_forward(&up, &to_f64(&skip), n, co, s, plane);
        let what = format!("{dims:?} -> {co} + {s}");
        assert_close_f32(&format!("fused y {what}"), &gpu.read(&y), &want_y, 1e-4);
        let (dup, dskip) = concat_reference::concat_backward(&dyf, n, co, s, plane);
        let want_dx = reference::conv_transpose2d_backward_data(&dup, &wf, dims, co);
        let (dw, db) = reference::conv_transpose2d_backward_weight(&xf, &dup, dims, co);
        assert_close_f32(&format!("fused dx {what}"), &gpu.read(&dxt), &plus(&want_dx, &dx0), 1e-3);
        assert_close_f32(&format!("fused dw {what}"), &gpu.read(&dwt), &plus(&dw, &dw0), 1e-3);
        assert_close_f32(&format!("fused db {what}"), &gpu.read(&dbt), &plus(&db, &db0), 1e-3);
        assert_close_f32(&format!("fused db alone {what}"), &gpu.read(&db_alone), &plus(&db, &db0), 1e-3);
        assert_close_f32(&format!("fused dskip {what}"), &gpu.read(&dskipt), &plus(&dskip, &dskip0), 1e-3);
        assert_close_f32(&format!("fused dx (overwritten) {what}"), &gpu.read(&dx_fresh), &want_dx, 1e-3);
        assert_close_f32(&format!("fused dskip (overwritten) {what}"), &gpu.read(&dskip_fresh), &dskip, 0.0);
    }

    #[test]
    fn fused_concat_matches_concat_of_conv_transpose2d() {
        // General kernels (W % 4 != 0) and quad kernels, with skips narrower, as wide and wider.
        check_concat(200, [1, 1, 1, 1], 1, 1);
        check_concat(210, [2, 3, 5, 7], 5, 4);
        check_concat(220, [2, 6, 3, 4], 3, 3);
        check_concat(230, [3, 17, 2, 12], 9, 11);
        check_concat(240, [1, 5, 9, 20], 2, 1);
    }

    #[test]
    fn fused_concat_on_the_tape_equals_concat_of_conv_transpose2d() {
        // The fused op and the two-op chain on the same inputs: same output, same gradients
        // (also when some inputs need none).
        let gpu = gpu();
        for (dims, co, s) in [([2, 3, 5, 7], 4, 3), ([2, 5, 3, 8], 6, 6)] {
            let [n, ci, h, wd] = dims;
            let skip_dims = [n, s, 2 * h, 2 * wd];
            let x = random_vec(300, n * ci * h * wd);
            let w = random_vec(301, ci * co * 4);
            let b = random_vec(302, co);
            let skip = random_vec(303, skip_dims.iter().product());
            let dy = random_vec(304, n * (co + s) * 4 * h * wd);
            for (x_grad, w_grad, skip_grad) in [(true, true, true), (false, false, true), (true, false, false)] {
                let run = |fused: bool| {
                    let grad = |t: Tensor, on: bool| if on { t.with_grad() } else { t };
                    let xt = grad(gpu.upload(&x, &dims), x_grad);
                    let wt = grad(gpu.upload(&w, &[ci, co, 2, 2]), w_grad);
                    let bt = gpu.upload(&b, &[co]).with_grad();
                    let skipt = grad(gpu.upload(&skip, &skip_dims), skip_grad);
                    let mut step = Step::train(gpu);
                    let y = if fused {
                        conv_transpose2d_concat(&mut step, &xt, &wt, Some(&bt), &skipt)
                    } else {
                        let up = conv_transpose2d(&mut step, &xt, &wt, Some(&bt));
                        concat(&mut step, &up, &skipt)
                    };
                    assert_eq!(y.shape(), [n, co + s, 2 * h, 2 * wd]);
                    let grads = step.backward(vec![(y.clone(), gpu.upload(&dy, y.shape()))]);
                    step.submit();
                    let read = |t: &Tensor| grads.get(t).map(|g| gpu.read(g));
                    (gpu.read(&y), [read(&xt), read(&wt), read(&bt), read(&skipt)])
                };
                let ((y, got), (want_y, want)) = (run(true), run(false));
                let what = format!("{dims:?} -> {co} + {s}, grads of x {x_grad} w {w_grad} skip {skip_grad}");
                assert_close_f32(&format!("tape y {what}"), &y, &to_f64(&want_y), 1e-5);
                for (name, (g, want)) in ["dx", "dw", "db", "dskip"].iter().zip(got.iter().zip(&want)) {
                    match (g, want) {
                        (Some(g), Some(want)) => {
                            assert_close_f32(&format!("tape {name} {what}"), g, &to_f64(want), 1e-5)
                        }
                        (None, None) => {}
                        _ => panic!("{name} {what}: gradient present in one op and not the other"),
                    }
                }
            }
        }
    }
}
